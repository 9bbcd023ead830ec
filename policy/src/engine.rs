//! The compiled, immutable policy index and the decision for one request.
//!
//! Built once per configuration: hosts in a hash map (exact names, then wildcard suffixes), rules in
//! order per policy, every string match pre-compiled and every destination's header value pre-rendered, so
//! a decision only reads the request and allocates nothing.

use crate::config::PluginConfig;
use crate::duration::parse_duration_nanos;
use crate::error::{ConfigError, FieldError};
use crate::hash::{slot, StableHasher, BUCKETS, ROLL_SPACE};
use crate::request::Request;
use crate::spec::*;
use crate::validate::{grpc_code, validate_spec, DESTINATION_HEADER};
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

/// Paused requests one worker holds at most, unless `maxActiveFaults` says otherwise.
pub const DEFAULT_MAX_ACTIVE_FAULTS: u32 = 1000;

impl std::hash::Hasher for StableHasher {
    fn finish(&self) -> u64 {
        StableHasher::finish(self)
    }
    fn write(&mut self, bytes: &[u8]) {
        StableHasher::write(self, bytes);
    }
}

type FixedMap<K, V> = HashMap<K, V, BuildHasherDefault<StableHasher>>;

/// What a proxy knows of the cluster it runs in, for a pluginConfig that does not name one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyCluster<'a> {
    /// `KSIT_CLUSTER` in the VM's environment (the controller's per-cluster rendering sets it).
    pub env: Option<&'a str>,
    /// Istio's cluster ID, from the proxy's `CLUSTER_ID` node metadata (istiod sets it on every proxy).
    pub istio_cluster_id: Option<&'a str>,
}

/// Where the cluster the overrides were resolved for came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterSource {
    /// The pluginConfig's `cluster` (it wins over what the proxy says).
    PluginConfig,
    /// `KSIT_CLUSTER` in the VM's environment.
    Environment,
    /// The proxy's `CLUSTER_ID` node metadata, through the pluginConfig's `clusterIds` where it has an entry.
    IstioClusterId,
    /// None: the base policy applies, without any cluster's overrides.
    Unknown,
}

impl ClusterSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterSource::PluginConfig => "pluginConfig",
            ClusterSource::Environment => "KSIT_CLUSTER",
            ClusterSource::IstioClusterId => "CLUSTER_ID node metadata",
            ClusterSource::Unknown => "none",
        }
    }
}

/// The cluster a pluginConfig applies in, and where that came from: its own `cluster`, else the VM's
/// environment, else the proxy's Istio cluster ID (mapped by `clusterIds`, equal names by default).
pub fn resolve_cluster(
    cfg: &PluginConfig,
    proxy: ProxyCluster<'_>,
) -> (Option<String>, ClusterSource) {
    let given = |s: Option<&str>| s.filter(|c| !c.is_empty()).map(String::from);
    if let Some(c) = cfg.cluster.clone() {
        return (Some(c), ClusterSource::PluginConfig);
    }
    if let Some(c) = given(proxy.env) {
        return (Some(c), ClusterSource::Environment);
    }
    if let Some(id) = given(proxy.istio_cluster_id) {
        let name = cfg.cluster_ids.get(&id).cloned().unwrap_or(id);
        return (Some(name), ClusterSource::IstioClusterId);
    }
    (None, ClusterSource::Unknown)
}

/// All policies of one filter configuration, compiled.
#[derive(Debug)]
pub struct Engine {
    cluster: Option<String>,
    cluster_source: ClusterSource,
    max_active_faults: u32,
    policies: Vec<CompiledPolicy>,
    exact_hosts: FixedMap<Box<[u8]>, usize>,
    /// Keyed by the suffix with its leading dot: `*.example.com` is stored as `.example.com`.
    wildcard_hosts: FixedMap<Box<[u8]>, usize>,
    catch_all: Option<usize>,
    rule_count: usize,
    header_for_stable: bool,
}

#[derive(Debug)]
pub struct CompiledPolicy {
    pub name: String,
    pub rules: Vec<CompiledRule>,
    /// For large policies: the rules a path can match (see `index`).
    index: Option<crate::index::RuleIndex>,
    /// The headers its rules match on (`headers`, `withoutHeaders`), each once.
    matched_headers: Vec<Box<[u8]>>,
}

