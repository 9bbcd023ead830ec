//! Metric names. Envoy shows Wasm metrics in /stats/prometheus without its `wasmcustom.` prefix; labels are
//! encoded in the name as `.label.value` pairs, which Envoy's `stats_tags` (see docs/metrics.md) turn into
//! Prometheus labels.

/// Requests a rule decided, by rule and destination.
pub fn requests(rule: &str, destination: &str) -> String {
    format!(
        "ksit_requests_total.ksit_rule.{}.ksit_destination.{}",
        label(rule),
        label(destination)
    )
}

/// Requests for a policy's hosts that no rule matched (passed on unchanged).
pub const UNMATCHED: &str = "ksit_unmatched_total";
/// Requests that arrived with their own `x-ksit-destination`, which the filter removed or replaced.
pub const SPOOFED: &str = "ksit_spoofed_destination_total";
/// Configurations rejected by on_configure.
pub const CONFIG_ERRORS: &str = "ksit_config_errors_total";
/// Requests currently held by a delay fault (all workers).
pub const ACTIVE_DELAYS: &str = "ksit_active_delays";

pub fn delays(rule: &str) -> String {
    format!("ksit_delays_total.ksit_rule.{}", label(rule))
}
pub fn aborts(rule: &str) -> String {
    format!("ksit_aborts_total.ksit_rule.{}", label(rule))
}
/// Delays not injected because `maxActiveFaults` requests were already held.
pub fn faults_skipped(rule: &str) -> String {
    format!("ksit_faults_skipped_total.ksit_rule.{}", label(rule))
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
    #[test]
    fn names() {
        assert_eq!(
            super::requests("api", "reviews.default|v2"),
            "ksit_requests_total.ksit_rule.api.ksit_destination.reviews_default|v2"
        );
    }
}
