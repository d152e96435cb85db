//! `nsnet explain`: the path one packet would take and the verdict on it, decided from plain data.
//!
//! [`explain`] is pure: it reads the records (networks, sandboxes), what the host holds ([`Facts`]: its
//! addresses, routes, host forward chains with policy drop, whether the user chain has rules) and walks the
//! packet through the same rules the firewall drivers install, in the order the kernel meets them, naming each
//! by the chain and rule text the driver writes (`firewall/nftables.rs`, `firewall/iptables.rs`). Reading the
//! facts is `ops/explain.rs`'s job; sending a real packet to confirm the verdict is `probe`'s.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::Ipv4Net;

mod six;
use serde::Serialize;
pub use six::{Facts6, HostRoute6, Inside6, OverlayKernel6};

use crate::firewall::{Backend, HostChain};
use crate::model::{Driver, Endpoint, GatewayMode, Network, Sandbox};
use crate::portmap::{PortMapping, Proto};

/// The protocol of the packet asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    /// An echo request (the default when no port is given).
    Icmp,
}

impl Protocol {
    /// The published-port protocol this is, if any.
    pub fn port_proto(self) -> Option<Proto> {
        match self {
            Protocol::Tcp => Some(Proto::Tcp),
            Protocol::Udp => Some(Proto::Udp),
            Protocol::Icmp => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        })
    }
}

/// One end of the question: a sandbox by name, the host, or an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Party {
    Sandbox(String),
    Host,
    Address(Ipv4Addr),
    /// An IPv6 address (written bare, or in brackets).
    Address6(Ipv6Addr),
}

impl FromStr for Party {
    type Err = String;
    fn from_str(s: &str) -> Result<Party, String> {
        if s == "host" {
            return Ok(Party::Host);
        }
        if let Ok(ip) = s.parse::<Ipv4Addr>() {
            return Ok(Party::Address(ip));
        }
        let bare = s
            .strip_prefix('[')
            .and_then(|x| x.strip_suffix(']'))
            .unwrap_or(s);
        if let Ok(ip) = bare.parse::<Ipv6Addr>() {
            return Ok(Party::Address6(ip));
        }
        if s.contains(':') {
            return Err(format!("'{s}' is not an IPv6 address"));
        }
        if s.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return Err(format!("'{s}' is not an IPv4 address"));
        }
        crate::names::check_name("sandbox", s)?;
        Ok(Party::Sandbox(s.to_string()))
    }
}

/// `FROM TO[:PORT[/PROTO]]` (and `--src`) as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub from: Party,
    pub to: Party,
    pub port: Option<u16>,
    pub protocol: Protocol,
    /// A forged source address for a packet from a sandbox (`--src`).
    pub src: Option<Ipv4Addr>,
    /// The forged source when it is an IPv6 address.
    pub src6: Option<Ipv6Addr>,
    /// The packet is IPv6: asked with `-6`, or an address in the question is IPv6. Without either, a question
    /// between sandboxes that have no IPv4 is about IPv6 too ([`explain`] decides that).
    pub ipv6: bool,
}

impl Query {
    /// Parse `FROM` and `TO[:PORT[/PROTO]]`: without a port the packet is an ICMP echo request, with one it is
    /// TCP unless PROTO says udp.
    pub fn parse(from: &str, to: &str, src: Option<Ipv4Addr>) -> Result<Query, String> {
        Query::parse_ip(from, to, src.map(IpAddr::V4), false)
    }

    /// [`Query::parse`] with a `--src` of either family and `ipv6` (`-6`): the packet is IPv6. TO may be an
    /// IPv6 address, bare without a port (`fd00::2`), in brackets with one (`[fd00::2]:80/tcp`).
    pub fn parse_ip(
        from: &str,
        to: &str,
        src: Option<IpAddr>,
        ipv6: bool,
    ) -> Result<Query, String> {
        let from: Party = from.parse()?;
        // A bare IPv6 address has colons of its own: only a bracketed one carries a port.
        let split = match to.strip_prefix('[') {
            Some(rest) => match rest.split_once(']') {
                Some((_, "")) => None,
                Some((addr, tail)) => match tail.strip_prefix(':') {
                    Some(port) => Some((&to[..addr.len() + 2], port)),
                    None => return Err(format!("'{to}': write [IPV6]:PORT[/PROTO]")),
                },
                None => return Err(format!("'{to}': a '[' with no ']'")),
            },
            None if to.parse::<Ipv6Addr>().is_ok() => None,
            None => to.rsplit_once(':'),
        };
        let (target, port, protocol) = match split {
            None => (to, None, Protocol::Icmp),
            Some((target, rest)) => {
                let (port, proto) = match rest.split_once('/') {
                    Some((p, proto)) => (p, Some(proto)),
                    None => (rest, None),
                };
                let port = match port.parse::<u16>() {
                    Ok(p) if p > 0 => p,
                    _ => {
                        return Err(format!(
                            "'{port}' is not a port (1-65535) in '{to}'; write TO[:PORT[/tcp|udp]]"
                        ))
                    }
                };
                let protocol = match proto {
                    None | Some("tcp") => Protocol::Tcp,
                    Some("udp") => Protocol::Udp,
                    Some("icmp") => {
                        return Err(format!(
                            "icmp has no port: write '{target}' alone to ask about a ping"
                        ))
                    }
                    Some(other) => {
                        return Err(format!(
                            "unknown protocol '{other}' in '{to}'; use tcp or udp (or no port for icmp)"
                        ))
                    }
                };
                (target, Some(port), protocol)
            }
        };
        let to: Party = target.parse()?;
        if src.is_some() && !matches!(from, Party::Sandbox(_)) {
            return Err(
                "--src asks about a forged source from a sandbox: FROM must be a sandbox".into(),
            );
        }
        let v6 = |p: &Party| matches!(p, Party::Address6(_));
        let v4 = |p: &Party| matches!(p, Party::Address(_));
        let ipv6 = ipv6 || v6(&from) || v6(&to) || src.is_some_and(|s| s.is_ipv6());
        if ipv6 && (v4(&from) || v4(&to) || src.is_some_and(|s| s.is_ipv4())) {
            return Err(
                "the question mixes IPv4 and IPv6: a packet has one family (-6 asks about IPv6)"
                    .into(),
            );
        }
        let (src, src6) = match src {
            Some(IpAddr::V4(a)) => (Some(a), None),
            Some(IpAddr::V6(a)) => (None, Some(a)),
            None => (None, None),
        };
        Ok(Query {
            from,
            to,
            port,
            protocol,
            src,
            src6,
            ipv6,
        })
    }
}

/// A sandbox with whether its namespace is there now.
#[derive(Debug, Clone)]
pub struct SandboxFacts {
    pub sandbox: Sandbox,
    pub up: bool,
}

/// Where the host routes an address: the output interface and the gateway (none: on-link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoute {
    pub interface: String,
    pub gateway: Option<Ipv4Addr>,
}

/// Everything [`explain`] knows: the records and what the host holds now.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub networks: Vec<Network>,
    pub sandboxes: Vec<SandboxFacts>,
    /// The host's IPv4 addresses, by interface.
    pub host_addresses: Vec<(String, Ipv4Net)>,
    /// The host's routes to the addresses in the question that are beyond it (LAN peers).
    pub routes: Vec<(Ipv4Addr, Option<HostRoute>)>,
    /// The firewall backend nsnet's networks use.
    pub backend: Backend,
    /// The user chain (`inet nsnet user` / `NSNET-USER`) holds rules explain cannot evaluate.
    pub user_rules: bool,
    /// Other tables' forward chains whose policy is drop.
    pub drop_chains: Vec<HostChain>,
    /// Sandbox addresses with an entry in their network's fast path map (the fast path is live for them).
    pub fast_path: BTreeSet<Ipv4Addr>,
    /// What could not be read (without root, the ruleset): said with the verdict.
    pub unread: Vec<String>,
    /// What IPv6 questions are decided from (read only for them).
    pub six: Facts6,
}

impl Facts {
    /// These facts without IPv6-only networks and endpoints: what an IPv4 question is decided from.
    fn ipv4_part(&self) -> Facts {
        let mut f = self.clone();
        f.networks.retain(|n| !n.ipv6_only());
        for sb in &mut f.sandboxes {
            sb.sandbox.endpoints.retain(|e| e.address.is_some());
        }
        f
    }
}

/// A rule of the ruleset, as the firewall driver writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    /// Where it is: `inet nsnet forward`, `filter NSNET-ISOLATE`, the kernel's routing, ...
    pub chain: String,
    /// The rule's text (with the element that matched, when a set decides).
    pub rule: String,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.chain, self.rule)
    }
}

/// One step of the path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hop {
    /// Where the packet is: `sandbox a`, `host`, `bridge nsbr-n`, `peer 10.0.1.26`.
    pub at: String,
    /// What happens there.
    pub what: String,
    /// The rule that does it, when one does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleRef>,
}

