//! Pure plan builders: from records to the steps that bring them up or take them down.
//! Nothing here reads or changes the system, so every rule is checked by unit tests without root.

use crate::firewall::{Batch, Rule, Tables};
use crate::model::{
    Driver, Endpoint, GatewayMode, Mac, Network, Overlay, OverlayBackend, Peer, Sandbox,
};
use crate::plan::{Loopback, Ns, PeerLink, Plan, Step};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv6Addr};

/// The IPv4 gateway with its subnet's prefix length; None on an IPv6-only network.
fn gateway_cidr(net: &Network) -> Option<Ipv4Net> {
    let (subnet, gateway) = (net.subnet?, net.gateway?);
    // The subnet is valid, so the gateway with its prefix length is too.
    Some(Ipv4Net::new(gateway, subnet.prefix_len()).unwrap_or(subnet))
}

/// The fixed link-local address of every dual-stack gateway link (bridge, or veth driver host end).
pub const GATEWAY_LINK_LOCAL6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// A dual-stack network's gateway addresses, in the order they are added: `fe80::1/64`, then the gateway
/// with its subnet's prefix length. None on an IPv4 network.
pub fn gateway_addresses6(net: &Network) -> Vec<IpNet> {
    let Some(n6) = &net.ipv6 else {
        return Vec::new();
    };
    let gateway = Ipv6Net::new(n6.gateway, n6.subnet.prefix_len()).unwrap_or(n6.subnet);
    vec![link_local6(GATEWAY_LINK_LOCAL6).into(), gateway.into()]
}

/// `addr/64`, a link-local address with its prefix.
fn link_local6(addr: Ipv6Addr) -> Ipv6Net {
    // 64 is a valid IPv6 prefix length.
    Ipv6Net::new(addr, 64).unwrap_or_default()
}

/// The addresses a dual-stack endpoint's sandbox end gets, in order: its link-local address (derived from its
/// MAC; without one the kernel sends no neighbour-unreachability probes), then its global one.
pub fn endpoint_addresses6(ep: &Endpoint) -> Vec<Ipv6Net> {
    ep.ipv6
        .iter()
        .flat_map(|e6| [link_local6(ep.mac.link_local6()), e6.address])
        .collect()
}

/// The firewall rules a network stands for, given the other networks (isolation pairs both ways between this
/// network and each other one, unless both opted out).
fn network_rules(net: &Network, others: &[Network]) -> Vec<Rule> {
    let mut rules = vec![Rule::Interface {
        interface: net.interface.clone(),
        subnet: net.subnet,
        internal: net.internal,
        subnet6: net.ipv6.as_ref().map(|v6| v6.subnet),
    }];
    let nat = net.options.gateway_mode == GatewayMode::Nat;
    if let Some(subnet) = net
        .subnet
        .filter(|_| !net.internal && nat && net.options.masquerade)
    {
        rules.push(Rule::Masquerade {
            subnet: subnet.into(),
            interface: net.interface.clone(),
        });
    }
    // NAT66 for the ULA subnets nsnet picks; a routed (global) subnet opts out with `--ipv6-nat=false`.
    if let Some(v6) = net
        .ipv6
        .as_ref()
        .filter(|v6| !net.internal && nat && v6.nat)
    {
        rules.push(Rule::Masquerade {
            subnet: v6.subnet.into(),
            interface: net.interface.clone(),
        });
    }
    if !net.internal && nat {
        // An overlay's VXLAN device too: a LAN peer that routes a remote block via this host would otherwise
        // have it forward the frames into the tunnel, where they reach the other host's sandboxes from a
        // member, with any cluster source it likes (the other host cannot tell them from our sandboxes'). Only
        // nsnet's own networks (`ifaces`) may send into the tunnel, as into the bridge.
        for interface in interfaces(net) {
            rules.push(Rule::PublishedOnly {
                interface: interface.to_string(),
            });
        }
    }
    // A VXLAN device's traffic is the cluster's: without its accepts, a host chain with policy drop would
    // let replies through (to the bridge, established) but no new connection from another host's sandbox.
    for chain in &net.host_chains {
        for interface in interfaces(net) {
            rules.push(Rule::HostAccept {
                chain: chain.clone(),
                interface: interface.to_string(),
            });
        }
    }
    rules.extend(overlay_rules(net));
    for other in others.iter().filter(|o| o.name != net.name) {
        if net.isolate || other.isolate {
            // A VXLAN device is part of its network: other networks reach neither through it.
            for mine in interfaces(net) {
                for theirs in interfaces(other) {
                    rules.push(Rule::Isolate {
                        from: mine.to_string(),
                        to: theirs.to_string(),
                    });
                    rules.push(Rule::Isolate {
                        from: theirs.to_string(),
                        to: mine.to_string(),
                    });
                }
            }
        }
    }
    rules
}

/// Every firewall rule network `net` stands for beside `others` (what `firewall reload` would add for it).
pub fn network_firewall(net: &Network, others: &[Network]) -> Vec<Rule> {
    network_rules(net, others)
}

/// A network's own host interfaces: its bridge (or veth host end), and its VXLAN device.
fn interfaces(net: &Network) -> impl Iterator<Item = &str> {
    std::iter::once(net.interface.as_str()).chain(net.overlay_device())
}

/// An overlay network's rules on this host: the cluster's traffic in and out of its subnet, and (vxlan) the
/// member hosts that may send VXLAN.
fn overlay_rules(net: &Network) -> Vec<Rule> {
    let (Some(o), Some(subnet)) = (&net.overlay, net.subnet) else {
        return vec![];
    };
    let mut rules = vec![Rule::Overlay {
        device: o.device.clone(),
        cluster: o.cluster,
        subnet,
    }];
    // Dual stack: the same for the cluster's IPv6 prefix and this host's block of it.
    if let (Some(cluster), Some(v6)) = (o.cluster6, net.ipv6) {
        rules.push(Rule::Overlay6 {
            device: o.device.clone(),
            cluster,
            subnet: v6.subnet,
        });
    }
    if o.backend == OverlayBackend::Vxlan {
        rules.push(Rule::VxlanPort { port: o.port });
        rules.extend(o.peers.iter().map(|p| member(o, p)));
    }
    rules
}

fn member(o: &Overlay, p: &Peer) -> Rule {
    Rule::VxlanMember {
        underlay: p.underlay,
        port: o.port,
    }
}

/// Firewall elements two overlay networks can share (a VXLAN port, a member host): a network going must not
/// delete those another one still needs.
fn shared_with(rule: &Rule, net: &Network, others: &[Network]) -> bool {
    matches!(rule, Rule::VxlanPort { .. } | Rule::VxlanMember { .. })
        && others
            .iter()
            .filter(|o| o.name != net.name)
            .any(|o| overlay_rules(o).contains(rule))
}

/// Where an overlay network's peers are programmed.
pub fn peer_link(net: &Network) -> Option<PeerLink> {
    let src = net.gateway?;
    net.overlay.as_ref().map(|o| PeerLink {
        backend: o.backend,
        device: o.device.clone(),
        src,
        src6: net
            .ipv6
            .filter(|_| o.cluster6.is_some())
            .map(|v6| v6.gateway),
    })
}

/// Bring an overlay network's peers from what its record says (`net.overlay.peers`) to `peers`: each new or
/// changed peer programmed (replacing what is there), each gone one removed, and the VXLAN members' firewall
/// elements to match (a member another network still has stays). `others`: the host's other networks.
pub fn peers_change(net: &Network, peers: &[Peer], others: &[Network]) -> Plan {
    let (Some(o), Some(link)) = (&net.overlay, peer_link(net)) else {
        return Plan::default();
    };
    let mut steps = Vec::new();
    let mut fw = Batch::default();
    for old in &o.peers {
        let now = peers.iter().find(|p| p.subnet == old.subnet);
        // Same subnet, same VTEP: replacing in place moves it without a gap. A new VTEP MAC needs the old
        // FDB entry gone first.
        let moved_vtep = now.is_some_and(|p| p.vtep_mac != old.vtep_mac);
        if now.is_none() || (moved_vtep && o.backend == OverlayBackend::Vxlan) {
            steps.push(Step::RemovePeer {
                overlay: link.clone(),
                peer: old.clone(),
            });
        }
        if !peers.iter().any(|p| p.underlay == old.underlay) && o.backend == OverlayBackend::Vxlan {
            let rule = member(o, old);
            if !shared_with(&rule, net, others) {
                fw.delete(rule);
            }
        }
    }
    for new in peers {
        if !o.peers.contains(new) {
            if o.backend == OverlayBackend::Vxlan
                && !o.peers.iter().any(|p| p.underlay == new.underlay)
            {
                fw.add(member(o, new));
            }
            steps.push(Step::SetPeer {
                overlay: link.clone(),
                peer: new.clone(),
            });
        }
    }
    // The fast path last: a new peer's neighbour entry is there before it sends to it (in between, a
    // leaving peer's block goes nowhere on either path).
    if !steps.is_empty() {
        steps.extend(fast_path_tunnel(net, peers));
    }
    // Members first: a new peer's VXLAN is accepted by the time it is routed to.
    let mut plan_steps = Vec::new();
    if !fw.is_empty() {
        plan_steps.push(Step::Firewall {
            backend: net.firewall,
            batch: fw,
        });
    }
    plan_steps.extend(steps);
    Plan {
        steps: plan_steps,
        restore: vec![],
    }
}

/// The steps that program every recorded peer of an overlay network (its device, and its bridge's gateway
/// address, exist).
fn peers_up(net: &Network) -> Vec<Step> {
    let (Some(o), Some(link)) = (&net.overlay, peer_link(net)) else {
        return vec![];
    };
    o.peers
        .iter()
        .map(|p| Step::SetPeer {
            overlay: link.clone(),
            peer: p.clone(),
        })
        .collect()
}

/// The fast path's part in an overlay network with `peers` ([`Step::FastPathTunnel`]): every peer's block
/// by the next hop its route names. `None` without a fast path.
pub fn fast_path_tunnel(net: &Network, peers: &[Peer]) -> Option<Step> {
    let (o, bridge) = (net.overlay.as_ref()?, fast_path_bridge(net)?);
    let decap = o.backend == OverlayBackend::Vxlan;
    let routes = peers
        .iter()
        .filter(|p| !decap || p.vtep_mac.is_some())
        .map(|p| {
            let via = if decap { p.vxlan_gateway() } else { p.underlay };
            (p.subnet, via)
        })
        .collect();
    // A dual-stack overlay's IPv6 blocks, by the next hop their routes name (see `Peer::gateway6`).
    let routes6 = peers
        .iter()
        .filter(|_| net.ipv6.is_some() && o.cluster6.is_some())
        .filter_map(|p| p.gateway6(o.backend))
        .map(|(block, via, _)| (block, via))
        .collect();
    Some(Step::FastPathTunnel {
        bridge,
        device: o.device.clone(),
        decap,
        routes,
        routes6,
    })
}

/// Take host-gw's fast path filter off the underlay ([`Step::RemoveUnderlayFilter`]), whether or not the
/// network has one now (the host's firewall may have changed since it was put there).
pub fn remove_underlay_filter(net: &Network) -> Option<Step> {
    let o = net
        .overlay
        .as_ref()
        .filter(|o| o.backend == OverlayBackend::HostGw)?;
    Some(Step::RemoveUnderlayFilter {
        device: o.device.clone(),
        handle: crate::kernel::fastpath::underlay_filter(&net.interface).1,
        qdisc: o.underlay_qdisc,
    })
}

