//! `nsnet explain` for IPv6 packets: the same walk as IPv4's, through the IPv6 rules the drivers install
//! (`endpoints6` and `nd_targets` in `bridge nsnet`, `ports6`/`ports6_ip`, NAT66, the `[::1]` socket
//! translation, the fast path's `local6`). Unlike the IPv4 walk, each kernel object the path needs is checked
//! against what [`Facts6`] read: the sandbox's addresses (its fixed link-local one too) and default route, the
//! gateway's addresses on the bridge, the firewall's elements, the fast path's entries. A missing one is
//! named in [`Explanation::broken`] and, where the packet needs it, drops it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;

use ipnet::{IpNet, Ipv6Net};

use super::{
    delivered, dropped, kernel, verdict_reason, BadInput, Explanation, Facts, Outcome, Party,
    Query, RuleRef, SandboxFacts, Verdict, Walk,
};
use crate::firewall::{Backend, HostChain, Rule};
use crate::model::{Driver, Endpoint, GatewayMode, Network};
use crate::plan::build::{endpoint_rules, gateway_addresses6, GATEWAY_LINK_LOCAL6};
use crate::portmap::{PortMapping, Proto};

/// Where the host routes an IPv6 address: the output interface and the gateway (none: on-link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoute6 {
    pub interface: String,
    pub gateway: Option<Ipv6Addr>,
}

/// A sandbox's namespace as IPv6 sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inside6 {
    /// The IPv6 addresses on its endpoints' links, by link name.
    pub addresses: Vec<(String, Ipv6Net)>,
    /// Its IPv6 default routes: link name and gateway.
    pub default_routes: Vec<(String, Option<Ipv6Addr>)>,
}

/// What an IPv6 question is decided from, besides the records.
#[derive(Debug, Clone, Default)]
pub struct Facts6 {
    /// The host's IPv6 addresses, by interface (link-local ones included).
    pub host_addresses: Vec<(String, Ipv6Net)>,
    /// The host's routes to the IPv6 addresses in the question that are beyond it (LAN peers).
    pub routes: Vec<(Ipv6Addr, Option<HostRoute6>)>,
    /// Sandbox addresses with an entry in their network's fast path (`local6`).
    pub fast_path: BTreeSet<Ipv6Addr>,
    /// Sandbox addresses whose network's fast path carries IPv6 but has no entry for them.
    pub fast_path_lacking: BTreeSet<Ipv6Addr>,
    /// By sandbox name, what its namespace holds; a sandbox with no entry was not looked into.
    pub inside: BTreeMap<String, Inside6>,
    /// The endpoint and port rules of the sandboxes involved that the firewall lacks; `None`: not read.
    pub missing: Option<Vec<Rule>>,
    /// The `[::1]` translation's ports, as (protocol number, port); `None`: no programs (or not all).
    pub loopback6_ports: Option<Vec<(u32, u16)>>,
    /// This host can have the translation's programs (cgroup2, bpf).
    pub loopback6_supported: bool,
    /// Other tables' forward chains of family `ip6` or `inet` whose policy is drop.
    pub drop_chains: Vec<HostChain>,
    /// Each dual-stack overlay network's device and fast path as the kernel holds them, by network name
    /// (read when the question names an IPv6 address); `None`: its device is not there.
    pub overlay: BTreeMap<String, Option<OverlayKernel6>>,
}

/// Whether a question that names no IPv6 address is still about IPv6: a sandbox in it has IPv6 and no IPv4.
pub(super) fn only_ipv6(q: &Query, facts: &Facts) -> bool {
    if matches!(q.from, Party::Address(_)) || matches!(q.to, Party::Address(_)) || q.src.is_some() {
        return false;
    }
    let six_only = |name: &str| {
        facts.sandboxes.iter().any(|s| {
            s.sandbox.name == name
                && s.sandbox.endpoints.iter().any(|e| e.ipv6.is_some())
                && s.sandbox.endpoints.iter().all(|e| e.address.is_none())
        })
    };
    [&q.from, &q.to]
        .iter()
        .any(|p| matches!(p, Party::Sandbox(n) if six_only(n)))
}

/// A sandbox's endpoint with IPv6.
#[derive(Clone, Copy)]
struct E6<'a> {
    sb: &'a SandboxFacts,
    ep: &'a Endpoint,
    net: &'a Network,
    ip: Ipv6Addr,
    net6: Ipv6Net,
    gateway: Ipv6Addr,
}

impl E6<'_> {
    fn name(&self) -> &str {
        &self.sb.sandbox.name
    }
    fn link_local(&self) -> Ipv6Addr {
        self.ep.mac.link_local6()
    }
    /// The network's subnet (its prefix).
    fn subnet(&self) -> Ipv6Net {
        self.net6.trunc()
    }
}

#[derive(Clone, Copy)]
enum Dest<'a> {
    Sandbox(E6<'a>),
    Host(Ipv6Addr),
    Loopback,
    Nobody(Ipv6Addr, &'a Network),
    Beyond(Ipv6Addr),
}

#[derive(Clone, Copy)]
enum From<'a> {
    Sandbox(&'a SandboxFacts),
    Host,
    Peer(Ipv6Addr),
}

struct Six<'a> {
    w: Walk<'a>,
    broken: Vec<String>,
    /// What `--probe` sends, once the walk knows the packet leaves its sandbox.
    probe: Option<super::ProbePlan>,
}

fn e6_of<'a>(facts: &'a Facts, sb: &'a SandboxFacts, ep: &'a Endpoint) -> Option<E6<'a>> {
    let e6 = ep.ipv6?;
    let net = facts.networks.iter().find(|n| n.name == ep.network)?;
    Some(E6 {
        sb,
        ep,
        net,
        ip: e6.address.addr(),
        net6: e6.address,
        gateway: e6.gateway,
    })
}

