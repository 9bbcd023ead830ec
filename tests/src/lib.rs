//! ksit-tests: what the end-to-end tests and the demo stand on: a real Envoy (`envoy`), backends that answer
//! with their identity (`backend`) and an HTTP client (`client`).

pub mod backend;
pub mod client;
pub mod envoy;

use std::path::PathBuf;

/// The workspace root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The seed TrafficPolicy's spec (manifests/examples/multi-cluster-mesh/trafficpolicy.yaml) as JSON.
pub fn seed_spec() -> anyhow::Result<serde_json::Value> {
    let path = repo_root().join("manifests/examples/multi-cluster-mesh/trafficpolicy.yaml");
    let text =
        std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let doc: serde_json::Value = serde_yaml::from_str(&text)?;
    Ok(doc["spec"].clone())
}
