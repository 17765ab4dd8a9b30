//! [`Watch`]: the instances of a service as a stream, built on the admin
//! API's blocking queries (`?index=N&wait=…`, answered when the agent's
//! `x-gossamer-index` passes N), that keeps going across agent restarts.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{self, Stream};
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use mesh_proto::api::{Ineligible, InstancesView, RttSource};
use mesh_proto::catalog::Instance;

use crate::admin::{self, Client, Indexed};
use crate::error::Error;
use crate::select::Requirements;

/// Shortest time between two queries of one watch, so an agent that answers
/// at once again and again (a bug, or a catalog that never settles) cannot
/// turn a watch into a busy loop.
const MIN_INTERVAL: Duration = Duration::from_millis(50);

/// How a [`Watch`] queries and retries.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchOptions {
    /// The caller's RTT requirements; the agent makes them stricter with
    /// the definition's, and eligibility in every update follows them.
    pub requirements: Requirements,
    /// How long one blocking query may wait for a change (default 30 s).
    /// RTT drift does not move the catalog index, so this is also how
    /// often eligibility is re-checked when nothing else happens.
    pub wait: Duration,
    /// First pause after a failed query (default 100 ms); it doubles on
    /// each failure in a row, with jitter.
    pub min_backoff: Duration,
    /// Longest pause between two attempts (default 5 s).
    pub max_backoff: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            requirements: Requirements::default(),
            wait: Duration::from_secs(30),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

// === impl WatchOptions ===

impl WatchOptions {
    /// The pause before attempt number `failures + 1`: `min_backoff`
    /// doubled per failure, capped at `max_backoff`, then scaled by
    /// `jitter` in `[0, 1]` into its upper half, so that many watchers of a
    /// restarted agent do not all come back at once.
    fn backoff(&self, failures: u32, jitter: f64) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        let ceiling = self.min_backoff.saturating_mul(1 << doublings);
        let ceiling = ceiling.min(self.max_backoff.max(self.min_backoff));
        ceiling.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
    }
}

/// The instances of one service, as a [`Stream`] that never ends on its own.
///
/// Made by [`Client::watch`] or [`Client::watch_with`]. The first item is
/// the current view; after that, an item comes each time the view changes:
/// an instance registered, deregistered, or changing health, eligibility or
/// RTT source, or the effective requirements changing. RTT figures alone
/// moving do not make an update (they drift all the time), but every update
/// carries the current ones.
///
/// Under the hood each query is a blocking query: it carries the index of
/// the last answer and returns when the agent's catalog index passes it,
/// or after [`WatchOptions::wait`].
///
/// **Agent restarts.** A watch keeps one HTTP connection of its own to the
/// agent. A restarted agent counts its index from 1 again, so an index from
/// before the restart means nothing to it; but a restart also closes every
/// connection. So whenever the watch has to open a new connection, its
/// first query there does not block: it reads the state as it is and takes
/// the agent's index from that answer, even if it went backwards.
///
/// **Errors do not end the stream.** When the agent cannot be reached, is
/// too slow or answers 5xx, the error comes out as an `Err` item, the watch
/// backs off (see [`WatchOptions`]) and tries again on a new connection.
/// Only an error that cannot heal by waiting (a 4xx answer, an invalid
/// service name) is the last item.
///
/// ```no_run
/// use futures_util::StreamExt;
///
/// # async fn run() -> Result<(), client::Error> {
/// let client = client::Client::new("http://127.0.0.1:4200")?;
/// let mut watch = client.watch("billing");
/// while let Some(update) = watch.next().await {
///     match update {
///         Ok(update) => println!("{} eligible", update.value.eligible.len()),
///         Err(e) => eprintln!("still trying: {e}"),
///     }
/// }
/// # Ok(())
/// # }
/// ```
pub struct Watch {
    service: String,
    inner: Pin<Box<dyn Stream<Item = Result<Indexed<InstancesView>, Error>> + Send>>,
}

// === impl Watch ===

impl Watch {
    pub(crate) fn new(client: Client, service: &str, options: WatchOptions) -> Self {
        let state = State {
            client,
            service: service.to_owned(),
            options,
            index: None,
            last: None,
            connection: None,
            failures: 0,
            last_query: None,
            finished: false,
        };
        Self {
            service: service.to_owned(),
            inner: Box::pin(stream::unfold(state, State::next)),
        }
    }

