//! `ksit controller --deliver kubestellar`: ksit renders, KubeStellar delivers. The WasmPlugins and
//! VirtualServices the TrafficPolicies render (the same for every cluster) are written on the hub, KubeStellar's
//! WDS, each labelled for the BindingPolicies that send its TrafficPolicies; for each such BindingPolicy `B`
//! ksit writes a companion BindingPolicy `ksit-B` that selects the same clusters and those objects. ksit
//! talks to no member cluster. Status on the TrafficPolicies comes from what KubeStellar reports back: the
//! companion's Binding (the clusters it resolved) and its BindingPolicy conditions, and, where a cluster
//! reports it (singleton reported state), the object's own status.
//!
//! `plan` and `reports` are pure; `sync` and `read_kubestellar` do the I/O.

use crate::desired::{
    self, Desired, DesiredObject, ObjectKey, ResourceKind, FIELD_MANAGER, MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
};
use crate::error::Error;
use crate::member::{ClusterReport, ObjectReport, Outcome};
use crate::resources::BindingPolicy;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Marks what ksit wrote on the hub for KubeStellar to deliver (value `kubestellar`).
pub const DELIVERY_LABEL: &str = "ksit.io/delivery";
const DELIVERY_VALUE: &str = "kubestellar";
/// The label (key prefix, then the binding) that a companion BindingPolicy selects objects by.
pub const FOR_BINDING_PREFIX: &str = "delivery.ksit.io/";
/// The companion of BindingPolicy `B` is `ksit-B`.
pub const COMPANION_PREFIX: &str = "ksit-";

/// The label key that says an object is delivered for BindingPolicy `binding`: `delivery.ksit.io/NAME`, or a
/// hash of the name when it is too long for a label key's name part (63 characters).
pub fn binding_label(binding: &str) -> String {
    if binding.len() <= 63 {
        format!("{FOR_BINDING_PREFIX}{binding}")
    } else {
        use sha2::{Digest, Sha256};
        let h = crate::module::hex(&Sha256::digest(binding.as_bytes())[..8]);
        format!("{FOR_BINDING_PREFIX}b-{h}")
    }
}

pub fn companion_name(binding: &str) -> String {
    format!("{COMPANION_PREFIX}{binding}")
}

/// What ksit keeps on the hub for KubeStellar.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HubSet {
    /// The rendered objects, labelled for their bindings, as applied to the hub.
    pub objects: Vec<(ObjectKey, Value)>,
    /// The companion BindingPolicies.
    pub companions: Vec<Value>,
    /// Per user BindingPolicy, the objects its companion delivers.
    pub delivered: BTreeMap<String, BTreeSet<ObjectKey>>,
    /// Objects clusters would need in different versions (one hub object cannot be both): why.
    pub conflicts: Vec<String>,
    /// Objects left on the hub as they are, neither updated nor deleted: those in conflict, and those of a
    /// TrafficPolicy whose spec is invalid right now.
    pub held: BTreeSet<ObjectKey>,
}

