//! `ksit explain`: one request (or a JSONL file of them) through the same engine as the filter, with the
//! reasons: which rule matched, which destination and why, which faults apply.

use crate::manifests::Document;
use ksit_policy::engine::{AbortStatus, KeyKind, Pick};
use ksit_policy::{Engine, NamedPolicy, PluginConfig, Request, TrafficPolicySpec};
use serde_json::{json, Value};

/// A request to explain.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct ExplainRequest {
    pub method: String,
    pub path: String,
    pub authority: String,
    pub headers: std::collections::BTreeMap<String, String>,
}

/// Fields of an Istio `HTTPMatchRequest` that choose proxies rather than requests: `ksit explain` evaluates
/// a request, so it leaves them out (with a note); a TrafficPolicy refuses them.
const PROXY_MATCH_FIELDS: [&str; 4] = ["port", "sourceLabels", "gateways", "sourceNamespace"];

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
                let mut route = r.as_object().cloned().unwrap_or_default();
                if let Some(d) = route.remove("delegate") {
                    // The routes are another VirtualService's: explained there (see `engine_for`).
                    notes.push(format!(
                        "spec.http[{i}] delegates to VirtualService {}/{}: not followed",
                        d["namespace"]
                            .as_str()
                            .or(doc.namespace())
                            .unwrap_or("default"),
                        d["name"].as_str().unwrap_or("")
                    ));
                    continue;
                }
                // Istio's deprecated integer mirror percentages, as pilot reads them.
                for old in ["mirrorPercent", "mirror_percent"] {
                    if let Some(v) = route.remove(old) {
                        if !route.contains_key("mirrorPercentage") && !v.is_null() {
                            route.insert("mirrorPercentage".into(), json!({"value": v}));
                        }
                        notes.push(format!(
                            "spec.http[{i}].{old}: deprecated; read as mirrorPercentage"
                        ));
                    }
                }
                if let Some(Value::Array(matches)) = route.get_mut("match") {
                    for (j, m) in matches.iter_mut().enumerate() {
                        let Some(m) = m.as_object_mut() else { continue };
                        for f in PROXY_MATCH_FIELDS {
                            if m.remove(f).is_some() {
                                notes.push(format!("spec.http[{i}].match[{j}].{f}: ignored (depends on the proxy, not the request)"));
                            }
                        }
                    }
                }
                http.push(Value::Object(route));
            }
            for k in ["tcp", "tls"] {
                if src.get(k).is_some() {
                    notes.push(format!("spec.{k}: ignored (ksit decides HTTP requests)"));
                }
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

/// One policy compiled as the filter runs it, with the spec it came from (for names and the fields the
/// VirtualService carries).
pub struct Explainer {
    pub engine: Engine,
    /// The spec as it applies in the cluster (overrides resolved).
    pub spec: TrafficPolicySpec,
    /// What was left out of a VirtualService.
    pub notes: Vec<String>,
}

/// Compiles the chosen document for `cluster`, as the controller renders it (`stable_by_default_route`:
/// with `--stable-by-default-route`).
pub fn engine_for(
    doc: &Document,
    cluster: Option<&str>,
    stable_by_default_route: bool,
) -> anyhow::Result<Explainer> {
    let (spec, notes) = spec_of(doc)?;
    if let Some(n) = notes.iter().find(|n| n.contains(" delegates to ")) {
        anyhow::bail!(
            "{}: {n}: the requests that route matches are decided by that VirtualService's routes; explain it instead",
            doc.describe()
        );
    }
    let resolved = spec.resolve(cluster);
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
    Ok(Explainer {
        engine,
        spec: resolved,
        notes,
    })
}

fn key_name(k: KeyKind) -> &'static str {
    match k {
        KeyKind::Sticky => "sticky",
        KeyKind::RequestId => "x-request-id",
        KeyKind::Random => "random",
    }
}

