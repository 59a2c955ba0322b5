//! How budgets look on a terminal. Pure: budgets, `now` and a colour flag in, text out, so every
//! view is unit-tested from YAML fixtures with a fixed clock.

use std::{cmp::Reverse, collections::HashMap};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use serde::Serialize;
use serde_json::Value;

use super::ListOutput;
use crate::api::{
    BudgetLimits, BudgetPhase, Enforcement, EnforcementAction, Pacing, PacingAction, ResetPeriod, SubjectLimit,
    SubjectsUsage, TokenBudget, TokenBudgetSpec, TokenBudgetStatus, TokenType,
};
use crate::usage::{format_money, parse_money, percent_used};

/// Cells of the usage bar.
pub const BAR_CELLS: usize = 20;

/// At most this many exhausted subjects are named per label in the detailed view (the status
/// lists up to 100; `-o yaml` prints them all).
pub const EXHAUSTED_SHOWN: usize = 10;

/// What every view needs besides the budgets.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// The time relative times ("in 2h13m") count from.
    pub now: Timestamp,
    /// ANSI colours (a terminal without NO_COLOR).
    pub color: bool,
    /// `-o wide`: the tables with more columns.
    pub wide: bool,
    /// `--no-headers`: the tables without their header line.
    pub no_headers: bool,
}

/// Which namespaces a listing covers: decides the NAMESPACE column and the "nothing found"
/// message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listing<'a> {
    Namespace(&'a str),
    AllNamespaces,
}

/// A view's output. As kubectl does, "No ... found" goes to stderr, so that stdout stays empty
/// (and pipes see nothing) when there is nothing to show.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    pub stdout: String,
    pub stderr: String,
}

impl Rendered {
    fn out(stdout: String) -> Self {
        Self {
            stdout,
            stderr: String::new(),
        }
    }

    fn note(stderr: String) -> Self {
        Self {
            stdout: String::new(),
            stderr,
        }
    }
}

/// "No TokenBudgets found in namespace X." (or "... found." for all namespaces).
pub fn no_budgets(listing: Listing) -> String {
    match listing {
        Listing::Namespace(ns) => format!("No TokenBudgets found in namespace {ns}.\n"),
        Listing::AllNamespaces => "No TokenBudgets found.\n".into(),
    }
}

/// `kubectl tokenbudget status`: one line per budget, sorted by namespace and name.
pub fn status_list(budgets: &[TokenBudget], listing: Listing, opts: &Options) -> Rendered {
    if budgets.is_empty() {
        return Rendered::note(no_budgets(listing));
    }
    let mut budgets: Vec<&TokenBudget> = budgets.iter().collect();
    budgets.sort_by_key(|b| (b.namespace(), b.name_any()));
    let columns = StatusColumns::new(budgets.iter().copied(), listing == Listing::AllNamespaces, opts.wide);
    let mut table = Table::new(&columns.header());
    for b in budgets {
        table.push(columns.row(b, opts));
    }
    Rendered::out(table.render_with(opts))
}

/// The columns of the status table, decided once for a listing (a watch keeps them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StatusColumns {
    namespace: bool,
    /// Only when some budget has a cost limit.
    cost: bool,
    wide: bool,
    /// `-o wide`, only when some budget has `spec.pacing`.
    pace: bool,
    /// `-o wide`, only when some budget has `spec.subjects`.
    subjects: bool,
}

impl StatusColumns {
    fn new<'a>(budgets: impl IntoIterator<Item = &'a TokenBudget>, all_namespaces: bool, wide: bool) -> Self {
        let (mut cost, mut pace, mut subjects) = (false, false, false);
        for b in budgets {
            cost |= b.spec.limits.cost.is_some();
            pace |= b.spec.pacing.is_some();
            subjects |= !b.spec.subjects.is_empty();
        }
        Self {
            namespace: all_namespaces,
            cost,
            wide,
            pace: wide && pace,
            subjects: wide && subjects,
        }
    }

    fn header(&self) -> Vec<&'static str> {
        let mut header = Vec::new();
        if self.namespace {
            header.push("NAMESPACE");
        }
        header.extend(["NAME", "USAGE", "%USED", "TOKENS"]);
        if self.wide {
            header.extend(["INPUT", "OUTPUT"]);
        }
        if self.cost {
            header.push("COST");
        }
        header.extend(["PHASE", "BURN", "EXHAUSTS", "RESETS"]);
        if self.wide {
            header.extend(["PERIOD", "TIMEZONE", "ACTION", "ENFORCED"]);
        }
        if self.pace {
            header.push("PACE");
        }
        if self.subjects {
            header.push("SUBJECTS-EXHAUSTED");
        }
        header
    }

    fn row(&self, b: &TokenBudget, opts: &Options) -> Vec<Cell> {
        let status = b.status.as_ref();
        let phase = status.and_then(|s| s.phase);
        let color = phase.map(phase_color);
        let percent = status.and_then(|s| s.percent_used);
        let used = status.and_then(|s| s.used.as_ref());
        let mut row = Vec::new();
        if self.namespace {
            row.push(Cell::plain(b.namespace().unwrap_or_default()));
        }
        row.push(Cell::plain(b.name_any()));
        row.push(Cell::new(bar(percent), color));
        row.push(Cell::plain(percent.map_or("-".into(), |p| format!("{p}%"))));
        row.push(Cell::plain(tokens_cell(b)));
        if self.wide {
            row.push(Cell::plain(used.map_or("-".into(), |u| human(u.input))));
            row.push(Cell::plain(used.map_or("-".into(), |u| human(u.output))));
        }
        if self.cost {
            row.push(Cell::plain(cost_cell(b)));
        }
        row.push(Cell::new(phase.map_or("-", phase_name), color));
        row.push(Cell::plain(
            status
                .and_then(|s| s.burn_rate)
                .map_or("-".into(), |r| format!("{}/h", human(r))),
        ));
        row.push(Cell::plain(
            status
                .and_then(|s| s.projected_exhaustion.as_deref())
                .map_or("-".into(), |t| relative(opts.now, t)),
        ));
        row.push(Cell::plain(resets_cell(b, opts.now)));
        if self.wide {
            row.push(Cell::plain(format!("{:?}", b.spec.period.reset)));
            row.push(Cell::plain(b.spec.period.timezone.clone()));
            row.push(Cell::plain(format!("{:?}", b.spec.enforcement.action)));
            row.push(Cell::plain(status.map_or(0, |s| s.enforced.len()).to_string()));
        }
        if self.pace {
            row.push(Cell::plain(pace_cell(b)));
        }
        if self.subjects {
            row.push(Cell::plain(subjects_exhausted_cell(b)));
        }
        row
    }
}