/// An overlay network's VXLAN device (vxlan backend), then its peers.
pub fn overlay_up(net: &Network, owner: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    if let Some(o) = net
        .overlay
        .as_ref()
        .filter(|o| o.backend == OverlayBackend::Vxlan)
    {
        steps.push(Step::CreateVxlan {
            name: o.device.clone(),
            vni: o.vni,
            port: o.port,
            mtu: net.mtu,
            mac: o.vtep_mac,
            tag: owner.to_string(),
            ipv6: net.ipv6.is_some(),
        });
    }
    steps.extend(peers_up(net));
    // Last: the fast path sends to peers whose routes and neighbours are there.
    if let Some(o) = &net.overlay {
        steps.extend(fast_path_tunnel(net, &o.peers));
    }
    steps.extend(underlay_filter(net));
    steps
}

/// host-gw's receiving side of the fast path ([`Step::UnderlayFilter`]), if the network has one. Not under a
/// host forward chain with policy drop (`host_chains`): nsnet lets its bridge's traffic through such a chain,
/// but nothing in from the underlay, so the slow path drops a remote sandbox's new connections there, and
/// the fast path must not deliver them either.
pub fn underlay_filter(net: &Network) -> Option<Step> {
    let o = net
        .overlay
        .as_ref()
        .filter(|o| o.backend == OverlayBackend::HostGw)?;
    let bridge = fast_path_bridge(net).filter(|_| net.host_chains.is_empty())?;
    Some(Step::UnderlayFilter {
        bridge,
        device: o.device.clone(),
        qdisc: o.underlay_qdisc,
    })
}

/// Bring a network up next to `others`. `tables`: `Some` when nsnet's firewall tables must be created first (no
/// other network exists); it says what undoing that must do with the user chain. `owner` tags the links made
/// ([`crate::store::Store::owner_tag`]).
pub fn network_up(
    net: &Network,
    others: &[Network],
    tables: Option<Tables>,
    owner: &str,
) -> (Vec<Step>, Batch) {
    let mut steps = Vec::new();
    if !net.internal {
        // An IPv6-only network has no use for IPv4 forwarding.
        if !net.ipv6_only() {
            steps.push(Step::forwarding());
        }
        if net.ipv6.is_some() {
            steps.push(Step::forwarding6());
        }
    }
    if net.driver == Driver::Bridge {
        steps.push(Step::CreateBridge {
            name: net.interface.clone(),
            mtu: net.mtu,
            mac: net.gateway_mac(),
            tag: owner.to_string(),
            ipv6: net.ipv6.is_some(),
        });
        if let Some(bridge) = fast_path_bridge(net) {
            steps.push(Step::FastPathInit { bridge });
        }
        if net.options.host_gateway {
            steps.extend(gateway_on(net, &net.interface));
        }
        steps.extend(overlay_up(net, owner));
    }
    let mut fw = Batch::default();
    if let Some(tables) = tables {
        fw.add(Rule::Tables(tables));
    }
    for rule in network_rules(net, others) {
        fw.add(rule);
    }
    (steps, fw)
}

/// Before IPv6 forwarding comes on in `steps`, let each of `uplinks` (links taking router advertisements,
/// [`crate::ops`]' `Host::ra_uplinks`) keep taking them: otherwise the host loses the default route its
/// LAN's router gives it (moby#43466, docker/for-linux#844).
pub fn keep_router_advertisements(steps: &mut Vec<Step>, uplinks: &[String]) {
    if let Some(i) = steps.iter().position(|s| *s == Step::forwarding6()) {
        steps.splice(i..i, uplinks.iter().map(|u| Step::accept_ra_as_router(u)));
    }
}

/// A network's firewall elements, to delete. `tables`: `Some` when it is the last network, so nsnet's tables go
/// too (all but the user chain, if the user has rules there).
pub fn network_down(net: &Network, others: &[Network], tables: Option<Tables>) -> Batch {
    let mut fw = Batch::default();
    for rule in network_rules(net, others) {
        if !shared_with(&rule, net, others) {
            fw.delete(rule);
        }
    }
    if let Some(tables) = tables {
        fw.delete(Rule::Tables(tables));
    }
    fw
}

/// The kernel side of `nsnet network rm`: the veths of `users` on it (with `--force`), then its bridge. Each
/// deletion carries the steps that bring it back, should a later step fail.
pub fn network_teardown(net: &Network, users: &[Sandbox], owner: &str) -> Plan {
    let mut plan = Plan::default();
    for sb in users {
        for ep in sb.endpoints.iter().filter(|e| e.network == net.name) {
            plan = plan.then(endpoint_teardown(
                sb,
                ep,
                Some(net),
                owner,
                EndpointRemoval::Delete,
            ));
        }
    }
    if net.driver == Driver::Bridge {
        // Peers' routes by the underlay interface (host-gw) are not nsnet's links: they go one by one. A VXLAN
        // device takes its entries with it.
        if let (Some(o), Some(link)) = (&net.overlay, peer_link(net)) {
            if o.backend == OverlayBackend::HostGw {
                // The fast path's filter on the underlay first: it is not nsnet's link either, and it would
                // keep the program (and its map of sandboxes) alive after the bridge.
                // Undone last, once the bridge and the peers are back: the tunnel, then the filter.
                let restore: Vec<Step> = fast_path_tunnel(net, &o.peers)
                    .into_iter()
                    .chain(underlay_filter(net))
                    .collect();
                if let Some(remove) = remove_underlay_filter(net) {
                    plan.push_teardown(remove, restore);
                }
                for p in &o.peers {
                    let undo = Step::SetPeer {
                        overlay: link.clone(),
                        peer: p.clone(),
                    };
                    let step = Step::RemovePeer {
                        overlay: link.clone(),
                        peer: p.clone(),
                    };
                    plan.push_teardown(step, vec![undo]);
                }
            }
        }
        let overlay = overlay_up(net, owner);
        let (up, _) = network_up(net, &[], None, owner);
        // Forwarding is never switched off, so it need not come back either; the overlay's part comes back
        // with its own deletion.
        let restore = up
            .into_iter()
            .filter(|s| !s.is_forwarding() && !overlay.contains(s))
            .collect();
        if let Some(o) = net
            .overlay
            .as_ref()
            .filter(|o| o.backend == OverlayBackend::Vxlan)
        {
            plan.push_teardown(delete_host_link(&o.device, owner, o.vtep_mac), overlay);
        }
        let mac = net.gateway_mac();
        plan.push_teardown(delete_host_link(&net.interface, owner, mac), restore);
    }
    plan
}

/// How a sandbox's veths go when it is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VethRemoval {
    /// With its namespace (nsnet made it and no process is in it): one unmount, and the kernel destroys the
    /// namespace with its veth pairs in one batch, in the background.
    WithNamespace,
    /// One by one, each retired ([`EndpointRemoval::Retire`]: out of use at once, deleted later, since a
    /// process keeps the namespace and so the veths alive); then the namespace, if nsnet made it.
    OneByOne,
}

/// The kernel side of `nsnet rm`, each step with the steps that bring it back (`nets` are the sandbox's
/// networks; an endpoint whose network has no record cannot be restored).
pub fn sandbox_teardown(sb: &Sandbox, nets: &[Network], owner: &str, veths: VethRemoval) -> Plan {
    let mut plan = Plan::default();
    let ns = Ns::Path(sb.netns.clone());
    let create = Step::CreateNetns {
        name: sb.name.clone(),
        owner: owner.to_string(),
    };
    if sb.owned && veths == VethRemoval::WithNamespace {
        let mut restore = vec![create];
        for ep in &sb.endpoints {
            let net = nets.iter().find(|n| n.name == ep.network);
            if net.is_some_and(|n| n.driver == Driver::Veth) {
                // A point-to-point host end is named after its network (and holds its gateway): left to the
                // namespace's destruction, it would keep that name for a while after `rm` returns, and the
                // network's next sandbox could not be made. Deleted now, and brought back on its own.
                plan = plan.then(endpoint_teardown(
                    sb,
                    ep,
                    net,
                    owner,
                    EndpointRemoval::Delete,
                ));
                continue;
            }
            leave_fast_path(&mut plan, sb, ep, net);
            if let Some(net) = net {
                restore.extend(endpoint_up(net, ep, &ns, owner).0);
            }
        }
        plan.push_teardown(
            Step::DeleteNetns {
                name: sb.name.clone(),
            },
            restore,
        );
        return plan;
    }
    for ep in &sb.endpoints {
        let net = nets.iter().find(|n| n.name == ep.network);
        plan = plan.then(endpoint_teardown(
            sb,
            ep,
            net,
            owner,
            EndpointRemoval::Retire,
        ));
    }
    if sb.owned {
        plan.push_teardown(
            Step::DeleteNetns {
                name: sb.name.clone(),
            },
            vec![create],
        );
    }
    plan
}

/// How an endpoint's veth goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointRemoval {
    /// Deleted now (the host end takes the peer with it), waiting for an RCU grace period.
    Delete,
    /// Retired now ([`Step::RetireVeth`]) and deleted later with every other retired link, off the command's
    /// path: for a bridge network's endpoint. A point-to-point one is deleted (its host end holds the
    /// gateway address, which its network's next sandbox needs).
    Retire,
}

/// Take one endpoint's veth away, as `how` says, with the steps that bring it back as [`endpoint_up`] made
/// it; without its network's record a deleted one cannot be brought back.
pub fn endpoint_teardown(
    sb: &Sandbox,
    ep: &Endpoint,
    net: Option<&Network>,
    owner: &str,
    how: EndpointRemoval,
) -> Plan {
    let mut plan = Plan::default();
    leave_fast_path(&mut plan, sb, ep, net);
    let master = net
        .filter(|n| n.driver == Driver::Bridge)
        .map(|n| n.interface.clone());
    if let (EndpointRemoval::Retire, Some(master)) = (how, master) {
        let retire = Step::RetireVeth {
            host: ep.host_interface.clone(),
            peer: ep.interface.clone(),
            peer_ns: Ns::Path(sb.netns.clone()),
            retired: retired_name(&ep.host_interface),
            master: Some(master),
            tag: owner.to_string(),
            made_with: Some(ep.mac.host_end()),
        };
        // Back as it was: both ends renamed back and up (the port kept its bridge and its binding); the
        // sandbox's routes through the downed end went, and so did its IPv6 addresses (IPv4 ones stay).
        let ns = Ns::Path(sb.netns.clone());
        let mut restore: Vec<Step> = retire.undo().into_iter().collect();
        for addr in endpoint_addresses6(ep) {
            restore.push(Step::AddAddress {
                ns: ns.clone(),
                dev: ep.interface.clone(),
                addr: addr.into(),
            });
        }
        restore.extend(default_routes(ep, &ns));
        plan.push_teardown(retire, restore);
        return plan;
    }
    let restore = net
        .map(|net| endpoint_up(net, ep, &Ns::Path(sb.netns.clone()), owner).0)
        .unwrap_or_default();
    plan.push_teardown(
        delete_host_link(&ep.host_interface, owner, ep.mac.host_end()),
        restore,
    );
    plan
}

/// The name the sandbox's end of a retired veth takes ([`Step::RetireVeth`]): `nsrt` and the host end's hash.
pub fn retired_name(host_interface: &str) -> String {
    format!(
        "nsrt{:08x}",
        crate::names::short_hash(&["retired", host_interface])
    )
}

