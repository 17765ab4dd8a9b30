//! A typed client of the agent's admin API.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mesh_proto::api::{
    ErrorBody, HealthView, InstancesView, NodeView, RegisterInstance, ServiceSummary, INDEX_HEADER,
};
use mesh_proto::catalog::{Definition, Instance};
use mesh_proto::names::{validate_id, validate_service_name};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use crate::error::Error;
use crate::select::Requirements;

/// How long an ordinary (non-blocking) call may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// `host:port` to open TCP connections to (port 80 when the URL has none).
    connect_to: String,
    timeout: Duration,
    /// Bearer token sent with every call (the agent's `--admin-token`).
    token: Option<String>,
    http: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Client {
    /// A client of the agent at `agent_url` (for example `http://127.0.0.1:4200`,
    /// the agent's default `--admin-listen`).
    ///
    /// Nothing is sent yet: a URL that parses but where no agent listens
    /// fails on the first call with [`Error::Unreachable`].
    pub fn new(agent_url: &str) -> Result<Self, Error> {
        let base = agent_url.trim_end_matches('/').to_owned();
        let uri: Uri = base
            .parse()
            .map_err(|e: http::uri::InvalidUri| Error::InvalidUrl {
                url: agent_url.to_owned(),
                reason: e.to_string(),
            })?;
        let host = match (uri.scheme_str(), uri.host()) {
            (Some("http"), Some(host)) => host,
            _ => {
                return Err(Error::InvalidUrl {
                    url: agent_url.to_owned(),
                    reason: "only http://HOST:PORT is supported".to_owned(),
                })
            }
        };
        let connect_to = format!("{host}:{}", uri.port_u16().unwrap_or(80));
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            // Below the agent's 30 s header-read timeout, which closes idle
            // connections: a pooled one is dropped here before the agent
            // closes it under a request.
            .pool_idle_timeout(Duration::from_secs(20))
            .build(connector);
        Ok(Self {
            base,
            connect_to,
            timeout: DEFAULT_TIMEOUT,
            token: None,
            http,
        })
    }

    /// The same client sending `token` as `Authorization: Bearer` (an
    /// agent with `--admin-token` requires it on every change).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The same client with another per-call timeout (default
    /// [`DEFAULT_TIMEOUT`]). A blocking query may take its `wait` (plus up
    /// to 1/16 of jitter) on top of this.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The agent's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Indexed<T>, Error> {
        self.call_within(method, path, body, self.timeout).await
    }

    /// One request whose whole answer must arrive within `limit`.
    async fn call_within<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        limit: Duration,
    ) -> Result<Indexed<T>, Error> {
        let url = format!("{}{path}", self.base);
        match tokio::time::timeout(limit, self.send(method, &url, body)).await {
            Ok(answer) => answer,
            Err(_) => Err(Error::Timeout { url, after: limit }),
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Indexed<T>, Error> {
        let mut request = Request::builder()
            .method(method)
            .uri(url)
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Error::InvalidUrl {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| Error::Unreachable {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        read_answer(url, response).await
    }

    /// `host:port` of the agent, for a connection of one's own.
    pub(crate) fn connect_to(&self) -> &str {
        &self.connect_to
    }

    /// How long a query may take: the per-call timeout, plus the wait of a
    /// blocking query and the up to 1/16 of jitter the agent adds to it.
    pub(crate) fn limit_for(&self, after: Option<(u64, Duration)>) -> Duration {
        after.map_or(Duration::ZERO, |(_, wait)| wait + wait / 16) + self.timeout
    }

    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
        serde_json::to_vec(value).map_err(|e| Error::Decode(e.to_string()))
    }

    /// `GET /v1/health`: the node id, readiness, member counts and catalog index.
    pub async fn health(&self) -> Result<HealthView, Error> {
        Ok(self.call(Method::GET, "/v1/health", None).await?.value)
    }

    /// `GET /v1/nodes`: every member with its state and RTT (and the RTT's source).
    pub async fn nodes(&self) -> Result<Vec<NodeView>, Error> {
        Ok(self.call(Method::GET, "/v1/nodes", None).await?.value)
    }

    /// `GET /v1/services`: every service with a definition or an instance.
    pub async fn services(&self) -> Result<Vec<ServiceSummary>, Error> {
        Ok(self.call(Method::GET, "/v1/services", None).await?.value)
    }

    /// `GET /v1/services/{name}`: the service's definition; a service with
    /// instances but no definition gives an error whose
    /// [`is_not_found`](Error::is_not_found) is true.
    pub async fn definition(&self, name: &str) -> Result<Definition, Error> {
        validate_service_name(name)?;
        Ok(self
            .call(Method::GET, &format!("/v1/services/{name}"), None)
            .await?
            .value)
    }

    /// `PUT /v1/services/{name}` (the name comes from the definition): returns the definition as stored (with its hash).
    pub async fn put_definition(&self, definition: &Definition) -> Result<Definition, Error> {
        validate_service_name(&definition.name)?;
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

    /// `DELETE /v1/services/{name}`: removes the definition cluster-wide
    /// (instances stay registered).
    pub async fn delete_definition(&self, name: &str) -> Result<(), Error> {
        validate_service_name(name)?;
        self.call::<serde_json::Value>(Method::DELETE, &format!("/v1/services/{name}"), None)
            .await?;
        Ok(())
    }

    /// `GET /v1/services/{name}/instances` under `requirements` (made
    /// stricter by the definition's, on the agent): each instance with its
    /// address, node, health, RTT from the agent's node and that RTT's
    /// source; eligible ones first, best first, then the rest with the
    /// reason. A service nobody registered gives two empty lists.
    pub async fn instances(
        &self,
        name: &str,
        requirements: &Requirements,
    ) -> Result<InstancesView, Error> {
        Ok(self.instances_after(name, requirements, None).await?.value)
    }

    /// Blocking form of [`instances`](Client::instances): with
    /// `after = Some((index, wait))` the agent answers once its catalog index
    /// passes `index`, or when `wait` has passed (capped at 10 min by the
    /// agent), whichever comes first. An answer is not a promise that
    /// anything changed. [`watch`](Client::watch) builds on this.
    pub async fn instances_after(
        &self,
        name: &str,
        requirements: &Requirements,
        after: Option<(u64, Duration)>,
    ) -> Result<Indexed<InstancesView>, Error> {
        let path = instances_path(name, requirements, after)?;
        let limit = self.limit_for(after);
        self.call_within(Method::GET, &path, None, limit).await
    }

    /// `PUT /v1/instances`: registers an instance on the agent's node and
    /// returns it with its id.
    pub async fn register(&self, registration: &RegisterInstance) -> Result<Instance, Error> {
        let body = Self::encode(registration)?;
        Ok(self
            .call(Method::PUT, "/v1/instances", Some(body))
            .await?
            .value)
    }

    /// `DELETE /v1/instances/{id}`: deregisters an instance of the agent's
    /// own node (another node's instance gives a 404).
    pub async fn deregister(&self, id: &str) -> Result<(), Error> {
        validate_id("instance id", id)?;
        self.call::<serde_json::Value>(Method::DELETE, &format!("/v1/instances/{id}"), None)
            .await?;
        Ok(())
    }
}

/// Path and query of `GET /v1/services/{name}/instances`, blocking when
/// `after` is given.
pub(crate) fn instances_path(
    name: &str,
    requirements: &Requirements,
    after: Option<(u64, Duration)>,
) -> Result<String, Error> {
    validate_service_name(name)?;
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
    Ok(format!("/v1/services/{name}/instances?{}", query.join("&")))
}

/// Reads an answer of the agent: the JSON body and `x-gossamer-index` of a
/// 200, or the agent's `error` and `hint` otherwise.
pub(crate) async fn read_answer<T: DeserializeOwned>(
    url: &str,
    response: Response<Incoming>,
) -> Result<Indexed<T>, Error> {
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
            url: url.to_owned(),
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
