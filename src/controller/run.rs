//! The whole operator as one library call: both controllers, the accounting stores, the
//! `/healthz`, `/readyz` and `/metrics` endpoints and the agent API, until a shutdown future resolves. The
//! binary is a thin caller with the system clock; integration tests run the same wiring
//! in-process with a clock of their own.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, channel::mpsc};
use kube::{
    Api, Client,
    core::DeserializeGuard,
    runtime::{
        Controller,
        events::Reporter,
        reflector::{ObjectRef, Store},
    },
};
use tokio::{sync::watch, task::JoinSet};

use super::{
    Context, FIELD_MANAGER, StartError,
    cluster::{Cluster, api},
    leader::{self, ElectionConfig, Leadership},
    state::{BindingUsages, BudgetRef},
    sync::Watches,
};
use crate::{
    agent_api::{
        self, AgentApi,
        review::{KubeReviewer, Reviews},
    },
    api::{BudgetBinding, ClusterTokenBudget, TokenBudget},
    clock::Clock,
    http::{self, Endpoints},
    metrics::Metrics,
    usage::scrape::{self, Scraper},
};

/// What the operator's command line sets.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub bind_address: SocketAddr,
    /// Watch only this namespace; `None`: all namespaces.
    pub namespace: Option<String>,
    /// Scrapes in flight at once, over all pods.
    pub max_concurrent_scrapes: usize,
    /// Scrapes in flight at once for the pods of one namespace; `None`: a quarter of
    /// `max_concurrent_scrapes` ([`scrape::default_share`]).
    pub max_concurrent_scrapes_per_namespace: Option<usize>,
    /// The largest metrics body read from a pod.
    pub max_body_bytes: usize,
    /// How long an idle connection to a pod is kept for its next scrape (zero: none is).
    pub scrape_keep_alive: Duration,
    /// The `reportingInstance` of the operator's Events (the pod's name in a cluster).
    pub instance: Option<String>,
    /// The CA that pods' certificates are verified against in https scrapes.
    pub scrape_ca: Option<scrape::ScrapeCa>,
    /// Take part in leader election on this Lease; `None`: lead always (one replica). An
    /// empty namespace is the client's default namespace (in a pod, its own); an empty
    /// identity is made from `instance` ([`leader::identity`]).
    pub leader_election: Option<ElectionConfig>,
    /// The Prometheus that bindings with `metrics.source: Prometheus` read.
    pub prometheus: Option<super::prometheus::Prometheus>,
    /// The agent API; `None`: not served. Off by default here (tests start many operators
    /// side by side); the command line serves it on 0.0.0.0:8082 unless told otherwise.
    pub agent_api: Option<agent_api::Config>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            bind_address: ([0, 0, 0, 0], 8080).into(),
            namespace: None,
            max_concurrent_scrapes: scrape::DEFAULT_MAX_CONCURRENT,
            max_concurrent_scrapes_per_namespace: None,
            max_body_bytes: scrape::DEFAULT_MAX_BODY_BYTES,
            scrape_keep_alive: scrape::DEFAULT_KEEP_ALIVE,
            instance: None,
            scrape_ca: None,
            leader_election: None,
            prometheus: None,
            agent_api: None,
        }
    }
}

