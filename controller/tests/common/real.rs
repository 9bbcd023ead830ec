//! The controller's test world on real Kubernetes API servers (tests/kube): a hub and two members, each its
//! own etcd and kube-apiserver v1.37.2 with RBAC enforced, Istio's CRDs from the pinned istio.io/istio module
//! and ksit's from `ksit crds`; the corrected KSIT example applied on the hub; cluster3 bound to nothing and
//! unreachable. The controller authenticates as the ServiceAccounts of manifests/install/rbac.yaml (hub) and
//! member-rbac.yaml (members), so the real authorizer holds it to exactly what they grant.

use super::*;
use ksit_kube::{ApiServer, AuditEvent, Client};

pub const CONTROLLER_USER: &str = "system:serviceaccount:ksit-system:ksit-controller";
pub const MEMBER_USER: &str = "system:serviceaccount:ksit-system:ksit-member";
const SETUP: &str = "ksit-test-setup";

pub fn install(file: &str) -> String {
    std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../manifests/install")
            .join(file),
    )
    .unwrap()
}

/// A member cluster of the test world.
#[derive(Clone, Copy)]
pub struct MemberSpec {
    pub name: &'static str,
    /// Istio's CRDs and an available istiod Deployment.
    pub istio: bool,
    /// An ingress gateway Deployment (label istio: ingressgateway).
    pub gateway: bool,
}

pub const CLUSTER1: MemberSpec = MemberSpec {
    name: "cluster1",
    istio: true,
    gateway: true,
};
pub const CLUSTER2: MemberSpec = MemberSpec {
    name: "cluster2",
    istio: true,
    gateway: false,
};

pub struct Member {
    pub name: &'static str,
    pub server: ApiServer,
    pub admin: Client,
}

pub struct Env {
    pub hub: ApiServer,
    pub hub_admin: Client,
    pub members: Vec<Member>,
    pub dir: PathBuf,
    pub module: PathBuf,
    pub controller_kubeconfig: PathBuf,
}

async fn start_member(spec: MemberSpec, istio_crds: &str) -> Member {
    let server = ApiServer::start(spec.name).await.unwrap();
    let admin = server.admin().await.unwrap();
    if spec.istio {
        admin.apply_yaml(istio_crds, SETUP).await.unwrap();
        admin
            .apply(
                &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}}),
                SETUP,
            )
            .await
            .unwrap();
        deployment(&admin, "istiod", json!({"app": "istiod"}), true).await;
        if spec.gateway {
            deployment(
                &admin,
                "istio-ingressgateway",
                json!({"istio": "ingressgateway"}),
                false,
            )
            .await;
        }
    }
    Member {
        name: spec.name,
        server,
        admin,
    }
}

/// A Deployment in istio-system; `available` writes the status a running one would have (no controller
/// manager runs here to do it).
async fn deployment(admin: &Client, name: &str, labels: Value, available: bool) {
    admin.apply(&json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "istio-system", "labels": labels},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "main", "image": "example.invalid/none"}]}}}}), SETUP)
        .await
        .unwrap();
    if available {
        admin
            .apply_status(
                &json!({"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": name, "namespace": "istio-system"},
                    "status": {"replicas": 1, "availableReplicas": 1, "readyReplicas": 1}}),
                SETUP,
            )
            .await
            .unwrap();
    }
}

impl Env {
    /// The hub, cluster1 and cluster2, started together; the example on the hub.
    pub async fn start() -> Env {
        Env::start_with(&[CLUSTER1, CLUSTER2]).await
    }

    pub async fn start_with(specs: &[MemberSpec]) -> Env {
        Env::build(specs, false).await
    }

    /// As a KubeStellar hub (WDS): KubeStellar's own BindingPolicy and Binding CRDs (from the pinned
    /// github.com/kubestellar/kubestellar module) replace ksit's copy of BindingPolicy, and the controller's
    /// ServiceAccount also holds manifests/install/rbac-kubestellar.yaml (`--deliver kubestellar`).
    pub async fn start_for_kubestellar() -> Env {
        Env::build(&[CLUSTER1, CLUSTER2], true).await
    }

