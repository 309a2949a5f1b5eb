//! `tasker run` end to end: real `tasker worker` processes, spawned by the
//! command or started beside it, and the exit status and JSON report a
//! script would check.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::free_endpoint;
use serde_json::Value;

const TASKER: &str = env!("CARGO_BIN_EXE_tasker");

fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tasker_run() -> Command {
    let mut cmd = Command::new(TASKER);
    cmd.current_dir(repo_root())
        .arg("run")
        .env("TASKER_ENV", "test")
        .env("TASKER_HEARTBEAT_INTERVAL_MS", "200")
        .env("TASKER_LIVENESS", "3")
        .env("RUST_LOG", "warn");
    cmd
}

/// `tasker run WORKFLOW` on a free port, with one `tasker worker` spawned.
fn tasker_run_with_worker(workflow: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = tasker_run();
    cmd.arg(workflow)
        .args(["--endpoint", &free_endpoint()])
        .args(["--spawn", &format!("rust={TASKER} worker")]);
    cmd
}

fn workflow_file(yaml: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    file.write_all(yaml.as_bytes()).unwrap();
    file
}

fn report(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}); stderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn step<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {report}"))
}

#[test]
fn a_completed_task_exits_0_with_a_json_report() {
    let workflow = workflow_file(
        r#"
name: chain
steps:
  - {name: fetch, handler: echo}
  - name: flaky
    handler: flaky
    depends_on: [fetch]
    handler_config: {succeed_on: 2}
    retry: {max_attempts: 3, initial_ms: 20}
  - {name: report, handler: echo, depends_on: [flaky, fetch]}
"#,
    );
    let output = tasker_run_with_worker(workflow.path())
        .args([
            "--context",
            r#"{"order":{"id":7,"items":["ä","✓"]}}"#,
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = report(&output);
    assert_eq!(report["status"], "complete");
    assert_eq!(step(&report, "flaky")["attempts"], 2);
    let out = &step(&report, "report")["output"];
    assert_eq!(out["task_context"]["order"]["items"][1], "✓");
    assert_eq!(out["previous_results"]["flaky"]["attempt"], 2);
    assert_eq!(out["previous_results"]["fetch"]["step_name"], "fetch");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("retrying  flaky after attempt 1"),
        "{stderr}"
    );
}

#[test]
fn the_permanent_failure_example_blocks_dependents_and_exits_1() {
    let output = tasker_run_with_worker("examples/workflows/permanent_failure.yaml")
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let report = report(&output);
    assert_eq!(report["status"], "failed");
    assert_eq!(step(&report, "charge_card")["outcome"], "failed");
    assert_eq!(step(&report, "charge_card")["attempts"], 1);
    assert_eq!(step(&report, "charge_card")["error"]["retryable"], false);
    for name in ["ship", "email_receipt"] {
        assert_eq!(step(&report, name)["outcome"], "blocked");
        assert_eq!(step(&report, name)["blocked_by"], "charge_card");
    }
    assert_eq!(step(&report, "audit_log")["outcome"], "completed");
}

#[test]
fn the_summary_table_names_every_step() {
    let output = tasker_run_with_worker("examples/workflows/permanent_failure.yaml")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("declined_payment (task"), "{stdout}");
    assert!(stdout.contains("FAILED"), "{stdout}");
    for line in [
        "charge_card",
        "ship",
        "email_receipt",
        "audit_log",
        "load_order",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(line)),
            "{line} missing:\n{stdout}"
        );
    }
}

