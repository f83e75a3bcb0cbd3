//! `tally ledger verify` checks every fact Tally derives from the ledger: a random history
//! made over HTTP (credits, debits, charges, usage events, top-ups that succeed, fail or stay
//! open, grants that start later or expire) verifies clean, read in chunks of any size; then
//! each derived fact edited behind Tally's back is reported.

use crate::harness::{body, TestApp};
use crate::on_both_backends;
use chrono::{Duration, SecondsFormat};
use serde_json::{json, Value};
use tally_store::ops::ledger::{self, VerifyReport};
use tally_store::Conn;

const VIDMIN: &str = r#"{"code":"VIDMIN","name":"Video minutes","precision":2,"rates":[{"source":"USD","rate":0.10}]}"#;

/// Bills 2 video minutes per clip.
const GLITCH_VIDEO: &str = r#"{
  "name": "Glitch Video", "code": "glitch_video",
  "prices": [{
    "name": "Video generation", "type": "usage_based", "billing_model": { "type": "real_time" },
    "usage_calculation": { "event_type": "video_generated", "usage_type": "unit" },
    "pricing": [ { "asset": "VIDMIN", "values": [ { "unit_price": 2 } ] } ]
  }],
  "publish": true
}"#;

/// A small deterministic generator (xorshift), so that a failing history can be replayed.
struct Random(u64);

impl Random {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }

    /// An amount between 0.01 and 40.00.
    fn amount(&mut self) -> String {
        let cents = 1 + self.below(4000);
        format!("{}.{:02}", cents / 100, cents % 100)
    }
}

/// The books as `verify` sees them now, read `chunk` rows at a time.
async fn verify(app: &TestApp, chunk: i64) -> VerifyReport {
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || store.read(|conn| ledger::verify_in_chunks(conn, chunk)).unwrap())
        .await
        .unwrap()
}

/// The books read `chunk` rows at a time and in chunks of the usual size, from one snapshot.
async fn verify_twice(app: &TestApp, chunk: i64) -> (VerifyReport, VerifyReport) {
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || {
        store
            .read(|conn| {
                Ok::<_, tally_store::StoreError>((ledger::verify_in_chunks(conn, chunk)?, ledger::verify(conn)?))
            })
            .unwrap()
    })
    .await
    .unwrap()
}

/// The books as a fast way (`fast`: one of `ledger::verify_by_fingerprints*`) sees them:
/// `Some` clean report when the fingerprints agree.
async fn fast_way(
    app: &TestApp,
    fast: impl FnOnce(&mut dyn Conn) -> Result<Option<VerifyReport>, tally_store::StoreError> + Send + 'static,
) -> Option<VerifyReport> {
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || store.read(fast).unwrap()).await.unwrap()
}

/// The fast way's report (`fast`) and the join passes', from one snapshot: the background
/// worker may settle the history between two reads.
async fn fast_and_joined(
    app: &TestApp,
    fast: impl FnOnce(&mut dyn Conn) -> Result<Option<VerifyReport>, tally_store::StoreError> + Send + 'static,
) -> (Option<VerifyReport>, VerifyReport) {
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || {
        store.read(|conn| Ok::<_, tally_store::StoreError>((fast(conn)?, ledger::verify_in_chunks(conn, 500)?)))
    })
    .await
    .unwrap()
    .unwrap()
}

/// [`fast_and_joined`] with the fast way on two connections of one snapshot (the accounts
/// split between them at the middle customer).
async fn fast_and_joined_on_two(app: &TestApp) -> (Option<VerifyReport>, VerifyReport) {
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || {
        store.read_pair(|first, second| {
            let fast = ledger::verify_by_fingerprints_on_two(first, second)?;
            Ok::<_, tally_store::StoreError>((fast, ledger::verify_in_chunks(first, 500)?))
        })
    })
    .await
    .unwrap()
    .unwrap()
}

/// The books as the fast way sees them on two connections of one snapshot.
async fn verify_by_fingerprints_on_two(app: &TestApp) -> Option<VerifyReport> {
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || store.read_pair(ledger::verify_by_fingerprints_on_two).unwrap()).await.unwrap()
}

/// The books as `ledger::verify` sees them: fingerprints first, join passes when they disagree.
async fn verify_usually(app: &TestApp) -> VerifyReport {
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || store.read(|conn| ledger::verify(conn)).unwrap()).await.unwrap()
}

