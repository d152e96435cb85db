//! `nsnet topology`: what exists now, as plain data. [`build`] is pure: it takes the records and what the
//! kernel holds ([`Facts`], read by `Nsnet::topology` through the host reader) and marks every item the
//! records want that the kernel lacks, and every tagged kernel object no record owns, as broken. The CLI
//! draws the result as text, dot or SVG, or prints it as JSON.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;

use crate::firewall::Rule;
use crate::kernel::netlink::RETIRED_GROUP;
use crate::kernel::Link;
use crate::model::{Driver, Mac, NetworkRecord, OverlayBackend, Sandbox};
use crate::portmap::Proto;

/// How an item of the picture stands against the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// The records and the kernel agree.
    Ok,
    /// A command is removing it right now.
    Removing,
    /// The records want something the kernel lacks (or the reverse): see the item's `problems`.
    Broken,
    /// nsnet could not look (another namespace without the privilege to enter it, a firewall it cannot list).
    Unknown,
}

/// Everything `nsnet topology` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Topology {
    pub host: HostNode,
    pub networks: Vec<NetworkNode>,
    pub sandboxes: Vec<SandboxNode>,
    /// Kernel objects that carry this state dir's tag but that no record owns (`nsnet gc` deletes them).
    pub strays: Vec<Stray>,
    /// One line per broken item, naming it and what is wrong: empty when records and kernel agree.
    pub broken: Vec<String>,
    /// What could not be checked, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The host nsnet runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostNode {
    pub name: String,
    /// The interface of the default route, when there is one.
    pub uplink: Option<Uplink>,
}

/// The host's way out: the default route's interface and gateway (the IPv4 one's, else the IPv6 one's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Uplink {
    pub interface: String,
    pub addresses: Vec<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    /// Its global IPv6 addresses (link-local ones left out); left out of the JSON when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses6: Vec<Ipv6Net>,
    /// The gateway of the IPv6 default route on it, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
}

/// One network on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkNode {
    pub name: String,
    /// `bridge`, `veth`, or `overlay/vxlan` / `overlay/host-gw`.
    pub driver: String,
    /// The bridge, or the host end of a veth network, holding the gateway.
    pub interface: String,
    /// Absent on an IPv6-only network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Net>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// The IPv6 side of a dual-stack or IPv6-only network; absent (and left out of the JSON) on IPv4 ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Net6Node>,
    pub internal: bool,
    pub isolate: bool,
    pub fast_path: bool,
    pub gateway_mode: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay: Option<OverlayNode>,
    pub state: State,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// A network's IPv6 side: its subnet, its gateway (with the fixed link-local address every gateway link
/// holds) and whether IPv6 leaving the host is masqueraded (NAT66).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Net6Node {
    pub subnet: Ipv6Net,
    pub gateway: Ipv6Addr,
    /// `fe80::1`, on the bridge (or each point-to-point host end) beside the gateway.
    pub link_local: Ipv6Addr,
    pub nat: bool,
}

/// An endpoint's IPv6 side: its global address, the link-local one derived from its MAC, and the gateway its
/// IPv6 default route goes via.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Ep6Node {
    pub address: Ipv6Net,
    pub link_local: Ipv6Addr,
    pub gateway: Ipv6Addr,
}

/// This host's part of an overlay network, and the other hosts as the record knows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OverlayNode {
    pub cluster: Ipv4Net,
    /// The cluster's IPv6 prefix on a dual-stack overlay (this host's IPv6 block is the network's `ipv6`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster6: Option<Ipv6Net>,
    pub backend: String,
    /// The VXLAN device, or the underlay interface (host-gw).
    pub device: String,
    pub vni: u32,
    pub peers: Vec<PeerNode>,
}

/// Another host of an overlay network: its block and where its tunnel (or route) goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerNode {
    pub subnet: Ipv4Net,
    pub underlay: Ipv4Addr,
    /// Its IPv6 block (dual-stack overlays), reached by an onlink route via the block's first address
    /// ([`PeerNode::via6`]), which a permanent neighbour entry binds to [`PeerNode::mac6`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Net>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via6: Option<Ipv6Addr>,
    /// The VTEP's MAC (vxlan), the underlay interface's (host-gw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac6: Option<Mac>,
    pub state: State,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// One sandbox: a namespace and its endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SandboxNode {
    pub name: String,
    pub netns: PathBuf,
    /// nsnet made the namespace (false: `attach`ed).
    pub owned: bool,
    pub endpoints: Vec<EndpointNode>,
    pub state: State,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// A veth pair from a sandbox to a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointNode {
    pub network: String,
    /// The sandbox's end (eth0, ...).
    pub interface: String,
    /// The host's end.
    pub host_interface: String,
    /// Absent on an IPv6-only network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Net>,
    pub mac: Mac,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// The IPv6 side on a dual-stack or IPv6-only network; absent (and left out of the JSON) otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ep6Node>,
    pub default_route: bool,
    pub ports: Vec<PortNode>,
    pub state: State,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// A published port of one address family: host address and port(s) to the sandbox's address and port(s). A
/// port on every address of a dual-stack sandbox is two of these, one per family (one DNAT element each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortNode {
    pub protocol: Proto,
    /// `None`: every host address (of the target's family).
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    /// The sandbox's address this family's packets go to.
    pub target: IpAddr,
    pub container_port: u16,
    /// How many consecutive ports (a range).
    pub count: u16,
    /// `[::1]`: not DNATed but translated at the socket by the cgroup bpf programs (checked in their map).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub translated: bool,
    pub state: State,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

impl PortNode {
    /// `0.0.0.0:8088/tcp -> 10.89.0.2:80`, `[::]:8088/tcp -> [fd00::2]:80` (ranges as `8000-8010`).
    pub fn describe(&self) -> String {
        let range = |start: u16| {
            if self.count > 1 {
                format!("{start}-{}", start.saturating_add(self.count - 1))
            } else {
                start.to_string()
            }
        };
        let host = match (self.host_ip, self.target) {
            (None, IpAddr::V4(_)) => Ipv4Addr::UNSPECIFIED.to_string(),
            (None, IpAddr::V6(_)) => "[::]".to_string(),
            (Some(IpAddr::V6(ip)), _) => format!("[{ip}]"),
            (Some(ip), _) => ip.to_string(),
        };
        let target = match self.target {
            IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let how = if self.translated {
            "  (socket translation)"
        } else {
            ""
        };
        format!(
            "{host}:{}/{} -> {target}:{}{how}",
            range(self.host_port),
            self.protocol,
            range(self.container_port)
        )
    }
}

/// A kernel object of this state dir's that no record owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stray {
    /// `link` or `namespace`.
    pub kind: String,
    pub name: String,
}

