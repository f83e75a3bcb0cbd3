//! Property tests of the wallet operations against a real SQLite store: random sequences of
//! credits (each reason, future starts, expiries), debits, charges, replays of earlier
//! transaction ids, invalid requests, time advancing and explicit settling.
//!
//! The test keeps its own model of every account, written from the rules rather than from
//! the code (burn order, refunds taking the newest paid credit first, overdraft repaid first,
//! starts and expiries applied in time order),
//! and after every step compares the stored balances and each grant's remainder with it.
//! After each sequence the ledger must verify, no grant may be below zero, the customer-facing
//! transactions must add up to the balance, and each balance must equal credits minus debits
//! minus what expired, all three summed by the model.

use chrono::{DateTime, Duration, Months, TimeZone, Utc};
use proptest::prelude::*;
use proptest::sample::Index;
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use tally_core::asset::AssetCode;
use tally_core::charge::ChargeInputs;
use tally_core::Mode;
use tally_store::ops::customers::{self as customer_ops, NewCustomer};
use tally_store::ops::wallet::{self as wallet_ops, Adjustment, AdjustmentReason, Charge, Outcome};
use tally_store::ops::{ledger, OpError};
use tally_store::repo::transactions::Transaction;
use tally_store::repo::wallets::AccountKey;
use tally_store::{Conn, DatabaseUrl, Store};

const ACCOUNT_NAMES: [&str; 2] = ["default", "savings"];
const MODE: Mode = Mode::Test;

fn start_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap()
}

// ---------------------------------------------------------------------------------------
// The model.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModelState {
    Pending,
    Active,
    Expired,
}

#[derive(Debug, Clone)]
struct ModelGrant {
    transaction_id: String,
    /// 0 promotion, 1 bundled, 2 paid: the order in which debits burn them.
    purpose_rank: u8,
    remaining: Decimal,
    effective_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    state: ModelState,
}

impl ModelGrant {
    /// Promotion before bundled before paid; then soonest expiry (never last); then oldest.
    /// Every step runs at its own instant, so `created_at` makes the order total.
    fn burn_key(&self) -> (u8, bool, Option<DateTime<Utc>>, DateTime<Utc>) {
        (self.purpose_rank, self.expires_at.is_none(), self.expires_at, self.created_at)
    }
}

#[derive(Debug, Clone, Default)]
struct ModelAccount {
    grants: Vec<ModelGrant>,
    debt: Decimal,
    credited: Decimal,
    debited: Decimal,
    expired: Decimal,
}

impl ModelAccount {
    fn available(&self) -> Decimal {
        self.active_remaining() - self.debt
    }

    fn active_remaining(&self) -> Decimal {
        self.grants.iter().filter(|grant| grant.state == ModelState::Active).map(|grant| grant.remaining).sum()
    }

    fn pending_in(&self) -> Decimal {
        self.grants.iter().filter(|grant| grant.state == ModelState::Pending).map(|grant| grant.remaining).sum()
    }

    /// A grant that starts repays the overdraft before anything else.
    fn start(&mut self, index: usize) {
        let grant = &mut self.grants[index];
        let repaid = grant.remaining.min(self.debt);
        grant.remaining -= repaid;
        grant.state = ModelState::Active;
        self.debt -= repaid;
    }

    /// Applies every start and expiry due at or before `now`, in time order; at one instant,
    /// starts before expiries, and starts in burn order (the grant that would be spent first
    /// repays the overdraft first).
    fn settle(&mut self, now: DateTime<Utc>) {
        loop {
            let due = self
                .grants
                .iter()
                .enumerate()
                .filter_map(|(index, grant)| match grant.state {
                    ModelState::Pending => Some((grant.effective_at, 0, grant.burn_key(), index)),
                    ModelState::Active if !grant.remaining.is_zero() => {
                        grant.expires_at.map(|at| (at, 1, grant.burn_key(), index))
                    }
                    ModelState::Active | ModelState::Expired => None,
                })
                .filter(|(at, ..)| *at <= now)
                .min();
            let Some((_, kind, _, index)) = due else { return };
            if kind == 0 {
                self.start(index);
            } else {
                let grant = &mut self.grants[index];
                self.expired += grant.remaining;
                grant.remaining = Decimal::ZERO;
                grant.state = ModelState::Expired;
            }
        }
    }

