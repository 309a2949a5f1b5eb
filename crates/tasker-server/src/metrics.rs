//! `GET /metrics`: the orchestrator's, the engine's and the store's
//! Prometheus metrics, and gauges read at each scrape (tasks by status,
//! queue depth, workers by language).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::Service;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LanguageLabel {
    language: String,
}

/// The registry `/metrics` encodes, and the gauges set before each
/// encoding.
pub(crate) struct ServiceMetrics {
    registry: Registry,
    tasks: Family<StatusLabel, Gauge>,
    workers: Family<LanguageLabel, Gauge>,
    queued: Gauge,
    in_flight: Gauge,
    credit: Gauge,
    store_queued: Gauge,
    held_back: Gauge,
    store_up: Gauge,
    /// Requests answered 401: a client misconfigured, or tokens guessed.
    pub unauthorized: Counter,
    /// One scrape at a time: each sets the gauges, then encodes them.
    /// Held while a scrape reads the gauges: the languages given a label
    /// of their own so far (see [`MAX_LANGUAGES`]).
    scraping: tokio::sync::Mutex<std::collections::BTreeSet<String>>,
}

/// Longest a scrape waits for the store's count of tasks.
const STORE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Most distinct `language` label values over the process's life; workers
/// announce their own.
const MAX_LANGUAGES: usize = 32;
/// The label value for languages past [`MAX_LANGUAGES`].
const OTHER: &str = "_other";

impl ServiceMetrics {
    pub fn new(
        executor: &tasker_orchestrator::ZmqPubSubExecutor,
        engine: &tasker_engine::WorkflowEngine,
        store: &tasker_store::Store,
    ) -> Self {
        let mut registry = Registry::with_prefix("tasker");
        executor.prometheus().register(&mut registry);
        engine.register_metrics(&mut registry);
        store.register_metrics(&mut registry);
        let tasks = Family::<StatusLabel, Gauge>::default();
        let workers = Family::<LanguageLabel, Gauge>::default();
        let [queued, in_flight, credit, store_queued, held_back, store_up] =
            [(); 6].map(|_| Gauge::<i64>::default());
        registry.register(
            "build",
            "This build: its version and the commit it was made from",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", crate::BUILD_COMMIT),
            ]),
        );
        registry.register("tasks", "Tasks in the store, by status", tasks.clone());
        registry.register(
            "workers_connected",
            "Workers registered now, by the language they announced",
            workers.clone(),
        );
        registry.register(
            "steps_queued",
            "Steps submitted and not yet at a worker",
            queued.clone(),
        );
        registry.register("steps_in_flight", "Steps out at workers", in_flight.clone());
        registry.register(
            "tasks_waiting_for_room",
            "Tasks whose next ready step waits in the store until its handler's workers have room",
            held_back.clone(),
        );
        registry.register(
            "worker_credit",
            "Steps the connected workers could take now (free capacity of those not draining)",
            credit.clone(),
        );
        let unauthorized = Counter::default();
        registry.register(
            "api_requests_unauthorized",
            "HTTP requests refused 401 for a missing or wrong bearer token",
            unauthorized.clone(),
        );
        registry.register(
            "store_queued_writes",
            "Writes waiting for the store's writer",
            store_queued.clone(),
        );
        registry.register(
            "store_up",
            "1 when the store answered this scrape's count of tasks (tasker_tasks) in time and takes writes, else 0",
            store_up.clone(),
        );
        ServiceMetrics {
            registry,
            tasks,
            workers,
            queued,
            in_flight,
            credit,
            store_queued,
            held_back,
            store_up,
            unauthorized,
            scraping: tokio::sync::Mutex::new(std::collections::BTreeSet::new()),
        }
    }

    /// Reads the gauges, then encodes everything in the Prometheus text
    /// format (0.0.4).
    ///
    /// The store is asked for one thing, the count of tasks by status, and
    /// for at most [`STORE_WAIT`]: with PostgreSQL down a read waits 10 s
    /// for a connection, as long as Prometheus waits for a scrape by
    /// default, and every metric was lost for the whole outage, the ones
    /// that say what the workers and the queue do included. Without an
    /// answer `tasker_tasks` is left out and `tasker_store_up` is 0; it is
    /// 0 too while the store's writes fail.
    pub async fn render(&self, service: &Service) -> String {
        let mut labelled = self.scraping.lock().await;
        let counted = tokio::time::timeout(STORE_WAIT, service.store().count_tasks_by_status());
        match counted.await {
            Ok(Ok(counts)) => {
                for state in tasker_engine::TaskState::ALL {
                    let n = counts
                        .iter()
                        .find(|(s, _)| *s == state)
                        .map_or(0, |(_, n)| *n);
                    self.tasks
                        .get_or_create(&StatusLabel {
                            status: state.as_str(),
                        })
                        .set(n as i64);
                }
                // A store that reads but refuses writes (a full disk, a
                // read-only database) refuses every create: up it is not,
                // as /readyz says. Cheap while writes go through.
                let writable = matches!(
                    tokio::time::timeout(STORE_WAIT, service.store().writable()).await,
                    Ok(true)
                );
                self.store_up.set(i64::from(writable));
            }
            Ok(Err(_)) | Err(_) => {
                self.tasks.clear();
                self.store_up.set(0);
            }
        }
        let load = service.executor().load().await;
        self.queued.set(load.queued as i64);
        self.in_flight.set(load.in_flight as i64);
        self.credit.set(load.credit() as i64);
        let (_, waiting) = service.executor().admission().counts();
        self.held_back.set(waiting as i64);
        self.store_queued
            .set(service.store().commit_stats().queued as i64);
        let mut by_language: std::collections::BTreeMap<String, i64> = Default::default();
        for worker in &load.workers {
            let language: String = worker
                .language
                .as_deref()
                .unwrap_or("unknown")
                .chars()
                .take(40)
                .collect();
            // The first languages seen keep their label for the process's
            // life: bounded per scrape only, workers announcing a new
            // language each made Prometheus keep a new series each.
            let key = if labelled.contains(&language) || labelled.len() < MAX_LANGUAGES {
                labelled.insert(language.clone());
                language
            } else {
                OTHER.to_string()
            };
            *by_language.entry(key).or_default() += 1;
        }
        // Rebuilt each scrape, so a language whose last worker left drops
        // out instead of staying at 0 forever.
        self.workers.clear();
        for (language, n) in by_language {
            self.workers
                .get_or_create(&LanguageLabel { language })
                .set(n);
        }
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// The Prometheus text format's media type.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
