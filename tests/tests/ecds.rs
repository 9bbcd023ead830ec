//! A pluginConfig update delivered through ECDS (Envoy's extension config discovery, here from a watched
//! file): a good update takes effect, a bad one is rejected and the previous policy keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ksit_tests::backend::start_all;
use ksit_tests::client::Client;
use ksit_tests::envoy::{envoy_versions, Envoy, EnvoyConfig, FilterConfig, Upstream};
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
        let backends = start_all(&["api-service-v1", "api-service-v2", "web-service"])
            .await
            .unwrap();
        let ups = backends
            .iter()
            .map(|b| Upstream {
                destination: b.name.clone(),
                addr: b.addr,
            })
            .collect();
        let dir = std::env::temp_dir().join(format!("ksit-ecds-{}-{v}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ecds = dir.join("ecds.json");
        publish(&ecds, &wasm_filter(&canary(0)));
        let mut cfg = EnvoyConfig::new(&v, ups);
        cfg.filter = Some(FilterConfig::new(&canary(0)).unwrap());
        // Swap the static Wasm filter for one discovered from the file.
        let bootstrap_hook = ecds.clone();
        let envoy = Envoy::start_with(&cfg, move |b: &mut Value| {
            b["node"] = json!({"id": "ksit-test", "cluster": "ksit-test"});
            let filters = b.pointer_mut("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters").unwrap();
            filters[0] = json!({"name": "ksit", "config_discovery": {
                "config_source": {"path_config_source": {"path": bootstrap_hook.to_string_lossy()}, "resource_api_version": "V3"},
                "type_urls": ["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"]}});
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
