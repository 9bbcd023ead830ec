//! The TrafficPolicy schema: what users write in `spec` and what the filter receives as pluginConfig.
//!
//! Field names follow Istio's VirtualService `HTTPRoute` so routes can be pasted from one. Everything marked
//! "ksit extension" is ours. Unknown fields are rejected, so a typo names itself instead of being ignored.

use crate::field_map::FieldMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `spec` of a `ksit.io/v1alpha1` TrafficPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicySpec {
    /// Workloads whose proxies enforce this policy (becomes the WasmPlugin's `selector`).
    /// Mutually exclusive with `targetRefs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// Gateway API style targets (becomes the WasmPlugin's `targetRefs`). Mutually exclusive with `selector`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Hosts this policy applies to, with Istio semantics: `name.example.com`, `*.example.com` or `*`.
    /// The request's port is ignored when matching.
    pub hosts: Vec<String>,
    /// Gateways the rendered VirtualService binds to (`namespace/name`, or `mesh`). Not used by the filter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// What Envoy does when the filter cannot run. Default `FAIL_CLOSE`, as for any Istio WasmPlugin.
    #[serde(default, skip_serializing_if = "FailStrategy::is_default")]
    pub fail_strategy: FailStrategy,
    /// Ordered routing rules; the first rule that matches a request decides it.
    #[serde(default)]
    pub http: Vec<HttpRule>,
    /// ksit extension: most requests one Envoy worker holds paused for delay faults at once (default 1000).
    /// Beyond it a delay is skipped (and counted), never queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_active_faults: Option<u32>,
    /// ksit extension: per-cluster changes to rules, applied in order for the cluster the filter runs in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<ClusterOverride>,
}

/// Istio's failure policy for a Wasm plugin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub enum FailStrategy {
    /// The request fails (503) when the filter cannot run: no client can pick its own destination.
    #[default]
    #[serde(rename = "FAIL_CLOSE")]
    FailClose,
    /// The filter is skipped when it cannot run; the VirtualService's default route takes the request.
    #[serde(rename = "FAIL_OPEN")]
    FailOpen,
    /// Envoy replaces a failed VM with a fresh one, which reads the same pluginConfig (requests fail while
    /// it does, as with `FAIL_CLOSE`). Needs an Envoy that knows it (1.36 or later).
    #[serde(rename = "FAIL_RELOAD")]
    FailReload,
}

impl FailStrategy {
    /// The names, as Istio's WasmPlugin spells them.
    pub const NAMES: [&'static str; 3] = ["FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD"];

    pub fn name(self) -> &'static str {
        match self {
            FailStrategy::FailClose => "FAIL_CLOSE",
            FailStrategy::FailOpen => "FAIL_OPEN",
            FailStrategy::FailReload => "FAIL_RELOAD",
        }
    }

    pub fn from_name(name: &str) -> Option<FailStrategy> {
        match name {
            "FAIL_CLOSE" => Some(FailStrategy::FailClose),
            "FAIL_OPEN" => Some(FailStrategy::FailOpen),
            "FAIL_RELOAD" => Some(FailStrategy::FailReload),
            _ => None,
        }
    }
}

// By hand, as a plain string: the derived enum reader answers a non-string with a bare "expected value" when
// reading JSON text.
impl<'de> Deserialize<'de> for FailStrategy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Names;
        impl serde::de::Visitor<'_> for Names {
            type Value = FailStrategy;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("FAIL_CLOSE, FAIL_OPEN or FAIL_RELOAD")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<FailStrategy, E> {
                FailStrategy::from_name(v)
                    .ok_or_else(|| E::unknown_variant(v, &FailStrategy::NAMES))
            }
        }
        d.deserialize_str(Names)
    }
}

impl FailStrategy {
    fn is_default(&self) -> bool {
        *self == FailStrategy::FailClose
    }
}

/// Label selector for the workloads that load the filter.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: FieldMap<String>,
}

