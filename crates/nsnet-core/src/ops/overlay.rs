//! This host's part of overlay networks, as `nsnet agent` keeps it, in the same one direction as every
//! command: the agent's request (a lease, the peers etcd lists) is validated against the state and the host,
//! planned ([`build::peers_change`]), applied and recorded (the peers live in the network's record).

use std::net::Ipv4Addr;

use ipnet::{Ipv4Net, Ipv6Net};

use super::host::{OverlayEntries, Underlay};
use super::{Host, NetworkRequest, Nsnet};
use crate::error::{Error, Result};
use crate::invalid;
use crate::kernel::fastpath::OnUnderlay;
use crate::model::{Driver, Mac, Network, Overlay, OverlayBackend, Peer};
use crate::plan::{build, Plan, Step};
use crate::store::Record;

/// What the agent asks for one overlay network on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayJoin {
    pub name: String,
    /// This host's lease: its block of the cluster subnet.
    pub subnet: Ipv4Net,
    pub cluster: Ipv4Net,
    /// Dual stack: this host's IPv6 block, the cluster's IPv6 prefix, and whether IPv6 leaving the cluster
    /// is masqueraded (NAT66).
    pub subnet6: Option<Ipv6Net>,
    pub cluster6: Option<Ipv6Net>,
    pub ipv6_nat: bool,
    pub backend: OverlayBackend,
    pub vni: u32,
    pub port: u16,
    /// The network's MTU when its settings give one; else derived from the underlay.
    pub mtu: Option<u32>,
    pub underlay: Underlay,
    /// The other hosts: programmed with the network when it is made here (later changes go through
    /// [`Nsnet::overlay_sync`]).
    pub peers: Vec<Peer>,
}

/// VXLAN over IPv4 adds 50 bytes: outer Ethernet 14, IPv4 20, UDP 8, VXLAN 8.
pub const VXLAN_OVERHEAD: u32 = 50;

impl OverlayJoin {
    /// The MTU of the network's bridge, VXLAN device and veths.
    pub fn mtu(&self) -> u32 {
        self.mtu.unwrap_or(match self.backend {
            OverlayBackend::Vxlan => self.underlay.mtu.saturating_sub(VXLAN_OVERHEAD),
            OverlayBackend::HostGw => self.underlay.mtu,
        })
    }

    fn overlay(&self) -> Overlay {
        Overlay {
            cluster: self.cluster,
            cluster6: self.cluster6.filter(|_| self.subnet6.is_some()),
            backend: self.backend,
            vni: self.vni,
            port: self.port,
            device: match self.backend {
                OverlayBackend::Vxlan => vxlan_device(self.vni),
                OverlayBackend::HostGw => self.underlay.interface.clone(),
            },
            vtep_mac: vtep_mac(self.subnet),
            peers: vec![],
            underlay_qdisc: false,
        }
    }
}

/// The VXLAN device of VNI `vni`: one per VNI on a host.
pub fn vxlan_device(vni: u32) -> String {
    format!("nsvx{vni}")
}

/// The VTEP MAC of the host holding `subnet`: derived from the subnet (unique in the cluster), so it stays
/// the same across agent restarts and re-creations, and peers' FDB entries stay right. Locally administered,
/// and outside the range nsnet derives sandboxes' MACs from.
pub fn vtep_mac(subnet: Ipv4Net) -> Mac {
    let o = subnet.network().octets();
    Mac([0x0e, 0x6e, o[0], o[1], o[2], o[3]])
}

/// A plan to apply and the records it leaves.
type Change = (Plan, Vec<Record>);

/// What one [`Nsnet::overlay_sync`] did.
#[derive(Debug, Default)]
pub struct PeerSync {
    /// What was applied (empty when everything was as wanted).
    pub plan: Plan,
    /// One line per peer this host cannot program, saying why.
    pub refused: Vec<String>,
    /// One line per entry the kernel had lost, put back.
    pub repaired: Vec<String>,
    /// The network's bridge is gone: `gc` rebuilds it.
    pub needs_gc: bool,
}

