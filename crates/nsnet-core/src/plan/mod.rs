//! The plan: the kernel objects and firewall rules an operation wants, as plain data.
//!
//! Builders in [`build`] make plans from records without touching the system; [`Plan::render`] prints them as
//! the equivalent `ip` / `nft` / `sysctl` commands (`--dry-run`); [`crate::apply`] carries them out.

pub mod build;

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::firewall::{Backend, Batch};
use crate::model::{Mac, OverlayBackend, Peer};

/// Which network namespace a step works in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Ns {
    /// The namespace nsnet itself runs in: the host.
    #[default]
    Host,
    /// A namespace reached through an nsfs path (`/run/netns/NAME`, `/proc/PID/ns/net`).
    Path(PathBuf),
}

impl Ns {
    /// How `ip` reaches this namespace: `ip -n NAME` for named ones, `nsenter` for any other path.
    fn ip(&self) -> String {
        match self {
            Ns::Host => "ip".into(),
            Ns::Path(p) => match (p.parent(), p.file_name()) {
                (Some(dir), Some(name))
                    if dir == std::path::Path::new(crate::kernel::netns::NETNS_DIR) =>
                {
                    format!("ip -n {}", name.to_string_lossy())
                }
                _ => format!("nsenter --net={} ip", p.display()),
            },
        }
    }

    /// How a command runs in this namespace: as it is on the host, after `ip netns exec NAME` in a named
    /// one, after `nsenter --net=PATH` in any other.
    fn exec(&self) -> String {
        match self {
            Ns::Host => String::new(),
            Ns::Path(p) => match (p.parent(), p.file_name()) {
                (Some(dir), Some(name))
                    if dir == std::path::Path::new(crate::kernel::netns::NETNS_DIR) =>
                {
                    format!("ip netns exec {} ", name.to_string_lossy())
                }
                _ => format!("nsenter --net={} ", p.display()),
            },
        }
    }
}

/// Published ports as the `[::1]` translation holds them ([`Step::LoopbackPortAdd`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Loopback {
    pub proto: crate::portmap::Proto,
    pub host_port: u16,
    pub count: u16,
    pub target: std::net::Ipv6Addr,
    pub container_port: u16,
    /// Published on every host address, not only on `[::1]`.
    pub every: bool,
}

