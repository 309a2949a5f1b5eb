//! What the executor counts: plain counters for [`MetricsSnapshot`], and
//! the Prometheus metrics ([`ExecutorMetrics`]) `tasker serve` exposes at
//! `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use tasker_protocol::{error_types, ProtocolErrorCode};

/// Counters the I/O thread updates and anyone can read.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub submitted: AtomicU64,
    pub dispatched: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub timed_out: AtomicU64,
    pub worker_lost: AtomicU64,
    pub cancelled: AtomicU64,
    pub redelivered: AtomicU64,
    pub late_results_dropped: AtomicU64,
    pub duplicate_results_dropped: AtomicU64,
    pub malformed_messages: AtomicU64,
    pub unheld_results_dropped: AtomicU64,
    pub foreign_results_dropped: AtomicU64,
    pub invalid_results: AtomicU64,
    pub hellos_refused: AtomicU64,
    pub workers_connected: AtomicU64,
    pub workers_lost: AtomicU64,
    pub reclaimed: AtomicU64,
    pub keys_refused: AtomicU64,
    pub handshakes_failed: AtomicU64,
    /// Protocol errors answered, by [`ProtocolErrorCode::ALL`] index.
    pub protocol_errors: [AtomicU64; ProtocolErrorCode::ALL.len()],
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn protocol_error(&self, code: ProtocolErrorCode) {
        let i = ProtocolErrorCode::ALL
            .iter()
            .position(|c| *c == code)
            .expect("ALL lists every code");
        Metrics::add(&self.protocol_errors[i], 1);
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            submitted: get(&self.submitted),
            dispatched: get(&self.dispatched),
            completed: get(&self.completed),
            failed: get(&self.failed),
            timed_out: get(&self.timed_out),
            worker_lost: get(&self.worker_lost),
            cancelled: get(&self.cancelled),
            redelivered: get(&self.redelivered),
            late_results_dropped: get(&self.late_results_dropped),
            duplicate_results_dropped: get(&self.duplicate_results_dropped),
            malformed_messages: get(&self.malformed_messages),
            unheld_results_dropped: get(&self.unheld_results_dropped),
            foreign_results_dropped: get(&self.foreign_results_dropped),
            invalid_results: get(&self.invalid_results),
            hellos_refused: get(&self.hellos_refused),
            workers_connected: get(&self.workers_connected),
            workers_lost: get(&self.workers_lost),
            reclaimed: get(&self.reclaimed),
            keys_refused: get(&self.keys_refused),
            handshakes_failed: get(&self.handshakes_failed),
        }
    }
}

/// The executor's counters at one moment.
///
/// `completed + failed + timed_out + cancelled` counts final results;
/// `worker_lost` is the part of `failed` due to lost workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct MetricsSnapshot {
    /// Steps accepted by `submit`.
    pub submitted: u64,
    /// Step deliveries to workers (a redelivered step counts again).
    pub dispatched: u64,
    /// Steps that ended completed.
    pub completed: u64,
    /// Steps that ended failed (handler errors, lost workers, no worker).
    pub failed: u64,
    /// Steps that ended timed out.
    pub timed_out: u64,
    /// Steps failed because their worker died or left.
    pub worker_lost: u64,
    /// Steps abandoned at shutdown.
    pub cancelled: u64,
    /// Steps delivered again after a worker gave them back unstarted or could
    /// not be reached.
    pub redelivered: u64,
    /// Results that arrived after their step had ended (timed out, worker
    /// declared lost) and were discarded.
    pub late_results_dropped: u64,
    /// Results for steps that already had a result, or that were never in
    /// flight, discarded.
    pub duplicate_results_dropped: u64,
    /// Messages refused by the decoder (bad frames, version, JSON, size...).
    pub malformed_messages: u64,
    /// Results discarded because the connection they came on does not
    /// hold that step attempt (another does, it is queued, or the
    /// connection never said hello).
    pub unheld_results_dropped: u64,
    /// Results of steps delivered by another (earlier) orchestrator,
    /// discarded; their slots were freed.
    pub foreign_results_dropped: u64,
    /// Results refused one by one (output too deep to parse, lone
    /// surrogate, a status a worker may not report...); a step so answered
    /// ends `InvalidResult`.
    pub invalid_results: u64,
    /// Hellos refused (worker id in use, registry full, invalid).
    pub hellos_refused: u64,
    /// Workers registered now.
    pub workers_connected: u64,
    /// Workers declared dead by heartbeat expiry.
    pub workers_lost: u64,
    /// Steps dispatched by an earlier run of this orchestrator (see
    /// [`ZmqPubSubExecutor::resume`](crate::ZmqPubSubExecutor::resume))
    /// that a worker reclaimed.
    pub reclaimed: u64,
    /// Connections refused because their CURVE public key is not in
    /// `curve_authorized_keys_dir`.
    pub keys_refused: u64,
    /// Connections whose handshake failed: refused keys, plaintext against
    /// CURVE or the reverse, a wrong server key.
    pub handshakes_failed: u64,
}

