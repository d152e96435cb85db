//! `nsnet explain`: reads what [`crate::explain`] decides from (the records under the shared lock, and the
//! host through [`Host`]), and `--probe`: a real packet, with nftables tracing of that packet alone.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use super::{Host, Nsnet};
use crate::error::{Error, Result};
use crate::explain::{
    self, Explanation, Facts, Facts6, HostRoute, HostRoute6, Inside6, OverlayKernel6, Party,
    ProbeReport, Protocol, Query, SandboxFacts, TraceStep,
};
use crate::firewall::trace::{self, TraceEvent, TraceMatch, Tracer};
use crate::firewall::Backend;
use crate::model::Driver;
use crate::probe;

impl Nsnet {
    /// The path and verdict of the packet `q` asks about, from the records and the host as they are now.
    /// Bad input (an unknown sandbox, neither end on this host) is [`Error::Invalid`].
    pub fn explain(&self, q: &Query) -> Result<Explanation> {
        let facts = self.explain_facts(q)?;
        explain::explain(q, &facts).map_err(|e| Error::Invalid(e.0))
    }

    fn explain_facts(&self, q: &Query) -> Result<Facts> {
        let (records, sandboxes) = {
            let _read = self.read_lock()?;
            (self.store.network_records()?, self.store.sandboxes()?)
        };
        // Every network and endpoint: an IPv4 question leaves the IPv6-only ones out itself.
        let networks: Vec<_> = records.into_iter().map(|r| r.settings).collect();
        // One backend per host: the networks' own, else the one new networks would get.
        let backend = networks
            .first()
            .map(|n| n.firewall)
            .or(self.firewall)
            .unwrap_or_default();
        let mut host = Host::new();
        let host_addresses = host.addresses_by_link()?;
        let mut routes = Vec::new();
        let mut wanted: Vec<Ipv4Addr> = Vec::new();
        for party in [&q.from, &q.to] {
            if let Party::Address(ip) = party {
                wanted.push(*ip);
            }
        }
        for ip in wanted {
            let route = host
                .route_to(ip)?
                .map(|(interface, gateway)| HostRoute { interface, gateway });
            routes.push((ip, route));
        }
        // The fast path is live for an address when its network's map holds it (a host without bpf has none).
        let named: BTreeSet<&str> = [&q.from, &q.to]
            .into_iter()
            .filter_map(|p| match p {
                Party::Sandbox(n) => Some(n.as_str()),
                _ => None,
            })
            .collect();
        let mut fast_path = BTreeSet::new();
        for sb in &sandboxes {
            let asked = named.contains(sb.name.as_str())
                || sb.endpoints.iter().any(|e| {
                    [&q.from, &q.to]
                        .iter()
                        .any(|p| e.address.is_some_and(|a| **p == Party::Address(a.addr())))
                });
            if !asked {
                continue;
            }
            for ep in &sb.endpoints {
                let Some(net) = networks.iter().find(|n| n.name == ep.network) else {
                    continue;
                };
                if net.driver != Driver::Bridge || !net.fast_path {
                    continue;
                }
                // The IPv4 entries here; IPv6's (local6) are read with the IPv6 facts.
                let Some(ip) = ep.address.map(|a| a.addr()) else {
                    continue;
                };
                if matches!(host.fast_path_entry(&net.interface, ip), Ok(Some(Some(_)))) {
                    fast_path.insert(ip);
                }
            }
        }
        // Without nft to list them, no host chain is known to drop (iptables-legacy hosts).
        // explain follows IPv4 packets: an ip6 family chain never sees them.
        let drop_chains: Vec<_> = Host::forward_drop_chains()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.family != "ip6")
            .collect();
        let mut unread = Vec::new();
        if !nix::unistd::geteuid().is_root() {
            unread.push(
                "not run as root: the ruleset (the user chain, the host's own forward chains) could not be read"
                    .to_string(),
            );
        }
        let user_rules = Host::user_chain_has_rules(backend);
        let sandboxes = sandboxes
            .into_iter()
            .map(|sandbox| SandboxFacts {
                up: Host::namespace_is_there(&sandbox),
                sandbox,
            })
            .collect();
        let mut facts = Facts {
            networks,
            sandboxes,
            host_addresses,
            routes,
            backend,
            user_rules,
            drop_chains,
            fast_path,
            unread,
            six: Facts6::default(),
        };
        if explain::wants_ipv6(q, &facts) {
            facts.six = facts6(q, &facts, &mut host)?;
        }
        Ok(facts)
    }
}

