//! Any bytes as the filter's serialized header map, and as request headers, through the seed policy:
//! parsing and deciding never panic, and a decision is a function of the headers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static ENGINE: OnceLock<ksit_policy::Engine> = OnceLock::new();

const SEED: &str = r#"{"hosts":["myapp.example.com","*.example.org"],"maxActiveFaults":5,"http":[
 {"name":"api","match":[{"uri":{"prefix":"/api"}},{"headers":{"x-v":{"regex":"v[0-9]+"}},"queryParams":{"u":{}}}],
  "route":[{"destination":{"host":"api-service-v1"},"weight":90},{"destination":{"host":"api-service-v2","subset":"canary"},"weight":10}],
  "canary":{"stickyBy":{"cookie":"session"},"overrideHeader":"x-ksit-canary"},
  "fault":{"delay":{"fixedDelay":"5s","percentage":{"value":10}},"abort":{"grpcStatus":"UNAVAILABLE","percentage":{"value":5}},"when":{"headers":{"x-chaos":{}}},"stickyBy":{"header":"x-user-id"}}},
 {"name":"web","match":[{"uri":{"exact":"/web"},"ignoreUriCase":true,"method":{"exact":"GET"}},{"withoutHeaders":{"x-internal":{"prefix":"y"}}}],
  "route":[{"destination":{"host":"web-service"}}]}]}"#;

fuzz_target!(|data: &[u8]| {
    // A seed policy that does not compile would make this target test nothing: fail loudly instead.
    let engine = ENGINE.get_or_init(|| ksit_policy::Engine::from_json(SEED.as_bytes(), None).unwrap_or_else(|e| panic!("seed policy: {e}")));
    // As the filter receives them: one serialized header map.
    let mut pairs = Vec::new();
    ksit_filter::header_map::parse(data, &mut pairs);
    let a = engine.decide(&ksit_policy::Request::new(&pairs), 7).destination.map(|d| d.key.clone());
    let b = engine.decide(&ksit_policy::Request::new(&pairs), 7).destination.map(|d| d.key.clone());
    assert_eq!(a, b);
    // And as free-form header lines "name: value\n".
    let lines: Vec<(&[u8], &[u8])> = data
        .split(|b| *b == b'\n')
        .filter_map(|l| {
            let i = l.iter().position(|b| *b == b':')?;
            Some((&l[..i], &l[(i + 1).min(l.len())..]))
        })
        .collect();
    let _ = engine.decide(&ksit_policy::Request::new(&lines), 3);
});