/// The hub objects for `desired` (computed with one rendering for every cluster): every object a
/// TrafficPolicy renders, once, labelled for each BindingPolicy that sends it, and a companion for each of
/// those BindingPolicies.
pub fn plan(bindings: &[BindingPolicy], desired: &Desired) -> HubSet {
    let mut set = HubSet::default();
    let mut seen: BTreeMap<ObjectKey, (Arc<DesiredObject>, String)> = BTreeMap::new();
    for (cluster, cd) in &desired.clusters {
        for o in cd.objects.iter().filter(|o| !o.traffic_policies.is_empty()) {
            match seen.get_mut(&o.key()) {
                Some((first, at)) if first.manifest["spec"] != o.manifest["spec"] => {
                    set.conflicts.push(format!(
                        "{} differs between clusters {at} and {cluster}: different TrafficPolicies bound to them share it; KubeStellar delivers one object to every cluster a binding selects",
                        o.key()
                    ));
                }
                Some((first, _)) => {
                    // The same object, maybe sent by more bindings elsewhere: the union of bindings.
                    if o.bindings.iter().any(|b| !first.bindings.contains(b)) {
                        let f = Arc::make_mut(first);
                        for b in &o.bindings {
                            if !f.bindings.contains(b) {
                                f.bindings.push(b.clone());
                            }
                        }
                        f.bindings.sort();
                    }
                }
                None => {
                    seen.insert(o.key(), (o.clone(), cluster.clone()));
                }
            }
        }
    }
    set.held.extend(desired.retain.iter().cloned());
    for c in &set.conflicts {
        if let Some(k) = seen.keys().find(|k| c.starts_with(&k.to_string())).cloned() {
            seen.remove(&k);
            set.held.insert(k);
        }
    }
    for (key, (o, _)) in seen {
        let mut manifest = o.manifest.clone();
        if let Some(labels) = manifest
            .pointer_mut("/metadata/labels")
            .and_then(Value::as_object_mut)
        {
            labels.insert(DELIVERY_LABEL.into(), json!(DELIVERY_VALUE));
            for b in &o.bindings {
                labels.insert(binding_label(b), json!("true"));
            }
        }
        if let Some(a) = manifest
            .pointer_mut("/metadata/annotations")
            .and_then(Value::as_object_mut)
        {
            a.insert(
                desired::BINDING_ANNOTATION.into(),
                json!(o.bindings.join(",")),
            );
        }
        for b in &o.bindings {
            set.delivered
                .entry(b.clone())
                .or_default()
                .insert(key.clone());
        }
        set.objects.push((key, manifest));
    }
    for b in bindings {
        let name = b.metadata.name.clone().unwrap_or_default();
        if !set.delivered.contains_key(&name) {
            continue;
        }
        let selector = json!([{"matchLabels": {binding_label(&name): "true"}}]);
        set.companions.push(json!({
            "apiVersion": "control.kubestellar.io/v1alpha1",
            "kind": "BindingPolicy",
            "metadata": {
                "name": companion_name(&name),
                "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE, DELIVERY_LABEL: DELIVERY_VALUE},
                "annotations": {desired::SOURCE_ANNOTATION: format!("BindingPolicy {name}")},
            },
            "spec": {
                "clusterSelectors": b.spec.cluster_selectors,
                "downsync": [
                    {"apiGroup": "extensions.istio.io", "resources": ["wasmplugins"], "objectSelectors": selector},
                    {"apiGroup": "networking.istio.io", "resources": ["virtualservices"], "objectSelectors": selector},
                ],
            },
        }));
    }
    set
}

/// What KubeStellar reports on a companion BindingPolicy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reported {
    /// The clusters its Binding lists as destinations; None when there is no Binding.
    pub destinations: Option<BTreeSet<String>>,
    /// The BindingPolicy's conditions: type -> (status == "True", message).
    pub conditions: BTreeMap<String, (bool, String)>,
    pub errors: Vec<String>,
}

/// What KubeStellar reports, per user BindingPolicy (by its name), plus the hub objects' own reported
/// status (singleton reported state) where a cluster sent one back: key -> problem.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KubeStellarState {
    pub bindings: BTreeMap<String, Reported>,
    pub object_problems: BTreeMap<ObjectKey, String>,
}

/// Reports per cluster, as the status writer reads a member's: an object counts as synced in a cluster when
/// KubeStellar's Binding for its companion lists the cluster and the companion is not reported failing.
/// When KubeStellar has said nothing, the objects are failed with a message that says so.
pub fn reports(
    desired: &Desired,
    set: &HubSet,
    ks: &KubeStellarState,
    revision: u64,
) -> BTreeMap<String, ClusterReport> {
    let mut out = BTreeMap::new();
    for (cluster, cd) in &desired.clusters {
        let mut objects = Vec::new();
        for o in cd.objects.iter().filter(|o| !o.traffic_policies.is_empty()) {
            let key = o.key();
            let outcome = if let Some(c) = set
                .conflicts
                .iter()
                .find(|c| c.starts_with(&key.to_string()))
            {
                Outcome::Failed(c.clone())
            } else {
                outcome_of(cluster, &key, o, ks)
            };
            objects.push(ObjectReport { key, outcome });
        }
        if objects.is_empty() {
            continue;
        }
        out.insert(
            cluster.clone(),
            ClusterReport {
                cluster: cluster.clone(),
                revision,
                // ksit does not connect: reachability is KubeStellar's to report.
                reachable: true,
                error: None,
                objects,
                istio: None,
                writes: 0,
            },
        );
    }
    out
}

