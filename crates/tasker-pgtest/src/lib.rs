//! Throwaway PostgreSQL servers for tests, and free loopback ports
//! ([`free_port`]) for servers a test stops and starts again.
//!
//! [`PgServer::start`] runs Debian's PostgreSQL binaries
//! (`/usr/lib/postgresql/*/bin`) on a data directory of its own in a
//! temporary folder, listening on a free port of `127.0.0.1`, and stops it
//! and removes the folder when dropped. Nothing assumes a server is already
//! running. The binaries come from Debian's `postgresql` package, which
//! `scripts/setup.sh` installs; without them `start` fails (it does not
//! skip), saying so.
//!
//! `initdb` and `postgres` refuse to run as root, so when the tests run as
//! root both run as the `postgres` user that Debian's package creates.
//!
//! A server kept in a `static` is never dropped; a small watchdog process,
//! started with each server, stops it and removes its folder once the test
//! process has exited, however it exited.
//!
//! ```no_run
//! let server = tasker_pgtest::PgServer::start().unwrap();
//! let url = server.fresh_database().unwrap(); // postgres://postgres@127.0.0.1:PORT/db_1
//! # let _ = url;
//! ```

use std::fs;
use std::io;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use tempfile::TempDir;

/// Where Debian installs each PostgreSQL version's server binaries.
const DEBIAN_PG_ROOT: &str = "/usr/lib/postgresql";

/// The database [`PgServer::url`] names, created by [`PgServer::start`].
const DEFAULT_DATABASE: &str = "tasker";