    async fn build(specs: &[MemberSpec], kubestellar: bool) -> Env {
        let _ = env_logger::builder().is_test(true).try_init();
        let istio_crds = ksit_kube::istio_crds_yaml().unwrap();
        let (hub, members) = tokio::join!(
            ApiServer::start("hub"),
            futures::future::join_all(specs.iter().map(|s| start_member(*s, &istio_crds)))
        );
        let hub = hub.unwrap();
        let hub_admin = hub.admin().await.unwrap();
        hub_admin
            .apply_yaml(&ksit_controller::resources::crds_yaml(), SETUP)
            .await
            .unwrap();
        if kubestellar {
            hub_admin
                .apply_yaml(&ksit_kube::kubestellar_crds_yaml().unwrap(), SETUP)
                .await
                .unwrap();
        }
        // The Istio objects a BindingPolicy distributes are kept on the hub: it has Istio's CRDs too.
        hub_admin.apply_yaml(&istio_crds, SETUP).await.unwrap();
        for ns in ["ksit-system", "istio-system"] {
            hub_admin
                .apply(
                    &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                    SETUP,
                )
                .await
                .unwrap();
        }
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ksit-e2e-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let controller_kubeconfig = dir.join("hub.kubeconfig");
        let mut rbac = install("rbac.yaml");
        if kubestellar {
            rbac = format!("{rbac}\n---\n{}", install("rbac-kubestellar.yaml"));
        }
        std::fs::write(
            &controller_kubeconfig,
            hub.service_account_kubeconfig(&rbac, "ksit-system", "ksit-controller")
                .await
                .unwrap(),
        )
        .unwrap();
        for m in &members {
            let kc = m
                .server
                .service_account_kubeconfig(
                    &install("member-rbac.yaml"),
                    "ksit-system",
                    "ksit-member",
                )
                .await
                .unwrap();
            hub_admin
                .apply(
                    &json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": format!("{}-kubeconfig", m.name), "namespace": "ksit-system"},
                "data": {"kubeconfig": ksit_kube::base64(kc.as_bytes())}}),
                    SETUP,
                )
                .await
                .unwrap();
        }
        // cluster3: known to the hub, bound to nothing, and nothing listens where its kubeconfig points.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let kc3 = ksit_kube::kubeconfig(
            "cluster3",
            &format!("https://127.0.0.1:{closed}"),
            "",
            "unused",
        );
        hub_admin
            .apply(
                &json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "cluster3-kubeconfig", "namespace": "ksit-system"},
            "data": {"kubeconfig": ksit_kube::base64(kc3.as_bytes())}}),
                SETUP,
            )
            .await
            .unwrap();
        let module = dir.join("module.wasm");
        std::fs::write(&module, b"\0asm-not-really").unwrap();
        let env = Env {
            hub,
            hub_admin,
            members,
            dir,
            module,
            controller_kubeconfig,
        };
        env.apply_example().await;
        // An object cluster2 already has, not made by ksit, with the name of one ksit would send.
        if let Some(c2) = env
            .members
            .iter()
            .zip(specs)
            .find(|(m, spec)| m.name == "cluster2" && spec.istio)
            .map(|(m, _)| m)
        {
            c2.admin
                .apply(
                    &json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"name": "multi-cluster-destination-rule", "namespace": "default"},
                "spec": {"host": "theirs.example.com"}}),
                    "kubectl-client-side-apply",
                )
                .await
                .unwrap();
        }
        env
    }

    async fn apply_example(&self) {
        for f in [
            "integrationtargets.yaml",
            "integration.yaml",
            "gateway.yaml",
            "virtualservice.yaml",
            "destinationrule.yaml",
            "trafficpolicy.yaml",
            "bindingpolicy.yaml",
        ] {
            for d in docs(f) {
                self.hub_admin.apply(&d, "kubectl").await.unwrap();
            }
        }
        self.hub_admin
            .apply(&target("cluster3", json!({"mesh": "disabled"})), "kubectl")
            .await
            .unwrap();
    }

    pub fn member(&self, name: &str) -> &Member {
        self.members.iter().find(|m| m.name == name).unwrap()
    }

    pub fn member_mut(&mut self, name: &str) -> &mut Member {
        self.members.iter_mut().find(|m| m.name == name).unwrap()
    }

    /// Controller arguments for this world, with the hub kubeconfig of the controller's ServiceAccount.
    pub fn args(&self, identity: &str) -> ControllerArgs {
        ControllerArgs {
            kubeconfig: Some(self.controller_kubeconfig.clone()),
            listen: ([127, 0, 0, 1], 0).into(),
            module: ModuleArgs {
                module: self.module.clone(),
                module_base_url: "http://ksit-controller.ksit-system.svc:8080".into(),
                oci_image: None,
                gateway_namespace: "istio-system".into(),
                stable_by_default_route: false,
                per_cluster_rendering: false,
            },
            namespace: "ksit-system".into(),
            target_namespaces: vec!["ksit-system".into()],
            kubestellar_owns_bindings: false,
            deliver: ksit_controller::controller::Delivery::Push,
            resync_seconds: 3,
            member_timeout_seconds: 2,
            hub_timeout_seconds: 30,
            identity: Some(identity.into()),
            lease_seconds: 3,
        }
    }

    pub async fn hub_object(
        &self,
        group: &str,
        plural: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        self.hub_admin.get(group, plural, ns, name).await.unwrap()
    }

    pub async fn traffic_policy(&self, name: &str) -> Option<Value> {
        self.hub_object("ksit.io", "trafficpolicies", Some("default"), name)
            .await
    }

    pub async fn binding_policy(&self) -> Option<Value> {
        self.hub_object(
            "control.kubestellar.io",
            "bindingpolicies",
            None,
            "istio-mesh-binding",
        )
        .await
    }

    pub async fn integration_target(&self, cluster: &str) -> Option<Value> {
        self.hub_object(
            "ksit.io",
            "integrationtargets",
            Some("ksit-system"),
            cluster,
        )
        .await
    }

    pub async fn set_canary_weight(&self, w: i64) {
        let mut tp = docs("trafficpolicy.yaml").remove(0);
        tp["spec"]["http"][0]["route"][0]["weight"] = json!(100 - w);
        tp["spec"]["http"][0]["route"][1]["weight"] = json!(w);
        self.hub_admin.apply(&tp, "kubectl").await.unwrap();
    }

    /// What the controller's ServiceAccount asked the hub, and the members' ServiceAccount each member.
    pub fn controller_calls(&self) -> Vec<(String, AuditEvent)> {
        let mut calls: Vec<(String, AuditEvent)> = self
            .hub
            .audit()
            .into_iter()
            .filter(|e| e.user == CONTROLLER_USER)
            .map(|e| ("hub".to_string(), e))
            .collect();
        for m in &self.members {
            calls.extend(
                m.server
                    .audit()
                    .into_iter()
                    .filter(|e| e.user == MEMBER_USER)
                    .map(|e| (m.name.to_string(), e)),
            );
        }
        calls
    }

    /// Every call the controller made was allowed by the install manifests' RBAC: the real authorizer
    /// answered none of them 403.
    pub fn assert_least_privilege_held(&self) {
        let calls = self.controller_calls();
        assert!(
            calls.iter().any(|(c, _)| c != "hub"),
            "the controller made no calls to any member"
        );
        self.assert_least_privilege_held_on_hub();
    }

    /// As [`Env::assert_least_privilege_held`], for a controller that calls only the hub.
    pub fn assert_least_privilege_held_on_hub(&self) {
        let calls = self.controller_calls();
        assert!(
            calls.iter().any(|(c, _)| c == "hub"),
            "the controller made no calls to the hub"
        );
        // A restarted server refuses everyone but the admin until its RBAC caches fill; it is not ready then.
        let starting = |cluster: &str, e: &AuditEvent| {
            let server = if cluster == "hub" {
                &self.hub
            } else {
                &self.member(cluster).server
            };
            server.while_starting(&e.received)
        };
        let forbidden: Vec<_> = calls
            .iter()
            .filter(|(c, e)| e.code == 403 && !starting(c, e))
            .collect();
        assert!(
            forbidden.is_empty(),
            "calls the RBAC of manifests/install does not allow: {forbidden:#?}"
        );
    }

    /// The writes the member's ServiceAccount made, from the audit log.
    pub fn member_writes(&self, name: &str) -> Vec<AuditEvent> {
        self.member(name)
            .server
            .audit()
            .into_iter()
            .filter(|e| e.user == MEMBER_USER && e.is_write())
            .collect()
    }

    /// The reads and writes the member's ServiceAccount made, from the audit log.
    pub fn member_calls(&self, name: &str) -> Vec<AuditEvent> {
        self.member(name)
            .server
            .audit()
            .into_iter()
            .filter(|e| e.user == MEMBER_USER)
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Member {
    /// Gives istiod the CLUSTER_ID it passes its proxies (Istio's install sets it from the mesh's cluster
    /// name; `Kubernetes` by default).
    pub async fn set_istiod_cluster_id(&self, id: &str) {
        let labels = json!({"app": "istiod"});
        self.admin
            .apply(
                &json!({"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": "istiod", "namespace": "istio-system", "labels": labels},
                    "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                        "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "main",
                            "image": "example.invalid/none", "env": [{"name": "CLUSTER_ID", "value": id}]}]}}}}),
                SETUP,
            )
            .await
            .unwrap();
    }

    pub async fn object(
        &self,
        group: &str,
        plural: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        self.admin.get(group, plural, ns, name).await.unwrap()
    }

    pub async fn objects(&self, group: &str, plural: &str) -> Vec<Value> {
        self.admin.list(group, plural).await.unwrap()
    }

    pub async fn wasm_plugin(&self) -> Option<Value> {
        self.object(
            "extensions.istio.io",
            "wasmplugins",
            Some("istio-system"),
            "ksit-default-myapp",
        )
        .await
    }

    pub async fn canary_weight(&self) -> Option<i64> {
        self.wasm_plugin().await.and_then(|w| {
            w.pointer("/spec/pluginConfig/http/0/route/1/weight")
                .and_then(Value::as_i64)
        })
    }

    pub async fn virtual_service(&self, name: &str) -> Option<Value> {
        self.object(
            "networking.istio.io",
            "virtualservices",
            Some("default"),
            name,
        )
        .await
    }
}
