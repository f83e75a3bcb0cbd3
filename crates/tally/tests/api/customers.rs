//! Customers: create, read, list with filters, update.

use crate::harness::TestApp;
use crate::on_both_backends;
use serde_json::{json, Value};

async fn create_get_and_update(app: TestApp) {
    let created = app
        .post("/customers", json!({"name": "Ada Lovelace", "external_id": "u-1", "email": "ada@example.com", "metadata": {"plan": "pro"}}))
        .await
        .expect(201);
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("cust_"));
    assert_eq!(created.body["subscriptions"], json!([]));

    let customer = app.get(&format!("/customers/{id}")).await.expect(200);
    assert_eq!(customer.body["name"], "Ada Lovelace");
    assert_eq!(customer.body["external_id"], "u-1");
    assert_eq!(customer.body["email"], "ada@example.com");
    assert_eq!(customer.body["metadata"]["plan"], "pro");
    assert_eq!(customer.body["active_subscription_count"], 0);
    assert!(customer.body["created_at"].is_string());

    let updated = app.patch(&format!("/customers/{id}"), json!({"name": "Ada King", "email": null})).await.expect(204);
    assert!(updated.text.is_empty());
    let customer = app.get(&format!("/customers/{id}")).await.expect(200);
    assert_eq!(customer.body["name"], "Ada King");
    assert!(customer.body.get("email").is_none(), "null clears the email");
    assert_eq!(customer.body["external_id"], "u-1", "fields left out stay");

    app.patch("/customers/cust_missing", json!({"name": "x"})).await.expect(404);
    app.patch(&format!("/customers/{id}"), json!({"name": null})).await.expect(422);
    app.patch(&format!("/customers/{id}"), json!({"email": "not-an-email"})).await.expect(422);
    app.get("/customers/cust_missing").await.expect(404);
}

async fn external_ids_are_unique_per_mode(app: TestApp) {
    app.post("/customers", json!({"name": "A", "external_id": "dup"})).await.expect(201);
    let duplicate = app.post("/customers", json!({"name": "B", "external_id": "dup"})).await.expect(409);
    assert_eq!(duplicate.content_type(), "application/problem+json");
    let other = app.post("/customers", json!({"name": "C", "external_id": "other"})).await.expect(201);
    let other_id = other.body["id"].as_str().unwrap();
    app.patch(&format!("/customers/{other_id}"), json!({"external_id": "dup"})).await.expect(409);
    app.patch(&format!("/customers/{other_id}"), json!({"external_id": "other"})).await.expect(204);
    assert_eq!(app.get("/customers").await.body["total_count"], 2);
}

async fn list_filters_and_pages(app: TestApp) {
    for index in 0..23 {
        let email = format!("user{index}@example.com");
        app.post(
            "/customers",
            json!({"name": format!("User {index}"), "external_id": format!("ext-{index}"), "email": email}),
        )
        .await
        .expect(201);
    }
    app.post("/customers", json!({"name": "Grace Hopper", "email": "Grace@Example.com"})).await.expect(201);
    let page = app.get("/customers").await.expect(200);
    assert_eq!(page.body["total_count"], 24);
    assert_eq!(page.body["items"].as_array().unwrap().len(), 20);
    let rest = app.get("/customers?offset=20").await.expect(200);
    assert_eq!(rest.body["items"].as_array().unwrap().len(), 4);
    let by_external = app.get("/customers?external_id=ext-7").await.expect(200);
    assert_eq!(by_external.body["total_count"], 1);
    assert_eq!(by_external.body["items"][0]["name"], "User 7");
    let by_email = app.get("/customers?email=grace@example.com").await.expect(200);
    assert_eq!(by_email.body["items"][0]["name"], "Grace Hopper", "email matches case-insensitively");
    // `name` is a prefix, in any case (issue 12: an index serves it), not a substring.
    let by_name = app.get("/customers?name=GRACE%20h").await.expect(200);
    assert_eq!(by_name.body["total_count"], 1);
    assert_eq!(by_name.body["items"][0]["name"], "Grace Hopper");
    assert_eq!(app.get("/customers?name=hopper").await.expect(200).body["total_count"], 0);
    assert_eq!(app.get("/customers?name=user%201").await.expect(200).body["total_count"], 11, "User 1, 10 to 19");
    let none = app.get("/customers?name=%25").await.expect(200);
    assert_eq!(none.body["total_count"], 0, "LIKE wildcards in the filter are literal");

    // Keyset pages: `next` walks forward through every customer once, `prev` back.
    let names = |page: &Value| -> Vec<String> {
        page["items"].as_array().unwrap().iter().map(|item| item["name"].as_str().unwrap().to_owned()).collect()
    };
    let first = app.get("/customers?limit=10").await.expect(200).body;
    assert!(first.get("prev").is_none(), "the first page has no prev");
    let next = first["next"].as_str().unwrap();
    let second = app.get(&format!("/customers?limit=10&next={next}")).await.expect(200).body;
    assert_eq!(second["offset"], 0);
    let third =
        app.get(&format!("/customers?limit=10&next={}", second["next"].as_str().unwrap())).await.expect(200).body;
    assert!(third.get("next").is_none(), "the last page has no next");
    let walked: Vec<String> = [&first, &second, &third].iter().flat_map(|page| names(page)).collect();
    let mut by_offset = Vec::new();
    for offset in [0, 10, 20] {
        by_offset.extend(names(&app.get(&format!("/customers?limit=10&offset={offset}")).await.expect(200).body));
    }
    assert_eq!(walked, by_offset, "cursors and offsets give the same pages");
    assert_eq!(walked.len(), 24);
    let back = app.get(&format!("/customers?limit=10&prev={}", third["prev"].as_str().unwrap())).await.expect(200).body;
    assert_eq!(names(&back), names(&second), "prev gives the page before");
    // A cursor belongs to its list and to one direction; with offset it is refused.
    assert_eq!(app.get(&format!("/events?next={next}")).await.status.as_u16(), 422);
    assert_eq!(app.get(&format!("/customers?prev={next}")).await.status.as_u16(), 422);
    assert_eq!(app.get(&format!("/customers?offset=10&next={next}")).await.status.as_u16(), 422);
    assert_eq!(app.get("/customers?next=zz").await.status.as_u16(), 422);
}

