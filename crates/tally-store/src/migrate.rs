//! Versioned schema migrations, applied in order inside one transaction and recorded in
//! `tally_migrations`. Each migration is written once; `{id}` stands for the auto-increment
//! primary key column type, the one spelling the two databases do not share.
//!
//! Every table that holds platform data carries `mode` (test or live) and, where the data
//! belongs to a customer, `customer_id`, so that customers shard cleanly by (mode, customer).

use crate::conn::{Conn, Dialect};
use crate::{params, StoreError};

pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "foundation", sql: FOUNDATION },
    Migration { version: 2, name: "ledger_postings_by_customer", sql: POSTINGS_BY_CUSTOMER },
    Migration { version: 3, name: "catalog_and_usage", sql: include_str!("migrate_catalog.sql") },
    Migration { version: 4, name: "payments_and_portal", sql: include_str!("migrate_payments.sql") },
    // Numbered after its issue (#6) so that it cannot collide with migrations added alongside it.
    Migration { version: 6, name: "webhooks", sql: include_str!("migrate_webhooks.sql") },
    Migration { version: 91, name: "top_up_payments", sql: include_str!("migrate_top_up_payments.sql") },
    Migration { version: 100, name: "connected_accounts", sql: include_str!("migrate_connected_accounts.sql") },
    Migration { version: 102, name: "account_state_token", sql: include_str!("migrate_state_token.sql") },
    Migration { version: 92, name: "usage_in_time", sql: include_str!("migrate_usage_in_time.sql") },
    Migration { version: 93, name: "subscription_rules", sql: include_str!("migrate_subscription_rules.sql") },
    Migration { version: 94, name: "job_retries", sql: include_str!("migrate_job_retries.sql") },
    Migration { version: 95, name: "ledger_verification", sql: include_str!("migrate_verification.sql") },
    Migration { version: 101, name: "unbilled_events", sql: include_str!("migrate_unbilled_events.sql") },
];

const FOUNDATION: &str = r#"
CREATE TABLE tally_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    name TEXT,
    key_hash TEXT NOT NULL UNIQUE,
    key_prefix TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE assets (
    mode TEXT NOT NULL,
    code TEXT NOT NULL,
    name TEXT NOT NULL,
    precision BIGINT NOT NULL,
    label TEXT NOT NULL,
    symbol TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (mode, code)
);

