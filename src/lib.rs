//! anticamera: a reverse proxy that keeps a public portal standing on claim day.
//!
//! The request path reads top to bottom in [`proxy`]; see ARCHITECTURE.md for where each stage
//! lives. The command line (`anticamera run`, `demo`, ...) lives in the binary (`src/cli.rs`),
//! the demo portal in its own crate (`anticamera-demo-portal`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod body;
pub mod breaker;
pub mod clock;
pub mod cohort;
pub mod config;
pub mod forwarded;
pub mod framing;
#[doc(hidden)]
pub mod fuzz_props;
pub mod guard;
pub mod isolation;
pub mod microcache;
pub mod pages;
pub mod protect;
pub mod proxy;
pub mod ratelimit;
pub mod refusal;
pub mod reload;
pub mod respond;
pub mod room;
pub mod route;
pub mod schedule;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod util;
pub mod waitroom;
