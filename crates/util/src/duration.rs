//! Durations as operators write them in config files: `"250ms"`, `"10s"`, `"5m"`, `"1h 30m"`
//! (humantime syntax; `"0"` alone is zero; surrounding whitespace is ignored). The one parser
//! ([`parse`]) and formatter ([`format()`]) of the crate: the config's `Dur`, duration fields of
//! every section ([`serde_str`]), the period of a rate (`"5/10s"`), the JWT leeway of a cohort
//! matcher, a schedule's grace and pre-queue all read durations through [`parse`].

use std::fmt;
use std::time::Duration;

/// Why a duration was refused (its `Display` names the problem, e.g. `unknown time unit "x"`).
pub type ParseError = humantime::DurationError;

/// Parses a duration such as `"250ms"`, `"10s"`, `"5m"` or `"1h 30m"`; surrounding whitespace is
/// ignored.
pub fn parse(s: &str) -> Result<Duration, ParseError> {
    humantime::parse_duration(s.trim())
}

/// Formats a duration the way [`parse`] reads it back (`"1h 30m"`, `"250ms"`).
pub fn format(d: Duration) -> impl fmt::Display {
    humantime::format_duration(d)
}

/// Whole seconds, rounded up (an honest `Retry-After`: waiting that long is always enough).
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Serde helper for duration fields: `#[serde(with = "crate::duration::serde_str")]` on a
/// `Duration` reads a string through [`parse`].
pub mod serde_str {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    /// Deserializes a duration string (`"250ms"`, `"5s"`) into a `Duration`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?}: {e} (e.g. \"250ms\", \"5s\")"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted() {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        assert_eq!(parse("250ms"), Ok(ms(250)));
        assert_eq!(parse("10s"), Ok(s(10)));
        assert_eq!(parse("5m"), Ok(s(300)));
        assert_eq!(parse("1h"), Ok(s(3600)));
        assert_eq!(parse("1h 30m"), Ok(s(5400)));
        assert_eq!(parse("1h30m"), Ok(s(5400)));
        assert_eq!(parse("2days"), Ok(s(2 * 86_400)));
        assert_eq!(parse("1min"), Ok(s(60)));
        assert_eq!(parse("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse("1.5s"), Ok(ms(1500)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse("  30s \t"), Ok(s(30)));
        assert_eq!(parse(" 0 "), Ok(Duration::ZERO));
    }

    #[test]
    fn refused() {
        for bad in [
            "",
            "   ",
            "10",
            "s",
            "ten seconds",
            "10x",
            "-5s",
            "5s!",
            "5 /s",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            parse("10x").unwrap_err().to_string(),
            humantime::parse_duration("10x").unwrap_err().to_string()
        );
    }

    #[test]
    fn format_reads_back() {
        for d in [
            Duration::ZERO,
            Duration::from_millis(250),
            Duration::from_secs(5400),
            Duration::from_secs(90_061),
        ] {
            assert_eq!(parse(&format(d).to_string()), Ok(d), "{d:?}");
        }
        assert_eq!(format(Duration::from_secs(5400)).to_string(), "1h 30m");
        assert_eq!(format(Duration::from_millis(250)).to_string(), "250ms");
    }

    #[test]
    fn ceil_secs_rounds_up() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_secs(3)), 3);
        assert_eq!(ceil_secs(Duration::from_millis(3001)), 4);
        assert_eq!(ceil_secs(Duration::from_nanos(1)), 1);
    }

    #[test]
    fn serde_helper_names_the_input() {
        #[derive(serde::Deserialize, Debug)]
        struct T {
            #[serde(with = "serde_str")]
            d: Duration,
        }
        let t: T = toml::from_str("d = \" 2s \"").unwrap();
        assert_eq!(t.d, Duration::from_secs(2));
        let e = toml::from_str::<T>("d = \"2 parsecs\"").unwrap_err();
        assert!(
            e.to_string().contains("invalid duration \"2 parsecs\": "),
            "{e}"
        );
        assert!(e.to_string().contains("(e.g. \"250ms\", \"5s\")"), "{e}");
    }
}
