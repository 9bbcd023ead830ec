//! Reading hub objects from YAML files (for `ksit render`, and for `ksit analyze` later).

use crate::desired::{Cluster, Hub, HubObject, ResourceKind};
use crate::resources::{BindingPolicy, IntegrationTarget, TrafficPolicy};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A YAML document and where it came from.
#[derive(Clone, Debug)]
pub struct Document {
    pub file: PathBuf,
    pub index: usize,
    pub value: Value,
}

impl Document {
    pub fn api_version(&self) -> &str {
        self.value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
    pub fn kind(&self) -> &str {
        self.value.get("kind").and_then(Value::as_str).unwrap_or("")
    }
    pub fn group(&self) -> &str {
        self.api_version().rsplit_once('/').map_or("", |(g, _)| g)
    }
    pub fn name(&self) -> &str {
        self.value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
    pub fn namespace(&self) -> Option<&str> {
        self.value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
    }
    pub fn describe(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{} {ns}/{}", self.kind(), self.name()),
            None => format!("{} {}", self.kind(), self.name()),
        }
    }
}

/// Reads every `.yaml`/`.yml`/`.json` file under the given paths (directories recursively), in name order.
pub fn read_documents(paths: &[PathBuf]) -> anyhow::Result<Vec<Document>> {
    let mut files = Vec::new();
    for p in paths {
        collect(p, &mut files)?;
    }
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        for (index, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value: Value = serde::Deserialize::deserialize(de)
                .map_err(|e| anyhow::anyhow!("{}: document {}: {e}", file.display(), index + 1))?;
            if value.is_null() {
                continue;
            }
            docs.push(Document {
                file: file.clone(),
                index,
                value,
            });
        }
    }
    Ok(docs)
}

fn collect(p: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if p.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            if e.is_dir()
                || e.extension()
                    .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
            {
                collect(&e, out)?;
            }
        }
        Ok(())
    } else if p.exists() {
        out.push(p.to_path_buf());
        Ok(())
    } else {
        Err(anyhow::anyhow!(
            "{}: no such file or directory",
            p.display()
        ))
    }
}

/// Plural and scope of kinds ksit knows without asking an API server.
pub fn known_kind(group: &str, kind: &str) -> Option<(&'static str, bool)> {
    Some(match (group, kind) {
        ("networking.istio.io", "VirtualService") => ("virtualservices", true),
        ("networking.istio.io", "DestinationRule") => ("destinationrules", true),
        ("networking.istio.io", "Gateway") => ("gateways", true),
        ("networking.istio.io", "ServiceEntry") => ("serviceentries", true),
        ("networking.istio.io", "Sidecar") => ("sidecars", true),
        ("networking.istio.io", "WorkloadEntry") => ("workloadentries", true),
        ("networking.istio.io", "WorkloadGroup") => ("workloadgroups", true),
        ("networking.istio.io", "EnvoyFilter") => ("envoyfilters", true),
        ("networking.istio.io", "ProxyConfig") => ("proxyconfigs", true),
        ("security.istio.io", "PeerAuthentication") => ("peerauthentications", true),
        ("security.istio.io", "AuthorizationPolicy") => ("authorizationpolicies", true),
        ("security.istio.io", "RequestAuthentication") => ("requestauthentications", true),
        ("extensions.istio.io", "WasmPlugin") => ("wasmplugins", true),
        ("telemetry.istio.io", "Telemetry") => ("telemetries", true),
        ("", "Namespace") => ("namespaces", false),
        ("", "ConfigMap") => ("configmaps", true),
        ("", "Secret") => ("secrets", true),
        ("", "Service") => ("services", true),
        ("", "ServiceAccount") => ("serviceaccounts", true),
        ("apps", "Deployment") => ("deployments", true),
        ("ksit.io", "TrafficPolicy") => ("trafficpolicies", true),
        ("ksit.io", "Integration") => ("integrations", true),
        ("ksit.io", "IntegrationTarget") => ("integrationtargets", true),
        ("control.kubestellar.io", "BindingPolicy") => ("bindingpolicies", false),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            ("customresourcedefinitions", false)
        }
        _ => return None,
    })
}

/// Kinds that configure the hub itself and are never sent to a member.
pub fn is_hub_only(group: &str) -> bool {
    matches!(
        group,
        "ksit.io" | "control.kubestellar.io" | "apiextensions.k8s.io"
    )
}