/// One change to the system.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Step {
    /// `ip netns add NAME`, with `lo` up inside and tagged with `owner` (its alias), so `nsnet gc` can tell
    /// the namespaces it made from anyone else's.
    CreateNetns { name: String, owner: String },
    /// `ip netns del NAME`.
    DeleteNetns { name: String },
    /// `ip link add NAME type bridge`, up, with a fixed MAC: a bridge without one takes its lowest port's
    /// address, so the gateway's MAC would change as sandboxes come and go (stale ARP in every sandbox).
    /// Tagged with `tag` (its alias), as every host link nsnet makes: see [`Step::DeleteLink`].
    /// Without `ipv6` (an IPv4 network) the bridge has IPv6 off. With it (a dual-stack network) IPv6 is on
    /// but the bridge makes no link-local address of its own (`addrgenmode none`: nsnet adds `fe80::1`) and
    /// takes no router advertisements (`accept_ra=0`: a sandbox's must never give the host a route).
    CreateBridge {
        name: String,
        mtu: u32,
        mac: Mac,
        #[serde(default)]
        tag: String,
        #[serde(default, skip_serializing_if = "is_false")]
        ipv6: bool,
    },
    /// A veth pair, host end in the host (on `master` if given), peer created inside `peer_ns`; both left down
    /// until configured ([`Step::LinkUp`]). Neither end makes IPv6 addresses of its own: IPv6 is off on the
    /// host end and the peer has no link-local address (see [`crate::kernel::sysctl::disable_ipv6`]); on a
    /// dual-stack network nsnet adds the peer's addresses itself, without DAD. With `host_ipv6` (the veth
    /// driver on a dual-stack network, whose host end is the gateway) the host end is treated like a
    /// dual-stack bridge ([`Step::CreateBridge`]): IPv6 on, `addrgenmode none`, `accept_ra=0`.
    CreateVeth {
        host: String,
        peer: String,
        peer_ns: Ns,
        master: Option<String>,
        mtu: u32,
        peer_mac: Mac,
        host_mac: Mac,
        /// The host end's alias: see [`Step::DeleteLink`].
        #[serde(default)]
        tag: String,
        #[serde(default, skip_serializing_if = "is_false")]
        host_ipv6: bool,
    },
    /// `ip link set NAME up`. A veth's host end comes up last: the carrier it brings makes the bridge
    /// re-evaluate every port under the kernel's RTNL lock (a cost that grows with the bridge), and no later
    /// step of ours then has to wait for that.
    LinkUp { ns: Ns, name: String },
    /// `ip link del NAME`; a link already gone is fine. With a `tag`, only a link whose alias is that tag: a
    /// record that names a link nsnet did not make (a hand-edited state file naming the uplink) cannot make
    /// nsnet delete it.
    DeleteLink {
        ns: Ns,
        name: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        tag: String,
        /// An untagged link with this MAC is nsnet's too: the one a create made and was killed before it could
        /// tag, or one made before nsnet tagged its links. A link with another MAC (the uplink) never is.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        made_with: Option<Mac>,
    },
    /// `ip addr add ADDR dev DEV`. An IPv6 address is added with `IFA_F_NODAD` (`nodad`): usable at once,
    /// with no duplicate address detection to wait for or to flood the bridge with (nsnet's addresses are
    /// unique by construction).
    AddAddress { ns: Ns, dev: String, addr: IpNet },
    /// `ip route add default via GW dev DEV`, for GW's family. An IPv6 one needs DEV up (not its carrier).
    AddDefaultRoute { ns: Ns, dev: String, via: IpAddr },
    /// `sysctl -w KEY=VALUE` in namespace `ns` (the host's unless said). The key is written with `/` between
    /// components (interface names may contain dots). Never reverted: forwarding stays on, and per-interface
    /// keys go with the interface.
    Sysctl {
        #[serde(default)]
        ns: Ns,
        key: String,
        value: String,
    },
    /// Bind bridge port NAME to its sandbox's MAC: learning off, the port locked, one static FDB entry for
    /// `mac` (see [`crate::kernel::Netlink::bind_port`]), so frames from any other source MAC are dropped. With
    /// `hairpin`, the port may send a frame back out the port it came in on, so a sandbox reaches its own
    /// published port through the host's address. Goes with the port, so it needs no undo of its own.
    BindPort {
        name: String,
        mac: Mac,
        hairpin: bool,
    },
    /// Give a new bridge its fast path ([`crate::kernel::fastpath`]): the program and its empty map, as the
    /// filter of a tc block the bridge's ingress is bound to. Goes with the bridge, so it needs no undo of
    /// its own.
    FastPathInit { bridge: String },
    /// Put a sandbox on its network's fast path ([`crate::kernel::fastpath`]): its address (one step per
    /// family), host `port` and MAC into the map of `bridge`'s program, and the port's ingress onto the program's block. Where the
    /// kernel or the caller cannot run bpf programs there is no fast path, and the bridge carries everything.
    FastPathAdd {
        bridge: String,
        port: String,
        peer_ns: Ns,
        ip: IpAddr,
        mac: Mac,
    },
    /// Take a sandbox's address off its network's fast path; frames from its port then all go to the bridge.
    /// Already gone is fine. Carries what [`Step::FastPathAdd`] needs to undo it.
    FastPathRemove {
        bridge: String,
        port: String,
        peer_ns: Ns,
        ip: IpAddr,
        mac: Mac,
    },
    /// Cross-host traffic on `bridge`'s fast path ([`crate::kernel::fastpath`]): its program sends a
    /// sandbox's frames for a remote block out by `device`, to the block's next hop (the one its route
    /// names), and with `decap` delivers what `device` receives to the sandboxes (the device's ingress joins
    /// the program's block); without, delivery stays as it is (host-gw's comes from
    /// [`Step::UnderlayFilter`]). The remote blocks become exactly `routes`. Idempotent; without a fast path
    /// (or with one made before tunnels) nothing: the slow path carries it all.
    FastPathTunnel {
        bridge: String,
        device: String,
        decap: bool,
        routes: Vec<(Ipv4Net, Ipv4Addr)>,
        /// A dual-stack overlay's remote IPv6 blocks and their next hops (each block's first address);
        /// empty, and left out of intents, on an IPv4-only one.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        routes6: Vec<(Ipv6Net, Ipv6Addr)>,
    },
    /// host-gw's receiving side of `bridge`'s fast path: its program becomes one tc filter on the ingress of
    /// `device`, the host's underlay interface (not nsnet's), with a preference and handle of the network's
    /// own ([`crate::kernel::fastpath::underlay_filter`]), and delivers what arrives there from a remote
    /// block to the sandboxes. The device's ingress is never bound to nsnet's block: another tool may own
    /// the qdisc and have filters there. `qdisc`: nsnet owns the device's `ingress` qdisc (there was none),
    /// so it makes one if there is none and [`Step::RemoveUnderlayFilter`] deletes it when no filter is
    /// left. Replaces the filter's program if there is one (a re-created bridge's). Without a fast path, or
    /// where the filter cannot go, nothing: the slow path carries it.
    UnderlayFilter {
        bridge: String,
        device: String,
        qdisc: bool,
    },
    /// Undo [`Step::UnderlayFilter`]: delete exactly the filter with `handle` (a bridge's block number) from
    /// `device`'s ingress, and with `qdisc` the ingress qdisc too if no filter at all is left on it. Already
    /// gone is fine; anyone else's filters and qdiscs stay as they are.
    RemoveUnderlayFilter {
        device: String,
        handle: u32,
        qdisc: bool,
    },
    /// The host's `[::1]` translation ([`crate::kernel::loopback6`]): its cgroup `sock_addr` programs on
    /// the cgroup `NSNET_CGROUP` names (by default the cgroup2 root), made and attached if they are not
    /// there, a hook that lost its program given it back, and the host's IPv6 addresses written afresh.
    /// Where bpf or cgroup2 is missing, nothing (a `-p [::1]` was refused in validation).
    LoopbackInit,
    /// Undo [`Step::LoopbackInit`]: the programs go if no port is left in their map.
    LoopbackRelease,
    /// Translate the host's `[::1]:host_port` (and with `every` its own IPv6 addresses) for `proto`, `count`
    /// ports from `host_port`, to `target` and the container port at the same offset from `container_port`.
    /// Makes the programs first if they are not there ([`Step::LoopbackInit`]).
    LoopbackPortAdd(Loopback),
    /// Undo [`Step::LoopbackPortAdd`]: the ports out of the map, and the programs off the cgroup when it is
    /// left empty. Already gone is fine.
    LoopbackPortRemove(Loopback),
    /// The `[::1]` translation made exactly `ports` (`gc`, `firewall reload`): with ports, the programs made
    /// or given back a lost one ([`Step::LoopbackInit`]), every port written and any other entry of the map
    /// deleted; with none, the programs go. A repair, with no undo.
    LoopbackSync(Vec<Loopback>),
    /// One atomic firewall transaction, on the given backend.
    Firewall { backend: Backend, batch: Batch },
    /// An overlay network's VXLAN device, up: learning off (peers are programmed, never learned), no local
    /// address (a change of the host's underlay address needs nothing here), the VTEP MAC the other hosts
    /// know. Tagged like every host link nsnet makes.
    CreateVxlan {
        name: String,
        vni: u32,
        port: u16,
        mtu: u32,
        mac: Mac,
        tag: String,
        /// A dual-stack overlay's device carries IPv6 too: IPv6 on, as on a dual-stack bridge
        /// ([`Step::CreateBridge`]) but with no address at all; off (the default) it has IPv6 off.
        #[serde(default, skip_serializing_if = "is_false")]
        ipv6: bool,
    },
    /// Program one remote host of an overlay network, replacing whatever is there (idempotent): for vxlan
    /// its FDB entry, its permanent neighbour entry and an onlink route to its subnet; for host-gw a route
    /// via its underlay address. Routes leave with source `src`, this host's gateway address, so the other
    /// host sees an address of the cluster.
    SetPeer { overlay: PeerLink, peer: Peer },
    /// Remove what [`Step::SetPeer`] programmed; already gone is fine.
    RemovePeer { overlay: PeerLink, peer: Peer },
    /// Take a sandbox's veth pair out of use at once instead of deleting it (deleting waits an RCU grace
    /// period per link): the peer inside `peer_ns` goes down and is renamed `retired` (its name is free for the
    /// next interface at once), and the host end goes down (a disabled port of its bridge, whose static FDB
    /// entry keeps the sandbox's MAC: the address, and so the MAC, stay taken until it is gone) and joins
    /// [`crate::kernel::netlink::RETIRED_GROUP`], keeping its name (the next endpoint's is chosen among free
    /// ones). Retired links are deleted together, off the command's path ([`Step::DeleteRetired`]). Only a
    /// host end with `tag` (or `made_with`, see [`Step::DeleteLink`]).
    RetireVeth {
        host: String,
        peer: String,
        peer_ns: Ns,
        retired: String,
        /// Its bridge, if it is a bridge port.
        master: Option<String>,
        tag: String,
        made_with: Option<Mac>,
    },
    /// Undo [`Step::RetireVeth`]: both ends get their names back and come up.
    UnretireVeth {
        host: String,
        peer: String,
        peer_ns: Ns,
        retired: String,
        master: Option<String>,
        tag: String,
        made_with: Option<Mac>,
    },
    /// Delete every retired link: in one request (one grace period for all) when every link of the retired
    /// group is nsnet's, else only those with `tag`, one by one.
    DeleteRetired { tag: String },
    /// `/etc/netns/NAME/resolv.conf` for a sandbox with names: what `ip netns exec`, `nsnet exec` and
    /// `nsnet run` show its commands as /etc/resolv.conf. A file someone else put there is left alone.
    WriteResolvConf { netns: String, text: String },
    /// Remove what [`Step::WriteResolvConf`] wrote (`text`, so an undo writes it again); a file that is not
    /// nsnet's is left alone, and so is one already gone.
    RemoveResolvConf { netns: String, text: String },
}

