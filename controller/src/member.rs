//! One worker per member cluster: connects with the cluster's kubeconfig Secret, applies its desired objects
//! with server-side apply, prunes what ksit applied and no longer wants, watches its managed objects for
//! drift, and reports. A slow or unreachable cluster only ever delays its own worker.

use crate::desired::{
    DesiredObject, ObjectKey, ResourceKind, FIELD_MANAGER, MANAGED_BY_LABEL, MANAGED_BY_VALUE,
};
use crate::error::Error;
use crate::metrics::{ClusterLabel, Metrics, WriteLabels};
use crate::plan::{self, Action, Failure, Id, Kept, Labelled, Live, Observed};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// What one cluster should hold.
#[derive(Clone, Debug, Default)]
pub struct ClusterPlan {
    pub objects: Vec<Arc<DesiredObject>>,
    /// Objects to leave as they are (their source is invalid right now): neither updated nor pruned.
    pub retain: Arc<BTreeSet<ObjectKey>>,
    /// Kinds to look for stale ksit-managed objects in.
    pub prune_kinds: Arc<BTreeSet<ResourceKind>>,
    /// Increases with every new plan (reports say which plan they are about).
    pub revision: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Synced,
    Failed(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ObjectReport {
    pub key: ObjectKey,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct IstioHealth {
    pub istiod_available: bool,
    /// The `CLUSTER_ID` istiod gives its proxies (its container's environment), when set there.
    pub cluster_id: Option<String>,
    pub ingress_gateway: bool,
}

/// The result of one reconcile of one cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterReport {
    pub cluster: String,
    pub revision: u64,
    pub reachable: bool,
    /// Cluster-wide problem (kubeconfig, unreachable, timeout).
    pub error: Option<String>,
    pub objects: Vec<ObjectReport>,
    pub istio: Option<IstioHealth>,
    pub writes: u32,
}

pub struct WorkerConfig {
    pub cluster: String,
    /// Namespace of the IntegrationTarget, where Secret `<cluster>-kubeconfig` lives.
    pub secret_namespace: String,
    pub hub: Client,
    pub timeout: Duration,
    pub resync: Duration,
    pub metrics: Arc<Metrics>,
    /// Passes that may run at once across all workers: a change reaches every cluster at the same moment,
    /// and a thousand passes at once would each hold their parsed objects and buffers together.
    pub passes: Arc<tokio::sync::Semaphore>,
}

/// How many clusters are worked on at once (see `WorkerConfig::passes`).
pub const CONCURRENT_PASSES: usize = 64;

pub fn api_resource(k: &ResourceKind) -> ApiResource {
    ApiResource {
        group: k.group.clone(),
        version: k.version.clone(),
        api_version: k.api_version(),
        kind: k.kind.clone(),
        plural: k.plural.clone(),
    }
}

fn api_for(client: &Client, k: &ResourceKind, namespace: Option<&str>) -> Api<DynamicObject> {
    let ar = api_resource(k);
    match (k.namespaced, namespace) {
        (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
        _ => Api::all_with(client.clone(), &ar),
    }
}

/// `resync` give or take a fifth, different for every cluster and round: workers that synced together (a
/// change reaches every cluster at once) do not all resync, list and re-read their Secrets at the same
/// moment again, which would delay a change that comes then.
fn spread(resync: Duration, cluster: &str, round: u64) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (cluster, round).hash(&mut h);
    let permille = h.finish() % 401; // 0..=400
    resync * 4 / 5 + resync * (permille as u32) / 1000
}

async fn timed<T>(
    cluster: &str,
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify(cluster, e)),
        Err(_) => Err(Error::Timeout {
            cluster: cluster.into(),
            seconds: limit.as_secs(),
        }),
    }
}

/// Connection-level failures make the whole cluster unreachable; API errors stay errors of one object.
fn classify(cluster: &str, e: kube::Error) -> Error {
    match e {
        kube::Error::Api(_) => Error::Kube(e),
        other => Error::Unreachable {
            cluster: cluster.into(),
            message: other.to_string(),
        },
    }
}

fn is_cluster_wide(e: &Error) -> bool {
    matches!(
        e,
        Error::Unreachable { .. } | Error::Timeout { .. } | Error::Kubeconfig { .. }
    )
}

#[derive(Default)]
struct KindCache {
    /// The watch that fills it (see `Worker::generation`).
    generation: u64,
    /// The watch has listed everything and is following changes.
    ready: bool,
    /// The watch failed after its list: it resumes (and still pokes on changes), but what it missed is not
    /// known, so the view is not trusted until the next pass starts it anew (a fresh list).
    failed: bool,
    objects: BTreeMap<(Option<String>, String), Cached>,
}

/// A live object as the drift cache keeps it: its JSON text, without managedFields' field sets (often the
/// larger part of an object; only the managers' names are read). A hundred clusters' objects as text take a
/// fraction of their parsed trees; one is parsed only when compared.
struct Cached {
    text: Box<str>,
    /// Its resourceVersion: an object whose version has not moved since it was last compared is not parsed
    /// again.
    version: Box<str>,
}

impl Cached {
    fn new(mut o: DynamicObject) -> Self {
        for f in o.metadata.managed_fields.iter_mut().flatten() {
            f.fields_v1 = None;
        }
        Cached {
            version: o
                .metadata
                .resource_version
                .clone()
                .unwrap_or_default()
                .into_boxed_str(),
            text: serde_json::to_string(&o)
                .unwrap_or_default()
                .into_boxed_str(),
        }
    }
    /// The object parsed: as a JSON tree (`Value`) to compare the desired fields against in one parse, or
    /// typed (`DynamicObject`).
    fn parsed<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_str(&self.text).ok()
    }
}