impl<'a> Six<'a> {
    fn facts(&self) -> &'a Facts {
        self.w.facts
    }

    fn six(&self) -> &'a super::Facts6 {
        &self.w.facts.six
    }

    fn hop(&mut self, at: impl Into<String>, what: impl Into<String>, rule: Option<RuleRef>) {
        self.w.hop(at, what, rule);
    }

    fn endpoints(&self) -> Vec<E6<'a>> {
        let facts = self.facts();
        facts
            .sandboxes
            .iter()
            .flat_map(|sb| sb.sandbox.endpoints.iter().map(move |ep| (sb, ep)))
            .filter_map(|(sb, ep)| e6_of(facts, sb, ep))
            .collect()
    }

    fn sandbox(&self, name: &str) -> Result<&'a SandboxFacts, BadInput> {
        self.w.sandbox(name)
    }

    fn host_address(&self, ip: Ipv6Addr) -> Option<&'a str> {
        self.six()
            .host_addresses
            .iter()
            .find(|(_, a)| a.addr() == ip)
            .map(|(i, _)| i.as_str())
    }

    /// The host's global IPv6 address on `iface` (its first).
    fn iface_address(&self, iface: &str) -> Option<Ipv6Addr> {
        self.six()
            .host_addresses
            .iter()
            .find(|(i, a)| i == iface && !is_link_local(a.addr()))
            .map(|(_, a)| a.addr())
    }

    fn route(&self, ip: Ipv6Addr) -> Option<&'a HostRoute6> {
        self.six()
            .routes
            .iter()
            .find(|(a, _)| *a == ip)
            .and_then(|(_, r)| r.as_ref())
    }

    fn dest_of(&self, ip: Ipv6Addr) -> Dest<'a> {
        if ip.is_loopback() {
            return Dest::Loopback;
        }
        if self.host_address(ip).is_some() {
            return Dest::Host(ip);
        }
        let eps = self.endpoints();
        if let Some(e) = eps.iter().find(|e| e.ip == ip) {
            return Dest::Sandbox(*e);
        }
        if let Some(e) = eps.iter().find(|e| e.subnet().contains(&ip)) {
            return Dest::Nobody(ip, e.net);
        }
        if let Some(n) = self
            .facts()
            .networks
            .iter()
            .find(|n| n.ipv6.is_some_and(|v6| v6.subnet.contains(&ip)))
        {
            return Dest::Nobody(ip, n);
        }
        Dest::Beyond(ip)
    }

    fn missing(&self, rule: &Rule) -> bool {
        self.six()
            .missing
            .as_ref()
            .is_some_and(|m| m.contains(rule))
    }

    /// The endpoint's addresses as its namespace holds them: a lost one is broken. `false` when one is lost.
    fn check_addresses(&mut self, e: E6<'_>) -> bool {
        let Some(inside) = self.six().inside.get(e.name()) else {
            return true;
        };
        let mut ok = true;
        let ll = Ipv6Net::new(e.link_local(), 64).unwrap_or_default();
        for want in [e.net6, ll] {
            if !inside
                .addresses
                .iter()
                .any(|(i, a)| *i == e.ep.interface && *a == want)
            {
                self.broken.push(format!(
                    "sandbox {}: {} has lost IPv6 address {want}",
                    e.name(),
                    e.ep.interface
                ));
                ok = false;
            }
        }
        ok
    }

    /// The gateway's IPv6 addresses (`fe80::1` and the gateway) on the bridge or the point-to-point host
    /// end: a lost one is broken. `false` when one is lost.
    fn check_gateway(&mut self, e: E6<'_>) -> bool {
        if e.net.driver == Driver::Bridge && !e.net.options.host_gateway {
            return true;
        }
        let link = gateway_link(e);
        let mut ok = true;
        for want in gateway_addresses6(e.net) {
            let IpNet::V6(want) = want else { continue };
            let there = self
                .six()
                .host_addresses
                .iter()
                .any(|(i, a)| i == link && *a == want);
            if !there {
                self.broken
                    .push(format!("{link} has lost IPv6 address {want}"));
                ok = false;
            }
        }
        ok
    }

    /// The endpoint's `endpoints6` elements: missing, every IPv6 packet it sends is dropped as forged.
    fn check_guard(&mut self, e: E6<'_>) -> bool {
        let Some(rule) = endpoint_rules(e.ep).into_iter().next() else {
            return true;
        };
        if self.w.facts.backend != Backend::None && self.missing(&rule) {
            self.broken.push(format!(
                "the firewall lacks {}'s anti-spoofing elements (@endpoints6 of {}): its own IPv6 packets are dropped",
                e.name(),
                e.ep.host_interface
            ));
            return false;
        }
        true
    }
}

