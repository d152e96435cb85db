//! The resolver's table: which names each sandbox may resolve, and to what. Pure data, no sockets.
//!
//! A sandbox sees the names (and aliases) of the sandboxes on the networks it is on, and nothing else: a name
//! on a network it does not share gets the same answer as a name nobody has.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{upstream, Member};

/// What the question asks for, as far as the table is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    A,
    Aaaa,
    Ptr,
    /// Any other type (MX, TXT, …): a local name has none of them (an empty answer, not NXDOMAIN, which
    /// would say the name does not exist at all).
    Other,
}

/// The table's answer to one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A local name's addresses of the family asked (A: IPv4, AAAA: IPv6), in this answer's order.
    Addresses(Vec<IpAddr>),
    /// A local name, with nothing of the type asked (AAAA of a sandbox with no IPv6 address, say).
    NoData,
    /// A local address's name.
    Pointer(String),
    /// Not local: ask these servers.
    Forward(Vec<SocketAddr>),
    /// Not local, and the asker's networks forward nothing (`--internal`), or there is no server to ask; or a
    /// PTR question under `ip6.arpa` that names no address.
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

/// One network's names (lowercase, no trailing dot) and addresses, of both families.
#[derive(Debug, Default)]
struct Network {
    addresses: HashMap<String, Vec<IpAddr>>,
    names: HashMap<IpAddr, String>,
}

/// An endpoint's addresses: its IPv4 one (none on an IPv6-only network), and its IPv6 one with IPv6.
fn addresses_of(on: &super::OnNetwork) -> impl Iterator<Item = IpAddr> {
    on.address
        .map(IpAddr::V4)
        .into_iter()
        .chain(on.address6.map(IpAddr::V6))
}

impl Names {
    /// Serve `m` as it is now, replacing what was known of it.
    pub fn up(&mut self, m: Member) {
        self.down(&m.name);
        for on in &m.networks {
            let net = self.networks.entry(on.network.clone()).or_default();
            for address in addresses_of(on) {
                for name in std::iter::once(&m.name).chain(&on.aliases) {
                    let addrs = net.addresses.entry(normal(name)).or_default();
                    if !addrs.contains(&address) {
                        addrs.push(address);
                        addrs.sort_unstable();
                    }
                }
                net.names.insert(address, m.name.clone());
            }
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
            for address in addresses_of(on) {
                for n in std::iter::once(&old.name).chain(&on.aliases) {
                    let key = normal(n);
                    if let Some(addrs) = net.addresses.get_mut(&key) {
                        addrs.retain(|a| *a != address);
                        if addrs.is_empty() {
                            net.addresses.remove(&key);
                        }
                    }
                }
                if net.names.get(&address) == Some(&old.name) {
                    net.names.remove(&address);
                }
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
                let Some(ip) = reverse(&name) else {
                    // Under ip6.arpa but not one address's name (too few or too many nibbles, a label
                    // that is not one hex digit): no pointer anywhere has it, so none is asked upstream.
                    if name.ends_with(".ip6.arpa") {
                        return Answer::NxDomain;
                    }
                    return self.elsewhere(asker, &name, host);
                };
                if let Some(found) = shared().find_map(|n| n.names.get(&ip)) {
                    return Answer::Pointer(found.clone());
                }
            }
            Kind::A | Kind::Aaaa | Kind::Other => {
                let mut local = false;
                let mut addrs: Vec<IpAddr> = Vec::new();
                for net in shared() {
                    for a in net.addresses.get(&name).into_iter().flatten() {
                        local = true;
                        let wanted = match kind {
                            Kind::A => a.is_ipv4(),
                            Kind::Aaaa => a.is_ipv6(),
                            _ => false,
                        };
                        if wanted && !addrs.contains(a) {
                            addrs.push(*a);
                        }
                    }
                }
                // A local name with nothing of the type asked: an empty answer, not NXDOMAIN (which would
                // spoil the asker's lookup of the other family).
                if local && addrs.is_empty() {
                    return Answer::NoData;
                }
                if !addrs.is_empty() {
                    self.turn = self.turn.wrapping_add(1);
                    let by = self.turn % addrs.len();
                    addrs.rotate_left(by);
                    return Answer::Addresses(addrs);
                }
            }
        }
        self.elsewhere(asker, &name, host)
    }

