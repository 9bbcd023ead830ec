//! The controller end to end against real Kubernetes API servers (kube-apiserver v1.37.2 and etcd, built from
//! the pinned Go modules by tests/kube): a hub and two members, the corrected KSIT example on the hub,
//! cluster3 unbound and unreachable. Each test checks one behaviour in a world of its own, and ends by
//! checking that the real authorizer refused none of the controller's calls under the RBAC of
//! manifests/install (least privilege).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::real::*;
use common::*;

const SYNC: Duration = Duration::from_secs(30);

async fn synced(env: &Env) {
    until(
        "WasmPlugin and routes on cluster1 and cluster2",
        SYNC,
        || async {
            for m in [env.member("cluster1"), env.member("cluster2")] {
                if m.wasm_plugin().await.is_none()
                    || m.virtual_service("ksit-myapp").await.is_none()
                {
                    return false;
                }
            }
            true
        },
    )
    .await;
}

/// `live` restricted to the keys present in `shape` (recursively for maps).
fn project(live: &Value, shape: &Value) -> Value {
    match (live, shape) {
        (Value::Object(l), Value::Object(s)) => Value::Object(
            s.keys()
                .filter_map(|k| Some((k.clone(), project(l.get(k)?, &s[k]))))
                .collect(),
        ),
        (l, _) => l.clone(),
    }
}

