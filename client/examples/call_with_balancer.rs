//! Calls a service directly, without the proxy, balancing on the client side.
//!
//! ```text
//! cargo run -p client --example call_with_balancer -- [--agent URL] SERVICE [--path /echo] [--count 20] [--hard-rtt MS] [--soft-rtt MS]
//! ```
//!
//! Each call: the [`client::Balancer`] picks an instance (the same selection
//! code as the sidecar's proxy: RTT requirements, then power of two choices
//! over peak-EWMA), the example sends `GET PATH` straight to the instance's
//! address, and reports the latency to the response head and whether it
//! succeeded (anything but a connection error or a 5xx). A failed call is
//! retried once on another instance when the retry budget allows. At the end
//! it prints how the calls spread, and exits 0 only if every call succeeded.
//! The agent URL comes from `--agent`, else `GOSSAMER_AGENT`, else
//! `http://127.0.0.1:4200`.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use client::{Balancer, BalancerOptions, Client, Error, Outcome, Picked};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;

const USAGE: &str = "call_with_balancer [--agent URL] SERVICE [--path /echo] [--count 20] \
                     [--hard-rtt MS] [--soft-rtt MS]";

type Http = HttpClient<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

/// Calls per instance, for the summary.
#[derive(Default)]
struct Tally {
    node: String,
    address: String,
    rtt: String,
    ok: u32,
    failed: u32,
    total_latency: Duration,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = support::parse(USAGE);
    let Some(service) = args.service.clone() else {
        eprintln!("error: which service?\nusage: {USAGE}");
        std::process::exit(2);
    };
    match run(&args, &service).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(1);
        }
    }
}

/// Makes the calls; true if every one succeeded.
async fn run(args: &support::Args, service: &str) -> Result<bool, Error> {
    let agent = Client::new(&args.agent)?;
    let options = BalancerOptions {
        requirements: args.requirements,
        ..BalancerOptions::default()
    };
    let balancer = Balancer::with_options(agent, service, options);
    let http: Http = HttpClient::builder(TokioExecutor::new()).build_http();
    let path = args.path.clone().unwrap_or_else(|| "/echo".to_owned());
    let calls = args.count.unwrap_or(20);

    let mut tally: BTreeMap<String, Tally> = BTreeMap::new();
    let mut failed_calls = 0;
    for _ in 0..calls {
        let mut tried: Vec<String> = Vec::new();
        loop {
            let exclude: Vec<&str> = tried.iter().map(String::as_str).collect();
            let picked = balancer.pick_excluding(&exclude).await?;
            let (ok, latency) = call(&http, &picked, &path).await;
            let entry = tally.entry(picked.instance_id.clone()).or_default();
            entry.node = picked.node.clone();
            entry.address = picked.address.to_string();
            entry.rtt = support::rtt(picked.rtt_ms, picked.rtt_source);
            entry.total_latency += latency;
            if ok {
                entry.ok += 1;
            } else {
                entry.failed += 1;
            }
            tried.push(picked.instance_id.clone());
            let outcome = if ok {
                Outcome::Success { latency }
            } else {
                Outcome::Failure { latency }
            };
            balancer.report(picked, outcome);
            if ok {
                break;
            }
            if tried.len() > 1 || !balancer.try_retry() {
                failed_calls += 1;
                break;
            }
        }
    }

    println!(
        "{:<28} {:<16} {:<22} {:<22} {:>5} {:>6} {:>9}",
        "INSTANCE", "NODE", "ADDRESS", "RTT", "OK", "FAILED", "MEAN_MS"
    );
    for (id, t) in &tally {
        let attempts = t.ok + t.failed;
        let mean = t.total_latency.as_secs_f64() * 1000.0 / f64::from(attempts.max(1));
        println!(
            "{id:<28} {:<16} {:<22} {:<22} {:>5} {:>6} {mean:>9.2}",
            t.node, t.address, t.rtt, t.ok, t.failed
        );
    }
    println!(
        "{calls} calls to {service}{path}: {} succeeded, {failed_calls} failed",
        calls - failed_calls
    );
    Ok(failed_calls == 0)
}

/// One GET straight to the instance: success, and the time to the response head.
async fn call(http: &Http, picked: &Picked, path: &str) -> (bool, Duration) {
    let started = Instant::now();
    match request(http, picked.address, path, started).await {
        Ok((status, latency)) => (status < 500, latency),
        Err(error) => {
            eprintln!("call to {} failed: {error}", picked.address);
            (false, started.elapsed())
        }
    }
}

/// The status, and the time from `started` to the response head.
async fn request(
    http: &Http,
    address: SocketAddr,
    path: &str,
    started: Instant,
) -> Result<(u16, Duration), String> {
    let uri = format!("http://{address}{path}");
    let request = http::Request::get(&uri)
        .body(Empty::new())
        .map_err(|e| format!("bad request {uri}: {e}"))?;
    let response = tokio::time::timeout(Duration::from_secs(10), http.request(request))
        .await
        .map_err(|_| format!("no answer from {uri} within 10 s"))?
        .map_err(|e| e.to_string())?;
    let latency = started.elapsed();
    let status = response.status().as_u16();
    // Read the body so the connection goes back to the pool.
    let _ = response.into_body().collect().await;
    Ok((status, latency))
}
