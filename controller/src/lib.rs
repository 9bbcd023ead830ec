//! ksit-controller: the hub controller and the CLI's building blocks.
//!
//! `resources` (CRD types) -> `manifests` (YAML in) / `hub` (API in) -> `desired` (pure desired state per
//! cluster) -> `member` (one worker per cluster: apply, prune, drift) -> `status` (hub status and events);
//! `controller` wires them under `leader` election; `server` serves health, metrics and the module.

pub mod analyze;
pub mod controller;
pub mod delivery;
pub mod desired;
pub mod error;
pub mod explain;
pub mod hub;
pub mod leader;
pub mod manifests;
pub mod member;
pub mod memory;
pub mod metrics;
pub mod module;
pub mod plan;
pub mod resources;
pub mod server;
pub mod status;
pub mod template;
