//! `ksit`: the ksit-mesh controller and command-line tool.

use clap::{Parser, Subcommand};
use ksit_controller::{desired, manifests, module::ModuleArgs, resources};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "ksit", version, about = "Traffic policy for multi-cluster Istio meshes", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions ksit serves (TrafficPolicy, BindingPolicy, IntegrationTarget,
    /// Integration), generated from its Rust types.
    Crds,
    /// Render what every bound cluster should hold from hub YAML, offline (for GitOps and dry runs).
    ///
    /// Reads TrafficPolicies, BindingPolicies, IntegrationTargets (they stand for the clusters, with their
    /// labels) and the Istio objects to distribute; writes DIR/<cluster>.yaml per bound cluster, with exactly
    /// the objects the controller would apply there.
    Render {
        /// Files or directories of hub YAML.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Output directory.
        #[arg(short = 'o', long = "output-dir", default_value = "rendered")]
        out: PathBuf,
        #[command(flatten)]
        module: ModuleArgs,
    },
    /// Run the controller against the hub in the current kubeconfig context.
    Controller(Box<ksit_controller::controller::ControllerArgs>),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crds => {
            print!("{}", resources::crds_yaml());
            Ok(())
        }
        Command::Render { files, out, module } => render(&files, &out, &module),
        Command::Controller(args) => ksit_controller::controller::run(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn render(files: &[PathBuf], out: &std::path::Path, module: &ModuleArgs) -> anyhow::Result<()> {
    let docs = manifests::read_documents(files)?;
    let hub = manifests::hub_from_documents(&docs)?;
    if hub.clusters.is_empty() {
        anyhow::bail!("no IntegrationTarget found: add one per cluster (its spec.labels are what BindingPolicies select)");
    }
    let (_, settings) = module.settings()?;
    let d = desired::compute(&hub, &settings);
    std::fs::create_dir_all(out)?;
    for (cluster, cd) in &d.clusters {
        let path = out.join(format!("{cluster}.yaml"));
        if cd.objects.is_empty() {
            println!("{cluster}: bound by no BindingPolicy, nothing to render");
            let _ = std::fs::remove_file(&path);
            continue;
        }
        std::fs::write(&path, desired::to_yaml(&cd.objects))?;
        println!(
            "{cluster}: {} object(s) -> {}",
            cd.objects.len(),
            path.display()
        );
    }
    for n in &d.notes {
        println!("warning: {}: {}: {}", n.cluster, n.object, n.message);
    }
    Ok(())
}
