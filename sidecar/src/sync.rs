//! Anti-entropy: every few seconds a push-pull of the catalog with a random
//! active peer, so whatever a broadcast missed (a late joiner, a healed
//! partition) is repaired. The exchange sends a digest first and then only
//! the records each side lacks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use mesh_proto::catalog::DigestSummary;
use mesh_proto::codec;
use mesh_proto::gossip::{StreamKind, SyncMessage, MAX_SYNC_MESSAGE};
use quinn::{RecvStream, SendStream};
use rand::seq::IteratorRandom;
use rand::RngExt;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::catalog::CatalogStore;
use crate::core::anti_entropy::Step;
use crate::membership::ActiveMembers;
use crate::metrics;
use crate::persist::DataDir;
use crate::transport::{InboundStream, Transport};

/// Tombstones are kept this long so late copies cannot resurrect a delete.
pub const TOMBSTONE_TTL_MS: u64 = 24 * 60 * 60 * 1000;

/// What anti-entropy rounds use.
#[derive(Clone)]
pub struct AntiEntropy {
    /// The catalog to repair.
    pub catalog: Arc<CatalogStore>,
    /// Streams to peers.
    pub transport: Arc<Transport>,
    /// Partners to pick from.
    pub members: watch::Receiver<ActiveMembers>,
    /// Time between rounds.
    pub interval: Duration,
}

/// The periodic push-pull loop.
pub async fn run(agent: AntiEntropy) {
    let mut tick = tokio::time::interval(agent.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rounds = 0u64;
    loop {
        tick.tick().await;
        rounds += 1;
        let peer = choose_partner(&agent.transport, &agent.members);
        if let Some(peer) = peer {
            // Every so often a whole digest regardless of the summaries: a
            // backstop against a hash collision hiding a difference.
            let full = rounds.is_multiple_of(FULL_DIGEST_EVERY);
            sync_with(&agent, peer, full).await;
        }
        if rounds.is_multiple_of(60) {
            agent.catalog.expire_tombstones(TOMBSTONE_TTL_MS);
        }
    }
}

/// Rounds between two that send the whole digest without comparing
/// summaries first.
const FULL_DIGEST_EVERY: u64 = 64;

/// All rounds but one in [`FRESH_PARTNER_EVERY`] go to a peer we already
/// hold a connection to; the others go to any member.
///
/// A random member every round dials a new connection every round (a QUIC
/// handshake each, and a connection that lingers until idle): per node that
/// grows with nothing, but across a cluster on one machine it is thousands
/// of handshakes. Partners already connected cost nothing, and the fresh
/// one every few rounds keeps the exchange graph random, which is what
/// makes anti-entropy converge in a logarithmic number of rounds.
const FRESH_PARTNER_EVERY: u32 = 16;

pub fn choose_partner(
    transport: &Transport,
    members: &watch::Receiver<ActiveMembers>,
) -> Option<SocketAddr> {
    let mut rng = rand::rng();
    let members = members.borrow();
    if rng.random_ratio(FRESH_PARTNER_EVERY - 1, FRESH_PARTNER_EVERY) {
        let connected = transport
            .live()
            .into_iter()
            .map(|(addr, _)| addr)
            .filter(|addr| members.values().any(|m| m.addr == *addr))
            .choose(&mut rng);
        if connected.is_some() {
            return connected;
        }
    }
    members.values().map(|m| m.addr).choose(&mut rng)
}

/// One push-pull round with `peer`; failures are logged and left to the next round.
pub async fn sync_with(agent: &AntiEntropy, peer: SocketAddr, full: bool) {
    let result = tokio::time::timeout(Duration::from_secs(10), initiate(agent, peer, full)).await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(%peer, error = %e, "anti-entropy round failed"),
        Err(_) => debug!(%peer, "anti-entropy round timed out"),
    }
}

