//! The pure answer core: parses a question in the `gossamer` zone and builds
//! the records from a [`DnsSource`]. No I/O and no clock, so every case is a
//! unit test.

use std::net::IpAddr;

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};

use super::{DnsSource, DnsTarget, ZONE};

/// One DNS question, as the core sees it.
#[derive(Debug, Clone, Copy)]
pub struct Question<'a> {
    /// The name asked, as received (answers repeat it).
    pub name: &'a Name,
    /// The record type asked.
    pub qtype: RecordType,
    /// The client's address: loopback instances are only for loopback clients.
    pub client: IpAddr,
}

/// What to send back.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// NOERROR, NXDOMAIN or REFUSED.
    pub rcode: ResponseCode,
    /// Answer section.
    pub answers: Vec<Record>,
    /// Authority section: the zone's SOA on negative answers, for negative caching.
    pub authority: Vec<Record>,
    /// Additional section: addresses of SRV targets.
    pub additionals: Vec<Record>,
}

/// What a name in the zone stands for.
#[derive(Debug, PartialEq, Eq)]
enum Parsed<'a> {
    /// `gossamer`, `service.gossamer`, `node.gossamer`: names that exist but hold no address.
    Structural { apex: bool },
    /// `[TAG.]NAME.service.gossamer`.
    Service { name: &'a str, tag: Option<&'a str> },
    /// `NODE.node.gossamer` or `INSTANCE.NODE.node.gossamer` (ids may hold dots).
    Node(&'a str),
    /// Any other name in the zone.
    Unknown,
}

/// Splits a lowercase name without its trailing dot; `None` when outside the zone.
fn parse(name: &str) -> Option<Parsed<'_>> {
    if name == ZONE {
        return Some(Parsed::Structural { apex: true });
    }
    let rest = name.strip_suffix(ZONE)?.strip_suffix('.')?;
    match rest {
        "service" | "node" => Some(Parsed::Structural { apex: false }),
        _ => {
            if let Some(service) = rest.strip_suffix(".service") {
                // Service names are DNS labels without dots; a tag may hold dots.
                Some(match service.rsplit_once('.') {
                    Some((tag, name)) => Parsed::Service {
                        name,
                        tag: Some(tag),
                    },
                    None => Parsed::Service {
                        name: service,
                        tag: None,
                    },
                })
            } else {
                Some(
                    rest.strip_suffix(".node")
                        .map_or(Parsed::Unknown, Parsed::Node),
                )
            }
        }
    }
}

/// Answers one question from `source`, with `ttl` seconds on every record.
pub fn answer(source: &dyn DnsSource, question: Question<'_>, ttl: u32) -> Answer {
    let text = question.name.to_ascii().to_ascii_lowercase();
    let text = text.strip_suffix('.').unwrap_or(&text);
    let Some(parsed) = parse(text) else {
        // Not our zone: we are no recursive resolver.
        return negative(ResponseCode::Refused, ttl, false);
    };
    let mut out = Builder::new(question, ttl);
    match parsed {
        Parsed::Structural { apex } => {
            if apex && matches!(question.qtype, RecordType::SOA | RecordType::ANY) {
                out.answers.push(soa(ttl));
            }
        }
        Parsed::Service { name, tag } => match source.service_answers(name, tag) {
            None => return negative(ResponseCode::NXDomain, ttl, true),
            Some(mut targets) => {
                targets.retain(|t| visible(t.addr.ip(), question.client));
                nearest_first(&mut targets);
                out.targets(&targets);
            }
        },
        Parsed::Unknown => return negative(ResponseCode::NXDomain, ttl, true),
        Parsed::Node(prefix) => match node_or_instance(source, prefix) {
            None => return negative(ResponseCode::NXDomain, ttl, true),
            Some(Found::Node(ip)) => {
                if visible(ip, question.client) {
                    out.address(question.name.clone(), ip);
                }
            }
            Some(Found::Instance(target)) => {
                if visible(target.addr.ip(), question.client) {
                    if question.qtype == RecordType::SRV {
                        out.targets(std::slice::from_ref(&target));
                    } else {
                        out.address(question.name.clone(), target.addr.ip());
                    }
                }
            }
        },
    }
    out.finish()
}

enum Found {
    Node(IpAddr),
    Instance(DnsTarget),
}