/// The books as `tally ledger verify` sees them: the same, the fingerprints' two halves read
/// at once on two connections of one snapshot.
async fn verify_on_two(app: &TestApp) -> VerifyReport {
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || store.read_pair(ledger::verify_on_two).unwrap()).await.unwrap()
}

/// Runs `sql` directly on the database, behind Tally's back.
async fn tamper(app: &TestApp, sql: &str) {
    let (store, sql) = (app.store.clone(), sql.to_owned());
    let changed = tokio::task::spawn_blocking(move || store.write(|conn: &mut dyn Conn| conn.execute(&sql, &[])))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changed, 1, "the edit changes one row");
}

/// The first column of the first row `sql` returns.
async fn one(app: &TestApp, sql: &str) -> String {
    let (store, sql) = (app.store.clone(), sql.to_owned());
    tokio::task::spawn_blocking(move || store.read(|conn: &mut dyn Conn| conn.query_one(&sql, &[])?.text(0)))
        .await
        .unwrap()
        .unwrap()
}

fn at(app: &TestApp, offset: Duration) -> String {
    (app.clock.now() + offset).to_rfc3339_opts(SecondsFormat::Micros, true)
}

struct History<'a> {
    app: &'a TestApp,
    random: Random,
    customers: Vec<String>,
    next_id: u64,
}

