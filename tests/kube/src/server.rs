//! One real Kubernetes API server, as envtest starts it: etcd and kube-apiserver on free 127.0.0.1 ports,
//! RBAC authorization, a bearer token for an admin (group system:masters), ServiceAccount tokens signed by a
//! key of its own, an audit log of every request, and everything in a temporary folder removed at the end.

use crate::client::Client;
use crate::process::Supervised;
use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// What kube-apiserver must report at /version: the pinned release.
pub const KUBERNETES_VERSION: &str = "v1.37.2";

const ADMIN_USER: &str = "ksit-test-admin";

pub struct ApiServer {
    name: String,
    dir: PathBuf,
    port: u16,
    etcd_url: String,
    admin_token: String,
    ca_pem: String,
    apiserver: Option<Supervised>,
    etcd: Option<Supervised>,
    keep: bool,
    /// From each kube-apiserver start to its readiness (RFC 3339 text, as the audit log writes times): a
    /// server serves requests before it is ready, and refuses (403) what its RBAC caches do not hold yet.
    starting: Vec<(String, String)>,
}

/// A port the kernel just handed out, released for the server to take. Another process could take it first:
/// a server that fails to bind is started again on other ports.
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn address_in_use(log: &Path) -> bool {
    std::fs::read_to_string(log).is_ok_and(|t| t.contains("address already in use"))
}

/// GET `path` over plain HTTP (etcd's health endpoint); the status code, or None when nothing answers.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut head = String::new();
    s.read_to_string(&mut head).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

struct Tls {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
    sa_key_pem: String,
    sa_pub_pem: String,
}

fn make_tls() -> anyhow::Result<Tls> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "ksit-kube test CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut serving = CertificateParams::new(vec!["localhost".to_string()])?;
    serving
        .subject_alt_names
        .push(SanType::IpAddress(Ipv4Addr::LOCALHOST.into()));
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    let cert = serving.signed_by(&key, &ca_cert, &ca_key)?;
    let sa = KeyPair::generate()?;
    Ok(Tls {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        sa_key_pem: sa.serialize_pem(),
        sa_pub_pem: sa.public_key_pem(),
    })
}

const AUDIT_POLICY: &str = "\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  users: [system:apiserver]
- level: None
  nonResourceURLs: ['/readyz*', '/healthz*', '/livez*']
- level: Metadata
";

