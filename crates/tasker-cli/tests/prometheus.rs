//! `GET /metrics` scraped by a real Prometheus (Debian's `prometheus`
//! package): a real `tasker serve`, real `tasker worker` processes, steps
//! that complete, fail and are retried while Prometheus scrapes every
//! second; then Prometheus's query API must hold counters equal to what
//! the task API says ran. With API tokens, `/metrics` needs one too, and
//! Prometheus scrapes with it.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{free_endpoint, worker_command};
use serde_json::{json, Value};
use tasker_pgtest::free_port;

const TASKER: &str = env!("CARGO_BIN_EXE_tasker");

/// Debian's `prometheus` package; `scripts/setup.sh` installs it.
const PROMETHEUS: &str = "/usr/bin/prometheus";

/// Steps of four handlers; `flaky` fails its first attempt (retryably),
/// so it is retried once; `sleep` keeps the workers busy for a while so
/// the steps run across several scrapes.
const MIXED_WORKFLOW: &str = r#"
name: mixed
description: echo, noop, a flaky step retried once, a short sleep
defaults:
  timeout_ms: 10000
steps:
  - name: fetch
    handler: echo
  - name: check
    handler: noop
    depends_on: [fetch]
  - name: charge
    handler: flaky
    depends_on: [fetch]
    handler_config: { succeed_on: 2 }
    retry: { max_attempts: 3, initial_ms: 50, max_ms: 100 }
  - name: pack
    handler: sleep
    depends_on: [check]
    handler_config: { ms: 150 }
  - name: ship
    handler: echo
    depends_on: [pack, charge]
"#;

/// A permanent failure: the task fails, its dependent step is blocked
/// (never dispatched).
const DECLINED_WORKFLOW: &str = r#"
name: declined
description: a card declined for good
steps:
  - name: charge
    handler: fail_permanent
    retry: { max_attempts: 3, initial_ms: 50 }
  - name: ship
    handler: echo
    depends_on: [charge]
"#;

/// The handlers the workers serve.
const HANDLERS: &str = "echo,noop,sleep,flaky,fail_permanent";

fn prometheus_binary() -> &'static str {
    assert!(
        Path::new(PROMETHEUS).exists(),
        "{PROMETHEUS} is missing: this test runs Debian's Prometheus server; \
         install it with scripts/setup.sh (or `apt-get install prometheus`)"
    );
    PROMETHEUS
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A running `tasker serve`; killed when dropped.
struct Serve {
    child: Child,
    /// `http://HOST:PORT`
    api: String,
    log: PathBuf,
}

