//! Unit tests of the desired state, by stage.
use super::*;
use crate::resources::DownsyncClause;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn kubestellar_clause_semantics() {
    let none: BTreeMap<String, String> = BTreeMap::new();
    let nsl: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let all = DownsyncClause::default();
    assert!(
        clause_matches(
            &all,
            "networking.istio.io",
            "gateways",
            Some("x"),
            &["g"],
            &none,
            &nsl
        ),
        "empty lists match all"
    );
    let c = DownsyncClause {
        api_group: Some("networking.istio.io".into()),
        resources: vec!["virtualservices".into()],
        namespaces: vec!["default".into()],
        ..Default::default()
    };
    assert!(clause_matches(
        &c,
        "networking.istio.io",
        "virtualservices",
        Some("default"),
        &["a"],
        &none,
        &nsl
    ));
    assert!(!clause_matches(
        &c,
        "networking.istio.io",
        "virtualservices",
        Some("other"),
        &["a"],
        &none,
        &nsl
    ));
    assert!(!clause_matches(
        &c,
        "networking.istio.io",
        "destinationrules",
        Some("default"),
        &["a"],
        &none,
        &nsl
    ));
    assert!(!clause_matches(
        &c,
        "security.istio.io",
        "virtualservices",
        Some("default"),
        &["a"],
        &none,
        &nsl
    ));
    assert!(
        !clause_matches(
            &c,
            "networking.istio.io",
            "virtualservices",
            None,
            &["a"],
            &none,
            &nsl
        ),
        "cluster-scoped needs \"*\""
    );
    let star = DownsyncClause {
        namespaces: vec!["*".into()],
        object_names: vec!["b".into()],
        ..Default::default()
    };
    assert!(clause_matches(
        &star,
        "",
        "namespaces",
        None,
        &["b"],
        &none,
        &nsl
    ));
    assert!(!clause_matches(
        &star,
        "",
        "namespaces",
        None,
        &["c"],
        &none,
        &nsl
    ));
    let sel = DownsyncClause {
        object_selectors: vec![crate::resources::LabelSelector {
            match_labels: labels(&[("app", "x")]),
            ..Default::default()
        }],
        ..Default::default()
    };
    assert!(clause_matches(
        &sel,
        "g",
        "r",
        Some("n"),
        &["o"],
        &labels(&[("app", "x"), ("z", "1")]),
        &nsl
    ));
    assert!(!clause_matches(
        &sel,
        "g",
        "r",
        Some("n"),
        &["o"],
        &labels(&[("app", "y")]),
        &nsl
    ));
}

#[test]
fn wasm_plugin_goes_where_the_workloads_run() {
    let mut spec: TrafficPolicySpec = serde_json::from_value(
        json!({"hosts": ["h"], "selector": {"matchLabels": {"istio": "ingressgateway"}}}),
    )
    .unwrap_or_default();
    assert_eq!(
        wasm_plugin_namespace("default", &spec, "istio-system"),
        "istio-system"
    );
    assert_eq!(
        wasm_plugin_name("default", "myapp", "istio-system"),
        "ksit-default-myapp"
    );
    spec.selector = serde_json::from_value(json!({"matchLabels": {"app": "reviews"}})).ok();
    assert_eq!(
        wasm_plugin_namespace("default", &spec, "istio-system"),
        "default"
    );
    assert_eq!(
        wasm_plugin_name("default", "myapp", "default"),
        "ksit-myapp"
    );
    spec.selector = None;
    spec.target_refs =
        serde_json::from_value(json!([{"kind": "Gateway", "name": "gw", "namespace": "edge"}]))
            .unwrap_or_default();
    assert_eq!(
        wasm_plugin_namespace("default", &spec, "istio-system"),
        "edge"
    );
}

