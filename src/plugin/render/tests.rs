//! The views, rendered from `fixtures/budgets.yaml` at a fixed `now`.

use serde::Deserialize;

use super::*;

/// Every budget of the fixture file.
fn fixtures() -> Vec<TokenBudget> {
    serde_yaml::Deserializer::from_str(include_str!("../fixtures/budgets.yaml"))
        .map(|doc| TokenBudget::deserialize(doc).expect("fixture parses"))
        .collect()
}

fn in_namespace(ns: &str) -> Vec<TokenBudget> {
    fixtures()
        .into_iter()
        .filter(|b| b.namespace().as_deref() == Some(ns))
        .collect()
}

fn named(name: &str) -> TokenBudget {
    fixtures()
        .into_iter()
        .find(|b| b.name_any() == name)
        .unwrap_or_else(|| panic!("no fixture {name}"))
}

const PLAIN: Options = Options {
    now: Timestamp::constant(1_795_806_000, 0), // 2026-11-27T19:00:00Z
    color: false,
    wide: false,
    no_headers: false,
};

const COLOR: Options = Options { color: true, ..PLAIN };

/// A multi-line expectation written from its second line on.
fn text(s: &str) -> &str {
    s.strip_prefix('\n').unwrap_or(s)
}

#[test]
fn the_fixed_clock_is_the_one_the_fixtures_assume() {
    assert_eq!(PLAIN.now.to_string(), "2026-11-27T19:00:00Z");
}

#[test]
fn status_lists_one_line_per_budget_sorted_by_name() {
    let out = status_list(&in_namespace("agents"), Listing::Namespace("agents"), &PLAIN);
    assert_eq!(out.stderr, "");
    assert_eq!(
        out.stdout,
        text(
            "
NAME       USAGE                  %USED   TOKENS        COST                PHASE       BURN      EXHAUSTS   RESETS
archive    ██░░░░░░░░░░░░░░░░░░   9%      1M/10M        -                   Active      40/h      -          never
fresh      ░░░░░░░░░░░░░░░░░░░░   -       -/2k          -                   -           -         -          -
frozen     ████████████████████   100%    100.3k/100k   -                   Exhausted   0/h       -          in 1h
money      ███░░░░░░░░░░░░░░░░░   13%     1.1M          1.30/10.00 EUR      Active      250k/h    -          in 5h
research   █████████████████░░░   84%     4.2M/5M       105.00/250.00 USD   Warning     12.3k/h   in 2h13m   in 3d4h
starter    ██░░░░░░░░░░░░░░░░░░   12%     120k/1M       -                   Active      3.6k/h    -          in 3d5h
"
        )
    );
}

#[test]
fn the_cost_column_appears_only_when_a_budget_has_a_cost_limit() {
    let out = status_list(&in_namespace("ops"), Listing::Namespace("ops"), &PLAIN);
    assert_eq!(
        out.stdout,
        text(
            "
NAME      USAGE                  %USED   TOKENS   PHASE    BURN    EXHAUSTS   RESETS
ci-bots   █░░░░░░░░░░░░░░░░░░░   4%      2k/50k   Active   100/h   -          in 2d5h
"
        )
    );
}

#[test]
fn all_namespaces_adds_the_namespace_column() {
    let out = status_list(&fixtures(), Listing::AllNamespaces, &PLAIN);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 8);
    assert!(lines[0].starts_with("NAMESPACE   NAME       USAGE"), "{}", lines[0]);
    assert!(lines[1].starts_with("agents      archive    ██"), "{}", lines[1]);
    assert_eq!(
        lines[7],
        "ops         ci-bots    █░░░░░░░░░░░░░░░░░░░   4%      2k/50k        -                   Active      100/h     -          in 2d5h"
    );
}

#[test]
fn an_empty_list_says_so_on_stderr_like_kubectl() {
    let out = status_list(&[], Listing::Namespace("agents"), &PLAIN);
    assert_eq!(
        out,
        Rendered {
            stdout: String::new(),
            stderr: "No TokenBudgets found in namespace agents.\n".into()
        }
    );
    let out = status_list(&[], Listing::AllNamespaces, &PLAIN);
    assert_eq!(out.stderr, "No TokenBudgets found.\n");
    let out = top(&[], Listing::Namespace("x"), None, &PLAIN);
    assert_eq!(out.stderr, "No TokenBudgets found in namespace x.\n");
}