#[test]
fn an_invalid_workflow_exits_2_naming_step_and_field() {
    let workflow = workflow_file(
        "name: bad\nsteps:\n  - {name: a, handler: echo, retry: {max_attempts: 0}}\n",
    );
    let output = tasker_run().arg(workflow.path()).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("step `a`, field `retry.max_attempts`: must be at least 1"),
        "{stderr}"
    );

    let output = tasker_run()
        .arg("examples/workflows/permanent_failure.yaml")
        .args(["--context", "{not json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--context is not valid JSON"));

    // JSON, but not an object: refused as `serve` refuses it, before any
    // handler sees it.
    let output = tasker_run()
        .arg("examples/workflows/permanent_failure.yaml")
        .args(["--context", "[1]"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("--context must be a JSON object (`{\"order_id\": 7}`), not an array"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn missing_workers_are_named_and_exit_2() {
    let output = tasker_run()
        .arg("examples/workflows/permanent_failure.yaml")
        .args(["--endpoint", &free_endpoint(), "--wait", "0.3"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no worker serves echo, fail_permanent, sleep"),
        "{stderr}"
    );
}

#[test]
fn a_worker_killed_mid_task_leaves_the_task_to_complete_on_another() {
    let endpoint = free_endpoint();
    let workflow = workflow_file(
        r#"
name: survive
defaults:
  timeout_ms: 10000
  retry: {max_attempts: 3, initial_ms: 50}
steps:
  - {name: s1, handler: sleep, handler_config: {ms: 2500}}
  - {name: s2, handler: sleep, handler_config: {ms: 2500}}
  - {name: s3, handler: sleep, handler_config: {ms: 2500}}
  - {name: s4, handler: sleep, handler_config: {ms: 2500}}
  - {name: join, handler: echo, depends_on: [s1, s2, s3, s4]}
"#,
    );
    let run = tasker_run()
        .arg(workflow.path())
        .args(["--json", "--endpoint", &endpoint, "--wait", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let worker = |id: &str| {
        Command::new(TASKER)
            .args(["worker", "--endpoint", &endpoint, "--worker-id", id])
            .args(["--capacity", "2", "--handlers", "sleep,echo"])
            .env("TASKER_RECONNECT_INITIAL_MS", "50")
            .env_remove("TASKER_CONFIG")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut doomed = worker("doomed");
    let mut survivor = worker("survivor");
    // Two slots each: the four sleeps are split between them. Kill one
    // while its two are running (workers connect in milliseconds; the
    // margin is for a loaded CI machine).
    std::thread::sleep(Duration::from_millis(1200));
    doomed.kill().unwrap();
    doomed.wait().unwrap();

    let started = Instant::now();
    let output = run.wait_with_output().unwrap();
    survivor.kill().unwrap();
    survivor.wait().unwrap();
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = report(&output);
    assert_eq!(report["status"], "complete");
    let retried: Vec<&Value> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["attempts"] == 2)
        .collect();
    assert!(!retried.is_empty(), "no step was retried: {report}");
    for s in &retried {
        assert_eq!(s["worker_id"], "survivor", "{s}");
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("WorkerLost"), "{stderr}");
    assert_eq!(step(&report, "join")["worker_id"], "survivor");
}

/// Runs a two-step task with a spawned worker, sends `signal` once the
/// first step has started (to the whole process group with `group`, as a
/// terminal's Ctrl-C does), and returns the run's output and stderr.
fn signalled_run(signal: &str, group: bool) -> (Output, String) {
    use std::os::unix::process::CommandExt;
    let workflow = workflow_file(
        r#"
name: long
steps:
  - {name: first, handler: sleep, handler_config: {ms: 800}}
  - {name: second, handler: echo, depends_on: [first]}
"#,
    );
    let mut run = tasker_run_with_worker(workflow.path())
        .arg("--json")
        // A group of its own, led by the run: a terminal's foreground job.
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Progress lines arrive on stderr; signal once `first` has started.
    let stderr = run.stderr.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains("started   first") => break,
            Ok(_) => continue,
            Err(e) => panic!("`first` never started: {e}"),
        }
    }
    let target = if group {
        // What a terminal's Ctrl-C reaches: the foreground group. The
        // spawned worker must not be in it.
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", run.id())).unwrap();
        let mut pids = children.split_whitespace().peekable();
        assert!(pids.peek().is_some(), "the run spawned no worker");
        for pid in pids {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            // After the command's closing parenthesis: state, ppid, pgrp.
            let pgrp = stat
                .rsplit(')')
                .next()
                .unwrap()
                .split_whitespace()
                .nth(2)
                .unwrap();
            assert_ne!(
                pgrp,
                run.id().to_string(),
                "worker {pid} is in the run's process group"
            );
        }
        format!("-{}", run.id())
    } else {
        run.id().to_string()
    };
    let status = Command::new("kill")
        .args([signal, "--", &target])
        .status()
        .unwrap();
    assert!(status.success());
    let output = run.wait_with_output().unwrap();
    (output, reader.join().unwrap())
}

fn assert_cancelled_after_the_running_step(output: &Output, stderr: &str) {
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cancelling"), "{stderr}");
    let report = report(output);
    assert_eq!(report["status"], "cancelled");
    assert_eq!(step(&report, "first")["outcome"], "completed");
    assert_eq!(step(&report, "second")["outcome"], "cancelled");
    assert_eq!(step(&report, "second")["attempts"], 0);
}

#[test]
fn ctrl_c_cancels_the_task_after_running_steps_finish() {
    let (output, stderr) = signalled_run("-INT", false);
    assert_cancelled_after_the_running_step(&output, &stderr);
}

#[test]
fn a_terminal_ctrl_c_reaches_the_run_only_and_its_spawned_worker_is_stopped_once_cleanly() {
    // The worker was in the terminal's group: it got the SIGINT too, began
    // to drain by itself, and the run's SIGTERM was its second signal.
    let (output, stderr) = signalled_run("-INT", true);
    assert_cancelled_after_the_running_step(&output, &stderr);
    assert!(!stderr.contains("warning: worker"), "{stderr}");
}

#[test]
fn sigterm_and_sighup_cancel_the_run_and_stop_its_spawned_worker() {
    for signal in ["-TERM", "-HUP"] {
        let (output, stderr) = signalled_run(signal, false);
        assert_cancelled_after_the_running_step(&output, &stderr);
        // The worker ran `first`; its id carries its pid: it is gone.
        let report = report(&output);
        let worker = step(&report, "first")["worker_id"]
            .as_str()
            .unwrap()
            .to_string();
        let pid = worker.split('-').nth(1).unwrap();
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "worker {worker} outlived the run ({signal})"
        );
        assert!(!stderr.contains("warning: worker"), "{stderr}");
    }
}

#[test]
fn a_handler_no_worker_serves_fails_once_the_spawned_workers_registered_naming_the_nearest() {
    let workflow = workflow_file(
        r#"
name: signup
steps:
  - {name: create_account, handler: echo}
  - {name: send_welcome, handler: flakey, depends_on: [create_account]}
"#,
    );
    let started = Instant::now();
    let output = tasker_run()
        .arg(workflow.path())
        .args(["--endpoint", &free_endpoint()])
        .args([
            "--spawn",
            &format!("rust={TASKER} worker --handlers echo,flaky,sleep"),
        ])
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    // Not the whole --wait (60 s): the only spawned worker has registered.
    assert!(
        elapsed < Duration::from_secs(20),
        "took {elapsed:?}: {stderr}"
    );
    assert!(
        stderr.contains("no worker serves flakey (did you mean flaky?)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("the registered workers serve echo, flaky, sleep"),
        "{stderr}"
    );
}

/// `tasker run` with TMPDIR pointed at an empty folder of its own.
fn tasker_run_in(tmp: &std::path::Path) -> Command {
    let mut cmd = tasker_run();
    cmd.env("TMPDIR", tmp);
    cmd
}

fn files_in(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

#[test]
fn spawned_workers_output_is_shown_with_their_name_and_nothing_is_left_in_tmp() {
    let tmp = tempfile::tempdir().unwrap();
    let workflow = workflow_file("name: hi\nsteps:\n  - {name: a, handler: echo}\n");
    let worker = format!(
        "greeter=sh -c 'echo hello from the worker; echo a warning >&2; exec {TASKER} worker'"
    );
    let output = tasker_run_in(tmp.path())
        .arg(workflow.path())
        .args(["--endpoint", &free_endpoint(), "--spawn", &worker, "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(report(&output)["status"], "complete");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines.contains(&"[greeter] hello from the worker"),
        "{stderr}"
    );
    assert!(lines.contains(&"[greeter] a warning"), "{stderr}");
    assert_eq!(files_in(tmp.path()), Vec::<std::path::PathBuf>::new());

    // A worker that dies before the task starts: its last words, then why
    // the run stops; still nothing left behind.
    let output = tasker_run_in(tmp.path())
        .arg(workflow.path())
        .args(["--endpoint", &free_endpoint()])
        .args(["--spawn", "broken=sh -c 'echo no such module >&2; exit 3'"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let said = stderr.find("[broken] no such module");
    let error = stderr.find("error: worker broken exited with exit status: 3");
    assert!(
        said.is_some() && error.is_some() && said < error,
        "{stderr}"
    );
    assert_eq!(files_in(tmp.path()), Vec::<std::path::PathBuf>::new());
}

#[test]
fn a_taken_endpoint_is_named_once_with_what_to_do() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("tcp://{}", taken.local_addr().unwrap());
    let store = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", store.path().join("t.db").display());
    let batch = workflow_file(r#"{"steps":[{"step_id":1,"handler_class":"echo"}]}"#);
    let batch = batch.path().to_str().unwrap();
    let commands: [(&str, Vec<&str>); 3] = [
        ("run", vec!["examples/workflows/permanent_failure.yaml"]),
        ("dispatch", vec![batch]),
        (
            "serve",
            vec!["--api-listen", "127.0.0.1:0", "--store", &store],
        ),
    ];
    for (command, args) in commands {
        let output = Command::new(TASKER)
            .current_dir(repo_root())
            .arg(command)
            .args(args)
            .args(["--endpoint", &endpoint])
            .env_remove("TASKER_CONFIG")
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{command}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "error: cannot bind {endpoint}: Address already in use;"
            )),
            "{command}: {stderr}"
        );
        assert_eq!(stderr.matches("in use").count(), 1, "{command}: {stderr}");
        assert!(
            stderr.contains("pass --endpoint tcp://127.0.0.1:0 for a free port"),
            "{command}: {stderr}"
        );
    }
}

#[test]
fn a_worker_the_run_did_not_start_is_named_when_it_joins() {
    let endpoint = free_endpoint();
    let mut leftover = Command::new(TASKER)
        .args(["worker", "--endpoint", &endpoint, "--worker-id", "leftover"])
        .env("TASKER_RECONNECT_INITIAL_MS", "50")
        .env_remove("TASKER_CONFIG")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    // It connects within milliseconds of the run binding the endpoint; the
    // task lasts two seconds, so it joins before the run ends, whether it
    // registers before the spawned worker or during the task.
    let workflow = workflow_file(
        "name: hi\nsteps:\n  - {name: a, handler: sleep, handler_config: {ms: 2000}}\n",
    );
    let output = tasker_run()
        .arg(workflow.path())
        .args(["--endpoint", &endpoint])
        .args(["--spawn", &format!("rust={TASKER} worker")])
        .output()
        .unwrap();
    leftover.kill().unwrap();
    leftover.wait().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let warning = format!(
        "warning: worker leftover (rust, pid {}) joined, but this run did not start it",
        leftover.id()
    );
    assert!(stderr.contains(&warning), "{stderr}");
    assert_eq!(stderr.matches("joined, but").count(), 1, "{stderr}");
}
