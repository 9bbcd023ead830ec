//! proxy-wasm glue: configuration, per-request enforcement of the engine's decision, delay release on tick.

use crate::paused::{Paused, PausedSet};
use crate::{header_map, host, metrics};
use ksit_policy::{AbortStatus, Engine, Request, DESTINATION_HEADER};
use log::{error, info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root::default()));
}}

/// How often paused requests are checked while any are held.
const TICK_MS: u32 = 10;

/// Benchmark builds (feature `bench-stages`): where each request stops, from `KSIT_BENCH_STAGE`.
#[cfg(feature = "bench-stages")]
static BENCH_STAGE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(u8::MAX);

/// Whether a benchmark build stops the request after stage `n`; always false in the real module.
#[inline(always)]
fn bench_stop(_n: u8) -> bool {
    #[cfg(feature = "bench-stages")]
    return BENCH_STAGE.load(std::sync::atomic::Ordering::Relaxed) == _n;
    #[cfg(not(feature = "bench-stages"))]
    false
}

/// How often the per-request counters are handed to Envoy. Counting in the VM and adding the sum on the
/// root context's tick saves a host call on every request (measured at ~2 µs, see docs/benchmarks.md); the
/// counters lag by at most this much.
const FLUSH_MS: u32 = 500;

/// A counter counted in the VM and added to Envoy's on the next flush.
struct Batched {
    id: u32,
    pending: Cell<u64>,
}