/// The outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub delivered: bool,
    /// Why, in one sentence.
    pub reason: String,
    /// The rule that decides it (for a delivery, the last one that lets it through), when one does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleRef>,
    /// What the static verdict cannot see (the user chain's rules, a LAN peer's routes).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub caveats: Vec<String>,
}

/// What a real probe of this question sends and where it listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbePlan {
    /// Who sends: a sandbox's name, `host`, or the LAN peer's address.
    pub sender: String,
    /// The source address the packet leaves with.
    pub src: IpAddr,
    pub dst: IpAddr,
    pub port: Option<u16>,
    pub protocol: Protocol,
    /// The sandbox where the packet should land (after any DNAT), and its port there.
    pub receiver: Option<(String, Option<u16>)>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub from: String,
    pub to: String,
    pub protocol: Protocol,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub hops: Vec<Hop>,
    pub verdict: Verdict,
    /// The packet is IPv6 (left out of the JSON for IPv4, as before).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ipv6: bool,
    /// Kernel objects the path needs that the kernel lacks (an address, a route, a firewall element, a fast
    /// path entry): each one line, naming it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub broken: Vec<String>,
    /// `None` when nothing would be sent (no route in the sandbox, say): the verdict needs no probe.
    #[serde(skip)]
    pub probe: Option<ProbePlan>,
    /// Why `--probe` cannot send this packet (some IPv6 questions, for now).
    #[serde(skip)]
    pub probe_refused: Option<String>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        let family = if self.ipv6 { ", IPv6" } else { "" };
        writeln!(
            f,
            "{} -> {}{port} ({}{family})",
            self.from, self.to, self.protocol
        )?;
        for (n, hop) in self.hops.iter().enumerate() {
            writeln!(f, "  {}. [{}] {}", n + 1, hop.at, hop.what)?;
            if let Some(rule) = &hop.rule {
                writeln!(f, "       rule: {rule}")?;
            }
        }
        let v = &self.verdict;
        let word = if v.delivered { "DELIVERED" } else { "DROPPED" };
        writeln!(f, "verdict: {word}: {}", v.reason)?;
        if let Some(rule) = &v.rule {
            writeln!(f, "  decided by: {rule}")?;
        }
        for c in &v.caveats {
            writeln!(f, "  note: {c}")?;
        }
        for b in &self.broken {
            writeln!(f, "BROKEN: {b}")?;
        }
        Ok(())
    }
}

/// What a real probe packet did (`--probe`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeReport {
    /// Whether the packet reached where the question asked (the sandbox behind a published port, say).
    pub delivered: bool,
    /// What was sent and what came of it.
    pub detail: String,
    /// The real packet did what the static verdict says.
    pub agrees: bool,
    /// The rules the packet met, in order, when nftables tracing was used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<Vec<TraceStep>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// One rule a traced packet met.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceStep {
    /// `inet nsnet forward`.
    pub chain: String,
    /// The rule's text, or `policy`.
    pub rule: String,
    pub verdict: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iif: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oif: Option<String>,
}

impl fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = if self.delivered {
            "DELIVERED"
        } else {
            "DROPPED"
        };
        let agree = if self.agrees {
            "agrees with the verdict"
        } else {
            "DISAGREES with the verdict"
        };
        writeln!(f, "probe: {word} ({agree}): {}", self.detail)?;
        if let Some(trace) = &self.trace {
            writeln!(f, "trace (nftables, the rules the probe packet met):")?;
            for t in trace {
                let dev = match (&t.iif, &t.oif) {
                    (Some(i), Some(o)) => format!(" [in {i} out {o}]"),
                    (Some(i), None) => format!(" [in {i}]"),
                    (None, Some(o)) => format!(" [out {o}]"),
                    (None, None) => String::new(),
                };
                writeln!(f, "  {}{dev}: {} -> {}", t.chain, t.rule, t.verdict)?;
            }
        }
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        Ok(())
    }
}