#[test]
fn colours_follow_the_phase_and_never_shift_the_columns() {
    let budgets = in_namespace("agents");
    let plain = status_list(&budgets, Listing::Namespace("agents"), &PLAIN).stdout;
    let colored = status_list(&budgets, Listing::Namespace("agents"), &COLOR).stdout;
    assert!(!plain.contains('\x1b'));
    let research = colored.lines().find(|l| l.starts_with("research")).unwrap();
    assert!(research.contains("\x1b[33m█████████████████░░░\x1b[0m"), "{research:?}");
    assert!(research.contains("\x1b[33mWarning\x1b[0m"), "{research:?}");
    let frozen = colored.lines().find(|l| l.starts_with("frozen")).unwrap();
    assert!(frozen.contains("\x1b[31mExhausted\x1b[0m"), "{frozen:?}");
    let starter = colored.lines().find(|l| l.starts_with("starter")).unwrap();
    assert!(starter.contains("\x1b[32mActive\x1b[0m"), "{starter:?}");
    // Without a phase there is nothing to colour.
    let fresh = colored.lines().find(|l| l.starts_with("fresh")).unwrap();
    assert!(!fresh.contains('\x1b'), "{fresh:?}");
    // Stripping the escapes gives back the plain table exactly.
    let stripped = colored
        .replace("\x1b[31m", "")
        .replace("\x1b[32m", "")
        .replace("\x1b[33m", "")
        .replace("\x1b[0m", "");
    assert_eq!(stripped, plain);
}

#[test]
fn detail_of_a_budget_with_both_limits() {
    assert_eq!(
        status_detail(&named("research"), &PLAIN),
        text(
            "
Name:          research
Namespace:     agents
Phase:         Warning
Usage:         █████████████████░░░ 84% of the tighter limit
Limits:        5,000,000 tokens (input + output) and 250.00 USD per month
Used tokens:   4,200,000 of 5,000,000 (84%), 800,000 left
  input:       3,500,000
  output:      700,000
Used cost:     105.00 of 250.00 USD (42%)
Burn rate:     12.3k/h (12,345 tokens per hour)
Exhaustion:    in 2h13m (2026-11-27T21:13:00Z)
Period:        Monthly in Europe/Berlin
Period start:  2026-11-01T00:00:00+01:00
Resets:        in 3d4h (2026-12-01T00:00:00+01:00)
Thresholds:    50%, 80%, 95%
Enforcement:   Annotate
Models:
  MODEL         INPUT       OUTPUT    COST
  gpt-4o        3,000,000   600,000   13.50 USD
  gpt-4o-mini   500,000     100,000   2.25 USD
Workloads:
  KIND         NAME           TOKENS      SHARE%
  Deployment   summarizer     3,000,000   71.4%
  Job          nightly-eval   1,200,000   28.6%
Conditions:
  TYPE               STATUS   REASON             AGE      MESSAGE
  Ready              True     Reconciled         7d       The budget is reconciled
  ThresholdReached   True     ThresholdReached   2h13m    84% used: the 80% threshold is crossed
  Exhausted          False    WithinBudget       26d19h
"
        )
    );
}

#[test]
fn detail_of_an_exhausted_budget_shows_what_is_enforced() {
    let out = status_detail(&named("frozen"), &PLAIN);
    for line in [
        "Phase:         Exhausted\n",
        "Usage:         ████████████████████ 100% of the tighter limit\n",
        "Used tokens:   100,250 of 100,000 (100%), 0 left\n",
        "Exhaustion:    exhausted\n",
        "Resets:        in 1h (2026-11-27T20:00:00Z)\n",
        "Enforcement:   ScaleDown, grace period 5m, freezes the compute quota when exhausted\n",
        "Enforced:\n  KIND         NAME      ACTION      SINCE\n  Deployment   scraper   ScaleDown   5m ago\n",
        "  Exhausted   True     LimitReached   10m   100,250 of 100,000 tokens used\n",
    ] {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }
    let colored = status_detail(&named("frozen"), &COLOR);
    assert!(
        colored.contains("Phase:         \x1b[31mExhausted\x1b[0m\n"),
        "{colored}"
    );
}

