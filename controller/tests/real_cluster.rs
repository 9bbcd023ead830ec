//! The controller on one cluster that is both the hub and member `cluster1` (its own kubeconfig is the
//! Secret), as a user tries ksit on a single cluster: by default a real kube-apiserver started here
//! (tests/kube); with KSIT_TEST_KUBECONFIG, the cluster that kubeconfig's admin names (it must have Istio's
//! CRDs; ksit's are applied). Either way the controller runs as the ServiceAccounts of manifests/install, so
//! the cluster's authorizer holds it to that RBAC.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::real::install;
use common::*;
use ksit_kube::{ApiServer, Client};

const SETUP: &str = "ksit-e2e";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_on_one_cluster_that_is_hub_and_member() {
    let _ = env_logger::builder().is_test(true).try_init();
    // Our own API server unless the user names a cluster; kept alive until the end of the test.
    let (_server, admin_kubeconfig) = match std::env::var("KSIT_TEST_KUBECONFIG") {
        Ok(path) => (None, std::fs::read_to_string(&path).unwrap()),
        Err(_) => {
            let s = ApiServer::start("single").await.unwrap();
            let kc = s.kubeconfig(None);
            let admin = s.admin().await.unwrap();
            admin
                .apply_yaml(&ksit_kube::istio_crds_yaml().unwrap(), SETUP)
                .await
                .unwrap();
            (Some(s), kc)
        }
    };
    let c = Client::new(&admin_kubeconfig).await.unwrap();
    assert!(
        c.resource("extensions.istio.io", "wasmplugins").await.is_ok(),
        "the cluster has no Istio CRDs (extensions.istio.io WasmPlugin): install Istio's base chart first"
    );
    c.apply_yaml(&ksit_controller::resources::crds_yaml(), SETUP)
        .await
        .unwrap();
    let hub_kc = ksit_kube::service_account_kubeconfig(
        &admin_kubeconfig,
        &install("rbac.yaml"),
        "ksit-system",
        "ksit-controller",
    )
    .await
    .unwrap();
    let member_kc = ksit_kube::service_account_kubeconfig(
        &admin_kubeconfig,
        &install("member-rbac.yaml"),
        "ksit-system",
        "ksit-member",
    )
    .await
    .unwrap();
    let mut created = vec![];
    for d in [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cluster1-kubeconfig", "namespace": "ksit-system"}, "stringData": {"kubeconfig": member_kc}}),
        target(
            "cluster1",
            json!({"mesh": "enabled", "integration": "istio"}),
        ),
    ] {
        c.apply(&d, SETUP).await.unwrap();
        created.push(d);
    }
    for f in [
        "gateway.yaml",
        "virtualservice.yaml",
        "destinationrule.yaml",
        "trafficpolicy.yaml",
        "bindingpolicy.yaml",
    ] {
        for d in docs(f) {
            c.apply(&d, SETUP).await.unwrap();
            created.push(d);
        }
    }
    let dir = std::env::temp_dir().join(format!("ksit-real-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hub.kubeconfig"), &hub_kc).unwrap();
    let module = dir.join("module.wasm");
    std::fs::write(&module, b"\0asm-e2e").unwrap();
    let args = ControllerArgs {
        kubeconfig: Some(dir.join("hub.kubeconfig")),
        listen: ([127, 0, 0, 1], 0).into(),
        module: ModuleArgs {
            module,
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
        resync_seconds: 5,
        member_timeout_seconds: 5,
        hub_timeout_seconds: 30,
        identity: Some("ksit-e2e".into()),
        lease_seconds: 5,
    };
    let controller = tokio::spawn(run_async(args.clone()));
    let get = |group: &'static str, plural: &'static str, ns: &'static str, name: &'static str| {
        let c = &c;
        async move { c.get(group, plural, Some(ns), name).await.unwrap() }
    };
    let wp = || {
        get(
            "extensions.istio.io",
            "wasmplugins",
            "istio-system",
            "ksit-default-myapp",
        )
    };
    let vs = || {
        get(
            "networking.istio.io",
            "virtualservices",
            "default",
            "ksit-myapp",
        )
    };
    let weight = |o: Option<Value>| {
        o.and_then(|o| {
            o.pointer("/spec/pluginConfig/http/0/route/1/weight")
                .and_then(Value::as_i64)
        })
    };
    until("the WasmPlugin lands", Duration::from_secs(30), || async {
        wp().await.is_some()
    })
    .await;

    let mut tp = docs("trafficpolicy.yaml").remove(0);
    tp["spec"]["http"][0]["route"][0]["weight"] = json!(80);
    tp["spec"]["http"][0]["route"][1]["weight"] = json!(20);
    c.apply(&tp, SETUP).await.unwrap();
    until("the new weight", Duration::from_secs(5), || async {
        weight(wp().await) == Some(20)
    })
    .await;

    c.apply(
        &json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "ksit-myapp", "namespace": "default"},
            "spec": {"hosts": ["hijacked.example.com"]}}),
        "kubectl-edit",
    )
    .await
    .unwrap();
    until(
        "the hand edit is put back",
        Duration::from_secs(20),
        || async {
            vs().await
                .is_some_and(|o| o["spec"]["hosts"] == json!(["myapp.example.com"]))
        },
    )
    .await;

    // A restart rewrites nothing unchanged: a change only the new replica can have applied reaches the
    // WasmPlugin, and the VirtualService, which that change does not touch, keeps its resourceVersion.
    controller.abort();
    let _ = controller.await;
    let version = |o: Option<Value>| o.map(|o| o["metadata"]["resourceVersion"].clone());
    let before = version(vs().await);
    let controller = tokio::spawn(run_async(ControllerArgs {
        identity: Some("ksit-e2e-2".into()),
        ..args
    }));
    tp["spec"]["http"][0]["route"][0]["weight"] = json!(70);
    tp["spec"]["http"][0]["route"][1]["weight"] = json!(30);
    c.apply(&tp, SETUP).await.unwrap();
    until(
        "the new replica applies the next weight",
        Duration::from_secs(30),
        || async { weight(wp().await) == Some(30) },
    )
    .await;
    assert!(!controller.is_finished());
    assert_eq!(
        before,
        version(vs().await),
        "the restarted controller rewrote an unchanged VirtualService"
    );

    // Deleting the BindingPolicy prunes what ksit applied.
    c.delete(
        "control.kubestellar.io",
        "bindingpolicies",
        None,
        "istio-mesh-binding",
    )
    .await
    .unwrap();
    until("pruned", Duration::from_secs(20), || async {
        wp().await.is_none() && vs().await.is_none()
    })
    .await;
    controller.abort();
    for d in created.iter().rev() {
        let r = c
            .resource_of(
                d["apiVersion"].as_str().unwrap(),
                d["kind"].as_str().unwrap(),
            )
            .await
            .unwrap();
        let _ = c
            .raw(
                "DELETE",
                &r.path(
                    d["metadata"]["namespace"].as_str(),
                    d["metadata"]["name"].as_str(),
                ),
                None,
                None,
            )
            .await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
