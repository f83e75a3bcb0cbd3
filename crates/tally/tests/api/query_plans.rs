//! Every list and lookup query the API issues is served by an index (issue 12). The queries
//! are the repository functions' own: each is called through a connection that records the SQL
//! it runs, for every filter the API offers and for a first page, a deep offset and both
//! cursors, and then each recorded statement is explained. SQLite's `EXPLAIN QUERY PLAN` must
//! show no `SCAN <table>` without an index, and no temporary B-tree for the order; PostgreSQL's
//! `EXPLAIN`, with sequential scans and sorts switched off for the transaction (an empty table
//! would otherwise be read whole and sorted, as it should), no `Seq Scan` and no `Sort`: a plan
//! that still has one has no index to use instead.

use crate::harness::TestApp;
use crate::on_both_backends;
use chrono::{Duration, Utc};
use serde_json::json;
use tally_core::wallet::Purpose;
use tally_core::Mode;
use tally_store::repo::customers::CustomerFilter;
use tally_store::repo::events::EventFilter;
use tally_store::repo::wallets::{AccountKey, GrantFilter};
use tally_store::repo::webhooks::{Cursor as DeliveryCursor, DeliveryFilter, DeliveryStatus, DestinationFilter};
use tally_store::repo::{self, Cursor, Page, Window};
use tally_store::StoreError;
use tally_store::{Conn, Dialect, Row, Value};

/// Runs every statement on the real connection and keeps its text and parameters.
struct Recorder<'a> {
    inner: &'a mut dyn Conn,
    statements: Vec<(String, String, Vec<Value>)>,
    label: String,
}

impl Conn for Recorder<'_> {
    fn dialect(&self) -> Dialect {
        self.inner.dialect()
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        self.statements.push((self.label.clone(), sql.to_owned(), params.to_vec()));
        self.inner.execute(sql, params)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        self.statements.push((self.label.clone(), sql.to_owned(), params.to_vec()));
        self.inner.query(sql, params)
    }
}

/// The windows every list is read with: a first page, a deep offset, both cursors and an exact
/// total.
fn windows(key: Vec<Value>) -> Vec<(&'static str, Window)> {
    let page = Page { offset: 0, limit: 20 };
    vec![
        ("first page", Window { page, cursor: None, exact_total: false }),
        ("deep offset", Window { page: Page { offset: 5000, limit: 20 }, cursor: None, exact_total: false }),
        ("next", Window { page, cursor: Some(Cursor::After(key.clone())), exact_total: false }),
        ("prev", Window { page, cursor: Some(Cursor::Before(key)), exact_total: false }),
        ("exact total", Window { page, cursor: None, exact_total: true }),
    ]
}

