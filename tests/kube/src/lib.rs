//! Real Kubernetes for ksit's tests: etcd and kube-apiserver built from the pinned `k8s.io/kubernetes` and
//! `go.etcd.io/etcd/server/v3` modules (go/, build.sh), started per test like envtest does (server.rs), a
//! dynamic client (client.rs), the audit log read back (audit.rs), and istioctl and Istio's CRDs from the
//! pinned `istio.io/istio` module (assets.rs).

mod assets;
mod audit;
mod client;
mod process;
mod server;

pub use assets::{istio_assets, istio_crds_yaml, istioctl, kube_assets};
pub use audit::AuditEvent;
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