/// What the kernel holds, as read for [`build`]: the host's links, its uplink, inside each sandbox, the
/// firewall elements missing, the overlay routes.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub hostname: String,
    pub links: Vec<Link>,
    pub uplink: Option<Uplink>,
    /// By sandbox name; a sandbox with no entry was not looked into (being removed).
    pub inside: BTreeMap<String, Inside>,
    /// Namespaces under /run/netns carrying this state dir's tag.
    pub tagged_namespaces: Vec<String>,
    /// The firewall elements the records want that the firewall lacks (endpoint and port elements only).
    pub missing_rules: Vec<Rule>,
    /// The firewall could not be read for these networks' endpoints, with why.
    pub firewall_unread: Option<String>,
    /// The destinations of nsnet's routes on each overlay network's device; `None`: no such device.
    pub overlay_routes: BTreeMap<String, Option<Vec<Ipv4Net>>>,
    /// nsnet's IPv6 routes and the IPv6 neighbour entries on each dual-stack overlay's device, by device; a
    /// device with no entry was not read (or is not there: [`Facts::overlay_routes`] says).
    pub overlay6: BTreeMap<String, Overlay6>,
    /// The IPv6 addresses on the host links that hold an IPv6 gateway (bridges, point-to-point host ends), by
    /// link name; a link with no entry was not read.
    pub gateway_addresses6: BTreeMap<String, Vec<Ipv6Net>>,
    /// The `[::1]` translation's ports, as (protocol number, port), when its programs are all there; `None`:
    /// no programs (or not all of them). Read only when a sandbox publishes on `[::1]`.
    pub loopback6_ports: Option<Vec<(u32, u16)>>,
    /// This host can have the `[::1]` translation's programs (cgroup2, bpf): without them, a port on every
    /// address is published without it, and that is no breakage.
    pub loopback6_supported: bool,
}

/// What a dual-stack overlay's device holds for its peers' IPv6 blocks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Overlay6 {
    /// nsnet's IPv6 routes through the device: destination and next hop.
    pub routes: Vec<(Ipv6Net, Ipv6Addr)>,
    /// Its IPv6 neighbour entries: address and MAC.
    pub neighbours: Vec<(Ipv6Addr, [u8; 6])>,
}

/// One link inside a sandbox's namespace: its name, MAC and addresses (read for the endpoints' links only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InsideLink {
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub addresses: Vec<Ipv4Net>,
    /// IPv6 addresses, link-local ones included.
    pub addresses6: Vec<Ipv6Net>,
}

/// A sandbox's namespace as seen from inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inside {
    /// The namespace is not there (or its path names another one now).
    Gone,
    /// It is there, but could not be entered or read (the reason).
    Unreadable(String),
    /// Its links.
    Links(Vec<InsideLink>),
}

/// The picture of `networks` and `sandboxes` as the kernel (`facts`) has them; `tag` is this state dir's
/// tag on the links and namespaces it made.
pub fn build(
    networks: &[NetworkRecord],
    sandboxes: &[Sandbox],
    facts: &Facts,
    tag: &str,
) -> Topology {
    let by_name: BTreeMap<&str, &Link> = facts.links.iter().map(|l| (l.name.as_str(), l)).collect();
    let mut notes = Vec::new();
    if let Some(why) = &facts.firewall_unread {
        notes.push(format!("published ports not checked: {why}"));
    }
    let nets: Vec<NetworkNode> = networks
        .iter()
        .map(|r| network_node(r, facts, &by_name))
        .collect();
    let sbs: Vec<SandboxNode> = sandboxes
        .iter()
        .map(|sb| sandbox_node(sb, networks, facts, &by_name))
        .collect();
    if sbs
        .iter()
        .any(|s| s.state == State::Unknown || s.endpoints.iter().any(|e| e.state == State::Unknown))
    {
        notes.push(
            "some namespaces could not be looked into; run nsnet topology as root to check them"
                .into(),
        );
    }

    // The reverse: what carries this state dir's tag and no record owns. A retired veth (renamed, in its
    // group) is a removal's, on its way out through the reaper: not a stray.
    let mut owned: HashSet<&str> = networks
        .iter()
        .map(|n| n.settings.interface.as_str())
        .collect();
    owned.extend(networks.iter().filter_map(|n| n.settings.overlay_device()));
    owned.extend(
        sandboxes
            .iter()
            .flat_map(|s| s.endpoints.iter().map(|e| e.host_interface.as_str())),
    );
    let mut strays: Vec<Stray> = facts
        .links
        .iter()
        .filter(|l| l.alias.as_deref() == Some(tag) && l.group != RETIRED_GROUP)
        .filter(|l| !owned.contains(l.name.as_str()))
        .map(|l| Stray {
            kind: "link".into(),
            name: l.name.clone(),
        })
        .collect();
    let spaces: HashSet<PathBuf> = sandboxes.iter().map(|s| s.netns.clone()).collect();
    strays.extend(
        facts
            .tagged_namespaces
            .iter()
            .filter(|n| !spaces.contains(&crate::netns::named_path(n)))
            .map(|n| Stray {
                kind: "namespace".into(),
                name: n.clone(),
            }),
    );

    let mut t = Topology {
        host: HostNode {
            name: facts.hostname.clone(),
            uplink: facts.uplink.clone(),
        },
        networks: nets,
        sandboxes: sbs,
        strays,
        broken: vec![],
        notes,
    };
    t.broken = broken_lines(&t);
    t
}

fn state_of(problems: &[String]) -> State {
    if problems.is_empty() {
        State::Ok
    } else {
        State::Broken
    }
}

