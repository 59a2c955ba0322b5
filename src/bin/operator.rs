//! tokenbudget-operator: runs the TokenBudget and BudgetBinding controllers.

use std::{io::IsTerminal, process::ExitCode, sync::Arc};

use kube::{Client, Config};
use tokenbudget::{
    clock::SystemClock,
    controller::run::{self, Options},
    usage::scrape::{self, ScrapeCa},
};
use tracing_subscriber::EnvFilter;

const USAGE: &str = "\
tokenbudget-operator: caps the LLM tokens that Kubernetes workloads spend

USAGE: tokenbudget-operator [--bind-address ADDR] [--namespace NS] [--scrape-ca-file PATH]

  --bind-address ADDR  where /healthz, /readyz and /metrics are served (default 0.0.0.0:8080)
  --namespace NS       watch only this namespace (default: all namespaces)
  --max-concurrent-scrapes N   scrapes in flight at once, over all pods (default 64)
  --max-body-bytes N   largest metrics body read from a pod (default 16 MiB)
  --scrape-ca-file PATH  PEM CA bundle that pods' certificates are verified against when a
                       binding scrapes over https (default: in a cluster the service
                       account's ca.crt, otherwise the kubeconfig cluster's CA)

The cluster is the one of KUBECONFIG (or ~/.kube/config), or the in-cluster service account.
Log level and filters: RUST_LOG (default info); LOG_FORMAT=json for JSON logs.";

fn parse_args() -> Result<(Options, Option<std::path::PathBuf>), String> {
    let mut scrape_ca_file = None;
    let mut options = Options {
        instance: std::env::var("POD_NAME").ok(),
        ..Options::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or(format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--bind-address" => {
                let v = value()?;
                options.bind_address = v.parse().map_err(|e| format!("--bind-address {v:?}: {e}"))?;
            }
            "--namespace" => options.namespace = Some(value()?),
            "--max-concurrent-scrapes" => {
                let v = value()?;
                options.max_concurrent_scrapes =
                    v.parse().map_err(|e| format!("--max-concurrent-scrapes {v:?}: {e}"))?;
            }
            "--max-body-bytes" => {
                let v = value()?;
                options.max_body_bytes = v.parse().map_err(|e| format!("--max-body-bytes {v:?}: {e}"))?;
            }
            "--scrape-ca-file" => scrape_ca_file = Some(value()?.into()),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    Ok((options, scrape_ca_file))
}

fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received, shutting down"),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokenbudget-operator: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let (mut options, scrape_ca_file) = parse_args()?;
    let config = Config::infer()
        .await
        .map_err(|e| format!("no Kubernetes configuration: {e}"))?;
    options.scrape_ca = ScrapeCa::discover(
        scrape_ca_file.as_deref(),
        std::path::Path::new(scrape::SERVICE_ACCOUNT_CA),
        config.root_cert.as_deref(),
    )?;
    match &options.scrape_ca {
        Some(ca) => tracing::info!(ca = ca.source(), "https scrapes verify pod certificates"),
        None => tracing::warn!("no CA for https scrapes: only bindings with insecureSkipVerify can scrape over https"),
    }
    let client = Client::try_from(config).map_err(|e| format!("no Kubernetes configuration: {e}"))?;
    run::run(client, options, Arc::new(SystemClock), shutdown_signal()).await
}
