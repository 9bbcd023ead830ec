//! The differential test of issue 19: VirtualServices modelled on Istio's bookinfo samples and its
//! fault-injection task (written for these tests), each request answered three ways, which must agree with
//! what Istio's documentation says it does:
//!
//! 1. `ksit explain` (the same library calls the CLI makes) on the VirtualService;
//! 2. the ksit filter in a real Envoy, with the pluginConfig and the VirtualService the controller renders
//!    for the policy, its routes translated as istiod would (`ksit_tests::istio`);
//! 3. the original VirtualService in the same Envoy without ksit, translated the same way (faults by
//!    Envoy's fault filter, as Istio configures it): Istio itself, as near as these tests get to it.
//!
//! Where a case is random in Istio (weights, percentages), legs 1 and 2 agree request by request (the same
//! hash of x-request-id) and all three agree on the share.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ksit_controller::desired::{plugin_config, render_virtual_service, Target};
use ksit_controller::explain;
use ksit_controller::manifests::Document;
use ksit_controller::resources::{TrafficPolicy, TrafficPolicyResourceSpec};
use ksit_tests::backend::Backends;
use ksit_tests::client::Client;
use ksit_tests::envoy::{envoy_versions, Envoy, EnvoyConfig, FilterConfig};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A request held at least this long was delayed: the cases delay by 400ms, and Envoy's fault filter timer
/// fires up to a few milliseconds early; an undelayed request here takes a few milliseconds.
const DELAYED: Duration = Duration::from_millis(350);

/// What a request gets: the status, the backend that answered (a destination key), whether it was held
/// by a delay, and for answers Envoy gives itself, the `location` or the body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Outcome {
    status: u16,
    backend: Option<String>,
    delayed: bool,
    location: Option<String>,
    body: Option<String>,
}

fn routed(backend: &str) -> Outcome {
    Outcome {
        status: 200,
        backend: Some(backend.into()),
        ..Outcome::default()
    }
}

struct Probe {
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    want: Outcome,
}

fn probe(path: &'static str, headers: &[(&'static str, &'static str)], want: Outcome) -> Probe {
    Probe {
        path,
        headers: headers.to_vec(),
        want,
    }
}

/// A VirtualService (YAML written for these tests) and requests with what Istio's documentation says they
/// get.
struct Case {
    name: &'static str,
    vs: &'static str,
    probes: Vec<Probe>,
}

fn host(case: &str) -> String {
    format!("{case}.bookinfo.example.com")
}

