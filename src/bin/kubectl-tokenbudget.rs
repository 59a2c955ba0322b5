//! kubectl-tokenbudget: the `kubectl tokenbudget` plugin. Copied onto PATH under this name,
//! kubectl runs it for `kubectl tokenbudget ...`. It only reads TokenBudgets; the views are
//! rendered by `tokenbudget::plugin::render`.

use std::{
    io::{IsTerminal, Write},
    process::ExitCode,
    time::Duration,
};

use kube::{
    Api, Client, Config, ResourceExt,
    api::ListParams,
    config::{KubeConfigOptions, Kubeconfig},
    core::DeserializeGuard,
};
use tokenbudget::{
    api::TokenBudget,
    plugin::{
        self, Command, Invocation, Scope, parse_args,
        render::{self, Listing, Options, Rendered},
    },
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let invocation = match parse_args(std::env::args_os().skip(1)) {
        Ok(i) => i,
        // --help and --version.
        Err(answer) if !answer.use_stderr() => {
            let _ = std::io::stdout().lock().write_all(answer.to_string().as_bytes());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {} (see kubectl tokenbudget --help)", plugin::one_line(&e));
            return ExitCode::FAILURE;
        }
    };
    let result = match invocation.command {
        Command::Help => Ok(Rendered {
            stdout: plugin::help(),
            stderr: String::new(),
        }),
        Command::Version => Ok(Rendered {
            stdout: format!("{} {}\n", plugin::BINARY, env!("CARGO_PKG_VERSION")),
            stderr: String::new(),
        }),
        Command::Completion(shell) => Ok(Rendered {
            stdout: plugin::completion(shell),
            stderr: String::new(),
        }),
        _ => run(&invocation).await,
    };
    match result {
        Ok(out) => {
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = std::io::stdout().lock().write_all(out.stdout.as_bytes());
            let _ = std::io::stderr().lock().write_all(out.stderr.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(invocation: &Invocation) -> Result<Rendered, String> {
    let config = load_config(invocation).await?;
    let server = config.cluster_url.to_string();
    let context_namespace = config.default_namespace.clone();
    let client = Client::try_from(config).map_err(|e| format!("cannot build a client for {server}: {e}"))?;
    let cluster = Cluster { client, server };
    let options = Options {
        now: jiff::Timestamp::now(),
        color: use_color(),
    };
    let namespace = |scope: &Scope| match scope {
        Scope::ContextNamespace => Some(context_namespace.clone()),
        Scope::Namespace(ns) => Some(ns.clone()),
        Scope::AllNamespaces => None,
    };

    match &invocation.command {
        Command::Status {
            scope,
            name: Some(name),
        } => {
            let ns = namespace(scope).unwrap_or(context_namespace.clone());
            let budget = cluster.get(&ns, name).await?;
            Ok(Rendered {
                stdout: render::status_detail(&budget, &options),
                stderr: String::new(),
            })
        }
        Command::Status { scope, name: None } => {
            let ns = namespace(scope);
            let (budgets, warnings) = cluster.list(ns.as_deref()).await?;
            let mut out = render::status_list(&budgets, listing(&ns), &options);
            out.stderr.insert_str(0, &warnings);
            Ok(out)
        }
        Command::Top { scope, budget } => {
            let ns = namespace(scope);
            let (budgets, warnings) = match (budget, &ns) {
                (Some(name), Some(ns)) => (vec![cluster.get(ns, name).await?], String::new()),
                (Some(name), None) => {
                    let (all, warnings) = cluster.list(None).await?;
                    let named: Vec<TokenBudget> = all.into_iter().filter(|b| &b.name_any() == name).collect();
                    if named.is_empty() {
                        return Err(format!("TokenBudget {name:?} not found in any namespace"));
                    }
                    (named, warnings)
                }
                (None, _) => cluster.list(ns.as_deref()).await?,
            };
            let mut out = render::top(&budgets, listing(&ns), budget.as_deref(), &options);
            out.stderr.insert_str(0, &warnings);
            Ok(out)
        }
        Command::Help | Command::Version | Command::Completion(_) => unreachable!("answered without a cluster"),
    }
}

fn listing(namespace: &Option<String>) -> Listing<'_> {
    match namespace {
        Some(ns) => Listing::Namespace(ns),
        None => Listing::AllNamespaces,
    }
}

/// The kubeconfig as kubectl finds it: `--kubeconfig`, else `KUBECONFIG`, else
/// `~/.kube/config` (else the in-cluster service account), with `--context` if given.
async fn load_config(invocation: &Invocation) -> Result<Config, String> {
    let options = KubeConfigOptions {
        context: invocation.context.clone(),
        ..Default::default()
    };
    let mut config = match (&invocation.kubeconfig, &invocation.context) {
        (Some(path), _) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| format!("cannot read kubeconfig {path}: {e}"))?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| format!("kubeconfig {path}: {e}"))?
        }
        (None, Some(_)) => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| format!("kubeconfig: {e}"))?,
        (None, None) => Config::infer()
            .await
            .map_err(|e| format!("no Kubernetes configuration found (set KUBECONFIG or ~/.kube/config): {e}"))?,
    };
    // A command-line tool should fail in seconds, not hang, when the server does not answer.
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(Duration::from_secs(30));
    Ok(config)
}

