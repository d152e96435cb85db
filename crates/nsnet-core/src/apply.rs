//! The applier: carries a [`Plan`] out step by step, remembering how to undo each step it did.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::kernel::fastpath::{self, FastPath};
use crate::kernel::loopback6;
use crate::kernel::netlink::{RouteSpec, VxlanSpec, RETIRED_GROUP};
use crate::kernel::{netns, sysctl, KernelError, Link, Netlink, VethSpec};
use crate::model::{Mac, OverlayBackend, Peer};
use crate::plan::{Ns, PeerLink, Plan, Step};

/// Runs steps, with one netlink socket per namespace it has touched.
#[derive(Default)]
pub struct Applier {
    sockets: HashMap<Ns, Netlink>,
    /// Steps started through [`Applier::apply`], counted across calls (a teardown applies in two phases).
    started: usize,
    observer: Option<Observer>,
    /// The fast path the last step put a sandbox on, while the next step is another address of the same
    /// sandbox (a dual-stack sandbox's IPv6 right after its IPv4): its program, maps and port qdisc are
    /// already in hand, so the second address is one map update. Any other step forgets it.
    last_fast_path: Option<LastFastPath>,
}

/// See [`Applier::last_fast_path`].
struct LastFastPath {
    bridge: String,
    port: String,
    peer_ns: Ns,
    index: u32,
    fp: FastPath,
}

/// Told about each step just before the applier runs it (`nsnet -v` prints it), so what is shown is what is
/// being done, in the order it is done, even when a later step fails or nsnet is killed halfway. Shared by the
/// threads of one command (a teardown deletes links and firewall elements at once).
pub type Observer = Arc<dyn Fn(&Step, Phase) + Send + Sync>;

/// Why a step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// It is part of the plan.
    Do,
    /// It undoes an earlier step: a rollback after a failure, or recovery rolling back a killed command.
    Undo,
}

/// In test builds with the `fault-injection` feature, `NSNET_FAIL_AT=K` fails the K-th step a command applies
/// (before it runs), so tests can prove that every step rolls back.
#[cfg(feature = "fault-injection")]
fn injected_fault(step: usize) -> Option<Error> {
    let at: usize = std::env::var("NSNET_FAIL_AT").ok()?.parse().ok()?;
    // A simulated kernel failure, not bad input: it must be reported (and coded by CNI) as a real one would.
    (at == step).then(|| {
        Error::from(KernelError::io(
            format!("injected fault at step {step}"),
            std::io::Error::from_raw_os_error(libc::EIO),
        ))
    })
}

#[cfg(not(feature = "fault-injection"))]
fn injected_fault(_step: usize) -> Option<Error> {
    None
}

/// The undo steps of an applied plan, newest first; [`Undo::rollback`] runs them, forgetting them commits.
#[must_use = "roll back on a later failure, or drop to keep the changes"]
#[derive(Default)]
pub struct Undo(Vec<Step>);

impl Undo {
    /// This undo followed by an earlier one (`self` is newer).
    pub fn then(mut self, earlier: Undo) -> Undo {
        self.0.extend(earlier.0);
        self
    }

    /// Undo everything, best effort; returns the undo steps that failed.
    pub fn rollback(self, applier: &mut Applier) -> Vec<Error> {
        self.0
            .iter()
            .filter_map(|s| applier.undo(s).err())
            .collect()
    }
}

impl Applier {
    pub fn new() -> Applier {
        Applier::default()
    }

    /// An applier that tells `observer` about each step before it runs it.
    pub fn observed(observer: Option<Observer>) -> Applier {
        Applier {
            observer,
            ..Applier::default()
        }
    }

    /// A second applier for the same command, to work at the same time as this one: the same observer, and
    /// its steps numbered from `n + 1` (for fault injection, so a test's fault hits the same step every run).
    pub fn sibling(&self, n: usize) -> Applier {
        Applier {
            started: n,
            observer: self.observer.clone(),
            ..Applier::default()
        }
    }

    fn observe(&self, step: &Step, phase: Phase) {
        if let Some(o) = &self.observer {
            o(step, phase);
        }
    }

