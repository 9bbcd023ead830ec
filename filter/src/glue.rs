//! The module's entry points: configuration, per-request enforcement of the engine's decision, delay
//! release on tick, and the end of a stream or root.
//!
//! Envoy enters the VM through five callbacks, written here as `ksit_on_*` and exported as `proxy_on_*` by
//! the post-link step (`tools/wasm-exports`), which drops the SDK's dispatcher. That dispatcher keeps a
//! context object per stream, so it also needs `proxy_on_context_create`, one more entry into the VM on
//! every request; this filter keeps no per-stream state, so a request costs two entries (its headers, and
//! `proxy_on_delete` at its end, which frees the place of a request a delay still holds). Its root is found
//! by `roots::Roots`. The SDK still provides the allocator Envoy writes into, the ABI version marker, the
//! logger and the configure-time host calls.

use crate::hooks::{self, Stage};
use crate::paused::{Paused, PausedSet};
use crate::roots::{Registered, Roots};
use crate::{header_map, host, metrics};
use ksit_policy::{
    AbortStatus, ClusterSource, Engine, ProxyCluster, Request, DESTINATION_HEADER, MIRROR_HEADER,
};
use log::{error, info, warn};
use proxy_wasm::types::{LogLevel, MetricType};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
}}

/// `proxy_on_request_headers` results (Envoy's FilterHeadersStatus).
const CONTINUE: u32 = 0;
const PAUSE: u32 = 1;

/// How often paused requests are checked while any are held.
const TICK_MS: u32 = 10;

/// How often, when several filter instances share the VM, the others are checked for having been deleted by
/// Envoy without a `proxy_on_delete` reaching this VM (a backstop: their policy is then dropped).
const ROOT_SWEEP_MS: u64 = 5_000;

/// The property naming a request's filter instance, asked only when several share the VM.
const PLUGIN_NAME: &[u8] = b"plugin_name";

/// The proxy's Istio cluster ID (istiod puts `CLUSTER_ID` in every proxy's node metadata), read once per
/// configuration, never per request: the node is the `xds.node` attribute (Envoy 1.36 and later), `node`
/// in older proxies.
const ISTIO_CLUSTER_ID: [&[u8]; 2] = [
    b"xds\0node\0metadata\0CLUSTER_ID",
    b"node\0metadata\0CLUSTER_ID",
];

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

/// One configured filter instance (a root context): the compiled policy, metric ids, the requests it holds
/// and when its tick next does each chore. Shared by its requests through `Rc`.
struct Root {
    id: u32,
    /// Its `plugin_name`, and a fingerprint of its pluginConfig.
    name: Vec<u8>,
    config_hash: u64,
    engine: Engine,
    metrics: Metrics,
    paused: RefCell<PausedSet>,
    rng: Cell<u64>,
    next_flush_ms: Cell<u64>,
    next_root_sweep_ms: Cell<u64>,
}

