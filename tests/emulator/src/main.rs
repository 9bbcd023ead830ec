//! `ksit-emulator`: starts one in-memory Kubernetes API emulator per cluster in this process, writes a
//! kubeconfig for each, and serves until SIGINT or SIGTERM (for demos and manual use).

use clap::Parser;
use ksit_emulator::Emulator;
use std::path::PathBuf;

/// Starts in-memory Kubernetes API emulators on 127.0.0.1, one per --cluster, and writes
/// DIR/NAME.kubeconfig for each, with the CRDs of every --crds file registered (Istio's:
/// `--crds $(tests/kube/build.sh istio)/crd-all.gen.yaml`; ksit's: `ksit crds > ksit.yaml`).
/// Prints one line per cluster: NAME URL KUBECONFIG. Runs until interrupted (SIGINT or SIGTERM).
#[derive(Parser, Debug)]
#[command(name = "ksit-emulator", version)]
struct Args {
    /// A cluster to emulate: NAME, or NAME=PORT for a fixed port (default: a free one).
    #[arg(long = "cluster", value_name = "NAME[=PORT]", required = true)]
    clusters: Vec<String>,
    /// Where to write the kubeconfigs.
    #[arg(long, value_name = "DIR", default_value = ".")]
    dir: PathBuf,
    /// A YAML file of CustomResourceDefinitions to register in every cluster (repeatable).
    #[arg(long = "crds", value_name = "PATH")]
    crds: Vec<PathBuf>,
}

fn parse_cluster(c: &str) -> anyhow::Result<(String, u16)> {
    let (name, port) = match c.split_once('=') {
        Some((n, p)) => (
            n,
            p.parse::<u16>()
                .map_err(|e| anyhow::anyhow!("--cluster {c}: bad port: {e}"))?,
        ),
        None => (c, 0),
    };
    if name.is_empty() {
        anyhow::bail!("--cluster {c}: empty name");
    }
    Ok((name.to_string(), port))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)?;
    let crds: Vec<(PathBuf, String)> = args
        .crds
        .iter()
        .map(|f| Ok((f.clone(), std::fs::read_to_string(f)?)))
        .collect::<std::io::Result<_>>()?;
    let mut running = Vec::new();
    for c in &args.clusters {
        let (name, port) = parse_cluster(c)?;
        let e = Emulator::start_on(&name, ([127, 0, 0, 1], port).into()).await?;
        for (f, text) in &crds {
            e.load_crds_yaml(text)
                .map_err(|err| anyhow::anyhow!("{}: {err}", f.display()))?;
        }
        let path = args.dir.join(format!("{name}.kubeconfig"));
        e.write_kubeconfig(&path)?;
        println!("{name} {} {}", e.url(), path.display());
        running.push(e);
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    for e in &running {
        e.shutdown();
    }
    Ok(())
}