    fn netlink(&mut self, ns: &Ns) -> Result<&mut Netlink> {
        if !self.sockets.contains_key(ns) {
            let nl = match ns {
                Ns::Host => Netlink::open()?,
                Ns::Path(p) => netns::netlink_in(p)?,
            };
            self.sockets.insert(ns.clone(), nl);
        }
        self.sockets
            .get_mut(ns)
            .ok_or_else(|| Error::Internal("the netlink socket cache lost an entry".into()))
    }

    /// Carry out one step of a plan.
    pub fn run(&mut self, step: &Step) -> Result<()> {
        self.observe(step, Phase::Do);
        self.exec(step)
    }

    /// Carry out a step that undoes an earlier one.
    pub fn undo(&mut self, step: &Step) -> Result<()> {
        self.observe(step, Phase::Undo);
        self.exec(step)
    }

    fn exec(&mut self, step: &Step) -> Result<()> {
        // Whatever another step does (delete the bridge, the port, the namespace), it is not looked at again.
        let last_fast_path = self.last_fast_path.take();
        match step {
            Step::CreateNetns { name, owner } => {
                let nl = netns::create(name, Some(owner))?;
                self.sockets.insert(Ns::Path(netns::named_path(name)), nl);
            }
            Step::DeleteNetns { name } => {
                self.sockets.remove(&Ns::Path(netns::named_path(name)));
                netns::delete(name)?;
            }
            Step::CreateBridge {
                name,
                mtu,
                mac,
                tag,
                ipv6,
            } => {
                let nl = self.netlink(&Ns::Host)?;
                nl.create_bridge(name, *mtu, mac.0)?;
                tag_new_link(nl, name, tag)?;
                if *ipv6 {
                    ipv6_gateway_link(nl, name)?;
                } else {
                    // Before it has a carrier: an IPv4 network's bridge with IPv6 on takes any sandbox's
                    // router advertisement for the host's own (a default route, an address: the class of
                    // CVE-2020-13401), besides sending DAD and MLD.
                    sysctl::disable_ipv6(name)?;
                }
            }
            Step::CreateVeth {
                host,
                peer,
                peer_ns,
                master,
                mtu,
                peer_mac,
                host_mac,
                tag,
                host_ipv6,
            } => {
                let Ns::Path(path) = peer_ns else {
                    // The plan builders always put the peer in a sandbox: a plan that does not is a bug.
                    return Err(Error::Internal(
                        "the plan puts a veth peer into the host namespace, not a sandbox's".into(),
                    ));
                };
                let fd = netns::open(path)?;
                let nl = self.netlink(&Ns::Host)?;
                let master = match master {
                    Some(m) => Some(nl.link_index(m)?),
                    None => None,
                };
                nl.create_veth(&VethSpec {
                    host,
                    peer,
                    peer_netns: std::os::fd::AsFd::as_fd(&fd),
                    master,
                    mtu: *mtu,
                    peer_mac: Some(peer_mac.0),
                    host_mac: Some(host_mac.0),
                })?;
                tag_new_link(nl, host, tag)?;
                if *host_ipv6 {
                    ipv6_gateway_link(nl, host)?;
                } else {
                    sysctl::disable_ipv6(host)?;
                }
                self.netlink(peer_ns)?.no_ipv6_link_local(peer)?;
            }
            Step::LinkUp { ns, name } => self.netlink(ns)?.set_up(name)?,
            Step::DeleteLink {
                ns,
                name,
                tag,
                made_with,
            } => {
                // A namespace that is gone took its links with it.
                if let Ns::Path(p) = ns {
                    if !p.exists() {
                        return Ok(());
                    }
                }
                let nl = self.netlink(ns)?;
                let Some(link) = nl.link(name)? else {
                    return Ok(());
                };
                check_owned(&link, tag, *made_with)?;
                nl.delete(&link)?;
            }
            Step::RetireVeth {
                host,
                peer,
                peer_ns,
                retired,
                tag,
                made_with,
                ..
            } => {
                let nl = self.netlink(&Ns::Host)?;
                let Some(link) = nl.link(host)? else {
                    return Ok(());
                };
                check_owned(&link, tag, *made_with)?;
                // The sandbox's end first: its name is what the next ADD wants free.
                if namespace_exists(peer_ns) {
                    self.netlink(peer_ns)?.retire(peer, Some(retired), None)?;
                }
                // The host end keeps its name: renaming a bridge port right after it went down waited for
                // the kernel (measured: 14 ms); the next endpoint's name is chosen among free ones anyway.
                self.netlink(&Ns::Host)?
                    .retire(host, None, Some(RETIRED_GROUP))?;
            }
            Step::UnretireVeth {
                host,
                peer,
                peer_ns,
                retired,
                ..
            } => {
                self.netlink(&Ns::Host)?.unretire(host, host)?;
                if namespace_exists(peer_ns) {
                    self.netlink(peer_ns)?.unretire(retired, peer)?;
                }
            }
            Step::WriteResolvConf { netns: name, text } => netns::write_resolv_conf(name, text)?,
            Step::RemoveResolvConf { netns: name, .. } => netns::remove_resolv_conf(name)?,
            Step::DeleteRetired { tag } => {
                let nl = self.netlink(&Ns::Host)?;
                let retired: Vec<Link> = nl
                    .links()?
                    .into_iter()
                    .filter(|l| l.group == RETIRED_GROUP)
                    .collect();
                // One request for the whole group, unless someone else's link sits in it.
                let all_nsnet = retired.iter().all(|l| {
                    l.alias
                        .as_deref()
                        .is_some_and(|a| a.starts_with(crate::store::TAG_PREFIX))
                });
                if all_nsnet && !retired.is_empty() {
                    nl.delete_group(RETIRED_GROUP)?;
                } else if !all_nsnet {
                    for l in retired.iter().filter(|l| l.alias.as_deref() == Some(tag)) {
                        nl.delete(l)?;
                    }
                }
            }
            Step::AddAddress { ns, dev, addr } => self.netlink(ns)?.add_address(dev, *addr)?,
            Step::AddDefaultRoute { ns, dev, via } => {
                self.netlink(ns)?.add_default_route(dev, *via)?
            }
            Step::Sysctl {
                ns: Ns::Host,
                key,
                value,
            } => sysctl::set(key, value)?,
            // /proc/sys follows the namespace of the thread that opens it: enter for the write.
            Step::Sysctl {
                ns: Ns::Path(path),
                key,
                value,
            } => netns::run_in(&netns::open(path)?, || sysctl::set(key, value))??,
            Step::BindPort { name, mac, hairpin } => {
                self.netlink(&Ns::Host)?.bind_port(name, mac.0, *hairpin)?
            }
            Step::FastPathInit { bridge } => {
                FastPath::ensure(self.netlink(&Ns::Host)?, bridge)?;
            }
            Step::FastPathAdd {
                bridge,
                port,
                peer_ns,
                ip,
                mac,
            } => {
                // The same sandbox's other address, right after its first: same port, same program.
                if let Some(last) = last_fast_path
                    .filter(|l| l.bridge == *bridge && l.port == *port && l.peer_ns == *peer_ns)
                {
                    last.fp.put(last.index, *ip, mac.0)?;
                    self.last_fast_path = Some(last);
                    return Ok(());
                }
                let nl = self.netlink(&Ns::Host)?;
                let Some(link) = nl.link(port)? else {
                    // Undoing a removal whose port is gone: there is nothing left to speed up.
                    return Ok(());
                };
                // bpf_redirect_peer only reaches a peer in another namespace than the host's.
                if in_host_namespace(peer_ns)? {
                    return Ok(());
                }
                // A bridge made before nsnet had a fast path gets one now; a bridge that is gone, none.
                let fp = match FastPath::ensure(nl, bridge) {
                    Err(KernelError::Missing(_)) => None,
                    other => other?,
                };
                if let Some(fp) = fp {
                    fp.add(nl, link.index, *ip, mac.0)?;
                    self.last_fast_path = Some(LastFastPath {
                        bridge: bridge.clone(),
                        port: port.clone(),
                        peer_ns: peer_ns.clone(),
                        index: link.index,
                        fp,
                    });
                }
            }
            Step::LoopbackInit => {
                loopback6::init(self.netlink(&Ns::Host)?)?;
            }
            Step::LoopbackRelease => loopback6::release()?,
            Step::LoopbackPortAdd(l) => {
                if let Some(lo) = loopback6::init(self.netlink(&Ns::Host)?)? {
                    for e in loopback_entries(l) {
                        lo.add(&e)?;
                    }
                }
            }
            Step::LoopbackPortRemove(l) => {
                if let Some(lo) = loopback6::existing()? {
                    for e in loopback_entries(l) {
                        lo.remove(e.proto, e.port)?;
                    }
                    // The last port takes the programs with it.
                    if lo.ports()?.is_empty() {
                        lo.detach()?;
                    }
                }
            }
            Step::LoopbackSync(ports) => {
                let want: Vec<loopback6::Entry> = ports.iter().flat_map(loopback_entries).collect();
                if want.is_empty() {
                    if let Some(lo) = loopback6::existing()? {
                        lo.detach()?;
                    }
                } else if let Some(lo) = loopback6::init(self.netlink(&Ns::Host)?)? {
                    lo.retain(&want)?;
                    for e in &want {
                        lo.add(e)?;
                    }
                }
            }
            Step::FastPathRemove { bridge, ip, .. } => {
                // No bridge, no block: nothing to take the address off.
                if let Some(fp) = FastPath::of_bridge(self.netlink(&Ns::Host)?, bridge)? {
                    fp.remove(*ip)?;
                }
            }
            Step::Firewall { backend, batch } => backend.apply(batch)?,
            Step::CreateVxlan {
                name,
                vni,
                port,
                mtu,
                mac,
                tag,
                ipv6,
            } => {
                let nl = self.netlink(&Ns::Host)?;
                nl.create_vxlan(&VxlanSpec {
                    name,
                    vni: *vni,
                    port: *port,
                    mtu: *mtu,
                    mac: mac.0,
                    underlay_dev: None,
                })?;
                tag_new_link(nl, name, tag)?;
                if *ipv6 {
                    // Peers' IPv6 blocks are routed through it: IPv6 on (a host whose default is off
                    // included), with no address of its own and no router advertisements taken.
                    ipv6_gateway_link(nl, name)?;
                } else {
                    sysctl::disable_ipv6(name)?;
                }
                nl.set_up(name)?;
            }
            Step::FastPathTunnel {
                bridge,
                device,
                decap,
                routes,
                routes6,
            } => {
                let nl = self.netlink(&Ns::Host)?;
                // No fast path on this bridge (or on this kernel): the slow path carries it all.
                let Some(fp) = FastPath::of_bridge(nl, bridge)? else {
                    return Ok(());
                };
                let out = nl.link_index(device)?;
                let bridge_mac = nl
                    .link(bridge)?
                    .and_then(|l| l.mac)
                    .ok_or_else(|| KernelError::Missing(bridge.clone()))?;
                fp.set_tunnel(nl, out, decap.then_some(out), bridge_mac)?;
                fp.set_remotes(routes)?;
                fp.set_remotes6(routes6)?;
            }
            Step::UnderlayFilter {
                bridge,
                device,
                qdisc,
            } => {
                let nl = self.netlink(&Ns::Host)?;
                // No fast path on this bridge (or on this kernel): the slow path delivers.
                let Some(fp) = FastPath::of_bridge(nl, bridge)? else {
                    return Ok(());
                };
                let dev = nl.link_index(device)?;
                fp.attach_underlay(nl, bridge, dev, *qdisc)?;
            }
            Step::RemoveUnderlayFilter {
                device,
                handle,
                qdisc,
            } => {
                let nl = self.netlink(&Ns::Host)?;
                // A device that is gone took its filters and qdiscs with it.
                if let Some(link) = nl.link(device)? {
                    fastpath::detach_underlay(nl, link.index, *handle, *qdisc)?;
                }
            }
            Step::SetPeer { overlay, peer } => {
                let nl = self.netlink(&Ns::Host)?;
                let dev = nl.link_index(&overlay.device)?;
                let Some(route) = peer_route(overlay, peer, dev) else {
                    return Ok(());
                };
                if let (OverlayBackend::Vxlan, Some(mac)) = (overlay.backend, peer.vtep_mac) {
                    nl.fdb_replace(dev, mac.0, peer.underlay)?;
                    nl.neigh_replace(dev, peer.vxlan_gateway(), mac.0)?;
                }
                nl.route_replace(&route)?;
                // The IPv6 block: the same way for both backends, its next hop bound to a MAC (the VTEP's, or
                // the underlay interface's: an IPv6 route cannot have an IPv4 next hop), never solicited.
                if let (Some(src), Some((block, via, mac))) =
                    (overlay.src6, peer.gateway6(overlay.backend))
                {
                    nl.neigh6_replace(dev, via, mac.0)?;
                    nl.route6_replace(&route6(block, via, dev, Some(src)))?;
                }
            }
            Step::RemovePeer { overlay, peer } => {
                let nl = self.netlink(&Ns::Host)?;
                // A device that is gone took the peer's entries with it.
                let Some(link) = nl.link(&overlay.device)? else {
                    return Ok(());
                };
                if let (Some(_), Some((block, via, _))) =
                    (overlay.src6, peer.gateway6(overlay.backend))
                {
                    nl.route6_delete(&route6(block, via, link.index, None))?;
                    nl.neigh6_delete(link.index, via)?;
                }
                if let Some(route) = peer_route(overlay, peer, link.index) {
                    nl.route_delete(&route)?;
                }
                if let (OverlayBackend::Vxlan, Some(mac)) = (overlay.backend, peer.vtep_mac) {
                    nl.neigh_delete(link.index, peer.vxlan_gateway())?;
                    nl.fdb_delete(link.index, mac.0)?;
                }
            }
        }
        Ok(())
    }

