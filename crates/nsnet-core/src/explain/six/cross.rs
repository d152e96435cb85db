//! An IPv6 packet from a sandbox to another host's block of a dual-stack overlay: the onlink route via the
//! peer block's first address, the permanent neighbour entry binding that address to the peer's MAC, the
//! VXLAN device's FDB entry (or host-gw's underlay), and the fast path's `remote6` entry (TCP and UDP) or
//! the slow path through the forward chain, with no NAT66 inside the cluster; and the other way, into a
//! sandbox here from another host's (the device's fast path, or `overlay_in6`). Each is checked against
//! [`OverlayKernel6`]; a missing one is named broken. Explain reads this host only: the peer's side is
//! described, not checked.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::Ipv6Net;

use super::{delivered, dropped, in_if, kernel, r, Outcome, Query, Six, E6};
use crate::explain::{verdict_reason, Protocol};
use crate::firewall::Backend;
use crate::model::{Driver, Overlay, OverlayBackend, Peer};

/// What a dual-stack overlay's device and its network's fast path hold for the other hosts' IPv6 blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlayKernel6 {
    /// nsnet's IPv6 routes through the device: destination and next hop.
    pub routes: Vec<(Ipv6Net, Ipv6Addr)>,
    /// The device's IPv6 neighbour entries: address and MAC.
    pub neighbours: Vec<(Ipv6Addr, [u8; 6])>,
    /// The device's FDB entries (vxlan): VTEP MAC and the underlay address it points at.
    pub fdb: Vec<([u8; 6], Option<Ipv4Addr>)>,
    /// The fast path's `remote6` trie (block, next hop); `None`: the network's fast path has none (no fast
    /// path, or one made before `remote6`), so IPv6 for other hosts takes the slow path.
    pub remote6: Option<Vec<(Ipv6Net, Ipv6Addr)>>,
}

/// The overlay of `e`'s network and its peer whose IPv6 block holds `dst`, if any.
pub(super) fn peer_of<'a>(e: E6<'a>, dst: Ipv6Addr) -> Option<(&'a Overlay, &'a Peer)> {
    let o = e.net.overlay.as_ref()?;
    o.cluster6?;
    o.peers
        .iter()
        .find(|p| p.subnet6.is_some_and(|b| b.contains(&dst)))
        .map(|p| (o, p))
}

/// The rule that keeps a sandbox's IPv6 source between the cluster's hosts.
fn no_masq6(b: Backend, own: Ipv6Net, cluster: Ipv6Net) -> super::RuleRef {
    if b == Backend::Iptables {
        r(
            "ip6tables nat NSNET-POSTROUTING",
            format!("-s {own} -d {cluster} -m conntrack ! --ctstate DNAT -j RETURN"),
        )
    } else {
        r(
            "inet nsnet postrouting",
            format!("ip6 saddr . ip6 daddr @no_masq6 return (element {own} . {cluster})"),
        )
    }
}