    /// The answer for a name (`normal`) that is not local to `asker`.
    fn elsewhere(&self, asker: &str, name: &str, host: &[SocketAddr]) -> Answer {
        let Some(m) = self.members.get(asker) else {
            return Answer::Refused;
        };
        // A single label (`db`) is a sandbox's name or nothing: never sent upstream, where it would leak the
        // names sandboxes look for and wait on a server that has none of them. Forwarded otherwise, unless
        // every network of the asker is internal.
        if !name.contains('.') || m.networks.iter().all(|on| on.internal) {
            return Answer::NxDomain;
        }
        let nets: Vec<&[IpAddr]> = m
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

/// The address a reverse name stands for: `4.3.2.10.in-addr.arpa`, or 32 nibbles, lowest first, under
/// `ip6.arpa` (`name` is lowercase, as [`normal`] makes it).
fn reverse(name: &str) -> Option<IpAddr> {
    if let Some(nibbles) = name.strip_suffix(".ip6.arpa") {
        return reverse6(nibbles).map(IpAddr::V6);
    }
    reverse4(name).map(IpAddr::V4)
}

/// `2.0.0.0.….d.f` (32 labels of one hex digit each, lowest first) as the address it stands for.
fn reverse6(nibbles: &str) -> Option<Ipv6Addr> {
    let mut value: u128 = 0;
    let mut count = 0;
    for label in nibbles.split('.') {
        // One lowercase hex digit, nothing else (no "0x", no "00", no empty label).
        let [c] = label.as_bytes() else {
            return None;
        };
        let digit = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        if count == 32 {
            return None;
        }
        value |= u128::from(digit) << (4 * count);
        count += 1;
    }
    (count == 32).then_some(Ipv6Addr::from(value))
}

/// The address an `in-addr.arpa` name stands for.
fn reverse4(name: &str) -> Option<Ipv4Addr> {
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
                    address: Some(Ipv4Addr::new(10, 0, 0, *last)),
                    address6: None,
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

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
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
        m.servers = vec![IpAddr::from([198, 51, 100, 1])];
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

    /// `name` on network `net` with IPv4 address 10.0.0.`last` and, when given, IPv6 address fd00::`last`.
    fn dual(name: &str, net: &str, last: u8, v6: bool, aliases: &[&str]) -> Member {
        let mut m = member(name, &[(net, last, aliases)], false);
        m.networks[0].address6 = v6.then(|| Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last.into()));
        m
    }

    fn ip6(last: u8) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last.into()))
    }

    /// The `ip6.arpa` name of `ip`: 32 nibbles, lowest first.
    fn arpa6(ip: IpAddr) -> String {
        let IpAddr::V6(v6) = ip else {
            panic!("not IPv6");
        };
        let n = u128::from(v6);
        let nibbles: Vec<String> = (0..32)
            .map(|i| format!("{:x}", (n >> (4 * i)) & 0xf))
            .collect();
        format!("{}.ip6.arpa", nibbles.join("."))
    }

    #[test]
    fn aaaa_answers_ipv6_addresses_and_a_name_without_one_has_no_data() {
        let mut t = Names::default();
        t.up(dual("a", "ds", 2, true, &["web"]));
        t.up(dual("b", "ds", 3, true, &["web"]));
        // On the same network, joined by a resolver that does not know IPv6 yet, or an IPv4 endpoint.
        t.up(dual("c", "ds", 4, false, &[]));
        t.up(dual("x", "other", 5, true, &[]));
        let h = host();
        assert_eq!(
            t.lookup("c", "A.", Kind::Aaaa, &h),
            Answer::Addresses(vec![ip6(2)])
        );
        assert_eq!(
            t.lookup("c", "a", Kind::A, &h),
            Answer::Addresses(vec![ip(2)])
        );
        // The shared alias: every IPv6 address, each first in turn; A answers only IPv4 ones.
        let mut firsts = vec![];
        for _ in 0..2 {
            let Answer::Addresses(got) = t.lookup("a", "web", Kind::Aaaa, &h) else {
                panic!("web is local");
            };
            let mut sorted = got.clone();
            sorted.sort();
            assert_eq!(sorted, vec![ip6(2), ip6(3)]);
            firsts.push(got[0]);
        }
        firsts.sort();
        assert_eq!(firsts, vec![ip6(2), ip6(3)]);
        let Answer::Addresses(mut v4) = t.lookup("a", "web", Kind::A, &h) else {
            panic!("web is local");
        };
        v4.sort();
        assert_eq!(v4, vec![ip(2), ip(3)]);
        // A local name with no IPv6 address: NOERROR with nothing in it, as a real server answers.
        assert_eq!(t.lookup("a", "c", Kind::Aaaa, &h), Answer::NoData);
        // Another network's name: not local, for AAAA as for A.
        assert_eq!(t.lookup("a", "x", Kind::Aaaa, &h), Answer::NxDomain);
        // PTR of an IPv6 address: on a shared network only; elsewhere it goes upstream, as for IPv4.
        assert_eq!(
            t.lookup("c", &arpa6(ip6(3)), Kind::Ptr, &h),
            Answer::Pointer("b".into())
        );
        assert_eq!(
            t.lookup("c", &arpa6(ip6(3)).to_uppercase(), Kind::Ptr, &h),
            Answer::Pointer("b".into())
        );
        assert_eq!(
            t.lookup("a", &arpa6(ip6(5)), Kind::Ptr, &h),
            Answer::Forward(h.clone())
        );
        // Gone with the sandbox: every address of every name.
        t.down("b");
        assert_eq!(
            t.lookup("a", "web", Kind::Aaaa, &h),
            Answer::Addresses(vec![ip6(2)])
        );
        assert_eq!(
            t.lookup("a", &arpa6(ip6(3)), Kind::Ptr, &h),
            Answer::Forward(h.clone())
        );
        for n in ["a", "c", "x"] {
            t.down(n);
        }
        assert!(t.networks.is_empty());
    }

    #[test]
    fn ip6_arpa_names_parse_only_as_32_nibbles_lowest_first() {
        let addr: Ipv6Addr = "2001:db8:1:2:3:4:5:6789".parse().unwrap();
        let name = arpa6(IpAddr::V6(addr));
        assert!(name.starts_with("9.8.7.6.5.0.0.0."), "{name}");
        assert_eq!(reverse(&name), Some(IpAddr::V6(addr)));
        assert_eq!(reverse(&arpa6(ip6(0))), Some(ip6(0)));
        let all_f = ["f"; 32].join(".") + ".ip6.arpa";
        assert_eq!(reverse(&all_f), Some(IpAddr::V6(Ipv6Addr::from(u128::MAX))));
        let drop_first = name.split_once('.').unwrap().1.to_string();
        let bad = [
            drop_first.clone(),            // 31 nibbles
            format!("0.{name}"),           // 33
            name.replacen("9.", "09.", 1), // two digits in a label
            name.replacen("9.", "g.", 1),  // not hex
            name.replacen("9.", "9..", 1), // an empty label
            name.replacen("9.", "x9.", 1),
            name.replacen("9.", "\\046.", 1), // an escaped dot, as hickory writes one
            name.replacen("9.", "+.", 1),
            name.replacen("9.", "9\\.", 1),
            name.replace(".ip6.arpa", ".ip6.arpa.example"),
            "ip6.arpa".into(),
            ".ip6.arpa".into(),
            "..ip6.arpa".into(),
            [["0"; 64].join("."), "ip6.arpa".into()].join("."),
            format!("{}ip6.arpa", "0.".repeat(5000)),
        ];
        for b in &bad {
            assert_eq!(reverse(b), None, "{b}");
        }
        // As questions: PTR for a name under ip6.arpa that is no address is NXDOMAIN at once (none is sent
        // upstream); other types of such names go the usual way.
        let mut t = Names::default();
        t.up(dual("a", "ds", 2, true, &[]));
        let h = host();
        for b in bad.iter().filter(|b| b.ends_with(".ip6.arpa")) {
            assert_eq!(t.lookup("a", b, Kind::Ptr, &h), Answer::NxDomain, "{b}");
        }
        assert_eq!(
            t.lookup("a", &drop_first, Kind::Other, &h),
            Answer::Forward(h.clone())
        );
    }

    #[test]
    fn reverse_names_parse_only_when_they_are_an_address() {
        assert_eq!(
            reverse("4.3.2.10.in-addr.arpa"),
            Some(IpAddr::from([10, 2, 3, 4]))
        );
        assert_eq!(reverse("3.2.10.in-addr.arpa"), None);
        assert_eq!(reverse("5.4.3.2.10.in-addr.arpa"), None);
        assert_eq!(reverse("04.3.2.10.in-addr.arpa"), None);
        assert_eq!(reverse("256.3.2.10.in-addr.arpa"), None);
        assert_eq!(reverse("4.3.2.10.example"), None);
    }
}
