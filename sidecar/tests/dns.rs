//! The DNS front against real resolvers: hickory-resolver against a
//! three-node mesh, `dig` (Debian's dnsutils) for A, SRV, NXDOMAIN, TCP and
//! truncation, and a bounded flood of garbage and queries. Loopback only.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{delayed_trio, eventually, register_port, run_bounded, AgentProc, Spec};
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ProtocolConfig, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use mesh_proto::api::RegisterInstance;
use mesh_proto::catalog::Health;

/// A resolver that asks only `dns`, caches nothing, and retries UDP
/// truncations over TCP.
fn resolver(dns: SocketAddr) -> TokioResolver {
    let connection = |protocol| {
        let mut c = ConnectionConfig::new(protocol);
        c.port = dns.port();
        c
    };
    let server = NameServerConfig::new(
        dns.ip(),
        true,
        vec![
            connection(ProtocolConfig::Udp),
            connection(ProtocolConfig::Tcp),
        ],
    );
    let mut options = ResolverOpts::default();
    options.cache_size = 0;
    options.attempts = 2;
    options.timeout = Duration::from_secs(2);
    TokioResolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![server]),
        TokioRuntimeProvider::default(),
    )
    .with_options(options)
    .build()
    .expect("resolver")
}

fn dns_addr(agent: &AgentProc) -> SocketAddr {
    agent
        .listeners
        .dns
        .expect("the harness enables DNS on port 0")
}

/// What a lookup showed: records as text, or "NXDOMAIN", or "NODATA".
async fn ask(resolver: &TokioResolver, name: &str, qtype: RecordType) -> Vec<String> {
    match resolver.lookup(name, qtype).await {
        Ok(lookup) => lookup
            .answers()
            .iter()
            .map(|r| match &r.data {
                RData::A(a) => a.0.to_string(),
                RData::AAAA(a) => a.0.to_string(),
                RData::SRV(s) => format!("{} {}", s.port, s.target),
                other => format!("{other:?}"),
            })
            .collect(),
        Err(e) if e.is_nx_domain() => vec!["NXDOMAIN".to_owned()],
        Err(e) if e.is_no_records_found() => vec!["NODATA".to_owned()],
        Err(e) => vec![format!("ERROR {e}")],
    }
}

async fn register(agent: &AgentProc, service: &str, port: u16, tags: &[&str], health: Health) {
    agent
        .client()
        .register(&RegisterInstance {
            service: service.to_owned(),
            port: Some(port),
            address: None,
            id: None,
            deployment_id: None,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            health: Some(health),
        })
        .await
        .unwrap_or_else(|e| panic!("register {service} on {}: {e}", agent.node_id()));
}

