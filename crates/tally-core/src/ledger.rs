//! Ledger postings. Every balance change is one entry made of postings that sum to zero: what
//! a wallet gains, a system account gives, and the other way round. Entries are append-only;
//! a correction is a new entry.

use rust_decimal::Decimal;

/// Which side of the books a posting touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LedgerAccount {
    /// The customer wallet account the operation is about.
    Wallet,
    /// A platform-side account, one per asset, that is the other side of wallet movements.
    System(SystemAccount),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SystemAccount {
    /// Where credits come from and debit adjustments go back to.
    Issuance,
    /// Where charges and usage fees go.
    Revenue,
    /// Where the unspent remainder of an expired grant goes.
    Expired,
    /// The other side of money on its way in: a top-up being paid shows in the wallet's
    /// `pending_in` against this account until it lands or fails.
    Incoming,
    /// Where held money waits: a hold moves its amount out of the wallet's `available` into
    /// this account (the wallet's `pending_out` bucket), and a capture or release brings it
    /// back before the fee, if any, is debited as usual.
    Held,
}

impl SystemAccount {
    pub fn as_str(self) -> &'static str {
        match self {
            SystemAccount::Issuance => "issuance",
            SystemAccount::Revenue => "revenue",
            SystemAccount::Expired => "expired",
            SystemAccount::Incoming => "incoming",
            SystemAccount::Held => "held",
        }
    }

    pub fn parse(text: &str) -> Option<SystemAccount> {
        match text {
            "issuance" => Some(SystemAccount::Issuance),
            "revenue" => Some(SystemAccount::Revenue),
            "expired" => Some(SystemAccount::Expired),
            "incoming" => Some(SystemAccount::Incoming),
            "held" => Some(SystemAccount::Held),
            _ => None,
        }
    }
}

/// A wallet balance is split in buckets: what can be spent now, what is promised later, and
/// what is held for a capture to come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    Available,
    PendingIn,
    /// Money on its way out: held (see `AccountState::hold`). Its postings are the wallet's
    /// side of `system:held`, so they are negative while money is held: the account's
    /// `pending_out` is minus their sum, and its `available` is the sum of its `available`
    /// and `pending_out` postings. They never name a grant.
    PendingOut,
}

impl Bucket {
    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::Available => "available",
            Bucket::PendingIn => "pending_in",
            Bucket::PendingOut => "pending_out",
        }
    }

    pub fn parse(text: &str) -> Option<Bucket> {
        match text {
            "available" => Some(Bucket::Available),
            "pending_in" => Some(Bucket::PendingIn),
            "pending_out" => Some(Bucket::PendingOut),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posting {
    pub account: LedgerAccount,
    pub bucket: Bucket,
    /// The grant this posting moves, or `None` for the wallet's overdraft (debt) part. Always
    /// `None` on system accounts.
    pub grant_id: Option<String>,
    pub amount: Decimal,
}

impl Posting {
    pub fn wallet(bucket: Bucket, grant_id: Option<&str>, amount: Decimal) -> Posting {
        Posting { account: LedgerAccount::Wallet, bucket, grant_id: grant_id.map(str::to_owned), amount }
    }

    pub fn system(account: SystemAccount, amount: Decimal) -> Posting {
        Posting { account: LedgerAccount::System(account), bucket: Bucket::Available, grant_id: None, amount }
    }
}

/// True when the postings of one entry cancel out.
pub fn is_balanced(postings: &[Posting]) -> bool {
    postings.iter().map(|posting| posting.amount).sum::<Decimal>().is_zero()
}
