//! The `kubectl tokenbudget` plugin: what it is asked to do ([`parse_args`]) and how budgets
//! look on a terminal ([`render`]). Both are pure; the binary (`src/bin/kubectl-tokenbudget.rs`)
//! only adds the API calls, the clock and stdout.

pub mod render;
pub mod report;

use std::ffi::OsString;

use clap::{
    Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum,
    builder::NonEmptyStringValueParser,
    error::{ContextKind, ContextValue, ErrorKind},
};
pub use clap_complete::Shell;

pub use report::{Bound, GroupBy, PeriodRange, ReportOutput, ReportRequest};

/// The name kubectl finds the plugin by on PATH: shells complete this name.
pub const BINARY: &str = "kubectl-tokenbudget";

/// The command line. `--version` and the completion scripts name the binary; help and
/// errors name it `kubectl tokenbudget`, the way users call it (see [`command`]).
#[derive(Debug, Parser)]
#[command(
    name = BINARY,
    version,
    max_term_width = 100,
    // Anything else is an unknown command, told as such (see `parse_args`).
    allow_external_subcommands = true,
    about = "kubectl tokenbudget: how much of their TokenBudgets your LLM workloads have spent",
    override_usage = "\
kubectl tokenbudget status [NAME] [-n NAMESPACE | -A] [-o json|yaml|wide] [--no-headers] [-w]
       kubectl tokenbudget top [--budget NAME] [-n NAMESPACE | -A] [-o json|yaml|wide] [--no-headers] [-w]
       kubectl tokenbudget report [NAME] [-n NAMESPACE | -A] [--by budget|namespace|workload|model]
                                  [--from DATE|TIME] [--to DATE|TIME] [--last N] [--include-current]
                                  [-o table|csv|json] [--no-headers]
       kubectl tokenbudget report --pool NAME [--by child|namespace|model] [--from DATE|TIME] [--to DATE|TIME]
                                  [--last N] [--include-current] [-o table|csv|json] [--no-headers]
       kubectl tokenbudget version
       kubectl tokenbudget completion bash|zsh|fish",
    after_help = "Colours are used when stdout is a terminal, unless NO_COLOR is set."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,

    /// the namespace (default: the kubeconfig context's namespace)
    #[arg(short = 'n', long, global = true, value_name = "NS", value_parser = NonEmptyStringValueParser::new())]
    namespace: Option<String>,

    /// every namespace (wins over -n)
    #[arg(short = 'A', long, global = true)]
    all_namespaces: bool,

    /// the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)
    #[arg(long, global = true, value_name = "PATH", value_parser = NonEmptyStringValueParser::new())]
    kubeconfig: Option<String>,

    /// the kubeconfig context (default: the current context)
    #[arg(long, global = true, value_name = "NAME", value_parser = NonEmptyStringValueParser::new())]
    context: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// every TokenBudget in the namespace, one line each: usage, phase, burn rate, projected
    /// exhaustion and reset; with NAME, everything about that budget
    Status {
        /// the TokenBudget to describe
        name: Option<String>,
        #[command(flatten)]
        view: ViewFlags,
    },
    /// the workloads that spent the most tokens this period, largest first
    Top {
        /// only the workloads of this budget
        #[arg(long, value_name = "NAME", value_parser = NonEmptyStringValueParser::new())]
        budget: Option<String>,
        /// A budget name given as for `status`: told to use --budget.
        #[arg(hide = true)]
        name: Option<String>,
        #[command(flatten)]
        view: ViewFlags,
    },
    /// chargeback: what the ended periods of the budgets used and cost (status.history), by
    /// budget, namespace, workload or model, with totals per currency; with --pool, those of a
    /// ClusterTokenBudget, by child (its TokenBudgets), namespace or model
    #[command(after_help = "\
