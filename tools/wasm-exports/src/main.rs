//! `ksit-wasm-exports strip IN OUT` keeps only the exports the filter needs; `list FILE` prints them.
//!
//! Envoy calls every callback a module exports, and each call into the VM costs about a microsecond. The
//! proxy-wasm SDK exports all of them (response headers, bodies, trailers, network callbacks…), so the
//! module is cut down to what the filter uses after linking; unreachable code goes with them.

use std::process::ExitCode;

/// What Envoy needs from the ksit filter: VM and memory plumbing, the root context's configure and tick, and
/// the HTTP context's request headers and end of life (so paused requests are released).
pub const KEEP: [&str; 11] = [
    "memory",
    "_initialize",
    "malloc",
    "proxy_on_memory_allocate",
    "proxy_abi_version_0_2_1",
    "proxy_on_context_create",
    "proxy_on_vm_start",
    "proxy_on_configure",
    "proxy_on_tick",
    "proxy_on_request_headers",
    "proxy_on_delete",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["strip", input, output] => strip(input, output),
        ["list", input] => list(input),
        _ => Err(anyhow::anyhow!(
            "usage: ksit-wasm-exports strip IN.wasm OUT.wasm | list FILE.wasm"
        )),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn list(input: &str) -> anyhow::Result<()> {
    let m = walrus::Module::from_file(input)?;
    let mut names: Vec<&str> = m.exports.iter().map(|e| e.name.as_str()).collect();
    names.sort_unstable();
    for n in names {
        println!("{n}");
    }
    Ok(())
}

fn strip(input: &str, output: &str) -> anyhow::Result<()> {
    let mut m = walrus::Module::from_file(input)?;
    let drop: Vec<(walrus::ExportId, String)> = m
        .exports
        .iter()
        .filter(|e| !KEEP.contains(&e.name.as_str()))
        .map(|e| (e.id(), e.name.clone()))
        .collect();
    for (id, _) in &drop {
        m.exports.delete(*id);
    }
    walrus::passes::gc::run(&mut m);
    let before = std::fs::metadata(input)?.len();
    let bytes = m.emit_wasm();
    std::fs::write(output, &bytes)?;
    eprintln!(
        "kept {} exports, dropped {} ({}); {before} -> {} bytes",
        m.exports.iter().count(),
        drop.len(),
        drop.iter()
            .map(|(_, n)| n.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        bytes.len()
    );
    Ok(())
}