fn parse<T: serde::de::DeserializeOwned>(d: &Document) -> anyhow::Result<T> {
    let mut v = d.value.clone();
    // Cluster-scoped kinds carry no namespace: the API server drops it, so do we (`ksit analyze` reports it).
    if d.kind() == "BindingPolicy" {
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("namespace");
        }
    }
    ksit_policy::config::from_value(v, "")
        .map_err(|e| anyhow::anyhow!("{}: {}: {e}", d.file.display(), d.describe()))
}

/// Builds the hub snapshot from documents: IntegrationTargets stand for clusters.
pub fn hub_from_documents(docs: &[Document]) -> anyhow::Result<Hub> {
    let mut hub = Hub::default();
    let mut crd_kinds: BTreeMap<(String, String), (String, bool)> = BTreeMap::new();
    for d in docs
        .iter()
        .filter(|d| d.kind() == "CustomResourceDefinition")
    {
        let spec = &d.value["spec"];
        let group = spec["group"].as_str().unwrap_or("").to_string();
        let kind = spec["names"]["kind"].as_str().unwrap_or("").to_string();
        let plural = spec["names"]["plural"].as_str().unwrap_or("").to_string();
        crd_kinds.insert(
            (group, kind),
            (plural, spec["scope"].as_str() != Some("Cluster")),
        );
    }
    for d in docs {
        let (group, kind) = (d.group().to_string(), d.kind().to_string());
        match (group.as_str(), kind.as_str()) {
            ("ksit.io", "IntegrationTarget") => {
                let t: IntegrationTarget = parse(d)?;
                let config_map = docs
                    .iter()
                    .find(|c| {
                        c.kind() == "ConfigMap"
                            && c.namespace() == Some(crate::template::PROPERTIES_NAMESPACE)
                            && c.name() == t.spec.cluster_name
                    })
                    .map(|c| crate::template::config_map_entries(&c.value))
                    .unwrap_or_default();
                hub.cluster_properties.insert(
                    t.spec.cluster_name.clone(),
                    crate::template::extra_properties(
                        t.metadata.annotations.iter().flatten(),
                        config_map,
                    ),
                );
                if let Some(id) = crate::desired::istio_cluster_id(t.metadata.annotations.as_ref())
                {
                    hub.istio_cluster_ids
                        .insert(t.spec.cluster_name.clone(), id);
                }
                hub.clusters.push(Cluster {
                    name: t.spec.cluster_name.clone(),
                    labels: t.spec.labels.clone(),
                });
            }
            ("control.kubestellar.io", "BindingPolicy") => {
                hub.bindings.push(parse::<BindingPolicy>(d)?)
            }
            ("ksit.io", "TrafficPolicy") => {
                let mut tp: TrafficPolicy = parse(d)?;
                tp.metadata
                    .namespace
                    .get_or_insert_with(|| "default".into());
                hub.traffic_policies.push(tp);
            }
            ("", "Secret") if d.name().ends_with("-kubeconfig") => {}
            _ if crate::desired::labels_of(&d.value)
                .get(crate::desired::MANAGED_BY_LABEL)
                .map(String::as_str)
                == Some(crate::desired::MANAGED_BY_VALUE) => {} // ksit's own output is never a source
            _ if is_hub_only(&group) => {}
            _ => {
                if kind == "Namespace" {
                    hub.namespace_labels
                        .insert(d.name().to_string(), crate::desired::labels_of(&d.value));
                }
                let version = d
                    .api_version()
                    .rsplit('/')
                    .next()
                    .unwrap_or("v1")
                    .to_string();
                let (plural, namespaced) = match known_kind(&group, &kind) {
                    Some((p, n)) => (p.to_string(), n),
                    None => crd_kinds
                        .get(&(group.clone(), kind.clone()))
                        .cloned()
                        .unwrap_or_else(|| {
                            (format!("{}s", kind.to_lowercase()), d.namespace().is_some())
                        }),
                };
                let mut object = d.value.clone();
                if namespaced && d.namespace().is_none() {
                    if let Some(m) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.insert("namespace".into(), Value::String("default".into()));
                    }
                }
                hub.objects.push(HubObject {
                    kind: ResourceKind::new(&group, &version, &kind, &plural, namespaced),
                    object,
                });
            }
        }
    }
    hub.clusters.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(hub)
}
