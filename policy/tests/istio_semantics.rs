//! Where a TrafficPolicy field has Istio's name it has Istio's meaning (issue 19): one table per point where
//! ksit used to differ, each row a case with what Istio does, checked against the engine (the same code the
//! filter runs) and the validator.
mod common;
use common::*;
use ksit_policy::{AbortStatus, KeyKind};
use serde_json::{json, Value};

const HOST: &str = "reviews.example.com";

fn policy(http: Value) -> Value {
    json!({"hosts": [HOST], "http": http})
}

/// Of 2,000 requests (x-request-id `r0`..), how many get the fault's delay and abort.
fn fault_counts(fault: Value) -> (usize, usize) {
    let e = engine(policy(
        json!([{"route": [{"destination": {"host": "reviews"}}], "fault": fault}]),
    ));
    let (mut delayed, mut aborted) = (0, 0);
    for i in 0..2000 {
        let d = Req::get(HOST, "/")
            .h("x-request-id", &format!("r{i}"))
            .decide(&e, i);
        delayed += usize::from(d.delay_ms.is_some());
        aborted += usize::from(d.abort.is_some());
    }
    (delayed, aborted)
}

/// Istio's `translateFault`: an unset percentage is 0% (the delay's deprecated integer `percent` defaults to
/// 0, and the abort's Envoy percentage is left unset, which Envoy reads as 0). ksit used to inject such a
/// fault into every request.
#[test]
fn a_fault_without_percentage_is_injected_into_no_request() {
    let cases: [(&str, Value, (usize, usize)); 6] = [
        (
            "neither has a percentage",
            json!({"delay": {"fixedDelay": "1s"}, "abort": {"httpStatus": 500}}),
            (0, 0),
        ),
        (
            "delay.percent: 100 (Istio's deprecated integer)",
            json!({"delay": {"fixedDelay": "1s", "percent": 100}}),
            (2000, 0),
        ),
        (
            "percentage 100",
            json!({"delay": {"fixedDelay": "1s", "percentage": {"value": 100}},
                   "abort": {"httpStatus": 500, "percentage": {"value": 100}}}),
            (2000, 2000),
        ),
        (
            "percentage 0",
            json!({"abort": {"httpStatus": 500, "percentage": {"value": 0}}}),
            (0, 0),
        ),
        (
            "grpcStatus without percentage",
            json!({"abort": {"grpcStatus": "UNAVAILABLE"}}),
            (0, 0),
        ),
        (
            "delay with percentage, abort without",
            json!({"delay": {"fixedDelay": "1s", "percentage": {"value": 100}}, "abort": {"httpStatus": 503}}),
            (2000, 0),
        ),
    ];
    for (what, fault, want) in cases {
        assert_eq!(fault_counts(fault), want, "{what}");
    }
    // A share is Envoy's millionths as Istio computes them: the value times 10,000, truncated.
    let e = engine(policy(
        json!([{"route": [{"destination": {"host": "reviews"}}],
        "fault": {"abort": {"httpStatus": 500, "percentage": {"value": 0.57}}}}]),
    ));
    let pairs: Vec<(&[u8], &[u8])> = vec![(b":authority", HOST.as_bytes()), (b":path", b"/")];
    let d = e.decide(&ksit_policy::Request::new(&pairs), 3);
    assert_eq!(
        d.abort.map(|a| a.spec.ppm),
        Some(5699),
        "0.57 * 10000 = 5699.99…"
    );
}

/// Istio ignores case only for `exact` and `prefix` URIs (Envoy's `case_sensitive` does not apply to a
/// `safe_regex`); ksit used to make a regex case-insensitive too, so its rule matched where the rendered
/// route did not.
#[test]
fn ignore_uri_case_applies_to_exact_and_prefix_only() {
    let cases = [
        (json!({"exact": "/Reviews"}), "/reviews", true),
        (json!({"exact": "/Reviews"}), "/REVIEWS", true),
        (json!({"prefix": "/Reviews"}), "/reviews/1", true),
        (json!({"regex": "/Reviews/[0-9]+"}), "/Reviews/1", true),
        (json!({"regex": "/Reviews/[0-9]+"}), "/reviews/1", false),
        (json!({"regex": "(?i)/Reviews/[0-9]+"}), "/reviews/1", true),
    ];
    for (uri, path, want) in cases {
        let e = engine(policy(
            json!([{"match": [{"uri": uri, "ignoreUriCase": true}],
            "route": [{"destination": {"host": "reviews"}}]}]),
        ));
        let got = Req::get(HOST, path).decide(&e, 0).rule.is_some();
        assert_eq!(got, want, "{uri} ignoreUriCase on {path}");
    }
}