impl ApiServer {
    /// Starts etcd and kube-apiserver for the cluster `name` and waits until the API server is ready. Prints
    /// how long that took. Fails, never skips, when the binaries cannot be built or a server does not start.
    pub async fn start(name: &str) -> anyhow::Result<ApiServer> {
        let assets = crate::kube_assets()?;
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ksit-kube-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(dir.join("etcd"))?;
        let tls = make_tls()?;
        for (file, text) in [
            ("ca.crt", &tls.ca_pem),
            ("apiserver.crt", &tls.cert_pem),
            ("apiserver.key", &tls.key_pem),
            ("sa.key", &tls.sa_key_pem),
            ("sa.pub", &tls.sa_pub_pem),
        ] {
            std::fs::write(dir.join(file), text)?;
        }
        let admin_token = random_token();
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{admin_token},{ADMIN_USER},{ADMIN_USER},\"system:masters\"\n"),
        )?;
        std::fs::write(dir.join("audit-policy.yaml"), AUDIT_POLICY)?;
        let started = Instant::now();
        let (etcd, etcd_url) = start_etcd(&assets, &dir, name).await?;
        let mut server = ApiServer {
            name: name.to_string(),
            dir,
            port: 0,
            etcd_url,
            admin_token,
            ca_pem: tls.ca_pem,
            apiserver: None,
            etcd: Some(etcd),
            keep: std::env::var_os("KSIT_KEEP_KUBE").is_some(),
            starting: Vec::new(),
        };
        for _attempt in 0..3 {
            server.port = free_port()?;
            match server.start_apiserver().await {
                Ok(()) => break,
                Err(e) if address_in_use(&server.dir.join("kube-apiserver.log")) => {
                    eprintln!(
                        "ksit-kube: {name}: port {} taken, trying another ({e})",
                        server.port
                    );
                }
                Err(e) => return Err(e),
            }
        }
        if server.apiserver.is_none() {
            bail!("{name}: kube-apiserver found no free port in 3 attempts");
        }
        let version = server.admin().await?.version().await?;
        say(&format!(
            "ksit-kube: {name}: kube-apiserver {version} ready at {} in {:.1} s (etcd and kube-apiserver)",
            server.url(),
            started.elapsed().as_secs_f64()
        ));
        if version != KUBERNETES_VERSION {
            bail!("{name}: kube-apiserver reports {version}, expected {KUBERNETES_VERSION}");
        }
        Ok(server)
    }

    async fn start_apiserver(&mut self) -> anyhow::Result<()> {
        let assets = crate::kube_assets()?;
        let d = &self.dir;
        let mut cmd = Command::new(assets.join("kube-apiserver"));
        cmd.args([
            "--bind-address",
            "127.0.0.1",
            "--advertise-address",
            "127.0.0.1",
        ])
        .args(["--secure-port", &self.port.to_string()])
        .args(["--etcd-servers", &self.etcd_url])
        .args(["--tls-cert-file", &path(d, "apiserver.crt")])
        .args(["--tls-private-key-file", &path(d, "apiserver.key")])
        .args(["--client-ca-file", &path(d, "ca.crt")])
        .args(["--token-auth-file", &path(d, "tokens.csv")])
        .args(["--authorization-mode", "RBAC"])
        .args(["--service-account-issuer", &self.url()])
        .args(["--service-account-key-file", &path(d, "sa.pub")])
        .args(["--service-account-signing-key-file", &path(d, "sa.key")])
        .args(["--service-cluster-ip-range", "10.0.0.0/24"])
        // A loopback address cannot be the kubernetes Service's endpoint; nothing here needs one.
        .args(["--endpoint-reconciler-type", "none"])
        .args(["--audit-policy-file", &path(d, "audit-policy.yaml")])
        .args(["--audit-log-path", &path(d, "audit.log")])
        .args(["--audit-log-mode", "blocking"])
        .args(["--cert-dir", &path(d, "certs")]);
        let log = d.join("kube-apiserver.log");
        let began = crate::audit::rfc3339(std::time::SystemTime::now());
        let process = Supervised::spawn(&format!("{}-kube-apiserver", self.name), cmd, &log)?;
        let admin = self.admin().await?;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if process.exited() {
                bail!(
                    "{}: kube-apiserver exited while starting; last lines of {}:\n{}",
                    self.name,
                    log.display(),
                    log_tail(&log, 15)
                );
            }
            if admin.ready().await && admin.rbac_ready().await {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: kube-apiserver not ready after 90 s; last lines of {}:\n{}",
                    self.name,
                    log.display(),
                    log_tail(&log, 15)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.apiserver = Some(process);
        self.starting
            .push((began, crate::audit::rfc3339(std::time::SystemTime::now())));
        Ok(())
    }

    /// Whether a request received at `received` (audit log time) came while a kube-apiserver of this cluster
    /// was starting, before it was ready.
    pub fn while_starting(&self, received: &str) -> bool {
        self.starting
            .iter()
            .any(|(from, to)| from.as_str() <= received && received <= to.as_str())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A kubeconfig that authenticates with `token` (the admin's when None).
    pub fn kubeconfig(&self, token: Option<&str>) -> String {
        crate::kubeconfig(
            &self.name,
            &self.url(),
            &self.ca_pem,
            token.unwrap_or(&self.admin_token),
        )
    }

    /// A client with the admin's token (group system:masters: RBAC allows everything).
    pub async fn admin(&self) -> anyhow::Result<Client> {
        Client::new(&self.kubeconfig(None)).await
    }

    /// Applies `rbac_yaml` as the admin and returns a kubeconfig of the ServiceAccount `namespace/name`: see
    /// [`crate::service_account_kubeconfig`].
    pub async fn service_account_kubeconfig(
        &self,
        rbac_yaml: &str,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<String> {
        crate::service_account_kubeconfig(&self.kubeconfig(None), rbac_yaml, namespace, name)
            .await
            .with_context(|| format!("{}: ServiceAccount {namespace}/{name}", self.name))
    }

    /// Every request the audit log recorded so far (the API server's own requests left out).
    pub fn audit(&self) -> Vec<crate::AuditEvent> {
        crate::audit::read(&self.dir.join("audit.log"))
    }

    /// Stops kube-apiserver (etcd keeps the data): clients get connection refused until [`ApiServer::resume`].
    pub fn stop_apiserver(&mut self) {
        if let Some(mut p) = self.apiserver.take() {
            p.stop();
        }
    }

    /// Starts kube-apiserver again on the same port, with the same data.
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        if self.apiserver.is_none() {
            self.start_apiserver().await?;
        }
        Ok(())
    }

    pub fn is_up(&self) -> bool {
        self.apiserver.is_some()
    }
}

/// A line on the process's stderr even inside a test, whose `eprintln!` output the harness captures: the log of
/// `make test` shows every server that started, its version and how long it took.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn path(dir: &Path, file: &str) -> String {
    dir.join(file).to_string_lossy().into_owned()
}

async fn start_etcd(assets: &Path, dir: &Path, name: &str) -> anyhow::Result<(Supervised, String)> {
    let log = dir.join("etcd.log");
    for _attempt in 0..3 {
        let (client, peer) = (free_port()?, free_port()?);
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut cmd = Command::new(assets.join("etcd"));
        cmd.args(["--name", "default", "--data-dir", &path(dir, "etcd")])
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            // Test data: no fsync, as envtest's etcd would benefit from too.
            .args(["--unsafe-no-fsync", "--log-level", "warn"]);
        let process = Supervised::spawn(&format!("{name}-etcd"), cmd, &log)?;
        let addr: SocketAddr = (Ipv4Addr::LOCALHOST, client).into();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if process.exited() {
                break;
            }
            if http_status(addr, "/health") == Some(200) {
                return Ok((process, client_url));
            }
            if Instant::now() > deadline {
                bail!(
                    "{name}: etcd not healthy after 30 s:\n{}",
                    log_tail(&log, 15)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !address_in_use(&log) {
            bail!(
                "{name}: etcd exited while starting:\n{}",
                log_tail(&log, 15)
            );
        }
    }
    bail!("{name}: etcd found no free ports in 3 attempts")
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // kube-apiserver before its etcd, then the folder.
        if let Some(mut p) = self.apiserver.take() {
            p.stop();
        }
        if let Some(mut p) = self.etcd.take() {
            p.stop();
        }
        if self.keep {
            say(&format!(
                "ksit-kube: {}: kept {}",
                self.name,
                self.dir.display()
            ));
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
