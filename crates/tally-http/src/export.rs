//! Exports of usage events and wallet transactions as CSV or JSON Lines: the rows' columns
//! and their text, shared by `tally export` and `GET /customers/{customerId}/events.csv`.
//! Rows are read a page at a time by a cursor (`repo::export`) and written as they come, so
//! memory stays bounded however many rows an export holds.

use crate::error::ApiError;
use crate::extract::{Auth, QueryParams};
use crate::types::format_timestamp;
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rust_decimal::Decimal;
use serde_json::{Map, Value};
use std::pin::Pin;
use std::task::{Context, Poll};
use tally_core::Mode;
use tally_store::repo::customers as customer_repo;
use tally_store::repo::events::EventWithCustomer;
use tally_store::repo::export::{self as export_repo, EventCursor, ExportFilter};
use tally_store::repo::transactions::Transaction;

/// Rows read per page (one short read transaction each).
pub const PAGE_ROWS: i64 = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// RFC 4180 CSV with a header row; JSON-valued columns hold their JSON text.
    Csv,
    /// One JSON object per line, amounts as exact JSON numbers.
    Jsonl,
}

pub const EVENT_COLUMNS: [&str; 15] = [
    "mode",
    "id",
    "customer_id",
    "customer_external_id",
    "event_type",
    "occurred_at",
    "created_at",
    "subject",
    "description",
    "billing_status",
    "unbilled_reason",
    "total_fees",
    "fee_currency",
    "data",
    "costs",
];

pub const TRANSACTION_COLUMNS: [&str; 12] = [
    "mode",
    "customer_id",
    "id",
    "kind",
    "account_name",
    "asset",
    "amount",
    "description",
    "created_at",
    "executed_at",
    "metadata",
    "detail",
];

/// One cell: its CSV text, and how it reads in JSON.
enum Cell {
    Text(String),
    OptionalText(Option<String>),
    Amount(Option<Decimal>),
    /// JSON text as stored (an event's data, a transaction's metadata).
    Json(String),
}

impl Cell {
    fn csv(&self) -> String {
        match self {
            Cell::Text(text) | Cell::Json(text) => text.clone(),
            Cell::OptionalText(text) => text.clone().unwrap_or_default(),
            Cell::Amount(amount) => amount.map(|amount| amount.normalize().to_string()).unwrap_or_default(),
        }
    }

    fn json(self) -> Value {
        match self {
            Cell::Text(text) => Value::String(text),
            Cell::OptionalText(text) => text.map_or(Value::Null, Value::String),
            // serde_json keeps a number's own digits (`arbitrary_precision`): never a float.
            Cell::Amount(amount) => amount
                .map(|amount| serde_json::from_str(&amount.normalize().to_string()).unwrap_or(Value::Null))
                .unwrap_or(Value::Null),
            Cell::Json(text) => serde_json::from_str(&text).unwrap_or(Value::String(text)),
        }
    }
}

fn event_cells(mode: Mode, (event, external_id): &EventWithCustomer) -> Vec<Cell> {
    vec![
        Cell::Text(mode.as_str().to_owned()),
        Cell::Text(event.id.clone()),
        Cell::Text(event.customer_id.clone()),
        Cell::OptionalText(external_id.clone()),
        Cell::Text(event.event_type.clone()),
        Cell::Text(format_timestamp(event.occurred_at)),
        Cell::Text(format_timestamp(event.created_at)),
        Cell::OptionalText(event.subject.clone()),
        Cell::OptionalText(event.description.clone()),
        Cell::Text(if event.unbilled.is_some() { "unbilled" } else { "billed" }.to_owned()),
        Cell::OptionalText(event.unbilled.as_ref().map(|reason| reason.code.clone())),
        Cell::Amount(event.total_fees),
        Cell::OptionalText(event.fee_currency.clone()),
        Cell::Json(event.data.clone()),
        Cell::Json(event.costs.clone()),
    ]
}

fn transaction_cells(mode: Mode, transaction: &Transaction) -> Vec<Cell> {
    vec![
        Cell::Text(mode.as_str().to_owned()),
        Cell::Text(transaction.customer_id.clone()),
        Cell::Text(transaction.id.clone()),
        Cell::Text(transaction.kind.clone()),
        Cell::Text(transaction.account_name.clone()),
        Cell::Text(transaction.asset.clone()),
        Cell::Amount(Some(transaction.amount)),
        Cell::OptionalText(transaction.description.clone()),
        Cell::Text(format_timestamp(transaction.created_at)),
        Cell::OptionalText(transaction.executed_at.map(format_timestamp)),
        Cell::Json(tally_store::repo::metadata_to_text(&transaction.metadata)),
        Cell::Json(transaction.detail.clone()),
    ]
}

/// Writes rows in one format. CSV quoting is the `csv` crate's (RFC 4180: a field with a
/// comma, quote or line break is quoted, quotes doubled).
pub struct RowWriter {
    format: Format,
    columns: &'static [&'static str],
    csv: csv::Writer<Vec<u8>>,
    lines: Vec<u8>,
}

