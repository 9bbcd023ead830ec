//! ksit-emulator: an in-memory Kubernetes API **emulator** (not an API server) serving real HTTP on
//! 127.0.0.1, so the controller's tests can run where no API server can be installed. One instance per
//! cluster. See README.md for what it implements and how it differs from a real API server.

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
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use store::{selector_matches, ApiError, Store};
use tokio::sync::{broadcast, watch};

type Body = BoxBody<Bytes, Infallible>;

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
    /// Writes that changed an object (a no-op apply is a write but not a change).
    pub changes: u64,
    /// Writes by verb (create, update, patch, delete).
    pub by_verb: BTreeMap<String, u64>,
}

/// Failures the emulator can be told to produce.
#[derive(Default)]
pub struct Faults {
    error_permille: AtomicU64,
    latency_ms: AtomicU64,
    rng: AtomicU64,
    drop_watches: Option<broadcast::Sender<()>>,
    down: Option<watch::Sender<bool>>,
}

impl Faults {
    /// Answers this share (0.0 to 1.0) of non-watch requests with 500.
    pub fn set_error_rate(&self, rate: f64) {
        self.error_permille
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
            let _ = tx.send(());
        }
    }
    /// Down: the port refuses connections and open ones are closed. Up: serves again on the same port.
    pub fn set_down(&self, down: bool) {
        if let Some(tx) = &self.down {
            let _ = tx.send(down);
        }
    }
    fn roll_error(&self) -> bool {
        let p = self.error_permille.load(Ordering::Relaxed);
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
}

