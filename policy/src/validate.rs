//! Validation of a TrafficPolicy spec: every problem, each with its field path.

use crate::duration::parse_duration_nanos;
use crate::error::FieldError;
use crate::spec::*;
use std::collections::{BTreeMap, BTreeSet};

/// The header the filter writes; users may not configure it as an input.
pub const DESTINATION_HEADER: &str = "x-ksit-destination";

/// Checks `spec` and returns every problem, with paths starting at `prefix` (e.g. `spec`).
pub fn validate_spec(spec: &TrafficPolicySpec, prefix: &str) -> Vec<FieldError> {
    let mut v = Validator { errors: Vec::new() };
    v.spec(spec, prefix);
    v.errors
}

struct Validator {
    errors: Vec<FieldError>,
}

/// A rule as it is in effect, each part with the path it came from (base rule or a cluster override).
struct RuleParts<'a> {
    matches: (&'a [HttpMatchRequest], String),
    route: (&'a [HttpRouteDestination], String),
    canary: (Option<&'a Canary>, String),
    fault: (Option<&'a Fault>, String),
}

impl Validator {
    fn err(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.errors.push(FieldError::new(path, msg));
    }

    fn spec(&mut self, spec: &TrafficPolicySpec, p: &str) {
        if spec.selector.is_some() && !spec.target_refs.is_empty() {
            self.err(
                format!("{p}.targetRefs"),
                "set either selector or targetRefs, not both (as for an Istio WasmPlugin)",
            );
        }
        for (i, t) in spec.target_refs.iter().enumerate() {
            if t.kind.is_empty() {
                self.err(format!("{p}.targetRefs[{i}].kind"), "must not be empty");
            }
            if t.name.is_empty() {
                self.err(format!("{p}.targetRefs[{i}].name"), "must not be empty");
            }
        }
        if spec.hosts.is_empty() {
            self.err(
                format!("{p}.hosts"),
                "must list at least one host (use \"*\" for all)",
            );
        }
        let mut seen = BTreeSet::new();
        for (i, h) in spec.hosts.iter().enumerate() {
            if let Err(m) = check_host(h) {
                self.err(format!("{p}.hosts[{i}]"), m);
            }
            if !seen.insert(h.to_ascii_lowercase()) {
                self.err(format!("{p}.hosts[{i}]"), format!("duplicate host {h:?}"));
            }
        }
        let mut names = BTreeMap::new();
        for (i, rule) in spec.http.iter().enumerate() {
            let rp = format!("{p}.http[{i}]");
            if let Some(name) = &rule.name {
                if let Err(m) = check_name(name) {
                    self.err(format!("{rp}.name"), m);
                }
                if let Some(prev) = names.insert(name.as_str(), i) {
                    self.err(
                        format!("{rp}.name"),
                        format!("duplicate rule name {name:?} (also {p}.http[{prev}])"),
                    );
                }
            }
            if let Some(t) = &rule.timeout {
                if let Err(m) = parse_duration_nanos(t) {
                    self.err(format!("{rp}.timeout"), m);
                }
            }
            self.rule(&RuleParts {
                matches: (&rule.matches, format!("{rp}.match")),
                route: (&rule.route, format!("{rp}.route")),
                canary: (rule.canary.as_ref(), format!("{rp}.canary")),
                fault: (rule.fault.as_ref(), format!("{rp}.fault")),
            });
        }
        for (i, ov) in spec.overrides.iter().enumerate() {
            let op = format!("{p}.overrides[{i}]");
            if ov.clusters.is_empty() {
                self.err(format!("{op}.clusters"), "must list at least one cluster");
            }
            for (j, c) in ov.clusters.iter().enumerate() {
                if c.is_empty() {
                    self.err(format!("{op}.clusters[{j}]"), "must not be empty");
                }
            }
            let mut patched = BTreeSet::new();
            for (j, patch) in ov.http.iter().enumerate() {
                let pp = format!("{op}.http[{j}]");
                if !patched.insert(patch.name.as_str()) {
                    self.err(
                        format!("{pp}.name"),
                        format!("rule {:?} is patched twice in this override", patch.name),
                    );
                }
                let Some(&ri) = names.get(patch.name.as_str()) else {
                    let known: Vec<&str> = names.keys().copied().collect();
                    self.err(
                        format!("{pp}.name"),
                        format!(
                            "no rule named {:?} in {p}.http (named rules: {})",
                            patch.name,
                            known.join(", ")
                        ),
                    );
                    continue;
                };
                let base = &spec.http[ri];
                let bp = format!("{p}.http[{ri}]");
                // Only re-check what the patch changes, or what it could break by changing the route.
                if patch.matches.is_none()
                    && patch.route.is_none()
                    && patch.canary.is_none()
                    && patch.fault.is_none()
                {
                    self.err(
                        pp.clone(),
                        "patch changes nothing: set match, route, canary or fault",
                    );
                    continue;
                }
                let parts = RuleParts {
                    matches: match &patch.matches {
                        Some(m) => (m.as_slice(), format!("{pp}.match")),
                        None => (&[][..], format!("{bp}.match")),
                    },
                    route: match &patch.route {
                        Some(r) => (r.as_slice(), format!("{pp}.route")),
                        None => (base.route.as_slice(), format!("{bp}.route")),
                    },
                    canary: match &patch.canary {
                        Some(c) => (Some(c), format!("{pp}.canary")),
                        None => (base.canary.as_ref(), format!("{bp}.canary")),
                    },
                    fault: match &patch.fault {
                        Some(f) => (Some(f), format!("{pp}.fault")),
                        None => (base.fault.as_ref(), format!("{bp}.fault")),
                    },
                };
                // Problems already reported against the base rule are not repeated for the override.
                let mut sub = Validator { errors: Vec::new() };
                sub.rule(&parts);
                for e in sub.errors {
                    if !self.errors.contains(&e) {
                        self.errors.push(e);
                    }
                }
            }
        }
    }

    fn rule(&mut self, r: &RuleParts<'_>) {
        let (matches, mp) = (&r.matches.0, &r.matches.1);
        for (i, m) in matches.iter().enumerate() {
            self.match_request(m, &format!("{mp}[{i}]"));
        }
        let (route, rp) = (&r.route.0, &r.route.1);
        if route.is_empty() {
            self.err(rp.clone(), "must have at least one destination");
        }
        let mut keys = BTreeSet::new();
        let mut total: i64 = 0;
        for (i, d) in route.iter().enumerate() {
            let dp = format!("{rp}[{i}]");
            let host = &d.destination.host;
            if host.is_empty() {
                self.err(format!("{dp}.destination.host"), "must not be empty");
            } else if host.contains('|') || host.contains(char::is_whitespace) {
                self.err(
                    format!("{dp}.destination.host"),
                    "must not contain '|' or spaces",
                );
            }
            if let Some(s) = &d.destination.subset {
                if s.is_empty() || s.contains('|') || s.contains(char::is_whitespace) {
                    self.err(
                        format!("{dp}.destination.subset"),
                        "must be a non-empty name without '|' or spaces",
                    );
                }
            }
            if let Some(port) = &d.destination.port {
                if port.number == 0 || port.number > 65535 {
                    self.err(
                        format!("{dp}.destination.port.number"),
                        "must be between 1 and 65535",
                    );
                }
            }
            if !keys.insert(d.destination.key()) {
                self.err(
                    format!("{dp}.destination"),
                    format!("{} appears twice in this route", d.destination.key()),
                );
            }
            match d.weight {
                Some(w) if w < 0 => self.err(format!("{dp}.weight"), "must be >= 0"),
                Some(w) => total += i64::from(w),
                None => {}
            }
        }
        if route.len() > 1 && total == 0 && !route.iter().any(|d| d.weight.is_some_and(|w| w < 0)) {
            self.err(rp.clone(), "weights must not all be 0 (give the destinations relative weights, e.g. 90 and 10)");
        }
        let dest_keys: Vec<String> = route.iter().map(|d| d.destination.key()).collect();
        let dest_hosts: Vec<&str> = route.iter().map(|d| d.destination.host.as_str()).collect();
        if let (Some(c), cp) = (r.canary.0, &r.canary.1) {
            if let Some(s) = &c.sticky_by {
                self.sticky(s, &format!("{cp}.stickyBy"));
            }
            if let Some(h) = &c.override_header {
                self.header_name(h, &format!("{cp}.overrideHeader"));
                if h == DESTINATION_HEADER {
                    self.err(
                        format!("{cp}.overrideHeader"),
                        "x-ksit-destination is written by the filter; choose another header",
                    );
                }
            } else if !c.allowed_overrides.is_empty() {
                self.err(
                    format!("{cp}.allowedOverrides"),
                    "has no effect without overrideHeader",
                );
            }
            for (i, a) in c.allowed_overrides.iter().enumerate() {
                if !dest_keys.contains(a) {
                    self.err(
                        format!("{cp}.allowedOverrides[{i}]"),
                        format!(
                            "{a:?} is not a destination of this rule (destinations: {})",
                            dest_keys.join(", ")
                        ),
                    );
                }
            }
        }
        if let (Some(f), fp) = (r.fault.0, &r.fault.1) {
            self.fault(f, fp, &dest_keys, &dest_hosts);
        }
    }

    fn fault(&mut self, f: &Fault, fp: &str, dest_keys: &[String], dest_hosts: &[&str]) {
        if let Some(d) = &f.delay {
            let dp = format!("{fp}.delay");
            if d.exponential_delay.is_some() {
                self.err(
                    format!("{dp}.exponentialDelay"),
                    "not supported (Istio does not implement it either); use fixedDelay",
                );
            }
            match &d.fixed_delay {
                None if d.exponential_delay.is_none() => {
                    self.err(format!("{dp}.fixedDelay"), "is required")
                }
                None => {}
                Some(t) => match parse_duration_nanos(t) {
                    Err(m) => self.err(format!("{dp}.fixedDelay"), m),
                    Ok(n) if n < 1_000_000 => {
                        self.err(format!("{dp}.fixedDelay"), "must be at least 1ms")
                    }
                    Ok(_) => {}
                },
            }
            self.percentage(d.percentage, d.percent, &dp);
        }
        if let Some(a) = &f.abort {
            let ap = format!("{fp}.abort");
            if a.http2_error.is_some() {
                self.err(
                    format!("{ap}.http2Error"),
                    "not supported; use httpStatus or grpcStatus",
                );
            }
            match (a.http_status, &a.grpc_status) {
                (Some(_), Some(_)) => self.err(ap.clone(), "set one of httpStatus or grpcStatus, not both"),
                (None, None) if a.http2_error.is_none() => self.err(ap.clone(), "set httpStatus or grpcStatus"),
                (Some(s), None) if !(200..=599).contains(&s) => {
                    self.err(format!("{ap}.httpStatus"), "must be an HTTP status between 200 and 599")
                }
                (None, Some(g)) if grpc_code(g).is_none() => self.err(
                    format!("{ap}.grpcStatus"),
                    format!("unknown gRPC status {g:?}; use a name such as UNAVAILABLE or a number 0 to 16"),
                ),
                _ => {}
            }
            self.percentage(a.percentage, a.percent, &ap);
        }
        if let Some(s) = &f.sticky_by {
            self.sticky(s, &format!("{fp}.stickyBy"));
        }
        if let Some(w) = &f.when {
            let wp = format!("{fp}.when");
            for (name, m) in &w.headers {
                let hp = format!("{wp}.headers.{name}");
                self.header_name(name, &hp);
                self.string_match(m, &hp, true);
            }
            for (i, d) in w.destinations.iter().enumerate() {
                if !dest_keys.iter().any(|k| k == d) && !dest_hosts.contains(&d.as_str()) {
                    self.err(
                        format!("{wp}.destinations[{i}]"),
                        format!(
                            "{d:?} is not a destination of this rule (destinations: {})",
                            dest_keys.join(", ")
                        ),
                    );
                }
            }
            for (i, c) in w.clusters.iter().enumerate() {
                if c.is_empty() {
                    self.err(format!("{wp}.clusters[{i}]"), "must not be empty");
                }
            }
        }
    }

    fn percentage(&mut self, pct: Option<Percent>, percent: Option<i32>, p: &str) {
        if pct.is_some() && percent.is_some() {
            self.err(
                format!("{p}.percent"),
                "set percentage or the deprecated percent, not both",
            );
        }
        if let Some(v) = pct {
            if !(0.0..=100.0).contains(&v.value) || v.value.is_nan() {
                self.err(format!("{p}.percentage.value"), "must be between 0 and 100");
            }
        }
        if let Some(v) = percent {
            if !(0..=100).contains(&v) {
                self.err(format!("{p}.percent"), "must be between 0 and 100");
            }
        }
    }

    fn sticky(&mut self, s: &StickyBy, p: &str) {
        let set = [
            s.header.is_some(),
            s.cookie.is_some(),
            s.query_param.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            self.err(
                p.to_string(),
                "set exactly one of header, cookie, queryParam",
            );
        }
        if let Some(h) = &s.header {
            self.header_name(h, &format!("{p}.header"));
        }
        for (field, v) in [("cookie", &s.cookie), ("queryParam", &s.query_param)] {
            if v.as_deref() == Some("") {
                self.err(format!("{p}.{field}"), "must not be empty");
            }
        }
    }

    fn match_request(&mut self, m: &HttpMatchRequest, p: &str) {
        for (field, sm) in [
            ("uri", &m.uri),
            ("scheme", &m.scheme),
            ("method", &m.method),
            ("authority", &m.authority),
        ] {
            if let Some(sm) = sm {
                self.string_match(sm, &format!("{p}.{field}"), false);
            }
        }
        for (field, map) in [
            ("headers", &m.headers),
            ("withoutHeaders", &m.without_headers),
        ] {
            for (name, sm) in map {
                let hp = format!("{p}.{field}.{name}");
                self.header_name(name, &hp);
                self.string_match(sm, &hp, true);
            }
        }
        for (name, sm) in &m.query_params {
            let qp = format!("{p}.queryParams.{name}");
            if name.is_empty() {
                self.err(qp.clone(), "parameter name must not be empty");
            }
            self.string_match(sm, &qp, true);
        }
    }

    fn header_name(&mut self, name: &str, p: &str) {
        if name.is_empty() {
            self.err(p.to_string(), "header name must not be empty");
        } else if name.bytes().any(|b| b.is_ascii_uppercase()) {
            self.err(
                p.to_string(),
                format!(
                    "header names must be lower case (write {:?})",
                    name.to_ascii_lowercase()
                ),
            );
        } else if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:!#$%&'*+^`|~".contains(&b))
        {
            self.err(
                p.to_string(),
                format!("{name:?} is not a valid header name"),
            );
        }
    }

    fn string_match(&mut self, m: &StringMatch, p: &str, presence_ok: bool) {
        let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if set > 1 || (set == 0 && !presence_ok) {
            self.err(p.to_string(), "set exactly one of exact, prefix, regex");
        }
        if let Some(r) = &m.regex {
            if let Err(e) = regex_lite::Regex::new(r) {
                self.err(
                    format!("{p}.regex"),
                    format!("invalid regex {r:?}: {}", first_line(&e.to_string())),
                );
            }
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err("must be 1 to 63 characters".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(format!(
            "{name:?} may contain only letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

fn check_host(h: &str) -> Result<(), String> {
    if h == "*" {
        return Ok(());
    }
    let name = h.strip_prefix("*.").unwrap_or(h);
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.contains('*') {
        return Err(format!(
            "{h:?}: a wildcard is allowed only as the whole first label (\"*.example.com\")"
        ));
    }
    if name.contains(':') && !name.starts_with('[') {
        return Err(format!(
            "{h:?}: hosts carry no port (the request's port is ignored when matching)"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b))
    {
        return Err(format!("{h:?} is not a valid host name"));
    }
    Ok(())
}

/// gRPC status code for a name (`UNAVAILABLE`) or number (`14`).
pub fn grpc_code(s: &str) -> Option<u32> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    if let Ok(n) = s.parse::<u32>() {
        return (n <= 16).then_some(n);
    }
    NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(s))
        .map(|i| i as u32)
}
