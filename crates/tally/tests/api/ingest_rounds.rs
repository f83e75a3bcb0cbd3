//! Ingestion rounds (`ops::events::ingest_round`): several `POST /events` requests in one
//! transaction answer and store exactly what each would have alone, one after another in
//! the round's order; and a round that cannot be kept leaves nothing and is answered a
//! request at a time.

use crate::harness::{body, TestApp};
use crate::on_both_backends;
use serde_json::{json, Value};
use std::sync::Arc;
use tally::bench::GLITCH_IMAGES;
use tally_core::Mode;
use tally_http::catalog::CatalogCache;
use tally_http::ingest_rounds::IngestRounds;
use tally_http::routes::events::{parse_events, UsageRequest};
use tally_store::ops::events::{self as event_ops, CustomerRef, IngestReport, IngestRequest};
use tally_store::ops::OpError;
use tally_store::repo::auto_top_ups::{self, AutoTopUp};
use tally_store::repo::wallets::AccountKey;

const IMG: &str = r#"{"code":"IMG","name":"Image Generation","precision":2,"rates":[{"source":"USD","rate":0.10}]}"#;

/// One IMG per unit of `units`: a single event can owe close to the largest amount.
const BIG_JOBS: &str = r#"{
  "name": "Big jobs", "code": "big_jobs",
  "prices": [ {
    "name": "Units", "type": "usage_based", "billing_model": { "type": "real_time" },
    "usage_calculation": { "event_type": "big_job", "usage_type": "volume", "volume_field": "units" },
    "pricing": [ { "asset": "IMG", "values": [ { "volume_rate": 1 } ] } ]
  } ],
  "publish": true
}"#;

/// A monthly fee, nothing else: a subscription to it renews a month after it starts.
const MONTHLY: &str = r#"{
  "name": "Monthly", "code": "monthly",
  "prices": [ {
    "name": "Platform fee", "type": "fixed", "billing_model": { "type": "recurring", "recurring": { "interval": "month" } },
    "pricing": [ { "asset": "IMG", "values": [ { "unit_price": 1 } ] } ]
  } ],
  "publish": true
}"#;

/// One job billed in two assets: its fee in the second opens a second account mid-batch.
const DUAL: &str = r#"{
  "name": "Dual", "code": "dual",
  "prices": [ {
    "name": "Job", "type": "usage_based", "billing_model": { "type": "real_time" },
    "usage_calculation": { "event_type": "dual_job", "usage_type": "unit" },
    "pricing": [ { "asset": "IMG", "values": [ { "unit_price": 1 } ] }, { "asset": "USD", "values": [ { "unit_price": 0.5 } ] } ]
  } ],
  "publish": true
}"#;