fn cases() -> Vec<Case> {
    vec![
        // bookinfo's "reviews test v2": jason sees v2, everyone else v1.
        Case {
            name: "reviews-jason",
            vs: r#"
http:
- match: [{headers: {end-user: {exact: jason}}}]
  route: [{destination: {host: reviews, subset: v2}}]
- route: [{destination: {host: reviews, subset: v1}}]
"#,
            probes: vec![
                probe("/reviews/0", &[("end-user", "jason")], routed("reviews|v2")),
                probe("/reviews/0", &[("end-user", "kim")], routed("reviews|v1")),
                probe("/reviews/0", &[], routed("reviews|v1")),
            ],
        },
        // The fault-injection task's delay for jason (7s there, 400ms here), on ratings.
        Case {
            name: "ratings-delay",
            vs: r#"
http:
- match: [{headers: {end-user: {exact: jason}}}]
  fault: {delay: {fixedDelay: 400ms, percentage: {value: 100.0}}}
  route: [{destination: {host: ratings, subset: v1}}]
- route: [{destination: {host: ratings, subset: v1}}]
"#,
            probes: vec![
                probe(
                    "/ratings/0",
                    &[("end-user", "jason")],
                    Outcome {
                        delayed: true,
                        ..routed("ratings|v1")
                    },
                ),
                probe("/ratings/0", &[("end-user", "kim")], routed("ratings|v1")),
            ],
        },
        // The task's abort for jason: HTTP 500 for every request of his.
        Case {
            name: "ratings-abort",
            vs: r#"
http:
- match: [{headers: {end-user: {exact: jason}}}]
  fault: {abort: {httpStatus: 500, percentage: {value: 100.0}}}
  route: [{destination: {host: ratings, subset: v1}}]
- route: [{destination: {host: ratings, subset: v1}}]
"#,
            probes: vec![
                probe(
                    "/ratings/0",
                    &[("end-user", "jason")],
                    Outcome {
                        status: 500,
                        ..Outcome::default()
                    },
                ),
                probe("/ratings/0", &[("end-user", "kim")], routed("ratings|v1")),
            ],
        },
        // A fault without percentage: Istio injects it into no request (0%).
        Case {
            name: "fault-unset-percentage",
            vs: r#"
http:
- fault: {abort: {httpStatus: 500}, delay: {fixedDelay: 400ms}}
  route: [{destination: {host: ratings, subset: v1}}]
"#,
            probes: vec![
                probe("/ratings/1", &[("end-user", "jason")], routed("ratings|v1")),
                probe(
                    "/ratings/2",
                    &[("x-request-id", "r-2")],
                    routed("ratings|v1"),
                ),
            ],
        },
        // ignoreUriCase reaches exact and prefix URIs, not a regex.
        Case {
            name: "ignore-uri-case",
            vs: r#"
http:
- match: [{uri: {exact: /Productpage}, ignoreUriCase: true}]
  route: [{destination: {host: productpage, subset: v1}}]
- match: [{uri: {regex: "/Reviews/[0-9]+"}, ignoreUriCase: true}]
  route: [{destination: {host: reviews, subset: v2}}]
- route: [{destination: {host: reviews, subset: v1}}]
"#,
            probes: vec![
                probe("/productpage", &[], routed("productpage|v1")),
                probe("/PRODUCTPAGE", &[], routed("productpage|v1")),
                probe("/Reviews/7", &[], routed("reviews|v2")),
                probe("/reviews/7", &[], routed("reviews|v1")),
            ],
        },
        // headers keys named like the pseudo-fields are literal request headers (as istiod builds them).
        Case {
            name: "literal-method-header",
            vs: r#"
http:
- match: [{headers: {method: {exact: POST}}}]
  route: [{destination: {host: reviews, subset: v3}}]
- route: [{destination: {host: reviews, subset: v1}}]
"#,
            probes: vec![
                probe("/reviews/0", &[("method", "POST")], routed("reviews|v3")),
                probe("/reviews/0", &[], routed("reviews|v1")),
            ],
        },
        // Redirect and direct response rules answer in Envoy; a later rule takes the rest.
        Case {
            name: "redirect-direct",
            vs: r#"
http:
- name: old
  match: [{name: v1, uri: {prefix: /v1/reviews}}]
  redirect: {prefixRewrite: /v2/reviews, redirectCode: 308}
- name: gone
  match: [{uri: {exact: /details}}]
  directResponse: {status: 410, body: {string: details moved}}
- route: [{destination: {host: reviews, subset: v2}}]
"#,
            probes: vec![
                probe(
                    "/v1/reviews/3",
                    &[],
                    Outcome {
                        status: 308,
                        location: Some("/v2/reviews/3".into()),
                        ..Outcome::default()
                    },
                ),
                probe(
                    "/details",
                    &[],
                    Outcome {
                        status: 410,
                        body: Some("details moved".into()),
                        ..Outcome::default()
                    },
                ),
                probe("/v2/reviews/3", &[], routed("reviews|v2")),
            ],
        },
        // Header changes and a regex rewrite are Envoy's, on the route the request takes.
        Case {
            name: "headers-rewrite",
            vs: r#"
http:
- match: [{uri: {prefix: /products/}}]
  rewrite: {uriRegexRewrite: {match: "^/products/([0-9]+)", rewrite: "/api/v1/products/\\1"}}
  headers:
    request: {set: {x-route: products}, remove: [x-debug]}
    response: {set: {x-served: bookinfo}}
  route: [{destination: {host: productpage, subset: v1}}]
"#,
            probes: vec![probe(
                "/products/42",
                &[("x-debug", "1")],
                routed("productpage|v1"),
            )],
        },
    ]
}

