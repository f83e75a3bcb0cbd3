//! `POST /events` requests that arrive together are ingested together, in rounds: one
//! transaction for several requests, with the statements they can share run once
//! (`ops::events::ingest_round`). On PostgreSQL a request's cost is mostly its statements
//! (about twenty for a single event); a round shares the customer locks, the event-id lookup
//! and every insert among its requests.
//!
//! A request joins the queue of its mode. At most `ingest_rounds` rounds run at a time
//! ([`default_rounds_at_once`] unless set), each on a blocking thread that takes the queue's
//! oldest requests of one mode (at most [`MAX_REQUESTS`] requests and [`MAX_EVENTS`] events)
//! and goes on taking while any wait. On PostgreSQL a customer belongs to one running round
//! at a time: a request whose customer a running round holds waits for a later round,
//! instead of joining one that would wait on the database for that round's lock on the
//! customer (rounds that share customers ran one after another anyway, each holding the locks
//! of all its customers while it waited). So under load a customer's requests gather in its
//! next round. (SQLite's one writer runs rounds one after another in its group commit, where
//! no round waits for another's locks: there any rounds run at once.)
//! A request that arrives while a round runs waits for the next round, so under load rounds
//! grow, and alone a request runs at once in a round of one. Every request is answered what
//! it would have been answered alone: a round that fails is run again a request at a time.

use crate::catalog::CatalogCache;
use std::collections::{HashSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use tally_core::Mode;
use tally_store::ops::events::{self as event_ops, CustomerRef, IngestReport, IngestRequest};
use tally_store::ops::OpError;
use tally_store::Store;
use tokio::sync::oneshot;

/// How many rounds run at once unless `ingest_rounds` says: enough to keep the database busy
/// while other rounds' answers travel back, few enough that rounds fill. SQLite runs one
/// writer, whose group commit takes whatever rounds wait; PostgreSQL runs rounds side by side,
/// each on its own connection, and did best at 2 of 1, 2, 3, 4 and 8 on two cores once a
/// customer's requests in a round went on from each other's state: fewer, larger rounds
/// (docs/benchmarks.md, "Rounds that read once what their fees need").
pub fn default_rounds_at_once(dialect: tally_store::Dialect) -> usize {
    match dialect {
        tally_store::Dialect::Sqlite => 4,
        tally_store::Dialect::Postgres => 2,
    }
}
/// The most requests in one round.
pub const MAX_REQUESTS: usize = 64;
/// The most events in one round (a request of more still runs, alone).
pub const MAX_EVENTS: usize = 1_000;

type Answer = oneshot::Sender<Result<IngestReport, OpError>>;

/// The answer of a request whose ingestion panicked (nothing of it was committed).
fn panicked() -> OpError {
    OpError::Store(tally_store::StoreError::Database("ingesting the request stopped (a panic)".into()))
}

struct Waiting {
    mode: Mode,
    request: IngestRequest,
    answer: Answer,
}

/// A customer as its requests name it. A customer named by id in one request and by
/// external id in another counts as two here; its rounds then wait for each other on the
/// database's lock, as any rounds of other servers do.
type CustomerKey = (Mode, CustomerRef);

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiting>,
    running: usize,
    /// The customers of the rounds running.
    held: HashSet<CustomerKey>,
}

pub struct IngestRounds {
    store: Arc<Store>,
    catalog: Arc<CatalogCache>,
    queue: Mutex<Queue>,
    rounds_at_once: usize,
    /// Whether a customer belongs to one running round at a time (PostgreSQL).
    one_round_a_customer: bool,
}

impl IngestRounds {
    /// Rounds over `store`; `rounds_at_once` 0 means the backend's default.
    pub fn new(store: Arc<Store>, catalog: Arc<CatalogCache>, rounds_at_once: usize) -> IngestRounds {
        let rounds_at_once = if rounds_at_once == 0 { default_rounds_at_once(store.dialect()) } else { rounds_at_once };
        let one_round_a_customer = store.dialect() == tally_store::Dialect::Postgres;
        IngestRounds { store, catalog, queue: Mutex::default(), rounds_at_once, one_round_a_customer }
    }

