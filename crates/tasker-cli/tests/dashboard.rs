//! The dashboard of `tasker serve` in a real headless Chromium, driven over
//! WebDriver (Debian's `chromedriver`, through fantoccini): a real server
//! on a temporary SQLite file, a real `tasker worker`, tasks started
//! through the HTTP API and watched, and one cancelled, in the browser.
//! Screenshots land in `<CARGO_TARGET_TMPDIR>/dashboard-screenshots/`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_endpoint, worker_command};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};
use tasker_pgtest::free_port;

const TASKER: &str = env!("CARGO_BIN_EXE_tasker");

/// Four steps: a fan-out from `fetch` and a fan-in at `confirm`; `price`
/// fails its first attempt and completes after a backoff.
const QUICK_WORKFLOW: &str = r#"
name: quick
description: a small fan-out and fan-in
defaults:
  retry: { max_attempts: 3, initial_ms: 300, max_ms: 300 }
steps:
  - name: fetch
    handler: echo
  - name: price
    handler: flaky
    handler_config: { succeed_on: 2 }
    depends_on: [fetch]
  - name: stock
    handler: noop
    depends_on: [fetch]
  - name: confirm
    handler: echo
    depends_on: [price, stock]
"#;

/// A step that sleeps long enough to be cancelled from the browser. A
/// cancel lets the steps already at a worker finish (the rest end
/// cancelled), so the task is cancelled only once `nap` returns: long
/// enough for the browser to get there on a loaded machine, short enough
/// to keep the test quick.
const SLOW_WORKFLOW: &str = r#"
name: slow
description: a long sleep, then a step a cancel keeps from running
steps:
  - name: nap
    handler: sleep
    handler_config: { ms: 10000 }
    timeout_ms: 40000
  - name: after
    handler: echo
    depends_on: [nap]
"#;

/// A running `tasker serve`; killed when dropped.
struct Serve {
    child: Child,
    api: String,
    log: PathBuf,
}

