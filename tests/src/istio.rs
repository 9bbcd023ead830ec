//! What istiod would make of a VirtualService, for an Envoy the tests run without Istio: each HTTP route of
//! the VirtualService's spec becomes Envoy routes, in order (one per `match` entry, since an Envoy route has
//! one match), sending to the cluster named by the destination's key (`HOST` or `HOST|SUBSET`, as
//! [`crate::envoy::Upstream::destination`]).
//!
//! Modelled on pilot's route translation (`TranslateRoute`, `TranslateRouteMatch`, `TranslateFault`,
//! `TranslateCORSPolicy`, `ApplyRedirect`, the retry policy conversion): route names `ROUTE.MATCH`, header
//! operations, rewrites, redirects, direct responses, mirrors, retries, timeouts, CORS and faults (as the
//! per-route configuration of Envoy's `fault` and `cors` filters, which [`needs_filters`] reports). A field
//! it does not know is an error rather than a route that silently differs from Istio's.

use serde_json::{json, Map, Value};

/// The HTTP filters (`envoy.filters.http.fault`, `envoy.filters.http.cors`) the routes of `spec` configure
/// per route, which must be in the filter chain, in that order before the router.
pub fn needs_filters(spec: &Value) -> Vec<&'static str> {
    let http = spec["http"].as_array().cloned().unwrap_or_default();
    let mut out = Vec::new();
    if http.iter().any(|r| r.get("fault").is_some()) {
        out.push("envoy.filters.http.fault");
    }
    if http.iter().any(|r| r.get("corsPolicy").is_some()) {
        out.push("envoy.filters.http.cors");
    }
    out
}

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
                    "name"
                        | "match"
                        | "route"
                        | "timeout"
                        | "rewrite"
                        | "retries"
                        | "redirect"
                        | "directResponse"
                        | "mirror"
                        | "mirrorPercentage"
                        | "mirrors"
                        | "corsPolicy"
                        | "headers"
                        | "fault"
                ),
                "{}: not translated by this test harness",
                at(k)
            );
        }
        let mut base = Map::new();
        let mut authority = None;
        if let Some(h) = r.get("headers") {
            authority = headers(h, &mut base);
        }
        if let Some(redirect) = r.get("redirect") {
            base.insert("redirect".into(), redirect_action(redirect)?);
        } else if let Some(d) = r.get("directResponse") {
            let mut body = Map::new();
            if let Some(s) = d["body"]["string"].as_str() {
                body.insert("inline_string".into(), json!(s));
            } else if let Some(b) = d["body"]["bytes"].as_str() {
                body.insert("inline_bytes".into(), json!(b));
            }
            let mut dr = json!({"status": d["status"]});
            if !body.is_empty() {
                dr["body"] = Value::Object(body);
            }
            base.insert("direct_response".into(), dr);
        } else {
            let action = route_action(r, timeout, &cluster, authority, &mut base)
                .map_err(|e| anyhow::anyhow!("{}: {e}", at("route")))?;
            base.insert("route".into(), action);
        }
        let mut per_filter = Map::new();
        if let Some(f) = r.get("fault") {
            if let Some(fault) = fault(f) {
                per_filter.insert("envoy.filters.http.fault".into(), fault);
            }
        }
        if let Some(c) = r.get("corsPolicy") {
            per_filter.insert("envoy.filters.http.cors".into(), cors(c));
        }
        if !per_filter.is_empty() {
            base.insert("typed_per_filter_config".into(), Value::Object(per_filter));
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
            let mut route = base.clone();
            // As pilot names it: the route's name, then `.MATCH` when the match entry has a name.
            let mut name = r["name"].as_str().unwrap_or("").to_string();
            if let Some(n) = m["name"].as_str() {
                name = format!("{name}.{n}");
            }
            route.insert("name".into(), json!(name));
            if let Some(p) = m["statPrefix"].as_str() {
                route.insert("stat_prefix".into(), json!(p));
            }
            route.insert("match".into(), Value::Object(em));
            out.push(Value::Object(route));
        }
    }
    Ok(out)
}