/// nsnet's rules, with what a backend calls them.
enum Fw<'a> {
    /// A forged source from a bridged sandbox port / a point-to-point veth.
    AntiSpoof {
        driver: Driver,
        host_if: &'a str,
        own: Ipv4Addr,
    },
    Dnat {
        mapping: &'a PortMapping,
        host_port: u16,
        target: Ipv4Addr,
        container_port: u16,
    },
    /// Loopback destinations from outside are never DNATed.
    NoLoopbackDnat,
    InternalIn(&'a str),
    InternalOut(&'a str),
    DnatAccept,
    Isolation(&'a str, &'a str),
    PublishedOnly(&'a str),
    AcceptFrom(&'a str),
    HairpinMasquerade(Ipv4Net),
    LoopbackMasquerade,
    Masquerade(Ipv4Net, &'a str),
    OwnNetReturn(&'a str, Ipv4Net),
    UserChain,
}

/// An IPv4 subnet or address of the facts: always there, since IPv6-only networks and endpoints are left out
/// of them (`Nsnet::explain_facts`); the fallback, 255.255.255.255/32, matches nothing a sandbox uses.
fn v4(net: Option<Ipv4Net>) -> Ipv4Net {
    net.unwrap_or_else(|| Ipv4Net::from(Ipv4Addr::BROADCAST))
}

/// An IPv4 gateway of the facts (see [`v4`]).
fn gw4(gateway: Option<Ipv4Addr>) -> Ipv4Addr {
    gateway.unwrap_or(Ipv4Addr::BROADCAST)
}

fn fw(backend: Backend, rule: Fw) -> RuleRef {
    let r = |chain: &str, rule: String| RuleRef {
        chain: chain.into(),
        rule,
    };
    let nft = backend != Backend::Iptables;
    match rule {
        Fw::AntiSpoof {
            driver,
            host_if,
            own,
        } => match (nft, driver) {
            (true, Driver::Bridge) => r(
                "bridge nsnet prerouting",
                format!(
                    "ether type ip iifname @endpoint_ifs iifname . ip saddr != @endpoints drop (only \"{host_if}\" . {own} is in @endpoints for this port)"
                ),
            ),
            (true, Driver::Veth) => r(
                "inet nsnet guard",
                format!(
                    "iifname @endpoint_ifs iifname . ip saddr != @endpoints drop (only \"{host_if}\" . {own} is in @endpoints for this interface)"
                ),
            ),
            (false, Driver::Bridge) => r(
                "raw NSNET-GUARD",
                format!("! -s {own}/32 -m physdev --physdev-in {host_if} -j DROP"),
            ),
            (false, Driver::Veth) => r("raw NSNET-GUARD", format!("! -s {own}/32 -i {host_if} -j DROP")),
        },
        Fw::Dnat {
            mapping,
            host_port,
            target,
            container_port,
        } => {
            let p = mapping.protocol;
            match (nft, mapping.host_ip) {
                (true, Some(ip)) => r(
                    "inet nsnet published",
                    format!(
                        "meta nfproto ipv4 dnat ip to ip daddr . meta l4proto . th dport map @ports_ip (element {ip} . {p} . {host_port} : {target} . {container_port})"
                    ),
                ),
                (true, None) => r(
                    "inet nsnet published",
                    format!(
                        "meta nfproto ipv4 dnat ip to meta l4proto . th dport map @ports (element {p} . {host_port} : {target} . {container_port})"
                    ),
                ),
                (false, ip) => r(
                    "nat NSNET-PORTS",
                    format!(
                        "{}-p {p} -m {p} --dport {host_port} -j DNAT --to-destination {target}:{container_port}",
                        ip.map(|ip| format!("-d {ip}/32 ")).unwrap_or_default()
                    ),
                ),
            }
        }
        Fw::NoLoopbackDnat => {
            if nft {
                r(
                    "inet nsnet prerouting",
                    "ip daddr != 127.0.0.0/8 fib daddr type local meta l4proto { tcp, udp } jump published".into(),
                )
            } else {
                r(
                    "nat PREROUTING",
                    "! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j NSNET-PORTS".into(),
                )
            }
        }
        Fw::InternalIn(i) => {
            if nft {
                r(
                    "inet nsnet forward",
                    format!("iifname @internal iifname . oifname != @internal_self drop (\"{i}\" is internal)"),
                )
            } else {
                r("filter NSNET-INTERNAL", format!("-i {i} ! -o {i} -j DROP"))
            }
        }
        Fw::InternalOut(i) => {
            if nft {
                r(
                    "inet nsnet forward",
                    format!("oifname @internal iifname . oifname != @internal_self drop (\"{i}\" is internal)"),
                )
            } else {
                r("filter NSNET-INTERNAL", format!("! -i {i} -o {i} -j DROP"))
            }
        }
        Fw::DnatAccept => {
            if nft {
                r("inet nsnet forward", "ct status dnat accept".into())
            } else {
                r("filter NSNET-FORWARD", "-m conntrack --ctstate DNAT -j ACCEPT".into())
            }
        }
        Fw::Isolation(a, b) => {
            if nft {
                r(
                    "inet nsnet forward",
                    format!("iifname . oifname @isolation drop (element \"{a}\" . \"{b}\")"),
                )
            } else {
                r("filter NSNET-ISOLATE", format!("-i {a} -o {b} -j DROP"))
            }
        }
        Fw::PublishedOnly(i) => {
            if nft {
                r(
                    "inet nsnet forward",
                    format!("oifname @published_only iifname != @ifaces drop (\"{i}\" is published-only)"),
                )
            } else {
                r("filter NSNET-INBOUND", format!("-o {i} -j DROP"))
            }
        }
        Fw::AcceptFrom(i) => {
            if nft {
                r(
                    "inet nsnet forward",
                    format!("no rule drops it: the chain's policy accepts (from \"{i}\")"),
                )
            } else {
                r("filter NSNET-ACCEPT", format!("-i {i} -j ACCEPT"))
            }
        }
        Fw::HairpinMasquerade(s) => {
            if nft {
                r(
                    "inet nsnet postrouting",
                    format!("ct status dnat ip saddr . ip daddr @same_net masquerade (element {s} . {s})"),
                )
            } else {
                r(
                    "nat NSNET-POSTROUTING",
                    format!("-s {s} -d {s} -m conntrack --ctstate DNAT -j MASQUERADE"),
                )
            }
        }
        Fw::LoopbackMasquerade => {
            if nft {
                r("inet nsnet postrouting", "ct status dnat ip saddr 127.0.0.0/8 masquerade".into())
            } else {
                r(
                    "nat NSNET-POSTROUTING",
                    "-s 127.0.0.0/8 -m conntrack --ctstate DNAT -j MASQUERADE".into(),
                )
            }
        }
        Fw::Masquerade(s, i) => {
            if nft {
                r(
                    "inet nsnet postrouting",
                    format!("ip saddr @masq_nets masquerade (element {s})"),
                )
            } else {
                r("nat NSNET-POSTROUTING", format!("-s {s} ! -o {i} -j MASQUERADE"))
            }
        }
        Fw::OwnNetReturn(i, s) => r(
            "inet nsnet postrouting",
            format!("oifname . ip saddr @own_nets return (element \"{i}\" . {s})"),
        ),
        Fw::UserChain => {
            if nft {
                r("inet nsnet forward", "jump user".into())
            } else {
                r("filter NSNET-FORWARD", "-j NSNET-USER".into())
            }
        }
    }
}

fn kernel(what: &str) -> RuleRef {
    RuleRef {
        chain: "kernel".into(),
        rule: what.into(),
    }
}

/// Where the packet is headed, once the address is known.
#[derive(Debug, Clone)]
enum Dest<'a> {
    Sandbox(Ep<'a>),
    /// One of the host's own addresses (a gateway, the uplink's), with its interface.
    Host(Ipv4Addr),
    Loopback(Ipv4Addr),
    /// Inside an nsnet subnet, but no sandbox holds it.
    Nobody(Ipv4Addr, &'a Network),
    Beyond(Ipv4Addr),
}

/// A sandbox's endpoint on one network.
#[derive(Debug, Clone, Copy)]
struct Ep<'a> {
    sb: &'a SandboxFacts,
    ep: &'a Endpoint,
    net: &'a Network,
}

impl Ep<'_> {
    fn ip(&self) -> Ipv4Addr {
        v4(self.ep.address).addr()
    }
    fn name(&self) -> &str {
        &self.sb.sandbox.name
    }
}

/// A question [`explain`] cannot answer as asked: bad input (exit status 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadInput(pub String);

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

struct Walk<'a> {
    facts: &'a Facts,
    hops: Vec<Hop>,
    caveats: Vec<String>,
    /// The packet is IPv6: the forward hook's facts are IPv6's.
    six: bool,
}

impl<'a> Walk<'a> {
    fn hop(&mut self, at: impl Into<String>, what: impl Into<String>, rule: Option<RuleRef>) {
        self.hops.push(Hop {
            at: at.into(),
            what: what.into(),
            rule,
        });
    }

    fn net(&self, name: &str) -> Option<&'a Network> {
        self.facts.networks.iter().find(|n| n.name == name)
    }

    fn endpoints(&self) -> impl Iterator<Item = Ep<'a>> + 'a {
        let facts = self.facts;
        facts.sandboxes.iter().flat_map(move |sb| {
            sb.sandbox.endpoints.iter().filter_map(move |ep| {
                facts
                    .networks
                    .iter()
                    .find(|n| n.name == ep.network)
                    .map(|net| Ep { sb, ep, net })
            })
        })
    }

    fn sandbox(&self, name: &str) -> Result<&'a SandboxFacts, BadInput> {
        self.facts
            .sandboxes
            .iter()
            .find(|s| s.sandbox.name == name)
            .ok_or_else(|| BadInput(format!("no sandbox named '{name}'; `nsnet ls` lists them")))
    }

    fn host_address(&self, ip: Ipv4Addr) -> Option<&'a str> {
        self.facts
            .host_addresses
            .iter()
            .find(|(_, a)| a.addr() == ip)
            .map(|(i, _)| i.as_str())
    }

    /// The network whose interface is `iface`.
    fn net_of_iface(&self, iface: &str) -> Option<&'a Network> {
        self.facts
            .networks
            .iter()
            .find(|n| n.interface == iface || n.overlay_device() == Some(iface))
    }

    fn dest_of_ip(&self, ip: Ipv4Addr) -> Dest<'a> {
        if ip.is_loopback() {
            return Dest::Loopback(ip);
        }
        if self.host_address(ip).is_some() {
            return Dest::Host(ip);
        }
        if let Some(ep) = self.endpoints().find(|e| e.ip() == ip) {
            return Dest::Sandbox(ep);
        }
        if let Some(net) = self
            .facts
            .networks
            .iter()
            .find(|n| v4(n.subnet).contains(&ip))
        {
            return Dest::Nobody(ip, net);
        }
        Dest::Beyond(ip)
    }

    fn route(&self, ip: Ipv4Addr) -> Option<&'a HostRoute> {
        self.facts
            .routes
            .iter()
            .find(|(a, _)| *a == ip)
            .and_then(|(_, r)| r.as_ref())
    }

    /// The host's address on `iface` (its first).
    fn iface_address(&self, iface: &str) -> Option<Ipv4Addr> {
        self.facts
            .host_addresses
            .iter()
            .find(|(i, _)| i == iface)
            .map(|(_, a)| a.addr())
    }

    fn user_chain(&mut self) {
        if self.facts.user_rules && self.facts.backend != Backend::None {
            let rule = fw(self.facts.backend, Fw::UserChain);
            self.hop(
                "host",
                "the user chain runs first; it has rules of yours, which explain does not evaluate",
                Some(rule),
            );
            self.caveats.push(
                "the user chain has rules whose effect explain cannot see; `--probe` sends a real packet"
                    .into(),
            );
        }
    }

    /// The published port `proto`/`port` on host address `dst`, as the DNAT maps match it: `ports_ip` (the
    /// address given) before `ports` (any address). `loopback`: the packet is locally generated to a loopback
    /// address, which only `ports` and 127.0.0.1 entries catch.
    fn published(
        &self,
        dst: Ipv4Addr,
        proto: Proto,
        port: u16,
    ) -> Option<(Ep<'a>, &'a PortMapping)> {
        let mut best: Option<(Ep<'a>, &'a PortMapping)> = None;
        for e in self.endpoints() {
            for m in &e.ep.ports {
                if m.protocol != proto || !m.host_ports().contains(&port) {
                    continue;
                }
                match m.host_ip {
                    Some(ip) if ip == dst => return Some((e, m)),
                    None if best.is_none() => best = Some((e, m)),
                    _ => {}
                }
            }
        }
        best
    }

    /// A published mapping of `proto`/`port`, whatever its address, with its sandbox: to say why it does not
    /// apply, and where a probe listens to see that nothing arrives.
    fn published_elsewhere(&self, proto: Proto, port: u16) -> Option<(Ep<'a>, &'a PortMapping)> {
        self.endpoints().find_map(|e| {
            e.ep.ports
                .iter()
                .find(|m| m.protocol == proto && m.host_ports().contains(&port))
                .map(|m| (e, m))
        })
    }

    fn dnat_rule(&self, m: &PortMapping, port: u16, target: Ep<'_>) -> RuleRef {
        let offset = port.saturating_sub(m.host_port);
        fw(
            self.facts.backend,
            Fw::Dnat {
                mapping: m,
                host_port: port,
                target: target.ip(),
                container_port: m.container_port.saturating_add(offset),
            },
        )
    }

    /// The forward hook, from `in_if` to `out_if`: nsnet's chain, then the host's own chains with policy drop.
    /// `Err` is the rule that drops the packet.
    fn forward(&mut self, in_if: &str, out_if: &str, dnat: bool) -> Result<RuleRef, RuleRef> {
        let b = self.facts.backend;
        let in_net = self.net_of_iface(in_if);
        let out_net = self.net_of_iface(out_if);
        let mut last = kernel(if self.six {
            "forwarded (net.ipv6.conf.all.forwarding=1)"
        } else {
            "forwarded (net.ipv4.ip_forward=1)"
        });
        if b != Backend::None {
            self.user_chain();
            if let Some(n) = in_net.filter(|n| n.internal && in_if != out_if) {
                return Err(fw(b, Fw::InternalIn(&n.interface)));
            }
            if let Some(n) = out_net.filter(|n| n.internal && in_if != out_if) {
                return Err(fw(b, Fw::InternalOut(&n.interface)));
            }
            if dnat {
                last = fw(b, Fw::DnatAccept);
            } else {
                if let (Some(a), Some(z)) = (in_net, out_net) {
                    if a.name != z.name && (a.isolate || z.isolate) {
                        return Err(fw(b, Fw::Isolation(in_if, out_if)));
                    }
                }
                if let Some(z) = out_net {
                    let nat = z.options.gateway_mode == GatewayMode::Nat;
                    if in_net.is_none() && nat && !z.internal {
                        return Err(fw(b, Fw::PublishedOnly(out_if)));
                    }
                }
                last = fw(b, Fw::AcceptFrom(in_if));
            }
            self.hop(
                "host",
                format!("forward {in_if} -> {out_if}: accepted"),
                Some(last.clone()),
            );
        } else {
            self.hop(
                "host",
                format!("forward {in_if} -> {out_if}: no firewall (--firewall none)"),
                None,
            );
        }
        // The host's own chains with policy drop: nsnet's accepts there (commented "nsnet IFACE") cover the
        // network's own traffic and connections to its published ports.
        let chains = if self.six {
            &self.facts.six.drop_chains
        } else {
            &self.facts.drop_chains
        };
        for chain in chains {
            // With iptables, nsnet's own chains hang off `filter FORWARD` itself, and accept there what comes
            // from its networks (NSNET-ACCEPT) and DNATed connections.
            let family = if self.six { "ip6" } else { "ip" };
            let ours = b == Backend::Iptables
                && (
                    chain.family.as_str(),
                    chain.table.as_str(),
                    chain.chain.as_str(),
                ) == (family, "filter", "FORWARD");
            let from_ok = in_net.is_some_and(|n| ours || n.host_chains.contains(chain));
            let to_ok = dnat && out_net.is_some_and(|n| ours || n.host_chains.contains(chain));
            let rule = |text: String| RuleRef {
                chain: chain.to_string(),
                rule: text,
            };
            if from_ok {
                last = rule(format!(
                    "iifname \"{in_if}\" accept comment \"nsnet {in_if}\""
                ));
            } else if to_ok {
                last = rule(format!(
                    "oifname \"{out_if}\" ct status dnat accept comment \"nsnet {out_if}\""
                ));
            } else {
                return Err(rule(
                    "policy drop (no accept of nsnet's matches this packet)".into(),
                ));
            }
            self.hop(
                "host",
                format!("{chain} (policy drop) accepts it"),
                Some(last.clone()),
            );
        }
        Ok(last)
    }

    /// Postrouting: which source the packet leaves with.
    fn postrouting(&mut self, src: Ipv4Addr, dst: Ipv4Addr, out_if: &str, dnat: bool) {
        let b = self.facts.backend;
        if b == Backend::None {
            return;
        }
        let masq_to = self.iface_address(out_if);
        let to = masq_to.map(|a| format!(" ({a})")).unwrap_or_default();
        if dnat && src.is_loopback() {
            self.hop(
                "host",
                format!("masquerade: the source becomes {out_if}'s address{to}"),
                Some(fw(b, Fw::LoopbackMasquerade)),
            );
            return;
        }
        if let Some(n) = self
            .facts
            .networks
            .iter()
            .find(|n| dnat && v4(n.subnet).contains(&src) && v4(n.subnet).contains(&dst))
        {
            self.hop(
                "host",
                format!("hairpin masquerade: the source becomes {out_if}'s address{to}"),
                Some(fw(b, Fw::HairpinMasquerade(v4(n.subnet)))),
            );
            return;
        }
        let masq = |n: &&Network| {
            !n.internal && n.options.gateway_mode == GatewayMode::Nat && n.options.masquerade
        };
        if let Some(n) = self
            .facts
            .networks
            .iter()
            .filter(masq)
            .find(|n| v4(n.subnet).contains(&src))
        {
            if n.interface == out_if {
                if b == Backend::Nftables {
                    let rule = fw(b, Fw::OwnNetReturn(out_if, v4(n.subnet)));
                    self.hop(
                        "host",
                        "no masquerade (back into its own network)",
                        Some(rule),
                    );
                }
                return;
            }
            self.hop(
                "host",
                format!("masquerade: the source {src} becomes {out_if}'s address{to}"),
                Some(fw(b, Fw::Masquerade(v4(n.subnet), &n.interface))),
            );
            return;
        }
        self.hop(
            "host",
            format!("no masquerade: the receiver sees {src}"),
            None,
        );
    }

    /// The last hop into a sandbox.
    fn enter_sandbox(&mut self, e: Ep<'_>, from_if: Option<&str>) -> Result<(), String> {
        if !e.sb.up {
            return Err(format!(
                "sandbox {}'s namespace is gone (`nsnet gc` releases it)",
                e.name()
            ));
        }
        let bridge = e.net.driver == Driver::Bridge;
        let what = match (bridge, from_if) {
            (true, Some(i)) if i == e.ep.host_interface => format!(
                "back out of the port it came in by (hairpin): {} ->",
                e.ep.host_interface
            ),
            (true, _) => format!("out of port {} ->", e.ep.host_interface),
            (false, _) => format!("veth {} ->", e.ep.host_interface),
        };
        if bridge && from_if == Some(e.ep.host_interface.as_str()) && !e.net.options.hairpin {
            return Err(format!(
                "bridge port {} has hairpin mode off: the bridge never sends a frame back where it came from",
                e.ep.host_interface
            ));
        }
        let at = if bridge {
            format!("bridge {}", e.net.interface)
        } else {
            "host".to_string()
        };
        self.hop(
            at,
            format!("{what} {}'s {} ({})", e.name(), e.ep.interface, e.ip()),
            None,
        );
        Ok(())
    }
}

