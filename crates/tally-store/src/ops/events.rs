//! Usage events: priced and debited in real time, exactly once per event id.
//!
//! One call handles one batch for one customer in one transaction. An id names one event per
//! mode: an event already stored for this customer with the same content (`content_hash`) is
//! skipped and changes nothing; an id already used by another customer's event, or by an
//! event with other content, refuses the whole batch with a conflict. Every other event is
//! matched by `event_type` against the usage prices of the product versions the customer's
//! subscriptions were active on when it occurred (the history kept by
//! `repo::subscriptions::record_history`), rated with the customer's tier counters of the
//! period containing `occurred_at`, stored with its fees, and each fee is debited, at arrival,
//! from the default account of its asset with a ledger entry. A price listing several assets
//! bills the event in each of them.
//!
//! Only a malformed batch is refused whole (nothing is stored), with an error per event: the
//! edge refuses what it cannot parse, this module an id repeated in the batch, an unknown
//! vendor, and a fee past the limits on amounts. An event that is well formed but cannot be
//! priced (no subscription when it occurred, no price for its type, no dimensional entry for
//! it, a volume missing or unreadable) is stored unbilled, with an [`UnbilledCode`] and a
//! message, and sends `event.unbilled`: as Credyt says, unmatched usage events are accepted but
//! not billed. An event is priced whole or not at all: when one of the prices its type matches
//! cannot price it, it gets no fee from any, and moves no tier counter.

use super::products::Catalog;
use super::subscriptions::{process_due, run_due};
use super::wallet::{debit, json_number, open_account_for_debits, record_numbered, RESERVED_TRANSACTION_PREFIX};
use super::{holds, webhooks, FieldError, OpError};
use crate::conn::Conn;
use crate::ids;
use crate::repo::customers::DebitContext;
use crate::repo::events::{self, StoredCost, StoredEvent, StoredFee, UnbilledReason};
use crate::repo::holds::Hold;
use crate::repo::rollups::Rollups;
use crate::repo::subscriptions::{self as subscription_repo, ActiveInterval};
use crate::repo::transactions::Transaction;
use crate::repo::wallets::{self, Account, AccountKey, LockedAccount, Touched, TouchedSave};
use crate::repo::{customers, vendors, Metadata};
use crate::StoreError;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use tally_core::catalog::ProductVersion;
use tally_core::ledger::SystemAccount;
use tally_core::pricing::{self, EventData, EventValue, RatingError, Usage, UsagePrice};
use tally_core::Mode;

/// The most conflicting ids one refusal names.
const MAX_CONFLICTS_NAMED: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CustomerRef {
    Id(String),
    ExternalId(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VendorRef {
    Id(String),
    ExternalId(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewCost {
    pub id: String,
    pub vendor: VendorRef,
    pub category: Option<String>,
    pub description: Option<String>,
    pub amount: Decimal,
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub id: String,
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub subject: Option<String>,
    pub description: Option<String>,
    pub data: EventData,
    /// `data` as the JSON it arrived as, to store and show back.
    pub data_json: String,
    /// `costs` as JSON, to store and show back.
    pub costs_json: String,
    pub costs: Vec<NewCost>,
    /// A hold of the customer this event's fees are captured from (see `ops::holds`), for
    /// the fees on the hold's account.
    pub hold_id: Option<String>,
}

impl NewEvent {
    /// [`content_hash`] of the event, and of its `hold_id` when it names one (so events
    /// without one hash as they always did).
    pub fn content_hash(&self) -> String {
        let hash = self.content_hash_without_hold();
        match &self.hold_id {
            None => hash,
            Some(hold_id) => super::request_hash(&format!("{hash}|hold_id={hold_id}")),
        }
    }

    fn content_hash_without_hold(&self) -> String {
        content_hash(
            &self.event_type,
            self.occurred_at,
            self.subject.as_deref(),
            self.description.as_deref(),
            &self.data_json,
            &self.costs_json,
        )
    }
}

/// One value of an event's `data` as rating reads it: a string, a boolean or a number, read
/// exactly from its text; `None` for anything else (an object, a list, `null`, a number past
/// the limits on amounts). The edge refuses an event holding a `None`, so every stored event's
/// `data` reads back whole.
pub fn event_value(value: &serde_json::Value) -> Option<EventValue> {
    match value {
        serde_json::Value::String(text) => Some(EventValue::Text(text.clone())),
        serde_json::Value::Bool(flag) => Some(EventValue::Bool(*flag)),
        serde_json::Value::Number(number) => {
            tally_core::money::parse_exact(number.to_string().trim()).map(EventValue::Number)
        }
        serde_json::Value::Null | serde_json::Value::Array(_) | serde_json::Value::Object(_) => None,
    }
}

impl NewEvent {
    /// A stored event as rating reads it. Its costs were stored with it and are left out.
    pub(crate) fn from_stored(stored: &StoredEvent) -> NewEvent {
        let data = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&stored.data)
            .unwrap_or_default()
            .iter()
            .filter_map(|(key, value)| event_value(value).map(|value| (key.clone(), value)))
            .collect();
        NewEvent {
            id: stored.id.clone(),
            event_type: stored.event_type.clone(),
            occurred_at: stored.occurred_at,
            subject: stored.subject.clone(),
            description: stored.description.clone(),
            data,
            data_json: stored.data.clone(),
            costs_json: stored.costs.clone(),
            costs: Vec::new(),
            hold_id: None,
        }
    }
}

/// What makes two events with one id the same event: SHA-256 of a canonical JSON text of
/// `event_type`, `occurred_at` (the instant, in microseconds), `subject`, `description`
/// (absent and null alike), `data` and `costs` (as JSON values: object keys sorted, numbers
/// compared by value, so `1.50` equals `1.5`, and an absent list or object equals an empty
/// one). Computed from the stored fields as well, for events stored before hashes were kept.
pub fn content_hash(
    event_type: &str,
    occurred_at: DateTime<Utc>,
    subject: Option<&str>,
    description: Option<&str>,
    data_json: &str,
    costs_json: &str,
) -> String {
    // The canonical text of the object of those six fields, written field by field in key
    // order (what `write_canonical` makes of it, without building the object first: this runs
    // for every event). `canonical_text_matches_the_canonical_object` holds the two equal.
    let mut canonical = String::with_capacity(96 + event_type.len() + data_json.len() + costs_json.len());
    canonical.push_str("{\"costs\":");
    write_canonical_text(costs_json, &mut canonical);
    canonical.push_str(",\"data\":");
    write_canonical_text(data_json, &mut canonical);
    canonical.push_str(",\"description\":");
    write_json_text(description, &mut canonical);
    canonical.push_str(",\"event_type\":");
    write_json_text(Some(event_type), &mut canonical);
    canonical.push_str(",\"occurred_at\":");
    canonical.push_str(&occurred_at.timestamp_micros().to_string());
    canonical.push_str(",\"subject\":");
    write_json_text(subject, &mut canonical);
    canonical.push('}');
    super::request_hash(&canonical)
}

/// The canonical text of a stored JSON text (a text that is not JSON counts as a string).
fn write_canonical_text(text: &str, out: &mut String) {
    if text == "{}" || text == "[]" {
        out.push_str(text);
        return;
    }
    let value = serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()));
    write_canonical(&value, out);
}

fn write_json_text(text: Option<&str>, out: &mut String) {
    match text {
        None => out.push_str("null"),
        Some(text) => out.push_str(&serde_json::Value::String(text.to_owned()).to_string()),
    }
}

fn stored_content_hash(event: &StoredEvent) -> String {
    if !event.content_hash.is_empty() {
        return event.content_hash.clone();
    }
    content_hash(
        &event.event_type,
        event.occurred_at,
        event.subject.as_deref(),
        event.description.as_deref(),
        &event.data,
        &event.costs,
    )
}

fn write_canonical(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|left, right| left.0.cmp(right.0));
            out.push('{');
            for (index, (key, item)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Number(number) => {
            let text = number.to_string();
            match text.parse::<Decimal>().or_else(|_| Decimal::from_scientific(&text)) {
                Ok(decimal) => out.push_str(&decimal.normalize().to_string()),
                Err(_) => out.push_str(&text),
            }
        }
        Value::Null | Value::Bool(_) | Value::String(_) => out.push_str(&value.to_string()),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestReport {
    pub stored: usize,
    pub duplicates: usize,
    pub fees: usize,
    /// Of the stored events, how many were stored unbilled.
    pub unbilled: usize,
    /// Fees of the stored events by asset: how many, and their sum (for metrics).
    pub billed: BTreeMap<String, (usize, Decimal)>,
}

/// One fee rated for one event, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct RatedFee {
    pub version: Arc<ProductVersion>,
    pub price_name: String,
    pub fee: pricing::Fee,
    pub volume_field: Option<String>,
}

/// Why a stored event owes no fee: a stable code, for filters and alerts (`as_str` is what the
/// API shows and stores).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnbilledCode {
    /// No subscription of the customer was active at the event's `occurred_at`.
    NoSubscription,
    /// Subscriptions were active then, but no usage price of their versions has the event's type.
    NoMatchingPrice,
    /// A price has the event's type, but none of its dimensional entries matches the event.
    NoMatchingDimension,
    /// A price reads a volume field the event does not carry.
    MissingVolume,
    /// The volume field is not a number, is negative, or has more digits than an amount may.
    InvalidVolume,
    /// The price cannot rate the event (two of its dimensional entries match it equally).
    InvalidPrice,
}