fn is_link_local(ip: Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

/// The link that holds an endpoint's gateway: its bridge, or its point-to-point host end.
fn gateway_link(e: E6<'_>) -> &str {
    match e.net.driver {
        Driver::Bridge => &e.net.interface,
        Driver::Veth => &e.ep.host_interface,
    }
}

/// Where a packet from `e` enters the host: its bridge, or its host end.
fn in_if(e: E6<'_>) -> &str {
    gateway_link(e)
}

fn r(chain: &str, rule: String) -> RuleRef {
    RuleRef {
        chain: chain.into(),
        rule,
    }
}

fn anti_spoof(b: Backend, e: E6<'_>) -> RuleRef {
    let own = format!(
        "\"{h}\" . {} and \"{h}\" . {}",
        e.link_local(),
        e.ip,
        h = e.ep.host_interface
    );
    match (b != Backend::Iptables, e.net.driver) {
        (true, Driver::Bridge) => r(
            "bridge nsnet prerouting",
            format!("ether type ip6 iifname @endpoint_ifs iifname . ip6 saddr != @endpoints6 drop (only {own} are in @endpoints6 for this port)"),
        ),
        (true, Driver::Veth) => r(
            "inet nsnet guard",
            format!("iifname @endpoint_ifs iifname . ip6 saddr != @endpoints6 drop (only {own} are in @endpoints6 for this interface)"),
        ),
        (false, driver) => {
            let on = match driver {
                Driver::Bridge => format!("-m physdev --physdev-in {}", e.ep.host_interface),
                Driver::Veth => format!("-i {}", e.ep.host_interface),
            };
            r(
                "ip6tables raw NSNET-GUARD",
                format!(
                    "{on} -j DROP (after -s {}/128 {on} -j RETURN and -s {}/128 {on} -j RETURN)",
                    e.link_local(),
                    e.ip
                ),
            )
        }
    }
}

fn nd_rule(b: Backend) -> RuleRef {
    if b == Backend::Iptables {
        return kernel(
            "neighbour discovery (the iptables backend does not check an advertisement's target)",
        );
    }
    r(
        "bridge nsnet prerouting",
        "iifname @endpoint_ifs icmpv6 type nd-neighbor-advert iifname . @th,64,128 != @nd_targets drop (an advertisement names only its sender's own addresses)".into(),
    )
}

/// A mapping on every address of its family: no host address, or `[::]`.
fn every(m: &PortMapping) -> bool {
    m.host_ip.is_none_or(|ip| ip.is_unspecified())
}

fn dnat6(b: Backend, m: &PortMapping, port: u16, target: Ipv6Addr, cport: u16) -> RuleRef {
    let p = m.protocol;
    match (b != Backend::Iptables, m.host_ip.filter(|_| !every(m))) {
        (true, Some(ip)) => r(
            "inet nsnet published",
            format!("meta nfproto ipv6 dnat ip6 to ip6 daddr . meta l4proto . th dport map @ports6_ip (element {ip} . {p} . {port} : {target} . {cport})"),
        ),
        (true, None) => r(
            "inet nsnet published",
            format!("meta nfproto ipv6 ip6 daddr != ::1 dnat ip6 to meta l4proto . th dport map @ports6 (element {p} . {port} : {target} . {cport})"),
        ),
        (false, ip) => r(
            "ip6tables nat NSNET-PORTS",
            format!(
                "{}-p {p} -m {p} --dport {port} -j DNAT --to-destination [{target}]:{cport}",
                ip.map(|ip| format!("-d {ip}/128 ")).unwrap_or_default()
            ),
        ),
    }
}

fn proto_number(p: Proto) -> u32 {
    match p {
        Proto::Tcp => 6,
        Proto::Udp => 17,
    }
}

fn cport(m: &PortMapping, port: u16) -> u16 {
    m.container_port
        .saturating_add(port.saturating_sub(m.host_port))
}

/// Decide an IPv6 question (see [`super::explain`]).
pub(super) fn explain6(q: &Query, facts: &Facts) -> Result<Explanation, BadInput> {
    let mut s = Six {
        w: Walk {
            facts,
            hops: vec![],
            caveats: vec![],
            six: true,
        },
        broken: vec![],
        probe: None,
    };
    let from = match &q.from {
        Party::Sandbox(n) => {
            let sb = s.sandbox(n)?;
            if !sb.sandbox.endpoints.iter().any(|e| e.ipv6.is_some()) {
                return Err(BadInput(format!(
                    "sandbox '{n}' has no IPv6: it is on no dual-stack or IPv6-only network"
                )));
            }
            From::Sandbox(sb)
        }
        Party::Host => From::Host,
        Party::Address6(ip) if ip.is_loopback() || s.host_address(*ip).is_some() => From::Host,
        Party::Address6(ip) => match s.dest_of(*ip) {
            Dest::Sandbox(e) => From::Sandbox(e.sb),
            Dest::Nobody(ip, net) => {
                return Err(BadInput(format!(
                    "no sandbox holds {ip} (network {}); `nsnet ls` lists the sandboxes",
                    net.name
                )))
            }
            _ => From::Peer(*ip),
        },
        Party::Address(_) => return Err(BadInput("unreachable: an IPv4 address".into())),
    };
    let dest = match &q.to {
        Party::Sandbox(n) => {
            let sb = s.sandbox(n)?;
            let eps: Vec<E6<'_>> = sb
                .sandbox
                .endpoints
                .iter()
                .filter_map(|ep| e6_of(facts, sb, ep))
                .collect();
            let shared = |e: &&E6<'_>| match from {
                From::Sandbox(f) => f
                    .sandbox
                    .endpoints
                    .iter()
                    .any(|x| x.ipv6.is_some() && x.network == e.ep.network),
                _ => false,
            };
            let e = eps
                .iter()
                .find(shared)
                .or_else(|| eps.iter().find(|e| e.ep.default_route))
                .or_else(|| eps.first())
                .ok_or_else(|| {
                    BadInput(format!(
                        "sandbox '{n}' has no IPv6: it is on no dual-stack or IPv6-only network"
                    ))
                })?;
            Dest::Sandbox(*e)
        }
        Party::Host => match from {
            From::Sandbox(sb) => {
                let eps: Vec<E6<'_>> = sb
                    .sandbox
                    .endpoints
                    .iter()
                    .filter_map(|ep| e6_of(facts, sb, ep))
                    .collect();
                let e = eps
                    .iter()
                    .find(|e| e.ep.default_route)
                    .or_else(|| eps.first())
                    .ok_or_else(|| BadInput("the sandbox has no IPv6 gateway".into()))?;
                Dest::Host(e.gateway)
            }
            From::Host => Dest::Loopback,
            From::Peer(ip) => {
                let a = s
                    .route(ip)
                    .and_then(|r| s.iface_address(&r.interface))
                    .ok_or_else(|| {
                        BadInput(
                            "the host has no IPv6 address to reach it by from there; give one of its addresses"
                                .into(),
                        )
                    })?;
                Dest::Host(a)
            }
        },
        Party::Address6(ip) => s.dest_of(*ip),
        Party::Address(_) => return Err(BadInput("unreachable: an IPv4 address".into())),
    };
    if let (From::Peer(_), Dest::Beyond(_)) = (from, dest) {
        return Err(BadInput(
            "neither end is on this host: FROM or TO must be a sandbox, `host` or one of the host's addresses".into(),
        ));
    }
    let dst = match dest {
        Dest::Sandbox(e) => e.ip,
        Dest::Host(ip) | Dest::Nobody(ip, _) | Dest::Beyond(ip) => ip,
        Dest::Loopback => Ipv6Addr::LOCALHOST,
    };
    let to_text = match &q.to {
        Party::Sandbox(n) => format!("{n} ({dst})"),
        Party::Host => format!("host ({dst})"),
        // In brackets when a port follows it (`[fd00::2]:80`), as it is written.
        _ if q.port.is_some() => format!("[{dst}]"),
        _ => dst.to_string(),
    };
    let from_text = match (&q.from, from) {
        (Party::Host, _) | (_, From::Host) => "host".to_string(),
        (_, From::Sandbox(sb)) => sb.sandbox.name.clone(),
        (_, From::Peer(ip)) => format!("peer {ip}"),
    };
    let outcome = match from {
        From::Sandbox(sb) => from_sandbox(&mut s, q, sb, dest, dst),
        From::Host => from_host(&mut s, q, dest, dst),
        From::Peer(ip) => from_peer(&mut s, q, ip, dest, dst),
    };
    let Six {
        mut w,
        broken,
        probe,
    } = s;
    // A real probe sends from a sandbox, with its own source (IP_TRANSPARENT for IPv6 is not done yet).
    let probe_refused = match from {
        From::Sandbox(_) if q.src6.is_some() => Some(
            "--probe does not send a forged IPv6 source yet: leave it out to have the path explained"
                .to_string(),
        ),
        From::Sandbox(_) => None,
        _ => Some(
            "--probe sends IPv6 from a sandbox only, for now: leave it out to have this IPv6 path explained"
                .to_string(),
        ),
    };
    if !broken.is_empty() {
        w.caveats.push(
            "broken: `nsnet gc` rebuilds the firewall and re-creates missing links; a lost address or route comes back when the sandbox is attached again (`nsnet topology` shows all that is broken)".into(),
        );
    }
    if facts.six.missing.is_none() && facts.backend != Backend::None {
        w.caveats
            .push("the firewall's elements could not be read: they are not checked".into());
    }
    w.caveats.extend(facts.unread.iter().cloned());
    let Outcome {
        delivered,
        reason,
        rule,
        probe: _,
    } = outcome;
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
        ipv6: true,
        broken,
        probe: probe.filter(|_| probe_refused.is_none()),
        probe_refused,
    })
}

