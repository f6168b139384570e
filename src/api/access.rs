//! Who may do what, decided once for REST and GraphQL: a tenant token reads its own
//! tenant only, and holds and replays need the admin token on a process that owns
//! the state store. Each rule returns a [`Refusal`]; REST answers with its status,
//! GraphQL with its code.

use std::sync::Arc;

use axum::http::StatusCode;

use super::{ApiError, ApiState};
use crate::config::ApiConfig;
use crate::pipeline::Pipeline;

/// Why a request is refused.
pub struct Refusal {
    pub status: StatusCode,
    /// GraphQL's `extensions.code`.
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    fn forbidden(message: String) -> Refusal {
        Refusal {
            status: StatusCode::FORBIDDEN,
            code: "FORBIDDEN",
            message,
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> ApiError {
        ApiError::new(r.status, r.message)
    }
}

/// `scope` (the caller's tenant; `None` for every tenant) may read `tenant`.
pub fn allow(scope: &Option<String>, tenant: &str) -> Result<(), Refusal> {
    match scope {
        Some(own) if own != tenant => Err(Refusal::forbidden(format!(
            "this token reads tenant {own:?} only"
        ))),
        _ => Ok(()),
    }
}

/// The tenant a listing is narrowed to: the token's own, whatever was asked; a
/// tenant token asking for another tenant is refused.
pub fn narrow(scope: &Option<String>, asked: Option<String>) -> Result<Option<String>, Refusal> {
    if let Some(asked) = &asked {
        allow(scope, asked)?;
    }
    Ok(scope.clone().or(asked))
}

/// Holds and replays need the admin token, which must be configured: with no tokens
/// a loopback API reads freely, but never changes what may be purged.
pub fn admin_only(auth: &ApiConfig, scope: &Option<String>) -> Result<(), Refusal> {
    if auth.admin_token.is_none() {
        return Err(Refusal::forbidden(
            "holds and replays through the API need an admin token: set api.admin_token".into(),
        ));
    }
    match scope {
        None => Ok(()),
        Some(_) => Err(Refusal::forbidden(
            "only the admin token places or releases holds and replays flows".into(),
        )),
    }
}

/// The pipeline that places holds and replays: only a process that owns the state
/// store has one (`run`, or `serve` with no archiver running).
pub fn acting_pipeline(state: &ApiState) -> Result<&Arc<Pipeline>, Refusal> {
    state.pipeline.as_ref().ok_or_else(|| Refusal {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "UNAVAILABLE",
        message: "this API does not own the state store: use the API served by `run` \
                  (api.listen) or the CLI (`flow-archiver hold`)"
            .into(),
    })
}
