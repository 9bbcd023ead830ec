//! A small HTTP/1.1 client for tests: keep-alive requests with a per-request timeout ([`Client`]), raw bytes
//! over TCP ([`raw`], for malformed requests), and a request abandoned after a while ([`abandon`], a client
//! that goes away during a delay).
//!
//! [`Client`] reuses connections (hyper's pooled client), so thousands of sequential requests are quick;
//! clones share the pool.

use crate::backend::Echo;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A whole response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// In the order received; names lower-case.
    pub headers: Vec<(String, String)>,
    /// The body (lossily UTF-8).
    pub body: String,
    /// From sending the request to having the whole body.
    pub elapsed: Duration,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The backend that answered (`x-backend`), if the request reached one.
    pub fn backend(&self) -> Option<&str> {
        self.header("x-backend")
    }

    /// The body as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.body)
            .map_err(|e| anyhow::anyhow!("body is not JSON ({e}): {:?}", self.body))
    }

    /// The backend's echo of the request (what the backend received), if a backend answered.
    pub fn echo(&self) -> anyhow::Result<Echo> {
        serde_json::from_str(&self.body)
            .map_err(|e| anyhow::anyhow!("body is not a backend echo ({e}): {:?}", self.body))
    }
}

/// A keep-alive HTTP/1.1 client bound to a base URL (`http://127.0.0.1:PORT`).
#[derive(Clone)]
pub struct Client {
    base: String,
    inner: HyperClient<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl Client {
    /// A client for `base` (e.g. [`crate::envoy::Envoy::base_url`]), 30 s per-request timeout.
    pub fn new(base: &str) -> Client {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        let inner = HyperClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(64)
            .build(connector);
        Client {
            base: base.trim_end_matches('/').to_string(),
            inner,
            timeout: Duration::from_secs(30),
        }
    }

    /// Sets the per-request timeout (whole response, body included).
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// GET `path` (with query) with `headers` (e.g. `("host", "myapp.example.com")`).
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<Response> {
        self.request("GET", path, headers).await
    }

    /// POST `path` with `body`.
    pub async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> anyhow::Result<Response> {
        self.send("POST", path, headers, body.into()).await
    }

    /// Any method, empty body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Response> {
        self.send(method, path, headers, Bytes::new()).await
    }

    /// Any method and body.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<Response> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body))?;
        let started = Instant::now();
        let resp = tokio::time::timeout(self.timeout, async {
            let resp = self.inner.request(req).await?;
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, headers, body))
        })
        .await
        .map_err(|_| anyhow::anyhow!("{method} {path}: no answer within {:?}", self.timeout))??;
        Ok(Response {
            status: resp.0,
            headers: resp.1,
            body: String::from_utf8_lossy(&resp.2).into_owned(),
            elapsed: started.elapsed(),
        })
    }
}

/// Sends raw bytes on a new connection and reads until the peer closes or `wait` passes; returns what was
/// read (possibly nothing). Send `Connection: close` to get the answer without waiting.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> anyhow::Result<Vec<u8>> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(bytes).await?;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            // A reset after the answer (e.g. Envoy closing on a malformed request) ends the read.
            Ok(Err(_)) if !out.is_empty() => break,
            Ok(Err(e)) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// The status code of a raw HTTP/1.x answer (`HTTP/1.1 400 Bad Request` -> 400).
pub fn raw_status(answer: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(answer.get(..12)?).ok()?;
    if !text.starts_with("HTTP/1.") {
        return None;
    }
    text.get(9..12)?.parse().ok()
}

/// Sends a GET and closes the connection after `after`, without reading the answer (a client that goes away,
/// e.g. during an injected delay). Adds `host: ADDR` unless `headers` has a host.
pub async fn abandon(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    after: Duration,
) -> anyhow::Result<()> {
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(req.as_bytes()).await?;
    tokio::time::sleep(after).await;
    drop(s);
    Ok(())
}
