//! `ksit analyze`: checks KSIT, KubeStellar, Istio and ksit YAML together before it is applied.
//! Every finding has a severity, a stable code, the object, the field path and a one-line fix.

use crate::desired;
use crate::manifests::{read_documents, Document};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub code: &'static str,
    /// `Kind namespace/name`.
    pub object: String,
    pub file: String,
    pub path: String,
    pub message: String,
    pub fix: String,
}

/// The codes, for documentation and `--help`.
pub const CODES: [(&str, &str); 19] = [
    ("KSIT001", "a cluster-scoped object (BindingPolicy) carries metadata.namespace"),
    ("KSIT002", "a field the kind's schema does not declare (dropped by the API server)"),
    ("KSIT003", "a deprecated field (e.g. outlierDetection.consecutiveErrors)"),
    ("KSIT004", "an older API version where v1 is served"),
    ("KSIT010", "an invalid TrafficPolicy or VirtualService route field (weights, percentages, regexes, durations)"),
    ("KSIT011", "a fault without percentage: injected into no request (0%, as in Istio); earlier ksit versions injected it into every request"),
    ("KSIT012", "a headers match on a key named uri, scheme, method or authority: istiod matches it as a literal request header, not the pseudo-field"),
    ("KSIT020", "a rule shadowed by an earlier rule that always matches first"),
    ("KSIT021", "an unnamed rule that splits, injects faults or mirrors by a sticky key: keyed by a hash of its matches and destinations"),
    ("KSIT030", "a destination subset no DestinationRule defines"),
    ("KSIT031", "a TrafficPolicy's rendered VirtualService would clash with a VirtualService on the same host"),
    ("KSIT032", "two TrafficPolicies on the same workloads claim the same host (the older one applies)"),
    ("KSIT040", "a BindingPolicy that selects no cluster"),
    ("KSIT041", "a TrafficPolicy that no BindingPolicy sends anywhere"),
    ("KSIT042", "a TrafficPolicy's WasmPlugin namespace that its BindingPolicy does not cover"),
    ("KSIT043", "a BindingPolicy field ksit does not implement (statusCollectors, statusCollection, wantSingletonReportedState, wantMultiWECReportedState)"),
    ("KSIT044", "an object with control.kubestellar.io/expand-templates that does not expand for a bound cluster"),
    ("KSIT050", "a document that is not valid for its kind"),
    ("KSIT051", "an IntegrationTarget without labels: no BindingPolicy can select it"),
];

struct Ctx<'a> {
    out: Vec<Finding>,
    doc: Option<&'a Document>,
}

impl<'a> Ctx<'a> {
    fn on(&mut self, d: &'a Document) {
        self.doc = Some(d);
    }
    fn add(
        &mut self,
        severity: Severity,
        code: &'static str,
        path: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        let (object, file) = match self.doc {
            Some(d) => (
                d.describe(),
                format!("{}#{}", d.file.display(), d.index + 1),
            ),
            None => (String::new(), String::new()),
        };
        self.out.push(Finding {
            severity,
            code,
            object,
            file,
            path: path.into(),
            message: message.into(),
            fix: fix.into(),
        });
    }
}

/// Kinds whose schema ksit knows: its own CRDs plus any CRDs given with --schemas.
fn schemas(extra: &[Document]) -> BTreeMap<(String, String, String), Value> {
    let mut out = BTreeMap::new();
    let mut add = |crd: &Value| {
        let group = crd["spec"]["group"].as_str().unwrap_or("").to_string();
        let kind = crd["spec"]["names"]["kind"]
            .as_str()
            .unwrap_or("")
            .to_string();
        for v in crd["spec"]["versions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            if let (Some(name), Some(s)) =
                (v["name"].as_str(), v.pointer("/schema/openAPIV3Schema"))
            {
                out.entry((group.clone(), name.to_string(), kind.clone()))
                    .or_insert_with(|| s.clone());
            }
        }
    };
    for crd in crate::resources::crds() {
        add(&serde_json::to_value(&crd).unwrap_or_default());
    }
    for d in extra
        .iter()
        .filter(|d| d.kind() == "CustomResourceDefinition")
    {
        add(&d.value);
    }
    out
}

