//! The service: workflows, the store, the engine and the executor, and the
//! operations the API offers on them.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tasker_config::TaskerConfig;
use tasker_engine::{
    Canceller, Durable, StoredTask, TaskState, TaskStopped, TaskTemplate, WorkflowEngine,
};
use tasker_orchestrator::{ExecutorError, ZmqPubSubExecutor};
use tasker_protocol::api::StepState;
use tasker_protocol::StepRef;
use tasker_store::{
    CancelOutcome, Created, JournalEntry, NewTask, StepDetail, Store, StoreError, TaskDetail,
    TaskFilter, TaskPage,
};

pub use tasker_protocol::api::{WorkflowInfo, WorkflowStepInfo};

/// A connected worker, as `GET /v1/workers` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerView {
    /// The id the worker announced.
    pub worker_id: String,
    /// The language it announced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// The handlers it serves: the first [`HANDLERS_SHOWN`] in the order it
    /// announced them.
    pub handlers: Vec<String>,
    /// How many handlers it serves.
    pub handlers_total: usize,
    /// Steps it may hold at once.
    pub capacity: u32,
    /// Steps it holds now.
    pub in_flight: u64,
    /// Whether it asked for no more work.
    pub draining: bool,
    /// Its process id, if announced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// When the orchestrator last heard from it.
    pub last_heartbeat_at: DateTime<Utc>,
}

/// Most handler names a [`WorkerView`] lists: a worker may announce 1,024
/// names of 255 characters, and 871 such workers made every
/// `GET /v1/workers` (which the dashboard asks every two seconds) 228 MB.
pub const HANDLERS_SHOWN: usize = 64;

/// What `GET /readyz` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Readiness {
    /// Whether the service takes tasks now.
    pub ready: bool,
    /// Whether the store answers reads and takes writes (a full disk
    /// fails writes while reads still answer).
    pub store: bool,
    /// Workers connected.
    pub workers: u64,
    /// Whether the service is shutting down.
    pub shutting_down: bool,
}

/// Why an operation failed; the API maps each to a status and a
/// problem document.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No workflow of that name is loaded.
    #[error("unknown workflow {name:?}{}", closest.as_ref().map(|c| format!("; did you mean {c:?}?")).unwrap_or_default())]
    UnknownWorkflow {
        /// The name asked for.
        name: String,
        /// The loaded workflow closest to it, if close.
        closest: Option<String>,
        /// Every loaded workflow.
        known: Vec<String>,
    },
    /// No task has that id.
    #[error("no task {0}")]
    TaskNotFound(i64),
    /// The idempotency key was used with another request.
    #[error(
        "idempotency key {key:?} was used for task {task_id} with a different workflow or context"
    )]
    IdempotencyConflict {
        /// The key.
        key: String,
        /// The task created with it.
        task_id: i64,
    },
    /// The task ended already.
    #[error("task {task_id} has already ended ({status})")]
    TaskEnded {
        /// The task.
        task_id: i64,
        /// How it ended.
        status: tasker_engine::TaskState,
    },
    /// The service is stopping and takes no new tasks.
    #[error("the service is shutting down")]
    ShuttingDown,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Each error on a line of its own, indented.
