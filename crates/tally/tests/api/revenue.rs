//! The revenue report (`GET /reports/revenue`, `tally report revenue`): a worked example with
//! exact figures (paid credit bought at a rate, used, expired, refunded; promotional and bundled
//! credit that never counts; a plan fee recognised ratably), and random histories whose every
//! period reconciles (opening + additions − recognised − breakage − refunds = closing), chains
//! into the next, ends where the grants stand, and reads the same in any chunk size.

use crate::harness::{body, TestApp};
use crate::on_both_backends;
use chrono::{DateTime, Duration, Months, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::str::FromStr;

fn decimal(value: &Value) -> Decimal {
    Decimal::from_str(&value.to_string()).unwrap_or_else(|_| panic!("not a decimal: {value}"))
}

fn at(instant: DateTime<Utc>) -> String {
    tally_http::types::format_timestamp(instant)
}

fn path(from: DateTime<Utc>, to: DateTime<Utc>, group_by: &str) -> String {
    format!("/reports/revenue?period_from={}&period_to={}&group_by={group_by}", at(from), at(to))
}

/// The line of `block` whose `key` is `value` and whose asset is `asset`.
fn line<'a>(report: &'a Value, block: &str, asset: &str, key: &str, value: &str) -> &'a Value {
    report[block]
        .as_array()
        .unwrap()
        .iter()
        .find(|line| line["asset"] == asset && line[key] == value)
        .unwrap_or_else(|| panic!("no {block} line {asset} {value} in {report:#}"))
}

/// Each field summed over the line's periods.
fn totals(line: &Value, fields: &[&str]) -> Vec<Decimal> {
    fields
        .iter()
        .map(|field| line["periods"].as_array().unwrap().iter().map(|period| decimal(&period[*field])).sum())
        .collect()
}

const REVENUE_FIELDS: [&str; 6] =
    ["opening_deferred", "additions", "recognised", "breakage", "refunds", "closing_deferred"];
const CREDIT_FIELDS: [&str; 6] = ["opening", "issued", "used", "expired", "removed", "closing"];

/// Every period of every line reconciles and opens where the previous one closed; returns the
/// last closing of each line.
fn assert_reconciles(report: &Value) {
    for (block, fields) in [("revenue", REVENUE_FIELDS), ("non_revenue_credit", CREDIT_FIELDS)] {
        for line in report[block].as_array().unwrap() {
            let mut previous: Option<Decimal> = None;
            for period in line["periods"].as_array().unwrap() {
                let figure = |index: usize| decimal(&period[fields[index]]);
                let (opening, closing) = (figure(0), figure(5));
                assert_eq!(
                    opening + figure(1) - figure(2) - figure(3) - figure(4),
                    closing,
                    "{block} line {} does not reconcile in {period:#}",
                    line["asset"]
                );
                if let Some(previous) = previous {
                    assert_eq!(
                        previous, opening,
                        "{block} line {}: a period opens where the last closed",
                        line["asset"]
                    );
                }
                previous = Some(closing);
            }
        }
    }
}

fn last_closing(line: &Value, field: &str) -> Decimal {
    decimal(&line["periods"].as_array().unwrap().last().unwrap()[field])
}

async fn top_up(app: &TestApp, customer: &str, amount: &str, asset: &str, credit_expires_at: Option<DateTime<Utc>>) {
    let mut request = json!({
        "customer_id": customer, "amount": body(amount), "currency": "USD", "destination": {"asset": asset},
        "return_url": "https://platform.example/ok", "failure_url": "https://platform.example/failed",
    });
    if let Some(expires) = credit_expires_at {
        request["credit_expires_at"] = json!(at(expires));
    }
    let created = app.post("/top-ups", request).await.expect(201);
    let id = created.body["id"].as_str().unwrap();
    app.post(&format!("/test-helpers/top-ups/{id}/succeed"), json!({})).await.expect(200);
}