#[test]
fn detail_of_a_cost_only_budget() {
    assert_eq!(
        status_detail(&named("money"), &PLAIN),
        text(
            "
Name:         money
Namespace:    agents
Phase:        Active
Usage:        ███░░░░░░░░░░░░░░░░░ 13% of the tighter limit
Limits:       10.00 EUR per day
Used tokens:  1,100,000
  input:      1,000,000
  output:     100,000
Used cost:    1.30 of 10.00 EUR (13%)
Burn rate:    250k/h (250,000 tokens per hour)
Exhaustion:   - (not before the reset at the current burn rate)
Period:       Daily in UTC
Resets:       in 5h (2026-11-28T00:00:00Z)
Thresholds:   80%
Enforcement:  Annotate
Models:
  MODEL           INPUT       OUTPUT    COST
  mistral-large   1,000,000   100,000   1.30 EUR
Workloads:  <none>
Conditions:  <none>
"
        )
    );
}

#[test]
fn detail_of_a_budget_that_never_resets() {
    let out = status_detail(&named("archive"), &PLAIN);
    for line in [
        "Limits:        10,000,000 tokens (input + output) in total\n",
        "Exhaustion:    -\n",
        "Period:        Never (usage never resets)\n",
        "Resets:        never\n",
    ] {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }
}

#[test]
fn detail_without_a_status() {
    assert_eq!(
        status_detail(&named("fresh"), &PLAIN),
        text(
            "
Name:         fresh
Namespace:    agents
Status:       none yet: the operator has not reported on this budget (is tokenbudget-operator running?)
Limits:       2,000 tokens (input + output) per month
Period:       Monthly in UTC
Resets:       -
Thresholds:   80%
Enforcement:  Annotate
Models:  <none>
Workloads:  <none>
Conditions:  <none>
"
        )
    );
}

#[test]
fn detail_says_when_the_status_is_behind_the_spec() {
    let mut b = named("research");
    b.metadata.generation = Some(4);
    let out = status_detail(&b, &PLAIN);
    assert!(
        out.contains("Observed:      generation 3 of 4: the operator has not caught up with the last change\n"),
        "{out}"
    );
    assert!(!status_detail(&named("research"), &PLAIN).contains("Observed:"));
}

#[test]
fn top_lists_workloads_largest_first() {
    let out = top(&in_namespace("agents"), Listing::Namespace("agents"), None, &PLAIN);
    assert_eq!(out.stderr, "");
    assert_eq!(
        out.stdout,
        text(
            "
BUDGET     KIND          NAME           TOKENS    SHARE%
research   Deployment    summarizer     3000000   71.4%
research   Job           nightly-eval   1200000   28.6%
starter    StatefulSet   chat-agent     120000    100.0%
frozen     Deployment    scraper        100250    100.0%
"
        )
    );
}

#[test]
fn top_across_namespaces_and_for_one_budget() {
    let out = top(&fixtures(), Listing::AllNamespaces, None, &PLAIN);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "NAMESPACE   BUDGET     KIND          NAME           TOKENS    SHARE%"
    );
    assert_eq!(
        lines[5],
        "ops         ci-bots    CronJob       triage         1500      75.0%"
    );
    assert_eq!(lines.len(), 7);

    let out = top(&[named("ci-bots")], Listing::Namespace("ops"), Some("ci-bots"), &PLAIN);
    assert_eq!(
        out.stdout,
        text(
            "
BUDGET    KIND      NAME     TOKENS   SHARE%
ci-bots   CronJob   triage   1500     75.0%
ci-bots   Job       lint     500      25.0%
"
        )
    );
}

#[test]
fn top_without_workload_usage_says_so() {
    let out = top(&[named("money")], Listing::Namespace("agents"), Some("money"), &PLAIN);
    assert_eq!(out.stdout, "");
    assert_eq!(out.stderr, "No workload usage recorded yet for TokenBudget money.\n");
    let out = top(&[named("fresh")], Listing::Namespace("agents"), None, &PLAIN);
    assert_eq!(out.stderr, "No workload usage recorded yet in namespace agents.\n");
}