/// `kubectl tokenbudget status NAME`: everything about one budget, as `kubectl describe` lays
/// it out.
pub fn status_detail(b: &TokenBudget, opts: &Options) -> String {
    let spec = &b.spec;
    let status = b.status.as_ref();
    let color = status.and_then(|s| s.phase).map(phase_color);
    let mut fields = Fields::default();
    describe_identity(&mut fields, b, opts);
    fields.add("Limits", limits_line(spec));
    if let Some(s) = status {
        describe_usage(&mut fields, spec, s, opts);
    }
    describe_period(&mut fields, b, opts);
    if let Some(observed) = observed_line(b) {
        fields.add("Observed", observed);
    }
    fields.add("Thresholds", thresholds_line(spec));
    fields.add("Enforcement", enforcement_line(&spec.enforcement));
    if let Some(pacing) = &spec.pacing {
        describe_pacing(&mut fields, pacing, status, opts);
    }

    let empty = TokenBudgetStatus::default();
    let s = status.unwrap_or(&empty);
    let mut out = fields.render(opts.color);
    out.push_str(&models_section(spec, s, opts));
    out.push_str(&workloads_section(s, opts));
    out.push_str(&subjects_section(spec, status, opts));
    out.push_str(&enforced_section(s, color, opts));
    out.push_str(&section("Conditions", s.conditions.is_empty()));
    if !s.conditions.is_empty() {
        out.push_str(&conditions(&s.conditions, opts));
    }
    out
}

/// The first lines of the detailed view: the budget's name and namespace, then its phase and
/// usage bar, or that the operator has not reported yet.
fn describe_identity(fields: &mut Fields, b: &TokenBudget, opts: &Options) {
    fields.add("Name", b.name_any());
    fields.add("Namespace", b.namespace().unwrap_or_default());
    match &b.status {
        None => fields.add(
            "Status",
            "none yet: the operator has not reported on this budget (is tokenbudget-operator running?)",
        ),
        Some(s) => {
            let color = s.phase.map(phase_color);
            fields.add_colored("Phase", s.phase.map_or("-", phase_name), color);
            let usage = match s.percent_used {
                Some(p) => format!("{} {p}% of the tighter limit", paint(&bar(Some(p)), color, opts.color)),
                None => bar(None),
            };
            fields.add("Usage", usage);
        }
    }
}

/// "5,000,000 tokens (input + output) and 250.00 USD per month".
fn limits_line(spec: &TokenBudgetSpec) -> String {
    format!("{} {}", limits_text(&spec.limits, spec), per_period(spec.period.reset))
}

/// "5,000,000 tokens (input + output) and 250.00 USD": `limits` in the budget's token types and
/// currency (a subject's limits count as the budget's).
fn limits_text(l: &BudgetLimits, spec: &TokenBudgetSpec) -> String {
    let mut limits = Vec::new();
    if let Some(tokens) = l.tokens {
        let types = match &spec.token_types {
            Some(types) => types.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(" + "),
            None => TokenType::ALL.map(|t| t.as_str()).join(" + "),
        };
        limits.push(format!("{} tokens ({types})", grouped(tokens)));
    }
    if let Some(cost) = &l.cost {
        limits.push(format!("{} {}", money(cost), spec.currency));
    }
    limits.join(" and ")
}

/// The pacing lines of the detailed view: what `spec.pacing` does, then the pace, the burn rate
/// against the sustainable rate, and why it is paced (the Paced condition, while True).
fn describe_pacing(fields: &mut Fields, pacing: &Pacing, status: Option<&TokenBudgetStatus>, opts: &Options) {
    let action = match pacing.action {
        PacingAction::None => "None (publishes the pace only)".to_string(),
        PacingAction::ScaleReplicas => format!(
            "ScaleReplicas (at least {} replica{})",
            pacing.min_replicas,
            if pacing.min_replicas == 1 { "" } else { "s" }
        ),
    };
    fields.add("Pacing", format!("{action}, window {}", pacing.window));
    let Some(s) = status else {
        return;
    };
    let Some(p) = &s.pacing else {
        fields.add("  pace", "- (no forecast yet)");
        return;
    };
    let pace = match &p.since {
        Some(since) => format!("{} since {} ({since})", p.pace, relative(opts.now, since)),
        None => format!("{} (not paced)", p.pace),
    };
    let color = p.since.is_some().then_some(Color::Yellow);
    fields.add_colored("  pace", pace, color);
    let rate = |r: Option<i64>| r.map_or("-".into(), |r| format!("{}/h", human(r)));
    fields.add(
        "  burn rate",
        format!("{}, sustainable {}", rate(p.burn_rate), rate(p.sustainable_rate)),
    );
    if let Some(c) = s.conditions.iter().find(|c| c.type_ == "Paced" && c.status == "True") {
        fields.add("  paced", c.message.clone());
    }
}

