//! A small synchronous rtnetlink client: one socket, one request at a time.
//!
//! A netlink socket belongs to the network namespace of the thread that created it, for its whole life.
//! [`crate::netns`] creates sockets inside other namespaces; everything here then works on whatever namespace
//! the socket was born in, from any thread. No async runtime is involved, so no task can migrate between
//! threads that sit in different namespaces.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use netlink_packet_core::{
    DefaultNla, NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla, NLM_F_ACK, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::BridgePortState;
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoBridgePort, InfoData, InfoKind, InfoPortData,
    InfoPortKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::tc::{
    TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcHeader, TcMessage, TcOption,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::KernelError;

/// A link as seen by the kernel: the facts nsnet reads back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    /// The index of the bridge (or other master) this link is enslaved to.
    pub master: Option<u32>,
    /// `ip link set NAME alias TEXT`.
    pub alias: Option<String>,
    /// A bridge port that is forwarding frames.
    pub forwarding: bool,
    /// Its link group (`ip link set NAME group N`); 0 by default.
    pub group: u32,
}

/// The link group of retired veths ([`Netlink::retire`]), deleted together ([`Netlink::delete_group`]).
pub const RETIRED_GROUP: u32 = 0x6e73_7274;

/// A default route: its output link and gateway, when it has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultRoute {
    pub oif: Option<u32>,
    pub gateway: Option<Ipv4Addr>,
}

/// An IPv6 default route: its output link and gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultRoute6 {
    pub oif: Option<u32>,
    pub gateway: Option<Ipv6Addr>,
}

/// What a new veth pair looks like; the host end stays in the socket's namespace. Both ends are created down.
#[derive(Debug, Clone)]
pub struct VethSpec<'a> {
    pub host: &'a str,
    pub peer: &'a str,
    /// The namespace the peer is created in (an open nsfs file).
    pub peer_netns: BorrowedFd<'a>,
    /// Bridge index the host end is enslaved to, in the same request.
    pub master: Option<u32>,
    pub mtu: u32,
    pub peer_mac: Option<[u8; 6]>,
    pub host_mac: Option<[u8; 6]>,
}

/// Where on a link a tc filter runs: on the frames it receives, or on those it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcHook {
    Ingress,
    Egress,
}

/// Where tc filters hang: one hook of one link, or a shared filter block (`tc filter ... block N`), which
/// every qdisc bound to it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterAt {
    Link(u32, TcHook),
    Block(u32),
}

impl FilterAt {
    /// A filter message addressed here: the link's index and its hook's class (`ffff:fff2`, `ffff:fff3`,
    /// which an `ingress` qdisc answers to as well as clsact), or the block's magic index and number.
    fn message(self) -> Result<TcMessage, KernelError> {
        Ok(match self {
            FilterAt::Link(index, hook) => {
                let mut msg = TcMessage::with_index(tc_ifindex(index)?);
                msg.header.parent = TcHandle {
                    major: 0xffff,
                    minor: match hook {
                        TcHook::Ingress => TcHandle::MIN_INGRESS,
                        TcHook::Egress => TcHandle::MIN_EGRESS,
                    },
                };
                msg
            }
            FilterAt::Block(block) => {
                let mut msg = TcMessage::with_index(MAGIC_BLOCK_INDEX);
                // `tcm_parent` doubles as `tcm_block_index`.
                msg.header.parent = TcHandle::from(block);
                msg
            }
        })
    }
}

/// `TCM_IFINDEX_MAGIC_BLOCK` (0xffffffff) in `tcm_ifindex`, which is an `int`: the same 32 bits, read as
/// the kernel reads them.
const MAGIC_BLOCK_INDEX: i32 = i32::from_ne_bytes(TcHeader::TCM_IFINDEX_MAGIC_BLOCK.to_ne_bytes());

/// A link's index as tc's `tcm_ifindex`, an `int`. The kernel's ifindexes are positive `int`s, so an index
/// that does not fit names no link.
fn tc_ifindex(index: u32) -> Result<i32, KernelError> {
    i32::try_from(index).map_err(|_| KernelError::Missing(format!("link {index}")))
}

impl std::fmt::Display for FilterAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FilterAt::Link(index, hook) => write!(f, "link {index} {hook:?}"),
            FilterAt::Block(block) => write!(f, "block {block}"),
        }
    }
}

/// A bpf program tc runs, as [`Netlink::bpf_filters`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpfFilter {
    /// The name given when it was attached.
    pub name: String,
    /// The program's id.
    pub id: u32,
    /// The shared block it hangs on, if it is on one.
    pub block: Option<u32>,
    /// Its preference (priority) and handle: together, which filter it is.
    pub pref: u16,
    pub handle: u32,
}

/// A link's ingress qdisc (`ingress`, or `clsact`, which has an ingress hook too), as
/// [`Netlink::ingress_qdisc`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressQdisc {
    /// `ingress` or `clsact`.
    pub kind: String,
    /// The shared filter block its ingress is bound to, if it is bound to one: filters are then added to the
    /// block, never by the link.
    pub block: Option<u32>,
}

/// `rtm_protocol` of the routes nsnet's overlay makes (110: neither a kernel `RTPROT_*` value nor one in
/// iproute2's `rt_protos`). [`Netlink::routes_with_protocol`] finds exactly them, and [`Netlink::route_delete`]
/// never matches a route anyone else made.
pub const NSNET_ROUTE_PROTOCOL: u8 = 0x6e;

/// `NUD_PERMANENT` in `ndm_state`: an entry that never expires and is never probed.
pub const NUD_PERMANENT: u16 = 0x80;

/// A neighbour entry: address, MAC and `ndm_state` (NUD_* bits).
pub type Neighbour = (Ipv4Addr, [u8; 6], u16);
/// An IPv6 neighbour entry, as [`Neighbour`].
pub type Neighbour6 = (Ipv6Addr, [u8; 6], u16);

/// A VXLAN FDB entry: MAC and the underlay address frames for it are sent to.
pub type FdbEntry = ([u8; 6], Option<Ipv4Addr>);

/// A VXLAN device as nsnet makes it. Learning is always off and there is no remote or group: every
/// destination comes from FDB entries ([`Netlink::fdb_replace`]). No local address either, so a change of the
/// host's underlay address needs no re-creation.
#[derive(Debug, Clone)]
pub struct VxlanSpec<'a> {
    pub name: &'a str,
    pub vni: u32,
    /// The UDP destination port (4789 is IANA's).
    pub port: u16,
    pub mtu: u32,
    pub mac: [u8; 6],
    /// The underlay link (`IFLA_VXLAN_LINK`): packets leave by it, and its MTU bounds this one's.
    pub underlay_dev: Option<u32>,
}

/// A VXLAN device as the kernel reports it ([`Netlink::vxlan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanInfo {
    pub index: u32,
    pub vni: u32,
    pub port: u16,
    pub learning: bool,
    pub mtu: u32,
    pub mac: [u8; 6],
    pub up: bool,
    pub underlay_dev: Option<u32>,
    pub local: Option<Ipv4Addr>,
}

/// An IPv4 main-table route through one gateway: what the overlay installs for each peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: Ipv4Net,
    pub via: Ipv4Addr,
    pub dev_index: u32,
    /// The gateway counts as reachable on `dev_index` although no local subnet holds it (a peer's overlay
    /// address behind the VXLAN device).
    pub onlink: bool,
    /// The source address of packets this host sends by the route.
    pub prefsrc: Option<Ipv4Addr>,
}

/// The IPv6 twin of [`RouteSpec`] for a peer's IPv6 block: always onlink through `via` (a permanent
/// neighbour entry's address), in the main table, with protocol [`NSNET_ROUTE_PROTOCOL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec6 {
    pub dst: Ipv6Net,
    pub via: Ipv6Addr,
    pub dev_index: u32,
    /// The source address of packets this host sends by the route (ignored when deleting).
    pub prefsrc: Option<Ipv6Addr>,
}

/// `TCA_INGRESS_BLOCK`: the shared block a qdisc's ingress filters come from (not in netlink-packet-route).
const TCA_INGRESS_BLOCK: u16 = 13;

/// The preference (priority) of nsnet's tc filters: first, before any filter added with tc's defaults.
const FILTER_PREF: u16 = 1;