/// A Gateway API style policy target (`kind: Gateway`, `kind: Service`, ...).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// One routing rule (Istio `HTTPRoute` plus the ksit `canary` extension).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRule {
    /// Rule name: names it in metrics, `ksit explain`, overrides and the rendered VirtualService's routes, and
    /// keys its canary buckets and fault rolls. Unnamed rules are shown as `http[INDEX]`, and keyed by a hash
    /// of their matches and destinations (see [`crate::engine::rule_identity`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Conditions, ORed; the fields inside one condition are ANDed. Empty: the rule matches every request.
    #[serde(rename = "match", default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatchRequest>,
    /// Destinations with relative weights (none when the rule has a `redirect` or `directResponse`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<HttpRouteDestination>,
    /// ksit extension: sticky canary assignment and a forcing header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    /// Istio `HTTPFaultInjection`, with ksit's scoping extensions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// Passed to the rendered VirtualService's route unchanged (Envoy enforces it, not the filter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Passed to the rendered VirtualService's route unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<HttpRetry>,
    /// Passed to the rendered VirtualService's route unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<HttpRewrite>,
    /// Istio `HTTPRedirect`: answer with a redirect instead of routing (no `route`). Carried to the
    /// VirtualService; the filter only decides that this rule matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<HttpRedirect>,
    /// Istio `HTTPDirectResponse`: answer with this status and body instead of routing (no `route`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<HttpDirectResponse>,
    /// Istio `Delegate`: refused (the filter must see every rule a request can match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegate: Option<Delegate>,
    /// Istio: mirror requests to this destination too (see `mirrorPercentage`). Carried to the
    /// VirtualService; with `canary.stickyBy` the filter decides which users are mirrored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Destination>,
    /// Istio: several mirror destinations, each with its own percentage. Not with `mirror`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<HttpMirrorPolicy>,
    /// Istio: share of requests sent to `mirror` (default 100; 0 mirrors nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percentage: Option<Percent>,
    /// Istio's deprecated integer `mirrorPercent`: refused (use `mirrorPercentage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percent: Option<u32>,
    /// Istio's deprecated `mirror_percent` spelling: refused (use `mirrorPercentage`).
    #[serde(
        rename = "mirror_percent",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub mirror_percent_snake: Option<u32>,
    /// Istio `CorsPolicy`, carried to the VirtualService.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors_policy: Option<CorsPolicy>,
    /// Istio `Headers`: request and response header changes, carried to the VirtualService (applied by
    /// Envoy after the route is chosen, so they never change the filter's decision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

impl HttpRule {
    /// What the rule does with the requests it matches, besides routing them: a redirect or a direct
    /// response (Istio allows at most one, and then no `route`).
    pub fn answers(&self) -> Option<&'static str> {
        if self.redirect.is_some() {
            Some("redirect")
        } else if self.direct_response.is_some() {
            Some("directResponse")
        } else {
            None
        }
    }

    /// The rule's mirror policies as Istio applies them: each destination with its share in parts per
    /// million (`mirror` with `mirrorPercentage`, or `mirrors`; no percentage is 100%, and a share of 0
    /// mirrors nothing, so it is left out).
    pub fn mirror_policies(&self) -> Vec<(&Destination, u32)> {
        let mut out = Vec::new();
        if let Some(m) = &self.mirror {
            out.push((m, percent_ppm(self.mirror_percentage, 100)));
        }
        for m in &self.mirrors {
            out.push((&m.destination, percent_ppm(m.percentage, 100)));
        }
        out.retain(|(_, ppm)| *ppm > 0);
        out
    }

    /// Whether the filter decides this rule's mirroring (sticky mirroring): it has a sticky key
    /// (`canary.stickyBy`) and a mirror that takes only part of the traffic.
    pub fn sticky_mirror(&self) -> bool {
        self.canary.as_ref().is_some_and(|c| c.sticky_by.is_some())
            && self
                .mirror_policies()
                .iter()
                .any(|(_, ppm)| *ppm < crate::hash::ROLL_SPACE)
    }

    /// The rule's stable destination: where its traffic goes when nothing steers it elsewhere. The one with
    /// the largest weight (the first of equals), or a rule's only destination. The rendered
    /// VirtualService's default route for the rule leads there.
    pub fn stable_index(&self) -> Option<usize> {
        if self.route.len() == 1 {
            return Some(0);
        }
        self.route
            .iter()
            .enumerate()
            .max_by_key(|(i, d)| (d.weight.unwrap_or(0), std::cmp::Reverse(*i)))
            .map(|(i, _)| i)
    }
}

/// Share in parts per million, as Istio hands a `Percent` to Envoy (the value times 10,000, truncated);
/// `default` percent when unset.
pub fn percent_ppm(p: Option<Percent>, default: u32) -> u32 {
    match p {
        Some(p) => (p.value.clamp(0.0, 100.0) * 10_000.0) as u32,
        None => default.min(100) * 10_000,
    }
}

/// Istio `HTTPRetry` (carried to the VirtualService).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,
    /// At least 1ms, in whole milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<String>,
    /// Envoy retry conditions, comma-separated (`5xx`, `gateway-error`, `connect-failure`, ... or a status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_remote_localities: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_ignore_previous_hosts: Option<bool>,
    /// Base interval between retries (at least 1ms, in whole milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
}

