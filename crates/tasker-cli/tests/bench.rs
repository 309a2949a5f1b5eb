//! `tasker bench` as a user runs it: every figure it promises is printed,
//! for the worker in this process and as a process of its own, and the run
//! leaves no worker behind. The figures themselves are not judged (a debug
//! build on a shared machine); `tasker bench` itself checks that every step
//! of every run completed.

use std::process::Command;

/// What `tasker bench` with these arguments prints, once it has succeeded.
fn bench_stdout(args: &[&str]) -> String {
    bench_output(args, false).0
}

/// `tasker bench`'s stdout and stderr, once it has succeeded; `threads`:
/// with `TASKER_BENCH_THREADS` set.
fn bench_output(args: &[&str], threads: bool) -> (String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tasker"));
    command.arg("bench").args(args);
    if threads {
        command.env("TASKER_BENCH_THREADS", "1");
    } else {
        command.env_remove("TASKER_BENCH_THREADS");
    }
    let output = command.output().expect("tasker bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "tasker bench failed: {stderr}\n{stdout}"
    );
    (stdout, stderr)
}

#[test]
fn bench_prints_throughput_latency_and_metrics_overhead_for_both_worker_placements() {
    let stdout = bench_stdout(&[
        "--steps",
        "3000",
        "--batch-sizes",
        "1,10",
        "--latency-samples",
        "50",
        "--idle-secs",
        "0",
        "--no-curve",
    ]);
    let header = stdout
        .lines()
        .find(|l| l.starts_with("throughput"))
        .unwrap_or_else(|| panic!("no throughput table:\n{stdout}"));
    for column in [
        "tasker",
        "worker process",
        "echo+JSON",
        "echo+JSON, 2p",
        "raw echo",
    ] {
        assert!(header.contains(column), "no {column:?} column: {header}");
    }
    for batch in ["batch 1 ", "batch 10 "] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(batch))
            .unwrap_or_else(|| panic!("no {batch:?} row:\n{stdout}"));
        // tasker, worker process, echo+JSON in one process and in two,
        // raw echo: five rates; tasker's ratio, the worker process's to
        // each echo+JSON: three.
        assert_eq!(row.matches(" st/s").count(), 5, "{row}");
        assert_eq!(row.matches('%').count(), 3, "{row}");
        assert!(!row.contains("NaN") && !row.contains("inf"), "{row}");
    }
    // The round trips: one row per probe, p50 and p99 each with its
    // multiple of the raw echo's; tasker's two placements also with their
    // multiples of the relayed echo of the same placement.
    let latency: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("single-step round trip"))
        .take_while(|l| !l.is_empty())
        .collect();
    assert!(
        latency.first().is_some_and(|h| h.contains("like for like")),
        "no latency table:\n{stdout}"
    );
    for (probe, multiples) in [
        ("raw echo ", 2),
        ("echo+JSON ", 2),
        ("relayed echo ", 2),
        ("tasker ", 4),
        ("echo, two processes ", 2),
        ("relayed echo, two processes ", 2),
        ("worker process ", 4),
    ] {
        let row = latency
            .iter()
            .find(|l| l.starts_with(probe))
            .unwrap_or_else(|| panic!("no {probe:?} row:\n{stdout}"));
        assert_eq!(row.matches(" us").count(), 2, "{row}");
        assert_eq!(row.matches('x').count(), multiples, "{row}");
        assert!(!row.contains("NaN") && !row.contains("inf"), "{row}");
    }
    assert!(
        !latency.iter().any(|l| l.starts_with("tasker+CURVE")),
        "--no-curve measured CURVE:\n{stdout}"
    );
    assert!(stdout.contains("idle CPU"), "{stdout}");
    // Metrics on and off, each batch size, with their ratio.
    let metrics: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("metrics "))
        .collect();
    assert!(
        metrics.first().is_some_and(|h| h.contains("on/off")),
        "no metrics table:\n{stdout}"
    );
    for batch in ["batch 1 ", "batch 10 "] {
        let row = metrics
            .iter()
            .find(|l| l.starts_with(batch))
            .unwrap_or_else(|| panic!("no metrics {batch:?} row:\n{stdout}"));
        assert_eq!(row.matches(" st/s").count(), 2, "{row}");
        assert_eq!(row.matches(" us/step").count(), 2, "{row}");
        assert!(
            !row.contains("NaN"),
            "the I/O thread's CPU was not found: {row}"
        );
        assert_eq!(row.matches('%').count(), 2, "{row}");
    }
}

