//! failStrategy in a real Envoy when the VM fails (a test-only build traps on demand): FAIL_CLOSE answers
//! 503, so no request bypasses the policy; FAIL_OPEN skips the filter and the default route serves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ksit_tests::backend::Backends;
use ksit_tests::client::Client;
use ksit_tests::envoy::{envoy_versions, Envoy, EnvoyConfig, FilterConfig};
use std::path::PathBuf;

const HOST: &str = "myapp.example.com";

fn trap_wasm() -> PathBuf {
    let p = ksit_tests::repo_root().join("target/trap/wasm32-wasip1/release/ksit_filter.wasm");
    assert!(
        p.exists(),
        "{} is missing: build it with `make wasm-trap` (make test does)",
        p.display()
    );
    p
}

async fn start(version: &str, fail_open: bool) -> (Envoy, Backends) {
    start_with(version, fail_open, None).await
}

async fn start_with(
    version: &str,
    fail_open: bool,
    failure_policy: Option<&str>,
) -> (Envoy, Backends) {
    let backends = Backends::start(&[
        "api-service-v1",
        "api-service-v2",
        "web-service",
        "stable-default",
    ])
    .await
    .unwrap();
    let mut cfg = EnvoyConfig::new(version, backends.upstreams());
    cfg.default_destination = Some("stable-default".into());
    let mut f = FilterConfig::new(&ksit_tests::seed_spec().unwrap()).unwrap();
    f.wasm = trap_wasm();
    f.fail_open = fail_open;
    f.failure_policy = failure_policy.map(String::from);
    cfg.filter = Some(f);
    (Envoy::start(&cfg).await.unwrap(), backends)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_close_answers_503_after_the_vm_fails() {
    for v in envoy_versions() {
        let (envoy, _b) = start(&v, false).await;
        let c = Client::new(&envoy.base_url());
        let ok = c.get("/web", &[("host", HOST)]).await.unwrap();
        assert_eq!(
            ok.backend(),
            Some("web-service"),
            "{v}: the filter works before the failure"
        );
        let trapped = c
            .get("/web", &[("host", HOST), ("x-ksit-test-trap", "1")])
            .await
            .unwrap();
        assert!(
            trapped.status >= 500,
            "{v}: a trapped request must fail closed, got {}",
            trapped.status
        );
        let after = c
            .get(
                "/web",
                &[("host", HOST), ("x-ksit-destination", "api-service-v2")],
            )
            .await
            .unwrap();
        assert_eq!(
            after.status, 503,
            "{v}: with the VM failed, FAIL_CLOSE answers 503 (no bypass of the policy)"
        );
        assert_eq!(after.backend(), None, "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_skips_the_filter_and_the_default_route_serves() {
    for v in envoy_versions() {
        let (envoy, _b) = start(&v, true).await;
        let c = Client::new(&envoy.base_url());
        assert_eq!(
            c.get("/web", &[("host", HOST)]).await.unwrap().backend(),
            Some("web-service"),
            "{v}"
        );
        let trapped = c
            .get("/web", &[("host", HOST), ("x-ksit-test-trap", "1")])
            .await
            .unwrap();
        assert_eq!(
            (trapped.status, trapped.backend()),
            (200, Some("stable-default")),
            "{v}: FAIL_OPEN passes the request on"
        );
        let after = c.get("/web", &[("host", HOST)]).await.unwrap();
        assert_eq!(
            (after.status, after.backend()),
            (200, Some("stable-default")),
            "{v}: the filter is skipped, the default route serves"
        );
    }
}

/// FAIL_RELOAD (Envoy 1.36+): the failed VM is replaced by a fresh one, which reads the same pluginConfig and
/// enforces the policy again (a client's own destination header is replaced, not obeyed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_reload_brings_the_policy_back_after_the_vm_fails() {
    for v in envoy_versions() {
        let (envoy, _b) = start_with(&v, false, Some("FAIL_RELOAD")).await;
        let c = Client::new(&envoy.base_url());
        let ok = c.get("/web", &[("host", HOST)]).await.unwrap();
        assert_eq!(ok.backend(), Some("web-service"), "{v}");
        let trapped = c
            .get("/web", &[("host", HOST), ("x-ksit-test-trap", "1")])
            .await
            .unwrap();
        assert!(trapped.status >= 500, "{v}: got {}", trapped.status);
        // The reload happens on a later request (Envoy may back off for a moment first).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let recovered = loop {
            let r = c
                .get(
                    "/web",
                    &[("host", HOST), ("x-ksit-destination", "api-service-v2")],
                )
                .await
                .unwrap();
            if r.status == 200 || std::time::Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        };
        assert_eq!(recovered.status, 200, "{v}: the VM was not reloaded");
        assert_eq!(
            recovered.backend(),
            Some("web-service"),
            "{v}: after the reload the policy decides, not the client's header"
        );
        let reloads = envoy.stat("wasm.ksit.vm_reload_success").await.unwrap();
        assert!(reloads.unwrap_or(0) >= 1, "{v}: {reloads:?}");
    }
}
