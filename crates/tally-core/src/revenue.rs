//! Revenue recognition and breakage (ASC 606 / IFRS 15), computed from ledger entries alone.
//!
//! Money received for credits is deferred revenue until the credits are used (recognised) or
//! expire (breakage). The store streams ledger entries in key order, each with its postings
//! and, for each posting that moves a grant, what the ledger recorded when it issued that grant
//! (purpose, amount, cost basis); [`Report::add`] folds one entry at a time into per-period
//! totals, so memory grows with the number of report lines and periods, never with the ledger.
//!
//! The rules (also in docs/api.md, "Revenue report"):
//! - A paid grant is valued at its cost basis: the fiat paid per unit when it was bought (a
//!   top-up). A paid grant of a fiat asset without one (an `external_topup` adjustment) is
//!   valued 1:1 in that currency. Its line is (asset, currency paid).
//! - Deferred revenue at an instant = Σ over paid grants of (what the ledger holds in the grant)
//!   × cost basis, plus the unrecognised part of plan fees (below). Opening and closing
//!   balances are computed that way, directly from postings, not by adding flows up, so
//!   opening + additions − recognised − breakage − refunds = closing is a real check.
//! - additions: the issued amount × cost basis, when the grant is issued. Part of it that repays
//!   an overdraft at once paid for usage already delivered: it is recognised at that instant.
//! - recognised: a grant's value taken by a fee (an entry paying `revenue`), or repaying an
//!   overdraft when the grant starts.
//! - breakage: a grant's remainder × cost basis when it expires (an entry paying `expired`).
//! - refunds: a grant's value given back to `issuance` (external refunds, and debit adjustments,
//!   which take credit back without revenue).
//! - A plan fee (a recurring subscription fee, whose entry carries the end of the period it pays
//!   for) moves the value it burns into deferred plan revenue, recognised ratably over the time
//!   from the fee to the end of that period (to the microsecond), so it is never counted twice:
//!   not when the fee burns the credit, only as the period passes. Bundled credit (what a plan
//!   includes) is never valued: its revenue is the plan fee.
//! - Promotional and bundled grants, and paid grants of a custom asset with no cost basis, are
//!   never revenue: they are reported apart, in asset units, with the same columns.
//! - Figures are exact decimals. The ratable share of a plan fee up to an instant is
//!   `value × elapsed / length` in microseconds, rounded half to even to 12 decimal places (or
//!   the value's own scale, if finer); a period recognises the difference between that share
//!   at its end and at its start, so the periods of a fee add up to the fee exactly.

use crate::ledger::{LedgerAccount, SystemAccount};
use crate::wallet::Purpose;
use crate::Instant;
use chrono::{Datelike, Days, Months, NaiveDate, TimeZone, Utc};
use rust_decimal::Decimal;
use std::collections::BTreeMap;

/// The most periods one report may hold.
pub const MAX_PERIODS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    Day,
    Month,
}

impl Granularity {
    pub fn parse(text: &str) -> Option<Granularity> {
        match text {
            "day" => Some(Granularity::Day),
            "month" => Some(Granularity::Month),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Day => "day",
            Granularity::Month => "month",
        }
    }

