//! Runs the README's tour, as written, against live agents: every `sh` block
//! between `<!-- tour:begin -->` and `<!-- tour:end -->`, in order, in one
//! bash with `gossamer` on the PATH. The tour names its ports once, as shell
//! variables in its first block; this test rewrites those assignments to
//! free loopback ports, so it runs beside anything that holds the defaults.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn tour_blocks(readme: &str) -> Vec<String> {
    let begin = readme
        .find("<!-- tour:begin -->")
        .expect("tour begin marker");
    let end = readme.find("<!-- tour:end -->").expect("tour end marker");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme[begin..end].lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// The port variables the tour's first block assigns, and the kind of
/// socket each one is for.
const PORT_VARIABLES: [(&str, Proto); 11] = [
    ("N1_QUIC", Proto::Udp),
    ("N1_ADMIN", Proto::Tcp),
    ("N1_PROXY", Proto::Tcp),
    ("N1_METRICS", Proto::Tcp),
    ("N1_DNS", Proto::Udp),
    ("N2_QUIC", Proto::Udp),
    ("N2_ADMIN", Proto::Tcp),
    ("N2_PROXY", Proto::Tcp),
    ("N2_METRICS", Proto::Tcp),
    ("N2_DNS", Proto::Udp),
    ("HELLO_PORT", Proto::Tcp),
];

#[derive(Clone, Copy)]
enum Proto {
    Tcp,
    Udp,
}

/// Free loopback ports, one per variable, all held open together while they
/// are chosen so that no two are the same. They are released before the
/// tour binds them: the tour's agents take fixed ports by design.
///
/// They come from below the kernel's ephemeral range (32768 and up), where
/// the other tests' port-0 sockets and outgoing connections never land, so
/// nothing takes one between its release and the tour's bind; and each is
/// free for TCP and UDP both (the DNS listener binds both).
fn free_ports() -> Vec<u16> {
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 12_000;
    let mut held = Vec::new();
    let mut ports = Vec::new();
    // A start that differs between runs, so that two checkouts testing at
    // once do not walk the same ports.
    let mut candidate =
        FIRST + u16::try_from(std::process::id() % u32::from(SPAN)).expect("below the span");
    for _ in PORT_VARIABLES {
        loop {
            candidate = FIRST + (candidate - FIRST + 1) % SPAN;
            let tcp = std::net::TcpListener::bind(("127.0.0.1", candidate));
            let udp = std::net::UdpSocket::bind(("127.0.0.1", candidate));
            if let (Ok(tcp), Ok(udp)) = (tcp, udp) {
                held.push((tcp, udp));
                ports.push(candidate);
                break;
            }
        }
    }
    ports
}

/// Replaces `NAME=DIGITS` of every port variable in `script` with a free
/// port; panics if the README no longer assigns one of them.
fn rewrite_ports(script: &str, ports: &[u16]) -> String {
    let mut out = script.to_owned();
    for ((name, _), port) in PORT_VARIABLES.iter().zip(ports) {
        let pattern = format!("{name}=");
        let mut found = 0;
        let mut rewritten = String::new();
        let mut rest = out.as_str();
        while let Some(at) = rest.find(&pattern) {
            let starts_word = at == 0
                || !rest.as_bytes()[at - 1].is_ascii_alphanumeric()
                    && rest.as_bytes()[at - 1] != b'_';
            let value_start = at + pattern.len();
            let digits = rest[value_start..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            rewritten.push_str(&rest[..value_start]);
            if starts_word && digits > 0 {
                rewritten.push_str(&port.to_string());
                found += 1;
            } else {
                rewritten.push_str(&rest[value_start..value_start + digits]);
            }
            rest = &rest[value_start + digits..];
        }
        rewritten.push_str(rest);
        assert_eq!(
            found, 1,
            "the README tour should assign {name}=PORT exactly once (found {found})"
        );
        out = rewritten;
    }
    out
}

#[test]
fn the_readme_tour_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let blocks = tour_blocks(&readme);
    assert!(blocks.len() >= 8, "tour blocks found: {}", blocks.len());

    let work = std::env::temp_dir().join(format!("gossamer-readme-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("work dir");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_gossamer"))
        .parent()
        .expect("binary dir")
        .to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Background agents die with the script, whatever happens; each block's
    // output is marked so a failure points at its block.
    let mut script =
        String::from("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n");
    for (i, block) in blocks.iter().enumerate() {
        script.push_str(&format!("echo '=== block {i}'\n{block}"));
    }
    let ports = free_ports();
    let script = rewrite_ports(&script, &ports);
    let hello_port = ports[PORT_VARIABLES.len() - 1];
    std::fs::write(work.join("tour.sh"), &script).expect("write script");

    let output = common::run_bounded(
        common::scrub_env(&mut Command::new("bash"))
            .arg("tour.sh")
            .current_dir(&work)
            .env("PATH", path)
            .env("GOSSAMER_LOG", "warn"),
        Duration::from_secs(120),
        "the README tour",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let _ = std::fs::remove_dir_all(&work);
    assert!(
        output.status.success(),
        "README tour failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );

    // What a reader would look for in each step's output.
    let instance = format!("hello-node-2-{hello_port}");
    for expected in [
        "node-2",                      // members
        &instance,                     // instances
        "x-gossamer-upstream: node-2", // curl through the proxy
        "\"instance\":\"hello@node-2\"",
        "1.2.0",                   // services get
        "eligible (within soft)",  // instances with requirements
        "no instance within hard", // the 503 of an impossible requirement
        "gossamer_proxy_requests_total",
    ] {
        assert!(
            stdout.contains(expected),
            "README tour output lacks {expected:?}:\n{stdout}\n--- stderr\n{stderr}"
        );
    }
}

/// Every `fuzz run TARGET` the READMEs name is a `[[bin]]` of
/// `mesh-proto/fuzz/Cargo.toml`, and every target is listed in the fuzz
/// README's table.
#[test]
fn the_readmes_name_only_fuzz_targets_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let read = |rel: &str| {
        std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
    };
    let manifest: toml::Table =
        toml::from_str(&read("mesh-proto/fuzz/Cargo.toml")).expect("fuzz Cargo.toml is TOML");
    let targets: Vec<String> = manifest["bin"]
        .as_array()
        .expect("[[bin]] targets")
        .iter()
        .map(|b| b["name"].as_str().expect("bin name").to_owned())
        .collect();
    assert!(!targets.is_empty());
    for target in &targets {
        let path = root.join(format!("mesh-proto/fuzz/fuzz_targets/{target}.rs"));
        assert!(path.exists(), "{} missing", path.display());
    }
    let fuzz_readme = read("mesh-proto/fuzz/README.md");
    for target in &targets {
        assert!(
            fuzz_readme.contains(&format!("| `{target}` |")),
            "mesh-proto/fuzz/README.md does not list {target}"
        );
    }
    let mut named = 0;
    for rel in ["README.md", "mesh-proto/fuzz/README.md", "TESTING.md"] {
        let Ok(text) = std::fs::read_to_string(root.join(rel)) else {
            continue;
        };
        for (at, _) in text.match_indices("fuzz run ") {
            let name: String = text[at + "fuzz run ".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name.is_empty() {
                continue; // `fuzz run <target>`
            }
            named += 1;
            assert!(
                targets.contains(&name),
                "{rel} names fuzz target {name:?}, which is not one of {targets:?}"
            );
        }
    }
    assert!(named > 0, "no README names a fuzz target to run");
}