/// Istio's reference says the `headers` keys `uri`, `scheme`, `method` and `authority` are ignored, but istiod
/// (pilot's `TranslateRouteMatch`) turns every key into an Envoy header matcher, so they match request
/// headers of that literal name (istio/istio#48555); ksit does the same, so the filter and the rendered route
/// agree. `ksit analyze` warns about such keys (KSIT012).
#[test]
fn headers_named_like_pseudo_fields_are_literal_headers_as_istiod_makes_them() {
    for key in ["uri", "scheme", "method", "authority"] {
        let e = engine(policy(
            json!([{"match": [{"headers": {key: {"exact": "GET"}}}],
            "route": [{"destination": {"host": "reviews"}}]}]),
        ));
        assert_eq!(
            Req::get(HOST, "/").decide(&e, 0).rule,
            None,
            "{key}: the request's method is GET, but it has no header named {key}"
        );
        assert!(
            Req::get(HOST, "/")
                .h(key, "GET")
                .decide(&e, 0)
                .rule
                .is_some(),
            "{key}: a header of that name matches"
        );
    }
}

/// Durations Istio rejects (its CRD's `duration(self) >= duration('1ms')` and pilot's whole-millisecond
/// check) are rejected with the field's path, rather than failing later when a member applies the
/// VirtualService.
#[test]
fn durations_follow_istios_rules() {
    let route = json!([{"destination": {"host": "reviews"}}]);
    let cases: [(Value, Option<&str>); 11] = [
        (
            json!({"timeout": "0s"}),
            Some("spec.http[0].timeout: \"0s\" is too short"),
        ),
        (
            json!({"timeout": "500us"}),
            Some("spec.http[0].timeout: \"500us\" is too short"),
        ),
        (
            json!({"timeout": "1.5ms"}),
            Some("spec.http[0].timeout: \"1.5ms\": Istio takes whole milliseconds"),
        ),
        (json!({"timeout": "1m30s"}), None),
        (
            json!({"retries": {"attempts": 2, "perTryTimeout": "0s"}}),
            Some("spec.http[0].retries.perTryTimeout: \"0s\" is too short"),
        ),
        (
            json!({"retries": {"attempts": 2, "perTryTimeout": "2 seconds"}}),
            Some("spec.http[0].retries.perTryTimeout: invalid duration"),
        ),
        (
            json!({"retries": {"attempts": 2, "backoff": "100us"}}),
            Some("spec.http[0].retries.backoff: \"100us\" is too short"),
        ),
        (
            json!({"retries": {"attempts": 2, "perTryTimeout": "250ms", "backoff": "25ms"}}),
            None,
        ),
        (
            json!({"fault": {"delay": {"fixedDelay": "1500us", "percentage": {"value": 1}}}}),
            Some("spec.http[0].fault.delay.fixedDelay: \"1500us\": Istio takes whole milliseconds"),
        ),
        (
            json!({"corsPolicy": {"maxAge": "1500ms"}}),
            Some("spec.http[0].corsPolicy.maxAge: whole seconds only"),
        ),
        (json!({"corsPolicy": {"maxAge": "24h"}}), None),
    ];
    for (fields, want) in cases {
        let mut rule = fields.clone();
        rule["route"] = route.clone();
        let e = errors(policy(json!([rule])));
        match want {
            None => assert!(e.is_empty(), "{fields}: {e:?}"),
            Some(w) => assert!(
                e.len() == 1 && e[0].starts_with(w),
                "{fields}: want {w:?}, got {e:?}"
            ),
        }
    }
}