impl CompiledPolicy {
    /// The first rule that matches `req`.
    fn first_match(&self, req: &Request<'_>) -> Option<&CompiledRule> {
        let matches = |r: &CompiledRule| r.matches_request(req);
        match &self.index {
            None => self.rules.iter().find(|r| matches(r)),
            Some(ix) => {
                let mut candidates = Vec::new();
                ix.candidates(req.path_only(), &mut candidates);
                candidates
                    .iter()
                    .filter_map(|i| self.rules.get(*i as usize))
                    .find(|r| matches(r))
            }
        }
    }
}

#[derive(Debug)]
pub struct CompiledRule {
    /// The rule's name, or `http[INDEX]` when unnamed.
    pub name: String,
    /// What its buckets and rolls are hashed under: its name, or for an unnamed rule [`rule_identity`], which
    /// does not move when other rules are inserted or reordered.
    pub key: String,
    /// `redirect` or `directResponse` when the rule answers requests itself (it has no destinations).
    pub answers: Option<&'static str>,
    /// Sticky mirroring: the filter decides which mirrors a request gets (see [`MirrorRoll`]).
    pub mirror: Option<CompiledMirror>,
    /// Index among all rules of the engine (for per-rule tables such as metrics).
    pub id: usize,
    /// Position in its policy's `http` list.
    pub index: usize,
    /// Whether the rule was given a name (otherwise `name` is `http[INDEX]`).
    pub named: bool,
    matches: Vec<CompiledMatch>,
    pub destinations: Vec<CompiledDestination>,
    /// Index of the stable destination in `destinations` (see [`crate::spec::HttpRule::stable_index`]).
    pub stable: usize,
    /// Exclusive upper bucket of each destination, cumulative; the last is `BUCKETS`.
    bounds: Vec<u32>,
    sticky: Option<KeySource>,
    override_header: Option<Box<[u8]>>,
    /// Destinations the override header may force (all when the rule lists none).
    overridable: Vec<bool>,
    pub fault: Option<CompiledFault>,
}

/// A rule's sticky mirroring: one roll per request (on the rule's sticky key), compared with each mirror's
/// share. The mirrors a request gets are those whose share is above its roll, so they nest: a user mirrored
/// to a 10% mirror is also mirrored to a 50% one.
#[derive(Debug, Clone)]
pub struct CompiledMirror {
    /// The distinct shares (parts per million) of the rule's mirrors, largest first. Level `L` (1-based)
    /// means the roll is below the first `L` of them.
    pub thresholds: Vec<u32>,
}

impl CompiledMirror {
    fn for_rule(rule: &HttpRule) -> Option<CompiledMirror> {
        if !rule.sticky_mirror() {
            return None;
        }
        // Distinct, largest first, by insertion (a slice sort costs the module kilobytes; the list is short).
        let mut thresholds: Vec<u32> = Vec::new();
        for (_, p) in rule.mirror_policies() {
            if let Err(at) = thresholds.binary_search_by(|t| p.cmp(t)) {
                thresholds.insert(at, p);
            }
        }
        Some(CompiledMirror { thresholds })
    }
}

/// The hashing key of an unnamed rule: a fixed hash of its matches (without their names) and its
/// destinations (sorted, without weights), so it stays the same when other rules are inserted or reordered,
/// and when its weights change; it changes when its matches or destinations do. Name a rule to keep its
/// users in place through any change.
pub fn rule_identity(rule: &HttpRule) -> String {
    let mut h = StableHasher::new();
    let sm = |h: &mut StableHasher, tag: &[u8], m: &StringMatch| {
        h.write(tag).sep();
        for (kind, v) in [(b"e", &m.exact), (b"p", &m.prefix), (b"r", &m.regex)] {
            if let Some(v) = v {
                h.write(kind).write(v.as_bytes()).sep();
            }
        }
    };
    for m in &rule.matches {
        h.write(b"match").sep();
        for (tag, v) in [
            (&b"uri"[..], &m.uri),
            (b"scheme", &m.scheme),
            (b"method", &m.method),
            (b"authority", &m.authority),
        ] {
            if let Some(v) = v {
                sm(&mut h, tag, v);
            }
        }
        for (tag, map) in [
            (&b"h"[..], &m.headers),
            (b"wh", &m.without_headers),
            (b"q", &m.query_params),
        ] {
            for (k, v) in map {
                h.write(tag).write(k.as_bytes()).sep();
                sm(&mut h, b"v", v);
            }
        }
        if m.ignore_uri_case {
            h.write(b"icase").sep();
        }
    }
    // The destinations in any order: their hashes are added up (no sort).
    let dests = rule.route.iter().fold(0u64, |acc, d| {
        acc.wrapping_add(
            StableHasher::new()
                .write(b"dest")
                .write(d.destination.key().as_bytes())
                .finish(),
        )
    });
    h.write(&dests.to_le_bytes()).sep();
    if let Some(a) = rule.answers() {
        h.write(a.as_bytes()).sep();
    }
    let mut out = String::from("~");
    let v = h.finish();
    for i in (0..16).rev() {
        let d = ((v >> (i * 4)) & 0xf) as u8;
        out.push(char::from(if d < 10 { b'0' + d } else { b'a' + d - 10 }));
    }
    out
}