impl Serve {
    fn start(dir: &Path, endpoint: &str, tokens_file: Option<&Path>) -> Serve {
        let log = dir.join("serve.log");
        let store = format!("sqlite:{}", dir.join("tasks.db").display());
        let mut command = Command::new(TASKER);
        command
            .arg("serve")
            .args(["--store", &store])
            .args(["--api-listen", "127.0.0.1:0"])
            .args(["--workflows-dir", dir.join("workflows").to_str().unwrap()])
            .args(["--endpoint", endpoint])
            .env("TASKER_ENV", "test")
            .env("TASKER_HEARTBEAT_INTERVAL_MS", "200")
            .env("TASKER_LIVENESS", "3")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(tokens) = tokens_file {
            command.env("TASKER_API_TOKENS_FILE", tokens);
        }
        let mut child = command.spawn().expect("tasker serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let api = line
            .split_whitespace()
            .skip_while(|w| *w != "api")
            .nth(1)
            .unwrap_or_else(|| {
                panic!(
                    "no address line ({line:?}); log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_string();
        Serve { child, api, log }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    /// `HOST:PORT`, as a Prometheus target.
    fn target(&self) -> &str {
        self.api.trim_start_matches("http://")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tasker worker` processes; killed when dropped.
struct Workers(Vec<Child>);

impl Workers {
    fn start(endpoint: &str, n: usize, capacity: u32) -> Workers {
        Workers(
            (0..n)
                .map(|i| {
                    worker_command(endpoint, &format!("w{i}"), HANDLERS)
                        .args(["--capacity", &capacity.to_string()])
                        .args(["--threads", &capacity.to_string()])
                        .spawn()
                        .expect("tasker worker starts")
                })
                .collect(),
        )
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One scrape job of the Prometheus configuration.
struct Job<'a> {
    name: &'a str,
    target: &'a str,
    /// A file holding the bearer token Prometheus sends.
    credentials_file: Option<&'a Path>,
}

/// A running Prometheus server with its own configuration and storage
/// under a test's folder; killed when dropped, panic or not.
struct Prometheus {
    child: Child,
    /// `http://127.0.0.1:PORT`
    url: String,
    log: PathBuf,
    http: reqwest::blocking::Client,
}

impl Prometheus {
    /// Starts Prometheus scraping `jobs` every second, and waits until it
    /// is ready.
    fn start(dir: &Path, jobs: &[Job]) -> Prometheus {
        let binary = prometheus_binary();
        let home = dir.join("prometheus");
        std::fs::create_dir_all(&home).unwrap();
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n",
        );
        for job in jobs {
            config.push_str(&format!(
                "  - job_name: {}\n    metrics_path: /metrics\n    static_configs:\n      \
                 - targets: [\"{}\"]\n",
                job.name, job.target
            ));
            if let Some(file) = job.credentials_file {
                config.push_str(&format!(
                    "    authorization:\n      type: Bearer\n      credentials_file: {}\n",
                    file.display()
                ));
            }
        }
        let config_file = home.join("prometheus.yml");
        std::fs::write(&config_file, &config).unwrap();
        let log = home.join("prometheus.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let listen = format!("127.0.0.1:{}", free_port().unwrap());
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                home.join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("prometheus starts");
        let mut prometheus = Prometheus {
            child,
            url: format!("http://{listen}"),
            log,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!(
                    "prometheus exited ({status}) before it was ready; config:\n{config}\nlog:\n{}",
                    prometheus.log()
                );
            }
            let ready = prometheus
                .http
                .get(format!("{}/-/ready", prometheus.url))
                .send()
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                return prometheus;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready after 20 s; log:\n{}",
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 30)
    }

    /// `GET /api/v1/<path>?params`: its `data`, after checking `status`.
    fn api(&self, path: &str, params: &[(&str, String)]) -> Value {
        let url = reqwest::Url::parse_with_params(&format!("{}/api/v1/{path}", self.url), params)
            .unwrap();
        let answer: Value = self
            .http
            .get(url.clone())
            .send()
            .and_then(|r| r.json())
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(answer["status"], "success", "{url}: {answer:#}");
        answer["data"].clone()
    }

    /// An instant query: its series, each `{metric, value: [t, "v"]}`.
    fn query(&self, promql: &str) -> Vec<Value> {
        let data = self.api("query", &[("query", promql.to_string())]);
        assert_eq!(data["resultType"], "vector", "{promql}: {data:#}");
        data["result"].as_array().unwrap().clone()
    }

    /// The value of a query that gives one series, `None` when it gives
    /// none.
    fn value(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql);
        assert!(
            result.len() <= 1,
            "{promql} gives several series: {result:#?}"
        );
        result
            .first()
            .map(|series| series["value"][1].as_str().unwrap().parse::<f64>().unwrap())
    }

    /// Waits until `promql` gives a value `until` accepts; returns it.
    fn wait_for(&self, promql: &str, timeout: Duration, until: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.value(promql);
            if let Some(v) = value.filter(|v| until(*v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{promql} still {value:?} after {timeout:?}; targets: {:#}\nprometheus log:\n{}",
                self.api("targets", &[]),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The target of `job`, from `/api/v1/targets`.
    fn target(&self, job: &str) -> Value {
        let targets = self.api("targets", &[]);
        let active = targets["activeTargets"].as_array().unwrap();
        active
            .iter()
            .find(|t| t["labels"]["job"] == job)
            .unwrap_or_else(|| panic!("no target of job {job}: {targets:#}"))
            .clone()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn workflows_dir(dir: &Path) {
    std::fs::create_dir_all(dir.join("workflows")).unwrap();
    std::fs::write(dir.join("workflows/mixed.yaml"), MIXED_WORKFLOW).unwrap();
    std::fs::write(dir.join("workflows/declined.yaml"), DECLINED_WORKFLOW).unwrap();
}

fn client(token: Option<&str>) -> reqwest::blocking::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
    }
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(40))
        .default_headers(headers)
        .build()
        .unwrap()
}

fn submit(http: &reqwest::blocking::Client, serve: &Serve, workflow: &str, n: usize) -> i64 {
    let response = http
        .post(serve.url("/v1/tasks"))
        .json(&json!({ "workflow": workflow, "context": { "n": n } }))
        .send()
        .unwrap();
    assert_eq!(response.status(), 201, "{:?}", response.text());
    response.json::<Value>().unwrap()["task_id"]
        .as_i64()
        .unwrap()
}

/// Each task once it has ended (`GET /v1/tasks/ID?wait=`).
fn wait_ended(
    http: &reqwest::blocking::Client,
    serve: &Serve,
    ids: &[i64],
    timeout: Duration,
) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    ids.iter()
        .map(|id| loop {
            let task: Value = http
                .get(serve.url(&format!("/v1/tasks/{id}?wait=5")))
                .send()
                .and_then(|r| r.json())
                .unwrap();
            if task["status"] != "running" {
                break task;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} still running after {timeout:?}: {task:#}\nserver log:\n{}",
                tail(&serve.log(), 40)
            );
        })
        .collect()
}

/// What the task API says ran: the truth Prometheus's figures must match.
#[derive(Debug, Default)]
struct Ran {
    tasks_by_status: BTreeMap<String, u64>,
    completed_by_handler: BTreeMap<String, u64>,
    /// Steps that ended failed, by (handler, error_type).
    failed: BTreeMap<(String, String), u64>,
    /// Attempts (each one a result from a worker), by handler.
    attempts_by_handler: BTreeMap<String, u64>,
    /// Attempts after a step's first, by handler.
    retries_by_handler: BTreeMap<String, u64>,
}

impl Ran {
    fn of(tasks: &[Value]) -> Ran {
        let mut ran = Ran::default();
        for task in tasks {
            *ran.tasks_by_status
                .entry(task["status"].as_str().unwrap().to_string())
                .or_default() += 1;
            for step in task["steps"].as_array().unwrap() {
                let handler = step["handler"].as_str().unwrap().to_string();
                let attempts = step["attempts"].as_u64().unwrap();
                match step["state"].as_str().unwrap() {
                    "completed" => {
                        *ran.completed_by_handler.entry(handler.clone()).or_default() += 1
                    }
                    "failed" => {
                        let error_type = step["error"]["error_type"].as_str().unwrap().to_string();
                        *ran.failed.entry((handler.clone(), error_type)).or_default() += 1;
                    }
                    "blocked" => assert_eq!(attempts, 0, "a blocked step never ran: {task:#}"),
                    other => panic!("step in state {other} in an ended task: {task:#}"),
                }
                if attempts > 0 {
                    *ran.attempts_by_handler.entry(handler.clone()).or_default() += attempts;
                    *ran.retries_by_handler.entry(handler).or_default() += attempts - 1;
                }
            }
        }
        ran
    }

    fn completed(&self) -> u64 {
        self.completed_by_handler.values().sum()
    }

    fn attempts(&self) -> u64 {
        self.attempts_by_handler.values().sum()
    }

    fn retries(&self) -> u64 {
        self.retries_by_handler.values().sum()
    }

    fn tasks(&self, status: &str) -> u64 {
        self.tasks_by_status.get(status).copied().unwrap_or(0)
    }
}

/// A PromQL expression and the value it must have.
enum Expect {
    Eq(u64),
    AtLeast(u64),
}

/// The checks of what Prometheus stored against what ran, with `workers`
/// connected, of `capacity` steps between them.
fn checks(ran: &Ran, job: &str, workers: u64, capacity: u64) -> Vec<(String, Expect)> {
    let eq = |promql: &str, n: u64| (promql.to_string(), Expect::Eq(n));
    let at_least = |promql: &str, n: u64| (promql.to_string(), Expect::AtLeast(n));
    let attempts = ran.attempts();
    let mut checks = vec![
        (format!("up{{job=\"{job}\"}}"), Expect::Eq(1)),
        eq("sum(tasker_steps_completed_total)", ran.completed()),
        // Each result from a worker is a completion or a failure: the
        // failed attempts of retried steps count as failures too.
        eq("sum(tasker_steps_failed_total)", attempts - ran.completed()),
        eq("sum(tasker_steps_retried_total)", ran.retries()),
        // A redelivery would dispatch (and queue) an attempt again.
        at_least("sum(tasker_steps_dispatched_total)", attempts),
        at_least("sum(tasker_steps_submitted_total)", attempts),
        at_least("sum(tasker_step_queue_seconds_count)", attempts),
        eq("sum(tasker_step_run_seconds_count)", attempts),
        eq("sum(tasker_step_run_seconds_bucket{le=\"+Inf\"})", attempts),
        eq(
            "sum(tasker_tasks{status=\"complete\"})",
            ran.tasks("complete"),
        ),
        eq("sum(tasker_tasks{status=\"failed\"})", ran.tasks("failed")),
        eq("sum(tasker_tasks{status=\"running\"}) or vector(0)", 0),
        eq("sum(tasker_tasks{status=\"cancelled\"}) or vector(0)", 0),
        // Nothing is left queued or out, and every slot is free again.
        eq("sum(tasker_steps_in_flight)", 0),
        eq("sum(tasker_steps_queued)", 0),
        eq("sum(tasker_worker_credit)", capacity),
        eq("sum(tasker_workers_connected)", workers),
        eq("sum(tasker_workers_connected{language=\"rust\"})", workers),
        // Nothing went wrong on the way.
        eq("sum(tasker_steps_timed_out_total)", 0),
        eq("sum(tasker_steps_worker_lost_total)", 0),
        eq("sum(tasker_steps_cancelled_total)", 0),
        eq("sum(tasker_results_dropped_total)", 0),
        eq("sum(tasker_protocol_errors_total)", 0),
    ];
    for (handler, n) in &ran.completed_by_handler {
        checks.push((
            format!("sum(tasker_steps_completed_total{{handler=\"{handler}\"}})"),
            Expect::Eq(*n),
        ));
    }
    let mut failed_by_type: BTreeMap<&str, u64> = BTreeMap::new();
    for ((handler, error_type), n) in &ran.failed {
        *failed_by_type.entry(error_type).or_default() += n;
        checks.push((
            format!(
                "sum(tasker_steps_failed_total{{handler=\"{handler}\",error_type=\"{error_type}\"}})"
            ),
            Expect::Eq(*n),
        ));
    }
    for (error_type, n) in failed_by_type {
        checks.push((
            format!("sum(tasker_steps_failed_total{{error_type=\"{error_type}\"}})"),
            Expect::Eq(n),
        ));
    }
    for (handler, n) in &ran.attempts_by_handler {
        checks.push((
            format!("sum(tasker_step_run_seconds_count{{handler=\"{handler}\"}})"),
            Expect::Eq(*n),
        ));
        checks.push((
            format!("sum(tasker_steps_dispatched_total{{handler=\"{handler}\"}})"),
            Expect::AtLeast(*n),
        ));
    }
    for (handler, n) in &ran.retries_by_handler {
        if *n > 0 {
            checks.push((
                format!("sum(tasker_steps_retried_total{{handler=\"{handler}\"}})"),
                Expect::Eq(*n),
            ));
        }
    }
    checks
}

/// The checks that fail now, each with what Prometheus answered.
fn failing(prometheus: &Prometheus, checks: &[(String, Expect)]) -> Vec<String> {
    checks
        .iter()
        .filter_map(|(promql, expect)| {
            let value = prometheus.value(promql);
            let ok = match (expect, value) {
                (Expect::Eq(n), Some(v)) => v == *n as f64,
                (Expect::AtLeast(n), Some(v)) => v >= *n as f64,
                (_, None) => false,
            };
            let wanted = match expect {
                Expect::Eq(n) => format!("{n}"),
                Expect::AtLeast(n) => format!(">= {n}"),
            };
            (!ok).then(|| format!("{promql}: Prometheus has {value:?}, expected {wanted}"))
        })
        .collect()
}

#[test]
fn p1_prometheus_scrapes_serve_while_steps_run_and_stores_the_counts_of_the_steps_run() {
    prometheus_binary();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    workflows_dir(dir.path());
    let endpoint = free_endpoint();
    let serve = Serve::start(dir.path(), &endpoint, None);
    let _workers = Workers::start(&endpoint, 2, 2);
    let http = client(None);
    let prometheus = Prometheus::start(
        dir.path(),
        &[Job {
            name: "tasker",
            target: serve.target(),
            credentials_file: None,
        }],
    );
    // Prometheus scrapes before the first step runs.
    prometheus.wait_for("up{job=\"tasker\"}", Duration::from_secs(25), |v| v == 1.0);
    prometheus.wait_for(
        "sum(tasker_workers_connected)",
        Duration::from_secs(10),
        |v| v == 2.0,
    );
    let run_start = unix_now();

    // 40 tasks, a few a second, so the steps run across several scrapes:
    // every fourth one fails for good.
    let ids: Vec<i64> = (0..40)
        .map(|i| {
            let workflow = if i % 4 == 3 { "declined" } else { "mixed" };
            let id = submit(&http, &serve, workflow, i);
            std::thread::sleep(Duration::from_millis(70));
            id
        })
        .collect();
    let tasks = wait_ended(&http, &serve, &ids, Duration::from_secs(30));
    let run_end = unix_now();
    let ran = Ran::of(&tasks);
    assert_eq!(ran.tasks("complete"), 30, "{ran:#?}");
    assert_eq!(ran.tasks("failed"), 10, "{ran:#?}");
    assert!(ran.retries() > 0, "the flaky steps were retried: {ran:#?}");

    // A scrape from after the last step is stored...
    prometheus.wait_for(
        "timestamp(up{job=\"tasker\"})",
        Duration::from_secs(20),
        |t| t > run_end,
    );
    // ... and it holds what ran (a few more scrapes are allowed for
    // counters the server updates just after the task API shows the end).
    let checks = checks(&ran, "tasker", 2, 4);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let failing = failing(&prometheus, &checks);
        if failing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus's figures differ from the steps run ({ran:#?}):\n{}\n/metrics now:\n{}",
            failing.join("\n"),
            http.get(serve.url("/metrics"))
                .send()
                .and_then(|r| r.text())
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // The steps ran while Prometheus scraped: it stored counts from the
    // middle of the run, above 0 and below the end's.
    let range = prometheus.api(
        "query_range",
        &[
            ("query", "sum(tasker_steps_completed_total)".to_string()),
            ("start", format!("{run_start:.3}")),
            ("end", format!("{:.3}", unix_now())),
            ("step", "0.5".to_string()),
        ],
    );
    let series = range["result"].as_array().unwrap();
    assert_eq!(series.len(), 1, "{range:#}");
    let values: Vec<f64> = series[0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v[1].as_str().unwrap().parse().unwrap())
        .collect();
    let end = ran.completed() as f64;
    assert!(
        values.iter().any(|v| *v > 0.0 && *v < end),
        "no scrape while the steps ran (0 < completed < {end}): {values:?}"
    );

    // The target is healthy.
    let target = prometheus.target("tasker");
    assert_eq!(target["health"], "up", "{target:#}");
    assert_eq!(target["lastError"], "", "{target:#}");
    assert_eq!(target["scrapeUrl"], serve.url("/metrics"), "{target:#}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn p2_with_api_tokens_metrics_needs_a_token_and_prometheus_scrapes_with_one() {
    prometheus_binary();
    let dir = tempfile::tempdir().unwrap();
    workflows_dir(dir.path());
    let token = "prometheus-token-0123456789abcdef";
    assert!(token.len() >= tasker_server::api::MIN_TOKEN_CHARS);
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(&tokens, format!("prometheus: {token}\n")).unwrap();
    let credentials = dir.path().join("prometheus.token");
    std::fs::write(&credentials, token).unwrap();
    let wrong = dir.path().join("wrong.token");
    std::fs::write(&wrong, "not-a-listed-token-0123456789").unwrap();
    let endpoint = free_endpoint();
    let serve = Serve::start(dir.path(), &endpoint, Some(&tokens));
    let _workers = Workers::start(&endpoint, 1, 4);

    // Without a token: a 401 problem, no metrics.
    let anonymous = client(None);
    let refused = anonymous.get(serve.url("/metrics")).send().unwrap();
    assert_eq!(refused.status(), 401);
    let content_type = refused.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("application/problem+json"),
        "{content_type}"
    );
    let problem: Value = refused.json().unwrap();
    assert_eq!(problem["status"], 401, "{problem:#}");
    assert!(!problem.to_string().contains("tasker_steps"), "{problem:#}");
    // With it: the text format.
    let http = client(Some(token));
    let metrics = http.get(serve.url("/metrics")).send().unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().unwrap();
    assert!(text.contains("tasker_steps_submitted_total"), "{text}");

    let prometheus = Prometheus::start(
        dir.path(),
        &[
            Job {
                name: "tasker",
                target: serve.target(),
                credentials_file: Some(&credentials),
            },
            Job {
                name: "tasker_no_token",
                target: serve.target(),
                credentials_file: None,
            },
            Job {
                name: "tasker_wrong_token",
                target: serve.target(),
                credentials_file: Some(&wrong),
            },
        ],
    );
    prometheus.wait_for("up{job=\"tasker\"}", Duration::from_secs(25), |v| v == 1.0);
    prometheus.wait_for(
        "up{job=\"tasker_no_token\"}",
        Duration::from_secs(10),
        |v| v == 0.0,
    );
    prometheus.wait_for(
        "up{job=\"tasker_wrong_token\"}",
        Duration::from_secs(10),
        |v| v == 0.0,
    );
    for job in ["tasker_no_token", "tasker_wrong_token"] {
        let target = prometheus.target(job);
        assert_eq!(target["health"], "down", "{target:#}");
        assert!(
            target["lastError"].as_str().unwrap().contains("401"),
            "{target:#}"
        );
    }
    assert_eq!(prometheus.target("tasker")["health"], "up");

    // A task run with the token shows in what the token's scrapes stored.
    let id = submit(&http, &serve, "mixed", 0);
    let tasks = wait_ended(&http, &serve, &[id], Duration::from_secs(20));
    let ran = Ran::of(&tasks);
    assert_eq!(ran.tasks("complete"), 1, "{ran:#?}");
    let run_end = unix_now();
    prometheus.wait_for(
        "timestamp(up{job=\"tasker\"})",
        Duration::from_secs(20),
        |t| t > run_end,
    );
    let checks = checks(&ran, "tasker", 1, 4);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let failing = failing(&prometheus, &checks);
        if failing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus's figures differ from the steps run ({ran:#?}):\n{}",
            failing.join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Nothing from the refused jobs but their `up` and scrape figures.
    let leaked = prometheus
        .query("count by (__name__) ({job=\"tasker_no_token\", __name__=~\"tasker_.*\"})");
    assert!(leaked.is_empty(), "{leaked:#?}");
}
