//! The API reference a person reads: `/docs`, Swagger UI on `/openapi.json`, and
//! `/docs/errors`, the page every problem's `type` points into. Swagger UI's files are
//! compiled into the binary (the `utoipa-swagger-ui` crate with its `vendored` feature, whose
//! build downloads nothing), so the pages work with no network and no files beside the binary.

use crate::error::{ApiError, ERRORS_PAGE, PROBLEM_KINDS};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use maud::{html, Markup};
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
async fn errors(State(state): State<AppState>) -> Markup {
    let body = html! {
        h1 { "Errors" }
        p {
            "Every error is answered as " code { "application/problem+json" } " (RFC 9457) with "
            code { "type" } ", " code { "title" } ", " code { "status" } " and " code { "detail" }
            "; a 422 adds " code { "errors" } ", which maps each field to what is wrong with its value. A request \
             answered with a 4xx changes nothing. The " code { "type" } " is this page at the kind's anchor."
        }
        div class="card" {
            table {
                tr { th { "status" } th { "type" } th { "title" } th { "when" } }
                @for kind in PROBLEM_KINDS {
                    tr id=(kind.slug) {
                        td { (kind.status.as_u16()) }
                        td { code { (kind.type_uri()) } }
                        td { (kind.title) }
                        td { (code_spans(kind.when)) }
                    }
                }
            }
        }
        p { a href="../docs" { "API reference" } }
    };
    crate::html::page(&state.branding, "Errors", body)
}

/// `text` with its `code` spans marked up.
fn code_spans(text: &str) -> Markup {
    html! {
        @for (index, part) in text.split('`').enumerate() {
            @if index.is_multiple_of(2) { (part) } @else { code { (part) } }
        }
    }
}