/// Where an overlay network's peers are programmed: which device, how, and the source address of routes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerLink {
    pub backend: OverlayBackend,
    /// The VXLAN device (vxlan) or the underlay interface (host-gw).
    pub device: String,
    pub src: Ipv4Addr,
    /// The source of routes to peers' IPv6 blocks: this host's IPv6 gateway, on a dual-stack overlay (whose
    /// peers get IPv6 routes); absent, and left out of intents, on an IPv4-only one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src6: Option<Ipv6Addr>,
}

impl Step {
    /// Whether applying this step waits for the kernel: deleting a link unregisters it, which waits for an
    /// RCU grace period (tens of milliseconds). Unmounting a namespace, retiring a veth and deleting map
    /// entries do not (the kernel destroys an unused namespace in the background).
    pub fn waits_for_the_kernel(&self) -> bool {
        matches!(self, Step::DeleteLink { .. } | Step::DeleteRetired { .. })
    }

    /// The step that undoes this one, for rollback. Addresses and routes go with their link.
    pub fn undo(&self) -> Option<Step> {
        match self {
            Step::CreateNetns { name, .. } => Some(Step::DeleteNetns { name: name.clone() }),
            Step::CreateBridge { name, tag, mac, .. } => Some(Step::DeleteLink {
                ns: Ns::Host,
                name: name.clone(),
                tag: tag.clone(),
                made_with: Some(*mac),
            }),
            Step::CreateVeth {
                host,
                tag,
                host_mac,
                ..
            } => Some(Step::DeleteLink {
                ns: Ns::Host,
                name: host.clone(),
                tag: tag.clone(),
                made_with: Some(*host_mac),
            }),
            Step::Firewall { backend, batch } => Some(Step::Firewall {
                backend: *backend,
                batch: batch.inverse(),
            }),
            Step::FastPathAdd {
                bridge,
                port,
                peer_ns,
                ip,
                mac,
            } => Some(Step::FastPathRemove {
                bridge: bridge.clone(),
                port: port.clone(),
                peer_ns: peer_ns.clone(),
                ip: *ip,
                mac: *mac,
            }),
            Step::CreateVxlan { name, tag, mac, .. } => Some(Step::DeleteLink {
                ns: Ns::Host,
                name: name.clone(),
                tag: tag.clone(),
                made_with: Some(*mac),
            }),
            Step::RetireVeth {
                host,
                peer,
                peer_ns,
                retired,
                master,
                tag,
                made_with,
            } => Some(Step::UnretireVeth {
                host: host.clone(),
                peer: peer.clone(),
                peer_ns: peer_ns.clone(),
                retired: retired.clone(),
                master: master.clone(),
                tag: tag.clone(),
                made_with: *made_with,
            }),
            Step::UnderlayFilter {
                bridge,
                device,
                qdisc,
            } => Some(Step::RemoveUnderlayFilter {
                device: device.clone(),
                handle: crate::kernel::fastpath::underlay_filter(bridge).1,
                qdisc: *qdisc,
            }),
            Step::SetPeer { overlay, peer } => Some(Step::RemovePeer {
                overlay: overlay.clone(),
                peer: peer.clone(),
            }),
            Step::RemovePeer { overlay, peer } => Some(Step::SetPeer {
                overlay: overlay.clone(),
                peer: peer.clone(),
            }),
            Step::WriteResolvConf { netns, text } => Some(Step::RemoveResolvConf {
                netns: netns.clone(),
                text: text.clone(),
            }),
            Step::RemoveResolvConf { netns, text } => Some(Step::WriteResolvConf {
                netns: netns.clone(),
                text: text.clone(),
            }),
            Step::LoopbackInit => Some(Step::LoopbackRelease),
            Step::LoopbackPortAdd(l) => Some(Step::LoopbackPortRemove(l.clone())),
            Step::LoopbackPortRemove(l) => Some(Step::LoopbackPortAdd(l.clone())),
            Step::FastPathRemove {
                bridge,
                port,
                peer_ns,
                ip,
                mac,
            } => Some(Step::FastPathAdd {
                bridge: bridge.clone(),
                port: port.clone(),
                peer_ns: peer_ns.clone(),
                ip: *ip,
                mac: *mac,
            }),
            _ => None,
        }
    }

