//! One `tasker serve` per store. Every server on a store runs under the
//! store's one orchestrator id and claims the unfinished tasks of that id,
//! so a second server started by mistake (a unit file and a shell, say)
//! would drive the first one's tasks too. [`NodeLock`] refuses it: a
//! `flock` on a file beside a SQLite database, a session advisory lock on a
//! PostgreSQL server. Both go with the process however it ends, so a
//! server killed with SIGKILL can be started again at once.

use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

use crate::db::{parse, sqlite_file, Target};
use crate::StoreError;

/// The advisory lock key of a tasker store on PostgreSQL ("tasker" and 1).
const PG_LOCK_KEY: i64 = 0x7461_736b_6572_0001;

/// Held while this process serves its store; released when dropped.
///
/// ```no_run
/// # async fn demo() -> Result<(), tasker_store::StoreError> {
/// let lock = tasker_store::NodeLock::acquire("sqlite:tasker-data/tasker.db").await?;
/// // ... serve ...
/// drop(lock);
/// # Ok(()) }
/// ```
pub struct NodeLock {
    held: Held,
}

enum Held {
    /// The open lock file, `flock`ed: held, not read.
    File(#[allow(dead_code)] std::fs::File),
    /// The connection that holds the advisory lock, with how to open
    /// another if it is lost.
    Postgres {
        conn: Option<PgConnection>,
        options: Box<PgConnectOptions>,
    },
}

impl NodeLock {
    /// Takes the lock of the store `url` names, or
    /// [`StoreError::InUse`] naming who holds it.
    pub async fn acquire(url: &str) -> Result<NodeLock, StoreError> {
        let held = match parse(url)? {
            Target::SqliteFile(path) => Held::File(lock_file(&sqlite_file(&path)?)?),
            Target::Postgres => {
                let options = PgConnectOptions::from_str(url)?
                    .application_name("tasker serve (node lock)")
                    .disable_statement_logging();
                let conn = pg_lock(&options).await?;
                Held::Postgres {
                    conn: Some(conn),
                    options: Box::new(options),
                }
            }
        };
        Ok(NodeLock { held })
    }

    /// Makes sure the lock is still held, taking it again if its
    /// PostgreSQL connection was lost (the server restarted): call it now
    /// and then. An error says the lock is not held now, and why.
    pub async fn ensure(&mut self) -> Result<(), StoreError> {
        let Held::Postgres { conn, options } = &mut self.held else {
            return Ok(());
        };
        if let Some(c) = conn.as_mut() {
            if c.ping().await.is_ok() {
                return Ok(());
            }
        }
        *conn = None;
        *conn = Some(pg_lock(options).await?);
        tracing::info!("took the store's node lock again after its connection was lost");
        Ok(())
    }
}

/// The lock file of the database at `db`: `DB-serve.lock`, beside it.
fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push("-serve.lock");
    db.with_file_name(name)
}

fn lock_file(db: &Path) -> Result<std::fs::File, StoreError> {
    let path = lock_path(db);
    let io =
        |what: &str, e: std::io::Error| StoreError::File(format!("{what} {}: {e}", path.display()));
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| io("creating the folder of", e))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io("opening", e))?;
    // SAFETY: `flock` takes a descriptor this function owns open (`file`)
    // and plain flags; it touches no memory of ours.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if !locked {
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::WouldBlock {
            return Err(io("locking", error));
        }
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        let holder = if holder.is_empty() {
            String::new()
        } else {
            // Ours says `pid N`; anything else is shown only in part.
            format!(" by {}", holder.chars().take(64).collect::<String>())
        };
        return Err(StoreError::InUse(format!(
            "{} is locked{holder}",
            path.display()
        )));
    }
    // Who holds it, for the message of the next one refused.
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = writeln!(file, "pid {}", std::process::id());
    Ok(file)
}

async fn pg_lock(options: &PgConnectOptions) -> Result<PgConnection, StoreError> {
    let mut conn = PgConnection::connect_with(options)
        .await
        .map_err(|e| crate::postgres::connect_error(options, e))?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(PG_LOCK_KEY)
        .fetch_one(&mut conn)
        .await?;
    if locked {
        return Ok(conn);
    }
    // The key's halves are the lock's classid and objid in pg_locks.
    let holder: Option<(i32, Option<String>)> = sqlx::query_as(
        "SELECT a.pid, a.client_addr::text FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
         WHERE l.locktype = 'advisory' AND l.granted \
         AND l.classid::bigint = $1 AND l.objid::bigint = $2 LIMIT 1",
    )
    .bind(PG_LOCK_KEY >> 32)
    .bind(PG_LOCK_KEY & 0xffff_ffff)
    .fetch_optional(&mut conn)
    .await
    .unwrap_or(None);
    let _ = conn.close().await;
    let holder = match holder {
        Some((pid, Some(addr))) => format!(" (its connection: backend pid {pid}, from {addr})"),
        Some((pid, None)) => format!(" (its connection: backend pid {pid}, local socket)"),
        None => String::new(),
    };
    Err(StoreError::InUse(format!(
        "the database's advisory lock {PG_LOCK_KEY} is held{holder}"
    )))
}
