//! Real Kubernetes for ksit's tests: etcd and kube-apiserver built from the pinned `k8s.io/kubernetes` and
//! `go.etcd.io/etcd/server/v3` modules (go/, build.sh), started per test like envtest does (server.rs), a
//! dynamic client (client.rs), the audit log read back (audit.rs), and istioctl and Istio's CRDs from the
//! pinned `istio.io/istio` module (assets.rs).

mod assets;
mod audit;
mod client;
mod process;
mod server;

pub use assets::{istio_crds_yaml, istioctl, kube_assets, kubestellar_crds_yaml};
pub use audit::{rfc3339, AuditEvent};
pub use client::{Client, Resource, Response};
pub use process::Supervised;
pub use server::{ApiServer, KUBERNETES_VERSION};

/// Standard base64 (with padding), for kubeconfig and Secret data.
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A kubeconfig for one cluster with a bearer token.
pub fn kubeconfig(name: &str, server: &str, ca_pem: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {ca}\nusers:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n\
         - name: {name}\n  context:\n    cluster: {name}\n    user: {name}\ncurrent-context: {name}\n",
        ca = base64(ca_pem.as_bytes())
    )
}

/// With an admin's kubeconfig: applies `rbac_yaml` (the ServiceAccount, its Roles and bindings; the namespace
/// is created first), then returns a kubeconfig for the same cluster holding a token of the ServiceAccount
/// `namespace/name` from the TokenRequest API (valid for a day). The server's authorizer then allows that
/// kubeconfig exactly what the manifests grant. Works on any cluster, not only one of [`ApiServer`]'s.
pub async fn service_account_kubeconfig(
    admin_kubeconfig: &str,
    rbac_yaml: &str,
    namespace: &str,
    name: &str,
) -> anyhow::Result<String> {
    use anyhow::Context;
    let admin = Client::new(admin_kubeconfig).await?;
    admin
        .apply(
            &serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}),
            "ksit-test-setup",
        )
        .await?;
    admin.apply_yaml(rbac_yaml, "ksit-test-setup").await?;
    let token = admin.create_token(namespace, name).await?;
    // The cluster entry of the current context: its server and how to trust it.
    let kc: serde_json::Value = serde_yaml::from_str(admin_kubeconfig)?;
    let context = kc["current-context"]
        .as_str()
        .context("no current-context")?;
    let cluster_name = kc["contexts"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == context))
        .and_then(|c| c["context"]["cluster"].as_str())
        .context("the current context names no cluster")?;
    let mut cluster = kc["clusters"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == cluster_name))
        .map(|c| c["cluster"].clone())
        .context("the current context's cluster is not in the kubeconfig")?;
    // A CA file is inlined, so the new kubeconfig works wherever it is written.
    if let Some(file) = cluster["certificate-authority"].as_str().map(String::from) {
        let pem = std::fs::read(&file).with_context(|| format!("reading {file}"))?;
        cluster["certificate-authority-data"] = base64(&pem).into();
        if let Some(c) = cluster.as_object_mut() {
            c.remove("certificate-authority");
        }
    }
    let out = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": cluster_name, "cluster": cluster}],
        "users": [{"name": format!("{namespace}-{name}"), "user": {"token": token}}],
        "contexts": [{"name": context, "context": {"cluster": cluster_name, "user": format!("{namespace}-{name}")}}],
        "current-context": context,
    });
    Ok(serde_yaml::to_string(&out)?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(plain.as_bytes()), encoded);
        }
    }
}
