//! A short run of every scenario (tiny sizes, seconds each) so the bench
//! code stays alive under `cargo test --workspace`. Nothing here asserts a
//! timing: only that each scenario runs and writes sane JSON.

use std::path::{Path, PathBuf};

use bench::{balance, dns, gossip, proxy, select, sim};
use serde_json::Value;

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "gossamer-bench-smoke-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ))
}

/// Reads `dir/name.json` and checks the fields every document has.
fn document(dir: &Path, name: &str, scenario: &str) -> Value {
    let path = dir.join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).expect("the scenario wrote its JSON");
    let doc: Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(doc["scenario"], scenario);
    assert!(doc["date"].as_str().is_some_and(|d| d.ends_with('Z')));
    assert!(doc["machine"]["cores"].as_u64().is_some_and(|c| c >= 1));
    let _ = std::fs::remove_dir_all(dir);
    doc
}

#[test]
fn sim_runs_a_small_cluster() {
    let out = scratch("sim");
    let args = sim::SimArgs {
        nodes: vec![40],
        loss: 0.01,
        delay: 2.0,
        seed: 7,
        profile: sidecar::config::Profile::Lan,
        records: 2,
        rest: 1.0,
        budget: 60,
        no_lifeguard: false,
        foca_probes: false,
        out: out.clone(),
    };
    let results = sim::run(&args).expect("sim runs");
    assert_eq!(results.len(), 1);
    let doc = document(&out, "sim-40-lan-loss0.01-delay2", "sim");
    let r = &doc["results"][0];
    assert_eq!(r["nodes"], 40);
    assert!(r["record"]["reached"].as_u64().is_some_and(|n| n >= 1));
    assert!(r["messages_per_node"].as_f64().is_some_and(|m| m > 0.0));
}

#[test]
fn sim_is_deterministic_from_its_seed() {
    let run = || {
        let args = sim::SimArgs {
            nodes: vec![20],
            loss: 0.05,
            delay: 3.0,
            seed: 11,
            profile: sidecar::config::Profile::Lan,
            records: 2,
            rest: 1.0,
            budget: 60,
            no_lifeguard: false,
            foca_probes: false,
            out: scratch("sim-seed"),
        };
        let r = sim::run(&args).expect("sim runs");
        let _ = std::fs::remove_dir_all(&args.out);
        let r = &r[0];
        (
            r.events,
            r.messages_per_node,
            r.record.all_s,
            r.crash.down.all_s,
        )
    };
    assert_eq!(run(), run());
}

#[test]
fn balance_honours_the_hard_requirement() {
    let out = scratch("balance");
    let args = balance::BalanceArgs {
        rate: 500.0,
        seconds: 3.0,
        warmup: 1.0,
        seed: 3,
        out: out.clone(),
    };
    let results = balance::run(&args).expect("balance runs");
    let gossamer = &results.strategies[0];
    assert!(gossamer.tally.ok > 0);
    assert_eq!(gossamer.tally.hard_violations, 0);
    let doc = document(&out, "balance", "balance");
    assert_eq!(
        doc["results"]["strategies"].as_array().map(Vec::len),
        Some(4)
    );
}

/// A `bench proxy` run of half a second per loop over `paths`.
fn tiny_proxy_run(out: &Path, paths: &[&str], service: proxy::Service) -> proxy::ProxyArgs {
    proxy::ProxyArgs {
        concurrency: 4,
        rate: 200,
        open_connections: 8,
        duration: 0.5,
        warmup: 0.2,
        rounds: 1,
        paths: paths.iter().map(|p| p.to_string()).collect(),
        agent_bin: None,
        service,
        out: out.to_path_buf(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_measures_every_in_process_path() {
    let out = scratch("proxy");
    let args = tiny_proxy_run(&out, &["sidecar", "two-sidecars"], proxy::Service::Echo);
    let results = proxy::run(&args).await.expect("proxy runs");
    assert_eq!(results.paths.len(), 3);
    for path in &results.paths {
        assert!(path.closed.ok > 0, "{} answered nothing", path.name);
        assert!(path.open.ok > 0, "{} answered nothing", path.name);
    }
    let doc = document(&out, "proxy", "proxy");
    assert_eq!(doc["results"]["paths"][0]["name"], "direct");
}

/// `--service nginx`: an nginx process answering `return 200` is the
/// service behind every path (Debian's nginx, installed by `.ci/run`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_reaches_an_nginx_service_through_a_sidecar() {
    assert!(
        std::path::Path::new("/usr/sbin/nginx").is_file(),
        "this test needs nginx: apt-get install -y nginx"
    );
    let out = scratch("proxy-nginx");
    let args = tiny_proxy_run(&out, &["sidecar"], proxy::Service::Nginx);
    // No echo service is started with --service nginx: every answer is nginx's.
    let results = proxy::run(&args).await.expect("proxy runs with nginx");
    assert_eq!(results.paths.len(), 2);
    for path in &results.paths {
        assert!(path.closed.ok > 0, "{} answered nothing", path.name);
        assert_eq!(path.closed.errors, 0, "{} had errors", path.name);
    }
    let doc = document(&out, "proxy", "proxy");
    assert_eq!(doc["args"]["service"], "nginx");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_runs_a_few_agents() {
    let out = scratch("gossip");
    let args = gossip::GossipArgs {
        nodes: 4,
        repeats: 2,
        kills: 1,
        settle: 0.2,
        rest: 0.5,
        churn: 1.0,
        start_rate: 0.0,
        profile: sidecar::config::Profile::Local,
        agent_bin: None,
        no_probe: true,
        out: out.clone(),
    };
    let results = gossip::run(&args).await.expect("gossip runs");
    assert_eq!(results.start_to_ready.count, 4);
    // Every registration reached every agent (30 s allowed each) and the
    // killed agent was declared down (60 s allowed): a timeout is a failure,
    // not a sample that went missing.
    assert_eq!(
        (
            results.registration_spread.count,
            results.registration_timeouts
        ),
        (2, 0),
        "registrations spread / timed out"
    );
    assert_eq!(
        (results.kill_to_down.count, results.kill_timeouts),
        (1, 0),
        "kills declared down / timed out"
    );
    let doc = document(&out, "gossip-4", "gossip");
    assert!(doc["results"]["rss_idle_kib"]
        .as_u64()
        .is_some_and(|k| k > 0));
}

#[test]
fn select_measures_every_catalog_size() {
    let out = scratch("select");
    let args = select::SelectArgs {
        records: vec![10, 1000],
        members: 50,
        instances: 4,
        picks: 200,
        out: out.clone(),
    };
    let results = select::run(&args).expect("select runs");
    let sizes: Vec<usize> = results.rows.iter().map(|r| r.records).collect();
    assert_eq!(sizes, [10, 1000]);
    assert!(results
        .rows
        .iter()
        .all(|r| r.ns_per_pick > 0.0 && r.scan_ns_per_pick > 0.0));
    let doc = document(&out, "select", "select");
    assert_eq!(doc["results"]["rows"][1]["records"], 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_measures_answer_latency() {
    let out = scratch("dns");
    let args = dns::DnsArgs {
        rate: 200,
        seconds: 1.0,
        instances: 2,
        out: out.clone(),
    };
    let results = dns::run(&args).await.expect("dns runs");
    assert_eq!(results.sent, 200);
    assert!(results.answered > 0, "{results:?}");
    let doc = document(&out, "dns-200qps", "dns");
    assert!(doc["results"]["latency"]["p99_us"].as_u64().is_some());
}
