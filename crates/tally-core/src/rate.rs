//! Exchange-rate schedules and quotes.
//!
//! A platform states a rate either as `rate` (source units per asset unit: 0.10 USD buys one
//! credit) or as `inverse_rate` (asset units per source unit: 1 USD buys 10 credits). Whichever
//! it states is kept exactly and is the one conversions use; the other is derived for display
//! only, rounded to 12 decimal places. So a rate of 0.15 converts 10 USD to 10 / 0.15 =
//! 66.666… credits exactly, and only then is the result rounded down to the asset's precision.
//!
//! A schedule is the list of rates ever set for one source currency. The rate in force at an
//! instant is the entry with the latest `valid_from` at or before it, unless that entry has an
//! explicit `valid_to` at or before the instant. Entries are never changed once written, so a
//! scheduled change takes effect by itself and historic quotes stay reproducible.

use crate::money::{round_display, round_down};
use crate::Instant;
use rust_decimal::Decimal;

/// Places shown for a derived (not stated) rate.
pub const DERIVED_RATE_PLACES: u32 = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeRate {
    /// Source units that buy one asset unit.
    Rate(Decimal),
    /// Asset units that one source unit buys.
    Inverse(Decimal),
}

impl ExchangeRate {
    /// Source units per asset unit, exact when stated, rounded for display when derived.
    pub fn rate(self) -> Decimal {
        match self {
            ExchangeRate::Rate(rate) => rate.normalize(),
            ExchangeRate::Inverse(inverse) => round_display(Decimal::ONE / inverse, DERIVED_RATE_PLACES),
        }
    }

    /// Asset units per source unit, exact when stated, rounded for display when derived.
    pub fn inverse_rate(self) -> Decimal {
        match self {
            ExchangeRate::Rate(rate) => round_display(Decimal::ONE / rate, DERIVED_RATE_PLACES),
            ExchangeRate::Inverse(inverse) => inverse.normalize(),
        }
    }

    /// Converts a source amount into asset units, exactly, before any rounding.
    /// Returns `None` only on arithmetic overflow.
    pub fn convert_exact(self, source_amount: Decimal) -> Option<Decimal> {
        match self {
            ExchangeRate::Rate(rate) => source_amount.checked_div(rate),
            ExchangeRate::Inverse(inverse) => source_amount.checked_mul(inverse),
        }
    }

    /// Converts a source amount into asset units rounded down to the asset's precision: a
    /// customer never receives more than was paid for.
    pub fn convert(self, source_amount: Decimal, asset_precision: u32) -> Option<Decimal> {
        self.convert_exact(source_amount).map(|exact| round_down(exact, asset_precision))
    }

    /// Converts asset units back into source units (used to value usage in fiat). Exact: the
    /// caller rounds when it reports.
    pub fn value_in_source(self, asset_amount: Decimal) -> Option<Decimal> {
        match self {
            ExchangeRate::Rate(rate) => asset_amount.checked_mul(rate),
            ExchangeRate::Inverse(inverse) => asset_amount.checked_div(inverse),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScheduledRate {
    pub valid_from: Instant,
    /// An explicit end, when the platform gave one.
    pub valid_to: Option<Instant>,
    pub rate: ExchangeRate,
    /// Order of writing, to break ties between entries with the same `valid_from`.
    pub sequence: i64,
}

/// The entry in force at `at`, if any.
pub fn in_force(schedule: &[ScheduledRate], at: Instant) -> Option<&ScheduledRate> {
    let latest = schedule
        .iter()
        .filter(|entry| entry.valid_from <= at)
        .max_by_key(|entry| (entry.valid_from, entry.sequence))?;
    match latest.valid_to {
        Some(valid_to) if valid_to <= at => None,
        _ => Some(latest),
    }
}

/// When `entry` stops applying: its explicit end or the start of the next entry, whichever
/// comes first.
pub fn effective_valid_to(schedule: &[ScheduledRate], entry: &ScheduledRate) -> Option<Instant> {
    let next_start = schedule
        .iter()
        .filter(|other| (other.valid_from, other.sequence) > (entry.valid_from, entry.sequence))
        .map(|other| other.valid_from)
        .min();
    match (entry.valid_to, next_start) {
        (Some(end), Some(next)) => Some(end.min(next)),
        (end, next) => end.or(next),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::str::FromStr;

    fn d(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    fn at(hour: u32) -> Instant {
        chrono::Utc.with_ymd_and_hms(2026, 2, 6, hour, 0, 0).unwrap()
    }

    #[test]
    fn quotes_round_down_to_precision() {
        let cases = [
            (ExchangeRate::Rate(d("0.10")), "10", 2, "100"),
            (ExchangeRate::Rate(d("0.15")), "10", 2, "66.66"),
            (ExchangeRate::Inverse(d("10")), "10", 2, "100"),
            (ExchangeRate::Rate(d("0.15")), "10", 0, "66"),
            (ExchangeRate::Rate(d("3")), "1", 4, "0.3333"),
            (ExchangeRate::Inverse(d("0.333")), "0.01", 2, "0"),
        ];
        for (rate, source, precision, expected) in cases {
            assert_eq!(rate.convert(d(source), precision), Some(d(expected)), "{rate:?} {source}");
        }
    }

    #[test]
    fn derived_rates_are_rounded_for_display_only() {
        assert_eq!(ExchangeRate::Rate(d("0.1")).inverse_rate(), d("10"));
        assert_eq!(ExchangeRate::Rate(d("0.15")).inverse_rate(), d("6.666666666667"));
        assert_eq!(ExchangeRate::Inverse(d("10")).rate(), d("0.1"));
        assert_eq!(ExchangeRate::Rate(d("0.10")).rate(), d("0.1"));
    }

    #[test]
    fn schedule_resolution() {
        let schedule = vec![
            ScheduledRate { valid_from: at(1), valid_to: None, rate: ExchangeRate::Rate(d("0.1")), sequence: 1 },
            ScheduledRate { valid_from: at(5), valid_to: None, rate: ExchangeRate::Rate(d("0.12")), sequence: 2 },
            ScheduledRate { valid_from: at(8), valid_to: Some(at(9)), rate: ExchangeRate::Rate(d("0.2")), sequence: 3 },
        ];
        assert!(in_force(&schedule, at(0)).is_none());
        assert_eq!(in_force(&schedule, at(1)).unwrap().sequence, 1);
        assert_eq!(in_force(&schedule, at(4)).unwrap().sequence, 1);
        assert_eq!(in_force(&schedule, at(5)).unwrap().sequence, 2);
        assert_eq!(in_force(&schedule, at(8)).unwrap().sequence, 3);
        assert!(in_force(&schedule, at(9)).is_none(), "an explicit end leaves no rate");
        assert_eq!(effective_valid_to(&schedule, &schedule[0]), Some(at(5)));
        assert_eq!(effective_valid_to(&schedule, &schedule[1]), Some(at(8)));
        assert_eq!(effective_valid_to(&schedule, &schedule[2]), Some(at(9)));
    }
}
