//! `make demo`: the whole mission on one machine. A hub and three member clusters (Kubernetes API emulators),
//! the KSIT example applied on the hub, the ksit controller syncing the two labelled clusters, a canary
//! rolled out in one cluster first; then a real Envoy per bound cluster, configured from that cluster's
//! WasmPlugin, driven with traffic; a report per cluster against the policy, and an SVG chart.

use ksit_controller::controller::{run_async_on, ControllerArgs};
use ksit_controller::module::ModuleArgs;
use ksit_emulator::Emulator;
use ksit_tests::backend::start_all;
use ksit_tests::client::Client;
use ksit_tests::envoy::{Envoy, EnvoyConfig, FilterConfig, Upstream};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HOST: &str = "myapp.example.com";
const API_REQUESTS: usize = 1500;
const WEB_REQUESTS: usize = 300;
const IN_FLIGHT: usize = 200;
const DESTS: [&str; 3] = ["api-service-v1", "api-service-v2", "web-service"];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("\ndemo failed: {e:#}");
        std::process::exit(1);
    }
}

fn say(s: &str) {
    println!("{s}");
}

/// The policy a cluster's filter applies: the shared pluginConfig's spec with that cluster's overrides
/// resolved (what the report compares the traffic with).
fn resolved_for(config: &Value, cluster: &str) -> Value {
    ksit_policy::PluginConfig::from_json(config.to_string().as_bytes())
        .ok()
        .and_then(|c| {
            let spec = c.policies.first()?.spec.resolve(Some(cluster));
            serde_json::to_value(spec).ok()
        })
        .unwrap_or(Value::Null)
}

fn example() -> PathBuf {
    ksit_tests::repo_root().join("manifests/examples/multi-cluster-mesh")
}

