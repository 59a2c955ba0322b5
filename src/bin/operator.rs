//! tokenbudget-operator: runs the TokenBudget and BudgetBinding controllers.

use std::{
    io::IsTerminal,
    net::SocketAddr,
    process::ExitCode,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures::StreamExt;
use kube::{Api, Client, Config, core::DeserializeGuard, runtime::events::Reporter};
use tokenbudget::controller::accounting::api;
use tokenbudget::{
    api::{BudgetBinding, TokenBudget},
    clock::SystemClock,
    controller::{self, Accounting, Context},
    http::{self, Endpoints},
    metrics::Metrics,
    usage::scrape::{self, ScrapeCa, Scraper},
};
use tokio::sync::watch;
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

struct Options {
    bind_address: SocketAddr,
    namespace: Option<String>,
    max_concurrent_scrapes: usize,
    max_body_bytes: usize,
    scrape_ca_file: Option<std::path::PathBuf>,
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        bind_address: ([0, 0, 0, 0], 8080).into(),
        namespace: None,
        max_concurrent_scrapes: scrape::DEFAULT_MAX_CONCURRENT,
        max_body_bytes: scrape::DEFAULT_MAX_BODY_BYTES,
        scrape_ca_file: None,
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
            "--scrape-ca-file" => options.scrape_ca_file = Some(value()?.into()),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    Ok(options)
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
    let options = parse_args()?;
    let config = Config::infer()
        .await
        .map_err(|e| format!("no Kubernetes configuration: {e}"))?;
    let scrape_ca = ScrapeCa::discover(
        options.scrape_ca_file.as_deref(),
        std::path::Path::new(scrape::SERVICE_ACCOUNT_CA),
        config.root_cert.as_deref(),
    )?;
    match &scrape_ca {
        Some(ca) => tracing::info!(ca = ca.source(), "https scrapes verify pod certificates"),
        None => tracing::warn!("no CA for https scrapes: only bindings with insecureSkipVerify can scrape over https"),
    }
    let client = Client::try_from(config).map_err(|e| format!("no Kubernetes configuration: {e}"))?;
    let ns = options.namespace.as_deref();
    controller::check_crds(&api(&client, ns), &api(&client, ns)).await?;
    let budgets: Api<DeserializeGuard<TokenBudget>> = api(&client, ns);
    let bindings: Api<DeserializeGuard<BudgetBinding>> = api(&client, ns);

    let metrics = Metrics::new();
    let endpoints = Endpoints {
        metrics: metrics.clone(),
        ready: Default::default(),
    };
    let listener = http::bind(options.bind_address)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", options.bind_address))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(address = %local, namespace = ns.unwrap_or("<all>"), "tokenbudget-operator starting");

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });

    let reporter = Reporter {
        controller: controller::FIELD_MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let binding_controller = controller::binding::controller(bindings.clone(), budgets.clone());
    let (deleted_tx, mut deleted_rx) = futures::channel::mpsc::unbounded::<String>();
    let budget_controller = controller::budget::controller(budgets.clone(), deleted_tx);
    let (budget_store, binding_store) = (budget_controller.store(), binding_controller.store());

    // Accounting reads pods and workloads from reflector stores; a pod that starts terminating
    // wakes its budgets at once so that its last tokens count.
    let (terminating_tx, terminating_rx) = futures::channel::mpsc::unbounded();
    let cron_jobs_served = controller::accounting::cron_jobs_served(&client, ns).await;
    let (cluster, cluster_driver) =
        controller::accounting::Cluster::start(cron_jobs_served, &client, ns, binding_store.clone(), terminating_tx);
    let trigger_cluster = cluster.clone();
    let terminating = terminating_rx.flat_map(move |pod| futures::stream::iter(trigger_cluster.budgets_for_pod(&pod)));
    let budget_controller = controller::budget::watch_bindings(budget_controller, bindings).reconcile_on(terminating);
    let (wake_tx, wake_rx) = futures::channel::mpsc::unbounded();
    let binding_controller = binding_controller.reconcile_on(wake_rx);
    let accounting = Accounting {
        cluster,
        scraper: Scraper::new(options.max_concurrent_scrapes, options.max_body_bytes).with_ca(scrape_ca),
        accounts: Default::default(),
        budgets: budget_store.clone(),
        binding_usage: Default::default(),
        wake_bindings: wake_tx,
    };
    let ctx =
        Arc::new(Context::new(client.clone(), metrics, Arc::new(SystemClock), reporter).with_accounting(accounting));
    tokio::spawn(cluster_driver);
    let forget_ctx = ctx.clone();
    tokio::spawn(async move {
        while let Some(key) = deleted_rx.next().await {
            if let Some(accounting) = &forget_ctx.accounting {
                accounting.forget_budget(&key, &forget_ctx.metrics);
            }
        }
    });
    let ready = endpoints.ready.clone();
    tokio::spawn(async move {
        // Re-poll: a store's readiness signal wakes only its most recent waiter, and the
        // controllers wait on the same stores.
        let synced = || async {
            budget_store.wait_until_ready().await.is_ok() && binding_store.wait_until_ready().await.is_ok()
        };
        loop {
            match tokio::time::timeout(Duration::from_millis(250), synced()).await {
                Ok(true) => {
                    ready.store(true, Ordering::Relaxed);
                    tracing::info!("caches synced, ready");
                    return;
                }
                Ok(false) => return,
                Err(_) => continue,
            }
        }
    });

    tokio::join!(
        http::serve(listener, endpoints, stopped()),
        controller::budget::run(budget_controller, ctx.clone(), stopped()),
        controller::binding::run(binding_controller, ctx, stopped()),
    );
    tracing::info!("stopped");
    Ok(())
}
