//! The report, from `fixtures/history.yaml`: every figure known in advance.

use serde::Deserialize;

use super::*;
use crate::api::{ChildUsage, PeriodSummary, PoolPeriodSummary};

fn fixtures() -> Vec<TokenBudget> {
    serde_yaml::Deserializer::from_str(include_str!("../fixtures/history.yaml"))
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
        .expect("a fixture")
}

/// A multi-line expectation written from its second line on.
fn text(s: &str) -> &str {
    s.strip_prefix('\n').unwrap_or(s)
}

fn range(from: Option<&str>, to: Option<&str>) -> PeriodRange {
    PeriodRange {
        from: from.map(|s| parse_bound(s).unwrap()),
        to: to.map(|s| parse_bound(s).unwrap()),
        ..Default::default()
    }
}

fn all(by: GroupBy, range: &PeriodRange) -> Report {
    build(&fixtures(), Listing::AllNamespaces, None, range, by).unwrap()
}

fn every(by: GroupBy) -> Report {
    all(by, &PeriodRange::default())
}

#[test]
fn by_budget_with_a_total_per_currency() {
    assert_eq!(
        table(&every(GroupBy::Budget), Listing::AllNamespaces, false),
        text(
            "
NAMESPACE   BUDGET     PERIODS   INPUT       OUTPUT      TOKENS      COST
team-a      research   3         4,100,000   800,000     4,900,000   18.25 USD
team-a      starter    1         100,000     20,000      120,000     -
team-b      support    1         2,000,000   1,000,000   3,000,000   10.00 EUR
TOTAL                  1         2,000,000   1,000,000   3,000,000   10.00 EUR
TOTAL                  4         4,200,000   820,000     5,020,000   18.25 USD
"
        )
    );
}

#[test]
fn by_namespace() {
    assert_eq!(
        table(&every(GroupBy::Namespace), Listing::AllNamespaces, false),
        text(
            "
NAMESPACE   PERIODS   INPUT       OUTPUT      TOKENS      COST
team-a      4         4,200,000   820,000     5,020,000   18.25 USD
team-b      1         2,000,000   1,000,000   3,000,000   10.00 EUR
TOTAL       1         2,000,000   1,000,000   3,000,000   10.00 EUR
TOTAL       4         4,200,000   820,000     5,020,000   18.25 USD
"
        )
    );
}

#[test]
fn by_workload_with_what_the_lists_leave_out() {
    assert_eq!(
        table(&every(GroupBy::Workload), Listing::AllNamespaces, false),
        text(
            "
NAMESPACE   BUDGET     KIND          NAME           TOKENS      COST
team-a      research   Deployment    summarizer     4,100,000   15.25 USD
team-a      research   Job           nightly-eval   500,000     1.875 USD
team-a      research   -             (other)        300,000     1.125 USD
team-a      starter    StatefulSet   chat-agent     120,000     -
team-b      support    Deployment    helpdesk       2,500,000   8.80 EUR
team-b      support    -             (other)        500,000     1.20 EUR
TOTAL                                               3,000,000   10.00 EUR
TOTAL                                               5,020,000   18.25 USD
"
        )
    );
    // In one namespace: no NAMESPACE column, as in the other commands; --no-headers.
    let report = build(
        &in_namespace("team-a"),
        Listing::Namespace("team-a"),
        None,
        &PeriodRange::default(),
        GroupBy::Workload,
    )
    .unwrap();
    assert_eq!(
        table(&report, Listing::Namespace("team-a"), true),
        text(
            "
research   Deployment    summarizer     4,100,000   15.25 USD
research   Job           nightly-eval   500,000     1.875 USD
research   -             (other)        300,000     1.125 USD
starter    StatefulSet   chat-agent     120,000     -
TOTAL                                   5,020,000   18.25 USD
"
        )
    );
}

#[test]
fn by_model_largest_first_within_each_currency() {
    assert_eq!(
        table(&every(GroupBy::Model), Listing::AllNamespaces, false),
        text(
            "
MODEL           INPUT       OUTPUT      TOKENS      COST
mistral-large   2,000,000   1,000,000   3,000,000   10.00 EUR
gpt-4o          3,600,000   700,000     4,300,000   16.00 USD
llama-3-70b     100,000     20,000      120,000     -
(other)         500,000     100,000     600,000     2.25 USD
TOTAL           2,000,000   1,000,000   3,000,000   10.00 EUR
TOTAL           4,200,000   820,000     5,020,000   18.25 USD
"
        )
    );
}

