//! ksit-emulator: an in-memory Kubernetes API **emulator** (not an API server) serving real HTTP on
//! 127.0.0.1, so the controller's tests can run where no API server can be installed. One instance per
//! cluster. See README.md for what it implements and how it differs from a real API server.

pub mod fields;
pub mod selector;
pub mod store;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use store::{ApiError, Store};
use tokio::sync::{broadcast, watch};

type Body = BoxBody<Bytes, Infallible>;

/// What can go wrong when starting an emulator or loading definitions into it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("emulator I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("emulator: invalid YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    /// Refused as the API would refuse it (the message is the Status message).
    #[error("emulator: {code} {reason}: {message}")]
    Api {
        code: u16,
        reason: String,
        message: String,
    },
    #[error("emulator: {0}")]
    Other(String),
}

impl From<ApiError> for Error {
    fn from(e: ApiError) -> Self {
        Error::Api {
            code: e.code,
            reason: e.reason.to_string(),
            message: e.message,
        }
    }
}

/// One API request as the emulator saw it (for comparing a client's calls with its RBAC).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestRecord {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
}

/// Counters of what clients did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Mutating requests received (POST, PUT, PATCH, DELETE), whatever their effect.
    pub writes: u64,
    /// Objects that requests changed (whose resourceVersion moved: created, modified or deleted). A
    /// no-op apply is a write but no change; deleting a namespace changes every object in it.
    pub changes: u64,
    /// Writes by verb (create, update, patch, delete).
    pub by_verb: BTreeMap<String, u64>,
    /// Effective changes by the verb of the request that made them.
    pub changes_by_verb: BTreeMap<String, u64>,
}

/// Failures the emulator can be told to produce (see [`Emulator::faults`]).
#[derive(Default)]
pub struct Faults {
    error_permille: AtomicU64,
    conflict_permille: AtomicU64,
    latency_ms: AtomicU64,
    rng: AtomicU64,
    /// Ends every open watch stream: cleanly (false) or with an ERROR event first (true).
    drop_watches: Option<broadcast::Sender<bool>>,
    down: Option<watch::Sender<bool>>,
    emulator: Weak<Inner>,
}

impl Faults {
    /// Answers this share (0.0 to 1.0) of non-watch requests with 500.
    pub fn set_error_rate(&self, rate: f64) {
        self.error_permille
            .store((rate.clamp(0.0, 1.0) * 1000.0) as u64, Ordering::Relaxed);
    }
    /// Answers this share (0.0 to 1.0) of writes (create, update, patch, delete) with 409 Conflict, as a
    /// real API server does when an object changed under an update or another manager holds a field.
    pub fn set_conflict_rate(&self, rate: f64) {
        self.conflict_permille
            .store((rate.clamp(0.0, 1.0) * 1000.0) as u64, Ordering::Relaxed);
    }
    /// Delays every request.
    pub fn set_latency(&self, d: Duration) {
        self.latency_ms
            .store(d.as_millis() as u64, Ordering::Relaxed);
    }
    /// Ends every open watch stream now.
    pub fn drop_watches(&self) {
        if let Some(tx) = &self.drop_watches {
            let _ = tx.send(false);
        }
    }
    /// Ends every open watch stream with an ERROR event (a 500 Status), as a real server does when a watch
    /// breaks on its side; clients resume from the last version they saw.
    pub fn fail_watches(&self) {
        if let Some(tx) = &self.drop_watches {
            let _ = tx.send(true);
        }
    }
    /// Down: the port refuses connections and open ones (watches included) are closed. Up: serves again
    /// on the same port, with everything it stored.
    pub fn set_down(&self, down: bool) {
        if let Some(tx) = &self.down {
            let _ = tx.send(down);
        }
    }
    /// Whether the emulator is down (see [`Faults::set_down`]).
    pub fn is_down(&self) -> bool {
        self.down.as_ref().is_some_and(|d| *d.borrow())
    }
    /// Restarts the error-rate generator from `seed` (the same seed gives the same failures).
    pub fn set_seed(&self, seed: u64) {
        self.rng.store(seed | 1, Ordering::Relaxed);
    }
    /// Deletes every object (kinds, i.e. CRDs, stay): a member that comes back empty. Watchers see the
    /// deletions. Same as [`Emulator::wipe`].
    pub fn wipe(&self) {
        if let Some(inner) = self.emulator.upgrade() {
            inner.wipe();
        }
    }
    fn roll_error(&self) -> bool {
        self.roll(self.error_permille.load(Ordering::Relaxed))
    }
    fn roll_conflict(&self) -> bool {
        self.roll(self.conflict_permille.load(Ordering::Relaxed))
    }
    fn roll(&self, p: u64) -> bool {
        if p == 0 {
            return false;
        }
        // Deterministic xorshift, so a test's failures repeat run to run.
        let mut x = self.rng.load(Ordering::Relaxed) | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        x % 1000 < p
    }
}

struct Inner {
    name: String,
    store: Mutex<Store>,
    events: broadcast::Sender<store::Event>,
    faults: Faults,
    stats: Mutex<Stats>,
    log: Mutex<Vec<RequestRecord>>,
    stopped: AtomicBool,
    /// How often a watch that allows bookmarks gets one, in milliseconds.
    bookmark_ms: AtomicU64,
}

/// Seed of the error-rate generator (see [`Faults::set_seed`]).
pub const DEFAULT_SEED: u64 = 0x2545_f491_4f6c_dd1d;
/// Default interval of BOOKMARK events (a real server sends one about every minute).
pub const DEFAULT_BOOKMARK_MS: u64 = 5_000;

