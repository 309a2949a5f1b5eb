use thiserror::Error;

/// Why the worker runtime refused or ended an operation.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WorkerError {
    /// The options are unusable (no handlers, zero capacity, bad endpoint).
    #[error("invalid worker options: {0}")]
    InvalidOptions(String),
    /// The socket or I/O thread could not be set up.
    #[error("worker set-up failed: {0}")]
    Setup(String),
    /// The worker is stopping or stopped: no more steps will come.
    #[error("worker stopped")]
    Stopped,
}
