//! KubeStellar's template expansion: an object annotated `control.kubestellar.io/expand-templates: "true"`
//! has each leaf string expanded as a Go `text/template` with the destination cluster's properties, so one
//! hub object becomes a different object in every cluster.
//!
//! The properties, highest precedence first (as KubeStellar collects them): the data of the ConfigMap named
//! after the cluster in the hub namespace `customization-properties`; the cluster's annotations; its labels;
//! `clusterName`. Only keys that are Go identifiers are properties. A missing property is an error, as with
//! KubeStellar's `missingkey=error`.
//!
//! ksit expands the references templates of this kind use, `{{ .property }}` (with `{{-`/`-}}` trimming and
//! `{{/* comments */}}`); any other action (functions, pipelines, `if`, `range`, variables) is refused with an
//! error naming it, rather than expanded differently from Go.

use std::collections::BTreeMap;

use serde_json::Value;

/// The annotation that asks for expansion (value `"true"`).
pub const EXPAND_ANNOTATION: &str = "control.kubestellar.io/expand-templates";

/// The hub namespace whose ConfigMaps (named after clusters) hold cluster properties.
pub const PROPERTIES_NAMESPACE: &str = "customization-properties";

/// Whether an object asks for template expansion.
pub fn wants_expansion(obj: &Value) -> bool {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(EXPAND_ANNOTATION))
        .and_then(Value::as_str)
        == Some("true")
}

/// A Go identifier: a letter or `_`, then letters, digits or `_`.
pub fn is_go_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_')
}

/// A cluster's properties from its sources, lowest precedence first: its name, its labels, then `extra`
/// (annotations overridden by the properties ConfigMap, see [`extra_properties`]).
pub fn properties(
    cluster: &str,
    labels: &BTreeMap<String, String>,
    extra: Option<&BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    let mut p = BTreeMap::new();
    p.insert("clusterName".to_string(), cluster.to_string());
    for (k, v) in labels.iter().chain(extra.into_iter().flatten()) {
        if is_go_identifier(k) {
            p.insert(k.clone(), v.clone());
        }
    }
    p
}

