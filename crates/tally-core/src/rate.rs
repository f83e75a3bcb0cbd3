//! Exchange-rate schedules and quotes.
//!
//! A platform states a rate either as `rate` (source units per asset unit: 0.10 USD buys one
//! credit) or as `inverse_rate` (asset units per source unit: 1 USD buys 10 credits). Whichever
//! it states is kept exactly and is the one conversions use; the other is derived for display
//! only, rounded to 12 decimal places. So a rate of 0.15 converts 10 USD to 10 / 0.15 =
//! 66.666… credits exactly, and only then is the result rounded down to the asset's precision.
//!
//! A schedule is the list of rates ever set for one source currency. Each entry covers
//! `[valid_from, valid_to)` (open-ended without `valid_to`). The rate in force at an instant
//! is, among the entries covering it, the one with the latest `valid_from` (then the one
//! written last). So a rate with an end (a promotion) applies over the rates before it while
//! it lasts, and when it ends the rate it interrupted applies again, unless a rate that
//! started later has replaced that one. Entries are never changed once written, so a
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

impl ScheduledRate {
    fn covers(&self, at: Instant) -> bool {
        self.valid_from <= at && self.valid_to.is_none_or(|valid_to| at < valid_to)
    }

    /// Whether `self` takes precedence over `other` where both apply.
    fn outranks(&self, other: &ScheduledRate) -> bool {
        (self.valid_from, self.sequence) > (other.valid_from, other.sequence)
    }
}

/// The entry in force at `at`, if any: the latest-starting entry that covers it.
pub fn in_force(schedule: &[ScheduledRate], at: Instant) -> Option<&ScheduledRate> {
    schedule.iter().filter(|entry| entry.covers(at)).max_by_key(|entry| (entry.valid_from, entry.sequence))
}

/// When `entry` stops applying for good: the earliest instant from which, to the end of
/// its own span, entries that outrank it cover every moment. A rate interrupted by a
/// promotion that ends before it does is not over when the promotion starts; one replaced
/// by an open-ended later rate is over when that one starts. An entry that never applies
/// at all ends where it starts.
pub fn effective_valid_to(schedule: &[ScheduledRate], entry: &ScheduledRate) -> Option<Instant> {
    let higher: Vec<&ScheduledRate> = schedule.iter().filter(|other| other.outranks(entry)).collect();
    // Walk back from the entry's own end while an outranking entry covers right up to it.
    let mut end = entry.valid_to;
    loop {
        let reaches_end = |other: &&&ScheduledRate| match (end, other.valid_to) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(end), Some(other_end)) => other_end >= end,
        };
        let earliest_start = higher
            .iter()
            .filter(reaches_end)
            .map(|other| other.valid_from)
            .filter(|start| end.is_none_or(|end| *start < end))
            .min();
        match earliest_start {
            Some(start) => end = Some(start.max(entry.valid_from)),
            None => return end,
        }
        if end == Some(entry.valid_from) {
            return end;
        }
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
        assert_eq!(
            in_force(&schedule, at(9)).unwrap().sequence,
            2,
            "when a promotion ends, the rate before it applies again"
        );
        assert_eq!(effective_valid_to(&schedule, &schedule[0]), Some(at(5)));
        assert_eq!(effective_valid_to(&schedule, &schedule[1]), None, "interrupted, not ended, by the promotion");
        assert_eq!(effective_valid_to(&schedule, &schedule[2]), Some(at(9)));
    }

    #[test]
    fn a_promotion_ends_into_whatever_rate_is_current_then() {
        let rate = |from: u32, to: Option<u32>, value: &str, sequence: i64| ScheduledRate {
            valid_from: at(from),
            valid_to: to.map(at),
            rate: ExchangeRate::Rate(d(value)),
            sequence,
        };
        // Base 0.1; a promotion 0.05 from 2 to 6; a new base 0.2 from 4, added later.
        let schedule = vec![rate(1, None, "0.1", 1), rate(2, Some(6), "0.05", 2), rate(4, None, "0.2", 3)];
        assert_eq!(in_force(&schedule, at(3)).unwrap().sequence, 2);
        assert_eq!(in_force(&schedule, at(4)).unwrap().sequence, 3, "a later start outranks the promotion");
        assert_eq!(in_force(&schedule, at(7)).unwrap().sequence, 3, "the rate current at the end applies");
        assert_eq!(effective_valid_to(&schedule, &schedule[0]), Some(at(2)), "never in force again after 2");
        assert_eq!(effective_valid_to(&schedule, &schedule[1]), Some(at(4)));
        assert_eq!(effective_valid_to(&schedule, &schedule[2]), None);
        // Only a promotion and nothing to return to: no rate after it.
        let alone = vec![rate(1, Some(3), "0.05", 1)];
        assert!(in_force(&alone, at(3)).is_none());
        // Overlapping promotions: the later one, then the earlier one until it ends, then the base.
        let nested = vec![rate(0, None, "0.1", 1), rate(1, Some(8), "0.08", 2), rate(3, Some(5), "0.05", 3)];
        let sequences: Vec<i64> = (0..10).map(|hour| in_force(&nested, at(hour)).unwrap().sequence).collect();
        assert_eq!(sequences, vec![1, 2, 2, 3, 3, 2, 2, 2, 1, 1]);
        assert_eq!(effective_valid_to(&nested, &nested[0]), None);
        assert_eq!(effective_valid_to(&nested, &nested[1]), Some(at(8)));
        // A promotion entirely shadowed by a later, longer one never applies.
        let shadowed = vec![rate(0, None, "0.1", 1), rate(2, Some(4), "0.08", 2), rate(2, Some(6), "0.05", 3)];
        assert_eq!(effective_valid_to(&shadowed, &shadowed[1]), Some(at(2)));
    }
}