A DATE is midnight at the start of that day in each budget's own time zone (spec.period.timezone;
with --pool, the pool's); a TIME is an RFC 3339 instant. A period is in the range when it starts in
it: --from inclusive, --to exclusive, so consecutive ranges never count a period twice or miss one.
Example, November per team: kubectl tokenbudget report -A --by namespace --from 2026-11-01 --to 2026-12-01
Example, a department's last month: kubectl tokenbudget report --pool research --by child --last 1")]
    Report {
        /// only this TokenBudget
        name: Option<String>,
        /// the periods of this ClusterTokenBudget (a pool, cluster-scoped) instead of budgets
        #[arg(
            long,
            value_name = "NAME",
            value_parser = NonEmptyStringValueParser::new(),
            conflicts_with_all = ["name", "namespace", "all_namespaces"]
        )]
        pool: Option<String>,
        /// what one row adds up [default: budget; with --pool: child]
        #[arg(long, value_enum, value_name = "GROUP")]
        by: Option<GroupBy>,
        /// periods that start at or after this date or time
        #[arg(long, value_name = "DATE|TIME", value_parser = report::parse_bound)]
        from: Option<Bound>,
        /// periods that start before this date or time
        #[arg(long, value_name = "DATE|TIME", value_parser = report::parse_bound)]
        to: Option<Bound>,
        /// only the N most recent ended periods of each budget, or of the pool (in the range)
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
        last: Option<u16>,
        /// also the current period, so far (when it starts in the range)
        #[arg(long)]
        include_current: bool,
        /// the output format
        #[arg(short = 'o', long, value_enum, value_name = "FORMAT", default_value_t = ReportOutput::Table)]
        output: ReportOutput,
        /// no header line (table and csv)
        #[arg(long)]
        no_headers: bool,
    },
    /// the plugin's version
    Version,
    /// a shell completion script for kubectl-tokenbudget, on stdout
    #[command(after_help = "\
bash: source <(kubectl-tokenbudget completion bash)
zsh:  kubectl-tokenbudget completion zsh > \"${fpath[1]}/_kubectl-tokenbudget\"
fish: kubectl-tokenbudget completion fish > ~/.config/fish/completions/kubectl-tokenbudget.fish")]
    Completion {
        /// the shell
        #[arg(value_enum)]
        shell: Shell,
    },
    #[command(external_subcommand)]
    Unknown(Vec<String>),
}

/// The kubectl output flags of `status` and `top`.
#[derive(Debug, Args)]
struct ViewFlags {
    /// the output format: the objects as json or yaml, or the table with more columns
    #[arg(short = 'o', long, value_enum, value_name = "FORMAT")]
    output: Option<ListOutput>,
    /// no header line
    #[arg(long)]
    no_headers: bool,
    /// after the table, a line for each change, until interrupted
    #[arg(short = 'w', long)]
    watch: bool,
}

impl From<ViewFlags> for View {
    fn from(flags: ViewFlags) -> Self {
        Self {
            output: flags.output.unwrap_or_default(),
            no_headers: flags.no_headers,
            watch: flags.watch,
        }
    }
}

/// How `status` and `top` print: `-o`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ListOutput {
    /// Without `-o`.
    #[default]
    #[value(skip)]
    Table,
    /// The TokenBudgets as kubectl prints them: one object for a named budget, else a `v1 List`.
    Json,
    Yaml,
    /// The table with more columns.
    Wide,
}

/// `-o`, `--no-headers` and `-w` of `status` and `top`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct View {
    pub output: ListOutput,
    pub no_headers: bool,
    pub watch: bool,
}

/// Which namespaces a command looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The namespace of the kubeconfig context, as kubectl does without `-n`.
    ContextNamespace,
    /// `-n NS`.
    Namespace(String),
    /// `-A`.
    AllNamespaces,
}

/// What the plugin was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `status [NAME]`.
    Status {
        scope: Scope,
        name: Option<String>,
        view: View,
    },
    /// `top [--budget NAME]`.
    Top {
        scope: Scope,
        budget: Option<String>,
        view: View,
    },
    /// `report [NAME]`.
    Report {
        scope: Scope,
        name: Option<String>,
        request: ReportRequest,
    },
    /// `report --pool NAME`: a ClusterTokenBudget's periods (cluster-scoped: no namespace).
    ReportPool { pool: String, request: ReportRequest },
    /// `version`.
    Version,
    /// `completion SHELL`.
    Completion(Shell),
    /// No command: the help.
    Help,
}

