//! Every manifest in the repository is valid: ksit's kinds against the CRDs generated from its types, Istio
//! objects against Istio's CRDs, BindingPolicies also against KubeStellar's CRD (both from ../shared/schemas,
//! skipped with a message when absent), Kubernetes built-ins against k8s-openapi's types.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ksit_emulator::Emulator;
use serde_json::Value;
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

fn builtin(v: &Value) -> Option<Result<(), String>> {
    use k8s_openapi::api::{apps::v1 as apps, core::v1 as core, rbac::v1 as rbac};
    fn check<T: serde::de::DeserializeOwned>(v: &Value) -> Result<(), String> {
        serde_json::from_value::<T>(v.clone())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    Some(match (v["apiVersion"].as_str()?, v["kind"].as_str()?) {
        ("v1", "Namespace") => check::<core::Namespace>(v),
        ("v1", "ServiceAccount") => check::<core::ServiceAccount>(v),
        ("v1", "Service") => check::<core::Service>(v),
        ("v1", "Secret") => check::<core::Secret>(v),
        ("apps/v1", "Deployment") => check::<apps::Deployment>(v),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => check::<rbac::ClusterRole>(v),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => check::<rbac::ClusterRoleBinding>(v),
        ("rbac.authorization.k8s.io/v1", "Role") => check::<rbac::Role>(v),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => check::<rbac::RoleBinding>(v),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            check::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>(v)
        }
        _ => return None,
    })
}

#[tokio::test]
async fn every_manifest_is_valid() {
    let ours = Emulator::start("ours").await.unwrap();
    ours.load_crds_yaml(&ksit_controller::resources::crds_yaml())
        .unwrap();
    let shared = ksit_emulator::shared_schemas();
    let (istio, kubestellar) = if shared.is_some() {
        let istio = Emulator::start("istio").await.unwrap();
        istio.load_shared_crds().unwrap(); // KubeStellar's BindingPolicy CRD and KSIT's own are in there too
        (Some(istio.clone()), Some(istio))
    } else {
        eprintln!("skipped Istio and KubeStellar schema checks: ../shared/schemas is absent");
        (None, None)
    };
    let mut files = Vec::new();
    yaml_files(&repo().join("manifests"), &mut files);
    files.sort();
    assert!(files.len() >= 10, "{files:?}");
    let mut checked = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (i, d) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let v: Value = serde::Deserialize::deserialize(d).unwrap();
            if v.is_null() {
                continue;
            }
            let at = format!(
                "{}#{}",
                f.strip_prefix(repo()).unwrap_or(f).display(),
                i + 1
            );
            let kind = v["kind"].as_str().unwrap_or("");
            let group = v["apiVersion"]
                .as_str()
                .unwrap_or("")
                .rsplit_once('/')
                .map_or("", |(g, _)| g)
                .to_string();
            if kind == "Kustomization" {
                for r in v["resources"].as_array().unwrap() {
                    assert!(
                        f.parent().unwrap().join(r.as_str().unwrap()).exists(),
                        "{at}: missing resource {r}"
                    );
                }
                checked += 1;
                continue;
            }
            if let Some(r) = builtin(&v) {
                r.unwrap_or_else(|e| panic!("{at}: {e}"));
                checked += 1;
                continue;
            }
            if matches!(group.as_str(), "ksit.io" | "control.kubestellar.io") {
                let unknown = ours.validate(&v).unwrap_or_else(|e| panic!("{at}: {e}"));
                assert!(
                    unknown.is_empty(),
                    "{at}: fields ksit's CRD does not declare: {unknown:?}"
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
            let other = if group == "control.kubestellar.io" {
                &kubestellar
            } else if group.ends_with("istio.io") {
                &istio
            } else {
                &None
            };
            if let Some(e) = other {
                let unknown = e.validate(&v).unwrap_or_else(|err| panic!("{at}: {err}"));
                assert!(
                    unknown.is_empty(),
                    "{at}: fields the upstream CRD does not declare: {unknown:?}"
                );
                checked += 1;
            } else if !matches!(group.as_str(), "ksit.io" | "control.kubestellar.io")
                && shared.is_some()
            {
                panic!(
                    "{at}: no schema to check {} {kind} against",
                    v["apiVersion"]
                );
            }
        }
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
