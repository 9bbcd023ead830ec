//! Status on the hub: what each BindingPolicy, TrafficPolicy, IntegrationTarget and Integration reports,
//! computed from the desired state and the clusters' latest reports, and written (server-side apply on the
//! status subresource) only when it changed.

use crate::desired::{Desired, FIELD_MANAGER};
use crate::hub::HubState;
use crate::member::{ClusterPlan, ClusterReport, Outcome};
use crate::resources::*;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Inputs of one status computation.
pub struct View<'a> {
    pub state: &'a HubState,
    pub desired: &'a Desired,
    pub plans: &'a BTreeMap<String, Arc<ClusterPlan>>,
    pub reports: &'a BTreeMap<String, ClusterReport>,
    /// KubeStellar delivers (`--deliver kubestellar`): ksit does not connect to the clusters.
    pub delivered_by_kubestellar: bool,
    /// Each cluster gets its own rendering (`--per-cluster-rendering`), which names the cluster.
    pub per_cluster_rendering: bool,
}

impl View<'_> {
    /// The latest report for `cluster` if it is about the current plan.
    fn current(&self, cluster: &str) -> Option<&ClusterReport> {
        let r = self.reports.get(cluster)?;
        let rev = self.plans.get(cluster).map(|p| p.revision)?;
        (r.revision == rev).then_some(r)
    }

    fn outcome(
        &self,
        cluster: &str,
        pred: impl Fn(&crate::desired::DesiredObject) -> bool,
    ) -> (i32, i32, Vec<String>) {
        // Compared by reference: this runs for every cluster and object on every status pass.
        let same = |o: &crate::desired::DesiredObject, k: &crate::desired::ObjectKey| {
            o.name == k.name && o.namespace == k.namespace && o.kind == k.kind
        };
        let wanted: Vec<&crate::desired::DesiredObject> = self
            .desired
            .clusters
            .get(cluster)
            .map(|p| p.objects.iter().filter(|o| pred(o)).map(|o| &**o).collect())
            .unwrap_or_default();
        let mut synced = 0;
        let mut errors = Vec::new();
        match self.current(cluster) {
            Some(r) => {
                if let Some(e) = &r.error {
                    errors.push(e.clone());
                }
                for o in &r.objects {
                    if !wanted.iter().any(|w| same(w, &o.key)) {
                        continue;
                    }
                    match &o.outcome {
                        Outcome::Synced => synced += 1,
                        Outcome::Failed(m) => errors.push(m.clone()),
                    }
                }
            }
            None => {
                if let Some(r) = self.reports.get(cluster) {
                    if let Some(e) = &r.error {
                        errors.push(e.clone());
                    }
                }
            }
        }
        (wanted.len() as i32, synced, errors)
    }
}

pub fn binding_status(v: &View<'_>, b: &BindingPolicy) -> BindingPolicyStatus {
    let name = b.name_any();
    let generation = b.metadata.generation.unwrap_or(0);
    let bound = v.desired.bound.get(&name).cloned().unwrap_or_default();
    let mut clusters = Vec::new();
    let mut all_synced = true;
    let mut all_reachable = true;
    for c in &bound {
        let (desired, synced, errors) = v.outcome(c, |o| o.bindings.contains(&name));
        let reported = v.current(c).is_some();
        all_synced &= reported && synced == desired && errors.is_empty();
        all_reachable &= v.reports.get(c).is_some_and(|r| r.reachable);
        clusters.push(BindingClusterStatus {
            name: c.clone(),
            synced_objects: synced,
            desired_objects: desired,
            errors,
            observed_generation: generation,
        });
    }
    let mut errors: Vec<String> = v
        .state
        .binding_errors
        .get(&name)
        .cloned()
        .unwrap_or_default();
    errors.extend(
        v.desired
            .notes
            .iter()
            .filter(|n| {
                n.object == format!("BindingPolicy {name}")
                    || n.message.contains(&format!("BindingPolicy {name} "))
            })
            .map(|n| format!("{}: {}: {}", n.cluster, n.object, n.message)),
    );
    let (synced_reason, synced_msg) = if bound.is_empty() {
        (
            "NoClusters",
            "no cluster matches spec.clusterSelectors".to_string(),
        )
    } else if all_synced {
        (
            "Synced",
            format!("{} cluster(s) hold every selected object", bound.len()),
        )
    } else {
        // Failed (a cluster reported errors) is distinct from pending (not reported on this generation yet).
        let failed: Vec<String> = clusters
            .iter()
            .filter(|c| !c.errors.is_empty())
            .map(|c| format!("{}: {}", c.name, c.errors.join("; ")))
            .collect();
        if failed.is_empty() {
            let pending: Vec<String> = clusters
                .iter()
                .filter(|c| c.synced_objects != c.desired_objects)
                .map(|c| c.name.clone())
                .collect();
            (
                "SyncPending",
                format!("not yet in sync: {}", pending.join(", ")),
            )
        } else {
            ("SyncFailed", failed.join("; "))
        }
    };
    let synced_ok = !bound.is_empty() && all_synced;
    let ready_ok = synced_ok && all_reachable && errors.is_empty();
    let ready_reason = if bound.is_empty() {
        "NoClusters"
    } else if !all_reachable {
        "ClusterUnreachable"
    } else if !errors.is_empty() {
        "BindingErrors"
    } else if synced_ok {
        "Ready"
    } else {
        synced_reason
    };
    let ready_msg = if ready_ok {
        "every bound cluster is reachable and in sync".to_string()
    } else if !errors.is_empty() {
        errors.join("; ")
    } else {
        synced_msg.clone()
    };
    BindingPolicyStatus {
        observed_generation: generation,
        conditions: vec![
            Condition::new(
                "Synced",
                synced_ok,
                synced_reason,
                synced_msg,
                Some(generation),
            ),
            Condition::new("Ready", ready_ok, ready_reason, ready_msg, Some(generation)),
        ],
        errors,
        bound_clusters: bound.len() as i32,
        clusters,
    }
}

