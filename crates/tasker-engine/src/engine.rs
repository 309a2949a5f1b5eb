//! The engine: runs a task template's DAG through a [`FrameworkIntegration`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::Value;
use tasker_orchestrator::{Admitting, FrameworkIntegration, HandlerLabels, Permit};
use tasker_protocol::{
    error_types, StepBatchRequest, StepExecutionError, StepExecutionRequest, StepExecutionResult,
    StepRef, StepStatus,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::durable::{
    Journal, JournalError, StepSnapshot, StepState, StoredTask, TaskState, Transition,
};
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
    retried: Retried,
}

/// Retries scheduled, by handler (Prometheus `steps_retried`), with the
/// executor's bounds on handler values.
#[derive(Clone, Default)]
struct Retried {
    family: Family<Vec<(String, String)>, Counter>,
    labels: Arc<HandlerLabels>,
}

impl Retried {
    fn inc(&self, handler: &str, error_type: &str) {
        let handler = self.labels.label(handler, error_type);
        self.family
            .get_or_create(&vec![("handler".to_string(), handler)])
            .inc();
    }
}

/// Ids are unique per process, so tasks sharing an executor never collide.
static NEXT_TASK_ID: AtomicI64 = AtomicI64::new(1);
static NEXT_STEP_ID: AtomicI64 = AtomicI64::new(1);

impl WorkflowEngine {
    /// An engine dispatching through `integration`.
    pub fn new(integration: Arc<dyn FrameworkIntegration>) -> Self {
        Self {
            integration,
            retried: Retried::default(),
        }
    }

    /// Adds the engine's metrics to `registry`: `steps_retried{handler}`,
    /// the retries its tasks scheduled.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "steps_retried",
            "Step attempts that failed and were scheduled to run again, by handler",
            self.retried.family.clone(),
        );
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
        let (cancel_tx, cancel_rx) = watch::channel(Control::Run);
        let task_id = NEXT_TASK_ID.fetch_add(1, Ordering::Relaxed);
        let step_ids = template
            .steps
            .iter()
            .map(|_| NEXT_STEP_ID.fetch_add(1, Ordering::Relaxed))
            .collect();
        let run = TaskRun::new(
            self, template, context, task_id, step_ids, events_tx, cancel_rx,
        );
        RunningTask::spawn(run, events_rx, cancel_tx)
    }

    /// Runs a task a store holds, new or loaded after a restart, writing
    /// every transition through `durable.journal` before it takes effect:
    /// a step's dispatch is committed before it is submitted, a result
    /// before anything follows from it.
    ///
    /// Steps stored `running` were dispatched by an earlier run: those
    /// dispatched under `durable.orchestrator_id` are handed back to the
    /// integration ([`FrameworkIntegration::resume`]) so the worker still
    /// holding one can answer it; the others (another orchestrator's) have
    /// no worker that can, and count as lost. Either way a lost attempt is
    /// retried within the step's policy. Steps waiting out a backoff
    /// resume at their recorded time; a task whose cancel was requested
    /// dispatches nothing more.
    ///
    /// A commit the store fails ([`JournalError::Store`]: a full disk, a
    /// database restarting) is tried again until it goes in; meanwhile
    /// nothing is dispatched or recorded. If the journal fails for good
    /// (any other [`JournalError`]), or the task is suspended while it
    /// waits, the task stops where it is and [`RunningTask::outcome`] says
    /// why; the store still holds a state to resume from.
    pub fn start_durable(&self, stored: StoredTask, durable: Durable) -> RunningTask {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let control = if stored.cancel_requested {
            Control::Cancel
        } else {
            Control::Run
        };
        let (cancel_tx, cancel_rx) = watch::channel(control);
        let step_ids = stored.steps.iter().map(|s| s.step_id).collect();
        let mut run = TaskRun::new(
            self,
            stored.template,
            stored.context,
            stored.task_id,
            step_ids,
            events_tx,
            cancel_rx,
        );
        run.restore(&stored.steps, stored.created_at, durable);
        RunningTask::spawn(run, events_rx, cancel_tx)
    }
}

/// What makes a task durable: where its transitions go, and the
/// orchestrator it dispatches through.
#[derive(Clone)]
pub struct Durable {
    /// Commits every transition.
    pub journal: Arc<dyn Journal>,
    /// The `orchestrator_id` of the executor steps go to, recorded with
    /// each dispatch.
    pub orchestrator_id: String,
    /// How long a step dispatched before a restart waits for its worker to
    /// reclaim it.
    pub resume_grace: Duration,
}

