//! What istiod would make of the VirtualServices ksit renders, for an Envoy the tests run without Istio:
//! each HTTP route of the VirtualService's spec becomes Envoy routes, in order (one per `match` entry,
//! since an Envoy route has one match), sending to the cluster named by the destination's key (`HOST` or
//! `HOST|SUBSET`, as [`crate::envoy::Upstream::destination`]).
//!
//! Only the fields the controller renders are translated; any other field is an error rather than a route
//! that silently matches more than Istio's would.

use serde_json::{json, Map, Value};

/// Envoy routes for the `http` list of a VirtualService `spec`, each with `timeout` (e.g. `"60s"`) unless
/// the route sets its own. `cluster` names the Envoy cluster of a destination key.
pub fn routes(
    spec: &Value,
    timeout: &str,
    cluster: impl Fn(&str) -> String,
) -> anyhow::Result<Vec<Value>> {
    let http = spec["http"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("the VirtualService has no http routes"))?;
    let mut out = Vec::new();
    for (i, r) in http.iter().enumerate() {
        let at = |f: &str| format!("http[{i}].{f}");
        let obj = r
            .as_object()
            .ok_or_else(|| anyhow::anyhow!("http[{i}] is not an object"))?;
        for k in obj.keys() {
            anyhow::ensure!(
                matches!(
                    k.as_str(),
                    "name" | "match" | "route" | "timeout" | "rewrite"
                ),
                "{}: not translated by this test harness",
                at(k)
            );
        }
        let dests = r["route"].as_array().map(Vec::as_slice).unwrap_or_default();
        let [d] = dests else {
            anyhow::bail!(
                "{}: ksit renders one destination per route, found {}",
                at("route"),
                dests.len()
            );
        };
        let host = d["destination"]["host"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("{}: no host", at("route[0].destination")))?;
        let key = match d["destination"]["subset"].as_str() {
            Some(s) => format!("{host}|{s}"),
            None => host.to_string(),
        };
        let mut action = Map::new();
        action.insert("cluster".into(), json!(cluster(&key)));
        action.insert(
            "timeout".into(),
            json!(r["timeout"].as_str().unwrap_or(timeout)),
        );
        if let Some(p) = r["rewrite"]["uri"].as_str() {
            action.insert("prefix_rewrite".into(), json!(p));
        }
        let matches = match r["match"].as_array() {
            Some(list) if !list.is_empty() => list.clone(),
            _ => vec![json!({})],
        };
        for (j, m) in matches.iter().enumerate() {
            let mut em = route_match(m)
                .map_err(|e| anyhow::anyhow!("{}: {e}", at(&format!("match[{j}]"))))?;
            if !["prefix", "path", "safe_regex"]
                .iter()
                .any(|k| em.contains_key(*k))
            {
                em.insert("prefix".into(), json!("/"));
            }
            out.push(json!({"name": r["name"], "match": em, "route": action}));
        }
    }
    Ok(out)
}

/// One Istio `HTTPMatchRequest` as an Envoy `RouteMatch` (without a path matcher when it has no `uri`).
fn route_match(m: &Value) -> anyhow::Result<Map<String, Value>> {
    let mut em = Map::new();
    let mut headers = Vec::new();
    let obj = m
        .as_object()
        .ok_or_else(|| anyhow::anyhow!("not an object"))?;
    let case_sensitive = !m["ignoreUriCase"].as_bool().unwrap_or(false);
    for (k, v) in obj {
        match k.as_str() {
            "ignoreUriCase" => {}
            "uri" => {
                let (kind, val) = string_match(v)?;
                let key = match kind {
                    "exact" => "path",
                    "prefix" => "prefix",
                    _ => "safe_regex",
                };
                em.insert(
                    key.into(),
                    if kind == "regex" {
                        json!({"regex": val})
                    } else {
                        json!(val)
                    },
                );
                if !case_sensitive {
                    em.insert("case_sensitive".into(), json!(false));
                }
            }
            "method" | "authority" | "scheme" => {
                headers.push(header(&format!(":{k}"), v, false)?);
            }
            "headers" | "withoutHeaders" => {
                for (name, sm) in v.as_object().into_iter().flatten() {
                    headers.push(header(name, sm, k == "withoutHeaders")?);
                }
            }
            "queryParams" => {
                let mut qs = Vec::new();
                for (name, sm) in v.as_object().into_iter().flatten() {
                    let (kind, val) = string_match(sm)?;
                    qs.push(json!({"name": name, "string_match": envoy_string_match(kind, val)}));
                }
                em.insert("query_parameters".into(), json!(qs));
            }
            other => anyhow::bail!("{other}: not translated by this test harness"),
        }
    }
    if !headers.is_empty() {
        em.insert("headers".into(), json!(headers));
    }
    Ok(em)
}

/// An Istio `StringMatch`'s one member: `exact`, `prefix` or `regex`.
fn string_match(v: &Value) -> anyhow::Result<(&'static str, &str)> {
    for kind in ["exact", "prefix", "regex"] {
        if let Some(s) = v[kind].as_str() {
            return Ok((kind, s));
        }
    }
    anyhow::bail!("{v}: expected one of exact, prefix, regex")
}

fn envoy_string_match(kind: &str, val: &str) -> Value {
    match kind {
        "regex" => json!({"safe_regex": {"regex": val}}),
        k => json!({k: val}),
    }
}

fn header(name: &str, sm: &Value, invert: bool) -> anyhow::Result<Value> {
    let (kind, val) = string_match(sm)?;
    let mut h = json!({"name": name, "string_match": envoy_string_match(kind, val)});
    if invert {
        h["invert_match"] = json!(true);
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn each_match_entry_is_a_route_in_order() {
        let vs = json!({"http": [
            {"name": "a-v2", "match": [{"uri": {"prefix": "/api"}, "headers": {"x-ksit-destination": {"exact": "v2"}}},
                                       {"uri": {"exact": "/x"}, "ignoreUriCase": true}],
             "route": [{"destination": {"host": "api", "subset": "v2"}}]},
            {"name": "a-default", "route": [{"destination": {"host": "api"}}], "timeout": "3s"}]});
        let r = routes(&vs, "60s", |k| format!("c-{k}")).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0]["match"]["prefix"], "/api");
        assert_eq!(r[0]["match"]["headers"][0]["name"], "x-ksit-destination");
        assert_eq!(r[0]["route"]["cluster"], "c-api|v2");
        assert_eq!(r[1]["match"]["path"], "/x");
        assert!(r[1]["match"].get("prefix").is_none(), "{}", r[1]);
        assert_eq!(r[1]["match"]["case_sensitive"], false);
        assert_eq!(r[2]["match"]["prefix"], "/");
        assert_eq!(r[2]["route"]["timeout"], "3s");
        assert_eq!(r[0]["route"]["timeout"], "60s");
    }

    #[test]
    fn fields_it_cannot_translate_are_errors() {
        let vs =
            json!({"http": [{"mirror": {"host": "m"}, "route": [{"destination": {"host": "a"}}]}]});
        let e = routes(&vs, "60s", |k| k.to_string()).unwrap_err();
        assert!(e.to_string().contains("http[0].mirror"), "{e}");
        let vs = json!({"http": [{"match": [{"sourceLabels": {"a": "b"}}], "route": [{"destination": {"host": "a"}}]}]});
        let e = routes(&vs, "60s", |k| k.to_string()).unwrap_err();
        assert!(e.to_string().contains("sourceLabels"), "{e}");
    }
}
