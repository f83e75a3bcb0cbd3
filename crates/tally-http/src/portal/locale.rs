//! Who reads a portal page: their language's formats (from `Accept-Language`) and their time
//! zone (from the `tally_tz` cookie the page's script sets from the browser's own zone).
//!
//! Four locales are written out exactly as CLDR has them (en-US, en-GB, de, fr): digit
//! grouping, decimal mark, where a currency's sign goes, dates and times. Any other language
//! falls back to en-US. Amounts stay exact: numbers are laid out from their decimal digits,
//! never through a float, and digits past the asset's precision show only when they are not
//! zero.

use super::format::AssetLook;
use axum::extract::FromRequestParts;
use axum::http::header::{self, HeaderMap};
use axum::http::request::Parts;
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Offset, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use std::convert::Infallible;

/// The cookie holding the browser's IANA time zone name.
pub const TZ_COOKIE: &str = "tally_tz";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Locale {
    #[default]
    EnUs,
    EnGb,
    De,
    Fr,
}

impl Locale {
    pub fn tag(self) -> &'static str {
        match self {
            Locale::EnUs => "en-US",
            Locale::EnGb => "en-GB",
            Locale::De => "de",
            Locale::Fr => "fr",
        }
    }

    /// The supported locale of one language tag (`en-GB`, `de-AT`, `fr`), if any.
    fn of_tag(tag: &str) -> Option<Locale> {
        let tag = tag.trim().to_ascii_lowercase();
        let (language, region) = tag.split_once(['-', '_']).unwrap_or((tag.as_str(), ""));
        match language {
            "en" if matches!(region, "gb" | "uk" | "ie" | "au" | "nz") => Some(Locale::EnGb),
            "en" => Some(Locale::EnUs),
            "de" => Some(Locale::De),
            "fr" => Some(Locale::Fr),
            _ => None,
        }
    }

    /// The best supported locale of an `Accept-Language` value: the first by preference
    /// (`q`, then order) that is supported; en-US when none is.
    pub fn negotiate(accept_language: &str) -> Locale {
        let mut ranked: Vec<(u16, usize, Locale)> = accept_language
            .split(',')
            .enumerate()
            .filter_map(|(index, part)| {
                let mut pieces = part.split(';');
                let locale = Locale::of_tag(pieces.next()?)?;
                let quality = pieces.find_map(|piece| piece.trim().strip_prefix("q=")).map_or(Some(1000), |q| {
                    q.trim().parse::<f32>().ok().map(|q| (q.clamp(0.0, 1.0) * 1000.0) as u16)
                })?;
                (quality > 0).then_some((quality, index, locale))
            })
            .collect();
        ranked.sort_by_key(|(quality, index, _)| (std::cmp::Reverse(*quality), *index));
        ranked.first().map(|(_, _, locale)| *locale).unwrap_or_default()
    }

    fn group_separator(self) -> &'static str {
        match self {
            Locale::EnUs | Locale::EnGb => ",",
            Locale::De => ".",
            Locale::Fr => "\u{202f}",
        }
    }

    fn decimal_mark(self) -> &'static str {
        match self {
            Locale::EnUs | Locale::EnGb => ".",
            Locale::De | Locale::Fr => ",",
        }
    }

    fn month(self, month: u32) -> &'static str {
        const EN: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
        const GB: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sept", "Oct", "Nov", "Dec"];
        const DE: [&str; 12] =
            ["Jan.", "Feb.", "März", "Apr.", "Mai", "Juni", "Juli", "Aug.", "Sept.", "Okt.", "Nov.", "Dez."];
        const FR: [&str; 12] =
            ["janv.", "févr.", "mars", "avr.", "mai", "juin", "juil.", "août", "sept.", "oct.", "nov.", "déc."];
        let index = (month.clamp(1, 12) - 1) as usize;
        match self {
            Locale::EnUs => EN[index],
            Locale::EnGb => GB[index],
            Locale::De => DE[index],
            Locale::Fr => FR[index],
        }
    }

    /// The sign of a currency in this locale, and whether it goes before the number; `None`
    /// for currencies written by their code.
    fn currency_sign(self, code: &str) -> Option<(&'static str, bool)> {
        let sign = match (self, code) {
            (Locale::EnUs, "USD") | (Locale::De, "USD") => "$",
            (Locale::EnGb, "USD") => "US$",
            (Locale::Fr, "USD") => "$US",
            (_, "EUR") => "€",
            (Locale::Fr, "GBP") => "£GB",
            (_, "GBP") => "£",
            (Locale::EnUs, "JPY") | (Locale::De, "JPY") => "¥",
            (Locale::EnGb, "JPY") => "JP¥",
            (_, "INR") => "₹",
            _ => return None,
        };
        Some((sign, matches!(self, Locale::EnUs | Locale::EnGb)))
    }
}

