//! Versioned schema migrations, applied in order inside one transaction and recorded in
//! `tally_migrations` with a checksum of their text. Each migration is written once; `{id}`
//! stands for the auto-increment primary key column type, the one spelling the two databases
//! do not share. A migration changed after a database applied it is refused (its checksum no
//! longer matches), as is a database that applied migrations this build does not know (a newer
//! Tally upgraded it): both mean the schema is not the one this build was written for.
//!
//! Why not refinery or sqlx's migrator: both apply one SQL text per database, while Tally's
//! migrations are one text rendered per dialect and run through the `Conn` trait, inside the
//! advisory lock that lets several servers start at once on PostgreSQL. What they add over
//! this file, checksums and a status report, is here (`status`, `tally migrate --status`).
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
    Migration { version: 112, name: "revenue_recognition", sql: include_str!("migrate_revenue.sql") },
    Migration { version: 120, name: "list_indexes", sql: include_str!("migrate_list_indexes.sql") },
    Migration { version: 121, name: "auto_top_up_due", sql: include_str!("migrate_auto_top_up_due.sql") },
    Migration { version: 130, name: "portal_activity", sql: include_str!("migrate_portal_activity.sql") },
    Migration { version: 133, name: "asset_top_up", sql: include_str!("migrate_asset_top_up.sql") },
    Migration { version: 134, name: "saved_cards", sql: include_str!("migrate_saved_cards.sql") },
    Migration { version: 140, name: "card_expiry", sql: include_str!("migrate_card_expiry.sql") },
    Migration { version: 160, name: "hot_path_indexes", sql: include_str!("migrate_hot_path_indexes.sql") },
    Migration { version: ROLLUPS_VERSION, name: "rollups", sql: include_str!("migrate_rollups.sql") },
    Migration { version: 110, name: "holds", sql: include_str!("migrate_holds.sql") },
    Migration { version: 170, name: "event_index_diet", sql: include_str!("migrate_event_index_diet.sql") },
    Migration { version: 180, name: "event_fee_filters", sql: include_str!("migrate_event_fee_filters.sql") },
    Migration { version: 190, name: "activity_by_kind", sql: include_str!("migrate_activity_by_kind.sql") },
];

/// The migration that makes the rollups, which `apply` then fills from the fees stored.
const ROLLUPS_VERSION: i64 = 125;

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

/// The checksum a migration is recorded with: SHA-256 of its text as written (before the
/// dialect is filled in, so both databases record the same value).
pub fn checksum(migration: &Migration) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(migration.sql.as_bytes()))
}

/// What the database records of one migration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub version: i64,
    pub name: String,
    pub applied_at: chrono::DateTime<chrono::Utc>,
    /// `None` for a migration applied before Tally recorded checksums.
    pub checksum: Option<String>,
}

/// Where one migration stands in a database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MigrationState {
    Applied {
        at: chrono::DateTime<chrono::Utc>,
    },
    Pending,
    /// Applied from a different text than this build's.
    Changed {
        at: chrono::DateTime<chrono::Utc>,
        recorded: String,
    },
    /// Applied by another build; this one does not know it.
    Unknown {
        at: chrono::DateTime<chrono::Utc>,
    },
}

/// One line of `tally migrate --status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationStatus {
    pub version: i64,
    pub name: String,
    pub state: MigrationState,
}

fn has_checksum_column(conn: &mut dyn Conn) -> Result<bool, StoreError> {
    let sql = match conn.dialect() {
        Dialect::Sqlite => "SELECT COUNT(*) FROM pragma_table_info('tally_migrations') WHERE name = 'checksum'",
        Dialect::Postgres => {
            "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = current_schema() \
             AND table_name = 'tally_migrations' AND column_name = 'checksum'"
        }
    };
    Ok(conn.count(sql, &[])? == 1)
}

fn applied(conn: &mut dyn Conn) -> Result<Vec<Applied>, StoreError> {
    let sql = if has_checksum_column(conn)? {
        "SELECT version, name, applied_at, checksum FROM tally_migrations ORDER BY version"
    } else {
        "SELECT version, name, applied_at, CAST(NULL AS TEXT) FROM tally_migrations ORDER BY version"
    };
    conn.query(sql, &[])?
        .iter()
        .map(|row| {
            Ok(Applied {
                version: row.int(0)?,
                name: row.text(1)?,
                applied_at: row.time(2)?,
                checksum: row.opt_text(3)?,
            })
        })
        .collect()
}

