//! `TaskerCore::Native::Runtime`: the worker runtime, owned by a Ruby
//! object. Its waits run without the GVL and end on Ruby interrupts; the
//! steps it hands out are [`Step`]s.

use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::time::Instant;

use magnus::{function, method, Error, Exception, Module, Object, RArray, RHash, RModule, Ruby};
use magnus::{TryConvert, Value};
use tasker_protocol::StepExecutionRequest;
use tasker_worker::{WorkerError, WorkerOptions, WorkerRuntime};

use crate::config;
use crate::errors;
use crate::nogvl::without_gvl;
use crate::policy::wait_timeout;
use crate::step::{self, Step};

/// The Rust worker runtime, owned by a Ruby object.
#[magnus::wrap(class = "TaskerCore::Native::Runtime", free_immediately, size)]
pub struct Runtime {
    inner: ManuallyDrop<Arc<WorkerRuntime>>,
    worker_id: Arc<str>,
    /// The process that started it (see `Drop`).
    pid: u32,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // In a child forked from the process that started the runtime, its
        // threads do not exist, and a lock one of them held at the fork
        // stays held: stopping it there could wait for good. Its memory is
        // left as it is; the child's exit returns it.
        if std::process::id() == self.pid {
            // SAFETY: `inner` is dropped once, here, and not used after:
            // this is the last use of `self`.
            unsafe { ManuallyDrop::drop(&mut self.inner) }
        }
    }
}

impl Runtime {
    /// `Runtime.new(config_hash, handler_names, capacity_or_nil, worker_id_or_nil,
    /// handler_limits)`: validates and starts connecting at once. The Hash
    /// is the whole configuration (config keys; missing ones take the
    /// built-in defaults); `handler_limits` maps handler names to their
    /// concurrency limits (at least 1).
    fn new(
        config: RHash,
        handlers: Vec<String>,
        capacity: Option<u32>,
        worker_id: Option<String>,
        handler_limits: HashMap<String, u32>,
    ) -> Result<Self, Error> {
        let config = config::from_hash(config)?;
        let mut options = WorkerOptions::new(config, handlers);
        options.worker_id = worker_id;
        options.capacity = capacity;
        options.handler_limits = handler_limits.into_iter().collect();
        options.language = "ruby".into();
        let inner = WorkerRuntime::start(options).map_err(errors::worker)?;
        let worker_id = Arc::from(inner.worker_id());
        Ok(Self {
            inner: ManuallyDrop::new(Arc::new(inner)),
            worker_id,
            pid: std::process::id(),
        })
    }

    /// Up to `max` steps: an Array of `TaskerCore::Step`; empty once
    /// `timeout` seconds (nil: no limit) pass without any; `nil` once the
    /// runtime is stopping. Raises `TaskerCore::WorkerRefused` once the
    /// orchestrator has refused the connection. Ruby interrupts (signals,
    /// `Thread#kill`, `Thread#raise`) end the wait and run; it resumes if
    /// they return.
    fn next_steps(
        ruby: &Ruby,
        rb_self: &Self,
        max: usize,
        timeout: Option<f64>,
    ) -> Result<Option<RArray>, Error> {
        let deadline = wait_timeout(timeout)?.map(|t| Instant::now() + t);
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
        step::mark_pulled();
        let max_depth = self.inner.max_json_depth();
        let array = ruby.ary_new_capa(steps.len());
        for request in steps {
            array.push(Step::new(request, Arc::clone(&self.worker_id), max_depth))?;
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
    /// thread is interrupted mid-chunk) as `WorkerInterrupted`, retryable,
    /// and sends them.
    fn abandon(&self, steps: RArray, message: String) -> Result<usize, Error> {
        for i in 0..steps.len() {
            let value: Value = steps.entry(i as isize)?;
            <&Step>::try_convert(value)?.interrupt(&message);
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
        let deadline = Instant::now() + wait_timeout(Some(timeout))?.unwrap_or_default();
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

    /// Why the runtime stopped by itself, if it did: a
    /// `TaskerCore::WorkerRefused` (the orchestrator refused the
    /// connection), not raised; nil otherwise.
    fn failure(&self) -> Result<Option<Exception>, Error> {
        self.inner
            .failure()
            .map(errors::worker_exception)
            .transpose()
    }

    fn state(&self) -> &'static str {
        self.inner.state().as_str()
    }
}

/// Defines `TaskerCore::Native::Runtime`.
pub fn define(ruby: &Ruby, native: RModule) -> Result<(), Error> {
    let class = native.define_class("Runtime", ruby.class_object())?;
    class.define_singleton_method("new", function!(Runtime::new, 5))?;
    class.define_method("next_steps", method!(Runtime::next_steps, 2))?;
    class.define_method("complete_many", method!(Runtime::complete_many, 1))?;
    class.define_method("abandon", method!(Runtime::abandon, 2))?;
    class.define_method("stop", method!(Runtime::stop, 0))?;
    class.define_method("join", method!(Runtime::join, 1))?;
    class.define_method("worker_id", method!(Runtime::worker_id, 0))?;
    class.define_method("failure", method!(Runtime::failure, 0))?;
    class.define_method("state", method!(Runtime::state, 0))?;
    Ok(())
}
