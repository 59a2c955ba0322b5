//! The operator's command line: `tokenbudget-operator --help`. Each flag can also be set by an
//! environment variable, `TOKENBUDGET_` and the flag's name in capitals (`--max-body-bytes`:
//! `TOKENBUDGET_MAX_BODY_BYTES`); a flag on the command line wins over its variable.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, builder::NonEmptyStringValueParser};

use super::{
    leader::{self, ElectionConfig},
    run::Options,
};
use crate::{agent_api, agent_api::review, usage::scrape, validate};

/// The operator's flags, parsed by [`Parser::parse`] (or `try_parse_from` in tests).
#[derive(Clone, Debug, PartialEq, Eq, Parser)]
#[command(
    name = "tokenbudget-operator",
    version,
    max_term_width = 100,
    about = "tokenbudget-operator: caps the LLM tokens that Kubernetes workloads spend",
    after_help = "\
The cluster is the one of KUBECONFIG (or ~/.kube/config), or the in-cluster service account.
Log level and filters: RUST_LOG (default info); LOG_FORMAT=json for JSON logs.
Each flag can also be set by the environment variable shown with it; the flag wins.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// without a command, the operator runs
    #[command(subcommand)]
    pub command: Option<Command>,

    /// where /healthz, /readyz and /metrics are served
    #[arg(long, value_name = "ADDR", env = "TOKENBUDGET_BIND_ADDRESS", default_value_t = Options::default().bind_address)]
    pub bind_address: SocketAddr,

    /// where the agent API is served (GET /v1/namespaces/NS/tokenbudgets/NAME: what an agent
    /// may still spend, for callers whose token RBAC allows to get that budget); empty: not
    /// served
    #[arg(long, value_name = "ADDR", env = "TOKENBUDGET_AGENT_API_BIND_ADDRESS", default_value = DEFAULT_AGENT_API_ADDRESS, value_parser = optional_address)]
    pub agent_api_bind_address: MaybeAddress,

    /// the audience the agent API's callers' tokens must be minted for (a projected
    /// ServiceAccount token's `audience`); never the API server's own, so that a token sent to
    /// the agent API is useless against the API server
    #[arg(long, value_name = "AUDIENCE", env = "TOKENBUDGET_AGENT_API_AUDIENCE", default_value = review::DEFAULT_AUDIENCE, value_parser = NonEmptyStringValueParser::new())]
    pub agent_api_audience: String,

    /// watch only this namespace (default: all namespaces)
    #[arg(long, value_name = "NS", env = "TOKENBUDGET_NAMESPACE", value_parser = NonEmptyStringValueParser::new())]
    pub namespace: Option<String>,

    /// scrapes in flight at once, over all pods
    #[arg(long, value_name = "N", env = "TOKENBUDGET_MAX_CONCURRENT_SCRAPES", default_value_t = scrape::DEFAULT_MAX_CONCURRENT)]
    pub max_concurrent_scrapes: usize,

    /// scrapes in flight at once for the pods of one namespace, so that one namespace's
    /// hanging pods cannot hold every slot (default: a quarter of --max-concurrent-scrapes)
    #[arg(long, value_name = "N", env = "TOKENBUDGET_MAX_CONCURRENT_SCRAPES_PER_NAMESPACE")]
    pub max_concurrent_scrapes_per_namespace: Option<usize>,

    /// largest metrics body read from a pod, in bytes (16 MiB)
    #[arg(long, value_name = "N", env = "TOKENBUDGET_MAX_BODY_BYTES", default_value_t = scrape::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// how long a connection to a pod is kept open, idle, for its next scrape (longer than
    /// the bindings' interval to reuse it); 0s: a new connection for every scrape. Each kept
    /// connection holds about 30 KiB; a new one costs about twice the CPU of a scrape
    #[arg(long, value_name = "DURATION", env = "TOKENBUDGET_SCRAPE_KEEP_ALIVE", default_value = "0s", value_parser = duration)]
    pub scrape_keep_alive: Duration,

    /// PEM CA bundle that pods' certificates are verified against when a binding scrapes over
    /// https (default: in a cluster the service account's ca.crt, otherwise the kubeconfig
    /// cluster's CA)
    #[arg(long, value_name = "PATH", env = "TOKENBUDGET_SCRAPE_CA_FILE")]
    pub scrape_ca_file: Option<PathBuf>,

    /// take part in leader election on a Lease: of several replicas only the one holding it
    /// scrapes, writes status and enforces; the others keep their caches warm and take over
    /// when it stops renewing
    #[arg(long, env = "TOKENBUDGET_LEADER_ELECTION")]
    pub leader_election: bool,

    /// namespace of the Lease (default: the operator's own, from its service account or
    /// kubeconfig context)
    #[arg(long, value_name = "NS", env = "TOKENBUDGET_LEADER_ELECTION_NAMESPACE", value_parser = NonEmptyStringValueParser::new())]
    pub leader_election_namespace: Option<String>,

    /// name of the Lease
    #[arg(long, value_name = "NAME", env = "TOKENBUDGET_LEADER_ELECTION_LEASE_NAME", default_value = leader::DEFAULT_LEASE_NAME, value_parser = NonEmptyStringValueParser::new())]
    pub leader_election_lease_name: String,

    /// how long the other replicas wait, after the last renewal they saw, before they take
    /// the Lease over (whole seconds)
    #[arg(long, value_name = "DURATION", env = "TOKENBUDGET_LEADER_ELECTION_LEASE_DURATION", default_value = "15s", value_parser = duration)]
    pub leader_election_lease_duration: Duration,

    /// how long the leader acts after its last successful renewal began; shorter than the
    /// lease duration, so that it stops before another replica may take over
    #[arg(long, value_name = "DURATION", env = "TOKENBUDGET_LEADER_ELECTION_RENEW_DEADLINE", default_value = "10s", value_parser = duration)]
    pub leader_election_renew_deadline: Duration,

    /// how often the leader renews the Lease and the others look at it
    #[arg(long, value_name = "DURATION", env = "TOKENBUDGET_LEADER_ELECTION_RETRY_PERIOD", default_value = "2s", value_parser = duration)]
    pub leader_election_retry_period: Duration,

    /// base URL of the Prometheus HTTP API (Prometheus, Thanos Query, Mimir, VictoriaMetrics)
    /// that bindings with metrics.source Prometheus read, e.g. http://prometheus.monitoring:9090
    #[arg(long, value_name = "URL", env = "TOKENBUDGET_PROMETHEUS_URL", value_parser = NonEmptyStringValueParser::new())]
    pub prometheus_url: Option<String>,

    /// file whose content is sent as the bearer token of each Prometheus query (read at each
    /// query)
    #[arg(long, value_name = "PATH", env = "TOKENBUDGET_PROMETHEUS_BEARER_TOKEN_FILE")]
    pub prometheus_bearer_token_file: Option<PathBuf>,

    /// PEM CA bundle that an https Prometheus's certificate is verified against
    #[arg(long, value_name = "PATH", env = "TOKENBUDGET_PROMETHEUS_CA_FILE")]
    pub prometheus_ca_file: Option<PathBuf>,

    /// how far back a pod's latest sample is looked for in Prometheus; older is missing (a
    /// few of Prometheus's scrape intervals)
    #[arg(long, value_name = "DURATION", env = "TOKENBUDGET_PROMETHEUS_LOOKBACK", default_value = "2m", value_parser = lookback)]
    pub prometheus_lookback: Duration,
}

