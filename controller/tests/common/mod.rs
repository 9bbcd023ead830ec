//! Shared set-up of the controller tests: the corrected KSIT example, waits on conditions, and two worlds to
//! run the controller in: real API servers (`real`, for the scenarios) and API emulators (this module's
//! `setup`, for faults a real server cannot be made to show: injected 500s, 409s, latency, dropped watches).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod real;

pub use ksit_controller::controller::{run_async, ControllerArgs};
pub use ksit_controller::module::ModuleArgs;
pub use ksit_emulator::Emulator;
pub use serde_json::{json, Value};
pub use std::path::PathBuf;
pub use std::time::{Duration, Instant};

pub fn example_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples/multi-cluster-mesh")
}

pub fn docs(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(example_dir().join(file)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

pub fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Waits until `f` answers true, polling every 50 ms; fails the test after `limit`.
pub async fn until<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct Setup {
    pub hub: Emulator,
    pub members: Vec<Emulator>,
    pub dir: PathBuf,
    pub module: PathBuf,
}

pub fn target(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "ksit.io/v1alpha1", "kind": "IntegrationTarget", "metadata": {"name": name, "namespace": "ksit-system"},
           "spec": {"clusterName": name, "labels": labels}})
}

/// Emulators: a hub and three members with the example. `istio_on_cluster3`: whether cluster3 has Istio's
/// CRDs (from the pinned istio.io/istio module, as on the real servers).
pub async fn setup(istio_on_cluster3: bool) -> Setup {
    let istio = ksit_kube::istio_crds_yaml().unwrap();
    let hub = Emulator::start("hub").await.unwrap();
    hub.load_crds_yaml(&ksit_controller::resources::crds_yaml())
        .unwrap();
    hub.load_crds_yaml(&istio).unwrap();
    let mut members = Vec::new();
    for n in ["cluster1", "cluster2", "cluster3"] {
        let m = Emulator::start(n).await.unwrap();
        if n != "cluster3" || istio_on_cluster3 {
            m.load_crds_yaml(&istio).unwrap();
        }
        m.put(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}}),
            "istio",
        )
        .unwrap();
        m.put(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "istiod", "namespace": "istio-system"},
                     "spec": {"replicas": 1}, "status": {"availableReplicas": 1}}), "istio").unwrap();
        members.push(m);
    }
    members[0].put(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "istio-ingressgateway", "namespace": "istio-system", "labels": {"istio": "ingressgateway"}}, "spec": {"replicas": 1}}), "istio").unwrap();
    for ns in ["ksit-system", "istio-system"] {
        hub.put(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            "kubectl",
        )
        .unwrap();
    }
    for m in &members {
        hub.put(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("{}-kubeconfig", m.name()), "namespace": "ksit-system"},
                       "data": {"kubeconfig": b64(m.kubeconfig().as_bytes())}}), "kubectl").unwrap();
    }
    for t in docs("integrationtargets.yaml") {
        hub.put(t, "kubectl").unwrap();
    }
    hub.put(target("cluster3", json!({"mesh": "disabled"})), "kubectl")
        .unwrap();
    for f in [
        "integration.yaml",
        "gateway.yaml",
        "virtualservice.yaml",
        "destinationrule.yaml",
        "trafficpolicy.yaml",
        "bindingpolicy.yaml",
    ] {
        for d in docs(f) {
            hub.put(d, "kubectl").unwrap();
        }
    }
    // An object cluster2 already has, not made by ksit, with the name of one ksit would send.
    members[1].put(json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "multi-cluster-destination-rule", "namespace": "default"}, "spec": {"host": "theirs.example.com"}}), "kubectl-client-side-apply").unwrap();
    // One directory per set-up: tests in one binary run at the same time and must not share a hub kubeconfig.
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("ksit-e2e-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    hub.write_kubeconfig(&dir.join("hub.kubeconfig")).unwrap();
    let module = dir.join("module.wasm");
    std::fs::write(&module, b"\0asm-not-really").unwrap();
    Setup {
        hub,
        members,
        dir,
        module,
    }
}

pub fn args(s: &Setup, identity: &str) -> ControllerArgs {
    ControllerArgs {
        kubeconfig: Some(s.dir.join("hub.kubeconfig")),
        // Any free port, bound by the controller itself: no test talks to it, and a port picked here and
        // released could be taken by another process before the controller binds it.
        listen: ([127, 0, 0, 1], 0).into(),
        module: ModuleArgs {
            module: s.module.clone(),
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

pub fn wasm_plugin(m: &Emulator) -> Option<Value> {
    m.object(
        "extensions.istio.io",
        "wasmplugins",
        Some("istio-system"),
        "ksit-default-myapp",
    )
}

pub fn canary_weight(m: &Emulator) -> Option<i64> {
    wasm_plugin(m).and_then(|w| {
        w.pointer("/spec/pluginConfig/http/0/route/1/weight")
            .and_then(Value::as_i64)
    })
}

pub fn status<'a>(v: &'a Option<Value>, ptr: &str) -> Option<&'a Value> {
    v.as_ref().and_then(|o| o.pointer(ptr))
}

pub fn set_canary_weight(hub: &Emulator, w: i64) {
    let mut tp = hub
        .object("ksit.io", "trafficpolicies", Some("default"), "myapp")
        .unwrap();
    tp["spec"]["http"][0]["route"][0]["weight"] = json!(100 - w);
    tp["spec"]["http"][0]["route"][1]["weight"] = json!(w);
    hub.put(tp, "kubectl-edit").unwrap();
}
