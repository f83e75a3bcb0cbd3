//! Webhooks: the topics, the outbox, and managing destinations.
//!
//! [`emit`] records an event and one pending delivery per enabled destination subscribed to
//! its topic, in the caller's transaction: the event commits with the change that caused it
//! or not at all (an outbox). The background worker delivers it later. An event no
//! destination wants is not stored at all, so a platform without webhooks pays one small
//! query per change and nothing more.
//!
//! The payload builders below are the one place each topic's `data` is shaped (documented in
//! docs/webhooks.md). Operations call them with a line or two inside their transactions:
//! - `customer.created`: `ops::customers::create`;
//! - `transaction.completed`: every wallet transaction as it is written (`ops::wallet::record`
//!   for adjustments, charges, usage fees, subscription fees and entitlement grants; expiry in
//!   `ops::wallet::open_account`). Usage sends one per fee transaction, so one per usage event
//!   and priced asset: a receiver sees exactly what the wallet's transaction list shows;
//! - `wallet.balance_depleted`: wherever an account is saved after a change
//!   (`ops::wallet::save_account`), when `available` went from above zero to zero or below;
//! - `credit_grant.expired`: expiry settlement in `ops::wallet::open_account`;
//! - `subscription.activated`: `ops::subscriptions::activate`;
//! - `top_up.succeeded`, `top_up.failed`, `auto_top_up.failed`: the top-up operations, through
//!   [`top_up`] and [`auto_top_up_failed`];
//! - `event.unbilled`: `ops::events::ingest`, once per usage event stored unbilled (a replay
//!   stores nothing, so sends nothing);
//! - `hold.created`, `hold.captured`, `hold.released`, `hold.expired`: `ops::holds`, through
//!   [`hold_changed`] (`hold.captured` once per capture, also for each usage fee captured
//!   from a hold).

use super::OpError;
use crate::conn::Conn;
use crate::ids;
use crate::repo::customers::Customer;
use crate::repo::events::StoredEvent;
use crate::repo::holds::{Hold, HoldStatus};
use crate::repo::subscriptions::{Subscription, SubscriptionStatus};
use crate::repo::transactions::Transaction;
use crate::repo::wallets::{Account, AccountKey};
use crate::repo::webhooks::{self as repo, Destination, Event};
use crate::StoreError;
use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tally_core::wallet::AccountState;
use tally_core::Mode;

/// The most destinations one mode may have.
pub const MAX_DESTINATIONS: i64 = 50;

/// What happened. `as_str` is the `type` of the envelope and what destinations subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    CustomerCreated,
    SubscriptionActivated,
    TransactionCompleted,
    WalletBalanceDepleted,
    CreditGrantExpired,
    TopUpSucceeded,
    TopUpFailed,
    AutoTopUpFailed,
    EventUnbilled,
    HoldCreated,
    HoldCaptured,
    HoldReleased,
    HoldExpired,
}

impl Topic {
    pub const ALL: [Topic; 13] = [
        Topic::CustomerCreated,
        Topic::SubscriptionActivated,
        Topic::TransactionCompleted,
        Topic::WalletBalanceDepleted,
        Topic::CreditGrantExpired,
        Topic::TopUpSucceeded,
        Topic::TopUpFailed,
        Topic::AutoTopUpFailed,
        Topic::EventUnbilled,
        Topic::HoldCreated,
        Topic::HoldCaptured,
        Topic::HoldReleased,
        Topic::HoldExpired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Topic::CustomerCreated => "customer.created",
            Topic::SubscriptionActivated => "subscription.activated",
            Topic::TransactionCompleted => "transaction.completed",
            Topic::WalletBalanceDepleted => "wallet.balance_depleted",
            Topic::CreditGrantExpired => "credit_grant.expired",
            Topic::TopUpSucceeded => "top_up.succeeded",
            Topic::TopUpFailed => "top_up.failed",
            Topic::AutoTopUpFailed => "auto_top_up.failed",
            Topic::EventUnbilled => "event.unbilled",
            Topic::HoldCreated => "hold.created",
            Topic::HoldCaptured => "hold.captured",
            Topic::HoldReleased => "hold.released",
            Topic::HoldExpired => "hold.expired",
        }
    }

    pub fn parse(text: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|topic| topic.as_str() == text)
    }
}

