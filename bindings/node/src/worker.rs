//! The worker: a [`WorkerRuntime`] run on Node's own event loop
//! ([`event_loop::start`], `uv.rs`), serving steps to JavaScript.
//!
//! libuv watches the worker socket's descriptor and the next deadline, and
//! the connection takes a turn when either fires, after JavaScript
//! completes steps, and on stop. Every turn is non-blocking, so the
//! JavaScript thread never waits on Rust, and steps and results pass
//! through no other thread. New steps reach JavaScript in chunks
//! (`step_rows::encode_chunk`) through one thread-safe function call each (queued on
//! this same thread, never one call per step); results come back in batches
//! through [`NativeWorker::complete`], which sends them at once. The runtime
//! checks each output on the way in, on this thread
//! ([`EventLoopHost::complete_encoded`]: nesting within the orchestrator's
//! `max_json_depth`, no lone surrogate escape, which `JSON.stringify` writes
//! for a string cut mid-character), and fails the step as
//! `SerializationError` otherwise. When the runtime has drained and said
//! goodbye, or stopped by itself because the orchestrator refused the
//! connection ([`NativeWorker::check_failure`] then throws why), `null` is
//! delivered, the thread-safe function released and the libuv handles
//! closed, so nothing of the worker keeps the event loop alive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use napi::bindgen_prelude::{Env, Status};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use tasker_protocol::raw::{CompletedEncoder, RawStep};
use tasker_protocol::{StepExecutionError, StepExecutionResult, StepStatus};
use tasker_worker::event_loop::{self, EventLoopHost};
use tasker_worker::{policy, RuntimeState, WorkerOptions, WorkerRuntime};

use crate::config::NativeConfig;
use crate::errors::{error_types, BindingError, Result};
use crate::step_rows::{decode_outcomes, encode_chunk, to_result};
use crate::uv;

/// Largest integer a JavaScript number holds exactly (`Number.MAX_SAFE_INTEGER`).
const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// Hand-overs of steps to JavaScript in flight at once: each takes half the
/// capacity, so the first half's results go back (and free credit for the
/// next delivery) before the second half is done. JavaScript runs every
/// handler on one thread; these are its "threads" in the sense of
/// [`policy::chunk_size`].
const HAND_OVERS: usize = 2;

/// Options of a `NativeWorker` beyond its configuration.
#[napi(object)]
pub struct NativeWorkerOptions {
    /// Handler names announced to the orchestrator; at least one.
    pub handlers: Vec<String>,
    /// Stable worker id; generated (`node-<pid>-<random>`) when absent.
    pub worker_id: Option<String>,
    /// Per-handler concurrency limits: handler name → most of its steps
    /// held at once (at least 1), enforced by the orchestrator.
    pub handler_limits: Option<HashMap<String, u32>>,
}

/// Receives each chunk of steps (a JSON array of `Step` rows), then `null`
/// once the worker has stopped.
type StepsCallback = ThreadsafeFunction<Option<String>, (), Option<String>, Status, false>;

/// A connection to the orchestrator serving steps to JavaScript.
///
/// Starts connecting at construction. Steps arrive in chunks through the
/// `onSteps` callback, each a JSON array of `Step` rows; results go back
/// with `complete`; `stop` begins a graceful drain, at the end of which
/// `onSteps(null)` is called and the worker no longer holds the event loop.
#[napi]
pub struct NativeWorker {
    runtime: Arc<WorkerRuntime>,
    driver: uv::SharedDriver,
    flush_every: u32,
}

#[napi]
impl NativeWorker {
    /// Validates the options, connects and starts delivering steps.
    #[napi(constructor)]
    pub fn new(
        env: Env,
        config: &NativeConfig,
        options: NativeWorkerOptions,
        on_steps: ThreadsafeFunction<Option<String>, (), Option<String>, Status, false>,
    ) -> Result<Self> {
        let mut worker_options = WorkerOptions::new(config.config.clone(), options.handlers);
        worker_options.worker_id = options.worker_id;
        worker_options.handler_limits = options
            .handler_limits
            .unwrap_or_default()
            .into_iter()
            .collect();
        worker_options.language = "node".into();
        // V8 parses the steps: the runtime only checks them.
        event_loop::keep_raw_steps(&mut worker_options);
        // Before connecting: a refusal then leaves nothing half started.
        uv::check_types().map_err(BindingError::from)?;
        let event_loop = env.get_uv_event_loop().map_err(BindingError::from)?;
        let (runtime, driver) = event_loop::start(worker_options).map_err(BindingError::from)?;
        let runtime = Arc::new(runtime);
        let half = policy::chunk_size(runtime.capacity(), HAND_OVERS);
        let delivery = Arc::new(Delivery {
            chunk: half.min(config.config.batch_size).max(1),
            target: Mutex::new(Some((Arc::clone(&runtime), on_steps))),
        });
        let waker = Arc::clone(&delivery);
        runtime.set_waker(move || waker.deliver());
        let driver = uv::start(event_loop, driver).map_err(|e| {
            runtime.stop();
            BindingError::EventLoop(e)
        })?;
        Ok(Self {
            runtime,
            driver,
            flush_every: clamp_u32(half),
        })
    }

    /// The id announced to the orchestrator.
    #[napi(getter)]
    pub fn worker_id(&self) -> String {
        self.runtime.worker_id().to_string()
    }

