//! The portal's edges: where a customer lands when a link or session no longer works, pages
//! the portal does not have, and the headers that decide who may frame the portal.
//!
//! Framing: with no `portal_frame_ancestors`, every page says `frame-ancestors 'none'` and
//! `X-Frame-Options: DENY`. With origins, the policy lists them (and `'self'`) and
//! `X-Frame-Options` is left out: it cannot name several origins, and browsers that know
//! `frame-ancestors` ignore it, so sending `DENY` beside an allow-list would contradict it.

use super::{html, CONTENT_SECURITY_POLICY};
use crate::html::{page_with, Branding};
use crate::{AppState, HttpConfig};
use axum::extract::State;
use axum::http::header::{self, HeaderValue};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};

/// The framing headers of the portal's pages, fixed at start-up from the configuration.
#[derive(Clone)]
pub struct Framing {
    policy: HeaderValue,
    deny: bool,
}

impl Framing {
    pub fn of(config: &HttpConfig) -> Framing {
        let ancestors = if config.portal_frame_ancestors.is_empty() {
            "'none'".to_owned()
        } else {
            format!("'self' {}", config.portal_frame_ancestors.join(" "))
        };
        let policy = HeaderValue::from_str(&format!("{CONTENT_SECURITY_POLICY}; frame-ancestors {ancestors}"))
            .unwrap_or_else(|_| {
                HeaderValue::from_str(&format!("{CONTENT_SECURITY_POLICY}; frame-ancestors 'none'")).expect("ASCII")
            });
        Framing { policy, deny: config.portal_frame_ancestors.is_empty() }
    }
}

/// Sets the Content-Security-Policy (with `frame-ancestors`) and X-Frame-Options of every
/// HTML page the portal and the test checkout send.
pub async fn frame_headers(State(framing): State<Framing>, mut response: Response) -> Response {
    let headers = response.headers_mut();
    let is_html = headers.get(header::CONTENT_TYPE).is_some_and(|value| value.as_bytes().starts_with(b"text/html"));
    if is_html {
        headers.insert(header::CONTENT_SECURITY_POLICY, framing.policy.clone());
        if framing.deny {
            headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        } else {
            headers.remove(header::X_FRAME_OPTIONS);
        }
        headers.entry(header::REFERRER_POLICY).or_insert(HeaderValue::from_static("same-origin"));
    }
    response
}

/// `url` with `reason=…` added to its query (before any fragment).
pub fn with_reason(url: &str, reason: &str) -> String {
    let (base, fragment) = match url.split_once('#') {
        Some((base, fragment)) => (base, format!("#{fragment}")),
        None => (url, String::new()),
    };
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}reason={reason}{fragment}")
}

/// A dead end: a heading, what happened, the way back to the platform when known, and
/// `more` (other ways on).
fn dead_end(branding: &Branding, title: &str, text: &str, back: Option<&str>, more: Markup) -> Markup {
    let back = back.filter(|url| url.starts_with("https://") || url.starts_with("http://"));
    let body = html! {
        h1 { (title) }
        p { (text) }
        @if let Some(url) = back { p { a class="button" href=(url) { "Back to " (branding.name) } } }
        (more)
    };
    page_with(branding, title, html! {}, body, html! {})
}

pub fn ended(branding: &Branding, back: Option<&str>) -> Markup {
    dead_end(
        branding,
        "Your session has ended",
        &format!(
            "Billing portal sessions last an hour. Go back to {} and open the billing portal again.",
            branding.name
        ),
        back,
        html! {},
    )
}

pub fn invalid_link(branding: &Branding, back: Option<&str>) -> Markup {
    dead_end(
        branding,
        "This link is not valid",
        &format!(
            "Billing portal links work once, for a few minutes. Go back to {} and open the billing portal again.",
            branding.name
        ),
        back,
        html! {},
    )
}

/// Any other path under `/portal/`: an HTML page, not problem+json, since a person reads it.
pub async fn not_found(State(state): State<AppState>) -> Response {
    html(
        StatusCode::NOT_FOUND,
        dead_end(
            &state.branding,
            "Page not found",
            "The billing portal has no such page. Open its overview, or go back to where you came from.",
            None,
            html! { p { a href="/portal" { "Billing overview" } } },
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_join_the_query() {
        assert_eq!(with_reason("https://p.example/sorry", "expired"), "https://p.example/sorry?reason=expired");
        assert_eq!(with_reason("https://p.example/s?a=1#top", "used"), "https://p.example/s?a=1&reason=used#top");
    }
}