fn from_sandbox(
    s: &mut Six<'_>,
    q: &Query,
    sb: &SandboxFacts,
    dest: Dest<'_>,
    dst: Ipv6Addr,
) -> Outcome {
    let facts = s.facts();
    let name = sb.sandbox.name.clone();
    let at = format!("sandbox {name}");
    let eps: Vec<E6<'_>> = sb
        .sandbox
        .endpoints
        .iter()
        .filter_map(|ep| e6_of(facts, sb, ep))
        .collect();
    if matches!(dest, Dest::Loopback) || eps.iter().any(|e| e.ip == dst) {
        s.hop(
            &at,
            format!("{dst} is the sandbox's own: delivered on its own lo"),
            None,
        );
        return delivered(
            "stays inside the sandbox (its own address; the host's ::1 is not reachable from a sandbox)",
            Some(kernel("local route in the sandbox")),
            None,
        );
    }
    if !sb.up {
        return dropped(
            format!("sandbox {name}'s namespace is gone (`nsnet gc` releases it)"),
            None,
            None,
        );
    }
    // On-link on an endpoint's subnet (or link-local), else the default route.
    let on_link = eps
        .iter()
        .find(|e| e.subnet().contains(&dst))
        .or_else(|| is_link_local(dst).then(|| eps.first()).flatten())
        .copied();
    let (e, via) = match on_link {
        Some(e) => (e, None),
        None => match eps.iter().find(|e| e.ep.default_route && !e.net.internal) {
            Some(e) => (*e, Some(e.gateway)),
            None => {
                s.hop(
                    &at,
                    format!("no route to {dst}: the sandbox has no IPv6 default route"),
                    None,
                );
                return dropped(
                    "no route: the sandbox's IPv6 networks are internal (no IPv6 default route), so nothing is sent",
                    Some(kernel("route lookup in the sandbox: network unreachable")),
                    None,
                );
            }
        },
    };
    let src = q.src6.unwrap_or(e.ip);
    let addresses_ok = s.check_addresses(e);
    s.hop(
        &at,
        format!(
            "{} holds {} and link-local {}/64 (network {}, {})",
            e.ep.interface,
            e.net6,
            e.link_local(),
            e.net.name,
            e.subnet()
        ),
        None,
    );
    if let Some(gw) = via {
        let route_ok = s.six().inside.get(&name).is_none_or(|i| {
            i.default_routes
                .iter()
                .any(|(l, g)| *l == e.ep.interface && *g == Some(gw))
        });
        if !route_ok {
            s.broken.push(format!(
                "sandbox {name}: no IPv6 default route via {gw} on {}",
                e.ep.interface
            ));
            s.hop(
                &at,
                format!("no IPv6 default route via {gw}: nothing is sent to {dst}"),
                None,
            );
            return dropped(
                format!("broken: sandbox {name} has lost its IPv6 default route via {gw}"),
                Some(kernel("route lookup in the sandbox: network unreachable")),
                None,
            );
        }
        s.hop(
            &at,
            format!(
                "route to {dst}: default via {gw} dev {}, source {src}",
                e.ep.interface
            ),
            None,
        );
    } else {
        s.hop(
            &at,
            format!(
                "route to {dst}: dev {} (on-link), source {src}",
                e.ep.interface
            ),
            None,
        );
    }
    s.probe = Some(super::ProbePlan {
        sender: name.clone(),
        src: src.into(),
        dst: dst.into(),
        port: q.port,
        protocol: q.protocol,
        receiver: match dest {
            Dest::Sandbox(t) => Some((t.name().to_string(), q.port)),
            _ => None,
        },
    });
    if !addresses_ok && q.src6.is_none() {
        return dropped(
            format!(
                "broken: sandbox {name}'s {} has lost its IPv6 address, so it cannot send from it",
                e.ep.interface
            ),
            None,
            None,
        );
    }
    let in_at = match e.net.driver {
        Driver::Bridge => format!("bridge {}", e.net.interface),
        Driver::Veth => format!("host {}", e.ep.host_interface),
    };
    s.hop(
        &in_at,
        format!(
            "enters the host on {} ({} network {})",
            e.ep.host_interface, e.net.driver, e.net.name
        ),
        None,
    );
    let b = facts.backend;
    let own = src == e.ip || src == e.link_local();
    if !own {
        if b == Backend::None {
            s.w.caveats.push(format!(
                "network {} has no firewall: nothing checks the IPv6 source address",
                e.net.name
            ));
        } else {
            let rule = anti_spoof(b, e);
            s.hop(
                &in_at,
                format!(
                    "anti-spoofing: {src} is not {name}'s address on {}",
                    e.ep.host_interface
                ),
                Some(rule.clone()),
            );
            return dropped(
                format!(
                    "anti-spoofing: {name} may only send IPv6 from {} or {} on {}",
                    e.ip,
                    e.link_local(),
                    e.net.name
                ),
                Some(rule),
                None,
            );
        }
    } else if !s.check_guard(e) {
        let rule = anti_spoof(b, e);
        s.hop(
            &in_at,
            format!("anti-spoofing: {name}'s own address is not in @endpoints6"),
            Some(rule.clone()),
        );
        return dropped(
            format!("broken: the firewall lacks {name}'s anti-spoofing elements, so its own IPv6 packets are dropped as forged"),
            Some(rule),
            None,
        );
    }
    if via.is_none() {
        match dest {
            Dest::Sandbox(t) => return same_network(s, q, e, t, src),
            Dest::Nobody(ip, n) => {
                s.hop(
                    &in_at,
                    format!(
                        "no sandbox of {} holds {ip}: neighbour solicitations go unanswered",
                        n.name
                    ),
                    None,
                );
                return dropped(
                    format!("nobody holds {ip}"),
                    Some(kernel("neighbour discovery fails")),
                    None,
                );
            }
            _ => {}
        }
    }
    // Through the gateway: it must be there.
    if !s.check_gateway(e) {
        s.hop(
            &in_at,
            format!("the gateway {} is not on {}", e.gateway, gateway_link(e)),
            None,
        );
        return dropped(
            format!(
                "broken: {} has lost the IPv6 gateway side of network {}",
                gateway_link(e),
                e.net.name
            ),
            Some(kernel("neighbour discovery of the gateway fails")),
            None,
        );
    }
    s.hop(
        &in_at,
        format!(
            "the gateway {} (and {GATEWAY_LINK_LOCAL6}) is {}'s: the host routes it",
            e.gateway,
            gateway_link(e)
        ),
        None,
    );
    // Another host's IPv6 block of a dual-stack overlay: the route and neighbour to it, the device, the fast path.
    if let Dest::Beyond(_) = dest {
        if let Some((o, p)) = cross::peer_of(e, dst) {
            return cross::to_peer(s, q, e, o, p, src, dst);
        }
    }
    let in_if = in_if(e).to_string();
    host_ip_layer(s, q, &in_if, src, dest, dst)
}