    /// Apply a plan all or nothing: when a step fails, the steps already done are undone in reverse and the
    /// error says so. Returns the undo of the whole plan, for a later failure.
    pub fn apply(&mut self, plan: &Plan) -> Result<Undo> {
        // Kept newest first, each step's undo list in its own order.
        let mut undo: Vec<Step> = Vec::new();
        for (i, step) in plan.steps.iter().enumerate() {
            self.started += 1;
            // Shown before the injected fault too: it stands for the step failing in the kernel.
            self.observe(step, Phase::Do);
            if let Err(cause) = injected_fault(self.started).map_or_else(|| self.exec(step), Err) {
                let rollback = Undo(undo).rollback(self);
                return Err(Error::RolledBack {
                    cause: Box::new(cause),
                    rollback,
                });
            }
            let mut u = plan.undo_of(i);
            u.extend(undo);
            undo = u;
        }
        Ok(Undo(undo))
    }

    /// Wait until the bridge ports this set-up plan made forward frames (see [`Netlink::wait_forwarding`]), so
    /// a command returns with its sandbox reachable. Called last, after the rules and records, so the
    /// kernel's work on the new carrier overlaps nsnet's own. Best effort: the set-up is done and recorded by
    /// then, and a port still not forwarding after a second (a bridge someone runs STP on takes far longer)
    /// gets there on its own.
    pub fn settle(&mut self, plan: &Plan) {
        for step in &plan.steps {
            if let Step::CreateVeth {
                host,
                master: Some(_),
                ..
            } = step
            {
                if let Ok(nl) = self.netlink(&Ns::Host) {
                    let _ = nl.wait_forwarding(host, std::time::Duration::from_secs(1));
                }
            }
        }
    }

