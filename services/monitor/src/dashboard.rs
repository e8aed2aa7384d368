//! The dashboard: what the monitor collects for it (its own window, lag readings, the
//! autoscaler's decisions and replica reports, budget reports, the cost accountant's
//! report and the model registry) and the pure function from that to `GET /v1/dashboard`.
//! The page (`dashboard.html`, served at `GET /`) polls that JSON and draws it.
//!
//! - `collected`: the data model the monitor's loops update.
//! - `build`: from that to the JSON (pure).

mod build;
mod collected;
#[cfg(test)]
mod tests;

pub use self::build::{build, standing, BudgetStanding, BudgetState, Limits};
pub use self::collected::{Collected, CostTenant, CostsSnapshot, Source, TaskModels};

// The JSON types of `GET /v1/dashboard` are in aifab_core::dashboard.
pub use aifab_core::dashboard::*;

/// The page, embedded in the binary.
pub const PAGE: &str = include_str!("dashboard.html");

/// Points of throughput/latency history kept (one per evaluation interval).
pub const HISTORY_POINTS: usize = 120;
/// Lag readings kept per (group, topic).
pub const LAG_POINTS: usize = 60;
/// Scale decisions kept per service.
pub const DECISIONS_KEPT: usize = 20;
/// Audit records (state changes) kept for the dashboard and `aifab status`.
pub const CHANGES_KEPT: usize = 20;
/// Budget use at which a tenant shows as `warning` (the cost accountant warns at 80%).
pub const WARNING_RATIO: f64 = 0.8;