/// `ETH_P_ALL`: a filter's protocol when it sees every frame.
const ETH_P_ALL: u16 = 0x0003;

/// A new bpf filter at `at` (direct action, every protocol) running `prog`, named `name`.
fn bpf_filter_message(
    at: FilterAt,
    pref: u16,
    handle: u32,
    prog: BorrowedFd<'_>,
    name: &str,
) -> Result<TcMessage, KernelError> {
    let mut msg = at.message()?;
    // An open descriptor is never negative.
    let fd = u32::try_from(prog.as_raw_fd()).map_err(|_| {
        KernelError::io(
            format!("attach bpf program {name}"),
            io::Error::from_raw_os_error(libc::EBADF),
        )
    })?;
    msg.header.handle = TcHandle::from(handle);
    // TC_H_MAKE(preference << 16, protocol in network order).
    msg.header.info = (u32::from(pref) << 16) | u32::from(ETH_P_ALL.to_be());
    msg.attributes.push(TcAttribute::Kind("bpf".into()));
    msg.attributes.push(TcAttribute::Options(vec![
        TcOption::Bpf(TcFilterBpfOption::ProgFd(fd)),
        TcOption::Bpf(TcFilterBpfOption::ProgName(name.into())),
        TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
    ]));
    Ok(msg)
}

/// A create request's outcome, where "it is already there" (EEXIST) counts as done.
fn exists_ok(reply: Result<Vec<RouteNetlinkMessage>, KernelError>) -> Result<(), KernelError> {
    match reply {
        Err(e) if e.errno() != Some(libc::EEXIST) => Err(e),
        _ => Ok(()),
    }
}

/// A message about link `index`'s ingress qdisc (`ffff:`, under the ingress parent).
fn ingress_qdisc_message(index: u32) -> Result<TcMessage, KernelError> {
    let mut msg = TcMessage::with_index(tc_ifindex(index)?);
    msg.header.handle = TcHandle {
        major: 0xffff,
        minor: 0,
    };
    msg.header.parent = TcHandle::INGRESS;
    Ok(msg)
}