pub fn traffic_policy_status(v: &View<'_>, tp: &TrafficPolicy) -> TrafficPolicyStatus {
    let key = format!("{}/{}", tp.namespace().unwrap_or_default(), tp.name_any());
    let generation = tp.metadata.generation.unwrap_or(0);
    let previous = tp.status.clone().unwrap_or_default();
    if let Some(errors) = v.state.invalid.get(&key) {
        let clusters = previous
            .clusters
            .iter()
            .map(|c| PolicyClusterStatus {
                name: c.name.clone(),
                applied_generation: c.applied_generation,
                error: Some("spec is invalid; the cluster keeps the previous configuration".into()),
            })
            .collect();
        return TrafficPolicyStatus {
            observed_generation: Some(generation),
            conditions: vec![Condition::new(
                "Ready",
                false,
                "InvalidSpec",
                errors.join("; "),
                Some(generation),
            )],
            ready_clusters: 0,
            clusters,
        };
    }
    let mut clusters = Vec::new();
    let mut ready = 0;
    for (c, cd) in &v.desired.clusters {
        if !cd.objects.iter().any(|o| o.carries(&key)) {
            continue;
        }
        let (desired, synced, mut errors) = v.outcome(c, |o| o.carries(&key));
        errors.extend(cluster_id_mismatch(v, c, tp));
        let applied_now = v.current(c).is_some() && desired == synced && errors.is_empty();
        let applied_generation = if applied_now {
            ready += 1;
            Some(generation)
        } else {
            previous
                .clusters
                .iter()
                .find(|p| p.name == *c)
                .and_then(|p| p.applied_generation)
        };
        clusters.push(PolicyClusterStatus {
            name: c.clone(),
            applied_generation,
            error: (!errors.is_empty()).then(|| errors.join("; ")),
        });
    }
    let own_notes: Vec<&crate::desired::Note> = v
        .desired
        .notes
        .iter()
        .filter(|n| n.object == format!("TrafficPolicy {key}"))
        .collect();
    let notes: Vec<String> = own_notes
        .iter()
        .map(|n| format!("{}: {}", n.cluster, n.message))
        .collect();
    let cond = if clusters.is_empty() && notes.is_empty() {
        Condition::new(
            "Ready",
            false,
            "NotBound",
            "no BindingPolicy sends this TrafficPolicy (or its WasmPlugin) to any cluster",
            Some(generation),
        )
    } else if let Some(first) = own_notes.first() {
        Condition::new(
            "Ready",
            false,
            first.reason,
            notes.join("; "),
            Some(generation),
        )
    } else if ready == clusters.len() as i32 {
        Condition::new(
            "Ready",
            true,
            "Applied",
            format!("generation {generation} applied in {ready} cluster(s)"),
            Some(generation),
        )
    } else {
        let pending: Vec<String> = clusters
            .iter()
            .filter(|c| c.applied_generation != Some(generation))
            .map(|c| match &c.error {
                Some(e) => format!("{}: {e}", c.name),
                None => format!("{}: pending", c.name),
            })
            .collect();
        Condition::new(
            "Ready",
            false,
            "ApplyPending",
            pending.join("; "),
            Some(generation),
        )
    };
    TrafficPolicyStatus {
        observed_generation: Some(generation),
        conditions: vec![cond],
        ready_clusters: ready,
        clusters,
    }
}

