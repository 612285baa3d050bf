//! The environment's names as DNS sees them, and the answers they get. Pure: no sockets here,
//! so the whole query path can be tested (and fuzzed) without a server.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};

use crate::Error;

/// The proxy's addresses as one listener's askers reach it: 127.0.0.1/::1 on loopback, the
/// network gateway for containers. A family without an address gets no records (NODATA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProxyAddrs {
    /// Answer for A queries.
    pub v4: Option<Ipv4Addr>,
    /// Answer for AAAA queries.
    pub v6: Option<Ipv6Addr>,
}

/// A snapshot of the names itproxy is authoritative for, immutable once published.
///
/// * A name that is routed, or lies below a routed name, resolves to the proxy.
/// * A TCP-only name resolves to its own addresses.
/// * Each domain apex has an SOA and an NS record (`ns.<domain>`, which resolves to the proxy).
/// * Anything else in the domains is NXDOMAIN; names outside them are not ours.
///
/// The name sets are persistent maps: a clone shares them, and [`Zone::set_routed`] /
/// [`Zone::set_direct`] copy one path, so the daemon changes a copy of the published zone by
/// the names a change touched instead of building a new one from every route.
#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    domains: Vec<LowerName>,
    /// `ns.<domain>` for each domain: the name servers the apex NS records point at.
    ns_names: HashSet<LowerName>,
    routed: imbl::HashSet<LowerName>,
    direct: imbl::HashMap<LowerName, Arc<[IpAddr]>>,
    serial: u32,
    ttl: u32,
}

/// What the zone says about a query.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The name is not in our domains: forward it (or refuse).
    NotOurs,
    /// An authoritative answer: code, answer records, authority records.
    Authoritative {
        /// NOERROR or NXDOMAIN.
        code: ResponseCode,
        /// Answer section.
        answers: Vec<Record>,
        /// Authority section (the SOA for negative answers, NS for the apex).
        authority: Vec<Record>,
    },
}

fn parse_name(s: &str) -> Result<LowerName, Error> {
    let mut name = Name::from_ascii(s).map_err(|e| Error::Name {
        name: s.into(),
        message: e.to_string(),
    })?;
    name.set_fqdn(true);
    Ok(LowerName::new(&name))
}

impl Zone {
    /// A zone for `domains` (at least one) with `routed` names answered by the proxy and
    /// `direct` names answered with their own addresses. `serial` should grow with every
    /// change; `ttl` applies to every record and to negative answers.
    pub fn new<'a>(
        domains: impl IntoIterator<Item = &'a str>,
        routed: impl IntoIterator<Item = &'a str>,
        direct: impl IntoIterator<Item = (&'a str, Vec<IpAddr>)>,
        serial: u32,
        ttl: u32,
    ) -> Result<Zone, Error> {
        let domains = domains
            .into_iter()
            .map(parse_name)
            .collect::<Result<Vec<_>, _>>()?;
        if domains.is_empty() {
            return Err(Error::NoDomain);
        }
        let routed = routed
            .into_iter()
            .map(parse_name)
            .collect::<Result<_, _>>()?;
        let direct = direct
            .into_iter()
            .map(|(n, a)| parse_name(n).map(|n| (n, Arc::from(a))))
            .collect::<Result<_, _>>()?;
        let ns_names = domains
            .iter()
            .filter_map(|d| {
                Name::from_ascii("ns")
                    .ok()?
                    .append_domain(&Name::from(d))
                    .ok()
            })
            .map(|n| LowerName::new(&n))
            .collect();
        Ok(Zone {
            domains,
            ns_names,
            routed,
            direct,
            serial,
            ttl,
        })
    }

    /// Record TTL in seconds.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// Makes `name` resolve to the proxy (`true`) or not (`false`).
    pub fn set_routed(&mut self, name: &str, routed: bool) -> Result<(), Error> {
        let name = parse_name(name)?;
        if routed {
            self.routed.insert(name);
        } else {
            self.routed.remove(&name);
        }
        Ok(())
    }