/// The agent API's port unless `--agent-api-bind-address` says otherwise.
pub const DEFAULT_AGENT_API_ADDRESS: &str = "0.0.0.0:8082";

/// An address or none. A type alias, so that clap does not take the flag for an optional one:
/// it always has a value (its default), which may be "none".
pub type MaybeAddress = Option<SocketAddr>;

/// `--agent-api-bind-address`: an address, or nothing (the agent API off).
fn optional_address(text: &str) -> Result<Option<SocketAddr>, std::net::AddrParseError> {
    match text {
        "" => Ok(None),
        text => text.parse().map(Some),
    }
}

/// `--prometheus-lookback`: a duration from 1s to 1h.
fn lookback(text: &str) -> Result<Duration, String> {
    let d = duration(text).map_err(|e| e.to_string())?;
    if !(1..=3600).contains(&d.as_secs()) {
        return Err(format!("{text:?} is not from 1s to 1h"));
    }
    Ok(d)
}

/// A Go-style duration (`15s`, `1m30s`), as the operator's other durations.
fn duration(text: &str) -> Result<Duration, validate::DurationError> {
    validate::parse_duration(text)
}

/// What `tokenbudget-operator` runs instead of the operator.
#[derive(Clone, Debug, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// before uninstalling: stop the operator, restore every workload it paused and remove the
    /// budgets' finalizers, leaving the budgets in place (the Helm chart's pre-delete hook)
    Release(super::release::ReleaseArgs),
}

