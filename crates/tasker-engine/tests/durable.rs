//! A durable task whose store fails for a while: over real sockets, with a
//! journal that refuses every commit while it is "down", as a full disk or
//! a restarting database does.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tasker_config::TaskerConfig;
use tasker_engine::{
    Durable, Journal, JournalError, StepSnapshot, StoredStep, StoredTask, TaskStatus, TaskStopped,
    TaskTemplate, Transition, WorkflowEngine,
};
use tasker_orchestrator::{BoxFuture, ZmqPubSubExecutor};
use tasker_worker::{RunningWorker, Worker};

const ORCHESTRATOR_ID: &str = "durable-test";

/// Refuses every commit with [`JournalError::Store`] while `down`.
#[derive(Default)]
struct FlakyJournal {
    down: AtomicBool,
    /// Panics at the next commit, as a bug in a journal or the engine would.
    panics: AtomicBool,
    attempts: AtomicUsize,
    committed: Mutex<Vec<Transition>>,
}

impl Journal for FlakyJournal {
    fn commit(&self, transitions: Vec<Transition>) -> BoxFuture<'_, Result<(), JournalError>> {
        Box::pin(async move {
            let attempt = self.attempts.fetch_add(1, Ordering::SeqCst);
            if self.panics.load(Ordering::SeqCst) {
                panic!("a bug in the journal");
            }
            // A bound, so that a retry loop that spins fails its test
            // rather than hanging it.
            if self.down.load(Ordering::SeqCst) && attempt < 10_000 {
                return Err(JournalError::Store("database or disk is full".into()));
            }
            self.committed.lock().unwrap().extend(transitions);
            Ok(())
        })
    }
}

struct Rig {
    engine: WorkflowEngine,
    executor: Arc<ZmqPubSubExecutor>,
    worker: RunningWorker,
    ran: Arc<AtomicUsize>,
    journal: Arc<FlakyJournal>,
}

async fn rig() -> Rig {
    let config = TaskerConfig {
        endpoint: "tcp://127.0.0.1:0".into(),
        heartbeat_interval_ms: 200,
        ..TaskerConfig::default()
    };
    let executor = Arc::new(ZmqPubSubExecutor::start_as(&config, ORCHESTRATOR_ID).unwrap());
    let ran = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&ran);
    let worker = Worker::new(TaskerConfig {
        endpoint: executor.endpoint().to_string(),
        ..config
    })
    .handler("echo", move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
        Ok(json!("ok"))
    })
    .spawn()
    .unwrap();
    assert!(executor.wait_for_workers(1, Duration::from_secs(10)).await);
    Rig {
        engine: WorkflowEngine::new(executor.clone()),
        executor,
        worker,
        ran,
        journal: Arc::new(FlakyJournal {
            down: AtomicBool::new(true),
            ..FlakyJournal::default()
        }),
    }
}

impl Rig {
    /// A new task of two echo steps in a row, started with the store down.
    fn start(&self) -> tasker_engine::RunningTask {
        let template = TaskTemplate::from_yaml_str(
            "name: two\nsteps:\n  - name: a\n    handler: echo\n  - name: b\n    handler: echo\n    depends_on: [a]\n",
        )
        .unwrap();
        let stored = StoredTask {
            task_id: 1,
            template,
            context: json!({}),
            created_at: chrono::Utc::now(),
            cancel_requested: false,
            steps: (1..=2)
                .map(|step_id| StoredStep {
                    step_id,
                    snapshot: StepSnapshot::waiting(),
                })
                .collect(),
        };
        self.engine.start_durable(
            stored,
            Durable {
                journal: self.journal.clone(),
                orchestrator_id: ORCHESTRATOR_ID.into(),
                resume_grace: Duration::from_secs(1),
            },
        )
    }