    /// The step as the shell commands that would do the same.
    pub fn render(&self) -> String {
        match self {
            Step::CreateNetns { name, owner } => {
                format!("ip netns add {name}\nip -n {name} link set lo up alias {owner}")
            }
            Step::DeleteNetns { name } => format!("ip netns del {name}"),
            Step::CreateBridge {
                name,
                mtu,
                mac,
                tag,
                ipv6,
            } => {
                let mut out = format!(
                    "ip link add {name} address {mac} mtu {mtu} type bridge\n\
                     ip link set {name} alias {tag} up"
                );
                if *ipv6 {
                    out.push('\n');
                    out.push_str(&render_ipv6_gateway_link(&Ns::Host, name));
                }
                out
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
                let netns = match peer_ns {
                    Ns::Host => String::new(),
                    Ns::Path(p) => match p.strip_prefix(crate::kernel::netns::NETNS_DIR) {
                        Ok(name) => format!(" netns {}", name.display()),
                        Err(_) => format!(" netns {}", p.display()),
                    },
                };
                let master = master
                    .as_ref()
                    .map(|m| format!(" master {m}"))
                    .unwrap_or_default();
                let host_v6 = if *host_ipv6 {
                    render_ipv6_gateway_link(&Ns::Host, host)
                } else {
                    format!("sysctl -w net.ipv6.conf.{host}.disable_ipv6=1")
                };
                format!(
                    "ip link add {host} address {host_mac} mtu {mtu}{master} type veth peer name {peer} address {peer_mac}{netns}\n\
                     ip link set {host} alias {tag}\n\
                     {host_v6}\n\
                     {} link set {peer} addrgenmode none",
                    peer_ns.ip()
                )
            }
            Step::LinkUp { ns, name } => format!("{} link set {name} up", ns.ip()),
            Step::DeleteLink { ns, name, .. } => format!("{} link del {name}", ns.ip()),
            Step::AddAddress { ns, dev, addr } => {
                let nodad = if matches!(addr, IpNet::V6(_)) {
                    " nodad"
                } else {
                    ""
                };
                format!("{} addr add {addr} dev {dev}{nodad}", ns.ip())
            }
            Step::AddDefaultRoute { ns, dev, via } => {
                let family = if via.is_ipv6() { " -6" } else { "" };
                format!("{}{family} route add default via {via} dev {dev}", ns.ip())
            }
            Step::Sysctl { ns, key, value } => {
                let key = if key.split('/').any(|part| part.contains('.')) {
                    key.clone()
                } else {
                    key.replace('/', ".")
                };
                format!("{}sysctl -w {key}={value}", ns.exec())
            }
            Step::BindPort { name, mac, hairpin } => format!(
                "ip link set {name} type bridge_slave learning off locked on{}\n\
                 bridge fdb add {mac} dev {name} master static",
                if *hairpin { " hairpin on" } else { "" }
            ),
            // The program is built in memory and attached by descriptor: tc has no command line for that, so
            // a comment names the filter.
            Step::FastPathInit { bridge } => format!(
                "tc qdisc add dev {bridge} ingress_block {block} ingress\n\
                 # fast path: bpf program {name} (with an empty map of sandboxes) as filter pref 1 handle 1 \
                 bpf direct-action on block {block}",
                block = crate::kernel::fastpath::block_of(bridge),
                name = crate::kernel::fastpath::NAME
            ),
            Step::FastPathAdd {
                bridge,
                port,
                ip,
                mac,
                ..
            } => format!(
                "tc qdisc add dev {port} ingress_block {block} ingress\n\
                 # fast path: {ip} -> {port} {mac} in the map of bpf program {name} of {bridge}",
                block = crate::kernel::fastpath::block_of(bridge),
                name = crate::kernel::fastpath::NAME
            ),
            Step::FastPathRemove { bridge, ip, .. } => format!(
                "# fast path: {ip} off the map of bpf program {} of {bridge}",
                crate::kernel::fastpath::NAME
            ),
            Step::FastPathTunnel {
                bridge,
                device,
                decap,
                routes,
                routes6,
            } => {
                let mut out = String::new();
                if *decap {
                    let _ = writeln!(
                        out,
                        "tc qdisc add dev {device} ingress_block {} ingress",
                        crate::kernel::fastpath::block_of(bridge)
                    );
                }
                let blocks: Vec<String> = routes
                    .iter()
                    .map(|(block, via)| format!("{block} via {via}"))
                    .chain(
                        routes6
                            .iter()
                            .map(|(block, via)| format!("{block} via {via}")),
                    )
                    .collect();
                let _ = write!(
                    out,
                    "# fast path: bpf program {} of {bridge} sends to {device}: {}",
                    crate::kernel::fastpath::NAME,
                    if blocks.is_empty() {
                        "no remote block".to_string()
                    } else {
                        blocks.join(", ")
                    }
                );
                out
            }
            Step::UnderlayFilter {
                bridge,
                device,
                qdisc,
            } => {
                let (pref, handle) = crate::kernel::fastpath::underlay_filter(bridge);
                format!(
                    "{}tc filter replace dev {device} ingress protocol all pref {pref} handle {handle:#x} bpf \
                     direct-action
                     # fast path: the filter runs bpf program {name} of {bridge} (by descriptor): frames from \
                     remote blocks to {bridge}'s sandboxes",
                    if *qdisc {
                        format!("tc qdisc add dev {device} ingress  # if there is none\n")
                    } else {
                        String::new()
                    },
                    name = crate::kernel::fastpath::NAME
                )
            }
            // Loaded from memory and attached by descriptor: bpftool's nearest commands, with the cgroup.
            Step::LoopbackInit => format!(
                "# [::1] translation: cgroup sock_addr programs {p}_conn/_send/_recv/_peer, if not there\n\
                 bpftool cgroup attach \"${{{env}:-/sys/fs/cgroup}}\" connect6 name {p}_conn multi\n\
                 bpftool cgroup attach \"${{{env}:-/sys/fs/cgroup}}\" sendmsg6 name {p}_send multi\n\
                 bpftool cgroup attach \"${{{env}:-/sys/fs/cgroup}}\" recvmsg6 name {p}_recv multi\n\
                 bpftool cgroup attach \"${{{env}:-/sys/fs/cgroup}}\" getpeername6 name {p}_peer multi",
                p = crate::kernel::loopback6::PREFIX,
                env = crate::kernel::loopback6::CGROUP_ENV,
            ),
            Step::LoopbackRelease => format!(
                "# [::1] translation: when map {} is empty\n\
                 bpftool cgroup detach \"${{{env}:-/sys/fs/cgroup}}\" connect6 name {p}_conn (and _send, _recv, _peer)",
                crate::kernel::loopback6::PORTS_MAP,
                p = crate::kernel::loopback6::PREFIX,
                env = crate::kernel::loopback6::CGROUP_ENV,
            ),
            Step::LoopbackSync(ports) if ports.is_empty() => Step::LoopbackRelease.render(),
            Step::LoopbackSync(ports) => {
                let mut out = Step::LoopbackInit.render();
                for l in ports {
                    out.push('\n');
                    out.push_str(&Step::LoopbackPortAdd(l.clone()).render());
                }
                let _ = write!(
                    out,
                    "\n# and every other key of {} deleted",
                    crate::kernel::loopback6::PORTS_MAP
                );
                out
            }
            Step::LoopbackPortAdd(l) => {
                format!("bpftool map update name {} {}", crate::kernel::loopback6::PORTS_MAP, render_loopback(l))
            }
            Step::LoopbackPortRemove(l) => format!(
                "bpftool map delete name {} {} (the programs go with the last port)",
                crate::kernel::loopback6::PORTS_MAP,
                render_loopback(l)
            ),
            Step::RemoveUnderlayFilter {
                device,
                handle,
                qdisc,
            } => format!(
                "tc filter del dev {device} ingress protocol all pref {} handle {handle:#x} bpf{}",
                crate::kernel::fastpath::underlay_pref(*handle),
                if *qdisc {
                    format!("\ntc qdisc del dev {device} ingress  # if no filter is left")
                } else {
                    String::new()
                }
            ),
            Step::Firewall { backend, batch } => backend.render(batch),
            Step::CreateVxlan {
                name,
                vni,
                port,
                mtu,
                mac,
                tag,
                ipv6,
            } => {
                let mut out = format!(
                    "ip link add {name} type vxlan id {vni} dstport {port} nolearning\n\
                     ip link set {name} address {mac} mtu {mtu} alias {tag} up"
                );
                if *ipv6 {
                    out.push('\n');
                    out.push_str(&render_ipv6_gateway_link(&Ns::Host, name));
                }
                out
            }
            Step::RetireVeth {
                host,
                peer,
                peer_ns,
                retired,
                ..
            } => format!(
                "{ip} link set {peer} down\n{ip} link set {peer} name {retired}\n\
                 ip link set {host} down\n\
                 ip link set {host} group {group}",
                ip = peer_ns.ip(),
                group = crate::kernel::netlink::RETIRED_GROUP
            ),
            Step::UnretireVeth {
                host,
                peer,
                peer_ns,
                retired,
                ..
            } => format!(
                "ip link set {host} group 0 up\n\
                 {ip} link set {retired} name {peer} up",
                ip = peer_ns.ip()
            ),
            Step::DeleteRetired { .. } => format!(
                "ip link delete group {}",
                crate::kernel::netlink::RETIRED_GROUP
            ),
            Step::SetPeer { overlay, peer } => render_peer(overlay, peer, "replace"),
            Step::RemovePeer { overlay, peer } => render_peer(overlay, peer, "del"),
            Step::WriteResolvConf { netns, text } => {
                let dir = crate::kernel::netns::etc_dir(netns);
                let lines: Vec<String> = text.lines().map(|l| format!("'{l}'")).collect();
                format!(
                    "mkdir -p {d}\nprintf '%s\\n' {} > {d}/resolv.conf",
                    lines.join(" "),
                    d = dir.display()
                )
            }
            Step::RemoveResolvConf { netns, .. } => {
                let dir = crate::kernel::netns::etc_dir(netns);
                format!("rm {d}/resolv.conf\nrmdir {d}", d = dir.display())
            }
        }
    }
}