/// Istio's WasmPlugin `failStrategy` has three values; ksit refused `FAIL_RELOAD`.
#[test]
fn fail_strategy_takes_istios_three_values() {
    for (v, ok) in [
        ("FAIL_CLOSE", true),
        ("FAIL_OPEN", true),
        ("FAIL_RELOAD", true),
        ("FAIL_RESTART", false),
        ("fail_open", false),
    ] {
        let mut p = policy(json!([{"route": [{"destination": {"host": "reviews"}}]}]));
        p["failStrategy"] = json!(v);
        let e = errors(p);
        assert_eq!(e.is_empty(), ok, "{v}: {e:?}");
        if !ok {
            assert!(
                e[0].contains("expected one of `FAIL_CLOSE`, `FAIL_OPEN`, `FAIL_RELOAD`"),
                "{e:?}"
            );
        }
    }
}

/// Users of an unnamed weighted rule, each rule in turn placed after zero to three other rules: they land on
/// the same destination wherever the rule stands, because an unnamed rule is keyed by a hash of its matches
/// and destinations, not by its position (`http[INDEX]` used to be hashed, so inserting a rule above it
/// moved about half its users).
#[test]
fn unnamed_rules_keep_their_users_when_other_rules_are_inserted_or_reordered() {
    let canary = json!({"match": [{"uri": {"prefix": "/reviews"}}],
        "route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 50},
                  {"destination": {"host": "reviews", "subset": "v2"}, "weight": 50}],
        "canary": {"stickyBy": {"header": "end-user"}},
        "fault": {"abort": {"httpStatus": 503, "percentage": {"value": 50}}, "stickyBy": {"header": "end-user"}}});
    let other = |p: &str| json!({"match": [{"uri": {"prefix": p}}], "route": [{"destination": {"host": "other"}}]});
    let layouts: [Vec<Value>; 4] = [
        vec![canary.clone()],
        vec![other("/a"), canary.clone()],
        vec![other("/b"), other("/a"), canary.clone()],
        vec![other("/c"), canary.clone(), other("/a")],
    ];
    let users: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
    let outcome = |http: &Vec<Value>| -> Vec<(Option<String>, Option<AbortStatus>)> {
        let e = engine(policy(Value::Array(http.clone())));
        users
            .iter()
            .map(|u| {
                let d = Req::get(HOST, "/reviews/1").h("end-user", u).decide(&e, 0);
                (d.dest, d.abort)
            })
            .collect()
    };
    let first = outcome(&layouts[0]);
    let v2 = first
        .iter()
        .filter(|(d, _)| d.as_deref() == Some("reviews|v2"))
        .count();
    assert!((60..=140).contains(&v2), "50/50 split: {v2} of 200 on v2");
    for (i, layout) in layouts.iter().enumerate().skip(1) {
        assert_eq!(outcome(layout), first, "layout {i}: users moved");
    }
    // What the identity covers: a change of weights keeps it (users only move as the weights say), a change
    // of matches or destinations gives a new one.
    let id = |r: &Value| {
        ksit_policy::engine::rule_identity(&serde_json::from_value(r.clone()).unwrap_or_default())
    };
    let mut reweighted = canary.clone();
    reweighted["route"][0]["weight"] = json!(90);
    reweighted["route"][1]["weight"] = json!(10);
    assert_eq!(id(&reweighted), id(&canary));
    let mut reordered = canary.clone();
    reordered["route"] = json!([canary["route"][1], canary["route"][0]]);
    assert_eq!(id(&reordered), id(&canary));
    let mut moved = canary.clone();
    moved["match"][0]["uri"]["prefix"] = json!("/ratings");
    assert_ne!(id(&moved), id(&canary));
    // A named rule is keyed by its name, as before (pinned values stay pinned).
    let mut named = canary.clone();
    named["name"] = json!("reviews");
    let e = engine(policy(json!([named])));
    assert_eq!(e.policies()[0].rules[0].key, "reviews");
    assert_eq!(e.policies()[0].rules[0].name, "reviews");
    let e = engine(policy(json!([other("/a"), canary.clone()])));
    assert_eq!(
        e.policies()[0].rules[1].name,
        "http[1]",
        "shown by position"
    );
    assert_eq!(e.policies()[0].rules[1].key, id(&canary));
}

