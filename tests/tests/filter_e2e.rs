//! The filter in a real Envoy, on every version of `envoy_versions()`: each test asserts what the engine
//! predicts for the same headers (the same decision code runs natively here and as Wasm in Envoy).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ksit_policy::{Engine, Request};
use ksit_tests::backend::{start_all, Backend};
use ksit_tests::client::{abandon, Client};
use ksit_tests::envoy::{
    add_listener_copy, envoy_versions, prom_value, validate, Envoy, EnvoyConfig, FilterConfig,
    Upstream,
};
use serde_json::{json, Value};
use std::time::Duration;

const HOST: &str = "myapp.example.com";
const DESTS: [&str; 4] = [
    "api-service-v1",
    "api-service-v2",
    "web-service",
    "passthrough",
];

struct Rig {
    envoy: Envoy,
    backends: Vec<Backend>,
    client: Client,
}

impl Rig {
    async fn start(version: &str, policy: &Value, env: &[(&str, &str)], concurrency: u32) -> Rig {
        Self::start_routed(version, policy, env, concurrency, None).await
    }

    /// With the routes of `virtual_service` (a VirtualService's spec) instead of one header route per
    /// destination.
    async fn start_routed(
        version: &str,
        policy: &Value,
        env: &[(&str, &str)],
        concurrency: u32,
        virtual_service: Option<Value>,
    ) -> Rig {
        Self::start_on_node(version, policy, env, concurrency, virtual_service, None).await
    }

