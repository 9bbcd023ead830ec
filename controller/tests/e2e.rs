//! The controller end to end against Kubernetes API emulators: one hub and three members, the seed example
//! (corrected) applied on the hub. Skips with a message when ../shared/schemas (the Istio CRDs) is absent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_binds_renders_applies_prunes_and_reports() {
    let _ = env_logger::builder().is_test(true).try_init();
    let Some(s) = setup(true).await else { return };
    let (c1, c2, c3) = (&s.members[0], &s.members[1], &s.members[2]);
    let controller = tokio::spawn(run_async(args(&s, "replica-a")));

    // Objects and the WasmPlugin land on exactly the two labelled clusters.
    wait_for(
        "WasmPlugin and routes on cluster1 and cluster2",
        Duration::from_secs(15),
        || {
            [c1, c2].iter().all(|m| {
                wasm_plugin(m).is_some()
                    && m.object(
                        "networking.istio.io",
                        "virtualservices",
                        Some("default"),
                        "ksit-myapp",
                    )
                    .is_some()
                    && m.object(
                        "networking.istio.io",
                        "virtualservices",
                        Some("default"),
                        "multi-cluster-virtualservice",
                    )
                    .is_some()
                    && m.object(
                        "networking.istio.io",
                        "gateways",
                        Some("istio-system"),
                        "multi-cluster-gateway",
                    )
                    .is_some()
            })
        },
    )
    .await;
    assert!(
        wasm_plugin(c3).is_none()
            && c3
                .objects("networking.istio.io", "virtualservices")
                .is_empty(),
        "cluster3 is not labelled"
    );
    let wp = wasm_plugin(c1).unwrap();
    assert_eq!(wp["spec"]["pluginConfig"]["cluster"], "cluster1");
    assert_eq!(
        wasm_plugin(c2).unwrap()["spec"]["pluginConfig"]["cluster"],
        "cluster2"
    );
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
    // The filter accepts what was rendered.
    ksit_policy::Engine::from_json(wp["spec"]["pluginConfig"].to_string().as_bytes(), None)
        .unwrap();

    // The unowned object on cluster2 is untouched, and the conflict is in the BindingPolicy's status.
    let theirs = c2
        .object(
            "networking.istio.io",
            "destinationrules",
            Some("default"),
            "multi-cluster-destination-rule",
        )
        .unwrap();
    assert_eq!(theirs["spec"]["host"], "theirs.example.com");
    wait_for(
        "conflict reported for cluster2",
        Duration::from_secs(10),
        || {
            let bp = s.hub.object(
                "control.kubestellar.io",
                "bindingpolicies",
                None,
                "istio-mesh-binding",
            );
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
    wait_for(
        "TrafficPolicy applied in 2 clusters",
        Duration::from_secs(10),
        || {
            let tp = s
                .hub
                .object("ksit.io", "trafficpolicies", Some("default"), "myapp");
            status(&tp, "/status/readyClusters") == Some(&json!(2))
                && status(&tp, "/status/conditions/0/status") == Some(&json!("True"))
        },
    )
    .await;
    wait_for(
        "cluster1's IntegrationTarget ready",
        Duration::from_secs(10),
        || {
            let it = s.hub.object(
                "ksit.io",
                "integrationtargets",
                Some("ksit-system"),
                "cluster1",
            );
            status(&it, "/status/ready") == Some(&json!(true))
        },
    )
    .await;
    wait_for(
        "Integration reports Istio health per cluster",
        Duration::from_secs(10),
        || {
            let i = s.hub.object(
                "ksit.io",
                "integrations",
                Some("istio-system"),
                "istio-multi-cluster-mesh",
            );
            status(&i, "/status/clusterStatuses")
                .and_then(Value::as_array)
                .is_some_and(|c| c.len() == 2)
                && status(&i, "/status/phase") == Some(&json!("Degraded"))
        },
    )
    .await;

    // `ksit render` produces the same objects, byte for byte, as what cluster1 holds.
    let docs = ksit_controller::manifests::read_documents(&[example_dir()]).unwrap();
    let mut hub_model = ksit_controller::manifests::hub_from_documents(&docs).unwrap();
    hub_model.clusters.push(ksit_controller::desired::Cluster {
        name: "cluster3".into(),
        labels: [("mesh".to_string(), "disabled".to_string())].into(),
    });
    let (_, settings) = args(&s, "x").module.settings().unwrap();
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
            .unwrap_or_else(|| panic!("{} missing", o.key()));
        let projected = project(&live, &o.manifest);
        assert_eq!(
            serde_yaml::to_string(&projected).unwrap(),
            serde_yaml::to_string(&o.manifest).unwrap(),
            "{} differs from ksit render",
            o.key()
        );
    }
    assert!(rendered.clusters["cluster3"].objects.is_empty());

    // Editing the TrafficPolicy reaches both clusters within 2 s.
    set_canary_weight(&s.hub, 25);
    let t = Instant::now();
    wait_for(
        "new pluginConfig on both clusters",
        Duration::from_secs(2),
        || canary_weight(c1) == Some(25) && canary_weight(c2) == Some(25),
    )
    .await;
    eprintln!(
        "TrafficPolicy change propagated to 2 clusters in {:?}",
        t.elapsed()
    );

    // A hand edit of a managed object is put back.
    let mut vs = c1
        .object(
            "networking.istio.io",
            "virtualservices",
            Some("default"),
            "ksit-myapp",
        )
        .unwrap();
    vs["spec"]["hosts"] = json!(["hijacked.example.com"]);
    c1.put(vs, "kubectl-edit").unwrap();
    wait_for("hand edit reverted", Duration::from_secs(8), || {
        c1.object(
            "networking.istio.io",
            "virtualservices",
            Some("default"),
            "ksit-myapp",
        )
        .unwrap()["spec"]["hosts"]
            == json!(["myapp.example.com"])
    })
    .await;

    // A ksit-owned object of a kind ksit sends nothing of here (so it does not watch it) is still found
    // and pruned by the next resync's full look (e.g. one restored from a backup).
    c1.put(
        json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": "restored", "namespace": "default",
                "labels": {"app.kubernetes.io/managed-by": "ksit"}},
            "spec": {"hosts": ["restored.example.com"], "resolution": "DNS"}}),
        "ksit-controller",
    )
    .unwrap();
    wait_for(
        "a stale ksit ServiceEntry pruned within a resync",
        Duration::from_secs(8),
        || {
            c1.object(
                "networking.istio.io",
                "serviceentries",
                Some("default"),
                "restored",
            )
            .is_none()
        },
    )
    .await;

    // A second TrafficPolicy on the same gateway joins the same WasmPlugin (one filter invocation per
    // request); one that claims a host the older policy holds is left out, with the reason in its status.
    // (creationTimestamp has one-second resolution, so within a second the older is the first by name.)
    for (name, host) in [
        ("orders", "orders.example.com"),
        ("shadow", "myapp.example.com"),
    ] {
        s.hub
            .put(
                json!({"apiVersion": "ksit.io/v1alpha1", "kind": "TrafficPolicy",
                    "metadata": {"name": name, "namespace": "default"},
                    "spec": {"selector": {"matchLabels": {"istio": "ingressgateway"}}, "hosts": [host],
                        "http": [{"name": "all", "route": [{"destination": {"host": "web-service", "port": {"number": 80}}}]}]}}),
                "kubectl-apply",
            )
            .unwrap();
    }
    let merged_names = |m: &Emulator| -> Vec<String> {
        wasm_plugin(m)
            .and_then(|w| {
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
    wait_for(
        "orders merged into the gateway's WasmPlugin on both clusters",
        Duration::from_secs(8),
        || {
            [c1, c2].iter().all(|m| {
                merged_names(m) == ["default/myapp", "default/orders"]
                    && m.object(
                        "networking.istio.io",
                        "virtualservices",
                        Some("default"),
                        "ksit-orders",
                    )
                    .is_some()
            })
        },
    )
    .await;
    let wp = wasm_plugin(c1).unwrap();
    ksit_policy::Engine::from_json(wp["spec"]["pluginConfig"].to_string().as_bytes(), None)
        .unwrap();
    for m in [c1, c2] {
        let names: Vec<String> = m
            .objects("extensions.istio.io", "wasmplugins")
            .iter()
            .filter_map(|w| {
                w.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .map(String::from)
            })
            .collect();
        assert_eq!(names, ["ksit-default-myapp"], "one plugin per gateway");
        assert!(m
            .object(
                "networking.istio.io",
                "virtualservices",
                Some("default"),
                "ksit-shadow"
            )
            .is_none());
    }
    wait_for(
        "shadow reported as a host conflict",
        Duration::from_secs(8),
        || {
            let shadow = s
                .hub
                .object("ksit.io", "trafficpolicies", Some("default"), "shadow");
            let orders = s
                .hub
                .object("ksit.io", "trafficpolicies", Some("default"), "orders");
            status(&shadow, "/status/conditions/0/reason") == Some(&json!("HostConflict"))
                && status(&shadow, "/status/conditions/0/message")
                    .and_then(Value::as_str)
                    .is_some_and(|m| m.contains("default/myapp"))
                && status(&orders, "/status/readyClusters") == Some(&json!(2))
        },
    )
    .await;
    for name in ["orders", "shadow"] {
        s.hub
            .delete("ksit.io", "trafficpolicies", Some("default"), name)
            .unwrap();
    }
    wait_for(
        "the plugin is back to the single-policy form",
        Duration::from_secs(8),
        || {
            [c1, c2].iter().all(|m| {
                canary_weight(m) == Some(25)
                    && m.object(
                        "networking.istio.io",
                        "virtualservices",
                        Some("default"),
                        "ksit-orders",
                    )
                    .is_none()
            })
        },
    )
    .await;

    // A member that is down gets its own status; the other still converges.
    c1.faults().set_down(true);
    set_canary_weight(&s.hub, 30);
    wait_for(
        "cluster2 converges while cluster1 is down",
        Duration::from_secs(5),
        || canary_weight(c2) == Some(30),
    )
    .await;
    wait_for(
        "cluster1 reported unreachable",
        Duration::from_secs(10),
        || {
            let it = s.hub.object(
                "ksit.io",
                "integrationtargets",
                Some("ksit-system"),
                "cluster1",
            );
            status(&it, "/status/ready") == Some(&json!(false))
        },
    )
    .await;
    let it = s.hub.object(
        "ksit.io",
        "integrationtargets",
        Some("ksit-system"),
        "cluster1",
    );
    assert_ne!(
        status(&it, "/status/conditions/0/reason"),
        Some(&json!("Connected"))
    );
    c1.faults().set_down(false);
    wait_for("cluster1 catches up", Duration::from_secs(40), || {
        canary_weight(c1) == Some(30)
    })
    .await;

    // A restarted controller makes no writes when nothing changed.
    wait_for(
        "cluster1 reported ready again",
        Duration::from_secs(10),
        || {
            let it = s.hub.object(
                "ksit.io",
                "integrationtargets",
                Some("ksit-system"),
                "cluster1",
            );
            status(&it, "/status/ready") == Some(&json!(true))
        },
    )
    .await;
    controller.abort();
    let _ = controller.await;
    for m in &s.members {
        m.reset_stats();
    }
    let controller = tokio::spawn(run_async(args(&s, "replica-b")));
    tokio::time::sleep(Duration::from_secs(10)).await; // lease takeover, first reconcile, then a resync
    for m in &s.members {
        assert_eq!(
            m.stats().writes,
            0,
            "{} got writes after a restart with nothing to change: {:?}",
            m.name(),
            m.request_log()
                .iter()
                .filter(|r| r.verb != "get" && r.verb != "list" && r.verb != "watch")
                .collect::<Vec<_>>()
        );
    }
    assert!(
        c1.request_log().iter().any(|r| r.verb == "get"),
        "the restarted controller did look at cluster1"
    );

    // Relabelling a cluster prunes what ksit put there, and nothing else.
    s.hub
        .put(
            target("cluster2", json!({"mesh": "disabled"})),
            "kubectl-edit",
        )
        .unwrap();
    wait_for("cluster2 pruned", Duration::from_secs(8), || {
        wasm_plugin(c2).is_none()
            && c2
                .object(
                    "networking.istio.io",
                    "virtualservices",
                    Some("default"),
                    "ksit-myapp",
                )
                .is_none()
    })
    .await;
    assert!(
        c2.object(
            "networking.istio.io",
            "destinationrules",
            Some("default"),
            "multi-cluster-destination-rule"
        )
        .is_some(),
        "unowned object deleted"
    );

    // Deleting the BindingPolicy prunes everywhere.
    s.hub
        .put(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "scratch"}}),
            "t",
        )
        .unwrap();
    s.hub
        .delete(
            "control.kubestellar.io",
            "bindingpolicies",
            None,
            "istio-mesh-binding",
        )
        .unwrap();
    wait_for("cluster1 pruned", Duration::from_secs(8), || {
        wasm_plugin(c1).is_none()
            && c1
                .objects("networking.istio.io", "virtualservices")
                .is_empty()
            && c1
                .objects("networking.istio.io", "destinationrules")
                .is_empty()
            && c1.objects("networking.istio.io", "gateways").is_empty()
    })
    .await;
    assert!(
        c1.object("", "namespaces", None, "istio-system").is_some(),
        "namespaces are never pruned"
    );
    controller.abort();

    // RBAC lists what is used: every call the controller made is allowed by the install manifests.
    assert_calls_allowed(&s.hub, "install/rbac.yaml");
    for m in &s.members {
        assert_calls_allowed(m, "install/member-rbac.yaml");
    }
    let _ = std::fs::remove_dir_all(&s.dir);
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

