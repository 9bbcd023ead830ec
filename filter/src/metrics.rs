//! Metric names. Envoy shows Wasm metrics in /stats/prometheus without its `wasmcustom.` prefix; labels are
//! encoded in the name as `.label.value` pairs, which Envoy's `stats_tags` (see docs/metrics.md) turn into
//! Prometheus labels.

/// Which rule a per-rule metric counts: its policy's name when one filter carries several policies (the
/// controller merges the TrafficPolicies on the same workloads), so equal rule names do not share counters.
#[derive(Clone, Copy)]
pub struct RuleLabel<'a> {
    pub policy: Option<&'a str>,
    pub rule: &'a str,
}

impl std::fmt::Display for RuleLabel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(p) = self.policy {
            write!(f, ".ksit_policy.{}", label(p))?;
        }
        write!(f, ".ksit_rule.{}", label(self.rule))
    }
}

/// Requests a rule decided, by rule and destination.
pub fn requests(rule: RuleLabel<'_>, destination: &str) -> String {
    format!(
        "ksit_requests_total{rule}.ksit_destination.{}",
        label(destination)
    )
}

/// Requests for a policy's hosts that no rule matched (passed on unchanged).
pub const UNMATCHED: &str = "ksit_unmatched_total";
/// Requests that arrived with their own `x-ksit-destination`, which the filter removed or replaced.
pub const SPOOFED: &str = "ksit_spoofed_destination_total";
/// Configurations rejected by on_configure.
pub const CONFIG_ERRORS: &str = "ksit_config_errors_total";
/// Configurations applied without knowing the proxy's cluster (no `cluster`, no `KSIT_CLUSTER`, no
/// `CLUSTER_ID` node metadata): the base policy, without any cluster's overrides.
pub const CLUSTER_UNKNOWN: &str = "ksit_cluster_unknown_total";
/// Requests currently held by a delay fault (all workers).
pub const ACTIVE_DELAYS: &str = "ksit_active_delays";
/// The Wasm VM's linear memory in bytes, as last reported by a worker's VM (memory only grows, so this is
/// the most any VM has needed; a steady value under load means nothing accumulates per request).
pub const VM_MEMORY: &str = "ksit_vm_memory_bytes";

pub fn delays(rule: RuleLabel<'_>) -> String {
    format!("ksit_delays_total{rule}")
}
pub fn aborts(rule: RuleLabel<'_>) -> String {
    format!("ksit_aborts_total{rule}")
}
/// Delays not injected because `maxActiveFaults` requests were already held.
pub fn faults_skipped(rule: RuleLabel<'_>) -> String {
    format!("ksit_faults_skipped_total{rule}")
}

/// A label value safe in a dotted stat name: dots would split it, so they become underscores.
pub fn label(v: &str) -> String {
    v.chars()
        .map(|c| {
            if c == '.' || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::RuleLabel;

    #[test]
    fn names() {
        let api = RuleLabel {
            policy: None,
            rule: "api",
        };
        assert_eq!(
            super::requests(api, "reviews.default|v2"),
            "ksit_requests_total.ksit_rule.api.ksit_destination.reviews_default|v2"
        );
        let merged = RuleLabel {
            policy: Some("shop/orders.v2"),
            rule: "api",
        };
        assert_eq!(
            super::requests(merged, "orders"),
            "ksit_requests_total.ksit_policy.shop/orders_v2.ksit_rule.api.ksit_destination.orders"
        );
        assert_eq!(
            super::aborts(merged),
            "ksit_aborts_total.ksit_policy.shop/orders_v2.ksit_rule.api"
        );
    }
}