/// Every migration this build has and every one the database applied, by version.
pub fn status_of(applied: &[Applied]) -> Vec<MigrationStatus> {
    let mut lines: Vec<MigrationStatus> = MIGRATIONS
        .iter()
        .map(|migration| {
            let record = applied.iter().find(|record| record.version == migration.version);
            let state = match record {
                None => MigrationState::Pending,
                Some(record) => match &record.checksum {
                    Some(recorded) if *recorded != checksum(migration) => {
                        MigrationState::Changed { at: record.applied_at, recorded: recorded.clone() }
                    }
                    _ => MigrationState::Applied { at: record.applied_at },
                },
            };
            MigrationStatus { version: migration.version, name: migration.name.to_owned(), state }
        })
        .collect();
    for record in applied.iter().filter(|record| MIGRATIONS.iter().all(|known| known.version != record.version)) {
        lines.push(MigrationStatus {
            version: record.version,
            name: record.name.clone(),
            state: MigrationState::Unknown { at: record.applied_at },
        });
    }
    lines.sort_by_key(|line| line.version);
    lines
}

/// Where every migration stands, or `None` when the database holds no Tally schema. Reads only.
pub fn status(conn: &mut dyn Conn) -> Result<Option<Vec<MigrationStatus>>, StoreError> {
    if !has_schema(conn)? {
        return Ok(None);
    }
    Ok(Some(status_of(&applied(conn)?)))
}

/// Refuses a database whose applied migrations are not this build's: changed texts, or
/// versions this build does not know.
fn refuse_divergence(lines: &[MigrationStatus]) -> Result<(), StoreError> {
    for line in lines {
        match &line.state {
            MigrationState::Changed { .. } => {
                return Err(StoreError::Database(format!(
                    "migration {} ({}) was changed after this database applied it: its checksum differs; \
                     `tally migrate --status` lists the migrations",
                    line.version, line.name
                )))
            }
            MigrationState::Unknown { .. } => {
                return Err(StoreError::Database(format!(
                    "this database applied migration {} ({}), which this build of Tally does not have: \
                     it was upgraded by a newer Tally; run that version",
                    line.version, line.name
                )))
            }
            MigrationState::Applied { .. } | MigrationState::Pending => {}
        }
    }
    Ok(())
}

/// Applies what is missing. The caller holds whatever lock makes this exclusive.
pub fn apply(conn: &mut dyn Conn) -> Result<Vec<i64>, StoreError> {
    conn.execute(
        "CREATE TABLE IF NOT EXISTS tally_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL, checksum TEXT)",
        &[],
    )?;
    if !has_checksum_column(conn)? {
        conn.execute("ALTER TABLE tally_migrations ADD COLUMN checksum TEXT", &[])?;
    }
    let recorded = applied(conn)?;
    refuse_divergence(&status_of(&recorded))?;
    // Migrations applied before checksums were recorded are taken as they are now.
    for record in recorded.iter().filter(|record| record.checksum.is_none()) {
        if let Some(migration) = MIGRATIONS.iter().find(|migration| migration.version == record.version) {
            conn.execute(
                "UPDATE tally_migrations SET checksum = $1 WHERE version = $2",
                params![checksum(migration), migration.version],
            )?;
        }
    }
    let mut newly_applied = Vec::new();
    for migration in
        MIGRATIONS.iter().filter(|migration| recorded.iter().all(|record| record.version != migration.version))
    {
        for statement in render(migration.sql, conn.dialect()).split(';') {
            if !statement.trim().is_empty() {
                conn.execute(statement, &[])?;
            }
        }
        conn.execute(
            "INSERT INTO tally_migrations (version, name, applied_at, checksum) VALUES ($1, $2, $3, $4)",
            params![migration.version, migration.name, chrono::Utc::now(), checksum(migration)],
        )?;
        newly_applied.push(migration.version);
        if migration.version == ROLLUPS_VERSION {
            // SQL cannot add amounts stored as text exactly: Rust fills the new rollups.
            crate::repo::rollups::backfill(conn)?;
        }
    }
    if conn.query_optional("SELECT value FROM tally_meta WHERE key = 'platform_account_id'", &[])?.is_none() {
        conn.execute(
            "INSERT INTO tally_meta (key, value) VALUES ('platform_account_id', $1)",
            params![crate::ids::new_id("acc")],
        )?;
    }
    Ok(newly_applied)
}

fn has_schema(conn: &mut dyn Conn) -> Result<bool, StoreError> {
    let exists = match conn.dialect() {
        Dialect::Sqlite => "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'tally_migrations'",
        Dialect::Postgres => "SELECT COUNT(*) FROM pg_catalog.pg_tables WHERE tablename = 'tally_migrations' AND schemaname = current_schema()",
    };
    Ok(conn.count(exists, &[])? == 1)
}

/// The versions of this build's migrations that the database has not applied, or `None` when
/// it holds no Tally schema at all (a new, empty database). Reads only: readiness checks and
/// the administrative commands use it to refuse a database that is not ready for them.
pub fn pending(conn: &mut dyn Conn) -> Result<Option<Vec<i64>>, StoreError> {
    Ok(status(conn)?.map(|lines| {
        lines.iter().filter(|line| line.state == MigrationState::Pending).map(|line| line.version).collect()
    }))
}
