//! anticamera: a reverse proxy that keeps a public portal standing on claim day.
//!
//! The request path reads top to bottom in `proxy` (src/proxy/); see ARCHITECTURE.md for where each stage
//! lives. The command line (`anticamera run`, `demo`, ...) lives in the binary (`src/cli.rs`),
//! the demo portal in its own crate (`anticamera-demo-portal`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub(crate) mod admin;
pub(crate) mod body;
pub(crate) mod breaker;
pub mod clock;
pub mod cohort;
pub mod config;
pub mod forwarded;
pub mod framing;
#[doc(hidden)]
pub mod fuzz_props;
pub mod guard;
pub(crate) mod isolation;
pub(crate) mod microcache;
pub mod pages;
pub(crate) mod protect;
pub(crate) mod proxy;
pub mod ratelimit;
pub(crate) mod refusal;
pub(crate) mod reload;
pub(crate) mod respond;
pub(crate) mod room;
pub mod route;
pub mod schedule;
pub mod server;
pub mod store;
pub(crate) mod telemetry;
pub(crate) mod tls;
pub(crate) mod upstream;
/// Crate-wide helpers (durations, cookies, hashing, escaping, field errors), in their own crate
/// so the demo portal shares them.
pub use anticamera_util as util;
pub mod waitroom;
