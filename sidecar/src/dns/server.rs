//! The DNS server loop: hickory-server's UDP and TCP handling around the pure
//! [`answer`](super::answer()) core, and the `gossamer_dns_queries_total` metric.
//!
//! hickory-server answers undecodable packets with FORMERR (or drops those
//! shorter than a header) before they reach our handler, truncates UDP
//! answers past the client's buffer with the TC bit so clients retry over
//! TCP. TCP is served by [`super::tcp`] (at most
//! [`super::tcp::MAX_TCP_CONNECTIONS`] open), which closes a connection silent
//! for [`TCP_IDLE`] or sending an undecodable query; a TCP
//! connection's queries are answered one at a time, so one client holds at
//! most one answer in progress and [`TCP_RESPONSE_BUFFER`] queued.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::{DNSClass, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};
use tracing::{debug, info, warn};

use super::{answer, DnsSource, Question};

/// How long a TCP client may stay silent before its connection is closed.
pub const TCP_IDLE: Duration = Duration::from_secs(5);
/// Answers queued per TCP connection before its handler waits for the client to read.
pub const TCP_RESPONSE_BUFFER: usize = 8;
/// Largest UDP answer offered to EDNS clients: DNS Flag Day 2020's size,
/// which avoids IP fragmentation; larger answers are truncated (TC) and
/// clients retry over TCP.
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// The DNS front's UDP socket and TCP listener, on the same port, bound
/// before the agent is ready so its `listeners.json` has the address.
pub struct DnsSockets {
    udp: UdpSocket,
    tcp: TcpListener,
}

impl DnsSockets {
    /// Binds UDP and TCP on `addr`; with port 0, one port free for both.
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<Self> {
        let hint = || {
            format!(
                "cannot listen on {addr} (--dns-listen); is another agent or DNS server there? \
                 choose a free address, or pass --dns-listen off"
            )
        };
        // Port 0 gives a free UDP port that may be taken for TCP: try a few.
        for _ in 0..16 {
            let udp = UdpSocket::bind(addr).await.with_context(hint)?;
            let local = udp.local_addr().with_context(hint)?;
            match TcpListener::bind(local).await {
                Ok(tcp) => return Ok(Self { udp, tcp }),
                Err(_) if addr.port() == 0 => continue,
                Err(e) => return Err(e).with_context(hint),
            }
        }
        bail!("{}: no port was free for both UDP and TCP", hint())
    }

    /// The bound address (UDP and TCP share it).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.udp.local_addr()
    }
}

/// Serves DNS on `sockets` from `source` until the task is dropped.
pub async fn serve(sockets: DnsSockets, source: Arc<dyn DnsSource>, ttl: Duration) {
    let addr = sockets.local_addr().ok();
    let ttl = u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX);
    let handler = Handler { source, ttl };
    let mut server = Server::new(handler.clone());
    server.register_socket(sockets.udp);
    info!(?addr, ttl, "DNS front serving *.gossamer over UDP and TCP");
    // Dropping this future (the agent aborts the task) drops `server` and the
    // TCP loop, which abort their sockets' tasks.
    let tcp = super::tcp::serve(
        sockets.tcp,
        Arc::new(handler),
        TCP_IDLE,
        TCP_RESPONSE_BUFFER,
    );
    let udp = server.block_until_done();
    tokio::select! {
        () = tcp => {}
        stopped = udp => if let Err(error) = stopped {
            warn!(%error, "the DNS server stopped; DNS answers are unavailable until restart");
        },
    }
}

/// hickory's request handler: checks the request, asks the core, counts.
#[derive(Clone)]
struct Handler {
    source: Arc<dyn DnsSource>,
    ttl: u32,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut handle: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        let edns = request.edns.as_ref().map(|theirs| {
            let mut ours = Edns::new();
            ours.set_max_payload(theirs.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            ours
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let qtype = request
            .queries
            .queries()
            .first()
            .map_or("other", |q| type_label(q.query_type()));
        let sent = match question(request) {
            Err(rcode) => {
                metadata.response_code = rcode;
                handle
                    .send_response(builder.build_no_records(metadata))
                    .await
            }
            Ok(question) => {
                let answer = answer(self.source.as_ref(), question, self.ttl);
                metadata.response_code = answer.rcode;
                let response = builder.build(
                    metadata,
                    answer.answers.iter(),
                    answer.authority.iter(),
                    std::iter::empty(),
                    answer.additionals.iter(),
                );
                handle.send_response(response).await
            }
        };
        crate::metrics::dns_query(qtype, rcode_label(metadata.response_code));
        sent.unwrap_or_else(|error| {
            debug!(%error, src = %request.src(), "cannot send a DNS answer");
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        })
    }
}

/// The single question of a standard query, or the response code refusing it.
fn question(request: &Request) -> Result<Question<'_>, ResponseCode> {
    if request.metadata.op_code != OpCode::Query {
        return Err(ResponseCode::NotImp);
    }
    let info = request.request_info().map_err(|_| ResponseCode::FormErr)?;
    if !matches!(info.query.query_class(), DNSClass::IN | DNSClass::ANY) {
        return Err(ResponseCode::Refused);
    }
    Ok(Question {
        name: info.query.original().name(),
        qtype: info.query.query_type(),
        // A dual-stack socket shows IPv4 loopback as ::ffff:127.0.0.1.
        client: request.src().ip().to_canonical(),
    })
}

/// The `type` label: a fixed set, so no client can grow the series.
fn type_label(qtype: RecordType) -> &'static str {
    match qtype {
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        RecordType::SRV => "SRV",
        RecordType::SOA => "SOA",
        RecordType::ANY => "ANY",
        _ => "other",
    }
}

/// The `rcode` label: a fixed set.
fn rcode_label(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::ServFail => "SERVFAIL",
        _ => "other",
    }
}
