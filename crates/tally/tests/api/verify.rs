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
    let report = verify(&app, 500).await;
    let revenue = report.system_balances.get(&("test".to_owned(), "VIDMIN".to_owned(), "revenue".to_owned()));
    assert!(revenue.is_some_and(|revenue| revenue.is_sign_positive()), "{:?}", report.system_balances);

    // Each edit is reported, with what it broke; undone, the books are clean again.
    let charge = one(&app, "SELECT id FROM transactions WHERE id LIKE 'chg-%' ORDER BY id LIMIT 1").await;
    let charged = one(&app, &format!("SELECT amount FROM transactions WHERE id = '{charge}'")).await;
    let gift = one(&app, "SELECT id FROM grants WHERE purpose = 'promotion' ORDER BY id LIMIT 1").await;
    let gift_amount = one(&app, &format!("SELECT amount FROM grants WHERE id = '{gift}'")).await;
    let event = one(&app, "SELECT event_id FROM event_fees ORDER BY event_id LIMIT 1").await;
    let edits = [
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
        for chunk in [1, 500] {
            let report = verify(&app, chunk).await;
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
    }
}

on_both_backends!(a_random_history_verifies_clean_and_each_edit_behind_its_back_is_found);
