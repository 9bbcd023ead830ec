//! Test backends: HTTP/1.1 servers on 127.0.0.1 that answer every request with their name, so a test can see
//! where Envoy sent it.
//!
//! Each answer is `200` with header `x-backend: NAME` and a JSON body
//! `{"backend": NAME, "method": .., "path": .., "headers": {..}, "body_len": N}` (header names lower-case;
//! a repeated header's values joined with `, `). See [`Echo`] to read it back.

use crate::envoy::Upstream;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;

/// One backend, serving until dropped (its listener and open connections close).
pub struct Backend {
    /// Its name (the `x-backend` header); [`Backends`] uses the destination.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    count: Arc<AtomicU64>,
    /// The path (with query) of every request answered, in order.
    paths: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

/// A backend's JSON answer, parsed (see [`crate::client::Response::echo`]).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Echo {
    pub backend: String,
    pub method: String,
    /// Path and query as the backend received them.
    pub path: String,
    /// Request headers as the backend received them (lower-case names).
    pub headers: BTreeMap<String, String>,
    /// Length of the request body.
    #[serde(default)]
    pub body_len: u64,
}

async fn answer(
    name: Arc<str>,
    count: Arc<AtomicU64>,
    paths: Arc<std::sync::Mutex<Vec<String>>>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    count.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut p) = paths.lock() {
        p.push(
            req.uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
                .to_string(),
        );
    }
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in req.headers() {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        headers
            .entry(k.to_string())
            .and_modify(|old| {
                old.push_str(", ");
                old.push_str(&v);
            })
            .or_insert(v);
    }
    let method = req.method().as_str().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    let body_len = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().len() as u64,
        Err(_) => 0,
    };
    let body = serde_json::json!({
        "backend": &*name,
        "method": method,
        "path": path,
        "headers": headers,
        "body_len": body_len,
    });
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = name.parse() {
        resp.headers_mut().insert("x-backend", v);
    }
    Ok(resp)
}

impl Backend {
    /// Starts a backend named `name` on `127.0.0.1:0`.
    pub async fn start(name: &str) -> anyhow::Result<Backend> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let count = Arc::new(AtomicU64::new(0));
        let paths = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (n, c, ps): (Arc<str>, _, _) = (Arc::from(name), count.clone(), paths.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (n, c, ps) = (n.clone(), c.clone(), ps.clone());
                // Connections live in the JoinSet, so dropping the backend (aborting this task) closes them.
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        answer(n.clone(), c.clone(), ps.clone(), req)
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(Backend {
            name: name.to_string(),
            addr,
            count,
            paths,
            task,
        })
    }

    /// Requests answered so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The path (with query) of every request answered so far, in order.
    pub fn paths(&self) -> Vec<String> {
        self.paths.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// This backend as the upstream of `destination`.
    pub fn upstream_as(&self, destination: &str) -> Upstream {
        Upstream {
            destination: destination.to_string(),
            addr: self.addr,
        }
    }

    /// This backend as the upstream of the destination named like it.
    pub fn upstream(&self) -> Upstream {
        self.upstream_as(&self.name)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts one backend per name.
pub async fn start_all(names: &[&str]) -> anyhow::Result<Vec<Backend>> {
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        out.push(Backend::start(n).await?);
    }
    Ok(out)
}

/// Several backends, one per destination, each named after its destination (so a response's `x-backend` is
/// the destination that served it). Derefs to `[Backend]`.
pub struct Backends(pub Vec<Backend>);

impl Backends {
    /// Starts one backend per destination (`"api-service-v1"`, `"reviews|v2"`, ..).
    pub async fn start(destinations: &[&str]) -> anyhow::Result<Backends> {
        Ok(Backends(start_all(destinations).await?))
    }

    /// One [`Upstream`] per backend, for [`crate::envoy::EnvoyConfig::new`].
    pub fn upstreams(&self) -> Vec<Upstream> {
        self.0.iter().map(Backend::upstream).collect()
    }

    /// The backend named `name`.
    pub fn get(&self, name: &str) -> Option<&Backend> {
        self.0.iter().find(|b| b.name == name)
    }

    /// Requests answered by the backend named `name` (0 if there is none).
    pub fn count(&self, name: &str) -> u64 {
        self.get(name).map_or(0, Backend::count)
    }

    /// Requests answered so far, per backend name.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.0.iter().map(|b| (b.name.clone(), b.count())).collect()
    }

    /// Requests answered so far by all of them.
    pub fn total(&self) -> u64 {
        self.0.iter().map(Backend::count).sum()
    }
}

impl std::ops::Deref for Backends {
    type Target = [Backend];
    fn deref(&self) -> &[Backend] {
        &self.0
    }
}