#[test]
fn plugin_config_resolves_overrides_for_the_cluster() {
    let spec: TrafficPolicySpec = serde_json::from_value(json!({"hosts": ["h"], "http": [{"name": "a", "route": [{"destination": {"host": "x"}}]}],
            "overrides": [{"clusters": ["c1"], "http": [{"name": "a", "route": [{"destination": {"host": "y"}}]}]}]})).unwrap_or_default();
    let c1 = plugin_config(&spec, "c1", false);
    assert!(c1.get("headerForStable").is_none());
    assert_eq!(plugin_config(&spec, "c1", true)["headerForStable"], false);
    assert_eq!(c1["cluster"], "c1");
    assert_eq!(c1["http"][0]["route"][0]["destination"]["host"], "y");
    assert!(c1.get("overrides").is_none());
    assert_eq!(
        plugin_config(&spec, "c2", false)["http"][0]["route"][0]["destination"]["host"],
        "x"
    );
}

fn hub(clause_namespaces: &[&str]) -> Hub {
    let bp: BindingPolicy = serde_json::from_value(json!({"apiVersion": "control.kubestellar.io/v1alpha1", "kind": "BindingPolicy",
            "metadata": {"name": "b"}, "spec": {"clusterSelectors": [{"matchLabels": {"mesh": "enabled"}}],
            "downsync": [{"apiGroup": "extensions.istio.io", "resources": ["wasmplugins"], "namespaces": clause_namespaces}]}}))
        .unwrap_or_else(|e| unreachable!("{e}"));
    let tp: TrafficPolicy = serde_json::from_value(json!({"apiVersion": "ksit.io/v1alpha1", "kind": "TrafficPolicy",
            "metadata": {"name": "app", "namespace": "default", "generation": 3},
            "spec": {"hosts": ["h"], "selector": {"matchLabels": {"istio": "ingressgateway"}}, "http": [{"route": [{"destination": {"host": "x"}}]}]}}))
        .unwrap_or_else(|e| unreachable!("{e}"));
    Hub {
        clusters: vec![
            Cluster {
                name: "c1".into(),
                labels: labels(&[("mesh", "enabled")]),
            },
            Cluster {
                name: "c2".into(),
                labels: BTreeMap::new(),
            },
        ],
        bindings: vec![bp],
        traffic_policies: vec![tp],
        ..Default::default()
    }
}

fn settings() -> RenderSettings {
    RenderSettings {
        module: ModuleSource::Oci {
            image: "oci://r/ksit:1".into(),
        },
        gateway_namespace: "istio-system".into(),
        stable_by_default_route: false,
        per_cluster: false,
    }
}

#[test]
fn a_wasm_plugin_namespace_the_binding_does_not_cover_is_reported() {
    let d = compute(&hub(&["default"]), &settings());
    assert!(d.clusters["c1"].objects.is_empty());
    assert_eq!(d.notes.len(), 1, "{:?}", d.notes);
    assert!(
        d.notes[0]
            .message
            .contains("must live in namespace istio-system"),
        "{:?}",
        d.notes
    );
    assert_eq!(d.notes[0].object, "TrafficPolicy default/app");
    // Covering it renders the plugin there (and the VirtualService beside the policy), only in c1.
    let d = compute(&hub(&["default", "istio-system"]), &settings());
    let keys: Vec<String> = d.clusters["c1"]
        .objects
        .iter()
        .map(|o| o.key().to_string())
        .collect();
    assert_eq!(
        keys,
        [
            "Namespace default",
            "Namespace istio-system",
            "WasmPlugin istio-system/ksit-default-app",
            "VirtualService default/ksit-app"
        ]
    );
    assert!(d.clusters["c2"].objects.is_empty());
    assert!(d.notes.is_empty());
    let wp = &d.clusters["c1"].objects[2];
    assert_eq!(wp.manifest["spec"]["url"], "oci://r/ksit:1");
    assert_eq!(wp.traffic_policies, [("default/app".to_string(), 3)]);
}