/// What an IPv6 question needs from the kernel: the host's IPv6 addresses and routes, and for the sandboxes
/// involved (named, holding an address asked about, or publishing the port asked about) what their
/// namespaces hold, their fast path entries (`local6`) and their firewall elements.
fn facts6(q: &Query, facts: &Facts, host: &mut Host) -> Result<Facts6> {
    let mut six = Facts6 {
        host_addresses: host.addresses6_by_link()?,
        ..Facts6::default()
    };
    for party in [&q.from, &q.to] {
        if let Party::Address6(ip) = party {
            let route = host
                .route6_to(*ip)?
                .map(|(interface, gateway)| HostRoute6 { interface, gateway });
            six.routes.push((*ip, route));
        }
    }
    let involved = |sb: &crate::model::Sandbox| {
        sb.endpoints.iter().filter(|e| e.ipv6.is_some()).any(|e| {
            [&q.from, &q.to].iter().any(|p| match p {
                Party::Sandbox(n) => *n == sb.name,
                Party::Address6(ip) => e.ipv6.is_some_and(|e6| e6.address.addr() == *ip),
                _ => false,
            }) || q
                .port
                .is_some_and(|p| e.ports.iter().any(|m| m.host_ports().contains(&p)))
        })
    };
    let mut rules = Vec::new();
    for sf in facts.sandboxes.iter().filter(|s| involved(&s.sandbox)) {
        let sb = &sf.sandbox;
        for ep in sb.endpoints.iter().filter(|e| e.ipv6.is_some()) {
            rules.extend(crate::plan::build::endpoint_rules(ep));
            let Some(e6) = ep.ipv6 else { continue };
            let Some(net) = facts.networks.iter().find(|n| n.name == ep.network) else {
                continue;
            };
            if net.driver == Driver::Bridge && net.fast_path {
                match host.fast_path_entry(&net.interface, e6.address.addr()) {
                    Ok(Some(Some(_))) => {
                        six.fast_path.insert(e6.address.addr());
                    }
                    Ok(Some(None)) => {
                        six.fast_path_lacking.insert(e6.address.addr());
                    }
                    _ => {}
                }
            }
        }
        if !sf.up {
            continue;
        }
        // A namespace that cannot be entered (no privilege) is left unchecked, as a firewall unread is.
        if let Ok(inside) = inside6(sb) {
            six.inside.insert(sb.name.clone(), inside);
        }
    }
    if facts.backend != Backend::None {
        six.missing = Host::firewall_missing(facts.backend, &rules).ok();
    }
    if q.port.is_some() {
        six.loopback6_ports = Host::loopback6_ports().unwrap_or(None);
        six.loopback6_supported = Host::loopback6_supported();
    }
    // A dual-stack overlay's other hosts: what its device and fast path hold for their IPv6 blocks.
    if [&q.from, &q.to]
        .iter()
        .any(|p| matches!(p, Party::Address6(_)))
    {
        for n in &facts.networks {
            let Some(o) = n.overlay.as_ref().filter(|o| o.cluster6.is_some()) else {
                continue;
            };
            let kernel = host.overlay_entries(&o.device)?.map(|e| OverlayKernel6 {
                routes: e.routes6.iter().map(|r| (r.dst, r.via)).collect(),
                neighbours: e.neighbours6,
                fdb: e.fdb,
                remote6: None,
            });
            let kernel = match kernel {
                Some(mut k) if n.fast_path => {
                    // A fast path that cannot be read is taken as none: the slow path is described.
                    k.remote6 = host.fast_path_remotes6(&n.interface).unwrap_or(None);
                    Some(k)
                }
                k => k,
            };
            six.overlay.insert(n.name.clone(), kernel);
        }
    }
    six.drop_chains = Host::forward_drop_chains()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.family != "ip")
        .collect();
    Ok(six)
}