/// The holder of a retired veth's address in its network's allocations: `~` and its host end's name.
pub fn retired_holder_of(host_interface: &str) -> String {
    format!("~{host_interface}")
}

/// Whether `holder`, an owner in a network's allocations, is a retired veth (the address waits there until
/// the link is gone), and which host link.
pub fn retired_holder(holder: &str) -> Option<&str> {
    holder.strip_prefix('~')
}

/// Delete a host link nsnet made: only while it carries `owner`'s tag, or (made before links were tagged)
/// carries no tag and the MAC nsnet gave it.
fn delete_host_link(name: &str, owner: &str, mac: Mac) -> Step {
    Step::DeleteLink {
        ns: Ns::Host,
        name: name.to_string(),
        tag: owner.to_string(),
        made_with: Some(mac),
    }
}

/// Everything nsnet keeps in the firewall for these records, from scratch: the reset tables, then every
/// network's and endpoint's elements (each isolation pair once). Applied as one transaction, this repairs a
/// flushed or damaged ruleset and changes nothing on an intact one.
pub fn firewall_reload(nets: &[Network], sandboxes: &[Sandbox], owner: &str) -> Plan {
    if nets.is_empty() {
        return Plan::default();
    }
    let mut fw = Batch::default();
    fw.add(Rule::Tables(Tables {
        keep_user_chain: true,
        owner: owner.to_string(),
    }));
    for (i, net) in nets.iter().enumerate() {
        for rule in network_rules(net, &nets[i + 1..]) {
            fw.add(rule);
        }
    }
    // Endpoints being removed are left out: their command deletes their elements without the lock, and a
    // reload in between must not bring them back.
    let live = sandboxes
        .iter()
        .filter(|sb| !sb.removing)
        .flat_map(|sb| sb.endpoints.iter())
        .filter(|ep| !ep.removing);
    for ep in live {
        for rule in endpoint_rules(ep) {
            fw.add(rule);
        }
    }
    let mut steps = Vec::new();
    if nets.iter().any(|n| !n.internal && !n.ipv6_only()) {
        steps.push(Step::forwarding());
    }
    if nets.iter().any(|n| !n.internal && n.ipv6.is_some()) {
        steps.push(Step::forwarding6());
    }
    // The [::1] translation too: a lost program comes back, every port's entry is written again, and
    // entries no record holds go (with the programs, when no port is left).
    let loopback: Vec<Loopback> = sandboxes
        .iter()
        .filter(|sb| !sb.removing)
        .flat_map(|sb| sb.endpoints.iter())
        .filter(|ep| !ep.removing)
        .filter_map(|ep| Some((nets.iter().find(|n| n.name == ep.network)?, ep)))
        .flat_map(|(net, ep)| loopback_ports(net, ep))
        .collect();
    if nets.iter().any(|n| n.ipv6.is_some()) {
        steps.push(Step::LoopbackSync(loopback));
    }
    Plan::setup(steps, fw, nets[0].firewall)
}

/// The sandbox's default routes through `ep`, if it carries them: IPv4's, then IPv6's (which needs the link
/// up, not its carrier).
fn default_routes(ep: &Endpoint, ns: &Ns) -> Vec<Step> {
    if !ep.default_route {
        return Vec::new();
    }
    let route = |via: std::net::IpAddr| Step::AddDefaultRoute {
        ns: ns.clone(),
        dev: ep.interface.clone(),
        via,
    };
    ep.gateway
        .map(|g| route(g.into()))
        .into_iter()
        .chain(ep.ipv6.map(|e6| route(e6.gateway.into())))
        .collect()
}

/// The firewall elements of one endpoint: its anti-spoofing pair and its published ports.
pub fn endpoint_rules(ep: &Endpoint) -> Vec<Rule> {
    let mut rules = vec![Rule::Endpoint {
        host_interface: ep.host_interface.clone(),
        address: ep.address.map(|a| a.addr()),
        ipv6: endpoint_addresses6(ep).iter().map(|a| a.addr()).collect(),
    }];
    // A port on every address goes to both families of a dual-stack sandbox; one on a host address, or on
    // `[::]`, to its own family only.
    for mapping in &ep.ports {
        if let Some(a) = ep
            .address
            .filter(|_| !matches!(mapping.host_ip, Some(std::net::IpAddr::V6(_))))
        {
            rules.push(Rule::Port {
                mapping: *mapping,
                target: a.addr().into(),
            });
        }
        // `[::1]` is never DNATed (it never completes): the socket translation serves it (loopback_ports).
        let loopback = mapping
            .host_ip
            .is_some_and(|ip| ip.is_ipv6() && ip.is_loopback());
        if let (None | Some(std::net::IpAddr::V6(_)), Some(e6), false) =
            (mapping.host_ip, &ep.ipv6, loopback)
        {
            rules.push(Rule::Port {
                mapping: *mapping,
                target: e6.address.addr().into(),
            });
        }
    }
    rules
}

/// Join a sandbox (namespace `ns`) to a network through `ep`; `owner` tags the host end.
pub fn endpoint_up(net: &Network, ep: &Endpoint, ns: &Ns, owner: &str) -> (Vec<Step>, Batch) {
    let mut steps = vec![Step::CreateVeth {
        host: ep.host_interface.clone(),
        peer: ep.interface.clone(),
        peer_ns: ns.clone(),
        master: (net.driver == Driver::Bridge).then(|| net.interface.clone()),
        mtu: ep.mtu,
        peer_mac: ep.mac,
        host_mac: ep.mac.host_end(),
        tag: owner.to_string(),
        host_ipv6: net.driver == Driver::Veth && net.ipv6.is_some(),
    }];
    match net.driver {
        Driver::Bridge => steps.push(Step::BindPort {
            name: ep.host_interface.clone(),
            mac: ep.mac,
            hairpin: net.options.hairpin,
        }),
        // Point to point: the host end itself holds the gateway addresses.
        Driver::Veth => steps.extend(gateway_on(net, &ep.host_interface)),
    }
    if let Some(address) = ep.address {
        steps.push(Step::AddAddress {
            ns: ns.clone(),
            dev: ep.interface.clone(),
            addr: address.into(),
        });
    }
    // Without DAD (see Step::AddAddress): usable as soon as the carrier comes, no `tentative` wait.
    for addr in endpoint_addresses6(ep) {
        steps.push(Step::AddAddress {
            ns: ns.clone(),
            dev: ep.interface.clone(),
            addr: addr.into(),
        });
    }
    steps.push(Step::LinkUp {
        ns: ns.clone(),
        name: ep.interface.clone(),
    });
    // Accepted while the host end is down (the route is marked linkdown until the carrier comes); the IPv6
    // one needs the sandbox end up, which it now is.
    steps.extend(default_routes(ep, ns));
    if ep.ipv6.is_some() && net.firewall == crate::firewall::Backend::None {
        // No bridge rules drop a neighbour's router advertisements: the sandbox itself ignores them.
        steps.push(Step::Sysctl {
            ns: ns.clone(),
            key: format!("net/ipv6/conf/{}/accept_ra", ep.interface),
            value: "0".into(),
        });
    }
    // Before the host end comes up: bringing it up sets off the bridge's walk over every port under RTNL,
    // and the fast path's netlink requests would queue behind it.
    if let Some(bridge) = fast_path_bridge(net) {
        for ip in fast_path_addresses(ep) {
            steps.push(Step::FastPathAdd {
                bridge: bridge.clone(),
                port: ep.host_interface.clone(),
                peer_ns: ns.clone(),
                ip,
                mac: ep.mac,
            });
        }
    }
    steps.push(Step::LinkUp {
        ns: Ns::Host,
        name: ep.host_interface.clone(),
    });
    let loopback = loopback_ports(net, ep);
    if !loopback.is_empty() {
        steps.push(Step::LoopbackInit);
        steps.extend(loopback.into_iter().map(Step::LoopbackPortAdd));
    }
    let mut fw = Batch::default();
    for rule in endpoint_rules(ep) {
        fw.add(rule);
    }
    (steps, fw)
}

/// The network's gateway side on host device `dev` (its bridge, or a point-to-point host end): the IPv4
/// gateway with `route_localnet` (so 127.0.0.1 can reach published ports), then the IPv6 gateway addresses
/// (IPv6 has no `route_localnet`: `[::1]` goes through `kernel::loopback6`).
fn gateway_on(net: &Network, dev: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    if let Some(gateway) = gateway_cidr(net) {
        steps.push(Step::AddAddress {
            ns: Ns::Host,
            dev: dev.to_string(),
            addr: gateway.into(),
        });
        steps.push(Step::route_localnet(dev));
    }
    for addr in gateway_addresses6(net) {
        steps.push(Step::AddAddress {
            ns: Ns::Host,
            dev: dev.to_string(),
            addr,
        });
    }
    steps
}

/// The bridge whose fast path the network's sandboxes join, if it has one.
fn fast_path_bridge(net: &Network) -> Option<String> {
    (net.driver == Driver::Bridge && net.fast_path).then(|| net.interface.clone())
}

/// The addresses an endpoint has on its network's fast path: its IPv4 address and its global IPv6 one. Its
/// link-local address is not there: what is sent to it takes the bridge.
fn fast_path_addresses(ep: &Endpoint) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = ep.address.iter().map(|a| IpAddr::V4(a.addr())).collect();
    out.extend(ep.ipv6.map(|e6| IpAddr::V6(e6.address.addr())));
    out
}

/// The published ports of `ep` the host reaches at `[::1]` through the socket translation
/// ([`crate::kernel::loopback6`]): on a dual-stack network, those on every address (`-p P:…`, `-p [::]:P:…`,
/// which also cover the host's own IPv6 addresses) and those on `[::1]` alone. IPv4 has `route_localnet`
/// and DNAT instead; a port on one host IPv6 address is the firewall's (DNAT works there).
pub fn loopback_ports(net: &Network, ep: &Endpoint) -> Vec<Loopback> {
    let (Some(_), Some(e6)) = (net.ipv6, ep.ipv6) else {
        return Vec::new();
    };
    ep.ports
        .iter()
        .filter_map(|m| {
            let every = match m.host_ip {
                None => true,
                Some(IpAddr::V6(ip)) if ip.is_unspecified() => true,
                Some(IpAddr::V6(ip)) if ip.is_loopback() => false,
                _ => return None,
            };
            Some(Loopback {
                proto: m.protocol,
                host_port: m.host_port,
                count: m.count,
                target: e6.address.addr(),
                container_port: m.container_port,
                every,
            })
        })
        .collect()
}

/// Take the endpoint's ports out of the `[::1]` translation, first thing in its teardown (undone by putting
/// them back).
fn leave_loopback(plan: &mut Plan, ep: &Endpoint, net: Option<&Network>) {
    for l in net.map(|net| loopback_ports(net, ep)).unwrap_or_default() {
        plan.push_teardown(
            Step::LoopbackPortRemove(l.clone()),
            vec![Step::LoopbackPortAdd(l)],
        );
    }
}

/// Take the endpoint of sandbox `sb` off its network's fast path and out of the `[::1]` translation, first
/// thing in its teardown (undone by putting it back).
fn leave_fast_path(plan: &mut Plan, sb: &Sandbox, ep: &Endpoint, net: Option<&Network>) {
    leave_loopback(plan, ep, net);
    if let Some(bridge) = net.and_then(fast_path_bridge) {
        for ip in fast_path_addresses(ep) {
            plan.push_teardown(
                Step::FastPathRemove {
                    bridge: bridge.clone(),
                    port: ep.host_interface.clone(),
                    peer_ns: Ns::Path(sb.netns.clone()),
                    ip,
                    mac: ep.mac,
                },
                vec![],
            );
        }
    }
}

