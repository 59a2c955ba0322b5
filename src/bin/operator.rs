//! tokenbudget-operator: runs the TokenBudget and BudgetBinding controllers, or, with
//! `release`, undoes what they enforced before an uninstall.

use std::{io::IsTerminal, process::ExitCode, sync::Arc};

use clap::Parser;
use kube::{Client, Config};
use tokenbudget::{
    clock::SystemClock,
    controller::{
        cli::{Cli, Command},
        prometheus::{Prometheus, PrometheusConfig},
        release::{self, ReleaseArgs},
        run,
    },
    usage::scrape::{self, ScrapeCa},
};
use tracing_subscriber::EnvFilter;

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
    // Help, --version and bad flags end here, before any logging.
    let cli = Cli::parse();
    init_tracing();
    let outcome = match cli.command {
        Some(Command::Release(args)) => release(args).await,
        None => run(cli).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokenbudget-operator: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `tokenbudget-operator release`: one line per budget released, and a summary.
async fn release(args: ReleaseArgs) -> Result<(), String> {
    let mut options = args.options();
    options.instance = std::env::var("POD_NAME").ok();
    let client = Client::try_default()
        .await
        .map_err(|e| format!("no Kubernetes configuration: {e}"))?;
    let released = release::release(client, options, Arc::new(SystemClock))
        .await
        .map_err(|e| format!("release: {e}"))?;
    if released.no_crds {
        return Ok(());
    }
    tracing::info!(
        budgets = released.budgets.len(),
        workloads = released.restored.len(),
        "released: every budget's workloads restored and finalizer removed; the budgets stay"
    );
    Ok(())
}

async fn run(cli: Cli) -> Result<(), String> {
    let mut options = cli.options();
    options.instance = std::env::var("POD_NAME").ok();
    let config = Config::infer()
        .await
        .map_err(|e| format!("no Kubernetes configuration: {e}"))?;
    options.scrape_ca = ScrapeCa::discover(
        cli.scrape_ca_file.as_deref(),
        std::path::Path::new(scrape::SERVICE_ACCOUNT_CA),
        config.root_cert.as_deref(),
    )
    .map_err(|e| e.to_string())?;
    match &options.scrape_ca {
        Some(ca) => tracing::info!(ca = ca.source(), "https scrapes verify pod certificates"),
        None => tracing::warn!("no CA for https scrapes: only bindings with insecureSkipVerify can scrape over https"),
    }
    if let Some(url) = &cli.prometheus_url {
        let ca = match &cli.prometheus_ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| format!("--prometheus-ca-file {}: {e}", path.display()))
                    .and_then(|pem| {
                        ScrapeCa::from_pem(&pem, format!("--prometheus-ca-file {}", path.display()))
                            .map_err(|e| e.to_string())
                    })?,
            ),
            None => None,
        };
        let config = PrometheusConfig {
            url: url.clone(),
            bearer_token_file: cli.prometheus_bearer_token_file.clone(),
            ca,
            lookback: cli.prometheus_lookback,
        };
        let prometheus = Prometheus::new(&config, cli.max_body_bytes)?;
        tracing::info!(url = %prometheus.query_url(), "bindings with metrics.source Prometheus query it");
        options.prometheus = Some(prometheus);
    }
    let client = Client::try_from(config).map_err(|e| format!("no Kubernetes configuration: {e}"))?;
    run::run(client, options, Arc::new(SystemClock), shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    //! The `TOKENBUDGET_*` variables. Here and not with the other tests of the flags
    //! (`tokenbudget::controller::cli`): setting a variable needs `unsafe`, which the library
    //! forbids. One test, so that no other test of this binary sees them set.

    use clap::{Parser, error::ErrorKind};
    use tokenbudget::controller::cli::Cli;

    const VARS: [(&str, &str); 12] = [
        ("TOKENBUDGET_BIND_ADDRESS", "127.0.0.1:9090"),
        ("TOKENBUDGET_NAMESPACE", "agents"),
        ("TOKENBUDGET_MAX_CONCURRENT_SCRAPES", "8"),
        ("TOKENBUDGET_MAX_CONCURRENT_SCRAPES_PER_NAMESPACE", "2"),
        ("TOKENBUDGET_MAX_BODY_BYTES", "1024"),
        ("TOKENBUDGET_SCRAPE_CA_FILE", "/etc/ca.pem"),
        ("TOKENBUDGET_PROMETHEUS_URL", "http://prometheus:9090"),
        ("TOKENBUDGET_PROMETHEUS_BEARER_TOKEN_FILE", "/var/run/token"),
        ("TOKENBUDGET_PROMETHEUS_CA_FILE", "/etc/prometheus-ca.pem"),
        ("TOKENBUDGET_PROMETHEUS_LOOKBACK", "90s"),
        // Empty: the agent API off.
        ("TOKENBUDGET_AGENT_API_BIND_ADDRESS", ""),
        ("TOKENBUDGET_AGENT_API_AUDIENCE", "agents.example.com"),
    ];

    fn set(name: &str, value: Option<&str>) {
        // SAFETY: the only test of this binary, so no other thread reads the environment.
        unsafe {
            match value {
                Some(v) => std::env::set_var(name, v),
                None => std::env::remove_var(name),
            }
        }
    }

    #[test]
    fn each_flag_falls_back_to_its_variable_and_the_flag_wins() {
        for (name, value) in VARS {
            set(name, Some(value));
        }
        let cli = Cli::try_parse_from(["tokenbudget-operator"]).unwrap();
        assert_eq!(cli.bind_address, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(cli.namespace.as_deref(), Some("agents"));
        assert_eq!(cli.max_concurrent_scrapes, 8);
        assert_eq!(cli.max_concurrent_scrapes_per_namespace, Some(2));
        assert_eq!(cli.max_body_bytes, 1024);
        assert_eq!(cli.scrape_ca_file, Some("/etc/ca.pem".into()));
        assert_eq!(cli.prometheus_url.as_deref(), Some("http://prometheus:9090"));
        assert_eq!(cli.prometheus_bearer_token_file, Some("/var/run/token".into()));
        assert_eq!(cli.prometheus_ca_file, Some("/etc/prometheus-ca.pem".into()));
        assert_eq!(cli.prometheus_lookback, std::time::Duration::from_secs(90));
        assert_eq!(cli.agent_api_bind_address, None);
        assert_eq!(cli.agent_api_audience, "agents.example.com");

        let cli =
            Cli::try_parse_from(["tokenbudget-operator", "--namespace=other", "--max-body-bytes", "2048"]).unwrap();
        assert_eq!(cli.namespace.as_deref(), Some("other"));
        assert_eq!(cli.max_body_bytes, 2048);
        assert_eq!(cli.max_concurrent_scrapes, 8);

        // A bad value in a variable is named like a bad flag.
        set("TOKENBUDGET_MAX_CONCURRENT_SCRAPES", Some("lots"));
        let err = Cli::try_parse_from(["tokenbudget-operator"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        assert!(
            err.to_string()
                .starts_with("error: invalid value 'lots' for '--max-concurrent-scrapes <N>'"),
            "{err}"
        );

        // An empty variable is refused like an empty flag, not taken for "all namespaces".
        set("TOKENBUDGET_MAX_CONCURRENT_SCRAPES", None);
        set("TOKENBUDGET_NAMESPACE", Some(""));
        let err = Cli::try_parse_from(["tokenbudget-operator"]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("error: a value is required for '--namespace <NS>' but none was supplied"),
            "{err}"
        );
        set("TOKENBUDGET_NAMESPACE", None);
        set("TOKENBUDGET_SCRAPE_CA_FILE", Some(""));
        let err = Cli::try_parse_from(["tokenbudget-operator"]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("error: a value is required for '--scrape-ca-file <PATH>' but none was supplied"),
            "{err}"
        );

        for (name, _) in VARS {
            set(name, None);
        }
        let cli = Cli::try_parse_from(["tokenbudget-operator"]).unwrap();
        assert_eq!(cli.options().bind_address, "0.0.0.0:8080".parse().unwrap());
    }
}
