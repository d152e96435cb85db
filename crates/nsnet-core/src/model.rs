//! The records nsnet keeps: networks, sandboxes and their endpoints. Plain data, serialised as JSON by
//! [`crate::store`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::str::FromStr;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::firewall::HostChain;
use crate::portmap::PortMapping;

/// How a network joins sandboxes to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// A Linux bridge holds the gateway address; any number of sandboxes (up to the bridge's 1,024 ports).
    Bridge,
    /// A point-to-point veth pair; the host end holds the gateway address; exactly one sandbox.
    Veth,
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Driver::Bridge => "bridge",
            Driver::Veth => "veth",
        })
    }
}

/// A network's settings: what `networks/NAME.json` holds. What the network has handed out is apart, in
/// [`Allocations`] (its ledger), so a copy of the settings cannot pass for a network nobody uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    pub driver: Driver,
    /// The IPv4 subnet; absent on an IPv6-only network (`--ipv4=false`), and then left out of the record,
    /// so IPv4 and dual-stack records read and write exactly as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Net>,
    /// The IPv4 gateway; absent exactly when `subnet` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// The host-side interface that holds the gateway: the bridge, or the host end of the veth.
    pub interface: String,
    pub internal: bool,
    /// Whether sandboxes on other networks are kept from reaching this one's addresses directly (published
    /// ports stay reachable through the host's addresses).
    #[serde(default = "yes")]
    pub isolate: bool,
    /// IPv4 between two of this network's sandboxes skips the bridge ([`crate::kernel::fastpath`]); off, every
    /// frame crosses the bridge and its netfilter hooks. Bridge networks only.
    #[serde(default = "yes")]
    pub fast_path: bool,
    /// Switches a CNI configuration can turn off (`ipMasq`, `isGateway`, `hairpinMode`).
    #[serde(default, skip_serializing_if = "NetOptions::is_default")]
    pub options: NetOptions,
    pub mtu: u32,
    /// The firewall backend holding this network's rules.
    #[serde(default)]
    pub firewall: crate::firewall::Backend,
    /// The host's own forward chains with a drop policy, found when the network was made: nsnet put narrow
    /// accepts for this network there, and removes them with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_chains: Vec<HostChain>,
    /// Set while `nsnet network rm` deletes the network's links outside the lock: nothing may join it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub removing: bool,
    /// This host's part of a multi-host overlay network, kept by `nsnet agent`: the network's `subnet` is the
    /// host's lease out of the cluster subnet, and its sandboxes reach the other hosts' sandboxes directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<Overlay>,
    /// Sandboxes on the network find each other by name through nsnet's resolver ([`crate::dns`]). Off for
    /// networks recorded before nsnet had names, so an upgrade starts nothing new.
    #[serde(default)]
    pub dns: bool,
    /// Where the resolver forwards names that are not the network's own (`--dns IP`); empty: the host's
    /// resolvers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_servers: Vec<IpAddr>,
    /// The network's IPv6 part, on a dual-stack network (`--ipv6`); absent on IPv4-only networks, whose
    /// records then read and write exactly as before IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Net6>,
}

/// A network's IPv6 part ([`Network::ipv6`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Net6 {
    /// A /48 to /120 (by default a /64 of the host's ULA prefix, [`crate::ipam::ula_prefix`]).
    pub subnet: Ipv6Net,
    /// The gateway's global address (by default the subnet's `::1`). The gateway also holds `fe80::1`.
    pub gateway: Ipv6Addr,
    /// Masquerade IPv6 leaving the host (NAT66, the default, for ULA subnets); off with `--ipv6-nat=false`
    /// for routed global addresses.
    #[serde(default = "yes")]
    pub nat: bool,
}

/// How an overlay network carries traffic between hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverlayBackend {
    /// A VXLAN device; one FDB entry, one neighbour entry and one route per remote host. Works across
    /// routed underlays.
    #[default]
    Vxlan,
    /// One route per remote host via its underlay address: no encapsulation, but every host must be on one
    /// L2 segment.
    HostGw,
}

impl fmt::Display for OverlayBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OverlayBackend::Vxlan => "vxlan",
            OverlayBackend::HostGw => "host-gw",
        })
    }
}

