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