#[test]
fn bars_round_to_the_nearest_cell_and_stop_at_full() {
    let filled = |p| bar(Some(p)).chars().filter(|&c| c == '█').count();
    assert_eq!(bar(None), "░".repeat(BAR_CELLS));
    assert_eq!(bar(Some(0)), "░".repeat(BAR_CELLS));
    assert_eq!(bar(Some(40)), "████████░░░░░░░░░░░░");
    assert_eq!(
        (filled(2), filled(3), filled(97), filled(100), filled(250)),
        (0, 1, 19, 20, 20)
    );
    assert_eq!(filled(-5), 0);
    assert!((0..=100).all(|p| bar(Some(p)).chars().count() == BAR_CELLS));
}

#[test]
fn token_counts_humanized_and_grouped() {
    for (n, want) in [
        (0, "0"),
        (999, "999"),
        (1_000, "1k"),
        (1_050, "1.1k"),
        (12_345, "12.3k"),
        (999_949, "999.9k"),
        (999_950, "1M"),
        (4_200_000, "4.2M"),
        (1_500_000_000, "1.5G"),
        (i64::MAX, "9.2E"),
        (-12_345, "-12.3k"),
    ] {
        assert_eq!(human(n), want, "{n}");
    }
    for (n, want) in [
        (0, "0"),
        (999, "999"),
        (1_000, "1,000"),
        (5_000_000, "5,000,000"),
        (-1_234_567, "-1,234,567"),
        (i64::MIN, "-9,223,372,036,854,775,808"),
    ] {
        assert_eq!(grouped(n), want, "{n}");
    }
}

#[test]
fn durations_in_their_two_largest_units() {
    for (s, want) in [
        (0, "0s"),
        (45, "45s"),
        (60, "1m"),
        (330, "5m30s"),
        (3_600, "1h"),
        (7_980, "2h13m"),
        (86_400, "1d"),
        (273_600, "3d4h"),
        (273_659, "3d4h"),
    ] {
        assert_eq!(compact(s), want, "{s}");
    }
    let now = PLAIN.now;
    assert_eq!(relative(now, "2026-11-27T21:13:00Z"), "in 2h13m");
    assert_eq!(relative(now, "2026-12-01T00:00:00+01:00"), "in 3d4h");
    assert_eq!(relative(now, "2026-11-27T18:55:00Z"), "5m ago");
    assert_eq!(relative(now, "2026-11-27T19:00:00Z"), "now");
    assert_eq!(relative(now, "soon"), "soon");
}

#[test]
fn shares_of_the_budget_total() {
    assert_eq!(share(3_000_000, 4_200_000), "71.4%");
    assert_eq!(share(1, 3), "33.3%");
    assert_eq!(share(2, 3), "66.7%");
    assert_eq!(share(5, 0), "-");
}

const WIDE: Options = Options { wide: true, ..PLAIN };

const NO_HEADERS: Options = Options {
    no_headers: true,
    ..PLAIN
};

#[test]
fn wide_status_adds_the_token_types_the_period_and_the_enforcement() {
    let out = status_list(&in_namespace("agents"), Listing::Namespace("agents"), &WIDE);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "NAME       USAGE                  %USED   TOKENS        INPUT   OUTPUT   COST                PHASE       BURN      EXHAUSTS   RESETS    PERIOD    TIMEZONE        ACTION      ENFORCED"
    );
    assert_eq!(
        lines[3],
        "frozen     ████████████████████   100%    100.3k/100k   90k     10.3k    -                   Exhausted   0/h       -          in 1h     Hourly    UTC             ScaleDown   1"
    );
    assert_eq!(
        lines[5],
        "research   █████████████████░░░   84%     4.2M/5M       3.5M    700k     105.00/250.00 USD   Warning     12.3k/h   in 2h13m   in 3d4h   Monthly   Europe/Berlin   Annotate    0"
    );
    assert_eq!(
        lines[2],
        "fresh      ░░░░░░░░░░░░░░░░░░░░   -       -/2k          -       -        -                   -           -         -          -         Monthly   UTC             Annotate    0"
    );
}