/// When one rendering serves every cluster, the filter finds its cluster's overrides by the proxy's Istio
/// cluster ID. If istiod in `cluster` gives its proxies another ID than the hub expects (the cluster's name,
/// or its IntegrationTarget's ksit.io/istio-cluster-id), and `tp` has overrides for that cluster, its
/// proxies apply the base policy: say so, and how to fix it.
fn cluster_id_mismatch(v: &View<'_>, cluster: &str, tp: &TrafficPolicy) -> Option<String> {
    if v.per_cluster_rendering {
        return None;
    }
    let seen = v
        .reports
        .get(cluster)?
        .istio
        .as_ref()?
        .cluster_id
        .as_deref()?;
    let expected = v
        .state
        .hub
        .istio_cluster_ids
        .get(cluster)
        .map_or(cluster, String::as_str);
    let overridden = tp
        .spec
        .0
        .overrides
        .iter()
        .any(|o| o.clusters.iter().any(|c| c == cluster));
    (seen != expected && overridden).then(|| {
        format!(
            "istiod gives this cluster's proxies CLUSTER_ID {seen}, not {expected}: they apply the base policy without this cluster's overrides; annotate its IntegrationTarget with {}: {seen}",
            crate::desired::ISTIO_CLUSTER_ID_ANNOTATION
        )
    })
}

pub fn target_status(v: &View<'_>, t: &IntegrationTarget) -> IntegrationTargetStatus {
    let c = &t.spec.cluster_name;
    let generation = t.metadata.generation;
    let (ok, reason, message) = match v.reports.get(c) {
        _ if v.delivered_by_kubestellar => (
            true,
            "DeliveredByKubeStellar",
            "KubeStellar delivers to this cluster; ksit does not connect to it".to_string(),
        ),
        None => (false, "Pending", "not contacted yet".to_string()),
        Some(r) if r.reachable => (true, "Connected", "reachable".to_string()),
        Some(r) => {
            let e = r.error.clone().unwrap_or_default();
            let reason = if e.starts_with("kubeconfig") {
                "KubeconfigInvalid"
            } else if e.contains("did not answer") {
                "Timeout"
            } else {
                "Unreachable"
            };
            (false, reason, e)
        }
    };
    IntegrationTargetStatus {
        conditions: vec![Condition::new(
            "Ready",
            ok,
            reason,
            message.clone(),
            generation,
        )],
        last_sync_time: Some(String::new()),
        message: Some(message),
        observed_generation: generation,
        ready: ok,
    }
}

