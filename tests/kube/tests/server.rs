//! The harness itself: a real API server starts, reports the pinned version, enforces RBAC for a
//! ServiceAccount token, records requests in its audit log, and goes away with its processes and folder.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ksit_kube::{ApiServer, Client, KUBERNETES_VERSION};
use serde_json::json;

const RBAC: &str = "
apiVersion: v1
kind: ServiceAccount
metadata: {name: reader, namespace: t}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: reader, namespace: t}
rules:
- {apiGroups: [''], resources: [configmaps], verbs: [get, list]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader, namespace: t}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}
subjects: [{kind: ServiceAccount, name: reader, namespace: t}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_api_server_enforces_rbac_and_audits_requests() {
    let server = ApiServer::start("harness").await.unwrap();
    let admin = server.admin().await.unwrap();
    assert_eq!(admin.version().await.unwrap(), KUBERNETES_VERSION);

    let kubeconfig = server
        .service_account_kubeconfig(RBAC, "t", "reader")
        .await
        .unwrap();
    admin
        .apply(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "t"}, "data": {"k": "v"}}), "test")
        .await
        .unwrap();
    let reader = Client::new(&kubeconfig).await.unwrap();
    let cm = reader
        .get("", "configmaps", Some("t"), "c")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cm["data"]["k"], "v");
    // What the Role does not grant is refused by the real authorizer.
    let denied = reader
        .raw("DELETE", "/api/v1/namespaces/t/configmaps/c", None, None)
        .await
        .unwrap();
    assert_eq!(
        denied.status,
        403,
        "{}",
        String::from_utf8_lossy(&denied.body)
    );
    let denied = reader
        .raw("GET", "/api/v1/namespaces/default/configmaps", None, None)
        .await
        .unwrap();
    assert_eq!(denied.status, 403);

    // The audit log names the ServiceAccount and what the server answered.
    let user = "system:serviceaccount:t:reader";
    let mut seen = vec![];
    for _ in 0..50 {
        seen = server
            .audit()
            .into_iter()
            .filter(|e| e.user == user && !e.resource.is_empty())
            .collect();
        if seen.len() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let calls: Vec<(String, String, u16)> = seen
        .iter()
        .map(|e| (e.verb.clone(), e.resource.clone(), e.code))
        .collect();
    assert_eq!(
        calls,
        [
            ("get".into(), "configmaps".into(), 200),
            ("delete".into(), "configmaps".into(), 403),
            ("list".into(), "configmaps".into(), 403)
        ]
    );
    assert!(seen.iter().filter(|e| e.is_write()).count() == 1);

    // Dropping the server stops both processes and removes its folder.
    let dir = server.dir().to_path_buf();
    drop(server);
    assert!(!dir.exists(), "{} left behind", dir.display());
}