/// A task that is running.
pub struct RunningTask {
    task_id: i64,
    events: Option<mpsc::UnboundedReceiver<TaskEvent>>,
    cancel: watch::Sender<Control>,
    ready: Option<tokio::sync::oneshot::Receiver<()>>,
    join: tokio::task::JoinHandle<Result<TaskReport, TaskStopped>>,
}

impl RunningTask {
    fn spawn(
        mut run: TaskRun,
        events: mpsc::UnboundedReceiver<TaskEvent>,
        cancel: watch::Sender<Control>,
    ) -> Self {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        run.ready = Some(ready_tx);
        Self {
            task_id: run.task_id,
            events: Some(events),
            cancel,
            ready: Some(ready_rx),
            join: tokio::spawn(run.drive()),
        }
    }

    /// Waits until the task has handed the integration the steps a
    /// restored task had out at workers ([`FrameworkIntegration::resume`]),
    /// so a caller can let workers' answers in only once they are
    /// expected. Returns at once for a task with none, and on later calls.
    pub async fn ready(&mut self) {
        if let Some(ready) = self.ready.take() {
            let _ = ready.await;
        }
    }

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
        Canceller(self.cancel.clone()).cancel();
    }

    /// A handle that can cancel the task from elsewhere.
    pub fn canceller(&self) -> Canceller {
        Canceller(self.cancel.clone())
    }

    /// Waits for the task to end.
    ///
    /// # Panics
    /// If a durable task stopped without ending; use
    /// [`outcome`](Self::outcome) for durable tasks.
    pub async fn wait(self) -> TaskReport {
        match self.outcome().await {
            Ok(report) => report,
            Err(e) => panic!("the task stopped without ending: {e}"),
        }
    }

    /// Waits for the task to end, or (a durable task only) to stop
    /// without ending: its journal failed or it was suspended, and its
    /// store holds where it was.
    pub async fn outcome(self) -> Result<TaskReport, TaskStopped> {
        match self.join.await {
            Ok(outcome) => outcome,
            // A bug. Raised in the caller, it left `serve` with a task it
            // took for running and a cancel that did nothing.
            Err(e) if e.is_panic() => {
                let panic = e.into_panic();
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".into());
                Err(TaskStopped::Panicked(message))
            }
            // The runtime is shutting down under it.
            Err(_) => Err(TaskStopped::Suspended),
        }
    }
}

/// Cancels a [`RunningTask`] from another task or thread.
#[derive(Clone)]
pub struct Canceller(watch::Sender<Control>);

impl Canceller {
    /// See [`RunningTask::cancel`].
    pub fn cancel(&self) {
        self.0.send_if_modified(|c| {
            let run = *c == Control::Run;
            if run {
                *c = Control::Cancel;
            }
            run
        });
    }

    /// Stops a durable task for a restart: nothing more is dispatched,
    /// results of steps out now are still recorded, and once none is left
    /// the task stops where it is, still `running` in its store, and
    /// [`RunningTask::outcome`] gives [`TaskStopped::Suspended`]. Results
    /// that only say the executor stopped (`Abandoned`, `ExecutorStopped`)
    /// are not recorded: those steps are reclaimed or run again after the
    /// restart.
    ///
    /// A journal that fails meanwhile (the store down) is still tried
    /// again, so results that came are recorded if the store comes back,
    /// until [`abandon`](Self::abandon).
    pub fn suspend(&self) {
        self.0.send_if_modified(|c| {
            let changed = !matches!(*c, Control::Suspend | Control::Abandon);
            if changed {
                *c = Control::Suspend;
            }
            changed
        });
    }

    /// A suspension that waits no longer: a journal commit the store keeps
    /// failing is given up (the task stops with
    /// [`TaskStopped::Journal`]), and the results it held are not
    /// recorded. For a stop's deadline.
    pub fn abandon(&self) {
        self.0.send_if_modified(|c| {
            let changed = *c != Control::Abandon;
            *c = Control::Abandon;
            changed
        });
    }
}

/// The first pause before a failed journal commit is tried again; it
/// doubles up to [`JOURNAL_RETRY_MAX`].
const JOURNAL_RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest pause between tries of a failed journal commit.
const JOURNAL_RETRY_MAX: Duration = Duration::from_secs(5);
/// The longest pause between tries while the task is suspended for a stop.
const JOURNAL_RETRY_STOPPING_MAX: Duration = Duration::from_millis(500);

/// What a task's driver is told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Run,
    Cancel,
    Suspend,
    /// Suspend, and give up a failing journal commit.
    Abandon,
}

