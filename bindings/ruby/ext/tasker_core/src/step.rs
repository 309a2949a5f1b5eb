//! `TaskerCore::Step`: one step pulled from the runtime, its fields read
//! lazily on the handler's thread, carrying its result until
//! `Runtime#complete_many` sends it.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::Instant;

use magnus::{method, Class, Error, Module, RModule, Ruby, Value};
use tasker_protocol::{StepExecutionError, StepExecutionRequest, StepExecutionResult, StepStatus};
use tasker_worker::policy::error_types;

use crate::convert;
use crate::errors;
use crate::policy::WORKER_INTERRUPTED;

thread_local! {
    /// When this thread last pulled steps or finished one. Each pool thread
    /// runs its chunk in order, so the time since the mark is the handler's
    /// run time, measured without an extra call per step.
    static MARK: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Marks the start of the first handler run of a chunk just pulled.
pub fn mark_pulled() {
    MARK.with(|m| m.set(Some(Instant::now())));
}

fn elapsed_since_mark() -> u64 {
    let now = Instant::now();
    let started = MARK.with(|m| m.replace(Some(now))).unwrap_or(now);
    now.duration_since(started).as_millis() as u64
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
    /// A step just pulled, without a result.
    pub fn new(request: StepExecutionRequest, worker_id: Arc<str>, max_depth: u32) -> Self {
        Self {
            request,
            worker_id,
            max_depth,
            outcome: RefCell::new(Outcome::Pending),
        }
    }

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

    /// Fails the step as [`WORKER_INTERRUPTED`], retryable, unless it has a
    /// result already.
    pub fn interrupt(&self, message: &str) {
        if !self.answered() {
            self.record_failure(
                StepExecutionError::new(WORKER_INTERRUPTED, message.to_string(), true),
                0,
            );
        }
    }

    /// The recorded result, once; `None` while pending or once sent.
    pub fn take_result(&self) -> Option<StepExecutionResult> {
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

/// Defines `TaskerCore::Step` (its Ruby half is `lib/tasker_core/step.rb`).
pub fn define(ruby: &Ruby, core: RModule) -> Result<(), Error> {
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
