//! Runs the README's tour, as written, against live agents: every `sh` block
//! between `<!-- tour:begin -->` and `<!-- tour:end -->`, in order, in one
//! bash with `gossamer` on the PATH. The tour uses fixed ports (4200, 4201,
//! 4210, 4211, 4300, 4310, 9102, 9112, 18080): this is the only test that does.

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
    std::fs::write(work.join("tour.sh"), &script).expect("write script");

    let output = common::run_bounded(
        Command::new("bash")
            .arg("tour.sh")
            .current_dir(&work)
            .env("PATH", path)
            .env("GOSSAMER_LOG", "warn")
            .env_remove("GOSSAMER_AGENT")
            .env_remove("GOSSAMER_JOIN"),
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
    for expected in [
        "node-2",                      // members
        "hello-node-2-18080",          // instances
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