/// Why a task stopped without ending.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TaskStopped {
    /// Its journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// It was suspended ([`Canceller::suspend`]), or its executor stopped
    /// under it; its store holds where it was.
    #[error("the task was suspended; it resumes when its store is loaded again")]
    Suspended,
    /// Its driver panicked, a bug; a durable task's store holds where it
    /// was, and it resumes when the store is loaded again.
    #[error("the task's driver panicked (a bug): {0}")]
    Panicked(String),
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
    /// Wall-clock times, for the journal (a restart keeps no `Instant`).
    first_dispatch_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    retry_at: Option<DateTime<Utc>>,
    /// The orchestrator the running attempt went to.
    dispatched_by: Option<String>,
    /// Changed since the last commit (listed in `TaskRun::unsaved`).
    unsaved: bool,
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
    /// Room in the executor's queue (durable tasks): taken before the
    /// dispatch is committed, given back with the attempt's result.
    permit: Option<Permit>,
}

struct TaskRun {
    integration: Arc<dyn FrameworkIntegration>,
    retried: Retried,
    template: TaskTemplate,
    context: Value,
    task_id: i64,
    steps: Vec<StepRun>,
    by_step_id: HashMap<i64, usize>,
    events: mpsc::UnboundedSender<TaskEvent>,
    cancel: watch::Receiver<Control>,
    cancelled: bool,
    suspended: bool,
    running: usize,
    random: Random,
    batches: u64,
    started_at: DateTime<Utc>,
    started: Instant,
    durable: Option<Durable>,
    /// Steps changed since the last commit, each with the state and
    /// attempt the store still has for it.
    unsaved: Vec<(usize, StepState, u32)>,
    /// Steps dispatched before a restart, to hand back to the integration.
    orphans: Vec<usize>,
    /// Told once the orphans are handed back.
    ready: Option<tokio::sync::oneshot::Sender<()>>,
    /// A ready step held back for room in the executor's queue, and its
    /// place in line (see [`TaskRun::hold_back`]).
    admitting: Option<(usize, Admitting)>,
}