fn unknown_fields(v: &Value, s: &Value, path: &str, out: &mut Vec<String>) {
    if s.get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
    {
        return;
    }
    match v {
        Value::Object(m) => {
            let props = s.get("properties").and_then(Value::as_object);
            let additional = s.get("additionalProperties");
            for (k, x) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if let Some(ps) = props.and_then(|ps| ps.get(k)) {
                    unknown_fields(x, ps, &p, out);
                } else if let Some(a) = additional.filter(|a| a.is_object()) {
                    unknown_fields(x, a, &p, out);
                } else if props.is_some() || additional.is_some() {
                    out.push(p);
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = s.get("items") {
                for (i, x) in a.iter().enumerate() {
                    unknown_fields(x, items, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

fn short_host(h: &str) -> &str {
    h.split('.').next().unwrap_or(h)
}

/// Whether a match entry always matches (no conditions, or only `uri: {prefix: "/"}`).
fn always(m: &Value) -> bool {
    let Some(o) = m.as_object() else { return true };
    o.iter().all(|(k, v)| match k.as_str() {
        "name" | "ignoreUriCase" => true,
        "uri" => {
            v.get("prefix").and_then(Value::as_str) == Some("/")
                || v.get("prefix").and_then(Value::as_str) == Some("")
        }
        _ => false,
    })
}

/// The uri prefix/exact an entry needs, when that is its only condition.
fn uri_only(m: &Value) -> Option<(bool, String)> {
    let o = m.as_object()?;
    if o.keys().any(|k| !matches!(k.as_str(), "name" | "uri")) {
        return None;
    }
    let uri = o.get("uri")?;
    if let Some(p) = uri.get("prefix").and_then(Value::as_str) {
        return Some((true, p.to_string()));
    }
    uri.get("exact")
        .and_then(Value::as_str)
        .map(|e| (false, e.to_string()))
}

fn shadowing(http: &[Value], c: &mut Ctx<'_>) {
    for (j, later) in http.iter().enumerate() {
        let later_matches = later["match"].as_array().cloned().unwrap_or_default();
        for (i, earlier) in http.iter().enumerate().take(j) {
            let em = earlier["match"].as_array().cloned().unwrap_or_default();
            let name = |r: &Value, k: usize| {
                r["name"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| format!("http[{k}]"))
            };
            let total = em.is_empty() || em.iter().any(always);
            // Every entry of the later rule is covered by an earlier uri-only prefix.
            let covered = !later_matches.is_empty()
                && later_matches.iter().all(|lm| {
                    uri_only(lm).is_some_and(|(_, lp)| {
                        em.iter()
                            .filter_map(uri_only)
                            .any(|(is_prefix, ep)| is_prefix && lp.starts_with(&ep))
                    })
                });
            if total || covered {
                c.add(
                    Severity::Warning,
                    "KSIT020",
                    format!("spec.http[{j}]"),
                    format!("rule {} can never match: rule {} (spec.http[{i}]) matches every request it would", name(later, j), name(earlier, i)),
                    format!("move {} before {}, or narrow {}'s match", name(later, j), name(earlier, i), name(earlier, i)),
                );
                break;
            }
        }
    }
}

/// Runs every check over the documents under `paths`.
pub fn analyze(paths: &[PathBuf], schema_paths: &[PathBuf]) -> anyhow::Result<Vec<Finding>> {
    let docs = read_documents(paths)?;
    let extra = if schema_paths.is_empty() {
        vec![]
    } else {
        read_documents(schema_paths)?
    };
    let schemas = schemas(&extra);
    let mut c = Ctx {
        out: vec![],
        doc: None,
    };
    let mut dest_rules: Vec<(String, Vec<String>)> = vec![];
    let mut user_vs: Vec<(&Document, Vec<String>, Vec<String>)> = vec![];
    for d in &docs {
        if d.kind() == "DestinationRule" {
            let subsets = d.value["spec"]["subsets"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s["name"].as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            dest_rules.push((
                d.value["spec"]["host"].as_str().unwrap_or("").to_string(),
                subsets,
            ));
        }
        if d.kind() == "VirtualService" {
            let strs = |p: &str| {
                d.value
                    .pointer(p)
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            user_vs.push((d, strs("/spec/hosts"), strs("/spec/gateways")));
        }
    }
    for d in &docs {
        c.on(d);
        let (group, kind) = (d.group().to_string(), d.kind().to_string());
        let version = d.api_version().rsplit('/').next().unwrap_or("").to_string();
        if kind == "BindingPolicy" {
            let spec = &d.value["spec"];
            let mut unsupported: Vec<(String, &str)> = Vec::new();
            if spec
                .get("wantSingletonReportedState")
                .is_some_and(|v| v != &Value::Bool(false))
            {
                unsupported.push((
                    "spec.wantSingletonReportedState".into(),
                    "ksit copies objects to members but returns no reported state from them",
                ));
            }
            for (i, clause) in spec["downsync"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                for (field, why) in [
                    ("statusCollectors", "ksit collects no status from members"),
                    ("statusCollection", "ksit collects no status from members"),
                    (
                        "wantSingletonReportedState",
                        "ksit returns no reported state from members",
                    ),
                    (
                        "wantMultiWECReportedState",
                        "ksit returns no reported state from members",
                    ),
                ] {
                    let set = clause.get(field).is_some_and(|v| match v {
                        Value::Bool(b) => *b,
                        Value::Array(a) => !a.is_empty(),
                        Value::Null => false,
                        _ => true,
                    });
                    if set {
                        unsupported.push((format!("spec.downsync[{i}].{field}"), why));
                    }
                }
            }
            for (path, why) in unsupported {
                c.add(
                    Severity::Warning,
                    "KSIT043",
                    path.clone(),
                    format!("not implemented by ksit: {why}; the field has no effect (KubeStellar implements it when it owns the BindingPolicy)"),
                    format!("remove {path}, or run ksit with --kubestellar-owns-bindings under KubeStellar"),
                );
            }
        }
        if kind == "BindingPolicy" && d.namespace().is_some() {
            c.add(
                Severity::Error,
                "KSIT001",
                "metadata.namespace",
                "a BindingPolicy is cluster-scoped: the API server drops metadata.namespace",
                "remove metadata.namespace",
            );
        }
        if let Some(s) = schemas.get(&(group.clone(), version.clone(), kind.clone())) {
            let mut unknown = Vec::new();
            for top in ["spec", "status"] {
                if let (Some(v), Some(ss)) =
                    (d.value.get(top), s.pointer(&format!("/properties/{top}")))
                {
                    unknown_fields(v, ss, top, &mut unknown);
                }
            }
            for u in unknown {
                c.add(
                    Severity::Error,
                    "KSIT002",
                    u.clone(),
                    format!(
                        "{u} is not a field of {kind} {}; the API server drops it",
                        d.api_version()
                    ),
                    format!("remove {u}"),
                );
            }
        }
        if group.ends_with(".istio.io")
            && matches!(version.as_str(), "v1beta1" | "v1alpha3")
            && !matches!(kind.as_str(), "WasmPlugin" | "ProxyConfig" | "EnvoyFilter")
        {
            c.add(
                Severity::Warning,
                "KSIT004",
                "apiVersion",
                format!(
                    "{} is an older version; Istio serves {group}/v1",
                    d.api_version()
                ),
                format!("use apiVersion: {group}/v1"),
            );
        }
        if kind == "DestinationRule" {
            let mut paths = vec![(
                "spec.trafficPolicy.outlierDetection".to_string(),
                d.value.pointer("/spec/trafficPolicy/outlierDetection"),
            )];
            for (i, s) in d.value["spec"]["subsets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                if s.pointer("/trafficPolicy/outlierDetection/consecutiveErrors")
                    .is_some()
                {
                    c.add(
                        Severity::Warning,
                        "KSIT003",
                        format!(
                            "spec.subsets[{i}].trafficPolicy.outlierDetection.consecutiveErrors"
                        ),
                        "consecutiveErrors is deprecated",
                        "use consecutive5xxErrors (same meaning: consecutive 5xx responses)",
                    );
                }
            }
            for (p, od) in paths.drain(..) {
                if od.and_then(|o| o.get("consecutiveErrors")).is_some() {
                    c.add(
                        Severity::Warning,
                        "KSIT003",
                        format!("{p}.consecutiveErrors"),
                        "consecutiveErrors is deprecated",
                        "use consecutive5xxErrors (same meaning: consecutive 5xx responses)",
                    );
                }
            }
        }
        if kind == "TrafficPolicy" || kind == "VirtualService" {
            match crate::explain::spec_of(d) {
                Err(e) => c.add(
                    Severity::Error,
                    "KSIT050",
                    "spec",
                    e.to_string(),
                    "fix the field named in the message",
                ),
                Ok((spec, _)) => {
                    for e in ksit_policy::validate_spec(&spec, "spec") {
                        c.add(
                            Severity::Error,
                            "KSIT010",
                            e.path.clone(),
                            e.message.clone(),
                            "correct the value (see docs/trafficpolicy.md)",
                        );
                    }
                }
            }
            let http = d.value["spec"]["http"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            shadowing(&http, &mut c);
            for (i, r) in http.iter().enumerate() {
                for f in ["delay", "abort"] {
                    if let Some(x) = r.pointer(&format!("/fault/{f}")) {
                        if x.get("percentage").is_none() && x.get("percent").is_none() {
                            c.add(
                                Severity::Warning,
                                "KSIT011",
                                format!("spec.http[{i}].fault.{f}"),
                                format!("no percentage: this {f} is injected into no request (0%), as Istio does; earlier ksit versions injected it into every request"),
                                format!("set fault.{f}.percentage.value: 100 to inject it into every request, or remove the {f}"),
                            );
                        }
                    }
                }
                for (j, m) in r["match"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .enumerate()
                {
                    for field in ["headers", "withoutHeaders"] {
                        for key in ["uri", "scheme", "method", "authority"] {
                            if m.get(field).and_then(|h| h.get(key)).is_some() {
                                c.add(
                                    Severity::Warning,
                                    "KSIT012",
                                    format!("spec.http[{i}].match[{j}].{field}.{key}"),
                                    format!("matches a request header literally named {key:?}: Istio's reference says this key is ignored, but istiod (and ksit) match it as a header"),
                                    format!("use match.{key} for the request's {key}; keep it only if clients send a header named {key:?}"),
                                );
                            }
                        }
                    }
                }
                let splits = r["route"].as_array().is_some_and(|a| a.len() > 1)
                    || r.get("fault").is_some()
                    || r.pointer("/canary/stickyBy").is_some();
                if kind == "TrafficPolicy" && r.get("name").is_none() && splits {
                    c.add(
                        Severity::Warning,
                        "KSIT021",
                        format!("spec.http[{i}].name"),
                        "unnamed: its canary buckets and its fault and mirror rolls are keyed by a hash of its matches and destinations (earlier ksit versions used its position, so upgrading moves its users once); changing its matches or destinations moves them again",
                        "give the rule a name; a named rule keeps its users through any change",
                    );
                }
                for (j, dst) in r["route"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .enumerate()
                {
                    let (Some(host), Some(subset)) = (
                        dst.pointer("/destination/host").and_then(Value::as_str),
                        dst.pointer("/destination/subset").and_then(Value::as_str),
                    ) else {
                        continue;
                    };
                    let defined = dest_rules.iter().any(|(h, subsets)| {
                        short_host(h) == short_host(host) && subsets.iter().any(|s| s == subset)
                    });
                    if !defined {
                        c.add(Severity::Error, "KSIT030", format!("spec.http[{i}].route[{j}].destination.subset"), format!("no DestinationRule for host {host} defines subset {subset}"), format!("add subset {subset} to the DestinationRule of {host}, or remove the subset"));
                    }
                }
            }
        }
        if kind == "TrafficPolicy" {
            let hosts: Vec<String> = d
                .value
                .pointer("/spec/hosts")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let gateways: Vec<String> = d
                .value
                .pointer("/spec/gateways")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            for (vs, vh, vg) in &user_vs {
                let shared: Vec<&String> = hosts.iter().filter(|h| vh.contains(h)).collect();
                let same_attach = (gateways.is_empty() && vg.is_empty())
                    || gateways.iter().any(|g| vg.contains(g));
                if !shared.is_empty() && same_attach {
                    c.add(Severity::Warning, "KSIT031", "spec.hosts", format!("{} also routes host {} on the same gateway: Istio merges the two unpredictably", vs.describe(), shared[0]), format!("move {}'s routes into this TrafficPolicy, or remove it from the binding", vs.describe()));
                }
            }
        }
        if kind == "IntegrationTarget"
            && d.value
                .pointer("/spec/labels")
                .and_then(Value::as_object)
                .is_none_or(|m| m.is_empty())
        {
            c.add(
                Severity::Warning,
                "KSIT051",
                "spec.labels",
                "no labels: no BindingPolicy clusterSelector can select this cluster",
                "add labels, e.g. mesh: enabled",
            );
        }
    }
    // Cross-object checks on the hub model.
    let hub = crate::manifests::hub_from_documents(&docs).ok();
    if let Some(hub) = hub {
        let settings = desired::RenderSettings {
            module: desired::ModuleSource::Oci {
                image: "oci://analyze".into(),
            },
            gateway_namespace: "istio-system".into(),
            stable_by_default_route: false,
            per_cluster: false,
        };
        let d = desired::compute(&hub, &settings);
        for doc in docs.iter().filter(|x| x.kind() == "BindingPolicy") {
            c.on(doc);
            if hub.clusters.is_empty() {
                continue;
            }
            for n in d.notes.iter().filter(|n| {
                n.object == format!("BindingPolicy {}", doc.name())
                    && n.reason == "TemplateExpansionFailed"
            }) {
                c.add(
                    Severity::Error,
                    "KSIT044",
                    "spec.downsync",
                    format!("{}: {}", n.cluster, n.message),
                    "give the cluster the property (a label or annotation of its IntegrationTarget, or its ConfigMap in customization-properties), or use only {{ .property }} references",
                );
            }
            if d.bound.get(doc.name()).is_none_or(|b| b.is_empty()) {
                c.add(
                    Severity::Warning,
                    "KSIT040",
                    "spec.clusterSelectors",
                    format!(
                        "selects none of the clusters given ({})",
                        hub.clusters
                            .iter()
                            .map(|x| x.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    "match the labels of an IntegrationTarget's spec.labels",
                );
            }
        }
        for doc in docs.iter().filter(|x| x.kind() == "TrafficPolicy") {
            c.on(doc);
            let key = format!("{}/{}", doc.namespace().unwrap_or("default"), doc.name());
            let sent = d
                .clusters
                .values()
                .any(|cd| cd.objects.iter().any(|o| o.carries(&key)));
            let own = |reason: &str| {
                d.notes
                    .iter()
                    .find(|n| n.object == format!("TrafficPolicy {key}") && n.reason == reason)
            };
            let conflict = own("HostConflict");
            if let Some(n) = conflict {
                c.add(
                    Severity::Error,
                    "KSIT032",
                    "spec.hosts",
                    format!("{}: {}", n.cluster, n.message),
                    "give each host to one TrafficPolicy per gateway (move the rules into the older policy)",
                );
            }
            if let Some(n) = own("NamespaceNotBound") {
                c.add(
                    Severity::Error,
                    "KSIT042",
                    "spec.selector",
                    n.message.clone(),
                    "add the WasmPlugin's namespace to the BindingPolicy clause",
                );
            } else if conflict.is_some() {
                // reported above
            } else if !sent && !hub.bindings.is_empty() && !hub.clusters.is_empty() {
                c.add(Severity::Warning, "KSIT041", "metadata", "no BindingPolicy sends this TrafficPolicy (or its WasmPlugin) to any cluster", "add a downsync clause for ksit.io trafficpolicies (or extensions.istio.io wasmplugins) in its namespace");
            } else if hub.bindings.is_empty() {
                c.add(
                    Severity::Warning,
                    "KSIT041",
                    "metadata",
                    "no BindingPolicy in the input sends this TrafficPolicy anywhere",
                    "add a BindingPolicy with a clause for ksit.io trafficpolicies",
                );
            }
        }
    }
    c.out.sort_by(|a, b| {
        (a.severity.clone(), a.file.clone(), a.code).cmp(&(
            b.severity.clone(),
            b.file.clone(),
            b.code,
        ))
    });
    Ok(c.out)
}

/// Findings for people.
pub fn human(findings: &[Finding]) -> String {
    if findings.is_empty() {
        return "no problems found\n".into();
    }
    let mut out = String::new();
    for f in findings {
        let sev = match f.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        out.push_str(&format!(
            "{sev:<7} {} {} ({})\n        {}: {}\n        fix: {}\n",
            f.code, f.object, f.file, f.path, f.message, f.fix
        ));
    }
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    out.push_str(&format!(
        "{} error(s), {} warning(s)\n",
        errors,
        findings.len() - errors
    ));
    out
}