/// A node id first; else every split at a dot as `INSTANCE.NODE` (both kinds of id may hold dots).
fn node_or_instance(source: &dyn DnsSource, prefix: &str) -> Option<Found> {
    if prefix.is_empty() {
        return None;
    }
    if let Some(ip) = source.node_addr(prefix) {
        return Some(Found::Node(ip));
    }
    prefix
        .match_indices('.')
        .find_map(|(at, _)| source.instance(&prefix[..at], &prefix[at + 1..]))
        .map(Found::Instance)
}

/// An instance or node on loopback is reachable only from this machine.
fn visible(ip: IpAddr, client: IpAddr) -> bool {
    !ip.is_unspecified() && (!ip.is_loopback() || client.is_loopback())
}

/// Nearest first; unknown RTT last; instance id breaks ties so answers are stable.
fn nearest_first(targets: &mut [DnsTarget]) {
    targets.sort_by(|a, b| {
        let rtt = |t: &DnsTarget| t.rtt_ms.unwrap_or(f64::INFINITY);
        rtt(a)
            .total_cmp(&rtt(b))
            .then_with(|| a.instance.cmp(&b.instance))
    });
}

/// The name an SRV record points at: `INSTANCE.NODE.node.gossamer.`.
pub fn target_name(target: &DnsTarget) -> Option<Name> {
    Name::from_ascii(format!("{}.{}.node.{ZONE}.", target.instance, target.node)).ok()
}

fn zone_name(label: &str) -> Name {
    Name::from_ascii(format!("{label}{ZONE}.")).unwrap_or_else(|_| Name::root())
}

/// The zone's SOA; its minimum (the negative-caching TTL) is the record TTL.
fn soa(ttl: u32) -> Record {
    Record::from_rdata(
        zone_name(""),
        ttl,
        RData::SOA(SOA::new(
            zone_name("ns."),
            zone_name("hostmaster."),
            1,
            3600,
            600,
            86400,
            ttl,
        )),
    )
}

fn negative(rcode: ResponseCode, ttl: u32, in_zone: bool) -> Answer {
    Answer {
        rcode,
        answers: Vec::new(),
        authority: if in_zone { vec![soa(ttl)] } else { Vec::new() },
        additionals: Vec::new(),
    }
}

/// Collects the records of a positive answer for one question type.
struct Builder<'a> {
    question: Question<'a>,
    ttl: u32,
    answers: Vec<Record>,
    additionals: Vec<Record>,
}

impl<'a> Builder<'a> {
    fn new(question: Question<'a>, ttl: u32) -> Self {
        Self {
            question,
            ttl,
            answers: Vec::new(),
            additionals: Vec::new(),
        }
    }

    fn address_record(&self, name: Name, ip: IpAddr, qtype: RecordType) -> Option<Record> {
        let rdata = match (ip, qtype) {
            (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(v4)),
            (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(v6)),
            _ => return None,
        };
        Some(Record::from_rdata(name, self.ttl, rdata))
    }

    /// An A or AAAA record for `name` if the question asks for that family.
    fn address(&mut self, name: Name, ip: IpAddr) {
        if let Some(record) = self.address_record(name, ip, self.question.qtype) {
            self.answers.push(record);
        }
    }

    /// Addresses (deduplicated, in order) or SRV records of instances.
    fn targets(&mut self, targets: &[DnsTarget]) {
        if self.question.qtype == RecordType::SRV {
            for target in targets {
                // An id that makes no valid DNS label (over 63 bytes) has no SRV form.
                let Some(name) = target_name(target) else {
                    continue;
                };
                let srv = SRV::new(1, 1, target.addr.port(), name.clone());
                self.answers.push(Record::from_rdata(
                    self.question.name.clone(),
                    self.ttl,
                    RData::SRV(srv),
                ));
                // Saves the client a second round trip, as Consul does.
                if let Some(extra) = self.address_record(name, target.addr.ip(), RecordType::ANY) {
                    self.additionals.push(extra);
                }
            }
            return;
        }
        let mut seen = Vec::new();
        for target in targets {
            let ip = target.addr.ip();
            if !seen.contains(&ip) {
                seen.push(ip);
                self.address(self.question.name.clone(), ip);
            }
        }
    }

    fn finish(self) -> Answer {
        let empty = self.answers.is_empty();
        Answer {
            rcode: ResponseCode::NoError,
            answers: self.answers,
            // NODATA carries the SOA so resolvers cache it for the TTL only.
            authority: if empty {
                vec![soa(self.ttl)]
            } else {
                Vec::new()
            },
            additionals: self.additionals,
        }
    }
}
