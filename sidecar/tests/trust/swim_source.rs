//! A SWIM packet is held to the certificate of the connection it came on:
//! a peer with a valid certificate for node "mallory" cannot gossip as
//! another node (issue 22).

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_proto::gossip::StreamKind;
use mesh_proto::{NodeId, NodeIdentity};
use sidecar::transport::Transport;

use super::{log_lines_with, CONVERGE};
use crate::common::{self, eventually, metric_value, wait_alive, AgentProc, Spec};

const REFUSED: &str = "gossamer_swim_packets_refused_total";

async fn refused(agent: &AgentProc) -> f64 {
    metric_value(
        &agent.metrics_text().await,
        REFUSED,
        &[("reason", "impersonation")],
    )
}

/// The announce a node with identity `src` sends to join through `dst`,
/// exactly as an agent's foca encodes and frames it.
fn announce(src: NodeIdentity, dst: NodeIdentity) -> Vec<u8> {
    use rand::SeedableRng;
    let mut foca: foca::Foca<_, _, _, foca::NoCustomBroadcast> = foca::Foca::new(
        src,
        sidecar::membership::foca_config(sidecar::config::Profile::Local, 3),
        rand::rngs::SmallRng::seed_from_u64(22),
        foca::PostcardCodec,
    );
    let mut runtime = foca::AccumulatingRuntime::new();
    foca.announce(dst, &mut runtime).expect("announce");
    let (_, packet) = runtime.to_send().expect("foca sends its announce");
    sidecar::membership::swim_frame::join(&packet, None)
}

/// Sends `packet` as a SWIM packet on a unidirectional stream: reliable,
/// unlike a datagram, so every packet sent is one the agent handles.
async fn send_on_stream(peer: &Arc<Transport>, to: SocketAddr, packet: &[u8]) {
    let connection = peer.connection(to).await.expect("connect");
    let mut stream = connection.open_uni().await.expect("open a stream");
    stream
        .write_all(&[StreamKind::Swim as u8])
        .await
        .expect("write kind");
    stream.write_all(packet).await.expect("write packet");
    stream.finish().expect("finish");
}

fn node(id: &str, addr: SocketAddr, generation: u64) -> NodeIdentity {
    NodeIdentity {
        node_id: NodeId::new(id).expect("valid id"),
        addr,
        generation,
    }
}

#[tokio::test]
async fn a_peer_cannot_gossip_under_another_nodes_id_and_is_counted_and_logged_once() {
    let host = AgentProc::start(Spec::new("swim-host").with_metrics()).await;
    let victim = AgentProc::start(Spec::new("swim-victim").join(&host)).await;
    wait_alive(&[&host, &victim], &["swim-host", "swim-victim"], CONVERGE).await;
    assert_eq!(refused(&host).await, 0.0, "real members were refused");
    let real = host
        .client()
        .nodes()
        .await
        .expect("nodes")
        .into_iter()
        .find(|n| n.id == "swim-victim")
        .expect("the host lists the victim");

    // Mallory holds the passphrase, so a valid certificate issued to
    // "mallory", and speaks SWIM with foca as an agent does.
    let mallory = common::peer_transport(common::PSK, "mallory");
    let mallory_addr = mallory.local_addr().expect("mallory's address");
    let to = host.listeners.quic;
    let host_identity = sidecar::join::hello(&mallory, to).await.expect("hello");

    // A made-up node, and the real victim at mallory's address with a newer
    // generation: taken, that would replace the victim's entry (checked by
    // hand with the check disabled: the host listed the ghost and the
    // victim's forged generation).
    let ghost = announce(node("ghost", mallory_addr, 1), host_identity.clone());
    let hijack = announce(
        node("swim-victim", mallory_addr, real.generation + 1000),
        host_identity.clone(),
    );
    send_on_stream(&mallory, to, &ghost).await;
    send_on_stream(&mallory, to, &hijack).await;
    let counted = eventually("the host to refuse both packets", CONVERGE, || async {
        let n = refused(&host).await;
        (n >= 2.0).then_some(n)
    })
    .await;
    assert_eq!(counted, 2.0, "each refused packet is counted once");
    // The datagram path is checked too.
    eventually("a datagram to be refused as well", CONVERGE, || async {
        mallory.send_swim(to, &ghost).await.expect("send datagram");
        (refused(&host).await >= 3.0).then_some(())
    })
    .await;

    let nodes = host.client().nodes().await.expect("nodes");
    assert!(nodes.iter().all(|n| n.id != "ghost"), "{nodes:#?}");
    let victim_now = nodes
        .iter()
        .find(|n| n.id == "swim-victim")
        .expect("the host still lists the victim");
    assert_eq!(
        (&victim_now.address, victim_now.generation),
        (&real.address, real.generation),
        "the victim was moved on mallory's word"
    );
    let lines = log_lines_with(
        &host,
        &["refused SWIM packets", "issued to node \"mallory\""],
    );
    assert_eq!(lines.len(), 1, "logged once per certificate: {lines:#?}");
    assert!(lines[0].contains(&mallory_addr.to_string()), "{}", lines[0]);

    // The control: the same peer, the same kind of packet, under its own
    // id, is taken (so the refusals above are the check's doing).
    let own = announce(node("mallory", mallory_addr, 1), host_identity);
    send_on_stream(&mallory, to, &own).await;
    eventually("the host to list mallory", CONVERGE, || async {
        let nodes = host.client().nodes().await.ok()?;
        nodes.iter().any(|n| n.id == "mallory").then_some(())
    })
    .await;
    let nodes = host.client().nodes().await.expect("nodes");
    assert!(nodes.iter().all(|n| n.id != "ghost"), "{nodes:#?}");
}