/// Records an event of `topic` and queues it for every enabled platform destination that
/// subscribes to it, in the caller's transaction. Returns the event's id (made even when no
/// destination wants the event, which is then not stored). `data` is built only when some
/// destination wants the event: most changes happen where nobody listens, and usage fees are
/// the hot path.
///
/// Destinations with `connect` set receive nothing: they are for connected accounts' events,
/// and Tally has no connected accounts yet.
pub fn emit(
    conn: &mut dyn Conn,
    mode: Mode,
    topic: Topic,
    data: impl FnOnce() -> Value,
    customer_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<String, StoreError> {
    let destinations = repo::enabled_destinations(conn, mode.platform())?;
    emit_to(conn, mode, &destinations, topic, data, customer_id, now)
}

/// [`emit`] to `enabled`, the platform's enabled destinations as
/// `repo::enabled_destinations` read them in this transaction (a batch reads them once).
pub fn emit_to(
    conn: &mut dyn Conn,
    mode: Mode,
    enabled: &[Destination],
    topic: Topic,
    data: impl FnOnce() -> Value,
    customer_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<String, StoreError> {
    // A connected account's events go to the platform's destinations that asked for
    // connected accounts' events (`connect: true`), and are kept with them, under the
    // platform's mode, naming the account; the platform's own go to the others.
    let account = mode.connected_account();
    let platform = mode.platform();
    let destinations: Vec<&Destination> = enabled
        .iter()
        .filter(|destination| destination.connect == account.is_some() && destination.wants(topic.as_str()))
        .collect();
    if destinations.is_empty() {
        return Ok(ids::new_id("evt"));
    }
    let event = new_event(topic, data(), customer_id, account, now);
    repo::insert_event(conn, platform, &event)?;
    for destination in &destinations {
        repo::insert_delivery(conn, platform, &event, &destination.id)?;
    }
    Ok(event.id)
}

fn new_event(
    topic: Topic,
    data: Value,
    customer_id: Option<&str>,
    account_id: Option<&str>,
    now: DateTime<Utc>,
) -> Event {
    Event {
        id: ids::new_id("evt"),
        topic: topic.as_str().to_owned(),
        customer_id: customer_id.map(str::to_owned),
        account_id: account_id.map(str::to_owned),
        data: data.to_string(),
        created_at: now,
    }
}

/// Sends a sample event of `topic`: to `destination_id` alone whatever it subscribes to and
/// whether or not it is enabled (an explicit test), or else like [`emit`] to every enabled
/// destination that subscribes to the topic. Returns the event's id.
pub fn send_test(
    conn: &mut dyn Conn,
    mode: Mode,
    topic: Topic,
    destination_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<String, OpError> {
    let data = sample_data(topic, now);
    let Some(destination_id) = destination_id else {
        return Ok(emit(conn, mode, topic, || data, None, now)?);
    };
    let destination = require(conn, mode.platform(), destination_id)?;
    let event = new_event(topic, data, None, mode.connected_account(), now);
    repo::insert_event(conn, mode.platform(), &event)?;
    repo::insert_delivery(conn, mode.platform(), &event, &destination.id)?;
    Ok(event.id)
}

/// A destination as it is about to be made; the edge has checked the URL and topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDestination {
    pub url: String,
    pub topics: Vec<String>,
    pub connect: bool,
}

pub fn create(
    conn: &mut dyn Conn,
    mode: Mode,
    new: &NewDestination,
    now: DateTime<Utc>,
) -> Result<Destination, OpError> {
    if repo::count_destinations(conn, mode)? >= MAX_DESTINATIONS {
        return Err(OpError::invalid(
            "url",
            format!("at most {MAX_DESTINATIONS} webhook destinations may exist at once; delete one first"),
        ));
    }
    let destination = Destination {
        id: ids::new_id("whd"),
        url: new.url.clone(),
        topics: new.topics.clone(),
        connect: new.connect,
        enabled: true,
        secret: format!("whsec_{}", ids::new_secret(32)),
        created_at: now,
        updated_at: now,
    };
    repo::insert_destination(conn, mode, &destination)?;
    Ok(destination)
}

/// A partial update: `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationPatch {
    pub url: Option<String>,
    pub topics: Option<Vec<String>>,
    pub enabled: Option<bool>,
}

pub fn update(
    conn: &mut dyn Conn,
    mode: Mode,
    id: &str,
    patch: &DestinationPatch,
    now: DateTime<Utc>,
) -> Result<Destination, OpError> {
    let mut destination = require(conn, mode, id)?;
    if let Some(url) = &patch.url {
        destination.url = url.clone();
    }
    if let Some(topics) = &patch.topics {
        destination.topics = topics.clone();
    }
    if let Some(enabled) = patch.enabled {
        destination.enabled = enabled;
    }
    destination.updated_at = now;
    repo::update_destination(conn, mode, &destination)?;
    Ok(destination)
}

/// Deletes a destination; deliveries still pending to it fail.
pub fn delete(conn: &mut dyn Conn, mode: Mode, id: &str, now: DateTime<Utc>) -> Result<(), OpError> {
    if repo::delete_destination(conn, mode, id, now)? {
        Ok(())
    } else {
        Err(not_found(id))
    }
}

pub fn require(conn: &mut dyn Conn, mode: Mode, id: &str) -> Result<Destination, OpError> {
    repo::get_destination(conn, mode, id)?.ok_or_else(|| not_found(id))
}

fn not_found(id: &str) -> OpError {
    OpError::NotFound(format!("webhook destination {id} not found"))
}

// ---- Payloads: one builder per topic, called where the change happens. ----

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// An exact decimal as a JSON number (serde_json keeps the digits: arbitrary precision).
fn number(value: Decimal) -> Value {
    super::wallet::json_number(Some(value))
}

fn account_id(name: &str, asset: &str) -> String {
    format!("{name}:{asset}")
}

/// `customer.created`.
pub fn customer_created(conn: &mut dyn Conn, mode: Mode, customer: &Customer) -> Result<(), StoreError> {
    let data = json!({
        "id": customer.id,
        "name": customer.name,
        "external_id": customer.external_id,
        "email": customer.email,
        "metadata": customer.metadata,
        "created_at": timestamp(customer.created_at),
    });
    emit(conn, mode, Topic::CustomerCreated, || data, Some(&customer.id), customer.created_at).map(drop)
}

fn transaction_data(transaction: &Transaction) -> Value {
    let mut details: Value = serde_json::from_str(&transaction.detail).unwrap_or(Value::Null);
    if let Some(map) = details.as_object_mut() {
        map.retain(|_, value| !value.is_null());
    }
    json!({
        "id": transaction.id,
        "customer_id": transaction.customer_id,
        "type": transaction.kind,
        "account_id": account_id(&transaction.account_name, &transaction.asset),
        "asset": transaction.asset,
        "amount": number(transaction.amount),
        "description": transaction.description,
        "metadata": transaction.metadata,
        "details": details,
        "created_at": timestamp(transaction.created_at),
        "executed_at": transaction.executed_at.map(timestamp),
    })
}

/// `transaction.completed`: a wallet transaction was written.
pub fn transaction_completed(
    conn: &mut dyn Conn,
    mode: Mode,
    transaction: &Transaction,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let destinations = repo::enabled_destinations(conn, mode.platform())?;
    transaction_completed_to(conn, mode, &destinations, transaction, now)
}

/// [`transaction_completed`] to destinations already read in this transaction.
pub fn transaction_completed_to(
    conn: &mut dyn Conn,
    mode: Mode,
    enabled: &[Destination],
    transaction: &Transaction,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let data = || transaction_data(transaction);
    emit_to(conn, mode, enabled, Topic::TransactionCompleted, data, Some(&transaction.customer_id), now).map(drop)
}

/// `wallet.balance_depleted` when `available` went from above zero (as `before`) to zero or
/// below (as saved). Called wherever an account is saved after a change.
pub fn balance_changed(
    conn: &mut dyn Conn,
    mode: Mode,
    before: &AccountState,
    account: &Account,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let after = account.state.available;
    if !(before.available > Decimal::ZERO && after <= Decimal::ZERO) {
        return Ok(());
    }
    let key = &account.key;
    let data = json!({
        "customer_id": key.customer_id,
        "account_id": account_id(&key.name, &key.asset),
        "account_name": key.name,
        "asset": key.asset,
        "previous_available": number(before.available),
        "available": number(after),
        "depleted_at": timestamp(now),
    });
    emit(conn, mode, Topic::WalletBalanceDepleted, || data, Some(&key.customer_id), now).map(drop)
}

/// `credit_grant.expired` and `transaction.completed` for an expiry transaction (whose
/// `detail` names the grant), with the grant as `state` holds it after settlement.
pub fn expiry_recorded(
    conn: &mut dyn Conn,
    mode: Mode,
    key: &AccountKey,
    state: &AccountState,
    transaction: &Transaction,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let detail: Value = serde_json::from_str(&transaction.detail).unwrap_or(Value::Null);
    let grant_id = detail["grant_id"].as_str().unwrap_or_default();
    let grant = state.grants.iter().find(|grant| &*grant.id == grant_id);
    let data = json!({
        "id": grant_id,
        "customer_id": key.customer_id,
        "account_id": account_id(&key.name, &key.asset),
        "asset": key.asset,
        "purpose": grant.map(|grant| grant.purpose.as_str()),
        "amount": grant.map(|grant| number(grant.amount)),
        "expired_amount": number(-transaction.amount),
        "effective_at": grant.map(|grant| timestamp(grant.effective_at)),
        "expired_at": timestamp(transaction.created_at),
        "transaction_id": transaction.id,
    });
    emit(conn, mode, Topic::CreditGrantExpired, || data, Some(&key.customer_id), now)?;
    transaction_completed(conn, mode, transaction, now)
}

/// `subscription.activated`.
pub fn subscription_activated(
    conn: &mut dyn Conn,
    mode: Mode,
    subscription: &Subscription,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    // Activation may end waiting for the customer (a payment) instead: that is not active.
    if subscription.status != SubscriptionStatus::Active {
        return Ok(());
    }
    let products: Vec<Value> = subscription
        .products
        .iter()
        .map(|product| json!({ "id": product.product_id, "version": product.version }))
        .collect();
    // Credyt documents `customer_id`, `subscription_id` and `occurred_at`; Tally adds the
    // subscription as `GET /customers/{id}` shows it.
    let data = json!({
        "id": subscription.id,
        "subscription_id": subscription.id,
        "occurred_at": timestamp(subscription.started_at.unwrap_or(now)),
        "customer_id": subscription.customer_id,
        "status": subscription.status.as_str(),
        "products": products,
        "starts_at": timestamp(subscription.starts_at),
        "started_at": subscription.started_at.map(timestamp),
        "renews_at": subscription.renews_at.map(timestamp),
        "created_at": timestamp(subscription.created_at),
    });
    emit(conn, mode, Topic::SubscriptionActivated, || data, Some(&subscription.customer_id), now).map(drop)
}

/// What a top-up event tells: the top-up as `GET /top-ups/{id}` shows it, and why it failed.
#[derive(Debug, Clone, PartialEq)]
pub struct TopUpNotice {
    pub id: String,
    pub customer_id: String,
    /// In major units of `currency`.
    pub amount: Decimal,
    pub currency: String,
    pub account_name: String,
    pub asset: String,
    /// `succeeded` or `failed`.
    pub status: String,
    /// For failures: why, in words a platform can act on.
    pub failure_reason: Option<String>,
    /// For successes: the wallet transaction that credited the account.
    pub transaction_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

fn top_up_data(notice: &TopUpNotice) -> Value {
    json!({
        "id": notice.id,
        "customer_id": notice.customer_id,
        "amount": number(notice.amount),
        "currency": notice.currency,
        "destination": { "account_name": notice.account_name, "asset": notice.asset },
        "status": notice.status,
        "failure_reason": notice.failure_reason,
        "transaction_id": notice.transaction_id,
        "created_at": timestamp(notice.created_at),
    })
}

/// `top_up.succeeded` or `top_up.failed` (by `succeeded`), for a top-up that settled.
pub fn top_up(
    conn: &mut dyn Conn,
    mode: Mode,
    succeeded: bool,
    notice: &TopUpNotice,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let topic = if succeeded { Topic::TopUpSucceeded } else { Topic::TopUpFailed };
    emit(conn, mode, topic, || top_up_data(notice), Some(&notice.customer_id), now).map(drop)
}

/// What an `auto_top_up.failed` event tells.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoTopUpFailure {
    pub customer_id: String,
    pub account_name: String,
    pub asset: String,
    /// The balance that triggered the auto top-up.
    pub available: Decimal,
    /// The amount it tried to buy, in major units of `currency`.
    pub amount: Decimal,
    pub currency: String,
    pub failure_reason: String,
    /// The top-up it made, when it got that far.
    pub top_up_id: Option<String>,
}

/// `auto_top_up.failed`: an automatic top-up could not be made or did not succeed.
pub fn auto_top_up_failed(
    conn: &mut dyn Conn,
    mode: Mode,
    failure: &AutoTopUpFailure,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let data = json!({
        "customer_id": failure.customer_id,
        "account_id": account_id(&failure.account_name, &failure.asset),
        "asset": failure.asset,
        "available": number(failure.available),
        "amount": number(failure.amount),
        "currency": failure.currency,
        "failure_reason": failure.failure_reason,
        "top_up_id": failure.top_up_id,
        "failed_at": timestamp(now),
    });
    emit(conn, mode, Topic::AutoTopUpFailed, || data, Some(&failure.customer_id), now).map(drop)
}

fn event_unbilled_data(event: &StoredEvent) -> Value {
    let reason = event.unbilled.as_ref();
    json!({
        "id": event.id,
        "customer_id": event.customer_id,
        "event_type": event.event_type,
        "subject": event.subject,
        "occurred_at": timestamp(event.occurred_at),
        "billing_status": "unbilled",
        "unbilled_reason": reason.map(|reason| json!({ "code": reason.code, "message": reason.message })),
        "created_at": timestamp(event.created_at),
    })
}

/// `event.unbilled`: a usage event was stored without fees (its `unbilled` says why).
pub fn event_unbilled(
    conn: &mut dyn Conn,
    mode: Mode,
    event: &StoredEvent,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    emit(conn, mode, Topic::EventUnbilled, || event_unbilled_data(event), Some(&event.customer_id), now).map(drop)
}

/// A hold as `GET /customers/{id}/wallet/holds/{hold_id}` shows it, and for `hold.captured`
/// the capture: its fee transaction, and how much came from the hold and beyond it.
fn hold_data(hold: &Hold, capture: Option<(&Transaction, Decimal, Decimal)>) -> Value {
    let mut data = json!({
        "id": hold.id,
        "customer_id": hold.customer_id,
        "account_id": account_id(&hold.account_name, &hold.asset),
        "asset": hold.asset,
        "status": hold.status.as_str(),
        "amount": number(hold.amount),
        "captured": number(hold.captured),
        "released": number(hold.released),
        "held": number(hold.remaining()),
        "description": hold.description,
        "metadata": hold.metadata,
        "expires_at": timestamp(hold.expires_at),
        "created_at": timestamp(hold.created_at),
        "closed_at": hold.closed_at.map(timestamp),
    });
    if let Some((transaction, from_hold, beyond_hold)) = capture {
        data["capture"] = json!({
            "transaction_id": transaction.id,
            "amount": number(-transaction.amount),
            "from_hold": number(from_hold),
            "beyond_hold": number(beyond_hold),
        });
    }
    data
}

/// `hold.created`, `hold.captured` (with the capture), `hold.released` or `hold.expired`.
pub fn hold_changed(
    conn: &mut dyn Conn,
    mode: Mode,
    topic: Topic,
    hold: &Hold,
    capture: Option<(&Transaction, Decimal, Decimal)>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    emit(conn, mode, topic, || hold_data(hold, capture), Some(&hold.customer_id), now).map(drop)
}

/// A made-up but well-formed `data` for `topic`, for test sends: the same fields a real event
/// carries, with ids no real resource has.
pub fn sample_data(topic: Topic, now: DateTime<Utc>) -> Value {
    let customer_id = "cust_test00000000000000000000";
    let key = AccountKey { customer_id: customer_id.to_owned(), name: "default".into(), asset: "USD".into() };
    let transaction = Transaction {
        customer_id: customer_id.to_owned(),
        id: "txn_test_1".into(),
        kind: "fee".into(),
        account_name: key.name.clone(),
        asset: key.asset.clone(),
        amount: Decimal::new(-125, 2),
        description: Some("Sample charge".into()),
        metadata: Default::default(),
        request_hash: String::new(),
        detail: json!({ "subject": "sample" }).to_string(),
        created_at: now,
        executed_at: Some(now),
    };
    let top_up = |status: &str, failure_reason: Option<&str>| TopUpNotice {
        id: "top_test00000000000000000000".into(),
        customer_id: customer_id.to_owned(),
        amount: Decimal::new(2000, 2),
        currency: "USD".into(),
        account_name: "default".into(),
        asset: "USD".into(),
        status: status.into(),
        failure_reason: failure_reason.map(str::to_owned),
        transaction_id: (status == "succeeded").then(|| "tally_topup_top_test00000000000000000000".to_owned()),
        created_at: now,
    };
    let hold = |status: HoldStatus, captured: i64, released: i64| Hold {
        customer_id: customer_id.to_owned(),
        id: "render-job-1".into(),
        account_name: "default".into(),
        asset: "USD".into(),
        amount: Decimal::new(500, 2),
        captured: Decimal::new(captured, 2),
        released: Decimal::new(released, 2),
        status,
        allow_overdraft: false,
        description: Some("Video render".into()),
        metadata: Default::default(),
        request_hash: String::new(),
        expires_at: now + chrono::Duration::days(1),
        created_at: now,
        updated_at: now,
        closed_at: (status != HoldStatus::Held).then_some(now),
    };
    match topic {
        Topic::CustomerCreated => json!({
            "id": customer_id, "name": "Sample Customer", "external_id": "sample-1",
            "email": "sample@example.com", "metadata": {}, "created_at": timestamp(now),
        }),
        Topic::SubscriptionActivated => json!({
            "id": "sub_test00000000000000000000", "subscription_id": "sub_test00000000000000000000",
            "occurred_at": timestamp(now), "customer_id": customer_id, "status": "active",
            "products": [{ "id": "prp_test00000000000000000000", "version": 1 }],
            "starts_at": timestamp(now), "started_at": timestamp(now), "renews_at": null,
            "created_at": timestamp(now),
        }),
        Topic::TransactionCompleted => transaction_data(&transaction),
        Topic::WalletBalanceDepleted => json!({
            "customer_id": customer_id, "account_id": "default:USD", "account_name": "default", "asset": "USD",
            "previous_available": number(Decimal::new(100, 2)), "available": number(Decimal::new(-25, 2)),
            "depleted_at": timestamp(now),
        }),
        Topic::CreditGrantExpired => json!({
            "id": "grt_test00000000000000000000", "customer_id": customer_id, "account_id": "default:USD",
            "asset": "USD", "purpose": "promotion", "amount": number(Decimal::new(500, 2)),
            "expired_amount": number(Decimal::new(320, 2)), "effective_at": timestamp(now),
            "expired_at": timestamp(now), "transaction_id": "tally_expiry_grt_test00000000000000000000",
        }),
        Topic::TopUpSucceeded => top_up_data(&top_up("succeeded", None)),
        Topic::TopUpFailed => top_up_data(&top_up("failed", Some("the card was declined"))),
        Topic::AutoTopUpFailed => json!({
            "customer_id": customer_id, "account_id": "default:USD", "asset": "USD",
            "available": number(Decimal::new(50, 2)), "amount": number(Decimal::new(2000, 2)), "currency": "USD",
            "failure_reason": "the saved payment method was declined", "top_up_id": null,
            "failed_at": timestamp(now),
        }),
        Topic::HoldCreated => hold_data(&hold(HoldStatus::Held, 0, 0), None),
        Topic::HoldCaptured => {
            let capture = Transaction { id: "capture-1".into(), amount: Decimal::new(-320, 2), ..transaction.clone() };
            hold_data(&hold(HoldStatus::Held, 320, 0), Some((&capture, Decimal::new(320, 2), Decimal::ZERO)))
        }
        Topic::HoldReleased => hold_data(&hold(HoldStatus::Released, 320, 180), None),
        Topic::HoldExpired => hold_data(&hold(HoldStatus::Expired, 0, 500), None),
        Topic::EventUnbilled => event_unbilled_data(&StoredEvent {
            id: "sample-event-1".into(),
            customer_id: customer_id.to_owned(),
            event_type: "completion".into(),
            occurred_at: now,
            subject: Some("sample".into()),
            description: None,
            data: "{}".into(),
            costs: "[]".into(),
            has_fees: false,
            total_fees: None,
            fee_currency: None,
            created_at: now,
            content_hash: String::new(),
            unbilled: Some(crate::repo::events::UnbilledReason {
                code: "missing_volume".into(),
                message: "price \"Tokens\" (prc_test00000000000000000000) of product sample version 1: the event \
                          has no `tokens` field, which this price reads as its volume"
                    .into(),
            }),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip_and_every_topic_has_a_sample() {
        for topic in Topic::ALL {
            assert_eq!(Topic::parse(topic.as_str()), Some(topic));
            assert!(sample_data(topic, Utc::now()).is_object());
        }
        assert_eq!(Topic::parse("*"), None);
        assert_eq!(Topic::parse("customer.deleted"), None);
    }
}