impl FromStr for OverlayBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "vxlan" => Ok(OverlayBackend::Vxlan),
            "host-gw" => Ok(OverlayBackend::HostGw),
            _ => Err(format!(
                "unknown overlay backend '{s}'; use vxlan or host-gw"
            )),
        }
    }
}

/// A host's part in an overlay network ([`Network::overlay`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overlay {
    /// The whole network across every host; this host's subnet is one block of it.
    pub cluster: Ipv4Net,
    /// The cluster's IPv6 prefix on a dual-stack overlay (its network's `ipv6` is this host's block of it);
    /// absent, and left out of the record, on an IPv4-only one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster6: Option<Ipv6Net>,
    pub backend: OverlayBackend,
    pub vni: u32,
    /// The VXLAN UDP port.
    pub port: u16,
    /// The interface peers' traffic leaves by: the VXLAN device nsnet made (vxlan), or the underlay
    /// interface (host-gw, not nsnet's).
    pub device: String,
    /// This host's VTEP MAC (the VXLAN device's address), which the other hosts put in their FDB.
    pub vtep_mac: Mac,
    /// The other hosts as this host last programmed them (from etcd): the agent's record of its peers, so
    /// `gc`, `firewall reload` and a restarted agent know them while etcd is away.
    #[serde(default)]
    pub peers: Vec<Peer>,
    /// host-gw: nsnet made the underlay interface's `ingress` qdisc (it had none) for its fast path's filter
    /// ([`crate::plan::Step::UnderlayFilter`]), so the qdisc goes with that filter when no other filter is
    /// left. Never set for a qdisc that was there: that one is someone else's.
    #[serde(default, skip_serializing_if = "is_false")]
    pub underlay_qdisc: bool,
}

/// A remote host of an overlay network, as one host programs it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Peer {
    /// The host's block of the cluster subnet.
    pub subnet: Ipv4Net,
    /// Its underlay address: where VXLAN packets (or host-gw routes) go.
    pub underlay: Ipv4Addr,
    /// Its VTEP MAC (vxlan backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<Mac>,
    /// Its block of the cluster's IPv6 prefix (dual-stack overlays; absent for a host that leased none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Net>,
    /// host-gw on a dual-stack overlay: the MAC of its underlay interface, which its IPv6 block's route is
    /// bound to by a permanent neighbour entry (an IPv6 route cannot have an IPv4 next hop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay_mac: Option<Mac>,
}

impl Peer {
    /// The IPv6 twin of [`Peer::vxlan_gateway`], for both backends: the first address of the peer's IPv6
    /// block (never handed out), the next hop of an onlink route to the block, bound by a permanent
    /// neighbour entry to [`Peer::mac6`], so no neighbour solicitation ever crosses between hosts. `None`
    /// when the peer has no IPv6 block, or no MAC to bind it to.
    pub fn gateway6(&self, backend: OverlayBackend) -> Option<(Ipv6Net, Ipv6Addr, Mac)> {
        let block = self.subnet6?;
        Some((block, block.network(), self.mac6(backend)?))
    }

    /// The MAC the IPv6 next hop is bound to: the VTEP's (vxlan), the underlay interface's (host-gw).
    pub fn mac6(&self, backend: OverlayBackend) -> Option<Mac> {
        match backend {
            OverlayBackend::Vxlan => self.vtep_mac,
            OverlayBackend::HostGw => self.underlay_mac,
        }
    }

    /// The address the route to this peer's subnet goes via on a VXLAN device: the subnet's first address
    /// (never handed out), bound to the peer's VTEP MAC by a permanent neighbour entry, so nothing ARPs.
    pub fn vxlan_gateway(&self) -> Ipv4Addr {
        self.subnet.network()
    }
}

/// What a network has handed out, as its ledger (`networks/NAME.ledger`) says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocations {
    /// Every address in use, with the sandbox that holds it.
    #[serde(default, rename = "allocations")]
    pub addresses: BTreeMap<Ipv4Addr, String>,
    /// Every published port on this network, with the sandbox it leads to.
    #[serde(default)]
    pub published: Vec<Published>,
    /// The address handed out last: the next one comes after it (next fit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_allocated: Option<Ipv4Addr>,
    /// Every IPv6 address in use (dual-stack networks), with the sandbox that holds it.
    #[serde(
        default,
        rename = "allocations6",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub addresses6: BTreeMap<Ipv6Addr, String>,
    /// The IPv6 address handed out last (next fit, as for IPv4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_allocated6: Option<Ipv6Addr>,
}

