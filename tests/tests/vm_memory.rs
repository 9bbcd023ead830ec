//! No growth in the VM's memory over a long mixed run, in a real Envoy of every tested version: delays held
//! and released, aborts, clients leaving mid-delay, sticky and keyless requests, unmatched paths and hosts.
//! The filter reports its linear memory (`ksit_vm_memory_bytes`, which only ever grows); after a warm-up of
//! the same mix it must not move while many times more requests go through.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ksit_tests::backend::Backends;
use ksit_tests::client::{abandon, Client};
use ksit_tests::envoy::{envoy_versions, prom_value, Envoy, EnvoyConfig, FilterConfig};
use serde_json::json;
use std::time::Duration;

const HOST: &str = "myapp.example.com";

/// `rounds` × 16 concurrent clients, each sending a mix of 12 requests (one of them abandoned mid-delay).
async fn mixed_load(envoy: &Envoy, rounds: usize, salt: &str) -> usize {
    let mut tasks = Vec::new();
    for t in 0..16 {
        let c = Client::new(&envoy.base_url());
        let addr = envoy.listener_addr();
        let salt = salt.to_string();
        tasks.push(tokio::spawn(async move {
            let mut sent = 0;
            for r in 0..rounds {
                let user = format!("user-{salt}-{t}-{r}");
                let rid = format!("rid-{salt}-{t}-{r}");
                let mixes: [(&str, Vec<(&str, &str)>); 11] = [
                    ("/api/orders", vec![("host", HOST), ("x-user-id", &user)]),
                    ("/api/orders", vec![("host", HOST), ("x-request-id", &rid)]),
                    ("/api/x?q=1", vec![("host", HOST)]),
                    ("/web/page", vec![("host", HOST), ("cookie", "a=b; c")]),
                    ("/nope", vec![("host", HOST)]),
                    ("/api/y", vec![("host", "other.example.com")]),
                    (
                        "/api/z",
                        vec![("host", HOST), ("x-ksit-canary", "api-service-v2")],
                    ),
                    (
                        "/api/s",
                        vec![("host", HOST), ("x-ksit-destination", "web-service")],
                    ),
                    (
                        "/%61pi/../api/./p",
                        vec![("host", HOST), ("x-user-id", &rid)],
                    ),
                    (
                        "/web",
                        vec![("host", HOST), ("x-user-id", ""), ("x-user-id", &user)],
                    ),
                    ("/api/long", vec![("host", HOST), ("x-big", &rid)]),
                ];
                for (path, headers) in &mixes {
                    // Any answer will do (delays, aborts); the point is what stays in the VM.
                    let _ = c.get(path, headers).await;
                    sent += 1;
                }
                let _ = abandon(
                    addr,
                    "/api/gone",
                    &[("host", HOST), ("x-request-id", &format!("gone-{rid}"))],
                    Duration::from_millis(5),
                )
                .await;
                sent += 1;
            }
            sent
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total
}

async fn vm_memory(envoy: &Envoy) -> f64 {
    let prom = envoy.prometheus_flushed().await.unwrap();
    prom_value(&prom, "ksit_vm_memory_bytes", &[]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_memory_does_not_grow_over_a_long_mixed_run() {
    for v in envoy_versions() {
        let backends = Backends::start(&[
            "api-service-v1",
            "api-service-v2",
            "web-service",
            "passthrough",
        ])
        .await
        .unwrap();
        let mut cfg = EnvoyConfig::new(&v, backends.upstreams());
        cfg.default_destination = Some("passthrough".into());
        let mut policy = ksit_tests::seed_spec().unwrap();
        policy["maxActiveFaults"] = json!(8);
        policy["http"][0]["fault"] = json!({
            "delay": {"fixedDelay": "20ms", "percentage": {"value": 30}},
            "abort": {"httpStatus": 503, "percentage": {"value": 10}}
        });
        cfg.filter = Some(FilterConfig::new(&policy).unwrap());
        let envoy = Envoy::start(&cfg).await.unwrap();

        let warm = mixed_load(&envoy, 20, "warm").await;
        let before = vm_memory(&envoy).await;
        assert!(before > 0.0, "{v}: the filter reports its memory");
        let long = mixed_load(&envoy, 200, "long").await;
        let after = vm_memory(&envoy).await;
        eprintln!(
            "{v}: VM memory {before} bytes after {warm} requests, {after} bytes after {long} more"
        );
        assert!(long >= 10 * warm, "{v}: the run is not long enough");
        assert_eq!(
            after, before,
            "{v}: the VM's memory grew over {long} mixed requests"
        );
        let prom = envoy.prometheus().await.unwrap();
        assert_eq!(
            prom_value(&prom, "ksit_active_delays", &[]),
            Some(0.0),
            "{v}: requests left paused"
        );
        assert!(
            prom_value(&prom, "ksit_delays_total", &[("ksit_rule", "api")]).unwrap() > 0.0,
            "{v}: the mix must include delays"
        );
        assert!(
            prom_value(&prom, "ksit_aborts_total", &[("ksit_rule", "api")]).unwrap() > 0.0,
            "{v}: the mix must include aborts"
        );
        drop(backends);
    }
}
