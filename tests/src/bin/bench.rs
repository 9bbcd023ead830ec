//! `make bench`: the filter's cost next to Envoy's own routing (`ksit_tests::load` against one Envoy with
//! a listener per variant, in short interleaved slices), and the controller's propagation time to 1, 10 and
//! 100 emulated clusters. Prints tables and writes target/bench/filter.json and target/bench/controller.json.
//! BENCH_QUICK=1: fewer cycles, fewer clusters.

use ksit_emulator::Emulator;
use ksit_tests::envoy::{Envoy, EnvoyConfig};
use ksit_tests::load::{Load, Paired, Slice, Variant};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let r = async {
        if what == "filter" || what == "all" {
            filter().await?;
        }
        if what == "controller" || what == "all" {
            controller().await?;
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = r {
        eprintln!("bench failed: {e:#}");
        std::process::exit(1);
    }
}

fn quick() -> bool {
    std::env::var_os("BENCH_QUICK").is_some_and(|v| !v.is_empty())
}

fn out_dir() -> anyhow::Result<PathBuf> {
    let d = ksit_tests::repo_root().join("target/bench");
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// A spawned process that is killed and reaped when dropped, so a failed run (`?`) leaves nothing behind.
struct Reaped(std::process::Child);

impl Reaped {
    fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts Envoy 1.40 pinned to CPU 0 with one worker on `bootstrap` (its listeners and admin on port 0),
/// waits until it is ready, and returns it with the port Envoy bound for each of `names`.
async fn start_pinned_envoy(
    bootstrap: &Value,
    names: &[String],
) -> anyhow::Result<(Envoy, Vec<u16>)> {
    let mut cfg = EnvoyConfig::new("1.40.0", vec![]);
    cfg.concurrency = 1;
    cfg.log_level = "error".into();
    cfg.component_log_level = String::new();
    cfg.cpus = Some("0".into());
    let envoy = Envoy::start_bootstrap(&cfg, bootstrap).await?;
    let mut ports = Vec::with_capacity(names.len());
    for n in names {
        ports.push(envoy.listener_named(n).await?.port());
    }
    Ok((envoy, ports))
}

fn cluster(name: &str, addr: std::net::SocketAddr) -> Value {
    json!({"name": name, "type": "STATIC", "connect_timeout": "1s",
           "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": addr.port()}}}}]}]}})
}

fn router() -> Value {
    json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
}

fn wasm(policy: &Value, module: &str, vm: &str) -> Value {
    wasm_env(policy, module, vm, json!({}))
}

fn wasm_env(policy: &Value, module: &str, vm: &str, env: Value) -> Value {
    json!({"name": "envoy.filters.http.wasm", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": {
        "name": vm, "root_id": "ksit",
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": policy.to_string()},
        "vm_config": {"vm_id": vm, "runtime": "envoy.wasm.runtime.v8", "environment_variables": {"key_values": env},
                      "code": {"local": {"filename": module}}}}}})
}

/// The benchmark build of the filter (feature `bench-stages`, built by `make bench`), if present.
fn stages_module() -> Option<String> {
    let p = std::env::var("KSIT_BENCH_STAGES_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            ksit_tests::repo_root().join("target/stages/wasm32-wasip1/release/ksit_filter.wasm")
        });
    p.exists().then(|| p.to_string_lossy().to_string())
}

/// Where the stage listeners stop each request (see the filter's `bench-stages` feature): the first
/// [`CHAIN`] along the request's path, then probes that add one host call to stage 0.
const STAGES: [(&str, &str); 6] = [
    ("stage0", "callback returns at once"),
    ("stage1", "+ read and parse the headers"),
    ("stage2", "+ decide"),
    ("stage3", "+ set x-ksit-destination"),
    ("probe_call", "a host call with no data back"),
    ("probe_value", "a host call handing one value back"),
];
const CHAIN: usize = 4;

/// A listener on port 0: Envoy picks the port, and the bench asks it which (`Envoy::listener_named`).
fn listener(name: &str, routes: Value, filters: Vec<Value>) -> Value {
    json!({"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
           "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
               "stat_prefix": name, "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
               "http_filters": filters}}]}]})
}

fn header_routes() -> Value {
    let r = |d: &str| json!({"match": {"prefix": "/", "headers": [{"name": "x-ksit-destination", "string_match": {"exact": d}}]}, "route": {"cluster": d}});
    json!([r("api-service-v1"), r("api-service-v2"), r("web-service"), {"match": {"prefix": "/"}, "route": {"cluster": "api-service-v1"}}])
}

