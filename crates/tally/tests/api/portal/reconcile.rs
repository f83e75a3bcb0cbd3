//! Reconciling and reading the billing portal, over HTTP on both backends: the activity page
//! (every movement, newest first by its own time, filters, keyset pages, CSV with exact
//! amounts), balances broken down into grants, an overdrawn account's warning and "pay now"
//! link, the subscription, and times and numbers in the customer's zone and language.

use super::{catalog, customer_with_minutes, generate_clips, no_redirects, portal_cookie};
use crate::harness::{body, TestApp};
use crate::on_both_backends;
use chrono::{DateTime, Datelike, Duration, Months, NaiveDate, TimeZone, Utc};
use serde_json::json;
use tally_core::Mode;
use tally_store::repo::activity::{self as activity_repo, Filter};

/// Whole credits, a cent each.
const CREDITS: &str =
    r#"{"code":"CRED","name":"Credits","precision":0,"label":"credits","rates":[{"source":"USD","rate":0.01}]}"#;

/// A monthly plan: a $10 fee, 150 included credits a month, renders at a credit each.
const PRO: &str = r#"{
  "name": "Pro", "code": "pro", "publish": true,
  "prices": [
    { "name": "Monthly fee", "type": "fixed",
      "billing_model": { "type": "recurring", "recurring": { "interval": "month" } },
      "pricing": [ { "asset": "USD", "values": [ { "unit_price": 10 } ] } ] },
    { "name": "Renders", "type": "usage_based", "billing_model": { "type": "real_time" },
      "usage_calculation": { "event_type": "render", "usage_type": "unit" },
      "pricing": [ { "asset": "CRED", "values": [ { "unit_price": 1 } ] } ] }
  ],
  "entitlements": [
    { "name": "Included credits", "asset": "CRED", "amount": 150, "purpose": "bundled",
      "lifecycle": { "duration": "month", "refresh": { "strategy": "expire_and_replace" } } }
  ]
}"#;

pub(super) async fn plans(app: &TestApp) {
    catalog(app).await;
    app.post("/assets", body(CREDITS)).await.expect(201);
    app.post("/products", body(PRO)).await.expect(201);
}

/// A customer given $10 and subscribed to Glitch Video and Pro, whose $10 fee is paid first
/// from the balance.
pub(super) async fn subscribed(app: &TestApp, name: &str) -> String {
    let customer = app.customer(name).await;
    app.fund(&customer, "USD", "10", "plan-money").await;
    let products = json!({"products": [{"code": "glitch_video"}, {"code": "pro"}]});
    app.post(&format!("/customers/{customer}/subscriptions"), products).await.expect(201);
    customer
}

async fn adjust(app: &TestApp, customer: &str, json: String) {
    app.post(&format!("/customers/{customer}/wallet/adjustments"), body(&json)).await.expect(201);
}

