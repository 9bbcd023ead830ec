//! Reading the filter's pluginConfig: one TrafficPolicy spec (plus the `cluster` the controller sets), or a
//! list of named policies sharing one filter. Parse errors carry the field path.

use crate::error::{ConfigError, FieldError};
use crate::field_map::FieldMap;
use crate::spec::TrafficPolicySpec;
use serde::Deserialize;
use serde_json::Value;

/// What the filter is configured with.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginConfig {
    /// The cluster this proxy runs in (set by the controller's per-cluster rendering); overrides resolve
    /// against it. Wins over the proxy's own cluster ID.
    pub cluster: Option<String>,
    /// ksit extension `clusterIds`: Istio cluster ID (the proxy's `CLUSTER_ID` node metadata) -> ksit cluster
    /// name, for clusters whose two names differ. Without an entry the two are taken as equal.
    pub cluster_ids: FieldMap<String>,
    pub policies: Vec<NamedPolicy>,
    /// `headerForStable` (default true): whether the filter writes `x-ksit-destination` when it sends a
    /// request to its rule's stable destination ([`crate::spec::HttpRule::stable_index`]). False when the
    /// routes behind the filter send unmarked requests of each rule to that destination anyway, as the
    /// VirtualService the controller renders does with its default route per rule: those requests then
    /// keep the route Envoy chose before the filter ran, and Envoy need not select it again.
    pub header_for_stable: bool,
}

impl Default for PluginConfig {
    fn default() -> Self {
        PluginConfig {
            cluster: None,
            cluster_ids: FieldMap::new(),
            policies: Vec::new(),
            header_for_stable: true,
        }
    }
}