/// One event of a drift watch, ready to apply to its cache entry.
enum WatchStep {
    /// A (re)list starts: what the entry held is dropped.
    Init,
    /// An object seen while listing (`false`) or changed later (`true`).
    Put((Option<String>, String), Cached, bool),
    /// The list is complete.
    Done,
    Gone((Option<String>, String)),
    Failed,
}

/// Applies `step` of the drift watch numbered `generation` to cache entry `id`, if that entry is still the
/// watch's own: None when the kind is no longer watched or is watched by a newer watch (the stopped one
/// must end without touching it). Otherwise whether the step changed a live object, which pokes the worker
/// once the watch has `initialised` (listed everything at least once).
fn apply_step(
    cache: &mut BTreeMap<(String, String), KindCache>,
    id: &(String, String),
    generation: u64,
    step: WatchStep,
    initialised: &mut bool,
) -> Option<bool> {
    let kind = cache.get_mut(id).filter(|e| e.generation == generation)?;
    Some(match step {
        WatchStep::Init => {
            kind.ready = false;
            kind.objects.clear();
            false
        }
        WatchStep::Put(at, o, live) => {
            // The echo of ksit's own apply: the entry already holds what the apply answered.
            let echo = kind.objects.get(&at).is_some_and(|c| c.text == o.text);
            kind.objects.insert(at, o);
            live && !echo
        }
        WatchStep::Done => {
            kind.ready = true;
            *initialised = true;
            false
        }
        WatchStep::Gone(at) => {
            kind.objects.remove(&at);
            true
        }
        WatchStep::Failed => {
            // Until the next full list, the view may miss changes: ask the cluster.
            kind.ready = false;
            kind.failed = *initialised;
            false
        }
    })
}

pub struct Worker {
    cfg: WorkerConfig,
    client: Option<(u64, Client)>,
    /// When the kubeconfig Secret was last read: it is read again on errors and once per resync, not on
    /// every pass (a change to a hundred clusters would otherwise mean a hundred Secret reads on the hub).
    secret_read: Option<Instant>,
    /// Kinds known to exist in the cluster, per apiVersion.
    /// When each was asked: a kind the cluster did not serve is asked about again only after
    /// `DISCOVERY_RECHECK` (a CRD installed later is noticed within that), not on every pass.
    discovered: BTreeMap<String, (Instant, Option<BTreeSet<String>>)>,
    /// The kinds found served (no lookup by a formatted apiVersion on the way to the answer).
    served: std::collections::HashSet<ResourceKind>,
    watched: BTreeSet<ResourceKind>,
    /// One drift watch per (group, resource).
    watchers: BTreeMap<(String, String), tokio::task::JoinHandle<()>>,
    /// Numbers the drift watches started, so a stopped one cannot write to its successor's cache entry.
    generation: u64,
    /// The client was just built: the first pass starts the drift watches before it applies.
    fresh: bool,
    /// Kinds ksit may prune but has no objects of here (neither wanted nor left over at the last look):
    /// they are not watched and are looked at again only once per resync (a watch per kind per cluster
    /// would hold a connection each: ten kinds at a hundred clusters was most of the controller's memory).
    empty_kinds: BTreeSet<(String, String)>,
    /// When every prune kind was last listed.
    full_scan: Option<Instant>,
    /// What the drift watches see of ksit's objects, per kind (group, plural): a reconcile compares against
    /// it instead of reading every object again. Objects ksit does not own are not in it and are always read.
    cache: Arc<std::sync::Mutex<BTreeMap<(String, String), KindCache>>>,
    /// Per object: the config hash and the live version at which it was last found (or made) as desired. An
    /// object whose view still has that version is not compared again while its desired hash is the same.
    verified: BTreeMap<Id, (Box<str>, Box<str>)>,
    /// Istio's health as last looked at, and when.
    istio: Option<(Instant, IstioHealth)>,
    /// Whether this pass looks at everything again (once per resync): create-only objects are read again
    /// (between such passes, one known to exist is not), and prune kinds with nothing of ksit's are listed.
    full_look: bool,
    drift_tx: mpsc::Sender<()>,
    drift_rx: mpsc::Receiver<()>,
}

/// How long a kind a cluster did not serve is believed missing before discovery is asked again.
const DISCOVERY_RECHECK: Duration = Duration::from_secs(10);

/// How long the API server keeps one drift watch open before it is resumed.
const DRIFT_WATCH_SECONDS: u32 = 60;

impl Drop for Worker {
    /// A worker's watches end with it, also when its task is aborted (leadership lost, cluster gone).
    fn drop(&mut self) {
        for w in self.watchers.values() {
            w.abort();
        }
    }
}

impl Worker {
    pub fn new(cfg: WorkerConfig) -> Self {
        let (drift_tx, drift_rx) = mpsc::channel(1);
        Worker {
            cfg,
            secret_read: None,
            client: None,
            discovered: BTreeMap::new(),
            served: Default::default(),
            watched: BTreeSet::new(),
            watchers: BTreeMap::new(),
            generation: 0,
            fresh: false,
            empty_kinds: BTreeSet::new(),
            full_scan: None,
            cache: Default::default(),
            verified: BTreeMap::new(),
            istio: None,
            full_look: true,
            drift_tx,
            drift_rx,
        }
    }