/// Colours only on a terminal, and never with NO_COLOR (https://no-color.org) or TERM=dumb.
fn use_color() -> bool {
    std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
}

struct Cluster {
    client: Client,
    server: String,
}

const CRD_MISSING: &str = "the TokenBudget CRD is not installed in this cluster \
     (tokenbudgets.tokenbudget.io): install it with `kubectl apply -f crds/` or the Helm chart";

impl Cluster {
    /// One budget; a missing budget and a missing CRD are told apart.
    async fn get(&self, namespace: &str, name: &str) -> Result<TokenBudget, String> {
        let api: Api<TokenBudget> = Api::namespaced(self.client.clone(), namespace);
        match api.get_opt(name).await {
            Ok(Some(budget)) => Ok(budget),
            // The API server answers 404 both for a missing object and a missing resource.
            Ok(None) => {
                self.check_crd(namespace).await?;
                Err(format!("TokenBudget {name:?} not found in namespace {namespace:?}"))
            }
            Err(e) => Err(self.explain(e, &format!("cannot get TokenBudget {namespace}/{name}"))),
        }
    }

    /// Every budget in `namespace` (all without one), and a warning line for each that cannot
    /// be read: one bad object must not hide the others.
    async fn list(&self, namespace: Option<&str>) -> Result<(Vec<TokenBudget>, String), String> {
        let api: Api<DeserializeGuard<TokenBudget>> = match namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let list = match api.list(&ListParams::default()).await {
            Ok(list) => list,
            Err(kube::Error::Api(s)) if s.code == 404 => return Err(CRD_MISSING.into()),
            Err(e) => {
                let scope = namespace.map_or("in any namespace".into(), |ns| format!("in namespace {ns}"));
                return Err(self.explain(e, &format!("cannot list TokenBudgets {scope}")));
            }
        };
        let mut budgets = Vec::new();
        let mut warnings = String::new();
        for guard in list.items {
            match guard.0 {
                Ok(budget) => budgets.push(budget),
                Err(invalid) => warnings.push_str(&format!(
                    "warning: skipping TokenBudget {}/{}: {}\n",
                    invalid.metadata.namespace.unwrap_or_default(),
                    invalid.metadata.name.unwrap_or_default(),
                    invalid.error
                )),
            }
        }
        Ok((budgets, warnings))
    }

    async fn check_crd(&self, namespace: &str) -> Result<(), String> {
        let api: Api<TokenBudget> = Api::namespaced(self.client.clone(), namespace);
        match api.list_metadata(&ListParams::default().limit(1)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Err(CRD_MISSING.into()),
            Err(e) => Err(self.explain(e, "cannot list TokenBudgets")),
        }
    }

    /// One line for a failed request: the server's own message, or why it could not be reached.
    fn explain(&self, error: kube::Error, what: &str) -> String {
        match error {
            kube::Error::Api(s) => format!("{what}: {}", s.message),
            e @ (kube::Error::HyperError(_) | kube::Error::Service(_)) => {
                format!(
                    "cannot reach the Kubernetes API server at {}: {}",
                    self.server,
                    root_cause(&e)
                )
            }
            e => format!("{what}: {}", root_cause(&e)),
        }
    }
}

/// The innermost error of a chain ("Connection refused (os error 111)"), which says more than
/// the wrappers around it ("ServiceError: client error (Connect)").
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut e = error;
    while let Some(source) = e.source() {
        e = source;
    }
    e.to_string()
}
