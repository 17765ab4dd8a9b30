//! Renders the UI's model as HTML. Every text from the catalog, the
//! membership or a caller goes through [`escape`]; nothing is built from
//! raw names.

use std::fmt::Write as _;

use mesh_proto::api::{InstanceView, MemberState, RttSource};
use mesh_proto::catalog::Health;

use super::{Cell, Model};
use crate::decisions::describe;

/// Escapes `text` for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// The whole page: head, the live part, and the script.
pub fn page(model: &Model) -> String {
    let node = escape(&model.health.node_id);
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Gossamer · {node}</title><link rel=\"stylesheet\" href=\"/ui/app.css\"></head>\
<body><header><h1>Gossamer <span class=\"node\">{node}</span></h1>\
<span id=\"live-status\" data-state=\"static\">static page: reload to refresh</span></header>\
<main id=\"live\">{}</main>\
<script src=\"/ui/app.js\"></script></body></html>\n",
        live(model)
    )
}

/// The part of the page the script replaces on every change.
pub fn live(model: &Model) -> String {
    let mut out = String::new();
    let h = &model.health;
    let _ = write!(
        out,
        "<p class=\"summary\" data-index=\"{}\">catalog index {} · members alive {}, suspect {}, down {} · agent {}</p>",
        h.catalog_index,
        h.catalog_index,
        h.members.alive,
        h.members.suspect,
        h.members.down,
        escape(&h.version)
    );
    members(&mut out, model);
    matrix(&mut out, model);
    services(&mut out, model);
    decisions(&mut out, model);
    processes(&mut out, model);
    out
}

fn state_text(state: MemberState) -> &'static str {
    state.as_str()
}

fn source_text(source: RttSource) -> &'static str {
    match source {
        RttSource::Measured => "measured",
        RttSource::Estimated => "estimated",
        RttSource::Unknown => "unknown",
    }
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "—".to_owned(), |v| format!("{v:.1} ms"))
}

fn members(out: &mut String, model: &Model) {
    out.push_str(
        "<section id=\"members\"><h2>Members</h2><table><thead><tr><th>node</th><th>state</th>\
<th>RTT</th><th>source</th><th>last heard</th><th>address</th><th>zone</th></tr></thead><tbody>",
    );
    for n in &model.nodes {
        let heard = match (n.is_self, n.last_heard_ms) {
            (true, _) => "this node".to_owned(),
            (false, Some(ms)) => format!("{:.1} s ago", ms as f64 / 1000.0),
            (false, None) => "never".to_owned(),
        };
        let zone = n
            .meta
            .as_ref()
            .and_then(|m| m.zone.clone())
            .unwrap_or_default();
        let _ = write!(
            out,
            "<tr class=\"member\" data-node=\"{id}\" data-state=\"{state}\"><td>{id}{me}</td><td class=\"state-{state}\">{state}</td>\
<td>{rtt}</td><td>{source}</td><td>{heard}</td><td>{addr}</td><td>{zone}</td></tr>",
            id = escape(&n.id),
            me = if n.is_self { " (this node)" } else { "" },
            state = state_text(n.state),
            rtt = ms(n.rtt_ms),
            source = source_text(n.rtt_source),
            addr = escape(&n.address),
            zone = escape(&zone),
        );
    }
    out.push_str("</tbody></table></section>");
}