/// A rule with a `redirect` or `directResponse` has no destinations: the filter decides that it matched (so
/// no later rule takes the request, and a client's own destination header is dropped) and Envoy's route
/// answers.
#[test]
fn redirect_and_direct_response_rules_match_without_a_destination() {
    for answer in [
        json!({"redirect": {"uri": "/v2/reviews", "redirectCode": 308}}),
        json!({"directResponse": {"status": 418, "body": {"string": "teapot"}}}),
    ] {
        let mut rule = json!({"name": "answer", "match": [{"uri": {"prefix": "/old"}}]});
        for (k, v) in answer.as_object().into_iter().flatten() {
            rule[k] = v.clone();
        }
        let e = engine(policy(json!([rule,
            {"name": "rest", "route": [{"destination": {"host": "reviews"}}]}])));
        let d = Req::get(HOST, "/old/1").decide(&e, 0);
        assert_eq!(
            (d.rule.as_deref(), d.dest, d.pick, d.marks),
            (Some("answer"), None, None, false),
            "{answer}"
        );
        assert_eq!(
            Req::get(HOST, "/new").decide(&e, 0).dest.as_deref(),
            Some("reviews")
        );
    }
}

/// Istio's checks of the fields ksit carries to the VirtualService, each with the path to the field.
#[test]
fn carried_fields_are_checked_as_istio_checks_them() {
    let r = || json!({"route": [{"destination": {"host": "reviews"}}]});
    let with = |f: &dyn Fn(&mut Value)| {
        let mut rule = r();
        f(&mut rule);
        errors(policy(json!([rule])))
    };
    type Case<'a> = (&'a str, &'a dyn Fn(&mut Value), Option<&'a str>);
    let cases: Vec<Case<'_>> = vec![
        ("redirect and route", &|x| x["redirect"] = json!({"uri": "/a"}), Some("spec.http[0].route: a rule with a redirect routes nowhere")),
        ("redirect alone", &|x| { x.as_object_mut().map(|o| o.remove("route")); x["redirect"] = json!({"uri": "/a", "redirectCode": 302}); }, None),
        ("redirect code 304", &|x| { x.as_object_mut().map(|o| o.remove("route")); x["redirect"] = json!({"uri": "/a", "redirectCode": 304}); }, Some("spec.http[0].redirect.redirectCode: must be 301, 302, 303, 307 or 308")),
        ("redirect with nothing", &|x| { x.as_object_mut().map(|o| o.remove("route")); x["redirect"] = json!({"redirectCode": 301}); }, Some("spec.http[0].redirect: set at least one of")),
        ("redirect prefixRewrite on exact match", &|x| { x.as_object_mut().map(|o| o.remove("route")); x["match"] = json!([{"uri": {"exact": "/a"}}]); x["redirect"] = json!({"prefixRewrite": "/b"}); }, Some("spec.http[0].redirect.prefixRewrite: needs every uri match")),
        ("redirect port and derivePort", &|x| { x.as_object_mut().map(|o| o.remove("route")); x["redirect"] = json!({"port": 8443, "derivePort": "FROM_REQUEST_PORT"}); }, Some("spec.http[0].redirect: set port or derivePort, not both")),
        ("directResponse status 600", &|x| { x.as_object_mut().map(|o| o.remove("route")); x["directResponse"] = json!({"status": 600}); }, Some("spec.http[0].directResponse.status: must be an HTTP status")),
        ("directResponse bytes not base64", &|x| { x.as_object_mut().map(|o| o.remove("route")); x["directResponse"] = json!({"status": 200, "body": {"bytes": "*"}}); }, Some("spec.http[0].directResponse.body.bytes: must be base64")),
        ("directResponse with fault", &|x| { x.as_object_mut().map(|o| o.remove("route")); x["directResponse"] = json!({"status": 503}); x["fault"] = json!({"abort": {"httpStatus": 500}}); }, Some("spec.http[0].fault: Istio injects no fault")),
        ("no route, no answer", &|x| { x.as_object_mut().map(|o| o.remove("route")); }, Some("spec.http[0].route: must have at least one destination")),
        ("delegate", &|x| { x.as_object_mut().map(|o| o.remove("route")); x["delegate"] = json!({"name": "reviews-routes", "namespace": "bookinfo"}); }, Some("spec.http[0].delegate: not supported: the filter decides every request")),
        ("mirror and mirrors", &|x| { x["mirror"] = json!({"host": "m"}); x["mirrors"] = json!([{"destination": {"host": "n"}}]); }, Some("spec.http[0].mirrors: set mirror or mirrors, not both")),
        ("mirror percentage 101", &|x| { x["mirror"] = json!({"host": "m"}); x["mirrorPercentage"] = json!({"value": 101}); }, Some("spec.http[0].mirrorPercentage.value: must be between 0 and 100")),
        ("mirrorPercent", &|x| { x["mirror"] = json!({"host": "m"}); x["mirrorPercent"] = json!(10); }, Some("spec.http[0].mirrorPercent: deprecated by Istio")),
        ("mirror subset not a DNS label", &|x| x["mirrors"] = json!([{"destination": {"host": "m", "subset": "V_1"}}]), Some("spec.http[0].mirrors[0].destination.subset: \"V_1\" is not a valid subset name")),
        ("retries attempts 0 with retryOn", &|x| x["retries"] = json!({"retryOn": "5xx"}), Some("spec.http[0].retries.attempts: is 0 (retries disabled)")),
        ("retryOn unknown", &|x| x["retries"] = json!({"attempts": 2, "retryOn": "5xx,oops"}), Some("spec.http[0].retries.retryOn: \"oops\" is not a retry condition")),
        ("retryOn status", &|x| x["retries"] = json!({"attempts": 2, "retryOn": "503,connect-failure", "retryRemoteLocalities": true}), None),
        ("rewrite uri and regex", &|x| x["rewrite"] = json!({"uri": "/a", "uriRegexRewrite": {"match": "^/b", "rewrite": "/c"}}), Some("spec.http[0].rewrite: set uri or uriRegexRewrite, not both")),
        ("rewrite regex half", &|x| x["rewrite"] = json!({"uriRegexRewrite": {"match": "^/b"}}), Some("spec.http[0].rewrite.uriRegexRewrite: set both match and rewrite")),
        ("rewrite regex invalid", &|x| x["rewrite"] = json!({"uriRegexRewrite": {"match": "(", "rewrite": "/c"}}), Some("spec.http[0].rewrite.uriRegexRewrite.match: invalid regex")),
        ("rewrite empty", &|x| x["rewrite"] = json!({}), Some("spec.http[0].rewrite: set at least one of uri, uriRegexRewrite or authority")),
        ("headers pseudo", &|x| x["headers"] = json!({"request": {"set": {":path": "/x"}}}), Some("spec.http[0].headers.request.set.:path: pseudo-headers")),
        ("headers authority twice", &|x| { x["headers"] = json!({"request": {"set": {"host": "a"}}}); x["rewrite"] = json!({"authority": "b"}); }, Some("spec.http[0].headers.request: the authority is set more than once")),
        ("headers remove host", &|x| x["headers"] = json!({"response": {"remove": ["host"]}}), Some("spec.http[0].headers.response.remove[0]: \"host\" cannot be removed")),
        ("header value lone %", &|x| x["route"][0]["headers"] = json!({"request": {"add": {"x-a": "100%"}}}), Some("spec.http[0].route[0].headers.request.add.x-a: \"100%\": a lone '%'")),
        ("header value variable", &|x| x["headers"] = json!({"request": {"set": {"x-a": "%DOWNSTREAM_REMOTE_ADDRESS% 100%%"}}}), None),
        ("cors method", &|x| x["corsPolicy"] = json!({"allowMethods": ["GET", "FETCH"]}), Some("spec.http[0].corsPolicy.allowMethods[1]: \"FETCH\" is not an HTTP method")),
        ("cors origin empty", &|x| x["corsPolicy"] = json!({"allowOrigins": [{"exact": ""}]}), Some("spec.http[0].corsPolicy.allowOrigins[0]: set exactly one of exact, prefix, regex")),
        ("cors unmatchedPreflights", &|x| x["corsPolicy"] = json!({"unmatchedPreflights": "DROP"}), Some("spec.http[0].corsPolicy.unmatchedPreflights: must be UNSPECIFIED, FORWARD or IGNORE")),
        ("match port", &|x| x["match"] = json!([{"port": 80}]), Some("spec.http[0].match[0].port: not supported")),
        ("match sourceLabels", &|x| x["match"] = json!([{"sourceLabels": {"app": "productpage"}}]), Some("spec.http[0].match[0].sourceLabels: not supported")),
        ("match statPrefix and name", &|x| x["match"] = json!([{"name": "v1-users", "statPrefix": "reviews", "uri": {"prefix": "/"}}]), None),
        ("header match prefix empty", &|x| x["match"] = json!([{"headers": {"end-user": {"prefix": ""}}}]), Some("spec.http[0].match[0].headers.end-user.prefix: must not be empty")),
        ("fault percentage below a millionth", &|x| x["fault"] = json!({"abort": {"httpStatus": 500, "percentage": {"value": 0.00001}}}), Some("spec.http[0].fault.abort.percentage.value: must be 0 or at least 0.0001")),
    ];
    for (what, f, want) in cases {
        let e = with(f);
        match want {
            None => assert!(e.is_empty(), "{what}: {e:?}"),
            Some(w) => assert!(
                e.iter().any(|x| x.starts_with(w)),
                "{what}: want {w:?}, got {e:?}"
            ),
        }
    }
}