    /// Runs until the plan channel closes (the cluster left the hub).
    pub async fn run(
        mut self,
        mut plans: watch::Receiver<Arc<ClusterPlan>>,
        reports: mpsc::Sender<ClusterReport>,
    ) {
        let mut backoff = Duration::from_millis(500);
        let mut round: u64 = 0;
        loop {
            round += 1;
            let plan = plans.borrow_and_update().clone();
            let permit = self.cfg.passes.clone().acquire_owned().await;
            let started = Instant::now();
            let report = self.reconcile(&plan).await;
            drop(permit);
            let failed = report.error.is_some()
                || report
                    .objects
                    .iter()
                    .any(|o| matches!(o.outcome, Outcome::Failed(_)));
            self.cfg
                .metrics
                .reconciles
                .get_or_create(&ClusterLabel {
                    cluster: self.cfg.cluster.clone(),
                })
                .inc();
            self.cfg
                .metrics
                .apply_seconds
                .observe(started.elapsed().as_secs_f64());
            if reports.send(report).await.is_err() {
                break;
            }
            let wait = if failed {
                let w = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                w
            } else {
                backoff = Duration::from_millis(500);
                spread(self.cfg.resync, &self.cfg.cluster, round)
            };
            tokio::select! {
                changed = plans.changed() => if changed.is_err() { break },
                Some(()) = self.drift_rx.recv() => {
                    // Let a burst of changes by others settle, unless a new plan comes meanwhile.
                    tokio::select! {
                        changed = plans.changed() => if changed.is_err() { break },
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                    while self.drift_rx.try_recv().is_ok() {}
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn count_error(&self, e: &Error) {
        self.cfg.metrics.count_error(&self.cfg.cluster, e);
    }

    async fn connect(&mut self) -> Result<Client, Error> {
        if let (Some((_, c)), Some(at)) = (&self.client, self.secret_read) {
            // Re-read every resync (spread ±1/5: three quarters is the shortest wait between two).
            if at.elapsed() < self.cfg.resync * 3 / 4 {
                return Ok(c.clone());
            }
        }
        self.secret_read = Some(Instant::now());
        let cluster = self.cfg.cluster.clone();
        let secrets: Api<Secret> =
            Api::namespaced(self.cfg.hub.clone(), &self.cfg.secret_namespace);
        let secret_name = format!("{cluster}-kubeconfig");
        let secret = match (
            timed("hub", self.cfg.timeout, secrets.get_opt(&secret_name)).await,
            &self.client,
        ) {
            (Ok(s), _) => s,
            // The hub hiccuped: keep using the connection we have rather than calling the cluster lost.
            (Err(_), Some((_, c))) => return Ok(c.clone()),
            (Err(e), None) => {
                return Err(Error::Kubeconfig {
                    cluster: cluster.clone(),
                    message: format!(
                        "reading Secret {}/{secret_name}: {e}",
                        self.cfg.secret_namespace
                    ),
                })
            }
        };
        let Some(secret) = secret else {
            return Err(Error::Kubeconfig {
                cluster,
                message: format!(
                    "Secret {}/{secret_name} not found (key `kubeconfig`)",
                    self.cfg.secret_namespace
                ),
            });
        };
        let data = secret
            .data
            .as_ref()
            .and_then(|d| d.get("kubeconfig"))
            .map(|b| b.0.clone());
        let data = match data {
            Some(d) => d,
            None => secret
                .string_data
                .as_ref()
                .and_then(|d| d.get("kubeconfig"))
                .map(|s| s.clone().into_bytes())
                .ok_or_else(|| Error::Kubeconfig {
                    cluster: cluster.clone(),
                    message: format!(
                        "Secret {}/{secret_name} has no key `kubeconfig`",
                        self.cfg.secret_namespace
                    ),
                })?,
        };
        let fingerprint = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            data.hash(&mut h);
            h.finish()
        };
        if let Some((f, c)) = &self.client {
            if *f == fingerprint {
                return Ok(c.clone());
            }
        }
        // Never log the kubeconfig itself: it holds credentials.
        let text = String::from_utf8(data).map_err(|_| Error::Kubeconfig {
            cluster: cluster.clone(),
            message: "not UTF-8".into(),
        })?;
        let kc = Kubeconfig::from_yaml(&text).map_err(|e| Error::Kubeconfig {
            cluster: cluster.clone(),
            message: format!("invalid kubeconfig: {}", first_line(&e.to_string())),
        })?;
        let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| Error::Kubeconfig {
                cluster: cluster.clone(),
                message: first_line(&e.to_string()),
            })?;
        if config.cluster_url.scheme_str() == Some("http") && config.root_cert.is_none() {
            // Plain HTTP never uses TLS, but the client builds a TLS config regardless, and without a CA
            // that means loading the system trust store: about 0.5 MB and some milliseconds per cluster.
            config.root_cert = Some(Vec::new());
        }
        // Each call has its own deadline (`timed`). No read timeout on the connection: it would also count
        // the time a pooled connection sat idle (a request on it then fails at once, as if the cluster were
        // unreachable) and cut the drift watches whenever a cluster is quiet for that long.
        config.connect_timeout = Some(self.cfg.timeout);
        config.write_timeout = Some(self.cfg.timeout);
        let client = member_client(config).map_err(|e| Error::Kubeconfig {
            cluster: cluster.clone(),
            message: first_line(&e.to_string()),
        })?;
        self.client = Some((fingerprint, client.clone()));
        self.discovered.clear();
        self.served.clear();
        self.empty_kinds.clear();
        self.verified.clear();
        self.istio = None;
        // Watches of the old connection end; the new one's start with the next pass.
        self.watch_kinds(&client, BTreeSet::new());
        self.fresh = true;
        Ok(client)
    }

    /// Whether the cluster serves `kind` (cached per connection; refreshed when asked again after a miss).
    async fn has_kind(&mut self, client: &Client, kind: &ResourceKind) -> Result<bool, Error> {
        if self.served.contains(kind) {
            return Ok(true);
        }
        let av = kind.api_version();
        if let Some((at, set)) = self.discovered.get(&av) {
            if set.as_ref().is_some_and(|s| s.contains(&kind.plural)) {
                self.served.insert(kind.clone());
                return Ok(true);
            }
            if at.elapsed() < DISCOVERY_RECHECK {
                return Ok(false);
            }
        }
        let list = if kind.group.is_empty() {
            timed(
                &self.cfg.cluster,
                self.cfg.timeout,
                client.list_core_api_resources(&kind.version),
            )
            .await
        } else {
            timed(
                &self.cfg.cluster,
                self.cfg.timeout,
                client.list_api_group_resources(&av),
            )
            .await
        };
        let set = match list {
            Ok(l) => Some(
                l.resources
                    .into_iter()
                    .map(|r| r.name)
                    .collect::<BTreeSet<_>>(),
            ),
            Err(Error::Kube(kube::Error::Api(s))) if s.code == 404 => None,
            Err(e) => return Err(e),
        };
        let present = set.as_ref().is_some_and(|s| s.contains(&kind.plural));
        self.discovered.insert(av, (Instant::now(), set));
        if present {
            self.served.insert(kind.clone());
        }
        Ok(present)
    }

    /// Watches exactly `kinds` (one watch per group and resource, whichever version names it): stops the
    /// watches of kinds no longer in it and forgets what they saw, starts the missing ones, leaves the others
    /// running. Each watch writes only to the cache entry of its own generation, so a stopped watch that is
    /// still finishing a step cannot touch what its successor fills.
    fn watch_kinds(&mut self, client: &Client, kinds: BTreeSet<ResourceKind>) {
        let mut wanted: BTreeMap<(String, String), ResourceKind> = BTreeMap::new();
        for k in &kinds {
            wanted
                .entry((k.group.clone(), k.plural.clone()))
                .or_insert_with(|| k.clone());
        }
        let gone: Vec<(String, String)> = self
            .watchers
            .keys()
            .filter(|id| !wanted.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(w) = self.watchers.remove(&id) {
                w.abort();
            }
            if let Ok(mut c) = self.cache.lock() {
                c.remove(&id);
            }
        }
        self.watched = kinds;
        for (id, k) in wanted {
            if self.watchers.contains_key(&id) {
                continue;
            }
            self.generation += 1;
            let generation = self.generation;
            if let Ok(mut c) = self.cache.lock() {
                c.insert(
                    id.clone(),
                    KindCache {
                        generation,
                        ..Default::default()
                    },
                );
            }
            let api = api_for(client, &k, None);
            let tx = self.drift_tx.clone();
            let cache = self.cache.clone();
            let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}");
            let cache_id = id.clone();
            let task = tokio::spawn(async move {
                use kube::runtime::watcher::Event;
                use kube::runtime::WatchStreamExt;
                // The server ends each watch after DRIFT_WATCH_SECONDS and it is resumed; a connection that
                // silently died is noticed a few seconds after that (kube's idle timeout).
                let cfg = kube::runtime::watcher::Config::default()
                    .labels(&selector)
                    .timeout(DRIFT_WATCH_SECONDS);
                let mut stream = kube::runtime::watcher(api, cfg).default_backoff().boxed();
                let key = |o: &DynamicObject| {
                    (
                        o.metadata.namespace.clone().filter(|_| k.namespaced),
                        o.metadata.name.clone().unwrap_or_default(),
                    )
                };
                let mut initialised = false;
                while let Some(ev) = stream.next().await {
                    // Serialized before taking the lock; poke after it is released.
                    let step = match ev {
                        Ok(Event::Init) => WatchStep::Init,
                        Ok(Event::InitApply(o)) => WatchStep::Put(key(&o), Cached::new(o), false),
                        Ok(Event::InitDone) => WatchStep::Done,
                        Ok(Event::Apply(o)) => {
                            // The echo of ksit's own apply carries the version the view already holds:
                            // nothing to do, not even serialising it.
                            let at = key(&o);
                            let held = cache.lock().ok().is_some_and(|c| {
                                c.get(&cache_id)
                                    .filter(|e| e.generation == generation)
                                    .and_then(|e| e.objects.get(&at))
                                    .is_some_and(|x| {
                                        o.metadata.resource_version.as_deref() == Some(&*x.version)
                                    })
                            });
                            if held {
                                continue;
                            }
                            WatchStep::Put(at, Cached::new(o), true)
                        }
                        Ok(Event::Delete(o)) => WatchStep::Gone(key(&o)),
                        Err(_) => WatchStep::Failed,
                    };
                    let changed = {
                        let Ok(mut c) = cache.lock() else { return };
                        match apply_step(&mut c, &cache_id, generation, step, &mut initialised) {
                            Some(changed) => changed,
                            None => return, // stopped: this kind is no longer watched, or watched anew
                        }
                    };
                    if changed && initialised {
                        let _ = tx.try_send(());
                    }
                }
            });
            self.watchers.insert(id, task);
        }
    }

    async fn reconcile(&mut self, plan: &ClusterPlan) -> ClusterReport {
        let mut report = ClusterReport {
            cluster: self.cfg.cluster.clone(),
            revision: plan.revision,
            reachable: false,
            error: None,
            objects: vec![],
            istio: None,
            writes: 0,
        };
        let client = match self.connect().await {
            Ok(c) => c,
            Err(e) => {
                log::warn!("{}: {e}", self.cfg.cluster);
                self.count_error(&e);
                report.error = Some(e.to_string());
                return report;
            }
        };
        match self.apply_all(&client, plan, &mut report).await {
            Ok(()) => report.reachable = true,
            Err(e) => {
                log::warn!("{}: {e}", self.cfg.cluster);
                self.count_error(&e);
                // A connection failure invalidates the cached client so the Secret is read again next time.
                self.client = None;
                report.error = Some(e.to_string());
            }
        }
        if report.reachable {
            // Istio's health changes rarely: looked at again once per resync (or after a failed look).
            let stale = self
                .istio
                .as_ref()
                .is_none_or(|(at, _)| at.elapsed() >= self.cfg.resync * 3 / 4);
            if stale {
                self.istio = self
                    .istio_health(&client)
                    .await
                    .ok()
                    .map(|h| (Instant::now(), h));
            }
            report.istio = self.istio.as_ref().map(|(_, h)| h.clone());
        }
        report
    }

    /// One pass: what the cluster holds is gathered (`observe`, `observe_labelled`), the pure planner decides
    /// (`plan::plan`), and the actions are carried out here.
    async fn apply_all(
        &mut self,
        client: &Client,
        plan: &ClusterPlan,
        report: &mut ClusterReport,
    ) -> Result<(), Error> {
        if self.fresh {
            // A new connection: watch the kinds about to be sent (those the cluster serves) before applying,
            // so their views fill while this pass works; the pass then settles which kinds stay watched.
            // Discovery is the first call that needs the cluster: if it is unreachable, nothing is started.
            let mut kinds = BTreeSet::new();
            for k in plan.objects.iter().map(|o| &o.kind) {
                if *k == ResourceKind::namespace_kind() || kinds.contains(k) {
                    continue;
                }
                match self.has_kind(client, k).await {
                    Ok(true) => {
                        kinds.insert(k.clone());
                    }
                    Ok(false) => {}
                    Err(e) if is_cluster_wide(&e) => return Err(e),
                    Err(_) => {}
                }
            }
            self.fresh = false;
            self.watch_kinds(client, kinds);
        }
        self.full_look = self
            .full_scan
            .is_none_or(|t| t.elapsed() >= self.cfg.resync * 3 / 4);
        if self.full_look {
            self.full_scan = Some(Instant::now());
        }
        let mut observed = Observed::default();
        // The live version each object was observed at, by its place in the plan.
        let mut versions: Vec<Option<Box<str>>> = Vec::with_capacity(plan.objects.len());
        for obj in &plan.objects {
            let (live, version) = self.observe(client, obj).await?;
            versions.push(version);
            observed.objects.push(live);
        }
        let looked = self.observe_labelled(client, plan, &mut observed).await?;
        let actions = plan::plan(plan, &observed);
        // Actions come first one per desired object in the plan's order: `place` is that place.

        let mut present_kinds = BTreeSet::new();
        let mut deleted: BTreeSet<Id> = BTreeSet::new();
        for (place, action) in actions.into_iter().enumerate() {
            match action {
                Action::Apply { object, create } => {
                    let outcome = match self.apply(client, &object, create, report).await {
                        Ok(()) => {
                            present_kinds.insert(object.kind.clone());
                            Outcome::Synced
                        }
                        Err(e) if is_cluster_wide(&e) => return Err(e),
                        Err(e) => {
                            self.verified.remove(&plan::id(&object.key()));
                            self.count_error(&e);
                            Outcome::Failed(e.to_string())
                        }
                    };
                    report.objects.push(ObjectReport {
                        key: object.key(),
                        outcome,
                    });
                }
                Action::Keep { object, why } => {
                    let version = versions.get_mut(place).and_then(Option::take);
                    match why {
                        Kept::CreateOnly => {
                            self.verified
                                .insert(plan::id(&object.key()), (Box::from(""), Box::from("")));
                        }
                        // Found as desired by comparing: remembered with the version it was compared
                        // at (an object already known as such keeps its entry).
                        Kept::AsDesired
                            if !matches!(observed.objects.get(place), Some(Live::Verified)) =>
                        {
                            if let Some(v) = version {
                                self.verified.insert(
                                    plan::id(&object.key()),
                                    (object.config_hash().into(), v),
                                );
                            }
                        }
                        _ => {}
                    }
                    if !present_kinds.contains(&object.kind) {
                        present_kinds.insert(object.kind.clone());
                    }
                    report.objects.push(ObjectReport {
                        key: object.key(),
                        outcome: Outcome::Synced,
                    });
                }
                Action::NotOwned { object, managers } => {
                    let e = Error::NotOwned {
                        object: object.key().to_string(),
                        detail: managers,
                    };
                    self.count_error(&e);
                    report.objects.push(ObjectReport {
                        key: object.key(),
                        outcome: Outcome::Failed(e.to_string()),
                    });
                }
                Action::Fail { object, error } => {
                    let message = match error {
                        Failure::MissingKind => {
                            let e = Error::MissingKind {
                                object: object.key().to_string(),
                            };
                            self.count_error(&e);
                            e.to_string()
                        }
                        Failure::Unreadable(m) => m,
                    };
                    report.objects.push(ObjectReport {
                        key: object.key(),
                        outcome: Outcome::Failed(message),
                    });
                }
                Action::Delete { key } => match self.delete(client, &key, report).await {
                    Ok(()) => {
                        deleted.insert(plan::id(&key));
                    }
                    Err(e) if is_cluster_wide(&e) => return Err(e),
                    Err(e) => log::warn!("{}: pruning {key}: {e}", self.cfg.cluster),
                },
            }
        }
        // Watched: the kinds ksit wants here, and any where its objects remain.
        let wanted_kinds: BTreeSet<(String, String)> = plan
            .objects
            .iter()
            .map(|o| (o.kind.group.clone(), o.kind.plural.clone()))
            .collect();
        for kind in looked {
            let gp = (kind.group.clone(), kind.plural.clone());
            let left = observed.labelled.iter().any(|l| {
                l.key.kind.group == kind.group
                    && l.key.kind.plural == kind.plural
                    && plan::owned(&l.meta)
                    && !deleted.contains(&plan::id(&l.key))
            });
            if left || wanted_kinds.contains(&gp) {
                self.empty_kinds.remove(&gp);
                present_kinds.insert(kind);
            } else {
                self.empty_kinds.insert(gp);
            }
        }
        present_kinds.remove(&ResourceKind::namespace_kind());
        // Watches that failed after their list are started anew (a fresh list makes their view trusted again).
        let failed: Vec<(String, String)> = self
            .cache
            .lock()
            .map(|c| {
                c.iter()
                    .filter(|(_, k)| k.failed)
                    .map(|(id, _)| id.clone())
                    .collect()
            })
            .unwrap_or_default();
        for id in &failed {
            if let Some(w) = self.watchers.remove(id) {
                w.abort();
            }
        }
        if present_kinds != self.watched || !failed.is_empty() {
            self.watch_kinds(client, present_kinds);
        }
        Ok(())
    }

    /// What the cluster holds in place of `obj`: from the drift watch's view when it is in sync (without even
    /// parsing it when its version has not moved since it was last found as desired), else read. Also its
    /// version, when the view had it. Only a cluster-wide failure is an error.
    async fn observe(
        &mut self,
        client: &Client,
        obj: &DesiredObject,
    ) -> Result<(Live, Option<Box<str>>), Error> {
        match self.has_kind(client, &obj.kind).await {
            Ok(true) => {}
            Ok(false) => return Ok((Live::KindMissing, None)),
            Err(e) if is_cluster_wide(&e) => return Err(e),
            Err(e) => {
                self.count_error(&e);
                return Ok((Live::Unreadable(e.to_string()), None));
            }
        }
        let i = plan::id(&obj.key());
        // A create-only object (a namespace, mostly) known to exist is not read again until the next full
        // look: it would never be written anyway.
        if obj.create_only && !self.full_look && self.verified.contains_key(&i) {
            return Ok((Live::Verified, None));
        }
        let seen = self.cache.lock().ok().and_then(|c| {
            let kind = c.get(&(obj.kind.group.clone(), obj.kind.plural.clone()))?;
            if !kind.ready {
                return None;
            }
            // In sync and not there: ksit's label is gone or it does not exist; ask the cluster.
            let o = kind
                .objects
                .get(&(obj.namespace.clone(), obj.name.clone()))?;
            let unchanged = self.verified.get(&i).is_some_and(|(hash, version)| {
                **hash == *obj.config_hash() && *version == o.version
            });
            let live = if unchanged {
                Live::Verified
            } else {
                Live::Present(o.parsed::<Value>()?)
            };
            Some((live, Some(o.version.clone())))
        });
        if let Some(found) = seen {
            return Ok(found);
        }
        let api = api_for(client, &obj.kind, obj.namespace.as_deref());
        match timed(&self.cfg.cluster, self.cfg.timeout, api.get_opt(&obj.name)).await {
            Ok(Some(o)) => Ok((
                Live::Present(serde_json::to_value(o).unwrap_or_default()),
                None,
            )),
            Ok(None) => Ok((Live::Absent, None)),
            Err(e) if is_cluster_wide(&e) => Err(e),
            Err(e) => {
                self.count_error(&e);
                Ok((Live::Unreadable(e.to_string()), None))
            }
        }
    }

    /// The ksit-labelled objects of the kinds ksit may prune, into `observed.labelled`: from the drift
    /// watch's view when in sync, else listed. A kind with nothing of ksit's at the last look is looked at
    /// only once per resync. Returns the kinds looked at that the cluster serves.
    async fn observe_labelled(
        &mut self,
        client: &Client,
        plan: &ClusterPlan,
        observed: &mut Observed,
    ) -> Result<Vec<ResourceKind>, Error> {
        let cluster = self.cfg.cluster.clone();
        let wanted: BTreeSet<Id> = plan.objects.iter().map(|o| plan::id(&o.key())).collect();
        let wanted_kinds: BTreeSet<(String, String)> = plan
            .objects
            .iter()
            .map(|o| (o.kind.group.clone(), o.kind.plural.clone()))
            .collect();
        let full_scan = self.full_look;
        let mut looked = Vec::new();
        for kind in plan.prune_kinds.iter() {
            if kind.kind == "Namespace" {
                continue;
            }
            let gp = (kind.group.clone(), kind.plural.clone());
            if !full_scan && !wanted_kinds.contains(&gp) && self.empty_kinds.contains(&gp) {
                continue;
            }
            // A failed look (e.g. a 500) skips pruning this kind this time; only losing the cluster ends the pass.
            match self.has_kind(client, kind).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) if is_cluster_wide(&e) => return Err(e),
                Err(e) => {
                    self.count_error(&e);
                    continue;
                }
            }
            // A live object's key: its namespace counts only for a namespaced kind.
            let live_key = |namespace: &Option<String>, name: &str| ObjectKey {
                kind: kind.clone(),
                namespace: namespace.clone().filter(|_| kind.namespaced),
                name: name.to_owned(),
            };
            // The drift watch's view when it is in sync, else a list. Wanted objects are left out of the view
            // unparsed: they are kept, and their kind is wanted, so they change nothing.
            let seen: Option<Vec<DynamicObject>> = self.cache.lock().ok().and_then(|c| {
                c.get(&gp).filter(|k| k.ready).map(|k| {
                    k.objects
                        .iter()
                        .filter(|((ns, name), _)| !wanted.contains(&plan::id(&live_key(ns, name))))
                        .filter_map(|(_, o)| o.parsed())
                        .collect()
                })
            });
            let items = match seen {
                Some(items) => items,
                None => {
                    let lp = ListParams::default()
                        .labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
                    match timed(
                        &cluster,
                        self.cfg.timeout,
                        api_for(client, kind, None).list(&lp),
                    )
                    .await
                    {
                        Ok(l) => l.items,
                        Err(e) if is_cluster_wide(&e) => return Err(e),
                        Err(e) => {
                            self.count_error(&e);
                            log::warn!("{cluster}: listing {} to prune: {e}", kind.plural);
                            continue;
                        }
                    }
                }
            };
            observed
                .labelled
                .extend(items.into_iter().map(|live| Labelled {
                    key: live_key(
                        &live.metadata.namespace,
                        live.metadata.name.as_deref().unwrap_or_default(),
                    ),
                    meta: live.metadata,
                }));
            looked.push(kind.clone());
        }
        Ok(looked)
    }

