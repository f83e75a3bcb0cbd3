//! The embedded SQLite backend: one write connection and a small pool of read connections,
//! all in WAL mode, and a transaction is on disk before the response: the write-ahead log is
//! synced before a write is answered or anything it wrote is read ([`log_sync`]).
//!
//! # Group commit
//!
//! SQLite allows one writer at a time, and every transaction waits for an fsync of the
//! write-ahead log before it is answered. One transaction per request would make the fsync the
//! ceiling on writes per second, so concurrent [`SqliteBackend::write`] calls share
//! transactions:
//!
//! - Callers queue for the write connection in arrival order (at most [`MAX_QUEUED_JOBS`] wait;
//!   more wait for room). The connection, with the transaction open on it, is a baton handed
//!   from caller to caller: each caller runs its own job, on its own thread, in that order.
//! - The first job of a round opens the transaction (`BEGIN IMMEDIATE`, which takes SQLite's
//!   write lock). Each job runs inside its own `SAVEPOINT`: a job that returns `Err` (or
//!   panics) is rolled back to its savepoint, so its effects vanish and no later job of the
//!   round can see them; jobs that succeed are released into the round and later jobs see
//!   them, exactly as if they had committed one after another in queue order.
//! - The caller that finishes a job hands the baton to the next caller in the queue. When
//!   the queue is empty, or the round holds [`MAX_JOBS_PER_ROUND`] jobs, or it has been open
//!   for [`MAX_ROUND_DURATION`], that caller commits the round instead (one COMMIT for all
//!   its jobs), passes the baton on, and leaves the round's callers to [`log_sync`], which
//!   wakes them once one fsync of the log covers the round.
//! - A job that can run again ([`SqliteBackend::write_rerunnable`]; the usage-event hot path)
//!   runs without a savepoint while every job before it in the round can run again too. A
//!   savepoint is not free: SQLite copies every page a job changes into its journal first,
//!   a fifth of a single event's work on the writer. If such a job fails having changed rows,
//!   or panics, the whole round is rolled back and every caller in it runs its job again, in
//!   a later round and inside a savepoint this time (a job run again holds the round as any
//!   job that cannot run again does: no later job runs without a savepoint in that round), so
//!   every caller runs its job at most twice. A job that fails before changing a row
//!   (`sqlite3_total_changes` unchanged: a refused or conflicting batch) undoes nothing.
//!   A panic is caught with the job's result and reaches its caller once the round is over.
//! - A job that can run again is also offered: its closure (`Send + 'static`) waits in the
//!   queue with its caller, and whoever holds the baton when its turn comes runs it on its
//!   own thread, then the next offered job, and so on. Its caller is woken once, by the end
//!   of its round, instead of twice (its turn, then the end), which was a thread switch on
//!   the writer's serial path per job. A caller given the baton between rounds runs its own
//!   job, as every caller of `write` does.
//!
//! Durability: a caller of `write` gets `Ok` only once the COMMIT of the round holding its
//! job has returned and a sync of the write-ahead log begun after it has succeeded, that is
//! once the job's effects are durably on disk. The write connection runs with
//! `synchronous=NORMAL`, so its COMMIT does not wait for the disk: a thread of its own
//! ([`log_sync`]) syncs the log for every round committed since its last sync while the
//! writer runs the next round, and reads wait until what they could have seen is on disk.
//! If the COMMIT fails, or SQLite abandons the transaction mid-round, every job of the round
//! gets the error, including jobs whose own result was already an error (they may have read
//! the round's uncommitted state), so nothing is ever acknowledged that is not on disk. A
//! failed job costs the others nothing: its savepoint is gone before the next job starts.
//!
//! Other jobs are the callers' closures and run on the callers' threads. That is why the
//! baton moves instead of the jobs: `Store::write` takes any closure, including ones that borrow
//! from the caller's stack and are not `Send`, so a dedicated writer thread could not run
//! them without `unsafe` code. What a writer thread would give, one owner of the connection
//! at a time and jobs applied in queue order, the baton gives too.

mod log_sync;

use crate::conn::{Conn, Dialect, Row, Value};
use crate::StoreError;
use log_sync::LogSync;
use rusqlite::types::ValueRef;
use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The most jobs one round (one transaction, one fsync) carries.
pub const MAX_JOBS_PER_ROUND: usize = 256;
/// A round takes no more jobs once it has been open this long, so that a queue that never
/// empties still commits (and acknowledges its first jobs) at least this often, plus an fsync.
pub const MAX_ROUND_DURATION: Duration = Duration::from_millis(5);
/// The most callers waiting for the write connection; the next ones wait for room.
pub const MAX_QUEUED_JOBS: usize = 1024;
const MAX_IDLE_READERS: usize = 8;
/// Prepared statements kept per connection, least recently used evicted first.
const STATEMENT_CACHE_CAPACITY: usize = 256;
/// How often the background checkpointer copies the write-ahead log into the database.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(200);
/// The write-ahead log's length, in pages, past which the writer checkpoints by itself after
/// each commit until one such checkpoint copies the whole log (SQLite's default is 1000): about
/// 400 MB of log, more while readers hold old snapshots. Under a load that never pauses this
/// is almost the only checkpoint that copies the whole log, so the only way the log starts
/// again from its beginning, and it runs on the writer's serial path: it copies what the
/// background checkpointer has not yet copied and syncs the database file, stalling every
/// queued caller. The log grows by 10,000-50,000 pages a second under the bench's load, so
/// at 10,000 pages that happened several times a second and was most of the single events'
/// p99 (`docs/benchmarks.md`, "The writer's own checkpoint"). The cost of a longer log: the
/// `-wal` file keeps its largest size on disk, and recovery after a crash reads all of it.
const WRITER_CHECKPOINT_PAGES: i64 = 100_000;
/// The write connection's page cache, in KiB (SQLite's default is 2,000). Each round changes
/// pages of every table and index the hot path writes; with the default cache the writer
/// read them back from the file (`pread`, 8 % of a single-event profile) and spilled dirty
/// pages into the log mid-transaction. SQLite takes this memory only as pages are used.
const WRITER_CACHE_KIB: u32 = 65_536;

pub struct SqliteBackend {
    path: PathBuf,
    writer: GroupCommit,
    readers: Mutex<Vec<rusqlite::Connection>>,
    _checkpointer: Checkpointer,
    /// Last, so that it closes after every connection: closing a file releases every POSIX
    /// lock this process holds on it, SQLite's included.
    files: Files,
}

/// The database file and its write-ahead log, open for syncing for as long as the backend.
struct Files {
    /// Shared with the background checkpointer, which syncs it: a second descriptor of its
    /// own, once closed, would drop the process's POSIX locks on the file while connections
    /// still rely on them.
    database: Arc<std::fs::File>,
    log: Arc<std::fs::File>,
    /// The log's path as SQLite names it: the database's full path (symbolic links resolved)
    /// and `-wal`.
    log_path: PathBuf,
}

impl Files {
    /// Opens the files the write connection uses. Its log exists once it has read the
    /// database in WAL mode.
    fn of(writer: &rusqlite::Connection) -> Result<Files, StoreError> {
        writer.query_row("SELECT COUNT(*) FROM sqlite_schema", [], |_| Ok(())).map_err(database)?;
        let database_path = writer
            .path()
            .filter(|path| !path.is_empty())
            .map(PathBuf::from)
            .ok_or_else(|| StoreError::Database("the database has no file to sync".into()))?;
        let log_path = PathBuf::from(format!("{}-wal", database_path.display()));
        let open = |path: &Path| {
            std::fs::File::open(path)
                .map_err(|error| StoreError::Database(format!("cannot open {} to sync it: {error}", path.display())))
        };
        Ok(Files { database: Arc::new(open(&database_path)?), log: Arc::new(open(&log_path)?), log_path })
    }
}

impl SqliteBackend {
    pub fn open(path: &Path) -> Result<SqliteBackend, StoreError> {
        SqliteBackend::open_with_sync(path, None)
    }

