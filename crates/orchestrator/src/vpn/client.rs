//! Gluetun's HTTP control server, as the orchestrator reads it: the tunnel's
//! status, the public IP and country, the forwarded port. Since Gluetun 3.40
//! its routes need an API key in `X-API-Key` (`GLUETUN_API_KEY`).

use std::time::Duration;

use serde::Deserialize;

use crate::engine_client::EngineError;

/// Why a node's control server did not say "running".
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ControlError {
    #[error("control server: no answer within {:.1}s (hung?)", .0.as_secs_f64())]
    Timeout(Duration),
    #[error("control server: connection refused")]
    Refused,
    #[error("control server: {0}")]
    Unreachable(String),
    #[error("control server refused the API key (set GLUETUN_API_KEY to the node's key)")]
    Unauthorized,
    #[error("control server answered HTTP {0}")]
    Status(reqwest::StatusCode),
    #[error("control server answer is not JSON")]
    NotJson,
    #[error("tunnel is {0}")]
    Tunnel(String),
}

impl ControlError {
    fn from_request(error: &reqwest::Error, timeout: Duration) -> ControlError {
        match EngineError::from_request(error, timeout) {
            EngineError::Timeout(d) => ControlError::Timeout(d),
            EngineError::Refused => ControlError::Refused,
            other => ControlError::Unreachable(other.to_string()),
        }
    }
}

/// What a node's control server said about the tunnel.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeReport {
    pub public_ip: Option<String>,
    pub country: Option<String>,
    pub forwarded_port: Option<u16>,
}

#[derive(Deserialize)]
struct Status {
    status: String,
}

#[derive(Deserialize)]
struct PublicIp {
    #[serde(default)]
    public_ip: Option<String>,
    #[serde(default)]
    country: Option<String>,
}

#[derive(Deserialize)]
struct Forwarded {
    #[serde(default)]
    port: Option<u16>,
}

#[derive(Clone)]
pub struct ControlClient {
    http: reqwest::Client,
    api_key: Option<String>,
}

impl ControlClient {
    pub fn new(api_key: Option<String>, connect_timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(connect_timeout)
            .pool_max_idle_per_host(0)
            .build()
            .unwrap_or_default();
        Self { http, api_key }
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        base: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<T, ControlError> {
        let mut request = self.http.get(format!("{base}{path}")).timeout(timeout);
        if let Some(key) = &self.api_key {
            request = request.header("X-API-Key", key);
        }
        let response = request
            .send()
            .await
            .map_err(|e| ControlError::from_request(&e, timeout))?;
        match response.status() {
            s if s.is_success() => {}
            reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN => {
                return Err(ControlError::Unauthorized)
            }
            s => return Err(ControlError::Status(s)),
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| ControlError::from_request(&e, timeout))?;
        serde_json::from_slice(&body).map_err(|_| ControlError::NotJson)
    }

    /// Checks the node at `base` (`http://host:port`): healthy when the tunnel
    /// is `running`; then reads the public IP and the forwarded port, which
    /// do not decide health (a provider without port forwarding is fine).
    pub async fn check(&self, base: &str, timeout: Duration) -> Result<NodeReport, ControlError> {
        let status: Status = self.get(base, "/v1/vpn/status", timeout).await?;
        if status.status != "running" {
            return Err(ControlError::Tunnel(status.status));
        }
        let ip: Option<PublicIp> = self.get(base, "/v1/publicip/ip", timeout).await.ok();
        // Gluetun before 3.40 only had the OpenVPN route.
        let forwarded = match self
            .get::<Forwarded>(base, "/v1/portforward", timeout)
            .await
        {
            Ok(f) => Some(f),
            Err(ControlError::Status(s)) if s == reqwest::StatusCode::NOT_FOUND => self
                .get::<Forwarded>(base, "/v1/openvpn/portforwarded", timeout)
                .await
                .ok(),
            Err(_) => None,
        };
        Ok(NodeReport {
            public_ip: ip
                .as_ref()
                .and_then(|i| i.public_ip.clone())
                .filter(|s| !s.is_empty()),
            country: ip.and_then(|i| i.country).filter(|s| !s.is_empty()),
            forwarded_port: forwarded.and_then(|f| f.port).filter(|p| *p != 0),
        })
    }
}
