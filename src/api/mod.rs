//! The HTTP API (axum): flows read the same way whether live or archived, the
//! archive listing and statistics, health and readiness; beside it the same data as
//! GraphQL (`graphql`) and the web console that reads through it (`ui`).
//!
//! Guarantees:
//! - an archived flow is served only after every frame it returns has been re-hashed
//!   against the index (`frame_sha256`, `events_sha256`); damaged or missing data is a
//!   5xx naming the part, never wrong data;
//! - a tenant token reads only its tenant (every route, every id — ids are validated
//!   before any lookup); the admin token reads all; with no tokens configured the API
//!   refuses to listen beyond loopback (config validation) and says so at start;
//! - legal holds are placed and released only with the admin token, and only by an
//!   API whose process owns the state store the purge and erase consult (`run`, or
//!   `serve` with no archiver running); `serve` beside an archiver answers 503 and
//!   names the way that works.

mod access;
mod graphql;
mod tls;
mod ui;

pub use graphql::sdl as graphql_sdl;

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::config::ApiConfig;
use crate::flow::FlowRef;
use crate::index::{Index, ListParams};
use crate::pipeline::{Pipeline, PipelineError};
use crate::read::Reader;

/// What the API serves from.
pub struct ApiState {
    /// Live flows (when this process holds the state store), the index and the archive.
    reader: Reader,
    /// The running archiver, which places and releases holds; `None` under `serve`.
    pipeline: Option<Arc<Pipeline>>,
    auth: ApiConfig,
    /// Requests per token and second (`api.rate_limit_per_token`), keyed by the token's
    /// owner, so its memory is bounded by the tokens configured.
    limiter: Option<governor::DefaultKeyedRateLimiter<String>>,
    tokens: Tokens,
    graphql: graphql::FlowSchema,
}

fn limiter_for(auth: &ApiConfig) -> Option<governor::DefaultKeyedRateLimiter<String>> {
    let rate = std::num::NonZeroU32::new(auth.rate_limit_per_token)?;
    Some(governor::RateLimiter::keyed(governor::Quota::per_second(
        rate,
    )))
}

impl ApiState {
    /// The API of `serve`: reads only; live flows too when no archiver holds the store.
    pub fn for_reader(reader: Reader) -> ApiState {
        let auth = reader.config().api.clone();
        ApiState {
            reader,
            pipeline: None,
            limiter: limiter_for(&auth),
            tokens: Tokens::new(&auth),
            graphql: graphql::schema(auth.graphql_introspection),
            auth,
        }
    }

    pub fn config(&self) -> &crate::config::Config {
        self.reader.config()
    }

    pub fn index(&self) -> &Arc<Index> {
        self.reader.index()
    }

    /// The API of `run` (and of `serve` when no archiver runs): reads through the
    /// pipeline's own stores and places holds.
    pub fn for_pipeline(pipeline: Arc<Pipeline>, index: Arc<Index>) -> ApiState {
        let reader = Reader::new(
            pipeline.config().clone(),
            index,
            pipeline.objects().clone(),
            Some(pipeline.store().clone()),
        );
        let auth = pipeline.config().api.clone();
        ApiState {
            limiter: limiter_for(&auth),
            tokens: Tokens::new(&auth),
            graphql: graphql::schema(auth.graphql_introspection),
            auth,
            reader,
            pipeline: Some(pipeline),
        }
    }
}

/// An error response: a status and a JSON body, `{"error": …}` unless it says more.
pub struct ApiError {
    status: StatusCode,
    body: serde_json::Value,
}

impl ApiError {
    fn new(status: StatusCode, message: String) -> ApiError {
        ApiError::with_body(status, json!({ "error": message }))
    }

    fn with_body(status: StatusCode, body: serde_json::Value) -> ApiError {
        ApiError { status, body }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
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
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "a bearer token is required".into(),
            )
        })?;
    let owner = state
        .tokens
        .owner(token)
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unknown token".into()))?;
    let key = match &owner {
        Owner::Admin => String::from("admin"),
        Owner::Tenant(tenant) => format!("tenant {tenant}"),
    };
    if let Some(limiter) = &state.limiter {
        if limiter.check_key(&key).is_err() {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "more than {} requests per second with this token (api.rate_limit_per_token)",
                    state.auth.rate_limit_per_token
                ),
            ));
        }
    }
    Ok(match owner {
        Owner::Admin => None,
        Owner::Tenant(tenant) => Some(tenant),
    })
}

