//! The farm's routes of the admin API, thin HTTP over [`FarmHandle`]'s operator methods:
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | GET | `/v1/farm/status` | | [`FarmStatus`] |
//! | POST | `/v1/farm/drain` | [`TargetRequest`] | [`DevicesReply`] |
//! | POST | `/v1/farm/resume` | [`TargetRequest`] | [`DevicesReply`] |
//! | POST | `/v1/farm/quarantine` | [`QuarantineRequest`] | [`DevicesReply`] |
//! | POST | `/v1/farm/readmit` | [`TargetRequest`] (a device) | [`ReadmitReply`] |
//!
//! Errors answer [`ErrorReply`](super::ErrorReply): 400 for a bad name, 404 for a device or agent not
//! connected, 409 for an action that does not fit the device's state or a failed self-test, 503 once the
//! farm has shut down.

use super::error_reply;
use crate::farm::{ControlError, FarmHandle, FarmStatus, Target, self_test::SelfTestReport};
use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};

/// Names a device (`agent3/gpu0`) or, for drain and resume, every device of an agent (`agent3`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetRequest {
    /// `agentN/gpuI` or `agentN`, as `farm status` prints them.
    pub target: String,
}

/// Quarantines a device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuarantineRequest {
    /// `agentN/gpuI`.
    pub device: String,
    /// Why (shown by `farm status`).
    #[serde(default)]
    pub reason: Option<String>,
}

/// The devices an action applied to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevicesReply {
    /// `agentN/gpuI` each.
    pub devices: Vec<String>,
}

/// A readmitted device and the self-test it passed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadmitReply {
    /// `agentN/gpuI`.
    pub device: String,
    /// The known-answer test it passed.
    pub self_test: SelfTestReport,
}

/// `/v1/farm/status`, `drain`, `resume`, `quarantine` and `readmit` over `farm`.
pub fn farm_routes(farm: FarmHandle) -> Router {
    Router::new()
        .route("/v1/farm/status", get(status))
        .route("/v1/farm/drain", post(drain))
        .route("/v1/farm/resume", post(resume))
        .route("/v1/farm/quarantine", post(quarantine))
        .route("/v1/farm/readmit", post(readmit))
        .with_state(farm)
}

async fn status(State(farm): State<FarmHandle>) -> Response {
    match farm.status().await {
        Ok(status) => Json::<FarmStatus>(status).into_response(),
        Err(e) => control_error(&e),
    }
}

async fn drain(State(farm): State<FarmHandle>, Json(req): Json<TargetRequest>) -> Response {
    set_drained(&farm, &req.target, true).await
}

async fn resume(State(farm): State<FarmHandle>, Json(req): Json<TargetRequest>) -> Response {
    set_drained(&farm, &req.target, false).await
}

async fn set_drained(farm: &FarmHandle, target: &str, drain: bool) -> Response {
    let answer = async {
        let target: Target = target.parse()?;
        farm.set_drained(target, drain).await
    };
    match answer.await {
        Ok(devices) => {
            Json(DevicesReply { devices: devices.iter().map(ToString::to_string).collect() })
                .into_response()
        }
        Err(e) => control_error(&e),
    }
}

async fn quarantine(
    State(farm): State<FarmHandle>,
    Json(req): Json<QuarantineRequest>,
) -> Response {
    let answer = async {
        let device = one_device(&req.device)?;
        let reason = req.reason.as_deref().unwrap_or("quarantined by the operator");
        farm.quarantine(device, reason).await.map(|()| device)
    };
    match answer.await {
        Ok(device) => Json(DevicesReply { devices: vec![device.to_string()] }).into_response(),
        Err(e) => control_error(&e),
    }
}

async fn readmit(State(farm): State<FarmHandle>, Json(req): Json<TargetRequest>) -> Response {
    let answer = async {
        let device = one_device(&req.target)?;
        farm.readmit(device).await.map(|report| (device, report))
    };
    match answer.await {
        Ok((device, self_test)) => {
            Json(ReadmitReply { device: device.to_string(), self_test }).into_response()
        }
        Err(e) => control_error(&e),
    }
}

/// `name` as one device (not a whole agent).
fn one_device(name: &str) -> Result<crate::farm::DeviceId, ControlError> {
    match name.parse()? {
        Target::Device(d) => Ok(d),
        Target::Agent(_) => Err(ControlError::BadName(name.to_owned())),
    }
}

fn control_error(e: &ControlError) -> Response {
    let status = match e {
        ControlError::BadName(_) => StatusCode::BAD_REQUEST,
        ControlError::NotFound(_) => StatusCode::NOT_FOUND,
        ControlError::Conflict(_) | ControlError::SelfTestFailed { .. } => StatusCode::CONFLICT,
        ControlError::Shutdown => StatusCode::SERVICE_UNAVAILABLE,
    };
    error_reply(status, e.to_string())
}