#[test]
fn what_is_the_same_on_every_cluster_is_held_once() {
    let bp = |name: &str, selector: Value, create_only: bool| -> BindingPolicy {
        serde_json::from_value(json!({"apiVersion": "control.kubestellar.io/v1alpha1", "kind": "BindingPolicy",
                "metadata": {"name": name}, "spec": {"clusterSelectors": [{"matchLabels": selector}],
                "downsync": [{"apiGroup": "networking.istio.io", "resources": ["destinationrules"], "namespaces": ["default"], "createOnly": create_only},
                             {"apiGroup": "extensions.istio.io", "resources": ["wasmplugins"], "namespaces": ["default", "istio-system"]}]}}))
            .unwrap_or_else(|e| unreachable!("{e}"))
    };
    let mut h = hub(&[]);
    for c in &mut h.clusters {
        c.labels = labels(&[("mesh", "enabled")]);
    }
    h.clusters.push(Cluster {
        name: "c3".into(),
        labels: labels(&[("mesh", "enabled"), ("edge", "yes")]),
    });
    h.bindings = vec![
        bp("all", json!({"mesh": "enabled"}), false),
        bp("edge", json!({"edge": "yes"}), true),
    ];
    h.objects = vec![HubObject {
        kind: ResourceKind::new(
            "networking.istio.io",
            "v1",
            "DestinationRule",
            "destinationrules",
            true,
        ),
        object: json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"name": "dr", "namespace": "default", "resourceVersion": "7"}, "spec": {"host": "x"}}),
    }];
    let d = compute(&h, &settings());
    let find = |c: &str, key: &str| -> Arc<DesiredObject> {
        d.clusters[c]
            .objects
            .iter()
            .find(|o| o.key().to_string() == key)
            .cloned()
            .unwrap_or_else(|| unreachable!("{key} not sent to {c}"))
    };
    let dr = "DestinationRule default/dr";
    // Sent the same way to c1 and c2: one object. c3 gets it through a second binding too: its own copy.
    assert!(Arc::ptr_eq(&find("c1", dr), &find("c2", dr)));
    assert!(!Arc::ptr_eq(&find("c1", dr), &find("c3", dr)));
    assert_eq!(find("c1", dr).bindings, ["all"]);
    assert_eq!(find("c3", dr).bindings, ["all", "edge"]);
    assert_eq!(
        find("c3", dr).manifest["metadata"]["annotations"][BINDING_ANNOTATION],
        "all,edge"
    );
    assert!(Arc::ptr_eq(
        &find("c1", "Namespace default"),
        &find("c2", "Namespace default")
    ));
    // One WasmPlugin for every cluster by default; c1 and c2, bound alike, share their whole list.
    let wp = "WasmPlugin istio-system/ksit-default-app";
    assert!(Arc::ptr_eq(&find("c1", wp), &find("c2", wp)));
    // c3 gets it through a second binding too, which its binding annotation names; the spec is the same.
    assert_eq!(
        find("c1", wp).manifest["spec"],
        find("c3", wp).manifest["spec"]
    );
    assert!(Arc::ptr_eq(&d.clusters["c1"], &d.clusters["c2"]));
    assert!(find("c1", wp).manifest["spec"]["pluginConfig"]
        .get("cluster")
        .is_none());
    assert!(find("c1", wp).manifest["spec"].get("vmConfig").is_none());
    // Rendered per cluster, the WasmPlugin names its cluster: one per cluster.
    let per_cluster = RenderSettings {
        per_cluster: true,
        ..settings()
    };
    let dp = compute(&h, &per_cluster);
    let find_in = |c: &str| -> Arc<DesiredObject> {
        dp.clusters[c]
            .objects
            .iter()
            .find(|o| o.key().to_string() == wp)
            .cloned()
            .unwrap_or_else(|| unreachable!("{wp} not sent to {c}"))
    };
    assert!(!Arc::ptr_eq(&find_in("c1"), &find_in("c2")));
    assert_ne!(find_in("c1").manifest, find_in("c2").manifest);
    // Held once, and each cluster's objects exactly as computed for that cluster alone, either way.
    for settings in [settings(), per_cluster] {
        let d = compute(&h, &settings);
        for c in &h.clusters {
            let alone = compute(
                &Hub {
                    clusters: vec![c.clone()],
                    ..h.clone()
                },
                &settings,
            );
            assert_eq!(alone.clusters[&c.name], d.clusters[&c.name], "{}", c.name);
        }
    }
    for c in &h.clusters {
        assert_eq!(
            find_in(&c.name).manifest["spec"]["pluginConfig"]["cluster"],
            json!(c.name)
        );
    }
}

