//! `tasker serve` end to end, on SQLite and on PostgreSQL: real server
//! processes, real `tasker worker` processes, real HTTP. The server is
//! killed with SIGKILL while hundreds of tasks are in flight, restarted,
//! and every task must end with each step completed exactly once.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_endpoint, worker_command};
use serde_json::{json, Value};
use tasker_store::Store;

const TASKER: &str = env!("CARGO_BIN_EXE_tasker");

const SLOW_WORKFLOW: &str = r#"
name: slow
description: three steps in a row, the first two slow
defaults:
  timeout_ms: 20000
  retry: { max_attempts: 5, initial_ms: 100, max_ms: 500 }
steps:
  - name: first
    handler: sleep
    handler_config: { ms: 300 }
  - name: second
    handler: sleep
    handler_config: { ms: 200 }
    depends_on: [first]
  - name: last
    handler: echo
    depends_on: [second]
"#;

/// A running `tasker serve`.
struct Serve {
    child: Child,
    api: String,
    log: PathBuf,
}

impl Serve {
    fn start(dir: &Path, store: &str, endpoint: &str) -> Serve {
        Serve::try_start(dir, store, endpoint)
            .unwrap_or_else(|log| panic!("no address line; log:\n{log}"))
    }

    /// The server, or its log when it exited before printing its address.
    fn try_start(dir: &Path, store: &str, endpoint: &str) -> Result<Serve, String> {
        Serve::try_start_with(dir, store, endpoint, |_| {})
    }