    /// The start of the next day or month (UTC) after `at`.
    fn next_boundary(self, at: Instant) -> Option<Instant> {
        let date = at.date_naive();
        let next = match self {
            Granularity::Day => date.checked_add_days(Days::new(1))?,
            Granularity::Month => {
                NaiveDate::from_ymd_opt(date.year(), date.month(), 1)?.checked_add_months(Months::new(1))?
            }
        };
        Some(Utc.from_utc_datetime(&next.and_hms_opt(0, 0, 0)?))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevenueError {
    #[error("period_to must be after period_from")]
    EmptyRange,
    #[error("the report would hold more than {MAX_PERIODS} periods: use a shorter range or group_by=month")]
    TooManyPeriods,
    #[error("a figure of the report passed the limits of exact decimals")]
    Overflow,
}

/// The boundaries of a report's periods: `from`, each start of a day or month (UTC) after it,
/// and `to`. The first and last periods may be partial.
pub fn boundaries(from: Instant, to: Instant, granularity: Granularity) -> Result<Vec<Instant>, RevenueError> {
    if to <= from {
        return Err(RevenueError::EmptyRange);
    }
    let mut boundaries = vec![from];
    let mut at = from;
    loop {
        match granularity.next_boundary(at) {
            Some(next) if next < to => {
                if boundaries.len() > MAX_PERIODS {
                    return Err(RevenueError::TooManyPeriods);
                }
                boundaries.push(next);
                at = next;
            }
            Some(_) | None => break,
        }
    }
    boundaries.push(to);
    if boundaries.len() - 1 > MAX_PERIODS {
        return Err(RevenueError::TooManyPeriods);
    }
    Ok(boundaries)
}

/// What the ledger recorded when it issued a grant.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuedGrant {
    pub purpose: Purpose,
    pub amount: Decimal,
    /// Fiat paid per unit, and its currency, for paid grants bought through a top-up.
    pub cost_basis: Option<(Decimal, String)>,
}

/// One posting of an entry, as the report reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryPosting {
    pub account: LedgerAccount,
    /// The grant it moves, with the ledger's record of it: `(id, record)`.
    pub grant: Option<(String, IssuedGrant)>,
    /// Whether this entry is the one that issued the grant.
    pub issues_grant: bool,
    pub amount: Decimal,
}

/// One ledger entry with its postings.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub asset: String,
    pub effective_at: Instant,
    /// For a plan fee: the end of the period it pays for.
    pub service_until: Option<Instant>,
    pub postings: Vec<EntryPosting>,
}

/// A line of the report: revenue in a currency, or credit that is never revenue, in units.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Line {
    Revenue {
        asset: String,
        currency: String,
    },
    /// `kind`: `promotion`, `bundled` or `paid_unpriced`.
    Credit {
        asset: String,
        kind: &'static str,
    },
}

/// The figures of one line in one period.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    pub opening: Decimal,
    pub additions: Decimal,
    pub recognised: Decimal,
    pub breakage: Decimal,
    pub refunds: Decimal,
    pub closing: Decimal,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Period {
    pub start: Instant,
    pub end: Instant,
    pub figures: Figures,
}

/// Running totals of one line: flows per period, and the balance (held in grants, then
/// unrecognised plan fees) before the first boundary and moved within each period.
#[derive(Debug, Clone)]
struct Totals {
    /// What grants held before the first boundary.
    opening_held: Decimal,
    /// Plan fees collected before the first boundary and not yet recognised at it.
    opening_plan: Decimal,
    flows: Vec<Figures>,
    /// Change of what grants hold, per period.
    held: Vec<Decimal>,
    /// Unrecognised plan fees at each period's end.
    plan_deferred: Vec<Decimal>,
}

impl Totals {
    fn new(periods: usize) -> Totals {
        Totals {
            opening_held: Decimal::ZERO,
            opening_plan: Decimal::ZERO,
            flows: vec![Figures::default(); periods],
            held: vec![Decimal::ZERO; periods],
            plan_deferred: vec![Decimal::ZERO; periods],
        }
    }
}

/// How an entry takes value out of the grants it moves, told by its other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outflow {
    /// It pays `revenue` (a fee), or repays an overdraft (a grant starting).
    Used,
    Expired,
    /// It gives credit back to `issuance` (a refund or a debit adjustment).
    Refunded,
}

fn outflow(entry: &Entry) -> Outflow {
    let pays = |account: SystemAccount| {
        entry
            .postings
            .iter()
            .any(|posting| posting.account == LedgerAccount::System(account) && posting.amount > Decimal::ZERO)
    };
    if pays(SystemAccount::Expired) {
        Outflow::Expired
    } else if pays(SystemAccount::Issuance) {
        Outflow::Refunded
    } else {
        Outflow::Used
    }
}

