use std::future::Future;
use std::pin::Pin;

use std::time::Duration;

use tasker_protocol::{
    error_types, StepBatchRequest, StepExecutionError, StepExecutionResult, StepRef, StepStatus,
};

use crate::{Admission, BatchHandle, ExecutorError};

/// A boxed future, so that the trait stays usable as `dyn FrameworkIntegration`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something that executes batches of steps: the seam between orchestration
/// (which steps run, in what order) and execution (where and how they run).
///
/// ```no_run
/// use std::sync::Arc;
/// use tasker_orchestrator::{FrameworkIntegration, ZmqPubSubExecutor};
///
/// fn engine_with(executor: Arc<dyn FrameworkIntegration>) { /* ... */ }
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let executor = ZmqPubSubExecutor::start(&tasker_config::TaskerConfig::default())?;
/// engine_with(Arc::new(executor));
/// # Ok(()) }
/// ```
pub trait FrameworkIntegration: Send + Sync {
    /// A short name for logs (`zeromq`, ...).
    fn framework_name(&self) -> &'static str;

    /// Submits a batch; the handle yields each step's final result as it
    /// arrives. Every step of an accepted batch gets exactly one result.
    fn submit(&self, batch: StepBatchRequest) -> BoxFuture<'_, Result<BatchHandle, ExecutorError>>;

    /// Hands back steps this integration dispatched before a restart, each
    /// at the attempt it was dispatched as: a worker that still holds one
    /// may answer it within `grace`; the rest end `failed` with
    /// `WorkerLost` (retryable). This default cannot reclaim anything and
    /// ends them all at once.
    fn resume(
        &self,
        batch: StepBatchRequest,
        grace: Duration,
    ) -> BoxFuture<'_, Result<BatchHandle, ExecutorError>> {
        let _ = grace;
        let results = batch
            .steps
            .iter()
            .map(|step| {
                let error = StepExecutionError::new(
                    error_types::WORKER_LOST,
                    "dispatched before a restart; this integration cannot reclaim it",
                    true,
                );
                StepExecutionResult::failed(step.step_ref(), StepStatus::Failed, error, "engine", 0)
            })
            .collect();
        Box::pin(async move { Ok(BatchHandle::ready(batch.batch_id, results)) })
    }

    /// Asks that these step attempts, submitted earlier, end now as
    /// `cancelled` (`Withdrawn`) if no worker has taken them yet (their
    /// task was cancelled or suspended). Best effort: a step already running carries on, and
    /// either way each still gets exactly one result on its handle. This
    /// default withdraws nothing.
    fn withdraw(&self, steps: Vec<StepRef>) {
        let _ = steps;
    }

    /// As [`withdraw`](Self::withdraw), for a task suspended by a stop, to
    /// carry on at the next start: also, those of these attempts that an
    /// earlier run dispatched (see [`resume`](Self::resume)) and no worker
    /// has reclaimed yet end `cancelled` (`Abandoned`) when their grace
    /// ends, rather than `WorkerLost`, so the next start waits for their
    /// workers again. This default withdraws.
    fn suspend(&self, steps: Vec<StepRef>) {
        self.withdraw(steps);
    }

    /// The line a caller that commits its dispatches to a store joins
    /// before each, so that its backlog waits there (see [`Admission`]).
    /// This default has none: nothing is held back.
    fn admission(&self) -> Option<&Admission> {
        None
    }

    /// Submits a batch and waits for all its results, in the order of the
    /// batch's steps.
    fn execute_step_batch(
        &self,
        batch: StepBatchRequest,
    ) -> BoxFuture<'_, Result<Vec<StepExecutionResult>, ExecutorError>> {
        Box::pin(async move { Ok(self.submit(batch).await?.collect().await) })
    }
}