/// Polls until `name` shows `want` (order-insensitive) on `agent`.
async fn wait_answer(agent: &AgentProc, name: &str, qtype: RecordType, want: &[String]) {
    let resolver = resolver(dns_addr(agent));
    let mut want = want.to_vec();
    want.sort();
    eventually(
        &format!("{} to answer {name} {qtype} with {want:?}", agent.node_id()),
        Duration::from_secs(30),
        || {
            let (resolver, want) = (&resolver, &want);
            async move {
                let mut got = ask(resolver, name, qtype).await;
                got.sort();
                (got == *want).then_some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_three_node_mesh_answers_every_name_on_every_node_and_forgets_a_killed_node() {
    let mut agents = common::cluster("dns", 3).await;
    common::wait_alive(
        &agents.iter().collect::<Vec<_>>(),
        &["dns-1", "dns-2", "dns-3"],
        Duration::from_secs(30),
    )
    .await;
    // Ports need not listen: DNS reads the catalog, it calls nothing.
    register(&agents[1], "echo", 18101, &["blue"], Health::Passing).await;
    register(&agents[2], "echo", 18102, &["green"], Health::Passing).await;
    register(&agents[2], "sick", 18103, &[], Health::Critical).await;
    // Routable by the proxy, but DNS answers only passing instances.
    register(&agents[1], "echo", 18104, &["blue"], Health::Warning).await;
    let srv = |node: &str, port: u16| format!("{port} echo-{node}-{port}.{node}.node.gossamer.");

    for agent in &agents {
        let both = [srv("dns-2", 18101), srv("dns-3", 18102)];
        wait_answer(agent, "echo.service.gossamer.", RecordType::SRV, &both).await;
        let resolver = resolver(dns_addr(agent));
        let a = ask(&resolver, "Echo.Service.Gossamer", RecordType::A).await;
        assert_eq!(
            a,
            ["127.0.0.1"],
            "{}: duplicate addresses fold",
            agent.node_id()
        );
        // The SRV target resolves, on every node.
        let target = ask(
            &resolver,
            "echo-dns-3-18102.dns-3.node.gossamer.",
            RecordType::A,
        )
        .await;
        assert_eq!(target, ["127.0.0.1"]);
        let node = ask(&resolver, "dns-2.node.gossamer.", RecordType::A).await;
        assert_eq!(node, ["127.0.0.1"]);
        let tagged = ask(&resolver, "green.echo.service.gossamer.", RecordType::SRV).await;
        assert_eq!(tagged, [srv("dns-3", 18102)]);
        let untagged = ask(&resolver, "red.echo.service.gossamer.", RecordType::A).await;
        assert_eq!(untagged, ["NODATA"]);
        let nx = ask(&resolver, "nope.service.gossamer.", RecordType::A).await;
        assert_eq!(nx, ["NXDOMAIN"]);
        let nx_node = ask(&resolver, "dns-9.node.gossamer.", RecordType::A).await;
        assert_eq!(nx_node, ["NXDOMAIN"]);
    }
    // Every instance critical: the name exists, nothing is eligible.
    wait_answer(
        &agents[0],
        "sick.service.gossamer.",
        RecordType::A,
        &["NODATA".into()],
    )
    .await;

    // A node killed (no leave) drops its instances and its own name everywhere.
    agents[2].kill();
    for agent in &agents[..2] {
        let left = [srv("dns-2", 18101)];
        wait_answer(agent, "echo.service.gossamer.", RecordType::SRV, &left).await;
        wait_answer(
            agent,
            "dns-3.node.gossamer.",
            RecordType::A,
            &["NXDOMAIN".into()],
        )
        .await;
    }
}

#[tokio::test]
async fn a_hard_requirement_every_instance_violates_is_an_empty_noerror() {
    // a reaches b over about 5 ms and c over about 40 ms (the link-delay shim).
    let trio = delayed_trio("dnsrtt", "echo", false, (5, 40), &[]).await;
    common::wait_instances_measured(&trio.a, "echo", 2).await;
    let port_of = |node: &str| {
        trio.echo_ports
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, p)| *p)
            .expect("echo port")
    };
    let put = |hard: u32| {
        let client = trio.a.client();
        async move {
            let definition = serde_json::from_value(serde_json::json!({
                "name": "echo", "version": "1",
                "requirements": { "hard_rtt_ms": hard }
            }))
            .expect("definition");
            client.put_definition(&definition).await.expect("put");
        }
    };
    put(20).await;
    let near = format!(
        "{} echo-dnsrtt-b-{}.dnsrtt-b.node.gossamer.",
        port_of("dnsrtt-b"),
        port_of("dnsrtt-b")
    );
    wait_answer(&trio.a, "echo.service.gossamer", RecordType::SRV, &[near]).await;
    put(1).await;
    wait_answer(
        &trio.a,
        "echo.service.gossamer",
        RecordType::A,
        &["NODATA".into()],
    )
    .await;
    wait_answer(
        &trio.a,
        "echo.service.gossamer",
        RecordType::SRV,
        &["NODATA".into()],
    )
    .await;
    // b and c have the instance on their own node (RTT 0): they still answer.
    wait_answer(
        &trio.b,
        "echo.service.gossamer",
        RecordType::A,
        &["127.0.0.1".into()],
    )
    .await;
}

/// Runs dig against `dns` and returns its output; fails clearly without dig.
fn dig(dns: SocketAddr, args: &[&str]) -> String {
    let mut command = Command::new("dig");
    command
        .arg(format!("@{}", dns.ip()))
        .args(["-p", &dns.port().to_string()])
        .args(["+time=2", "+tries=2"])
        .args(args);
    if Command::new("dig").arg("-v").output().is_err() {
        panic!("dig is not installed: apt-get install dnsutils (.ci/run installs it)");
    }
    let out = run_bounded(&mut command, Duration::from_secs(20), "dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn dig_reads_a_srv_nxdomain_over_udp_and_tcp_and_retries_truncated_answers_over_tcp() {
    let agent = AgentProc::start(Spec::new("dig-1").arg("--dns-ttl").arg("7")).await;
    let dns = dns_addr(&agent);
    register_port(&agent, "echo", 18201).await;
    let a = dig(dns, &["echo.service.gossamer", "A", "+short"]);
    assert_eq!(a.trim(), "127.0.0.1", "{a}");
    let full = dig(dns, &["echo.service.gossamer", "A"]);
    assert!(
        full.contains("flags: qr aa") && full.contains("\t7\tIN\tA\t127.0.0.1"),
        "{full}"
    );
    let srv = dig(dns, &["echo.service.gossamer", "SRV", "+short"]);
    assert_eq!(
        srv.trim(),
        "1 1 18201 echo-dig-1-18201.dig-1.node.gossamer."
    );
    let target = dig(dns, &["echo-dig-1-18201.dig-1.node.gossamer", "+short"]);
    assert_eq!(target.trim(), "127.0.0.1");
    let nx = dig(dns, &["nope.service.gossamer"]);
    assert!(
        nx.contains("status: NXDOMAIN") && nx.contains("SOA"),
        "{nx}"
    );
    let tcp = dig(dns, &["+tcp", "echo.service.gossamer", "SRV", "+short"]);
    assert_eq!(tcp.trim(), srv.trim());

    // 40 instances make an SRV answer past 1232 bytes: UDP says TC, dig
    // retries over TCP by itself and shows them all.
    for port in 18210..18250 {
        register_port(&agent, "wide", port).await;
    }
    let truncated = dig(dns, &["+ignore", "wide.service.gossamer", "SRV"]);
    assert!(
        truncated.contains(" tc"),
        "no TC bit over UDP:\n{truncated}"
    );
    let all = dig(dns, &["wide.service.gossamer", "SRV", "+short"]);
    assert_eq!(all.lines().count(), 40, "{all}");
}

/// A standard query for `name` (labels as given, no compression).
fn query(id: u16, name: &[&[u8]], qtype: u16) -> Vec<u8> {
    let mut packet = id.to_be_bytes().to_vec();
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label);
    }
    packet.push(0);
    packet.extend_from_slice(&qtype.to_be_bytes());
    packet.extend_from_slice(&1u16.to_be_bytes());
    packet
}

#[tokio::test]
async fn garbage_and_a_bounded_flood_leave_dns_and_the_agent_serving() {
    let (echo_port, _echo) = common::echo_service("echo@flood-1").await;
    let agent = AgentProc::start(Spec::new("flood-1").with_metrics()).await;
    let dns = dns_addr(&agent);
    register_port(&agent, "echo", echo_port).await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("udp");
    socket.connect(dns).await.expect("connect");

    // Malformed packets: empty, short, a header promising a question it lacks,
    // a response, random bytes, and a 320-byte name (over DNS's 255).
    let long_label = [b'a'; 63];
    let long_name: Vec<&[u8]> = vec![&long_label; 5];
    let mut garbage: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0xff],
        vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0],
        vec![0x12, 0x34, 0x81, 0x80, 0, 0, 0, 0, 0, 0, 0, 0],
        query(7, &long_name, 1),
        vec![0xab; 4000],
    ];
    for i in 0..200u32 {
        garbage.push((0..(i % 97 + 1)).map(|j| (i * 31 + j * 7) as u8).collect());
    }
    for packet in &garbage {
        let _ = socket.send(packet).await;
    }
    // The over-long name is answered FORMERR or dropped, never a crash.
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_millis(500);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline.into(), socket.recv(&mut buf)).await {
        if n >= 4 && buf[..2] == 7u16.to_be_bytes() {
            assert_eq!(buf[3] & 0x0f, 1, "the 320-byte name should be FORMERR");
        }
    }
    // TCP garbage: a length prefix promising more than is sent, then nonsense.
    for bytes in [
        &[0xff, 0xff, 1, 2, 3][..],
        &[0, 2, 0, 0][..],
        &[0u8; 1000][..],
    ] {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(dns).await {
            use tokio::io::AsyncWriteExt;
            let _ = stream.write_all(bytes).await;
        }
    }

    // 2,000 queries as fast as one socket sends them, for at most 10 s.
    let flood = query(1, &[b"echo", b"service", b"gossamer"], 1);
    let started = Instant::now();
    let mut answered = 0u32;
    for sent in 0..2_000u32 {
        if started.elapsed() > Duration::from_secs(10) {
            panic!("sending 2,000 queries took over 10 s (sent {sent})");
        }
        let _ = socket.send(&flood).await;
        while let Ok(n) = socket.try_recv(&mut buf) {
            answered += u32::from(n >= 12);
        }
    }
    let drain_until = Instant::now() + Duration::from_secs(2);
    while let Ok(Ok(n)) = tokio::time::timeout_at(drain_until.into(), socket.recv(&mut buf)).await {
        answered += u32::from(n >= 12);
    }
    let elapsed = started.elapsed();
    eprintln!("flood: 2000 queries sent, {answered} answered, in {elapsed:?}");
    // An unpaced burst overflows bounded buffers (the socket's, hickory's
    // queues) and most of it is dropped, by design; answering some during
    // the burst, and every query after it, is the contract.
    assert!(
        answered >= 50,
        "only {answered} of 2,000 flood queries answered"
    );

    // Still serving: DNS, the proxy, the admin API, and the metric counts by
    // type and rcode.
    let resolver = resolver(dns);
    let a = ask(&resolver, "echo.service.gossamer.", RecordType::A).await;
    assert_eq!(a, ["127.0.0.1"]);
    let proxied = common::http_get(agent.listeners.proxy, "/", &[("host", "echo.localhost")])
        .await
        .expect("the proxy answers after the flood");
    assert_eq!(proxied.0, 200, "{}", proxied.2);
    let health = agent
        .client()
        .health()
        .await
        .expect("admin /v1/health answers");
    assert!(health.ready);
    let metrics = agent.metrics_text().await;
    let ok = common::metric_value(
        &metrics,
        "gossamer_dns_queries_total",
        &[("type", "A"), ("rcode", "NOERROR")],
    );
    assert!(
        ok >= f64::from(answered),
        "{ok} counted, {answered} answered"
    );
    assert!(
        metrics.contains("# HELP gossamer_dns_queries_total"),
        "no HELP text"
    );
}

