//! Reading the hub: the resources that decide every cluster's desired state.

use crate::desired::{Cluster, Hub, HubObject, ResourceKind};
use crate::error::Error;
use crate::manifests::is_hub_only;
use crate::resources::{BindingPolicy, Integration, IntegrationTarget, TrafficPolicy};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DynamicObject, ListParams};
use kube::{Api, Client, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};

/// A hub snapshot plus what the status writer needs.
#[derive(Clone, Debug, Default)]
pub struct HubState {
    pub hub: Hub,
    pub targets: Vec<IntegrationTarget>,
    pub integrations: Vec<Integration>,
    /// All TrafficPolicies (valid or not), for status.
    pub traffic_policies: Vec<TrafficPolicy>,
    /// TrafficPolicies whose spec is invalid: `namespace/name` -> errors with field paths.
    pub invalid: BTreeMap<String, Vec<String>>,
    /// Problems with BindingPolicies (by name), e.g. a clause ksit cannot evaluate.
    pub binding_errors: BTreeMap<String, Vec<String>>,
    /// False when KubeStellar owns BindingPolicies (it copies objects and reports their status).
    pub standalone: bool,
    /// Every kind any binding names, plus the kinds ksit renders: where stale objects are looked for.
    pub prune_kinds: BTreeSet<ResourceKind>,
}

/// Istio kinds always searched for stale ksit-managed objects (those a cluster does not serve are skipped).
pub const ISTIO_KINDS: [(&str, &str, &str, &str); 10] = [
    (
        "networking.istio.io",
        "v1",
        "VirtualService",
        "virtualservices",
    ),
    (
        "networking.istio.io",
        "v1",
        "DestinationRule",
        "destinationrules",
    ),
    ("networking.istio.io", "v1", "Gateway", "gateways"),
    (
        "networking.istio.io",
        "v1",
        "ServiceEntry",
        "serviceentries",
    ),
    ("networking.istio.io", "v1", "Sidecar", "sidecars"),
    (
        "security.istio.io",
        "v1",
        "PeerAuthentication",
        "peerauthentications",
    ),
    (
        "security.istio.io",
        "v1",
        "AuthorizationPolicy",
        "authorizationpolicies",
    ),
    (
        "security.istio.io",
        "v1",
        "RequestAuthentication",
        "requestauthentications",
    ),
    (
        "extensions.istio.io",
        "v1alpha1",
        "WasmPlugin",
        "wasmplugins",
    ),
    ("telemetry.istio.io", "v1", "Telemetry", "telemetries"),
];

pub struct HubReader {
    pub client: Client,
    /// Namespaces IntegrationTargets (and their kubeconfig Secrets) are read from; empty = all.
    pub target_namespaces: Vec<String>,
    /// False when KubeStellar owns BindingPolicies: then ksit does not distribute by them.
    pub standalone: bool,
    pub gateway_namespace: String,
    discovery: BTreeMap<(String, String), Option<ResourceKind>>,
}

fn hub_err(what: &str, e: kube::Error) -> Error {
    Error::Hub(format!("{what}: {e}"))
}

impl HubReader {
    pub fn new(
        client: Client,
        target_namespaces: Vec<String>,
        standalone: bool,
        gateway_namespace: String,
    ) -> Self {
        HubReader {
            client,
            target_namespaces,
            standalone,
            gateway_namespace,
            discovery: BTreeMap::new(),
        }
    }

    /// Resolves (group, plural) to a kind the hub serves, at the group's preferred version.
    async fn resolve(&mut self, group: &str, plural: &str) -> Result<Option<ResourceKind>, Error> {
        let k = (group.to_string(), plural.to_string());
        if let Some(r) = self.discovery.get(&k) {
            return Ok(r.clone());
        }
        let (version, list) = if group.is_empty() {
            (
                "v1".to_string(),
                self.client.list_core_api_resources("v1").await,
            )
        } else {
            let groups = self
                .client
                .list_api_groups()
                .await
                .map_err(|e| hub_err("discovery", e))?;
            let Some(g) = groups.groups.into_iter().find(|g| g.name == group) else {
                return Ok(None); // not cached: the CRD may be installed later
            };
            let version = g
                .preferred_version
                .map(|v| v.version)
                .or_else(|| g.versions.first().map(|v| v.version.clone()));
            let Some(version) = version else {
                return Ok(None);
            };
            let list = self
                .client
                .list_api_group_resources(&format!("{group}/{version}"))
                .await;
            (version, list)
        };
        let list = list.map_err(|e| hub_err("discovery", e))?;
        let found = list
            .resources
            .into_iter()
            .find(|r| r.name == plural)
            .map(|r| ResourceKind::new(group, &version, &r.kind, plural, r.namespaced));
        if found.is_some() {
            self.discovery.insert(k, found.clone());
        }
        Ok(found)
    }

