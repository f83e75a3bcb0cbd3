//! Server-rendered HTML for the pages customers see (checkout, billing portal): one responsive
//! layout with the platform's branding. Pages are maud templates: checked when Tally compiles,
//! and every value spliced into them is escaped unless it is marked `PreEscaped` (only the
//! fixed style sheet is). No JavaScript framework: every page works with a keyboard and
//! without scripts, which only enhance (live quotes, charts).

use maud::{html, Markup, PreEscaped, DOCTYPE};

/// The platform's look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branding {
    pub name: String,
    pub logo_url: Option<String>,
    /// A CSS colour such as `#4f46e5`.
    pub accent_color: String,
}

impl Default for Branding {
    fn default() -> Branding {
        Branding { name: "Tally".into(), logo_url: None, accent_color: "#4f46e5".into() }
    }
}

/// Keeps only colours of the form `#rgb` or `#rrggbb`, so configuration cannot inject CSS.
pub fn safe_color(color: &str) -> &str {
    let hex = color.strip_prefix('#').unwrap_or("");
    if (hex.len() == 3 || hex.len() == 6) && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        color
    } else {
        "#4f46e5"
    }
}

const STYLE: &str = r#"
*{box-sizing:border-box}body{margin:0;font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#111827;background:#f9fafb;line-height:1.5}
header{display:flex;align-items:center;gap:.75rem;padding:1rem 1.25rem;background:#fff;border-bottom:1px solid #e5e7eb}
header img{height:32px}header .name{font-weight:600;font-size:1.1rem}
main{max-width:960px;margin:0 auto;padding:1.25rem}
h1{font-size:1.4rem;margin:.25rem 0 1rem}h2{font-size:1.1rem;margin:1.5rem 0 .5rem}
.card{background:#fff;border:1px solid #e5e7eb;border-radius:12px;padding:1rem 1.25rem;margin-bottom:1rem}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(220px,1fr));gap:1rem}
.balance{font-size:1.6rem;font-weight:600}.muted{color:#6b7280;font-size:.9rem}
table{width:100%;border-collapse:collapse;font-size:.95rem}th,td{text-align:left;padding:.5rem .4rem;border-bottom:1px solid #f3f4f6}
td.amount,th.amount{text-align:right;font-variant-numeric:tabular-nums}
label{display:block;font-weight:500;margin:.5rem 0 .25rem}
input,select{width:100%;padding:.6rem .7rem;border:1px solid #d1d5db;border-radius:8px;font-size:1rem}
button,.button{display:inline-block;background:var(--accent);color:#fff;border:0;border-radius:8px;padding:.65rem 1.1rem;font-size:1rem;cursor:pointer;text-decoration:none;margin-top:.75rem}
button:focus-visible,a:focus-visible,input:focus-visible,select:focus-visible{outline:3px solid var(--accent);outline-offset:2px}
.error{background:#fef2f2;color:#991b1b;border:1px solid #fecaca;border-radius:8px;padding:.75rem 1rem;margin-bottom:1rem}
.ok{background:#f0fdf4;color:#166534;border:1px solid #bbf7d0;border-radius:8px;padding:.75rem 1rem;margin-bottom:1rem}
nav a{margin-right:1rem;color:var(--accent)}
.skip{position:absolute;left:-999px}.skip:focus{left:1rem;top:1rem;background:#fff;padding:.5rem}
main:focus{outline:none}
.sr-only{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}
.card h2,.card h3{font-size:1rem;margin:0;color:#374151}.card p{margin:.4rem 0}.card p.balance{margin:.5rem 0 .25rem}
.stats{list-style:none}.stats li{display:flex;justify-content:space-between;gap:1rem;padding:.35rem 0;border-bottom:1px solid #f3f4f6}.stats li:last-child{border-bottom:0}
.portal-nav{display:flex;flex-wrap:wrap;align-items:center;gap:.25rem 1.1rem;padding:.4rem 1.25rem;background:#fff;border-bottom:1px solid #e5e7eb}
.portal-nav a{color:var(--accent);text-decoration:none;font-weight:500;padding:.35rem 0;margin:0}
.portal-nav a[aria-current=page]{color:#111827;border-bottom:2px solid var(--accent)}
.portal-nav .back{margin-left:auto}
.badge{background:#fef3c7;color:#92400e;border-radius:999px;padding:.1rem .6rem;font-size:.8rem;font-weight:600}
.table-wrap{overflow-x:auto}
.symbol{margin-right:.35rem}.unit{font-size:1rem;font-weight:500;color:#374151;margin-left:.3rem}
.chart svg{width:100%;height:auto;display:block}.chart rect{fill:var(--accent)}.chart .axis{stroke:#d1d5db}
.ticks{display:flex;justify-content:space-between;color:#6b7280;font-size:.85rem}main a{color:var(--accent)}main a.button{color:#fff}select{background:#fff}figure{margin:0 0 1rem}figcaption{font-weight:500;margin-bottom:.25rem}
details summary{cursor:pointer;color:var(--accent);margin:.25rem 0}
.fields{display:flex;gap:.75rem;flex-wrap:wrap;align-items:flex-end}.fields>div{flex:1 1 180px}
.check{display:flex;align-items:center;gap:.5rem;font-weight:500;margin:.5rem 0}.check input{width:1.2rem;height:1.2rem}
.quote{display:block;min-height:1.5rem;margin-top:.5rem;font-weight:600}
.pager{display:flex;justify-content:space-between;margin-top:.75rem}
.field-error{color:#991b1b;font-size:.9rem;margin:.25rem 0 0}
.status-succeeded{color:#166534}.status-failed,.status-expired{color:#991b1b}
button.secondary{background:#fff;color:#374151;border:1px solid #d1d5db}.presets{display:flex;flex-wrap:wrap;align-items:center;gap:.5rem;margin-top:.5rem}.presets button{margin:0;background:#fff;color:var(--accent);border:1px solid var(--accent)}.cards{list-style:none;padding:0}.saved-card{display:flex;flex-wrap:wrap;justify-content:space-between;align-items:center;gap:.5rem}.saved-card .actions{display:flex;gap:.5rem}.saved-card button,form.inline button{margin:0;padding:.35rem .75rem;font-size:.9rem}form.inline{display:inline}
.grants{list-style:none;padding:0;margin:.5rem 0 0;font-size:.9rem;color:#374151}.grants li{padding:.15rem 0}
.owed{background:#fef2f2;color:#991b1b;border:1px solid #fecaca;border-radius:8px;padding:.5rem .75rem}.owed .button{margin:.5rem 0 0;display:block;text-align:center}.card.overdrawn{border-color:#fca5a5}
.chart .grid-line{stroke:#f3f4f6}.chart .axis-label{font-size:11px;fill:#6b7280}.chart rect{cursor:pointer}.chart-value{display:block;min-height:1.4rem;font-weight:500}
.series-0{fill:var(--accent);background:var(--accent)}.series-1{fill:#f59e0b;background:#f59e0b}.series-2{fill:#10b981;background:#10b981}.series-3{fill:#6366f1;background:#6366f1}.series-4{fill:#ec4899;background:#ec4899}.series-5{fill:#64748b;background:#64748b}
.legend{list-style:none;padding:0;margin:.25rem 0;display:flex;flex-wrap:wrap;gap:.25rem 1rem;font-size:.9rem}.swatch{display:inline-block;width:.8rem;height:.8rem;border-radius:2px;margin-right:.35rem;vertical-align:-1px}
.filters .download{margin-left:1rem}
@media (max-width:600px){main{padding:.75rem}.balance{font-size:1.3rem}th.optional,td.optional{display:none}
table.stack thead{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}table.stack tr{display:block;padding:.5rem 0;border-bottom:1px solid #e5e7eb}
table.stack td{display:flex;justify-content:space-between;gap:1rem;border:0;padding:.15rem .25rem;text-align:right}table.stack td::before{content:attr(data-label);font-weight:500;color:#6b7280;text-align:left}
table.stack td.amount{font-weight:600}table.stack td:empty{display:none}.portal-nav{padding:.4rem .75rem}.portal-nav .back{margin-left:0}}
"#;

/// Logo URLs Tally shows: http(s), a path on Tally itself, or an inline image. Anything else
/// (`javascript:` and the like) is left out.
pub fn is_image_url(url: &str) -> bool {
    url.starts_with("https://") || url.starts_with("http://") || url.starts_with('/') || url.starts_with("data:image/")
}

/// A whole page: branding header, `body` in the main region.
pub fn page(branding: &Branding, title: &str, body: Markup) -> Markup {
    page_with(branding, title, html! {}, body, html! {})
}

/// A page with `nav` (such as the billing portal's menu) under the header, and `head_extra`
/// (script tags) in the head.
pub fn page_with(branding: &Branding, title: &str, nav: Markup, body: Markup, head_extra: Markup) -> Markup {
    let logo = branding.logo_url.as_deref().filter(|url| is_image_url(url));
    // The accent is a checked colour (`safe_color`) and the style sheet fixed text: the only
    // markup here that is not escaped.
    let style = format!(":root{{--accent:{}}}{STYLE}", safe_color(&branding.accent_color));
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · " (branding.name) }
                style { (PreEscaped(style)) }
                (head_extra)
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                header {
                    @if let Some(url) = logo { img src=(url) alt=""; }
                    span class="name" { (branding.name) }
                }
                (nav)
                main id="main" tabindex="-1" { (body) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_colours() {
        let named = Branding { name: r#"<script>alert(1)</script>"onmouseover="#.into(), ..Branding::default() };
        let shown = page(&named, "t", html! {}).into_string();
        assert!(!shown.contains("<script>alert"), "{shown}");
        assert!(shown.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;onmouseover="), "{shown}");
        assert_eq!(safe_color("#abc"), "#abc");
        assert_eq!(safe_color("red;}body{display:none"), "#4f46e5");
        assert!(is_image_url("https://cdn.example/logo.png") && is_image_url("data:image/svg+xml,<svg/>"));
        assert!(!is_image_url("javascript:alert(1)"));
        let branded = Branding { logo_url: Some("javascript:alert(1)".into()), ..Branding::default() };
        assert!(!page(&branded, "t", html! {}).into_string().contains("<img"), "an unsafe logo URL is left out");
    }
}