/// Records every list and lookup query the API issues, labelled by what asks for it.
fn record_queries(conn: &mut dyn Conn, customer: &str) -> Result<Vec<(String, String, Vec<Value>)>, StoreError> {
    let mode = Mode::Test;
    let now = Utc::now();
    let mut recorder = Recorder { inner: conn, statements: Vec::new(), label: String::new() };
    let time_key = |text: &str| vec![Value::Int(now.timestamp_micros()), Value::Text(text.to_owned())];
    let conn: &mut Recorder = &mut recorder;

    let event_filters: Vec<(&str, EventFilter)> = vec![
        ("no filter", EventFilter::default()),
        ("event_id", EventFilter { event_id: Some("e1".into()), ..Default::default() }),
        ("customer_id", EventFilter { customer_id: Some(customer.into()), ..Default::default() }),
        ("customer_external_id", EventFilter { customer_external_id: Some("ext-1".into()), ..Default::default() }),
        ("subject", EventFilter { subject: Some("s1".into()), ..Default::default() }),
        (
            "period",
            EventFilter { period_from: Some(now - Duration::days(7)), period_to: Some(now), ..Default::default() },
        ),
        (
            "customer and period",
            EventFilter {
                customer_id: Some(customer.into()),
                period_from: Some(now - Duration::days(7)),
                period_to: Some(now),
                ..Default::default()
            },
        ),
        (
            "customer and subject",
            EventFilter { customer_id: Some(customer.into()), subject: Some("s1".into()), ..Default::default() },
        ),
        ("one event type", EventFilter { event_types: vec!["call".into()], ..Default::default() }),
        ("has_fees", EventFilter { has_fees: Some(true), ..Default::default() }),
        ("billed", EventFilter { billed: Some(true), ..Default::default() }),
        ("unbilled", EventFilter { billed: Some(false), ..Default::default() }),
        ("unbilled_reason", EventFilter { unbilled_reason: Some("no_subscription".into()), ..Default::default() }),
    ];
    for (name, filter) in &event_filters {
        for (window_name, window) in windows(time_key("e2")) {
            conn.label = format!("GET /events {name}, {window_name}");
            repo::events::list(conn, mode, filter, &window)?;
        }
    }
    conn.label = "GET /events/{id}".into();
    repo::events::get(conn, mode, "e1")?;
    repo::events::fees(conn, mode, "e1")?;

    let customer_filters: Vec<(&str, CustomerFilter)> = vec![
        ("no filter", CustomerFilter::default()),
        ("customer_id", CustomerFilter { customer_id: Some(customer.into()), ..Default::default() }),
        ("external_id", CustomerFilter { external_id: Some("ext-1".into()), ..Default::default() }),
        ("email", CustomerFilter { email: Some("Ada@Example.com".into()), ..Default::default() }),
        ("name", CustomerFilter { name: Some("ad".into()), ..Default::default() }),
        ("status active", CustomerFilter { active: Some(true), ..Default::default() }),
    ];
    for (name, filter) in &customer_filters {
        for (window_name, window) in windows(time_key(customer)) {
            conn.label = format!("GET /customers {name}, {window_name}");
            repo::customers::list(conn, mode, filter, &window)?;
        }
    }
    conn.label = "GET /customers/{id}".into();
    repo::customers::get(conn, mode, customer)?;
    repo::customers::find_by_external_id(conn, mode, "ext-1")?;

    for (window_name, window) in windows(time_key("prod_1")) {
        conn.label = format!("GET /products, {window_name}");
        repo::products::list(conn, mode, None, &window)?;
        repo::products::list(conn, mode, Some("code"), &window)?;
        conn.label = format!("GET /vendors, {window_name}");
        repo::vendors::list(conn, mode, None, &window)?;
        repo::vendors::list(conn, mode, Some("ext"), &window)?;
        conn.label = format!("GET /accounts, {window_name}");
        repo::connected_accounts::list(conn, tally_core::Environment::Test, None, &window)?;
        repo::connected_accounts::list(conn, tally_core::Environment::Test, Some("ext"), &window)?;
    }
    for (window_name, window) in windows(vec![Value::Text("USD".into())]) {
        conn.label = format!("GET /assets, {window_name}");
        repo::assets::list(conn, mode, &window)?;
    }
    for (window_name, window) in windows(vec![Value::Text("sub_1".into())]) {
        conn.label = format!("GET /products/{{id}}/subscribers, {window_name}");
        repo::subscriptions::subscribers(conn, "prod_1", &window)?;
    }
    let key = AccountKey { customer_id: customer.into(), name: "main".into(), asset: "USD".into() };
    for (window_name, window) in windows(vec![Value::Int(5)]) {
        conn.label = format!("GET /customers/{{id}}/wallet/{{account}}/transactions, {window_name}");
        repo::transactions::list_for_account(conn, customer, "main", "USD", &window)?;
    }
    let grant_filters = [
        GrantFilter::default(),
        GrantFilter { purpose: Some(Purpose::Paid), exclude_expired_at: Some(now), ..Default::default() },
        GrantFilter { effective_from: Some(now), effective_to: Some(now), ..Default::default() },
    ];
    for filter in &grant_filters {
        for (window_name, window) in windows(time_key("grt_1")) {
            conn.label = format!("GET /customers/{{id}}/wallet/{{account}}/grants, {window_name}");
            repo::wallets::list_grants(conn, &key, filter, &window)?;
        }
    }
    conn.label = "wallet reads".into();
    repo::wallets::get(conn, &key)?;
    repo::wallets::list_for_customer(conn, customer)?;
    repo::transactions::get(conn, customer, "t1")?;
    repo::topups::get(conn, mode, "top_1")?;

    let delivery_filters = [
        DeliveryFilter::default(),
        DeliveryFilter { destination_id: Some("whd_1".into()), ..Default::default() },
        DeliveryFilter { status: Some(DeliveryStatus::Pending), ..Default::default() },
    ];
    for filter in &delivery_filters {
        for cursor in [DeliveryCursor::First, DeliveryCursor::After(10), DeliveryCursor::Before(10)] {
            conn.label = format!("GET /webhooks/events {filter:?} {cursor:?}");
            repo::webhooks::list_deliveries(conn, mode, filter, cursor, 20)?;
        }
    }
    conn.label = "GET /webhooks".into();
    repo::webhooks::list_destinations(conn, mode, DestinationFilter::default())?;

    conn.label = "auto top-up claim".into();
    repo::auto_top_ups::claim_due(conn, now)?;
    conn.label = "webhook retention".into();
    conn.query(repo::webhooks::PRUNE_CANDIDATES_SQL, &[Value::Int(now.timestamp_micros()), Value::Int(200)])?;

    // The portal's spend on a calendar whose days start at half past an hour (Kolkata): the
    // rollups once, and the fees of every day's edge in one statement per table.
    conn.label = "GET /portal, spend by the customer's days".into();
    let half_past =
        now - Duration::microseconds(now.timestamp_micros().rem_euclid(3_600_000_000)) + Duration::minutes(30);
    let midnights: Vec<_> = (0..=32).map(|day| half_past - Duration::days(32 - day)).collect();
    let before = conn.statements.len();
    tally_store::ops::spend::customer_spend(conn, mode, customer, &midnights).map_err(|error| match error {
        tally_store::ops::OpError::Store(error) => error,
        other => StoreError::Corrupt(other.to_string()),
    })?;
    assert_eq!(conn.statements.len() - before, 3, "three statements however many days");
    Ok(recorder.statements)
}

