//! Every manifest in the repository is valid: each document is applied with a server-side dry run and strict
//! field validation to a real kube-apiserver (tests/kube) holding ksit's CRDs (`ksit crds`, BindingPolicy
//! included) and Istio's (from the pinned istio.io/istio module, CEL rules included), so the API server's
//! own schema checks, CEL rules and built-in validation judge them; TrafficPolicies also pass ksit's
//! validation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ksit_kube::ApiServer;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml") {
            out.push(p);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_manifest_is_valid() {
    let server = ApiServer::start("manifests").await.unwrap();
    let admin = server.admin().await.unwrap();
    admin
        .apply_yaml(&ksit_controller::resources::crds_yaml(), "setup")
        .await
        .unwrap();
    admin
        .apply_yaml(&ksit_kube::istio_crds_yaml().unwrap(), "setup")
        .await
        .unwrap();
    let mut files = Vec::new();
    yaml_files(&repo().join("manifests"), &mut files);
    files.sort();
    assert!(files.len() >= 10, "{files:?}");
    let mut docs = vec![];
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (i, d) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let v: Value = serde::Deserialize::deserialize(d).unwrap();
            if !v.is_null() {
                docs.push((
                    format!(
                        "{}#{}",
                        f.strip_prefix(repo()).unwrap_or(f).display(),
                        i + 1
                    ),
                    f.clone(),
                    v,
                ));
            }
        }
    }
    // The namespaces the manifests use exist (a dry run does not create them).
    let namespaces: std::collections::BTreeSet<&str> = docs
        .iter()
        .filter_map(|(_, _, v)| v["metadata"]["namespace"].as_str())
        .collect();
    for ns in namespaces {
        admin
            .apply(
                &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                "setup",
            )
            .await
            .unwrap();
    }
    let mut checked = 0;
    for (at, file, v) in &docs {
        let kind = v["kind"].as_str().unwrap_or("");
        if kind == "Kustomization" {
            for r in v["resources"].as_array().unwrap() {
                assert!(
                    file.parent().unwrap().join(r.as_str().unwrap()).exists(),
                    "{at}: missing resource {r}"
                );
            }
            checked += 1;
            continue;
        }
        let api_version = v["apiVersion"]
            .as_str()
            .unwrap_or_else(|| panic!("{at}: no apiVersion"));
        let r = admin
            .resource_of(api_version, kind)
            .await
            .unwrap_or_else(|e| panic!("{at}: {e}"));
        let ns = r
            .namespaced
            .then(|| v["metadata"]["namespace"].as_str().unwrap_or("default"));
        let name = v["metadata"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{at}: no name"));
        let res = admin
            .raw(
                "PATCH",
                &format!(
                    "{}?fieldManager=ksit-manifest-check&force=true&dryRun=All&fieldValidation=Strict",
                    r.path(ns, Some(name))
                ),
                Some("application/apply-patch+yaml"),
                Some(serde_json::to_vec(v).unwrap()),
            )
            .await
            .unwrap();
        assert!(
            res.ok(),
            "{at}: the API server rejects it: {} {}",
            res.status,
            String::from_utf8_lossy(&res.body)
        );
        if kind == "TrafficPolicy" {
            let errs = ksit_policy::validate_spec(
                &serde_json::from_value(v["spec"].clone()).unwrap(),
                "spec",
            );
            assert!(errs.is_empty(), "{at}: {errs:?}");
        }
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} documents checked");
}

#[test]
fn dashboard_queries_name_real_metrics() {
    let d: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("manifests/dashboards/ksit-grafana.json")).unwrap(),
    )
    .unwrap();
    let controller = ksit_controller::metrics::Metrics::default();
    controller.clusters_ready.set(1);
    controller
        .errors
        .get_or_create(&ksit_controller::metrics::ErrorLabels {
            cluster: "c".into(),
            kind: "k".into(),
        })
        .inc();
    controller
        .writes
        .get_or_create(&ksit_controller::metrics::WriteLabels {
            cluster: "c".into(),
            verb: "apply".into(),
        })
        .inc();
    controller
        .reconciles
        .get_or_create(&ksit_controller::metrics::ClusterLabel {
            cluster: "c".into(),
        })
        .inc();
    controller.apply_seconds.observe(0.1);
    let exposed = controller.encode();
    let filter_doc = std::fs::read_to_string(repo().join("docs/metrics.md")).unwrap();
    let mut names = std::collections::BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let e = t["expr"].as_str().unwrap();
            for w in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if w.starts_with("ksit_") {
                    names.insert(w.to_string());
                }
            }
        }
    }
    assert!(names.len() >= 12, "{names:?}");
    for n in names {
        let known = if n.starts_with("ksit_controller_") {
            exposed
                .lines()
                .any(|l| l.starts_with(&format!("{n} ")) || l.starts_with(&format!("{n}{{")))
        } else {
            filter_doc.contains(&format!("`{n}`"))
        };
        assert!(known, "the dashboard queries {n}, which nothing exports");
    }
}

#[test]
fn the_controller_runs_locked_down() {
    let text = std::fs::read_to_string(repo().join("manifests/install/deployment.yaml")).unwrap();
    let d: Value = serde_yaml::from_str(&text).unwrap();
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(
        c["resources"]["requests"]["memory"].is_string()
            && c["resources"]["requests"]["cpu"].is_string()
    );
    assert!(
        c["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--target-namespace=ksit-system"),
        "kubeconfig Secrets read only in ksit-system"
    );
    // The hub Role grants Secret reads in ksit-system only; no ClusterRole grants Secrets.
    let rbac = std::fs::read_to_string(repo().join("manifests/install/rbac.yaml")).unwrap();
    for doc in serde_yaml::Deserializer::from_str(&rbac) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        if v["kind"] == "ClusterRole" {
            for r in v["rules"].as_array().unwrap() {
                assert!(
                    !r["resources"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|x| x == "secrets"),
                    "a ClusterRole must not grant Secrets"
                );
                assert!(
                    !r["verbs"].as_array().unwrap().iter().any(|x| x == "*"),
                    "no wildcard verbs"
                );
            }
        }
    }
}
