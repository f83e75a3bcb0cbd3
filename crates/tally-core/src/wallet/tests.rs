use super::*;
use crate::ledger::{is_balanced, LedgerAccount};
use chrono::{Duration, TimeZone};
use proptest::prelude::*;
use std::str::FromStr;

fn d(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap()
}

fn t0() -> Instant {
    chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn grant(id: &str, purpose: Purpose, amount: &str, effective: i64, expires: Option<i64>) -> Grant {
    Grant {
        id: id.into(),
        purpose,
        priority: 0,
        amount: d(amount),
        remaining: d(amount),
        effective_at: t0() + Duration::hours(effective),
        expires_at: expires.map(|hours| t0() + Duration::hours(hours)),
        created_at: t0() + Duration::hours(effective.min(0)),
        state: GrantState::Pending,
    }
}

fn remaining(state: &AccountState, id: &str) -> Decimal {
    state.grants.iter().find(|grant| &*grant.id == id).unwrap().remaining
}

#[test]
fn debit_burns_promotion_then_bundled_then_paid() {
    let mut state = AccountState::default();
    state.credit(grant("paid", Purpose::Paid, "10", 0, Some(100)), SystemAccount::Issuance, t0()).unwrap();
    state.credit(grant("bundle", Purpose::Bundled, "5", 0, Some(200)), SystemAccount::Issuance, t0()).unwrap();
    state.credit(grant("promo", Purpose::Promotion, "3", 0, Some(300)), SystemAccount::Issuance, t0()).unwrap();
    let postings = state.debit(d("9"), SystemAccount::Revenue, None).unwrap();
    assert!(is_balanced(&postings));
    assert_eq!(remaining(&state, "promo"), d("0"));
    assert_eq!(remaining(&state, "bundle"), d("0"));
    assert_eq!(remaining(&state, "paid"), d("9"));
    assert_eq!(state.available, d("9"));
}

#[test]
fn refunds_take_the_newest_paid_credit_first_and_promotion_last() {
    let mut state = AccountState::default();
    state.credit(grant("promo", Purpose::Promotion, "3", -9, None), SystemAccount::Issuance, t0()).unwrap();
    state.credit(grant("paid_old", Purpose::Paid, "10", -8, Some(100)), SystemAccount::Issuance, t0()).unwrap();
    state.credit(grant("bundle", Purpose::Bundled, "5", -7, None), SystemAccount::Issuance, t0()).unwrap();
    state.credit(grant("paid_new", Purpose::Paid, "4", -6, Some(50)), SystemAccount::Issuance, t0()).unwrap();
    let postings = state.refund(d("6"), SystemAccount::Issuance).unwrap();
    assert!(is_balanced(&postings));
    assert_eq!(remaining(&state, "paid_new"), d("0"), "the latest payment is refunded first");
    assert_eq!(remaining(&state, "paid_old"), d("8"));
    assert_eq!(remaining(&state, "promo"), d("3"), "promotional credit is untouched while paid credit remains");
    assert_eq!(remaining(&state, "bundle"), d("5"));
    // Past every paid grant: the rest in burn order, then debt.
    state.refund(d("12"), SystemAccount::Issuance).unwrap();
    assert_eq!(
        (remaining(&state, "paid_old"), remaining(&state, "promo"), remaining(&state, "bundle")),
        (d("0"), d("0"), d("4"))
    );
    state.refund(d("7"), SystemAccount::Issuance).unwrap();
    assert_eq!((state.available, state.debt), (d("-3"), d("3")));
}

#[test]
fn within_a_purpose_soonest_expiry_then_oldest_then_never_expiring() {
    let mut state = AccountState::default();
    state.credit(grant("forever", Purpose::Paid, "5", -3, None), SystemAccount::Issuance, t0()).unwrap();
    state.credit(grant("late", Purpose::Paid, "5", -2, Some(50)), SystemAccount::Issuance, t0()).unwrap();
    state.credit(grant("soon", Purpose::Paid, "5", -1, Some(10)), SystemAccount::Issuance, t0()).unwrap();
    state.credit(grant("soon_older", Purpose::Paid, "5", -5, Some(10)), SystemAccount::Issuance, t0()).unwrap();
    state.debit(d("12"), SystemAccount::Revenue, None).unwrap();
    assert_eq!(remaining(&state, "soon_older"), d("0"));
    assert_eq!(remaining(&state, "soon"), d("0"));
    assert_eq!(remaining(&state, "late"), d("3"));
    assert_eq!(remaining(&state, "forever"), d("5"));
}

#[test]
fn overdraft_goes_negative_and_later_credit_repays_it_first() {
    let mut state = AccountState::default();
    state.credit(grant("a", Purpose::Paid, "2.5", 0, None), SystemAccount::Issuance, t0()).unwrap();
    let postings = state.debit(d("4"), SystemAccount::Revenue, None).unwrap();
    assert!(is_balanced(&postings));
    assert_eq!(state.available, d("-1.5"));
    assert_eq!(state.debt, d("1.5"));
    let postings = state.credit(grant("b", Purpose::Paid, "10", 0, None), SystemAccount::Issuance, t0()).unwrap();
    assert!(is_balanced(&postings));
    assert_eq!(state.available, d("8.5"));
    assert_eq!(state.debt, d("0"));
    assert_eq!(remaining(&state, "b"), d("8.5"));
}

#[test]
fn overdraft_limit_refuses_and_changes_nothing() {
    let mut state = AccountState::default();
    state.credit(grant("a", Purpose::Paid, "1", 0, None), SystemAccount::Issuance, t0()).unwrap();
    let before = state.clone();
    assert_eq!(
        state.debit(d("1.01"), SystemAccount::Revenue, Some(Decimal::ZERO)),
        Err(WalletError::InsufficientFunds)
    );
    assert_eq!(state, before);
    assert!(state.debit(d("1"), SystemAccount::Revenue, Some(Decimal::ZERO)).is_ok());
}

#[test]
fn future_grant_is_pending_until_it_starts_and_then_repays_debt() {
    let mut state = AccountState::default();
    state.credit(grant("later", Purpose::Promotion, "7", 5, None), SystemAccount::Issuance, t0()).unwrap();
    assert_eq!((state.available, state.pending_in), (d("0"), d("7")));
    state.debit(d("2"), SystemAccount::Revenue, None).unwrap();
    assert_eq!(state.next_due_at(), Some(t0() + Duration::hours(5)));
    assert!(state.settle(t0() + Duration::hours(4)).unwrap().is_empty());
    let settled = state.settle(t0() + Duration::hours(5)).unwrap();
    assert_eq!(settled.len(), 1);
    assert_eq!(settled[0].kind, SettlementKind::Activation);
    assert!(is_balanced(&settled[0].postings));
    assert_eq!((state.available, state.pending_in, state.debt), (d("5"), d("0"), d("0")));
    assert_eq!(remaining(&state, "later"), d("5"));
}

#[test]
fn expiry_removes_only_the_remainder_at_its_instant() {
    let mut state = AccountState::default();
    state.credit(grant("g", Purpose::Paid, "10", 0, Some(24)), SystemAccount::Issuance, t0()).unwrap();
    state.debit(d("3.25"), SystemAccount::Revenue, None).unwrap();
    let settled = state.settle(t0() + Duration::hours(30)).unwrap();
    assert_eq!(settled.len(), 1);
    assert_eq!(settled[0].at, t0() + Duration::hours(24));
    let to_expired: Decimal = settled[0]
        .postings
        .iter()
        .filter(|posting| posting.account == LedgerAccount::System(SystemAccount::Expired))
        .map(|posting| posting.amount)
        .sum();
    assert_eq!(to_expired, d("6.75"));
    assert_eq!(state.available, d("0"));
    assert_eq!(state.next_due_at(), None);
}

#[test]
fn a_grant_that_starts_and_expires_before_settling_is_replayed_in_time_order() {
    let mut state = AccountState::default();
    state.credit(grant("short", Purpose::Promotion, "4", 1, Some(2)), SystemAccount::Issuance, t0()).unwrap();
    let settled = state.settle(t0() + Duration::hours(3)).unwrap();
    let kinds: Vec<_> = settled.iter().map(|settlement| settlement.kind).collect();
    assert_eq!(kinds, vec![SettlementKind::Activation, SettlementKind::Expiry]);
    assert_eq!((state.available, state.pending_in), (d("0"), d("0")));
}

#[test]
fn grants_starting_together_repay_the_overdraft_in_burn_order() {
    // The ids sort against the burn order, so an id tie-break would pick the wrong grant.
    let mut state = AccountState::default();
    state.debit(d("5"), SystemAccount::Revenue, None).unwrap();
    state.credit(grant("a_paid", Purpose::Paid, "10", 1, None), SystemAccount::Issuance, t0()).unwrap();
    state.credit(grant("b_promo_late", Purpose::Promotion, "10", 1, Some(9)), SystemAccount::Issuance, t0()).unwrap();
    state.credit(grant("c_promo_soon", Purpose::Promotion, "10", 1, Some(5)), SystemAccount::Issuance, t0()).unwrap();
    state.settle(t0() + Duration::hours(1)).unwrap();
    assert_eq!(remaining(&state, "c_promo_soon"), d("5"));
    assert_eq!(remaining(&state, "b_promo_late"), d("10"));
    assert_eq!(remaining(&state, "a_paid"), d("10"));
    assert_eq!((state.available, state.debt), (d("25"), d("0")));
}

/// One step of a random history. `Hold` holds an amount (with overdraft allowed or not);
/// `Capture` captures from the oldest open hold (what it still holds comes out of it, the rest
/// is debited beyond it); `Release` releases what the oldest open hold still holds.
#[derive(Debug, Clone)]
enum Step {
    Credit { purpose: u8, amount_cents: i64, starts_in_hours: i64, lasts_hours: Option<i64> },
    Debit { amount_cents: i64 },
    Refund { amount_cents: i64 },
    Advance { hours: i64 },
    Hold { amount_cents: i64, allow_overdraft: bool },
    Capture { amount_cents: i64 },
    Release,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..3, 1i64..100_000, 0i64..48, proptest::option::of(1i64..72)).prop_map(
            |(purpose, amount_cents, starts_in_hours, lasts_hours)| Step::Credit {
                purpose,
                amount_cents,
                starts_in_hours,
                lasts_hours
            }
        ),
        (1i64..100_000).prop_map(|amount_cents| Step::Debit { amount_cents }),
        (1i64..100_000).prop_map(|amount_cents| Step::Refund { amount_cents }),
        (0i64..30).prop_map(|hours| Step::Advance { hours }),
        (1i64..100_000, any::<bool>())
            .prop_map(|(amount_cents, allow_overdraft)| Step::Hold { amount_cents, allow_overdraft }),
        (1i64..100_000).prop_map(|amount_cents| Step::Capture { amount_cents }),
        Just(Step::Release),
    ]
}