impl Allocations {
    /// Give back every address and port `sandbox` holds here.
    pub fn release(&mut self, sandbox: &str) {
        self.addresses.retain(|_, owner| owner != sandbox);
        self.addresses6.retain(|_, owner| owner != sandbox);
        self.published.retain(|p| p.sandbox != sandbox);
    }

    /// Hand the addresses `sandbox` holds here to `holder` (a retired veth, `~NAME`, which keeps them until
    /// it is gone), and give back its ports.
    pub fn retire(&mut self, sandbox: &str, holder: &str) {
        for owner in self
            .addresses
            .values_mut()
            .chain(self.addresses6.values_mut())
            .filter(|o| *o == sandbox)
        {
            *owner = holder.to_string();
        }
        self.published.retain(|p| p.sandbox != sandbox);
    }

    /// The allocations as they will be once every retired veth (`~NAME`) is gone: what an exhausted pool can
    /// still give, by deleting them first (see `Nsnet::reclaim_retired`).
    pub fn without_retired(&self) -> Allocations {
        let mut out = self.clone();
        out.addresses.retain(|_, owner| !owner.starts_with('~'));
        out.addresses6.retain(|_, owner| !owner.starts_with('~'));
        out
    }

    /// The sandboxes that hold something here: the network's users (retired veths, `~NAME`, are not).
    pub fn users(&self) -> Vec<&str> {
        let mut users: Vec<&str> = self
            .addresses
            .values()
            .chain(self.addresses6.values())
            .map(String::as_str)
            .filter(|o| !o.starts_with('~'))
            .collect();
        users.sort_unstable();
        users.dedup();
        users
    }
}

/// A network as the state dir holds it: its settings and what it has handed out. `nsnet network inspect
/// --json` prints it as one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    #[serde(flatten)]
    pub settings: Network,
    #[serde(flatten)]
    pub allocations: Allocations,
}

impl NetworkRecord {
    /// A network that has handed out nothing yet.
    pub fn new(settings: Network) -> NetworkRecord {
        NetworkRecord {
            settings,
            allocations: Allocations::default(),
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn yes() -> bool {
    true
}

/// How machines beyond the host reach a network's sandboxes, and how the sandboxes reach them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GatewayMode {
    /// Through published ports only: a connection routed in from outside to a sandbox's own address is
    /// dropped unless a published port DNATed it (as Docker 28 does in NAT mode), and traffic leaving the
    /// host is masqueraded.
    #[default]
    Nat,
    /// Direct routing: a peer that routes the subnet via the host reaches every port of every sandbox, and
    /// traffic leaves with the sandbox's own address (no masquerade). Published ports work as well.
    Routed,
}

impl fmt::Display for GatewayMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GatewayMode::Nat => "nat",
            GatewayMode::Routed => "routed",
        })
    }
}

/// Parts of a bridge network that are on unless a CNI configuration turns them off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetOptions {
    /// Masquerade traffic from the subnet leaving the host (`ipMasq`).
    pub masquerade: bool,
    /// The bridge holds the gateway address (`isGateway`); off, the gateway is a router elsewhere.
    pub host_gateway: bool,
    /// Bridge ports may send a frame back where it came from (`hairpinMode`), so a sandbox reaches its own
    /// published port through the host's address.
    pub hairpin: bool,
    /// Nat (the default) or direct routing (`--gateway-mode`, CNI `gatewayMode`).
    #[serde(default)]
    pub gateway_mode: GatewayMode,
}

impl Default for NetOptions {
    fn default() -> NetOptions {
        NetOptions {
            masquerade: true,
            host_gateway: true,
            hairpin: true,
            gateway_mode: GatewayMode::Nat,
        }
    }
}

impl NetOptions {
    fn is_default(&self) -> bool {
        *self == NetOptions::default()
    }
}

/// One entry of a network's published-port ledger.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Published {
    pub sandbox: String,
    pub mapping: PortMapping,
}