#[derive(Debug, Clone)]
pub struct CompiledDestination {
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<u32>,
    /// `HOST` or `HOST|SUBSET`: the value written to `x-ksit-destination`.
    pub key: String,
    /// Share of traffic, 0 to 100, as configured (relative weights normalised).
    pub share: f64,
}

#[derive(Debug)]
enum KeySource {
    Header(Box<[u8]>),
    Cookie(Box<[u8]>),
    Query(Box<[u8]>),
}

impl KeySource {
    fn compile(s: &StickyBy) -> Option<KeySource> {
        if let Some(h) = &s.header {
            return Some(KeySource::Header(h.as_bytes().into()));
        }
        if let Some(c) = &s.cookie {
            return Some(KeySource::Cookie(c.as_bytes().into()));
        }
        s.query_param
            .as_ref()
            .map(|q| KeySource::Query(q.as_bytes().into()))
    }

    fn read<'r>(&self, req: &Request<'r>) -> Option<&'r [u8]> {
        let v = match self {
            KeySource::Header(h) => req.header(h),
            KeySource::Cookie(c) => req.cookie(c),
            KeySource::Query(q) => req.query_param(q),
        }?;
        (!v.is_empty()).then_some(v)
    }
}

#[derive(Debug)]
enum Matcher {
    /// Presence only (an empty StringMatch on a header or query parameter).
    Present,
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    ExactIgnoreCase(Box<[u8]>),
    PrefixIgnoreCase(Box<[u8]>),
    Regex(regex_lite::Regex),
}

impl Matcher {
    fn compile(m: &StringMatch, ignore_case: bool) -> Result<Matcher, String> {
        Ok(match (&m.exact, &m.prefix, &m.regex) {
            (Some(e), _, _) if ignore_case => {
                Matcher::ExactIgnoreCase(e.to_ascii_lowercase().into_bytes().into())
            }
            (Some(e), _, _) => Matcher::Exact(e.as_bytes().into()),
            (_, Some(p), _) if ignore_case => {
                Matcher::PrefixIgnoreCase(p.to_ascii_lowercase().into_bytes().into())
            }
            (_, Some(p), _) => Matcher::Prefix(p.as_bytes().into()),
            // As in Istio, ignoreUriCase does not apply to a regex (write `(?i)` in it).
            (_, _, Some(r)) => Matcher::Regex(
                regex_lite::Regex::new(&format!("^(?:{r})$")).map_err(|e| e.to_string())?,
            ),
            (None, None, None) => Matcher::Present,
        })
    }

    fn matches(&self, v: &[u8]) -> bool {
        match self {
            Matcher::Present => true,
            Matcher::Exact(e) => v == &e[..],
            Matcher::Prefix(p) => v.starts_with(p),
            Matcher::ExactIgnoreCase(e) => v.eq_ignore_ascii_case(e),
            Matcher::PrefixIgnoreCase(p) => {
                v.len() >= p.len() && v[..p.len()].eq_ignore_ascii_case(p)
            }
            // RE2-style patterns match text; a value that is not UTF-8 cannot match one.
            Matcher::Regex(r) => std::str::from_utf8(v).is_ok_and(|s| r.is_match(s)),
        }
    }
}

#[derive(Debug, Default)]
struct CompiledMatch {
    uri: Option<Matcher>,
    scheme: Option<Matcher>,
    method: Option<Matcher>,
    authority: Option<Matcher>,
    headers: Vec<(Box<[u8]>, Matcher)>,
    without_headers: Vec<(Box<[u8]>, Matcher)>,
    query_params: Vec<(Box<[u8]>, Matcher)>,
}