    /// [`Serve::try_start`], its command adjusted by `adjust` first.
    fn try_start_with(
        dir: &Path,
        store: &str,
        endpoint: &str,
        adjust: impl FnOnce(&mut Command),
    ) -> Result<Serve, String> {
        let log = dir.join(format!("serve-{}.log", Instant::now().elapsed().as_nanos()));
        let log = unique(log);
        let mut command = Command::new(TASKER);
        adjust(&mut command);
        let mut child = command
            .arg("serve")
            .args(["--store", store])
            .args(["--api-listen", "127.0.0.1:0"])
            .args(["--workflows-dir", dir.join("workflows").to_str().unwrap()])
            .args(["--endpoint", endpoint])
            .env("TASKER_ENV", "test")
            .env("TASKER_HEARTBEAT_INTERVAL_MS", "200")
            .env("TASKER_LIVENESS", "3")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("tasker serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(api) = line.split_whitespace().skip_while(|w| *w != "api").nth(1) else {
            let _ = child.wait();
            return Err(std::fs::read_to_string(&log).unwrap_or_default());
        };
        Ok(Serve {
            api: api.to_string(),
            child,
            log,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    /// Sends it `signal` (`-TERM`, `-STOP`, ...).
    fn signal(&self, signal: &str) {
        assert!(Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success());
    }

    /// SIGTERM, as a service manager stops it; waits for the exit, which
    /// must be clean (0).
    fn stop(&mut self) {
        self.signal("-TERM");
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "a clean stop exits 0: {status:?}\n{}",
            tail(&self.log(), 20)
        );
    }

    fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
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

fn unique(path: PathBuf) -> PathBuf {
    let mut n = 0;
    loop {
        let candidate = path.with_extension(format!("{n}.log"));
        if !candidate.exists() {
            return candidate;
        }
        n += 1;
    }
}

/// `tasker worker` processes; killed when dropped.
struct Workers(Vec<Child>);

impl Workers {
    /// Sends each `signal` (`-STOP`, `-CONT`, ...).
    fn signal(&self, signal: &str) {
        for child in &self.0 {
            let pid = child.id().to_string();
            assert!(Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success());
        }
    }

    fn start(endpoint: &str, n: usize, capacity: u32) -> Workers {
        Workers(
            (0..n)
                .map(|i| {
                    Workers::spawn(
                        endpoint,
                        &format!("w{i}"),
                        capacity,
                        "sleep,echo,fail_permanent",
                    )
                })
                .collect(),
        )
    }

    /// One worker serving only `handlers` (comma-separated).
    fn serving(endpoint: &str, worker_id: &str, handlers: &str) -> Workers {
        Workers(vec![Workers::spawn(endpoint, worker_id, 2, handlers)])
    }

    fn spawn(endpoint: &str, worker_id: &str, capacity: u32, handlers: &str) -> Child {
        worker_command(endpoint, worker_id, handlers)
            .args(["--capacity", &capacity.to_string()])
            .args(["--threads", &capacity.min(64).to_string()])
            .spawn()
            .expect("tasker worker starts")
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

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn submit(http: &reqwest::blocking::Client, serve: &Serve, n: usize) -> Vec<i64> {
    submit_of(http, serve, "slow", n)
}

/// `n` tasks of `workflow`, context `{"n": i}`; their ids.
fn submit_of(
    http: &reqwest::blocking::Client,
    serve: &Serve,
    workflow: &str,
    n: usize,
) -> Vec<i64> {
    (0..n)
        .map(|i| {
            let response = http
                .post(serve.url("/v1/tasks"))
                .json(&json!({ "workflow": workflow, "context": { "n": i } }))
                .send()
                .unwrap();
            assert_eq!(response.status(), 201, "{:?}", response.text());
            response.json::<Value>().unwrap()["task_id"]
                .as_i64()
                .unwrap()
        })
        .collect()
}

/// Waits until no task is running; returns how many ended in each status.
fn wait_all_ended(http: &reqwest::blocking::Client, serve: &Serve, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let page: Value = http
            .get(serve.url("/v1/tasks?status=running&limit=1"))
            .send()
            .and_then(|r| r.json())
            .unwrap();
        if page["tasks"].as_array().unwrap().is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "tasks still running after {timeout:?}; server log:\n{}",
            tail(&serve.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The first page of `GET /v1/tasks`.
fn tasks_page(http: &reqwest::blocking::Client, serve: &Serve) -> Value {
    http.get(serve.url("/v1/tasks"))
        .send()
        .and_then(|r| r.json())
        .unwrap()
}

/// The statuses of the tasks on the first page, newest first.
fn task_statuses(http: &reqwest::blocking::Client, serve: &Serve) -> Vec<String> {
    tasks_page(http, serve)["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["status"].as_str().unwrap().to_string())
        .collect()
}

/// `serve`'s `/metrics` page.
fn metrics_text(http: &reqwest::blocking::Client, serve: &Serve) -> String {
    http.get(serve.url("/metrics"))
        .send()
        .and_then(|r| r.text())
        .unwrap()
}

/// Waits until a worker has registered.
fn wait_for_a_worker(http: &reqwest::blocking::Client, serve: &Serve) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while get_workers(http, serve) == 0 {
        assert!(Instant::now() < deadline, "no worker registered");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How many workers are connected.
fn get_workers(http: &reqwest::blocking::Client, serve: &Serve) -> usize {
    let workers: Value = http
        .get(serve.url("/v1/workers"))
        .send()
        .and_then(|r| r.json())
        .unwrap();
    workers["workers"].as_array().unwrap().len()
}

/// Waits until the connected workers hold at least `n` steps between them.
fn wait_for_steps_at_workers(http: &reqwest::blocking::Client, serve: &Serve, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let workers: Value = http
            .get(serve.url("/v1/workers"))
            .send()
            .and_then(|r| r.json())
            .unwrap();
        let held: u64 = workers["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["in_flight"].as_u64().unwrap())
            .sum();
        if held >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the workers never held {n} steps (they hold {held}); server log:\n{}",
            tail(&serve.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET /v1/tasks/{id}`.
fn get_task(http: &reqwest::blocking::Client, serve: &Serve, id: &str) -> Value {
    http.get(serve.url(&format!("/v1/tasks/{id}")))
        .send()
        .unwrap()
        .json()
        .unwrap()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn workflows_dir(dir: &Path) {
    std::fs::create_dir_all(dir.join("workflows")).unwrap();
    std::fs::write(dir.join("workflows/slow.yaml"), SLOW_WORKFLOW).unwrap();
}

/// The contract of recovery, on one store.
fn a_killed_server_restarts_and_every_step_completes_exactly_once(store_url: &str) {
    let dir = tempfile::tempdir().unwrap();
    workflows_dir(dir.path());
    let endpoint = free_endpoint();
    let http = client();
    let serve = Serve::start(dir.path(), store_url, &endpoint);
    let _workers = Workers::start(&endpoint, 2, 60);
    let tasks = submit(&http, &serve, 200);
    // Kill once slow steps are out at the workers (a fixed sleep was too
    // short on a loaded machine: nothing was out yet). Not many: tasks
    // arrive one POST at a time, and on a loaded machine steps finish about
    // as fast as they come, so 20 at once was sometimes never reached.
    wait_for_steps_at_workers(&http, &serve, 5);
    let killed_at = chrono::Utc::now();
    serve.kill_9();

    let serve = Serve::start(dir.path(), store_url, &endpoint);
    wait_all_ended(&http, &serve, Duration::from_secs(90));
    for id in &tasks {
        let task: Value = get_task(&http, &serve, &id.to_string());
        assert_eq!(task["status"], "complete", "task {id}: {task:#}");
        let last = &task["steps"][2];
        assert_eq!(
            last["output"]["attempt"], last["attempts"],
            "the output is of the attempt the store has"
        );
    }
    drop(serve);

    // The journal: one `completed` per step, for the attempt dispatched
    // last; and some of the steps out at the kill were answered by the
    // worker that held them, not run again.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let reclaimed = runtime.block_on(async {
        let store = Store::open(store_url).await.unwrap();
        let mut reclaimed = 0;
        for id in &tasks {
            let journal = store.journal_entries(*id).await.unwrap();
            let task = store.get_task(*id).await.unwrap().unwrap();
            for step in &task.steps {
                let entries: Vec<_> = journal
                    .iter()
                    .filter(|e| e.step_id == Some(step.step_id))
                    .collect();
                let completed: Vec<_> = entries
                    .iter()
                    .filter(|e| e.to_state == "completed")
                    .collect();
                assert_eq!(
                    completed.len(),
                    1,
                    "task {id} step {}: {entries:#?}",
                    step.name
                );
                assert_eq!(completed[0].attempt, step.attempts);
                let dispatch = entries
                    .iter()
                    .rev()
                    .find(|e| e.to_state == "running")
                    .expect("dispatched before completing");
                assert_eq!(dispatch.attempt, completed[0].attempt);
                if dispatch.at < killed_at && completed[0].at > killed_at {
                    reclaimed += 1;
                }
            }
        }
        store.close().await;
        reclaimed
    });
    assert!(
        reclaimed > 0,
        "no step out at the kill was answered by its worker after the restart"
    );
}

#[test]
fn s1_sqlite_a_killed_server_restarts_and_every_step_completes_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("tasks.db").display());
    a_killed_server_restarts_and_every_step_completes_exactly_once(&url);
}

#[test]
fn s2_postgres_a_killed_server_restarts_and_every_step_completes_exactly_once() {
    let pg = tasker_pgtest::PgServer::start().expect("a throwaway PostgreSQL starts");
    a_killed_server_restarts_and_every_step_completes_exactly_once(&pg.url());
}

/// `tasker task ...` against `api`.
fn task_cli(api: &str, args: &[&str]) -> std::process::Output {
    Command::new(TASKER)
        .arg("task")
        .args(args)
        .args(["--api", api])
        .output()
        .expect("tasker task runs")
}

const MIXED_WORKFLOW: &str = r#"
name: mixed
steps:
  - name: fetch
    handler: echo
  - name: charge
    handler: fail_permanent
    depends_on: [fetch]
  - name: ship
    handler: echo
    depends_on: [charge]
  - name: log
    handler: echo
    depends_on: [fetch]
"#;

#[test]
fn s3_the_task_command_submits_waits_shows_lists_and_cancels_with_exit_statuses() {
    let dir = tempfile::tempdir().unwrap();
    workflows_dir(dir.path());
    std::fs::write(dir.path().join("workflows/mixed.yaml"), MIXED_WORKFLOW).unwrap();
    let endpoint = free_endpoint();
    let store = format!("sqlite:{}", dir.path().join("t.db").display());
    let serve = Serve::start(dir.path(), &store, &endpoint);
    let _workers = Workers::start(&endpoint, 1, 8);

    // Completes: exit 0, the JSON report of `tasker run --json`, with the id.
    // Its context, from a file, would not fit in one argument (128 KiB).
    let context = json!({ "order": 1, "note": "n".repeat(200_000) });
    let context_file = dir.path().join("context.json");
    std::fs::write(&context_file, context.to_string()).unwrap();
    let at_file = format!("@{}", context_file.display());
    let done = task_cli(
        &serve.api,
        &["submit", "slow", "--context", &at_file, "--wait", "--json"],
    );
    assert_eq!(
        done.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let report: Value = serde_json::from_slice(&done.stdout).unwrap();
    assert_eq!(report["status"], "complete");
    assert_eq!(report["steps"][2]["outcome"], "completed");
    let id = report["task_id"].as_i64().unwrap();
    let progress = String::from_utf8_lossy(&done.stderr);
    assert!(
        progress.contains("first"),
        "live progress names the steps: {progress}"
    );

    // Fails: exit 1; the blocked step says by what.
    let failed = task_cli(&serve.api, &["submit", "mixed", "--wait", "--json"]);
    assert_eq!(failed.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&failed.stdout).unwrap();
    assert_eq!(report["status"], "failed");
    assert_eq!(report["steps"][2]["outcome"], "blocked");
    assert_eq!(report["steps"][2]["blocked_by"], "charge");
    assert_eq!(
        report["steps"][3]["outcome"], "completed",
        "the other branch went on"
    );
    // The server's log says which attempt failed, and why.
    let log = serve.log();
    assert!(
        log.lines().any(|l| l.contains("step attempt failed")
            && l.contains("step=charge")
            && l.contains("attempt=1")
            && l.contains("retrying=false")),
        "{}",
        tail(&log, 20)
    );

    // Get and list.
    let got = task_cli(&serve.api, &["get", &id.to_string(), "--json"]);
    assert_eq!(got.status.code(), Some(0));
    let got: Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(got["task_id"], id);
    assert_eq!(got["context"], context);
    let listed = task_cli(&serve.api, &["list", "--status", "failed", "--json"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let tasks = listed["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["workflow"], "mixed");
    // Piped into a reader that has gone (`tasker task list | head`), it ends
    // as a shell tool does, by SIGPIPE, without a panic's backtrace.
    let mut piped = Command::new(TASKER)
        .args(["task", "list", "--api", &serve.api])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(piped.stdout.take());
    let ended = piped.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&ended.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&ended.status),
        Some(libc::SIGPIPE),
        "{:?} {stderr}",
        ended.status
    );

    // Cancel a running task: its running step finishes, the rest never run.
    let started = task_cli(&serve.api, &["submit", "slow", "--json"]);
    let started: Value = serde_json::from_slice(&started.stdout).unwrap();
    let running = started["task_id"].as_i64().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(100));
    let cancelled = task_cli(&serve.api, &["cancel", &running]);
    assert_eq!(
        cancelled.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&cancelled.stderr)
    );
    let http = client();
    let deadline = Instant::now() + Duration::from_secs(10);
    let task = loop {
        let task: Value = get_task(&http, &serve, &running);
        if task["status"] != "running" || Instant::now() > deadline {
            break task;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(task["status"], "cancelled", "{task:#}");
    assert_eq!(task["steps"][2]["outcome"], "cancelled");
    assert_eq!(task["steps"][2]["attempts"], 0, "never dispatched");
    // Cancelling again: the task has ended, exit 2 with the server's reason.
    let again = task_cli(&serve.api, &["cancel", &running]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("ended"));

    // An unknown workflow: exit 2 and the closest name.
    let unknown = task_cli(&serve.api, &["submit", "slwo"]);
    assert_eq!(unknown.status.code(), Some(2));
    let message = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        message.contains("slow"),
        "names the closest workflow: {message}"
    );
}

#[test]
fn s4_sigterm_drains_the_steps_out_and_the_next_start_finishes_the_tasks() {
    let dir = tempfile::tempdir().unwrap();
    workflows_dir(dir.path());
    let endpoint = free_endpoint();
    let store = format!("sqlite:{}", dir.path().join("t.db").display());
    let http = client();
    let mut serve = Serve::start(dir.path(), &store, &endpoint);
    let _workers = Workers::start(&endpoint, 1, 50);
    let tasks = submit(&http, &serve, 20);
    std::thread::sleep(Duration::from_millis(150));
    let stopping = Instant::now();
    serve.stop();
    assert!(
        stopping.elapsed() < Duration::from_secs(8),
        "drained within the shutdown timeout"
    );
    let log = serve.log();
    assert!(log.contains("service stopped"), "{}", tail(&log, 20));
    // An operator can tell a store made afresh (a misspelt path) from one
    // opened again.
    assert!(
        log.contains("created a new, empty SQLite store"),
        "{}",
        tail(&log, 40)
    );
    drop(serve);
    // The drain finished the steps that were out, and dispatched nothing
    // more: the tasks wait in the store, none marked failed.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = Store::open(&store).await.unwrap();
        let mut running = 0;
        for id in &tasks {
            let task = store.get_task(*id).await.unwrap().unwrap();
            assert_ne!(task.status.to_string(), "failed");
            if task.status.to_string() == "running" {
                running += 1;
                assert!(
                    task.steps.iter().all(|s| s.state.to_string() != "running"),
                    "{task:#?}"
                );
            }
        }
        assert!(running > 0, "the stop came before the tasks could finish");
        store.close().await;
    });

    // Nothing was abandoned as a failure: the next start finishes each task.
    let serve = Serve::start(dir.path(), &store, &endpoint);
    let log = serve.log();
    assert!(
        log.contains("opened the SQLite store") && !log.contains("created a new"),
        "{}",
        tail(&log, 40)
    );
    wait_all_ended(&http, &serve, Duration::from_secs(60));
    for id in tasks {
        let task: Value = get_task(&http, &serve, &id.to_string());
        assert_eq!(task["status"], "complete", "{task:#}");
        for step in task["steps"].as_array().unwrap() {
            assert_eq!(
                step["attempts"], 1,
                "a drained step is not run again: {task:#}"
            );
        }
    }
}

/// A directory with the usual workflows and `name` (`yaml`), a free
/// endpoint, and a SQLite store URL in that directory.
fn sqlite_setup_with(name: &str, yaml: &str) -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    workflows_dir(dir.path());
    std::fs::write(dir.path().join(format!("workflows/{name}.yaml")), yaml).unwrap();
    let endpoint = free_endpoint();
    let store = format!("sqlite:{}", dir.path().join("t.db").display());
    (dir, endpoint, store)
}

const LONG_WORKFLOW: &str = r#"
name: long
description: one step that outlasts the server's downtime
defaults:
  timeout_ms: 30000
  retry: { max_attempts: 5, initial_ms: 100, max_ms: 500 }
steps:
  - name: only
    handler: sleep
    handler_config: { ms: 1200 }
"#;

/// A server killed and started again only after the workers judged it
/// dead (expiry 600 ms here): the steps out at the kill finish while it is
/// down, before the workers notice, and their results must still reach it.
/// None may run twice.
#[test]
fn s5_results_finished_while_the_server_is_down_past_expiry_reach_it_after_the_restart() {
    let (dir, endpoint, store) = sqlite_setup_with("long", LONG_WORKFLOW);
    let http = client();
    let serve = Serve::start(dir.path(), &store, &endpoint);
    let _workers = Workers::start(&endpoint, 2, 40);
    let tasks = submit_of(&http, &serve, "long", 20);
    wait_for_steps_at_workers(&http, &serve, 20);
    // Killed shortly before the steps end (1.2 s after dispatch): their
    // results come before the workers give the server up (0.6 s after its
    // last word), on the connection they hold.
    std::thread::sleep(Duration::from_millis(900));
    serve.kill_9();
    // Down for longer than expiry and the workers' linger (1 s) together.
    std::thread::sleep(Duration::from_millis(2_500));
    let serve = Serve::start(dir.path(), &store, &endpoint);
    wait_all_ended(&http, &serve, Duration::from_secs(60));
    for id in &tasks {
        let task: Value = get_task(&http, &serve, &id.to_string());
        assert_eq!(task["status"], "complete", "task {id}: {task:#}");
        assert_eq!(
            task["steps"][0]["attempts"],
            1,
            "a step that finished while the server was down ran again: {task:#}\n{}",
            tail(&serve.log(), 30)
        );
    }
}

const SHORT_WORKFLOW: &str = r#"
name: short
steps:
  - name: only
    handler: sleep
    handler_config: { ms: 400 }
"#;

/// SIGTERM while each task's one step is out at a worker: the drain
/// records the results, and a task whose every step has ended is over in
/// the store, not left for the next start to finish.
#[test]
fn s6_a_task_whose_last_step_ends_during_the_drain_is_complete_in_the_store() {
    let (dir, endpoint, store) = sqlite_setup_with("short", SHORT_WORKFLOW);
    let http = client();
    let mut serve = Serve::start(dir.path(), &store, &endpoint);
    let _workers = Workers::start(&endpoint, 1, 20);
    let tasks = submit_of(&http, &serve, "short", 5);
    wait_for_steps_at_workers(&http, &serve, 5);
    serve.stop();
    let log = serve.log();
    drop(serve);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = Store::open(&store).await.unwrap();
        for id in &tasks {
            let task = store.get_task(*id).await.unwrap().unwrap();
            assert_eq!(
                task.status.to_string(),
                "complete",
                "task {id}: {task:#?}\n{}",
                tail(&log, 20)
            );
        }
        store.close().await;
    });
}

const LONG_THEN_ECHO_WORKFLOW: &str = r#"
name: long_then_echo
steps:
  - name: long
    handler: sleep
    handler_config: { ms: 1200 }
  - name: after
    handler: echo
    depends_on: [long]
"#;

/// A throwaway PostgreSQL, and a folder whose `workflows/` holds the
/// workflows of [`workflows_dir`] and `long_then_echo`.
fn postgres_with_long_then_echo() -> (tasker_pgtest::PgServer, tempfile::TempDir) {
    let pg = tasker_pgtest::PgServer::start().expect("a throwaway PostgreSQL starts");
    let dir = tempfile::tempdir().unwrap();
    workflows_dir(dir.path());
    std::fs::write(
        dir.path().join("workflows/long_then_echo.yaml"),
        LONG_THEN_ECHO_WORKFLOW,
    )
    .unwrap();
    (pg, dir)
}

/// PostgreSQL stops (as for a restart or a failover) while steps are out,
/// and their results arrive while it is down: each task waits, trying its
/// commit again, and goes on once the database is back, without a restart
/// of the server. Nothing runs twice.
#[test]
fn s7_postgres_down_while_steps_end_the_tasks_wait_for_it_and_go_on_when_it_is_back() {
    let (mut pg, dir) = postgres_with_long_then_echo();
    let endpoint = free_endpoint();
    let http = client();
    let serve = Serve::start(dir.path(), &pg.url(), &endpoint);
    let _workers = Workers::start(&endpoint, 1, 10);
    let tasks = submit_of(&http, &serve, "long_then_echo", 5);
    wait_for_steps_at_workers(&http, &serve, 5);
    pg.stop_for_now().expect("PostgreSQL stops");
    // The steps end 1.2 s after dispatch, with the database down.
    std::thread::sleep(Duration::from_millis(2_500));
    pg.start_again().expect("PostgreSQL starts again");
    wait_all_ended(&http, &serve, Duration::from_secs(60));
    let log = serve.log();
    for id in &tasks {
        let task: Value = get_task(&http, &serve, &id.to_string());
        assert_eq!(
            task["status"],
            "complete",
            "task {id}: {task:#}\n{}",
            tail(&log, 30)
        );
        for step in task["steps"].as_array().unwrap() {
            assert_eq!(step["attempts"], 1, "task {id} ran a step twice: {task:#}");
        }
    }
    assert!(
        log.contains("trying again until the store takes it"),
        "the commits never failed, so this tested nothing:\n{}",
        tail(&log, 30)
    );
}

/// A second `tasker serve` started on the same store by mistake would run
/// under the same orchestrator id and drive the first one's tasks too: it
/// is refused at once, naming who holds the store, and the first goes on.
#[test]
fn s8_a_second_server_on_the_same_store_is_refused_and_the_first_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    workflows_dir(dir.path());
    let endpoint = free_endpoint();
    let store = format!("sqlite:{}", dir.path().join("t.db").display());
    let http = client();
    let first = Serve::start(dir.path(), &store, &endpoint);
    let mut second = Command::new(TASKER)
        .arg("serve")
        .args(["--store", &store])
        .args(["--api-listen", "127.0.0.1:0"])
        .args([
            "--workflows-dir",
            dir.path().join("workflows").to_str().unwrap(),
        ])
        .args(["--endpoint", &free_endpoint()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("a second server on the same store kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("another tasker serve is using this store")
            && stderr.contains(&format!("pid {}", first.child.id())),
        "says why and who: {stderr}"
    );

    let _workers = Workers::start(&endpoint, 1, 4);
    let tasks = submit(&http, &first, 2);
    wait_all_ended(&http, &first, Duration::from_secs(30));
    for id in &tasks {
        let task = get_task(&http, &first, &id.to_string());
        assert_eq!(task["status"], "complete", "{task:#}");
    }
}

/// A PostgreSQL restart drops the first server's node lock with its
/// connection, and a second server started before the first takes it again
/// gets the store: it takes the store over. The first then stops by itself,
/// saying why, with nothing more of it committed (it once stayed up, its
/// commits refused, and its task stopped until a restart), and the second
/// finishes the task.
#[test]
fn s11_a_server_whose_store_another_took_over_after_a_postgres_restart_stops_and_the_other_finishes(
) {
    let (mut pg, dir) = postgres_with_long_then_echo();
    let http = client();
    let endpoint = free_endpoint();
    let mut first = Serve::start(dir.path(), &pg.url(), &endpoint);
    let _workers = Workers::start(&endpoint, 1, 4);
    let task = submit_of(&http, &first, "long_then_echo", 1)[0];
    wait_for_steps_at_workers(&http, &first, 1);

    // The first server takes its lock again within seconds of the restart:
    // the second must start before that, which it may not every time.
    let second_endpoint = free_endpoint();
    let mut tries = Vec::new();
    let second = loop {
        pg.stop_for_now().expect("PostgreSQL stops");
        pg.start_again().expect("PostgreSQL starts again");
        match Serve::try_start(dir.path(), &pg.url(), &second_endpoint) {
            Ok(second) => break second,
            Err(log) if tries.len() < 4 => tries.push(log),
            Err(log) => panic!("the first server took its lock back every time: {log}"),
        }
    };
    for refused in &tries {
        assert!(
            refused.contains("another tasker serve is using this store"),
            "{refused}"
        );
    }

    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = first.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the first server is still up after its store was taken over:\n{}",
            tail(&first.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = first.log();
    assert!(!status.success(), "{}", tail(&log, 30));
    assert!(
        log.contains("another tasker serve took this store over"),
        "says why:\n{}",
        tail(&log, 30)
    );

    let _second_workers = Workers::start(&second_endpoint, 1, 4);
    wait_all_ended(&http, &second, Duration::from_secs(60));
    let detail = get_task(&http, &second, &task.to_string());
    assert_eq!(
        detail["status"],
        "complete",
        "{detail:#}\n{}",
        tail(&second.log(), 30)
    );
}

/// A throwaway PostgreSQL, a `serve` on it with the usual workflows (in
/// the returned folder), and an HTTP client that waits up to 30 s.
fn serve_on_postgres() -> (
    tasker_pgtest::PgServer,
    tempfile::TempDir,
    Serve,
    reqwest::blocking::Client,
) {
    let pg = tasker_pgtest::PgServer::start().expect("a throwaway PostgreSQL starts");
    let dir = tempfile::tempdir().unwrap();
    workflows_dir(dir.path());
    let endpoint = free_endpoint();
    let serve = Serve::start(dir.path(), &pg.url(), &endpoint);
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    (pg, dir, serve, http)
}

/// While PostgreSQL is down, the API answers at once, or within the store's
/// 10 s read wait, with 503 `store-unavailable` and `Retry-After`, not 500
/// and not a request held for 30 s; nothing of a refused create is kept,
/// and the same create goes in once the database is back.
#[test]
fn s9_with_postgres_down_requests_are_answered_503_store_unavailable_and_a_create_goes_in_after() {
    let (mut pg, _dir, serve, http) = serve_on_postgres();
    let create = json!({ "workflow": "slow", "context": {}, "idempotency_key": "order-9" });
    pg.stop_for_now().expect("PostgreSQL stops");

    let assert_unavailable = |response: reqwest::blocking::Response| {
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "1");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = response.json().unwrap();
        assert_eq!(
            problem["type"], "https://tasker-core.dev/problems/store-unavailable",
            "{problem:#}"
        );
        let detail = problem["detail"].as_str().unwrap();
        assert!(!detail.contains("postgres"), "no store details: {detail}");
    };
    let response = http
        .post(serve.url("/v1/tasks"))
        .json(&create)
        .send()
        .unwrap();
    assert_unavailable(response);
    // A GET of `path`, answered within `within` though the store is down.
    let get_within = |path: &str, within: u64| {
        let asked = Instant::now();
        let response = http.get(serve.url(path)).send().unwrap();
        let took = asked.elapsed();
        assert!(took < Duration::from_secs(within), "{path} waited {took:?}");
        response
    };
    assert_unavailable(get_within("/v1/tasks", 15));
    let ready = get_within("/readyz", 5);
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().unwrap();
    assert_eq!(
        ready["type"], "https://tasker-core.dev/problems/not-ready",
        "{ready:#}"
    );
    assert_eq!(ready["store"], false, "{ready:#}");
    assert_eq!(ready["ready"], false, "{ready:#}");
    // Metrics answer, within Prometheus's default scrape timeout (10 s),
    // all but the count the store would give, and say the store is down.
    let metrics = get_within("/metrics", 5);
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().unwrap();
    assert!(text.contains("\ntasker_store_up 0\n"), "{text}");
    assert!(
        text.contains("\ntasker_workers_connected") || text.contains("tasker_steps_queued"),
        "{text}"
    );
    assert!(
        !text.contains("tasker_tasks{"),
        "no stale task counts: {text}"
    );
    let log = serve.log();
    assert!(
        log.contains("the task store is unavailable to an API request")
            && !log
                .lines()
                .any(|line| line.contains("ERROR") && line.contains("API request")),
        "warned, not an error per request:\n{}",
        tail(&log, 20)
    );

    pg.start_again().expect("PostgreSQL starts again");
    // Ready again before anything else writes: its own probe finds the
    // writes going through (the create above failed, so it must ask).
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get(serve.url("/readyz")).send().unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "never ready again");
        std::thread::sleep(Duration::from_millis(200));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let created = loop {
        let response = http
            .post(serve.url("/v1/tasks"))
            .json(&create)
            .send()
            .unwrap();
        if response.status() != 503 {
            break response;
        }
        assert!(Instant::now() < deadline, "the store never came back");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(created.status(), 201, "{:?}", created.text());
    let text = metrics_text(&http, &serve);
    assert!(text.contains("\ntasker_store_up 1\n"), "{text}");
    assert!(
        text.contains("tasker_tasks{status=\"running\"} 1"),
        "{text}"
    );
    let page = tasks_page(&http, &serve);
    assert_eq!(page["tasks"].as_array().unwrap().len(), 1, "{page:#}");
}

/// A store that reads but refuses writes (a read-only database, a full
/// disk) refused every create while `tasker_store_up` stayed 1: an
/// operator alerting from Prometheus saw nothing. It is 0 while writes
/// fail, as `/readyz` says, and 1 again once they go through.
#[test]
fn s9b_a_store_that_refuses_writes_is_down_in_the_metrics_too() {
    let (pg, _dir, serve, http) = serve_on_postgres();
    let store_up = || {
        let text = metrics_text(&http, &serve);
        text.lines()
            .find_map(|l| l.strip_prefix("tasker_store_up "))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no tasker_store_up: {text}"))
    };
    assert_eq!(store_up(), "1");
    // A database without the tables is said to be new, as a SQLite file is:
    // a misspelt database name shows at the first line.
    assert!(
        serve
            .log()
            .contains("created a new, empty PostgreSQL store"),
        "{}",
        tail(&serve.log(), 20)
    );
    // New sessions are read-only; the ones open now are cut, so the pool
    // opens new ones.
    let read_only = |on: &str| {
        pg.psql(
            "postgres",
            &format!(
                "ALTER DATABASE tasker SET default_transaction_read_only = {on}; \
                 SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = 'tasker' AND pid <> pg_backend_pid()"
            ),
        )
        .expect("psql runs");
    };
    read_only("on");
    let create = json!({ "workflow": "slow", "context": {}, "idempotency_key": "ro-1" });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = http
            .post(serve.url("/v1/tasks"))
            .json(&create)
            .send()
            .unwrap()
            .status();
        if status == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "creates still taken: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(store_up(), "0", "reads answer, writes do not");
    assert_eq!(http.get(serve.url("/readyz")).send().unwrap().status(), 503);
    read_only("off");
    let deadline = Instant::now() + Duration::from_secs(30);
    while store_up() != "1" {
        assert!(Instant::now() < deadline, "never up again");
        std::thread::sleep(Duration::from_millis(200));
    }
}

const DRAIN_WORKFLOW: &str = r#"
name: drain
description: a step that outlasts the first seconds of a stop, and one after it
defaults:
  timeout_ms: 30000
steps:
  - name: long
    handler: sleep
    handler_config: { ms: 2500 }
  - name: after
    handler: echo
    depends_on: [long]
"#;

/// While a stop drains (it waits for the steps out at workers), reads and
/// waits are answered as before and only creates are refused; an open wait
/// is answered 503 `shutting-down` once the drain is over. Answered at the
/// stop's start, a client's wait retried for its few seconds and failed
/// while the drain went on (5 s of steps, up to `shutdown_timeout_ms`),
/// though the server came back and the task completed; answered after the
/// store closed (on PostgreSQL), it was `store-unavailable`, with a warning.
#[test]
fn s21_a_wait_goes_on_through_a_stops_drain_and_only_creates_are_refused() {
    let pg = tasker_pgtest::PgServer::start().expect("a throwaway PostgreSQL starts");
    let (dir, endpoint, _) = sqlite_setup_with("drain", DRAIN_WORKFLOW);
    let http = client();
    let mut serve = Serve::start(dir.path(), &pg.url(), &endpoint);
    let _workers = Workers::start(&endpoint, 1, 2);
    wait_for_a_worker(&http, &serve);
    let id = submit_of(&http, &serve, "drain", 1)[0];
    wait_for_steps_at_workers(&http, &serve, 1);
    let poll = {
        let url = serve.url(&format!("/v1/tasks/{id}?wait=30"));
        std::thread::spawn(move || {
            let http = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(40))
                .build()
                .unwrap();
            let answer = http.get(url).send().unwrap();
            let answered_at = Instant::now();
            (
                answer.status(),
                answer.json::<Value>().unwrap(),
                answered_at,
            )
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let stopped_at = Instant::now();
    serve.signal("-TERM");
    std::thread::sleep(Duration::from_millis(300));
    let create = http
        .post(serve.url("/v1/tasks"))
        .json(&json!({ "workflow": "drain", "context": {} }))
        .send()
        .unwrap();
    assert_eq!(create.status(), 503);
    let problem: Value = create.json().unwrap();
    assert_eq!(
        problem["type"],
        "https://tasker-core.dev/problems/shutting-down"
    );
    let read = http
        .get(serve.url(&format!("/v1/tasks/{id}")))
        .send()
        .unwrap();
    assert_eq!(read.status(), 200, "a read during the drain");
    // The drain waits for the long step; the task, suspended, does not end:
    // the wait is answered when the drain is over, and says why.
    let (status, problem, answered_at) = poll.join().unwrap();
    assert_eq!(status, 503, "{problem:#}");
    assert_eq!(
        problem["type"], "https://tasker-core.dev/problems/shutting-down",
        "{problem:#}"
    );
    let waited = answered_at - stopped_at;
    assert!(
        waited >= Duration::from_secs(1),
        "the wait went on while the step finished, not {waited:?}"
    );
    let exit = serve.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}\n{}", tail(&serve.log(), 20));
    let log = serve.log();
    assert!(
        !log.contains("unavailable to an API request"),
        "a stop is not a store outage:\n{}",
        tail(&log, 20)
    );
}

/// A workflow file that does not load stops `serve` at start, so a typo
/// made before a restart took every workflow down: `--check` says so
/// first, and starts nothing.
#[test]
fn s22_serve_check_names_a_workflow_file_that_does_not_load_and_starts_nothing() {
    let (dir, endpoint, store) = sqlite_setup_with("drain", DRAIN_WORKFLOW);
    let check = || {
        Command::new(TASKER)
            .args([
                "serve",
                "--check",
                "--store",
                &store,
                "--endpoint",
                &endpoint,
            ])
            .args([
                "--workflows-dir",
                dir.path().join("workflows").to_str().unwrap(),
            ])
            .env("TASKER_ENV", "test")
            .output()
            .expect("tasker serve --check runs")
    };
    let good = check();
    let said = String::from_utf8_lossy(&good.stdout);
    assert!(
        good.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(said.contains("2 workflows load: drain, slow"), "{said}");

    std::fs::write(
        dir.path().join("workflows/broken.yaml"),
        "name: broken\nsteps:\n  - name: a\n    handler: echo\n    retires: 3\n",
    )
    .unwrap();
    let bad = check();
    let said = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{said}");
    assert!(
        said.contains("broken.yaml") && said.contains("retires"),
        "names the file and the field: {said}"
    );
    assert!(
        !dir.path().join("t.db").exists(),
        "the store was not opened"
    );

    // Every file that does not load is said, not only the first; an
    // editor's hidden copy is no workflow.
    std::fs::write(
        dir.path().join("workflows/late.yaml"),
        "name: late\nsteps:\n  - name: a\n    handler: echo\n    timeout_ms: 3000000000\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("workflows/.drain.yaml"), DRAIN_WORKFLOW).unwrap();
    let bad = check();
    let said = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{said}");
    assert!(said.contains("2 workflow files do not load"), "{said}");
    assert!(
        said.contains("broken.yaml") && said.contains("late.yaml: step `a`, field `timeout_ms`"),
        "{said}"
    );
    assert!(!said.contains("defined twice"), "{said}");
}

const ONE_TRY_WORKFLOW: &str = r#"
name: one_try
description: one step that may run once
defaults:
  retry: { max_attempts: 1 }
steps:
  - name: only
    handler: echo
"#;

/// A stop while a step waits in the orchestrator's queue for a worker (none
/// is connected) takes it back: the stop does not wait out the drain
/// deadline for it, and after the restart it runs as its first attempt.
/// It used to hold the stop for the whole shutdown timeout and come back as
/// lost, so a step allowed one attempt failed without having run.
#[test]
fn s10_a_step_no_worker_has_taken_is_taken_back_at_the_stop_and_runs_once_after_it() {
    let (dir, endpoint, store) = sqlite_setup_with("one_try", ONE_TRY_WORKFLOW);
    let http = client();
    let mut serve = Serve::start(dir.path(), &store, &endpoint);
    let task = submit_of(&http, &serve, "one_try", 1)[0];
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_task(&http, &serve, &task.to_string())["steps"][0]["state"] != "running" {
        assert!(Instant::now() < deadline, "the step was never dispatched");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Shown as waiting for a worker, not as out at one.
    let shown = task_cli(&serve.api, &["get", &task.to_string()]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains("running") && l.contains("(none yet)")),
        "{text}"
    );
    let stopping = Instant::now();
    serve.stop();
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "the stop waited {:?} for a step no worker had\n{}",
        stopping.elapsed(),
        tail(&serve.log(), 20)
    );
    drop(serve);

    let serve = Serve::start(dir.path(), &store, &endpoint);
    let _workers = Workers::start(&endpoint, 1, 4);
    wait_all_ended(&http, &serve, Duration::from_secs(30));
    let id = task;
    let task = get_task(&http, &serve, &id.to_string());
    assert_eq!(task["status"], "complete", "{task:#}");
    assert_eq!(task["steps"][0]["attempts"], 1, "{task:#}");
    // The journal says attempt 1 was sent, taken back (by no worker) and
    // sent again; it said attempt 0 for the take-back.
    let journal: Value = http
        .get(serve.url(&format!("/v1/tasks/{id}/journal")))
        .send()
        .and_then(|r| r.json())
        .unwrap();
    let steps: Vec<(String, String, u64, bool)> = journal["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.get("step_id").is_some())
        .map(|e| {
            (
                e["from_state"].as_str().unwrap().to_string(),
                e["to_state"].as_str().unwrap().to_string(),
                e["attempt"].as_u64().unwrap(),
                e.get("worker_id").is_some(),
            )
        })
        .collect();
    let expected = [
        ("waiting", "running", 1, false),
        ("running", "waiting", 1, false),
        ("waiting", "running", 1, false),
        ("running", "completed", 1, true),
    ];
    assert_eq!(
        steps,
        expected.map(|(f, t, a, w)| (f.to_string(), t.to_string(), a, w)),
        "{journal:#}"
    );
}

#[test]
fn s12_a_servers_words_reach_the_terminal_with_their_control_characters_escaped() {
    // A hostile server's problem detail printed raw drove the terminal
    // (colours, a cleared screen, a forged prompt).
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let mut request = [0u8; 4096];
        let _ = socket.read(&mut request);
        let body = r#"{"type":"https://tasker-core.dev/problems/task-not-found","title":"x","status":404,"detail":"no task \u001b[2J\u001b[31mpwned\u0007"}"#;
        let answer = format!(
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/problem+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(answer.as_bytes()).unwrap();
    });
    let out = task_cli(&api, &["get", "1"]);
    server.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("no task"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}') && !stderr.contains('\u{7}'),
        "{stderr:?}"
    );
    assert!(stderr.contains("\\u{1b}[31mpwned"), "{stderr}");
}

#[test]
fn s13_task_timeout_bounds_each_try_against_a_server_that_never_answers() {
    // A server that takes connections and never answers held `task get`
    // for 5 × 30 s.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = std::sync::Arc::clone(&done);
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        listener.set_nonblocking(true).unwrap();
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until && !stop.load(std::sync::atomic::Ordering::SeqCst) {
            match listener.accept() {
                Ok((socket, _)) => open.push(socket),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        open.len()
    });
    let started = Instant::now();
    let out = task_cli(&api, &["get", "1", "--timeout", "0.3"]);
    let took = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("did not answer in time"), "{stderr}");
    // Five tries of 0.3 s and the waits between them (0.2 + 0.4 + 0.8 + 1.6 s, ±20%).
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(held.join().unwrap(), 5, "each try connected");
    let bad = task_cli(&api, &["get", "1", "--timeout", "0"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("more than 0"));
}

const SLOW_ONE_TRY_WORKFLOW: &str = r#"
name: slow_one_try
description: one slow step that may run once
defaults:
  timeout_ms: 30000
  retry: { max_attempts: 1 }
steps:
  - name: only
    handler: sleep
    handler_config: { ms: 1000 }
"#;

/// A backlog waits in the store, not in the orchestrator's queue: a
/// `kill -9` then costs an attempt only of the steps at the workers (which
/// they reclaim) and of the few queued to follow them, at most as many as
/// the workers hold. Every step was queued, so a crash failed nearly all
/// of these one-attempt tasks `WorkerLost` without their step having run.
#[test]
fn s14_a_killed_server_costs_no_attempt_of_the_backlog_waiting_in_its_store() {
    let (dir, endpoint, store) = sqlite_setup_with("slow_one_try", SLOW_ONE_TRY_WORKFLOW);
    let http = client();
    let serve = Serve::start(dir.path(), &store, &endpoint);
    let capacity = 2;
    let _workers = Workers::start(&endpoint, 1, capacity);
    // Until a worker serves the handler a few steps queue for one anyway
    // (`Admission`), so a start with no worker shows nothing held back.
    let deadline = Instant::now() + Duration::from_secs(10);
    while http
        .get(serve.url("/v1/workers"))
        .send()
        .and_then(|r| r.json::<Value>())
        .unwrap()["workers"]
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the worker never said hello");
        std::thread::sleep(Duration::from_millis(20));
    }
    let tasks = submit_of(&http, &serve, "slow_one_try", 16);
    wait_for_steps_at_workers(&http, &serve, u64::from(capacity));
    let last = get_task(&http, &serve, &tasks[15].to_string());
    assert_eq!(
        (&last["steps"][0]["state"], &last["steps"][0]["attempts"]),
        (&json!("waiting"), &json!(0)),
        "the backlog is not dispatched: {last:#}"
    );
    let metrics = metrics_text(&http, &serve);
    let waiting = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tasker_tasks_waiting_for_room "))
        .unwrap_or_else(|| panic!("no gauge of tasks waiting:\n{metrics}"));
    assert_eq!(
        waiting,
        (16 - 2 * capacity).to_string(),
        "all but twice the worker's capacity wait"
    );
    // A task waiting for room is cancelled at once: it gives up its place.
    let cancelled = tasks[15].to_string();
    let response = http
        .post(serve.url(&format!("/v1/tasks/{cancelled}/cancel")))
        .send()
        .unwrap();
    assert_eq!(response.status(), 202, "{:?}", response.text());
    let deadline = Instant::now() + Duration::from_secs(5);
    while get_task(&http, &serve, &cancelled)["status"] != "cancelled" {
        assert!(
            Instant::now() < deadline,
            "the waiting task was not cancelled"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    serve.kill_9();

    let serve = Serve::start(dir.path(), &store, &endpoint);
    wait_all_ended(&http, &serve, Duration::from_secs(90));
    let mut lost = 0;
    for id in &tasks[..15] {
        let task = get_task(&http, &serve, &id.to_string());
        let step = &task["steps"][0];
        assert_eq!(step["attempts"], 1, "one attempt each: {task:#}");
        if task["status"] != "complete" {
            assert_eq!(step["error"]["error_type"], "WorkerLost", "{task:#}");
            lost += 1;
        }
    }
    assert!(
        lost <= capacity,
        "{lost} of 15 one-attempt tasks lost their attempt to the crash; at most \
         the {capacity} queued to follow the steps at the worker may\n{}",
        tail(&serve.log(), 30)
    );
}

/// Sets (or, with `None`, lifts) the largest file process `pid` may write:
/// past it a write fails `EFBIG`, as a write to a full disk fails `ENOSPC`.
fn limit_file_size(pid: u32, bytes: Option<u64>) {
    let limit = libc::rlimit {
        rlim_cur: bytes.unwrap_or(libc::RLIM_INFINITY),
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `limit` is a valid rlimit for the call's duration, and a
    // null old-limit pointer asks for nothing back.
    let done = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_FSIZE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(done, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// A full disk fails the store's writes while its reads still answer, and
/// `/readyz` said ready then: a load balancer kept sending tasks to a
/// server that could not record them. A file size limit stands in for the
/// full disk.
#[test]
fn s15_a_store_that_takes_no_writes_makes_the_server_not_ready_until_writes_go_through() {
    use std::os::unix::process::CommandExt;
    let (dir, endpoint, store) = sqlite_setup_with("one_try", ONE_TRY_WORKFLOW);
    let serve = Serve::try_start_with(dir.path(), &store, &endpoint, |command| {
        // SAFETY: only an async-signal-safe call between fork and exec.
        // Ignored, a write past the limit fails instead of killing the
        // process, as on a full disk (the disposition survives exec).
        unsafe {
            command.pre_exec(|| {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                Ok(())
            });
        }
    })
    .unwrap_or_else(|log| panic!("no address line; log:\n{log}"));
    let http = client();
    let ready = || {
        let response = http.get(serve.url("/readyz")).send().unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().unwrap(),
        )
    };
    let create = json!({ "workflow": "one_try", "context": {} });
    assert_eq!(ready().0, 200, "{:?}", ready().1);

    limit_file_size(serve.child.id(), Some(1));
    let refused = http
        .post(serve.url("/v1/tasks"))
        .json(&create)
        .send()
        .unwrap();
    assert_eq!(refused.status(), 503, "{:?}", refused.text());
    let (status, body) = ready();
    assert_eq!(status, 503, "{body:#}");
    assert_eq!(
        (body["ready"].clone(), body["store"].clone()),
        (json!(false), json!(false)),
        "{body:#}"
    );
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("does not take writes"),
        "{body:#}"
    );

    limit_file_size(serve.child.id(), None);
    let (status, body) = ready();
    assert_eq!(status, 200, "ready once a write goes through: {body:#}");
    let created = http
        .post(serve.url("/v1/tasks"))
        .json(&create)
        .send()
        .unwrap();
    assert_eq!(created.status(), 201, "{:?}", created.text());
}

const TYPO_WORKFLOW: &str = r#"
name: typo
description: a step whose handler name is one letter off what the worker serves
defaults:
  timeout_ms: 60000
steps:
  - name: only
    handler: ecko
"#;

const ECHO_WORKFLOW: &str = r#"
name: echo_only
description: one echo step
defaults:
  timeout_ms: 60000
steps:
  - name: only
    handler: echo
"#;

/// A handler name nobody serves, with workers connected, is said within seconds
/// with the served name it comes close to: it used to show only when its
/// steps ended `NoWorkerForHandler`, a timeout (and every retry) later.
#[test]
fn s16_a_handler_no_connected_worker_serves_is_warned_about_within_seconds_with_a_near_name() {
    let (dir, endpoint, store) = sqlite_setup_with("typo", TYPO_WORKFLOW);
    let serve = Serve::start(dir.path(), &store, &endpoint);
    let _workers = Workers::start(&endpoint, 1, 2);
    let http = client();
    wait_for_a_worker(&http, &serve);
    let started = Instant::now();
    submit_of(&http, &serve, "typo", 3);
    let warned = loop {
        let log = serve.log();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("no connected worker serves handler"))
        {
            break line.to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no warning:\n{}",
            tail(&log, 20)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        warned.contains(r#"handler "ecko""#) && warned.contains(r#"did you mean "echo"?"#),
        "{warned}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        serve
            .log()
            .matches("no connected worker serves handler")
            .count(),
        1,
        "once for three tasks"
    );
}

/// At a restart of `serve` the workers come back about a second apart, and
/// the first one back made the server warn that no worker served the
/// others' handlers. A handler is warned about only when it is still
/// unserved some seconds on.
#[test]
fn s16b_a_handler_whose_worker_connects_seconds_later_is_not_warned_about() {
    let (dir, endpoint, store) = sqlite_setup_with("echo_only", ECHO_WORKFLOW);
    let serve = Serve::start(dir.path(), &store, &endpoint);
    let _first = Workers::serving(&endpoint, "first", "sleep");
    let http = client();
    wait_for_a_worker(&http, &serve);
    submit_of(&http, &serve, "echo_only", 2);
    std::thread::sleep(Duration::from_millis(1_500));
    let _second = Workers::serving(&endpoint, "second", "echo");
    wait_all_ended(&http, &serve, Duration::from_secs(20));
    // Past the grace, and a heartbeat tick more.
    std::thread::sleep(Duration::from_secs(6));
    let log = serve.log();
    assert!(
        !log.contains("no connected worker serves handler"),
        "{}",
        tail(&log, 20)
    );
    assert_eq!(task_statuses(&http, &serve), ["complete", "complete"]);
}

/// A server without `api_tokens_file` accepts every request; a client that
/// sends a token expects the API closed to others, so the server says, once,
/// that it is not.
#[test]
fn s17_a_server_without_tokens_says_once_that_it_did_not_check_a_token_it_was_sent() {
    let (dir, endpoint, store) = sqlite_setup_with("one_try", ONE_TRY_WORKFLOW);
    let serve = Serve::start(dir.path(), &store, &endpoint);
    let http = client();
    let warning = "has no api_tokens_file";
    let answered = http.get(serve.url("/v1/workflows")).send().unwrap();
    assert_eq!(answered.status(), 200);
    for _ in 0..3 {
        let answered = http
            .get(serve.url("/v1/workflows"))
            .bearer_auth("0123456789abcdef0123")
            .send()
            .unwrap();
        assert_eq!(answered.status(), 200, "accepted, as every request is");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !serve.log().contains(warning) {
        assert!(Instant::now() < deadline, "no warning:\n{}", serve.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(serve.log().matches(warning).count(), 1, "{}", serve.log());
}

/// A tokens file others may read hands them every token in it: the server
/// starts, as a CURVE secret key readable by others lets it, but says so
/// and how to mend it, naming no token.
#[test]
fn s17b_a_tokens_file_other_users_can_read_is_warned_of_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, endpoint, store) = sqlite_setup_with("one_try", ONE_TRY_WORKFLOW);
    let tokens = dir.path().join("tokens.yaml");
    let token = "s17b-token-0123456789abcdef";
    std::fs::write(&tokens, format!("ci: {token}\n")).unwrap();
    let warning = "api_tokens_file is readable by other users";
    for (mode, warned) in [(0o644, true), (0o600, false)] {
        std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(mode)).unwrap();
        let serve = Serve::try_start_with(dir.path(), &store, &endpoint, |command| {
            command.env("TASKER_API_TOKENS_FILE", &tokens);
        })
        .unwrap_or_else(|log| panic!("serve did not start:\n{log}"));
        let answered = client()
            .get(serve.url("/v1/workflows"))
            .bearer_auth(token)
            .send()
            .unwrap();
        assert_eq!(answered.status(), 200);
        let log = serve.log();
        assert_eq!(log.contains(warning), warned, "mode {mode:o}:\n{log}");
        if warned {
            assert!(log.contains("chmod 600") && log.contains("644"), "{log}");
        }
        assert!(!log.contains(token), "{log}");
    }
}

/// A log collector reads one JSON object per line, with the level and the
/// message at the top and the event's fields beside them.
#[test]
fn s23_with_tasker_log_format_json_every_log_line_is_a_json_object() {
    let (dir, endpoint, store) = sqlite_setup_with("one_try", ONE_TRY_WORKFLOW);
    let serve = Serve::try_start_with(dir.path(), &store, &endpoint, |command| {
        command.env("TASKER_LOG_FORMAT", "json");
    })
    .unwrap_or_else(|log| panic!("serve did not start:\n{log}"));
    let _workers = Workers::start(&endpoint, 1, 2);
    let http = client();
    wait_for_a_worker(&http, &serve);
    submit_of(&http, &serve, "one_try", 1);
    wait_all_ended(&http, &serve, Duration::from_secs(20));
    let log = serve.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    for line in &lines {
        for key in ["timestamp", "level", "message", "target"] {
            assert!(line[key].is_string(), "no {key}: {line}");
        }
    }
    let opened = lines
        .iter()
        .find(|l| l["message"] == "created a new, empty SQLite store")
        .unwrap_or_else(|| panic!("no store line:\n{log}"));
    assert_eq!(opened["level"], "INFO");
    assert!(
        opened["path"].as_str().is_some_and(|p| p.ends_with("t.db")),
        "{opened}"
    );
    // A value the worker chose keeps the text form's quotes and escapes.
    assert!(
        lines.iter().any(|l| l["worker_id"] == r#""w0""#),
        "the worker's registration names it in a field:\n{log}"
    );
}

const SOAK_WORKFLOW: &str = r#"
name: soak_twice
description: one step that records its runs, two attempts
defaults:
  timeout_ms: 20000
  retry: { max_attempts: 2, initial_ms: 100, max_ms: 100 }
steps:
  - name: only
    handler: soak
"#;

/// A worker stopped past its expiry with steps on their way to it starts
/// none of them when it resumes: the orchestrator has ended them
/// `WorkerLost` meanwhile and run them again elsewhere. Started, they ran
/// after their step had ended (the chaos run with Python workers: 14 such
/// runs, 5 in tasks that had already failed).
#[test]
fn s24_a_worker_resuming_from_a_pause_past_expiry_starts_no_step_that_came_meanwhile() {
    let (dir, endpoint, store) = sqlite_setup_with("soak_twice", SOAK_WORKFLOW);
    let runs = dir.path().join("runs.log");
    let soak_worker = |id: &str| {
        worker_command(&endpoint, id, "soak")
            .args(["--capacity", "4"])
            .env("TASKER_SOAK_LOG", &runs)
            .spawn()
            .expect("tasker worker starts")
    };
    let serve = Serve::start(dir.path(), &store, &endpoint);
    let paused = Workers(vec![soak_worker("paused")]);
    let http = client();
    wait_for_a_worker(&http, &serve);
    paused.signal("-STOP");
    submit_of(&http, &serve, "soak_twice", 3);
    // Sent to the stopped worker, then ended `WorkerLost` (expiry 600 ms).
    std::thread::sleep(Duration::from_secs(2));
    let other = Workers(vec![soak_worker("other")]);
    wait_all_ended(&http, &serve, Duration::from_secs(20));
    paused.signal("-CONT");
    std::thread::sleep(Duration::from_millis(1_500));

    let other_pid = other.0[0].id().to_string();
    let log = std::fs::read_to_string(&runs).unwrap();
    let started: Vec<Vec<&str>> = log
        .lines()
        .filter(|l| !l.starts_with("max "))
        .map(|l| l.split(' ').collect())
        .collect();
    assert_eq!(started.len(), 3, "one run per step:\n{log}");
    for run in &started {
        assert_eq!(
            (run[1], run[2]),
            ("2", other_pid.as_str()),
            "only the second attempts ran, at the other worker:\n{log}"
        );
    }
    assert_eq!(task_statuses(&http, &serve), ["complete"; 3]);
}

const PAUSE_WORKFLOW: &str = r#"
name: pause
description: one short step that may run once, with a short timeout
defaults:
  timeout_ms: 2500
  retry: { max_attempts: 1 }
steps:
  - name: only
    handler: sleep
    handler_config: { ms: 600 }
"#;

/// A server paused longer than a step's `timeout_ms` (SIGSTOP: a VM
/// frozen, a container paused) with a step queued for a busy worker: the
/// step could not be sent while the server was stopped, so the pause does
/// not count against it. It failed `ScheduleTimeout` ("no worker serving
/// it had room") on the resume, without having run.
#[test]
fn s18_a_server_paused_past_a_steps_timeout_does_not_fail_the_steps_it_had_queued() {
    let (dir, endpoint, store) = sqlite_setup_with("pause", PAUSE_WORKFLOW);
    let serve = Serve::start(dir.path(), &store, &endpoint);
    let _workers = Workers::start(&endpoint, 1, 1);
    let http = client();
    wait_for_a_worker(&http, &serve);
    let ids = submit_of(&http, &serve, "pause", 3);
    // One running at the worker, one queued behind it in the server.
    wait_for_steps_at_workers(&http, &serve, 1);
    serve.signal("-STOP");
    std::thread::sleep(Duration::from_secs(4));
    serve.signal("-CONT");
    wait_all_ended(&http, &serve, Duration::from_secs(60));
    for id in ids {
        let task = get_task(&http, &serve, &id.to_string());
        assert_eq!(
            task["status"],
            "complete",
            "{task:#}\n{}",
            tail(&serve.log(), 30)
        );
    }
}

/// SIGTERM while PostgreSQL is down, with results of one-attempt steps
/// already handed over by their workers: the stop waits (up to
/// `shutdown_timeout_ms`) for the database, as a running server does, and
/// records them once it is back. They were dropped at the stop, and each
/// step, run once and completed, failed `WorkerLost` at the next start
/// (the chaos helper: 12 of 12). When the database stays down past the
/// deadline, the stop says what it could not record and exits 1.
#[test]
fn s19_a_stop_while_postgres_is_down_waits_for_it_and_records_the_results_workers_sent() {
    let mut pg = tasker_pgtest::PgServer::start().expect("a throwaway PostgreSQL starts");
    let dir = tempfile::tempdir().unwrap();
    workflows_dir(dir.path());
    std::fs::write(dir.path().join("workflows/pause.yaml"), PAUSE_WORKFLOW).unwrap();
    let endpoint = free_endpoint();
    let http = client();
    let with_deadline = |command: &mut Command| {
        command.env("TASKER_SHUTDOWN_TIMEOUT_MS", "6000");
    };
    let serve = Serve::try_start_with(dir.path(), &pg.url(), &endpoint, with_deadline).unwrap();
    let workers = Workers::start(&endpoint, 1, 4);
    let first = submit_of(&http, &serve, "pause", 4);
    wait_for_steps_at_workers(&http, &serve, 4);
    pg.stop_for_now().expect("PostgreSQL stops");
    // The steps end 0.6 s after dispatch: their results reach the server
    // with the database down.
    std::thread::sleep(Duration::from_millis(1_500));
    serve.signal("-TERM");
    std::thread::sleep(Duration::from_millis(1_500));
    pg.start_again().expect("PostgreSQL starts again");
    let mut serve = serve;
    let status = serve.child.wait().unwrap();
    assert!(
        status.success(),
        "the stop recorded everything once the database was back: {status:?}\n{}",
        tail(&serve.log(), 30)
    );

    // The same, the database down past the stop's deadline.
    let serve = Serve::try_start_with(dir.path(), &pg.url(), &endpoint, with_deadline).unwrap();
    for id in &first {
        let task = get_task(&http, &serve, &id.to_string());
        assert_eq!(task["status"], "complete", "task {id}: {task:#}");
    }
    let second = submit_of(&http, &serve, "pause", 2);
    wait_for_steps_at_workers(&http, &serve, 2);
    pg.stop_for_now().expect("PostgreSQL stops");
    std::thread::sleep(Duration::from_millis(1_500));
    serve.signal("-TERM");
    let mut serve = serve;
    let status = serve.child.wait().unwrap();
    let log = serve.log();
    assert_eq!(status.code(), Some(1), "{}", tail(&log, 30));
    assert!(
        log.contains("the store did not take what 2 task(s) last held"),
        "{}",
        tail(&log, 30)
    );
    drop(workers);
    pg.start_again().expect("PostgreSQL starts again");
    let serve = Serve::try_start_with(dir.path(), &pg.url(), &endpoint, with_deadline).unwrap();
    // Their steps count as lost, as the stop said: one attempt each.
    wait_all_ended(&http, &serve, Duration::from_secs(60));
    for id in &second {
        let task = get_task(&http, &serve, &id.to_string());
        assert_eq!(task["status"], "failed", "task {id}: {task:#}");
    }
}

/// A clean stop while a restarted server still waits for workers to
/// reclaim the steps its predecessor dispatched (here the workers are
/// frozen, as by a pause of their host) leaves those steps to the next
/// start, as a crash would: their handlers' results count there. It used
/// to end them `WorkerLost` at the end of the wait, and a task of one try
/// failed with its result on the way.
#[test]
fn s20_a_clean_stop_during_the_reclaim_wait_costs_no_attempt() {
    let (dir, endpoint, store) = sqlite_setup_with("slow_one_try", SLOW_ONE_TRY_WORKFLOW);
    let http = client();
    let serve = Serve::start(dir.path(), &store, &endpoint);
    let workers = Workers::start(&endpoint, 1, 5);
    let tasks = submit_of(&http, &serve, "slow_one_try", 3);
    wait_for_steps_at_workers(&http, &serve, 3);
    serve.kill_9();
    workers.signal("-STOP");
    let mut serve = Serve::start(dir.path(), &store, &endpoint);
    // Within the reclaim wait (2.2 s with the test section's 200 ms
    // heartbeats).
    std::thread::sleep(Duration::from_millis(500));
    serve.stop();
    assert!(
        !serve.log().contains("no worker reclaimed"),
        "{}",
        tail(&serve.log(), 20)
    );
    workers.signal("-CONT");
    let serve = Serve::start(dir.path(), &store, &endpoint);
    wait_all_ended(&http, &serve, Duration::from_secs(60));
    for id in &tasks {
        let task: Value = get_task(&http, &serve, &id.to_string());
        assert_eq!(
            task["status"],
            "complete",
            "task {id}: {task:#}\n{}",
            tail(&serve.log(), 30)
        );
        assert_eq!(task["steps"][0]["attempts"], 1, "{task:#}");
    }
}
