//! A PostgreSQL database of its own for a unit test of the commands.

use std::panic::{catch_unwind, resume_unwind, UnwindSafe};

/// Runs `test` with the URL of a new database on TALLY_TEST_POSTGRES_URL (default
/// postgres://postgres@127.0.0.1:5432), named from `prefix`, and drops the database
/// afterwards, whether `test` passes or panics. Skipped (`test` does not run) when no
/// PostgreSQL answers, unless TALLY_REQUIRE_POSTGRES=1.
pub(crate) fn with_database(prefix: &str, test: impl FnOnce(&str) + UnwindSafe) {
    let base =
        std::env::var("TALLY_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    let mut admin = match postgres::Client::connect(&format!("{base}/postgres"), postgres::NoTls) {
        Ok(admin) => admin,
        Err(error) if std::env::var("TALLY_REQUIRE_POSTGRES").as_deref() != Ok("1") => {
            eprintln!("skipped: no PostgreSQL at {base}: {error}");
            return;
        }
        Err(error) => panic!("no PostgreSQL at {base}: {error}"),
    };
    let name = format!("{prefix}_{:x}", chrono::Utc::now().timestamp_micros());
    admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    let outcome = catch_unwind(|| test(&format!("{base}/{name}")));
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).unwrap();
    if let Err(panic) = outcome {
        resume_unwind(panic);
    }
}