    pub async fn load(&mut self) -> Result<HubState, Error> {
        let c = self.client.clone();
        let mut targets: Vec<IntegrationTarget> = Vec::new();
        if self.target_namespaces.is_empty() {
            targets = Api::<IntegrationTarget>::all(c.clone())
                .list(&ListParams::default())
                .await
                .map_err(|e| hub_err("IntegrationTargets", e))?
                .items;
        } else {
            for ns in &self.target_namespaces {
                targets.extend(
                    Api::<IntegrationTarget>::namespaced(c.clone(), ns)
                        .list(&ListParams::default())
                        .await
                        .map_err(|e| hub_err("IntegrationTargets", e))?
                        .items,
                );
            }
        }
        targets.sort_by(|a, b| a.spec.cluster_name.cmp(&b.spec.cluster_name));
        // BindingPolicies always decide where TrafficPolicies are rendered; when KubeStellar owns them it
        // also copies the selected objects, so ksit copies nothing and writes no BindingPolicy status.
        let bindings = Api::<BindingPolicy>::all(c.clone())
            .list(&ListParams::default())
            .await
            .map_err(|e| hub_err("BindingPolicies", e))?
            .items;
        let tps = Api::<TrafficPolicy>::all(c.clone())
            .list(&ListParams::default())
            .await
            .map_err(|e| hub_err("TrafficPolicies", e))?
            .items;
        let integrations = Api::<Integration>::all(c.clone())
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let namespaces = Api::<Namespace>::all(c.clone())
            .list(&ListParams::default())
            .await
            .map_err(|e| hub_err("Namespaces", e))?
            .items;

        let mut state = HubState {
            standalone: self.standalone,
            targets: targets.clone(),
            integrations,
            traffic_policies: tps.clone(),
            ..Default::default()
        };
        state.hub.clusters = targets
            .iter()
            .map(|t| Cluster {
                name: t.spec.cluster_name.clone(),
                labels: t.spec.labels.clone(),
            })
            .collect();
        state.hub.istio_cluster_ids = targets
            .iter()
            .filter_map(|t| {
                let id = crate::desired::istio_cluster_id(t.metadata.annotations.as_ref())?;
                Some((t.spec.cluster_name.clone(), id))
            })
            .collect();
        // Template properties (KubeStellar's expand-templates): a cluster's annotations and its ConfigMap in
        // customization-properties. A hub without that namespace (or without access to it) has none.
        let config_maps =
            Api::<ConfigMap>::namespaced(c.clone(), crate::template::PROPERTIES_NAMESPACE)
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default();
        for t in &targets {
            let entries = config_maps
                .iter()
                .find(|cm| cm.name_any() == t.spec.cluster_name)
                .map(|cm| {
                    let data = cm
                        .data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.clone()));
                    let binary = cm
                        .binary_data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()));
                    data.chain(binary).collect::<Vec<_>>()
                })
                .unwrap_or_default();
            state.hub.cluster_properties.insert(
                t.spec.cluster_name.clone(),
                crate::template::extra_properties(t.metadata.annotations.iter().flatten(), entries),
            );
        }
        state.hub.namespace_labels = namespaces
            .iter()
            .map(|n| (n.name_any(), n.labels().clone()))
            .collect();
        // Where stale objects may be: what ksit renders, the Istio kinds it knows (so objects of a deleted
        // binding are still found after a restart), and below every kind a binding names.
        for (group, version, kind, plural) in ISTIO_KINDS {
            state
                .prune_kinds
                .insert(ResourceKind::new(group, version, kind, plural, true));
        }

        // The kinds the bindings name, resolved through discovery, then their objects.
        let mut kinds: BTreeSet<ResourceKind> = BTreeSet::new();
        let copying = self.standalone;
        for b in bindings.iter().filter(|_| copying) {
            let bname = b.name_any();
            for (i, clause) in b.spec.downsync.iter().enumerate() {
                let Some(group) = &clause.api_group else {
                    state.binding_errors.entry(bname.clone()).or_default().push(format!(
                        "spec.downsync[{i}].apiGroup: ksit needs the API group of the objects to send (\"\" for core)"
                    ));
                    continue;
                };
                if clause.resources.is_empty() || clause.resources.iter().any(|r| r == "*") {
                    state.binding_errors.entry(bname.clone()).or_default().push(format!(
                        "spec.downsync[{i}].resources: list the resources to send; ksit does not expand \"*\""
                    ));
                    continue;
                }
                for plural in &clause.resources {
                    if is_hub_only(group) {
                        continue; // TrafficPolicies are rendered, not copied
                    }
                    match self.resolve(group, plural).await? {
                        Some(k) => {
                            kinds.insert(k);
                        }
                        None if group == "extensions.istio.io" && plural == "wasmplugins" => {}
                        None => state.binding_errors.entry(bname.clone()).or_default().push(format!(
                            "spec.downsync[{i}].resources: the hub serves no {plural} in API group {group:?}"
                        )),
                    }
                }
            }
        }
        for k in &kinds {
            let api: Api<DynamicObject> = Api::all_with(c.clone(), &crate::member::api_resource(k));
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(|e| hub_err(&k.plural, e))?;
            for o in list.items {
                let name = o.name_any();
                if k.group.is_empty() && k.plural == "secrets" && name.ends_with("-kubeconfig") {
                    continue; // cluster credentials never leave the hub
                }
                if o.labels()
                    .get(crate::desired::MANAGED_BY_LABEL)
                    .map(String::as_str)
                    == Some(crate::desired::MANAGED_BY_VALUE)
                {
                    continue; // ksit's own output (the hub is also a member): never a source
                }
                let mut v = serde_json::to_value(&o).unwrap_or_default();
                if let Some(m) = v.as_object_mut() {
                    m.insert("apiVersion".into(), k.api_version().into());
                    m.insert("kind".into(), k.kind.clone().into());
                }
                state.hub.objects.push(HubObject {
                    kind: k.clone(),
                    object: v,
                });
            }
            state.prune_kinds.insert(k.clone());
        }
        state.hub.bindings = bindings;

        for tp in tps {
            let key = format!("{}/{}", tp.namespace().unwrap_or_default(), tp.name_any());
            let errors = ksit_policy::validate_spec(&tp.spec.0, "spec");
            if !errors.is_empty() {
                state
                    .invalid
                    .insert(key, errors.iter().map(ToString::to_string).collect());
            }
            // Invalid ones too: rendering keeps what they rendered before (see `desired::render_policies`).
            state.hub.traffic_policies.push(tp);
        }
        Ok(state)
    }
}
