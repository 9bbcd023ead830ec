//! The controller e2e against a real cluster: set KSIT_TEST_KUBECONFIG to a kubeconfig whose cluster has the
//! Istio CRDs. That cluster plays both the hub and member `cluster1` (its own kubeconfig is the Secret).
//! Without the variable the test says it skipped. Fault injection (members going down, counted writes) needs
//! the emulator and is covered by e2e.rs; here writes are checked through resourceVersions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ksit_controller::controller::{run_async, ControllerArgs};
use ksit_controller::module::ModuleArgs;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope};
use kube::{Client, Config};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const MANAGER: &str = "ksit-e2e";

struct Cluster {
    client: Client,
    discovery: Discovery,
}

impl Cluster {
    fn api(&self, v: &Value) -> (Api<DynamicObject>, String) {
        let av = v["apiVersion"].as_str().unwrap();
        let (group, version) = av.rsplit_once('/').unwrap_or(("", av));
        let gvk = kube::api::GroupVersionKind::gvk(group, version, v["kind"].as_str().unwrap());
        let (ar, caps): (ApiResource, ApiCapabilities) = self
            .discovery
            .resolve_gvk(&gvk)
            .unwrap_or_else(|| panic!("the cluster does not serve {av} {}", v["kind"]));
        let name = v["metadata"]["name"].as_str().unwrap().to_string();
        let api = match (&caps.scope, v["metadata"]["namespace"].as_str()) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &ar),
            (Scope::Namespaced, None) => Api::namespaced_with(self.client.clone(), "default", &ar),
            (Scope::Cluster, _) => Api::all_with(self.client.clone(), &ar),
        };
        (api, name)
    }

    async fn apply(&self, mut v: Value) -> DynamicObject {
        if v["kind"] == "BindingPolicy" {
            v["metadata"].as_object_mut().unwrap().remove("namespace");
        }
        let (api, name) = self.api(&v);
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&v),
        )
        .await
        .unwrap()
    }

    async fn get(&self, v: &Value) -> Option<DynamicObject> {
        let (api, name) = self.api(v);
        api.get_opt(&name).await.unwrap()
    }

    async fn delete(&self, v: &Value) {
        let (api, name) = self.api(v);
        let _ = api.delete(&name, &DeleteParams::default()).await;
    }
}

fn example(file: &str) -> Vec<Value> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/examples/multi-cluster-mesh")
        .join(file);
    let text = std::fs::read_to_string(p).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

