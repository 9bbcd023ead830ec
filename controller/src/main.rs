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
    /// the objects the controller would apply there. With --single, writes the WasmPlugins and
    /// VirtualServices the TrafficPolicies render, the same for every cluster, once to DIR/ksit.yaml, for a
    /// GitOps tool (Argo CD, Flux) or KubeStellar to deliver.
    Render {
        /// Files or directories of hub YAML.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Output directory.
        #[arg(short = 'o', long = "output-dir", default_value = "rendered")]
        out: PathBuf,
        /// Write the rendered WasmPlugins and VirtualServices once, for every cluster (DIR/ksit.yaml).
        #[arg(long, conflicts_with = "per_cluster_rendering")]
        single: bool,
        #[command(flatten)]
        module: ModuleArgs,
    },
    /// Check KSIT, KubeStellar, Istio and ksit YAML before applying it, like `istioctl analyze`.
    ///
    /// Finds, among others: a namespace on a cluster-scoped BindingPolicy, fields the schema does not declare
    /// (`upsync`), deprecated `consecutiveErrors`, older API versions, bad weights, percentages, regexes and
    /// durations, rules shadowed by an earlier rule, subsets no DestinationRule defines, VirtualServices that
    /// clash with a TrafficPolicy's, BindingPolicies that select no cluster and TrafficPolicies sent nowhere.
    /// Exit status 1 when there is an error, 0 when there are only warnings.
    Analyze {
        /// Files or directories of YAML.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// `text` (default) or `json`.
        #[arg(short = 'o', long = "output", default_value = "text")]
        output: String,
        /// CRD files to check other kinds' fields against (e.g. Istio's CRDs).
        #[arg(long = "schemas")]
        schemas: Vec<PathBuf>,
    },
    /// Run one request (or many) through the same engine as the filter and say what it decides and why.
    ///
    /// FILE holds a TrafficPolicy or an Istio VirtualService (its spec.hosts and spec.http are read by the
    /// same engine). The decision is reproducible: x-request-id (or the sticky header) decides the bucket and
    /// the fault rolls, exactly as in Envoy.
    Explain(Box<ExplainArgs>),
    /// Run the controller against the hub in the current kubeconfig context.
    Controller(Box<ksit_controller::controller::ControllerArgs>),
}

#[derive(clap::Args)]
struct ExplainArgs {
    /// A file with a TrafficPolicy or a VirtualService.
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// Which object, when the file holds several (metadata.name).
    #[arg(long)]
    name: Option<String>,
    #[arg(long, default_value = "GET")]
    method: String,
    #[arg(long, default_value = "/")]
    path: String,
    /// The Host/:authority (default: the policy's first non-wildcard host).
    #[arg(long)]
    authority: Option<String>,
    /// A request header, `name: value`; repeat.
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Resolve the policy's per-cluster overrides for this cluster.
    #[arg(long)]
    cluster: Option<String>,
    /// As `ksit controller --stable-by-default-route` renders it: requests to a rule's stable destination
    /// are left unmarked.
    #[arg(long)]
    stable_by_default_route: bool,
    /// `text` (default) or `json`.
    #[arg(short = 'o', long = "output", default_value = "text")]
    output: String,
    /// Read requests from a JSON-lines file (`method`, `path`, `authority`, `headers`), or from standard
    /// input with `-`; write one JSON decision per line.
    #[arg(long)]
    requests: Option<PathBuf>,
}