/// A sandbox's IPv6 addresses on its endpoints' links and its IPv6 default routes.
fn inside6(sb: &crate::model::Sandbox) -> Result<Inside6> {
    let mut view = Host::inside(&sb.netns)?;
    let links = view.links()?;
    let mut inside = Inside6::default();
    for ep in sb.endpoints.iter().filter(|e| e.ipv6.is_some()) {
        for a in view.addresses6_of(&ep.interface)? {
            inside.addresses.push((ep.interface.clone(), a));
        }
    }
    for r in view.default_routes6()? {
        let name = r
            .oif
            .and_then(|i| links.iter().find(|l| l.index == i))
            .map(|l| l.name.clone())
            .unwrap_or_default();
        inside.default_routes.push((name, r.gateway));
    }
    Ok(inside)
}

/// The port a forged-source probe uses when the question names none (the discard service).
const DISCARD_PORT: u16 = 9;

impl Nsnet {
    /// `--probe`: send the packet `e` explains for real, from FROM's namespace (`peer_netns` for a LAN peer:
    /// nsnet has no way onto another machine), with a one-shot listener where it should land when that is a
    /// sandbox, and trace it through nftables (the nftables backend only). Says whether it arrived and
    /// whether that agrees with `e`'s verdict. An IPv6 packet is sent from a sandbox with its own source only
    /// (`e.probe_refused` says why not otherwise).
    pub fn explain_probe(
        &self,
        q: &Query,
        e: &Explanation,
        peer_netns: Option<&Path>,
    ) -> Result<ProbeReport> {
        let mut notes = Vec::new();
        if !nix::unistd::geteuid().is_root() {
            return Err(Error::Invalid(
                "--probe needs root: it sends from other namespaces and traces with nftables; run it with sudo"
                    .into(),
            ));
        }
        if let Some(why) = &e.probe_refused {
            return Err(Error::Invalid(why.clone()));
        }
        let Some(plan) = e.probe.clone() else {
            return Ok(ProbeReport {
                delivered: false,
                detail: "nothing is sent: the packet never leaves its sender".into(),
                agrees: !e.verdict.delivered,
                trace: None,
                notes,
            });
        };
        let sender: PathBuf = match &plan.sender {
            s if s == "host" => PathBuf::from("/proc/self/ns/net"),
            s if s.parse::<Ipv4Addr>().is_ok() => match peer_netns {
                Some(p) => p.to_path_buf(),
                None => {
                    return Err(Error::Invalid(format!(
                        "a probe from {s} must be sent from there, and nsnet has no way onto that machine;                          give --peer-netns PATH of a namespace that holds {s} (or run the probe there)"
                    )))
                }
            },
            name => self.sandbox_netns(name)?,
        };
        let backend = self
            .networks()?
            .first()
            .map(|n| n.settings.firewall)
            .unwrap_or_default();
        // A forged source never gets an answer back: a datagram, watched for at the receiver, tells.
        let forged = q.src.is_some();
        let mut protocol = plan.protocol;
        let mut dport = plan.port;
        if forged && protocol != Protocol::Udp {
            protocol = Protocol::Udp;
            dport = Some(dport.unwrap_or(DISCARD_PORT));
            notes.push(
                "a forged source gets no answer, so the probe sends a UDP datagram and watches for it at the \
                 receiver"
                    .into(),
            );
        }
        let receiver = match &plan.receiver {
            Some((name, port)) => Some((name.clone(), self.sandbox_netns(name)?, port.or(dport))),
            None => None,
        };
        let dst = SocketAddr::new(plan.dst, dport.unwrap_or(0));
        let any: IpAddr = if plan.dst.is_ipv6() {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        // From here until the trace tables are gone, a ^C (or a kill) waits: it would leave them behind. Held
        // before any thread starts, so none of them takes it either.
        let _hold = HoldSignals::new();
        // The listener, where the packet should land.
        let server = match (&receiver, protocol) {
            (Some((name, ns, Some(port))), Protocol::Tcp | Protocol::Udp) => {
                let at = SocketAddr::new(any, *port);
                let made = if protocol == Protocol::Tcp {
                    probe::tcp_server(ns, at)
                } else {
                    probe::udp_server(ns, at)
                };
                match made {
                    Ok(s) => Some((name.clone(), s)),
                    Err(err) if err.kind() == io::ErrorKind::AddrInUse => {
                        notes.push(format!(
                            "something in {name} already listens on {port}/{protocol}: its answer counts"
                        ));
                        None
                    }
                    Err(err) => {
                        return Err(Error::Invalid(format!(
                            "cannot listen on {port}/{protocol} in {name}: {err}"
                        )))
                    }
                }
            }
            _ => None,
        };
        let proto_name = match protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        };
        let socket = match protocol {
            Protocol::Icmp => None,
            _ => {
                let src = SocketAddr::new(plan.src, 0);
                let stream = protocol == Protocol::Tcp;
                Some(
                    probe::bound_socket(&sender, stream, src, forged).map_err(|err| {
                        Error::Invalid(format!(
                            "cannot send from {} in {}'s namespace: {err}",
                            plan.src, plan.sender
                        ))
                    })?,
                )
            }
        };
        let tracer = match backend {
            Backend::Nftables => {
                let m = TraceMatch {
                    src: plan.src,
                    dst: plan.dst,
                    protocol: proto_name,
                    sport: socket.as_ref().map(|(_, p)| *p),
                    dport,
                };
                Some(Tracer::start(&m)?)
            }
            Backend::Iptables => {
                notes.push(
                    "iptables backend: the probe confirms the verdict without tracing the rules"
                        .into(),
                );
                None
            }
            Backend::None => None,
        };
        let ours = server.is_some();
        // Sent: Ok(text) when an answer came (or the receiver got it), Err when nothing arrived.
        let sent: std::result::Result<String, String> = match (protocol, socket) {
            (Protocol::Icmp, _) | (_, None) => match ping(&sender, plan.dst) {
                Ok(true) => Ok(format!("ping {} answered", plan.dst)),
                Ok(false) => Err(format!("ping {} got no answer", plan.dst)),
                Err(err) => Err(format!("ping failed: {err}")),
            },
            (Protocol::Tcp, Some((fd, sport))) => match probe::connect_bound(fd, dst) {
                Ok(stream) => {
                    // Read what a listener of ours says before closing, so its greeting is not cut short.
                    if ours {
                        let _ = stream.set_read_timeout(Some(probe::TIMEOUT));
                        let mut line = String::new();
                        let _ = io::BufRead::read_line(&mut io::BufReader::new(stream), &mut line);
                    }
                    Ok(format!(
                        "tcp {} -> {dst} connected",
                        SocketAddr::new(plan.src, sport)
                    ))
                }
                Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => Ok(format!(
                    "tcp {} -> {dst}: connection refused (it arrived where nothing listens)",
                    SocketAddr::new(plan.src, sport)
                )),
                Err(err) => Err(format!(
                    "tcp {} -> {dst}: {err}",
                    SocketAddr::new(plan.src, sport)
                )),
            },
            (Protocol::Udp, Some((fd, sport))) => match probe::udp_exchange(fd, dst) {
                Ok(_) => Ok(format!(
                    "udp {} -> {dst} answered",
                    SocketAddr::new(plan.src, sport)
                )),
                Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => Ok(format!(
                    "udp {} -> {dst}: port unreachable (it arrived where nothing listens)",
                    SocketAddr::new(plan.src, sport)
                )),
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    Err(format!(
                        "udp {} -> {dst}: no answer",
                        SocketAddr::new(plan.src, sport)
                    ))
                }
                Err(err) => Err(format!(
                    "udp {} -> {dst}: {err}",
                    SocketAddr::new(plan.src, sport)
                )),
            },
        };
        let (delivered, detail) = match server {
            Some((name, s)) => match s.wait() {
                Ok(peer) => (
                    true,
                    format!("{name} received it from {peer} ({})", brief(&sent)),
                ),
                Err(_) => (false, format!("{name} received nothing ({})", brief(&sent))),
            },
            None => match &sent {
                Ok(t) => (true, t.clone()),
                Err(t) => (false, t.clone()),
            },
        };
        let trace = tracer.map(|t| self.trace_steps(t.finish(), &mut notes));
        Ok(ProbeReport {
            delivered,
            detail,
            agrees: delivered == e.verdict.delivered,
            trace,
            notes,
        })
    }

    /// The events of the first traced packet, with each rule's text and the interfaces by name. A packet's
    /// trace id changes from hook to hook (the kernel hashes the skb), so the first packet's events are those
    /// up to its next entry into the chain it met first (an entry is the first event of a hook, the one that
    /// names the interfaces): every later packet of the probe (a retransmission, the rest of the connection)
    /// starts there again.
    fn trace_steps(&self, events: Vec<TraceEvent>, notes: &mut Vec<String>) -> Vec<TraceStep> {
        let chain_of = |e: &TraceEvent| (e.family.clone(), e.table.clone(), e.chain.clone());
        let entry = |e: &TraceEvent| e.iif.is_some() || e.oif.is_some();
        let Some(first) = events.first().map(chain_of) else {
            notes.push(
                "no netfilter hook of the host saw the packet (the fast path, or it never left its sender)"
                    .into(),
            );
            return vec![];
        };
        let starts: Vec<usize> = (0..events.len())
            .filter(|&i| entry(&events[i]) && chain_of(&events[i]) == first)
            .collect();
        if starts.len() > 1 {
            notes.push(format!(
                "{} packets were traced (retransmissions, or the rest of the connection); the first one is shown",
                starts.len()
            ));
        }
        let end = starts.get(1).copied().unwrap_or(events.len());
        let links: BTreeMap<u32, String> = Host::new()
            .links()
            .map(|l| l.into_iter().map(|l| (l.index, l.name)).collect())
            .unwrap_or_default();
        let name = |i: Option<u32>| i.map(|i| links.get(&i).cloned().unwrap_or(i.to_string()));
        let mut rules: BTreeMap<(String, String, String), Vec<(u64, String)>> = BTreeMap::new();
        let mut devices = (None, None);
        let mut out = Vec::new();
        for e in events.into_iter().take(end) {
            if entry(&e) {
                devices = (name(e.iif), name(e.oif));
            }
            // A rule event without a handle: the chain ran out of rules (its policy, or a return, follows).
            if e.kind == "rule" && e.handle.is_none() {
                continue;
            }
            let text = match (e.kind.as_str(), e.handle) {
                ("rule", Some(h)) => rules
                    .entry(chain_of(&e))
                    .or_insert_with(|| trace::chain_rules(&e.family, &e.table, &e.chain))
                    .iter()
                    .find(|(handle, _)| *handle == h)
                    .map(|(_, t)| t.clone())
                    .unwrap_or_else(|| format!("rule handle {h}")),
                (kind, _) => kind.to_string(),
            };
            let (iif, oif) = std::mem::take(&mut devices);
            out.push(TraceStep {
                chain: format!("{} {} {}", e.family, e.table, e.chain),
                rule: text,
                verdict: e.verdict,
                iif,
                oif,
            });
        }
        out
    }
}