impl Inner {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
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
    pub async fn start(name: &str) -> anyhow::Result<Emulator> {
        Self::start_on(name, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_on(name: &str, addr: SocketAddr) -> anyhow::Result<Emulator> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (events, _) = broadcast::channel(4096);
        let (drop_tx, _) = broadcast::channel(4);
        let (down_tx, down_rx) = watch::channel(false);
        let faults = Faults {
            drop_watches: Some(drop_tx),
            down: Some(down_tx),
            rng: AtomicU64::new(0x2545_f491_4f6c_dd1d),
            ..Default::default()
        };
        let inner = Arc::new(Inner {
            name: name.into(),
            store: Mutex::new(Store::new()),
            events,
            faults,
            stats: Mutex::new(Stats::default()),
            log: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
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

    /// Registers every CustomResourceDefinition in a (multi-document) YAML text.
    pub fn load_crds_yaml(&self, yaml: &str) -> anyhow::Result<usize> {
        let mut n = 0;
        for de in serde_yaml::Deserializer::from_str(yaml) {
            let v: Value = serde::Deserialize::deserialize(de)?;
            if v.get("kind").and_then(Value::as_str) == Some("CustomResourceDefinition") {
                let mut s = self.inner.store();
                let name = v
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                if s.get(
                    "apiextensions.k8s.io",
                    "customresourcedefinitions",
                    None,
                    &name,
                )
                .is_err()
                {
                    s.create(
                        "apiextensions.k8s.io",
                        "customresourcedefinitions",
                        None,
                        v,
                        "emulator",
                    )
                    .map_err(|e| anyhow::anyhow!(e.message))?;
                }
                n += 1;
            }
        }
        Ok(n)
    }

    /// Registers Istio's kinds: the real CRDs from ../shared/schemas when present, else minimal stand-ins
    /// (crds/istio-minimal.yaml: kinds, versions and scope, specs unvalidated). Returns how many were real.
    pub fn load_istio_crds(&self) -> anyhow::Result<bool> {
        if self.load_shared_crds()? > 0 {
            return Ok(true);
        }
        self.load_crds_yaml(include_str!("../crds/istio-minimal.yaml"))?;
        Ok(false)
    }

    /// Registers the CRDs of ../shared/schemas (Istio, KSIT, KubeStellar) when that folder exists.
    pub fn load_shared_crds(&self) -> anyhow::Result<usize> {
        let dir = shared_schemas();
        let Some(dir) = dir else { return Ok(0) };
        let mut n = 0;
        let mut files: Vec<_> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        for f in files
            .iter()
            .filter(|f| f.extension().is_some_and(|x| x == "yaml"))
        {
            n += self.load_crds_yaml(&std::fs::read_to_string(f)?)?;
        }
        Ok(n)
    }

    pub fn stats(&self) -> Stats {
        self.inner
            .stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
    pub fn reset_stats(&self) {
        if let Ok(mut s) = self.inner.stats.lock() {
            *s = Stats::default();
        }
        if let Ok(mut l) = self.inner.log.lock() {
            l.clear();
        }
    }
    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.inner.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }
    /// Deletes every object: a member that comes back empty.
    pub fn wipe(&self) {
        let events: Vec<store::Event> = {
            let mut s = self.inner.store();
            let before = s.rv;
            s.wipe();
            s.history
                .iter()
                .filter(|e| e.rv > before)
                .cloned()
                .collect()
        };
        for e in events {
            let _ = self.inner.events.send(e);
        }
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
    /// Creates or replaces an object directly (test setup), as manager `manager`.
    pub fn put(&self, object: Value, manager: &str) -> anyhow::Result<Value> {
        let (group, plural, ns, name) = self.locate(&object)?;
        let mut s = self.inner.store();
        let before = s.rv;
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
        let r = r.and_then(|v| {
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
        });
        let events: Vec<store::Event> = s
            .history
            .iter()
            .filter(|e| e.rv > before)
            .cloned()
            .collect();
        drop(s);
        for e in events {
            let _ = self.inner.events.send(e);
        }
        r.map_err(|e| anyhow::anyhow!("{}", e.message))
    }

    /// Validates an object against its registered kind (CRD schema) without storing it: the unknown fields
    /// the server would drop, or the validation error. Fails for a kind the emulator does not serve.
    pub fn validate(&self, object: &Value) -> anyhow::Result<Vec<String>> {
        let (group, plural, _, _) = self.locate(object)?;
        let s = self.inner.store();
        let k = s
            .kind(&group, &plural)
            .map_err(|e| anyhow::anyhow!("{}", e.message))?
            .clone();
        let (_, unknown) = s
            .validate(&k, object.clone())
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        Ok(unknown)
    }

    /// Deletes an object directly (test setup), honouring finalizers as an API delete would.
    pub fn delete(
        &self,
        group: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> anyhow::Result<()> {
        let mut s = self.inner.store();
        let before = s.rv;
        let r = s.delete(group, plural, namespace, name).map(|_| ());
        let events: Vec<store::Event> = s
            .history
            .iter()
            .filter(|e| e.rv > before)
            .cloned()
            .collect();
        drop(s);
        for e in events {
            let _ = self.inner.events.send(e);
        }
        r.map_err(|e| anyhow::anyhow!("{}", e.message))
    }

    fn locate(&self, object: &Value) -> anyhow::Result<(String, String, Option<String>, String)> {
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
            .ok_or_else(|| anyhow::anyhow!("unknown kind {av} {kind}"))?;
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

    /// Stops serving for good.
    pub fn shutdown(&self) {
        self.inner.stopped.store(true, Ordering::Relaxed);
        self.inner.faults.set_down(true);
    }
}

/// ../shared/schemas relative to the workspace, when present.
pub fn shared_schemas() -> Option<std::path::PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/schemas");
    p.is_dir().then_some(p)
}

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

fn discovery(inner: &Inner, path: &str) -> Option<Value> {
    let s = inner.store();
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|x| !x.is_empty())
        .collect();
    match segs.as_slice() {
        ["version"] => Some(
            json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0-ksit-emulator", "platform": "linux/amd64"}),
        ),
        ["api"] => Some(
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
        ),
        ["apis"] => {
            let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for k in s.kinds.values().filter(|k| !k.group.is_empty()) {
                let e = groups.entry(&k.group).or_default();
                for v in &k.versions {
                    if !e.contains(&v.as_str()) {
                        e.push(v);
                    }
                }
            }
            let list: Vec<Value> = groups
                .iter()
                .map(|(g, vs)| {
                    let versions: Vec<Value> = vs.iter().map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect();
                    json!({"name": g, "versions": versions, "preferredVersion": versions.first().cloned().unwrap_or(json!(null))})
                })
                .collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": list}))
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
                    "shortNames": k.short_names, "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]}));
                if k.status_subresource {
                    resources.push(json!({"name": format!("{}/status", k.plural), "singularName": "", "namespaced": k.namespaced, "kind": k.kind, "verbs": ["get", "patch", "update"]}));
                }
            }
            let gv = if group.is_empty() {
                v.to_string()
            } else {
                format!("{group}/{v}")
            };
            Some(
                json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
            )
        }
        _ => None,
    }
}

fn object_matches(obj: &Value, q: &BTreeMap<String, String>) -> bool {
    let empty = serde_json::Map::new();
    let labels = obj
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    if let Some(sel) = q.get("labelSelector") {
        if !selector_matches(sel, labels) {
            return false;
        }
    }
    if let Some(fs) = q.get("fieldSelector") {
        for part in fs.split(',').filter(|p| !p.is_empty()) {
            let (k, v, neg) = match part.split_once("!=") {
                Some((k, v)) => (k, v, true),
                None => match part.split_once("==").or_else(|| part.split_once('=')) {
                    Some((k, v)) => (k, v, false),
                    None => continue,
                },
            };
            let actual = match k {
                "metadata.name" => obj.pointer("/metadata/name"),
                "metadata.namespace" => obj.pointer("/metadata/namespace"),
                _ => None,
            }
            .and_then(Value::as_str)
            .unwrap_or("");
            if (actual == v) == neg {
                return false;
            }
        }
    }
    true
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

async fn handle(
    inner: Arc<Inner>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    let latency = inner.faults.latency_ms.load(Ordering::Relaxed);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let path = req.uri().path().to_string();
    if let Some(d) = discovery(&inner, &path) {
        return Ok(full(StatusCode::OK, &d));
    }
    let Some(Ok(t)) = parse_path(&path) else {
        return Ok(error(&ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )));
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
        (&Method::DELETE, _) => "delete",
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
    let mutating = matches!(verb, "create" | "update" | "patch" | "delete");
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
            "injected failure (emulator fault injection)",
        )));
    }
    {
        let s = inner.store();
        match s.kind(&t.group, &t.plural) {
            Ok(k) if k.versions.contains(&t.version) => {}
            Ok(_) | Err(_) => {
                return Ok(error(&ApiError::new(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                )))
            }
        }
    }
    if is_watch {
        return Ok(watch_response(inner, t, q));
    }
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let user_agent = req
        .headers()
        .get(hyper::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown")
        .to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let manager = q.get("fieldManager").cloned().unwrap_or_else(|| {
        user_agent
            .split('/')
            .next()
            .unwrap_or("unknown")
            .to_string()
    });
    let strict = q.get("fieldValidation").map(String::as_str) == Some("Strict");
    let before = inner.store().rv;
    let result = execute(&inner, &t, verb, &content_type, &body, &manager, &q, strict);
    // Publish what changed to watchers, after the store lock is released.
    let events: Vec<store::Event> = {
        let s = inner.store();
        s.history
            .iter()
            .filter(|e| e.rv > before)
            .cloned()
            .collect()
    };
    if !events.is_empty() {
        if let Ok(mut s) = inner.stats.lock() {
            s.changes += 1;
        }
    }
    for e in events {
        let _ = inner.events.send(e);
    }
    Ok(match result {
        Ok((status, v, warnings)) => {
            let mut r = full(status, &with_version(v, &t.group, &t.version));
            if !warnings.is_empty() {
                if let Ok(h) = format!(
                    "299 - \"unknown field(s) dropped: {}\"",
                    warnings.join(", ")
                )
                .parse()
                {
                    r.headers_mut().insert("warning", h);
                }
            }
            r
        }
        Err(e) => error(&e),
    })
}

#[allow(clippy::too_many_arguments)]
fn execute(
    inner: &Inner,
    t: &Target,
    verb: &str,
    content_type: &str,
    body: &[u8],
    manager: &str,
    q: &BTreeMap<String, String>,
    strict: bool,
) -> Result<(StatusCode, Value, Vec<String>), ApiError> {
    let mut s = inner.store();
    let ns = t.namespace.as_deref();
    let status = t.sub.as_deref() == Some("status");
    let parse = |b: &[u8]| -> Result<Value, ApiError> {
        serde_json::from_slice(b)
            .or_else(|_| serde_yaml::from_slice::<Value>(b))
            .map_err(|e| ApiError::new(400, "BadRequest", format!("invalid body: {e}")))
    };
    let strict_check = |s: &Store, v: &Value| -> Result<Vec<String>, ApiError> {
        let k = s.kind(&t.group, &t.plural)?.clone();
        let (_, warnings) = s.validate(&k, v.clone())?;
        if strict && !warnings.is_empty() {
            return Err(ApiError::new(
                400,
                "BadRequest",
                format!(
                    "strict decoding error: {}",
                    warnings
                        .iter()
                        .map(|w| format!("unknown field \"{}\"", w.trim_start_matches('.')))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        Ok(warnings)
    };
    match verb {
        "get" => {
            let name = t.name.as_deref().unwrap_or("");
            Ok((
                StatusCode::OK,
                s.get(&t.group, &t.plural, ns, name)?,
                vec![],
            ))
        }
        "list" => {
            let k = s.kind(&t.group, &t.plural)?.clone();
            let items: Vec<Value> = s
                .list(&t.group, &t.plural, ns)
                .into_iter()
                .filter(|o| object_matches(o, q))
                .map(|o| with_version(o, &t.group, &t.version))
                .collect();
            let av = if t.group.is_empty() {
                t.version.clone()
            } else {
                format!("{}/{}", t.group, t.version)
            };
            Ok((
                StatusCode::OK,
                json!({"kind": format!("{}List", k.kind), "apiVersion": av, "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}),
                vec![],
            ))
        }
        "create" => {
            let v = parse(body)?;
            let w = strict_check(&s, &v)?;
            Ok((
                StatusCode::CREATED,
                s.create(&t.group, &t.plural, ns, v, manager)?,
                w,
            ))
        }
        "update" => {
            let v = parse(body)?;
            let w = strict_check(&s, &v)?;
            let name = t.name.clone().unwrap_or_default();
            Ok((
                StatusCode::OK,
                s.update(&t.group, &t.plural, ns, &name, v, manager, status, true)?
                    .0,
                w,
            ))
        }
        "patch" => {
            let name = t.name.clone().unwrap_or_default();
            if content_type.starts_with("application/apply-patch") {
                let v = parse(body)?;
                let w = strict_check(&s, &v)?;
                let force = q.get("force").map(String::as_str) == Some("true");
                if !q.contains_key("fieldManager") {
                    return Err(ApiError::new(
                        400,
                        "BadRequest",
                        "PATCH with apply requires fieldManager",
                    ));
                }
                let (out, _, w2) =
                    s.apply(&t.group, &t.plural, ns, &name, v, manager, force, status)?;
                let mut w = w;
                w.extend(w2);
                w.sort();
                w.dedup();
                return Ok((StatusCode::OK, out, w));
            }
            let live = s.get(&t.group, &t.plural, ns, &name)?;
            let patched = if content_type.starts_with("application/json-patch") {
                json_patch(live, &parse(body)?)?
            } else {
                let mut l = live;
                merge_patch(&mut l, &parse(body)?);
                l
            };
            let w = strict_check(&s, &patched)?;
            Ok((
                StatusCode::OK,
                s.update(
                    &t.group, &t.plural, ns, &name, patched, manager, status, false,
                )?
                .0,
                w,
            ))
        }
        "delete" => {
            let name = t.name.clone().unwrap_or_default();
            Ok((
                StatusCode::OK,
                s.delete(&t.group, &t.plural, ns, &name)?,
                vec![],
            ))
        }
        _ => Err(ApiError::new(405, "MethodNotAllowed", "method not allowed")),
    }
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

fn watch_response(inner: Arc<Inner>, t: Target, q: BTreeMap<String, String>) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let mut live = inner.events.subscribe();
    let mut dropped = inner.faults.drop_watches.as_ref().map(|d| d.subscribe());
    let since: Option<u64> = q.get("resourceVersion").and_then(|r| r.parse().ok());
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800);
    let line = |type_: &str, obj: &Value| {
        Bytes::from(format!("{}\n", json!({"type": type_, "object": obj})))
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
    {
        let s = inner.store();
        start_rv = s.rv;
        match since {
            Some(rv) if rv > 0 && rv < s.compacted => {
                expired = true;
                initial.push(line("ERROR", &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("too old resource version: {rv} ({})", s.compacted), "reason": "Expired", "code": 410})));
            }
            Some(rv) if rv > 0 => {
                for e in s
                    .history
                    .iter()
                    .filter(|e| e.rv > rv && relevant(e, &t, &q))
                {
                    initial.push(line(
                        e.type_,
                        &with_version(e.object.clone(), &t.group, &t.version),
                    ));
                }
            }
            _ => {
                for o in s
                    .list(&t.group, &t.plural, t.namespace.as_deref())
                    .into_iter()
                    .filter(|o| object_matches(o, &q))
                {
                    initial.push(line("ADDED", &with_version(o, &t.group, &t.version)));
                }
            }
        }
    }
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
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = async { match dropped.as_mut() { Some(d) => { let _ = d.recv().await; } None => std::future::pending::<()>().await } } => return,
                ev = live.recv() => match ev {
                    Ok(e) if e.rv > start_rv && relevant(&e, &t, &q) => {
                        if tx.send(line(e.type_, &with_version(e.object.clone(), &t.group, &t.version))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
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
