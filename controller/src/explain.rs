//! `ksit explain`: one request (or a JSONL file of them) through the same engine as the filter, with the
//! reasons: which rule matched, which destination and why, which faults apply.

use crate::manifests::Document;
use ksit_policy::engine::{AbortStatus, KeyKind, Pick};
use ksit_policy::{Engine, NamedPolicy, PluginConfig, Request, TrafficPolicySpec};
use serde_json::{json, Map, Value};

/// A request to explain.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct ExplainRequest {
    pub method: String,
    pub path: String,
    pub authority: String,
    pub headers: std::collections::BTreeMap<String, String>,
}

/// Fields of an Istio HTTPRoute that ksit's engine reads; the rest (redirect, mirror, headers, corsPolicy…)
/// does not change which destination or fault a request gets and is dropped with a note.
const ROUTE_FIELDS: [&str; 8] = [
    "name", "match", "route", "fault", "timeout", "retries", "rewrite", "canary",
];
const MATCH_FIELDS: [&str; 9] = [
    "name",
    "uri",
    "scheme",
    "method",
    "authority",
    "headers",
    "withoutHeaders",
    "queryParams",
    "ignoreUriCase",
];

/// The policy spec in a TrafficPolicy or an Istio VirtualService document, plus notes on what was ignored.
pub fn spec_of(doc: &Document) -> anyhow::Result<(TrafficPolicySpec, Vec<String>)> {
    let mut notes = Vec::new();
    let spec = match doc.kind() {
        "TrafficPolicy" => doc.value["spec"].clone(),
        "VirtualService" => {
            let src = &doc.value["spec"];
            let mut http = Vec::new();
            for (i, r) in src["http"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .enumerate()
            {
                let mut route = Map::new();
                for (k, v) in r.as_object().cloned().unwrap_or_default() {
                    if !ROUTE_FIELDS.contains(&k.as_str()) {
                        notes.push(format!("spec.http[{i}].{k}: not evaluated by ksit (Envoy applies it after routing)"));
                        continue;
                    }
                    let v = match k.as_str() {
                        "match" => Value::Array(
                            v.as_array()
                                .cloned()
                                .unwrap_or_default()
                                .into_iter()
                                .enumerate()
                                .map(|(j, m)| {
                                    let mut out = Map::new();
                                    for (mk, mv) in m.as_object().cloned().unwrap_or_default() {
                                        if MATCH_FIELDS.contains(&mk.as_str()) {
                                            out.insert(mk, mv);
                                        } else {
                                            notes.push(format!("spec.http[{i}].match[{j}].{mk}: ignored (depends on the proxy, not the request)"));
                                        }
                                    }
                                    Value::Object(out)
                                })
                                .collect(),
                        ),
                        "route" => Value::Array(
                            v.as_array()
                                .cloned()
                                .unwrap_or_default()
                                .into_iter()
                                .map(|d| json!({"destination": d["destination"], "weight": d.get("weight").cloned().unwrap_or(Value::Null)}))
                                .map(|mut d| {
                                    if d["weight"].is_null() {
                                        d.as_object_mut().map(|o| o.remove("weight"));
                                    }
                                    d
                                })
                                .collect(),
                        ),
                        "retries" => {
                            let mut r = v.clone();
                            if let Some(o) = r.as_object_mut() {
                                o.retain(|k, _| matches!(k.as_str(), "attempts" | "perTryTimeout" | "retryOn"));
                            }
                            r
                        }
                        _ => v,
                    };
                    route.insert(k, v);
                }
                http.push(Value::Object(route));
            }
            json!({"hosts": src["hosts"], "http": http})
        }
        other => anyhow::bail!(
            "{}: a {other} is not a TrafficPolicy or a VirtualService",
            doc.describe()
        ),
    };
    let spec: TrafficPolicySpec = ksit_policy::config::from_value(spec, "spec")
        .map_err(|e| anyhow::anyhow!("{}: {e}", doc.describe()))?;
    Ok((spec, notes))
}

/// Compiles the chosen document for `cluster`, as the controller renders it (`stable_by_default_route`:
/// with `--stable-by-default-route`).
pub fn engine_for(
    doc: &Document,
    cluster: Option<&str>,
    stable_by_default_route: bool,
) -> anyhow::Result<(Engine, Vec<String>)> {
    let (spec, notes) = spec_of(doc)?;
    let cfg = PluginConfig {
        cluster: cluster.map(String::from),
        policies: vec![NamedPolicy {
            name: "policy".into(),
            spec,
        }],
        header_for_stable: !stable_by_default_route,
        ..PluginConfig::default()
    };
    let engine = Engine::compile(&cfg, None).map_err(|e| {
        anyhow::anyhow!(
            "{}: invalid:\n  {}",
            doc.describe(),
            e.errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n  ")
        )
    })?;
    Ok((engine, notes))
}

fn key_name(k: KeyKind) -> &'static str {
    match k {
        KeyKind::Sticky => "sticky",
        KeyKind::RequestId => "x-request-id",
        KeyKind::Random => "random",
    }
}