#[test]
fn csv_names_every_namespace_and_has_no_total_line() {
    assert_eq!(
        csv(&every(GroupBy::Workload), false),
        "namespace,budget,kind,name,currency,tokens,cost\r\n\
         team-a,research,Deployment,summarizer,USD,4100000,15.25\r\n\
         team-a,research,Job,nightly-eval,USD,500000,1.875\r\n\
         team-a,research,,(other),USD,300000,1.125\r\n\
         team-a,starter,StatefulSet,chat-agent,USD,120000,\r\n\
         team-b,support,Deployment,helpdesk,EUR,2500000,8.80\r\n\
         team-b,support,,(other),EUR,500000,1.20\r\n"
    );
    assert_eq!(
        csv(&every(GroupBy::Budget), true),
        "team-a,research,USD,3,4100000,800000,4900000,18.25\r\n\
         team-a,starter,USD,1,100000,20000,120000,\r\n\
         team-b,support,EUR,1,2000000,1000000,3000000,10.00\r\n"
    );
    assert_eq!(
        csv(&every(GroupBy::Namespace), false).lines().next(),
        Some("namespace,currency,periods,input,output,tokens,cost")
    );
    assert_eq!(
        csv(&every(GroupBy::Model), false).lines().nth(4),
        Some("(other),USD,500000,100000,600000,2.25")
    );
    assert_eq!(csv_field("a,b"), "\"a,b\"");
    assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
}

#[test]
fn json_has_the_rows_the_totals_and_the_periods() {
    let report = build(
        &in_namespace("team-b"),
        Listing::Namespace("team-b"),
        None,
        &range(Some("2026-11-01"), None),
        GroupBy::Workload,
    )
    .unwrap();
    assert_eq!(
        json(&report),
        text(
            r#"
{
  "by": "workload",
  "from": "2026-11-01",
  "includeCurrent": false,
  "last": null,
  "periods": [
    {
      "budget": "support",
      "cost": "10.00",
      "currency": "EUR",
      "current": false,
      "input": 2000000,
      "namespace": "team-b",
      "output": 1000000,
      "periodEnd": "2026-12-01T00:00:00Z",
      "periodStart": "2026-11-01T00:00:00Z",
      "tokens": 3000000
    }
  ],
  "rows": [
    {
      "budget": "support",
      "cost": "8.80",
      "currency": "EUR",
      "kind": "Deployment",
      "name": "helpdesk",
      "namespace": "team-b",
      "periods": 1,
      "tokens": 2500000
    },
    {
      "budget": "support",
      "cost": "1.20",
      "currency": "EUR",
      "namespace": "team-b",
      "other": true,
      "periods": 1,
      "tokens": 500000
    }
  ],
  "to": null,
  "totals": [
    {
      "cost": "10.00",
      "currency": "EUR",
      "input": 2000000,
      "output": 1000000,
      "periods": 1,
      "tokens": 3000000
    }
  ]
}
"#
        )
    );
    // Without pricing the cost is null, not zero.
    let report = build(
        &[named("starter")],
        Listing::Namespace("team-a"),
        Some("starter"),
        &PeriodRange::default(),
        GroupBy::Budget,
    )
    .unwrap();
    let doc: Value = serde_json::from_str(&json(&report)).unwrap();
    assert_eq!(doc["rows"][0]["cost"], Value::Null);
    assert_eq!(doc["totals"][0]["tokens"], 120_000);
}

/// Every row of a currency added up is its total, and the total is the sum of its periods'
/// `used`: for every grouping and range.
#[test]
fn totals_add_up_for_every_grouping_and_range() {
    let ranges = [
        PeriodRange::default(),
        range(Some("2026-11-01"), Some("2026-12-01")),
        range(Some("2026-10-01"), None),
        PeriodRange {
            last: Some(1),
            include_current: true,
            ..Default::default()
        },
    ];
    for by in [GroupBy::Budget, GroupBy::Namespace, GroupBy::Workload, GroupBy::Model] {
        for range in &ranges {
            let report = all(by, range);
            for total in &report.totals {
                let mut rows = Usage::default();
                for row in report.rows.iter().filter(|r| r.currency == total.currency) {
                    rows.add(&row.usage).unwrap();
                }
                let mut periods = Usage::default();
                let mut count = 0;
                for p in report.periods.iter().filter(|p| p.currency == total.currency) {
                    periods.add(&p.used).unwrap();
                    count += 1;
                }
                assert_eq!(total.usage, periods, "{by:?} {range:?}");
                assert_eq!(total.periods, count, "{by:?} {range:?}");
                assert_eq!(
                    (rows.tokens, rows.cost),
                    (total.usage.tokens, total.usage.cost),
                    "{by:?} {range:?} {}",
                    total.currency
                );
                if by != GroupBy::Workload {
                    assert_eq!((rows.input, rows.output), (total.usage.input, total.usage.output));
                }
            }
        }
    }
}