impl Batched {
    fn new(id: u32) -> Self {
        Batched {
            id,
            pending: Cell::new(0),
        }
    }
    fn add(&self) {
        self.pending.set(self.pending.get().saturating_add(1));
    }
    fn flush(&self) {
        let n = self.pending.replace(0);
        if n > 0 {
            host::increment(self.id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// Metric ids for one rule.
struct RuleMetrics {
    per_destination: Vec<Batched>,
    delays: u32,
    aborts: u32,
    skipped: u32,
}

struct Metrics {
    rules: Vec<RuleMetrics>,
    unmatched: Batched,
    spoofed: Batched,
    active_delays: u32,
    vm_memory: u32,
}

impl Metrics {
    /// Hands every batched count to Envoy, and the VM's memory size.
    fn flush(&self) {
        for r in &self.rules {
            r.per_destination.iter().for_each(Batched::flush);
        }
        self.unmatched.flush();
        self.spoofed.flush();
        host::record(self.vm_memory, host::memory_bytes());
    }
}

/// Everything one worker's HTTP contexts share: the compiled policy, metric ids and the paused requests.
struct Shared {
    engine: Engine,
    metrics: Metrics,
    paused: RefCell<PausedSet>,
    rng: Cell<u64>,
}

impl Shared {
    fn entropy(&self) -> u64 {
        // xorshift64*: only for requests that carry no key at all.
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[derive(Default)]
struct Root {
    shared: Option<Rc<Shared>>,
    config_errors: Option<u32>,
    due: Vec<Paused>,
    /// When the counters are next handed to Envoy (the tick also runs every TICK_MS while delays are held).
    next_flush_ms: u64,
}

fn define(kind: MetricType, name: &str) -> u32 {
    proxy_wasm::hostcalls::define_metric(kind, name).unwrap_or(u32::MAX)
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        info!("ksit filter {} starting", env!("CARGO_PKG_VERSION"));
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let errors = *self
            .config_errors
            .get_or_insert_with(|| define(MetricType::Counter, metrics::CONFIG_ERRORS));
        let config = proxy_wasm::hostcalls::get_buffer(
            proxy_wasm::types::BufferType::PluginConfiguration,
            0,
            usize::MAX,
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        let env_cluster = std::env::var("KSIT_CLUSTER").ok();
        #[cfg(feature = "bench-stages")]
        BENCH_STAGE.store(
            std::env::var("KSIT_BENCH_STAGE")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(u8::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        let engine = match Engine::from_json(&config, env_cluster.as_deref()) {
            Ok(e) => e,
            Err(e) => {
                for fe in &e.errors {
                    error!("ksit: invalid pluginConfig: {fe}");
                }
                error!(
                    "ksit: pluginConfig rejected with {} error(s); the filter will not start",
                    e.errors.len()
                );
                host::increment(errors, 1);
                return false;
            }
        };
        let several = engine.policies().len() > 1;
        let rules = engine
            .policies()
            .iter()
            .flat_map(|p| p.rules.iter().map(move |r| (p, r)))
            .map(|(p, r)| {
                let l = metrics::RuleLabel {
                    policy: several.then_some(p.name.as_str()),
                    rule: &r.name,
                };
                RuleMetrics {
                    per_destination: r
                        .destinations
                        .iter()
                        .map(|d| {
                            Batched::new(define(MetricType::Counter, &metrics::requests(l, &d.key)))
                        })
                        .collect(),
                    delays: define(MetricType::Counter, &metrics::delays(l)),
                    aborts: define(MetricType::Counter, &metrics::aborts(l)),
                    skipped: define(MetricType::Counter, &metrics::faults_skipped(l)),
                }
            })
            .collect();
        let m = Metrics {
            rules,
            unmatched: Batched::new(define(MetricType::Counter, metrics::UNMATCHED)),
            spoofed: Batched::new(define(MetricType::Counter, metrics::SPOOFED)),
            active_delays: define(MetricType::Gauge, metrics::ACTIVE_DELAYS),
            vm_memory: define(MetricType::Gauge, metrics::VM_MEMORY),
        };
        info!(
            "ksit: configured {} polic{}, {} rule(s), cluster {}, maxActiveFaults {}",
            engine.policies().len(),
            if engine.policies().len() == 1 {
                "y"
            } else {
                "ies"
            },
            engine.rule_count(),
            engine.cluster().unwrap_or("(none)"),
            engine.max_active_faults()
        );
        // Requests still paused under the previous configuration keep their place: they are released by
        // this root's tick with the set carried over.
        let paused = self
            .shared
            .as_ref()
            .map(|s| {
                s.metrics.flush();
                std::mem::take(&mut *s.paused.borrow_mut())
            })
            .unwrap_or_default();
        // The tick releases delays (every TICK_MS while any are held) and flushes the counters.
        host::set_tick_period_ms(if paused.is_empty() { FLUSH_MS } else { TICK_MS });
        self.shared = Some(Rc::new(Shared {
            engine,
            metrics: m,
            paused: RefCell::new(paused),
            rng: Cell::new(host::now_ms() ^ 0x9e37_79b9_7f4a_7c15 | 1),
        }));
        true
    }

    fn on_tick(&mut self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let now = host::now_ms();
        // Within one fast tick of due, so a FLUSH_MS tick that fires a little early still flushes.
        if now + u64::from(TICK_MS) >= self.next_flush_ms {
            shared.metrics.flush();
            self.next_flush_ms = now + u64::from(FLUSH_MS);
        }
        self.due.clear();
        let empty = {
            let mut paused = shared.paused.borrow_mut();
            paused.take_due(now, &mut self.due);
            paused.is_empty()
        };
        for p in &self.due {
            host::increment(shared.metrics.active_delays, -1);
            if !host::set_effective_context(p.context_id) {
                continue; // the stream is gone
            }
            match p.then_abort {
                Some(status) => abort(status),
                None => {
                    host::resume_request();
                }
            }
        }
        if empty {
            host::set_tick_period_ms(FLUSH_MS);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            id: context_id,
            shared: self.shared.clone(),
            paused: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    id: u32,
    shared: Option<Rc<Shared>>,
    paused: bool,
}

impl Context for Http {}

fn abort(status: AbortStatus) {
    let ok = match status {
        AbortStatus::Http(code) => host::send_local_response(
            code,
            "ksit_fault_abort",
            b"fault filter abort",
            &[(b"x-ksit-fault", b"abort")],
            -1,
        ),
        AbortStatus::Grpc(code) => host::send_local_response(
            200,
            "ksit_fault_abort",
            b"",
            &[(b"x-ksit-fault", b"abort")],
            code as i32,
        ),
    };
    if !ok {
        warn!("ksit: host refused the local reply for an abort fault");
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, num_headers: usize, _end_of_stream: bool) -> Action {
        if bench_stop(0) {
            return Action::Continue;
        }
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        let Some(buf) = host::request_headers() else {
            return Action::Continue;
        };
        let mut pairs = Vec::with_capacity(num_headers);
        header_map::parse(&buf, &mut pairs);
        if bench_stop(1) {
            return Action::Continue;
        }
        #[cfg(feature = "test-trap")]
        if pairs.iter().any(|(n, _)| *n == b"x-ksit-test-trap") {
            core::arch::wasm32::unreachable();
        }
        let spoofed = pairs
            .iter()
            .any(|(n, _)| *n == DESTINATION_HEADER.as_bytes());
        let d = shared
            .engine
            .decide(&Request::new(&pairs), shared.entropy());
        let m = &shared.metrics;
        if bench_stop(2) {
            return Action::Continue;
        }
        match (d.rule, d.destination) {
            (Some(rule), Some(dest)) => {
                host::set_request_header(DESTINATION_HEADER, dest.key.as_bytes());
                if bench_stop(3) {
                    return Action::Continue;
                }
                if let Some(rm) = m.rules.get(rule.id) {
                    let di = rule
                        .destinations
                        .iter()
                        .position(|x| std::ptr::eq(x, dest))
                        .unwrap_or(0);
                    if let Some(c) = rm.per_destination.get(di) {
                        c.add();
                    }
                }
            }
            _ => {
                if spoofed {
                    host::remove_request_header(DESTINATION_HEADER);
                }
                if d.policy.is_some() {
                    m.unmatched.add();
                }
            }
        }
        if spoofed {
            m.spoofed.add();
        }
        let Some(rule) = d.rule else {
            return Action::Continue;
        };
        let rm = m.rules.get(rule.id);
        let then_abort = d.abort.filter(|a| a.applied).map(|a| a.spec.status);
        if let Some(delay) = d.delay.filter(|r| r.applied) {
            let entry = Paused {
                context_id: self.id,
                due_ms: host::now_ms() + delay.spec.millis,
                then_abort,
            };
            let (held, was_empty) = {
                let mut paused = shared.paused.borrow_mut();
                let was_empty = paused.is_empty();
                (
                    paused.try_insert(entry, shared.engine.max_active_faults()),
                    was_empty,
                )
            };
            if held {
                self.paused = true;
                if was_empty {
                    host::set_tick_period_ms(TICK_MS);
                }
                host::increment(m.active_delays, 1);
                if let Some(rm) = rm {
                    host::increment(rm.delays, 1);
                    if then_abort.is_some() {
                        host::increment(rm.aborts, 1);
                    }
                }
                return Action::Pause;
            }
            if let Some(rm) = rm {
                host::increment(rm.skipped, 1);
            }
        }
        if let Some(status) = then_abort {
            if let Some(rm) = rm {
                host::increment(rm.aborts, 1);
            }
            abort(status);
            return Action::Pause;
        }
        Action::Continue
    }
}

impl Drop for Http {
    /// A stream that ends while paused (client reset or timeout) leaves nothing behind.
    fn drop(&mut self) {
        if !self.paused {
            return;
        }
        if let Some(shared) = &self.shared {
            if shared.paused.borrow_mut().remove(self.id) {
                host::increment(shared.metrics.active_delays, -1);
            }
        }
    }
}
