//! Dispatch of the bidirectional streams peers open, by kind.

use std::sync::Arc;
use std::time::Duration;

use mesh_proto::codec;
use mesh_proto::gossip::{MemberSummary, StreamKind, MAX_MEMBER_SUMMARY_MESSAGE};
use mesh_proto::NodeIdentity;
use tokio::sync::mpsc;
use tracing::debug;

use crate::catalog::CatalogStore;
use crate::membership::Membership;
use crate::proxy::ProxyHandles;
use crate::transport::InboundStream;
use crate::{proxy, sync};

/// What inbound streams are served with.
pub struct StreamHandles {
    /// Answered to Hello.
    pub identity: NodeIdentity,
    /// Anti-entropy partner.
    pub catalog: Arc<CatalogStore>,
    /// Proxied requests.
    pub proxy: Arc<ProxyHandles>,
    /// Answers a joiner's pull of the member list.
    pub membership: Membership,
}

/// Hands every inbound stream that arrives through the channel (before
/// [`crate::transport::Transport::serve_streams_with`] took over) to
/// [`serve`], each on its own task.
pub async fn dispatch(agent: Arc<StreamHandles>, mut streams: mpsc::Receiver<InboundStream>) {
    while let Some(stream) = streams.recv().await {
        tokio::spawn(serve(agent.clone(), stream));
    }
}

/// Serves one inbound stream by its kind.
pub async fn serve(agent: Arc<StreamHandles>, stream: InboundStream) {
    let peer = stream.connection.remote_address();
    let result = match stream.kind {
        StreamKind::Hello => answer_hello(&agent, stream).await,
        StreamKind::Members => answer_members(&agent, stream).await,
        StreamKind::Sync => sync::answer(&agent.catalog, stream).await,
        StreamKind::Proxy => proxy::inbound::serve_stream(&agent.proxy, stream).await,
        StreamKind::Tcp => proxy::tcp::serve_stream(&agent.proxy, stream).await,
        StreamKind::Swim => Ok(()),
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "inbound stream failed");
    }
}

async fn answer_hello(agent: &StreamHandles, mut stream: InboundStream) -> anyhow::Result<()> {
    let bytes = codec::encode(&agent.identity)?;
    stream.send.write_all(&bytes).await?;
    stream.send.finish()?;
    Ok(())
}

async fn answer_members(agent: &StreamHandles, mut stream: InboundStream) -> anyhow::Result<()> {
    // A joiner sends nothing (it wants every member); a periodic pull sends
    // its summary first (an empty answer when ours is the same).
    let request = tokio::time::timeout(
        Duration::from_secs(5),
        stream.recv.read_to_end(MAX_MEMBER_SUMMARY_MESSAGE),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the member pull request did not end"))??;
    let theirs = if request.is_empty() {
        None
    } else {
        Some(codec::decode::<MemberSummary>(
            &request,
            MAX_MEMBER_SUMMARY_MESSAGE,
        )?)
    };
    let bytes = codec::encode(&agent.membership.known(theirs).await)?;
    stream.send.write_all(&bytes).await?;
    stream.send.finish()?;
    // Keep the stream until the joiner has read the list.
    let _ = stream.send.stopped().await;
    Ok(())
}