#[test]
fn a_date_is_midnight_in_the_budgets_own_time_zone() {
    // research's November starts at midnight in Berlin (23:00 UTC the day before): a date
    // selects it, the UTC instant does not.
    let report = all(GroupBy::Budget, &range(Some("2026-11-01"), Some("2026-12-01")));
    assert_eq!(
        table(&report, Listing::AllNamespaces, false),
        text(
            "
NAMESPACE   BUDGET     PERIODS   INPUT       OUTPUT      TOKENS      COST
team-a      research   1         3,000,000   600,000     3,600,000   13.50 USD
team-a      starter    1         100,000     20,000      120,000     -
team-b      support    1         2,000,000   1,000,000   3,000,000   10.00 EUR
TOTAL                  1         2,000,000   1,000,000   3,000,000   10.00 EUR
TOTAL                  2         3,100,000   620,000     3,720,000   13.50 USD
"
        )
    );
    let report = all(GroupBy::Budget, &range(Some("2026-11-01T00:00:00Z"), None));
    let budgets: Vec<&Key> = report.rows.iter().map(|r| &r.key).collect();
    assert_eq!(
        budgets,
        [
            &Key::Budget {
                namespace: "team-a".into(),
                budget: "starter".into()
            },
            &Key::Budget {
                namespace: "team-b".into(),
                budget: "support".into()
            }
        ]
    );
    // --to is exclusive: consecutive months never share a period.
    let october = all(GroupBy::Budget, &range(Some("2026-10-01"), Some("2026-11-01")));
    let november = all(GroupBy::Budget, &range(Some("2026-11-01"), Some("2026-12-01")));
    let both = all(GroupBy::Budget, &range(Some("2026-10-01"), Some("2026-12-01")));
    assert_eq!(october.periods.len() + november.periods.len(), both.periods.len());
}

#[test]
fn last_and_the_current_period() {
    let report = build(
        &[named("research")],
        Listing::Namespace("team-a"),
        Some("research"),
        &PeriodRange {
            last: Some(2),
            ..Default::default()
        },
        GroupBy::Budget,
    )
    .unwrap();
    let starts: Vec<&str> = report.periods.iter().map(|p| p.start.as_str()).collect();
    assert_eq!(starts, ["2026-11-01T00:00:00+01:00", "2026-10-01T00:00:00+02:00"]);
    assert_eq!(report.totals[0].usage.cost, Some(Decimal::new(1800, 2)));

    // The current period so far, and a budget that never resets has only that.
    let report = all(
        GroupBy::Budget,
        &PeriodRange {
            from: Some(parse_bound("2026-12-01").unwrap()),
            include_current: true,
            ..Default::default()
        },
    );
    assert_eq!(
        table(&report, Listing::AllNamespaces, false),
        text(
            "
NAMESPACE   BUDGET     PERIODS   INPUT    OUTPUT   TOKENS   COST
team-a      research   1         10,000   2,000    12,000   0.045 USD
team-a      starter    1         0        0        0        -
team-b      support    1         0        0        0        -
TOTAL                  1         0        0        0        -
TOTAL                  2         10,000   2,000    12,000   0.045 USD
"
        )
    );
    assert!(report.periods.iter().all(|p| p.current));
    // archive's one period started in January: in the range only without --from.
    let report = all(
        GroupBy::Budget,
        &PeriodRange {
            include_current: true,
            ..Default::default()
        },
    );
    assert_eq!(report.periods.len(), 3 + 1 + 1 + 4);
    let archive = report.periods.iter().find(|p| p.budget == "archive").unwrap();
    assert_eq!(archive.end, None);
}

#[test]
fn costs_are_summed_exactly() {
    let mut u = Usage::default();
    for cost in ["0.1", "0.2", "0.000001", "12345678901234.99"] {
        u.add(&Usage {
            cost: Some(parse_money(cost).unwrap()),
            ..Default::default()
        })
        .unwrap();
    }
    assert_eq!(exact_money(u.cost.unwrap()), "12345678901235.290001");
    assert_eq!(exact_money(Decimal::new(5, 0)), "5.00");
    assert_eq!(exact_money(Decimal::new(-1, 6)), "-0.000001");
}

