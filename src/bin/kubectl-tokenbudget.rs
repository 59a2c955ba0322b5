//! kubectl-tokenbudget: the `kubectl tokenbudget` plugin. Copied onto PATH under this name,
//! kubectl runs it for `kubectl tokenbudget ...`. It only reads TokenBudgets (and, for
//! `report --pool`, a ClusterTokenBudget); the views are rendered by `tokenbudget::plugin::render`.

use std::{
    collections::HashMap,
    io::{IsTerminal, Write},
    process::ExitCode,
    time::Duration,
};

use futures::StreamExt;
use kube::{
    Api, Client, Config,
    api::{ListParams, WatchEvent, WatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    core::{ApiResource, DynamicObject},
};
use serde::Deserialize;
use serde_json::Value;
use tokenbudget::{
    api::{ClusterTokenBudget, TokenBudget},
    plugin::{
        self, Command, Invocation, ListOutput, ReportOutput, ReportRequest, Scope, View, parse_args,
        render::{self, Listing, Options, Rendered, Watch, WatchView},
        report,
    },
};

/// How many times in a row a watch may fail to (re)connect before the plugin gives up.
const WATCH_RETRIES: u32 = 5;

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
    let (cluster, context_namespace) = connect(invocation).await?;
    let namespace = |scope: &Scope| match scope {
        Scope::ContextNamespace => Some(context_namespace.clone()),
        Scope::Namespace(ns) => Some(ns.clone()),
        Scope::AllNamespaces => None,
    };
    match &invocation.command {
        Command::Status { scope, name, view } => {
            status(&cluster, namespace(scope), &context_namespace, name.as_deref(), view).await
        }
        Command::Top { scope, budget, view } => top(&cluster, namespace(scope), budget.as_deref(), view).await,
        Command::Report { scope, name, request } => {
            let ns = namespace(scope);
            let fetched = match name {
                Some(name) => {
                    let ns = ns.clone().unwrap_or(context_namespace.clone());
                    Fetched::one(cluster.get(&ns, name).await?)?
                }
                None => cluster.list(ns.as_deref(), None).await?,
            };
            chargeback(fetched, ns, name.as_deref(), request)
        }
        Command::ReportPool { pool, request } => {
            let pool = cluster.get_pool(pool).await?;
            let report = report::build_pool(&pool, &request.range, request.by)?;
            // A pool's children are in every namespace: the NAMESPACE column is always there.
            Ok(render_report(&report, Listing::AllNamespaces, request))
        }
        Command::Help | Command::Version | Command::Completion(_) => unreachable!("answered without a cluster"),
    }
}

/// The clients for the kubeconfig's cluster, and the namespace of its context.
async fn connect(invocation: &Invocation) -> Result<(Cluster, String), String> {
    let config = load_config(invocation).await?;
    let server = config.cluster_url.to_string();
    let context_namespace = config.default_namespace.clone();
    // A watch waits for events longer than a request may take: a client of its own, whose
    // read timeout is longer than the server's watch timeout.
    let mut watch_config = config.clone();
    watch_config.read_timeout = Some(Duration::from_secs(u64::from(watch_timeout()) + 15));
    let client = Client::try_from(config).map_err(|e| format!("cannot build a client for {server}: {e}"))?;
    let watch_client =
        Client::try_from(watch_config).map_err(|e| format!("cannot build a client for {server}: {e}"))?;
    let cluster = Cluster {
        client,
        watch_client,
        server,
    };
    Ok((cluster, context_namespace))
}

/// How a view is rendered now.
fn options(view: &View) -> Options {
    Options {
        now: jiff::Timestamp::now(),
        color: use_color(),
        wide: view.output == ListOutput::Wide,
        no_headers: view.no_headers,
    }
}