/// The most ports a Linux bridge takes: `BR_MAX_PORTS` is 1,024 port numbers, and number 0 is reserved.
pub const MAX_BRIDGE_PORTS: usize = 1023;

impl Network {
    /// A bridge network with nothing handed out yet and every option at its default (MTU 1500, isolated,
    /// nftables); callers change the few fields they need with struct update syntax.
    pub fn bridge(name: &str, subnet: Ipv4Net, gateway: Ipv4Addr, interface: &str) -> Network {
        Network {
            name: name.into(),
            driver: Driver::Bridge,
            subnet: Some(subnet),
            gateway: Some(gateway),
            interface: interface.into(),
            internal: false,
            isolate: true,
            fast_path: true,
            options: NetOptions::default(),
            mtu: 1500,
            firewall: Default::default(),
            host_chains: vec![],
            removing: false,
            overlay: None,
            dns: false,
            dns_servers: vec![],
            ipv6: None,
        }
    }

    /// Whether the network has no IPv4 part (`--ipv4=false`): only its [`Network::ipv6`] side exists.
    pub fn ipv6_only(&self) -> bool {
        self.subnet.is_none()
    }

    /// The MAC address of the network's bridge (or veth host end): derived from its gateway, the IPv4 one
    /// when the network has IPv4 ([`Mac::for_ipv4`], as always), else the IPv6 one ([`Mac::for_ipv6`]).
    pub fn gateway_mac(&self) -> Mac {
        match (self.gateway, &self.ipv6) {
            (None, Some(v6)) => Mac::for_ipv6(v6.gateway),
            // A network with neither family never passes validation.
            (g, _) => Mac::for_ipv4(g.unwrap_or(Ipv4Addr::UNSPECIFIED)),
        }
    }

    /// The interface an overlay network's peers are reached by, when it is one nsnet made (the VXLAN
    /// device): it is part of the network, isolated from other networks like the bridge.
    pub fn overlay_device(&self) -> Option<&str> {
        self.overlay
            .as_ref()
            .filter(|o| o.backend == OverlayBackend::Vxlan)
            .map(|o| o.device.as_str())
    }

    /// Whether one more sandbox fits beside the `sandboxes` there are: a bridge takes at most
    /// [`MAX_BRIDGE_PORTS`] ports, so a bridge network stops there (the kernel would refuse the next veth with
    /// a bare EXFULL, "Exchange full").
    pub fn has_room(&self, sandboxes: usize) -> Result<(), String> {
        if self.driver == Driver::Bridge && sandboxes >= MAX_BRIDGE_PORTS {
            return Err(format!(
                "network '{}' already has {MAX_BRIDGE_PORTS} sandboxes, the most a Linux bridge takes; \
                 create another network for more",
                self.name
            ));
        }
        Ok(())
    }
}

/// A network namespace nsnet has networked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    pub name: String,
    /// The nsfs path the namespace was reached by: `/run/netns/NAME` or e.g. `/proc/PID/ns/net`.
    pub netns: PathBuf,
    /// True when nsnet created the namespace (and so removes it); false for `nsnet attach`.
    pub owned: bool,
    /// The namespace's identity (device, inode of its nsfs file) when it was attached: a path such as
    /// `/proc/PID/ns/net` names another namespace once the process is gone and its PID reused, and the
    /// sandbox's namespace counts as gone when the identity no longer matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_id: Option<(u64, u64)>,
    /// Networked through the CNI plugin: the sandbox is named after the container ID, and CNI `GC` may
    /// remove its endpoints.
    #[serde(default, skip_serializing_if = "is_false")]
    pub cni: bool,
    pub endpoints: Vec<Endpoint>,
    /// Set while `nsnet rm` deletes the sandbox's links and namespace outside the lock; its addresses and
    /// ports stay reserved until the records are released.
    #[serde(default, skip_serializing_if = "is_false")]
    pub removing: bool,
    /// Where the resolver forwards this sandbox's queries for names that are not local (`--dns IP`); before
    /// its networks' servers and the host's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_servers: Vec<IpAddr>,
}

impl Sandbox {
    /// Whether the sandbox's namespace is still there: its path exists and, when recorded, names the same
    /// namespace as when it was attached.
    /// Read through [`crate::ops`]' one reader of host facts.
    pub fn namespace_is_there(&self) -> bool {
        crate::ops::host::Host::namespace_is_there(self)
    }
}

