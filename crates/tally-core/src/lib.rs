//! Tally's pure domain. Money and rounding, assets and exchange-rate schedules, quotes,
//! credit grants and their burn order, and the ledger postings every balance change makes.
//!
//! This crate does no IO: no clock, no randomness, no SQL, no HTTP, no JSON. Every function
//! takes the instant it works at as an argument, which is what lets the store replay and
//! verify history and lets tests pin time exactly.

pub mod asset;
pub mod catalog;
pub mod charge;
pub mod currency;
pub mod ledger;
pub mod money;
pub mod pricing;
pub mod rate;
pub mod revenue;
pub mod wallet;

pub use chrono::{DateTime, Utc};
pub use rust_decimal::Decimal;

/// Every instant in Tally is a UTC timestamp with microsecond resolution.
pub type Instant = DateTime<Utc>;

/// The two environments of a platform. Test and live data never meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Environment {
    Test,
    Live,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Test => "test",
            Environment::Live => "live",
        }
    }
}

/// The partition a row belongs to: an environment (test or live) of the platform itself, or
/// of one of its connected accounts (Credyt for Platforms). Every stored row carries its mode
/// as text (`test`, `live`, `test:acc_…`, `live:acc_…`) and every query filters by it, so a
/// connected account's assets, customers, wallets and events are as apart from the
/// platform's as test is from live.
///
/// `Mode` stays `Copy` by keeping its text as `&'static str`: the few connected-account
/// modes are interned once each (see [`Mode::connected`]); there are as many as the platform
/// has connected accounts, not one per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mode {
    environment: Environment,
    text: &'static str,
}

#[allow(non_upper_case_globals)]
impl Mode {
    /// The platform's own test environment.
    pub const Test: Mode = Mode { environment: Environment::Test, text: "test" };
    /// The platform's own live environment.
    pub const Live: Mode = Mode { environment: Environment::Live, text: "live" };

    /// The text stored in every row's `mode` column.
    pub fn as_str(self) -> &'static str {
        self.text
    }

    pub fn environment(self) -> Environment {
        self.environment
    }

    pub fn is_live(self) -> bool {
        self.environment == Environment::Live
    }

    /// The platform's own mode of the same environment.
    pub fn platform(self) -> Mode {
        match self.environment {
            Environment::Test => Mode::Test,
            Environment::Live => Mode::Live,
        }
    }

    /// The connected account this mode acts in, if any.
    pub fn connected_account(self) -> Option<&'static str> {
        self.text.split_once(':').map(|(_, account)| account)
    }

    /// The mode of connected account `account_id` in this mode's environment, or `None` when
    /// the id is not a well-formed account id.
    pub fn connected(self, account_id: &str) -> Option<Mode> {
        let well_formed = account_id.len() <= 64
            && account_id.starts_with("acc_")
            && account_id.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_');
        if !well_formed {
            return None;
        }
        let text = intern(&format!("{}:{account_id}", self.environment.as_str()));
        Some(Mode { environment: self.environment, text })
    }

    pub fn parse(text: &str) -> Option<Mode> {
        match text.split_once(':') {
            None => match text {
                "test" => Some(Mode::Test),
                "live" => Some(Mode::Live),
                _ => None,
            },
            Some((environment, account_id)) => Mode::parse(environment)?.connected(account_id),
        }
    }
}

/// Keeps one leaked copy of each connected-account mode text, so that `Mode` stays `Copy`.
fn intern(text: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static INTERNED: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut interned = INTERNED.get_or_init(Default::default).lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(existing) = interned.get(text) {
        return existing;
    }
    let leaked: &'static str = Box::leak(text.to_owned().into_boxed_str());
    interned.insert(leaked);
    leaked
}