fn explain(a: &ExplainArgs) -> anyhow::Result<()> {
    use ksit_controller::explain;
    let docs: Vec<_> = manifests::read_documents(std::slice::from_ref(&a.file))?
        .into_iter()
        .filter(|d| matches!(d.kind(), "TrafficPolicy" | "VirtualService"))
        .filter(|d| a.name.as_deref().is_none_or(|n| d.name() == n))
        .collect();
    let doc = match docs.as_slice() {
        [d] => d,
        [] => anyhow::bail!(
            "{}: no TrafficPolicy or VirtualService{}",
            a.file.display(),
            a.name
                .as_ref()
                .map(|n| format!(" named {n}"))
                .unwrap_or_default()
        ),
        many => anyhow::bail!(
            "{} holds several policies; choose one with --name ({})",
            a.file.display(),
            many.iter()
                .map(|d| d.describe())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let x = explain::engine_for(doc, a.cluster.as_deref(), a.stable_by_default_route)?;
    let default_authority = doc.value["spec"]["hosts"]
        .as_array()
        .and_then(|h| {
            h.iter()
                .filter_map(|x| x.as_str())
                .find(|h| !h.contains('*'))
        })
        .unwrap_or("")
        .to_string();
    let entropy = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7);
    if let Some(path) = &a.requests {
        let stdin = path.as_os_str() == "-";
        let shown = if stdin {
            "standard input".to_string()
        } else {
            path.display().to_string()
        };
        let input: Box<dyn std::io::BufRead> = if stdin {
            Box::new(std::io::stdin().lock())
        } else {
            let f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{shown}: {e}"))?;
            Box::new(std::io::BufReader::new(f))
        };
        // Line by line, so a long stream is answered as it comes.
        for (i, line) in std::io::BufRead::lines(input).enumerate() {
            let line = line.map_err(|e| anyhow::anyhow!("{shown}: {e}"))?;
            if line.trim().is_empty() {
                continue;
            }
            let mut req: explain::ExplainRequest = serde_json::from_str(&line)
                .map_err(|e| anyhow::anyhow!("{shown}:{}: {e}", i + 1))?;
            if req.authority.is_empty() {
                req.authority = default_authority.clone();
            }
            let v = explain::decide(&x, &req, entropy.wrapping_add(i as u64));
            emit(&format!("{v}\n"));
        }
        return Ok(());
    }
    let mut req = explain::ExplainRequest {
        method: a.method.clone(),
        path: a.path.clone(),
        authority: a.authority.clone().unwrap_or(default_authority),
        headers: Default::default(),
    };
    for h in &a.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("-H {h:?}: write 'name: value'"))?;
        req.headers
            .insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let v = explain::decide(&x, &req, entropy);
    if a.output == "json" {
        emit(&format!("{v}\n"));
    } else {
        let mut text = explain::human(&req, a.cluster.as_deref(), &v);
        for n in &x.notes {
            text.push_str(&format!("note        {n}\n"));
        }
        emit(&text);
    }
    Ok(())
}

/// Writes to standard output. When the reader has gone (`ksit explain ... | head -1`), the command ends
/// quietly with status 0, as a reader that stops early means it has what it wanted; any other write error
/// ends it with status 1.
fn emit(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to standard output: {e}");
        std::process::exit(1);
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crds => {
            emit(&resources::crds_yaml());
            Ok(())
        }
        Command::Render {
            files,
            out,
            single,
            module,
        } => render(&files, &out, single, &module),
        Command::Explain(a) => explain(&a),
        Command::Analyze {
            files,
            output,
            schemas,
        } => match ksit_controller::analyze::analyze(&files, &schemas) {
            Ok(findings) => {
                if output == "json" {
                    emit(&format!(
                        "{}\n",
                        serde_json::to_string_pretty(&findings).unwrap_or_default()
                    ));
                } else {
                    emit(&ksit_controller::analyze::human(&findings));
                }
                if findings
                    .iter()
                    .any(|f| f.severity == ksit_controller::analyze::Severity::Error)
                {
                    return ExitCode::from(1);
                }
                Ok(())
            }
            Err(e) => Err(e),
        },
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

fn render(
    files: &[PathBuf],
    out: &std::path::Path,
    single: bool,
    module: &ModuleArgs,
) -> anyhow::Result<()> {
    let docs = manifests::read_documents(files)?;
    let hub = manifests::hub_from_documents(&docs)?;
    if hub.clusters.is_empty() {
        anyhow::bail!("no IntegrationTarget found: add one per cluster (its spec.labels are what BindingPolicies select)");
    }
    let (_, settings) = module.settings()?;
    let d = desired::compute(&hub, &settings);
    std::fs::create_dir_all(out)?;
    if single {
        let objects = desired::rendered_for_every_cluster(&d)?;
        let path = out.join("ksit.yaml");
        std::fs::write(&path, desired::to_yaml(&objects))?;
        emit(&format!(
            "every bound cluster: {} object(s) -> {}\n",
            objects.len(),
            path.display()
        ));
    } else {
        for (cluster, cd) in &d.clusters {
            let path = out.join(format!("{cluster}.yaml"));
            if cd.objects.is_empty() {
                emit(&format!(
                    "{cluster}: bound by no BindingPolicy, nothing to render\n"
                ));
                let _ = std::fs::remove_file(&path);
                continue;
            }
            std::fs::write(&path, desired::to_yaml(&cd.objects))?;
            emit(&format!(
                "{cluster}: {} object(s) -> {}\n",
                cd.objects.len(),
                path.display()
            ));
        }
    }
    for n in &d.notes {
        emit(&format!(
            "warning: {}: {}: {}\n",
            n.cluster, n.object, n.message
        ));
    }
    Ok(())
}