/// Sandbox to sandbox on one network: neighbour discovery over the bridge, then the fast path or the bridge.
fn same_network(s: &mut Six<'_>, q: &Query, e: E6<'_>, t: E6<'_>, src: Ipv6Addr) -> Outcome {
    let b = s.facts().backend;
    let bridge_at = format!("bridge {}", e.net.interface);
    let t_ok = s.check_addresses(t);
    let guard_ok = s.check_guard(t);
    if !guard_ok {
        s.w.caveats.push(format!(
            "{}'s answers are dropped: its anti-spoofing elements are missing",
            t.name()
        ));
    }
    let nd = if b == Backend::None {
        None
    } else {
        Some(nd_rule(b))
    };
    s.hop(
        &bridge_at,
        format!(
            "neighbour discovery: {}'s solicitation for {} takes the bridge (ICMPv6 never takes the fast path); {} answers",
            e.name(),
            t.ip,
            t.name()
        ),
        nd,
    );
    if !t.sb.up {
        return dropped(
            format!("sandbox {}'s namespace is gone", t.name()),
            None,
            None,
        );
    }
    if !t_ok {
        return dropped(
            format!(
                "broken: {}'s {} has lost {}, so nobody answers for it",
                t.name(),
                t.ep.interface,
                t.ip
            ),
            Some(kernel("neighbour discovery fails")),
            None,
        );
    }
    let tcp_udp = q.protocol != super::Protocol::Icmp;
    if e.net.driver == Driver::Bridge && e.net.fast_path && tcp_udp {
        let lacking: Vec<Ipv6Addr> = [src, t.ip]
            .into_iter()
            .filter(|a| s.six().fast_path_lacking.contains(a))
            .collect();
        for a in &lacking {
            s.broken.push(format!(
                "the fast path of {} has no local6 entry for {a}",
                e.net.interface
            ));
        }
        let live = [src, t.ip].iter().all(|a| s.six().fast_path.contains(a));
        if live {
            let rule = RuleRef {
                chain: format!("tc ingress_block of {}", e.net.interface),
                rule: "bpf nsnet_fastpath: local6 entry, bpf_redirect_peer".into(),
            };
            s.hop(
                &bridge_at,
                format!(
                    "fast path: the bpf program on {} finds {} in local6 and hands the packet to {}'s {} (bpf_redirect_peer); it skips the bridge and netfilter",
                    e.ep.host_interface,
                    t.ip,
                    t.name(),
                    t.ep.interface
                ),
                Some(rule.clone()),
            );
            if s.facts().user_rules {
                s.w.caveats.push("the fast path skips the user chain (create the network with --fast-path=false to filter it)".into());
            }
            return delivered(
                format!(
                    "same network {}: sandbox to sandbox on the fast path",
                    e.net.name
                ),
                Some(rule),
                None,
            );
        }
        if !lacking.is_empty() {
            s.w.caveats.push(
                "without its local6 entries the packet takes the bridge: slower, still delivered"
                    .into(),
            );
        }
    } else if e.net.fast_path && e.net.driver == Driver::Bridge {
        s.hop(
            &bridge_at,
            "the fast path takes TCP and UDP only: ICMPv6 takes the bridge",
            None,
        );
    }
    s.hop(
        &bridge_at,
        format!(
            "out of port {} -> {}'s {} ({})",
            t.ep.host_interface,
            t.name(),
            t.ep.interface,
            t.ip
        ),
        None,
    );
    delivered(
        format!("same network {}: the bridge forwards it (no rule of nsnet's stops traffic within a network)", e.net.name),
        Some(kernel(&format!("bridge {} forwarding (static FDB entry of {})", e.net.interface, t.ep.mac))),
        None,
    )
}

