//! `tokenbudget-operator release`: what runs before the operator is uninstalled (the Helm
//! chart's pre-delete hook). It stops the operator (its Deployment scaled to 0, its pods gone),
//! then gives every budget in scope the cleanup of a deleted budget
//! ([`super::budget::restore_and_let_go`], the same code): every workload the operator scaled
//! down or suspended restored exactly, its annotations removed, the budget's quota deleted, the
//! finalizer removed. The TokenBudgets and BudgetBindings themselves stay: an operator
//! installed again takes them up where they are. Without the operator nothing would remove the
//! finalizers (deleting the CRDs would hang) and paused workloads would stay paused.
//!
//! Safe to run again: a budget without the finalizer has nothing left to restore, a Deployment
//! already at 0 (or gone) is already stopped.

use std::{sync::Arc, time::Duration};

use futures::channel::mpsc;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    core::DeserializeGuard,
    runtime::{events::Reporter, reflector},
};
use tokio::time::Instant;

use super::{
    Context, FIELD_MANAGER, StartError,
    budget::{self, Restore},
    cluster::{Cluster, api},
    state::BindingUsages,
    sync::{View, Watches},
};
use crate::{
    api::{BudgetBinding, TokenBudget},
    clock::Clock,
    metrics::Metrics,
    usage::scrape::Scraper,
};

/// How often a condition is looked at again, and a budget not restored yet retried.
const POLL: Duration = Duration::from_millis(500);

/// The command line of `tokenbudget-operator release`.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct ReleaseArgs {
    /// release only the budgets of this namespace (the operator's --namespace; default: all)
    #[arg(long, value_name = "NS", env = "TOKENBUDGET_NAMESPACE", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub namespace: Option<String>,

    /// the operator's Deployment, scaled to 0 (and its pods awaited) before anything is
    /// restored, so that it cannot enforce again; without it, make sure no operator runs
    #[arg(long, value_name = "NAME", requires = "operator_namespace", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub operator_deployment: Option<String>,

    /// the namespace of --operator-deployment
    #[arg(long, value_name = "NS", requires = "operator_deployment", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub operator_namespace: Option<String>,

    /// give up (exit status 1) when not done within this many seconds
    #[arg(long, value_name = "SECONDS", default_value_t = 240)]
    pub timeout: u64,
}

impl ReleaseArgs {
    /// The [`ReleaseOptions`] these flags set; the caller sets `instance`.
    pub fn options(&self) -> ReleaseOptions {
        ReleaseOptions {
            namespace: self.namespace.clone(),
            operator: self
                .operator_deployment
                .clone()
                .zip(self.operator_namespace.clone())
                .map(|(name, namespace)| OperatorRef { namespace, name }),
            timeout: Duration::from_secs(self.timeout),
            instance: None,
        }
    }
}

/// The operator's Deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorRef {
    pub namespace: String,
    pub name: String,
}

/// What to release, and how long it may take.
#[derive(Clone, Debug)]
pub struct ReleaseOptions {
    /// Only the budgets of this namespace; `None`: all namespaces.
    pub namespace: Option<String>,
    /// The operator to stop first; `None`: the caller has made sure none runs.
    pub operator: Option<OperatorRef>,
    pub timeout: Duration,
    /// The `reportingInstance` of the Restored Events (the hook pod's name).
    pub instance: Option<String>,
}

/// What a release did.
#[derive(Debug, Default)]
pub struct Released {
    /// The budgets whose finalizer was removed, as `namespace/name`.
    pub budgets: Vec<String>,
    /// What was restored, one line per workload (the messages of the Restored Events).
    pub restored: Vec<String>,
    /// The CRDs were not installed: there was nothing to release.
    pub no_crds: bool,
}

/// Why a release did not finish. Whatever was restored stays restored: running it again
/// continues with what is left.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("cannot scale the operator's Deployment {namespace}/{name} to 0: {source}")]
    StopOperator {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("the operator's pods are still there after the timeout: {0}")]
    OperatorStillRunning(String),
    #[error(transparent)]
    Crds(StartError),
    #[error("the caches of workloads and pods did not list within the timeout ({0:?})")]
    NotSynced(View),
    #[error("cannot list TokenBudgets: {0}")]
    ListBudgets(#[source] kube::Error),
    #[error("not done within the timeout; budgets left with their finalizer: {}", .0.join("; "))]
    Incomplete(Vec<String>),
}