/// Mirroring follows the rule's sticky key: the filter rolls once per user and marks the request with the
/// mirror level, so the same users are mirrored every time; mirrors nest (whoever gets the 10% mirror also
/// gets the 50% one). Without a sticky key Envoy decides per request, as in Istio, and the filter leaves it.
#[test]
fn mirroring_follows_the_sticky_key() {
    let rule = json!({"name": "reviews", "route": [{"destination": {"host": "reviews"}}],
        "canary": {"stickyBy": {"header": "end-user"}},
        "mirrors": [{"destination": {"host": "shadow-a"}, "percentage": {"value": 50}},
                    {"destination": {"host": "shadow-b"}, "percentage": {"value": 10}},
                    {"destination": {"host": "shadow-c"}}]});
    let e = engine(policy(json!([rule])));
    assert_eq!(
        e.policies()[0].rules[0]
            .mirror
            .as_ref()
            .map(|m| m.thresholds.clone()),
        Some(vec![1_000_000, 500_000, 100_000])
    );
    let level = |user: &str, id: &str| {
        let pairs: Vec<(&[u8], &[u8])> = vec![
            (b":authority", HOST.as_bytes()),
            (b":path", b"/"),
            (b"end-user", user.as_bytes()),
            (b"x-request-id", id.as_bytes()),
        ];
        let d = e.decide(&ksit_policy::Request::new(&pairs), 0);
        assert!(
            e.writes_header(&d, &ksit_policy::Request::new(&pairs)),
            "mirrored requests are marked"
        );
        d.mirror.map(|m| (m.level, m.key))
    };
    let mut per_level = [0usize; 4];
    for u in 0..2000 {
        let user = format!("u{u}");
        let first = level(&user, "a");
        for id in ["b", "c", "d"] {
            assert_eq!(
                level(&user, id),
                first,
                "{user}: the same level on every request"
            );
        }
        let (l, key) = first.unwrap_or((0, KeyKind::Random));
        assert_eq!(key, KeyKind::Sticky);
        per_level[l as usize] += 1;
    }
    // Level 1: only the 100% mirror (50%), level 2: plus the 50% one (40%), level 3: all three (10%).
    assert_eq!(per_level[0], 0, "the 100% mirror takes everyone");
    for (l, want) in [(1, 1000), (2, 800), (3, 200)] {
        assert!(
            per_level[l].abs_diff(want) < want / 5,
            "level {l}: {} of 2000, want about {want}",
            per_level[l]
        );
    }
    // Without stickyBy, or with every mirror at 100%, the filter does not decide mirroring.
    let mut plain = rule.clone();
    plain.as_object_mut().map(|o| o.remove("canary"));
    let e = engine(policy(json!([plain])));
    assert!(e.policies()[0].rules[0].mirror.is_none());
    let mut full = rule.clone();
    full["mirrors"] = json!([{"destination": {"host": "shadow-a"}}]);
    let e = engine(policy(json!([full])));
    assert!(e.policies()[0].rules[0].mirror.is_none());
}