impl UnbilledCode {
    pub const ALL: [UnbilledCode; 6] = [
        UnbilledCode::NoSubscription,
        UnbilledCode::NoMatchingPrice,
        UnbilledCode::NoMatchingDimension,
        UnbilledCode::MissingVolume,
        UnbilledCode::InvalidVolume,
        UnbilledCode::InvalidPrice,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UnbilledCode::NoSubscription => "no_subscription",
            UnbilledCode::NoMatchingPrice => "no_matching_price",
            UnbilledCode::NoMatchingDimension => "no_matching_dimension",
            UnbilledCode::MissingVolume => "missing_volume",
            UnbilledCode::InvalidVolume => "invalid_volume",
            UnbilledCode::InvalidPrice => "invalid_price",
        }
    }

    pub fn parse(text: &str) -> Option<UnbilledCode> {
        UnbilledCode::ALL.into_iter().find(|code| code.as_str() == text)
    }
}

/// Why one event is not billed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unbilled {
    pub code: UnbilledCode,
    pub message: String,
}

/// What rating one event came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Rating {
    /// Priced by every price its type matches (at least one fee).
    Billed(Vec<RatedFee>),
    /// Well formed but not priceable: stored without fees.
    Unbilled(Unbilled),
    /// A fee past the limits on amounts: the batch is refused, with this message.
    Refused(String),
}

/// Rates one event against every usage price of `versions` for its type, reading the tier
/// counters through `counter` and handing the advanced ones to `store_counter`, which the
/// caller keeps only when the event is billed: an event is priced whole or not at all.
pub fn rate_event(
    versions: &[Arc<ProductVersion>],
    event: &NewEvent,
    counter: &mut dyn FnMut(&UsagePrice, i64) -> Result<Usage, OpError>,
    store_counter: &mut dyn FnMut(&UsagePrice, i64, Usage),
) -> Result<Rating, OpError> {
    if versions.is_empty() {
        return Ok(Rating::Unbilled(Unbilled {
            code: UnbilledCode::NoSubscription,
            message: "no subscription of the customer was active at the event's occurred_at".into(),
        }));
    }
    let mut rated = Vec::new();
    let mut matched = false;
    for version in versions {
        for price in version.usage_prices.iter().filter(|price| price.event_type == event.event_type) {
            matched = true;
            let period = counter_period(price, event.occurred_at);
            let before = counter(price, period)?;
            let fees = match pricing::rate(price, &event.data, &before) {
                Ok(fees) => fees,
                Err(error) => return Ok(not_priced(version, price, error)),
            };
            if let Some(first) = fees.first() {
                store_counter(price, period, first.usage_after);
            }
            rated.extend(fees.into_iter().map(|fee| RatedFee {
                version: version.clone(),
                price_name: price.name.clone(),
                fee,
                volume_field: price.volume_field.clone(),
            }));
        }
    }
    if !matched {
        return Ok(Rating::Unbilled(Unbilled {
            code: UnbilledCode::NoMatchingPrice,
            message: format!(
                "no usage price of the product versions the customer was subscribed to at the event's occurred_at \
                 has event_type {:?}",
                event.event_type
            ),
        }));
    }
    Ok(Rating::Billed(rated))
}

/// The period start under which `price` counts an event at `at`: its tier period's start, or
/// 0 for a price whose tiers never reset.
fn counter_period(price: &UsagePrice, at: DateTime<Utc>) -> i64 {
    pricing::period_start(price.tier_period, at).map_or(0, |start| start.timestamp_micros())
}

/// What a price's refusal to rate an event means for the event. A fee past the limits on
/// amounts refuses the batch: storing the event unbilled would silently drop money the price
/// says is owed. Everything else is about this event's data or the price's definition, and
/// must not stop the customer's other usage from being billed.
fn not_priced(version: &ProductVersion, price: &UsagePrice, error: RatingError) -> Rating {
    let code = match &error {
        RatingError::MissingVolume { .. } => UnbilledCode::MissingVolume,
        RatingError::VolumeNotNumber { .. }
        | RatingError::NegativeVolume { .. }
        | RatingError::VolumeOutOfRange { .. } => UnbilledCode::InvalidVolume,
        RatingError::NoMatchingDimension { .. } => UnbilledCode::NoMatchingDimension,
        RatingError::InvalidPrice(_) => UnbilledCode::InvalidPrice,
        RatingError::TooLarge | RatingError::FeeTooLarge { .. } => return Rating::Refused(error.to_string()),
    };
    let message = format!(
        "price {:?} ({}) of product {} version {}: {error}",
        price.name, price.id, version.product_code, version.version
    );
    Rating::Unbilled(Unbilled { code, message })
}

pub fn ingest(
    conn: &mut dyn Conn,
    mode: Mode,
    customer: &CustomerRef,
    batch: &[NewEvent],
    catalog: &dyn Catalog,
    now: DateTime<Utc>,
) -> Result<IngestReport, OpError> {
    let customer_id = lock_customer(conn, mode, customer)?;
    let ids: Vec<&str> = batch.iter().map(|event| event.id.as_str()).collect();
    let claims = Claims { stored: events::existing(conn, mode, &ids)?, in_round: HashMap::new() };
    let mut round = RoundWrites::default();
    let start = Start::Preloaded(Preloaded::default());
    let (report, part, _) =
        ingest_locked(conn, mode, &customer_id, batch, &claims, start, false, &mut round.destinations, catalog, now)?;
    round.absorb(part);
    round.write(conn, mode)?;
    Ok(report)
}

/// One request of an ingestion round: a batch of one customer's events, received at `now`.
#[derive(Debug, Clone)]
pub struct IngestRequest {
    pub customer: CustomerRef,
    pub events: Vec<NewEvent>,
    pub now: DateTime<Utc>,
}

/// A round that must not be kept: a request failed after it had written rows, or the database
/// failed one of the round's statements. Its caller rolls the round back and runs each
/// request alone ([`ingest`]), which answers each as if there had been no round.
#[derive(Debug)]
pub struct RoundFailed(pub Option<StoreError>);

impl RoundFailed {
    /// The round's shared writes failed: a database error, or an id another transaction
    /// stored meanwhile (which each request, run alone, answers with its own conflict).
    fn from_write(error: OpError) -> RoundFailed {
        match error {
            OpError::Store(error) => RoundFailed(Some(error)),
            _ => RoundFailed(None),
        }
    }
}

impl From<StoreError> for RoundFailed {
    fn from(error: StoreError) -> RoundFailed {
        RoundFailed(Some(error))
    }
}

