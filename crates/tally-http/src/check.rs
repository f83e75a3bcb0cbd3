//! Turning request fields into domain values ("parse, don't validate"). A `Checker` collects
//! every problem in a request so that one 422 lists them all.

use crate::error::ApiError;
use crate::limits::*;
use crate::types::Amount;
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use tally_core::asset::AssetCode;
use tally_core::money::{self, AmountError};
use tally_store::ops::FieldError;

#[derive(Default)]
pub struct Checker {
    errors: Vec<FieldError>,
}

impl Checker {
    pub fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError { field: field.into(), message: message.into() });
    }

    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Invalid(self.errors))
        }
    }

    /// A required text: trimmed, not empty, at most `max` characters.
    pub fn text(&mut self, field: &str, value: &str, max: usize) -> String {
        let trimmed = value.trim();
        if trimmed.is_empty() {
            self.error(field, "must not be empty");
        } else if trimmed.chars().count() > max {
            self.error(field, format!("must be at most {max} characters"));
        } else if trimmed.chars().any(|c| c.is_control()) {
            self.error(field, "must not contain control characters");
        }
        trimmed.to_owned()
    }

    /// An optional text; an empty one counts as absent.
    pub fn opt_text(&mut self, field: &str, value: Option<&str>, max: usize) -> Option<String> {
        let value = value.map(str::trim).filter(|value| !value.is_empty())?;
        Some(self.text(field, value, max))
    }

    pub fn email(&mut self, field: &str, value: Option<&str>) -> Option<String> {
        let email = self.opt_text(field, value, MAX_TEXT_CHARS)?;
        let valid = email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && !domain.is_empty() && !domain.starts_with('.') && !email.contains(char::is_whitespace)
        });
        if !valid {
            self.error(field, "must be an email address such as ada@example.com");
        }
        Some(email)
    }

    pub fn metadata(&mut self, field: &str, value: Option<&BTreeMap<String, String>>) -> BTreeMap<String, String> {
        let Some(metadata) = value else {
            return BTreeMap::new();
        };
        if metadata.len() > MAX_METADATA_PAIRS {
            self.error(field, format!("must have at most {MAX_METADATA_PAIRS} keys"));
        }
        for (key, value) in metadata {
            if key.is_empty() || key.chars().count() > MAX_METADATA_KEY_CHARS {
                self.error(format!("{field}.{key}"), format!("keys must be 1 to {MAX_METADATA_KEY_CHARS} characters"));
            }
            if value.chars().count() > MAX_METADATA_VALUE_CHARS {
                self.error(
                    format!("{field}.{key}"),
                    format!("values must be at most {MAX_METADATA_VALUE_CHARS} characters"),
                );
            }
        }
        metadata.clone()
    }

    pub fn asset_code(&mut self, field: &str, value: &str) -> Option<AssetCode> {
        match AssetCode::parse(value) {
            Ok(code) => Some(code),
            Err(error) => {
                self.error(field, error.to_string());
                None
            }
        }
    }

    fn amount_with(
        &mut self,
        field: &str,
        value: Amount,
        check: fn(Decimal) -> Result<Decimal, AmountError>,
    ) -> Decimal {
        match check(value.0) {
            Ok(amount) => amount,
            Err(error) => {
                self.error(field, error.to_string());
                value.0
            }
        }
    }

    pub fn amount(&mut self, field: &str, value: Amount) -> Decimal {
        self.amount_with(field, value, money::check_amount)
    }

    pub fn positive(&mut self, field: &str, value: Amount) -> Decimal {
        self.amount_with(field, value, money::check_positive)
    }

    pub fn non_zero(&mut self, field: &str, value: Amount) -> Decimal {
        self.amount_with(field, value, money::check_non_zero)
    }

    /// A client-supplied id: 1 to 255 printable ASCII characters.
    pub fn client_id(&mut self, field: &str, value: &str) -> String {
        let valid = !value.is_empty() && value.len() <= MAX_ID_CHARS && value.chars().all(|c| c.is_ascii_graphic());
        if !valid {
            self.error(field, format!("must be 1 to {MAX_ID_CHARS} printable ASCII characters without spaces"));
        }
        value.to_owned()
    }

    /// A wallet account name: lower-cased; letters, digits, `_` and `-`. Defaults to `default`.
    pub fn account_name(&mut self, field: &str, value: Option<&str>) -> String {
        let Some(name) = value.map(str::trim).filter(|name| !name.is_empty()) else {
            return "default".to_owned();
        };
        let name = name.to_ascii_lowercase();
        if !is_account_name(&name) {
            self.error(field, format!("must be 1 to {MAX_ACCOUNT_NAME_CHARS} letters, digits, '_' or '-'"));
        }
        name
    }
}

/// The longest URL a client may give, in characters.
pub const MAX_CLIENT_URL_CHARS: usize = 2048;

/// Why a URL a client gave is refused, in words for the field's error.
pub fn http_url_problem(text: &str) -> Option<String> {
    if text.chars().count() > MAX_CLIENT_URL_CHARS {
        return Some(format!("must be at most {MAX_CLIENT_URL_CHARS} characters"));
    }
    // The parser would quietly drop or percent-encode these; a URL that holds them is a
    // client's mistake, and stored as given it could not go into a Location header.
    if text.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Some("must be an absolute http(s) URL without spaces or control characters".into());
    }
    let parsed = match url::Url::parse(text) {
        Ok(parsed) => parsed,
        Err(error) => return Some(format!("must be an absolute http(s) URL: {error}")),
    };
    if !matches!(parsed.scheme(), "http" | "https") {
        return Some("must be an http or https URL".into());
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Some("must name a host".into());
    }
    None
}

impl Checker {
    /// An absolute http(s) URL given by a client (where to send a customer back, where to
    /// deliver events): parsed with the `url` crate; no spaces or control characters; at most
    /// [`MAX_CLIENT_URL_CHARS`]. Returns the URL in its normalised, ASCII-only form (as the
    /// `url` crate serialises it), which is always a valid HTTP header value.
    pub fn http_url(&mut self, field: &str, value: &str) -> String {
        let text = value.trim();
        match http_url_problem(text) {
            Some(problem) => {
                self.error(field, problem);
                text.to_owned()
            }
            None => url::Url::parse(text).map(String::from).unwrap_or_else(|_| text.to_owned()),
        }
    }

    /// [`Checker::http_url`] for an optional field.
    pub fn opt_http_url(&mut self, field: &str, value: Option<&str>) -> Option<String> {
        value.map(|value| self.http_url(field, value))
    }
}

pub fn is_account_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ACCOUNT_NAME_CHARS
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Parses a wallet account id `{name}:{ASSET}` case-insensitively; a bare asset code means the
/// `default` account of that asset.
pub fn parse_account_id(text: &str) -> Option<(String, AssetCode)> {
    let (name, asset) = match text.split_once(':') {
        Some((name, asset)) => (name.to_ascii_lowercase(), asset),
        None => ("default".to_owned(), text),
    };
    if !is_account_name(&name) {
        return None;
    }
    Some((name, AssetCode::parse(asset).ok()?))
}

pub fn account_id(name: &str, asset: &str) -> String {
    format!("{name}:{asset}")
}