/// The Subjects section, when `spec.subjects` is set: per label its limit, how many subjects
/// spent and are exhausted, the exhausted ones (at most [`EXHAUSTED_SHOWN`]), the untracked
/// tokens and the largest subjects.
fn subjects_section(spec: &TokenBudgetSpec, status: Option<&TokenBudgetStatus>, opts: &Options) -> String {
    if spec.subjects.is_empty() {
        return String::new();
    }
    let mut out = section("Subjects", false);
    for limit in &spec.subjects {
        let usage = status.and_then(|s| s.subjects.iter().find(|u| u.label == limit.label));
        out.push_str(&subject_label(spec, limit, usage, status.is_some(), opts));
    }
    out
}

/// One label of the Subjects section.
fn subject_label(
    spec: &TokenBudgetSpec,
    limit: &SubjectLimit,
    usage: Option<&SubjectsUsage>,
    reported: bool,
    opts: &Options,
) -> String {
    let mut fields = Fields::default();
    fields.add(
        "Limit",
        format!(
            "{} per subject {}",
            limits_text(&limit.limits, spec),
            per_period(spec.period.reset)
        ),
    );
    match usage {
        None if !reported => {}
        None => fields.add("Subjects", "none has spent this period"),
        Some(u) => {
            fields.add(
                "Subjects",
                format!(
                    "{} spent this period, {} exhausted",
                    grouped(u.count),
                    grouped(u.exhausted_count)
                ),
            );
            if u.exhausted_count > 0 || !u.exhausted.is_empty() {
                let red = (u.exhausted_count > 0).then_some(Color::Red);
                fields.add_colored("Exhausted", exhausted_line(u), red);
            }
            if u.untracked_tokens != 0 {
                fields.add(
                    "Untracked",
                    format!(
                        "{} tokens of subjects past the bounds the operator counts one by one: \
                         they count toward the budget, toward no subject's limit",
                        grouped(u.untracked_tokens)
                    ),
                );
            }
        }
    }
    let mut out = format!("  {}:\n", printable(&limit.label));
    out.push_str(&indent(&fields.render(opts.color), "    "));
    if let Some(u) = usage.filter(|u| !u.top.is_empty()) {
        out.push_str("    Top:\n");
        let mut table = Table::new(&["VALUE", "TOKENS", "COST", "EXHAUSTED"]);
        for t in &u.top {
            table.push(vec![
                Cell::plain(printable(&t.value)),
                Cell::plain(grouped(t.tokens)),
                Cell::plain(
                    t.cost
                        .as_deref()
                        .map_or("-".into(), |c| format!("{} {}", money(c), spec.currency)),
                ),
                match t.exhausted {
                    true => Cell::new("yes", Some(Color::Red)),
                    false => Cell::plain("no"),
                },
            ]);
        }
        out.push_str(&table.render("      ", opts.color));
    }
    out
}

/// "alice, bob and 110 more": the listed exhausted subjects, at most [`EXHAUSTED_SHOWN`], and
/// how many of `exhaustedCount` that leaves out.
fn exhausted_line(u: &SubjectsUsage) -> String {
    let shown: Vec<String> = u.exhausted.iter().take(EXHAUSTED_SHOWN).map(|v| printable(v)).collect();
    let more = u.exhausted_count.saturating_sub(shown.len() as i64);
    match (shown.is_empty(), more > 0) {
        (true, _) => format!("{} (none listed)", grouped(u.exhausted_count)),
        (false, true) => format!("{} and {} more", shown.join(", "), grouped(more)),
        (false, false) => shown.join(", "),
    }
}

/// A subject value (or label) as the terminal may print it: quoted, with its control characters
/// escaped, when it has any (an agent chooses the values; an escape sequence in one must not
/// reach the terminal), or when a comma, a quote or outer spaces would make a list ambiguous.
fn printable(v: &str) -> String {
    let plain = !v.is_empty() && v.trim() == v && !v.chars().any(|c| c.is_control() || c == ',' || c == '"');
    if plain { v.to_string() } else { format!("{v:?}") }
}

/// Every line of `text` after `prefix`.
fn indent(text: &str, prefix: &str) -> String {
    text.lines().map(|l| format!("{prefix}{l}\n")).collect()
}

/// The period lines of the detailed view: its kind and zone, its start and the next reset.
fn describe_period(fields: &mut Fields, b: &TokenBudget, opts: &Options) {
    let (spec, status) = (&b.spec, b.status.as_ref());
    let period = match spec.period.reset {
        ResetPeriod::Never => "Never (usage never resets)".to_string(),
        reset => format!("{reset:?} in {}", spec.period.timezone),
    };
    fields.add("Period", period);
    if let Some(start) = status.and_then(|s| s.period_start.as_deref()) {
        fields.add("Period start", start);
    }
    fields.add(
        "Resets",
        match status.and_then(|s| s.resets_at.as_deref()) {
            Some(t) => format!("{} ({t})", relative(opts.now, t)),
            None => resets_cell(b, opts.now),
        },
    );
}