impl Inner {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a store operation and publishes the events it made to watchers;
    /// returns its result and how many objects changed.
    fn write<T>(&self, f: impl FnOnce(&mut Store) -> T) -> (T, u64) {
        let mut s = self.store();
        let before = s.rv;
        let r = f(&mut s);
        let events: Vec<store::Event> = s
            .history
            .iter()
            .rev()
            .take_while(|e| e.rv > before)
            .cloned()
            .collect();
        let n = events.len() as u64;
        // Published under the lock (sending does not block), so every watch sees resourceVersion order.
        for e in events.into_iter().rev() {
            let _ = self.events.send(e);
        }
        drop(s);
        (r, n)
    }

    fn wipe(&self) {
        self.write(|s| s.wipe());
    }
}

/// One emulated cluster.
#[derive(Clone)]
pub struct Emulator {
    inner: Arc<Inner>,
    addr: SocketAddr,
}

impl Emulator {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start(name: &str) -> Result<Emulator, Error> {
        Self::start_on(name, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts on `addr` (port 0: a free one).
    pub async fn start_on(name: &str, addr: SocketAddr) -> Result<Emulator, Error> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (events, _) = broadcast::channel(8192);
        let (drop_tx, _) = broadcast::channel(4);
        let (down_tx, down_rx) = watch::channel(false);
        let inner = Arc::new_cyclic(|weak| Inner {
            name: name.into(),
            store: Mutex::new(Store::new()),
            events,
            faults: Faults {
                drop_watches: Some(drop_tx),
                down: Some(down_tx),
                rng: AtomicU64::new(DEFAULT_SEED),
                emulator: weak.clone(),
                ..Default::default()
            },
            stats: Mutex::new(Stats::default()),
            log: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
            bookmark_ms: AtomicU64::new(DEFAULT_BOOKMARK_MS),
        });
        tokio::spawn(serve(inner.clone(), listener, addr, down_rx));
        Ok(Emulator { inner, addr })
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig for this cluster (context, cluster and user named after it).
    pub fn kubeconfig(&self) -> String {
        let n = &self.inner.name;
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {n}\n  cluster:\n    server: {}\ncontexts:\n- name: {n}\n  context:\n    cluster: {n}\n    user: {n}\ncurrent-context: {n}\nusers:\n- name: {n}\n  user:\n    token: emulator-token-{n}\n",
            self.url()
        )
    }

    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// Registers every CustomResourceDefinition in a (multi-document) YAML text, as if created through the
    /// API (a CRD already registered under that name is left as it is). Other documents are ignored.
    /// Returns how many CRDs the text had.
    pub fn load_crds_yaml(&self, yaml: &str) -> Result<usize, Error> {
        let mut docs = Vec::new();
        for de in serde_yaml::Deserializer::from_str(yaml) {
            docs.push(serde::Deserialize::deserialize(de)?);
        }
        self.load_crds(&docs)
    }

    /// [`Emulator::load_crds_yaml`] for documents already parsed (parse once, load into many emulators).
    pub fn load_crds(&self, docs: &[Value]) -> Result<usize, Error> {
        let crds: Vec<Value> = docs
            .iter()
            .filter(|v| v.get("kind").and_then(Value::as_str) == Some("CustomResourceDefinition"))
            .cloned()
            .collect();
        let n = crds.len();
        let (r, _) = self.inner.write(|s| -> Result<(), ApiError> {
            for v in crds {
                let name = v
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                if s.get(CRD_GROUP, CRDS, None, &name).is_err() {
                    s.create(CRD_GROUP, CRDS, None, v, "emulator")?;
                }
            }
            Ok(())
        });
        r?;
        Ok(n)
    }

    /// Counters since the start or the last [`Emulator::reset_stats`].
    pub fn stats(&self) -> Stats {
        self.inner
            .stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
    /// Zeroes the counters and clears the request log.
    pub fn reset_stats(&self) {
        if let Ok(mut s) = self.inner.stats.lock() {
            *s = Stats::default();
        }
        if let Ok(mut l) = self.inner.log.lock() {
            l.clear();
        }
    }
    /// Watch streams open right now.
    pub fn open_watches(&self) -> usize {
        self.inner.events.receiver_count()
    }
    /// Every API request received (discovery aside), oldest first.
    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.inner.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
    /// Fault injection.
    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }
    /// Deletes every object: a member that comes back empty (CRDs stay; `default` and `kube-system` are
    /// recreated).
    pub fn wipe(&self) {
        self.inner.wipe();
    }
    /// How many events a watch can resume from before it gets 410 Gone (default [`store::HISTORY`]).
    pub fn set_history_limit(&self, events: usize) {
        let mut s = self.inner.store();
        s.history_limit = events.max(1);
        while s.history.len() > s.history_limit {
            if let Some(e) = s.history.pop_front() {
                s.compacted = e.rv;
            }
        }
    }
    /// Light mode, for benchmarks of a client of many emulators: an apply to an existing object replaces its
    /// top-level fields without schema checks or field ownership (managedFields only gain the manager's
    /// name), so the emulators' own cost does not swamp what is measured. See README.md.
    pub fn set_light(&self, light: bool) {
        self.inner.store().light = light;
    }
    /// How often watches that allow bookmarks get a BOOKMARK (default [`DEFAULT_BOOKMARK_MS`]).
    pub fn set_bookmark_interval(&self, every: Duration) {
        self.inner
            .bookmark_ms
            .store((every.as_millis() as u64).max(1), Ordering::Relaxed);
    }
    /// The current resourceVersion (of the last change).
    pub fn resource_version(&self) -> u64 {
        self.inner.store().rv
    }

