//! What a product version sells besides usage: fixed fees (once or on a recurring schedule)
//! and entitlements (credit granted on activation, optionally refreshed each period), and the
//! calendar arithmetic both need.
//!
//! Rules:
//! - Periods are calendar periods in UTC: a month after 31 January is the last day of
//!   February (chrono's month arithmetic clamps to the month's end), a year after 29 February
//!   is 28 February.
//! - A cycle of periods keeps its anchor day: the n-th period ends n × count intervals after
//!   the anchor, computed from the anchor each time and never from the previous end. So a
//!   monthly cycle anchored on 31 January ends its periods on 28 (or 29) February, 31 March,
//!   30 April, and never drifts to the 28th.
//! - A fixed fee is Σ unit_price × quantity (quantity defaults to 1), exact.
//! - An entitlement grants `amount` of its asset at activation with purpose `bundled` or
//!   `promotion`, lasting `duration × duration_count`. Without a refresh it is one-off and
//!   expires then. With `expire_and_replace` the unused remainder expires at the period's end
//!   and a fresh `amount` is granted. With `rollover` nothing expires at the period's end: a
//!   fresh `amount` is added and the unused remainder stays spendable.

use crate::pricing::UsagePrice;
use crate::wallet::Purpose;
use crate::Instant;
use chrono::{Days, Months};
use rust_decimal::Decimal;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interval {
    Day,
    Week,
    Month,
    Year,
}

impl Interval {
    pub fn as_str(self) -> &'static str {
        match self {
            Interval::Day => "day",
            Interval::Week => "week",
            Interval::Month => "month",
            Interval::Year => "year",
        }
    }

    pub fn parse(text: &str) -> Option<Interval> {
        match text {
            "day" => Some(Interval::Day),
            "week" => Some(Interval::Week),
            "month" => Some(Interval::Month),
            "year" => Some(Interval::Year),
            _ => None,
        }
    }

    /// `at` moved forward by `count` of these intervals, or `None` past the calendar's end.
    pub fn add(self, at: Instant, count: u32) -> Option<Instant> {
        match self {
            Interval::Day => at.checked_add_days(Days::new(count.into())),
            Interval::Week => at.checked_add_days(Days::new(u64::from(count) * 7)),
            Interval::Month => at.checked_add_months(Months::new(count)),
            Interval::Year => at.checked_add_months(Months::new(count.checked_mul(12)?)),
        }
    }

    /// The longest one interval can be, in days (a leap year, a 31-day month).
    fn longest_days(self) -> i64 {
        match self {
            Interval::Day => 1,
            Interval::Week => 7,
            Interval::Month => 31,
            Interval::Year => 366,
        }
    }

    /// The end of period number `period` of a cycle of `count` intervals anchored at `anchor`
    /// (period 0 ends at the anchor itself). Always counted from the anchor, so the anchor's
    /// day of the month is kept wherever the month has it.
    pub fn period_end(self, anchor: Instant, count: u32, period: u32) -> Option<Instant> {
        self.add(anchor, count.checked_mul(period)?)
    }

    /// The first period end of the cycle anchored at `anchor` (the anchor included) that
    /// falls strictly after `after`; `None` for an empty interval or past the calendar's end.
    pub fn next_period_end(self, anchor: Instant, count: u32, after: Instant) -> Option<Instant> {
        if count == 0 {
            return None;
        }
        // Start from a period that has surely ended by `after` (none is longer than its
        // longest possible length) and step forward: a few steps at most.
        let longest_period_days = self.longest_days() * i64::from(count);
        let elapsed_days = (after - anchor).num_days().max(0);
        let mut period = u32::try_from(elapsed_days / longest_period_days).ok()?;
        loop {
            let end = self.period_end(anchor, count, period)?;
            if end > after {
                return Some(end);
            }
            period = period.checked_add(1)?;
        }
    }
}