pub fn integration_status(v: &View<'_>, i: &Integration) -> IntegrationStatus {
    let generation = i.metadata.generation;
    let names: Vec<String> = if i.spec.target_clusters.is_empty() {
        v.state
            .targets
            .iter()
            .map(|t| t.spec.cluster_name.clone())
            .collect()
    } else {
        i.spec.target_clusters.clone()
    };
    let istio = i.spec.type_ == "istio";
    let mut statuses = Vec::new();
    for n in &names {
        let known = v.state.targets.iter().any(|t| t.spec.cluster_name == *n);
        let r = v.reports.get(n);
        let connected = r.is_some_and(|r| r.reachable);
        let health = r.and_then(|r| r.istio.clone());
        let istio_ready = istio.then(|| {
            health
                .as_ref()
                .is_some_and(|h| h.istiod_available && h.ingress_gateway)
        });
        let message = if !known {
            format!("no IntegrationTarget with clusterName {n}")
        } else if let Some(e) = r.and_then(|r| r.error.clone()) {
            e
        } else if !connected {
            "not contacted yet".into()
        } else if istio {
            match &health {
                Some(h) if h.istiod_available && h.ingress_gateway => {
                    "istiod available, ingress gateway present".into()
                }
                Some(h) => {
                    let mut m = Vec::new();
                    if !h.istiod_available {
                        m.push("istiod Deployment in istio-system not available");
                    }
                    if !h.ingress_gateway {
                        m.push("no ingress gateway in istio-system");
                    }
                    m.join("; ")
                }
                None => "Istio health unknown".into(),
            }
        } else {
            "connected".into()
        };
        statuses.push(IntegrationClusterStatus {
            name: n.clone(),
            connected,
            last_seen: connected.then(String::new),
            message: Some(message),
            istio_ready,
        });
    }
    let healthy = statuses
        .iter()
        .filter(|s| s.connected && s.istio_ready != Some(false))
        .count();
    let (phase, ok) = if !i.spec.enabled {
        ("Disabled", false)
    } else if statuses.is_empty() {
        ("Pending", false)
    } else if healthy == statuses.len() {
        ("Ready", true)
    } else if healthy > 0 {
        ("Degraded", false)
    } else if statuses.iter().all(|s| v.reports.get(&s.name).is_none()) {
        ("Pending", false)
    } else {
        ("Failed", false)
    };
    let message = format!("{healthy}/{} target cluster(s) healthy", statuses.len());
    IntegrationStatus {
        cluster_statuses: statuses,
        conditions: vec![Condition::new(
            "Ready",
            ok,
            phase,
            message.clone(),
            generation,
        )],
        last_reconcile_time: Some(String::new()),
        message: Some(message),
        observed_generation: generation,
        phase: Some(phase.into()),
    }
}

const VOLATILE: [&str; 4] = [
    "lastTransitionTime",
    "lastSyncTime",
    "lastSeen",
    "lastReconcileTime",
];

/// The status without timestamps, for deciding whether anything changed.
fn normalized(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !VOLATILE.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), normalized(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalized).collect()),
        other => other.clone(),
    }
}

/// Fills timestamps: conditions keep their transition time unless their status changed; the others are now.
fn stamp(new: &mut Value, old: &Value, now: &str) {
    if let (Some(conds), Some(old_conds)) = (
        new.get_mut("conditions").and_then(Value::as_array_mut),
        old.get("conditions").and_then(Value::as_array),
    ) {
        for c in conds.iter_mut() {
            let prev = old_conds.iter().find(|o| o.get("type") == c.get("type"));
            let t = match prev {
                Some(p) if p.get("status") == c.get("status") => {
                    p.get("lastTransitionTime").cloned().unwrap_or(json!(now))
                }
                _ => json!(now),
            };
            c["lastTransitionTime"] = t;
        }
    } else if let Some(conds) = new.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in conds {
            c["lastTransitionTime"] = json!(now);
        }
    }
    fn fill(v: &mut Value, now: &str) {
        match v {
            Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    if ["lastSyncTime", "lastSeen", "lastReconcileTime"].contains(&k.as_str())
                        && x.as_str() == Some("")
                    {
                        *x = json!(now);
                    } else {
                        fill(x, now);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| fill(x, now)),
            _ => {}
        }
    }
    fill(new, now);
}

/// Writes statuses that changed; remembers what it wrote.
pub struct StatusWriter {
    client: Client,
    recorder: Recorder,
    /// What was last written (normalized), per object.
    written: BTreeMap<String, Value>,
    /// What was last written, as written (timestamps included), per object: the newest status of each
    /// object ksit writes, which a hub snapshot taken before the write does not have yet (the hub is not
    /// read again for ksit's own status writes).
    last: BTreeMap<String, Value>,
    /// Warning events already published (object -> reason+message), so a standing problem is reported once.
    warned: BTreeMap<String, String>,
    pub writes: u64,
}

impl StatusWriter {
    pub fn new(client: Client, recorder: Recorder) -> Self {
        StatusWriter {
            client,
            recorder,
            written: BTreeMap::new(),
            last: BTreeMap::new(),
            warned: BTreeMap::new(),
            writes: 0,
        }
    }