    /// Server-side applies `obj` (with force), keeps the answer in the drift view and remembers it as
    /// verified.
    async fn apply(
        &mut self,
        client: &Client,
        obj: &DesiredObject,
        create: bool,
        report: &mut ClusterReport,
    ) -> Result<(), Error> {
        let cluster = self.cfg.cluster.clone();
        let key = obj.key();
        let api = api_for(client, &obj.kind, obj.namespace.as_deref());
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let applied = timed(
            &cluster,
            self.cfg.timeout,
            api.patch(&obj.name, &pp, &Patch::Apply(&obj.manifest)),
        )
        .await
        .map_err(|e| match e {
            Error::Kube(kube::Error::Api(s)) => Error::Apply {
                object: key.to_string(),
                message: s.message,
            },
            other => other,
        })?;
        let cached = Cached::new(applied);
        self.verified.insert(
            plan::id(&key),
            (obj.config_hash().into(), cached.version.clone()),
        );
        // The next pass must not compare against what the watch has not delivered yet.
        if let Ok(mut c) = self.cache.lock() {
            if let Some(kind) = c.get_mut(&(obj.kind.group.clone(), obj.kind.plural.clone())) {
                kind.objects
                    .insert((obj.namespace.clone(), obj.name.clone()), cached);
            }
        }
        report.writes += 1;
        self.cfg
            .metrics
            .writes
            .get_or_create(&WriteLabels {
                cluster: cluster.clone(),
                verb: "apply".into(),
            })
            .inc();
        log::info!(
            "{cluster}: {} {key}",
            if create { "created" } else { "applied" }
        );
        Ok(())
    }