fn events(hub: &Emulator) -> Vec<Value> {
    hub.objects("events.k8s.io", "events")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_writer_and_failures_reported_per_cluster() {
    let _ = env_logger::builder().is_test(true).try_init();
    let Some(s) = setup(false).await else { return };
    let (c1, c2) = (&s.members[0], &s.members[1]);
    // cluster3 joins the mesh but has no Istio installed.
    s.hub
        .put(
            target(
                "cluster3",
                json!({"mesh": "enabled", "integration": "istio"}),
            ),
            "kubectl",
        )
        .unwrap();
    let a = tokio::spawn(run_async(args(&s, "replica-a")));
    let b = tokio::spawn(run_async(args(&s, "replica-b")));
    wait_for(
        "cluster1 and cluster2 synced",
        Duration::from_secs(15),
        || wasm_plugin(c1).is_some() && wasm_plugin(c2).is_some(),
    )
    .await;

    // A cluster without Istio: a clear per-cluster error, the cluster itself still reachable.
    wait_for(
        "cluster3's missing Istio reported",
        Duration::from_secs(10),
        || {
            let bp = s.hub.object(
                "control.kubestellar.io",
                "bindingpolicies",
                None,
                "istio-mesh-binding",
            );
            status(&bp, "/status/clusters")
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c["name"] == "cluster3"
                            && c["errors"].to_string().contains("is Istio installed?")
                    })
                })
                && status(&bp, "/status/conditions/0/reason") == Some(&json!("SyncFailed"))
        },
    )
    .await;
    wait_for(
        "cluster3 reachable (only Istio is missing)",
        Duration::from_secs(5),
        || {
            let it = s.hub.object(
                "ksit.io",
                "integrationtargets",
                Some("ksit-system"),
                "cluster3",
            );
            status(&it, "/status/ready") == Some(&json!(true))
        },
    )
    .await;
    wait_for(
        "a Warning event for the binding",
        Duration::from_secs(10),
        || {
            events(&s.hub).iter().any(|e| {
                e["reason"] == "SyncFailed"
                    && e["regarding"]["name"] == "istio-mesh-binding"
                    && e["note"].to_string().contains("cluster3")
            })
        },
    )
    .await;
    let i = s.hub.object(
        "ksit.io",
        "integrations",
        Some("istio-system"),
        "istio-multi-cluster-mesh",
    );
    assert!(status(&i, "/status/clusterStatuses").is_some());

    // Only the Lease holder writes: one change to the policy is one write per cluster, not two.
    let lease = s
        .hub
        .object(
            "coordination.k8s.io",
            "leases",
            Some("ksit-system"),
            "ksit-controller",
        )
        .unwrap();
    let leader = lease["spec"]["holderIdentity"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(leader == "replica-a" || leader == "replica-b");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for m in [c1, c2] {
        m.reset_stats();
    }
    set_canary_weight(&s.hub, 40);
    wait_for(
        "new weight on cluster1 and cluster2",
        Duration::from_secs(3),
        || canary_weight(c1) == Some(40) && canary_weight(c2) == Some(40),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for m in [c1, c2] {
        assert_eq!(
            m.stats().writes,
            1,
            "{}: {:?}",
            m.name(),
            m.request_log()
                .iter()
                .filter(|r| !matches!(r.verb.as_str(), "get" | "list" | "watch"))
                .collect::<Vec<_>>()
        );
    }

    // The leader goes away: the other replica takes over within the lease duration and keeps going.
    let (gone, stays) = if leader == "replica-a" {
        (a, b)
    } else {
        (b, a)
    };
    gone.abort();
    let _ = gone.await;
    set_canary_weight(&s.hub, 45);
    wait_for(
        "the other replica applies the change",
        Duration::from_secs(12),
        || canary_weight(c1) == Some(45) && canary_weight(c2) == Some(45),
    )
    .await;
    let lease = s
        .hub
        .object(
            "coordination.k8s.io",
            "leases",
            Some("ksit-system"),
            "ksit-controller",
        )
        .unwrap();
    assert_ne!(
        lease["spec"]["holderIdentity"].as_str(),
        Some(leader.as_str())
    );

    // No Secret content ever reaches events.
    for e in events(&s.hub) {
        assert!(
            !e.to_string().contains("emulator-token"),
            "kubeconfig content in an event: {e}"
        );
    }
    stays.abort();
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// Every request `e` saw (from the controller: the tests' own setup goes through `put`, not HTTP) is allowed
/// by the ClusterRoles and Roles in `file`.
fn assert_calls_allowed(e: &Emulator, file: &str) {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../manifests")
            .join(file),
    )
    .unwrap();
    let mut rules: Vec<(Option<String>, Value)> = vec![];
    for d in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(d).unwrap();
        match v["kind"].as_str() {
            Some("ClusterRole") => rules.extend(
                v["rules"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| (None, r.clone())),
            ),
            Some("Role") => {
                let ns = v["metadata"]["namespace"].as_str().map(String::from);
                rules.extend(
                    v["rules"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| (ns.clone(), r.clone())),
                );
            }
            _ => {}
        }
    }
    let has = |list: &Value, x: &str| {
        list.as_array()
            .is_some_and(|a| a.iter().any(|v| v == x || v == "*"))
    };
    let mut used = std::collections::BTreeSet::new();
    for r in e.request_log() {
        let resource = match &r.subresource {
            Some(sub) => format!("{}/{sub}", r.resource),
            None => r.resource.clone(),
        };
        let ok = rules.iter().any(|(ns, rule)| {
            ns.as_ref()
                .is_none_or(|n| r.namespace.as_deref() == Some(n.as_str()))
                && has(&rule["apiGroups"], &r.group)
                && has(&rule["resources"], &resource)
                && has(&rule["verbs"], &r.verb)
        });
        assert!(
            ok,
            "{}: {file} does not allow {} {}/{} in {:?}",
            e.name(),
            r.verb,
            r.group,
            resource,
            r.namespace
        );
        used.insert((r.group.clone(), resource, r.verb.clone()));
    }
    assert!(!used.is_empty(), "{} saw no requests", e.name());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_kubestellar_owns_bindings_ksit_only_renders_traffic_policies() {
    let Some(s) = setup(true).await else { return };
    let (c1, c3) = (&s.members[0], &s.members[2]);
    let mut a = args(&s, "ks");
    a.kubestellar_owns_bindings = true;
    let controller = tokio::spawn(run_async(a));
    wait_for("WasmPlugin on cluster1", Duration::from_secs(15), || {
        wasm_plugin(c1).is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(c1
        .object(
            "networking.istio.io",
            "virtualservices",
            Some("default"),
            "ksit-myapp"
        )
        .is_some());
    // KubeStellar copies the Istio objects: ksit does not.
    assert!(c1
        .object(
            "networking.istio.io",
            "virtualservices",
            Some("default"),
            "multi-cluster-virtualservice"
        )
        .is_none());
    assert!(c1.objects("networking.istio.io", "gateways").is_empty());
    assert!(wasm_plugin(c3).is_none(), "cluster3 is still not selected");
    // And KubeStellar reports on its bindings; ksit writes no status there.
    let bp = s
        .hub
        .object(
            "control.kubestellar.io",
            "bindingpolicies",
            None,
            "istio-mesh-binding",
        )
        .unwrap();
    assert!(bp.get("status").is_none(), "{bp}");
    wait_for(
        "TrafficPolicy status still written",
        Duration::from_secs(5),
        || {
            s.hub
                .object("ksit.io", "trafficpolicies", Some("default"), "myapp")
                .is_some_and(|t| t.pointer("/status/readyClusters") == Some(&json!(2)))
        },
    )
    .await;
    controller.abort();
    let _ = std::fs::remove_dir_all(&s.dir);
}