    /// Publishes statuses for everything in `v`.
    pub async fn write_all(&mut self, v: &View<'_>) {
        for b in v.state.hub.bindings.iter().filter(|_| v.state.standalone) {
            let s = binding_status(v, b);
            self.write(
                Api::<BindingPolicy>::all(self.client.clone()),
                b,
                &s,
                b.status.as_ref(),
            )
            .await;
        }
        for tp in &v.state.traffic_policies {
            // The status computed from the newest one: what this writer last wrote, when it did.
            let remembered = self
                .last
                .get(&Self::id_of(tp))
                .and_then(|l| serde_json::from_value::<TrafficPolicyStatus>(l.clone()).ok());
            let tp = &match remembered {
                Some(r) => {
                    let mut t = tp.clone();
                    t.status = Some(r);
                    t
                }
                None => tp.clone(),
            };
            let s = traffic_policy_status(v, tp);
            let api = Api::<TrafficPolicy>::namespaced(
                self.client.clone(),
                &tp.namespace().unwrap_or_default(),
            );
            self.write(api, tp, &s, tp.status.as_ref()).await;
        }
        for t in &v.state.targets {
            let s = target_status(v, t);
            let api = Api::<IntegrationTarget>::namespaced(
                self.client.clone(),
                &t.namespace().unwrap_or_default(),
            );
            self.write(api, t, &s, t.status.as_ref()).await;
        }
        for i in &v.state.integrations {
            let s = integration_status(v, i);
            let api = Api::<Integration>::namespaced(
                self.client.clone(),
                &i.namespace().unwrap_or_default(),
            );
            self.write(api, i, &s, i.status.as_ref()).await;
        }
    }

    async fn write<K, S>(&mut self, api: Api<K>, obj: &K, status: &S, live: Option<&S>)
    where
        K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
        S: Serialize,
    {
        let id = Self::id_of(obj);
        let mut new = serde_json::to_value(status).unwrap_or_default();
        let old = match self.last.get(&id) {
            Some(l) => l.clone(),
            None => live
                .and_then(|l| serde_json::to_value(l).ok())
                .unwrap_or(Value::Null),
        };
        let norm = normalized(&new);
        if self.written.get(&id) == Some(&norm) || normalized(&old) == norm {
            self.written.insert(id, norm);
            return;
        }
        stamp(&mut new, &old, &Timestamp::now().to_string());
        let patch = json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": new});
        match api
            .patch_status(
                &obj.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
        {
            Ok(_) => {
                self.writes += 1;
                self.written.insert(id.clone(), norm);
                self.last.insert(id.clone(), new.clone());
            }
            Err(e) => log::warn!("writing status of {id}: {e}"),
        }
        self.warn_if_failing(obj, &id, &new).await;
    }

    /// An object's identity for what was written to it: kind, namespace, name and uid (a recreated object
    /// starts afresh).
    fn id_of<K: Resource<DynamicType = ()>>(obj: &K) -> String {
        format!(
            "{} {}/{} {}",
            K::kind(&()),
            obj.namespace().unwrap_or_default(),
            obj.name_any(),
            obj.meta().uid.as_deref().unwrap_or_default()
        )
    }

    /// A Kubernetes event for a failing Ready condition, once per distinct problem.
    async fn warn_if_failing<K: Resource<DynamicType = ()>>(
        &mut self,
        obj: &K,
        id: &str,
        status: &Value,
    ) {
        let ready = status
            .get("conditions")
            .and_then(Value::as_array)
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned());
        let Some(ready) = ready else { return };
        if ready["status"] == "True" {
            self.warned.remove(id);
            return;
        }
        let reason = ready["reason"].as_str().unwrap_or("NotReady").to_string();
        if matches!(reason.as_str(), "Pending" | "SyncPending" | "ApplyPending") {
            return;
        }
        let message: String = ready["message"]
            .as_str()
            .unwrap_or("")
            .chars()
            .take(1000)
            .collect();
        let key = format!("{reason}|{message}");
        if self.warned.get(id) == Some(&key) {
            return;
        }
        let ev = Event {
            type_: EventType::Warning,
            reason: reason.clone(),
            note: Some(message),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            log::warn!("publishing event for {id}: {e}");
        }
        self.warned.insert(id.to_string(), key);
    }
}

/// The set of clusters any status mentions (for metrics).
pub fn ready_clusters(
    reports: &BTreeMap<String, ClusterReport>,
    plans: &BTreeMap<String, Arc<ClusterPlan>>,
) -> usize {
    let names: BTreeSet<&String> = plans.keys().collect();
    names
        .into_iter()
        .filter(|c| {
            reports.get(*c).is_some_and(|r| {
                r.reachable
                    && plans.get(*c).map(|p| p.revision) == Some(r.revision)
                    && r.objects.iter().all(|o| o.outcome == Outcome::Synced)
            })
        })
        .count()
}