/// A budget whose status says `history` with one changed field.
fn research_with(change: impl FnOnce(&mut PeriodSummary)) -> TokenBudget {
    let mut b = named("research");
    change(&mut b.status.as_mut().unwrap().history[0]);
    b
}

fn one(b: TokenBudget, by: GroupBy) -> Result<Report, String> {
    build(
        &[b],
        Listing::Namespace("team-a"),
        Some("research"),
        &PeriodRange::default(),
        by,
    )
}

#[test]
fn garbage_in_a_status_is_a_clear_error() {
    let at = "TokenBudget team-a/research: status.history[0]";
    for (change, by, want) in [
        (
            Box::new(|p: &mut PeriodSummary| p.used.cost = Some("lots".into())) as Box<dyn FnOnce(&mut PeriodSummary)>,
            GroupBy::Budget,
            format!("{at}: used.cost \"lots\" is not a decimal amount"),
        ),
        (
            Box::new(|p: &mut PeriodSummary| p.period_start = "last month".into()),
            GroupBy::Budget,
            format!("{at}: periodStart \"last month\" is not an RFC 3339 time"),
        ),
        (
            Box::new(|p: &mut PeriodSummary| p.period_end = p.period_start.clone()),
            GroupBy::Budget,
            format!("{at}: periodEnd 2026-11-01T00:00:00+01:00 is not after periodStart 2026-11-01T00:00:00+01:00"),
        ),
        (
            Box::new(|p: &mut PeriodSummary| p.used.input = -3),
            GroupBy::Budget,
            format!("{at}: used.input is negative (-3)"),
        ),
        (
            Box::new(|p: &mut PeriodSummary| p.workloads[0].tokens = 9_000_000),
            GroupBy::Workload,
            format!("{at}: the workloads listed used 9,500,000 tokens, more than the whole period (3,600,000)"),
        ),
        (
            Box::new(|p: &mut PeriodSummary| p.models[0].cost = Some("20".into())),
            GroupBy::Model,
            format!("{at}: the models listed cost 20.00, more than the whole period (13.50)"),
        ),
        (
            Box::new(|p: &mut PeriodSummary| p.currency = " ".into()),
            GroupBy::Budget,
            format!("{at}: the currency is empty"),
        ),
    ] {
        assert_eq!(one(research_with(change), by).unwrap_err(), want);
    }
    let mut b = named("research");
    b.spec.period.timezone = "Mars/Olympus".into();
    let err = one(b, GroupBy::Budget).unwrap_err();
    assert!(
        err.starts_with("TokenBudget team-a/research: spec.period.timezone \"Mars/Olympus\": "),
        "{err}"
    );
}

#[test]
fn listed_costs_may_exceed_the_period_by_their_rounding_only() {
    // Two workloads of 0.0000005 USD each round to 0.000001; the period's 0.000001.
    let b = research_with(|p| {
        p.used.cost = Some("0.000001".into());
        p.models[0].cost = Some("0.000001".into());
        p.workloads[0].cost = Some("0.000001".into());
        p.workloads[1].cost = Some("0.000001".into());
    });
    let report = one(b, GroupBy::Workload).unwrap();
    let other = report
        .rows
        .iter()
        .find(|r| matches!(&r.key, Key::Workload { workload: None, .. }))
        .unwrap();
    assert_eq!(other.usage.cost, Some(Decimal::new(-1, 6)));
    let b = research_with(|p| p.workloads[0].cost = Some("13.00".into()));
    assert_eq!(
        one(b, GroupBy::Workload).unwrap_err(),
        "TokenBudget team-a/research: status.history[0]: the workloads listed cost 14.875, more than the whole period (13.50)"
    );
}

