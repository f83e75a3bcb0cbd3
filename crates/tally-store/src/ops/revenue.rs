//! The revenue report (deferred revenue, recognition, breakage and refunds) over the ledger,
//! read in one transaction a chunk of entries at a time (see `tally_core::revenue`).

use super::OpError;
use crate::conn::Conn;
use crate::repo::revenue::{self, CHUNK};
use chrono::{DateTime, Utc};
use tally_core::revenue::{Granularity, Line, Period, Report, RevenueError};
use tally_core::Mode;

/// What to report on.
#[derive(Debug, Clone, PartialEq)]
pub struct RevenueQuery {
    pub period_from: DateTime<Utc>,
    pub period_to: DateTime<Utc>,
    pub granularity: Granularity,
    /// Only lines of this asset.
    pub asset: Option<String>,
    /// Only revenue lines in this currency (credit lines, in units, are kept).
    pub currency: Option<String>,
}

/// Checks the query's range before anything is read.
pub fn check(query: &RevenueQuery) -> Result<(), OpError> {
    tally_core::revenue::boundaries(query.period_from, query.period_to, query.granularity)
        .map(|_| ())
        .map_err(revenue_error)
}

fn revenue_error(error: RevenueError) -> OpError {
    match error {
        RevenueError::EmptyRange => OpError::invalid("period_to", error.to_string()),
        RevenueError::TooManyPeriods => OpError::invalid("period_from", error.to_string()),
        RevenueError::Overflow => OpError::Store(crate::StoreError::Corrupt(error.to_string())),
    }
}

pub fn report(conn: &mut dyn Conn, mode: Mode, query: &RevenueQuery) -> Result<Vec<(Line, Vec<Period>)>, OpError> {
    report_in_chunks(conn, mode, query, CHUNK)
}

/// [`report`] reading `chunk` entries at a time (tests use small chunks).
pub fn report_in_chunks(
    conn: &mut dyn Conn,
    mode: Mode,
    query: &RevenueQuery,
    chunk: i64,
) -> Result<Vec<(Line, Vec<Period>)>, OpError> {
    let mut report = Report::new(query.period_from, query.period_to, query.granularity).map_err(revenue_error)?;
    let mut after = 0;
    loop {
        let (entries, last) =
            revenue::entries_after(conn, mode, after, query.period_to, query.asset.as_deref(), chunk)?;
        for entry in &entries {
            report.add(entry).map_err(revenue_error)?;
        }
        match last {
            Some(last) if (entries.len() as i64) >= chunk => after = last,
            Some(_) | None => break,
        }
    }
    let mut lines = report.finish().map_err(revenue_error)?;
    if let Some(currency) = &query.currency {
        lines.retain(|(line, _)| match line {
            Line::Revenue { currency: of_line, .. } => of_line == currency,
            Line::Credit { .. } => true,
        });
    }
    Ok(lines)
}
