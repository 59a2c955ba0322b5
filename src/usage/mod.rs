//! Token usage as the bound pods report it. No Kubernetes client here.
//!
//! - [`parse`]: reads the token counters out of one scraped metrics body (Prometheus text
//!   format or OpenMetrics), for the metric conventions a binding names.

pub mod parse;

pub use parse::{Extractor, MAX_SERIES_VALUE, ParseError, UNKNOWN_MODEL, Usage};
