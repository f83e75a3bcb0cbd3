//! The activity page: every movement of every account of the customer, newest first by the
//! movement's own time, filtered by account, kind and days of the customer's calendar, a page
//! at a time by a keyset cursor (`repo::activity`), and the same rows as CSV.

use super::format::AssetLook;
use super::locale::Viewer;
use super::pages::{portal_page, Tab};
use super::{account_id, failure, html, look_of, looks, Session};
use crate::export::Chunks;
use crate::html::Branding;
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{Days, NaiveDate};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use tally_store::repo::activity::{self as activity_repo, Category, Cursor, Filter, Movement};
use tally_store::repo::portal::PortalSession;
use tally_store::repo::wallets as wallet_repo;

/// Rows on one page of the activity.
pub const PAGE_ROWS: i64 = 50;
/// Rows read per page of a CSV download (one short read transaction each).
const CSV_PAGE_ROWS: i64 = 500;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ActivityQuery {
    /// An account id, `name:ASSET`.
    pub account: String,
    pub kind: String,
    /// Days of the customer's calendar, `YYYY-MM-DD`, both included.
    pub from: String,
    pub to: String,
    /// The cursor of the page to show.
    pub after: String,
}

impl ActivityQuery {
    /// The filter this query asks for, in the customer's time zone. Values that do not parse
    /// are ignored (the form only offers valid ones).
    fn filter(&self, viewer: &Viewer) -> Filter {
        let day = |text: &str| NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d").ok();
        Filter {
            account: self.account.split_once(':').map(|(name, asset)| (name.to_owned(), asset.to_owned())),
            category: Category::parse(&self.kind),
            from: day(&self.from).map(|day| viewer.day_start(day)),
            until: day(&self.to).and_then(|day| day.checked_add_days(Days::new(1))).map(|day| viewer.day_start(day)),
        }
    }