fn network_node(r: &NetworkRecord, facts: &Facts, links: &BTreeMap<&str, &Link>) -> NetworkNode {
    let n = &r.settings;
    let mut problems = Vec::new();
    let what = match n.driver {
        Driver::Bridge => "bridge",
        Driver::Veth => "host end",
    };
    let present = links.contains_key(n.interface.as_str());
    if !n.removing && !present {
        problems.push(format!("{what} {} is missing", n.interface));
    }
    // The bridge holds the IPv6 gateway side (a point-to-point network's host ends are its endpoints').
    if !n.removing && present && n.driver == Driver::Bridge && n.options.host_gateway {
        lost_gateway6(n, &n.interface, facts, &mut problems);
    }
    let overlay = n.overlay.as_ref().map(|o| {
        let routes = facts.overlay_routes.get(&o.device);
        if !n.removing && o.backend == OverlayBackend::Vxlan && matches!(routes, Some(None)) {
            problems.push(format!("VXLAN device {} is missing", o.device));
        }
        let peers = o
            .peers
            .iter()
            .map(|p| {
                let mut problems = Vec::new();
                match routes {
                    Some(Some(dsts)) if !dsts.contains(&p.subnet) => problems.push(format!(
                        "no route to {} via {} (the agent puts it back)",
                        p.subnet, o.device
                    )),
                    Some(None) => problems.push(format!("{} is missing", o.device)),
                    _ => {}
                }
                let gateway6 = p.gateway6(o.backend);
                if let (Some((block, via, mac)), Some(have)) =
                    (gateway6, facts.overlay6.get(&o.device))
                {
                    lost_peer6(&o.device, block, via, mac, have, &mut problems);
                }
                PeerNode {
                    subnet: p.subnet,
                    underlay: p.underlay,
                    subnet6: p.subnet6,
                    via6: gateway6.map(|(_, via, _)| via),
                    mac6: gateway6.map(|(_, _, mac)| mac),
                    state: state_of(&problems),
                    problems,
                }
            })
            .collect();
        OverlayNode {
            cluster: o.cluster,
            cluster6: o.cluster6,
            backend: o.backend.to_string(),
            device: o.device.clone(),
            vni: o.vni,
            peers,
        }
    });
    let driver = match &n.overlay {
        Some(o) => format!("overlay/{}", o.backend),
        None => n.driver.to_string(),
    };
    NetworkNode {
        name: n.name.clone(),
        driver,
        interface: n.interface.clone(),
        subnet: n.subnet,
        gateway: n.gateway,
        ipv6: n.ipv6.map(|v6| Net6Node {
            subnet: v6.subnet,
            gateway: v6.gateway,
            link_local: crate::plan::build::GATEWAY_LINK_LOCAL6,
            nat: v6.nat,
        }),
        internal: n.internal,
        isolate: n.isolate,
        fast_path: n.fast_path && n.driver == Driver::Bridge,
        gateway_mode: n.options.gateway_mode.to_string(),
        overlay,
        state: if n.removing {
            State::Removing
        } else {
            state_of(&problems)
        },
        problems,
    }
}

/// What the kernel lacks of a peer's IPv6 block on overlay device `device`: the permanent neighbour entry
/// binding `via` to `mac`, and the onlink route to `block` via `via`.
fn lost_peer6(
    device: &str,
    block: Ipv6Net,
    via: Ipv6Addr,
    mac: Mac,
    have: &Overlay6,
    problems: &mut Vec<String>,
) {
    if !have.neighbours.contains(&(via, mac.0)) {
        problems.push(format!(
            "no IPv6 neighbour entry {via} -> {mac} on {device} (the agent puts it back)"
        ));
    }
    if !have.routes.contains(&(block, via)) {
        problems.push(format!(
            "no IPv6 route to {block} via {via} on {device} (the agent puts it back)"
        ));
    }
}

/// The IPv6 gateway addresses (`fe80::1`, the gateway) network `n` wants on `link` that it lacks.
fn lost_gateway6(n: &crate::model::Network, link: &str, facts: &Facts, problems: &mut Vec<String>) {
    let Some(have) = facts.gateway_addresses6.get(link) else {
        return;
    };
    for want in crate::plan::build::gateway_addresses6(n) {
        if let IpNet::V6(want) = want {
            if !have.contains(&want) {
                problems.push(format!("{link} has lost IPv6 address {want}"));
            }
        }
    }
}

fn sandbox_node(
    sb: &Sandbox,
    networks: &[NetworkRecord],
    facts: &Facts,
    links: &BTreeMap<&str, &Link>,
) -> SandboxNode {
    let inside = facts.inside.get(&sb.name);
    let mut problems = Vec::new();
    if inside == Some(&Inside::Gone) {
        problems.push(format!("namespace {} is gone", sb.netns.display()));
    }
    let endpoints = sb
        .endpoints
        .iter()
        .map(|ep| {
            let net = networks.iter().find(|n| n.settings.name == ep.network);
            let mut problems = Vec::new();
            let removing = sb.removing || ep.removing;
            if !removing {
                endpoint_problems(ep, net, inside, links, facts, &mut problems);
            }
            let rules = crate::plan::build::endpoint_rules(ep);
            let ports = ep
                .ports
                .iter()
                .flat_map(|m| port_nodes(m, ep, net, &rules, removing, facts))
                .collect();
            // The endpoint's first rule is its anti-spoofing one.
            let anti_spoofing = crate::plan::build::endpoint_rules(ep).into_iter().next();
            if !removing
                && anti_spoofing.is_some_and(|r| {
                    matches!(r, Rule::Endpoint { .. }) && facts.missing_rules.contains(&r)
                })
            {
                problems.push("the firewall lacks its anti-spoofing element".into());
            }
            let state = if removing {
                State::Removing
            } else if problems.is_empty() && matches!(inside, Some(Inside::Unreadable(_))) {
                State::Unknown
            } else {
                state_of(&problems)
            };
            EndpointNode {
                network: ep.network.clone(),
                interface: ep.interface.clone(),
                host_interface: ep.host_interface.clone(),
                address: ep.address,
                mac: ep.mac,
                gateway: ep.gateway,
                ipv6: ep.ipv6.map(|e6| Ep6Node {
                    address: e6.address,
                    link_local: ep.mac.link_local6(),
                    gateway: e6.gateway,
                }),
                default_route: ep.default_route,
                ports,
                state,
                problems,
            }
        })
        .collect();
    let state = if sb.removing {
        State::Removing
    } else if !problems.is_empty() {
        State::Broken
    } else if matches!(inside, Some(Inside::Unreadable(_))) {
        State::Unknown
    } else {
        State::Ok
    };
    SandboxNode {
        name: sb.name.clone(),
        netns: sb.netns.clone(),
        owned: sb.owned,
        endpoints,
        state,
        problems,
    }
}

