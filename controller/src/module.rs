//! The filter module the controller serves and the rendered WasmPlugins point at.

use crate::desired::ModuleSource;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The built filter, relative to the repository (where `make wasm` puts it).
pub const DEFAULT_MODULE_PATH: &str = "target/wasm32-wasip1/release/ksit_filter.wasm";
/// Where members fetch the module from: the controller's Service on the hub.
pub const DEFAULT_BASE_URL: &str = "http://ksit-controller.ksit-system.svc:8080";

#[derive(Clone, Debug)]
pub struct Module {
    pub bytes: Vec<u8>,
    pub sha256: String,
}

impl Module {
    pub fn load(path: &Path) -> anyhow::Result<Module> {
        let bytes = std::fs::read(path).map_err(|e| {
            anyhow::anyhow!("cannot read the filter module {}: {e} (build it with `make wasm`, or pass --module)", path.display())
        })?;
        let sha256 = hex(&Sha256::digest(&bytes));
        Ok(Module { bytes, sha256 })
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Module options shared by `ksit controller` and `ksit render`, so both render the same WasmPlugins.
#[derive(clap::Args, Clone, Debug)]
pub struct ModuleArgs {
    /// The filter module to serve and reference (sha256 taken from it).
    #[arg(long, env = "KSIT_MODULE", default_value = DEFAULT_MODULE_PATH)]
    pub module: PathBuf,
    /// Base URL at which members reach this controller's module endpoint.
    #[arg(long, env = "KSIT_MODULE_BASE_URL", default_value = DEFAULT_BASE_URL)]
    pub module_base_url: String,
    /// Reference this OCI image (oci://REGISTRY/REPO:TAG) in WasmPlugins instead of the served module.
    #[arg(long, env = "KSIT_OCI_IMAGE")]
    pub oci_image: Option<String>,
    /// Namespace where the gateways selected by `istio: ingressgateway` run.
    #[arg(long, env = "KSIT_GATEWAY_NAMESPACE", default_value = "istio-system")]
    pub gateway_namespace: String,
    /// Leave requests the filter sends to their rule's stable destination unmarked (pluginConfig
    /// `headerForStable: false`): the VirtualService's default route takes them there, and Envoy keeps the
    /// route it chose before the filter ran. Skips a route selection for most requests, with no throughput
    /// gain the bench can measure (docs/benchmarks.md); assumes no filter before ksit changes the headers
    /// rules match on without clearing the route cache, and a filter module that knows the field (see
    /// docs/trafficpolicy.md).
    #[arg(long, env = "KSIT_STABLE_BY_DEFAULT_ROUTE")]
    pub stable_by_default_route: bool,
    /// Render each cluster's WasmPlugin and VirtualService for that cluster alone (its overrides resolved
    /// and its name in the pluginConfig), as before ksit 0.2. By default one WasmPlugin and VirtualService
    /// serve every cluster: each proxy's filter picks its cluster's overrides by its Istio cluster ID (the
    /// IntegrationTarget annotation ksit.io/istio-cluster-id when it differs from the cluster's name).
    #[arg(long, env = "KSIT_PER_CLUSTER_RENDERING")]
    pub per_cluster_rendering: bool,
}

impl ModuleArgs {
    /// The module (if a file is used) and the render settings.
    pub fn settings(&self) -> anyhow::Result<(Option<Module>, crate::desired::RenderSettings)> {
        let (module, source) = match &self.oci_image {
            Some(image) => {
                let image = if image.starts_with("oci://") {
                    image.clone()
                } else {
                    format!("oci://{image}")
                };
                (None, ModuleSource::Oci { image })
            }
            None => {
                let m = Module::load(&self.module)?;
                let url = format!(
                    "{}/modules/{}.wasm",
                    self.module_base_url.trim_end_matches('/'),
                    m.sha256
                );
                let sha256 = m.sha256.clone();
                (Some(m), ModuleSource::Http { url, sha256 })
            }
        };
        Ok((
            module,
            crate::desired::RenderSettings {
                module: source,
                gateway_namespace: self.gateway_namespace.clone(),
                stable_by_default_route: self.stable_by_default_route,
                per_cluster: self.per_cluster_rendering,
            },
        ))
    }
}
