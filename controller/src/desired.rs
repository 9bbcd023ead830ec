//! Desired state: which objects every cluster should hold, computed from a snapshot of the hub.
//!
//! Pure (no I/O), so the controller and `ksit render` produce the same objects, byte for byte.

use crate::resources::{BindingPolicy, DownsyncClause, TrafficPolicy};
use ksit_policy::TrafficPolicySpec;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "ksit";
/// Names the BindingPolicies that send an object (comma-separated).
pub const BINDING_ANNOTATION: &str = "ksit.io/binding";
/// Names the hub object an object was copied or rendered from (`Kind namespace/name`).
pub const SOURCE_ANNOTATION: &str = "ksit.io/source";
pub const FIELD_MANAGER: &str = "ksit-controller";
/// The request header the filter writes and the rendered VirtualService routes on.
pub const DESTINATION_HEADER: &str = ksit_policy::DESTINATION_HEADER;
/// The request header the filter writes the mirror level to (sticky mirroring).
pub const MIRROR_HEADER: &str = ksit_policy::MIRROR_HEADER;

/// A kind of object, enough to address it through the API.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceKind {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
}

impl ResourceKind {
    pub fn new(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        ResourceKind {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            namespaced,
        }
    }
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    pub fn namespace_kind() -> Self {
        Self::new("", "v1", "Namespace", "namespaces", false)
    }
    pub fn wasm_plugin() -> Self {
        Self::new(
            "extensions.istio.io",
            "v1alpha1",
            "WasmPlugin",
            "wasmplugins",
            true,
        )
    }
    pub fn virtual_service() -> Self {
        Self::new(
            "networking.istio.io",
            "v1",
            "VirtualService",
            "virtualservices",
            true,
        )
    }
    /// Order of application: namespaces first, then everything else by group and kind.
    fn rank(&self) -> u8 {
        u8::from(self.kind != "Namespace")
    }
}

/// A member cluster as the hub describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Cluster {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// An object on the hub that a downsync clause may select.
#[derive(Clone, Debug, PartialEq)]
pub struct HubObject {
    pub kind: ResourceKind,
    pub object: Value,
}

impl HubObject {
    pub fn namespace(&self) -> Option<&str> {
        self.object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }
    pub fn name(&self) -> &str {
        self.object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
    pub fn labels(&self) -> BTreeMap<String, String> {
        labels_of(&self.object)
    }
}

pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Where rendered WasmPlugins load the filter from.
#[derive(Clone, Debug, PartialEq)]
pub enum ModuleSource {
    /// Served by the controller: `url` ends in `/modules/<sha256>.wasm`.
    Http { url: String, sha256: String },
    /// An OCI image in Istio's Wasm image format.
    Oci { image: String },
}

#[derive(Clone, Debug, PartialEq)]
pub struct RenderSettings {
    pub module: ModuleSource,
    /// Namespace of the gateways a `selector` such as `istio: ingressgateway` picks.
    pub gateway_namespace: String,
    /// Render `headerForStable: false`: requests to a rule's stable destination go unmarked, by the
    /// VirtualService's default route.
    pub stable_by_default_route: bool,
}

/// Everything on the hub that decides the desired state.
#[derive(Clone, Debug, Default)]
pub struct Hub {
    pub clusters: Vec<Cluster>,
    pub bindings: Vec<BindingPolicy>,
    /// Candidate objects for downsync (TrafficPolicies are given separately).
    pub objects: Vec<HubObject>,
    pub traffic_policies: Vec<TrafficPolicy>,
    pub namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Per cluster, the template properties from its annotations and its `customization-properties`
    /// ConfigMap (see `template`; its name and labels come from `clusters`).
    pub cluster_properties: BTreeMap<String, BTreeMap<String, String>>,
}

/// One object a cluster should hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredObject {
    pub kind: ResourceKind,
    pub namespace: Option<String>,
    pub name: String,
    /// BindingPolicies that send it.
    pub bindings: Vec<String>,
    /// Create when missing, never update (KubeStellar `createOnly`; always for namespaces).
    pub create_only: bool,
    /// For rendered objects, the TrafficPolicies (`namespace/name`) and generations they carry (several for
    /// a WasmPlugin that merges the policies on the same workloads).
    pub traffic_policies: Vec<(String, i64)>,
    /// The object as applied (server-side apply body).
    pub manifest: Value,
}

impl DesiredObject {
    /// Its `ksit.io/config-hash` annotation ("" before the hash is stamped).
    pub fn config_hash(&self) -> &str {
        self.manifest
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(HASH_ANNOTATION))
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
    /// Whether it is rendered from TrafficPolicy `namespace/name`.
    pub fn carries(&self, policy: &str) -> bool {
        self.traffic_policies.iter().any(|(k, _)| k == policy)
    }
    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            kind: self.kind.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: ResourceKind,
    pub namespace: Option<String>,
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind.kind, ns, self.name),
            None => write!(f, "{} {}", self.kind.kind, self.name),
        }
    }
}

/// A problem found while rendering, reported in the status of the object it names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Note {
    pub cluster: String,
    /// `TrafficPolicy ns/name` or `BindingPolicy name`.
    pub object: String,
    /// CamelCase, used as the Ready condition's reason: `NamespaceNotBound`, `HostConflict`,
    /// `HeldByInvalidPolicy`.
    pub reason: &'static str,
    pub message: String,
}