/// A parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    /// `--kubeconfig`.
    pub kubeconfig: Option<String>,
    /// `--context`.
    pub context: Option<String>,
}

/// Parses the arguments after the program name. Flags may come before or after the command,
/// as `--flag value`, `--flag=value` or (for `-n`) `-nNS`, as kubectl accepts them.
///
/// `--help` and `--version` (anywhere) are errors of kind [`ErrorKind::DisplayHelp`] and
/// [`ErrorKind::DisplayVersion`] whose text is the answer, for stdout ([`clap::Error::use_stderr`]
/// is false). The others are mistakes: [`one_line`] says each in a line.
pub fn parse_args<I, S>(args: I) -> Result<Invocation, clap::Error>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString> + Clone,
{
    let args = std::iter::once(OsString::from(BINARY)).chain(args.into_iter().map(Into::into));
    let cli = Cli::from_arg_matches(&command().try_get_matches_from(args)?)?;
    let scoped = cli.all_namespaces || cli.namespace.is_some();
    let scope = match (cli.all_namespaces, cli.namespace) {
        // As kubectl: -A wins over -n.
        (true, _) => Scope::AllNamespaces,
        (false, Some(ns)) => Scope::Namespace(ns),
        (false, None) => Scope::ContextNamespace,
    };
    let command = match cli.command {
        None => Command::Help,
        Some(Sub::Version) => Command::Version,
        Some(Sub::Completion { shell }) => Command::Completion(shell),
        Some(Sub::Status { name, view }) => {
            by_name_in_one_namespace(&name, &scope)?;
            Command::Status {
                scope,
                name,
                view: view.into(),
            }
        }
        Some(Sub::Top { name: Some(name), .. }) => {
            return Err(mistake(
                ErrorKind::UnknownArgument,
                &format!("top takes no arguments (got {name:?}): use --budget NAME"),
            ));
        }
        Some(Sub::Top {
            budget,
            name: None,
            view,
        }) => Command::Top {
            scope,
            budget,
            view: view.into(),
        },
        Some(Sub::Report {
            name,
            pool,
            by,
            from,
            to,
            last,
            include_current,
            output,
            no_headers,
        }) => {
            by_name_in_one_namespace(&name, &scope)?;
            // clap sees -n and -A only after the command; given before it, they are told here.
            if pool.is_some() && scoped {
                return Err(mistake(
                    ErrorKind::ArgumentConflict,
                    "--pool takes no -n or -A: a ClusterTokenBudget is cluster-scoped",
                ));
            }
            let by = by.unwrap_or(GroupBy::default_for(pool.is_some()));
            by.check(pool.is_some())
                .map_err(|message| mistake(ErrorKind::ArgumentConflict, &message))?;
            let range = PeriodRange {
                from,
                to,
                last: last.map(usize::from),
                include_current,
            };
            range
                .check()
                .map_err(|message| mistake(ErrorKind::ArgumentConflict, &message))?;
            let request = ReportRequest {
                by,
                range,
                output,
                no_headers,
            };
            match pool {
                Some(pool) => Command::ReportPool { pool, request },
                None => Command::Report { scope, name, request },
            }
        }
        Some(Sub::Unknown(words)) => {
            let command = words.first().map(String::as_str).unwrap_or_default();
            return Err(mistake(
                ErrorKind::InvalidSubcommand,
                &format!("unknown command {command:?}: use status, top, report, version or completion"),
            ));
        }
    };
    Ok(Invocation {
        command,
        kubeconfig: cli.kubeconfig,
        context: cli.context,
    })
}

