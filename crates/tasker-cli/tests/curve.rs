//! CURVE from the command line: `tasker keygen`, a `tasker run` that
//! requires CURVE with the workers it spawns, and a worker process the
//! orchestrator refuses, which must exit saying why instead of waiting.

mod common;

use common::free_endpoint;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TASKER: &str = env!("CARGO_BIN_EXE_tasker");

fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn keygen(dir: &std::path::Path, name: &str) -> std::process::Output {
    Command::new(TASKER)
        .args(["keygen", name, "--out"])
        .arg(dir)
        .output()
        .unwrap()
}

/// A two-step workflow the built-in `tasker worker` serves.
fn echo_workflow(dir: &std::path::Path) -> String {
    let path = dir.join("echo.yaml");
    std::fs::write(
        &path,
        "name: echo_twice\nsteps:\n  - {name: a, handler: echo}\n  - {name: b, handler: echo, depends_on: [a]}\n",
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

fn tasker(args: &[&str]) -> Command {
    let mut cmd = Command::new(TASKER);
    cmd.current_dir(repo_root())
        .args(args)
        .env("TASKER_ENV", "test")
        .env("TASKER_HEARTBEAT_INTERVAL_MS", "200")
        .env("RUST_LOG", "warn");
    cmd
}

#[test]
fn keygen_writes_a_private_secret_and_a_public_key_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let output = keygen(dir.path(), "worker-1");
    assert!(output.status.success(), "{output:?}");
    let secret = dir.path().join("worker-1.key");
    let public = std::fs::read_to_string(dir.path().join("worker-1.pub")).unwrap();
    assert_eq!(
        std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let key_line = public
        .lines()
        .find_map(|l| l.trim().strip_prefix("public-key = "))
        .expect("a public-key line");
    assert_eq!(key_line.trim_matches('"').len(), 40, "Z85 of 32 bytes");
    assert!(!public.contains("secret-key"), "{public}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(key_line.trim_matches('"')), "{stdout}");

    let before = std::fs::read(&secret).unwrap();
    let again = keygen(dir.path(), "worker-1");
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
    assert_eq!(
        std::fs::read(&secret).unwrap(),
        before,
        "the old key is kept"
    );

    let bad = keygen(dir.path(), "../escape");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid key name"));
}

#[test]
fn a_curve_run_admits_the_workers_it_spawns_with_a_key_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    assert!(keygen(dir.path(), "orchestrator").status.success());
    let authorized = dir.path().join("authorized");
    std::fs::create_dir(&authorized).unwrap();
    let workflow = echo_workflow(dir.path());
    let output = tasker(&["run", &workflow, "--json"])
        .args(["--endpoint", &free_endpoint()])
        .args(["--spawn", &format!("rust={TASKER} worker")])
        .args(["--context", r#"{"card": "4111"}"#])
        .env(
            "TASKER_CURVE_SECRET_KEY_FILE",
            dir.path().join("orchestrator.key"),
        )
        .env("TASKER_CURVE_AUTHORIZED_KEYS_DIR", &authorized)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["status"], "complete", "{report}");
    assert_eq!(report["steps"][1]["output"]["task_context"]["card"], "4111");
    assert_eq!(
        std::fs::read_dir(&authorized).unwrap().count(),
        0,
        "the run's own key was admitted in a copy, not in the operator's folder"
    );
}

#[test]
fn a_worker_process_the_orchestrator_refuses_exits_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    assert!(keygen(dir.path(), "orchestrator").status.success());
    assert!(keygen(dir.path(), "stranger").status.success());
    let authorized = dir.path().join("authorized");
    std::fs::create_dir(&authorized).unwrap();
    let endpoint = free_endpoint();
    let workflow = echo_workflow(dir.path());
    let mut orchestrator = tasker(&["run", &workflow])
        .args(["--endpoint", &endpoint, "--wait", "20"])
        .env(
            "TASKER_CURVE_SECRET_KEY_FILE",
            dir.path().join("orchestrator.key"),
        )
        .env("TASKER_CURVE_AUTHORIZED_KEYS_DIR", &authorized)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let started = Instant::now();
    let worker = tasker(&["worker", "--endpoint", &endpoint])
        .env(
            "TASKER_CURVE_SECRET_KEY_FILE",
            dir.path().join("stranger.key"),
        )
        .env(
            "TASKER_CURVE_SERVER_PUBLIC_KEY_FILE",
            dir.path().join("orchestrator.pub"),
        )
        .output()
        .unwrap();
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
    let stderr = String::from_utf8_lossy(&worker.stderr);
    assert!(!worker.status.success(), "{stderr}");
    assert!(
        stderr.contains("refused this worker's CURVE key"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "it stopped at once, not after a timeout"
    );
}