fn outcome_of(cluster: &str, key: &ObjectKey, o: &DesiredObject, ks: &KubeStellarState) -> Outcome {
    let mut problems = Vec::new();
    let mut delivered = false;
    for b in &o.bindings {
        let companion = companion_name(b);
        match ks.bindings.get(b) {
            None | Some(Reported { destinations: None, .. }) => problems.push(format!(
                "KubeStellar has not reported on BindingPolicy {companion} (no Binding {companion} on the hub): is KubeStellar's controller running for this WDS?"
            )),
            Some(r) => {
                let listed = r
                    .destinations
                    .as_ref()
                    .is_some_and(|d| d.contains(cluster));
                let failing: Vec<String> = r
                    .conditions
                    .iter()
                    .filter(|(_, (ok, _))| !ok)
                    .map(|(t, (_, m))| format!("{t}: {m}"))
                    .chain(r.errors.iter().cloned())
                    .collect();
                if !listed {
                    problems.push(format!(
                        "KubeStellar's Binding {companion} does not list this cluster"
                    ));
                } else if !failing.is_empty() {
                    problems.push(format!(
                        "KubeStellar reports BindingPolicy {companion}: {}",
                        failing.join("; ")
                    ));
                } else {
                    delivered = true;
                }
            }
        }
    }
    if let Some(p) = ks.object_problems.get(key) {
        return Outcome::Failed(format!("{key}: reported by the cluster: {p}"));
    }
    if delivered {
        Outcome::Synced
    } else {
        Outcome::Failed(format!("{key}: {}", problems.join("; ")))
    }
}

fn dynamic(kind: &ResourceKind) -> ApiResource {
    crate::member::api_resource(kind)
}

fn binding_policy_kind() -> ResourceKind {
    ResourceKind::new(
        "control.kubestellar.io",
        "v1alpha1",
        "BindingPolicy",
        "bindingpolicies",
        false,
    )
}

fn binding_kind() -> ResourceKind {
    ResourceKind::new(
        "control.kubestellar.io",
        "v1alpha1",
        "Binding",
        "bindings",
        false,
    )
}

/// What one sync of the hub did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Synced {
    pub writes: u32,
    pub errors: Vec<String>,
}