/// A pluginConfig as `ksit controller --stable-by-default-route` renders it: requests to a rule's stable
/// destination are left unmarked, for the routes' default (here the catch-all to `api-service-v1`, as the
/// rendered VirtualService's default route for the seed's `api` rule) to send there.
fn unmarked(mut config: Value) -> Value {
    config["headerForStable"] = json!(false);
    config
}

/// How long after the first change that follows the initial sync the 20 measured changes start.
const SETTLE: Duration = Duration::from_secs(2);

/// The pause between two measured controller changes.
const CHANGE_GAP: Duration = Duration::from_millis(100);

/// The controller's resync period under bench: 6 s up to 100 clusters, then one second per 15 clusters (66 s
/// at 1,000). Every cluster is looked at in full once per period (the default is 300 s); at 6 s a thousand
/// clusters would be resynced 166 times a second, a load that says nothing about what a change costs.
fn resync_seconds(clusters: usize) -> u64 {
    (clusters as u64 / 15).max(6)
}

/// Listeners before the stage listeners: plain, native, ksit, ksit1000, ksit20, ksit20x, ksit_unmarked,
/// trivial.
const FIXED: usize = 8;

/// The seed policy with fault percentages at 0: every rule is evaluated, no request is delayed.
fn seed_no_delay() -> anyhow::Result<Value> {
    let mut p = ksit_tests::seed_spec()?;
    p["http"][0]["fault"]["delay"]["percentage"]["value"] = json!(0);
    p["http"][0]["fault"]["abort"]["percentage"]["value"] = json!(0);
    Ok(p)
}

/// The trivial reference filter (`tests/reference-filter`, built by `make bench`).
fn reference_module() -> anyhow::Result<String> {
    let p = ksit_tests::repo_root().join("target/wasm32-wasip1/release/ksit_reference_filter.wasm");
    anyhow::ensure!(
        p.exists(),
        "{} is missing: run make bench (it builds the reference filter)",
        p.display()
    );
    Ok(p.to_string_lossy().to_string())
}

/// How many cycles of how long a slice: `BENCH_CYCLES` and `BENCH_SLICE_MS`, else the defaults.
fn cycles_and_slice() -> (usize, Duration) {
    let env_num = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (cycles, ms) = if quick() { (6, 200) } else { (40, 250) };
    (
        env_num("BENCH_CYCLES", cycles) as usize,
        Duration::from_millis(env_num("BENCH_SLICE_MS", ms)),
    )
}

/// The load of the filter bench: `GET /api/orders` for the seed's host, 32 connections per listener.
fn load(ports: Vec<u16>, pid: u32, cycles: usize, slice: Duration) -> Load {
    Load {
        ports,
        path: "/api/orders".into(),
        host: "myapp.example.com".into(),
        connections: 32,
        slice,
        cycles,
        pid,
    }
}

