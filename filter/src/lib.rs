//! ksit-filter: the proxy-wasm HTTP filter that enforces TrafficPolicies in Envoy.
//!
//! Thin glue: every decision is made by `ksit_policy::Engine`; this crate only reads headers, writes
//! `x-ksit-destination`, pauses and releases delayed requests, answers aborts and counts. The host glue is
//! compiled only for wasm32; the pure helpers are tested natively.

pub mod header_map;
pub mod metrics;
pub mod paused;
pub mod roots;

#[cfg(target_arch = "wasm32")]
mod glue;
#[cfg(target_arch = "wasm32")]
mod hooks;
#[cfg(target_arch = "wasm32")]
mod host;
