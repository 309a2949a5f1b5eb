//! `tasker` raises its soft open-files limit to the hard one: under the
//! usual soft limit of 1024, a thousand idle connections to the
//! orchestrator's port would use up its descriptors (README, Security).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TASKER: &str = env!("CARGO_BIN_EXE_tasker");

/// The soft and hard "Max open files" of process `pid`.
fn open_files_limits(pid: u32) -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut figures = line["Max open files".len()..].split_whitespace();
    Some((figures.next()?.parse().ok()?, figures.next()?.parse().ok()?))
}

#[test]
fn tasker_raises_its_soft_open_files_limit_to_the_hard_one() {
    // A soft limit well under the hard one, as a login shell's often is.
    let mut child = Command::new("sh")
        .args([
            "-c",
            r#"ulimit -Sn 256 && exec "$0" worker --endpoint tcp://127.0.0.1:1"#,
            TASKER,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh starts");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    let limits = loop {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let limits = open_files_limits(pid);
        let raised = limits.is_some_and(|(soft, _)| soft != 256);
        if (comm.trim() == "tasker" && raised) || Instant::now() > deadline {
            break limits;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    let (soft, hard) = limits.expect("the worker's limits are readable");
    assert!(
        hard > 256,
        "the hard limit ({hard}) leaves nothing to raise"
    );
    assert_eq!(soft, hard, "soft limit raised to the hard one");
}
