//! The portal's pages as maud templates, which escape every value from the database or the
//! customer on its way into markup.

use super::format::AssetLook;
use super::locale::Viewer;
use super::overview;
use super::{account_id, AutoAccount, AutoPage, Overview, Paged, TopUpLine, UsageLine};
use crate::html::{page_with, Branding};
use maud::{html, Markup};
use tally_core::Environment;
use tally_store::ops::assets::KnownAsset;
use tally_store::ops::auto_top_up::MAX_FAILURES;
use tally_store::ops::FieldError;
use tally_store::repo::portal::PortalSession;
use tally_store::repo::topups::{PaymentMethod, TopUpStatus};
use tally_store::repo::COUNT_LIMIT;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tab {
    Overview,
    Usage,
    TopUp,
    Auto,
    Cards,
    Activity,
}

fn nav(branding: &Branding, session: &PortalSession, current: Tab) -> Markup {
    let tabs = [
        (Tab::Overview, "/portal", "Overview"),
        (Tab::Usage, "/portal/usage", "Usage"),
        (Tab::Activity, "/portal/activity", "Activity"),
        (Tab::TopUp, "/portal/top-ups", "Top up"),
        (Tab::Auto, "/portal/auto-top-up", "Auto top-up"),
        (Tab::Cards, "/portal/cards", "Cards"),
    ];
    let test_mode = match session.mode.environment() {
        Environment::Test => true,
        Environment::Live => false,
    };
    html! {
        nav class="portal-nav" aria-label="Billing portal" {
            @for (tab, href, text) in tabs {
                a href=(href) aria-current=[(tab == current).then_some("page")] { (text) }
            }
            @if test_mode { span class="badge" { "Test mode" } }
            a class="back" href=(session.return_url) { "\u{2190} Back to " (branding.name) }
        }
    }
}

pub(super) fn portal_page(
    branding: &Branding,
    session: &PortalSession,
    current: Tab,
    title: &str,
    body: Markup,
) -> Markup {
    let quotes = match current {
        Tab::TopUp => true,
        Tab::Overview | Tab::Usage | Tab::Auto | Tab::Cards | Tab::Activity => false,
    };
    // Every page: the time zone cookie and the charts' values on tap (`locale::VIEW_SCRIPT`).
    let scripts = html! {
        @if quotes { script src="/portal/portal.js" defer {} }
        script src="/portal/view.js" defer {}
    };
    page_with(branding, title, nav(branding, session, current), body, scripts)
}

