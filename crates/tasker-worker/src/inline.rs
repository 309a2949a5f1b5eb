//! Handlers the I/O thread runs itself ([`HandlerOptions::inline`]).
//!
//! A step on a handler thread costs two hand-offs between threads: the I/O
//! thread wakes the handler thread, which wakes the I/O thread back to send
//! the result. On a virtual machine each can take tens of microseconds,
//! more than a quick handler takes to run. A handler that only computes
//! skips both when the I/O thread runs it between reading the batch and
//! sending the results.
//!
//! [`HandlerOptions::inline`]: crate::HandlerOptions::inline

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use foldhash::HashMap;
use tasker_protocol::StepExecutionResult;

use crate::handler::{to_result, SyncHandler};
use crate::runtime::invalid_step;
use crate::shared::Received;

/// The longest an inline handler may run before its steps go to the
/// handler threads for good. While it runs, the I/O thread reads nothing
/// and sends no heartbeat; this is far below any heartbeat interval worth
/// configuring.
pub(crate) const INLINE_LIMIT: Duration = Duration::from_millis(10);

struct Entry {
    name: String,
    handler: Arc<SyncHandler>,
    /// Ran longer than [`INLINE_LIMIT`] once: its steps are the handler
    /// threads' from then on.
    demoted: AtomicBool,
}

/// The inline handlers of one worker, by name.
pub(crate) struct InlineHandlers {
    by_name: HashMap<String, Entry>,
}

impl std::fmt::Debug for InlineHandlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.by_name.keys()).finish()
    }
}

impl InlineHandlers {
    pub(crate) fn new(handlers: impl IntoIterator<Item = (String, Arc<SyncHandler>)>) -> Self {
        let by_name = handlers
            .into_iter()
            .map(|(name, handler)| {
                let entry = Entry {
                    name: name.clone(),
                    handler,
                    demoted: AtomicBool::new(false),
                };
                (name, entry)
            })
            .collect();
        Self { by_name }
    }

    fn entry(&self, step: &Received) -> Option<&Entry> {
        let name = match step {
            Received::Typed(step) => step.handler_class.as_str(),
            // The name's JSON text, quotes included. One written with
            // escapes is left to the handler threads, which decode it.
            Received::Raw(step) => step
                .fields()
                .handler_class
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .filter(|t| !t.contains('\\'))?,
        };
        self.by_name.get(name)
    }

    /// Whether the I/O thread runs this step.
    pub(crate) fn takes(&self, step: &Received) -> bool {
        self.entry(step)
            .is_some_and(|e| !e.demoted.load(Ordering::Relaxed))
    }

    /// Runs a step [`takes`](Self::takes) accepted (even if its handler was
    /// demoted since), timed from `started`: its result, and when it ended,
    /// which is the next step's start (clock reads cost a tenth of a quick
    /// step on a VM). A handler that ran longer than [`INLINE_LIMIT`] is
    /// demoted: its later steps run on the handler threads.
    pub(crate) fn run(
        &self,
        step: Received,
        worker_id: &str,
        started: Instant,
    ) -> (StepExecutionResult, Instant) {
        let entry = self.entry(&step).expect("a step the inline handlers take");
        let step = match step {
            Received::Typed(step) => step,
            Received::Raw(raw) => match raw.decode() {
                Ok(step) => step,
                Err(e) => return (invalid_step(&raw, &e, worker_id), started),
            },
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| (entry.handler)(&step)));
        let ended = Instant::now();
        let took = ended.duration_since(started);
        if took > INLINE_LIMIT && !entry.demoted.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                handler = %entry.name,
                "inline handler ran for {took:?} on the I/O thread, which reads nothing and \
                 sends no heartbeat meanwhile; its steps run on the handler threads from now on"
            );
        }
        (to_result(&step, outcome, worker_id, took), ended)
    }
}