/// Numbers as JSON means them: the API server writes 5.0 back as 5.
fn numbers_as_json(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), numbers_as_json(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(numbers_as_json).collect()),
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9e15 => json!(f as i64),
            _ => v.clone(),
        },
        _ => v.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_clusters_hold_exactly_what_ksit_render_produces() {
    let env = Env::start().await;
    let controller = tokio::spawn(run_async(env.args("replica-a")));
    synced(&env).await;
    let (c1, c2) = (env.member("cluster1"), env.member("cluster2"));

    // One WasmPlugin for every cluster: each proxy's filter picks its cluster's overrides by CLUSTER_ID.
    let wp = c1.wasm_plugin().await.unwrap();
    assert_eq!(wp["spec"], c2.wasm_plugin().await.unwrap()["spec"]);
    assert!(wp["spec"]["pluginConfig"].get("cluster").is_none());
    assert!(wp["spec"]["url"].as_str().unwrap().ends_with(&format!(
        "/modules/{}.wasm",
        wp["spec"]["sha256"].as_str().unwrap()
    )));
    assert_eq!(
        wp["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "ksit"
    );
    assert_eq!(
        wp["metadata"]["annotations"]["ksit.io/binding"],
        "istio-mesh-binding"
    );
    // The filter accepts what the real server stored (after its defaulting and pruning).
    ksit_policy::Engine::from_json(wp["spec"]["pluginConfig"].to_string().as_bytes(), None)
        .unwrap();

    // `ksit render` produces the same objects, field for field, as what cluster1 holds.
    let docs = ksit_controller::manifests::read_documents(&[example_dir()]).unwrap();
    let mut hub_model = ksit_controller::manifests::hub_from_documents(&docs).unwrap();
    hub_model.clusters.push(ksit_controller::desired::Cluster {
        name: "cluster3".into(),
        labels: [("mesh".to_string(), "disabled".to_string())].into(),
    });
    let (_, settings) = env.args("x").module.settings().unwrap();
    let rendered = ksit_controller::desired::compute(&hub_model, &settings);
    let objects = &rendered.clusters["cluster1"].objects;
    assert!(objects.len() >= 6, "{objects:?}");
    for o in objects.iter().filter(|o| o.kind.kind != "Namespace") {
        let live = c1
            .object(
                &o.kind.group,
                &o.kind.plural,
                o.namespace.as_deref(),
                &o.name,
            )
            .await
            .unwrap_or_else(|| panic!("{} missing", o.key()));
        assert_eq!(
            serde_yaml::to_string(&numbers_as_json(&project(&live, &o.manifest))).unwrap(),
            serde_yaml::to_string(&numbers_as_json(&o.manifest)).unwrap(),
            "{} differs from ksit render",
            o.key()
        );
    }
    // The distributed Istio objects are there too; cluster3 is bound to nothing.
    assert!(c1
        .virtual_service("multi-cluster-virtualservice")
        .await
        .is_some());
    assert!(c1
        .object(
            "networking.istio.io",
            "gateways",
            Some("istio-system"),
            "multi-cluster-gateway"
        )
        .await
        .is_some());
    assert!(rendered.clusters["cluster3"].objects.is_empty());
    controller.abort();
    env.assert_least_privilege_held();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_on_the_hub_reports_each_cluster() {
    let env = Env::start().await;
    let controller = tokio::spawn(run_async(env.args("replica-a")));
    synced(&env).await;
    let c2 = env.member("cluster2");

    // The object cluster2 already had, not made by ksit, is untouched, and the conflict is reported.
    let theirs = c2
        .object(
            "networking.istio.io",
            "destinationrules",
            Some("default"),
            "multi-cluster-destination-rule",
        )
        .await
        .unwrap();
    assert_eq!(theirs["spec"]["host"], "theirs.example.com");
    until(
        "conflict reported for cluster2",
        Duration::from_secs(10),
        || async {
            let bp = env.binding_policy().await;
            status(&bp, "/status/clusters")
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c["name"] == "cluster2"
                            && c["errors"].to_string().contains("not managed by ksit")
                    })
                })
        },
    )
    .await;
    until(
        "TrafficPolicy applied in 2 clusters",
        Duration::from_secs(10),
        || async {
            let tp = env.traffic_policy("myapp").await;
            status(&tp, "/status/readyClusters") == Some(&json!(2))
                && status(&tp, "/status/conditions/0/status") == Some(&json!("True"))
        },
    )
    .await;
    until(
        "cluster1's IntegrationTarget ready",
        Duration::from_secs(10),
        || async {
            status(&env.integration_target("cluster1").await, "/status/ready") == Some(&json!(true))
        },
    )
    .await;
    // cluster2 has istiod but no ingress gateway: the Integration says so per cluster.
    until(
        "Integration reports Istio health per cluster",
        Duration::from_secs(10),
        || async {
            let i = env
                .hub_object(
                    "ksit.io",
                    "integrations",
                    Some("istio-system"),
                    "istio-multi-cluster-mesh",
                )
                .await;
            status(&i, "/status/clusterStatuses")
                .and_then(Value::as_array)
                .is_some_and(|c| c.len() == 2)
                && status(&i, "/status/phase") == Some(&json!("Degraded"))
        },
    )
    .await;
    // Status is written through the status subresource: the objects' generation is unchanged.
    let tp = env.traffic_policy("myapp").await.unwrap();
    assert_eq!(tp["metadata"]["generation"], 1);
    controller.abort();
    env.assert_least_privilege_held();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_edit_reaches_both_clusters_with_one_write_each() {
    let env = Env::start().await;
    let controller = tokio::spawn(run_async(env.args("replica-a")));
    synced(&env).await;
    let (c1, c2) = (env.member("cluster1"), env.member("cluster2"));
    until("status settled", Duration::from_secs(10), || async {
        status(&env.traffic_policy("myapp").await, "/status/readyClusters") == Some(&json!(2))
    })
    .await;
    let before = (
        env.member_writes("cluster1").len(),
        env.member_writes("cluster2").len(),
    );
    env.set_canary_weight(25).await;
    let t = Instant::now();
    until(
        "new pluginConfig on both clusters",
        Duration::from_secs(5),
        || async { c1.canary_weight().await == Some(25) && c2.canary_weight().await == Some(25) },
    )
    .await;
    eprintln!(
        "TrafficPolicy change propagated to 2 real clusters in {:?}",
        t.elapsed()
    );
    // One change of one rendered object: one write on each cluster, the WasmPlugin's.
    until("the writes are audited", Duration::from_secs(5), || async {
        env.member_writes("cluster1").len() > before.0
            && env.member_writes("cluster2").len() > before.1
    })
    .await;
    // The next pass on each cluster (a resync, seen in their audit logs) finds nothing to write.
    let resync = Duration::from_secs(env.args("x").resync_seconds);
    let seen = (
        env.member_calls("cluster1").len(),
        env.member_calls("cluster2").len(),
    );
    until(
        "a resync of both clusters after the change",
        resync * 3,
        || async {
            env.member_calls("cluster1").len() > seen.0 + 2
                && env.member_calls("cluster2").len() > seen.1 + 2
        },
    )
    .await;
    for (name, n) in [("cluster1", before.0), ("cluster2", before.1)] {
        let writes: Vec<_> = env.member_writes(name).into_iter().skip(n).collect();
        assert_eq!(
            writes
                .iter()
                .map(|w| (w.verb.as_str(), w.resource.as_str()))
                .collect::<Vec<_>>(),
            [("patch", "wasmplugins")],
            "{name}: {writes:#?}"
        );
    }
    controller.abort();
    env.assert_least_privilege_held();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_repaired_and_stale_ksit_objects_are_pruned() {
    let env = Env::start().await;
    let controller = tokio::spawn(run_async(env.args("replica-a")));
    synced(&env).await;
    let c1 = env.member("cluster1");

    // A hand edit of a managed object is put back.
    c1.admin
        .apply(
            &json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"name": "ksit-myapp", "namespace": "default"},
                "spec": {"hosts": ["hijacked.example.com"]}}),
            "kubectl-edit",
        )
        .await
        .unwrap();
    until("hand edit reverted", Duration::from_secs(10), || async {
        c1.virtual_service("ksit-myapp").await.unwrap()["spec"]["hosts"]
            == json!(["myapp.example.com"])
    })
    .await;

    // A ksit-owned object of a kind ksit sends nothing of here (so it does not watch it) is still found and
    // pruned by the next resync's full look (e.g. one restored from a backup).
    c1.admin
        .apply(
            &json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
                "metadata": {"name": "restored", "namespace": "default",
                    "labels": {"app.kubernetes.io/managed-by": "ksit"}},
                "spec": {"hosts": ["restored.example.com"], "resolution": "DNS"}}),
            "ksit-controller",
        )
        .await
        .unwrap();
    until(
        "a stale ksit ServiceEntry pruned within a resync",
        Duration::from_secs(10),
        || async {
            c1.object(
                "networking.istio.io",
                "serviceentries",
                Some("default"),
                "restored",
            )
            .await
            .is_none()
        },
    )
    .await;
    controller.abort();
    env.assert_least_privilege_held();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_on_one_gateway_share_one_wasm_plugin_and_host_conflicts_are_reported() {
    let env = Env::start().await;
    let controller = tokio::spawn(run_async(env.args("replica-a")));
    synced(&env).await;
    // A second TrafficPolicy on the same gateway joins the same WasmPlugin (one filter invocation per
    // request); one that claims a host the older policy holds is left out, with the reason in its status.
    for (name, host) in [
        ("orders", "orders.example.com"),
        ("shadow", "myapp.example.com"),
    ] {
        env.hub_admin
            .apply(
                &json!({"apiVersion": "ksit.io/v1alpha1", "kind": "TrafficPolicy",
                    "metadata": {"name": name, "namespace": "default"},
                    "spec": {"selector": {"matchLabels": {"istio": "ingressgateway"}}, "hosts": [host],
                        "http": [{"name": "all", "route": [{"destination": {"host": "web-service", "port": {"number": 80}}}]}]}}),
                "kubectl",
            )
            .await
            .unwrap();
    }
    let merged_names = |w: Option<Value>| -> Vec<String> {
        w.and_then(|w| {
            w.pointer("/spec/pluginConfig/policies")
                .and_then(Value::as_array)
                .map(|l| {
                    l.iter()
                        .filter_map(|p| p["name"].as_str().map(String::from))
                        .collect()
                })
        })
        .unwrap_or_default()
    };
    until(
        "orders merged into the gateway's WasmPlugin on both clusters",
        Duration::from_secs(10),
        || async {
            for m in &env.members {
                if merged_names(m.wasm_plugin().await) != ["default/myapp", "default/orders"]
                    || m.virtual_service("ksit-orders").await.is_none()
                {
                    return false;
                }
            }
            true
        },
    )
    .await;
    let c1 = env.member("cluster1");
    let wp = c1.wasm_plugin().await.unwrap();
    ksit_policy::Engine::from_json(wp["spec"]["pluginConfig"].to_string().as_bytes(), None)
        .unwrap();
    for m in &env.members {
        let names: Vec<Value> = m
            .objects("extensions.istio.io", "wasmplugins")
            .await
            .iter()
            .map(|w| w["metadata"]["name"].clone())
            .collect();
        assert_eq!(
            names,
            [json!("ksit-default-myapp")],
            "one plugin per gateway"
        );
        assert!(m.virtual_service("ksit-shadow").await.is_none());
    }
    until(
        "shadow reported as a host conflict",
        Duration::from_secs(10),
        || async {
            let shadow = env.traffic_policy("shadow").await;
            let orders = env.traffic_policy("orders").await;
            status(&shadow, "/status/conditions/0/reason") == Some(&json!("HostConflict"))
                && status(&shadow, "/status/conditions/0/message")
                    .and_then(Value::as_str)
                    .is_some_and(|m| m.contains("default/myapp"))
                && status(&orders, "/status/readyClusters") == Some(&json!(2))
        },
    )
    .await;
    for name in ["orders", "shadow"] {
        assert!(env
            .hub_admin
            .delete("ksit.io", "trafficpolicies", Some("default"), name)
            .await
            .unwrap());
    }
    until(
        "the plugin is back to the single-policy form",
        Duration::from_secs(10),
        || async {
            for m in &env.members {
                if m.canary_weight().await != Some(10)
                    || m.virtual_service("ksit-orders").await.is_some()
                {
                    return false;
                }
            }
            true
        },
    )
    .await;
    controller.abort();
    env.assert_least_privilege_held();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_is_down_gets_its_own_status_while_the_other_converges() {
    let mut env = Env::start().await;
    let controller = tokio::spawn(run_async(env.args("replica-a")));
    synced(&env).await;
    env.member_mut("cluster1").server.stop_apiserver();
    env.set_canary_weight(30).await;
    until(
        "cluster2 converges while cluster1 is down",
        Duration::from_secs(10),
        || async { env.member("cluster2").canary_weight().await == Some(30) },
    )
    .await;
    until(
        "cluster1 reported unreachable",
        Duration::from_secs(15),
        || async {
            status(&env.integration_target("cluster1").await, "/status/ready")
                == Some(&json!(false))
        },
    )
    .await;
    let it = env.integration_target("cluster1").await;
    assert_ne!(
        status(&it, "/status/conditions/0/reason"),
        Some(&json!("Connected"))
    );
    let tp = env.traffic_policy("myapp").await;
    assert_ne!(
        status(&tp, "/status/readyClusters"),
        Some(&json!(2)),
        "{tp:?}"
    );

    env.member_mut("cluster1").server.resume().await.unwrap();
    until("cluster1 catches up", Duration::from_secs(40), || async {
        env.member("cluster1").canary_weight().await == Some(30)
    })
    .await;
    until(
        "cluster1 reported ready again",
        Duration::from_secs(15),
        || async {
            status(&env.integration_target("cluster1").await, "/status/ready") == Some(&json!(true))
        },
    )
    .await;
    controller.abort();
    env.assert_least_privilege_held();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_writes_nothing_when_nothing_changed() {
    let env = Env::start().await;
    let first = tokio::spawn(run_async(env.args("replica-a")));
    synced(&env).await;
    until("status settled", Duration::from_secs(10), || async {
        status(&env.traffic_policy("myapp").await, "/status/readyClusters") == Some(&json!(2))
    })
    .await;
    first.abort();
    let _ = first.await;
    let writes = (
        env.member_writes("cluster1").len(),
        env.member_writes("cluster2").len(),
    );
    let reads = (
        env.member_calls("cluster1").len(),
        env.member_calls("cluster2").len(),
    );
    let second = tokio::spawn(run_async(env.args("replica-b")));
    // The new replica takes the Lease once the old one's expires and looks at both clusters; then a later
    // resync looks again, so whatever the first passes wrote is in the audit logs by then.
    until(
        "the restarted controller read both clusters",
        Duration::from_secs(30),
        || async {
            let lease = env
                .hub_object(
                    "coordination.k8s.io",
                    "leases",
                    Some("ksit-system"),
                    "ksit-controller",
                )
                .await;
            status(&lease, "/spec/holderIdentity") == Some(&json!("replica-b"))
                && env.member_calls("cluster1").len() > reads.0 + 4
                && env.member_calls("cluster2").len() > reads.1 + 4
        },
    )
    .await;
    let seen = (
        env.member_calls("cluster1").len(),
        env.member_calls("cluster2").len(),
    );
    let resync = Duration::from_secs(env.args("x").resync_seconds);
    until(
        "a resync of both clusters after that",
        resync * 3,
        || async {
            env.member_calls("cluster1").len() > seen.0 + 2
                && env.member_calls("cluster2").len() > seen.1 + 2
        },
    )
    .await;
    assert!(!second.is_finished(), "the restarted controller stopped");
    for (name, n) in [("cluster1", writes.0), ("cluster2", writes.1)] {
        let new: Vec<_> = env.member_writes(name).into_iter().skip(n).collect();
        assert!(
            new.is_empty(),
            "{name} got writes after a restart with nothing to change: {new:#?}"
        );
    }
    second.abort();
    env.assert_least_privilege_held();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbinding_a_cluster_prunes_only_what_ksit_put_there() {
    let env = Env::start().await;
    let controller = tokio::spawn(run_async(env.args("replica-a")));
    synced(&env).await;
    let c2 = env.member("cluster2");
    env.hub_admin
        .apply(&target("cluster2", json!({"mesh": "disabled"})), "kubectl")
        .await
        .unwrap();
    until("cluster2 pruned", Duration::from_secs(10), || async {
        c2.wasm_plugin().await.is_none() && c2.virtual_service("ksit-myapp").await.is_none()
    })
    .await;
    assert!(
        c2.object(
            "networking.istio.io",
            "destinationrules",
            Some("default"),
            "multi-cluster-destination-rule"
        )
        .await
        .is_some(),
        "unowned object deleted"
    );
    assert!(
        env.member("cluster1").wasm_plugin().await.is_some(),
        "cluster1 is still bound"
    );
    controller.abort();
    env.assert_least_privilege_held();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_binding_prunes_everywhere_but_namespaces() {
    let env = Env::start().await;
    let controller = tokio::spawn(run_async(env.args("replica-a")));
    synced(&env).await;
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
    until("both clusters pruned", Duration::from_secs(10), || async {
        for m in &env.members {
            let owned = |objs: Vec<Value>| {
                objs.iter()
                    .filter(|o| {
                        o.pointer("/metadata/labels/app.kubernetes.io~1managed-by")
                            == Some(&json!("ksit"))
                    })
                    .count()
            };
            for (g, p) in [
                ("extensions.istio.io", "wasmplugins"),
                ("networking.istio.io", "virtualservices"),
                ("networking.istio.io", "destinationrules"),
                ("networking.istio.io", "gateways"),
            ] {
                if owned(m.objects(g, p).await) > 0 {
                    return false;
                }
            }
        }
        true
    })
    .await;
    let c1 = env.member("cluster1");
    assert!(
        c1.object("", "namespaces", None, "istio-system")
            .await
            .is_some(),
        "namespaces are never pruned"
    );
    controller.abort();
    env.assert_least_privilege_held();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_writer_and_the_other_takes_over() {
    let env = Env::start().await;
    let a = tokio::spawn(run_async(env.args("replica-a")));
    let b = tokio::spawn(run_async(env.args("replica-b")));
    synced(&env).await;
    until("status settled", Duration::from_secs(10), || async {
        status(&env.traffic_policy("myapp").await, "/status/readyClusters") == Some(&json!(2))
    })
    .await;
    let lease = env
        .hub_object(
            "coordination.k8s.io",
            "leases",
            Some("ksit-system"),
            "ksit-controller",
        )
        .await
        .unwrap();
    let leader = lease["spec"]["holderIdentity"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(leader == "replica-a" || leader == "replica-b");

    // Only the Lease holder writes: one change to the policy is one write per cluster, not two.
    let before = (
        env.member_writes("cluster1").len(),
        env.member_writes("cluster2").len(),
    );
    env.set_canary_weight(40).await;
    until(
        "new weight on cluster1 and cluster2",
        Duration::from_secs(5),
        || async {
            env.member("cluster1").canary_weight().await == Some(40)
                && env.member("cluster2").canary_weight().await == Some(40)
        },
    )
    .await;
    let reads = (
        env.member_calls("cluster1").len(),
        env.member_calls("cluster2").len(),
    );
    until(
        "a resync of both clusters after the change",
        Duration::from_secs(15),
        || async {
            env.member_calls("cluster1").len() > reads.0 + 4
                && env.member_calls("cluster2").len() > reads.1 + 4
        },
    )
    .await;
    for (name, n) in [("cluster1", before.0), ("cluster2", before.1)] {
        let new: Vec<_> = env.member_writes(name).into_iter().skip(n).collect();
        assert_eq!(new.len(), 1, "{name}: {new:#?}");
    }

    // The leader goes away: the other replica takes over within the lease duration and keeps going.
    let (gone, stays) = if leader == "replica-a" {
        (a, b)
    } else {
        (b, a)
    };
    gone.abort();
    let _ = gone.await;
    env.set_canary_weight(45).await;
    until(
        "the other replica applies the change",
        Duration::from_secs(15),
        || async {
            env.member("cluster1").canary_weight().await == Some(45)
                && env.member("cluster2").canary_weight().await == Some(45)
        },
    )
    .await;
    let lease = env
        .hub_object(
            "coordination.k8s.io",
            "leases",
            Some("ksit-system"),
            "ksit-controller",
        )
        .await;
    assert_ne!(
        status(&lease, "/spec/holderIdentity").and_then(Value::as_str),
        Some(leader.as_str())
    );
    stays.abort();
    env.assert_least_privilege_held();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_without_istio_is_reported_and_the_other_still_syncs() {
    let env = Env::start_with(&[
        CLUSTER1,
        MemberSpec {
            name: "cluster2",
            istio: false,
            gateway: false,
        },
    ])
    .await;
    let controller = tokio::spawn(run_async(env.args("replica-a")));
    until("cluster1 synced", SYNC, || async {
        env.member("cluster1").wasm_plugin().await.is_some()
    })
    .await;
    until(
        "cluster2's missing Istio reported",
        Duration::from_secs(15),
        || async {
            let bp = env.binding_policy().await;
            status(&bp, "/status/clusters")
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c["name"] == "cluster2"
                            && c["errors"].to_string().contains("is Istio installed?")
                    })
                })
                && status(&bp, "/status/conditions/0/reason") == Some(&json!("SyncFailed"))
        },
    )
    .await;
    until(
        "cluster2 reachable (only Istio is missing)",
        Duration::from_secs(10),
        || async {
            status(&env.integration_target("cluster2").await, "/status/ready") == Some(&json!(true))
        },
    )
    .await;
    until(
        "a Warning event for the binding",
        Duration::from_secs(10),
        || async {
            env.hub_admin
                .list("events.k8s.io", "events")
                .await
                .unwrap()
                .iter()
                .any(|e| {
                    e["reason"] == "SyncFailed"
                        && e["regarding"]["name"] == "istio-mesh-binding"
                        && e["note"].to_string().contains("cluster2")
                })
        },
    )
    .await;
    // No Secret content ever reaches events.
    for e in env.hub_admin.list("events.k8s.io", "events").await.unwrap() {
        let text = e.to_string();
        assert!(
            !text.contains("certificate-authority-data") && !text.contains("token:"),
            "{e}"
        );
    }
    controller.abort();
    env.assert_least_privilege_held();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_kubestellar_owns_bindings_ksit_only_renders_traffic_policies() {
    let env = Env::start().await;
    let mut a = env.args("ks");
    a.kubestellar_owns_bindings = true;
    let controller = tokio::spawn(run_async(a));
    synced(&env).await;
    let c1 = env.member("cluster1");
    until(
        "TrafficPolicy status written",
        Duration::from_secs(10),
        || async {
            status(&env.traffic_policy("myapp").await, "/status/readyClusters") == Some(&json!(2))
        },
    )
    .await;
    // KubeStellar copies the Istio objects: ksit does not, and it writes no status on the bindings.
    assert!(c1
        .virtual_service("multi-cluster-virtualservice")
        .await
        .is_none());
    assert!(c1
        .objects("networking.istio.io", "gateways")
        .await
        .is_empty());
    let bp = env.binding_policy().await.unwrap();
    assert!(
        bp.get("status")
            .is_none_or(|s| s.as_object().is_some_and(|o| o.is_empty())),
        "{bp}"
    );
    assert!(
        !env.controller_calls()
            .iter()
            .any(|(c, e)| c == "hub" && e.resource == "bindingpolicies" && e.is_write()),
        "ksit wrote to a BindingPolicy"
    );
    controller.abort();
    env.assert_least_privilege_held();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_cluster_id_the_hub_does_not_map_is_reported_until_annotated() {
    let env = Env::start().await;
    // cluster1's istiod gives its proxies Istio's default cluster ID, and the policy overrides cluster1.
    env.member("cluster1")
        .set_istiod_cluster_id("Kubernetes")
        .await;
    let mut tp = docs("trafficpolicy.yaml").remove(0);
    tp["spec"]["overrides"] = json!([{"clusters": ["cluster1"], "http": [{"name": "api", "route": [
        {"destination": {"host": "api-service-v1", "port": {"number": 8080}}, "weight": 50},
        {"destination": {"host": "api-service-v2", "port": {"number": 8080}}, "weight": 50}]}]}]);
    env.hub_admin.apply(&tp, "kubectl").await.unwrap();
    let controller = tokio::spawn(run_async(env.args("replica-a")));
    synced(&env).await;
    let cluster1_error = || async {
        let tp = env.traffic_policy("myapp").await;
        status(&tp, "/status/clusters")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["name"] == "cluster1").cloned())
            .and_then(|c| c["error"].as_str().map(String::from))
    };
    until(
        "the mismatch reported on cluster1",
        Duration::from_secs(15),
        || async {
            cluster1_error().await.is_some_and(|e| {
                e.contains("CLUSTER_ID Kubernetes, not cluster1")
                    && e.contains("ksit.io/istio-cluster-id")
            })
        },
    )
    .await;
    // Annotated: the shared pluginConfig maps Kubernetes to cluster1, and the error goes.
    let mut it = docs("integrationtargets.yaml")
        .into_iter()
        .find(|t| t["spec"]["clusterName"] == "cluster1")
        .unwrap();
    it["metadata"]["annotations"] = json!({"ksit.io/istio-cluster-id": "Kubernetes"});
    env.hub_admin.apply(&it, "kubectl").await.unwrap();
    until(
        "clusterIds rendered and the status clear",
        Duration::from_secs(15),
        || async {
            let ids = env
                .member("cluster2")
                .wasm_plugin()
                .await
                .and_then(|w| w.pointer("/spec/pluginConfig/clusterIds").cloned());
            ids == Some(json!({"Kubernetes": "cluster1"}))
                && cluster1_error().await.is_none()
                && status(&env.traffic_policy("myapp").await, "/status/readyClusters")
                    == Some(&json!(2))
        },
    )
    .await;
    controller.abort();
    env.assert_least_privilege_held();
}