    /// [`open`](Self::open), with the log made durable by `sync` (tests hold it back) instead
    /// of by an fsync of its file.
    fn open_with_sync(path: &Path, sync: Option<SyncFile>) -> Result<SqliteBackend, StoreError> {
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|error| StoreError::Database(format!("cannot create {}: {error}", parent.display())))?;
        }
        let writer = connect(path)?;
        writer.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES).map_err(database)?;
        use_writer_settings(&writer)?;
        let files = Files::of(&writer)?;
        let checkpointer = Checkpointer::start(connect(path)?, sync_data_of(&files.database))?;
        let sync = sync.unwrap_or_else(|| sync_data_of(&files.log));
        Ok(SqliteBackend {
            path: path.to_owned(),
            writer: GroupCommit::new(writer, LogSync::start(sync)?),
            readers: Mutex::new(Vec::new()),
            _checkpointer: checkpointer,
            files,
        })
    }

    /// Runs `work` in the current round's transaction, inside its own savepoint, and returns
    /// once the round is committed (see the module comment). A panic in `work` reaches the
    /// caller once the round is over; its effects are rolled back with its savepoint.
    pub fn write<R, E: From<StoreError>>(&self, work: impl FnOnce(&mut dyn Conn) -> Result<R, E>) -> Result<R, E> {
        let mut work = Some(work);
        let mut outcome = None;
        let end = {
            let mut job = |conn: &mut dyn Conn| {
                let work = work.take().expect("a job that cannot run again runs once");
                let ran = panic::catch_unwind(AssertUnwindSafe(|| work(conn)));
                let succeeded = matches!(ran, Ok(Ok(_)));
                outcome = Some(ran);
                succeeded
            };
            self.writer.run_own(&mut job, Attempt::Only)
        };
        match answer(end, outcome) {
            Some(result) => result,
            None => unreachable!("a job that cannot run again holds its round: it is never undone"),
        }
    }

    /// [`write`](Self::write) for a job that can run again from the start: one that changes
    /// nothing but the database (or nothing a rollback would leave wrong) and counts its
    /// changes in rows (no DDL). It runs without a savepoint when it can, and at most twice;
    /// whoever holds the connection when its turn comes runs it, so its caller is woken once,
    /// when its round is over (see the module comment).
    pub fn write_rerunnable<R: Send + 'static, E: From<StoreError> + Send + 'static>(
        &self,
        mut work: impl FnMut(&mut dyn Conn) -> Result<R, E> + Send + 'static,
    ) -> Result<R, E> {
        let outcome: Arc<Mutex<Outcome<R, E>>> = Arc::default();
        let slot = outcome.clone();
        let job = move |conn: &mut dyn Conn| {
            let ran = panic::catch_unwind(AssertUnwindSafe(|| work(conn)));
            let succeeded = matches!(ran, Ok(Ok(_)));
            *lock(&slot) = Some(ran);
            succeeded
        };
        let offered = Arc::new(Mutex::new(OfferedJob { job: Box::new(job), attempt: Attempt::First }));
        loop {
            let end = self.writer.run_offered(&offered);
            let ran = lock(&outcome).take();
            match answer(end, ran) {
                Some(result) => return result,
                None => {
                    let mut offered = lock(&offered);
                    assert_eq!(offered.attempt, Attempt::First, "a job run again holds its round: it is never undone");
                    offered.attempt = Attempt::Again;
                }
            }
        }
    }

    /// Switches the write connection to bulk loading (`on`: `synchronous=OFF`, a page cache
    /// of `cache_kib` KiB, and savepoint journals in a temporary file) or back to the writer's
    /// settings ([`use_writer_settings`], as `open` leaves them), syncing the files to disk.
    /// The journal matters to a job that writes much: each job's `SAVEPOINT` copies every
    /// page it changes into the statement journal, and SQLite truncates that
    /// journal after each statement by walking its chunks from the start when it is held in
    /// memory, so a job of thousands of statements over a large database takes time
    /// quadratic in its size (measured: 95 % of a seed's time). Only
    /// `tally seed` asks for it: with `synchronous=OFF` SQLite syncs nothing (the log is still
    /// synced before a round is answered, but checkpoints copy it into the database file
    /// without syncing), so a power cut can lose or corrupt what was written since then;
    /// a seed that fails is rerun on a new database. SQLite refuses to change `synchronous`
    /// inside a transaction, so this waits for the connection between rounds and fails if
    /// another caller's round is still open.
    pub fn set_bulk_load(&self, on: bool, cache_kib: u32) -> Result<(), StoreError> {
        let (me, signals) = mpsc::sync_channel(1);
        let Woken::Turn(baton) = self.writer.wait(Waiter { signals: me, offered: None }, &signals) else {
            unreachable!("a caller that offers no job is told its turn first")
        };
        let outcome = if baton.round.began.is_some() {
            Err(StoreError::Database("bulk loading cannot start while other writes are in flight".into()))
        } else if on {
            baton
                .connection
                .execute_batch(&format!(
                    "PRAGMA synchronous = OFF; PRAGMA cache_size = -{cache_kib}; PRAGMA temp_store = FILE;"
                ))
                .map_err(database)
        } else {
            use_writer_settings(&baton.connection).and_then(|()| self.sync_files())
        };
        self.writer.pass(baton);
        outcome
    }

    /// Writes the database file and its log to disk: what bulk loading wrote without waiting
    /// is durable once bulk loading ends.
    fn sync_files(&self) -> Result<(), StoreError> {
        for (file, name) in [(&self.files.database, &self.path), (&self.files.log, &self.files.log_path)] {
            file.sync_all()
                .map_err(|error| StoreError::Database(format!("cannot sync {}: {error}", name.display())))?;
        }
        Ok(())
    }

    /// Callers waiting for the write connection, and read connections idle in the pool.
    pub fn status(&self) -> (usize, usize) {
        let waiting = lock(&self.writer.queue).waiting.len();
        (waiting, lock(&self.readers).len())
    }

    /// Runs `work` in a read transaction; returns once what it could have seen is on disk.
    pub fn read<R, E: From<StoreError>>(&self, work: impl FnOnce(&mut dyn Conn) -> Result<R, E>) -> Result<R, E> {
        let mut connection = self.reader()?;
        let result = run_in_transaction(&mut connection, "BEGIN", work);
        self.return_reader(connection);
        self.writer.log.wait_durable()?;
        result
    }

    /// Two read transactions that see one snapshot, for work that reads on two threads. In
    /// WAL mode a read transaction sees what was committed when it first reads, so both
    /// first read inside a job of the writer's round, which holds the write lock: no commit
    /// can land between them. (A connection of its own asking for the lock would wait behind
    /// a busy writer's back-to-back rounds, and could time out.)
    pub fn read_pair<R, E: From<StoreError>>(
        &self,
        work: impl FnOnce(&mut (dyn Conn + Send), &mut (dyn Conn + Send)) -> Result<R, E>,
    ) -> Result<R, E> {
        let (mut first, mut second) = (self.reader()?, self.reader()?);
        let begun = self.write(|_writer| -> Result<(), StoreError> {
            for connection in [&first, &second] {
                connection.execute_batch("BEGIN").map_err(database)?;
                connection.query_row("SELECT COUNT(*) FROM sqlite_schema", [], |_| Ok(())).map_err(database)?;
            }
            Ok(())
        });
        let result = match begun {
            Ok(()) => work(&mut SqliteConn { connection: &mut first }, &mut SqliteConn { connection: &mut second }),
            Err(error) => Err(error.into()),
        };
        // Read-only: ending them is all there is to do, whatever the outcome.
        for connection in [&first, &second] {
            let _ = connection.execute_batch("ROLLBACK");
        }
        self.return_reader(first);
        self.return_reader(second);
        // The snapshot began inside a write, which was answered after a sync covering it;
        // waiting again costs a load or two and keeps the rule in one place.
        self.writer.log.wait_durable()?;
        result
    }

    /// A pooled read connection, or a new one.
    fn reader(&self) -> Result<rusqlite::Connection, StoreError> {
        let pooled = lock(&self.readers).pop();
        match pooled {
            Some(connection) => Ok(connection),
            None => connect(&self.path),
        }
    }

    fn return_reader(&self, connection: rusqlite::Connection) {
        let mut readers = lock(&self.readers);
        if readers.len() < MAX_IDLE_READERS {
            readers.push(connection);
        }
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked: every critical
/// section here only moves values in and out.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a job returned, or its panic; `None` until it ran.
type Outcome<R, E> = Option<std::thread::Result<Result<R, E>>>;

/// An offered job's closure: true when the job succeeded.
type OfferedFn = Box<dyn FnMut(&mut dyn Conn) -> bool + Send>;

/// What a caller of a write answers, from how its round ended and what its job returned:
/// `None` when the round was undone and the job must run again. A panic of the job reaches
/// its caller whatever the round did.
fn answer<R, E: From<StoreError>>(end: Result<RoundEnd, StoreError>, outcome: Outcome<R, E>) -> Option<Result<R, E>> {
    if let Some(Err(payload)) = outcome {
        panic::resume_unwind(payload);
    }
    match end {
        Err(error) => Some(Err(error.into())),
        Ok(RoundEnd::Committed) => match outcome {
            Some(Ok(result)) => Some(result),
            _ => unreachable!("a job in a committed round ran"),
        },
        Ok(RoundEnd::Failed(message)) => Some(Err(StoreError::Database(message).into())),
        Ok(RoundEnd::Undone) => None,
    }
}

/// The write connection and the round open on it: whoever holds the baton may write.
struct Baton {
    connection: rusqlite::Connection,
    round: Round,
}

/// The transaction shared by the jobs of one round.
#[derive(Default)]
struct Round {
    /// When `BEGIN IMMEDIATE` ran; `None` while no transaction is open.
    began: Option<Instant>,
    /// The callers whose jobs ran in this round, in order; each waits for the round's end.
    members: Vec<mpsc::SyncSender<Signal>>,
    /// Whether a job that cannot run again (now) is in the round: then the round must never
    /// be undone, so every later job runs inside a savepoint.
    held: bool,
}

/// Which run of a job this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// A job that cannot run again ([`SqliteBackend::write`]).
    Only,
    /// The first run of a job that can run again: without a savepoint if the round allows.
    First,
    /// The second run, after its first round was undone: inside a savepoint, holding the
    /// round, so that no later job can undo it again.
    Again,
}