/// The decision for one request, as JSON (the documented `ksit explain -o json` shape).
pub fn decide(x: &Explainer, req: &ExplainRequest, entropy: u64) -> Value {
    let engine = &x.engine;
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
    let spec_rule = x.spec.http.get(rule.index);
    // The name Istio gives the Envoy route: the rule's name, then `.MATCH` when the matching entry has one.
    let match_name = rule
        .matched_entry(&req)
        .and_then(|i| spec_rule?.matches.get(i)?.name.clone());
    let route_name = match (&spec_rule.and_then(|r| r.name.clone()), match_name) {
        (name, Some(m)) => format!("{}.{m}", name.as_deref().unwrap_or("")),
        (Some(name), None) => name.clone(),
        (None, None) => String::new(),
    };
    let answer = spec_rule.and_then(|r| {
        r.redirect
            .as_ref()
            .map(|v| json!({"redirect": v}))
            .or_else(|| {
                r.direct_response
                    .as_ref()
                    .map(|v| json!({"directResponse": v}))
            })
    });
    let mirror = spec_rule.and_then(|r| mirror_json(r, &d));
    let mut out = json!({"matched": true, "route": route, "routeName": route_name, "destination": dest,
           "pick": pick, "stable": d.stable(), "fault": {"delay": delay, "abort": abort}, "header": header,
           "mirror": mirror});
    if let Some(a) = answer {
        out["answer"] = a;
    }
    if let Some(level) = d.mirror_level() {
        out["mirrorHeader"] = json!(level);
    }
    out
}

/// The rule's mirroring for this request: decided by the filter on the sticky key (which mirrors), or left
/// to Envoy per request (each mirror with its share).
fn mirror_json(
    rule: &ksit_policy::spec::HttpRule,
    d: &ksit_policy::Decision<'_, '_>,
) -> Option<Value> {
    let policies = rule.mirror_policies();
    if policies.is_empty() || rule.answers().is_some() {
        return None;
    }
    let pct = |ppm: u32| f64::from(ppm) / 10_000.0;
    match d.mirror {
        Some(m) => {
            let to: Vec<String> = policies
                .iter()
                .filter(|(_, p)| m.roll < *p)
                .map(|(dest, _)| dest.key())
                .collect();
            Some(
                json!({"by": "filter", "to": to, "roll": pct(m.roll), "key": key_name(m.key),
                        "level": m.level}),
            )
        }
        None => {
            let each: Vec<Value> = policies
                .iter()
                .map(|(dest, p)| json!({"destination": dest.key(), "percentage": pct(*p)}))
                .collect();
            Some(json!({"by": "envoy", "policies": each}))
        }
    }
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
    if let Some(n) = v["routeName"]
        .as_str()
        .filter(|n| !n.is_empty() && *n != route)
    {
        out.push_str(&format!(
            "route name  {n}  (as Istio names the Envoy route)\n"
        ));
    }
    if let Some(a) = v.get("answer") {
        let what = if let Some(r) = a.get("redirect") {
            format!("redirect {r}")
        } else {
            format!("direct response {}", a["directResponse"])
        };
        out.push_str(&format!(
            "answer      {what}  (by the VirtualService's route; the filter writes no destination)\n"
        ));
        return out;
    }
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
    let m = &v["mirror"];
    match m["by"].as_str() {
        Some("filter") => {
            let to: Vec<&str> = m["to"]
                .as_array()
                .map(|t| t.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let sticky = format!(
                "sticky: rolled {:.4}% ({})",
                m["roll"].as_f64().unwrap_or(0.0),
                m["key"].as_str().unwrap_or("")
            );
            out.push_str(&if to.is_empty() {
                format!("mirror      not mirrored ({sticky})\n")
            } else {
                format!(
                    "mirror      to {} ({sticky}; x-ksit-mirror: {})\n",
                    to.join(", "),
                    m["level"]
                )
            });
        }
        Some("envoy") => out.push_str(&format!(
            "mirror      decided by Envoy per request: {}\n",
            m["policies"]
                .as_array()
                .map(|p| p
                    .iter()
                    .map(|x| format!(
                        "{} {}%",
                        x["destination"].as_str().unwrap_or(""),
                        x["percentage"]
                    ))
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        )),
        _ => {}
    }
    out
}
