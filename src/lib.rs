//! anticamera: a reverse proxy that keeps a public portal standing on claim day.
pub mod ratelimit;