/// Brings the hub to `set`: applies what differs (server-side apply as ksit-controller), and deletes what
/// ksit wrote there for KubeStellar that is no longer wanted (only objects with ksit's delivery label and
/// ksit's field manager). Nothing else on the hub is touched.
pub async fn sync(client: &Client, set: &HubSet) -> Result<Synced, Error> {
    let mut out = Synced::default();
    let selector =
        format!("{DELIVERY_LABEL}={DELIVERY_VALUE},{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}");
    let lp = ListParams::default().labels(&selector);
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let kinds = [
        ResourceKind::wasm_plugin(),
        ResourceKind::virtual_service(),
        binding_policy_kind(),
    ];
    for kind in kinds {
        let all: Api<DynamicObject> = Api::all_with(client.clone(), &dynamic(&kind));
        let live = all.list(&lp).await?.items;
        let wanted: Vec<(Option<String>, String, &Value)> = if kind.kind == "BindingPolicy" {
            set.companions
                .iter()
                .map(|c| {
                    (
                        None,
                        c["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        c,
                    )
                })
                .collect()
        } else {
            set.objects
                .iter()
                .filter(|(k, _)| k.kind.group == kind.group && k.kind.plural == kind.plural)
                .map(|(k, m)| (k.namespace.clone(), k.name.clone(), m))
                .collect()
        };
        for (ns, name, manifest) in &wanted {
            let found = live.iter().find(|l| {
                l.metadata.name.as_deref() == Some(name.as_str())
                    && (!kind.namespaced || l.metadata.namespace == *ns)
            });
            let same = found.is_some_and(|l| {
                crate::plan::contains(&serde_json::to_value(l).unwrap_or_default(), manifest)
            });
            if same {
                continue;
            }
            let api: Api<DynamicObject> = match ns {
                Some(ns) if kind.namespaced => {
                    Api::namespaced_with(client.clone(), ns, &dynamic(&kind))
                }
                _ => Api::all_with(client.clone(), &dynamic(&kind)),
            };
            match api.patch(name, &pp, &Patch::Apply(manifest)).await {
                Ok(_) => {
                    out.writes += 1;
                    log::info!("hub: applied {} {name} for KubeStellar", kind.kind);
                }
                Err(e) => out.errors.push(format!("{} {name}: {e}", kind.kind)),
            }
        }
        for l in &live {
            let name = l.metadata.name.clone().unwrap_or_default();
            let ns = l.metadata.namespace.clone();
            if wanted
                .iter()
                .any(|(wns, wname, _)| *wname == name && (!kind.namespaced || *wns == ns))
            {
                continue;
            }
            let key = ObjectKey {
                kind: kind.clone(),
                namespace: ns.clone().filter(|_| kind.namespaced),
                name: name.clone(),
            };
            let held = set
                .held
                .iter()
                .any(|h| crate::plan::id(h) == crate::plan::id(&key));
            if held || !crate::plan::owned(&l.metadata) {
                continue;
            }
            let api: Api<DynamicObject> = match &ns {
                Some(ns) if kind.namespaced => {
                    Api::namespaced_with(client.clone(), ns, &dynamic(&kind))
                }
                _ => Api::all_with(client.clone(), &dynamic(&kind)),
            };
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {
                    out.writes += 1;
                    log::info!("hub: deleted {} {name} (no longer delivered)", kind.kind);
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => out
                    .errors
                    .push(format!("deleting {} {name}: {e}", kind.kind)),
            }
        }
    }
    Ok(out)
}

/// Reads what KubeStellar reports on the companions of `set`: each companion's Binding (its destinations)
/// and its BindingPolicy status, and the status clusters sent back on the delivered objects.
pub async fn read_kubestellar(client: &Client, set: &HubSet) -> Result<KubeStellarState, Error> {
    let mut ks = KubeStellarState::default();
    let bindings: Api<DynamicObject> = Api::all_with(client.clone(), &dynamic(&binding_kind()));
    let policies: Api<DynamicObject> =
        Api::all_with(client.clone(), &dynamic(&binding_policy_kind()));
    for user in set.delivered.keys() {
        let name = companion_name(user);
        let mut r = Reported::default();
        match bindings.get_opt(&name).await {
            Ok(Some(b)) => {
                r.destinations = Some(
                    b.data
                        .pointer("/spec/destinations")
                        .and_then(Value::as_array)
                        .map(|d| {
                            d.iter()
                                .filter_map(|x| x["clusterId"].as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_default(),
                );
            }
            Ok(None) => {}
            // A hub without KubeStellar's Binding kind: nothing reported.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(p) = policies.get_opt(&name).await? {
            for c in p
                .data
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let t = c["type"].as_str().unwrap_or_default().to_string();
                let ok = c["status"] == "True";
                let m = c["message"].as_str().unwrap_or_default().to_string();
                r.conditions.insert(t, (ok, m));
            }
            r.errors = p
                .data
                .pointer("/status/errors")
                .and_then(Value::as_array)
                .map(|e| {
                    e.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
        }
        ks.bindings.insert(user.clone(), r);
    }
    // Singleton reported state: a cluster's own status on the object, copied back by KubeStellar.
    for (key, _) in &set.objects {
        let api: Api<DynamicObject> = match &key.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &dynamic(&key.kind)),
            None => Api::all_with(client.clone(), &dynamic(&key.kind)),
        };
        let Some(o) = api.get_opt(&key.name).await? else {
            continue;
        };
        if let Some(p) = reported_problem(&o.data) {
            ks.object_problems.insert(key.clone(), p);
        }
    }
    Ok(ks)
}

/// A problem in the status a cluster reported on an object (a condition that is False, or Istio's
/// validation messages), if any.
pub fn reported_problem(object: &Value) -> Option<String> {
    let status = object.get("status")?;
    let mut problems: Vec<String> = status
        .get("conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c["status"] == "False")
        .map(|c| {
            format!(
                "{} {}",
                c["type"].as_str().unwrap_or_default(),
                c["message"].as_str().unwrap_or_default()
            )
        })
        .collect();
    problems.extend(
        status
            .get("validationMessages")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|m| m["level"] == "ERROR")
            .map(|m| m["description"].as_str().unwrap_or_default().to_string()),
    );
    (!problems.is_empty()).then(|| problems.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{compute, Cluster, Hub, ModuleSource, RenderSettings};
    use crate::resources::TrafficPolicy;

    fn hub(bindings: &[(&str, &str)]) -> Hub {
        let bp = |name: &str, label: &str| -> BindingPolicy {
            serde_json::from_value(json!({"apiVersion": "control.kubestellar.io/v1alpha1", "kind": "BindingPolicy",
                "metadata": {"name": name}, "spec": {"clusterSelectors": [{"matchLabels": {label: "yes"}}],
                "downsync": [{"apiGroup": "ksit.io", "resources": ["trafficpolicies"]}]}}))
            .unwrap_or_else(|e| unreachable!("{e}"))
        };
        let tp: TrafficPolicy = serde_json::from_value(json!({"apiVersion": "ksit.io/v1alpha1", "kind": "TrafficPolicy",
            "metadata": {"name": "app", "namespace": "default", "generation": 1},
            "spec": {"hosts": ["app.example.com"], "selector": {"matchLabels": {"istio": "ingressgateway"}},
                "http": [{"name": "api", "route": [{"destination": {"host": "v1"}, "weight": 90}, {"destination": {"host": "v2"}, "weight": 10}]}],
                "overrides": [{"clusters": ["c2"], "http": [{"name": "api", "route": [{"destination": {"host": "v1"}, "weight": 50}, {"destination": {"host": "v2"}, "weight": 50}]}]}]}}))
        .unwrap_or_else(|e| unreachable!("{e}"));
        Hub {
            clusters: ["c1", "c2"]
                .iter()
                .map(|c| Cluster {
                    name: c.to_string(),
                    labels: [
                        ("east".to_string(), "yes".to_string()),
                        (format!("is-{c}"), "yes".to_string()),
                    ]
                    .into(),
                })
                .collect(),
            bindings: bindings.iter().map(|(n, l)| bp(n, l)).collect(),
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
            per_cluster: false,
        }
    }

    #[test]
    fn one_labelled_set_and_a_companion_per_binding() {
        let h = hub(&[("all", "east"), ("only-c2", "is-c2")]);
        let set = plan(&h.bindings, &compute(&h, &settings()));
        let keys: Vec<String> = set.objects.iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(
            keys,
            [
                "WasmPlugin istio-system/ksit-default-app",
                "VirtualService default/ksit-app"
            ]
        );
        for (_, m) in &set.objects {
            let labels = &m["metadata"]["labels"];
            // c2 is bound by both: the object carries both bindings' labels.
            assert_eq!(labels["delivery.ksit.io/all"], "true");
            assert_eq!(labels["delivery.ksit.io/only-c2"], "true");
            assert_eq!(labels[DELIVERY_LABEL], "kubestellar");
            assert_eq!(
                m["metadata"]["annotations"][desired::BINDING_ANNOTATION],
                "all,only-c2"
            );
        }
        let names: Vec<&str> = set
            .companions
            .iter()
            .filter_map(|c| c["metadata"]["name"].as_str())
            .collect();
        assert_eq!(names, ["ksit-all", "ksit-only-c2"]);
        assert_eq!(
            set.companions[1]["spec"]["clusterSelectors"],
            json!([{"matchLabels": {"is-c2": "yes"}}])
        );
        assert!(set.conflicts.is_empty() && set.held.is_empty());
    }

    #[test]
    fn a_long_binding_name_gets_a_hashed_label_key() {
        let long = "b".repeat(80);
        let key = binding_label(&long);
        assert!(
            key.len() <= FOR_BINDING_PREFIX.len() + 63 && key.starts_with("delivery.ksit.io/b-"),
            "{key}"
        );
        assert_eq!(key, binding_label(&long));
        assert_eq!(binding_label("short"), "delivery.ksit.io/short");
    }

    #[test]
    fn per_cluster_rendering_is_a_conflict_held_on_the_hub() {
        let h = hub(&[("all", "east")]);
        let d = compute(
            &h,
            &RenderSettings {
                per_cluster: true,
                ..settings()
            },
        );
        let set = plan(&h.bindings, &d);
        assert!(
            set.conflicts
                .iter()
                .any(|c| c.starts_with("WasmPlugin istio-system/ksit-default-app differs")),
            "{:?}",
            set.conflicts
        );
        assert!(set.objects.iter().all(|(k, _)| k.kind.kind != "WasmPlugin"));
        assert!(set.held.iter().any(|k| k.kind.kind == "WasmPlugin"));
    }

    #[test]
    fn reports_follow_what_kubestellar_says() {
        let h = hub(&[("all", "east")]);
        let d = compute(&h, &settings());
        let set = plan(&h.bindings, &d);
        let outcome = |ks: &KubeStellarState, c: &str| -> Vec<Outcome> {
            reports(&d, &set, ks, 7)[c]
                .objects
                .iter()
                .map(|o| o.outcome.clone())
                .collect()
        };
        let failed_with = |o: &[Outcome], text: &str| {
            o.iter()
                .all(|x| matches!(x, Outcome::Failed(m) if m.contains(text)))
        };
        // Nothing reported yet: said plainly.
        let o = outcome(&KubeStellarState::default(), "c1");
        assert!(
            failed_with(&o, "KubeStellar has not reported on BindingPolicy ksit-all"),
            "{o:?}"
        );
        let mut ks = KubeStellarState::default();
        ks.bindings.insert(
            "all".into(),
            Reported {
                destinations: Some(["c1".to_string()].into()),
                conditions: [("Ready".to_string(), (true, String::new()))].into(),
                errors: vec![],
            },
        );
        assert!(outcome(&ks, "c1").iter().all(|o| *o == Outcome::Synced));
        assert!(failed_with(
            &outcome(&ks, "c2"),
            "does not list this cluster"
        ));
        if let Some(r) = ks.bindings.get_mut("all") {
            r.conditions
                .insert("Synced".into(), (false, "quota exceeded".into()));
        }
        assert!(failed_with(&outcome(&ks, "c1"), "Synced: quota exceeded"));
        if let Some(r) = ks.bindings.get_mut("all") {
            r.conditions.clear();
        }
        let wp = set.objects[0].0.clone();
        ks.object_problems
            .insert(wp.clone(), "Reconciled plugin fetch failed".into());
        let r = &reports(&d, &set, &ks, 7)["c1"];
        let of = |k: &ObjectKey| {
            r.objects
                .iter()
                .find(|o| o.key == *k)
                .map(|o| o.outcome.clone())
        };
        assert!(
            matches!(of(&wp), Some(Outcome::Failed(m)) if m.contains("reported by the cluster: Reconciled plugin fetch failed"))
        );
        assert_eq!(r.revision, 7);
    }

    #[test]
    fn a_clusters_reported_status_names_its_problems() {
        assert_eq!(reported_problem(&json!({"spec": {}})), None);
        assert_eq!(
            reported_problem(
                &json!({"status": {"conditions": [{"type": "Reconciled", "status": "True"}]}})
            ),
            None
        );
        assert_eq!(
            reported_problem(
                &json!({"status": {"conditions": [{"type": "Reconciled", "status": "False", "message": "no"}],
                "validationMessages": [{"level": "ERROR", "description": "bad host"}, {"level": "INFO", "description": "fine"}]}})
            ),
            Some("Reconciled no; bad host".into())
        );
    }
}
