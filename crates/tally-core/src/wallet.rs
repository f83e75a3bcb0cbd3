//! Wallet accounts and credit grants: how credits arrive, in which order debits burn them,
//! how an account goes into overdraft and pays it back, and how grants start and expire.
//!
//! Each function works on an in-memory [`AccountState`] and returns the ledger postings of the
//! change, so the store can write state and postings in one transaction and `ledger verify` can
//! recompute the state from the postings alone.
//!
//! Invariants, checked by property tests:
//! - `available = Σ remaining of active grants − debt − pending_out`, `pending_in = Σ remaining
//!   of pending grants`, `pending_out = Σ what open holds still hold`;
//! - no grant's remaining is ever below zero, and debt is never below zero;
//! - every returned set of postings sums to zero;
//! - `available + pending_in` stays below [`max_balance`] and `debt` below it too: a credit or
//!   debit that would pass either is refused and changes nothing, so balance arithmetic never
//!   overflows (and is checked all the same).

use crate::ledger::{Bucket, Posting, SystemAccount};
use crate::money::max_balance;
use crate::Instant;
use rust_decimal::Decimal;
use std::cmp::Ordering;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    Promotion,
    Bundled,
    Paid,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Promotion => "promotion",
            Purpose::Bundled => "bundled",
            Purpose::Paid => "paid",
        }
    }

    pub fn parse(text: &str) -> Option<Purpose> {
        match text {
            "promotion" => Some(Purpose::Promotion),
            "bundled" => Some(Purpose::Bundled),
            "paid" => Some(Purpose::Paid),
            _ => None,
        }
    }

    /// Free credit burns before credit that came with a product, which burns before credit
    /// the customer paid for: a customer keeps what they bought the longest.
    fn burn_rank(self) -> u8 {
        match self {
            Purpose::Promotion => 0,
            Purpose::Bundled => 1,
            Purpose::Paid => 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrantState {
    /// Not yet effective: its remaining counts in `pending_in`.
    Pending,
    /// Effective: its remaining counts in `available`.
    Active,
    /// Past its expiry: its remainder has left the balance.
    Expired,
}

impl GrantState {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantState::Pending => "pending",
            GrantState::Active => "active",
            GrantState::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<GrantState> {
        match text {
            "pending" => Some(GrantState::Pending),
            "active" => Some(GrantState::Active),
            "expired" => Some(GrantState::Expired),
            _ => None,
        }
    }
}

/// A grant's id: shared, not copied, when an account's grants are copied (an account may hold
/// thousands, and the hot path copies them to diff a save and to cache them).
pub type GrantId = std::sync::Arc<str>;

#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub id: GrantId,
    pub purpose: Purpose,
    /// Lower is burned first, within a purpose. Grants made by adjustments have priority 0.
    pub priority: i64,
    pub amount: Decimal,
    pub remaining: Decimal,
    pub effective_at: Instant,
    pub expires_at: Option<Instant>,
    pub created_at: Instant,
    pub state: GrantState,
}

impl Grant {
    /// Burn order: purpose, then priority, then soonest expiry (never-expiring last), then
    /// oldest, then id so that the order is total and the same on every replay.
    pub fn burn_order(&self, other: &Grant) -> Ordering {
        (self.purpose.burn_rank(), self.priority)
            .cmp(&(other.purpose.burn_rank(), other.priority))
            .then_with(|| match (self.expires_at, other.expires_at) {
                (Some(mine), Some(theirs)) => mine.cmp(&theirs),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            })
            .then_with(|| self.created_at.cmp(&other.created_at))
            .then_with(|| self.id.cmp(&other.id))
    }
}

/// The balances of one wallet account and the grants that may still move it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AccountState {
    pub available: Decimal,
    pub pending_in: Decimal,
    /// What open holds reserve (see [`AccountState::hold`]): taken out of `available`, not out
    /// of any grant, so grants keep burning and expiring as they would.
    pub pending_out: Decimal,
    /// The overdraft: how far debits went past the grants. Repaid first by later credits.
    pub debt: Decimal,
    /// Grants that are pending, or active with something remaining. Others may be omitted.
    /// Kept in burn order (see [`AccountState::order_for_burning`]): a debit then walks from
    /// the front and touches only the grants it spends, however many the account holds.
    pub grants: Vec<Grant>,
}