    fn credit(&mut self, grant: ModelGrant, now: DateTime<Utc>) {
        self.credited += grant.remaining;
        let starts_now = grant.effective_at <= now;
        self.grants.push(grant);
        if starts_now {
            self.start(self.grants.len() - 1);
        }
    }

    fn debit(&mut self, amount: Decimal) {
        let mut order = self.spendable();
        order.sort_by_key(|&index| self.grants[index].burn_key());
        self.take(amount, order);
    }

    /// A refund gives back what the customer paid: paid credit first, the newest payment
    /// first; then the other credit in burn order; then debt.
    fn refund(&mut self, amount: Decimal) {
        let mut order = self.spendable();
        order.sort_by_key(|&index| {
            let grant = &self.grants[index];
            let paid = grant.purpose_rank == 2;
            (
                !paid,
                if paid { std::cmp::Reverse(Some(grant.created_at)) } else { std::cmp::Reverse(None) },
                grant.burn_key(),
            )
        });
        self.take(amount, order);
    }

    fn spendable(&self) -> Vec<usize> {
        (0..self.grants.len())
            .filter(|&index| {
                self.grants[index].state == ModelState::Active && self.grants[index].remaining > Decimal::ZERO
            })
            .collect()
    }

    fn take(&mut self, amount: Decimal, order: Vec<usize>) {
        self.debited += amount;
        let mut left = amount;
        for index in order {
            let taken = self.grants[index].remaining.min(left);
            self.grants[index].remaining -= taken;
            left -= taken;
        }
        self.debt += left;
    }
}

// ---------------------------------------------------------------------------------------
// The steps.

#[derive(Debug, Clone, Copy)]
enum CreditReason {
    Gift,
    ExternalTopup,
    Other,
}

#[derive(Debug, Clone)]
enum Step {
    Credit {
        account: usize,
        reason: CreditReason,
        amount: Decimal,
        /// Relative to now; negative means "in the past", which the server moves to now.
        effective_in_minutes: Option<i64>,
        /// Relative to now; zero or negative is refused.
        expires_in_minutes: Option<i64>,
    },
    Debit {
        account: usize,
        refund: bool,
        amount: Decimal,
    },
    Charge {
        account: usize,
        amount: Decimal,
    },
    /// A credit-only reason with a negative amount, or a refund with a positive one: refused.
    WrongSign {
        account: usize,
        reason: AdjustmentReason,
        amount: Decimal,
    },
    /// Sends an earlier accepted request again: unchanged, or changed (a conflict), either
    /// within its kind or as the other kind (an adjustment's id reused for a charge).
    Replay {
        pick: Index,
        change: Option<bool>,
    },
    Advance {
        minutes: i64,
    },
    /// Jumps past a year, so that paid grants reach their default expiry.
    Leap,
    Settle {
        account: usize,
    },
}

fn amount() -> impl Strategy<Value = Decimal> {
    (1i64..=200_000, 2u32..=6).prop_map(|(mantissa, scale)| Decimal::new(mantissa, scale))
}

fn step() -> impl Strategy<Value = Step> {
    let account = 0..ACCOUNT_NAMES.len();
    let reason = prop_oneof![Just(CreditReason::Gift), Just(CreditReason::ExternalTopup), Just(CreditReason::Other)];
    prop_oneof![
        6 => (account.clone(), reason, amount(), prop::option::of(-30i64..=600), prop::option::of(-30i64..=1200)).prop_map(
            |(account, reason, amount, effective_in_minutes, expires_in_minutes)| Step::Credit {
                account,
                reason,
                amount,
                effective_in_minutes,
                expires_in_minutes,
            }
        ),
        2 => (account.clone(), any::<bool>(), amount()).prop_map(|(account, refund, amount)| Step::Debit { account, refund, amount }),
        3 => (account.clone(), amount()).prop_map(|(account, amount)| Step::Charge { account, amount }),
        1 => (
            account.clone(),
            prop_oneof![
                Just(AdjustmentReason::Gift),
                Just(AdjustmentReason::ExternalTopup),
                Just(AdjustmentReason::ExternalRefund)
            ],
            amount()
        )
            .prop_map(|(account, reason, amount)| Step::WrongSign { account, reason, amount }),
        3 => (any::<Index>(), prop::option::of(any::<bool>())).prop_map(|(pick, change)| Step::Replay { pick, change }),
        3 => (1i64..=900).prop_map(|minutes| Step::Advance { minutes }),
        1 => Just(Step::Leap),
        1 => account.prop_map(|account| Step::Settle { account }),
    ]
}