    async fn delete(
        &mut self,
        client: &Client,
        key: &ObjectKey,
        report: &mut ClusterReport,
    ) -> Result<(), Error> {
        let cluster = self.cfg.cluster.clone();
        let api = api_for(client, &key.kind, key.namespace.as_deref());
        match timed(
            &cluster,
            self.cfg.timeout,
            api.delete(&key.name, &DeleteParams::default()),
        )
        .await
        {
            Ok(_) => {
                report.writes += 1;
                self.cfg
                    .metrics
                    .writes
                    .get_or_create(&WriteLabels {
                        cluster: cluster.clone(),
                        verb: "delete".into(),
                    })
                    .inc();
                log::info!("{cluster}: pruned {key}");
                Ok(())
            }
            Err(Error::Kube(kube::Error::Api(s))) if s.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn istio_health(&mut self, client: &Client) -> Result<IstioHealth, Error> {
        use k8s_openapi::api::apps::v1::Deployment;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), "istio-system");
        let cluster = self.cfg.cluster.clone();
        let list = timed(
            &cluster,
            self.cfg.timeout,
            deployments.list(&ListParams::default()),
        )
        .await?;
        let available = |d: &Deployment| {
            d.status.as_ref().is_some_and(|s| {
                s.available_replicas.unwrap_or(0) > 0
                    || s.conditions.as_ref().is_some_and(|c| {
                        c.iter().any(|c| {
                            c.type_.as_deref() == Some("Available")
                                && c.status.as_deref() == Some("True")
                        })
                    })
            })
        };
        let istiod_available = list
            .items
            .iter()
            .any(|d| d.metadata.name.as_deref() == Some("istiod") && available(d));
        let ingress_gateway = list.items.iter().any(|d| {
            d.metadata.name.as_deref() == Some("istio-ingressgateway")
                || d.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("istio"))
                    .map(String::as_str)
                    == Some("ingressgateway")
        });
        let cluster_id = list
            .items
            .iter()
            .filter(|d| d.metadata.name.as_deref() == Some("istiod"))
            .flat_map(|d| d.spec.template.spec.iter())
            .flat_map(|p| p.containers.iter())
            .flat_map(|c| c.env.iter().flatten())
            .find(|e| e.name == "CLUSTER_ID")
            .and_then(|e| e.value.clone());
        Ok(IstioHealth {
            istiod_available,
            cluster_id,
            ingress_gateway,
        })
    }
}