/// How a round ended, as each of its callers is told.
#[derive(Debug, Clone)]
enum RoundEnd {
    Committed,
    /// Rolled back, with nothing of it kept: every job in it fails with this message.
    Failed(String),
    /// Rolled back to undo a failed job that ran without a savepoint: every job in it runs
    /// again.
    Undone,
}

/// What a caller waiting on its channel is told.
enum Signal {
    /// The caller's turn: here is the baton (boxed: it moves from thread to thread).
    Turn(Box<Baton>),
    /// The round that ran the caller's job is over.
    Finished(RoundEnd),
}

struct GroupCommit {
    queue: Mutex<Queue>,
    /// Syncs the log for the committed rounds and answers their callers.
    log: LogSync,
    /// Runs right after each COMMIT that succeeded, before the round is handed to `log`.
    #[cfg(test)]
    after_commit: Mutex<Box<dyn FnMut() + Send>>,
    /// Signalled when a caller leaves a full queue.
    room: Condvar,
    /// [`MAX_ROUND_DURATION`]; tests that need a round to hold still lengthen it.
    max_round_duration: Duration,
}

struct Queue {
    /// The baton while nobody holds it; then nobody waits either.
    idle: Option<Box<Baton>>,
    /// Callers waiting for the baton, in arrival order.
    waiting: VecDeque<Waiter>,
}

/// A caller waiting for the baton.
struct Waiter {
    signals: mpsc::SyncSender<Signal>,
    /// The caller's job, when the caller lets whoever holds the baton run it
    /// ([`SqliteBackend::write_rerunnable`]): the holder then runs it in its round, on its own
    /// thread, and the caller is woken only by the round's end. Waking each caller to run its
    /// own job cost a thread switch per job on the writer's serial path.
    offered: Option<Arc<Mutex<OfferedJob>>>,
}

/// A job offered to the holder of the baton: returns whether it succeeded (its result goes
/// to its caller by a way of its own).
struct OfferedJob {
    job: OfferedFn,
    attempt: Attempt,
}

/// What a queued caller is woken by.
enum Woken {
    Turn(Box<Baton>),
    /// The holder ran the caller's offered job, and its round is over.
    Finished(RoundEnd),
}

/// What running one job did to its round.
enum Step {
    /// The job's effects are in the round (none of them, if it failed).
    Joined,
    /// It failed having changed rows, with no savepoint: the round was rolled back and its
    /// callers told to run their jobs again.
    Undone,
    /// A savepoint could not be settled: the round cannot commit.
    Broken(String),
}

impl GroupCommit {
    fn new(connection: rusqlite::Connection, log: LogSync) -> GroupCommit {
        let idle = Some(Box::new(Baton { connection, round: Round::default() }));
        GroupCommit {
            queue: Mutex::new(Queue { idle, waiting: VecDeque::new() }),
            log,
            #[cfg(test)]
            after_commit: Mutex::new(Box::new(|| {})),
            room: Condvar::new(),
            max_round_duration: MAX_ROUND_DURATION,
        }
    }

    /// Runs a job on the caller's own thread: waits for the baton, runs the job in the
    /// current round, hands the baton on and waits for the round's end.
    fn run_own(&self, job: &mut dyn FnMut(&mut dyn Conn) -> bool, attempt: Attempt) -> Result<RoundEnd, StoreError> {
        let (me, signals) = mpsc::sync_channel(1);
        match self.wait(Waiter { signals: me.clone(), offered: None }, &signals) {
            Woken::Turn(baton) => self.hold(baton, job, attempt, me, &signals),
            Woken::Finished(_) => unreachable!("a caller that offers no job is told its turn first"),
        }
    }

    /// Queues a job that the holder of the baton may run; runs it on the caller's thread
    /// when the caller is given the baton instead. Returns how its round ended.
    fn run_offered(&self, offered: &Arc<Mutex<OfferedJob>>) -> Result<RoundEnd, StoreError> {
        // Room for one signal is enough: a caller is told its turn, then (after it has taken
        // the turn) the end of its round; or only the end of its round.
        let (me, signals) = mpsc::sync_channel(1);
        match self.wait(Waiter { signals: me.clone(), offered: Some(offered.clone()) }, &signals) {
            Woken::Finished(end) => Ok(end),
            Woken::Turn(baton) => {
                let mut offered = lock(offered);
                let OfferedJob { job, attempt } = &mut *offered;
                self.hold(baton, &mut **job, *attempt, me, &signals)
            }
        }
    }