/// The published port `m` of `ep`, one node per family it reaches: each DNAT element in `rules` (the
/// endpoint's), checked against the firewall, and `[::1]`'s socket translation, checked in its map (which
/// also carries an IPv6 port on every address: its IPv6 node says when the map lacks it).
fn port_nodes(
    m: &crate::portmap::PortMapping,
    ep: &crate::model::Endpoint,
    net: Option<&NetworkRecord>,
    rules: &[Rule],
    removing: bool,
    facts: &Facts,
) -> Vec<PortNode> {
    let translated = net
        .map(|n| crate::plan::build::loopback_ports(&n.settings, ep))
        .unwrap_or_default()
        .iter()
        .any(|l| l.proto == m.protocol && l.host_port == m.host_port);
    let node = |target: IpAddr, translated: bool, problems: Vec<String>, unread: bool| PortNode {
        protocol: m.protocol,
        host_ip: m.host_ip,
        host_port: m.host_port,
        target,
        container_port: m.container_port,
        count: m.count,
        translated,
        state: match (removing, unread) {
            (true, _) => State::Removing,
            (false, true) => State::Unknown,
            (false, false) => state_of(&problems),
        },
        problems,
    };
    let mut out: Vec<PortNode> = rules
        .iter()
        .filter_map(|r| match r {
            Rule::Port { mapping, target } if mapping == m => Some(*target),
            _ => None,
        })
        .map(|target| {
            let rule = Rule::Port {
                mapping: *m,
                target,
            };
            let mut problems = Vec::new();
            if !removing && facts.missing_rules.contains(&rule) {
                let family = if target.is_ipv6() { "IPv6 " } else { "" };
                problems.push(format!("the firewall lacks its {family}DNAT element"));
            }
            // A host without the programs publishes on every address without the translation.
            if !removing && target.is_ipv6() && translated {
                loopback6_problems(m, facts, !facts.loopback6_supported, &mut problems);
            }
            node(target, false, problems, facts.firewall_unread.is_some())
        })
        .collect();
    let loopback6 = m.host_ip.is_some_and(|ip| ip.is_ipv6() && ip.is_loopback());
    if let (true, Some(e6)) = (loopback6, ep.ipv6) {
        let mut problems = Vec::new();
        if !removing {
            loopback6_problems(m, facts, false, &mut problems);
        }
        out.push(node(e6.address.addr().into(), true, problems, false));
    }
    out
}

/// What the `[::1]` translation lacks of mapping `m`: its programs (unless `without` is fine: the host
/// cannot have them), or a port in their map.
fn loopback6_problems(
    m: &crate::portmap::PortMapping,
    facts: &Facts,
    without: bool,
    problems: &mut Vec<String>,
) {
    let proto = match m.protocol {
        Proto::Tcp => 6,
        Proto::Udp => 17,
    };
    match &facts.loopback6_ports {
        Some(have) => {
            if let Some(p) = m.host_ports().find(|p| !have.contains(&(proto, *p))) {
                problems.push(format!(
                    "the [::1] translation's map lacks {p}/{}",
                    m.protocol
                ));
            }
        }
        None if !without => {
            problems.push("the [::1] translation's cgroup bpf programs are missing".into())
        }
        None => {}
    }
}

/// What is wrong with one endpoint: its host end, its bridge port (or a point-to-point host end's IPv6
/// gateway side), and inside the sandbox its interface, MAC and addresses (IPv6 ones with the link-local).
fn endpoint_problems(
    ep: &crate::model::Endpoint,
    net: Option<&NetworkRecord>,
    inside: Option<&Inside>,
    links: &BTreeMap<&str, &Link>,
    facts: &Facts,
    problems: &mut Vec<String>,
) {
    let Some(net) = net else {
        problems.push(format!("network {} has no record", ep.network));
        return;
    };
    match links.get(ep.host_interface.as_str()) {
        None => problems.push(format!("host end {} is missing", ep.host_interface)),
        Some(link) if net.settings.driver == Driver::Bridge => {
            let bridge = links.get(net.settings.interface.as_str()).map(|b| b.index);
            if bridge.is_some() && link.master != bridge {
                problems.push(format!(
                    "host end {} is not on bridge {}",
                    ep.host_interface, net.settings.interface
                ));
            }
        }
        Some(_) => lost_gateway6(&net.settings, &ep.host_interface, facts, problems),
    }
    let Some(Inside::Links(inside)) = inside else {
        return;
    };
    match inside.iter().find(|l| l.name == ep.interface) {
        None => problems.push(format!("{} is missing inside the sandbox", ep.interface)),
        Some(link) => {
            if link.mac.is_some_and(|m| m != ep.mac.0) {
                problems.push(format!("{} has another MAC than {}", ep.interface, ep.mac));
            }
            if let Some(address) = ep.address.filter(|a| !link.addresses.contains(a)) {
                problems.push(format!("{} has lost address {address}", ep.interface));
            }
            for address in crate::plan::build::endpoint_addresses6(ep) {
                if !link.addresses6.contains(&address) {
                    problems.push(format!("{} has lost IPv6 address {address}", ep.interface));
                }
            }
        }
    }
}

/// One line per broken item: `sandbox web-1: host end veth1234 is missing`.
fn broken_lines(t: &Topology) -> Vec<String> {
    let mut out = Vec::new();
    for n in t.networks.iter().filter(|n| n.state == State::Broken) {
        out.push(format!("network {}: {}", n.name, n.problems.join("; ")));
    }
    for n in &t.networks {
        for p in n.overlay.iter().flat_map(|o| &o.peers) {
            if p.state == State::Broken {
                out.push(format!(
                    "network {} peer {} at {}: {}",
                    n.name,
                    p.subnet,
                    p.underlay,
                    p.problems.join("; ")
                ));
            }
        }
    }
    for s in &t.sandboxes {
        if s.state == State::Broken {
            out.push(format!("sandbox {}: {}", s.name, s.problems.join("; ")));
        }
        for e in s.endpoints.iter().filter(|e| e.state == State::Broken) {
            out.push(format!(
                "sandbox {} {} on {}: {}",
                s.name,
                e.interface,
                e.network,
                e.problems.join("; ")
            ));
        }
        for e in &s.endpoints {
            for p in e.ports.iter().filter(|p| p.state == State::Broken) {
                out.push(format!(
                    "sandbox {} port {}: {}",
                    s.name,
                    p.describe(),
                    p.problems.join("; ")
                ));
            }
        }
    }
    for s in &t.strays {
        out.push(format!(
            "{} {}: carries this state dir's tag, but no record owns it (`nsnet gc` deletes it)",
            s.kind, s.name
        ));
    }
    out
}