    /// The service watched.
    pub fn service(&self) -> &str {
        &self.service
    }
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl Stream for Watch {
    type Item = Result<Indexed<InstancesView>, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// Where a watch stands between two items.
struct State {
    client: Client,
    service: String,
    options: WatchOptions,
    /// Index to block on; `None` for a query that answers at once (the
    /// first on every new connection).
    index: Option<u64>,
    /// The watch's own connection to the agent; `None` after an error.
    connection: Option<Connection>,
    /// What the last update showed, to tell a real change from a wake-up.
    last: Option<Fingerprint>,
    /// Failed queries in a row.
    failures: u32,
    /// When the last query was sent.
    last_query: Option<Instant>,
    /// Set after an error that will not heal: the stream then ends.
    finished: bool,
}

// === impl State ===

impl State {
    async fn next(mut self) -> Option<(Result<Indexed<InstancesView>, Error>, State)> {
        if self.finished {
            return None;
        }
        loop {
            self.pause().await;
            self.last_query = Some(Instant::now());
            let answer = self.query().await;
            if answer.is_err() {
                self.connection = None;
            }
            match answer {
                Ok(answer) => {
                    self.failures = 0;
                    // Index 0 (no header) would make every blocking query
                    // return at once; 1 blocks until the first change.
                    self.index = Some(answer.index.max(1));
                    let fingerprint = Fingerprint::of(&answer.value);
                    if self.last.as_ref() != Some(&fingerprint) {
                        self.last = Some(fingerprint);
                        return Some((Ok(answer), self));
                    }
                }
                Err(error) if error.is_transient() => {
                    self.failures = self.failures.saturating_add(1);
                    return Some((Err(error), self));
                }
                Err(error) => {
                    self.finished = true;
                    return Some((Err(error), self));
                }
            }
        }
    }

    /// One query on the watch's connection, opened first if need be; on a
    /// new connection the query does not block.
    async fn query(&mut self) -> Result<Indexed<InstancesView>, Error> {
        // A bad name is final whether or not the agent is up.
        mesh_proto::names::validate_service_name(&self.service)?;
        let reusable = match self.connection.as_mut() {
            // A connection the agent closed while idle is no error.
            Some(c) => c.sender.ready().await.is_ok(),
            None => false,
        };
        if !reusable {
            self.connection = None;
            self.index = None;
        }
        let connection = match self.connection.as_mut() {
            Some(connection) => connection,
            None => self
                .connection
                .insert(Connection::open(&self.client).await?),
        };
        let after = self.index.map(|index| (index, self.options.wait));
        let path = admin::instances_path(&self.service, &self.options.requirements, after)?;
        let limit = self.client.limit_for(after);
        let url = format!("{}{path}", self.client.url());
        let request = http::Request::get(&path)
            .header(http::header::HOST, self.client.connect_to())
            .body(Full::new(Bytes::new()))
            .map_err(|e| Error::InvalidUrl {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let unreachable = |e: hyper::Error| Error::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        };
        let exchange = async {
            let response = connection.sender.send_request(request).await;
            admin::read_answer(&url, response.map_err(unreachable)?).await
        };
        match tokio::time::timeout(limit, exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(Error::Timeout { url, after: limit }),
        }
    }

    /// Backs off after failures, and spaces queries by at least `MIN_INTERVAL`.
    async fn pause(&self) {
        let mut pause = Duration::ZERO;
        if self.failures > 0 {
            pause = self.options.backoff(self.failures, rand::random::<f64>());
        }
        if let Some(at) = self.last_query {
            pause = pause.max(MIN_INTERVAL.saturating_sub(at.elapsed()));
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// An HTTP/1.1 connection owned by one watch: while it stays open, the
/// agent at the other end is the same process, and its index can be trusted.
struct Connection {
    sender: SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

// === impl Connection ===

impl Connection {
    async fn open(client: &Client) -> Result<Self, Error> {
        let to = client.connect_to();
        let unreachable = |reason: String| Error::Unreachable {
            url: client.url().to_owned(),
            reason,
        };
        let stream = tokio::time::timeout(client.timeout(), tokio::net::TcpStream::connect(to))
            .await
            .map_err(|_| Error::Timeout {
                url: client.url().to_owned(),
                after: client.timeout(),
            })?
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let driver = tokio::spawn(async move {
            // Its end is seen by the sender; nothing to add here.
            let _ = connection.await;
        });
        Ok(Self { sender, driver })
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The parts of a view whose change is worth an update: RTT figures left out.
#[derive(Debug, PartialEq)]
struct Fingerprint {
    hard_rtt_ms: Option<u32>,
    soft_rtt_ms: Option<u32>,
    /// By instance id: the record, eligibility, within-soft, RTT source and
    /// the kind of reason it is ineligible.
    instances: Vec<(Instance, bool, bool, RttSource, Option<&'static str>)>,
}

// === impl Fingerprint ===

impl Fingerprint {
    fn of(view: &InstancesView) -> Self {
        let mut instances: Vec<_> = view
            .eligible
            .iter()
            .chain(&view.ineligible)
            .map(|i| {
                (
                    i.instance.clone(),
                    i.ineligible.is_none(),
                    i.within_soft,
                    i.rtt_source,
                    i.ineligible.as_ref().map(reason_kind),
                )
            })
            .collect();
        // The agent orders eligible instances by its own load figures,
        // which move without anything changing.
        instances.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        Self {
            hard_rtt_ms: view.hard_rtt_ms,
            soft_rtt_ms: view.soft_rtt_ms,
            instances,
        }
    }
}

fn reason_kind(reason: &Ineligible) -> &'static str {
    match reason {
        Ineligible::OverHardRtt { .. } => "over_hard_rtt",
        Ineligible::RttUnknown => "rtt_unknown",
        Ineligible::Unhealthy => "unhealthy",
        Ineligible::Ejected { .. } => "ejected",
        Ineligible::NodeDown => "node_down",
    }
}

// The watch methods live here, beside the stream they make, so the admin
// client does not depend on its watcher.
impl Client {
    /// A stream of the instances of `name`: the current view first, then a
    /// new one each time it changes. See [`Watch`].
    pub fn watch(&self, name: &str) -> Watch {
        self.watch_with(name, WatchOptions::default())
    }

    /// [`watch`](Client::watch) with requirements, wait and back-off of your choosing.
    pub fn watch_with(&self, name: &str, options: WatchOptions) -> Watch {
        Watch::new(self.clone(), name, options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::api::InstanceView;
    use mesh_proto::catalog::Health;

    fn view(instances: &[(&str, f64, Option<Ineligible>)]) -> InstancesView {
        let make = |(id, rtt, why): &(&str, f64, Option<Ineligible>)| InstanceView {
            instance: Instance {
                id: (*id).to_owned(),
                service: "web".to_owned(),
                node: mesh_proto::NodeId::new("node-a").expect("node id"),
                address: "127.0.0.1:8080".parse().expect("addr"),
                deployment_id: None,
                tags: Vec::new(),
                health: Health::Passing,
            },
            rtt_ms: Some(*rtt),
            rtt_source: RttSource::Measured,
            within_soft: true,
            ineligible: why.clone(),
        };
        InstancesView {
            service: "web".to_owned(),
            hard_rtt_ms: Some(30),
            soft_rtt_ms: None,
            protocol: None,
            eligible: instances
                .iter()
                .filter(|i| i.2.is_none())
                .map(make)
                .collect(),
            ineligible: instances
                .iter()
                .filter(|i| i.2.is_some())
                .map(make)
                .collect(),
        }
    }

    #[test]
    fn rtt_drift_and_order_are_not_changes() {
        let before = view(&[("a", 1.0, None), ("b", 2.0, None)]);
        let after = view(&[("b", 2.7, None), ("a", 0.4, None)]);
        assert_eq!(Fingerprint::of(&before), Fingerprint::of(&after));
    }

    #[test]
    fn membership_and_eligibility_are_changes() {
        let one = view(&[("a", 1.0, None)]);
        let two = view(&[("a", 1.0, None), ("b", 2.0, None)]);
        assert_ne!(Fingerprint::of(&one), Fingerprint::of(&two));
        let over = view(&[(
            "a",
            41.0,
            Some(Ineligible::OverHardRtt {
                rtt_ms: 41.0,
                hard_rtt_ms: 30,
            }),
        )]);
        assert_ne!(Fingerprint::of(&one), Fingerprint::of(&over));
        // ... but how far over is not.
        let further = view(&[(
            "a",
            45.0,
            Some(Ineligible::OverHardRtt {
                rtt_ms: 45.0,
                hard_rtt_ms: 30,
            }),
        )]);
        assert_eq!(Fingerprint::of(&over), Fingerprint::of(&further));
    }

    #[tokio::test]
    async fn an_invalid_name_ends_the_stream_after_one_error() {
        use futures_util::StreamExt;
        let client = Client::new("http://127.0.0.1:9").expect("client");
        let mut watch = client.watch("Not A Name");
        assert!(matches!(
            watch.next().await,
            Some(Err(Error::InvalidName(_)))
        ));
        assert!(watch.next().await.is_none());
    }

    #[tokio::test]
    async fn an_absent_agent_gives_transient_errors_and_the_stream_goes_on() {
        use futures_util::StreamExt;
        let client = Client::new("http://127.0.0.1:9").expect("client");
        let options = WatchOptions {
            min_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            ..WatchOptions::default()
        };
        let mut watch = client.watch_with("web", options);
        for _ in 0..3 {
            match watch.next().await {
                Some(Err(e)) => assert!(e.is_transient(), "{e}"),
                other => panic!("expected a transient error, got {other:?}"),
            }
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let o = WatchOptions::default();
        assert_eq!(o.backoff(1, 1.0), Duration::from_millis(100));
        assert_eq!(o.backoff(2, 1.0), Duration::from_millis(200));
        assert_eq!(o.backoff(4, 1.0), Duration::from_millis(800));
        assert_eq!(o.backoff(30, 1.0), Duration::from_secs(5));
        assert_eq!(o.backoff(u32::MAX, 0.0), Duration::from_millis(2500));
        assert_eq!(o.backoff(1, 0.0), Duration::from_millis(50));
    }
}