impl Serve {
    /// Serves `dir/workflows` from `dir/tasks.db`; `tokens`, when given, is
    /// the API tokens file.
    fn start(dir: &Path, endpoint: &str, tokens: Option<&Path>) -> Serve {
        let log = dir.join("serve.log");
        let mut command = Command::new(TASKER);
        command
            .arg("serve")
            .args([
                "--store",
                &format!("sqlite:{}", dir.join("tasks.db").display()),
            ])
            .args(["--api-listen", "127.0.0.1:0"])
            .args(["--workflows-dir", dir.join("workflows").to_str().unwrap()])
            .args(["--endpoint", endpoint])
            .env("TASKER_ENV", "test")
            .env("TASKER_HEARTBEAT_INTERVAL_MS", "200")
            .env("TASKER_LIVENESS", "3")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(tokens) = tokens {
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

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `tasker worker` with the built-in handlers; killed when dropped.
struct Worker(Child);

impl Worker {
    fn start(endpoint: &str) -> Worker {
        let child = worker_command(endpoint, "dash-worker", "noop,echo,sleep,flaky")
            .spawn()
            .expect("tasker worker starts");
        Worker(child)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `program` on PATH (or in /usr/bin), or a failure that says how to get it:
/// a missing browser must not pass as a skipped test.
fn require(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{program}` is not installed: the dashboard tests need Chromium and its \
                 WebDriver (Debian packages chromium and chromium-driver); run scripts/setup.sh"
            )
        })
}

/// A `chromedriver` on a free loopback port; killed when dropped.
struct ChromeDriver {
    child: Child,
    url: String,
}

impl ChromeDriver {
    fn start(log: &Path) -> ChromeDriver {
        let program = require("chromedriver");
        let port = free_port().unwrap();
        let child = Command::new(program)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("chromedriver starts");
        let driver = ChromeDriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let http = client();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = http
                .get(format!("{}/status", driver.url))
                .send()
                .and_then(|r| r.json::<Value>())
                .is_ok_and(|status| status["value"]["ready"] == true);
            if ready {
                return driver;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer on {}: {}",
                driver.url,
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A headless Chromium session. WebDriver calls are async; each runs to
/// completion on the browser's own runtime, so the test reads top to
/// bottom and can use the blocking HTTP client in between.
struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
}

impl Browser {
    fn open(driver: &ChromeDriver, profile: &Path) -> Browser {
        let chromium = require("chromium");
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,1100",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let client = runtime
            .block_on(async {
                ClientBuilder::new(HttpConnector::new())
                    .capabilities(capabilities)
                    .connect(&driver.url)
                    .await
            })
            .expect("chromedriver opens a Chromium session");
        Browser {
            runtime,
            client: Some(client),
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    fn goto(&self, url: &str) {
        self.runtime
            .block_on(self.client().goto(url))
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// Runs `script` (a function body; `arguments[0]` is `arg`) in the page.
    fn eval(&self, script: &str, arg: Value) -> Value {
        self.runtime
            .block_on(self.client().execute(script, vec![arg]))
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// The elements with `data-testid` = `id`: their text and data-* attributes
    /// (camelCased, as the DOM's `dataset` has them). Read in one script, as
    /// the page redraws itself while it polls.
    fn testids(&self, id: &str) -> Vec<Value> {
        let found = self.eval(
            "return [...document.querySelectorAll(`[data-testid=\"${arguments[0]}\"]`)]
                .map((n) => Object.assign({ text: n.textContent.trim() }, n.dataset));",
            json!(id),
        );
        found.as_array().cloned().unwrap_or_default()
    }

    /// The page's visible text, for failure messages.
    fn page_text(&self) -> String {
        let text = self.eval("return document.body.innerText;", Value::Null);
        text.as_str()
            .unwrap_or_default()
            .chars()
            .take(3000)
            .collect()
    }

    /// Polls `check` until it gives a value; fails after `timeout` with
    /// what was awaited and the page's text.
    fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Browser) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = check(self) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "waited {timeout:?} for {what}; the page shows:\n{}",
                self.page_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Clicks the element `css` selects; tries again if the page swapped it
    /// out between finding and clicking.
    fn click(&self, css: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let clicked = self
                .runtime
                .block_on(async { self.client().find(Locator::Css(css)).await?.click().await });
            match clicked {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("click {css}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Answers the page's `confirm` dialog (OK when `accept`); its text.
    fn answer_dialog(&self, accept: bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answered = self.runtime.block_on(async {
                let text = self.client().get_alert_text().await?;
                if accept {
                    self.client().accept_alert().await?;
                } else {
                    self.client().dismiss_alert().await?;
                }
                Ok::<_, fantoccini::error::CmdError>(text)
            });
            match answered {
                Ok(text) => return text,
                Err(e) if Instant::now() > deadline => panic!("no dialog: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Types `text` into the input `css` selects.
    fn type_into(&self, css: &str, text: &str) {
        self.runtime
            .block_on(async {
                let input = self.client().find(Locator::Css(css)).await?;
                input.clear().await?;
                input.send_keys(text).await
            })
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Saves a PNG of the window to the screenshots folder; returns its path.
    fn screenshot(&self, name: &str) -> PathBuf {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let png = self
            .runtime
            .block_on(self.client().screenshot())
            .expect("a screenshot");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        println!("screenshot: {}", path.display());
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closing the session ends its Chromium (killing the driver would
        // leave it running).
        if let Some(client) = self.client.take() {
            let _ = self.runtime.block_on(client.close());
        }
    }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `POST /v1/tasks`; the new task's id.
fn start_task(serve: &Serve, token: Option<&str>, workflow: &str, context: Value) -> i64 {
    let mut request = client()
        .post(serve.url("/v1/tasks"))
        .json(&json!({ "workflow": workflow, "context": context }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().unwrap();
    assert_eq!(
        response.status(),
        201,
        "{:?}\nserve log:\n{}",
        response.text(),
        serve.log_tail()
    );
    response.json::<Value>().unwrap()["task_id"]
        .as_i64()
        .unwrap()
}

fn get_task(serve: &Serve, id: i64) -> Value {
    client()
        .get(serve.url(&format!("/v1/tasks/{id}")))
        .send()
        .and_then(|r| r.json())
        .unwrap()
}

/// The `data-state` of each `step-node` in the DAG, by step name.
fn step_states(browser: &Browser) -> Vec<(String, String)> {
    browser
        .testids("step-node")
        .iter()
        .map(|n| {
            let field = |k: &str| n[k].as_str().unwrap_or_default().to_string();
            (field("step"), field("state"))
        })
        .collect()
}

/// The text of `task-status` on a task's page, when it is there.
fn task_status(browser: &Browser) -> Option<String> {
    browser
        .testids("task-status")
        .first()
        .and_then(|n| n["text"].as_str().map(str::to_string))
}

const WAIT: Duration = Duration::from_secs(20);

/// The ids of the rows of the tasks list, with their `data-status`.
fn task_rows(browser: &Browser) -> Vec<(i64, String)> {
    browser
        .testids("task-row")
        .iter()
        .map(|r| {
            (
                r["taskId"].as_str().unwrap_or("0").parse().unwrap_or(0),
                r["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn the_dashboard_shows_a_task_to_the_end_and_cancels_a_running_one() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    std::fs::write(dir.path().join("workflows/quick.yaml"), QUICK_WORKFLOW).unwrap();
    std::fs::write(dir.path().join("workflows/slow.yaml"), SLOW_WORKFLOW).unwrap();
    let endpoint = free_endpoint();
    let serve = Serve::start(dir.path(), &endpoint, None);
    let _worker = Worker::start(&endpoint);
    let driver = ChromeDriver::start(&dir.path().join("chromedriver.log"));
    let browser = Browser::open(&driver, &dir.path().join("profile"));

    // A context the page must show as text, never run as markup; with a
    // right-to-left override, which must not turn the page's own words
    // around, and a line far wider than the page.
    let quick = start_task(
        &serve,
        None,
        "quick",
        json!({
            "order": 7,
            "note": "<img src=x onerror=\"window.injected=1\">",
            "spoof": "\u{202e}evil",
            "long": "y".repeat(20_000),
        }),
    );

    // The quick task's page: every step completed, the task complete, and
    // an attempt bar per attempt on the timeline: one for each step, two
    // for `price` with its backoff between them.
    browser.goto(&serve.url(&format!("/#/tasks/{quick}")));
    let names = ["fetch", "price", "stock", "confirm"];
    browser.wait_for("every step of the quick task completed", WAIT, |b| {
        let states = step_states(b);
        (states.len() == names.len()
            && states.iter().all(|(_, state)| state == "completed")
            && task_status(b).as_deref() == Some("complete"))
        .then_some(())
    });
    let mut drawn: Vec<String> = step_states(&browser).into_iter().map(|(n, _)| n).collect();
    drawn.sort();
    let mut expected: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    expected.sort();
    assert_eq!(drawn, expected, "the DAG draws each step once");
    let bars = browser.wait_for("an attempt bar per attempt", WAIT, |b| {
        let bars = b.testids("attempt-bar");
        (bars.len() == names.len() + 1).then_some(bars)
    });
    for name in names {
        let mut outcomes: Vec<(String, String)> = bars
            .iter()
            .filter(|bar| bar["step"] == name)
            .map(|bar| {
                let field = |k: &str| bar[k].as_str().unwrap_or_default().to_string();
                (field("attempt"), field("outcome"))
            })
            .collect();
        outcomes.sort();
        let expected: Vec<(String, String)> = match name {
            "price" => vec![
                ("1".into(), "retry_wait".into()),
                ("2".into(), "completed".into()),
            ],
            _ => vec![("1".into(), "completed".into())],
        };
        assert_eq!(outcomes, expected, "the attempt bars of {name}: {bars:?}");
    }
    // The step shows its latest error only (none: it completed); the
    // failed attempt's bar says why it failed, from the journal.
    let failed = bars
        .iter()
        .find(|bar| bar["step"] == "price" && bar["attempt"] == "1")
        .unwrap();
    assert!(
        failed["text"]
            .as_str()
            .unwrap()
            .contains("(RetryableError: attempt 1 of price fails on purpose)"),
        "{failed}"
    );
    assert_eq!(browser.testids("timeline").len(), 1);
    assert_eq!(
        browser.testids("backoff").len(),
        1,
        "the backoff of price is drawn"
    );
    let shown = browser.eval(
        "return [...document.querySelectorAll('pre')]
            .some((pre) => pre.textContent.includes('onerror=\\\\\"window.injected=1'));",
        Value::Null,
    );
    assert_eq!(shown, true, "the context is shown as text");
    assert_eq!(
        browser.eval("return window.injected === undefined;", Value::Null),
        true,
        "markup in the context ran"
    );
    let hostile = browser.eval(
        r#"const pre = [...document.querySelectorAll('pre')].find((p) => p.textContent.includes('yyyyyyyy'));
           const card = pre.closest('.card');
           return {
             raw: document.body.textContent.includes('\u202e'),
             escaped: pre.textContent.includes('\\u202eevil'),
             fits: pre.getBoundingClientRect().width <= card.getBoundingClientRect().width,
             scrolls: pre.scrollWidth > pre.clientWidth,
           };"#,
        Value::Null,
    );
    assert_eq!(
        hostile,
        json!({ "raw": false, "escaped": true, "fits": true, "scrolls": true }),
        "the override is shown escaped, and the long line scrolls inside its card"
    );
    browser.screenshot("task-complete");

    // The list: both tasks, the slow one running; the throughput chart.
    let slow = start_task(&serve, None, "slow", json!({ "order": 8 }));
    browser.goto(&serve.url("/"));
    browser.wait_for("both tasks listed", WAIT, |b| {
        let rows = task_rows(b);
        let has = |id: i64, status: &str| rows.contains(&(id, status.to_string()));
        (has(quick, "complete") && has(slow, "running")).then_some(())
    });
    browser.wait_for("the throughput chart with a bar of completed steps", WAIT, |b| {
        let bars = b.eval(
            "return document.querySelectorAll('[data-testid=\"throughput-chart\"] .c-completed').length;",
            Value::Null,
        );
        (bars.as_u64() > Some(0)).then_some(())
    });
    browser.screenshot("tasks-list");

    // The workers page lists the worker.
    browser.goto(&serve.url("/#/workers"));
    browser.wait_for("the worker listed", WAIT, |b| {
        b.testids("worker-row")
            .iter()
            .any(|w| w["workerId"] == "dash-worker")
            .then_some(())
    });

    // The slow task: cancel while `nap` runs, then see it cancelled.
    browser.goto(&serve.url(&format!("/#/tasks/{slow}")));
    browser.wait_for("the nap step running", WAIT, |b| {
        step_states(b)
            .contains(&("nap".to_string(), "running".to_string()))
            .then_some(())
    });
    assert_eq!(task_status(&browser).as_deref(), Some("running"));
    // The button asks first; saying no leaves the task alone.
    browser.click("[data-testid=\"cancel-button\"]");
    let asked = browser.answer_dialog(false);
    assert!(asked.contains(&format!("Cancel task #{slow}?")), "{asked}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get_task(&serve, slow)["cancel_requested"], false);
    browser.click("[data-testid=\"cancel-button\"]");
    browser.answer_dialog(true);
    browser.wait_for("the task cancelled", Duration::from_secs(30), |b| {
        (task_status(b).as_deref() == Some("cancelled")).then_some(())
    });
    browser.wait_for("the step after nap shown cancelled", WAIT, |b| {
        step_states(b)
            .contains(&("after".to_string(), "cancelled".to_string()))
            .then_some(())
    });
    assert!(
        browser.testids("cancel-button").is_empty(),
        "no cancel on an ended task"
    );
    browser.screenshot("task-cancelled");
    let task = get_task(&serve, slow);
    assert_eq!(task["status"], "cancelled", "{task:#}");
    assert_eq!(task["cancel_requested"], true, "{task:#}");
    let after = &task["steps"][1];
    assert_eq!(after["name"], "after");
    assert_eq!(after["state"], "cancelled", "{task:#}");
    assert_eq!(after["attempts"], 0, "never dispatched: {task:#}");
    assert_eq!(get_task(&serve, quick)["status"], "complete");
    drop(browser);
    drop(driver);
    println!("dashboard test took {:?}", started.elapsed());
}

#[test]
fn the_dashboard_asks_for_a_token_when_the_server_has_tokens() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    std::fs::write(dir.path().join("workflows/quick.yaml"), QUICK_WORKFLOW).unwrap();
    let token = "dashboard-test-token-0123456789";
    assert!(token.len() >= tasker_server::api::MIN_TOKEN_CHARS);
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(&tokens, format!("dashboard: {token}\n")).unwrap();
    let endpoint = free_endpoint();
    let serve = Serve::start(dir.path(), &endpoint, Some(&tokens));
    // No worker: the task stays running, which is all the list needs.
    let id = start_task(&serve, Some(token), "quick", json!({}));
    let refused = client().get(serve.url("/v1/tasks")).send().unwrap();
    assert_eq!(refused.status(), 401, "the API itself wants the token");

    let driver = ChromeDriver::start(&dir.path().join("chromedriver.log"));
    let browser = Browser::open(&driver, &dir.path().join("profile"));
    browser.goto(&serve.url("/"));
    browser.wait_for("the token form", WAIT, |b| {
        (!b.testids("token-form").is_empty()).then_some(())
    });
    assert!(
        browser.testids("task-row").is_empty(),
        "no tasks without a token"
    );
    browser.screenshot("token-form");

    // A wrong token is refused and the form comes back saying so.
    let input = "[data-testid=\"token-form\"] input";
    let submit = "[data-testid=\"token-form\"] button[type=\"submit\"]";
    browser.type_into(input, "not-the-token-0123456789");
    browser.click(submit);
    browser.wait_for("the wrong token refused", WAIT, |b| {
        let form = b.testids("token-form");
        form.first()
            .and_then(|f| f["text"].as_str())
            .is_some_and(|text| text.contains("refused"))
            .then_some(())
    });

    browser.type_into(input, token);
    browser.click(submit);
    browser.wait_for("the task listed once the token is in", WAIT, |b| {
        task_rows(b).iter().any(|(row, _)| *row == id).then_some(())
    });
    assert!(browser.testids("token-form").is_empty());
    // The token is kept for the tab: another page needs no new form.
    browser.goto(&serve.url(&format!("/#/tasks/{id}")));
    browser.wait_for("the task's page", WAIT, |b| {
        (task_status(b).as_deref() == Some("running")).then_some(())
    });
}
