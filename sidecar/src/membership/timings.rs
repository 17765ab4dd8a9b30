//! foca's timings for each profile: probe period, suspicion, gossip.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use foca::{Config, PeriodicParams};
use mesh_proto::gossip::MAX_SWIM_PACKET;

use super::swim_frame;
use crate::config::Profile;

/// foca timings for a profile and cluster size.
pub fn foca_config(profile: Profile, cluster_size: usize) -> Config {
    let size = NonZeroU32::new(u32::try_from(cluster_size.max(1)).unwrap_or(u32::MAX))
        .unwrap_or(NonZeroU32::MIN);
    let periodic = |ms: u64, n: usize| {
        Some(PeriodicParams {
            frequency: Duration::from_millis(ms),
            num_members: NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN),
        })
    };
    let mut config = match profile {
        Profile::Local => {
            let mut config = Config::new_lan(size);
            let probe = Duration::from_millis(400);
            config.probe_period = probe;
            config.probe_rtt = Duration::from_millis(300);
            config.suspect_to_down_after = local_suspicion(probe, cluster_size);
            config.periodic_gossip = periodic(100, 3);
            config.periodic_announce = periodic(5_000, 1);
            config.periodic_announce_to_down_members = periodic(10_000, 2);
            config
        }
        Profile::Lan => Config::new_lan(size),
        Profile::Wan => Config::new_wan(size),
    };
    // Room for the frame around foca's packet (length and coordinate,
    // `swim_frame`), so a full packet still fits one datagram.
    config.max_packet_size =
        NonZeroUsize::new(MAX_SWIM_PACKET - swim_frame::RESERVED).unwrap_or(NonZeroUsize::MIN);
    config.notify_down_members = true;
    with_second_chance_probes(config)
}

/// The `local` profile's shortest suspicion: memberlist's rule,
/// multiplier × max(1, log10 N) × probe period, with 2 where memberlist has
/// 4, and never under 1.5 s.
///
/// Lifeguard makes a low multiplier safe: it is the floor a suspicion
/// reaches only once two other members confirm it, an unconfirmed one is
/// held 6 × as long, and the suspect hears of it with our next probe. The
/// detection time is mostly the wait for someone to probe the dead node
/// (exponential, mean one probe period, cluster-wide) plus this, so with a
/// 400 ms period a crash is down on all within 5 s at 100 and 500 nodes
/// (`bench sim --profile local`, 40 seeds: max 4.3 s at 100, 4.1 s at 500;
/// with 500 ms and 3, 6.6 and 7.2 s). The floor keeps small clusters, whose
/// log term is 1, as patient as before with a stalled test machine.
fn local_suspicion(probe: Duration, cluster_size: usize) -> Duration {
    let scale = (cluster_size.max(1) as f64).log10().max(1.0);
    probe.mul_f64(2.0 * scale).max(Duration::from_millis(1_500))
}

/// A failed direct probe gets a second direct ping beside five indirect
/// ones (foca's defaults: three, no second ping). Over a network losing
/// 10 % of datagrams a probe of a healthy member then fails about once in
/// 5,000 instead of once in 130: with three the false suspicions alone
/// (`bench sim`: 26.7 per node-hour at 5,000 nodes) kept large clusters
/// churning. It costs datagrams only when a direct probe fails.
fn with_second_chance_probes(mut config: Config) -> Config {
    config.retry_direct_probe = true;
    config.num_indirect_probes = NonZeroUsize::new(5).unwrap_or(NonZeroUsize::MIN);
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_profile_suspects_for_at_least_one_and_a_half_seconds_and_longer_in_big_clusters() {
        let suspicion = |n| foca_config(Profile::Local, n).suspect_to_down_after;
        // Small clusters (the tests, a demo) keep the floor.
        assert_eq!(suspicion(3), Duration::from_millis(1_500));
        assert_eq!(suspicion(10), Duration::from_millis(1_500));
        // 2 × log10 N × 400 ms past it: 1.6 s at 100, ~2.16 s at 500.
        assert_eq!(suspicion(100), Duration::from_millis(1_600));
        let at_500 = suspicion(500).as_secs_f64();
        assert!((at_500 - 2.159).abs() < 0.01, "{at_500}");
    }
}
