//! Token usage as the bound pods report it. No Kubernetes client here.
//!
//! - [`account`]: what the operator keeps of a budget between reconciles (ledger, burn rate,
//!   failing pods) and the usage part of its status.
//! - [`cycle`]: one accounting cycle without its I/O: the plan of scrapes, and the fold of
//!   their answers into the account.
//! - [`history`]: the periods a budget has ended (`status.history`, for chargeback): one
//!   entry per period, newest first, bounded.
//! - [`ledger`]: turns successive scrapes into a budget's usage (the accounting rules),
//!   persisted in the budget's status.
//! - [`pacing`]: the forecast of whether the budget lasts until it resets, the pace agents
//!   read, with hysteresis (docs/pacing.md).
//! - [`parse`]: reads the token counters out of one scraped metrics body (Prometheus text
//!   format or OpenMetrics), for the metric conventions a binding names.
//! - [`period`]: the budget's current period (`periodStart`, `resetsAt`) at calendar
//!   boundaries in its time zone, DST included.
//! - [`pool`]: a budget's share of its pool (a ClusterTokenBudget), and the pool's sum of
//!   its children's shares.
//! - [`pricing`]: prices per model (exact names or `*` globs), exact decimal cost, the money
//!   strings of the status, and `percentUsed`.
//! - [`prometheus`]: the same counters read from a Prometheus-compatible server instead: the
//!   query of a binding's cycle, and its answer read into one answer per pod.
//! - [`scrape`]: scrapes one pod's endpoint with a deadline and a size cap, reading the body
//!   as it streams.
//! - [`subjects`]: usage per subject (a user, an end user, a session, a team: the values of
//!   one label of the series) against `spec.subjects`, and one subject's standing.
//! - [`slots`]: how many scrapes are in flight at once, shared fairly between namespaces.

pub mod account;
pub mod cycle;
pub mod history;
pub mod ledger;
pub mod pacing;
pub mod parse;
pub mod period;
pub mod pool;
pub mod pricing;
pub mod prometheus;
pub mod scrape;
pub mod slots;
pub mod subjects;

pub use parse::{Extraction, Extractor, MAX_LINE_BYTES, MAX_SERIES_VALUE, ParseError, UNKNOWN_MODEL, Usage};
pub use period::{PeriodWindow, UnknownTimeZone};
pub use pricing::{ModelPriceDecimal, MoneyError, PriceError, PriceTable, format_money, parse_money, percent_used};