fn add(left: Decimal, right: Decimal) -> Result<Decimal, RevenueError> {
    left.checked_add(right).ok_or(RevenueError::Overflow)
}

fn times(left: Decimal, right: Decimal) -> Result<Decimal, RevenueError> {
    left.checked_mul(right).ok_or(RevenueError::Overflow)
}

/// The line a grant's movements belong to and the value of one unit in it.
fn valuation(asset: &str, grant: &IssuedGrant) -> (Line, Decimal) {
    let credit = |kind| (Line::Credit { asset: asset.to_owned(), kind }, Decimal::ONE);
    match grant.purpose {
        Purpose::Promotion => credit("promotion"),
        Purpose::Bundled => credit("bundled"),
        Purpose::Paid => match &grant.cost_basis {
            Some((basis, currency)) => (Line::Revenue { asset: asset.to_owned(), currency: currency.clone() }, *basis),
            None if crate::currency::is_currency(asset) => {
                (Line::Revenue { asset: asset.to_owned(), currency: asset.to_owned() }, Decimal::ONE)
            }
            None => credit("paid_unpriced"),
        },
    }
}

/// The decimal places of a plan fee's ratable share: those of the finest amount Tally accepts.
pub const SHARE_PLACES: u32 = 12;

/// The share of `value`, collected at `from` for a period ending `until`, recognised by `at`.
pub fn ratable_share(value: Decimal, from: Instant, until: Instant, at: Instant) -> Decimal {
    if at <= from {
        return Decimal::ZERO;
    }
    if at >= until {
        return value;
    }
    let elapsed = Decimal::from((at - from).num_microseconds().unwrap_or(i64::MAX));
    let length = Decimal::from((until - from).num_microseconds().unwrap_or(i64::MAX));
    let share = match value.checked_mul(elapsed) {
        Some(product) => product / length,
        None => value * (elapsed / length),
    };
    // Rounded (half to even) to 12 places, or the value's own scale if finer, so that the
    // report's sums and differences of shares stay exact.
    share.round_dp(value.scale().max(SHARE_PLACES))
}

/// A report being built: add entries in any order, then [`Report::finish`].
#[derive(Debug, Clone)]
pub struct Report {
    boundaries: Vec<Instant>,
    lines: BTreeMap<Line, Totals>,
}

impl Report {
    pub fn new(from: Instant, to: Instant, granularity: Granularity) -> Result<Report, RevenueError> {
        Ok(Report { boundaries: boundaries(from, to, granularity)?, lines: BTreeMap::new() })
    }

    fn periods(&self) -> usize {
        self.boundaries.len() - 1
    }

    /// The period `at` falls in, `None` before the first, or past the last (`Err`).
    fn period_of(&self, at: Instant) -> Result<Option<usize>, ()> {
        if at < self.boundaries[0] {
            return Ok(None);
        }
        if at >= self.boundaries[self.periods()] {
            return Err(());
        }
        Ok(Some(self.boundaries.partition_point(|boundary| *boundary <= at) - 1))
    }

    fn totals(&mut self, line: Line) -> &mut Totals {
        let periods = self.periods();
        self.lines.entry(line).or_insert_with(|| Totals::new(periods))
    }