/// One rtnetlink socket, bound to the namespace it was created in.
pub struct Netlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Open a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, KernelError> {
        let ctx = |e: io::Error| KernelError::io("open netlink socket", e);
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(ctx)?;
        sock.bind_auto().map_err(ctx)?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(ctx)?;
        // Ask for extended acks so the kernel's own message reaches our errors.
        let _ = sock.set_ext_ack(true);
        Ok(Netlink {
            sock,
            seq: 0,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// Send one request and collect every reply up to the ACK (or DONE for dumps).
    fn request(
        &mut self,
        what: &str,
        payload: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, KernelError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(payload));
        msg.finalize();
        let mut out = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut out);
        self.sock
            .send(&out, 0)
            .map_err(|e| KernelError::io(what, e))?;

        let mut replies = Vec::new();
        loop {
            self.buf.clear();
            let n = self
                .sock
                .recv(&mut self.buf, 0)
                .map_err(|e| KernelError::io(what, e))?;
            let data = &self.buf[..n.min(self.buf.len())];
            let mut off = 0;
            while off < data.len() {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])
                    .map_err(|e| KernelError::Decode(format!("{what}: {e}")))?;
                let len = m.header.length as usize;
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
                if m.header.sequence_number != self.seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(replies),
                            Some(code) => Err(KernelError::io(
                                what,
                                io::Error::from_raw_os_error(-code.get()),
                            )),
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                    _ => {}
                }
            }
        }
    }

    /// Look a link up by name; `None` when there is no such link.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>, KernelError> {
        Ok(self.link_message(name)?.map(|l| link_from(&l)))
    }

    /// The kernel's whole answer about link NAME; `None` when there is no such link.
    fn link_message(&mut self, name: &str) -> Result<Option<LinkMessage>, KernelError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(
            &format!("look up link {name}"),
            RouteNetlinkMessage::GetLink(msg),
            0,
        ) {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The name of link `index`; `None` when there is no such link.
    fn link_name(&mut self, index: u32) -> Result<Option<String>, KernelError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.request(
            &format!("look up link {index}"),
            RouteNetlinkMessage::GetLink(msg),
            0,
        ) {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(link_from(&l).name),
                _ => None,
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The index of a link that must exist.
    pub fn link_index(&mut self, name: &str) -> Result<u32, KernelError> {
        self.link(name)?
            .map(|l| l.index)
            .ok_or_else(|| KernelError::Missing(format!("link {name}")))
    }

    /// Every link in this namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, KernelError> {
        let replies = self.request(
            "list links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(link_from(l)),
                _ => None,
            })
            .collect())
    }

    /// `ip link add NAME address MAC mtu MTU type bridge`, created up.
    pub fn create_bridge(
        &mut self,
        name: &str,
        mtu: u32,
        mac: [u8; 6],
    ) -> Result<u32, KernelError> {
        let mut msg = LinkMessage::default();
        up(&mut msg);
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.request(
            &format!("create bridge {name}"),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        self.link_index(name)
    }

    /// Create a veth pair with its peer directly inside the target namespace and the host end already
    /// enslaved to its bridge: one request, no moment where the peer sits in the host. Both ends start down;
    /// the peer comes up from inside its namespace (the kernel refuses to open it, ENOTCONN, before the pair
    /// is linked, which happens only at the end of this request), the host end last.
    pub fn create_veth(&mut self, spec: &VethSpec<'_>) -> Result<(), KernelError> {
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(spec.peer.to_string()));
        peer.attributes.push(LinkAttribute::Mtu(spec.mtu));
        if let Some(mac) = spec.peer_mac {
            peer.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        peer.attributes
            .push(LinkAttribute::NetNsFd(spec.peer_netns.as_raw_fd()));

        // Both ends start down: the caller turns IPv6 off on them first (see `sysctl::disable_ipv6`).
        let mut msg = LinkMessage::default();
        msg.attributes
            .push(LinkAttribute::IfName(spec.host.to_string()));
        msg.attributes.push(LinkAttribute::Mtu(spec.mtu));
        if let Some(mac) = spec.host_mac {
            msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(master) = spec.master {
            msg.attributes.push(LinkAttribute::Controller(master));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.request(
            &format!("create veth {} (peer {})", spec.host, spec.peer),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// `ip link del NAME`. Returns false when the link was already gone.
    pub fn delete_link(&mut self, name: &str) -> Result<bool, KernelError> {
        match self.link(name)? {
            Some(link) => self.delete(&link),
            None => Ok(false),
        }
    }

    /// Delete a link looked up before. Returns false when it was already gone.
    pub fn delete(&mut self, link: &Link) -> Result<bool, KernelError> {
        let name = &link.name;
        let mut msg = LinkMessage::default();
        msg.header.index = link.index;
        match self.request(
            &format!("delete link {name}"),
            RouteNetlinkMessage::DelLink(msg),
            0,
        ) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `ip link set NAME alias TEXT`.
    pub fn set_alias(&mut self, name: &str, alias: &str) -> Result<(), KernelError> {
        // Addressed by name (index 0): the kernel looks the link up itself, one round trip instead of two.
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes
            .push(LinkAttribute::IfAlias(alias.to_string()));
        self.request(
            &format!("set the alias of {name}"),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )?;
        Ok(())
    }

    /// `ip link set NAME addrgenmode none`, on a link that is still down: it comes up with no IPv6 link-local
    /// address, so it sends no DAD or MLD multicast (see [`super::sysctl::disable_ipv6`] for why that
    /// matters). Used inside sandboxes, where the sysctl would cost a `/proc/sys` lookup that grows with the
    /// number of namespaces (each leaves its own `net/ipv6` entry in one dcache chain).
    pub fn no_ipv6_link_local(&mut self, name: &str) -> Result<(), KernelError> {
        let index = self.link_index(name)?;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
            )]));
        self.request(
            &format!("set addrgenmode none on {name}"),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )?;
        Ok(())
    }

    /// Wait (up to `limit`) until the bridge port NAME forwards. The kernel moves a port to forwarding
    /// when it handles the port's carrier, asynchronously (linkwatch); returns whether it got there.
    pub fn wait_forwarding(
        &mut self,
        name: &str,
        limit: std::time::Duration,
    ) -> Result<bool, KernelError> {
        let start = std::time::Instant::now();
        loop {
            if self.link(name)?.is_some_and(|l| l.forwarding) {
                return Ok(true);
            }
            if start.elapsed() > limit {
                return Ok(false);
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }

    /// `ip link set NAME up`.
    pub fn set_up(&mut self, name: &str) -> Result<(), KernelError> {
        let index = self.link_index(name)?;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        up(&mut msg);
        self.request(
            &format!("set {name} up"),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )?;
        Ok(())
    }

    /// Take a veth end out of use without deleting it: down, renamed to `rename` if given (so its name is
    /// free at once), and, with `group`, put in that link group, to be deleted with the rest of the group later
    /// in one request. Each of these is quick; what is slow is unregistering a device, which waits for an RCU
    /// grace period. A bridge port stays on its bridge, disabled while down (leaving the bridge would wait for
    /// a grace period too). False when there is no link `name`.
    pub fn retire(
        &mut self,
        name: &str,
        rename: Option<&str>,
        group: Option<u32>,
    ) -> Result<bool, KernelError> {
        let Some(link) = self.link(name)? else {
            return Ok(false);
        };
        // A running device cannot be renamed: down first, then the rest in one message.
        let mut down = LinkMessage::default();
        down.header.index = link.index;
        down.header.change_mask |= LinkFlags::Up;
        // The link can vanish under us: a veth whose namespace is being destroyed goes with it (the kernel
        // does that asynchronously, after the last reference to the namespace is dropped). Gone is retired.
        match self.request(
            &format!("set {name} down"),
            RouteNetlinkMessage::SetLink(down),
            0,
        ) {
            Err(e) if e.is_not_found() => return Ok(false),
            other => other?,
        };
        let mut msg = LinkMessage::default();
        msg.header.index = link.index;
        if let Some(new_name) = rename {
            msg.attributes
                .push(LinkAttribute::IfName(new_name.to_string()));
        }
        if let Some(g) = group {
            msg.attributes.push(LinkAttribute::Group(g));
        }
        if !msg.attributes.is_empty() {
            match self.request(
                &format!("retire {name}"),
                RouteNetlinkMessage::SetLink(msg),
                0,
            ) {
                Err(e) if e.is_not_found() => return Ok(false),
                other => other?,
            };
        }
        Ok(true)
    }

    /// Undo [`Self::retire`]: the link now called `current` gets `name` back and group 0, and comes up. False
    /// when there is no link `current`.
    pub fn unretire(&mut self, current: &str, name: &str) -> Result<bool, KernelError> {
        let Some(link) = self.link(current)? else {
            return Ok(false);
        };
        let mut msg = LinkMessage::default();
        msg.header.index = link.index;
        if current != name {
            msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        }
        msg.attributes.push(LinkAttribute::Group(0));
        // As in `retire`: a link that vanished meanwhile has nothing to come back to.
        match self
            .request(
                &format!("bring {current} back as {name}"),
                RouteNetlinkMessage::SetLink(msg),
                0,
            )
            .and_then(|_| self.set_up(name))
        {
            Err(e) if e.is_not_found() => Ok(false),
            other => other.map(|()| true),
        }
    }

    /// `ip link delete group GROUP`: every link of the group, in one request, so the kernel unregisters them
    /// as one batch (one RCU grace period for all, not one each).
    pub fn delete_group(&mut self, group: u32) -> Result<(), KernelError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::Group(group));
        match self.request(
            &format!("delete link group {group}"),
            RouteNetlinkMessage::DelLink(msg),
            0,
        ) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// `tc qdisc add dev INDEX ingress_block BLOCK ingress`: the link's received frames go through the filters
    /// of shared block `BLOCK` (made with the first qdisc bound to it, freed with the last). An ingress qdisc
    /// already there is fine; which block it is bound to is not checked here.
    pub fn add_ingress_qdisc(&mut self, index: u32, block: u32) -> Result<(), KernelError> {
        let mut msg = ingress_qdisc_message(index)?;
        msg.attributes.push(TcAttribute::Kind("ingress".into()));
        msg.attributes.push(TcAttribute::Other(DefaultNla::new(
            TCA_INGRESS_BLOCK,
            block.to_ne_bytes().to_vec(),
        )));
        exists_ok(self.request(
            &format!("add an ingress qdisc on block {block} to link {index}"),
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ))
    }

    /// `tc filter add {dev INDEX {ingress|egress} | block N} pref 1 handle 1 bpf direct-action fd FD name
    /// NAME`. Already there (same preference and handle) is fine.
    pub fn add_bpf_filter(
        &mut self,
        at: FilterAt,
        prog: BorrowedFd<'_>,
        name: &str,
    ) -> Result<(), KernelError> {
        let msg = bpf_filter_message(at, FILTER_PREF, 1, prog, name)?;
        exists_ok(self.request(
            &format!("attach bpf program {name} to {at}"),
            RouteNetlinkMessage::NewTrafficFilter(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ))
    }

    /// `tc filter replace {dev INDEX {ingress|egress} | block N} pref PREF handle HANDLE bpf direct-action fd
    /// FD name NAME`: the filter with that preference and handle runs `prog` now, whatever it ran before.
    pub fn replace_bpf_filter(
        &mut self,
        at: FilterAt,
        (pref, handle): (u16, u32),
        prog: BorrowedFd<'_>,
        name: &str,
    ) -> Result<(), KernelError> {
        let msg = bpf_filter_message(at, pref, handle, prog, name)?;
        self.request(
            &format!("attach bpf program {name} to {at} as pref {pref} handle {handle:#x}"),
            RouteNetlinkMessage::NewTrafficFilter(msg),
            NLM_F_CREATE,
        )
        .map(drop)
    }

    /// `tc filter del {dev INDEX {ingress|egress} | block N} pref PREF handle HANDLE bpf`: that one filter,
    /// nothing else. Already gone is fine.
    pub fn delete_bpf_filter(
        &mut self,
        at: FilterAt,
        (pref, handle): (u16, u32),
    ) -> Result<(), KernelError> {
        let mut msg = at.message()?;
        msg.header.handle = TcHandle::from(handle);
        msg.header.info = (u32::from(pref) << 16) | u32::from(ETH_P_ALL.to_be());
        msg.attributes.push(TcAttribute::Kind("bpf".into()));
        match self.request(
            &format!("delete tc filter pref {pref} handle {handle:#x} from {at}"),
            RouteNetlinkMessage::DelTrafficFilter(msg),
            0,
        ) {
            Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::EINVAL)) => Ok(()),
            other => other.map(drop),
        }
    }

    /// How many tc filters (of any kind, any chain, anyone's) `at` holds; none there is 0.
    pub fn filter_count(&mut self, at: FilterAt) -> Result<usize, KernelError> {
        Ok(self.filter_dump(at)?.len())
    }

    /// The kinds of the filters with preference `pref` at `at` (one classifier holds a preference).
    pub fn filter_kinds(&mut self, at: FilterAt, pref: u16) -> Result<Vec<String>, KernelError> {
        Ok(self
            .filter_dump(at)?
            .into_iter()
            .filter(|m| m.header.info >> 16 == u32::from(pref))
            .flat_map(|m| {
                m.attributes.into_iter().filter_map(|a| match a {
                    TcAttribute::Kind(k) => Some(k),
                    _ => None,
                })
            })
            .collect())
    }

    /// Every filter message of a dump of `at` (a classifier's head, with handle 0, included).
    fn filter_dump(&mut self, at: FilterAt) -> Result<Vec<TcMessage>, KernelError> {
        let replies = match self.request(
            "list tc filters",
            RouteNetlinkMessage::GetTrafficFilter(at.message()?),
            NLM_F_DUMP,
        ) {
            Ok(r) => r,
            Err(e) if matches!(e.errno(), Some(libc::EINVAL) | Some(libc::ENOENT)) => vec![],
            Err(e) => return Err(e),
        };
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewTrafficFilter(m) => Some(m),
                _ => None,
            })
            .collect())
    }

    /// The ingress qdisc of link `index` (`ingress` or `clsact`), if it has one.
    pub fn ingress_qdisc(&mut self, index: u32) -> Result<Option<IngressQdisc>, KernelError> {
        Ok(self
            .ingress_qdiscs()?
            .into_iter()
            .find(|(i, _)| *i == index)
            .map(|(_, q)| q))
    }

    /// Every link's ingress qdisc, by link index (one dump: the kernel lists every link's qdiscs).
    pub fn ingress_qdiscs(&mut self) -> Result<Vec<(u32, IngressQdisc)>, KernelError> {
        let replies = self.request(
            "list qdiscs",
            RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewQueueDiscipline(m) = reply else {
                continue;
            };
            let Ok(index) = u32::try_from(m.header.index) else {
                continue;
            };
            if m.header.parent != TcHandle::INGRESS {
                continue;
            }
            let mut q = IngressQdisc {
                kind: String::new(),
                block: None,
            };
            for attr in &m.attributes {
                match attr {
                    TcAttribute::Kind(k) => q.kind = k.clone(),
                    // A value of another length is no block number (and would not fit the buffer).
                    TcAttribute::Other(nla)
                        if nla.kind() == TCA_INGRESS_BLOCK && nla.value_len() == 4 =>
                    {
                        let mut v = [0u8; 4];
                        nla.emit_value(&mut v);
                        q.block = Some(u32::from_ne_bytes(v)).filter(|b| *b != 0);
                    }
                    _ => {}
                }
            }
            out.push((index, q));
        }
        Ok(out)
    }

    /// `tc qdisc add dev INDEX ingress` (a block of its own): `true` when this call made it, `false` when the
    /// link already had an ingress qdisc.
    pub fn add_own_ingress_qdisc(&mut self, index: u32) -> Result<bool, KernelError> {
        let mut msg = ingress_qdisc_message(index)?;
        msg.attributes.push(TcAttribute::Kind("ingress".into()));
        match self.request(
            &format!("add an ingress qdisc to link {index}"),
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `tc qdisc del dev INDEX ingress`. Already gone is fine.
    pub fn delete_ingress_qdisc(&mut self, index: u32) -> Result<(), KernelError> {
        let msg = ingress_qdisc_message(index)?;
        match self.request(
            &format!("delete the ingress qdisc of link {index}"),
            RouteNetlinkMessage::DelQueueDiscipline(msg),
            0,
        ) {
            Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::EINVAL)) => Ok(()),
            other => other.map(drop),
        }
    }

    /// The bpf programs tc runs at `at`. None there (no qdisc on the link, no such block) is an empty list.
    pub fn bpf_filters(&mut self, at: FilterAt) -> Result<Vec<BpfFilter>, KernelError> {
        let mut out = Vec::new();
        for m in self.filter_dump(at)? {
            let (mut name, mut id) = (None, None);
            for attr in &m.attributes {
                let TcAttribute::Options(opts) = attr else {
                    continue;
                };
                for opt in opts {
                    match opt {
                        TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => name = Some(n.clone()),
                        TcOption::Bpf(TcFilterBpfOption::ProgId(i)) => id = Some(*i),
                        _ => {}
                    }
                }
            }
            // A shared block's filters come back under its magic index, whatever link they were asked of.
            let block = (m.header.index == MAGIC_BLOCK_INDEX).then(|| u32::from(m.header.parent));
            // `tcm_info` is TC_H_MAKE(preference << 16, protocol).
            let pref = u16::try_from(m.header.info >> 16).unwrap_or(0);
            let handle = u32::from(m.header.handle);
            if let (Some(name), Some(id)) = (name, id) {
                out.push(BpfFilter {
                    name,
                    id,
                    block,
                    pref,
                    handle,
                });
            }
        }
        Ok(out)
    }

    /// Bind a bridge port to the one MAC its sandbox owns: `ip link set NAME type bridge_slave learning off
    /// locked on [hairpin on]`, then `bridge fdb add MAC dev NAME master static`. On a locked port the bridge
    /// drops every frame (of any type) whose source MAC has no FDB entry on that very port, before it learns
    /// anything, so a sandbox cannot claim a neighbour's MAC and pull the neighbour's traffic to itself; with
    /// learning off its static entry is the only one the port ever has.
    pub fn bind_port(
        &mut self,
        name: &str,
        mac: [u8; 6],
        hairpin: bool,
    ) -> Result<(), KernelError> {
        let index = self.link_index(name)?;
        let mut port = vec![
            InfoBridgePort::Learning(false),
            InfoBridgePort::Locked(true),
        ];
        if hairpin {
            port.push(InfoBridgePort::HairpinMode(true));
        }
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(port)),
        ]));
        self.request(
            &format!("lock bridge port {name}"),
            RouteNetlinkMessage::NewLink(msg),
            0,
        )?;
        // NUD_NOARP without NUD_PERMANENT is iproute2's `static`: an entry pointing at the port. A permanent
        // (local) entry would mean "this MAC is the bridge's own", which a locked port refuses as a source.
        let mut fdb = NeighbourMessage::default();
        fdb.header.family = AddressFamily::Bridge;
        fdb.header.ifindex = index;
        fdb.header.state = NeighbourState::Noarp;
        fdb.header.flags = NeighbourFlags::Controller;
        fdb.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.request(
            &format!("add the fdb entry of {name}"),
            // Exclusive: an entry for this MAC on another port means two sandboxes claim one MAC, which must
            // fail loudly rather than move the other sandbox's binding here.
            RouteNetlinkMessage::NewNeighbour(fdb),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// `ip addr add ADDR/LEN dev NAME`: IPv4 with the broadcast address set (like `ip addr add ... brd +`),
    /// IPv6 with `nodad`.
    pub fn add_address(&mut self, name: &str, addr: IpNet) -> Result<(), KernelError> {
        let index = self.link_index(name)?;
        let mut msg = AddressMessage::default();
        msg.header.prefix_len = addr.prefix_len();
        msg.header.index = index;
        let ip = addr.addr();
        msg.attributes.push(AddressAttribute::Local(ip));
        msg.attributes.push(AddressAttribute::Address(ip));
        match addr {
            IpNet::V4(addr) => {
                msg.header.family = AddressFamily::Inet;
                if addr.prefix_len() < 31 {
                    msg.attributes
                        .push(AddressAttribute::Broadcast(addr.broadcast()));
                }
            }
            IpNet::V6(_) => {
                // No DAD: usable at once (never tentative), and no solicitation flooded to the bridge. The
                // header's flags hold the low 8 bits, IFA_FLAGS all of them; the kernel reads the latter.
                msg.header.family = AddressFamily::Inet6;
                msg.header.flags = AddressHeaderFlags::Nodad;
                msg.attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
        }
        self.request(
            &format!("add address {addr} to {name}"),
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// `ip route add default via GW dev NAME`, for GW's family.
    pub fn add_default_route(&mut self, name: &str, via: IpAddr) -> Result<(), KernelError> {
        let index = self.link_index(name)?;
        let mut msg = RouteMessage::default();
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Static;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        let (family, gateway) = match via {
            IpAddr::V4(v4) => (AddressFamily::Inet, RouteAddress::Inet(v4)),
            IpAddr::V6(v6) => (AddressFamily::Inet6, RouteAddress::Inet6(v6)),
        };
        msg.header.address_family = family;
        msg.attributes.push(RouteAttribute::Gateway(gateway));
        msg.attributes.push(RouteAttribute::Oif(index));
        self.request(
            &format!("add default route via {via} dev {name}"),
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Every IPv4 address in this namespace, in CIDR form.
    pub fn ipv4_addresses(&mut self) -> Result<Vec<Ipv4Net>, KernelError> {
        Ok(self.addresses()?.into_iter().map(|(_, a)| a).collect())
    }

    /// The IPv4 addresses of one link.
    pub fn addresses_of(&mut self, name: &str) -> Result<Vec<Ipv4Net>, KernelError> {
        let index = self.link_index(name)?;
        Ok(self
            .addresses()?
            .into_iter()
            .filter(|(i, _)| *i == index)
            .map(|(_, a)| a)
            .collect())
    }

    /// Every IPv4 route of the main table.
    fn main_routes(&mut self) -> Result<Vec<RouteMessage>, KernelError> {
        Ok(self
            .routes_of(AddressFamily::Inet)?
            .into_iter()
            .filter(|m| m.header.table == RouteHeader::RT_TABLE_MAIN)
            .collect())
    }

    /// Every route of `family` in this namespace, all tables (one dump).
    fn routes_of(&mut self, family: AddressFamily) -> Result<Vec<RouteMessage>, KernelError> {
        let mut req = RouteMessage::default();
        req.header.address_family = family;
        let what = match family {
            AddressFamily::Inet6 => "list IPv6 routes",
            _ => "list routes",
        };
        let replies = self.request(what, RouteNetlinkMessage::GetRoute(req), NLM_F_DUMP)?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewRoute(m) => Some(m),
                _ => None,
            })
            .collect())
    }

    /// The IPv4 default routes in the main table.
    pub fn default_routes(&mut self) -> Result<Vec<DefaultRoute>, KernelError> {
        let mut out = Vec::new();
        for m in self.main_routes()? {
            if m.header.destination_prefix_length != 0 {
                continue;
            }
            let (oif, gw) = oif_and_gateway(&m);
            out.push(DefaultRoute {
                oif,
                gateway: gw.and_then(v4),
            });
        }
        Ok(out)
    }

    /// Every IPv4 address with the name of its link (an address whose link is gone meanwhile is left out).
    pub fn addresses_by_link(&mut self) -> Result<Vec<(String, Ipv4Net)>, KernelError> {
        let links = self.links()?;
        Ok(self
            .addresses()?
            .into_iter()
            .filter_map(|(i, a)| {
                links
                    .iter()
                    .find(|l| l.index == i)
                    .map(|l| (l.name.clone(), a))
            })
            .collect())
    }

    /// `ip route get DST` with the output link by name: `None` when DST is unreachable.
    pub fn route_get_named(
        &mut self,
        dst: Ipv4Addr,
    ) -> Result<Option<(String, Option<Ipv4Addr>)>, KernelError> {
        let Some((oif, gw)) = self.route_get(dst)? else {
            return Ok(None);
        };
        Ok(self.link_name(oif)?.map(|name| (name, gw)))
    }

    /// Every IPv4 address with the index of its link.
    fn addresses(&mut self) -> Result<Vec<(u32, Ipv4Net)>, KernelError> {
        let mut req = AddressMessage::default();
        req.header.family = AddressFamily::Inet;
        let replies = self.request(
            "list addresses",
            RouteNetlinkMessage::GetAddress(req),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for r in replies {
            let RouteNetlinkMessage::NewAddress(a) = r else {
                continue;
            };
            for attr in &a.attributes {
                if let AddressAttribute::Local(IpAddr::V4(ip)) = attr {
                    if let Ok(net) = Ipv4Net::new(*ip, a.header.prefix_len) {
                        out.push((a.header.index, net));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Every IPv6 address in this namespace, in CIDR form (link-local ones included).
    pub fn ipv6_addresses(&mut self) -> Result<Vec<Ipv6Net>, KernelError> {
        Ok(self
            .ipv6_addresses_by_index()?
            .into_iter()
            .map(|(_, a)| a)
            .collect())
    }

    /// Every IPv6 address with its link's name (link-local ones included).
    pub fn ipv6_addresses_by_link(&mut self) -> Result<Vec<(String, Ipv6Net)>, KernelError> {
        let links = self.links()?;
        Ok(self
            .ipv6_addresses_by_index()?
            .into_iter()
            .filter_map(|(i, a)| {
                links
                    .iter()
                    .find(|l| l.index == i)
                    .map(|l| (l.name.clone(), a))
            })
            .collect())
    }

    /// `ip -6 route get DST` with the output link by name and the gateway: `None` when DST is unreachable.
    pub fn route_get6_named(
        &mut self,
        dst: Ipv6Addr,
    ) -> Result<Option<(String, Option<Ipv6Addr>)>, KernelError> {
        let Some((oif, gw)) = self.route_lookup(dst.into())? else {
            return Ok(None);
        };
        let gw = gw.and_then(|g| match g {
            IpAddr::V6(g) => Some(g),
            IpAddr::V4(_) => None,
        });
        Ok(self.link_name(oif)?.map(|name| (name, gw)))
    }

    /// The IPv6 addresses of one link (link-local ones included).
    pub fn ipv6_addresses_of(&mut self, name: &str) -> Result<Vec<Ipv6Net>, KernelError> {
        let index = self.link_index(name)?;
        Ok(self
            .ipv6_addresses_by_index()?
            .into_iter()
            .filter(|(i, _)| *i == index)
            .map(|(_, a)| a)
            .collect())
    }

    /// The IPv6 default routes in the main table: output link and gateway.
    pub fn ipv6_default_routes(&mut self) -> Result<Vec<DefaultRoute6>, KernelError> {
        let mut out = Vec::new();
        for m in self.routes_of(AddressFamily::Inet6)? {
            if m.header.table != RouteHeader::RT_TABLE_MAIN
                || m.header.destination_prefix_length != 0
            {
                continue;
            }
            let mut route = DefaultRoute6 {
                oif: None,
                gateway: None,
            };
            for attr in &m.attributes {
                match attr {
                    RouteAttribute::Oif(i) => route.oif = Some(*i),
                    RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => route.gateway = Some(*ip),
                    _ => {}
                }
            }
            out.push(route);
        }
        Ok(out)
    }

    /// Every IPv6 address with the index of its link.
    fn ipv6_addresses_by_index(&mut self) -> Result<Vec<(u32, Ipv6Net)>, KernelError> {
        let mut req = AddressMessage::default();
        req.header.family = AddressFamily::Inet6;
        let replies = self.request(
            "list IPv6 addresses",
            RouteNetlinkMessage::GetAddress(req),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for r in replies {
            let RouteNetlinkMessage::NewAddress(a) = r else {
                continue;
            };
            // IFA_ADDRESS holds an IPv6 address (IFA_LOCAL only differs on point-to-point links).
            let ip = a.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Address(IpAddr::V6(ip)) => Some(*ip),
                _ => None,
            });
            if let Some(net) = ip.and_then(|ip| Ipv6Net::new(ip, a.header.prefix_len).ok()) {
                out.push((a.header.index, net));
            }
        }
        Ok(out)
    }

    /// The links that hold an IPv6 route learnt from a router advertisement (`proto ra`), by index, each once.
    pub fn ipv6_ra_route_links(&mut self) -> Result<Vec<u32>, KernelError> {
        let mut out = Vec::new();
        for m in self.routes_of(AddressFamily::Inet6)? {
            if m.header.protocol != RouteProtocol::Ra {
                continue;
            }
            if let (Some(oif), _) = oif_and_gateway(&m) {
                if !out.contains(&oif) {
                    out.push(oif);
                }
            }
        }
        Ok(out)
    }

    /// Destinations of the IPv6 routes in this namespace's main table, default routes left out.
    pub fn ipv6_routes(&mut self) -> Result<Vec<Ipv6Net>, KernelError> {
        let mut out = Vec::new();
        for m in self.routes_of(AddressFamily::Inet6)? {
            let len = m.header.destination_prefix_length;
            if m.header.table != RouteHeader::RT_TABLE_MAIN
                || m.header.kind != RouteType::Unicast
                || len == 0
            {
                continue;
            }
            for attr in &m.attributes {
                if let RouteAttribute::Destination(RouteAddress::Inet6(ip)) = attr {
                    if let Ok(net) = Ipv6Net::new(*ip, len) {
                        out.push(net.trunc());
                    }
                }
            }
        }
        Ok(out)
    }

    /// Destinations of the IPv4 routes in this namespace's main table, default routes left out.
    pub fn ipv4_routes(&mut self) -> Result<Vec<Ipv4Net>, KernelError> {
        let mut out = Vec::new();
        for m in self.main_routes()? {
            let len = m.header.destination_prefix_length;
            if m.header.kind != RouteType::Unicast || len == 0 {
                continue;
            }
            for attr in &m.attributes {
                if let RouteAttribute::Destination(RouteAddress::Inet(ip)) = attr {
                    if let Ok(net) = Ipv4Net::new(*ip, len) {
                        out.push(net.trunc());
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The overlay's primitives: a VXLAN device, its FDB, permanent neighbours and gateway routes.
impl Netlink {
    /// `ip link add NAME address MAC mtu MTU type vxlan id VNI dstport PORT nolearning noudpcsum [dev LINK]`,
    /// created down so the caller can finish it (e.g. [`Self::no_ipv6_link_local`]) before [`Self::set_up`].
    /// A link of that name already there fails with EEXIST; [`Self::vxlan`] tells the caller whether it is
    /// the same device. The kernel also answers EEXIST to a second VXLAN device with the same VNI and port
    /// in one namespace.
    pub fn create_vxlan(&mut self, spec: &VxlanSpec<'_>) -> Result<(), KernelError> {
        let mut data = vec![
            InfoVxlan::Id(spec.vni),
            InfoVxlan::Port(spec.port),
            InfoVxlan::Learning(false),
            // The kernel checksums IPv4 VXLAN by default; the inner packets carry their own checksums.
            InfoVxlan::UDPCsum(false),
        ];
        if let Some(dev) = spec.underlay_dev {
            data.push(InfoVxlan::Link(dev));
        }
        let mut msg = LinkMessage::default();
        msg.attributes
            .push(LinkAttribute::IfName(spec.name.to_string()));
        msg.attributes.push(LinkAttribute::Mtu(spec.mtu));
        msg.attributes
            .push(LinkAttribute::Address(spec.mac.to_vec()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(data)),
        ]));
        self.request(
            &format!(
                "create vxlan {} (vni {}, port {})",
                spec.name, spec.vni, spec.port
            ),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// The VXLAN device NAME as it is; `None` when no link has that name or it is not a VXLAN device.
    pub fn vxlan(&mut self, name: &str) -> Result<Option<VxlanInfo>, KernelError> {
        let Some(msg) = self.link_message(name)? else {
            return Ok(None);
        };
        let Some(data) = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                LinkInfo::Data(InfoData::Vxlan(d)) => Some(d),
                _ => None,
            }),
            _ => None,
        }) else {
            return Ok(None);
        };
        let link = link_from(&msg);
        let mut info = VxlanInfo {
            index: link.index,
            vni: 0,
            port: 0,
            learning: false,
            mtu: link.mtu.unwrap_or(0),
            mac: link.mac.unwrap_or([0; 6]),
            up: msg.header.flags.contains(LinkFlags::Up),
            underlay_dev: None,
            local: None,
        };
        for attr in data {
            match attr {
                InfoVxlan::Id(v) => info.vni = *v,
                InfoVxlan::Port(p) => info.port = *p,
                InfoVxlan::Learning(l) => info.learning = *l,
                InfoVxlan::Link(i) if *i != 0 => info.underlay_dev = Some(*i),
                InfoVxlan::Local(ip) if !ip.is_unspecified() => info.local = Some(*ip),
                _ => {}
            }
        }
        Ok(Some(info))
    }

    /// `ip link set NAME mtu MTU`. A VXLAN device on an underlay link refuses (EINVAL) more than that link's
    /// MTU less the 50 bytes of encapsulation.
    pub fn set_mtu(&mut self, name: &str, mtu: u32) -> Result<(), KernelError> {
        // Addressed by name: one round trip.
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.request(
            &format!("set the MTU of {name} to {mtu}"),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )?;
        Ok(())
    }

    /// `ip neigh replace IP lladdr MAC dev INDEX nud permanent`: the overlay answers ARP for a peer's
    /// address itself, so no ARP request ever has to cross the VXLAN device. Running it again changes
    /// nothing; a new MAC replaces the old one. The kernel drops a device's neighbours, permanent ones too,
    /// when the device goes down (its routes as well; its FDB stays): re-program after bringing it back up.
    pub fn neigh_replace(
        &mut self,
        dev_index: u32,
        ip: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<(), KernelError> {
        let what = |dev: &str| format!("add neighbour {ip} -> {} on {dev}", mac_str(mac));
        self.replace_neighbour(AddressFamily::Inet, dev_index, ip, mac, what)
    }

    /// `ip -6 neigh replace IP lladdr MAC dev INDEX nud permanent`: the IPv6 twin of [`Self::neigh_replace`]
    /// (a dual-stack overlay's peer block's next hop), so no neighbour solicitation crosses between hosts.
    pub fn neigh6_replace(
        &mut self,
        dev_index: u32,
        ip: Ipv6Addr,
        mac: [u8; 6],
    ) -> Result<(), KernelError> {
        let msg = neighbour_of(AddressFamily::Inet6, dev_index, Some(ip.into()), Some(mac));
        let what = |dev: &str| format!("add neighbour {ip} -> {} on {dev}", mac_str(mac));
        self.request_on(
            dev_index,
            what,
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )?;
        Ok(())
    }

    /// `ip -6 neigh del IP dev INDEX`. Returns false when there was no such entry.
    pub fn neigh6_delete(&mut self, dev_index: u32, ip: Ipv6Addr) -> Result<bool, KernelError> {
        let msg = neighbour_of(AddressFamily::Inet6, dev_index, Some(ip.into()), None);
        let what = |dev: &str| format!("delete neighbour {ip} on {dev}");
        gone_ok(self.request_on(dev_index, what, RouteNetlinkMessage::DelNeighbour(msg), 0))
    }

    /// `ip -6 route replace DST via VIA dev INDEX onlink [src PREFSRC] proto 0x6e`: the IPv6 twin of
    /// [`Self::route_replace`]. The device must have IPv6 on ("IPv6 is disabled on nexthop device").
    pub fn route6_replace(&mut self, route: &RouteSpec6) -> Result<(), KernelError> {
        let mut msg = route6_message(route);
        msg.header.scope = RouteScope::Universe;
        msg.header.flags |= RouteFlags::Onlink;
        if let Some(src) = route.prefsrc {
            msg.attributes
                .push(RouteAttribute::PrefSource(RouteAddress::Inet6(src)));
        }
        let what = |dev: &str| format!("add route {} via {} dev {dev}", route.dst, route.via);
        self.request_on(
            route.dev_index,
            what,
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )?;
        Ok(())
    }

    /// `ip -6 route del DST via VIA dev INDEX proto 0x6e`. Returns false when there was no such route.
    pub fn route6_delete(&mut self, route: &RouteSpec6) -> Result<bool, KernelError> {
        let mut msg = route6_message(route);
        msg.header.scope = RouteScope::NoWhere;
        let what = |dev: &str| format!("delete route {} via {} dev {dev}", route.dst, route.via);
        gone_ok(self.request_on(route.dev_index, what, RouteNetlinkMessage::DelRoute(msg), 0))
    }

    /// Create or replace one permanent entry: an ARP neighbour (`Inet`) or an FDB entry (`Bridge`).
    fn replace_neighbour(
        &mut self,
        family: AddressFamily,
        dev_index: u32,
        ip: Ipv4Addr,
        mac: [u8; 6],
        what: impl Fn(&str) -> String,
    ) -> Result<(), KernelError> {
        let msg = neighbour(family, dev_index, Some(ip), Some(mac));
        self.request_on(
            dev_index,
            what,
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )?;
        Ok(())
    }

    /// `ip neigh del IP dev INDEX`. Returns false when there was no such entry.
    pub fn neigh_delete(&mut self, dev_index: u32, ip: Ipv4Addr) -> Result<bool, KernelError> {
        let msg = neighbour(AddressFamily::Inet, dev_index, Some(ip), None);
        let what = |dev: &str| format!("delete neighbour {ip} on {dev}");
        gone_ok(self.request_on(dev_index, what, RouteNetlinkMessage::DelNeighbour(msg), 0))
    }

    /// The IPv4 neighbour entries of link `dev_index` that have a MAC, with their `ndm_state` (NUD_* bits;
    /// [`NUD_PERMANENT`] marks those [`Self::neigh_replace`] makes).
    pub fn neighbours(&mut self, dev_index: u32) -> Result<Vec<Neighbour>, KernelError> {
        Ok(self
            .neighbours_of(AddressFamily::Inet, dev_index)?
            .into_iter()
            .filter_map(|(ip, mac, state)| v4(ip).map(|ip| (ip, mac, state)))
            .collect())
    }

    /// Link `dev_index`'s neighbour entries of `family` that have a MAC, with their `ndm_state`.
    fn neighbours_of(
        &mut self,
        family: AddressFamily,
        dev_index: u32,
    ) -> Result<Vec<(IpAddr, [u8; 6], u16)>, KernelError> {
        let mut req = neighbour_of(family, 0, None, None);
        // NDA_IFINDEX: the kernel dumps only this link's entries.
        req.attributes.push(NeighbourAttribute::IfIndex(dev_index));
        let mut out = Vec::new();
        let what = format!("list the neighbours of link {dev_index}");
        for m in self.dump_neighbours(&what, req, dev_index)? {
            if m.header.family != family {
                continue;
            }
            let (mut ip, mut mac) = (None, None);
            for attr in &m.attributes {
                match attr {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                        ip = Some(IpAddr::V4(*a))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                        ip = Some(IpAddr::V6(*a))
                    }
                    NeighbourAttribute::LinkLayerAddress(a) => mac = mac6(a),
                    _ => {}
                }
            }
            if let (Some(ip), Some(mac)) = (ip, mac) {
                out.push((ip, mac, u16::from(m.header.state)));
            }
        }
        Ok(out)
    }

    /// Dump neighbour (or FDB) entries with `req`, keeping link `dev_index`'s: the kernel filters a dump by
    /// link only for strict sockets, so this filters too.
    fn dump_neighbours(
        &mut self,
        what: &str,
        req: NeighbourMessage,
        dev_index: u32,
    ) -> Result<Vec<NeighbourMessage>, KernelError> {
        let replies = self.request(what, RouteNetlinkMessage::GetNeighbour(req), NLM_F_DUMP)?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewNeighbour(m) if m.header.ifindex == dev_index => Some(m),
                _ => None,
            })
            .collect())
    }

    /// `bridge fdb replace MAC dev INDEX dst DST self permanent` on a VXLAN device: frames for MAC (a peer's
    /// VXLAN device) go in UDP to DST (the peer's underlay address). Replace moves an entry for MAC to the new
    /// DST instead of giving it a second destination.
    pub fn fdb_replace(
        &mut self,
        dev_index: u32,
        mac: [u8; 6],
        dst: Ipv4Addr,
    ) -> Result<(), KernelError> {
        let what = |dev: &str| format!("add FDB entry {} -> {dst} on {dev}", mac_str(mac));
        self.replace_neighbour(AddressFamily::Bridge, dev_index, dst, mac, what)
    }

    /// `bridge fdb del MAC dev INDEX self`: the entry with all its destinations. Returns false when there was
    /// none.
    pub fn fdb_delete(&mut self, dev_index: u32, mac: [u8; 6]) -> Result<bool, KernelError> {
        let msg = neighbour(AddressFamily::Bridge, dev_index, None, Some(mac));
        let what = |dev: &str| format!("delete FDB entry {} on {dev}", mac_str(mac));
        gone_ok(self.request_on(dev_index, what, RouteNetlinkMessage::DelNeighbour(msg), 0))
    }

    /// The device's own FDB entries (`bridge fdb show dev INDEX`, the `self` ones): MAC and IPv4
    /// destination, `None` for an entry without one (nsnet makes none). All-zero MACs (default destinations,
    /// which nsnet never sets) are left out; a MAC with several destinations appears once per destination.
    pub fn fdb_entries(&mut self, dev_index: u32) -> Result<Vec<FdbEntry>, KernelError> {
        let req = neighbour(AddressFamily::Bridge, dev_index, None, None);
        let mut out = Vec::new();
        let what = format!("list the FDB of link {dev_index}");
        for m in self.dump_neighbours(&what, req, dev_index)? {
            // NTF_SELF: the device's own table; a bridge's entries for its port have no flag but NDA_MASTER.
            if !m.header.flags.contains(NeighbourFlags::Own) {
                continue;
            }
            let (mut mac, mut dst) = (None, None);
            for attr in &m.attributes {
                match attr {
                    NeighbourAttribute::LinkLayerAddress(a) => mac = mac6(a),
                    // AF_BRIDGE addresses come undecoded: four bytes are IPv4.
                    NeighbourAttribute::Destination(NeighbourAddress::Other(a)) => {
                        dst = <[u8; 4]>::try_from(a.as_slice()).ok().map(Ipv4Addr::from)
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => dst = Some(*a),
                    _ => {}
                }
            }
            if let Some(mac) = mac.filter(|m| *m != [0; 6]) {
                out.push((mac, dst));
            }
        }
        Ok(out)
    }

    /// `ip route replace DST via VIA dev INDEX [onlink] [src PREFSRC] proto 0x6e` in the main table. The
    /// kernel replaces by destination (same TOS, metric 0), so this takes over any route to exactly DST,
    /// whoever made it, and running it again changes nothing. `onlink` needs the device up (ENETDOWN), and
    /// PREFSRC must be an address of this namespace (EINVAL). Gone when the device goes down.
    pub fn route_replace(&mut self, route: &RouteSpec) -> Result<(), KernelError> {
        let mut msg = route_message(route);
        msg.header.scope = RouteScope::Universe;
        if route.onlink {
            msg.header.flags |= RouteFlags::Onlink;
        }
        if let Some(src) = route.prefsrc {
            msg.attributes
                .push(RouteAttribute::PrefSource(RouteAddress::Inet(src)));
        }
        let what = |dev: &str| format!("add route {} via {} dev {dev}", route.dst, route.via);
        self.request_on(
            route.dev_index,
            what,
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )?;
        Ok(())
    }

    /// `ip route del DST via VIA dev INDEX proto 0x6e`: matches only a route nsnet made, whatever its
    /// `onlink` and source. An unspecified VIA or a zero index (as [`Self::routes_with_protocol`] reports a
    /// route without them) matches any. Returns false when there was no such route.
    pub fn route_delete(&mut self, route: &RouteSpec) -> Result<bool, KernelError> {
        let mut msg = route_message(route);
        // RT_SCOPE_NOWHERE: a route of any scope, as `ip route del` asks.
        msg.header.scope = RouteScope::NoWhere;
        let what = |dev: &str| format!("delete route {} via {} dev {dev}", route.dst, route.via);
        gone_ok(self.request_on(route.dev_index, what, RouteNetlinkMessage::DelRoute(msg), 0))
    }

    /// The main table's IPv4 unicast routes with protocol `proto` (see [`NSNET_ROUTE_PROTOCOL`]). A route
    /// without a gateway or an output link (multipath) has an unspecified `via` or a zero `dev_index`.
    pub fn routes_with_protocol(&mut self, proto: u8) -> Result<Vec<RouteSpec>, KernelError> {
        let mut out = Vec::new();
        for m in self.main_routes()? {
            if u8::from(m.header.protocol) != proto || m.header.kind != RouteType::Unicast {
                continue;
            }
            let mut route = RouteSpec {
                dst: Ipv4Net::default(),
                via: Ipv4Addr::UNSPECIFIED,
                dev_index: 0,
                onlink: m.header.flags.contains(RouteFlags::Onlink),
                prefsrc: None,
            };
            let mut dst = Ipv4Addr::UNSPECIFIED;
            for attr in &m.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => route.via = *ip,
                    RouteAttribute::Oif(i) => route.dev_index = *i,
                    RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => route.prefsrc = Some(*ip),
                    _ => {}
                }
            }
            let Ok(dst) = Ipv4Net::new(dst, m.header.destination_prefix_length) else {
                continue;
            };
            route.dst = dst;
            out.push(route);
        }
        Ok(out)
    }

    /// The IPv6 twin of [`Self::routes_with_protocol`]: the main table's IPv6 unicast routes with protocol
    /// `proto` that have a gateway and an output link (as [`Self::route6_replace`] makes them).
    pub fn routes6_with_protocol(&mut self, proto: u8) -> Result<Vec<RouteSpec6>, KernelError> {
        let mut out = Vec::new();
        for m in self.routes_of(AddressFamily::Inet6)? {
            if m.header.table != RouteHeader::RT_TABLE_MAIN
                || u8::from(m.header.protocol) != proto
                || m.header.kind != RouteType::Unicast
            {
                continue;
            }
            let (mut dst, mut via, mut dev_index, mut prefsrc) = (None, None, 0, None);
            for attr in &m.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet6(ip)) => dst = Some(*ip),
                    RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => via = Some(*ip),
                    RouteAttribute::Oif(i) => dev_index = *i,
                    RouteAttribute::PrefSource(RouteAddress::Inet6(ip)) => prefsrc = Some(*ip),
                    _ => {}
                }
            }
            let dst = dst.and_then(|d| Ipv6Net::new(d, m.header.destination_prefix_length).ok());
            if let (Some(dst), Some(via)) = (dst, via) {
                out.push(RouteSpec6 {
                    dst,
                    via,
                    dev_index,
                    prefsrc,
                });
            }
        }
        Ok(out)
    }

    /// The IPv6 twin of [`Self::neighbours`]: link `dev_index`'s IPv6 neighbour entries that have a MAC,
    /// with their `ndm_state`.
    pub fn neighbours6(&mut self, dev_index: u32) -> Result<Vec<Neighbour6>, KernelError> {
        Ok(self
            .neighbours_of(AddressFamily::Inet6, dev_index)?
            .into_iter()
            .filter_map(|(ip, mac, state)| match ip {
                IpAddr::V6(ip) => Some((ip, mac, state)),
                IpAddr::V4(_) => None,
            })
            .collect())
    }

    /// The link holding IPv4 address IP (its name and index) and the address with its prefix: which
    /// interface an underlay address belongs to. The first one when several links hold it.
    pub fn address_owner(
        &mut self,
        ip: Ipv4Addr,
    ) -> Result<Option<(String, u32, Ipv4Net)>, KernelError> {
        let Some((index, net)) = self.addresses()?.into_iter().find(|(_, a)| a.addr() == ip) else {
            return Ok(None);
        };
        Ok(self.link_name(index)?.map(|name| (name, index, net)))
    }

    /// `ip route get DST`: the output link and the gateway, if any, the kernel would use to reach DST. No
    /// gateway means DST is on-link, on that link's segment (a local address answers with `lo`). `None` when
    /// DST is unreachable.
    pub fn route_get(
        &mut self,
        dst: Ipv4Addr,
    ) -> Result<Option<(u32, Option<Ipv4Addr>)>, KernelError> {
        Ok(self
            .route_lookup(dst.into())?
            .map(|(oif, gw)| (oif, gw.and_then(v4))))
    }

    /// `ip route get DST` for either family: the output link's index and the gateway, `None` when DST is
    /// unreachable.
    fn route_lookup(&mut self, dst: IpAddr) -> Result<Option<(u32, Option<IpAddr>)>, KernelError> {
        let mut msg = RouteMessage::default();
        let (family, len, addr) = match dst {
            IpAddr::V4(d) => (AddressFamily::Inet, 32, RouteAddress::Inet(d)),
            IpAddr::V6(d) => (AddressFamily::Inet6, 128, RouteAddress::Inet6(d)),
        };
        msg.header.address_family = family;
        msg.header.destination_prefix_length = len;
        msg.attributes.push(RouteAttribute::Destination(addr));
        let replies = match self.request(
            &format!("look up the route to {dst}"),
            RouteNetlinkMessage::GetRoute(msg),
            0,
        ) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.errno(),
                    Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH)
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        for r in replies {
            let RouteNetlinkMessage::NewRoute(m) = r else {
                continue;
            };
            let (oif, gw) = oif_and_gateway(&m);
            return Ok(oif.map(|oif| (oif, gw)));
        }
        Ok(None)
    }

    /// [`Self::request`] about link `index`, whose errors name the link as `what` puts it: by its name, looked
    /// up only once something failed ("link N" when it cannot be, or when the link is gone).
    fn request_on(
        &mut self,
        index: u32,
        what: impl Fn(&str) -> String,
        payload: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, KernelError> {
        let by_index = format!("link {index}");
        match self.request(&what(&by_index), payload, flags) {
            Err(KernelError::Io { error, .. }) if !is_gone(&error) => {
                let dev = self.link_name(index).ok().flatten().unwrap_or(by_index);
                Err(KernelError::io(what(&dev), error))
            }
            other => other,
        }
    }
}

/// ENODEV, ENOENT, ESRCH: what [`KernelError::is_not_found`] takes for "already gone".
fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::ESRCH)
    )
}