/// Ingests several requests of `mode` in one transaction, answering each as [`ingest`] would
/// have had they run one after another in this order, with the statements they can share
/// run once for all: the customers are locked in one statement (in id order, so rounds wait
/// for each other instead of deadlocking), the event ids looked up in one, and the rows
/// every request adds (events, fees, ledger entries, transactions, rollups) written together
/// at the end, a multi-row `INSERT` per table. A request refused before it wrote anything
/// (an unknown customer, a conflicting id, an invalid event: the usual 409 and 422) is
/// answered so and leaves the others be; a request that fails having written, or any
/// failure of the database, fails the round (`RoundFailed`).
pub fn ingest_round(
    conn: &mut dyn Conn,
    mode: Mode,
    requests: &[IngestRequest],
    catalog: &dyn Catalog,
) -> Result<Vec<Result<IngestReport, OpError>>, RoundFailed> {
    let mut named: Vec<Result<String, OpError>> = Vec::with_capacity(requests.len());
    for request in requests {
        named.push(match &request.customer {
            CustomerRef::Id(id) => Ok(id.clone()),
            CustomerRef::ExternalId(external_id) => match customers::find_by_external_id(conn, mode, external_id)? {
                Some(customer) => Ok(customer.id),
                None => Err(OpError::invalid(
                    "customer_external_id",
                    format!("no customer with external_id {external_id:?}"),
                )),
            },
        });
    }
    let mut ids: Vec<&str> = named.iter().filter_map(|id| id.as_deref().ok()).collect();
    ids.sort_unstable();
    ids.dedup();
    let locked_ids = customers::lock_many(conn, mode, &ids)?;
    // What each customer's request would read first, read for all at once: the subscriptions
    // falling due by the round's latest instant, and the subscription history back to its
    // earliest event. Each request keeps what holds at its own instant and since its own
    // earliest event.
    let locked_refs: Vec<&str> = locked_ids.iter().map(String::as_str).collect();
    let latest = requests.iter().map(|request| request.now).max().unwrap_or_default();
    let earliest = requests
        .iter()
        .flat_map(|request| request.events.iter().map(|event| event.occurred_at).chain([request.now]))
        .min()
        .unwrap_or_default();
    let mut due = subscription_repo::due_for_customers(conn, &locked_refs, latest)?;
    let mut histories = subscription_repo::histories_since(conn, mode, &locked_refs, earliest)?;
    // And what their fees would read on their first debit: their accounts (locked, as each
    // request would lock its own), the numbers their next transactions take, and whether they
    // have auto top-ups to flag.
    let mut accounts = wallets::load_defaults_for_update(conn, &locked_refs)?;
    let mut debit_contexts = customers::debit_contexts(conn, &locked_refs)?;
    let mut counters = preload_counters(conn, mode, requests, &named, &histories, catalog)?;
    let locked: HashSet<&str> = locked_refs.iter().copied().collect();
    let mut event_ids: Vec<&str> =
        requests.iter().flat_map(|request| request.events.iter().map(|event| event.id.as_str())).collect();
    event_ids.sort_unstable();
    event_ids.dedup();
    let mut claims = Claims { stored: events::existing(conn, mode, &event_ids)?, in_round: HashMap::new() };
    let mut round = RoundWrites::default();
    round
        .without_auto_top_ups
        .extend(debit_contexts.iter().filter(|(_, context)| !context.has_auto_top_ups).map(|(id, _)| id.clone()));
    let mut served: HashSet<String> = HashSet::new();
    let mut answers = Vec::with_capacity(requests.len());
    for (request, customer_id) in requests.iter().zip(named) {
        let customer_id = match customer_id {
            Ok(id) if locked.contains(id.as_str()) => id,
            Ok(id) => {
                answers.push(Err(OpError::invalid("customer_id", format!("no customer {id}"))));
                continue;
            }
            Err(error) => {
                answers.push(Err(error));
                continue;
            }
        };
        // The customer's earlier request of the round may have left its state in memory to go
        // on from (`Carry`).
        let going_on = round.carries.get(&customer_id).is_some_and(|carry| carry.goes_on_to(request));
        let preloaded = if going_on {
            None
        } else if served.insert(customer_id.clone()) {
            Some(Preloaded {
                due: Some(due.remove(&customer_id).unwrap_or_default()),
                history: Some(histories.remove(&customer_id).unwrap_or_default()),
                accounts: accounts.remove(&customer_id).unwrap_or_default(),
                debit: debit_contexts.remove(&customer_id),
                counters: counters.remove(&customer_id).unwrap_or_default(),
            })
        } else {
            // A later request of a customer that cannot go on from the earlier one's state
            // reads what the earlier wrote (its accounts, the number of its last transaction,
            // its tier counters): write it first (which saves every state left in memory). It
            // reads its subscriptions afresh, as the earlier may have renewed them.
            round.write(conn, mode).map_err(RoundFailed::from_write)?;
            Some(Preloaded::default())
        };
        let start = match preloaded {
            Some(preloaded) => Start::Preloaded(preloaded),
            None => Start::Carried(round.carries.get_mut(&customer_id).expect("going on from it")),
        };
        let mut watched = WriteWatch { conn: &mut *conn, wrote: false };
        let outcome = ingest_locked(
            &mut watched,
            mode,
            &customer_id,
            &request.events,
            &claims,
            start,
            true,
            &mut round.destinations,
            catalog,
            request.now,
        );
        match outcome {
            Ok((report, part, carry)) => {
                for event in &part.events {
                    claims.in_round.insert(event.id.clone(), (event.customer_id.clone(), event.content_hash.clone()));
                }
                round.absorb(part);
                if let Some(carry) = carry {
                    round.carries.insert(customer_id, carry);
                }
                answers.push(Ok(report));
            }
            Err(OpError::Store(error)) => return Err(error.into()),
            Err(_) if watched.wrote => return Err(RoundFailed(None)),
            // A request that went on from an earlier one's state and failed once it had taken
            // the accounts may have changed them (a debit, then a refused one): that state
            // cannot be kept. One refused before (a conflict, an invalid event) left it be.
            Err(_) if going_on && round.carries.get(&customer_id).is_none_or(|carry| carry.taken) => {
                return Err(RoundFailed(None))
            }
            Err(refused) => answers.push(Err(refused)),
        }
    }
    round.write(conn, mode).map_err(RoundFailed::from_write)?;
    Ok(answers)
}

/// What a round read for a request before it ran: the customer's subscriptions falling due
/// by the round's latest instant (with when each falls due), its subscription history since
/// the round's earliest instant, its `default` accounts by asset (locked), its debit context
/// and tier counters. What is `None` (or missing) the request reads itself; when something
/// fell due for it, it reads everything but the due subscriptions itself, as what fell due
/// may have changed any of it (a renewal debits the accounts, a start adds to the history).
#[derive(Default)]
struct Preloaded {
    due: Option<subscription_repo::Due>,
    history: Option<Vec<ActiveInterval>>,
    accounts: HashMap<String, LockedAccount>,
    debit: Option<DebitContext>,
    /// The tier counters its events would read (zero if never stored).
    counters: Counters,
}

/// Tier counters of one customer, by price id and period start.
type Counters = HashMap<(String, i64), Usage>;

/// Where a request of a round starts from.
enum Start<'a> {
    /// Reading the customer's state (some or all of it read already by the round).
    Preloaded(Preloaded),
    /// From the state its customer's earlier request of the round left in memory, which the
    /// request updates in place.
    Carried(&'a mut Carry),
}

/// A customer's state after its request of a round, in memory, for its next request of the
/// round to go on from instead of the round writing everything first and the request reading
/// it back: the accounts it opened (debited, not saved yet), the accounts the round loaded
/// for it and it did not use, the number its next transaction takes, its tier counters as
/// they now stand (where known), its subscription history as the round read it, and what
/// falls due later. Kept only when the request used what the round read for it and nothing
/// fell due for it; written with the round's other rows ([`RoundWrites::write`]). A request
/// goes on from it only when the number of the customer's next transaction is known.
struct Carry {
    accounts: HashMap<String, (Account, Touched)>,
    loaded_accounts: HashMap<String, LockedAccount>,
    next_sequence: Option<i64>,
    counters: Counters,
    history: Vec<ActiveInterval>,
    due_later: subscription_repo::Due,
    /// Whether a request took the accounts out to debit them and has not put them back: set
    /// only while it runs, so a request that failed with it set may have changed them.
    taken: bool,
}

impl Carry {
    /// Whether `request` can go on from this state: nothing falls due for it, neither a
    /// subscription's action (a renewal or a start writes to the accounts and the history)
    /// nor a grant's start or expiry on any of the customer's accounts here (run alone, the
    /// request would settle the account as it opened it, before its fees); and none of its
    /// events names a hold (a capture writes ledger entries at once, which would come before
    /// the earlier request's rows the round has not written yet).
    fn goes_on_to(&self, request: &IngestRequest) -> bool {
        let after = |due: Option<DateTime<Utc>>| due.is_none_or(|due| due > request.now);
        self.next_sequence.is_some()
            && self.due_later.iter().all(|(at, _)| *at > request.now)
            && self.accounts.values().all(|(account, _)| after(account.state.next_due_at()))
            && self.loaded_accounts.values().all(|locked| after(locked.next_due_at()))
            && request.events.iter().all(|event| event.hold_id.is_none())
    }
}

/// The tier counters the first request of each customer of a round would read, read for all
/// in one statement (or a few): for each of its events, each usage price of its type in the
/// versions the customer was subscribed to at its `occurred_at`, in the event's period. The
/// history read for the round holds every interval containing such an instant.
fn preload_counters(
    conn: &mut dyn Conn,
    mode: Mode,
    requests: &[IngestRequest],
    named: &[Result<String, OpError>],
    histories: &HashMap<String, Vec<ActiveInterval>>,
    catalog: &dyn Catalog,
) -> Result<HashMap<String, Counters>, StoreError> {
    let mut parsed = HashMap::new();
    let mut keys: HashSet<events::CounterKey> = HashSet::new();
    let mut first_seen: HashSet<&str> = HashSet::new();
    for (request, customer_id) in requests.iter().zip(named) {
        let Ok(customer_id) = customer_id else { continue };
        let (Some(history), true) = (histories.get(customer_id), first_seen.insert(customer_id)) else { continue };
        for event in &request.events {
            // A version the catalog cannot give is the request's own error, met when it rates.
            let versions = match versions_at(conn, mode, history, event.occurred_at, catalog, &mut parsed) {
                Ok(versions) => versions,
                Err(OpError::Store(error)) => return Err(error),
                Err(_) => continue,
            };
            for price in versions.iter().flat_map(|version| &version.usage_prices) {
                if price.event_type == event.event_type {
                    keys.insert((customer_id.clone(), price.id.clone(), counter_period(price, event.occurred_at)));
                }
            }
        }
    }
    let keys: Vec<events::CounterKey> = keys.into_iter().collect();
    let mut by_customer: HashMap<String, Counters> = HashMap::new();
    for ((customer_id, price_id, period), usage) in events::counters_many(conn, &keys)? {
        by_customer.entry(customer_id).or_default().insert((price_id, period), usage);
    }
    Ok(by_customer)
}

