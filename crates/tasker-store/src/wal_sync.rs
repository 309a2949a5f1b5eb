//! Durability for the SQLite writer, off its path: group commit's second
//! stage.
//!
//! The writer's connection commits with `synchronous=NORMAL`: a COMMIT
//! writes the group's frames to the WAL file but does not wait for the
//! disk. The writer hands the group's answers here and goes on with the
//! next group; this thread syncs the WAL file (`fdatasync`) and only then
//! answers every group committed before the sync began. A caller is thus
//! answered only once its transitions are on disk, as with
//! `synchronous=FULL`, but the disk's flush no longer stalls the writer,
//! and one flush covers every group committed meanwhile.
//!
//! Why syncing the file is enough: SQLite appends a commit's frames with
//! plain writes before COMMIT returns, so a later sync of the file covers
//! them. SQLite reuses the WAL from its start only after a checkpoint has
//! copied every frame into the database file, and in NORMAL mode a
//! checkpoint syncs the WAL before copying and the database after; the
//! file is never deleted while the writer's connection is open.
//!
//! Other connections may read a group's changes a few milliseconds before
//! they are durable; a power cut in that window loses them, but no caller
//! was told they were committed, so nothing was acted on.

use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::writer::{Outcome, WriteError};

/// A caller's answer, held until its group is durable.
pub(crate) type Answer = (
    oneshot::Sender<Result<Outcome, WriteError>>,
    Result<Outcome, WriteError>,
);

/// The thread that syncs the WAL file and answers callers.
pub(crate) struct WalSyncer {
    queue: Option<mpsc::Sender<Vec<Answer>>>,
    thread: Option<JoinHandle<()>>,
}

impl WalSyncer {
    /// Starts syncing the WAL of the database file `db_path`.
    pub(crate) fn start(db_path: PathBuf) -> std::io::Result<WalSyncer> {
        let mut wal = db_path.into_os_string();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        let (queue, groups) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("tasker-store-sync".into())
            .spawn(move || run(wal, groups))?;
        Ok(WalSyncer {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Answers a committed group's callers once it is durable.
    pub(crate) fn answer_when_durable(&self, answers: Vec<Answer>) {
        let Some(queue) = &self.queue else { return };
        if let Err(mpsc::SendError(answers)) = queue.send(answers) {
            // The thread is gone: nobody can vouch for these any more.
            for (reply, _) in answers {
                let _ = reply.send(Err(WriteError::Failed(
                    "the store's WAL sync thread stopped".into(),
                )));
            }
        }
    }

    /// Answers what is pending, then stops.
    pub(crate) fn finish(mut self) {
        self.queue = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for WalSyncer {
    fn drop(&mut self) {
        // Closing the queue lets the thread answer what it holds and end.
        self.queue = None;
    }
}

fn run(wal: PathBuf, groups: mpsc::Receiver<Vec<Answer>>) {
    let mut file: Option<File> = None;
    while let Ok(first) = groups.recv() {
        // Everything handed over so far was committed before this sync.
        let mut pending = vec![first];
        pending.extend(groups.try_iter());
        let synced = sync(&mut file, &wal);
        if let Err(e) = &synced {
            tracing::error!(wal = %wal.display(), error = %e, "syncing the SQLite WAL failed");
            // Reopen next time, in case the handle is what failed.
            file = None;
        }
        for (reply, answer) in pending.into_iter().flatten() {
            let answer = match &synced {
                Ok(()) => answer,
                Err(e) => Err(WriteError::Failed(format!(
                    "committed, but syncing it to disk failed: {e}"
                ))),
            };
            let _ = reply.send(answer);
        }
    }
}

fn sync(file: &mut Option<File>, wal: &PathBuf) -> std::io::Result<()> {
    if file.is_none() {
        *file = Some(File::open(wal)?);
    }
    match file {
        Some(file) => file.sync_data(),
        None => Ok(()),
    }
}
