//! Hostile and odd requests through a real Envoy with the filter: each is answered as the policy says, and
//! the Wasm VM never fails (no trap, no panic).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ksit_policy::{Engine, Request};
use ksit_tests::backend::start_all;
use ksit_tests::client::raw;
use ksit_tests::envoy::{envoy_versions, Envoy, EnvoyConfig, FilterConfig, Upstream};
use serde_json::Value;
use std::time::Duration;

const HOST: &str = "myapp.example.com";

/// A named request: path and headers (raw bytes).
type Case<'a> = (&'a str, Vec<u8>, &'a [(&'a [u8], &'a [u8])]);

fn policy() -> Value {
    let mut s = ksit_tests::seed_spec().unwrap();
    s["http"][0].as_object_mut().unwrap().remove("fault");
    s
}

/// The engine's destination for a path and headers as Envoy hands them to the filter.
fn predict(path: &[u8], headers: &[(&[u8], &[u8])]) -> Option<String> {
    let e = Engine::from_json(policy().to_string().as_bytes(), None).unwrap();
    let mut pairs: Vec<(&[u8], &[u8])> = vec![
        (b":path", path),
        (b":authority", HOST.as_bytes()),
        (b":method", b"GET"),
    ];
    pairs.extend_from_slice(headers);
    e.decide(&Request::new(&pairs), 0)
        .destination
        .map(|d| d.key.clone())
}

fn request(path: &[u8], headers: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut r = b"GET ".to_vec();
    r.extend_from_slice(path);
    r.extend_from_slice(b" HTTP/1.1\r\nhost: myapp.example.com\r\nconnection: close\r\n");
    for (k, v) in headers {
        r.extend_from_slice(k);
        r.extend_from_slice(b": ");
        r.extend_from_slice(v);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"\r\n");
    r
}