impl Nsnet {
    /// This host's id in overlay networks ([`crate::store::Store::host_id`]).
    pub fn host_id(&self) -> Result<String> {
        Ok(self.store.host_id()?)
    }

    /// This host's underlay: its address, interface and MTU (see [`Host::underlay`]).
    pub fn underlay(&self, iface: Option<&str>, ip: Option<Ipv4Addr>) -> Result<Underlay> {
        Host::new().underlay(iface, ip)
    }

    /// Make this host's part of an overlay network (a bridge network on the host's lease, with the VXLAN
    /// device and the peers it can program), or check the one there is matches. The plan is empty when the
    /// network was there.
    pub fn overlay_join(&self, join: &OverlayJoin) -> Result<(Network, Plan)> {
        // The agent asks every second: when the part is there, a shared read answers.
        {
            let _read = self.read_lock()?;
            if let Some(net) = self.store.network(&join.name)? {
                same_part(&net, join)?;
                return Ok((net, Plan::default()));
            }
        }
        let _lock = self.lock()?;
        let nets = self.store.networks()?;
        let mut want = join.overlay();
        if let Some(net) = nets.iter().find(|n| n.name == join.name) {
            same_part(net, join)?;
            return Ok((net.clone(), Plan::default()));
        }
        // host-gw's IPv6 routes leave by the underlay interface (not nsnet's to change): with IPv6 off there,
        // every peer's IPv6 route would be refused, and the peers' IPv4 routes with them.
        let iface = &join.underlay.interface;
        if join.subnet6.is_some() && join.backend == OverlayBackend::HostGw && !Host::ipv6_on(iface)
        {
            return Err(invalid!(
                "overlay network '{}' is dual stack, and host-gw routes its IPv6 by the underlay interface \
                 {iface}, which has IPv6 off (net.ipv6.conf.{iface}.disable_ipv6 is not 0); turn it on \
                 there (no IPv6 address is needed on it)",
                join.name
            ));
        }
        let mut host = Host::new();
        for p in &join.peers {
            if refusal(&mut host, &want, p)?.is_none() {
                want.peers.push(p.clone());
            }
        }
        want.peers.sort();
        want.peers.dedup();
        let req = NetworkRequest {
            name: join.name.clone(),
            driver: Driver::Bridge,
            subnet: Some(join.subnet),
            gateway: None,
            interface: None,
            internal: false,
            isolate: true,
            fast_path: true,
            mtu: Some(join.mtu()),
            options: Default::default(),
            overlay: Some(want),
            // The resolver knows this host's sandboxes only; names across hosts would need etcd's view.
            dns: false,
            dns_servers: vec![],
            // The block's first address is the peers' next hop to it (never handed out); `::1` the gateway.
            ipv6: join.subnet6.map(|s| super::Ipv6Request {
                subnet: Some(s),
                gateway: None,
                nat: join.ipv6_nat,
                only: false,
            }),
        };
        self.create_network(&req, &nets)
            .map(|(plan, net)| (net, plan))
    }

    /// Bring overlay network `name`'s peers on this host to `peers` (every other host's lease), and put back
    /// whatever the kernel lost of those it already has; with `check_firewall`, their firewall elements too.
    /// Peers are recorded with the network. A round with nothing to do (the agent's usual second) only reads,
    /// under the shared lock; a change is planned again under the writer lock and applied.
    pub fn overlay_sync(
        &self,
        name: &str,
        peers: &[Peer],
        check_firewall: bool,
    ) -> Result<PeerSync> {
        {
            let _read = self.read_lock()?;
            let (sync, change) = self.plan_sync(name, peers, check_firewall)?;
            if change.is_none() {
                return Ok(sync);
            }
        }
        let _lock = self.lock()?;
        let (mut sync, change) = self.plan_sync(name, peers, check_firewall)?;
        if let Some((plan, records)) = change {
            sync.plan = self.bring_up(plan, records)?;
        }
        Ok(sync)
    }

