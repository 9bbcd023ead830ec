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
        text.contains("note        spec.http[0].headers: not evaluated"),
        "{text}"
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
    let c1 = std::fs::read_to_string(dir.join("cluster1.yaml")).unwrap();
    assert!(
        c1.contains("kind: WasmPlugin") && c1.contains("cluster: cluster1"),
        "{c1}"
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