/// Whether `q` is about an IPv6 packet given the records in `facts`: asked so, or a sandbox in it has IPv6
/// and no IPv4. Its facts then need [`Facts::six`].
pub fn wants_ipv6(q: &Query, facts: &Facts) -> bool {
    q.ipv6 || six::only_ipv6(q, facts)
}

/// Decide the path and the verdict of `q` from `facts`. `Err` is bad input: an unknown sandbox, a question
/// with neither end on this host.
pub fn explain(q: &Query, facts: &Facts) -> Result<Explanation, BadInput> {
    if wants_ipv6(q, facts) {
        return six::explain6(q, facts);
    }
    // IPv4 follows IPv4 only: IPv6-only networks and endpoints are not part of its world.
    let ipv4 = facts.ipv4_part();
    let facts = &ipv4;
    let mut w = Walk {
        facts,
        hops: vec![],
        caveats: vec![],
        six: false,
    };
    let from_sb = match &q.from {
        Party::Sandbox(n) => Some(w.sandbox(n)?),
        _ => None,
    };
    // FROM as an address may be the host's or a sandbox's.
    let from = match (&q.from, from_sb) {
        (_, Some(sb)) => From::Sandbox(sb),
        (Party::Host, _) => From::Host,
        (Party::Address(ip), _) if ip.is_loopback() || w.host_address(*ip).is_some() => From::Host,
        (Party::Address(ip), _) => match w.dest_of_ip(*ip) {
            Dest::Sandbox(e) => From::Sandbox(e.sb),
            Dest::Nobody(ip, net) => {
                return Err(BadInput(format!(
                    "no sandbox holds {ip} (network {}); `nsnet ls` lists the sandboxes",
                    net.name
                )))
            }
            _ => From::Peer(*ip),
        },
        (Party::Sandbox(_), None) => return Err(BadInput("unreachable: sandbox lookup".into())),
        (Party::Address6(_), None) => return Err(BadInput("unreachable: an IPv6 address".into())),
    };
    let dest = match &q.to {
        Party::Sandbox(n) => {
            let sb = w.sandbox(n)?;
            // The endpoint on a network the sender shares, else the one with the default route.
            let shared = |ep: &&Endpoint| match from {
                From::Sandbox(f) => f.sandbox.endpoints.iter().any(|x| x.network == ep.network),
                _ => false,
            };
            let ep = sb
                .sandbox
                .endpoints
                .iter()
                .find(shared)
                .or_else(|| sb.sandbox.endpoints.iter().find(|e| e.default_route))
                .or_else(|| sb.sandbox.endpoints.first())
                .ok_or_else(|| BadInput(format!("sandbox '{n}' is on no network")))?;
            let net = w.net(&ep.network).ok_or_else(|| {
                BadInput(format!(
                    "sandbox '{n}' is on network '{}', which has no record",
                    ep.network
                ))
            })?;
            Dest::Sandbox(Ep { sb, ep, net })
        }
        Party::Host => Dest::Host(host_address_for(&w, &from).ok_or_else(|| {
            BadInput(
                "the host has no address to reach it by from there; give one of its addresses"
                    .into(),
            )
        })?),
        Party::Address(ip) => w.dest_of_ip(*ip),
        Party::Address6(_) => return Err(BadInput("unreachable: an IPv6 address".into())),
    };
    if let (From::Peer(_), Dest::Beyond(_)) = (&from, &dest) {
        return Err(BadInput(
            "neither end is on this host: FROM or TO must be a sandbox, `host` or one of the host's addresses".into(),
        ));
    }
    let dst_ip = match &dest {
        Dest::Sandbox(e) => e.ip(),
        Dest::Host(ip) | Dest::Loopback(ip) | Dest::Nobody(ip, _) | Dest::Beyond(ip) => *ip,
    };
    let to_text = match &q.to {
        Party::Sandbox(n) => format!("{n} ({dst_ip})"),
        Party::Host => format!("host ({dst_ip})"),
        Party::Address(ip) => ip.to_string(),
        Party::Address6(ip) => ip.to_string(),
    };
    let from_text = match (&q.from, &from) {
        (Party::Host, _) => "host".to_string(),
        (_, From::Sandbox(sb)) => sb.sandbox.name.clone(),
        (_, From::Host) => "host".into(),
        (_, From::Peer(ip)) => format!("peer {ip}"),
    };
    let outcome = match from {
        From::Sandbox(sb) => from_sandbox(&mut w, q, sb, &dest, dst_ip),
        From::Host => from_host(&mut w, q, &dest, dst_ip),
        From::Peer(ip) => from_peer(&mut w, q, ip, &dest, dst_ip),
    };
    let Outcome {
        delivered,
        reason,
        rule,
        probe,
    } = outcome;
    w.caveats.extend(facts.unread.iter().cloned());
    Ok(Explanation {
        from: from_text,
        to: to_text,
        protocol: q.protocol,
        port: q.port,
        hops: w.hops,
        verdict: Verdict {
            delivered,
            reason,
            rule,
            caveats: w.caveats,
        },
        ipv6: false,
        broken: vec![],
        probe,
        probe_refused: None,
    })
}

