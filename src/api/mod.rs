//! The HTTP API (axum): flows read the same way whether live or archived, the
//! archive listing and statistics, health and readiness.
//!
//! Guarantees:
//! - an archived flow is served only after every frame it returns has been re-hashed
//!   against the index (`frame_sha256`, `events_sha256`); damaged or missing data is a
//!   5xx naming the part, never wrong data;
//! - a tenant token reads only its tenant (every route, every id — ids are validated
//!   before any lookup); the admin token reads all; with no tokens configured the API
//!   refuses to listen beyond loopback (config validation) and says so at start;
//! - legal holds are placed and released only with the admin token, and only by the
//!   API that `run` serves (it owns the state store the purge and erase consult);
//!   `serve` answers 503 and names the way that works.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::archive::ArchiveStore;
use crate::config::ApiConfig;
use crate::index::{Index, ListQuery};
use crate::state::StateStore;

pub struct ApiState {
    pub index: Arc<Index>,
    pub objects: ArchiveStore,
    /// The live store; `None` when another process holds it (`serve` beside `run`).
    pub store: Option<Arc<dyn StateStore>>,
    /// The running archiver, which places and releases holds; `None` under `serve`.
    pub pipeline: Option<Arc<crate::pipeline::Pipeline>>,
    pub auth: ApiConfig,
}

/// An error response: a status and a JSON body `{"error": …}`.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

/// Who is asking: `None` = every tenant (admin, or no tokens configured).
fn caller(state: &ApiState, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    if !state.auth.has_tokens() {
        return Ok(None);
    }
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError(
                StatusCode::UNAUTHORIZED,
                "a bearer token is required".into(),
            )
        })?;
    if state.auth.admin_token.as_deref() == Some(token) {
        return Ok(None);
    }
    state
        .auth
        .tenant_tokens
        .iter()
        .find(|(_, t)| t.as_str() == token)
        .map(|(tenant, _)| Some(tenant.clone()))
        .ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, "unknown token".into()))
}

fn allow(scope: &Option<String>, tenant: &str) -> Result<(), ApiError> {
    match scope {
        Some(own) if own != tenant => Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("this token reads tenant {own:?} only"),
        )),
        _ => Ok(()),
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/flows/{tenant}/{flow_id}", get(get_flow))
        .route(
            "/flows/{tenant}/{flow_id}/hold",
            put(place_hold).delete(release_hold),
        )
        .route("/holds", get(list_holds))
        .route("/archive/flows", get(list_flows))
        .route("/archive/stats", get(stats))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn get_flow(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((tenant, flow_id)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let scope = caller(&state, &headers)?;
    for (what, id) in [("tenant", &tenant), ("flow id", &flow_id)] {
        crate::flow::validate_identifier(what, id)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    }
    allow(&scope, &tenant)?;
    if let Some(store) = &state.store {
        if let Some(live) = crate::ops::get_flow(store, &tenant, &flow_id)
            .await
            .map_err(internal)?
        {
            return Ok(Json(live));
        }
    }
    match crate::ops::archived_flow(&state.index, &state.objects, &tenant, &flow_id).await {
        Ok(Some(flow)) => Ok(Json(flow)),
        Ok(None) => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no flow {tenant}/{flow_id}"),
        )),
        Err(e) => Err(internal(e)),
    }
}

/// The admin token is required for holds, and must be configured: with no tokens a
/// loopback API reads freely, but never changes what may be purged.
fn require_admin(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    if state.auth.admin_token.is_none() {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "holds through the API need an admin token: set api.admin_token".into(),
        ));
    }
    match caller(state, headers)? {
        None => Ok(()),
        Some(_) => Err(ApiError(
            StatusCode::FORBIDDEN,
            "only the admin token places or releases holds".into(),
        )),
    }
}

fn hold_pipeline(state: &ApiState) -> Result<&Arc<crate::pipeline::Pipeline>, ApiError> {
    state.pipeline.as_ref().ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "this API does not own the state store: use the API served by `run` \
             (api.listen) or `flow-archiver hold`"
                .into(),
        )
    })
}

fn flow_ids(tenant: &str, flow_id: &str) -> Result<(), ApiError> {
    for (what, id) in [("tenant", tenant), ("flow id", flow_id)] {
        crate::flow::validate_identifier(what, id)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct HoldBody {
    reason: String,
    /// Who asks, recorded as `api:{actor}` (default `api:admin`).
    actor: Option<String>,
}

fn api_actor(actor: Option<&str>) -> String {
    match actor.map(str::trim).filter(|a| !a.is_empty()) {
        Some(a) => format!("api:{a}"),
        None => "api:admin".into(),
    }
}

fn hold_error(e: crate::pipeline::PipelineError) -> ApiError {
    match e {
        crate::pipeline::PipelineError::NotFound(m) => ApiError(StatusCode::NOT_FOUND, m),
        e => internal(e),
    }
}

async fn place_hold(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((tenant, flow_id)): Path<(String, String)>,
    Json(body): Json<HoldBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_admin(&state, &headers)?;
    flow_ids(&tenant, &flow_id)?;
    if body.reason.trim().is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "reason must say why the flow is held".into(),
        ));
    }
    let actor = api_actor(body.actor.as_deref());
    hold_pipeline(&state)?
        .hold(&tenant, &flow_id, &body.reason, &actor)
        .await
        .map_err(hold_error)?;
    Ok(Json(json!({
        "tenant": tenant, "flow_id": flow_id, "held": true,
        "reason": body.reason, "actor": actor,
    })))
}

