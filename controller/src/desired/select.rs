//! Stage 1 of `compute`: KubeStellar's selection semantics, which clusters a BindingPolicy binds and which
//! objects its downsync clauses select.

use super::render::policy_id;
use super::{
    clean_copy, mark, wasm_plugin_name, wasm_plugin_namespace, Cluster, DesiredObject, Hub,
    HubObject, Note, ObjectKey, RenderSettings,
};
use crate::resources::{BindingPolicy, DownsyncClause, TrafficPolicy};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

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

/// What one object a binding sends becomes.
pub(super) enum Sent {
    /// The same object in every cluster the binding binds.
    Same(Arc<DesiredObject>),
    /// Expanded per cluster (KubeStellar's `expand-templates`), by cluster name.
    PerCluster(BTreeMap<String, Arc<DesiredObject>>),
}

/// What one BindingPolicy selects: the clusters it binds, the hub objects it sends there, and the
/// TrafficPolicies it sends (whose WasmPlugin and VirtualService are rendered for those clusters).
pub(super) struct Selection<'h> {
    pub(super) name: String,
    pub(super) clusters: Vec<&'h Cluster>,
    pub(super) objects: Vec<Sent>,
    pub(super) policies: Vec<&'h TrafficPolicy>,
}

impl Selection<'_> {
    /// Whether what it sends differs between clusters (then a cluster cannot share another's objects).
    pub(super) fn per_cluster(&self) -> bool {
        self.objects
            .iter()
            .any(|o| matches!(o, Sent::PerCluster(_)))
    }
}

/// Stage 1: for every BindingPolicy (by name, deleted ones left out), the clusters it binds and what it
/// sends them. Problems go to `notes` (a TrafficPolicy whose WasmPlugin namespace the binding does not
/// cover; a template that does not expand) and objects to hold as they are to `retain`.
pub(super) fn select<'h>(
    hub: &'h Hub,
    settings: &RenderSettings,
    notes: &mut Vec<Note>,
    retain: &mut BTreeSet<ObjectKey>,
) -> Vec<Selection<'h>> {
    let mut bindings: Vec<&BindingPolicy> = hub
        .bindings
        .iter()
        .filter(|b| b.metadata.deletion_timestamp.is_none())
        .collect();
    bindings.sort_by_key(|b| b.metadata.name.clone());
    bindings
        .into_iter()
        .map(|b| {
            let name = b.metadata.name.clone().unwrap_or_default();
            let clusters = bound_clusters(b, &hub.clusters);
            let objects = if clusters.is_empty() {
                Vec::new()
            } else {
                hub.objects
                    .iter()
                    .filter_map(|o| sent_object(hub, b, &name, &clusters, o, notes, retain))
                    .collect()
            };
            let policies = hub
                .traffic_policies
                .iter()
                .filter(|tp| tp.metadata.deletion_timestamp.is_none())
                .filter(|tp| sends_policy(hub, b, &name, &clusters, tp, settings, notes))
                .collect();
            Selection {
                name,
                clusters,
                objects,
                policies,
            }
        })
        .collect()
}

/// The hub object `o` as binding `b` sends it, if a clause selects it.
fn sent_object(
    hub: &Hub,
    b: &BindingPolicy,
    bname: &str,
    clusters: &[&Cluster],
    o: &HubObject,
    notes: &mut Vec<Note>,
    retain: &mut BTreeSet<ObjectKey>,
) -> Option<Sent> {
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
    let first = matching.next()?;
    // KubeStellar: the createOnly bits of all the clauses that match an object are ORed.
    let create_only = first.create_only || matching.any(|c| c.create_only);
    let mut manifest = clean_copy(&o.object, &o.kind);
    let source = match o.namespace() {
        Some(ns) => format!("{} {ns}/{}", o.kind.kind, o.name()),
        None => format!("{} {}", o.kind.kind, o.name()),
    };
    mark(&mut manifest, &[bname.to_string()], &source);
    let desired = |manifest: Value| DesiredObject {
        kind: o.kind.clone(),
        namespace: o
            .namespace()
            .map(String::from)
            .filter(|_| o.kind.namespaced),
        name: o.name().to_string(),
        bindings: vec![bname.to_string()],
        create_only,
        traffic_policies: Vec::new(),
        manifest,
    };
    if !crate::template::wants_expansion(&o.object) {
        return Some(Sent::Same(Arc::new(desired(manifest))));
    }
    // KubeStellar's template expansion, per cluster. An object that fails to expand for any cluster is held
    // as it is everywhere (neither updated nor pruned), and its binding says why.
    let mut expanded = BTreeMap::new();
    let mut failed = false;
    for c in clusters {
        let props =
            crate::template::properties(&c.name, &c.labels, hub.cluster_properties.get(&c.name));
        match crate::template::expand(&manifest, &props) {
            Ok(m) => {
                expanded.insert(c.name.clone(), Arc::new(desired(m)));
            }
            Err(errors) => {
                failed = true;
                notes.push(Note {
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
        retain.insert(desired(Value::Null).key());
        return None;
    }
    Some(Sent::PerCluster(expanded))
}

/// Whether binding `b` sends TrafficPolicy `tp`: a clause selects the policy, or its WasmPlugin where that
/// must live. A clause that would select the WasmPlugin in the policy's own namespace, when it must live
/// elsewhere, is noted on the policy for every bound cluster.
fn sends_policy(
    hub: &Hub,
    b: &BindingPolicy,
    bname: &str,
    clusters: &[&Cluster],
    tp: &TrafficPolicy,
    settings: &RenderSettings,
    notes: &mut Vec<Note>,
) -> bool {
    let (ns, name) = policy_id(tp);
    let labels = tp.metadata.labels.clone().unwrap_or_default();
    let plugin_ns = wasm_plugin_namespace(&ns, &tp.spec.0, &settings.gateway_namespace);
    let plugin_name = wasm_plugin_name(&ns, &name, &plugin_ns);
    let names = [name.as_str(), plugin_name.as_str()];
    let selects = |group: &str, plural: &str, namespace: &str| {
        b.spec.downsync.iter().any(|c| {
            clause_matches(
                c,
                group,
                plural,
                Some(namespace),
                &names,
                &labels,
                &hub.namespace_labels,
            )
        })
    };
    if selects("ksit.io", "trafficpolicies", &ns)
        || selects("extensions.istio.io", "wasmplugins", &plugin_ns)
    {
        return true;
    }
    if selects("extensions.istio.io", "wasmplugins", &ns) {
        for c in clusters {
            notes.push(Note::on_policy(
                &c.name,
                &format!("{ns}/{name}"),
                "NamespaceNotBound",
                format!(
                    "its WasmPlugin must live in namespace {plugin_ns} (where the selected workloads run), which BindingPolicy {bname} does not bind; add {plugin_ns} to the clause's namespaces"
                ),
            ));
        }
    }
    false
}