// ---------------------------------------------------------------------------------------
// Running a sequence.

#[derive(Debug, Clone)]
enum Request {
    Adjust(Adjustment),
    Charge(Charge),
}

impl Request {
    fn transaction_id(&self) -> &str {
        match self {
            Request::Adjust(adjustment) => &adjustment.transaction_id,
            Request::Charge(charge) => &charge.transaction_id,
        }
    }

    /// The same transaction id with a different body.
    fn changed(&self, other_kind: bool) -> Request {
        match (self, other_kind) {
            (Request::Adjust(adjustment), false) => {
                Request::Adjust(Adjustment { amount: adjustment.amount + Decimal::new(1, 6), ..adjustment.clone() })
            }
            (Request::Charge(charge), false) => {
                Request::Charge(Charge { description: Some("changed".into()), ..charge.clone() })
            }
            (Request::Adjust(adjustment), true) => Request::Charge(Charge {
                transaction_id: adjustment.transaction_id.clone(),
                account_name: adjustment.account_name.clone(),
                asset: adjustment.asset.clone(),
                amount: adjustment.amount.abs(),
                inputs: ChargeInputs::default(),
                subject: None,
                description: None,
                metadata: BTreeMap::new(),
            }),
            (Request::Charge(charge), true) => Request::Adjust(Adjustment {
                transaction_id: charge.transaction_id.clone(),
                account_name: charge.account_name.clone(),
                asset: charge.asset.clone(),
                amount: charge.amount,
                description: None,
                reason: AdjustmentReason::Gift,
                effective_at: None,
                expires_at: None,
                metadata: BTreeMap::new(),
            }),
        }
    }
}

/// Everything stored that a replay or a refused request must leave alone.
#[derive(Debug, PartialEq)]
struct Snapshot {
    accounts: Vec<Vec<String>>,
    grants: Vec<Vec<String>>,
    entries: i64,
    postings: i64,
    transactions: i64,
}

fn rows_as_text(conn: &mut dyn Conn, sql: &str) -> Vec<Vec<String>> {
    conn.query(sql, &[])
        .unwrap()
        .into_iter()
        .map(|row| row.0.iter().map(|value| format!("{value:?}")).collect())
        .collect()
}

struct Run {
    store: Store,
    _dir: tempfile::TempDir,
    customer_id: String,
    now: DateTime<Utc>,
    models: Vec<ModelAccount>,
    accepted: Vec<(Request, Transaction)>,
    next_id: usize,
}