/// Sends `packet` on a DNS-over-TCP connection and reads one answer; None
/// when the server closed the connection instead.
async fn tcp_exchange(stream: &mut tokio::net::TcpStream, packet: &[u8]) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut framed = u16::try_from(packet.len()).ok()?.to_be_bytes().to_vec();
    framed.extend_from_slice(packet);
    stream.write_all(&framed).await.ok()?;
    let read = async {
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await.ok()?;
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut body).await.ok()?;
        Some(body)
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .ok()
        .flatten()
}

#[tokio::test]
async fn tcp_connections_beyond_the_cap_are_closed_and_served_again_once_others_go() {
    let (echo_port, _echo) = common::echo_service("echo@tcpcap-1").await;
    let agent = AgentProc::start(Spec::new("tcpcap-1")).await;
    let dns = dns_addr(&agent);
    register_port(&agent, "echo", echo_port).await;
    let ask_a = query(9, &[b"echo", b"service", b"gossamer"], 1);
    let cap = sidecar::dns::tcp::MAX_TCP_CONNECTIONS;

    // Fill every slot with a connection that is being served.
    let mut held = Vec::with_capacity(cap);
    for i in 0..cap {
        let mut stream = tokio::net::TcpStream::connect(dns).await.expect("connect");
        let answer = tcp_exchange(&mut stream, &ask_a).await;
        assert!(answer.is_some(), "connection {i} of {cap} was not served");
        held.push(stream);
    }
    // Each is served still (this also restarts their idle timers, so none
    // can time out and free a slot while the next one is tried).
    for stream in &mut held {
        assert!(tcp_exchange(stream, &ask_a).await.is_some());
    }
    let mut extra = tokio::net::TcpStream::connect(dns).await.expect("connect");
    assert_eq!(
        tcp_exchange(&mut extra, &ask_a).await,
        None,
        "connection {} past the cap was answered",
        cap + 1
    );
    // UDP keeps answering meanwhile.
    let resolver = resolver(dns);
    assert_eq!(
        ask(&resolver, "echo.service.gossamer.", RecordType::A).await,
        ["127.0.0.1"]
    );

    // The held connections go; TCP serves a new one again.
    drop(held);
    eventually(
        "a TCP query answered once slots are free",
        Duration::from_secs(20),
        || async move {
            let mut stream = tokio::net::TcpStream::connect(dns).await.ok()?;
            tcp_exchange(
                &mut stream,
                &query(10, &[b"echo", b"service", b"gossamer"], 1),
            )
            .await
        },
    )
    .await;
}
