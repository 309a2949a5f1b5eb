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

use crate::handler::{to_result, SyncHandler, WallClock};
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

/// The inline handlers of one worker.
pub(crate) struct InlineHandlers {
    entries: Vec<Entry>,
    /// Index in `entries` by name.
    by_name: HashMap<String, usize>,
}

/// Which inline handler takes a step: found once, when the step arrives.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InlineHandler(usize);

impl std::fmt::Debug for InlineHandlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set()
            .entries(self.entries.iter().map(|e| &e.name))
            .finish()
    }
}

impl InlineHandlers {
    pub(crate) fn new(handlers: impl IntoIterator<Item = (String, Arc<SyncHandler>)>) -> Self {
        let entries: Vec<Entry> = handlers
            .into_iter()
            .map(|(name, handler)| Entry {
                name,
                handler,
                demoted: AtomicBool::new(false),
            })
            .collect();
        let by_name = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.clone(), i))
            .collect();
        Self { entries, by_name }
    }

    /// The inline handler that runs this step now, if any: none for the
    /// handlers demoted to the handler threads.
    pub(crate) fn handler_of(&self, step: &Received) -> Option<InlineHandler> {
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
        let i = *self.by_name.get(name)?;
        (!self.entries[i].demoted.load(Ordering::Relaxed)).then_some(InlineHandler(i))
    }

    /// Runs a step with the handler [`handler_of`](Self::handler_of) found
    /// (even if it was demoted since), timed from `started`: its result
    /// (its wall-clock end from `clock`), and when it ended, which is the
    /// next step's start (clock reads cost a tenth of a quick step on a
    /// VM). A handler that ran longer than [`INLINE_LIMIT`] is demoted: its
    /// later steps run on the handler threads.
    pub(crate) fn run(
        &self,
        handler: InlineHandler,
        step: Received,
        worker_id: &str,
        started: Instant,
        clock: &WallClock,
    ) -> (StepExecutionResult, Instant) {
        let entry = &self.entries[handler.0];
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
        (
            to_result(&step, outcome, worker_id, took, clock.wall(ended)),
            ended,
        )
    }
}