#[test]
fn no_headers_leaves_out_the_header_line_only() {
    let with = status_list(&in_namespace("agents"), Listing::Namespace("agents"), &PLAIN).stdout;
    let without = status_list(&in_namespace("agents"), Listing::Namespace("agents"), &NO_HEADERS).stdout;
    assert_eq!(without, with.split_once('\n').unwrap().1);
    let out = top(&[named("ci-bots")], Listing::AllNamespaces, None, &NO_HEADERS);
    assert_eq!(
        out.stdout,
        text(
            "
ops         ci-bots   CronJob   triage   1500     75.0%
ops         ci-bots   Job       lint     500      25.0%
"
        )
    );
}

#[test]
fn wide_top_adds_cost_phase_and_what_is_enforced() {
    let mut research = named("research");
    research.status.as_mut().unwrap().workloads[0].cost = Some("12.5".into());
    let out = top(&[research, named("frozen")], Listing::Namespace("agents"), None, &WIDE);
    assert_eq!(
        out.stdout,
        text(
            "
BUDGET     KIND         NAME           TOKENS    SHARE%   COST        PHASE       ENFORCED
research   Deployment   summarizer     3000000   71.4%    12.50 USD   Warning     -
research   Job          nightly-eval   1200000   28.6%    -           Warning     -
frozen     Deployment   scraper        100250    100.0%   -           Exhausted   ScaleDown
"
        )
    );
}

#[test]
fn a_watch_prints_the_table_then_a_line_per_change() {
    let budgets = in_namespace("agents");
    let mut watch = Watch::new(WatchView::Status, Listing::Namespace("agents"));
    let first = watch.start(&budgets, Listing::Namespace("agents"), None, &PLAIN);
    assert_eq!(
        first.stdout,
        status_list(&budgets, Listing::Namespace("agents"), &PLAIN).stdout
    );
    // Nothing changed: nothing printed (a metadata-only update, a relist after a timeout).
    for b in &budgets {
        assert_eq!(watch.changed(b, &PLAIN), "");
    }
    let mut research = named("research");
    let status = research.status.as_mut().unwrap();
    status.percent_used = Some(96);
    status.phase = Some(BudgetPhase::Exhausted);
    // One line, in the columns of the table.
    assert_eq!(
        watch.changed(&research, &PLAIN),
        "research   ███████████████████░   96%     4.2M/5M       105.00/250.00 USD   Exhausted   12.3k/h   in 2h13m   in 3d4h\n"
    );
    assert_eq!(watch.changed(&research, &PLAIN), "");
    // A wider cell widens its column from then on.
    let mut long = named("starter");
    long.metadata.name = Some("a-much-longer-name".into());
    assert_eq!(
        watch.changed(&long, &PLAIN),
        "a-much-longer-name   ██░░░░░░░░░░░░░░░░░░   12%     120k/1M       -                   Active      3.6k/h    -          in 3d5h\n"
    );
    // A deletion prints the last state once more, as kubectl does.
    assert_eq!(watch.deleted(&long, &PLAIN).lines().count(), 1);
    assert_eq!(watch.changed(&long, &PLAIN).lines().count(), 1);
}

#[test]
fn a_watch_of_top_prints_the_changed_workloads() {
    let mut watch = Watch::new(WatchView::Top, Listing::AllNamespaces);
    let first = watch.start(&[named("ci-bots")], Listing::AllNamespaces, None, &NO_HEADERS);
    assert_eq!(
        first.stdout,
        "ops         ci-bots   CronJob   triage   1500     75.0%\nops         ci-bots   Job       lint     500      25.0%\n"
    );
    let mut ci = named("ci-bots");
    let status = ci.status.as_mut().unwrap();
    status.workloads[0].tokens = 2500;
    status.used.as_mut().unwrap().input = 2500;
    // triage's tokens changed, and with them both shares: both lines.
    assert_eq!(
        watch.changed(&ci, &PLAIN),
        "ops         ci-bots   CronJob   triage   2500     83.3%\nops         ci-bots   Job       lint     500      16.7%\n"
    );
    // A budget without workloads yet: the note, and the header comes with the first line.
    let mut watch = Watch::new(WatchView::Top, Listing::Namespace("agents"));
    let first = watch.start(&[named("fresh")], Listing::Namespace("agents"), None, &PLAIN);
    assert_eq!(first.stdout, "");
    assert_eq!(first.stderr, "No workload usage recorded yet in namespace agents.\n");
    let out = watch.changed(&named("starter"), &PLAIN);
    assert_eq!(
        out,
        "BUDGET    KIND          NAME         TOKENS   SHARE%\nstarter   StatefulSet   chat-agent   120000   100.0%\n"
    );
}

