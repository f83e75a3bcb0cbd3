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

    fn query_planned_for_values(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        self.statements.push((self.label.clone(), sql.to_owned(), params.to_vec()));
        self.inner.query_planned_for_values(sql, params)
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
        ("has_fees false", EventFilter { has_fees: Some(false), ..Default::default() }),
        ("billed", EventFilter { billed: Some(true), ..Default::default() }),
        (
            "customer and has_fees",
            EventFilter { customer_id: Some(customer.into()), has_fees: Some(true), ..Default::default() },
        ),
        (
            "customer and billed",
            EventFilter { customer_external_id: Some("ext-1".into()), billed: Some(true), ..Default::default() },
        ),
        (
            "subject and has_fees",
            EventFilter { subject: Some("s1".into()), has_fees: Some(true), ..Default::default() },
        ),
        (
            "one event type and billed",
            EventFilter { event_types: vec!["call".into()], billed: Some(true), ..Default::default() },
        ),
        (
            "period and has_fees",
            EventFilter {
                period_from: Some(now - Duration::days(7)),
                period_to: Some(now),
                has_fees: Some(true),
                ..Default::default()
            },
        ),
        ("unbilled and has_fees", EventFilter { billed: Some(false), has_fees: Some(false), ..Default::default() }),
        ("unbilled", EventFilter { billed: Some(false), ..Default::default() }),
        ("unbilled_reason", EventFilter { unbilled_reason: Some("no_subscription".into()), ..Default::default() }),
    ];
    for (name, filter) in &event_filters {
        for (window_name, window) in windows(time_key("e2")) {
            conn.label = format!("GET /events {name}, {window_name}");
            repo::events::list(conn, mode, filter, &window)?;
        }
    }
    conn.label = PORTAL_EVENT_TIMES.into();
    repo::portal::event_times(conn, mode, &["e1".to_owned(), "e2".to_owned(), "e3".to_owned()])?;
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
    conn.label = PORTAL_SPEND.into();
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

/// Which index condition each `GET /events` filter is read by: (the filter's name in
/// `record_queries`, a term of SQLite's `SEARCH e USING … INDEX` line, and for the filters
/// whose index is their own on PostgreSQL too, a term of its `Index Cond`). A filter checked
/// row by row on another index reads every event of the mode when few match (`has_fees=false`
/// where all are billed), and a row of the table per event counted when many do; neither
/// shows as a table scan. SQLite plans without statistics, so its plan here is its plan at any
/// size; PostgreSQL plans by statistics, which a table of three rows does not have, so there
/// only `has_fees` is checked, which no other index serves (`billed` may be read in time order
/// and filtered when PostgreSQL knows most events are billed, and by the same index when not).
const EVENT_FILTER_LEADS: &[(&str, &str, Option<&str>)] = &[
    ("customer_id", "customer_id=?", None),
    ("customer_external_id", "customer_id=?", None),
    ("subject", "subject=?", None),
    ("period", "occurred_at>?", None),
    ("customer and period", "customer_id=? AND occurred_at>?", None),
    ("customer and subject", "customer_id=?", None),
    ("one event type", "event_type=?", None),
    ("has_fees", "has_fees=?", Some("has_fees =")),
    ("has_fees false", "has_fees=?", Some("has_fees =")),
    ("billed", "has_fees=?", None),
    ("unbilled", "usage_events_unbilled", None),
    ("unbilled_reason", "unbilled_reason=?", None),
    ("customer and has_fees", "customer_id=?", None),
    ("customer and billed", "customer_id=?", None),
    ("subject and has_fees", "subject=?", None),
    ("one event type and billed", "event_type=?", None),
    ("period and has_fees", "has_fees=? AND occurred_at>?", None),
];

/// The filters whose count of matches (up to `COUNT_LIMIT`) must read their index alone on
/// SQLite, without a row of the table per match (77 ms at 2 million events before).
const EVENT_FILTERS_COUNTED_FROM_THE_INDEX: &[&str] =
    &["no filter", "period", "has_fees", "has_fees false", "billed", "period and has_fees"];