/// Why a server could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum PgTestError {
    /// The PostgreSQL server binaries are not installed.
    #[error(
        "PostgreSQL server binaries (initdb, postgres, pg_ctl) not found under {DEBIAN_PG_ROOT}/*/bin: \
         install Debian's `postgresql` package (scripts/setup.sh does)"
    )]
    NotInstalled,
    /// Running as root, but there is no `postgres` user to run the server as.
    #[error(
        "running as root and there is no `postgres` user to run PostgreSQL as: \
         install Debian's `postgresql` package (scripts/setup.sh does), which creates it"
    )]
    NoPostgresUser,
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// A PostgreSQL program failed.
    #[error("{what} failed ({status}): {output}")]
    Command {
        /// What was being done.
        what: String,
        /// Its exit status.
        status: String,
        /// What it printed (the end of it).
        output: String,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> PgTestError {
    let what = what.into();
    move |source| PgTestError::Io { what, source }
}

/// A running PostgreSQL server with its own data directory and port;
/// stopped (fast shutdown) and removed when dropped.
#[derive(Debug)]
pub struct PgServer {
    dir: Option<TempDir>,
    bin: PathBuf,
    port: u16,
    as_postgres_user: bool,
    watchdog: Option<(Child, ChildStdin)>,
    databases: AtomicU32,
    /// The `-c` settings it was started with, to start it again alike.
    settings: Vec<(String, String)>,
}

impl PgServer {
    /// Starts a server with PostgreSQL's default settings (durable commits
    /// included) and creates the database [`url`](Self::url) names.
    pub fn start() -> Result<PgServer, PgTestError> {
        Self::start_with(&[])
    }

    /// [`start`](Self::start), with server settings (`-c name=value`) on
    /// top of the defaults, e.g. `[("fsync", "off")]`.
    pub fn start_with(settings: &[(&str, &str)]) -> Result<PgServer, PgTestError> {
        let bin = find_bin_dir()?;
        let as_postgres_user = effective_uid()? == 0;
        let dir = tempfile::Builder::new()
            .prefix("tasker-pgtest-")
            .tempdir()
            .map_err(io_error("creating a temporary folder"))?;
        if as_postgres_user {
            let (uid, gid) = postgres_user()?;
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .map_err(io_error("giving the temporary folder to the postgres user"))?;
        }
        let mut server = PgServer {
            dir: Some(dir),
            bin,
            port: 0,
            as_postgres_user,
            watchdog: None,
            databases: AtomicU32::new(0),
            settings: settings
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
        };
        server.watchdog = Some(server.spawn_watchdog()?);
        server.initdb()?;
        server.start_postgres()?;
        server.create_database(DEFAULT_DATABASE)?;
        Ok(server)
    }

    /// The port the server listens on (on `127.0.0.1`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of the database created at start.
    pub fn url(&self) -> String {
        self.database_url(DEFAULT_DATABASE)
    }

    /// The URL of database `name` on this server (which may not exist).
    pub fn database_url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> Result<String, PgTestError> {
        let mut command = Command::new(self.bin.join("createdb"));
        command
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .arg(name);
        run(&mut command, &format!("creating database {name}"))?;
        Ok(self.database_url(name))
    }

    /// Runs `sql` with `psql` as the superuser, connected to database
    /// `database`; its output.
    ///
    /// ```no_run
    /// let pg = tasker_pgtest::PgServer::start()?;
    /// pg.psql("postgres", "ALTER DATABASE tasker SET default_transaction_read_only = on")?;
    /// # Ok::<(), tasker_pgtest::PgTestError>(())
    /// ```
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, PgTestError> {
        let mut command = Command::new(self.bin.join("psql"));
        command
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", database, "-X", "-q", "-t", "-A"])
            .args(["-v", "ON_ERROR_STOP=1", "-c", sql]);
        let output = run(&mut command, "running SQL")?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Creates a database with a name not used before on this server and
    /// returns its URL: one per test keeps tests apart on a shared server.
    pub fn fresh_database(&self) -> Result<String, PgTestError> {
        let n = self.databases.fetch_add(1, Ordering::Relaxed) + 1;
        self.create_database(&format!("db_{n}"))
    }

    fn folder(&self) -> &Path {
        self.dir
            .as_ref()
            .map(TempDir::path)
            .unwrap_or_else(|| Path::new("/nonexistent"))
    }

    fn data_dir(&self) -> PathBuf {
        self.folder().join("data")
    }

    /// A command running `program` from the server's bin folder, as the
    /// `postgres` user when we are root.
    fn server_command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut command = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        // The postgres user may not be allowed into our working directory.
        command.current_dir(self.folder());
        command
    }

    /// Starts a process that waits for our end of its stdin to close (when
    /// we drop the server, or when this process exits in any way), then
    /// stops the server and removes its folder. It runs in its own process
    /// group so that a Ctrl-C aimed at the tests does not kill it first.
    fn spawn_watchdog(&self) -> Result<(Child, ChildStdin), PgTestError> {
        let stop = self.server_command("pg_ctl");
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(r#"read -r _; "$@" >/dev/null 2>&1; rm -rf -- "$TASKER_PGTEST_DIR""#)
            .arg("sh")
            .arg(stop.get_program())
            .args(stop.get_args())
            .args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(self.data_dir())
            .env("TASKER_PGTEST_DIR", self.folder())
            .current_dir(self.folder())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let mut child = command
            .spawn()
            .map_err(io_error("starting the PostgreSQL watchdog (sh)"))?;
        let stdin = child.stdin.take().ok_or_else(|| PgTestError::Io {
            what: "starting the PostgreSQL watchdog".into(),
            source: io::Error::other("no stdin pipe"),
        })?;
        Ok((child, stdin))
    }

    fn initdb(&self) -> Result<(), PgTestError> {
        let mut command = self.server_command("initdb");
        command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            // A throwaway cluster need not survive a power cut while it is created.
            .arg("--no-sync");
        run(&mut command, "initdb")?;
        Ok(())
    }

    fn start_postgres(&mut self) -> Result<(), PgTestError> {
        let mut last_error = None;
        // Another process may take the free port between our probe and the
        // server's bind: try a few.
        for _ in 0..5 {
            let port = free_port().map_err(io_error("finding a free port on 127.0.0.1"))?;
            match self.pg_ctl_start(port) {
                Ok(()) => {
                    self.port = port;
                    return Ok(());
                }
                Err(e @ PgTestError::Command { .. }) => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or(PgTestError::NotInstalled))
    }

    fn pg_ctl_start(&self, port: u16) -> Result<(), PgTestError> {
        let log = self.folder().join("postgres.log");
        let mut options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            self.folder().display()
        );
        for (name, value) in &self.settings {
            options.push_str(&format!(" -c {name}={value}"));
        }
        let mut command = self.server_command("pg_ctl");
        command
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(self.data_dir())
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(options);
        match run(&mut command, "starting postgres") {
            Ok(_) => Ok(()),
            Err(PgTestError::Command {
                what,
                status,
                output,
            }) => {
                let log_tail = fs::read_to_string(&log)
                    .map(|text| tail(&text))
                    .unwrap_or_default();
                Err(PgTestError::Command {
                    what,
                    status,
                    output: format!("{output}\nserver log:\n{log_tail}"),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Stops the server as an administrator would (fast shutdown: open
    /// connections are cut) and keeps its data, for tests of a database
    /// that goes away under its clients. [`start_again`](Self::start_again)
    /// brings it back.
    pub fn stop_for_now(&mut self) -> Result<(), PgTestError> {
        let mut command = self.server_command("pg_ctl");
        command
            .args(["stop", "-m", "fast", "-w", "-t", "60", "-D"])
            .arg(self.data_dir());
        run(&mut command, "stopping postgres").map(drop)
    }

    /// Starts a server stopped by [`stop_for_now`](Self::stop_for_now)
    /// again, on the same port and with the same settings.
    pub fn start_again(&mut self) -> Result<(), PgTestError> {
        self.pg_ctl_start(self.port)
    }

    fn stop(&mut self) {
        if self.port == 0 {
            return;
        }
        let mut command = self.server_command("pg_ctl");
        command
            .args(["stop", "-m", "fast", "-w", "-t", "60", "-D"])
            .arg(self.data_dir());
        // Nothing to do about a failure here: the watchdog stops it anyway.
        let _ = run(&mut command, "stopping postgres");
        self.port = 0;
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        if let Some((mut child, stdin)) = self.watchdog.take() {
            drop(stdin);
            let _ = child.wait();
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

/// The highest PostgreSQL version with all the server binaries.
fn find_bin_dir() -> Result<PathBuf, PgTestError> {
    let entries = match fs::read_dir(DEBIAN_PG_ROOT) {
        Ok(entries) => entries,
        Err(_) => return Err(PgTestError::NotInstalled),
    };
    let mut versions: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version: Option<Vec<u32>> = name.split('.').map(|p| p.parse().ok()).collect();
            let bin = entry.path().join("bin");
            let complete = ["initdb", "postgres", "pg_ctl", "createdb"]
                .iter()
                .all(|program| bin.join(program).is_file());
            match version {
                Some(version) if complete => Some((version, bin)),
                _ => None,
            }
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or(PgTestError::NotInstalled)
}

/// Our effective user id, from `/proc/self/status` (`Uid: real effective ...`).
fn effective_uid() -> Result<u32, PgTestError> {
    let status =
        fs::read_to_string("/proc/self/status").map_err(io_error("reading /proc/self/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|uid| uid.parse().ok())
        .ok_or_else(|| PgTestError::Io {
            what: "reading our user id".into(),
            source: io::Error::other("no Uid line in /proc/self/status"),
        })
}

/// The `postgres` user's uid and gid, from `/etc/passwd`.
fn postgres_user() -> Result<(u32, u32), PgTestError> {
    let passwd = fs::read_to_string("/etc/passwd").map_err(io_error("reading /etc/passwd"))?;
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 4 || fields[0] != "postgres" {
                return None;
            }
            Some((fields[2].parse().ok()?, fields[3].parse().ok()?))
        })
        .ok_or(PgTestError::NoPostgresUser)
}

/// A TCP port of 127.0.0.1 that nothing listens on, below the kernel's
/// ephemeral range, for a server a test may stop and start again on it.
///
/// A port from `bind(127.0.0.1:0)` comes from the ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`), and so does the local end of
/// every outgoing connection: with tests side by side opening both, a
/// server restarted on such a port can find it taken in the moment it was
/// free (CI saw a restarted `tasker serve` fail to bind so). Below that
/// range only a program binding a fixed port can take it. Each process
/// walks its own stretch of ports, from a start its process id picks, so
/// test processes running at once rarely try the same ones; a port found
/// bound is skipped.
///
/// ```
/// let port = tasker_pgtest::free_port().unwrap();
/// let endpoint = format!("tcp://127.0.0.1:{port}");
/// # let _ = endpoint;
/// ```
pub fn free_port() -> io::Result<u16> {
    const LOWEST: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_start = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_start.saturating_sub(LOWEST);
    if span < 1_000 {
        // A machine whose ephemeral range starts this low leaves no room:
        // take what the kernel hands out.
        return Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port());
    }
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = u16::try_from(LOWEST + offset).expect("below the ephemeral range");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrNotAvailable,
        "every port of 127.0.0.1 below the ephemeral range is in use",
    ))
}

/// Runs `command` to completion; a failure carries the end of its output.
fn run(command: &mut Command, what: &str) -> Result<Output, PgTestError> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(io_error(format!(
            "{what}: running {:?}",
            command.get_program()
        )))?;
    if output.status.success() {
        return Ok(output);
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Err(PgTestError::Command {
        what: what.to_string(),
        status: output.status.to_string(),
        output: tail(&text),
    })
}

/// The last lines of a program's output, enough to see why it failed.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    #[test]
    fn a_server_accepts_connections_until_dropped_and_leaves_nothing_behind() {
        let server = PgServer::start().expect("start PostgreSQL");
        let port = server.port();
        let folder = server.folder().to_path_buf();
        assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(folder.join("data/PG_VERSION").is_file());

        let url = server.fresh_database().expect("create a database");
        assert_eq!(url, format!("postgres://postgres@127.0.0.1:{port}/db_1"));
        // The same name twice is PostgreSQL's error, reported with its message.
        let err = server.create_database("db_1").unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");

        drop(server);
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
        assert!(!folder.exists());
    }
}