#[test]
fn nothing_to_report_says_why() {
    let none = PeriodRange::default();
    let err = build(
        &[named("archive")],
        Listing::Namespace("team-b"),
        Some("archive"),
        &none,
        GroupBy::Budget,
    );
    assert_eq!(
        err.unwrap_err(),
        "TokenBudget team-b/archive has no ended periods yet (status.history is empty): it never resets (period.reset: Never); --include-current reports its usage so far"
    );
    let mut fresh = named("starter");
    fresh.status.as_mut().unwrap().history.clear();
    let err = build(
        &[fresh.clone()],
        Listing::Namespace("team-a"),
        Some("starter"),
        &none,
        GroupBy::Budget,
    );
    assert_eq!(
        err.unwrap_err(),
        "TokenBudget team-a/starter has no ended periods yet (status.history is empty): its first period ends at 2027-01-01T00:00:00Z; --include-current reports the current one"
    );
    fresh.status = None;
    let err = build(
        &[fresh],
        Listing::Namespace("team-a"),
        Some("starter"),
        &none,
        GroupBy::Budget,
    );
    assert_eq!(
        err.unwrap_err(),
        "TokenBudget team-a/starter has no ended periods yet (status.history is empty): the operator has not reported on it yet"
    );
    let december = range(Some("2026-12-01"), None);
    let err = build(
        &[named("research")],
        Listing::Namespace("team-a"),
        Some("research"),
        &december,
        GroupBy::Budget,
    );
    assert_eq!(
        err.unwrap_err(),
        "no ended period of TokenBudget team-a/research starts from 2026-12-01 on"
    );
    let err = build(
        &in_namespace("team-a"),
        Listing::Namespace("team-a"),
        None,
        &december,
        GroupBy::Budget,
    );
    assert_eq!(
        err.unwrap_err(),
        "no ended period of the TokenBudgets in namespace team-a starts from 2026-12-01 on"
    );
    let err = build(
        &[named("archive")],
        Listing::AllNamespaces,
        None,
        &none,
        GroupBy::Budget,
    );
    assert_eq!(
        err.unwrap_err(),
        "no TokenBudget in any namespace has ended periods yet (status.history is empty); --include-current reports the current ones"
    );
}

#[test]
fn a_range_inverted_in_a_budgets_time_zone_is_refused() {
    // 2026-11-01 is 23:00 UTC the day before in Berlin: before 23:30 there, after it in UTC.
    let r = range(Some("2026-11-01"), Some("2026-10-31T23:30:00Z"));
    assert!(r.check().is_ok());
    assert!(
        build(
            &[named("research")],
            Listing::Namespace("team-a"),
            None,
            &r,
            GroupBy::Budget
        )
        .is_ok()
    );
    assert_eq!(
        build(
            &[named("starter")],
            Listing::Namespace("team-a"),
            None,
            &r,
            GroupBy::Budget
        )
        .unwrap_err(),
        "TokenBudget team-a/starter: --from 2026-11-01 is not before --to 2026-10-31T23:30:00Z: no period can start in that range"
    );
}

#[test]
fn bounds_are_dates_or_rfc3339_times() {
    assert_eq!(
        parse_bound("2026-11-01"),
        Ok(Bound::Date(jiff::civil::date(2026, 11, 1)))
    );
    assert_eq!(
        parse_bound("2026-11-01T00:00:00+01:00"),
        Ok(Bound::Time("2026-10-31T23:00:00Z".parse().unwrap()))
    );
    for bad in ["2026-11", "2026-11-31", "20261101", "2026-11-01T00:00:00", "now", ""] {
        assert!(parse_bound(bad).is_err(), "{bad}");
    }
}

// ---- a pool (--pool), from `fixtures/pool-history.yaml` -------------------------------------

fn pool() -> ClusterTokenBudget {
    serde_yaml::from_str(include_str!("../fixtures/pool-history.yaml")).expect("fixture parses")
}

fn of_pool(by: GroupBy, range: &PeriodRange) -> Report {
    build_pool(&pool(), range, by).unwrap()
}

/// The pool with its newest `history` entry changed.
fn pool_with(change: impl FnOnce(&mut PoolPeriodSummary)) -> ClusterTokenBudget {
    let mut p = pool();
    change(&mut p.status.as_mut().unwrap().history[0]);
    p
}

