//! `make demo`: the ksit filter in a real Envoy on the seed policy, with local backends standing in for
//! api-service-v1, api-service-v2 and web-service; drives traffic and reports what happened next to what the
//! policy says.

use ksit_tests::backend::start_all;
use ksit_tests::client::Client;
use ksit_tests::envoy::{prom_value, Envoy, EnvoyConfig, FilterConfig, Upstream};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HOST: &str = "myapp.example.com";
const API_REQUESTS: usize = 2000;
const WEB_REQUESTS: usize = 400;
const IN_FLIGHT: usize = 256;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("demo failed: {e:#}");
        std::process::exit(1);
    }
}

struct Outcome {
    path: &'static str,
    user: usize,
    status: u16,
    backend: Option<String>,
    aborted: bool,
    elapsed: Duration,
}

async fn run() -> anyhow::Result<()> {
    let policy = ksit_tests::seed_spec()?;
    println!("ksit demo: the seed TrafficPolicy (manifests/examples/multi-cluster-mesh/trafficpolicy.yaml)");
    println!("  /api -> api-service-v1 90% / api-service-v2 10%, sticky by x-user-id, override with x-ksit-canary");
    println!("          faults: 5s delay on 10%, 503 abort on 5%");
    println!("  /web -> web-service");
    let backends = start_all(&["api-service-v1", "api-service-v2", "web-service"]).await?;
    let upstreams = backends
        .iter()
        .map(|b| Upstream {
            destination: b.name.clone(),
            addr: b.addr,
        })
        .collect();
    let mut cfg = EnvoyConfig::new("1.40.0", upstreams);
    cfg.concurrency = 2;
    cfg.filter = Some(FilterConfig::new(&policy)?);
    let started = Instant::now();
    let envoy = Envoy::start(&cfg).await?;
    println!(
        "\nEnvoy {} up on {} (admin {}) with the filter, in {:.1}s",
        envoy.version,
        envoy.listener,
        envoy.admin,
        started.elapsed().as_secs_f64()
    );

    let total = API_REQUESTS + WEB_REQUESTS;
    println!("sending {total} requests ({API_REQUESTS} to /api with distinct x-request-id, {WEB_REQUESTS} to /web), {IN_FLIGHT} in flight:");
    let done = Arc::new(AtomicUsize::new(0));
    let sem = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let client = Client::new(&envoy.base_url()).with_timeout(Duration::from_secs(30));
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let (client, sem, done) = (client.clone(), sem.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.ok()?;
            let path = if i % 6 == 5 {
                "/web/index.html"
            } else {
                "/api/orders"
            };
            let id = format!("demo-{i}");
            let user = format!("user-{}", i % 500);
            let r = client
                .get(
                    path,
                    &[("host", HOST), ("x-request-id", &id), ("x-user-id", &user)],
                )
                .await
                .ok()?;
            done.fetch_add(1, Ordering::Relaxed);
            Some(Outcome {
                path: if path.starts_with("/api") {
                    "/api"
                } else {
                    "/web"
                },
                user: i % 500,
                status: r.status,
                backend: r.backend().map(String::from),
                aborted: r.header("x-ksit-fault") == Some("abort"),
                elapsed: r.elapsed,
            })
        }));
    }
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                let d = done.load(Ordering::Relaxed);
                let width = 40;
                let filled = d * width / total;
                print!(
                    "\r  [{}{}] {d}/{total}",
                    "#".repeat(filled),
                    " ".repeat(width - filled)
                );
                let _ = std::io::stdout().flush();
                if d >= total {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let mut outcomes = Vec::with_capacity(total);
    for t in tasks {
        if let Some(o) = t.await? {
            outcomes.push(o);
        }
    }
    done.store(total, Ordering::Relaxed);
    let _ = progress.await;
    println!("\n  done in {:.1}s\n", started.elapsed().as_secs_f64());

    let api: Vec<&Outcome> = outcomes.iter().filter(|o| o.path == "/api").collect();
    let web: Vec<&Outcome> = outcomes.iter().filter(|o| o.path == "/web").collect();
    let mut per_dest: BTreeMap<String, usize> = BTreeMap::new();
    for o in &api {
        if let Some(b) = &o.backend {
            *per_dest.entry(b.clone()).or_default() += 1;
        }
    }
    let routed: usize = per_dest.values().sum();
    let pct = |n: usize, of: usize| {
        if of == 0 {
            0.0
        } else {
            n as f64 * 100.0 / of as f64
        }
    };
    println!(
        "{:<34} {:>9} {:>10} {:>10}",
        "what", "requests", "observed", "policy"
    );
    println!("{}", "-".repeat(66));
    for (dest, want) in [("api-service-v1", 90.0), ("api-service-v2", 10.0)] {
        let n = per_dest.get(dest).copied().unwrap_or(0);
        println!(
            "{:<34} {:>9} {:>9.1}% {:>9.1}%",
            format!("/api -> {dest}"),
            n,
            pct(n, routed),
            want
        );
    }
    let delayed = api
        .iter()
        .filter(|o| o.elapsed >= Duration::from_secs(5))
        .count();
    let aborted = api.iter().filter(|o| o.aborted).count();
    println!(
        "{:<34} {:>9} {:>9.1}% {:>9.1}%",
        "/api delayed >= 5s",
        delayed,
        pct(delayed, api.len()),
        10.0
    );
    println!(
        "{:<34} {:>9} {:>9.1}% {:>9.1}%",
        "/api aborted with 503",
        aborted,
        pct(aborted, api.len()),
        5.0
    );
    let web_ok = web
        .iter()
        .filter(|o| o.backend.as_deref() == Some("web-service"))
        .count();
    println!(
        "{:<34} {:>9} {:>9.1}% {:>9.1}%",
        "/web -> web-service",
        web_ok,
        pct(web_ok, web.len()),
        100.0
    );
    let errors = outcomes
        .iter()
        .filter(|o| o.status != 200 && !o.aborted)
        .count();
    println!(
        "{:<34} {:>9}",
        "other errors",
        errors + (total - outcomes.len())
    );

    // Stickiness: every user saw one destination for all its routed /api requests.
    let mut per_user: BTreeMap<usize, std::collections::BTreeSet<&str>> = BTreeMap::new();
    for o in &api {
        if let Some(b) = &o.backend {
            per_user.entry(o.user).or_default().insert(b.as_str());
        }
    }
    let sticky = per_user.values().filter(|d| d.len() == 1).count();
    println!(
        "{:<34} {:>9} {:>10}",
        "users pinned to one destination",
        format!("{sticky}/{}", per_user.len()),
        if sticky == per_user.len() {
            "all"
        } else {
            "NOT ALL"
        }
    );
    let prom = envoy.prometheus().await?;
    println!("\nfrom Envoy's /stats/prometheus (the filter's own counters):");
    for (name, labels) in [
        (
            "ksit_requests_total",
            vec![("ksit_rule", "api"), ("ksit_destination", "api-service-v1")],
        ),
        (
            "ksit_requests_total",
            vec![("ksit_rule", "api"), ("ksit_destination", "api-service-v2")],
        ),
        (
            "ksit_requests_total",
            vec![("ksit_rule", "web"), ("ksit_destination", "web-service")],
        ),
        ("ksit_delays_total", vec![("ksit_rule", "api")]),
        ("ksit_aborts_total", vec![("ksit_rule", "api")]),
        ("ksit_faults_skipped_total", vec![("ksit_rule", "api")]),
        ("ksit_active_delays", vec![]),
    ] {
        let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        println!(
            "  {name}{{{}}} {}",
            l.join(","),
            prom_value(&prom, name, &labels).unwrap_or(0.0)
        );
    }
    println!("\nEvery decision is reproducible: `x-request-id` decides the canary bucket and the fault rolls,");
    println!(
        "`x-user-id` (when present) pins a user to one destination on every worker and cluster."
    );
    drop(envoy);
    drop(backends);
    let dev = |a: f64, b: f64| (a - b).abs();
    let v2 = pct(per_dest.get("api-service-v2").copied().unwrap_or(0), routed);
    if dev(v2, 10.0) > 3.0
        || dev(pct(delayed, api.len()), 10.0) > 3.0
        || dev(pct(aborted, api.len()), 5.0) > 3.0
        || errors > 0
        || sticky != per_user.len()
    {
        anyhow::bail!("observed numbers are far from the policy's; see the table above");
    }
    println!("demo ok: observed split and faults match the policy.");
    Ok(())
}