/// An offset reads and skips every row before it, so a list that gives cursors takes one up
/// to 10,000 (an empty page past the end is still a page) and refuses a deeper one with a 422
/// that names `next`, which costs the same at any depth.
async fn offsets_past_the_bound_are_refused_naming_next(app: TestApp) {
    app.post("/customers", json!({"name": "Ada"})).await.expect(201);
    let deepest = app.get("/customers?offset=10000&limit=100").await.expect(200);
    assert_eq!(deepest.body["items"], json!([]));
    assert_eq!(deepest.body["offset"], 10000);
    assert_eq!(deepest.body["total_count"], 1);
    for list in ["/customers", "/events", "/products", "/assets", "/vendors"] {
        let refused = app.get(&format!("{list}?offset=10001")).await.expect(422);
        assert_eq!(refused.content_type(), "application/problem+json", "{list}");
        let message = refused.body["errors"]["offset"][0].as_str().unwrap();
        assert!(message.contains("10000") && message.contains("`next`"), "{list}: {message}");
    }
    // Lists without cursors keep any offset.
    app.get("/customers/stats?offset=10001").await.expect(200);
}

async fn customer_validation(app: TestApp) {
    let long = "x".repeat(256);
    let reply = app
        .post(
            "/customers",
            json!({"name": "", "external_id": long, "email": "nope", "metadata": {"k": "v".repeat(501)}}),
        )
        .await
        .expect(422);
    for field in ["name", "external_id", "email", "metadata.k"] {
        assert!(reply.body["errors"][field].is_array(), "expected an error on {field}: {}", reply.body);
    }
    let missing = app.post("/customers", json!({"email": "a@b.co"})).await.expect(422);
    assert!(missing.body["errors"]["$"].is_array() || missing.body["errors"]["name"].is_array(), "{}", missing.body);
    assert_eq!(app.get("/customers").await.body["total_count"], 0);
}

/// `GET /customers?status=` filters by whether a customer has an active subscription.
async fn list_by_subscription_status(app: TestApp) {
    let asset = r#"{"code":"IMG","name":"Images","precision":2,"label":"image","rates":[{"source":"USD","rate":0.1}]}"#;
    app.post("/assets", crate::harness::body(asset)).await.expect(201);
    app.post("/products", crate::harness::body(tally::bench::GLITCH_IMAGES)).await.expect(201);
    let subscribed = app
        .post(
            "/customers",
            json!({"name": "Subscribed", "subscriptions": [{"products": [{"code": "glitch_images_std"}]}]}),
        )
        .await
        .expect(201);
    let subscribed = subscribed.body["id"].as_str().unwrap().to_owned();
    let idle = app.customer("Idle").await;
    let ids = |reply: &crate::harness::Reply| -> Vec<String> {
        reply.body["items"].as_array().unwrap().iter().map(|item| item["id"].as_str().unwrap().to_owned()).collect()
    };
    let active = app.get("/customers?status=active").await.expect(200);
    assert_eq!(ids(&active), vec![subscribed.clone()]);
    assert_eq!(active.body["total_count"], 1);
    let inactive = app.get("/customers?status=INACTIVE").await.expect(200);
    assert_eq!(ids(&inactive), vec![idle]);
    let all = app.get("/customers").await.expect(200);
    assert_eq!(all.body["total_count"], 2);
    let refused = app.get("/customers?status=sleeping").await.expect(422);
    assert!(refused.body["errors"]["status"].is_array(), "{}", refused.text);
}

on_both_backends!(
    create_get_and_update,
    external_ids_are_unique_per_mode,
    list_filters_and_pages,
    offsets_past_the_bound_are_refused_naming_next,
    customer_validation,
    list_by_subscription_status,
);