async fn until<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_against_a_real_cluster() {
    let _ = env_logger::builder().is_test(true).try_init();
    let Ok(path) = std::env::var("KSIT_TEST_KUBECONFIG") else {
        eprintln!(
            "skipped: set KSIT_TEST_KUBECONFIG to run the controller e2e against a real cluster"
        );
        return;
    };
    let text = std::fs::read_to_string(&path).unwrap();
    let kc = kube::config::Kubeconfig::from_yaml(&text).unwrap();
    let client = Client::try_from(
        Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap(),
    )
    .unwrap();
    // Our CRDs first, then discover what the cluster serves.
    for crd in ksit_controller::resources::crds() {
        let api: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> = Api::all(client.clone());
        let name = kube::ResourceExt::name_any(&crd);
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    if !discovery.has_group("extensions.istio.io") {
        eprintln!(
            "skipped: the cluster in KSIT_TEST_KUBECONFIG has no Istio CRDs (extensions.istio.io)"
        );
        return;
    }
    let c = Cluster {
        client: client.clone(),
        discovery,
    };
    for ns in ["ksit-system", "istio-system"] {
        c.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .await;
    }
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cluster1-kubeconfig", "namespace": "ksit-system"}, "stringData": {"kubeconfig": text}});
    c.apply(secret.clone()).await;
    let target = json!({"apiVersion": "ksit.io/v1alpha1", "kind": "IntegrationTarget", "metadata": {"name": "cluster1", "namespace": "ksit-system"},
                        "spec": {"clusterName": "cluster1", "labels": {"mesh": "enabled", "integration": "istio"}}});
    c.apply(target.clone()).await;
    let mut created = vec![secret, target];
    for f in [
        "gateway.yaml",
        "virtualservice.yaml",
        "destinationrule.yaml",
        "trafficpolicy.yaml",
        "bindingpolicy.yaml",
    ] {
        for d in example(f) {
            c.apply(d.clone()).await;
            created.push(d);
        }
    }
    let dir = std::env::temp_dir().join(format!("ksit-real-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let module = dir.join("module.wasm");
    std::fs::write(&module, b"\0asm-e2e").unwrap();
    let args = ControllerArgs {
        kubeconfig: Some(PathBuf::from(&path)),
        listen: ([127, 0, 0, 1], 0).into(),
        module: ModuleArgs {
            module,
            module_base_url: "http://ksit-controller.ksit-system.svc:8080".into(),
            oci_image: None,
            gateway_namespace: "istio-system".into(),
            stable_by_default_route: false,
        },
        namespace: "ksit-system".into(),
        target_namespaces: vec!["ksit-system".into()],
        kubestellar_owns_bindings: false,
        resync_seconds: 5,
        member_timeout_seconds: 5,
        hub_timeout_seconds: 30,
        identity: Some("ksit-e2e".into()),
        lease_seconds: 5,
    };
    let controller = tokio::spawn(run_async(args.clone()));
    let wp = json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin", "metadata": {"name": "ksit-default-myapp", "namespace": "istio-system"}});
    let weight = |o: &Option<DynamicObject>| {
        o.as_ref().and_then(|o| {
            o.data
                .pointer("/spec/pluginConfig/http/0/route/1/weight")
                .and_then(Value::as_i64)
        })
    };
    until("the WasmPlugin lands", Duration::from_secs(30), || async {
        c.get(&wp).await.is_some()
    })
    .await;

    let mut tp = example("trafficpolicy.yaml").remove(0);
    tp["spec"]["http"][0]["route"][0]["weight"] = json!(80);
    tp["spec"]["http"][0]["route"][1]["weight"] = json!(20);
    c.apply(tp.clone()).await;
    until(
        "the new weight within 2 s",
        Duration::from_secs(2),
        || async { weight(&c.get(&wp).await) == Some(20) },
    )
    .await;

    let vs = json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "ksit-myapp", "namespace": "default"}});
    let (vs_api, _) = c.api(&vs);
    vs_api.patch("ksit-myapp", &PatchParams::apply("kubectl-edit").force(), &Patch::Apply(json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "spec": {"hosts": ["hijacked.example.com"]}}))).await.unwrap();
    until(
        "the hand edit is put back",
        Duration::from_secs(20),
        || async {
            c.get(&vs)
                .await
                .is_some_and(|o| o.data["spec"]["hosts"] == json!(["myapp.example.com"]))
        },
    )
    .await;

    // A restart writes nothing: resourceVersions stay.
    controller.abort();
    let _ = controller.await;
    tokio::time::sleep(Duration::from_secs(6)).await; // let the lease expire
    let before = (
        c.get(&wp).await.unwrap().metadata.resource_version,
        c.get(&vs).await.unwrap().metadata.resource_version,
    );
    let controller = tokio::spawn(run_async(ControllerArgs {
        identity: Some("ksit-e2e-2".into()),
        ..args
    }));
    tokio::time::sleep(Duration::from_secs(12)).await;
    let after = (
        c.get(&wp).await.unwrap().metadata.resource_version,
        c.get(&vs).await.unwrap().metadata.resource_version,
    );
    assert_eq!(
        before, after,
        "the restarted controller rewrote unchanged objects"
    );

    // Deleting the BindingPolicy prunes what ksit applied.
    let bp = example("bindingpolicy.yaml").remove(0);
    c.delete(&bp).await;
    until("pruned", Duration::from_secs(20), || async {
        c.get(&wp).await.is_none() && c.get(&vs).await.is_none()
    })
    .await;
    controller.abort();
    for d in created.iter().rev() {
        c.delete(d).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
