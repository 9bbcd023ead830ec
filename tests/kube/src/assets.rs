//! Where the Go-built binaries and Istio's CRDs are: `build.sh` builds them once into a cache outside the
//! clone (or names `$KUBEBUILDER_ASSETS`), and this runs it at most once per process.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("build.sh")
}

fn run_build(what: &str) -> Result<PathBuf, String> {
    let out = std::process::Command::new(build_script())
        .arg(what)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", build_script().display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {what} failed ({}); is Go installed (go version) and the Go module proxy reachable?",
            build_script().display(),
            out.status
        ));
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if dir.is_empty() {
        return Err(format!(
            "{} {what} printed no folder",
            build_script().display()
        ));
    }
    Ok(PathBuf::from(dir))
}

fn cached(cell: &'static OnceLock<Result<PathBuf, String>>, what: &str) -> anyhow::Result<PathBuf> {
    match cell.get_or_init(|| run_build(what)) {
        Ok(p) => Ok(p.clone()),
        Err(e) => bail!("{e}"),
    }
}

/// The folder holding `etcd` and `kube-apiserver` (envtest's `KUBEBUILDER_ASSETS` when it has both).
pub fn kube_assets() -> anyhow::Result<PathBuf> {
    static CELL: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    cached(&CELL, "kube")
}

/// `istioctl`, built from the pinned `istio.io/istio` module.
pub fn istioctl() -> anyhow::Result<PathBuf> {
    static CELL: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    Ok(cached(&CELL, "istio")?.join("istioctl"))
}

/// Istio's own CRDs, with their CEL validation rules, as the pinned `istio.io/istio` module ships them
/// (`manifests/charts/base/files/crd-all.gen.yaml`; a module download, nothing is built).
pub fn istio_crds_yaml() -> anyhow::Result<String> {
    static CELL: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let p = cached(&CELL, "istio-crds")?.join("crd-all.gen.yaml");
    std::fs::read_to_string(&p)
        .with_context(|| format!("reading Istio's CRDs from {}", p.display()))
}

/// KubeStellar's own BindingPolicy and Binding CRDs, from the pinned `github.com/kubestellar/kubestellar`
/// module (`config/crd/bases`; a module download, nothing is built).
pub fn kubestellar_crds_yaml() -> anyhow::Result<String> {
    static CELL: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let p = cached(&CELL, "kubestellar-crds")?.join("kubestellar-crds.yaml");
    std::fs::read_to_string(&p)
        .with_context(|| format!("reading KubeStellar's CRDs from {}", p.display()))
}