    /// The declared capacity.
    #[napi(getter)]
    pub fn capacity(&self) -> u32 {
        self.runtime.capacity()
    }

    /// How many results JavaScript gathers before handing them back: half
    /// the capacity, so the orchestrator refills the worker while the other
    /// half runs.
    #[napi(getter)]
    pub fn flush_every(&self) -> u32 {
        self.flush_every
    }

    /// `connecting`, `connected`, `draining` or `stopped`.
    #[napi(getter)]
    pub fn state(&self) -> String {
        self.runtime.state().as_str().to_string()
    }

    /// Steps handed to JavaScript and not completed yet.
    #[napi(getter)]
    pub fn in_hand(&self) -> u32 {
        clamp_u32(self.runtime.in_hand())
    }

    /// Hands back results, a JSON array of outcome rows (`outcomeFields()`),
    /// and sends them without waiting. Throws if the text is not such an
    /// array.
    #[napi]
    pub fn complete(&self, outcomes_json: String) -> Result<()> {
        let outcomes = decode_outcomes(&outcomes_json).map_err(BindingError::Outcomes)?;
        let worker_id = self.runtime.worker_id();
        // One clock reading for the call: its outcomes are handed over
        // together, within the same turn of the event loop.
        let now = chrono::Utc::now();
        let completed = CompletedEncoder::new(worker_id, now);
        let results = outcomes
            .into_iter()
            .map(|o| to_result(o, &completed, worker_id, now))
            .collect();
        self.runtime.complete_encoded(results);
        uv::drive(&self.driver);
        Ok(())
    }

    /// Throws the error the worker stopped with by itself, if it did: the
    /// orchestrator refused the connection (code `WORKER_REFUSED_CODE`).
    /// `onSteps(null)` follows such a stop as any other; the JavaScript
    /// layer calls this then.
    #[napi]
    pub fn check_failure(&self) -> Result<()> {
        match self.runtime.failure() {
            Some(failure) => Err(BindingError::from(failure).into()),
            None => Ok(()),
        }
    }

    /// Begins a graceful stop and returns at once: unstarted steps go back to
    /// the orchestrator, steps in hand are awaited (up to
    /// `shutdownTimeoutMs`), then the worker says goodbye and `onSteps(null)`
    /// is called. Idempotent.
    #[napi]
    pub fn stop(&self) {
        self.runtime.stop();
        uv::drive(&self.driver);
    }
}

fn clamp_u32<T: TryInto<u32>>(v: T) -> u32 {
    v.try_into().unwrap_or(u32::MAX)
}

/// Hands steps to JavaScript as they arrive: called by the runtime (its
/// waker) during a turn on the event loop, so the calls into JavaScript are
/// queued, never nested.
struct Delivery {
    /// Most steps per call into JavaScript.
    chunk: usize,
    /// Taken once the runtime has closed: that ends the cycle runtime →
    /// waker → runtime, and releases the thread-safe function.
    target: Mutex<Option<(Arc<WorkerRuntime>, StepsCallback)>>,
}

impl Delivery {
    fn deliver(&self) {
        // Only the event loop's thread gets here; the lock is what the
        // waker's `Send + Sync` bound asks for.
        let Ok(mut target) = self.target.lock() else {
            return;
        };
        let Some((runtime, on_steps)) = target.as_ref() else {
            return;
        };
        loop {
            match runtime.next_raw_steps(self.chunk, Some(Duration::ZERO)) {
                Ok(steps) if steps.is_empty() => return,
                Ok(steps) => hand_over(runtime, on_steps, steps),
                Err(_) if runtime.state() == RuntimeState::Stopped => {
                    // Drained and said goodbye, or refused by the
                    // orchestrator (`check_failure` says): `null` means
                    // "fully stopped".
                    on_steps.call(None, ThreadsafeFunctionCallMode::NonBlocking);
                    // Dropping the function releases it: once its queue is
                    // delivered it no longer holds the event loop.
                    *target = None;
                    return;
                }
                // Stopping: the runtime wakes us again when it has closed.
                Err(_) => return,
            }
        }
    }
}

fn hand_over(runtime: &WorkerRuntime, on_steps: &StepsCallback, steps: Vec<RawStep>) {
    let (steps, unsupported): (Vec<_>, Vec<_>) = steps
        .into_iter()
        .partition(|s| s.step_ref().step_id.abs() <= MAX_SAFE_INTEGER);
    if !unsupported.is_empty() {
        let failed = unsupported
            .iter()
            .map(|s| unsupported_step(s, runtime.worker_id()))
            .collect();
        runtime.complete_many(failed);
    }
    if !steps.is_empty() {
        on_steps.call(
            Some(encode_chunk(&steps)),
            ThreadsafeFunctionCallMode::NonBlocking,
        );
    }
}

fn unsupported_step(step: &RawStep, worker_id: &str) -> StepExecutionResult {
    let step_id = step.step_ref().step_id;
    tracing::warn!(
        step_id,
        "step id beyond Number.MAX_SAFE_INTEGER; not handed to JavaScript"
    );
    StepExecutionResult::failed(
        step.step_ref(),
        StepStatus::Failed,
        StepExecutionError::new(
            error_types::UNSUPPORTED_STEP_ID,
            format!(
                "step id {step_id} is beyond Number.MAX_SAFE_INTEGER (2^53 - 1); the Node worker cannot represent it exactly",
            ),
            false,
        ),
        worker_id,
        0,
    )
}