#[derive(Clone, Copy)]
enum From<'a> {
    Sandbox(&'a SandboxFacts),
    Host,
    Peer(Ipv4Addr),
}

struct Outcome {
    delivered: bool,
    reason: String,
    rule: Option<RuleRef>,
    probe: Option<ProbePlan>,
}

fn dropped(reason: impl Into<String>, rule: Option<RuleRef>, probe: Option<ProbePlan>) -> Outcome {
    Outcome {
        delivered: false,
        reason: reason.into(),
        rule,
        probe,
    }
}

fn delivered(
    reason: impl Into<String>,
    rule: Option<RuleRef>,
    probe: Option<ProbePlan>,
) -> Outcome {
    Outcome {
        delivered: true,
        reason: reason.into(),
        rule,
        probe,
    }
}

/// The host address `host` stands for, seen from the sender: a sandbox's gateway, 127.0.0.1 for the host
/// itself, the address on the LAN peer's side.
fn host_address_for(w: &Walk<'_>, from: &From<'_>) -> Option<Ipv4Addr> {
    match from {
        From::Sandbox(sb) => {
            let ep = sb
                .sandbox
                .endpoints
                .iter()
                .find(|e| e.default_route)
                .or_else(|| sb.sandbox.endpoints.first())?;
            ep.gateway
        }
        From::Host => Some(Ipv4Addr::LOCALHOST),
        From::Peer(ip) => {
            let r = w.route(*ip)?;
            w.iface_address(&r.interface)
        }
    }
}

/// After the DNAT decision at the host's prerouting (or output), with the packet for a host address:
/// delivered locally, or not to the published port asked about.
fn local_delivery(w: &mut Walk<'_>, q: &Query, dst: Ipv4Addr, mut probe: ProbePlan) -> Outcome {
    if let (Some(port), Some(proto)) = (q.port, q.protocol.port_proto()) {
        if let Some((t, m)) = w.published_elsewhere(proto, port) {
            probe.receiver = Some((t.name().to_string(), Some(container_port(m, port))));
            let on = m
                .host_ip
                .map_or("every address".to_string(), |ip| ip.to_string());
            let why = if m.host_ip.is_some_and(|ip| ip.is_loopback()) {
                format!(
                    "{port}/{proto} is published on 127.0.0.1 only (reachable from the host alone)"
                )
            } else {
                format!("{port}/{proto} is published on {on}, not on {dst}")
            };
            w.hop(
                "host",
                format!("no DNAT: {why}; the packet stays with the host's own stack"),
                None,
            );
            let rule = if m.host_ip.is_some_and(|ip| ip.is_loopback()) && !dst.is_loopback() {
                Some(RuleRef {
                    chain: "inet nsnet published".into(),
                    rule: format!(
                        "the only element for {proto} . {port} is in @ports_ip, keyed by 127.0.0.1"
                    ),
                })
            } else {
                None
            };
            let rule = match (rule, w.facts.backend) {
                (Some(_), Backend::Iptables) => Some(RuleRef {
                    chain: "nat NSNET-PORTS".into(),
                    rule: format!("-d 127.0.0.1/32 -p {proto} -m {proto} --dport {port} -j DNAT ... (matches 127.0.0.1 only)"),
                }),
                (r, _) => r,
            };
            return dropped(
                format!("not delivered to the published port: {why}"),
                rule,
                Some(probe),
            );
        }
    }
    w.hop(
        "host",
        format!("delivered locally to the host ({dst})"),
        None,
    );
    let what = match q.port {
        Some(p) => format!(
            "{p}/{} is no published port: whatever listens on the host answers",
            q.protocol
        ),
        None => "the host answers itself".into(),
    };
    delivered(
        format!("reaches the host itself: {what}"),
        Some(kernel("local delivery (input)")),
        Some(probe),
    )
}

