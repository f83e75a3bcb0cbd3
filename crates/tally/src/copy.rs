//! `tally copy-to-postgres URL`: moves a Tally store from the embedded SQLite database to an
//! empty PostgreSQL database, every row of every table, so a platform that started on one file
//! can grow onto PostgreSQL without losing a cent or an id.
//!
//! The rules (the tests below check each but the snapshot, which is SQLite's own guarantee):
//! - The source is read in one read transaction: one snapshot, even while a server writes (in
//!   WAL mode a reader never blocks the writer). Rows written after it are not copied, so stop
//!   the servers first for a move.
//! - The target is written in one transaction: it holds the whole store or, after any error,
//!   nothing of it. It must hold no rows but those its own migrations made (the migration list
//!   and the platform's id in `tally_meta`, which the source's replaces), and its tables are
//!   locked before that is checked, so nothing written beside the copy can be wiped by it. A
//!   database without Tally's schema is migrated first only when it holds no table at all.
//! - Source and target must be at the same migrations, with the same tables and columns, so a
//!   table is copied only into one of the same shape.
//! - Values go over unchanged: both backends store amounts as text and instants as integers.
//!   A value of another kind (a float, a blob) stops the copy, naming its table and column.
//! - Ids made by the database continue after the largest copied one (and after any SQLite
//!   handed out and then lost with a deleted row), so none is ever given twice.
//!
//! It is fast on large stores because PostgreSQL's bulk load rules apply: secondary indexes are
//! dropped and built again after the rows are in (one sorted build instead of an insertion per
//! row), and each table is emptied in the transaction that fills it, so `COPY ... FREEZE`
//! writes its rows already frozen and visible to all (no VACUUM needed before index-only scans).

use anyhow::{anyhow, bail, Context};
use rusqlite::types::ValueRef;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::{Duration, Instant};
use tally_store::DatabaseUrl;

/// What a copy copied: rows per table, in the order copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    pub tables: Vec<(String, u64)>,
    pub elapsed: Duration,
}

impl CopyReport {
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|(_, rows)| rows).sum()
    }
}

/// Tables whose rows the target's migrations made: replaced by the source's.
const MADE_BY_MIGRATIONS: &[&str] = &["tally_meta"];
/// Not copied: each database keeps the record of its own migrations (their checksums differ
/// per dialect); the two lists are compared instead.
const MIGRATIONS_TABLE: &str = "tally_migrations";

/// Copies the SQLite store at `sqlite_url` into the PostgreSQL database at `postgres_url`
/// (migrated first if it is new), printing a line per table on `progress`.
pub fn copy_to_postgres(sqlite_url: &str, postgres_url: &str, progress: &mut dyn Write) -> anyhow::Result<CopyReport> {
    let started = Instant::now();
    let DatabaseUrl::Sqlite(source_path) = DatabaseUrl::parse(sqlite_url)? else {
        bail!("tally copy-to-postgres reads a SQLite database: point --database at it");
    };
    if !matches!(DatabaseUrl::parse(postgres_url)?, DatabaseUrl::Postgres(_)) {
        bail!("tally copy-to-postgres writes to PostgreSQL: give a postgres:// URL");
    }
    // Refuses a source that is missing, not Tally's, or behind this build's migrations.
    drop(crate::open_existing_store(sqlite_url)?);
    let mut target = connect(postgres_url)?;
    prepare_target(&mut target, postgres_url)?;
    let mut source = crate::backup::open_existing(&source_path)?;
    let source_tx = source.transaction()?;
    let source_tables = sqlite_tables(&source_tx)?;
    let mut target_tx = target.transaction()?;
    let target_tables = postgres_tables(&mut target_tx)?;
    lock_all(&mut target_tx, &target_tables)?;
    same_migrations(&source_tx, &mut target_tx)?;
    same_shapes(&source_tables, &target_tables)?;
    refuse_rows(&mut target_tx, &target_tables)?;
    target_tx.batch_execute("SET LOCAL maintenance_work_mem = '512MB'")?;
    let indexes = drop_secondary_indexes(&mut target_tx)?;
    let mut report = CopyReport { tables: Vec::new(), elapsed: Duration::ZERO };
    for (table, columns) in &target_tables {
        let table_started = Instant::now();
        let rows = copy_table(&source_tx, &mut target_tx, table, columns)?;
        writeln!(progress, "copied {table}: {rows} rows in {:.1?}", table_started.elapsed())?;
        report.tables.push((table.clone(), rows));
    }
    let indexes_started = Instant::now();
    for definition in &indexes {
        target_tx.batch_execute(definition).with_context(|| format!("cannot build again: {definition}"))?;
    }
    writeln!(progress, "built {} indexes again in {:.1?}", indexes.len(), indexes_started.elapsed())?;
    continue_identities(&source_tx, &mut target_tx)?;
    target_tx.commit().context("cannot commit the copy")?;
    source_tx.finish()?;
    // The planner's statistics, which a bulk load leaves empty (and autovacuum may be off).
    // The rows are in whatever happens here: a failure is reported, not returned.
    if let Err(error) = target.batch_execute("ANALYZE") {
        writeln!(progress, "the copy is committed, but ANALYZE failed ({error}): run it on the database")?;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

fn connect(postgres_url: &str) -> anyhow::Result<postgres::Client> {
    let connector = tally_store::postgres_tls::connector(postgres_url)?;
    connector.connect().context("cannot connect to the PostgreSQL database")
}

/// Migrates a database that holds no table at all (a new one); requires one with Tally's
/// schema to be at this build's migrations, and refuses anything else, so that a mistyped
/// URL never leaves Tally's tables in another application's database.
fn prepare_target(target: &mut postgres::Client, postgres_url: &str) -> anyhow::Result<()> {
    let tables: i64 = target
        .query_one("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema()", &[])?
        .get(0);
    let tally: bool = target
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.tables
                            WHERE table_schema = current_schema() AND table_name = $1)",
            &[&MIGRATIONS_TABLE],
        )?
        .get(0);
    match (tables, tally) {
        (0, _) => drop(crate::open_store(postgres_url)?),
        (_, true) => drop(crate::open_existing_store(postgres_url)?),
        (_, false) => bail!("the PostgreSQL database holds {tables} tables but not Tally's: copy into a new database"),
    }
    Ok(())
}

