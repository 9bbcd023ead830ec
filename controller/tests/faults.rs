//! The controller under broken infrastructure (faults injected through the API emulators): it converges
//! once things recover, never duplicates or touches what it does not own, and its status tells the truth
//! while things are broken. Also: killed mid-apply, the next instance converges without spurious writes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use std::collections::BTreeSet;
use std::sync::Mutex;

/// Every log line the controller writes in this test binary, to check no Secret content is ever logged.
static LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Debug
    }
    fn log(&self, r: &log::Record<'_>) {
        if let Ok(mut l) = LOGS.lock() {
            l.push(format!("{} {} {}", r.level(), r.target(), r.args()));
        }
    }
    fn flush(&self) {}
}

fn capture_logs() {
    if log::set_logger(&Capture).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
    }
}

fn assert_no_secrets_logged() {
    let logs = LOGS.lock().unwrap();
    assert!(
        logs.len() > 10,
        "the controller logged almost nothing: {logs:?}"
    );
    for l in logs.iter() {
        assert!(
            !l.contains("emulator-token") && !l.contains("kind: Config"),
            "kubeconfig content in a log line: {l}"
        );
    }
}

/// Prints what a wait last saw when the wait panics.
struct ShowOnPanic<'a>(&'static str, &'a std::cell::RefCell<Option<Value>>);

impl Drop for ShowOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}: {:?}", self.0, self.1.borrow());
            if let Ok(l) = LOGS.lock() {
                for line in l
                    .iter()
                    .filter(|l| l.contains("cluster2"))
                    .rev()
                    .take(60)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                {
                    eprintln!("LOG {line}");
                }
            }
        }
    }
}

fn it_status(hub: &Emulator, cluster: &str) -> Option<Value> {
    hub.object(
        "ksit.io",
        "integrationtargets",
        Some("ksit-system"),
        cluster,
    )
    .and_then(|t| t.get("status").cloned())
}

/// The resources (plural names) of the objects ksit owns on a member.
fn owned_kinds(m: &Emulator) -> BTreeSet<String> {
    let mut kinds = BTreeSet::new();
    for (group, plural) in [
        ("extensions.istio.io", "wasmplugins"),
        ("networking.istio.io", "virtualservices"),
        ("networking.istio.io", "gateways"),
        ("networking.istio.io", "destinationrules"),
        ("networking.istio.io", "serviceentries"),
    ] {
        if m.objects(group, plural).iter().any(|o| {
            o.pointer("/metadata/labels/app.kubernetes.io~1managed-by") == Some(&json!("ksit"))
        }) {
            kinds.insert(plural.to_string());
        }
    }
    kinds
}