/// What is left to take down of a sandbox whose namespace vanished (its veths went with it): its entries on
/// its networks' fast paths. Its host links, if any are left, and its firewall elements go with `gc`'s sweeps.
pub fn sandbox_gone(sb: &Sandbox, nets: &[Network]) -> Plan {
    let mut plan = Plan::default();
    for ep in &sb.endpoints {
        let net = nets.iter().find(|n| n.name == ep.network);
        leave_fast_path(&mut plan, sb, ep, net);
    }
    plan
}

/// The firewall elements [`endpoint_up`] added, to delete.
pub fn endpoint_down(ep: &Endpoint) -> Batch {
    let mut fw = Batch::default();
    for rule in endpoint_rules(ep) {
        fw.delete(rule);
    }
    fw
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: &str = "nsnet:/s";
    use crate::firewall::Change;
    use crate::portmap::PortMapping;
    use std::net::Ipv4Addr;
    use std::path::PathBuf;

    fn net(driver: Driver, internal: bool) -> Network {
        Network {
            driver,
            internal,
            ..Network::bridge(
                "n1",
                "172.16.0.0/24".parse().unwrap(),
                Ipv4Addr::new(172, 16, 0, 100),
                "br0",
            )
        }
    }

    fn ep(ports: Vec<PortMapping>) -> Endpoint {
        let ip = Ipv4Addr::new(172, 16, 0, 102);
        Endpoint {
            network: "n1".into(),
            interface: "eth0".into(),
            host_interface: "veth12345678".into(),
            mac: Mac::for_ipv4(ip),
            address: Some(Ipv4Net::new(ip, 24).unwrap()),
            gateway: Some(Ipv4Addr::new(172, 16, 0, 100)),
            default_route: true,
            mtu: 1500,
            ports,
            removing: false,
            aliases: vec![],
            ipv6: None,
        }
    }

    fn port() -> PortMapping {
        let spec: crate::portmap::PortSpec = "8088:80".parse().unwrap();
        spec.with_host_port(8088)
    }

    fn ns() -> Ns {
        Ns::Path(PathBuf::from("/run/netns/netns2"))
    }

    #[test]
    fn bridge_network_is_the_articles_br0() {
        let tables = Tables {
            keep_user_chain: false,
            owner: OWNER.into(),
        };
        let (steps, fw) = network_up(&net(Driver::Bridge, false), &[], Some(tables), OWNER);
        let text = Plan::setup(steps, fw, Default::default()).render();
        assert!(text.starts_with(
            "sysctl -w net.ipv4.ip_forward=1\n\
             ip link add br0 address 02:6e:ac:10:00:64 mtu 1500 type bridge\n\
             ip link set br0 alias nsnet:/s up\n\
             tc qdisc add dev br0 ingress_block 2611281037 ingress\n\
             # fast path: bpf program nsnet_fastpath (with an empty map of sandboxes) as filter pref 1 \
             handle 1 bpf direct-action on block 2611281037\n\
             ip addr add 172.16.0.100/24 dev br0\n\
             sysctl -w net.ipv4.conf.br0.route_localnet=1\n\
             nft -f - <<'EOF'\ntable inet nsnet { comment \"nsnet:/s: managed by nsnet"
        ), "{text}");
        assert!(text.contains("add element inet nsnet masq_nets { 172.16.0.0/24 }\n"));
        assert!(
            text.contains("add element inet nsnet same_net { 172.16.0.0/24 . 172.16.0.0/24 }\n")
        );
    }

    #[test]
    fn internal_network_has_no_masquerade_or_forwarding() {
        let (steps, fw) = network_up(&net(Driver::Bridge, true), &[], None, OWNER);
        assert!(!steps.contains(&Step::forwarding()));
        assert!(!fw
            .0
            .iter()
            .any(|c| matches!(c, Change::Add(Rule::Masquerade { .. }))));
        assert!(fw.0.contains(&Change::Add(Rule::Interface {
            interface: "br0".into(),
            subnet: Some("172.16.0.0/24".parse().unwrap()),
            internal: true,
            subnet6: None,
        })));
    }

    #[test]
    fn gateway_modes() {
        let has = |net: &Network, want: fn(&Rule) -> bool| {
            let (_, fw) = network_up(net, &[], None, OWNER);
            fw.0.iter().any(|c| matches!(c, Change::Add(r) if want(r)))
        };
        let masq = |r: &Rule| matches!(r, Rule::Masquerade { .. });
        let guarded = |r: &Rule| matches!(r, Rule::PublishedOnly { .. });
        let nat = net(Driver::Bridge, false);
        assert!(has(&nat, masq) && has(&nat, guarded));
        let mut routed = nat.clone();
        routed.options.gateway_mode = GatewayMode::Routed;
        assert!(!has(&routed, masq) && !has(&routed, guarded));
        // Internal: nothing leaves and nothing enters; its own drops cover it.
        let internal = net(Driver::Bridge, true);
        assert!(!has(&internal, masq) && !has(&internal, guarded));
    }

    #[test]
    fn endpoint_on_bridge() {
        let (steps, fw) = endpoint_up(&net(Driver::Bridge, false), &ep(vec![port()]), &ns(), OWNER);
        let text = Plan::setup(steps, fw, Default::default()).render();
        assert!(text.starts_with(
            "ip link add veth12345678 address 02:6f:ac:10:00:66 mtu 1500 master br0 type veth peer name eth0 address 02:6e:ac:10:00:66 netns netns2\n\
             ip link set veth12345678 alias nsnet:/s\n\
             sysctl -w net.ipv6.conf.veth12345678.disable_ipv6=1\n\
             ip -n netns2 link set eth0 addrgenmode none\n\
             ip link set veth12345678 type bridge_slave learning off locked on hairpin on\n\
             bridge fdb add 02:6e:ac:10:00:66 dev veth12345678 master static\n\
             ip -n netns2 addr add 172.16.0.102/24 dev eth0\n\
             ip -n netns2 link set eth0 up\n\
             ip -n netns2 route add default via 172.16.0.100 dev eth0\n\
             tc qdisc add dev veth12345678 ingress_block 2611281037 ingress\n\
             # fast path: 172.16.0.102 -> veth12345678 02:6e:ac:10:00:66 in the map of bpf program \
             nsnet_fastpath of br0\n\
             nft -f - <<'EOF'\n"
        ), "{text}");
        // The sandbox's guard is in before its veth gets a carrier: the host end comes up last.
        assert!(
            text.ends_with("EOF\nip link set veth12345678 up\n"),
            "{text}"
        );
        assert!(text.contains("add element inet nsnet ports { tcp . 8088 : 172.16.0.102 . 80 }\n"));
        assert!(text
            .contains("add element bridge nsnet endpoints { \"veth12345678\" . 172.16.0.102 }\n"));
    }

    fn net6(driver: Driver) -> Network {
        let mut n = net(driver, false);
        n.ipv6 = Some(crate::model::Net6 {
            subnet: "fd89:1:2:3::/64".parse().unwrap(),
            gateway: "fd89:1:2:3::1".parse().unwrap(),
            nat: true,
        });
        n
    }

    #[test]
    fn dual_stack_rules_cover_both_families() {
        // A port on every address goes to both families; on `[::]` or a host IPv6 address to IPv6 only; on a
        // host IPv4 address to IPv4 only.
        let spec = |s: &str| {
            let spec: crate::portmap::PortSpec = s.parse().unwrap();
            spec.with_host_port(8088)
        };
        let targets = |m: PortMapping| -> Vec<std::net::IpAddr> {
            endpoint_rules(&Endpoint {
                ports: vec![m],
                ..ep6()
            })
            .into_iter()
            .filter_map(|r| match r {
                Rule::Port { target, .. } => Some(target),
                _ => None,
            })
            .collect()
        };
        let (v4, v6): (std::net::IpAddr, std::net::IpAddr) = (
            "172.16.0.102".parse().unwrap(),
            "fd89:1:2:3::2".parse().unwrap(),
        );
        assert_eq!(targets(spec("8088:80")), [v4, v6]);
        assert_eq!(targets(spec("[::]:8088:80")), [v6]);
        assert_eq!(targets(spec("[2001:db8::5]:8088:80")), [v6]);
        assert_eq!(targets(spec("10.0.1.48:8088:80")), [v4]);
        let v4_only = endpoint_rules(&ep(vec![port()]));
        assert_eq!(
            v4_only
                .iter()
                .filter(|r| matches!(r, Rule::Port { .. }))
                .count(),
            1,
            "an IPv4 network's sandbox"
        );
        // NAT66 by default, none with --ipv6-nat=false; the hairpin set knows the IPv6 subnet either way.
        let masq6 = |n: &Network| {
            network_rules(n, &[]).into_iter().any(
                |r| matches!(r, Rule::Masquerade { subnet: ipnet::IpNet::V6(s), .. } if s.to_string() == "fd89:1:2:3::/64"),
            )
        };
        let mut routed = net6(Driver::Bridge);
        assert!(masq6(&routed));
        routed.ipv6 = routed
            .ipv6
            .map(|v6| crate::model::Net6 { nat: false, ..v6 });
        assert!(!masq6(&routed));
        assert!(network_rules(&routed, &[]).iter().any(|r| matches!(
            r,
            Rule::Interface { subnet6: Some(s), .. } if s.to_string() == "fd89:1:2:3::/64"
        )));
    }

    fn ep6() -> Endpoint {
        Endpoint {
            ipv6: Some(crate::model::Ep6 {
                address: "fd89:1:2:3::2/64".parse().unwrap(),
                gateway: "fd89:1:2:3::1".parse().unwrap(),
            }),
            ..ep(vec![])
        }
    }

    /// An IPv6-only network and endpoint (`--ipv4=false`): `net6` and `ep6` without their IPv4 parts.
    fn only6() -> (Network, Endpoint) {
        let mut n = net6(Driver::Bridge);
        (n.subnet, n.gateway) = (None, None);
        let mut e = ep6();
        (e.address, e.gateway) = (None, None);
        e.mac = Mac::derived(None, e.ipv6.as_ref());
        (n, e)
    }

    #[test]
    fn an_ipv6_only_network_has_no_ipv4_anywhere() {
        let (n, e) = only6();
        // The bridge's MAC comes from its IPv6 gateway (02:6c: and FNV-1a); IPv6 forwarding, not IPv4's.
        assert_eq!(n.gateway_mac().0[..2], [0x02, 0x6c]);
        assert_eq!(e.mac.0[..2], [0x02, 0x6c]);
        assert_eq!(e.mac.host_end().0[..2], [0x02, 0x6d]);
        assert_ne!(n.gateway_mac(), e.mac);
        let (steps, fw) = network_up(&n, &[], None, OWNER);
        assert!(!steps.contains(&Step::forwarding()), "{steps:?}");
        assert!(steps.contains(&Step::forwarding6()), "{steps:?}");
        let text = Plan::setup(steps, fw, Default::default()).render();
        assert!(
            text.contains(&format!(
                "ip link add br0 address {} mtu 1500 type bridge",
                n.gateway_mac()
            )),
            "{text}"
        );
        assert!(
            !text.contains("route_localnet") && !text.contains("172.16."),
            "{text}"
        );
        assert!(
            !text.contains("same_net {") && !text.contains("masq_nets {"),
            "{text}"
        );
        assert!(
            text.contains("ip addr add fd89:1:2:3::1/64 dev br0 nodad"),
            "{text}"
        );
        assert!(text.contains("masq_nets6 { fd89:1:2:3::/64 }"), "{text}");
        // The sandbox gets its IPv6 addresses and route only; its port is in no IPv4 set, so its IPv4 and
        // ARP are dropped; a port on every address is DNATed to its IPv6 address alone.
        let e = Endpoint {
            ports: vec![port()],
            ..e
        };
        let (steps, fw) = endpoint_up(&n, &e, &ns(), OWNER);
        let text = Plan::setup(steps, fw, Default::default()).render();
        assert!(
            text.contains(
                "ip -n netns2 addr add fd89:1:2:3::2/64 dev eth0 nodad\n\
                 ip -n netns2 link set eth0 up\n\
                 ip -n netns2 -6 route add default via fd89:1:2:3::1 dev eth0\n"
            ),
            "{text}"
        );
        assert!(
            !text.contains("172.16.") && !text.contains("endpoints {"),
            "{text}"
        );
        assert!(text.contains("endpoint_ifs { \"veth12345678\" }"), "{text}");
        let targets: Vec<std::net::IpAddr> = endpoint_rules(&e)
            .into_iter()
            .filter_map(|r| match r {
                Rule::Port { target, .. } => Some(target),
                _ => None,
            })
            .collect();
        assert_eq!(
            targets,
            ["fd89:1:2:3::2".parse::<std::net::IpAddr>().unwrap()]
        );
        // Its records leave the IPv4 fields out; an IPv4 one keeps them where they were.
        let text = serde_json::to_string(&n).unwrap();
        assert!(
            !text.contains("\"subnet\":\"1") && !text.contains("\"gateway\":\"1"),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Network>(&text).unwrap(), n);
        let text = serde_json::to_string(&e).unwrap();
        assert!(!text.contains("\"address\":\"1"), "{text}");
        assert_eq!(serde_json::from_str::<Endpoint>(&text).unwrap(), e);
    }

    #[test]
    fn a_dual_stack_bridge_takes_no_router_advertisements_and_holds_both_gateways() {
        let (steps, _) = network_up(&net6(Driver::Bridge), &[], None, OWNER);
        let text = Plan::setup(steps, Batch::default(), Default::default()).render();
        assert!(
            text.contains(
                "ip link add br0 address 02:6e:ac:10:00:64 mtu 1500 type bridge\n\
                 ip link set br0 alias nsnet:/s up\n\
                 ip link set br0 addrgenmode none\n\
                 sysctl -w net.ipv6.conf.br0.accept_ra=0\n\
                 sysctl -w net.ipv6.conf.br0.disable_ipv6=0\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "ip addr add 172.16.0.100/24 dev br0\n\
                 sysctl -w net.ipv4.conf.br0.route_localnet=1\n\
                 ip addr add fe80::1/64 dev br0 nodad\n\
                 ip addr add fd89:1:2:3::1/64 dev br0 nodad\n"
            ),
            "{text}"
        );
        // An IPv4 network's bridge is as it was: nothing IPv6 in its plan.
        let (steps, _) = network_up(&net(Driver::Bridge, false), &[], None, OWNER);
        let text = Plan::setup(steps, Batch::default(), Default::default()).render();
        assert!(!text.contains("ipv6") && !text.contains("fe80"), "{text}");
    }

    #[test]
    fn a_dual_stack_endpoint_gets_both_addresses_without_dad_before_its_routes() {
        let (steps, fw) = endpoint_up(&net6(Driver::Bridge), &ep6(), &ns(), OWNER);
        let text = Plan::setup(steps, fw, Default::default()).render();
        assert!(
            text.contains(
                "sysctl -w net.ipv6.conf.veth12345678.disable_ipv6=1\n\
                 ip -n netns2 link set eth0 addrgenmode none\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "ip -n netns2 addr add 172.16.0.102/24 dev eth0\n\
                 ip -n netns2 addr add fe80::6e:acff:fe10:66/64 dev eth0 nodad\n\
                 ip -n netns2 addr add fd89:1:2:3::2/64 dev eth0 nodad\n\
                 ip -n netns2 link set eth0 up\n\
                 ip -n netns2 route add default via 172.16.0.100 dev eth0\n\
                 ip -n netns2 -6 route add default via fd89:1:2:3::1 dev eth0\n"
            ),
            "{text}"
        );
        // Its port lets IPv6 through the bridge (bar router advertisements and the like).
        assert!(text.contains("add element bridge nsnet endpoint_ifs6 { \"veth12345678\" }\n"));
        assert!(!text.contains("accept_ra"), "{text}");
        // Without nsnet's firewall nothing drops a neighbour's router advertisements: the sandbox ignores them.
        let mut n = net6(Driver::Bridge);
        n.firewall = crate::firewall::Backend::None;
        let (steps, _) = endpoint_up(&n, &ep6(), &ns(), OWNER);
        assert!(
            steps
                .iter()
                .any(|s| s.render()
                    == "ip netns exec netns2 sysctl -w net.ipv6.conf.eth0.accept_ra=0")
        );
        // An IPv4 endpoint's port does not.
        let (_, fw) = endpoint_up(&net(Driver::Bridge, false), &ep(vec![]), &ns(), OWNER);
        let text = Plan::setup(vec![], fw, Default::default()).render();
        assert!(!text.contains("endpoint_ifs6"), "{text}");
    }

    #[test]
    fn a_dual_stack_endpoint_joins_the_fast_path_with_both_addresses_and_leaves_with_both() {
        let n = net6(Driver::Bridge);
        let (steps, fw) = endpoint_up(&n, &ep6(), &ns(), OWNER);
        let adds: Vec<&Step> = steps
            .iter()
            .filter(|s| matches!(s, Step::FastPathAdd { .. }))
            .collect();
        let ips: Vec<String> = adds
            .iter()
            .filter_map(|s| match s {
                Step::FastPathAdd { ip, .. } => Some(ip.to_string()),
                _ => None,
            })
            .collect();
        // The global address only: what is sent to the link-local one takes the bridge.
        assert_eq!(ips, ["172.16.0.102", "fd89:1:2:3::2"]);
        let text = Plan::setup(steps.clone(), fw, Default::default()).render();
        assert!(
            text.contains(
                "# fast path: 172.16.0.102 -> veth12345678 02:6e:ac:10:00:66 in the map of bpf program \
                 nsnet_fastpath of br0\n\
                 # fast path: fd89:1:2:3::2 -> veth12345678 02:6e:ac:10:00:66 in the map of bpf program \
                 nsnet_fastpath of br0\n"
            ),
            "{text}"
        );
        // Both before the host end comes up.
        let up = steps
            .iter()
            .position(|s| matches!(s, Step::LinkUp { ns: Ns::Host, .. }))
            .expect("host end up");
        assert!(steps[up - 1] == *adds[1] && steps[up - 2] == *adds[0]);

        // The teardown takes both off first, and each comes back as it was.
        let sb = Sandbox {
            name: "netns2".into(),
            netns: "/run/netns/netns2".into(),
            owned: true,
            netns_id: None,
            cni: false,
            endpoints: vec![ep6()],
            removing: false,
            dns_servers: vec![],
        };
        for removal in [VethRemoval::WithNamespace, VethRemoval::OneByOne] {
            let plan = sandbox_teardown(&sb, std::slice::from_ref(&n), OWNER, removal);
            for (i, add) in adds.iter().enumerate() {
                assert_eq!(plan.steps[i], add.undo().expect("undo"), "{removal:?}");
                assert_eq!(plan.undo_of(i), vec![(*add).clone()]);
            }
        }
        // A sandbox whose namespace vanished: both entries go.
        let gone = sandbox_gone(&sb, std::slice::from_ref(&n));
        assert_eq!(gone.steps.len(), 2);
        assert_eq!(
            gone.steps[1].render(),
            "# fast path: fd89:1:2:3::2 off the map of bpf program nsnet_fastpath of br0"
        );
        // Without the fast path, neither.
        let slow = Network {
            fast_path: false,
            ..n
        };
        let (steps, _) = endpoint_up(&slow, &ep6(), &ns(), OWNER);
        assert!(!steps.iter().any(|s| matches!(s, Step::FastPathAdd { .. })));
    }

    #[test]
    fn a_dual_stack_point_to_point_host_end_is_the_ipv6_gateway() {
        let mut e = ep6();
        e.host_interface = "vh1".into();
        let (steps, _) = endpoint_up(&net6(Driver::Veth), &e, &ns(), OWNER);
        let text = steps
            .iter()
            .map(Step::render)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            text.contains(
                "ip link set vh1 alias nsnet:/s\n\
                 ip link set vh1 addrgenmode none\n\
                 sysctl -w net.ipv6.conf.vh1.accept_ra=0\n\
                 sysctl -w net.ipv6.conf.vh1.disable_ipv6=0\n\
                 ip -n netns2 link set eth0 addrgenmode none\n\
                 ip addr add 172.16.0.100/24 dev vh1\n\
                 sysctl -w net.ipv4.conf.vh1.route_localnet=1\n\
                 ip addr add fe80::1/64 dev vh1 nodad\n\
                 ip addr add fd89:1:2:3::1/64 dev vh1 nodad\n"
            ),
            "{text}"
        );
    }

    fn mapping(spec: &str) -> PortMapping {
        let spec: crate::portmap::PortSpec = spec.parse().unwrap();
        spec.with_host_port(spec.host_port.unwrap_or(9000))
    }

    #[test]
    fn loopback6_covers_every_address_ports_and_loopback_ones_of_dual_stack_endpoints_only() {
        let ports = [
            "8080:80",
            "[::]:8081:81",
            "[::1]:8082:82/udp",
            "127.0.0.1:8083:83",
            "[2001:db8::5]:8084:84",
        ];
        let e = Endpoint {
            ports: ports.iter().map(|p| mapping(p)).collect(),
            ..ep6()
        };
        let got: Vec<(u16, u16, bool)> = loopback_ports(&net6(Driver::Bridge), &e)
            .iter()
            .map(|l| (l.host_port, l.container_port, l.every))
            .collect();
        assert_eq!(got, [(8080, 80, true), (8081, 81, true), (8082, 82, false)]);
        let all = loopback_ports(&net6(Driver::Bridge), &e);
        assert!(all
            .iter()
            .all(|l| l.target == "fd89:1:2:3::2".parse::<Ipv6Addr>().unwrap()));
        assert_eq!(all[2].proto, crate::portmap::Proto::Udp);
        // An IPv4 network (or endpoint) has route_localnet and DNAT instead.
        assert!(loopback_ports(&net(Driver::Bridge, false), &e).is_empty());
        assert!(loopback_ports(&net6(Driver::Bridge), &ep(vec![mapping("8080:80")])).is_empty());
    }

    #[test]
    fn loopback6_ports_come_with_the_endpoint_go_first_in_its_teardown_and_come_back_with_reload() {
        let n = net6(Driver::Bridge);
        let e = Endpoint {
            ports: vec![mapping("[::1]:8080:80")],
            ..ep6()
        };
        let (up, _) = endpoint_up(&n, &e, &ns(), OWNER);
        let init = up
            .iter()
            .position(|s| *s == Step::LoopbackInit)
            .expect("LoopbackInit");
        let Some(Step::LoopbackPortAdd(l)) = up.get(init + 1) else {
            panic!("no LoopbackPortAdd after LoopbackInit: {up:?}");
        };
        assert_eq!((l.host_port, l.container_port, l.every), (8080, 80, false));
        // Never DNATed: the firewall has no element for it.
        assert!(!endpoint_rules(&e)
            .iter()
            .any(|r| matches!(r, Rule::Port { .. })));
        assert_eq!(Step::LoopbackInit.undo(), Some(Step::LoopbackRelease));
        let remove = Step::LoopbackPortAdd(l.clone()).undo().expect("undo");
        assert_eq!(remove, Step::LoopbackPortRemove(l.clone()));
        assert_eq!(remove.undo(), Some(Step::LoopbackPortAdd(l.clone())));
        let text = Step::LoopbackPortAdd(l.clone()).render();
        assert_eq!(
            text,
            "bpftool map update name nsnet_loopback6 key tcp [::1]:8080 value [fd89:1:2:3::2]:80"
        );

        let sb = Sandbox {
            name: "netns2".into(),
            netns: "/run/netns/netns2".into(),
            owned: true,
            netns_id: None,
            cni: false,
            endpoints: vec![e.clone()],
            removing: false,
            dns_servers: vec![],
        };
        for veths in [VethRemoval::WithNamespace, VethRemoval::OneByOne] {
            let plan = sandbox_teardown(&sb, std::slice::from_ref(&n), OWNER, veths);
            assert_eq!(
                plan.steps[0],
                Step::LoopbackPortRemove(l.clone()),
                "{veths:?}"
            );
            assert_eq!(plan.undo_of(0), [Step::LoopbackPortAdd(l.clone())]);
        }
        assert_eq!(
            sandbox_gone(&sb, std::slice::from_ref(&n)).steps[0],
            Step::LoopbackPortRemove(l.clone())
        );
        let reload = firewall_reload(std::slice::from_ref(&n), std::slice::from_ref(&sb), OWNER);
        assert!(
            reload.steps.contains(&Step::LoopbackSync(vec![l.clone()])),
            "reload puts the programs and the port back"
        );
        // Not for a sandbox on its way out: with no port left, the programs go.
        let going = Sandbox {
            removing: true,
            ..sb
        };
        let reload = firewall_reload(std::slice::from_ref(&n), &[going], OWNER);
        assert!(reload.steps.contains(&Step::LoopbackSync(vec![])));
        // An IPv4-only host has nothing of it.
        let v4 = net(Driver::Bridge, false);
        let reload = firewall_reload(std::slice::from_ref(&v4), &[], OWNER);
        assert!(!reload
            .steps
            .iter()
            .any(|s| matches!(s, Step::LoopbackSync(_))));
    }

    #[test]
    fn a_retired_dual_stack_veth_comes_back_with_its_ipv6_addresses_and_route() {
        let n = net6(Driver::Bridge);
        let sb = Sandbox {
            name: "netns2".into(),
            netns: "/run/netns/netns2".into(),
            owned: false,
            netns_id: None,
            cni: false,
            endpoints: vec![ep6()],
            removing: false,
            dns_servers: vec![],
        };
        let plan = sandbox_teardown(&sb, std::slice::from_ref(&n), OWNER, VethRemoval::OneByOne);
        let i = plan
            .steps
            .iter()
            .position(|s| matches!(s, Step::RetireVeth { .. }))
            .expect("the veth is retired");
        // IPv6 addresses go when a link goes down (IPv4 ones stay): they come back before the routes.
        let back: Vec<String> = plan.undo_of(i)[1..].iter().map(Step::render).collect();
        assert_eq!(
            back,
            [
                "ip -n netns2 addr add fe80::6e:acff:fe10:66/64 dev eth0 nodad",
                "ip -n netns2 addr add fd89:1:2:3::2/64 dev eth0 nodad",
                "ip -n netns2 route add default via 172.16.0.100 dev eth0",
                "ip -n netns2 -6 route add default via fd89:1:2:3::1 dev eth0",
            ]
        );
        // A deleted bridge comes back with its IPv6 (its restore replays the set-up).
        let plan = network_teardown(&n, &[], OWNER);
        let restore = plan.undo_of(plan.steps.len() - 1);
        assert!(restore.contains(&Step::AddAddress {
            ns: Ns::Host,
            dev: "br0".into(),
            addr: "fe80::1/64".parse().unwrap(),
        }));
        assert!(
            matches!(restore[0], Step::CreateBridge { ipv6: true, .. }),
            "{restore:?}"
        );
    }

    #[test]
    fn a_dual_stack_network_forwards_ipv6_once_its_uplinks_keep_their_router() {
        let (mut steps, _) = network_up(&net6(Driver::Bridge), &[], None, OWNER);
        assert_eq!(steps[..2], [Step::forwarding(), Step::forwarding6()]);
        keep_router_advertisements(&mut steps, &["eth0".into(), "wlan0".into()]);
        let text: Vec<String> = steps[..4].iter().map(Step::render).collect();
        assert_eq!(
            text,
            [
                "sysctl -w net.ipv4.ip_forward=1",
                "sysctl -w net.ipv6.conf.eth0.accept_ra=2",
                "sysctl -w net.ipv6.conf.wlan0.accept_ra=2",
                "sysctl -w net.ipv6.conf.all.forwarding=1",
            ]
        );
        // An internal network switches neither on; an IPv4 one leaves IPv6 alone.
        let mut internal = net6(Driver::Bridge);
        internal.internal = true;
        let (steps, _) = network_up(&internal, &[], None, OWNER);
        assert!(!steps.iter().any(Step::is_forwarding));
        let (mut steps, _) = network_up(&net(Driver::Bridge, false), &[], None, OWNER);
        keep_router_advertisements(&mut steps, &["eth0".into()]);
        assert!(!steps.contains(&Step::forwarding6()));
        assert!(!steps.iter().any(|s| s.render().contains("accept_ra")));
        // A reload switches it on again (after a reboot); a deleted bridge's restore does not (never undone).
        let reload = firewall_reload(&[net6(Driver::Bridge)], &[], OWNER);
        assert!(reload.steps.contains(&Step::forwarding6()));
        let reload = firewall_reload(&[internal, net(Driver::Bridge, false)], &[], OWNER);
        assert!(!reload.steps.contains(&Step::forwarding6()));
        let plan = network_teardown(&net6(Driver::Bridge), &[], OWNER);
        assert!(!plan
            .undo_of(plan.steps.len() - 1)
            .iter()
            .any(Step::is_forwarding));
    }

    #[test]
    fn endpoint_point_to_point_puts_gateway_on_host_end() {
        let mut e = ep(vec![]);
        e.host_interface = "br0".into();
        e.default_route = false;
        let (steps, _) = endpoint_up(&net(Driver::Veth, false), &e, &ns(), OWNER);
        assert!(matches!(&steps[0], Step::CreateVeth { master: None, .. }));
        assert!(steps.contains(&Step::route_localnet("br0")));
        assert_eq!(
            steps[1],
            Step::AddAddress {
                ns: Ns::Host,
                dev: "br0".into(),
                addr: "172.16.0.100/24".parse().unwrap()
            }
        );
        assert!(!steps
            .iter()
            .any(|s| matches!(s, Step::AddDefaultRoute { .. })));
    }

    #[test]
    fn teardown_mirrors_setup() {
        let e = ep(vec![port()]);
        let (_, up) = endpoint_up(&net(Driver::Bridge, false), &e, &ns(), OWNER);
        let fw = endpoint_down(&e);
        // Removal deletes exactly what set-up added, in the same order.
        let mut expected = up.inverse();
        expected.0.reverse();
        assert_eq!(fw, expected);
        let tables = Tables {
            keep_user_chain: false,
            owner: OWNER.into(),
        };
        let fw = network_down(&net(Driver::Bridge, false), &[], Some(tables.clone()));
        assert_eq!(fw.0.last(), Some(&Change::Delete(Rule::Tables(tables))));
    }

    #[test]
    fn a_point_to_point_host_end_goes_before_its_namespace() {
        let n = net(Driver::Veth, false);
        let sb = Sandbox {
            name: "netns2".into(),
            netns: "/run/netns/netns2".into(),
            owned: true,
            netns_id: None,
            cni: false,
            endpoints: vec![ep(vec![])],
            removing: false,
            dns_servers: vec![],
        };
        let plan = sandbox_teardown(
            &sb,
            std::slice::from_ref(&n),
            OWNER,
            VethRemoval::WithNamespace,
        );
        // Its name is the network's: deleted now, so the network's next sandbox can have it at once.
        assert_eq!(
            plan.steps,
            [
                delete_host_link("veth12345678", OWNER, sb.endpoints[0].mac.host_end()),
                Step::DeleteNetns {
                    name: "netns2".into()
                }
            ]
        );
        // Each brings back its own: the namespace does not make the pair the link's restore makes too.
        let (up, _) = endpoint_up(&n, &sb.endpoints[0], &ns(), OWNER);
        assert_eq!(plan.undo_of(0), up);
        assert!(!plan
            .undo_of(1)
            .iter()
            .any(|s| matches!(s, Step::CreateVeth { .. })));
    }

    #[test]
    fn kernel_teardown_restores_what_it_deletes() {
        let n = net(Driver::Bridge, false);
        let sb = Sandbox {
            name: "netns2".into(),
            netns: "/run/netns/netns2".into(),
            owned: true,
            netns_id: None,
            cni: false,
            endpoints: vec![ep(vec![port()])],
            removing: false,
            dns_servers: vec![],
        };
        let plan = sandbox_teardown(&sb, std::slice::from_ref(&n), OWNER, VethRemoval::OneByOne);
        let (up, _) = endpoint_up(&n, &sb.endpoints[0], &ns(), OWNER);
        let Some(add) = up.iter().find(|s| matches!(s, Step::FastPathAdd { .. })) else {
            panic!("set-up joins the fast path: {up:?}");
        };
        let remove = add.undo().expect("undo of FastPathAdd");
        // A process keeps the namespace: the veth is retired (out of use now, deleted later), not deleted.
        let retire = Step::RetireVeth {
            host: "veth12345678".into(),
            peer: "eth0".into(),
            peer_ns: ns(),
            retired: retired_name("veth12345678"),
            master: Some("br0".into()),
            tag: OWNER.into(),
            made_with: Some(sb.endpoints[0].mac.host_end()),
        };
        assert_eq!(
            plan.steps,
            vec![
                remove,
                retire.clone(),
                Step::DeleteNetns {
                    name: "netns2".into()
                }
            ]
        );
        // The fast path entry comes back; the veth as it was; the namespace before it (undo runs in reverse).
        assert_eq!(plan.undo_of(0), vec![add.clone()]);
        let back = plan.undo_of(1);
        assert_eq!(back[0], retire.undo().expect("retire has an undo"));
        assert!(matches!(back[0], Step::UnretireVeth { .. }));
        assert!(matches!(back[1], Step::AddDefaultRoute { .. }), "{back:?}");
        assert_eq!(
            plan.undo_of(2),
            vec![Step::CreateNetns {
                name: "netns2".into(),
                owner: OWNER.into()
            }]
        );

        let plan = network_teardown(&n, std::slice::from_ref(&sb), OWNER);
        assert_eq!(
            plan.steps[1..],
            [
                delete_host_link("veth12345678", OWNER, sb.endpoints[0].mac.host_end()),
                delete_host_link("br0", OWNER, n.gateway_mac())
            ]
        );
        assert!(matches!(plan.undo_of(2)[0], Step::CreateBridge { .. }));
        assert!(plan.undo_of(2).contains(&Step::FastPathInit {
            bridge: "br0".into()
        }));
        assert!(!plan.undo_of(2).contains(&Step::forwarding()));

        // Without the fast path (or on a point-to-point network) there is nothing to join or leave.
        let slow = Network {
            fast_path: false,
            ..n.clone()
        };
        let plan = sandbox_teardown(
            &sb,
            std::slice::from_ref(&slow),
            OWNER,
            VethRemoval::WithNamespace,
        );
        assert_eq!(
            plan.steps,
            vec![Step::DeleteNetns {
                name: "netns2".into()
            }]
        );
        let (up, _) = endpoint_up(&slow, &sb.endpoints[0], &ns(), OWNER);
        assert!(!up.iter().any(|s| matches!(s, Step::FastPathAdd { .. })));
        let (up, _) = network_up(&slow, &[], None, OWNER);
        assert!(!up.iter().any(|s| matches!(s, Step::FastPathInit { .. })));
        let (up, _) = endpoint_up(&net(Driver::Veth, false), &sb.endpoints[0], &ns(), OWNER);
        assert!(!up.iter().any(|s| matches!(s, Step::FastPathAdd { .. })));
    }

    #[test]
    fn isolation_pairs_both_ways_unless_both_opt_out() {
        let a = net(Driver::Bridge, false);
        let mut b = net(Driver::Bridge, false);
        b.name = "n2".into();
        b.interface = "br2".into();
        let (_, fw) = network_up(&a, std::slice::from_ref(&b), None, OWNER);
        assert!(fw.0.contains(&Change::Add(Rule::Isolate {
            from: "br0".into(),
            to: "br2".into()
        })));
        assert!(fw.0.contains(&Change::Add(Rule::Isolate {
            from: "br2".into(),
            to: "br0".into()
        })));
        let (mut a2, mut b2) = (a.clone(), b.clone());
        a2.isolate = false;
        b2.isolate = false;
        let (_, fw) = network_up(&a2, &[b2.clone()], None, OWNER);
        assert!(!fw
            .0
            .iter()
            .any(|c| matches!(c, Change::Add(Rule::Isolate { .. }))));
        // One side opting out is not enough.
        let (_, fw) = network_up(&a2, &[b], None, OWNER);
        assert!(fw
            .0
            .iter()
            .any(|c| matches!(c, Change::Add(Rule::Isolate { .. }))));
    }

    #[test]
    fn reload_has_every_element_once() {
        let a = net(Driver::Bridge, false);
        let mut b = net(Driver::Bridge, false);
        b.name = "n2".into();
        b.interface = "br2".into();
        let sb = Sandbox {
            name: "s".into(),
            netns: "/run/netns/s".into(),
            owned: true,
            netns_id: None,
            cni: false,
            endpoints: vec![ep(vec![port()])],
            removing: false,
            dns_servers: vec![],
        };
        let plan = firewall_reload(&[a, b], &[sb], OWNER);
        let Some(Step::Firewall { batch: fw, .. }) = plan.steps.last() else {
            panic!("no firewall step")
        };
        assert_eq!(
            fw.0[0],
            Change::Add(Rule::Tables(Tables {
                keep_user_chain: true,
                owner: OWNER.into()
            }))
        );
        let isolations =
            fw.0.iter()
                .filter(|c| matches!(c, Change::Add(Rule::Isolate { .. })))
                .count();
        assert_eq!(isolations, 2);
        assert!(fw
            .0
            .iter()
            .any(|c| matches!(c, Change::Add(Rule::Port { .. }))));
        assert!(firewall_reload(&[], &[], OWNER).is_empty());
    }

    #[test]
    fn undo_of_setup_steps() {
        let tables = Tables {
            keep_user_chain: true,
            owner: OWNER.into(),
        };
        let (steps, fw) = network_up(
            &net(Driver::Bridge, false),
            &[],
            Some(tables.clone()),
            OWNER,
        );
        let plan = Plan::setup(steps, fw, Default::default());
        let undos: Vec<Step> = plan.steps.iter().rev().filter_map(Step::undo).collect();
        assert!(matches!(&undos[0], Step::Firewall { batch: b, .. }
            if b.0.last() == Some(&Change::Delete(Rule::Tables(tables)))));
        assert_eq!(
            undos[1],
            Step::DeleteLink {
                ns: Ns::Host,
                name: "br0".into(),
                tag: OWNER.into(),
                made_with: Some(Mac::for_ipv4(Ipv4Addr::new(172, 16, 0, 100))),
            }
        );
        assert_eq!(undos.len(), 2);
    }

    fn overlay_net(
        name: &str,
        block: &str,
        backend: OverlayBackend,
        peers: &[(&str, [u8; 4])],
    ) -> Network {
        let subnet: Ipv4Net = block.parse().unwrap();
        let gw = Ipv4Addr::from(u32::from(subnet.network()) + 1);
        Network {
            overlay: Some(Overlay {
                cluster: "10.244.0.0/16".parse().unwrap(),
                cluster6: None,
                backend,
                vni: 1,
                port: 4789,
                device: match backend {
                    OverlayBackend::Vxlan => "nsvx1".into(),
                    OverlayBackend::HostGw => "eth0".into(),
                },
                vtep_mac: Mac([0x0e, 0x6e, 10, 244, 1, 0]),
                peers: peers.iter().map(|(b, ip)| peer(b, *ip)).collect(),
                underlay_qdisc: false,
            }),
            mtu: 1450,
            ..Network::bridge(name, subnet, gw, &format!("nsbr-{name}"))
        }
    }

    fn peer(block: &str, ip: [u8; 4]) -> Peer {
        Peer {
            subnet: block.parse().unwrap(),
            underlay: Ipv4Addr::from(ip),
            vtep_mac: Some(Mac([0x0e, 0x6e, 0, 0, 0, ip[3]])),
            subnet6: None,
            underlay_mac: None,
        }
    }

    /// [`overlay_net`] made dual stack: the cluster's IPv6 prefix `fd00:10:244::/56`, this host's block the
    /// /64 numbered as its IPv4 block, and each peer's the same (with `mac` as a host-gw peer's underlay MAC).
    fn overlay_net6(net: Network, mac: Option<Mac>) -> Network {
        let six = |b: Ipv4Net| -> Ipv6Net {
            format!("fd00:10:244:{:x}::/64", b.network().octets()[2])
                .parse()
                .unwrap()
        };
        let mut n = net;
        let block = six(n.subnet.unwrap());
        n.ipv6 = Some(crate::model::Net6 {
            subnet: block,
            gateway: crate::ipam::default_gateway6(&block),
            nat: true,
        });
        if let Some(o) = n.overlay.as_mut() {
            o.cluster6 = Some("fd00:10:244::/56".parse().unwrap());
            for p in &mut o.peers {
                p.subnet6 = Some(six(p.subnet));
                p.underlay_mac = mac.filter(|_| o.backend == OverlayBackend::HostGw);
            }
        }
        n
    }

    #[test]
    fn a_dual_stack_overlay_routes_each_peer_s_ipv6_block_onlink_via_a_permanent_neighbour() {
        let four = overlay_net(
            "pods",
            "10.244.1.0/24",
            OverlayBackend::Vxlan,
            &[("10.244.2.0/24", [192, 168, 200, 12])],
        );
        let n = overlay_net6(four.clone(), None);
        let (steps, fw) = network_up(&n, &[], None, OWNER);
        assert!(steps
            .iter()
            .any(|s| matches!(s, Step::CreateVxlan { ipv6: true, .. })));
        let text = Plan {
            steps: steps.clone(),
            restore: vec![],
        }
        .render();
        let (vtep2, proto) = (
            "0e:6e:00:00:00:0c",
            crate::kernel::netlink::NSNET_ROUTE_PROTOCOL,
        );
        for line in [
            format!("ip -6 neigh replace fd00:10:244:2:: lladdr {vtep2} dev nsvx1 nud permanent"),
            format!(
                "ip -6 route replace fd00:10:244:2::/64 via fd00:10:244:2:: dev nsvx1 onlink src \
                 fd00:10:244:1::1 proto {proto}"
            ),
        ] {
            assert!(text.contains(&format!("{line}\n")), "{line}\n{text}");
        }
        // After the IPv4 route; removed before it.
        let at = |t: &str, l: &str| t.find(l).unwrap();
        assert!(at(&text, "ip route replace 10.244.2.0/24") < at(&text, "ip -6 route replace"));
        let Some(Step::SetPeer { overlay, peer }) =
            steps.iter().find(|s| matches!(s, Step::SetPeer { .. }))
        else {
            panic!("no peer: {steps:?}")
        };
        let del = Step::RemovePeer {
            overlay: overlay.clone(),
            peer: peer.clone(),
        }
        .render();
        assert!(
            at(&del, "ip -6 route del") < at(&del, "ip route del"),
            "{del}"
        );
        assert!(
            del.contains("ip -6 neigh del fd00:10:244:2:: dev nsvx1"),
            "{del}"
        );
        let rules: Vec<&Rule> =
            fw.0.iter()
                .map(|c| match c {
                    Change::Add(r) | Change::Delete(r) => r,
                })
                .collect();
        // The fast path knows the peer's IPv6 block, by the same next hop.
        let Some(Step::FastPathTunnel { routes6, .. }) = steps
            .iter()
            .find(|s| matches!(s, Step::FastPathTunnel { .. }))
        else {
            panic!("no tunnel: {steps:?}")
        };
        assert_eq!(
            routes6,
            &[(
                "fd00:10:244:2::/64".parse().unwrap(),
                "fd00:10:244:2::".parse().unwrap()
            )]
        );
        assert!(rules.contains(&&Rule::Overlay6 {
            device: "nsvx1".into(),
            cluster: "fd00:10:244::/56".parse().unwrap(),
            subnet: "fd00:10:244:1::/64".parse().unwrap(),
        }));
        // IPv4 only: no IPv6 line, no IPv6 rule, and the peer's step serializes as before (no `src6`).
        let (steps4, fw4) = network_up(&four, &[], None, OWNER);
        let text4 = Plan {
            steps: steps4.clone(),
            restore: vec![],
        }
        .render();
        assert!(
            !text4.contains("ip -6") && !text4.contains("nsvx1/"),
            "{text4}"
        );
        assert!(!fw4
            .0
            .iter()
            .any(|c| matches!(c, Change::Add(Rule::Overlay6 { .. }))));
        let json = serde_json::to_string(&steps4).unwrap();
        assert!(
            !json.contains("src6")
                && !json.contains("subnet6")
                && !json.contains("routes6")
                && !json.contains("\"ipv6\""),
            "{json}"
        );
    }

    #[test]
    fn host_gw_binds_a_peer_s_ipv6_block_to_its_underlay_mac_and_skips_a_peer_without_one() {
        let four = overlay_net(
            "pods",
            "10.244.1.0/24",
            OverlayBackend::HostGw,
            &[("10.244.2.0/24", [192, 168, 200, 12])],
        );
        let mac = Mac([2, 0, 0, 0, 0, 0x12]);
        let text = peers_up(&overlay_net6(four.clone(), Some(mac)))
            .iter()
            .map(Step::render)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            text.contains(
                "ip route replace 10.244.2.0/24 via 192.168.200.12 dev eth0 src 10.244.1.1"
            ) && text.contains(&format!(
                "ip -6 neigh replace fd00:10:244:2:: lladdr {mac} dev eth0 nud permanent"
            )) && text.contains(
                "ip -6 route replace fd00:10:244:2::/64 via fd00:10:244:2:: dev eth0 onlink"
            ),
            "{text}"
        );
        // A peer that published no underlay MAC (an older agent) gets its IPv4 route only.
        let text = peers_up(&overlay_net6(four, None))
            .iter()
            .map(Step::render)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            text.contains("ip route replace 10.244.2.0/24") && !text.contains("ip -6"),
            "{text}"
        );
    }

    #[test]
    fn an_overlay_network_comes_up_with_its_device_peers_and_rules() {
        let n = overlay_net(
            "pods",
            "10.244.1.0/24",
            OverlayBackend::Vxlan,
            &[("10.244.2.0/24", [192, 168, 200, 12])],
        );
        let other = net(Driver::Bridge, false);
        let (steps, fw) = network_up(&n, std::slice::from_ref(&other), None, OWNER);
        let at = |f: fn(&Step) -> bool| steps.iter().position(f).unwrap();
        let vx = at(|s| matches!(s, Step::CreateVxlan { mtu: 1450, .. }));
        let addr = at(|s| matches!(s, Step::AddAddress { .. }));
        let peer_at = at(|s| matches!(s, Step::SetPeer { .. }));
        assert!(
            addr < peer_at && vx < peer_at,
            "peers' routes leave from the gateway address: {steps:?}"
        );
        let added: Vec<&Rule> =
            fw.0.iter()
                .map(|c| match c {
                    Change::Add(r) => r,
                    Change::Delete(r) => r,
                })
                .collect();
        assert!(added.contains(&&Rule::VxlanPort { port: 4789 }));
        assert!(added.contains(&&Rule::VxlanMember {
            underlay: Ipv4Addr::new(192, 168, 200, 12),
            port: 4789
        }));
        assert!(added
            .iter()
            .any(|r| matches!(r, Rule::Overlay { device, .. } if device == "nsvx1")));
        // A LAN peer may not route into the tunnel through this host, as into the bridge.
        for interface in ["nsvx1", n.interface.as_str()] {
            assert!(
                added.contains(&&Rule::PublishedOnly {
                    interface: interface.into()
                }),
                "{interface} is published-only"
            );
        }
        // The VXLAN device is isolated from other networks like the bridge, both ways.
        for (from, to) in [("nsvx1", "br0"), ("br0", "nsvx1")] {
            assert!(
                added.contains(&&Rule::Isolate {
                    from: from.into(),
                    to: to.into()
                }),
                "{from} -> {to}"
            );
        }
        let rendered = Plan::setup(steps, fw, n.firewall).render();
        assert!(
            rendered.contains("ip link add nsvx1 type vxlan id 1 dstport 4789 nolearning"),
            "{rendered}"
        );
        assert!(
            rendered.contains(
                "bridge fdb replace 0e:6e:00:00:00:0c dev nsvx1 dst 192.168.200.12 self permanent"
            ),
            "{rendered}"
        );
        assert!(
            rendered.contains(
                "ip route replace 10.244.2.0/24 via 10.244.2.0 dev nsvx1 onlink src 10.244.1.1"
            ),
            "{rendered}"
        );
    }

    #[test]
    fn peers_change_only_what_changed() {
        let n = overlay_net(
            "pods",
            "10.244.1.0/24",
            OverlayBackend::Vxlan,
            &[
                ("10.244.2.0/24", [192, 168, 200, 12]),
                ("10.244.3.0/24", [192, 168, 200, 13]),
            ],
        );
        // Host 3 gone, host 2 moved, host 4 new.
        let now = vec![
            peer("10.244.2.0/24", [192, 168, 200, 12]),
            peer("10.244.4.0/24", [192, 168, 200, 14]),
        ];
        let mut moved = now.clone();
        moved[0].underlay = Ipv4Addr::new(192, 168, 200, 99);
        let plan = peers_change(&n, &moved, &[]);
        let set: Vec<&Peer> = plan
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::SetPeer { peer, .. } => Some(peer),
                _ => None,
            })
            .collect();
        let removed: Vec<&Peer> = plan
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::RemovePeer { peer, .. } => Some(peer),
                _ => None,
            })
            .collect();
        assert_eq!(set, vec![&moved[0], &moved[1]]);
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].subnet.to_string(), "10.244.3.0/24");
        // Members follow: the moved and new addresses in, the gone ones out; first, before any route.
        let Step::Firewall { batch, .. } = &plan.steps[0] else {
            panic!("members first: {plan:?}")
        };
        let member = |ip: [u8; 4]| Rule::VxlanMember {
            underlay: Ipv4Addr::from(ip),
            port: 4789,
        };
        assert!(batch.0.contains(&Change::Add(member([192, 168, 200, 99]))));
        assert!(batch.0.contains(&Change::Add(member([192, 168, 200, 14]))));
        assert!(batch
            .0
            .contains(&Change::Delete(member([192, 168, 200, 13]))));
        assert!(batch
            .0
            .contains(&Change::Delete(member([192, 168, 200, 12]))));
        // The fast path follows, last, with exactly the peers there are now.
        assert!(n.fast_path);
        let Some(Step::FastPathTunnel { decap, routes, .. }) = plan.steps.last() else {
            panic!("the fast path's tunnel last: {plan:?}")
        };
        assert!(*decap);
        let blocks: Vec<String> = routes.iter().map(|(b, via)| format!("{b} {via}")).collect();
        assert_eq!(
            blocks,
            ["10.244.2.0/24 10.244.2.0", "10.244.4.0/24 10.244.4.0"]
        );
        // Nothing changed: nothing to do.
        let same = n.overlay.as_ref().unwrap().peers.clone();
        assert!(peers_change(&n, &same, &[]).is_empty());
    }

    /// host-gw's receiving side: one filter on the underlay (never its block), made last with the network,
    /// deleted first with it (the qdisc too when nsnet owns it), and none under a host firewall whose forward
    /// policy is drop. A peers change leaves it alone.
    #[test]
    fn host_gw_puts_one_filter_on_the_underlay_and_takes_exactly_it_away() {
        let mut n = overlay_net(
            "pods",
            "10.244.1.0/24",
            OverlayBackend::HostGw,
            &[("10.244.2.0/24", [192, 168, 200, 12])],
        );
        n.overlay.as_mut().unwrap().underlay_qdisc = true;
        let up = overlay_up(&n, "nsnet:/s");
        let filter = Step::UnderlayFilter {
            bridge: n.interface.clone(),
            device: "eth0".into(),
            qdisc: true,
        };
        assert_eq!(up.last(), Some(&filter), "{up:?}");
        let Some(Step::FastPathTunnel { decap, .. }) = up.iter().rev().nth(1) else {
            panic!("the tunnel before the filter: {up:?}")
        };
        assert!(!decap, "host-gw's underlay never joins the block");
        let handle = crate::kernel::fastpath::underlay_filter(&n.interface).1;
        let remove = Step::RemoveUnderlayFilter {
            device: "eth0".into(),
            handle,
            qdisc: true,
        };
        assert_eq!(filter.undo(), Some(remove.clone()));
        let text = filter.render();
        assert!(text.starts_with("tc qdisc add dev eth0 ingress"), "{text}");
        assert!(
            text.contains("tc filter replace dev eth0 ingress protocol all pref "),
            "{text}"
        );
        assert!(!text.contains("ingress_block"), "{text}");
        let text = remove.render();
        assert!(
            text.contains(&format!(
                "handle {handle:#x} bpf\ntc qdisc del dev eth0 ingress"
            )),
            "{text}"
        );

        let down = network_teardown(&n, &[], "nsnet:/s");
        assert_eq!(down.steps[0], remove, "{down:?}");
        assert_eq!(down.undo_of(0).last(), Some(&filter));
        let last = &down.steps[down.steps.len() - 1];
        assert!(matches!(last, Step::DeleteLink { name, .. } if *name == n.interface));

        assert!(peers_change(&n, &[], &[])
            .steps
            .iter()
            .all(|s| !matches!(s, Step::UnderlayFilter { .. })));
        // Another bridge, another filter; no fast path, no filter.
        let mut other = n.clone();
        other.interface = "nsbr-other".into();
        assert_ne!(
            crate::kernel::fastpath::underlay_filter(&other.interface),
            crate::kernel::fastpath::underlay_filter(&n.interface)
        );
        other.fast_path = false;
        assert_eq!(underlay_filter(&other), None);
        n.host_chains = vec![crate::firewall::HostChain {
            family: "inet".into(),
            table: "filter".into(),
            chain: "forward".into(),
        }];
        assert_eq!(underlay_filter(&n), None);
        // vxlan has none: its device joins the block.
        let vx = overlay_net("pods", "10.244.1.0/24", OverlayBackend::Vxlan, &[]);
        assert_eq!(underlay_filter(&vx), None);
        assert_eq!(remove_underlay_filter(&vx), None);
    }

    #[test]
    fn a_member_another_overlay_network_has_stays() {
        let a = overlay_net(
            "a",
            "10.244.1.0/24",
            OverlayBackend::Vxlan,
            &[("10.244.2.0/24", [192, 168, 200, 12])],
        );
        let mut b = overlay_net(
            "b",
            "10.245.1.0/24",
            OverlayBackend::Vxlan,
            &[("10.245.2.0/24", [192, 168, 200, 12])],
        );
        b.overlay.as_mut().unwrap().cluster = "10.245.0.0/16".parse().unwrap();
        let plan = peers_change(&a, &[], &[b.clone()]);
        assert!(
            plan.steps
                .iter()
                .all(|s| !matches!(s, Step::Firewall { .. })),
            "{plan:?}"
        );
        let down = network_down(&a, &[a.clone(), b], None);
        assert!(
            !down.0.iter().any(|c| matches!(
                c,
                Change::Delete(Rule::VxlanMember { .. } | Rule::VxlanPort { .. })
            )),
            "{down:?}"
        );
        let alone = network_down(&a, std::slice::from_ref(&a), None);
        assert!(alone
            .0
            .contains(&Change::Delete(Rule::VxlanPort { port: 4789 })));
    }

    #[test]
    fn host_gw_peers_are_routes_and_go_one_by_one() {
        let n = overlay_net(
            "pods",
            "10.244.1.0/24",
            OverlayBackend::HostGw,
            &[("10.244.2.0/24", [192, 168, 200, 12])],
        );
        let (steps, fw) = network_up(&n, &[], None, OWNER);
        assert!(!steps.iter().any(|s| matches!(s, Step::CreateVxlan { .. })));
        assert!(
            !fw.0
                .iter()
                .any(|c| matches!(c, Change::Add(Rule::VxlanPort { .. }))),
            "no VXLAN, no port"
        );
        let text = Plan::setup(steps, fw, n.firewall).render();
        assert!(
            text.contains(
                "ip route replace 10.244.2.0/24 via 192.168.200.12 dev eth0 src 10.244.1.1"
            ),
            "{text}"
        );
        let down = network_teardown(&n, &[], OWNER);
        // The fast path's filter on the underlay first, then the routes.
        assert!(
            matches!(down.steps[0], Step::RemoveUnderlayFilter { .. }),
            "{down:?}"
        );
        assert!(matches!(down.steps[1], Step::RemovePeer { .. }), "{down:?}");
        assert!(
            down.steps
                .iter()
                .all(|s| !matches!(s, Step::DeleteLink { name, .. } if name == "eth0")),
            "the underlay is never deleted"
        );
    }
}
