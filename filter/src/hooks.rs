//! The test and benchmark hooks on the request path, all in one place. In the module users get (neither
//! feature enabled) every function here is an empty inline function the compiler removes, so `glue.rs` calls
//! them unconditionally and carries no `cfg`.
//!
//! - `bench-stages`: `KSIT_BENCH_STAGE=N` in the VM's environment stops each request after stage N, or runs
//!   one probe host call and stops, so `make bench` can show what a request's cost is made of.
//! - `test-trap`: a request carrying `x-ksit-test-trap` makes the VM trap, so tests can watch Envoy's
//!   failStrategy at work.

/// Where along a request's path a benchmark build may stop it.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    /// At once, before any host call.
    Entered = 0,
    /// After the one call that reads every request header.
    HeadersRead = 1,
    /// After the engine's decision.
    Decided = 2,
    /// After `x-ksit-destination` is set.
    HeaderSet = 3,
}

#[cfg(feature = "bench-stages")]
mod bench {
    use std::sync::atomic::{AtomicU8, Ordering};

    /// Stage 0 plus one host call that hands nothing back (the clock).
    const PROBE_CLOCK: u8 = 4;
    /// Stage 0 plus one host call that hands data back (one header value).
    const PROBE_HEADER: u8 = 5;

    static STAGE: AtomicU8 = AtomicU8::new(u8::MAX);

    pub fn configure() {
        let stage = std::env::var("KSIT_BENCH_STAGE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(u8::MAX);
        STAGE.store(stage, Ordering::Relaxed);
    }

    pub fn stop(stage: super::Stage) -> bool {
        STAGE.load(Ordering::Relaxed) == stage as u8
    }

    pub fn probe() -> bool {
        match STAGE.load(Ordering::Relaxed) {
            PROBE_CLOCK => {
                crate::host::now_ms();
                true
            }
            PROBE_HEADER => {
                crate::host::request_header_value(b":path");
                true
            }
            _ => false,
        }
    }
}

/// Reads the benchmark stage from the VM's environment (on configure).
#[inline(always)]
pub fn configure() {
    #[cfg(feature = "bench-stages")]
    bench::configure();
}

/// Whether a benchmark build stops the request after `stage`; always false in the real module.
#[inline(always)]
pub fn stop(_stage: Stage) -> bool {
    #[cfg(feature = "bench-stages")]
    return bench::stop(_stage);
    #[cfg(not(feature = "bench-stages"))]
    false
}

/// A benchmark probe: one host call, then the request stops (true); false when no probe is configured.
#[inline(always)]
pub fn probe() -> bool {
    #[cfg(feature = "bench-stages")]
    return bench::probe();
    #[cfg(not(feature = "bench-stages"))]
    false
}

/// Traps the VM when a test build sees `x-ksit-test-trap` among the request's headers.
#[inline(always)]
pub fn trap_on(_headers: &[(&[u8], &[u8])]) {
    #[cfg(feature = "test-trap")]
    if _headers.iter().any(|(n, _)| *n == b"x-ksit-test-trap") {
        core::arch::wasm32::unreachable();
    }
}