fn owned_counts(m: &Emulator) -> (usize, usize) {
    let mine = |objs: Vec<Value>| {
        objs.iter()
            .filter(|o| {
                o.pointer("/metadata/labels/app.kubernetes.io~1managed-by") == Some(&json!("ksit"))
            })
            .count()
    };
    (
        mine(m.objects("extensions.istio.io", "wasmplugins")),
        mine(m.objects("networking.istio.io", "virtualservices")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_through_errors_latency_dropped_watches_wipes_and_hub_restarts() {
    capture_logs();
    let s = setup(true).await;
    let (c1, c2) = (&s.members[0], &s.members[1]);
    let controller = tokio::spawn(run_async(args(&s, "faulty")));
    wait_for("initial sync", Duration::from_secs(15), || {
        canary_weight(c1) == Some(10) && canary_weight(c2) == Some(10)
    })
    .await;

    // Intermittent 500s on the hub and a member.
    s.hub.faults().set_error_rate(0.2);
    c1.faults().set_error_rate(0.2);
    set_canary_weight(&s.hub, 20);
    wait_for(
        "converged through 20% errors",
        Duration::from_secs(40),
        || canary_weight(c1) == Some(20) && canary_weight(c2) == Some(20),
    )
    .await;
    s.hub.faults().set_error_rate(0.0);
    c1.faults().set_error_rate(0.0);

    // 409 Conflicts on a share of writes (hub status writes, member applies and deletes) are retried.
    s.hub.faults().set_conflict_rate(0.3);
    c1.faults().set_conflict_rate(0.3);
    set_canary_weight(&s.hub, 22);
    wait_for(
        "converged through 30% conflicts on writes",
        Duration::from_secs(40),
        || canary_weight(c1) == Some(22) && canary_weight(c2) == Some(22),
    )
    .await;
    wait_for(
        "the TrafficPolicy's status written through the conflicts",
        Duration::from_secs(40),
        || {
            let tp = s
                .hub
                .object("ksit.io", "trafficpolicies", Some("default"), "myapp");
            let generation = tp
                .as_ref()
                .and_then(|t| t.pointer("/metadata/generation").cloned());
            let st = |p: &str| tp.as_ref().and_then(|t| t.pointer(p).cloned());
            st("/status/readyClusters") == Some(json!(2))
                && st("/status/observedGeneration") == generation
        },
    )
    .await;
    s.hub.faults().set_conflict_rate(0.0);
    c1.faults().set_conflict_rate(0.0);

    // A slow member times out; its status says so; the other converges anyway.
    c2.faults().set_latency(Duration::from_secs(3));
    set_canary_weight(&s.hub, 25);
    wait_for(
        "cluster1 converges while cluster2 is slow",
        Duration::from_secs(5),
        || canary_weight(c1) == Some(25),
    )
    .await;
    let last = std::cell::RefCell::new(None);
    let shown = ShowOnPanic("cluster2's last status", &last);
    wait_for(
        "cluster2 reported as timing out",
        Duration::from_secs(20),
        || {
            let st = it_status(&s.hub, "cluster2");
            let timing_out = st.as_ref().is_some_and(|st| {
                st["ready"] == false && st["conditions"][0]["reason"] == "Timeout"
            });
            *last.borrow_mut() = st;
            timing_out
        },
    )
    .await;
    drop(shown);
    assert_ne!(
        canary_weight(c2),
        Some(25),
        "a member that cannot answer cannot have been updated"
    );
    c2.faults().set_latency(Duration::ZERO);
    wait_for("cluster2 catches up", Duration::from_secs(40), || {
        canary_weight(c2) == Some(25)
    })
    .await;
    wait_for("cluster2 ready again", Duration::from_secs(10), || {
        it_status(&s.hub, "cluster2").is_some_and(|st| st["ready"] == true)
    })
    .await;

    // Dropped watch streams on the hub: changes still arrive.
    s.hub.faults().drop_watches();
    set_canary_weight(&s.hub, 30);
    wait_for(
        "change after dropped watches",
        Duration::from_secs(10),
        || canary_weight(c1) == Some(30) && canary_weight(c2) == Some(30),
    )
    .await;

    // A member that comes back empty gets everything back.
    c1.wipe();
    assert!(wasm_plugin(c1).is_none());
    wait_for("wiped member restored", Duration::from_secs(15), || {
        wasm_plugin(c1).is_some()
            && c1
                .object(
                    "networking.istio.io",
                    "gateways",
                    Some("istio-system"),
                    "multi-cluster-gateway",
                )
                .is_some()
    })
    .await;

    // The hub goes away and comes back.
    s.hub.faults().set_down(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.hub.faults().set_down(false);
    set_canary_weight(&s.hub, 35);
    wait_for(
        "change after a hub restart",
        Duration::from_secs(20),
        || canary_weight(c1) == Some(35) && canary_weight(c2) == Some(35),
    )
    .await;

    // Nothing duplicated; the object ksit does not own is as it was.
    // One WasmPlugin; two VirtualServices (ksit's rendered one and the example's copied one).
    assert_eq!(owned_counts(c1), (1, 2));
    assert_eq!(owned_counts(c2), (1, 2));
    let theirs = c2
        .object(
            "networking.istio.io",
            "destinationrules",
            Some("default"),
            "multi-cluster-destination-rule",
        )
        .unwrap();
    assert_eq!(theirs["spec"]["host"], "theirs.example.com");
    assert!(theirs
        .pointer("/metadata/labels/app.kubernetes.io~1managed-by")
        .is_none());
    controller.abort();
    // Through every failure above (bad connections, timeouts, restarts), no log line carried a kubeconfig.
    assert_no_secrets_logged();
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_apply_the_next_instance_converges_without_spurious_writes() {
    capture_logs();
    let s = setup(true).await;
    let (c1, c2) = (&s.members[0], &s.members[1]);
    for m in [c1, c2] {
        m.faults().set_latency(Duration::from_millis(150));
    }
    let first = tokio::spawn(run_async(args(&s, "first")));
    // Kill it once the first objects landed but before everything did.
    wait_for("apply under way", Duration::from_secs(20), || {
        c1.objects("networking.istio.io", "gateways").len()
            + c2.objects("networking.istio.io", "gateways").len()
            > 0
    })
    .await;
    first.abort();
    let _ = first.await;
    // Its drift watches end with it (they are separate tasks: an aborted worker must stop them).
    wait_for(
        "the killed instance's watches closed",
        Duration::from_secs(15),
        || c1.open_watches() == 0 && c2.open_watches() == 0,
    )
    .await;
    let partial = wasm_plugin(c1).is_some()
        && wasm_plugin(c2).is_some()
        && c1.objects("networking.istio.io", "virtualservices").len() >= 2;
    for m in [c1, c2] {
        m.faults().set_latency(Duration::ZERO);
        m.reset_stats(); // what follows in the request logs is the next instance's alone
    }
    let second = tokio::spawn(run_async(args(&s, "second")));
    wait_for(
        "the next instance converges",
        Duration::from_secs(25),
        || {
            [c1, c2].iter().all(|m| {
                wasm_plugin(m).is_some()
                    && m.objects("networking.istio.io", "virtualservices").len() == 2
            })
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The drift watches cover exactly the kinds ksit sends (both members get the same plan; on cluster2
    // the DestinationRule belongs to someone else, but ksit wants one there, so it watches the kind).
    let sent = owned_kinds(c1);
    assert!(sent.contains("destinationrules"), "{sent:?}");
    for m in [c1, c2] {
        let watched: BTreeSet<String> = m
            .request_log()
            .iter()
            .filter(|r| r.verb == "watch")
            .map(|r| r.resource.clone())
            .collect();
        assert_eq!(watched, sent, "{}: watched kinds", m.name());
    }
    for m in [c1, c2] {
        m.reset_stats();
    }
    // Idle for longer than the member timeout (2 s) and past a resync (3 s): nothing is written, and the
    // watches stay open (no new watch, no list of a watched kind): the resync works from the watched state
    // (it lists only the kinds it does not watch, to prune leftovers, and the Istio deployments).
    tokio::time::sleep(Duration::from_secs(5)).await;
    for m in [c1, c2] {
        assert_eq!(
            m.stats().writes,
            0,
            "{}: spurious writes after converging",
            m.name()
        );
        let reopened: Vec<_> = m
            .request_log()
            .into_iter()
            .filter(|r| r.verb == "watch" || (r.verb == "list" && sent.contains(&r.resource)))
            .collect();
        assert!(
            reopened.is_empty(),
            "{}: watches re-opened or lists while idle: {reopened:?}",
            m.name()
        );
        assert_eq!(owned_counts(m), (1, 2), "{}: duplicates", m.name());
    }
    // A watch that breaks on the member's side (an ERROR event) is resumed by kube without a new list, so
    // what it missed is unknown; the worker starts it anew at its next pass (a fresh list), after which
    // passes compare against its view again instead of reading every object (cluster1: ksit owns all of
    // its objects, so none is read for any other reason).
    for m in [c1, c2] {
        m.faults().fail_watches();
    }
    tokio::time::sleep(Duration::from_secs(5)).await; // a resync pass restarts the failed watches
    c1.reset_stats();
    tokio::time::sleep(Duration::from_secs(5)).await; // and the next one reads nothing one by one
    let reads: Vec<_> = c1
        .request_log()
        .into_iter()
        .filter(|r| r.verb == "get" && sent.contains(&r.resource))
        .collect();
    assert!(
        reads.is_empty(),
        "objects read one by one after a watch failure: {reads:?}"
    );
    assert!(
        c1.request_log().iter().any(|r| r.verb == "list"),
        "no resync pass ran"
    );
    eprintln!(
        "killed with the first instance's apply {} complete",
        if partial { "already" } else { "not yet" }
    );
    second.abort();
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// A leader whose Lease renewals hang (the hub answering slower than two thirds of the Lease) stops its work
/// at the renewal deadline, before any other replica may take the Lease over; once the hub answers in time
/// again it leads and syncs again. Without the deadline the slow renewal would succeed late and the leader
/// would go on writing on a Lease others already see as expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_renewals_hang_stops_at_the_renewal_deadline() {
    capture_logs();
    let s = setup(true).await;
    let (c1, c2) = (&s.members[0], &s.members[1]);
    let id = "slow-hub";
    let lines = |what: &str| {
        LOGS.lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(&format!("{id} {what}")))
            .count()
    };
    let controller = tokio::spawn(run_async(args(&s, id)));
    wait_for("initial sync", Duration::from_secs(15), || {
        canary_weight(c1) == Some(10) && canary_weight(c2) == Some(10)
    })
    .await;
    assert_eq!(lines("is the leader"), 1);
    // The Lease is 3 s: renewals every second, given up 2 s after the last success. Every hub call now
    // takes 2.5 s.
    s.hub.faults().set_latency(Duration::from_millis(2500));
    let slow_since = std::time::Instant::now();
    wait_for(
        "the leader gives up at the renewal deadline",
        Duration::from_secs(4),
        || lines("could not renew the leader Lease in time") >= 1,
    )
    .await;
    assert!(
        slow_since.elapsed() < Duration::from_secs(3),
        "gave up {:?} after the hub slowed down: later than the Lease (3 s) could have run out",
        slow_since.elapsed()
    );
    s.hub.faults().set_latency(Duration::ZERO);
    wait_for("leading again", Duration::from_secs(15), || {
        lines("is the leader") >= 2
    })
    .await;
    set_canary_weight(&s.hub, 33);
    wait_for(
        "the new leadership syncs a change",
        Duration::from_secs(15),
        || canary_weight(c1) == Some(33) && canary_weight(c2) == Some(33),
    )
    .await;
    controller.abort();
    let _ = controller.await;
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// A hub that answers slower than `--hub-timeout-seconds` fails each read of it with a timeout (logged, and
/// counted under cluster `hub`) instead of holding the loop until it answers; once it answers in time, a
/// change syncs again. Without the deadline each read would just take its time (seven calls of 1.5 s) and
/// no timeout would ever show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_reads_that_take_too_long_time_out_and_are_retried() {
    capture_logs();
    let s = setup(true).await;
    let (c1, c2) = (&s.members[0], &s.members[1]);
    let mut a = args(&s, "slow-reads");
    a.hub_timeout_seconds = 1;
    // Renewals get two thirds of the Lease, far more than the hub's 1.5 s: this replica stays the leader.
    a.lease_seconds = 30;
    let timed_out = || {
        LOGS.lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("reading the hub: cluster hub did not answer within 1s"))
            .count()
    };
    let controller = tokio::spawn(run_async(a));
    wait_for("initial sync", Duration::from_secs(15), || {
        canary_weight(c1) == Some(10) && canary_weight(c2) == Some(10)
    })
    .await;
    assert_eq!(timed_out(), 0);
    s.hub.faults().set_latency(Duration::from_millis(1500));
    set_canary_weight(&s.hub, 44);
    wait_for(
        "a read of the hub times out",
        Duration::from_secs(8),
        || timed_out() >= 1,
    )
    .await;
    s.hub.faults().set_latency(Duration::ZERO);
    wait_for(
        "the change syncs once the hub answers in time",
        Duration::from_secs(15),
        || canary_weight(c1) == Some(44) && canary_weight(c2) == Some(44),
    )
    .await;
    controller.abort();
    let _ = controller.await;
    let _ = std::fs::remove_dir_all(&s.dir);
}