/// That the status speaks of an older generation of the spec, when it does.
fn observed_line(b: &TokenBudget) -> Option<String> {
    let observed = b.status.as_ref().and_then(|s| s.observed_generation)?;
    let generation = b.metadata.generation?;
    (observed != generation)
        .then(|| format!("generation {observed} of {generation}: the operator has not caught up with the last change"))
}

/// "50%, 80%, 100%", or `<none>`.
fn thresholds_line(spec: &TokenBudgetSpec) -> String {
    let mut thresholds: Vec<String> = spec.thresholds.iter().map(|t| format!("{t}%")).collect();
    if thresholds.is_empty() {
        thresholds.push("<none>".into());
    }
    thresholds.join(", ")
}

/// "ScaleDown, grace period 10m, freezes the compute quota when exhausted".
fn enforcement_line(e: &Enforcement) -> String {
    let mut enforcement = format!("{:?}", e.action);
    if e.action == EnforcementAction::ScaleDown {
        enforcement.push_str(&format!(", grace period {}", e.grace_period));
    }
    if e.freeze_quota {
        enforcement.push_str(", freezes the compute quota when exhausted");
    }
    enforcement
}

/// The Models section: tokens and cost per model.
fn models_section(spec: &TokenBudgetSpec, s: &TokenBudgetStatus, opts: &Options) -> String {
    let mut out = section("Models", s.models.is_empty());
    if !s.models.is_empty() {
        let mut table = Table::new(&["MODEL", "INPUT", "OUTPUT", "COST"]);
        for m in &s.models {
            table.push(vec![
                Cell::plain(m.model.clone()),
                Cell::plain(grouped(m.input)),
                Cell::plain(grouped(m.output)),
                Cell::plain(
                    m.cost
                        .as_deref()
                        .map_or("-".into(), |c| format!("{} {}", money(c), spec.currency)),
                ),
            ]);
        }
        out.push_str(&table.render("  ", opts.color));
    }
    out
}

/// The Workloads section: tokens per workload and its share of the budget's.
fn workloads_section(s: &TokenBudgetStatus, opts: &Options) -> String {
    let mut out = section("Workloads", s.workloads.is_empty());
    if !s.workloads.is_empty() {
        let total = workload_total(s);
        let mut table = Table::new(&["KIND", "NAME", "TOKENS", "SHARE%"]);
        for w in &s.workloads {
            table.push(vec![
                Cell::plain(w.kind.as_str()),
                Cell::plain(w.name.clone()),
                Cell::plain(grouped(w.tokens)),
                Cell::plain(share(w.tokens, total)),
            ]);
        }
        out.push_str(&table.render("  ", opts.color));
    }
    out
}

/// The Enforced section, in the phase's colour; nothing at all when nothing is enforced.
fn enforced_section(s: &TokenBudgetStatus, color: Option<Color>, opts: &Options) -> String {
    if s.enforced.is_empty() {
        return String::new();
    }
    let mut table = Table::new(&["KIND", "NAME", "ACTION", "SINCE"]);
    for e in &s.enforced {
        table.push(vec![
            Cell::plain(e.kind.as_str()),
            Cell::plain(e.name.clone()),
            Cell::new(e.action.clone(), color),
            Cell::plain(relative(opts.now, &e.since)),
        ]);
    }
    section("Enforced", false) + &table.render("  ", opts.color)
}

/// The usage lines of the detailed view: used per limit and per token type, burn rate and
/// projected exhaustion.
fn describe_usage(fields: &mut Fields, spec: &TokenBudgetSpec, s: &TokenBudgetStatus, opts: &Options) {
    let used = s.used.clone().unwrap_or_default();
    let mut tokens = grouped(used.tokens);
    if let Some(limit) = spec.limits.tokens {
        let pct = percent_used(
            used.tokens.max(0) as u64,
            Some(limit.max(0) as u64),
            Default::default(),
            None,
        )
        .unwrap_or_default();
        let left = s.remaining_tokens.unwrap_or((limit - used.tokens).max(0));
        tokens.push_str(&format!(" of {} ({pct}%), {} left", grouped(limit), grouped(left)));
    }
    fields.add("Used tokens", tokens);
    fields.add("  input", grouped(used.input));
    fields.add("  output", grouped(used.output));
    if let Some(cost) = &used.cost {
        let line = match &spec.limits.cost {
            Some(limit) => {
                let pct = match (parse_money(cost), parse_money(limit)) {
                    (Ok(u), Ok(l)) => percent_used(0, None, u, Some(l)).map_or(String::new(), |p| format!(" ({p}%)")),
                    _ => String::new(),
                };
                format!("{} of {} {}{pct}", money(cost), money(limit), spec.currency)
            }
            None => format!("{} {}", money(cost), spec.currency),
        };
        fields.add("Used cost", line);
    }
    fields.add(
        "Burn rate",
        s.burn_rate.map_or("-".into(), |r| {
            format!("{}/h ({} tokens per hour)", human(r), grouped(r))
        }),
    );
    fields.add(
        "Exhaustion",
        match &s.projected_exhaustion {
            Some(t) => format!("{} ({t})", relative(opts.now, t)),
            None if s.phase == Some(BudgetPhase::Exhausted) => "exhausted".into(),
            None if s.burn_rate == Some(0) || spec.period.reset == ResetPeriod::Never => "-".into(),
            None => "- (not before the reset at the current burn rate)".into(),
        },
    );
}

