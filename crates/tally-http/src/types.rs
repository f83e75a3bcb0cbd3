//! Wire types shared by every endpoint: exact decimal amounts as JSON numbers, UTC instants,
//! and the paging envelope.

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::str::FromStr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;

/// An exact decimal carried as a JSON number (a string holding a JSON number is accepted too).
/// Parsed from the number's own text, never through a float, so 14.566678 stays 14.566678; a
/// number `Decimal` cannot hold exactly is refused, never rounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Amount(pub Decimal);

/// A decimal written as a JSON number, exactly (see [`tally_core::money::parse_exact`]);
/// surrounding whitespace is ignored.
pub fn parse_decimal(text: &str) -> Option<Decimal> {
    tally_core::money::parse_exact(text.trim())
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Amount, D::Error> {
        // With serde_json's arbitrary_precision, a Number keeps the exact text it was sent as.
        let value = serde_json::Value::deserialize(deserializer)?;
        let (text, quoted) = match &value {
            serde_json::Value::Number(number) => (number.to_string(), false),
            serde_json::Value::String(text) => (text.clone(), true),
            _ => return Err(serde::de::Error::custom("must be a number")),
        };
        if let Some(amount) = tally_core::money::parse_exact(&text) {
            return Ok(Amount(amount));
        }
        let well_formed = serde_json::from_str::<serde_json::Number>(&text).is_ok();
        Err(serde::de::Error::custom(match (well_formed, quoted) {
            (true, _) => {
                "must be exact in at most 28 significant digits: amounts have at most 12 decimal places and a \
                 magnitude below 1000000000000000"
            }
            (false, true) => "must be a number such as 10.5 (a string must hold a plain JSON number)",
            (false, false) => "must be a number",
        }))
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let number =
            serde_json::Number::from_str(&self.0.normalize().to_string()).map_err(serde::ser::Error::custom)?;
        number.serialize(serializer)
    }
}

impl utoipa::PartialSchema for Amount {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Number)
            .description(Some("An exact decimal amount, in major units."))
            .into()
    }
}

impl utoipa::ToSchema for Amount {}

impl From<Decimal> for Amount {
    fn from(value: Decimal) -> Amount {
        Amount(value)
    }
}

/// A UTC instant. Accepts RFC 3339 with any offset, a date-time without offset (taken as
/// UTC), or a date (midnight UTC); always written as RFC 3339 UTC with microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub DateTime<Utc>);

pub fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.with_timezone(&Utc));
    }
    if let Ok(naive) = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f") {
        return Some(naive.and_utc());
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .map(|naive| naive.and_utc())
}

pub fn format_timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_timestamp(&text)
            .map(Timestamp)
            .ok_or_else(|| serde::de::Error::custom("must be an RFC 3339 date-time such as 2026-02-06T10:01:29Z"))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_timestamp(self.0))
    }
}

impl utoipa::PartialSchema for Timestamp {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::DateTime)))
            .into()
    }
}

impl utoipa::ToSchema for Timestamp {}

impl From<DateTime<Utc>> for Timestamp {
    fn from(value: DateTime<Utc>) -> Timestamp {
        Timestamp(value)
    }
}

/// Declares a paged response type `$name` of `$item`, named as the Credyt API names it.
#[macro_export]
macro_rules! page_type {
    ($name:ident, $item:ty) => {
        #[derive(Debug, serde::Serialize, utoipa::ToSchema)]
        pub struct $name {
            pub items: Vec<$item>,
            /// Exact up to 10 000 (or with `include_total=true`); past it, a lower bound.
            pub total_count: i64,
            pub limit: i64,
            pub offset: i64,
            /// Pass as `next` for the following page (keyset paging); absent on the last.
            #[serde(skip_serializing_if = "Option::is_none")]
            pub next: Option<String>,
            /// Pass as `prev` for the preceding page; absent on the first.
            #[serde(skip_serializing_if = "Option::is_none")]
            pub prev: Option<String>,
        }

        impl $name {
            pub fn new(items: Vec<$item>, total_count: i64, page: tally_store::repo::Page) -> $name {
                $name { items, total_count, limit: page.limit, offset: page.offset, next: None, prev: None }
            }

            /// The page `listing` holds, read for `window` of the list ordered by `keys`.
            pub fn listed<T>(
                listing: tally_store::repo::Listing<T>,
                window: &tally_store::repo::Window,
                keys: &tally_store::repo::Keys,
                item: impl FnMut(T) -> $item,
            ) -> $name {
                $name {
                    items: listing.items.into_iter().map(item).collect(),
                    total_count: listing.total,
                    limit: window.page.limit,
                    offset: if window.cursor.is_some() { 0 } else { window.page.offset },
                    next: listing.next.map(|cursor| cursor.encode(keys)),
                    prev: listing.prev.map(|cursor| cursor.encode(keys)),
                }
            }
        }
    };
}
