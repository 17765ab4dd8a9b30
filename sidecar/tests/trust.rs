//! Peer trust: nobody without the cluster's passphrase or CA gets in, and
//! nothing a stranger sends does more than bump a counter and, at most once
//! a minute per source, a log line.
//!
//! Each test starts real agents and one stranger: an agent with another
//! passphrase, an agent whose certificate comes from another CA, or a plain
//! UDP socket sending garbage to the QUIC port. `trust/swim_source.rs`
//! holds a peer with a valid certificate to the id it was issued to.

mod common;
#[path = "trust/swim_source.rs"]
mod swim_source;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::{eventually, metric_value, wait_alive, AgentProc, Spec};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

const CONVERGE: Duration = Duration::from_secs(20);
const HANDSHAKE_FAILURES: &str = "gossamer_handshake_failures_total";
const DECODE_ERRORS: &str = "gossamer_decode_errors_total";

/// The agent's log without ANSI colour codes, one entry per line.
fn plain_log(agent: &AgentProc) -> Vec<String> {
    let raw = agent.log();
    let mut out = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI sequence: ESC [ ... final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out.lines().map(str::to_owned).collect()
}

/// Log lines of `agent` that contain every one of `needles`.
fn log_lines_with(agent: &AgentProc, needles: &[&str]) -> Vec<String> {
    plain_log(agent)
        .into_iter()
        .filter(|line| needles.iter().all(|n| line.contains(n)))
        .collect()
}

async fn counter(agent: &AgentProc, name: &str) -> f64 {
    metric_value(&agent.metrics_text().await, name, &[])
}

/// Waits until `agent`'s counter `name` reaches `at_least`, and returns it.
async fn counter_reaches(agent: &AgentProc, name: &str, at_least: f64) -> f64 {
    eventually(
        &format!("{} to count {name} >= {at_least}", agent.node_id()),
        CONVERGE,
        || async move {
            let value = counter(agent, name).await;
            (value >= at_least).then_some(value)
        },
    )
    .await
}

#[tokio::test]
async fn a_peer_with_another_passphrase_is_refused_counted_and_logged_once_a_minute() {
    let seed = AgentProc::start(Spec::new("pass-seed").with_metrics()).await;
    let member = AgentProc::start(Spec::new("pass-member").join(&seed).with_metrics()).await;
    let intruder = AgentProc::start(
        Spec::new("pass-intruder")
            .psk("another-cluster-passphrase")
            .join(&seed)
            .with_metrics(),
    )
    .await;
    wait_alive(&[&seed, &member], &["pass-member", "pass-seed"], CONVERGE).await;

    // The intruder retries its join with backoff: several refused handshakes.
    let failures = counter_reaches(&seed, HANDSHAKE_FAILURES, 3.0).await;
    counter_reaches(&intruder, HANDSHAKE_FAILURES, 1.0).await;
    let peer = format!("peer={}", intruder.listeners.quic);
    let lines = log_lines_with(&seed, &["QUIC handshake failed", &peer]);
    assert_eq!(
        lines.len(),
        1,
        "{failures} failures from the intruder should be logged once: {lines:#?}"
    );
    // The member agrees on the cluster, and nobody lists the intruder.
    for agent in [&seed, &member] {
        let nodes = agent.client().nodes().await.expect("nodes");
        assert!(
            nodes.iter().all(|n| n.id != "pass-intruder"),
            "{} lists the intruder: {nodes:?}",
            agent.node_id()
        );
    }
    let nodes = intruder.client().nodes().await.expect("nodes");
    assert_eq!(nodes.len(), 1, "the intruder sees only itself: {nodes:?}");
    // Refused handshakes are not mistaken for garbage datagrams.
    assert_eq!(counter(&seed, DECODE_ERRORS).await, 0.0);
}

/// A CA with its certificate in PEM, able to sign node certificates.
struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-signed CA");
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Writes `<node>.crt` and `<node>.key` signed by this CA into `dir`.
    fn issue(&self, node: &str, dir: &Path) -> (String, String) {
        let key = KeyPair::generate().expect("node key");
        let mut params =
            CertificateParams::new(vec!["gossamer.mesh".to_owned()]).expect("node params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node);
        params.distinguished_name = dn;
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("signed node cert");
        let cert_path = dir.join(format!("{node}.crt"));
        let key_path = dir.join(format!("{node}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (
            cert_path.display().to_string(),
            key_path.display().to_string(),
        )
    }

    /// Writes `<file>.crt`/`<file>.key` bound to node `id` by the URI SAN
    /// `spiffe://gossamer/node/<id>`.
    fn issue_bound(&self, file: &str, id: &str, dir: &Path) -> (String, String) {
        let key = KeyPair::generate().expect("node key");
        let mut params =
            CertificateParams::new(vec!["gossamer.mesh".to_owned()]).expect("node params");
        params.subject_alt_names.push(rcgen::SanType::URI(
            format!("spiffe://gossamer/node/{id}")
                .try_into()
                .expect("URI SAN"),
        ));
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("signed node cert");
        let cert_path = dir.join(format!("{file}.crt"));
        let key_path = dir.join(format!("{file}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (
            cert_path.display().to_string(),
            key_path.display().to_string(),
        )
    }

    fn write(&self, dir: &Path, name: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, &self.pem).expect("write CA");
        path.display().to_string()
    }
}

fn operator_spec(name: &str, ca: &str, (cert, key): (String, String)) -> Spec {
    Spec::new(name)
        .with_metrics()
        .arg("--tls-ca")
        .arg(ca)
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
}

#[tokio::test]
async fn a_peer_with_a_certificate_from_another_ca_is_refused_counted_and_logged_once_a_minute() {
    let dir = std::env::temp_dir().join(format!(
        "gossamer-test-ca-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("cert dir");
    let cluster_ca = TestCa::new("operator cluster CA");
    let rogue_ca = TestCa::new("rogue CA");
    let ca_pem = cluster_ca.write(&dir, "cluster-ca.crt");

    let a = AgentProc::start(operator_spec(
        "ca-a",
        &ca_pem,
        cluster_ca.issue("ca-a", &dir),
    ))
    .await;
    let b =
        AgentProc::start(operator_spec("ca-b", &ca_pem, cluster_ca.issue("ca-b", &dir)).join(&a))
            .await;
    // The operator's CA works: the two members find each other.
    wait_alive(&[&a, &b], &["ca-a", "ca-b"], CONVERGE).await;

    // The rogue trusts the cluster CA (its certificate is public), but its
    // own certificate comes from another CA.
    let rogue = AgentProc::start(
        operator_spec("ca-rogue", &ca_pem, rogue_ca.issue("ca-rogue", &dir)).join(&a),
    )
    .await;
    let failures = counter_reaches(&a, HANDSHAKE_FAILURES, 3.0).await;
    counter_reaches(&rogue, HANDSHAKE_FAILURES, 1.0).await;
    let peer = format!("peer={}", rogue.listeners.quic);
    let lines = log_lines_with(&a, &["QUIC handshake failed", &peer]);
    assert_eq!(
        lines.len(),
        1,
        "{failures} failures from the rogue should be logged once: {lines:#?}"
    );
    for agent in [&a, &b] {
        let nodes = agent.client().nodes().await.expect("nodes");
        assert!(
            nodes.iter().all(|n| n.id != "ca-rogue"),
            "{} lists the rogue: {nodes:?}",
            agent.node_id()
        );
    }
    let nodes = rogue.client().nodes().await.expect("nodes");
    assert_eq!(nodes.len(), 1, "the rogue sees only itself: {nodes:?}");
    assert_eq!(counter(&a, DECODE_ERRORS).await, 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Datagrams of many shapes, none of them QUIC for the receiver.
fn garbage() -> Vec<Vec<u8>> {
    let mut datagrams = vec![
        Vec::new(),
        b"x".to_vec(),
        b"GET / HTTP/1.1\r\nHost: gossamer\r\n\r\n".to_vec(),
        vec![0u8; 64],
        vec![0xff; 1300],
        // A long header with QUIC v1 but a connection id nobody issued.
        [&[0xe0, 0, 0, 0, 1, 8][..], &[0x5a; 8], &[0u8; 80]].concat(),
        // An Initial too short to start a connection.
        [&[0xc0, 0, 0, 0, 1, 8][..], &[0x33; 8], &[0u8; 200]].concat(),
    ];
    // Random bytes, seeded so a failure can be replayed.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for len in [1usize, 9, 21, 100, 600, 1200, 1400] {
        let bytes = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        datagrams.push(bytes);
    }
    datagrams
}

#[tokio::test]
async fn garbage_datagrams_to_the_quic_port_are_counted_logged_once_per_source_and_harmless() {
    let a = AgentProc::start(Spec::new("junk-a").with_metrics()).await;
    let b = AgentProc::start(Spec::new("junk-b").join(&a).with_metrics()).await;
    wait_alive(&[&a, &b], &["junk-a", "junk-b"], CONVERGE).await;
    // Real traffic (handshakes, SWIM, RTT pings, anti-entropy) is never counted.

    assert_eq!(counter(&a, DECODE_ERRORS).await, 0.0);
    assert_eq!(counter(&b, DECODE_ERRORS).await, 0.0);

    let junk = garbage();
    let rounds = 3;
    let sources: Vec<std::net::UdpSocket> = (0..2)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind"))
        .collect();
    for _ in 0..rounds {
        for socket in &sources {
            for datagram in &junk {
                socket
                    .send_to(datagram, a.listeners.quic)
                    .expect("send garbage");
            }
        }
    }
    let sent = (rounds * sources.len() * junk.len()) as f64;
    let counted = counter_reaches(&a, DECODE_ERRORS, sent).await;
    assert_eq!(counted, sent, "every garbage datagram counted once");

    // Logged once per source, though each sent dozens.
    for socket in &sources {
        let source: SocketAddr = socket.local_addr().expect("addr");
        let lines = log_lines_with(&a, &["not QUIC", &format!("source={source}")]);
        assert_eq!(lines.len(), 1, "{source}: {lines:#?}");
    }

    // Nothing else happened: both agents still agree, and gossip still works.
    wait_alive(&[&a, &b], &["junk-a", "junk-b"], CONVERGE).await;
    let health = a.client().health().await.expect("health");
    assert!(health.ready);
    assert_eq!(health.members.alive, 2);
    assert_eq!(counter(&b, DECODE_ERRORS).await, 0.0);
    let log = plain_log(&a).join("\n");
    assert!(!log.contains("panicked"), "{log}");
}

// === SWIM packets from a peer ===

type Swim = foca::Foca<
    mesh_proto::NodeIdentity,
    foca::PostcardCodec,
    rand::rngs::SmallRng,
    foca::NoCustomBroadcast,
>;

fn swim_node(name: &str, port: u16) -> Swim {
    use rand::SeedableRng;
    let identity = mesh_proto::NodeIdentity {
        node_id: mesh_proto::NodeId::new(name).expect("valid id"),
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        generation: 1,
    };
    foca::Foca::new(
        identity,
        sidecar::membership::foca_config(sidecar::config::Profile::Local, 3),
        rand::rngs::SmallRng::seed_from_u64(u64::from(port)),
        foca::PostcardCodec,
    )
}

/// Real SWIM packets as an agent's foca sends them: announces, the feeds
/// (member lists) that answer them, and whatever follows, delivered
/// between three nodes until they fall quiet.
fn real_swim_packets() -> Vec<Vec<u8>> {
    let mut nodes = [
        swim_node("swim-a", 1),
        swim_node("swim-b", 2),
        swim_node("swim-c", 3),
    ];
    let mut runtime = foca::AccumulatingRuntime::new();
    let b = nodes[1].identity().clone();
    nodes[2]
        .announce(b.clone(), &mut runtime)
        .expect("announce");
    nodes[0].announce(b, &mut runtime).expect("announce");
    let mut packets = Vec::new();
    while let Some((to, packet)) = runtime.to_send() {
        packets.push(packet.to_vec());
        if packets.len() > 50 {
            break;
        }
        let node = nodes
            .iter_mut()
            .find(|n| n.identity().node_id == to.node_id)
            .expect("addressed to one of the three");
        node.handle_data(&packet, &mut runtime)
            .expect("real packets are accepted");
    }
    assert!(packets.len() >= 4, "announces and feeds: {}", packets.len());
    packets
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// foca decodes SWIM packets with our identity type: random bytes, cut
    /// and bit-flipped real packets end in an error or a harmless update,
    /// never a panic.
    #[test]
    fn swim_packets_of_any_shape_never_panic_the_decoder(
        random in vec(any::<u8>(), 0..1200),
        which in any::<Index>(),
        cut in any::<Index>(),
        flips in vec((any::<Index>(), 0u8..8), 1..6),
    ) {
        let packets = real_swim_packets();
        let packet = which.get(&packets);
        let mut runtime = foca::AccumulatingRuntime::new();
        let mut receiver = swim_node("swim-receiver", 9);
        let _ = receiver.handle_data(&random, &mut runtime);
        // A prefix may still be a valid, shorter packet (foca lists members
        // up to the end of the buffer): only a panic would be wrong.
        let len = cut.index(packet.len());
        let _ = receiver.handle_data(&packet[..len], &mut runtime);
        let mut flipped = packet.clone();
        for (at, bit) in flips {
            let i = at.index(flipped.len());
            flipped[i] ^= 1 << bit;
        }
        let _ = receiver.handle_data(&flipped, &mut runtime);
        // Whole packets still work after all that: the same receiver takes
        // a real announce addressed to it, lists the sender, and answers it.
        let mut sender = swim_node("swim-sender", 11);
        let mut outbox = foca::AccumulatingRuntime::new();
        sender
            .announce(receiver.identity().clone(), &mut outbox)
            .expect("announce");
        let (to, announce) = outbox.to_send().expect("the sender sends its announce");
        prop_assert_eq!(&to.node_id, &receiver.identity().node_id);
        let mut replies = foca::AccumulatingRuntime::new();
        prop_assert!(
            receiver.handle_data(&announce, &mut replies).is_ok(),
            "a whole announce was refused after the garbage"
        );
        let sender_id = sender.identity().node_id.clone();
        prop_assert!(
            receiver.iter_members().any(|m| m.id().node_id == sender_id),
            "the receiver does not list the sender after its announce"
        );
        let mut answered = false;
        while let Some((to, _)) = replies.to_send() {
            answered |= to.node_id == sender_id;
        }
        prop_assert!(answered, "the receiver did not answer the announce");
    }
}

// === records of another node ===

/// One anti-entropy exchange with `agent` as a peer holding the passphrase:
/// an empty digest, then `push` as the final message.
async fn push_records(
    transport: &std::sync::Arc<sidecar::transport::Transport>,
    agent: &AgentProc,
    push: Vec<mesh_proto::Record>,
) {
    use mesh_proto::gossip::{StreamKind, SyncMessage};
    let frame = |message: &SyncMessage| {
        let bytes = mesh_proto::codec::encode(message).expect("encode");
        let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&bytes);
        out
    };
    let (mut send, mut recv, _conn, _lease) = transport
        .open_stream(agent.listeners.quic, StreamKind::Sync)
        .await
        .expect("open sync stream");
    send.write_all(&frame(&SyncMessage::Digest(Vec::new())))
        .await
        .expect("write digest");
    // The agent's answer (its records) comes before it reads the push.
    let mut len = [0u8; 4];
    tokio::time::timeout(CONVERGE, recv.read_exact(&mut len))
        .await
        .expect("answer in time")
        .expect("answer length");
    let mut answer = vec![0u8; u32::from_be_bytes(len) as usize];
    recv.read_exact(&mut answer).await.expect("answer body");
    send.write_all(&frame(&SyncMessage::Push(push)))
        .await
        .expect("write push");
    let _ = send.finish();
    let _ = tokio::time::timeout(CONVERGE, recv.read_to_end(1 << 20)).await;
}

#[tokio::test]
async fn a_peer_cannot_write_or_delete_another_nodes_instances() {
    use mesh_proto::{Health, Hlc, Instance, NodeId, Record, RecordBody, RecordKey, Version};

    let (port, _echo) = common::echo_service("echo@own-b").await;
    let a = AgentProc::start(Spec::new("own-a")).await;
    let b = AgentProc::start(
        Spec::new("own-b")
            .join(&a)
            .arg("--service")
            .arg(format!("echo={port}")),
    )
    .await;
    wait_alive(&[&a, &b], &["own-a", "own-b"], CONVERGE).await;
    let ids = |agent: &AgentProc| {
        let client = agent.client();
        async move {
            let view = client.instances("echo", &Default::default()).await.ok()?;
            let mut ids: Vec<String> = view
                .eligible
                .iter()
                .chain(view.ineligible.iter())
                .map(|i| i.instance.id.clone())
                .collect();
            ids.sort();
            Some(ids)
        }
    };
    let real = eventually("a to list b's instance", CONVERGE, || async {
        ids(&a).await.filter(|ids| ids.len() == 1)
    })
    .await;

    // A peer with the passphrase, but not b, pushes records in b's name:
    // a new instance on b, and the deletion of b's real one. A definition,
    // which any node may write, rides along to show the push is applied.
    let forger = NodeId::new("forger").expect("id");
    let version = Version {
        hlc: Hlc {
            wall_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_millis() as u64,
            logical: 0,
        },
        writer: forger,
    };
    let stolen = Record {
        key: RecordKey::Instance("echo-stolen".to_owned()),
        version: version.clone(),
        body: RecordBody::Instance(Instance {
            id: "echo-stolen".to_owned(),
            service: "echo".to_owned(),
            node: NodeId::new("own-b").expect("id"),
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            deployment_id: None,
            tags: Vec::new(),
            health: Health::Passing,
        }),
    };
    let delete = Record {
        key: RecordKey::Instance(real[0].clone()),
        version: version.clone(),
        body: RecordBody::Tombstone,
    };
    let definition: mesh_proto::Definition =
        serde_json::from_value(serde_json::json!({"name": "pushed", "version": "1"}))
            .expect("definition");
    let allowed = Record {
        key: RecordKey::Definition("pushed".to_owned()),
        version,
        body: RecordBody::Definition(definition),
    };
    let transport = common::peer_transport(common::PSK, "forger");
    push_records(&transport, &a, vec![stolen, delete, allowed]).await;

    eventually("a to apply the definition pushed", CONVERGE, || async {
        a.client().definition("pushed").await.ok()
    })
    .await;
    let refused = log_lines_with(&a, &["refused a record"]);
    assert_eq!(refused.len(), 2, "{refused:#?}");
    for agent in [&a, &b] {
        assert_eq!(
            ids(agent).await.expect("instances"),
            real,
            "{} changed b's instances on a stranger's word",
            agent.node_id()
        );
    }
}

#[tokio::test]
async fn an_anti_entropy_message_over_the_limit_is_refused_before_it_is_read() {
    use mesh_proto::gossip::{StreamKind, MAX_SYNC_MESSAGE};
    let agent = AgentProc::start(Spec::new("sync-limit").with_metrics()).await;
    let before = counter(&agent, DECODE_ERRORS).await;
    let transport = common::peer_transport(common::PSK, "sync-liar");
    let (mut send, mut recv, _conn, _lease) = transport
        .open_stream(agent.listeners.quic, StreamKind::Sync)
        .await
        .expect("open sync stream");
    // A length one byte over the limit, and a little of the promised body:
    // the agent must refuse on the length, not wait for (or allocate) 16 MiB.
    let claimed = u32::try_from(MAX_SYNC_MESSAGE + 1).expect("fits u32");
    send.write_all(&claimed.to_be_bytes())
        .await
        .expect("write length");
    let _ = send.write_all(&[0u8; 1024]).await;
    let ended = tokio::time::timeout(CONVERGE, recv.read_to_end(1 << 20)).await;
    assert!(
        ended.is_ok(),
        "the agent kept the stream open, waiting for the body"
    );
    let after = counter_reaches(&agent, DECODE_ERRORS, before + 1.0).await;
    assert_eq!(after, before + 1.0);
    // The counter moves before the error reaches the log line written as
    // the stream ends: wait for the line rather than read the log once.
    common::eventually(
        "a log line about the refused catalog message",
        CONVERGE,
        || {
            let logged = !log_lines_with(&agent, &["catalog message", "limit"]).is_empty();
            async move { logged.then_some(()) }
        },
    )
    .await;
    // And the agent still serves.
    assert!(agent.client().health().await.expect("health").ready);
}

#[tokio::test]
async fn a_node_cannot_run_under_another_nodes_id_with_that_nodes_certificate() {
    let dir = std::env::temp_dir().join(format!(
        "gossamer-test-bound-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("cert dir");
    let ca = TestCa::new("operator CA binding ids");
    let ca_pem = ca.write(&dir, "ca.crt");

    // Certificates bound to their nodes' ids: the mesh forms as usual (each
    // join checks the seed's hello against the seed's certificate).
    let a_cert = ca.issue_bound("bind-a", "bind-a", &dir);
    let a = AgentProc::start(operator_spec("bind-a", &ca_pem, a_cert.clone())).await;
    let b = AgentProc::start(
        operator_spec("bind-b", &ca_pem, ca.issue_bound("bind-b", "bind-b", &dir)).join(&a),
    )
    .await;
    wait_alive(&[&a, &b], &["bind-a", "bind-b"], CONVERGE).await;

    // bind-a's certificate presented as bind-c: refused, and told why.
    let mut child = common::gossamer()
        .args(["agent", "--node-id", "bind-c", "--profile", "local"])
        .args(["--psk", "unused-with-an-operator-ca"])
        .args([
            "--tls-ca",
            &ca_pem,
            "--tls-cert",
            &a_cert.0,
            "--tls-key",
            &a_cert.1,
        ])
        .args(["--bind", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args([
            "--proxy-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--dns-listen",
            "off",
            "--join",
            &a.listeners.quic.to_string(),
        ])
        .arg("--data-dir")
        .arg(dir.join("bind-c-data"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start bind-c");
    let exited = eventually("bind-c to stop", Duration::from_secs(30), || {
        let status = child.try_wait().ok().flatten();
        async move { status }
    })
    .await;
    let _ = child.kill();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    assert!(
        !exited.success(),
        "bind-c started with bind-a's certificate"
    );
    assert!(
        stderr.contains("issued to node \"bind-a\"") && stderr.contains("\"bind-c\""),
        "{stderr}"
    );
    // And nobody lists it.
    let nodes = a.client().nodes().await.expect("nodes");
    assert!(nodes.iter().all(|n| n.id != "bind-c"), "{nodes:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
