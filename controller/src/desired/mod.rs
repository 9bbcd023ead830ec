//! Desired state: which objects every cluster should hold, computed from a snapshot of the hub.
//!
//! Pure (no I/O), so the controller and `ksit render` produce the same objects, byte for byte. The stages:
//! `select` (which clusters each BindingPolicy binds, and which hub objects and TrafficPolicies it sends
//! there), `render` (TrafficPolicies into WasmPlugins and VirtualServices), then this module's `compute`
//! assembles each cluster's list (bindings merged, namespaces added, hashes stamped, equal objects shared).

mod render;
mod select;
#[cfg(test)]
mod tests;

pub use render::Target;
pub use render::{plugin_config, render_virtual_service, wasm_plugin_name, wasm_plugin_namespace};
use render::{policy_id, render_policies, Selected};
pub use select::{bound_clusters, clause_matches};

use crate::resources::{BindingPolicy, TrafficPolicy};
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

/// The IntegrationTarget annotation naming the cluster's Istio cluster ID (the `CLUSTER_ID` istiod gives
/// its proxies; Istio's default is `Kubernetes`) when it differs from the ksit cluster name.
pub const ISTIO_CLUSTER_ID_ANNOTATION: &str = "ksit.io/istio-cluster-id";

/// A cluster's Istio cluster ID from its IntegrationTarget's annotations, when set and not empty.
pub fn istio_cluster_id(annotations: Option<&BTreeMap<String, String>>) -> Option<String> {
    annotations?
        .get(ISTIO_CLUSTER_ID_ANNOTATION)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
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
    /// Render each cluster's WasmPlugin and VirtualService for that cluster alone (its overrides resolved,
    /// its name in the pluginConfig), instead of one set for every cluster that each proxy's filter resolves
    /// by its Istio cluster ID.
    pub per_cluster: bool,
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
    /// Per cluster whose Istio cluster ID is not its ksit name, that ID (IntegrationTarget annotation
    /// `ksit.io/istio-cluster-id`).
    pub istio_cluster_ids: BTreeMap<String, String>,
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
    /// Every cluster known to the hub, bound or not (an unbound cluster should hold nothing). Clusters that
    /// receive the same share one list.
    pub clusters: BTreeMap<String, Arc<ClusterDesired>>,
    /// Per binding, the clusters it binds.
    pub bound: BTreeMap<String, Vec<String>>,
    pub notes: Vec<Note>,
    /// Objects rendered from TrafficPolicies whose spec is invalid right now: every cluster keeps them as they
    /// are (neither updated nor pruned) until the spec is fixed.
    pub retain: BTreeSet<ObjectKey>,
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

/// Computes every cluster's desired objects, in stages: [`select::select`] (which clusters each
/// BindingPolicy binds, and the hub objects and TrafficPolicies it sends them), then, once per group of
/// clusters that receive the same (the same bindings, nothing expanded per cluster, and, in the default
/// rendering, one WasmPlugin and VirtualService for every cluster), [`render::render_policies`] and
/// [`Assembler::assemble`]. Every cluster of a group shares the result: a thousand clusters bound alike
/// cost one rendering and one list.
pub fn compute(hub: &Hub, settings: &RenderSettings) -> Desired {
    let mut out = Desired::default();
    let selections = select::select(hub, settings, &mut out.notes, &mut out.retain);
    let mut binding_of: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, s) in selections.iter().enumerate() {
        out.bound.insert(
            s.name.clone(),
            s.clusters.iter().map(|c| c.name.clone()).collect(),
        );
        for c in &s.clusters {
            binding_of.entry(c.name.as_str()).or_default().push(i);
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
    let ids = istio_cluster_ids(hub);
    // Clusters grouped by what they receive: the bindings that bind them, and their own name when something
    // they receive is made for them alone.
    type GroupKey<'h> = (Vec<usize>, Option<&'h str>);
    let mut groups: BTreeMap<GroupKey<'_>, Vec<&Cluster>> = BTreeMap::new();
    for c in &hub.clusters {
        let bound = binding_of.get(c.name.as_str()).cloned().unwrap_or_default();
        let own = bound.iter().any(|&i| {
            let s = &selections[i];
            s.per_cluster() || (settings.per_cluster && !s.policies.is_empty())
        });
        groups
            .entry((bound, own.then_some(c.name.as_str())))
            .or_default()
            .push(c);
    }
    let mut assembler = Assembler::default();
    for ((bound, _), clusters) in groups {
        let Some(first) = clusters.first() else {
            continue;
        };
        let mut objects: BTreeMap<ObjectKey, Arc<DesiredObject>> = BTreeMap::new();
        let mut selected: BTreeMap<(String, String), Selected<'_>> = BTreeMap::new();
        for &i in &bound {
            let s = &selections[i];
            for o in &s.objects {
                match o {
                    select::Sent::Same(a) => add(&mut objects, a.clone()),
                    select::Sent::PerCluster(m) => {
                        if let Some(a) = m.get(&first.name) {
                            add(&mut objects, a.clone());
                        }
                    }
                }
            }
            for tp in &s.policies {
                selected
                    .entry(policy_id(tp))
                    .or_insert_with(|| Selected {
                        tp,
                        bindings: BTreeSet::new(),
                    })
                    .bindings
                    .insert(s.name.clone());
            }
        }
        let target = if settings.per_cluster {
            Target::Cluster(&first.name)
        } else {
            Target::Every { ids: &ids }
        };
        let rendered = render_policies(target, &first.name, &selected, &invalid_ids, settings);
        for o in rendered.objects {
            add(&mut objects, Arc::new(o));
        }
        out.retain.extend(rendered.retain);
        for c in &clusters {
            out.notes.extend(rendered.notes.iter().map(|n| Note {
                cluster: c.name.clone(),
                ..n.clone()
            }));
        }
        let list = Arc::new(assembler.assemble(objects));
        for c in clusters {
            out.clusters.insert(c.name.clone(), list.clone());
        }
    }
    out.notes.sort();
    out.notes.dedup();
    out
}

/// The Istio cluster IDs that differ from their ksit cluster names (Istio ID -> ksit name), for the shared
/// pluginConfig's `clusterIds`. An Istio ID two clusters claim is left out: their proxies cannot be told
/// apart, and apply the base policy (`ksit analyze` reports it).
fn istio_cluster_ids(hub: &Hub) -> BTreeMap<String, String> {
    let mut claims: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for c in &hub.clusters {
        let id = hub
            .istio_cluster_ids
            .get(&c.name)
            .map_or(c.name.as_str(), String::as_str);
        claims.entry(id).or_default().push(c.name.as_str());
    }
    claims
        .into_iter()
        .filter_map(|(id, names)| match names.as_slice() {
            [only] if *only != id => Some((id.to_string(), (*only).to_string())),
            _ => None,
        })
        .collect()
}

/// Adds an object (with the bindings that send it) to a cluster's set, merging with one already there:
/// its bindings are the union, and it is create-only only when every binding asks for that.
fn add(objects: &mut BTreeMap<ObjectKey, Arc<DesiredObject>>, obj: Arc<DesiredObject>) {
    match objects.get_mut(&obj.key()) {
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
                e.create_only = create_only;
            }
        }
        None => {
            objects.insert(obj.key(), obj);
        }
    }
}

