//! The engine: runs a task template's DAG through a [`FrameworkIntegration`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use tasker_orchestrator::FrameworkIntegration;
use tasker_protocol::{
    StepBatchRequest, StepExecutionError, StepExecutionRequest, StepExecutionResult, StepStatus,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::report::{StepOutcome, StepReport, TaskReport, TaskStatus};
use crate::template::TaskTemplate;

/// Something that happened while a task ran, for progress displays.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskEvent {
    /// Steps were handed to the executor, each with its attempt number.
    Dispatched {
        /// `(step name, attempt)` pairs.
        steps: Vec<(String, u32)>,
    },
    /// A step completed.
    Completed {
        /// The step.
        step: String,
        /// The attempt that completed.
        attempt: u32,
        /// The worker that ran it.
        worker_id: String,
        /// The handler's run time, as the worker measured it.
        execution_time_ms: u64,
    },
    /// An attempt failed and another is scheduled after `delay`.
    Retrying {
        /// The step.
        step: String,
        /// The attempt that failed.
        attempt: u32,
        /// Why.
        error: StepExecutionError,
        /// The wait before the next attempt.
        delay: Duration,
    },
    /// A step failed for good.
    Failed {
        /// The step.
        step: String,
        /// Attempts made.
        attempt: u32,
        /// Why.
        error: StepExecutionError,
    },
    /// A step will not run because `by` failed.
    Blocked {
        /// The step.
        step: String,
        /// The failed step upstream.
        by: String,
    },
    /// Cancellation began: nothing more is dispatched.
    Cancelling,
}

/// Runs task templates through an executor.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use tasker_engine::{TaskTemplate, WorkflowEngine};
/// use tasker_orchestrator::ZmqPubSubExecutor;
///
/// let executor = ZmqPubSubExecutor::start(&tasker_config::TaskerConfig::default())?;
/// let engine = WorkflowEngine::new(Arc::new(executor));
/// let template = TaskTemplate::load("examples/workflows/order_fulfillment.yaml")?;
/// let report = engine.run(&template, serde_json::json!({ "order_id": 42 })).await;
/// println!("{:?}: {} retries", report.status, report.retries());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct WorkflowEngine {
    integration: Arc<dyn FrameworkIntegration>,
}

/// Ids are unique per process, so tasks sharing an executor never collide.
static NEXT_TASK_ID: AtomicI64 = AtomicI64::new(1);
static NEXT_STEP_ID: AtomicI64 = AtomicI64::new(1);

impl WorkflowEngine {
    /// An engine dispatching through `integration`.
    pub fn new(integration: Arc<dyn FrameworkIntegration>) -> Self {
        Self { integration }
    }

    /// Runs one task to its end.
    pub async fn run(&self, template: &TaskTemplate, context: Value) -> TaskReport {
        self.start(template.clone(), context).wait().await
    }

    /// Starts one task; the handle streams its events, cancels it, and
    /// yields its report. The template must have passed
    /// [`TaskTemplate::check`] (loading does that).
    pub fn start(&self, template: TaskTemplate, context: Value) -> RunningTask {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let run = TaskRun::new(
            Arc::clone(&self.integration),
            template,
            context,
            events_tx,
            cancel_rx,
        );
        let task_id = run.task_id;
        RunningTask {
            task_id,
            events: Some(events_rx),
            cancel: cancel_tx,
            join: tokio::spawn(run.drive()),
        }
    }
}

/// A task that is running.
pub struct RunningTask {
    task_id: i64,
    events: Option<mpsc::UnboundedReceiver<TaskEvent>>,
    cancel: watch::Sender<bool>,
    join: tokio::task::JoinHandle<TaskReport>,
}

impl RunningTask {
    /// The task's id.
    pub fn task_id(&self) -> i64 {
        self.task_id
    }

    /// The task's events; `None` after the first call. The stream ends when
    /// the task does.
    pub fn events(&mut self) -> Option<mpsc::UnboundedReceiver<TaskEvent>> {
        self.events.take()
    }

    /// Stops further dispatch. Steps already running finish and are
    /// reported; the rest end as cancelled.
    pub fn cancel(&self) {
        let _ = self.cancel.send(true);
    }

