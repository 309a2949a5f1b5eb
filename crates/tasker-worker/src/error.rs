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
    /// The orchestrator refused this worker's connection during the ZeroMQ
    /// handshake (CURVE key not admitted, CURVE on one side only, wrong
    /// server key); the message says which and what to change. The worker
    /// has stopped.
    #[error("{0}")]
    Refused(String),
    /// The worker is stopping or stopped: no more steps will come.
    #[error("worker stopped")]
    Stopped,
}