/// The veth pair joining a sandbox to one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub network: String,
    /// Interface name inside the sandbox: eth0, eth1, ...
    pub interface: String,
    /// Interface name of the host end.
    pub host_interface: String,
    pub mac: Mac,
    /// The sandbox's IPv4 address in CIDR form; absent on an IPv6-only network (and left out of the record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Net>,
    /// Its network's IPv4 gateway; absent exactly when `address` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// Whether this endpoint carries the sandbox's default route.
    pub default_route: bool,
    pub mtu: u32,
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// Set while `nsnet detach` (CNI `DEL`) takes this endpoint away outside the lock.
    #[serde(default, skip_serializing_if = "is_false")]
    pub removing: bool,
    /// More names the sandbox answers to on this network (`--alias`), besides its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// The sandbox's IPv6 side on a dual-stack network. Its link-local address is not stored: it is derived
    /// from `mac` ([`Mac::link_local6`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ep6>,
}

/// An endpoint's IPv6 side ([`Endpoint::ipv6`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ep6 {
    /// The sandbox's global address, with its network's prefix length.
    pub address: Ipv6Net,
    /// Its network's IPv6 gateway: the sandbox's IPv6 default route goes via it.
    pub gateway: Ipv6Addr,
}

/// An optional address as text: the value, or `none` (an IPv6-only network's IPv4 fields).
pub fn or_none<T: fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "none".to_string(), |v| v.to_string())
}