/// A peer's entries as `bridge`/`ip` commands: `verb` is `replace` or `del`.
/// A `[::1]` translation entry in words: key and value as bpftool would be given them, spelled out.
fn render_loopback(l: &Loopback) -> String {
    let range = |first: u16| {
        let last = first.saturating_add(l.count.saturating_sub(1));
        if last == first {
            first.to_string()
        } else {
            format!("{first}-{last}")
        }
    };
    format!(
        "key {} [::1]:{} value [{}]:{}{}",
        l.proto,
        range(l.host_port),
        l.target,
        range(l.container_port),
        if l.every {
            " (and at the host's own IPv6 addresses)"
        } else {
            ""
        }
    )
}

fn render_peer(o: &PeerLink, peer: &Peer, verb: &str) -> String {
    let (dev, src, subnet) = (&o.device, o.src, peer.subnet);
    let proto = crate::kernel::netlink::NSNET_ROUTE_PROTOCOL;
    let four = match (o.backend, peer.vtep_mac) {
        (OverlayBackend::Vxlan, Some(mac)) => {
            let via = peer.vxlan_gateway();
            let dst = peer.underlay;
            let (fdb, neigh, route) = if verb == "del" {
                (
                    format!("bridge fdb del {mac} dev {dev} self"),
                    format!("ip neigh del {via} dev {dev}"),
                    format!("ip route del {subnet} via {via} dev {dev} onlink proto {proto}"),
                )
            } else {
                (
                    format!("bridge fdb replace {mac} dev {dev} dst {dst} self permanent"),
                    format!("ip neigh replace {via} lladdr {mac} dev {dev} nud permanent"),
                    format!(
                        "ip route replace {subnet} via {via} dev {dev} onlink src {src} proto {proto}"
                    ),
                )
            };
            // Set-up order: the FDB and neighbour entries before the route that needs them; removal in reverse.
            if verb == "del" {
                format!("{route}\n{neigh}\n{fdb}")
            } else {
                format!("{fdb}\n{neigh}\n{route}")
            }
        }
        (OverlayBackend::Vxlan, None) => {
            format!(
                "# peer {subnet} at {} has no VTEP MAC: nothing to program",
                peer.underlay
            )
        }
        (OverlayBackend::HostGw, _) => {
            let via = peer.underlay;
            if verb == "del" {
                format!("ip route del {subnet} via {via} dev {dev} proto {proto}")
            } else {
                format!("ip route replace {subnet} via {via} dev {dev} src {src} proto {proto}")
            }
        }
    };
    match render_peer6(o, peer, verb) {
        // Set up after the IPv4 entries, removed before them.
        Some(six) if verb == "del" => format!("{six}\n{four}"),
        Some(six) => format!("{four}\n{six}"),
        None => four,
    }
}

