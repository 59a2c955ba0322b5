//! The operator's notion of "now", injected so that tests control time exactly.

use std::sync::{Arc, Mutex};

use jiff::Timestamp;

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// The system clock shifted by a fixed signed offset: time runs at the real pace, from
/// another starting point. Lets a whole running operator live a few seconds before a period
/// boundary (integration tests, demos) without touching the machine's clock.
#[derive(Clone, Copy, Debug)]
pub struct OffsetClock {
    offset: jiff::SignedDuration,
}

impl OffsetClock {
    pub fn new(offset: jiff::SignedDuration) -> Self {
        Self { offset }
    }

    /// The clock whose current time is `now` at the moment of the call.
    pub fn starting_at(now: Timestamp) -> Self {
        Self::new(now.duration_since(Timestamp::now()))
    }

    pub fn offset(&self) -> jiff::SignedDuration {
        self.offset
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> Timestamp {
        // Saturates at jiff's range rather than panicking on an absurd offset.
        let now = Timestamp::now();
        now.checked_add(self.offset).unwrap_or(if self.offset.is_negative() {
            Timestamp::MIN
        } else {
            Timestamp::MAX
        })
    }
}

/// A clock that only moves when told to: for tests.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<Mutex<Timestamp>>);

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        Self(Arc::new(Mutex::new(start)))
    }

    pub fn set(&self, to: Timestamp) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = to;
    }

    pub fn advance(&self, by: jiff::SignedDuration) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *now = now.checked_add(by).expect("a test clock stays within jiff's range");
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::SignedDuration;

    #[test]
    fn an_offset_clock_runs_at_the_real_pace_from_another_point() {
        let clock = OffsetClock::new(SignedDuration::from_hours(-5));
        let before = Timestamp::now();
        let shifted = clock.now();
        let after = Timestamp::now();
        assert!(shifted >= before - SignedDuration::from_hours(5));
        assert!(shifted <= after - SignedDuration::from_hours(5));
    }

    #[test]
    fn an_offset_clock_can_start_at_a_chosen_time() {
        let target: Timestamp = "2031-01-01T00:59:55Z".parse().unwrap();
        let clock = OffsetClock::starting_at(target);
        let now = clock.now();
        assert!(
            now >= target && now.duration_since(target) < SignedDuration::from_secs(1),
            "{now}"
        );
    }

    #[test]
    fn an_absurd_offset_saturates() {
        let far = SignedDuration::from_hours(24 * 365 * 20_000);
        assert_eq!(OffsetClock::new(far).now(), Timestamp::MAX);
        assert_eq!(OffsetClock::new(-far).now(), Timestamp::MIN);
    }
}