fn from_sandbox(
    w: &mut Walk<'_>,
    q: &Query,
    sb: &SandboxFacts,
    dest: &Dest<'_>,
    dst: Ipv4Addr,
) -> Outcome {
    let name = sb.sandbox.name.clone();
    let at = format!("sandbox {name}");
    let own = sb
        .sandbox
        .endpoints
        .iter()
        .any(|e| v4(e.address).addr() == dst);
    let probe = |src: Ipv4Addr, receiver: Option<(String, Option<u16>)>| ProbePlan {
        sender: name.clone(),
        src: src.into(),
        dst: dst.into(),
        port: q.port,
        protocol: q.protocol,
        receiver,
    };
    if matches!(dest, Dest::Loopback(_)) || own {
        w.hop(
            &at,
            format!("{dst} is the sandbox's own: delivered on its own lo"),
            None,
        );
        let src = if own { dst } else { Ipv4Addr::LOCALHOST };
        return delivered(
            "stays inside the sandbox (its own address; the host's 127.0.0.1 is not reachable from a sandbox)",
            Some(kernel("local route in the sandbox")),
            Some(probe(src, Some((name.clone(), q.port)))),
        );
    }
    // The sandbox's route: on-link on an endpoint's subnet, else its default route.
    let on_link = sb
        .sandbox
        .endpoints
        .iter()
        .find(|e| v4(e.address).trunc().contains(&dst));
    let (ep, via) = match on_link {
        Some(e) => (e, None),
        None => match sb.sandbox.endpoints.iter().find(|e| e.default_route) {
            Some(e) => (e, e.gateway),
            None => {
                w.hop(
                    &at,
                    format!("no route to {dst}: the sandbox has no default route"),
                    None,
                );
                // A probe still tries, and meets the same missing route.
                let src = sb.sandbox.endpoints.first().map(|e| v4(e.address).addr());
                let receiver = match dest {
                    Dest::Sandbox(e) => Some((e.name().to_string(), q.port)),
                    _ => None,
                };
                return dropped(
                    "no route: the sandbox's networks are internal or IPv6-only (no default route for IPv4), so nothing is sent",
                    Some(kernel("route lookup in the sandbox: network unreachable")),
                    src.map(|src| probe(src, receiver)),
                );
            }
        },
    };
    let Some(net) = w.net(&ep.network) else {
        return dropped(
            format!("network '{}' has no record", ep.network),
            None,
            None,
        );
    };
    let src = q.src.unwrap_or(v4(ep.address).addr());
    let via_text = via.map(|g| format!(" via {g}")).unwrap_or_default();
    w.hop(
        &at,
        format!(
            "route to {dst}: dev {}{via_text}, source {src}",
            ep.interface
        ),
        None,
    );
    let bridge_at = format!("bridge {}", net.interface);
    let in_at = if net.driver == Driver::Bridge {
        bridge_at.clone()
    } else {
        format!("host {}", ep.host_interface)
    };
    w.hop(
        &in_at,
        format!(
            "enters the host on {} ({} network {})",
            ep.host_interface, net.driver, net.name
        ),
        None,
    );
    let receiver_of = |d: &Dest<'_>| match d {
        Dest::Sandbox(e) => Some((e.name().to_string(), q.port)),
        _ => None,
    };
    if src != v4(ep.address).addr() {
        if w.facts.backend == Backend::None {
            w.caveats.push(format!(
                "network {} has no firewall: nothing checks the source address (only the bridge's MAC binding)",
                net.name
            ));
        } else {
            let rule = fw(
                w.facts.backend,
                Fw::AntiSpoof {
                    driver: net.driver,
                    host_if: &ep.host_interface,
                    own: v4(ep.address).addr(),
                },
            );
            w.hop(
                &in_at,
                format!(
                    "anti-spoofing: {src} is not {name}'s address on {}",
                    ep.host_interface
                ),
                Some(rule.clone()),
            );
            return dropped(
                format!(
                    "anti-spoofing: {name} may only send from {} on {}",
                    v4(ep.address).addr(),
                    net.name
                ),
                Some(rule),
                Some(probe(src, receiver_of(dest))),
            );
        }
    }
    // On-link: a neighbour on the same network, the gateway, or nobody.
    if via.is_none() {
        match dest {
            Dest::Sandbox(t) => {
                let fast = net.driver == Driver::Bridge
                    && net.fast_path
                    && w.facts.fast_path.contains(&dst)
                    && w.facts.fast_path.contains(&src);
                if fast {
                    w.hop(
                        &bridge_at,
                        format!(
                            "fast path: the bpf program on {} hands the frame to {}'s {} (bpf_redirect_peer); it skips the bridge and netfilter",
                            ep.host_interface, t.name(), t.ep.interface
                        ),
                        Some(RuleRef { chain: format!("tc ingress_block of {}", net.interface), rule: "bpf nsnet_fastpath (direct-action)".into() }),
                    );
                    if w.facts.user_rules {
                        w.caveats.push("the fast path skips the user chain (create the network with --fast-path=false to filter it)".into());
                    }
                    if !t.sb.up {
                        return dropped(
                            format!("sandbox {}'s namespace is gone", t.name()),
                            None,
                            Some(probe(src, receiver_of(dest))),
                        );
                    }
                    return delivered(
                        format!(
                            "same network {}: sandbox to sandbox on the fast path",
                            net.name
                        ),
                        Some(RuleRef {
                            chain: format!("tc ingress_block of {}", net.interface),
                            rule: "bpf nsnet_fastpath: bpf_redirect_peer".into(),
                        }),
                        Some(probe(src, receiver_of(dest))),
                    );
                }
                if w.facts.user_rules && w.facts.backend != Backend::None {
                    w.caveats.push("with br_netfilter, bridged traffic passes the user chain, whose rules explain does not evaluate; `--probe` shows their effect".into());
                }
                if let Err(why) = w.enter_sandbox(*t, Some(&ep.host_interface)) {
                    return dropped(why, None, Some(probe(src, receiver_of(dest))));
                }
                return delivered(
                    format!("same network {}: the bridge forwards it (no rule of nsnet's stops traffic within a network)", net.name),
                    Some(kernel(&format!("bridge {} forwarding (static FDB entry of {})", net.interface, t.ep.mac))),
                    Some(probe(src, receiver_of(dest))),
                );
            }
            Dest::Nobody(ip, n) => {
                w.hop(
                    &bridge_at,
                    format!("no sandbox of {} holds {ip}: ARP goes unanswered", n.name),
                    None,
                );
                return dropped(
                    format!("nobody holds {ip}"),
                    Some(kernel("neighbour resolution fails")),
                    Some(probe(src, None)),
                );
            }
            _ => {}
        }
    }
    // At the host's IP layer (prerouting), entering from the network's interface.
    let in_if = net.interface.as_str();
    host_ip_layer(
        w,
        q,
        in_if,
        src,
        dest,
        dst,
        Some(&ep.host_interface),
        probe(src, receiver_of(dest)),
    )
}

/// A packet arriving at the host's IP layer on `in_if` (prerouting): DNAT, then local delivery or forwarding.
#[allow(clippy::too_many_arguments)]
fn host_ip_layer(
    w: &mut Walk<'_>,
    q: &Query,
    in_if: &str,
    src: Ipv4Addr,
    dest: &Dest<'_>,
    dst: Ipv4Addr,
    in_port: Option<&str>,
    mut probe: ProbePlan,
) -> Outcome {
    let b = w.facts.backend;
    match dest {
        Dest::Host(_) | Dest::Loopback(_) => {
            if let (Some(port), Some(proto), Dest::Host(_)) =
                (q.port, q.protocol.port_proto(), dest)
            {
                if let Some((t, m)) = w.published(dst, proto, port).filter(|_| b != Backend::None) {
                    let rule = w.dnat_rule(m, port, t);
                    let cport = m
                        .container_port
                        .saturating_add(port.saturating_sub(m.host_port));
                    w.hop(
                        "host",
                        format!(
                            "prerouting: published port, DNAT to {}:{cport} ({})",
                            t.ip(),
                            t.name()
                        ),
                        Some(rule.clone()),
                    );
                    probe.receiver = Some((t.name().to_string(), Some(cport)));
                    return forward_to_sandbox(w, in_if, src, t, true, in_port, rule, probe);
                }
            }
            if let Dest::Loopback(_) = dest {
                if let Some((t, m)) = q
                    .port
                    .zip(q.protocol.port_proto())
                    .and_then(|(p, proto)| w.published_elsewhere(proto, p).map(|x| (x, p)))
                    .map(|((t, m), p)| (t, container_port(m, p)))
                {
                    probe.receiver = Some((t.name().to_string(), Some(m)));
                }
                let rule = fw(b, Fw::NoLoopbackDnat);
                w.hop("host", "a loopback destination from outside: nsnet never DNATs it, and the kernel drops it as a martian unless route_localnet is on", Some(rule.clone()));
                return dropped("loopback addresses are not reachable from outside the host (published ports on 127.0.0.1 are for the host alone)", Some(rule), Some(probe));
            }
            local_delivery(w, q, dst, probe)
        }
        Dest::Sandbox(t) => {
            let t = *t;
            forward_to_sandbox(w, in_if, src, t, false, in_port, kernel("routed"), probe)
        }
        Dest::Nobody(ip, n) => {
            w.hop(
                "host",
                format!("route to {ip} via {}: no sandbox holds it", n.interface),
                None,
            );
            dropped(
                format!("nobody holds {ip} on network {}", n.name),
                Some(kernel("neighbour resolution fails")),
                Some(probe),
            )
        }
        Dest::Beyond(ip) => {
            let Some(route) = w.route(*ip).cloned() else {
                w.hop("host", format!("no route to {ip}"), None);
                return dropped(
                    format!("the host has no route to {ip}"),
                    Some(kernel("route lookup: network unreachable")),
                    Some(probe),
                );
            };
            let via = route
                .gateway
                .map(|g| format!(" via {g}"))
                .unwrap_or_default();
            w.hop(
                "host",
                format!("route to {ip}: dev {}{via}", route.interface),
                None,
            );
            let last = match w.forward(in_if, &route.interface, false) {
                Ok(r) => r,
                Err(rule) => {
                    let what = format!("forward {in_if} -> {}: dropped", route.interface);
                    w.hop("host", what, Some(rule.clone()));
                    return dropped(verdict_reason(&rule), Some(rule), Some(probe));
                }
            };
            w.postrouting(src, *ip, &route.interface, false);
            w.hop("host", format!("out of {} to {ip}", route.interface), None);
            if w.net_of_iface(in_if)
                .is_some_and(|n| n.options.gateway_mode == GatewayMode::Routed)
            {
                w.caveats.push(format!("a routed network's traffic keeps its source: {ip}'s side must route the subnet back to this host"));
            }
            delivered(
                format!("leaves the host by {} towards {ip}", route.interface),
                Some(last),
                Some(probe),
            )
        }
    }
}