impl Note {
    /// A note on TrafficPolicy `id` (`namespace/name`) in `cluster`.
    fn on_policy(cluster: &str, id: &str, reason: &'static str, message: String) -> Note {
        Note {
            cluster: cluster.to_string(),
            object: format!("TrafficPolicy {id}"),
            reason,
            message,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterDesired {
    /// Shared between clusters where they are the same (a hub object sent to a hundred clusters is held once).
    pub objects: Vec<Arc<DesiredObject>>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    /// Every cluster known to the hub, bound or not (an unbound cluster should hold nothing).
    pub clusters: BTreeMap<String, ClusterDesired>,
    /// Per binding, the clusters it binds.
    pub bound: BTreeMap<String, Vec<String>>,
    pub notes: Vec<Note>,
    /// Objects rendered from TrafficPolicies whose spec is invalid right now: every cluster keeps them as they
    /// are (neither updated nor pruned) until the spec is fixed.
    pub retain: BTreeSet<ObjectKey>,
}

/// KubeStellar's object test for one clause.
pub fn clause_matches(
    c: &DownsyncClause,
    group: &str,
    plural: &str,
    namespace: Option<&str>,
    names: &[&str],
    labels: &BTreeMap<String, String>,
    namespace_labels: &BTreeMap<String, BTreeMap<String, String>>,
) -> bool {
    let all = |v: &[String]| v.is_empty() || v.iter().any(|x| x == "*");
    c.api_group.as_deref().is_none_or(|g| g == group)
        && (all(&c.resources) || c.resources.iter().any(|r| r == plural))
        && (c.namespaces.is_empty()
            || c.namespaces.iter().any(|n| n == "*")
            || namespace.is_some_and(|ns| c.namespaces.iter().any(|n| n == ns)))
        && (c.namespace_selectors.is_empty()
            || match namespace {
                Some(ns) => {
                    let empty = BTreeMap::new();
                    let l = namespace_labels.get(ns).unwrap_or(&empty);
                    c.namespace_selectors.iter().any(|s| s.matches(l))
                }
                None => c.namespace_selectors.iter().any(|s| s.is_empty()),
            })
        && (c.object_selectors.is_empty() || c.object_selectors.iter().any(|s| s.matches(labels)))
        && (all(&c.object_names) || c.object_names.iter().any(|n| names.contains(&n.as_str())))
}

/// The clusters a binding selects (ORed selectors; none selects nothing).
pub fn bound_clusters<'c>(b: &BindingPolicy, clusters: &'c [Cluster]) -> Vec<&'c Cluster> {
    clusters
        .iter()
        .filter(|c| {
            b.spec
                .cluster_selectors
                .iter()
                .any(|s| s.matches(&c.labels))
        })
        .collect()
}

/// Fields the API server owns, never copied to a member.
fn clean_copy(obj: &Value, kind: &ResourceKind) -> Value {
    let mut meta = Map::new();
    let m = obj.get("metadata").cloned().unwrap_or(json!({}));
    for k in ["name", "namespace", "labels", "annotations"] {
        if let Some(v) = m.get(k) {
            meta.insert(k.into(), v.clone());
        }
    }
    if let Some(Value::Object(a)) = meta.get_mut("annotations") {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
        if a.is_empty() {
            meta.remove("annotations");
        }
    }
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!(kind.api_version()));
    out.insert("kind".into(), json!(kind.kind));
    out.insert("metadata".into(), Value::Object(meta));
    if let Value::Object(o) = obj {
        for (k, v) in o {
            if !matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status") {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    if !kind.namespaced {
        if let Some(Value::Object(meta)) = out.get_mut("metadata") {
            meta.remove("namespace");
        }
    }
    Value::Object(out)
}

fn mark(manifest: &mut Value, bindings: &[String], source: &str) {
    let Some(meta) = manifest.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let labels = meta.entry("labels").or_insert_with(|| json!({}));
    if let Some(l) = labels.as_object_mut() {
        l.insert(MANAGED_BY_LABEL.into(), json!(MANAGED_BY_VALUE));
    }
    let ann = meta.entry("annotations").or_insert_with(|| json!({}));
    if let Some(a) = ann.as_object_mut() {
        a.insert(BINDING_ANNOTATION.into(), json!(bindings.join(",")));
        a.insert(SOURCE_ANNOTATION.into(), json!(source));
    }
}

/// Namespace a TrafficPolicy's WasmPlugin must live in for Istio to apply its selector to the workloads:
/// gateways run in the gateway namespace; `targetRefs` name theirs; otherwise the policy's own namespace.
pub fn wasm_plugin_namespace(
    tp_namespace: &str,
    spec: &TrafficPolicySpec,
    gateway_namespace: &str,
) -> String {
    if let Some(ns) = spec.target_refs.iter().find_map(|t| t.namespace.clone()) {
        return ns;
    }
    if let Some(sel) = &spec.selector {
        let gateway = sel
            .match_labels
            .get("istio")
            .is_some_and(|v| v.ends_with("gateway"))
            || sel
                .match_labels
                .contains_key("gateway.networking.k8s.io/gateway-name")
            || sel
                .match_labels
                .get("app")
                .is_some_and(|v| v.starts_with("istio-") && v.ends_with("gateway"));
        if gateway {
            return gateway_namespace.to_string();
        }
    }
    tp_namespace.to_string()
}

pub fn wasm_plugin_name(tp_namespace: &str, tp_name: &str, plugin_namespace: &str) -> String {
    if tp_namespace == plugin_namespace {
        format!("ksit-{tp_name}")
    } else {
        format!("ksit-{tp_namespace}-{tp_name}")
    }
}

/// The filter's pluginConfig for one cluster: the spec with that cluster's overrides resolved, plus its
/// name, and `headerForStable: false` when `stable_by_default_route` (the VirtualService's default routes
/// lead to the stable destinations).
pub fn plugin_config(
    spec: &TrafficPolicySpec,
    cluster: &str,
    stable_by_default_route: bool,
) -> Value {
    let resolved = spec.resolve(Some(cluster));
    with_filter_members(
        serde_json::to_value(&resolved).unwrap_or_else(|_| json!({})),
        cluster,
        stable_by_default_route,
    )
}

/// Adds the filter's own members to a pluginConfig (one spec, or a `policies` list): `cluster`, and
/// `headerForStable: false` when `stable_by_default_route`.
fn with_filter_members(mut config: Value, cluster: &str, stable_by_default_route: bool) -> Value {
    if let Some(m) = config.as_object_mut() {
        m.insert("cluster".into(), json!(cluster));
        if stable_by_default_route {
            m.insert("headerForStable".into(), json!(false));
        }
    }
    config
}

/// The VirtualService a TrafficPolicy renders: `ksit-NAME` in its namespace.
fn virtual_service_key(tp: &TrafficPolicy) -> ObjectKey {
    let (ns, name) = policy_id(tp);
    ObjectKey {
        kind: ResourceKind::virtual_service(),
        namespace: Some(ns),
        name: format!("ksit-{name}"),
    }
}

/// A TrafficPolicy's namespace (default `default`) and name.
fn policy_id(tp: &TrafficPolicy) -> (String, String) {
    let ns = tp
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    (ns, tp.metadata.name.clone().unwrap_or_default())
}

/// An HTTPMatchRequest as the VirtualService carries it (with its `name`, which Istio appends to the Envoy
/// route's name, and its `statPrefix`).
fn match_json(m: &ksit_policy::spec::HttpMatchRequest) -> Value {
    serde_json::to_value(m).unwrap_or_else(|_| json!({}))
}

/// One WasmPlugin for the TrafficPolicies that select the same workloads (`members`, oldest first), so a
/// request costs one filter invocation however many policies the gateway carries. A lone policy's
/// pluginConfig is its spec (plus `cluster`); several are a `policies` list the filter indexes by host.
fn render_wasm_plugin(
    members: &[&Selected<'_>],
    cluster: &str,
    settings: &RenderSettings,
    plugin_ns: &str,
    plugin_name: &str,
) -> Option<DesiredObject> {
    let first = members.first()?;
    let spec = &first.tp.spec.0;
    let mut s = Map::new();
    if let Some(sel) = &spec.selector {
        s.insert("selector".into(), json!({"matchLabels": sel.match_labels}));
    }
    if !spec.target_refs.is_empty() {
        s.insert(
            "targetRefs".into(),
            serde_json::to_value(&spec.target_refs).unwrap_or_default(),
        );
    }
    match &settings.module {
        ModuleSource::Http { url, sha256 } => {
            s.insert("url".into(), json!(url));
            s.insert("sha256".into(), json!(sha256));
        }
        ModuleSource::Oci { image } => {
            s.insert("url".into(), json!(image));
            s.insert("imagePullPolicy".into(), json!("IfNotPresent"));
        }
    }
    s.insert("pluginName".into(), json!("ksit"));
    s.insert("failStrategy".into(), json!(fail_strategy_name(spec)));
    let config = if let [only] = members {
        plugin_config(&only.tp.spec.0, cluster, settings.stable_by_default_route)
    } else {
        let policies: Vec<Value> = members
            .iter()
            .map(|m| {
                let resolved = m.tp.spec.0.resolve(Some(cluster));
                json!({"name": m.id(), "spec": serde_json::to_value(&resolved).unwrap_or_else(|_| json!({}))})
            })
            .collect();
        with_filter_members(
            json!({"policies": policies}),
            cluster,
            settings.stable_by_default_route,
        )
    };
    s.insert("pluginConfig".into(), config);
    s.insert(
        "vmConfig".into(),
        json!({"env": [{"name": "KSIT_CLUSTER", "value": cluster}]}),
    );
    let mut manifest = json!({
        "apiVersion": ResourceKind::wasm_plugin().api_version(),
        "kind": "WasmPlugin",
        "metadata": {"name": plugin_name, "namespace": plugin_ns},
        "spec": Value::Object(s),
    });
    let bindings: Vec<String> = members
        .iter()
        .flat_map(|m| m.bindings.iter().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let source = members
        .iter()
        .map(|m| format!("TrafficPolicy {}", m.id()))
        .collect::<Vec<_>>()
        .join(", ");
    mark(&mut manifest, &bindings, &source);
    Some(DesiredObject {
        kind: ResourceKind::wasm_plugin(),
        namespace: Some(plugin_ns.to_string()),
        name: plugin_name.to_string(),
        bindings,
        create_only: false,
        traffic_policies: members.iter().map(|m| (m.id(), m.generation())).collect(),
        manifest,
    })
}

fn fail_strategy_name(spec: &TrafficPolicySpec) -> &'static str {
    spec.fail_strategy.name()
}

/// A TrafficPolicy bound to one cluster, with the BindingPolicies that send it there.
struct Selected<'h> {
    tp: &'h TrafficPolicy,
    bindings: BTreeSet<String>,
}

impl Selected<'_> {
    fn id(&self) -> String {
        let (ns, name) = policy_id(self.tp);
        format!("{ns}/{name}")
    }
    fn generation(&self) -> i64 {
        self.tp.metadata.generation.unwrap_or(0)
    }
    fn bindings(&self) -> Vec<String> {
        self.bindings.iter().cloned().collect()
    }
    /// Older first: creationTimestamp, then namespace/name (a tie within the same second).
    fn age(
        &self,
    ) -> (
        Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
        String,
        String,
    ) {
        let (ns, name) = policy_id(self.tp);
        (self.tp.metadata.creation_timestamp.clone(), ns, name)
    }
}

/// What one cluster's TrafficPolicies render to.
#[derive(Default)]
struct RenderedPolicies {
    objects: Vec<DesiredObject>,
    notes: Vec<Note>,
    retain: Vec<ObjectKey>,
}

