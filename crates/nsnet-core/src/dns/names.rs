//! The resolver's table: which names each sandbox may resolve, and to what. Pure data, no sockets.
//!
//! A sandbox sees the names (and aliases) of the sandboxes on the networks it is on, and nothing else: a name
//! on a network it does not share gets the same answer as a name nobody has.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};

use super::{upstream, Member};

/// What the question asks for, as far as the table is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    A,
    Ptr,
    /// Any other type: a local name has none of them (an empty answer, not NXDOMAIN, so the asker's A query is
    /// not spoiled by a failed AAAA one).
    Other,
}

/// The table's answer to one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A local name's addresses, in this answer's order.
    Addresses(Vec<Ipv4Addr>),
    /// A local name, with nothing of the type asked.
    NoData,
    /// A local address's name.
    Pointer(String),
    /// Not local: ask these servers.
    Forward(Vec<SocketAddr>),
    /// Not local, and the asker's networks forward nothing (`--internal`), or there is no server to ask.
    NxDomain,
    /// The asker is not a sandbox the table knows (it was removed a moment ago).
    Refused,
}

/// Every network's names, built from the members.
#[derive(Debug, Default)]
pub struct Names {
    members: HashMap<String, Member>,
    networks: HashMap<String, Network>,
    /// Turns each answer with several addresses by one more place, so clients that take the first spread out.
    turn: usize,
}

/// One network's names (lowercase, no trailing dot) and addresses.
#[derive(Debug, Default)]
struct Network {
    addresses: HashMap<String, Vec<Ipv4Addr>>,
    names: HashMap<Ipv4Addr, String>,
}

impl Names {
    /// Serve `m` as it is now, replacing what was known of it.
    pub fn up(&mut self, m: Member) {
        self.down(&m.name);
        for on in &m.networks {
            let net = self.networks.entry(on.network.clone()).or_default();
            for name in std::iter::once(&m.name).chain(&on.aliases) {
                let addrs = net.addresses.entry(normal(name)).or_default();
                if !addrs.contains(&on.address) {
                    addrs.push(on.address);
                    addrs.sort_unstable();
                }
            }
            net.names.insert(on.address, m.name.clone());
        }
        self.members.insert(m.name.clone(), m);
    }

    /// Forget the sandbox `name`; what it was, if known.
    pub fn down(&mut self, name: &str) -> Option<Member> {
        let old = self.members.remove(name)?;
        for on in &old.networks {
            let Some(net) = self.networks.get_mut(&on.network) else {
                continue;
            };
            for n in std::iter::once(&old.name).chain(&on.aliases) {
                let key = normal(n);
                if let Some(addrs) = net.addresses.get_mut(&key) {
                    addrs.retain(|a| *a != on.address);
                    if addrs.is_empty() {
                        net.addresses.remove(&key);
                    }
                }
            }
            if net.names.get(&on.address) == Some(&old.name) {
                net.names.remove(&on.address);
            }
            if net.names.is_empty() {
                self.networks.remove(&on.network);
            }
        }
        Some(old)
    }

    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.get(name)
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The answer to `asker`'s question for `qname` (any case, with or without the final dot); `host` are the
    /// host's upstream servers.
    pub fn lookup(&mut self, asker: &str, qname: &str, kind: Kind, host: &[SocketAddr]) -> Answer {
        let Some(m) = self.members.get(asker) else {
            return Answer::Refused;
        };
        let name = normal(qname);
        let shared = || {
            m.networks
                .iter()
                .filter_map(|on| self.networks.get(&on.network))
        };
        match kind {
            Kind::Ptr => {
                if let Some(found) =
                    reverse(&name).and_then(|ip| shared().find_map(|n| n.names.get(&ip)))
                {
                    return Answer::Pointer(found.clone());
                }
            }
            Kind::A | Kind::Other => {
                let mut addrs: Vec<Ipv4Addr> = Vec::new();
                for net in shared() {
                    for a in net.addresses.get(&name).into_iter().flatten() {
                        if !addrs.contains(a) {
                            addrs.push(*a);
                        }
                    }
                }
                if !addrs.is_empty() {
                    if kind == Kind::Other {
                        return Answer::NoData;
                    }
                    self.turn = self.turn.wrapping_add(1);
                    let by = self.turn % addrs.len();
                    addrs.rotate_left(by);
                    return Answer::Addresses(addrs);
                }
            }
        }
        // Not local. A single label (`db`) is a sandbox's name or nothing: never sent upstream, where it
        // would leak the names sandboxes look for and wait on a server that has none of them. Forwarded
        // otherwise, unless every network of the asker is internal.
        if !name.contains('.') || m.networks.iter().all(|on| on.internal) {
            return Answer::NxDomain;
        }
        let nets: Vec<&[Ipv4Addr]> = m
            .networks
            .iter()
            .filter(|on| !on.internal)
            .map(|on| on.servers.as_slice())
            .collect();
        match upstream::choose(&m.servers, &nets, host) {
            servers if servers.is_empty() => Answer::NxDomain,
            servers => Answer::Forward(servers),
        }
    }
}