impl CompiledMatch {
    fn matches(&self, req: &Request<'_>) -> bool {
        let opt = |m: &Option<Matcher>, v: &[u8]| m.as_ref().is_none_or(|m| m.matches(v));
        opt(&self.uri, req.path_only())
            && opt(&self.method, req.method())
            && opt(&self.authority, req.authority())
            && opt(&self.scheme, req.scheme())
            && self
                .headers
                .iter()
                .all(|(n, m)| req.header(n).is_some_and(|v| m.matches(v)))
            && self
                .without_headers
                .iter()
                .all(|(n, m)| !req.header(n).is_some_and(|v| m.matches(v)))
            && self
                .query_params
                .iter()
                .all(|(n, m)| req.query_param(n).is_some_and(|v| m.matches(v)))
    }
}

/// A rule's fault, compiled for this cluster (a fault scoped to other clusters is dropped at compile time).
#[derive(Debug)]
pub struct CompiledFault {
    pub delay: Option<DelaySpec>,
    pub abort: Option<AbortSpec>,
    when_headers: Vec<(Box<[u8]>, Matcher)>,
    /// Destination keys (`HOST|SUBSET`) or hosts (covering every subset) the fault is limited to.
    when_destinations: Vec<String>,
    sticky: Option<KeySource>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DelaySpec {
    pub millis: u64,
    /// Parts per million of requests delayed.
    pub ppm: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortStatus {
    Http(u32),
    Grpc(u32),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AbortSpec {
    pub status: AbortStatus,
    pub ppm: u32,
}

/// A fault's share in parts per million, as Istio gives it to Envoy: `percentage` (truncated to millionths),
/// else the integer `percent`, else none at all (Istio's `translateFault` makes an unset percentage 0%).
fn ppm(pct: Option<Percent>, percent: Option<i32>) -> u32 {
    match (pct, percent) {
        (Some(_), _) => crate::spec::percent_ppm(pct, 0),
        (None, Some(i)) => i.clamp(0, 100).unsigned_abs() * (ROLL_SPACE / 100),
        (None, None) => 0,
    }
}

/// Where a canary bucket's key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// The rule's `canary.stickyBy` (or the fault's `stickyBy`) value.
    Sticky,
    /// `x-request-id`.
    RequestId,
    /// No key in the request: a random draw.
    Random,
}

/// How the destination was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// The rule has one destination.
    Single,
    /// Weighted pick by bucket (`0..10000`).
    Bucket { bucket: u32, key: KeyKind },
    /// Forced by the rule's override header.
    Override,
}

/// One fault's outcome for this request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Roll<T> {
    pub spec: T,
    /// The request's roll in `0..1_000_000`; the fault applies when it is below `spec.ppm`.
    pub roll: u32,
    pub key: KeyKind,
    pub applied: bool,
}

/// A request's sticky mirroring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirrorRoll {
    /// How many of the rule's mirror thresholds the roll is below (0: no mirror); the filter writes it to
    /// `x-ksit-mirror` when above 0.
    pub level: u32,
    /// The roll in `0..1_000_000`.
    pub roll: u32,
    pub key: KeyKind,
}

/// What to do with one request.
#[derive(Debug, Clone, Copy)]
pub struct Decision<'e, 'r> {
    pub policy: Option<&'e CompiledPolicy>,
    pub rule: Option<&'e CompiledRule>,
    pub destination: Option<&'e CompiledDestination>,
    pub pick: Option<Pick>,
    /// The sticky key read from the request, if any.
    pub sticky_key: Option<&'r [u8]>,
    pub delay: Option<Roll<DelaySpec>>,
    pub abort: Option<Roll<AbortSpec>>,
    /// For a rule with sticky mirroring.
    pub mirror: Option<MirrorRoll>,
}

impl<'e, 'r> Decision<'e, 'r> {
    fn none() -> Self {
        Decision {
            policy: None,
            rule: None,
            destination: None,
            pick: None,
            sticky_key: None,
            delay: None,
            abort: None,
            mirror: None,
        }
    }

    /// The value the filter writes to `x-ksit-mirror` (a level above 0), if any.
    pub fn mirror_level(&self) -> Option<u32> {
        self.mirror.map(|m| m.level).filter(|l| *l > 0)
    }
    pub fn matched(&self) -> bool {
        self.rule.is_some()
    }

    /// Whether the destination is its rule's stable one.
    pub fn stable(&self) -> bool {
        match (self.rule, self.destination) {
            (Some(r), Some(d)) => r
                .destinations
                .get(r.stable)
                .is_some_and(|s| std::ptr::eq(s, d)),
            _ => false,
        }
    }
}