impl Cli {
    /// The [`Options`] these flags set. What is not a flag keeps its default: the caller sets
    /// `instance` (the pod's name) and `scrape_ca` (read from [`Cli::scrape_ca_file`]).
    pub fn options(&self) -> Options {
        Options {
            bind_address: self.bind_address,
            namespace: self.namespace.clone(),
            max_concurrent_scrapes: self.max_concurrent_scrapes,
            max_concurrent_scrapes_per_namespace: self.max_concurrent_scrapes_per_namespace,
            max_body_bytes: self.max_body_bytes,
            scrape_keep_alive: self.scrape_keep_alive,
            leader_election: self.leader_election.then(|| ElectionConfig {
                namespace: self.leader_election_namespace.clone().unwrap_or_default(),
                lease_name: self.leader_election_lease_name.clone(),
                identity: String::new(),
                lease_duration: self.leader_election_lease_duration,
                renew_deadline: self.leader_election_renew_deadline,
                retry_period: self.leader_election_retry_period,
            }),
            agent_api: self.agent_api_bind_address.map(|bind_address| agent_api::Config {
                bind_address,
                audience: self.agent_api_audience.clone(),
            }),
            ..Options::default()
        }
    }
}

#[cfg(test)]
mod tests {
    //! Without the `TOKENBUDGET_*` variables in the environment; the variables are tested in
    //! `src/bin/operator.rs` (setting them needs `unsafe`, which this crate forbids).

    use clap::{CommandFactory, error::ErrorKind};

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tokenbudget-operator").chain(args.iter().copied()))
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn without_flags_the_defaults_of_options() {
        let cli = parse(&[]).unwrap();
        assert_eq!(cli.scrape_ca_file, None);
        let (options, defaults) = (cli.options(), Options::default());
        assert_eq!(options.bind_address, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(options.bind_address, defaults.bind_address);
        assert_eq!(options.namespace, None);
        assert_eq!(options.max_concurrent_scrapes, 64);
        assert_eq!(options.max_concurrent_scrapes_per_namespace, None);
        assert_eq!(options.max_body_bytes, 16 * 1024 * 1024);
        assert_eq!(options.scrape_keep_alive, defaults.scrape_keep_alive);
        assert_eq!(options.instance, None);
        assert!(options.scrape_ca.is_none());
        assert_eq!(options.leader_election, None, "one replica leads without an election");
        assert_eq!(
            options.agent_api,
            Some(agent_api::Config {
                bind_address: "0.0.0.0:8082".parse().unwrap(),
                audience: "tokenbudget.io".into()
            }),
            "the command line serves the agent API (the library's default does not)"
        );
        assert_eq!(defaults.agent_api, None);
        assert_eq!(cli.leader_election_lease_name, "tokenbudget-operator");
        assert_eq!(
            (
                cli.leader_election_lease_duration,
                cli.leader_election_renew_deadline,
                cli.leader_election_retry_period
            ),
            (
                leader::DEFAULT_LEASE_DURATION,
                leader::DEFAULT_RENEW_DEADLINE,
                leader::DEFAULT_RETRY_PERIOD
            )
        );
    }

    #[test]
    fn every_flag_as_value_or_with_equals() {
        let want = Cli {
            command: None,
            bind_address: "127.0.0.1:9090".parse().unwrap(),
            namespace: Some("agents".into()),
            max_concurrent_scrapes: 8,
            max_concurrent_scrapes_per_namespace: Some(2),
            max_body_bytes: 1024,
            scrape_keep_alive: Duration::from_secs(60),
            scrape_ca_file: Some("/etc/ca.pem".into()),
            leader_election: true,
            leader_election_namespace: Some("ops".into()),
            leader_election_lease_name: "tb".into(),
            leader_election_lease_duration: Duration::from_secs(30),
            leader_election_renew_deadline: Duration::from_secs(20),
            leader_election_retry_period: Duration::from_millis(1500),
            prometheus_url: None,
            prometheus_bearer_token_file: None,
            prometheus_ca_file: None,
            prometheus_lookback: Duration::from_secs(120),
            agent_api_bind_address: Some("127.0.0.1:9443".parse().unwrap()),
            agent_api_audience: "agents.example.com".into(),
        };
        let separate = parse(&[
            "--bind-address",
            "127.0.0.1:9090",
            "--namespace",
            "agents",
            "--max-concurrent-scrapes",
            "8",
            "--max-concurrent-scrapes-per-namespace",
            "2",
            "--max-body-bytes",
            "1024",
            "--scrape-keep-alive",
            "1m",
            "--scrape-ca-file",
            "/etc/ca.pem",
            "--leader-election",
            "--leader-election-namespace",
            "ops",
            "--leader-election-lease-name",
            "tb",
            "--leader-election-lease-duration",
            "30s",
            "--leader-election-renew-deadline",
            "20s",
            "--leader-election-retry-period",
            "1.5s",
            "--agent-api-bind-address",
            "127.0.0.1:9443",
            "--agent-api-audience",
            "agents.example.com",
        ]);
        assert_eq!(separate.unwrap(), want);
        let equals = parse(&[
            "--bind-address=127.0.0.1:9090",
            "--namespace=agents",
            "--max-concurrent-scrapes=8",
            "--max-concurrent-scrapes-per-namespace=2",
            "--max-body-bytes=1024",
            "--scrape-keep-alive=60s",
            "--scrape-ca-file=/etc/ca.pem",
            "--leader-election",
            "--leader-election-namespace=ops",
            "--leader-election-lease-name=tb",
            "--leader-election-lease-duration=30s",
            "--leader-election-renew-deadline=20s",
            "--leader-election-retry-period=1500ms",
            "--agent-api-bind-address=127.0.0.1:9443",
            "--agent-api-audience=agents.example.com",
        ]);
        assert_eq!(equals.unwrap(), want);
        let election = want.options().leader_election.unwrap();
        assert_eq!(
            (
                election.namespace.as_str(),
                election.lease_name.as_str(),
                election.identity.as_str()
            ),
            ("ops", "tb", ""),
            "the identity is made at start-up"
        );
        assert_eq!(election.retry_period, Duration::from_millis(1500));
    }

    #[test]
    fn an_invalid_value_names_the_flag_and_the_value() {
        for (args, kind, want) in [
            (
                &["--bind-address", "localhost"][..],
                ErrorKind::ValueValidation,
                "invalid value 'localhost' for '--bind-address <ADDR>': invalid socket address syntax",
            ),
            (
                &["--max-concurrent-scrapes=lots"],
                ErrorKind::ValueValidation,
                "invalid value 'lots' for '--max-concurrent-scrapes <N>': invalid digit found in string",
            ),
            (
                &["--max-body-bytes=-1"],
                ErrorKind::ValueValidation,
                "invalid value '-1' for '--max-body-bytes <N>': invalid digit found in string",
            ),
            (
                &["--namespace="],
                ErrorKind::InvalidValue,
                "a value is required for '--namespace <NS>' but none was supplied",
            ),
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.kind(), kind, "{args:?}");
            let text = err.to_string();
            assert!(text.starts_with(&format!("error: {want}")), "{args:?}: {text}");
        }
    }