/// A name as the table keys it.
fn normal(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The address a reverse name (`4.3.2.10.in-addr.arpa`) stands for.
fn reverse(name: &str) -> Option<Ipv4Addr> {
    let digits = name.strip_suffix(".in-addr.arpa")?;
    let mut octets = [0u8; 4];
    let mut parts = digits.split('.');
    for slot in octets.iter_mut().rev() {
        let p = parts.next()?;
        // Octets are written without leading zeros; anything else is not an address's name.
        if p.len() > 1 && p.starts_with('0') {
            return None;
        }
        *slot = p.parse().ok()?;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::OnNetwork;

    fn member(name: &str, on: &[(&str, u8, &[&str])], internal: bool) -> Member {
        Member {
            name: name.into(),
            netns: format!("/run/netns/{name}").into(),
            netns_id: None,
            servers: vec![],
            networks: on
                .iter()
                .map(|(net, last, aliases)| OnNetwork {
                    network: net.to_string(),
                    address: Ipv4Addr::new(10, 0, 0, *last),
                    aliases: aliases.iter().map(|a| a.to_string()).collect(),
                    internal,
                    servers: vec![],
                })
                .collect(),
        }
    }

    fn host() -> Vec<SocketAddr> {
        vec![SocketAddr::from(([192, 0, 2, 53], 53))]
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, last)
    }

    #[test]
    fn a_name_is_seen_only_from_a_network_the_asker_shares() {
        let mut t = Names::default();
        t.up(member("app", &[("front", 2, &[])], false));
        t.up(member("db", &[("back", 3, &["store"])], false));
        t.up(member("api", &[("front", 4, &[]), ("back", 5, &[])], false));
        let h = host();
        // Same network: found, in any case and with the final dot.
        assert_eq!(
            t.lookup("app", "API.", Kind::A, &h),
            Answer::Addresses(vec![ip(4)])
        );
        assert_eq!(
            t.lookup("api", "db", Kind::A, &h),
            Answer::Addresses(vec![ip(3)])
        );
        assert_eq!(
            t.lookup("api", "store", Kind::A, &h),
            Answer::Addresses(vec![ip(3)])
        );
        // Another network's name is not local to `app`: never db's address. A single label is a sandbox's
        // name or nothing (NXDOMAIN, not sent upstream); a dotted name goes upstream.
        assert_eq!(t.lookup("app", "db", Kind::A, &h), Answer::NxDomain);
        assert_eq!(t.lookup("app", "store", Kind::A, &h), Answer::NxDomain);
        assert_eq!(
            t.lookup("app", "db.example", Kind::A, &h),
            Answer::Forward(h.clone())
        );
        // PTR, the same way.
        assert_eq!(
            t.lookup("app", "4.0.0.10.in-addr.arpa", Kind::Ptr, &h),
            Answer::Pointer("api".into())
        );
        assert_eq!(
            t.lookup("app", "3.0.0.10.in-addr.arpa", Kind::Ptr, &h),
            Answer::Forward(h.clone())
        );
        // AAAA of a local name: no data, not NXDOMAIN.
        assert_eq!(t.lookup("app", "api", Kind::Other, &h), Answer::NoData);
        // Someone the table does not know.
        assert_eq!(t.lookup("ghost", "api", Kind::A, &h), Answer::Refused);
    }

    #[test]
    fn one_alias_on_several_sandboxes_answers_every_address_turning_each_time() {
        let mut t = Names::default();
        for (n, last) in [("w1", 2), ("w2", 3), ("w3", 4)] {
            t.up(member(n, &[("net", last, &["web"])], false));
        }
        let h = host();
        let mut firsts = Vec::new();
        for _ in 0..3 {
            let Answer::Addresses(a) = t.lookup("w1", "web", Kind::A, &h) else {
                panic!("web is local");
            };
            let mut sorted = a.clone();
            sorted.sort();
            assert_eq!(sorted, vec![ip(2), ip(3), ip(4)]);
            firsts.push(a[0]);
        }
        firsts.sort();
        assert_eq!(
            firsts,
            vec![ip(2), ip(3), ip(4)],
            "each address comes first once"
        );
        // One of them goes: the others stay.
        t.down("w2");
        let Answer::Addresses(mut a) = t.lookup("w1", "web", Kind::A, &h) else {
            panic!("web is local");
        };
        a.sort();
        assert_eq!(a, vec![ip(2), ip(4)]);
        assert_eq!(t.lookup("w1", "w2", Kind::A, &h), Answer::NxDomain);
    }

    #[test]
    fn internal_networks_forward_nothing_and_own_servers_win() {
        let mut t = Names::default();
        t.up(member("a", &[("inner", 2, &[])], true));
        assert_eq!(
            t.lookup("a", "example.com", Kind::A, &host()),
            Answer::NxDomain
        );
        let mut m = member("b", &[("outer", 3, &[])], false);
        m.servers = vec![Ipv4Addr::new(198, 51, 100, 1)];
        t.up(m);
        assert_eq!(
            t.lookup("b", "example.com", Kind::A, &host()),
            Answer::Forward(vec![SocketAddr::from(([198, 51, 100, 1], 53))])
        );
        // No server anywhere: NXDOMAIN rather than silence.
        t.up(member("c", &[("outer", 4, &[])], false));
        assert_eq!(t.lookup("c", "example.com", Kind::A, &[]), Answer::NxDomain);
    }

    #[test]
    fn up_again_replaces_and_down_forgets() {
        let mut t = Names::default();
        t.up(member("a", &[("n", 2, &["old"])], false));
        t.up(member("b", &[("n", 3, &[])], false));
        t.up(member("a", &[("n", 2, &["new"])], false));
        let h = host();
        assert_eq!(
            t.lookup("b", "new", Kind::A, &h),
            Answer::Addresses(vec![ip(2)])
        );
        assert_eq!(t.lookup("b", "old", Kind::A, &h), Answer::NxDomain);
        assert!(t.down("a").is_some());
        assert!(t.down("a").is_none());
        assert_eq!(t.lookup("b", "a", Kind::A, &h), Answer::NxDomain);
        t.down("b");
        assert!(t.is_empty());
        assert!(t.networks.is_empty());
    }

    #[test]
    fn reverse_names_parse_only_when_they_are_an_address() {
        assert_eq!(
            reverse("4.3.2.10.in-addr.arpa"),
            Some(Ipv4Addr::new(10, 2, 3, 4))
        );
        assert_eq!(reverse("3.2.10.in-addr.arpa"), None);
        assert_eq!(reverse("5.4.3.2.10.in-addr.arpa"), None);
        assert_eq!(reverse("04.3.2.10.in-addr.arpa"), None);
        assert_eq!(reverse("256.3.2.10.in-addr.arpa"), None);
        assert_eq!(reverse("4.3.2.10.example"), None);
    }
}