/// The reader of a page: locale and time zone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Viewer {
    pub locale: Locale,
    pub tz: Tz,
}

impl Default for Viewer {
    fn default() -> Viewer {
        Viewer { locale: Locale::EnUs, tz: Tz::UTC }
    }
}

/// A time zone name from the cookie, if the IANA database knows it (`%2F` taken as `/`).
pub fn parse_tz(text: &str) -> Option<Tz> {
    let name = text.trim().replace("%2F", "/").replace("%2f", "/");
    if name.is_empty() || name.len() > 64 {
        return None;
    }
    name.parse::<Tz>().ok()
}

impl Viewer {
    pub fn of_headers(headers: &HeaderMap) -> Viewer {
        let locale = headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|value| value.to_str().ok())
            .map(Locale::negotiate)
            .unwrap_or_default();
        let cookies = axum_extra::extract::cookie::CookieJar::from_headers(headers);
        let tz = cookies.get(TZ_COOKIE).and_then(|cookie| parse_tz(cookie.value())).unwrap_or(Tz::UTC);
        Viewer { locale, tz }
    }

    /// `value` (not negative) grouped, with at least `places` decimals: more only when the
    /// amount really has more digits, so nothing is hidden by rounding.
    pub fn number(&self, value: Decimal, places: u32) -> String {
        let english = super::format::number(value.abs(), places);
        english
            .chars()
            .map(|c| match c {
                ',' => self.locale.group_separator().to_owned(),
                '.' => self.locale.decimal_mark().to_owned(),
                other => other.to_string(),
            })
            .collect()
    }

    /// A signed amount with its unit: "-$0.50", "1.234,50 €", "2.00 video minutes",
    /// "1 credit".
    pub fn amount(&self, look: &AssetLook, value: Decimal) -> String {
        let sign = if value < Decimal::ZERO { "-" } else { "" };
        let digits = self.number(value, look.precision);
        if look.is_currency {
            return match self.locale.currency_sign(&look.code) {
                Some((symbol, true)) => format!("{sign}{symbol}{digits}"),
                Some((symbol, false)) => format!("{sign}{digits}\u{a0}{symbol}"),
                None => format!("{sign}{digits}\u{a0}{}", look.code),
            };
        }
        format!("{sign}{digits} {}", plural_label(&look.label, digits == "1"))
    }

    pub fn local(&self, at: DateTime<Utc>) -> NaiveDateTime {
        at.with_timezone(&self.tz).naive_local()
    }

    pub fn local_day(&self, at: DateTime<Utc>) -> NaiveDate {
        self.local(at).date()
    }

    /// The instant the customer's day `day` starts (the first valid local time of it).
    pub fn day_start(&self, day: NaiveDate) -> DateTime<Utc> {
        let midnight = day.and_hms_opt(0, 0, 0).unwrap_or_default();
        (0..=3)
            .find_map(|hour| self.tz.from_local_datetime(&(midnight + chrono::Duration::hours(hour))).earliest())
            .map(|at| at.with_timezone(&Utc))
            .unwrap_or_else(|| Utc.from_utc_datetime(&midnight))
    }

    /// The zone's current offset from UTC, in seconds.
    pub fn offset_seconds(&self, at: DateTime<Utc>) -> i32 {
        at.with_timezone(&self.tz).offset().fix().local_minus_utc()
    }

    /// "Jan 2" / "2 Jan" / "2. Jan." / "2 janv.".
    pub fn day_month(&self, day: NaiveDate) -> String {
        let month = self.locale.month(day.month());
        match self.locale {
            Locale::EnUs => format!("{month} {}", day.day()),
            Locale::EnGb | Locale::Fr => format!("{} {month}", day.day()),
            Locale::De => format!("{}. {month}", day.day()),
        }
    }

    /// "Jan 2, 2026" / "2 Jan 2026" / "02.01.2026" / "2 janv. 2026".
    pub fn date(&self, day: NaiveDate) -> String {
        match self.locale {
            Locale::EnUs => format!("{}, {}", self.day_month(day), day.year()),
            Locale::EnGb | Locale::Fr => format!("{} {}", self.day_month(day), day.year()),
            Locale::De => day.format("%d.%m.%Y").to_string(),
        }
    }

    /// An instant in the customer's zone: "Jan 2, 2026, 3:04 PM" / "2 Jan 2026, 15:04" /
    /// "02.01.2026, 15:04" / "2 janv. 2026, 15:04".
    pub fn date_time(&self, at: DateTime<Utc>) -> String {
        let local = self.local(at);
        let date = self.date(local.date());
        match self.locale {
            Locale::EnUs => {
                let (pm, hour) = local.hour12();
                format!("{date}, {hour}:{:02} {}", local.minute(), if pm { "PM" } else { "AM" })
            }
            Locale::EnGb | Locale::De | Locale::Fr => format!("{date}, {:02}:{:02}", local.hour(), local.minute()),
        }
    }

    /// A note naming the zone times are shown in; the page's script compares it with the
    /// browser's zone.
    pub fn zone_note(&self) -> maud::Markup {
        maud::html! { p class="muted zone" data-tz=(self.tz.name()) { "Times are in " (self.tz.name()) "." } }
    }

    /// The customer's day for a `<input type="date">` value.
    pub fn iso_day(&self, at: DateTime<Utc>) -> String {
        self.local_day(at).format("%Y-%m-%d").to_string()
    }
}