/// Runs the operator against `client` until `shutdown` resolves. Fails at once, with one line
/// saying why, when the CRDs are missing or the address cannot be bound. Every task it starts
/// ends when it returns.
pub async fn run(
    client: Client,
    options: Options,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let ns = options.namespace.as_deref();
    super::check_crds(&api(&client, ns), &api(&client, ns)).await?;
    if ns.is_none() {
        // Pools are cluster-scoped: only an operator over all namespaces reconciles them.
        let pools: Api<ClusterTokenBudget> = Api::all(client.clone());
        super::check_crd(&pools, "clustertokenbudgets.tokenbudget.io").await?;
    }
    let election = election(&client, &options)?;
    let leadership = match &election {
        Some(config) => Leadership::candidate(config.identity.clone()),
        None => Leadership::always(),
    };
    let metrics = Metrics::new();
    metrics.election.leader.set(i64::from(leadership.is_leading()));
    let endpoints = Endpoints {
        metrics: metrics.clone(),
        ready: Default::default(),
        leadership: leadership.clone(),
    };
    let listen = |source| StartError::Listen {
        address: options.bind_address,
        source,
    };
    let listener = http::bind(options.bind_address).await.map_err(listen)?;
    let local = listener.local_addr().map_err(listen)?;
    tracing::info!(address = %local, namespace = ns.unwrap_or("<all>"), "tokenbudget-operator starting");
    let agent_listener = match &options.agent_api {
        Some(config) => {
            let listen = |source| StartError::Listen {
                address: config.bind_address,
                source,
            };
            let listener = http::bind(config.bind_address).await.map_err(listen)?;
            let local = listener.local_addr().map_err(listen)?;
            tracing::info!(address = %local, audience = %config.audience, "agent API listening");
            Some((listener, config.audience.clone()))
        }
        None => None,
    };

    // Dropped on return: aborts every background task, so that an in-process operator stops
    // entirely (its watches too), not only its controllers.
    let mut tasks = JoinSet::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    tasks.spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    // Every write of the controllers goes through the fence; the election's own do not.
    let writer = match &election {
        Some(_) => leadership.fence(client.clone(), metrics.clone()),
        None => client.clone(),
    };
    // The reviews go out with the unfenced client: a standby answers agents too.
    let reviewer = client.clone();
    let elect = {
        let (client, metrics, leadership, stop) = (client, metrics.clone(), leadership.clone(), stopped());
        async move {
            if let Some(config) = election {
                leader::run(client, config, leadership, metrics, stop).await;
            }
        }
    };
    let wiring = wire(writer, &options, clock.clone(), metrics, leadership, &mut tasks);
    tasks.spawn(ready_when_synced(
        wiring.budgets.store(),
        wiring.bindings.store(),
        endpoints.ready.clone(),
    ));
    let pools = {
        let (controller, ctx, stop) = (wiring.pools, wiring.ctx.clone(), stopped());
        async move {
            if let Some(controller) = controller {
                super::pool::run(controller, ctx, stop).await;
            }
        }
    };
    let agents = {
        let (budgets, ready, stop) = (wiring.budgets.store(), endpoints.ready.clone(), stopped());
        async move {
            if let Some((listener, audience)) = agent_listener {
                let reviews = Reviews::new(KubeReviewer::new(reviewer, audience.clone()), clock, audience);
                let api = AgentApi {
                    budgets,
                    ready,
                    reviews,
                };
                agent_api::serve(listener, api, stop).await;
            }
        }
    };
    tokio::join!(
        http::serve(listener, endpoints, stopped()),
        agents,
        super::budget::run(wiring.budgets, wiring.ctx.clone(), stopped()),
        pools,
        super::binding::run(wiring.bindings, wiring.ctx, stopped()),
        elect,
    );
    tracing::info!("stopped");
    Ok(())
}

/// The election this replica takes part in, with its namespace and identity filled in.
fn election(client: &Client, options: &Options) -> Result<Option<ElectionConfig>, StartError> {
    let Some(config) = &options.leader_election else {
        return Ok(None);
    };
    let mut config = config.clone();
    if config.namespace.is_empty() {
        config.namespace = client.default_namespace().to_string();
    }
    if config.identity.is_empty() {
        config.identity = leader::identity(options.instance.as_deref());
    }
    config.check()?;
    tracing::info!(
        lease = %config.lease_name,
        namespace = %config.namespace,
        identity = %config.identity,
        "leader election: only the replica holding the lease acts"
    );
    Ok(Some(config))
}

/// The controllers, wired to each other and to the stores, and the context they share.
struct Wiring {
    budgets: Controller<DeserializeGuard<TokenBudget>>,
    bindings: Controller<DeserializeGuard<BudgetBinding>>,
    /// With an operator over all namespaces.
    pools: Option<Controller<DeserializeGuard<ClusterTokenBudget>>>,
    ctx: Arc<Context>,
}

/// Builds both controllers and the stores, with every trigger between them; spawns on `tasks`
/// what drives the stores.
fn wire(
    client: Client,
    options: &Options,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    leadership: Leadership,
    tasks: &mut JoinSet<()>,
) -> Wiring {
    let ns = options.namespace.as_deref();
    let budgets: Api<DeserializeGuard<TokenBudget>> = api(&client, ns);
    // Every watch the budget controller reads reports whether its store is current; budgets
    // that held a decision on a stale view are woken once every store is current again.
    let (resynced_tx, resynced_rx) = mpsc::unbounded();
    let watches = Watches::new(metrics.watch_synced.clone(), resynced_tx);
    // Bindings that change wake their budgets, after the binding store has seen the change.
    let (binding_changed_tx, binding_changed_rx) = mpsc::unbounded();
    let binding_controller = super::binding::controller(
        api(&client, ns),
        budgets.clone(),
        watches.register("budgetbindings"),
        binding_changed_tx,
    );
    let (deleted_tx, deleted_rx) = mpsc::unbounded::<BudgetRef>();
    // Pools: a budget's change wakes its pool, a pool's change (or a namespace's labels) its
    // children. Only over all namespaces: one namespace's operator cannot see them.
    let (pools_tx, pools_rx) = mpsc::unbounded();
    let (children_tx, children_rx) = mpsc::unbounded();
    let budget_controller = super::budget::controller(
        budgets,
        watches.register("tokenbudgets"),
        deleted_tx,
        ns.is_none().then_some(pools_tx),
    );
    let (pool_controller, pool_stores) = ns
        .is_none()
        .then(|| {
            let (controller, stores, namespaces) = super::pool::start(
                &client,
                watches.register("clustertokenbudgets"),
                watches.register("namespaces"),
                budget_controller.store(),
                children_tx,
            );
            tasks.spawn(namespaces);
            (controller, stores)
        })
        .unzip();
    let (cluster, cluster_wakes) = cluster(&client, ns, binding_controller.store(), watches, tasks);
    // Each budget's cycle wakes the bindings whose usage it saw.
    let (wake_tx, wake_rx) = mpsc::unbounded();
    let ctx = Arc::new(Context {
        client,
        metrics,
        clock,
        reporter: Reporter {
            controller: FIELD_MANAGER.into(),
            instance: options.instance.clone(),
        },
        cluster,
        scraper: scraper(options),
        prometheus: options.prometheus.clone(),
        budgets: budget_controller.store(),
        binding_usage: BindingUsages::new(wake_tx),
        accounts: Default::default(),
        leadership: leadership.clone(),
        pools: pool_stores,
        backoff: Default::default(),
    });
    tasks.spawn(forget_deleted(ctx.clone(), deleted_rx));
    // A replica that begins to lead reconciles everything: as a standby it let every change
    // pass.
    let every_budget = every_object_on(leadership.gains(), budget_controller.store());
    let every_binding = every_object_on(leadership.gains(), binding_controller.store());
    let pools = pool_controller.map(|controller| pools(controller, pools_rx, &leadership));
    Wiring {
        budgets: budget_controller
            .reconcile_on(binding_changed_rx)
            .reconcile_on(cluster_wakes)
            .reconcile_on(resynced_rx)
            .reconcile_on(children_rx)
            .reconcile_on(every_budget),
        bindings: binding_controller.reconcile_on(wake_rx).reconcile_on(every_binding),
        pools,
        ctx,
    }
}