/// `status [NAME]`.
async fn status(
    cluster: &Cluster,
    ns: Option<String>,
    context_namespace: &str,
    name: Option<&str>,
    view: &View,
) -> Result<Rendered, String> {
    let opts = options(view);
    if view.watch {
        return cluster.watch(WatchView::Status, ns.as_deref(), name, view, opts).await;
    }
    match name {
        Some(name) => {
            let ns = ns.unwrap_or(context_namespace.to_string());
            let raw = cluster.get(&ns, name).await?;
            Ok(match view.output {
                ListOutput::Json | ListOutput::Yaml => out(render::object(raw, view.output)),
                ListOutput::Table => out(render::status_detail(&typed(&raw)?, &opts)),
                ListOutput::Wide => render::status_list(&[typed(&raw)?], Listing::Namespace(&ns), &opts),
            })
        }
        None => {
            let fetched = cluster.list(ns.as_deref(), None).await?;
            Ok(match view.output {
                ListOutput::Json | ListOutput::Yaml => out(render::object_list(fetched.raw, view.output)),
                ListOutput::Table | ListOutput::Wide => {
                    let mut out = render::status_list(&fetched.budgets, listing(&ns), &opts);
                    out.stderr.insert_str(0, &fetched.warnings);
                    out
                }
            })
        }
    }
}

/// `top [--budget NAME]`.
async fn top(cluster: &Cluster, ns: Option<String>, budget: Option<&str>, view: &View) -> Result<Rendered, String> {
    let opts = options(view);
    if view.watch {
        return cluster.watch(WatchView::Top, ns.as_deref(), budget, view, opts).await;
    }
    let fetched = match (budget, &ns) {
        (Some(name), Some(ns)) => {
            let raw = cluster.get(ns, name).await?;
            if matches!(view.output, ListOutput::Json | ListOutput::Yaml) {
                return Ok(out(render::object(raw, view.output)));
            }
            Fetched::one(raw)?
        }
        (Some(name), None) => {
            let fetched = cluster.list(None, Some(name)).await?;
            if fetched.raw.is_empty() {
                return Err(format!("TokenBudget {name:?} not found in any namespace"));
            }
            fetched
        }
        (None, _) => cluster.list(ns.as_deref(), None).await?,
    };
    Ok(match view.output {
        ListOutput::Json | ListOutput::Yaml => out(render::object_list(fetched.raw, view.output)),
        ListOutput::Table | ListOutput::Wide => {
            let mut out = render::top(&fetched.budgets, listing(&ns), budget, &opts);
            out.stderr.insert_str(0, &fetched.warnings);
            out
        }
    })
}

/// `report`, over the budgets fetched.
fn chargeback(
    fetched: Fetched,
    ns: Option<String>,
    name: Option<&str>,
    request: &ReportRequest,
) -> Result<Rendered, String> {
    // A budget left out would make the totals wrong: no report without it.
    if let Some(warning) = fetched.warnings.lines().next() {
        return Err(warning.trim_start_matches("warning: skipping ").replacen(
            "TokenBudget",
            "cannot read TokenBudget",
            1,
        ));
    }
    if fetched.budgets.is_empty() {
        return Ok(render::Rendered {
            stdout: String::new(),
            stderr: render::no_budgets(listing(&ns)),
        });
    }
    let report = report::build(&fetched.budgets, listing(&ns), name, &request.range, request.by)?;
    Ok(render_report(&report, listing(&ns), request))
}

fn render_report(report: &report::Report, listing: Listing, request: &ReportRequest) -> Rendered {
    out(match request.output {
        ReportOutput::Table => report::table(report, listing, request.no_headers),
        ReportOutput::Csv => report::csv(report, request.no_headers),
        ReportOutput::Json => report::json(report),
    })
}

fn out(stdout: String) -> Rendered {
    Rendered {
        stdout,
        stderr: String::new(),
    }
}

/// A budget as this plugin's types read it.
fn typed(raw: &Value) -> Result<TokenBudget, String> {
    TokenBudget::deserialize(raw).map_err(|e| {
        let meta = |field: &str| raw["metadata"][field].as_str().unwrap_or_default().to_string();
        format!("cannot read TokenBudget {}/{}: {e}", meta("namespace"), meta("name"))
    })
}