/// The script every portal page loads: it tells the server the browser's time zone (a
/// cookie, read by [`Viewer::of_headers`]; the page is reloaded once when the zone it was
/// drawn in differs, if cookies work), and shows a chart bar's value when it is tapped or
/// clicked, for screens without hover. Pages work without it, in UTC.
pub const VIEW_SCRIPT: &str = r#"(function () {
  try {
    var zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    var marker = document.querySelector('[data-tz]');
    var shown = marker && marker.getAttribute('data-tz');
    if (zone && /^[A-Za-z0-9_+\-\/]{1,64}$/.test(zone)) {
      document.cookie = 'tally_tz=' + zone + '; path=/portal; max-age=31536000; samesite=lax';
      if (shown && shown !== zone && document.cookie.indexOf('tally_tz=' + zone) !== -1 && !sessionStorage.getItem('tally_tz_reloaded')) {
        sessionStorage.setItem('tally_tz_reloaded', '1');
        location.reload();
        return;
      }
    }
  } catch (e) {}
  document.addEventListener('click', function (event) {
    var bar = event.target.closest ? event.target.closest('rect[data-value]') : null;
    if (!bar) return;
    var figure = bar.closest('figure');
    var output = figure && figure.querySelector('.chart-value');
    if (output) output.textContent = bar.getAttribute('data-value');
  });
})();
"#;

pub async fn view_script() -> axum::response::Response {
    use axum::http::HeaderValue;
    use axum::response::IntoResponse;
    let mut response = ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], VIEW_SCRIPT).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    response.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// An English unit label in the singular for exactly one, in the plural otherwise: "1
