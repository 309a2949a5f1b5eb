//! Worker processes that a command starts and must stop: `bench-workers`
//! and `run --spawn`. A child is started as `sh -c COMMAND` with the
//! orchestrator's endpoint in `TASKER_ENDPOINT`, stopped with SIGTERM (so it
//! drains), and killed if it lingers or if the command leaves early.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};

/// `NAME=COMMAND`, as `--worker` and `--spawn` take it.
pub fn parse_named_command(spec: &str) -> Result<(String, String), String> {
    match spec.split_once('=') {
        Some((name, command)) if !name.trim().is_empty() && !command.trim().is_empty() => {
            Ok((name.trim().to_string(), command.to_string()))
        }
        _ => Err(format!("expected NAME=COMMAND, got {spec:?}")),
    }
}

/// CPU time (user + system, all threads) used so far by process `pid`
/// (`self` for this one), from `/proc` at its 10 ms resolution.
pub fn cpu_time_of(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name, which may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // /proc reports in USER_HZ, which Linux fixes at 100 for user space.
    Some(Duration::from_millis(ticks * 10))
}

/// A running worker process; dropped, it is killed.
pub struct WorkerProcess {
    child: std::process::Child,
    name: String,
    log: Option<PathBuf>,
}

impl WorkerProcess {
    /// Starts `command` connected to `endpoint`, with `env` added. Its output
    /// goes to `log` when given, else stdout is discarded and stderr shared.
    pub fn spawn(
        name: &str,
        command: &str,
        endpoint: &str,
        env: &[(&str, String)],
        log: Option<&Path>,
    ) -> Result<Self> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("exec {command}"))
            .env("TASKER_ENDPOINT", endpoint)
            // Lifecycle logs of every worker would bury the command's output.
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null());
        for (key, value) in env {
            cmd.env(key, value);
        }
        match log {
            Some(path) => {
                let file = std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?;
                cmd.stdout(file.try_clone()?).stderr(file);
            }
            None => {
                cmd.stdout(Stdio::null());
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting worker {name}: {command:?}"))?;
        Ok(Self {
            child,
            name: name.to_string(),
            log: log.map(Path::to_path_buf),
        })
    }

    /// The file its output goes to, if it was given one.
    pub fn log(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// The name it was given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time it has used so far (user + system, all threads), from
    /// `/proc` at its 10 ms resolution; `None` once it has exited.
    pub fn cpu_time(&self) -> Option<Duration> {
        cpu_time_of(&self.pid().to_string())
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace`. Fails if it
    /// had to be killed; otherwise returns how it exited.
    pub fn stop(mut self, grace: Duration) -> Result<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        let signal = |name: &str| {
            let _ = Command::new("kill").args([name, pid.as_str()]).status();
        };
        if self.exited().is_none() {
            signal("-TERM");
        }
        let (exited, exit_seen) = std::sync::mpsc::channel::<()>();
        let (killed, status) = std::thread::scope(|scope| {
            let killer = scope.spawn(move || {
                let timed_out = exit_seen.recv_timeout(grace).is_err();
                if timed_out {
                    signal("-KILL");
                }
                timed_out
            });
            let status = self.child.wait();
            let _ = exited.send(());
            (killer.join().unwrap_or(true), status)
        });
        ensure!(
            !killed,
            "worker {} (pid {pid}) ignored SIGTERM for {grace:?}",
            self.name
        );
        Ok(status?)
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_named_command;

    #[test]
    fn named_commands_need_a_name_and_a_command() {
        assert_eq!(
            parse_named_command("rust=tasker worker --handlers noop"),
            Ok(("rust".into(), "tasker worker --handlers noop".into()))
        );
        assert!(parse_named_command("=cmd").is_err());
        assert!(parse_named_command("name").is_err());
        assert!(parse_named_command("name=  ").is_err());
    }
}
