//! `ksit controller`: wiring. Watches the hub, computes the desired state, feeds one worker per member
//! cluster, and writes status, all only while this replica holds the leader Lease.

use crate::desired::{self, Desired};
use crate::error::Error;
use crate::hub::{HubReader, HubState};
use crate::leader::LeaderElector;
use crate::member::{ClusterPlan, ClusterReport, Worker, WorkerConfig};
use crate::metrics::Metrics;
use crate::module::ModuleArgs;
use crate::resources::{BindingPolicy, Integration, IntegrationTarget, TrafficPolicy};
use crate::server::{self, ServerState};
use crate::status::{StatusWriter, View};
use futures::StreamExt;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Api, Client, Config};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Hub kubeconfig (default: $KUBECONFIG, ~/.kube/config, or the in-cluster service account).
    #[arg(long, env = "KSIT_HUB_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Address of the /healthz, /readyz, /metrics and /modules endpoint.
    #[arg(long, env = "KSIT_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub module: ModuleArgs,
    /// Namespace of the leader Lease and of events about cluster-scoped objects.
    #[arg(long, env = "POD_NAMESPACE", default_value = "ksit-system")]
    pub namespace: String,
    /// Namespaces whose IntegrationTargets (and kubeconfig Secrets) are used; repeat; default all.
    #[arg(
        long = "target-namespace",
        env = "KSIT_TARGET_NAMESPACES",
        value_delimiter = ','
    )]
    pub target_namespaces: Vec<String>,
    /// KubeStellar owns BindingPolicies here: it copies the selected objects and reports on the bindings;
    /// ksit only renders each bound TrafficPolicy's WasmPlugin and VirtualService and pushes them itself.
    #[arg(long)]
    pub kubestellar_owns_bindings: bool,
    /// Who delivers ksit's objects to the member clusters. `push`: ksit applies them to every bound cluster
    /// with the kubeconfig Secrets. `kubestellar`: ksit writes the WasmPlugins and VirtualServices, one set
    /// for every cluster, on the hub (KubeStellar's WDS) with a companion BindingPolicy `ksit-B` per
    /// BindingPolicy `B` that sends TrafficPolicies, talks to no member cluster, and takes status from what
    /// KubeStellar reports (needs manifests/install/rbac-kubestellar.yaml on the hub).
    #[arg(long, value_enum, default_value = "push", env = "KSIT_DELIVER")]
    pub deliver: Delivery,
    /// Full resync of every cluster this often, even without changes.
    #[arg(long, default_value = "300")]
    pub resync_seconds: u64,
    /// Timeout of each call to a member cluster.
    #[arg(long, default_value = "10")]
    pub member_timeout_seconds: u64,
    /// Deadline of each read of the hub (the lists one reconcile makes) and of each pass writing status to
    /// it: a hub that stops answering is reported and retried instead of stalling the loop.
    #[arg(long, default_value = "30")]
    pub hub_timeout_seconds: u64,
    /// This replica's name in the leader Lease (default: hostname and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Lease duration; a replica takes over this long after the leader stops renewing.
    #[arg(long, default_value = "15")]
    pub lease_seconds: u64,
}

/// Who delivers ksit's objects to the member clusters (`--deliver`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Delivery {
    /// ksit applies them to every bound cluster itself.
    #[default]
    Push,
    /// KubeStellar does, from the objects ksit writes on the hub.
    Kubestellar,
}

pub fn run(args: ControllerArgs) -> anyhow::Result<()> {
    crate::memory::limit_arenas(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(args))
}

async fn hub_client(args: &ControllerArgs) -> anyhow::Result<Client> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)?;
            Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

pub async fn run_async(args: ControllerArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    run_async_on(args, listener).await
}