/// credit", "2 credits". Only a last word in lowercase letters changes, so codes such as
/// "MIN" are left as they are.
pub fn plural_label(label: &str, one: bool) -> String {
    let (head, word) = label.rsplit_once(' ').map_or(("", label), |(head, word)| (head, word));
    let english = !word.is_empty() && word.chars().all(|c| c.is_ascii_lowercase());
    let word = match (english, one) {
        (false, _) => word.to_owned(),
        (true, true) if word.ends_with('s') && !word.ends_with("ss") => word[..word.len() - 1].to_owned(),
        (true, false) if !word.ends_with('s') => format!("{word}s"),
        (true, _) => word.to_owned(),
    };
    if head.is_empty() {
        word
    } else {
        format!("{head} {word}")
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Viewer {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Viewer, Infallible> {
        Ok(Viewer::of_headers(&parts.headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;
    use tally_store::ops::assets::KnownAsset;

    fn d(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    fn viewer(locale: Locale) -> Viewer {
        Viewer { locale, tz: Tz::UTC }
    }

    fn currency(code: &str) -> AssetLook {
        AssetLook::of(&KnownAsset::Currency { code: code.into(), minor_units: 2 })
    }

    #[test]
    fn accept_language_picks_the_best_supported_locale() {
        assert_eq!(Locale::negotiate("en-GB,en;q=0.9"), Locale::EnGb);
        assert_eq!(Locale::negotiate("ja, de-AT;q=0.8, fr;q=0.9"), Locale::Fr);
        assert_eq!(Locale::negotiate("de-DE"), Locale::De);
        assert_eq!(Locale::negotiate("en"), Locale::EnUs);
        assert_eq!(Locale::negotiate("ja, zh;q=0.5"), Locale::EnUs, "the fallback");
        assert_eq!(Locale::negotiate("fr;q=0, de;q=0.1"), Locale::De, "q=0 means not wanted");
        assert_eq!(Locale::negotiate(""), Locale::EnUs);
    }

    /// Each expected text is what CLDR's data gives (as ICU's `Intl.NumberFormat` and
    /// `Intl.DateTimeFormat` print it).
    #[test]
    fn formats_are_cldrs() {
        let amount = d("-1234.5");
        let cases = [
            (Locale::EnUs, "-$1,234.50", "1,234,567.125", "Jan 2, 2026, 3:04 PM", "Mar 2"),
            (Locale::EnGb, "-US$1,234.50", "1,234,567.125", "2 Jan 2026, 15:04", "2 Mar"),
            (Locale::De, "-1.234,50\u{a0}$", "1.234.567,125", "02.01.2026, 15:04", "2. März"),
            (Locale::Fr, "-1\u{202f}234,50\u{a0}$US", "1\u{202f}234\u{202f}567,125", "2 janv. 2026, 15:04", "2 mars"),
        ];
        let at = Utc.with_ymd_and_hms(2026, 1, 2, 15, 4, 0).unwrap();
        for (locale, money, number, when, day) in cases {
            let viewer = viewer(locale);
            assert_eq!(viewer.amount(&currency("USD"), amount), money, "{locale:?}");
            assert_eq!(viewer.number(d("1234567.125"), 0), number, "{locale:?}");
            assert_eq!(viewer.date_time(at), when, "{locale:?}");
            assert_eq!(viewer.day_month(NaiveDate::from_ymd_opt(2026, 3, 2).unwrap()), day, "{locale:?}");
        }
        assert_eq!(viewer(Locale::De).amount(&currency("EUR"), d("1234.5")), "1.234,50\u{a0}€");
        assert_eq!(viewer(Locale::Fr).amount(&currency("EUR"), d("1234.5")), "1\u{202f}234,50\u{a0}€");
        assert_eq!(viewer(Locale::EnGb).amount(&currency("GBP"), d("1234.5")), "£1,234.50");
        assert_eq!(
            viewer(Locale::EnUs).date_time(Utc.with_ymd_and_hms(2026, 1, 2, 0, 5, 0).unwrap()),
            "Jan 2, 2026, 12:05 AM"
        );
    }

    #[test]
    fn sub_cent_digits_show_only_when_not_zero() {
        let dollars = currency("USD");
        let en = viewer(Locale::EnUs);
        assert_eq!(en.amount(&dollars, d("12.3")), "$12.30");
        assert_eq!(en.amount(&dollars, d("12.300000")), "$12.30", "zeros past the cent are not shown");
        assert_eq!(en.amount(&dollars, d("0.0015")), "$0.0015", "a real sub-cent amount is shown exactly");
        assert_eq!(viewer(Locale::De).amount(&dollars, d("0.0015")), "0,0015\u{a0}$");
    }

    #[test]
    fn one_credit_two_credits() {
        let credits = AssetLook {
            code: "CRED".into(),
            name: "Credits".into(),
            label: "credits".into(),
            symbol: None,
            precision: 0,
            is_currency: false,
        };
        let en = viewer(Locale::EnUs);
        assert_eq!(en.amount(&credits, d("1")), "1 credit");
        assert_eq!(en.amount(&credits, d("-1")), "-1 credit");
        assert_eq!(en.amount(&credits, d("2")), "2 credits");
        assert_eq!(en.amount(&credits, d("1.5")), "1.5 credits");
        assert_eq!(plural_label("video minutes", true), "video minute");
        assert_eq!(plural_label("credit", false), "credits");
        assert_eq!(plural_label("MIN", true), "MIN");
        assert_eq!(plural_label("GPU hours", false), "GPU hours");
    }

    #[test]
    fn time_zones_come_from_the_iana_list() {
        assert_eq!(parse_tz("Asia/Tokyo"), Some(Tz::Asia__Tokyo));
        assert_eq!(parse_tz("Asia%2FTokyo"), Some(Tz::Asia__Tokyo));
        assert_eq!(parse_tz("Mars/Olympus"), None);
        assert_eq!(parse_tz("<script>"), None);
        let tokyo = Viewer { locale: Locale::EnGb, tz: Tz::Asia__Tokyo };
        let late = Utc.with_ymd_and_hms(2026, 1, 2, 23, 30, 0).unwrap();
        assert_eq!(tokyo.date_time(late), "3 Jan 2026, 08:30", "23:30 UTC is the next morning in Tokyo");
        assert_eq!(
            tokyo.day_start(NaiveDate::from_ymd_opt(2026, 1, 3).unwrap()),
            Utc.with_ymd_and_hms(2026, 1, 2, 15, 0, 0).unwrap()
        );
    }
}