/// A world to ingest into: the seed's product, the big jobs, a monthly fee, a vendor and seven
/// customers (`c4` subscribes to nothing, so its events are stored unbilled; `c5` and `c6` pay
/// the monthly fee, renewed when a request comes a month later; `c7`'s subscription starts
/// ten days on; `c8` holds a gift that expires twenty days on).
struct World {
    customers: Vec<(&'static str, String)>,
    vendor: String,
    /// When the world's events occur: after its subscriptions began.
    at: chrono::DateTime<chrono::Utc>,
}

impl World {
    async fn build(app: &TestApp) -> World {
        app.post("/assets", body(IMG)).await.expect(201);
        app.post("/products", body(GLITCH_IMAGES)).await.expect(201);
        app.post("/products", body(BIG_JOBS)).await.expect(201);
        app.post("/products", body(MONTHLY)).await.expect(201);
        app.post("/products", body(DUAL)).await.expect(201);
        let vendor = app.post("/vendors", json!({"name": "GPU cloud", "external_id": "gpu"})).await.expect(201);
        let vendor = vendor.body["id"].as_str().unwrap().to_owned();
        let mut customers = Vec::new();
        for (name, products) in [
            ("c1", vec!["glitch_images_std", "big_jobs"]),
            ("c2", vec!["glitch_images_std", "big_jobs"]),
            ("c3", vec!["glitch_images_std"]),
            ("c4", vec![]),
            ("c5", vec!["glitch_images_std", "monthly"]),
            ("c6", vec!["glitch_images_std", "monthly", "dual"]),
            ("c7", vec![]),
            ("c8", vec!["glitch_images_std"]),
        ] {
            let subscriptions: Vec<Value> = if products.is_empty() {
                Vec::new()
            } else {
                vec![json!({"products": products.iter().map(|code| json!({"code": code})).collect::<Vec<_>>()})]
            };
            let made = app
                .post(
                    "/customers",
                    json!({"name": name, "external_id": format!("ext-{name}"), "subscriptions": subscriptions}),
                )
                .await
                .expect(201);
            let id = made.body["id"].as_str().unwrap().to_owned();
            app.fund(&id, "IMG", "10", &format!("topup-{name}")).await;
            if name == "c7" {
                // Subscribed from ten days on: a request after that starts it first.
                let starts = (chrono::Utc::now() + chrono::Duration::days(10)).to_rfc3339();
                let scheduled = json!({"starts_at": starts, "products": [{"code": "glitch_images_std"}]});
                app.post(&format!("/customers/{id}/subscriptions"), scheduled).await.expect(201);
            }
            if name == "c8" {
                // Expired when a request comes 40 days on: opening the account settles first,
                // writing an expiry transaction that the fee's number must follow.
                let expires = (chrono::Utc::now() + chrono::Duration::days(20)).to_rfc3339();
                let gift = json!({"transaction_id": "gift-c8", "asset": "IMG", "amount": 3, "reason": "gift",
                                  "expires_at": expires});
                app.post(&format!("/customers/{id}/wallet/adjustments"), gift).await.expect(201);
            }
            customers.push((name, id));
        }
        World { customers, vendor, at: chrono::Utc::now() }
    }

    fn id(&self, name: &str) -> &str {
        &self.customers.iter().find(|(known, _)| *known == name).expect("a customer of the world").1
    }

    /// A request of customer `name` (`cus_nobody` for one that does not exist), its events
    /// given as (id, event_type, data).
    fn request(&self, name: &str, events: &[(&str, &str, Value)]) -> IngestRequest {
        self.request_at(name, events, self.at, self.at + chrono::Duration::seconds(5))
    }