    /// A handle that can cancel the task from elsewhere.
    pub fn canceller(&self) -> Canceller {
        Canceller(self.cancel.clone())
    }

    /// Waits for the task to end.
    pub async fn wait(self) -> TaskReport {
        match self.join.await {
            Ok(report) => report,
            // The driver has no panicking paths; if one appears, surface it.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

/// Cancels a [`RunningTask`] from another task or thread.
#[derive(Clone)]
pub struct Canceller(watch::Sender<bool>);

impl Canceller {
    /// See [`RunningTask::cancel`].
    pub fn cancel(&self) {
        let _ = self.0.send(true);
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Waiting,
    RetryAt(Instant),
    Running,
    Done(StepOutcome),
}

struct StepRun {
    step_id: i64,
    state: State,
    attempts: u32,
    first_dispatch: Option<Instant>,
    ended: Option<Instant>,
    output: Option<Value>,
    error: Option<StepExecutionError>,
    worker_id: Option<String>,
    blocked_by: Option<String>,
    /// Steps waiting for this one.
    dependents: Vec<usize>,
    /// Indices of the steps this one depends on, in template order.
    depends_on: Vec<usize>,
    /// Dependencies not completed yet.
    unmet: usize,
}

struct TaskRun {
    integration: Arc<dyn FrameworkIntegration>,
    template: TaskTemplate,
    context: Value,
    task_id: i64,
    steps: Vec<StepRun>,
    by_step_id: HashMap<i64, usize>,
    events: mpsc::UnboundedSender<TaskEvent>,
    cancel: watch::Receiver<bool>,
    cancelled: bool,
    running: usize,
    random: Random,
    batches: u64,
}

impl TaskRun {
    fn new(
        integration: Arc<dyn FrameworkIntegration>,
        template: TaskTemplate,
        context: Value,
        events: mpsc::UnboundedSender<TaskEvent>,
        cancel: watch::Receiver<bool>,
    ) -> Self {
        let index = template.index();
        let mut steps: Vec<StepRun> = template
            .steps
            .iter()
            .map(|s| StepRun {
                step_id: NEXT_STEP_ID.fetch_add(1, Ordering::Relaxed),
                state: State::Waiting,
                attempts: 0,
                first_dispatch: None,
                ended: None,
                output: None,
                error: None,
                worker_id: None,
                blocked_by: None,
                dependents: Vec::new(),
                depends_on: s.depends_on.iter().map(|d| index[d.as_str()]).collect(),
                unmet: s.depends_on.len(),
            })
            .collect();
        for (i, s) in template.steps.iter().enumerate() {
            for dep in &s.depends_on {
                steps[index[dep.as_str()]].dependents.push(i);
            }
        }
        let by_step_id = steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.step_id, i))
            .collect();
        Self {
            integration,
            template,
            context,
            task_id: NEXT_TASK_ID.fetch_add(1, Ordering::Relaxed),
            steps,
            by_step_id,
            events,
            cancel,
            cancelled: false,
            running: 0,
            random: Random::new(),
            batches: 0,
        }
    }

    fn emit(&self, event: TaskEvent) {
        // Nobody listening is fine: events are for display only.
        let _ = self.events.send(event);
    }

    async fn drive(mut self) -> TaskReport {
        let started_at = Utc::now();
        let started = Instant::now();
        let (results_tx, mut results_rx) = mpsc::unbounded_channel::<StepExecutionResult>();
        tracing::info!(task_id = self.task_id, workflow = %self.template.name, "task started");
        loop {
            let retry_at = if self.cancelled {
                None
            } else {
                self.dispatch_ready(&results_tx).await
            };
            if self.running == 0 && retry_at.is_none() {
                break;
            }
            tokio::select! {
                Some(result) = results_rx.recv() => self.on_result(result),
                _ = sleep_until(retry_at) => {}
                changed = self.cancel.changed(), if !self.cancelled => {
                    if changed.is_err() || *self.cancel.borrow() {
                        self.start_cancelling();
                    }
                }
            }
        }
        let report = self.report(started_at, started);
        tracing::info!(task_id = self.task_id, status = ?report.status, "task ended");
        report
    }

    fn start_cancelling(&mut self) {
        if !self.cancelled {
            self.cancelled = true;
            self.emit(TaskEvent::Cancelling);
        }
        let now = Instant::now();
        for s in &mut self.steps {
            if matches!(s.state, State::Waiting | State::RetryAt(_)) {
                s.state = State::Done(StepOutcome::Cancelled);
                s.ended = Some(now);
            }
        }
    }

    /// Sends every step whose dependencies are complete (and whose retry
    /// wait, if any, is over) as one batch; returns when the next retry
    /// wait ends, if any step is waiting for one.
    async fn dispatch_ready(
        &mut self,
        results: &mpsc::UnboundedSender<StepExecutionResult>,
    ) -> Option<Instant> {
        let now = Instant::now();
        let mut ready = Vec::new();
        let mut next_retry: Option<Instant> = None;
        for (i, step) in self.steps.iter().enumerate() {
            match step.state {
                State::Waiting if step.unmet == 0 => ready.push(i),
                State::RetryAt(at) if at <= now => ready.push(i),
                State::RetryAt(at) => next_retry = Some(next_retry.map_or(at, |n| n.min(at))),
                _ => {}
            }
        }
        if ready.is_empty() {
            return next_retry;
        }
        let requests: Vec<StepExecutionRequest> = ready.iter().map(|&i| self.request(i)).collect();
        for &i in &ready {
            let s = &mut self.steps[i];
            s.state = State::Running;
            s.attempts += 1;
            s.first_dispatch.get_or_insert(now);
        }
        self.running += ready.len();
        self.emit(TaskEvent::Dispatched {
            steps: ready
                .iter()
                .map(|&i| (self.template.steps[i].name.clone(), self.steps[i].attempts))
                .collect(),
        });
        self.batches += 1;
        let batch_id = format!("task-{}:{}", self.task_id, self.batches);
        let batch = StepBatchRequest::new(batch_id, requests);
        let refs: Vec<_> = batch.steps.iter().map(|s| s.step_ref()).collect();
        match self.integration.submit(batch).await {
            Ok(mut handle) => {
                let results = results.clone();
                tokio::spawn(async move {
                    while let Some(result) = handle.next().await {
                        if results.send(result).is_err() {
                            return;
                        }
                    }
                });
            }
            Err(e) => {
                // The executor refused the whole batch (full queue, shutting
                // down): each step's attempt failed without running.
                let retryable = matches!(e, tasker_orchestrator::ExecutorError::QueueFull { .. });
                tracing::warn!(task_id = self.task_id, error = %e, "batch refused");
                for step_ref in refs {
                    let error = StepExecutionError::new("SubmitRefused", e.to_string(), retryable);
                    let result = StepExecutionResult::failed(
                        step_ref,
                        StepStatus::Failed,
                        error,
                        "engine",
                        0,
                    );
                    let _ = results.send(result);
                }
            }
        }
        next_retry
    }

    fn request(&self, i: usize) -> StepExecutionRequest {
        let def = &self.template.steps[i];
        let run = &self.steps[i];
        let mut request = StepExecutionRequest::new(
            run.step_id,
            self.task_id,
            def.name.clone(),
            def.handler.clone(),
            def.timeout_ms,
        );
        request.handler_config = def.handler_config.clone();
        request.task_context = self.context.clone();
        request.previous_results = run
            .depends_on
            .iter()
            .map(|&j| {
                let output = self.steps[j].output.clone().unwrap_or(Value::Null);
                (self.template.steps[j].name.clone(), output)
            })
            .collect::<BTreeMap<_, _>>();
        request.metadata.attempt = run.attempts + 1;
        request.metadata.retry_limit = def.retry.max_attempts;
        request
    }

    fn on_result(&mut self, result: StepExecutionResult) {
        let Some(&i) = self.by_step_id.get(&result.step_id) else {
            return;
        };
        if self.steps[i].state != State::Running
            || result.metadata.attempt != self.steps[i].attempts
        {
            // The executor promises one result per attempt; anything else is
            // not ours to act on.
            tracing::warn!(step_id = result.step_id, "unexpected result ignored");
            return;
        }
        self.running -= 1;
        let name = self.template.steps[i].name.clone();
        let now = Instant::now();
        let attempt = self.steps[i].attempts;
        self.steps[i].worker_id = Some(result.metadata.worker_id.clone());
        if result.status == StepStatus::Completed {
            let s = &mut self.steps[i];
            s.state = State::Done(StepOutcome::Completed);
            s.ended = Some(now);
            s.output = Some(result.output.unwrap_or(Value::Null));
            s.error = None;
            for d in s.dependents.clone() {
                self.steps[d].unmet -= 1;
            }
            self.emit(TaskEvent::Completed {
                step: name,
                attempt,
                worker_id: result.metadata.worker_id,
                execution_time_ms: result.metadata.execution_time_ms,
            });
            return;
        }
        let error = result.error.unwrap_or_else(|| {
            StepExecutionError::new(
                format!("{:?}", result.status),
                "the step ended without an error description",
                result.metadata.retryable,
            )
        });
        let policy = &self.template.steps[i].retry;
        if error.retryable && attempt < policy.max_attempts && !self.cancelled {
            let delay = policy.delay(attempt, self.random.next_f64());
            self.steps[i].state = State::RetryAt(now + delay);
            self.emit(TaskEvent::Retrying {
                step: name,
                attempt,
                error,
                delay,
            });
            return;
        }
        let s = &mut self.steps[i];
        s.state = State::Done(if self.cancelled && error.retryable {
            StepOutcome::Cancelled
        } else {
            StepOutcome::Failed
        });
        s.ended = Some(now);
        s.error = Some(error.clone());
        self.emit(TaskEvent::Failed {
            step: name.clone(),
            attempt,
            error,
        });
        self.block_dependents(i, &name, now);
    }

    /// Ends every step downstream of failed step `i` as blocked.
    fn block_dependents(&mut self, i: usize, by: &str, now: Instant) {
        let mut stack = self.steps[i].dependents.clone();
        while let Some(d) = stack.pop() {
            if self.steps[d].state != State::Waiting {
                continue;
            }
            let s = &mut self.steps[d];
            s.state = State::Done(StepOutcome::Blocked);
            s.ended = Some(now);
            s.blocked_by = Some(by.to_string());
            stack.extend(s.dependents.iter().copied());
            self.emit(TaskEvent::Blocked {
                step: self.template.steps[d].name.clone(),
                by: by.to_string(),
            });
        }
    }

    fn report(&self, started_at: chrono::DateTime<Utc>, started: Instant) -> TaskReport {
        let steps: Vec<StepReport> = self
            .template
            .steps
            .iter()
            .zip(&self.steps)
            .map(|(def, run)| {
                let outcome = match run.state {
                    State::Done(outcome) => outcome,
                    // Only reachable if the loop ended early; say so honestly.
                    _ => StepOutcome::Cancelled,
                };
                let duration_ms = match (run.first_dispatch, run.ended) {
                    (Some(a), Some(b)) => b.duration_since(a).as_millis() as u64,
                    _ => 0,
                };
                StepReport {
                    name: def.name.clone(),
                    handler: def.handler.clone(),
                    outcome,
                    attempts: run.attempts,
                    duration_ms,
                    worker_id: run.worker_id.clone(),
                    output: run.output.clone(),
                    error: run.error.clone(),
                    blocked_by: run.blocked_by.clone(),
                }
            })
            .collect();
        let status = if steps.iter().all(|s| s.outcome == StepOutcome::Completed) {
            TaskStatus::Complete
        } else if self.cancelled {
            TaskStatus::Cancelled
        } else {
            TaskStatus::Failed
        };
        TaskReport {
            task_id: self.task_id,
            workflow: self.template.name.clone(),
            status,
            started_at,
            duration_ms: started.elapsed().as_millis() as u64,
            steps,
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// splitmix64: jitter needs spread, not secrecy.
struct Random(u64);

impl Random {
    fn new() -> Self {
        Self(uuid::Uuid::new_v4().as_u64_pair().0)
    }

    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}
