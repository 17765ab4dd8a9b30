//! A short `bench fuzz` run (20,000 inputs per decoder, seconds in a debug
//! build) through the real binary, so the counting allocator is in place:
//! no decoder may panic, fail its round trip or hold more heap than its
//! bound, and most inputs must reach past the version byte into the body
//! (and some of them decode).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// Every decoder `bench fuzz` knows.
const DECODERS: [&str; 12] = [
    "proxy_frame",
    "node_identity",
    "record",
    "definition_wire",
    "sync_message",
    "member_list",
    "member_summary",
    "ping",
    "catalog_broadcast",
    "swim_header",
    "swim_member",
    "swim_packet",
];

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "gossamer-bench-fuzz-{name}-{}-{}.json",
        std::process::id(),
        rand::random::<u32>()
    ))
}

#[test]
fn twenty_thousand_inputs_per_decoder_find_nothing() {
    let json = scratch("short");
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["fuzz", "--inputs", "20000", "--seed", "7", "--json"])
        .arg(&json)
        .output()
        .expect("the bench binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench fuzz failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("round-trip failures"),
        "no table:\n{stdout}"
    );

    let text = std::fs::read_to_string(&json).expect("bench fuzz wrote its JSON");
    let _ = std::fs::remove_file(&json);
    let doc: Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(doc["scenario"], "fuzz");
    let results = doc["results"].as_array().expect("a result per decoder");
    let names: Vec<&str> = results.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, DECODERS);
    for r in results {
        let name = &r["name"];
        assert_eq!(r["inputs"], 20_000, "{name}");
        assert_eq!(r["panics"], 0, "{name}: {}", r["failures"]);
        assert_eq!(r["round_trip_failures"], 0, "{name}: {}", r["failures"]);
        assert_eq!(r["over_heap_bound"], 0, "{name}: {}", r["failures"]);
        let decoded = r["decoded"].as_u64().expect("a count");
        let rejected = r["rejected"].as_u64().expect("a count");
        assert_eq!(decoded + rejected, 20_000, "{name}");
        // Fresh valid encodings alone are 5 % of the inputs; mutants that
        // still decode come on top.
        assert!(decoded > 1_000, "{name}: only {decoded} inputs decoded");
        assert!(rejected > 1_000, "{name}: only {rejected} inputs rejected");
        // Most inputs must get past the version byte and the size checks.
        let deep = r["reached_body"].as_f64().expect("a share");
        assert!(
            deep > 0.5,
            "{name}: only {deep} of the inputs reached the body"
        );
        assert!(
            r["max_heap_bytes"].as_u64().is_some_and(|b| b > 0),
            "{name}: the heap was not measured"
        );
    }
}

#[test]
fn an_unknown_decoder_name_is_refused_with_the_known_ones() {
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["fuzz", "--inputs", "10", "--only", "nope"])
        .output()
        .expect("the bench binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--only nope names no decoder") && stderr.contains("sync_message"),
        "{stderr}"
    );
}