/// Istio `HTTPRewrite` (carried to the VirtualService).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Rewrite the path with a regex (RE2) and a substitution. Not with `uri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// Istio `RegexRewrite`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegexRewrite {
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub match_: Option<String>,
    /// The substitution; `\1` and so on refer to the regex's groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<String>,
}

/// Istio `HTTPRedirect` (carried to the VirtualService).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRedirect {
    /// Replaces the path. Not with `prefixRewrite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Not with `derivePort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// `FROM_PROTOCOL_DEFAULT` or `FROM_REQUEST_PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derive_port: Option<String>,
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// 301 (default), 302, 303, 307 or 308.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_code: Option<u32>,
    /// Replaces the matched `uri.prefix` (every match of the rule must use a prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
}

/// Istio `HTTPDirectResponse` (carried to the VirtualService).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpDirectResponse {
    pub status: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<HttpBody>,
}

/// Istio `HTTPBody`: set one of `string` or `bytes` (base64).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<String>,
}

/// Istio `Delegate` (refused).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delegate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Istio `HTTPMirrorPolicy`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMirrorPolicy {
    pub destination: Destination,
    /// Share of requests mirrored there (default 100; 0 mirrors nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}

/// Istio `CorsPolicy` (carried to the VirtualService).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origins: Vec<StringMatch>,
    /// Istio's deprecated exact-origin list; `allowOrigins` wins when both are set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origin: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// How long a preflight may be cached: whole seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    /// `UNSPECIFIED`, `FORWARD` or `IGNORE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmatched_preflights: Option<String>,
}

/// Istio `Headers` (carried to the VirtualService).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderOperations>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderOperations>,
}

/// Istio `Headers.HeaderOperations`: `set` overwrites, `add` appends, `remove` deletes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperations {
    #[serde(default, skip_serializing_if = "FieldMap::is_empty")]
    pub set: FieldMap<String>,
    #[serde(default, skip_serializing_if = "FieldMap::is_empty")]
    pub add: FieldMap<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// Istio `HTTPMatchRequest`: every field that is set must match.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatchRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The path, without query string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    /// The `:authority` (Host) header, port included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<StringMatch>,
    /// Lower-case header names; an empty match (`{}`) only asks that the header be present.
    #[serde(default, skip_serializing_if = "FieldMap::is_empty")]
    pub headers: FieldMap<StringMatch>,
    /// The opposite of `headers`: matches when the header is absent or does not match.
    #[serde(default, skip_serializing_if = "FieldMap::is_empty")]
    pub without_headers: FieldMap<StringMatch>,
    /// Query parameters (raw, not percent-decoded); an empty match only asks that the parameter be present.
    #[serde(default, skip_serializing_if = "FieldMap::is_empty")]
    pub query_params: FieldMap<StringMatch>,
    /// Compare `uri` case-insensitively: an `exact` or `prefix` uri only, as in Istio (a `regex` stays
    /// case-sensitive; write `(?i)` in it instead).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_uri_case: bool,
    /// Istio: the listener port the rule applies to. Refused: it depends on the proxy, not the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Istio: client workload labels. Refused: it selects proxies (use `selector`/`targetRefs`).
    #[serde(default, skip_serializing_if = "FieldMap::is_empty")]
    pub source_labels: FieldMap<String>,
    /// Istio: the gateways this match applies to. Refused (use `spec.gateways`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Istio: the client workloads' namespace. Refused: it selects proxies, not requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
    /// Istio: Envoy's per-route statistics prefix. Carried to the VirtualService.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stat_prefix: Option<String>,
}

/// Istio `StringMatch`: set exactly one of `exact`, `prefix`, `regex` (RE2 syntax, whole-value match).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

impl StringMatch {
    pub fn exact(v: &str) -> Self {
        StringMatch {
            exact: Some(v.to_string()),
            ..Default::default()
        }
    }
    pub fn prefix(v: &str) -> Self {
        StringMatch {
            prefix: Some(v.to_string()),
            ..Default::default()
        }
    }
    pub fn regex(v: &str) -> Self {
        StringMatch {
            regex: Some(v.to_string()),
            ..Default::default()
        }
    }
}

/// Istio `HTTPRouteDestination`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteDestination {
    pub destination: Destination,
    /// Relative weight (>= 0). A rule's only destination always gets all traffic; with several, a missing
    /// weight counts as 0 and the weights must not all be 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
    /// Istio: header changes for requests sent to this destination, carried to the VirtualService.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

/// Istio `Destination`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
}

