//! The controller's HTTP surface: /healthz, /readyz, /metrics and /modules/<sha256>.wasm.

use crate::metrics::Metrics;
use crate::module::Module;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub struct ServerState {
    pub metrics: Arc<Metrics>,
    pub module: Option<Module>,
    /// Set once the hub answered and the first reconcile ran.
    pub ready: AtomicBool,
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

pub fn handle(state: &ServerState, path: &str) -> Response<Full<Bytes>> {
    match path {
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" if state.ready.load(Ordering::Relaxed) => {
            reply(StatusCode::OK, "text/plain", "ready\n")
        }
        "/readyz" => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n"),
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics.encode(),
        ),
        p => match (
            p.strip_prefix("/modules/")
                .and_then(|f| f.strip_suffix(".wasm")),
            &state.module,
        ) {
            // Only the module's own hash is served: anything else is 404, so no file path is ever read.
            (Some(hash), Some(m)) if hash == m.sha256 => {
                reply(StatusCode::OK, "application/wasm", m.bytes.clone())
            }
            _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        },
    }
}

/// Serves until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ServerState>,
) -> anyhow::Result<()> {
    log::info!(
        "serving /healthz /readyz /metrics /modules on {}",
        listener.local_addr()?
    );
    loop {
        let (stream, _) = listener.accept().await?;
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&state, req.uri().path())) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn get(state: &ServerState, path: &str) -> (u16, String) {
        let r = handle(state, path);
        let status = r.status().as_u16();
        let body = r
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn endpoints() {
        let module = Module {
            bytes: b"\0asm-test".to_vec(),
            sha256: "ab12".into(),
        };
        let state = ServerState {
            metrics: Arc::new(Metrics::default()),
            module: Some(module),
            ready: AtomicBool::new(false),
        };
        assert_eq!(get(&state, "/healthz").await.0, 200);
        assert_eq!(get(&state, "/readyz").await.0, 503);
        state.ready.store(true, Ordering::Relaxed);
        assert_eq!(get(&state, "/readyz").await.0, 200);
        state.metrics.clusters_ready.set(2);
        let (s, body) = get(&state, "/metrics").await;
        assert_eq!(s, 200);
        assert!(body.contains("ksit_controller_clusters_ready 2"), "{body}");
        assert_eq!(
            get(&state, "/modules/ab12.wasm").await,
            (200, "\0asm-test".to_string())
        );
        // Only the module's own hash is served.
        assert_eq!(get(&state, "/modules/ffff.wasm").await.0, 404);
        assert_eq!(get(&state, "/modules/../../etc/passwd").await.0, 404);
    }
}