    /// Waits for the first commit, the first step's dispatch (a new task
    /// has nothing to commit before it).
    async fn first_try(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.attempts() == 0 {
            assert!(std::time::Instant::now() < deadline, "nothing committed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn attempts(&self) -> usize {
        self.journal.attempts.load(Ordering::SeqCst)
    }

    async fn close(self) {
        self.executor.shutdown(Duration::from_secs(2)).await;
        self.worker.stop();
        self.worker.join(Duration::from_secs(5));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_the_store_fails_is_tried_again_and_the_task_goes_on_once_it_is_taken() {
    let rig = rig().await;
    let task = rig.start();
    rig.first_try().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Tried again after 100, 300 and 700 ms: backing off, not spinning.
    let tried = rig.attempts();
    assert!((3..=6).contains(&tried), "{tried} tries in 800 ms");
    assert_eq!(
        rig.ran.load(Ordering::SeqCst),
        0,
        "dispatched before its commit"
    );

    rig.journal.down.store(false, Ordering::SeqCst);
    let report = tokio::time::timeout(Duration::from_secs(10), task.outcome())
        .await
        .expect("the task goes on once the store takes the commit")
        .expect("and ends");
    assert_eq!(report.status, TaskStatus::Complete);
    assert_eq!(rig.ran.load(Ordering::SeqCst), 2, "each step ran once");
    let committed = rig.journal.committed.lock().unwrap().clone();
    assert!(
        matches!(committed.last(), Some(Transition::Task { .. })),
        "the end was committed last: {committed:#?}"
    );
    rig.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_while_the_store_is_down_does_not_hurry_the_retries_and_is_obeyed_after() {
    let rig = rig().await;
    let task = rig.start();
    // Cancelled once the first step's dispatch is being committed.
    rig.first_try().await;
    task.cancel();
    let before = rig.attempts();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let tried = rig.attempts() - before;
    assert!(
        (2..=8).contains(&tried),
        "{tried} tries in the second after"
    );

    rig.journal.down.store(false, Ordering::SeqCst);
    let report = tokio::time::timeout(Duration::from_secs(10), task.outcome())
        .await
        .expect("the task ends once the store is back")
        .expect("cancelled, not stopped");
    assert_eq!(report.status, TaskStatus::Cancelled);
    // The first step's dispatch was the commit being tried: once the store
    // has it, it goes to the orchestrator, which the cancel then asks to
    // withdraw it (it runs if a worker got it first). Nothing after it goes.
    assert!(
        rig.ran.load(Ordering::SeqCst) <= 1,
        "only the first step may run"
    );
    assert_eq!(
        report.steps[1].outcome,
        tasker_engine::StepOutcome::Cancelled
    );
    rig.close().await;
}

/// A stop suspends its tasks with the store down: what they hold (results
/// workers handed over) is still committed if the store comes back before
/// the stop's deadline. Giving up at the suspend dropped it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_suspended_while_the_store_is_down_keeps_trying_and_stops_once_it_is_back() {
    let rig = rig().await;
    let task = rig.start();
    rig.first_try().await;
    task.canceller().suspend();
    let before = rig.attempts();
    let outcome = tokio::spawn(task.outcome());
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(!outcome.is_finished(), "still trying its commit");
    assert!(rig.attempts() > before, "tried again while suspended");
    rig.journal.down.store(false, Ordering::SeqCst);
    let stopped = tokio::time::timeout(Duration::from_secs(10), outcome)
        .await
        .expect("stops once the store took the commit")
        .unwrap();
    assert!(
        matches!(stopped, Err(TaskStopped::Suspended)),
        "{stopped:?}"
    );
    assert!(
        !rig.journal.committed.lock().unwrap().is_empty(),
        "the commit went in"
    );
    rig.close().await;
}

/// At the stop's deadline the suspension is abandoned: a commit the store
/// still refuses is given up at once, with the store's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_task_stops_at_once_with_the_stores_error() {
    let rig = rig().await;
    let task = rig.start();
    rig.first_try().await;
    task.canceller().suspend();
    task.canceller().abandon();
    let stopped = tokio::time::timeout(Duration::from_secs(5), task.outcome())
        .await
        .expect("an abandon ends the waiting at once");
    assert!(
        matches!(stopped, Err(TaskStopped::Journal(JournalError::Store(_)))),
        "{stopped:?}"
    );
    rig.close().await;
}

/// A bug that panics in a task's driver stopped the task where it was and
/// took the caller's task down with it: `tasker serve` kept the task
/// `running` for good, its cancel answered 202 and did nothing, and the
/// driver was never counted ended. The outcome says so instead, and the
/// store still holds where the task was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_tasks_driver_is_its_outcome_not_its_callers() {
    let rig = rig().await;
    rig.journal.down.store(false, Ordering::SeqCst);
    rig.journal.panics.store(true, Ordering::SeqCst);
    let stopped = tokio::time::timeout(Duration::from_secs(5), rig.start().outcome())
        .await
        .expect("the outcome comes");
    match stopped {
        Err(TaskStopped::Panicked(message)) => {
            assert!(message.contains("a bug in the journal"), "{message}")
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    rig.close().await;
}