/// The published mapping of `proto`/`port` on host address `dst` for IPv6: `ports6_ip` (that address)
/// before `ports6` (every address), with its sandbox.
fn published<'a>(
    s: &Six<'a>,
    dst: Ipv6Addr,
    proto: Proto,
    port: u16,
) -> Option<(E6<'a>, &'a PortMapping)> {
    let mut best = None;
    for e in s.endpoints() {
        for m in &e.ep.ports {
            if m.protocol != proto || !m.host_ports().contains(&port) {
                continue;
            }
            match m.host_ip {
                Some(std::net::IpAddr::V6(ip)) if ip == dst => return Some((e, m)),
                _ if every(m) && best.is_none() => best = Some((e, m)),
                _ => {}
            }
        }
    }
    best
}

/// A packet at the host's IP layer on `in_if` (prerouting): DNAT, then local delivery or forwarding.
fn host_ip_layer(
    s: &mut Six<'_>,
    q: &Query,
    in_if: &str,
    src: Ipv6Addr,
    dest: Dest<'_>,
    dst: Ipv6Addr,
) -> Outcome {
    let b = s.facts().backend;
    match dest {
        Dest::Loopback => {
            let from_ours = s.w.net_of_iface(in_if).is_some();
            let rule = if from_ours && b != Backend::None {
                r(
                    "inet nsnet guard",
                    "ip6 daddr ::1 iifname @ifaces drop".into(),
                )
            } else {
                kernel("::1 from outside the host is a martian: dropped")
            };
            s.hop("host", "::1 from outside the host: never DNATed (published [::1] ports are for the host alone)", Some(rule.clone()));
            dropped(
                "::1 is not reachable from outside the host",
                Some(rule),
                None,
            )
        }
        Dest::Host(_) => {
            if let (Some(port), Some(proto)) = (q.port, q.protocol.port_proto()) {
                if let Some((t, m)) = published(s, dst, proto, port).filter(|_| b != Backend::None)
                {
                    let cp = cport(m, port);
                    let rule = dnat6(b, m, port, t.ip, cp);
                    let element = Rule::Port {
                        mapping: *m,
                        target: t.ip.into(),
                    };
                    if s.missing(&element) {
                        s.broken.push(format!(
                            "the firewall lacks the IPv6 DNAT element of {} ({m})",
                            t.name()
                        ));
                        s.hop(
                            "host",
                            format!("prerouting: no IPv6 DNAT element for {port}/{proto}"),
                            Some(rule.clone()),
                        );
                        return local_or_nothing(s, q, dst, Some(rule), true);
                    }
                    s.hop(
                        "host",
                        format!(
                            "prerouting: published port, DNAT to [{}]:{cp} ({})",
                            t.ip,
                            t.name()
                        ),
                        Some(rule.clone()),
                    );
                    return forward_to_sandbox(s, in_if, src, t, true, rule);
                }
            }
            local_or_nothing(s, q, dst, None, false)
        }
        Dest::Sandbox(t) => forward_to_sandbox(s, in_if, src, t, false, kernel("routed")),
        Dest::Nobody(ip, n) => {
            s.hop(
                "host",
                format!("route to {ip} via {}: no sandbox holds it", n.interface),
                None,
            );
            dropped(
                format!("nobody holds {ip} on network {}", n.name),
                Some(kernel("neighbour discovery fails")),
                None,
            )
        }
        Dest::Beyond(ip) => {
            let Some(route) = s.route(ip).cloned() else {
                s.hop("host", format!("no IPv6 route to {ip}"), None);
                return dropped(
                    format!("the host has no IPv6 route to {ip}"),
                    Some(kernel("route lookup: network unreachable")),
                    None,
                );
            };
            let via = route
                .gateway
                .map(|g| format!(" via {g}"))
                .unwrap_or_default();
            s.hop(
                "host",
                format!("route to {ip}: dev {}{via}", route.interface),
                None,
            );
            let last = match s.w.forward(in_if, &route.interface, false) {
                Ok(r) => r,
                Err(rule) => {
                    s.hop(
                        "host",
                        format!("forward {in_if} -> {}: dropped", route.interface),
                        Some(rule.clone()),
                    );
                    return dropped(verdict_reason(&rule), Some(rule), None);
                }
            };
            postrouting(s, src, ip, &route.interface, false);
            s.hop("host", format!("out of {} to {ip}", route.interface), None);
            delivered(
                format!("leaves the host by {} towards {ip}", route.interface),
                Some(last),
                None,
            )
        }
    }
}

/// Local delivery to the host, or (`dnat_lost`) not to the published port whose element is missing.
fn local_or_nothing(
    s: &mut Six<'_>,
    q: &Query,
    dst: Ipv6Addr,
    rule: Option<RuleRef>,
    dnat_lost: bool,
) -> Outcome {
    if dnat_lost {
        return dropped(
            "broken: the published port's IPv6 DNAT element is missing, so the packet stays with the host's own stack",
            rule,
            None,
        );
    }
    s.hop(
        "host",
        format!("delivered locally to the host ({dst})"),
        None,
    );
    let what = match q.port {
        Some(p) => format!(
            "{p}/{} is no IPv6 published port here: whatever listens on the host answers",
            q.protocol
        ),
        None => "the host answers itself".into(),
    };
    delivered(
        format!("reaches the host itself: {what}"),
        Some(kernel("local delivery (input)")),
        None,
    )
}

fn forward_to_sandbox(
    s: &mut Six<'_>,
    in_if: &str,
    src: Ipv6Addr,
    t: E6<'_>,
    dnat: bool,
    dnat_rule: RuleRef,
) -> Outcome {
    let out_if = gateway_link(t).to_string();
    let last = match s.w.forward(in_if, &out_if, dnat) {
        Ok(r) => r,
        Err(rule) => {
            s.hop(
                "host",
                format!("forward {in_if} -> {out_if}: dropped"),
                Some(rule.clone()),
            );
            return dropped(verdict_reason(&rule), Some(rule), None);
        }
    };
    postrouting(s, src, t.ip, &out_if, dnat);
    enter(s, t, dnat, if dnat { dnat_rule } else { last })
}