async fn filter() -> anyhow::Result<()> {
    let module = ksit_tests::envoy::filter_wasm()?;
    let module_s = module.to_string_lossy().to_string();
    let module_bytes = std::fs::metadata(&module)?.len();
    let backends =
        ksit_tests::backend::start_all(&["api-service-v1", "api-service-v2", "web-service"])
            .await?;
    let clusters: Vec<Value> = backends.iter().map(|b| cluster(&b.name, b.addr)).collect();
    // plain, native, ksit, ksit1000, ksit20 (one filter, 20 merged policies), ksit20x (20 filters),
    // ksit_unmarked (the seed policy with stable requests unmarked, `headerForStable` false), trivial (the
    // reference filter), then the stage listeners when the benchmark build of the filter is there.
    let stages = stages_module();
    let mut big = seed_no_delay()?;
    let mut rules: Vec<Value> = (0..999)
        .map(|i| json!({"name": format!("r{i}"), "match": [{"uri": {"prefix": format!("/svc{i}/")}}], "route": [{"destination": {"host": "web-service"}}]}))
        .collect();
    rules.push(big["http"][0].clone());
    big["http"] = json!(rules);
    // 20 TrafficPolicies on one gateway: 19 on other hosts plus the seed's. Merged (what the controller
    // renders): one filter with a `policies` list. Unmerged: one filter per policy, as 20 WasmPlugins would be.
    let others: Vec<Value> = (0..19)
        .map(|i| {
            let mut p = seed_no_delay()?;
            p["hosts"] = json!([format!("app{i}.example.com")]);
            Ok(p)
        })
        .collect::<anyhow::Result<_>>()?;
    let mut merged: Vec<Value> = others
        .iter()
        .enumerate()
        .map(|(i, p)| json!({"name": format!("team{i}/app"), "spec": p}))
        .collect();
    merged.push(json!({"name": "default/myapp", "spec": seed_no_delay()?}));
    let merged = json!({"policies": merged});
    let mut separate: Vec<Value> = others
        .iter()
        .enumerate()
        .map(|(i, p)| wasm(p, &module_s, &format!("ksit20x-{i}")))
        .collect();
    separate.push(wasm(&seed_no_delay()?, &module_s, "ksit20x-seed"));
    separate.push(router());
    let native_fault = json!({"name": "envoy.filters.http.fault", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
        "delay": {"fixed_delay": "5s", "percentage": {"numerator": 0, "denominator": "HUNDRED"}},
        "abort": {"http_status": 503, "percentage": {"numerator": 0, "denominator": "HUNDRED"}}}});
    let native_routes = json!([{"match": {"prefix": "/api"}, "route": {"weighted_clusters": {"clusters": [{"name": "api-service-v1", "weight": 90}, {"name": "api-service-v2", "weight": 10}]}}},
                               {"match": {"prefix": "/web"}, "route": {"cluster": "web-service"}}]);
    let native_routes_for_trivial = native_routes.clone();
    let mut listeners = vec![
        listener(
            "plain",
            json!([{"match": {"prefix": "/"}, "route": {"cluster": "api-service-v1"}}]),
            vec![router()],
        ),
        listener("native", native_routes, vec![native_fault, router()]),
        listener(
            "ksit",
            header_routes(),
            vec![wasm(&seed_no_delay()?, &module_s, "ksit"), router()],
        ),
        listener(
            "ksit1000",
            header_routes(),
            vec![wasm(&big, &module_s, "ksit1000"), router()],
        ),
        listener(
            "ksit20",
            header_routes(),
            vec![wasm(&merged, &module_s, "ksit20"), router()],
        ),
        listener("ksit20x", header_routes(), separate),
        listener(
            "ksit_unmarked",
            header_routes(),
            vec![
                wasm(&unmarked(seed_no_delay()?), &module_s, "ksit_unmarked"),
                router(),
            ],
        ),
        listener(
            "trivial",
            native_routes_for_trivial,
            vec![wasm(&json!({}), &reference_module()?, "trivial"), router()],
        ),
    ];
    if let Some(m) = &stages {
        for (i, (name, _)) in STAGES.iter().enumerate() {
            let env = json!({"KSIT_BENCH_STAGE": i.to_string()});
            listeners.push(listener(
                name,
                header_routes(),
                vec![wasm_env(&seed_no_delay()?, m, name, env), router()],
            ));
        }
    }
    // Every listener by name, in the order the results are indexed in (the listeners' own order).
    let names: Vec<String> = listeners
        .iter()
        .filter_map(|l| l["name"].as_str().map(String::from))
        .collect();
    let bootstrap = json!({
    "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
    "static_resources": {"clusters": clusters, "listeners": listeners}});
    let dir = out_dir()?;
    // A copy to look at; Envoy runs on its own (listeners and admin on port 0: Envoy picks the ports).
    std::fs::write(dir.join("envoy-bench.json"), bootstrap.to_string())?;
    let (envoy, ports) = start_pinned_envoy(&bootstrap, &names).await?;
    let (cycles, slice) = cycles_and_slice();
    // BENCH_VARIANTS=native,ksit,... loads only those listeners and prints each one against the first.
    let focus: Vec<String> = std::env::var("BENCH_VARIANTS")
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
        .unwrap_or_default();
    // The load order: native next to ksit, and ksit next to the trivial filter, so the pairs the targets
    // compare are loaded one right after the other in every cycle, and the probes next to stage 0, which
    // they are compared with; or BENCH_VARIANTS.
    let wanted: Vec<&str> = if focus.is_empty() {
        [
            "plain",
            "native",
            "ksit",
            "trivial",
            "ksit_unmarked",
            "ksit1000",
            "ksit20",
            "ksit20x",
        ]
        .into_iter()
        .chain(
            // Stage 0, the probes, then the rest of the chain.
            STAGES[..1]
                .iter()
                .chain(&STAGES[CHAIN..])
                .chain(&STAGES[1..CHAIN])
                .map(|(n, _)| *n)
                .filter(|_| stages.is_some()),
        )
        .collect()
    } else {
        focus.iter().map(String::as_str).collect()
    };
    anyhow::ensure!(
        !focus.is_empty() || wanted.len() == names.len(),
        "the load order {wanted:?} leaves out some of the listeners {names:?}"
    );
    let order: Vec<usize> = wanted
        .iter()
        .map(|f| {
            names
                .iter()
                .position(|n| n == f)
                .ok_or_else(|| anyhow::anyhow!("BENCH_VARIANTS: no variant {f} in {names:?}"))
        })
        .collect::<anyhow::Result<_>>()?;
    println!(
        "filter: {} listeners, {cycles} cycles of one {} ms slice each (every cycle in the opposite order to the last); \
         Envoy on CPU 0, the load generator (32 connections per listener) and the backends on CPU 1",
        order.len(),
        slice.as_millis()
    );
    let load_ports: Vec<u16> = order.iter().map(|&i| ports[i]).collect();
    let load_started = Instant::now();
    // A first short pass warms every VM up (and shows Envoy's memory after serving every listener once).
    load(load_ports.clone(), envoy.pid(), 1, slice).run_on_own_thread()?;
    let rss_after_first_round = proc_status_mb(envoy.pid(), "VmRSS:");
    let measured = load(load_ports, envoy.pid(), cycles, slice).run_on_own_thread()?;
    let mut results: Vec<Variant> = names.iter().map(|_| Variant::default()).collect();
    for (v, &i) in measured.into_iter().zip(&order) {
        results[i] = v;
    }
    for &i in &order {
        let v = &results[i];
        println!(
            "  {:<14} {:>7.0} req/s  p50 {:>5.0}us  p99 {:>5.0}us  Envoy CPU {:>5.1}us/req  Envoy busy {:.0}%",
            names[i],
            v.rps(),
            v.latency_us(50.0),
            v.latency_us(99.0),
            v.cpu_us_per_req(),
            v.busy() * 100.0
        );
    }
    // Within each cycle, the two slices compared ran within a second or two of each other.
    let paired_rps = |a: usize, b: usize| Paired::new(&results[a], &results[b], Slice::rps);
    let paired_cpu =
        |a: usize, b: usize| Paired::new(&results[b], &results[a], Slice::cpu_us_per_req);
    let paired_p99 = |a: usize, b: usize| Paired::new(&results[a], &results[b], |s| s.p99_us);
    if let Some(&base) = order.first().filter(|_| !focus.is_empty()) {
        println!(
            "\nagainst {}, the ratio within each cycle (median, 95% confidence interval):",
            names[base]
        );
        for &i in &order[1..] {
            println!(
                "  {:<14} req/s {}\n  {:<14} by CPU {}\n  {:<14} p99 of each slice {}; p99 of the whole run {:.3}",
                names[i],
                paired_rps(i, base),
                "",
                paired_cpu(i, base),
                "",
                paired_p99(i, base),
                results[i].latency_us(99.0) / results[base].latency_us(99.0)
            );
        }
        return Ok(());
    }
    // Memory per Wasm VM: Envoy's RSS with every listener, less a baseline Envoy with only the plain
    // listener, over the VMs V8 holds (Envoy exports no V8 heap figure).
    let stats = envoy
        .admin_get("/stats?filter=wasm.envoy.wasm.runtime.v8.active")
        .await
        .map(|r| r.body)
        .unwrap_or_default();
    let vms: f64 = stats
        .lines()
        .find_map(|l| {
            l.split_once("v8.active: ")
                .and_then(|(_, v)| v.trim().parse().ok())
        })
        .unwrap_or(f64::NAN);
    let rss_full = proc_status_mb(envoy.pid(), "VmRSS:");
    // Growth under load: every VM served requests in every cycle, so a leak in the filter shows here.
    let load_minutes = load_started.elapsed().as_secs_f64() / 60.0;
    drop(envoy);
    let base = json!({
    "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
    "static_resources": {"clusters": bootstrap["static_resources"]["clusters"].clone(), "listeners": [
        listener("plain", json!([{"match": {"prefix": "/"}, "route": {"cluster": "api-service-v1"}}]), vec![router()]),
    ]}});
    std::fs::write(dir.join("envoy-bench-baseline.json"), base.to_string())?;
    let (baseline, base_ports) = start_pinned_envoy(&base, &["plain".to_string()]).await?;
    load(base_ports, baseline.pid(), 1, slice).run_on_own_thread()?;
    let rss_base = proc_status_mb(baseline.pid(), "VmRSS:");
    drop(baseline);
    let mb_per_vm = (rss_full - rss_base) / vms;
    let rps: Vec<f64> = results.iter().map(Variant::rps).collect();
    let p50: Vec<f64> = results.iter().map(|v| v.latency_us(50.0)).collect();
    let p99: Vec<f64> = results.iter().map(|v| v.latency_us(99.0)).collect();
    let cpu: Vec<f64> = results.iter().map(Variant::cpu_us_per_req).collect();
    let per_listener = |f: &dyn Fn(usize) -> Value| {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), f(i)))
            .collect::<serde_json::Map<_, _>>()
    };
    let ci =
        |p: Paired| json!({"median": p.median, "low": p.low, "high": p.high, "cycles": p.cycles});
    let mut report = json!({
        "plain_rps": rps[0], "native_rps": rps[1], "filter_rps": rps[2], "filter_1000_rps": rps[3],
        "filter_vs_native": rps[2] / rps[1], "filter_vs_plain": rps[2] / rps[0], "filter_1000_vs_native": rps[3] / rps[1],
        "p50_plain_us": p50[0], "p50_native_us": p50[1], "p50_filter_us": p50[2], "p50_filter_1000_us": p50[3],
        "p99_plain_us": p99[0], "p99_native_us": p99[1], "p99_filter_us": p99[2], "p99_filter_1000_us": p99[3],
        "module_bytes": module_bytes,
    });
    let more = json!({
        "cpu_us_per_req": per_listener(&|i| json!(cpu[i])),
        "rps": per_listener(&|i| json!(rps[i])),
        "p99_us": per_listener(&|i| json!(p99[i])),
        "vs_native_paired": per_listener(&|i| ci(paired_rps(i, 1))),
        "vs_native_by_cpu_paired": per_listener(&|i| ci(paired_cpu(i, 1))),
        "p99_vs_native_paired": per_listener(&|i| ci(paired_p99(i, 1))),
        "filter_vs_native_paired": paired_rps(2, 1).median,
        "filter_vs_native_by_cpu_paired": paired_cpu(2, 1).median,
        "p99_filter_vs_native_paired": paired_p99(2, 1).median,
        "p99_filter_vs_native": p99[2] / p99[1],
        "filter_vs_native_by_cpu": cpu[1] / cpu[2],
        "filter_20_policies_rps": rps[4], "filter_20_filters_rps": rps[5],
        "filter_20_policies_vs_native": rps[4] / rps[1], "filter_20_filters_vs_native": rps[5] / rps[1],
        "p99_filter_20_policies_us": p99[4], "p99_filter_20_filters_us": p99[5],
    });
    let rest = json!({
        "filter_unmarked_rps": rps[6], "filter_unmarked_vs_native": rps[6] / rps[1],
        "filter_unmarked_vs_native_paired": paired_rps(6, 1).median,
        "filter_unmarked_vs_filter_paired": paired_rps(6, 2).median,
        "trivial_rps": rps[7], "trivial_vs_native_paired": paired_rps(7, 1).median,
        "filter_vs_trivial_paired": paired_rps(2, 7).median,
        "envoy_rss_after_round_1_mb": rss_after_first_round, "envoy_rss_end_mb": rss_full, "load_minutes": load_minutes,
        "wasm_vms": vms, "envoy_rss_mb": rss_full, "envoy_baseline_rss_mb": rss_base, "mb_per_wasm_vm": mb_per_vm,
        "cycles": cycles, "slice_ms": slice.as_millis() as u64, "envoy": "1.40.0",
        "load_generator": "ksit_tests::load, 32 connections per listener",
    });
    if let (Some(r), Some(m), Some(x)) =
        (report.as_object_mut(), more.as_object(), rest.as_object())
    {
        r.extend(m.clone());
        r.extend(x.clone());
    }
    println!(
        "\nfilter: against native, the ratio within each cycle (median, 95% confidence interval); p99: the ratio of\n\
         each cycle's two slice p99s (median, interval), and of the p99s over the whole run"
    );
    for (i, name) in names.iter().enumerate().skip(2).take(6) {
        println!(
            "  {name:<14} req/s {}  p99 {}; whole run {:.3}",
            paired_rps(i, 1),
            paired_p99(i, 1),
            p99[i] / p99[1]
        );
    }
    println!("  plain          req/s {}", paired_rps(0, 1));
    println!(
        "  ksit, seed policy: {:.0} req/s ({:.3} x native over the whole run, by CPU {:.3}), p99 {:.0}us against {:.0}us ({:.2} x)",
        rps[2],
        rps[2] / rps[1],
        cpu[1] / cpu[2],
        p99[2],
        p99[1],
        p99[2] / p99[1]
    );
    println!(
        "  ksit against the trivial reference filter (stock SDK: read :path, add a header, count), within each cycle: req/s {}",
        paired_rps(2, 7)
    );
    println!(
        "  Envoy CPU per request  plain {:.1}us  native {:.1}us  ksit {:.1}us  ksit 1000 rules {:.1}us  20 merged {:.1}us  20 filters {:.1}us  unmarked {:.1}us  trivial {:.1}us",
        cpu[0], cpu[1], cpu[2], cpu[3], cpu[4], cpu[5], cpu[6], cpu[7]
    );
    if stages.is_some() {
        println!(
            "  where the filter's cost goes (Envoy CPU per request over the run; native {:.1}us):",
            cpu[1]
        );
        for (i, (name, what)) in STAGES.iter().enumerate().take(CHAIN) {
            println!(
                "    {name:<11} {what:<34} {:>6.1}us  req/s against native {}",
                cpu[FIXED + i],
                paired_rps(FIXED + i, 1)
            );
        }
        println!(
            "    {:<11} {:<34} {:>6.1}us",
            "ksit", "+ count (the full filter)", cpu[2]
        );
        println!("  what one host call costs, stage 0 plus the call (a value comes back through an allocation call into the VM):");
        for (i, (name, what)) in STAGES.iter().enumerate().skip(CHAIN) {
            println!(
                "    {name:<11} {what:<34} {:>6.1}us  req/s against stage0 {}",
                cpu[FIXED + i],
                paired_rps(FIXED + i, FIXED)
            );
        }
    }
    println!(
        "  20 policies on one listener: merged into one filter {:.0} req/s ({:.3}x native), as 20 filters {:.0} req/s ({:.3}x native)",
        rps[4],
        rps[4] / rps[1],
        rps[5],
        rps[5] / rps[1]
    );
    println!("  module  {module_bytes} bytes");
    println!(
        "  memory  Envoy {rss_full:.0} MB with {vms} Wasm VMs, {rss_base:.0} MB without: {mb_per_vm:.2} MB per VM"
    );
    println!(
        "  memory under load: Envoy {rss_after_first_round:.1} MB after the warm-up pass, {rss_full:.1} MB after {load_minutes:.1} min of load in every VM"
    );
    std::fs::write(
        dir.join("filter.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("  -> target/bench/filter.json");
    drop(backends);
    Ok(())
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

fn rss_mb(pid: u32) -> f64 {
    proc_status_mb(pid, "VmHWM:")
}

/// CPU time (user and system) a process has used so far, in milliseconds (`/proc/PID/stat`; "self" for
/// this one).
fn cpu_ms(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // The fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            // The kernel's USER_HZ is 100 on Linux.
            Some(ticks * 10.0)
        })
        .unwrap_or(f64::NAN)
}