async fn initiate(agent: &AntiEntropy, peer: SocketAddr, full: bool) -> anyhow::Result<()> {
    let (mut send, mut recv, _, _lease) =
        agent.transport.open_stream(peer, StreamKind::Sync).await?;
    if !full {
        let ours = agent.catalog.summary();
        write_message(&mut send, &SyncMessage::Summary(ours)).await?;
        match read_message(&mut recv).await? {
            SyncMessage::Summary(theirs) if theirs == ours => {
                send.finish()?;
                return Ok(());
            }
            SyncMessage::Summary(_) => {}
            _ => bail!("peer answered a summary with something else"),
        }
    }
    write_message(&mut send, &agent.catalog.open_exchange()).await?;
    let reply = read_message(&mut recv).await?;
    if !matches!(reply, SyncMessage::Records { .. }) {
        bail!("peer answered a digest with something else");
    }
    let step = agent.catalog.exchange(reply);
    log_refused(&step);
    if let Some(push) = step.reply {
        write_message(&mut send, &push).await?;
    }
    send.finish()?;
    Ok(())
}

/// Answers a push-pull round a peer started.
pub async fn answer(catalog: &CatalogStore, mut stream: InboundStream) -> anyhow::Result<()> {
    let mut digest = read_message(&mut stream.recv).await?;
    if let SyncMessage::Summary(theirs) = digest {
        let ours = catalog.summary();
        write_message(&mut stream.send, &SyncMessage::Summary(ours)).await?;
        if ours == theirs {
            stream.send.finish()?;
            // Keep the stream until the partner has read the answer.
            let _ = stream.send.stopped().await;
            return Ok(());
        }
        digest = read_message(&mut stream.recv).await?;
    }
    if !matches!(digest, SyncMessage::Digest(_)) {
        bail!("sync stream did not start with a digest");
    }
    let step = catalog.exchange(digest);
    if let Some(records) = step.reply {
        write_message(&mut stream.send, &records).await?;
    }
    let push = read_message(&mut stream.recv).await?;
    if matches!(push, SyncMessage::Push(_)) {
        log_refused(&catalog.exchange(push));
    }
    stream.send.finish()?;
    Ok(())
}

fn log_refused(step: &Step) {
    for reason in &step.refused {
        warn!(%reason, "refused a record from anti-entropy");
    }
}

async fn write_message(send: &mut SendStream, message: &SyncMessage) -> anyhow::Result<()> {
    let bytes = codec::encode(message)?;
    if bytes.len() > MAX_SYNC_MESSAGE {
        bail!(
            "catalog message of {} bytes exceeds {MAX_SYNC_MESSAGE}",
            bytes.len()
        );
    }
    send.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    send.write_all(&bytes).await?;
    Ok(())
}

async fn read_message(recv: &mut RecvStream) -> anyhow::Result<SyncMessage> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_SYNC_MESSAGE {
        metrics::decode_error();
        bail!("peer announced a {len}-byte catalog message; the limit is {MAX_SYNC_MESSAGE}");
    }
    let mut bytes = vec![0u8; len];
    recv.read_exact(&mut bytes).await?;
    codec::decode(&bytes, MAX_SYNC_MESSAGE).map_err(|e| {
        metrics::decode_error();
        anyhow!("undecodable catalog message: {e}")
    })
}

/// Saves a catalog snapshot whenever the catalog changed, at most every 2 s.
/// The records are copied out under the catalog's lock (memory only); the
/// encoding and the fsync run on the blocking pool, so a slow disk delays
/// the next snapshot and nothing else.
pub async fn persist_loop(catalog: Arc<CatalogStore>, data: DataDir) {
    // Compared by the records' summary, not the catalog's index: the index
    // also moves when only membership changed what the catalog shows, and
    // while a large cluster forms that re-wrote an unchanged snapshot every
    // 2 s on every agent.
    let mut saved = DigestSummary::default();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        if catalog.summary() == saved {
            continue;
        }
        match save_snapshot(&catalog, &data).await {
            Ok(summary) => saved = summary,
            Err(e) => warn!(error = %e, "cannot save the catalog snapshot; will retry"),
        }
    }
}

/// Saves one catalog snapshot now, on the blocking pool; returns the
/// summary of what it holds. The records are taken once no other save runs,
/// so a save that returns holds every write applied before it was called.
pub async fn save_snapshot(
    catalog: &Arc<CatalogStore>,
    data: &DataDir,
) -> anyhow::Result<DigestSummary> {
    let catalog = catalog.clone();
    let data = data.clone();
    tokio::task::spawn_blocking(move || data.save_snapshot(|| catalog.records()))
        .await
        .map_err(|e| anyhow!("the snapshot task failed: {e}"))?
}