fn conditions(conditions: &[Condition], opts: &Options) -> String {
    let mut table = Table::new(&["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]);
    for c in conditions {
        let age = opts.now.as_second() - c.last_transition_time.0.as_second();
        table.push(vec![
            Cell::plain(c.type_.clone()),
            Cell::plain(c.status.clone()),
            Cell::plain(c.reason.clone()),
            Cell::plain(compact(age.max(0))),
            Cell::plain(c.message.clone()),
        ]);
    }
    table.render("  ", opts.color)
}

/// One row of `top`.
struct TopRow<'a> {
    namespace: String,
    budget: String,
    kind: &'static str,
    name: &'a str,
    tokens: i64,
    total: i64,
    /// `-o wide`: the workload's cost with its currency, its budget's phase, and what is
    /// enforced on it.
    cost: String,
    phase: Option<BudgetPhase>,
    enforced: &'a str,
}

impl TopRow<'_> {
    /// The row's identity in a watch.
    fn key(&self) -> String {
        format!("{}/{}/{}/{}", self.namespace, self.budget, self.kind, self.name)
    }

    fn cells(&self, all_namespaces: bool, wide: bool) -> Vec<Cell> {
        let mut row = Vec::new();
        if all_namespaces {
            row.push(Cell::plain(self.namespace.clone()));
        }
        row.extend([
            Cell::plain(self.budget.clone()),
            Cell::plain(self.kind),
            Cell::plain(self.name),
            Cell::plain(self.tokens.to_string()),
            Cell::plain(share(self.tokens, self.total)),
        ]);
        if wide {
            let color = self.phase.map(phase_color);
            row.extend([
                Cell::plain(self.cost.clone()),
                Cell::new(self.phase.map_or("-", phase_name), color),
                Cell::new(self.enforced, (self.enforced != "-").then_some(color).flatten()),
            ]);
        }
        row
    }
}

fn top_header(all_namespaces: bool, wide: bool) -> Vec<&'static str> {
    let mut header = Vec::new();
    if all_namespaces {
        header.push("NAMESPACE");
    }
    header.extend(["BUDGET", "KIND", "NAME", "TOKENS", "SHARE%"]);
    if wide {
        header.extend(["COST", "PHASE", "ENFORCED"]);
    }
    header
}

/// The workloads of one budget, as `top` shows them.
fn top_rows(b: &TokenBudget) -> Vec<TopRow<'_>> {
    let Some(s) = &b.status else {
        return Vec::new();
    };
    let total = workload_total(s);
    s.workloads
        .iter()
        .map(|w| TopRow {
            namespace: b.namespace().unwrap_or_default(),
            budget: b.name_any(),
            kind: w.kind.as_str(),
            name: &w.name,
            tokens: w.tokens,
            total,
            cost: w
                .cost
                .as_deref()
                .map_or("-".into(), |c| format!("{} {}", money(c), b.spec.currency)),
            phase: s.phase,
            enforced: s
                .enforced
                .iter()
                .find(|e| e.kind == w.kind && e.name == w.name)
                .map_or("-", |e| e.action.as_str()),
        })
        .collect()
}

/// `kubectl tokenbudget top`: the workloads of `budgets` (already filtered by `--budget`, which
/// `budget` names for the "nothing found" message), by tokens, largest first. SHARE% is the
/// workload's part of its budget's tokens (input + output) this period.
pub fn top(budgets: &[TokenBudget], listing: Listing, budget: Option<&str>, opts: &Options) -> Rendered {
    if budgets.is_empty() {
        return Rendered::note(match budget {
            Some(name) => match listing {
                Listing::Namespace(ns) => format!("No TokenBudget named {name} found in namespace {ns}.\n"),
                Listing::AllNamespaces => format!("No TokenBudget named {name} found.\n"),
            },
            None => no_budgets(listing),
        });
    }
    let mut rows: Vec<TopRow> = budgets.iter().flat_map(top_rows).collect();
    if rows.is_empty() {
        return Rendered::note(no_workload_usage(listing, budget));
    }
    rows.sort_by(|a, b| {
        (Reverse(a.tokens), &a.namespace, &a.budget, a.kind, a.name).cmp(&(
            Reverse(b.tokens),
            &b.namespace,
            &b.budget,
            b.kind,
            b.name,
        ))
    });
    let all = listing == Listing::AllNamespaces;
    let mut table = Table::new(&top_header(all, opts.wide));
    for r in rows {
        table.push(r.cells(all, opts.wide));
    }
    Rendered::out(table.render_with(opts))
}

fn no_workload_usage(listing: Listing, budget: Option<&str>) -> String {
    match (budget, listing) {
        (Some(name), _) => format!("No workload usage recorded yet for TokenBudget {name}.\n"),
        (None, Listing::Namespace(ns)) => format!("No workload usage recorded yet in namespace {ns}.\n"),
        (None, Listing::AllNamespaces) => "No workload usage recorded yet.\n".into(),
    }
}

// ---- watch ----------------------------------------------------------------------------------

/// Which table a watch prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchView {
    Status,
    Top,
}

/// `-w`, as `kubectl get -w`: the table, then a line for each change. A budget's line is
/// printed again only when its text changed (an update of its metadata alone prints nothing),
/// with the columns and widths of the first lines (a wider cell widens its column from then
/// on). Pure: the binary feeds it the watch's events.
pub struct Watch {
    view: WatchView,
    all_namespaces: bool,
    /// For `status`: decided by the first budgets printed.
    columns: Option<StatusColumns>,
    widths: Vec<usize>,
    /// The text last printed for each row, by key.
    shown: HashMap<String, String>,
}

