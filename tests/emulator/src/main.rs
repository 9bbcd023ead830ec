//! `ksit-emulator`: starts emulated clusters and writes a kubeconfig for each (for demos and manual use).

use ksit_emulator::Emulator;
use std::path::PathBuf;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut clusters = Vec::new();
    let mut dir = PathBuf::from(".");
    let mut crds = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--cluster" => clusters.push(
                args.next()
                    .ok_or_else(|| anyhow::anyhow!("--cluster NAME[=PORT]"))?,
            ),
            "--dir" => {
                dir = PathBuf::from(args.next().ok_or_else(|| anyhow::anyhow!("--dir DIR"))?)
            }
            "--crds" => crds.push(PathBuf::from(
                args.next().ok_or_else(|| anyhow::anyhow!("--crds FILE"))?,
            )),
            "-h" | "--help" => {
                println!("ksit-emulator --cluster NAME[=PORT]... [--dir DIR] [--crds FILE]...\n\nStarts one in-memory Kubernetes API emulator per cluster on 127.0.0.1 and writes DIR/NAME.kubeconfig.\nLoads the CRDs of ../shared/schemas when present, and every --crds file. Runs until interrupted.");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other}; see --help"),
        }
    }
    if clusters.is_empty() {
        anyhow::bail!("name at least one --cluster");
    }
    std::fs::create_dir_all(&dir)?;
    let mut running = Vec::new();
    for c in clusters {
        let (name, port) = match c.split_once('=') {
            Some((n, p)) => (n.to_string(), p.parse::<u16>()?),
            None => (c.clone(), 0),
        };
        let e = Emulator::start_on(&name, ([127, 0, 0, 1], port).into()).await?;
        e.load_shared_crds()?;
        for f in &crds {
            e.load_crds_yaml(&std::fs::read_to_string(f)?)?;
        }
        let path = dir.join(format!("{name}.kubeconfig"));
        e.write_kubeconfig(&path)?;
        println!("{name}: {} (kubeconfig {})", e.url(), path.display());
        running.push(e);
    }
    tokio::signal::ctrl_c().await?;
    Ok(())
}