/// Which event holds an id already: one stored before the round, or one an earlier request
/// of the round stored (its customer and content hash).
struct Claims {
    stored: HashMap<String, StoredEvent>,
    in_round: HashMap<String, (String, String)>,
}

impl Claims {
    /// Whether `id` is free, an exact replay of `customer_id`'s event with `hash`, or a
    /// conflict (the message says which).
    fn check(&self, id: &str, customer_id: &str, hash: &str) -> Claim {
        let (holder, held_hash) = match (self.stored.get(id), self.in_round.get(id)) {
            (Some(stored), _) if stored.customer_id != customer_id => return Claim::Conflict(other_customer(id)),
            (Some(stored), _) => (stored.customer_id.as_str(), stored_content_hash(stored)),
            (None, Some((holder, held_hash))) => (holder.as_str(), held_hash.clone()),
            (None, None) => return Claim::Free,
        };
        if holder != customer_id {
            Claim::Conflict(other_customer(id))
        } else if held_hash != hash {
            Claim::Conflict(format!(
                "event id {id} is already used by an event with other content \
                 (event_type, occurred_at, subject, description, data or costs)"
            ))
        } else {
            Claim::Replay
        }
    }
}

enum Claim {
    Free,
    /// Stored already with the same content: it changes nothing.
    Replay,
    Conflict(String),
}

fn other_customer(id: &str) -> String {
    format!("event id {id} is already used by another customer's event")
}

/// A connection that notes whether a statement that may write ran through it (anything but
/// a `SELECT`): a request of a round that fails before writing can be refused alone.
struct WriteWatch<'a> {
    conn: &'a mut dyn Conn,
    wrote: bool,
}

impl WriteWatch<'_> {
    fn note(&mut self, sql: &str) {
        let head = sql.trim_start().get(..6).unwrap_or_default();
        self.wrote |= !head.eq_ignore_ascii_case("SELECT");
    }
}

impl Conn for WriteWatch<'_> {
    fn dialect(&self) -> crate::conn::Dialect {
        self.conn.dialect()
    }

    fn execute(&mut self, sql: &str, params: &[crate::conn::Value]) -> Result<u64, StoreError> {
        self.note(sql);
        self.conn.execute(sql, params)
    }

    fn query(&mut self, sql: &str, params: &[crate::conn::Value]) -> Result<Vec<crate::Row>, StoreError> {
        self.note(sql);
        self.conn.query(sql, params)
    }

    fn query_each(
        &mut self,
        sql: &str,
        params: &[crate::conn::Value],
        each: &mut dyn FnMut(&crate::Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.note(sql);
        self.conn.query_each(sql, params, each)
    }

    fn query_planned_for_values(
        &mut self,
        sql: &str,
        params: &[crate::conn::Value],
    ) -> Result<Vec<crate::Row>, StoreError> {
        self.note(sql);
        self.conn.query_planned_for_values(sql, params)
    }

    fn insert_columns(
        &mut self,
        statement: &crate::conn::RowsStatement<'_>,
        values: &[crate::conn::Value],
    ) -> Option<Result<Vec<crate::Row>, StoreError>> {
        self.note(statement.head);
        self.conn.insert_columns(statement, values)
    }

    fn lane(&self) -> u64 {
        self.conn.lane()
    }
}

/// What the requests of a round add, written together by [`RoundWrites::write`].
#[derive(Default)]
struct RoundWrites {
    gathered: RoundPart,
    /// The platform's enabled webhook destinations, read at the round's first fee.
    destinations: Option<Vec<crate::repo::webhooks::Destination>>,
    /// The customers known to have no auto top-up, whose debits have nothing to flag.
    without_auto_top_ups: HashSet<String>,
    /// Customers' states left for their next requests, by customer id.
    carries: HashMap<String, Carry>,
}

/// The rows one request adds to its round, or all its requests together.
#[derive(Default)]
struct RoundPart {
    events: Vec<StoredEvent>,
    costs: Vec<StoredCost>,
    pending: PendingRows,
    rollups: Rollups,
    counters: Vec<events::CounterRow>,
    accounts: Vec<TouchedSave>,
}

impl RoundWrites {
    fn absorb(&mut self, part: RoundPart) {
        let gathered = &mut self.gathered;
        gathered.events.extend(part.events);
        gathered.costs.extend(part.costs);
        gathered.counters.extend(part.counters);
        gathered.accounts.extend(part.accounts);
        gathered.pending.absorb(part.pending);
        gathered.rollups.absorb(part.rollups);
    }

    /// Writes what was gathered: the events first, in id order, because they are the rows
    /// another transaction can clash with (an id another customer's batch stored meanwhile:
    /// the clash is then on `usage_events`, answered 409, and two transactions sharing ids wait
    /// for each other instead of deadlocking); then their vendor costs (keyed by event id too,
    /// so written after them), fees, ledger entries and transactions in the order the requests
    /// made them, the rollups once per key, the tier counters the requests moved and the
    /// accounts they debited (locked since they were read).
    fn write(&mut self, conn: &mut dyn Conn, mode: Mode) -> Result<(), OpError> {
        let RoundPart { mut events, costs, pending, mut rollups, counters, mut accounts } =
            std::mem::take(&mut self.gathered);
        // The accounts customers' states carried are saved now; their next requests read them.
        for (_, carry) in std::mem::take(&mut self.carries) {
            for (_, (account, touched)) in carry.accounts {
                accounts.push(wallets::prepare_touched(account, &touched)?);
            }
        }
        // A customer's later request carried on from its earlier one's counters: the later
        // value of a counter is the one to store.
        let counters: Vec<events::CounterRow> = counters
            .into_iter()
            .map(|row| ((row.customer_id.clone(), row.price_id.clone(), row.period_start), row))
            .collect::<HashMap<_, _>>()
            .into_values()
            .collect();
        events.sort_by(|left, right| left.id.cmp(&right.id));
        insert_events(conn, mode, &events)?;
        for cost in costs {
            events::insert_cost(conn, mode, &cost)?;
        }
        pending.write(conn, mode)?;
        rollups.write(conn)?;
        events::put_counters(conn, &counters)?;
        // Each account once per write, as `save_touched_many` needs: a customer's later
        // request of the round either went on from its earlier one's accounts, saved here
        // once, or came after a write.
        let without_auto_top_ups = &self.without_auto_top_ups;
        wallets::save_touched_many(conn, mode, accounts, &|customer_id| !without_auto_top_ups.contains(customer_id))?;
        Ok(())
    }
}

