//! A pluginConfig update delivered through ECDS (Envoy's extension config discovery, here from a watched
//! file): a good update takes effect, a bad one is rejected and the previous policy keeps serving, and a
//! root the update replaces hands the requests it holds over.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ksit_tests::backend::{start_all, Backend};
use ksit_tests::client::Client;
use ksit_tests::envoy::{
    add_listener_copy, envoy_versions, Envoy, EnvoyConfig, FilterConfig, Upstream,
};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const HOST: &str = "myapp.example.com";

/// Writes the ECDS resource atomically (Envoy watches the file through renames).
fn publish(path: &Path, filter: &Value) {
    let resp = json!({"resources": [{"@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig", "name": "ksit", "typed_config": filter}]});
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, resp.to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn wasm_filter(policy: &Value) -> Value {
    let f = FilterConfig::new(policy).unwrap();
    json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": {
        "name": "ksit", "root_id": "ksit",
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": policy.to_string()},
        "vm_config": {"vm_id": "ksit", "runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": f.wasm.to_string_lossy()}}}}})
}

/// The ksit filter entry that loads its configuration from the ECDS file at `path`.
fn discovered(path: &Path) -> Value {
    json!({"name": "ksit", "config_discovery": {
        "config_source": {"path_config_source": {"path": path.to_string_lossy()}, "resource_api_version": "V3"},
        "type_urls": ["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"]}})
}

/// Backends for the canary's destinations, and Envoy's settings routing to them with `policy` in a static
/// filter; plus a fresh directory for the ECDS file (`tag` names it).
async fn backends_and_config(
    v: &str,
    policy: &Value,
    tag: &str,
) -> (Vec<Backend>, EnvoyConfig, std::path::PathBuf) {
    let backends = start_all(&["api-service-v1", "api-service-v2", "web-service"])
        .await
        .unwrap();
    let mut cfg = EnvoyConfig::new(v, Upstream::for_backends(&backends));
    cfg.filter = Some(FilterConfig::new(policy).unwrap());
    let dir = std::env::temp_dir().join(format!("ksit-{tag}-{}-{v}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    (backends, cfg, dir)
}

fn canary(weight: i64) -> Value {
    let mut p = ksit_tests::seed_spec().unwrap();
    p["http"][0].as_object_mut().unwrap().remove("fault");
    p["http"][0]["route"][0]["weight"] = json!(100 - weight);
    p["http"][0]["route"][1]["weight"] = json!(weight);
    p
}

async fn canary_share(c: &Client, tag: &str) -> usize {
    let mut n = 0;
    for i in 0..200 {
        let r = c
            .get(
                "/api/x",
                &[("host", HOST), ("x-request-id", &format!("{tag}-{i}"))],
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        n += usize::from(r.backend() == Some("api-service-v2"));
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ecds_update_is_rejected_and_the_previous_policy_keeps_serving() {
    for v in envoy_versions() {
        let (_backends, cfg, dir) = backends_and_config(&v, &canary(0), "ecds").await;
        let ecds = dir.join("ecds.json");
        publish(&ecds, &wasm_filter(&canary(0)));
        // Swap the static Wasm filter for one discovered from the file.
        let bootstrap_hook = ecds.clone();
        let envoy = Envoy::start_with(&cfg, move |b: &mut Value| {
            b["node"] = json!({"id": "ksit-test", "cluster": "ksit-test"});
            let filters = b.pointer_mut("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters").unwrap();
            filters[0] = discovered(&bootstrap_hook);
        })
        .await
        .unwrap();
        let c = Client::new(&envoy.base_url());
        assert_eq!(canary_share(&c, "a").await, 0, "{v}: canary at 0%");
        // A good update: everything to the canary.
        publish(&ecds, &wasm_filter(&canary(100)));
        let t = Instant::now();
        while canary_share(&c, "b").await != 200 {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{v}: the good update never took effect"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // A bad update (negative weight): rejected; the previous policy (100% canary) keeps serving.
        let mut bad = canary(100);
        bad["http"][0]["route"][1]["weight"] = json!(-1);
        publish(&ecds, &wasm_filter(&bad));
        let t = Instant::now();
        loop {
            let log = envoy.log();
            if log.contains("spec.http[0].route[1].weight: must be >= 0") {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{v}: the bad update was not evaluated:\n{}",
                envoy.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            canary_share(&c, "c").await,
            200,
            "{v}: after a rejected update the previous policy must keep serving"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A root that Envoy deletes while a request it decided is still held hands the request to the root that
/// now serves its name, which releases it. Set-up: the same filter name on two listeners in one VM, the
/// second one's filter from ECDS and newer, so it decides (and holds) requests of both listeners; an ECDS
/// update then replaces it, and Envoy deletes it while it holds a request of the first listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_root_hands_its_held_requests_over() {
    for v in envoy_versions() {
        // The static filter never delays.
        let (_backends, cfg, dir) = backends_and_config(&v, &canary(0), "ecds-held").await;
        let ecds = dir.join("ecds.json");
        // The discovered one (newer, so it decides) holds /api for 1.5 s.
        let mut held = canary(100);
        held["http"][0]["fault"] =
            json!({"delay": {"fixedDelay": "1500ms", "percentage": {"value": 100}}});
        publish(&ecds, &wasm_filter(&held));
        let hook = ecds.clone();
        let envoy = Envoy::start_with(&cfg, move |b: &mut Value| {
            b["node"] = json!({"id": "ksit-test", "cluster": "ksit-test"});
            add_listener_copy(b, "second", 0, discovered(&hook));
        })
        .await
        .unwrap();
        let c = Client::new(&envoy.base_url()).with_timeout(Duration::from_secs(8));
        // Held by the discovered filter's root although it came to the static listener.
        let started = Instant::now();
        let request = tokio::spawn(async move {
            c.get("/api/x", &[("host", HOST), ("x-request-id", "held")])
                .await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let deleted_before = envoy.log().matches("was deleted").count();
        publish(&ecds, &wasm_filter(&canary(100)));
        let r = request.await.unwrap().unwrap();
        let took = started.elapsed();
        assert_eq!(r.backend(), Some("api-service-v2"), "{v}: {r:?}");
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_millis(2500),
            "{v}: held {took:?} for a 1.5 s delay:\n{}",
            envoy.log_tail(30)
        );
        assert!(
            envoy.log().matches("was deleted").count() > deleted_before,
            "{v}: the replaced root was not deleted while the request was held, so this proves nothing:\n{}",
            envoy.log_tail(30)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