/// Sums what the postings say each part of the wallet should hold.
#[derive(Default)]
struct Replayed {
    available: Decimal,
    pending_in: Decimal,
    pending_out: Decimal,
    debt: Decimal,
    per_grant: std::collections::HashMap<String, Decimal>,
}

impl Replayed {
    fn apply(&mut self, postings: &[Posting]) {
        assert!(is_balanced(postings), "unbalanced entry {postings:?}");
        for posting in postings.iter().filter(|posting| posting.account == LedgerAccount::Wallet) {
            match (posting.bucket, &posting.grant_id) {
                (Bucket::Available, None) => {
                    self.available += posting.amount;
                    self.debt -= posting.amount;
                }
                (Bucket::Available, Some(id)) => {
                    self.available += posting.amount;
                    *self.per_grant.entry(id.clone()).or_default() += posting.amount;
                }
                (Bucket::PendingIn, Some(id)) => {
                    self.pending_in += posting.amount;
                    *self.per_grant.entry(id.clone()).or_default() += posting.amount;
                }
                (Bucket::PendingIn, None) => panic!("pending postings always name a grant"),
                (Bucket::PendingOut, None) => {
                    self.available += posting.amount;
                    self.pending_out -= posting.amount;
                }
                (Bucket::PendingOut, Some(_)) => panic!("held postings never name a grant"),
            }
        }
    }
}