/// Renders the TrafficPolicies bound to `cluster`: one VirtualService each, and one WasmPlugin per set of
/// policies that select the same workloads (same plugin namespace, selector, targetRefs and failStrategy).
///
/// Within a set, the oldest policy (creationTimestamp, then namespace/name) keeps a host two policies claim;
/// the younger is left out in this cluster with a `HostConflict` note. A set holding an invalid policy keeps
/// its live WasmPlugin as it is (the invalid policy's last good config stays in it) and notes the others.
fn render_policies(
    cluster: &str,
    selected: &BTreeMap<(String, String), Selected<'_>>,
    invalid_ids: &BTreeSet<String>,
    settings: &RenderSettings,
) -> RenderedPolicies {
    let mut out = RenderedPolicies::default();
    let mut members: Vec<&Selected<'_>> = selected.values().collect();
    members.sort_by_key(|m| m.age());
    type GroupKey = (String, String, String, &'static str);
    let mut groups: BTreeMap<GroupKey, Vec<&Selected<'_>>> = BTreeMap::new();
    for m in members {
        let (ns, _) = policy_id(m.tp);
        let spec = &m.tp.spec.0;
        let key = (
            wasm_plugin_namespace(&ns, spec, &settings.gateway_namespace),
            serde_json::to_string(&spec.selector).unwrap_or_default(),
            serde_json::to_string(&spec.target_refs).unwrap_or_default(),
            fail_strategy_name(spec),
        );
        groups.entry(key).or_default().push(m);
    }
    for ((plugin_ns, ..), group) in groups {
        let mut claimed: BTreeMap<String, String> = BTreeMap::new();
        let mut applied: Vec<&Selected<'_>> = Vec::new();
        let mut invalid: Vec<&Selected<'_>> = Vec::new();
        // The set is in age order, so the first member kept (valid or not) is the oldest.
        let mut oldest: Option<&Selected<'_>> = None;
        for m in group {
            if invalid_ids.contains(&m.id()) {
                oldest.get_or_insert(m);
                out.retain.push(virtual_service_key(m.tp));
                invalid.push(m);
                continue;
            }
            let hosts: Vec<String> =
                m.tp.spec
                    .0
                    .hosts
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect();
            if let Some((host, older)) = hosts.iter().find_map(|h| claimed.get(h).map(|o| (h, o))) {
                out.notes.push(Note::on_policy(
                    cluster,
                    &m.id(),
                    "HostConflict",
                    format!(
                        "host {host} on the workloads its WasmPlugin in {plugin_ns} selects is already routed by the older TrafficPolicy {older}; only {older} applies there"
                    ),
                ));
                continue;
            }
            for h in hosts {
                claimed.insert(h, m.id());
            }
            oldest.get_or_insert(m);
            applied.push(m);
        }
        // Named after the oldest member, so a policy joining or leaving the set does not rename it.
        let Some(oldest) = oldest else { continue };
        let (ns, name) = policy_id(oldest.tp);
        let plugin_name = wasm_plugin_name(&ns, &name, &plugin_ns);
        for m in &applied {
            if invalid.is_empty() {
                out.objects
                    .push(render_virtual_service(m.tp, cluster, &m.bindings()));
            } else {
                // The WasmPlugin keeps its previous configuration, so its VirtualServices keep theirs: the
                // filter's decisions and the routes that carry them out stay a pair (a default route that
                // followed a new weight while the filter kept the old one would move the stable traffic).
                out.retain.push(virtual_service_key(m.tp));
            }
        }
        if !invalid.is_empty() {
            out.retain.push(ObjectKey {
                kind: ResourceKind::wasm_plugin(),
                namespace: Some(plugin_ns.clone()),
                name: plugin_name.clone(),
            });
            let culprits = invalid
                .iter()
                .map(|m| m.id())
                .collect::<Vec<_>>()
                .join(", ");
            for m in &applied {
                out.notes.push(Note::on_policy(
                    cluster,
                    &m.id(),
                    "HeldByInvalidPolicy",
                    format!(
                        "WasmPlugin {plugin_ns}/{plugin_name}, which it shares with TrafficPolicy {culprits}, and this policy's VirtualService keep their previous configuration until that spec is valid again"
                    ),
                ));
            }
            continue;
        }
        out.objects.extend(render_wasm_plugin(
            &applied,
            cluster,
            settings,
            &plugin_ns,
            &plugin_name,
        ));
    }
    out
}

fn destination_json(d: &ksit_policy::spec::Destination) -> Value {
    serde_json::to_value(d).unwrap_or_default()
}

/// A rule's matches with extra header conditions (the filter's marks); a rule without matches gets one
/// match of those headers alone.
fn marked_matches(rule: &ksit_policy::spec::HttpRule, marks: &[(&str, String)]) -> Vec<Value> {
    let with_marks = |mut mv: Value| {
        if let Some(o) = mv.as_object_mut() {
            let h = o.entry("headers").or_insert_with(|| json!({}));
            if let Some(h) = h.as_object_mut() {
                for (name, value) in marks {
                    h.insert((*name).into(), json!({"exact": value}));
                }
            }
        }
        mv
    };
    if rule.matches.is_empty() {
        vec![with_marks(json!({}))]
    } else {
        rule.matches
            .iter()
            .map(|m| with_marks(match_json(m)))
            .collect()
    }
}

/// The fields of a rule the VirtualService carries as they are (Envoy applies them after routing): timeout,
/// retries, rewrite, CORS, header changes, and the mirrors unless the filter decides them (`sticky_mirror`).
fn carried_fields(rule: &ksit_policy::spec::HttpRule, route: &mut Map<String, Value>) {
    let mut put = |k: &str, v: Value| {
        route.insert(k.into(), v);
    };
    fn to<T: serde::Serialize>(v: &T) -> Value {
        serde_json::to_value(v).unwrap_or_default()
    }
    if let Some(t) = &rule.timeout {
        put("timeout", json!(t));
    }
    if let Some(x) = &rule.retries {
        put("retries", to(x));
    }
    if let Some(x) = &rule.rewrite {
        put("rewrite", to(x));
    }
    if let Some(x) = &rule.redirect {
        put("redirect", to(x));
    }
    if let Some(x) = &rule.direct_response {
        put("directResponse", to(x));
    }
    if !rule.sticky_mirror() && rule.answers().is_none() {
        if let Some(x) = &rule.mirror {
            put("mirror", to(x));
        }
        if let Some(x) = &rule.mirror_percentage {
            put("mirrorPercentage", to(x));
        }
        if !rule.mirrors.is_empty() {
            put("mirrors", to(&rule.mirrors));
        }
    }
    if let Some(x) = &rule.cors_policy {
        put("corsPolicy", to(x));
    }
    if let Some(x) = &rule.headers {
        put("headers", to(x));
    }
}

/// One route of a destination as the VirtualService names it.
fn route_destination_json(d: &ksit_policy::spec::HttpRouteDestination) -> Value {
    let mut v = json!({"destination": destination_json(&d.destination)});
    if let Some(h) = &d.headers {
        v["headers"] = serde_json::to_value(h).unwrap_or_default();
    }
    v
}

/// The mirror sets of a rule with sticky mirroring: set `L` (1-based, as the filter writes `x-ksit-mirror`)
/// holds the mirrors whose share is at least the `L`th largest share (see `ksit_policy::engine::CompiledMirror`).
fn sticky_mirror_sets(rule: &ksit_policy::spec::HttpRule) -> Vec<Vec<Value>> {
    let policies = rule.mirror_policies();
    let mut thresholds: Vec<u32> = policies.iter().map(|(_, p)| *p).collect();
    thresholds.sort_unstable_by(|a, b| b.cmp(a));
    thresholds.dedup();
    thresholds
        .iter()
        .map(|t| {
            policies
                .iter()
                .filter(|(_, p)| p >= t)
                .map(|(d, _)| json!({"destination": destination_json(d)}))
                .collect()
        })
        .collect()
}

/// The VirtualService that routes on the filter's decision, then each rule's matches to its stable
/// destination ([`ksit_policy::spec::HttpRule::stable_index`]): for the requests the filter did not decide
/// (e.g. when it is absent or failed open) and, with `--stable-by-default-route`, those it sends there
/// unmarked (`headerForStable: false` in the pluginConfig). A rule that answers itself (`redirect`,
/// `directResponse`) has only the second kind of route, which answers; with sticky mirroring, a destination's
/// routes come once per mirror level (`x-ksit-mirror`) with that level's mirrors, then without.
pub fn render_virtual_service(
    tp: &TrafficPolicy,
    cluster: &str,
    bindings: &[String],
) -> DesiredObject {
    let (ns, name) = policy_id(tp);
    let spec = tp.spec.0.resolve(Some(cluster));
    let mut routes = Vec::new();
    let rule_name = |ri: usize, rule: &ksit_policy::spec::HttpRule| {
        rule.name.clone().unwrap_or_else(|| format!("http-{ri}"))
    };
    for (ri, rule) in spec.http.iter().enumerate() {
        let rule_name = rule_name(ri, rule);
        let mirror_sets = if rule.sticky_mirror() {
            sticky_mirror_sets(rule)
        } else {
            Vec::new()
        };
        for d in &rule.route {
            let key = d.destination.key();
            let base = format!("{rule_name}-{}", key.replace('|', "-"));
            let mark = (DESTINATION_HEADER, key.clone());
            for (level, mirrors) in mirror_sets.iter().enumerate() {
                let mut route = Map::new();
                route.insert("name".into(), json!(format!("{base}-mirror{}", level + 1)));
                let marks = [mark.clone(), (MIRROR_HEADER, (level + 1).to_string())];
                route.insert("match".into(), Value::Array(marked_matches(rule, &marks)));
                route.insert("route".into(), json!([route_destination_json(d)]));
                carried_fields(rule, &mut route);
                route.insert("mirrors".into(), Value::Array(mirrors.clone()));
                routes.push(Value::Object(route));
            }
            let mut route = Map::new();
            route.insert("name".into(), json!(base));
            route.insert(
                "match".into(),
                Value::Array(marked_matches(rule, std::slice::from_ref(&mark))),
            );
            route.insert("route".into(), json!([route_destination_json(d)]));
            carried_fields(rule, &mut route);
            routes.push(Value::Object(route));
        }
    }
    for (ri, rule) in spec.http.iter().enumerate() {
        let rule_name = rule_name(ri, rule);
        let stable = rule.stable_index().and_then(|i| rule.route.get(i));
        if stable.is_none() && rule.answers().is_none() {
            continue;
        }
        let mut route = Map::new();
        let suffix = if stable.is_some() { "-default" } else { "" };
        route.insert("name".into(), json!(format!("{rule_name}{suffix}")));
        if !rule.matches.is_empty() {
            let matches: Vec<Value> = rule.matches.iter().map(match_json).collect();
            route.insert("match".into(), Value::Array(matches));
        }
        if let Some(stable) = stable {
            route.insert("route".into(), json!([route_destination_json(stable)]));
        }
        carried_fields(rule, &mut route);
        routes.push(Value::Object(route));
    }
    let vs_name = virtual_service_key(tp).name;
    let mut vspec = Map::new();
    vspec.insert("hosts".into(), json!(spec.hosts));
    if !spec.gateways.is_empty() {
        vspec.insert("gateways".into(), json!(spec.gateways));
    }
    vspec.insert("http".into(), Value::Array(routes));
    let mut manifest = json!({
        "apiVersion": ResourceKind::virtual_service().api_version(),
        "kind": "VirtualService",
        "metadata": {"name": vs_name, "namespace": ns},
        "spec": Value::Object(vspec),
    });
    mark(
        &mut manifest,
        bindings,
        &format!("TrafficPolicy {ns}/{name}"),
    );
    DesiredObject {
        kind: ResourceKind::virtual_service(),
        namespace: Some(ns.clone()),
        name: vs_name,
        bindings: bindings.to_vec(),
        create_only: false,
        traffic_policies: vec![(format!("{ns}/{name}"), tp.metadata.generation.unwrap_or(0))],
        manifest,
    }
}

/// Computes every cluster's desired objects.
pub fn compute(hub: &Hub, settings: &RenderSettings) -> Desired {
    let mut out = Desired::default();
    // cluster -> object key -> (object, bindings); one object sent to many clusters is shared until a
    // cluster's copy has to differ (another binding sends it there too).
    let mut per: BTreeMap<String, BTreeMap<ObjectKey, Arc<DesiredObject>>> = BTreeMap::new();
    for c in &hub.clusters {
        per.entry(c.name.clone()).or_default();
    }
    // Adds an object (with the bindings that send it) to a cluster, merging with one already there.
    let add = |per: &mut BTreeMap<String, BTreeMap<ObjectKey, Arc<DesiredObject>>>,
               cluster: &str,
               obj: Arc<DesiredObject>| {
        let entry = per.entry(cluster.to_string()).or_default();
        match entry.get_mut(&obj.key()) {
            Some(existing) => {
                let create_only = existing.create_only && obj.create_only;
                let new_bindings = obj.bindings.iter().any(|b| !existing.bindings.contains(b));
                if new_bindings || create_only != existing.create_only {
                    let e = Arc::make_mut(existing);
                    for b in &obj.bindings {
                        if !e.bindings.contains(b) {
                            e.bindings.push(b.clone());
                        }
                    }
                    e.bindings.sort();
                    // createOnly only when every binding asks for it.
                    e.create_only = create_only;
                }
            }
            None => {
                entry.insert(obj.key(), obj);
            }
        }
    };
    // cluster -> (namespace, name) -> the TrafficPolicy and the bindings that send it there
    let mut selected: BTreeMap<String, BTreeMap<(String, String), Selected<'_>>> = BTreeMap::new();
    let mut bindings: Vec<&BindingPolicy> = hub
        .bindings
        .iter()
        .filter(|b| b.metadata.deletion_timestamp.is_none())
        .collect();
    bindings.sort_by_key(|b| b.metadata.name.clone());
    for b in bindings {
        let bname = b.metadata.name.clone().unwrap_or_default();
        let clusters = bound_clusters(b, &hub.clusters);
        out.bound.insert(
            bname.clone(),
            clusters.iter().map(|c| c.name.clone()).collect(),
        );
        for o in &hub.objects {
            let labels = o.labels();
            let mut matching = b.spec.downsync.iter().filter(|c| {
                clause_matches(
                    c,
                    &o.kind.group,
                    &o.kind.plural,
                    o.namespace(),
                    &[o.name()],
                    &labels,
                    &hub.namespace_labels,
                )
            });
            let Some(first) = matching.next() else {
                continue;
            };
            // KubeStellar: the createOnly bits of all the clauses that match an object are ORed.
            let create_only = first.create_only || matching.any(|c| c.create_only);
            if clusters.is_empty() {
                continue;
            }
            let mut manifest = clean_copy(&o.object, &o.kind);
            let source = match o.namespace() {
                Some(ns) => format!("{} {ns}/{}", o.kind.kind, o.name()),
                None => format!("{} {}", o.kind.kind, o.name()),
            };
            mark(&mut manifest, std::slice::from_ref(&bname), &source);
            let desired = |manifest: Value| DesiredObject {
                kind: o.kind.clone(),
                namespace: o
                    .namespace()
                    .map(String::from)
                    .filter(|_| o.kind.namespaced),
                name: o.name().to_string(),
                bindings: vec![bname.clone()],
                create_only,
                traffic_policies: Vec::new(),
                manifest,
            };
            if !crate::template::wants_expansion(&o.object) {
                let obj = Arc::new(desired(manifest));
                for c in &clusters {
                    add(&mut per, &c.name, obj.clone());
                }
                continue;
            }
            // KubeStellar's template expansion, per cluster. An object that fails to expand for any cluster
            // is held as it is everywhere (neither updated nor pruned), and its binding says why.
            let mut expanded = Vec::new();
            let mut failed = false;
            for c in &clusters {
                let props = crate::template::properties(
                    &c.name,
                    &c.labels,
                    hub.cluster_properties.get(&c.name),
                );
                match crate::template::expand(&manifest, &props) {
                    Ok(m) => expanded.push((c, m)),
                    Err(errors) => {
                        failed = true;
                        out.notes.push(Note {
                            cluster: c.name.clone(),
                            object: format!("BindingPolicy {bname}"),
                            reason: "TemplateExpansionFailed",
                            message: format!(
                                "{source} ({}: \"true\") does not expand for this cluster: {}; it is held as it is in every cluster until it does",
                                crate::template::EXPAND_ANNOTATION,
                                errors.join("; ")
                            ),
                        });
                    }
                }
            }
            if failed {
                out.retain.insert(desired(Value::Null).key());
                continue;
            }
            for (c, m) in expanded {
                add(&mut per, &c.name, Arc::new(desired(m)));
            }
        }
        for tp in &hub.traffic_policies {
            if tp.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let ns = tp
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            let name = tp.metadata.name.clone().unwrap_or_default();
            let labels = tp.metadata.labels.clone().unwrap_or_default();
            let plugin_ns = wasm_plugin_namespace(&ns, &tp.spec.0, &settings.gateway_namespace);
            let plugin_name = wasm_plugin_name(&ns, &name, &plugin_ns);
            let names = [name.as_str(), plugin_name.as_str()];
            let by_policy = b.spec.downsync.iter().any(|c| {
                clause_matches(
                    c,
                    "ksit.io",
                    "trafficpolicies",
                    Some(&ns),
                    &names,
                    &labels,
                    &hub.namespace_labels,
                )
            });
            let by_plugin = b.spec.downsync.iter().any(|c| {
                clause_matches(
                    c,
                    "extensions.istio.io",
                    "wasmplugins",
                    Some(&plugin_ns),
                    &names,
                    &labels,
                    &hub.namespace_labels,
                )
            });
            if !(by_policy || by_plugin) {
                let near_miss = b.spec.downsync.iter().any(|c| {
                    clause_matches(
                        c,
                        "extensions.istio.io",
                        "wasmplugins",
                        Some(&ns),
                        &names,
                        &labels,
                        &hub.namespace_labels,
                    )
                });
                if near_miss {
                    for c in &clusters {
                        out.notes.push(Note::on_policy(
                            &c.name,
                            &format!("{ns}/{name}"),
                            "NamespaceNotBound",
                            format!(
                                "its WasmPlugin must live in namespace {plugin_ns} (where the selected workloads run), which BindingPolicy {bname} does not bind; add {plugin_ns} to the clause's namespaces"
                            ),
                        ));
                    }
                }
                continue;
            }
            for c in &clusters {
                selected
                    .entry(c.name.clone())
                    .or_default()
                    .entry((ns.clone(), name.clone()))
                    .or_insert_with(|| Selected {
                        tp,
                        bindings: BTreeSet::new(),
                    })
                    .bindings
                    .insert(bname.clone());
            }
        }
    }
    // Validated once here, not per cluster.
    let invalid_ids: BTreeSet<String> = hub
        .traffic_policies
        .iter()
        .filter(|tp| !ksit_policy::validate_spec(&tp.spec.0, "spec").is_empty())
        .map(|tp| {
            let (ns, name) = policy_id(tp);
            format!("{ns}/{name}")
        })
        .collect();
    for (cluster, policies) in &selected {
        let r = render_policies(cluster, policies, &invalid_ids, settings);
        for o in r.objects {
            add(&mut per, cluster, Arc::new(o));
        }
        out.notes.extend(r.notes);
        out.retain.extend(r.retain);
    }
    // Finishing touches (binding annotation, hash): in place for an object only one cluster holds, once for
    // one several hold (`finished` keeps the source alive, so the address it is keyed by stays its own), and
    // equal results shared across clusters.
    type Finished = BTreeMap<*const DesiredObject, (Arc<DesiredObject>, Arc<DesiredObject>)>;
    let mut finished: Finished = BTreeMap::new();
    let finish = |f: &mut DesiredObject| {
        if let Some(a) = f
            .manifest
            .pointer_mut("/metadata/annotations")
            .and_then(Value::as_object_mut)
        {
            a.insert(BINDING_ANNOTATION.into(), json!(f.bindings.join(",")));
        }
        if f.kind.kind == "Namespace" {
            f.create_only = true;
        }
        stamp_hash(&mut f.manifest);
    };
    // Keyed by the object and its config hash: only objects with the same manifest are compared in full.
    let mut pool: BTreeMap<(ObjectKey, String), Vec<Arc<DesiredObject>>> = BTreeMap::new();
    let mut share = |o: DesiredObject| -> Arc<DesiredObject> {
        let hash = o
            .manifest
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(HASH_ANNOTATION))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let same = pool.entry((o.key(), hash)).or_default();
        if let Some(a) = same.iter().find(|a| ***a == o) {
            return a.clone();
        }
        let a = Arc::new(o);
        same.push(a.clone());
        a
    };
    for (cluster, objs) in per {
        // Every namespaced object's namespace is created first if missing (never updated, never pruned).
        let namespaces: BTreeSet<String> =
            objs.values().filter_map(|o| o.namespace.clone()).collect();
        let mut list: Vec<Arc<DesiredObject>> = Vec::new();
        for ns in namespaces {
            let key = ObjectKey {
                kind: ResourceKind::namespace_kind(),
                namespace: None,
                name: ns.clone(),
            };
            if objs.contains_key(&key) {
                continue;
            }
            let bindings: Vec<String> = objs
                .values()
                .filter(|o| o.namespace.as_deref() == Some(&ns))
                .flat_map(|o| o.bindings.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let mut manifest =
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            mark(&mut manifest, &bindings, &format!("Namespace {ns}"));
            stamp_hash(&mut manifest);
            list.push(share(DesiredObject {
                kind: ResourceKind::namespace_kind(),
                namespace: None,
                name: ns,
                bindings,
                create_only: true,
                traffic_policies: Vec::new(),
                manifest,
            }));
        }
        for o in objs.into_values() {
            let ptr = Arc::as_ptr(&o);
            if let Some((_, done)) = finished.get(&ptr) {
                list.push(done.clone());
                continue;
            }
            match Arc::try_unwrap(o) {
                Ok(mut f) => {
                    finish(&mut f);
                    list.push(share(f));
                }
                Err(o) => {
                    let mut f = DesiredObject::clone(&o);
                    finish(&mut f);
                    let f = share(f);
                    finished.insert(ptr, (o, f.clone()));
                    list.push(f);
                }
            }
        }
        list.sort_by_key(|o| (o.kind.rank(), o.key()));
        out.clusters
            .insert(cluster, ClusterDesired { objects: list });
    }
    out.notes.sort();
    out.notes.dedup();
    out
}

/// Records a hash of the manifest in an annotation, so a field ksit stops setting is noticed (and removed by
/// the next server-side apply) even though the live object still holds it.
pub const HASH_ANNOTATION: &str = "ksit.io/config-hash";

fn stamp_hash(manifest: &mut Value) {
    use sha2::{Digest, Sha256};
    let text = serde_json::to_string(manifest).unwrap_or_default();
    let hash = crate::module::hex(&Sha256::digest(text.as_bytes())[..8]);
    if let Some(meta) = manifest.get_mut("metadata").and_then(Value::as_object_mut) {
        let ann = meta.entry("annotations").or_insert_with(|| json!({}));
        if let Some(a) = ann.as_object_mut() {
            a.insert(HASH_ANNOTATION.into(), json!(hash));
        }
    }
}

/// Desired objects as multi-document YAML, in apply order (what `ksit render` writes).
pub fn to_yaml(objects: &[Arc<DesiredObject>]) -> String {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(&quote_yaml11_words(
            &serde_yaml::to_string(&o.manifest).unwrap_or_default(),
        ));
    }
    out
}