/// The most intervals one period may span (e.g. 120 months).
pub const MAX_INTERVAL_COUNT: u32 = 120;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FixedBilling {
    /// Collected once, when the subscription starts.
    OneTime,
    /// Collected when the subscription starts and again every `count` intervals.
    Recurring { interval: Interval, count: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedPrice {
    pub id: String,
    pub name: String,
    pub asset: String,
    pub amount: Decimal,
    pub billing: FixedBilling,
    /// Collected `in_advance`: the balance must cover the fee before the subscription starts
    /// (otherwise it waits in `action_required` for a payment). Without it the fee is debited
    /// like any charge, overdraft allowed.
    pub pay_first: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshStrategy {
    ExpireAndReplace,
    Rollover,
}

impl RefreshStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshStrategy::ExpireAndReplace => "expire_and_replace",
            RefreshStrategy::Rollover => "rollover",
        }
    }

    pub fn parse(text: &str) -> Option<RefreshStrategy> {
        match text {
            "expire_and_replace" => Some(RefreshStrategy::ExpireAndReplace),
            "rollover" => Some(RefreshStrategy::Rollover),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entitlement {
    pub name: String,
    pub asset: String,
    pub amount: Decimal,
    /// `Bundled` or `Promotion`.
    pub purpose: Purpose,
    pub priority: i64,
    pub duration: Interval,
    pub duration_count: u32,
    pub refresh: Option<RefreshStrategy>,
}

impl Entitlement {
    /// When the period of a grant made at `at` ends, in the cycle of periods anchored at
    /// `anchor` (the instant of the first grant): the first period end after `at`.
    pub fn period_end(&self, anchor: Instant, at: Instant) -> Option<Instant> {
        self.duration.next_period_end(anchor, self.duration_count, at)
    }

    /// The expiry of the grant made at `at` in the cycle anchored at `anchor`: its period's
    /// end, except under `rollover`, whose grants stay until spent.
    pub fn grant_expiry(&self, anchor: Instant, at: Instant) -> Option<Instant> {
        match self.refresh {
            Some(RefreshStrategy::Rollover) => None,
            Some(RefreshStrategy::ExpireAndReplace) | None => self.period_end(anchor, at),
        }
    }
}

/// A product version as rating and billing see it. Immutable once published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductVersion {
    pub product_id: String,
    pub product_code: String,
    pub product_name: String,
    pub version: i64,
    pub usage_prices: Vec<UsagePrice>,
    pub fixed_prices: Vec<FixedPrice>,
    pub entitlements: Vec<Entitlement>,
}

impl ProductVersion {
    /// Every asset this version can bill or grant: the subscription's wallet accounts.
    pub fn assets(&self) -> Vec<String> {
        let mut assets: Vec<String> = self
            .usage_prices
            .iter()
            .flat_map(|price| price.pricing.iter().map(|pricing| pricing.asset.clone()))
            .chain(self.fixed_prices.iter().map(|price| price.asset.clone()))
            .chain(self.entitlements.iter().map(|entitlement| entitlement.asset.clone()))
            .collect();
        assets.sort();
        assets.dedup();
        assets
    }

    /// The recurring cadence of the version's fixed fees, if any: the first recurring fee's.
    pub fn renewal_interval(&self) -> Option<(Interval, u32)> {
        self.fixed_prices.iter().find_map(|price| match price.billing {
            FixedBilling::Recurring { interval, count } => Some((interval, count)),
            FixedBilling::OneTime => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn calendar_periods_clamp_to_month_ends() {
        let january_31 = chrono::Utc.with_ymd_and_hms(2026, 1, 31, 12, 0, 0).unwrap();
        assert_eq!(
            Interval::Month.add(january_31, 1),
            Some(chrono::Utc.with_ymd_and_hms(2026, 2, 28, 12, 0, 0).unwrap())
        );
        assert_eq!(
            Interval::Week.add(january_31, 2),
            Some(chrono::Utc.with_ymd_and_hms(2026, 2, 14, 12, 0, 0).unwrap())
        );
        assert_eq!(
            Interval::Year.add(january_31, 1),
            Some(chrono::Utc.with_ymd_and_hms(2027, 1, 31, 12, 0, 0).unwrap())
        );
        assert_eq!(Interval::Day.add(january_31, 1), Some(chrono::Utc.with_ymd_and_hms(2026, 2, 1, 12, 0, 0).unwrap()));
    }

    #[test]
    fn rollover_grants_do_not_expire_at_period_end() {
        let start = chrono::Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
        let mut entitlement = Entitlement {
            name: "Monthly credits".into(),
            asset: "IMG".into(),
            amount: Decimal::from(100),
            purpose: Purpose::Bundled,
            priority: 0,
            duration: Interval::Month,
            duration_count: 1,
            refresh: Some(RefreshStrategy::ExpireAndReplace),
        };
        let april = chrono::Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).unwrap();
        assert_eq!(entitlement.grant_expiry(start, start), Some(april));
        entitlement.refresh = Some(RefreshStrategy::Rollover);
        assert_eq!(entitlement.grant_expiry(start, start), None);
        assert_eq!(entitlement.period_end(start, start), Some(april));
    }

    fn utc(year: i32, month: u32, day: u32) -> Instant {
        chrono::Utc.with_ymd_and_hms(year, month, day, 9, 30, 0).unwrap()
    }

    /// Each row: interval, count, anchor, and the period ends that follow it, in order.
    #[test]
    fn period_ends_keep_the_anchor_day() {
        let cases: [(Interval, u32, Instant, Vec<Instant>); 6] = [
            (
                Interval::Month,
                1,
                utc(2026, 1, 31),
                vec![utc(2026, 2, 28), utc(2026, 3, 31), utc(2026, 4, 30), utc(2026, 5, 31), utc(2026, 6, 30)],
            ),
            // A leap year's February has the 29th.
            (Interval::Month, 1, utc(2028, 1, 31), vec![utc(2028, 2, 29), utc(2028, 3, 31), utc(2028, 4, 30)]),
            (Interval::Month, 1, utc(2026, 1, 30), vec![utc(2026, 2, 28), utc(2026, 3, 30), utc(2026, 4, 30)]),
            (Interval::Month, 3, utc(2025, 11, 30), vec![utc(2026, 2, 28), utc(2026, 5, 30), utc(2026, 8, 30)]),
            (
                Interval::Year,
                1,
                utc(2028, 2, 29),
                vec![utc(2029, 2, 28), utc(2030, 2, 28), utc(2031, 2, 28), utc(2032, 2, 29)],
            ),
            (Interval::Week, 2, utc(2026, 1, 31), vec![utc(2026, 2, 14), utc(2026, 2, 28), utc(2026, 3, 14)]),
        ];
        for (interval, count, anchor, ends) in cases {
            let mut previous = anchor;
            for (index, expected) in ends.iter().enumerate() {
                // Walking from one end to the next, as renewals do, lands on the table.
                let next = interval.next_period_end(anchor, count, previous).unwrap();
                assert_eq!(next, *expected, "{interval:?}×{count} from {anchor}, period {}", index + 1);
                assert_eq!(interval.period_end(anchor, count, index as u32 + 1), Some(*expected));
                // So does asking from anywhere inside the period.
                let inside = previous + (*expected - previous) / 2;
                assert_eq!(interval.next_period_end(anchor, count, inside), Some(*expected));
                previous = next;
            }
        }
        // The anchor is a period end itself; anything just before it lands on it.
        let anchor = utc(2026, 1, 31);
        assert_eq!(Interval::Month.next_period_end(anchor, 1, anchor - chrono::Duration::seconds(1)), Some(anchor));
        // Far from the anchor, the answer is still exact (no drift, no long walk).
        assert_eq!(Interval::Month.next_period_end(anchor, 1, utc(2126, 2, 1)), Some(utc(2126, 2, 28)));
        assert_eq!(Interval::Day.next_period_end(anchor, 1, utc(2126, 2, 1)), Some(utc(2126, 2, 2)));
        assert_eq!(Interval::Month.next_period_end(anchor, 0, anchor), None);
    }
}