    /// Apply a teardown plan best effort: every step runs even when an earlier one failed; all failures are
    /// reported together.
    pub fn teardown(&mut self, plan: &Plan) -> Result<()> {
        let errors: Vec<Error> = plan
            .steps
            .iter()
            .filter_map(|s| self.run(s).err())
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Removal(errors))
        }
    }
}

/// The route to a peer's subnet: onlink through its VXLAN gateway (whose neighbour entry is permanent), or
/// via its underlay address (host-gw). Leaves from this host's gateway address.
fn peer_route(o: &PeerLink, peer: &Peer, dev_index: u32) -> Option<RouteSpec> {
    let (via, onlink) = match o.backend {
        OverlayBackend::Vxlan => (peer.vxlan_gateway(), true),
        OverlayBackend::HostGw => (peer.underlay, false),
    };
    if o.backend == OverlayBackend::Vxlan && peer.vtep_mac.is_none() {
        return None;
    }
    Some(RouteSpec {
        dst: peer.subnet,
        via,
        dev_index,
        onlink,
        prefsrc: Some(o.src),
    })
}

/// The route to a peer's IPv6 block: onlink via the block's first address (see [`Peer::gateway6`]).
fn route6(
    block: ipnet::Ipv6Net,
    via: std::net::Ipv6Addr,
    dev_index: u32,
    prefsrc: Option<std::net::Ipv6Addr>,
) -> crate::kernel::netlink::RouteSpec6 {
    crate::kernel::netlink::RouteSpec6 {
        dst: block,
        via,
        dev_index,
        prefsrc,
    }
}

