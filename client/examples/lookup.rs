//! Looks services up through the local agent.
//!
//! ```text
//! cargo run -p client --example lookup -- [--agent URL]
//! cargo run -p client --example lookup -- [--agent URL] SERVICE [--hard-rtt MS] [--soft-rtt MS]
//! ```
//!
//! Without SERVICE it lists the services the agent knows; with it, the
//! service's definition and its instances under the requirements: address,
//! node, health, RTT with its source, and why an instance may not be used.
//! The agent URL comes from `--agent`, else `GOSSAMER_AGENT`, else
//! `http://127.0.0.1:4200`. Exits 1 when the agent cannot answer.

mod support;

use client::{Client, Error};

const USAGE: &str = "lookup [--agent URL] [SERVICE [--hard-rtt MS] [--soft-rtt MS]]";

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = support::parse(USAGE);
    if let Err(error) = run(args).await {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

async fn run(args: support::Args) -> Result<(), Error> {
    let agent = Client::new(&args.agent)?;
    let Some(service) = args.service else {
        let services = agent.services().await?;
        println!(
            "{:<24} {:>9} {:>7}  REQUIREMENTS",
            "SERVICE", "INSTANCES", "PASSING"
        );
        for s in &services {
            let requirements = s.definition.as_ref().map_or_else(
                || "(no definition)".to_owned(),
                |d| {
                    let r = &d.requirements;
                    format!(
                        "hard {}, soft {}",
                        support::limit(r.hard_rtt_ms),
                        support::limit(r.soft_rtt_ms)
                    )
                },
            );
            println!(
                "{:<24} {:>9} {:>7}  {requirements}",
                s.name, s.instances, s.passing
            );
        }
        println!("{} services", services.len());
        return Ok(());
    };

    match agent.definition(&service).await {
        Ok(d) => println!(
            "service {}: version {:?}, port {}, hard {}, soft {}",
            d.name,
            d.version,
            d.port.map_or_else(|| "-".to_owned(), |p| p.to_string()),
            support::limit(d.requirements.hard_rtt_ms),
            support::limit(d.requirements.soft_rtt_ms)
        ),
        Err(e) if e.is_not_found() => println!("service {service}: no definition"),
        Err(e) => return Err(e),
    }
    let view = agent.instances(&service, &args.requirements).await?;
    println!(
        "effective requirements: hard {}, soft {}",
        support::limit(view.hard_rtt_ms),
        support::limit(view.soft_rtt_ms)
    );
    println!(
        "{:<28} {:<16} {:<22} {:<8} {:<22} USE",
        "INSTANCE", "NODE", "ADDRESS", "HEALTH", "RTT"
    );
    for i in view.eligible.iter().chain(&view.ineligible) {
        let usable = match &i.ineligible {
            None if i.within_soft => "eligible (within soft)".to_owned(),
            None => "eligible".to_owned(),
            Some(why) => format!("ineligible: {why:?}"),
        };
        println!(
            "{:<28} {:<16} {:<22} {:<8} {:<22} {usable}",
            i.instance.id,
            i.instance.node.to_string(),
            i.instance.address.to_string(),
            format!("{:?}", i.instance.health).to_lowercase(),
            support::rtt(i.rtt_ms, i.rtt_source),
        );
    }
    println!(
        "{} eligible, {} ineligible",
        view.eligible.len(),
        view.ineligible.len()
    );
    Ok(())
}