impl Topology {
    /// The part about `name`: the network of that name with its sandboxes (their endpoints on it), and the
    /// sandbox of that name with its networks. `None` when there is neither.
    pub fn only(&self, name: &str) -> Option<Topology> {
        let net = self.networks.iter().find(|n| n.name == name);
        let sb = self.sandboxes.iter().find(|s| s.name == name);
        if net.is_none() && sb.is_none() {
            return None;
        }
        let mut sandboxes: Vec<SandboxNode> = Vec::new();
        if let Some(net) = net {
            for s in &self.sandboxes {
                let eps: Vec<EndpointNode> = s
                    .endpoints
                    .iter()
                    .filter(|e| e.network == net.name)
                    .cloned()
                    .collect();
                if !eps.is_empty() || s.name == name {
                    sandboxes.push(SandboxNode {
                        endpoints: if s.name == name {
                            s.endpoints.clone()
                        } else {
                            eps
                        },
                        ..s.clone()
                    });
                }
            }
        } else if let Some(sb) = sb {
            sandboxes.push(sb.clone());
        }
        let wanted: HashSet<&str> = sandboxes
            .iter()
            .flat_map(|s| s.endpoints.iter().map(|e| e.network.as_str()))
            .chain(net.map(|n| n.name.as_str()))
            .collect();
        let networks = self
            .networks
            .iter()
            .filter(|n| wanted.contains(n.name.as_str()))
            .cloned()
            .collect();
        let mut t = Topology {
            host: self.host.clone(),
            networks,
            sandboxes,
            strays: vec![],
            broken: vec![],
            notes: self.notes.clone(),
        };
        t.broken = broken_lines(&t);
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, Network, Published};
    use crate::portmap::PortMapping;

    const TAG: &str = "nsnet:/var/lib/nsnet";

    fn link(index: u32, name: &str, master: Option<u32>, tagged: bool) -> Link {
        Link {
            index,
            name: name.into(),
            mac: None,
            mtu: Some(1500),
            master,
            alias: tagged.then(|| TAG.to_string()),
            forwarding: true,
            group: 0,
        }
    }

    fn endpoint(net: &Network, ip: [u8; 4], host: &str, ports: Vec<PortMapping>) -> Endpoint {
        let addr = Ipv4Addr::from(ip);
        Endpoint {
            network: net.name.clone(),
            interface: "eth0".into(),
            host_interface: host.into(),
            mac: Mac::for_ipv4(addr),
            address: Some(Ipv4Net::new(addr, 24).expect("prefix")),
            gateway: net.gateway,
            default_route: true,
            mtu: 1500,
            ports,
            removing: false,
            aliases: vec![],
            ipv6: None,
        }
    }

    fn lo() -> InsideLink {
        InsideLink {
            name: "lo".into(),
            ..InsideLink::default()
        }
    }

    fn sandbox(name: &str, endpoints: Vec<Endpoint>) -> Sandbox {
        Sandbox {
            name: name.into(),
            netns: crate::netns::named_path(name),
            owned: true,
            netns_id: None,
            cni: false,
            endpoints,
            removing: false,
            dns_servers: vec![],
        }
    }

    /// Two networks, three sandboxes (one with a published port), and the kernel agreeing with all of it.
    fn world() -> (Vec<NetworkRecord>, Vec<Sandbox>, Facts) {
        let web = Network::bridge(
            "web",
            "172.16.0.0/24".parse().expect("subnet"),
            Ipv4Addr::new(172, 16, 0, 1),
            "nsbr-web",
        );
        let db = Network {
            internal: true,
            ..Network::bridge(
                "db",
                "172.16.1.0/24".parse().expect("subnet"),
                Ipv4Addr::new(172, 16, 1, 1),
                "nsbr-db",
            )
        };
        let port = PortMapping {
            host_ip: None,
            host_port: 8088,
            container_port: 80,
            count: 1,
            protocol: Proto::Tcp,
        };
        let sbs = vec![
            sandbox(
                "app",
                vec![endpoint(&web, [172, 16, 0, 2], "veth-app", vec![port])],
            ),
            sandbox(
                "api",
                vec![endpoint(&web, [172, 16, 0, 3], "veth-api", vec![])],
            ),
            sandbox(
                "pg",
                vec![endpoint(&db, [172, 16, 1, 2], "veth-pg", vec![])],
            ),
        ];
        let mut web = NetworkRecord::new(web);
        web.allocations.published.push(Published {
            sandbox: "app".into(),
            mapping: port,
        });
        let nets = vec![web, NetworkRecord::new(db)];
        let mut facts = Facts {
            hostname: "node1".into(),
            links: vec![
                link(1, "lo", None, false),
                link(2, "eth0", None, false),
                link(10, "nsbr-web", None, true),
                link(11, "nsbr-db", None, true),
                link(20, "veth-app", Some(10), true),
                link(21, "veth-api", Some(10), true),
                link(22, "veth-pg", Some(11), true),
            ],
            uplink: Some(Uplink {
                interface: "eth0".into(),
                addresses: vec!["192.0.2.10/24".parse().expect("address")],
                gateway: Some(Ipv4Addr::new(192, 0, 2, 1)),
                addresses6: vec![],
                gateway6: None,
            }),
            tagged_namespaces: vec!["app".into(), "api".into(), "pg".into()],
            ..Default::default()
        };
        for sb in &sbs {
            let ep = &sb.endpoints[0];
            facts.inside.insert(
                sb.name.clone(),
                Inside::Links(vec![
                    lo(),
                    InsideLink {
                        name: "eth0".into(),
                        mac: Some(ep.mac.0),
                        addresses: ep.address.into_iter().collect(),
                        addresses6: crate::plan::build::endpoint_addresses6(ep),
                    },
                ]),
            );
        }
        (nets, sbs, facts)
    }