    /// Folds one entry in. Entries after the report's end change nothing.
    pub fn add(&mut self, entry: &Entry) -> Result<(), RevenueError> {
        let Ok(period) = self.period_of(entry.effective_at) else {
            return Ok(());
        };
        let outflow = outflow(entry);
        // Net movement per grant within the entry (an activation moves a grant between buckets).
        let mut moved: Vec<(&str, &IssuedGrant, bool, Decimal)> = Vec::new();
        for posting in &entry.postings {
            let Some((id, grant)) = &posting.grant else { continue };
            match moved.iter_mut().find(|(known, ..)| *known == id.as_str()) {
                Some((_, _, issues, net)) => {
                    *issues |= posting.issues_grant;
                    *net = add(*net, posting.amount)?;
                }
                None => moved.push((id, grant, posting.issues_grant, posting.amount)),
            }
        }
        for (_, grant, issues, net) in moved {
            let (line, unit_value) = valuation(&entry.asset, grant);
            let ratable = match (&line, entry.service_until, outflow) {
                (Line::Revenue { .. }, Some(until), Outflow::Used) if !issues && net < Decimal::ZERO => Some(until),
                _ => None,
            };
            let value = times(net, unit_value)?;
            let boundaries = self.boundaries.clone();
            let totals = self.totals(line);
            let Some(index) = period else {
                totals.opening_held = add(totals.opening_held, value)?;
                if let Some(until) = ratable {
                    let unrecognised = add(-value, -ratable_share(-value, entry.effective_at, until, boundaries[0]))?;
                    totals.opening_plan = add(totals.opening_plan, unrecognised)?;
                    record_plan_fee(totals, &boundaries, -value, entry.effective_at, until)?;
                }
                continue;
            };
            totals.held[index] = add(totals.held[index], value)?;
            let flows = &mut totals.flows[index];
            if issues {
                let issued = times(grant.amount, unit_value)?;
                flows.additions = add(flows.additions, issued)?;
                // What the grant did not keep repaid an overdraft: usage already delivered.
                flows.recognised = add(flows.recognised, add(issued, -value)?)?;
            } else if let Some(until) = ratable {
                record_plan_fee(totals, &boundaries, -value, entry.effective_at, until)?;
            } else if net < Decimal::ZERO {
                let taken = -value;
                match outflow {
                    Outflow::Used => flows.recognised = add(flows.recognised, taken)?,
                    Outflow::Expired => flows.breakage = add(flows.breakage, taken)?,
                    Outflow::Refunded => flows.refunds = add(flows.refunds, taken)?,
                }
            } else if net > Decimal::ZERO {
                // Value coming back into a grant without issuing it: nothing Tally writes today.
                // Shown as a negative refund so that the balance still reconciles.
                flows.refunds = add(flows.refunds, -value)?;
            }
        }
        Ok(())
    }

    /// The report: each line's periods, in line order. Each period opens with the previous
    /// one's closing; the first opens with the balance at the report's start.
    pub fn finish(self) -> Result<Vec<(Line, Vec<Period>)>, RevenueError> {
        let boundaries = self.boundaries;
        let mut report = Vec::with_capacity(self.lines.len());
        for (line, totals) in self.lines {
            let mut periods = Vec::with_capacity(totals.flows.len());
            let mut held = totals.opening_held;
            let mut opening = add(totals.opening_held, totals.opening_plan)?;
            for (index, flows) in totals.flows.into_iter().enumerate() {
                held = add(held, totals.held[index])?;
                let closing = add(held, totals.plan_deferred[index])?;
                periods.push(Period {
                    start: boundaries[index],
                    end: boundaries[index + 1],
                    figures: Figures { opening, closing, ..flows },
                });
                opening = closing;
            }
            report.push((line, periods));
        }
        Ok(report)
    }
}

