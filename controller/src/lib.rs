//! ksit-controller: the hub controller and the CLI's building blocks.
//!
//! `resources` (CRD types) -> `manifests` (YAML in) -> `desired` (pure desired state per cluster) ->
//! `controller` (watch the hub, apply to members, prune, report status) with `server` (health, metrics,
//! module download).

pub mod controller;
pub mod desired;
pub mod manifests;
pub mod module;
pub mod resources;