impl Engine {
    /// Parses, validates and compiles a pluginConfig. `fallback_cluster` (e.g. from the VM's environment)
    /// is used when the config names no cluster.
    pub fn from_json(bytes: &[u8], fallback_cluster: Option<&str>) -> Result<Engine, ConfigError> {
        Engine::from_json_on_proxy(
            bytes,
            ProxyCluster {
                env: fallback_cluster,
                istio_cluster_id: None,
            },
        )
    }

    /// [`Engine::from_json`] for a proxy that knows its cluster: see [`resolve_cluster`].
    pub fn from_json_on_proxy(
        bytes: &[u8],
        proxy: ProxyCluster<'_>,
    ) -> Result<Engine, ConfigError> {
        let cfg = PluginConfig::from_json(bytes)?;
        Engine::compile_on_proxy(&cfg, proxy)
    }

    /// Validates every policy (all errors at once), resolves overrides for the cluster and compiles.
    pub fn compile(
        cfg: &PluginConfig,
        fallback_cluster: Option<&str>,
    ) -> Result<Engine, ConfigError> {
        Engine::compile_on_proxy(
            cfg,
            ProxyCluster {
                env: fallback_cluster,
                istio_cluster_id: None,
            },
        )
    }

    /// [`Engine::compile`] for a proxy that knows its cluster: see [`resolve_cluster`].
    pub fn compile_on_proxy(
        cfg: &PluginConfig,
        proxy: ProxyCluster<'_>,
    ) -> Result<Engine, ConfigError> {
        let (cluster, cluster_source) = resolve_cluster(cfg, proxy);
        let mut errors = Vec::new();
        for (i, p) in cfg.policies.iter().enumerate() {
            errors.extend(validate_spec(&p.spec, &cfg.prefix(i)));
        }
        if !errors.is_empty() {
            return Err(ConfigError { errors });
        }
        let mut engine = Engine {
            cluster,
            cluster_source,
            max_active_faults: u32::MAX,
            policies: Vec::with_capacity(cfg.policies.len()),
            exact_hosts: FixedMap::default(),
            wildcard_hosts: FixedMap::default(),
            catch_all: None,
            rule_count: 0,
            header_for_stable: cfg.header_for_stable,
        };
        let mut claimed: HashMap<String, usize> = HashMap::new();
        for (pi, p) in cfg.policies.iter().enumerate() {
            let spec = p.spec.resolve(engine.cluster.as_deref());
            engine.max_active_faults = engine
                .max_active_faults
                .min(spec.max_active_faults.unwrap_or(DEFAULT_MAX_ACTIVE_FAULTS));
            for (hi, host) in spec.hosts.iter().enumerate() {
                let h = host.to_ascii_lowercase();
                if let Some(prev) = claimed.insert(h.clone(), pi) {
                    errors.push(FieldError::new(
                        format!("{}.hosts[{hi}]", cfg.prefix(pi)),
                        format!(
                            "host {host:?} is already claimed by policy {:?}",
                            cfg.policies[prev].name
                        ),
                    ));
                    continue;
                }
                if h == "*" {
                    engine.catch_all = Some(pi);
                } else if let Some(suffix) = h.strip_prefix('*') {
                    engine.wildcard_hosts.insert(suffix.as_bytes().into(), pi);
                } else {
                    engine.exact_hosts.insert(h.as_bytes().into(), pi);
                }
            }
            let mut rules = Vec::with_capacity(spec.http.len());
            for (ri, rule) in spec.http.iter().enumerate() {
                match engine.compile_rule(rule, ri) {
                    Ok(r) => rules.push(r),
                    Err(e) => {
                        errors.push(FieldError::new(format!("{}.http[{ri}]", cfg.prefix(pi)), e))
                    }
                }
            }
            // Deduplicated without a sort: a slice sort costs the module about 6 KB, and the list is short.
            let mut matched_headers: Vec<Box<[u8]>> = Vec::new();
            for (name, _) in rules
                .iter()
                .flat_map(|r| &r.matches)
                .flat_map(|m| m.headers.iter().chain(&m.without_headers))
            {
                if !matched_headers.contains(name) {
                    matched_headers.push(name.clone());
                }
            }
            engine.policies.push(CompiledPolicy {
                name: p.name.clone(),
                rules,
                index: crate::index::RuleIndex::build(&spec.http),
                matched_headers,
            });
        }
        if engine.max_active_faults == u32::MAX {
            engine.max_active_faults = DEFAULT_MAX_ACTIVE_FAULTS;
        }
        if errors.is_empty() {
            Ok(engine)
        } else {
            Err(ConfigError { errors })
        }
    }

