//! A rule index for large policies: which rules can match a path, found by walking the path once through a
//! byte trie of `uri.prefix` values and one lookup of `uri.exact` values, instead of testing every rule.
//! Rules whose matches cannot be indexed (regex, ignoreUriCase, no uri condition) are always candidates.
//! First match still wins: candidates are tried in rule order.

use crate::spec::HttpRule;
use std::collections::HashMap;

/// Below this many rules a plain scan is as fast and allocates nothing.
pub const INDEX_FROM_RULES: usize = 32;

#[derive(Debug, Default)]
struct Node {
    /// Sorted by byte.
    children: Vec<(u8, u32)>,
    /// Rules with a prefix ending here.
    rules: Vec<u32>,
}

#[derive(Debug, Default)]
pub struct RuleIndex {
    nodes: Vec<Node>,
    exact: HashMap<Box<[u8]>, Vec<u32>>,
    always: Vec<u32>,
}

impl RuleIndex {
    pub fn build(rules: &[HttpRule]) -> Option<RuleIndex> {
        if rules.len() < INDEX_FROM_RULES {
            return None;
        }
        let mut ix = RuleIndex {
            nodes: vec![Node::default()],
            ..Default::default()
        };
        for (i, r) in rules.iter().enumerate() {
            let i = i as u32;
            let indexable = !r.matches.is_empty()
                && r.matches.iter().all(|m| {
                    !m.ignore_uri_case
                        && m.uri
                            .as_ref()
                            .is_some_and(|u| u.prefix.is_some() || u.exact.is_some())
                });
            if !indexable {
                ix.always.push(i);
                continue;
            }
            for m in &r.matches {
                let Some(u) = &m.uri else { continue };
                if let Some(p) = &u.prefix {
                    let node = ix.insert(p.as_bytes());
                    if ix.nodes[node].rules.last() != Some(&i) {
                        ix.nodes[node].rules.push(i);
                    }
                } else if let Some(e) = &u.exact {
                    let list = ix.exact.entry(e.as_bytes().into()).or_default();
                    if list.last() != Some(&i) {
                        list.push(i);
                    }
                }
            }
        }
        Some(ix)
    }

    fn insert(&mut self, key: &[u8]) -> usize {
        let mut at = 0usize;
        for b in key {
            at = match self.nodes[at].children.binary_search_by_key(b, |(c, _)| *c) {
                Ok(k) => self.nodes[at].children[k].1 as usize,
                Err(k) => {
                    let id = self.nodes.len();
                    self.nodes.push(Node::default());
                    self.nodes[at].children.insert(k, (*b, id as u32));
                    id
                }
            };
        }
        at
    }

    /// Rules that may match `path` (without query), in rule order.
    pub fn candidates(&self, path: &[u8], out: &mut Vec<u32>) {
        out.clear();
        out.extend_from_slice(&self.always);
        if let Some(l) = self.exact.get(path) {
            out.extend_from_slice(l);
        }
        let mut at = 0usize;
        out.extend_from_slice(&self.nodes[0].rules);
        for b in path {
            match self.nodes[at].children.binary_search_by_key(b, |(c, _)| *c) {
                Ok(k) => {
                    at = self.nodes[at].children[k].1 as usize;
                    out.extend_from_slice(&self.nodes[at].rules);
                }
                Err(_) => break,
            }
        }
        out.sort_unstable();
        out.dedup();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_every_rule_that_may_match_in_order() {
        let mut rules: Vec<HttpRule> = (0..40)
            .map(|i| serde_json::from_value(serde_json::json!({"match": [{"uri": {"prefix": format!("/s{i}")}}], "route": []})).unwrap_or_default())
            .collect();
        rules[5] = serde_json::from_value(serde_json::json!({"match": [{"uri": {"regex": ".*"}}]}))
            .unwrap_or_default();
        rules[7] = serde_json::from_value(
            serde_json::json!({"match": [{"uri": {"exact": "/s1"}}, {"uri": {"prefix": "/x"}}]}),
        )
        .unwrap_or_default();
        let ix = RuleIndex::build(&rules).unwrap_or_default();
        let mut out = Vec::new();
        ix.candidates(b"/s12/a", &mut out);
        assert_eq!(
            out,
            vec![1, 5, 12],
            "/s1 and /s12 are prefixes, 5 is a regex"
        );
        ix.candidates(b"/s1", &mut out);
        assert_eq!(out, vec![1, 5, 7]);
        ix.candidates(b"/nothing", &mut out);
        assert_eq!(out, vec![5]);
    }
}
