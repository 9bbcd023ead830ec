//! The harness's own tests: a plain Envoy (no filter) of every version in `envoy_versions()` routes on
//! `x-ksit-destination`, the default route works, `validate` accepts the generated bootstrap and rejects a
//! broken one, and the backends, client, stats and shutdown behave.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ksit_tests::{
    abandon, envoy_binary_env_var, envoy_versions, prom_value, raw, raw_status, validate, Backend,
    Backends, Client, Envoy, EnvoyConfig, FilterConfig, Upstream, DESTINATION_HEADER,
};
use std::time::{Duration, Instant};

const DESTS: [&str; 3] = ["api-service-v1", "reviews|v2", "web-service"];

fn unused_upstreams(dests: &[&str]) -> Vec<Upstream> {
    dests
        .iter()
        .map(|d| Upstream {
            destination: d.to_string(),
            addr: "127.0.0.1:9".parse().unwrap(),
        })
        .collect()
}

#[tokio::test]
async fn routes_by_destination_header_and_default_route() {
    for v in envoy_versions() {
        let backends = Backends::start(&DESTS).await.unwrap();
        let mut cfg = EnvoyConfig::new(&v, backends.upstreams());
        cfg.default_destination = Some("web-service".into());
        let envoy = Envoy::start(&cfg).await.unwrap();
        assert_ne!(envoy.listener_addr().port(), 0);
        assert_ne!(envoy.listener_addr(), envoy.admin_addr());
        let c = envoy.client();
        for d in DESTS {
            let r = c
                .get("/some/path?q=1", &[(DESTINATION_HEADER, d)])
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{v} {d}: {}", r.body);
            assert_eq!(r.backend(), Some(d), "{v}");
            let echo = r.echo().unwrap();
            assert_eq!(echo.backend, d);
            assert_eq!(echo.method, "GET");
            assert_eq!(echo.path, "/some/path?q=1");
            assert_eq!(
                echo.headers.get(DESTINATION_HEADER).map(String::as_str),
                Some(d)
            );
        }
        // No header, or one no route knows: the default destination.
        let r = c.get("/", &[]).await.unwrap();
        assert_eq!(r.backend(), Some("web-service"), "{v}");
        let r = c.get("/", &[(DESTINATION_HEADER, "nope")]).await.unwrap();
        assert_eq!(r.backend(), Some("web-service"), "{v}");
        // Matched exactly: `reviews` alone is not `reviews|v2`.
        let r = c
            .get("/", &[(DESTINATION_HEADER, "reviews")])
            .await
            .unwrap();
        assert_eq!(r.backend(), Some("web-service"), "{v}");
        assert_eq!(backends.count("api-service-v1"), 1, "{v}");
        assert_eq!(backends.count("reviews|v2"), 1, "{v}");
        assert_eq!(backends.count("web-service"), 4, "{v}");
        assert_eq!(backends.total(), 6, "{v}");
    }
}

#[tokio::test]
async fn without_a_default_unrouted_requests_get_404_no_route() {
    for v in envoy_versions() {
        let backends = Backends::start(&["api-service-v1"]).await.unwrap();
        let envoy = Envoy::start(&EnvoyConfig::new(&v, backends.upstreams()))
            .await
            .unwrap();
        let c = envoy.client();
        let r = c.get("/", &[]).await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (404, "no route\n"), "{v}");
        assert_eq!(r.backend(), None);
        let r = c
            .get("/", &[(DESTINATION_HEADER, "api-service-v1")])
            .await
            .unwrap();
        assert_eq!(r.backend(), Some("api-service-v1"), "{v}");
        assert_eq!(backends.total(), 1);
    }
}

