//! Reading the filter's pluginConfig: one TrafficPolicy spec (plus the `cluster` the controller sets), or a
//! list of named policies sharing one filter. Parse errors carry the field path.

use crate::error::{ConfigError, FieldError};
use crate::spec::TrafficPolicySpec;
use serde::Deserialize;
use serde_json::Value;

/// What the filter is configured with.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PluginConfig {
    /// The cluster this proxy runs in (set by the controller); overrides resolve against it.
    pub cluster: Option<String>,
    pub policies: Vec<NamedPolicy>,
}

/// One policy and the name it is reported under (`namespace/name` when the controller renders it).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedPolicy {
    pub name: String,
    pub spec: TrafficPolicySpec,
}

impl PluginConfig {
    /// Parses either form:
    /// - `{ "cluster": "c1", "hosts": [...], "http": [...] }`: one spec, named `policy`;
    /// - `{ "cluster": "c1", "policies": [{"name": "ns/a", "spec": {...}}, ...] }`.
    pub fn from_json(bytes: &[u8]) -> Result<PluginConfig, ConfigError> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| ConfigError::one("pluginConfig", format!("not valid JSON: {e}")))?;
        let Value::Object(mut map) = value else {
            return Err(ConfigError::one(
                "pluginConfig",
                "must be a JSON object (a TrafficPolicy spec)",
            ));
        };
        let cluster = match map.remove("cluster") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() => Some(s),
            Some(_) => return Err(ConfigError::one("cluster", "must be a non-empty string")),
        };
        let policies = if let Some(list) = map.remove("policies") {
            if let Some(k) = map.keys().next() {
                return Err(ConfigError::one(
                    k.clone(),
                    "with `policies`, put each spec under policies[i].spec; only `cluster` may stand beside it",
                ));
            }
            let list: Vec<NamedPolicy> = from_value(list, "policies")?;
            let mut seen = std::collections::BTreeSet::new();
            for (i, p) in list.iter().enumerate() {
                if !seen.insert(p.name.as_str()) {
                    return Err(ConfigError::one(
                        format!("policies[{i}].name"),
                        format!("duplicate policy {:?}", p.name),
                    ));
                }
            }
            list
        } else {
            vec![NamedPolicy {
                name: "policy".into(),
                spec: from_value(Value::Object(map), "spec")?,
            }]
        };
        Ok(PluginConfig { cluster, policies })
    }

    /// The field-path prefix under which policy `i`'s problems are reported.
    pub fn prefix(&self, i: usize) -> String {
        if self.policies.len() == 1 && self.policies[0].name == "policy" {
            "spec".into()
        } else {
            format!("policies[{i}].spec")
        }
    }
}

/// Deserializes with the failing field's path in the error, e.g. `spec.http[0].route[1].weight`.
pub fn from_value<T: serde::de::DeserializeOwned>(
    v: Value,
    prefix: &str,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let inner = e.path().to_string();
        let path = if inner == "." || inner.is_empty() {
            prefix.to_string()
        } else if prefix.is_empty() {
            inner
        } else if inner.starts_with('[') {
            format!("{prefix}{inner}")
        } else {
            format!("{prefix}.{inner}")
        };
        ConfigError {
            errors: vec![FieldError::new(path, e.into_inner().to_string())],
        }
    })
}