fn policy(name: &str, created: &str, hosts: &[&str], fail: &str) -> TrafficPolicy {
    serde_json::from_value(json!({"apiVersion": "ksit.io/v1alpha1", "kind": "TrafficPolicy",
            "metadata": {"name": name, "namespace": "shop", "generation": 2, "creationTimestamp": created},
            "spec": {"hosts": hosts, "selector": {"matchLabels": {"istio": "ingressgateway"}}, "failStrategy": fail,
                "http": [{"name": "api", "route": [{"destination": {"host": format!("{name}-svc")}}]}]}}))
        .unwrap_or_else(|e| unreachable!("{e}"))
}

fn gateway_hub(tps: Vec<TrafficPolicy>) -> Hub {
    let mut h = hub(&["shop", "istio-system"]);
    h.traffic_policies = tps;
    h
}

fn kinds_in(d: &Desired, cluster: &str) -> Vec<String> {
    d.clusters[cluster]
        .objects
        .iter()
        .filter(|o| o.kind.kind != "Namespace")
        .map(|o| o.key().to_string())
        .collect()
}

#[test]
fn policies_on_the_same_workloads_share_one_wasm_plugin() {
    // "orders" is older than "cart", so the merged plugin is named after it.
    let hub = gateway_hub(vec![
        policy(
            "cart",
            "2026-02-01T00:00:00Z",
            &["cart.example.com"],
            "FAIL_OPEN",
        ),
        policy(
            "orders",
            "2026-01-01T00:00:00Z",
            &["orders.example.com"],
            "FAIL_OPEN",
        ),
    ]);
    let d = compute(&hub, &settings());
    assert_eq!(
        kinds_in(&d, "c1"),
        [
            "WasmPlugin istio-system/ksit-shop-orders",
            "VirtualService shop/ksit-cart",
            "VirtualService shop/ksit-orders"
        ]
    );
    let wp = d.clusters["c1"]
        .objects
        .iter()
        .find(|o| o.kind.kind == "WasmPlugin")
        .unwrap_or_else(|| unreachable!());
    let config = &wp.manifest["spec"]["pluginConfig"];
    assert!(
        config.get("cluster").is_none(),
        "one config for every cluster"
    );
    let names: Vec<&str> = config["policies"]
        .as_array()
        .map(|l| l.iter().filter_map(|p| p["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["shop/orders", "shop/cart"]);
    assert!(wp.carries("shop/orders") && wp.carries("shop/cart"));
    assert_eq!(
        wp.manifest["metadata"]["annotations"][SOURCE_ANNOTATION],
        "TrafficPolicy shop/orders, TrafficPolicy shop/cart"
    );
    // The filter accepts what the controller renders, and decides each host by its own policy.
    let text = serde_json::to_vec(config).unwrap_or_default();
    let engine =
        ksit_policy::Engine::from_json(&text, None).unwrap_or_else(|e| unreachable!("{e:?}"));
    for (host, dest) in [
        ("cart.example.com", "cart-svc"),
        ("orders.example.com", "orders-svc"),
    ] {
        let headers: [(&[u8], &[u8]); 2] = [(b":authority", host.as_bytes()), (b":path", b"/")];
        let req = ksit_policy::Request::new(&headers);
        let decision = engine.decide(&req, 1);
        assert_eq!(decision.destination.map(|x| x.key.as_str()), Some(dest));
    }
    // Every decided request is marked unless the controller runs with --stable-by-default-route.
    assert!(engine.header_for_stable());
    let unmarked = compute(
        &hub,
        &RenderSettings {
            stable_by_default_route: true,
            ..settings()
        },
    );
    let config = unmarked.clusters["c1"]
        .objects
        .iter()
        .find(|o| o.kind.kind == "WasmPlugin")
        .map(|o| o.manifest["spec"]["pluginConfig"].clone())
        .unwrap_or_default();
    assert_eq!(config["headerForStable"], false);
    let text = serde_json::to_vec(&config).unwrap_or_default();
    let engine =
        ksit_policy::Engine::from_json(&text, None).unwrap_or_else(|e| unreachable!("{e:?}"));
    assert!(!engine.header_for_stable());
    // A different failStrategy cannot share the plugin (it is a WasmPlugin field).
    let d = compute(
        &gateway_hub(vec![
            policy(
                "cart",
                "2026-02-01T00:00:00Z",
                &["cart.example.com"],
                "FAIL_CLOSE",
            ),
            policy(
                "orders",
                "2026-01-01T00:00:00Z",
                &["orders.example.com"],
                "FAIL_OPEN",
            ),
        ]),
        &settings(),
    );
    let plugins: Vec<String> = kinds_in(&d, "c1")
        .into_iter()
        .filter(|k| k.starts_with("WasmPlugin"))
        .collect();
    assert_eq!(
        plugins,
        [
            "WasmPlugin istio-system/ksit-shop-cart",
            "WasmPlugin istio-system/ksit-shop-orders"
        ]
    );
}

#[test]
fn the_older_policy_keeps_a_host_two_claim() {
    let d = compute(
        &gateway_hub(vec![
            policy(
                "new",
                "2026-03-01T00:00:00Z",
                &["a.example.com", "B.example.com"],
                "FAIL_OPEN",
            ),
            policy(
                "old",
                "2026-01-01T00:00:00Z",
                &["b.example.com"],
                "FAIL_OPEN",
            ),
        ]),
        &settings(),
    );
    assert_eq!(
        kinds_in(&d, "c1"),
        [
            "WasmPlugin istio-system/ksit-shop-old",
            "VirtualService shop/ksit-old"
        ]
    );
    assert_eq!(d.notes.len(), 1, "{:?}", d.notes);
    let n = &d.notes[0];
    assert_eq!(
        (n.object.as_str(), n.reason),
        ("TrafficPolicy shop/new", "HostConflict")
    );
    assert!(n.message.contains("host b.example.com"), "{}", n.message);
    assert!(n.message.contains("shop/old"), "{}", n.message);
}

#[test]
fn an_invalid_policy_holds_its_shared_plugin_as_it_is() {
    let mut bad = policy(
        "bad",
        "2026-01-01T00:00:00Z",
        &["bad.example.com"],
        "FAIL_OPEN",
    );
    bad.spec.0.http[0].route[0].weight = Some(-1);
    let good = policy(
        "good",
        "2026-02-01T00:00:00Z",
        &["good.example.com"],
        "FAIL_OPEN",
    );
    let d = compute(&gateway_hub(vec![bad.clone(), good.clone()]), &settings());
    // The shared plugin and the good policy's VirtualService are held as they are (neither rendered nor
    // pruned), so the filter's decisions and the routes that carry them out stay a pair.
    assert!(kinds_in(&d, "c1").is_empty(), "{:?}", kinds_in(&d, "c1"));
    let mut retained: Vec<String> = d.retain.iter().map(ToString::to_string).collect();
    retained.sort();
    assert_eq!(
        retained,
        [
            "VirtualService shop/ksit-bad",
            "VirtualService shop/ksit-good",
            "WasmPlugin istio-system/ksit-shop-bad",
        ]
    );
    assert_eq!(d.notes.len(), 1, "{:?}", d.notes);
    assert_eq!(d.notes[0].reason, "HeldByInvalidPolicy");
    assert_eq!(d.notes[0].object, "TrafficPolicy shop/good");
    // Alone, an invalid policy keeps its own objects.
    let d = compute(&gateway_hub(vec![bad]), &settings());
    assert!(kinds_in(&d, "c1").is_empty());
    assert_eq!(d.retain.len(), 2);
    assert!(d.notes.is_empty());
}

fn binding(name: &str, clauses: Value) -> BindingPolicy {
    serde_json::from_value(json!({"apiVersion": "control.kubestellar.io/v1alpha1", "kind": "BindingPolicy",
            "metadata": {"name": name}, "spec": {"clusterSelectors": [{"matchLabels": {"mesh": "enabled"}}],
            "downsync": clauses}}))
        .unwrap_or_else(|e| unreachable!("{e}"))
}

fn config_map(name: &str, annotations: Value, data: Value) -> HubObject {
    HubObject {
        kind: ResourceKind::new("", "v1", "ConfigMap", "configmaps", true),
        object: json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": "default", "annotations": annotations,
                             "labels": {"app": "x"}}, "data": data}),
    }
}