    fn compile_rule(&mut self, rule: &HttpRule, index: usize) -> Result<CompiledRule, String> {
        let name = rule
            .name
            .clone()
            .unwrap_or_else(|| format!("http[{index}]"));
        let key = match &rule.name {
            Some(n) => n.clone(),
            None => rule_identity(rule),
        };
        let mut matches = Vec::with_capacity(rule.matches.len());
        for m in &rule.matches {
            let opt = |sm: &Option<StringMatch>, ic: bool| {
                sm.as_ref().map(|s| Matcher::compile(s, ic)).transpose()
            };
            let list = |map: &crate::field_map::FieldMap<StringMatch>| {
                map.iter()
                    .map(|(k, v)| Ok((k.as_bytes().into(), Matcher::compile(v, false)?)))
                    .collect::<Result<Vec<_>, String>>()
            };
            matches.push(CompiledMatch {
                uri: opt(&m.uri, m.ignore_uri_case)?,
                scheme: opt(&m.scheme, false)?,
                method: opt(&m.method, false)?,
                authority: opt(&m.authority, false)?,
                headers: list(&m.headers)?,
                without_headers: list(&m.without_headers)?,
                query_params: list(&m.query_params)?,
            });
        }
        // Relative weights: a single destination takes all traffic; otherwise a missing weight is 0.
        let weights: Vec<u64> = if rule.route.len() == 1 {
            vec![1]
        } else {
            rule.route
                .iter()
                .map(|d| d.weight.unwrap_or(0).max(0) as u64)
                .collect()
        };
        let total: u64 = weights.iter().sum::<u64>().max(1);
        let mut bounds = Vec::with_capacity(weights.len());
        let mut cum = 0u64;
        for w in &weights {
            cum += w;
            bounds.push((cum * u64::from(BUCKETS) / total) as u32);
        }
        let destinations: Vec<CompiledDestination> = rule
            .route
            .iter()
            .zip(&weights)
            .map(|(d, w)| CompiledDestination {
                host: d.destination.host.clone(),
                subset: d.destination.subset.clone(),
                port: d.destination.port.as_ref().map(|p| p.number),
                key: d.destination.key(),
                share: *w as f64 * 100.0 / total as f64,
            })
            .collect();
        let canary = rule.canary.as_ref();
        let overridable = destinations
            .iter()
            .map(|d| {
                canary.is_some_and(|c| {
                    c.allowed_overrides.is_empty() || c.allowed_overrides.contains(&d.key)
                })
            })
            .collect();
        let fault = match &rule.fault {
            Some(f) => self.compile_fault(f)?,
            None => None,
        };
        let id = self.rule_count;
        self.rule_count += 1;
        Ok(CompiledRule {
            name,
            key,
            answers: rule.answers(),
            mirror: CompiledMirror::for_rule(rule),
            id,
            index,
            named: rule.name.is_some(),
            matches,
            destinations,
            stable: rule.stable_index().unwrap_or(0),
            bounds,
            sticky: canary
                .and_then(|c| c.sticky_by.as_ref())
                .and_then(KeySource::compile),
            override_header: canary
                .and_then(|c| c.override_header.as_ref())
                .map(|h| h.as_bytes().into()),
            overridable,
            fault,
        })
    }

    fn compile_fault(&self, f: &Fault) -> Result<Option<CompiledFault>, String> {
        let scope = f.when.clone().unwrap_or_default();
        if !scope.clusters.is_empty()
            && !self
                .cluster
                .as_ref()
                .is_some_and(|c| scope.clusters.contains(c))
        {
            return Ok(None);
        }
        let delay = match &f.delay {
            Some(d) => match &d.fixed_delay {
                Some(t) => Some(DelaySpec {
                    millis: parse_duration_nanos(t)?.div_ceil(1_000_000),
                    ppm: ppm(d.percentage, d.percent),
                }),
                None => None,
            },
            None => None,
        };
        let abort = match &f.abort {
            Some(a) => {
                let status = match (a.http_status, &a.grpc_status) {
                    (Some(s), _) => AbortStatus::Http(s.max(0) as u32),
                    (None, Some(g)) => AbortStatus::Grpc(grpc_code(g).ok_or("unknown grpcStatus")?),
                    (None, None) => return Err("abort needs httpStatus or grpcStatus".into()),
                };
                Some(AbortSpec {
                    status,
                    ppm: ppm(a.percentage, a.percent),
                })
            }
            None => None,
        };
        if delay.is_none() && abort.is_none() {
            return Ok(None);
        }
        Ok(Some(CompiledFault {
            delay,
            abort,
            when_headers: scope
                .headers
                .iter()
                .map(|(k, v)| Ok((k.as_bytes().into(), Matcher::compile(v, false)?)))
                .collect::<Result<_, String>>()?,
            when_destinations: scope.destinations,
            sticky: f.sticky_by.as_ref().and_then(KeySource::compile),
        }))
    }