/// The pool controller, woken by its children's changes (debounced: a pool's children change
/// together) and, when this replica begins to lead, for every pool.
fn pools(
    controller: Controller<DeserializeGuard<ClusterTokenBudget>>,
    children: impl futures::Stream<Item = ObjectRef<DeserializeGuard<ClusterTokenBudget>>> + Send + 'static,
    leadership: &Leadership,
) -> Controller<DeserializeGuard<ClusterTokenBudget>> {
    let every_pool = every_object_on(leadership.gains(), controller.store());
    controller
        .with_config(kube::runtime::controller::Config::default().debounce(Duration::from_millis(200)))
        .reconcile_on(children)
        .reconcile_on(every_pool)
}

/// The caches accounting reads pods and workloads from, driven on `tasks`, and what they wake:
/// the budgets of a pod that starts terminating, at once, so that its last tokens count; the
/// budget of a workload whose enforcement someone undid (scaled up while exhausted), at once,
/// not at its next cycle.
fn cluster(
    client: &Client,
    ns: Option<&str>,
    bindings: Store<DeserializeGuard<BudgetBinding>>,
    watches: Watches,
    tasks: &mut JoinSet<()>,
) -> (Cluster, impl futures::Stream<Item = BudgetRef> + Send + 'static) {
    let (terminating_tx, terminating_rx) = mpsc::unbounded();
    let (undone_tx, undone_rx) = mpsc::unbounded();
    let (cluster, driver) = Cluster::start(
        client,
        ns,
        bindings,
        watches,
        terminating_tx,
        undone_tx,
        super::cluster::Purpose::Operate,
    );
    tasks.spawn(driver);
    let trigger = cluster.clone();
    let terminating = terminating_rx.flat_map(move |pod| futures::stream::iter(trigger.budgets_for_pod(&pod)));
    (cluster, futures::stream::select(terminating, undone_rx))
}

/// The scraper the options ask for.
fn scraper(options: &Options) -> Scraper {
    let share = options
        .max_concurrent_scrapes_per_namespace
        .unwrap_or_else(|| scrape::default_share(options.max_concurrent_scrapes));
    Scraper::new(options.max_concurrent_scrapes, options.max_body_bytes)
        .with_share(share)
        .with_ca(options.scrape_ca.clone())
        .with_keep_alive(options.scrape_keep_alive)
}

/// Every object of `store`, each time `events` yields.
fn every_object_on<K>(
    events: impl futures::Stream<Item = ()> + Send + 'static,
    store: Store<K>,
) -> impl futures::Stream<Item = ObjectRef<K>> + Send + 'static
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    events.flat_map(move |()| {
        futures::stream::iter(
            store
                .state()
                .iter()
                .map(|o| ObjectRef::from_obj(o.as_ref()))
                .collect::<Vec<_>>(),
        )
    })
}

/// Forgets the account and metric series of every budget deleted.
async fn forget_deleted(ctx: Arc<Context>, mut deleted: mpsc::UnboundedReceiver<BudgetRef>) {
    while let Some(budget) = deleted.next().await {
        ctx.accounts.forget(&budget, &ctx.metrics);
    }
}

/// Sets `ready` once both controllers' stores have listed their objects.
async fn ready_when_synced(
    budgets: Store<DeserializeGuard<TokenBudget>>,
    bindings: Store<DeserializeGuard<BudgetBinding>>,
    ready: Arc<AtomicBool>,
) {
    // Re-poll: a store's readiness signal wakes only its most recent waiter, and the
    // controllers wait on the same stores.
    let synced = || async { budgets.wait_until_ready().await.is_ok() && bindings.wait_until_ready().await.is_ok() };
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
}