/// The decision for one request, as JSON (the documented `ksit explain -o json` shape).
pub fn decide(engine: &Engine, req: &ExplainRequest, entropy: u64) -> Value {
    let method = if req.method.is_empty() {
        "GET"
    } else {
        req.method.as_str()
    };
    let path = if req.path.is_empty() {
        "/"
    } else {
        req.path.as_str()
    };
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b":method".to_vec(), method.as_bytes().to_vec()),
        (b":path".to_vec(), path.as_bytes().to_vec()),
        (b":authority".to_vec(), req.authority.as_bytes().to_vec()),
        (b":scheme".to_vec(), b"http".to_vec()),
    ];
    for (k, v) in &req.headers {
        pairs.push((k.to_ascii_lowercase().into_bytes(), v.as_bytes().to_vec()));
    }
    let refs: Vec<(&[u8], &[u8])> = pairs
        .iter()
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect();
    let req = Request::new(&refs);
    let d = engine.decide(&req, entropy);
    let Some(rule) = d.rule else {
        let why = if d.policy.is_some() {
            "no rule matches; the request passes unchanged"
        } else {
            "the policy does not cover this host; the request passes unchanged"
        };
        return json!({"matched": false, "route": null, "destination": null, "fault": {"delay": null, "abort": null}, "reason": why});
    };
    let route = if rule.named {
        json!(rule.name)
    } else {
        json!(rule.index)
    };
    let dest = d
        .destination
        .map(|x| json!({"host": x.host, "subset": x.subset, "port": x.port}));
    let pick = match d.pick {
        Some(Pick::Single) => json!({"by": "single"}),
        Some(Pick::Override) => json!({"by": "override"}),
        Some(Pick::Bucket { bucket, key }) => {
            let ranges: Vec<Value> = rule
                .destinations
                .iter()
                .zip(rule.bucket_ranges())
                .map(|(x, (a, b))| json!({"destination": x.key, "buckets": [a, b], "share": x.share}))
                .collect();
            let mut p =
                json!({"by": "bucket", "bucket": bucket, "key": key_name(key), "ranges": ranges});
            if let (KeyKind::Sticky, Some(k)) = (key, d.sticky_key) {
                p["stickyKey"] = json!(String::from_utf8_lossy(k));
            }
            p
        }
        None => Value::Null,
    };
    let pct = |ppm: u32| f64::from(ppm) / 10_000.0;
    let delay = d.delay.map(|r| json!({"fixedDelayMs": r.spec.millis, "percentage": pct(r.spec.ppm), "applied": r.applied, "roll": pct(r.roll), "key": key_name(r.key)}));
    let abort = d.abort.map(|r| {
        let mut a = json!({"percentage": pct(r.spec.ppm), "applied": r.applied, "roll": pct(r.roll), "key": key_name(r.key)});
        match r.spec.status {
            AbortStatus::Http(s) => a["httpStatus"] = json!(s),
            AbortStatus::Grpc(s) => a["grpcStatus"] = json!(s),
        }
        a
    });
    let header = d
        .destination
        .filter(|_| engine.writes_header(&d, &req))
        .map(|x| x.key.clone());
    json!({"matched": true, "route": route, "destination": dest, "pick": pick, "stable": d.stable(),
           "fault": {"delay": delay, "abort": abort}, "header": header})
}