    /// An object as stored (for assertions), or None.
    pub fn object(
        &self,
        group: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        self.inner.store().get(group, plural, namespace, name).ok()
    }
    /// Every object of a kind (all namespaces).
    pub fn objects(&self, group: &str, plural: &str) -> Vec<Value> {
        self.inner.store().list(group, plural, None)
    }
    /// Creates or replaces an object directly (test setup), as manager `manager` (operation Update),
    /// status included. Watchers see it; it counts in no statistic.
    pub fn put(&self, object: Value, manager: &str) -> Result<Value, Error> {
        let (group, plural, ns, name) = self.locate(&object)?;
        let (r, _) = self.inner.write(|s| {
            let r = match s.get(&group, &plural, ns.as_deref(), &name) {
                Ok(_) => s
                    .update(
                        &group,
                        &plural,
                        ns.as_deref(),
                        &name,
                        object.clone(),
                        manager,
                        false,
                        false,
                    )
                    .map(|(v, _)| v),
                Err(_) => s.create(&group, &plural, ns.as_deref(), object.clone(), manager),
            };
            r.and_then(|v| {
                if object.get("status").is_some()
                    && s.kind(&group, &plural).is_ok_and(|k| k.status_subresource)
                {
                    s.update(
                        &group,
                        &plural,
                        ns.as_deref(),
                        &name,
                        object.clone(),
                        manager,
                        true,
                        false,
                    )
                    .map(|(v, _)| v)
                } else {
                    Ok(v)
                }
            })
        });
        Ok(r?)
    }

    /// Validates an object against its registered kind (CRD schema) without storing it: the unknown fields
    /// the server would drop, or the validation error. Fails for a kind the emulator does not serve.
    pub fn validate(&self, object: &Value) -> Result<Vec<String>, Error> {
        let (group, plural, _, _) = self.locate(object)?;
        let s = self.inner.store();
        let k = s.kind(&group, &plural)?.clone();
        let (_, unknown) = s.validate(&k, object.clone())?;
        Ok(unknown)
    }

