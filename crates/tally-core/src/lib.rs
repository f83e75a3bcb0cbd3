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
pub mod wallet;

pub use chrono::{DateTime, Utc};
pub use rust_decimal::Decimal;

/// Every instant in Tally is a UTC timestamp with microsecond resolution.
pub type Instant = DateTime<Utc>;

/// Test and live data never meet: every stored row carries its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Test,
    Live,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Test => "test",
            Mode::Live => "live",
        }
    }

    pub fn parse(text: &str) -> Option<Mode> {
        match text {
            "test" => Some(Mode::Test),
            "live" => Some(Mode::Live),
            _ => None,
        }
    }
}