/// From sandbox endpoint `e` (its packet past anti-spoofing and at its gateway) to `dst` in peer `p`'s IPv6
/// block of overlay `o`, with source `src`.
pub(super) fn to_peer(
    s: &mut Six<'_>,
    q: &Query,
    e: E6<'_>,
    o: &Overlay,
    p: &Peer,
    src: Ipv6Addr,
    dst: Ipv6Addr,
) -> Outcome {
    let device = o.device.as_str();
    let bridge = e.net.interface.as_str();
    let host_at = format!("host at {}", p.underlay);
    let Some((block, via, mac)) = p.gateway6(o.backend) else {
        let what = match o.backend {
            OverlayBackend::Vxlan => "VTEP MAC",
            OverlayBackend::HostGw => "underlay MAC",
        };
        s.hop(
            "host",
            format!(
                "{dst} is in the IPv6 block of the host at {}, whose {what} this host does not know: no IPv6 route to it",
                p.underlay
            ),
            None,
        );
        return dropped(
            format!(
                "the host at {} has no {what} in etcd yet, so this host has no IPv6 route to its block",
                p.underlay
            ),
            Some(kernel("route lookup: network unreachable")),
            None,
        );
    };
    let k = match s.six().overlay.get(&e.net.name) {
        Some(None) => {
            s.broken.push(format!(
                "{device}, the overlay device of network {}, is missing (the agent, or `nsnet gc`, makes it again)",
                e.net.name
            ));
            s.hop("host", format!("{device} is not there"), None);
            return dropped(
                format!("broken: {device} is missing, so nothing reaches the other hosts"),
                None,
                None,
            );
        }
        Some(Some(k)) => Some(k),
        None => None,
    };
    let route_rule = kernel(&format!(
        "route {block} via {via} dev {device} onlink proto 110"
    ));
    // Each entry the way to the peer needs, named broken when the kernel lacks it.
    let route_ok = k.is_none_or(|k| k.routes.contains(&(block, via)));
    if !route_ok {
        s.broken.push(format!(
            "no IPv6 route to {block} via {via} on {device} (the agent puts it back)"
        ));
    }
    let neighbour_ok = k.is_none_or(|k| k.neighbours.contains(&(via, mac.0)));
    if !neighbour_ok {
        s.broken.push(format!(
            "no IPv6 neighbour entry {via} -> {mac} on {device} (the agent puts it back)"
        ));
    }
    let fdb_ok = o.backend != OverlayBackend::Vxlan
        || k.is_none_or(|k| k.fdb.contains(&(mac.0, Some(p.underlay))));
    if !fdb_ok {
        s.broken.push(format!(
            "no FDB entry {mac} -> {} on {device} (the agent puts it back)",
            p.underlay
        ));
    }

    // The fast path (TCP, UDP): the sender verified by its local6 entry, the block in remote6. It sends by
    // the neighbour entry, without the host's route lookup.
    let remote6 = k.and_then(|k| k.remote6.as_ref());
    let tcp_udp = q.protocol != Protocol::Icmp;
    let mut fast = false;
    let mut last = route_rule.clone();
    if e.net.fast_path && e.net.driver == Driver::Bridge {
        if !tcp_udp {
            s.hop(
                format!("bridge {bridge}"),
                "the fast path takes TCP and UDP only: ICMPv6 takes the bridge and the host's forwarding",
                None,
            );
        } else if let Some(remote6) = remote6 {
            if s.six().fast_path_lacking.contains(&src) {
                s.broken.push(format!(
                    "the fast path of {bridge} has no local6 entry for {src}"
                ));
            }
            let remote_ok = remote6.contains(&(block, via));
            if !remote_ok {
                s.broken.push(format!(
                    "the fast path of {bridge} has no remote6 entry for {block} (the agent puts it back)"
                ));
            }
            if remote_ok && s.six().fast_path.contains(&src) {
                let rule = r(
                    &format!("tc ingress_block of {bridge}"),
                    format!(
                        "bpf nsnet_fastpath: remote6 entry {block} -> {via}, bpf_redirect_neigh"
                    ),
                );
                s.hop(
                    format!("bridge {bridge}"),
                    format!(
                        "fast path: the bpf program on {} finds {block} in remote6 and sends the packet out of {device} to {via} (bpf_redirect_neigh); it skips the bridge, the route lookup and netfilter",
                        e.ep.host_interface
                    ),
                    Some(rule.clone()),
                );
                if s.facts().user_rules {
                    s.w.caveats.push("the fast path skips the user chain (create the network with --fast-path=false to filter it)".into());
                }
                if !route_ok {
                    s.w.caveats.push(format!("without the route to {block}, ICMPv6 and anything the fast path passes on find no way to the host at {}", p.underlay));
                }
                last = rule;
                fast = true;
            } else {
                s.w.caveats.push(
                    "without its fast path entries the packet takes the slow path: slower, still delivered"
                        .into(),
                );
            }
        }
    }
    if !fast {
        if !route_ok {
            let instead = match s.route(dst) {
                Some(rt) => format!(
                    "the host's lookup gives dev {}{} instead",
                    rt.interface,
                    rt.gateway.map(|g| format!(" via {g}")).unwrap_or_default()
                ),
                None => "the host has no route to it".into(),
            };
            s.hop(
                "host",
                format!("route to {dst}: nsnet's route to {block} is gone; {instead}"),
                None,
            );
            return dropped(
                format!(
                    "broken: this host has lost its IPv6 route to the host at {} ({block}), so the packet never reaches it",
                    p.underlay
                ),
                Some(kernel("route lookup")),
                None,
            );
        }
        s.hop(
            "host",
            format!(
                "route to {dst}: {block} via {via} dev {device} onlink (the host at {}'s block; its first address is the next hop), source {src}",
                p.underlay
            ),
            Some(route_rule),
        );
    }
    if !neighbour_ok {
        s.hop(
            "host",
            format!("no permanent neighbour entry for {via}: its solicitation on {device} gets no answer"),
            None,
        );
        return dropped(
            format!("broken: this host has lost its IPv6 neighbour entry for {via} on {device}, so it cannot resolve the next hop to the host at {}", p.underlay),
            Some(kernel("neighbour discovery fails")),
            None,
        );
    }
    s.hop(
        "host",
        format!("neighbour {via} lladdr {mac} PERMANENT on {device}: no solicitation crosses between hosts"),
        Some(kernel(&format!("neigh {via} lladdr {mac} dev {device} nud permanent"))),
    );
    let b = s.facts().backend;
    if !fast {
        let from = in_if(e).to_string();
        match s.w.forward(&from, device, false) {
            Ok(rule) => last = rule,
            Err(rule) => {
                s.hop(
                    "host",
                    format!("forward {from} -> {device}: dropped"),
                    Some(rule.clone()),
                );
                return dropped(verdict_reason(&rule), Some(rule), None);
            }
        }
        if let (Some(cluster), Some(own)) = (o.cluster6, e.net.ipv6) {
            let rule = (b != Backend::None).then(|| no_masq6(b, own.subnet, cluster));
            s.hop(
                "host",
                format!(
                    "no NAT66 inside the cluster ({cluster}): the packet keeps its source {src}"
                ),
                rule,
            );
        }
    }
    if !fdb_ok {
        return dropped(
            format!(
                "broken: {device} has no FDB entry for {mac}, so it does not know where to send the frame (the host at {})",
                p.underlay
            ),
            Some(kernel("vxlan: no FDB entry")),
            None,
        );
    }
    match o.backend {
        OverlayBackend::Vxlan => s.hop(
            "host",
            format!(
                "{device} encapsulates it: VXLAN, VNI {}, UDP to {}:{} (FDB entry {mac} -> {})",
                o.vni, p.underlay, o.port, p.underlay
            ),
            Some(kernel(&format!("vxlan {device} (learning off)"))),
        ),
        OverlayBackend::HostGw => s.hop(
            "host",
            format!(
                "out of {device} to the host at {} (MAC {mac}) on the underlay's segment",
                p.underlay
            ),
            None,
        ),
    }
    let cluster = o.cluster6.map(|c| c.to_string()).unwrap_or_default();
    s.hop(
        host_at,
        format!(
            "holds {block}: its fast path (TCP, UDP) hands the packet to {dst}, or it forwards it (overlay_in6 accepts {cluster} -> {block}); the receiver sees {src}"
        ),
        None,
    );
    s.w.caveats.push(format!(
        "explain reads this host's kernel only: `nsnet explain {src} {dst}` on the host at {} checks its side",
        p.underlay
    ));
    delivered(
        format!(
            "crosses to the host at {} ({block}) by {}, with its own source {src}: no NAT66 inside the cluster",
            p.underlay, o.backend
        ),
        Some(last),
        None,
    )
}

