#[test]
fn scratch() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("x.db").display());
    let store = tally_store::Store::open(&tally_store::DatabaseUrl::parse(&url).unwrap()).unwrap();
    let r = store.write(|conn| {
        for m in tally_store::migrate::MIGRATIONS {
            for st in tally_store::migrate::render(m.sql, conn.dialect()).split(';') {
                if !st.trim().is_empty() {
                    if let Err(e) = conn.execute(st, &[]) { println!("ERR {} {e:?} <- {}", m.version, st); return Err(e); }
                }
            }
        }
        Ok::<_, tally_store::StoreError>(())
    });
    println!("{r:?}");
    println!("{:?}", store.migrate());
}
