//! Worker processes that a command starts and must stop: `bench-workers`
//! and `run --spawn`. A child is started as `sh -c COMMAND` with the
//! orchestrator's endpoint in `TASKER_ENDPOINT`, stopped with SIGTERM (so it
//! drains), and killed if it lingers or if the command leaves early.

use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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

/// The parent of process `pid`, from `/proc`.
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the parenthesised command name: the state, then the parent.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Which of `roots` process `pid` is, or descends from (a command may start
/// its worker through a wrapper: `uv run`, `npx`, `bundle exec`).
pub fn descends_from(pid: u32, roots: &[u32]) -> Option<u32> {
    let mut pid = pid;
    // Bounded: a pid reused while we walk could make a loop.
    for _ in 0..64 {
        if roots.contains(&pid) {
            return Some(pid);
        }
        match parent_of(pid) {
            Some(parent) if parent > 1 && parent != pid => pid = parent,
            _ => return None,
        }
    }
    None
}

/// The shell line that runs `command` in the shell's place, so that the
/// signals this process sends reach the worker itself. `exec` takes no
/// leading `NAME=value` assignments (`exec: SLEEP=2: not found`): a command
/// that starts with them is run through `env`, which takes them and execs
/// the rest.
fn exec_line(command: &str) -> String {
    let first = command.split_whitespace().next().unwrap_or_default();
    let assignment = first.split_once('=').is_some_and(|(name, _)| {
        name.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    });
    if assignment {
        format!("exec env {command}")
    } else {
        format!("exec {command}")
    }
}

/// The process group a worker process runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// This process's: a Ctrl-C at the terminal ends it with this process,
    /// which need not handle signals (the benchmarks).
    Shared,
    /// One of its own: a Ctrl-C at the terminal reaches this process only,
    /// which must stop the worker itself ([`WorkerProcess::stop`]) on every
    /// signal that ends it. In the terminal's group a worker of `tasker
    /// run` got the SIGINT too, began to drain by itself, and took the
    /// run's SIGTERM as a second signal (Python printed a
    /// KeyboardInterrupt, Node died of it).
    Own,
}

/// Where a worker process's output goes.
pub enum Output<'a> {
    /// Its stdout is discarded, its stderr is this process's.
    Quiet,
    /// Both to this file.
    File(&'a Path),
    /// Each line of both to this process's stderr, prefixed `[NAME] `.
    Prefixed,
}

/// A running worker process; dropped, it is killed.
pub struct WorkerProcess {
    child: std::process::Child,
    name: String,
    log: Option<PathBuf>,
    /// The threads copying its output to stderr (`Output::Prefixed`).
    copiers: Vec<JoinHandle<()>>,
}

impl WorkerProcess {
    /// Starts `command` connected to `endpoint`, with `env` added, its
    /// output going where `output` says, in the process group `group` says.
    pub fn spawn(
        name: &str,
        command: &str,
        endpoint: &str,
        env: &[(&str, String)],
        output: Output<'_>,
        group: Group,
    ) -> Result<Self> {
        let mut cmd = Command::new("sh");
        if group == Group::Own {
            cmd.process_group(0);
        }
        cmd.arg("-c")
            .arg(exec_line(command))
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
        let mut log = None;
        match output {
            Output::File(path) => {
                let file = std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?;
                cmd.stdout(file.try_clone()?).stderr(file);
                log = Some(path.to_path_buf());
            }
            Output::Quiet => {
                cmd.stdout(Stdio::null());
            }
            Output::Prefixed => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
                // Python buffers a piped stdout until exit: its prints
                // would arrive all at once, or never if it is killed.
                if std::env::var_os("PYTHONUNBUFFERED").is_none() {
                    cmd.env("PYTHONUNBUFFERED", "1");
                }
            }
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting worker {name}: {command:?}"))?;
        let mut copiers = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            copiers.push(copy_lines(name, stdout)?);
        }
        if let Some(stderr) = child.stderr.take() {
            copiers.push(copy_lines(name, stderr)?);
        }
        Ok(Self {
            child,
            name: name.to_string(),
            log,
            copiers,
        })
    }

    /// The file its output goes to, if it was given one.
    pub fn log(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// Where its output went, for a message about it: ` (log: FILE)`, or
    /// nothing when it was copied to stderr (it is above) or discarded.
    pub fn output_note(&self) -> String {
        match &self.log {
            Some(log) => format!(" (log: {})", log.display()),
            None => String::new(),
        }
    }

    /// Waits, up to `within`, until its output has all been copied to
    /// stderr: the last lines of a worker that exited come before what this
    /// process says about it. (A process it left behind may hold the pipe
    /// open; then what is copied later comes later.)
    pub fn flush_output(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.copiers.iter().any(|c| !c.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for copier in std::mem::take(&mut self.copiers) {
            if copier.is_finished() {
                let _ = copier.join();
            } else {
                self.copiers.push(copier);
            }
        }
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

    /// SIGTERM, then SIGKILL if it has not exited after `grace`; its last
    /// output is copied before this returns. Fails if it had to be killed;
    /// otherwise returns how it exited.
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
        self.flush_output(Duration::from_secs(1));
        ensure!(
            !killed,
            "worker {} (pid {pid}) ignored SIGTERM for {grace:?}",
            self.name
        );
        Ok(status?)
    }
}

/// Copies each line `from` gives to stderr as `[NAME] line`, on a thread
/// of its own, until the pipe closes.
fn copy_lines(name: &str, from: impl std::io::Read + Send + 'static) -> Result<JoinHandle<()>> {
    let prefix = format!("[{name}] ");
    // On a terminal a status line may stand where this line goes: clear it
    // (it is redrawn on its next tick).
    let clear = std::io::stderr().is_terminal();
    std::thread::Builder::new()
        .name(format!("output of {name}"))
        .spawn(move || {
            let mut from = std::io::BufReader::new(from);
            let mut line = Vec::new();
            loop {
                line.clear();
                match from.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                let mut err = std::io::stderr().lock();
                if clear {
                    let _ = write!(err, "\r\x1b[2K");
                }
                let _ = writeln!(err, "{prefix}{text}");
            }
        })
        .context("starting a thread for a worker's output")
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
    use super::{descends_from, parse_named_command};

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

    #[test]
    fn a_command_may_start_with_variable_assignments_as_in_a_shell() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        for command in [
            "GREETING=hi A_1=x printenv GREETING",
            "printenv TASKER_ENDPOINT",
        ] {
            let mut child = super::WorkerProcess::spawn(
                "w",
                command,
                "tcp://127.0.0.1:9",
                &[],
                super::Output::File(&log),
                super::Group::Shared,
            )
            .unwrap();
            let status = child.child.wait().unwrap();
            let out = std::fs::read_to_string(&log).unwrap();
            assert!(status.success(), "{command}: {status} {out}");
            assert!(
                out == "hi\n" || out == "tcp://127.0.0.1:9\n",
                "{command}: {out}"
            );
        }
    }

    #[test]
    fn a_process_descends_from_itself_and_its_ancestors() {
        let me = std::process::id();
        let parent = super::parent_of(me).unwrap();
        assert_eq!(descends_from(me, &[me]), Some(me));
        assert_eq!(descends_from(me, &[parent]), Some(parent));
        assert_eq!(descends_from(parent, &[me]), None);
    }
}