/// Into sandbox `t` from `peer`, a sandbox address in peer host `p`'s IPv6 block of overlay `o`: decapsulated
/// (vxlan) or taken off the underlay (host-gw), then the fast path (TCP, UDP) or the forward chain's
/// `overlay_in6` accept, with no NAT66. The way back to `p`'s block is checked too: answers need it.
pub(super) fn from_peer(
    s: &mut Six<'_>,
    q: &Query,
    peer: Ipv6Addr,
    t: E6<'_>,
    o: &Overlay,
    p: &Peer,
) -> Outcome {
    let device = o.device.as_str();
    let bridge = t.net.interface.as_str();
    let block = p.subnet6.unwrap_or_default();
    let how = match o.backend {
        OverlayBackend::Vxlan => format!("in VXLAN to this host, and {device} decapsulates it"),
        OverlayBackend::HostGw => format!("on {device} from the underlay's segment"),
    };
    s.hop(
        format!("host at {}", p.underlay),
        format!(
            "its sandbox {peer} ({block}) sends to {}; it arrives {how}",
            t.ip
        ),
        None,
    );
    s.w.caveats.push(format!(
        "explain reads this host's kernel only: `nsnet explain` on the host at {} checks the way there",
        p.underlay
    ));
    let k = match s.six().overlay.get(&t.net.name) {
        Some(None) => {
            s.broken.push(format!(
                "{device}, the overlay device of network {}, is missing (the agent, or `nsnet gc`, makes it again)",
                t.net.name
            ));
            return dropped(
                format!("broken: {device} is missing, so nothing from the other hosts arrives"),
                None,
                None,
            );
        }
        Some(Some(k)) => Some(k),
        None => None,
    };
    // The answers go back by the route and neighbour entry to the peer's block.
    if let Some((block, via, mac)) = p.gateway6(o.backend) {
        if k.is_some_and(|k| !k.routes.contains(&(block, via))) {
            s.broken.push(format!(
                "no IPv6 route to {block} via {via} on {device} (the agent puts it back)"
            ));
        }
        if k.is_some_and(|k| !k.neighbours.contains(&(via, mac.0))) {
            s.broken.push(format!(
                "no IPv6 neighbour entry {via} -> {mac} on {device} (the agent puts it back)"
            ));
        }
    }
    if !s.broken.is_empty() {
        s.w.caveats.push(format!(
            "{}'s answers to {peer} may find no way back (see broken)",
            t.name()
        ));
    }
    let tcp_udp = q.protocol != Protocol::Icmp;
    let decap = k.is_some_and(|k| k.remote6.is_some());
    if t.net.fast_path && tcp_udp && decap && s.six().fast_path.contains(&t.ip) {
        let rule = r(
            &format!("tc ingress of {device}"),
            format!(
                "bpf nsnet_fastpath: {block} is a remote block, {} in local6, bpf_redirect_peer",
                t.ip
            ),
        );
        s.hop(
            "host",
            format!(
                "fast path: the bpf program on {device}'s ingress hands the packet to {}'s {} (bpf_redirect_peer), MACs as the bridge would set them; it skips the bridge and netfilter",
                t.name(),
                t.ep.interface
            ),
            Some(rule.clone()),
        );
        return super::enter(s, t, false, rule);
    }
    let b = s.facts().backend;
    let own = t.net.ipv6.map(|v6| v6.subnet).unwrap_or_default();
    let cluster = o.cluster6.unwrap_or_default();
    let rule = match b {
        Backend::None => kernel("forwarded (net.ipv6.conf.all.forwarding=1)"),
        Backend::Iptables => r(
            "ip6tables filter NSNET-ACCEPT",
            format!("-s {cluster} -d {own} -i {device} -j ACCEPT"),
        ),
        Backend::Nftables => r(
            "inet nsnet forward",
            format!("iifname . ip6 saddr . ip6 daddr @overlay_in6 accept (element \"{device}\" . {cluster} . {own})"),
        ),
    };
    if b != Backend::None {
        s.w.user_chain();
    }
    s.hop(
        "host",
        format!("forward {device} -> {bridge}: accepted (from the cluster's {cluster} to this host's block)"),
        Some(rule.clone()),
    );
    s.hop(
        "host",
        format!("no NAT66 inside the cluster: the receiver sees {peer}"),
        None,
    );
    super::enter(s, t, false, rule)
}