    /// Deletes an object directly (test setup), honouring finalizers as an API delete would.
    pub fn delete(
        &self,
        group: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<(), Error> {
        let (r, _) = self
            .inner
            .write(|s| s.delete(group, plural, namespace, name).map(|_| ()));
        Ok(r?)
    }

    fn locate(&self, object: &Value) -> Result<(String, String, Option<String>, String), Error> {
        let av = object
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("v1");
        let group = av.rsplit_once('/').map_or("", |(g, _)| g).to_string();
        let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
        let s = self.inner.store();
        let k = s
            .kinds
            .values()
            .find(|k| k.group == group && k.kind == kind)
            .ok_or_else(|| Error::Other(format!("unknown kind {av} {kind}")))?;
        let ns = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(String::from)
            .filter(|_| k.namespaced);
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        Ok((group, k.plural.clone(), ns, name))
    }

    /// Stops serving for good: the port is closed, open connections (watches included) end. Other
    /// handles to this emulator keep reading its store.
    pub fn shutdown(&self) {
        self.inner.stopped.store(true, Ordering::Relaxed);
        self.inner.faults.set_down(true);
    }
}

const CRD_GROUP: &str = "apiextensions.k8s.io";
const CRDS: &str = "customresourcedefinitions";
async fn serve(
    inner: Arc<Inner>,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    mut down: watch::Receiver<bool>,
) {
    let mut listener = Some(listener);
    loop {
        if inner.stopped.load(Ordering::Relaxed) && *down.borrow() {
            return;
        }
        match listener.as_ref() {
            Some(l) => {
                tokio::select! {
                    accepted = l.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let inner = inner.clone();
                        let mut down_conn = down.clone();
                        tokio::spawn(async move {
                            let svc = hyper::service::service_fn(move |req| handle(inner.clone(), req));
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, svc);
                            tokio::select! {
                                _ = conn => {}
                                _ = async { while !*down_conn.borrow_and_update() { if down_conn.changed().await.is_err() { break; } } } => {}
                            }
                        });
                    }
                    changed = down.changed() => {
                        if changed.is_err() { return; }
                        if *down.borrow() { listener = None; }
                    }
                }
            }
            None => {
                if down.changed().await.is_err() || inner.stopped.load(Ordering::Relaxed) {
                    return;
                }
                if !*down.borrow() {
                    // Re-bind the same port; retry briefly if the OS still holds it.
                    for _ in 0..50 {
                        if let Ok(l) = tokio::net::TcpListener::bind(addr).await {
                            listener = Some(l);
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
    }
}

fn full(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(e: &ApiError) -> Response<Body> {
    full(
        StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.body(),
    )
}

/// Parsed request path.
struct Target {
    group: String,
    version: String,
    namespace: Option<String>,
    plural: String,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_path(path: &str) -> Option<Result<Target, ()>> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    if rest.is_empty() {
        return None;
    }
    let t = |ns: Option<&str>, plural: &str, name: Option<&&str>, sub: Option<&&str>| Target {
        group: group.into(),
        version: version.into(),
        namespace: ns.map(String::from),
        plural: plural.into(),
        name: name.map(|s| s.to_string()),
        sub: sub.map(|s| s.to_string()),
    };
    Some(Ok(match rest {
        ["namespaces", ns, plural, more @ ..]
            if !(group.is_empty() && matches!(*plural, "status" | "finalize")) =>
        {
            t(Some(ns), plural, more.first(), more.get(1))
        }
        [plural, more @ ..] => t(None, plural, more.first(), more.get(1)),
        [] => return Some(Err(())),
    }))
}

fn query(req: &Request<hyper::body::Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (!k.is_empty()).then(|| (k.to_string(), percent_decode(v)))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match h {
                    Some(x) => {
                        out.push(x);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

const NOT_FOUND: &str = "the server could not find the requested resource";

/// 404 for a path the server has no route for.
fn not_found_route() -> ApiError {
    ApiError::new(404, "NotFound", NOT_FOUND).with_details(json!({}))
}
const ALL_VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn group_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

/// Versions of each group, the preferred (storage) one first.
fn groups(s: &Store) -> BTreeMap<String, Vec<String>> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for k in s.kinds.values() {
        let e = groups.entry(k.group.clone()).or_default();
        for v in &k.versions {
            if !e.contains(v) {
                e.push(v.clone());
            }
        }
    }
    groups
}

/// Discovery documents: `/version`, `/api`, `/apis`, `/apis/<group>`, `/api/v1`, `/apis/<group>/<version>`.
/// With `aggregated` (the client asked for `as=APIGroupDiscoveryList`, apidiscovery.k8s.io/v2), `/api` and
/// `/apis` answer the aggregated form.
fn discovery(inner: &Inner, path: &str, aggregated: bool) -> Option<(Value, &'static str)> {
    const JSON: &str = "application/json";
    const AGG: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
    let s = inner.store();
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|x| !x.is_empty())
        .collect();
    let version_entry =
        |g: &str, v: &str| json!({"groupVersion": group_version(g, v), "version": v});
    match segs.as_slice() {
        ["version"] => Some((
            json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0-ksit-emulator", "gitCommit": "", "gitTreeState": "clean",
                   "buildDate": "1970-01-01T00:00:00Z", "goVersion": "", "compiler": "emulator", "platform": "linux/amd64"}),
            JSON,
        )),
        ["api"] if aggregated => Some((aggregated_list(&s, true), AGG)),
        ["apis"] if aggregated => Some((aggregated_list(&s, false), AGG)),
        ["api"] => Some((
            json!({"kind": "APIVersions", "apiVersion": "v1", "versions": ["v1"],
                   "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
            JSON,
        )),
        ["apis"] => {
            let list: Vec<Value> = groups(&s)
                .iter()
                .filter(|(g, _)| !g.is_empty())
                .map(|(g, vs)| {
                    let versions: Vec<Value> = vs.iter().map(|v| version_entry(g, v)).collect();
                    json!({"name": g, "versions": versions, "preferredVersion": versions.first().cloned().unwrap_or(Value::Null)})
                })
                .collect();
            Some((
                json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": list}),
                JSON,
            ))
        }
        ["apis", g] => {
            let groups = groups(&s);
            let vs = groups.get(*g)?;
            let versions: Vec<Value> = vs.iter().map(|v| version_entry(g, v)).collect();
            Some((
                json!({"kind": "APIGroup", "apiVersion": "v1", "name": g, "versions": versions,
                       "preferredVersion": versions.first().cloned().unwrap_or(Value::Null)}),
                JSON,
            ))
        }
        ["api", v] | ["apis", _, v] => {
            let group = if segs[0] == "api" { "" } else { segs[1] };
            let kinds: Vec<&store::Kind> = s
                .kinds
                .values()
                .filter(|k| k.group == group && k.versions.iter().any(|x| x == v))
                .collect();
            if kinds.is_empty() {
                return None;
            }
            let mut resources = Vec::new();
            for k in kinds {
                resources.push(json!({"name": k.plural, "singularName": k.singular, "namespaced": k.namespaced, "kind": k.kind,
                    "shortNames": k.short_names, "verbs": ALL_VERBS, "storageVersionHash": ""}));
                if k.status_subresource {
                    resources.push(json!({"name": format!("{}/status", k.plural), "singularName": "", "namespaced": k.namespaced,
                        "kind": k.kind, "verbs": ["get", "patch", "update"]}));
                }
            }
            Some((
                json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version(group, v), "resources": resources}),
                JSON,
            ))
        }
        _ => None,
    }
}

/// apidiscovery.k8s.io/v2 APIGroupDiscoveryList: the core group (`core`) or every other group.
fn aggregated_list(s: &Store, core: bool) -> Value {
    let items: Vec<Value> = groups(s)
        .iter()
        .filter(|(g, _)| g.is_empty() == core)
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = s
                        .kinds
                        .values()
                        .filter(|k| &k.group == g && k.versions.contains(v))
                        .map(|k| {
                            let rk = json!({"group": g, "version": v, "kind": k.kind});
                            let subs: Vec<Value> = if k.status_subresource {
                                vec![json!({"subresource": "status", "responseKind": rk, "verbs": ["get", "patch", "update"]})]
                            } else {
                                vec![]
                            };
                            json!({"resource": k.plural, "responseKind": rk, "scope": if k.namespaced { "Namespaced" } else { "Cluster" },
                                   "singularResource": k.singular, "verbs": ALL_VERBS, "shortNames": k.short_names, "subresources": subs})
                        })
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": g}, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

fn header(req: &Request<hyper::body::Incoming>, name: hyper::header::HeaderName) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

async fn handle(
    inner: Arc<Inner>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    let latency = inner.faults.latency_ms.load(Ordering::Relaxed);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let path = req.uri().path().to_string();
    if req.method() == Method::GET {
        let accept = header(&req, hyper::header::ACCEPT);
        let aggregated = accept.contains("as=APIGroupDiscoveryList") && accept.contains("v=v2");
        if let Some((d, ct)) = discovery(&inner, &path, aggregated) {
            let mut r = full(StatusCode::OK, &d);
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(ct),
            );
            return Ok(r);
        }
    }
    let Some(Ok(t)) = parse_path(&path) else {
        return Ok(error(&not_found_route()));
    };
    let q = query(&req);
    let method = req.method().clone();
    let is_watch = method == Method::GET
        && matches!(q.get("watch").map(String::as_str), Some("true") | Some("1"));
    let verb = match (&method, &t.name) {
        (&Method::GET, Some(_)) => "get",
        (&Method::GET, None) if is_watch => "watch",
        (&Method::GET, None) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, Some(_)) => "delete",
        (&Method::DELETE, None) => "deletecollection",
        _ => "unknown",
    };
    if let Ok(mut l) = inner.log.lock() {
        l.push(RequestRecord {
            verb: verb.into(),
            group: t.group.clone(),
            resource: t.plural.clone(),
            subresource: t.sub.clone(),
            namespace: t.namespace.clone(),
        });
    }
    let mutating = matches!(
        verb,
        "create" | "update" | "patch" | "delete" | "deletecollection"
    );
    if mutating {
        if let Ok(mut s) = inner.stats.lock() {
            s.writes += 1;
            *s.by_verb.entry(verb.into()).or_default() += 1;
        }
    }
    if !is_watch && inner.faults.roll_error() {
        return Ok(error(&ApiError::new(
            500,
            "InternalError",
            "Internal error occurred: injected failure (emulator fault injection)",
        )));
    }
    if mutating && inner.faults.roll_conflict() {
        return Ok(error(&ApiError::new(
            409,
            "Conflict",
            "Operation cannot be fulfilled: the object has been modified; please apply your changes to the latest version and try again (emulator fault injection)",
        )));
    }
    if let Err(e) = check_target(&inner, &t, verb) {
        return Ok(error(&e));
    }
    if matches!(verb, "list" | "watch" | "deletecollection") {
        if let Err(e) = check_selectors(&inner.store(), &t, &q) {
            return Ok(error(&e));
        }
    }
    if is_watch {
        return Ok(watch_response(inner, t, q));
    }
    let content_type = header(&req, hyper::header::CONTENT_TYPE);
    let user_agent = header(&req, hyper::header::USER_AGENT);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    // Like the real server: the fieldManager parameter, else the user agent up to its first '/'.
    let manager = q.get("fieldManager").cloned().unwrap_or_else(|| {
        let m = user_agent.split('/').next().unwrap_or("").to_string();
        if m.is_empty() {
            "unknown".into()
        } else {
            m
        }
    });
    let req = Req {
        t: &t,
        verb,
        content_type: &content_type,
        body: &body,
        manager: &manager,
        q: &q,
    };
    let dry_run = q.get("dryRun").is_some_and(|d| d == "All");
    let (result, changed) = if dry_run {
        let mut scratch = inner.store().clone();
        (execute(&mut scratch, &req), 0)
    } else {
        inner.write(|s| execute(s, &req))
    };
    if changed > 0 {
        if let Ok(mut s) = inner.stats.lock() {
            s.changes += changed;
            *s.changes_by_verb.entry(verb.into()).or_default() += changed;
        }
    }
    Ok(match result {
        Ok((status, v, warnings)) => {
            let v = if verb == "list" || verb == "deletecollection" || v["kind"] == "Status" {
                v
            } else {
                with_version(v, &t.group, &t.version)
            };
            let mut r = full(status, &v);
            for w in warnings {
                let text = format!("unknown field \"{}\"", w.trim_start_matches('.'));
                if let Ok(h) = format!("299 - {}", Value::String(text)).parse() {
                    r.headers_mut().append("warning", h);
                }
            }
            r
        }
        Err(e) => error(&e),
    })
}

/// Refuses what a real server has no route for: an unknown or unserved resource, a cluster-scoped kind
/// under a namespace, a namespaced object without one.
fn check_target(inner: &Inner, t: &Target, verb: &str) -> Result<(), ApiError> {
    let s = inner.store();
    let k = s.kind(&t.group, &t.plural).map_err(|_| not_found_route())?;
    if !k.versions.contains(&t.version) {
        return Err(not_found_route());
    }
    match t.sub.as_deref() {
        None => {}
        Some("status") if k.status_subresource && t.name.is_some() => {}
        Some(_) => return Err(not_found_route()),
    }
    if !k.namespaced && t.namespace.is_some() {
        return Err(not_found_route());
    }
    if k.namespaced && t.namespace.is_none() {
        if t.name.is_some() {
            return Err(not_found_route());
        }
        if matches!(verb, "create" | "deletecollection") {
            return Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            ));
        }
    }
    if matches!(verb, "update" | "patch") && t.name.is_none() {
        return Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        ));
    }
    Ok(())
}