/// A page with a heading and one message, for errors and dead ends.
pub fn message(branding: &Branding, title: &str, text: &str) -> Markup {
    page_with(branding, title, html! {}, html! { h1 { (title) } p { (text) } }, html! {})
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

pub(super) fn errors_box(errors: &[String]) -> Markup {
    html! {
        @if !errors.is_empty() {
            div class="error" role="alert" { ul { @for error in errors { li { (error) } } } }
        }
    }
}

fn returned_notice(viewer: &Viewer, line: &TopUpLine) -> Markup {
    let top_up = &line.top_up;
    let paid = viewer.amount(&line.currency, top_up.amount);
    let bought = viewer.amount(&line.asset, top_up.asset_amount);
    match top_up.status {
        TopUpStatus::Succeeded => html! {
            div class="ok" role="status" {
                "Thank you: your top-up of " (paid) " succeeded and " (bought) " was added."
            }
        },
        TopUpStatus::Failed | TopUpStatus::Expired => html! {
            div class="error" role="alert" {
                "Your top-up of " (paid) " did not go through: "
                (top_up.failure_reason.as_deref().unwrap_or("the payment failed.")) " "
                a href="/portal/top-ups" { "Try again" }
            }
        },
        TopUpStatus::Initiated | TopUpStatus::Pending => html! {
            div class="error" role="status" {
                "Your top-up of " (paid) " has not been paid yet."
                @if let Some(url) = &top_up.redirect_url { " " a href=(url) { "Return to the payment page" } "." }
            }
        },
    }
}

pub fn home(branding: &Branding, session: &PortalSession, overview: &Overview) -> Markup {
    let viewer = &overview.viewer;
    let body = html! {
        @if let Some(line) = &overview.returned_from { (returned_notice(viewer, line)) }
        h1 { "Your balances" }
        @if overview.accounts.is_empty() {
            p class="muted" { "No balances yet. " a href="/portal/top-ups" { "Top up" } " to get started." }
        } @else {
            div class="grid" {
                @for (account, look) in &overview.accounts {
                    (overview::account_card(
                        viewer,
                        account,
                        look,
                        overview.pay_now.get(&account_id(&account.key)).map(String::as_str),
                        overview.renewing,
                        overview.now,
                    ))
                }
            }
        }
        p { a class="button" href="/portal/top-ups" { "Top up" } }
        (overview::plan_cards(viewer, &overview.plans, overview.now))
        h2 { "Spent this month " span class="muted" { "(since " (viewer.day_month(overview.month_start)) ")" } }
        @if overview.month_spend.is_empty() {
            p class="muted" { "Nothing spent yet this month." }
        } @else {
            ul class="card stats" {
                @for (look, total) in &overview.month_spend {
                    li { span { (look.name) } strong { (viewer.amount(look, *total)) } }
                }
            }
        }
        h2 { "Spend over the last 30 days" }
        @if overview.charts.is_empty() {
            p class="muted" { "No usage in the last 30 days." }
        } @else {
            @for chart in &overview.charts { div class="card" { (overview::product_chart(viewer, chart)) } }
        }
        h2 { "Recent usage" }
        (usage_table(viewer, &overview.recent_usage))
        p {
            a href="/portal/usage" { "All usage (" (count_text(viewer, overview.usage_count)) ")" }
            " \u{b7} "
            a href="/portal/activity" { "All activity" }
        }
        h2 { "Recent top-ups" }
        (top_up_table(viewer, &overview.recent_top_ups, None))
        p { a href="/portal/top-ups" { "All top-ups (" (overview.top_up_count) ")" } }
        (viewer.zone_note())
    };
    portal_page(branding, session, Tab::Overview, "Billing", body)
}

fn usage_table(viewer: &Viewer, lines: &[UsageLine]) -> Markup {
    if lines.is_empty() {
        return html! { p class="muted" { "No usage yet." } };
    }
    html! {
        div class="card table-wrap" {
            table class="stack" {
                caption class="sr-only" { "Usage, newest first" }
                thead {
                    tr {
                        th scope="col" { "When" }
                        th scope="col" { "Product" }
                        th scope="col" { "Subject" }
                        th scope="col" { "Description" }
                        th scope="col" class="amount" { "Amount" }
                    }
                }
                tbody {
                    @for line in lines {
                        tr {
                            td data-label="When" { (viewer.date_time(line.when)) }
                            td data-label="Product" { (line.product.as_deref().unwrap_or("\u{2014}")) }
                            td data-label="Subject" { (line.subject.as_deref().unwrap_or("\u{2014}")) }
                            td data-label="Description" { (line.fee.description.as_deref().unwrap_or("")) }
                            td data-label="Amount" class="amount" { (viewer.amount(&line.look, line.fee.amount)) }
                        }
                    }
                }
            }
        }
    }
}

/// Top-ups, newest first. With `csrf` (the top-ups page) an open portal top-up offers Resume
/// and Cancel; the overview's short list (`None`) has no actions column.
pub(super) fn top_up_table(viewer: &Viewer, lines: &[TopUpLine], csrf: Option<&str>) -> Markup {
    if lines.is_empty() {
        return html! { p class="muted" { "No top-ups yet." } };
    }
    html! {
        div class="card table-wrap" {
            table class="stack" {
                caption class="sr-only" { "Top-ups, newest first" }
                thead {
                    tr {
                        th scope="col" { "When" }
                        th scope="col" class="amount" { "Paid" }
                        th scope="col" class="amount" { "Received" }
                        th scope="col" { "Status" }
                        th scope="col" { "How" }
                        @if csrf.is_some() { th scope="col" { span class="sr-only" { "Actions" } } }
                    }
                }
                tbody { @for line in lines { (top_up_row(viewer, line, csrf)) } }
            }
        }
    }
}

fn top_up_row(viewer: &Viewer, line: &TopUpLine, csrf: Option<&str>) -> Markup {
    let top_up = &line.top_up;
    let how = match top_up.origin.as_str() {
        "auto" => "Automatic",
        "portal" => "Billing portal",
        _ => "Platform",
    };
    let reason = top_up.failure_reason.as_deref().filter(|_| !top_up.status.is_open());
    let paid = viewer.amount(&line.currency, top_up.amount);
    let status = top_up.status.as_str();
    let resume = top_up.redirect_url.as_deref().filter(|_| top_up.status.is_open() && top_up.origin == "portal");
    html! {
        tr data-top-up=(top_up.id) {
            td data-label="When" { (viewer.date_time(top_up.created_at)) }
            td data-label="Paid" class="amount" { (paid) }
            td data-label="Received" class="amount" { (viewer.amount(&line.asset, top_up.asset_amount)) }
            td data-label="Status" class={ "status-" (status) } {
                (status)
                @if let Some(reason) = reason { br; span class="muted" { (reason) } }
            }
            td data-label="How" { (how) }
            @if let Some(csrf) = csrf {
                td data-label="Actions" {
                    @if let Some(url) = resume {
                        a href=(url) aria-label={ "Resume the top-up of " (paid) } { "Resume" }
                        " "
                        form class="inline" method="post" action={ "/portal/top-ups/" (top_up.id) "/cancel" } {
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" class="secondary" aria-label={ "Cancel the top-up of " (paid) } {
                                "Cancel"
                            }
                        }
                    }
                }
            }
        }
    }
}