/// Every destination key the cases route or mirror to, plus the catch-all.
const BACKENDS: [&str; 8] = [
    "reviews|v1",
    "reviews|v2",
    "reviews|v3",
    "ratings|v1",
    "productpage|v1",
    "shadow",
    "shadow|canary",
    "passthrough",
];

fn vs_doc(name: &str, http_yaml: &str) -> Document {
    let http: Value = serde_yaml::from_str(http_yaml).unwrap();
    let mut spec = http;
    spec["hosts"] = json!([host(name)]);
    Document {
        file: format!("{name}.yaml").into(),
        index: 0,
        value: json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "bookinfo"}, "spec": spec}),
    }
}

/// What `ksit explain` says a request gets.
fn explained(x: &explain::Explainer, host: &str, p: &Probe, id: &str) -> Outcome {
    let mut headers: BTreeMap<String, String> = p
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    headers
        .entry("x-request-id".into())
        .or_insert_with(|| id.to_string());
    let req = explain::ExplainRequest {
        method: "GET".into(),
        path: p.path.into(),
        authority: host.into(),
        headers,
    };
    let v = explain::decide(x, &req, 0);
    if let Some(a) = v.get("answer") {
        return match (a.get("redirect"), a.get("directResponse")) {
            (Some(r), _) => Outcome {
                status: r["redirectCode"].as_u64().unwrap_or(301) as u16,
                location: p.want.location.clone(), // the path rewrite is Envoy's
                ..Outcome::default()
            },
            (_, Some(d)) => Outcome {
                status: d["status"].as_u64().unwrap_or(0) as u16,
                body: d["body"]["string"].as_str().map(String::from),
                ..Outcome::default()
            },
            _ => unreachable!(),
        };
    }
    let delayed = v["fault"]["delay"]["applied"] == true;
    if v["fault"]["abort"]["applied"] == true {
        return Outcome {
            status: v["fault"]["abort"]["httpStatus"].as_u64().unwrap_or(0) as u16,
            delayed,
            ..Outcome::default()
        };
    }
    let d = &v["destination"];
    let backend = match (d["host"].as_str(), d["subset"].as_str()) {
        (Some(h), Some(s)) => Some(format!("{h}|{s}")),
        (Some(h), None) => Some(h.to_string()),
        _ => Some("passthrough".to_string()),
    };
    Outcome {
        status: 200,
        backend,
        delayed,
        ..Outcome::default()
    }
}

/// What Envoy answers.
async fn answered(c: &Client, host: &str, p: &Probe, id: &str) -> (Outcome, ksit_tests::Response) {
    let mut h: Vec<(&str, &str)> = vec![("host", host), ("x-request-id", id)];
    h.retain(|(k, _)| !p.headers.iter().any(|(pk, _)| pk == k));
    h.extend(p.headers.iter().copied());
    let started = Instant::now();
    let r = c.get(p.path, &h).await.unwrap();
    let elapsed = started.elapsed();
    let status = r.status;
    // The location without the scheme and host Envoy puts before the path; a body where one is expected.
    let location = r.header("location").map(|l| {
        l.strip_prefix(&format!("http://{host}"))
            .unwrap_or(l)
            .to_string()
    });
    let out = Outcome {
        status,
        backend: r.backend().map(String::from),
        delayed: elapsed >= DELAYED,
        location: location.filter(|_| p.want.location.is_some()),
        body: p.want.body.as_ref().map(|_| r.body.clone()),
    };
    (out, r)
}

struct Rig {
    envoy: Envoy,
    backends: Backends,
}