proptest! {
    #[test]
    fn balances_always_equal_the_postings(steps in proptest::collection::vec(step(), 1..60)) {
        let mut state = AccountState::default();
        let mut replayed = Replayed::default();
        let mut now = t0();
        // What each open hold still holds, oldest first.
        let mut holds: Vec<Decimal> = Vec::new();
        for (number, step) in steps.into_iter().enumerate() {
            for settlement in state.settle(now).unwrap() {
                replayed.apply(&settlement.postings);
            }
            match step {
                Step::Credit { purpose, amount_cents, starts_in_hours, lasts_hours } => {
                    let purpose = [Purpose::Promotion, Purpose::Bundled, Purpose::Paid][purpose as usize];
                    let new_grant = Grant {
                        id: format!("g{number}").into(),
                        purpose,
                        priority: 0,
                        amount: Decimal::new(amount_cents, 2),
                        remaining: Decimal::ZERO,
                        effective_at: now + Duration::hours(starts_in_hours),
                        expires_at: lasts_hours.map(|hours| now + Duration::hours(starts_in_hours + hours)),
                        created_at: now,
                        state: GrantState::Pending,
                    };
                    replayed.apply(&state.credit(new_grant, SystemAccount::Issuance, now).unwrap());
                }
                Step::Debit { amount_cents } => {
                    let postings = state.debit(Decimal::new(amount_cents, 2), SystemAccount::Revenue, None).unwrap();
                    replayed.apply(&postings);
                }
                Step::Refund { amount_cents } => {
                    let paid_before: Decimal = state.grants.iter().filter(|g| g.state == GrantState::Active && g.purpose == Purpose::Paid).map(|g| g.remaining).sum();
                    let other_before: Decimal = state.grants.iter().filter(|g| g.state == GrantState::Active && g.purpose != Purpose::Paid).map(|g| g.remaining).sum();
                    replayed.apply(&state.refund(Decimal::new(amount_cents, 2), SystemAccount::Issuance).unwrap());
                    let other_after: Decimal = state.grants.iter().filter(|g| g.state == GrantState::Active && g.purpose != Purpose::Paid).map(|g| g.remaining).sum();
                    // Other credit is touched only for what paid credit could not cover.
                    prop_assert_eq!(other_before - other_after, (Decimal::new(amount_cents, 2) - paid_before).max(Decimal::ZERO).min(other_before));
                }
                Step::Advance { hours } => now += Duration::hours(hours),
                Step::Hold { amount_cents, allow_overdraft } => {
                    let amount = Decimal::new(amount_cents, 2);
                    let before = state.clone();
                    let limit = if allow_overdraft { None } else { Some(Decimal::ZERO) };
                    match state.hold(amount, limit) {
                        Ok(postings) => {
                            replayed.apply(&postings);
                            holds.push(amount);
                        }
                        Err(error) => {
                            prop_assert_eq!(error, WalletError::InsufficientFunds);
                            prop_assert!(before.available < amount && !allow_overdraft);
                            prop_assert_eq!(&state, &before, "a refused hold changes nothing");
                        }
                    }
                }
                Step::Capture { amount_cents } => {
                    if !holds.is_empty() {
                        let amount = Decimal::new(amount_cents, 2);
                        let from_hold = amount.min(holds[0]);
                        replayed.apply(&state.release_hold(from_hold).unwrap());
                        replayed.apply(&state.debit(amount, SystemAccount::Revenue, None).unwrap());
                        holds[0] -= from_hold;
                        if holds[0].is_zero() {
                            holds.remove(0);
                        }
                    }
                }
                Step::Release => {
                    if !holds.is_empty() {
                        let left = holds.remove(0);
                        replayed.apply(&state.release_hold(left).unwrap());
                    }
                }
            }
            prop_assert!(state.debt >= Decimal::ZERO);
            prop_assert!(state.grants.iter().all(|grant| grant.remaining >= Decimal::ZERO));
            let active: Decimal = state.grants.iter().filter(|g| g.state == GrantState::Active).map(|g| g.remaining).sum();
            let pending: Decimal = state.grants.iter().filter(|g| g.state == GrantState::Pending).map(|g| g.remaining).sum();
            prop_assert_eq!(state.available, active - state.debt - state.pending_out);
            prop_assert_eq!(state.pending_in, pending);
            prop_assert_eq!(state.pending_out, holds.iter().copied().sum::<Decimal>());
            prop_assert_eq!(replayed.pending_out, state.pending_out);
            prop_assert_eq!(replayed.available, state.available);
            prop_assert_eq!(replayed.pending_in, state.pending_in);
            prop_assert_eq!(replayed.debt, state.debt);
            for grant in &state.grants {
                prop_assert_eq!(replayed.per_grant.get(&*grant.id).copied().unwrap_or_default(), grant.remaining);
            }
            // Debt and spendable grants never coexist: credits repay debt before anything else.
            prop_assert!(state.debt.is_zero() || active.is_zero());
        }
    }
}