fn docs(file: &str) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(example().join(file))?;
    let mut out = Vec::new();
    for d in serde_yaml::Deserializer::from_str(&text) {
        out.push(serde::Deserialize::deserialize(d)?);
    }
    Ok(out)
}

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            out.push(if i <= c.len() {
                T[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

struct Observed {
    cluster: String,
    per_dest: BTreeMap<String, usize>,
    api: usize,
    delayed: usize,
    aborted: usize,
    web_ok: usize,
    web: usize,
    errors: usize,
    policy_v2: f64,
    policy_delay: f64,
    policy_abort: f64,
}

async fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    say("ksit demo: a hub and three member clusters (Kubernetes API emulators), the ksit controller, real Envoys\n");

    // 1. Clusters.
    // Istio's own CRDs, from the pinned istio.io/istio module (a module download; nothing is built).
    let istio_crds = ksit_tests::istio_crd_documents()?;
    let hub = Emulator::start("hub").await?;
    hub.load_crds_yaml(&ksit_controller::resources::crds_yaml())?;
    hub.load_crds(&istio_crds)?;
    let mut members = Vec::new();
    for (name, labels) in [
        (
            "cluster1",
            json!({"mesh": "enabled", "integration": "istio"}),
        ),
        (
            "cluster2",
            json!({"mesh": "enabled", "integration": "istio"}),
        ),
        ("cluster3", json!({"mesh": "disabled"})),
    ] {
        let m = Emulator::start(name).await?;
        m.load_crds(&istio_crds)?;
        m.put(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}}),
            "istio",
        )?;
        m.put(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "istiod", "namespace": "istio-system"}, "spec": {"replicas": 1}, "status": {"availableReplicas": 1}}), "istio")?;
        m.put(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "istio-ingressgateway", "namespace": "istio-system", "labels": {"istio": "ingressgateway"}}, "spec": {"replicas": 1}}), "istio")?;
        say(&format!("  {name:<9} {} labels {labels}", m.url()));
        members.push((m, labels));
    }
    say(&format!(
        "  {:<9} {} (Istio's CRDs from istio.io/istio)\n",
        "hub",
        hub.url()
    ));

    // 2. The example on the hub.
    for ns in ["ksit-system", "istio-system"] {
        hub.put(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            "kubectl",
        )?;
    }
    for (m, labels) in &members {
        hub.put(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("{}-kubeconfig", m.name()), "namespace": "ksit-system"}, "data": {"kubeconfig": b64(m.kubeconfig().as_bytes())}}), "kubectl")?;
        hub.put(json!({"apiVersion": "ksit.io/v1alpha1", "kind": "IntegrationTarget", "metadata": {"name": m.name(), "namespace": "ksit-system"}, "spec": {"clusterName": m.name(), "labels": labels}}), "kubectl")?;
    }
    for f in [
        "integration.yaml",
        "gateway.yaml",
        "destinationrule.yaml",
        "trafficpolicy.yaml",
        "bindingpolicy.yaml",
    ] {
        for d in docs(f)? {
            hub.put(d, "kubectl")?;
        }
        say(&format!("applied {f}"));
    }

    // 3. The controller.
    let dir = std::env::temp_dir().join(format!("ksit-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    hub.write_kubeconfig(&dir.join("hub.kubeconfig"))?;
    let module = ksit_tests::envoy::filter_wasm()?;
    // Bound here and handed over, so the port in the module's URL stays ours.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let args = ControllerArgs {
        kubeconfig: Some(dir.join("hub.kubeconfig")),
        listen: ([127, 0, 0, 1], port).into(),
        module: ModuleArgs {
            module: module.clone(),
            module_base_url: format!("http://127.0.0.1:{port}"),
            oci_image: None,
            gateway_namespace: "istio-system".into(),
            stable_by_default_route: false,
            per_cluster_rendering: false,
        },
        namespace: "ksit-system".into(),
        target_namespaces: vec!["ksit-system".into()],
        kubestellar_owns_bindings: false,
        deliver: ksit_controller::controller::Delivery::Push,
        resync_seconds: 30,
        member_timeout_seconds: 3,
        hub_timeout_seconds: 30,
        identity: Some("ksit-demo".into()),
        lease_seconds: 10,
    };
    let controller = tokio::spawn(run_async_on(args, listener));
    say("\nksit controller started; sync status from the hub (BindingPolicy istio-mesh-binding):");
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let bp = hub
            .object(
                "control.kubestellar.io",
                "bindingpolicies",
                None,
                "istio-mesh-binding",
            )
            .unwrap_or_default();
        let clusters = bp
            .pointer("/status/clusters")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let line: Vec<String> = clusters
            .iter()
            .map(|c| {
                format!(
                    "{} {}/{} objects{}",
                    c["name"].as_str().unwrap_or(""),
                    c["syncedObjects"],
                    c["desiredObjects"],
                    if c["errors"].as_array().is_some_and(|e| !e.is_empty()) {
                        " (errors)"
                    } else {
                        ""
                    }
                )
            })
            .collect();
        let line = format!(
            "  {:>5.1}s  {}",
            started.elapsed().as_secs_f64(),
            if line.is_empty() {
                "waiting for the first reconcile".into()
            } else {
                line.join("   ")
            }
        );
        if line.split_once("s ").map(|x| x.1) != last.split_once("s ").map(|x| x.1) {
            say(&line);
            last = line;
        }
        let ready = bp
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
        if ready {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the clusters did not converge in 30 s:\n{bp:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (m, _) in &members {
        let n = m.objects("extensions.istio.io", "wasmplugins").len()
            + m.objects("networking.istio.io", "virtualservices").len();
        say(&format!(
            "  {}: {} WasmPlugin/VirtualService object(s)",
            m.name(),
            n
        ));
    }

    // 4. Canary in one cluster first: cluster2 goes to 30%.
    let mut tp = hub
        .object("ksit.io", "trafficpolicies", Some("default"), "myapp")
        .ok_or_else(|| anyhow::anyhow!("TrafficPolicy gone"))?;
    tp["spec"]["overrides"] = json!([{"clusters": ["cluster2"], "http": [{"name": "api", "route": [
        {"destination": {"host": "api-service-v1", "port": {"number": 8080}}, "weight": 70},
        {"destination": {"host": "api-service-v2", "port": {"number": 8080}}, "weight": 30}]}]}]);
    hub.put(tp, "kubectl-edit")?;
    let t = Instant::now();
    // The WasmPlugin is the same on every cluster; each proxy resolves its own cluster's overrides.
    let weight = |m: &Emulator| {
        m.object(
            "extensions.istio.io",
            "wasmplugins",
            Some("istio-system"),
            "ksit-default-myapp",
        )
        .and_then(|w| {
            let config = ksit_policy::PluginConfig::from_json(
                w["spec"]["pluginConfig"].to_string().as_bytes(),
            )
            .ok()?;
            let spec = config.policies.first()?.spec.resolve(Some(m.name()));
            spec.http.first()?.route.get(1)?.weight
        })
    };
    while weight(&members[1].0) != Some(30) {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(10),
            "the override did not reach cluster2"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    say(&format!("\nrolled the canary to 30% in cluster2 only (TrafficPolicy override): on cluster2 in {} ms", t.elapsed().as_millis()));

    // 5. An Envoy per bound cluster, configured from its WasmPlugin.
    let backends = start_all(&DESTS).await?;
    let upstreams = Upstream::for_backends(&backends);
    let mut envoys = Vec::new();
    for (m, _) in &members {
        let Some(wp) = m.object(
            "extensions.istio.io",
            "wasmplugins",
            Some("istio-system"),
            "ksit-default-myapp",
        ) else {
            say(&format!(
                "{}: no WasmPlugin (not bound), no Envoy",
                m.name()
            ));
            continue;
        };
        // Routes as istiod would make them from the cluster's VirtualService: its header routes, then each
        // rule's default route to its stable destination (for requests the filter did not decide).
        let vs = m
            .object(
                "networking.istio.io",
                "virtualservices",
                Some("default"),
                "ksit-myapp",
            )
            .ok_or_else(|| anyhow::anyhow!("{}: no VirtualService ksit-myapp", m.name()))?;
        let mut cfg = EnvoyConfig::new("1.40.0", upstreams.clone());
        cfg.concurrency = 1;
        cfg.virtual_service = Some(vs["spec"].clone());
        cfg.filter = Some(FilterConfig::new(&wp["spec"]["pluginConfig"])?);
        // As istiod bootstraps a proxy: its cluster's ID in the node metadata, from which the filter picks
        // that cluster's overrides out of the shared pluginConfig.
        cfg.node_metadata = Some(json!({"CLUSTER_ID": m.name()}));
        let envoy = Envoy::start(&cfg).await?;
        say(&format!(
            "{}: Envoy {} on {} with the shared pluginConfig and VirtualService routes (CLUSTER_ID {0})",
            m.name(),
            envoy.version,
            envoy.listener
        ));
        envoys.push((
            m.name().to_string(),
            envoy,
            resolved_for(&wp["spec"]["pluginConfig"], m.name()),
        ));
    }

    // 6. Traffic.
    let total = (API_REQUESTS + WEB_REQUESTS) * envoys.len();
    say(&format!("\nsending {total} requests ({API_REQUESTS} /api + {WEB_REQUESTS} /web per cluster, distinct x-request-id, 500 users):"));
    let done = Arc::new(AtomicUsize::new(0));
    // A live bar on a terminal; in a log (make test, CI), one line when the phase ends.
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let started_traffic = Instant::now();
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            if !terminal {
                return;
            }
            loop {
                let d = done.load(Ordering::Relaxed).min(total);
                let filled = d * 40 / total.max(1);
                print!(
                    "\r  [{}{}] {d}/{total}",
                    "#".repeat(filled),
                    " ".repeat(40 - filled)
                );
                let _ = std::io::stdout().flush();
                if d >= total {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let mut runs = Vec::new();
    for (cluster, envoy, cfg) in &envoys {
        runs.push(drive(
            cluster.clone(),
            envoy.base_url(),
            cfg.clone(),
            done.clone(),
        ));
    }
    let observed: Vec<Observed> = futures::future::join_all(runs)
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    done.store(total, Ordering::Relaxed);
    let _ = progress.await;
    if terminal {
        say("");
    } else {
        say(&format!(
            "  {total}/{total} requests sent in {:.1} s",
            started_traffic.elapsed().as_secs_f64()
        ));
    }

    // 7. Report.
    say(&format!(
        "\n{:<10} {:<26} {:>9} {:>10} {:>9}",
        "cluster", "what", "requests", "observed", "policy"
    ));
    say(&"-".repeat(68));
    let pct = |n: usize, of: usize| {
        if of == 0 {
            0.0
        } else {
            n as f64 * 100.0 / of as f64
        }
    };
    let mut ok = true;
    for o in &observed {
        let routed: usize = o.per_dest.values().sum();
        let v2 = o.per_dest.get("api-service-v2").copied().unwrap_or(0);
        let v1 = o.per_dest.get("api-service-v1").copied().unwrap_or(0);
        let rows = [
            (
                "/api -> api-service-v1",
                v1,
                pct(v1, routed),
                100.0 - o.policy_v2,
            ),
            ("/api -> api-service-v2", v2, pct(v2, routed), o.policy_v2),
            (
                "/api delayed >= 5s",
                o.delayed,
                pct(o.delayed, o.api),
                o.policy_delay,
            ),
            (
                "/api aborted (503)",
                o.aborted,
                pct(o.aborted, o.api),
                o.policy_abort,
            ),
            ("/web -> web-service", o.web_ok, pct(o.web_ok, o.web), 100.0),
        ];
        for (i, (what, n, obs, want)) in rows.iter().enumerate() {
            say(&format!(
                "{:<10} {:<26} {:>9} {:>9.1}% {:>8.1}%",
                if i == 0 { o.cluster.as_str() } else { "" },
                what,
                n,
                obs,
                want
            ));
            ok &= (obs - want).abs() <= 4.0;
        }
        ok &= o.errors == 0;
    }
    let chart = ksit_tests::repo_root().join("target/demo/ksit-demo.svg");
    std::fs::create_dir_all(chart.parent().unwrap_or(&dir))?;
    std::fs::write(&chart, svg(&observed))?;
    say(&format!(
        "\nchart: {}",
        chart.canonicalize().unwrap_or(chart).display()
    ));

    // 8. Clean up: every Envoy, backend, emulator and the controller stop here.
    controller.abort();
    let _ = controller.await;
    drop(envoys);
    drop(backends);
    for (m, _) in &members {
        m.shutdown();
    }
    hub.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    anyhow::ensure!(
        ok,
        "observed numbers are far from the policy's; see the table above"
    );
    say(&format!("demo ok in {:.0}s: two clusters synced, cluster3 left alone, each Envoy split and faulted as its policy says.", started.elapsed().as_secs_f64()));
    Ok(())
}

async fn drive(
    cluster: String,
    base: String,
    cfg: Value,
    done: Arc<AtomicUsize>,
) -> anyhow::Result<Observed> {
    let client = Client::new(&base).with_timeout(Duration::from_secs(30));
    let sem = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut tasks = Vec::new();
    for i in 0..API_REQUESTS + WEB_REQUESTS {
        let (client, sem, done, cluster) =
            (client.clone(), sem.clone(), done.clone(), cluster.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.ok()?;
            let api = i % 6 != 5;
            let path = if api {
                "/api/orders"
            } else {
                "/web/index.html"
            };
            let id = format!("{cluster}-{i}");
            let user = format!("user-{}", i % 500);
            let r = client
                .get(
                    path,
                    &[("host", HOST), ("x-request-id", &id), ("x-user-id", &user)],
                )
                .await
                .ok();
            done.fetch_add(1, Ordering::Relaxed);
            Some((api, r))
        }));
    }
    let w = |p: &str| cfg.pointer(p).and_then(Value::as_f64).unwrap_or(0.0);
    let (w1, w2) = (w("/http/0/route/0/weight"), w("/http/0/route/1/weight"));
    let mut o = Observed {
        cluster,
        per_dest: BTreeMap::new(),
        api: 0,
        delayed: 0,
        aborted: 0,
        web_ok: 0,
        web: 0,
        errors: 0,
        policy_v2: if w1 + w2 > 0.0 {
            w2 * 100.0 / (w1 + w2)
        } else {
            0.0
        },
        policy_delay: w("/http/0/fault/delay/percentage/value"),
        policy_abort: w("/http/0/fault/abort/percentage/value"),
    };
    for t in tasks {
        match t.await? {
            Some((true, Some(r))) => {
                o.api += 1;
                o.delayed += usize::from(r.elapsed >= Duration::from_secs(5));
                if r.header("x-ksit-fault") == Some("abort") {
                    o.aborted += 1;
                } else if let Some(b) = r.backend() {
                    *o.per_dest.entry(b.to_string()).or_default() += 1;
                } else {
                    o.errors += 1;
                }
            }
            Some((false, Some(r))) => {
                o.web += 1;
                o.web_ok += usize::from(r.backend() == Some("web-service"));
            }
            _ => o.errors += 1,
        }
    }
    Ok(o)
}

/// Grouped bars per cluster: observed next to the policy's number for the canary share, delays and aborts.
fn svg(obs: &[Observed]) -> String {
    let (w, h, top, left, bottom) = (760.0, 360.0, 50.0, 60.0, 300.0);
    let scale = |v: f64| (bottom - top) * v.min(40.0) / 40.0;
    let mut s = format!("<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n<text x='{left}' y='24' font-size='16'>ksit demo: observed (solid) vs policy (outline), % of /api requests, y axis 0-40%</text>\n");
    for g in [0.0, 10.0, 20.0, 30.0, 40.0] {
        let y = bottom - scale(g);
        s.push_str(&format!("<line x1='{left}' x2='{}' y1='{y}' y2='{y}' stroke='#ddd'/><text x='{}' y='{}' text-anchor='end'>{g}%</text>\n", w - 20.0, left - 6.0, y + 4.0));
    }
    let colors = ["#3b7dd8", "#e0a030", "#d04040"];
    let group_w = (w - left - 40.0) / obs.len().max(1) as f64;
    for (ci, o) in obs.iter().enumerate() {
        let routed: usize = o.per_dest.values().sum();
        let pct = |n: usize, of: usize| {
            if of == 0 {
                0.0
            } else {
                n as f64 * 100.0 / of as f64
            }
        };
        let bars = [
            (
                "canary v2",
                pct(
                    o.per_dest.get("api-service-v2").copied().unwrap_or(0),
                    routed,
                ),
                o.policy_v2,
            ),
            ("delayed", pct(o.delayed, o.api), o.policy_delay),
            ("aborted", pct(o.aborted, o.api), o.policy_abort),
        ];
        let gx = left + 20.0 + ci as f64 * group_w;
        for (bi, (name, observed, policy)) in bars.iter().enumerate() {
            let x = gx + bi as f64 * 70.0;
            let (ho, hp) = (scale(*observed), scale(*policy));
            s.push_str(&format!(
                "<rect x='{x}' y='{}' width='28' height='{ho}' fill='{}'/>\n",
                bottom - ho,
                colors[bi]
            ));
            s.push_str(&format!("<rect x='{}' y='{}' width='28' height='{hp}' fill='none' stroke='{}' stroke-width='2'/>\n", x + 30.0, bottom - hp, colors[bi]));
            s.push_str(&format!(
                "<text x='{}' y='{}' text-anchor='middle'>{observed:.1}</text>\n",
                x + 14.0,
                bottom - ho - 4.0
            ));
            s.push_str(&format!(
                "<text x='{}' y='{}' text-anchor='middle'>{name}</text>\n",
                x + 29.0,
                bottom + 16.0
            ));
        }
        s.push_str(&format!(
            "<text x='{}' y='{}' font-size='14' font-weight='bold'>{}</text>\n",
            gx + 70.0,
            bottom + 40.0,
            o.cluster
        ));
    }
    s.push_str("</svg>\n");
    s
}
