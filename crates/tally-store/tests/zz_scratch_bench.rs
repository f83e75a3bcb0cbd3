use std::time::Instant;
use tally_store::{params, DatabaseUrl, Store, StoreError};
#[test]
fn bench() {
    let mut admin = postgres::Client::connect("postgres://postgres@127.0.0.1:5432/postgres", postgres::NoTls).unwrap();
    admin.batch_execute("DROP DATABASE IF EXISTS scratch_bench WITH (FORCE)").unwrap();
    admin.batch_execute("CREATE DATABASE scratch_bench").unwrap();
    let store = Store::open(&DatabaseUrl::parse("postgres://postgres@127.0.0.1:5432/scratch_bench").unwrap()).unwrap();
    store.migrate().unwrap();
    let n = 3000;
    for round in 0..2 {
        let started = Instant::now();
        store
            .read(|conn| {
                for _ in 0..n {
                    conn.query("SELECT COUNT(*) FROM customers WHERE mode = $1 AND id = $2", params!["test", "x"])?;
                }
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let cached = started.elapsed();
        let started = Instant::now();
        store
            .read(|conn| {
                for i in 0..n {
                    conn.query(
                        &format!("SELECT COUNT(*) FROM customers WHERE mode = $1 AND id = $2 /* {round} {i} */"),
                        params!["test", "x"],
                    )?;
                }
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let uncached = started.elapsed();
        eprintln!(
            "{n} queries: cached {cached:?} ({:?}/query), prepared each time {uncached:?} ({:?}/query)",
            cached / n,
            uncached / n
        );
    }
    let started = Instant::now();
    for i in 0..500 {
        store
            .write(|conn| {
                conn.execute("INSERT INTO tally_meta (key, value) VALUES ($1, 'x')", params![format!("k{i}")])
            })
            .unwrap();
    }
    eprintln!("500 single-insert write transactions: {:?}/commit", started.elapsed() / 500);
    drop(store);
    admin.batch_execute("DROP DATABASE IF EXISTS scratch_bench WITH (FORCE)").unwrap();
}