/// Stops the operator, then releases every budget in scope, within `options.timeout`.
pub async fn release(client: Client, options: ReleaseOptions, clock: Arc<dyn Clock>) -> Result<Released, ReleaseError> {
    let deadline = Instant::now() + options.timeout;
    if let Some(operator) = &options.operator {
        stop_operator(&client, operator, deadline).await?;
    }
    let ns = options.namespace.as_deref();
    // Only the budgets are read: their CRD is the one that must be there.
    let budgets = api::<TokenBudget>(&client, ns);
    match super::check_crd(&budgets, "tokenbudgets.tokenbudget.io").await {
        Ok(()) => {}
        Err(StartError::MissingCrd(crd)) => {
            tracing::info!(crd, "the CRDs are not installed: nothing to release");
            return Ok(Released {
                no_crds: true,
                ..Default::default()
            });
        }
        Err(e) => return Err(ReleaseError::Crds(e)),
    }
    let (ctx, driver) = context(client.clone(), &options, clock);
    // Aborted when this returns, with the watches it drives.
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(driver);
    wait_until_current(&ctx, deadline).await?;
    release_budgets(&ctx, api(&client, ns), deadline).await
}

/// Scales the operator's Deployment to 0 through its scale subresource, and waits until none
/// of its pods is left, so that no operator can enforce again behind the restore. A
/// Deployment that is not there has nothing to stop.
async fn stop_operator(client: &Client, operator: &OperatorRef, deadline: Instant) -> Result<(), ReleaseError> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &operator.namespace);
    let zero = serde_json::json!({"spec": {"replicas": 0}});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let scale = match deployments
        .patch_scale(&operator.name, &params, &Patch::Merge(&zero))
        .await
    {
        Ok(scale) => scale,
        Err(kube::Error::Api(e)) if e.code == 404 => {
            tracing::info!(deployment = %operator.name, "the operator's Deployment is not there: nothing to stop");
            return Ok(());
        }
        Err(source) => {
            return Err(ReleaseError::StopOperator {
                namespace: operator.namespace.clone(),
                name: operator.name.clone(),
                source,
            });
        }
    };
    // The scale subresource reports the Deployment's selector as a label selector string.
    let selector = scale.status.and_then(|s| s.selector).unwrap_or_default();
    if selector.is_empty() {
        return Err(ReleaseError::OperatorStillRunning(format!(
            "the Deployment {} reports no pod selector",
            operator.name
        )));
    }
    tracing::info!(deployment = %operator.name, %selector, "operator scaled to 0, waiting for its pods to go");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &operator.namespace);
    let by_selector = ListParams::default().labels(&selector);
    loop {
        let left: Vec<String> = match pods.list_metadata(&by_selector).await {
            Ok(list) => list.items.iter().map(|p| p.name_any()).collect(),
            Err(e) => vec![format!("cannot list them: {e}")],
        };
        if left.is_empty() {
            tracing::info!("the operator is stopped");
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ReleaseError::OperatorStillRunning(left.join(", ")));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A [`Context`] for the cleanup of budgets: the stores of workloads and pods (what a restore
/// reads), and the driver of their watches. It has no bindings and no budgets in store, and
/// scrapes nothing: a restore reads what the operator wrote on the workloads themselves.
fn context(
    client: Client,
    options: &ReleaseOptions,
    clock: Arc<dyn Clock>,
) -> (Arc<Context>, impl Future<Output = ()> + Send + use<>) {
    let (bindings, _) = reflector::store::<DeserializeGuard<BudgetBinding>>();
    let (budgets, _) = reflector::store::<DeserializeGuard<TokenBudget>>();
    // Nobody listens: there is no controller to wake.
    let (terminating, _) = mpsc::unbounded();
    let (undone, _) = mpsc::unbounded();
    let (wake, _) = mpsc::unbounded();
    let (cluster, driver) = Cluster::start(
        &client,
        options.namespace.as_deref(),
        bindings,
        Watches::default(),
        terminating,
        undone,
        super::cluster::Purpose::Restore,
    );
    let ctx = Context {
        client,
        metrics: Metrics::new(),
        clock,
        reporter: Reporter {
            controller: FIELD_MANAGER.into(),
            instance: options.instance.clone(),
        },
        cluster,
        scraper: Scraper::new(1, 1),
        prometheus: None,
        accounts: Default::default(),
        budgets,
        binding_usage: BindingUsages::new(wake),
        backoff: Default::default(),
        // No election: the operator's replicas are all stopped before anything is restored.
        leadership: super::leader::Leadership::always(),
        // No pool is reconciled while the operator is being uninstalled.
        pools: None,
    };
    (Arc::new(ctx), driver)
}

async fn wait_until_current(ctx: &Context, deadline: Instant) -> Result<(), ReleaseError> {
    loop {
        let view = ctx.cluster.view();
        if view == View::Current {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ReleaseError::NotSynced(view));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Every budget with the finalizer gets the cleanup of a deleted budget, again and again until
/// each is done or the deadline passes.
async fn release_budgets(
    ctx: &Context,
    budgets: Api<DeserializeGuard<TokenBudget>>,
    deadline: Instant,
) -> Result<Released, ReleaseError> {
    let mut released = Released::default();
    loop {
        // A failed list is tried again, like a failed restore, until the deadline.
        let list = match budgets.list(&ListParams::default()).await {
            Ok(list) => list.items,
            Err(e) if Instant::now() >= deadline => return Err(ReleaseError::ListBudgets(e)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list TokenBudgets; trying again");
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        let mut left = Vec::new();
        for guard in &list {
            let tb = match &guard.0 {
                Ok(tb) if budget::has_finalizer(tb) => tb,
                Ok(_) => continue,
                Err(invalid) => {
                    let finalizers = invalid.metadata.finalizers.as_deref().unwrap_or_default();
                    if finalizers.iter().any(|f| f == crate::enforce::FINALIZER) {
                        let name = qualified(&invalid.metadata);
                        left.push(format!("{name}: the operator cannot read it: {}", invalid.error));
                    }
                    continue;
                }
            };
            let name = qualified(&tb.metadata);
            let (notices, outcome) = match budget::restore_and_let_go(tb, ctx).await {
                Ok(Restore::Done(notices)) => (notices, Ok(())),
                Ok(Restore::NotYet { notices, why }) => (notices, Err(why.join(", "))),
                Err(e) => (Vec::new(), Err(e.to_string())),
            };
            // What was restored is told as it happens, also by an attempt that is not complete.
            for notice in notices {
                tracing::info!(budget = %name, "{}", notice.message);
                released.restored.push(format!("{name}: {}", notice.message));
            }
            match outcome {
                Ok(()) => {
                    tracing::info!(budget = %name, "released: workloads restored, finalizer removed");
                    released.budgets.push(name);
                }
                Err(why) => left.push(format!("{name}: {why}")),
            }
        }
        if left.is_empty() {
            return Ok(released);
        }
        if Instant::now() >= deadline {
            return Err(ReleaseError::Incomplete(left));
        }
        tracing::info!(left = ?left, "not every budget is released yet; trying again");
        tokio::time::sleep(POLL).await;
    }
}

fn qualified(meta: &kube::api::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use clap::{Parser, error::ErrorKind};

    use super::*;
    use crate::controller::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tokenbudget-operator").chain(args.iter().copied()))
    }

    fn release_args(args: &[&str]) -> ReleaseArgs {
        match parse(args).unwrap().command {
            Some(Command::Release(args)) => args,
            None => panic!("no release command in {args:?}"),
        }
    }

    #[test]
    fn the_hooks_command_line() {
        let args = release_args(&[
            "release",
            "--operator-deployment=tokenbudget-operator",
            "--operator-namespace=tokenbudget-system",
            "--timeout=100",
            "--namespace=agents",
        ]);
        let options = args.options();
        assert_eq!(options.namespace.as_deref(), Some("agents"));
        assert_eq!(
            options.operator,
            Some(OperatorRef {
                namespace: "tokenbudget-system".into(),
                name: "tokenbudget-operator".into()
            })
        );
        assert_eq!(options.timeout, Duration::from_secs(100));
        assert_eq!(options.instance, None);
    }

    #[test]
    fn without_flags_every_namespace_no_operator_to_stop_and_four_minutes() {
        let options = release_args(&["release"]).options();
        assert_eq!(options.namespace, None);
        assert_eq!(options.operator, None);
        assert_eq!(options.timeout, Duration::from_secs(240));
    }

    #[test]
    fn the_operator_needs_both_its_name_and_its_namespace() {
        for args in [
            &["release", "--operator-deployment=op"][..],
            &["release", "--operator-namespace=ns"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument, "{args:?}: {err}");
        }
        let err = parse(&["release", "--namespace="]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidValue, "{err}");
    }

    #[test]
    fn the_operators_flags_do_not_mix_with_release() {
        // `--namespace` before `release` would be the operator's, and silently ignored.
        let err = parse(&["--namespace=agents", "release"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict, "{err}");
        let err = parse(&["release", "--bind-address=0.0.0.0:1"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnknownArgument, "{err}");
        // Without a command, the operator's flags as before.
        assert_eq!(parse(&["--namespace=agents"]).unwrap().command, None);
    }
}
