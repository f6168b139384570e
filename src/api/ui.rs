//! `/ui`: the web console (docs/console.md). A single page of plain HTML, CSS and
//! JavaScript embedded in the binary (no build step, no CDN: it works offline) that
//! reads and acts through `/graphql` with the caller's token.
//!
//! Guarantees: the page and its assets are served without a token (they hold no
//! data); every datum is fetched through `/graphql`, so the console sees exactly what
//! the token may. Assets are addressed by a hash of their content and cached for a
//! year; the page itself is revalidated on each load (ETag), so a new binary's assets
//! are picked up at once. A strict Content-Security-Policy allows only this origin's
//! scripts, styles and requests.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

const PAGE: &str = include_str!("ui/index.html");
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("ui/app.css"),
    ),
    ("icon.svg", "image/svg+xml", include_str!("ui/icon.svg")),
];

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui") }))
        .route("/ui", get(page))
        .route("/ui/", get(page))
        .route("/ui/assets/{name}", get(asset))
}

/// A short hash of every asset: the `?v=` of their URLs and the page's ETag.
fn version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        hash.update(PAGE);
        for (name, _, body) in ASSETS {
            hash.update(name);
            hash.update(body);
        }
        hex::encode(&hash.finalize()[..8])
    })
}

fn page_body() -> &'static str {
    static BODY: OnceLock<String> = OnceLock::new();
    BODY.get_or_init(|| PAGE.replace("{{version}}", version()))
}

/// The body, or 304 when the client holds this version; with the console's headers.
fn respond(
    headers: &HeaderMap,
    content_type: &'static str,
    cache: &'static str,
    body: &'static str,
) -> Response {
    let etag = format!("\"{}\"", version());
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, content_type)], body).into_response()
    };
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

async fn page(headers: HeaderMap) -> Response {
    respond(
        &headers,
        "text/html; charset=utf-8",
        "no-cache",
        page_body(),
    )
}

async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => respond(
            &headers,
            content_type,
            "public, max-age=31536000, immutable",
            body,
        ),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}
