//! Istio's own judgement of what ksit produces: `istioctl validate` and `istioctl analyze --use-kube=false`
//! (istioctl built from the pinned istio.io/istio module by tests/kube) on every object `ksit render`
//! writes for the example and for each HTTPRoute feature (tests/fixtures/httproute), and on the install
//! manifests. Any Error fails the test. The analyzer gets the Services and the ingress gateway the example
//! routes to (tests/fixtures/example-workloads.yaml; bookinfo-workloads.yaml for the features), and no
//! message is suppressed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod fixtures;

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn istioctl(args: &[&str], files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(ksit_kube::istioctl().unwrap())
        .args(args)
        .args(files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `ksit render` of the example, as a user runs it: one file per bound cluster.
fn render(out: &Path) -> Vec<PathBuf> {
    let module = out.join("module.wasm");
    std::fs::create_dir_all(out).unwrap();
    std::fs::write(&module, b"\0asm-validate").unwrap();
    let rendered = out.join("rendered");
    let status = Command::new(env!("CARGO_BIN_EXE_ksit"))
        .args(["render", "-f"])
        .arg(repo().join("manifests/examples/multi-cluster-mesh"))
        .arg("-o")
        .arg(&rendered)
        .arg("--module")
        .arg(&module)
        .status()
        .unwrap();
    assert!(status.success());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&rendered)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(
        files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect::<Vec<_>>(),
        ["cluster1.yaml", "cluster2.yaml"]
    );
    files
}

fn install_manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("manifests/install"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

fn no_errors(what: &str, (ok, text): (bool, String)) {
    assert!(ok && !text.contains("Error"), "{what}:\n{text}");
}

#[test]
fn istioctl_validate_accepts_everything_ksit_renders_and_installs() {
    let dir = std::env::temp_dir().join(format!("ksit-istioctl-{}", std::process::id()));
    let rendered = render(&dir);
    for f in rendered.iter().chain(&install_manifests()) {
        let result = istioctl(&["validate", "-f"], std::slice::from_ref(f));
        no_errors(&format!("istioctl validate -f {}", f.display()), result);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn istioctl_analyze_finds_nothing_in_what_ksit_renders() {
    let dir = std::env::temp_dir().join(format!("ksit-analyze-{}", std::process::id()));
    let workloads = repo().join("controller/tests/fixtures/example-workloads.yaml");
    for cluster in render(&dir) {
        let mut files = vec![cluster.clone(), workloads.clone()];
        files.extend(install_manifests());
        let (ok, text) = istioctl(&["analyze", "--use-kube=false", "--all-namespaces"], &files);
        assert!(ok, "istioctl analyze {}:\n{text}", cluster.display());
        assert!(
            text.contains("No validation issues found"),
            "istioctl analyze {} reports:\n{text}",
            cluster.display()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn istioctl_validate_and_analyze_accept_every_httproute_feature_ksit_renders() {
    let dir = std::env::temp_dir().join(format!("ksit-istioctl-features-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rendered = fixtures::rendered_fixtures();
    assert!(rendered.len() >= 10);
    // The Services and DestinationRules (with the subsets the routes use) of the fixtures' namespace.
    let bookinfo = repo().join("controller/tests/fixtures/bookinfo-workloads.yaml");
    for (name, yaml) in rendered {
        let f = dir.join(format!("{name}.yaml"));
        std::fs::write(&f, yaml).unwrap();
        no_errors(
            &format!("istioctl validate -f {name}"),
            istioctl(&["validate", "-f"], std::slice::from_ref(&f)),
        );
        let (ok, text) = istioctl(
            &["analyze", "--use-kube=false", "--all-namespaces"],
            &[f, bookinfo.clone()],
        );
        assert!(
            ok && !text.contains("Error"),
            "istioctl analyze {name}:\n{text}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The analyzer is live and its verdict read right: a VirtualService naming a Gateway that does not exist is
/// an Error (IST0101), which the checks above would fail on.
#[test]
fn istioctl_analyze_reports_a_broken_reference() {
    let dir = std::env::temp_dir().join(format!("ksit-analyze-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bad, namespace: default}\n\
         spec:\n  hosts: [bad.example.com]\n  gateways: [istio-system/nope]\n  http:\n  - route:\n    - destination: {host: web-service}\n",
    )
    .unwrap();
    let (ok, text) = istioctl(&["analyze", "--use-kube=false", "--all-namespaces"], &[bad]);
    assert!(!ok && text.contains("Error [IST0101]"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
