//! The `admit_per_minute` cap: a token bucket in integer units, so no rounding is lost.
//!
//! One admission costs [`TOKEN`] units and a cap of `apm` admissions a minute refills exactly
//! `apm` units per millisecond. The bucket holds two seconds of allowance (at least one
//! token), so a tick every 100–250 ms admits smoothly. With no cap (`apm == 0`) it always
//! holds one token. Kept under the gate's controller lock.

/// Token-bucket unit: one admission = `TOKEN` units; `admit_per_minute`
/// refills exactly `apm` units per ms (no rounding loss).
pub(super) const TOKEN: u64 = 60_000;

/// Bucket size: two seconds of allowance, at least one token.
fn burst_units(apm: u32) -> u64 {
    (u64::from(apm) * 2000).max(TOKEN)
}

/// The admission allowance of one gate.
#[derive(Debug)]
pub(super) struct TokenBucket {
    units: u64,
    last_refill_ms: u64,
}

impl TokenBucket {
    /// A full token's worth, measured from `now_ms`.
    pub(super) fn new(now_ms: u64) -> Self {
        Self {
            units: TOKEN,
            last_refill_ms: now_ms,
        }
    }

    /// Adds what `apm` allows since the last refill (capped at the burst size).
    pub(super) fn refill(&mut self, apm: u32, now_ms: u64) {
        // A clock set backwards (a rehearsal, an NTP step) restarts the measurement from now
        // instead of stalling the bucket until the old time comes back.
        let dt = now_ms.saturating_sub(self.last_refill_ms);
        self.last_refill_ms = now_ms;
        if apm == 0 {
            self.units = TOKEN;
            return;
        }
        let add = dt.saturating_mul(u64::from(apm));
        self.units = self.units.saturating_add(add).min(burst_units(apm));
    }

    /// How many admissions the bucket allows now (unlimited without a cap).
    pub(super) fn allowance(&self, apm: u32) -> u64 {
        if apm == 0 {
            u64::MAX
        } else {
            self.units / TOKEN
        }
    }

    /// Spends `n` admissions (nothing without a cap).
    pub(super) fn spend(&mut self, apm: u32, n: u64) {
        if apm > 0 {
            self.units = self.units.saturating_sub(n * TOKEN);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refills_exactly_and_caps_the_burst() {
        let mut b = TokenBucket::new(0);
        assert_eq!(b.allowance(60), 1);
        b.spend(60, 1);
        assert_eq!(b.allowance(60), 0);
        // 60 a minute: one a second, no rounding lost over 999 + 1 ms.
        b.refill(60, 999);
        assert_eq!(b.allowance(60), 0);
        b.refill(60, 1_000);
        assert_eq!(b.allowance(60), 1);
        // Never more than two seconds of allowance.
        b.refill(60, 600_000);
        assert_eq!(b.allowance(60), 2);
        // A clock set backwards adds nothing and restarts from there.
        b.spend(60, 2);
        b.refill(60, 1_000);
        assert_eq!(b.allowance(60), 0);
        b.refill(60, 2_000);
        assert_eq!(b.allowance(60), 1);
        // Without a cap: unlimited, and a full token is kept for when a cap is set.
        b.refill(0, 2_001);
        assert_eq!(b.allowance(0), u64::MAX);
        b.spend(0, 5);
        assert_eq!(b.allowance(60), 1);
    }
}