/// [`ingest`] of one batch once its customer is locked and its ids' holders known: rates and
/// debits in memory, writes what must be written at once (a new account, an expiry settled as
/// an account opens, webhooks), and returns the rows a round writes together (events, costs,
/// fees, ledger entries, transactions, rollups, tier counters, the debited accounts). With
/// `keep`, a batch that can leaves its customer's state in memory for the customer's next
/// request of the round instead of its debited accounts ([`Carry`]).
#[allow(clippy::too_many_arguments)]
fn ingest_locked(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    batch: &[NewEvent],
    claims: &Claims,
    start: Start<'_>,
    keep: bool,
    destinations: &mut Option<Vec<crate::repo::webhooks::Destination>>,
    catalog: &dyn Catalog,
    now: DateTime<Utc>,
) -> Result<(IngestReport, RoundPart, Option<Carry>), OpError> {
    let mut errors: Vec<FieldError> = Vec::new();
    let mut seen_in_batch: HashSet<&str> = HashSet::new();
    for (index, event) in batch.iter().enumerate() {
        if !seen_in_batch.insert(event.id.as_str()) {
            errors.push(FieldError {
                field: format!("events[{index}].id"),
                message: format!("{} appears more than once in the batch", event.id),
            });
        }
    }
    let mut fresh: Vec<(usize, &NewEvent, String)> = Vec::with_capacity(batch.len());
    let mut conflicts: Vec<String> = Vec::new();
    for (index, event) in batch.iter().enumerate() {
        let hash = event.content_hash();
        match claims.check(&event.id, customer_id, &hash) {
            Claim::Free => fresh.push((index, event, hash)),
            Claim::Conflict(message) => conflicts.push(message),
            Claim::Replay => {}
        }
    }
    if !conflicts.is_empty() {
        return Err(conflict(conflicts));
    }
    let mut report = IngestReport { duplicates: batch.len() - fresh.len(), ..IngestReport::default() };
    if fresh.is_empty() && errors.is_empty() {
        // Nothing to store: a state carried here stays as it came.
        return Ok((report, RoundPart::default(), None));
    }
    let earliest = fresh.iter().map(|(_, event, _)| event.occurred_at).min().unwrap_or(now);
    let going_on = matches!(start, Start::Carried(_));
    // The state of a batch that does not go on from a carried one: kept for the customer's
    // next request when it can be.
    let mut own: Option<Carry> = None;
    let (state, can_carry): (&mut Carry, bool) = match start {
        Start::Carried(carry) => (carry, true),
        Start::Preloaded(preloaded) => {
            let (carry, can_carry) = begin(conn, mode, customer_id, preloaded, earliest, catalog, now)?;
            (own.insert(carry), can_carry)
        }
    };
    let history: Vec<ActiveInterval> =
        state.history.iter().filter(|interval| interval.active_to.is_none_or(|to| to > earliest)).cloned().collect();
    let mut pricer = Pricer::new(customer_id, history, catalog);
    // A copy: a refused batch leaves a carried state as it was.
    pricer.known = state.counters.clone();
    let mut vendor_ids: HashMap<VendorRef, String> = HashMap::new();
    let mut rated_events: Vec<Priced> = Vec::with_capacity(fresh.len());
    for (index, event, hash) in fresh {
        for (cost_index, cost) in event.costs.iter().enumerate() {
            if let Err(message) = resolve_vendor(conn, mode, &cost.vendor, &mut vendor_ids)? {
                errors.push(FieldError { field: format!("events[{index}].costs[{cost_index}].vendor_id"), message });
            }
        }
        match pricer.rate(conn, mode, event)? {
            Rating::Billed(fees) => rated_events.push(Priced { event, fees, unbilled: None, hash }),
            Rating::Unbilled(unbilled) => {
                rated_events.push(Priced { event, fees: Vec::new(), unbilled: Some(unbilled), hash })
            }
            Rating::Refused(message) => errors.push(FieldError { field: format!("events[{index}]"), message }),
        }
    }
    let holds = open_holds(conn, mode, customer_id, batch, &rated_events, now, &mut errors)?;
    if !errors.is_empty() {
        return Err(OpError::Invalid(errors));
    }
    let rows: Vec<StoredEvent> = rated_events.iter().map(|priced| stored_event(customer_id, priced, now)).collect();
    let unbilled_events: HashMap<&str, &StoredEvent> =
        rows.iter().filter(|stored| stored.unbilled.is_some()).map(|stored| (stored.id.as_str(), stored)).collect();
    state.taken = true;
    let mut writes = BatchWrites {
        holds,
        destinations: destinations.take(),
        accounts: std::mem::take(&mut state.accounts),
        loaded_accounts: std::mem::take(&mut state.loaded_accounts),
        next_sequence: state.next_sequence,
        going_on,
        ..BatchWrites::default()
    };
    // The balances this batch starts from, for its own `wallet.balance_depleted` webhooks.
    let available_before: HashMap<String, Decimal> =
        writes.accounts.iter().map(|(asset, (account, _))| (asset.clone(), account.state.available)).collect();
    let mut costs: Vec<StoredCost> = Vec::new();
    for Priced { event, fees, .. } in &rated_events {
        store_fees_and_costs(conn, mode, customer_id, event, fees, &vendor_ids, &mut writes, &mut costs, now)
            .map_err(|error| name_the_event(error, batch, event))?;
        if let Some(stored) = unbilled_events.get(event.id.as_str()) {
            webhooks::event_unbilled(conn, mode, stored, now)?;
            report.unbilled += 1;
        }
        report.stored += 1;
        report.fees += fees.len();
        for rated in fees {
            let billed = report.billed.entry(rated.fee.asset.clone()).or_default();
            billed.0 += 1;
            billed.1 += rated.fee.amount;
        }
    }
    // A batch that went on from a carried state keeps it: its number is known (it had to be
    // to go on), and an opening that would have forgotten it failed the batch.
    let keep = going_on || (keep && can_carry && writes.next_sequence.is_some());
    let (pending, rollups, accounts) = writes.finish(conn, mode, &available_before, keep, now)?;
    *destinations = writes.destinations.take();
    let (mut known, moved) = pricer.into_parts();
    let counters: Vec<events::CounterRow> = moved
        .iter()
        .map(|((price_id, period_start), usage)| events::CounterRow {
            customer_id: customer_id.to_owned(),
            price_id: price_id.clone(),
            period_start: *period_start,
            usage: *usage,
        })
        .collect();
    if keep {
        known.extend(moved);
        state.accounts = std::mem::take(&mut writes.accounts);
        state.loaded_accounts = std::mem::take(&mut writes.loaded_accounts);
        state.next_sequence = writes.next_sequence;
        state.counters = known;
        state.taken = false;
    }
    // A carried state was updated in place; a new one is handed back to be kept.
    let carry = if keep { own } else { None };
    Ok((report, RoundPart { events: rows, costs, pending, rollups, counters, accounts }, carry))
}

/// The state a batch starts from when no earlier request of the round left one: runs whatever
/// fell due (a scheduled start, a renewal), so that the history is complete, and keeps what
/// the round read for it unless something did (then it reads the history itself, and the
/// rest as it goes). Also answers whether the state can be carried to the customer's next
/// request: only when it holds the history as the round read it.
fn begin(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    preloaded: Preloaded,
    earliest: DateTime<Utc>,
    catalog: &dyn Catalog,
    now: DateTime<Utc>,
) -> Result<(Carry, bool), OpError> {
    let (ran_due, due_later) = match preloaded.due {
        None => {
            run_due(conn, mode, customer_id, catalog, now)?;
            (true, Vec::new())
        }
        Some(due) => {
            let (due_now, due_later): (Vec<_>, Vec<_>) = due.into_iter().partition(|(at, _)| *at <= now);
            for (_, subscription_id) in &due_now {
                process_due(conn, mode, subscription_id, catalog, now)?;
            }
            (!due_now.is_empty(), due_later)
        }
    };
    // What was read before anything fell due holds unless something did.
    let (loaded_accounts, debit, counters) = match ran_due {
        false => (preloaded.accounts, preloaded.debit, preloaded.counters),
        true => (HashMap::new(), None, HashMap::new()),
    };
    #[cfg(debug_assertions)]
    check_preloaded(conn, customer_id, &loaded_accounts, debit, &counters)?;
    let (history, can_carry) = match preloaded.history {
        // Read before anything fell due: what `history_since` would answer, kept in memory.
        Some(history) if !ran_due => (history, true),
        _ => (subscription_repo::history_since(conn, mode, customer_id, earliest)?, false),
    };
    let next_sequence = debit.map(|context| context.next_sequence);
    let carry =
        Carry { accounts: HashMap::new(), loaded_accounts, next_sequence, counters, history, due_later, taken: false };
    Ok((carry, can_carry))
}

/// Debug builds check that what a round read for a request before it ran is what the request
/// would read now: a preload gone stale would misplace money.
#[cfg(debug_assertions)]
fn check_preloaded(
    conn: &mut dyn Conn,
    customer_id: &str,
    accounts: &HashMap<String, LockedAccount>,
    debit: Option<DebitContext>,
    counters: &Counters,
) -> Result<(), OpError> {
    for ((price_id, period), usage) in counters {
        let stored = events::counter(conn, customer_id, price_id, *period)?;
        assert_eq!(*usage, stored, "preloaded tier counter of {customer_id}, price {price_id}, period {period}");
    }
    if let Some(debit) = debit {
        let next_sequence = crate::repo::transactions::next_sequence(conn, customer_id)?;
        assert_eq!(debit.next_sequence, next_sequence, "preloaded next transaction number of {customer_id}");
    }
    for locked in accounts.values() {
        let stored = wallets::get(conn, locked.key())?.expect("a preloaded account exists");
        assert!(locked.has_balances_of(&stored), "preloaded balances of {:?}", locked.key());
    }
    Ok(())
}

/// Rates one customer's events as they occurred, each against the product versions of the
/// subscription intervals containing its `occurred_at`, and keeps the tier counters it moves
/// in memory until [`Pricer::save_counters`] writes each once: ingestion and rebilling both
/// rate through it, so an event is priced the same whichever bills it.
pub(crate) struct Pricer<'a> {
    customer_id: &'a str,
    /// The customer's subscription intervals reaching back to the earliest event to rate.
    history: Vec<ActiveInterval>,
    catalog: &'a dyn Catalog,
    parsed_versions: HashMap<(String, i64), Arc<ProductVersion>>,
    /// Tier counters after the events billed so far.
    counters: Counters,
    /// Tier counters as stored, read before rating (by an ingestion round): consulted before
    /// the database, and never written back unless an event moves them.
    known: Counters,
}

