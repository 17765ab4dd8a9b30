//! `gossamer demo`, the README's first command: it must end by itself, exit 0
//! only when every call honoured the requirements, and show why.

mod common;

use std::time::Duration;

#[test]
fn the_demo_routes_by_rtt_and_explains_itself() {
    let output = common::run_bounded(
        common::gossamer().args(["demo", "--calls", "100"]),
        Duration::from_secs(120),
        "gossamer demo (it must end by itself)",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{stderr}");

    // One row per node: calls per upstream, measured RTT, and the reason.
    let row = |node: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(node))
            .unwrap_or_else(|| panic!("no row for {node}:\n{stdout}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let calls = |cols: &[String]| cols[3].parse::<u32>().expect("calls column");
    let rtt = |cols: &[String]| cols[2].parse::<f64>().expect("RTT column");
    let (a, b, c) = (row("node-a"), row("node-b"), row("node-c"));
    assert_eq!(calls(&a) + calls(&b) + calls(&c), 100, "{stdout}");
    assert_eq!(calls(&c), 0, "the far node was used:\n{stdout}");
    // Lower bounds and order only: the links add 5 and 40 ms whatever the
    // load, while an upper bound would measure the machine.
    assert!(rtt(&b) > 3.0 && rtt(&b) < rtt(&c), "{stdout}");
    assert!(rtt(&c) > 30.0, "{stdout}");
    assert!(
        c.join(" ").contains("over the hard requirement of 30 ms"),
        "{stdout}"
    );
    for url in ["/v1/nodes", "/metrics", "echo.localhost"] {
        assert!(stdout.contains(url), "demo does not print {url}:\n{stdout}");
    }
    assert!(stdout.contains("honoured the requirements"), "{stdout}");
    // The table is not buried in logs.
    assert!(
        !stderr.contains(" INFO "),
        "demo logs at info by default:\n{stderr}"
    );
}