/// A change that happened at its own instant while settling (a grant starting or expiring).
#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    pub kind: SettlementKind,
    pub grant_id: String,
    pub at: Instant,
    pub postings: Vec<Posting>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettlementKind {
    Activation,
    Expiry,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalletError {
    #[error("the debit would take the balance below the allowed overdraft")]
    InsufficientFunds,
    /// The account would hold (`available` + `pending_in`) 10^15 or more.
    #[error("would take the account's balance (available + pending_in) to {0} or more: it must stay below {0}")]
    BalanceLimit(Decimal),
    /// The account's debt would reach 10^15.
    #[error("would take the account's debt to {0} or more: an account's debt stays below {0}")]
    DebtLimit(Decimal),
    /// A release of more than the account holds (`pending_out`): stored state Tally did not write.
    #[error("would release more than the account holds")]
    NotHeld,
}

/// Checked arithmetic on balances. With every amount and balance inside the documented limits
/// (see [`crate::money`]) none of these can fail; they fail rather than panic when stored state
/// is not what Tally wrote.
fn plus(left: Decimal, right: Decimal) -> Result<Decimal, WalletError> {
    left.checked_add(right).ok_or(WalletError::BalanceLimit(max_balance()))
}

fn minus(left: Decimal, right: Decimal) -> Result<Decimal, WalletError> {
    left.checked_sub(right).ok_or(WalletError::DebtLimit(max_balance()))
}

impl AccountState {
    /// The earliest instant at which settling would change something, if any.
    pub fn next_due_at(&self) -> Option<Instant> {
        self.grants
            .iter()
            .filter_map(|grant| match grant.state {
                GrantState::Pending => Some(grant.effective_at),
                GrantState::Active if !grant.remaining.is_zero() => grant.expires_at,
                GrantState::Active | GrantState::Expired => None,
            })
            .min()
    }

    /// What the account holds: `available + pending_in + pending_out`. It stays below
    /// [`max_balance`].
    pub fn held(&self) -> Result<Decimal, WalletError> {
        plus(plus(self.available, self.pending_in)?, self.pending_out)
    }

    /// Refuses a credit of `amount` that would take what the account holds to the limit.
    fn check_credit(&self, amount: Decimal) -> Result<(), WalletError> {
        match self.held()?.checked_add(amount) {
            Some(held) if held < max_balance() => Ok(()),
            Some(_) | None => Err(WalletError::BalanceLimit(max_balance())),
        }
    }

    /// Adds a grant. One that is already effective repays any debt first and counts in
    /// `available`; one that starts later counts in `pending_in` until [`settle`] starts it.
    /// Refused, changing nothing, when the account would then hold [`max_balance`] or more.
    pub fn credit(
        &mut self,
        mut grant: Grant,
        source: SystemAccount,
        now: Instant,
    ) -> Result<Vec<Posting>, WalletError> {
        let amount = grant.amount;
        self.check_credit(amount)?;
        grant.remaining = amount;
        let mut postings = vec![Posting::system(source, -amount)];
        if grant.effective_at <= now {
            grant.state = GrantState::Active;
            postings.extend(self.start(&mut grant, Bucket::Available)?);
        } else {
            grant.state = GrantState::Pending;
            self.pending_in = plus(self.pending_in, amount)?;
            postings.push(Posting::wallet(Bucket::PendingIn, Some(&grant.id), amount));
        }
        // Inserted where it burns, keeping `grants` in burn order.
        let position = self.grants.partition_point(|existing| existing.burn_order(&grant) == Ordering::Less);
        self.grants.insert(position, grant);
        Ok(postings)
    }

    /// Puts `grants` in burn order. Whoever builds an `AccountState` from stored grants calls
    /// this once; every method that adds a grant keeps the order.
    pub fn order_for_burning(&mut self) {
        self.grants.sort_by(Grant::burn_order);
    }

    /// Moves a starting grant's amount into `available`, repaying debt first. `from` is where
    /// the amount comes from within the wallet (nowhere yet, for a new grant).
    fn start(&mut self, grant: &mut Grant, from: Bucket) -> Result<Vec<Posting>, WalletError> {
        let amount = grant.remaining;
        let repaid = amount.min(self.debt);
        self.debt = minus(self.debt, repaid)?;
        grant.remaining = minus(grant.remaining, repaid)?;
        self.available = plus(self.available, amount)?;
        let mut postings = Vec::new();
        if from == Bucket::PendingIn {
            self.pending_in = minus(self.pending_in, amount)?;
            postings.push(Posting::wallet(Bucket::PendingIn, Some(&grant.id), -amount));
        }
        if !repaid.is_zero() {
            postings.push(Posting::wallet(Bucket::Available, None, repaid));
        }
        if !grant.remaining.is_zero() {
            postings.push(Posting::wallet(Bucket::Available, Some(&grant.id), grant.remaining));
        }
        Ok(postings)
    }

    /// Takes `amount` (> 0) out of `available` in burn order; what the grants cannot cover
    /// becomes debt, as far as `overdraft_limit` allows (`None`: no limit). The account must
    /// be settled at the current instant first. Refused, changing nothing, when the debt would
    /// reach [`max_balance`], whatever the overdraft limit.
    pub fn debit(
        &mut self,
        amount: Decimal,
        destination: SystemAccount,
        overdraft_limit: Option<Decimal>,
    ) -> Result<Vec<Posting>, WalletError> {
        let after = minus(self.available, amount)?;
        if after <= -max_balance() {
            return Err(WalletError::DebtLimit(max_balance()));
        }
        if let Some(limit) = overdraft_limit {
            if after < -limit {
                return Err(WalletError::InsufficientFunds);
            }
        }
        debug_assert!(
            self.grants.is_sorted_by(|left, right| left.burn_order(right) != Ordering::Greater),
            "grants are kept in burn order"
        );
        // Grants are in burn order: walk them from the front and stop once the debit is covered.
        let order = 0..self.grants.len();
        self.take(amount, after, destination, order)
    }

    /// Takes a refund of `amount` (> 0) out of `available`. A refund returns money the
    /// customer paid, so it takes paid credit first, the newest paid grant first (the latest
    /// payment is the one given back); promotional and bundled credit only once no paid
    /// credit remains, in burn order; past every grant the account goes into debt, as a debit
    /// would (and with the same limit). The account must be settled at the current instant.
    pub fn refund(&mut self, amount: Decimal, destination: SystemAccount) -> Result<Vec<Posting>, WalletError> {
        let after = minus(self.available, amount)?;
        if after <= -max_balance() {
            return Err(WalletError::DebtLimit(max_balance()));
        }
        let mut order = self.spendable();
        order.sort_by(|&left, &right| {
            let (left, right) = (&self.grants[left], &self.grants[right]);
            match (left.purpose == Purpose::Paid, right.purpose == Purpose::Paid) {
                (true, false) => Ordering::Less,
                (false, true) => Ordering::Greater,
                (true, true) => right.created_at.cmp(&left.created_at).then_with(|| right.id.cmp(&left.id)),
                (false, false) => left.burn_order(right),
            }
        });
        self.take(amount, after, destination, order)
    }

    /// Indexes of the active grants with something left to spend.
    fn spendable(&self) -> Vec<usize> {
        (0..self.grants.len())
            .filter(|&index| {
                let grant = &self.grants[index];
                grant.state == GrantState::Active && grant.remaining > Decimal::ZERO
            })
            .collect()
    }

    /// Takes `amount` from the grants at `order`, in that order, and what they cannot cover
    /// as debt, leaving `available` at `after` (checked by the caller).
    fn take(
        &mut self,
        amount: Decimal,
        after: Decimal,
        destination: SystemAccount,
        order: impl IntoIterator<Item = usize>,
    ) -> Result<Vec<Posting>, WalletError> {
        let mut postings = vec![Posting::system(destination, amount)];
        let mut left = amount;
        for index in order {
            if left.is_zero() {
                break;
            }
            let grant = &mut self.grants[index];
            if grant.state != GrantState::Active || grant.remaining <= Decimal::ZERO {
                continue;
            }
            let taken = grant.remaining.min(left);
            grant.remaining = minus(grant.remaining, taken)?;
            left = minus(left, taken)?;
            postings.push(Posting::wallet(Bucket::Available, Some(&grant.id), -taken));
        }
        if !left.is_zero() {
            self.debt = plus(self.debt, left)?;
            postings.push(Posting::wallet(Bucket::Available, None, -left));
        }
        self.available = after;
        Ok(postings)
    }

    /// Holds `amount` (> 0) for a capture to come: moves it from `available` to `pending_out`.
    /// A hold reserves an amount of the account, not particular grants: grants keep their
    /// remainders (a capture burns them in burn order then), and keep expiring on their own
    /// schedule, which may take `available` below zero while money is held; nothing is ever
    /// counted both as available and as held. Refused with [`WalletError::InsufficientFunds`],
    /// changing nothing, when `available` would go below `-overdraft_limit` (`None`: no
    /// limit), and with [`WalletError::DebtLimit`] as a debit would be.
    pub fn hold(&mut self, amount: Decimal, overdraft_limit: Option<Decimal>) -> Result<Vec<Posting>, WalletError> {
        let after = minus(self.available, amount)?;
        if after <= -max_balance() {
            return Err(WalletError::DebtLimit(max_balance()));
        }
        if let Some(limit) = overdraft_limit {
            if after < -limit {
                return Err(WalletError::InsufficientFunds);
            }
        }
        self.pending_out = plus(self.pending_out, amount)?;
        self.available = after;
        Ok(vec![Posting::wallet(Bucket::PendingOut, None, -amount), Posting::system(SystemAccount::Held, amount)])
    }

    /// Gives `amount` (> 0, at most `pending_out`) of held money back to `available`: a
    /// release, or the first half of a capture, which then debits the fee as usual.
    pub fn release_hold(&mut self, amount: Decimal) -> Result<Vec<Posting>, WalletError> {
        let left = minus(self.pending_out, amount)?;
        if left < Decimal::ZERO {
            return Err(WalletError::NotHeld);
        }
        self.pending_out = left;
        self.available = plus(self.available, amount)?;
        Ok(vec![Posting::wallet(Bucket::PendingOut, None, amount), Posting::system(SystemAccount::Held, -amount)])
    }

    /// Shows `amount` (> 0) in `pending_in` while it is being paid for (a top-up in flight).
    /// It is not a grant: nothing can be spent until [`AccountState::cancel_incoming`] takes it
    /// back and a grant credits what actually arrived. Refused, changing nothing, when the
    /// account would then hold [`max_balance`] or more.
    pub fn expect_incoming(&mut self, amount: Decimal) -> Result<Vec<Posting>, WalletError> {
        self.check_credit(amount)?;
        self.pending_in = plus(self.pending_in, amount)?;
        Ok(vec![Posting::wallet(Bucket::PendingIn, None, amount), Posting::system(SystemAccount::Incoming, -amount)])
    }

    /// Removes money expected by [`AccountState::expect_incoming`] from `pending_in`: it
    /// arrived (and is credited as a grant) or it never will.
    pub fn cancel_incoming(&mut self, amount: Decimal) -> Result<Vec<Posting>, WalletError> {
        self.pending_in = minus(self.pending_in, amount)?;
        Ok(vec![Posting::wallet(Bucket::PendingIn, None, -amount), Posting::system(SystemAccount::Incoming, amount)])
    }

    /// Applies, in time order, every start and expiry due at or before `now`.
    /// Starts and expiries never change what the account holds or owes beyond what the
    /// credits and debits before them were allowed to, so this fails only on stored state
    /// Tally did not write.
    pub fn settle(&mut self, now: Instant) -> Result<Vec<Settlement>, WalletError> {
        let mut settlements = Vec::new();
        while let Some((index, kind, at)) = self.next_due(now) {
            let mut grant = self.grants[index].clone();
            let postings = match kind {
                SettlementKind::Activation => {
                    grant.state = GrantState::Active;
                    self.start(&mut grant, Bucket::PendingIn)?
                }
                SettlementKind::Expiry => self.expire(&mut grant)?,
            };
            settlements.push(Settlement { kind, grant_id: grant.id.to_string(), at, postings });
            self.grants[index] = grant;
        }
        Ok(settlements)
    }

    fn next_due(&self, now: Instant) -> Option<(usize, SettlementKind, Instant)> {
        self.grants
            .iter()
            .enumerate()
            .filter_map(|(index, grant)| match grant.state {
                GrantState::Pending => Some((index, SettlementKind::Activation, grant.effective_at)),
                GrantState::Active => grant.expires_at.map(|at| (index, SettlementKind::Expiry, at)),
                GrantState::Expired => None,
            })
            .filter(|(_, _, at)| *at <= now)
            // At one instant, starts come before expiries, and grants in burn order: when
            // several start while the account is overdrawn, the one a debit would spend first
            // repays the overdraft first, whatever their ids.
            .min_by(|(left, left_kind, left_at), (right, right_kind, right_at)| {
                (left_at, *left_kind == SettlementKind::Expiry)
                    .cmp(&(right_at, *right_kind == SettlementKind::Expiry))
                    .then_with(|| self.grants[*left].burn_order(&self.grants[*right]))
            })
    }

    fn expire(&mut self, grant: &mut Grant) -> Result<Vec<Posting>, WalletError> {
        let remainder = grant.remaining;
        grant.state = GrantState::Expired;
        grant.remaining = Decimal::ZERO;
        self.available = minus(self.available, remainder)?;
        if remainder.is_zero() {
            return Ok(Vec::new());
        }
        Ok(vec![
            Posting::wallet(Bucket::Available, Some(&grant.id), -remainder),
            Posting::system(SystemAccount::Expired, remainder),
        ])
    }
}

#[cfg(test)]
mod tests;