#[test]
fn validate_accepts_the_generated_bootstrap_and_rejects_a_broken_one() {
    let mut cfg = EnvoyConfig::new("", unused_upstreams(&DESTS));
    cfg.default_destination = Some("web-service".into());
    for v in envoy_versions() {
        cfg.version = v.clone();
        let yaml = cfg.bootstrap_yaml().unwrap();
        let ok = validate(&v, yaml.as_str()).unwrap();
        assert!(ok.ok, "{v}: generated bootstrap rejected:\n{}", ok.log);
        // The other accepted forms: a JSON value, the config itself.
        assert!(validate(&v, &cfg.bootstrap(0, 0)).unwrap().ok, "{v}");
        assert!(validate(&v, &cfg).unwrap().ok, "{v}");
        // A route to a cluster that does not exist.
        let broken = yaml.replace("cluster: dest_web-service", "cluster: dest_missing");
        assert_ne!(broken, yaml, "the replacement must hit");
        let bad = validate(&v, &broken).unwrap();
        assert!(!bad.ok, "{v}: envoy accepted a route to a missing cluster");
        assert!(bad.log.contains("dest_missing"), "{v}: {}", bad.log);
        // An unknown field.
        let bad = validate(&v, &format!("{yaml}\nnot_a_bootstrap_field: 1\n")).unwrap();
        assert!(!bad.ok, "{v}: envoy accepted an unknown field");
        // Not YAML at all.
        assert!(!validate(&v, "{{{").unwrap().ok, "{v}");
    }
}

/// The Wasm part of the bootstrap, checked against Envoy's schema without a module: the filter entry is
/// parsed before the module is loaded, so a missing module fails with a load error, not a schema error.
#[test]
fn wasm_filter_entry_matches_envoys_schema() {
    for v in envoy_versions() {
        let mut cfg = EnvoyConfig::new(&v, unused_upstreams(&["a"]));
        let mut f = FilterConfig {
            wasm: "/nonexistent/ksit_filter.wasm".into(),
            plugin_config: "{}".into(),
            env: vec![("KSIT_CLUSTER".into(), "c1".into())],
            fail_open: true,
            failure_policy: None,
            vm_id: "ksit".into(),
            root_id: "ksit".into(),
        };
        cfg.filter = Some(f.clone());
        let out = validate(&v, &cfg).unwrap();
        assert!(!out.ok, "{v}");
        assert!(
            !out.log.contains("INVALID_ARGUMENT") && !out.log.contains("Unable to parse"),
            "{v}: schema error:\n{}",
            out.log
        );
        assert!(
            out.log.contains("/nonexistent/ksit_filter.wasm"),
            "{v}:\n{}",
            out.log
        );
        f.failure_policy = Some("FAIL_RELOAD".into());
        cfg.filter = Some(f);
        let out = validate(&v, &cfg).unwrap();
        assert!(!out.log.contains("Unable to parse"), "{v}:\n{}", out.log);
    }
}

/// Extra HTTP filters go where asked; here one sets `x-ksit-destination` before the router (as the ksit
/// filter does) and clears the route cache, and Envoy routes on the new value. (A filter that looked the route
/// up before changing the header, like `header_mutation`, which reads per-route config, would leave the
/// stale route in place: the request would go to the default destination.)
#[tokio::test]
async fn extra_http_filters_can_set_the_destination() {
    for v in envoy_versions() {
        let backends = Backends::start(&DESTS).await.unwrap();
        let mut cfg = EnvoyConfig::new(&v, backends.upstreams());
        cfg.default_destination = Some("web-service".into());
        cfg.extra_http_filters_after.push(
            r#"
name: set-destination
typed_config:
  "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
  default_source_code:
    inline_string: |
      function envoy_on_request(h)
        h:headers():replace("x-ksit-destination", "reviews|v2")
        h:clearRouteCache()
      end
"#
            .into(),
        );
        let envoy = Envoy::start(&cfg).await.unwrap();
        let r = envoy.client().get("/", &[]).await.unwrap();
        assert_eq!(
            r.backend(),
            Some("reviews|v2"),
            "{v}: {}",
            envoy.log_tail(20)
        );
        // Not YAML: an error before Envoy runs.
        cfg.extra_http_filters_before.push("[unclosed".into());
        let err = Envoy::start(&cfg).await.err().unwrap();
        assert!(err.to_string().contains("not valid YAML"), "{err}");
    }
}

