//! The CRDs are generated from the Rust types: the checked-in copy must not drift, and every KSIT and
//! KubeStellar manifest of the seed example must keep applying to them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ksit_emulator::Emulator;
use serde_json::Value;
use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn checked_in_crds_match_the_rust_types() {
    let path = repo().join("manifests/crds.yaml");
    let generated = ksit_controller::resources::crds_yaml();
    if std::env::var_os("KSIT_REGENERATE").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "manifests/crds.yaml is stale: run `make generate` (ksit crds > manifests/crds.yaml)"
    );
    for kind in [
        "TrafficPolicy",
        "BindingPolicy",
        "IntegrationTarget",
        "Integration",
    ] {
        assert!(
            generated.contains(&format!("kind: {kind}\n")),
            "{kind} missing"
        );
    }
}

#[tokio::test]
async fn seed_manifests_apply_to_our_crds() {
    let e = Emulator::start("hub").await.unwrap();
    e.load_crds_yaml(&ksit_controller::resources::crds_yaml())
        .unwrap();
    e.put(serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}}), "t").unwrap();
    let seed = repo().join("../shared/examples/ksit-multi-cluster-mesh");
    let mut files = vec![
        repo().join("manifests/examples/multi-cluster-mesh/trafficpolicy.yaml"),
        repo().join("manifests/examples/multi-cluster-mesh/bindingpolicy.yaml"),
    ];
    if seed.is_dir() {
        files.push(seed.join("integration.yaml"));
        files.push(seed.join("bindingpolicy.yaml"));
    } else {
        eprintln!("skipped the seed's own files: ../shared/examples is absent");
    }
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for d in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(d).unwrap();
            let out = e
                .put(v, "kubectl")
                .unwrap_or_else(|err| panic!("{} does not apply: {err}", f.display()));
            // A BindingPolicy is cluster-scoped: a namespace in the manifest is dropped, as the API server does.
            if out["kind"] == "BindingPolicy" {
                assert!(out.pointer("/metadata/namespace").is_none());
            }
        }
    }
}
