//! The simulated cluster: every node's foca and catalog, the queue, the
//! network and the observer, and the loop that hands each event to the node
//! it concerns. Anti-entropy runs as in the agent: every few seconds a node
//! sends its catalog digest to a random active member, which answers with
//! what the sender lacks and the keys it wants back.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use foca::Member;
use mesh_proto::catalog::{Instance, Record, RecordBody, RecordKey};
use mesh_proto::codec;
use mesh_proto::gossip::{CatalogBroadcast, SyncMessage};
use mesh_proto::{Hlc, NodeId, Version};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use sidecar::core::anti_entropy;

use super::net::{nanos, BootRuntime, EventKind, Nanos, Network, NodeRuntime, Payload, Queue};
use super::node::{SimId, SimNode};
use super::observe::{Observer, Spread};

/// SplitMix64: independent, reproducible seeds per node from one run seed.
pub fn mix(seed: u64, index: u64) -> u64 {
    let mut z = seed
        .wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// How long a joiner waits for a member before announcing again (the
/// agent's `join::run` waits 2 s, then backs off).
const JOIN_RETRY: Duration = Duration::from_secs(2);

/// How a call to [`World::run_until`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// The stop condition became true.
    Stopped,
    /// Simulated time reached the limit.
    TimeLimit,
    /// The wall-clock budget ran out.
    WallBudget,
}

/// Settings of one simulated cluster.
#[derive(Clone)]
pub struct WorldConfig {
    /// Nodes formed into a cluster at time 0.
    pub nodes: usize,
    /// foca configuration for a cluster of each size (the agent's profile
    /// table); every node's core resizes with it as the agent's does.
    pub config_for: sidecar::core::membership::ConfigFor,
    /// Probe period the first nodes start with (to spread their phases).
    pub probe_period: Duration,
    /// Share of messages lost.
    pub loss: f64,
    /// One-way delay.
    pub delay: Duration,
    /// Anti-entropy period.
    pub sync_every: Duration,
    /// Seed of every random choice.
    pub seed: u64,
    /// Lifeguard on every node (as the agent runs it).
    pub lifeguard: bool,
}

/// The whole simulated cluster.
pub struct World {
    /// Every node, by index.
    pub nodes: Vec<SimNode>,
    /// Pending events.
    pub queue: Queue,
    /// The links.
    pub net: Network,
    /// Notification watcher.
    pub observer: Observer,
    /// Current simulated time.
    pub now: Nanos,
    /// A catalog record being watched as it spreads.
    pub record: Option<(RecordKey, Spread)>,
    /// Errors foca returned while handling packets or timers.
    pub foca_errors: u64,
    /// Events handled so far.
    pub events: u64,
    config: WorldConfig,
    rng: SmallRng,
    /// Simulated time 0, as the cores' `Instant`.
    base: Instant,
}