    /// Ingests `request` in the next round of `mode`, and answers as `ops::events::ingest`.
    pub async fn ingest(self: &Arc<Self>, mode: Mode, request: IngestRequest) -> Result<IngestReport, OpError> {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut queue = self.lock();
            queue.waiting.push_back(Waiting { mode, request, answer });
            let start = queue.running < self.rounds_at_once;
            if start {
                queue.running += 1;
            }
            start
        };
        if start {
            let rounds = self.clone();
            tokio::task::spawn_blocking(move || rounds.run());
        }
        answered.await.map_err(|_| panicked())?
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs rounds until no request waits.
    fn run(&self) {
        // Counted out however this thread ends, so that a panic never leaves the count
        // full with no round running. (`next_round` counts a thread out itself, under the
        // same lock as it finds the queue empty: a request queued after that starts a round.)
        // Its round's customers are released the same way.
        struct Running<'a> {
            rounds: &'a IngestRounds,
            counted_out: bool,
            holding: Vec<CustomerKey>,
        }
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                let mut queue = self.rounds.lock();
                for customer in &self.holding {
                    queue.held.remove(customer);
                }
                if !self.counted_out {
                    queue.running -= 1;
                }
            }
        }
        let mut running = Running { rounds: self, counted_out: false, holding: Vec::new() };
        loop {
            let Some((mode, round)) = self.next_round(&mut running.holding) else {
                running.counted_out = true;
                return;
            };
            let (requests, answers): (Vec<IngestRequest>, Vec<Answer>) =
                round.into_iter().map(|waiting| (waiting.request, waiting.answer)).unzip();
            let mut answers: Vec<Option<Answer>> = answers.into_iter().map(Some).collect();
            self.answer_round(mode, requests, |index, outcome| {
                if let Some(answer) = answers[index].take() {
                    let _ = answer.send(outcome);
                }
            });
        }
    }

    /// Releases the customers of the calling thread's last round (`holding`), then takes the
    /// oldest waiting requests of one mode whose customers no other running round holds, as
    /// many as a round takes, and holds their customers in `holding`. None when no request
    /// can be taken, and then the calling thread is counted out: the rounds holding the
    /// customers of the requests left take them when they end.
    fn next_round(&self, holding: &mut Vec<CustomerKey>) -> Option<(Mode, Vec<Waiting>)> {
        let mut queue = self.lock();
        for customer in holding.drain(..) {
            queue.held.remove(&customer);
        }
        let free = |queue: &Queue, waiting: &Waiting| {
            queue.held.is_empty() || !queue.held.contains(&(waiting.mode, waiting.request.customer.clone()))
        };
        let Some(mode) = queue.waiting.iter().find(|waiting| free(&queue, waiting)).map(|waiting| waiting.mode) else {
            queue.running -= 1;
            return None;
        };
        let mut round: Vec<Waiting> = Vec::new();
        let mut events = 0;
        let mut index = 0;
        while index < queue.waiting.len() && round.len() < MAX_REQUESTS {
            let waiting = &queue.waiting[index];
            let size = waiting.request.events.len();
            if waiting.mode != mode || !free(&queue, waiting) {
                index += 1;
                continue;
            }
            if !round.is_empty() && events + size > MAX_EVENTS {
                break;
            }
            events += size;
            round.push(queue.waiting.remove(index).expect("index is in the queue"));
        }
        // Held once the round is formed: until then, a customer's later requests join it.
        if self.one_round_a_customer {
            for waiting in &round {
                let customer = (mode, waiting.request.customer.clone());
                if queue.held.insert(customer.clone()) {
                    holding.push(customer);
                }
            }
        }
        Some((mode, round))
    }

    /// Runs `requests` as one round and answers them in order; the test suite's way in.
    /// A request whose run panicked is answered with an error.
    pub fn run_round(&self, mode: Mode, requests: Vec<IngestRequest>) -> Vec<Result<IngestReport, OpError>> {
        let mut answers: Vec<Result<IngestReport, OpError>> = (0..requests.len()).map(|_| Err(panicked())).collect();
        self.answer_round(mode, requests, |index, outcome| answers[index] = outcome);
        answers
    }

    /// Runs `requests` as one round (even a round of one: it reads what its fees need in
    /// fewer statements than `ingest` does), or each alone when the round cannot be kept, and
    /// gives `answer` each request's outcome, by its index, as soon as it is known: a request
    /// run alone is answered before the next one runs, so one that panics costs only its own
    /// answer (its caller sees an error), never another's.
    fn answer_round(
        &self,
        mode: Mode,
        requests: Vec<IngestRequest>,
        mut answer: impl FnMut(usize, Result<IngestReport, OpError>),
    ) {
        let shared = Arc::new(requests);
        let (round, catalog) = (shared.clone(), self.catalog.clone());
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            self.store.write_rerunnable(move |conn| event_ops::ingest_round(conn, mode, &round, catalog.as_ref()))
        }));
        if let Ok(Ok(answers)) = outcome {
            for (index, outcome) in answers.into_iter().enumerate() {
                answer(index, outcome);
            }
            return;
        }
        metrics::counter!("tally_ingest_rounds_run_alone_total").increment(1);
        let requests = Arc::try_unwrap(shared).unwrap_or_else(|shared| shared.as_ref().clone());
        self.answer_each_alone(mode, requests, answer)
    }

    fn answer_each_alone(
        &self,
        mode: Mode,
        requests: Vec<IngestRequest>,
        mut answer: impl FnMut(usize, Result<IngestReport, OpError>),
    ) {
        for (index, request) in requests.into_iter().enumerate() {
            if let Ok(outcome) = catch_unwind(AssertUnwindSafe(|| self.run_alone(mode, request))) {
                answer(index, outcome);
            }
        }
    }

    fn run_alone(&self, mode: Mode, request: IngestRequest) -> Result<IngestReport, OpError> {
        let catalog = self.catalog.clone();
        // Ingesting changes only rows (the grant cache checks each row's token), so it can
        // run again: SQLite then runs it without a savepoint.
        self.store.write_rerunnable(move |conn| {
            event_ops::ingest(conn, mode, &request.customer, &request.events, catalog.as_ref(), request.now)
        })
    }
}