fn mesh_clusters() -> Vec<Cluster> {
    vec![
        Cluster {
            name: "c1".into(),
            labels: labels(&[("mesh", "enabled"), ("region", "eu")]),
        },
        Cluster {
            name: "c2".into(),
            labels: labels(&[("mesh", "enabled"), ("region", "us")]),
        },
    ]
}

/// KubeStellar ORs the createOnly bits of all the clauses of a BindingPolicy that match an object; ksit
/// used the first matching clause only, and so updated objects KubeStellar leaves alone.
#[test]
fn create_only_is_ored_over_the_clauses_that_match() {
    let cm = config_map("settings", json!({}), json!({"a": "1"}));
    let cases = [
        (
            json!([{"resources": ["configmaps"]}, {"objectSelectors": [{"matchLabels": {"app": "x"}}], "createOnly": true}]),
            true,
        ),
        (
            json!([{"resources": ["configmaps"], "createOnly": true}, {"objectNames": ["settings"]}]),
            true,
        ),
        (
            json!([{"resources": ["configmaps"]}, {"objectNames": ["settings"]}]),
            false,
        ),
        (
            json!([{"resources": ["configmaps"]}, {"objectNames": ["other"], "createOnly": true}]),
            false,
        ),
    ];
    for (clauses, want) in cases {
        let hub = Hub {
            clusters: mesh_clusters(),
            bindings: vec![binding("b", clauses.clone())],
            objects: vec![cm.clone()],
            ..Default::default()
        };
        let d = compute(&hub, &settings());
        let o = d.clusters["c1"]
            .objects
            .iter()
            .find(|o| o.name == "settings")
            .cloned()
            .unwrap_or_else(|| unreachable!("{clauses}: not sent"));
        assert_eq!(o.create_only, want, "{clauses}");
    }
    // Across BindingPolicies (each a KubeStellar Binding, transported on its own), an object one of them
    // keeps up to date is updated.
    let hub = Hub {
        clusters: mesh_clusters(),
        bindings: vec![
            binding("keep", json!([{"resources": ["configmaps"]}])),
            binding(
                "seed",
                json!([{"resources": ["configmaps"], "createOnly": true}]),
            ),
        ],
        objects: vec![cm],
        ..Default::default()
    };
    let d = compute(&hub, &settings());
    let o = d.clusters["c1"]
        .objects
        .iter()
        .find(|o| o.name == "settings");
    assert_eq!(
        o.map(|o| (o.create_only, o.bindings.clone())),
        Some((false, vec!["keep".to_string(), "seed".to_string()]))
    );
}