/// One API request, parsed.
struct Req<'a> {
    t: &'a Target,
    verb: &'a str,
    content_type: &'a str,
    body: &'a [u8],
    manager: &'a str,
    q: &'a BTreeMap<String, String>,
}

type Answer = (StatusCode, Value, Vec<String>);

fn execute(s: &mut Store, r: &Req) -> Result<Answer, ApiError> {
    let t = r.t;
    let ns = t.namespace.as_deref();
    let status = t.sub.as_deref() == Some("status");
    let name = t.name.clone().unwrap_or_default();
    let validation = r.q.get("fieldValidation").map(String::as_str);
    let strict = validation == Some("Strict");
    let parse = |b: &[u8]| -> Result<Value, ApiError> {
        let v: Value = serde_json::from_slice(b)
            .or_else(|_| serde_yaml::from_slice::<Value>(b))
            .map_err(|e| {
                ApiError::new(
                    400,
                    "BadRequest",
                    format!("error decoding the request body: {e}"),
                )
            })?;
        // The namespace of the object must be the request's (cluster-scoped kinds: it is dropped).
        if let (Some(want), Some(got)) =
            (ns, v.pointer("/metadata/namespace").and_then(Value::as_str))
        {
            if !got.is_empty() && got != want {
                return Err(ApiError::new(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request"));
            }
        }
        Ok(v)
    };
    // Unknown fields: pruned with a warning, or refused under fieldValidation=Strict.
    let strict_check = |s: &Store, v: &Value| -> Result<Vec<String>, ApiError> {
        let k = s.kind(&t.group, &t.plural)?.clone();
        let (_, unknown) = s.validate_partial(&k, v.clone())?;
        if strict && !unknown.is_empty() {
            let fields: Vec<String> = unknown
                .iter()
                .map(|u| format!("unknown field {}", store::go_quote(u)))
                .collect();
            return Err(ApiError::new(
                400,
                "BadRequest",
                format!(
                    "{kind} in version {version} cannot be handled as a {kind}: strict decoding error: {}",
                    fields.join(", "),
                    kind = k.kind,
                    version = store::go_quote(&t.version),
                ),
            ));
        }
        if validation == Some("Ignore") {
            return Ok(vec![]);
        }
        Ok(unknown)
    };
    match r.verb {
        "get" => Ok((
            StatusCode::OK,
            s.get(&t.group, &t.plural, ns, &name)?,
            vec![],
        )),
        "list" => list(s, t, r.q),
        "create" => {
            let v = parse(r.body)?;
            let w = strict_check(s, &v)?;
            Ok((
                StatusCode::CREATED,
                s.create(&t.group, &t.plural, ns, v, r.manager)?,
                w,
            ))
        }
        "update" => {
            let v = parse(r.body)?;
            let w = strict_check(s, &v)?;
            Ok((
                StatusCode::OK,
                s.update(&t.group, &t.plural, ns, &name, v, r.manager, status, true)?
                    .0,
                w,
            ))
        }
        "patch" if r.content_type.starts_with("application/apply-patch") => {
            let Some(manager) = r.q.get("fieldManager").filter(|m| !m.is_empty()) else {
                return Err(ApiError::invalid(
                    "meta.k8s.io",
                    "PatchOptions",
                    "",
                    vec![store::FieldErr::required(
                        "fieldManager",
                        "is required for apply patch",
                    )],
                ));
            };
            let v = parse(r.body)?;
            if let Some(n) = v.pointer("/metadata/name").and_then(Value::as_str) {
                if n != name {
                    return Err(ApiError::new(
                        400,
                        "BadRequest",
                        format!("the name of the object ({n}) does not match the name on the URL ({name})"),
                    ));
                }
            }
            // Unknown fields of an apply configuration fail it (see `Store::apply`), Strict or not.
            let force = r.q.get("force").map(String::as_str) == Some("true");
            let existed = s.get(&t.group, &t.plural, ns, &name).is_ok();
            let (out, _, w) = s.apply(&t.group, &t.plural, ns, &name, v, manager, force, status)?;
            let w = if validation == Some("Ignore") {
                vec![]
            } else {
                w
            };
            let code = if existed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok((code, out, w))
        }
        "patch" => {
            let live = s.get(&t.group, &t.plural, ns, &name)?;
            let patch = parse(r.body)?;
            let patched = if r.content_type.starts_with("application/json-patch") {
                json_patch(live.clone(), &patch)?
            } else if r.content_type.starts_with("application/merge-patch")
                || r.content_type
                    .starts_with("application/strategic-merge-patch")
            {
                let mut l = live.clone();
                merge_patch(&mut l, &patch);
                l
            } else {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json; got {:?}", r.content_type),
                ));
            };
            let w = strict_check(s, &patched)?;
            // A patch that names a resourceVersion is a precondition, like an update's.
            let check_rv = patch.pointer("/metadata/resourceVersion").is_some();
            Ok((
                StatusCode::OK,
                s.update(
                    &t.group, &t.plural, ns, &name, patched, r.manager, status, check_rv,
                )?
                .0,
                w,
            ))
        }
        "delete" => {
            let gone = s.delete(&t.group, &t.plural, ns, &name)?;
            let k = s.kind(&t.group, &t.plural)?;
            let pending = s.get(&t.group, &t.plural, ns, &name).is_ok();
            if pending || k.return_deleted {
                return Ok((StatusCode::OK, gone, vec![]));
            }
            // Most kinds answer a completed delete with a Success Status naming what went.
            let mut d = store::details(&name, &t.group, &t.plural);
            d["uid"] = gone
                .pointer("/metadata/uid")
                .cloned()
                .unwrap_or(Value::Null);
            Ok((
                StatusCode::OK,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d}),
                vec![],
            ))
        }
        "deletecollection" => {
            let (_, listed, _) = list(s, t, r.q)?;
            let mut deleted = Vec::new();
            for o in listed["items"].as_array().cloned().unwrap_or_default() {
                let n = o
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let ons = o.pointer("/metadata/namespace").and_then(Value::as_str);
                if let Ok(d) = s.delete(&t.group, &t.plural, ons, n) {
                    deleted.push(with_version(d, &t.group, &t.version));
                }
            }
            let mut out = listed;
            out["items"] = Value::Array(deleted);
            Ok((StatusCode::OK, out, vec![]))
        }
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )),
    }
}

