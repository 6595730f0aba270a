//! Helpers of anticamera and its demo portal, one small module each, written once and used
//! everywhere (the proxy re-exports this crate as `anticamera::util`):
//!
//! * [`duration`]: the one duration parser and formatter (`"250ms"`, `"10s"`, `"5m"`), the serde
//!   helper for duration fields, whole seconds rounded up for `Retry-After`;
//! * [`cookie`]: reading a cookie out of `Cookie` request headers;
//! * [`hash`]: the fixed hash of session ids and the seeded hasher of the keyed maps;
//! * [`escape`]: HTML escaping;
//! * [`field_error`]: the configuration error every section reports (key path and reason).

#![forbid(unsafe_code)]

pub mod cookie;
pub mod duration;
pub mod escape;
pub mod field_error;
pub mod hash;
