//! Dispatch of the bidirectional streams peers open, by kind.

use std::sync::Arc;

use mesh_proto::codec;
use mesh_proto::gossip::StreamKind;
use tokio::sync::mpsc;
use tracing::debug;

use crate::agent::Agent;
use crate::transport::InboundStream;
use crate::{proxy, sync};

/// Hands every inbound stream to its handler, each on its own task.
pub async fn dispatch(agent: Arc<Agent>, mut streams: mpsc::Receiver<InboundStream>) {
    while let Some(stream) = streams.recv().await {
        let agent = agent.clone();
        tokio::spawn(async move {
            let peer = stream.connection.remote_address();
            let result = match stream.kind {
                StreamKind::Hello => answer_hello(&agent, stream).await,
                StreamKind::Sync => sync::answer(&agent, stream).await,
                StreamKind::Proxy => proxy::inbound::serve_stream(&agent, stream).await,
                StreamKind::Swim => Ok(()),
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "inbound stream failed");
            }
        });
    }
}

async fn answer_hello(agent: &Agent, mut stream: InboundStream) -> anyhow::Result<()> {
    let bytes = codec::encode(&agent.identity)?;
    stream.send.write_all(&bytes).await?;
    stream.send.finish()?;
    Ok(())
}
