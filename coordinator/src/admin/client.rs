//! The typed client of the admin API, used by `cpc-coordinator farm ...` and by tests.

use super::{
    AdminToken, ErrorReply,
    routes::{DevicesReply, QuarantineRequest, ReadmitReply, TargetRequest},
};
use crate::farm::FarmStatus;
use serde::{Serialize, de::DeserializeOwned};
use std::time::Duration;

/// How long one call may take: a readmission runs the device's self-test first.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a call to the admin API failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The coordinator could not be reached, or its answer not read.
    #[error(
        "admin API at {url}: {source} (is the coordinator running with --admin at that address?)"
    )]
    Http {
        /// The URL called.
        url: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// The coordinator refused the call.
    #[error("{message} (HTTP {status})")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The coordinator's reason.
        message: String,
    },
}

impl ClientError {
    /// The HTTP status the coordinator answered, for a refused call.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Refused { status, .. } => Some(*status),
            Self::Http { .. } => None,
        }
    }
}

/// A client of one coordinator's admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: String,
    token: Option<AdminToken>,
    http: reqwest::Client,
}

impl AdminClient {
    /// A client of the API at `base` (`http://127.0.0.1:7702`), sending `token` when given (reads on
    /// loopback need none; every change does).
    pub fn new(base: &str, token: Option<AdminToken>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(CLIENT_TIMEOUT)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self { base: base.trim_end_matches('/').to_owned(), token, http }
    }

    /// Every connected device with its state.
    pub async fn status(&self) -> Result<FarmStatus, ClientError> {
        self.call(reqwest::Method::GET, "/v1/farm/status", None::<&()>).await
    }

    /// Drains a device (`agentN/gpuI`) or every device of an agent (`agentN`).
    pub async fn drain(&self, target: &str) -> Result<DevicesReply, ClientError> {
        let body = TargetRequest { target: target.to_owned() };
        self.call(reqwest::Method::POST, "/v1/farm/drain", Some(&body)).await
    }

    /// Resumes a drained device or agent.
    pub async fn resume(&self, target: &str) -> Result<DevicesReply, ClientError> {
        let body = TargetRequest { target: target.to_owned() };
        self.call(reqwest::Method::POST, "/v1/farm/resume", Some(&body)).await
    }

    /// Quarantines a device.
    pub async fn quarantine(
        &self,
        device: &str,
        reason: Option<&str>,
    ) -> Result<DevicesReply, ClientError> {
        let body =
            QuarantineRequest { device: device.to_owned(), reason: reason.map(str::to_owned) };
        self.call(reqwest::Method::POST, "/v1/farm/quarantine", Some(&body)).await
    }

    /// Readmits a quarantined device after its self-test passes.
    pub async fn readmit(&self, device: &str) -> Result<ReadmitReply, ClientError> {
        let body = TargetRequest { target: device.to_owned() };
        self.call(reqwest::Method::POST, "/v1/farm/readmit", Some(&body)).await
    }

    /// `GET /v1/identities`: the running node's identities report.
    pub async fn identities(
        &self,
        since: Option<&str>,
        within_blocks: Option<u64>,
    ) -> Result<crate::mining::accounting::IdentitiesReport, ClientError> {
        let mut query = Vec::new();
        if let Some(since) = since {
            query.push(format!("since={since}"));
        }
        if let Some(n) = within_blocks {
            query.push(format!("within_blocks={n}"));
        }
        let path = if query.is_empty() {
            "/v1/identities".to_owned()
        } else {
            format!("/v1/identities?{}", query.join("&"))
        };
        self.call(reqwest::Method::GET, &path, None::<&()>).await
    }

    /// `POST /v1/reload`: re-read the config and apply it in place, or the reason it was refused.
    pub async fn reload(&self) -> Result<crate::mining::control::ReloadOutcome, ClientError> {
        self.call(reqwest::Method::POST, "/v1/reload", None::<&()>).await
    }

    /// One call: `body` as JSON, the answer as `T`, or the coordinator's refusal.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let http = |source| ClientError::Http { url: url.clone(), source };
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose());
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(http)?;
        let status = response.status();
        if status.is_success() {
            return response.json().await.map_err(http);
        }
        let text = response.text().await.map_err(http)?;
        let message = serde_json::from_str::<ErrorReply>(&text).map_or(text, |e| e.error);
        Err(ClientError::Refused { status: status.as_u16(), message })
    }
}