/// The last hop into sandbox `t`, with its addresses and guard checked.
fn enter(s: &mut Six<'_>, t: E6<'_>, dnat: bool, rule: RuleRef) -> Outcome {
    if !t.sb.up {
        return dropped(
            format!(
                "sandbox {}'s namespace is gone (`nsnet gc` releases it)",
                t.name()
            ),
            None,
            None,
        );
    }
    if !s.check_addresses(t) {
        return dropped(
            format!(
                "broken: {}'s {} has lost {}",
                t.name(),
                t.ep.interface,
                t.ip
            ),
            Some(kernel("neighbour discovery fails")),
            None,
        );
    }
    if !s.check_gateway(t) {
        return dropped(
            format!("broken: {} has lost the IPv6 gateway side of network {}, so the host has no route into it", gateway_link(t), t.net.name),
            Some(kernel("no connected route")),
            None,
        );
    }
    if !s.check_guard(t) {
        s.w.caveats.push(format!(
            "{}'s answers are dropped: its anti-spoofing elements are missing",
            t.name()
        ));
    }
    let at = match t.net.driver {
        Driver::Bridge => format!("bridge {}", t.net.interface),
        Driver::Veth => "host".to_string(),
    };
    s.hop(
        at,
        format!(
            "out of {} -> {}'s {} ({})",
            t.ep.host_interface,
            t.name(),
            t.ep.interface,
            t.ip
        ),
        None,
    );
    let reason = if dnat {
        format!("the published port leads to {} ({})", t.name(), t.ip)
    } else {
        format!("routed to {} on network {}", t.name(), t.net.name)
    };
    delivered(reason, Some(rule), None)
}

/// Postrouting: which source the IPv6 packet leaves with (NAT66, or not).
fn postrouting(s: &mut Six<'_>, src: Ipv6Addr, dst: Ipv6Addr, out_if: &str, dnat: bool) {
    let b = s.facts().backend;
    if b == Backend::None {
        return;
    }
    let nft = b != Backend::Iptables;
    let to = s
        .iface_address(out_if)
        .map(|a| format!(" ({a})"))
        .unwrap_or_default();
    let nets: Vec<&Network> = s.facts().networks.iter().collect();
    let sub = |n: &Network| n.ipv6.map(|v6| v6.subnet);
    if let Some(n) = nets
        .iter()
        .find(|n| dnat && sub(n).is_some_and(|p| p.contains(&src) && p.contains(&dst)))
    {
        let p = sub(n).unwrap_or_default();
        let rule = if nft {
            r("inet nsnet postrouting", format!("ct status dnat ip6 saddr . ip6 daddr @same_net6 masquerade (element {p} . {p})"))
        } else {
            r(
                "ip6tables nat NSNET-POSTROUTING",
                format!("-s {p} -d {p} -m conntrack --ctstate DNAT -j MASQUERADE"),
            )
        };
        s.hop(
            "host",
            format!("hairpin masquerade: the source becomes {out_if}'s address{to}"),
            Some(rule),
        );
        return;
    }
    let Some(n) = nets
        .iter()
        .find(|n| sub(n).is_some_and(|p| p.contains(&src)))
    else {
        s.hop(
            "host",
            format!("no masquerade: the receiver sees {src}"),
            None,
        );
        return;
    };
    let p = sub(n).unwrap_or_default();
    let nat66 = !n.internal
        && n.options.gateway_mode == GatewayMode::Nat
        && n.ipv6.is_some_and(|v6| v6.nat);
    if !nat66 {
        s.hop(
            "host",
            format!(
                "no NAT66 (network {} has --ipv6-nat=false or is routed): the receiver sees {src}",
                n.name
            ),
            None,
        );
        s.w.caveats.push(format!("IPv6 leaves with the sandbox's own address: the other side must route {p} back to this host"));
        return;
    }
    if n.interface == out_if {
        if nft {
            let rule = r(
                "inet nsnet postrouting",
                format!("oifname . ip6 saddr @own_nets6 return (element \"{out_if}\" . {p})"),
            );
            s.hop("host", "no NAT66 (back into its own network)", Some(rule));
        }
        return;
    }
    let rule = if nft {
        r(
            "inet nsnet postrouting",
            format!("ip6 saddr @masq_nets6 masquerade (element {p})"),
        )
    } else {
        r(
            "ip6tables nat NSNET-POSTROUTING",
            format!("-s {p} ! -o {} -j MASQUERADE", n.interface),
        )
    };
    s.hop(
        "host",
        format!("NAT66: the source {src} becomes {out_if}'s address{to}"),
        Some(rule),
    );
}

