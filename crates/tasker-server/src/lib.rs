//! `tasker serve`: the orchestrator as a long-running service. Tasks live
//! in a [`tasker_store::Store`] and survive a crash; an HTTP API starts,
//! shows and cancels them.
//!
//! SKELETON: signatures are fixed; bodies are being written.

pub mod api;
mod server;
mod service;

pub use server::Server;

pub use service::{
    Readiness, Service, ServiceError, StartError, WorkerView, WorkflowInfo, WorkflowStepInfo,
};