async fn adjust(app: &TestApp, customer: &str, id: &str, asset: &str, amount: &str, reason: &str) -> u16 {
    let request =
        body(&format!(r#"{{"transaction_id":"{id}","asset":"{asset}","amount":{amount},"reason":"{reason}"}}"#));
    app.post(&format!("/customers/{customer}/wallet/adjustments"), request).await.status.as_u16()
}

async fn charge(app: &TestApp, customer: &str, id: &str, asset: &str, amount: &str) -> u16 {
    let request = body(&format!(r#"{{"transaction_id":"{id}","asset":"{asset}","amount":{amount}}}"#));
    app.post(&format!("/customers/{customer}/wallet/charges"), request).await.status.as_u16()
}

const CREDITS: &str = r#"{"code":"CRED","name":"Credits","precision":2,"rates":[{"source":"USD","rate":0.05}]}"#;

/// A $30 monthly plan paid from the USD wallet that includes 300 bundled credits a month.
const PLAN: &str = r#"{
  "name": "Plan", "code": "plan", "publish": true,
  "prices": [{ "name": "Monthly fee", "type": "fixed",
    "billing_model": { "type": "recurring", "recurring": { "interval": "month" } },
    "pricing": [ { "asset": "USD", "values": [ { "unit_price": 30 } ] } ] }],
  "entitlements": [
    { "name": "Included credits", "asset": "CRED", "amount": 300, "purpose": "bundled",
      "lifecycle": { "duration": "month", "refresh": { "strategy": "expire_and_replace" } } }
  ]
}"#;

/// $100 buys 2000 credits (expiring in 10 days) and $50 buys 1000 at $0.05; 500 promotional
/// credits are given. A charge of 700 takes the 500 promotional, then 200 of the first
/// purchase (it expires first): $10 recognised. A refund of 400 takes the newest purchase: $20.
/// The first purchase's 1800 left expire: $90 of breakage. A charge of 100 takes the second:
/// $5. Then a $30 plan starts, paid from $30 of USD credit added by an external top-up (valued
/// 1:1): recognised ratably over its month, never when the fee is taken; its 300 bundled
/// credits are not revenue.
async fn worked_example(app: TestApp) {
    app.post("/assets", body(CREDITS)).await.expect(201);
    app.post("/products", body(PLAN)).await.expect(201);
    let customer = app.customer("Finance").await;
    let start = app.clock.now();
    top_up(&app, &customer, "100", "CRED", Some(start + Duration::days(10))).await;
    top_up(&app, &customer, "50", "CRED", None).await;
    assert_eq!(adjust(&app, &customer, "gift-1", "CRED", "500", "gift").await, 201);
    assert_eq!(charge(&app, &customer, "charge-1", "CRED", "700").await, 201);
    assert_eq!(adjust(&app, &customer, "refund-1", "CRED", "-400", "external_refund").await, 201);
    app.clock.advance(Duration::days(11));
    assert_eq!(charge(&app, &customer, "charge-2", "CRED", "100").await, 201);
    app.fund(&customer, "USD", "30", "usd-1").await;
    let created = app
        .post(&format!("/customers/{customer}/subscriptions"), json!({"products": [{"code": "plan"}]}))
        .await
        .expect(201);
    let instant = |field: &str| -> DateTime<Utc> { created.body[field].as_str().unwrap().parse().unwrap() };
    let (subscribed, plan_end) = (instant("started_at"), instant("renews_at"));
    assert_eq!(plan_end, subscribed.checked_add_months(Months::new(1)).unwrap());

    let from = start - Duration::hours(1);
    let to = subscribed + Duration::days(10);
    let report = app.get(&path(from, to, "day")).await.expect(200).body;
    assert_eq!(report["group_by"], "day");
    assert_reconciles(&report);

    let credits = line(&report, "revenue", "CRED", "currency", "USD");
    let sums = totals(credits, &REVENUE_FIELDS[1..5]);
    let expected: Vec<Decimal> =
        ["150", "15", "90", "20"].iter().map(|text| Decimal::from_str(text).unwrap()).collect();
    assert_eq!(sums, expected, "additions, recognised, breakage, refunds of CRED in USD");
    assert_eq!(decimal(&credits["periods"][0]["opening_deferred"]), Decimal::ZERO);
    assert_eq!(last_closing(credits, "closing_deferred"), Decimal::from(25), "500 credits left at $0.05");
    // The expiry falls on its own day (10 days in), not when it was settled.
    let expiry_day = credits["periods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|period| decimal(&period["breakage"]) != Decimal::ZERO)
        .unwrap();
    let expired_at = start + Duration::days(10);
    assert!(
        expiry_day["period_start"].as_str().unwrap() <= at(expired_at).as_str()
            && at(expired_at).as_str() < expiry_day["period_end"].as_str().unwrap()
    );

    // The plan fee: $30 in, recognised by the share of its month that passed (10 days).
    let dollars = line(&report, "revenue", "USD", "currency", "USD");
    let elapsed = Decimal::from((to - subscribed).num_microseconds().unwrap());
    let length = Decimal::from((plan_end - subscribed).num_microseconds().unwrap());
    let share = (Decimal::from(30) * elapsed / length).round_dp(12);
    let sums = totals(dollars, &REVENUE_FIELDS[1..5]);
    assert_eq!(sums, vec![Decimal::from(30), share, Decimal::ZERO, Decimal::ZERO]);
    assert_eq!(last_closing(dollars, "closing_deferred"), Decimal::from(30) - share);
    assert!(share > Decimal::from(9) && share < Decimal::from(11), "about a third of the month: {share}");

    // Never revenue: promotional and bundled credit, in units.
    let promotion = line(&report, "non_revenue_credit", "CRED", "kind", "promotion");
    assert_eq!(
        totals(promotion, &CREDIT_FIELDS[1..5]),
        vec![Decimal::from(500), Decimal::from(500), Decimal::ZERO, Decimal::ZERO]
    );
    let bundled = line(&report, "non_revenue_credit", "CRED", "kind", "bundled");
    assert_eq!(last_closing(bundled, "closing"), Decimal::from(300));
    assert_eq!(report["revenue"].as_array().unwrap().len(), 2, "no other revenue line: {report:#}");

    // Monthly periods hold the same totals; filters by currency and asset.
    let monthly = app.get(&path(from, to, "month")).await.expect(200).body;
    assert_reconciles(&monthly);
    let credits = line(&monthly, "revenue", "CRED", "currency", "USD");
    assert_eq!(totals(credits, &REVENUE_FIELDS[1..5]), expected);
    let only_usd_asset = app.get(&format!("{}&asset=USD", path(from, to, "month"))).await.expect(200).body;
    assert_eq!(only_usd_asset["revenue"].as_array().unwrap().len(), 1);
    assert_eq!(only_usd_asset["non_revenue_credit"], json!([]));
    let in_euros = app.get(&format!("{}&currency=EUR", path(from, to, "month"))).await.expect(200).body;
    assert_eq!(in_euros["revenue"], json!([]));

    // A later report opens with what this one closed with.
    let later = app.get(&path(to, to + Duration::days(3), "day")).await.expect(200).body;
    let credits_later = line(&later, "revenue", "CRED", "currency", "USD");
    assert_eq!(decimal(&credits_later["periods"][0]["opening_deferred"]), Decimal::from(25));

    // Bad input is a 422 naming the parameter.
    for (query, field) in [
        ("period_from=2026-01-01", "period_to"),
        ("period_from=2026-02-01&period_to=2026-01-01", "period_to"),
        ("period_from=2026-01-01&period_to=2026-02-01&group_by=week", "group_by"),
        ("period_from=2020-01-01&period_to=2026-01-01&group_by=day", "period_from"),
        ("period_from=2026-01-01&period_to=2026-02-01&currency=XX", "currency"),
    ] {
        let refused = app.get(&format!("/reports/revenue?{query}")).await.expect(422);
        assert!(refused.text.contains(field), "{query}: {}", refused.text);
    }
    app.assert_ledger_agrees().await;
}

/// A deterministic generator (SplitMix64), so every run replays the same histories.
struct Random(u64);

impl Random {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (mixed ^ (mixed >> 31)) % bound
    }
}

const CASES: u64 = 3;
const STEPS: u64 = 24;

/// Random histories of top-ups (fiat, and credits at a rate, some expiring soon), gifts,
/// charges, refunds, debit adjustments and time passing: every period of the daily report
/// reconciles and chains, the last closing of each revenue line is what its paid grants hold
/// at their cost basis, and reading a chunk of 2 entries at a time gives the same report.
async fn random_histories_reconcile(app: TestApp) {
    app.post("/assets", body(CREDITS)).await.expect(201);
    let start = app.clock.now();
    let mut customers = Vec::new();
    for case in 0..CASES {
        let mut random = Random(case);
        let customer = app.customer(&format!("Random {case}")).await;
        customers.push(customer.clone());
        for step in 0..STEPS {
            let id = format!("c{case}-s{step}");
            let asset = if random.below(2) == 0 { "USD" } else { "CRED" };
            let amount = (1 + random.below(40)).to_string();
            match random.below(10) {
                0..=2 => {
                    let expires =
                        (random.below(2) == 0).then(|| app.clock.now() + Duration::hours(1 + random.below(48) as i64));
                    top_up(&app, &customer, &amount, asset, expires).await;
                }
                3 => {
                    adjust(&app, &customer, &id, asset, &amount, "gift").await;
                }
                4 | 5 => {
                    charge(&app, &customer, &id, asset, &amount).await;
                }
                6 => {
                    adjust(&app, &customer, &id, asset, &format!("-{amount}"), "external_refund").await;
                }
                7 => {
                    adjust(&app, &customer, &id, asset, &format!("-{amount}"), "other").await;
                }
                _ => app.clock.advance(Duration::hours(random.below(30) as i64)),
            }
        }
        // Settle every expiry that fell due: a charge of nothing is refused, a balance read settles
        // in memory only, so a one-unit gift and its reversal write what was due.
        app.clock.advance(Duration::hours(49));
        for asset in ["USD", "CRED"] {
            assert_eq!(adjust(&app, &customer, &format!("c{case}-settle-{asset}"), asset, "1", "gift").await, 201);
        }
    }
    let to = app.clock.now() + Duration::days(1);
    let from = start - Duration::days(1);
    let report = app.get(&path(from, to, "day")).await.expect(200).body;
    assert_reconciles(&report);
    assert!(report["revenue"].as_array().unwrap().len() == 2, "{report:#}");
    // The histories exercise every flow.
    for (asset, flows) in [("USD", [true, true, true, true]), ("CRED", [true, true, true, true])] {
        let sums = totals(line(&report, "revenue", asset, "currency", "USD"), &REVENUE_FIELDS[1..5]);
        let moved: Vec<bool> = sums.iter().map(|sum| !sum.is_zero()).collect();
        assert_eq!(moved, flows, "{asset}: additions, recognised, breakage, refunds all move: {sums:?}");
    }

    // What paid grants hold now, at their cost basis: 1 for USD, 0.05 for CRED.
    let mut held = [Decimal::ZERO, Decimal::ZERO];
    for customer in &customers {
        for (index, account) in ["default:USD", "default:CRED"].iter().enumerate() {
            let listed =
                app.get(&format!("/customers/{customer}/wallet/{account}/grants?purpose=paid&limit=100")).await;
            if listed.status.as_u16() == 404 {
                continue;
            }
            for grant in listed.body["items"].as_array().unwrap() {
                held[index] += decimal(&grant["available"]) + decimal(&grant["pending_in"]);
            }
        }
    }
    let usd = line(&report, "revenue", "USD", "currency", "USD");
    assert_eq!(last_closing(usd, "closing_deferred"), held[0]);
    let credits = line(&report, "revenue", "CRED", "currency", "USD");
    assert_eq!(last_closing(credits, "closing_deferred"), held[1] * Decimal::from_str("0.05").unwrap());

    // The same report read two entries at a time.
    let store = app.store.clone();
    let (small, whole) = tokio::task::spawn_blocking(move || {
        use tally_store::ops::revenue::{report, report_in_chunks, RevenueQuery};
        let query = RevenueQuery {
            period_from: from,
            period_to: to,
            granularity: tally_core::revenue::Granularity::Day,
            asset: None,
            currency: None,
        };
        let small = store.read(|conn| report_in_chunks(conn, tally_core::Mode::Test, &query, 2)).unwrap();
        let whole = store.read(|conn| report(conn, tally_core::Mode::Test, &query)).unwrap();
        (small, whole)
    })
    .await
    .unwrap();
    assert_eq!(small, whole);
    app.assert_ledger_agrees().await;
}

fn run_tally(database_url: &str, args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    crate::server_process::tally_command(database_url, dir.path()).args(args).output().expect("run tally")
}

/// `tally report revenue` prints the API's figures: CSV exact, the table rounded to cents.
async fn report_revenue_command(app: TestApp) {
    app.post("/assets", body(CREDITS)).await.expect(201);
    let customer = app.customer("Cli").await;
    let start = app.clock.now();
    top_up(&app, &customer, "10", "CRED", None).await;
    assert_eq!(charge(&app, &customer, "cli-1", "CRED", "3.33").await, 201);
    let (from, to) = (at(start - Duration::hours(1)), at(start + Duration::hours(1)));
    let url = app.database.url.clone();
    let (csv, table) = tokio::task::spawn_blocking(move || {
        let args = |format: &'static str| {
            vec![
                "report",
                "revenue",
                "--mode",
                "test",
                "--from",
                &from,
                "--to",
                &to,
                "--group-by",
                "day",
                "--format",
                format,
            ]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<String>>()
        };
        let run = |format| {
            let args = args(format);
            let output = run_tally(&url, &args.iter().map(String::as_str).collect::<Vec<_>>());
            assert!(output.status.success(), "tally report revenue: {}", String::from_utf8_lossy(&output.stderr));
            String::from_utf8(output.stdout).unwrap()
        };
        (run("csv"), run("table"))
    })
    .await
    .unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(
        rows[0],
        "block,asset,currency,kind,period_start,period_end,opening,additions,recognised,breakage,refunds,closing"
    );
    // 200 credits at $0.05; 3.33 used: $0.1665 recognised, exactly.
    let revenue: Vec<&&str> = rows.iter().filter(|row| row.starts_with("revenue,CRED,USD,,")).collect();
    assert!(!revenue.is_empty(), "{csv}");
    let total: Vec<Decimal> = (6..12)
        .map(|column| revenue.iter().map(|row| Decimal::from_str(row.split(',').nth(column).unwrap()).unwrap()).sum())
        .collect();
    assert_eq!(total[1], Decimal::from(10));
    assert_eq!(total[2], Decimal::from_str("0.1665").unwrap());
    assert_eq!(
        Decimal::from_str(revenue.last().unwrap().split(',').nth(11).unwrap()).unwrap(),
        Decimal::from_str("9.8335").unwrap()
    );
    assert!(table.lines().next().unwrap().starts_with("line"), "{table}");
    assert!(table.contains("CRED revenue in USD"), "{table}");
    assert!(table.contains("9.83") && !table.contains("9.8335"), "rounded to cents for display: {table}");
    let refused = tokio::task::spawn_blocking({
        let url = app.database.url.clone();
        move || run_tally(&url, &["report", "revenue", "--mode", "test", "--from", "2026-02-01", "--to", "2026-01-01"])
    })
    .await
    .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("period_to"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// Runs `sql` behind Tally's back and returns what `ledger verify` then finds.
async fn tampered(app: &TestApp, sql: &str) -> Vec<String> {
    let (store, sql) = (app.store.clone(), sql.to_owned());
    tokio::task::spawn_blocking(move || {
        store.write(|conn: &mut dyn tally_store::Conn| conn.execute(&sql, &[])).unwrap();
        store.read(tally_store::ops::ledger::verify).unwrap().problems
    })
    .await
    .unwrap()
}

/// `ledger verify` checks what the report reads beside the postings: a grant's cost basis
/// against the ledger's record of its issue, and that each plan fee period names a fee entry.
async fn verify_checks_what_the_report_reads(app: TestApp) {
    app.post("/assets", body(CREDITS)).await.expect(201);
    app.post("/products", body(PLAN)).await.expect(201);
    let customer = app.customer("Audited").await;
    top_up(&app, &customer, "10", "CRED", None).await;
    app.fund(&customer, "USD", "30", "usd-1").await;
    app.post(&format!("/customers/{customer}/subscriptions"), json!({"products": [{"code": "plan"}]}))
        .await
        .expect(201);
    app.assert_ledger_agrees().await;
    let problems = tampered(&app, "UPDATE grants SET cost_basis = '0.06' WHERE cost_basis IS NOT NULL").await;
    assert!(problems.iter().any(|problem| problem.contains("cost basis")), "{problems:?}");
    tampered(&app, "UPDATE grants SET cost_basis = '0.05' WHERE cost_basis IS NOT NULL").await;
    app.assert_ledger_agrees().await;
    let problems = tampered(
        &app,
        "INSERT INTO ledger_fee_periods (mode, customer_id, transaction_id, service_from, service_until)
         VALUES ('test', 'cust_nobody', 'tally_nothing', 1, 2)",
    )
    .await;
    assert!(problems.iter().any(|problem| problem.contains("plan fee periods")), "{problems:?}");
}

on_both_backends!(
    worked_example,
    random_histories_reconcile,
    report_revenue_command,
    verify_checks_what_the_report_reads
);