fn matrix(out: &mut String, model: &Model) {
    out.push_str("<section id=\"matrix\"><h2>RTT between nodes</h2><p class=\"legend\">Row: from; column: to. \
This node's row is what it <b>measured</b> (QUIC path RTT, smoothed) or, for a node it never measured, \
its own <b>estimate</b> (Vivaldi coordinates). Other rows are <b>estimates from the coordinates both nodes \
published</b> in the catalog: no node publishes its measurements.");
    if let Some(hard) = model.strictest_hard_ms {
        let _ = write!(
            out,
            " Cells over {hard} ms, the strictest hard requirement of any service, are marked."
        );
    }
    out.push_str("</p><table class=\"matrix\"><thead><tr><th>from \\ to</th>");
    for n in &model.nodes {
        let _ = write!(out, "<th>{}</th>", escape(&n.id));
    }
    out.push_str("</tr></thead><tbody>");
    for (from, row) in model.nodes.iter().zip(&model.matrix) {
        let _ = write!(out, "<tr><th>{}</th>", escape(&from.id));
        for (to, cell) in model.nodes.iter().zip(row) {
            let (kind, value) = match cell {
                Cell::Zero => ("self", Some(0.0)),
                Cell::Measured(v) => ("measured", Some(*v)),
                Cell::Estimated(v) => ("estimated", Some(*v)),
                Cell::Published(v) => ("published-estimate", Some(*v)),
                Cell::Unknown => ("unknown", None),
            };
            let over = match (value, model.strictest_hard_ms) {
                (Some(v), Some(hard)) => v > f64::from(hard),
                _ => false,
            };
            let label = match cell {
                Cell::Zero => "—".to_owned(),
                Cell::Unknown => "unknown".to_owned(),
                Cell::Measured(v) => format!("{v:.1} ms measured"),
                Cell::Estimated(v) => format!("{v:.1} ms estimated"),
                Cell::Published(v) => format!("≈{v:.1} ms from coordinates"),
            };
            let _ = write!(
                out,
                "<td class=\"cell {kind}{over_class}\" data-from=\"{f}\" data-to=\"{t}\" data-source=\"{kind}\" data-over-hard=\"{over}\" style=\"{heat}\">{label}{over_text}</td>",
                over_class = if over { " over-hard" } else { "" },
                f = escape(&from.id),
                t = escape(&to.id),
                heat = heat(value),
                over_text = if over { " <span class=\"flag\">over hard</span>" } else { "" },
            );
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></section>");
}

/// A background from green (0 ms) to red (100 ms and more).
fn heat(value: Option<f64>) -> String {
    match value {
        Some(v) => {
            let hue = 120.0 - (v.clamp(0.0, 100.0) * 1.2);
            format!("background: hsl({hue:.0} 70% 85%)")
        }
        None => String::new(),
    }
}

fn health_text(health: Health) -> &'static str {
    match health {
        Health::Passing => "passing",
        Health::Warning => "warning",
        Health::Critical => "critical",
    }
}

fn services(out: &mut String, model: &Model) {
    out.push_str("<section id=\"services\"><h2>Services</h2>");
    if model.services.is_empty() {
        out.push_str("<p>No service in the catalog.</p>");
    }
    for (s, definition) in &model.services {
        let req = |v: Option<u32>| v.map_or_else(|| "none".to_owned(), |v| format!("{v} ms"));
        let about = match definition {
            Some(d) => format!(
                "version {} · image {}",
                escape(&d.version),
                escape(d.image.as_deref().unwrap_or("—"))
            ),
            None => "no definition (instances only)".to_owned(),
        };
        let _ = write!(
            out,
            "<div class=\"service\" data-service=\"{name}\"><h3>{name}</h3><p class=\"definition\">{about}</p>\
<p>hard RTT {hard} · soft RTT {soft} · {e} eligible, {i} not</p><table><thead><tr><th>instance</th><th>node</th>\
<th>address</th><th>tags</th><th>health</th><th>RTT</th><th>eligible</th></tr></thead><tbody>",
            name = escape(&s.service),
            hard = req(s.hard_rtt_ms),
            soft = req(s.soft_rtt_ms),
            e = s.eligible.len(),
            i = s.ineligible.len(),
        );
        for view in s.eligible.iter().chain(&s.ineligible) {
            instance_row(out, view, s.soft_rtt_ms.is_some());
        }
        out.push_str("</tbody></table></div>");
    }
    out.push_str("</section>");
}

fn instance_row(out: &mut String, view: &InstanceView, has_soft: bool) {
    let i = &view.instance;
    let eligibility = match &view.ineligible {
        None if has_soft && view.within_soft => "yes (within soft)".to_owned(),
        None => "yes".to_owned(),
        Some(reason) => format!("no: {}", describe(reason)),
    };
    let _ = write!(
        out,
        "<tr class=\"instance\" data-instance=\"{id}\" data-eligible=\"{ok}\"><td>{id}</td><td>{node}</td><td>{addr}</td>\
<td>{tags}</td><td class=\"health-{h}\">{h}</td><td>{rtt} <small>{source}</small></td><td>{why}</td></tr>",
        id = escape(&i.id),
        ok = view.ineligible.is_none(),
        node = escape(i.node.as_str()),
        addr = escape(&i.address.to_string()),
        tags = escape(&i.tags.join(", ")),
        h = health_text(i.health),
        rtt = ms(view.rtt_ms),
        source = source_text(view.rtt_source),
        why = escape(&eligibility),
    );
}

fn decisions(out: &mut String, model: &Model) {
    out.push_str(
        "<section id=\"decisions\"><h2>Recent routing decisions of this node</h2>\
<table><thead><tr><th>when</th><th>service</th><th>picked</th><th>why</th><th>not picked</th></tr></thead><tbody>",
    );
    if model.decisions.is_empty() {
        out.push_str("<tr><td colspan=\"5\">No call through this node's proxy yet.</td></tr>");
    }
    let now = crate::catalog::wall_ms();
    for d in &model.decisions {
        let picked = match &d.picked {
            Some(p) => format!("{} ({})", escape(p), ms(d.rtt_ms)),
            None => "<b>none</b>".to_owned(),
        };
        let mut rejected = String::new();
        for r in &d.rejected {
            let _ = write!(
                rejected,
                "<li class=\"rejected\">{}: {}</li>",
                escape(&r.upstream),
                escape(&describe(&r.reason))
            );
        }
        if d.eligible_others > 0 {
            let _ = write!(
                rejected,
                "<li>{} other eligible instance(s), not picked this time</li>",
                d.eligible_others
            );
        }
        let _ = write!(
            out,
            "<tr class=\"decision\" data-service=\"{svc}\"><td>{ago:.1} s ago</td><td>{svc}</td><td>{picked}</td>\
<td>{why}</td><td><ul>{rejected}</ul></td></tr>",
            ago = now.saturating_sub(d.at_ms) as f64 / 1000.0,
            svc = escape(&d.service),
            why = escape(&d.why),
        );
    }
    out.push_str("</tbody></table></section>");
}

fn processes(out: &mut String, model: &Model) {
    out.push_str("<section id=\"processes\"><h2>Supervised processes</h2>");
    if model.ps.processes.is_empty() {
        out.push_str("<p>This agent supervises no process (<code>--exec</code>, <code>[[supervise]]</code>).</p>");
    } else {
        out.push_str("<table><thead><tr><th>service</th><th>instance</th><th>pid</th><th>port</th><th>state</th>\
<th>restarts</th><th>last exit</th></tr></thead><tbody>");
        for p in &model.ps.processes {
            let _ = write!(
                out,
                "<tr class=\"process\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&p.service),
                escape(&p.instance),
                p.pid.map(|v| v.to_string()).unwrap_or_default(),
                p.port.map(|v| v.to_string()).unwrap_or_default(),
                escape(&format!("{:?}", p.state)),
                p.restarts,
                escape(p.last_exit.as_deref().unwrap_or("")),
            );
        }
        out.push_str("</tbody></table>");
    }
    for tail in &model.logs {
        let _ = write!(
            out,
            "<h3>Log tail: {}</h3><pre class=\"log\">",
            escape(&tail.service)
        );
        for line in &tail.lines {
            let _ = writeln!(out, "{} {}", escape(&line.instance), escape(&line.text));
        }
        out.push_str("</pre>");
    }
    out.push_str("</section>");
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn names_render_as_text() {
        assert_eq!(
            escape("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
    }
}