    /// Makes `name` resolve to its own `addrs` (`None`: it has none of its own).
    pub fn set_direct(&mut self, name: &str, addrs: Option<Vec<IpAddr>>) -> Result<(), Error> {
        let name = parse_name(name)?;
        match addrs {
            Some(addrs) => {
                self.direct.insert(name, Arc::from(addrs));
            }
            None => {
                self.direct.remove(&name);
            }
        }
        Ok(())
    }

    /// Sets the SOA serial (it should grow with every change).
    pub fn set_serial(&mut self, serial: u32) {
        self.serial = serial;
    }

    /// The most specific of our domains that contains `name`.
    fn domain_of(&self, name: &LowerName) -> Option<&LowerName> {
        self.domains
            .iter()
            .filter(|d| d.zone_of(name))
            .max_by_key(|d| d.num_labels())
    }

    fn is_routed(&self, name: &LowerName, apex: &LowerName) -> bool {
        let mut n = name.clone();
        while n.num_labels() > apex.num_labels() {
            if self.routed.contains(&n) {
                return true;
            }
            n = n.base_name();
        }
        false
    }

    fn soa(&self, apex: &LowerName) -> Record {
        let apex = Name::from(apex);
        let mname = Name::from_ascii("ns")
            .unwrap()
            .append_domain(&apex)
            .unwrap_or(apex.clone());
        let rname = Name::from_ascii("hostmaster")
            .unwrap()
            .append_domain(&apex)
            .unwrap_or(apex.clone());
        let soa = SOA::new(mname, rname, self.serial, 3600, 600, 86400, self.ttl);
        Record::from_rdata(apex, self.ttl, RData::SOA(soa))
    }

    fn ns(&self, apex: &LowerName) -> Record {
        let apex = Name::from(apex);
        let ns = Name::from_ascii("ns")
            .unwrap()
            .append_domain(&apex)
            .unwrap_or(apex.clone());
        Record::from_rdata(apex, self.ttl, RData::NS(NS(ns)))
    }

    fn addresses(
        &self,
        name: &Name,
        qtype: RecordType,
        v4: &[Ipv4Addr],
        v6: &[Ipv6Addr],
    ) -> Vec<Record> {
        let mut out = Vec::new();
        if matches!(qtype, RecordType::A | RecordType::ANY) {
            out.extend(
                v4.iter()
                    .map(|ip| Record::from_rdata(name.clone(), self.ttl, RData::A(A(*ip)))),
            );
        }
        if matches!(qtype, RecordType::AAAA | RecordType::ANY) {
            out.extend(
                v6.iter()
                    .map(|ip| Record::from_rdata(name.clone(), self.ttl, RData::AAAA(AAAA(*ip)))),
            );
        }
        out
    }

    /// Where `name` stands in the zone: the one place that decides it, for [`Zone::answer`]
    /// and for the UDP fast path.
    pub(crate) fn find(&self, name: &LowerName) -> Found<'_> {
        let Some(apex) = self.domain_of(name) else {
            return Found::NotOurs;
        };
        if name == apex {
            return Found::Apex(apex);
        }
        if let Some(addrs) = self.direct.get(name) {
            return Found::Direct(apex, addrs);
        }
        if self.is_routed(name, apex) || self.ns_names.contains(name) {
            return Found::Proxy(apex);
        }
        Found::Missing(apex)
    }

    /// The SOA serial.
    pub(crate) fn serial(&self) -> u32 {
        self.serial
    }

    /// The answer to `qtype` for `name`, as seen through a listener whose proxy is `view`.
    pub fn answer(&self, name: &LowerName, qtype: RecordType, view: &ProxyAddrs) -> Answer {
        let owner = Name::from(name);
        let positive = |apex: &LowerName, answers: Vec<Record>| Answer::Authoritative {
            code: ResponseCode::NoError,
            authority: if answers.is_empty() {
                vec![self.soa(apex)]
            } else {
                vec![]
            },
            answers,
        };
        match self.find(name) {
            Found::NotOurs => Answer::NotOurs,
            Found::Apex(apex) => {
                let mut answers = Vec::new();
                if matches!(qtype, RecordType::SOA | RecordType::ANY) {
                    answers.push(self.soa(apex));
                }
                if matches!(qtype, RecordType::NS | RecordType::ANY) {
                    answers.push(self.ns(apex));
                }
                positive(apex, answers)
            }
            Found::Direct(apex, addrs) => {
                let v4: Vec<Ipv4Addr> = addrs
                    .iter()
                    .filter_map(|a| match a {
                        IpAddr::V4(v) => Some(*v),
                        _ => None,
                    })
                    .collect();
                let v6: Vec<Ipv6Addr> = addrs
                    .iter()
                    .filter_map(|a| match a {
                        IpAddr::V6(v) => Some(*v),
                        _ => None,
                    })
                    .collect();
                positive(apex, self.addresses(&owner, qtype, &v4, &v6))
            }
            Found::Proxy(apex) => {
                let v4: Vec<Ipv4Addr> = view.v4.into_iter().collect();
                let v6: Vec<Ipv6Addr> = view.v6.into_iter().collect();
                positive(apex, self.addresses(&owner, qtype, &v4, &v6))
            }
            Found::Missing(apex) => Answer::Authoritative {
                code: ResponseCode::NXDomain,
                answers: vec![],
                authority: vec![self.soa(apex)],
            },
        }
    }
}