fn responses(bytes: &[u8]) -> Vec<(u16, Option<String>)> {
    let text = String::from_utf8_lossy(bytes);
    text.split("HTTP/1.1 ")
        .skip(1)
        .map(|r| {
            let status = r.get(..3).and_then(|s| s.parse().ok()).unwrap_or(0);
            let backend = r
                .lines()
                .find_map(|l| l.strip_prefix("x-backend: "))
                .map(|s| s.trim().to_string());
            (status, backend)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_answered_and_never_break_the_vm() {
    for v in envoy_versions() {
        let backends = start_all(&[
            "api-service-v1",
            "api-service-v2",
            "web-service",
            "passthrough",
        ])
        .await
        .unwrap();
        let ups = Upstream::for_backends(&backends);
        let mut cfg = EnvoyConfig::new(&v, ups);
        cfg.default_destination = Some("passthrough".into());
        cfg.filter = Some(FilterConfig::new(&policy()).unwrap());
        let envoy = Envoy::start(&cfg).await.unwrap();
        let long_path = format!("/api/{}", "a".repeat(10_000));
        let huge = "u".repeat(30_000);
        let huge_headers: [(&[u8], &[u8]); 1] = [(b"x-user-id", huge.as_bytes())];
        let many: Vec<(Vec<u8>, Vec<u8>)> = (0..90)
            .map(|i| (format!("x-h{i}").into_bytes(), b"v".to_vec()))
            .collect();
        let mut many_refs: Vec<(&[u8], &[u8])> = many
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        many_refs.push((b"x-request-id", b"many"));
        let cases: Vec<Case> = vec![
            (
                "non-UTF-8 sticky value",
                b"/api/x".to_vec(),
                &[
                    (b"x-user-id", &[0xff, 0xfe, 0x80]),
                    (b"x-request-id", b"r1"),
                ],
            ),
            (
                "non-UTF-8 spoofed destination",
                b"/web".to_vec(),
                &[(b"x-ksit-destination", &[0xc3, 0x28])],
            ),
            ("huge header value", b"/api/x".to_vec(), &huge_headers),
            (
                "10,000-character path",
                long_path.as_bytes().to_vec(),
                &[(b"x-request-id", b"long")],
            ),
            ("percent-encoded path", b"/%61pi/x".to_vec(), &[]),
            (
                "dot segments",
                b"/web/../api/x".to_vec(),
                &[(b"x-request-id", b"dots")],
            ),
            (
                "duplicate headers",
                b"/api/x".to_vec(),
                &[(b"x-user-id", b"alice"), (b"x-user-id", b"bob")],
            ),
            (
                "empty header values",
                b"/api/x".to_vec(),
                &[
                    (b"x-user-id", b""),
                    (b"x-request-id", b""),
                    (b"cookie", b""),
                ],
            ),
            (
                "odd cookies",
                b"/api/x".to_vec(),
                &[(b"cookie", b";;=;=x; session; a==b; \"q\"")],
            ),
            ("odd query string", b"/api/x?&&=&x=%ff&u&&".to_vec(), &[]),
            ("no x-request-id", b"/api/y".to_vec(), &[]),
            (
                "upper-case override header",
                b"/api/x".to_vec(),
                &[(b"X-KSIT-Canary", b"api-service-v2")],
            ),
            ("ninety headers", b"/api/x".to_vec(), &many_refs),
        ];
        for (name, path, headers) in &cases {
            let out = raw(
                envoy.listener,
                &request(path, headers),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
            let r = responses(&out);
            assert_eq!(r.len(), 1, "{v} {name}: {}", String::from_utf8_lossy(&out));
            let (status, backend) = &r[0];
            assert_eq!(
                *status,
                200,
                "{v} {name}: {}",
                String::from_utf8_lossy(&out)
            );
            let lower: Vec<(Vec<u8>, &[u8])> = headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), *v))
                .collect();
            let lower_refs: Vec<(&[u8], &[u8])> =
                lower.iter().map(|(k, v)| (k.as_slice(), *v)).collect();
            match (*name, predict(path, &lower_refs)) {
                // Without an x-request-id Envoy makes one up, so only the rule is certain.
                (
                    "no x-request-id"
                    | "huge header value"
                    | "duplicate headers"
                    | "empty header values"
                    | "odd cookies"
                    | "odd query string",
                    Some(_),
                ) => {
                    assert!(
                        backend
                            .as_deref()
                            .is_some_and(|b| b.starts_with("api-service-v")),
                        "{v} {name}: {backend:?}"
                    )
                }
                (_, Some(d)) => assert_eq!(backend.as_deref(), Some(d.as_str()), "{v} {name}"),
                (_, None) => assert_eq!(backend.as_deref(), Some("passthrough"), "{v} {name}"),
            }
        }
        // HTTP/1.1 pipelining: three requests in one write, three answers in order.
        let mut pipelined = request(b"/web", &[]);
        pipelined.extend(request(b"/api/x", &[(b"x-ksit-canary", b"api-service-v2")]));
        pipelined.extend(request(b"/nothing", &[]));
        let text = String::from_utf8_lossy(&pipelined).replace("connection: close\r\n", "");
        let out = raw(envoy.listener, text.as_bytes(), Duration::from_millis(1500))
            .await
            .unwrap();
        let r: Vec<Option<String>> = responses(&out).into_iter().map(|x| x.1).collect();
        assert_eq!(
            r,
            vec![
                Some("web-service".into()),
                Some("api-service-v2".into()),
                Some("passthrough".into())
            ],
            "{v}"
        );
        // HTTP/2 (prior knowledge, cleartext), :authority myapp.example.com: the same decisions.
        {
            use http_body_util::{BodyExt, Empty};
            let tcp = tokio::net::TcpStream::connect(envoy.listener)
                .await
                .unwrap();
            let (mut send, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(tcp),
            )
            .await
            .unwrap();
            tokio::spawn(conn);
            for (path, id) in [("/api/h2", "h2-1"), ("/web/h2", "h2-2"), ("/other", "h2-3")] {
                let req = hyper::Request::builder()
                    .uri(format!("http://{HOST}{path}"))
                    .header("x-request-id", id)
                    .body(Empty::<bytes::Bytes>::new())
                    .unwrap();
                let resp = send.send_request(req).await.unwrap();
                assert_eq!(resp.version(), hyper::Version::HTTP_2, "{v}");
                let backend = resp
                    .headers()
                    .get("x-backend")
                    .map(|b| b.to_str().unwrap().to_string());
                let _ = resp.into_body().collect().await;
                let want = predict(path.as_bytes(), &[(b"x-request-id", id.as_bytes())])
                    .unwrap_or_else(|| "passthrough".into());
                assert_eq!(backend.as_deref(), Some(want.as_str()), "{v} HTTP/2 {path}");
            }
        }
        // Nothing above made the VM trap or panic.
        let log = envoy.log();
        for bad in [
            "panicked",
            "RuntimeError",
            "Failed to",
            "wasm trap",
            "Function: proxy_on",
        ] {
            assert!(
                !log.contains(bad),
                "{v}: Envoy log shows a VM failure ({bad}):\n{}",
                envoy.log_tail(30)
            );
        }
        assert_eq!(
            envoy.stat("wasm.ksit.vm_reload").await.unwrap(),
            Some(0),
            "{v}"
        );
        let prom = envoy.prometheus_flushed().await.unwrap();
        let decided = ksit_tests::envoy::prom_value(&prom, "ksit_requests_total", &[]).unwrap();
        assert!(decided >= 12.0, "{v}: {decided}");
    }
}