#[test]
fn objects_print_as_kubectl_prints_them() {
    let raw = serde_json::json!({
        "metadata": {"name": "x", "namespace": "a", "managedFields": [{"manager": "kubectl"}]},
        "spec": {"limits": {"tokens": 5}},
    });
    assert_eq!(
        object(raw.clone(), ListOutput::Json),
        text(
            r#"
{
    "apiVersion": "tokenbudget.io/v1alpha1",
    "kind": "TokenBudget",
    "metadata": {
        "name": "x",
        "namespace": "a"
    },
    "spec": {
        "limits": {
            "tokens": 5
        }
    }
}
"#
        )
    );
    assert_eq!(
        object_list(vec![raw], ListOutput::Yaml),
        text(
            "
apiVersion: v1
items:
- apiVersion: tokenbudget.io/v1alpha1
  kind: TokenBudget
  metadata:
    name: x
    namespace: a
  spec:
    limits:
      tokens: 5
kind: List
metadata:
  resourceVersion: ''
"
        )
    );
}

// ---- subjects and pacing (fixtures/subjects.yaml) --------------------------------------------

/// The budgets with `spec.subjects` or `spec.pacing`, in namespace `support`.
fn subject_fixtures() -> Vec<TokenBudget> {
    serde_yaml::Deserializer::from_str(include_str!("../fixtures/subjects.yaml"))
        .map(|doc| TokenBudget::deserialize(doc).expect("fixture parses"))
        .collect()
}

fn subject_named(name: &str) -> TokenBudget {
    subject_fixtures()
        .into_iter()
        .find(|b| b.name_any() == name)
        .unwrap_or_else(|| panic!("no fixture {name}"))
}

#[test]
fn detail_of_a_budget_with_two_subject_labels() {
    let out = status_detail(&subject_named("support-bot"), &PLAIN);
    let subjects = out
        .split_once("Workloads:  <none>\n")
        .and_then(|(_, rest)| rest.split_once("Conditions:"))
        .map(|(subjects, _)| subjects)
        .unwrap_or_else(|| panic!("no Subjects section between Workloads and Conditions in\n{out}"));
    assert_eq!(
        subjects,
        text(
            r#"
Subjects:
  end_user:
    Limit:      50,000 tokens (input + output) per subject per day
    Subjects:   1,204 spent this period, 112 exhausted
    Exhausted:  alice, bob, u-03, u-04, u-05, u-06, u-07, u-08, u-09, u-10 and 102 more
    Top:
      VALUE   TOKENS   COST         EXHAUSTED
      alice   51,200   0.0896 USD   yes
      bob     50,000   0.08 USD     yes
      carol   12,000   0.018 USD    no
  session_id:
    Limit:      0.50 USD per subject per day
    Subjects:   40 spent this period, 1 exhausted
    Exhausted:  s-9f2
    Untracked:  250,000 tokens of subjects past the bounds the operator counts one by one: they count toward the budget, toward no subject's limit
    Top:
      VALUE               TOKENS    COST        EXHAUSTED
      s-9f2               300,000   0.60 USD    yes
      "s 1, \"quoted\""   2,000     0.004 USD   no
"#
        )
    );
    // Without pacing: no Pacing line.
    assert!(!out.contains("Pacing:"), "{out}");
    // The SubjectsExhausted condition is in the Conditions as any other.
    assert!(
        out.contains("  SubjectsExhausted   True     SubjectLimitReached"),
        "{out}"
    );
}

#[test]
fn the_subjects_section_in_colour_marks_the_exhausted() {
    let out = status_detail(&subject_named("support-bot"), &COLOR);
    assert!(out.contains("    Exhausted:  \x1b[31malice, bob, u-03"), "{out}");
    assert!(
        out.contains("      alice   51,200   0.0896 USD   \x1b[31myes\x1b[0m\n"),
        "{out}"
    );
    assert!(out.contains("      carol   12,000   0.018 USD    no\n"), "{out}");
}