/// The server's watch timeout, in seconds: `KUBECTL_TOKENBUDGET_WATCH_TIMEOUT` (for the tests,
/// which also get a line on stderr at each resume), else about 5 minutes, as kubectl's.
fn watch_timeout() -> u32 {
    test_watch_timeout().unwrap_or(290)
}

fn test_watch_timeout() -> Option<u32> {
    std::env::var("KUBECTL_TOKENBUDGET_WATCH_TIMEOUT").ok()?.parse().ok()
}

/// Resolves when the user interrupts (Ctrl-C) or the process is asked to stop (SIGTERM).
async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

/// Writes and flushes, as a watch prints; `Err` when the reader went away (`| head`).
fn emit(text: &str, to_stderr: bool) -> Result<(), ()> {
    if text.is_empty() {
        return Ok(());
    }
    let result = if to_stderr {
        let mut err = std::io::stderr().lock();
        err.write_all(text.as_bytes()).and_then(|_| err.flush())
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes()).and_then(|_| out.flush())
    };
    result.map_err(|_| ())
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
    watch_client: Client,
    server: String,
}

/// Budgets as listed: the objects as the server sent them, those this plugin's types read, and
/// a warning line for each that they cannot.
struct Fetched {
    raw: Vec<Value>,
    budgets: Vec<TokenBudget>,
    warnings: String,
    resource_version: String,
}

impl Fetched {
    fn new(raw: Vec<Value>, resource_version: String) -> Self {
        let mut budgets = Vec::new();
        let mut warnings = String::new();
        for object in &raw {
            match typed(object) {
                Ok(budget) => budgets.push(budget),
                Err(e) => warnings.push_str(&format!("warning: skipping {}\n", e.trim_start_matches("cannot read "))),
            }
        }
        Self {
            raw,
            budgets,
            warnings,
            resource_version,
        }
    }

    /// One budget got by name, which must be readable.
    fn one(raw: Value) -> Result<Self, String> {
        let budget = typed(&raw)?;
        Ok(Self {
            raw: vec![raw],
            budgets: vec![budget],
            warnings: String::new(),
            resource_version: String::new(),
        })
    }
}

const CRD_MISSING: &str = "the TokenBudget CRD is not installed in this cluster \
     (tokenbudgets.tokenbudget.io): install it with `kubectl apply -f crds/` or the Helm chart";

const POOL_CRD_MISSING: &str = "the ClusterTokenBudget CRD is not installed in this cluster \
     (clustertokenbudgets.tokenbudget.io): install it with `kubectl apply -f crds/` or the Helm chart";

