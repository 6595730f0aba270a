//! Demo fixtures: a stand-in for the real portal that anticamera protects.
//!
//! `anticamera demo`, the black-box tests and the load-test tool start the
//! [`portal`] on loopback behind the proxy, so that the effect of the proxy
//! (no collapse, no cross-user leak) can be observed end to end.

pub mod portal;

pub use portal::{
    fake_identity, load_plan, spawn, FakeIdentity, FieldError, LoadPlan, PortalConfig,
    PortalHandle, PortalStats, StatsSnapshot,
};