/// The properties from a cluster's annotations and its properties ConfigMap's `data` and `binaryData`
/// (already decoded); the ConfigMap wins.
pub fn extra_properties<'a>(
    annotations: impl IntoIterator<Item = (&'a String, &'a String)>,
    config_map: impl IntoIterator<Item = (String, String)>,
) -> BTreeMap<String, String> {
    let mut p: BTreeMap<String, String> = annotations
        .into_iter()
        .filter(|(k, _)| is_go_identifier(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    p.extend(config_map.into_iter().filter(|(k, _)| is_go_identifier(k)));
    p
}

/// The `data` and `binaryData` of a ConfigMap given as JSON (from YAML: `binaryData` is base64).
pub fn config_map_entries(cm: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (k, v) in cm["data"].as_object().into_iter().flatten() {
        if let Some(v) = v.as_str() {
            out.push((k.clone(), v.to_string()));
        }
    }
    for (k, v) in cm["binaryData"].as_object().into_iter().flatten() {
        if let Some(bytes) = v.as_str().and_then(base64_decode) {
            out.push((k.clone(), String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
    out
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let body = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    for chunk in body.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&bytes[1..4]),
            3 => out.extend_from_slice(&bytes[1..3]),
            2 => out.push(bytes[1]),
            _ => return None,
        }
    }
    Some(out)
}

/// Expands every leaf string of `obj` (keys stay as they are). Errors name the leaf's path.
pub fn expand(obj: &Value, props: &BTreeMap<String, String>) -> Result<Value, Vec<String>> {
    let mut errors = Vec::new();
    let out = walk(obj, props, &mut String::new(), &mut errors);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn walk(
    v: &Value,
    props: &BTreeMap<String, String>,
    at: &mut String,
    errors: &mut Vec<String>,
) -> Value {
    match v {
        Value::String(s) => match expand_str(s, props) {
            Ok(x) => Value::String(x),
            Err(e) => {
                errors.push(format!("{}: {e}", if at.is_empty() { "." } else { at }));
                v.clone()
            }
        },
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| {
                    let len = at.len();
                    if !at.is_empty() {
                        at.push('.');
                    }
                    at.push_str(k);
                    let x = walk(x, props, at, errors);
                    at.truncate(len);
                    (k.clone(), x)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .enumerate()
                .map(|(i, x)| {
                    let len = at.len();
                    at.push_str(&format!("[{i}]"));
                    let x = walk(x, props, at, errors);
                    at.truncate(len);
                    x
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// One string as a Go template over `props` (the subset described in the module documentation).
pub fn expand_str(s: &str, props: &BTreeMap<String, String>) -> Result<String, String> {
    if !s.contains("{{") {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find("{{") {
        let (text, after) = rest.split_at(open);
        let after = &after[2..];
        // `{{- ` trims the whitespace before the action.
        let (trim_left, after) = match after.strip_prefix('-') {
            Some(a) if a.starts_with(char::is_whitespace) => (true, a),
            _ => (false, after),
        };
        out.push_str(if trim_left { text.trim_end() } else { text });
        let Some(close) = find_close(after) else {
            return Err(format!("unclosed action in {s:?}"));
        };
        let mut inner = &after[..close];
        let mut next = &after[close + 2..];
        // ` -}}` trims the whitespace after it.
        if let Some(i) = inner.strip_suffix('-') {
            if i.ends_with(char::is_whitespace) {
                inner = i;
                next = next.trim_start();
            }
        }
        let action = inner.trim();
        if action.starts_with("/*") && action.ends_with("*/") && action.len() >= 4 {
            // A comment.
        } else if let Some(name) = action.strip_prefix('.').filter(|n| is_go_identifier(n)) {
            match props.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    return Err(format!(
                        "map has no entry for key {name:?} (the cluster has no property {name}; properties: {})",
                        props.keys().cloned().collect::<Vec<_>>().join(", ")
                    ))
                }
            }
        } else {
            return Err(format!(
                "{{{{{action}}}}}: ksit expands only property references such as {{{{ .clusterName }}}}, not Go template functions, pipelines or control actions"
            ));
        }
        rest = next;
    }
    out.push_str(rest);
    Ok(out)
}

/// Where an action's `}}` is, skipping over quoted strings (a `}}` inside quotes does not close it).
fn find_close(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < b.len() {
        match (quote, b[i]) {
            (Some(_), b'\\') => i += 1,
            (Some(q), c) if c == q => quote = None,
            (None, b'"' | b'`' | b'\'') => quote = Some(b[i]),
            (None, b'}') if b.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn props() -> BTreeMap<String, String> {
        let labels: BTreeMap<String, String> =
            [("region", "eu"), ("mesh", "enabled"), ("k8s.io/x", "no")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let ann = BTreeMap::from([("region".to_string(), "eu-west".to_string())]);
        let extra = extra_properties(
            &ann,
            vec![("clusterHash".to_string(), "1001-dead-beef".to_string())],
        );
        properties("virgo", &labels, Some(&extra))
    }

    /// Cases as Go's text/template with `missingkey=error` expands them over the same map.
    #[test]
    fn expands_property_references_as_go_does() {
        let p = props();
        for (input, want) in [
            ("plain", Ok("plain")),
            (
                "https://loki/{{ .clusterName }}-{{.clusterHash}}",
                Ok("https://loki/virgo-1001-dead-beef"),
            ),
            ("{{.region}}", Ok("eu-west")),
            ("{{.mesh}}", Ok("enabled")),
            ("a  {{- .clusterName -}}  b", Ok("avirgob")),
            ("a {{/* note */}}b", Ok("a b")),
            ("{{-3}}", Err("ksit expands only property references")),
            ("{{ .nope }}", Err("map has no entry for key \"nope\"")),
            (
                "{{ .clusterName | upper }}",
                Err("ksit expands only property references"),
            ),
            (
                "{{ if .mesh }}x{{ end }}",
                Err("ksit expands only property references"),
            ),
            ("{{ .clusterName", Err("unclosed action")),
            ("}} alone", Ok("}} alone")),
        ] {
            match (expand_str(input, &p), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, w, "{input}"),
                (Err(got), Err(w)) => assert!(got.contains(w), "{input}: {got}"),
                (got, w) => panic!("{input}: got {got:?}, want {w:?}"),
            }
        }
        assert!(!p.contains_key("k8s.io/x"), "not a Go identifier");
    }

    #[test]
    fn expands_leaf_strings_and_names_failures() {
        let obj = json!({"metadata": {"name": "{{.clusterName}}-cm", "labels": {"{{.region}}": "x"}},
            "data": {"url": "https://{{.clusterName}}", "list": ["{{.nope}}", 3, true]}});
        let e = expand(&obj, &props()).unwrap_err();
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("data.list[0]: map has no entry"), "{e:?}");
        let obj = json!({"metadata": {"name": "{{.clusterName}}-cm", "labels": {"{{.region}}": "x"}}, "n": 1});
        let out = expand(&obj, &props()).unwrap();
        assert_eq!(out["metadata"]["name"], "virgo-cm");
        assert_eq!(out["metadata"]["labels"]["{{.region}}"], "x", "keys stay");
        assert_eq!(out["n"], 1);
        assert_eq!(
            base64_decode("MTAwMS1kZWFkLWJlZWY="),
            Some(b"1001-dead-beef".to_vec())
        );
    }
}