#[derive(Debug, Deserialize)]
struct ReleaseParams {
    reason: Option<String>,
    actor: Option<String>,
}

async fn release_hold(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((tenant, flow_id)): Path<(String, String)>,
    Query(p): Query<ReleaseParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_admin(&state, &headers)?;
    flow_ids(&tenant, &flow_id)?;
    let reason = p.reason.unwrap_or_else(|| "released".into());
    let actor = api_actor(p.actor.as_deref());
    hold_pipeline(&state)?
        .release(&tenant, &flow_id, &reason, &actor)
        .await
        .map_err(hold_error)?;
    Ok(Json(json!({
        "tenant": tenant, "flow_id": flow_id, "held": false,
        "reason": reason, "actor": actor,
    })))
}

async fn list_holds(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Json<Vec<crate::state::Hold>>, ApiError> {
    require_admin(&state, &headers)?;
    let store = hold_pipeline(&state)?.store.clone();
    let holds = tokio::task::spawn_blocking(move || store.holds())
        .await
        .map_err(internal)?
        .map_err(internal)?;
    Ok(Json(holds))
}

#[derive(Debug, Deserialize)]
struct ListParams {
    tenant: Option<String>,
    status: Option<String>,
    label: Option<String>,
    archived_after: Option<String>,
    archived_before: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn micros(param: &str, text: &Option<String>) -> Result<Option<i64>, ApiError> {
    text.as_deref()
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|d| d.timestamp_micros())
                .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("{param}: {e}")))
        })
        .transpose()
}

async fn list_flows(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Query(p): Query<ListParams>,
) -> Result<Json<crate::index::ListPage>, ApiError> {
    let scope = caller(&state, &headers)?;
    let tenant = match (&scope, p.tenant) {
        (Some(own), Some(asked)) if *own != asked => {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                format!("this token reads tenant {own:?} only"),
            ))
        }
        (Some(own), _) => Some(own.clone()),
        (None, asked) => asked,
    };
    let label = match p.label.as_deref() {
        None => None,
        Some(l) => Some(
            l.split_once(':')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, "label is key:value".into()))?,
        ),
    };
    let query = ListQuery {
        tenant,
        status: p.status,
        label,
        archived_after: micros("archived_after", &p.archived_after)?,
        archived_before: micros("archived_before", &p.archived_before)?,
        limit: p.limit.unwrap_or(100),
        cursor: p.cursor,
    };
    let index = state.index.clone();
    let page = tokio::task::spawn_blocking(move || index.list(&query))
        .await
        .map_err(internal)?
        .map_err(|e| match e {
            crate::index::IndexError::Cursor(_) => ApiError(StatusCode::BAD_REQUEST, e.to_string()),
            e => internal(e),
        })?;
    Ok(Json(page))
}

async fn stats(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Json<crate::index::Stats>, ApiError> {
    let scope = caller(&state, &headers)?;
    let index = state.index.clone();
    let stats = tokio::task::spawn_blocking(move || index.stats(scope.as_deref()))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    Ok(Json(stats))
}

/// Prometheus text; unauthenticated like health checks (it carries no tenant data).
async fn metrics() -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::telemetry::metrics().render(),
    )
}

async fn ready(State(state): State<Arc<ApiState>>) -> (StatusCode, Json<serde_json::Value>) {
    let index = state.index.clone();
    let index_ok = tokio::task::spawn_blocking(move || index.stats(Some("")).is_ok())
        .await
        .unwrap_or(false);
    let body = json!({
        "index": index_ok,
        "state_store": if state.store.is_some() { "open" } else { "held by another process: live flows are not served" },
    });
    // Ready = the index and the state store are open (sources are connected before
    // `run` starts serving). `serve` beside a running archiver answers archived flows
    // but is not ready: it cannot see live ones.
    let code = if index_ok && state.store.is_some() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

/// Serves until `cancel` fires.
pub async fn serve(
    state: Arc<ApiState>,
    addr: std::net::SocketAddr,
    cancel: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    if state.auth.has_tokens() {
        tracing::info!(%addr, "API listening; bearer tokens required.");
    } else {
        tracing::warn!(%addr, "API listening on loopback WITHOUT tokens: anyone on this host can read every tenant.");
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}
