//! Argument parsing shared by the SDK examples (kept tiny, so the examples
//! need no CLI crate). Not an example itself: cargo only builds
//! `examples/*.rs` and `examples/*/main.rs`.
#![allow(dead_code)]

use client::Requirements;

/// The agent every example talks to unless told otherwise: the default
/// `--admin-listen` of `gossamer agent`.
pub const DEFAULT_AGENT: &str = "http://127.0.0.1:4200";

/// What an example was asked to do.
#[derive(Debug)]
pub struct Args {
    /// Admin API URL: `--agent`, else `GOSSAMER_AGENT`, else [`DEFAULT_AGENT`].
    pub agent: String,
    /// The positional SERVICE argument.
    pub service: Option<String>,
    /// `--hard-rtt MS` and `--soft-rtt MS`.
    pub requirements: Requirements,
    /// `--count N`: updates to wait for, or calls to make.
    pub count: Option<u64>,
    /// `--path P`: the HTTP path to call.
    pub path: Option<String>,
}

/// Parses the process arguments; prints `usage` and exits 2 on a mistake.
pub fn parse(usage: &str) -> Args {
    let fail = |problem: String| -> ! {
        eprintln!("error: {problem}\nusage: {usage}");
        std::process::exit(2)
    };
    let mut args = Args {
        agent: std::env::var("GOSSAMER_AGENT").unwrap_or_else(|_| DEFAULT_AGENT.to_owned()),
        service: None,
        requirements: Requirements::default(),
        count: None,
        path: None,
    };
    let mut raw = std::env::args().skip(1);
    while let Some(arg) = raw.next() {
        let mut value = |flag: &str| {
            raw.next()
                .unwrap_or_else(|| fail(format!("{flag} needs a value")))
        };
        let number = |flag: &str, text: String| -> u64 {
            text.parse()
                .unwrap_or_else(|_| fail(format!("{flag} {text:?} is not a whole number")))
        };
        let millis = |flag: &str, text: String| -> u32 {
            u32::try_from(number(flag, text))
                .unwrap_or_else(|_| fail(format!("{flag} is too large")))
        };
        match arg.as_str() {
            "-h" | "--help" => {
                println!("usage: {usage}");
                std::process::exit(0);
            }
            "--agent" => args.agent = value("--agent"),
            "--hard-rtt" => {
                args.requirements.hard_rtt_ms = Some(millis("--hard-rtt", value("--hard-rtt")))
            }
            "--soft-rtt" => {
                args.requirements.soft_rtt_ms = Some(millis("--soft-rtt", value("--soft-rtt")))
            }
            "--count" => args.count = Some(number("--count", value("--count"))),
            "--path" => args.path = Some(value("--path")),
            flag if flag.starts_with('-') => fail(format!("unknown flag {flag}")),
            _ if args.service.is_none() => args.service = Some(arg),
            _ => fail(format!("unexpected argument {arg:?}")),
        }
    }
    args
}

/// An RTT in ms with its source, for tables: `5.12 (measured)`.
pub fn rtt(rtt_ms: Option<f64>, source: client::RttSource) -> String {
    let source = match source {
        client::RttSource::Measured => "measured",
        client::RttSource::Estimated => "estimated",
        client::RttSource::Unknown => "unknown",
    };
    match rtt_ms {
        Some(ms) => format!("{ms:.2} ms ({source})"),
        None => format!("- ({source})"),
    }
}

/// A requirement for tables: `30 ms`, or `none`.
pub fn limit(ms: Option<u32>) -> String {
    ms.map_or_else(|| "none".to_owned(), |ms| format!("{ms} ms"))
}
