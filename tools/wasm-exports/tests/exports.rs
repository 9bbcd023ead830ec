//! The built filter module exports exactly the callbacks it uses (make wasm strips the rest): no
//! `proxy_on_context_create`, so Envoy enters the VM twice per request (headers, delete), not three times.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

#[test]
fn the_module_exports_only_what_the_filter_uses() {
    let module = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/wasm32-wasip1/release/ksit_filter.wasm");
    assert!(
        module.exists(),
        "{} is missing: run `make wasm`",
        module.display()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_ksit-wasm-exports"))
        .arg("list")
        .arg(&module)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exports: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    let want = [
        "_initialize",
        "memory",
        "proxy_abi_version_0_2_1",
        "proxy_on_configure",
        "proxy_on_delete",
        "proxy_on_memory_allocate",
        "proxy_on_request_headers",
        "proxy_on_tick",
        "proxy_on_vm_start",
    ];
    assert_eq!(
        exports, want,
        "run `make wasm`: its post-link step strips unused callbacks"
    );
}