/// Locks every table for the whole copy: nothing can be written beside it (and then wiped).
fn lock_all(target: &mut postgres::Transaction, tables: &Tables) -> anyhow::Result<()> {
    let names = tables.keys().map(|table| quoted(table)).collect::<Vec<_>>().join(", ");
    target.batch_execute(&format!("LOCK TABLE {names} IN ACCESS EXCLUSIVE MODE"))?;
    Ok(())
}

/// Each table's columns, by name.
type Tables = BTreeMap<String, Vec<String>>;

fn sqlite_tables(source: &rusqlite::Connection) -> anyhow::Result<Tables> {
    let names: Vec<String> = source
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let mut tables = Tables::new();
    for name in names.into_iter().filter(|name| name != MIGRATIONS_TABLE) {
        let columns: Vec<String> = source
            .prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")?
            .query_map([&name], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        tables.insert(name, columns);
    }
    Ok(tables)
}

fn postgres_tables(target: &mut postgres::Transaction) -> anyhow::Result<Tables> {
    let mut tables = Tables::new();
    let rows = target.query(
        "SELECT c.table_name::text, c.column_name::text FROM information_schema.columns c
         JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
         WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE' AND c.table_name <> $1
         ORDER BY c.table_name, c.ordinal_position",
        &[&MIGRATIONS_TABLE],
    )?;
    for row in rows {
        tables.entry(row.get(0)).or_default().push(row.get(1));
    }
    Ok(tables)
}

fn same_migrations(source: &rusqlite::Connection, target: &mut postgres::Transaction) -> anyhow::Result<()> {
    let source_versions: BTreeSet<i64> = source
        .prepare("SELECT version FROM tally_migrations")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let target_versions: BTreeSet<i64> =
        target.query("SELECT version FROM tally_migrations", &[])?.iter().map(|row| row.get(0)).collect();
    if source_versions != target_versions {
        let only =
            |left: &BTreeSet<i64>, right: &BTreeSet<i64>| format!("{:?}", left.difference(right).collect::<Vec<_>>());
        bail!(
            "the two databases are at different migrations (only the SQLite one has {}, only the PostgreSQL one \
             has {}): run the same Tally version's `tally migrate` on both",
            only(&source_versions, &target_versions),
            only(&target_versions, &source_versions)
        );
    }
    Ok(())
}

fn same_shapes(source: &Tables, target: &Tables) -> anyhow::Result<()> {
    for (table, columns) in target {
        let Some(source_columns) = source.get(table) else {
            bail!("the SQLite database has no table {table}");
        };
        let wanted: BTreeSet<&String> = columns.iter().collect();
        let found: BTreeSet<&String> = source_columns.iter().collect();
        if wanted != found {
            bail!("table {table} has columns {source_columns:?} in SQLite but {columns:?} in PostgreSQL");
        }
    }
    if let Some(extra) = source.keys().find(|table| !target.contains_key(*table)) {
        bail!("the PostgreSQL database has no table {extra}");
    }
    Ok(())
}

/// Refuses a target that holds anything but what its migrations made: a copy never merges.
fn refuse_rows(target: &mut postgres::Transaction, tables: &Tables) -> anyhow::Result<()> {
    for table in tables.keys().filter(|table| !MADE_BY_MIGRATIONS.contains(&table.as_str())) {
        let occupied: bool = target.query_one(&format!("SELECT EXISTS (SELECT 1 FROM {})", quoted(table)), &[])?.get(0);
        if occupied {
            bail!("the PostgreSQL database is not empty (table {table} has rows): copy into a new database");
        }
    }
    Ok(())
}

/// Drops every index that backs no constraint, and returns the statements that make them again.
fn drop_secondary_indexes(target: &mut postgres::Transaction) -> anyhow::Result<Vec<String>> {
    let rows = target.query(
        "SELECT i.relname::text, pg_get_indexdef(i.oid) FROM pg_index x
         JOIN pg_class i ON i.oid = x.indexrelid
         JOIN pg_class t ON t.oid = x.indrelid
         JOIN pg_namespace n ON n.oid = t.relnamespace
         WHERE n.nspname = current_schema()
           AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)
         ORDER BY 1",
        &[],
    )?;
    let mut definitions = Vec::with_capacity(rows.len());
    for row in rows {
        let name: String = row.get(0);
        target.batch_execute(&format!("DROP INDEX {}", quoted(&name)))?;
        definitions.push(row.get(1));
    }
    Ok(definitions)
}