    /// The query string of the filter, without the cursor.
    fn filter_query(&self) -> String {
        [("account", &self.account), ("kind", &self.kind), ("from", &self.from), ("to", &self.to)]
            .into_iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(name, value)| format!("{name}={}", super::url_escape(value)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// A movement with what the page shows of it.
#[derive(Debug, Clone)]
pub struct ActivityLine {
    pub movement: Movement,
    pub look: AssetLook,
    pub product: Option<String>,
    pub price: Option<String>,
    pub quantity: Option<String>,
    pub subject: Option<String>,
    /// The adjustment's reason, such as `external_refund`.
    pub reason: Option<String>,
}

impl ActivityLine {
    fn of(movement: Movement, looks: &HashMap<String, AssetLook>) -> ActivityLine {
        let detail: Value = serde_json::from_str(&movement.detail).unwrap_or_default();
        let fee: Value =
            movement.fee_detail.as_deref().and_then(|text| serde_json::from_str(text).ok()).unwrap_or_default();
        let text = |value: &Value, field: &str| value.get(field).and_then(Value::as_str).map(str::to_owned);
        // Numbers in details are exact JSON numbers: their text is the decimal.
        let number =
            |value: &Value, field: &str| value.get(field).filter(|value| value.is_number()).map(Value::to_string);
        let quantity = match movement.category {
            Category::Usage if movement.fee_detail.is_some() => number(&fee, "input_volume")
                .or_else(|| (text(&fee, "usage_type").as_deref() == Some("unit")).then(|| "1".to_owned())),
            Category::Usage => number(&detail, "input_units").or_else(|| number(&detail, "input_volume")),
            _ => None,
        };
        ActivityLine {
            look: look_of(looks, &movement.asset),
            product: text(&detail, "product_name"),
            price: movement.price_name.clone(),
            quantity,
            subject: text(&detail, "subject"),
            reason: text(&detail, "reason"),
            movement,
        }
    }

    pub fn kind_label(&self) -> &'static str {
        match self.movement.category {
            Category::Usage => "Usage",
            Category::PlanFee => "Plan fee",
            Category::Included => "Included in plan",
            Category::TopUp => "Top-up",
            Category::AutoTopUp => "Auto top-up",
            Category::Promotion => "Promotional credit",
            Category::Adjustment if self.reason.as_deref() == Some("external_refund") => "Refund",
            Category::Adjustment => "Adjustment",
            Category::Expiry => "Expired",
        }
    }

    /// What the movement was, in one line: "Glitch Video · Video generation · 1 × clip-maker".
    pub fn what(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        match self.movement.category {
            Category::Usage => {
                parts.extend(self.product.clone());
                parts.extend(self.price.clone());
                if let Some(quantity) = &self.quantity {
                    parts.push(format!("quantity {quantity}"));
                }
                if parts.is_empty() {
                    parts.extend(self.movement.description.clone());
                }
            }
            _ => parts.extend(self.movement.description.clone()),
        }
        parts.join(" · ")
    }
}

pub fn kind_name(category: Category) -> &'static str {
    match category {
        Category::Usage => "Usage fees",
        Category::PlanFee => "Plan fees",
        Category::Included => "Included in plan",
        Category::TopUp => "Top-ups",
        Category::AutoTopUp => "Auto top-ups",
        Category::Promotion => "Gifts and promotions",
        Category::Adjustment => "Adjustments and refunds",
        Category::Expiry => "Expiries",
    }
}

/// What the activity page shows.
pub struct ActivityPage {
    pub lines: Vec<ActivityLine>,
    pub next: Option<Cursor>,
    pub accounts: Vec<(String, AssetLook)>,
    pub query: ActivityQuery,
    pub first_page: bool,
}

async fn load(
    state: &AppState,
    session: &PortalSession,
    query: ActivityQuery,
    viewer: Viewer,
) -> Result<ActivityPage, crate::error::ApiError> {
    let (mode, customer_id) = (session.mode, session.customer_id.clone());
    state
        .read(move |conn| {
            let filter = query.filter(&viewer);
            let after = Cursor::parse(query.after.trim());
            let (movements, next) = activity_repo::page(conn, mode, &customer_id, &filter, after.as_ref(), PAGE_ROWS)?;
            let accounts = wallet_repo::list_for_customer(conn, &customer_id)?;
            let codes = accounts
                .iter()
                .map(|account| account.key.asset.clone())
                .chain(movements.iter().map(|m| m.asset.clone()));
            let looks = looks(conn, mode, codes.collect::<Vec<_>>())?;
            Ok(ActivityPage {
                lines: movements.into_iter().map(|movement| ActivityLine::of(movement, &looks)).collect(),
                next,
                accounts: accounts
                    .iter()
                    .map(|account| (account_id(&account.key), look_of(&looks, &account.key.asset)))
                    .collect(),
                first_page: after.is_none(),
                query,
            })
        })
        .await
}

pub async fn activity(
    State(state): State<AppState>,
    Session(session): Session,
    viewer: Viewer,
    Query(query): Query<ActivityQuery>,
) -> Response {
    if let Err(error) = super::settle_if_due(&state, &session).await {
        return failure(&state, error);
    }
    match load(&state, &session, query, viewer).await {
        Ok(page) => html(StatusCode::OK, render(&state.branding_for(session.mode).await, &session, &viewer, &page)),
        Err(error) => failure(&state, error),
    }
}

fn select(name: &str, label: &str, chosen: &str, options: &[(String, String)]) -> Markup {
    html! {
        div {
            label for=(name) { (label) }
            select id=(name) name=(name) {
                option value="" selected[chosen.is_empty()] { "All" }
                @for (value, text) in options { option value=(value) selected[value == chosen] { (text) } }
            }
        }
    }
}

/// The table of movements; rows stack on a phone, each cell labelled.
pub fn table(viewer: &Viewer, lines: &[ActivityLine]) -> Markup {
    if lines.is_empty() {
        return html! { p class="muted" { "No activity matches." } };
    }
    html! {
        div class="card table-wrap" {
            table class="stack" {
                caption class="sr-only" { "Activity, newest first" }
                thead {
                    tr {
                        th scope="col" { "When" }
                        th scope="col" { "Kind" }
                        th scope="col" { "Account" }
                        th scope="col" { "What" }
                        th scope="col" { "Subject" }
                        th scope="col" class="amount" { "Amount" }
                    }
                }
                tbody {
                    @for line in lines {
                        @let movement = &line.movement;
                        tr data-transaction=(movement.transaction_id) data-kind=(movement.category.as_str()) {
                            td data-label="When" { (viewer.date_time(movement.at)) }
                            td data-label="Kind" { (line.kind_label()) }
                            td data-label="Account" {
                                (line.look.name)
                                @if movement.account_name != "default" { " \u{b7} " (movement.account_name) }
                            }
                            td data-label="What" { (line.what()) }
                            td data-label="Subject" { (line.subject.as_deref().unwrap_or("\u{2014}")) }
                            td data-label="Amount" class="amount" { (viewer.amount(&line.look, movement.amount)) }
                        }
                    }
                }
            }
        }
    }
}

pub fn render(branding: &Branding, session: &PortalSession, viewer: &Viewer, page: &ActivityPage) -> Markup {
    let query = &page.query;
    let accounts: Vec<(String, String)> = page
        .accounts
        .iter()
        .map(|(id, look)| {
            let name = id.split_once(':').map(|(name, _)| name).unwrap_or("default");
            let text = if name == "default" { look.name.clone() } else { format!("{} ({name})", look.name) };
            (id.clone(), text)
        })
        .collect();
    let kinds: Vec<(String, String)> = Category::ALL
        .into_iter()
        .map(|category| (category.as_str().to_owned(), kind_name(category).to_owned()))
        .collect();
    let filter_query = query.filter_query();
    let joiner = if filter_query.is_empty() { "" } else { "&" };
    let csv = format!("/portal/activity.csv{}{filter_query}", if filter_query.is_empty() { "" } else { "?" });
    let body = html! {
        h1 { "Activity" }
        p class="muted" { "Every movement of your balances, newest first." }
        (viewer.zone_note())
        form class="card filters" method="get" action="/portal/activity" {
            div class="fields" {
                (select("account", "Account", &query.account, &accounts))
                (select("kind", "Kind", &query.kind, &kinds))
                div { label for="from" { "From" } input type="date" id="from" name="from" value=(query.from.trim()); }
                div { label for="to" { "To" } input type="date" id="to" name="to" value=(query.to.trim()); }
            }
            button type="submit" { "Show" }
            " "
            a class="download" href=(csv) download { "Download CSV" }
        }
        (table(viewer, &page.lines))
        nav class="pager" aria-label="Pages" {
            @if page.first_page {
                span {}
            } @else {
                a href={ "/portal/activity?" (filter_query) } { "\u{2190} Newest" }
            }
            @if let Some(cursor) = &page.next {
                a href={ "/portal/activity?" (filter_query) (joiner) "after=" (cursor.encode()) } rel="next" {
                    "Older \u{2192}"
                }
            } @else {
                span {}
            }
        }
    };
    portal_page(branding, session, Tab::Activity, "Activity", body)
}

pub const CSV_COLUMNS: [&str; 12] = [
    "time",
    "kind",
    "account_name",
    "asset",
    "amount",
    "description",
    "product",
    "price",
    "quantity",
    "subject",
    "transaction_id",
    "local_time",
];

fn csv_row(writer: &mut csv::Writer<Vec<u8>>, viewer: &Viewer, line: &ActivityLine) {
    let movement = &line.movement;
    let record = [
        crate::types::format_timestamp(movement.at),
        movement.category.as_str().to_owned(),
        movement.account_name.clone(),
        movement.asset.clone(),
        movement.amount.normalize().to_string(),
        movement.description.clone().unwrap_or_default(),
        line.product.clone().unwrap_or_default(),
        line.price.clone().unwrap_or_default(),
        line.quantity.clone().unwrap_or_default(),
        line.subject.clone().unwrap_or_default(),
        movement.transaction_id.clone(),
        viewer.local(movement.at).format("%Y-%m-%d %H:%M:%S").to_string(),
    ];
    // Writing to a Vec cannot fail.
    let _ = writer.write_record(&record);
}

fn csv_writer() -> csv::Writer<Vec<u8>> {
    csv::WriterBuilder::new().terminator(csv::Terminator::CRLF).from_writer(Vec::new())
}

fn take(writer: &mut csv::Writer<Vec<u8>>) -> Vec<u8> {
    std::mem::replace(writer, csv_writer()).into_inner().unwrap_or_default()
}

/// The filtered activity as CSV: every row, exact amounts, streamed a page at a time.
pub async fn activity_csv(
    State(state): State<AppState>,
    Session(session): Session,
    viewer: Viewer,
    Query(query): Query<ActivityQuery>,
) -> Response {
    if let Err(error) = super::settle_if_due(&state, &session).await {
        return failure(&state, error);
    }
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let filter = query.filter(&viewer);
    let (mode, customer_id) = (session.mode, session.customer_id.clone());
    tokio::spawn(async move {
        let mut writer = csv_writer();
        let _ = writer.write_record(CSV_COLUMNS);
        let mut cursor: Option<Cursor> = None;
        loop {
            let (filter, after, id) = (filter.clone(), cursor.clone(), customer_id.clone());
            let page = state
                .read(move |conn| {
                    let (movements, next) =
                        activity_repo::page(conn, mode, &id, &filter, after.as_ref(), CSV_PAGE_ROWS)?;
                    let looks = looks(conn, mode, movements.iter().map(|m| m.asset.clone()).collect::<Vec<_>>())?;
                    Ok((
                        movements.into_iter().map(|movement| ActivityLine::of(movement, &looks)).collect::<Vec<_>>(),
                        next,
                    ))
                })
                .await;
            let (lines, next) = match page {
                Ok(page) => page,
                Err(error) => {
                    tracing::error!(?error, "an activity download stopped: a page could not be read");
                    let _ = sender.send(Err(std::io::Error::other("the activity could not be read"))).await;
                    return;
                }
            };
            for line in &lines {
                csv_row(&mut writer, &viewer, line);
            }
            let chunk = take(&mut writer);
            if !chunk.is_empty() && sender.send(Ok(Bytes::from(chunk))).await.is_err() {
                return;
            }
            match next {
                Some(next) => cursor = Some(next),
                None => return,
            }
        }
    });
    let mut response = (StatusCode::OK, Body::from_stream(Chunks(receiver))).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    headers.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment; filename=\"activity.csv\""));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}
