//! Any bytes as a pluginConfig: parse, validate and compile must return Ok or field-path errors, never
//! panic; a config that compiles must decide a request.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match ksit_policy::Engine::from_json(data, Some("cluster1")) {
        Ok(engine) => {
            let h: Vec<(&[u8], &[u8])> = vec![(b":path", b"/api/x?u=1"), (b":authority", b"myapp.example.com"), (b"x-request-id", b"r")];
            let _ = engine.decide(&ksit_policy::Request::new(&h), 1);
        }
        Err(e) => assert!(!e.errors.is_empty() && e.errors.iter().all(|f| !f.path.is_empty() || !f.message.is_empty())),
    }
});
