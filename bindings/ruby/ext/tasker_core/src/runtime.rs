//! `TaskerCore::Native::Runtime` (the worker runtime) and `TaskerCore::Step`
//! (one step pulled from it, carrying its result until it is sent).

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::Instant;

use magnus::value::ReprValue;
use magnus::{Error, RArray, RHash, Ruby, TryConvert, Value};
use tasker_config::TaskerConfig;
use tasker_protocol::{
    error_types, StepExecutionError, StepExecutionRequest, StepExecutionResult, StepStatus,
};
use tasker_worker::{WorkerError, WorkerOptions, WorkerRuntime};

use crate::convert;
use crate::errors;
use crate::nogvl::{seconds, without_gvl};

thread_local! {
    /// When this thread last pulled steps or finished one. Each pool thread
    /// runs its chunk in order, so the time since the mark is the handler's
    /// run time, measured without an extra call per step.
    static MARK: Cell<Option<Instant>> = const { Cell::new(None) };
}

fn elapsed_since_mark() -> u64 {
    let now = Instant::now();
    let started = MARK.with(|m| m.replace(Some(now))).unwrap_or(now);
    now.duration_since(started).as_millis() as u64
}

/// The Rust worker runtime, owned by a Ruby object.
#[magnus::wrap(class = "TaskerCore::Native::Runtime", free_immediately, size)]
pub struct Runtime {
    inner: Arc<WorkerRuntime>,
    worker_id: Arc<str>,
}

impl Runtime {
    /// `Runtime.new(config_hash, handler_names, capacity_or_nil, worker_id_or_nil)`:
    /// validates and starts connecting at once.
    fn new(
        config: RHash,
        handlers: Vec<String>,
        capacity: Option<u32>,
        worker_id: Option<String>,
    ) -> Result<Self, Error> {
        let config = config_from_hash(config)?;
        let mut options = WorkerOptions::new(config, handlers);
        options.worker_id = worker_id;
        options.capacity = capacity;
        options.language = "ruby".into();
        let inner = WorkerRuntime::start(options).map_err(errors::worker)?;
        let worker_id = Arc::from(inner.worker_id());
        Ok(Self {
            inner: Arc::new(inner),
            worker_id,
        })
    }

    /// Up to `max` steps: an Array of `TaskerCore::Step`; empty once
    /// `timeout` seconds (nil: no limit) pass without any; `nil` once the
    /// runtime is stopping. Ruby interrupts (signals, `Thread#kill`,
    /// `Thread#raise`) end the wait and run; it resumes if they return.
    fn next_steps(
        ruby: &Ruby,
        rb_self: &Self,
        max: usize,
        timeout: Option<f64>,
    ) -> Result<Option<RArray>, Error> {
        let deadline = seconds(timeout)?.map(|t| Instant::now() + t);
        let runtime = &rb_self.inner;
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            match without_gvl(|| runtime.next_steps(max, left), || runtime.wake()) {
                Some(Ok(steps)) if !steps.is_empty() => {
                    return rb_self.to_ruby(ruby, steps).map(Some)
                }
                Some(Err(WorkerError::Stopped)) => return Ok(None),
                Some(Err(e)) => return Err(errors::worker(e)),
                // Timed out, woken or interrupted before waiting.
                Some(Ok(_)) | None => {}
            }
            // Nothing is in hand, so an exception here loses no step.
            ruby.thread_check_ints()?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(Some(ruby.ary_new()));
            }
        }
    }

    fn to_ruby(&self, ruby: &Ruby, steps: Vec<StepExecutionRequest>) -> Result<RArray, Error> {
        MARK.with(|m| m.set(Some(Instant::now())));
        let max_depth = self.inner.max_json_depth();
        let array = ruby.ary_new_capa(steps.len());
        for request in steps {
            array.push(Step {
                request,
                worker_id: Arc::clone(&self.worker_id),
                max_depth,
                outcome: RefCell::new(Outcome::Pending),
            })?;
        }
        Ok(array)
    }

    /// Sends the results recorded on these steps in one go; steps still
    /// without a result are left for a later call, steps already sent are
    /// skipped. Returns how many results were sent.
    fn complete_many(&self, steps: RArray) -> Result<usize, Error> {
        let mut results = Vec::with_capacity(steps.len());
        for i in 0..steps.len() {
            let value: Value = steps.entry(i as isize)?;
            let step = <&Step>::try_convert(value)?;
            if let Some(result) = step.take_result() {
                results.push(result);
            }
        }
        let sent = results.len();
        self.inner.complete_many(results);
        Ok(sent)
    }

    /// Fails every step of `steps` that has no result yet (used when a pool
    /// thread is interrupted mid-chunk), and sends them.
    fn abandon(&self, steps: RArray, error_type: String, message: String) -> Result<usize, Error> {
        for i in 0..steps.len() {
            let value: Value = steps.entry(i as isize)?;
            let step = <&Step>::try_convert(value)?;
            if matches!(*step.outcome.borrow(), Outcome::Pending) {
                step.record_failure(
                    StepExecutionError::new(error_type.clone(), message.clone(), true),
                    0,
                );
            }
        }
        self.complete_many(steps)
    }

    fn stop(&self) {
        self.inner.stop();
    }

    /// Waits up to `timeout` seconds for the runtime to finish (after
    /// `stop`, once the steps in hand are answered or `shutdown_timeout_ms`
    /// passed); true if it did. Interruptible like `next_steps`.
    fn join(ruby: &Ruby, rb_self: &Self, timeout: f64) -> Result<bool, Error> {
        let deadline = Instant::now() + seconds(Some(timeout))?.unwrap_or_default();
        let runtime = &rb_self.inner;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if without_gvl(|| runtime.join(left), || runtime.wake()) == Some(true) {
                return Ok(true);
            }
            ruby.thread_check_ints()?;
            if Instant::now() >= deadline {
                return Ok(false);
            }
        }
    }

    fn worker_id(&self) -> String {
        self.worker_id.to_string()
    }

    fn state(&self) -> &'static str {
        self.inner.state().as_str()
    }
}