fn copy_table(
    source: &rusqlite::Connection,
    target: &mut postgres::Transaction,
    table: &str,
    columns: &[String],
) -> anyhow::Result<u64> {
    let column_list = columns.iter().map(|column| quoted(column)).collect::<Vec<_>>().join(", ");
    // Emptied in this transaction (it held at most what the migrations made), so COPY may
    // write its rows frozen.
    target.batch_execute(&format!("TRUNCATE {}", quoted(table)))?;
    let writer = target.copy_in(&format!("COPY {} ({column_list}) FROM STDIN WITH (FREEZE)", quoted(table)))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, writer);
    let mut statement = source.prepare(&format!("SELECT {column_list} FROM {}", quoted(table)))?;
    let mut rows = statement.query([])?;
    let mut line = Vec::with_capacity(1024);
    while let Some(row) = rows.next()? {
        line.clear();
        for (index, column) in columns.iter().enumerate() {
            if index > 0 {
                line.push(b'\t');
            }
            write_value(&mut line, row.get_ref(index)?).map_err(|kind| {
                anyhow!("{table}.{column} holds a {kind}, which no Tally column stores: the copy stopped, nothing was written")
            })?;
        }
        line.push(b'\n');
        out.write_all(&line)?;
    }
    let writer = out.into_inner().map_err(|error| anyhow!("cannot send the rows of {table}: {}", error.error()))?;
    writer.finish().with_context(|| format!("PostgreSQL refused the rows of {table}"))
}

/// One value in `COPY`'s text format.
fn write_value(line: &mut Vec<u8>, value: ValueRef) -> Result<(), &'static str> {
    match value {
        ValueRef::Null => line.extend_from_slice(b"\\N"),
        ValueRef::Integer(integer) => line.extend_from_slice(integer.to_string().as_bytes()),
        ValueRef::Text(text) => {
            for &byte in text {
                match byte {
                    b'\\' => line.extend_from_slice(b"\\\\"),
                    b'\n' => line.extend_from_slice(b"\\n"),
                    b'\r' => line.extend_from_slice(b"\\r"),
                    b'\t' => line.extend_from_slice(b"\\t"),
                    other => line.push(other),
                }
            }
        }
        ValueRef::Real(_) => return Err("floating-point number"),
        ValueRef::Blob(_) => return Err("blob"),
    }
    Ok(())
}