    #[test]
    fn an_agreeing_kernel_is_all_ok() {
        let (nets, sbs, facts) = world();
        let t = build(&nets, &sbs, &facts, TAG);
        assert!(t.broken.is_empty(), "{:#?}", t.broken);
        assert!(t.strays.is_empty());
        assert_eq!(t.host.name, "node1");
        assert_eq!(t.networks.len(), 2);
        assert!(t.networks[1].internal);
        assert_eq!(t.sandboxes.len(), 3);
        let app = &t.sandboxes[0];
        assert_eq!(app.endpoints[0].host_interface, "veth-app");
        assert_eq!(app.endpoints[0].mac.to_string(), "02:6e:ac:10:00:02");
        assert_eq!(
            app.endpoints[0].ports[0].describe(),
            "0.0.0.0:8088/tcp -> 172.16.0.2:80"
        );
        assert!(t.sandboxes.iter().all(|s| s.state == State::Ok));
    }

    #[test]
    fn a_missing_host_veth_breaks_exactly_its_endpoint() {
        let (nets, sbs, mut facts) = world();
        facts.links.retain(|l| l.name != "veth-api");
        // The kernel deletes both ends of a pair.
        facts.inside.insert("api".into(), Inside::Links(vec![lo()]));
        let t = build(&nets, &sbs, &facts, TAG);
        assert_eq!(t.broken.len(), 1, "{:#?}", t.broken);
        assert!(t.broken[0].starts_with("sandbox api eth0 on web: host end veth-api is missing"));
        let api = &t.sandboxes[1];
        assert_eq!(api.state, State::Ok);
        assert_eq!(api.endpoints[0].state, State::Broken);
        assert_eq!(api.endpoints[0].problems.len(), 2);
        assert!(t.networks.iter().all(|n| n.state == State::Ok));
    }

    #[test]
    fn a_gone_namespace_breaks_its_sandbox() {
        let (nets, sbs, mut facts) = world();
        facts.inside.insert("pg".into(), Inside::Gone);
        facts.links.retain(|l| l.name != "veth-pg");
        facts.tagged_namespaces.retain(|n| n != "pg");
        let t = build(&nets, &sbs, &facts, TAG);
        assert_eq!(t.sandboxes[2].state, State::Broken);
        assert!(t.broken[0].contains("namespace /run/netns/pg is gone"));
        assert!(t.sandboxes[..2].iter().all(|s| s.state == State::Ok));
    }

    #[test]
    fn wrong_mac_lost_address_and_bridge_port_are_named() {
        let (nets, sbs, mut facts) = world();
        facts.inside.insert(
            "app".into(),
            Inside::Links(vec![InsideLink {
                name: "eth0".into(),
                mac: Some([2, 0, 0, 0, 0, 1]),
                ..InsideLink::default()
            }]),
        );
        if let Some(l) = facts.links.iter_mut().find(|l| l.name == "veth-app") {
            l.master = None;
        }
        let t = build(&nets, &sbs, &facts, TAG);
        let p = &t.sandboxes[0].endpoints[0].problems;
        assert_eq!(p.len(), 3, "{p:#?}");
        assert!(p[0].contains("not on bridge nsbr-web"));
        assert!(p[1].contains("another MAC"));
        assert!(p[2].contains("lost address 172.16.0.2/24"));
    }

    #[test]
    fn missing_bridge_unowned_links_and_namespaces_and_firewall_elements() {
        let (nets, sbs, mut facts) = world();
        facts.links.retain(|l| l.name != "nsbr-db");
        facts.links.push(link(30, "vethdead", Some(10), true));
        facts.links.push(link(31, "someones", None, false));
        facts.links.push(Link {
            group: RETIRED_GROUP,
            ..link(32, "nsrt00000001", None, true)
        });
        facts.tagged_namespaces.push("leftover".into());
        facts.missing_rules.push(Rule::Port {
            mapping: sbs[0].endpoints[0].ports[0],
            target: Ipv4Addr::new(172, 16, 0, 2).into(),
        });
        let t = build(&nets, &sbs, &facts, TAG);
        assert_eq!(t.networks[1].state, State::Broken);
        assert_eq!(t.networks[1].problems, ["bridge nsbr-db is missing"]);
        let strays: Vec<&str> = t.strays.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(strays, ["vethdead", "leftover"]);
        assert_eq!(t.sandboxes[0].endpoints[0].ports[0].state, State::Broken);
        assert_eq!(t.sandboxes[0].endpoints[0].state, State::Ok);
        assert_eq!(t.broken.len(), 4, "{:#?}", t.broken);
    }

    #[test]
    fn removing_and_unreadable_are_not_broken() {
        let (nets, mut sbs, mut facts) = world();
        sbs[0].removing = true;
        facts.inside.remove("app");
        facts.links.retain(|l| l.name != "veth-app");
        facts
            .inside
            .insert("api".into(), Inside::Unreadable("EPERM".into()));
        let t = build(&nets, &sbs, &facts, TAG);
        assert!(t.broken.is_empty(), "{:#?}", t.broken);
        assert_eq!(t.sandboxes[0].state, State::Removing);
        assert_eq!(t.sandboxes[1].state, State::Unknown);
        assert!(!t.notes.is_empty());
    }

