//! Wall-clock time for decisions that depend on it (tickets, passes, opening hours), behind one
//! type so tests and rehearsals can set it: `freeze_at` stops the clock at an instant,
//! `shift` moves it. The system clock is used otherwise.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};

/// A settable clock. Cheap to read: one atomic load and, when not frozen, the system time.
#[derive(Debug, Default)]
pub struct Clock {
    /// Frozen instant in ms since the epoch; `i64::MIN` = not frozen.
    frozen_ms: AtomicI64,
    /// Added to the system time when not frozen.
    offset_ms: AtomicI64,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock {
            frozen_ms: AtomicI64::new(i64::MIN),
            offset_ms: AtomicI64::new(0),
        }
    }

    /// Now, in ms since the UNIX epoch.
    pub fn now_ms(&self) -> u64 {
        let f = self.frozen_ms.load(Ordering::Relaxed);
        if f != i64::MIN {
            return f.max(0) as u64;
        }
        let sys = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        (sys + self.offset_ms.load(Ordering::Relaxed)).max(0) as u64
    }

    /// Now, as a date-time.
    pub fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.now_ms() as i64).unwrap_or_default()
    }

    /// Stops the clock at `at` (tests, rehearsals).
    pub fn freeze_at(&self, at: DateTime<Utc>) {
        self.frozen_ms
            .store(at.timestamp_millis(), Ordering::Relaxed);
    }

    /// Moves a frozen clock forward by `ms`, or shifts the running one.
    pub fn advance_ms(&self, ms: i64) {
        if self.frozen_ms.load(Ordering::Relaxed) != i64::MIN {
            self.frozen_ms.fetch_add(ms, Ordering::Relaxed);
        } else {
            self.offset_ms.fetch_add(ms, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frozen_clock_moves_only_when_told() {
        let c = Clock::system();
        let at = DateTime::parse_from_rfc3339("2020-04-01T10:00:00+02:00")
            .unwrap()
            .with_timezone(&Utc);
        c.freeze_at(at);
        assert_eq!(c.now(), at);
        c.advance_ms(60_000);
        assert_eq!(c.now_ms() as i64, at.timestamp_millis() + 60_000);
        let s = Clock::system();
        let real = s.now_ms();
        assert!(real > 1_700_000_000_000);
    }
}
