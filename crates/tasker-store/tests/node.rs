//! One `tasker serve` per store: the node lock, on a SQLite file and on a
//! real PostgreSQL server.

use tasker_store::{NodeLock, StoreError};

fn in_use(result: Result<NodeLock, StoreError>) -> String {
    match result {
        Err(e @ StoreError::InUse(_)) => e.to_string(),
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a second lock was given"),
    }
}

#[tokio::test]
async fn a_sqlite_store_is_locked_once_and_free_again_when_the_holder_goes() {
    let dir = tempfile::tempdir().unwrap();
    // The folder does not exist yet, as on a first start.
    let url = format!("sqlite:{}", dir.path().join("data/tasks.db").display());
    let first = NodeLock::acquire(&url).await.unwrap();
    let refused = in_use(NodeLock::acquire(&url).await);
    assert!(
        refused.contains("tasks.db-serve.lock")
            && refused.contains(&format!("pid {}", std::process::id())),
        "names the lock file and its holder: {refused}"
    );
    assert!(refused.contains("another tasker serve"), "{refused}");
    drop(first);
    acquire_once_free(&url).await;
}

#[tokio::test]
async fn a_sqlite_store_named_through_a_link_takes_the_same_lock_and_a_hard_link_is_refused() {
    // A second serve given a symbolic link got past the lock (taken by the
    // path as written), took the store over and failed; a hard link gave
    // two servers one database with two WALs.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tasks.db");
    let url = format!("sqlite:{}", db.display());
    let store = tasker_store::Store::open(&url).await.unwrap();
    let first = NodeLock::acquire(&url).await.unwrap();
    let link = dir.path().join("link.db");
    std::os::unix::fs::symlink(&db, &link).unwrap();
    let via_link = format!("sqlite:{}", link.display());
    let refused = in_use(NodeLock::acquire(&via_link).await);
    assert!(refused.contains("tasks.db-serve.lock"), "{refused}");
    drop(first);
    // Through the link, the store opens and writes as itself.
    let lock = acquire_once_free(&via_link).await;
    drop(lock);
    store.close().await;
    let again = tasker_store::Store::open(&via_link).await.unwrap();
    again.close().await;

    let hard = dir.path().join("hard.db");
    std::fs::hard_link(&db, &hard).unwrap();
    for url in [url, format!("sqlite:{}", hard.display())] {
        let error = match NodeLock::acquire(&url).await {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a store with two hard links was locked: {url}"),
        };
        assert!(error.contains("2 hard links"), "{error}");
        // Said as what it is, not as sqlx's "error with configuration".
        assert!(!error.contains("configuration"), "{error}");
    }
}

/// The lock, once the holder dropped it: a flock goes with the last copy
/// of its descriptor (a process another test thread is starting holds one
/// until its exec), PostgreSQL frees a session lock once it sees the
/// connection close.
async fn acquire_once_free(url: &str) -> NodeLock {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match NodeLock::acquire(url).await {
            Ok(lock) => return lock,
            Err(StoreError::InUse(_)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("never free again: {e}"),
        }
    }
}

#[tokio::test]
async fn a_postgres_store_is_locked_once_and_taken_again_after_the_server_restarts() {
    let mut pg = tasker_pgtest::PgServer::start().expect("a throwaway PostgreSQL starts");
    let url = pg.url();
    let mut first = NodeLock::acquire(&url).await.unwrap();
    let refused = in_use(NodeLock::acquire(&url).await);
    assert!(refused.contains("advisory lock"), "{refused}");
    assert!(
        refused.contains("backend pid"),
        "names the holder: {refused}"
    );

    // A restart drops every connection, the lock's with them.
    pg.stop_for_now().unwrap();
    pg.start_again().unwrap();
    first.ensure().await.expect("taken again");
    in_use(NodeLock::acquire(&url).await);
    first.ensure().await.expect("still held");

    drop(first);
    acquire_once_free(&url).await;
}

/// Two handles on one store, the second taking it over from the first:
/// the first's writes are refused from then on and it is told why, the
/// second's go through.
async fn taking_over_fences_the_first_writer(url: &str) {
    use std::time::Duration;
    use tasker_store::Store;
    let lease = Duration::from_secs(60);
    let first = Store::open(url).await.unwrap();
    let epoch = first.take_over().await.unwrap();
    first
        .renew_leases("node", lease)
        .await
        .expect("the first writes");

    let second = Store::open(url).await.unwrap();
    assert!(second.take_over().await.unwrap() > epoch);
    let refused = first.renew_leases("node", lease).await.unwrap_err();
    assert!(
        matches!(refused, StoreError::Fenced(_))
            && refused.to_string().contains("took this store over"),
        "{refused}"
    );
    let why = tokio::time::timeout(Duration::from_secs(5), first.fenced())
        .await
        .expect("the first is told");
    assert!(why.contains("epoch"), "{why}");
    // For good: it does not take the store back by writing again.
    assert!(matches!(
        first.renew_leases("node", lease).await,
        Err(StoreError::Fenced(_))
    ));
    second
        .renew_leases("node", lease)
        .await
        .expect("the second writes");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), second.fenced())
            .await
            .is_err(),
        "the second is not fenced"
    );
    first.close().await;
    second.close().await;
}

#[tokio::test]
async fn a_sqlite_store_taken_over_by_another_server_refuses_the_first_ones_writes() {
    let dir = tempfile::tempdir().unwrap();
    taking_over_fences_the_first_writer(&format!(
        "sqlite:{}",
        dir.path().join("tasks.db").display()
    ))
    .await;
}

#[tokio::test]
async fn a_postgres_store_taken_over_by_another_server_refuses_the_first_ones_writes() {
    let pg = tasker_pgtest::PgServer::start().expect("a throwaway PostgreSQL starts");
    taking_over_fences_the_first_writer(&pg.url()).await;
}

#[tokio::test]
async fn a_postgres_server_that_cannot_be_reached_is_named_with_its_address() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://app:s3cret@127.0.0.1:{port}/tasker");
    for error in [
        NodeLock::acquire(&url).await.err().unwrap(),
        tasker_store::Store::open(&url).await.err().unwrap(),
    ] {
        let message = error.to_string();
        assert!(
            message.contains(&format!(
                "cannot connect to PostgreSQL at 127.0.0.1:{port}/tasker"
            )),
            "{message}"
        );
        assert!(!message.contains("s3cret"), "{message}");
        assert!(error.is_unavailable(), "{message}");
    }
}
