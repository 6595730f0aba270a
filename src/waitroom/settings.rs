//! A gate's admission settings: the config keys ([`GateSettings`], [`Mode`]), their validation,
//! and `LiveSettings`, the copy in force that the lock-free paths read and the controller
//! changes at runtime.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use serde::Deserialize;

use super::slots::MAX_CAPACITY;
use super::{serde_duration, FieldError};

/// How a gate admits people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Admit directly when there is room and nobody waits; queue otherwise.
    #[default]
    Open,
    /// Everybody takes a ticket, even when there is room (the controller
    /// admits them on its next tick).
    QueueAll,
    /// Nobody new is admitted; admitted sessions continue.
    Paused,
}

impl Mode {
    fn to_u8(self) -> u8 {
        match self {
            Mode::Open => 0,
            Mode::QueueAll => 1,
            Mode::Paused => 2,
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Mode::QueueAll,
            2 => Mode::Paused,
            _ => Mode::Open,
        }
    }

    /// Stable lower-case name (config spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Open => "open",
            Mode::QueueAll => "queue_all",
            Mode::Paused => "paused",
        }
    }
}

/// Admission settings of a gate (the gate's config keys); can be changed at
/// runtime with [`Gate::apply`](super::Gate::apply).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateSettings {
    /// Maximum active users (sessions holding a slot) plus pending arrivals.
    pub capacity: u32,
    /// Maximum new users admitted per minute; 0 = unlimited.
    pub admit_per_minute: u32,
    /// How long a session lasts after the user's last request.
    #[serde(with = "serde_duration")]
    pub session_duration: Duration,
    /// How long an admitted ticket has to show up before its reserved room is
    /// given to others.
    #[serde(with = "serde_duration")]
    pub arrival_timeout: Duration,
    /// `open`, `queue_all` or `paused`.
    pub mode: Mode,
}

impl Default for GateSettings {
    fn default() -> Self {
        Self {
            capacity: 1000,
            admit_per_minute: 0,
            session_duration: Duration::from_secs(30 * 60),
            arrival_timeout: Duration::from_secs(60),
            mode: Mode::Open,
        }
    }
}

impl GateSettings {
    /// Checks ranges; errors name the key relative to the gate section.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        if self.capacity == 0 || self.capacity > MAX_CAPACITY {
            errs.push(FieldError::new(
                "capacity",
                format!("must be between 1 and {MAX_CAPACITY}"),
            ));
        }
        if self.session_duration < Duration::from_secs(1)
            || self.session_duration > Duration::from_secs(24 * 3600)
        {
            errs.push(FieldError::new(
                "session_duration",
                "must be between 1s and 24h",
            ));
        }
        if self.arrival_timeout < Duration::from_secs(1)
            || self.arrival_timeout > Duration::from_secs(3600)
        {
            errs.push(FieldError::new(
                "arrival_timeout",
                "must be between 1s and 1h",
            ));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

/// The settings in force, one atomic each: read on the lock-free paths, replaced at runtime
/// (the controller aligns capacity and rate with schedules, shares and the portal's health).
#[derive(Debug, Default)]
pub(super) struct LiveSettings {
    capacity: AtomicU32,
    admit_per_minute: AtomicU32,
    session_ms: AtomicU64,
    arrival_timeout_ms: AtomicU64,
    mode: AtomicU8,
}

impl LiveSettings {
    /// Replaces every setting (`capacity` capped at [`MAX_CAPACITY`]).
    pub(super) fn apply(&self, s: &GateSettings) {
        let cap = s.capacity.min(MAX_CAPACITY);
        self.capacity.store(cap, Ordering::Release);
        self.admit_per_minute
            .store(s.admit_per_minute, Ordering::Release);
        self.session_ms.store(
            u64::try_from(s.session_duration.as_millis()).unwrap_or(u64::MAX),
            Ordering::Release,
        );
        self.arrival_timeout_ms.store(
            u64::try_from(s.arrival_timeout.as_millis()).unwrap_or(u64::MAX),
            Ordering::Release,
        );
        self.mode.store(s.mode.to_u8(), Ordering::Release);
    }

    /// A copy of the settings in force.
    pub(super) fn get(&self) -> GateSettings {
        GateSettings {
            capacity: self.capacity(),
            admit_per_minute: self.admit_per_minute(),
            session_duration: Duration::from_millis(self.session_ms()),
            arrival_timeout: Duration::from_millis(self.arrival_timeout_ms()),
            mode: self.mode(),
        }
    }

    #[inline]
    pub(super) fn capacity(&self) -> u32 {
        self.capacity.load(Ordering::Acquire)
    }

    #[inline]
    pub(super) fn admit_per_minute(&self) -> u32 {
        self.admit_per_minute.load(Ordering::Acquire)
    }

    #[inline]
    pub(super) fn session_ms(&self) -> u64 {
        self.session_ms.load(Ordering::Acquire)
    }

    #[inline]
    pub(super) fn arrival_timeout_ms(&self) -> u64 {
        self.arrival_timeout_ms.load(Ordering::Acquire)
    }

    #[inline]
    pub(super) fn mode(&self) -> Mode {
        Mode::from_u8(self.mode.load(Ordering::Acquire))
    }

    pub(super) fn set_mode(&self, mode: Mode) {
        self.mode.store(mode.to_u8(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_toml_and_validation() {
        let s: GateSettings = toml::from_str(
            "capacity = 500\nadmit_per_minute = 120\nsession_duration = \"30m\"\narrival_timeout = \"90s\"\nmode = \"queue_all\"\n",
        )
        .unwrap();
        assert_eq!(s.capacity, 500);
        assert_eq!(s.admit_per_minute, 120);
        assert_eq!(s.session_duration, Duration::from_secs(1800));
        assert_eq!(s.arrival_timeout, Duration::from_secs(90));
        assert_eq!(s.mode, Mode::QueueAll);
        assert!(s.validate().is_ok());
        let d: GateSettings = toml::from_str("").unwrap();
        assert_eq!(d, GateSettings::default());
        assert!(toml::from_str::<GateSettings>("capacty = 3").is_err());
        assert!(toml::from_str::<GateSettings>("session_duration = \"soon\"").is_err());
        assert!(toml::from_str::<GateSettings>("mode = \"closed\"").is_err());
        let bad = GateSettings {
            capacity: 0,
            session_duration: Duration::from_millis(10),
            ..GateSettings::default()
        };
        let errs = bad.validate().unwrap_err();
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, vec!["capacity", "session_duration"]);
    }

    #[test]
    fn live_settings_round_trip_and_cap_capacity() {
        let live = LiveSettings::default();
        let s = GateSettings {
            capacity: 42,
            admit_per_minute: 7,
            mode: Mode::QueueAll,
            ..GateSettings::default()
        };
        live.apply(&s);
        assert_eq!(live.get(), s);
        live.set_mode(Mode::Paused);
        assert_eq!(live.mode(), Mode::Paused);
        live.apply(&GateSettings {
            capacity: u32::MAX,
            ..GateSettings::default()
        });
        assert_eq!(live.capacity(), MAX_CAPACITY);
    }
}
