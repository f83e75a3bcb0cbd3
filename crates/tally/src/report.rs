//! `tally report revenue`: the revenue report of `GET /reports/revenue` (rules in
//! `tally_core::revenue` and docs/api.md), read straight from the database in one read
//! transaction, printed as a table or CSV. The read streams the ledger a chunk at a time.

use anyhow::{anyhow, bail};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use rust_decimal::Decimal;
use std::io::Write;
use tally_core::revenue::{Granularity, Line, Period};
use tally_core::Mode;
use tally_store::ops::revenue::{self, RevenueQuery};
use tally_store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// Aligned columns; revenue figures rounded half away from zero to the currency's minor
    /// units (display only).
    Table,
    /// RFC 4180 CSV with a header row, exact figures.
    Csv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupBy {
    Day,
    Month,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RevenueArgs {
    /// The mode to report on: test, live, or a connected account's (live:acc_...).
    #[arg(long)]
    pub mode: String,
    /// Start (included): RFC 3339, or a date meaning its midnight UTC.
    #[arg(long)]
    pub from: String,
    /// End: an RFC 3339 instant (excluded) or a date (included, as in the API).
    #[arg(long)]
    pub to: String,
    #[arg(long = "group-by", value_enum, default_value_t = GroupBy::Month)]
    pub group_by: GroupBy,
    /// Only revenue lines in this currency.
    #[arg(long)]
    pub currency: Option<String>,
    /// Only lines of this asset.
    #[arg(long)]
    pub asset: Option<String>,
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
}

fn instant(flag: &str, text: &str) -> anyhow::Result<DateTime<Utc>> {
    tally_http::types::parse_timestamp(text)
        .ok_or_else(|| anyhow!("--{flag} must be an RFC 3339 date-time (2026-11-21T13:00:00Z) or a date (2026-11-21)"))
}

/// Reads the report and writes it to `out`.
pub fn run(store: &Store, args: &RevenueArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let mode =
        Mode::parse(&args.mode).ok_or_else(|| anyhow!("--mode must be test, live, or test:acc_… / live:acc_…"))?;
    let from = instant("from", &args.from)?;
    let mut to = instant("to", &args.to)?;
    if NaiveDate::parse_from_str(args.to.trim(), "%Y-%m-%d").is_ok() {
        to += Duration::days(1);
    }
    let currency = args.currency.as_ref().map(|currency| currency.to_ascii_uppercase());
    if currency.as_deref().is_some_and(|currency| !tally_core::currency::is_currency(currency)) {
        bail!("--currency must be an ISO 4217 currency");
    }
    let query = RevenueQuery {
        period_from: from,
        period_to: to,
        granularity: match args.group_by {
            GroupBy::Day => Granularity::Day,
            GroupBy::Month => Granularity::Month,
        },
        asset: args.asset.as_ref().map(|asset| asset.to_ascii_uppercase()),
        currency,
    };
    tally_core::revenue::boundaries(query.period_from, query.period_to, query.granularity)
        .map_err(|error| anyhow!("{error}"))?;
    let lines = store.read(|conn| revenue::report(conn, mode, &query))?;
    match args.format {
        ReportFormat::Csv => write_csv(&lines, out)?,
        ReportFormat::Table => write_table(&lines, out)?,
    }
    Ok(())
}

const COLUMNS: [&str; 6] = ["opening", "additions", "recognised", "breakage", "refunds", "closing"];

fn figures(period: &Period) -> [Decimal; 6] {
    let figures = &period.figures;
    [figures.opening, figures.additions, figures.recognised, figures.breakage, figures.refunds, figures.closing]
}

fn day_or_instant(at: DateTime<Utc>) -> String {
    tally_http::types::format_timestamp(at)
}

/// One row per line and period. `block` is `revenue` (figures in `currency`) or `credit`
/// (never revenue, in asset units: additions issued, recognised used, breakage expired,
/// refunds removed).
fn write_csv(lines: &[(Line, Vec<Period>)], out: &mut dyn Write) -> anyhow::Result<()> {
    writeln!(out, "block,asset,currency,kind,period_start,period_end,{}", COLUMNS.join(","))?;
    for (line, periods) in lines {
        let (block, asset, currency, kind) = match line {
            Line::Revenue { asset, currency } => ("revenue", asset.as_str(), currency.as_str(), ""),
            Line::Credit { asset, kind } => ("credit", asset.as_str(), "", *kind),
        };
        for period in periods {
            let values: Vec<String> = figures(period).iter().map(|value| value.normalize().to_string()).collect();
            writeln!(
                out,
                "{block},{asset},{currency},{kind},{},{},{}",
                day_or_instant(period.start),
                day_or_instant(period.end),
                values.join(",")
            )?;
        }
    }
    Ok(())
}

fn write_table(lines: &[(Line, Vec<Period>)], out: &mut dyn Write) -> anyhow::Result<()> {
    let mut rows: Vec<Vec<String>> =
        vec![["line", "period"].iter().chain(COLUMNS.iter()).map(|text| text.to_string()).collect()];
    for (line, periods) in lines {
        let (name, places) = match line {
            Line::Revenue { asset, currency } => {
                (format!("{asset} revenue in {currency}"), tally_core::currency::minor_units(currency))
            }
            Line::Credit { asset, kind } => (format!("{asset} {kind} credit (units)"), None),
        };
        for period in periods {
            let mut row = vec![name.clone(), period.start.format("%Y-%m-%d").to_string()];
            row.extend(figures(period).iter().map(|value| match places {
                Some(places) => format!("{:.*}", places as usize, tally_core::money::round_display(*value, places)),
                None => value.normalize().to_string(),
            }));
            rows.push(row);
        }
    }
    if lines.is_empty() {
        writeln!(out, "no credit moved in the period or before it")?;
        return Ok(());
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|column| rows.iter().map(|row| row[column].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(column, cell)| {
                if column < 2 {
                    format!("{cell:<width$}", width = widths[column])
                } else {
                    format!("{cell:>width$}", width = widths[column])
                }
            })
            .collect();
        writeln!(out, "{}", cells.join("  ").trim_end())?;
    }
    Ok(())
}