/// A delete's outcome: true when it removed something, false when it was already gone.
fn gone_ok(reply: Result<Vec<RouteNetlinkMessage>, KernelError>) -> Result<bool, KernelError> {
    match reply {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

/// A route's output link and IPv4 gateway, when it has them.
/// The IPv4 address `ip` is, if it is one.
fn v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    }
}

fn oif_and_gateway(m: &RouteMessage) -> (Option<u32>, Option<IpAddr>) {
    let (mut oif, mut gw) = (None, None);
    for attr in &m.attributes {
        match attr {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gw = Some(IpAddr::V4(*ip)),
            RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => gw = Some(IpAddr::V6(*ip)),
            _ => {}
        }
    }
    (oif, gw)
}

/// A neighbour (or, in `AF_BRIDGE`, FDB) message about link `index`, permanent; `NTF_SELF` in `AF_BRIDGE`,
/// where it addresses the device's own table (a VXLAN device's) rather than a bridge's.
fn neighbour(
    family: AddressFamily,
    index: u32,
    ip: Option<Ipv4Addr>,
    mac: Option<[u8; 6]>,
) -> NeighbourMessage {
    neighbour_of(family, index, ip.map(IpAddr::V4), mac)
}

/// [`neighbour`] for an address of either family.
fn neighbour_of(
    family: AddressFamily,
    index: u32,
    ip: Option<IpAddr>,
    mac: Option<[u8; 6]>,
) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family;
    msg.header.ifindex = index;
    if ip.is_some() || mac.is_some() {
        msg.header.state = NeighbourState::Permanent;
        if family == AddressFamily::Bridge {
            msg.header.flags = NeighbourFlags::Own;
        }
    }
    if let Some(ip) = ip {
        let dst = match ip {
            IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
            IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
        };
        msg.attributes.push(NeighbourAttribute::Destination(dst));
    }
    if let Some(mac) = mac {
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    }
    msg
}