    pub fn cluster(&self) -> Option<&str> {
        self.cluster.as_deref()
    }
    pub fn cluster_source(&self) -> ClusterSource {
        self.cluster_source
    }
    /// Whether requests sent to their rule's stable destination are marked with `x-ksit-destination` too
    /// (pluginConfig `headerForStable`, default true).
    pub fn header_for_stable(&self) -> bool {
        self.header_for_stable
    }

    /// Whether the filter writes `x-ksit-destination` for decision `d` of `req`: for every chosen
    /// destination, except a rule's stable one when `headerForStable` is false, where the routes' default
    /// sends the request (the route Envoy chose before the filter ran) and agrees with the filter's rule.
    /// It may not agree, so the request is marked after all, when it carries a header to replace, or when a
    /// header the policy's rules match on appears more than once: the engine matches its first value,
    /// Envoy's route matching the values joined by commas.
    pub fn writes_header(&self, d: &Decision<'_, '_>, req: &Request<'_>) -> bool {
        if d.destination.is_none() {
            return false;
        }
        if self.header_for_stable
            || !d.stable()
            || d.mirror_level().is_some()
            || req.header(DESTINATION_HEADER.as_bytes()).is_some()
        {
            return true;
        }
        d.policy
            .is_some_and(|p| p.matched_headers.iter().any(|n| req.repeats(n)))
    }
    pub fn max_active_faults(&self) -> u32 {
        self.max_active_faults
    }
    pub fn policies(&self) -> &[CompiledPolicy] {
        &self.policies
    }
    pub fn rule_count(&self) -> usize {
        self.rule_count
    }

    /// The policy whose hosts cover this request's host: exact name first, then the longest wildcard suffix,
    /// then `*`. The port is ignored and names compare case-insensitively.
    fn policy_for(&self, host: &[u8]) -> Option<&CompiledPolicy> {
        let mut buf = [0u8; 256];
        let host = if host.iter().any(u8::is_ascii_uppercase) {
            let h = buf.get_mut(..host.len())?;
            h.copy_from_slice(host);
            h.make_ascii_lowercase();
            &*h
        } else {
            host
        };
        let host = host.strip_suffix(b".").unwrap_or(host);
        if let Some(&i) = self.exact_hosts.get(host) {
            return self.policies.get(i);
        }
        if !self.wildcard_hosts.is_empty() {
            // Each dot starts a candidate suffix; the leftmost is the longest, so the most specific wildcard.
            for (pos, _) in host
                .iter()
                .enumerate()
                .filter(|(p, b)| **b == b'.' && *p > 0)
            {
                if let Some(&i) = self.wildcard_hosts.get(&host[pos..]) {
                    return self.policies.get(i);
                }
            }
        }
        self.catch_all.and_then(|i| self.policies.get(i))
    }