    /// [`World::request`] with events that occur at `occurred_at`, received at `now`.
    fn request_at(
        &self,
        name: &str,
        events: &[(&str, &str, Value)],
        occurred_at: chrono::DateTime<chrono::Utc>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> IngestRequest {
        let customer = if name == "cus_nobody" {
            json!({"customer_id": "cus_nobody"})
        } else if let Some(external) = name.strip_prefix("ext-") {
            json!({"customer_external_id": format!("ext-{external}")})
        } else {
            json!({"customer_id": self.id(name)})
        };
        let mut request = customer;
        request["events"] = events
            .iter()
            .map(|(id, event_type, data)| {
                let mut event =
                    json!({"id": id, "event_type": event_type, "occurred_at": occurred_at.to_rfc3339(), "data": data});
                if let Some(cost) = data.get("cost") {
                    event["costs"] = json!([{"id": format!("{id}-cost"), "vendor_id": cost, "amount": 0.25}]);
                }
                event
            })
            .collect();
        let parsed: UsageRequest = serde_json::from_value(request).unwrap();
        let customer = match (parsed.customer_id, parsed.customer_external_id) {
            (Some(id), _) => CustomerRef::Id(id),
            (None, Some(external)) => CustomerRef::ExternalId(external),
            (None, None) => unreachable!(),
        };
        IngestRequest { customer, events: parse_events(&parsed.events, None).unwrap(), now }
    }
}

/// An answer as text that means the same in every world (no generated ids).
fn answer_text(answer: &Result<IngestReport, OpError>) -> String {
    match answer {
        Ok(report) => format!("{report:?}"),
        Err(error) => format!("{error:?}"),
    }
}

/// What a customer's ingestion left, as text that means the same in every world: balances,
/// events (billed, fees, reason), transactions (id, amount).
async fn customer_state(app: &TestApp, world: &World, name: &str) -> String {
    let id = world.id(name);
    let account = app.get(&format!("/customers/{id}/wallet/default:IMG")).await.expect(200).body;
    let wallet = app.get(&format!("/customers/{id}/wallet")).await.expect(200).body;
    let mut accounts: Vec<String> = wallet["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|account| format!("{} {}", account["id"], account["available"]))
        .collect();
    accounts.sort();
    let events = app.get(&format!("/events?customer_id={id}&limit=100")).await.expect(200).body;
    let mut events: Vec<String> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| {
            format!(
                "{} {} {} {}",
                event["id"], event["billing_status"], event["total_fees"], event["unbilled_reason"]["code"]
            )
        })
        .collect();
    events.sort();
    let transactions =
        app.get(&format!("/customers/{id}/wallet/default:IMG/transactions?limit=100")).await.expect(200).body;
    let mut transactions: Vec<String> = transactions["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|transaction| format!("{} {} {}", transaction["id"], transaction["type"], transaction["amount"]))
        .collect();
    transactions.sort();
    // The order the customer's transactions are numbered in, and its ledger entries follow:
    // each request's after the earlier requests' of the same customer, as when made alone.
    let (store, customer) = (app.store.clone(), id.to_owned());
    let (numbered, entries, counters) = tokio::task::spawn_blocking(move || {
        store
            .read(|conn| {
                let texts = |conn: &mut dyn tally_store::Conn, sql: &str| -> Result<Vec<String>, tally_store::StoreError> {
                    let rows = conn.query(sql, &[tally_store::Value::from(customer.as_str())])?;
                    rows.iter().map(|row| Ok(format!("{} {}", row.int(0)?, row.text(1)?))).collect()
                };
                Ok::<_, tally_store::StoreError>((
                    texts(conn, "SELECT sequence, id FROM transactions WHERE customer_id = $1 ORDER BY sequence, id")?,
                    texts(
                        conn,
                        "SELECT 0, COALESCE(transaction_id, kind) FROM ledger_entries WHERE customer_id = $1 ORDER BY id",
                    )?,
                    // The tier counters, which a customer's later request reads and moves on.
                    texts(
                        conn,
                        "SELECT 0, units || ' ' || volume FROM usage_counters WHERE customer_id = $1 ORDER BY units, volume",
                    )?,
                ))
            })
            .unwrap()
    })
    .await
    .unwrap();
    without_generated_ids(format!(
        "{name}: available {} pending_out {}\n  accounts {accounts:?}\n  events {events:?}\n  transactions {transactions:?}\n  \
         numbered {numbered:?}\n  ledger {entries:?}\n  counters {counters:?}",
        account["available"], account["pending_out"]
    ))
}

/// `text` with each subscription fee's transaction id (which names the world's generated
/// subscription and price ids and its start) and each expiry's (which names the generated
/// grant id) cut to its kind.
fn without_generated_ids(text: String) -> String {
    let mut text = text;
    for prefix in ["tally_subscription_", "tally_expiry_"] {
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(at) = rest.find(prefix) {
            out.push_str(&rest[..at + prefix.len()]);
            rest = &rest[at + prefix.len()..];
            rest = &rest[rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len())..];
        }
        out.push_str(rest);
        text = out;
    }
    text
}

/// The round's requests: every way a request of a round can end.
fn mixed_requests(world: &World) -> Vec<IngestRequest> {
    let day = |days: i64| world.at + chrono::Duration::days(days);
    let image = |id: &'static str| (id, "image_generated", json!({}));
    let vendor = world.vendor.as_str();
    vec![
        world.request("c1", &[image("e1"), image("e2")]),
        world.request("c2", &[image("e3"), ("e3b", "image_generated", json!({"cost": vendor}))]),
        // No such customer: 422, nothing else changes.
        world.request("cus_nobody", &[image("e4")]),
        // An id an earlier request of the round stored for another customer: 409.
        world.request("c3", &[image("e1")]),
        // The same customer again: a replay of its e2 and a new event.
        world.request("c1", &[image("e2"), image("e5")]),
        // An id of this customer's, stored earlier in the round, with other content: 409.
        world.request("c2", &[("e3", "image_generated", json!({"other": "content"}))]),
        // No subscription: stored unbilled.
        world.request("c4", &[image("e6")]),
        // An unknown vendor: the batch is refused (422) before it writes anything.
        world.request("c3", &[("e7", "image_generated", json!({"cost": "vnd_nobody"}))]),
        // By external id.
        world.request("ext-c1", &[image("e8")]),
        // A replay of an event stored before the round.
        world.request("c2", &[image("e9")]),
        // A volume event.
        world.request("c3", &[image("e10")]),
        world.request("c2", &[("e11", "big_job", json!({"units": "2.5"}))]),
        // Received 40 days on: the monthly fee fell due (the round read it, with every other
        // customer's, at its latest instant), renews first, and the event is priced after.
        // The earlier requests' subscriptions, due then too, are not due at their instants.
        world.request_at("c5", &[image("e13")], day(39), day(40)),
        // Its monthly fee falls due by the round's latest instant, not by this request's. Its
        // second event bills USD too: a second account opens mid-batch.
        world.request("c6", &[image("e14"), ("e16", "dual_job", json!({}))]),
        // Its subscription starts ten days on: the request, 40 days on, starts it first and
        // prices the event by the history that start wrote.
        world.request_at("c7", &[image("e15")], day(39), day(40)),
        // Its gift expires on day 20: a request now spends from it; one on day 40, after the
        // same customer's request, opens the account again and expires it first.
        world.request("c8", &[image("e18")]),
        world.request_at("c8", &[image("e17")], day(39), day(40)),
    ]
}

async fn a_round_answers_and_stores_what_the_requests_alone_would(app: TestApp) {
    // The same world twice: one ingests the requests in a round, the other one by one.
    let alone = TestApp::spawn(app.backend).await.expect("a second database on the same backend");
    let (in_round, one_by_one) = (World::build(&app).await, World::build(&alone).await);
    for (target, world) in [(&app, &in_round), (&alone, &one_by_one)] {
        let earlier = json!({"customer_id": world.id("c2"), "events": [
            {"id": "e9", "event_type": "image_generated", "occurred_at": world.at.to_rfc3339(), "data": {}}]});
        target.post("/events", earlier).await.expect(204);
    }

    let requests = mixed_requests(&in_round);
    let catalog = Arc::new(CatalogCache::default());
    let (store, round_catalog) = (app.store.clone(), catalog.clone());
    let answers = tokio::task::spawn_blocking(move || {
        store.write_rerunnable(move |conn| event_ops::ingest_round(conn, Mode::Test, &requests, round_catalog.as_ref()))
    })
    .await
    .unwrap()
    .expect("the round is kept");

    let requests = mixed_requests(&one_by_one);
    let store = alone.store.clone();
    let expected = tokio::task::spawn_blocking(move || {
        requests
            .iter()
            .map(|request| {
                let (request, catalog) = (request.clone(), catalog.clone());
                store.write_rerunnable(move |conn| {
                    event_ops::ingest(
                        conn,
                        Mode::Test,
                        &request.customer,
                        &request.events,
                        catalog.as_ref(),
                        request.now,
                    )
                })
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();

    let answers: Vec<String> = answers.iter().map(answer_text).collect();
    let expected: Vec<String> = expected.iter().map(answer_text).collect();
    assert_eq!(answers, expected, "each request is answered as it would have been alone");
    let statuses: Vec<&str> = answers.iter().map(|answer| &answer[..answer.find(['(', ' ']).unwrap()]).collect();
    assert_eq!(
        statuses,
        [
            "IngestReport",
            "IngestReport",
            "Invalid",
            "Conflict",
            "IngestReport",
            "Conflict",
            "IngestReport",
            "Invalid",
            "IngestReport",
            "IngestReport",
            "IngestReport",
            "IngestReport",
            "IngestReport",
            "IngestReport",
            "IngestReport",
            "IngestReport",
            "IngestReport"
        ],
        "{answers:#?}"
    );
    for name in ["c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8"] {
        assert_eq!(
            customer_state(&app, &in_round, name).await,
            customer_state(&alone, &one_by_one, name).await,
            "the round stored for {name} what the requests alone stored"
        );
    }
    // c1: e1, e2, e5, e8 at one IMG each.
    assert!(customer_state(&app, &in_round, "c1").await.contains("available 6"));
    // c5: the first month's fee, the renewal's, and e13.
    let c5 = customer_state(&app, &in_round, "c5").await;
    assert!(c5.contains("available 7") && c5.contains("e13"), "{c5}");
    // c6: e16 opened a USD account mid-batch and owes its half dollar there.
    let c6 = customer_state(&app, &in_round, "c6").await;
    assert!(c6.contains("default:USD\\\" -0.5"), "{c6}");
    let c7 = customer_state(&app, &in_round, "c7").await;
    assert!(c7.contains("available 9") && c7.contains("e15\\\" \\\"billed"), "{c7}");
    // c8: 10 paid and a gift of 3; e18 took one of the gift, whose other two expired before
    // e17 took one of the paid.
    let c8 = customer_state(&app, &in_round, "c8").await;
    assert!(c8.contains("available 9") && c8.contains("expiry"), "{c8}");
    app.assert_ledger_agrees().await;
    alone.assert_ledger_agrees().await;
}

/// A request that fails having written a row (here the `transaction.completed` webhook of
/// its first event's fee, before its second event's fee takes the debt past the largest
/// amount) cannot be taken out of the round alone: the round fails whole, keeps nothing, and
/// each request, run alone, gets its own answer.
async fn a_request_that_fails_after_writing_fails_the_round_and_each_runs_alone(app: TestApp) {
    let world = World::build(&app).await;
    let hooks = json!({"url": "http://127.0.0.1:9/rounds", "topics": ["transaction.completed"]});
    app.post("/webhooks", hooks).await.expect(201);
    let vendor = world.vendor.as_str();
    let requests = || {
        vec![
            world.request("c2", &[("f1", "image_generated", json!({}))]),
            world.request(
                "c1",
                &[
                    ("f2", "big_job", json!({"units": 600_000_000_000_000_i64, "cost": vendor})),
                    ("f3", "big_job", json!({"units": 600_000_000_000_000_i64})),
                ],
            ),
            world.request("c3", &[("f4", "image_generated", json!({}))]),
        ]
    };
    let catalog = Arc::new(CatalogCache::default());
    let (store, round, round_catalog) = (app.store.clone(), requests(), catalog.clone());
    let outcome = tokio::task::spawn_blocking(move || {
        store.write_rerunnable(move |conn| event_ops::ingest_round(conn, Mode::Test, &round, round_catalog.as_ref()))
    })
    .await
    .unwrap();
    assert!(outcome.is_err(), "the round fails");
    for name in ["c1", "c2", "c3"] {
        let state = customer_state(&app, &world, name).await;
        assert!(state.contains("events []"), "nothing of the failed round stayed: {state}");
    }

    let rounds = Arc::new(IngestRounds::new(app.store.clone(), catalog, 0));
    let requests = requests();
    let answers = tokio::task::spawn_blocking(move || rounds.run_round(Mode::Test, requests)).await.unwrap();
    let answers: Vec<String> = answers.iter().map(answer_text).collect();
    assert!(answers[0].starts_with("IngestReport") && answers[2].starts_with("IngestReport"), "{answers:#?}");
    assert!(answers[1].starts_with("Invalid") && answers[1].contains("debt"), "{answers:#?}");
    let c2 = customer_state(&app, &world, "c2").await;
    assert!(c2.contains("f1") && c2.contains("available 9"), "{c2}");
    let c3 = customer_state(&app, &world, "c3").await;
    assert!(c3.contains("f4") && c3.contains("available 9"), "{c3}");
    assert!(customer_state(&app, &world, "c1").await.contains("events []"), "c1's batch is refused whole");
    app.assert_ledger_agrees().await;
}

/// A customer's later request in a round goes on from the state its earlier one left in
/// memory (`Carry`). One refused before it debits (a conflict) leaves that state be; one
/// refused after debiting in memory (its second event's fee takes the debt past the largest
/// amount, with nothing written) cannot leave it changed: the round fails and each request,
/// run alone, gets its own answer. Either way each is answered, and stores, what it would
/// have alone.
async fn a_later_request_refused_mid_batch_leaves_no_debit_behind(app: TestApp) {
    let world = World::build(&app).await;
    let big = 600_000_000_000_000_i64;
    let requests = vec![
        world.request("c1", &[("h1", "image_generated", json!({}))]),
        world.request("c1", &[("h1", "image_generated", json!({"other": "content"}))]),
        world.request("c1", &[("h2", "big_job", json!({"units": big})), ("h3", "big_job", json!({"units": big}))]),
        world.request("c1", &[("h4", "image_generated", json!({}))]),
    ];
    let catalog = Arc::new(CatalogCache::default());
    let rounds = Arc::new(IngestRounds::new(app.store.clone(), catalog, 0));
    let answers = tokio::task::spawn_blocking(move || rounds.run_round(Mode::Test, requests)).await.unwrap();
    let answers: Vec<String> = answers.iter().map(answer_text).collect();
    assert!(answers[0].starts_with("IngestReport") && answers[3].starts_with("IngestReport"), "{answers:#?}");
    assert!(answers[1].starts_with("Conflict"), "{answers:#?}");
    assert!(answers[2].starts_with("Invalid") && answers[2].contains("debt"), "{answers:#?}");
    let c1 = customer_state(&app, &world, "c1").await;
    assert!(c1.contains("available 8") && c1.contains("h1") && c1.contains("h4") && !c1.contains("h2"), "{c1}");
    app.assert_ledger_agrees().await;
}

/// A debit in a round flags its account for the auto top-up job when its balance falls to its
/// customer's threshold, as a request alone does (the round reads once which customers have
/// any auto top-up, and flags nothing for the others).
async fn a_round_flags_accounts_for_their_auto_top_up(app: TestApp) {
    let world = World::build(&app).await;
    let flagged = |customer: String| {
        let store = app.store.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                store.read(|conn| {
                    let sql = "SELECT maybe_due FROM auto_top_ups WHERE customer_id = $1";
                    conn.query_optional(sql, &[tally_store::Value::from(customer.as_str())])?
                        .map(|row| row.int(0))
                        .transpose()
                })
            })
            .await
            .unwrap()
            .unwrap()
        }
    };
    // c1 tops up when IMG falls to 9.5; no payment method, so the job itself never acts on it.
    let setting = AutoTopUp {
        mode: Mode::Test,
        key: AccountKey { customer_id: world.id("c1").to_owned(), name: "default".into(), asset: "IMG".into() },
        enabled: true,
        threshold: "9.5".parse().unwrap(),
        amount: 10.into(),
        currency: "USD".into(),
        payment_method_id: None,
        failures: 0,
        retry_at: None,
        in_flight_top_up_id: None,
        last_error: None,
        updated_at: app.clock.now(),
    };
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || {
        store.write(|conn| {
            auto_top_ups::put(conn, &setting)?;
            // As a pass of the job leaves it finding the balance (10) above the threshold.
            conn.execute("UPDATE auto_top_ups SET maybe_due = 0", &[])
        })
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(flagged(world.id("c1").to_owned()).await, Some(0));

    let requests = vec![
        world.request("c2", &[("g1", "image_generated", json!({}))]),
        world.request("c1", &[("g2", "image_generated", json!({}))]),
    ];
    let catalog = Arc::new(CatalogCache::default());
    let store = app.store.clone();
    let answers = tokio::task::spawn_blocking(move || {
        store.write_rerunnable(move |conn| event_ops::ingest_round(conn, Mode::Test, &requests, catalog.as_ref()))
    })
    .await
    .unwrap()
    .expect("the round is kept");
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    assert_eq!(flagged(world.id("c1").to_owned()).await, Some(1), "c1's IMG fell to 9: flagged");
}

on_both_backends!(
    a_round_answers_and_stores_what_the_requests_alone_would,
    a_request_that_fails_after_writing_fails_the_round_and_each_runs_alone,
    a_round_flags_accounts_for_their_auto_top_up,
    a_later_request_refused_mid_batch_leaves_no_debit_behind,
);