/// What the README's "Where the time goes" compares: the CPU per step of
/// tasker's threads beside the echo's, summed, from one run.
#[test]
fn bench_threads_prints_cpu_per_step_by_thread_for_tasker_and_both_echoes() {
    let (_, stderr) = bench_output(
        &[
            "--steps",
            "2000",
            "--batch-sizes",
            "10",
            "--latency-samples",
            "10",
            "--idle-secs",
            "0",
            "--no-curve",
        ],
        true,
    );
    for run in [
        "echo+JSON",
        "echo+JSON, two processes",
        "raw echo",
        "tasker, InProcess",
        "tasker, Process",
    ] {
        let heading = format!("{run}: CPU per step by thread");
        let section: Vec<&str> = stderr
            .lines()
            .skip_while(|l| *l != heading)
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .collect();
        let all = section
            .iter()
            .find(|l| l.trim_start().starts_with("all "))
            .unwrap_or_else(|| panic!("no {heading:?} section with a sum:\n{stderr}"));
        let figure: f64 = all
            .split_whitespace()
            .nth(1)
            .and_then(|f| f.parse().ok())
            .unwrap_or_else(|| panic!("no figure in {all:?}"));
        assert!(figure > 0.0, "{run} used no CPU: {all}");
    }
    // The echo's own thread is told apart from the main thread's.
    assert!(stderr.contains("echo-dealer"), "{stderr}");
}

/// What `--latency-only` promises: tasker's round trip in both placements
/// and the five echoes that price its JSON and its extra hand-overs, each
/// beside the raw echo, at p50 and p99, every figure a number; and the
/// echo's process of its own is gone when the bench is.
#[test]
fn latency_only_prints_tasker_and_each_echo_beside_the_raw_echo() {
    // Every process this run starts inherits the mark.
    let mark = format!(
        "TASKER_BENCH_TEST_RUN={}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    );
    let (name, value) = mark.split_once('=').expect("name=value");
    // Its stderr, which its children share, goes to a file: a child left
    // running would hold a pipe open and hang the test instead of failing it.
    let mut stderr = tempfile::tempfile().expect("a temporary file");
    let output = Command::new(env!("CARGO_BIN_EXE_tasker"))
        .args(["bench", "--latency-only", "--latency-samples", "30"])
        .env(name, value)
        .stderr(stderr.try_clone().expect("a second handle"))
        .output()
        .expect("tasker bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        use std::io::{Read, Seek};
        let mut said = String::new();
        let _ = stderr
            .rewind()
            .and_then(|_| stderr.read_to_string(&mut said));
        panic!("tasker bench failed: {said}\n{stdout}");
    }
    let marked = || -> Vec<String> {
        let mut left = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
            if environ.split(|b| *b == 0).any(|v| v == mark.as_bytes()) {
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                left.push(String::from_utf8_lossy(&cmdline).replace('\0', " "));
            }
        }
        left
    };
    // A child may still be exiting as the bench returns.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !marked().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        marked(),
        Vec::<String>::new(),
        "left running after the bench"
    );
    for percentile in ["p50", "p99"] {
        for subject in [
            "echo+JSON:",
            "relayed echo:",
            "echo, two I/O threads:",
            "echo, two processes:",
            "relayed echo, two processes:",
            "tasker, InProcess:",
            "tasker, Process:",
        ] {
            let prefix = format!("{percentile} {subject}");
            let row = stdout
                .lines()
                .find(|l| l.starts_with(&prefix))
                .unwrap_or_else(|| panic!("no {prefix:?} row:\n{stdout}"));
            let ratio: f64 = row
                .rsplit(' ')
                .next()
                .and_then(|r| r.strip_suffix('x'))
                .and_then(|r| r.parse().ok())
                .unwrap_or_else(|| panic!("no ratio to the raw echo in {row:?}"));
            assert!(ratio.is_finite() && ratio > 0.0, "{row}");
            assert_eq!(row.matches(" us").count(), 2, "{row}");
        }
    }
}

#[test]
fn thread_figures_count_each_threads_sleeps_per_round_trip() {
    let (_, stderr) = bench_output(&["--latency-only", "--latency-samples", "30"], true);
    // The sleeps per round trip of the thread named `thread` in the block
    // headed `label`.
    let sleeps = |label: &str, thread: &str| -> f64 {
        let row = stderr
            .lines()
            .skip_while(|l| *l != format!("{label}: per round trip by thread"))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .find(|l| l.split_whitespace().next() == Some(thread))
            .unwrap_or_else(|| panic!("no {thread:?} under {label:?}:\n{stderr}"));
        let words: Vec<&str> = row.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "sleeps").expect("sleeps");
        words[at - 1].parse().expect("a number of sleeps")
    };
    // The echoing thread waits for each request once.
    let dealer = sleeps("raw echo", "echo-dealer");
    assert!((0.5..=2.0).contains(&dealer), "echo-dealer: {dealer}");
    // The orchestrator's I/O thread waits for each step's result.
    for label in ["tasker, InProcess", "tasker, Process"] {
        let io = sleeps(label, "tasker-orchestr");
        assert!((0.5..=4.0).contains(&io), "{label}: {io}");
    }
}