/// Forwarding into sandbox `t`'s network, then postrouting and the last hop.
#[allow(clippy::too_many_arguments)]
fn forward_to_sandbox(
    w: &mut Walk<'_>,
    in_if: &str,
    src: Ipv4Addr,
    t: Ep<'_>,
    dnat: bool,
    in_port: Option<&str>,
    dnat_rule: RuleRef,
    probe: ProbePlan,
) -> Outcome {
    let out_if = t.net.interface.as_str();
    let last = match w.forward(in_if, out_if, dnat) {
        Ok(r) => r,
        Err(rule) => {
            w.hop(
                "host",
                format!("forward {in_if} -> {out_if}: dropped"),
                Some(rule.clone()),
            );
            return dropped(verdict_reason(&rule), Some(rule), Some(probe));
        }
    };
    w.postrouting(src, t.ip(), out_if, dnat);
    if let Err(why) = w.enter_sandbox(t, in_port) {
        return dropped(why, None, Some(probe));
    }
    let reason = if dnat {
        format!("the published port leads to {} ({})", t.name(), t.ip())
    } else {
        format!("routed to {} on network {}", t.name(), t.net.name)
    };
    let rule = if dnat { dnat_rule } else { last };
    delivered(reason, Some(rule), Some(probe))
}

fn from_host(w: &mut Walk<'_>, q: &Query, dest: &Dest<'_>, dst: Ipv4Addr) -> Outcome {
    let b = w.facts.backend;
    let mut probe = ProbePlan {
        sender: "host".into(),
        src: dst.into(),
        dst: dst.into(),
        port: q.port,
        protocol: q.protocol,
        receiver: None,
    };
    match dest {
        Dest::Host(_) | Dest::Loopback(_) => {
            if let (Some(port), Some(proto)) = (q.port, q.protocol.port_proto()) {
                if let Some((t, m)) = w.published(dst, proto, port).filter(|_| b != Backend::None) {
                    let rule = w.dnat_rule(m, port, t);
                    let cport = m
                        .container_port
                        .saturating_add(port.saturating_sub(m.host_port));
                    w.hop(
                        "host",
                        format!(
                            "output: published port, DNAT to {}:{cport} ({})",
                            t.ip(),
                            t.name()
                        ),
                        Some(rule.clone()),
                    );
                    w.hop(
                        "host",
                        format!("route to {}: dev {}", t.ip(), t.net.interface),
                        None,
                    );
                    w.postrouting(dst, t.ip(), &t.net.interface, true);
                    probe.receiver = Some((t.name().to_string(), Some(cport)));
                    if let Err(why) = w.enter_sandbox(t, None) {
                        return dropped(why, None, Some(probe));
                    }
                    return delivered(
                        format!("the published port leads to {} ({})", t.name(), t.ip()),
                        Some(rule),
                        Some(probe),
                    );
                }
            }
            local_delivery(w, q, dst, probe)
        }
        Dest::Sandbox(t) => {
            let t = *t;
            probe.src = gw4(t.net.gateway).into();
            probe.receiver = Some((t.name().to_string(), q.port));
            w.hop(
                "host",
                format!(
                    "route to {}: dev {} (the network's connected route), source {}",
                    t.ip(),
                    t.net.interface,
                    gw4(t.net.gateway)
                ),
                None,
            );
            if let Err(why) = w.enter_sandbox(t, None) {
                return dropped(why, None, Some(probe));
            }
            delivered(
                format!(
                    "the host reaches its sandboxes directly (network {})",
                    t.net.name
                ),
                Some(kernel(&format!(
                    "route {} dev {}",
                    v4(t.net.subnet),
                    t.net.interface
                ))),
                Some(probe),
            )
        }
        Dest::Nobody(ip, n) => {
            w.hop(
                "host",
                format!("route to {ip}: dev {}; no sandbox holds it", n.interface),
                None,
            );
            dropped(
                format!("nobody holds {ip} on network {}", n.name),
                Some(kernel("neighbour resolution fails")),
                Some(probe),
            )
        }
        Dest::Beyond(ip) => match w.route(*ip).cloned() {
            Some(r) => {
                probe.src = w
                    .iface_address(&r.interface)
                    .unwrap_or(Ipv4Addr::UNSPECIFIED)
                    .into();
                w.hop("host", format!("route to {ip}: dev {}", r.interface), None);
                delivered(
                    format!("leaves the host by {}", r.interface),
                    Some(kernel("output")),
                    Some(probe),
                )
            }
            None => dropped(
                format!("the host has no route to {ip}"),
                Some(kernel("route lookup: network unreachable")),
                None,
            ),
        },
    }
}

fn from_peer(
    w: &mut Walk<'_>,
    q: &Query,
    peer: Ipv4Addr,
    dest: &Dest<'_>,
    dst: Ipv4Addr,
) -> Outcome {
    let probe = ProbePlan {
        sender: peer.to_string(),
        src: peer.into(),
        dst: dst.into(),
        port: q.port,
        protocol: q.protocol,
        receiver: match dest {
            Dest::Sandbox(e) => Some((e.name().to_string(), q.port)),
            _ => None,
        },
    };
    let Some(route) = w.route(peer).cloned() else {
        w.hop(
            format!("peer {peer}"),
            "the host has no route back to it",
            None,
        );
        return dropped(
            format!("the host has no route to {peer}: no answer could return"),
            Some(kernel("route lookup: network unreachable")),
            Some(probe),
        );
    };
    let in_if = route.interface.clone();
    match dest {
        Dest::Sandbox(t) => w.hop(
            format!("peer {peer}"),
            format!(
                "sends to {dst}, assuming it routes {} via this host; enters on {in_if}",
                v4(t.net.subnet)
            ),
            None,
        ),
        _ => w.hop(
            format!("peer {peer}"),
            format!("sends to {dst}; enters the host on {in_if}"),
            None,
        ),
    }
    if let Dest::Sandbox(t) = dest {
        w.caveats.push(format!(
            "explain cannot see {peer}'s routes: this assumes it sends {} via this host",
            v4(t.net.subnet)
        ));
    }
    if let Dest::Loopback(_) = dest {
        w.caveats.push(format!("{dst} on {peer} is its own loopback: it reaches this host only if {peer} routes 127.0.0.0/8 here"));
    }
    host_ip_layer(w, q, &in_if, peer, dest, dst, None, probe)
}

/// The sandbox port host port `port` of mapping `m` leads to.
fn container_port(m: &PortMapping, port: u16) -> u16 {
    m.container_port
        .saturating_add(port.saturating_sub(m.host_port))
}

