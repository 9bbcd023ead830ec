//! Every HTTPRoute feature a TrafficPolicy carries reaches the rendered VirtualService on the routes of its
//! rule, in Istio's shape (one fixture per feature, `tests/fixtures/httproute/`). The rendered files are
//! also written to `target/rendered-fixtures/` for `istioctl validate`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod fixtures;

use serde_json::{json, Value};

/// The VirtualService's `http` routes of a rendered fixture, by name.
fn routes(yaml: &str) -> Vec<(String, Value)> {
    let vs = serde_yaml::Deserializer::from_str(yaml)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|v| v["kind"] == "VirtualService")
        .unwrap();
    vs["spec"]["http"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap_or("").to_string(), r.clone()))
        .collect()
}

fn route<'a>(rs: &'a [(String, Value)], name: &str) -> &'a Value {
    &rs.iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| {
            panic!(
                "no route {name}: {:?}",
                rs.iter().map(|(n, _)| n).collect::<Vec<_>>()
            )
        })
        .1
}

#[test]
fn each_fixture_carries_its_feature_to_the_virtual_service() {
    let rendered: std::collections::BTreeMap<String, String> =
        fixtures::rendered_fixtures().into_iter().collect();
    type Check = fn(&[(String, Value)]);
    let checks: Vec<(&str, Check)> = vec![
        ("headers", |rs| {
            for name in [
                "reviews-reviews-v1",
                "reviews-reviews-v2",
                "reviews-default",
            ] {
                let r = route(rs, name);
                assert_eq!(
                    r["headers"]["request"]["set"]["x-route"], "reviews",
                    "{name}"
                );
                assert_eq!(
                    r["headers"]["response"]["remove"],
                    json!(["server"]),
                    "{name}"
                );
            }
            let v1 = route(rs, "reviews-reviews-v1");
            assert_eq!(
                v1["route"][0]["headers"]["request"]["set"]["x-version"],
                "v1"
            );
            assert_eq!(
                route(rs, "reviews-reviews-v2")["route"][0]["headers"]["request"]["set"]
                    ["x-version"],
                "v2"
            );
        }),
        ("retries-timeout", |rs| {
            for name in ["ratings-ratings-v1", "ratings-default"] {
                let r = route(rs, name);
                assert_eq!(r["timeout"], "10s");
                assert_eq!(
                    r["retries"],
                    json!({"attempts": 3, "perTryTimeout": "2s", "retryOn": "gateway-error,connect-failure,refused-stream,503",
                           "retryRemoteLocalities": true, "retryIgnorePreviousHosts": true, "backoff": "25ms"})
                );
            }
        }),
        ("rewrite", |rs| {
            assert_eq!(
                route(rs, "legacy-productpage")["rewrite"],
                json!({"uri": "/productpage", "authority": "productpage.bookinfo.svc.cluster.local"})
            );
            assert_eq!(
                route(rs, "by-id-default")["rewrite"]["uriRegexRewrite"],
                json!({"match": "^/products/([0-9]+)", "rewrite": "/api/v1/products/\\1"})
            );
        }),
        ("redirect", |rs| {
            // A redirect rule has one route, in rule order among the default routes, with no destination.
            let r = route(rs, "old-reviews");
            assert!(r.get("route").is_none(), "{r}");
            assert_eq!(r["match"], json!([{"uri": {"prefix": "/v1/reviews"}}]));
            assert_eq!(r["redirect"]["prefixRewrite"], "/v2/reviews");
            assert_eq!(route(rs, "moved")["redirect"]["redirectCode"], 302);
            let names: Vec<&str> = rs.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(
                names,
                [
                    "productpage-productpage",
                    "old-reviews",
                    "moved",
                    "productpage-default"
                ]
            );
        }),
        ("direct-response", |rs| {
            let r = route(rs, "maintenance");
            assert!(r.get("route").is_none(), "{r}");
            assert_eq!(r["directResponse"]["status"], 503);
            assert_eq!(
                r["match"][0]["headers"]["x-maintenance"]["exact"], "on",
                "a YAML 1.1 word stays a string"
            );
            assert_eq!(
                route(rs, "teapot")["directResponse"]["body"]["bytes"],
                "SSdtIGEgdGVhcG90"
            );
        }),
        ("mirror", |rs| {
            // Envoy decides per request, as in Istio: every route of the rule carries the mirror.
            for name in ["one-mirror-httpbin-v1", "one-mirror-default"] {
                let r = route(rs, name);
                assert_eq!(
                    r["mirror"],
                    json!({"host": "httpbin", "subset": "v2"}),
                    "{name}"
                );
                assert_eq!(r["mirrorPercentage"], json!({"value": 50.0}), "{name}");
            }
            assert_eq!(
                route(rs, "two-mirrors-default")["mirrors"][1],
                json!({"destination": {"host": "httpbin-shadow", "port": {"number": 8000}}})
            );
        }),
        ("mirror-sticky", |rs| {
            // Per destination: level 1 (the 25% mirror), level 2 (both), then no mirror; the default route
            // mirrors nothing (the filter decides, per user).
            for dest in ["v1", "v3"] {
                let l1 = route(rs, &format!("reviews-reviews-{dest}-mirror1"));
                assert_eq!(l1["match"][0]["headers"]["x-ksit-mirror"]["exact"], "1");
                assert_eq!(
                    l1["match"][0]["headers"]["x-ksit-destination"]["exact"],
                    format!("reviews|{dest}")
                );
                assert_eq!(
                    l1["mirrors"],
                    json!([{"destination": {"host": "reviews", "subset": "v2"}}])
                );
                let l2 = route(rs, &format!("reviews-reviews-{dest}-mirror2"));
                assert_eq!(l2["mirrors"].as_array().map(Vec::len), Some(2));
                let plain = route(rs, &format!("reviews-reviews-{dest}"));
                assert!(plain.get("mirrors").is_none(), "{plain}");
            }
            assert!(route(rs, "reviews-default").get("mirrors").is_none());
        }),
        ("cors", |rs| {
            for name in ["api-productpage", "api-default"] {
                let c = &route(rs, name)["corsPolicy"];
                assert_eq!(c["allowMethods"], json!(["GET", "POST", "OPTIONS"]));
                assert_eq!(c["maxAge"], "24h");
                assert_eq!(c["unmatchedPreflights"], "IGNORE");
            }
        }),
        ("match-names", |rs| {
            // Istio names the Envoy route RULE.MATCH: the match names are kept, with the statPrefix.
            let r = route(rs, "reviews-reviews-v2");
            assert_eq!(r["match"][0]["name"], "jason");
            assert_eq!(r["match"][0]["statPrefix"], "reviews-jason");
            assert_eq!(r["match"][1]["name"], "api");
            assert_eq!(r["match"][1]["ignoreUriCase"], true);
            assert_eq!(route(rs, "reviews-default")["match"][0]["name"], "jason");
        }),
        ("faults", |rs| {
            // Faults are the filter's; none reaches the VirtualService.
            assert!(rs.iter().all(|(_, r)| r.get("fault").is_none()));
        }),
    ];
    let mut seen = Vec::new();
    for (name, check) in &checks {
        let yaml = rendered
            .get(*name)
            .unwrap_or_else(|| panic!("no fixture {name}"));
        check(&routes(yaml));
        seen.push(name.to_string());
    }
    let all: Vec<String> = rendered.keys().cloned().collect();
    seen.sort();
    assert_eq!(seen, all, "every fixture is checked");
    // The WasmPlugin of the faults fixture fails by reloading.
    let wp = serde_yaml::Deserializer::from_str(&rendered["faults"])
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|v| v["kind"] == "WasmPlugin")
        .unwrap();
    assert_eq!(wp["spec"]["failStrategy"], "FAIL_RELOAD");
    let dir = fixtures::write_rendered_fixtures();
    assert!(dir.join("mirror-sticky.yaml").is_file());
}