/// The portal's lookup of its usage lines' events by id. Written `mode = ? AND id IN (…)`,
/// SQLite read a covering index of every event of the mode (`SEARCH … USING COVERING INDEX
/// usage_events_by_occurred (mode=?)`: no table scan, 2.4 s at 11 million events), so its
/// plan must search the primary key by id.
const PORTAL_EVENT_TIMES: &str = "GET /portal, the usage lines' event times";

/// The portal's spend by the customer's days. The fees at each day's edge are the customer's,
/// read by its index on (customer, time) in each table ([`SPEND_LEADS`]): with `mode = ?` in
/// the condition too, SQLite (no statistics) may read the mode's index by time instead, every
/// customer's fees of the span, as the stats did (27 ms a customer at 11 million events).
const PORTAL_SPEND: &str = "GET /portal, spend by the customer's days";

/// The indexes on (customer, time) that may read each table's edge fees of [`PORTAL_SPEND`],
/// on both databases. (SQLite takes `transactions_by_kind_time`, the customer's transactions
/// other than usage fees by kind and time, over the partial `transactions_other_fees`; all
/// three are the customer's.)
const SPEND_LEADS: &[(&str, &[&str])] = &[
    ("FROM event_fees", &["event_fees_by_customer_time"]),
    ("FROM transactions", &["transactions_other_fees", "transactions_by_time", "transactions_by_kind_time"]),
];

/// The plan of `sql`, a line each: SQLite's `EXPLAIN QUERY PLAN` details, PostgreSQL's
/// `EXPLAIN` lines.
fn explained(conn: &mut dyn Conn, sql: &str, params: &[Value]) -> Result<Vec<String>, StoreError> {
    let (explain, column) = match conn.dialect() {
        Dialect::Sqlite => ("EXPLAIN QUERY PLAN", 3),
        Dialect::Postgres => ("EXPLAIN", 0),
    };
    conn.query(&format!("{explain} {sql}"), params)?.iter().map(|row| row.text(column)).collect()
}

