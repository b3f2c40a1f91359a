//! The mining node's routes of the admin API, thin HTTP over [`MiningControl`]:
//!
//! | method | path | query / body | answer |
//! |---|---|---|---|
//! | GET | `/v1/identities` | `since=HEIGHT\|DURATION`, `within_blocks=N` | [`IdentitiesReport`] |
//! | POST | `/v1/reload` | | [`ReloadOutcome`] |
//!
//! A refused reload answers 422 with the reason (the running config stays); a node that takes no control
//! requests (stopped, or a bounded run) answers 503.

use super::error_reply;
use crate::mining::{
    MiningControl,
    accounting::{DEFAULT_WITHIN_BLOCKS, IdentitiesReport, Since},
    control::{ControlError, ReloadError, ReloadOutcome},
};
use axum::{
    Json, Router,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};

/// The query of `GET /v1/identities`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IdentitiesParams {
    /// Only blocks from this height (`1200`) or from this long ago (`90m`, `2h`, `1d`).
    #[serde(default)]
    pub since: Option<String>,
    /// A result not included this many blocks after its own block counts as missed.
    #[serde(default)]
    pub within_blocks: Option<u64>,
}

/// `/v1/identities` and `/v1/reload` over `control`.
pub fn mining_routes(control: MiningControl) -> Router {
    Router::new()
        .route("/v1/identities", get(identities))
        .route("/v1/reload", post(reload))
        .with_state(control)
}

async fn identities(
    State(control): State<MiningControl>,
    Query(params): Query<IdentitiesParams>,
) -> Response {
    let since = match params.since.as_deref().map(str::parse::<Since>).transpose() {
        Ok(since) => since,
        Err(e) => return error_reply(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let within = params.within_blocks.unwrap_or(DEFAULT_WITHIN_BLOCKS);
    match control.identities(since, within).await {
        Ok(report) => Json::<IdentitiesReport>(report).into_response(),
        Err(e @ ControlError::NotRunning) => {
            error_reply(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        Err(e @ ControlError::Journal(_)) => {
            error_reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

async fn reload(State(control): State<MiningControl>) -> Response {
    match control.reload().await {
        Ok(outcome) => Json::<ReloadOutcome>(outcome).into_response(),
        Err(e @ ReloadError::NotRunning) => {
            error_reply(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        Err(e) => error_reply(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    }
}