#[tokio::test]
async fn stats_prometheus_admin_and_log() {
    for v in envoy_versions() {
        let backends = Backends::start(&["web-service"]).await.unwrap();
        let mut cfg = EnvoyConfig::new(&v, backends.upstreams());
        cfg.default_destination = Some("web-service".into());
        let envoy = Envoy::start(&cfg).await.unwrap();
        let c = envoy.client();
        for _ in 0..5 {
            assert_eq!(c.get("/", &[]).await.unwrap().status, 200);
        }
        assert_eq!(
            envoy
                .stat("cluster.dest_web-service.upstream_rq_total")
                .await
                .unwrap(),
            Some(5),
            "{v}"
        );
        assert_eq!(envoy.stat("no.such.stat").await.unwrap(), None);
        let all = envoy.stats("^http\\.ingress\\.").await.unwrap();
        assert!(all.len() > 5, "{v}: {all:?}");
        assert!(all.keys().all(|k| k.starts_with("http.ingress.")));
        let prom = envoy.prometheus().await.unwrap();
        let total = prom_value(
            &prom,
            "envoy_cluster_upstream_rq_total",
            &[("envoy_cluster_name", "dest_web-service")],
        );
        assert_eq!(total, Some(5.0), "{v}");
        let r = envoy.admin_get("/server_info").await.unwrap();
        assert!(r.body.contains(&v), "{v}: {}", r.body);
        assert_eq!(
            envoy
                .admin_post("/logging?level=info")
                .await
                .unwrap()
                .status,
            200
        );
        assert!(envoy.log().contains("starting main dispatch loop"), "{v}");
        envoy
            .wait_for_log("all clusters initialized", Duration::from_secs(1))
            .await
            .unwrap();
        assert!(envoy
            .wait_for_log("never logged", Duration::from_millis(100))
            .await
            .is_err());
    }
}

#[tokio::test]
async fn start_failure_reports_envoys_log_and_drop_stops_envoy() {
    for v in envoy_versions() {
        let cfg = EnvoyConfig::new(&v, vec![]);
        let err = Envoy::start_with(&cfg, |b| {
            b["static_resources"]["clusters"] = serde_json::json!([{"name": "x", "type": "NOPE"}]);
        })
        .await
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("exited"), "{v}: {err}");
        assert!(err.contains("NOPE"), "{v}: the log tail is missing: {err}");

        let envoy = Envoy::start(&cfg).await.unwrap();
        let (pid, admin) = (envoy.pid(), envoy.admin_addr());
        let t = Instant::now();
        drop(envoy);
        assert!(t.elapsed() < Duration::from_secs(2), "{v}: SIGTERM ignored");
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{v}"
        );
        assert!(tokio::net::TcpStream::connect(admin).await.is_err(), "{v}");

        let envoy = Envoy::start(&cfg).await.unwrap();
        assert!(
            envoy.stop().unwrap().success(),
            "{v}: unclean exit on SIGTERM"
        );
    }
}

/// Several Envoys of every version at once (tests run in parallel): distinct ports, no base-id clash.
#[tokio::test]
async fn envoys_run_side_by_side() {
    let backends = Backends::start(&["web-service"]).await.unwrap();
    let mut cfgs = Vec::new();
    for v in envoy_versions() {
        for _ in 0..2 {
            let mut cfg = EnvoyConfig::new(&v, backends.upstreams());
            cfg.default_destination = Some("web-service".into());
            cfg.concurrency = 2;
            cfgs.push(cfg);
        }
    }
    let mut starts = tokio::task::JoinSet::new();
    for cfg in cfgs {
        starts.spawn(async move { Envoy::start(&cfg).await });
    }
    let mut envoys = Vec::new();
    while let Some(e) = starts.join_next().await {
        envoys.push(e.unwrap().unwrap());
    }
    let mut ports: Vec<u16> = envoys
        .iter()
        .flat_map(|e| [e.listener_addr().port(), e.admin_addr().port()])
        .collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), envoys.len() * 2);
    for e in &envoys {
        assert_eq!(e.client().get("/", &[]).await.unwrap().status, 200);
    }
    assert_eq!(backends.total(), envoys.len() as u64);
}

