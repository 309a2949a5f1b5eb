//! `tasker soak`, small: a few thousand steps through Rust and Python worker
//! processes while one worker is killed with SIGKILL, one is terminated
//! (it drains), one is stopped with SIGSTOP, and the orchestrator process
//! is stopped with SIGSTOP for more than the liveness expiry. The command
//! checks its own records; this test asserts its exit status and that each
//! check printed `ok`.
//!
//! The Python workers need the `tasker_core` extension built into
//! bindings/python/.venv (bindings/python/build.sh; scripts/test.sh builds
//! it before `cargo test`). Without that virtualenv the soak runs Rust
//! workers only, and the test says so loudly.

use std::path::PathBuf;
use std::process::Command;

/// The checks `tasker soak` prints, each on a line `ok   NAME ...`.
const CHECKS: &[&str] = &[
    "results",
    "completed",
    "runs once",
    "reruns",
    "genuine",
    "capacity",
    "losses",
    "drains",
    "workers",
    "orchestrator",
    "rss",
    "chaos",
    "languages",
];

fn venv_python() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join("bindings/python/.venv/bin/python");
    python.exists().then_some(python)
}

/// Runs `tasker soak` with `args` and the workers given; asserts that it
/// exited 0 and that every check printed `ok`; returns its standard output.
fn soak_passes(args: &[&str], workers: &[&str], python: Option<&PathBuf>) -> String {
    let work = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tasker"));
    cmd.arg("soak")
        .args(args)
        .args(["--capacity", "8", "--timeout", "100", "--max-rss-mb", "200"])
        .args(workers)
        .arg("--work-dir")
        .arg(work.path())
        .env_remove("TASKER_SOAK_PYTHON")
        .env("RUST_LOG", "info");
    if let Some(python) = python {
        cmd.arg("--python").arg(python);
    }
    let output = cmd.output().expect("tasker soak runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let explain = || {
        let logs: String = std::fs::read_dir(work.path())
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter(|e| {
                        let name = e.file_name().to_string_lossy().to_string();
                        name.ends_with(".log") && name != "runs.log"
                    })
                    .map(|e| {
                        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                        let tail: Vec<&str> = text.lines().rev().take(40).collect();
                        let tail: Vec<&str> = tail.into_iter().rev().collect();
                        format!("--- {}\n{}\n", e.path().display(), tail.join("\n"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        format!(
            "status {:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n{logs}",
            output.status
        )
    };
    assert!(output.status.success(), "the soak failed:\n{}", explain());
    for check in CHECKS {
        let passed = format!("ok   {check:<13} ");
        let line = stdout.lines().find(|l| l.trim_start().starts_with(&passed));
        assert!(
            line.is_some(),
            "check {check:?} did not pass:\n{}",
            explain()
        );
    }
    assert!(
        stdout.contains(&format!("soak: {} passed, 0 failed", CHECKS.len())),
        "{}",
        explain()
    );
    stdout.into_owned()
}

#[test]
fn a_small_soak_with_every_kind_of_chaos_passes_every_check() {
    let python = venv_python();
    let workers: &[&str] = match &python {
        Some(_) => &["--rust-workers", "2", "--python-workers", "2"],
        None => {
            eprintln!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !!! SKIPPING THE PYTHON WORKERS OF THE SOAK: bindings/python/.venv is\n\
                 !!! missing. Run bindings/python/build.sh (scripts/test.sh does it\n\
                 !!! before cargo test) to soak the Python SDK too.\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            &["--rust-workers", "3", "--python-workers", "0"]
        }
    };
    let stdout = soak_passes(
        &["--steps", "4000", "--seed", "11", "--chaos-events", "6"],
        workers,
        python.as_ref(),
    );
    // The chaos the issue asks for happened: the `chaos` check requires
    // one of each kind; show the figures in the test's output.
    let figures = stdout.lines().find(|l| l.starts_with("figures:"));
    eprintln!("{}", figures.unwrap_or("no figures line"));
    if python.is_none() {
        eprintln!("(soak ran without Python workers: bindings/python/.venv is missing)");
    }
}

/// Eight events in 1,500 steps, with workers quicker to reach than the
/// victims the schedule needs: this run ended with 5 of its 8 events
/// happened (the `chaos` check failed) until the orchestrator held its
/// last tenth of the steps back for them.
#[test]
fn a_run_faster_than_its_chaos_schedule_waits_for_every_planned_event() {
    let stdout = soak_passes(
        &["--steps", "1500", "--seed", "3", "--chaos-events", "8"],
        &["--rust-workers", "3", "--python-workers", "0"],
        None,
    );
    assert!(
        stdout.contains("ok   chaos         8 of 8 events"),
        "{stdout}"
    );
}
