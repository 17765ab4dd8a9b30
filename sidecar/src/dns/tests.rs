//! The answer core against an in-memory source.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::{Name, RData, RecordType};

use super::{answer, Answer, DnsSource, DnsTarget, Question};

#[derive(Default)]
struct Fake {
    /// service -> (tags, target) of its eligible instances; present = known.
    services: BTreeMap<String, Vec<(Vec<&'static str>, DnsTarget)>>,
    nodes: BTreeMap<String, IpAddr>,
}

impl DnsSource for Fake {
    fn service_answers(&self, service: &str, tag: Option<&str>) -> Option<Vec<DnsTarget>> {
        let all = self.services.get(service)?;
        Some(
            all.iter()
                .filter(|(tags, _)| tag.is_none_or(|t| tags.contains(&t)))
                .map(|(_, t)| t.clone())
                .collect(),
        )
    }
    fn node_addr(&self, node: &str) -> Option<IpAddr> {
        self.nodes.get(node).copied()
    }
    fn instance(&self, instance: &str, node: &str) -> Option<DnsTarget> {
        self.services
            .values()
            .flatten()
            .map(|(_, t)| t)
            .find(|t| t.instance == instance && t.node == node)
            .cloned()
    }
}

fn target(instance: &str, node: &str, addr: &str, rtt_ms: Option<f64>) -> DnsTarget {
    DnsTarget {
        instance: instance.to_owned(),
        node: node.to_owned(),
        addr: addr.parse::<SocketAddr>().expect("addr"),
        rtt_ms,
    }
}

fn mesh() -> Fake {
    let mut fake = Fake::default();
    fake.services.insert(
        "web".into(),
        vec![
            (
                vec!["v2"],
                target("web-far", "node-c", "10.0.0.3:80", Some(40.0)),
            ),
            (
                vec!["v1"],
                target("web-near", "node-b", "10.0.0.2:8080", Some(5.0)),
            ),
            (
                vec![],
                target("web-v6", "node-b", "[fd00::2]:80", Some(5.0)),
            ),
            (
                vec![],
                target("web-local", "node-a", "127.0.0.1:81", Some(0.0)),
            ),
        ],
    );
    fake.services.insert("idle".into(), Vec::new());
    fake.nodes
        .insert("node-b".into(), "10.0.0.2".parse().expect("ip"));
    fake
}

fn ask(source: &Fake, name: &str, qtype: RecordType, client: &str) -> Answer {
    let name = Name::from_ascii(name).expect("name");
    let question = Question {
        name: &name,
        qtype,
        client: client.parse().expect("client ip"),
    };
    answer(source, question, 5)
}

fn addresses(answer: &Answer) -> Vec<String> {
    answer
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::A(a) => a.0.to_string(),
            RData::AAAA(a) => a.0.to_string(),
            RData::SRV(s) => format!("{} {}", s.port, s.target),
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn service_a_records_are_nearest_first_and_loopback_only_for_loopback_clients() {
    let fake = mesh();
    let local = ask(&fake, "web.service.gossamer.", RecordType::A, "127.0.0.1");
    assert_eq!(local.rcode, ResponseCode::NoError);
    assert_eq!(addresses(&local), ["127.0.0.1", "10.0.0.2", "10.0.0.3"]);
    assert!(local.answers.iter().all(|r| r.ttl == 5));
    let remote = ask(&fake, "WEB.Service.Gossamer", RecordType::A, "10.9.9.9");
    assert_eq!(addresses(&remote), ["10.0.0.2", "10.0.0.3"]);
    let v6 = ask(&fake, "web.service.gossamer", RecordType::AAAA, "10.9.9.9");
    assert_eq!(addresses(&v6), ["fd00::2"]);
}

#[test]
fn srv_names_a_target_that_resolves_and_carries_its_address() {
    let fake = mesh();
    let srv = ask(&fake, "web.service.gossamer", RecordType::SRV, "10.9.9.9");
    assert_eq!(
        addresses(&srv)[..2],
        [
            "8080 web-near.node-b.node.gossamer.",
            "80 web-v6.node-b.node.gossamer."
        ]
    );
    assert_eq!(srv.additionals.len(), srv.answers.len());
    let target = ask(
        &fake,
        "web-near.node-b.node.gossamer",
        RecordType::A,
        "10.9.9.9",
    );
    assert_eq!(addresses(&target), ["10.0.0.2"]);
    let node = ask(&fake, "node-b.node.gossamer", RecordType::A, "10.9.9.9");
    assert_eq!(addresses(&node), ["10.0.0.2"]);
}

#[test]
fn tags_filter_and_unknown_names_are_nxdomain_with_the_soa() {
    let fake = mesh();
    let v1 = ask(&fake, "v1.web.service.gossamer", RecordType::A, "10.9.9.9");
    assert_eq!(addresses(&v1), ["10.0.0.2"]);
    for name in [
        "nope.service.gossamer",
        "node-z.node.gossamer",
        "x.web-near.node-z.node.gossamer",
        "what.gossamer",
    ] {
        let nx = ask(&fake, name, RecordType::A, "127.0.0.1");
        assert_eq!(nx.rcode, ResponseCode::NXDomain, "{name}");
        assert_eq!(nx.authority.len(), 1, "{name}: SOA for negative caching");
    }
    let outside = ask(&fake, "example.com", RecordType::A, "127.0.0.1");
    assert_eq!(outside.rcode, ResponseCode::Refused);
}

#[test]
fn known_names_with_nothing_eligible_are_an_empty_noerror() {
    let fake = mesh();
    for (name, qtype) in [
        ("idle.service.gossamer", RecordType::A),
        ("nosuchtag.web.service.gossamer", RecordType::A),
        ("web.service.gossamer", RecordType::TXT),
        ("node-b.node.gossamer", RecordType::AAAA),
        ("service.gossamer", RecordType::A),
    ] {
        let empty = ask(&fake, name, qtype, "127.0.0.1");
        assert_eq!(empty.rcode, ResponseCode::NoError, "{name}");
        assert!(empty.answers.is_empty(), "{name}");
        assert_eq!(empty.authority.len(), 1, "{name}");
    }
    let soa = ask(&fake, "gossamer", RecordType::SOA, "127.0.0.1");
    assert_eq!(soa.answers.len(), 1);
}