/// Most distinct `handler` label values; later handlers count under
/// [`OTHER`]. Handler names come from workflow files, so this is a guard,
/// not a limit anyone should meet. The workflow engine's
/// `steps_retried` keeps the same bound.
pub const MAX_HANDLER_LABELS: usize = 1000;
/// Most distinct `error_type` label values: workers choose them (a
/// handler's exception class), so a buggy worker must not be able to grow
/// the metrics without bound.
const MAX_ERROR_TYPE_LABELS: usize = 64;
/// Longest label value kept; longer ones are cut.
const MAX_LABEL_CHARS: usize = 80;
/// The label value that stands for every value past a limit.
pub const OTHER: &str = "_other";
/// The `handler` label value of a step that ended `NoWorkerForHandler`
/// whose handler has no value of its own yet: a name no worker has served
/// takes none of the [`MAX_HANDLER_LABELS`]. A workflow naming a thousand
/// unserved handlers (or a typo in every deploy) used them all up, and
/// the handlers that ran were counted under [`OTHER`] from then on.
pub const UNSERVED: &str = "_unserved";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandlerLabel {
    handler: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailedLabels {
    handler: String,
    error_type: String,
}

type Histograms = Family<HandlerLabel, BatchedHistogram, fn() -> BatchedHistogram>;

/// Bucket upper bounds of queue waits and handler runs: 100 µs to about
/// 100 s, then the implicit `+Inf`.
static SECONDS_BOUNDS: LazyLock<Vec<f64>> = LazyLock::new(|| {
    exponential_buckets(0.0001, 4.0, 11)
        .chain([f64::INFINITY])
        .collect()
});

fn seconds_histogram() -> BatchedHistogram {
    BatchedHistogram::default()
}

/// A Prometheus histogram (of [`SECONDS_BOUNDS`]) that takes its
/// observations in batches. prometheus-client's `Histogram` locks a mutex
/// per observation, which made recording cost the I/O thread 44 ns per
/// step against 11 ns this way (`recording_cost` below). The I/O thread
/// gathers observations in a [`Tally`] and adds them here once per turn
/// of its loop.
#[derive(Debug, Clone, Default)]
pub(crate) struct BatchedHistogram(Arc<Mutex<Tally>>);

impl BatchedHistogram {
    /// Moves `tally`'s observations here, leaving it empty.
    fn absorb(&self, tally: &mut Tally) {
        if tally.count == 0 {
            return;
        }
        let mut total = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        total.sum += std::mem::take(&mut tally.sum);
        total.count += std::mem::take(&mut tally.count);
        for (total, n) in total.counts.iter_mut().zip(&mut tally.counts) {
            *total += std::mem::take(n);
        }
    }
}

impl TypedMetric for BatchedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for BatchedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let tally = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let buckets: Vec<(f64, u64)> = SECONDS_BOUNDS
            .iter()
            .copied()
            .zip(tally.counts.iter().copied())
            .collect();
        encoder.encode_histogram::<NoLabelSet>(tally.sum, tally.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Observations of one histogram: count per bucket of [`SECONDS_BOUNDS`]
/// (not cumulative), with their sum and number.
#[derive(Debug, Clone)]
pub(crate) struct Tally {
    sum: f64,
    count: u64,
    counts: Vec<u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            sum: 0.0,
            count: 0,
            counts: vec![0; SECONDS_BOUNDS.len()],
        }
    }
}

