//! A small synchronous rtnetlink client: one socket, one request at a time.
//!
//! A netlink socket belongs to the network namespace of the thread that created it, for its whole life.
//! [`crate::netns`] creates sockets inside other namespaces; everything here then works on whatever namespace
//! the socket was born in, from any thread. No async runtime is involved, so no task can migrate between
//! threads that sit in different namespaces.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use ipnet::Ipv4Net;
use netlink_packet_core::{
    DefaultNla, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::BridgePortState;
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoBridgePort, InfoData, InfoKind, InfoPortData,
    InfoPortKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
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
}

/// A default route: its output link and gateway, when it has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultRoute {
    pub oif: Option<u32>,
    pub gateway: Option<Ipv4Addr>,
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
}

/// `TCA_INGRESS_BLOCK`: the shared block a qdisc's ingress filters come from (not in netlink-packet-route).
const TCA_INGRESS_BLOCK: u16 = 13;

/// The preference (priority) of nsnet's tc filters: first, before any filter added with tc's defaults.
const FILTER_PREF: u16 = 1;

/// A create request's outcome, where "it is already there" (EEXIST) counts as done.
fn exists_ok(reply: Result<Vec<RouteNetlinkMessage>, KernelError>) -> Result<(), KernelError> {
    match reply {
        Err(e) if e.errno() != Some(libc::EEXIST) => Err(e),
        _ => Ok(()),
    }
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
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(
            &format!("look up link {name}"),
            RouteNetlinkMessage::GetLink(msg),
            0,
        ) {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(link_from(&l)),
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

    /// `tc qdisc add dev INDEX ingress_block BLOCK ingress`: the link's received frames go through the filters
    /// of shared block `BLOCK` (made with the first qdisc bound to it, freed with the last). An ingress qdisc
    /// already there is fine; which block it is bound to is not checked here.
    pub fn add_ingress_qdisc(&mut self, index: u32, block: u32) -> Result<(), KernelError> {
        let mut msg = TcMessage::with_index(tc_ifindex(index)?);
        msg.header.handle = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        msg.header.parent = TcHandle::INGRESS;
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
        let mut msg = at.message()?;
        // An open descriptor is never negative.
        let fd = u32::try_from(prog.as_raw_fd()).map_err(|_| {
            KernelError::io(
                format!("attach bpf program {name}"),
                io::Error::from_raw_os_error(libc::EBADF),
            )
        })?;
        msg.header.handle = TcHandle::from(1u32);
        // TC_H_MAKE(preference << 16, protocol in network order): every protocol (ETH_P_ALL).
        msg.header.info = (u32::from(FILTER_PREF) << 16) | u32::from(0x0003u16.to_be());
        msg.attributes.push(TcAttribute::Kind("bpf".into()));
        msg.attributes.push(TcAttribute::Options(vec![
            TcOption::Bpf(TcFilterBpfOption::ProgFd(fd)),
            TcOption::Bpf(TcFilterBpfOption::ProgName(name.into())),
            TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
        ]));
        exists_ok(self.request(
            &format!("attach bpf program {name} to {at}"),
            RouteNetlinkMessage::NewTrafficFilter(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ))
    }

    /// The bpf programs tc runs at `at`. None there (no qdisc on the link, no such block) is an empty list.
    pub fn bpf_filters(&mut self, at: FilterAt) -> Result<Vec<BpfFilter>, KernelError> {
        let replies = match self.request(
            "list tc filters",
            RouteNetlinkMessage::GetTrafficFilter(at.message()?),
            NLM_F_DUMP,
        ) {
            Ok(r) => r,
            Err(e) if matches!(e.errno(), Some(libc::EINVAL) | Some(libc::ENOENT)) => vec![],
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewTrafficFilter(m) = reply else {
                continue;
            };
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
            if let (Some(name), Some(id)) = (name, id) {
                out.push(BpfFilter { name, id, block });
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

    /// `ip addr add ADDR/LEN dev NAME` (IPv4, with the broadcast address set like `ip addr add ... brd +`).
    pub fn add_address(&mut self, name: &str, addr: Ipv4Net) -> Result<(), KernelError> {
        let index = self.link_index(name)?;
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = addr.prefix_len();
        msg.header.index = index;
        let ip = IpAddr::V4(addr.addr());
        msg.attributes.push(AddressAttribute::Local(ip));
        msg.attributes.push(AddressAttribute::Address(ip));
        if addr.prefix_len() < 31 {
            msg.attributes
                .push(AddressAttribute::Broadcast(addr.broadcast()));
        }
        self.request(
            &format!("add address {addr} to {name}"),
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// `ip route add default via GW dev NAME`.
    pub fn add_default_route(&mut self, name: &str, via: Ipv4Addr) -> Result<(), KernelError> {
        let index = self.link_index(name)?;
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Static;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(via)));
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
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Inet;
        let replies = self.request(
            "list routes",
            RouteNetlinkMessage::GetRoute(req),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewRoute(m)
                    if m.header.table == RouteHeader::RT_TABLE_MAIN =>
                {
                    Some(m)
                }
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
            let (mut oif, mut gw) = (None, None);
            for attr in &m.attributes {
                match attr {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gw = Some(*ip),
                    _ => {}
                }
            }
            out.push(DefaultRoute { oif, gateway: gw });
        }
        Ok(out)
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