impl<'a> Pricer<'a> {
    pub(crate) fn new(customer_id: &'a str, history: Vec<ActiveInterval>, catalog: &'a dyn Catalog) -> Pricer<'a> {
        Pricer {
            customer_id,
            history,
            catalog,
            parsed_versions: HashMap::new(),
            counters: HashMap::new(),
            known: HashMap::new(),
        }
    }

    /// Rates `event`; its tier counters move only when it is billed.
    pub(crate) fn rate(&mut self, conn: &mut dyn Conn, mode: Mode, event: &NewEvent) -> Result<Rating, OpError> {
        let versions =
            versions_at(conn, mode, &self.history, event.occurred_at, self.catalog, &mut self.parsed_versions)?;
        let (counters, known) = (&self.counters, &self.known);
        let customer_id = self.customer_id;
        let mut load = |price: &UsagePrice, period: i64| -> Result<Usage, OpError> {
            let key = (price.id.clone(), period);
            if let Some(usage) = counters.get(&key).or_else(|| known.get(&key)) {
                return Ok(*usage);
            }
            Ok(events::counter(conn, customer_id, &price.id, period)?)
        };
        let mut pending_counters: Vec<((String, i64), Usage)> = Vec::new();
        let mut keep =
            |price: &UsagePrice, period: i64, usage: Usage| pending_counters.push(((price.id.clone(), period), usage));
        let rating = rate_event(&versions, event, &mut load, &mut keep)?;
        if let Rating::Billed(_) = rating {
            self.counters.extend(pending_counters);
        }
        Ok(rating)
    }

    /// The tier counters known before rating and those the billed events moved.
    fn into_parts(self) -> (Counters, Counters) {
        (self.known, self.counters)
    }

    /// Writes every tier counter the billed events moved.
    pub(crate) fn save_counters(&self, conn: &mut dyn Conn) -> Result<(), OpError> {
        for ((price_id, period), usage) in &self.counters {
            events::put_counter(conn, self.customer_id, price_id, *period, usage)?;
        }
        Ok(())
    }
}

/// One fresh event of a batch, rated: its fees, or why it has none.
struct Priced<'batch> {
    event: &'batch NewEvent,
    fees: Vec<RatedFee>,
    unbilled: Option<Unbilled>,
    hash: String,
}

/// A fee the wallet refuses (one that would take the debt past its limit) names the event
/// that owes it, as a rating error does.
fn name_the_event(error: OpError, batch: &[NewEvent], event: &NewEvent) -> OpError {
    let Some(index) = batch.iter().position(|candidate| candidate.id == event.id) else {
        return error;
    };
    match error {
        OpError::Invalid(fields) => OpError::Invalid(
            fields
                .into_iter()
                .map(|field| FieldError {
                    field: format!("events[{index}]"),
                    message: format!("its fee {}", field.message),
                })
                .collect(),
        ),
        other => other,
    }
}

fn conflict(mut conflicts: Vec<String>) -> OpError {
    let more = conflicts.len().saturating_sub(MAX_CONFLICTS_NAMED);
    conflicts.truncate(MAX_CONFLICTS_NAMED);
    let mut message = conflicts.join("; ");
    if more > 0 {
        message.push_str(&format!("; and {more} more"));
    }
    message.push_str(": an event id names one event in a mode, so send a new event under a new id (nothing of this batch was stored)");
    OpError::Conflict(message)
}

/// The product versions the customer's subscriptions were active on at `at`, in rating order.
fn versions_at(
    conn: &mut dyn Conn,
    mode: Mode,
    history: &[ActiveInterval],
    at: DateTime<Utc>,
    catalog: &dyn Catalog,
    parsed: &mut HashMap<(String, i64), Arc<ProductVersion>>,
) -> Result<Vec<Arc<ProductVersion>>, OpError> {
    let mut versions = Vec::new();
    for interval in history.iter().filter(|interval| interval.contains(at)) {
        let key = (interval.product_id.clone(), interval.version);
        let version = match parsed.get(&key) {
            Some(version) => version.clone(),
            None => {
                let version = catalog.version(conn, mode, &interval.product_id, interval.version)?;
                parsed.insert(key, version.clone());
                version
            }
        };
        versions.push(version);
    }
    Ok(versions)
}

fn lock_customer(conn: &mut dyn Conn, mode: Mode, customer: &CustomerRef) -> Result<String, OpError> {
    let id = match customer {
        CustomerRef::Id(id) => id.clone(),
        CustomerRef::ExternalId(external_id) => {
            customers::find_by_external_id(conn, mode, external_id)?
                .ok_or_else(|| {
                    OpError::invalid("customer_external_id", format!("no customer with external_id {external_id:?}"))
                })?
                .id
        }
    };
    customers::get_for_update(conn, mode, &id)?
        .ok_or_else(|| OpError::invalid("customer_id", format!("no customer {id}")))?;
    Ok(id)
}

/// The vendor's id, or a message when it does not exist.
fn resolve_vendor(
    conn: &mut dyn Conn,
    mode: Mode,
    reference: &VendorRef,
    known: &mut HashMap<VendorRef, String>,
) -> Result<Result<String, String>, OpError> {
    if let Some(id) = known.get(reference) {
        return Ok(Ok(id.clone()));
    }
    let found = match reference {
        VendorRef::Id(id) => vendors::get(conn, mode, id)?,
        VendorRef::ExternalId(external_id) => vendors::find_by_external_id(conn, mode, external_id)?,
    };
    Ok(match found {
        Some(vendor) => {
            known.insert(reference.clone(), vendor.id.clone());
            Ok(vendor.id)
        }
        None => Err(format!("no vendor {reference:?}")),
    })
}

/// What a batch reads once and then keeps, instead of asking the database again for every fee.
#[derive(Default)]
pub(crate) struct BatchWrites {
    /// The accounts the batch debits, by asset: opened (loaded, locked, settled) on first use,
    /// saved once at the end.
    accounts: HashMap<String, (Account, Touched)>,
    /// Accounts read and locked before the batch ran (by an ingestion round), by asset: the
    /// batch opens these instead of reading them.
    loaded_accounts: HashMap<String, LockedAccount>,
    /// The number the customer's next transaction takes, once known. Opening an account
    /// that settles writes transactions of its own (expiries), so it is read again after.
    next_sequence: Option<i64>,
    /// Whether the batch goes on from an earlier request's state ([`Carry`]) whose rows the
    /// round has not written yet: then nothing may be written ahead of them (opening an
    /// account writes nothing first, and one that settles fails the round).
    going_on: bool,
    /// The platform's enabled webhook destinations, read at the first fee.
    destinations: Option<Vec<crate::repo::webhooks::Destination>>,
    /// The batch's fees and costs per rollup key, written once per key at the end.
    rollups: Rollups,
    /// The open holds the batch's events name, by id: their fees are captured from them.
    holds: HashMap<String, Hold>,
    /// Rows the batch's fees add, written together (a multi-row `INSERT` per table): the
    /// ledger entries and transactions before anything that must follow them (opening
    /// another account may settle, writing entries and transactions of its own; a hold
    /// capture writes entries of its own), and everything at the end.
    pending: PendingRows,
}

#[derive(Default)]
struct PendingRows {
    fees: Vec<StoredFee>,
    entries: Vec<crate::repo::ledger::TransactionEntry>,
    transactions: Vec<(Transaction, i64)>,
}

impl BatchWrites {
    /// Saves each account the batch debited, once, and adds the batch's fees and costs to the
    /// rollups, once per key. Every writer of fees through [`store_fees`] calls it last.
    pub(crate) fn save_accounts(&mut self, conn: &mut dyn Conn, mode: Mode, now: DateTime<Utc>) -> Result<(), OpError> {
        let (pending, mut rollups, accounts) = self.finish(conn, mode, &HashMap::new(), false, now)?;
        pending.write(conn, mode)?;
        rollups.write(conn)?;
        wallets::save_touched_many(conn, mode, accounts, &|_| true)?;
        Ok(())
    }

    /// Ends the batch: announces each account it depleted (from the balance it started at:
    /// `available_before`, or the one its account was opened at) and hands back the rows,
    /// rollups and, unless it `keep`s its accounts open for a later batch, the account saves
    /// still to write, for a caller that writes them together with others' (an ingestion
    /// round): nothing the batch does after reads them.
    fn finish(
        &mut self,
        conn: &mut dyn Conn,
        mode: Mode,
        available_before: &HashMap<String, Decimal>,
        keep: bool,
        now: DateTime<Utc>,
    ) -> Result<(PendingRows, Rollups, Vec<TouchedSave>), OpError> {
        for (asset, (account, touched)) in &self.accounts {
            let available = available_before.get(asset).copied().unwrap_or(touched.before.available);
            let before = tally_core::wallet::AccountState { available, ..touched.before.clone() };
            webhooks::balance_changed(conn, mode, &before, account, now)?;
        }
        let mut saves = Vec::new();
        if !keep {
            for (_, (account, touched)) in std::mem::take(&mut self.accounts) {
                saves.push(wallets::prepare_touched(account, &touched)?);
            }
        }
        Ok((std::mem::take(&mut self.pending), std::mem::take(&mut self.rollups), saves))
    }

    /// Writes the pending ledger entries and transactions, which opening an account must
    /// follow (it may settle, writing entries and transactions of its own, and then reads
    /// the customer's last transaction number again). The fees stay pending: nothing reads them before the end, where they are written
    /// with the rest (in an ingestion round, with every request's).
    fn flush_ledger(&mut self, conn: &mut dyn Conn, mode: Mode) -> Result<(), OpError> {
        let fees = std::mem::take(&mut self.pending.fees);
        std::mem::take(&mut self.pending).write(conn, mode)?;
        self.pending.fees = fees;
        Ok(())
    }
}