/// The decision in words.
pub fn human(req: &ExplainRequest, cluster: Option<&str>, v: &Value) -> String {
    let mut out = format!(
        "request     {} {}{}{}\n",
        if req.method.is_empty() {
            "GET"
        } else {
            &req.method
        },
        req.authority,
        if req.path.is_empty() { "/" } else { &req.path },
        cluster
            .map(|c| format!("  (cluster {c})"))
            .unwrap_or_default()
    );
    if v["matched"] != true {
        out.push_str(&format!(
            "result      {}\n",
            v["reason"].as_str().unwrap_or("no match")
        ));
        return out;
    }
    let route = match &v["route"] {
        Value::String(s) => s.clone(),
        other => format!("http[{other}] (unnamed)"),
    };
    out.push_str(&format!("rule        {route}\n"));
    let d = &v["destination"];
    let p = &v["pick"];
    let why = match p["by"].as_str() {
        Some("single") => "the rule's only destination".to_string(),
        Some("override") => "forced by the rule's override header".to_string(),
        Some("bucket") => {
            let ranges: Vec<String> = p["ranges"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|r| {
                            format!(
                                "{} {}-{} ({}%)",
                                r["destination"].as_str().unwrap_or(""),
                                r["buckets"][0],
                                r["buckets"][1].as_u64().unwrap_or(1).saturating_sub(1),
                                r["share"]
                                    .as_f64()
                                    .map(|s| (s * 10.0).round() / 10.0)
                                    .unwrap_or(0.0)
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let key = match p["key"].as_str() {
                Some("sticky") => format!("sticky key {:?}", p["stickyKey"].as_str().unwrap_or("")),
                Some("x-request-id") => "x-request-id".to_string(),
                _ => "a random draw (no sticky key, no x-request-id)".to_string(),
            };
            format!(
                "bucket {} of 10000 from {key}; {}",
                p["bucket"],
                ranges.join(", ")
            )
        }
        _ => String::new(),
    };
    out.push_str(&format!(
        "destination {}{}{}  ({why})\n",
        d["host"].as_str().unwrap_or(""),
        d["subset"]
            .as_str()
            .map(|s| format!(" subset {s}"))
            .unwrap_or_default(),
        d["port"]
            .as_u64()
            .map(|p| format!(" port {p}"))
            .unwrap_or_default()
    ));
    match v["header"].as_str() {
        Some(h) => out.push_str(&format!("header      x-ksit-destination: {h}\n")),
        None => out.push_str(
            "header      x-ksit-destination not written: the stable destination, where the VirtualService's default route for this rule sends the request\n",
        ),
    }
    let fault = |name: &str, f: &Value, what: String| -> String {
        if f.is_null() {
            return format!("{name:<11} none\n");
        }
        format!(
            "{name:<11} {what} on {}% of requests: this request rolled {:.4}% ({}) -> {}\n",
            f["percentage"],
            f["roll"].as_f64().unwrap_or(0.0),
            f["key"].as_str().unwrap_or(""),
            if f["applied"] == true {
                "APPLIED"
            } else {
                "not applied"
            }
        )
    };
    let dl = &v["fault"]["delay"];
    out.push_str(&fault("delay", dl, format!("{}ms", dl["fixedDelayMs"])));
    let ab = &v["fault"]["abort"];
    let status = if ab["httpStatus"].is_null() {
        format!("gRPC status {}", ab["grpcStatus"])
    } else {
        format!("HTTP {}", ab["httpStatus"])
    };
    out.push_str(&fault("abort", ab, status));
    out
}
