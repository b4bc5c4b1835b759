//! The one clock that billing reads: the scheduler's due times, the terms' windows and
//! validity, and the simulator's view of "today". In `serve` it is the real clock; in `dev`
//! and the tests it is a test clock, the real clock plus an offset that only grows, so that a
//! year of billing can be run in seconds. Leases, timeouts and retention keep real time.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use time::{Duration, OffsetDateTime};

/// Real or test time; cheap to clone, every clone reads the same time.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// For a test clock: how far ahead of real time it is, in microseconds.
    ahead_us: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The real clock.
    pub fn real() -> Self {
        Self { ahead_us: None }
    }

    /// A test clock, starting at real time.
    pub fn test() -> Self {
        Self {
            ahead_us: Some(Arc::new(AtomicI64::new(0))),
        }
    }

    pub fn is_test(&self) -> bool {
        self.ahead_us.is_some()
    }

    pub fn now(&self) -> OffsetDateTime {
        let real = OffsetDateTime::now_utc();
        match &self.ahead_us {
            None => real,
            Some(a) => real + Duration::microseconds(a.load(Ordering::SeqCst)),
        }
    }

    /// How far a test clock is ahead of real time (zero for the real clock).
    pub fn ahead(&self) -> Duration {
        self.ahead_us.as_ref().map_or(Duration::ZERO, |a| {
            Duration::microseconds(a.load(Ordering::SeqCst))
        })
    }

    /// Moves a test clock forward to `to` (never back). Returns the time it now reads, or
    /// `None` for the real clock, which cannot be moved.
    pub fn advance_to(&self, to: OffsetDateTime) -> Option<OffsetDateTime> {
        let a = self.ahead_us.as_ref()?;
        let wanted = (to - OffsetDateTime::now_utc()).whole_microseconds();
        let wanted = i64::try_from(wanted).unwrap_or(i64::MAX);
        a.fetch_max(wanted, Ordering::SeqCst);
        Some(self.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_clock_moves_forward_only_and_every_clone_sees_it() {
        let clock = Clock::test();
        let other = clock.clone();
        let later = clock.now() + Duration::days(40);
        clock.advance_to(later).unwrap();
        assert!(other.now() >= later);
        assert!(other.now() - later < Duration::seconds(5));
        clock.advance_to(later - Duration::days(30)).unwrap();
        assert!(other.now() >= later, "a test clock never goes back");
        assert!(Clock::real().advance_to(later).is_none());
        assert_eq!(Clock::real().ahead(), Duration::ZERO);
    }
}