/// What is wrong with the plan of `sql`, if anything.
fn plan_problems(conn: &mut dyn Conn, sql: &str, params: &[Value]) -> Result<Vec<String>, StoreError> {
    // A name prefix matches few customers, sorted in memory: the one order no index serves.
    // A lookup by a unique id (`?event_id=`) sorts at most one row.
    let sort_allowed = sql.contains("lower(name) >=") || sql.contains("e.id = $2");
    let mut problems = Vec::new();
    match conn.dialect() {
        Dialect::Sqlite => {
            for row in conn.query(&format!("EXPLAIN QUERY PLAN {sql}"), params)? {
                let detail = row.text(3)?;
                let table_scan =
                    detail.starts_with("SCAN ") && !detail.contains(" USING ") && !detail.starts_with("SCAN counted");
                let sort = detail.contains("TEMP B-TREE FOR") && detail.contains("ORDER BY");
                if table_scan || (sort && !sort_allowed) {
                    problems.push(detail);
                }
            }
        }
        Dialect::Postgres => {
            let plan: Vec<String> = conn
                .query(&format!("EXPLAIN {sql}"), params)?
                .iter()
                .map(|row| row.text(0))
                .collect::<Result<_, _>>()?;
            for line in &plan {
                let sort = line.trim_start().trim_start_matches("->").trim_start().starts_with("Sort ");
                if line.contains("Seq Scan") || (sort && !sort_allowed) {
                    problems.push(plan.join("\n"));
                    break;
                }
            }
        }
    }
    Ok(problems)
}

