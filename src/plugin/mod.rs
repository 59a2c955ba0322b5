//! The `kubectl tokenbudget` plugin: what it is asked to do ([`parse_args`]) and how budgets
//! look on a terminal ([`render`]). Both are pure; the binary (`src/bin/kubectl-tokenbudget.rs`)
//! only adds the API calls, the clock and stdout.

pub mod render;

/// The plugin's help text.
pub const USAGE: &str = "\
kubectl tokenbudget: how much of their TokenBudgets your LLM workloads have spent

USAGE:
  kubectl tokenbudget status [NAME] [-n NAMESPACE | -A]
  kubectl tokenbudget top [--budget NAME] [-n NAMESPACE | -A]
  kubectl tokenbudget version

COMMANDS:
  status      every TokenBudget in the namespace, one line each: usage, phase, burn rate,
              projected exhaustion and reset; with NAME, everything about that budget
  top         the workloads that spent the most tokens this period, largest first
  version     the plugin's version

FLAGS:
  -n, --namespace NS     the namespace (default: the kubeconfig context's namespace)
  -A, --all-namespaces   every namespace
      --budget NAME      top: only the workloads of this budget
      --kubeconfig PATH  the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)
      --context NAME     the kubeconfig context (default: the current context)
  -h, --help             this help

Colours are used when stdout is a terminal, unless NO_COLOR is set.";

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
    },
    /// `top [--budget NAME]`.
    Top {
        scope: Scope,
        budget: Option<String>,
    },
    Version,
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
/// as `--flag value`, `--flag=value` or (for `-n`) `-nNS`, as kubectl accepts them. Errors are
/// one line.
pub fn parse_args<I, S>(args: I) -> Result<Invocation, String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut args = args.into_iter().map(Into::into);
    let mut command: Option<String> = None;
    let mut positional: Vec<String> = Vec::new();
    let (mut namespace, mut all, mut budget, mut kubeconfig, mut context) = (None, false, None, None, None);
    let mut help = false;

    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with('-') => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            let v = inline.clone().or_else(|| args.next());
            match v {
                Some(v) if !v.is_empty() => Ok(v),
                _ => Err(format!("flag {flag} needs a value")),
            }
        };
        match flag.as_str() {
            "-n" | "--namespace" => namespace = Some(value()?),
            "-A" | "--all-namespaces" => all = true,
            "--budget" => budget = Some(value()?),
            "--kubeconfig" => kubeconfig = Some(value()?),
            "--context" => context = Some(value()?),
            "-h" | "--help" => help = true,
            "--version" => command = command.or(Some("version".into())),
            f if f.starts_with("-n") && f.len() > 2 && !f.starts_with("--") => namespace = Some(f[2..].to_string()),
            f if f.starts_with('-') && f != "-" => return Err(format!("unknown flag {f:?}")),
            _ if command.is_none() => command = Some(arg),
            _ => positional.push(arg),
        }
    }

    let scope = match (all, namespace) {
        // As kubectl: -A wins over -n.
        (true, _) => Scope::AllNamespaces,
        (false, Some(ns)) => Scope::Namespace(ns),
        (false, None) => Scope::ContextNamespace,
    };
    let budget_given = budget.is_some();
    let command = match command.as_deref() {
        _ if help => Command::Help,
        None | Some("help") => Command::Help,
        Some("version") => Command::Version,
        Some("status") => {
            if positional.len() > 1 {
                return Err(format!("status takes at most one budget name, got {positional:?}"));
            }
            let name = positional.pop();
            if name.is_some() && scope == Scope::AllNamespaces {
                return Err("a TokenBudget cannot be retrieved by name across all namespaces: use -n".into());
            }
            Command::Status { scope, name }
        }
        Some("top") => {
            if let Some(extra) = positional.first() {
                return Err(format!("top takes no arguments (got {extra:?}): use --budget NAME"));
            }
            Command::Top { scope, budget }
        }
        Some(other) => return Err(format!("unknown command {other:?}: use status, top or version")),
    };
    if budget_given && !matches!(command, Command::Top { .. } | Command::Help) {
        return Err("--budget only applies to top".into());
    }
    if !positional.is_empty() && !matches!(command, Command::Status { .. } | Command::Help) {
        return Err(format!("unexpected arguments {positional:?}"));
    }
    Ok(Invocation {
        command,
        kubeconfig,
        context,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Command, String> {
        parse_args(line.split_whitespace()).map(|i| i.command)
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
                name: None
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
                    name: Some("research".into())
                },
                "{line}"
            );
        }
        assert_eq!(
            parse("status -A").unwrap(),
            Command::Status {
                scope: Scope::AllNamespaces,
                name: None
            }
        );
        // As kubectl: -A wins over -n.
        assert_eq!(
            parse("status -n x --all-namespaces").unwrap(),
            Command::Status {
                scope: Scope::AllNamespaces,
                name: None
            }
        );
    }

    #[test]
    fn top_with_and_without_a_budget() {
        assert_eq!(
            parse("top -A --budget research").unwrap(),
            Command::Top {
                scope: Scope::AllNamespaces,
                budget: Some("research".into())
            }
        );
        assert_eq!(
            parse("top --budget=research -n a").unwrap(),
            Command::Top {
                scope: ns("a"),
                budget: Some("research".into())
            }
        );
    }

    #[test]
    fn help_version_and_kubeconfig_flags() {
        assert_eq!(parse("").unwrap(), Command::Help);
        assert_eq!(parse("help").unwrap(), Command::Help);
        assert_eq!(parse("status --help").unwrap(), Command::Help);
        assert_eq!(parse("-h").unwrap(), Command::Help);
        assert_eq!(parse("version").unwrap(), Command::Version);
        assert_eq!(parse("--version").unwrap(), Command::Version);
        let inv = parse_args(["status", "--kubeconfig", "/k", "--context=dev"]).unwrap();
        assert_eq!(
            (inv.kubeconfig.as_deref(), inv.context.as_deref()),
            (Some("/k"), Some("dev"))
        );
    }

    #[test]
    fn mistakes_are_one_line_errors() {
        for (line, want) in [
            ("status -n", "flag -n needs a value"),
            ("status --namespace=", "flag --namespace needs a value"),
            ("status --colour", "unknown flag \"--colour\""),
            ("stats", "unknown command \"stats\": use status, top or version"),
            ("status a b", "status takes at most one budget name, got [\"a\", \"b\"]"),
            (
                "status -A research",
                "a TokenBudget cannot be retrieved by name across all namespaces: use -n",
            ),
            (
                "top research",
                "top takes no arguments (got \"research\"): use --budget NAME",
            ),
            ("status --budget x", "--budget only applies to top"),
            ("version x", "unexpected arguments [\"x\"]"),
        ] {
            let err = parse(line).unwrap_err();
            assert_eq!(err, want, "{line}");
            assert!(!err.contains('\n'));
        }
    }
}