impl Destination {
    /// The value the filter writes into `x-ksit-destination`: `HOST` or `HOST|SUBSET`.
    pub fn key(&self) -> String {
        match &self.subset {
            Some(s) => format!("{}|{}", self.host, s),
            None => self.host.clone(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    pub number: u32,
}

/// ksit extension: how a weighted rule assigns requests to destinations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Canary {
    /// Where the per-user key comes from. Without it (or when the request lacks it) `x-request-id` is the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_by: Option<StickyBy>,
    /// A request header whose value (`HOST` or `HOST|SUBSET` of one of this rule's destinations) forces that
    /// destination. Unset: nothing can force a destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_header: Option<String>,
    /// When not empty, only these values of `overrideHeader` are honoured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_overrides: Vec<String>,
}

/// Where a sticky key is read from: set exactly one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StickyBy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_param: Option<String>,
}

/// Istio `HTTPFaultInjection` plus ksit scoping. The delay (if rolled) comes first, then the abort.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Abort>,
    /// ksit extension: inject only when all of these hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<FaultScope>,
    /// ksit extension: roll once per user instead of once per request (the same user always gets the same
    /// outcome). Falls back to `x-request-id` when the request lacks the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_by: Option<StickyBy>,
}

/// ksit extension: conditions that restrict where a fault is injected.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultScope {
    /// Request headers that must all match.
    #[serde(default, skip_serializing_if = "FieldMap::is_empty")]
    pub headers: FieldMap<StringMatch>,
    /// Only when the chosen destination is one of these (`HOST` or `HOST|SUBSET`; `HOST` covers its subsets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<String>,
    /// Only in these clusters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<String>,
}

/// Istio `HTTPFaultInjection.Delay`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delay {
    /// A duration such as `5s`, `250ms`, `1m30s` (at least 1ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_delay: Option<String>,
    /// Declared by Istio but not implemented by Istio or ksit: rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exponential_delay: Option<String>,
    /// Share of requests delayed, 0 to 100. When neither this nor `percent` is set, none is (0%, as in
    /// Istio).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
    /// Deprecated Istio integer form of `percentage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i32>,
}

/// Istio `HTTPFaultInjection.Abort`: set one of `httpStatus` or `grpcStatus`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Abort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i32>,
    /// A gRPC status name (`UNAVAILABLE`) or number (`14`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<String>,
    /// Declared by Istio but not implemented: rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_error: Option<String>,
    /// Share of requests aborted, 0 to 100. When neither this nor `percent` is set, none is (0%, as in
    /// Istio).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
    /// ksit extension (Istio's abort has no `percent`): integer form of `percentage`, for symmetry with
    /// Istio's deprecated `delay.percent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i32>,
}

/// Istio `Percent`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percent {
    pub value: f64,
}

/// ksit extension: rule changes for some clusters (e.g. the canary in one cluster first).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterOverride {
    /// Cluster names (as the controller names them: the IntegrationTarget's cluster name).
    pub clusters: Vec<String>,
    /// Patches to named rules of `spec.http`; each field that is set replaces the rule's field.
    #[serde(default)]
    pub http: Vec<HttpRulePatch>,
    /// Replaces `spec.maxActiveFaults` in these clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_active_faults: Option<u32>,
}

/// Replacement fields for the rule called `name`. `fault: {}` removes the rule's fault in these clusters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRulePatch {
    pub name: String,
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<Vec<HttpMatchRequest>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Vec<HttpRouteDestination>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
}

impl TrafficPolicySpec {
    /// The spec as it applies in `cluster`: overrides resolved and removed.
    pub fn resolve(&self, cluster: Option<&str>) -> TrafficPolicySpec {
        let mut out = self.clone();
        out.overrides.clear();
        let Some(cluster) = cluster else { return out };
        for ov in self
            .overrides
            .iter()
            .filter(|o| o.clusters.iter().any(|c| c == cluster))
        {
            if ov.max_active_faults.is_some() {
                out.max_active_faults = ov.max_active_faults;
            }
            for patch in &ov.http {
                if let Some(rule) = out
                    .http
                    .iter_mut()
                    .find(|r| r.name.as_deref() == Some(patch.name.as_str()))
                {
                    patch.apply_to(rule);
                }
            }
        }
        out
    }
}

impl HttpRulePatch {
    pub fn apply_to(&self, rule: &mut HttpRule) {
        if let Some(m) = &self.matches {
            rule.matches = m.clone();
        }
        if let Some(r) = &self.route {
            rule.route = r.clone();
        }
        if let Some(c) = &self.canary {
            rule.canary = Some(c.clone());
        }
        if let Some(f) = &self.fault {
            rule.fault = if f.delay.is_none() && f.abort.is_none() {
                None
            } else {
                Some(f.clone())
            };
        }
    }
}