/// A link nsnet may delete or retire: one with `tag` as its alias, or (made before links were tagged, or by a
/// create killed before it tagged it) one with no alias and the MAC nsnet gave it. Never anything else, whatever
/// a record names.
fn check_owned(link: &Link, tag: &str, made_with: Option<Mac>) -> Result<()> {
    let half_made = link.alias.is_none() && made_with.is_some_and(|m| link.mac == Some(m.0));
    if !tag.is_empty() && link.alias.as_deref() != Some(tag) && !half_made {
        return Err(Error::Invalid(format!(
            "link {} is not one nsnet made for this state dir (its alias is not {tag}); nsnet leaves it \
             alone: check the state file that names it",
            link.name
        )));
    }
    Ok(())
}

/// Whether the namespace of `ns` is still there (a sandbox's may be gone: its ends went with it).
fn namespace_exists(ns: &Ns) -> bool {
    match ns {
        Ns::Host => true,
        Ns::Path(p) => p.exists(),
    }
}

/// Whether `ns` is the namespace nsnet runs in.
fn in_host_namespace(ns: &Ns) -> Result<bool> {
    match ns {
        Ns::Host => Ok(true),
        Ns::Path(p) => Ok(netns::identity(p)?
            == netns::identity(std::path::Path::new("/proc/thread-self/ns/net"))?),
    }
}

