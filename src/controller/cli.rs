//! The operator's command line: `tokenbudget-operator --help`. Each flag can also be set by an
//! environment variable, `TOKENBUDGET_` and the flag's name in capitals (`--max-body-bytes`:
//! `TOKENBUDGET_MAX_BODY_BYTES`); a flag on the command line wins over its variable.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, builder::NonEmptyStringValueParser};

use super::run::Options;
use crate::usage::scrape;

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
Each flag can also be set by the environment variable shown with it; the flag wins."
)]
pub struct Cli {
    /// where /healthz, /readyz and /metrics are served
    #[arg(long, value_name = "ADDR", env = "TOKENBUDGET_BIND_ADDRESS", default_value_t = Options::default().bind_address)]
    pub bind_address: SocketAddr,

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

    /// PEM CA bundle that pods' certificates are verified against when a binding scrapes over
    /// https (default: in a cluster the service account's ca.crt, otherwise the kubeconfig
    /// cluster's CA)
    #[arg(long, value_name = "PATH", env = "TOKENBUDGET_SCRAPE_CA_FILE")]
    pub scrape_ca_file: Option<PathBuf>,

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
    pub prometheus_lookback: std::time::Duration,
}

/// `--prometheus-lookback`: a duration from 1s to 1h.
fn lookback(text: &str) -> Result<std::time::Duration, String> {
    let d = crate::validate::parse_duration(text).map_err(|e| e.to_string())?;
    if !(1..=3600).contains(&d.as_secs()) {
        return Err(format!("{text:?} is not from 1s to 1h"));
    }
    Ok(d)
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
        assert_eq!(options.instance, None);
        assert!(options.scrape_ca.is_none());
    }

    #[test]
    fn every_flag_as_value_or_with_equals() {
        let want = Cli {
            bind_address: "127.0.0.1:9090".parse().unwrap(),
            namespace: Some("agents".into()),
            max_concurrent_scrapes: 8,
            max_concurrent_scrapes_per_namespace: Some(2),
            max_body_bytes: 1024,
            scrape_ca_file: Some("/etc/ca.pem".into()),
            prometheus_url: None,
            prometheus_bearer_token_file: None,
            prometheus_ca_file: None,
            prometheus_lookback: std::time::Duration::from_secs(120),
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
            "--scrape-ca-file",
            "/etc/ca.pem",
        ]);
        assert_eq!(separate.unwrap(), want);
        let equals = parse(&[
            "--bind-address=127.0.0.1:9090",
            "--namespace=agents",
            "--max-concurrent-scrapes=8",
            "--max-concurrent-scrapes-per-namespace=2",
            "--max-body-bytes=1024",
            "--scrape-ca-file=/etc/ca.pem",
        ]);
        assert_eq!(equals.unwrap(), want);
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
        let err = parse(&["agents"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnknownArgument);
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
            "-V, --version",
            "LOG_FORMAT=json",
        ] {
            assert!(help.contains(line), "{line:?} in:\n{help}");
        }
    }
}