/// `control.kubestellar.io/expand-templates: "true"`: each leaf string is expanded per cluster with the
/// cluster's properties (its ConfigMap in customization-properties, annotations, labels, clusterName);
/// ksit used to copy the `{{ }}` text as it was.
#[test]
fn expand_templates_renders_per_cluster_or_holds_the_object() {
    let expand = json!({(crate::template::EXPAND_ANNOTATION): "true"});
    let cm = config_map(
        "endpoint",
        expand.clone(),
        json!({"url": "https://loki.{{ .region }}.example.com/{{ .clusterName }}-{{.clusterHash}}", "plain": "{{ .region }}"}),
    );
    let mut hub = Hub {
        clusters: mesh_clusters(),
        bindings: vec![binding("b", json!([{"resources": ["configmaps"]}]))],
        objects: vec![cm.clone()],
        ..Default::default()
    };
    for (c, hash) in [("c1", "1001-dead-beef"), ("c2", "2002-beef-dead")] {
        hub.cluster_properties.insert(
            c.into(),
            crate::template::extra_properties(
                &BTreeMap::new(),
                vec![("clusterHash".to_string(), hash.to_string())],
            ),
        );
    }
    let d = compute(&hub, &settings());
    let data = |c: &str| {
        d.clusters[c]
            .objects
            .iter()
            .find(|o| o.name == "endpoint")
            .map(|o| o.manifest["data"].clone())
            .unwrap_or_default()
    };
    assert_eq!(
        data("c1")["url"],
        "https://loki.eu.example.com/c1-1001-dead-beef"
    );
    assert_eq!(
        data("c2")["url"],
        "https://loki.us.example.com/c2-2002-beef-dead"
    );
    assert_eq!(data("c2")["plain"], "us");
    assert!(d.notes.is_empty(), "{:?}", d.notes);
    // Without the annotation the text is copied as it is.
    let mut plain = hub.clone();
    plain.objects = vec![config_map(
        "endpoint",
        json!({}),
        json!({"url": "{{ .region }}"}),
    )];
    let d = compute(&plain, &settings());
    assert_eq!(
        d.clusters["c1"]
            .objects
            .iter()
            .find(|o| o.name == "endpoint")
            .map(|o| o.manifest["data"]["url"].clone()),
        Some(json!("{{ .region }}"))
    );
    // A property one cluster lacks: the object is held as it is everywhere, and its binding says why.
    hub.cluster_properties.remove("c2");
    let d = compute(&hub, &settings());
    assert!(d
        .clusters
        .values()
        .all(|c| c.objects.iter().all(|o| o.name != "endpoint")));
    assert!(
        d.retain
            .iter()
            .any(|k| k.to_string() == "ConfigMap default/endpoint"),
        "{:?}",
        d.retain
    );
    assert_eq!(d.notes.len(), 1, "{:?}", d.notes);
    let n = &d.notes[0];
    assert_eq!(
        (n.cluster.as_str(), n.object.as_str(), n.reason),
        ("c2", "BindingPolicy b", "TemplateExpansionFailed")
    );
    assert!(
        n.message
            .contains("data.url: map has no entry for key \"clusterHash\""),
        "{}",
        n.message
    );
}

/// What `ksit render` writes reads back, through a YAML 1.1 reader's eyes too (Kubernetes tools), as
/// the same strings: `on`, `yes`, `n` and the like are quoted; block scalars are left alone.
#[test]
fn rendered_yaml_keeps_yaml11_words_strings() {
    let v = json!({"match": [{"headers": {"x-maintenance": {"exact": "on"}, "no": {"exact": "y"}}}],
            "list": ["off", "On", "fine", "on time"], "text": "line one\non\n", "n": 1, "b": true});
    let yaml = quote_yaml11_words(&serde_yaml::to_string(&v).unwrap_or_default());
    for bare in [": on\n", ": y\n", "- off\n", "- On\n", "\nno:"] {
        assert!(!yaml.contains(bare), "{bare:?} left plain in:\n{yaml}");
    }
    assert!(
        yaml.contains("  on\n"),
        "block scalar content kept:\n{yaml}"
    );
    let back: Value = serde_yaml::from_str(&yaml).unwrap_or_default();
    assert_eq!(back, v, "{yaml}");
}