/// A list, with label and field selectors and `limit`/`continue` paging (the continue token is the last
/// item's `namespace/name`; a list's resourceVersion is the emulator's current one).
fn list(s: &Store, t: &Target, q: &BTreeMap<String, String>) -> Result<Answer, ApiError> {
    let k = s.kind(&t.group, &t.plural)?.clone();
    let mut items: Vec<Value> = s
        .list(&t.group, &t.plural, t.namespace.as_deref())
        .into_iter()
        .filter(|o| object_matches(o, q))
        .collect();
    let pos = |o: &Value| {
        format!(
            "{}/{}",
            o.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or(""),
            o.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
        )
    };
    if let Some(after) = q.get("continue").filter(|c| !c.is_empty()) {
        items.retain(|o| pos(o).as_str() > after.as_str());
    }
    let mut meta = json!({"resourceVersion": s.rv.to_string()});
    if let Some(limit) = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
    {
        if items.len() > limit {
            let rest = items.len() - limit;
            items.truncate(limit);
            if let Some(last) = items.last() {
                meta["continue"] = json!(pos(last));
                // Not counted under a selector, as on a real server.
                let selected = ["labelSelector", "fieldSelector"]
                    .iter()
                    .any(|k| q.get(*k).is_some_and(|s| !s.is_empty()));
                if !selected {
                    meta["remainingItemCount"] = json!(rest);
                }
            }
        }
    }
    // A built-in list's items carry no apiVersion and kind (a custom resource list's do), and a custom
    // resource list always says `continue`.
    let items: Vec<Value> = items
        .into_iter()
        .map(|o| {
            let mut o = with_version(o, &t.group, &t.version);
            if let (true, Some(m)) = (k.builtin, o.as_object_mut()) {
                m.remove("apiVersion");
                m.remove("kind");
            }
            o
        })
        .collect();
    if !k.builtin && meta.get("continue").is_none() {
        meta["continue"] = json!("");
    }
    Ok((
        StatusCode::OK,
        json!({"kind": format!("{}List", k.kind), "apiVersion": group_version(&t.group, &t.version), "metadata": meta, "items": items}),
        vec![],
    ))
}