/// For a statement of `GET /events` with a filter of [`EVENT_FILTER_LEADS`], or of
/// [`PORTAL_EVENT_TIMES`]: what is wrong with the index that leads its plan, if anything.
fn lead_problems(conn: &mut dyn Conn, label: &str, sql: &str, params: &[Value]) -> Result<Vec<String>, StoreError> {
    if label == PORTAL_SPEND {
        let Some((_, indexes)) =
            SPEND_LEADS.iter().find(|(table, _)| sql.contains(table) && sql.contains(" UNION ALL "))
        else {
            return Ok(Vec::new());
        };
        let plan = explained(conn, sql, params)?;
        // Every branch of the union (one per edge) reads the customer's index.
        let reads: Vec<&String> = plan
            .iter()
            .filter(|line| {
                line.contains("SEARCH ")
                    || line.contains("SCAN ")
                    || (line.contains(" Scan ") && !line.contains("Bitmap Heap Scan"))
            })
            .collect();
        // SQLite: `SEARCH transactions USING INDEX i (customer_id=? AND …)`; PostgreSQL:
        // `Index Scan using i on transactions`.
        let by_customer = |line: &&String| {
            indexes.iter().any(|index| {
                line.contains(&format!("INDEX {index} (customer_id=? AND"))
                    || line.contains(&format!("using {index} on "))
            })
        };
        let all_by_customer = !reads.is_empty() && reads.iter().all(by_customer);
        return Ok(if all_by_customer {
            Vec::new()
        } else {
            vec![format!("not all by the customer's index ({indexes:?}):\n{}", plan.join("\n"))]
        });
    }
    if label == PORTAL_EVENT_TIMES && conn.dialect() == Dialect::Sqlite {
        let plan = explained(conn, sql, params)?;
        let by_id = plan.iter().any(|detail| detail.starts_with("SEARCH e ") && detail.contains("(mode=? AND id=?)"));
        return Ok(if by_id { Vec::new() } else { vec![format!("not by primary key: {}", plan.join(" | "))] });
    }
    let Some(filter) = label.strip_prefix("GET /events ").and_then(|rest| rest.split_once(", ")).map(|(name, _)| name)
    else {
        return Ok(Vec::new());
    };
    if !sql.contains("FROM usage_events e WHERE") {
        return Ok(Vec::new());
    }
    let lead = EVENT_FILTER_LEADS.iter().find(|(name, _, _)| *name == filter);
    let must_cover = EVENT_FILTERS_COUNTED_FROM_THE_INDEX.contains(&filter) && sql.contains(") counted");
    let mut problems = Vec::new();
    match conn.dialect() {
        Dialect::Sqlite => {
            let plan = explained(conn, sql, params)?;
            let searches: Vec<&String> = plan.iter().filter(|detail| detail.starts_with("SEARCH e ")).collect();
            if let Some((_, term, _)) = lead {
                if !searches.iter().any(|detail| detail.contains(term)) {
                    problems.push(format!("not led by `{term}`: {}", plan.join(" | ")));
                }
            }
            if must_cover && !searches.iter().any(|detail| detail.contains("COVERING INDEX")) {
                problems.push(format!("counted from the table, not its index alone: {}", plan.join(" | ")));
            }
        }
        Dialect::Postgres => {
            let plan = explained(conn, sql, params)?;
            if let Some((_, _, Some(term))) = lead {
                // The scan of `usage_events e` and its `Index Cond` on the lines after it.
                let led = plan.iter().enumerate().any(|(index, line)| {
                    line.contains(" on usage_events e")
                        && (line.contains(term)
                            || plan[index + 1..]
                                .iter()
                                .take_while(|next| !next.contains("->"))
                                .any(|next| next.contains("Index Cond:") && next.contains(term)))
                });
                if !led {
                    problems.push(format!("not led by `{term}`:\n{}", plan.join("\n")));
                }
            }
        }
    }
    Ok(problems)
}

