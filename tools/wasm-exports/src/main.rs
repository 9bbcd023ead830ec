//! `ksit-wasm-exports strip IN OUT` keeps only the exports the filter needs; `list FILE` prints them.
//!
//! Envoy calls every callback a module exports, and each call into the VM costs about a microsecond. The
//! proxy-wasm SDK exports all of them (response headers, bodies, trailers, network callbacks…) through its
//! dispatcher, which also needs a context created for every stream. The filter brings its own
//! entry points (`ksit_on_*`, see filter/src/glue.rs); this step exports them under their proxy-wasm names
//! in place of the SDK's, drops every other callback, and lets unreachable code go with them.

use std::process::ExitCode;

/// Exports kept as they are: VM and memory plumbing from the SDK and the toolchain.
pub const KEEP: [&str; 5] = [
    "memory",
    "_initialize",
    "malloc",
    "proxy_on_memory_allocate",
    "proxy_abi_version_0_2_1",
];

/// The filter's entry points, the names Envoy calls them by, and their signatures (number of i32
/// parameters, number of i32 results); all must be present.
pub const RENAME: [(&str, &str, usize, usize); 5] = [
    ("ksit_on_vm_start", "proxy_on_vm_start", 2, 1),
    ("ksit_on_configure", "proxy_on_configure", 2, 1),
    ("ksit_on_tick", "proxy_on_tick", 1, 0),
    ("ksit_on_request_headers", "proxy_on_request_headers", 3, 1),
    ("ksit_on_delete", "proxy_on_delete", 1, 0),
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
    for (from, _, params, results) in RENAME {
        let Some(walrus::ExportItem::Function(f)) =
            m.exports.iter().find(|e| e.name == from).map(|e| e.item)
        else {
            anyhow::bail!("{input} does not export a function {from}: is it the ksit filter?");
        };
        let ty = m.types.get(m.funcs.get(f).ty());
        let all_i32 = |v: &[walrus::ValType]| v.iter().all(|t| *t == walrus::ValType::I32);
        anyhow::ensure!(
            ty.params().len() == params
                && ty.results().len() == results
                && all_i32(ty.params())
                && all_i32(ty.results()),
            "{from} has type {:?} -> {:?}; Envoy calls it with {params} i32 argument(s) and {results} i32 result(s)",
            ty.params(),
            ty.results()
        );
    }
    let drop: Vec<(walrus::ExportId, String)> = m
        .exports
        .iter()
        .filter(|e| !KEEP.contains(&e.name.as_str()) && !RENAME.iter().any(|r| r.0 == e.name))
        .map(|e| (e.id(), e.name.clone()))
        .collect();
    for (id, _) in &drop {
        m.exports.delete(*id);
    }
    for e in m.exports.iter_mut() {
        if let Some(r) = RENAME.iter().find(|r| r.0 == e.name) {
            e.name = r.1.to_string();
        }
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