/// A peer's IPv6 entries (dual-stack overlays): a permanent neighbour for its IPv6 block's first address, and
/// an onlink route to the block via it, for both backends.
fn render_peer6(o: &PeerLink, peer: &Peer, verb: &str) -> Option<String> {
    let src = o.src6?;
    let (block, via, mac) = peer.gateway6(o.backend)?;
    let (dev, proto) = (&o.device, crate::kernel::netlink::NSNET_ROUTE_PROTOCOL);
    Some(if verb == "del" {
        format!(
            "ip -6 route del {block} via {via} dev {dev} onlink proto {proto}\n\
             ip -6 neigh del {via} dev {dev}"
        )
    } else {
        format!(
            "ip -6 neigh replace {via} lladdr {mac} dev {dev} nud permanent\n\
             ip -6 route replace {block} via {via} dev {dev} onlink src {src} proto {proto}"
        )
    })
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What a dual-stack gateway link (a bridge, or the veth driver's host end) gets besides its addresses: no
/// automatic link-local address, no router advertisements taken, IPv6 on (`disable_ipv6=0` is written only
/// where the host's default turned it off).
fn render_ipv6_gateway_link(ns: &Ns, name: &str) -> String {
    format!(
        "{} link set {name} addrgenmode none\n\
         sysctl -w net.ipv6.conf.{name}.accept_ra=0\n\
         sysctl -w net.ipv6.conf.{name}.disable_ipv6=0",
        ns.ip()
    )
}

impl Step {
    /// `net.ipv4.ip_forward=1`.
    pub fn forwarding() -> Step {
        Step::Sysctl {
            ns: Ns::Host,
            key: "net/ipv4/ip_forward".into(),
            value: "1".into(),
        }
    }

    /// `net.ipv6.conf.all.forwarding=1`: IPv6 forwarding is global (a link's own `forwarding` only picks host
    /// or router behaviour). It also makes every link a router, which purges the routes router advertisements
    /// gave and ignores later ones, except on links with `accept_ra=2` ([`Step::accept_ra_as_router`]).
    pub fn forwarding6() -> Step {
        Step::Sysctl {
            ns: Ns::Host,
            key: "net/ipv6/conf/all/forwarding".into(),
            value: "1".into(),
        }
    }

    /// `net.ipv6.conf.IFNAME.accept_ra=2`: the link keeps taking router advertisements once the host forwards
    /// IPv6. Never reverted, like forwarding itself.
    pub fn accept_ra_as_router(interface: &str) -> Step {
        Step::Sysctl {
            ns: Ns::Host,
            key: format!("net/ipv6/conf/{interface}/accept_ra"),
            value: "2".into(),
        }
    }

    /// Whether this step switches forwarding on, for either family (never undone, so never restored).
    pub fn is_forwarding(&self) -> bool {
        *self == Step::forwarding() || *self == Step::forwarding6()
    }

    /// `net.ipv4.conf.IFNAME.route_localnet=1`: lets the host reach published ports through 127.0.0.1 (the
    /// DNATed packet leaves through this interface with a loopback source, masqueraded on the way out).
    pub fn route_localnet(interface: &str) -> Step {
        Step::Sysctl {
            ns: Ns::Host,
            key: format!("net/ipv4/conf/{interface}/route_localnet"),
            value: "1".into(),
        }
    }
}

/// The step that brings a veth's host end up (and so both ends' carrier), the first of them: a `LinkUp` in the
/// host of a link an earlier step created as a veth's host end.
fn first_carrier(steps: &[Step]) -> Option<usize> {
    steps.iter().enumerate().position(|(i, step)| match step {
        Step::LinkUp { ns: Ns::Host, name } => steps[..i]
            .iter()
            .any(|s| matches!(s, Step::CreateVeth { host, .. } if host == name)),
        _ => false,
    })
}

/// An ordered list of steps.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// For teardown steps, which have no one-step undo: `restore[i]` brings back what `steps[i]` removes (a
    /// deleted veth comes back with its addresses and routes). Empty for set-up plans, whose steps undo
    /// themselves ([`Step::undo`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restore: Vec<Vec<Step>>,
}

impl Plan {
    /// Set-up order: the kernel objects, with the firewall batch (one transaction) just before the first
    /// sandbox's veth gets its carrier, when its host end comes up. Until then no frame of the sandbox's
    /// reaches a bridge or the host, so none gets past before its anti-spoofing elements are in: not the
    /// MLD reports a new interface sends at once, nor a process already running in an attached namespace.
    /// The rules name interfaces and addresses, not links, so every one of them can be in before the links
    /// are up. Without a veth, the batch comes last.
    pub fn setup(kernel: Vec<Step>, fw: Batch, backend: Backend) -> Plan {
        let mut steps = kernel;
        if !fw.is_empty() {
            let at = first_carrier(&steps).unwrap_or(steps.len());
            steps.insert(at, Step::Firewall { backend, batch: fw });
        }
        Plan {
            steps,
            restore: vec![],
        }
    }

    /// A teardown step and what restores it if a later step fails.
    pub fn push_teardown(&mut self, step: Step, restore: Vec<Step>) {
        self.restore.resize(self.steps.len(), vec![]);
        self.steps.push(step);
        self.restore.push(restore);
    }

    /// The steps that undo step `i`, in order: its restore list, or its own undo.
    pub fn undo_of(&self, i: usize) -> Vec<Step> {
        match self.restore.get(i) {
            Some(r) if !r.is_empty() => r.clone(),
            _ => self.steps.get(i).and_then(Step::undo).into_iter().collect(),
        }
    }

    /// This plan followed by `other`.
    pub fn then(mut self, other: Plan) -> Plan {
        for (i, step) in other.steps.iter().enumerate() {
            let restore = other.restore.get(i).cloned().unwrap_or_default();
            self.push_teardown(step.clone(), restore);
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The whole plan as shell commands, one step after another.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // A dual-stack port has one `FastPathAdd` per family, one right after the other; the second only
        // updates the map (the applier keeps the first's fast path), so its qdisc line is not shown.
        let mut previous: Option<&Step> = None;
        for step in &self.steps {
            let text = step.render();
            let text = match (previous, step) {
                (Some(Step::FastPathAdd { port: before, .. }), Step::FastPathAdd { port, .. })
                    if before == port =>
                {
                    text.lines().skip(1).collect::<Vec<_>>().join("\n")
                }
                _ => text,
            };
            previous = Some(step);
            let _ = writeln!(out, "{text}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dual_stack_port_joins_the_fast_path_block_once_in_the_rendering() {
        let add = |ip: &str| Step::FastPathAdd {
            bridge: "nsbr-web".into(),
            port: "veth1".into(),
            peer_ns: Ns::Path(PathBuf::from("/run/netns/app")),
            ip: ip.parse().unwrap(),
            mac: Mac([2, 0x6e, 10, 89, 1, 2]),
        };
        let plan = Plan {
            steps: vec![add("10.89.1.2"), add("fd00:89:1::2")],
            ..Plan::default()
        };
        let text = plan.render();
        assert_eq!(text.matches("tc qdisc add dev veth1").count(), 1, "{text}");
        assert!(text.contains("# fast path: 10.89.1.2 -> veth1"), "{text}");
        assert!(
            text.contains("# fast path: fd00:89:1::2 -> veth1"),
            "{text}"
        );
    }

    #[test]
    fn steps_of_either_family_render_as_the_commands_that_do_the_same() {
        let app = Ns::Path(PathBuf::from("/run/netns/app"));
        let pid = Ns::Path(PathBuf::from("/proc/42/ns/net"));
        let render = |step: Step| step.render();
        let addr = |addr: &str| Step::AddAddress {
            ns: app.clone(),
            dev: "eth0".into(),
            addr: addr.parse().unwrap(),
        };
        assert_eq!(
            render(addr("fd89::2/64")),
            "ip -n app addr add fd89::2/64 dev eth0 nodad"
        );
        assert_eq!(
            render(addr("10.89.0.2/24")),
            "ip -n app addr add 10.89.0.2/24 dev eth0"
        );
        let route = |via: &str| Step::AddDefaultRoute {
            ns: app.clone(),
            dev: "eth0".into(),
            via: via.parse().unwrap(),
        };
        assert_eq!(
            render(route("fd89::1")),
            "ip -n app -6 route add default via fd89::1 dev eth0"
        );
        assert_eq!(
            render(route("10.89.0.1")),
            "ip -n app route add default via 10.89.0.1 dev eth0"
        );
        let sysctl = |ns: &Ns| Step::Sysctl {
            ns: ns.clone(),
            key: "net/ipv6/conf/eth0/accept_ra".into(),
            value: "0".into(),
        };
        assert_eq!(
            render(sysctl(&app)),
            "ip netns exec app sysctl -w net.ipv6.conf.eth0.accept_ra=0"
        );
        assert_eq!(
            render(sysctl(&pid)),
            "nsenter --net=/proc/42/ns/net sysctl -w net.ipv6.conf.eth0.accept_ra=0"
        );
        assert_eq!(
            render(Step::forwarding()),
            "sysctl -w net.ipv4.ip_forward=1"
        );
        assert_eq!(
            render(Step::forwarding6()),
            "sysctl -w net.ipv6.conf.all.forwarding=1"
        );
        assert_eq!(
            render(Step::accept_ra_as_router("eth0")),
            "sysctl -w net.ipv6.conf.eth0.accept_ra=2"
        );
        // Addresses and routes go with their link: no undo of their own.
        assert_eq!(addr("fd89::2/64").undo(), None);
    }

    #[test]
    fn a_sysctl_without_a_namespace_is_the_hosts() {
        let step: Step =
            serde_json::from_str(r#"{"Sysctl":{"key":"net/ipv4/ip_forward","value":"1"}}"#)
                .unwrap();
        assert_eq!(step, Step::forwarding());
    }
}