impl PendingRows {
    fn absorb(&mut self, other: PendingRows) {
        self.fees.extend(other.fees);
        self.entries.extend(other.entries);
        self.transactions.extend(other.transactions);
    }

    fn write(self, conn: &mut dyn Conn, mode: Mode) -> Result<(), OpError> {
        if !self.fees.is_empty() {
            events::insert_fees(conn, mode, &self.fees)?;
        }
        crate::repo::ledger::append_many(conn, mode, &self.entries)?;
        if !self.transactions.is_empty() {
            let numbered: Vec<(&Transaction, i64)> =
                self.transactions.iter().map(|(transaction, sequence)| (transaction, *sequence)).collect();
            crate::repo::transactions::insert_many_numbered(conn, mode, &numbered)?;
        }
        Ok(())
    }
}

/// The sum of an event's fees and their asset, when they are all in one asset.
pub(crate) fn fee_total(fees: &[RatedFee]) -> (Option<Decimal>, Option<String>) {
    let single_asset = fees
        .first()
        .map(|first| first.fee.asset.clone())
        .filter(|asset| fees.iter().all(|rated| &rated.fee.asset == asset));
    (single_asset.as_ref().map(|_| fees.iter().map(|rated| rated.fee.amount).sum()), single_asset)
}

fn stored_event(customer_id: &str, priced: &Priced, now: DateTime<Utc>) -> StoredEvent {
    let Priced { event, fees, unbilled, hash: content_hash } = priced;
    let (total_fees, fee_currency) = fee_total(fees);
    StoredEvent {
        id: event.id.clone(),
        customer_id: customer_id.to_owned(),
        event_type: event.event_type.clone(),
        occurred_at: event.occurred_at,
        subject: event.subject.clone(),
        description: event.description.clone(),
        data: event.data_json.clone(),
        costs: event.costs_json.clone(),
        has_fees: !fees.is_empty(),
        total_fees,
        fee_currency,
        created_at: now,
        content_hash: content_hash.clone(),
        unbilled: unbilled
            .as_ref()
            .map(|unbilled| UnbilledReason { code: unbilled.code.as_str().into(), message: unbilled.message.clone() }),
    }
}

/// Inserts a batch's fresh events (in id order, see the caller).
fn insert_events(conn: &mut dyn Conn, mode: Mode, rows: &[StoredEvent]) -> Result<(), OpError> {
    // Under the customer's lock the ids were free; only another customer's batch, committed
    // while this one ran, can have taken one since.
    events::insert_many(conn, mode, rows).map_err(|error| match error {
        StoreError::Conflict(_) => {
            conflict(vec!["an event id of this batch was just stored by another customer's event".to_owned()])
        }
        other => other.into(),
    })
}

#[allow(clippy::too_many_arguments)]
fn store_fees_and_costs(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    event: &NewEvent,
    fees: &[RatedFee],
    vendor_ids: &HashMap<VendorRef, String>,
    writes: &mut BatchWrites,
    costs: &mut Vec<StoredCost>,
    now: DateTime<Utc>,
) -> Result<(), OpError> {
    store_fees(conn, mode, customer_id, event, fees, writes, now)?;
    for (line, cost) in event.costs.iter().enumerate() {
        let vendor_id = vendor_ids.get(&cost.vendor).cloned().unwrap_or_default();
        costs.push(StoredCost {
            event_id: event.id.clone(),
            line: line as i64,
            customer_id: customer_id.to_owned(),
            cost_id: cost.id.clone(),
            vendor_id,
            category: cost.category.clone(),
            description: cost.description.clone(),
            amount: cost.amount,
            currency: cost.currency.clone(),
            occurred_at: event.occurred_at,
        });
        let vendor_id = vendor_ids.get(&cost.vendor).map(String::as_str).unwrap_or_default();
        let category = cost.category.as_deref();
        writes.rollups.cost(mode, customer_id, event.occurred_at, vendor_id, category, &cost.currency, cost.amount);
    }
    Ok(())
}

/// Stores an event's fees and debits each, at `now`, from the default account of its asset.
pub(crate) fn store_fees(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    event: &NewEvent,
    fees: &[RatedFee],
    writes: &mut BatchWrites,
    now: DateTime<Utc>,
) -> Result<(), OpError> {
    for (line, rated) in fees.iter().enumerate() {
        store_fee(conn, mode, customer_id, event, rated, line as i64, writes, now)?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn store_fee(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    event: &NewEvent,
    rated: &RatedFee,
    line: i64,
    writes: &mut BatchWrites,
    now: DateTime<Utc>,
) -> Result<(), OpError> {
    let fee = &rated.fee;
    let detail = FeeDetail {
        dimensions: &fee.dimensions,
        usage_type: fee.usage_type.as_str(),
        volume_field: rated.volume_field.as_deref(),
        input_volume: json_number(fee.volume),
        unit_price: json_number(fee.unit_price),
        volume_rate: json_number(fee.volume_rate),
        package_size: json_number(fee.package_size),
        description: event.description.as_deref(),
    };
    writes.pending.fees.push(StoredFee {
        id: ids::new_id("fee"),
        event_id: event.id.clone(),
        customer_id: customer_id.to_owned(),
        line,
        product_id: rated.version.product_id.clone(),
        product_code: rated.version.product_code.clone(),
        product_version: rated.version.version,
        price_id: fee.price_id.clone(),
        price_name: rated.price_name.clone(),
        asset: fee.asset.clone(),
        account_name: "default".into(),
        detail: to_json(&detail),
        amount: fee.amount,
        occurred_at: event.occurred_at,
        created_at: now,
    });
    let product_id = &rated.version.product_id;
    writes.rollups.usage_fee(mode, customer_id, event.occurred_at, &fee.asset, product_id, &fee.price_id, fee.amount);
    if fee.amount.is_zero() {
        return Ok(());
    }
    let key = AccountKey { customer_id: customer_id.to_owned(), name: "default".into(), asset: fee.asset.clone() };
    if !writes.accounts.contains_key(&fee.asset) {
        if !writes.going_on {
            writes.flush_ledger(conn, mode)?;
        }
        let loaded = writes.loaded_accounts.remove(&fee.asset);
        let (account, touched, settled) = open_account_for_debits(conn, mode, &key, loaded, now)?;
        writes.accounts.insert(fee.asset.clone(), (account, touched));
        if settled && writes.going_on {
            // Its expiries' entries and transactions went ahead of the earlier request's rows.
            return Err(OpError::Conflict("an account settled after its customer's earlier request".into()));
        }
        if settled {
            writes.next_sequence = None;
        }
    }
    let sequence = match writes.next_sequence {
        Some(sequence) => sequence,
        None => crate::repo::transactions::next_sequence(conn, customer_id)?,
    };
    writes.next_sequence = Some(sequence + 1);
    if writes.destinations.is_none() {
        writes.destinations = Some(crate::repo::webhooks::enabled_destinations(conn, mode.platform())?);
    }
    let (account, touched) = writes.accounts.get_mut(&fee.asset).expect("opened above");
    // A fee on the account of the hold its event names is captured from the hold; any other
    // fee is debited as usual (and an event without a hold costs nothing more).
    let hold = match &event.hold_id {
        None => None,
        Some(hold_id) => writes.holds.get_mut(hold_id).filter(|hold| hold.key() == key),
    };
    let (postings, captured) = match hold {
        None => (debit(&mut account.state, fee.amount, SystemAccount::Revenue)?, None),
        Some(hold) => {
            std::mem::take(&mut writes.pending).write(conn, mode)?;
            let (from_hold, postings) = holds::capture_from(conn, mode, hold, &mut account.state, fee.amount, now)?;
            (postings, Some((hold.clone(), from_hold)))
        }
    };
    touched.postings(&postings);
    let usage_detail = UsageFeeDetail {
        event_id: &event.id,
        event_type: &event.event_type,
        subject: event.subject.as_deref(),
        product_id: &rated.version.product_id,
        product_name: &rated.version.product_name,
        price_id: &fee.price_id,
    };
    let detail = match &captured {
        None => to_json(&usage_detail),
        Some((hold, from_hold)) => {
            let mut detail = serde_json::to_value(&usage_detail).unwrap_or_default();
            if let (Some(map), Some(parts)) =
                (detail.as_object_mut(), holds::capture_detail(hold, *from_hold, fee.amount - from_hold).as_object())
            {
                map.extend(parts.clone());
            }
            detail.to_string()
        }
    };
    let transaction = Transaction {
        customer_id: customer_id.to_owned(),
        id: format!("{RESERVED_TRANSACTION_PREFIX}event_{}_{line}", event.id),
        kind: "fee".into(),
        account_name: key.name.clone(),
        asset: key.asset.clone(),
        amount: -fee.amount,
        description: event
            .description
            .clone()
            .or_else(|| Some(format!("{}: {}", rated.version.product_name, rated.price_name))),
        metadata: Metadata::new(),
        request_hash: String::new(),
        detail,
        created_at: now,
        executed_at: Some(now),
    };
    let destinations = writes.destinations.as_deref().unwrap_or_default();
    if let Some((hold, from_hold)) = &captured {
        record_numbered(conn, mode, &key, &transaction, &postings, sequence, destinations, now)?;
        let capture = Some((&transaction, *from_hold, fee.amount - from_hold));
        webhooks::hold_changed(conn, mode, webhooks::Topic::HoldCaptured, hold, capture, now)?;
        return Ok(());
    }
    webhooks::transaction_completed_to(conn, mode, destinations, &transaction, now)?;
    writes.pending.entries.push(crate::repo::ledger::TransactionEntry {
        account: key,
        kind: transaction.kind.clone(),
        transaction_id: transaction.id.clone(),
        at: now,
        postings,
    });
    writes.pending.transactions.push((transaction, sequence));
    Ok(())
}

/// A usage fee's `detail`, as stored and shown: serialised straight from the fee, without
/// building a JSON object first (this runs for every fee). Fields in the order shown.
#[derive(serde::Serialize)]
struct FeeDetail<'a> {
    dimensions: &'a BTreeMap<String, String>,
    usage_type: &'a str,
    volume_field: Option<&'a str>,
    input_volume: serde_json::Value,
    unit_price: serde_json::Value,
    volume_rate: serde_json::Value,
    package_size: serde_json::Value,
    description: Option<&'a str>,
}

/// The `detail` of a usage fee's transaction (a hold capture adds its parts to it).
#[derive(serde::Serialize)]
struct UsageFeeDetail<'a> {
    event_id: &'a str,
    event_type: &'a str,
    subject: Option<&'a str>,
    product_id: &'a str,
    product_name: &'a str,
    price_id: &'a str,
}

fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "{}".into())
}

/// The open holds the fresh events of a batch name, by id; an event naming a hold the
/// customer does not have, or one that is closed or past its `expires_at`, is an error of the
/// batch (which then changes nothing). Reads nothing for a batch whose events name no hold.
fn open_holds(
    conn: &mut dyn Conn,
    mode: Mode,
    customer_id: &str,
    batch: &[NewEvent],
    fresh: &[Priced],
    now: DateTime<Utc>,
    errors: &mut Vec<FieldError>,
) -> Result<HashMap<String, Hold>, OpError> {
    let mut found: HashMap<String, Hold> = HashMap::new();
    for priced in fresh {
        let Some(hold_id) = &priced.event.hold_id else { continue };
        if found.contains_key(hold_id) {
            continue;
        }
        let index = batch.iter().position(|event| event.id == priced.event.id).unwrap_or(0);
        let field = format!("events[{index}].hold_id");
        match crate::repo::holds::get(conn, mode, customer_id, hold_id)? {
            None => errors.push(FieldError { field, message: format!("the customer has no hold {hold_id}") }),
            Some(hold) => match holds::require_open(&hold, now) {
                Ok(()) => {
                    found.insert(hold_id.clone(), hold);
                }
                Err(error) => errors.push(FieldError { field, message: error.to_string() }),
            },
        }
    }
    Ok(found)
}

/// Fees by the id of the event that owes them, and a warning per event that owes none.
pub type Simulation = (Vec<(String, RatedFee)>, Vec<String>);

/// Prices `batch` against one product version as a brand-new customer would be priced, and
/// changes nothing. Returns the fees and a warning for every event that would be stored
/// unbilled, naming the event and the reason's code; only a fee past the limits on amounts
/// refuses the simulation, as it would refuse the batch.
pub fn simulate(version: &Arc<ProductVersion>, batch: &[NewEvent]) -> Result<Simulation, OpError> {
    let versions = vec![version.clone()];
    let mut counters: HashMap<(String, i64), Usage> = HashMap::new();
    let mut fees = Vec::new();
    let mut warnings = Vec::new();
    let mut errors = Vec::new();
    for (index, event) in batch.iter().enumerate() {
        let snapshot = counters.clone();
        let mut load = |price: &UsagePrice, period: i64| {
            Ok(snapshot.get(&(price.id.clone(), period)).copied().unwrap_or(Usage::ZERO))
        };
        let mut updates = Vec::new();
        let mut keep =
            |price: &UsagePrice, period: i64, usage: Usage| updates.push(((price.id.clone(), period), usage));
        match rate_event(&versions, event, &mut load, &mut keep)? {
            Rating::Billed(rated) => {
                fees.extend(rated.into_iter().map(|fee| (event.id.clone(), fee)));
                counters.extend(updates);
            }
            Rating::Unbilled(Unbilled { code, message }) => warnings.push(format!(
                "event {} ({}) would not be billed ({}): {message}",
                event.id,
                event.event_type,
                code.as_str()
            )),
            Rating::Refused(message) => errors.push(FieldError { field: format!("events[{index}]"), message }),
        }
    }
    if !errors.is_empty() {
        return Err(OpError::Invalid(errors));
    }
    Ok((fees, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// How hashes were made before the canonical text was written field by field: stored
    /// events keep these hashes, so a replay must hash to exactly the same.
    fn hash_of_canonical_object(
        event_type: &str,
        occurred_at: DateTime<Utc>,
        subject: Option<&str>,
        description: Option<&str>,
        data_json: &str,
        costs_json: &str,
    ) -> String {
        let parse =
            |text: &str| serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()));
        let content = serde_json::json!({
            "event_type": event_type,
            "occurred_at": occurred_at.timestamp_micros(),
            "subject": subject,
            "description": description,
            "data": parse(data_json),
            "costs": parse(costs_json),
        });
        let mut canonical = String::new();
        write_canonical(&content, &mut canonical);
        crate::ops::request_hash(&canonical)
    }

    /// Stored details are shown back as JSON text: written from structs, they must read as
    /// the objects they were built as before, key order included.
    #[test]
    fn details_are_written_as_the_objects_they_were() {
        let dimensions: BTreeMap<String, String> =
            [("size".into(), "1024".into()), ("a".into(), "\"q\"".into())].into();
        let fee = FeeDetail {
            dimensions: &dimensions,
            usage_type: "volume",
            volume_field: Some("tokens"),
            input_volume: json_number(Some(Decimal::new(15000, 3))),
            unit_price: json_number(None),
            volume_rate: json_number(Some(Decimal::new(1, 12))),
            package_size: json_number(None),
            description: None,
        };
        let object = serde_json::json!({
            "dimensions": dimensions,
            "usage_type": "volume",
            "volume_field": Some("tokens"),
            "input_volume": json_number(Some(Decimal::new(15000, 3))),
            "unit_price": json_number(None),
            "volume_rate": json_number(Some(Decimal::new(1, 12))),
            "package_size": json_number(None),
            "description": Option::<String>::None,
        });
        assert_eq!(to_json(&fee), object.to_string());
        let usage = UsageFeeDetail {
            event_id: "e1",
            event_type: "image_generated",
            subject: None,
            product_id: "prp_1",
            product_name: "Glitch \u{e9}",
            price_id: "prc_1",
        };
        let object = serde_json::json!({
            "event_id": "e1",
            "event_type": "image_generated",
            "subject": Option::<String>::None,
            "product_id": "prp_1",
            "product_name": "Glitch \u{e9}",
            "price_id": "prc_1",
        });
        assert_eq!(to_json(&usage), object.to_string());
    }

    #[test]
    fn canonical_text_matches_the_canonical_object() {
        let at = Utc.with_ymd_and_hms(2026, 12, 2, 8, 30, 0).unwrap() + chrono::Duration::microseconds(123);
        let before_epoch = Utc.with_ymd_and_hms(1960, 1, 1, 0, 0, 0).unwrap();
        type Case<'a> = (&'a str, DateTime<Utc>, Option<&'a str>, Option<&'a str>, &'a str, &'a str);
        let cases: [Case; 6] = [
            ("image_generated", at, None, None, "{}", "[]"),
            ("image_generated", at, Some("user-1"), Some("a \"quoted\"\n line ünï"), "{}", "[]"),
            ("tokens", at, Some(""), None, r#"{"b":1.50,"a":"x","c":true}"#, "[]"),
            ("tokens", before_epoch, None, None, "{}", r#"[{"id":"c1","amount":0.10,"vendor_id":"v"}]"#),
            ("t\u{1}", at, None, Some(""), r#"{"n":{"z":1,"y":[2,3.0]}}"#, "[]"),
            ("t", at, None, None, "not json", "[ ]"),
        ];
        for (event_type, occurred_at, subject, description, data, costs) in cases {
            assert_eq!(
                content_hash(event_type, occurred_at, subject, description, data, costs),
                hash_of_canonical_object(event_type, occurred_at, subject, description, data, costs),
                "{event_type} {data} {costs}"
            );
        }
    }
}