/// A plan fee of `value` collected at `from` for the period to `until`: recognised ratably,
/// what is not yet recognised at each period's end is deferred.
fn record_plan_fee(
    totals: &mut Totals,
    boundaries: &[Instant],
    value: Decimal,
    from: Instant,
    until: Instant,
) -> Result<(), RevenueError> {
    let until = until.max(from);
    for index in 0..boundaries.len() - 1 {
        let (start, end) = (boundaries[index], boundaries[index + 1]);
        if end <= from {
            continue;
        }
        let recognised = add(ratable_share(value, from, until, end), -ratable_share(value, from, until, start))?;
        totals.flows[index].recognised = add(totals.flows[index].recognised, recognised)?;
        totals.plan_deferred[index] =
            add(totals.plan_deferred[index], add(value, -ratable_share(value, from, until, end))?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    fn t(text: &str) -> Instant {
        text.parse().unwrap()
    }

    fn paid(id: &str, amount: &str, basis: &str) -> (String, IssuedGrant) {
        (
            id.to_owned(),
            IssuedGrant { purpose: Purpose::Paid, amount: d(amount), cost_basis: Some((d(basis), "USD".into())) },
        )
    }

    fn wallet(grant: &(String, IssuedGrant), issues: bool, amount: &str) -> EntryPosting {
        EntryPosting {
            account: LedgerAccount::Wallet,
            grant: Some(grant.clone()),
            issues_grant: issues,
            amount: d(amount),
        }
    }

    fn system(account: SystemAccount, amount: &str) -> EntryPosting {
        EntryPosting { account: LedgerAccount::System(account), grant: None, issues_grant: false, amount: d(amount) }
    }

    fn debt(amount: &str) -> EntryPosting {
        EntryPosting { account: LedgerAccount::Wallet, grant: None, issues_grant: false, amount: d(amount) }
    }

    fn entry(at: &str, postings: Vec<EntryPosting>) -> Entry {
        Entry { asset: "CRED".into(), effective_at: t(at), service_until: None, postings }
    }

    #[test]
    fn periods_are_utc_days_and_months_with_partial_ends() {
        let days = boundaries(t("2026-01-30T12:00:00Z"), t("2026-02-01T06:00:00Z"), Granularity::Day).unwrap();
        assert_eq!(
            days,
            vec![
                t("2026-01-30T12:00:00Z"),
                t("2026-01-31T00:00:00Z"),
                t("2026-02-01T00:00:00Z"),
                t("2026-02-01T06:00:00Z")
            ]
        );
        let months = boundaries(t("2026-01-31T00:00:00Z"), t("2026-03-01T00:00:00Z"), Granularity::Month).unwrap();
        assert_eq!(months, vec![t("2026-01-31T00:00:00Z"), t("2026-02-01T00:00:00Z"), t("2026-03-01T00:00:00Z")]);
        assert_eq!(
            boundaries(t("2026-01-01T00:00:00Z"), t("2026-01-01T00:00:00Z"), Granularity::Day),
            Err(RevenueError::EmptyRange)
        );
        assert_eq!(
            boundaries(t("2020-01-01T00:00:00Z"), t("2026-01-01T00:00:00Z"), Granularity::Day),
            Err(RevenueError::TooManyPeriods)
        );
    }

    /// Bought 100 at 0.05 while 10 was overdrawn: $5 added, $0.50 recognised at once; 30 used
    /// ($1.50), 20 refunded ($1), the 40 left expire ($2). Each period reconciles.
    #[test]
    fn flows_follow_the_other_side_of_each_entry() {
        let grant = paid("grt_a", "100", "0.05");
        let mut report = Report::new(t("2026-01-01T00:00:00Z"), t("2026-01-04T00:00:00Z"), Granularity::Day).unwrap();
        let entries = [
            entry(
                "2026-01-01T10:00:00Z",
                vec![system(SystemAccount::Issuance, "-100"), debt("10"), wallet(&grant, true, "90")],
            ),
            entry("2026-01-02T10:00:00Z", vec![system(SystemAccount::Revenue, "30"), wallet(&grant, false, "-30")]),
            entry("2026-01-02T11:00:00Z", vec![system(SystemAccount::Issuance, "20"), wallet(&grant, false, "-20")]),
            entry("2026-01-03T00:00:00Z", vec![wallet(&grant, false, "-40"), system(SystemAccount::Expired, "40")]),
            // After the end: ignored.
            entry("2026-01-05T00:00:00Z", vec![system(SystemAccount::Revenue, "1"), wallet(&grant, false, "-1")]),
        ];
        for entry in &entries {
            report.add(entry).unwrap();
        }
        let lines = report.finish().unwrap();
        assert_eq!(lines.len(), 1);
        let figures: Vec<[Decimal; 6]> = lines[0]
            .1
            .iter()
            .map(|period| {
                let f = &period.figures;
                [f.opening, f.additions, f.recognised, f.breakage, f.refunds, f.closing]
            })
            .collect();
        assert_eq!(
            figures,
            vec![
                [d("0"), d("5"), d("0.5"), d("0"), d("0"), d("4.5")],
                [d("4.5"), d("0"), d("1.5"), d("0"), d("1"), d("2")],
                [d("2"), d("0"), d("0"), d("2"), d("0"), d("0")],
            ]
        );
    }

    /// A plan fee of 30 taking paid credit, for a period of 3 days, two of them before the
    /// report: deferred 10 at the start, recognised 10 on the third day.
    #[test]
    fn plan_fees_are_recognised_ratably_and_add_up_exactly() {
        let grant = paid("grt_usd", "30", "1");
        let mut report = Report::new(t("2026-01-03T00:00:00Z"), t("2026-01-05T00:00:00Z"), Granularity::Day).unwrap();
        report
            .add(&entry(
                "2026-01-01T00:00:00Z",
                vec![system(SystemAccount::Issuance, "-30"), wallet(&grant, true, "30")],
            ))
            .unwrap();
        let mut fee =
            entry("2026-01-01T00:00:00Z", vec![system(SystemAccount::Revenue, "30"), wallet(&grant, false, "-30")]);
        fee.service_until = Some(t("2026-01-04T00:00:00Z"));
        report.add(&fee).unwrap();
        let lines = report.finish().unwrap();
        let periods = &lines[0].1;
        assert_eq!(
            (periods[0].figures.opening, periods[0].figures.recognised, periods[0].figures.closing),
            (d("10"), d("10"), d("0"))
        );
        assert_eq!(periods[1].figures, Figures::default());
        // Thirds that do not end: the shares still add up to the whole.
        let (from, until) = (t("2026-01-01T00:00:00Z"), t("2026-01-04T00:00:00Z"));
        let first = ratable_share(d("10"), from, until, t("2026-01-02T00:00:00Z"));
        let second = ratable_share(d("10"), from, until, t("2026-01-03T00:00:00Z")) - first;
        let third = ratable_share(d("10"), from, until, until) - first - second;
        assert_eq!(first + second + third, d("10"));
    }

    #[test]
    fn promotional_and_bundled_credit_is_never_revenue() {
        let promotion =
            ("grt_p".to_owned(), IssuedGrant { purpose: Purpose::Promotion, amount: d("5"), cost_basis: None });
        let mut report = Report::new(t("2026-01-01T00:00:00Z"), t("2026-01-02T00:00:00Z"), Granularity::Day).unwrap();
        report
            .add(&entry(
                "2026-01-01T01:00:00Z",
                vec![system(SystemAccount::Issuance, "-5"), wallet(&promotion, true, "5")],
            ))
            .unwrap();
        report
            .add(&entry(
                "2026-01-01T02:00:00Z",
                vec![system(SystemAccount::Revenue, "2"), wallet(&promotion, false, "-2")],
            ))
            .unwrap();
        let lines = report.finish().unwrap();
        assert_eq!(lines[0].0, Line::Credit { asset: "CRED".into(), kind: "promotion" });
        let figures = &lines[0].1[0].figures;
        assert_eq!((figures.additions, figures.recognised, figures.closing), (d("5"), d("2"), d("3")));
    }

    fn grant_entry(
        at: Instant,
        postings: Vec<crate::ledger::Posting>,
        issued: &std::collections::HashMap<String, IssuedGrant>,
        new_grant: Option<&str>,
        service_until: Option<Instant>,
    ) -> Entry {
        let postings = postings
            .into_iter()
            .map(|posting| EntryPosting {
                account: posting.account,
                issues_grant: posting.grant_id.is_some() && posting.grant_id.as_deref() == new_grant,
                grant: posting.grant_id.map(|id| (id.clone(), issued[&id].clone())),
                amount: posting.amount,
            })
            .collect();
        Entry { asset: "CRED".into(), effective_at: at, service_until, postings }
    }

    proptest::proptest! {
        /// Random wallets (paid and promotional grants, some starting later, all expiring;
        /// fees, plan fees, refunds, overdrafts repaid): every period reconciles and chains, and
        /// the last closing is what paid grants hold at their cost basis (plan fees all ended).
        #[test]
        fn random_wallets_reconcile(operations in proptest::collection::vec((0u8..6, 1u32..50, 0u32..30), 1..40)) {
            use crate::wallet::{AccountState, Grant, GrantState};
            let basis = d("0.05");
            let start = t("2026-01-01T00:00:00Z");
            let mut now = start;
            let mut state = AccountState::default();
            let mut issued = std::collections::HashMap::new();
            let mut entries = Vec::new();
            for (index, (kind, amount, hours)) in operations.into_iter().enumerate() {
                now += chrono::Duration::hours(i64::from(hours));
                for settlement in state.settle(now).unwrap() {
                    entries.push(grant_entry(settlement.at, settlement.postings, &issued, None, None));
                }
                let amount = Decimal::from(amount);
                match kind {
                    0..=2 => {
                        let purpose = if kind == 2 { Purpose::Promotion } else { Purpose::Paid };
                        let id = format!("grt_{index}");
                        let cost_basis = (purpose == Purpose::Paid).then(|| (basis, "USD".to_owned()));
                        issued.insert(id.clone(), IssuedGrant { purpose, amount, cost_basis });
                        let effective_at = now + chrono::Duration::hours(i64::from(hours % 3));
                        let grant = Grant {
                            id: id.as_str().into(), purpose, priority: 0, amount, remaining: amount, effective_at,
                            expires_at: Some(effective_at + chrono::Duration::hours(1 + i64::from(hours))),
                            created_at: now, state: GrantState::Pending,
                        };
                        let postings = state.credit(grant, SystemAccount::Issuance, now).unwrap();
                        entries.push(grant_entry(now, postings, &issued, Some(&id), None));
                    }
                    3 | 4 => {
                        let postings = state.debit(amount, SystemAccount::Revenue, None).unwrap();
                        let until = (kind == 4).then(|| now + chrono::Duration::hours(1 + i64::from(hours)));
                        entries.push(grant_entry(now, postings, &issued, None, until));
                    }
                    _ => {
                        let postings = state.refund(amount, SystemAccount::Issuance).unwrap();
                        entries.push(grant_entry(now, postings, &issued, None, None));
                    }
                }
            }
            let end = now + chrono::Duration::days(2);
            for settlement in state.settle(end - chrono::Duration::microseconds(1)).unwrap() {
                entries.push(grant_entry(settlement.at, settlement.postings, &issued, None, None));
            }
            let mut report = Report::new(start, end, Granularity::Day).unwrap();
            for entry in &entries {
                report.add(entry).unwrap();
            }
            for (line, periods) in report.finish().unwrap() {
                let mut previous = Decimal::ZERO;
                for period in &periods {
                    let f = &period.figures;
                    proptest::prop_assert_eq!(f.opening, previous);
                    proptest::prop_assert_eq!(f.opening + f.additions - f.recognised - f.breakage - f.refunds, f.closing);
                    previous = f.closing;
                }
                if let Line::Revenue { .. } = line {
                    let held: Decimal = state.grants.iter().filter(|grant| grant.purpose == Purpose::Paid).map(|grant| grant.remaining).sum();
                    proptest::prop_assert_eq!(previous, held * basis);
                }
            }
        }
    }
}