impl Root {
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

impl Registered for Rc<Root> {
    fn id(&self) -> u32 {
        self.id
    }
    fn name(&self) -> &[u8] {
        &self.name
    }
}

thread_local! {
    /// The VM's configured roots (one VM runs on one thread).
    static ROOTS: RefCell<Roots<Rc<Root>>> = RefCell::new(Roots::default());
}

fn root(id: u32) -> Option<Rc<Root>> {
    ROOTS.with(|r| r.borrow().get(id).cloned())
}

/// FNV-1a, to tell two configurations apart.
fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn define(kind: MetricType, name: &str) -> u32 {
    proxy_wasm::hostcalls::define_metric(kind, name).unwrap_or(u32::MAX)
}

#[no_mangle]
pub extern "C" fn ksit_on_vm_start(_root_id: u32, _vm_config_size: usize) -> u32 {
    info!("ksit filter {} starting", env!("CARGO_PKG_VERSION"));
    1
}

#[no_mangle]
pub extern "C" fn ksit_on_configure(root_id: u32, _config_size: usize) -> u32 {
    u32::from(configure(root_id))
}

fn configure(root_id: u32) -> bool {
    let errors = define(MetricType::Counter, metrics::CONFIG_ERRORS);
    let config = proxy_wasm::hostcalls::get_buffer(
        proxy_wasm::types::BufferType::PluginConfiguration,
        0,
        usize::MAX,
    )
    .ok()
    .flatten()
    .unwrap_or_default();
    let env_cluster = std::env::var("KSIT_CLUSTER").ok();
    let istio_cluster_id = ISTIO_CLUSTER_ID
        .iter()
        .find_map(|path| host::property(path))
        .and_then(|v| String::from_utf8(v).ok())
        .filter(|v| !v.is_empty());
    hooks::configure();
    let proxy = ProxyCluster {
        env: env_cluster.as_deref(),
        istio_cluster_id: istio_cluster_id.as_deref(),
    };
    let engine = match Engine::from_json_on_proxy(&config, proxy) {
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
            // Not registered: the roots already configured keep serving.
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
    let name = host::property(PLUGIN_NAME).unwrap_or_default();
    if engine.cluster_source() == ClusterSource::Unknown {
        warn!(
            "ksit: this proxy's cluster is unknown (no `cluster` in the pluginConfig, no KSIT_CLUSTER, no \
             CLUSTER_ID node metadata): the base policy applies, without any cluster's overrides"
        );
        host::increment(define(MetricType::Counter, metrics::CLUSTER_UNKNOWN), 1);
    }
    info!(
        "ksit: configured {} polic{}, {} rule(s), cluster {} (from {}), maxActiveFaults {}",
        engine.policies().len(),
        if engine.policies().len() == 1 {
            "y"
        } else {
            "ies"
        },
        engine.rule_count(),
        engine.cluster().unwrap_or("(none)"),
        engine.cluster_source().as_str(),
        engine.max_active_faults()
    );
    let now = host::now_ms();
    let root = Rc::new(Root {
        id: root_id,
        config_hash: fingerprint(&config),
        name,
        engine,
        metrics: m,
        paused: RefCell::new(PausedSet::default()),
        rng: Cell::new(now ^ 0x9e37_79b9_7f4a_7c15 | 1),
        next_flush_ms: Cell::new(0),
        next_root_sweep_ms: Cell::new(now + ROOT_SWEEP_MS),
    });
    let (replaced, count, clash) = ROOTS.with(|r| {
        let mut roots = r.borrow_mut();
        let clash = roots
            .iter()
            .any(|o| o.id != root_id && o.name == root.name && o.config_hash != root.config_hash);
        let replaced = roots.insert(root.clone());
        (replaced, roots.len(), clash)
    });
    // Requests still paused under this root's previous configuration keep their place.
    if let Some(old) = replaced {
        old.metrics.flush();
        let held = std::mem::take(&mut *old.paused.borrow_mut());
        root.paused.borrow_mut().absorb(held);
    }
    let name = String::from_utf8_lossy(&root.name);
    if count > 1 {
        info!("ksit: {count} filter instances share this VM; requests are told apart by plugin_name ({name})");
    }
    if clash {
        warn!(
            "ksit: another filter instance in this VM is also named '{name}' with a different pluginConfig: \
             requests go to the newest (expected while a configuration update drains; otherwise give each \
             ksit filter its own name)"
        );
    }
    // The tick releases delays (every TICK_MS while any are held) and flushes the counters.
    let empty = root.paused.borrow().is_empty();
    host::set_tick_period_ms(if empty { FLUSH_MS } else { TICK_MS });
    true
}

#[no_mangle]
pub extern "C" fn ksit_on_tick(root_id: u32) {
    let Some(root) = root(root_id) else {
        // Removed from the registry (deleted, its held requests handed over) or never configured.
        host::set_tick_period_ms(0);
        return;
    };
    let now = host::now_ms();
    // Within one fast tick of due, so a FLUSH_MS tick that fires a little early still flushes.
    if now + u64::from(TICK_MS) >= root.next_flush_ms.get() {
        root.metrics.flush();
        root.next_flush_ms.set(now + u64::from(FLUSH_MS));
    }
    let mut due = Vec::new();
    root.paused.borrow_mut().take_due(now, &mut due);
    let mut moved = false;
    // No borrow is held while resuming or answering (Envoy runs both after this call returns, but the
    // registry and the paused sets stay free for whatever runs next anyway).
    for p in &due {
        host::increment(root.metrics.active_delays, -1);
        moved = true;
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
    if now >= root.next_root_sweep_ms.get() {
        root.next_root_sweep_ms.set(now + ROOT_SWEEP_MS);
        moved |= sweep_roots(root_id);
    }
    // The tick period is set on the effective context's root: this one again.
    if moved {
        host::set_effective_context(root_id);
    }
    let held = !root.paused.borrow().is_empty();
    host::set_tick_period_ms(if held { TICK_MS } else { FLUSH_MS });
}

/// Drops the other roots Envoy has deleted without telling this VM; true when it changed the effective
/// context.
fn sweep_roots(root_id: u32) -> bool {
    let others = ROOTS.with(|r| r.borrow().others(root_id));
    if others.is_empty() {
        return false;
    }
    let dead: Vec<u32> = others
        .into_iter()
        .filter(|&id| !host::set_effective_context(id))
        .collect();
    if !dead.is_empty() {
        let dropped = ROOTS.with(|r| r.borrow_mut().retain(|id| !dead.contains(&id)));
        for d in dropped {
            retire(&d);
        }
    }
    true
}

/// A root that left (deleted by Envoy): its counts are handed to Envoy, and the requests it still holds go
/// to the root now serving its name (or any other), which then ticks fast enough to release them; with no
/// root left they are forgotten. Changes the effective context.
fn retire(gone: &Root) {
    gone.metrics.flush();
    info!(
        "ksit: filter instance {} ({}) was deleted",
        gone.id,
        String::from_utf8_lossy(&gone.name)
    );
    let held = std::mem::take(&mut *gone.paused.borrow_mut());
    if held.is_empty() {
        return;
    }
    match ROOTS.with(|r| r.borrow().heir(gone.id, &gone.name).cloned()) {
        Some(heir) => {
            heir.paused.borrow_mut().absorb(held);
            if host::set_effective_context(heir.id) {
                host::set_tick_period_ms(TICK_MS);
            }
        }
        None => host::increment(
            gone.metrics.active_delays,
            -i64::try_from(held.len()).unwrap_or(i64::MAX),
        ),
    }
}

/// The end of a stream, or of a root. A stream a delay still holds (its client left, or it timed out)
/// frees its place under maxActiveFaults at once.
#[no_mangle]
pub extern "C" fn ksit_on_delete(context_id: u32) {
    if let Some(gone) = ROOTS.with(|r| r.borrow_mut().remove(context_id)) {
        retire(&gone);
        return;
    }
    ROOTS.with(|r| {
        for root in r.borrow().iter() {
            if root.paused.borrow_mut().remove(context_id) {
                host::increment(root.metrics.active_delays, -1);
                break;
            }
        }
    });
}

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

/// The stream's filter state entry (`wasm.ksit_destination`) where a ksit filter records the destination it
/// set, while several filter instances share the VM (two WasmPlugins on one proxy may put two in one
/// chain): a later one in the chain then knows the header is not a client's. Clients cannot write filter
/// state, and each filter of a chain has its own context, so the stream's state is what they share.
const DECIDED_PROPERTY: &[u8] = b"ksit_destination";

#[no_mangle]
pub extern "C" fn ksit_on_request_headers(context_id: u32, num_headers: usize, _eos: u32) -> u32 {
    if hooks::stop(Stage::Entered) || hooks::probe() {
        return CONTINUE;
    }
    let (root, several) = ROOTS.with(|r| {
        let roots = r.borrow();
        (
            roots.for_request(|| host::property(PLUGIN_NAME)).cloned(),
            roots.len() > 1,
        )
    });
    match root {
        Some(root) => on_request_headers(&root, context_id, num_headers, several),
        None => {
            unserved();
            CONTINUE
        }
    }
}

thread_local! {
    static UNSERVED_LOGGED: Cell<bool> = const { Cell::new(false) };
}

/// A request no configured root serves (several share the VM and none has its `plugin_name`): it passes
/// undecided, and no client's destination passes with it.
fn unserved() {
    host::remove_request_header(DESTINATION_HEADER);
    if !UNSERVED_LOGGED.with(|l| l.replace(true)) {
        warn!("ksit: a request's filter instance is not configured in this VM; passed undecided");
    }
}

/// A mirror level as the text of `x-ksit-mirror`.
fn level_digits(mut n: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(2);
    loop {
        out.insert(0, b'0' + (n % 10) as u8);
        n /= 10;
        if n == 0 {
            return out;
        }
    }
}

fn on_request_headers(root: &Root, context_id: u32, num_headers: usize, several: bool) -> u32 {
    let Some(buf) = host::request_headers() else {
        return CONTINUE;
    };
    let mut pairs = Vec::with_capacity(num_headers);
    header_map::parse(&buf, &mut pairs);
    if hooks::stop(Stage::HeadersRead) {
        return CONTINUE;
    }
    hooks::trap_on(&pairs);
    let req = Request::new(&pairs);
    let destination = req.header(DESTINATION_HEADER.as_bytes());
    let d = root.engine.decide(&req, root.entropy());
    // A destination already on the request is a client's (replaced or removed), unless an earlier ksit
    // filter in this chain set it; so is a mirror level.
    let earlier = several
        && destination
            .is_some_and(|v| host::property(DECIDED_PROPERTY).is_some_and(|set| set == v));
    let spoofed = destination.is_some() && !earlier;
    let client_mirror = !earlier && req.header(MIRROR_HEADER.as_bytes()).is_some();
    let m = &root.metrics;
    if hooks::stop(Stage::Decided) {
        return CONTINUE;
    }
    match (d.rule, d.destination) {
        (Some(rule), Some(dest)) => {
            // Unless the routes' default leads there anyway (a stable destination, `headerForStable`
            // false, no header to replace): then the route Envoy chose stays, and is not selected again.
            if root.engine.writes_header(&d, &req) {
                host::set_request_header(DESTINATION_HEADER, dest.key.as_bytes());
                if several {
                    host::set_property(DECIDED_PROPERTY, dest.key.as_bytes());
                }
            }
            match d.mirror_level() {
                Some(level) => {
                    host::set_request_header(MIRROR_HEADER, &level_digits(level));
                }
                None if client_mirror => {
                    host::remove_request_header(MIRROR_HEADER);
                }
                None => {}
            }
            if hooks::stop(Stage::HeaderSet) {
                return CONTINUE;
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
        // No rule matched, or its rule answers the request itself (a redirect or direct response).
        _ => {
            if spoofed {
                host::remove_request_header(DESTINATION_HEADER);
            }
            if client_mirror {
                host::remove_request_header(MIRROR_HEADER);
            }
            if d.policy.is_some() && d.rule.is_none() {
                m.unmatched.add();
            }
        }
    }
    if spoofed {
        m.spoofed.add();
    }
    let Some(rule) = d.rule else {
        return CONTINUE;
    };
    let rm = m.rules.get(rule.id);
    let then_abort = d.abort.filter(|a| a.applied).map(|a| a.spec.status);
    if let Some(delay) = d.delay.filter(|r| r.applied) {
        let entry = Paused {
            context_id,
            due_ms: host::now_ms() + delay.spec.millis,
            then_abort,
        };
        let (held, was_empty) = {
            let mut paused = root.paused.borrow_mut();
            let was_empty = paused.is_empty();
            (
                paused.try_insert(entry, root.engine.max_active_faults()),
                was_empty,
            )
        };
        if held {
            // The tick period is set on the effective context's root, and this stream's root in Envoy
            // may not be the one holding it (two live roots of one name: the newest decides for both).
            if was_empty && host::set_effective_context(root.id) {
                host::set_tick_period_ms(TICK_MS);
            }
            host::increment(m.active_delays, 1);
            if let Some(rm) = rm {
                host::increment(rm.delays, 1);
                if then_abort.is_some() {
                    host::increment(rm.aborts, 1);
                }
            }
            return PAUSE;
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
        return PAUSE;
    }
    CONTINUE
}
