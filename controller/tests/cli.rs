//! The `ksit` command line as a user runs it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn ksit(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ksit"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const TP: &str = "manifests/examples/multi-cluster-mesh/trafficpolicy.yaml";

#[test]
fn explain_json_matches_the_engine_and_is_reproducible() {
    let (code, out, err) = ksit(&[
        "explain",
        "-f",
        TP,
        "--path",
        "/api/x",
        "-H",
        "x-request-id: r-17",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["matched"], true);
    assert_eq!(v["route"], "api");
    assert!(v["destination"]["host"]
        .as_str()
        .unwrap()
        .starts_with("api-service-v"));
    assert_eq!(v["destination"]["port"], 8080);
    assert_eq!(v["fault"]["delay"]["fixedDelayMs"], 5000);
    assert_eq!(v["fault"]["delay"]["percentage"], 10.0);
    assert_eq!(v["fault"]["abort"]["httpStatus"], 503);
    assert!(v["fault"]["abort"]["applied"].is_boolean());
    // The same headers give the same decision, run after run.
    let (_, again, _) = ksit(&[
        "explain",
        "-f",
        TP,
        "--path",
        "/api/x",
        "-H",
        "x-request-id: r-17",
        "-o",
        "json",
    ]);
    assert_eq!(out, again);
    // The engine agrees.
    let spec: Value =
        serde_yaml::from_str::<Value>(&std::fs::read_to_string(repo().join(TP)).unwrap()).unwrap()
            ["spec"]
            .clone();
    let e = ksit_policy::Engine::from_json(spec.to_string().as_bytes(), None).unwrap();
    let h: Vec<(&[u8], &[u8])> = vec![
        (b":path", b"/api/x"),
        (b":authority", b"myapp.example.com"),
        (b"x-request-id", b"r-17"),
    ];
    let d = e.decide(&ksit_policy::Request::new(&h), 0);
    assert_eq!(v["destination"]["host"], d.destination.unwrap().host);
    assert_eq!(v["fault"]["abort"]["applied"], d.abort.unwrap().applied);
}

#[test]
fn explain_many_requests_and_unmatched() {
    let dir = std::env::temp_dir().join(format!("ksit-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let reqs = dir.join("r.jsonl");
    std::fs::write(&reqs, "{\"path\": \"/web/a\"}\n{\"method\": \"POST\", \"path\": \"/api\", \"headers\": {\"x-ksit-canary\": \"api-service-v2\"}}\n{\"path\": \"/zzz\"}\n{\"path\": \"/web\", \"authority\": \"other.example.com\"}\n").unwrap();
    let (code, out, err) = ksit(&["explain", "-f", TP, "--requests", reqs.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["destination"]["host"], "web-service");
    assert_eq!(lines[0]["fault"]["delay"], Value::Null);
    assert_eq!(
        (
            lines[1]["destination"]["host"].as_str(),
            lines[1]["pick"]["by"].as_str()
        ),
        (Some("api-service-v2"), Some("override"))
    );
    assert_eq!(
        (lines[2]["matched"].as_bool(), &lines[2]["destination"]),
        (Some(false), &Value::Null)
    );
    assert_eq!(lines[3]["matched"], false);
    // Every decided request is marked by default.
    assert_eq!(
        (lines[0]["stable"].as_bool(), lines[0]["header"].as_str()),
        (Some(true), Some("web-service"))
    );
    assert_eq!(
        (lines[1]["stable"].as_bool(), lines[1]["header"].as_str()),
        (Some(false), Some("api-service-v2"))
    );
    // With --stable-by-default-route, requests to the stable destination are not (the VirtualService's
    // default route takes them there).
    let unmarked = |extra: &[&str]| {
        let mut a = vec![
            "explain",
            "-f",
            TP,
            "--path",
            "/web/a",
            "--stable-by-default-route",
        ];
        a.extend_from_slice(extra);
        ksit(&a).1
    };
    let text = unmarked(&[]);
    assert!(
        text.contains("x-ksit-destination not written: the stable destination"),
        "{text}"
    );
    let text = unmarked(&["-H", "x-ksit-destination: api-service-v2"]);
    assert!(
        text.contains("x-ksit-destination: web-service"),
        "a client's header is replaced: {text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn explain_reads_an_istio_virtual_service_with_deprecated_percent() {
    let dir = std::env::temp_dir().join(format!("ksit-cli-vs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let vs = dir.join("vs.yaml");
    std::fs::write(&vs, r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.example.com]
  http:
  - match: [{uri: {prefix: /r}, sourceLabels: {app: x}}]
    headers: {request: {set: {x-a: b}}}
    fault: {abort: {httpStatus: 500, percentage: {value: 100}}, delay: {fixedDelay: 1s, percent: 100}}
    route: [{destination: {host: reviews, subset: v2}}]
"#).unwrap();
    let (code, out, err) = ksit(&[
        "explain",
        "-f",
        vs.to_str().unwrap(),
        "--path",
        "/r/1",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["route"], 0, "unnamed rules are reported by index");
    assert_eq!(
        (
            v["destination"]["host"].as_str(),
            v["destination"]["subset"].as_str()
        ),
        (Some("reviews"), Some("v2"))
    );
    assert_eq!(
        (
            v["fault"]["delay"]["applied"].as_bool(),
            v["fault"]["delay"]["fixedDelayMs"].as_u64()
        ),
        (Some(true), Some(1000))
    );
    assert_eq!(v["fault"]["abort"]["applied"], true);
    let (_, text, _) = ksit(&["explain", "-f", vs.to_str().unwrap(), "--path", "/r/1"]);
    assert!(
        !text.contains("spec.http[0].headers"),
        "headers are read (carried to the VirtualService), not dropped: {text}"
    );
    assert!(
        text.contains("spec.http[0].match[0].sourceLabels: ignored"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn render_writes_one_file_per_bound_cluster() {
    let dir = std::env::temp_dir().join(format!("ksit-cli-render-{}", std::process::id()));
    let module = dir.join("m.wasm");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(&module, b"\0asm").unwrap();
    let (code, out, err) = ksit(&[
        "render",
        "-f",
        "manifests/examples/multi-cluster-mesh",
        "-o",
        dir.to_str().unwrap(),
        "--module",
        module.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("cluster1: ") && out.contains("cluster2: "),
        "{out}"
    );
    // By default the WasmPlugin is the same for every cluster (each proxy resolves its own overrides).
    let c1 = std::fs::read_to_string(dir.join("cluster1.yaml")).unwrap();
    let c2 = std::fs::read_to_string(dir.join("cluster2.yaml")).unwrap();
    let plugin = |text: &str| -> String {
        text.split("---\n")
            .find(|d| d.contains("kind: WasmPlugin"))
            .unwrap_or_else(|| panic!("no WasmPlugin in {text}"))
            .to_string()
    };
    assert_eq!(plugin(&c1), plugin(&c2));
    assert!(!c1.contains("cluster: cluster1"), "{c1}");
    let shared = plugin(&c1);
    // Per cluster, as before: each names its cluster.
    let (code, _, err) = ksit(&[
        "render",
        "-f",
        "manifests/examples/multi-cluster-mesh",
        "-o",
        dir.to_str().unwrap(),
        "--module",
        module.to_str().unwrap(),
        "--per-cluster-rendering",
    ]);
    assert_eq!(code, 0, "{err}");
    let c1 = std::fs::read_to_string(dir.join("cluster1.yaml")).unwrap();
    assert!(
        c1.contains("kind: WasmPlugin") && c1.contains("cluster: cluster1"),
        "{c1}"
    );
    // One set for a GitOps tool: the TrafficPolicy's WasmPlugin and VirtualService, once.
    let single = dir.join("single");
    let (code, out, err) = ksit(&[
        "render",
        "-f",
        "manifests/examples/multi-cluster-mesh",
        "-o",
        single.to_str().unwrap(),
        "--module",
        module.to_str().unwrap(),
        "--single",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("every bound cluster: 2 object(s)"), "{out}");
    let set = std::fs::read_to_string(single.join("ksit.yaml")).unwrap();
    let kinds: Vec<&str> = set.lines().filter(|l| l.starts_with("kind: ")).collect();
    assert_eq!(kinds, ["kind: WasmPlugin", "kind: VirtualService"], "{set}");
    assert_eq!(
        plugin(&set),
        shared,
        "the set holds the WasmPlugin every cluster gets"
    );
    let (code, _, err) = ksit(&[
        "render",
        "-f",
        "manifests/examples/multi-cluster-mesh",
        "-o",
        dir.to_str().unwrap(),
        "--module",
        "/nonexistent.wasm",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("make wasm"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn codes(out: &str) -> Vec<(String, String, String)> {
    let v: Value = serde_json::from_str(out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["code"].as_str().unwrap().to_string(),
                f["severity"].as_str().unwrap().to_string(),
                f["path"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn analyze_finds_the_seed_examples_defects() {
    let seed = repo().join("../shared/examples/ksit-multi-cluster-mesh");
    if !seed.is_dir() {
        eprintln!("skipped: ../shared/examples is absent");
        return;
    }
    let (code, out, err) = ksit(&["analyze", "-f", seed.to_str().unwrap(), "-o", "json"]);
    assert_eq!(code, 1, "errors exit 1: {err}");
    let c = codes(&out);
    assert!(
        c.contains(&(
            "KSIT001".into(),
            "error".into(),
            "metadata.namespace".into()
        )),
        "{c:?}"
    );
    assert!(
        c.contains(&("KSIT002".into(), "error".into(), "spec.upsync".into())),
        "{c:?}"
    );
    assert!(
        c.contains(&(
            "KSIT003".into(),
            "warning".into(),
            "spec.trafficPolicy.outlierDetection.consecutiveErrors".into()
        )),
        "{c:?}"
    );
    assert!(c.iter().any(|x| x.0 == "KSIT004"), "{c:?}");
    let (_, text, _) = ksit(&["analyze", "-f", seed.to_str().unwrap()]);
    assert!(text.contains("fix: use consecutive5xxErrors"), "{text}");
    // The corrected example has only warnings.
    let (code, out, _) = ksit(&[
        "analyze",
        "-f",
        "manifests/examples/multi-cluster-mesh",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(codes(&out).iter().all(|x| x.1 == "warning"));
}

#[test]
fn analyze_checks_policies_subsets_shadowing_and_bindings() {
    let dir = std::env::temp_dir().join(format!("ksit-cli-an-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("all.yaml"), r#"
apiVersion: ksit.io/v1alpha1
kind: TrafficPolicy
metadata: {name: bad, namespace: default}
spec:
  hosts: [a.example.com]
  http:
  - name: all
    route: [{destination: {host: a}}]
  - name: api
    match: [{uri: {regex: "(open"}}]
    route: [{destination: {host: a, subset: v1}, weight: -1}, {destination: {host: a, subset: v9}, weight: 5}]
    fault: {delay: {fixedDelay: 5 seconds, percentage: {value: 150}}, abort: {httpStatus: 503}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: a, namespace: default}
spec: {host: a.default.svc.cluster.local, subsets: [{name: v1, labels: {v: "1"}}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shadow, namespace: default}
spec:
  hosts: [b.example.com]
  http:
  - match: [{uri: {prefix: /api}}]
    route: [{destination: {host: b}}]
  - match: [{uri: {prefix: /api/v2}}]
    route: [{destination: {host: b2}}]
---
apiVersion: control.kubestellar.io/v1alpha1
kind: BindingPolicy
metadata: {name: nowhere}
spec:
  clusterSelectors: [{matchLabels: {mesh: nope}}]
  downsync: [{apiGroup: networking.istio.io, resources: [virtualservices]}]
---
apiVersion: ksit.io/v1alpha1
kind: IntegrationTarget
metadata: {name: c1, namespace: ksit-system}
spec: {clusterName: c1, labels: {mesh: enabled}}
"#).unwrap();
    let (code, out, err) = ksit(&["analyze", "-f", dir.to_str().unwrap(), "-o", "json"]);
    assert_eq!(code, 1, "{err}");
    let c = codes(&out);
    let has = |code: &str, path: &str| c.iter().any(|x| x.0 == code && x.2 == path);
    assert!(has("KSIT010", "spec.http[1].route[0].weight"), "{c:?}");
    assert!(has("KSIT010", "spec.http[1].match[0].uri.regex"), "{c:?}");
    assert!(
        has("KSIT010", "spec.http[1].fault.delay.fixedDelay"),
        "{c:?}"
    );
    assert!(
        has("KSIT010", "spec.http[1].fault.delay.percentage.value"),
        "{c:?}"
    );
    assert!(has("KSIT011", "spec.http[1].fault.abort"), "{c:?}");
    assert!(
        has("KSIT020", "spec.http[1]"),
        "rule after a catch-all: {c:?}"
    );
    assert!(
        has("KSIT030", "spec.http[1].route[1].destination.subset"),
        "subset v9 undefined: {c:?}"
    );
    assert!(
        !has("KSIT030", "spec.http[1].route[0].destination.subset"),
        "subset v1 is defined: {c:?}"
    );
    assert!(
        c.iter().filter(|x| x.0 == "KSIT020").count() == 2,
        "VirtualService /api/v2 after /api: {c:?}"
    );
    assert!(has("KSIT040", "spec.clusterSelectors"), "{c:?}");
    assert!(has("KSIT041", "metadata"), "{c:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn ksit_with_stdin(args: &[&str], input: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_ksit"))
        .args(args)
        .current_dir(repo())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `--requests -` reads the requests from standard input (it used to open a file named `-`), and answers
/// them exactly as from a file.
#[test]
fn explain_reads_requests_from_standard_input() {
    let lines = "{\"path\": \"/web/a\"}\n\n{\"path\": \"/api\", \"headers\": {\"x-request-id\": \"r-3\"}}\n";
    let (code, out, err) = ksit_with_stdin(&["explain", "-f", TP, "--requests", "-"], lines);
    assert_eq!(code, 0, "{err}");
    let got: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), 2, "{out}");
    assert_eq!(got[0]["destination"]["host"], "web-service");
    assert_eq!(got[1]["route"], "api");
    // The same as from a file.
    let dir = std::env::temp_dir().join(format!("ksit-cli-stdin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("r.jsonl");
    std::fs::write(&file, lines).unwrap();
    let (_, from_file, _) = ksit(&["explain", "-f", TP, "--requests", file.to_str().unwrap()]);
    let from_file: Vec<Value> = from_file
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (a, b) in got.iter().zip(&from_file) {
        assert_eq!(
            (
                &a["route"],
                &a["destination"],
                &a["fault"]["abort"]["percentage"]
            ),
            (
                &b["route"],
                &b["destination"],
                &b["fault"]["abort"]["percentage"]
            )
        );
    }
    let (code, _, err) =
        ksit_with_stdin(&["explain", "-f", TP, "--requests", "-"], "{\"path\": 3}\n");
    assert_eq!(code, 1);
    assert!(err.contains("standard input:1:"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A reader that stops early (`ksit ... | head -1`): the command ends quietly, without a panic, whatever it
/// was writing. Each case reads one line from a real pipe and closes it while ksit still writes.
#[test]
fn no_command_panics_on_a_closed_pipe() {
    use std::io::{BufRead, Write};
    let requests: String = (0..20_000)
        .map(|i| format!("{{\"path\": \"/api/{i}\"}}\n"))
        .collect();
    let dir = std::env::temp_dir().join(format!("ksit-cli-pipe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("many.jsonl");
    std::fs::write(&file, &requests).unwrap();
    let file = file.to_str().unwrap().to_string();
    let cases: Vec<(Vec<&str>, Option<&str>)> = vec![
        (vec!["explain", "-f", TP, "--requests", &file], None),
        (
            vec!["explain", "-f", TP, "--requests", "-"],
            Some(requests.as_str()),
        ),
        (vec!["crds"], None),
        (
            vec!["analyze", "-f", "manifests/examples/multi-cluster-mesh"],
            None,
        ),
    ];
    for (args, input) in cases {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ksit"))
            .args(&args)
            .current_dir(repo())
            .stdin(if input.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let feeder = input.map(|text| {
            let mut stdin = child.stdin.take().unwrap();
            let text = text.to_string();
            // Standard input may be closed by ksit's exit before it is all written.
            std::thread::spawn(move || {
                let _ = stdin.write_all(text.as_bytes());
            })
        });
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        assert!(!first.is_empty(), "{args:?}: no output");
        drop(stdout);
        let out = child.wait_with_output().unwrap();
        if let Some(f) = feeder {
            f.join().unwrap();
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The warnings that announce changed defaults and Istio's documented-but-unimplemented behaviour, and the
/// BindingPolicy fields ksit does not implement.
#[test]
fn analyze_announces_changed_semantics_and_unsupported_binding_fields() {
    let dir = std::env::temp_dir().join(format!("ksit-cli-an19-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("all.yaml"), r#"
apiVersion: ksit.io/v1alpha1
kind: TrafficPolicy
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews.example.com]
  http:
  - match: [{headers: {method: {exact: POST}}}]
    route: [{destination: {host: reviews, subset: v1}, weight: 50}, {destination: {host: reviews, subset: v2}, weight: 50}]
  - name: ratings
    fault: {delay: {fixedDelay: 7s}, abort: {httpStatus: 500, percentage: {value: 10}}}
    route: [{destination: {host: ratings}}]
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: endpoint
  namespace: bookinfo
  annotations: {control.kubestellar.io/expand-templates: "true"}
data: {url: "https://{{ .clusterName }}.{{ .zone }}.example.com"}
---
apiVersion: control.kubestellar.io/v1alpha1
kind: BindingPolicy
metadata: {name: bookinfo}
spec:
  wantSingletonReportedState: true
  clusterSelectors: [{matchLabels: {mesh: enabled}}]
  downsync:
  - {apiGroup: ksit.io, resources: [trafficpolicies], namespaces: [bookinfo]}
  - {apiGroup: "", resources: [configmaps], namespaces: [bookinfo], statusCollection: {statusCollectors: [ready]}}
---
apiVersion: ksit.io/v1alpha1
kind: IntegrationTarget
metadata: {name: c1, namespace: ksit-system}
spec: {clusterName: c1, labels: {mesh: enabled}}
"#).unwrap();
    let (code, out, err) = ksit(&["analyze", "-f", dir.to_str().unwrap(), "-o", "json"]);
    assert_eq!(code, 1, "KSIT044 is an error: {err}");
    let findings: Value = serde_json::from_str(&out).unwrap();
    let find = |code: &str, path: &str| {
        findings
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["code"] == code && f["path"] == path)
            .map(|f| f["message"].as_str().unwrap_or("").to_string())
    };
    let cases = [
        (
            "KSIT011",
            "spec.http[1].fault.delay",
            "injected into no request (0%)",
        ),
        (
            "KSIT012",
            "spec.http[0].match[0].headers.method",
            "literally named \"method\"",
        ),
        (
            "KSIT021",
            "spec.http[0].name",
            "keyed by a hash of its matches and destinations",
        ),
        (
            "KSIT043",
            "spec.wantSingletonReportedState",
            "not implemented by ksit",
        ),
        (
            "KSIT043",
            "spec.downsync[1].statusCollection",
            "collects no status",
        ),
        (
            "KSIT044",
            "spec.downsync",
            "map has no entry for key \"zone\"",
        ),
    ];
    for (code, path, text) in cases {
        let m = find(code, path).unwrap_or_else(|| panic!("no {code} at {path}: {out}"));
        assert!(m.contains(text), "{code} {path}: {m}");
    }
    assert!(
        find("KSIT011", "spec.http[1].fault.abort").is_none(),
        "it has a percentage"
    );
    assert!(find("KSIT021", "spec.http[1].name").is_none(), "named");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `ksit explain` on a VirtualService with the fields ksit used to drop: a redirect rule answers (no
/// destination), mirrorPercent is read as mirrorPercentage (Envoy decides per request), a named match gives
/// Istio's route name, and a delegate is refused with the reason.
#[test]
fn explain_reads_every_httproute_field_of_a_virtual_service() {
    let dir = std::env::temp_dir().join(format!("ksit-cli-vs19-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let vs = dir.join("vs.yaml");
    std::fs::write(
        &vs,
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo, namespace: bookinfo}
spec:
  hosts: [bookinfo.example.com]
  http:
  - name: old
    match: [{name: v1-api, uri: {prefix: /v1}, sourceLabels: {app: productpage}}]
    redirect: {prefixRewrite: /v2}
  - name: reviews
    match: [{name: reviews, uri: {prefix: /reviews}}]
    route: [{destination: {host: reviews, subset: v1}}]
    mirror: {host: reviews, subset: v2}
    mirrorPercent: 40
    headers: {request: {set: {x-a: b}}}
    corsPolicy: {allowOrigins: [{exact: "https://a"}]}
    retries: {attempts: 2, backoff: 25ms}
"#,
    )
    .unwrap();
    let json = |path: &str| {
        let (code, out, err) = ksit(&[
            "explain",
            "-f",
            vs.to_str().unwrap(),
            "--path",
            path,
            "-o",
            "json",
        ]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<Value>(&out).unwrap()
    };
    let old = json("/v1/x");
    assert_eq!(
        (
            old["route"].as_str(),
            old["routeName"].as_str(),
            &old["destination"],
            old["header"].is_null()
        ),
        (Some("old"), Some("old.v1-api"), &Value::Null, true)
    );
    assert_eq!(old["answer"]["redirect"]["prefixRewrite"], "/v2");
    let r = json("/reviews/1");
    assert_eq!(r["routeName"], "reviews.reviews");
    assert_eq!(r["mirror"]["by"], "envoy");
    assert_eq!(r["mirror"]["policies"][0]["percentage"], 40.0);
    let (_, text, _) = ksit(&["explain", "-f", vs.to_str().unwrap(), "--path", "/v1/x"]);
    assert!(text.contains("answer      redirect"), "{text}");
    assert!(
        text.contains(
            "note        spec.http[1].mirrorPercent: deprecated; read as mirrorPercentage"
        ),
        "{text}"
    );
    assert!(
        text.contains("spec.http[0].match[0].sourceLabels: ignored"),
        "{text}"
    );
    std::fs::write(
        &vs,
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: root, namespace: bookinfo}
spec:
  hosts: [bookinfo.example.com]
  http:
  - match: [{uri: {prefix: /reviews}}]
    delegate: {name: reviews, namespace: team}
"#,
    )
    .unwrap();
    let (code, _, err) = ksit(&["explain", "-f", vs.to_str().unwrap(), "--path", "/reviews"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("delegates to VirtualService team/reviews")
            && err.contains("explain it instead"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// docs/trafficpolicy.md lists exactly the codes `ksit analyze` reports, with the same words.
#[test]
fn analyze_codes_are_the_documented_ones() {
    let doc = std::fs::read_to_string(repo().join("docs/trafficpolicy.md")).unwrap();
    let table: Vec<(String, String)> = doc
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            match cells.as_slice() {
                ["", code, text, ""] if code.starts_with("KSIT") => {
                    Some((code.to_string(), text.to_string()))
                }
                _ => None,
            }
        })
        .collect();
    let codes: Vec<(String, String)> = ksit_controller::analyze::CODES
        .iter()
        .map(|(c, t)| (c.to_string(), t.to_string()))
        .collect();
    assert_eq!(table, codes);
}
