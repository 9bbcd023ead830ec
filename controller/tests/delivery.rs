//! `ksit controller --deliver kubestellar` against real API servers: a hub with KubeStellar's own
//! BindingPolicy and Binding CRDs (the pinned github.com/kubestellar/kubestellar module) and two members.
//! ksit writes on the hub exactly the rendered WasmPlugin and VirtualService and a companion BindingPolicy,
//! and never calls a member. KubeStellar itself cannot run here (it needs OCM's hub and agents), so a stand-in
//! does what its controller and transport do: resolve the companion into a Binding, copy the objects it
//! selects to the members verbatim, and report the BindingPolicy ready. The TrafficPolicy's status follows
//! what KubeStellar reports, and says so while it reports nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::real::*;
use common::*;
use ksit_controller::controller::Delivery;

const COMPANION: &str = "ksit-istio-mesh-binding";
const BINDING_LABEL: &str = "delivery.ksit.io/istio-mesh-binding";

/// The objects on the hub that ksit wrote for KubeStellar, as (kind, namespace/name).
async fn delivered(env: &Env) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (group, plural) in [
        ("extensions.istio.io", "wasmplugins"),
        ("networking.istio.io", "virtualservices"),
        ("control.kubestellar.io", "bindingpolicies"),
    ] {
        for o in env.hub_admin.list(group, plural).await.unwrap() {
            if o.pointer("/metadata/labels/ksit.io~1delivery") == Some(&json!("kubestellar")) {
                let ns = o["metadata"]["namespace"].as_str().unwrap_or("");
                out.push((
                    o["kind"].as_str().unwrap_or(plural).to_string(),
                    format!("{ns}/{}", o["metadata"]["name"].as_str().unwrap()),
                ));
            }
        }
    }
    out.sort();
    out
}