/// Makes each identity column continue after the largest id the SQLite database gave (its
/// `sqlite_sequence` remembers ids whose rows were deleted since).
fn continue_identities(source: &rusqlite::Connection, target: &mut postgres::Transaction) -> anyhow::Result<()> {
    let identities = target.query(
        "SELECT table_name::text, column_name::text FROM information_schema.columns
         WHERE table_schema = current_schema() AND is_identity = 'YES'",
        &[],
    )?;
    for row in identities {
        let (table, column): (String, String) = (row.get(0), row.get(1));
        let largest: Option<i64> =
            source
                .query_row(&format!("SELECT MAX({}) FROM {}", quoted(&column), quoted(&table)), [], |row| row.get(0))?;
        let given: Option<i64> = source
            .query_row("SELECT seq FROM sqlite_sequence WHERE name = ?1", [&table], |row| row.get(0))
            .or_else(|error| match error {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                other => Err(other),
            })?;
        let next = largest.max(given).unwrap_or(0) + 1;
        target.batch_execute(&format!(
            "ALTER TABLE {} ALTER COLUMN {} RESTART WITH {next}",
            quoted(&table),
            quoted(&column)
        ))?;
    }
    Ok(())
}

/// An identifier quoted for SQL (both dialects).
fn quoted(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_postgres::with_database;
    use tally_core::Mode;

    /// A SQLite store with rows in most tables: the demo's week (top-ups, usage, webhooks, a
    /// portal session, ...) and a small seed (many customers, subscriptions, grants, events).
    fn filled_sqlite_store(directory: &std::path::Path) -> String {
        let url = format!("sqlite://{}", directory.join("source.db").display());
        let store = crate::open_store(&url).unwrap();
        crate::demo::run(store, &url, "http://127.0.0.1:1", "Copy test").unwrap();
        crate::seed::run(&crate::seed::SeedArgs { events: 300, customers: 40, days: 8, threads: Some(1) }, &url)
            .unwrap();
        add_costs_webhooks_and_awkward_text(&url);
        url
    }

    /// A webhook destination (so fees make webhook events and deliveries), a vendor and an
    /// event with a cost (costs and their rollups), and texts holding the characters `COPY`'s
    /// text format must escape: a tab, a line break, a carriage return and a backslash.
    fn add_costs_webhooks_and_awkward_text(url: &str) {
        use tally_store::ops::{events, vendors, webhooks, OpError};
        let store = crate::open_existing_store(url).unwrap();
        let catalog = tally_http::catalog::CatalogCache::default();
        let now = chrono::Utc::now();
        let event: tally_http::routes::events::UsageEventIn = serde_json::from_value(serde_json::json!({
            "id": "copy-cost-1",
            "event_type": "image_generated",
            "occurred_at": now,
            "subject": "back\\\\slash",
            "description": "a \\ backslash, \"quotes\" and a \\N that is no NULL",
            "costs": [{ "id": "cost-1", "vendor_external_id": "model-host", "category": "gpu", "amount": 0.0125 }],
        }))
        .unwrap();
        let batch = tally_http::routes::events::parse_events(&[event], Some(now)).unwrap();
        store
            .write(|conn| -> Result<(), OpError> {
                let destination = webhooks::NewDestination {
                    url: "https://hooks.example/tally".into(),
                    topics: vec!["transaction.completed".into()],
                    connect: false,
                };
                webhooks::create(conn, Mode::Test, &destination, now)?;
                vendors::create(conn, Mode::Test, "Model host", Some("model-host"), now)?;
                let customer = conn
                    .query_one("SELECT id FROM customers WHERE name LIKE 'Seed customer%' ORDER BY id LIMIT 1", &[])?
                    .text(0)?;
                events::ingest(conn, Mode::Test, &events::CustomerRef::Id(customer.clone()), &batch, &catalog, now)?;
                // The API refuses control characters in names; a store may hold them anyway.
                conn.execute(
                    "UPDATE customers SET name = $1 WHERE id = $2",
                    tally_store::params!["a\ttab, a\nline break, a\rreturn, a \\ backslash and \\N", customer],
                )?;
                Ok(())
            })
            .unwrap();
    }

    /// Every row of `table`, each value as text (None for NULL), sorted.
    fn sqlite_rows(url: &str, table: &str, columns: &[String]) -> Vec<Vec<Option<String>>> {
        let DatabaseUrl::Sqlite(path) = DatabaseUrl::parse(url).unwrap() else { unreachable!() };
        let source = rusqlite::Connection::open(path).unwrap();
        let list = columns.iter().map(|column| quoted(column)).collect::<Vec<_>>().join(", ");
        let mut statement = source.prepare(&format!("SELECT {list} FROM {}", quoted(table))).unwrap();
        let mut rows: Vec<Vec<Option<String>>> = statement
            .query_map([], |row| {
                (0..columns.len())
                    .map(|index| {
                        Ok(match row.get_ref(index)? {
                            ValueRef::Null => None,
                            ValueRef::Integer(integer) => Some(integer.to_string()),
                            ValueRef::Text(text) => Some(String::from_utf8(text.to_vec()).unwrap()),
                            other => panic!("{table}: {other:?}"),
                        })
                    })
                    .collect()
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        rows.sort();
        rows
    }

    fn postgres_rows(client: &mut postgres::Client, table: &str, columns: &[String]) -> Vec<Vec<Option<String>>> {
        let list = columns.iter().map(|column| format!("{}::text", quoted(column))).collect::<Vec<_>>().join(", ");
        let mut rows: Vec<Vec<Option<String>>> = client
            .query(&format!("SELECT {list} FROM {}", quoted(table)), &[])
            .unwrap()
            .iter()
            .map(|row| (0..columns.len()).map(|index| row.get(index)).collect())
            .collect();
        rows.sort();
        rows
    }

    fn index_definitions(client: &mut postgres::Client) -> Vec<(String, String)> {
        let rows = client
            .query(
                "SELECT indexname::text, indexdef FROM pg_indexes WHERE schemaname = current_schema() ORDER BY 1",
                &[],
            )
            .unwrap();
        assert!(rows.len() > 50, "{} indexes", rows.len());
        rows.iter().map(|row| (row.get(0), row.get(1))).collect()
    }

    fn identity_next_values(client: &mut postgres::Client) -> Vec<(String, i64)> {
        let identities = client
            .query(
                "SELECT table_name::text, column_name::text FROM information_schema.columns
                 WHERE table_schema = current_schema() AND is_identity = 'YES' ORDER BY 1",
                &[],
            )
            .unwrap();
        identities
            .iter()
            .map(|row| {
                let (table, column): (String, String) = (row.get(0), row.get(1));
                let next: i64 = client
                    .query_one("SELECT nextval(pg_get_serial_sequence($1, $2))", &[&table, &column])
                    .unwrap()
                    .get(0);
                (table, next)
            })
            .collect()
    }

    /// The rule of a move: every table holds in PostgreSQL exactly the rows it held in SQLite,
    /// value for value; the books check out there; and ids continue after the copied ones.
    #[test]
    fn a_copy_holds_every_row_of_every_table_unchanged_and_ids_continue_after_them() {
        let directory = tempfile::tempdir().unwrap();
        let source = filled_sqlite_store(directory.path());
        // SQLite remembers an id it gave even after its row is deleted; the copy must too.
        let DatabaseUrl::Sqlite(path) = DatabaseUrl::parse(&source).unwrap() else { unreachable!() };
        let largest_history: i64 = rusqlite::Connection::open(&path)
            .unwrap()
            .query_row("SELECT MAX(sequence) FROM subscription_history", [], |row| row.get(0))
            .unwrap();
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute("DELETE FROM subscription_history WHERE sequence = ?1", [largest_history])
            .unwrap();
        with_database("tally_copy", |target| {
            drop(crate::open_store(target).unwrap());
            let mut client = connect(target).unwrap();
            let migrated_indexes = index_definitions(&mut client);
            let mut progress = Vec::new();
            let report = copy_to_postgres(&source, target, &mut progress).unwrap();
            assert_eq!(index_definitions(&mut client), migrated_indexes, "the indexes after the copy");
            let mut empty = Vec::new();
            let mut tables = {
                let mut tx = client.transaction().unwrap();
                postgres_tables(&mut tx).unwrap()
            };
            for (table, copied) in &report.tables {
                let columns = tables.remove(table).unwrap();
                let expected = sqlite_rows(&source, table, &columns);
                assert_eq!(*copied, expected.len() as u64, "{table}");
                assert_eq!(postgres_rows(&mut client, table, &columns), expected, "{table}");
                if expected.is_empty() {
                    empty.push(table.clone());
                }
            }
            assert!(empty.len() <= 9, "{} of {} tables were empty: {empty:?}", empty.len(), report.tables.len());
            for (table, next) in identity_next_values(&mut client) {
                let largest: i64 = client
                    .query_one(
                        &format!(
                            "SELECT COALESCE(MAX({}), 0) FROM {}",
                            if table == "ledger_entries" { "id" } else { "sequence" },
                            quoted(&table)
                        ),
                        &[],
                    )
                    .unwrap()
                    .get(0);
                assert!(next > largest, "{table}: next id {next} is not after {largest}");
                if table == "subscription_history" {
                    assert!(next > largest_history, "the deleted id {largest_history} would be given again");
                }
            }
            let store = crate::open_existing_store(target).unwrap();
            let on_postgres = store.read(tally_store::ops::ledger::verify).unwrap();
            assert!(on_postgres.is_clean(), "{:?}", on_postgres.problems);
            let on_sqlite =
                crate::open_existing_store(&source).unwrap().read(tally_store::ops::ledger::verify).unwrap();
            assert_eq!(
                (on_postgres.entries, on_postgres.postings, on_postgres.events, on_postgres.accounts),
                (on_sqlite.entries, on_sqlite.postings, on_sqlite.events, on_sqlite.accounts)
            );
            assert_eq!(on_postgres.system_balances, on_sqlite.system_balances);
        });
    }

    /// A copy never merges into a database that holds data, and a copy that fails half-way
    /// leaves nothing behind.
    #[test]
    fn a_copy_is_all_or_nothing_and_never_merges() {
        let directory = tempfile::tempdir().unwrap();
        let source = filled_sqlite_store(directory.path());
        with_database("tally_copy_refused", |target| {
            let DatabaseUrl::Sqlite(path) = DatabaseUrl::parse(&source).unwrap() else { unreachable!() };
            let mut client = connect(target).unwrap();
            // Another application's database (a mistyped URL) is neither migrated nor filled.
            client.batch_execute("CREATE TABLE other_app (id BIGINT)").unwrap();
            let error = copy_to_postgres(&source, target, &mut Vec::new()).unwrap_err().to_string();
            assert!(error.contains("holds 1 tables but not Tally's"), "{error}");
            let tables: i64 = client
                .query_one("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema()", &[])
                .unwrap()
                .get(0);
            assert_eq!(tables, 1, "the copy left tables of its own in another application's database");
            client.batch_execute("DROP TABLE other_app").unwrap();

            // A table of another shape is never copied into.
            let sqlite = rusqlite::Connection::open(&path).unwrap();
            sqlite.execute_batch("ALTER TABLE customers ADD COLUMN nickname TEXT").unwrap();
            let error = copy_to_postgres(&source, target, &mut Vec::new()).unwrap_err().to_string();
            assert!(error.contains("table customers has columns"), "{error}");
            sqlite.execute_batch("ALTER TABLE customers DROP COLUMN nickname").unwrap();

            // A value no Tally column stores, in a table copied after others.
            let last_event = "(SELECT MAX(rowid) FROM usage_events)";
            let created_at: i64 = sqlite
                .query_row(&format!("SELECT created_at FROM usage_events WHERE rowid = {last_event}"), [], |row| {
                    row.get(0)
                })
                .unwrap();
            sqlite
                .execute(&format!("UPDATE usage_events SET created_at = 1.5 WHERE rowid = {last_event}"), [])
                .unwrap();
            let error = copy_to_postgres(&source, target, &mut Vec::new()).unwrap_err().to_string();
            assert!(error.contains("usage_events.created_at holds a floating-point number"), "{error}");
            let customers: i64 = client.query_one("SELECT COUNT(*) FROM customers", &[]).unwrap().get(0);
            assert_eq!(customers, 0, "the failed copy left rows behind");

            sqlite
                .execute("UPDATE usage_events SET created_at = ?1 WHERE typeof(created_at) = 'real'", [created_at])
                .unwrap();
            let copied = copy_to_postgres(&source, target, &mut Vec::new()).unwrap();
            let error = copy_to_postgres(&source, target, &mut Vec::new()).unwrap_err().to_string();
            assert!(error.contains("is not empty"), "{error}");
            let events: i64 = client.query_one("SELECT COUNT(*) FROM usage_events", &[]).unwrap().get(0);
            let copied_events = copied.tables.iter().find(|(table, _)| table == "usage_events").unwrap().1;
            assert_eq!(events as u64, copied_events);
        });
    }
}
