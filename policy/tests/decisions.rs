//! Decisions: matching as Istio defines it, weighted and sticky picks, overrides, faults.
mod common;
use common::*;
use ksit_policy::{AbortStatus, KeyKind, Pick};
use serde_json::json;

const HOST: &str = "myapp.example.com";

fn rules(http: serde_json::Value) -> ksit_policy::Engine {
    engine(json!({"hosts": [HOST], "http": http}))
}

fn one(dest: &str) -> serde_json::Value {
    json!([{"destination": {"host": dest}}])
}

#[test]
fn seed_routes_api_and_web_and_passes_the_rest() {
    let e = engine(seed_spec());
    let web = Req::get(HOST, "/web/index.html").decide(&e, 0);
    assert_eq!(
        (web.rule.as_deref(), web.dest.as_deref(), web.pick),
        (Some("web"), Some("web-service"), Some(Pick::Single))
    );
    let api = Req::get(HOST, "/api/health")
        .h("x-request-id", "r1")
        .decide(&e, 0);
    assert_eq!(api.rule.as_deref(), Some("api"));
    assert!(matches!(
        api.pick,
        Some(Pick::Bucket {
            key: KeyKind::RequestId,
            ..
        })
    ));
    // No rule matches: passes unchanged. Another host: passes unchanged.
    assert_eq!(Req::get(HOST, "/other").decide(&e, 0).rule, None);
    assert_eq!(
        Req::get("other.example.com", "/api").decide(&e, 0).rule,
        None
    );
    // Port ignored, host case-insensitive, trailing dot tolerated.
    assert_eq!(
        Req::get("MyApp.Example.com:8443", "/web")
            .decide(&e, 0)
            .dest
            .as_deref(),
        Some("web-service")
    );
    assert_eq!(
        Req::get("myapp.example.com.", "/web")
            .decide(&e, 0)
            .dest
            .as_deref(),
        Some("web-service")
    );
}

#[test]
fn host_semantics() {
    let e = engine(json!({"policies": [
        {"name": "exact", "spec": {"hosts": ["a.example.com"], "http": [{"route": one("exact")}]}},
        {"name": "wild", "spec": {"hosts": ["*.example.com"], "http": [{"route": one("wild")}]}},
        {"name": "deeper", "spec": {"hosts": ["*.b.example.com"], "http": [{"route": one("deeper")}]}},
        {"name": "all", "spec": {"hosts": ["*"], "http": [{"route": one("all")}]}},
    ]}));
    let d = |h: &str| Req::get(h, "/").decide(&e, 0).dest.unwrap();
    assert_eq!(d("a.example.com"), "exact");
    assert_eq!(d("x.example.com"), "wild");
    assert_eq!(d("x.y.example.com"), "wild");
    assert_eq!(d("x.b.example.com"), "deeper");
    assert_eq!(d("example.com"), "all");
    assert_eq!(d("other.org:80"), "all");
}

#[test]
fn first_matching_rule_wins_and_conditions_combine() {
    let e = rules(json!([
        {"name": "post-admin", "match": [{"uri": {"prefix": "/admin"}, "method": {"exact": "POST"}}], "route": one("a")},
        {"name": "either", "match": [{"uri": {"exact": "/x"}}, {"headers": {"x-flag": {}}}], "route": one("b")},
        {"name": "regex", "match": [{"uri": {"regex": "/v[0-9]+/items"}}], "route": one("c")},
        {"name": "ci", "match": [{"uri": {"prefix": "/CaSe"}, "ignoreUriCase": true}], "route": one("d")},
        {"name": "query", "match": [{"queryParams": {"beta": {"exact": "1"}}}], "route": one("e")},
        {"name": "without", "match": [{"uri": {"prefix": "/w"}, "withoutHeaders": {"x-internal": {"exact": "yes"}}}], "route": one("f")},
        {"name": "authority", "match": [{"authority": {"regex": "myapp\\.example\\.com:9\\d+"}}], "route": one("g")},
    ]));
    let d = |r: Req| r.decide(&e, 0).rule;
    assert_eq!(
        d(Req::get(HOST, "/admin/x").method("POST")).as_deref(),
        Some("post-admin")
    );
    assert_eq!(d(Req::get(HOST, "/admin/x")), None, "AND within a match");
    assert_eq!(d(Req::get(HOST, "/x")).as_deref(), Some("either"));
    assert_eq!(
        d(Req::get(HOST, "/x?q=1")).as_deref(),
        Some("either"),
        "query string is not part of uri"
    );
    assert_eq!(
        d(Req::get(HOST, "/nope").h("x-flag", "")).as_deref(),
        Some("either"),
        "presence match"
    );
    assert_eq!(d(Req::get(HOST, "/v12/items")).as_deref(), Some("regex"));
    assert_eq!(
        d(Req::get(HOST, "/v12/items/3")),
        None,
        "regex must match the whole path"
    );
    assert_eq!(d(Req::get(HOST, "/case/1")).as_deref(), Some("ci"));
    assert_eq!(d(Req::get(HOST, "/q?beta=1")).as_deref(), Some("query"));
    assert_eq!(d(Req::get(HOST, "/q?beta=10")), None);
    assert_eq!(
        d(Req::get(HOST, "/w")).as_deref(),
        Some("without"),
        "absent header satisfies withoutHeaders"
    );
    assert_eq!(
        d(Req::get(HOST, "/w").h("x-internal", "no")).as_deref(),
        Some("without")
    );
    assert_eq!(d(Req::get(HOST, "/w").h("x-internal", "yes")), None);
    assert_eq!(
        d(Req::get("myapp.example.com:9090", "/zzz")).as_deref(),
        Some("authority")
    );
}