/// Where a name stands in the zone, each with the apex of the domain it is in.
pub(crate) enum Found<'z> {
    /// Outside our domains.
    NotOurs,
    /// A domain's apex (SOA and NS).
    Apex(&'z LowerName),
    /// A TCP-only name: its own addresses.
    Direct(&'z LowerName, &'z [IpAddr]),
    /// A routed name (or one below it, or `ns.<domain>`): the proxy's address.
    Proxy(&'z LowerName),
    /// In our domains but unknown: NXDOMAIN.
    Missing(&'z LowerName),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> Zone {
        Zone::new(
            ["test"],
            ["api.test", "web.test"],
            [("db.test", vec!["172.18.0.5".parse().unwrap()])],
            7,
            5,
        )
        .unwrap()
    }

    const VIEW: ProxyAddrs = ProxyAddrs {
        v4: Some(Ipv4Addr::LOCALHOST),
        v6: Some(Ipv6Addr::LOCALHOST),
    };

    fn q(name: &str, t: RecordType) -> Answer {
        zone().answer(&parse_name(name).unwrap(), t, &VIEW)
    }

    fn rdata(a: &Answer) -> Vec<String> {
        match a {
            Answer::Authoritative { answers, .. } => {
                answers.iter().map(|r| r.data.to_string()).collect()
            }
            Answer::NotOurs => vec!["not ours".into()],
        }
    }

    fn code(a: &Answer) -> ResponseCode {
        match a {
            Answer::Authoritative { code, .. } => *code,
            Answer::NotOurs => ResponseCode::Refused,
        }
    }

    #[test]
    fn routed_names_and_names_below_them_resolve_to_the_proxy() {
        assert_eq!(rdata(&q("api.test", RecordType::A)), ["127.0.0.1"]);
        assert_eq!(rdata(&q("API.Test.", RecordType::A)), ["127.0.0.1"]);
        assert_eq!(rdata(&q("api.test", RecordType::AAAA)), ["::1"]);
        assert_eq!(rdata(&q("v2.api.test", RecordType::A)), ["127.0.0.1"]);
        assert_eq!(rdata(&q("ns.test", RecordType::A)), ["127.0.0.1"]);
        let gateway = ProxyAddrs {
            v4: Some("172.18.0.1".parse().unwrap()),
            v6: None,
        };
        let a = zone().answer(&parse_name("api.test").unwrap(), RecordType::A, &gateway);
        assert_eq!(rdata(&a), ["172.18.0.1"]);
        let a = zone().answer(&parse_name("api.test").unwrap(), RecordType::AAAA, &gateway);
        assert_eq!(
            (code(&a), rdata(&a).len()),
            (ResponseCode::NoError, 0),
            "NODATA without IPv6"
        );
    }

    #[test]
    fn tcp_only_names_resolve_to_their_own_address() {
        assert_eq!(rdata(&q("db.test", RecordType::A)), ["172.18.0.5"]);
        assert!(rdata(&q("db.test", RecordType::AAAA)).is_empty());
    }

    #[test]
    fn negative_answers_carry_the_soa() {
        for (name, t, want) in [
            ("nope.test", RecordType::A, ResponseCode::NXDomain),
            ("a.nope.test", RecordType::A, ResponseCode::NXDomain),
            ("api.test", RecordType::MX, ResponseCode::NoError),
            ("test", RecordType::A, ResponseCode::NoError),
        ] {
            match q(name, t) {
                Answer::Authoritative {
                    code,
                    answers,
                    authority,
                } => {
                    assert_eq!(code, want, "{name}");
                    assert!(answers.is_empty(), "{name}");
                    assert_eq!(authority.len(), 1);
                    assert_eq!(authority[0].record_type(), RecordType::SOA);
                    assert_eq!(authority[0].ttl, 5);
                }
                Answer::NotOurs => panic!("{name}"),
            }
        }
    }

    #[test]
    fn apex_has_soa_and_ns() {
        let a = q("test", RecordType::SOA);
        assert!(
            rdata(&a)[0].starts_with("ns.test. hostmaster.test. 7 "),
            "{:?}",
            rdata(&a)
        );
        assert_eq!(rdata(&q("test", RecordType::NS)), ["ns.test."]);
    }

    #[test]
    fn other_names_are_not_ours() {
        for n in ["example.com", "latest", "test.com", "."] {
            assert_eq!(q(n, RecordType::A), Answer::NotOurs, "{n}");
        }
    }

    #[test]
    fn a_changed_copy_leaves_the_published_zone_as_it_was() {
        let published = zone();
        let mut next = published.clone();
        next.set_routed("new.test", true).unwrap();
        next.set_routed("api.test", false).unwrap();
        next.set_direct("db.test", None).unwrap();
        next.set_direct("cache.test", Some(vec!["172.18.0.9".parse().unwrap()]))
            .unwrap();
        let a = |z: &Zone, n: &str| rdata(&z.answer(&parse_name(n).unwrap(), RecordType::A, &VIEW));
        assert_eq!(a(&next, "new.test"), ["127.0.0.1"]);
        assert!(a(&next, "api.test").is_empty());
        assert!(a(&next, "db.test").is_empty());
        assert_eq!(a(&next, "cache.test"), ["172.18.0.9"]);
        assert_eq!(a(&published, "api.test"), ["127.0.0.1"]);
        assert_eq!(a(&published, "db.test"), ["172.18.0.5"]);
        assert!(a(&published, "new.test").is_empty());
        assert_ne!(published, next);
        assert!(next.set_routed("bad name..", true).is_err());
    }

    #[test]
    fn bad_names_are_rejected() {
        assert!(Zone::new(["te st.."], [], [], 1, 5).is_err());
        assert!(Zone::new([], [], [], 1, 5).is_err());
    }
}

#[cfg(test)]
mod fuzz {
    //! The query path must answer anything a packet can carry without panicking.
    use super::*;
    use hickory_server::proto::op::Message;
    use proptest::prelude::*;

    fn zone() -> Zone {
        Zone::new(
            ["test", "dev.internal"],
            ["api.test", "a.b.dev.internal"],
            [("db.test", vec!["10.0.0.5".parse().unwrap()])],
            1,
            5,
        )
        .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_packets_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let z = zone();
            let view = ProxyAddrs { v4: Some(Ipv4Addr::LOCALHOST), v6: None };
            if let Ok(msg) = Message::from_vec(&bytes) {
                for q in msg.queries.iter() {
                    let _ = z.answer(&LowerName::new(&q.name), q.query_type, &view);
                }
            }
        }

        #[test]
        fn arbitrary_names_never_panic(labels in proptest::collection::vec("[a-zA-Z0-9_-]{0,70}", 0..8), t in any::<u16>()) {
            let z = zone();
            let view = ProxyAddrs::default();
            if let Ok(name) = Name::from_labels(labels.iter().map(|l| l.as_bytes())) {
                let _ = z.answer(&LowerName::new(&name), RecordType::from(t), &view);
            }
        }
    }
}
