//! anticamera: a reverse proxy that keeps a public portal standing on claim day.
pub mod breaker;
pub mod guard;
pub mod ratelimit;