fn from_host(s: &mut Six<'_>, q: &Query, dest: Dest<'_>, dst: Ipv6Addr) -> Outcome {
    let b = s.facts().backend;
    match dest {
        Dest::Host(_) | Dest::Loopback => {
            if let (Some(port), Some(proto)) = (q.port, q.protocol.port_proto()) {
                // [::1], or an every-address port at one of the host's addresses: the cgroup programs
                // translate the socket's address before any packet exists.
                let lo_mapping = s.endpoints().into_iter().find_map(|e| {
                    e.ep.ports
                        .iter()
                        .find(|m| {
                            m.protocol == proto
                                && m.host_ports().contains(&port)
                                && (every(m)
                                    || m.host_ip.is_some_and(|ip| {
                                        ip.is_loopback() && ip.is_ipv6() && dst.is_loopback()
                                    }))
                        })
                        .map(|m| (e, m))
                });
                if let Some((t, m)) = lo_mapping {
                    let carried = s
                        .six()
                        .loopback6_ports
                        .as_ref()
                        .map(|ps| ps.contains(&(proto_number(proto), port)));
                    let only_lo = !every(m);
                    // Without the programs on a host that cannot have them, an every-address port is
                    // published without the translation: no breakage.
                    let expected = only_lo || s.six().loopback6_supported;
                    let lost = match carried {
                        Some(false) => {
                            Some(format!("the [::1] translation's map lacks {port}/{proto}"))
                        }
                        None if expected => Some(
                            "the [::1] translation's cgroup bpf programs are missing".to_string(),
                        ),
                        _ => None,
                    };
                    if carried.is_none() && !expected && dst.is_loopback() {
                        s.hop(
                            "host",
                            "no socket translation: this host cannot have its programs (no cgroup2 or bpf), and ::1 is never DNATed; the packet stays with the host's own stack",
                            None,
                        );
                        return dropped(
                            format!("not delivered to the published port: {port}/{proto} reaches {} at the host's IPv6 addresses only, not at [::1], on this host", t.name()),
                            None,
                            None,
                        );
                    }
                    if let Some(lost) = lost.filter(|_| !only_lo) {
                        s.broken.push(lost.clone());
                        if dst.is_loopback() {
                            return dropped(
                                format!("broken: {lost}, so [::1]:{port} reaches no sandbox"),
                                None,
                                None,
                            );
                        }
                    }
                    match carried {
                        Some(true) => {
                            let cp = cport(m, port);
                            let rule = r(
                                "cgroup bpf nsnet_lo6 (connect6, sendmsg6)",
                                format!("[::1 or a host address]:{port}/{proto} -> [{}]:{cp}, in the programs' map", t.ip),
                            );
                            s.hop("host", format!("socket translation: connect() to [{dst}]:{port} is rewritten to [{}]:{cp} ({}); no DNAT", t.ip, t.name()), Some(rule.clone()));
                            s.hop(
                                "host",
                                format!(
                                    "route to {}: dev {}, source {}",
                                    t.ip,
                                    gateway_link(t),
                                    t.gateway
                                ),
                                None,
                            );
                            return enter(s, t, true, rule);
                        }
                        Some(false) if only_lo => {
                            s.broken
                                .push(format!("the [::1] translation's map lacks {port}/{proto}"));
                            return dropped(format!("broken: the [::1] translation's map lacks {port}/{proto}, so nothing reaches {}", t.name()), None, None);
                        }
                        None if only_lo => {
                            s.broken.push(
                                "the [::1] translation's cgroup bpf programs are missing".into(),
                            );
                            return dropped(format!("broken: the [::1] translation's programs are missing, so nothing reaches {}", t.name()), None, None);
                        }
                        _ => {}
                    }
                }
                if !dst.is_loopback() && b != Backend::None {
                    if let Some((t, m)) = published(s, dst, proto, port) {
                        let cp = cport(m, port);
                        let rule = dnat6(b, m, port, t.ip, cp);
                        if s.missing(&Rule::Port {
                            mapping: *m,
                            target: t.ip.into(),
                        }) {
                            s.broken.push(format!(
                                "the firewall lacks the IPv6 DNAT element of {} ({m})",
                                t.name()
                            ));
                            return local_or_nothing(s, q, dst, Some(rule), true);
                        }
                        s.hop(
                            "host",
                            format!(
                                "output: published port, DNAT to [{}]:{cp} ({})",
                                t.ip,
                                t.name()
                            ),
                            Some(rule.clone()),
                        );
                        postrouting(s, dst, t.ip, gateway_link(t), true);
                        return enter(s, t, true, rule);
                    }
                }
            }
            local_or_nothing(s, q, dst, None, false)
        }
        Dest::Sandbox(t) => {
            s.hop(
                "host",
                format!(
                    "route to {}: dev {} (the network's connected route {}), source {}",
                    t.ip,
                    gateway_link(t),
                    t.subnet(),
                    t.gateway
                ),
                None,
            );
            let rule = kernel(&format!("route {} dev {}", t.subnet(), gateway_link(t)));
            match enter(s, t, false, rule) {
                o if o.delivered => delivered(
                    format!(
                        "the host reaches its sandboxes directly (network {})",
                        t.net.name
                    ),
                    o.rule,
                    None,
                ),
                o => o,
            }
        }
        Dest::Nobody(ip, n) => {
            s.hop(
                "host",
                format!("route to {ip}: dev {}; no sandbox holds it", n.interface),
                None,
            );
            dropped(
                format!("nobody holds {ip} on network {}", n.name),
                Some(kernel("neighbour discovery fails")),
                None,
            )
        }
        Dest::Beyond(ip) => match s.route(ip).cloned() {
            Some(r) => {
                s.hop("host", format!("route to {ip}: dev {}", r.interface), None);
                delivered(
                    format!("leaves the host by {}", r.interface),
                    Some(kernel("output")),
                    None,
                )
            }
            None => dropped(
                format!("the host has no IPv6 route to {ip}"),
                Some(kernel("route lookup: network unreachable")),
                None,
            ),
        },
    }
}

fn from_peer(s: &mut Six<'_>, q: &Query, peer: Ipv6Addr, dest: Dest<'_>, dst: Ipv6Addr) -> Outcome {
    // A sandbox of another host of a dual-stack overlay, to one of this host's part of it.
    if let Dest::Sandbox(t) = dest {
        if let Some((o, p)) = cross::peer_of(t, peer) {
            return cross::from_peer(s, q, peer, t, o, p);
        }
    }
    let Some(route) = s.route(peer).cloned() else {
        s.hop(
            format!("peer {peer}"),
            "the host has no IPv6 route back to it",
            None,
        );
        return dropped(
            format!("the host has no route to {peer}: no answer could return"),
            Some(kernel("route lookup: network unreachable")),
            None,
        );
    };
    let in_if = route.interface.clone();
    match dest {
        Dest::Sandbox(t) => {
            s.hop(
                format!("peer {peer}"),
                format!(
                    "sends to {dst}, assuming it routes {} via this host; enters on {in_if}",
                    t.subnet()
                ),
                None,
            );
            s.w.caveats.push(format!(
                "explain cannot see {peer}'s routes: this assumes it sends {} via this host",
                t.subnet()
            ));
        }
        _ => s.hop(
            format!("peer {peer}"),
            format!("sends to {dst}; enters the host on {in_if}"),
            None,
        ),
    }
    host_ip_layer(s, q, &in_if, peer, dest, dst)
}

mod cross;
pub use cross::OverlayKernel6;

#[cfg(test)]
mod tests;