    /// Waits in the queue, in arrival order, for the baton (or, for a caller that offered its
    /// job, for the end of the round the holder ran it in).
    fn wait(&self, waiter: Waiter, signals: &mpsc::Receiver<Signal>) -> Woken {
        let mut queue = lock(&self.queue);
        loop {
            if let Some(baton) = queue.idle.take() {
                return Woken::Turn(baton);
            }
            if queue.waiting.len() < MAX_QUEUED_JOBS {
                break;
            }
            queue = self.room.wait(queue).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        queue.waiting.push_back(waiter);
        drop(queue);
        match signals.recv() {
            Ok(Signal::Turn(baton)) => Woken::Turn(baton),
            Ok(Signal::Finished(end)) => Woken::Finished(end),
            Err(_) => unreachable!("the holder tells every queued caller its turn or its round's end"),
        }
    }

    /// With the baton: runs the caller's job in the round (opening it if needed), goes on
    /// with the round, and waits for its end.
    fn hold(
        &self,
        mut baton: Box<Baton>,
        job: &mut dyn FnMut(&mut dyn Conn) -> bool,
        attempt: Attempt,
        me: mpsc::SyncSender<Signal>,
        signals: &mpsc::Receiver<Signal>,
    ) -> Result<RoundEnd, StoreError> {
        if baton.round.began.is_none() {
            if let Err(error) = run_cached(&baton.connection, "BEGIN IMMEDIATE") {
                self.pass(baton);
                return Err(database(error));
            }
            baton.round.began = Some(Instant::now());
        }
        let step = self.step(&mut baton, job, attempt);
        if let Some(baton) = self.settle(baton, step, me) {
            self.go_on(baton);
        }
        match signals.recv() {
            Ok(Signal::Finished(end)) => Ok(end),
            Ok(Signal::Turn(_)) | Err(_) => unreachable!("a caller in a round is told only the round's end"),
        }
    }

    /// Runs one job in the open round: with no savepoint when it is the first run of a job
    /// that can run again and the round holds only such jobs, else inside a savepoint.
    fn step(&self, baton: &mut Baton, job: &mut dyn FnMut(&mut dyn Conn) -> bool, attempt: Attempt) -> Step {
        if attempt == Attempt::First && !baton.round.held {
            let changes_before = baton.connection.total_changes();
            let succeeded = job(&mut SqliteConn { connection: &mut baton.connection });
            if succeeded || baton.connection.total_changes() == changes_before {
                return Step::Joined;
            }
            self.undo_round(baton);
            return Step::Undone;
        }
        baton.round.held = true;
        if let Err(error) = run_cached(&baton.connection, "SAVEPOINT job") {
            return Step::Broken(database(error).to_string());
        }
        let succeeded = job(&mut SqliteConn { connection: &mut baton.connection });
        match settle_savepoint(&baton.connection, succeeded) {
            Ok(()) => Step::Joined,
            Err(message) => Step::Broken(message),
        }
    }

    /// What a job's step means for its caller (`member`) and the round: joined, the round
    /// goes on (the baton is returned); undone, the caller is told to run its job again;
    /// broken, the round fails. In the last two the baton has been passed on.
    fn settle(&self, mut baton: Box<Baton>, step: Step, member: mpsc::SyncSender<Signal>) -> Option<Box<Baton>> {
        match step {
            Step::Joined => {
                baton.round.members.push(member);
                return Some(baton);
            }
            Step::Undone => {
                let _ = member.send(Signal::Finished(RoundEnd::Undone));
            }
            Step::Broken(message) => {
                baton.round.members.push(member);
                self.abandon_round(&mut baton, &message);
            }
        }
        self.pass(baton);
        None
    }

    /// After a job joined the round: runs the jobs offered by the callers queued next, while
    /// the round has room, then hands the baton to the next caller that runs its own job, or
    /// ends the round.
    fn go_on(&self, mut baton: Box<Baton>) {
        loop {
            if baton.round.began.is_some() && baton.connection.is_autocommit() {
                self.abandon_round(&mut baton, "SQLite rolled the transaction back");
                return self.pass(baton);
            }
            let round_has_room = baton.round.members.len() < MAX_JOBS_PER_ROUND
                && baton.round.began.is_some_and(|began| began.elapsed() < self.max_round_duration);
            if !round_has_room {
                break;
            }
            let next = lock(&self.queue).waiting.pop_front();
            let Some(next) = next else { break };
            self.room.notify_one();
            let Some(offered) = next.offered else {
                match next.signals.send(Signal::Turn(baton)) {
                    Ok(()) => return,
                    // The caller is gone (it cannot be, it blocks until told): try the next.
                    Err(mpsc::SendError(signal)) => {
                        baton = into_baton(signal);
                        continue;
                    }
                }
            };
            let step = {
                let mut offered = lock(&offered);
                let OfferedJob { job, attempt } = &mut *offered;
                self.step(&mut baton, &mut **job, *attempt)
            };
            match self.settle(baton, step, next.signals) {
                Some(joined) => baton = joined,
                None => return,
            }
        }
        self.commit_round(&mut baton);
        self.pass(baton);
    }

    /// Commits the round: its callers are answered once the log is synced ([`log_sync`]),
    /// or at once if it did not commit.
    fn commit_round(&self, baton: &mut Baton) {
        let Some(began) = baton.round.began.take() else {
            return;
        };
        baton.round.held = false;
        let jobs = baton.round.members.len();
        let round = match self.log.begin_commit() {
            Ok(round) => round,
            Err(failure) => {
                let _ = baton.connection.execute_batch("ROLLBACK");
                return tell(
                    &mut baton.round.members,
                    RoundEnd::Failed(format!("the transaction did not commit: {failure}")),
                );
            }
        };
        let committed = run_cached(&baton.connection, "COMMIT");
        #[cfg(test)]
        if committed.is_ok() {
            (*lock(&self.after_commit))();
        }
        match committed {
            Ok(()) => {
                // Nothing between the COMMIT and this may fail: readers wait for the round.
                self.log.committed(round, std::mem::take(&mut baton.round.members));
                // For /metrics (no-ops unless the server installed a recorder).
                metrics::histogram!("tally_sqlite_commit_round_jobs").record(jobs as f64);
                metrics::histogram!("tally_sqlite_commit_round_seconds").record(began.elapsed().as_secs_f64());
            }
            Err(error) => {
                let _ = baton.connection.execute_batch("ROLLBACK");
                self.log.commit_failed(round);
                let failure = format!("the transaction did not commit: {}", database(error));
                tell(&mut baton.round.members, RoundEnd::Failed(failure));
            }
        }
    }

    /// Rolls the whole round back and tells every caller in it to run its job again.
    fn undo_round(&self, baton: &mut Baton) {
        if !baton.connection.is_autocommit() {
            let _ = baton.connection.execute_batch("ROLLBACK");
        }
        baton.round.began = None;
        baton.round.held = false;
        metrics::counter!("tally_sqlite_rounds_undone_total").increment(1);
        tell(&mut baton.round.members, RoundEnd::Undone);
    }

    /// Rolls the whole round back and fails every job in it.
    fn abandon_round(&self, baton: &mut Baton, message: &str) {
        if !baton.connection.is_autocommit() {
            let _ = baton.connection.execute_batch("ROLLBACK");
        }
        baton.round.began = None;
        baton.round.held = false;
        tell(&mut baton.round.members, RoundEnd::Failed(format!("the transaction was rolled back: {message}")));
    }

    /// Hands the baton to the first caller in the queue, or leaves it idle.
    fn pass(&self, mut baton: Box<Baton>) {
        let mut queue = lock(&self.queue);
        while let Some(next) = queue.waiting.pop_front() {
            self.room.notify_one();
            match next.signals.send(Signal::Turn(baton)) {
                Ok(()) => return,
                Err(mpsc::SendError(signal)) => baton = into_baton(signal),
            }
        }
        queue.idle = Some(baton);
    }
}

/// Tells every caller of a round how it ended.
fn tell(members: &mut Vec<mpsc::SyncSender<Signal>>, end: RoundEnd) {
    for member in members.drain(..) {
        let _ = member.send(Signal::Finished(end.clone()));
    }
}

fn into_baton(signal: Signal) -> Box<Baton> {
    match signal {
        Signal::Turn(baton) => baton,
        Signal::Finished(_) => unreachable!("only turns are sent to the queue"),
    }
}

/// Copies the write-ahead log into the database file on its own thread and connection, so
/// that the copying and the database file's fsync stay off the write path: a checkpoint in
/// the writer would hold up every caller queued behind that COMMIT. A checkpoint is PASSIVE:
/// it never waits for, nor blocks, the writer or readers. Durability does not depend on it:
/// a transaction is durable once the log is synced after its COMMIT.
///
/// SQLite syncs the database file only at the end of a checkpoint that copies the whole log.
/// A background pass seldom does under a load that never pauses: only when no round commits
/// while it copies. The writer's own checkpoint (past [`WRITER_CHECKPOINT_PAGES`]) runs inside
/// a COMMIT, so no round commits meanwhile, and it completes unless a reader still holds an
/// older snapshot. Its fsync then wrote out everything the background passes had copied since
/// the last one while every queued caller waited (up to 170 ms at 100,000 pages). So the
/// checkpointer syncs the database file itself after each pass that copied pages, and the
/// writer's fsync finds little left.
struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Writes a file's pages to disk: `fdatasync` in the server ([`sync_data_of`]), a gate or a
/// counter in tests. The log's makes rounds durable ([`log_sync`]); the database file's
/// follows the background checkpoints.
type SyncFile = Box<dyn FnMut() -> std::io::Result<()> + Send>;

/// `fdatasync` of `file`, held open for as long as the sync is. It makes the file's written
/// data durable whichever descriptor wrote it (SQLite's own); the files stay the same while
/// the write connection is open (SQLite deletes the log only when the last connection closes,
/// and nothing here truncates or replaces them).
fn sync_data_of(file: &Arc<std::fs::File>) -> SyncFile {
    let file = file.clone();
    Box::new(move || file.sync_data())
}

impl Checkpointer {
    fn start(connection: rusqlite::Connection, mut sync: SyncFile) -> Result<Checkpointer, StoreError> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                let mut copied = CopiedFrames::default();
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_INTERVAL) {
                    match checkpoint(&connection, &mut copied, &mut sync) {
                        Ok(()) => {}
                        Err(Failed::Checkpoint(error)) => {
                            tracing::warn!(%error, "background checkpoint failed; the writer checkpoints past its limit")
                        }
                        // Nothing waits for this sync. SQLite's own descriptor of the file is
                        // told of the same write error at its next fsync, which then fails the
                        // checkpoint that would have let the log start again: the log keeps the
                        // pages until a later checkpoint writes them again and syncs.
                        Err(Failed::Sync(error)) => {
                            tracing::error!(%error, "cannot sync the database file after a checkpoint")
                        }
                    }
                }
            })
            .map_err(|error| StoreError::Database(format!("cannot start the checkpoint thread: {error}")))?;
        Ok(Checkpointer { stop: Some(stop), thread: Some(thread) })
    }
}

/// Where the last checkpoint left the log: its length and how much of it was copied, in
/// frames, and SQLite's count of the commits other connections made.
#[derive(Default, PartialEq, Eq, Clone, Copy, Debug)]
struct CopiedFrames {
    log: i64,
    copied: i64,
    commits: i64,
}

/// Why a background pass failed.
#[derive(Debug)]
enum Failed {
    Checkpoint(String),
    Sync(String),
}