CREATE TABLE asset_rates (
    sequence {id},
    mode TEXT NOT NULL,
    asset_code TEXT NOT NULL,
    source TEXT NOT NULL,
    valid_from BIGINT NOT NULL,
    valid_to BIGINT,
    rate_kind TEXT NOT NULL,
    rate_value TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX asset_rates_by_asset ON asset_rates (mode, asset_code, source, valid_from);

CREATE TABLE customers (
    id TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    name TEXT NOT NULL,
    external_id TEXT,
    email TEXT,
    metadata TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX customers_by_external_id ON customers (mode, external_id);
CREATE INDEX customers_by_created ON customers (mode, created_at, id);

CREATE TABLE wallet_accounts (
    mode TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    name TEXT NOT NULL,
    asset TEXT NOT NULL,
    available TEXT NOT NULL,
    pending_in TEXT NOT NULL,
    pending_out TEXT NOT NULL,
    debt TEXT NOT NULL,
    next_due_at BIGINT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (customer_id, name, asset)
);
CREATE INDEX wallet_accounts_due ON wallet_accounts (next_due_at);

CREATE TABLE grants (
    id TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    account_name TEXT NOT NULL,
    asset TEXT NOT NULL,
    purpose TEXT NOT NULL,
    priority BIGINT NOT NULL,
    amount TEXT NOT NULL,
    remaining TEXT NOT NULL,
    state TEXT NOT NULL,
    is_open BIGINT NOT NULL,
    effective_at BIGINT NOT NULL,
    expires_at BIGINT,
    created_at BIGINT NOT NULL,
    transaction_id TEXT,
    cost_basis TEXT
);
CREATE INDEX grants_by_account ON grants (customer_id, asset, account_name, is_open);

CREATE TABLE transactions (
    mode TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    id TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    kind TEXT NOT NULL,
    account_name TEXT NOT NULL,
    asset TEXT NOT NULL,
    amount TEXT NOT NULL,
    description TEXT,
    metadata TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    detail TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    executed_at BIGINT,
    PRIMARY KEY (customer_id, id)
);
CREATE INDEX transactions_by_account ON transactions (customer_id, account_name, asset, sequence);
CREATE INDEX transactions_by_sequence ON transactions (customer_id, sequence);

CREATE TABLE ledger_entries (
    id {id},
    mode TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    account_name TEXT NOT NULL,
    asset TEXT NOT NULL,
    kind TEXT NOT NULL,
    transaction_id TEXT,
    grant_id TEXT,
    effective_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX ledger_entries_by_account ON ledger_entries (customer_id, account_name, asset, id);

CREATE TABLE ledger_postings (
    entry_id BIGINT NOT NULL,
    line BIGINT NOT NULL,
    account TEXT NOT NULL,
    bucket TEXT NOT NULL,
    grant_id TEXT,
    amount TEXT NOT NULL,
    PRIMARY KEY (entry_id, line)
);
"#;

/// Postings carry their entry's mode and customer, like every other customer table, so that a
/// distributed PostgreSQL (Citus) can place them on the same shard as their entry and the
/// customer's wallet (see docs/scaling.md). Existing postings take their entry's values. The
/// empty default exists only because SQLite cannot add a NOT NULL column without one;
/// `repo::ledger::append` always writes both.
const POSTINGS_BY_CUSTOMER: &str = r#"
ALTER TABLE ledger_postings ADD COLUMN mode TEXT NOT NULL DEFAULT '';
ALTER TABLE ledger_postings ADD COLUMN customer_id TEXT NOT NULL DEFAULT '';
UPDATE ledger_postings SET
    mode = (SELECT e.mode FROM ledger_entries e WHERE e.id = ledger_postings.entry_id),
    customer_id = (SELECT e.customer_id FROM ledger_entries e WHERE e.id = ledger_postings.entry_id);
"#;

/// The schema for `dialect`, with its one non-portable spelling filled in.
pub fn render(sql: &str, dialect: Dialect) -> String {
    let id = match dialect {
        Dialect::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
        Dialect::Postgres => "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    };
    sql.replace("{id}", id)
}

/// Applies what is missing. The caller holds whatever lock makes this exclusive.
pub fn apply(conn: &mut dyn Conn) -> Result<Vec<i64>, StoreError> {
    conn.execute(
        "CREATE TABLE IF NOT EXISTS tally_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        &[],
    )?;
    let applied: Vec<i64> = conn
        .query("SELECT version FROM tally_migrations", &[])?
        .iter()
        .map(|row| row.int(0))
        .collect::<Result<_, _>>()?;
    let mut newly_applied = Vec::new();
    for migration in MIGRATIONS.iter().filter(|migration| !applied.contains(&migration.version)) {
        for statement in render(migration.sql, conn.dialect()).split(';') {
            if !statement.trim().is_empty() {
                conn.execute(statement, &[])?;
            }
        }
        conn.execute(
            "INSERT INTO tally_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            params![migration.version, migration.name, chrono::Utc::now()],
        )?;
        newly_applied.push(migration.version);
    }
    if conn.query_optional("SELECT value FROM tally_meta WHERE key = 'platform_account_id'", &[])?.is_none() {
        conn.execute(
            "INSERT INTO tally_meta (key, value) VALUES ('platform_account_id', $1)",
            params![crate::ids::new_id("acc")],
        )?;
    }
    Ok(newly_applied)
}

/// The versions of this build's migrations that the database has not applied, or `None` when
/// it holds no Tally schema at all (a new, empty database). Reads only: readiness checks and
/// the administrative commands use it to refuse a database that is not ready for them.
pub fn pending(conn: &mut dyn Conn) -> Result<Option<Vec<i64>>, StoreError> {
    let exists = match conn.dialect() {
        Dialect::Sqlite => "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'tally_migrations'",
        Dialect::Postgres => "SELECT COUNT(*) FROM pg_catalog.pg_tables WHERE tablename = 'tally_migrations' AND schemaname = current_schema()",
    };
    if conn.count(exists, &[])? == 0 {
        return Ok(None);
    }
    let applied: Vec<i64> = conn
        .query("SELECT version FROM tally_migrations", &[])?
        .iter()
        .map(|row| row.int(0))
        .collect::<Result<_, _>>()?;
    Ok(Some(
        MIGRATIONS.iter().map(|migration| migration.version).filter(|version| !applied.contains(version)).collect(),
    ))
}
