//! The I/O of an accounting cycle: every scrape of a plan at once (the scraper caps how many
//! are in flight), each timed and counted in the operator's metrics. Pods of bindings that
//! read Prometheus are asked there instead, one query per binding ([`super::prometheus`]).

use std::time::Instant;

use jiff::{SignedDuration, Timestamp};

use crate::{
    metrics::Metrics,
    usage::{
        cycle::{Answer, Answers, Scrape},
        scrape::{ScrapeError, Scraper},
    },
};

/// Scrapes every pod of `scrapes`. `now` is when the cycle started, on the operator's clock:
/// the answers are dated by it plus the time the scrapes took.
pub async fn scrape(scraper: &Scraper, metrics: &Metrics, scrapes: &[Scrape], now: Timestamp) -> Answers {
    let started = Instant::now();
    let results = scrape_each(scraper, metrics, scrapes.iter()).await;
    Answers {
        results,
        answered_at: answered_at(now, started),
    }
}

/// Scrapes each pod of `scrapes`, all at once; the answers in their order.
pub async fn scrape_each<'a>(
    scraper: &Scraper,
    metrics: &Metrics,
    scrapes: impl Iterator<Item = &'a Scrape>,
) -> Vec<Result<Answer, ScrapeError>> {
    futures::future::join_all(scrapes.map(|s| async move {
        let timer = metrics.scrape_duration.start_timer();
        let result = scraper.scrape(&s.target, &s.extractor).await;
        timer.observe_duration();
        count(metrics, &result);
        result.map(Answer::Scraped)
    }))
    .await
}

/// Counts one pod's answer in the operator's metrics, by its outcome.
pub fn count<T>(metrics: &Metrics, result: &Result<T, ScrapeError>) {
    let outcome = result.as_ref().map_or_else(ScrapeError::kind, |_| "ok");
    metrics.scrapes.with_label_values(&[outcome]).inc();
}

/// When every answer of a cycle that began at `now` (on the operator's clock), at the
/// instant `started`, was in: now.
pub fn answered_at(now: Timestamp, started: Instant) -> Timestamp {
    SignedDuration::try_from(started.elapsed())
        .ok()
        .and_then(|d| now.checked_add(d).ok())
        .unwrap_or(now)
}
