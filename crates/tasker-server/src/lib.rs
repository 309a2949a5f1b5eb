//! `tasker serve`: the orchestrator as a long-running service. Tasks live
//! in a [`tasker_store::Store`] and survive a crash; an HTTP API starts,
//! shows and cancels them.
//!
//! * [`Service`]: the workflows, the store, the engine driving each
//!   unfinished task, and the orchestrator; what the API calls.
//! * [`api`]: the HTTP routes under `/v1`, problem+json errors, and the
//!   OpenAPI document generated from the request and response types.
//! * [`Server`]: the service with its listener bound, stopping cleanly on
//!   a signal.
//! * `/metrics` (Prometheus text format) and the dashboard at `/`, served
//!   beside the API.

/// This build's version and commit, as `tasker --version` prints them:
/// `0.1.0 (3f2a9c1d0b7e)`. The commit is `unknown` in a build made outside
/// a git checkout without `TASKER_BUILD_COMMIT`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("TASKER_BUILD_COMMIT"),
    ")"
);

/// The commit this build was made from (see [`VERSION`]).
pub const BUILD_COMMIT: &str = env!("TASKER_BUILD_COMMIT");

pub mod api;
mod dashboard;
mod http;
mod metrics;
mod server;
mod service;
mod slots;
mod throughput;

pub use server::Server;
pub use throughput::{Throughput, ThroughputPoint};

pub use service::{
    Readiness, Service, ServiceError, StartError, WorkerView, WorkflowInfo, WorkflowStepInfo,
};