impl Tally {
    fn observe(&mut self, seconds: f64) {
        // NaN, which no bound holds, counts in `+Inf` as prometheus-client
        // counts it.
        let bucket = SECONDS_BOUNDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(SECONDS_BOUNDS.len() - 1);
        self.counts[bucket] += 1;
        self.sum += seconds;
        self.count += 1;
    }
}

/// The executor's Prometheus metrics: per-handler counters and
/// histograms, and the executor's plain counters. A cheap handle;
/// [`register`](ExecutorMetrics::register) it in the registry an HTTP
/// endpoint encodes.
///
/// ```
/// # fn demo(executor: &tasker_orchestrator::ZmqPubSubExecutor) {
/// let mut registry = prometheus_client::registry::Registry::with_prefix("tasker");
/// executor.prometheus().register(&mut registry);
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ExecutorMetrics {
    families: Families,
    counters: Arc<Metrics>,
}

#[derive(Debug, Clone)]
struct Families {
    dispatched: Family<HandlerLabel, Counter>,
    completed: Family<HandlerLabel, Counter>,
    failed: Family<FailedLabels, Counter>,
    timed_out: Family<HandlerLabel, Counter>,
    worker_lost: Family<HandlerLabel, Counter>,
    queue_seconds: Histograms,
    run_seconds: Histograms,
}

impl ExecutorMetrics {
    pub(crate) fn new(counters: Arc<Metrics>) -> Self {
        Self {
            families: Families {
                dispatched: Family::default(),
                completed: Family::default(),
                failed: Family::default(),
                timed_out: Family::default(),
                worker_lost: Family::default(),
                queue_seconds: Family::new_with_constructor(seconds_histogram),
                run_seconds: Family::new_with_constructor(seconds_histogram),
            },
            counters,
        }
    }

    /// Adds every metric to `registry` (names as in the README's Metrics
    /// table, under the registry's prefix).
    pub fn register(&self, registry: &mut Registry) {
        let f = &self.families;
        registry.register(
            "steps_dispatched",
            "Step deliveries to workers, by handler (a redelivery counts again)",
            f.dispatched.clone(),
        );
        registry.register(
            "steps_completed",
            "Steps that ended completed, by handler",
            f.completed.clone(),
        );
        registry.register(
            "steps_failed",
            "Steps that ended failed, by handler and error type (worker-lost included)",
            f.failed.clone(),
        );
        registry.register(
            "steps_timed_out",
            "Steps that ended timed out, by handler",
            f.timed_out.clone(),
        );
        registry.register(
            "steps_worker_lost",
            "Steps failed because their worker died or left, by handler",
            f.worker_lost.clone(),
        );
        registry.register(
            "step_queue_seconds",
            "From submit to the first delivery to a worker, by handler",
            f.queue_seconds.clone(),
        );
        registry.register(
            "step_run_seconds",
            "Handler run time as the worker reports it, by handler",
            f.run_seconds.clone(),
        );
        registry.register_collector(Box::new(PlainCounters(Arc::clone(&self.counters))));
    }
}

/// What one handler's steps record, looked up once per handler. The
/// per-step figures gather here and reach Prometheus at [`Recorder::flush`].
struct HandlerMetrics {
    name: String,
    label: String,
    dispatched: Counter,
    completed: Counter,
    timed_out: Counter,
    worker_lost: Counter,
    queue_seconds: BatchedHistogram,
    run_seconds: BatchedHistogram,
    dispatched_since: u64,
    completed_since: u64,
    queued_since: Tally,
    ran_since: Tally,
    /// Listed in [`Recorder::touched`].
    touched: bool,
}

