//! Test backends: HTTP servers on 127.0.0.1 that answer every request with their name, so a test can see
//! where Envoy sent it.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;

/// One backend: answers 200 with header `x-backend: NAME` and a JSON body naming itself and echoing the
/// request's method, path and headers. Stops when dropped.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    count: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &str) -> anyhow::Result<Backend> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let count = Arc::new(AtomicU64::new(0));
        let (n, c) = (name.to_string(), count.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (n, c) = (n.clone(), c.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: Request<hyper::body::Incoming>| {
                            c.fetch_add(1, Ordering::Relaxed);
                            let headers: serde_json::Map<String, serde_json::Value> = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (
                                        k.to_string(),
                                        String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
                                    )
                                })
                                .collect();
                            let body = serde_json::json!({
                                "backend": n,
                                "method": req.method().as_str(),
                                "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
                                "headers": headers,
                            });
                            let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
                            if let Ok(v) = n.parse() {
                                resp.headers_mut().insert("x-backend", v);
                            }
                            async move { Ok::<_, std::convert::Infallible>(resp) }
                        },
                    );
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                });
            }
        });
        Ok(Backend {
            name: name.to_string(),
            addr,
            count,
            task,
        })
    }

    /// Requests answered so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
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