/// What KubeStellar's controller and transport would do with the companion: the clusters its selectors
/// pick (IntegrationTarget labels stand for the inventory), a Binding listing them, the selected objects
/// copied to each member as they are on the hub (metadata reduced to name, namespace, labels, annotations),
/// and the BindingPolicy's status conditions.
async fn kubestellar_stand_in(env: &Env) {
    let bp = env
        .hub_object("control.kubestellar.io", "bindingpolicies", None, COMPANION)
        .await
        .unwrap();
    let targets = env
        .hub_admin
        .list("ksit.io", "integrationtargets")
        .await
        .unwrap();
    let selected: Vec<String> = targets
        .iter()
        .filter(|t| {
            bp["spec"]["clusterSelectors"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| {
                    s["matchLabels"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .all(|(k, v)| t["spec"]["labels"][k] == *v)
                })
        })
        .map(|t| t["spec"]["clusterName"].as_str().unwrap().to_string())
        .collect();
    let mut objects = Vec::new();
    for clause in bp["spec"]["downsync"].as_array().unwrap() {
        let group = clause["apiGroup"].as_str().unwrap();
        for plural in clause["resources"].as_array().unwrap() {
            for o in env
                .hub_admin
                .list(group, plural.as_str().unwrap())
                .await
                .unwrap()
            {
                let wanted = clause["objectSelectors"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| {
                        s["matchLabels"]
                            .as_object()
                            .unwrap()
                            .iter()
                            .all(|(k, v)| o["metadata"]["labels"][k] == *v)
                    });
                if wanted {
                    objects.push(o);
                }
            }
        }
    }
    let workload: Vec<Value> = objects
        .iter()
        .map(|o| json!({"group": o["apiVersion"].as_str().unwrap().split('/').next(), "version": "v1", "resource": "x",
            "namespace": o["metadata"]["namespace"], "name": o["metadata"]["name"], "resourceVersion": o["metadata"]["resourceVersion"]}))
        .collect();
    env.hub_admin
        .apply(
            &json!({"apiVersion": "control.kubestellar.io/v1alpha1", "kind": "Binding", "metadata": {"name": COMPANION},
                "spec": {"workload": {"namespaceScope": workload},
                         "destinations": selected.iter().map(|c| json!({"clusterId": c})).collect::<Vec<_>>()}}),
            "kubestellar",
        )
        .await
        .unwrap();
    for cluster in &selected {
        let m = env.member(cluster);
        for o in &objects {
            let copy = json!({"apiVersion": o["apiVersion"], "kind": o["kind"],
                "metadata": {"name": o["metadata"]["name"], "namespace": o["metadata"]["namespace"],
                             "labels": o["metadata"]["labels"], "annotations": o["metadata"]["annotations"]},
                "spec": o["spec"]});
            m.admin.apply(&copy, "kubestellar-transport").await.unwrap();
        }
    }
    env.hub_admin
        .apply_status(
            &json!({"apiVersion": "control.kubestellar.io/v1alpha1", "kind": "BindingPolicy", "metadata": {"name": COMPANION},
                "status": {"observedGeneration": bp["metadata"]["generation"], "conditions": [
                    {"type": "Synced", "status": "True", "reason": "ReconcileSuccess", "message": "", "lastTransitionTime": "2026-12-05T00:00:00Z"},
                    {"type": "Ready", "status": "True", "reason": "ReconcileSuccess", "message": "", "lastTransitionTime": "2026-12-05T00:00:00Z"}]}}),
            "kubestellar",
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubestellar_delivers_one_set_that_ksit_writes_on_the_hub() {
    let env = Env::start_for_kubestellar().await;
    let mut args = env.args("replica-a");
    args.deliver = Delivery::Kubestellar;
    let controller = tokio::spawn(run_async(args));

    // Exactly the rendered WasmPlugin and VirtualService, and one companion BindingPolicy.
    until(
        "ksit's objects on the hub",
        Duration::from_secs(30),
        || async {
            delivered(&env).await
                == [
                    ("BindingPolicy".to_string(), format!("/{COMPANION}")),
                    (
                        "VirtualService".to_string(),
                        "default/ksit-myapp".to_string(),
                    ),
                    (
                        "WasmPlugin".to_string(),
                        "istio-system/ksit-default-myapp".to_string(),
                    ),
                ]
        },
    )
    .await;
    let user = env.binding_policy().await.unwrap();
    let companion = env
        .hub_object("control.kubestellar.io", "bindingpolicies", None, COMPANION)
        .await
        .unwrap();
    assert_eq!(
        companion["spec"]["clusterSelectors"],
        user["spec"]["clusterSelectors"]
    );
    let wp = env
        .hub_object(
            "extensions.istio.io",
            "wasmplugins",
            Some("istio-system"),
            "ksit-default-myapp",
        )
        .await
        .unwrap();
    assert_eq!(wp["metadata"]["labels"][BINDING_LABEL], "true");
    assert!(
        wp["spec"]["pluginConfig"].get("cluster").is_none(),
        "one config for every cluster"
    );
    ksit_policy::Engine::from_json(wp["spec"]["pluginConfig"].to_string().as_bytes(), None)
        .unwrap();

    // Until KubeStellar reports, the TrafficPolicy says so plainly.
    until(
        "status waits for KubeStellar",
        Duration::from_secs(10),
        || async {
            let tp = env.traffic_policy("myapp").await;
            status(&tp, "/status/conditions/0/message")
                .and_then(Value::as_str)
                .is_some_and(|m| {
                    m.contains(
                        "KubeStellar has not reported on BindingPolicy ksit-istio-mesh-binding",
                    )
                })
                && status(&tp, "/status/readyClusters") == Some(&json!(0))
        },
    )
    .await;

    kubestellar_stand_in(&env).await;
    until(
        "status from KubeStellar's report",
        Duration::from_secs(10),
        || async {
            let tp = env.traffic_policy("myapp").await;
            status(&tp, "/status/readyClusters") == Some(&json!(2))
                && status(&tp, "/status/conditions/0/status") == Some(&json!("True"))
        },
    )
    .await;
    // The members hold what the hub holds, byte for byte in spec; ksit never called them.
    for m in &env.members {
        assert_eq!(
            m.wasm_plugin().await.unwrap()["spec"],
            wp["spec"],
            "{}",
            m.name
        );
        assert!(m.virtual_service("ksit-myapp").await.is_some());
        assert!(
            env.member_calls(m.name).is_empty(),
            "ksit called {}",
            m.name
        );
    }

    // A change re-renders the hub's objects; unbinding every cluster's TrafficPolicy deletes ksit's.
    env.set_canary_weight(20).await;
    until(
        "the new weight on the hub",
        Duration::from_secs(10),
        || async {
            env.hub_object(
                "extensions.istio.io",
                "wasmplugins",
                Some("istio-system"),
                "ksit-default-myapp",
            )
            .await
            .and_then(|w| {
                w.pointer("/spec/pluginConfig/http/0/route/1/weight")
                    .cloned()
            }) == Some(json!(20))
        },
    )
    .await;
    assert!(env
        .hub_admin
        .delete(
            "control.kubestellar.io",
            "bindingpolicies",
            None,
            "istio-mesh-binding"
        )
        .await
        .unwrap());
    until(
        "ksit's hub objects deleted",
        Duration::from_secs(10),
        || async { delivered(&env).await.is_empty() },
    )
    .await;
    // The hub's own objects (the example's Istio objects) are untouched.
    assert!(env
        .hub_object(
            "networking.istio.io",
            "virtualservices",
            Some("default"),
            "multi-cluster-virtualservice"
        )
        .await
        .is_some());
    controller.abort();
    env.assert_least_privilege_held_on_hub();
}