/// What is wrong with the plan of `sql`, if anything.
fn plan_problems(conn: &mut dyn Conn, sql: &str, params: &[Value]) -> Result<Vec<String>, StoreError> {
    // A name prefix matches few customers, sorted in memory: the one order no index serves.
    // A lookup by a unique id (`?event_id=`) sorts at most one row.
    let sort_allowed = sql.contains("lower(name) >=") || sql.contains("e.id = $2");
    let mut problems = Vec::new();
    match conn.dialect() {
        Dialect::Sqlite => {
            for detail in explained(conn, sql, params)? {
                // A scan of the ids a query was given (`VALUES`) reads no table.
                let table_scan = detail.starts_with("SCAN ")
                    && !detail.contains(" USING ")
                    && !detail.starts_with("SCAN counted")
                    && !detail.contains("VALUES CLAUSE")
                    && !detail.contains("CONSTANT ROWS");
                let sort = detail.contains("TEMP B-TREE FOR") && detail.contains("ORDER BY");
                if table_scan || (sort && !sort_allowed) {
                    problems.push(detail);
                }
            }
        }
        Dialect::Postgres => {
            let plan = explained(conn, sql, params)?;
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
                let mut problems = plan_problems(conn, &sql, &params)?;
                problems.extend(lead_problems(conn, &label, &sql, &params)?);
                for problem in problems {
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

/// Stores `batches` batches of `per_batch` events, `stored-{batch}-{index}`, of a new customer.
async fn store_events_of_a_new_customer(app: &TestApp, batches: usize, per_batch: usize) {
    let customer =
        app.post("/customers", json!({"name": "Ada"})).await.expect(201).body["id"].as_str().unwrap().to_owned();
    for batch in 0..batches {
        let events: Vec<_> = (0..per_batch)
            .map(|index| {
                json!({"id": format!("stored-{batch}-{index}"), "event_type": "call",
                       "occurred_at": app.clock.now().to_rfc3339(), "data": {}})
            })
            .collect();
        app.post("/events", json!({"customer_id": customer, "events": events})).await.expect(204);
    }
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
    store_events_of_a_new_customer(&app, 8, 10).await;
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
                        (statement.contains("FROM usage_events") && statement.contains("id IN ("))
                            || (statement.contains("FROM (VALUES") && statement.contains("usage_events"))
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

/// Every batch looks its event ids up, as the portal looks up the times of the events its
/// fees name, and each must read every id by the primary key (mode, id) whatever the
/// database's statistics say. Before, PostgreSQL with statistics in which the
/// mode was rare or absent (a table never analysed; `live` events after many `test` ones, as
/// here) read the whole mode, once its events outnumbered the ids, and filtered them by id.
async fn the_event_id_lookup_reads_each_id_by_its_key(app: TestApp) {
    store_events_of_a_new_customer(&app, 20, 100).await;
    let store = app.store.clone();
    let failures = tokio::task::spawn_blocking(move || {
        store.read(|conn| {
            if conn.dialect() == Dialect::Postgres {
                conn.execute("ANALYZE usage_events", &[])?;
            }
            let owned: Vec<String> = (0..100).map(|index| format!("stored-{}-{index}", index % 20)).collect();
            let ids: Vec<&str> = owned.iter().map(String::as_str).collect();
            let mut failures = Vec::new();
            for mode in [Mode::Test, Mode::Live] {
                let mut recorder = Recorder { inner: conn, statements: Vec::new(), label: String::new() };
                let found = repo::events::existing(&mut recorder, mode, &ids)?;
                assert_eq!(found.len(), if mode == Mode::Test { 100 } else { 0 });
                let times = repo::portal::event_times(&mut recorder, mode, &owned)?;
                assert_eq!(times.len(), if mode == Mode::Test { 100 } else { 0 });
                for (_, sql, params) in recorder.statements {
                    let plan = explained(conn, &sql, &params)?;
                    if !reads_events_by_key(conn.dialect(), &plan) {
                        failures.push(format!("{mode:?}:\n{}", plan.join("\n")));
                    }
                }
            }
            Ok::<_, StoreError>(failures)
        })
    })
    .await
    .unwrap()
    .unwrap();
    assert!(failures.is_empty(), "event ids looked up otherwise than by key:\n{}", failures.join("\n\n"));
}

/// Whether every read of `usage_events e` in `plan` searches the primary key for a mode and one id.
fn reads_events_by_key(dialect: Dialect, plan: &[String]) -> bool {
    match dialect {
        Dialect::Sqlite => {
            let reads: Vec<&String> = plan.iter().filter(|detail| detail.contains(" e ")).collect();
            !reads.is_empty()
                && reads.iter().all(|detail| detail.starts_with("SEARCH e ") && detail.contains("(mode=? AND id=?)"))
        }
        Dialect::Postgres => {
            // Each scan of `e` and the first `Index Cond` under it: its own, or for a bitmap
            // heap scan its bitmap index scan's (no other node comes between).
            let index_cond = |scan: usize| {
                plan[scan + 1..]
                    .iter()
                    .take_while(|line| !line.contains("->") || line.contains("Bitmap Index Scan"))
                    .find(|line| line.contains("Index Cond:"))
            };
            let scans: Vec<usize> =
                (0..plan.len()).filter(|&index| plan[index].contains(" on usage_events e")).collect();
            !scans.is_empty()
                && scans.iter().all(|&scan| {
                    index_cond(scan).is_some_and(|line| line.contains("mode = ") && line.contains("(id = "))
                })
        }
    }
}

on_both_backends!(
    every_list_and_lookup_query_is_served_by_an_index,
    the_event_id_lookup_is_planned_for_its_ids_every_time,
    the_event_id_lookup_reads_each_id_by_its_key
);