/// [`run_async`] serving on a listener the caller has bound (`args.listen` is not used), so a caller that
/// needs the port before the controller starts (the demo's module URL) holds it throughout.
pub async fn run_async_on(
    args: ControllerArgs,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    let client = hub_client(&args).await?;
    let (module, settings) = args.module.settings()?;
    if args.deliver == Delivery::Kubestellar && settings.per_cluster {
        anyhow::bail!("--deliver kubestellar sends one set of objects to every cluster a binding selects; it cannot be combined with --per-cluster-rendering");
    }
    let metrics = Arc::new(Metrics::default());
    let state = Arc::new(ServerState {
        metrics: metrics.clone(),
        module,
        ready: Default::default(),
    });
    let server = tokio::spawn(server::serve(listener, state.clone()));
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "ksit".into());
        format!("{host}-{}", std::process::id())
    });
    let lease_for = Duration::from_secs(args.lease_seconds.max(3));
    let elector = LeaderElector::new(
        client.clone(),
        &args.namespace,
        "ksit-controller",
        identity.clone(),
        lease_for,
    );
    log::info!(
        "ksit controller {identity} starting; waiting for the leader Lease {}/ksit-controller",
        args.namespace
    );
    loop {
        if server.is_finished() {
            anyhow::bail!("the HTTP server stopped");
        }
        match elector.try_acquire().await {
            Ok(true) => {}
            Ok(false) => {
                tokio::time::sleep(lease_for / 3).await;
                continue;
            }
            Err(e) => {
                log::warn!("leader election: {e}");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        }
        log::info!("{identity} is the leader");
        metrics.leader.set(1);
        let work = tokio::spawn(lead(
            client.clone(),
            args.clone(),
            settings.clone(),
            metrics.clone(),
            state.clone(),
        ));
        // If this future is dropped (the process shutting down, or a test stopping it), the work stops too.
        let _stop_work = AbortOnDrop::handle(work.abort_handle());
        // Renew every third of the Lease. A failed renewal is retried until two thirds of the Lease have
        // passed since the last success (as client-go's renew deadline); then, or when another replica
        // holds the Lease, every write stops at once, well before anyone else may take over.
        // A renewal that hangs counts as failed when the deadline comes; a success counts from when it was
        // sent (the time the Lease records), not from when the answer came.
        let mut renewed = tokio::time::Instant::now();
        let mut wait = lease_for / 3;
        loop {
            tokio::time::sleep(wait).await;
            if work.is_finished() {
                break;
            }
            let deadline = renewed + lease_for * 2 / 3;
            let sent = tokio::time::Instant::now();
            match tokio::time::timeout_at(deadline, elector.try_acquire()).await {
                Ok(Ok(true)) => {
                    renewed = sent;
                    wait = lease_for / 3;
                    continue;
                }
                Ok(Ok(false)) => log::warn!("{identity} lost the leader Lease"),
                Ok(Err(e)) if tokio::time::Instant::now() + lease_for / 12 < deadline => {
                    log::warn!("{identity} could not renew the leader Lease, retrying: {e}");
                    wait = lease_for / 12;
                    continue;
                }
                Ok(Err(e)) => {
                    log::warn!("{identity} could not renew the leader Lease in time: {e}")
                }
                Err(_) => log::warn!("{identity} could not renew the leader Lease in time"),
            }
            break;
        }
        work.abort();
        let result = work.await;
        metrics.leader.set(0);
        state.ready.store(false, Ordering::Relaxed);
        if let Ok(Err(e)) = result {
            log::error!("controller stopped: {e:#}");
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

struct ClusterWorker {
    plans: watch::Sender<Arc<ClusterPlan>>,
    task: JoinHandle<()>,
    secret_namespace: String,
}

impl Drop for ClusterWorker {
    /// A worker never outlives its leader: when leadership ends, its writes end with it.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Spawns a watch on `api` that pokes `tx` on every change, except one to an object's status alone (its
/// status, resourceVersion and managedFields aside, the object is as it was): those are ksit's own status
/// writes, which decide nothing, and at a thousand clusters each would cost a hub read and a status pass.
fn poke_on_change<K>(api: Api<K>, tx: mpsc::Sender<()>) -> JoinHandle<()>
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
        + Send
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    use kube::runtime::watcher::Event;
    tokio::spawn(async move {
        let mut s = kube::runtime::watcher(api, Default::default()).boxed();
        // uid -> fingerprint of what decides something.
        let mut seen: BTreeMap<String, u64> = BTreeMap::new();
        while let Some(ev) = s.next().await {
            let changed = match ev {
                Ok(Event::Apply(o)) | Ok(Event::InitApply(o)) => {
                    let uid = o.meta().uid.clone().unwrap_or_default();
                    let fingerprint = decisive_fingerprint(&o);
                    seen.insert(uid, fingerprint) != Some(fingerprint)
                }
                Ok(Event::Delete(o)) => {
                    seen.remove(o.meta().uid.as_deref().unwrap_or_default());
                    true
                }
                Ok(Event::Init) | Ok(Event::InitDone) => false,
                Err(_) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    false
                }
            };
            if changed {
                let _ = tx.try_send(());
            }
        }
    })
}

/// A hash of an object without its status, resourceVersion and managedFields.
fn decisive_fingerprint<K: serde::Serialize>(o: &K) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut v = serde_json::to_value(o).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.remove("status");
    }
    if let Some(m) = v
        .get_mut("metadata")
        .and_then(serde_json::Value::as_object_mut)
    {
        m.remove("resourceVersion");
        m.remove("managedFields");
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.to_string().hash(&mut h);
    h.finish()
}

/// The shortest time between two status writes prompted by cluster reports: 200 ms, and half a millisecond
/// more per cluster (a status pass costs about that much per cluster on the controller and on the hub, so
/// at a thousand clusters, reports of one change are written twice or so, not five times).
fn status_every(clusters: usize) -> Duration {
    Duration::from_millis(200) + Duration::from_micros(500) * clusters as u32
}

/// The shortest time between the starts of two hub reads prompted by hub events.
const HUB_READ_EVERY: Duration = Duration::from_millis(30);

/// The leader's work: runs until aborted.
async fn lead(
    client: Client,
    args: ControllerArgs,
    settings: desired::RenderSettings,
    metrics: Arc<Metrics>,
    server: Arc<ServerState>,
) -> anyhow::Result<()> {
    let (poke_tx, mut poke_rx) = mpsc::channel::<()>(1);
    let mut trimmer = crate::memory::Trimmer::new(Duration::from_secs(1));
    let mut fixed = vec![
        poke_on_change(Api::<TrafficPolicy>::all(client.clone()), poke_tx.clone()),
        poke_on_change(
            Api::<IntegrationTarget>::all(client.clone()),
            poke_tx.clone(),
        ),
        poke_on_change(Api::<Integration>::all(client.clone()), poke_tx.clone()),
        poke_on_change(
            Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone()),
            poke_tx.clone(),
        ),
        // Cluster properties for KubeStellar's template expansion.
        poke_on_change(
            Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(
                client.clone(),
                crate::template::PROPERTIES_NAMESPACE,
            ),
            poke_tx.clone(),
        ),
    ];
    // Bindings decide where TrafficPolicies go, whoever copies the other objects.
    fixed.push(poke_on_change(
        Api::<BindingPolicy>::all(client.clone()),
        poke_tx.clone(),
    ));
    let delivered_by_kubestellar = args.deliver == Delivery::Kubestellar;
    if delivered_by_kubestellar {
        // KubeStellar's report on a companion (its Binding) is a change of status.
        let bindings = crate::member::api_resource(&desired::ResourceKind::new(
            "control.kubestellar.io",
            "v1alpha1",
            "Binding",
            "bindings",
            false,
        ));
        let api: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &bindings);
        let tx = poke_tx.clone();
        fixed.push(tokio::spawn(async move {
            let cfg = kube::runtime::watcher::Config::default();
            let mut s = kube::runtime::watcher(api, cfg).boxed();
            while let Some(ev) = s.next().await {
                if ev.is_ok() {
                    let _ = tx.try_send(());
                } else {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }));
    }
    let _guard = AbortOnDrop::tasks(fixed);
    let mut dynamic: BTreeMap<desired::ResourceKind, JoinHandle<()>> = BTreeMap::new();
    let mut dynamic_guard = AbortOnDrop(Vec::new());
    let mut reader = HubReader::new(
        client.clone(),
        args.target_namespaces.clone(),
        !args.kubestellar_owns_bindings && !delivered_by_kubestellar,
        settings.gateway_namespace.clone(),
    );
    let reporter = Reporter {
        controller: "ksit-controller".into(),
        instance: args.identity.clone(),
    };
    let mut status = StatusWriter::new(client.clone(), Recorder::new(client.clone(), reporter));
    let (report_tx, mut report_rx) = mpsc::channel::<ClusterReport>(64);
    let passes = Arc::new(tokio::sync::Semaphore::new(
        crate::member::CONCURRENT_PASSES,
    ));
    let mut workers: BTreeMap<String, ClusterWorker> = BTreeMap::new();
    let mut plans: BTreeMap<String, Arc<ClusterPlan>> = BTreeMap::new();
    let mut reports: BTreeMap<String, ClusterReport> = BTreeMap::new();
    let mut state = HubState::default();
    let mut want = Desired::default();
    let mut revision = 0u64;
    let mut resync = tokio::time::interval(Duration::from_secs(args.resync_seconds.max(1)));
    let mut hub_dirty = true;
    let hub_timeout = Duration::from_secs(args.hub_timeout_seconds.max(1));
    // When status was last written, and when reports that changed it are next written.
    let mut status_written = tokio::time::Instant::now();
    let mut status_due: Option<tokio::time::Instant> = None;
    // When the hub was last read.
    let mut hub_read = tokio::time::Instant::now();
    loop {
        if hub_dirty {
            hub_dirty = false;
            hub_read = tokio::time::Instant::now();
            let read = tokio::time::timeout(hub_timeout, reader.load()).await;
            match read.unwrap_or_else(|_| {
                Err(Error::Timeout {
                    cluster: "hub".into(),
                    seconds: hub_timeout.as_secs(),
                })
            }) {
                Ok(s) => {
                    state = s;
                    want = desired::compute(&state.hub, &settings);
                    // Watch every distributed kind on the hub too, so a change there is picked up at once.
                    let kinds: BTreeSet<_> =
                        state.hub.objects.iter().map(|o| o.kind.clone()).collect();
                    dynamic.retain(|k, h| {
                        let keep = kinds.contains(k);
                        if !keep {
                            h.abort();
                        }
                        keep
                    });
                    for k in kinds {
                        dynamic.entry(k.clone()).or_insert_with(|| {
                            let api: Api<kube::api::DynamicObject> =
                                Api::all_with(client.clone(), &crate::member::api_resource(&k));
                            let tx = poke_tx.clone();
                            tokio::spawn(async move {
                                let mut s = kube::runtime::watcher(api, Default::default()).boxed();
                                while let Some(ev) = s.next().await {
                                    if ev.is_ok() {
                                        let _ = tx.try_send(());
                                    } else {
                                        tokio::time::sleep(Duration::from_secs(1)).await;
                                    }
                                }
                            })
                        });
                    }
                    dynamic_guard.0 = dynamic.values().map(JoinHandle::abort_handle).collect();
                    revision += 1;
                    if delivered_by_kubestellar {
                        let delivered = tokio::time::timeout(
                            hub_timeout,
                            deliver(&client, &state, &want, revision),
                        )
                        .await
                        .unwrap_or_else(|_| {
                            Err(Error::Timeout {
                                cluster: "hub".into(),
                                seconds: hub_timeout.as_secs(),
                            })
                        });
                        match delivered {
                            Ok((p, r)) => {
                                plans = p;
                                reports = r;
                            }
                            Err(e) => {
                                log::warn!("delivering through KubeStellar: {e}");
                                metrics.count_error("hub", &e);
                                hub_dirty = true;
                            }
                        }
                        metrics.clusters_total.set(plans.len() as i64);
                    } else {
                        update_workers(
                            &args,
                            &client,
                            &metrics,
                            &state,
                            &want,
                            revision,
                            &mut workers,
                            &mut plans,
                            &report_tx,
                            &passes,
                        );
                        reports.retain(|c, _| workers.contains_key(c));
                        metrics.clusters_total.set(workers.len() as i64);
                    }
                    server.ready.store(true, Ordering::Relaxed);
                }
                Err(e) => {
                    log::warn!("reading the hub: {e}");
                    metrics.count_error("hub", &e);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    hub_dirty = true;
                }
            }
            let view = View {
                state: &state,
                desired: &want,
                plans: &plans,
                reports: &reports,
                delivered_by_kubestellar,
                per_cluster_rendering: settings.per_cluster,
            };
            write_status(&mut status, &view, hub_timeout, &metrics).await;
            status_written = tokio::time::Instant::now();
            status_due = None;
        }
        let due = status_due;
        tokio::select! {
            Some(()) = poke_rx.recv() => {
                // A change is read at once; a burst of hub events is read at most every HUB_READ_EVERY
                // (the events that come meanwhile are one read).
                tokio::time::sleep_until(hub_read + HUB_READ_EVERY).await;
                while poke_rx.try_recv().is_ok() {}
                hub_dirty = true;
            }
            Some(r) = report_rx.recv() => {
                let mut changed = reports.get(&r.cluster) != Some(&r);
                reports.insert(r.cluster.clone(), r);
                while let Ok(r) = report_rx.try_recv() {
                    changed |= reports.get(&r.cluster) != Some(&r);
                    reports.insert(r.cluster.clone(), r);
                }
                if changed && status_due.is_none() {
                    // Reports of one change trickle in from every cluster: status is written at most every
                    // status_every meanwhile, not once per report.
                    status_due = Some((status_written + status_every(plans.len())).max(tokio::time::Instant::now()));
                }
            }
            _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                let view = View { state: &state, desired: &want, plans: &plans, reports: &reports, delivered_by_kubestellar, per_cluster_rendering: settings.per_cluster };
                write_status(&mut status, &view, hub_timeout, &metrics).await;
                status_written = tokio::time::Instant::now();
                status_due = None;
            }
            _ = resync.tick() => hub_dirty = true,
        }
        // Detached: the trim runs on the blocking pool while the loop goes on.
        drop(trimmer.maybe_trim());
    }
}