impl Cluster {
    fn api(&self, client: &Client, namespace: Option<&str>) -> Api<DynamicObject> {
        let resource = ApiResource::erase::<TokenBudget>(&());
        match namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        }
    }

    /// One budget as the server sent it; a missing budget and a missing CRD are told apart.
    async fn get(&self, namespace: &str, name: &str) -> Result<Value, String> {
        match self.api(&self.client, Some(namespace)).get_opt(name).await {
            Ok(Some(budget)) => Ok(to_value(budget)),
            // The API server answers 404 both for a missing object and a missing resource.
            Ok(None) => {
                self.check_crd(namespace).await?;
                Err(format!("TokenBudget {name:?} not found in namespace {namespace:?}"))
            }
            Err(e) => Err(self.explain(e, &format!("cannot get TokenBudget {namespace}/{name}"))),
        }
    }

    /// A pool (`report --pool`), by name; a missing pool and a missing CRD are told apart.
    async fn get_pool(&self, name: &str) -> Result<ClusterTokenBudget, String> {
        let api: Api<ClusterTokenBudget> = Api::all(self.client.clone());
        match api.get_opt(name).await {
            Ok(Some(pool)) => Ok(pool),
            // The API server answers 404 both for a missing object and a missing resource; a
            // list tells them apart (one who may not list pools is told the pool is missing).
            Ok(None) => match api.list_metadata(&ListParams::default().limit(1)).await {
                Err(kube::Error::Api(s)) if s.code == 404 => Err(POOL_CRD_MISSING.into()),
                _ => Err(format!("ClusterTokenBudget {name:?} not found")),
            },
            Err(e) => Err(self.explain(e, &format!("cannot get ClusterTokenBudget {name}"))),
        }
    }

    /// Every budget in `namespace` (all without one), or only those named `name`. One that
    /// cannot be read must not hide the others: it gets a warning.
    async fn list(&self, namespace: Option<&str>, name: Option<&str>) -> Result<Fetched, String> {
        let mut params = ListParams::default();
        if let Some(name) = name {
            params = params.fields(&format!("metadata.name={name}"));
        }
        let list = match self.api(&self.client, namespace).list(&params).await {
            Ok(list) => list,
            Err(kube::Error::Api(s)) if s.code == 404 => return Err(CRD_MISSING.into()),
            Err(e) => {
                let scope = namespace.map_or("in any namespace".into(), |ns| format!("in namespace {ns}"));
                return Err(self.explain(e, &format!("cannot list TokenBudgets {scope}")));
            }
        };
        let version = list.metadata.resource_version.clone().unwrap_or_default();
        Ok(Fetched::new(list.items.into_iter().map(to_value).collect(), version))
    }

    /// `-w`: the listing, then a line (or an object) per change until interrupted or stdout
    /// closes. A watch the server ends (its timeout) resumes where it stopped; one whose
    /// version is too old (410 Gone) lists again, which prints only what changed meanwhile.
    async fn watch(
        &self,
        view: WatchView,
        namespace: Option<&str>,
        name: Option<&str>,
        flags: &View,
        mut opts: Options,
    ) -> Result<Rendered, String> {
        let listing = match namespace {
            Some(ns) => Listing::Namespace(ns),
            None => Listing::AllNamespaces,
        };
        let fetched = self.list(namespace, name).await?;
        if let (Some(name), Some(ns), WatchView::Status, true) = (name, namespace, view, fetched.raw.is_empty()) {
            self.check_crd(ns).await?;
            return Err(format!("TokenBudget {name:?} not found in namespace {ns:?}"));
        }
        let mut printer = WatchOutput {
            table: Watch::new(view, listing),
            objects: matches!(flags.output, ListOutput::Json | ListOutput::Yaml).then_some(flags.output),
            versions: HashMap::new(),
            printed: 0,
            listing,
            name,
        };
        let closed = Ok(Rendered::default());
        if printer.listing(&fetched, true, &opts).is_err() {
            return closed;
        }

        let mut version = fetched.resource_version;
        let mut params = WatchParams::default().timeout(watch_timeout());
        if let Some(name) = name {
            params = params.fields(&format!("metadata.name={name}"));
        }
        let api = self.api(&self.watch_client, namespace);
        let mut interrupt = std::pin::pin!(interrupted());
        let mut failures = 0u32;
        loop {
            let stream = tokio::select! {
                stream = api.watch(&params, &version) => stream,
                _ = &mut interrupt => return closed,
            };
            let mut stream = match stream {
                Ok(stream) => stream.boxed(),
                Err(e) => {
                    failures += 1;
                    if failures > WATCH_RETRIES {
                        return Err(self.explain(e, "the watch of TokenBudgets failed"));
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1 << failures.min(4))) => continue,
                        _ = &mut interrupt => return closed,
                    }
                }
            };
            loop {
                let event = tokio::select! {
                    event = stream.next() => event,
                    _ = &mut interrupt => return closed,
                };
                opts.now = jiff::Timestamp::now();
                let printed = match event {
                    // The server ended the watch (its timeout): resume from the last version.
                    None => break,
                    Some(Err(_)) => {
                        failures += 1;
                        break;
                    }
                    Some(Ok(WatchEvent::Bookmark(b))) => {
                        version = b.metadata.resource_version;
                        Ok(())
                    }
                    Some(Ok(WatchEvent::Error(status))) if status.code == 410 => {
                        let fetched = self.list(namespace, name).await?;
                        version = fetched.resource_version.clone();
                        printer.listing(&fetched, false, &opts)
                    }
                    Some(Ok(WatchEvent::Error(status))) => {
                        return Err(format!("the watch of TokenBudgets failed: {}", status.message));
                    }
                    Some(Ok(WatchEvent::Added(o) | WatchEvent::Modified(o))) => {
                        failures = 0;
                        version = o.metadata.resource_version.clone().unwrap_or(version);
                        printer.changed(&to_value(o), &opts)
                    }
                    Some(Ok(WatchEvent::Deleted(o))) => {
                        version = o.metadata.resource_version.clone().unwrap_or(version);
                        printer.deleted(&to_value(o), &opts)
                    }
                };
                if printed.is_err() {
                    return closed;
                }
            }
            if failures > WATCH_RETRIES {
                return Err(format!(
                    "the watch of TokenBudgets failed {WATCH_RETRIES} times in a row (is the API server at {} reachable?)",
                    self.server
                ));
            }
            if test_watch_timeout().is_some() {
                // The tests wait for this line before they check that a change still shows.
                let _ = emit(&format!("watch: resumed at resourceVersion {version}\n"), true);
            }
        }
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