/// One background checkpoint: copies what it can of the log into the database file, then
/// syncs the database file if that copied anything since the last time.
fn checkpoint(connection: &rusqlite::Connection, last: &mut CopiedFrames, sync: &mut SyncFile) -> Result<(), Failed> {
    let read = || -> rusqlite::Result<CopiedFrames> {
        let commits = connection.query_row("PRAGMA data_version", [], |row| row.get(0))?;
        connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok(CopiedFrames { log: row.get(1)?, copied: row.get(2)?, commits })
        })
    };
    let now = read().map_err(|error| Failed::Checkpoint(database(error).to_string()))?;
    // Nothing committed and the same counts: nothing was copied since the last sync. (The
    // counts alone can repeat once the log has started again from its beginning.)
    if now.copied > 0 && now != *last {
        sync().map_err(|error| Failed::Sync(error.to_string()))?;
    }
    *last = now;
    Ok(())
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs a statement without parameters from the statement cache: the statements that open,
/// close and divide transactions run several times per request, and parsing them each time
/// (as `execute_batch` does) costs more than running them.
fn run_cached(connection: &rusqlite::Connection, sql: &str) -> rusqlite::Result<()> {
    connection.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Keeps a successful job's effects in the round (RELEASE) or undoes a failed one's
/// (ROLLBACK TO, then RELEASE). An error means the round's state is unknown.
fn settle_savepoint(connection: &rusqlite::Connection, succeeded: bool) -> Result<(), String> {
    let undone = if succeeded { Ok(()) } else { run_cached(connection, "ROLLBACK TO job") };
    undone
        .and_then(|()| run_cached(connection, "RELEASE job"))
        .map_err(|error| format!("cannot end the job's savepoint: {}", database(error)))
}

/// The write connection's settings besides [`connect`]'s: its log is synced by `log_sync`,
/// off the writer's path (see the module comment), so SQLite need not sync it, and its page
/// cache holds [`WRITER_CACHE_KIB`]. Temporary storage stays in memory, as `connect` leaves it
/// (bulk loading moves it to a file).
fn use_writer_settings(writer: &rusqlite::Connection) -> Result<(), StoreError> {
    writer
        .execute_batch(&format!(
            "PRAGMA synchronous = NORMAL; PRAGMA cache_size = -{WRITER_CACHE_KIB}; PRAGMA temp_store = MEMORY;"
        ))
        .map_err(database)
}

/// Opens a connection. Besides durability (WAL, `synchronous=FULL`; `open` lowers the writer's to
/// `NORMAL` and syncs its log in `log_sync`), two settings matter to
/// speed: the prepared-statement cache holds every statement the hot paths use (rusqlite's
/// default of 16 is smaller than one event's statements, so each was parsed again every
/// time), and temporary storage, including each job's savepoint journal, stays in memory
/// instead of spilling to a temporary file.
fn connect(path: &Path) -> Result<rusqlite::Connection, StoreError> {
    let connection = rusqlite::Connection::open(path).map_err(database)?;
    connection.busy_timeout(BUSY_TIMEOUT).map_err(database)?;
    use_write_ahead_log(&connection)?;
    connection
        .execute_batch(
            "PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;
             PRAGMA temp_store = MEMORY;",
        )
        .map_err(database)?;
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    Ok(connection)
}

/// How long a statement waits for another connection's lock before it fails as busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Puts the database in WAL mode. Switching a file that is not in WAL mode yet (a new one)
/// takes an exclusive lock, and SQLite fails that switch at once with "database is locked",
/// ignoring the busy timeout, when another connection holds a lock on the file: several
/// processes opening one new database together (`tally migrate` or `tally serve` started at
/// once) collide there. The connection that lost waits for the lock like any writer does,
/// honouring the busy timeout (`BEGIN IMMEDIATE`, rolled back at once), and asks again; by
/// then the winner has switched the file, and asking for WAL mode again changes nothing.
fn use_write_ahead_log(connection: &rusqlite::Connection) -> Result<(), StoreError> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        match connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get::<_, String>(0)) {
            Ok(_) => return Ok(()),
            Err(rusqlite::Error::SqliteFailure(failure, _))
                if failure.code == rusqlite::ErrorCode::DatabaseBusy && Instant::now() < deadline =>
            {
                connection.execute_batch("BEGIN IMMEDIATE; ROLLBACK;").map_err(database)?;
            }
            Err(error) => return Err(database(error)),
        }
    }
}

/// Runs a read transaction.
fn run_in_transaction<R, E: From<StoreError>>(
    connection: &mut rusqlite::Connection,
    begin: &str,
    work: impl FnOnce(&mut dyn Conn) -> Result<R, E>,
) -> Result<R, E> {
    connection.execute_batch(begin).map_err(database)?;
    let mut conn = SqliteConn { connection };
    match work(&mut conn) {
        Ok(value) => {
            if let Err(error) = conn.connection.execute_batch("COMMIT") {
                let _ = conn.connection.execute_batch("ROLLBACK");
                return Err(database(error).into());
            }
            Ok(value)
        }
        Err(error) => {
            let _ = conn.connection.execute_batch("ROLLBACK");
            Err(error)
        }
    }
}

struct SqliteConn<'a> {
    connection: &'a mut rusqlite::Connection,
}

/// Rewrites `$1` placeholders to SQLite's numbered `?1`. Runs for every statement, so it
/// copies whole runs of text between placeholders rather than one character at a time.
fn to_sqlite_placeholders(sql: &str) -> String {
    let mut rewritten = String::with_capacity(sql.len());
    let mut copied = 0;
    for (index, _) in sql.match_indices('$') {
        if sql.as_bytes().get(index + 1).is_some_and(u8::is_ascii_digit) {
            rewritten.push_str(&sql[copied..index]);
            rewritten.push('?');
            copied = index + 1;
        }
    }
    rewritten.push_str(&sql[copied..]);
    rewritten
}

/// A parameter bound by reference: text is handed to SQLite without being copied first.
struct Bound<'a>(&'a Value);

impl rusqlite::ToSql for Bound<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::ToSqlOutput;
        Ok(match self.0 {
            Value::Null => ToSqlOutput::Owned(rusqlite::types::Value::Null),
            Value::Int(int) => ToSqlOutput::Owned(rusqlite::types::Value::Integer(*int)),
            Value::Text(text) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
        })
    }
}

fn bind(params: &[Value]) -> impl rusqlite::Params + '_ {
    rusqlite::params_from_iter(params.iter().map(Bound))
}

impl SqliteConn<'_> {
    /// The prepared statement for `sql`, refused once the transaction is over. Every
    /// statement here belongs to a transaction (a round's or a read's), but SQLite ends one by
    /// itself on some errors (a full disk, an I/O error) and goes on in autocommit mode: a
    /// job's next statements would then each commit alone, part of the job kept while the
    /// rest of its round is rolled back (a ledger entry without its postings).
    fn statement(&self, sql: &str) -> Result<rusqlite::CachedStatement<'_>, StoreError> {
        if self.connection.is_autocommit() {
            return Err(StoreError::Database("SQLite rolled the transaction back".into()));
        }
        self.connection.prepare_cached(&to_sqlite_placeholders(sql)).map_err(database)
    }
}

impl Conn for SqliteConn<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        let mut statement = self.statement(sql)?;
        let changed = statement.execute(bind(params)).map_err(database)?;
        Ok(changed as u64)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        let mut statement = self.statement(sql)?;
        let columns = statement.column_count();
        let mut rows = statement.query(bind(params)).map_err(database)?;
        let mut result = Vec::new();
        while let Some(row) = rows.next().map_err(database)? {
            let mut values = Vec::with_capacity(columns);
            for index in 0..columns {
                values.push(match row.get_ref(index).map_err(database)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(int) => Value::Int(int),
                    ValueRef::Text(bytes) => Value::Text(String::from_utf8_lossy(bytes).into_owned()),
                    ValueRef::Real(_) | ValueRef::Blob(_) => {
                        return Err(StoreError::Corrupt(format!("column {index} holds a float or blob")))
                    }
                });
            }
            result.push(Row(values));
        }
        Ok(result)
    }

    fn query_each(
        &mut self,
        sql: &str,
        params: &[Value],
        each: &mut dyn FnMut(&Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut statement = self.statement(sql)?;
        let columns = statement.column_count();
        let mut rows = statement.query(bind(params)).map_err(database)?;
        // One row's values, refilled in place for each row.
        let mut current = Row(vec![Value::Null; columns]);
        while let Some(row) = rows.next().map_err(database)? {
            for (index, value) in current.0.iter_mut().enumerate() {
                match row.get_ref(index).map_err(database)? {
                    ValueRef::Null => *value = Value::Null,
                    ValueRef::Integer(int) => *value = Value::Int(int),
                    ValueRef::Text(bytes) => match std::str::from_utf8(bytes) {
                        Ok(text) => value.set_text(text),
                        Err(_) => *value = Value::Text(String::from_utf8_lossy(bytes).into_owned()),
                    },
                    ValueRef::Real(_) | ValueRef::Blob(_) => {
                        return Err(StoreError::Corrupt(format!("column {index} holds a float or blob")))
                    }
                }
            }
            each(&current)?;
        }
        Ok(())
    }
}

