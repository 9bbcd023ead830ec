//! Shared helpers for the policy tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ksit_policy::{Decision, Engine, Request};

/// The seed TrafficPolicy's spec as JSON (from manifests/examples).
pub fn seed_spec() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/examples/multi-cluster-mesh/trafficpolicy.yaml"
    );
    let text = std::fs::read_to_string(path).expect("seed policy");
    let doc: serde_json::Value = serde_yaml::from_str(&text).expect("yaml");
    doc["spec"].clone()
}

pub fn engine(spec: serde_json::Value) -> Engine {
    Engine::from_json(spec.to_string().as_bytes(), None)
        .unwrap_or_else(|e| panic!("config rejected: {e}"))
}

pub fn errors(spec: serde_json::Value) -> Vec<String> {
    match Engine::from_json(spec.to_string().as_bytes(), None) {
        Ok(_) => vec![],
        Err(e) => e.errors.iter().map(|e| e.to_string()).collect(),
    }
}

/// Owned headers for building a `Request` in tests.
pub struct Req(pub Vec<(Vec<u8>, Vec<u8>)>);

impl Req {
    pub fn get(authority: &str, path: &str) -> Req {
        Req(vec![
            (b":method".to_vec(), b"GET".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (b":authority".to_vec(), authority.as_bytes().to_vec()),
            (b":path".to_vec(), path.as_bytes().to_vec()),
        ])
    }
    pub fn h(mut self, name: &str, value: &str) -> Req {
        self.0
            .push((name.as_bytes().to_vec(), value.as_bytes().to_vec()));
        self
    }
    pub fn method(mut self, m: &str) -> Req {
        self.0[0].1 = m.as_bytes().to_vec();
        self
    }
    pub fn decide<'e>(&self, e: &'e Engine, entropy: u64) -> Owned {
        let pairs: Vec<(&[u8], &[u8])> = self
            .0
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        let d: Decision<'e, '_> = e.decide(&Request::new(&pairs), entropy);
        Owned {
            rule: d.rule.map(|r| r.name.clone()),
            dest: d.destination.map(|d| d.key.clone()),
            pick: d.pick,
            delay_ms: d.delay.filter(|r| r.applied).map(|r| r.spec.millis),
            abort: d.abort.filter(|r| r.applied).map(|r| r.spec.status),
            delay_roll: d.delay.map(|r| r.roll),
            abort_roll: d.abort.map(|r| r.roll),
            stable: d.stable(),
            marks: e.writes_header(&d, &Request::new(&pairs)),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Owned {
    pub rule: Option<String>,
    pub dest: Option<String>,
    pub pick: Option<ksit_policy::Pick>,
    pub delay_ms: Option<u64>,
    pub abort: Option<ksit_policy::AbortStatus>,
    pub delay_roll: Option<u32>,
    pub abort_roll: Option<u32>,
    /// The destination is its rule's stable one.
    pub stable: bool,
    /// The filter writes `x-ksit-destination` for this request.
    pub marks: bool,
}
