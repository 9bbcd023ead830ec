//! The controller's Prometheus metrics (served on /metrics).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub cluster: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub cluster: String,
    pub verb: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<ClusterLabel, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub writes: Family<WriteLabels, Counter>,
    pub apply_seconds: Histogram,
    pub clusters_ready: Gauge,
    pub clusters_total: Gauge,
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ksit_controller");
        let reconciles = Family::<ClusterLabel, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let writes = Family::<WriteLabels, Counter>::default();
        let apply_seconds = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        let clusters_ready = Gauge::default();
        let clusters_total = Gauge::default();
        let leader = Gauge::default();
        registry.register(
            "reconciles",
            "Reconciles of a member cluster",
            reconciles.clone(),
        );
        registry.register(
            "errors",
            "Reconcile errors by cluster (`hub` for reading the hub) and kind",
            errors.clone(),
        );
        registry.register(
            "writes",
            "Writes to member clusters by verb (apply, delete)",
            writes.clone(),
        );
        registry.register(
            "apply_duration_seconds",
            "Time to bring one cluster to its desired state",
            apply_seconds.clone(),
        );
        registry.register(
            "clusters_ready",
            "Member clusters reachable and in their desired state",
            clusters_ready.clone(),
        );
        registry.register(
            "clusters",
            "Member clusters known to the hub",
            clusters_total.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        Metrics {
            registry,
            reconciles,
            errors,
            writes,
            apply_seconds,
            clusters_ready,
            clusters_total,
            leader,
        }
    }
}

impl Metrics {
    /// Counts `e` in `ksit_controller_errors_total` under `cluster` (`hub` for reading the hub).
    pub fn count_error(&self, cluster: &str, e: &crate::error::Error) {
        self.errors
            .get_or_create(&ErrorLabels {
                cluster: cluster.into(),
                kind: e.metric_label().into(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// Every controller metric docs/metrics.md lists is what /metrics serves, and every one served is listed.
    #[test]
    fn the_documented_metrics_are_the_served_ones() {
        let m = Metrics::default();
        let cluster = ClusterLabel {
            cluster: "c1".into(),
        };
        m.reconciles.get_or_create(&cluster).inc();
        m.errors
            .get_or_create(&ErrorLabels {
                cluster: "hub".into(),
                kind: "timeout".into(),
            })
            .inc();
        m.writes
            .get_or_create(&WriteLabels {
                cluster: "c1".into(),
                verb: "apply".into(),
            })
            .inc();
        m.apply_seconds.observe(0.1);
        let text = m.encode();
        let served: std::collections::BTreeSet<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .map(|name| match name {
                // Counters are declared without the `_total` their samples carry.
                n if text.contains(&format!("{n}_total{{")) => format!("{n}_total"),
                n => n.to_string(),
            })
            .collect();
        let docs =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md"))
                .unwrap();
        let section = docs.split("## Controller metrics").nth(1).unwrap();
        let documented: std::collections::BTreeSet<String> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .map(String::from)
            .collect();
        assert_eq!(served, documented);
    }
}