#[test]
fn a_pool_by_child_with_what_the_list_leaves_out_and_a_total_per_currency() {
    let report = of_pool(GroupBy::Child, &PeriodRange::default());
    // The NAMESPACE column is there without -A: a pool's children are in many namespaces.
    assert_eq!(
        table(&report, Listing::Namespace("default"), false),
        text(
            "
NAMESPACE   BUDGET        PERIODS   TOKENS      COST
team-a      research      2         700,000     2.65 EUR
team-a      research      1         3,000,000   12.00 USD
team-a      research-v2   1         50,000      0.125 EUR
team-b      support       1         400,000     1.60 EUR
team-b      support       1         1,500,000   6.00 USD
team-c      ops           1         50,000      0.125 EUR
-           (other)       1         500,000     2.00 USD
TOTAL                     2         1,200,000   4.50 EUR
TOTAL                     1         5,000,000   20.00 USD
"
        )
    );
    assert_eq!(
        csv(&report, false),
        "namespace,budget,currency,periods,tokens,cost\r\n\
         team-a,research,EUR,2,700000,2.65\r\n\
         team-a,research,USD,1,3000000,12.00\r\n\
         team-a,research-v2,EUR,1,50000,0.125\r\n\
         team-b,support,EUR,1,400000,1.60\r\n\
         team-b,support,USD,1,1500000,6.00\r\n\
         team-c,ops,EUR,1,50000,0.125\r\n\
         ,(other),USD,1,500000,2.00\r\n"
    );
}

#[test]
fn a_pool_by_namespace_sums_the_children_of_each_namespace() {
    let report = of_pool(GroupBy::Namespace, &PeriodRange::default());
    // September's two children of team-a are one row of one period.
    assert_eq!(
        table(&report, Listing::AllNamespaces, false),
        text(
            "
NAMESPACE   PERIODS   TOKENS      COST
team-a      2         750,000     2.775 EUR
team-a      1         3,000,000   12.00 USD
team-b      1         400,000     1.60 EUR
team-b      1         1,500,000   6.00 USD
team-c      1         50,000      0.125 EUR
(other)     1         500,000     2.00 USD
TOTAL       2         1,200,000   4.50 EUR
TOTAL       1         5,000,000   20.00 USD
"
        )
    );
    assert_eq!(csv(&report, true).lines().last(), Some("(other),USD,1,500000,2.00"));
    assert_eq!(
        csv(&report, false).lines().next(),
        Some("namespace,currency,periods,tokens,cost")
    );
}

#[test]
fn a_pool_by_model() {
    let report = of_pool(GroupBy::Model, &PeriodRange::default());
    assert_eq!(
        table(&report, Listing::AllNamespaces, false),
        text(
            "
MODEL     INPUT       OUTPUT      TOKENS      COST
gpt-4o    1,000,000   200,000     1,200,000   4.50 EUR
gpt-4o    3,000,000   600,000     3,600,000   13.50 USD
(other)   1,000,000   400,000     1,400,000   6.50 USD
TOTAL     1,000,000   200,000     1,200,000   4.50 EUR
TOTAL     4,000,000   1,000,000   5,000,000   20.00 USD
"
        )
    );
    assert_eq!(
        csv(&report, false).lines().nth(3),
        Some("(other),USD,1000000,400000,1400000,6.50")
    );
}

#[test]
fn a_pools_json_names_the_pool_and_its_periods() {
    let report = of_pool(GroupBy::Child, &range(Some("2026-11-01"), Some("2026-12-01")));
    assert_eq!(
        json(&report),
        text(
            r#"
{
  "by": "child",
  "from": "2026-11-01",
  "includeCurrent": false,
  "last": null,
  "periods": [
    {
      "cost": "20.00",
      "countedTokens": 5000000,
      "currency": "USD",
      "current": false,
      "input": 4000000,
      "output": 1000000,
      "periodEnd": "2026-12-01T00:00:00+01:00",
      "periodStart": "2026-11-01T00:00:00+01:00",
      "pool": "research",
      "tokens": 5000000
    }
  ],
  "pool": "research",
  "rows": [
    {
      "budget": "research",
      "cost": "12.00",
      "currency": "USD",
      "namespace": "team-a",
      "periods": 1,
      "tokens": 3000000
    },
    {
      "budget": "support",
      "cost": "6.00",
      "currency": "USD",
      "namespace": "team-b",
      "periods": 1,
      "tokens": 1500000
    },
    {
      "cost": "2.00",
      "currency": "USD",
      "other": true,
      "periods": 1,
      "tokens": 500000
    }
  ],
  "to": "2026-12-01",
  "totals": [
    {
      "cost": "20.00",
      "currency": "USD",
      "periods": 1,
      "tokens": 5000000
    }
  ]
}
"#
        )
    );
    // By model, the totals have input and output, as a budget report's.
    let doc: Value = serde_json::from_str(&json(&of_pool(GroupBy::Model, &PeriodRange::default()))).unwrap();
    assert_eq!(doc["totals"][1]["input"], 4_000_000);
    assert_eq!(doc["rows"][2]["other"], true);
}