fn verdict_reason(rule: &RuleRef) -> String {
    let r = &rule.rule;
    if r.contains("@isolation") || rule.chain.contains("ISOLATE") {
        "network isolation: sandboxes of other networks reach this one only through published ports"
            .into()
    } else if r.contains("@internal") || rule.chain.contains("INTERNAL") {
        "an internal network forwards to no other network and nothing reaches it from outside"
            .into()
    } else if r.contains("@published_only") || rule.chain.contains("INBOUND") {
        "gateway mode nat: from beyond the host, sandboxes are reached through published ports only"
            .into()
    } else if r.starts_with("policy drop") {
        format!(
            "the host's own chain {} drops forwarded traffic by policy",
            rule.chain
        )
    } else {
        format!("dropped by {rule}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Mac, Network};

    fn net(name: &str, subnet: &str) -> Network {
        let subnet: Ipv4Net = subnet.parse().unwrap();
        let gw = subnet.hosts().next().unwrap();
        Network::bridge(name, subnet, gw, &format!("nsbr-{name}"))
    }

    fn sandbox(name: &str, net: &Network, last: u8, ports: Vec<PortMapping>) -> SandboxFacts {
        let o = net.subnet.unwrap().network().octets();
        let ip = Ipv4Addr::new(o[0], o[1], o[2], last);
        SandboxFacts {
            sandbox: Sandbox {
                name: name.into(),
                netns: format!("/run/netns/{name}").into(),
                owned: true,
                netns_id: None,
                cni: false,
                endpoints: vec![Endpoint {
                    network: net.name.clone(),
                    interface: "eth0".into(),
                    host_interface: format!("veth{name}"),
                    mac: Mac::for_ipv4(ip),
                    address: Some(Ipv4Net::new(ip, net.subnet.unwrap().prefix_len()).unwrap()),
                    gateway: net.gateway,
                    default_route: !net.internal,
                    mtu: 1500,
                    ports,
                    removing: false,
                    aliases: vec![],
                    ipv6: None,
                }],
                removing: false,
                dns_servers: vec![],
            },
            up: true,
        }
    }

    fn port(host_ip: Option<&str>, host_port: u16, container_port: u16) -> PortMapping {
        PortMapping {
            host_ip: host_ip.map(|s| s.parse().unwrap()),
            host_port,
            container_port,
            count: 1,
            protocol: Proto::Tcp,
        }
    }

    /// The harness's host: uplink0 10.0.1.48/24 with a LAN peer 10.0.1.26; n1 with a (port 8080 -> 80, and
    /// 127.0.0.1:9090 -> 90) and b; n2 with c; internal `int` with i; routed `r` with t.
    fn world() -> Facts {
        let n1 = net("n1", "172.16.1.0/24");
        let n2 = net("n2", "172.16.2.0/24");
        let mut int = net("int", "172.16.4.0/24");
        int.internal = true;
        let mut r = net("r", "172.16.6.0/24");
        r.options.gateway_mode = GatewayMode::Routed;
        let sandboxes = vec![
            sandbox(
                "a",
                &n1,
                2,
                vec![port(None, 8080, 80), port(Some("127.0.0.1"), 9090, 90)],
            ),
            sandbox("b", &n1, 3, vec![]),
            sandbox("c", &n2, 2, vec![]),
            sandbox("i", &int, 2, vec![]),
            sandbox("t", &r, 2, vec![]),
        ];
        let mut host_addresses = vec![("uplink0".to_string(), "10.0.1.48/24".parse().unwrap())];
        for n in [&n1, &n2, &int, &r] {
            host_addresses.push((
                n.interface.clone(),
                Ipv4Net::new(n.gateway.unwrap(), 24).unwrap(),
            ));
        }
        host_addresses.push(("lo".into(), "127.0.0.1/8".parse().unwrap()));
        Facts {
            networks: vec![n1, n2, int, r],
            sandboxes,
            host_addresses,
            routes: vec![(
                "10.0.1.26".parse().unwrap(),
                Some(HostRoute {
                    interface: "uplink0".into(),
                    gateway: None,
                }),
            )],
            backend: Backend::Nftables,
            user_rules: false,
            drop_chains: vec![],
            unread: vec![],
            fast_path: ["172.16.1.2", "172.16.1.3"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
            six: Facts6::default(),
        }
    }

    fn ask(f: &Facts, from: &str, to: &str, src: Option<&str>) -> Explanation {
        let q = Query::parse(from, to, src.map(|s| s.parse().unwrap())).unwrap();
        explain(&q, f).unwrap()
    }

    /// (from, to, delivered, a word the deciding rule holds)
    #[test]
    fn the_matrix() {
        let f = world();
        let cases: &[(&str, &str, Option<&str>, bool, &str)] = &[
            ("a", "b", None, true, "fast"),
            ("a", "b:80", None, true, "fast"),
            ("a", "c", None, false, "@isolation"),
            ("c", "a:80", None, false, "@isolation"),
            ("i", "a", None, false, "network unreachable"),
            ("i", "172.16.4.1:8080", None, false, "@internal"),
            ("a", "i", None, false, "@internal"),
            ("10.0.1.26", "10.0.1.48:8080", None, true, "@ports"),
            ("10.0.1.26", "10.0.1.48:9090", None, false, "127.0.0.1"),
            ("10.0.1.26", "127.0.0.1:9090", None, false, "127.0.0.0/8"),
            ("host", "127.0.0.1:9090", None, true, "@ports_ip"),
            ("host", "10.0.1.48:8080", None, true, "@ports"),
            ("host", "10.0.1.48:9090", None, false, "127.0.0.1"),
            ("host", "a", None, true, "route"),
            ("a", "10.0.1.48:8080", None, true, "@ports"),
            ("b", "10.0.1.48:8080", None, true, "@ports"),
            ("c", "10.0.1.48:8080", None, true, "@ports"),
            ("a", "b", Some("172.16.1.200"), false, "@endpoints"),
            ("10.0.1.26", "a:80", None, false, "@published_only"),
            ("10.0.1.26", "t:81", None, true, "policy accepts"),
            ("10.0.1.26", "i", None, false, "@internal"),
            ("a", "10.0.1.26", None, true, "policy accepts"),
            ("a", "host", None, true, "local delivery"),
            ("10.0.1.26", "10.0.1.48:22", None, true, "local delivery"),
            ("a", "a", None, true, "local route"),
        ];
        for (from, to, src, want, word) in cases {
            let e = ask(&f, from, to, *src);
            let rule = e
                .verdict
                .rule
                .as_ref()
                .map(|r| r.to_string())
                .unwrap_or_default();
            assert_eq!(e.verdict.delivered, *want, "{from} -> {to}:\n{e}");
            assert!(
                rule.contains(word),
                "{from} -> {to}: rule {rule:?} lacks {word:?}:\n{e}"
            );
        }
    }

    #[test]
    fn hairpin_is_masqueraded_and_needs_hairpin_mode() {
        let mut f = world();
        let e = ask(&f, "a", "10.0.1.48:8080", None);
        assert!(e.verdict.delivered);
        assert!(e.hops.iter().any(|h| h.what.contains("hairpin")), "{e}");
        assert!(
            e.hops.iter().any(|h| h
                .rule
                .as_ref()
                .is_some_and(|r| r.rule.contains("@same_net"))),
            "{e}"
        );
        f.networks[0].options.hairpin = false;
        let e = ask(&f, "a", "10.0.1.48:8080", None);
        assert!(
            !e.verdict.delivered && e.verdict.reason.contains("hairpin"),
            "{e}"
        );
    }

    #[test]
    fn the_lan_peer_is_seen_as_itself_through_a_published_port() {
        let e = ask(&world(), "10.0.1.26", "10.0.1.48:8080", None);
        assert!(
            e.hops
                .iter()
                .any(|h| h.what.contains("the receiver sees 10.0.1.26")),
            "{e}"
        );
        let p = e.probe.unwrap();
        assert_eq!(p.receiver, Some(("a".into(), Some(80))));
    }

    #[test]
    fn isolation_is_off_when_both_opt_out() {
        let mut f = world();
        f.networks[0].isolate = false;
        assert!(!ask(&f, "a", "c", None).verdict.delivered);
        f.networks[1].isolate = false;
        let e = ask(&f, "a", "c", None);
        assert!(e.verdict.delivered, "{e}");
        assert!(e.hops.iter().any(|h| h.what.contains("masquerade")), "{e}");
    }

    #[test]
    fn without_a_live_fast_path_the_bridge_forwards() {
        let mut f = world();
        f.fast_path.clear();
        let e = ask(&f, "a", "b", None);
        assert!(e.verdict.delivered && e.verdict.rule.unwrap().rule.contains("bridge"));
    }

    #[test]
    fn the_user_chain_is_a_caveat_and_backends_name_their_rules() {
        let mut f = world();
        f.user_rules = true;
        let e = ask(&f, "c", "a", None);
        assert!(
            e.verdict.caveats.iter().any(|c| c.contains("--probe")),
            "{e}"
        );
        f.backend = Backend::Iptables;
        let e = ask(&f, "c", "a", None);
        assert_eq!(e.verdict.rule.unwrap().chain, "filter NSNET-ISOLATE");
        let e = ask(&f, "a", "b", Some("172.16.1.9"));
        assert!(e.verdict.rule.unwrap().rule.contains("physdev"));
        f.backend = Backend::None;
        assert!(ask(&f, "a", "c", None).verdict.delivered);
        assert!(ask(&f, "a", "b", Some("172.16.1.9")).verdict.delivered);
    }

    #[test]
    fn a_drop_policy_host_chain_lets_through_what_nsnet_opened_only() {
        let mut f = world();
        let chain = HostChain {
            family: "ip".into(),
            table: "filter".into(),
            chain: "FORWARD".into(),
        };
        f.drop_chains = vec![chain.clone()];
        // No accepts recorded for n1: its traffic out dies there.
        let e = ask(&f, "a", "10.0.1.26", None);
        assert!(
            !e.verdict.delivered && e.verdict.reason.contains("policy"),
            "{e}"
        );
        for n in &mut f.networks {
            n.host_chains = vec![chain.clone()];
        }
        assert!(ask(&f, "a", "10.0.1.26", None).verdict.delivered);
        assert!(
            ask(&f, "10.0.1.26", "10.0.1.48:8080", None)
                .verdict
                .delivered
        );
        // A routed network's sandbox reached directly: nsnet's accepts there do not cover it.
        assert!(!ask(&f, "10.0.1.26", "t:81", None).verdict.delivered);
    }

    #[test]
    fn bad_input() {
        let f = world();
        for (from, to, src) in [
            ("nosuch", "a", None),
            ("a", "nosuch", None),
            ("10.0.1.26", "10.0.1.99", None),
            ("10.0.1.26", "172.16.1.77", None),
        ] {
            let q = Query::parse(from, to, src).unwrap();
            let r = explain(&q, &f);
            if to == "172.16.1.77" {
                assert!(!r.unwrap().verdict.delivered);
            } else {
                assert!(r.is_err(), "{from} -> {to}");
            }
        }
        for (from, to, src) in [
            ("a", "b:0", None),
            ("a", "b:70000", None),
            ("a", "b:80/sctp", None),
            ("a", "b:80/icmp", None),
            ("a", "b:x", None),
            ("-a", "b", None),
            ("10.0.1", "b", None),
            ("host", "a", Some(Ipv4Addr::new(1, 2, 3, 4))),
        ] {
            assert!(Query::parse(from, to, src).is_err(), "{from} {to}");
        }
        let q = Query::parse("a", "b:53/udp", None).unwrap();
        assert_eq!((q.port, q.protocol), (Some(53), Protocol::Udp));
        assert_eq!(
            Query::parse("a", "b", None).unwrap().protocol,
            Protocol::Icmp
        );
    }
}