/// Istio `Headers` on a route (or a single destination): header operations, and the authority a `set` or
/// `add` of `:authority`/`host` rewrites (returned).
fn headers(h: &Value, out: &mut Map<String, Value>) -> Option<String> {
    let internal = |k: &str| k.starts_with(':') || k.eq_ignore_ascii_case("host");
    let mut authority = None;
    for side in ["request", "response"] {
        let ops = &h[side];
        let mut add = out
            .get(&format!("{side}_headers_to_add"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (op, action) in [
            ("set", "OVERWRITE_IF_EXISTS_OR_ADD"),
            ("add", "APPEND_IF_EXISTS_OR_ADD"),
        ] {
            for (k, v) in ops[op].as_object().into_iter().flatten() {
                if side == "request"
                    && (k.eq_ignore_ascii_case(":authority") || k.eq_ignore_ascii_case("host"))
                {
                    authority = v.as_str().map(String::from);
                }
                if !internal(k) {
                    add.push(json!({"header": {"key": k, "value": v}, "append_action": action}));
                }
            }
        }
        if !add.is_empty() {
            out.insert(format!("{side}_headers_to_add"), Value::Array(add));
        }
        let mut remove = out
            .get(&format!("{side}_headers_to_remove"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for k in ops["remove"].as_array().into_iter().flatten() {
            if k.as_str().is_some_and(|k| !internal(k)) {
                remove.push(k.clone());
            }
        }
        if !remove.is_empty() {
            out.insert(format!("{side}_headers_to_remove"), Value::Array(remove));
        }
    }
    authority
}

fn destination_key(d: &Value) -> anyhow::Result<String> {
    let host = d["host"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("destination without host"))?;
    Ok(match d["subset"].as_str() {
        Some(s) => format!("{host}|{s}"),
        None => host.to_string(),
    })
}

/// A Go duration (`250ms`, `1m30s`) as protobuf JSON writes one (seconds: `0.250s`), as istiod hands it to
/// Envoy.
fn proto_duration(d: &str) -> String {
    match ksit_policy::duration::parse_duration_nanos(d) {
        Ok(n) => format!("{}.{:09}s", n / 1_000_000_000, n % 1_000_000_000),
        Err(_) => d.to_string(),
    }
}

/// A share in Envoy's millionths, as Istio computes it (the value times 10,000, truncated).
fn millionths(p: &Value) -> Value {
    let v = p["value"].as_f64().unwrap_or(0.0);
    json!({"numerator": (v * 10_000.0) as u64, "denominator": "MILLION"})
}

fn route_action(
    r: &Value,
    timeout: &str,
    cluster: &impl Fn(&str) -> String,
    mut authority: Option<String>,
    route: &mut Map<String, Value>,
) -> anyhow::Result<Value> {
    let dests = r["route"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut action = Map::new();
    match dests {
        [] => anyhow::bail!("no destination"),
        [d] => {
            action.insert(
                "cluster".into(),
                json!(cluster(&destination_key(&d["destination"])?)),
            );
            if let Some(h) = d.get("headers") {
                let a = headers(h, route);
                if authority.is_none() {
                    authority = a;
                }
            }
        }
        many => {
            let mut clusters = Vec::new();
            for d in many {
                let w = d["weight"].as_u64().unwrap_or(0);
                if w == 0 {
                    continue; // pilot leaves out 0-weight destinations
                }
                clusters.push(
                    json!({"name": cluster(&destination_key(&d["destination"])?), "weight": w}),
                );
            }
            action.insert("weighted_clusters".into(), json!({"clusters": clusters}));
        }
    }
    action.insert(
        "timeout".into(),
        json!(proto_duration(r["timeout"].as_str().unwrap_or(timeout))),
    );
    if let Some(rw) = r.get("rewrite") {
        if let Some(re) = rw.get("uriRegexRewrite") {
            action.insert(
                "regex_rewrite".into(),
                json!({"pattern": {"regex": re["match"]}, "substitution": re["rewrite"]}),
            );
        } else if let Some(p) = rw["uri"].as_str() {
            action.insert("prefix_rewrite".into(), json!(p));
        }
        if let Some(a) = rw["authority"].as_str() {
            authority = Some(a.to_string());
        }
    }
    if let Some(a) = authority {
        action.insert("host_rewrite_literal".into(), json!(a));
    }
    let mut mirrors = Vec::new();
    if let Some(m) = r.get("mirror") {
        let share = r
            .get("mirrorPercentage")
            .map(millionths)
            .unwrap_or(json!({"numerator": 100, "denominator": "HUNDRED"}));
        mirrors.push((destination_key(m)?, share));
    }
    for m in r["mirrors"].as_array().into_iter().flatten() {
        let share = m
            .get("percentage")
            .map(millionths)
            .unwrap_or(json!({"numerator": 100, "denominator": "HUNDRED"}));
        mirrors.push((destination_key(&m["destination"])?, share));
    }
    let mirrors: Vec<Value> = mirrors
        .into_iter()
        .filter(|(_, share)| share["numerator"] != 0)
        .map(|(k, share)| json!({"cluster": cluster(&k), "runtime_fraction": {"default_value": share}}))
        .collect();
    if !mirrors.is_empty() {
        action.insert("request_mirror_policies".into(), Value::Array(mirrors));
    }
    if let Some(rt) = r.get("retries") {
        action.insert("retry_policy".into(), retry_policy(rt));
    }
    Ok(Value::Object(action))
}

/// Istio's retry conversion: status codes in `retryOn` become retriable status codes.
fn retry_policy(rt: &Value) -> Value {
    let on = rt["retryOn"]
        .as_str()
        .unwrap_or("connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes");
    let (codes, conditions): (Vec<&str>, Vec<&str>) =
        on.split(',').partition(|p| p.parse::<u32>().is_ok());
    let mut conditions = conditions.join(",");
    if !codes.is_empty() && !conditions.contains("retriable-status-codes") {
        if !conditions.is_empty() {
            conditions.push(',');
        }
        conditions.push_str("retriable-status-codes");
    }
    let mut p =
        json!({"retry_on": conditions, "num_retries": rt["attempts"].as_u64().unwrap_or(0)});
    if !codes.is_empty() {
        p["retriable_status_codes"] = json!(codes
            .iter()
            .filter_map(|c| c.parse::<u32>().ok())
            .collect::<Vec<_>>());
    }
    if let Some(t) = rt["perTryTimeout"].as_str() {
        p["per_try_timeout"] = json!(proto_duration(t));
    }
    if let Some(b) = rt["backoff"].as_str() {
        p["retry_back_off"] = json!({"base_interval": proto_duration(b)});
    }
    if rt["retryIgnorePreviousHosts"].as_bool() == Some(true) {
        p["retry_host_predicate"] = json!([{"name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}]);
        p["host_selection_retry_max_attempts"] = json!(5);
    }
    p
}

/// Istio's `ApplyRedirect` (the port as given; no listener port to derive from in the harness).
fn redirect_action(r: &Value) -> anyhow::Result<Value> {
    let mut a = Map::new();
    if let Some(h) = r["authority"].as_str() {
        a.insert("host_redirect".into(), json!(h));
    }
    if let Some(p) = r["prefixRewrite"].as_str() {
        a.insert("prefix_rewrite".into(), json!(p));
    } else if let Some(u) = r["uri"].as_str() {
        a.insert("path_redirect".into(), json!(u));
    }
    if let Some(s) = r["scheme"].as_str() {
        a.insert("scheme_redirect".into(), json!(s));
    }
    if let Some(p) = r["port"].as_u64() {
        a.insert("port_redirect".into(), json!(p));
    }
    let code = match r["redirectCode"].as_u64().unwrap_or(301) {
        301 => "MOVED_PERMANENTLY",
        302 => "FOUND",
        303 => "SEE_OTHER",
        307 => "TEMPORARY_REDIRECT",
        308 => "PERMANENT_REDIRECT",
        c => anyhow::bail!("redirect code {c} is one Istio cannot give Envoy"),
    };
    a.insert("response_code".into(), json!(code));
    Ok(Value::Object(a))
}

/// Istio's `TranslateFault`: a delay's share is its `percentage`, else its integer `percent` (0 when unset);
/// an abort's share is its `percentage`, and absent (0 for Envoy) when unset.
fn fault(f: &Value) -> Option<Value> {
    let mut out =
        json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"});
    if let Some(d) = f.get("delay") {
        if let Some(fixed) = d["fixedDelay"].as_str() {
            let share = match d.get("percentage") {
                Some(p) => millionths(p),
                None => {
                    json!({"numerator": d["percent"].as_u64().unwrap_or(0), "denominator": "HUNDRED"})
                }
            };
            out["delay"] = json!({"fixed_delay": proto_duration(fixed), "percentage": share});
        }
    }
    if let Some(a) = f.get("abort") {
        let mut abort = Map::new();
        if let Some(s) = a["httpStatus"].as_u64() {
            abort.insert("http_status".into(), json!(s));
        } else {
            return None; // gRPC statuses are not used by these tests
        }
        if let Some(p) = a.get("percentage") {
            abort.insert("percentage".into(), millionths(p));
        }
        out["abort"] = Value::Object(abort);
    }
    (out.get("delay").is_some() || out.get("abort").is_some()).then_some(out)
}

/// Istio's `TranslateCORSPolicy`.
fn cors(c: &Value) -> Value {
    let origins: Vec<Value> = match c["allowOrigins"].as_array() {
        Some(list) => list
            .iter()
            .filter_map(|m| {
                let (k, v) = string_match(m).ok()?;
                Some(envoy_string_match(k, v))
            })
            .collect(),
        None => c["allowOrigin"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| json!({"exact": o}))
            .collect(),
    };
    let join = |k: &str| {
        c[k].as_array()
            .map(|l| {
                l.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    let mut out = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": origins,
        "allow_methods": join("allowMethods"),
        "allow_headers": join("allowHeaders"),
        "expose_headers": join("exposeHeaders"),
        "forward_not_matching_preflights": c["unmatchedPreflights"] != "IGNORE",
    });
    if let Some(b) = c["allowCredentials"].as_bool() {
        out["allow_credentials"] = json!(b);
    }
    if let Some(a) = c["maxAge"].as_str() {
        let secs = a
            .strip_suffix('s')
            .and_then(|s| s.parse::<u64>().ok())
            .or_else(|| {
                a.strip_suffix('m')
                    .and_then(|m| m.parse::<u64>().ok())
                    .map(|m| m * 60)
            })
            .or_else(|| {
                a.strip_suffix('h')
                    .and_then(|h| h.parse::<u64>().ok())
                    .map(|h| h * 3600)
            })
            .unwrap_or(0);
        out["max_age"] = json!(secs.to_string());
    }
    out
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
            "ignoreUriCase" | "name" | "statPrefix" => {}
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
                // As pilot sets it; Envoy applies it to `path` and `prefix`, not to `safe_regex`.
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
                    qs.push(match string_match(sm) {
                        Ok((kind, val)) => {
                            json!({"name": name, "string_match": envoy_string_match(kind, val)})
                        }
                        Err(_) => json!({"name": name, "present_match": true}),
                    });
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

/// A header condition; an empty match (`{}`) asks for presence, as pilot makes it.
fn header(name: &str, sm: &Value, invert: bool) -> anyhow::Result<Value> {
    let mut h = match string_match(sm) {
        Ok((kind, val)) => json!({"name": name, "string_match": envoy_string_match(kind, val)}),
        Err(_) if sm.as_object().is_some_and(|o| o.is_empty()) => {
            json!({"name": name, "present_match": true})
        }
        Err(e) => return Err(e),
    };
    if invert {
        h["invert_match"] = json!(true);
        if h.get("present_match").is_none() {
            h["treat_missing_header_as_empty"] = json!(true);
        }
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
                                       {"name": "x", "uri": {"exact": "/x"}, "ignoreUriCase": true}],
             "route": [{"destination": {"host": "api", "subset": "v2"}}]},
            {"name": "a-default", "route": [{"destination": {"host": "api"}}], "timeout": "3s"}]});
        let r = routes(&vs, "60s", |k| format!("c-{k}")).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0]["match"]["prefix"], "/api");
        assert_eq!(r[0]["match"]["headers"][0]["name"], "x-ksit-destination");
        assert_eq!(r[0]["route"]["cluster"], "c-api|v2");
        assert_eq!(r[1]["match"]["path"], "/x");
        assert_eq!(r[1]["name"], "a-v2.x");
        assert!(r[1]["match"].get("prefix").is_none(), "{}", r[1]);
        assert_eq!(r[1]["match"]["case_sensitive"], false);
        assert_eq!(r[2]["match"]["prefix"], "/");
        assert_eq!(r[2]["route"]["timeout"], "3.000000000s");
        assert_eq!(r[0]["route"]["timeout"], "60.000000000s");
    }

    #[test]
    fn carried_fields_become_envoy_route_fields() {
        let vs = json!({"http": [
            {"name": "r", "headers": {"request": {"set": {"x-a": "1", "host": "h"}}, "response": {"remove": ["server"]}},
             "rewrite": {"uriRegexRewrite": {"match": "^/a", "rewrite": "/b"}},
             "mirrors": [{"destination": {"host": "m"}, "percentage": {"value": 0.57}}, {"destination": {"host": "n"}, "percentage": {"value": 0}}],
             "fault": {"abort": {"httpStatus": 500}}, "corsPolicy": {"allowOrigins": [{"exact": "https://a"}], "maxAge": "2m"},
             "route": [{"destination": {"host": "api"}}]},
            {"name": "redir", "redirect": {"uri": "/x", "redirectCode": 308}},
            {"name": "dr", "directResponse": {"status": 418, "body": {"string": "teapot"}}}]});
        let r = routes(&vs, "60s", |k| k.to_string()).unwrap();
        assert_eq!(r[0]["request_headers_to_add"][0]["header"]["key"], "x-a");
        assert_eq!(
            r[0]["request_headers_to_add"].as_array().map(Vec::len),
            Some(1),
            "host is an authority rewrite"
        );
        assert_eq!(r[0]["route"]["host_rewrite_literal"], "h");
        assert_eq!(r[0]["response_headers_to_remove"], json!(["server"]));
        assert_eq!(r[0]["route"]["regex_rewrite"]["substitution"], "/b");
        let mirrors = r[0]["route"]["request_mirror_policies"].as_array().unwrap();
        assert_eq!(mirrors.len(), 1, "a 0% mirror is left out");
        assert_eq!(
            mirrors[0]["runtime_fraction"]["default_value"]["numerator"],
            5699
        );
        let fault = &r[0]["typed_per_filter_config"]["envoy.filters.http.fault"];
        assert!(
            fault["abort"].get("percentage").is_none(),
            "0% for Envoy, as Istio leaves it"
        );
        assert_eq!(
            r[0]["typed_per_filter_config"]["envoy.filters.http.cors"]["max_age"],
            "120"
        );
        assert_eq!(r[1]["redirect"]["response_code"], "PERMANENT_REDIRECT");
        assert_eq!(r[2]["direct_response"]["body"]["inline_string"], "teapot");
        assert_eq!(
            needs_filters(&vs),
            ["envoy.filters.http.fault", "envoy.filters.http.cors"]
        );
    }

    #[test]
    fn fields_it_cannot_translate_are_errors() {
        let vs = json!({"http": [{"delegate": {"name": "m"}, "route": [{"destination": {"host": "a"}}]}]});
        let e = routes(&vs, "60s", |k| k.to_string()).unwrap_err();
        assert!(e.to_string().contains("http[0].delegate"), "{e}");
        let vs = json!({"http": [{"match": [{"sourceLabels": {"a": "b"}}], "route": [{"destination": {"host": "a"}}]}]});
        let e = routes(&vs, "60s", |k| k.to_string()).unwrap_err();
        assert!(e.to_string().contains("sourceLabels"), "{e}");
    }
}
