//! The Grafana dashboard's queries, read the way Prometheus would: shared by
//! the file checks (`deploy_files.rs`) and the live scrape (`metrics.rs`).
#![allow(dead_code)]

use std::collections::BTreeSet;

use serde_json::Value as Json;

pub fn load_dashboard() -> Json {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/grafana/gossamer-dashboard.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

/// Every panel, with the panels nested in collapsed rows.
pub fn dashboard_panels(dashboard: &Json) -> Vec<&Json> {
    fn collect<'a>(panels: &'a Json, out: &mut Vec<&'a Json>) {
        for panel in panels.as_array().into_iter().flatten() {
            out.push(panel);
            if let Some(nested) = panel.get("panels") {
                collect(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    collect(&dashboard["panels"], &mut out);
    out
}

/// Every PromQL query of the dashboard: panel targets and template variables.
pub fn dashboard_queries(dashboard: &Json) -> Vec<String> {
    let mut queries: Vec<String> = dashboard_panels(dashboard)
        .into_iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] == "query" {
            let query = var["query"]["query"].as_str().or(var["query"].as_str());
            queries.extend(query.map(str::to_owned));
        }
    }
    queries
}

/// The `gossamer_*` and `process_*` metric names a PromQL expression reads,
/// histogram series (`_bucket`, `_sum`, `_count`) folded into their base name.
pub fn metric_names_in(expr: &str) -> BTreeSet<String> {
    let bytes = expr.as_bytes();
    let mut names = BTreeSet::new();
    for prefix in ["gossamer_", "process_"] {
        let mut from = 0;
        while let Some(found) = expr[from..].find(prefix) {
            let start = from + found;
            let mut end = start + prefix.len();
            while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
                end += 1;
            }
            let inside_word = start > 0
                && (bytes[start - 1].is_ascii_alphanumeric()
                    || matches!(bytes[start - 1], b'_' | b'$'));
            if !inside_word {
                let name = &expr[start..end];
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(name);
                names.insert(base.to_owned());
            }
            from = end;
        }
    }
    names
}

/// The metric names the Grafana dashboard queries (panels and variables), by
/// base name. A test against a live agent can check each against a scrape.
pub fn dashboard_metric_names(dashboard: &Json) -> BTreeSet<String> {
    dashboard_queries(dashboard)
        .iter()
        .flat_map(|q| metric_names_in(q))
        .collect()
}