/// Tag a link this step just made with its owner's alias. Should that fail, the link goes at once: its undo
/// deletes only tagged links, so an untagged one would be left behind.
/// A dual-stack network's gateway link (its bridge, or a veth driver's host end), before it has a carrier:
/// no link-local address of its own (nsnet adds `fe80::1`, without DAD), no router advertisements taken
/// (a sandbox's must never give the host a route or an address), then IPv6 on, in case the host's default
/// has it off.
fn ipv6_gateway_link(nl: &mut Netlink, name: &str) -> Result<()> {
    nl.no_ipv6_link_local(name)?;
    sysctl::set(&format!("net/ipv6/conf/{name}/accept_ra"), "0")?;
    sysctl::set(&format!("net/ipv6/conf/{name}/disable_ipv6"), "0")?;
    Ok(())
}

fn tag_new_link(nl: &mut Netlink, name: &str, tag: &str) -> Result<()> {
    if tag.is_empty() {
        return Ok(());
    }
    if let Err(e) = nl.set_alias(name, tag) {
        let _ = nl.delete_link(name);
        return Err(e.into());
    }
    Ok(())
}

/// The ports of a [`crate::plan::Loopback`] one by one, each with its container port.
fn loopback_entries(l: &crate::plan::Loopback) -> impl Iterator<Item = loopback6::Entry> + '_ {
    (0..l.count).map_while(move |i| {
        Some(loopback6::Entry {
            proto: l.proto,
            port: l.host_port.checked_add(i)?,
            target: l.target,
            target_port: l.container_port.checked_add(i)?,
            every: l.every,
        })
    })
}