/// Whose token a caller presented.
#[derive(Debug, Clone, PartialEq)]
enum Owner {
    Admin,
    Tenant(String),
}

/// The configured tokens as SHA-256 digests, computed once, with their owners.
struct Tokens(Vec<([u8; 32], Owner)>);

impl Tokens {
    fn new(auth: &ApiConfig) -> Tokens {
        use sha2::{Digest, Sha256};
        let digest = |t: &str| -> [u8; 32] { Sha256::digest(t.as_bytes()).into() };
        let admin = auth.admin_token.iter().map(|t| (digest(t), Owner::Admin));
        let tenants = auth
            .tenant_tokens
            .iter()
            .map(|(tenant, t)| (digest(t), Owner::Tenant(tenant.clone())));
        Tokens(admin.chain(tenants).collect())
    }

    /// Finds the owner of `presented` without telling, by the time it takes, which
    /// token matched or how much of one did: its SHA-256 digest (fixed length, so a
    /// token's length does not leak either) is compared in constant time against
    /// every configured token's, with no early exit. Config load refuses duplicate
    /// tokens, so at most one matches.
    fn owner(&self, presented: &str) -> Option<Owner> {
        use sha2::{Digest, Sha256};
        use subtle::{ConditionallySelectable, ConstantTimeEq};
        let wanted: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // 0 = none; i + 1 = the i-th token.
        let mut found = 0u64;
        for (i, (digest, _)) in self.0.iter().enumerate() {
            found.conditional_assign(&(i as u64 + 1), wanted.ct_eq(digest));
        }
        let index = usize::try_from(found).ok()?.checked_sub(1)?;
        self.0.get(index).map(|(_, owner)| owner.clone())
    }
}

fn allow(scope: &Option<String>, tenant: &str) -> Result<(), ApiError> {
    Ok(access::allow(scope, tenant)?)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
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
        .route("/graphql", axum::routing::post(graphql::handle))
        .merge(ui::routes())
        .with_state(state)
}

async fn get_flow(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((tenant, flow_id)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let scope = caller(&state, &headers)?;
    flow_ids(&tenant, &flow_id)?;
    allow(&scope, &tenant)?;
    if let Some(live) = state
        .reader
        .live_flow(&tenant, &flow_id)
        .await
        .map_err(internal)?
    {
        return Ok(Json(live));
    }
    match state.reader.archived_flow(&tenant, &flow_id).await {
        Ok(Some(flow)) => Ok(Json(flow)),
        Ok(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no flow {tenant}/{flow_id}"),
        )),
        Err(crate::read::ReadError::Archive(
            e @ crate::archive::ArchiveError::RestoreRequired { .. },
        )) => Err(restore_required(e)),
        Err(e) => Err(internal(e)),
    }
}

/// 409 for a flow whose object sits in an archive tier: `{"error":
/// "restore_required", "tier": …, "restore": …, "message": …}`.
fn restore_required(e: crate::archive::ArchiveError) -> ApiError {
    let message = e.to_string();
    let crate::archive::ArchiveError::RestoreRequired { tier, .. } = e else {
        return internal(e);
    };
    ApiError::with_body(
        StatusCode::CONFLICT,
        json!({
            "error": "restore_required",
            "tier": tier.storage_class,
            "restore": match tier.restore {
                Some(crate::archive::Restore::InProgress) => "in_progress",
                _ => "not_requested",
            },
            "message": message,
        }),
    )
}

/// [`access::admin_only`], refused before the token is checked when no admin token
/// is configured.
fn require_admin(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    access::admin_only(&state.auth, &None)?;
    Ok(access::admin_only(&state.auth, &caller(state, headers)?)?)
}

fn hold_pipeline(state: &ApiState) -> Result<&Arc<Pipeline>, ApiError> {
    Ok(access::acting_pipeline(state)?)
}