/// As kubectl: a name is looked up in one namespace.
fn by_name_in_one_namespace(name: &Option<String>, scope: &Scope) -> Result<(), clap::Error> {
    if name.is_some() && *scope == Scope::AllNamespaces {
        return Err(mistake(
            ErrorKind::ArgumentConflict,
            "a TokenBudget cannot be retrieved by name across all namespaces: use -n",
        ));
    }
    Ok(())
}

/// The command line as help and errors show it. Not in `#[command]`: the subcommands would
/// inherit the name with its space, which breaks the completion scripts.
fn command() -> clap::Command {
    Cli::command().bin_name("kubectl tokenbudget")
}

fn mistake(kind: ErrorKind, message: &str) -> clap::Error {
    command().error(kind, message)
}

/// The help that `kubectl tokenbudget --help` prints (also for no command at all).
pub fn help() -> String {
    command().render_help().to_string()
}

/// The completion script for `shell`. It completes `kubectl-tokenbudget`: shells complete
/// commands by their first word, and for `kubectl tokenbudget` that word is kubectl's.
pub fn completion(shell: Shell) -> String {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), BINARY, &mut script);
    let script = String::from_utf8_lossy(&script).into_owned();
    match shell {
        // clap_complete 4.6.12 spells the bash states of subcommands of a binary with a hyphen
        // in two ways ("kubectl__tokenbudget__subcmd__top" where it sets one, but
        // "kubectl__subcmd__tokenbudget__subcmd__top" where it matches it), so that nothing
        // after a subcommand completes (clap-rs/clap#6421). One spelling; a no-op once fixed.
        Shell::Bash => script.replace("kubectl__subcmd__tokenbudget", "kubectl__tokenbudget"),
        _ => script,
    }
}