/// The main-table unicast route message of `route`, with protocol [`NSNET_ROUTE_PROTOCOL`], its destination,
/// and its gateway and link when they are set.
fn route_message(route: &RouteSpec) -> RouteMessage {
    let dst = route.dst.trunc();
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::from(NSNET_ROUTE_PROTOCOL);
    msg.header.kind = RouteType::Unicast;
    msg.header.destination_prefix_length = dst.prefix_len();
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(dst.addr())));
    if !route.via.is_unspecified() {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(route.via)));
    }
    if route.dev_index != 0 {
        msg.attributes.push(RouteAttribute::Oif(route.dev_index));
    }
    msg
}

/// The IPv6 twin of [`route_message`].
fn route6_message(route: &RouteSpec6) -> RouteMessage {
    let dst = route.dst.trunc();
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet6;
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::from(NSNET_ROUTE_PROTOCOL);
    msg.header.kind = RouteType::Unicast;
    msg.header.destination_prefix_length = dst.prefix_len();
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet6(dst.addr())));
    msg.attributes
        .push(RouteAttribute::Gateway(RouteAddress::Inet6(route.via)));
    if route.dev_index != 0 {
        msg.attributes.push(RouteAttribute::Oif(route.dev_index));
    }
    msg
}

/// A six-byte link-layer address; `None` for any other length.
fn mac6(a: &[u8]) -> Option<[u8; 6]> {
    <[u8; 6]>::try_from(a).ok()
}

/// A MAC as `ip` prints it.
fn mac_str(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

fn up(msg: &mut LinkMessage) {
    msg.header.flags |= LinkFlags::Up;
    msg.header.change_mask |= LinkFlags::Up;
}

fn link_from(l: &LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        mac: None,
        mtu: None,
        master: None,
        alias: None,
        forwarding: false,
        group: 0,
    };
    for attr in &l.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(a) if a.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(a);
                link.mac = Some(mac);
            }
            LinkAttribute::Mtu(m) => link.mtu = Some(*m),
            LinkAttribute::Controller(m) => link.master = Some(*m),
            LinkAttribute::IfAlias(a) => link.alias = Some(a.clone()),
            LinkAttribute::Group(g) => link.group = *g,
            LinkAttribute::LinkInfo(info) => {
                link.forwarding = info.iter().any(|i| {
                    matches!(i, LinkInfo::PortData(InfoPortData::BridgePort(port))
                        if port.contains(&InfoBridgePort::State(BridgePortState::Forwarding)))
                })
            }
            _ => {}
        }
    }
    link
}