/// Ids are validated before any lookup or scope check: 400 for an id that could
/// never exist, whatever the token.
fn flow_ids(tenant: &str, flow_id: &str) -> Result<FlowRef, ApiError> {
    FlowRef::new(tenant, flow_id).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))
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

fn hold_error(e: PipelineError) -> ApiError {
    match e {
        PipelineError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, m),
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
        return Err(ApiError::new(
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
    let holds = hold_pipeline(&state)?.holds().await.map_err(internal)?;
    Ok(Json(holds))
}

async fn list_flows(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Query(mut p): Query<ListParams>,
) -> Result<Json<crate::index::ListPage>, ApiError> {
    let scope = caller(&state, &headers)?;
    let tenant = access::narrow(&scope, p.tenant.take())?;
    let query = ListParams { tenant, ..p }
        .parse()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let index = state.reader.index().clone();
    let page = tokio::task::spawn_blocking(move || index.list(&query))
        .await
        .map_err(internal)?
        .map_err(|e| match e {
            crate::index::IndexError::Cursor(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
            }
            e => internal(e),
        })?;
    Ok(Json(page))
}

async fn stats(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Json<crate::index::Stats>, ApiError> {
    let scope = caller(&state, &headers)?;
    let index = state.reader.index().clone();
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
    let index = state.reader.index().clone();
    let index_ok = tokio::task::spawn_blocking(move || index.stats(Some("")).is_ok())
        .await
        .unwrap_or(false);
    let disk_full = crate::telemetry::metrics().state_disk_full.get() != 0;
    let body = json!({
        "index": index_ok,
        "state_store": if state.reader.sees_live_flows() { "open" } else { "held by another process: live flows are not served" },
        "state_disk": if disk_full { "full: ingest is paused until space returns" } else { "ok" },
    });
    // Ready = the index and the state store are open (sources are connected before
    // `run` starts serving) and ingest is not paused on a full disk. `serve` beside a
    // running archiver answers archived flows but is not ready: it cannot see live ones.
    let code = if index_ok && state.reader.sees_live_flows() && !disk_full {
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
    let tls = match state.auth.tls_files() {
        Some((cert, key)) => Some(tls::server_config(cert, key)?),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!("Web console: {scheme}://{addr}/ui");
    if state.auth.has_tokens() {
        tracing::info!(%addr, tls = tls.is_some(), "API listening; bearer tokens required.");
    } else {
        tracing::warn!(%addr, "API listening on loopback WITHOUT tokens: anyone on this host can read every tenant.");
    }
    let app = router(state);
    let shutdown = async move { cancel.cancelled().await };
    match tls {
        Some(config) => {
            let listener = tls::TlsListener::bind(addr, config).await?;
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_owner(auth: &ApiConfig, presented: &str) -> Option<Owner> {
        Tokens::new(auth).owner(presented)
    }

    #[test]
    fn tokens_are_matched_whole_and_only_to_their_owner() {
        let admin = "admin-token-0123456789abcdef";
        let mut auth = crate::config::ApiConfig {
            admin_token: Some(admin.into()),
            ..Default::default()
        };
        auth.tenant_tokens
            .insert("acme".into(), "acme-token-0123456789".into());
        auth.tenant_tokens
            .insert("beta".into(), "beta-token-0123456789".into());
        assert_eq!(token_owner(&auth, admin), Some(Owner::Admin));
        assert_eq!(
            token_owner(&auth, "beta-token-0123456789"),
            Some(Owner::Tenant("beta".into()))
        );
        for wrong in [
            "",
            "admin-token-0123456789abcde",
            "admin-token-0123456789abcdefX",
            "ACME-TOKEN-0123456789",
            "acme-token-0123456789 ",
        ] {
            assert_eq!(token_owner(&auth, wrong), None, "{wrong:?}");
        }
        auth.admin_token = None;
        assert_eq!(
            token_owner(&auth, "acme-token-0123456789"),
            Some(Owner::Tenant("acme".into()))
        );
        assert_eq!(token_owner(&auth, admin), None);
    }
}