impl World {
    /// Builds `config.nodes` nodes that already know each other, as a
    /// cluster that formed long ago, each with its clock at a random phase.
    pub fn formed(config: WorldConfig) -> anyhow::Result<Self> {
        let n = config.nodes;
        let probe = nanos(config.probe_period).max(1);
        let base = Instant::now();
        let sync_every = nanos(config.sync_every).max(1);
        let threads = std::thread::available_parallelism()
            .map_or(1, |t| t.get())
            .clamp(1, 8);
        let chunk = n.div_ceil(threads).max(1);
        let built: Vec<anyhow::Result<Vec<(SimNode, BootRuntime)>>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let config = &config;
                    s.spawn(move || {
                        (t * chunk..((t + 1) * chunk).min(n))
                            .map(|i| build_node(i, config, probe, base))
                            .collect::<anyhow::Result<Vec<_>>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow!("a bootstrap thread panicked")))
                })
                .collect()
        });
        let mut queue = Queue::default();
        let mut nodes = Vec::with_capacity(n + 1);
        let mut rng = SmallRng::seed_from_u64(mix(config.seed, u64::MAX));
        for part in built {
            for (mut node, _boot) in part? {
                let index = nodes.len() as u32;
                let wake = since(base, node.core.next_wakeup());
                node.wake_at = Some(wake);
                queue.push(wake, EventKind::Wake { node: index });
                queue.push(
                    rng.random_range(0..sync_every),
                    EventKind::SyncTick { node: index },
                );
                nodes.push(node);
            }
        }
        Ok(Self {
            nodes,
            queue,
            net: Network::new(config.loss, config.delay, mix(config.seed, u64::MAX - 1)),
            observer: Observer::new(n),
            now: 0,
            record: None,
            foca_errors: 0,
            events: 0,
            config,
            rng,
            base,
        })
    }

    /// Simulated time `now` as the cores' clock.
    fn instant(&self, now: Nanos) -> Instant {
        self.base + Duration::from_nanos(now)
    }

    /// Nodes that have not crashed.
    pub fn running(&self) -> usize {
        self.nodes.iter().filter(|n| n.running).count()
    }

    /// Runs events until `stop` holds, simulated time passes `until`, or the
    /// wall clock passes `deadline`.
    pub fn run_until(
        &mut self,
        until: Nanos,
        deadline: Instant,
        mut stop: impl FnMut(&World) -> bool,
    ) -> RunEnd {
        loop {
            if stop(self) {
                return RunEnd::Stopped;
            }
            match self.queue.next_at() {
                Some(at) if at <= until => {}
                _ => {
                    self.now = self.now.max(until);
                    return RunEnd::TimeLimit;
                }
            }
            let Some((at, kind)) = self.queue.pop() else {
                return RunEnd::TimeLimit;
            };
            self.now = at;
            self.dispatch(kind);
            self.events += 1;
            if self.events.is_multiple_of(16_384) && Instant::now() > deadline {
                return RunEnd::WallBudget;
            }
        }
    }

    fn dispatch(&mut self, kind: EventKind) {
        let index = match &kind {
            EventKind::Deliver { to, .. } => *to,
            EventKind::Wake { node }
            | EventKind::SyncTick { node }
            | EventKind::JoinCheck { node, .. } => *node,
        };
        let instant = self.base + Duration::from_nanos(self.now);
        let Some(node) = self.nodes.get_mut(index as usize) else {
            return;
        };
        if !node.running {
            return;
        }
        if let EventKind::Wake { .. } = kind {
            // Only the latest wake of a node counts; earlier ones were
            // superseded when its core asked for an earlier deadline.
            if node.wake_at != Some(self.now) {
                return;
            }
            node.wake_at = None;
        }
        let mut rt = NodeRuntime {
            node: index,
            now: self.now,
            queue: &mut self.queue,
            net: &mut self.net,
            observer: &mut self.observer,
        };
        match kind {
            EventKind::Deliver {
                payload: Payload::Swim(bytes),
                ..
            } => {
                if node.core.handle_data(&bytes, instant, &mut rt).is_err() {
                    self.foca_errors += 1;
                }
            }
            EventKind::Deliver {
                from,
                payload: Payload::Sync(message),
                ..
            } => {
                let reply = sync_reply(node, message);
                if let Some(reply) = reply {
                    let bytes = codec::encode(&reply).map_or(0, |b| b.len());
                    rt.net
                        .send(rt.queue, rt.now, index, from, Payload::Sync(reply), bytes);
                }
            }
            EventKind::Wake { .. } => {
                node.core.advance(instant, &mut rt);
            }
            EventKind::JoinCheck { seed, .. } => {
                // As the agent's join loop: no member yet means the announce
                // or its answer was lost; announce again.
                if node.core.foca().num_members() == 0 {
                    let to = SimId {
                        index: seed,
                        generation: 0,
                    };
                    if node.core.announce(to, instant, &mut rt).is_err() {
                        self.foca_errors += 1;
                    }
                    self.queue.push(
                        self.now + nanos(JOIN_RETRY),
                        EventKind::JoinCheck { node: index, seed },
                    );
                }
            }
            EventKind::SyncTick { .. } => {
                let members = node.core.foca().num_members();
                if members > 0 {
                    let pick = self.rng.random_range(0..members);
                    if let Some(peer) = node
                        .core
                        .foca()
                        .iter_members()
                        .nth(pick)
                        .map(|m| m.id().index)
                    {
                        let digest = anti_entropy::open(&node.catalog.lock());
                        let bytes = codec::encode(&digest).map_or(0, |b| b.len());
                        rt.net
                            .send(rt.queue, rt.now, index, peer, Payload::Sync(digest), bytes);
                    }
                }
                let next = self.now + nanos(self.config.sync_every);
                self.queue.push(next, EventKind::SyncTick { node: index });
            }
        }
        self.schedule_wake(index);
        self.note_record(index);
    }

    /// Queues a wake for `index` at its core's next deadline, unless an
    /// earlier one is queued already.
    fn schedule_wake(&mut self, index: u32) {
        let base = self.base;
        let Some(node) = self.nodes.get_mut(index as usize) else {
            return;
        };
        if !node.running {
            return;
        }
        let wake = since(base, node.core.next_wakeup()).max(self.now);
        if node.wake_at.is_none_or(|queued| wake < queued) {
            node.wake_at = Some(wake);
            self.queue.push(wake, EventKind::Wake { node: index });
        }
    }

    fn note_record(&mut self, index: u32) {
        let Some((key, spread)) = self.record.as_mut() else {
            return;
        };
        if spread.has(index) {
            return;
        }
        let has = self
            .nodes
            .get(index as usize)
            .is_some_and(|n| n.catalog.lock().catalog().get(key).is_some());
        if has {
            spread.mark(index, self.now);
        }
    }

    /// Writes an instance record on `writer` and gossips it, as the agent's
    /// registry does; starts watching it spread.
    pub fn write_record(&mut self, writer: u32, serial: usize) -> anyhow::Result<()> {
        let node_id = NodeId::new(format!("node-{writer:05}"))
            .map_err(|e| anyhow!("simulated node id: {e}"))?;
        let id = format!("sim-{writer}-{serial}");
        let key = RecordKey::Instance(id.clone());
        let record = Record {
            key: key.clone(),
            version: Version {
                hlc: Hlc {
                    wall_ms: 1_760_000_000_000 + self.now / 1_000_000,
                    logical: 0,
                },
                writer: node_id.clone(),
            },
            body: RecordBody::Instance(Instance {
                id,
                service: "sim".to_owned(),
                node: node_id,
                address: std::net::SocketAddr::from(([10, 0, 0, 1], 8080)),
                deployment_id: None,
                tags: Vec::new(),
                health: Default::default(),
            }),
        };
        let item = codec::encode(&CatalogBroadcast { record })
            .map_err(|e| anyhow!("cannot encode the simulated record: {e}"))?;
        let node = self
            .nodes
            .get_mut(writer as usize)
            .context("no such writer node")?;
        // The handler merges the record into the writer's catalog as foca
        // queues it (the agent's registry writes first, then gossips).
        node.core
            .add_broadcast(&item)
            .map_err(|e| anyhow!("foca refused the broadcast: {e}"))?;
        let mut spread = Spread::new(writer, self.nodes.len(), self.now);
        spread.mark(writer, self.now);
        self.record = Some((key, spread));
        Ok(())
    }

    /// Adds a node that knows nobody and has it announce itself to `seed`.
    pub fn join(&mut self, seed: u32) -> anyhow::Result<u32> {
        let index = self.nodes.len() as u32;
        let id = SimId {
            index,
            generation: 0,
        };
        let rng = SmallRng::seed_from_u64(mix(self.config.seed, u64::from(index)));
        let instant = self.instant(self.now);
        self.nodes.push(SimNode::new(
            id,
            self.config.config_for.clone(),
            rng,
            instant,
            self.config.lifeguard,
        )?);
        self.observer.crashed.push(false);
        let to = SimId {
            index: seed,
            generation: 0,
        };
        let node = self.nodes.last_mut().context("just pushed")?;
        let mut rt = NodeRuntime {
            node: index,
            now: self.now,
            queue: &mut self.queue,
            net: &mut self.net,
            observer: &mut self.observer,
        };
        node.core
            .announce(to, instant, &mut rt)
            .map_err(|e| anyhow!("the joiner cannot announce: {e}"))?;
        self.schedule_wake(index);
        self.queue.push(
            self.now + nanos(JOIN_RETRY),
            EventKind::JoinCheck { node: index, seed },
        );
        let first_sync = self.now
            + self
                .rng
                .random_range(0..nanos(self.config.sync_every).max(1));
        self.queue
            .push(first_sync, EventKind::SyncTick { node: index });
        Ok(index)
    }

    /// Stops `index` as a crash would: no leave, no more packets or timers.
    pub fn crash(&mut self, index: u32) {
        if let Some(node) = self.nodes.get_mut(index as usize) {
            node.running = false;
        }
        if let Some(slot) = self.observer.crashed.get_mut(index as usize) {
            *slot = true;
        }
    }
}

