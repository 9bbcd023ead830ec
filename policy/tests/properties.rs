//! Properties that must hold for every input, not just the examples.
mod common;
use common::*;
use proptest::prelude::*;
use serde_json::json;

fn two_way(stable: i32, canary: i32) -> ksit_policy::Engine {
    engine(json!({"hosts": ["h"], "http": [{"name": "r", "route": [
        {"destination": {"host": "stable"}, "weight": stable},
        {"destination": {"host": "canary"}, "weight": canary}]}]}))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Raising the canary's weight only moves users onto it, never off it.
    #[test]
    fn canary_is_monotone(w1 in 0i32..=100, extra in 0i32..=100, users in prop::collection::vec("[a-z0-9]{1,12}", 50)) {
        let w2 = (w1 + extra).min(100);
        prop_assume!(w1 < 100 || w2 < 100);
        let (before, after) = (two_way(100 - w1, w1), two_way(100 - w2, w2));
        for u in &users {
            let b = Req::get("h", "/").h("x-request-id", u).decide(&before, 0).dest;
            let a = Req::get("h", "/").h("x-request-id", u).decide(&after, 0).dest;
            if b.as_deref() == Some("canary") {
                prop_assert_eq!(a.as_deref(), Some("canary"), "user {} left the canary when it grew from {} to {}", u, w1, w2);
            }
        }
    }

    /// Relative weights scale: 1:9 decides exactly like 10:90.
    #[test]
    fn weights_are_relative(w in 1i32..=99, k in 1i32..=5, u in "[a-z]{1,10}") {
        let a = Req::get("h", "/").h("x-request-id", &u).decide(&two_way(100 - w, w), 0).dest;
        let b = Req::get("h", "/").h("x-request-id", &u).decide(&two_way((100 - w) * k, w * k), 0).dest;
        prop_assert_eq!(a, b);
    }

    /// Arbitrary requests never panic and a decision is a function of the headers.
    #[test]
    fn decisions_are_total_and_deterministic(path in prop::collection::vec(any::<u8>(), 0..64),
                                              host in prop::collection::vec(any::<u8>(), 0..300),
                                              hv in prop::collection::vec(any::<u8>(), 0..32)) {
        let e = engine(seed_spec());
        let hdrs: Vec<(&[u8], &[u8])> = vec![(b":path", &path), (b":authority", &host), (b"x-user-id", &hv), (b"cookie", &hv), (b"x-request-id", &hv)];
        let r = ksit_policy::Request::new(&hdrs);
        let a = e.decide(&r, 1);
        let b = e.decide(&r, 1);
        prop_assert_eq!(a.destination.map(|d| &d.key), b.destination.map(|d| &d.key));
    }

    /// Every weight configuration is accepted or rejected with a path, never a panic.
    #[test]
    fn weights_validate(ws in prop::collection::vec(-5i32..200, 1..5)) {
        let route: Vec<_> = ws.iter().enumerate().map(|(i, w)| json!({"destination": {"host": format!("d{i}")}, "weight": w})).collect();
        let spec = json!({"hosts": ["h"], "http": [{"route": route}]});
        let errs = errors(spec);
        let bad = ws.iter().any(|w| *w < 0) || (ws.len() > 1 && ws.iter().all(|w| *w == 0));
        prop_assert_eq!(!errs.is_empty(), bad, "{:?}", errs);
        for e in errs { prop_assert!(e.starts_with("spec.http[0].route"), "{}", e); }
    }
}

/// A random rule: uri prefix, exact, regex, header-only or ignore-case, so indexed and unindexed rules mix.
fn rule(kind: u8, seg: u8) -> serde_json::Value {
    let p = format!("/s{}", seg % 7);
    let m = match kind % 5 {
        0 => json!({"uri": {"prefix": p}}),
        1 => json!({"uri": {"exact": format!("{p}/x")}}),
        2 => json!({"uri": {"regex": format!("{p}/[a-z]+")}}),
        3 => json!({"headers": {"x-h": {"exact": format!("{}", seg % 3)}}}),
        _ => json!({"uri": {"prefix": p.to_uppercase()}, "ignoreUriCase": true}),
    };
    json!({"match": [m], "route": [{"destination": {"host": format!("d{seg}")}}]})
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The rule index (large policies) picks exactly the rule a first-match scan picks.
    #[test]
    fn indexed_lookup_equals_first_match_scan(kinds in prop::collection::vec((any::<u8>(), any::<u8>()), 32..80),
                                              paths in prop::collection::vec((0u8..8, prop::sample::select(vec!["", "/x", "/abc", "/X", "x", "/x/y"]), any::<bool>(), 0u8..4), 30)) {
        let http: Vec<_> = kinds.iter().map(|(k, s)| rule(*k, *s)).collect();
        let e = engine(json!({"hosts": ["h"], "http": http}));
        let policy = &e.policies()[0];
        let mut matched = 0;
        for (seg, tail, upper, h) in &paths {
            let path = format!("/s{seg}{tail}");
            let path = if *upper { path.to_uppercase() } else { path };
            let hv = h.to_string();
            let hdrs: Vec<(&[u8], &[u8])> = vec![(b":path", path.as_bytes()), (b":authority", b"h"), (b"x-h", hv.as_bytes())];
            let req = ksit_policy::Request::new(&hdrs);
            let got = e.decide(&req, 0).rule.map(|r| r.index);
            let want = policy.rules.iter().find(|r| r.matches_request(&req)).map(|r| r.index);
            prop_assert_eq!(got, want, "path {:?} x-h {}", path, h);
            matched += usize::from(got.is_some());
        }
        prop_assert!(matched > 0, "no path matched any rule: the property would test nothing");
    }
}