#[tokio::test]
async fn client_keep_alive_raw_and_abandon() {
    for v in envoy_versions() {
        let backends = Backends::start(&["web-service"]).await.unwrap();
        let mut cfg = EnvoyConfig::new(&v, backends.upstreams());
        cfg.default_destination = Some("web-service".into());
        let envoy = Envoy::start(&cfg).await.unwrap();
        let c = envoy.client().with_timeout(Duration::from_secs(5));
        let t = Instant::now();
        for _ in 0..2000 {
            assert_eq!(c.get("/", &[]).await.unwrap().status, 200);
        }
        let took = t.elapsed();
        assert!(
            took < Duration::from_secs(20),
            "{v}: 2000 requests took {took:?}"
        );
        // Keep-alive: a handful of downstream connections, not one per request.
        let conns = envoy
            .stat("http.ingress.downstream_cx_total")
            .await
            .unwrap()
            .unwrap();
        assert!(conns <= 4, "{v}: {conns} connections for 2000 requests");
        // POST with a body reaches the backend.
        let r = c.post("/p", &[], "hello").await.unwrap();
        assert_eq!(r.echo().unwrap().body_len, 5);

        let ok = raw(
            envoy.listener_addr(),
            b"GET /raw HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(raw_status(&ok), Some(200), "{v}");
        assert!(String::from_utf8_lossy(&ok).contains("x-backend: web-service"));
        let bad = raw(
            envoy.listener_addr(),
            b"GET / HTTP/1.1\r\nhost: x\r\nbad header\r\n\r\n",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(raw_status(&bad), Some(400), "{v}");

        let before = backends.total();
        abandon(
            envoy.listener_addr(),
            "/gone",
            &[],
            Duration::from_millis(100),
        )
        .await
        .unwrap();
        let t = Instant::now();
        while backends.total() == before && t.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            backends.total(),
            before + 1,
            "{v}: the abandoned request was sent"
        );
    }
}

#[tokio::test]
async fn backend_answers_with_its_name_and_stops_on_drop() {
    let b = Backend::start("reviews|v2").await.unwrap();
    let c = Client::new(&format!("http://{}", b.addr)).with_timeout(Duration::from_secs(2));
    let r = c.get("/x?y=1", &[("x-test", "1")]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.backend(), Some("reviews|v2"));
    let echo = r.echo().unwrap();
    assert_eq!(
        (echo.backend.as_str(), echo.path.as_str()),
        ("reviews|v2", "/x?y=1")
    );
    assert_eq!(echo.headers.get("x-test").map(String::as_str), Some("1"));
    assert_eq!(b.count(), 1);
    assert_eq!(b.upstream().destination, "reviews|v2");
    let addr = b.addr;
    drop(b);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Neither the listener nor the kept-alive connection answers any more.
    assert!(c.get("/", &[]).await.is_err());
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[test]
fn names() {
    assert_eq!(envoy_binary_env_var("1.40.0"), "KSIT_ENVOY_1_40_0");
    assert_eq!(envoy_binary_env_var("1.36.4"), "KSIT_ENVOY_1_36_4");
    assert_eq!(EnvoyConfig::cluster_name("reviews|v2"), "dest_reviews_v2");
    assert_eq!(
        EnvoyConfig::cluster_name("api.ns.svc|v1"),
        "dest_api_ns_svc_v1"
    );
}
