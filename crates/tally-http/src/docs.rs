//! The API reference a person reads: `/docs`, Swagger UI on `/openapi.json`, and
//! `/docs/errors`, the page every problem's `type` points into. Swagger UI's files are
//! compiled into the binary (the `utoipa-swagger-ui` crate with its `vendored` feature, whose
//! build downloads nothing), so the pages work with no network and no files beside the binary.

use crate::error::{ApiError, ERRORS_PAGE, PROBLEM_KINDS};
use crate::{html, AppState};
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use std::sync::{Arc, LazyLock};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/docs", get(reference))
        .route("/docs/", get(|| async { Redirect::permanent("/docs") }))
        .route(ERRORS_PAGE, get(errors))
        .route("/docs/assets/{file}", get(asset))
}

/// Swagger UI on the document. Its paths are relative (`docs/assets/…`, `openapi.json`), so
/// the page also works behind a proxy that serves Tally under a path prefix.
async fn reference() -> Html<&'static str> {
    Html(REFERENCE_PAGE)
}

const REFERENCE_PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Tally API reference</title>
<link rel="stylesheet" href="docs/assets/swagger-ui.css">
<link rel="icon" type="image/png" href="docs/assets/favicon-32x32.png">
</head>
<body>
<p style="font-family:system-ui,sans-serif;margin:1rem 1.25rem">The OpenAPI document: <a href="openapi.json">openapi.json</a>.
What each error means: <a href="docs/errors">errors</a>.</p>
<div id="swagger-ui"></div>
<script src="docs/assets/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({
  url: "openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  displayOperationId: true,
  validatorUrl: "none"
});
</script>
</body>
</html>
"##;

/// One of Swagger UI's files.
async fn asset(Path(file): Path<String>) -> Response {
    // `serve` needs a configuration; the page above configures Swagger UI itself.
    static CONFIG: LazyLock<Arc<utoipa_swagger_ui::Config<'static>>> =
        LazyLock::new(|| Arc::new(utoipa_swagger_ui::Config::new(["openapi.json"])));
    // Only the plain files: `index.html` and the initializer would configure a second page.
    let wanted = file.ends_with(".js") || file.ends_with(".css") || file.ends_with(".png");
    match utoipa_swagger_ui::serve(&file, CONFIG.clone()) {
        Ok(Some(found)) if wanted => (
            [(header::CONTENT_TYPE, found.content_type), (header::CACHE_CONTROL, "public, max-age=86400".to_owned())],
            found.bytes.into_owned(),
        )
            .into_response(),
        Ok(_) => ApiError::NotFound(format!("no such file of the API reference: {file}")).into_response(),
        Err(error) => ApiError::Internal(format!("Swagger UI's file {file}: {error}")).into_response(),
    }
}

/// Every kind of problem, each at the anchor its `type` names.
async fn errors(State(state): State<AppState>) -> Html<String> {
    let mut rows = String::new();
    for kind in PROBLEM_KINDS {
        rows.push_str(&format!(
            "<tr id=\"{slug}\"><td>{status}</td><td><code>{type_uri}</code></td><td>{title}</td><td>{when}</td></tr>\n",
            slug = kind.slug,
            status = kind.status.as_u16(),
            type_uri = html::escape(&kind.type_uri()),
            title = html::escape(kind.title),
            when = code_spans(kind.when),
        ));
    }
    let body = format!(
        "<h1>Errors</h1>\n<p>Every error is answered as <code>application/problem+json</code> (RFC 9457) with \
         <code>type</code>, <code>title</code>, <code>status</code> and <code>detail</code>; a 422 adds \
         <code>errors</code>, which maps each field to what is wrong with its value. A request answered with a \
         4xx changes nothing. The <code>type</code> is this page at the kind's anchor.</p>\n\
         <div class=\"card\"><table>\n<tr><th>status</th><th>type</th><th>title</th><th>when</th></tr>\n{rows}\
         </table></div>\n<p><a href=\"../docs\">API reference</a></p>"
    );
    Html(html::page(&state.branding, "Errors", &body))
}

/// Escapes `text`, marking up its `code` spans.
fn code_spans(text: &str) -> String {
    html::escape(text)
        .split('`')
        .enumerate()
        .map(|(index, part)| if index % 2 == 1 { format!("<code>{part}</code>") } else { part.to_owned() })
        .collect()
}