impl Run {
    fn new() -> Run {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("tally.db").display());
        let store = Store::open(&DatabaseUrl::parse(&url).unwrap()).unwrap();
        store.migrate().unwrap();
        let now = start_time();
        let customer = store
            .write(|conn| {
                customer_ops::create(
                    conn,
                    MODE,
                    &NewCustomer { name: "Property".into(), ..NewCustomer::default() },
                    now,
                )
            })
            .unwrap();
        Run {
            store,
            _dir: dir,
            customer_id: customer.id,
            now,
            models: vec![ModelAccount::default(); ACCOUNT_NAMES.len()],
            accepted: Vec::new(),
            next_id: 0,
        }
    }

    fn key(&self, account: usize) -> AccountKey {
        AccountKey { customer_id: self.customer_id.clone(), name: ACCOUNT_NAMES[account].into(), asset: "USD".into() }
    }

    fn new_transaction_id(&mut self) -> String {
        self.next_id += 1;
        format!("txn-{}", self.next_id)
    }

    fn send(&self, request: &Request) -> Result<Outcome, OpError> {
        let (customer_id, now) = (&self.customer_id, self.now);
        self.store.write(|conn| match request {
            Request::Adjust(adjustment) => wallet_ops::adjust(conn, MODE, customer_id, adjustment, now),
            Request::Charge(charge) => wallet_ops::charge(conn, MODE, customer_id, charge, now),
        })
    }

    fn snapshot(&self) -> Snapshot {
        self.store
            .read(|conn| {
                Ok::<_, tally_store::StoreError>(Snapshot {
                    accounts: rows_as_text(
                        conn,
                        "SELECT name, asset, available, pending_in, debt, next_due_at FROM wallet_accounts ORDER BY name",
                    ),
                    grants: rows_as_text(conn, "SELECT id, remaining, state, is_open FROM grants ORDER BY id"),
                    entries: conn.count("SELECT COUNT(*) FROM ledger_entries", &[])?,
                    postings: conn.count("SELECT COUNT(*) FROM ledger_postings", &[])?,
                    transactions: conn.count("SELECT COUNT(*) FROM transactions", &[])?,
                })
            })
            .unwrap()
    }

    fn adjustment(&mut self, account: usize, reason: AdjustmentReason, amount: Decimal) -> Adjustment {
        Adjustment {
            transaction_id: self.new_transaction_id(),
            account_name: ACCOUNT_NAMES[account].into(),
            asset: AssetCode::parse("USD").unwrap(),
            amount,
            description: None,
            reason,
            effective_at: None,
            expires_at: None,
            metadata: BTreeMap::new(),
        }
    }

    /// Sends a request the model says is valid and applies it to the model.
    fn accept(&mut self, request: Request, account: usize, apply: impl FnOnce(&mut ModelAccount, DateTime<Utc>)) {
        let outcome = self.send(&request).unwrap_or_else(|error| panic!("{request:?} was refused: {error:?}"));
        assert!(!outcome.replayed, "a new transaction id was taken for a replay");
        let now = self.now;
        let model = &mut self.models[account];
        model.settle(now);
        apply(model, now);
        self.accepted.push((request, outcome.transaction));
    }

    /// Sends a request that must be refused with an invalid field, changing nothing.
    fn refuse(&mut self, request: Request) {
        let before = self.snapshot();
        match self.send(&request) {
            Err(OpError::Invalid(_)) => {}
            other => panic!("{request:?} should have been refused as invalid, got {other:?}"),
        }
        assert_eq!(self.snapshot(), before, "a refused request changed the store");
    }

    fn step(&mut self, step: Step) {
        // Every step runs at its own instant.
        self.now += Duration::seconds(1);
        match step {
            Step::Credit { account, reason, amount, effective_in_minutes, expires_in_minutes } => {
                let reason = match reason {
                    CreditReason::Gift => AdjustmentReason::Gift,
                    CreditReason::ExternalTopup => AdjustmentReason::ExternalTopup,
                    CreditReason::Other => AdjustmentReason::Other,
                };
                let mut adjustment = self.adjustment(account, reason, amount);
                adjustment.effective_at = effective_in_minutes.map(|minutes| self.now + Duration::minutes(minutes));
                adjustment.expires_at = expires_in_minutes.map(|minutes| self.now + Duration::minutes(minutes));
                let effective_at = adjustment.effective_at.unwrap_or(self.now).max(self.now);
                let paid = matches!(reason, AdjustmentReason::ExternalTopup);
                let expires_at = adjustment
                    .expires_at
                    .or_else(|| paid.then(|| effective_at.checked_add_months(Months::new(12)).unwrap()));
                if expires_at.is_some_and(|at| at <= effective_at) {
                    self.refuse(Request::Adjust(adjustment));
                    return;
                }
                let grant = ModelGrant {
                    transaction_id: adjustment.transaction_id.clone(),
                    purpose_rank: if paid { 2 } else { 0 },
                    remaining: amount,
                    effective_at,
                    expires_at,
                    created_at: self.now,
                    state: ModelState::Pending,
                };
                self.accept(Request::Adjust(adjustment), account, |model, now| model.credit(grant, now));
            }
            Step::Debit { account, refund, amount } => {
                let reason = if refund { AdjustmentReason::ExternalRefund } else { AdjustmentReason::Other };
                let adjustment = self.adjustment(account, reason, -amount);
                self.accept(Request::Adjust(adjustment), account, |model, _| {
                    if refund {
                        model.refund(amount)
                    } else {
                        model.debit(amount)
                    }
                });
            }
            Step::Charge { account, amount } => {
                let charge = Charge {
                    transaction_id: self.new_transaction_id(),
                    account_name: ACCOUNT_NAMES[account].into(),
                    asset: AssetCode::parse("USD").unwrap(),
                    amount,
                    inputs: ChargeInputs::default(),
                    subject: Some("property".into()),
                    description: None,
                    metadata: BTreeMap::new(),
                };
                self.accept(Request::Charge(charge), account, |model, _| model.debit(amount));
            }
            Step::WrongSign { account, reason, amount } => {
                let signed = if reason == AdjustmentReason::ExternalRefund { amount } else { -amount };
                let adjustment = self.adjustment(account, reason, signed);
                self.refuse(Request::Adjust(adjustment));
            }
            Step::Replay { pick, change } => {
                if self.accepted.is_empty() {
                    return;
                }
                let (original, first) = self.accepted[pick.index(self.accepted.len())].clone();
                let before = self.snapshot();
                if let Some(other_kind) = change {
                    let changed = original.changed(other_kind);
                    assert_eq!(changed.transaction_id(), original.transaction_id());
                    match self.send(&changed) {
                        Err(OpError::Conflict(_)) => {}
                        other => panic!("reusing {} for {changed:?} should conflict, got {other:?}", first.id),
                    }
                } else {
                    let outcome = self.send(&original).unwrap();
                    assert!(outcome.replayed, "a replay of {} was not recognised", first.id);
                    assert_eq!(outcome.transaction, first, "a replay answered differently");
                }
                assert_eq!(self.snapshot(), before, "a replay moved something");
            }
            Step::Advance { minutes } => self.now += Duration::minutes(minutes),
            Step::Leap => self.now += Duration::days(366),
            Step::Settle { account } => {
                let key = self.key(account);
                let now = self.now;
                self.store.write(|conn| wallet_ops::settle_account(conn, MODE, &key, now)).unwrap();
                self.models[account].settle(now);
            }
        }
        self.compare_with_model();
    }

    /// The stored balances and each grant's remainder equal the model's.
    fn compare_with_model(&self) {
        for (account, model) in self.models.iter().enumerate() {
            let key = self.key(account);
            let stored = self
                .store
                .read(|conn| tally_store::repo::wallets::get(conn, &key))
                .unwrap()
                .map(|account| (account.state.available, account.state.pending_in, account.state.debt))
                .unwrap_or_default();
            assert_eq!(
                stored,
                (model.available(), model.pending_in(), model.debt),
                "{}: stored (available, pending_in, debt) differ from the model",
                ACCOUNT_NAMES[account]
            );
        }
        let stored_grants: BTreeMap<String, (Decimal, String)> = self
            .store
            .read(|conn| {
                conn.query("SELECT transaction_id, remaining, state FROM grants", &[])?
                    .iter()
                    .map(|row| Ok((row.text(0)?, (row.decimal(1)?, row.text(2)?))))
                    .collect::<Result<_, tally_store::StoreError>>()
            })
            .unwrap();
        let model_grants: BTreeMap<String, (Decimal, String)> = self
            .models
            .iter()
            .flat_map(|model| &model.grants)
            .map(|grant| {
                let state = match grant.state {
                    ModelState::Pending => "pending",
                    // A grant spent to zero is never expired: nothing is left to take away.
                    ModelState::Active | ModelState::Expired if grant.remaining.is_zero() => "spent",
                    ModelState::Active => "active",
                    ModelState::Expired => "expired",
                };
                (grant.transaction_id.clone(), (grant.remaining, state.to_owned()))
            })
            .collect();
        let stored_grants: BTreeMap<String, (Decimal, String)> = stored_grants
            .into_iter()
            .map(|(id, (remaining, state))| {
                let state = if remaining.is_zero() && state != "pending" { "spent".to_owned() } else { state };
                (id, (remaining, state))
            })
            .collect();
        assert_eq!(stored_grants, model_grants, "grants differ from the model");
    }

    /// The checks at the end of a sequence, after settling everything due.
    fn finish(&mut self) {
        for account in 0..ACCOUNT_NAMES.len() {
            self.step(Step::Settle { account });
        }
        let report = self.store.read(|conn| ledger::verify(conn)).unwrap();
        assert!(report.problems.is_empty(), "ledger verify: {:#?}", report.problems);
        // Clean books are found clean by the fingerprints alone, with the same counts.
        let fast = self.store.read(|conn| ledger::verify_by_fingerprints(conn)).unwrap();
        assert_eq!(fast, Some(report), "the fingerprints agree on clean books");
        let negative: i64 = self
            .store
            .read(|conn| {
                let rows = conn.query("SELECT remaining FROM grants", &[])?;
                Ok::<_, tally_store::StoreError>(
                    rows.iter().filter(|row| row.decimal(0).unwrap() < Decimal::ZERO).count() as i64,
                )
            })
            .unwrap();
        assert_eq!(negative, 0, "a grant is below zero");
        for (account, model) in self.models.iter().enumerate() {
            let key = self.key(account);
            let Some(stored) = self.store.read(|conn| tally_store::repo::wallets::get(conn, &key)).unwrap() else {
                assert!(model.credited.is_zero() && model.debited.is_zero());
                continue;
            };
            let balance = stored.state.available + stored.state.pending_in;
            assert_eq!(
                balance,
                model.credited - model.debited - model.expired,
                "{}: balance is not credits - debits - expired",
                ACCOUNT_NAMES[account]
            );
            let transactions: Decimal = self
                .store
                .read(|conn| {
                    conn.query(
                        "SELECT amount FROM transactions WHERE customer_id = $1 AND account_name = $2 AND asset = $3",
                        tally_store::params![&key.customer_id, &key.name, &key.asset],
                    )?
                    .iter()
                    .map(|row| row.decimal(0))
                    .sum::<Result<Decimal, _>>()
                })
                .unwrap();
            assert_eq!(
                transactions, balance,
                "{}: the transactions do not add up to the balance",
                ACCOUNT_NAMES[account]
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn random_wallet_histories_keep_the_books_exact(steps in prop::collection::vec(step(), 1..40)) {
        let mut run = Run::new();
        for step in steps {
            run.step(step);
        }
        run.finish();
    }
}

/// Grants that start at the same instant while the account is overdrawn repay the overdraft
/// in burn order, so what expires later does not depend on random grant ids.
#[test]
fn simultaneous_starts_repay_the_overdraft_in_burn_order() {
    for _ in 0..8 {
        let mut run = Run::new();
        run.step(Step::Charge { account: 0, amount: Decimal::new(5, 0) });
        let starts_in = 60;
        run.step(Step::Credit {
            account: 0,
            reason: CreditReason::Gift,
            amount: Decimal::new(10, 0),
            effective_in_minutes: Some(starts_in),
            expires_in_minutes: Some(starts_in + 120),
        });
        // One second later, so starting at the same instant means one minute less.
        run.now += Duration::seconds(59);
        run.step(Step::Credit {
            account: 0,
            reason: CreditReason::Gift,
            amount: Decimal::new(10, 0),
            effective_in_minutes: Some(starts_in - 1),
            expires_in_minutes: Some(starts_in + 60),
        });
        // Past the second grant's expiry, before the first's: which grant repaid the
        // overdraft decides what is left.
        run.step(Step::Advance { minutes: 150 });
        run.finish();
        let model = &run.models[0];
        assert_eq!((model.available(), model.expired), (Decimal::new(10, 0), Decimal::new(5, 0)));
    }
}