/// The I/O thread's side of [`ExecutorMetrics`]: each handler's metrics
/// at hand without a family lookup (a lock and a label clone) per step.
pub(crate) struct Recorder {
    families: Families,
    handlers: Vec<HandlerMetrics>,
    by_name: foldhash::HashMap<String, usize>,
    /// The handler used last: deliveries and result batches mostly hold
    /// steps of one handler, so most steps need no hash lookup at all.
    last: usize,
    error_types: foldhash::HashSet<String>,
    /// Handlers with figures not flushed yet.
    touched: Vec<usize>,
}

impl Recorder {
    pub fn new(metrics: &ExecutorMetrics) -> Self {
        Self {
            families: metrics.families.clone(),
            handlers: Vec::new(),
            by_name: foldhash::HashMap::default(),
            last: 0,
            error_types: foldhash::HashSet::default(),
            touched: Vec::new(),
        }
    }

    /// Adds what was recorded since the last flush to the Prometheus
    /// metrics: once per turn of the I/O loop, before its results are
    /// handed over, so a caller holding a result finds it counted.
    pub fn flush(&mut self) {
        for i in self.touched.drain(..) {
            let m = &mut self.handlers[i];
            m.touched = false;
            m.dispatched.inc_by(std::mem::take(&mut m.dispatched_since));
            m.completed.inc_by(std::mem::take(&mut m.completed_since));
            m.queue_seconds.absorb(&mut m.queued_since);
            m.run_seconds.absorb(&mut m.ran_since);
        }
    }

    /// `handler`'s metrics, listed for the next flush.
    fn touch(&mut self, handler: &str) -> &mut HandlerMetrics {
        self.handler(handler);
        self.touch_index(self.last)
    }

    fn touch_index(&mut self, i: usize) -> &mut HandlerMetrics {
        self.last = i;
        let m = &mut self.handlers[i];
        if !m.touched {
            m.touched = true;
            self.touched.push(i);
        }
        m
    }

    fn handler(&mut self, handler: &str) -> &HandlerMetrics {
        let last = self.handlers.get(self.last);
        if !last.is_some_and(|m| m.name == handler) {
            self.last = match self.by_name.get(handler) {
                Some(&i) => i,
                // Past the limit, every new name shares the one `_other`
                // entry and is not remembered.
                None if self.by_name.len() >= MAX_HANDLER_LABELS => self.add(OTHER, false),
                None => self.add(handler, true),
            };
        }
        &self.handlers[self.last]
    }

    /// The index of `handler`'s metrics, created if new; `remember` maps
    /// the name to it.
    fn add(&mut self, handler: &str, remember: bool) -> usize {
        if let Some(i) = self
            .handlers
            .iter()
            .position(|m| m.name == handler && !remember)
        {
            return i;
        }
        let label = HandlerLabel {
            handler: cut(handler),
        };
        let f = &self.families;
        self.handlers.push(HandlerMetrics {
            dispatched: f.dispatched.get_or_create_owned(&label),
            completed: f.completed.get_or_create_owned(&label),
            timed_out: f.timed_out.get_or_create_owned(&label),
            worker_lost: f.worker_lost.get_or_create_owned(&label),
            queue_seconds: f.queue_seconds.get_or_create_owned(&label),
            run_seconds: f.run_seconds.get_or_create_owned(&label),
            name: handler.to_string(),
            label: label.handler,
            dispatched_since: 0,
            completed_since: 0,
            queued_since: Tally::default(),
            ran_since: Tally::default(),
            touched: false,
        });
        let i = self.handlers.len() - 1;
        if remember {
            self.by_name.insert(handler.to_string(), i);
        }
        i
    }

    /// A step of `handler` was delivered for the first time after waiting
    /// `queued` in the orchestrator (`None` for a redelivery).
    pub fn dispatched(&mut self, handler: &str, queued: Option<Duration>) {
        let m = self.touch(handler);
        m.dispatched_since += 1;
        if let Some(queued) = queued {
            m.queued_since.observe(queued.as_secs_f64());
        }
    }