fn database(error: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(failure, message) = &error {
        if failure.code == rusqlite::ErrorCode::ConstraintViolation {
            return StoreError::Conflict(message.clone().unwrap_or_default());
        }
    }
    StoreError::Database(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn placeholders_are_rewritten_only_where_numbered() {
        assert_eq!(to_sqlite_placeholders("a = $1 AND b = $12 AND c = '$x'"), "a = ?1 AND b = ?12 AND c = '$x'");
        assert_eq!(to_sqlite_placeholders("$1$2 é $ $3"), "?1?2 é $ ?3");
        assert_eq!(to_sqlite_placeholders("no placeholders, $"), "no placeholders, $");
    }

    /// `.cargo/config.toml` builds SQLite without the process-wide page-cache group and memory
    /// statistics, whose mutexes every connection took on each page fetch and allocation.
    #[test]
    fn sqlite_is_built_without_its_global_mutexes() {
        let connection = rusqlite::Connection::open_in_memory().unwrap();
        let mut statement = connection.prepare("PRAGMA compile_options").unwrap();
        let options: Vec<String> =
            statement.query_map([], |row| row.get(0)).unwrap().collect::<Result<_, _>>().unwrap();
        assert!(!options.iter().any(|option| option == "ENABLE_MEMORY_MANAGEMENT"), "{options:?}");
        assert!(options.iter().any(|option| option == "DEFAULT_MEMSTATUS=0"), "{options:?}");
    }

    /// The write connection's `synchronous`, `cache_size` and `temp_store`, read in a job.
    fn writer_settings(backend: &SqliteBackend) -> Vec<i64> {
        backend
            .write(|conn| {
                ["synchronous", "cache_size", "temp_store"]
                    .iter()
                    .map(|pragma| conn.query(&format!("PRAGMA {pragma}"), &[])?[0].int(0))
                    .collect::<Result<Vec<i64>, StoreError>>()
            })
            .unwrap()
    }

    /// `tally seed` switches bulk loading on and off again in a backend that may go on
    /// serving: it must then run as `open` set it up (its log synced by `log_sync`, its own
    /// page cache, temporary storage in memory), not as bulk loading or SQLite's defaults.
    #[test]
    fn the_writer_runs_as_opened_once_bulk_loading_is_over() {
        let dir = tempfile::tempdir().unwrap();
        let backend = SqliteBackend::open(&dir.path().join("test.db")).unwrap();
        let opened = writer_settings(&backend);
        assert_eq!(opened, vec![1, -i64::from(WRITER_CACHE_KIB), 2], "NORMAL, the writer's cache, MEMORY");
        backend.set_bulk_load(true, 1000).unwrap();
        assert_eq!(writer_settings(&backend), vec![0, -1000, 1], "OFF, the bulk cache, FILE");
        backend.set_bulk_load(false, 0).unwrap();
        assert_eq!(writer_settings(&backend), opened);
    }

    /// A backend over a fresh file with a table of numbered rows, and (deferred, so that only
    /// COMMIT checks it) a foreign key that a job can break without failing by itself.
    fn backend() -> (tempfile::TempDir, SqliteBackend) {
        let dir = tempfile::tempdir().unwrap();
        let mut backend = SqliteBackend::open(&dir.path().join("test.db")).unwrap();
        // A slow machine must not split the rounds the tests build.
        backend.writer.max_round_duration = Duration::from_secs(600);
        backend
            .write(|conn| {
                conn.execute("CREATE TABLE rows (n BIGINT NOT NULL UNIQUE)", &[])?;
                conn.execute("CREATE TABLE parents (id BIGINT PRIMARY KEY)", &[])?;
                conn.execute(
                    "CREATE TABLE children (parent BIGINT REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED)",
                    &[],
                )?;
                Ok::<_, StoreError>(())
            })
            .unwrap();
        (dir, backend)
    }

    fn insert(conn: &mut dyn Conn, n: i64) -> Result<(), StoreError> {
        conn.execute("INSERT INTO rows (n) VALUES ($1)", crate::params![n]).map(|_| ())
    }

    fn rows(backend: &SqliteBackend) -> Vec<i64> {
        backend
            .read(|conn| {
                conn.query("SELECT n FROM rows ORDER BY rowid", &[])?
                    .iter()
                    .map(|row| row.int(0))
                    .collect::<Result<_, _>>()
            })
            .unwrap()
    }

    /// Rows committed so far, seen from a connection of its own (not the reader pool, which
    /// a test may be holding).
    fn committed_rows(dir: &tempfile::TempDir) -> i64 {
        let connection = rusqlite::Connection::open(dir.path().join("test.db")).unwrap();
        connection.query_row("SELECT COUNT(*) FROM rows", [], |row| row.get(0)).unwrap()
    }

    fn wait_until(condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn queued(backend: &SqliteBackend) -> usize {
        lock(&backend.writer.queue).waiting.len()
    }

    fn baton_taken(backend: &SqliteBackend) -> bool {
        lock(&backend.writer.queue).idle.is_none()
    }

    type Job<'a, R> = Box<dyn FnOnce(&mut dyn Conn) -> Result<R, StoreError> + Send + 'a>;
    type RerunnableJob<R> = Box<dyn FnMut(&mut dyn Conn) -> Result<R, StoreError> + Send + 'static>;

    /// A job for [`run_queued_as`], and how its caller writes.
    enum Queued<'a, R> {
        /// By `write`.
        Once(Job<'a, R>),
        /// By `write_rerunnable`.
        Rerunnable(RerunnableJob<R>),
    }

    /// Runs `jobs` as one queue behind a job that holds the baton until all are queued, each
    /// on its own thread, in order, so that they all run in one round; returns each job's
    /// result.
    fn run_queued<R: Send + 'static>(
        backend: &SqliteBackend,
        jobs: Vec<Job<'_, R>>,
    ) -> Vec<std::thread::Result<Result<R, StoreError>>> {
        run_queued_as(backend, jobs.into_iter().map(Queued::Once).collect())
    }

    /// [`run_queued`] for jobs written either way. The job holding the baton can run again,
    /// so that it leaves the round free to run the others without savepoints.
    fn run_queued_as<R: Send + 'static>(
        backend: &SqliteBackend,
        jobs: Vec<Queued<'_, R>>,
    ) -> Vec<std::thread::Result<Result<R, StoreError>>> {
        let (release, released) = mpsc::channel::<()>();
        std::thread::scope(|scope| {
            let blocker = scope.spawn(move || {
                let mut first = true;
                backend.write_rerunnable(move |_| {
                    if std::mem::take(&mut first) {
                        released.recv().unwrap();
                    }
                    Ok::<_, StoreError>(())
                })
            });
            wait_until(|| baton_taken(backend));
            let mut handles = Vec::new();
            for (index, job) in jobs.into_iter().enumerate() {
                handles.push(scope.spawn(move || match job {
                    Queued::Once(job) => backend.write(job),
                    Queued::Rerunnable(job) => backend.write_rerunnable(job),
                }));
                wait_until(|| queued(backend) == index + 1);
            }
            release.send(()).unwrap();
            // The blocker's job is in the round too: it shares the round's outcome.
            let _ = blocker.join().unwrap();
            handles.into_iter().map(|handle| handle.join()).collect()
        })
    }

    #[test]
    fn queued_jobs_share_one_transaction_in_queue_order() {
        let (dir, backend) = backend();
        let dir = &dir;
        let jobs = (1..=5)
            .map(|n| -> Job<'_, (i64, i64)> {
                Box::new(move |conn: &mut dyn Conn| {
                    insert(conn, n)?;
                    // What this job sees, and what another connection sees committed.
                    Ok((conn.count("SELECT COUNT(*) FROM rows", &[])?, committed_rows(dir)))
                })
            })
            .collect();
        let results: Vec<(i64, i64)> =
            run_queued(&backend, jobs).into_iter().map(|joined| joined.unwrap().unwrap()).collect();
        assert_eq!(rows(&backend), vec![1, 2, 3, 4, 5], "jobs ran in queue order");
        // Each job saw the rows of the jobs before it, none of them committed yet: one round.
        assert_eq!(results, vec![(1, 0), (2, 0), (3, 0), (4, 0), (5, 0)]);
    }

    #[test]
    fn a_failed_job_vanishes_without_touching_the_others() {
        let (_dir, backend) = backend();
        let jobs: Vec<Job<'_, bool>> = vec![
            Box::new(|conn| {
                insert(conn, 1)?;
                Ok(true)
            }),
            Box::new(|conn| {
                insert(conn, 2)?;
                Err(StoreError::Conflict("the job refuses".into()))
            }),
            // Violates the unique constraint: its statement fails, and so does the job.
            Box::new(|conn| {
                insert(conn, 3)?;
                insert(conn, 1)?;
                Ok(true)
            }),
            Box::new(|conn| {
                let saw_failed_rows = conn.count("SELECT COUNT(*) FROM rows WHERE n IN (2, 3)", &[])? > 0;
                insert(conn, 4)?;
                Ok(saw_failed_rows)
            }),
        ];
        let results: Vec<Result<bool, StoreError>> =
            run_queued(&backend, jobs).into_iter().map(|joined| joined.unwrap()).collect();
        assert!(matches!(results[0], Ok(true)));
        assert!(matches!(&results[1], Err(StoreError::Conflict(message)) if message == "the job refuses"));
        assert!(matches!(results[2], Err(StoreError::Conflict(_))), "{:?}", results[2]);
        assert!(matches!(results[3], Ok(false)), "a later job saw a failed job's rows: {:?}", results[3]);
        assert_eq!(rows(&backend), vec![1, 4]);
    }

    #[test]
    fn a_failed_commit_fails_every_job_of_the_round_and_keeps_nothing() {
        let (_dir, backend) = backend();
        let jobs: Vec<Job<'_, ()>> = vec![
            Box::new(|conn| insert(conn, 1)),
            // Succeeds by itself; the deferred foreign key fails the COMMIT.
            Box::new(|conn| conn.execute("INSERT INTO children (parent) VALUES (42)", &[]).map(|_| ())),
            Box::new(|conn| insert(conn, 2)),
            Box::new(|_| Err(StoreError::Conflict("refused".into()))),
        ];
        for (index, joined) in run_queued(&backend, jobs).into_iter().enumerate() {
            let result = joined.unwrap();
            assert!(
                matches!(&result, Err(StoreError::Database(message)) if message.contains("did not commit")),
                "job {index}: {result:?}"
            );
        }
        assert_eq!(rows(&backend), Vec::<i64>::new());
        // The writer goes on.
        backend.write(|conn| insert(conn, 3)).unwrap();
        assert_eq!(rows(&backend), vec![3]);
    }

    #[test]
    fn a_panicking_job_is_rolled_back_and_the_round_goes_on() {
        let (_dir, backend) = backend();
        let jobs: Vec<Job<'_, ()>> = vec![
            Box::new(|conn| insert(conn, 1)),
            Box::new(|conn| {
                insert(conn, 2)?;
                panic!("a job panics");
            }),
            Box::new(|conn| insert(conn, 3)),
        ];
        let results = run_queued(&backend, jobs);
        assert!(results[0].as_ref().unwrap().is_ok());
        assert!(results[1].is_err(), "the panic reaches its caller");
        assert!(results[2].as_ref().unwrap().is_ok());
        assert_eq!(rows(&backend), vec![1, 3]);
    }

    /// Runs of each job of a test, counted by the jobs.
    type Runs = Arc<Vec<AtomicUsize>>;

    fn runs(jobs: usize) -> Runs {
        Arc::new((0..jobs).map(|_| AtomicUsize::new(0)).collect())
    }

    /// A rerunnable job that counts its runs in `runs[index]` and inserts `n`.
    fn counted_insert(runs: &Runs, index: usize, n: i64) -> Queued<'static, ()> {
        counted(runs, index, move |conn| insert(conn, n))
    }

    /// A rerunnable job that counts its runs in `runs[index]`, then does `work`.
    fn counted(
        runs: &Runs,
        index: usize,
        mut work: impl FnMut(&mut dyn Conn) -> Result<(), StoreError> + Send + 'static,
    ) -> Queued<'static, ()> {
        let runs = runs.clone();
        Queued::Rerunnable(Box::new(move |conn| {
            runs[index].fetch_add(1, Ordering::SeqCst);
            work(conn)
        }))
    }

    fn counts(runs: &Runs) -> Vec<usize> {
        runs.iter().map(|runs| runs.load(Ordering::SeqCst)).collect()
    }

    /// The rule that lets the hot path skip savepoints: a job that fails having written
    /// leaves nothing behind, and every job of its round still lands exactly once.
    #[test]
    fn a_rerunnable_job_failing_after_it_wrote_undoes_the_round_and_every_job_lands_once() {
        let (_dir, backend) = backend();
        let runs = runs(3);
        let jobs = vec![
            counted_insert(&runs, 0, 1),
            counted(&runs, 1, |conn| {
                insert(conn, 2)?;
                Err(StoreError::Conflict("the job refuses".into()))
            }),
            counted_insert(&runs, 2, 3),
        ];
        let results: Vec<_> = run_queued_as(&backend, jobs).into_iter().map(|joined| joined.unwrap()).collect();
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        assert!(matches!(&results[1], Err(StoreError::Conflict(message)) if message == "the job refuses"));
        let mut landed = rows(&backend);
        landed.sort();
        assert_eq!(landed, vec![1, 3], "the failed job's row is gone, the others are there once");
        // The first job's round was undone and it ran again; the failed job ran again (in a
        // savepoint) to fail alone; the job queued after it ran once, in a new round.
        assert_eq!(counts(&runs), vec![2, 2, 1]);
    }

    /// The holder of the connection runs the jobs offered behind it on its own thread: a
    /// round of the hot path wakes its callers once, at its end.
    #[test]
    fn offered_jobs_run_on_the_thread_that_holds_the_connection() {
        let (_dir, backend) = backend();
        let threads = Arc::new(Mutex::new(Vec::new()));
        let jobs = (1..=4)
            .map(|n| {
                let threads = threads.clone();
                Queued::Rerunnable(Box::new(move |conn: &mut dyn Conn| {
                    lock(&threads).push(std::thread::current().id());
                    insert(conn, n)
                }) as RerunnableJob<()>)
            })
            .collect();
        for joined in run_queued_as(&backend, jobs) {
            joined.unwrap().unwrap();
        }
        assert_eq!(rows(&backend), vec![1, 2, 3, 4], "in queue order, once each");
        let threads = lock(&threads);
        assert!(threads.iter().all(|thread| *thread == threads[0]), "one thread ran them all: {threads:?}");
    }

    #[test]
    fn a_rerunnable_job_failing_before_it_writes_undoes_nothing() {
        let (_dir, backend) = backend();
        let runs = runs(3);
        let jobs = vec![
            counted_insert(&runs, 0, 1),
            counted(&runs, 1, |_| Err(StoreError::Conflict("refused before writing".into()))),
            counted_insert(&runs, 2, 3),
        ];
        let results: Vec<_> = run_queued_as(&backend, jobs).into_iter().map(|joined| joined.unwrap()).collect();
        assert!(results[0].is_ok() && results[1].is_err() && results[2].is_ok(), "{results:?}");
        assert_eq!(rows(&backend), vec![1, 3]);
        assert_eq!(counts(&runs), vec![1, 1, 1], "nothing ran twice");
    }

    /// A job written with `write` runs once: once it is in a round, later jobs keep to
    /// savepoints, so a failure cannot undo it.
    #[test]
    fn a_job_that_cannot_run_again_is_never_undone() {
        let (_dir, backend) = backend();
        let runs = runs(2);
        let jobs = vec![
            counted_insert(&runs, 0, 1),
            Queued::Once(Box::new(|conn| insert(conn, 2))),
            counted(&runs, 1, |conn| {
                insert(conn, 3)?;
                Err(StoreError::Conflict("refused after writing".into()))
            }),
        ];
        let results: Vec<_> = run_queued_as(&backend, jobs).into_iter().map(|joined| joined.unwrap()).collect();
        assert!(results[0].is_ok() && results[1].is_ok() && results[2].is_err(), "{results:?}");
        assert_eq!(rows(&backend), vec![1, 2]);
        assert_eq!(counts(&runs), vec![1, 1]);
    }

    #[test]
    fn a_panicking_rerunnable_job_undoes_its_round_and_the_others_land() {
        let (_dir, backend) = backend();
        let runs = runs(2);
        let jobs = vec![
            counted_insert(&runs, 0, 1),
            Queued::Rerunnable(Box::new(|conn| {
                insert(conn, 2)?;
                panic!("a job panics");
            })),
            counted_insert(&runs, 1, 3),
        ];
        let results = run_queued_as(&backend, jobs);
        assert!(results[1].is_err(), "the panic reaches its caller");
        assert!(results[0].as_ref().unwrap().is_ok() && results[2].as_ref().unwrap().is_ok());
        let mut landed = rows(&backend);
        landed.sort();
        assert_eq!(landed, vec![1, 3]);
        assert_eq!(counts(&runs), vec![2, 1]);
    }

    /// Several servers or `tally migrate` runs started together open one new file at once:
    /// each of them must open it (SQLite fails the switch to WAL mode of a connection that
    /// collides with another's at once, without waiting for the busy timeout).
    #[test]
    fn connections_opened_at_once_on_a_new_file_all_open_it_in_wal_mode() {
        const OPENERS: usize = 8;
        for _ in 0..150 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("new.db");
            let together = std::sync::Barrier::new(OPENERS);
            let opened: Vec<Result<String, StoreError>> = std::thread::scope(|scope| {
                let openers: Vec<_> = (0..OPENERS)
                    .map(|_| {
                        scope.spawn(|| {
                            together.wait();
                            let connection = connect(&path)?;
                            connection.query_row("PRAGMA journal_mode", [], |row| row.get(0)).map_err(database)
                        })
                    })
                    .collect();
                openers.into_iter().map(|opener| opener.join().unwrap()).collect()
            });
            for mode in opened {
                assert_eq!(mode.expect("open the new file"), "wal");
            }
        }
    }

    #[test]
    fn many_concurrent_writers_all_land_once() {
        let (_dir, backend) = backend();
        std::thread::scope(|scope| {
            for thread in 0..8 {
                let backend = &backend;
                scope.spawn(move || {
                    for index in 0..50 {
                        let n = thread * 1000 + index;
                        backend.write(|conn| insert(conn, n)).unwrap();
                        // A replay conflicts and changes nothing.
                        assert!(matches!(backend.write(|conn| insert(conn, n)), Err(StoreError::Conflict(_))));
                    }
                });
            }
        });
        let mut stored = rows(&backend);
        stored.sort_unstable();
        let mut expected: Vec<i64> =
            (0..8).flat_map(|thread| (0..50).map(move |index| thread * 1000 + index)).collect();
        expected.sort_unstable();
        assert_eq!(stored, expected);
    }

    /// The log's sync as a test holds it: each sync asks on `requested` and waits for the
    /// test's answer on `answer`.
    struct SyncGate {
        requested: mpsc::Receiver<()>,
        answer: mpsc::Sender<std::io::Result<()>>,
    }

    impl SyncGate {
        /// Waits for the sync thread to ask for a sync, and answers it.
        fn allow_next(&self, outcome: std::io::Result<()>) {
            self.requested.recv().unwrap();
            self.answer.send(outcome).unwrap();
        }
    }

    /// [`backend`] with the log's sync held by the test (its table made already).
    fn gated_backend() -> (tempfile::TempDir, SqliteBackend, SyncGate) {
        let dir = tempfile::tempdir().unwrap();
        let (ask, requested) = mpsc::channel();
        let (answer, answers) = mpsc::channel();
        // A sync the test never answers fails, so that a broken rule fails its test instead of
        // leaving it waiting for a thread that waits for the sync.
        let sync: SyncFile = Box::new(move || {
            let _ = ask.send(());
            answers.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| Err(std::io::Error::other("not answered")))
        });
        let backend = SqliteBackend::open_with_sync(&dir.path().join("test.db"), Some(sync)).unwrap();
        let gate = SyncGate { requested, answer };
        std::thread::scope(|scope| {
            let made = scope.spawn(|| {
                backend.write(|conn| conn.execute("CREATE TABLE rows (n BIGINT NOT NULL UNIQUE)", &[]).map(|_| ()))
            });
            gate.allow_next(Ok(()));
            made.join().unwrap().unwrap();
        });
        (dir, backend, gate)
    }

    /// Reads the rows while what the read could see is held back, then lets it go with
    /// `release`: whether the read returned before that (seen, not asserted, so that a broken
    /// rule leaves no thread waiting for the held sync), and the rows it returned.
    fn read_held_back(backend: &SqliteBackend, release: impl FnOnce()) -> (bool, Vec<i64>) {
        std::thread::scope(|scope| {
            let read = scope.spawn(|| rows(backend));
            wait_until(|| read.is_finished() || backend.writer.log.readers_waiting() == 1);
            let shown_early = read.is_finished();
            release();
            (shown_early, read.join().unwrap())
        })
    }

    #[test]
    fn a_write_is_answered_once_the_log_is_synced_and_the_next_round_runs_meanwhile() {
        let (_dir, backend, gate) = gated_backend();
        let backend = &backend;
        std::thread::scope(|scope| {
            let first = scope.spawn(|| backend.write(|conn| insert(conn, 1)));
            // Its round committed; the log's sync is asked for and held.
            gate.requested.recv().unwrap();
            let second = scope.spawn(|| backend.write(|conn| insert(conn, 2)));
            // The next round runs and commits while the first one's sync is held.
            wait_until(|| backend.writer.log.rounds_committed() == 3);
            // Seen, not asserted, until every thread is let go: a failed assertion here would
            // leave the scope waiting for a thread that waits for the held sync.
            let answered_early = backend.writer.log.answered_ok();
            gate.answer.send(Ok(())).unwrap();
            first.join().unwrap().unwrap();
            // The second round needs a sync that began after its COMMIT: the first sync
            // answered its own round's caller only (and the table's, before).
            gate.requested.recv().unwrap();
            let answered_by_the_first_sync = backend.writer.log.answered_ok();
            gate.answer.send(Ok(())).unwrap();
            second.join().unwrap().unwrap();
            assert_eq!(answered_early, 1, "answered before the log was synced");
            assert_eq!(answered_by_the_first_sync, 2, "answered before a sync covering its round");
        });
        assert_eq!(rows(backend), vec![1, 2]);
    }

    #[test]
    fn a_read_returns_only_once_what_it_could_see_is_on_disk() {
        let (_dir, backend, gate) = gated_backend();
        let backend = &backend;
        std::thread::scope(|scope| {
            let write = scope.spawn(|| backend.write(|conn| insert(conn, 7)));
            gate.requested.recv().unwrap();
            // Committed, not yet synced: a read sees the row, and must not show it yet.
            let (shown_early, read) = read_held_back(backend, || gate.answer.send(Ok(())).unwrap());
            assert_eq!(read, vec![7]);
            write.join().unwrap().unwrap();
            assert!(!shown_early, "a read showed a round before the log was synced");
        });
    }

    #[test]
    fn a_failed_sync_fails_its_round_and_every_later_commit_and_read() {
        let (_dir, backend, gate) = gated_backend();
        let backend = &backend;
        std::thread::scope(|scope| {
            let write = scope.spawn(|| backend.write(|conn| insert(conn, 1)));
            gate.allow_next(Err(std::io::Error::other("the disk is gone")));
            let error = write.join().unwrap().unwrap_err().to_string();
            assert!(error.contains("could not be synced to disk: the disk is gone"), "{error}");
        });
        // The row may be in the log; it was never acknowledged, and nothing built on it is.
        let later = backend.write(|conn| insert(conn, 2)).unwrap_err().to_string();
        assert!(later.contains("could not be synced"), "{later}");
        let read = backend.read(|conn| conn.count("SELECT COUNT(*) FROM rows", &[])).unwrap_err().to_string();
        assert!(read.contains("could not be synced"), "{read}");
    }

    #[test]
    fn a_round_counts_for_reads_from_before_its_commit() {
        let (_dir, backend, gate) = gated_backend();
        let backend = &backend;
        // Holds the writer between its COMMIT (the round visible) and handing the round over.
        let (committed, was_committed) = mpsc::channel::<()>();
        let (go_on, going_on) = mpsc::channel::<()>();
        let going_on = Mutex::new(going_on);
        *lock(&backend.writer.after_commit) = Box::new(move || {
            let _ = committed.send(());
            let _ = lock(&going_on).recv_timeout(Duration::from_secs(30));
        });
        std::thread::scope(|scope| {
            let write = scope.spawn(|| backend.write(|conn| insert(conn, 9)));
            was_committed.recv().unwrap();
            let (shown_early, read) = read_held_back(backend, || {
                go_on.send(()).unwrap();
                gate.allow_next(Ok(()));
            });
            assert_eq!(read, vec![9]);
            write.join().unwrap().unwrap();
            assert!(!shown_early, "a read showed a round whose COMMIT had not been counted");
        });
    }

    /// The file synced is the log SQLite writes: named after the database's real path, so a
    /// database reached through a symbolic link syncs the log beside the file itself.
    #[test]
    fn the_log_synced_is_the_one_sqlite_writes() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.db");
        let link = dir.path().join("link.db");
        std::fs::write(&real, b"").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let backend = SqliteBackend::open(&link).unwrap();
        backend.write(|conn| conn.execute("CREATE TABLE rows (n BIGINT)", &[]).map(|_| ())).unwrap();
        assert_eq!(backend.files.log_path, dir.path().canonicalize().unwrap().join("real.db-wal"));
        assert!(!dir.path().join("link.db-wal").exists(), "SQLite wrote a log by the link's name");
    }

    /// SQLite ends a transaction by itself on some errors (a full disk, an I/O error); a
    /// ROLLBACK run by the job stands in for them here. Whatever ended it, the job's next
    /// statements must not run, each committing alone.
    #[test]
    fn no_statement_runs_once_sqlite_has_ended_the_transaction() {
        let (_dir, backend) = backend();
        let outcome = backend.write(|conn| {
            insert(conn, 1)?;
            conn.execute("ROLLBACK", &[])?;
            insert(conn, 2)
        });
        assert!(outcome.is_err());
        assert_eq!(rows(&backend), Vec::<i64>::new(), "nothing of the job was kept");
    }

    /// The background checkpointer writes what it copied into the database file to disk, so
    /// that the writer's own checkpoint (which syncs the file on the serial path) finds
    /// little left to write; a pass that copied nothing new syncs nothing.
    #[test]
    fn a_checkpoint_that_copied_pages_syncs_the_database_file_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.db");
        let writer = connect(&path).unwrap();
        // Only the checkpoints under test copy the log.
        writer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        writer.execute_batch("CREATE TABLE rows (n BIGINT NOT NULL)").unwrap();
        let checkpointer = connect(&path).unwrap();
        let syncs = Arc::new(Mutex::new(0));
        let counted = syncs.clone();
        let mut sync: SyncFile = Box::new(move || {
            *lock(&counted) += 1;
            Ok(())
        });
        let mut last = CopiedFrames::default();
        let mut pass = |expected: usize| {
            checkpoint(&checkpointer, &mut last, &mut sync).unwrap();
            assert_eq!(*lock(&syncs), expected);
        };
        pass(1);
        pass(1);
        // Each pass copied the whole log, so each INSERT starts it again from its beginning:
        // the second leaves the same counts as the first, and only SQLite's count of commits
        // tells the passes after them apart.
        writer.execute("INSERT INTO rows VALUES (1)", []).unwrap();
        pass(2);
        pass(2);
        writer.execute("INSERT INTO rows VALUES (2)", []).unwrap();
        pass(3);
    }
}