/// Parses the Hash made by `TaskerCore::Native.load_config` (or by hand).
pub fn config_from_hash(hash: RHash) -> Result<TaskerConfig, Error> {
    let json = convert::to_json(hash.as_value(), convert::MAX_DEPTH)
        .map_err(|e| errors::config(e.to_string()))?;
    let config: TaskerConfig =
        serde_json::from_value(json).map_err(|e| errors::config(format!("invalid config: {e}")))?;
    config
        .validate()
        .map_err(|e| errors::config(e.to_string()))?;
    Ok(config)
}

enum Outcome {
    Pending,
    Done(Box<StepExecutionResult>),
    Sent,
}

/// One step pulled from the runtime. Its fields become Ruby objects only
/// when asked for (on the Ruby thread that asks); its result is recorded by
/// `_succeed` / `_fail` and sent by `Runtime#complete_many`.
#[magnus::wrap(class = "TaskerCore::Step", free_immediately, size)]
pub struct Step {
    request: StepExecutionRequest,
    worker_id: Arc<str>,
    /// Deepest nesting its output may have (the orchestrator's
    /// `max_json_depth` when the step was pulled).
    max_depth: u32,
    outcome: RefCell<Outcome>,
}

impl Step {
    fn step_id(&self) -> i64 {
        self.request.step_id
    }

    fn task_id(&self) -> i64 {
        self.request.task_id
    }

    fn step_name(&self) -> String {
        self.request.step_name.clone()
    }

    fn handler_class(&self) -> String {
        self.request.handler_class.clone()
    }

    fn attempt(&self) -> u32 {
        self.request.metadata.attempt
    }

    fn retry_limit(&self) -> u32 {
        self.request.metadata.retry_limit
    }

    fn timeout_ms(&self) -> u64 {
        self.request.metadata.timeout_ms
    }

    fn created_at(&self) -> String {
        self.request.metadata.created_at.to_rfc3339()
    }

    fn handler_config(ruby: &Ruby, rb_self: &Self) -> Result<Value, Error> {
        convert::to_ruby(ruby, &rb_self.request.handler_config)
    }

    fn task_context(ruby: &Ruby, rb_self: &Self) -> Result<Value, Error> {
        convert::to_ruby(ruby, &rb_self.request.task_context)
    }

    fn previous_results(ruby: &Ruby, rb_self: &Self) -> Result<Value, Error> {
        convert::object_to_ruby(ruby, rb_self.request.previous_results.iter())
    }

    fn answered(&self) -> bool {
        !matches!(*self.outcome.borrow(), Outcome::Pending)
    }

