//! A typed client of the agent's admin API.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mesh_proto::api::{
    ErrorBody, HealthView, InstancesView, NodeView, RegisterInstance, ServiceSummary, INDEX_HEADER,
};
use mesh_proto::catalog::{Definition, Instance};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::select::Requirements;

/// What can go wrong talking to an agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The agent URL is not an `http://host:port` URL.
    #[error("invalid agent URL {url:?}: {reason}; pass for example http://127.0.0.1:4200")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The agent could not be reached.
    #[error("cannot reach the agent at {url}: {reason}; is `gossamer agent` running there?")]
    Unreachable {
        /// The URL tried.
        url: String,
        /// The transport error.
        reason: String,
    },
    /// The agent answered with an error.
    #[error("{error} (HTTP {status}); {hint}")]
    Api {
        /// HTTP status.
        status: u16,
        /// What the agent says went wrong.
        error: String,
        /// What the agent suggests.
        hint: String,
    },
    /// The agent's answer could not be decoded.
    #[error("unexpected answer from the agent: {0}")]
    Decode(String),
}

impl Error {
    /// True for a 404 from the agent.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Api { status: 404, .. })
    }
}

/// An answer and the catalog index it reflects (for blocking queries).
#[derive(Debug, Clone)]
pub struct Indexed<T> {
    /// The answer.
    pub value: T,
    /// `x-gossamer-index` of the answer.
    pub index: u64,
}

/// A client of one agent's admin API.
#[derive(Clone)]
pub struct Client {
    base: String,
    http: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).finish()
    }
}

impl Client {
    /// A client of the agent at `agent_url` (for example `http://127.0.0.1:4200`).
    pub fn new(agent_url: &str) -> Result<Self, Error> {
        let base = agent_url.trim_end_matches('/').to_owned();
        let uri: Uri = base
            .parse()
            .map_err(|e: http::uri::InvalidUri| Error::InvalidUrl {
                url: agent_url.to_owned(),
                reason: e.to_string(),
            })?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(Error::InvalidUrl {
                url: agent_url.to_owned(),
                reason: "only http://HOST:PORT is supported".to_owned(),
            });
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self { base, http })
    }

    /// The agent's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Indexed<T>, Error> {
        let url = format!("{}{path}", self.base);
        let request = Request::builder()
            .method(method)
            .uri(&url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Error::InvalidUrl {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| Error::Unreachable {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let status = response.status();
        let index = response
            .headers()
            .get(INDEX_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Error::Unreachable {
                url: url.clone(),
                reason: e.to_string(),
            })?
            .to_bytes();
        if status != StatusCode::OK {
            let body: ErrorBody = serde_json::from_slice(&bytes).unwrap_or(ErrorBody {
                error: String::from_utf8_lossy(&bytes).into_owned(),
                hint: "see the agent's log".to_owned(),
            });
            return Err(Error::Api {
                status: status.as_u16(),
                error: body.error,
                hint: body.hint,
            });
        }
        let value = serde_json::from_slice(&bytes).map_err(|e| Error::Decode(e.to_string()))?;
        Ok(Indexed { value, index })
    }

    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
        serde_json::to_vec(value).map_err(|e| Error::Decode(e.to_string()))
    }

    /// `GET /v1/health`.
    pub async fn health(&self) -> Result<HealthView, Error> {
        Ok(self.call(Method::GET, "/v1/health", None).await?.value)
    }

    /// `GET /v1/nodes`.
    pub async fn nodes(&self) -> Result<Vec<NodeView>, Error> {
        Ok(self.call(Method::GET, "/v1/nodes", None).await?.value)
    }

    /// `GET /v1/services`.
    pub async fn services(&self) -> Result<Vec<ServiceSummary>, Error> {
        Ok(self.call(Method::GET, "/v1/services", None).await?.value)
    }

    /// `GET /v1/services/{name}`.
    pub async fn definition(&self, name: &str) -> Result<Definition, Error> {
        Ok(self
            .call(Method::GET, &format!("/v1/services/{name}"), None)
            .await?
            .value)
    }

    /// `PUT /v1/services/{name}`: returns the definition as stored (with its hash).
    pub async fn put_definition(&self, definition: &Definition) -> Result<Definition, Error> {
        let body = Self::encode(definition)?;
        Ok(self
            .call(
                Method::PUT,
                &format!("/v1/services/{}", definition.name),
                Some(body),
            )
            .await?
            .value)
    }

    /// `DELETE /v1/services/{name}`.
    pub async fn delete_definition(&self, name: &str) -> Result<(), Error> {
        self.call::<serde_json::Value>(Method::DELETE, &format!("/v1/services/{name}"), None)
            .await?;
        Ok(())
    }

    /// `GET /v1/services/{name}/instances` under `requirements`.
    pub async fn instances(
        &self,
        name: &str,
        requirements: &Requirements,
    ) -> Result<InstancesView, Error> {
        Ok(self.instances_after(name, requirements, None).await?.value)
    }

    /// Blocking form: answers once the catalog index passes `after.0`, or when
    /// `after.1` has passed.
    pub async fn instances_after(
        &self,
        name: &str,
        requirements: &Requirements,
        after: Option<(u64, Duration)>,
    ) -> Result<Indexed<InstancesView>, Error> {
        let mut query = Vec::new();
        if let Some(hard) = requirements.hard_rtt_ms {
            query.push(format!("hard_rtt_ms={hard}"));
        }
        if let Some(soft) = requirements.soft_rtt_ms {
            query.push(format!("soft_rtt_ms={soft}"));
        }
        if let Some((index, wait)) = after {
            query.push(format!("index={index}"));
            query.push(format!("wait={}ms", wait.as_millis()));
        }
        let path = format!("/v1/services/{name}/instances?{}", query.join("&"));
        self.call(Method::GET, &path, None).await
    }

    /// `PUT /v1/instances`: registers an instance on the agent's node.
    pub async fn register(&self, registration: &RegisterInstance) -> Result<Instance, Error> {
        let body = Self::encode(registration)?;
        Ok(self
            .call(Method::PUT, "/v1/instances", Some(body))
            .await?
            .value)
    }

    /// `DELETE /v1/instances/{id}`.
    pub async fn deregister(&self, id: &str) -> Result<(), Error> {
        self.call::<serde_json::Value>(Method::DELETE, &format!("/v1/instances/{id}"), None)
            .await?;
        Ok(())
    }
}
