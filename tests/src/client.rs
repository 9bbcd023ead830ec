//! A small HTTP/1.1 client for tests: keep-alive requests with a timeout, raw bytes over TCP, and a request
//! abandoned after a while (a client that goes away during a delay).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub elapsed: Duration,
}

impl Response {
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
}

#[derive(Clone)]
pub struct Client {
    base: String,
    inner: HyperClient<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

impl Client {
    pub fn new(base: &str) -> Client {
        let inner = HyperClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(64)
            .build_http();
        Client {
            base: base.trim_end_matches('/').to_string(),
            inner,
            timeout: Duration::from_secs(30),
        }
    }

    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// GET `path` with `headers` (e.g. `("host", "myapp.example.com")`).
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<Response> {
        self.request("GET", path, headers).await
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Response> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Empty::<Bytes>::new())?;
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

/// Sends raw bytes on a new connection and reads until the peer closes or `wait` passes.
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
            Ok(Err(e)) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// Sends a GET and closes the connection after `after`, without reading the answer.
pub async fn abandon(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    after: Duration,
) -> anyhow::Result<()> {
    let mut req = format!("GET {path} HTTP/1.1\r\n");
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
