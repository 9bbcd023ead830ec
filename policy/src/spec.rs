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
}

// By hand, as a plain string: the derived enum reader answers a non-string with a bare "expected value" when
// reading JSON text.
impl<'de> Deserialize<'de> for FailStrategy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Names;
        impl serde::de::Visitor<'_> for Names {
            type Value = FailStrategy;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("FAIL_CLOSE or FAIL_OPEN")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<FailStrategy, E> {
                match v {
                    "FAIL_CLOSE" => Ok(FailStrategy::FailClose),
                    "FAIL_OPEN" => Ok(FailStrategy::FailOpen),
                    other => Err(E::unknown_variant(other, &["FAIL_CLOSE", "FAIL_OPEN"])),
                }
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
    /// Rule name: names it in metrics, `ksit explain` and overrides. Unnamed rules are called `http[INDEX]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Conditions, ORed; the fields inside one condition are ANDed. Empty: the rule matches every request.
    #[serde(rename = "match", default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatchRequest>,
    /// Destinations with relative weights.
    #[serde(default)]
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
}

impl HttpRule {
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

/// Istio `HTTPRetry` (carried to the VirtualService).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<String>,
}

/// Istio `HTTPRewrite` (carried to the VirtualService).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
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
    /// Compare `uri` case-insensitively.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_uri_case: bool,
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
    /// Share of requests delayed, 0 to 100. When neither this nor `percent` is set, every request is delayed.
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
    /// Share of requests aborted, 0 to 100. When neither this nor `percent` is set, every request is aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
    /// Deprecated integer form of `percentage`, accepted for symmetry with `delay.percent`.
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