/// serde_yaml writes YAML 1.2, where `on`, `off`, `yes`, `no`, `y` and `n` are strings, and leaves them
/// unquoted; Kubernetes tools (sigs.k8s.io/yaml, so kubectl and istioctl) read YAML 1.1, where they are
/// booleans, so a header match `exact: "on"` would arrive as `true`. Quotes those plain scalars (keys and
/// values), leaving block scalars alone.
pub fn quote_yaml11_words(yaml: &str) -> String {
    const WORDS: [&str; 16] = [
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
        "OFF",
    ];
    let quote = |w: &str| {
        if WORDS.contains(&w) {
            format!("'{w}'")
        } else {
            w.to_string()
        }
    };
    let mut out = String::with_capacity(yaml.len());
    // The indentation a block scalar's lines run deeper than, while inside one.
    let mut block: Option<usize> = None;
    for line in yaml.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(b) = block {
            if line.trim().is_empty() || indent > b {
                out.push_str(line);
                out.push('\n');
                continue;
            }
            block = None;
        }
        // Sequence dashes, then an optional `key:`, then the value.
        let mut rest = &line[indent..];
        let mut head = line[..indent].to_string();
        while let Some(r) = rest.strip_prefix("- ") {
            head.push_str("- ");
            rest = r;
        }
        let (key, value) = match rest.split_once(": ") {
            Some((k, v)) if !k.starts_with(['\'', '"']) => (Some(k), v),
            _ => match rest.strip_suffix(':') {
                Some(k) if !k.starts_with(['\'', '"']) && !k.contains(": ") => (Some(k), ""),
                _ => (None, rest),
            },
        };
        if let Some(k) = key {
            head.push_str(&quote(k));
            head.push(':');
            if !value.is_empty() {
                head.push(' ');
            }
        }
        if matches!(value.trim_end_matches(['+', '-']), "|" | ">") {
            // Its lines are indented deeper than this one.
            block = Some(indent);
        }
        head.push_str(&quote(value));
        out.push_str(&head);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::DownsyncClause;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn kubestellar_clause_semantics() {
        let none: BTreeMap<String, String> = BTreeMap::new();
        let nsl: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let all = DownsyncClause::default();
        assert!(
            clause_matches(
                &all,
                "networking.istio.io",
                "gateways",
                Some("x"),
                &["g"],
                &none,
                &nsl
            ),
            "empty lists match all"
        );
        let c = DownsyncClause {
            api_group: Some("networking.istio.io".into()),
            resources: vec!["virtualservices".into()],
            namespaces: vec!["default".into()],
            ..Default::default()
        };
        assert!(clause_matches(
            &c,
            "networking.istio.io",
            "virtualservices",
            Some("default"),
            &["a"],
            &none,
            &nsl
        ));
        assert!(!clause_matches(
            &c,
            "networking.istio.io",
            "virtualservices",
            Some("other"),
            &["a"],
            &none,
            &nsl
        ));
        assert!(!clause_matches(
            &c,
            "networking.istio.io",
            "destinationrules",
            Some("default"),
            &["a"],
            &none,
            &nsl
        ));
        assert!(!clause_matches(
            &c,
            "security.istio.io",
            "virtualservices",
            Some("default"),
            &["a"],
            &none,
            &nsl
        ));
        assert!(
            !clause_matches(
                &c,
                "networking.istio.io",
                "virtualservices",
                None,
                &["a"],
                &none,
                &nsl
            ),
            "cluster-scoped needs \"*\""
        );
        let star = DownsyncClause {
            namespaces: vec!["*".into()],
            object_names: vec!["b".into()],
            ..Default::default()
        };
        assert!(clause_matches(
            &star,
            "",
            "namespaces",
            None,
            &["b"],
            &none,
            &nsl
        ));
        assert!(!clause_matches(
            &star,
            "",
            "namespaces",
            None,
            &["c"],
            &none,
            &nsl
        ));
        let sel = DownsyncClause {
            object_selectors: vec![crate::resources::LabelSelector {
                match_labels: labels(&[("app", "x")]),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(clause_matches(
            &sel,
            "g",
            "r",
            Some("n"),
            &["o"],
            &labels(&[("app", "x"), ("z", "1")]),
            &nsl
        ));
        assert!(!clause_matches(
            &sel,
            "g",
            "r",
            Some("n"),
            &["o"],
            &labels(&[("app", "y")]),
            &nsl
        ));
    }

    #[test]
    fn wasm_plugin_goes_where_the_workloads_run() {
        let mut spec: TrafficPolicySpec = serde_json::from_value(
            json!({"hosts": ["h"], "selector": {"matchLabels": {"istio": "ingressgateway"}}}),
        )
        .unwrap_or_default();
        assert_eq!(
            wasm_plugin_namespace("default", &spec, "istio-system"),
            "istio-system"
        );
        assert_eq!(
            wasm_plugin_name("default", "myapp", "istio-system"),
            "ksit-default-myapp"
        );
        spec.selector = serde_json::from_value(json!({"matchLabels": {"app": "reviews"}})).ok();
        assert_eq!(
            wasm_plugin_namespace("default", &spec, "istio-system"),
            "default"
        );
        assert_eq!(
            wasm_plugin_name("default", "myapp", "default"),
            "ksit-myapp"
        );
        spec.selector = None;
        spec.target_refs =
            serde_json::from_value(json!([{"kind": "Gateway", "name": "gw", "namespace": "edge"}]))
                .unwrap_or_default();
        assert_eq!(
            wasm_plugin_namespace("default", &spec, "istio-system"),
            "edge"
        );
    }

    #[test]
    fn plugin_config_resolves_overrides_for_the_cluster() {
        let spec: TrafficPolicySpec = serde_json::from_value(json!({"hosts": ["h"], "http": [{"name": "a", "route": [{"destination": {"host": "x"}}]}],
            "overrides": [{"clusters": ["c1"], "http": [{"name": "a", "route": [{"destination": {"host": "y"}}]}]}]})).unwrap_or_default();
        let c1 = plugin_config(&spec, "c1", false);
        assert!(c1.get("headerForStable").is_none());
        assert_eq!(plugin_config(&spec, "c1", true)["headerForStable"], false);
        assert_eq!(c1["cluster"], "c1");
        assert_eq!(c1["http"][0]["route"][0]["destination"]["host"], "y");
        assert!(c1.get("overrides").is_none());
        assert_eq!(
            plugin_config(&spec, "c2", false)["http"][0]["route"][0]["destination"]["host"],
            "x"
        );
    }

    fn hub(clause_namespaces: &[&str]) -> Hub {
        let bp: BindingPolicy = serde_json::from_value(json!({"apiVersion": "control.kubestellar.io/v1alpha1", "kind": "BindingPolicy",
            "metadata": {"name": "b"}, "spec": {"clusterSelectors": [{"matchLabels": {"mesh": "enabled"}}],
            "downsync": [{"apiGroup": "extensions.istio.io", "resources": ["wasmplugins"], "namespaces": clause_namespaces}]}}))
        .unwrap_or_else(|e| unreachable!("{e}"));
        let tp: TrafficPolicy = serde_json::from_value(json!({"apiVersion": "ksit.io/v1alpha1", "kind": "TrafficPolicy",
            "metadata": {"name": "app", "namespace": "default", "generation": 3},
            "spec": {"hosts": ["h"], "selector": {"matchLabels": {"istio": "ingressgateway"}}, "http": [{"route": [{"destination": {"host": "x"}}]}]}}))
        .unwrap_or_else(|e| unreachable!("{e}"));
        Hub {
            clusters: vec![
                Cluster {
                    name: "c1".into(),
                    labels: labels(&[("mesh", "enabled")]),
                },
                Cluster {
                    name: "c2".into(),
                    labels: BTreeMap::new(),
                },
            ],
            bindings: vec![bp],
            traffic_policies: vec![tp],
            ..Default::default()
        }
    }

    fn settings() -> RenderSettings {
        RenderSettings {
            module: ModuleSource::Oci {
                image: "oci://r/ksit:1".into(),
            },
            gateway_namespace: "istio-system".into(),
            stable_by_default_route: false,
        }
    }

    #[test]
    fn a_wasm_plugin_namespace_the_binding_does_not_cover_is_reported() {
        let d = compute(&hub(&["default"]), &settings());
        assert!(d.clusters["c1"].objects.is_empty());
        assert_eq!(d.notes.len(), 1, "{:?}", d.notes);
        assert!(
            d.notes[0]
                .message
                .contains("must live in namespace istio-system"),
            "{:?}",
            d.notes
        );
        assert_eq!(d.notes[0].object, "TrafficPolicy default/app");
        // Covering it renders the plugin there (and the VirtualService beside the policy), only in c1.
        let d = compute(&hub(&["default", "istio-system"]), &settings());
        let keys: Vec<String> = d.clusters["c1"]
            .objects
            .iter()
            .map(|o| o.key().to_string())
            .collect();
        assert_eq!(
            keys,
            [
                "Namespace default",
                "Namespace istio-system",
                "WasmPlugin istio-system/ksit-default-app",
                "VirtualService default/ksit-app"
            ]
        );
        assert!(d.clusters["c2"].objects.is_empty());
        assert!(d.notes.is_empty());
        let wp = &d.clusters["c1"].objects[2];
        assert_eq!(wp.manifest["spec"]["url"], "oci://r/ksit:1");
        assert_eq!(wp.traffic_policies, [("default/app".to_string(), 3)]);
    }

    #[test]
    fn what_is_the_same_on_every_cluster_is_held_once() {
        let bp = |name: &str, selector: Value, create_only: bool| -> BindingPolicy {
            serde_json::from_value(json!({"apiVersion": "control.kubestellar.io/v1alpha1", "kind": "BindingPolicy",
                "metadata": {"name": name}, "spec": {"clusterSelectors": [{"matchLabels": selector}],
                "downsync": [{"apiGroup": "networking.istio.io", "resources": ["destinationrules"], "namespaces": ["default"], "createOnly": create_only},
                             {"apiGroup": "extensions.istio.io", "resources": ["wasmplugins"], "namespaces": ["default", "istio-system"]}]}}))
            .unwrap_or_else(|e| unreachable!("{e}"))
        };
        let mut h = hub(&[]);
        for c in &mut h.clusters {
            c.labels = labels(&[("mesh", "enabled")]);
        }
        h.clusters.push(Cluster {
            name: "c3".into(),
            labels: labels(&[("mesh", "enabled"), ("edge", "yes")]),
        });
        h.bindings = vec![
            bp("all", json!({"mesh": "enabled"}), false),
            bp("edge", json!({"edge": "yes"}), true),
        ];
        h.objects = vec![HubObject {
            kind: ResourceKind::new(
                "networking.istio.io",
                "v1",
                "DestinationRule",
                "destinationrules",
                true,
            ),
            object: json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"name": "dr", "namespace": "default", "resourceVersion": "7"}, "spec": {"host": "x"}}),
        }];
        let d = compute(&h, &settings());
        let find = |c: &str, key: &str| -> Arc<DesiredObject> {
            d.clusters[c]
                .objects
                .iter()
                .find(|o| o.key().to_string() == key)
                .cloned()
                .unwrap_or_else(|| unreachable!("{key} not sent to {c}"))
        };
        let dr = "DestinationRule default/dr";
        // Sent the same way to c1 and c2: one object. c3 gets it through a second binding too: its own copy.
        assert!(Arc::ptr_eq(&find("c1", dr), &find("c2", dr)));
        assert!(!Arc::ptr_eq(&find("c1", dr), &find("c3", dr)));
        assert_eq!(find("c1", dr).bindings, ["all"]);
        assert_eq!(find("c3", dr).bindings, ["all", "edge"]);
        assert_eq!(
            find("c3", dr).manifest["metadata"]["annotations"][BINDING_ANNOTATION],
            "all,edge"
        );
        assert!(Arc::ptr_eq(
            &find("c1", "Namespace default"),
            &find("c2", "Namespace default")
        ));
        // The WasmPlugin names its cluster: one per cluster.
        let wp = "WasmPlugin istio-system/ksit-default-app";
        assert!(!Arc::ptr_eq(&find("c1", wp), &find("c2", wp)));
        assert_ne!(find("c1", wp).manifest, find("c2", wp).manifest);
        // Held once, and each cluster's objects exactly as computed for that cluster alone.
        for c in &h.clusters {
            let alone = compute(
                &Hub {
                    clusters: vec![c.clone()],
                    ..h.clone()
                },
                &settings(),
            );
            assert_eq!(alone.clusters[&c.name], d.clusters[&c.name], "{}", c.name);
            assert_eq!(
                find(&c.name, wp).manifest["spec"]["pluginConfig"]["cluster"],
                json!(c.name)
            );
        }
    }

    fn policy(name: &str, created: &str, hosts: &[&str], fail: &str) -> TrafficPolicy {
        serde_json::from_value(json!({"apiVersion": "ksit.io/v1alpha1", "kind": "TrafficPolicy",
            "metadata": {"name": name, "namespace": "shop", "generation": 2, "creationTimestamp": created},
            "spec": {"hosts": hosts, "selector": {"matchLabels": {"istio": "ingressgateway"}}, "failStrategy": fail,
                "http": [{"name": "api", "route": [{"destination": {"host": format!("{name}-svc")}}]}]}}))
        .unwrap_or_else(|e| unreachable!("{e}"))
    }

    fn gateway_hub(tps: Vec<TrafficPolicy>) -> Hub {
        let mut h = hub(&["shop", "istio-system"]);
        h.traffic_policies = tps;
        h
    }

    fn kinds_in(d: &Desired, cluster: &str) -> Vec<String> {
        d.clusters[cluster]
            .objects
            .iter()
            .filter(|o| o.kind.kind != "Namespace")
            .map(|o| o.key().to_string())
            .collect()
    }

    #[test]
    fn policies_on_the_same_workloads_share_one_wasm_plugin() {
        // "orders" is older than "cart", so the merged plugin is named after it.
        let hub = gateway_hub(vec![
            policy(
                "cart",
                "2026-02-01T00:00:00Z",
                &["cart.example.com"],
                "FAIL_OPEN",
            ),
            policy(
                "orders",
                "2026-01-01T00:00:00Z",
                &["orders.example.com"],
                "FAIL_OPEN",
            ),
        ]);
        let d = compute(&hub, &settings());
        assert_eq!(
            kinds_in(&d, "c1"),
            [
                "WasmPlugin istio-system/ksit-shop-orders",
                "VirtualService shop/ksit-cart",
                "VirtualService shop/ksit-orders"
            ]
        );
        let wp = d.clusters["c1"]
            .objects
            .iter()
            .find(|o| o.kind.kind == "WasmPlugin")
            .unwrap_or_else(|| unreachable!());
        let config = &wp.manifest["spec"]["pluginConfig"];
        assert_eq!(config["cluster"], "c1");
        let names: Vec<&str> = config["policies"]
            .as_array()
            .map(|l| l.iter().filter_map(|p| p["name"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(names, ["shop/orders", "shop/cart"]);
        assert!(wp.carries("shop/orders") && wp.carries("shop/cart"));
        assert_eq!(
            wp.manifest["metadata"]["annotations"][SOURCE_ANNOTATION],
            "TrafficPolicy shop/orders, TrafficPolicy shop/cart"
        );
        // The filter accepts what the controller renders, and decides each host by its own policy.
        let text = serde_json::to_vec(config).unwrap_or_default();
        let engine =
            ksit_policy::Engine::from_json(&text, None).unwrap_or_else(|e| unreachable!("{e:?}"));
        for (host, dest) in [
            ("cart.example.com", "cart-svc"),
            ("orders.example.com", "orders-svc"),
        ] {
            let headers: [(&[u8], &[u8]); 2] = [(b":authority", host.as_bytes()), (b":path", b"/")];
            let req = ksit_policy::Request::new(&headers);
            let decision = engine.decide(&req, 1);
            assert_eq!(decision.destination.map(|x| x.key.as_str()), Some(dest));
        }
        // Every decided request is marked unless the controller runs with --stable-by-default-route.
        assert!(engine.header_for_stable());
        let unmarked = compute(
            &hub,
            &RenderSettings {
                stable_by_default_route: true,
                ..settings()
            },
        );
        let config = unmarked.clusters["c1"]
            .objects
            .iter()
            .find(|o| o.kind.kind == "WasmPlugin")
            .map(|o| o.manifest["spec"]["pluginConfig"].clone())
            .unwrap_or_default();
        assert_eq!(config["headerForStable"], false);
        let text = serde_json::to_vec(&config).unwrap_or_default();
        let engine =
            ksit_policy::Engine::from_json(&text, None).unwrap_or_else(|e| unreachable!("{e:?}"));
        assert!(!engine.header_for_stable());
        // A different failStrategy cannot share the plugin (it is a WasmPlugin field).
        let d = compute(
            &gateway_hub(vec![
                policy(
                    "cart",
                    "2026-02-01T00:00:00Z",
                    &["cart.example.com"],
                    "FAIL_CLOSE",
                ),
                policy(
                    "orders",
                    "2026-01-01T00:00:00Z",
                    &["orders.example.com"],
                    "FAIL_OPEN",
                ),
            ]),
            &settings(),
        );
        let plugins: Vec<String> = kinds_in(&d, "c1")
            .into_iter()
            .filter(|k| k.starts_with("WasmPlugin"))
            .collect();
        assert_eq!(
            plugins,
            [
                "WasmPlugin istio-system/ksit-shop-cart",
                "WasmPlugin istio-system/ksit-shop-orders"
            ]
        );
    }

    #[test]
    fn the_older_policy_keeps_a_host_two_claim() {
        let d = compute(
            &gateway_hub(vec![
                policy(
                    "new",
                    "2026-03-01T00:00:00Z",
                    &["a.example.com", "B.example.com"],
                    "FAIL_OPEN",
                ),
                policy(
                    "old",
                    "2026-01-01T00:00:00Z",
                    &["b.example.com"],
                    "FAIL_OPEN",
                ),
            ]),
            &settings(),
        );
        assert_eq!(
            kinds_in(&d, "c1"),
            [
                "WasmPlugin istio-system/ksit-shop-old",
                "VirtualService shop/ksit-old"
            ]
        );
        assert_eq!(d.notes.len(), 1, "{:?}", d.notes);
        let n = &d.notes[0];
        assert_eq!(
            (n.object.as_str(), n.reason),
            ("TrafficPolicy shop/new", "HostConflict")
        );
        assert!(n.message.contains("host b.example.com"), "{}", n.message);
        assert!(n.message.contains("shop/old"), "{}", n.message);
    }

    #[test]
    fn an_invalid_policy_holds_its_shared_plugin_as_it_is() {
        let mut bad = policy(
            "bad",
            "2026-01-01T00:00:00Z",
            &["bad.example.com"],
            "FAIL_OPEN",
        );
        bad.spec.0.http[0].route[0].weight = Some(-1);
        let good = policy(
            "good",
            "2026-02-01T00:00:00Z",
            &["good.example.com"],
            "FAIL_OPEN",
        );
        let d = compute(&gateway_hub(vec![bad.clone(), good.clone()]), &settings());
        // The shared plugin and the good policy's VirtualService are held as they are (neither rendered nor
        // pruned), so the filter's decisions and the routes that carry them out stay a pair.
        assert!(kinds_in(&d, "c1").is_empty(), "{:?}", kinds_in(&d, "c1"));
        let mut retained: Vec<String> = d.retain.iter().map(ToString::to_string).collect();
        retained.sort();
        assert_eq!(
            retained,
            [
                "VirtualService shop/ksit-bad",
                "VirtualService shop/ksit-good",
                "WasmPlugin istio-system/ksit-shop-bad",
            ]
        );
        assert_eq!(d.notes.len(), 1, "{:?}", d.notes);
        assert_eq!(d.notes[0].reason, "HeldByInvalidPolicy");
        assert_eq!(d.notes[0].object, "TrafficPolicy shop/good");
        // Alone, an invalid policy keeps its own objects.
        let d = compute(&gateway_hub(vec![bad]), &settings());
        assert!(kinds_in(&d, "c1").is_empty());
        assert_eq!(d.retain.len(), 2);
        assert!(d.notes.is_empty());
    }

    fn binding(name: &str, clauses: Value) -> BindingPolicy {
        serde_json::from_value(json!({"apiVersion": "control.kubestellar.io/v1alpha1", "kind": "BindingPolicy",
            "metadata": {"name": name}, "spec": {"clusterSelectors": [{"matchLabels": {"mesh": "enabled"}}],
            "downsync": clauses}}))
        .unwrap_or_else(|e| unreachable!("{e}"))
    }

    fn config_map(name: &str, annotations: Value, data: Value) -> HubObject {
        HubObject {
            kind: ResourceKind::new("", "v1", "ConfigMap", "configmaps", true),
            object: json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": "default", "annotations": annotations,
                             "labels": {"app": "x"}}, "data": data}),
        }
    }

    fn mesh_clusters() -> Vec<Cluster> {
        vec![
            Cluster {
                name: "c1".into(),
                labels: labels(&[("mesh", "enabled"), ("region", "eu")]),
            },
            Cluster {
                name: "c2".into(),
                labels: labels(&[("mesh", "enabled"), ("region", "us")]),
            },
        ]
    }

    /// KubeStellar ORs the createOnly bits of all the clauses of a BindingPolicy that match an object; ksit
    /// used the first matching clause only, and so updated objects KubeStellar leaves alone.
    #[test]
    fn create_only_is_ored_over_the_clauses_that_match() {
        let cm = config_map("settings", json!({}), json!({"a": "1"}));
        let cases = [
            (
                json!([{"resources": ["configmaps"]}, {"objectSelectors": [{"matchLabels": {"app": "x"}}], "createOnly": true}]),
                true,
            ),
            (
                json!([{"resources": ["configmaps"], "createOnly": true}, {"objectNames": ["settings"]}]),
                true,
            ),
            (
                json!([{"resources": ["configmaps"]}, {"objectNames": ["settings"]}]),
                false,
            ),
            (
                json!([{"resources": ["configmaps"]}, {"objectNames": ["other"], "createOnly": true}]),
                false,
            ),
        ];
        for (clauses, want) in cases {
            let hub = Hub {
                clusters: mesh_clusters(),
                bindings: vec![binding("b", clauses.clone())],
                objects: vec![cm.clone()],
                ..Default::default()
            };
            let d = compute(&hub, &settings());
            let o = d.clusters["c1"]
                .objects
                .iter()
                .find(|o| o.name == "settings")
                .cloned()
                .unwrap_or_else(|| unreachable!("{clauses}: not sent"));
            assert_eq!(o.create_only, want, "{clauses}");
        }
        // Across BindingPolicies (each a KubeStellar Binding, transported on its own), an object one of them
        // keeps up to date is updated.
        let hub = Hub {
            clusters: mesh_clusters(),
            bindings: vec![
                binding("keep", json!([{"resources": ["configmaps"]}])),
                binding(
                    "seed",
                    json!([{"resources": ["configmaps"], "createOnly": true}]),
                ),
            ],
            objects: vec![cm],
            ..Default::default()
        };
        let d = compute(&hub, &settings());
        let o = d.clusters["c1"]
            .objects
            .iter()
            .find(|o| o.name == "settings");
        assert_eq!(
            o.map(|o| (o.create_only, o.bindings.clone())),
            Some((false, vec!["keep".to_string(), "seed".to_string()]))
        );
    }

    /// `control.kubestellar.io/expand-templates: "true"`: each leaf string is expanded per cluster with the
    /// cluster's properties (its ConfigMap in customization-properties, annotations, labels, clusterName);
    /// ksit used to copy the `{{ }}` text as it was.
    #[test]
    fn expand_templates_renders_per_cluster_or_holds_the_object() {
        let expand = json!({(crate::template::EXPAND_ANNOTATION): "true"});
        let cm = config_map(
            "endpoint",
            expand.clone(),
            json!({"url": "https://loki.{{ .region }}.example.com/{{ .clusterName }}-{{.clusterHash}}", "plain": "{{ .region }}"}),
        );
        let mut hub = Hub {
            clusters: mesh_clusters(),
            bindings: vec![binding("b", json!([{"resources": ["configmaps"]}]))],
            objects: vec![cm.clone()],
            ..Default::default()
        };
        for (c, hash) in [("c1", "1001-dead-beef"), ("c2", "2002-beef-dead")] {
            hub.cluster_properties.insert(
                c.into(),
                crate::template::extra_properties(
                    &BTreeMap::new(),
                    vec![("clusterHash".to_string(), hash.to_string())],
                ),
            );
        }
        let d = compute(&hub, &settings());
        let data = |c: &str| {
            d.clusters[c]
                .objects
                .iter()
                .find(|o| o.name == "endpoint")
                .map(|o| o.manifest["data"].clone())
                .unwrap_or_default()
        };
        assert_eq!(
            data("c1")["url"],
            "https://loki.eu.example.com/c1-1001-dead-beef"
        );
        assert_eq!(
            data("c2")["url"],
            "https://loki.us.example.com/c2-2002-beef-dead"
        );
        assert_eq!(data("c2")["plain"], "us");
        assert!(d.notes.is_empty(), "{:?}", d.notes);
        // Without the annotation the text is copied as it is.
        let mut plain = hub.clone();
        plain.objects = vec![config_map(
            "endpoint",
            json!({}),
            json!({"url": "{{ .region }}"}),
        )];
        let d = compute(&plain, &settings());
        assert_eq!(
            d.clusters["c1"]
                .objects
                .iter()
                .find(|o| o.name == "endpoint")
                .map(|o| o.manifest["data"]["url"].clone()),
            Some(json!("{{ .region }}"))
        );
        // A property one cluster lacks: the object is held as it is everywhere, and its binding says why.
        hub.cluster_properties.remove("c2");
        let d = compute(&hub, &settings());
        assert!(d
            .clusters
            .values()
            .all(|c| c.objects.iter().all(|o| o.name != "endpoint")));
        assert!(
            d.retain
                .iter()
                .any(|k| k.to_string() == "ConfigMap default/endpoint"),
            "{:?}",
            d.retain
        );
        assert_eq!(d.notes.len(), 1, "{:?}", d.notes);
        let n = &d.notes[0];
        assert_eq!(
            (n.cluster.as_str(), n.object.as_str(), n.reason),
            ("c2", "BindingPolicy b", "TemplateExpansionFailed")
        );
        assert!(
            n.message
                .contains("data.url: map has no entry for key \"clusterHash\""),
            "{}",
            n.message
        );
    }

    /// What `ksit render` writes reads back, through a YAML 1.1 reader's eyes too (Kubernetes tools), as
    /// the same strings: `on`, `yes`, `n` and the like are quoted; block scalars are left alone.
    #[test]
    fn rendered_yaml_keeps_yaml11_words_strings() {
        let v = json!({"match": [{"headers": {"x-maintenance": {"exact": "on"}, "no": {"exact": "y"}}}],
            "list": ["off", "On", "fine", "on time"], "text": "line one\non\n", "n": 1, "b": true});
        let yaml = quote_yaml11_words(&serde_yaml::to_string(&v).unwrap_or_default());
        for bare in [": on\n", ": y\n", "- off\n", "- On\n", "\nno:"] {
            assert!(!yaml.contains(bare), "{bare:?} left plain in:\n{yaml}");
        }
        assert!(
            yaml.contains("  on\n"),
            "block scalar content kept:\n{yaml}"
        );
        let back: Value = serde_yaml::from_str(&yaml).unwrap_or_default();
        assert_eq!(back, v, "{yaml}");
    }
}
