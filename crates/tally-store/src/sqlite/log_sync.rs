//! The write-ahead log's fsync, off the writer's serial path.
//!
//! The write connection runs with `synchronous=NORMAL`: its COMMIT writes the round's frames
//! into the log and returns without waiting for the disk. The writer then goes on with the
//! next round while this module's thread syncs the log, once for every round committed since
//! its last sync, and only then answers those rounds' callers. Three rules keep what
//! `synchronous=FULL` promised:
//!
//! 1. A caller is answered `Ok` only once a sync of the log that began after its round's
//!    COMMIT returned has succeeded: the frames were written by then, so they are on disk.
//! 2. Nothing is shown before it is durable. SQLite shows a round to other connections from
//!    inside its COMMIT, before this sync, so a read (`SqliteBackend::read`), once its
//!    transaction is over and before it returns anything, waits for the sync of every round
//!    whose COMMIT had begun by then ([`LogSync::wait_durable`]). A round that begins its
//!    COMMIT later cannot be in that read's snapshot, which was taken earlier. Jobs of later
//!    rounds do see an unsynced round, but their own answers wait for a later sync, which
//!    covers it too.
//! 3. A failed sync leaves the log's state on disk unknown: the rounds waiting for it fail,
//!    and so does every later commit and every read that would have to wait, until the
//!    process restarts and SQLite recovers the log from what the disk holds (PostgreSQL
//!    stops on a failed fsync for the same reason).
//!
//! A read that has to wait waits for the COMMIT in progress (which, when the log has grown
//! past the writer's checkpoint threshold, includes SQLite's own checkpoint) and the sync
//! after it: about a millisecond or two here, seldom more.
//!
//! Other processes on the same file are outside these rules. One that reads (`tally ledger
//! verify` beside a running server) can see a round a power cut would take back; one that
//! writes (`tally api-keys create`) runs a backend of its own, which reports its write only
//! once synced, but a server beside it may read (and honour) the row a moment before that.

use super::{lock, tell, RoundEnd, Signal, SyncFile};
use crate::StoreError;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};

/// Callers of rounds, waiting for their sync.
type Members = Vec<mpsc::SyncSender<Signal>>;

pub(super) struct LogSync {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    /// Rounds whose COMMIT has begun, counted from 1.
    begun: AtomicU64,
    /// Every round up to this one is on disk.
    synced: AtomicU64,
    state: Mutex<State>,
    /// To the sync thread: a round committed, or the backend is closing.
    work: Condvar,
    /// To readers: `synced` moved, or a sync failed.
    progress: Condvar,
}

#[derive(Default)]
struct State {
    /// Rounds whose COMMIT has returned (or failed): the next sync covers them.
    committed: u64,
    /// The callers of the committed rounds not yet synced.
    waiting: Members,
    failure: Option<String>,
    closing: bool,
    /// Reads waiting in `wait_durable` (for tests).
    readers_waiting: usize,
    /// Callers answered `Ok` so far (for tests), counted before any of a sync's are told.
    answered_ok: usize,
}

impl LogSync {
    /// Starts the sync thread; `sync` makes the log durable.
    pub(super) fn start(sync: SyncFile) -> Result<LogSync, StoreError> {
        let shared = Arc::new(Shared {
            begun: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            progress: Condvar::new(),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("sqlite-log-sync".into())
                .spawn(move || shared.run(sync))
                .map_err(|error| StoreError::Database(format!("cannot start the log's sync thread: {error}")))?
        };
        Ok(LogSync { shared, thread: Some(thread) })
    }

    /// The fsync of `log`, SQLite's write-ahead log opened by its name. fdatasync makes a
    /// file's written data durable whichever descriptor wrote it; the file stays the same
    /// while the write connection is open (SQLite deletes it only when the last connection
    /// closes, and nothing here truncates or replaces it).
    /// Called before a round's COMMIT: the round's number, or why nothing may commit.
    pub(super) fn begin_commit(&self) -> Result<u64, String> {
        if let Some(failure) = &lock(&self.shared.state).failure {
            return Err(failure.clone());
        }
        Ok(self.shared.begun.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// The round's COMMIT returned: its callers are answered after the next sync.
    pub(super) fn committed(&self, round: u64, members: Members) {
        let mut state = lock(&self.shared.state);
        state.committed = round;
        state.waiting.extend(members);
        self.shared.work.notify_one();
    }

    /// The round's COMMIT failed (its callers were told): nothing of it is shown, but reads
    /// that began meanwhile count it, so the next sync passes it too.
    pub(super) fn commit_failed(&self, round: u64) {
        lock(&self.shared.state).committed = round;
        self.shared.work.notify_one();
    }

    /// Rule 2: called once a read's transaction is over; returns once every round whose
    /// COMMIT had begun is on disk.
    pub(super) fn wait_durable(&self) -> Result<(), StoreError> {
        let shared = &*self.shared;
        let round = shared.begun.load(Ordering::SeqCst);
        if shared.synced.load(Ordering::SeqCst) >= round {
            return Ok(());
        }
        let mut state = lock(&shared.state);
        state.readers_waiting += 1;
        let outcome = loop {
            if shared.synced.load(Ordering::SeqCst) >= round {
                break Ok(());
            }
            if let Some(failure) = &state.failure {
                break Err(StoreError::Database(failure.clone()));
            }
            state = shared.progress.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        };
        state.readers_waiting -= 1;
        outcome
    }

    #[cfg(test)]
    pub(super) fn readers_waiting(&self) -> usize {
        lock(&self.shared.state).readers_waiting
    }

    #[cfg(test)]
    pub(super) fn rounds_committed(&self) -> u64 {
        lock(&self.shared.state).committed
    }

    #[cfg(test)]
    pub(super) fn answered_ok(&self) -> usize {
        lock(&self.shared.state).answered_ok
    }
}

impl Shared {
    /// The sync thread: one sync for every round committed since the last, then their answers.
    fn run(&self, mut sync: SyncFile) {
        let mut state = lock(&self.state);
        let mut covered = 0;
        loop {
            while state.committed == covered && !state.closing {
                state = self.work.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            if state.committed == covered {
                return;
            }
            let through = state.committed;
            let mut members = std::mem::take(&mut state.waiting);
            covered = through;
            if let Some(failure) = state.failure.clone() {
                // Built on rounds a failed sync may have lost: never answered Ok.
                tell(&mut members, RoundEnd::Failed(failure));
                continue;
            }
            drop(state);
            // A panic is a failed sync: the thread must go on answering, or every caller waits.
            let synced = panic::catch_unwind(AssertUnwindSafe(&mut sync))
                .unwrap_or_else(|_| Err(io::Error::other("the sync panicked")));
            state = lock(&self.state);
            match synced {
                Ok(()) => {
                    self.synced.store(through, Ordering::SeqCst);
                    state.answered_ok += members.len();
                    tell(&mut members, RoundEnd::Committed);
                }
                Err(error) => {
                    let failure = format!("the write-ahead log could not be synced to disk: {error}");
                    tracing::error!(%failure, "no write will commit until the server restarts");
                    state.failure = Some(failure.clone());
                    tell(&mut members, RoundEnd::Failed(failure));
                }
            }
            self.progress.notify_all();
        }
    }
}

impl Drop for LogSync {
    /// Syncs what is committed and answers it, then stops the thread.
    fn drop(&mut self) {
        lock(&self.shared.state).closing = true;
        self.shared.work.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