/// A `/proc/PID/status` memory field (`VmHWM:` peak, `VmRSS:` now) in MB.
fn proc_status_mb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(field)
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

async fn controller() -> anyhow::Result<()> {
    // BENCH_CLUSTERS=100 (comma-separated) runs only those sizes.
    let chosen: Vec<usize> = std::env::var("BENCH_CLUSTERS")
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_default();
    let sizes: &[usize] = if !chosen.is_empty() {
        &chosen
    } else if quick() {
        &[1, 10]
    } else {
        &[1, 10, 100, 300, 1000]
    };
    let ksit = ksit_tests::repo_root().join("target/release/ksit");
    anyhow::ensure!(
        ksit.exists(),
        "{} is missing: cargo build --release -p ksit-controller",
        ksit.display()
    );
    let module = ksit_tests::envoy::filter_wasm()?;
    let mut entries = Vec::new();
    println!("\ncontroller: a TrafficPolicy change on the hub until every member's WasmPlugin carries it (20 changes)");
    // Istio's own CRDs (from the pinned istio.io/istio module) of the kinds the bench sends, parsed once.
    let istio_crds: Vec<Value> = ksit_tests::istio_crd_documents()?
        .into_iter()
        .filter(|c| {
            [
                "wasmplugins.extensions.istio.io",
                "virtualservices.networking.istio.io",
                "destinationrules.networking.istio.io",
            ]
            .contains(&c["metadata"]["name"].as_str().unwrap_or(""))
        })
        .collect();
    for &n in sizes {
        let hub = Emulator::start("hub").await?;
        hub.load_crds_yaml(&ksit_controller::resources::crds_yaml())?;
        hub.load_crds(&istio_crds)?;
        for ns in ["ksit-system", "istio-system"] {
            hub.put(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                "b",
            )?;
        }
        let mut members = Vec::new();
        for i in 0..n {
            let m = Emulator::start(&format!("c{i}")).await?;
            m.load_crds(&istio_crds)?;
            m.set_light(true);
            hub.put(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("c{i}-kubeconfig"), "namespace": "ksit-system"}, "data": {"kubeconfig": b64(m.kubeconfig().as_bytes())}}), "b")?;
            hub.put(json!({"apiVersion": "ksit.io/v1alpha1", "kind": "IntegrationTarget", "metadata": {"name": format!("c{i}"), "namespace": "ksit-system"}, "spec": {"clusterName": format!("c{i}"), "labels": {"mesh": "enabled"}}}), "b")?;
            members.push(m);
        }
        // 20 objects per cluster: the TrafficPolicy's 2, 2 namespaces, 16 DestinationRules.
        for d in 0..16 {
            hub.put(json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": format!("dr-{d}"), "namespace": "default"}, "spec": {"host": format!("svc-{d}")}}), "b")?;
        }
        let mut tp: Value = serde_yaml::from_str(&std::fs::read_to_string(
            ksit_tests::repo_root()
                .join("manifests/examples/multi-cluster-mesh/trafficpolicy.yaml"),
        )?)?;
        hub.put(tp.clone(), "b")?;
        hub.put(json!({"apiVersion": "control.kubestellar.io/v1alpha1", "kind": "BindingPolicy", "metadata": {"name": "all"}, "spec": {
            "clusterSelectors": [{"matchLabels": {"mesh": "enabled"}}],
            "downsync": [{"apiGroup": "networking.istio.io", "resources": ["destinationrules"], "namespaces": ["default"]},
                         {"apiGroup": "ksit.io", "resources": ["trafficpolicies"], "namespaces": ["default"]}]}}), "b")?;
        let dir = std::env::temp_dir().join(format!("ksit-bench-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        hub.write_kubeconfig(&dir.join("hub.kubeconfig"))?;
        let child = Reaped(
            Command::new(&ksit)
                .args(["controller", "--kubeconfig"])
                .arg(dir.join("hub.kubeconfig"))
                .args(["--listen", "127.0.0.1:0", "--module"]) // its endpoints are not used here
                .arg(&module)
                .args([
                    "--target-namespace",
                    "ksit-system",
                    "--resync-seconds",
                    &resync_seconds(n).to_string(),
                    "--lease-seconds",
                    "5",
                    "--identity",
                    "bench",
                ])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        let weight = |m: &Emulator| {
            m.object(
                "extensions.istio.io",
                "wasmplugins",
                Some("istio-system"),
                "ksit-default-myapp",
            )
            .and_then(|w| {
                w.pointer("/spec/pluginConfig/http/0/route/1/weight")
                    .and_then(Value::as_i64)
            })
        };
        let t = Instant::now();
        while !members.iter().all(|m| {
            weight(m) == Some(10)
                && m.objects("networking.istio.io", "destinationrules").len() == 16
        }) {
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(120),
                "{n} clusters did not converge"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let initial = t.elapsed();
        let rss_after_sync = proc_status_mb(child.id(), "VmRSS:");
        // Sets the canary weight to `w` on the hub and waits until every member has it; milliseconds.
        let mut change = async |w: i64| -> anyhow::Result<f64> {
            tp["spec"]["http"][0]["route"][0]["weight"] = json!(100 - w);
            tp["spec"]["http"][0]["route"][1]["weight"] = json!(w);
            let t = Instant::now();
            hub.put(tp.clone(), "b")?;
            // Only members still waiting are read again, and only once something in them changed (their
            // resourceVersion moved), so the polling costs little of the CPU the controller and the
            // emulators share with it.
            let mut waiting: Vec<(&Emulator, u64)> = members.iter().map(|m| (m, 0)).collect();
            loop {
                waiting.retain_mut(|(m, seen)| {
                    let now = m.resource_version();
                    if now == *seen {
                        return true;
                    }
                    *seen = now;
                    weight(m) != Some(w)
                });
                if waiting.is_empty() {
                    break;
                }
                anyhow::ensure!(
                    t.elapsed() < Duration::from_secs(60),
                    "the change to weight {w} did not reach {} of {n} clusters",
                    waiting.len()
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok(t.elapsed().as_secs_f64() * 1000.0)
        };
        // One change at once, while the controller still finishes its initial sync (status, drift watches
        // of every cluster); then the 20 measured changes, from SETTLE later.
        let first_after_sync = change(11).await?;
        tokio::time::sleep(SETTLE).await;
        let mut times = Vec::new();
        let cpu_before = (cpu_ms(&child.id().to_string()), cpu_ms("self"));
        let changes_started = Instant::now();
        for k in 0..20 {
            times.push(change(12 + k).await?);
            // Changes come apart, as people make them: each is measured alone, not behind the last.
            tokio::time::sleep(CHANGE_GAP).await;
        }
        // CPU per change (the gaps included) of the controller, and of the emulators with this poller.
        let cpu_per_change = (
            (cpu_ms(&child.id().to_string()) - cpu_before.0) / 20.0,
            (cpu_ms("self") - cpu_before.1) / 20.0,
        );
        let changes_took = changes_started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(1)).await;
        for m in &members {
            m.reset_stats();
        }
        // One whole resync period (spread ±1/5 per cluster), idle.
        let idle_cpu = cpu_ms(&child.id().to_string());
        let idle_for = Duration::from_secs(resync_seconds(n)) * 6 / 5 + Duration::from_secs(1);
        tokio::time::sleep(idle_for).await;
        // What the controller spends on its own while nothing changes (resyncs, Lease), per second.
        let background_ms_per_s =
            (cpu_ms(&child.id().to_string()) - idle_cpu) / idle_for.as_secs_f64();
        let idle_writes: u64 = members.iter().map(|m| m.stats().writes).sum();
        let rss = rss_mb(child.id());
        let rss_now = proc_status_mb(child.id(), "VmRSS:");
        let threads = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().to_string()))
            })
            .unwrap_or_default();
        drop(child);
        let in_order: Vec<u64> = times.iter().map(|t| t.round() as u64).collect();
        times.sort_by(|a, b| a.total_cmp(b));
        let p = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
        // The change's own CPU: what the controller spent meanwhile, less its background for that time.
        let net = cpu_per_change.0 - background_ms_per_s * changes_took / 20.0;
        let per_cluster = net / n as f64;
        println!("  {n:>4} cluster(s): initial sync {:>6.0} ms, first change after it {first_after_sync:>5.0} ms, then change p50 {:>6.1} ms, p99 {:>6.1} ms, idle writes {idle_writes}, peak RSS {rss:.1} MB (after sync {rss_after_sync:.1}, at the end {rss_now:.1}, {threads} threads); CPU per change: controller {:.0} ms ({net:.0} ms without its background of {background_ms_per_s:.0} ms/s from resyncs every {} s, {per_cluster:.3} ms per cluster), emulators {:.0} ms", initial.as_secs_f64() * 1000.0, p(0.5), p(0.99), cpu_per_change.0, resync_seconds(n), cpu_per_change.1);
        entries.push(json!({"clusters": n, "p50_ms": p(0.5), "p99_ms": p(0.99), "idle_writes": idle_writes, "rss_mb": rss, "rss_after_sync_mb": rss_after_sync, "rss_end_mb": rss_now, "initial_sync_ms": initial.as_secs_f64() * 1000.0, "first_change_after_sync_ms": first_after_sync, "measured_changes_start_after_ms": SETTLE.as_millis() as u64, "gap_between_changes_ms": CHANGE_GAP.as_millis() as u64, "resync_seconds": resync_seconds(n), "controller_cpu_ms_per_change": cpu_per_change.0, "controller_background_ms_per_s": background_ms_per_s, "controller_cpu_ms_per_change_net": net, "controller_cpu_ms_per_change_per_cluster": per_cluster, "emulators_cpu_ms_per_change": cpu_per_change.1, "objects_per_cluster": 20, "change_ms": in_order}));
        for m in &members {
            m.shutdown();
        }
        hub.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    }
    std::fs::write(
        out_dir()?.join("controller.json"),
        serde_json::to_string_pretty(&entries)?,
    )?;
    println!("  -> target/bench/controller.json");
    Ok(())
}
