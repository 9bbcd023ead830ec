//! Stage 1 of `compute`: KubeStellar's selection semantics, which clusters a BindingPolicy binds and which
//! objects its downsync clauses select.

use super::Cluster;
use crate::resources::{BindingPolicy, DownsyncClause};
use std::collections::BTreeMap;

/// KubeStellar's object test for one clause.
pub fn clause_matches(
    c: &DownsyncClause,
    group: &str,
    plural: &str,
    namespace: Option<&str>,
    names: &[&str],
    labels: &BTreeMap<String, String>,
    namespace_labels: &BTreeMap<String, BTreeMap<String, String>>,
) -> bool {
    let all = |v: &[String]| v.is_empty() || v.iter().any(|x| x == "*");
    c.api_group.as_deref().is_none_or(|g| g == group)
        && (all(&c.resources) || c.resources.iter().any(|r| r == plural))
        && (c.namespaces.is_empty()
            || c.namespaces.iter().any(|n| n == "*")
            || namespace.is_some_and(|ns| c.namespaces.iter().any(|n| n == ns)))
        && (c.namespace_selectors.is_empty()
            || match namespace {
                Some(ns) => {
                    let empty = BTreeMap::new();
                    let l = namespace_labels.get(ns).unwrap_or(&empty);
                    c.namespace_selectors.iter().any(|s| s.matches(l))
                }
                None => c.namespace_selectors.iter().any(|s| s.is_empty()),
            })
        && (c.object_selectors.is_empty() || c.object_selectors.iter().any(|s| s.matches(labels)))
        && (all(&c.object_names) || c.object_names.iter().any(|n| names.contains(&n.as_str())))
}

/// The clusters a binding selects (ORed selectors; none selects nothing).
pub fn bound_clusters<'c>(b: &BindingPolicy, clusters: &'c [Cluster]) -> Vec<&'c Cluster> {
    clusters
        .iter()
        .filter(|c| {
            b.spec
                .cluster_selectors
                .iter()
                .any(|s| s.matches(&c.labels))
        })
        .collect()
}