impl Watch {
    pub fn new(view: WatchView, listing: Listing) -> Self {
        Self {
            view,
            all_namespaces: listing == Listing::AllNamespaces,
            columns: None,
            widths: Vec::new(),
            shown: HashMap::new(),
        }
    }

    /// The first table: every budget, as without `-w`, or the note that there is none.
    pub fn start(
        &mut self,
        budgets: &[TokenBudget],
        listing: Listing,
        budget: Option<&str>,
        opts: &Options,
    ) -> Rendered {
        let mut budgets: Vec<&TokenBudget> = budgets.iter().collect();
        budgets.sort_by_key(|b| (b.namespace(), b.name_any()));
        let rows = self.rows(&budgets, opts);
        if rows.is_empty() {
            return Rendered::note(match (self.view, budgets.is_empty(), budget) {
                (WatchView::Top, false, _) => no_workload_usage(listing, budget),
                (_, _, Some(name)) => match listing {
                    Listing::Namespace(ns) => format!("No TokenBudget named {name} found in namespace {ns}.\n"),
                    Listing::AllNamespaces => format!("No TokenBudget named {name} found.\n"),
                },
                _ => no_budgets(listing),
            });
        }
        Rendered::out(self.print(rows, false, opts))
    }

    /// A budget added or changed: its lines that differ from the ones printed last.
    pub fn changed(&mut self, budget: &TokenBudget, opts: &Options) -> String {
        let rows = self.rows(&[budget], opts);
        self.print(rows, false, opts)
    }

    /// A budget deleted: its lines once more, as kubectl prints a deleted object, and then
    /// forgotten.
    pub fn deleted(&mut self, budget: &TokenBudget, opts: &Options) -> String {
        let rows = self.rows(&[budget], opts);
        let out = self.print(rows.clone(), true, opts);
        for (key, _) in rows {
            self.shown.remove(&key);
        }
        out
    }

    fn rows(&mut self, budgets: &[&TokenBudget], opts: &Options) -> Vec<(String, Vec<Cell>)> {
        match self.view {
            WatchView::Status => {
                if budgets.is_empty() {
                    return Vec::new();
                }
                let columns = *self
                    .columns
                    .get_or_insert_with(|| StatusColumns::new(budgets.iter().copied(), self.all_namespaces, opts.wide));
                budgets
                    .iter()
                    .map(|b| {
                        let key = format!("{}/{}", b.namespace().unwrap_or_default(), b.name_any());
                        (key, columns.row(b, opts))
                    })
                    .collect()
            }
            WatchView::Top => {
                let mut rows: Vec<TopRow> = budgets.iter().flat_map(|b| top_rows(b)).collect();
                rows.sort_by_key(|r| (Reverse(r.tokens), r.key()));
                rows.iter()
                    .map(|r| (r.key(), r.cells(self.all_namespaces, opts.wide)))
                    .collect()
            }
        }
    }

    fn header(&self, wide: bool) -> Vec<&'static str> {
        match (self.view, self.columns) {
            (WatchView::Status, Some(columns)) => columns.header(),
            (WatchView::Status, None) => Vec::new(),
            (WatchView::Top, _) => top_header(self.all_namespaces, wide),
        }
    }

    /// The rows whose text changed (all of them with `force`), the header first if nothing was
    /// printed before.
    fn print(&mut self, rows: Vec<(String, Vec<Cell>)>, force: bool, opts: &Options) -> String {
        let rows: Vec<(String, Vec<Cell>)> = rows
            .into_iter()
            .filter(|(key, cells)| force || self.shown.get(key) != Some(&plain_text(cells)))
            .collect();
        if rows.is_empty() {
            return String::new();
        }
        let mut table = Table::new(&self.header(opts.wide));
        let first = self.widths.is_empty();
        for (key, cells) in rows {
            self.shown.insert(key, plain_text(&cells));
            table.push(cells);
        }
        table.widen(&mut self.widths, first);
        table.render_widths(&self.widths, "", opts.color, first && !opts.no_headers)
    }
}

/// A row's text without colours or padding: what tells a change.
fn plain_text(cells: &[Cell]) -> String {
    cells.iter().map(|c| c.text.as_str()).collect::<Vec<_>>().join("\t")
}

// ---- objects --------------------------------------------------------------------------------

/// A TokenBudget as kubectl prints it: with its apiVersion and kind (a list's items may lack
/// them), without `metadata.managedFields` (kubectl's `--show-managed-fields=false`).
pub fn kubectl_object(mut raw: Value) -> Value {
    if let Some(object) = raw.as_object_mut() {
        object.insert("apiVersion".into(), "tokenbudget.io/v1alpha1".into());
        object.insert("kind".into(), "TokenBudget".into());
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields");
        }
    }
    raw
}

/// `-o json|yaml`: one object as kubectl prints it (JSON indented by four spaces, keys
/// sorted, as kubectl's printer does).
pub fn object(raw: Value, output: ListOutput) -> String {
    print_value(&kubectl_object(raw), output)
}

/// `-o json|yaml` of a listing: a `v1 List` of the objects, as `kubectl get -o json` prints it.
pub fn object_list(raws: Vec<Value>, output: ListOutput) -> String {
    let items: Vec<Value> = raws.into_iter().map(kubectl_object).collect();
    let list = serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": items,
        "metadata": {"resourceVersion": ""},
    });
    print_value(&list, output)
}