/// An Ethernet address, written `02:6e:0a:59:00:02`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A locally administered unicast address derived from the sandbox's IPv4 address (unique on this host
    /// because subnets never overlap), so the address is known at plan time.
    pub fn for_ipv4(ip: Ipv4Addr) -> Mac {
        let o = ip.octets();
        Mac([0x02, 0x6e, o[0], o[1], o[2], o[3]])
    }

    /// The MAC nsnet derives for an endpoint when none is asked for: from its IPv4 address, else (on an
    /// IPv6-only network) from its global IPv6 one.
    pub fn derived(address: Option<Ipv4Net>, ipv6: Option<&Ep6>) -> Mac {
        match (address, ipv6) {
            (None, Some(v6)) => Mac::for_ipv6(v6.address.addr()),
            (a, _) => Mac::for_ipv4(a.map_or(Ipv4Addr::UNSPECIFIED, |a| a.addr())),
        }
    }

    /// The derived MAC of an IPv6-only endpoint or bridge: `02:6c:` plus the 32-bit FNV-1a hash of the
    /// address. A hash can collide, so the plan checks it against the network's other MACs; its host end is
    /// `02:6d:` ([`Mac::host_end`]).
    pub fn for_ipv6(ip: Ipv6Addr) -> Mac {
        let h = ip
            .octets()
            .iter()
            .fold(0x811c_9dc5_u32, |h, b| {
                (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
            })
            .to_be_bytes();
        Mac([0x02, 0x6c, h[0], h[1], h[2], h[3]])
    }

    /// The fixed link-local address of the interface holding this MAC: `fe80::/64` plus the modified EUI-64
    /// interface identifier (RFC 4291 appendix A), which is what the kernel would generate. nsnet adds it
    /// itself, without DAD, since sandboxes have automatic link-local addresses turned off.
    pub fn link_local6(self) -> Ipv6Addr {
        let b = self.0;
        Ipv6Addr::from([
            0xfe,
            0x80,
            0,
            0,
            0,
            0,
            0,
            0,
            b[0] ^ 0x02,
            b[1],
            b[2],
            0xff,
            0xfe,
            b[3],
            b[4],
            b[5],
        ])
    }

    /// Refuse what an interface cannot use as its own address: a multicast (or broadcast) address, whose
    /// first octet has its low bit set, and the all-zero address.
    pub fn check_unicast(self) -> Result<(), String> {
        if self.0 == [0; 6] {
            return Err(format!(
                "{self} is the all-zero MAC address; give a unicast one like 02:6e:0a:59:00:02"
            ));
        }
        if self.0[0] & 1 == 1 {
            return Err(format!(
                "{self} is a multicast MAC address (the first octet is odd); give a unicast one like \
                 02:6e:0a:59:00:02"
            ));
        }
        Ok(())
    }

    /// The address of the host end of the veth whose sandbox end has this one (`02:6f:` instead of
    /// `02:6e:`): fixed, so a veth re-created by a rollback is exactly the one deleted.
    pub fn host_end(self) -> Mac {
        let mut b = self.0;
        b[1] ^= 0x01;
        Mac(b)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 6];
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!("'{s}' is not a MAC address like 02:6e:0a:59:00:02"));
        }
        for (slot, part) in out.iter_mut().zip(parts) {
            *slot = u8::from_str_radix(part, 16)
                .map_err(|_| format!("'{s}' is not a MAC address like 02:6e:0a:59:00:02"))?;
        }
        Ok(Mac(out))
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips() {
        let m = Mac::for_ipv4(Ipv4Addr::new(10, 89, 0, 2));
        assert_eq!(m.to_string(), "02:6e:0a:59:00:02");
        assert_eq!("02:6e:0a:59:00:02".parse::<Mac>().unwrap(), m);
        assert!("02:6e".parse::<Mac>().is_err());
        assert!("zz:6e:0a:59:00:02".parse::<Mac>().is_err());
    }

    /// IPv6-only MACs: `02:6c:` and the 32-bit FNV-1a of the address's 16 bytes (values from an independent
    /// implementation); an IPv6-only network's bridge MAC comes from its IPv6 gateway, any other's from IPv4.
    #[test]
    fn ipv6_only_macs_are_02_6c_and_fnv1a() {
        assert_eq!(
            Mac::for_ipv6(Ipv6Addr::UNSPECIFIED).to_string(),
            "02:6c:69:69:19:05"
        );
        let ep6 = Ep6 {
            address: "fd89:1:2:3::2/64".parse().unwrap(),
            gateway: "fd89:1:2:3::1".parse().unwrap(),
        };
        assert_eq!(
            Mac::derived(None, Some(&ep6)).to_string(),
            "02:6c:7a:4b:a7:a1"
        );
        assert_eq!(Mac::derived(None, Some(&ep6)).host_end().0[1], 0x6d);
        let v4: Ipv4Net = "10.89.0.2/24".parse().unwrap();
        assert_eq!(Mac::derived(Some(v4), Some(&ep6)), Mac::for_ipv4(v4.addr()));
        let mut net = Network::bridge(
            "n",
            "10.0.0.0/24".parse().unwrap(),
            Ipv4Addr::new(10, 0, 0, 1),
            "br0",
        );
        net.ipv6 = Some(Net6 {
            subnet: "fd89:1:2:3::/64".parse().unwrap(),
            gateway: "fd89:1:2:3::1".parse().unwrap(),
            nat: true,
        });
        assert_eq!(net.gateway_mac(), Mac::for_ipv4(Ipv4Addr::new(10, 0, 0, 1)));
        (net.subnet, net.gateway) = (None, None);
        assert!(net.ipv6_only());
        assert_eq!(
            net.gateway_mac(),
            Mac::for_ipv6("fd89:1:2:3::1".parse().unwrap())
        );
    }

    #[test]
    fn only_unicast_macs_pass() {
        let mac = |s: &str| s.parse::<Mac>().unwrap();
        assert!(mac("02:aa:bb:cc:dd:01").check_unicast().is_ok());
        assert!(mac("00:16:3e:00:00:01").check_unicast().is_ok());
        for bad in [
            "01:00:5e:00:00:01",
            "ff:ff:ff:ff:ff:ff",
            "03:00:00:00:00:01",
            "00:00:00:00:00:00",
        ] {
            let e = mac(bad).check_unicast().unwrap_err();
            assert!(e.contains(bad) && e.contains("unicast"), "{e}");
        }
    }

    /// Records as nsnet wrote them before IPv6: they must read to the same values and, being IPv4-only, be
    /// written back byte for byte, so a downgrade still reads what this version writes.
    #[test]
    fn records_written_before_ipv6_read_and_write_the_same() {
        let text = include_str!("../tests/golden/network-ipv4.json");
        let net: Network = serde_json::from_str(text).unwrap();
        assert_eq!(net.ipv6, None);
        assert_eq!(net.subnet, Some("10.89.3.0/24".parse::<Ipv4Net>().unwrap()));
        assert_eq!(pretty(&net), text);
        let text = include_str!("../tests/golden/sandbox-ipv4.json");
        let sb: Sandbox = serde_json::from_str(text).unwrap();
        assert_eq!(sb.endpoints[0].ipv6, None);
        assert_eq!(pretty(&sb), text);
    }

    /// A record's text as the store writes it: pretty JSON and a newline.
    fn pretty<T: Serialize>(value: &T) -> String {
        serde_json::to_string_pretty(value).unwrap() + "\n"
    }

    #[test]
    fn dual_stack_records_round_trip() {
        let mut net = Network::bridge(
            "ds",
            "10.0.0.0/24".parse().unwrap(),
            Ipv4Addr::new(10, 0, 0, 1),
            "br0",
        );
        net.ipv6 = Some(Net6 {
            subnet: "fd12:3456:789a:1::/64".parse().unwrap(),
            gateway: "fd12:3456:789a:1::1".parse().unwrap(),
            nat: false,
        });
        let text = serde_json::to_string(&net).unwrap();
        assert!(
            text.contains(r#""ipv6":{"subnet":"fd12:3456:789a:1::/64""#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Network>(&text).unwrap(), net);
        // NAT66 is on unless the record says otherwise.
        let n6: Net6 =
            serde_json::from_str(r#"{"subnet":"fd00::/64","gateway":"fd00::1"}"#).unwrap();
        assert!(n6.nat);

        let ep: Ep6 =
            serde_json::from_str(r#"{"address":"fd00::2/64","gateway":"fd00::1"}"#).unwrap();
        assert_eq!(ep.address.addr(), "fd00::2".parse::<Ipv6Addr>().unwrap());
    }

    #[test]
    fn ipv6_allocations_are_released_and_retired_with_the_rest() {
        let mut a = Allocations::default();
        a.addresses.insert(Ipv4Addr::new(10, 0, 0, 2), "a".into());
        a.addresses6.insert("fd00::2".parse().unwrap(), "a".into());
        a.addresses6.insert("fd00::3".parse().unwrap(), "b".into());
        a.last_allocated6 = Some("fd00::3".parse().unwrap());
        let text = serde_json::to_string(&a).unwrap();
        assert!(
            text.contains(
                r#""allocations6":{"fd00::2":"a","fd00::3":"b"},"last_allocated6":"fd00::3""#
            ),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Allocations>(&text).unwrap(), a);
        // Nothing IPv6 held: nothing IPv6 written.
        assert!(!serde_json::to_string(&Allocations::default())
            .unwrap()
            .contains('6'));
        assert_eq!(a.users(), vec!["a", "b"]);
        let mut r = a.clone();
        r.retire("b", "~nsrt1");
        assert_eq!(r.users(), vec!["a"]);
        assert_eq!(r.without_retired().addresses6.len(), 1);
        a.release("a");
        assert!(a.addresses.is_empty());
        assert_eq!(a.users(), vec!["b"]);
    }

    #[test]
    fn the_link_local_address_is_the_modified_eui64_of_the_mac() {
        let m: Mac = "02:6e:0a:59:00:02".parse().unwrap();
        assert_eq!(
            m.link_local6(),
            "fe80::6e:aff:fe59:2".parse::<Ipv6Addr>().unwrap()
        );
        // The universal/local bit flips: a globally unique MAC gets it set.
        let m: Mac = "00:16:3e:00:00:01".parse().unwrap();
        assert_eq!(
            m.link_local6(),
            "fe80::216:3eff:fe00:1".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn a_bridge_network_stops_at_1023_sandboxes() {
        let n = Network::bridge(
            "big",
            "10.0.0.0/20".parse().unwrap(),
            Ipv4Addr::new(10, 0, 0, 1),
            "br0",
        );
        assert!(n.has_room(0).is_ok());
        assert!(n.has_room(MAX_BRIDGE_PORTS - 1).is_ok());
        let e = n.has_room(MAX_BRIDGE_PORTS).unwrap_err();
        assert!(e.contains("1023") && e.contains("another network"), "{e}");
    }
}