async fn every_list_and_lookup_query_is_served_by_an_index(app: TestApp) {
    let customer = app
        .post("/customers", json!({"name": "Ada", "external_id": "ext-1", "email": "ada@example.com"}))
        .await
        .expect(201)
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let events: Vec<_> = (1..=3)
        .map(|index| {
            json!({"id": format!("e{index}"), "event_type": "call", "subject": "s1",
                   "occurred_at": app.clock.now().to_rfc3339(), "data": {}})
        })
        .collect();
    app.post("/events", json!({"customer_id": customer, "events": events})).await.expect(204);

    let store = app.store.clone();
    let failures = tokio::task::spawn_blocking(move || {
        store.read(|conn| {
            if conn.dialect() == Dialect::Postgres {
                conn.execute("SET LOCAL enable_seqscan = off", &[])?;
                conn.execute("SET LOCAL enable_sort = off", &[])?;
            }
            let statements = record_queries(conn, &customer)?;
            assert!(statements.len() > 100, "the queries were recorded: {}", statements.len());
            let mut failures = Vec::new();
            for (label, sql, params) in statements {
                for problem in plan_problems(conn, &sql, &params)? {
                    failures.push(format!("{label}:\n  {sql}\n  {problem}"));
                }
            }
            Ok::<_, StoreError>(failures)
        })
    })
    .await
    .unwrap()
    .unwrap();
    assert!(failures.is_empty(), "{} plans read a table whole or sort it:\n{}", failures.len(), failures.join("\n\n"));
}

/// The lookup of a batch's event ids runs for every batch, on a table that only grows. Were
/// it a prepared statement kept on the connection, PostgreSQL would after five runs keep a
/// generic plan of it, costed once: chosen while the table was small or never analysed, that
/// plan read every event of the mode and filtered them by id (2 s a batch at a million
/// events) for as long as the connection lived. So it is planned for its ids every time:
/// however often it runs, it never becomes one of the session's prepared statements. (The
/// portal's lookup of event times by id is the same.) SQLite plans every statement for its
/// values.
async fn the_event_id_lookup_is_planned_for_its_ids_every_time(app: TestApp) {
    let customer =
        app.post("/customers", json!({"name": "Ada"})).await.expect(201).body["id"].as_str().unwrap().to_owned();
    for batch in 0..8 {
        let events: Vec<_> = (0..10)
            .map(|index| {
                json!({"id": format!("stored-{batch}-{index}"), "event_type": "call",
                       "occurred_at": app.clock.now().to_rfc3339(), "data": {}})
            })
            .collect();
        app.post("/events", json!({"customer_id": customer, "events": events})).await.expect(204);
    }
    let store = app.store.clone();
    let kept = tokio::task::spawn_blocking(move || {
        store.read(|conn| {
            if conn.dialect() != Dialect::Postgres {
                return Ok::<_, StoreError>(Vec::new());
            }
            let ids = ["stored-0-0", "stored-7-9", "unknown"];
            for _ in 0..8 {
                assert_eq!(repo::events::existing(conn, Mode::Test, &ids)?.len(), 2);
                let ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
                repo::portal::event_times(conn, Mode::Test, &ids)?;
            }
            let sessions_statements = conn.query("SELECT statement FROM pg_prepared_statements", &[])?;
            assert!(!sessions_statements.is_empty(), "other statements are prepared and kept");
            sessions_statements
                .iter()
                .map(|row| row.text(0))
                .filter(|statement| {
                    statement.as_ref().map_or(true, |statement| {
                        statement.contains("FROM usage_events") && statement.contains("id IN (")
                    })
                })
                .collect()
        })
    })
    .await
    .unwrap()
    .unwrap();
    assert!(kept.is_empty(), "lookups by a list of ids were kept as prepared statements: {kept:?}");
}

on_both_backends!(
    every_list_and_lookup_query_is_served_by_an_index,
    the_event_id_lookup_is_planned_for_its_ids_every_time
);