#[test]
fn the_exhausted_list_is_bounded_and_says_how_many_more() {
    let mut u = SubjectsUsage {
        label: "end_user".into(),
        count: 3,
        exhausted_count: 2,
        exhausted: vec!["a".into(), "b".into()],
        ..Default::default()
    };
    assert_eq!(exhausted_line(&u), "a, b");
    // More exhausted than the status lists (it lists at most 100).
    u.exhausted_count = 5;
    assert_eq!(exhausted_line(&u), "a, b and 3 more");
    // The status lists more than the view names.
    u.exhausted = (0..100).map(|i| format!("s{i}")).collect();
    u.exhausted_count = 1_234;
    assert_eq!(
        exhausted_line(&u),
        "s0, s1, s2, s3, s4, s5, s6, s7, s8, s9 and 1,224 more"
    );
    u.exhausted.clear();
    assert_eq!(exhausted_line(&u), "1,234 (none listed)");
}

#[test]
fn subject_values_never_reach_the_terminal_raw() {
    assert_eq!(printable("alice"), "alice");
    assert_eq!(printable("bob@example.com"), "bob@example.com");
    assert_eq!(printable("\x1b[2Jgotcha"), r#""\u{1b}[2Jgotcha""#);
    assert_eq!(printable("two\nlines"), r#""two\nlines""#);
    assert_eq!(printable("a, b"), r#""a, b""#);
    assert_eq!(printable(" padded"), r#"" padded""#);
    assert_eq!(printable(""), r#""""#);
}

#[test]
fn subjects_before_the_operator_reported() {
    let mut b = subject_named("support-bot");
    b.status = None;
    let out = status_detail(&b, &PLAIN);
    assert!(
        out.contains(
            "Subjects:\n  end_user:\n    Limit:  50,000 tokens (input + output) per subject per day\n  session_id:\n    Limit:  0.50 USD per subject per day\nConditions:  <none>\n"
        ),
        "{out}"
    );
    // A label nobody has spent on yet.
    let mut b = subject_named("support-bot");
    b.status.as_mut().unwrap().subjects.remove(1);
    let out = status_detail(&b, &PLAIN);
    assert!(
        out.contains(
            "  session_id:\n    Limit:     0.50 USD per subject per day\n    Subjects:  none has spent this period\nConditions:"
        ),
        "{out}"
    );
}

#[test]
fn detail_of_a_paced_budget() {
    assert_eq!(
        status_detail(&subject_named("paced"), &PLAIN),
        text(
            "
Name:          paced
Namespace:     support
Phase:         Warning
Usage:         ████████████████░░░░ 80% of the tighter limit
Limits:        5,000,000 tokens (input + output) per day
Used tokens:   4,000,000 of 5,000,000 (80%), 1,000,000 left
  input:       3,000,000
  output:      1,000,000
Burn rate:     500k/h (500,000 tokens per hour)
Exhaustion:    in 2h (2026-11-27T21:00:00Z)
Period:        Daily in Europe/Berlin
Period start:  2026-11-27T00:00:00+01:00
Resets:        in 4h (2026-11-28T00:00:00+01:00)
Thresholds:    80%
Enforcement:   Annotate
Pacing:        ScaleReplicas (at least 2 replicas), window 1h
  pace:        0.60 since 30m ago (2026-11-27T18:30:00Z)
  burn rate:   500k/h, sustainable 300k/h
  paced:       at the current rate the budget runs out at 2026-11-27T21:00:00Z, 1h59m before it resets; pace 0.60; Deployment/agent at 3 of 5 replicas
Models:  <none>
Workloads:  <none>
Conditions:
  TYPE    STATUS   REASON   AGE   MESSAGE
  Paced   True     Pacing   30m   at the current rate the budget runs out at 2026-11-27T21:00:00Z, 1h59m before it resets; pace 0.60; Deployment/agent at 3 of 5 replicas
"
        )
    );
    let colored = status_detail(&subject_named("paced"), &COLOR);
    assert!(
        colored.contains("  pace:        \x1b[33m0.60 since 30m ago"),
        "{colored}"
    );
}

#[test]
fn detail_of_a_budget_that_publishes_a_pace_and_is_not_paced() {
    let out = status_detail(&subject_named("steady"), &PLAIN);
    assert!(
        out.contains(
            "Enforcement:  Annotate\nPacing:       None (publishes the pace only), window 1h\n  pace:       1.00 (not paced)\n  burn rate:  100k/h, sustainable 800k/h\nModels:"
        ),
        "{out}"
    );
    // The Paced condition is False: its message stays in the Conditions only.
    assert!(!out.contains("  paced:"), "{out}");
    // No forecast yet, and no status at all.
    let mut b = subject_named("steady");
    b.status.as_mut().unwrap().pacing = None;
    assert!(status_detail(&b, &PLAIN).contains("  pace:       - (no forecast yet)\n"));
    b.status = None;
    let out = status_detail(&b, &PLAIN);
    assert!(
        out.contains("Pacing:       None (publishes the pace only), window 1h\nModels:"),
        "{out}"
    );
}

#[test]
fn budgets_without_subjects_or_pacing_show_nothing_new() {
    for b in fixtures() {
        let out = status_detail(&b, &PLAIN);
        assert!(!out.contains("Subjects"), "{out}");
        assert!(!out.contains("Pacing"), "{out}");
        assert!(!out.contains("  pace:"), "{out}");
    }
    // Nor columns: wide output of budgets without them has neither PACE nor SUBJECTS-EXHAUSTED.
    let out = status_list(&fixtures(), Listing::AllNamespaces, &WIDE).stdout;
    assert!(out.lines().next().unwrap().ends_with("ACTION      ENFORCED"), "{out}");
}

#[test]
fn wide_status_adds_pace_and_exhausted_subjects_when_a_budget_has_them() {
    let budgets = subject_fixtures();
    // The default output is as for any budget.
    let narrow = status_list(&budgets, Listing::Namespace("support"), &PLAIN).stdout;
    assert_eq!(
        narrow,
        text(
            "
NAME          USAGE                  %USED   TOKENS     PHASE     BURN     EXHAUSTS   RESETS
paced         ████████████████░░░░   80%     4M/5M      Warning   500k/h   in 2h      in 4h
steady        ████░░░░░░░░░░░░░░░░   20%     1M/5M      Active    100k/h   -          in 5h
support-bot   ████████████░░░░░░░░   61%     6.1M/10M   Active    350k/h   -          in 4h
"
        )
    );
    let wide = status_list(&budgets, Listing::Namespace("support"), &WIDE).stdout;
    assert_eq!(
        wide,
        text(
            "
NAME          USAGE                  %USED   TOKENS     INPUT   OUTPUT   PHASE     BURN     EXHAUSTS   RESETS   PERIOD   TIMEZONE        ACTION     ENFORCED   PACE   SUBJECTS-EXHAUSTED
paced         ████████████████░░░░   80%     4M/5M      3M      1M       Warning   500k/h   in 2h      in 4h    Daily    Europe/Berlin   Annotate   0          0.60   -
steady        ████░░░░░░░░░░░░░░░░   20%     1M/5M      800k    200k     Active    100k/h   -          in 5h    Daily    UTC             Annotate   0          1.00   -
support-bot   ████████████░░░░░░░░   61%     6.1M/10M   5M      1.1M     Active    350k/h   -          in 4h    Daily    Europe/Berlin   Annotate   0          -      113
"
        )
    );
    // One budget (`status NAME -o wide`): its own columns only.
    let one = status_list(&[subject_named("paced")], Listing::Namespace("support"), &WIDE).stdout;
    assert!(one.lines().next().unwrap().ends_with("ENFORCED   PACE"), "{one}");
    // --no-headers and a watch keep the columns.
    let without = status_list(
        &budgets,
        Listing::Namespace("support"),
        &Options {
            no_headers: true,
            ..WIDE
        },
    )
    .stdout;
    assert_eq!(without, wide.split_once('\n').unwrap().1);
    let mut watch = Watch::new(WatchView::Status, Listing::Namespace("support"));
    assert_eq!(
        watch.start(&budgets, Listing::Namespace("support"), None, &WIDE).stdout,
        wide
    );
    let mut paced = subject_named("paced");
    paced.status.as_mut().unwrap().pacing.as_mut().unwrap().pace = "0.55".into();
    assert_eq!(
        watch.changed(&paced, &WIDE),
        "paced         ████████████████░░░░   80%     4M/5M      3M      1M       Warning   500k/h   in 2h      in 4h    Daily    Europe/Berlin   Annotate   0          0.55   -\n"
    );
}
