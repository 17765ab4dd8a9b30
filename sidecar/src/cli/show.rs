//! `gossamer services get NAME` for people: every field of a definition,
//! one per line, absent ones left out (`--json` prints the definition whole).

use std::fmt::Write;

use mesh_proto::catalog::Definition;

/// The definition as `field: value` lines.
pub fn definition(d: &Definition) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: &dyn std::fmt::Display| {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{key:<26}{value}");
    };
    line("name", &d.name);
    if !d.version.is_empty() {
        line("version", &d.version);
    }
    if let Some(image) = &d.image {
        line("image", image);
    }
    if let Some(port) = d.port {
        line("port", &port);
    }
    if let Some(port) = d.host_port {
        line("host_port", &port);
    }
    if let Some(repository) = &d.repository {
        line("repository.url", &repository.url);
        if let Some(file) = &repository.container_file {
            line("repository.container_file", file);
        }
    }
    for (name, url) in &d.endpoints {
        line(&format!("endpoint {name}"), url);
    }
    for (language, url) in &d.client_sdks {
        line(&format!("client_sdk {language}"), url);
    }
    let r = &d.requirements;
    let requirements = [
        ("soft_rtt_ms", r.soft_rtt_ms),
        ("hard_rtt_ms", r.hard_rtt_ms),
        ("cpu_millis", r.cpu_millis),
        ("memory_mb", r.memory_mb),
    ];
    for (key, value) in requirements {
        if let Some(value) = value {
            line(key, &value);
        }
    }
    line("content_hash", &d.content_hash);
    out
}