pub(super) async fn charge(app: &TestApp, customer: &str, id: &str, asset: &str, amount: &str) {
    let charge = format!(r#"{{"transaction_id":"{id}","asset":"{asset}","amount":{amount},"subject":"batch-7"}}"#);
    app.post(&format!("/customers/{customer}/wallet/charges"), body(&charge)).await.expect(201);
}

pub(super) async fn renders(app: &TestApp, customer: &str, prefix: &str, count: usize, occurred_at: DateTime<Utc>) {
    let events: Vec<_> = (0..count)
        .map(|index| {
            json!({"id": format!("{prefix}-{index}"), "event_type": "render", "occurred_at": occurred_at.to_rfc3339(),
                   "subject": "scene-1"})
        })
        .collect();
    app.post("/events", json!({"customer_id": customer, "events": events})).await.expect(204);
}

/// GET a portal page with the session cookie and extra headers: (status, body).
async fn page(app: &TestApp, path: &str, cookie: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = no_redirects().get(format!("{}{path}", app.base)).header("cookie", cookie);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The activity rows of a page: (data-kind, the row's text without tags).
fn rows(page: &str) -> Vec<(String, String)> {
    page.split("<tr data-transaction=")
        .skip(1)
        .map(|row| {
            let kind = row.split("data-kind=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
            let row = row.split("</tr>").next().unwrap();
            let mut text = String::new();
            let mut in_tag = false;
            for c in row.chars() {
                match c {
                    '<' => in_tag = true,
                    '>' if in_tag => {
                        in_tag = false;
                        text.push('|');
                    }
                    c if !in_tag => text.push(c),
                    _ => {}
                }
            }
            (kind, text)
        })
        .collect()
}

fn kinds(page: &str) -> Vec<String> {
    rows(page).into_iter().map(|(kind, _)| kind).collect()
}

async fn activity_lists_every_movement_newest_first_with_filters_and_csv(app: TestApp) {
    plans(&app).await;
    let start = app.clock.now();
    let ada = subscribed(&app, "Ada").await; // +10 USD, plan fee -10 USD, 150 included credits
    app.clock.advance(Duration::minutes(1));
    app.fund(&ada, "USD", "25", "usd-in").await;
    app.clock.advance(Duration::minutes(1));
    let expires = (start + Duration::days(2)).to_rfc3339();
    adjust(
        &app,
        &ada,
        format!(
            r#"{{"transaction_id":"gift-1","asset":"VIDMIN","amount":20,"reason":"gift","expires_at":"{expires}"}}"#
        ),
    )
    .await;
    app.clock.advance(Duration::minutes(1));
    renders(&app, &ada, "render", 3, app.clock.now()).await;
    app.clock.advance(Duration::minutes(1));
    charge(&app, &ada, "render-fee", "USD", "0.005").await;
    app.clock.advance(Duration::minutes(1));
    adjust(
        &app,
        &ada,
        r#"{"transaction_id":"refund-1","asset":"USD","amount":-1.25,"reason":"external_refund","description":"Refund of an unused render"}"#.into(),
    )
    .await;
    // Sent last, occurred just after the subscription began: older than all but the plan's
    // own movements.
    renders(&app, &ada, "late", 1, start + Duration::seconds(30)).await;
    // The gift expires unused two days in.
    app.clock.advance(Duration::days(3));

    let cookie = portal_cookie(&app, &ada).await;
    let (status, all) = page(&app, "/portal/activity", &cookie, &[]).await;
    assert_eq!(status, 200, "{all}");
    let mut found = kinds(&all);
    // The plan's fee and its included credits are made at one instant, in either order.
    found[9..11].sort();
    assert_eq!(
        found,
        [
            "expiry",
            "adjustment",
            "usage",
            "usage",
            "usage",
            "usage",
            "promotion",
            "adjustment",
            "usage",
            "included",
            "plan_fee",
            "adjustment"
        ],
        "newest first by each movement's own time: {all}"
    );
    let rows = rows(&all);
    assert!(rows[0].1.contains("Expired") && rows[0].1.contains("-20.00 video minutes"), "{:?}", rows[0]);
    assert!(rows[1].1.contains("Refund") && rows[1].1.contains("-$1.25"), "{:?}", rows[1]);
    assert!(rows[2].1.contains("batch-7") && rows[2].1.contains("-$0.005"), "a sub-cent fee, exact: {:?}", rows[2]);
    assert!(
        rows[3].1.contains("Pro · Renders · quantity 1")
            && rows[3].1.contains("scene-1")
            && rows[3].1.contains("-1 credit|"),
        "usage fees name product, price, quantity and subject: {:?}",
        rows[3]
    );
    assert!(rows[6].1.contains("Promotional credit") && rows[6].1.contains("20.00 video minutes"), "{:?}", rows[6]);
    assert!(rows[7].1.contains("$25.00"), "{:?}", rows[7]);
    assert!(rows.iter().any(|(kind, text)| kind == "included" && text.contains("150 credits")), "{rows:?}");
    assert!(rows.iter().any(|(kind, text)| kind == "plan_fee" && text.contains("-$10.00")), "{rows:?}");

    // Filters: by kind, by account, by days.
    let (_, usage) = page(&app, "/portal/activity?kind=usage", &cookie, &[]).await;
    assert_eq!(kinds(&usage), ["usage"; 5]);
    let (_, dollars) = page(&app, "/portal/activity?account=default%3AUSD", &cookie, &[]).await;
    assert_eq!(kinds(&dollars), ["adjustment", "usage", "adjustment", "plan_fee", "adjustment"], "{dollars}");
    let expiry_day = (start + Duration::days(2)).format("%Y-%m-%d");
    let (_, that_day) = page(&app, &format!("/portal/activity?from={expiry_day}&to={expiry_day}"), &cookie, &[]).await;
    assert_eq!(kinds(&that_day), ["expiry"], "only the expiry happened that day");
    let (_, refunds) = page(&app, "/portal/activity?kind=adjustment&account=default:USD", &cookie, &[]).await;
    assert_eq!(kinds(&refunds), ["adjustment"; 3]);
    assert!(refunds.contains(r#"<option value="adjustment" selected>"#), "the form keeps the filter");

    // The CSV has every row with its exact amount.
    let response = no_redirects()
        .get(format!("{}/portal/activity.csv?account=default:USD", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = response.text().await.unwrap();
    let lines: Vec<&str> = csv.split("\r\n").filter(|line| !line.is_empty()).collect();
    assert_eq!(
        lines[0],
        "time,kind,account_name,asset,amount,description,product,price,quantity,subject,transaction_id,local_time"
    );
    let amounts: Vec<&str> = lines[1..].iter().map(|line| line.split(',').nth(4).unwrap()).collect();
    assert_eq!(amounts, ["-1.25", "-0.005", "25", "-10", "10"], "{csv}");
    assert!(lines[2].contains(",usage,default,USD,-0.005,,,,,batch-7,render-fee,"), "{}", lines[2]);
    let (_, all_csv) = page(&app, "/portal/activity.csv", &cookie, &[]).await;
    assert_eq!(all_csv.split("\r\n").filter(|line| !line.is_empty()).count(), 13, "a header and 12 rows: {all_csv}");
    assert!(
        all_csv.contains(",usage,default,CRED,-1,Pro: Renders,Pro,Renders,1,scene-1,tally_event_render-"),
        "{all_csv}"
    );

    // Keyset pages of 3 read the same rows as one page, with none twice.
    let store = app.store.clone();
    let id = ada.clone();
    tokio::task::spawn_blocking(move || {
        store
            .read(|conn| {
                let filter = Filter::default();
                let (whole, next) = activity_repo::page(conn, Mode::Test, &id, &filter, None, 100)?;
                assert_eq!((whole.len(), next), (12, None));
                let mut paged = Vec::new();
                let mut cursor = None;
                loop {
                    let (items, next) = activity_repo::page(conn, Mode::Test, &id, &filter, cursor.as_ref(), 3)?;
                    paged.extend(items);
                    match next {
                        Some(next) => cursor = Some(next),
                        None => break,
                    }
                }
                assert_eq!(paged, whole);
                Ok::<(), tally_store::StoreError>(())
            })
            .unwrap()
    })
    .await
    .unwrap();
    let (_, first) = page(&app, "/portal/activity", &cookie, &[]).await;
    assert!(!first.contains("rel=\"next\""), "one page holds 12 rows");
    app.assert_ledger_agrees().await;
}

/// The activity's queries read by their indexes, from the cursor on: no sort of all rows and
/// no count, however many fees the customer has.
async fn activity_queries_use_the_customer_time_indexes(app: TestApp) {
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || {
        store
            .read(|conn| {
                let cursors = [
                    None,
                    activity_repo::Cursor::parse("1700000000000000t5"),
                    activity_repo::Cursor::parse("1700000000000000ffee_01abc"),
                ];
                let postgres = conn.dialect() == tally_store::Dialect::Postgres;
                if postgres {
                    // Tiny test tables make a sequential scan cheapest; the plan for a large
                    // table is the one with the index, which this asks for.
                    conn.execute("SET LOCAL enable_seqscan = off", &[])?;
                }
                let categories = std::iter::once(None).chain(activity_repo::Category::ALL.map(Some));
                for (cursor, category) in categories.flat_map(|category| cursors.iter().map(move |c| (c, category))) {
                    let filter = Filter {
                        from: Some(Utc.timestamp_opt(1_600_000_000, 0).unwrap()),
                        category,
                        ..Filter::default()
                    };
                    for (sql, values) in activity_repo::queries("cust_x", Mode::Test, &filter, cursor.as_ref(), 51) {
                        let explain = if postgres { "EXPLAIN " } else { "EXPLAIN QUERY PLAN " };
                        let plan: Vec<String> = conn
                            .query(&format!("{explain}{sql}"), &values)?
                            .iter()
                            .map(|row| if postgres { row.text(0) } else { row.text(3) })
                            .collect::<Result<_, _>>()?;
                        let plan = plan.join("\n");
                        // A category of one kind reads that kind's range: a customer's
                        // other movements may be a million fees (docs/benchmarks.md).
                        let one_kind = category.is_some_and(|category| category.condition().starts_with("t.kind = "));
                        let index = if sql.contains("FROM event_fees") {
                            "event_fees_by_customer_time"
                        } else if one_kind {
                            "transactions_by_kind_time"
                        } else {
                            "transactions_by_time"
                        };
                        assert!(plan.contains(index), "{sql}\nreads by {index}:\n{plan}");
                        assert!(
                            !plan.contains("TEMP B-TREE") && !plan.contains("Sort"),
                            "no sort of all rows:\n{plan}"
                        );
                        assert!(!plan.to_uppercase().contains("COUNT"), "{plan}");
                    }
                }
                Ok::<(), tally_store::StoreError>(())
            })
            .unwrap()
    })
    .await
    .unwrap();
}

async fn balances_break_down_into_grants_and_overdrawn_accounts_say_what_is_owed(app: TestApp) {
    plans(&app).await;
    let bea = subscribed(&app, "Bea").await;
    charge(&app, &bea, "render-bill", "USD", "3.5").await; // past the $0 left after the plan fee
    let now = app.clock.now();
    let (in_ten_days, in_five_days) = ((now + Duration::days(10)).to_rfc3339(), (now + Duration::days(5)).to_rfc3339());
    adjust(
        &app,
        &bea,
        format!(
            r#"{{"transaction_id":"promo","asset":"CRED","amount":20,"reason":"gift","expires_at":"{in_ten_days}"}}"#
        ),
    )
    .await;
    adjust(
        &app,
        &bea,
        format!(
            r#"{{"transaction_id":"later","asset":"CRED","amount":1,"reason":"gift","effective_at":"{in_five_days}"}}"#
        ),
    )
    .await;
    // One 2-minute clip with no minutes: 2 minutes owed, at $0.10 each.
    let clip = json!({"customer_id": bea, "events": [{"id": "clip-1", "event_type": "video_generated",
        "occurred_at": now.to_rfc3339()}]});
    app.post("/events", clip).await.expect(204);

    let cookie = portal_cookie(&app, &bea).await;
    let (status, home) = page(&app, "/portal", &cookie, &[("accept-language", "en-GB")]).await;
    assert_eq!(status, 200, "{home}");
    let card = |account: &str| {
        home.split(&format!(r#"data-account="{account}""#)).nth(1).unwrap().split("</div>").next().unwrap().to_owned()
    };
    let day = |at: DateTime<Utc>| {
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sept", "Oct", "Nov", "Dec"];
        format!("{} {}", at.day(), months[at.month0() as usize])
    };
    let renewal = app.get(&format!("/customers/{bea}")).await.expect(200).body["subscriptions"][0]["renews_at"]
        .as_str()
        .unwrap()
        .parse::<DateTime<Utc>>()
        .unwrap();
    let credits = card("default:CRED");
    assert!(credits.contains(&format!("<li>150 included credits, renew {}</li>", day(renewal))), "{credits}");
    assert!(
        credits.contains(&format!("<li>20 promotional credits expire {}</li>", day(now + Duration::days(10)))),
        "{credits}"
    );
    assert!(
        credits.contains(&format!("<li>1 promotional credit arrives {}</li>", day(now + Duration::days(5)))),
        "{credits}"
    );
    assert!(credits.contains(r#"<p class="balance">170 credits</p>"#), "{credits}");

    let dollars = card("default:USD");
    assert!(home.contains(r#"<div class="card overdrawn" data-account="default:USD">"#), "{dollars}");
    assert!(dollars.contains(r#"<p class="owed" role="alert">Overdrawn: you owe US$3.50."#), "{dollars}");
    assert!(dollars.contains(r#"href="/portal/top-ups?option=USD:USD&amp;amount=3.50">Pay now</a>"#), "{dollars}");
    let minutes = card("default:VIDMIN");
    assert!(minutes.contains("you owe 2.00 video minutes."), "{minutes}");
    assert!(
        minutes.contains(r#"href="/portal/top-ups?option=VIDMIN:USD&amp;amount=0.20""#),
        "$0.10 a minute: {minutes}"
    );
    // The link fills in the top-up form.
    let (_, form) = page(&app, "/portal/top-ups?option=VIDMIN:USD&amount=0.20", &cookie, &[]).await;
    assert!(form.contains(r#"value="0.20""#) && form.contains(r#"<option value="VIDMIN:USD" selected"#), "{form}");

    // The plan: its name, what it includes, the next renewal and what it costs.
    let plan = home.split(r#"<div class="card plan">"#).nth(1).unwrap().split("</div>").next().unwrap();
    assert!(plan.contains("Glitch Video + Pro"), "{plan}");
    assert!(plan.contains("<li>150 credits every month</li>"), "{plan}");
    assert!(plan.contains("<li>Monthly fee: US$10.00 every month</li>"), "{plan}");
    let renews = format!("{} {}", day(renewal), renewal.year());
    assert!(plan.contains(&format!("Renews {renews} for US$10.00.")), "{plan}");

    // A hold (a long job's reservation) shows on its card and leaves the balance at once.
    let hold = json!({"transaction_id": "render-job", "asset": "CRED", "amount": 30});
    app.post(&format!("/customers/{bea}/wallet/holds"), hold).await.expect(201);
    let (_, home) = page(&app, "/portal", &cookie, &[("accept-language", "en-GB")]).await;
    let credits = home.split(r#"data-account="default:CRED""#).nth(1).unwrap().split("</div>").next().unwrap();
    assert!(credits.contains("<li>30 credits on hold</li>"), "{credits}");
    assert!(credits.contains(r#"<p class="balance">140 credits</p>"#), "{credits}");

    // Singular and plural: a one-credit render says "-1 credit".
    renders(&app, &bea, "one", 1, app.clock.now()).await;
    let (_, activity) = page(&app, "/portal/activity?kind=usage", &cookie, &[]).await;
    assert!(activity.contains(">-1 credit<"), "{activity}");
}

/// The next 2 January at 23:30 UTC after `now`.
fn late_on_2_january(now: DateTime<Utc>) -> DateTime<Utc> {
    let at = Utc.with_ymd_and_hms(now.year() + 1, 1, 2, 23, 30, 0).unwrap();
    assert!(at > now);
    at
}

async fn times_follow_the_customers_zone_and_numbers_their_language(app: TestApp) {
    plans(&app).await;
    let cy = app.customer("Cy").await;
    app.fund(&cy, "USD", "5000", "usd-in").await;
    let at = late_on_2_january(app.clock.now());
    app.clock.advance(at - app.clock.now());
    charge(&app, &cy, "big-render", "USD", "1234.5").await;
    let year = at.year();
    let cookie = portal_cookie(&app, &cy).await;
    let tokyo = format!("{cookie}; tally_tz=Asia/Tokyo");
    let cases = [
        ("en-US", format!("Jan 3, {year}, 8:30 AM"), "-$1,234.50"),
        ("en-GB,en;q=0.8", format!("3 Jan {year}, 08:30"), "-US$1,234.50"),
        ("de-DE,de;q=0.9", format!("03.01.{year}, 08:30"), "-1.234,50\u{a0}$"),
        ("fr-FR", format!("3 janv. {year}, 08:30"), "-1\u{202f}234,50\u{a0}$US"),
        ("ja-JP", format!("Jan 3, {year}, 8:30 AM"), "-$1,234.50"),
    ];
    for (language, when, amount) in &cases {
        let (status, activity) = page(&app, "/portal/activity", &tokyo, &[("accept-language", language)]).await;
        assert_eq!(status, 200);
        let first = &rows(&activity)[0].1;
        assert!(first.contains(&format!("|{when}|")), "{language}: 23:30 UTC is the next morning in Tokyo: {first}");
        assert!(first.contains(&format!("|{amount}|")), "{language}: {first}");
        assert!(activity.contains(r#"data-tz="Asia/Tokyo""#));
    }
    // Without the cookie, or with a zone the IANA database does not know: UTC.
    for cookie in [cookie.clone(), format!("{cookie}; tally_tz=Mars/Olympus")] {
        let (_, activity) = page(&app, "/portal/activity", &cookie, &[]).await;
        assert!(rows(&activity)[0].1.contains(&format!("|Jan 2, {year}, 11:30 PM|")), "{activity}");
        assert!(activity.contains(r#"data-tz="UTC""#));
    }
    // Days are the customer's: 3 January in Tokyo holds the charge; 3 January in UTC does not.
    let third = format!("/portal/activity?from={year}-01-03&to={year}-01-03");
    assert_eq!(kinds(&page(&app, &third, &tokyo, &[]).await.1), ["usage"]);
    assert!(kinds(&page(&app, &third, &cookie, &[]).await.1).is_empty());
    // The CSV keeps UTC and adds the customer's local time.
    let (_, csv) = page(&app, "/portal/activity.csv?kind=usage", &tokyo, &[]).await;
    let line = csv.split("\r\n").nth(1).unwrap();
    assert!(line.starts_with(&format!("{year}-01-02T23:30:")), "{csv}");
    assert!(line.contains(",usage,default,USD,-1234.5,"), "exact: {csv}");
    assert!(line.contains(&format!(",big-render,{year}-01-03 08:30:")), "{csv}");
    // The home page's charts and lists follow the zone and language too.
    let (_, home) = page(&app, "/portal", &tokyo, &[("accept-language", "de")]).await;
    assert!(home.contains("1.234,50\u{a0}$"), "{home}");
    assert!(home.contains(&format!("03.01.{year}, 08:30")), "recent usage in Tokyo time: {home}");
}

/// The first of the earliest coming month whose eve is ahead of `now` from 18:00 UTC on.
fn first_of_a_coming_month(now: DateTime<Utc>) -> NaiveDate {
    let mut first = now.date_naive().with_day(1).unwrap();
    loop {
        first = first.checked_add_months(Months::new(1)).unwrap();
        if (first - Duration::days(1)).and_hms_opt(18, 0, 0).unwrap().and_utc() > now {
            return first;
        }
    }
}

/// The text pieces of some HTML, tags dropped, blank pieces left out.
fn pieces(html: &str) -> Vec<String> {
    html.split('<')
        .filter_map(|part| part.split_once('>').map(|(_, text)| text.trim().to_owned()))
        .filter(|text| !text.is_empty())
        .collect()
}

/// The home page's "Spent this month" section, as text pieces.
fn month_section(home: &str) -> Vec<String> {
    pieces(home.split("Spent this month").nth(1).unwrap().split("Spend over the last").next().unwrap())
}

/// The rows of the home page's chart tables: (day, product, amount).
fn chart_rows(home: &str) -> Vec<(String, String, String)> {
    let charts = home.split("Spend over the last").nth(1).unwrap().split("Recent usage").next().unwrap();
    charts
        .split("<tbody>")
        .skip(1)
        .flat_map(|body| body.split("</tbody>").next().unwrap().split("</tr>"))
        .filter_map(|row| match pieces(row).as_slice() {
            [day, product, amount] => Some((day.clone(), product.clone(), amount.clone())),
            _ => None,
        })
        .collect()
}

/// The month and the days are the customer's: in Kolkata (UTC+05:30) a fee at 00:10 on the
/// 1st (18:40 UTC the day before) is this month's and the 1st's, and one at 23:50 on the
/// last day of the month before (18:20 UTC, the same UTC hour) is neither; in UTC the same
/// holds at 00:10 and 23:50 UTC. Exact although the hourly rollups hold both Kolkata fees in
/// one hour: the part of the hour before midnight is read from the fees.
async fn this_months_spend_and_the_chart_days_are_the_customers_own(app: TestApp) {
    catalog(&app).await;
    let asha = customer_with_minutes(&app, "Asha", "20").await;
    let una = customer_with_minutes(&app, "Una", "20").await;
    let first = first_of_a_coming_month(app.clock.now());
    let last = first - Duration::days(1);
    let at = |day: NaiveDate, hour: u32, minute: u32| day.and_hms_opt(hour, minute, 0).unwrap().and_utc();
    // Each fee is a 2-minute clip and a charge: 0.10 on the last day, 0.01 on the 1st.
    let fees = [
        (&asha, at(last, 18, 20), "eve", "0.10"),
        (&asha, at(last, 18, 40), "first", "0.01"),
        (&una, at(last, 23, 50), "eve", "0.10"),
        (&una, at(first, 0, 10), "first", "0.01"),
    ];
    for (customer, when, name, amount) in fees {
        app.clock.advance(when - app.clock.now());
        generate_clips(&app, customer, &format!("{name}-{customer}"), 1).await;
        charge(&app, customer, &format!("{name}-charge-{customer}"), "VIDMIN", amount).await;
    }
    app.clock.advance(at(first + Duration::days(1), 12, 0) - app.clock.now());

    let day = |day: NaiveDate| day.format("%b %-d").to_string();
    let row =
        |on: NaiveDate, product: &str, amount: &str| (day(on), product.to_owned(), format!("{amount} video minutes"));
    let split = [
        row(last, "Glitch Video", "2.00"),
        row(last, "Other charges", "0.10"),
        row(first, "Glitch Video", "2.00"),
        row(first, "Other charges", "0.01"),
    ];
    for (customer, zone) in [(&asha, "Asia/Kolkata"), (&una, "UTC")] {
        let cookie = format!("{}; tally_tz={zone}", portal_cookie(&app, customer).await);
        let (status, home) = page(&app, "/portal", &cookie, &[]).await;
        assert_eq!(status, 200, "{home}");
        let month = month_section(&home);
        assert!(month.contains(&format!("(since {})", day(first))), "{zone}: {month:?}");
        assert!(
            month.contains(&"2.01 video minutes".to_owned()),
            "{zone}: the 00:10 clip and charge are this month's, the 23:50 ones are not: {month:?}"
        );
        let rows = chart_rows(&home);
        for expected in &split {
            assert!(rows.contains(expected), "{zone}: {expected:?} in {rows:?}");
        }
        assert_eq!(rows.len(), split.len(), "{zone}: {rows:?}");
    }
    // Read in UTC, both of Kolkata's fees fall on the last day: nothing this month.
    let utc = format!("{}; tally_tz=UTC", portal_cookie(&app, &asha).await);
    let (_, home) = page(&app, "/portal", &utc, &[]).await;
    assert!(month_section(&home).contains(&"Nothing spent yet this month.".to_owned()), "{:?}", month_section(&home));
    let rows = chart_rows(&home);
    assert_eq!(rows, [row(last, "Glitch Video", "4.00"), row(last, "Other charges", "0.11")]);
    // In Kathmandu (UTC+05:45) midnight is 18:15 UTC: both are the 1st's.
    let kathmandu = format!("{}; tally_tz=Asia/Kathmandu", portal_cookie(&app, &asha).await);
    let (_, home) = page(&app, "/portal", &kathmandu, &[]).await;
    assert!(month_section(&home).contains(&"4.11 video minutes".to_owned()), "{:?}", month_section(&home));
    assert_eq!(chart_rows(&home), [row(first, "Glitch Video", "4.00"), row(first, "Other charges", "0.11")]);
    app.assert_ledger_agrees().await;
}

on_both_backends!(
    this_months_spend_and_the_chart_days_are_the_customers_own,
    activity_lists_every_movement_newest_first_with_filters_and_csv,
    activity_queries_use_the_customer_time_indexes,
    balances_break_down_into_grants_and_overdrawn_accounts_say_what_is_owed,
    times_follow_the_customers_zone_and_numbers_their_language,
);