async fn start(version: &str, filter: Option<Value>, virtual_services: Vec<Value>) -> Rig {
    let backends = Backends::start(&BACKENDS).await.unwrap();
    let mut cfg = EnvoyConfig::new(version, backends.upstreams());
    cfg.default_destination = Some("passthrough".into());
    cfg.virtual_services = virtual_services;
    if let Some(f) = filter {
        cfg.filter = Some(FilterConfig::new(&f).unwrap());
    }
    Rig {
        envoy: Envoy::start(&cfg).await.unwrap(),
        backends,
    }
}

/// The cases as the controller renders them for cluster1: the pluginConfig of one WasmPlugin carrying every
/// policy, and one VirtualService each.
fn rendered(cases: &[Case]) -> (Value, Vec<Value>, Vec<explain::Explainer>) {
    let mut policies = Vec::new();
    let mut services = Vec::new();
    let mut explainers = Vec::new();
    for c in cases {
        let doc = vs_doc(c.name, c.vs);
        let (spec, _) = explain::spec_of(&doc).unwrap();
        let mut tp = TrafficPolicy::new(c.name, TrafficPolicyResourceSpec(spec.clone()));
        tp.metadata.namespace = Some("bookinfo".into());
        services.push(
            render_virtual_service(&tp, Target::Cluster("cluster1"), &[]).manifest["spec"].clone(),
        );
        let mut config = plugin_config(&spec, "cluster1", false);
        config.as_object_mut().unwrap().remove("cluster");
        policies.push(json!({"name": format!("bookinfo/{}", c.name), "spec": config}));
        explainers.push(explain::engine_for(&doc, Some("cluster1"), false).unwrap());
    }
    (
        json!({"cluster": "cluster1", "policies": policies}),
        services,
        explainers,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_the_filter_and_istio_agree_on_bookinfo_and_fault_injection() {
    let cases = cases();
    let (config, services, explainers) = rendered(&cases);
    let originals: Vec<Value> = cases
        .iter()
        .map(|c| vs_doc(c.name, c.vs).value["spec"].clone())
        .collect();
    for v in envoy_versions() {
        let ksit = start(&v, Some(config.clone()), services.clone()).await;
        let istio = start(&v, None, originals.clone()).await;
        let kc = Client::new(&ksit.envoy.base_url());
        let ic = Client::new(&istio.envoy.base_url());
        for (case, x) in cases.iter().zip(&explainers) {
            let h = host(case.name);
            for (i, p) in case.probes.iter().enumerate() {
                let id = format!("{}-{i}", case.name);
                let by_explain = explained(x, &h, p, &id);
                let (by_ksit, kr) = answered(&kc, &h, p, &id).await;
                let (by_istio, ir) = answered(&ic, &h, p, &id).await;
                let what = format!("{v}: {} {} {:?}", case.name, p.path, p.headers);
                assert_eq!(by_istio, p.want, "{what}: Istio's own routes");
                assert_eq!(
                    by_ksit, p.want,
                    "{what}: the filter and the rendered routes"
                );
                assert_eq!(by_explain, p.want, "{what}: ksit explain");
                if case.name == "headers-rewrite" {
                    for r in [&kr, &ir] {
                        let echo = r.echo().unwrap();
                        assert_eq!(echo.path, "/api/v1/products/42", "{what}");
                        assert_eq!(
                            echo.headers.get("x-route").map(String::as_str),
                            Some("products")
                        );
                        assert!(!echo.headers.contains_key("x-debug"), "{what}");
                        assert_eq!(r.header("x-served"), Some("bookinfo"), "{what}");
                    }
                }
            }
        }
    }
}

/// Weights and fault percentages: explain and the filter agree request by request (the same hash of
/// x-request-id); with Istio's own routes (Envoy's random draw) only the shares can agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_agree_with_istio_and_decisions_with_explain() {
    let cases = vec![
        // bookinfo's "reviews 50/50 v3".
        Case {
            name: "reviews-v3-50",
            vs: r#"
http:
- route:
  - {destination: {host: reviews, subset: v1}, weight: 50}
  - {destination: {host: reviews, subset: v3}, weight: 50}
"#,
            probes: vec![],
        },
        // An abort on 30% of requests.
        Case {
            name: "ratings-abort-30",
            vs: r#"
http:
- fault: {abort: {httpStatus: 503, percentage: {value: 30}}}
  route: [{destination: {host: ratings, subset: v1}}]
"#,
            probes: vec![],
        },
    ];
    let (config, services, explainers) = rendered(&cases);
    let originals: Vec<Value> = cases
        .iter()
        .map(|c| vs_doc(c.name, c.vs).value["spec"].clone())
        .collect();
    let n = 600;
    for v in envoy_versions() {
        let ksit = start(&v, Some(config.clone()), services.clone()).await;
        let istio = start(&v, None, originals.clone()).await;
        let kc = Client::new(&ksit.envoy.base_url());
        let ic = Client::new(&istio.envoy.base_url());
        for (case, x, key, want) in [
            (&cases[0], &explainers[0], "reviews|v3", 0.5),
            (&cases[1], &explainers[1], "503", 0.3),
        ] {
            let h = host(case.name);
            let p = probe("/x", &[], Outcome::default());
            let hit =
                |o: &Outcome| o.backend.as_deref() == Some(key) || o.status.to_string() == key;
            let (mut by_ksit, mut by_istio) = (0, 0);
            for i in 0..n {
                let id = format!("{}-share-{i}", case.name);
                let e = explained(x, &h, &p, &id);
                let (k, _) = answered(&kc, &h, &p, &id).await;
                let (s, _) = answered(&ic, &h, &p, &id).await;
                assert_eq!(k, e, "{v}: {} {id}: filter and explain", case.name);
                by_ksit += usize::from(hit(&k));
                by_istio += usize::from(hit(&s));
            }
            for (leg, count) in [("ksit", by_ksit), ("istio", by_istio)] {
                let share = count as f64 / n as f64;
                assert!(
                    (share - want).abs() < 0.07,
                    "{v}: {} {leg}: {share} of requests, want {want}",
                    case.name
                );
            }
        }
    }
}

/// The paths `b` has answered, once there are `want` of them (or after 10 s: the caller's assertion then
/// shows what is missing).
async fn wait_for(b: &ksit_tests::Backend, want: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut paths = b.paths();
    while paths.len() < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        paths = b.paths();
    }
    paths
}