impl RowWriter {
    pub fn events(format: Format) -> RowWriter {
        RowWriter::new(format, &EVENT_COLUMNS)
    }

    pub fn transactions(format: Format) -> RowWriter {
        RowWriter::new(format, &TRANSACTION_COLUMNS)
    }

    fn new(format: Format, columns: &'static [&'static str]) -> RowWriter {
        RowWriter { format, columns, csv: csv_writer(), lines: Vec::new() }
    }

    /// The header row (CSV only; JSON Lines has none).
    pub fn header(&mut self) -> Vec<u8> {
        if self.format == Format::Csv {
            self.csv.write_record(self.columns).expect("writing to memory");
        }
        self.take()
    }

    pub fn event(&mut self, mode: Mode, event: &EventWithCustomer) {
        self.row(event_cells(mode, event));
    }

    pub fn transaction(&mut self, mode: Mode, transaction: &Transaction) {
        self.row(transaction_cells(mode, transaction));
    }

    fn row(&mut self, cells: Vec<Cell>) {
        match self.format {
            Format::Csv => {
                let texts: Vec<String> = cells.iter().map(Cell::csv).collect();
                self.csv.write_record(&texts).expect("writing to memory");
            }
            Format::Jsonl => {
                let object: Map<String, Value> = self
                    .columns
                    .iter()
                    .map(|column| (*column).to_owned())
                    .zip(cells.into_iter().map(Cell::json))
                    .collect();
                let line = serde_json::to_string(&object).expect("a JSON object serialises");
                self.lines.extend_from_slice(line.as_bytes());
                self.lines.push(b'\n');
            }
        }
    }

    /// The bytes written since the last call.
    pub fn take(&mut self) -> Vec<u8> {
        match self.format {
            Format::Csv => std::mem::replace(&mut self.csv, csv_writer()).into_inner().expect("writing to memory"),
            Format::Jsonl => std::mem::take(&mut self.lines),
        }
    }
}

fn csv_writer() -> csv::Writer<Vec<u8>> {
    csv::WriterBuilder::new().terminator(csv::Terminator::CRLF).from_writer(Vec::new())
}

/// The body of a streamed export: chunks a producer task sends through a bounded channel, so
/// a slow client slows the reads instead of filling memory, and a client that goes away
/// stops them.
pub(crate) struct Chunks(pub(crate) tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl futures_core::Stream for Chunks {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(context)
    }
}

/// `GET /customers/{customerId}/events.csv`: the customer's usage events as CSV, in the order
/// they were stored, optionally of `period_from` (inclusive) to `period_to` (exclusive) by
/// `occurred_at`. Streamed a page at a time.
pub async fn customer_events_csv(
    State(state): State<AppState>,
    auth: Auth,
    Path(customer_id): Path<String>,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let filter = ExportFilter {
        customer_id: Some(customer_id.clone()),
        from: query.time("period_from"),
        to: query.time("period_to"),
    };
    query.finish()?;
    let mode = auth.mode;
    let id = customer_id.clone();
    state
        .read(move |conn| {
            customer_repo::get(conn, mode, &id)?.ok_or_else(|| tally_store::ops::customers::not_found(&id))?;
            Ok(())
        })
        .await?;
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let mut writer = RowWriter::events(Format::Csv);
    let header = writer.header();
    tokio::spawn(async move {
        if sender.send(Ok(Bytes::from(header))).await.is_err() {
            return;
        }
        let mut cursor: Option<EventCursor> = None;
        loop {
            let (filter, after) = (filter.clone(), cursor.clone());
            let page = state
                .read(move |conn| Ok(export_repo::events_page(conn, mode, &filter, after.as_ref(), PAGE_ROWS)?))
                .await;
            let page = match page {
                Ok(page) => page,
                Err(error) => {
                    // The status line has gone: the client sees a cut-off body, the log why.
                    tracing::error!(?error, "an events export stopped: a page could not be read");
                    let _ = sender.send(Err(std::io::Error::other("the export could not be read"))).await;
                    return;
                }
            };
            for event in &page {
                writer.event(mode, event);
            }
            if let Some((last, _)) = page.last() {
                cursor = Some(EventCursor { created_at: last.created_at, id: last.id.clone() });
            }
            let done = (page.len() as i64) < PAGE_ROWS;
            let chunk = writer.take();
            if !chunk.is_empty() && sender.send(Ok(Bytes::from(chunk))).await.is_err() {
                return;
            }
            if done {
                return;
            }
        }
    });
    let disposition = format!("attachment; filename=\"events-{}.csv\"", sanitise_filename(&customer_id));
    let mut response = (StatusCode::OK, Body::from_stream(Chunks(receiver))).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// A customer id as a file name: letters, digits, `_` and `-` only.
fn sanitise_filename(id: &str) -> String {
    id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect()
}
