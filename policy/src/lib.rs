//! ksit-policy: the TrafficPolicy schema, its validation (errors name the field path), its compilation into
//! an immutable index, and the decision for one request. Pure Rust with no proxy or Kubernetes dependency:
//! the Envoy filter, the controller and the CLI all decide with this crate.

pub mod config;
pub mod duration;
pub mod engine;
pub mod error;
pub mod field_map;
pub mod hash;
pub mod index;
pub mod json;
pub mod json_path;
pub mod request;
pub mod spec;
mod spec_json;
pub mod validate;

pub use config::{NamedPolicy, PluginConfig};
pub use engine::{
    resolve_cluster, AbortStatus, ClusterSource, Decision, Engine, KeyKind, MirrorRoll, Pick,
    ProxyCluster,
};
pub use error::{ConfigError, FieldError};
pub use field_map::FieldMap;
pub use request::Request;
pub use spec::TrafficPolicySpec;
pub use validate::{validate_spec, DESTINATION_HEADER, MIRROR_HEADER};

/// JSON schema of TrafficPolicy `spec`, generated from the Rust types.
pub fn spec_json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(TrafficPolicySpec)).unwrap_or_default()
}