/// Blocks the signals that end nsnet (SIGINT, SIGTERM, SIGHUP, SIGQUIT) while it lives, on this thread and the
/// threads it starts; one that came meanwhile is taken when it is dropped, after the trace tables (dropped
/// first, being made later) are gone.
struct HoldSignals(Option<nix::sys::signal::SigSet>);

impl HoldSignals {
    fn new() -> HoldSignals {
        use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
        let mut set = SigSet::empty();
        for s in [
            Signal::SIGINT,
            Signal::SIGTERM,
            Signal::SIGHUP,
            Signal::SIGQUIT,
        ] {
            set.add(s);
        }
        let mut old = SigSet::empty();
        let held = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old)).is_ok();
        HoldSignals(held.then_some(old))
    }
}

impl Drop for HoldSignals {
    fn drop(&mut self) {
        use nix::sys::signal::{pthread_sigmask, SigmaskHow};
        if let Some(old) = self.0 {
            let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
        }
    }
}

/// One ping of `ip`'s family from `ns`.
fn ping(ns: &Path, ip: IpAddr) -> std::result::Result<bool, crate::kernel::KernelError> {
    match ip {
        IpAddr::V4(ip) => probe::ping(ns, ip),
        IpAddr::V6(ip) => probe::ping6(ns, ip),
    }
}

fn brief(sent: &std::result::Result<String, String>) -> &str {
    match sent {
        Ok(t) | Err(t) => t,
    }
}