    /// On a proxy whose bootstrap carries `node_metadata` (as istiod's does, with CLUSTER_ID).
    async fn start_on_node(
        version: &str,
        policy: &Value,
        env: &[(&str, &str)],
        concurrency: u32,
        virtual_service: Option<Value>,
        node_metadata: Option<Value>,
    ) -> Rig {
        let backends = start_all(&DESTS).await.unwrap();
        let upstreams = Upstream::for_backends(&backends);
        let mut cfg = EnvoyConfig::new(version, upstreams);
        cfg.concurrency = concurrency;
        cfg.default_destination = Some("passthrough".into());
        cfg.virtual_service = virtual_service;
        cfg.node_metadata = node_metadata;
        let mut f = FilterConfig::new(policy).unwrap();
        f.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        cfg.filter = Some(f);
        let envoy = Envoy::start(&cfg).await.unwrap();
        let client = Client::new(&envoy.base_url());
        Rig {
            envoy,
            backends,
            client,
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> ksit_tests::client::Response {
        let mut h = vec![("host", HOST)];
        h.extend_from_slice(headers);
        self.client.get(path, &h).await.unwrap()
    }
}

fn seed() -> Value {
    ksit_tests::seed_spec().unwrap()
}

fn seed_without_faults() -> Value {
    let mut s = seed();
    s["http"][0].as_object_mut().unwrap().remove("fault");
    s
}

/// What the engine decides for these headers (path, authority and extra headers).
fn predict(
    policy: &Value,
    path: &str,
    headers: &[(&str, &str)],
) -> (Option<String>, bool, Option<u32>) {
    let e = Engine::from_json(policy.to_string().as_bytes(), None).unwrap();
    let mut pairs: Vec<(&[u8], &[u8])> = vec![
        (b":path", path.as_bytes()),
        (b":authority", HOST.as_bytes()),
        (b":method", b"GET"),
    ];
    pairs.extend(headers.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
    let d = e.decide(&Request::new(&pairs), 0);
    (
        d.destination.map(|d| d.key.clone()),
        d.delay.is_some_and(|r| r.applied),
        d.abort.filter(|r| r.applied).map(|r| match r.spec.status {
            ksit_policy::AbortStatus::Http(s) => s,
            ksit_policy::AbortStatus::Grpc(_) => 200,
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_api_and_web_and_passes_the_rest_unchanged() {
    for v in envoy_versions() {
        let rig = Rig::start(&v, &seed_without_faults(), &[], 1).await;
        let r = rig.get("/web/index.html", &[]).await;
        assert_eq!(
            (r.status, r.backend()),
            (200, Some("web-service")),
            "{v}: {r:?}"
        );
        let r = rig.get("/api/health", &[("x-request-id", "a")]).await;
        assert!(
            r.backend().unwrap().starts_with("api-service-v"),
            "{v}: {r:?}"
        );
        // No rule matches: no destination is set and a client's own header is removed.
        let r = rig
            .get("/other", &[("x-ksit-destination", "api-service-v2")])
            .await;
        assert_eq!(r.backend(), Some("passthrough"), "{v}");
        let echoed: Value = serde_json::from_str(&r.body).unwrap();
        assert!(
            echoed["headers"].get("x-ksit-destination").is_none(),
            "{v}: spoofed header reached the backend"
        );
        // Another host: passes unchanged too.
        let r = rig
            .client
            .get(
                "/api",
                &[
                    ("host", "other.example.com"),
                    ("x-ksit-destination", "api-service-v2"),
                ],
            )
            .await
            .unwrap();
        assert_eq!(r.backend(), Some("passthrough"), "{v}");
        // A matched request's spoofed header is replaced by the filter's own choice.
        let (dest, _, _) = predict(
            &seed_without_faults(),
            "/api/x",
            &[("x-request-id", "spoof-1")],
        );
        let r = rig
            .get(
                "/api/x",
                &[
                    ("x-request-id", "spoof-1"),
                    ("x-ksit-destination", "web-service"),
                ],
            )
            .await;
        assert_eq!(r.backend(), dest.as_deref(), "{v}");
        let prom = rig.envoy.prometheus_flushed().await.unwrap();
        assert!(
            prom_value(&prom, "ksit_spoofed_destination_total", &[]).unwrap() >= 3.0,
            "{v}: {prom}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_is_90_10_and_matches_the_engine() {
    for v in envoy_versions() {
        let policy = seed_without_faults();
        let rig = Rig::start(&v, &policy, &[], 2).await;
        let n = 2000;
        let mut canary = 0;
        for i in 0..n {
            let id = format!("split-{i}");
            let r = rig.get("/api/items", &[("x-request-id", &id)]).await;
            let (want, _, _) = predict(&policy, "/api/items", &[("x-request-id", &id)]);
            assert_eq!(
                r.backend(),
                want.as_deref(),
                "{v}: request {id} went elsewhere than the engine decided"
            );
            canary += (r.backend() == Some("api-service-v2")) as u32;
        }
        let pct = f64::from(canary) * 100.0 / f64::from(n);
        assert!(
            (7.5..=12.5).contains(&pct),
            "{v}: canary share {pct}% not within 10 ± 2.5"
        );
        let prom = rig.envoy.prometheus_flushed().await.unwrap();
        let v2 = prom_value(
            &prom,
            "ksit_requests_total",
            &[("ksit_rule", "api"), ("ksit_destination", "api-service-v2")],
        )
        .unwrap();
        assert_eq!(
            v2 as u32, canary,
            "{v}: metric disagrees with what the backends saw"
        );
        assert_eq!(rig.backends[1].count() as u32, canary);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_users_keep_their_destination_across_workers() {
    for v in envoy_versions() {
        let mut policy = seed_without_faults();
        policy["http"][0]["route"][0]["weight"] = json!(50);
        policy["http"][0]["route"][1]["weight"] = json!(50);
        let rig = Rig::start(&v, &policy, &[], 2).await;
        let mut seen = std::collections::BTreeSet::new();
        for user in ["alice", "bob", "carol", "dave"] {
            let mut got = std::collections::BTreeSet::new();
            // Concurrent requests spread over both workers; fresh connections each round.
            for round in 0..50 {
                let mut tasks = Vec::new();
                for k in 0..4 {
                    let c = Client::new(&rig.envoy.base_url());
                    let id = format!("{user}-{round}-{k}");
                    tasks.push(tokio::spawn(async move {
                        c.get(
                            "/api/x",
                            &[("host", HOST), ("x-user-id", user), ("x-request-id", &id)],
                        )
                        .await
                        .unwrap()
                    }));
                }
                for t in tasks {
                    got.insert(t.await.unwrap().backend().unwrap().to_string());
                }
            }
            assert_eq!(
                got.len(),
                1,
                "{v}: user {user} saw {got:?} over 200 requests"
            );
            let (want, _, _) = predict(&policy, "/api/x", &[("x-user-id", user)]);
            assert_eq!(got.iter().next().cloned(), want, "{v}: user {user}");
            seen.extend(got);
        }
        assert_eq!(
            seen.len(),
            2,
            "{v}: four users at 50/50 all landed on one side: {seen:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_header_forces_a_destination() {
    for v in envoy_versions() {
        let rig = Rig::start(&v, &seed_without_faults(), &[], 1).await;
        for i in 0..30 {
            let r = rig
                .get(
                    "/api/x",
                    &[
                        ("x-ksit-canary", "api-service-v2"),
                        ("x-request-id", &i.to_string()),
                    ],
                )
                .await;
            assert_eq!(r.backend(), Some("api-service-v2"), "{v}");
        }
        // A value that is not a destination of the rule is ignored.
        let (want, _, _) = predict(&seed_without_faults(), "/api/x", &[("x-request-id", "o1")]);
        let r = rig
            .get(
                "/api/x",
                &[("x-ksit-canary", "web-service"), ("x-request-id", "o1")],
            )
            .await;
        assert_eq!(r.backend(), want.as_deref(), "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_applies_to_the_rolled_requests_only() {
    for v in envoy_versions() {
        let mut policy = seed_without_faults();
        policy["http"][0]["fault"] =
            json!({"delay": {"fixedDelay": "400ms", "percentage": {"value": 30}}});
        let rig = Rig::start(&v, &policy, &[], 1).await;
        let mut tasks = Vec::new();
        for i in 0..60 {
            let c = rig.client.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("delay-{i}");
                let r = c
                    .get("/api/x", &[("host", HOST), ("x-request-id", &id)])
                    .await
                    .unwrap();
                (id, r)
            }));
        }
        let mut delayed = 0;
        for t in tasks {
            let (id, r) = t.await.unwrap();
            let (_, want_delay, _) = predict(&policy, "/api/x", &[("x-request-id", &id)]);
            assert_eq!(r.status, 200, "{v}");
            if want_delay {
                delayed += 1;
                assert!(
                    r.elapsed >= Duration::from_millis(400),
                    "{v}: {id} should wait 400ms, took {:?}",
                    r.elapsed
                );
            } else {
                assert!(
                    r.elapsed < Duration::from_millis(300),
                    "{v}: {id} was not rolled but took {:?}",
                    r.elapsed
                );
            }
        }
        assert!(
            delayed > 5 && delayed < 40,
            "{v}: {delayed} of 60 delayed at 30%"
        );
        let prom = rig.envoy.prometheus_flushed().await.unwrap();
        assert_eq!(
            prom_value(&prom, "ksit_delays_total", &[("ksit_rule", "api")]),
            Some(f64::from(delayed)),
            "{v}"
        );
        assert_eq!(
            prom_value(&prom, "ksit_active_delays", &[]),
            Some(0.0),
            "{v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_answers_the_status_at_the_configured_rate() {
    for v in envoy_versions() {
        let mut policy = seed_without_faults();
        policy["http"][0]["fault"] =
            json!({"abort": {"httpStatus": 503, "percentage": {"value": 20}}});
        let rig = Rig::start(&v, &policy, &[], 2).await;
        let n = 1000;
        let mut aborted = 0;
        for i in 0..n {
            let id = format!("abort-{i}");
            let r = rig.get("/api/x", &[("x-request-id", &id)]).await;
            let (_, _, want) = predict(&policy, "/api/x", &[("x-request-id", &id)]);
            match want {
                Some(s) => {
                    aborted += 1;
                    assert_eq!(
                        (r.status, r.backend(), r.header("x-ksit-fault")),
                        (s as u16, None, Some("abort")),
                        "{v}: {id}"
                    );
                }
                None => assert_eq!(r.status, 200, "{v}: {id}"),
            }
        }
        let pct = f64::from(aborted) * 100.0 / f64::from(n);
        assert!((16.0..=24.0).contains(&pct), "{v}: abort rate {pct}%");
        let prom = rig.envoy.prometheus_flushed().await.unwrap();
        assert_eq!(
            prom_value(&prom, "ksit_aborts_total", &[("ksit_rule", "api")]),
            Some(f64::from(aborted)),
            "{v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_cluster_override_follows_the_cluster_name() {
    for v in envoy_versions() {
        let mut policy = seed_without_faults();
        policy["overrides"] = json!([{"clusters": ["cluster1"], "http": [{"name": "api",
            "route": [{"destination": {"host": "api-service-v2"}, "weight": 100}]}]}]);
        // The cluster named in the pluginConfig...
        let mut c1 = policy.clone();
        c1["cluster"] = json!("cluster1");
        let rig = Rig::start(&v, &c1, &[], 1).await;
        for i in 0..40 {
            assert_eq!(
                rig.get("/api/x", &[("x-request-id", &i.to_string())])
                    .await
                    .backend(),
                Some("api-service-v2"),
                "{v}"
            );
        }
        drop(rig);
        // ...or, when the config names none, from the VM environment.
        let rig = Rig::start(&v, &policy, &[("KSIT_CLUSTER", "cluster1")], 1).await;
        assert_eq!(
            rig.get("/api/x", &[("x-request-id", "e1")]).await.backend(),
            Some("api-service-v2"),
            "{v}"
        );
        drop(rig);
        // Elsewhere the base split applies.
        let rig = Rig::start(&v, &policy, &[("KSIT_CLUSTER", "cluster2")], 1).await;
        let v1 = {
            let mut n = 0;
            for i in 0..100 {
                n += (rig
                    .get("/api/x", &[("x-request-id", &format!("c2-{i}"))])
                    .await
                    .backend()
                    == Some("api-service-v1")) as u32;
            }
            n
        };
        assert!(v1 > 75, "{v}: cluster2 sent only {v1}/100 to stable");
    }
}

/// Of 100 users, how many `/api` sent to the stable destination (api-service-v1).
async fn stable_share(rig: &Rig, tag: &str) -> u32 {
    let mut n = 0;
    for i in 0..100 {
        n += (rig
            .get("/api/x", &[("x-user-id", &format!("{tag}-{i}"))])
            .await
            .backend()
            == Some("api-service-v1")) as u32;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_plugin_config_follows_each_proxys_istio_cluster_id() {
    for v in envoy_versions() {
        // One pluginConfig for every cluster: no `cluster`, the overrides of both clusters, and cluster2's
        // Istio cluster ID named differently from its ksit name.
        let mut policy = seed_without_faults();
        policy["overrides"] = json!([
            {"clusters": ["cluster1"], "http": [{"name": "api", "route": [
                {"destination": {"host": "api-service-v1"}, "weight": 0},
                {"destination": {"host": "api-service-v2"}, "weight": 100}]}]},
            {"clusters": ["cluster2"], "http": [{"name": "api", "route": [
                {"destination": {"host": "api-service-v1"}, "weight": 50},
                {"destination": {"host": "api-service-v2"}, "weight": 50}]}]}
        ]);
        policy["clusterIds"] = json!({"Kubernetes-east": "cluster2"});
        let node = |id: &str| Some(json!({"CLUSTER_ID": id}));
        let on = |meta| Rig::start_on_node(&v, &policy, &[], 1, None, meta);
        let rig = on(node("cluster1")).await;
        assert!(
            rig.envoy
                .log()
                .contains("cluster cluster1 (from CLUSTER_ID node metadata)"),
            "{v}: {}",
            rig.envoy.log_tail(30)
        );
        assert_eq!(
            stable_share(&rig, "a").await,
            0,
            "{v}: cluster1's override: all canary"
        );
        drop(rig);
        let rig = on(node("Kubernetes-east")).await;
        let c2 = stable_share(&rig, "a").await;
        assert!(
            (30..=70).contains(&c2),
            "{v}: cluster2's 50/50 override gave {c2}/100 stable"
        );
        // The same users as the engine predicts for cluster2.
        let e = Engine::from_json(policy.to_string().as_bytes(), Some("cluster2")).unwrap();
        let predicted = (0..100)
            .filter(|i| {
                let user = format!("a-{i}");
                let pairs: Vec<(&[u8], &[u8])> = vec![
                    (b":path", b"/api/x"),
                    (b":authority", HOST.as_bytes()),
                    (b"x-user-id", user.as_bytes()),
                ];
                e.decide(&Request::new(&pairs), 0)
                    .destination
                    .map(|d| d.key.as_str())
                    == Some("api-service-v1")
            })
            .count() as u32;
        assert_eq!(c2, predicted, "{v}");
        drop(rig);
        // Without the metadata: the base policy (90/10), and it says so in a metric.
        let rig = on(None).await;
        let base = stable_share(&rig, "a").await;
        assert!(
            base > 75,
            "{v}: no CLUSTER_ID sent only {base}/100 to stable"
        );
        let stats = rig.envoy.prometheus().await.unwrap();
        // Once per VM that configured it (the main thread's and each worker's).
        assert!(
            prom_value(&stats, "ksit_cluster_unknown_total", &[]).is_some_and(|n| n >= 1.0),
            "{v}"
        );
        drop(rig);
        // A pluginConfig that names its cluster wins over the node metadata, and KSIT_CLUSTER too.
        let mut named = policy.clone();
        named["cluster"] = json!("cluster1");
        let rig = Rig::start_on_node(&v, &named, &[], 1, None, node("Kubernetes-east")).await;
        assert_eq!(
            stable_share(&rig, "a").await,
            0,
            "{v}: the named cluster1 wins"
        );
        drop(rig);
        let rig = Rig::start_on_node(
            &v,
            &policy,
            &[("KSIT_CLUSTER", "cluster1")],
            1,
            None,
            node("Kubernetes-east"),
        )
        .await;
        assert_eq!(
            stable_share(&rig, "a").await,
            0,
            "{v}: KSIT_CLUSTER wins over CLUSTER_ID"
        );
        let stats = rig.envoy.prometheus().await.unwrap();
        assert_eq!(
            prom_value(&stats, "ksit_cluster_unknown_total", &[]),
            None,
            "{v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_active_faults_caps_paused_requests() {
    for v in envoy_versions() {
        let mut policy = seed_without_faults();
        policy["maxActiveFaults"] = json!(2);
        policy["http"][0]["fault"] =
            json!({"delay": {"fixedDelay": "1500ms", "percentage": {"value": 100}}});
        let rig = Rig::start(&v, &policy, &[], 1).await;
        let mut tasks = Vec::new();
        for i in 0..6 {
            let c = Client::new(&rig.envoy.base_url());
            tasks.push(tokio::spawn(async move {
                c.get(
                    "/api/x",
                    &[("host", HOST), ("x-request-id", &format!("m{i}"))],
                )
                .await
                .unwrap()
            }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut slow = 0;
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(r.status, 200);
            slow += (r.elapsed >= Duration::from_millis(1500)) as u32;
        }
        assert_eq!(slow, 2, "{v}: exactly maxActiveFaults requests may be held");
        let prom = rig.envoy.prometheus_flushed().await.unwrap();
        assert_eq!(
            prom_value(&prom, "ksit_faults_skipped_total", &[("ksit_rule", "api")]),
            Some(4.0),
            "{v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_during_a_delay_leaves_nothing_paused() {
    for v in envoy_versions() {
        let mut policy = seed_without_faults();
        policy["maxActiveFaults"] = json!(3);
        policy["http"][0]["fault"] =
            json!({"delay": {"fixedDelay": "30s", "percentage": {"value": 100}}});
        let rig = Rig::start(&v, &policy, &[], 1).await;
        for i in 0..3 {
            abandon(
                rig.envoy.listener,
                "/api/x",
                &[("host", HOST), ("x-request-id", &format!("gone-{i}"))],
                Duration::from_millis(200),
            )
            .await
            .unwrap();
        }
        // Gauge back to 0 long before the 30s delay would end.
        let mut active = None;
        for _ in 0..50 {
            let prom = rig.envoy.prometheus_flushed().await.unwrap();
            active = prom_value(&prom, "ksit_active_delays", &[]);
            if active == Some(0.0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(active, Some(0.0), "{v}: paused requests were not freed");
        // And their places are free again: a new request is held (not skipped).
        let c = rig.client.clone().with_timeout(Duration::from_millis(700));
        let r = c
            .get("/api/x", &[("host", HOST), ("x-request-id", "after")])
            .await;
        assert!(
            r.is_err(),
            "{v}: the request should be held by the delay, got {r:?}"
        );
        let prom = rig.envoy.prometheus_flushed().await.unwrap();
        assert_eq!(
            prom_value(&prom, "ksit_faults_skipped_total", &[("ksit_rule", "api")]),
            Some(0.0),
            "{v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_exported() {
    for v in envoy_versions() {
        let rig = Rig::start(&v, &seed_without_faults(), &[], 1).await;
        rig.get("/web", &[]).await;
        rig.get("/nope", &[]).await;
        let prom = rig.envoy.prometheus_flushed().await.unwrap();
        assert_eq!(
            prom_value(
                &prom,
                "ksit_requests_total",
                &[("ksit_rule", "web"), ("ksit_destination", "web-service")]
            ),
            Some(1.0),
            "{v}"
        );
        assert_eq!(
            prom_value(&prom, "ksit_unmatched_total", &[]),
            Some(1.0),
            "{v}"
        );
        for m in [
            "ksit_delays_total",
            "ksit_aborts_total",
            "ksit_faults_skipped_total",
            "ksit_active_delays",
            "ksit_config_errors_total",
        ] {
            assert!(
                prom_value(&prom, m, &[]).is_some(),
                "{v}: {m} missing from /stats/prometheus"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_is_rejected_with_the_field_path() {
    for v in envoy_versions() {
        let b = start_all(&["api-service-v1"]).await.unwrap();
        let ups = vec![Upstream {
            destination: "api-service-v1".into(),
            addr: b[0].addr,
        }];
        let mut bad = seed();
        bad["http"][0]["route"][1]["weight"] = json!(-10);
        bad["http"][1]["match"][0]["uri"] = json!({"regex": "(broken"});
        let mut cfg = EnvoyConfig::new(&v, ups.clone());
        cfg.filter = Some(FilterConfig::new(&bad).unwrap());
        let out = validate(&v, &cfg.bootstrap(0, 0)).unwrap();
        assert!(!out.ok, "{v}: envoy accepted a bad pluginConfig");
        assert!(
            out.log
                .contains("spec.http[0].route[1].weight: must be >= 0"),
            "{v}: {}",
            out.log
        );
        assert!(
            out.log
                .contains("spec.http[1].match[0].uri.regex: invalid regex"),
            "{v}: {}",
            out.log
        );
        // The harness's own configs are valid, with and without the filter.
        cfg.filter = Some(FilterConfig::new(&seed()).unwrap());
        let ok = validate(&v, &cfg.bootstrap(0, 0)).unwrap();
        assert!(ok.ok, "{v}: {}", ok.log);
        cfg.filter = None;
        assert!(validate(&v, &cfg.bootstrap(0, 0)).unwrap().ok);
        // And starting Envoy with it fails rather than serving without the policy.
        let mut cfg = EnvoyConfig::new(&v, ups);
        cfg.filter = Some(FilterConfig::new(&bad).unwrap());
        assert!(
            Envoy::start(&cfg).await.is_err(),
            "{v}: envoy started with a bad pluginConfig"
        );
    }
}

/// What the controller renders for the TrafficPolicies on one gateway: one filter, a `policies` list indexed
/// by host; rules of the same name in two policies count separately (`ksit_policy` label).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_policies_route_each_host_by_its_own_policy() {
    let mut shop = seed_without_faults();
    shop["hosts"] = json!(["shop.example.com"]);
    shop["http"][1]["route"][0]["destination"]["host"] = json!("api-service-v2");
    let config = json!({"policies": [
        {"name": "default/myapp", "spec": seed_without_faults()},
        {"name": "shop/front", "spec": shop},
    ]});
    for v in envoy_versions() {
        let rig = Rig::start(&v, &config, &[], 1).await;
        let myapp = rig.get("/web", &[]).await;
        assert_eq!(myapp.backend(), Some("web-service"), "{v}");
        let shop = rig
            .client
            .get("/web", &[("host", "shop.example.com")])
            .await
            .unwrap();
        assert_eq!(shop.backend(), Some("api-service-v2"), "{v}");
        let other = rig
            .client
            .get("/web", &[("host", "other.example.com")])
            .await
            .unwrap();
        assert_eq!(other.backend(), Some("passthrough"), "{v}");
        let prom = rig.envoy.prometheus_flushed().await.unwrap();
        for (policy, dest) in [
            ("default/myapp", "web-service"),
            ("shop/front", "api-service-v2"),
        ] {
            assert_eq!(
                prom_value(
                    &prom,
                    "ksit_requests_total",
                    &[
                        ("ksit_policy", policy),
                        ("ksit_rule", "web"),
                        ("ksit_destination", dest)
                    ]
                ),
                Some(1.0),
                "{v}: {policy}"
            );
        }
    }
}

/// What the controller renders for one cluster: the pluginConfig (`headerForStable: false`) and the
/// VirtualService, its routes translated as istiod would. Requests the filter sends to a rule's stable
/// destination keep the default route and reach it unmarked; the canary share is marked and routed by the
/// header; a client's header is replaced even when the filter picks the stable destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_policy_sends_stable_requests_by_the_default_route() {
    use ksit_controller::desired::{plugin_config, render_virtual_service};
    use ksit_controller::resources::{TrafficPolicy, TrafficPolicyResourceSpec};
    let spec: ksit_policy::TrafficPolicySpec =
        serde_json::from_value(seed_without_faults()).unwrap();
    let mut tp = TrafficPolicy::new("myapp", TrafficPolicyResourceSpec(spec.clone()));
    tp.metadata.namespace = Some("default".into());
    let config = plugin_config(&spec, "cluster1", true);
    assert_eq!(config["headerForStable"], false);
    let vs = render_virtual_service(
        &tp,
        ksit_controller::desired::Target::Cluster("cluster1"),
        &[],
    )
    .manifest["spec"]
        .clone();
    let echoed = |r: &ksit_tests::client::Response| {
        r.json().unwrap()["headers"]["x-ksit-destination"]
            .as_str()
            .map(String::from)
    };
    for v in envoy_versions() {
        let rig = Rig::start_routed(&v, &config, &[], 1, Some(vs.clone())).await;
        let (mut stable, mut canary) = (0, 0);
        let mut stable_id = None;
        for i in 0..200 {
            let id = format!("req-{i}");
            let h = [("x-request-id", id.as_str())];
            let (dest, _, _) = predict(&config, "/api/orders", &h);
            let r = rig.get("/api/orders", &h).await;
            assert_eq!(r.backend(), dest.as_deref(), "{v}: {id}");
            if dest.as_deref() == Some("api-service-v1") {
                assert_eq!(echoed(&r), None, "{v}: {id}: a stable request was marked");
                stable += 1;
                stable_id = Some(id);
            } else {
                assert_eq!(echoed(&r).as_deref(), Some("api-service-v2"), "{v}: {id}");
                canary += 1;
            }
        }
        assert!(
            stable > 150 && canary > 5,
            "{v}: {stable} stable, {canary} canary"
        );
        // A client's header is replaced by the stable destination, not left to route the request.
        let id = stable_id.unwrap();
        let r = rig
            .get(
                "/api/orders",
                &[
                    ("x-request-id", &id),
                    ("x-ksit-destination", "api-service-v2"),
                ],
            )
            .await;
        assert_eq!(r.backend(), Some("api-service-v1"), "{v}");
        assert_eq!(echoed(&r).as_deref(), Some("api-service-v1"), "{v}");
        // A rule's only destination is its stable one.
        let r = rig.get("/web/index.html", &[]).await;
        assert_eq!(
            (r.backend(), echoed(&r)),
            (Some("web-service"), None),
            "{v}"
        );
    }
}

/// Envoy with two listeners like the rig's: the first with `filter_a`, the second (on the returned port)
/// with `filter_b`.
async fn two_listeners(
    v: &str,
    filter_a: &FilterConfig,
    filter_b: Value,
) -> (Envoy, Vec<Backend>, u16) {
    let backends = start_all(&DESTS).await.unwrap();
    let mut cfg = EnvoyConfig::new(v, Upstream::for_backends(&backends));
    cfg.default_destination = Some("passthrough".into());
    cfg.filter = Some(filter_a.clone());
    let envoy = Envoy::start_with(&cfg, |b: &mut Value| {
        add_listener_copy(b, "second", 0, filter_b.clone())
    })
    .await
    .unwrap();
    let second_port = envoy.listener_named("second").await.unwrap().port();
    (envoy, backends, second_port)
}

/// A request to `c` that must reach `dest` after `delay`, and not much later: a delay is released by a 10 ms
/// tick, while a root with nothing held ticks every 500 ms, so a release that waits for the wrong root's
/// tick is up to ~450 ms late (for a 50 ms delay).
async fn held_then_routed(c: &Client, id: &str, dest: &str, delay: Option<Duration>, v: &str) {
    let started = std::time::Instant::now();
    let r = c
        .get("/api/x", &[("host", HOST), ("x-request-id", id)])
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.backend(), Some(dest), "{v}: {r:?}");
    if let Some(d) = delay {
        assert!(
            took >= d && took < d + Duration::from_millis(200),
            "{v}: held {took:?} for a {d:?} delay"
        );
    }
}

fn routed_to(dest: &str, delay_ms: Option<u64>) -> Value {
    let mut p = seed_without_faults();
    p["http"][0]["route"] = json!([{"destination": {"host": dest}, "weight": 100}]);
    if let Some(ms) = delay_ms {
        p["http"][0]["fault"] =
            json!({"delay": {"fixedDelay": format!("{ms}ms"), "percentage": {"value": 100}}});
    }
    p
}

/// Two ksit filters that share one VM (same module and `vm_id`, as Istio does for every WasmPlugin that loads
/// the ksit module on a proxy) each apply their own policy: the module keeps no per-stream context, so a
/// request finds its filter instance by `plugin_name`. The second one also delays, so its own tick must
/// release its requests, on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_sharing_a_vm_each_apply_their_own_policy() {
    let delay = Duration::from_millis(50);
    for v in envoy_versions() {
        let a = FilterConfig::new(&routed_to("api-service-v1", None)).unwrap();
        let mut b = FilterConfig::new(&routed_to("api-service-v2", Some(50)))
            .unwrap()
            .http_filter();
        b["typed_config"]["config"]["name"] = json!("ksit-b");
        let (envoy, _backends, second_port) = two_listeners(&v, &a, b).await;
        let ca = Client::new(&envoy.base_url());
        let cb = Client::new(&format!("http://127.0.0.1:{second_port}"));
        for i in 0..10 {
            let id = format!("shared-{i}");
            held_then_routed(&ca, &id, "api-service-v1", None, &v).await;
            held_then_routed(&cb, &id, "api-service-v2", Some(delay), &v).await;
        }
        assert!(
            envoy.log().contains("2 filter instances share this VM"),
            "{v}: the two filters did not share a VM, so this test proves nothing:\n{}",
            envoy.log_tail(30)
        );
    }
}

/// Two live roots with one name in one VM (a name reused with another configuration; also the shape of a
/// configuration update while the old root drains). Requests on both listeners are served by the newest
/// root, and their delays are released on time although Envoy ticks each root separately: the root holding
/// a request is made to tick fast, not the root Envoy created the stream under.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_named_filters_in_one_vm_release_delays_on_time() {
    let delay = Duration::from_millis(50);
    for v in envoy_versions() {
        let policy = routed_to("api-service-v2", Some(50));
        let f = FilterConfig::new(&policy).unwrap();
        // Another configuration (an extra rule) that decides /api the same way.
        let mut other = policy.clone();
        other["http"].as_array_mut().unwrap().push(
            json!({"name": "extra", "match": [{"uri": {"prefix": "/extra"}}],
                         "route": [{"destination": {"host": "web-service"}}]}),
        );
        let same_name = FilterConfig::new(&other).unwrap().http_filter();
        let (envoy, _backends, second_port) = two_listeners(&v, &f, same_name).await;
        let c1 = Client::new(&envoy.base_url());
        let c2 = Client::new(&format!("http://127.0.0.1:{second_port}"));
        for i in 0..12 {
            let id = format!("both-{i}");
            held_then_routed(&c1, &id, "api-service-v2", Some(delay), &v).await;
            held_then_routed(&c2, &id, "api-service-v2", Some(delay), &v).await;
        }
        let log = envoy.log();
        assert!(
            log.contains("2 filter instances share this VM")
                && log.contains("also named 'ksit' with a different pluginConfig"),
            "{v}: expected two roots named ksit, warned about:\n{}",
            envoy.log_tail(30)
        );
    }
}

/// Two ksit filters in one chain (two WasmPlugins on the same proxy, e.g. policies with the same selector
/// but different failStrategy), governing different hosts: neither undoes the other's decision, and a
/// client's own destination is still removed on every host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_filters_keep_each_others_decisions() {
    const OTHER: &str = "other.example.com";
    let mut policy_a = seed_without_faults();
    policy_a["http"][0]["route"] =
        json!([{"destination": {"host": "api-service-v2"}, "weight": 100}]);
    let mut policy_b = seed_without_faults();
    policy_b["hosts"] = json!([OTHER]);
    policy_b["http"] = json!([{"name": "other-api", "match": [{"uri": {"prefix": "/api"}}],
                               "route": [{"destination": {"host": "web-service"}}]}]);
    for v in envoy_versions() {
        let backends = start_all(&DESTS).await.unwrap();
        let upstreams = Upstream::for_backends(&backends);
        let mut cfg = EnvoyConfig::new(&v, upstreams);
        cfg.default_destination = Some("passthrough".into());
        cfg.filter = Some(FilterConfig::new(&policy_a).unwrap());
        let mut b = FilterConfig::new(&policy_b).unwrap().http_filter();
        b["typed_config"]["config"]["name"] = json!("ksit-b");
        cfg.extra_http_filters_after = vec![b.to_string()];
        let envoy = Envoy::start(&cfg).await.unwrap();
        let c = Client::new(&envoy.base_url());
        let get = |host: &'static str, path: &'static str, dest: Option<&'static str>| {
            let c = c.clone();
            async move {
                let mut h = vec![("host", host), ("x-request-id", "chain")];
                h.extend(dest.map(|d| ("x-ksit-destination", d)));
                c.get(path, &h).await.unwrap()
            }
        };
        // The first filter's decision survives the second (which does not govern the host).
        let r = get(HOST, "/api/x", None).await;
        assert_eq!(r.backend(), Some("api-service-v2"), "{v}: {r:?}");
        // The second filter decides its own host.
        let r = get(OTHER, "/api/x", None).await;
        assert_eq!(r.backend(), Some("web-service"), "{v}: {r:?}");
        // A client's destination: replaced on a decided request, removed where no rule matches, and removed
        // on a host no filter governs.
        let r = get(OTHER, "/api/x", Some("api-service-v1")).await;
        assert_eq!(r.backend(), Some("web-service"), "{v}: {r:?}");
        let r = get(HOST, "/other", Some("api-service-v1")).await;
        assert_eq!(r.backend(), Some("passthrough"), "{v}: {r:?}");
        let r = get(OTHER, "/other", Some("api-service-v1")).await;
        assert_eq!(r.backend(), Some("passthrough"), "{v}: {r:?}");
        let r = get("third.example.com", "/api/x", Some("api-service-v1")).await;
        assert_eq!(r.backend(), Some("passthrough"), "{v}: {r:?}");
        assert!(
            envoy.log().contains("2 filter instances share this VM"),
            "{v}: the filters did not share a VM:\n{}",
            envoy.log_tail(30)
        );
    }
}

/// KubeStellar delivery and GitOps copy one rendered WasmPlugin and VirtualService to every cluster: in each
/// cluster's Envoy (CLUSTER_ID in its node metadata, as istiod bootstraps it) they route every request as the
/// per-cluster rendering does, including a destination only one cluster's override uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rendering_for_every_cluster_routes_as_each_clusters_own() {
    use ksit_controller::desired::{self, ModuleSource, RenderSettings};
    use ksit_controller::manifests::{hub_from_documents, read_documents};
    let example = ksit_tests::repo_root().join("manifests/examples/multi-cluster-mesh");
    let mut docs = read_documents(&[example]).unwrap();
    let tp = docs
        .iter_mut()
        .find(|d| d.kind() == "TrafficPolicy")
        .unwrap();
    let spec = tp.value["spec"].as_object_mut().unwrap();
    spec["http"][0].as_object_mut().unwrap().remove("fault");
    spec.insert(
        "overrides".into(),
        json!([
            {"clusters": ["cluster1"], "http": [{"name": "api", "route": [
                {"destination": {"host": "api-service-v1", "port": {"number": 8080}}, "weight": 0},
                {"destination": {"host": "api-service-v2", "port": {"number": 8080}}, "weight": 100}]}]},
            {"clusters": ["cluster2"], "http": [{"name": "api", "route": [
                {"destination": {"host": "api-service-v1", "port": {"number": 8080}}, "weight": 50},
                {"destination": {"host": "web-service", "port": {"number": 80}}, "weight": 50}]}]}
        ]),
    );
    let hub = hub_from_documents(&docs).unwrap();
    let settings = |per_cluster| RenderSettings {
        module: ModuleSource::Oci {
            image: "oci://r/ksit:1".into(),
        },
        gateway_namespace: "istio-system".into(),
        stable_by_default_route: false,
        per_cluster,
    };
    let (shared, own) = (
        desired::compute(&hub, &settings(false)),
        desired::compute(&hub, &settings(true)),
    );
    let spec_of = |d: &desired::Desired, cluster: &str, kind: &str| -> Value {
        d.clusters[cluster]
            .objects
            .iter()
            .find(|o| o.kind.kind == kind && !o.traffic_policies.is_empty())
            .map(|o| o.manifest["spec"].clone())
            .unwrap()
    };
    // One set: the same objects for both clusters.
    assert_eq!(
        spec_of(&shared, "cluster1", "WasmPlugin"),
        spec_of(&shared, "cluster2", "WasmPlugin")
    );
    assert_eq!(
        spec_of(&shared, "cluster1", "VirtualService"),
        spec_of(&shared, "cluster2", "VirtualService")
    );
    let v = envoy_versions().remove(0);
    for cluster in ["cluster1", "cluster2"] {
        let one = Rig::start_on_node(
            &v,
            &spec_of(&shared, cluster, "WasmPlugin")["pluginConfig"],
            &[],
            1,
            Some(spec_of(&shared, cluster, "VirtualService")),
            Some(json!({"CLUSTER_ID": cluster})),
        )
        .await;
        let per = Rig::start_routed(
            &v,
            &spec_of(&own, cluster, "WasmPlugin")["pluginConfig"],
            &[],
            1,
            Some(spec_of(&own, cluster, "VirtualService")),
        )
        .await;
        let mut seen = std::collections::BTreeMap::new();
        for i in 0..150 {
            let user = format!("u{i}");
            for path in ["/api/orders", "/web/index.html", "/other"] {
                let h = [("x-user-id", user.as_str())];
                let (a, b) = (one.get(path, &h).await, per.get(path, &h).await);
                assert_eq!(a.status, b.status, "{cluster} {path} {user}");
                assert_eq!(a.backend(), b.backend(), "{cluster} {path} {user}");
                *seen.entry(a.backend().map(String::from)).or_insert(0) += 1;
            }
        }
        // The overrides took effect: cluster1 sends /api to v2 only; cluster2 splits v1 and web-service.
        let api_on = |b: &str| seen.get(&Some(b.to_string())).copied().unwrap_or(0);
        match cluster {
            "cluster1" => assert_eq!(api_on("api-service-v1"), 0, "{seen:?}"),
            _ => assert!(
                api_on("web-service") > 150 + 40 && api_on("api-service-v1") > 40,
                "{seen:?}"
            ),
        }
    }
}