#[test]
fn non_utf8_values_never_match_a_regex_and_never_panic() {
    let e = rules(json!([{"match": [{"headers": {"x-v": {"regex": ".*"}}}], "route": one("a")}]));
    let mut r = Req::get(HOST, "/");
    r.0.push((b"x-v".to_vec(), vec![0xff, 0xfe]));
    assert_eq!(r.decide(&e, 0).rule, None);
}

fn split_engine(canary_weight: i32) -> ksit_policy::Engine {
    let mut s = seed_spec();
    s["http"][0]["route"][0]["weight"] = json!(100 - canary_weight);
    s["http"][0]["route"][1]["weight"] = json!(canary_weight);
    engine(s)
}

#[test]
fn weighted_split_follows_weights() {
    let e = split_engine(10);
    let n = 20_000;
    let canary = (0..n)
        .filter(|i| {
            Req::get(HOST, "/api")
                .h("x-request-id", &format!("req-{i}"))
                .decide(&e, 0)
                .dest
                .as_deref()
                == Some("api-service-v2")
        })
        .count();
    let pct = canary as f64 * 100.0 / n as f64;
    assert!((9.0..=11.0).contains(&pct), "canary share {pct}%");
}

#[test]
fn relative_weights_and_single_destination() {
    let e = rules(json!([
        {"name": "rel", "route": [{"destination": {"host": "a"}, "weight": 1}, {"destination": {"host": "b"}, "weight": 3}]},
    ]));
    let b = (0..8000)
        .filter(|i| {
            Req::get(HOST, "/")
                .h("x-request-id", &i.to_string())
                .decide(&e, 0)
                .dest
                .as_deref()
                == Some("b")
        })
        .count();
    assert!(
        (5800..=6200).contains(&b),
        "b got {b} of 8000, expected ~75%"
    );
    // A single destination takes everything even with weight 0.
    let e = rules(json!([{"route": [{"destination": {"host": "only"}, "weight": 0}]}]));
    assert_eq!(
        Req::get(HOST, "/").decide(&e, 7).dest.as_deref(),
        Some("only")
    );
}

#[test]
fn sticky_key_decides_and_request_id_does_not_matter() {
    let e = split_engine(50);
    for u in 0..200 {
        let user = format!("user-{u}");
        let first = Req::get(HOST, "/api")
            .h("x-user-id", &user)
            .h("x-request-id", "a")
            .decide(&e, 1)
            .dest;
        for r in 0..5 {
            let again = Req::get(HOST, "/api")
                .h("x-user-id", &user)
                .h("x-request-id", &format!("r{r}"))
                .decide(&e, r)
                .dest;
            assert_eq!(first, again, "user {user} moved");
        }
    }
    let d = Req::get(HOST, "/api").h("x-user-id", "u").decide(&e, 0);
    assert!(matches!(
        d.pick,
        Some(Pick::Bucket {
            key: KeyKind::Sticky,
            ..
        })
    ));
    // Without any key the pick is random (entropy decides).
    let d = Req::get(HOST, "/api").decide(&e, 1234);
    assert_eq!(
        d.pick,
        Some(Pick::Bucket {
            bucket: 1234,
            key: KeyKind::Random
        })
    );
}