/// As for budgets: the rows of a currency add up to its total, the total to the periods read.
#[test]
fn a_pools_totals_add_up_for_every_grouping_and_range() {
    let ranges = [
        PeriodRange::default(),
        range(Some("2026-11-01"), Some("2026-12-01")),
        range(Some("2026-09-01"), Some("2026-11-01")),
        PeriodRange {
            last: Some(2),
            include_current: true,
            ..Default::default()
        },
    ];
    for by in [GroupBy::Child, GroupBy::Namespace, GroupBy::Model] {
        for range in &ranges {
            let report = of_pool(by, range);
            assert_eq!(report.pool.as_deref(), Some("research"));
            for total in &report.totals {
                let mut rows = Usage::default();
                for row in report.rows.iter().filter(|r| r.currency == total.currency) {
                    rows.add(&row.usage).unwrap();
                }
                let mut periods = Usage::default();
                for p in report.periods.iter().filter(|p| p.currency == total.currency) {
                    periods.add(&p.total(by)).unwrap();
                }
                assert_eq!(total.usage, periods, "{by:?} {range:?}");
                assert_eq!(
                    (rows.tokens, rows.cost),
                    (total.usage.tokens, total.usage.cost),
                    "{by:?} {range:?} {}",
                    total.currency
                );
                if by == GroupBy::Model {
                    assert_eq!((rows.input, rows.output), (total.usage.input, total.usage.output));
                }
            }
        }
    }
}

#[test]
fn a_pools_dates_are_midnight_in_the_pools_time_zone() {
    // November starts at midnight in Berlin, 23:00 UTC the day before: the date selects it.
    let report = of_pool(GroupBy::Child, &range(Some("2026-11-01"), Some("2026-12-01")));
    let starts: Vec<&str> = report.periods.iter().map(|p| p.start.as_str()).collect();
    assert_eq!(starts, ["2026-11-01T00:00:00+01:00"]);
    // The UTC instant is an hour later: November is not in the range, nor anything else.
    assert_eq!(
        build_pool(&pool(), &range(Some("2026-11-01T00:00:00Z"), None), GroupBy::Child).unwrap_err(),
        "no ended period of ClusterTokenBudget research starts from 2026-11-01T00:00:00Z on"
    );
    // October and September: EUR only.
    let report = of_pool(GroupBy::Child, &range(Some("2026-09-01"), Some("2026-11-01")));
    assert_eq!(report.periods.len(), 2);
    assert_eq!(
        report.totals.iter().map(|t| t.currency.as_str()).collect::<Vec<_>>(),
        ["EUR"]
    );
    // --to is exclusive: consecutive months never share a period.
    let months = [
        ("2026-09-01", "2026-10-01"),
        ("2026-10-01", "2026-11-01"),
        ("2026-11-01", "2026-12-01"),
    ];
    for (from, to) in months {
        assert_eq!(
            of_pool(GroupBy::Model, &range(Some(from), Some(to))).periods.len(),
            1,
            "{from}"
        );
    }
    let mut p = pool();
    p.spec.period.timezone = "Mars/Olympus".into();
    let err = build_pool(&p, &PeriodRange::default(), GroupBy::Child).unwrap_err();
    assert!(
        err.starts_with("ClusterTokenBudget research: spec.period.timezone \"Mars/Olympus\": "),
        "{err}"
    );
}

#[test]
fn a_pools_last_periods_and_its_current_one() {
    let last = PeriodRange {
        last: Some(1),
        ..Default::default()
    };
    assert_eq!(
        csv(&of_pool(GroupBy::Child, &last), true),
        "team-a,research,USD,1,3000000,12.00\r\n\
         team-b,support,USD,1,1500000,6.00\r\n\
         ,(other),USD,1,500000,2.00\r\n"
    );
    // The current period: its listed shares; those beyond them (otherShares) and the
    // children that left (departed) are its "(other)".
    let current = PeriodRange {
        from: Some(parse_bound("2026-12-01").unwrap()),
        include_current: true,
        ..Default::default()
    };
    let report = of_pool(GroupBy::Child, &current);
    assert_eq!(
        table(&report, Listing::AllNamespaces, false),
        text(
            "
NAMESPACE   BUDGET     PERIODS   TOKENS   COST
team-a      research   1         9,000    0.03375 USD
-           (other)    1         3,000    0.01125 USD
TOTAL                  1         12,000   0.045 USD
"
        )
    );
    assert!(report.periods[0].current);
    assert_eq!(report.periods[0].end.as_deref(), Some("2027-01-01T00:00:00+01:00"));
    let report = of_pool(
        GroupBy::Model,
        &PeriodRange {
            include_current: true,
            ..Default::default()
        },
    );
    assert_eq!(report.periods.len(), 3 + 1);
}