pub(super) fn pager<T>(base: &str, paged: &Paged<T>) -> Markup {
    html! {
        nav class="pager" aria-label="Pages" {
            @if paged.page > 1 {
                a href={ (base) "?page=" (paged.page - 1) } { "\u{2190} Newer" }
            } @else {
                span {}
            }
            @if paged.has_next() {
                a href={ (base) "?page=" (paged.page + 1) } { "Older \u{2192}" }
            } @else {
                span {}
            }
        }
    }
}

/// A count of rows, which is exact up to `repo::COUNT_LIMIT` and "more than 10,000" past it
/// (counting stops there: `repo::portal::fees`).
fn count_text(viewer: &Viewer, count: i64) -> String {
    if count > COUNT_LIMIT {
        format!("more than {}", viewer.number(rust_decimal::Decimal::from(COUNT_LIMIT), 0))
    } else {
        count.to_string()
    }
}

pub fn usage(branding: &Branding, session: &PortalSession, viewer: &Viewer, paged: &Paged<UsageLine>) -> Markup {
    let body = html! {
        h1 { "Usage" }
        p class="muted" { "Everything charged to your balances, newest first (" (count_text(viewer, paged.total)) " in all)." }
        (usage_table(viewer, &paged.items))
        (pager("/portal/usage", paged))
        @if !paged.has_next() && paged.total > paged.page * super::PAGE_SIZE {
            p class="muted" { "Older usage is on the " a href="/portal/activity?kind=usage" { "activity" } " page, and in its CSV." }
        }
        (viewer.zone_note())
    };
    portal_page(branding, session, Tab::Usage, "Usage", body)
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
) -> Markup {
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
    html! {
        section class="card" aria-labelledby={ "auto-" (slug) } data-account=(id) {
            h2 id={ "auto-" (slug) } {
                (entry.look.name)
                @if key.name != "default" { " " span class="muted" { "(" (key.name) ")" } }
            }
            @if saved { div class="ok" role="status" { "Saved." } }
            (errors_box(&entry.errors))
            p class="muted" id={ "status-" (slug) } { (auto_status(viewer, entry, methods)) }
            @if methods.is_empty() {
                p class="muted" {
                    "No saved card yet: " a href="/portal/top-ups" { "top up once" }
                    " and the card you pay with is saved for automatic top-ups."
                }
            }
            form method="post" action="/portal/auto-top-up" {
                input type="hidden" name="csrf" value=(session.csrf_token);
                input type="hidden" name="account" value=(id);
                label class="check" for={ "enabled-" (slug) } {
                    input type="checkbox" id={ "enabled-" (slug) } name="enabled" value="on" checked[enabled];
                    " Top up automatically"
                }
                div class="fields" {
                    div {
                        label for={ "threshold-" (slug) } { "When available falls below (" (entry.look.label) ")" }
                        input id={ "threshold-" (slug) } name="threshold" inputmode="decimal" value=(threshold)
                            placeholder="50";
                    }
                    div {
                        label for={ "amount-" (slug) } { "Pay each time" }
                        input id={ "amount-" (slug) } name="amount" inputmode="decimal" value=(amount)
                            placeholder="10.00";
                    }
                    div {
                        label for={ "currency-" (slug) } { "Currency" }
                        select id={ "currency-" (slug) } name="currency" {
                            @for code in &entry.currencies {
                                option value=(code) selected[*code == currency] { (code) }
                            }
                        }
                    }
                    div {
                        label for={ "method-" (slug) } { "Card" }
                        select id={ "method-" (slug) } name="payment_method_id" {
                            option value="" { "Choose a saved card" }
                            @for method in methods {
                                option value=(method.id) selected[method.id == method_id] { (method_label(method)) }
                            }
                        }
                    }
                }
                button type="submit" { "Save auto top-up" }
            }
        }
    }
}

pub fn auto_top_up(branding: &Branding, session: &PortalSession, viewer: &Viewer, page: &AutoPage) -> Markup {
    let body = html! {
        h1 { "Auto top-up" }
        p class="muted" {
            "Keep a balance from running out: when it falls below the amount you set, your saved card is charged \
             and the balance topped up. After " (MAX_FAILURES) " failed payments in a row auto top-up turns itself off."
        }
        @if page.accounts.is_empty() {
            p class="muted" { "You have no balances yet. " a href="/portal/top-ups" { "Top up" } " first." }
        } @else {
            @for entry in page.accounts.iter().filter(|entry| !entry.currencies.is_empty()) {
                (auto_form(
                    session,
                    viewer,
                    entry,
                    &page.methods,
                    page.saved.as_deref() == Some(&account_id(&entry.account.key)),
                ))
            }
        }
        (viewer.zone_note())
    };
    portal_page(branding, session, Tab::Auto, "Auto top-up", body)
}