    /// A step of `handler` completed; its handler ran `run_ms`.
    pub fn completed(&mut self, handler: &str, run_ms: u64) {
        let m = self.touch(handler);
        m.completed_since += 1;
        m.ran_since.observe(run_ms as f64 / 1000.0);
    }

    /// A step of `handler` failed with `error_type`; a worker's failure
    /// carries its handler's run time.
    pub fn failed(&mut self, handler: &str, error_type: &str, run_ms: Option<u64>) {
        let unserved =
            error_type == error_types::NO_WORKER_FOR_HANDLER && !self.by_name.contains_key(handler);
        let lost = error_type == error_types::WORKER_LOST;
        // The system's own kinds always keep their label, outside the
        // bound: a worker that reported 64 kinds of its own first made
        // every later `WorkerLost` and `TimedOut` count as `_other`.
        let system = error_types::ALL.iter().any(|(_, kind)| *kind == error_type);
        let known = system || self.error_types.contains(error_type);
        let error_type = if known || self.error_types.len() < MAX_ERROR_TYPE_LABELS {
            if !known {
                self.error_types.insert(error_type.to_string());
            }
            cut(error_type)
        } else {
            OTHER.to_string()
        };
        let m = if unserved {
            let i = self.add(UNSERVED, false);
            self.touch_index(i)
        } else {
            self.touch(handler)
        };
        if lost {
            m.worker_lost.inc();
        }
        if let Some(run_ms) = run_ms {
            m.ran_since.observe(run_ms as f64 / 1000.0);
        }
        let labels = FailedLabels {
            handler: m.label.clone(),
            error_type,
        };
        self.families.failed.get_or_create(&labels).inc();
    }

    /// A step of `handler` timed out.
    pub fn timed_out(&mut self, handler: &str) {
        self.handler(handler).timed_out.inc();
    }
}

/// Chooses `handler` label values for metrics kept outside the executor
/// (the workflow engine's `steps_retried`) by the executor's rules: at
/// most [`MAX_HANDLER_LABELS`] names, later ones under [`OTHER`], a
/// handler no worker served under [`UNSERVED`], each cut to 80 characters;
/// so that the families can be joined by handler.
///
/// ```
/// let labels = tasker_orchestrator::HandlerLabels::default();
/// assert_eq!(labels.label("resize", "TimedOut"), "resize");
/// assert_eq!(labels.label("typo", "NoWorkerForHandler"), "_unserved");
/// ```
#[derive(Debug, Default)]
pub struct HandlerLabels {
    names: Mutex<std::collections::HashSet<String>>,
}

impl HandlerLabels {
    /// The label value for a step of `handler` that ended with `error_type`.
    pub fn label(&self, handler: &str, error_type: &str) -> String {
        let mut names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        if names.contains(handler) {
            cut(handler)
        } else if error_type == error_types::NO_WORKER_FOR_HANDLER {
            UNSERVED.to_string()
        } else if names.len() < MAX_HANDLER_LABELS {
            names.insert(handler.to_string());
            cut(handler)
        } else {
            OTHER.to_string()
        }
    }
}

fn cut(value: &str) -> String {
    match value.char_indices().nth(MAX_LABEL_CHARS) {
        Some((end, _)) => value[..end].to_string(),
        None => value.to_string(),
    }
}

/// The plain counters, read at each scrape: they are kept anyway, so
/// Prometheus costs the hot path nothing for them.
#[derive(Debug)]
struct PlainCounters(Arc<Metrics>);