/// A pool that counts only output tokens lists its children's output tokens: by child the
/// rows add up to its `used.tokens`; by model to all tokens, as for a budget.
#[test]
fn a_pool_that_counts_some_token_types() {
    let p = pool_with(|e| {
        e.used.tokens = 1_000_000;
        e.children = vec![
            ChildUsage {
                namespace: "team-a".into(),
                name: "research".into(),
                tokens: 600_000,
                cost: Some("12.00".into()),
            },
            ChildUsage {
                namespace: "team-b".into(),
                name: "support".into(),
                tokens: 300_000,
                cost: Some("6.00".into()),
            },
        ];
    });
    let last = PeriodRange {
        last: Some(1),
        ..Default::default()
    };
    let report = build_pool(&p, &last, GroupBy::Child).unwrap();
    assert_eq!(
        csv(&report, true),
        "team-a,research,USD,1,600000,12.00\r\n\
         team-b,support,USD,1,300000,6.00\r\n\
         ,(other),USD,1,100000,2.00\r\n"
    );
    assert_eq!(report.totals[0].usage.tokens, 1_000_000);
    let report = build_pool(&p, &last, GroupBy::Model).unwrap();
    assert_eq!(report.totals[0].usage.tokens, 5_000_000);
}

#[test]
fn a_pool_is_reported_by_child_namespace_or_model_only() {
    for (by, want) in [
        (
            GroupBy::Budget,
            "--by budget does not go with --pool: a pool's budgets are its children, use --by child \
             (or report -A --by budget for every budget's own periods)",
        ),
        (
            GroupBy::Workload,
            "--by workload does not go with --pool: a pool's history does not list workloads; \
             run report -n NAMESPACE --by workload on the team's budget",
        ),
    ] {
        assert_eq!(build_pool(&pool(), &PeriodRange::default(), by).unwrap_err(), want);
    }
    assert_eq!(
        build(
            &fixtures(),
            Listing::AllNamespaces,
            None,
            &PeriodRange::default(),
            GroupBy::Child
        )
        .unwrap_err(),
        "--by child is for a pool's children: use it with --pool NAME"
    );
}

#[test]
fn garbage_in_a_pools_status_is_a_clear_error() {
    let at = "ClusterTokenBudget research: status.history[0]";
    let p = pool_with(|e| e.children[0].tokens = 4_000_000);
    assert_eq!(
        build_pool(&p, &PeriodRange::default(), GroupBy::Child).unwrap_err(),
        format!("{at}: the children listed used 5,500,000 tokens, more than the whole period (5,000,000)")
    );
    let p = pool_with(|e| e.children[1].cost = Some("9".into()));
    assert_eq!(
        build_pool(&p, &PeriodRange::default(), GroupBy::Namespace).unwrap_err(),
        format!("{at}: the children listed cost 21.00, more than the whole period (20.00)")
    );
    let p = pool_with(|e| e.children[0].tokens = -1);
    assert_eq!(
        build_pool(&p, &PeriodRange::default(), GroupBy::Model).unwrap_err(),
        format!("{at}: children[0].tokens is negative (-1)")
    );
    let mut p = pool();
    p.status.as_mut().unwrap().shares[0].used.cost = Some("lots".into());
    let current = PeriodRange {
        include_current: true,
        ..Default::default()
    };
    assert_eq!(
        build_pool(&p, &current, GroupBy::Child).unwrap_err(),
        "ClusterTokenBudget research: status (the current period): shares[0].used.cost \"lots\" is not a decimal amount"
    );
}

#[test]
fn nothing_to_report_of_a_pool_says_why() {
    let mut p = pool();
    p.status.as_mut().unwrap().history.clear();
    assert_eq!(
        build_pool(&p, &PeriodRange::default(), GroupBy::Child).unwrap_err(),
        "ClusterTokenBudget research has no ended periods yet (status.history is empty): its first period ends at 2027-01-01T00:00:00+01:00; --include-current reports the current one"
    );
    p.status = None;
    assert_eq!(
        build_pool(&p, &PeriodRange::default(), GroupBy::Child).unwrap_err(),
        "ClusterTokenBudget research has no ended periods yet (status.history is empty): the operator has not reported on it yet"
    );
}
