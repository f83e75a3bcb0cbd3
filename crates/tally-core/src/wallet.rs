//! Wallet accounts and credit grants: how credits arrive, in which order debits burn them,
//! how an account goes into overdraft and pays it back, and how grants start and expire.
//!
//! Each function works on an in-memory [`AccountState`] and returns the ledger postings of the
//! change, so the store can write state and postings in one transaction and `ledger verify` can
//! recompute the state from the postings alone.
//!
//! Invariants, checked by property tests:
//! - `available = Σ remaining of active grants − debt`, `pending_in = Σ remaining of pending grants`;
//! - no grant's remaining is ever below zero, and debt is never below zero;
//! - every returned set of postings sums to zero.

use crate::ledger::{Bucket, Posting, SystemAccount};
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

#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub id: String,
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
    fn burn_order(&self, other: &Grant) -> Ordering {
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
    /// The overdraft: how far debits went past the grants. Repaid first by later credits.
    pub debt: Decimal,
    /// Grants that are pending, or active with something remaining. Others may be omitted.
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

    /// Adds a grant. One that is already effective repays any debt first and counts in
    /// `available`; one that starts later counts in `pending_in` until [`settle`] starts it.
    pub fn credit(&mut self, mut grant: Grant, source: SystemAccount, now: Instant) -> Vec<Posting> {
        let amount = grant.amount;
        grant.remaining = amount;
        let mut postings = vec![Posting::system(source, -amount)];
        if grant.effective_at <= now {
            grant.state = GrantState::Active;
            postings.extend(self.start(&mut grant, Bucket::Available));
        } else {
            grant.state = GrantState::Pending;
            self.pending_in += amount;
            postings.push(Posting::wallet(Bucket::PendingIn, Some(&grant.id), amount));
        }
        self.grants.push(grant);
        postings
    }

    /// Moves a starting grant's amount into `available`, repaying debt first. `from` is where
    /// the amount comes from within the wallet (nowhere yet, for a new grant).
    fn start(&mut self, grant: &mut Grant, from: Bucket) -> Vec<Posting> {
        let amount = grant.remaining;
        let repaid = amount.min(self.debt);
        self.debt -= repaid;
        grant.remaining -= repaid;
        self.available += amount;
        let mut postings = Vec::new();
        if from == Bucket::PendingIn {
            self.pending_in -= amount;
            postings.push(Posting::wallet(Bucket::PendingIn, Some(&grant.id), -amount));
        }
        if !repaid.is_zero() {
            postings.push(Posting::wallet(Bucket::Available, None, repaid));
        }
        if !grant.remaining.is_zero() {
            postings.push(Posting::wallet(Bucket::Available, Some(&grant.id), grant.remaining));
        }
        postings
    }

    /// Takes `amount` (> 0) out of `available` in burn order; what the grants cannot cover
    /// becomes debt, as far as `overdraft_limit` allows (`None`: no limit). The account must
    /// be settled at the current instant first.
    pub fn debit(
        &mut self,
        amount: Decimal,
        destination: SystemAccount,
        overdraft_limit: Option<Decimal>,
    ) -> Result<Vec<Posting>, WalletError> {
        if let Some(limit) = overdraft_limit {
            if self.available - amount < -limit {
                return Err(WalletError::InsufficientFunds);
            }
        }
        let mut order: Vec<usize> = (0..self.grants.len())
            .filter(|&index| {
                let grant = &self.grants[index];
                grant.state == GrantState::Active && grant.remaining > Decimal::ZERO
            })
            .collect();
        order.sort_by(|&left, &right| self.grants[left].burn_order(&self.grants[right]));
        let mut postings = vec![Posting::system(destination, amount)];
        let mut left = amount;
        for index in order {
            if left.is_zero() {
                break;
            }
            let grant = &mut self.grants[index];
            let taken = grant.remaining.min(left);
            grant.remaining -= taken;
            left -= taken;
            postings.push(Posting::wallet(Bucket::Available, Some(&grant.id), -taken));
        }
        if !left.is_zero() {
            self.debt += left;
            postings.push(Posting::wallet(Bucket::Available, None, -left));
        }
        self.available -= amount;
        Ok(postings)
    }

    /// Shows `amount` (> 0) in `pending_in` while it is being paid for (a top-up in flight).
    /// It is not a grant: nothing can be spent until [`AccountState::cancel_incoming`] takes it
    /// back and a grant credits what actually arrived.
    pub fn expect_incoming(&mut self, amount: Decimal) -> Vec<Posting> {
        self.pending_in += amount;
        vec![Posting::wallet(Bucket::PendingIn, None, amount), Posting::system(SystemAccount::Incoming, -amount)]
    }

    /// Removes money expected by [`AccountState::expect_incoming`] from `pending_in`: it
    /// arrived (and is credited as a grant) or it never will.
    pub fn cancel_incoming(&mut self, amount: Decimal) -> Vec<Posting> {
        self.pending_in -= amount;
        vec![Posting::wallet(Bucket::PendingIn, None, -amount), Posting::system(SystemAccount::Incoming, amount)]
    }

    /// Applies, in time order, every start and expiry due at or before `now`.
    pub fn settle(&mut self, now: Instant) -> Vec<Settlement> {
        let mut settlements = Vec::new();
        while let Some((index, kind, at)) = self.next_due(now) {
            let mut grant = self.grants[index].clone();
            let postings = match kind {
                SettlementKind::Activation => {
                    grant.state = GrantState::Active;
                    self.start(&mut grant, Bucket::PendingIn)
                }
                SettlementKind::Expiry => self.expire(&mut grant),
            };
            settlements.push(Settlement { kind, grant_id: grant.id.clone(), at, postings });
            self.grants[index] = grant;
        }
        settlements
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

    fn expire(&mut self, grant: &mut Grant) -> Vec<Posting> {
        let remainder = grant.remaining;
        grant.state = GrantState::Expired;
        grant.remaining = Decimal::ZERO;
        self.available -= remainder;
        if remainder.is_zero() {
            return Vec::new();
        }
        vec![
            Posting::wallet(Bucket::Available, Some(&grant.id), -remainder),
            Posting::system(SystemAccount::Expired, remainder),
        ]
    }
}

#[cfg(test)]
mod tests;
