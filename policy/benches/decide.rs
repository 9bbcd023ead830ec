//! One decision against policies of 10 to 10,000 rules spread over hosts and path prefixes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ksit_policy::{Engine, Request};
use serde_json::json;
use std::hint::black_box;

/// `rules` rules over `hosts` hosts, each rule with its own path prefix; the seed-like split.
fn engine(rules: usize, hosts: usize) -> Engine {
    let mut policies = Vec::new();
    for h in 0..hosts {
        let per = rules / hosts;
        let http: Vec<_> = (0..per)
            .map(|r| {
                json!({"name": format!("r{r}"), "match": [{"uri": {"prefix": format!("/svc{r}/")}}],
                       "route": [{"destination": {"host": format!("s{r}-v1")}, "weight": 90}, {"destination": {"host": format!("s{r}-v2")}, "weight": 10}],
                       "canary": {"stickyBy": {"header": "x-user-id"}},
                       "fault": {"delay": {"fixedDelay": "1s", "percentage": {"value": 0.0}}}})
            })
            .collect();
        policies.push(json!({"name": format!("p{h}"), "spec": {"hosts": [format!("h{h}.example.com")], "http": http}}));
    }
    Engine::from_json(json!({"policies": policies}).to_string().as_bytes(), None).unwrap()
}

fn bench(c: &mut Criterion) {
    for (group, spread) in [
        ("decide_10_rules_per_host", true),
        ("decide_one_host", false),
    ] {
        let mut g = c.benchmark_group(group);
        for rules in [10usize, 100, 1_000, 10_000] {
            let hosts = if spread { (rules / 10).max(1) } else { 1 };
            let e = engine(rules, hosts);
            let per = rules / hosts;
            // The worst case for a rule scan: the last rule of the last host.
            let host = format!("h{}.example.com", hosts - 1);
            let path = format!("/svc{}/items?x=1", per - 1);
            let headers: Vec<(&[u8], &[u8])> = vec![
                (b":method", b"GET"),
                (b":path", path.as_bytes()),
                (b":authority", host.as_bytes()),
                (b"x-request-id", b"5b1a-44f1"),
                (b"x-user-id", b"user-42"),
                (b"user-agent", b"bench"),
            ];
            assert!(e.decide(&Request::new(&headers), 0).matched());
            g.bench_with_input(BenchmarkId::from_parameter(rules), &headers, |b, h| {
                b.iter(|| {
                    let d = e.decide(&Request::new(black_box(h)), 1);
                    black_box(d.destination.map(|d| d.key.len()))
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