/// Stage 3: a cluster's objects as it gets them: every namespaced object's namespace first (created if
/// missing, never updated, never pruned), each object finished (the binding annotation, the config hash),
/// and equal objects shared, across the groups of one `compute`.
#[derive(Default)]
struct Assembler {
    /// Objects finished once for several groups, by the address of their unfinished source (kept alive
    /// here, so the address stays its own).
    finished: BTreeMap<*const DesiredObject, (Arc<DesiredObject>, Arc<DesiredObject>)>,
    /// Keyed by the object and its config hash: only objects with the same manifest are compared in full.
    pool: BTreeMap<(ObjectKey, String), Vec<Arc<DesiredObject>>>,
}

impl Assembler {
    fn share(&mut self, o: DesiredObject) -> Arc<DesiredObject> {
        let same = self
            .pool
            .entry((o.key(), o.config_hash().to_string()))
            .or_default();
        if let Some(a) = same.iter().find(|a| ***a == o) {
            return a.clone();
        }
        let a = Arc::new(o);
        same.push(a.clone());
        a
    }

    fn finish(f: &mut DesiredObject) {
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
    }

    fn assemble(&mut self, objects: BTreeMap<ObjectKey, Arc<DesiredObject>>) -> ClusterDesired {
        let namespaces: BTreeSet<String> = objects
            .values()
            .filter_map(|o| o.namespace.clone())
            .collect();
        let mut list: Vec<Arc<DesiredObject>> = Vec::new();
        for ns in namespaces {
            let key = ObjectKey {
                kind: ResourceKind::namespace_kind(),
                namespace: None,
                name: ns.clone(),
            };
            if objects.contains_key(&key) {
                continue;
            }
            let bindings: Vec<String> = objects
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
            list.push(self.share(DesiredObject {
                kind: ResourceKind::namespace_kind(),
                namespace: None,
                name: ns,
                bindings,
                create_only: true,
                traffic_policies: Vec::new(),
                manifest,
            }));
        }
        for o in objects.into_values() {
            let ptr = Arc::as_ptr(&o);
            if let Some((_, done)) = self.finished.get(&ptr) {
                list.push(done.clone());
                continue;
            }
            match Arc::try_unwrap(o) {
                Ok(mut f) => {
                    Self::finish(&mut f);
                    list.push(self.share(f));
                }
                Err(o) => {
                    let mut f = DesiredObject::clone(&o);
                    Self::finish(&mut f);
                    let f = self.share(f);
                    self.finished.insert(ptr, (o, f.clone()));
                    list.push(f);
                }
            }
        }
        list.sort_by_key(|o| (o.kind.rank(), o.key()));
        ClusterDesired { objects: list }
    }
}

/// The objects the TrafficPolicies render (WasmPlugins, VirtualServices), once: what one GitOps or
/// KubeStellar delivery sends every bound cluster. An error when clusters need different ones (different
/// policies bound to them share a WasmPlugin, or per-cluster rendering), naming two that differ.
pub fn rendered_for_every_cluster(d: &Desired) -> anyhow::Result<Vec<Arc<DesiredObject>>> {
    let mut out: BTreeMap<ObjectKey, (Arc<DesiredObject>, &str)> = BTreeMap::new();
    for (cluster, cd) in &d.clusters {
        for o in cd.objects.iter().filter(|o| !o.traffic_policies.is_empty()) {
            match out.get(&o.key()) {
                Some((seen, other)) if seen.manifest != o.manifest => anyhow::bail!(
                    "{} differs between clusters {other} and {cluster} (different TrafficPolicies bound to them share it, or --per-cluster-rendering): deliver per cluster instead",
                    o.key()
                ),
                Some(_) => {}
                None => {
                    out.insert(o.key(), (o.clone(), cluster.as_str()));
                }
            }
        }
    }
    Ok(out.into_values().map(|(o, _)| o).collect())
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
