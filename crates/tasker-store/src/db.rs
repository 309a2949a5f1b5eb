//! Which database a store runs on: parsing its URL, connecting, migrating.

use std::path::{Path, PathBuf};

use sqlx::postgres::PgConnectOptions;
use sqlx::{PgPool, SqlitePool};

use crate::{postgres, sqlite, Backend, StoreError};

/// The connection pool of either dialect. Everything that runs the same
/// SQL on both goes through [`with_pool!`].
#[derive(Clone, Debug)]
pub(crate) enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to whichever pool `$db` holds; the body
/// is compiled once per dialect.
macro_rules! with_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($pool) => $body,
            $crate::db::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

/// What a store URL names.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Target {
    SqliteFile(PathBuf),
    Postgres,
}

pub(crate) fn parse(url: &str) -> Result<Target, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Target::Postgres);
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| StoreError::BadUrl(url.to_string()))?;
    // An in-memory database would lose every task on exit, and each pooled
    // connection would see a different one.
    if path.is_empty() || path.starts_with(":memory:") {
        return Err(StoreError::BadUrl(url.to_string()));
    }
    Ok(Target::SqliteFile(PathBuf::from(path)))
}

/// The file a `sqlite:` path names, its links followed, so that every
/// name of one database takes one node lock and one WAL: a second `serve`
/// given a symbolic link to a store in use got past the lock (taken by
/// the path as written), took the store over, and then failed syncing a
/// WAL that SQLite keeps beside the link's target. A database with more
/// than one hard link is refused: SQLite keeps its WAL beside the name it
/// was opened by, so two names of one file give two WALs, and each
/// server's writes are lost to the other.
pub(crate) fn sqlite_file(path: &Path) -> Result<PathBuf, StoreError> {
    let io =
        |what: &str, e: std::io::Error| StoreError::File(format!("{what} {}: {e}", path.display()));
    match std::fs::canonicalize(path) {
        Ok(real) => {
            use std::os::unix::fs::MetadataExt;
            let links = std::fs::metadata(&real)
                .map_err(|e| io("reading", e))?
                .nlink();
            if links > 1 {
                return Err(StoreError::File(format!(
                    "the SQLite store {} has {links} hard links: SQLite keeps its WAL beside \
                         the name it is opened by, so two names of one database give two WALs and \
                         lose writes; remove the other links (a symbolic link is fine)",
                    real.display()
                )));
            }
            Ok(real)
        }
        // Not made yet: its folder's links followed, when there is one.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                return Ok(path.to_path_buf());
            };
            match std::fs::canonicalize(if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            }) {
                Ok(folder) => Ok(folder.join(name)),
                Err(_) => Ok(path.to_path_buf()),
            }
        }
        Err(e) => Err(io("resolving", e)),
    }
}

/// How the writer opens its own connection.
#[derive(Clone, Debug)]
pub(crate) enum Connector {
    /// The database file.
    Sqlite(PathBuf),
    Postgres(Box<PgConnectOptions>),
}

impl Db {
    /// Connects to the database `url` names and brings its schema up to
    /// date; returns the readers' pool and how to open the writer's
    /// connection.
    pub(crate) async fn open(url: &str) -> Result<(Db, Connector), StoreError> {
        let opened = match parse(url)? {
            Target::SqliteFile(path) => {
                let path = sqlite_file(&path)?;
                let pool = sqlite::connect(&path).await?;
                (Db::Sqlite(pool), Connector::Sqlite(path))
            }
            Target::Postgres => {
                let (pool, options) = postgres::connect(url).await?;
                (Db::Postgres(pool), Connector::Postgres(Box::new(options)))
            }
        };
        let migrator = match &opened.0 {
            Db::Sqlite(_) => sqlx::migrate!("./migrations/sqlite"),
            Db::Postgres(_) => sqlx::migrate!("./migrations/postgres"),
        };
        let known = migrator.iter().map(|m| m.version).max().unwrap_or(0);
        let before = opened.0.schema_version().await;
        let run = with_pool!(&opened.0, pool => migrator.run(pool).await);
        run.map_err(|e| match e {
            sqlx::migrate::MigrateError::VersionMissing(applied) => {
                StoreError::NewerSchema { applied, known }
            }
            sqlx::migrate::MigrateError::VersionMismatch(version) => {
                StoreError::ForeignSchema { version }
            }
            other => StoreError::Migrate(other),
        })?;
        // Said at each start, so that an upgrade's log shows whether it
        // changed the store.
        match before {
            None => tracing::info!(schema = known, "created the store's schema"),
            Some(v) if v < known => {
                tracing::info!(from = v, to = known, "migrated the store's schema")
            }
            Some(v) => tracing::info!(schema = v, "the store's schema is up to date"),
        }
        Ok(opened)
    }

    /// The newest migration applied to the store, or `None` before any.
    async fn schema_version(&self) -> Option<i64> {
        const SQL: &str = "SELECT MAX(version) FROM _sqlx_migrations WHERE success";
        // No table yet: a new store. (A failed read means the same here;
        // the migration that follows says what is really wrong.)
        with_pool!(self, pool => sqlx::query_scalar::<_, Option<i64>>(SQL)
            .fetch_one(pool)
            .await
            .ok()
            .flatten())
    }

    pub(crate) fn backend(&self) -> Backend {
        match self {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// Waits for every connection to be returned, then closes them.
    pub(crate) async fn close(&self) {
        with_pool!(self, pool => pool.close().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_sqlite_file_or_a_postgres_server() {
        assert_eq!(
            parse("sqlite:tasker-data/tasker.db").unwrap(),
            Target::SqliteFile("tasker-data/tasker.db".into())
        );
        assert_eq!(
            parse("sqlite:///var/lib/tasker.db").unwrap(),
            Target::SqliteFile("/var/lib/tasker.db".into())
        );
        assert_eq!(
            parse("sqlite://rel/t.db").unwrap(),
            Target::SqliteFile("rel/t.db".into())
        );
        assert_eq!(parse("postgres://u@h/db").unwrap(), Target::Postgres);
        assert_eq!(parse("postgresql://u@h/db").unwrap(), Target::Postgres);
        for bad in [
            "mysql://h/db",
            "tasker.db",
            "sqlite:",
            "sqlite::memory:",
            "",
        ] {
            assert!(
                matches!(parse(bad), Err(StoreError::BadUrl(ref u)) if u == bad),
                "{bad}"
            );
        }
    }
}