    /// Decides one request. `entropy` is a random number used only when the request carries no key
    /// (neither a sticky value nor `x-request-id`).
    pub fn decide<'e, 'r>(&'e self, req: &Request<'r>, entropy: u64) -> Decision<'e, 'r> {
        let Some(policy) = self.policy_for(req.host()) else {
            return Decision::none();
        };
        let Some(rule) = policy.first_match(req) else {
            return Decision {
                policy: Some(policy),
                ..Decision::none()
            };
        };
        let request_id = req.header(b"x-request-id").filter(|v| !v.is_empty());
        let sticky_key = rule.sticky.as_ref().and_then(|s| s.read(req));
        let (index, pick) = rule.pick(req, sticky_key, request_id, entropy);
        let destination = rule.destinations.get(index);
        let mut d = Decision {
            policy: Some(policy),
            rule: Some(rule),
            destination,
            pick: destination.map(|_| pick),
            sticky_key,
            delay: None,
            abort: None,
            mirror: None,
        };
        if let (Some(m), Some(_)) = (&rule.mirror, destination) {
            let (roll, key) = match (sticky_key, request_id) {
                (Some(k), _) => (
                    slot(b"ksit-mirror", rule.key.as_bytes(), k, ROLL_SPACE),
                    KeyKind::Sticky,
                ),
                (None, Some(id)) => (
                    slot(b"ksit-mirror", rule.key.as_bytes(), id, ROLL_SPACE),
                    KeyKind::RequestId,
                ),
                (None, None) => (
                    (StableHasher::new()
                        .write(b"ksit-mirror")
                        .write(&entropy.to_le_bytes())
                        .finish()
                        % u64::from(ROLL_SPACE)) as u32,
                    KeyKind::Random,
                ),
            };
            let level = m.thresholds.iter().take_while(|t| roll < **t).count() as u32;
            d.mirror = Some(MirrorRoll { level, roll, key });
        }
        if let (Some(f), Some(dest)) = (&rule.fault, destination) {
            if f.in_scope(req, dest) {
                let fault_key = f.sticky.as_ref().and_then(|s| s.read(req));
                let (key, kind) = match (fault_key, request_id) {
                    (Some(k), _) => (Some(k), KeyKind::Sticky),
                    (None, Some(id)) => (Some(id), KeyKind::RequestId),
                    (None, None) => (None, KeyKind::Random),
                };
                let roll = |salt: &[u8]| match key {
                    Some(k) => slot(salt, rule.key.as_bytes(), k, ROLL_SPACE),
                    None => {
                        (StableHasher::new()
                            .write(salt)
                            .write(&entropy.to_le_bytes())
                            .finish()
                            % u64::from(ROLL_SPACE)) as u32
                    }
                };
                d.delay = f.delay.map(|spec| {
                    let r = roll(b"ksit-delay");
                    Roll {
                        spec,
                        roll: r,
                        key: kind,
                        applied: r < spec.ppm,
                    }
                });
                d.abort = f.abort.map(|spec| {
                    let r = roll(b"ksit-abort");
                    Roll {
                        spec,
                        roll: r,
                        key: kind,
                        applied: r < spec.ppm,
                    }
                });
            }
        }
        d
    }
}

impl CompiledRule {
    /// Whether this rule's conditions hold for `req` (no match list: always).
    pub fn matches_request(&self, req: &Request<'_>) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.matches(req))
    }

    /// Which of the rule's `match` entries `req` meets first (`None` for a rule without matches, or when it
    /// does not match): its name goes into the route name Istio gives Envoy (`RULE.MATCH`).
    pub fn matched_entry(&self, req: &Request<'_>) -> Option<usize> {
        self.matches.iter().position(|m| m.matches(req))
    }

    /// Each destination's bucket range `[start, end)` out of 10,000.
    pub fn bucket_ranges(&self) -> Vec<(u32, u32)> {
        let mut start = 0;
        self.bounds
            .iter()
            .map(|end| {
                let r = (start, *end);
                start = *end;
                r
            })
            .collect()
    }

    fn pick(
        &self,
        req: &Request<'_>,
        sticky: Option<&[u8]>,
        request_id: Option<&[u8]>,
        entropy: u64,
    ) -> (usize, Pick) {
        if let Some(h) = &self.override_header {
            if let Some(v) = req.header(h) {
                if let Some(i) = self.destinations.iter().position(|d| d.key.as_bytes() == v) {
                    if self.overridable.get(i).copied().unwrap_or(false) {
                        return (i, Pick::Override);
                    }
                }
            }
        }
        if self.destinations.len() <= 1 {
            return (0, Pick::Single);
        }
        let (bucket, key) = match (sticky, request_id) {
            (Some(k), _) => (
                slot(b"ksit-canary", self.key.as_bytes(), k, BUCKETS),
                KeyKind::Sticky,
            ),
            (None, Some(id)) => (
                slot(b"ksit-canary", self.key.as_bytes(), id, BUCKETS),
                KeyKind::RequestId,
            ),
            (None, None) => ((entropy % u64::from(BUCKETS)) as u32, KeyKind::Random),
        };
        let index = self
            .bounds
            .iter()
            .position(|b| bucket < *b)
            .unwrap_or(self.bounds.len() - 1);
        (index, Pick::Bucket { bucket, key })
    }
}

impl CompiledFault {
    fn in_scope(&self, req: &Request<'_>, dest: &CompiledDestination) -> bool {
        (self.when_destinations.is_empty()
            || self
                .when_destinations
                .iter()
                .any(|w| *w == dest.key || *w == dest.host))
            && self
                .when_headers
                .iter()
                .all(|(n, m)| req.header(n).is_some_and(|v| m.matches(v)))
    }
}