/// The pluginConfig members that are not a policy's: they may stand beside `policies`, and are not part of
/// the single spec.
const FILTER_MEMBERS: [&str; 3] = ["cluster", "clusterIds", "headerForStable"];

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
    ///
    /// Read by hand (`json.rs`, `spec_json.rs`), with the verdicts, values, field paths and messages of
    /// [`PluginConfig::from_json_serde`], so the filter links no serde_json deserializer.
    pub fn from_json(bytes: &[u8]) -> Result<PluginConfig, ConfigError> {
        crate::json::check(bytes)
            .map_err(|e| ConfigError::one("pluginConfig", format!("not valid JSON: {e}")))?;
        Self::from_members(
            bytes,
            |t| read_text(t, "policies"),
            |t| read_text(t, "spec"),
            |raw| crate::json::read_value(raw).ok(),
            |raw| crate::json::read_value(raw).ok(),
            |raw| crate::json::read_value(raw).ok(),
        )
    }

    /// [`PluginConfig::from_json`] with serde_json and the serde-derived readers (what the filter used
    /// before; kept to check the hand-written reader against, see `tests/json_reader.rs` and the fuzz
    /// target).
    #[doc(hidden)]
    pub fn from_json_serde(bytes: &[u8]) -> Result<PluginConfig, ConfigError> {
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
            .map_err(|e| ConfigError::one("pluginConfig", format!("not valid JSON: {e}")))?;
        Self::from_members(
            bytes,
            |t| from_text(t, "policies"),
            |t| from_text(t, "spec"),
            |raw| serde_json::from_slice(raw).ok(),
            |raw| serde_json::from_slice(raw).ok(),
            |raw| serde_json::from_slice(raw).ok(),
        )
    }

    /// Both forms, from JSON text already checked: `policies` reads the `policies` list, `spec` the
    /// single spec (naming fields under `policies` and `spec`), `cluster` the `cluster` member (`None`
    /// when it is not a string or null), `flag` a boolean member (`None` when it is not a boolean or null),
    /// `names` a map of strings (`None` when it is not one).
    fn from_members(
        bytes: &[u8],
        policies: fn(&[u8]) -> Result<Vec<NamedPolicy>, ConfigError>,
        spec: fn(&[u8]) -> Result<TrafficPolicySpec, ConfigError>,
        cluster: fn(&[u8]) -> Option<Option<String>>,
        flag: fn(&[u8]) -> Option<Option<bool>>,
        names: fn(&[u8]) -> Option<Option<FieldMap<String>>>,
    ) -> Result<PluginConfig, ConfigError> {
        let Some(members) = crate::json_path::object_members(bytes) else {
            return Err(ConfigError::one(
                "pluginConfig",
                "must be a JSON object (a TrafficPolicy spec)",
            ));
        };
        let raw = |m: &crate::json_path::Member| bytes.get(m.value.clone()).unwrap_or_default();
        let cluster = match members.iter().find(|m| m.key == "cluster") {
            None => None,
            Some(m) => match cluster(raw(m)) {
                Some(None) => None,
                Some(Some(s)) if !s.is_empty() => Some(s),
                _ => return Err(ConfigError::one("cluster", "must be a non-empty string")),
            },
        };
        let cluster_ids = match members.iter().find(|m| m.key == "clusterIds") {
            None => FieldMap::new(),
            Some(m) => match names(raw(m)) {
                Some(v) => v.unwrap_or_default(),
                None => {
                    return Err(ConfigError::one(
                        "clusterIds",
                        "must map Istio cluster IDs to ksit cluster names (strings)",
                    ))
                }
            },
        };
        if let Some((id, _)) = cluster_ids
            .iter()
            .find(|(k, v)| k.is_empty() || v.is_empty())
        {
            return Err(ConfigError::one(
                format!("clusterIds[{id:?}]"),
                "cluster IDs and names must be non-empty",
            ));
        }
        let header_for_stable = match members.iter().find(|m| m.key == "headerForStable") {
            None => true,
            Some(m) => match flag(raw(m)) {
                Some(v) => v.unwrap_or(true),
                None => return Err(ConfigError::one("headerForStable", "must be true or false")),
            },
        };
        let policies = if let Some(list) = members.iter().find(|m| m.key == "policies") {
            if let Some(k) = members
                .iter()
                .find(|m| m.key != "policies" && !FILTER_MEMBERS.contains(&m.key.as_str()))
            {
                return Err(ConfigError::one(
                    k.key.clone(),
                    "with `policies`, put each spec under policies[i].spec; only `cluster`, `clusterIds` and `headerForStable` may stand beside it",
                ));
            }
            let list = policies(raw(list))?;
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
            // The spec is the object without the filter's own members.
            let mut text = Vec::with_capacity(bytes.len());
            text.push(b'{');
            for m in members
                .iter()
                .filter(|m| !FILTER_MEMBERS.contains(&m.key.as_str()))
            {
                if text.len() > 1 {
                    text.push(b',');
                }
                text.extend_from_slice(bytes.get(m.span.clone()).unwrap_or_default());
            }
            text.push(b'}');
            vec![NamedPolicy {
                name: "policy".into(),
                spec: spec(&text)?,
            }]
        };
        Ok(PluginConfig {
            cluster,
            cluster_ids,
            policies,
            header_for_stable,
        })
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
///
/// The value is deserialized from its compact text, so the error's position locates the field
/// (`json_path::path_at`); the message is serde's without that position.
pub fn from_value<T: serde::de::DeserializeOwned>(
    v: Value,
    prefix: &str,
) -> Result<T, ConfigError> {
    let text = serde_json::to_vec(&v)
        .map_err(|e| ConfigError::one(prefix, format!("cannot be re-encoded: {e}")))?;
    from_text(&text, prefix)
}

/// Deserializes JSON text, naming the failing field (under `prefix`) from the error's position.
pub fn from_text<T: serde::de::DeserializeOwned>(
    text: &[u8],
    prefix: &str,
) -> Result<T, ConfigError> {
    serde_json::from_slice(text).map_err(|e| {
        let offset = crate::json_path::offset_of(text, e.line(), e.column());
        let full = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let message = full.strip_suffix(&suffix).unwrap_or(&full).to_string();
        error_at(text, offset, prefix, message)
    })
}

/// [`from_text`] with the hand-written reader (JSON text already checked by `json::check`).
pub fn read_text<T: crate::json::ReadJson>(text: &[u8], prefix: &str) -> Result<T, ConfigError> {
    crate::json::read_value(text).map_err(|e| error_at(text, e.at, prefix, e.message))
}

/// The error about the field at byte `offset` of `text`, named under `prefix`.
fn error_at(text: &[u8], offset: usize, prefix: &str, message: String) -> ConfigError {
    let inner = crate::json_path::path_at(text, offset);
    let path = if inner.is_empty() {
        prefix.to_string()
    } else if prefix.is_empty() {
        inner
    } else if inner.starts_with('[') {
        format!("{prefix}{inner}")
    } else {
        format!("{prefix}.{inner}")
    };
    ConfigError {
        errors: vec![FieldError::new(path, message)],
    }
}

/// An error message as the two pluginConfig readers can be compared by: the hand reader quotes a float in
/// a message as the text had it, serde re-formats it, so the number is replaced by `F`. Used by
/// `tests/json_reader.rs` and the `config` fuzz target, which check the hand reader against serde.
#[doc(hidden)]
pub fn comparable_message(message: &str) -> String {
    match message.split_once("floating point `") {
        Some((head, tail)) => match tail.split_once('`') {
            Some((_, rest)) => format!("{head}floating point `F`{rest}"),
            None => message.to_string(),
        },
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::from_value;
    use crate::spec::TrafficPolicySpec;
    use serde_json::json;

    fn old(v: serde_json::Value) -> String {
        match serde_path_to_error::deserialize::<_, TrafficPolicySpec>(v) {
            Ok(_) => "ok".into(),
            Err(e) => {
                let p = e.path().to_string();
                format!("{p}: {}", e.into_inner())
            }
        }
    }

    fn new(v: serde_json::Value) -> String {
        match from_value::<TrafficPolicySpec>(v, "") {
            Ok(_) => "ok".into(),
            Err(e) => e.errors[0].to_string(),
        }
    }

    /// Every leaf of a full spec replaced by a value of each JSON type, and an unknown key added to every
    /// object: the path and message are those serde_path_to_error reports.
    #[test]
    fn paths_match_path_to_error_for_every_field() {
        let text = include_str!("../../manifests/examples/multi-cluster-mesh/trafficpolicy.yaml");
        let doc: serde_json::Value = serde_yaml::from_str(text).unwrap_or_default();
        let mut spec = doc["spec"].clone();
        spec["overrides"] = json!([{"clusters": ["c1"], "maxActiveFaults": 3,
            "http": [{"name": "api", "fault": {}, "route": [{"destination": {"host": "a", "subset": "v2"}}]}]}]);
        spec["maxActiveFaults"] = json!(10);
        spec["failStrategy"] = json!("FAIL_OPEN");
        spec["http"][0]["match"][0]["headers"] = json!({"x-a": {"regex": "a.*"}});
        spec["http"][0]["match"][0]["queryParams"] = json!({"q": {"exact": "1"}});
        spec["http"][0]["timeout"] = json!("1s");
        let mut pointers = Vec::new();
        fn walk(v: &serde_json::Value, at: String, out: &mut Vec<(String, bool)>) {
            match v {
                serde_json::Value::Object(m) => {
                    out.push((at.clone(), true));
                    for (k, x) in m {
                        walk(x, format!("{at}/{k}"), out);
                    }
                }
                serde_json::Value::Array(l) => {
                    out.push((at.clone(), false));
                    for (i, x) in l.iter().enumerate() {
                        walk(x, format!("{at}/{i}"), out);
                    }
                }
                _ => out.push((at, false)),
            }
        }
        walk(&spec, String::new(), &mut pointers);
        assert!(pointers.len() > 40, "{}", pointers.len());
        let mut compared = 0;
        for (ptr, is_object) in &pointers {
            let mut variants = vec![
                json!("s"),
                json!(-1),
                json!(1.5),
                json!(true),
                json!([]),
                json!({}),
                json!(null),
            ];
            if ptr.is_empty() {
                variants.clear();
            }
            for x in variants {
                let mut c = spec.clone();
                if let Some(slot) = c.pointer_mut(ptr) {
                    *slot = x;
                }
                let (a, b) = (new(c.clone()), old(c.clone()).replace(".:", ":"));
                if ptr == "/failStrategy" {
                    // Read as a plain string (see spec.rs), so the message differs; the path does not.
                    assert!(a.starts_with("failStrategy: "), "{a}");
                    assert!(a.contains("FAIL_CLOSE") && a.contains("FAIL_OPEN"), "{a}");
                } else {
                    assert_eq!(a, b, "{ptr}: {c}");
                }
                compared += 1;
            }
            if *is_object {
                let mut c = spec.clone();
                if let Some(m) = c
                    .pointer_mut(ptr)
                    .and_then(serde_json::Value::as_object_mut)
                {
                    m.insert("zzUnknown".into(), json!(1));
                }
                assert_eq!(new(c.clone()), old(c.clone()), "{ptr}: {c}");
                compared += 1;
            }
        }
        assert!(compared > 300, "{compared}");
    }

    #[test]
    fn paths_match_path_to_error() {
        let base = json!({"hosts": ["h"], "http": [{"name": "a", "route": [{"destination": {"host": "x"}, "weight": 1}]}]});
        let cases: Vec<serde_json::Value> = vec![
            json!({"hosts": "h"}),
            json!({"hosts": ["h"], "upsync": []}),
            json!({"hosts": ["h"], "http": [{"timeuot": "5s"}]}),
            json!({"hosts": ["h"], "http": [{"name": "a"}, {"route": [{"destination": {"host": "x"}, "weight": "ten"}]}]}),
            json!({"hosts": ["h"], "http": [{"route": [{"destination": {}}]}]}),
            json!({"hosts": ["h"], "http": [{"route": [{"destination": {"host": "x", "port": {"number": -1}}}]}]}),
            json!({"hosts": ["h"], "http": [{"match": [{"uri": {"prefix": 1}}]}]}),
            json!({"hosts": ["h"], "http": [{"fault": {"delay": {"percentage": {"value": "x"}}}}]}),
            json!({"hosts": [1]}),
            json!([]),
            base,
        ];
        for c in cases {
            assert_eq!(
                new(c.clone()).replace(".:", ":"),
                old(c.clone()).replace(".:", ":"),
                "{c}"
            );
        }
    }

    #[test]
    fn from_json_names_fields_in_pretty_printed_text_of_either_form() {
        use super::PluginConfig;
        let err = |v: serde_json::Value| match PluginConfig::from_json(
            serde_json::to_string_pretty(&v)
                .unwrap_or_default()
                .as_bytes(),
        ) {
            Ok(_) => "ok".to_string(),
            Err(e) => e.errors[0].to_string(),
        };
        let single = json!({"cluster": "c1", "hosts": ["h"], "http": [
            {"name": "a", "route": [{"destination": {"host": "x"}}]},
            {"name": "b", "route": [{"destination": {"host": "y"}, "weight": "ten"}]}]});
        assert!(
            err(single.clone()).starts_with("spec.http[1].route[0].weight: invalid type: string"),
            "{}",
            err(single)
        );
        let list = json!({"policies": [
            {"name": "a", "spec": {"hosts": ["a"]}},
            {"name": "b", "spec": {"hosts": [7]}}], "cluster": "c1"});
        assert!(
            err(list.clone()).starts_with("policies[1].spec.hosts[0]: invalid type: integer"),
            "{}",
            err(list)
        );
        assert_eq!(
            err(json!({"policies": [], "hosts": []})),
            "hosts: with `policies`, put each spec under policies[i].spec; only `cluster`, `clusterIds` and `headerForStable` may stand beside it"
        );
        assert_eq!(
            err(json!({"cluster": 3, "hosts": []})),
            "cluster: must be a non-empty string"
        );
        assert_eq!(
            err(json!({"headerForStable": "no", "hosts": []})),
            "headerForStable: must be true or false"
        );
        for (v, want) in [
            (json!(false), false),
            (json!(true), true),
            (json!(null), true),
        ] {
            for form in [
                json!({"headerForStable": v, "hosts": []}),
                json!({"policies": [{"name": "a", "spec": {"hosts": []}}], "headerForStable": v}),
            ] {
                let cfg = PluginConfig::from_json(form.to_string().as_bytes());
                assert_eq!(cfg.map(|c| c.header_for_stable).ok(), Some(want), "{form}");
            }
        }
        let cfg = PluginConfig::from_json(br#"{"hosts": []}"#);
        assert_eq!(cfg.map(|c| c.header_for_stable).ok(), Some(true));
        assert!(err(json!([1])).starts_with("pluginConfig: must be a JSON object"));
        let ok = PluginConfig::from_json(br#" { "hosts" : ["h"] , "cluster":"c9", "http": [ ] } "#);
        let ok = ok.unwrap_or_else(|e| unreachable!("{e:?}"));
        assert_eq!(ok.cluster.as_deref(), Some("c9"));
        assert_eq!(ok.policies[0].spec.hosts, ["h"]);
        match PluginConfig::from_json(b"{\"hosts\": [") {
            Err(e) => assert!(e.errors[0]
                .to_string()
                .starts_with("pluginConfig: not valid JSON")),
            Ok(_) => unreachable!(),
        }
    }

    #[test]
    fn cluster_ids_map_istio_cluster_ids_to_ksit_names_in_both_readers() {
        use super::PluginConfig;
        let read = |v: serde_json::Value| {
            let text = v.to_string();
            let hand =
                PluginConfig::from_json(text.as_bytes()).map_err(|e| e.errors[0].to_string());
            let serde =
                PluginConfig::from_json_serde(text.as_bytes()).map_err(|e| e.errors[0].to_string());
            assert_eq!(hand, serde, "{v}");
            hand
        };
        for form in [
            json!({"clusterIds": {"Kubernetes": "east", "west-1": "west"}, "hosts": []}),
            json!({"clusterIds": {"Kubernetes": "east", "west-1": "west"}, "policies": [{"name": "a", "spec": {"hosts": []}}]}),
        ] {
            let cfg = read(form.clone()).unwrap_or_else(|e| unreachable!("{form}: {e}"));
            assert_eq!(
                cfg.cluster_ids.get("Kubernetes").map(String::as_str),
                Some("east")
            );
            assert_eq!(
                cfg.cluster_ids.get("west-1").map(String::as_str),
                Some("west")
            );
            // Not part of the policy's spec.
            assert!(cfg.policies.len() == 1);
        }
        assert_eq!(
            read(json!({"clusterIds": null, "hosts": []})).map(|c| c.cluster_ids.is_empty()),
            Ok(true)
        );
        for (bad, want) in [
            (
                json!({"clusterIds": ["a"], "hosts": []}),
                "clusterIds: must map Istio cluster IDs to ksit cluster names (strings)",
            ),
            (
                json!({"clusterIds": {"a": 1}, "hosts": []}),
                "clusterIds: must map Istio cluster IDs to ksit cluster names (strings)",
            ),
            (
                json!({"clusterIds": {"a": ""}, "hosts": []}),
                "clusterIds[\"a\"]: cluster IDs and names must be non-empty",
            ),
        ] {
            assert_eq!(read(bad.clone()).err().as_deref(), Some(want), "{bad}");
        }
    }

    #[test]
    fn the_cluster_comes_from_the_config_then_the_environment_then_istios_cluster_id() {
        use super::PluginConfig;
        use crate::engine::{resolve_cluster, ClusterSource, ProxyCluster};
        let cfg = |v: serde_json::Value| {
            PluginConfig::from_json(v.to_string().as_bytes())
                .unwrap_or_else(|e| unreachable!("{e:?}"))
        };
        let named =
            cfg(json!({"cluster": "c1", "clusterIds": {"Kubernetes": "east"}, "hosts": []}));
        let unnamed = cfg(json!({"clusterIds": {"Kubernetes": "east"}, "hosts": []}));
        let proxy = |env: Option<&'static str>, id: Option<&'static str>| ProxyCluster {
            env,
            istio_cluster_id: id,
        };
        let cases = [
            (
                &named,
                proxy(Some("c2"), Some("Kubernetes")),
                Some("c1"),
                ClusterSource::PluginConfig,
            ),
            (
                &unnamed,
                proxy(Some("c2"), Some("Kubernetes")),
                Some("c2"),
                ClusterSource::Environment,
            ),
            (
                &unnamed,
                proxy(Some(""), Some("Kubernetes")),
                Some("east"),
                ClusterSource::IstioClusterId,
            ),
            (
                &unnamed,
                proxy(None, Some("west")),
                Some("west"),
                ClusterSource::IstioClusterId,
            ),
            (
                &unnamed,
                proxy(None, Some("")),
                None,
                ClusterSource::Unknown,
            ),
            (&unnamed, proxy(None, None), None, ClusterSource::Unknown),
        ];
        for (config, p, cluster, source) in cases {
            let (got, from) = resolve_cluster(config, p);
            assert_eq!((got.as_deref(), from), (cluster, source), "{p:?}");
        }
    }
}