    #[test]
    fn overlay_peers_without_routes_are_broken() {
        let (mut nets, sbs, mut facts) = world();
        nets[0].settings.overlay = Some(crate::model::Overlay {
            cluster: "172.16.0.0/16".parse().expect("cluster"),
            cluster6: None,
            backend: OverlayBackend::Vxlan,
            vni: 7,
            port: 4789,
            device: "nsvx-web".into(),
            vtep_mac: Mac([2, 0, 0, 0, 0, 9]),
            peers: vec![
                crate::model::Peer {
                    subnet: "172.16.5.0/24".parse().expect("block"),
                    underlay: Ipv4Addr::new(192, 0, 2, 11),
                    vtep_mac: None,
                    subnet6: None,
                    underlay_mac: None,
                },
                crate::model::Peer {
                    subnet: "172.16.6.0/24".parse().expect("block"),
                    underlay: Ipv4Addr::new(192, 0, 2, 12),
                    vtep_mac: None,
                    subnet6: None,
                    underlay_mac: None,
                },
            ],
            underlay_qdisc: false,
        });
        facts.links.push(link(40, "nsvx-web", None, true));
        facts.overlay_routes.insert(
            "nsvx-web".into(),
            Some(vec!["172.16.5.0/24".parse().expect("block")]),
        );
        let t = build(&nets, &sbs, &facts, TAG);
        let o = t.networks[0].overlay.as_ref().expect("overlay");
        assert_eq!(t.networks[0].driver, "overlay/vxlan");
        assert_eq!(o.peers[0].state, State::Ok);
        assert_eq!(o.peers[1].state, State::Broken);
        assert!(t.strays.is_empty());
        assert_eq!(t.broken.len(), 1);
        // An IPv4-only overlay's JSON has none of the IPv6 fields.
        let json = serde_json::to_string(o).expect("json");
        assert!(
            !json.contains("cluster6") && !json.contains("subnet6") && !json.contains("via6"),
            "{json}"
        );
    }

    /// A dual-stack overlay: each peer's IPv6 block with its route's next hop and neighbour MAC; a lost IPv6
    /// route or neighbour entry breaks exactly that peer, and names what is lost.
    #[test]
    fn overlay_peers_lose_ipv6_routes_and_neighbours() {
        let (mut nets, sbs, mut facts) = world();
        let peer = |n: u8| crate::model::Peer {
            subnet: format!("172.16.{n}.0/24").parse().expect("block"),
            underlay: Ipv4Addr::new(192, 0, 2, 10 + n),
            vtep_mac: Some(Mac([2, 0, 0, 0, 0, n])),
            subnet6: Some(format!("fd00:10:244:{n}::/64").parse().expect("block6")),
            underlay_mac: None,
        };
        nets[0].settings.overlay = Some(crate::model::Overlay {
            cluster: "172.16.0.0/16".parse().expect("cluster"),
            cluster6: Some("fd00:10:244::/56".parse().expect("cluster6")),
            backend: OverlayBackend::Vxlan,
            vni: 7,
            port: 4789,
            device: "nsvx-web".into(),
            vtep_mac: Mac([2, 0, 0, 0, 0, 9]),
            peers: vec![peer(5), peer(6), peer(7)],
            underlay_qdisc: false,
        });
        facts.links.push(link(40, "nsvx-web", None, true));
        facts.overlay_routes.insert(
            "nsvx-web".into(),
            Some(
                ["172.16.5.0/24", "172.16.6.0/24", "172.16.7.0/24"]
                    .iter()
                    .map(|b| b.parse().expect("block"))
                    .collect(),
            ),
        );
        let via = |n: u8| Ipv6Addr::new(0xfd00, 0x10, 0x244, n.into(), 0, 0, 0, 0);
        let block = |n: u8| Ipv6Net::new(via(n), 64).expect("block6");
        facts.overlay6.insert(
            "nsvx-web".into(),
            Overlay6 {
                // Peer 6 lost its route, peer 7 its neighbour entry.
                routes: vec![(block(5), via(5)), (block(7), via(7))],
                neighbours: vec![(via(5), [2, 0, 0, 0, 0, 5]), (via(6), [2, 0, 0, 0, 0, 6])],
            },
        );
        let t = build(&nets, &sbs, &facts, TAG);
        let o = t.networks[0].overlay.as_ref().expect("overlay");
        assert_eq!(
            o.cluster6,
            Some("fd00:10:244::/56".parse().expect("cluster6"))
        );
        assert_eq!(o.peers[0].state, State::Ok);
        assert_eq!(o.peers[0].subnet6, Some(block(5)));
        assert_eq!(o.peers[0].via6, Some(via(5)));
        assert_eq!(o.peers[0].mac6, Some(Mac([2, 0, 0, 0, 0, 5])));
        assert_eq!(o.peers[1].state, State::Broken);
        assert_eq!(
            o.peers[1].problems,
            vec!["no IPv6 route to fd00:10:244:6::/64 via fd00:10:244:6:: on nsvx-web (the agent puts it back)"]
        );
        assert_eq!(o.peers[2].state, State::Broken);
        assert_eq!(
            o.peers[2].problems,
            vec!["no IPv6 neighbour entry fd00:10:244:7:: -> 02:00:00:00:00:07 on nsvx-web (the agent puts it back)"]
        );
        assert_eq!(t.broken.len(), 2, "{:#?}", t.broken);
        assert_eq!(t.networks[0].state, State::Ok);
    }