fn watch_response(inner: Arc<Inner>, t: Target, q: BTreeMap<String, String>) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let mut live = inner.events.subscribe();
    let mut dropped = inner.faults.drop_watches.as_ref().map(|d| d.subscribe());
    let since: Option<u64> = q.get("resourceVersion").and_then(|r| r.parse().ok());
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800);
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let initial_events = q.get("sendInitialEvents").map(String::as_str) == Some("true");
    let (group, version) = (t.group.clone(), t.version.clone());
    let kind = inner
        .store()
        .kind(&t.group, &t.plural)
        .map(|k| k.kind.clone())
        .unwrap_or_default();
    let line = |type_: &str, obj: &Value| {
        Bytes::from(format!("{}\n", json!({"type": type_, "object": obj})))
    };
    let bookmark = move |rv: u64, end_of_initial: bool| {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if end_of_initial {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        Bytes::from(format!(
            "{}\n",
            json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": group_version(&group, &version), "metadata": meta}})
        ))
    };
    let relevant = move |e: &store::Event, t: &Target, q: &BTreeMap<String, String>| {
        e.group == t.group
            && e.plural == t.plural
            && (t.namespace.is_none() || e.namespace == t.namespace)
            && object_matches(&e.object, q)
    };
    // Snapshot what the watch starts from, under the lock, so no event is lost or duplicated.
    let mut initial: Vec<Bytes> = Vec::new();
    let mut expired = false;
    let start_rv;
    // The last version of the watched kind, and the last version this watch told its client of (an
    // event or a bookmark): a bookmark is sent only when the first is newer, as kube-apiserver's watch
    // cache does.
    let mut kind_rv;
    let mut sent_rv;
    {
        let s = inner.store();
        start_rv = s.rv;
        kind_rv = s
            .history
            .iter()
            .rev()
            .find(|e| e.group == t.group && e.plural == t.plural)
            .map_or(0, |e| e.rv);
        sent_rv = match since {
            Some(rv) if rv > 0 && !initial_events => rv,
            _ => kind_rv,
        };
        match since {
            Some(rv) if rv > 0 && !initial_events && rv < s.compacted => {
                expired = true;
                initial.push(line("ERROR", &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("too old resource version: {rv} ({})", s.compacted), "reason": "Expired", "code": 410})));
            }
            Some(rv) if rv > 0 && !initial_events => {
                for e in s
                    .history
                    .iter()
                    .filter(|e| e.rv > rv && relevant(e, &t, &q))
                {
                    sent_rv = sent_rv.max(e.rv);
                    initial.push(line(
                        e.type_,
                        &with_version(e.object.clone(), &t.group, &t.version),
                    ));
                }
            }
            _ => {
                // No resourceVersion, "0", or sendInitialEvents: the current state as ADDED events.
                for o in s
                    .list(&t.group, &t.plural, t.namespace.as_deref())
                    .into_iter()
                    .filter(|o| object_matches(o, &q))
                {
                    initial.push(line("ADDED", &with_version(o, &t.group, &t.version)));
                }
                if initial_events && bookmarks {
                    initial.push(bookmark(s.rv, true));
                }
            }
        }
    }
    let every = Duration::from_millis(inner.bookmark_ms.load(Ordering::Relaxed).max(1));
    drop(inner);
    tokio::spawn(async move {
        for b in initial {
            if tx.send(b).await.is_err() {
                return;
            }
        }
        if expired {
            return;
        }
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                fail = async { match dropped.as_mut() { Some(d) => d.recv().await.unwrap_or(false), None => std::future::pending::<bool>().await } } => {
                    if fail {
                        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": "injected watch failure (emulator fault injection)", "reason": "InternalError", "code": 500});
                        let _ = tx.send(line("ERROR", &status)).await;
                    }
                    return;
                }
                _ = ticker.tick(), if bookmarks => {
                    // Events arrive in resourceVersion order: nothing this watch cares about is pending
                    // up to the last event of its kind.
                    if kind_rv > sent_rv {
                        sent_rv = kind_rv;
                        if tx.send(bookmark(kind_rv, false)).await.is_err() {
                            return;
                        }
                    }
                }
                ev = live.recv() => match ev {
                    Ok(e) if e.rv > start_rv => {
                        if e.group == t.group && e.plural == t.plural {
                            kind_rv = e.rv;
                        }
                        if relevant(&e, &t, &q) {
                            sent_rv = e.rv;
                            if tx.send(line(e.type_, &with_version(e.object.clone(), &t.group, &t.version))).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(_) => {}
                    // A watcher too slow for the event stream is ended; its client resumes from its version.
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tx.closed() => return,
            }
        }
    });
    let stream = tokio_stream_from(rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> impl futures::Stream<Item = Bytes> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
fn object_matches(obj: &Value, q: &BTreeMap<String, String>) -> bool {
    let empty = serde_json::Map::new();
    let labels = obj
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    if let Some(sel) = q.get("labelSelector") {
        // Checked by `check_selectors` before any object is matched.
        if !selector::LabelSelector::parse(sel).is_ok_and(|s| s.matches(labels)) {
            return false;
        }
    }
    if let Some(fs) = q.get("fieldSelector") {
        if !selector::parse_fields(fs).is_ok_and(|t| selector::fields_match(obj, &t)) {
            return false;
        }
    }
    true
}

/// Refuses (400) a label or field selector a real server would not parse, or a field selector on a field
/// the kind does not offer.
fn check_selectors(s: &Store, t: &Target, q: &BTreeMap<String, String>) -> Result<(), ApiError> {
    let bad = |m: String| ApiError::new(400, "BadRequest", m);
    if let Some(sel) = q.get("labelSelector") {
        selector::LabelSelector::parse(sel).map_err(bad)?;
    }
    if let Some(fs) = q.get("fieldSelector") {
        let terms = selector::parse_fields(fs).map_err(bad)?;
        let k = s.kind(&t.group, &t.plural)?;
        for (field, _, _) in &terms {
            match &k.field_selectors {
                None if !matches!(field.as_str(), "metadata.name" | "metadata.namespace") => {
                    return Err(bad(format!(
                        "{} is not a known field selector: only \"metadata.name\", \"metadata.namespace\"",
                        store::go_quote(field)
                    )));
                }
                Some(allowed) if !allowed.contains(field) => {
                    return Err(bad(format!("field label not supported: {field}")));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn with_version(mut obj: Value, group: &str, version: &str) -> Value {
    if let Some(m) = obj.as_object_mut() {
        m.insert(
            "apiVersion".into(),
            json!(if group.is_empty() {
                version.to_string()
            } else {
                format!("{group}/{version}")
            }),
        );
    }
    obj
}

fn merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn json_patch(mut doc: Value, ops: &Value) -> Result<Value, ApiError> {
    let bad = |m: &str| ApiError::new(422, "Invalid", format!("json patch: {m}"));
    for op in ops.as_array().ok_or_else(|| bad("not an array"))? {
        let path = op["path"].as_str().ok_or_else(|| bad("op without path"))?;
        let parts: Vec<String> = path
            .split('/')
            .skip(1)
            .map(|p| p.replace("~1", "/").replace("~0", "~"))
            .collect();
        let (last, parents) = parts.split_last().ok_or_else(|| bad("empty path"))?;
        let mut cur = &mut doc;
        for p in parents {
            cur = match cur {
                Value::Object(m) => m.get_mut(p).ok_or_else(|| bad(&format!("no {path}")))?,
                Value::Array(a) => a
                    .get_mut(p.parse::<usize>().map_err(|_| bad("bad index"))?)
                    .ok_or_else(|| bad("index out of range"))?,
                _ => return Err(bad(&format!("no {path}"))),
            };
        }
        match (op["op"].as_str().unwrap_or(""), cur) {
            ("add" | "replace", Value::Object(m)) => {
                m.insert(last.clone(), op["value"].clone());
            }
            ("add", Value::Array(a)) if last == "-" => a.push(op["value"].clone()),
            ("add", Value::Array(a)) => a.insert(
                last.parse::<usize>()
                    .map_err(|_| bad("bad index"))?
                    .min(a.len()),
                op["value"].clone(),
            ),
            ("replace", Value::Array(a)) => {
                let i = last.parse::<usize>().map_err(|_| bad("bad index"))?;
                *a.get_mut(i).ok_or_else(|| bad("index out of range"))? = op["value"].clone();
            }
            ("remove", Value::Object(m)) => {
                m.remove(last);
            }
            ("remove", Value::Array(a)) => {
                let i = last.parse::<usize>().map_err(|_| bad("bad index"))?;
                if i < a.len() {
                    a.remove(i);
                }
            }
            ("test", Value::Object(m)) => {
                if m.get(last) != Some(&op["value"]) {
                    return Err(bad("test failed"));
                }
            }
            (o, _) => return Err(bad(&format!("unsupported op {o}"))),
        }
    }
    Ok(doc)
}