    #[test]
    fn an_empty_agent_api_address_turns_it_off() {
        let cli = parse(&["--agent-api-bind-address="]).unwrap();
        assert_eq!(cli.agent_api_bind_address, None);
        assert_eq!(cli.options().agent_api, None);
        let err = parse(&["--agent-api-bind-address=8082"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        let err = parse(&["--agent-api-audience="]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidValue);
    }

    #[test]
    fn unknown_flags_and_missing_values_are_errors() {
        let err = parse(&["--namespaces", "agents"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnknownArgument);
        assert!(
            err.to_string()
                .contains("tip: a similar argument exists: '--namespace'"),
            "{err}"
        );
        let err = parse(&["--namespace"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidValue);
        // A word is a command (`release`), and no other exists.
        let err = parse(&["agents"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidSubcommand);
    }

    #[test]
    fn version_and_help() {
        let err = parse(&["--version"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DisplayVersion);
        assert_eq!(
            err.to_string(),
            format!("tokenbudget-operator {}\n", env!("CARGO_PKG_VERSION"))
        );

        assert_eq!(parse(&["--help"]).unwrap_err().kind(), ErrorKind::DisplayHelp);
        assert_eq!(parse(&["-h"]).unwrap_err().kind(), ErrorKind::DisplayHelp);
        // As `--help` prints it, without wrapping to a terminal.
        let help = Cli::command().term_width(0).render_help().to_string();
        for line in [
            "Usage: tokenbudget-operator [OPTIONS]",
            "--bind-address <ADDR>",
            "where /healthz, /readyz and /metrics are served",
            "[env: TOKENBUDGET_BIND_ADDRESS=]",
            "[default: 0.0.0.0:8080]",
            "[env: TOKENBUDGET_NAMESPACE=]",
            "[env: TOKENBUDGET_MAX_CONCURRENT_SCRAPES=]",
            "[default: 64]",
            "[env: TOKENBUDGET_MAX_CONCURRENT_SCRAPES_PER_NAMESPACE=]",
            "[env: TOKENBUDGET_MAX_BODY_BYTES=]",
            "[default: 16777216]",
            "[env: TOKENBUDGET_SCRAPE_CA_FILE=]",
            "--leader-election",
            "[env: TOKENBUDGET_LEADER_ELECTION=]",
            "[env: TOKENBUDGET_LEADER_ELECTION_RENEW_DEADLINE=]",
            "[default: 10s]",
            "--agent-api-bind-address <ADDR>",
            "[env: TOKENBUDGET_AGENT_API_BIND_ADDRESS=]",
            "[default: 0.0.0.0:8082]",
            "[default: tokenbudget.io]",
            "-V, --version",
            "LOG_FORMAT=json",
        ] {
            assert!(help.contains(line), "{line:?} in:\n{help}");
        }
    }
}