fn build_node(
    i: usize,
    config: &WorldConfig,
    probe: Nanos,
    base: Instant,
) -> anyhow::Result<(SimNode, BootRuntime)> {
    let index = i as u32;
    let mut rng = SmallRng::seed_from_u64(mix(config.seed, i as u64));
    // Each node's clock starts at a random phase, so nodes do not tick in lockstep.
    let start = base + Duration::from_nanos(rng.random_range(0..probe));
    let mut node = SimNode::new(
        SimId {
            index,
            generation: 0,
        },
        config.config_for.clone(),
        rng,
        start,
        config.lifeguard,
    )?;
    let mut boot = BootRuntime {
        unexpected_sends: 0,
    };
    let members = (0..config.nodes as u32).filter(|&j| j != index).map(|j| {
        Member::alive(SimId {
            index: j,
            generation: 0,
        })
    });
    node.core
        .apply_many(members, false, start, &mut boot)
        .map_err(|e| anyhow!("bootstrap of node {i} failed: {e}"))?;
    Ok((node, boot))
}

/// One step of anti-entropy at the receiving node, as the agent runs it
/// (`sidecar::core::anti_entropy`); returns the answer, if any.
fn sync_reply(node: &SimNode, message: SyncMessage) -> Option<SyncMessage> {
    anti_entropy::step(&mut node.catalog.lock(), message).reply
}

/// Nanoseconds from `base` to `at` (0 when `at` is earlier).
fn since(base: Instant, at: Instant) -> Nanos {
    nanos(at.saturating_duration_since(base))
}