/// A client for one member cluster: kube's own stack (base URI, auth, extra headers), over a hyper client
/// with small fixed read buffers and one idle connection kept. A worker holds a few long-lived connections
/// (one per drift watch) for as long as it runs: hyper's default read buffer, which grows to the largest
/// response a connection saw and keeps that size, was most of the controller's memory at a thousand
/// clusters.
fn member_client(config: Config) -> Result<Client, kube::Error> {
    use kube::client::ConfigExt;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    // A TLS configuration (about 14 KB each) only where the cluster is reached over TLS.
    if config.cluster_url.scheme_str() == Some("http") {
        client_over(http, config)
    } else {
        let https = config.rustls_https_connector_with_connector(http)?;
        client_over(https, config)
    }
}

fn client_over<C>(connector: C, config: Config) -> Result<Client, kube::Error>
where
    C: tower::Service<hyper::Uri> + Clone + Send + Sync + 'static,
    C::Response: hyper_util::client::legacy::connect::Connection
        + hyper::rt::Read
        + hyper::rt::Write
        + Send
        + Unpin
        + 'static,
    C::Future: Send + 'static,
    C::Error: Into<tower::BoxError>,
{
    use kube::client::ConfigExt;
    use tower::ServiceBuilder;
    let mut connector = hyper_timeout::TimeoutConnector::new(connector);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    let hyper = hyper_util::client::legacy::Builder::new(hyper_util::rt::TokioExecutor::new())
        .http1_read_buf_exact_size(MEMBER_READ_BUFFER)
        .pool_max_idle_per_host(1)
        .build(connector);
    let retry = config
        .default_retry
        .then(|| tower::retry::RetryLayer::new(kube::client::retry::RetryPolicy::server_retry()));
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(retry)
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(|e: hyper_util::client::legacy::Error| Box::new(e) as tower::BoxError)
        .service(hyper);
    Ok(Client::new(service, config.default_namespace))
}