/// One delivery through KubeStellar: the hub brought to what the TrafficPolicies render, then what
/// KubeStellar reports on it, as plans and reports per cluster for the status writer.
async fn deliver(
    client: &Client,
    state: &HubState,
    want: &Desired,
    revision: u64,
) -> Result<
    (
        BTreeMap<String, Arc<ClusterPlan>>,
        BTreeMap<String, ClusterReport>,
    ),
    Error,
> {
    let set = crate::delivery::plan(&state.hub.bindings, want);
    let synced = crate::delivery::sync(client, &set).await?;
    for e in &synced.errors {
        log::warn!("hub: {e}");
    }
    let ks = crate::delivery::read_kubestellar(client, &set).await?;
    let reports = crate::delivery::reports(want, &set, &ks, revision);
    let plans = want
        .clusters
        .iter()
        .filter(|(c, _)| reports.contains_key(*c))
        .map(|(c, cd)| {
            (
                c.clone(),
                Arc::new(ClusterPlan {
                    objects: cd.objects.clone(),
                    retain: Arc::new(want.retain.clone()),
                    prune_kinds: Arc::default(),
                    revision,
                }),
            )
        })
        .collect();
    Ok((plans, reports))
}

/// Writes status for `view` to the hub within `limit`; a pass cut short is written again on the next change
/// or resync (each write compares with what the hub has).
async fn write_status(
    status: &mut StatusWriter,
    view: &View<'_>,
    limit: Duration,
    metrics: &Metrics,
) {
    // Counted here, once per status pass: per batch of reports it was O(clusters) each time.
    metrics
        .clusters_ready
        .set(crate::status::ready_clusters(view.reports, view.plans) as i64);
    if tokio::time::timeout(limit, status.write_all(view))
        .await
        .is_err()
    {
        log::warn!(
            "writing status to the hub: no answer within {}s; written again on the next change",
            limit.as_secs()
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn update_workers(
    args: &ControllerArgs,
    client: &Client,
    metrics: &Arc<Metrics>,
    state: &HubState,
    want: &Desired,
    revision: u64,
    workers: &mut BTreeMap<String, ClusterWorker>,
    plans: &mut BTreeMap<String, Arc<ClusterPlan>>,
    report_tx: &mpsc::Sender<ClusterReport>,
    passes: &Arc<tokio::sync::Semaphore>,
) {
    let targets: BTreeMap<&str, String> = state
        .targets
        .iter()
        .map(|t| {
            (
                t.spec.cluster_name.as_str(),
                kube::ResourceExt::namespace(t).unwrap_or_default(),
            )
        })
        .collect();
    workers.retain(|c, w| {
        let keep = targets.get(c.as_str()) == Some(&w.secret_namespace);
        if !keep {
            w.task.abort();
            plans.remove(c);
        }
        keep
    });
    // Held once for every cluster's plan.
    let retain = Arc::new(want.retain.clone());
    let prune_kinds = Arc::new(state.prune_kinds.clone());
    for (cluster, ns) in targets {
        let objects = want
            .clusters
            .get(cluster)
            .map(|c| c.objects.clone())
            .unwrap_or_default();
        let same = plans.get(cluster).is_some_and(|p| {
            p.objects == objects && p.retain == retain && p.prune_kinds == prune_kinds
        });
        if same && workers.contains_key(cluster) {
            continue;
        }
        let plan = Arc::new(ClusterPlan {
            objects,
            retain: retain.clone(),
            prune_kinds: prune_kinds.clone(),
            revision,
        });
        plans.insert(cluster.to_string(), plan.clone());
        match workers.get(cluster) {
            Some(w) => {
                let _ = w.plans.send(plan);
            }
            None => {
                let (tx, rx) = watch::channel(plan);
                let worker = Worker::new(WorkerConfig {
                    cluster: cluster.to_string(),
                    secret_namespace: ns.clone(),
                    hub: client.clone(),
                    timeout: Duration::from_secs(args.member_timeout_seconds.max(1)),
                    resync: Duration::from_secs(args.resync_seconds.max(1)),
                    metrics: metrics.clone(),
                    passes: passes.clone(),
                });
                let task = tokio::spawn(worker.run(rx, report_tx.clone()));
                workers.insert(
                    cluster.to_string(),
                    ClusterWorker {
                        plans: tx,
                        task,
                        secret_namespace: ns,
                    },
                );
            }
        }
    }
}

/// Aborts the tasks it holds when dropped (a dropped JoinHandle alone leaves its task running).
struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl AbortOnDrop {
    fn tasks(handles: Vec<JoinHandle<()>>) -> Self {
        AbortOnDrop(handles.iter().map(JoinHandle::abort_handle).collect())
    }
    fn handle(h: tokio::task::AbortHandle) -> Self {
        AbortOnDrop(vec![h])
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}
