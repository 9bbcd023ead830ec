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