impl TaskRun {
    fn new(
        engine: &WorkflowEngine,
        template: TaskTemplate,
        context: Value,
        task_id: i64,
        step_ids: Vec<i64>,
        events: mpsc::UnboundedSender<TaskEvent>,
        cancel: watch::Receiver<Control>,
    ) -> Self {
        let index = template.index();
        let mut steps: Vec<StepRun> = template
            .steps
            .iter()
            .zip(step_ids)
            .map(|(s, step_id)| StepRun {
                step_id,
                state: State::Waiting,
                attempts: 0,
                first_dispatch: None,
                ended: None,
                first_dispatch_at: None,
                ended_at: None,
                retry_at: None,
                dispatched_by: None,
                unsaved: false,
                output: None,
                error: None,
                worker_id: None,
                blocked_by: None,
                dependents: Vec::new(),
                depends_on: s.depends_on.iter().map(|d| index[d.as_str()]).collect(),
                unmet: s.depends_on.len(),
                permit: None,
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
            integration: Arc::clone(&engine.integration),
            retried: engine.retried.clone(),
            template,
            context,
            task_id,
            steps,
            by_step_id,
            events,
            cancel,
            cancelled: false,
            suspended: false,
            running: 0,
            random: Random::new(),
            batches: 0,
            started_at: Utc::now(),
            started: Instant::now(),
            durable: None,
            unsaved: Vec::new(),
            orphans: Vec::new(),
            ready: None,
            admitting: None,
        }
    }

    /// Takes the stored state of every step and the journal to write to.
    fn restore(
        &mut self,
        stored: &[crate::durable::StoredStep],
        created_at: DateTime<Utc>,
        durable: Durable,
    ) {
        let now = Instant::now();
        let wall = Utc::now();
        // A restart keeps no monotonic clock: place past wall-clock times
        // on this run's, as well as it can be done.
        let instant_of = |at: DateTime<Utc>| -> Instant {
            match (at - wall).to_std() {
                Ok(ahead) => now + ahead,
                Err(_) => {
                    let behind = (wall - at).to_std().unwrap_or_default();
                    now.checked_sub(behind).unwrap_or(now)
                }
            }
        };
        self.started_at = created_at;
        self.started = instant_of(created_at);
        for (i, step) in stored.iter().enumerate() {
            let snap = &step.snapshot;
            let run = &mut self.steps[i];
            run.attempts = snap.attempt;
            run.first_dispatch_at = snap.first_dispatched_at;
            run.first_dispatch = snap.first_dispatched_at.map(instant_of);
            run.ended_at = snap.ended_at;
            run.ended = snap.ended_at.map(instant_of);
            run.retry_at = snap.next_run_at;
            run.dispatched_by = snap.dispatched_by.clone();
            run.worker_id = snap.worker_id.clone();
            run.output = snap.output.clone();
            run.error = snap.error.clone();
            run.blocked_by = snap.blocked_by.clone();
            run.state = match snap.state {
                StepState::Waiting => State::Waiting,
                StepState::RetryWait => {
                    State::RetryAt(instant_of(snap.next_run_at.unwrap_or(wall)))
                }
                StepState::Running => {
                    self.orphans.push(i);
                    State::Running
                }
                StepState::Completed => State::Done(StepOutcome::Completed),
                StepState::Failed => State::Done(StepOutcome::Failed),
                StepState::Blocked => State::Done(StepOutcome::Blocked),
                StepState::Cancelled => State::Done(StepOutcome::Cancelled),
            };
        }
        for i in 0..self.steps.len() {
            if self.steps[i].state == State::Done(StepOutcome::Completed) {
                for d in self.steps[i].dependents.clone() {
                    self.steps[d].unmet -= 1;
                }
            }
        }
        self.running = self.orphans.len();
        self.durable = Some(durable);
    }

    /// The state the store should have for step `i` now.
    fn snapshot(&self, i: usize) -> StepSnapshot {
        let run = &self.steps[i];
        let state = match run.state {
            State::Waiting => StepState::Waiting,
            State::RetryAt(_) => StepState::RetryWait,
            State::Running => StepState::Running,
            State::Done(StepOutcome::Completed) => StepState::Completed,
            State::Done(StepOutcome::Failed) => StepState::Failed,
            State::Done(StepOutcome::Blocked) => StepState::Blocked,
            State::Done(StepOutcome::Cancelled) => StepState::Cancelled,
        };
        StepSnapshot {
            state,
            attempt: run.attempts,
            next_run_at: (state == StepState::RetryWait)
                .then_some(run.retry_at)
                .flatten(),
            dispatched_by: (state == StepState::Running)
                .then(|| run.dispatched_by.clone())
                .flatten(),
            first_dispatched_at: run.first_dispatch_at,
            ended_at: run.ended_at,
            worker_id: run.worker_id.clone(),
            output: run.output.clone(),
            error: run.error.clone(),
            blocked_by: run.blocked_by.clone(),
        }
    }

    /// Notes that step `i` is about to change, so the next commit carries
    /// it; the first note since the last commit holds what the store has.
    fn touch(&mut self, i: usize) {
        if self.durable.is_none() || self.steps[i].unsaved {
            return;
        }
        self.steps[i].unsaved = true;
        let stored = self.snapshot(i);
        self.unsaved.push((i, stored.state, stored.attempt));
    }

    /// Commits every change since the last commit (and the task's end, if
    /// given); returns once the journal has them.
    ///
    /// A store that fails in a way that may pass (a full disk, a database
    /// restarting) is tried again, backing off up to [`JOURNAL_RETRY_MAX`],
    /// until the commit goes in or the task is abandoned: nothing is
    /// dispatched or acted on meanwhile, and results that arrive wait.
    /// Stopping the task at the first failure left it `running` in the
    /// store with nothing driving it until the next start, though the store
    /// was back a moment later.
    async fn save(&mut self, end: Option<TaskState>) -> Result<(), JournalError> {
        let Some(durable) = &self.durable else {
            self.unsaved.clear();
            return Ok(());
        };
        if self.unsaved.is_empty() && end.is_none() {
            return Ok(());
        }
        let journal = Arc::clone(&durable.journal);
        let mut pause = JOURNAL_RETRY_FIRST;
        let mut failures = 0u32;
        // A clone, so that a change seen while waiting here is still news
        // to the drive loop; marked seen at once, or a cancel not yet read
        // there would end every pause at once and the retries would spin.
        let mut control = self.cancel.clone();
        control.borrow_and_update();
        loop {
            match journal.commit(self.transitions(end)).await {
                Ok(()) => break,
                // Under a suspension too: a stop with the store down
                // dropped the results workers had already handed over.
                Err(JournalError::Store(error)) if *self.cancel.borrow() != Control::Abandon => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(
                            task_id = self.task_id,
                            %error,
                            "the task's journal failed; trying again until the store takes it"
                        );
                    }
                    // A closed channel leaves only the sleep.
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        Ok(()) = control.changed() => {}
                    }
                    // A stop waits for the store only until its deadline:
                    // tried often then, so a store back in time is used.
                    let most = if *self.cancel.borrow() == Control::Suspend {
                        JOURNAL_RETRY_STOPPING_MAX
                    } else {
                        JOURNAL_RETRY_MAX
                    };
                    pause = (pause * 2).min(most);
                }
                Err(e) => return Err(e),
            }
        }
        if failures > 0 {
            tracing::info!(
                task_id = self.task_id,
                failures,
                "the task's journal took the commit"
            );
        }
        for &(i, _, _) in &self.unsaved {
            self.steps[i].unsaved = false;
        }
        self.unsaved.clear();
        Ok(())
    }

    /// The transitions of every change since the last commit, and the
    /// task's `end`, as of now.
    fn transitions(&self, end: Option<TaskState>) -> Vec<Transition> {
        let at = Utc::now();
        let mut transitions: Vec<Transition> = self
            .unsaved
            .iter()
            .map(|&(i, from_state, from_attempt)| Transition::Step {
                task_id: self.task_id,
                step_id: self.steps[i].step_id,
                from_state,
                from_attempt,
                to: Box::new(self.snapshot(i)),
                at,
            })
            .collect();
        if let Some(to) = end {
            transitions.push(Transition::Task {
                task_id: self.task_id,
                to,
                at,
            });
        }
        transitions
    }

    fn emit(&self, event: TaskEvent) {
        // Nobody listening is fine: events are for display only.
        let _ = self.events.send(event);
    }

    async fn drive(mut self) -> Result<TaskReport, TaskStopped> {
        let (results_tx, mut results_rx) = mpsc::unbounded_channel::<StepExecutionResult>();
        // Escaped: a workflow's name may hold control characters (a BEL
        // reached the server's log from one).
        let workflow = tasker_protocol::codec::truncate(&self.template.name, 120);
        // A task taken up again from its store after a restart is not
        // started again (500 tasks over 6 restarts logged 2,609 starts).
        let resumed = self
            .steps
            .iter()
            .any(|s| s.attempts > 0 || s.state != State::Waiting);
        if resumed {
            tracing::info!(task_id = self.task_id, %workflow, "task resumed");
        } else {
            tracing::info!(task_id = self.task_id, %workflow, "task started");
        }
        self.resume_orphans(&results_tx).await;
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(());
        }
        let control = *self.cancel.borrow_and_update();
        self.obey(control);
        self.save(None).await?;
        loop {
            if !self.cancelled && !self.suspended {
                // A cancel or suspend asked while results kept the select
                // below busy (it picks among ready branches at random) is
                // honoured before anything more is dispatched.
                let control = *self.cancel.borrow_and_update();
                self.obey(control);
            }
            let retry_at = if self.cancelled || self.suspended {
                None
            } else {
                self.dispatch_ready(&results_tx).await?
            };
            if self.running == 0 && retry_at.is_none() && self.admitting.is_none() {
                // The last results go into the same commit as the end.
                break;
            }
            // Results not committed with a dispatch above are committed
            // before waiting: a worker counts them delivered.
            self.save(None).await?;
            tokio::select! {
                Some(result) = results_rx.recv() => {
                    // Results that arrived together are committed together,
                    // with the dispatch they allow (next turn).
                    self.on_result(result);
                    while let Ok(result) = results_rx.try_recv() {
                        self.on_result(result);
                    }
                }
                _ = sleep_until(retry_at) => {}
                permit = admitted(&mut self.admitting), if self.admitting.is_some() => {
                    if let Some((i, _)) = self.admitting.take() {
                        self.steps[i].permit = Some(permit);
                    }
                }
                changed = self.cancel.changed(), if !self.cancelled && !self.suspended => {
                    let control = if changed.is_err() {
                        // Every handle is gone: nobody can wait for it.
                        Control::Cancel
                    } else {
                        *self.cancel.borrow()
                    };
                    self.obey(control);
                }
            }
        }
        // A task whose last steps ended while it was suspended is over: it
        // ends now, rather than waiting for the next start to notice.
        let over = self.steps.iter().all(|s| matches!(s.state, State::Done(_)));
        if self.suspended && !over {
            self.save(None).await?;
            tracing::info!(task_id = self.task_id, "task suspended");
            return Err(TaskStopped::Suspended);
        }
        let report = self.report();
        self.save(Some(report.status.into())).await?;
        if report.status == TaskStatus::Failed {
            // At warn, so a service run at RUST_LOG=warn still says which
            // tasks failed (each attempt's failure is at info).
            tracing::warn!(task_id = self.task_id, status = ?report.status, "task ended");
        } else {
            tracing::info!(task_id = self.task_id, status = ?report.status, "task ended");
        }
        Ok(report)
    }

    /// Steps a restored task had out when the process stopped: the ones
    /// this orchestrator dispatched go back to the integration to be
    /// reclaimed; another orchestrator's cannot be, and are lost now.
    async fn resume_orphans(&mut self, results: &mpsc::UnboundedSender<StepExecutionResult>) {
        let Some(durable) = self.durable.clone() else {
            return;
        };
        let orphans = std::mem::take(&mut self.orphans);
        if orphans.is_empty() {
            return;
        }
        let (ours, theirs): (Vec<usize>, Vec<usize>) = orphans.into_iter().partition(|&i| {
            self.steps[i].dispatched_by.as_deref() == Some(durable.orchestrator_id.as_str())
        });
        for i in theirs {
            let step = StepRef {
                step_id: self.steps[i].step_id,
                attempt: self.steps[i].attempts,
            };
            let error = StepExecutionError::new(
                error_types::WORKER_LOST,
                "dispatched by another orchestrator, whose workers cannot answer this one",
                true,
            );
            let _ = results.send(StepExecutionResult::failed(
                step,
                StepStatus::Failed,
                error,
                "engine",
                0,
            ));
        }
        if ours.is_empty() {
            return;
        }
        let requests = ours
            .iter()
            .map(|&i| {
                let mut request = self.request(i);
                request.metadata.attempt = self.steps[i].attempts;
                request
            })
            .collect();
        tracing::info!(
            task_id = self.task_id,
            steps = ours.len(),
            "waiting for workers to reclaim steps"
        );
        self.batches += 1;
        let batch =
            StepBatchRequest::new(format!("task-{}:{}", self.task_id, self.batches), requests);
        self.forward(
            self.integration
                .resume(batch.clone(), durable.resume_grace)
                .await,
            &batch,
            results,
        );
    }

    /// Acts on what the task's handle asked: cancel, suspend, or nothing.
    fn obey(&mut self, control: Control) {
        match control {
            Control::Cancel => self.start_cancelling(),
            Control::Suspend | Control::Abandon => self.start_suspending(),
            Control::Run => {}
        }
    }

    /// Dispatches nothing more, and takes back the steps still queued in
    /// the executor: no worker has them, so they wait in the store to be
    /// sent afresh at the next start. Left queued, they held the stop
    /// until the executor's drain deadline and came back after the restart
    /// as lost, each costing an attempt (a step allowed one then failed
    /// without having run).
    fn start_suspending(&mut self) {
        if self.suspended {
            return;
        }
        self.suspended = true;
        self.leave_the_line();
        let queued = self.running_steps();
        self.integration.suspend(queued);
    }

    /// Nothing more will be dispatched: the task's place in line, and the
    /// room its steps not yet dispatched were given, go to other tasks.
    fn leave_the_line(&mut self) {
        self.admitting = None;
        for s in &mut self.steps {
            if s.state != State::Running {
                s.permit = None;
            }
        }
    }

    /// The attempts out now, queued in the executor or at workers.
    fn running_steps(&self) -> Vec<StepRef> {
        self.steps
            .iter()
            .filter(|s| s.state == State::Running)
            .map(|s| StepRef {
                step_id: s.step_id,
                attempt: s.attempts,
            })
            .collect()
    }

    fn start_cancelling(&mut self) {
        if !self.cancelled {
            self.cancelled = true;
            self.emit(TaskEvent::Cancelling);
        }
        // Steps still queued in the executor (no worker has taken them)
        // end now, as cancelled, rather than at their timeout; those at
        // workers finish and are recorded.
        let queued = self.running_steps();
        self.integration.withdraw(queued);
        self.leave_the_line();
        let now = Instant::now();
        let wall = Utc::now();
        for i in 0..self.steps.len() {
            if matches!(self.steps[i].state, State::Waiting | State::RetryAt(_)) {
                self.touch(i);
                let s = &mut self.steps[i];
                s.state = State::Done(StepOutcome::Cancelled);
                s.ended = Some(now);
                s.ended_at = Some(wall);
                s.retry_at = None;
            }
        }
    }

    /// Sends every step whose dependencies are complete (and whose retry
    /// wait, if any, is over) as one batch, committed to the journal first;
    /// returns when the next retry wait ends, if any step is waiting for one.
    async fn dispatch_ready(
        &mut self,
        results: &mpsc::UnboundedSender<StepExecutionResult>,
    ) -> Result<Option<Instant>, JournalError> {
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
        if self.durable.is_some() {
            self.hold_back(&mut ready);
        }
        if ready.is_empty() {
            return Ok(next_retry);
        }
        let requests: Vec<StepExecutionRequest> = ready.iter().map(|&i| self.request(i)).collect();
        let wall = Utc::now();
        let dispatched_by = self.durable.as_ref().map(|d| d.orchestrator_id.clone());
        for &i in &ready {
            self.touch(i);
            let s = &mut self.steps[i];
            s.state = State::Running;
            s.attempts += 1;
            s.first_dispatch.get_or_insert(now);
            s.first_dispatch_at.get_or_insert(wall);
            s.retry_at = None;
            s.dispatched_by.clone_from(&dispatched_by);
        }
        self.running += ready.len();
        // Write-ahead: once a step may reach a worker, the store knows; the
        // results that made these steps ready go in the same commit.
        self.save(None).await?;
        self.emit(TaskEvent::Dispatched {
            steps: ready
                .iter()
                .map(|&i| (self.template.steps[i].name.clone(), self.steps[i].attempts))
                .collect(),
        });
        self.batches += 1;
        let batch_id = format!("task-{}:{}", self.task_id, self.batches);
        let batch = StepBatchRequest::new(batch_id, requests);
        let refs: Vec<StepRef> = batch.steps.iter().map(|s| s.step_ref()).collect();
        let outcome = self.integration.submit(batch).await;
        self.forward_refs(outcome, refs, results);
        Ok(next_retry)
    }

    /// Keeps in `ready` only the steps with room in the executor's queue
    /// (a permit), so a backlog waits here, uncommitted, rather than as
    /// dispatches a crash would cost an attempt each (see
    /// [`Admission`](tasker_orchestrator::Admission)). The first step
    /// held back takes a place in line, unless the task has one already.
    fn hold_back(&mut self, ready: &mut Vec<usize>) {
        let Some(admission) = self.integration.admission().cloned() else {
            return;
        };
        let mut first_held = None;
        ready.retain(|&i| {
            if self.steps[i].permit.is_some() {
                return true;
            }
            match admission.try_admit(&self.template.steps[i].handler) {
                Some(permit) => {
                    self.steps[i].permit = Some(permit);
                    true
                }
                None => {
                    first_held.get_or_insert(i);
                    false
                }
            }
        });
        if let (None, Some(i)) = (&self.admitting, first_held) {
            self.admitting = Some((i, admission.admit(&self.template.steps[i].handler)));
        }
    }

    fn forward(
        &self,
        outcome: Result<tasker_orchestrator::BatchHandle, tasker_orchestrator::ExecutorError>,
        batch: &StepBatchRequest,
        results: &mpsc::UnboundedSender<StepExecutionResult>,
    ) {
        let refs = batch.steps.iter().map(|s| s.step_ref()).collect();
        self.forward_refs(outcome, refs, results);
    }

    /// Streams a submitted batch's results into the task's channel; a
    /// refused batch fails each of its steps' attempts without running.
    fn forward_refs(
        &self,
        outcome: Result<tasker_orchestrator::BatchHandle, tasker_orchestrator::ExecutorError>,
        refs: Vec<StepRef>,
        results: &mpsc::UnboundedSender<StepExecutionResult>,
    ) {
        match outcome {
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
                    let kind = match e {
                        tasker_orchestrator::ExecutorError::ShutDown => {
                            error_types::EXECUTOR_STOPPED
                        }
                        _ => "SubmitRefused",
                    };
                    let error = StepExecutionError::new(kind, e.to_string(), retryable);
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
        // Retries after the first attempt (SPEC §4.2); max_attempts counts
        // the first too.
        request.metadata.retry_limit = def.retry.max_attempts.saturating_sub(1);
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
        self.steps[i].permit = None;
        if self.suspended && !self.cancelled && withdrawn(&result) {
            // Taken back for the suspend before any worker had it: as if
            // never dispatched, so this attempt is not counted and the next
            // start sends it again under the same number (no worker can
            // hold it).
            self.touch(i);
            let s = &mut self.steps[i];
            s.state = State::Waiting;
            s.attempts -= 1;
            s.dispatched_by = None;
            if s.attempts == 0 {
                s.first_dispatch = None;
                s.first_dispatch_at = None;
            }
            return;
        }
        if self.durable.is_some() && executor_stopped(&result) {
            // Not the step's outcome: the store keeps it running, and the
            // next start reclaims it or runs it again.
            self.suspended = true;
            return;
        }
        self.touch(i);
        let name = self.template.steps[i].name.clone();
        let now = Instant::now();
        let wall = Utc::now();
        let attempt = self.steps[i].attempts;
        self.steps[i].worker_id = Some(result.metadata.worker_id.clone());
        if result.status == StepStatus::Completed {
            let s = &mut self.steps[i];
            s.state = State::Done(StepOutcome::Completed);
            s.ended = Some(now);
            s.ended_at = Some(wall);
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
        let retrying = error.retryable && attempt < policy.max_attempts && !self.cancelled;
        // The one place an attempt's failure is told whole: the journal
        // keeps only the state, and the step's error the latest one.
        // What a worker chose is quoted: it cannot pass for more fields.
        let (cut, quoted) = (
            tasker_protocol::codec::truncate,
            tasker_protocol::codec::quoted,
        );
        tracing::info!(
            task_id = self.task_id,
            step = %cut(&name, 80),
            step_id = self.steps[i].step_id,
            attempt,
            worker_id = %quoted(self.steps[i].worker_id.as_deref().unwrap_or(""), 64),
            error_type = %quoted(&error.error_type, 80),
            error = %quoted(&error.message, 200),
            retrying,
            "step attempt failed"
        );
        if retrying {
            let delay = policy.delay(attempt, self.random.next_f64());
            self.steps[i].state = State::RetryAt(now + delay);
            self.retried
                .inc(&self.template.steps[i].handler, &error.error_type);
            self.steps[i].retry_at = chrono::Duration::from_std(delay)
                .ok()
                .and_then(|d| wall.checked_add_signed(d));
            self.steps[i].error = Some(error.clone());
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
        s.ended_at = Some(wall);
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
            self.touch(d);
            let s = &mut self.steps[d];
            s.state = State::Done(StepOutcome::Blocked);
            s.ended = Some(now);
            s.ended_at = Some(Utc::now());
            s.blocked_by = Some(by.to_string());
            stack.extend(s.dependents.iter().copied());
            self.emit(TaskEvent::Blocked {
                step: self.template.steps[d].name.clone(),
                by: by.to_string(),
            });
        }
    }

    fn report(&self) -> TaskReport {
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
        // A step that failed for good decides the task whether or not it
        // was cancelled after: a cancel pressed once a payment had been
        // declined made the task `cancelled`, and whoever looked for
        // failed tasks missed it.
        let status = if steps.iter().all(|s| s.outcome == StepOutcome::Completed) {
            TaskStatus::Complete
        } else if steps.iter().any(|s| s.outcome == StepOutcome::Failed) {
            TaskStatus::Failed
        } else if self.cancelled {
            TaskStatus::Cancelled
        } else {
            TaskStatus::Failed
        };
        TaskReport {
            task_id: self.task_id,
            workflow: self.template.name.clone(),
            status,
            started_at: self.started_at,
            duration_ms: self.started.elapsed().as_millis() as u64,
            steps,
        }
    }
}

/// Whether the executor took the step back before any worker had it
/// ([`FrameworkIntegration::withdraw`]).
fn withdrawn(result: &StepExecutionResult) -> bool {
    result
        .error
        .as_ref()
        .is_some_and(|e| e.error_type == error_types::WITHDRAWN)
}

/// A result that only says the executor stopped (shut down, failed, or
/// refused the batch for it).
fn executor_stopped(result: &StepExecutionResult) -> bool {
    result.error.as_ref().is_some_and(|e| {
        e.error_type == error_types::ABANDONED || e.error_type == error_types::EXECUTOR_STOPPED
    })
}

/// The permit a task waits for, once its turn comes.
async fn admitted(admitting: &mut Option<(usize, Admitting)>) -> Permit {
    match admitting {
        Some((_, line)) => line.await,
        None => std::future::pending().await,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(retried: &Retried) -> String {
        let mut registry = Registry::default();
        registry.register("steps_retried", "", retried.family.clone());
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn retries_keep_the_executors_bounds_on_handler_values() {
        let retried = Retried::default();
        for i in 0..tasker_orchestrator::MAX_HANDLER_LABELS + 100 {
            retried.inc(&format!("h{i}"), "TimedOut");
            retried.inc(&format!("typo{i}"), error_types::NO_WORKER_FOR_HANDLER);
        }
        let text = exposition(&retried);
        let series = text
            .lines()
            .filter(|l| l.starts_with("steps_retried"))
            .count();
        assert_eq!(
            series,
            tasker_orchestrator::MAX_HANDLER_LABELS + 2,
            "{text}"
        );
        assert!(text.contains("steps_retried_total{handler=\"_other\"} 100"));
        assert!(text.contains("steps_retried_total{handler=\"_unserved\"} 1100"));
    }
}