    /// What [`Nsnet::overlay_sync`] would do now: the report, and the plan with its records when there is
    /// anything to change. Reads the state and the host only (the caller holds a lock).
    fn plan_sync(
        &self,
        name: &str,
        peers: &[Peer],
        check_firewall: bool,
    ) -> Result<(PeerSync, Option<Change>)> {
        let nets = self.store.networks()?;
        let net = nets
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| super::no_network(name))?;
        let Some(overlay) = &net.overlay else {
            return Err(invalid!("network '{name}' is not an overlay network"));
        };
        let mut sync = PeerSync::default();
        if net.removing {
            return Ok((sync, None));
        }
        let mut host = Host::new();
        let mut accepted = Vec::new();
        for p in peers {
            if let Some(why) = refusal(&mut host, overlay, p)? {
                sync.refused.push(why);
            } else {
                accepted.push(p.clone());
            }
        }
        accepted.sort();
        accepted.dedup();
        let others: Vec<Network> = nets.iter().filter(|n| n.name != name).cloned().collect();
        let mut wanted = net.clone();
        if let Some(o) = wanted.overlay.as_mut() {
            o.peers = accepted.clone();
        }
        if !host.link_exists(&net.interface)? {
            sync.needs_gc = true;
            return Ok((sync, None));
        }
        let mut plan = build::peers_change(net, &accepted, &others);
        match host.overlay_entries(&overlay.device)? {
            // The VXLAN device is gone (with every entry on it): it comes back with all its peers.
            None if overlay.backend == OverlayBackend::Vxlan => {
                sync.repaired
                    .push(format!("VXLAN device {} (it was missing)", overlay.device));
                plan.steps.retain(|s| matches!(s, Step::Firewall { .. }));
                plan.steps
                    .extend(build::overlay_up(&wanted, &self.store.owner_tag()));
            }
            None => {
                return Err(invalid!(
                    "the underlay interface {} of overlay network '{name}' is gone",
                    overlay.device
                ))
            }
            Some(entries) => {
                for p in accepted.iter().filter(|p| overlay.peers.contains(p)) {
                    // Overlay networks always have IPv4, and so an IPv4 gateway.
                    let gateway = net.gateway.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
                    let lost = lost_entry(overlay, gateway, p, &entries).or_else(|| {
                        let gateway6 = net.ipv6.filter(|_| overlay.cluster6.is_some())?.gateway;
                        lost_entry6(overlay.backend, gateway6, p, &entries)
                    });
                    if let Some(lost) = lost {
                        sync.repaired
                            .push(format!("{lost} of peer {} at {}", p.subnet, p.underlay));
                        if let Some(link) = build::peer_link(net) {
                            plan.steps.push(Step::SetPeer {
                                overlay: link,
                                peer: p.clone(),
                            });
                        }
                    }
                }
            }
        }
        // The fast path's remote blocks: lost (by hand, or with a map emptied), the peers' traffic takes the
        // slow path until they are put back.
        let tunnel = build::fast_path_tunnel(&wanted, &accepted);
        if let Some((bridge, step)) = host.lost_fast_path_remotes(&plan, tunnel)? {
            sync.repaired
                .push(format!("fast path's remote blocks on {bridge}"));
            plan.steps.push(step);
        }
        // host-gw's fast path on the underlay: its filter can go with someone else's qdisc, and a re-created
        // bridge has a new program.
        if overlay.backend == OverlayBackend::HostGw {
            let there = host.underlay_filter_there(&net.interface, &overlay.device)?;
            match build::underlay_filter(&wanted) {
                Some(_) if there == Some(OnUnderlay::Missing) => {
                    // A qdisc there is someone else's, unless nsnet made it; none there, nsnet makes one.
                    let owned =
                        overlay.underlay_qdisc || !host.has_ingress_qdisc(&overlay.device)?;
                    if let Some(o) = wanted.overlay.as_mut() {
                        o.underlay_qdisc = owned;
                    }
                    sync.repaired
                        .push(format!("fast path filter on {}", overlay.device));
                    plan.steps.extend(build::underlay_filter(&wanted));
                }
                // The host's firewall now drops what the filter would deliver (see build::underlay_filter).
                None if there == Some(OnUnderlay::There) => {
                    plan.steps.extend(build::remove_underlay_filter(net));
                }
                _ => {}
            }
        }
        if check_firewall {
            let rules = build::network_firewall(&wanted, &others);
            let missing = Host::firewall_missing(net.firewall, &rules)?;
            if !missing.is_empty() {
                sync.repaired
                    .push(format!("{} firewall element(s)", missing.len()));
                let mut fw = crate::firewall::Batch::default();
                for rule in missing {
                    fw.add(rule);
                }
                plan.steps.push(Step::Firewall {
                    backend: net.firewall,
                    batch: fw,
                });
            }
        }
        if plan.is_empty() {
            return Ok((sync, None));
        }
        let records = if wanted == *net {
            vec![]
        } else {
            vec![Record::Settings(wanted)]
        };
        Ok((sync, Some((plan, records))))
    }

    /// Take this host out of overlay network `name` (it left the cluster): the network goes when no sandbox
    /// uses it; until then only its peers go, and `false` says the network is still here.
    pub fn overlay_leave(&self, name: &str) -> Result<bool> {
        let users = match self.network(name)? {
            None => return Ok(true),
            Some(r) if r.settings.overlay.is_none() => return Ok(true),
            Some(r) => r.allocations.users().len(),
        };
        if users > 0 {
            self.overlay_sync(name, &[], false)?;
            return Ok(false);
        }
        match self.remove_network(name, false, true) {
            Ok(_) => Ok(true),
            // A sandbox joined meanwhile: next time.
            Err(Error::Invalid(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Check that `net`, the network of the join's name there is, is this host's part of the overlay the join
/// asks for: made from the same cluster settings, on the same lease.
fn same_part(net: &Network, join: &OverlayJoin) -> Result<()> {
    let want = join.overlay();
    let Some(have) = &net.overlay else {
        return Err(invalid!(
            "a network named '{}' already exists on this host and is not the overlay network; remove it \
             (nsnet network rm {}) so the agent can join the overlay",
            join.name,
            join.name
        ));
    };
    if net.subnet != Some(join.subnet) {
        return Err(invalid!(
            "this host's part of overlay network '{}' has subnet {}, but its lease is {}; remove the \
             sandboxes on it so the agent can rebuild it",
            join.name,
            crate::model::or_none(net.subnet),
            join.subnet
        ));
    }
    let have6 = net.ipv6.map(|v6| (v6.subnet, v6.nat));
    let want6 = join.subnet6.map(|s| (s, join.ipv6_nat));
    if have6 != want6 || have.cluster6 != want.cluster6 {
        let show = |v: Option<(Ipv6Net, bool)>| {
            v.map_or("no IPv6".to_string(), |(s, nat)| {
                format!("IPv6 {s}{}", if nat { "" } else { " without NAT66" })
            })
        };
        return Err(invalid!(
            "this host's part of overlay network '{}' has {}, but the cluster gives it {}; remove its \
             sandboxes so the agent can rebuild it",
            join.name,
            show(have6),
            show(want6)
        ));
    }
    let same = have.cluster == want.cluster
        && have.backend == want.backend
        && have.vni == want.vni
        && have.port == want.port;
    if !same {
        return Err(invalid!(
            "this host's part of overlay network '{}' was made with other settings (cluster {}, {} vni {} \
             port {}) than the cluster now has; remove its sandboxes so the agent can rebuild it",
            join.name,
            have.cluster,
            have.backend,
            have.vni,
            have.port
        ));
    }
    Ok(())
}

/// Why this host cannot program `peer`, if it cannot.
fn refusal(host: &mut Host, o: &Overlay, peer: &Peer) -> Result<Option<String>> {
    if let Some(s6) = peer.subnet6 {
        if !o.cluster6.is_some_and(|c| c.contains(&s6)) {
            return Ok(Some(format!(
                "peer {} at {} has IPv6 block {s6}, outside the cluster's IPv6 prefix {}",
                peer.subnet,
                peer.underlay,
                crate::model::or_none(o.cluster6)
            )));
        }
    }
    if !o.cluster.contains(&peer.subnet) {
        return Ok(Some(format!(
            "peer subnet {} is outside the cluster subnet {}",
            peer.subnet, o.cluster
        )));
    }
    match o.backend {
        OverlayBackend::Vxlan if peer.vtep_mac.is_none() => Ok(Some(format!(
            "peer {} at {} has no VTEP MAC (it runs another backend?)",
            peer.subnet, peer.underlay
        ))),
        // A route via an address that is not on-link would black-hole the subnet.
        OverlayBackend::HostGw if !host.on_link(peer.underlay)? => Ok(Some(format!(
            "peer {} at {} is not on this host's L2 segment (a router is between): host-gw cannot route \
             to it; use the vxlan backend for hosts on different segments",
            peer.subnet, peer.underlay
        ))),
        _ => Ok(None),
    }
}

/// The first entry of `peer` the kernel no longer has (or has pointing elsewhere), if any.
fn lost_entry(
    o: &Overlay,
    gateway: Ipv4Addr,
    peer: &Peer,
    have: &OverlayEntries,
) -> Option<&'static str> {
    let route_ok = |via: Ipv4Addr| {
        have.routes
            .iter()
            .any(|r| r.dst == peer.subnet && r.via == via && r.prefsrc == Some(gateway))
    };
    match (o.backend, peer.vtep_mac) {
        (OverlayBackend::Vxlan, Some(mac)) => {
            if !have.fdb.contains(&(mac.0, Some(peer.underlay))) {
                Some("FDB entry")
            } else if !have.neighbours.contains(&(peer.vxlan_gateway(), mac.0)) {
                Some("neighbour entry")
            } else if !route_ok(peer.vxlan_gateway()) {
                Some("route")
            } else {
                None
            }
        }
        (OverlayBackend::Vxlan, None) => None,
        (OverlayBackend::HostGw, _) => (!route_ok(peer.underlay)).then_some("route"),
    }
}

/// The first IPv6 entry of `peer` (dual-stack overlays) the kernel no longer has, or has pointing elsewhere.
fn lost_entry6(
    backend: OverlayBackend,
    gateway6: std::net::Ipv6Addr,
    peer: &Peer,
    have: &OverlayEntries,
) -> Option<&'static str> {
    let (block, via, mac) = peer.gateway6(backend)?;
    if !have.neighbours6.contains(&(via, mac.0)) {
        Some("IPv6 neighbour entry")
    } else if !have
        .routes6
        .iter()
        .any(|r| r.dst == block && r.via == via && r.prefsrc == Some(gateway6))
    {
        Some("IPv6 route")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtep_macs_are_unicast_local_and_not_sandbox_macs() {
        let m = vtep_mac("10.244.3.0/24".parse().unwrap());
        assert_eq!(m.to_string(), "0e:6e:0a:f4:03:00");
        assert!(m.check_unicast().is_ok());
        assert_eq!(m.0[0] & 2, 2, "locally administered");
        assert_ne!(m.0[..2], [0x02, 0x6e]);
    }

    #[test]
    fn mtu_follows_the_underlay_unless_given() {
        let mut j = OverlayJoin {
            name: "pods".into(),
            subnet: "10.244.3.0/24".parse().unwrap(),
            cluster: "10.244.0.0/16".parse().unwrap(),
            subnet6: None,
            cluster6: None,
            ipv6_nat: true,
            backend: OverlayBackend::Vxlan,
            vni: 1,
            port: 4789,
            mtu: None,
            underlay: Underlay {
                ip: Ipv4Addr::new(192, 168, 200, 11),
                interface: "eth0".into(),
                mtu: 1500,
                mac: None,
            },
            peers: vec![],
        };
        assert_eq!(j.mtu(), 1450);
        j.backend = OverlayBackend::HostGw;
        assert_eq!(j.mtu(), 1500);
        j.mtu = Some(1400);
        assert_eq!(j.mtu(), 1400);
        assert_eq!(j.overlay().device, "eth0");
        j.backend = OverlayBackend::Vxlan;
        assert_eq!(j.overlay().device, "nsvx1");
    }
}