#[test]
fn cookie_and_query_sticky_sources() {
    let mut s = seed_spec();
    s["http"][0]["canary"]["stickyBy"] = json!({"cookie": "session"});
    let e = engine(s.clone());
    let a = Req::get(HOST, "/api")
        .h("cookie", "a=1; session=abc")
        .decide(&e, 0);
    let b = Req::get(HOST, "/api")
        .h("cookie", "session=abc")
        .h("x-request-id", "zz")
        .decide(&e, 9);
    assert_eq!(a.pick, b.pick);
    assert!(matches!(
        a.pick,
        Some(Pick::Bucket {
            key: KeyKind::Sticky,
            ..
        })
    ));
    s["http"][0]["canary"]["stickyBy"] = json!({"queryParam": "u"});
    let e = engine(s);
    let a = Req::get(HOST, "/api?u=42").decide(&e, 0);
    let b = Req::get(HOST, "/api?x=1&u=42").decide(&e, 5);
    assert_eq!(a.pick, b.pick);
}

#[test]
fn override_header_forces_only_listed_destinations() {
    let e = engine(seed_spec());
    let forced = |v: &str| {
        Req::get(HOST, "/api")
            .h("x-ksit-canary", v)
            .h("x-request-id", "fixed")
            .decide(&e, 0)
    };
    for _ in 0..3 {
        let d = forced("api-service-v2");
        assert_eq!(
            (d.dest.as_deref(), d.pick),
            (Some("api-service-v2"), Some(Pick::Override))
        );
    }
    assert_ne!(
        forced("evil-service").pick,
        Some(Pick::Override),
        "unknown destination ignored"
    );
    // The filter's own header is never an input.
    let d = Req::get(HOST, "/api")
        .h("x-ksit-destination", "api-service-v2")
        .decide(&e, 0);
    assert_ne!(d.pick, Some(Pick::Override));
    // Restricted to a list.
    let mut s = seed_spec();
    s["http"][0]["canary"]["allowedOverrides"] = json!(["api-service-v1"]);
    let e = engine(s);
    let d = Req::get(HOST, "/api")
        .h("x-ksit-canary", "api-service-v2")
        .decide(&e, 0);
    assert_ne!(d.pick, Some(Pick::Override));
    let d = Req::get(HOST, "/api")
        .h("x-ksit-canary", "api-service-v1")
        .decide(&e, 0);
    assert_eq!(d.pick, Some(Pick::Override));
    // Turned off: no overrideHeader.
    let mut s = seed_spec();
    s["http"][0]["canary"]
        .as_object_mut()
        .unwrap()
        .remove("overrideHeader");
    let e = engine(s);
    assert_ne!(
        Req::get(HOST, "/api")
            .h("x-ksit-canary", "api-service-v2")
            .decide(&e, 0)
            .pick,
        Some(Pick::Override)
    );
}

#[test]
fn fault_rates_follow_percentages_and_are_reproducible() {
    let e = engine(seed_spec());
    let n = 20_000;
    let (mut delays, mut aborts, mut both) = (0, 0, 0);
    for i in 0..n {
        let r = Req::get(HOST, "/api").h("x-request-id", &format!("id-{i}"));
        let d = r.decide(&e, 0);
        assert_eq!(d, r.decide(&e, 99), "same headers, same outcome");
        delays += d.delay_ms.is_some() as u32;
        aborts += d.abort.is_some() as u32;
        both += (d.delay_ms.is_some() && d.abort.is_some()) as u32;
        if let Some(ms) = d.delay_ms {
            assert_eq!(ms, 5000);
        }
        if let Some(a) = d.abort {
            assert_eq!(a, AbortStatus::Http(503));
        }
    }
    let dp = delays as f64 * 100.0 / n as f64;
    let ap = aborts as f64 * 100.0 / n as f64;
    assert!((9.0..=11.0).contains(&dp), "delay rate {dp}%");
    assert!((4.3..=5.7).contains(&ap), "abort rate {ap}%");
    // Different salts: delay and abort are independent, so both happen on ~0.5%, not on all aborted requests.
    let bp = both as f64 * 100.0 / n as f64;
    assert!(bp < 1.0, "delay and abort correlated: {bp}%");
    // Faults are rolled per request, not per user: one user sees both outcomes.
    let user_delays: Vec<bool> = (0..200)
        .map(|i| {
            Req::get(HOST, "/api")
                .h("x-user-id", "u1")
                .h("x-request-id", &i.to_string())
                .decide(&e, 0)
                .delay_ms
                .is_some()
        })
        .collect();
    assert!(user_delays.contains(&true) && user_delays.contains(&false));
}