    fn check_pending(&self) -> Result<(), Error> {
        if self.answered() {
            return Err(errors::error(format!(
                "step {} (attempt {}) already has a result",
                self.request.step_id, self.request.metadata.attempt
            )));
        }
        Ok(())
    }

    /// Records `output` as the result. When it has no JSON form the step
    /// fails with `SerializationError` instead, and the reason is returned
    /// (nil otherwise).
    fn succeed(&self, output: Value) -> Result<Option<String>, Error> {
        self.check_pending()?;
        let elapsed = elapsed_since_mark();
        match convert::to_json(output, self.max_depth) {
            Ok(json) => {
                let result = StepExecutionResult::completed(
                    self.request.step_ref(),
                    json,
                    &self.worker_id,
                    elapsed,
                );
                *self.outcome.borrow_mut() = Outcome::Done(Box::new(result));
                Ok(None)
            }
            Err(e) => {
                let message = format!(
                    "handler {:?} returned a value that cannot be serialised: {e}",
                    self.request.handler_class
                );
                self.record_failure(
                    StepExecutionError::new(
                        error_types::SERIALIZATION_ERROR,
                        message.clone(),
                        false,
                    ),
                    elapsed,
                );
                Ok(Some(message))
            }
        }
    }

    /// Records a failure.
    fn fail(
        &self,
        error_type: String,
        message: String,
        retryable: bool,
        backtrace: Option<Vec<String>>,
    ) -> Result<(), Error> {
        self.check_pending()?;
        let error = StepExecutionError {
            message,
            error_type,
            retryable,
            backtrace: backtrace.unwrap_or_default(),
        };
        self.record_failure(error, elapsed_since_mark());
        Ok(())
    }

    fn record_failure(&self, error: StepExecutionError, elapsed: u64) {
        let result = StepExecutionResult::failed(
            self.request.step_ref(),
            StepStatus::Failed,
            error,
            &self.worker_id,
            elapsed,
        );
        *self.outcome.borrow_mut() = Outcome::Done(Box::new(result));
    }

    /// The recorded result, once; `None` while pending or once sent.
    fn take_result(&self) -> Option<StepExecutionResult> {
        let mut outcome = self.outcome.borrow_mut();
        match std::mem::replace(&mut *outcome, Outcome::Sent) {
            Outcome::Done(result) => Some(*result),
            Outcome::Sent => None,
            Outcome::Pending => {
                *outcome = Outcome::Pending;
                None
            }
        }
    }
}

/// Defines the methods of `TaskerCore::Native::Runtime` and `TaskerCore::Step`.
pub fn define(ruby: &Ruby, core: magnus::RModule, native: magnus::RModule) -> Result<(), Error> {
    use magnus::{function, method, Class, Module, Object};

    let class = native.define_class("Runtime", ruby.class_object())?;
    class.define_singleton_method("new", function!(Runtime::new, 4))?;
    class.define_method("next_steps", method!(Runtime::next_steps, 2))?;
    class.define_method("complete_many", method!(Runtime::complete_many, 1))?;
    class.define_method("abandon", method!(Runtime::abandon, 3))?;
    class.define_method("stop", method!(Runtime::stop, 0))?;
    class.define_method("join", method!(Runtime::join, 1))?;
    class.define_method("worker_id", method!(Runtime::worker_id, 0))?;
    class.define_method("state", method!(Runtime::state, 0))?;

    let step = core.define_class("Step", ruby.class_object())?;
    step.undef_default_alloc_func();
    step.define_method("step_id", method!(Step::step_id, 0))?;
    step.define_method("task_id", method!(Step::task_id, 0))?;
    step.define_method("step_name", method!(Step::step_name, 0))?;
    step.define_method("handler_class", method!(Step::handler_class, 0))?;
    step.define_method("attempt", method!(Step::attempt, 0))?;
    step.define_method("retry_limit", method!(Step::retry_limit, 0))?;
    step.define_method("timeout_ms", method!(Step::timeout_ms, 0))?;
    step.define_method("created_at_iso8601", method!(Step::created_at, 0))?;
    step.define_method("_handler_config", method!(Step::handler_config, 0))?;
    step.define_method("_task_context", method!(Step::task_context, 0))?;
    step.define_method("_previous_results", method!(Step::previous_results, 0))?;
    step.define_method("_succeed", method!(Step::succeed, 1))?;
    step.define_method("_fail", method!(Step::fail, 4))?;
    Ok(())
}