/// A mistake on the command line in one line, as the plugin's other errors are: clap's own
/// text has a usage and a tip below it, which `--help` gives in full anyway.
pub fn one_line(error: &clap::Error) -> String {
    let context = |kind| match error.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(s)) => Some(s.join(", ")),
        _ => None,
    };
    // The flag of "--namespace <NS>".
    let flag = || context(ContextKind::InvalidArg).map(|a| a.split(' ').next().unwrap_or_default().to_string());
    match error.kind() {
        ErrorKind::UnknownArgument if error.get(ContextKind::InvalidArg).is_some() => {
            let arg = context(ContextKind::InvalidArg).unwrap_or_default();
            if arg.starts_with('-') {
                format!("unknown flag {arg:?}")
            } else {
                format!("unexpected argument {arg:?}")
            }
        }
        ErrorKind::InvalidValue if context(ContextKind::InvalidValue).is_some_and(|v| v.is_empty()) => {
            format!("flag {} needs a value", flag().unwrap_or_default())
        }
        ErrorKind::InvalidValue if error.get(ContextKind::ValidValue).is_some() => format!(
            "invalid value {:?} for {}: use {}",
            context(ContextKind::InvalidValue).unwrap_or_default(),
            context(ContextKind::InvalidArg).unwrap_or_default(),
            context(ContextKind::ValidValue).unwrap_or_default()
        ),
        ErrorKind::MissingRequiredArgument => {
            format!("missing {}", context(ContextKind::InvalidArg).unwrap_or_default())
        }
        _ => {
            let text = error.to_string();
            let first = text.lines().next().unwrap_or_default();
            first.strip_prefix("error: ").unwrap_or(first).to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Command, String> {
        parse_args(line.split_whitespace())
            .map(|i| i.command)
            .map_err(|e| one_line(&e))
    }

    /// What `--help` or `--version` print.
    fn answer(line: &str, kind: ErrorKind) -> String {
        let err = parse_args(line.split_whitespace()).unwrap_err();
        assert_eq!(err.kind(), kind, "{line}");
        assert!(!err.use_stderr(), "{line}");
        err.to_string()
    }

    fn ns(name: &str) -> Scope {
        Scope::Namespace(name.into())
    }

    #[test]
    fn status_in_the_context_namespace_a_named_one_or_all() {
        assert_eq!(
            parse("status").unwrap(),
            Command::Status {
                scope: Scope::ContextNamespace,
                name: None,
                view: View::default(),
            }
        );
        for line in [
            "status -n agents research",
            "-n agents status research",
            "status research --namespace=agents",
            "status -nagents research",
            "status --namespace agents research",
        ] {
            assert_eq!(
                parse(line).unwrap(),
                Command::Status {
                    scope: ns("agents"),
                    name: Some("research".into()),
                    view: View::default(),
                },
                "{line}"
            );
        }
        assert_eq!(
            parse("status -A").unwrap(),
            Command::Status {
                scope: Scope::AllNamespaces,
                name: None,
                view: View::default(),
            }
        );
        // As kubectl: -A wins over -n.
        assert_eq!(
            parse("status -n x --all-namespaces").unwrap(),
            Command::Status {
                scope: Scope::AllNamespaces,
                name: None,
                view: View::default(),
            }
        );
    }

    #[test]
    fn top_with_and_without_a_budget() {
        assert_eq!(
            parse("top -A --budget research").unwrap(),
            Command::Top {
                scope: Scope::AllNamespaces,
                budget: Some("research".into()),
                view: View::default(),
            }
        );
        assert_eq!(
            parse("top --budget=research -n a").unwrap(),
            Command::Top {
                scope: ns("a"),
                budget: Some("research".into()),
                view: View::default(),
            }
        );
    }

    #[test]
    fn output_flags_of_status_and_top() {
        let view = |output, no_headers, watch| View {
            output,
            no_headers,
            watch,
        };
        for (line, want) in [
            ("status -o json", view(ListOutput::Json, false, false)),
            ("status --output=yaml -w", view(ListOutput::Yaml, false, true)),
            ("status -owide --no-headers", view(ListOutput::Wide, true, false)),
            ("status --watch", view(ListOutput::Table, false, true)),
        ] {
            let Command::Status { view, .. } = parse(line).unwrap() else {
                panic!("{line}: not status");
            };
            assert_eq!(view, want, "{line}");
        }
        assert_eq!(
            parse("top --budget research -o wide -w -n a").unwrap(),
            Command::Top {
                scope: ns("a"),
                budget: Some("research".into()),
                view: view(ListOutput::Wide, false, true),
            }
        );
        assert_eq!(
            parse("status research -n a -o yaml").unwrap(),
            Command::Status {
                scope: ns("a"),
                name: Some("research".into()),
                view: view(ListOutput::Yaml, false, false),
            }
        );
    }

    #[test]
    fn report_defaults_and_ranges() {
        assert_eq!(
            parse("report").unwrap(),
            Command::Report {
                scope: Scope::ContextNamespace,
                name: None,
                request: ReportRequest::default(),
            }
        );
        let date = |s: &str| Bound::Date(s.parse().unwrap());
        let time = |s: &str| Bound::Time(s.parse().unwrap());
        assert_eq!(
            parse("report research -n agents --by workload --from 2026-09-01 --to 2026-12-01T00:00:00+01:00 --last 2 --include-current -o csv --no-headers").unwrap(),
            Command::Report {
                scope: ns("agents"),
                name: Some("research".into()),
                request: ReportRequest {
                    by: GroupBy::Workload,
                    range: PeriodRange {
                        from: Some(date("2026-09-01")),
                        to: Some(time("2026-11-30T23:00:00Z")),
                        last: Some(2),
                        include_current: true,
                    },
                    output: ReportOutput::Csv,
                    no_headers: true,
                },
            }
        );
        let Command::Report { scope, request, .. } = parse("report -A --by=model -ojson").unwrap() else {
            panic!("not a report");
        };
        assert_eq!(scope, Scope::AllNamespaces);
        assert_eq!((request.by, request.output), (GroupBy::Model, ReportOutput::Json));
        // A date and a time compare only in a budget's time zone: the report checks those.
        assert!(parse("report --from 2026-11-02 --to 2026-11-01T12:00:00Z").is_ok());
    }

    #[test]
    fn report_of_a_pool() {
        assert_eq!(
            parse("report --pool research").unwrap(),
            Command::ReportPool {
                pool: "research".into(),
                request: ReportRequest {
                    by: GroupBy::Child,
                    ..Default::default()
                },
            }
        );
        let Command::ReportPool { pool, request } =
            parse("report --pool=research --by namespace --last 1 --include-current -o csv").unwrap()
        else {
            panic!("not a pool's report");
        };
        assert_eq!(pool, "research");
        assert_eq!((request.by, request.output), (GroupBy::Namespace, ReportOutput::Csv));
        assert_eq!((request.range.last, request.range.include_current), (Some(1), true));
        for (line, by) in [
            ("report --pool research --by model", GroupBy::Model),
            ("--kubeconfig /k report --pool research --by child", GroupBy::Child),
        ] {
            let Command::ReportPool { request, .. } = parse(line).unwrap() else {
                panic!("{line}: not a pool's report");
            };
            assert_eq!(request.by, by, "{line}");
        }
        // Without --pool, the default stays budget.
        let Command::Report { request, .. } = parse("report -A").unwrap() else {
            panic!("not a report");
        };
        assert_eq!(request.by, GroupBy::Budget);
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_version_and_kubeconfig_flags() {
        assert_eq!(parse("").unwrap(), Command::Help);
        for line in ["--help", "-h", "help", "-n agents --help"] {
            let help = answer(line, ErrorKind::DisplayHelp);
            assert!(
                help.contains("kubectl tokenbudget status [NAME] [-n NAMESPACE | -A]"),
                "{line}: {help}"
            );
        }
        assert_eq!(answer("--help", ErrorKind::DisplayHelp), help());
        for line in ["status --help", "help status"] {
            let help = answer(line, ErrorKind::DisplayHelp);
            assert!(
                help.contains("Usage: kubectl tokenbudget status [OPTIONS] [NAME]"),
                "{line}: {help}"
            );
        }
        assert_eq!(parse("version").unwrap(), Command::Version);
        let version = format!("kubectl-tokenbudget {}\n", env!("CARGO_PKG_VERSION"));
        assert_eq!(answer("--version", ErrorKind::DisplayVersion), version);
        assert_eq!(answer("-V", ErrorKind::DisplayVersion), version);
        let inv = parse_args(["status", "--kubeconfig", "/k", "--context=dev"]).unwrap();
        assert_eq!(
            (inv.kubeconfig.as_deref(), inv.context.as_deref()),
            (Some("/k"), Some("dev"))
        );
    }

    #[test]
    fn completion_scripts_complete_the_binary() {
        for (line, shell) in [
            ("completion bash", Shell::Bash),
            ("completion zsh", Shell::Zsh),
            ("completion fish", Shell::Fish),
        ] {
            assert_eq!(parse(line).unwrap(), Command::Completion(shell), "{line}");
        }
        let bash = completion(Shell::Bash);
        assert!(
            bash.contains("complete -F _kubectl__tokenbudget -o bashdefault -o default kubectl-tokenbudget"),
            "{bash}"
        );
        // Each state the script steps into (`cmd="..."`) has its own case (clap-rs/clap#6421).
        let states: Vec<&str> = bash
            .lines()
            .filter_map(|l| l.trim().strip_prefix("cmd=\"")?.strip_suffix('"'))
            .filter(|state| !state.is_empty())
            .collect();
        assert!(states.contains(&"kubectl__tokenbudget__subcmd__top"), "{states:?}");
        for state in states {
            assert!(
                bash.contains(&format!("\n        {state})\n")),
                "no case for {state} in:\n{bash}"
            );
        }
        for script in [bash, completion(Shell::Zsh), completion(Shell::Fish)] {
            for word in [
                "status",
                "top",
                "report",
                "all-namespaces",
                "budget",
                "completion",
                "no-headers",
                "watch",
                "include-current",
                "wide",
                "csv",
                "namespace",
                "workload",
            ] {
                assert!(script.contains(word), "{word} in {script}");
            }
            assert!(!script.contains("kubectl tokenbudget"), "{script}");
        }
        assert_eq!(
            parse("completion tcsh").unwrap_err(),
            "invalid value \"tcsh\" for <SHELL>: use bash, elvish, fish, powershell, zsh"
        );
    }

    #[test]
    fn mistakes_are_one_line_errors() {
        for (line, want) in [
            ("status -n", "flag --namespace needs a value"),
            ("status --namespace=", "flag --namespace needs a value"),
            ("status --colour", "unknown flag \"--colour\""),
            (
                "stats",
                "unknown command \"stats\": use status, top, report, version or completion",
            ),
            ("status a b", "unexpected argument \"b\""),
            (
                "status -A research",
                "a TokenBudget cannot be retrieved by name across all namespaces: use -n",
            ),
            (
                "top research",
                "top takes no arguments (got \"research\"): use --budget NAME",
            ),
            ("status --budget x", "unknown flag \"--budget\""),
            ("version x", "unexpected argument \"x\""),
            ("completion", "missing <SHELL>"),
            (
                "status -o xml",
                "invalid value \"xml\" for --output <FORMAT>: use json, yaml, wide",
            ),
            (
                "top -o csv",
                "invalid value \"csv\" for --output <FORMAT>: use json, yaml, wide",
            ),
            (
                "report -o yaml",
                "invalid value \"yaml\" for --output <FORMAT>: use table, csv, json",
            ),
            (
                "report --by team",
                "invalid value \"team\" for --by <GROUP>: use budget, namespace, workload, model, child",
            ),
            ("report -w", "unknown flag \"-w\""),
            ("version -o json", "unknown flag \"-o\""),
            (
                "report --from 2026-12-01 --to 2026-11-01",
                "--from 2026-12-01 is not before --to 2026-11-01: no period can start in that range",
            ),
            (
                "report --from 2026-11-01T00:00:00Z --to 2026-11-01T00:00:00Z",
                "--from 2026-11-01T00:00:00Z is not before --to 2026-11-01T00:00:00Z: no period can start in that range",
            ),
            (
                "report --from 2026-13-01",
                "invalid value '2026-13-01' for '--from <DATE|TIME>': use a date (2026-11-01) or an RFC 3339 time (2026-11-01T00:00:00Z)",
            ),
            (
                "report --to yesterday",
                "invalid value 'yesterday' for '--to <DATE|TIME>': use a date (2026-11-01) or an RFC 3339 time (2026-11-01T00:00:00Z)",
            ),
            (
                "report --last 0",
                "invalid value '0' for '--last <N>': 0 is not in 1..=65535",
            ),
            (
                "report -A research",
                "a TokenBudget cannot be retrieved by name across all namespaces: use -n",
            ),
            (
                "report research --pool dept",
                "the argument '[NAME]' cannot be used with '--pool <NAME>'",
            ),
            (
                "report --pool dept -n team-a",
                "the argument '--pool <NAME>' cannot be used with '--namespace <NS>'",
            ),
            (
                "report --pool dept -A",
                "the argument '--pool <NAME>' cannot be used with '--all-namespaces'",
            ),
            (
                "-n team-a report --pool dept",
                "--pool takes no -n or -A: a ClusterTokenBudget is cluster-scoped",
            ),
            (
                "-A report --pool dept",
                "--pool takes no -n or -A: a ClusterTokenBudget is cluster-scoped",
            ),
            ("report --pool=", "flag --pool needs a value"),
            (
                "report --pool dept --by workload",
                "--by workload does not go with --pool: a pool's history does not list workloads; \
                 run report -n NAMESPACE --by workload on the team's budget",
            ),
            (
                "report --pool dept --by budget",
                "--by budget does not go with --pool: a pool's budgets are its children, use --by child \
                 (or report -A --by budget for every budget's own periods)",
            ),
            (
                "report -A --by child",
                "--by child is for a pool's children: use it with --pool NAME",
            ),
        ] {
            let err = parse(line).unwrap_err();
            assert_eq!(err, want, "{line}");
            assert!(!err.contains('\n'));
        }
    }
}
