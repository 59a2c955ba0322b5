//! The I/O of an accounting cycle: every scrape of a plan at once (the scraper caps how many
//! are in flight), each timed and counted in the operator's metrics.

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
    let results = futures::future::join_all(scrapes.iter().map(|s| async move {
        let timer = metrics.scrape_duration.start_timer();
        let result = scraper.scrape(&s.target, &s.extractor).await;
        timer.observe_duration();
        let outcome = result.as_ref().map_or_else(ScrapeError::kind, |_| "ok");
        metrics.scrapes.with_label_values(&[outcome]).inc();
        result.map(Answer::Scraped)
    }))
    .await;
    // Every answer was in by now.
    let answered_at = SignedDuration::try_from(started.elapsed())
        .ok()
        .and_then(|d| now.checked_add(d).ok())
        .unwrap_or(now);
    Answers { results, answered_at }
}
