//! `make oci`'s packer: an OCI image layout in Istio's Wasm image format, digests consistent, reproducible.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Command;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn blob(dir: &Path, digest: &str) -> Vec<u8> {
    let data = std::fs::read(
        dir.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
    .unwrap();
    assert_eq!(
        format!("sha256:{}", hex(&Sha256::digest(&data))),
        digest,
        "blob content does not match its digest"
    );
    data
}

fn pack(module: &Path, out: &Path) -> String {
    let script = ksit_tests::repo_root().join("scripts/oci-pack.py");
    let o = Command::new("python3")
        .arg(script)
        .arg(module)
        .arg(out)
        .arg("1.2.3")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read_to_string(out.join("index.json")).unwrap()
}

#[test]
fn oci_layout_holds_plugin_wasm_in_one_layer() {
    let dir = std::env::temp_dir().join(format!("ksit-oci-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let module = dir.join("m.wasm");
    let wasm = b"\0asm\x01\0\0\0-ksit-test-module".to_vec();
    std::fs::write(&module, &wasm).unwrap();
    let out = dir.join("layout");
    let index = pack(&module, &out);
    let layout: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("oci-layout")).unwrap()).unwrap();
    assert_eq!(layout["imageLayoutVersion"], "1.0.0");
    let index: Value = serde_json::from_str(&index).unwrap();
    let m = &index["manifests"][0];
    assert_eq!(
        m["annotations"]["org.opencontainers.image.ref.name"],
        "1.2.3"
    );
    let manifest: Value =
        serde_json::from_slice(&blob(&out, m["digest"].as_str().unwrap())).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "Istio's format: a single layer");
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let layer = blob(&out, layers[0]["digest"].as_str().unwrap());
    assert_eq!(layers[0]["size"].as_u64().unwrap() as usize, layer.len());
    blob(&out, manifest["config"]["digest"].as_str().unwrap());
    // The layer is a tar.gz with plugin.wasm holding exactly the module.
    std::fs::write(dir.join("layer.tgz"), &layer).unwrap();
    let x = dir.join("x");
    std::fs::create_dir_all(&x).unwrap();
    let t = Command::new("tar")
        .arg("-xzf")
        .arg(dir.join("layer.tgz"))
        .arg("-C")
        .arg(&x)
        .status()
        .unwrap();
    assert!(t.success());
    assert_eq!(std::fs::read(x.join("plugin.wasm")).unwrap(), wasm);
    assert_eq!(
        manifest["annotations"]["io.ksit.module.sha256"],
        hex(&Sha256::digest(&wasm))
    );
    // Reproducible: the same module gives the same manifest digest.
    let again = pack(&module, &dir.join("layout2"));
    assert_eq!(
        serde_json::from_str::<Value>(&again).unwrap()["manifests"][0]["digest"],
        m["digest"]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