/// A hold reserves an amount of the account, not grants: a grant that expires under an open
/// hold takes its whole remainder out of `available` (which goes below zero), the hold keeps
/// what it held, and a capture then burns what grants remain and owes the rest as debt.
/// Nothing is counted twice: released, the account is exactly where it would be without
/// the hold.
#[test]
fn grant_expiry_under_a_hold_neither_loses_nor_double_counts_money() {
    let mut state = AccountState::default();
    state.credit(grant("promo", Purpose::Promotion, "100", 0, Some(1)), SystemAccount::Issuance, t0()).unwrap();
    state.hold(d("80"), Some(Decimal::ZERO)).unwrap();
    assert_eq!((state.available, state.pending_out), (d("20"), d("80")));
    assert_eq!(state.hold(d("20.01"), Some(Decimal::ZERO)), Err(WalletError::InsufficientFunds));
    state.settle(t0() + Duration::hours(2)).unwrap();
    assert_eq!((state.available, state.pending_out, state.debt), (d("-80"), d("80"), d("0")));
    // Capture 30: out of the hold, then burnt like usage; no grant remains, so it is debt.
    state.release_hold(d("30")).unwrap();
    state.debit(d("30"), SystemAccount::Revenue, None).unwrap();
    assert_eq!((state.available, state.pending_out, state.debt), (d("-80"), d("50"), d("30")));
    state.release_hold(d("50")).unwrap();
    assert_eq!((state.available, state.pending_out, state.debt), (d("-30"), d("0"), d("30")));
    assert_eq!(state.release_hold(d("0.01")), Err(WalletError::NotHeld));
}