/// Mirroring: as in Istio, a mirror gets a copy of the requests (the original VirtualService's mirror and the
/// rendered one alike); with the canary's sticky key the filter decides which users are mirrored, and
/// exactly those users' requests reach the mirror, whatever the request id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_copy_requests_and_follow_the_sticky_key() {
    let plain = Case {
        name: "mirror",
        vs: r#"
http:
- route: [{destination: {host: reviews, subset: v1}}]
  mirror: {host: shadow}
  mirrorPercentage: {value: 100}
"#,
        probes: vec![],
    };
    let (config, services, _) = rendered(std::slice::from_ref(&plain));
    let original = vec![vs_doc(plain.name, plain.vs).value["spec"].clone()];
    // A TrafficPolicy (ksit's sticky key has no Istio form): 40% of users mirrored to shadow|canary.
    let sticky: ksit_policy::TrafficPolicySpec = serde_json::from_value(json!({
        "hosts": [host("sticky")],
        "http": [{"name": "reviews", "canary": {"stickyBy": {"header": "end-user"}},
                  "route": [{"destination": {"host": "reviews", "subset": "v1"}}],
                  "mirrors": [{"destination": {"host": "shadow", "subset": "canary"}, "percentage": {"value": 40}}]}]
    }))
    .unwrap();
    let mut tp = TrafficPolicy::new("sticky", TrafficPolicyResourceSpec(sticky.clone()));
    tp.metadata.namespace = Some("bookinfo".into());
    let sticky_vs =
        render_virtual_service(&tp, Target::Cluster("cluster1"), &[]).manifest["spec"].clone();
    let mut sticky_config = plugin_config(&sticky, "cluster1", false);
    sticky_config.as_object_mut().unwrap().remove("cluster");
    let mut config = config;
    config["policies"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "bookinfo/sticky", "spec": sticky_config}));
    let mut services = services;
    services.push(sticky_vs);
    let doc = Document {
        file: "sticky.yaml".into(),
        index: 0,
        value: json!({"apiVersion": "ksit.io/v1alpha1", "kind": "TrafficPolicy",
            "metadata": {"name": "sticky", "namespace": "bookinfo"}, "spec": sticky}),
    };
    let x = explain::engine_for(&doc, Some("cluster1"), false).unwrap();
    for v in envoy_versions() {
        let ksit = start(&v, Some(config.clone()), services.clone()).await;
        let istio = start(&v, None, original.clone()).await;
        for rig in [&ksit, &istio] {
            let c = Client::new(&rig.envoy.base_url());
            for i in 0..10 {
                let r = c
                    .get(&format!("/m/{i}"), &[("host", &host("mirror"))])
                    .await
                    .unwrap();
                assert_eq!(r.backend(), Some("reviews|v1"), "{v}");
            }
            let shadow = rig.backends.get("shadow").unwrap();
            let mut seen = wait_for(shadow, 10).await;
            seen.sort();
            let mut want: Vec<String> = (0..10).map(|i| format!("/m/{i}")).collect();
            want.sort();
            assert_eq!(seen, want, "{v}: every request mirrored");
        }
        // Sticky: each user's requests are all mirrored or none is.
        let c = Client::new(&ksit.envoy.base_url());
        let mut want: Vec<String> = Vec::new();
        let mut marker = None;
        for u in 0..30 {
            let user = format!("user-{u}");
            for i in 0..3 {
                let path = format!("/s/{user}/{i}");
                let req = explain::ExplainRequest {
                    method: "GET".into(),
                    path: path.clone(),
                    authority: host("sticky"),
                    headers: [
                        ("end-user".to_string(), user.clone()),
                        ("x-request-id".to_string(), format!("{user}-{i}")),
                    ]
                    .into_iter()
                    .collect(),
                };
                let e = explain::decide(&x, &req, 0);
                let mirrored = e["mirror"]["to"] == json!(["shadow|canary"]);
                if mirrored {
                    want.push(path.clone());
                    marker.get_or_insert(user.clone());
                }
                // A client's own mirror level is never obeyed (the filter replaces or removes it).
                let id = format!("{user}-{i}");
                let sticky_host = host("sticky");
                let mut h = vec![
                    ("host", sticky_host.as_str()),
                    ("end-user", user.as_str()),
                    ("x-request-id", id.as_str()),
                ];
                if i == 2 {
                    h.push(("x-ksit-mirror", "1"));
                }
                let r = c.get(&path, &h).await.unwrap();
                assert_eq!(r.backend(), Some("reviews|v1"), "{v}");
            }
        }
        let users: std::collections::BTreeSet<&str> =
            want.iter().map(|p| p.split('/').nth(2).unwrap()).collect();
        assert!(
            (4..=20).contains(&users.len()),
            "{v}: {} of 30 users mirrored at 40%",
            users.len()
        );
        assert_eq!(
            want.len(),
            users.len() * 3,
            "{v}: a user's requests are all mirrored or none"
        );
        // A last request by a mirrored user marks the end: once it has arrived, so has everything before it.
        let marker = marker.unwrap();
        let end = format!("/s/{marker}/end");
        c.get(&end, &[("host", &host("sticky")), ("end-user", &marker)])
            .await
            .unwrap();
        want.push(end);
        let canary = ksit.backends.get("shadow|canary").unwrap();
        let mut seen = wait_for(canary, want.len()).await;
        seen.sort();
        want.sort();
        assert_eq!(
            seen, want,
            "{v}: exactly the sticky users' requests reach the mirror"
        );
    }
}