fn to_value(object: DynamicObject) -> Value {
    serde_json::to_value(object).expect("an object from the API server serializes")
}

/// What a watch prints: lines of the table, or (`-o json|yaml`) each new version of an
/// object (YAML documents separated by `---`, as kubectl does). `Err` when stdout closed.
struct WatchOutput<'a> {
    table: Watch,
    objects: Option<ListOutput>,
    /// The resourceVersion printed last of each object.
    versions: HashMap<String, String>,
    printed: usize,
    listing: Listing<'a>,
    name: Option<&'a str>,
}

impl WatchOutput<'_> {
    /// A listing: the first table, or after a new list what changed meanwhile.
    fn listing(&mut self, fetched: &Fetched, first: bool, opts: &Options) -> Result<(), ()> {
        emit(&fetched.warnings, true)?;
        if self.objects.is_some() {
            return fetched.raw.iter().try_for_each(|raw| self.object(raw));
        }
        if first {
            let out = self.table.start(&fetched.budgets, self.listing, self.name, opts);
            emit(&out.stdout, false)?;
            return emit(&out.stderr, true);
        }
        for budget in &fetched.budgets {
            emit(&self.table.changed(budget, opts), false)?;
        }
        Ok(())
    }

    fn changed(&mut self, raw: &Value, opts: &Options) -> Result<(), ()> {
        if self.objects.is_some() {
            return self.object(raw);
        }
        match typed(raw) {
            Ok(budget) => emit(&self.table.changed(&budget, opts), false),
            Err(e) => emit(&format!("warning: {e}\n"), true),
        }
    }

    fn deleted(&mut self, raw: &Value, opts: &Options) -> Result<(), ()> {
        if self.objects.is_some() {
            return self.object(raw);
        }
        match typed(raw) {
            Ok(budget) => emit(&self.table.deleted(&budget, opts), false),
            Err(_) => Ok(()),
        }
    }

    fn object(&mut self, raw: &Value) -> Result<(), ()> {
        let Some(output) = self.objects else { return Ok(()) };
        let meta = |field: &str| raw["metadata"][field].as_str().unwrap_or_default().to_string();
        let version = meta("resourceVersion");
        let key = format!("{}/{}", meta("namespace"), meta("name"));
        if self.versions.insert(key, version.clone()) == Some(version) {
            return Ok(());
        }
        let separator = if output == ListOutput::Yaml && self.printed > 0 {
            "---\n"
        } else {
            ""
        };
        self.printed += 1;
        emit(&format!("{separator}{}", render::object(raw.clone(), output)), false)
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