fn print_value(value: &Value, output: ListOutput) -> String {
    match output {
        ListOutput::Yaml => serde_yaml::to_string(value).expect("a JSON value is YAML"),
        _ => {
            let mut out = Vec::new();
            let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
            let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
            value.serialize(&mut serializer).expect("a JSON value serializes");
            let mut text = String::from_utf8(out).expect("JSON is UTF-8");
            text.push('\n');
            text
        }
    }
}

// ---- cells ---------------------------------------------------------------------------------

/// `████████░░░░░░░░░░░░`: the percent of the tighter limit, rounded to the nearest cell, full
/// from 100% on; all empty when unknown.
pub fn bar(percent: Option<i64>) -> String {
    let filled = percent.map_or(0, |p| {
        let p = p.clamp(0, 100) as usize;
        (p * BAR_CELLS + 50) / 100
    });
    "█".repeat(filled) + &"░".repeat(BAR_CELLS - filled)
}

/// "4.2M/5M": used of the token limit, or used alone without one.
fn tokens_cell(b: &TokenBudget) -> String {
    let used = b.status.as_ref().and_then(|s| s.used.as_ref()).map(|u| u.tokens);
    match (used, b.spec.limits.tokens) {
        (Some(u), Some(l)) => format!("{}/{}", human(u), human(l)),
        (Some(u), None) => human(u),
        (None, Some(l)) => format!("-/{}", human(l)),
        (None, None) => "-".into(),
    }
}

/// "105.00/250.00 USD" when there is a cost limit, else "-".
fn cost_cell(b: &TokenBudget) -> String {
    let Some(limit) = &b.spec.limits.cost else {
        return "-".into();
    };
    let used = b
        .status
        .as_ref()
        .and_then(|s| s.used.as_ref())
        .and_then(|u| u.cost.as_deref())
        .map_or("-".into(), money);
    format!("{used}/{} {}", money(limit), b.spec.currency)
}

/// "in 3d4h", "never" for a budget that never resets, "-" when the operator has not said yet.
fn resets_cell(b: &TokenBudget, now: Timestamp) -> String {
    match b.status.as_ref().and_then(|s| s.resets_at.as_deref()) {
        Some(t) => relative(now, t),
        None if b.spec.period.reset == ResetPeriod::Never => "never".into(),
        None => "-".into(),
    }
}

/// "0.60": the published pace, "-" without `spec.pacing` or before the operator said.
fn pace_cell(b: &TokenBudget) -> String {
    if b.spec.pacing.is_none() {
        return "-".into();
    }
    b.status
        .as_ref()
        .and_then(|s| s.pacing.as_ref())
        .map_or("-".into(), |p| p.pace.clone())
}

/// The exhausted subjects of all labels, "-" without `spec.subjects` or before the operator said.
fn subjects_exhausted_cell(b: &TokenBudget) -> String {
    match &b.status {
        Some(s) if !b.spec.subjects.is_empty() => grouped(
            s.subjects
                .iter()
                .map(|u| u.exhausted_count)
                .fold(0i64, i64::saturating_add),
        ),
        _ => "-".into(),
    }
}

fn per_period(reset: ResetPeriod) -> &'static str {
    match reset {
        ResetPeriod::Never => "in total",
        ResetPeriod::Hourly => "per hour",
        ResetPeriod::Daily => "per day",
        ResetPeriod::Weekly => "per week",
        ResetPeriod::Monthly => "per month",
    }
}

fn phase_name(phase: BudgetPhase) -> &'static str {
    match phase {
        BudgetPhase::Active => "Active",
        BudgetPhase::Warning => "Warning",
        BudgetPhase::Exhausted => "Exhausted",
    }
}

fn phase_color(phase: BudgetPhase) -> Color {
    match phase {
        BudgetPhase::Active => Color::Green,
        BudgetPhase::Warning => Color::Yellow,
        BudgetPhase::Exhausted => Color::Red,
    }
}

/// The tokens (all types) a budget's workload shares are counted against: the period's input +
/// output, or the listed workloads' sum if that is larger (the status is never self-contradictory
/// on purpose, but a share above 100% would be).
fn workload_total(s: &TokenBudgetStatus) -> i64 {
    let used = s.used.as_ref().map_or(0, |u| u.input.saturating_add(u.output));
    let listed = s.workloads.iter().map(|w| w.tokens).fold(0i64, i64::saturating_add);
    used.max(listed)
}

/// "62.5%" of `total`, "-" when the total is zero.
fn share(tokens: i64, total: i64) -> String {
    if total <= 0 {
        return "-".into();
    }
    let tenths = (i128::from(tokens.max(0)) * 1000 + i128::from(total) / 2) / i128::from(total);
    format!("{}.{}%", tenths / 10, tenths % 10)
}

/// A money string as the status writes it ("250" -> "250.00"); left as is if unparsable.
fn money(s: &str) -> String {
    parse_money(s).map_or_else(|_| s.to_string(), format_money)
}

// ---- numbers and times ----------------------------------------------------------------------

/// A token count in at most 4 significant characters: 950, 12.3k, 4.2M, 5M, 1.5G.
pub fn human(n: i64) -> String {
    const UNITS: [(i128, &str); 6] = [
        (1_000, "k"),
        (1_000_000, "M"),
        (1_000_000_000, "G"),
        (1_000_000_000_000, "T"),
        (1_000_000_000_000_000, "P"),
        (1_000_000_000_000_000_000, "E"),
    ];
    let sign = if n < 0 { "-" } else { "" };
    let abs = i128::from(n).abs();
    if abs < 1000 {
        return n.to_string();
    }
    for (i, (unit, suffix)) in UNITS.iter().enumerate() {
        let tenths = (abs * 10 + unit / 2) / unit;
        // 999,950 rounds to 1000.0k: that is 1M.
        if tenths < 10_000 || i == UNITS.len() - 1 {
            return match tenths % 10 {
                0 => format!("{sign}{}{suffix}", tenths / 10),
                d => format!("{sign}{}.{d}{suffix}", tenths / 10),
            };
        }
    }
    unreachable!("the last unit always returns")
}