#[test]
fn fault_scopes() {
    let mut s = seed_spec();
    s["http"][0]["fault"] = json!({
        "abort": {"httpStatus": 500, "percentage": {"value": 100}},
        "when": {"headers": {"x-chaos": {"exact": "on"}}, "destinations": ["api-service-v2"]},
    });
    let e = engine(s.clone());
    let canary = |chaos: Option<&str>| {
        let mut r = Req::get(HOST, "/api").h("x-ksit-canary", "api-service-v2");
        if let Some(c) = chaos {
            r = r.h("x-chaos", c);
        }
        r.decide(&e, 0).abort
    };
    assert_eq!(canary(Some("on")), Some(AbortStatus::Http(500)));
    assert_eq!(canary(Some("off")), None);
    assert_eq!(canary(None), None);
    let stable = Req::get(HOST, "/api")
        .h("x-ksit-canary", "api-service-v1")
        .h("x-chaos", "on")
        .decide(&e, 0);
    assert_eq!(
        stable.abort, None,
        "fault limited to the canary destination"
    );
    // Cluster scope: only where the engine runs in a listed cluster.
    s["http"][0]["fault"] = json!({"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 100}}, "when": {"clusters": ["cluster2"]}});
    let mut cfg = s.clone();
    cfg["cluster"] = json!("cluster1");
    let e1 = engine(cfg.clone());
    cfg["cluster"] = json!("cluster2");
    let e2 = engine(cfg);
    assert_eq!(Req::get(HOST, "/api").decide(&e1, 0).abort, None);
    assert_eq!(
        Req::get(HOST, "/api").decide(&e2, 0).abort,
        Some(AbortStatus::Grpc(14))
    );
}

#[test]
fn sticky_faults_roll_per_user() {
    let mut s = seed_spec();
    s["http"][0]["fault"] = json!({"abort": {"httpStatus": 503, "percentage": {"value": 50}}, "stickyBy": {"header": "x-user-id"}});
    let e = engine(s);
    for u in 0..50 {
        let user = format!("u{u}");
        let first = Req::get(HOST, "/api")
            .h("x-user-id", &user)
            .h("x-request-id", "0")
            .decide(&e, 0)
            .abort;
        for i in 1..10 {
            let d = Req::get(HOST, "/api")
                .h("x-user-id", &user)
                .h("x-request-id", &i.to_string())
                .decide(&e, 0)
                .abort;
            assert_eq!(first, d);
        }
    }
}

#[test]
fn per_cluster_overrides() {
    let mut s = seed_spec();
    s["overrides"] = json!([{"clusters": ["cluster1"], "http": [{"name": "api",
        "route": [{"destination": {"host": "api-service-v1"}, "weight": 50}, {"destination": {"host": "api-service-v2"}, "weight": 50}],
        "fault": {}}]}]);
    let mut c1 = s.clone();
    c1["cluster"] = json!("cluster1");
    let e1 = engine(c1);
    let e2 = engine(s.clone());
    let share = |e: &ksit_policy::Engine| {
        (0..4000)
            .filter(|i| {
                Req::get(HOST, "/api")
                    .h("x-request-id", &i.to_string())
                    .decide(e, 0)
                    .dest
                    .as_deref()
                    == Some("api-service-v2")
            })
            .count()
    };
    let (s1, s2) = (share(&e1), share(&e2));
    assert!((1800..=2200).contains(&s1), "cluster1 canary {s1}/4000");
    assert!((300..=500).contains(&s2), "elsewhere canary {s2}/4000");
    assert!((0..4000).all(|i| Req::get(HOST, "/api")
        .h("x-request-id", &i.to_string())
        .decide(&e1, 0)
        .abort
        .is_none()));
    // The cluster may also come from the VM environment when the config names none.
    let e = ksit_policy::Engine::from_json(s.to_string().as_bytes(), Some("cluster1")).unwrap();
    assert_eq!(e.cluster(), Some("cluster1"));
    assert_eq!(share(&e), s1);
}

#[test]
fn max_active_faults_default_and_override() {
    assert_eq!(engine(seed_spec()).max_active_faults(), 1000);
    let mut s = seed_spec();
    s["maxActiveFaults"] = json!(3);
    s["overrides"] = json!([{"clusters": ["c9"], "maxActiveFaults": 7}]);
    assert_eq!(engine(s.clone()).max_active_faults(), 3);
    s["cluster"] = json!("c9");
    assert_eq!(engine(s).max_active_faults(), 7);
}

#[test]
fn the_stable_destination_is_the_heaviest_first_of_equals() {
    let stable = |route: serde_json::Value| {
        let r: ksit_policy::spec::HttpRule =
            serde_json::from_value(json!({"route": route})).unwrap();
        r.stable_index()
    };
    let d = |h: &str, w: Option<i32>| match w {
        Some(w) => json!({"destination": {"host": h}, "weight": w}),
        None => json!({"destination": {"host": h}}),
    };
    assert_eq!(stable(json!([d("a", Some(10)), d("b", Some(90))])), Some(1));
    assert_eq!(stable(json!([d("a", Some(50)), d("b", Some(50))])), Some(0));
    assert_eq!(stable(json!([d("a", None), d("b", Some(1))])), Some(1));
    assert_eq!(stable(json!([d("a", Some(0))])), Some(0));
    assert_eq!(stable(json!([])), None);
}

#[test]
fn stable_requests_are_marked_only_when_asked_to_or_to_replace_a_header() {
    let spec = json!({"hosts": [HOST], "http": [
        {"name": "api", "match": [{"uri": {"prefix": "/api"}}], "route": [
            {"destination": {"host": "v1"}, "weight": 10}, {"destination": {"host": "v2"}, "weight": 90}]},
        {"name": "web", "route": one("web")}]});
    let default = engine(spec.clone());
    let mut rendered = spec.clone();
    rendered["headerForStable"] = json!(false);
    let rendered = engine(rendered);
    assert!(default.header_for_stable() && !rendered.header_for_stable());
    let (mut stable, mut canary) = (0, 0);
    for i in 0..400 {
        let id = format!("r{i}");
        let req = Req::get(HOST, "/api/x").h("x-request-id", &id);
        let (a, b) = (req.decide(&default, 0), req.decide(&rendered, 0));
        assert_eq!((&a.dest, a.stable), (&b.dest, b.stable), "{id}");
        assert_eq!(a.stable, a.dest.as_deref() == Some("v2"), "{id}");
        assert!(a.marks, "{id}: headerForStable defaults to true");
        assert_eq!(b.marks, !b.stable, "{id}");
        if b.stable {
            stable += 1;
            // A header already on the request is replaced, whatever the destination.
            let spoofed = Req::get(HOST, "/api/x")
                .h("x-request-id", &id)
                .h("x-ksit-destination", "v1");
            assert!(spoofed.decide(&rendered, 0).marks, "{id}");
        } else {
            canary += 1;
        }
    }
    assert!(stable > 300 && canary > 10, "{stable} {canary}");
    let web = Req::get(HOST, "/web").decide(&rendered, 0);
    assert!(web.stable && !web.marks);
    let none = Req::get("other.example.com", "/web").decide(&rendered, 0);
    assert!(!none.stable && !none.marks);
}

/// Envoy's route matching reads a repeated header as its values joined by commas, the engine its first
/// value, so Envoy's first route choice may follow another rule: with a header the policy matches on
/// repeated, a request to the stable destination is marked after all.
#[test]
fn a_repeated_matched_header_marks_a_stable_request() {
    let spec = json!({"hosts": [HOST], "headerForStable": false, "http": [
        {"name": "premium", "match": [{"withoutHeaders": {"x-tier": {"exact": "free"}}}], "route": one("premium")},
        {"name": "rest", "route": one("free-svc")}]});
    let e = engine(spec);
    let outcome = |r: Req| {
        let d = r.decide(&e, 0);
        (d.dest, d.stable, d.marks)
    };
    let free = Some("free-svc".to_string());
    let once = Req::get(HOST, "/").h("x-tier", "free");
    assert_eq!(outcome(once), (free.clone(), true, false));
    let twice = Req::get(HOST, "/").h("x-tier", "free").h("x-tier", "free");
    assert_eq!(outcome(twice), (free, true, true));
    // A repeated header no rule matches on changes nothing.
    let other = Req::get(HOST, "/")
        .h("x-tier", "free")
        .h("x-other", "a")
        .h("x-other", "b")
        .decide(&e, 0);
    assert!(!other.marks);
}