/// The read buffer of each connection to a member (hyper's adaptive default starts at 8 KiB and grows).
const MEMBER_READ_BUFFER: usize = 2048;

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

#[cfg(test)]
mod spread_tests {
    use super::*;

    #[test]
    fn resyncs_are_spread_over_a_fifth_either_side() {
        let r = Duration::from_secs(300);
        let waits: Vec<Duration> = (0..100).map(|i| spread(r, &format!("c{i}"), 1)).collect();
        assert!(waits.iter().all(|w| *w >= r * 4 / 5 && *w <= r * 6 / 5));
        // Both sides of the period, spread out.
        assert!(waits.iter().filter(|w| **w < r * 9 / 10).count() > 10);
        assert!(waits.iter().filter(|w| **w > r * 11 / 10).count() > 10);
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(distinct.len() > 70, "{} distinct waits", distinct.len());
        // Reproducible, and a cluster's next round differs.
        assert_eq!(spread(r, "c1", 1), spread(r, "c1", 1));
        assert_ne!(spread(r, "c1", 1), spread(r, "c1", 2));
    }
}

#[cfg(test)]
mod drift_cache_tests {
    use super::*;

    fn object(name: &str) -> Cached {
        let o: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "apps",
                         "managedFields": [{"manager": "ksit", "operation": "Apply", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"hosts": ["a"]}
        }))
        .expect("a VirtualService");
        Cached::new(o)
    }

    fn at(name: &str) -> (Option<String>, String) {
        (Some("apps".into()), name.into())
    }

    fn id() -> (String, String) {
        ("networking.istio.io".into(), "virtualservices".into())
    }

    fn cache_of(generation: u64) -> BTreeMap<(String, String), KindCache> {
        let mut c = BTreeMap::new();
        c.insert(
            id(),
            KindCache {
                generation,
                ..Default::default()
            },
        );
        c
    }

    #[test]
    fn a_watch_fills_its_own_entry_and_pokes_only_on_live_changes() {
        let mut c = cache_of(3);
        let mut init = false;
        let mut step = |c: &mut BTreeMap<_, _>, s| apply_step(c, &id(), 3, s, &mut init);
        assert_eq!(step(&mut c, WatchStep::Init), Some(false));
        assert_eq!(
            step(&mut c, WatchStep::Put(at("a"), object("a"), false)),
            Some(false)
        );
        assert!(!c[&id()].ready, "not ready before the list is complete");
        assert_eq!(step(&mut c, WatchStep::Done), Some(false));
        assert!(c[&id()].ready);
        assert_eq!(
            step(&mut c, WatchStep::Put(at("b"), object("b"), true)),
            Some(true)
        );
        assert_eq!(step(&mut c, WatchStep::Gone(at("a"))), Some(true));
        let names: Vec<&String> = c[&id()].objects.keys().map(|(_, n)| n).collect();
        assert_eq!(names, vec!["b"]);
        assert_eq!(step(&mut c, WatchStep::Failed), Some(false));
        assert!(
            !c[&id()].ready && c[&id()].failed,
            "a failure after the list: not trusted"
        );
        // The cached text keeps the managers' names, not their field sets.
        let kept = &c[&id()].objects[&at("b")].text;
        assert!(
            kept.contains("\"manager\":\"ksit\"") && !kept.contains("f:spec"),
            "{kept}"
        );
    }

    #[test]
    fn the_echo_of_an_apply_does_not_poke() {
        let mut c = cache_of(3);
        let mut init = false;
        let mut step = |c: &mut BTreeMap<_, _>, s| apply_step(c, &id(), 3, s, &mut init);
        step(&mut c, WatchStep::Init);
        step(&mut c, WatchStep::Done);
        // What `apply_one` stores from the apply's answer, then the watch delivering the same object.
        if let Some(k) = c.get_mut(&id()) {
            k.objects.insert(at("a"), object("a"));
        }
        assert_eq!(
            step(&mut c, WatchStep::Put(at("a"), object("a"), true)),
            Some(false)
        );
        // Someone else's change to it, then its echo again (the same change seen twice pokes once).
        let mut changed = object("a");
        changed.text = changed
            .text
            .replace("\"hosts\":[\"a\"]", "\"hosts\":[\"z\"]")
            .into();
        assert_ne!(changed.text, object("a").text, "the test edits the object");
        let again = Cached {
            text: changed.text.clone(),
            version: changed.version.clone(),
        };
        assert_eq!(
            step(&mut c, WatchStep::Put(at("a"), changed, true)),
            Some(true)
        );
        assert_eq!(
            step(&mut c, WatchStep::Put(at("a"), again, true)),
            Some(false)
        );
    }

    #[test]
    fn a_stopped_watch_cannot_write_to_its_successors_entry() {
        // The kind was watched anew: the entry now belongs to watch 5, and watch 4 is still finishing a step.
        let mut c = cache_of(5);
        let mut init = true;
        for s in [
            WatchStep::Init,
            WatchStep::Put(at("stale"), object("stale"), true),
            WatchStep::Done,
            WatchStep::Gone(at("stale")),
            WatchStep::Failed,
        ] {
            assert_eq!(apply_step(&mut c, &id(), 4, s, &mut init), None);
        }
        let e = &c[&id()];
        assert!(e.objects.is_empty() && !e.ready && !e.failed);
        // Watch 5 itself writes.
        let mut init5 = false;
        assert_eq!(
            apply_step(
                &mut c,
                &id(),
                5,
                WatchStep::Put(at("x"), object("x"), false),
                &mut init5
            ),
            Some(false)
        );
        assert_eq!(c[&id()].objects.len(), 1);
        // A kind no longer watched (its entry removed): every step ends the watch.
        c.clear();
        assert_eq!(
            apply_step(&mut c, &id(), 5, WatchStep::Done, &mut init5),
            None
        );
        assert!(
            c.is_empty(),
            "a stopped watch does not bring its entry back"
        );
    }
}
