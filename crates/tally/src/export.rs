//! `tally export events|transactions`: usage events or wallet transactions of one mode as CSV
//! or JSON Lines, on stdout or into a file. Rows are read a page at a time, each page in its
//! own short read transaction, by a cursor, and written as they come: memory stays bounded
//! and a running server is not held up. A progress bar shows on a terminal only.

use anyhow::{anyhow, bail, Context};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use tally_core::Mode;
use tally_http::export::{Format, RowWriter, PAGE_ROWS};
use tally_store::repo::export::{self as export_repo, EventCursor, ExportFilter, TransactionCursor};
use tally_store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    /// Usage events, in the order they were stored; the period is of `occurred_at`.
    Events,
    /// Wallet transactions, customer by customer in the order they happened; the period is of
    /// `created_at`.
    Transactions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    /// RFC 4180 CSV with a header row.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// What to export.
    #[arg(value_enum)]
    pub what: What,
    #[arg(long, value_enum, default_value_t = FormatArg::Csv)]
    pub format: FormatArg,
    /// The mode to export: test, live, or a connected account's (live:acc_...). One file
    /// holds one mode, as the API never mixes them.
    #[arg(long)]
    pub mode: String,
    /// One customer's rows only (its id, cust_...).
    #[arg(long)]
    pub customer: Option<String>,
    /// From this instant on (inclusive): RFC 3339, or a date meaning its midnight UTC.
    #[arg(long)]
    pub from: Option<String>,
    /// Before this instant (exclusive): RFC 3339, or a date meaning its midnight UTC.
    #[arg(long)]
    pub to: Option<String>,
    /// Write to this file instead of stdout.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

fn instant(flag: &str, text: Option<&str>) -> anyhow::Result<Option<chrono::DateTime<chrono::Utc>>> {
    text.map(|text| {
        tally_http::types::parse_timestamp(text).ok_or_else(|| {
            anyhow!("--{flag} must be an RFC 3339 date-time (2026-11-21T13:00:00Z) or a date (2026-11-21)")
        })
    })
    .transpose()
}

/// Runs the export; returns how many rows it wrote, or `None` when the reader of its output
/// stopped reading (`| head`), which is not an error of the export.
pub fn run(store: &Store, args: &ExportArgs) -> anyhow::Result<Option<u64>> {
    let mode =
        Mode::parse(&args.mode).ok_or_else(|| anyhow!("--mode must be test, live, or test:acc_… / live:acc_…"))?;
    let filter = ExportFilter {
        customer_id: args.customer.clone(),
        from: instant("from", args.from.as_deref())?,
        to: instant("to", args.to.as_deref())?,
    };
    if let (Some(from), Some(to)) = (filter.from, filter.to) {
        if to <= from {
            bail!("--to must be after --from");
        }
    }
    let format = match args.format {
        FormatArg::Csv => Format::Csv,
        FormatArg::Jsonl => Format::Jsonl,
    };
    let total = store.read(|conn| match args.what {
        What::Events => export_repo::count_events(conn, mode, &filter),
        What::Transactions => export_repo::count_transactions(conn, mode, &filter),
    })?;
    let (output, to_terminal): (Box<dyn Write>, bool) = match &args.output {
        Some(path) => {
            let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
            (Box::new(file), false)
        }
        None => (Box::new(std::io::stdout().lock()), std::io::stdout().is_terminal()),
    };
    let mut output = std::io::BufWriter::new(output);
    // The bar is drawn on stderr, and only on a terminal that the rows are not going to.
    let progress = if std::io::stderr().is_terminal() && !to_terminal {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(total.max(0) as u64),
            indicatif::ProgressDrawTarget::stderr(),
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {human_pos}/{human_len} rows, {eta} left")
                .expect("a valid template"),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let written = match write_rows(store, args.what, mode, &filter, format, &mut output, &progress) {
        Ok(written) => written,
        Err(error) if is_broken_pipe(&error) => return Ok(None),
        Err(error) => return Err(error),
    };
    progress.finish_and_clear();
    match output.flush() {
        Ok(()) => Ok(Some(written)),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(None),
        Err(error) => Err(error).context("cannot write the export"),
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.downcast_ref::<std::io::Error>().is_some_and(|error| error.kind() == std::io::ErrorKind::BrokenPipe)
}

fn write_rows(
    store: &Store,
    what: What,
    mode: Mode,
    filter: &ExportFilter,
    format: Format,
    output: &mut dyn Write,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<u64> {
    let mut writer = match what {
        What::Events => RowWriter::events(format),
        What::Transactions => RowWriter::transactions(format),
    };
    output.write_all(&writer.header())?;
    let mut written = 0u64;
    match what {
        What::Events => {
            let mut cursor: Option<EventCursor> = None;
            loop {
                let page =
                    store.read(|conn| export_repo::events_page(conn, mode, filter, cursor.as_ref(), PAGE_ROWS))?;
                for event in &page {
                    writer.event(mode, event);
                }
                output.write_all(&writer.take())?;
                written += page.len() as u64;
                progress.inc(page.len() as u64);
                match page.last() {
                    Some((last, _)) if page.len() as i64 == PAGE_ROWS => {
                        cursor = Some(EventCursor { created_at: last.created_at, id: last.id.clone() })
                    }
                    _ => break,
                }
            }
        }
        What::Transactions => {
            let mut cursor: Option<TransactionCursor> = None;
            loop {
                let page = store
                    .read(|conn| export_repo::transactions_page(conn, mode, filter, cursor.as_ref(), PAGE_ROWS))?;
                for (transaction, _) in &page {
                    writer.transaction(mode, transaction);
                }
                output.write_all(&writer.take())?;
                written += page.len() as u64;
                progress.inc(page.len() as u64);
                match page.last() {
                    Some((_, last)) if page.len() as i64 == PAGE_ROWS => cursor = Some(last.clone()),
                    _ => break,
                }
            }
        }
    }
    Ok(written)
}