impl Collector for PlainCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = self.0.snapshot();
        let counters: [(&str, &str, u64); 9] = [
            ("steps_submitted", "Steps accepted by submit", m.submitted),
            (
                "steps_cancelled",
                "Step attempts the orchestrator ended cancelled (withdrawn from its queue, or abandoned at shutdown)",
                m.cancelled,
            ),
            (
                "steps_redelivered",
                "Steps delivered again after a worker gave them back unstarted or could not be reached",
                m.redelivered,
            ),
            (
                "workers_lost",
                "Workers declared dead by heartbeat expiry",
                m.workers_lost,
            ),
            ("hellos_refused", "Hellos refused", m.hellos_refused),
            (
                "steps_reclaimed",
                "Steps of an earlier run that a worker reclaimed",
                m.reclaimed,
            ),
            (
                "malformed_messages",
                "Messages the decoder refused",
                m.malformed_messages,
            ),
            (
                "curve_keys_refused",
                "Connections refused for a CURVE key not authorized",
                m.keys_refused,
            ),
            (
                "handshakes_failed",
                "Connections whose ZeroMQ handshake failed",
                m.handshakes_failed,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }

        let dropped = [
            ("late", m.late_results_dropped),
            ("duplicate", m.duplicate_results_dropped),
            ("unheld", m.unheld_results_dropped),
            ("foreign", m.foreign_results_dropped),
            ("invalid", m.invalid_results),
        ];
        let mut family = encoder.encode_descriptor(
            "results_dropped",
            "Results discarded, by reason (late, duplicate, unheld, foreign, invalid)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (reason, value) in dropped {
            let labels = [("reason", reason)];
            ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
        }

        let mut family = encoder.encode_descriptor(
            "protocol_errors",
            "Protocol errors the orchestrator answered, by code",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (code, count) in ProtocolErrorCode::ALL.iter().zip(&self.0.protocol_errors) {
            let labels = [("code", code.as_str())];
            ConstCounter::new(count.load(Ordering::Relaxed))
                .encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(metrics: &ExecutorMetrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn handler_labels_past_the_limit_share_one_value_and_are_not_remembered() {
        let metrics = ExecutorMetrics::new(Arc::default());
        let mut recorder = Recorder::new(&metrics);
        for i in 0..MAX_HANDLER_LABELS + 50 {
            recorder.dispatched(&format!("handler-{i}"), None);
        }
        recorder.dispatched("handler-0", None);
        recorder.flush();
        assert_eq!(recorder.by_name.len(), MAX_HANDLER_LABELS);
        assert_eq!(recorder.handlers.len(), MAX_HANDLER_LABELS + 1);
        let text = exposition(&metrics);
        assert!(
            text.contains("steps_dispatched_total{handler=\"_other\"} 50"),
            "{text}"
        );
        assert!(text.contains("steps_dispatched_total{handler=\"handler-0\"} 2"));
    }

    #[test]
    fn handlers_no_worker_served_share_one_value_and_leave_the_others_theirs() {
        let metrics = ExecutorMetrics::new(Arc::default());
        let mut recorder = Recorder::new(&metrics);
        recorder.dispatched("served", None);
        for i in 0..MAX_HANDLER_LABELS + 100 {
            let handler = format!("typo-{i}");
            recorder.failed(&handler, error_types::NO_WORKER_FOR_HANDLER, None);
        }
        // Served once, then its workers left: it keeps its own value.
        recorder.failed("served", error_types::NO_WORKER_FOR_HANDLER, None);
        recorder.dispatched("later", None);
        recorder.flush();
        let text = exposition(&metrics);
        assert!(
            text.contains(
                "steps_failed_total{handler=\"_unserved\",error_type=\"NoWorkerForHandler\"} 1100"
            ),
            "{text}"
        );
        assert!(text.contains(
            "steps_failed_total{handler=\"served\",error_type=\"NoWorkerForHandler\"} 1"
        ));
        assert!(text.contains("steps_dispatched_total{handler=\"later\"} 1"));
    }

    #[test]
    fn the_systems_error_types_keep_their_labels_whatever_workers_report_first() {
        let metrics = ExecutorMetrics::new(Arc::default());
        let mut recorder = Recorder::new(&metrics);
        recorder.dispatched("h", None);
        for i in 0..MAX_ERROR_TYPE_LABELS + 10 {
            recorder.failed("h", &format!("Custom{i}"), Some(1));
        }
        recorder.failed("h", error_types::WORKER_LOST, None);
        recorder.failed("h", error_types::TIMED_OUT, None);
        recorder.flush();
        let text = exposition(&metrics);
        assert!(
            text.contains("steps_failed_total{handler=\"h\",error_type=\"_other\"} 10"),
            "{text}"
        );
        for kind in [error_types::WORKER_LOST, error_types::TIMED_OUT] {
            assert!(
                text.contains(&format!(
                    "steps_failed_total{{handler=\"h\",error_type=\"{kind}\"}} 1"
                )),
                "{kind}: {text}"
            );
        }
        assert!(
            text.contains("steps_worker_lost_total{handler=\"h\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn figures_reach_prometheus_at_the_flush_and_buckets_read_cumulative() {
        let metrics = ExecutorMetrics::new(Arc::default());
        let mut recorder = Recorder::new(&metrics);
        recorder.dispatched("h", Some(Duration::from_micros(50)));
        recorder.dispatched("h", Some(Duration::from_millis(1)));
        recorder.dispatched("h", None);
        recorder.completed("h", 0);
        recorder.completed("h", 2_000);
        recorder.failed("h", "Boom", Some(3));
        let before = exposition(&metrics);
        assert!(
            before.contains("steps_dispatched_total{handler=\"h\"} 0"),
            "counted before the flush:\n{before}"
        );
        recorder.flush();
        recorder.completed("h", 1);
        let text = exposition(&metrics);
        for line in [
            "steps_dispatched_total{handler=\"h\"} 3",
            "steps_completed_total{handler=\"h\"} 2",
            "step_queue_seconds_count{handler=\"h\"} 2",
            "step_queue_seconds_bucket{handler=\"h\",le=\"0.0001\"} 1",
            "step_queue_seconds_bucket{handler=\"h\",le=\"0.0016\"} 2",
            "step_queue_seconds_bucket{handler=\"h\",le=\"+Inf\"} 2",
            "step_run_seconds_count{handler=\"h\"} 3",
            "step_run_seconds_sum{handler=\"h\"} 2.003",
            "step_run_seconds_bucket{handler=\"h\",le=\"0.0001\"} 1",
            "step_run_seconds_bucket{handler=\"h\",le=\"0.0064\"} 2",
            "step_run_seconds_bucket{handler=\"h\",le=\"6.5536\"} 3",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
        recorder.flush();
        let text = exposition(&metrics);
        assert!(
            text.contains("steps_completed_total{handler=\"h\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("step_run_seconds_count{handler=\"h\"} 4"),
            "{text}"
        );
    }

    /// A benchmark, not a check: what recording costs the I/O thread per
    /// step (a dispatch and a completion, flushed every 100 steps as a
    /// turn at batch 100 would). `cargo test --release -p
    /// tasker-orchestrator --lib recording_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a benchmark: prints a figure"]
    fn recording_cost() {
        let metrics = ExecutorMetrics::new(Arc::default());
        let mut recorder = Recorder::new(&metrics);
        let steps = 5_000_000u32;
        let started = std::time::Instant::now();
        for i in 0..steps {
            recorder.dispatched("noop", Some(Duration::from_micros(300)));
            recorder.completed("noop", 0);
            if i % 100 == 99 {
                recorder.flush();
            }
        }
        let ns = started.elapsed().as_nanos() as f64 / f64::from(steps);
        eprintln!("recording: {ns:.1} ns per step");
        recorder.flush();
        let text = exposition(&metrics);
        assert!(text.contains(&format!(
            "steps_completed_total{{handler=\"noop\"}} {steps}"
        )));
    }

    #[test]
    fn long_label_values_are_cut_on_a_character_boundary() {
        let metrics = ExecutorMetrics::new(Arc::default());
        let mut recorder = Recorder::new(&metrics);
        let long = "é".repeat(200);
        recorder.failed("h", &long, Some(1));
        recorder.flush();
        let text = exposition(&metrics);
        let cut = "é".repeat(MAX_LABEL_CHARS);
        assert!(text.contains(&format!("error_type=\"{cut}\"")), "{text}");
        assert!(!text.contains(&"é".repeat(MAX_LABEL_CHARS + 1)));
    }
}