impl History<'_> {
    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}-{}", self.next_id)
    }

    async fn adjust(&mut self, customer: &str, fields: Value) {
        let mut request = fields;
        request["transaction_id"] = json!(self.id("adj"));
        request["asset"] = json!("VIDMIN");
        self.app.post(&format!("/customers/{customer}/wallet/adjustments"), request).await.expect(201);
    }

    async fn charge(&mut self, customer: &str) {
        let amount = self.random.amount();
        let request = body(&format!(r#"{{"transaction_id":"{}","asset":"VIDMIN","amount":{amount}}}"#, self.id("chg")));
        self.app.post(&format!("/customers/{customer}/wallet/charges"), request).await.expect(201);
    }

    async fn events(&mut self, customer: &str, count: u64) {
        let occurred_at = at(self.app, Duration::zero());
        let events: Vec<Value> = (0..count)
            .map(|_| json!({"id": self.id("clip"), "event_type": "video_generated", "occurred_at": occurred_at}))
            .collect();
        self.app.post("/events", json!({"customer_id": customer, "events": events})).await.expect(204);
    }

    /// A top-up that then succeeds (0), fails (1) or stays open (2).
    async fn top_up(&mut self, customer: &str, end: u64) -> String {
        let dollars = 1 + self.random.below(20);
        let request = body(&format!(
            r#"{{"customer_id":"{customer}","amount":{dollars},"currency":"USD","destination":{{"asset":"VIDMIN"}},
                "return_url":"https://platform.example/ok","failure_url":"https://platform.example/failed"}}"#
        ));
        let id = self.app.post("/top-ups", request).await.expect(201).body["id"].as_str().unwrap().to_owned();
        let ending = match end {
            0 => "succeed",
            1 => "fail",
            _ => return id,
        };
        self.app.post(&format!("/test-helpers/top-ups/{id}/{ending}"), json!({})).await.expect(200);
        id
    }

    async fn random_step(&mut self) {
        let customer = self.customers[self.random.below(self.customers.len() as u64) as usize].clone();
        match self.random.below(9) {
            0 => {
                let amount = self.random.amount();
                self.adjust(&customer, body(&format!(r#"{{"amount":{amount},"reason":"gift"}}"#))).await
            }
            1 => {
                let expires_at = at(self.app, Duration::hours(1 + self.random.below(48) as i64));
                let amount = self.random.amount();
                self.adjust(
                    &customer,
                    body(&format!(r#"{{"amount":{amount},"reason":"external_topup","expires_at":"{expires_at}"}}"#)),
                )
                .await
            }
            2 => {
                let effective_at = at(self.app, Duration::hours(1 + self.random.below(24) as i64));
                let amount = self.random.amount();
                self.adjust(
                    &customer,
                    body(&format!(r#"{{"amount":{amount},"reason":"gift","effective_at":"{effective_at}"}}"#)),
                )
                .await
            }
            3 => {
                let amount = self.random.amount();
                self.adjust(&customer, body(&format!(r#"{{"amount":-{amount},"reason":"other"}}"#))).await
            }
            4 => self.charge(&customer).await,
            5 => {
                let count = 1 + self.random.below(5);
                self.events(&customer, count).await
            }
            6 => {
                let end = self.random.below(3);
                self.top_up(&customer, end).await;
            }
            // Time passes: grants start and expire, open top-ups run out of time.
            _ => self.app.clock.advance(Duration::minutes(1 + self.random.below(36 * 60) as i64)),
        }
    }
}

async fn a_random_history_verifies_clean_and_each_edit_behind_its_back_is_found(app: TestApp) {
    app.post("/assets", body(VIDMIN)).await.expect(201);
    app.post("/products", body(GLITCH_VIDEO)).await.expect(201);
    let mut customers = Vec::new();
    for name in ["Ada", "Bob", "Cy"] {
        let created = app
            .post("/customers", json!({"name": name, "subscriptions": [{"products": [{"code": "glitch_video"}]}]}))
            .await
            .expect(201);
        customers.push(created.body["id"].as_str().unwrap().to_owned());
    }
    let mut history =
        History { app: &app, random: Random(0x9e37_79b9_7f4a_7c15), customers: customers.clone(), next_id: 0 };
    // One of each fact first, so that every edit below has something to edit.
    let ada = customers[0].clone();
    history.adjust(&ada, body(r#"{"amount":50,"reason":"gift"}"#)).await;
    history.charge(&ada).await;
    history.events(&ada, 3).await;
    let failed_top_up = history.top_up(&ada, 1).await;
    history.top_up(&ada, 0).await;
    history.top_up(&ada, 2).await;
    for _ in 0..60 {
        history.random_step().await;
    }
    // Reads settle whatever fell due; the worker may have settled some already.
    for customer in &customers {
        app.get(&format!("/customers/{customer}/wallet")).await.expect(200);
    }

    for chunk in [1, 2, 7, 500] {
        let (report, usual) = verify_twice(&app, chunk).await;
        assert!(report.is_clean(), "chunks of {chunk}: {:#?}", report.problems);
        assert!(report.entries > 20 && report.grants >= 2 && report.fees >= 3 && report.top_ups >= 3, "{report:?}");
        assert_eq!(report, usual, "chunks of {chunk} read the same books");
    }
    // The accounts' and grants' sums gathered in memory, or past a limit (here 0 to 5 of
    // each, reached at any point of the pass) read again by account: the same clean report.
    for limit in [0, 1, 2, 5] {
        let (fast, joined) =
            fast_and_joined(&app, move |conn| ledger::verify_by_fingerprints_gathering_at_most(conn, limit)).await;
        assert_eq!(fast.as_ref(), Some(&joined), "the fingerprints agree gathering at most {limit}");
    }
    // Each pair from one snapshot: the background worker may settle the history meanwhile.
    for chunk in [None, Some(1), Some(2), Some(7)] {
        let (fast, joined) = fast_and_joined(&app, move |conn| match chunk {
            None => ledger::verify_by_fingerprints(conn),
            Some(chunk) => ledger::verify_by_fingerprints_in_chunks(conn, chunk),
        })
        .await;
        assert_eq!(fast.as_ref(), Some(&joined), "the fingerprints agree in chunks of {chunk:?}");
    }
    // The ledger's half first runs the passes that belong to neither half: the same report.
    let (fast, joined) = fast_and_joined(&app, ledger::verify_by_fingerprints_ledger_first).await;
    assert_eq!(fast.as_ref(), Some(&joined), "the fingerprints agree with the ledger's half first");
    // On two connections of one snapshot, the accounts split between them at the middle
    // customer: the same clean report.
    let (fast, joined) = fast_and_joined_on_two(&app).await;
    assert_eq!(fast.as_ref(), Some(&joined), "the fingerprints agree on two connections");
    // Whichever half of the customers an account falls in, a balance edited behind Tally's back
    // is found on two connections.
    for customer in &customers {
        let account = format!("FROM wallet_accounts WHERE customer_id = '{customer}' AND asset = 'VIDMIN'");
        let available = one(&app, &format!("SELECT available {account}")).await;
        tamper(
            &app,
            &format!(
                "UPDATE wallet_accounts SET available = '123456' WHERE customer_id = '{customer}' AND asset = 'VIDMIN'"
            ),
        )
        .await;
        let fast = verify_by_fingerprints_on_two(&app).await;
        assert_eq!(fast, None, "the account of {customer} edited, the fingerprints on two connections disagree");
        tamper(&app, &format!("UPDATE wallet_accounts SET available = '{available}' WHERE customer_id = '{customer}' AND asset = 'VIDMIN'")).await;
    }
    let report = verify(&app, 500).await;
    let revenue = report.system_balances.get(&("test".to_owned(), "VIDMIN".to_owned(), "revenue".to_owned()));
    assert!(revenue.is_some_and(|revenue| revenue.is_sign_positive()), "{:?}", report.system_balances);

    // Each edit is reported, with what it broke; undone, the books are clean again.
    let charge = one(&app, "SELECT id FROM transactions WHERE id LIKE 'chg-%' ORDER BY id LIMIT 1").await;
    let charged = one(&app, &format!("SELECT amount FROM transactions WHERE id = '{charge}'")).await;
    let gift = one(&app, "SELECT id FROM grants WHERE purpose = 'promotion' ORDER BY id LIMIT 1").await;
    let gift_amount = one(&app, &format!("SELECT amount FROM grants WHERE id = '{gift}'")).await;
    let event = one(&app, "SELECT event_id FROM event_fees ORDER BY event_id LIMIT 1").await;
    let (charge_kind, charge_account, charge_asset) = (
        one(&app, &format!("SELECT kind FROM transactions WHERE id = '{charge}'")).await,
        one(&app, &format!("SELECT account_name FROM transactions WHERE id = '{charge}'")).await,
        one(&app, &format!("SELECT asset FROM transactions WHERE id = '{charge}'")).await,
    );
    let charge_entry = one(&app, &format!("SELECT id FROM ledger_entries WHERE transaction_id = '{charge}'")).await;
    let fee_entry =
        one(&app, &format!("SELECT id FROM ledger_entries WHERE transaction_id = 'tally_event_{event}_0'")).await;
    let (gift_entry, gift_line) = (
        one(
            &app,
            &format!("SELECT entry_id FROM ledger_postings WHERE grant_id = '{gift}' ORDER BY entry_id, line LIMIT 1"),
        )
        .await,
        one(
            &app,
            &format!("SELECT line FROM ledger_postings WHERE grant_id = '{gift}' ORDER BY entry_id, line LIMIT 1"),
        )
        .await,
    );
    let gift_remaining = one(&app, &format!("SELECT remaining FROM grants WHERE id = '{gift}'")).await;
    let gift_issue = one(&app, &format!("SELECT transaction_id FROM ledger_grants WHERE grant_id = '{gift}'")).await;
    let gift_cost_basis =
        format!("SELECT CASE WHEN cost_basis IS NULL THEN 'none' END FROM grants WHERE id = '{gift}'");
    assert_eq!(one(&app, &gift_cost_basis).await, "none", "a promotion has no cost basis");
    let fee_columns = "mode, event_id, customer_id, line, product_id, product_code, product_version, price_id, \
                       price_name, asset, account_name, detail, amount, occurred_at, created_at";
    let entry_columns =
        "mode, customer_id, account_name, asset, kind, transaction_id, grant_id, effective_at, created_at";
    let edits = [
        // Each field of an entry that its fingerprint states.
        (
            format!("UPDATE ledger_entries SET account_name = 'other' WHERE id = {charge_entry}"),
            format!("transaction {charge} of {ada}: it is on {charge_account}:{charge_asset} but its ledger entry {charge_entry} is on other:{charge_asset}"),
            format!("UPDATE ledger_entries SET account_name = '{charge_account}' WHERE id = {charge_entry}"),
        ),
        (
            format!("UPDATE ledger_entries SET asset = 'OTHER' WHERE id = {charge_entry}"),
            format!("transaction {charge} of {ada}: it is on {charge_account}:{charge_asset} but its ledger entry {charge_entry} is on {charge_account}:OTHER"),
            format!("UPDATE ledger_entries SET asset = '{charge_asset}' WHERE id = {charge_entry}"),
        ),
        (
            format!("UPDATE ledger_entries SET kind = 'adjustment' WHERE id = {charge_entry}"),
            format!("transaction {charge} of {ada}: it is a {charge_kind} but its ledger entry {charge_entry} is a adjustment"),
            format!("UPDATE ledger_entries SET kind = '{charge_kind}' WHERE id = {charge_entry}"),
        ),
        (
            format!("UPDATE ledger_entries SET transaction_id = 'elsewhere' WHERE id = {charge_entry}"),
            format!("transaction {charge} of {ada}: no ledger entry records it"),
            format!("UPDATE ledger_entries SET transaction_id = '{charge}' WHERE id = {charge_entry}"),
        ),
        (
            format!("UPDATE ledger_entries SET customer_id = 'cust_other' WHERE id = {charge_entry}"),
            format!("transaction {charge} of {ada}: no ledger entry records it"),
            format!("UPDATE ledger_entries SET customer_id = '{ada}' WHERE id = {charge_entry}"),
        ),
        // An entry of a kind no transaction records, naming a transaction.
        (
            format!("UPDATE ledger_entries SET transaction_id = '{charge}' WHERE transaction_id = '{failed_top_up}' AND kind = 'top_up_pending'"),
            format!("transaction {charge} of {ada}: 2 ledger entries record it, not one"),
            format!("UPDATE ledger_entries SET transaction_id = '{failed_top_up}' WHERE transaction_id = '{charge}' AND kind = 'top_up_pending'"),
        ),
        // A second entry recording the same transaction (without postings).
        (
            format!("INSERT INTO ledger_entries ({entry_columns}) SELECT {entry_columns} FROM ledger_entries WHERE id = {charge_entry}"),
            format!("transaction {charge} of {ada}: 2 ledger entries record it, not one"),
            format!("DELETE FROM ledger_entries WHERE transaction_id = '{charge}' AND id <> {charge_entry}"),
        ),
        // Postings: what a fee's entry moved to revenue, whether an entry balances, which grant
        // a posting names.
        (
            format!("UPDATE ledger_postings SET account = 'system:expired' WHERE entry_id = {fee_entry} AND account = 'system:revenue'"),
            format!("event {event}: fee 0 is 2 VIDMIN but the ledger moved 0 to revenue in 1 entries"),
            format!("UPDATE ledger_postings SET account = 'system:revenue' WHERE entry_id = {fee_entry} AND account = 'system:expired'"),
        ),
        (
            format!("UPDATE ledger_postings SET amount = '3' WHERE entry_id = {fee_entry} AND account = 'system:revenue'"),
            format!("ledger entry {fee_entry} does not balance: its postings sum to 1"),
            format!("UPDATE ledger_postings SET amount = '2' WHERE entry_id = {fee_entry} AND account = 'system:revenue'"),
        ),
        (
            format!("UPDATE ledger_postings SET grant_id = 'ghost' WHERE entry_id = {gift_entry} AND line = {gift_line}"),
            format!("{ada}/default:VIDMIN: postings name grant ghost, which this account does not hold"),
            format!("UPDATE ledger_postings SET grant_id = '{gift}' WHERE entry_id = {gift_entry} AND line = {gift_line}"),
        ),
        (
            format!("UPDATE grants SET remaining = '0.01' WHERE id = '{gift}'"),
            format!("grant {gift}: remaining is 0.01 but the ledger says"),
            format!("UPDATE grants SET remaining = '{gift_remaining}' WHERE id = '{gift}'"),
        ),
        // Each field of a transaction that its fingerprint states.
        (
            format!("UPDATE transactions SET account_name = 'other' WHERE id = '{charge}'"),
            format!("transaction {charge} of {ada}: it is on other:{charge_asset} but its ledger entry {charge_entry} is on {charge_account}:{charge_asset}"),
            format!("UPDATE transactions SET account_name = '{charge_account}' WHERE id = '{charge}'"),
        ),
        (
            format!("UPDATE transactions SET asset = 'OTHER' WHERE id = '{charge}'"),
            format!("transaction {charge} of {ada}: it is on {charge_account}:OTHER but its ledger entry {charge_entry} is on {charge_account}:{charge_asset}"),
            format!("UPDATE transactions SET asset = '{charge_asset}' WHERE id = '{charge}'"),
        ),
        (
            format!("UPDATE transactions SET kind = 'adjustment' WHERE id = '{charge}'"),
            format!("transaction {charge} of {ada}: it is a adjustment but its ledger entry {charge_entry} is a {charge_kind}"),
            format!("UPDATE transactions SET kind = '{charge_kind}' WHERE id = '{charge}'"),
        ),
        (
            format!("UPDATE transactions SET amount = '-3' WHERE id = 'tally_event_{event}_0'"),
            format!("event {event}: fee 0 is 2 VIDMIN but its transaction records -3 VIDMIN"),
            format!("UPDATE transactions SET amount = '-2' WHERE id = 'tally_event_{event}_0'"),
        ),
        // Each field of a usage event and of a fee that their fingerprints state.
        (
            format!("UPDATE usage_events SET total_fees = '7' WHERE id = '{event}'"),
            format!("event {event}: total_fees is Some(7)"),
            format!("UPDATE usage_events SET total_fees = '2' WHERE id = '{event}'"),
        ),
        (
            format!("UPDATE usage_events SET fee_currency = 'USD' WHERE id = '{event}'"),
            format!("event {event}: total_fees is Some(2) Some(\"USD\")"),
            format!("UPDATE usage_events SET fee_currency = 'VIDMIN' WHERE id = '{event}'"),
        ),
        (
            format!("UPDATE usage_events SET has_fees = 0 WHERE id = '{event}'"),
            format!("event {event}: has_fees is false but it has 1 fees"),
            format!("UPDATE usage_events SET has_fees = 1 WHERE id = '{event}'"),
        ),
        (
            format!("UPDATE event_fees SET asset = 'USD' WHERE event_id = '{event}' AND line = 0"),
            format!("event {event}: fee 0 is 2 USD but its transaction records -2 VIDMIN"),
            format!("UPDATE event_fees SET asset = 'VIDMIN' WHERE event_id = '{event}' AND line = 0"),
        ),
        (
            format!("UPDATE event_fees SET line = 5 WHERE event_id = '{event}' AND line = 0"),
            format!("event {event}: fee 5 of 2 VIDMIN has no wallet transaction"),
            format!("UPDATE event_fees SET line = 0 WHERE event_id = '{event}' AND line = 5"),
        ),
        (
            format!("UPDATE event_fees SET event_id = 'ghost' WHERE event_id = '{event}' AND line = 0"),
            "1 fees belong to no usage event".to_owned(),
            format!("UPDATE event_fees SET event_id = '{event}' WHERE event_id = 'ghost' AND line = 0"),
        ),
        // A fee counted twice.
        (
            format!("INSERT INTO event_fees (id, {fee_columns}) SELECT 'fee_twice', {fee_columns} FROM event_fees WHERE event_id = '{event}' AND line = 0"),
            "1 fees belong to no usage event".to_owned(),
            "DELETE FROM event_fees WHERE id = 'fee_twice'".to_owned(),
        ),
        (
            format!("UPDATE transactions SET amount = '-999' WHERE id = '{charge}'"),
            format!("transaction {charge} of {ada}: amount is -999 but its ledger entry moves {charged}"),
            format!("UPDATE transactions SET amount = '{charged}' WHERE id = '{charge}'"),
        ),
        (
            format!("UPDATE grants SET purpose = 'paid' WHERE id = '{gift}'"),
            format!("grant {gift}: purpose is paid but the ledger issued it as promotion"),
            format!("UPDATE grants SET purpose = 'promotion' WHERE id = '{gift}'"),
        ),
        (
            format!("UPDATE grants SET amount = '12345' WHERE id = '{gift}'"),
            format!("grant {gift}: amount is 12345 but the ledger issued {gift_amount}"),
            format!("UPDATE grants SET amount = '{gift_amount}' WHERE id = '{gift}'"),
        ),
        // The ledger's record of a grant's issue, each field the grant or its entry states.
        (
            format!("UPDATE ledger_grants SET purpose = 'paid' WHERE grant_id = '{gift}'"),
            format!("grant {gift}: purpose is promotion but the ledger issued it as paid"),
            format!("UPDATE ledger_grants SET purpose = 'promotion' WHERE grant_id = '{gift}'"),
        ),
        (
            format!("UPDATE ledger_grants SET amount = '12345' WHERE grant_id = '{gift}'"),
            format!("grant {gift}: amount is {gift_amount} but the ledger issued 12345"),
            format!("UPDATE ledger_grants SET amount = '{gift_amount}' WHERE grant_id = '{gift}'"),
        ),
        (
            format!("UPDATE ledger_grants SET cost_basis = '0.5' WHERE grant_id = '{gift}'"),
            format!("grant {gift}: cost basis is None but the ledger issued it at Some(0.5)"),
            format!("UPDATE ledger_grants SET cost_basis = NULL WHERE grant_id = '{gift}'"),
        ),
        (
            format!("UPDATE grants SET cost_basis = '0.5' WHERE id = '{gift}'"),
            format!("grant {gift}: cost basis is Some(0.5) but the ledger issued it at None"),
            format!("UPDATE grants SET cost_basis = NULL WHERE id = '{gift}'"),
        ),
        (
            format!("UPDATE ledger_grants SET transaction_id = 'nowhere' WHERE grant_id = '{gift}'"),
            format!("grant {gift}: 0 ledger entries record its issue, not one"),
            format!("UPDATE ledger_grants SET transaction_id = '{gift_issue}' WHERE grant_id = '{gift}'"),
        ),
        (
            format!("UPDATE event_fees SET amount = '3' WHERE event_id = '{event}' AND line = 0"),
            format!("event {event}: fee 0 is 3 VIDMIN but its transaction records -2 VIDMIN"),
            format!("UPDATE event_fees SET amount = '2' WHERE event_id = '{event}' AND line = 0"),
        ),
        (
            format!("UPDATE top_ups SET status = 'succeeded' WHERE id = '{failed_top_up}'"),
            format!("top-up {failed_top_up} is succeeded but its entries hold"),
            format!("UPDATE top_ups SET status = 'failed' WHERE id = '{failed_top_up}'"),
        ),
        (
            format!(
                "UPDATE wallet_accounts SET available = '1000000' WHERE customer_id = '{ada}' AND asset = 'VIDMIN'"
            ),
            format!("{ada}/default:VIDMIN: available is 1000000 but the ledger says"),
            String::new(),
        ),
    ];
    let available = one(&app, &format!("SELECT available FROM wallet_accounts WHERE customer_id = '{ada}'")).await;
    for (edit, expected, undo) in edits {
        tamper(&app, &edit).await;
        assert_eq!(
            fast_way(&app, ledger::verify_by_fingerprints).await,
            None,
            "after {edit:?}, the fingerprints disagree"
        );
        assert_eq!(
            fast_way(&app, ledger::verify_by_fingerprints_ledger_first).await,
            None,
            "after {edit:?}, the fingerprints disagree with the ledger's half first"
        );
        for limit in [0, 2] {
            assert_eq!(
                fast_way(&app, move |conn| ledger::verify_by_fingerprints_gathering_at_most(conn, limit)).await,
                None,
                "after {edit:?}, the fingerprints disagree gathering at most {limit}"
            );
        }
        for chunk in [1, 500, 0, -1] {
            // Chunk 0: the usual way, fingerprints first; -1: the same on two connections.
            let report = match chunk {
                0 => verify_usually(&app).await,
                -1 => verify_on_two(&app).await,
                _ => verify(&app, chunk).await,
            };
            assert!(
                report.problems.iter().any(|problem| problem.starts_with(&expected)),
                "after {edit:?}, chunks of {chunk}: expected {expected:?} in {:#?}",
                report.problems
            );
        }
        let undo = if undo.is_empty() {
            format!(
                "UPDATE wallet_accounts SET available = '{available}' WHERE customer_id = '{ada}' AND asset = 'VIDMIN'"
            )
        } else {
            undo
        };
        tamper(&app, &undo).await;
        let report = verify(&app, 3).await;
        assert!(report.is_clean(), "after undoing {edit:?}: {:#?}", report.problems);
        assert!(
            fast_way(&app, ledger::verify_by_fingerprints).await.is_some(),
            "after undoing {edit:?}, the fingerprints agree"
        );
        assert!(
            fast_way(&app, ledger::verify_by_fingerprints_ledger_first).await.is_some(),
            "after undoing {edit:?}, the fingerprints agree with the ledger's half first"
        );
    }
}

on_both_backends!(a_random_history_verifies_clean_and_each_edit_behind_its_back_is_found);
