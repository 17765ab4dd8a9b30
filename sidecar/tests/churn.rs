//! Churn: many agents in one process join, leave gracefully, crash and come
//! back for a bounded time; nothing panics, and at the end every live agent
//! lists the same members alive (and the departed down or forgotten).
//!
//! The agents are in-process (`sidecar::agent::start`), so twenty of them
//! fit on a 2-core machine; they still talk over real QUIC on loopback.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mesh_proto::api::MemberState;
use sidecar::agent::RunningAgent;

/// Agents at the start (and the floor the churn keeps above).
const START: usize = 20;
/// The churn stops after this long or this many events, whichever first.
const CHURN_FOR: Duration = Duration::from_secs(20);
const MAX_EVENTS: usize = 30;
/// Time between churn events.
const EVENT_EVERY: Duration = Duration::from_millis(600);
/// Bound on agreement after the churn (crash detection, rejoins, gossip).
const AGREE_WITHIN: Duration = Duration::from_secs(60);

/// A small seeded generator, so a failing run can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Live {
    name: String,
    running: RunningAgent,
}

async fn start(name: &str, join: Option<&Live>, data_dir: Option<PathBuf>) -> Live {
    let join = join
        .map(|seed| vec![seed.running.agent.listeners.quic.to_string()])
        .unwrap_or_default();
    let mut config = sidecar::demo::local_config(name, join, Vec::new());
    if let Some(dir) = data_dir {
        config.data_dir = dir;
    }
    let running = sidecar::agent::start(config)
        .await
        .unwrap_or_else(|e| panic!("agent {name} starts: {e:#}"));
    Live {
        name: name.to_owned(),
        running,
    }
}

/// `name -> state` as `live` sees the cluster (itself included).
async fn table(live: &Live) -> BTreeMap<String, MemberState> {
    live.running
        .agent
        .membership
        .members()
        .await
        .into_iter()
        .map(|m| (m.identity.node_id.to_string(), m.state))
        .collect()
}

/// Ids each live agent lists alive, by agent, when they differ from `want`.
async fn disagreements(
    agents: &[Live],
    want: &BTreeSet<String>,
) -> Vec<(String, BTreeMap<String, MemberState>)> {
    let mut out = Vec::new();
    for live in agents {
        let table = table(live).await;
        let alive: BTreeSet<String> = table
            .iter()
            .filter(|(_, s)| **s == MemberState::Alive)
            .map(|(n, _)| n.clone())
            .collect();
        // Every other member it remembers must be down: no lingering suspects.
        let settled = table
            .values()
            .all(|s| matches!(s, MemberState::Alive | MemberState::Down));
        if &alive != want || !settled {
            out.push((live.name.clone(), table));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_agents_under_churn_never_panic_and_agree_on_members() {
    // A panic in any agent task would not fail the test by itself: count them.
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));

    let seed = std::env::var("CHURN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(rand::random::<u32>()) | 1);
    println!("churn seed {seed} (rerun with CHURN_SEED={seed})");
    let mut rng = Rng(seed);

    let started = Instant::now();
    let mut live: Vec<Live> = vec![start("churn-0", None, None).await];
    for i in 1..START {
        let via = rng.below(live.len());
        let agent = start(&format!("churn-{i}"), Some(&live[via]), None).await;
        live.push(agent);
    }
    let want: BTreeSet<String> = live.iter().map(|l| l.name.clone()).collect();
    let formed = wait_agreement(&live, &want, AGREE_WITHIN).await;
    println!(
        "{START} agents formed one cluster in {:.2} s",
        formed.as_secs_f64()
    );

    // Churn: joins of new agents, graceful leaves, crashes, and crashed
    // agents coming back on their data dir (a higher generation).
    let mut next_id = START;
    let mut crashed: Vec<(String, PathBuf)> = Vec::new();
    let mut stopping = Vec::new();
    let mut counts = BTreeMap::<&str, usize>::new();
    let churn_started = Instant::now();
    let mut events = 0;
    while churn_started.elapsed() < CHURN_FOR && events < MAX_EVENTS {
        events += 1;
        // Keep the cluster between START - 4 and START + 4 agents.
        let roll = if live.len() <= START - 4 {
            rng.below(2)
        } else if live.len() >= START + 4 {
            2 + rng.below(2)
        } else {
            rng.below(4)
        };
        match roll {
            1 if !crashed.is_empty() => {
                let (name, dir) = crashed.remove(rng.below(crashed.len()));
                let via = rng.below(live.len());
                live.push(start(&name, Some(&live[via]), Some(dir)).await);
                *counts.entry("restart").or_default() += 1;
            }
            0 | 1 => {
                let via = rng.below(live.len());
                let name = format!("churn-{next_id}");
                next_id += 1;
                live.push(start(&name, Some(&live[via]), None).await);
                *counts.entry("join").or_default() += 1;
            }
            2 => {
                let gone = live.swap_remove(rng.below(live.len()));
                stopping.push(tokio::spawn(gone.running.stop()));
                *counts.entry("leave").or_default() += 1;
            }
            _ => {
                let gone = live.swap_remove(rng.below(live.len()));
                let dir = gone.running.agent.data.path().to_path_buf();
                gone.running.abort().await;
                crashed.push((gone.name, dir));
                *counts.entry("crash").or_default() += 1;
            }
        }
        tokio::time::sleep(EVENT_EVERY).await;
    }
    for stop in stopping {
        stop.await.expect("a graceful stop panicked");
    }
    let churned = churn_started.elapsed();

    let want: BTreeSet<String> = live.iter().map(|l| l.name.clone()).collect();
    let agreed = wait_agreement(&live, &want, AGREE_WITHIN).await;
    println!(
        "churn: {events} events in {:.1} s ({counts:?}); {} agents left; all agreed on the \
         members {:.2} s after the churn ended; whole test {:.1} s",
        churned.as_secs_f64(),
        live.len(),
        agreed.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "an agent task panicked");

    let stops: Vec<_> = live
        .into_iter()
        .map(|agent| tokio::spawn(agent.running.stop()))
        .collect();
    for stop in stops {
        stop.await.expect("a graceful stop panicked");
    }
    for (_, dir) in crashed {
        let _ = std::fs::remove_dir_all(dir);
    }
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "an agent task panicked");
}

/// Waits until every live agent lists exactly `want` alive and nothing
/// suspect; returns how long it took, or panics with the disagreements.
async fn wait_agreement(live: &[Live], want: &BTreeSet<String>, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let differ = disagreements(live, want).await;
        if differ.is_empty() {
            return started.elapsed();
        }
        if started.elapsed() > within {
            let shown: Vec<String> = differ
                .iter()
                .take(5)
                .map(|(name, table)| format!("{name}: {table:?}"))
                .collect();
            panic!(
                "after {within:?}, {} of {} agents disagree with {want:?}:\n{}",
                differ.len(),
                live.len(),
                shown.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
