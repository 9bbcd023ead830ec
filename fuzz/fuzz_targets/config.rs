//! Any bytes as a pluginConfig: parse, validate and compile must return Ok or field-path errors, never
//! panic; a config that compiles must decide a request. The filter's hand-written reader must agree with
//! serde_json and the serde-derived readers (`from_json_serde`): accepted by both or neither, the same
//! values, the same first error's path and message (a misplaced float may be written differently).
#![no_main]

use ksit_policy::config::PluginConfig;
use libfuzzer_sys::fuzz_target;

fn outcome(
    r: Result<PluginConfig, ksit_policy::ConfigError>,
) -> Result<String, Vec<(String, String)>> {
    r.map(|c| format!("{c:?}")).map_err(|e| {
        e.errors
            .iter()
            .map(|f| {
                (
                    f.path.clone(),
                    ksit_policy::config::comparable_message(&f.message),
                )
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let ours = outcome(PluginConfig::from_json(data));
    let theirs = outcome(PluginConfig::from_json_serde(data));
    assert_eq!(ours, theirs, "hand reader and serde disagree");
    match ksit_policy::Engine::from_json(data, Some("cluster1")) {
        Ok(engine) => {
            let h: Vec<(&[u8], &[u8])> = vec![
                (b":path", b"/api/x?u=1"),
                (b":authority", b"myapp.example.com"),
                (b"x-request-id", b"r"),
            ];
            let _ = engine.decide(&ksit_policy::Request::new(&h), 1);
        }
        Err(e) => assert!(
            !e.errors.is_empty()
                && e.errors
                    .iter()
                    .all(|f| !f.path.is_empty() || !f.message.is_empty())
        ),
    }
});
