//! The portal's pages as HTML. Every value from the database or the customer is escaped
//! here, once, on its way into markup.

use super::format::AssetLook;
use super::locale::Viewer;
use super::overview;
use super::{account_id, AutoAccount, AutoPage, Overview, Paged, TopUpLine, UsageLine};
use crate::html::{escape, page_with, Branding};
use tally_core::Environment;
use tally_store::ops::assets::KnownAsset;
use tally_store::ops::auto_top_up::MAX_FAILURES;
use tally_store::ops::FieldError;
use tally_store::repo::portal::PortalSession;
use tally_store::repo::topups::{PaymentMethod, TopUpStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tab {
    Overview,
    Usage,
    TopUp,
    Auto,
    Cards,
    Activity,
}

fn nav(branding: &Branding, session: &PortalSession, current: Tab) -> String {
    let link = |tab: Tab, href: &str, text: &str| {
        let current = if tab == current { r#" aria-current="page""# } else { "" };
        format!(r#"<a href="{href}"{current}>{text}</a>"#)
    };
    let badge = match session.mode.environment() {
        Environment::Test => r#"<span class="badge">Test mode</span>"#,
        Environment::Live => "",
    };
    format!(
        r#"<nav class="portal-nav" aria-label="Billing portal">{}{}{}{}{}{}{badge}<a class="back" href="{}">&larr; Back to {}</a></nav>"#,
        link(Tab::Overview, "/portal", "Overview"),
        link(Tab::Usage, "/portal/usage", "Usage"),
        link(Tab::Activity, "/portal/activity", "Activity"),
        link(Tab::TopUp, "/portal/top-ups", "Top up"),
        link(Tab::Auto, "/portal/auto-top-up", "Auto top-up"),
        link(Tab::Cards, "/portal/cards", "Cards"),
        escape(&session.return_url),
        escape(&branding.name),
    )
}

pub(super) fn portal_page(
    branding: &Branding,
    session: &PortalSession,
    current: Tab,
    title: &str,
    body: &str,
) -> String {
    let script = match current {
        Tab::TopUp => r#"<script src="/portal/portal.js" defer></script>"#,
        Tab::Overview | Tab::Usage | Tab::Auto | Tab::Cards | Tab::Activity => "",
    };
    // Every page: the time zone cookie and the charts' values on tap (`locale::VIEW_SCRIPT`).
    let script = format!(r#"{script}<script src="/portal/view.js" defer></script>"#);
    page_with(branding, title, &nav(branding, session, current), body, &script)
}

/// A page with a heading and one message, for errors and dead ends.
pub fn message(branding: &Branding, title: &str, text: &str) -> String {
    page_with(branding, title, "", &format!("<h1>{}</h1><p>{}</p>", escape(title), escape(text)), "")
}

/// A field error as the customer reads it.
pub fn field_message(field: &FieldError) -> String {
    let name = match field.field.as_str() {
        "threshold" => "Threshold",
        "amount" => "Amount",
        "currency" => "Currency",
        "payment_method_id" => "Card",
        _ => "",
    };
    if name.is_empty() {
        field.message.clone()
    } else {
        format!("{name}: {}", field.message)
    }
}

pub(super) fn errors_box(errors: &[String]) -> String {
    if errors.is_empty() {
        return String::new();
    }
    let items: String = errors.iter().map(|error| format!("<li>{}</li>", escape(error))).collect();
    format!(r#"<div class="error" role="alert"><ul>{items}</ul></div>"#)
}

fn returned_notice(viewer: &Viewer, line: &TopUpLine) -> String {
    let top_up = &line.top_up;
    let paid = escape(&viewer.amount(&line.currency, top_up.amount));
    let bought = escape(&viewer.amount(&line.asset, top_up.asset_amount));
    match top_up.status {
        TopUpStatus::Succeeded => {
            format!(
                r#"<div class="ok" role="status">Thank you: your top-up of {paid} succeeded and {bought} was added.</div>"#
            )
        }
        TopUpStatus::Failed | TopUpStatus::Expired => format!(
            r#"<div class="error" role="alert">Your top-up of {paid} did not go through: {} <a href="/portal/top-ups">Try again</a></div>"#,
            escape(top_up.failure_reason.as_deref().unwrap_or("the payment failed."))
        ),
        TopUpStatus::Initiated | TopUpStatus::Pending => {
            let resume = top_up
                .redirect_url
                .as_deref()
                .map(|url| format!(r#" <a href="{}">Return to the payment page</a>."#, escape(url)))
                .unwrap_or_default();
            format!(r#"<div class="error" role="status">Your top-up of {paid} has not been paid yet.{resume}</div>"#)
        }
    }
}

pub fn home(branding: &Branding, session: &PortalSession, overview: &Overview) -> String {
    let viewer = &overview.viewer;
    let notice = overview.returned_from.as_ref().map(|line| returned_notice(viewer, line)).unwrap_or_default();
    let month: String = if overview.month_spend.is_empty() {
        r#"<p class="muted">Nothing spent yet this month.</p>"#.into()
    } else {
        let rows: String = overview
            .month_spend
            .iter()
            .map(|(look, total)| {
                format!(
                    r#"<li><span>{}</span><strong>{}</strong></li>"#,
                    escape(&look.name),
                    escape(&viewer.amount(look, *total))
                )
            })
            .collect();
        format!(r#"<ul class="card stats">{rows}</ul>"#)
    };
    let charts: String = if overview.charts.is_empty() {
        r#"<p class="muted">No usage in the last 30 days.</p>"#.into()
    } else {
        overview
            .charts
            .iter()
            .map(|chart| format!(r#"<div class="card">{}</div>"#, overview::product_chart(viewer, chart)))
            .collect()
    };
    let accounts: String = if overview.accounts.is_empty() {
        r#"<p class="muted">No balances yet. <a href="/portal/top-ups">Top up</a> to get started.</p>"#.into()
    } else {
        let cards: String = overview
            .accounts
            .iter()
            .map(|(account, look)| {
                let pay_now = overview.pay_now.get(&account_id(&account.key)).map(String::as_str);
                overview::account_card(viewer, account, look, pay_now, overview.renewing, overview.now)
            })
            .collect();
        format!(r#"<div class="grid">{cards}</div>"#)
    };
    let body = format!(
        r#"{notice}<h1>Your balances</h1>{accounts}
<p><a class="button" href="/portal/top-ups">Top up</a></p>{plans}
<h2>Spent this month <span class="muted">(since {since})</span></h2>{month}
<h2>Spend over the last 30 days</h2>{charts}
<h2>Recent usage</h2>{usage}<p><a href="/portal/usage">All usage ({usage_count})</a> · <a href="/portal/activity">All activity</a></p>
<h2>Recent top-ups</h2>{top_ups}<p><a href="/portal/top-ups">All top-ups ({top_up_count})</a></p>{zone}"#,
        zone = viewer.zone_note(),
        plans = overview::plan_cards(viewer, &overview.plans, overview.now),
        since = escape(&viewer.day_month(overview.month_start)),
        usage = usage_table(viewer, &overview.recent_usage),
        usage_count = overview.usage_count,
        top_ups = top_up_table(viewer, &overview.recent_top_ups, None),
        top_up_count = overview.top_up_count,
    );
    portal_page(branding, session, Tab::Overview, "Billing", &body)
}

fn usage_table(viewer: &Viewer, lines: &[UsageLine]) -> String {
    if lines.is_empty() {
        return r#"<p class="muted">No usage yet.</p>"#.into();
    }
    let rows: String = lines
        .iter()
        .map(|line| {
            format!(
                r#"<tr><td data-label="When">{when}</td><td data-label="Product">{product}</td><td data-label="Subject">{subject}</td><td data-label="Description">{description}</td><td data-label="Amount" class="amount">{amount}</td></tr>"#,
                when = escape(&viewer.date_time(line.when)),
                product = escape(line.product.as_deref().unwrap_or("—")),
                subject = escape(line.subject.as_deref().unwrap_or("—")),
                description = escape(line.fee.description.as_deref().unwrap_or("")),
                amount = escape(&viewer.amount(&line.look, line.fee.amount)),
            )
        })
        .collect();
    format!(
        r#"<div class="card table-wrap"><table class="stack"><caption class="sr-only">Usage, newest first</caption><thead><tr><th scope="col">When</th><th scope="col">Product</th><th scope="col">Subject</th><th scope="col">Description</th><th scope="col" class="amount">Amount</th></tr></thead><tbody>{rows}</tbody></table></div>"#
    )
}

/// Top-ups, newest first. With `csrf` (the top-ups page) an open portal top-up offers Resume
/// and Cancel; the overview's short list (`None`) has no actions column.
pub(super) fn top_up_table(viewer: &Viewer, lines: &[TopUpLine], csrf: Option<&str>) -> String {
    if lines.is_empty() {
        return r#"<p class="muted">No top-ups yet.</p>"#.into();
    }
    let rows: String = lines
        .iter()
        .map(|line| {
            let top_up = &line.top_up;
            let how = match top_up.origin.as_str() {
                "auto" => "Automatic",
                "portal" => "Billing portal",
                _ => "Platform",
            };
            let reason = top_up
                .failure_reason
                .as_deref()
                .filter(|_| !top_up.status.is_open())
                .map(|reason| format!(r#"<br><span class="muted">{}</span>"#, escape(reason)))
                .unwrap_or_default();
            let paid = escape(&viewer.amount(&line.currency, top_up.amount));
            let resumable = top_up.status.is_open() && top_up.origin == "portal";
            let actions = match (csrf, &top_up.redirect_url) {
                (Some(csrf), Some(url)) if resumable => format!(
                    r#"<td data-label="Actions"><a href="{url}" aria-label="Resume the top-up of {paid}">Resume</a> <form class="inline" method="post" action="/portal/top-ups/{id}/cancel"><input type="hidden" name="csrf" value="{csrf}"><button type="submit" class="secondary" aria-label="Cancel the top-up of {paid}">Cancel</button></form></td>"#,
                    url = escape(url),
                    id = escape(&top_up.id),
                ),
                (Some(_), _) => r#"<td data-label="Actions"></td>"#.to_owned(),
                (None, _) => String::new(),
            };
            format!(
                r#"<tr data-top-up="{id}"><td data-label="When">{when}</td><td data-label="Paid" class="amount">{paid}</td><td data-label="Received" class="amount">{bought}</td><td data-label="Status" class="status-{status}">{status}{reason}</td><td data-label="How">{how}</td>{actions}</tr>"#,
                id = escape(&top_up.id),
                when = escape(&viewer.date_time(top_up.created_at)),
                bought = escape(&viewer.amount(&line.asset, top_up.asset_amount)),
                status = escape(top_up.status.as_str()),
            )
        })
        .collect();
    let actions_header =
        if csrf.is_some() { r#"<th scope="col"><span class="sr-only">Actions</span></th>"# } else { "" };
    format!(
        r#"<div class="card table-wrap"><table class="stack"><caption class="sr-only">Top-ups, newest first</caption><thead><tr><th scope="col">When</th><th scope="col" class="amount">Paid</th><th scope="col" class="amount">Received</th><th scope="col">Status</th><th scope="col">How</th>{actions_header}</tr></thead><tbody>{rows}</tbody></table></div>"#
    )
}

pub(super) fn pager<T>(base: &str, paged: &Paged<T>) -> String {
    let newer = if paged.page > 1 {
        format!(r#"<a href="{base}?page={}">&larr; Newer</a>"#, paged.page - 1)
    } else {
        "<span></span>".into()
    };
    let older = if paged.has_next() {
        format!(r#"<a href="{base}?page={}">Older &rarr;</a>"#, paged.page + 1)
    } else {
        "<span></span>".into()
    };
    format!(r#"<nav class="pager" aria-label="Pages">{newer}{older}</nav>"#)
}

pub fn usage(branding: &Branding, session: &PortalSession, viewer: &Viewer, paged: &Paged<UsageLine>) -> String {
    let body = format!(
        r#"<h1>Usage</h1><p class="muted">Everything charged to your balances, newest first ({total} in all).</p>{table}{pager}{zone}"#,
        zone = viewer.zone_note(),
        total = paged.total,
        table = usage_table(viewer, &paged.items),
        pager = pager("/portal/usage", paged),
    );
    portal_page(branding, session, Tab::Usage, "Usage", &body)
}

pub(super) fn method_label(method: &PaymentMethod) -> String {
    let brand = method.brand.as_deref().map(capitalize).unwrap_or_else(|| "Card".into());
    match method.last4.as_deref() {
        Some(last4) => format!("{brand} ending {last4}"),
        None => brand,
    }
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

fn auto_status(viewer: &Viewer, entry: &AutoAccount, methods: &[PaymentMethod]) -> String {
    let Some(setting) = &entry.setting else {
        return "Off.".into();
    };
    let currency = AssetLook::of(&KnownAsset::Currency {
        code: setting.currency.clone(),
        minor_units: tally_core::currency::minor_units(&setting.currency).unwrap_or(2),
    });
    let card = setting
        .payment_method_id
        .as_ref()
        .and_then(|id| methods.iter().find(|method| &method.id == id))
        .map(method_label)
        .unwrap_or_else(|| "no card".into());
    let mut status = if setting.enabled {
        format!(
            "On: when available falls below {}, pay {} with your {card}.",
            viewer.amount(&entry.look, setting.threshold),
            viewer.amount(&currency, setting.amount)
        )
    } else if setting.failures >= MAX_FAILURES {
        format!("Off: turned off after {} failed attempts in a row.", setting.failures)
    } else {
        "Off.".into()
    };
    if setting.in_flight_top_up_id.is_some() {
        status.push_str(" A top-up is in progress.");
    }
    if let Some(error) = &setting.last_error {
        status.push_str(&format!(" Last problem: {error}"));
    }
    if let (true, Some(retry_at)) = (setting.enabled, setting.retry_at) {
        status.push_str(&format!(" Next try after {}.", viewer.date_time(retry_at)));
    }
    status
}

fn auto_form(
    session: &PortalSession,
    viewer: &Viewer,
    entry: &AutoAccount,
    methods: &[PaymentMethod],
    saved: bool,
) -> String {
    let key = &entry.account.key;
    let id = account_id(key);
    let slug: String = id.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let setting = entry.setting.as_ref();
    let typed = entry.typed.as_ref();
    let enabled = typed.map_or(setting.is_some_and(|setting| setting.enabled), |typed| typed.enabled.is_some());
    let threshold =
        typed.map_or_else(|| setting.map(|s| s.threshold.to_string()).unwrap_or_default(), |t| t.threshold.clone());
    let amount = typed.map_or_else(|| setting.map(|s| s.amount.to_string()).unwrap_or_default(), |t| t.amount.clone());
    let currency =
        typed.map_or_else(|| setting.map(|s| s.currency.clone()).unwrap_or_default(), |t| t.currency.clone());
    let method_id = typed.map_or_else(
        || {
            setting
                .and_then(|s| s.payment_method_id.clone())
                .or_else(|| methods.first().map(|m| m.id.clone()))
                .unwrap_or_default()
        },
        |t| t.payment_method_id.clone(),
    );
    let currencies: String = entry
        .currencies
        .iter()
        .map(|code| {
            let selected = if *code == currency { " selected" } else { "" };
            format!(r#"<option value="{code}"{selected}>{code}</option>"#, code = escape(code))
        })
        .collect();
    let cards: String = methods
        .iter()
        .map(|method| {
            let selected = if method.id == method_id { " selected" } else { "" };
            format!(r#"<option value="{}"{selected}>{}</option>"#, escape(&method.id), escape(&method_label(method)))
        })
        .collect();
    let no_cards = if methods.is_empty() {
        r#"<p class="muted">No saved card yet: <a href="/portal/top-ups">top up once</a> and the card you pay with is saved for automatic top-ups.</p>"#
    } else {
        ""
    };
    let notice = if saved { r#"<div class="ok" role="status">Saved.</div>"# } else { "" };
    let unit = escape(&entry.look.label);
    let checked = if enabled { " checked" } else { "" };
    format!(
        r#"<section class="card" aria-labelledby="auto-{slug}" data-account="{id}"><h2 id="auto-{slug}">{name}{account}</h2>{notice}{errors}
<p class="muted" id="status-{slug}">{status}</p>{no_cards}
<form method="post" action="/portal/auto-top-up"><input type="hidden" name="csrf" value="{csrf}"><input type="hidden" name="account" value="{id}">
<label class="check" for="enabled-{slug}"><input type="checkbox" id="enabled-{slug}" name="enabled" value="on"{checked}> Top up automatically</label>
<div class="fields"><div><label for="threshold-{slug}">When available falls below ({unit})</label><input id="threshold-{slug}" name="threshold" inputmode="decimal" value="{threshold}" placeholder="50"></div>
<div><label for="amount-{slug}">Pay each time</label><input id="amount-{slug}" name="amount" inputmode="decimal" value="{amount}" placeholder="10.00"></div>
<div><label for="currency-{slug}">Currency</label><select id="currency-{slug}" name="currency">{currencies}</select></div>
<div><label for="method-{slug}">Card</label><select id="method-{slug}" name="payment_method_id"><option value="">Choose a saved card</option>{cards}</select></div></div>
<button type="submit">Save auto top-up</button></form></section>"#,
        id = escape(&id),
        name = escape(&entry.look.name),
        account = if key.name == "default" {
            String::new()
        } else {
            format!(" <span class=\"muted\">({})</span>", escape(&key.name))
        },
        errors = errors_box(&entry.errors),
        status = escape(&auto_status(viewer, entry, methods)),
        csrf = escape(&session.csrf_token),
        threshold = escape(&threshold),
        amount = escape(&amount),
    )
}

pub fn auto_top_up(branding: &Branding, session: &PortalSession, viewer: &Viewer, page: &AutoPage) -> String {
    let forms: String = if page.accounts.is_empty() {
        r#"<p class="muted">You have no balances yet. <a href="/portal/top-ups">Top up</a> first.</p>"#.into()
    } else {
        page.accounts
            .iter()
            .filter(|entry| !entry.currencies.is_empty())
            .map(|entry| {
                auto_form(
                    session,
                    viewer,
                    entry,
                    &page.methods,
                    page.saved.as_deref() == Some(&account_id(&entry.account.key)),
                )
            })
            .collect()
    };
    let body = format!(
        r#"<h1>Auto top-up</h1><p class="muted">Keep a balance from running out: when it falls below the amount you set, your saved card is charged and the balance topped up. After {MAX_FAILURES} failed payments in a row auto top-up turns itself off.</p>{forms}{zone}"#,
        zone = viewer.zone_note(),
    );
    portal_page(branding, session, Tab::Auto, "Auto top-up", &body)
}