    #[test]
    fn only_keeps_one_network_or_one_sandbox() {
        let (nets, sbs, facts) = world();
        let t = build(&nets, &sbs, &facts, TAG);
        let web = t.only("web").expect("network web");
        assert_eq!(web.networks.len(), 1);
        let names: Vec<&str> = web.sandboxes.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["app", "api"]);
        let pg = t.only("pg").expect("sandbox pg");
        assert_eq!(pg.sandboxes.len(), 1);
        assert_eq!(pg.networks[0].name, "db");
        assert!(t.only("nope").is_none());
    }

    /// `world` with network web dual stack and sandbox app on it, the kernel agreeing.
    fn world6() -> (Vec<NetworkRecord>, Vec<Sandbox>, Facts) {
        let (mut nets, mut sbs, mut facts) = world();
        nets[0].settings.ipv6 = Some(crate::model::Net6 {
            subnet: "fd00:1::/64".parse().expect("subnet"),
            gateway: "fd00:1::1".parse().expect("gateway"),
            nat: true,
        });
        let ep = &mut sbs[0].endpoints[0];
        ep.ipv6 = Some(crate::model::Ep6 {
            address: "fd00:1::2/64".parse().expect("address"),
            gateway: "fd00:1::1".parse().expect("gateway"),
        });
        let ep = ep.clone();
        facts.inside.insert(
            "app".into(),
            Inside::Links(vec![
                lo(),
                InsideLink {
                    name: "eth0".into(),
                    mac: Some(ep.mac.0),
                    addresses: ep.address.into_iter().collect(),
                    addresses6: crate::plan::build::endpoint_addresses6(&ep),
                },
            ]),
        );
        facts.gateway_addresses6.insert(
            "nsbr-web".into(),
            vec![
                "fe80::1/64".parse().expect("link-local"),
                "fd00:1::1/64".parse().expect("gateway"),
            ],
        );
        (nets, sbs, facts)
    }

    #[test]
    fn a_dual_stack_sandbox_shows_both_families_and_one_port_per_family() {
        let (nets, sbs, facts) = world6();
        let t = build(&nets, &sbs, &facts, TAG);
        assert!(t.broken.is_empty(), "{:#?}", t.broken);
        let v6 = t.networks[0].ipv6.expect("ipv6 side");
        assert_eq!(v6.link_local.to_string(), "fe80::1");
        assert!(v6.nat);
        assert!(t.networks[1].ipv6.is_none());
        let app = &t.sandboxes[0].endpoints[0];
        let e6 = app.ipv6.expect("endpoint ipv6");
        assert_eq!(e6.address.to_string(), "fd00:1::2/64");
        assert_eq!(e6.link_local, app.mac.link_local6());
        let ports: Vec<String> = app.ports.iter().map(PortNode::describe).collect();
        assert_eq!(
            ports,
            [
                "0.0.0.0:8088/tcp -> 172.16.0.2:80",
                "[::]:8088/tcp -> [fd00:1::2]:80"
            ]
        );
        // IPv4-only parts serialize as before: no ipv6 key, no translated flag.
        let json = serde_json::to_string(&t.networks[1]).expect("json");
        assert!(!json.contains("ipv6"), "{json}");
        let json = serde_json::to_string(&t.sandboxes[0].endpoints[0].ports[0]).expect("json");
        assert!(!json.contains("translated"), "{json}");
    }

    #[test]
    fn lost_ipv6_addresses_and_elements_are_broken() {
        let (nets, sbs, mut facts) = world6();
        let ep = sbs[0].endpoints[0].clone();
        facts.inside.insert(
            "app".into(),
            Inside::Links(vec![InsideLink {
                name: "eth0".into(),
                mac: Some(ep.mac.0),
                addresses: ep.address.into_iter().collect(),
                addresses6: vec![],
            }]),
        );
        facts
            .gateway_addresses6
            .insert("nsbr-web".into(), vec!["fd00:1::1/64".parse().expect("gw")]);
        facts.missing_rules.push(Rule::Port {
            mapping: ep.ports[0],
            target: "fd00:1::2".parse::<Ipv6Addr>().expect("target").into(),
        });
        facts
            .missing_rules
            .push(crate::plan::build::endpoint_rules(&ep)[0].clone());
        let t = build(&nets, &sbs, &facts, TAG);
        assert_eq!(
            t.networks[0].problems,
            ["nsbr-web has lost IPv6 address fe80::1/64"]
        );
        let app = &t.sandboxes[0].endpoints[0];
        assert_eq!(app.state, State::Broken);
        assert!(
            app.problems[0].starts_with("eth0 has lost IPv6 address fe80::"),
            "{:#?}",
            app.problems
        );
        assert_eq!(app.problems[1], "eth0 has lost IPv6 address fd00:1::2/64");
        assert_eq!(
            app.problems[2],
            "the firewall lacks its anti-spoofing element"
        );
        assert_eq!(app.ports[0].state, State::Ok);
        assert_eq!(app.ports[1].state, State::Broken);
        assert_eq!(
            app.ports[1].problems,
            ["the firewall lacks its IPv6 DNAT element"]
        );
        assert_eq!(t.broken.len(), 3, "{:#?}", t.broken);
    }

    #[test]
    fn an_ipv6_only_sandbox_and_a_loopback6_port() {
        let (mut nets, mut sbs, mut facts) = world6();
        nets[0].settings.subnet = None;
        nets[0].settings.gateway = None;
        let ep = &mut sbs[0].endpoints[0];
        ep.address = None;
        ep.gateway = None;
        ep.ports.push(PortMapping {
            host_ip: Some("::1".parse().expect("::1")),
            host_port: 9000,
            container_port: 90,
            count: 1,
            protocol: Proto::Tcp,
        });
        let ep = ep.clone();
        facts.inside.insert(
            "app".into(),
            Inside::Links(vec![InsideLink {
                name: "eth0".into(),
                mac: Some(ep.mac.0),
                addresses: vec![],
                addresses6: crate::plan::build::endpoint_addresses6(&ep),
            }]),
        );
        facts.loopback6_ports = Some(vec![(6, 9000), (6, 8088)]);
        let t = build(&nets, &sbs, &facts, TAG);
        assert!(t.broken.is_empty(), "{:#?}", t.broken);
        assert!(t.networks[0].subnet.is_none());
        let ports: Vec<String> = t.sandboxes[0].endpoints[0]
            .ports
            .iter()
            .map(PortNode::describe)
            .collect();
        assert_eq!(
            ports,
            [
                "[::]:8088/tcp -> [fd00:1::2]:80",
                "[::1]:9000/tcp -> [fd00:1::2]:90  (socket translation)"
            ]
        );
        // The map carries the port on every address too.
        facts.loopback6_ports = Some(vec![(6, 9000)]);
        let t = build(&nets, &sbs, &facts, TAG);
        assert_eq!(t.broken.len(), 1, "{:#?}", t.broken);
        assert!(
            t.broken[0].ends_with(
                "[::]:8088/tcp -> [fd00:1::2]:80: the [::1] translation's map lacks 8088/tcp"
            ),
            "{:#?}",
            t.broken
        );
        facts.loopback6_ports = Some(vec![(6, 8088)]);
        let t = build(&nets, &sbs, &facts, TAG);
        assert_eq!(t.broken.len(), 1, "{:#?}", t.broken);
        assert!(
            t.broken[0].ends_with("the [::1] translation's map lacks 9000/tcp"),
            "{:#?}",
            t.broken
        );
        // No programs: broken for [::1], and for every address only where the host can have them.
        facts.loopback6_ports = None;
        let t = build(&nets, &sbs, &facts, TAG);
        assert_eq!(t.broken.len(), 1, "{:#?}", t.broken);
        assert!(
            t.broken[0].ends_with("cgroup bpf programs are missing"),
            "{:#?}",
            t.broken
        );
        facts.loopback6_supported = true;
        let t = build(&nets, &sbs, &facts, TAG);
        assert_eq!(t.broken.len(), 2, "{:#?}", t.broken);
    }
}