/// An exact count with thousands separators: 5,000,000.
pub fn grouped(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A duration in seconds in its two largest units, as kubectl prints ages: 45s, 5m30s, 2h13m,
/// 3d4h, 3d.
pub fn compact(seconds: i64) -> String {
    let s = seconds.max(0);
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3_600, s % 3_600 / 60, s % 60);
    let pair = |a: i64, ua: &str, b: i64, ub: &str| match b {
        0 => format!("{a}{ua}"),
        _ => format!("{a}{ua}{b}{ub}"),
    };
    if d > 0 {
        pair(d, "d", h, "h")
    } else if h > 0 {
        pair(h, "h", m, "m")
    } else if m > 0 {
        pair(m, "m", sec, "s")
    } else {
        format!("{sec}s")
    }
}

/// An RFC 3339 time relative to `now`: "in 2h13m", "5m ago", "now"; left as is if unparsable.
pub fn relative(now: Timestamp, at: &str) -> String {
    let Ok(t) = at.parse::<Timestamp>() else {
        return at.to_string();
    };
    let seconds = t.as_second() - now.as_second();
    match seconds {
        0 => "now".into(),
        s if s > 0 => format!("in {}", compact(s)),
        s => format!("{} ago", compact(-s)),
    }
}

// ---- layout ---------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Color {
    Green,
    Yellow,
    Red,
}

fn paint(text: &str, color: Option<Color>, enabled: bool) -> String {
    match (color, enabled) {
        (Some(c), true) => {
            let code = match c {
                Color::Green => 32,
                Color::Yellow => 33,
                Color::Red => 31,
            };
            format!("\x1b[{code}m{text}\x1b[0m")
        }
        _ => text.to_string(),
    }
}

fn width(s: &str) -> usize {
    s.chars().count()
}

#[derive(Clone, Debug)]
pub(crate) struct Cell {
    text: String,
    color: Option<Color>,
}

impl Cell {
    fn new(text: impl Into<String>, color: Option<Color>) -> Self {
        Self {
            text: text.into(),
            color,
        }
    }

    pub(crate) fn plain(text: impl Into<String>) -> Self {
        Self::new(text, None)
    }
}

/// Columns left-aligned and three spaces apart, as kubectl prints them; colour is added after
/// padding so escape codes never shift a column.
pub(crate) struct Table {
    header: Vec<Cell>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    pub(crate) fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| Cell::plain(*h)).collect(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, row: Vec<Cell>) {
        debug_assert_eq!(row.len(), self.header.len());
        self.rows.push(row);
    }

    pub(crate) fn render(&self, indent: &str, color: bool) -> String {
        let mut widths = Vec::new();
        self.widen(&mut widths, true);
        self.render_widths(&widths, indent, color, true)
    }

    /// A listing's table: without its header line for `--no-headers`.
    fn render_with(&self, opts: &Options) -> String {
        let mut widths = Vec::new();
        self.widen(&mut widths, true);
        self.render_widths(&widths, "", opts.color, !opts.no_headers)
    }

    /// Widens `widths` to fit every row (and the header, with `header`).
    fn widen(&self, widths: &mut Vec<usize>, header: bool) {
        widths.resize(widths.len().max(self.header.len()), 0);
        let header = header.then_some(&self.header);
        for row in header.into_iter().chain(&self.rows) {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(&cell.text));
            }
        }
    }

    fn render_widths(&self, widths: &[usize], indent: &str, color: bool, header: bool) -> String {
        let header = header.then_some(&self.header);
        let mut out = String::new();
        for row in header.into_iter().chain(&self.rows) {
            let mut line = indent.to_string();
            for (i, cell) in row.iter().enumerate() {
                line.push_str(&paint(&cell.text, cell.color, color));
                if i + 1 < row.len() {
                    line.push_str(&" ".repeat(widths[i] - width(&cell.text) + 3));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `Label:   value` lines with the values aligned, as `kubectl describe` prints them.
#[derive(Default)]
struct Fields {
    lines: Vec<(String, String, Option<Color>)>,
}

impl Fields {
    fn add(&mut self, label: &str, value: impl Into<String>) {
        self.lines.push((label.into(), value.into(), None));
    }

    fn add_colored(&mut self, label: &str, value: impl Into<String>, color: Option<Color>) {
        self.lines.push((label.into(), value.into(), color));
    }

    fn render(&self, color: bool) -> String {
        let column = self.lines.iter().map(|(l, _, _)| width(l) + 1).max().unwrap_or(0) + 2;
        let mut out = String::new();
        for (label, value, c) in &self.lines {
            let label = format!("{label}:");
            out.push_str(&label);
            out.push_str(&" ".repeat(column - width(&label)));
            out.push_str(&paint(value, *c, color));
            out.push('\n');
        }
        out
    }
}

/// A section heading of the detailed view; `<none>` on the same line when it is empty.
fn section(title: &str, empty: bool) -> String {
    if empty {
        format!("{title}:  <none>\n")
    } else {
        format!("{title}:\n")
    }
}

#[cfg(test)]
mod tests;
