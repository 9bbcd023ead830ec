//! Validation of a TrafficPolicy spec: every problem, each with its field path.

use crate::duration::parse_istio_duration;
use crate::error::FieldError;
use crate::spec::*;
use std::collections::{BTreeMap, BTreeSet};

/// The header the filter writes; users may not configure it as an input.
pub const DESTINATION_HEADER: &str = "x-ksit-destination";

/// The header the filter writes for a rule whose mirroring follows its sticky key: the mirror level, which
/// the rendered VirtualService's routes match (see `docs/trafficpolicy.md`).
pub const MIRROR_HEADER: &str = "x-ksit-mirror";

/// The longest regex Istio accepts (it stands in for Envoy's RE2 program size limit).
const MAX_REGEX_LEN: usize = 1024;

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
    /// The base rule's `redirect` or `directResponse`, if it answers requests itself (then it routes none).
    answers: Option<&'static str>,
    /// The base rule delegates (refused, reported once for the base rule).
    delegates: bool,
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
            #[cfg(not(target_arch = "wasm32"))]
            self.carried(rule, &rp);
            self.rule(&RuleParts {
                matches: (&rule.matches, format!("{rp}.match")),
                route: (&rule.route, format!("{rp}.route")),
                canary: (rule.canary.as_ref(), format!("{rp}.canary")),
                fault: (rule.fault.as_ref(), format!("{rp}.fault")),
                answers: rule.answers(),
                delegates: rule.delegate.is_some(),
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
                    answers: base.answers(),
                    delegates: base.delegate.is_some(),
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
        match r.answers {
            Some(a) if !route.is_empty() => self.err(
                rp.clone(),
                format!("a rule with a {a} routes nowhere: remove route (Istio: a route cannot contain both route and {a})"),
            ),
            Some(_) => {}
            None if route.is_empty() && !r.delegates => self.err(
                rp.clone(),
                "must have at least one destination (or the rule needs a redirect or directResponse)",
            ),
            None => {}
        }
        if let Some(a) = r.answers {
            if let (Some(_), cp) = (r.canary.0, &r.canary.1) {
                self.err(
                    cp.clone(),
                    format!("a rule with a {a} has no destinations to choose between"),
                );
            }
            if let (Some(_), fp) = (r.fault.0, &r.fault.1) {
                self.err(
                    fp.clone(),
                    format!("Istio injects no fault on a rule with a {a}: remove fault"),
                );
            }
        }
        let mut keys = BTreeSet::new();
        let mut total: i64 = 0;
        for (i, d) in route.iter().enumerate() {
            let dp = format!("{rp}[{i}]");
            self.destination(&d.destination, &format!("{dp}.destination"));
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
                Some(t) => self.duration(t, &format!("{dp}.fixedDelay")),
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
            } else if v.value > 0.0 && v.value < 0.0001 {
                self.err(
                    format!("{p}.percentage.value"),
                    "must be 0 or at least 0.0001 (Envoy counts in millionths)",
                );
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
        let proxy_only =
            "it chooses which proxies apply the rule, not which requests match it, and the \
             filter only sees requests; select the workloads with selector or targetRefs";
        if m.port.is_some() {
            self.err(
                format!("{p}.port"),
                "not supported: it chooses the listener the rule applies to, which the filter cannot see; \
                 select the workloads with selector or targetRefs",
            );
        }
        if !m.source_labels.is_empty() {
            self.err(
                format!("{p}.sourceLabels"),
                format!("not supported: {proxy_only}"),
            );
        }
        if m.source_namespace.is_some() {
            self.err(
                format!("{p}.sourceNamespace"),
                format!("not supported: {proxy_only}"),
            );
        }
        if !m.gateways.is_empty() {
            self.err(
                format!("{p}.gateways"),
                "not supported: it chooses the gateways the rule applies to; use spec.gateways and \
                 select the gateway workloads with selector or targetRefs",
            );
        }
        for (field, sm) in [
            ("uri", &m.uri),
            ("scheme", &m.scheme),
            ("method", &m.method),
            ("authority", &m.authority),
        ] {
            if let Some(sm) = sm {
                self.string_match(sm, &format!("{p}.{field}"), false);
                if field != "uri" && sm.prefix.as_deref() == Some("") {
                    // Istio: an empty prefix is allowed for uri only.
                    self.err(format!("{p}.{field}.prefix"), "must not be empty");
                }
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
        if m.prefix.as_deref() == Some("") && presence_ok {
            // Istio: an empty prefix is allowed for uri only (headers, query parameters: use `{}`).
            self.err(
                format!("{p}.prefix"),
                "must not be empty (an empty match `{}` asks for presence)",
            );
        }
        if let Some(r) = &m.regex {
            self.regex(r, &format!("{p}.regex"));
        }
    }

    fn regex(&mut self, r: &str, p: &str) {
        if r.is_empty() {
            self.err(p.to_string(), "must not be empty");
        } else if r.len() > MAX_REGEX_LEN {
            self.err(
                p.to_string(),
                format!(
                    "regex is {} characters long; Istio accepts at most {MAX_REGEX_LEN}",
                    r.len()
                ),
            );
        } else if let Err(e) = regex_lite::Regex::new(r) {
            self.err(
                p.to_string(),
                format!("invalid regex {r:?}: {}", first_line(&e.to_string())),
            );
        }
    }

    fn duration(&mut self, d: &str, p: &str) {
        if let Err(m) = parse_istio_duration(d) {
            self.err(p.to_string(), m);
        }
    }

    /// A destination as Istio checks it (route, mirror): a host, a DNS-label subset, a port.
    fn destination(&mut self, d: &Destination, p: &str) {
        let host = &d.host;
        if host.is_empty() {
            self.err(format!("{p}.host"), "must not be empty");
        } else if host == "*" {
            self.err(format!("{p}.host"), "\"*\" is not a destination host");
        } else if host.contains('|') || host.contains(char::is_whitespace) {
            self.err(format!("{p}.host"), "must not contain '|' or spaces");
        }
        if let Some(s) = &d.subset {
            if !is_dns_label(s) {
                self.err(
                    format!("{p}.subset"),
                    format!("{s:?} is not a valid subset name (a DNS label: lower-case letters, digits and '-', at most 63)"),
                );
            }
        }
        if let Some(port) = &d.port {
            if port.number == 0 || port.number > 65535 {
                self.err(format!("{p}.port.number"), "must be between 1 and 65535");
            }
        }
    }
}

/// Checks of what only the VirtualService uses (the filter skips those fields, so its Wasm build leaves the
/// checks out; the controller, `ksit analyze` and the native engine run them).
#[cfg(not(target_arch = "wasm32"))]
impl Validator {
    /// The fields ksit carries to the VirtualService, with Istio's checks.
    fn carried(&mut self, r: &HttpRule, rp: &str) {
        if let Some(t) = &r.timeout {
            self.duration(t, &format!("{rp}.timeout"));
        }
        if let Some(x) = &r.retries {
            self.retries(x, &format!("{rp}.retries"));
        }
        if let Some(x) = &r.rewrite {
            let p = format!("{rp}.rewrite");
            if r.redirect.is_some() {
                self.err(
                    p.clone(),
                    "a rule with a redirect cannot also rewrite (Istio)",
                );
            } else if r.direct_response.is_some() {
                self.err(
                    p.clone(),
                    "a rule with a directResponse cannot also rewrite (Istio)",
                );
            }
            self.rewrite(x, &p);
        }
        if r.delegate.is_some() {
            self.err(
                format!("{rp}.delegate"),
                "not supported: the filter decides every request on the rules of this policy, so the rules \
                 of a delegate VirtualService would never be decided; copy them into this policy's http list",
            );
        }
        if let Some(x) = &r.redirect {
            let p = format!("{rp}.redirect");
            if r.direct_response.is_some() {
                self.err(
                    p.clone(),
                    "set redirect or directResponse, not both (Istio)",
                );
            }
            self.redirect(x, &r.matches, &p);
        }
        if let Some(x) = &r.direct_response {
            self.direct_response(x, &format!("{rp}.directResponse"));
        }
        for (field, v) in [
            ("mirrorPercent", r.mirror_percent),
            ("mirror_percent", r.mirror_percent_snake),
        ] {
            if v.is_some() {
                self.err(
                    format!("{rp}.{field}"),
                    "deprecated by Istio and not accepted: use mirrorPercentage: {value: N}",
                );
            }
        }
        if let Some(m) = &r.mirror {
            self.destination(m, &format!("{rp}.mirror"));
            if !r.mirrors.is_empty() {
                self.err(
                    format!("{rp}.mirrors"),
                    "set mirror or mirrors, not both (Istio)",
                );
            }
        }
        if r.mirror_percentage.is_some() && r.mirror.is_none() {
            self.err(
                format!("{rp}.mirrorPercentage"),
                "has no effect without mirror (each of mirrors has its own percentage)",
            );
        }
        self.mirror_percentage(r.mirror_percentage, &format!("{rp}.mirrorPercentage"));
        for (i, m) in r.mirrors.iter().enumerate() {
            let p = format!("{rp}.mirrors[{i}]");
            self.destination(&m.destination, &format!("{p}.destination"));
            self.mirror_percentage(m.percentage, &format!("{p}.percentage"));
        }
        if let Some(c) = &r.cors_policy {
            self.cors(c, &format!("{rp}.corsPolicy"));
        }
        if let Some(h) = &r.headers {
            self.headers(h, &format!("{rp}.headers"));
        }
        for (i, d) in r.route.iter().enumerate() {
            if let Some(h) = &d.headers {
                self.headers(h, &format!("{rp}.route[{i}].headers"));
            }
        }
        // Istio: the authority is rewritten in one place only.
        let authority_sets = r
            .headers
            .iter()
            .filter_map(|h| h.request.as_ref())
            .flat_map(|o| o.set.iter().chain(o.add.iter()))
            .filter(|(k, _)| is_authority(k))
            .count()
            + usize::from(r.rewrite.as_ref().is_some_and(|w| w.authority.is_some()));
        if authority_sets > 1 {
            self.err(
                format!("{rp}.headers.request"),
                "the authority is set more than once (rewrite.authority and headers :authority/host): keep one",
            );
        }
    }

    fn mirror_percentage(&mut self, p: Option<Percent>, at: &str) {
        if let Some(v) = p {
            if !(0.0..=100.0).contains(&v.value) || v.value.is_nan() {
                self.err(format!("{at}.value"), "must be between 0 and 100");
            }
        }
    }

    fn retries(&mut self, x: &HttpRetry, p: &str) {
        let attempts = x.attempts.unwrap_or(0);
        if attempts < 0 {
            self.err(format!("{p}.attempts"), "must be >= 0");
        }
        if attempts == 0
            && (x.per_try_timeout.is_some()
                || x.retry_on.is_some()
                || x.retry_remote_localities.is_some())
        {
            self.err(
                format!("{p}.attempts"),
                "is 0 (retries disabled) while perTryTimeout, retryOn or retryRemoteLocalities is set: set attempts (Istio)",
            );
        }
        if let Some(t) = &x.per_try_timeout {
            self.duration(t, &format!("{p}.perTryTimeout"));
        }
        if let Some(t) = &x.backoff {
            self.duration(t, &format!("{p}.backoff"));
        }
        if let Some(on) = &x.retry_on {
            for policy in on.split(',') {
                let status = policy
                    .parse::<i64>()
                    .ok()
                    .is_some_and(|n| u16::try_from(n).is_ok_and(known_http_status));
                if !status && !RETRY_ON.contains(&policy) {
                    self.err(
                        format!("{p}.retryOn"),
                        format!(
                            "{policy:?} is not a retry condition Envoy knows (one of {}, or an HTTP status)",
                            RETRY_ON.join(", ")
                        ),
                    );
                }
            }
        }
    }

    fn rewrite(&mut self, x: &HttpRewrite, p: &str) {
        if x.uri.is_some() && x.uri_regex_rewrite.is_some() {
            self.err(
                p.to_string(),
                "set uri or uriRegexRewrite, not both (Istio)",
            );
        }
        if x.uri.as_deref().unwrap_or("").is_empty()
            && x.uri_regex_rewrite.is_none()
            && x.authority.as_deref().unwrap_or("").is_empty()
        {
            self.err(
                p.to_string(),
                "set at least one of uri, uriRegexRewrite or authority",
            );
        }
        if let Some(r) = &x.uri_regex_rewrite {
            let rp = format!("{p}.uriRegexRewrite");
            match (&r.match_, &r.rewrite) {
                (Some(m), Some(w)) if !m.is_empty() && !w.is_empty() => {
                    self.regex(m, &format!("{rp}.match"))
                }
                _ => self.err(rp, "set both match and rewrite (Istio)"),
            }
        }
    }

    fn redirect(&mut self, x: &HttpRedirect, matches: &[HttpMatchRequest], p: &str) {
        if x.uri.is_some() && x.prefix_rewrite.is_some() {
            self.err(p.to_string(), "set uri or prefixRewrite, not both (Istio)");
        }
        if x.prefix_rewrite.is_some()
            && matches
                .iter()
                .any(|m| m.uri.as_ref().is_some_and(|u| u.prefix.is_none()))
        {
            self.err(
                format!("{p}.prefixRewrite"),
                "needs every uri match of the rule to be a prefix match (Istio)",
            );
        }
        let empty = |v: &Option<String>| v.as_deref().unwrap_or("").is_empty();
        if empty(&x.uri)
            && empty(&x.prefix_rewrite)
            && empty(&x.authority)
            && empty(&x.scheme)
            && x.port.is_none()
            && x.derive_port.is_none()
        {
            self.err(
                p.to_string(),
                "set at least one of uri, prefixRewrite, authority, scheme, port or derivePort",
            );
        }
        if let Some(c) = x.redirect_code {
            if ![301, 302, 303, 307, 308].contains(&c) {
                self.err(
                    format!("{p}.redirectCode"),
                    "must be 301, 302, 303, 307 or 308 (the codes Istio can give Envoy)",
                );
            }
        }
        if let Some(s) = &x.scheme {
            if s != "http" && s != "https" {
                self.err(format!("{p}.scheme"), "must be http or https");
            }
        }
        if let Some(port) = x.port {
            if port == 0 || port > 65535 {
                self.err(format!("{p}.port"), "must be between 1 and 65535");
            }
            if x.derive_port.is_some() {
                self.err(p.to_string(), "set port or derivePort, not both (Istio)");
            }
        }
        if let Some(d) = &x.derive_port {
            if d != "FROM_PROTOCOL_DEFAULT" && d != "FROM_REQUEST_PORT" {
                self.err(
                    format!("{p}.derivePort"),
                    "must be FROM_PROTOCOL_DEFAULT or FROM_REQUEST_PORT",
                );
            }
        }
    }

    fn direct_response(&mut self, x: &HttpDirectResponse, p: &str) {
        if !(200..=599).contains(&x.status) {
            self.err(
                format!("{p}.status"),
                "must be an HTTP status between 200 and 599",
            );
        }
        let Some(b) = &x.body else { return };
        let bp = format!("{p}.body");
        let size = match (&b.string, &b.bytes) {
            (Some(_), Some(_)) => {
                self.err(bp.clone(), "set string or bytes, not both");
                0
            }
            (Some(s), None) => s.len(),
            (None, Some(s)) => match base64_len(s) {
                Some(n) => n,
                None => {
                    self.err(format!("{bp}.bytes"), "must be base64");
                    0
                }
            },
            (None, None) => 0,
        };
        if size > 1024 * 1024 {
            self.err(bp, "must be at most 1MB (Istio)");
        }
    }

    fn cors(&mut self, c: &CorsPolicy, p: &str) {
        for (i, o) in c.allow_origins.iter().enumerate() {
            let op = format!("{p}.allowOrigins[{i}]");
            let set = [&o.exact, &o.prefix, &o.regex]
                .iter()
                .filter(|v| v.as_deref().is_some_and(|s| !s.is_empty()))
                .count();
            if set != 1
                || [&o.exact, &o.prefix, &o.regex]
                    .iter()
                    .filter(|v| v.is_some())
                    .count()
                    != 1
            {
                self.err(
                    op.clone(),
                    "set exactly one of exact, prefix, regex, not empty",
                );
            }
            if let Some(r) = &o.regex {
                self.regex(r, &format!("{op}.regex"));
            }
        }
        for (i, m) in c.allow_methods.iter().enumerate() {
            if !CORS_METHODS.contains(&m.as_str()) {
                self.err(
                    format!("{p}.allowMethods[{i}]"),
                    format!(
                        "{m:?} is not an HTTP method Istio accepts here ({})",
                        CORS_METHODS.join(", ")
                    ),
                );
            }
        }
        for (field, list) in [
            ("allowHeaders", &c.allow_headers),
            ("exposeHeaders", &c.expose_headers),
        ] {
            for (i, h) in list.iter().enumerate() {
                if h != "*" && (h.is_empty() || !h.bytes().all(is_tchar)) {
                    self.err(
                        format!("{p}.{field}[{i}]"),
                        format!("{h:?} is not a header name"),
                    );
                }
            }
        }
        if let Some(a) = &c.max_age {
            match parse_istio_duration(a) {
                Err(m) => self.err(format!("{p}.maxAge"), m),
                Ok(n) if n % 1_000_000_000 != 0 => self.err(
                    format!("{p}.maxAge"),
                    "whole seconds only (a preflight's max age is given to browsers in seconds)",
                ),
                Ok(_) => {}
            }
        }
        if let Some(u) = &c.unmatched_preflights {
            if !["UNSPECIFIED", "FORWARD", "IGNORE"].contains(&u.as_str()) {
                self.err(
                    format!("{p}.unmatchedPreflights"),
                    "must be UNSPECIFIED, FORWARD or IGNORE",
                );
            }
        }
    }

    /// Istio `Headers`: which names each operation may touch, and values Envoy can format.
    fn headers(&mut self, h: &Headers, p: &str) {
        for (side, ops) in [("request", &h.request), ("response", &h.response)] {
            let Some(ops) = ops else { continue };
            let sp = format!("{p}.{side}");
            for (op, map) in [("set", &ops.set), ("add", &ops.add)] {
                for (name, value) in map {
                    let np = format!("{sp}.{op}.{name}");
                    if name.is_empty() {
                        self.err(np.clone(), "header name must not be empty");
                    } else if side == "request" && is_authority(name) {
                        // Istio turns it into an authority rewrite.
                    } else if name.starts_with(':') {
                        self.err(np.clone(), "pseudo-headers (':') cannot be changed");
                    } else if name.eq_ignore_ascii_case("host") {
                        self.err(
                            np.clone(),
                            "the Host header cannot be changed in a response",
                        );
                    }
                    if let Err(m) = check_header_value(value) {
                        self.err(np, m);
                    }
                }
            }
            for (i, name) in ops.remove.iter().enumerate() {
                let np = format!("{sp}.remove[{i}]");
                if name.is_empty() {
                    self.err(np, "header name must not be empty");
                } else if name.starts_with(':') || name.eq_ignore_ascii_case("host") {
                    self.err(np, format!("{name:?} cannot be removed"));
                }
            }
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
/// Envoy's retry conditions (`x-envoy-retry-on` and `x-envoy-retry-grpc-on`), as Istio lists them.
const RETRY_ON: [&str; 16] = [
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

#[cfg(not(target_arch = "wasm32"))]
/// The methods Istio accepts in `corsPolicy.allowMethods`.
const CORS_METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*",
];

#[cfg(not(target_arch = "wasm32"))]
/// The HTTP statuses with a standard name (what Istio accepts as a `retryOn` status).
fn known_http_status(s: u16) -> bool {
    matches!(s, 100..=103 | 200..=208 | 226 | 300..=305 | 307 | 308 | 400..=418 | 421..=426 | 428 | 429 | 431 | 451 | 500..=508 | 510 | 511)
}

#[cfg(not(target_arch = "wasm32"))]
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(not(target_arch = "wasm32"))]
fn is_authority(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

/// A DNS-1123 label: what Istio takes as a subset name.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

#[cfg(not(target_arch = "wasm32"))]
/// The decoded length of base64 text (standard or URL-safe alphabet, padding optional), or `None`.
fn base64_len(s: &str) -> Option<usize> {
    let body = s.trim_end_matches('=');
    if s.len() - body.len() > 2
        || !body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/-_".contains(&b))
        || body.len() % 4 == 1
    {
        return None;
    }
    Some(body.len() * 3 / 4)
}

#[cfg(not(target_arch = "wasm32"))]
/// A header value as Envoy's header formatter takes it (Istio checks the same): no control characters but
/// tab, and every `%` either doubled (`%%`) or opening a `%VARIABLE%` / `%VARIABLE(args)%` that is closed.
pub fn check_header_value(v: &str) -> Result<(), String> {
    if v.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err("header values must not contain control characters".into());
    }
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            None => return Err(format!("{v:?}: a lone '%' (write %% for a percent sign)")),
            Some(b'%') => {
                i += 2;
                continue;
            }
            Some(_) => {}
        }
        // A variable: its name runs to the closing '%', or to '(' for arguments.
        let mut j = i + 1;
        while j < b.len() && b[j] != b'%' && b[j] != b'(' {
            j += 1;
        }
        if j < b.len() && b[j] == b'(' {
            // Arguments: a JSON-ish list of strings (quotes may hide ')'), then ')' and '%'.
            let mut in_string = false;
            j += 1;
            while j < b.len() {
                match (in_string, b[j]) {
                    (true, b'\\') => j += 1,
                    (true, b'"') => in_string = false,
                    (false, b'"') => in_string = true,
                    (false, b')') => break,
                    _ => {}
                }
                j += 1;
            }
            j += 1;
            while j < b.len() && b[j] == b' ' {
                j += 1;
            }
        }
        if j >= b.len() || b[j] != b'%' {
            return Err(format!("{v:?}: the variable opened by '%' at {i} is not closed with '%' (write %% for a percent sign)"));
        }
        i = j + 1;
    }
    Ok(())
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