fn lines(errors: &[StartError]) -> String {
    let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
    lines.join("\n")
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The workflows folder could not be read.
    #[error("reading workflows folder {path}: {source}")]
    WorkflowsDir {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A workflow file is invalid.
    #[error("{path}: {source}")]
    Workflow {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: tasker_engine::TemplateError,
    },
    /// Several workflow files are invalid, each said on a line of its own.
    #[error("{} workflow files do not load:\n{}", .0.len(), lines(.0))]
    Workflows(Vec<StartError>),
    /// Two files define the same workflow name.
    #[error("workflow {name:?} is defined twice: {first} and {second}")]
    DuplicateWorkflow {
        /// The name.
        name: String,
        /// One file.
        first: PathBuf,
        /// The other.
        second: PathBuf,
    },
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] tasker_config::ConfigError),
    /// The API tokens file is unusable.
    #[error(transparent)]
    Tokens(#[from] crate::api::TokensError),
    /// The store could not be opened.
    #[error("opening the store: {0}")]
    Store(#[from] StoreError),
    /// The orchestrator could not start.
    #[error(transparent)]
    Executor(#[from] ExecutorError),
    /// The API would answer other machines, and no tokens guard it.
    #[error(
        "api_listen {address} can be reached from other machines and no api_tokens_file is set: \
         anyone who reaches it could start and cancel tasks. Set api_tokens_file (a YAML file of \
         `name: token` lines), listen on loopback (127.0.0.1) behind a proxy, or, on a network \
         you trust, set api_trusted_network: true (--trusted-network)"
    )]
    Unprotected {
        /// The address.
        address: String,
    },
    /// The API address could not be bound.
    #[error("binding the API address {address}: {source}")]
    Bind {
        /// The address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Longest `/readyz` waits for the store before it calls it down.
const READY_WAIT: Duration = Duration::from_secs(2);

/// How long a service holds its tasks without renewing; another service
/// sharing the store may take them over after that.
const LEASE: Duration = Duration::from_secs(60);
/// How often the service purges ended tasks past their retention.
const PURGE_EVERY: Duration = Duration::from_secs(600);
/// How often the service checks it still holds its store's node lock: a
/// PostgreSQL restart drops it, and until it is taken again a second server
/// could start on the store and take it over.
const NODE_CHECK: Duration = Duration::from_secs(2);

/// The tasks this service drives now.
#[derive(Default)]
struct Drivers {
    tasks: HashMap<i64, Driven>,
    /// Drivers that have not returned yet, for shutdown to wait on.
    joins: Vec<tokio::task::JoinHandle<()>>,
    /// Tasks a stop abandoned with their journal failing (the store down):
    /// what they last held (results included) was not recorded.
    unrecorded: usize,
}

/// How often a long-poll looks at a running task no driver here holds.
const UNDRIVEN_RECHECK: Duration = Duration::from_millis(500);

/// A task this service drives.
struct Driven {
    canceller: Canceller,
    /// Becomes true once the task's driver has returned: the task ended
    /// (and the store has its end) or stopped.
    done: tokio::sync::watch::Receiver<bool>,
}

/// The running service: the store, the orchestrator, the engine driving
/// each unfinished task, and the workflows it can start.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let config = tasker_config::TaskerConfig::default();
/// let service = tasker_server::Service::start(&config).await?;
/// let (task, _new) = service
///     .create_task("order_fulfillment", serde_json::json!({ "order_id": 7 }), None)
///     .await?;
/// println!("task {} is {}", task.task_id, task.status);
/// service.shutdown().await;
/// # Ok(()) }
/// ```
pub struct Service {
    config: TaskerConfig,
    store: Store,
    executor: Arc<ZmqPubSubExecutor>,
    engine: WorkflowEngine,
    durable: Durable,
    workflows: BTreeMap<String, TaskTemplate>,
    drivers: Arc<Mutex<Drivers>>,
    shutting_down: AtomicBool,
    /// The bearer tokens the API requires, when `api_tokens_file` is set.
    tokens: Option<crate::api::Tokens>,
    /// Turns true when shutdown has drained, before the store closes, so
    /// long-polls answer then instead of holding the API's graceful stop.
    stopping: tokio::sync::watch::Sender<bool>,
    background: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// This server's hold on its store, until `shutdown` ends.
    node: tokio::sync::Mutex<Option<tasker_store::NodeLock>>,
    metrics: crate::metrics::ServiceMetrics,
    throughput: crate::throughput::Samples,
}

impl Service {
    /// Checks what [`start`](Self::start) reads before it touches the store:
    /// the configuration, the API tokens file and every workflow file; the
    /// names of the workflows it would load. Nothing is opened, bound or
    /// started (`tasker serve --check`, before a restart: a file that does
    /// not load stops a start).
    ///
    /// ```no_run
    /// let config = tasker_config::TaskerConfig::load("config/zeromq.yaml")?;
    /// let names = tasker_server::Service::check(&config)?;
    /// println!("{} workflows load", names.len());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn check(config: &TaskerConfig) -> Result<Vec<String>, StartError> {
        config.validate()?;
        if !config.api_tokens_file.is_empty() {
            crate::api::Tokens::load(std::path::Path::new(&config.api_tokens_file))?;
        }
        Ok(load_workflows(config)?.into_keys().collect())
    }

    /// Loads the workflows, takes the store's [`NodeLock`] (another server
    /// on the store is [`StoreError::InUse`]), opens the store, binds the
    /// orchestrator under the store's orchestrator id, and resumes every
    /// unfinished task.
    ///
    /// [`NodeLock`]: tasker_store::NodeLock
    pub async fn start(config: &TaskerConfig) -> Result<Arc<Service>, StartError> {
        config.validate()?;
        let tokens = match config.api_tokens_file.as_str() {
            "" => None,
            path => Some(crate::api::Tokens::load(std::path::Path::new(path))?),
        };
        let workflows = load_workflows(config)?;
        // First: a second server on this store would drive its tasks too.
        let node = tasker_store::NodeLock::acquire(&config.store).await?;
        let store = Store::open(&config.store).await?;
        // Before anything is read: a server that lost the node lock (a
        // PostgreSQL restart) and still runs commits nothing from now on.
        store.take_over().await?;
        let orchestrator_id = store.orchestrator_id().await?;
        // Held: a worker answering a step of the earlier run must find it
        // handed back first (see the resume below).
        let executor = Arc::new(ZmqPubSubExecutor::start_held(
            config,
            orchestrator_id.clone(),
        )?);
        let engine = WorkflowEngine::new(executor.clone());
        let durable = Durable {
            journal: store.journal(&orchestrator_id),
            orchestrator_id,
            resume_grace: resume_grace(config),
        };
        let metrics = crate::metrics::ServiceMetrics::new(&executor, &engine, &store);
        let service = Arc::new(Service {
            metrics,
            throughput: crate::throughput::Samples::default(),
            config: config.clone(),
            store,
            executor,
            engine,
            durable,
            workflows,
            drivers: Arc::default(),
            shutting_down: AtomicBool::new(false),
            tokens,
            stopping: tokio::sync::watch::Sender::new(false),
            background: Mutex::default(),
            node: tokio::sync::Mutex::new(Some(node)),
        });
        let unfinished = service
            .store
            .claim_unfinished(&service.durable.orchestrator_id, LEASE)
            .await?;
        if !unfinished.is_empty() {
            tracing::info!(tasks = unfinished.len(), "resuming unfinished tasks");
        }
        let mut resumed = Vec::with_capacity(unfinished.len());
        for task in unfinished {
            resumed.push(service.launch(task));
        }
        for ready in resumed {
            ready.await;
        }
        service.executor.release_input();
        service.start_background();
        tracing::info!(
            version = crate::VERSION,
            endpoint = %service.executor.endpoint(),
            workflows = service.workflows.len(),
            "service started"
        );
        Ok(service)
    }

    /// The ZeroMQ endpoint workers connect to (the real port of `:0`).
    pub fn endpoint(&self) -> &str {
        self.executor.endpoint()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The orchestrator.
    pub fn executor(&self) -> &ZmqPubSubExecutor {
        &self.executor
    }

    /// The bearer tokens the API requires (`api_tokens_file`), if any.
    pub fn tokens(&self) -> Option<&crate::api::Tokens> {
        self.tokens.as_ref()
    }

    /// The configuration in force.
    pub fn config(&self) -> &TaskerConfig {
        &self.config
    }

    /// Runs `task` until it ends or stops; the future resolves once the
    /// steps it had out at workers are handed back to the orchestrator.
    fn launch(&self, task: StoredTask) -> impl std::future::Future<Output = ()> {
        let task_id = task.task_id;
        let mut running = self.engine.start_durable(task, self.durable.clone());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let drivers = Arc::clone(&self.drivers);
        let mut guard = drivers.lock().expect("drivers lock");
        let (done_tx, done) = tokio::sync::watch::channel(false);
        guard.tasks.insert(
            task_id,
            Driven {
                canceller: running.canceller(),
                done,
            },
        );
        let drivers_for_task = Arc::clone(&self.drivers);
        let join = tokio::spawn(async move {
            running.ready().await;
            let _ = ready_tx.send(());
            match running.outcome().await {
                Ok(report) => {
                    tracing::debug!(task_id, status = ?report.status, "task ended");
                }
                Err(TaskStopped::Suspended) => {}
                Err(TaskStopped::Panicked(message)) => {
                    tracing::error!(
                        task_id,
                        panic = %tasker_protocol::codec::quoted(&message, 300),
                        "task stopped by a bug in its driver; it stays running in the store and resumes at the next start"
                    );
                }
                Err(TaskStopped::Journal(e)) => {
                    tracing::error!(task_id, error = %e, "task stopped: its journal failed; it resumes at the next start");
                    // A store error ends a task only when a stop abandons
                    // it (it is tried again otherwise); a conflict or a
                    // fence is another story, told elsewhere.
                    if matches!(e, tasker_engine::JournalError::Store(_)) {
                        drivers_for_task.lock().expect("drivers lock").unrecorded += 1;
                    }
                }
            }
            drivers_for_task
                .lock()
                .expect("drivers lock")
                .tasks
                .remove(&task_id);
            done_tx.send_replace(true);
        });
        guard.joins.retain(|j| !j.is_finished());
        guard.joins.push(join);
        async move {
            let _ = ready_rx.await;
        }
    }

    fn start_background(self: &Arc<Self>) {
        let mut background = self.background.lock().expect("background lock");
        let weak = Arc::downgrade(self);
        background.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::throughput::INTERVAL);
            loop {
                tick.tick().await;
                let Some(service) = weak.upgrade() else {
                    return;
                };
                service
                    .throughput
                    .sample(Utc::now(), &service.executor.metrics());
                crate::api::say_held_back_store_refusals();
            }
        }));
        let weak = Arc::downgrade(self);
        background.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(LEASE / 3);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(service) = weak.upgrade() else {
                    return;
                };
                if let Err(e) = service
                    .store
                    .renew_leases(&service.durable.orchestrator_id, LEASE)
                    .await
                {
                    tracing::warn!(error = %e, "renewing task leases failed");
                }
            }
        }));
        let weak = Arc::downgrade(self);
        background.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(NODE_CHECK);
            tick.tick().await;
            // Said once per outage, not every check.
            let mut without = false;
            loop {
                tick.tick().await;
                let Some(service) = weak.upgrade() else {
                    return;
                };
                // PostgreSQL drops the lock with its connection, when the
                // server restarts.
                let mut node = service.node.lock().await;
                let Some(lock) = node.as_mut() else {
                    return;
                };
                match lock.ensure().await {
                    Ok(()) => without = false,
                    // Another server started meanwhile: it takes the store
                    // over as it starts, and a write tells the store (and
                    // `taken_over`) once it has.
                    Err(tasker_store::StoreError::InUse(_)) => {
                        let _ = service
                            .store
                            .renew_leases(&service.durable.orchestrator_id, LEASE)
                            .await;
                    }
                    Err(e) if !std::mem::replace(&mut without, true) => {
                        tracing::warn!(error = %e, "this server does not hold its store's node lock now; taking it again");
                    }
                    Err(_) => {}
                }
            }
        }));
        if self.config.task_retention_hours > 0 {
            let weak = Arc::downgrade(self);
            let retention = chrono::Duration::hours(self.config.task_retention_hours as i64);
            background.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(PURGE_EVERY);
                loop {
                    tick.tick().await;
                    let Some(service) = weak.upgrade() else {
                        return;
                    };
                    match service
                        .store
                        .purge_ended_before(Utc::now() - retention)
                        .await
                    {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(tasks = n, "purged ended tasks past retention"),
                        Err(e) => tracing::warn!(error = %e, "purging ended tasks failed"),
                    }
                }
            }));
        }
    }

    /// Creates a task of `workflow`, or returns the one `idempotency_key`
    /// created before; the flag says whether it is new.
    pub async fn create_task(
        &self,
        workflow: &str,
        context: Value,
        idempotency_key: Option<String>,
    ) -> Result<(TaskDetail, bool), ServiceError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(ServiceError::ShuttingDown);
        }
        let Some(template) = self.workflows.get(workflow) else {
            return Err(self.unknown_workflow(workflow));
        };
        let request_hash = request_hash(workflow, &context);
        let new = NewTask {
            workflow: workflow.to_string(),
            template: template.clone(),
            context,
            idempotency_key: idempotency_key.clone(),
            request_hash,
            owner: self.durable.orchestrator_id.clone(),
            lease: LEASE,
        };
        match self.store.create_task(new).await {
            Ok(Created::New(task)) => {
                // As created: reading it back would cost a query per task.
                let detail = new_task_detail(&task, idempotency_key);
                // A new task has nothing out yet: no need to wait.
                let _ready = self.launch(task);
                Ok((detail, true))
            }
            Ok(Created::Existing { task_id }) => Ok((self.get_task(task_id).await?, false)),
            Err(StoreError::IdempotencyConflict { key, task_id }) => {
                Err(ServiceError::IdempotencyConflict { key, task_id })
            }
            Err(e) => Err(e.into()),
        }
    }

    fn unknown_workflow(&self, name: &str) -> ServiceError {
        let closest = tasker_config::closest(self.workflows.keys().map(String::as_str), name)
            .map(String::from);
        ServiceError::UnknownWorkflow {
            name: name.to_string(),
            closest,
            known: self.workflows.keys().cloned().collect(),
        }
    }

    /// A task's journal: every transition of it and its steps, oldest
    /// first.
    pub async fn journal(&self, task_id: i64) -> Result<Vec<JournalEntry>, ServiceError> {
        let entries = self.store.journal_entries(task_id).await?;
        if entries.is_empty() && self.store.get_task(task_id).await?.is_none() {
            return Err(ServiceError::TaskNotFound(task_id));
        }
        Ok(entries)
    }

    /// Steps ended per interval over the last ten minutes.
    pub fn throughput(&self) -> crate::throughput::Throughput {
        self.throughput.snapshot()
    }

    /// Counts the requests answered 401 (`tasker_api_requests_unauthorized_total`).
    pub(crate) fn unauthorized_counter(&self) -> prometheus_client::metrics::counter::Counter {
        self.metrics.unauthorized.clone()
    }

    /// Every metric in the Prometheus text format, gauges read now (the
    /// store's count of tasks only if it answers within two seconds).
    pub async fn render_metrics(&self) -> String {
        self.metrics.render(self).await
    }

    /// A task with its steps. A running step's `worker_id` is the worker
    /// it is out at now, from the executor (none while it waits for one);
    /// the store knows only the worker of each step's latest result.
    pub async fn get_task(&self, task_id: i64) -> Result<TaskDetail, ServiceError> {
        let mut task = self
            .store
            .get_task(task_id)
            .await?
            .ok_or(ServiceError::TaskNotFound(task_id))?;
        let running: Vec<&mut StepDetail> = task
            .steps
            .iter_mut()
            .filter(|step| step.state == StepState::Running)
            .collect();
        if !running.is_empty() {
            let refs = running
                .iter()
                .map(|step| StepRef {
                    step_id: step.step_id,
                    attempt: step.attempts,
                })
                .collect();
            let holders = self.executor.holders(refs).await;
            for (step, holder) in running.into_iter().zip(holders) {
                step.worker_id = holder;
            }
        }
        Ok(task)
    }

    /// A task once it has ended, or as it is after `wait`, whichever comes
    /// first: the API's long-poll (`GET /v1/tasks/{id}?wait=`).
    ///
    /// While the service drains (a stop waits for the steps out at
    /// workers), a wait goes on as before; once the drain is over it
    /// answers [`ServiceError::ShuttingDown`]: the API's graceful stop
    /// waits for open requests, and a client should learn the server is
    /// going rather than hold it up.
    pub async fn wait_task(
        &self,
        task_id: i64,
        wait: Duration,
    ) -> Result<TaskDetail, ServiceError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut stopping = self.stopping.subscribe();
        loop {
            // Before the store is read: the store closes right after the
            // drain, and a wait woken then answered `store-unavailable`
            // (and warned of it) where the stop was the reason.
            if *stopping.borrow_and_update() {
                return Err(ServiceError::ShuttingDown);
            }
            // Subscribed before reading, so an end between the two wakes us.
            let done = self
                .drivers
                .lock()
                .expect("drivers lock")
                .tasks
                .get(&task_id)
                .map(|driven| driven.done.clone());
            let task = match self.get_task(task_id).await {
                Ok(task) => task,
                // The store closed under a wait between the check above
                // and the read: the stop, not the store, is why.
                Err(_) if *stopping.borrow() => return Err(ServiceError::ShuttingDown),
                Err(error) => return Err(error),
            };
            if task.status != TaskState::Running {
                return Ok(task);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(task);
            }
            match done {
                Some(mut done) => {
                    tokio::select! {
                        _ = done.wait_for(|done| *done) => {}
                        _ = stopping.changed() => {}
                        _ = tokio::time::sleep_until(deadline) => {}
                    }
                }
                // Running in the store with no driver here: it is being
                // launched or its journal failed. Look again shortly
                // rather than answer at once and have the client spin.
                None => {
                    tokio::select! {
                        _ = stopping.changed() => {}
                        _ = tokio::time::sleep_until(deadline.min(
                            tokio::time::Instant::now() + UNDRIVEN_RECHECK,
                        )) => {}
                    }
                }
            }
        }
    }

    /// Tasks, newest first.
    pub async fn list_tasks(&self, filter: &TaskFilter) -> Result<TaskPage, ServiceError> {
        Ok(self.store.list_tasks(filter).await?)
    }

    /// Stops a task's dispatching; running steps finish and are recorded.
    pub async fn cancel_task(&self, task_id: i64) -> Result<TaskDetail, ServiceError> {
        match self.store.request_cancel(task_id).await? {
            CancelOutcome::NotFound => return Err(ServiceError::TaskNotFound(task_id)),
            CancelOutcome::Ended(status) => {
                return Err(ServiceError::TaskEnded { task_id, status })
            }
            CancelOutcome::Requested => {}
        }
        let canceller = self
            .drivers
            .lock()
            .expect("drivers lock")
            .tasks
            .get(&task_id)
            .map(|driven| driven.canceller.clone());
        if let Some(canceller) = canceller {
            canceller.cancel();
        }
        self.get_task(task_id).await
    }

    /// The workflows loaded, by name.
    pub fn workflows(&self) -> Vec<WorkflowInfo> {
        self.workflows
            .values()
            .map(|t| WorkflowInfo {
                name: t.name.clone(),
                description: t.description.clone(),
                steps: t
                    .steps
                    .iter()
                    .map(|s| WorkflowStepInfo {
                        name: s.name.clone(),
                        handler: s.handler.clone(),
                        depends_on: s.depends_on.clone(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// The workers connected now.
    pub async fn workers(&self) -> Vec<WorkerView> {
        let now = Utc::now();
        self.executor
            .workers()
            .await
            .into_iter()
            .map(|w| WorkerView {
                worker_id: w.worker_id,
                language: w.language,
                handlers: w.handlers.iter().take(HANDLERS_SHOWN).cloned().collect(),
                handlers_total: w.handlers.len(),
                capacity: w.capacity,
                in_flight: w.in_flight as u64,
                draining: w.draining,
                pid: w.pid,
                last_heartbeat_at: now
                    - chrono::Duration::from_std(w.last_heard).unwrap_or_default(),
            })
            .collect()
    }

    /// Whether the service takes tasks.
    pub async fn readiness(&self) -> Readiness {
        let shutting_down = self.shutting_down.load(Ordering::Acquire);
        // A probe gives up long before a read would (10 s on PostgreSQL):
        // an answer that comes late is no answer to it.
        let store = matches!(
            tokio::time::timeout(READY_WAIT, self.store.ping()).await,
            Ok(Ok(()))
        ) && matches!(
            tokio::time::timeout(READY_WAIT, self.store.writable()).await,
            Ok(true)
        );
        Readiness {
            ready: store && !shutting_down,
            store,
            workers: self.executor.workers().await.len() as u64,
            shutting_down,
        }
    }

    /// Resolves, with why, once another `tasker serve` took this one's
    /// store over (after a PostgreSQL restart dropped this one's node lock)
    /// or the store's writer failed: nothing this service writes commits
    /// any more, and it should stop.
    /// [`Server::run`](crate::Server::run) stops by itself then.
    pub async fn taken_over(&self) -> String {
        self.store.fenced().await
    }

    /// Tasks being driven now.
    pub fn tasks_in_progress(&self) -> usize {
        self.drivers.lock().expect("drivers lock").tasks.len()
    }

    /// Stops cleanly: takes no new tasks, dispatches nothing more, waits
    /// up to `shutdown_timeout_ms` for the steps out at workers and records
    /// their results, then stops the orchestrator and closes the store.
    /// Unfinished tasks stay `running` in the store and resume at the next
    /// start. Calling it again does nothing.
    pub async fn shutdown(&self) {
        if self.shutting_down.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::info!(tasks = self.tasks_in_progress(), "service stopping");
        for job in self.background.lock().expect("background lock").drain(..) {
            job.abort();
        }
        let joins = {
            let mut drivers = self.drivers.lock().expect("drivers lock");
            for driven in drivers.tasks.values() {
                driven.canceller.suspend();
            }
            std::mem::take(&mut drivers.joins)
        };
        let deadline = tokio::time::Instant::now() + self.config.shutdown_timeout();
        let mut joins = joins.into_iter();
        let mut left = Vec::new();
        for join in joins.by_ref() {
            let mut join = join;
            match tokio::time::timeout_at(deadline, &mut join).await {
                Ok(_) => {}
                Err(_) => {
                    left.push(join);
                    break;
                }
            }
        }
        left.extend(joins);
        if !left.is_empty() {
            // The deadline passed. Tasks still trying their journal (the
            // store down) give up now: what they hold goes unrecorded.
            for driven in self.drivers.lock().expect("drivers lock").tasks.values() {
                driven.canceller.abandon();
            }
        }
        // Steps still out are abandoned; their tasks do not record that and
        // stop, so the next start reclaims or reruns them.
        let report = self.executor.shutdown(Duration::ZERO).await;
        for join in left {
            let _ = join.await;
        }
        // Only now, with the store still open: answered 503 when the stop
        // began, a client's wait retried for its few seconds and failed
        // while the drain went on (5 s of steps out at workers, up to
        // `shutdown_timeout_ms`), though the server came back and the task
        // completed. Waiting through the drain, it retries across the
        // restart itself.
        self.stopping.send_replace(true);
        self.store.close().await;
        self.node.lock().await.take();
        // Both counts: `abandoned=0` alone read as "nothing lost" right
        // before the error about unrecorded results.
        tracing::info!(
            abandoned = report.abandoned.len(),
            unrecorded_tasks = self.unrecorded(),
            "service stopped"
        );
    }

    /// How many tasks stopped with their journal failing for good (the
    /// store down until the stop's deadline): the results they held,
    /// handed over by workers, were not recorded, and those steps count as
    /// lost at the next start. [`Server::run`](crate::Server::run) makes a
    /// stop with any an error.
    pub fn unrecorded(&self) -> usize {
        self.drivers.lock().expect("drivers lock").unrecorded
    }
}

/// A task just created, as `GET /v1/tasks/{id}` shows it then.
/// How long a restarted `serve` waits for workers to claim the steps its
/// store shows out at them (SPEC §6.7). A worker notices the restart
/// within one peer expiry and says hello at once, so twice that leaves
/// room for a slow one; but one that was waiting out its reconnect backoff
/// when the server came back says it only after up to `reconnect_max_ms`
/// (and a connection attempt): with short heartbeats the grace once ended
/// 0.18 s before live workers came back, and their finished steps ran
/// again.
fn resume_grace(config: &TaskerConfig) -> Duration {
    let expiry = config.peer_expiry();
    let backoff = Duration::from_millis(config.reconnect_max_ms) + expiry;
    (expiry * 2).max(backoff) + Duration::from_secs(1)
}

fn new_task_detail(task: &StoredTask, idempotency_key: Option<String>) -> TaskDetail {
    TaskDetail {
        task_id: task.task_id,
        workflow: task.template.name.clone(),
        status: tasker_engine::TaskState::Running,
        cancel_requested: false,
        idempotency_key,
        context: task.context.clone(),
        started_at: task.created_at,
        finished_at: None,
        duration_ms: 0,
        steps: task
            .template
            .steps
            .iter()
            .zip(&task.steps)
            .map(|(def, step)| StepDetail {
                step_id: step.step_id,
                name: def.name.clone(),
                handler: def.handler.clone(),
                depends_on: def.depends_on.clone(),
                state: step.snapshot.state,
                outcome: None,
                attempts: 0,
                duration_ms: 0,
                worker_id: None,
                output: None,
                error: None,
                blocked_by: None,
                next_run_at: None,
            })
            .collect(),
    }
}

/// A digest of what a task was asked to be: the workflow and the context
/// with its object keys sorted, so key order does not make two equal
/// requests differ.
fn request_hash(workflow: &str, context: &Value) -> String {
    fn canonical(value: &Value, out: &mut String) {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (n, key) in keys.into_iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(key.clone()).to_string());
                    out.push(':');
                    canonical(&map[key], out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (n, item) in items.iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    canonical(item, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut text = Value::String(workflow.to_string()).to_string();
    text.push('\n');
    canonical(context, &mut text);
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every `*.yaml` / `*.yml` file of the workflows folder, by name, hidden
/// files (an editor's `.x.yaml`) left out. Every file that does not load is
/// said, not only the first: an author fixed one and ran again per file.
fn load_workflows(config: &TaskerConfig) -> Result<BTreeMap<String, TaskTemplate>, StartError> {
    let dir = if config.workflows_dir.is_empty() {
        let default = PathBuf::from("examples/workflows");
        if !default.is_dir() {
            tracing::warn!(
                "no workflows_dir configured and no examples/workflows here: no workflows loaded"
            );
            return Ok(BTreeMap::new());
        }
        default
    } else {
        PathBuf::from(&config.workflows_dir)
    };
    let dir_error = |source| StartError::WorkflowsDir {
        path: dir.clone(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(dir_error)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    let mut workflows = BTreeMap::new();
    let mut sources: HashMap<String, PathBuf> = HashMap::new();
    let mut errors = Vec::new();
    for path in files {
        let template = match TaskTemplate::load(&path) {
            Ok(template) => template,
            Err(source) => {
                errors.push(StartError::Workflow { path, source });
                continue;
            }
        };
        if let Some(first) = sources.get(&template.name) {
            errors.push(StartError::DuplicateWorkflow {
                name: template.name,
                first: first.clone(),
                second: path,
            });
            continue;
        }
        sources.insert(template.name.clone(), path);
        workflows.insert(template.name.clone(), template);
    }
    match errors.len() {
        0 => Ok(workflows),
        1 => Err(errors.remove(0)),
        _ => Err(StartError::Workflows(errors)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_digest_ignores_key_order_but_not_values() {
        let a = serde_json::json!({ "a": 1, "b": { "x": [1, 2], "y": null } });
        let b: Value = serde_json::from_str(r#"{"b":{"y":null,"x":[1,2]},"a":1}"#).unwrap();
        assert_eq!(request_hash("w", &a), request_hash("w", &b));
        assert_ne!(request_hash("w", &a), request_hash("v", &a));
        let c = serde_json::json!({ "a": 1, "b": { "x": [2, 1], "y": null } });
        assert_ne!(request_hash("w", &a), request_hash("w", &c));
    }

    #[test]
    fn the_resume_grace_outlasts_a_workers_longest_reconnect_backoff() {
        let config = |heartbeat_interval_ms, reconnect_max_ms| TaskerConfig {
            heartbeat_interval_ms,
            reconnect_max_ms,
            ..TaskerConfig::default()
        };
        // Defaults: 1 s × 3, backoff up to 5 s.
        assert_eq!(resume_grace(&config(1_000, 5_000)), Duration::from_secs(9));
        // The `test` section's 200 ms heartbeats: 2.2 s was shorter than
        // one backoff.
        assert_eq!(
            resume_grace(&config(200, 5_000)),
            Duration::from_millis(6_600)
        );
        // Long heartbeats: twice the expiry rules.
        assert_eq!(resume_grace(&config(5_000, 5_000)), Duration::from_secs(31));
    }
}
