//! The fast path: IPv4, and IPv6 TCP and UDP, between two sandboxes on one bridge network skip the bridge.
//!
//! A frame a sandbox sends arrives on the host end of its veth. A small eBPF program there (a tc filter)
//! looks up both addresses in the network's map. If the frame is exactly one the bridge would forward port
//! to port, the program hands it straight to the other sandbox's end with `bpf_redirect_peer`. Otherwise
//! the frame goes on to the bridge as before. "Exactly one" means:
//!
//! - untagged IPv4, or untagged IPv6 whose next header is TCP or UDP;
//! - the source address, source MAC and arrival port all belong to one sandbox (the bridge's anti-spoofing
//!   rules would drop anything else, so it goes there to be dropped);
//! - the destination address and destination MAC belong to one sandbox.
//!
//! ARP, broadcast, multicast, and traffic to the gateway or beyond all take the bridge. So does every other
//! IPv6 frame: ICMPv6 (neighbour discovery, whose target the bridge's rules check) and anything behind an
//! extension header, which the program does not walk. IPv6 addresses have a map of their own (`local6`,
//! 16-byte keys, the same values); a program made before nsnet carried IPv6 has none, and its bridge
//! carries its network's IPv6. The frame still
//! enters the other namespace through its `eth0`, just as it would from the bridge. It skips one veth
//! transmit, one backlog queue and the bridge's netfilter hooks (br_netfilter): the cost a bridge adds over
//! a bare veth pair.
//!
//! One program serves the whole network from a shared tc filter block: the bridge and each of its ports get
//! an `ingress` qdisc bound to the block (`tc qdisc add dev PORT ingress_block N ingress`), and the block
//! holds the program as its one filter. A new port costs one qdisc and one map entry, and nothing in the
//! kernel walks a list that grows with the ports: a qdisc with a block of its own registers that block in a
//! kernel-wide offload list, searched on every new block (~0.3 ms per qdisc at a thousand ports).
//!
//! Nothing here is pinned in bpffs. The bridge's qdisc keeps the block, so the program and its map, alive
//! for as long as the bridge lives; on the bridge's own frames the program returns at once. The block's
//! number is derived from the bridge's name ([`block_of`]), which is how the next nsnet command finds them.
//! So deleting the bridge frees them, and nothing can be left behind.
//!
//! **Across hosts** (an overlay network): the same program also takes a sandbox's frames for another host's
//! block, and the frames the VXLAN device decapsulates for a sandbox here, so cross-host traffic skips the
//! bridge, routing and netfilter on both hosts, as traffic between two sandboxes of one bridge does:
//!
//! - Out: a frame from a sandbox (checked as above), addressed to the gateway's MAC, for an address in a
//!   remote block (the `remote` trie: block -> next hop) goes to the overlay device with
//!   `bpf_redirect_neigh`, towards the next hop the slow path's route names (the peer's VXLAN gateway, whose
//!   permanent neighbour entry gives its VTEP MAC; for host-gw, the peer's underlay address). The kernel
//!   fills in the MACs from that neighbour entry and the device encapsulates as usual.
//! - In: a frame the tunnel's `decap` device received, addressed to the device's own MAC (`PACKET_HOST`),
//!   from an address in a remote block, for a sandbox of this network, is handed to the sandbox's veth peer
//!   with the sandbox's MAC as destination and the gateway's as source, as the bridge would deliver it. For
//!   vxlan the device is the VXLAN device (nsnet's own), whose ingress joins the block. For host-gw it is the
//!   host's underlay interface, which is not nsnet's: a NIC has one ingress qdisc, and another tool may own
//!   it and have filters there. So the interface is never bound to the block; the program is added as one
//!   filter of its ingress ([`FastPath::attach_underlay`]), with a preference and handle of the network's own
//!   ([`underlay_filter`]: the block number, a preference after tc's defaults), and an `ingress` qdisc is
//!   made only when there is none, recorded so that it goes (when no filter is left on it) with the network.
//!   [`detach_underlay`] deletes exactly that filter. Every frame the host receives there meets the program:
//!   anything not IPv4 leaves after the first checks, and the host's own IPv4 after one hash lookup (the
//!   destination is no sandbox).
//!
//! A dual-stack overlay's IPv6 takes the same two branches, for TCP and UDP only (ICMPv6 and extension
//! headers stay on the slow path, as between sandboxes of one host), with a trie of its own (`remote6`:
//! block -> next hop, the block's first address, which the slow path's route names and whose permanent
//! neighbour entry on the device gives the MAC; `bpf_redirect_neigh` with `AF_INET6`) and the hop limit in
//! place of the TTL. A program made before nsnet had `remote6` leaves IPv6 to the slow path.
//!
//! Neither branch decrements the TTL (a sandbox sees the sender's): a frame the slow path would expire on
//! the way (TTL 2 or less out, 1 or less in) takes the slow path, which expires it and says so (ICMP).
//!
//! Everything else takes the slow path, where the firewall decides. What the fast path skips is nftables'
//! per-packet work on traffic the cluster allows anyway (sandbox to sandbox, both ends checked, which
//! nsnet's forward chain accepts from the overlay with `overlay_in` before anything else could drop it); the
//! VXLAN datagrams themselves still meet the input chain's member check before the device decapsulates them.
//! host-gw trusts its L2 segment on either path: a frame from a remote block's address is accepted from any
//! machine on the underlay. Under a host forward chain with policy drop, which nsnet opens for its bridges'
//! traffic but not for what comes in from the underlay, host-gw's slow path drops new connections from other
//! hosts, so the network then has no filter on the underlay. Rules of other tables on the forward hook (and
//! nsnet's user chain) are skipped by every branch of the fast path alike.
//! Without a tunnel configured (`config` all zero, any bridge network), the program does as before.
//!
//! Why tc filters (cls_bpf) and not tcx links: attaching a tcx program waits for an RCU grace period (~9 ms
//! here, holding the RTNL lock), a qdisc on a new veth takes ~30 µs.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd};

use ipnet::{Ipv4Net, Ipv6Net};

use super::bpf::op::*;
use super::bpf::{Asm, Insn, Label, Map, MapType, Program};
use super::{BpfFilter, FilterAt, KernelError, Netlink, TcHook};

/// The name of the program, of its map and of its tc filters (`tc filter show`, `bpftool prog show`).
pub const NAME: &str = "nsnet_fastpath";
/// A bridge takes 1,024 ports at most, so a network never has more sandboxes than this.
const MAX_ENTRIES: u32 = 1024;
/// The key is an IPv4 address in network order.
const KEY: usize = 4;
/// `local6`'s key is an IPv6 address in network order (its key size is how [`FastPath::open`] tells it apart).
const KEY6: usize = 16;
/// [`peer`]: the host end's ifindex, then the sandbox end's MAC, then 2 bytes of padding.
const VALUE: usize = 12;
/// The program is nsnet's own; it calls no GPL-only helper.
const LICENSE: &str = "Apache-2.0";
/// The `config` array's one value: the device remote blocks go out by (ifindex, 0 for none), the device whose
/// received frames are delivered to sandboxes (ifindex, 0 for none), the bridge's MAC, 2 bytes of padding.
const CONFIG: usize = 16;
/// The `remote` trie: a key is a prefix length (`u32`, native order) and an IPv4 address; a value, the next
/// hop (IPv4, network order).
const REMOTE_KEY: usize = 8;
const REMOTE_VALUE: usize = 4;
/// The `remote6` trie (dual-stack overlays): a prefix length (`u32`, native order) and an IPv6 address; a
/// value, the next hop (IPv6, network order). Its key size is how [`FastPath::open`] tells it from `remote`.
const REMOTE6_KEY: usize = 20;
const REMOTE6_VALUE: usize = 16;
/// Remote blocks one network can have: a /8 cut into /24s.
const MAX_REMOTE: u32 = 65_536;

/// `TC_ACT_REDIRECT`: what the program returns when it took a frame.
pub const REDIRECTED: u32 = 7;
/// `TC_ACT_UNSPEC` (-1): what it returns for a frame it leaves to the bridge (and to any later filter).
pub const PASSED: u32 = u32::MAX;

/// A network's fast path: its program, the map of its sandboxes, and the shared block its ports join.
#[derive(Debug)]
pub struct FastPath {
    prog: Program,
    map: Map,
    /// The sandboxes' IPv6 addresses (`local6`); `None` for a program made before nsnet had it.
    map6: Option<Map>,
    /// The tunnel's maps (`config`, `remote`); `None` for a program made before nsnet had them.
    tunnel: Option<(Map, Map)>,
    /// The remote IPv6 blocks (`remote6`); `None` for a program made before nsnet had it (the slow path then
    /// carries a dual-stack overlay's IPv6).
    remote6: Option<Map>,
    /// The shared tc block its ports join ([`block_of`] the bridge).
    block: u32,
}

/// The shared tc block of the bridge named `bridge`: a hash of the name with the top bit set, well away
/// from the small numbers people give blocks by hand. Names are unique in a namespace, and so are blocks.
pub fn block_of(bridge: &str) -> u32 {
    crate::names::short_hash(&[bridge]) | 0x8000_0000
}

/// A caller without `CAP_BPF`, or a kernel without bpf or cls_bpf: no fast path, the bridge does it all.
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPERM) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) | Some(libc::ENOENT)
    )
}

fn io(what: &str) -> impl FnOnce(io::Error) -> KernelError + '_ {
    move |e| KernelError::io(what, e)
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, why)
}

impl FastPath {
    /// The fast path of the bridge named `bridge`, if it has one.
    pub fn of_bridge(nl: &mut Netlink, bridge: &str) -> Result<Option<FastPath>, KernelError> {
        let block = block_of(bridge);
        Self::open(&nl.bpf_filters(FilterAt::Block(block))?, block)
    }

    /// The fast path of the bridge named `bridge`: the one it has, or else a new one ([`FastPath::create`]).
    /// One dump of the block answers both. `None` when the block holds someone else's filters, or when this
    /// kernel or this caller cannot have a fast path; a missing bridge is [`KernelError::Missing`].
    pub fn ensure(nl: &mut Netlink, bridge: &str) -> Result<Option<FastPath>, KernelError> {
        let block = block_of(bridge);
        let filters = nl.bpf_filters(FilterAt::Block(block))?;
        if let Some(fp) = Self::open(&filters, block)? {
            return Ok(Some(fp));
        }
        if !filters.is_empty() {
            return Ok(None);
        }
        let index = nl.link_index(bridge)?;
        Self::create(nl, block, index)
    }

    /// The fast path whose program is among `filters`, the filters of `block`.
    fn open(filters: &[BpfFilter], block: u32) -> Result<Option<FastPath>, KernelError> {
        for f in filters {
            if f.name != NAME {
                continue;
            }
            let prog = Program::from_id(f.id).map_err(io("open the fast path's program"))?;
            let info = prog
                .info()
                .map_err(io("read the fast path's program info"))?;
            let (mut map, mut map6, mut config, mut remote, mut remote6) =
                (None, None, None, None, None);
            for &id in &info.map_ids {
                let m = Map::from_id(id).map_err(io("open the fast path's maps"))?;
                match m.shape().map_err(io("read a fast path map's type"))? {
                    (MapType::Hash, KEY) => map = Some(m),
                    (MapType::Hash, KEY6) => map6 = Some(m),
                    (MapType::Array, _) => config = Some(m),
                    (MapType::LpmTrie, REMOTE6_KEY) => remote6 = Some(m),
                    (MapType::LpmTrie, _) => remote = Some(m),
                    _ => {}
                }
            }
            let Some(map) = map else {
                continue;
            };
            let tunnel = config.zip(remote);
            return Ok(Some(FastPath {
                prog,
                map,
                map6,
                tunnel,
                remote6,
                block,
            }));
        }
        Ok(None)
    }

    /// A new fast path on `block` for the bridge with index `index`, whose block holds no filter yet: a map,
    /// the program, and the bridge's ingress bound to the block with the program on it. `None` when this
    /// kernel or this caller cannot have one, or when the bridge's ingress is already someone else's.
    fn create(nl: &mut Netlink, block: u32, index: u32) -> Result<Option<FastPath>, KernelError> {
        let maps = Map::hash(NAME, KEY, VALUE, MAX_ENTRIES).and_then(|map| {
            let map6 = Map::hash(NAME, KEY6, VALUE, MAX_ENTRIES)?;
            let config = Map::array(NAME, CONFIG, 1)?;
            let remote = Map::lpm(NAME, REMOTE_KEY, REMOTE_VALUE, MAX_REMOTE)?;
            let remote6 = Map::lpm(NAME, REMOTE6_KEY, REMOTE6_VALUE, MAX_REMOTE)?;
            Ok((map, map6, config, remote, remote6))
        });
        let (map, map6, config, remote, remote6) = match maps {
            Ok(m) => m,
            Err(e) if unsupported(&e) => return Ok(None),
            Err(e) => return Err(KernelError::io("create the fast path's maps", e)),
        };
        let fds = Fds {
            local: map.fd().as_raw_fd(),
            local6: map6.fd().as_raw_fd(),
            config: config.fd().as_raw_fd(),
            remote: remote.fd().as_raw_fd(),
            remote6: remote6.fd().as_raw_fd(),
        };
        let insns = program(fds, index).map_err(io("assemble the fast path's program"))?;
        let tunnel = Some((config, remote));
        let prog = Program::load_sched_cls(NAME, &insns, LICENSE)
            .map_err(io("load the fast path's program"))?;
        // A qdisc already on the bridge is ours from a command that died before the filter, or someone
        // else's; with someone else's the block does not exist and the filter is refused (EINVAL).
        let attached = nl
            .add_ingress_qdisc(index, block)
            .and_then(|()| nl.add_bpf_filter(FilterAt::Block(block), prog.fd().as_fd(), NAME));
        match attached {
            Ok(()) => Ok(Some(FastPath {
                prog,
                map,
                map6: Some(map6),
                tunnel,
                remote6: Some(remote6),
                block,
            })),
            // No ingress qdisc or cls_bpf in this kernel, or the bridge's ingress is not on our block.
            Err(KernelError::Io { error, .. })
                if unsupported(&error) || error.raw_os_error() == Some(libc::EINVAL) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The map for `ip`'s family and `ip` as its key; `None` for IPv6 on a program made before nsnet had
    /// `local6` (its bridge carries the network's IPv6).
    fn slot(&self, ip: IpAddr) -> Option<(&Map, Vec<u8>)> {
        match ip {
            IpAddr::V4(a) => Some((&self.map, a.octets().to_vec())),
            IpAddr::V6(a) => self.map6.as_ref().map(|m| (m, a.octets().to_vec())),
        }
    }

    /// Whether this program has the `remote6` trie (dual-stack overlays): one made before it sends every
    /// IPv6 packet for another host to the slow path.
    pub fn has_remote6(&self) -> bool {
        self.remote6.is_some()
    }

    /// Whether this fast path can carry `ip`'s family (IPv6 needs a program made with `local6`).
    pub fn carries(&self, ip: IpAddr) -> bool {
        self.slot(ip).is_some()
    }

    /// Put the sandbox with address `ip` and MAC `mac`, behind host port `port` (an ifindex), on the fast
    /// path: the port's ingress onto the network's block, and the sandbox in the map of `ip`'s family (for
    /// IPv6 on a program without `local6`, only the port). Doing it twice is fine.
    pub fn add(
        &self,
        nl: &mut Netlink,
        port: u32,
        ip: impl Into<IpAddr>,
        mac: [u8; 6],
    ) -> Result<(), KernelError> {
        nl.add_ingress_qdisc(port, self.block)?;
        self.put(port, ip, mac)
    }

    /// [`FastPath::add`] without the qdisc, for a port whose ingress is already on the block (a second
    /// address of a sandbox just added).
    pub fn put(&self, port: u32, ip: impl Into<IpAddr>, mac: [u8; 6]) -> Result<(), KernelError> {
        let Some((map, key)) = self.slot(ip.into()) else {
            return Ok(());
        };
        map.update(&key, &peer(port, mac), (key.len(), VALUE))
            .map_err(io("add a sandbox to the fast path's map"))
    }

    /// Take address `ip` off the fast path. The program may stay on the sandbox's port: with no entry for
    /// its sender, every frame from there goes to the bridge (and the port is on its way out anyway).
    pub fn remove(&self, ip: impl Into<IpAddr>) -> Result<(), KernelError> {
        let Some((map, key)) = self.slot(ip.into()) else {
            return Ok(());
        };
        map.delete(&key, key.len())
            .map(drop)
            .map_err(io("remove a sandbox from the fast path's map"))
    }

    /// The (port, MAC) the map holds for `ip`.
    pub fn entry(&self, ip: impl Into<IpAddr>) -> Result<Option<(u32, [u8; 6])>, KernelError> {
        let Some((map, key)) = self.slot(ip.into()) else {
            return Ok(None);
        };
        let mut value = [0u8; VALUE];
        let found = map
            .lookup(&key, &mut value, (key.len(), VALUE))
            .map_err(io("read the fast path's map"))?;
        Ok(found.then(|| {
            let port = u32::from_ne_bytes([value[0], value[1], value[2], value[3]]);
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&value[4..10]);
            (port, mac)
        }))
    }

    /// Every entry of the maps, IPv4 first: address, port, MAC.
    pub fn entries(&self) -> Result<Vec<(IpAddr, u32, [u8; 6])>, KernelError> {
        let mut keys = Vec::new();
        for (map, size) in [(Some(&self.map), KEY), (self.map6.as_ref(), KEY6)] {
            if let Some(map) = map {
                keys.extend(map.keys(size).map_err(io("list the fast path's map"))?);
            }
        }
        let mut out = Vec::new();
        for key in keys {
            let ip = match key.len() {
                KEY => <[u8; KEY]>::try_from(key.as_slice()).map(IpAddr::from),
                _ => <[u8; KEY6]>::try_from(key.as_slice()).map(IpAddr::from),
            };
            let Ok(ip) = ip else {
                continue;
            };
            if let Some((port, mac)) = self.entry(ip)? {
                out.push((ip, port, mac));
            }
        }
        Ok(out)
    }

    /// Send remote blocks out by device `out` and deliver what device `decap` receives (its ingress joins
    /// the block), with `bridge_mac` as the gateway's MAC. `None` leaves delivery as it is: none, or host-gw's
    /// underlay ([`FastPath::attach_underlay`]). `Ok(false)` for a program made before nsnet had tunnels
    /// (the slow path then carries it all).
    pub fn set_tunnel(
        &self,
        nl: &mut Netlink,
        out: u32,
        decap: Option<u32>,
        bridge_mac: [u8; 6],
    ) -> Result<bool, KernelError> {
        let Some(config) = self.config() else {
            return Ok(false);
        };
        if let Some(dev) = decap {
            nl.add_ingress_qdisc(dev, self.block)?;
        }
        let mut v = read_config(config)?;
        v[..4].copy_from_slice(&out.to_ne_bytes());
        if let Some(dev) = decap {
            v[4..8].copy_from_slice(&dev.to_ne_bytes());
        }
        v[8..14].copy_from_slice(&bridge_mac);
        write_config(config, &v)?;
        Ok(true)
    }

    fn config(&self) -> Option<&Map> {
        self.tunnel.as_ref().map(|(config, _)| config)
    }

    /// Deliver what underlay device `dev` (host-gw's, not nsnet's) receives from remote blocks to this
    /// network's sandboxes: the program becomes one filter of the device's ingress ([`underlay_filter`] of the
    /// bridge), beside whatever filters others have there. Without an ingress qdisc there, one is made only
    /// when `make_qdisc` (the record says nsnet owns it). `Ok(false)` when the program is not there: an
    /// ingress bound to a shared block (someone else's: filters go to the block, never by the device), a
    /// qdisc that went away since the plan, a filter of someone else's with the same preference and handle,
    /// or no tunnel map; the slow path then carries it.
    pub fn attach_underlay(
        &self,
        nl: &mut Netlink,
        bridge: &str,
        dev: u32,
        make_qdisc: bool,
    ) -> Result<bool, KernelError> {
        let Some(config) = self.config() else {
            return Ok(false);
        };
        let made = match nl.ingress_qdisc(dev)? {
            Some(q) if q.block.is_some() => return Ok(false),
            Some(_) => false,
            None if make_qdisc => nl.add_own_ingress_qdisc(dev)?,
            None => return Ok(false),
        };
        let (pref, handle) = underlay_filter(bridge);
        let at = FilterAt::Link(dev, TcHook::Ingress);
        let foreign = nl
            .bpf_filters(at)?
            .iter()
            .any(|f| f.pref == pref && f.handle == handle && f.name != NAME);
        if foreign {
            return Ok(false);
        }
        // Delivery on before the filter: the program on the device does nothing until it is there.
        let mut v = read_config(config)?;
        v[4..8].copy_from_slice(&dev.to_ne_bytes());
        write_config(config, &v)?;
        match nl.replace_bpf_filter(at, (pref, handle), self.prog.fd().as_fd(), NAME) {
            Ok(()) => Ok(true),
            // Another kind of filter holds that preference (EINVAL), or no cls_bpf: not ours to have.
            Err(KernelError::Io { error, .. })
                if unsupported(&error) || error.raw_os_error() == Some(libc::EINVAL) =>
            {
                if made {
                    nl.delete_ingress_qdisc(dev)?;
                }
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// The tunnel as configured: (out, decap, bridge MAC); all zero when there is none.
    pub fn tunnel(&self) -> Result<Option<(u32, u32, [u8; 6])>, KernelError> {
        let Some(config) = self.config() else {
            return Ok(None);
        };
        let v = read_config(config)?;
        let word = |at: usize| u32::from_ne_bytes([v[at], v[at + 1], v[at + 2], v[at + 3]]);
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&v[8..14]);
        Ok(Some((word(0), word(4), mac)))
    }

    /// Make the remote blocks exactly `routes` (block, next hop): entries not in it go, the others are
    /// written. Nothing without a tunnel map.
    pub fn set_remotes(&self, routes: &[(Ipv4Net, Ipv4Addr)]) -> Result<(), KernelError> {
        let Some((_, remote)) = &self.tunnel else {
            return Ok(());
        };
        for (block, _) in self.remotes()? {
            if !routes.iter().any(|(b, _)| *b == block) {
                remote
                    .delete(&remote_key(block), REMOTE_KEY)
                    .map_err(io("remove a remote block from the fast path"))?;
            }
        }
        for (block, via) in routes {
            remote
                .update(
                    &remote_key(*block),
                    &via.octets(),
                    (REMOTE_KEY, REMOTE_VALUE),
                )
                .map_err(io("add a remote block to the fast path"))?;
        }
        Ok(())
    }

    /// Every remote block and its next hop.
    pub fn remotes(&self) -> Result<Vec<(Ipv4Net, Ipv4Addr)>, KernelError> {
        let Some((_, remote)) = &self.tunnel else {
            return Ok(vec![]);
        };
        let mut out = Vec::new();
        for key in remote
            .keys(REMOTE_KEY)
            .map_err(io("list the fast path's remote blocks"))?
        {
            let mut via = [0u8; REMOTE_VALUE];
            let found = remote
                .lookup(&key, &mut via, (REMOTE_KEY, REMOTE_VALUE))
                .map_err(io("read a remote block"))?;
            let len = u32::from_ne_bytes([key[0], key[1], key[2], key[3]]);
            let addr = Ipv4Addr::new(key[4], key[5], key[6], key[7]);
            let block = u8::try_from(len)
                .ok()
                .and_then(|len| Ipv4Net::new(addr, len).ok());
            if let (true, Some(block)) = (found, block) {
                out.push((block, Ipv4Addr::from(via)));
            }
        }
        Ok(out)
    }

    /// The IPv6 twin of [`FastPath::set_remotes`]: the remote IPv6 blocks become exactly `routes` (block,
    /// next hop). Nothing on a program made without `remote6`.
    pub fn set_remotes6(&self, routes: &[(Ipv6Net, Ipv6Addr)]) -> Result<(), KernelError> {
        let Some(remote6) = &self.remote6 else {
            return Ok(());
        };
        for (block, _) in self.remotes6()? {
            if !routes.iter().any(|(b, _)| *b == block) {
                remote6
                    .delete(&remote6_key(block), REMOTE6_KEY)
                    .map_err(io("remove a remote IPv6 block from the fast path"))?;
            }
        }
        for (block, via) in routes {
            remote6
                .update(
                    &remote6_key(*block),
                    &via.octets(),
                    (REMOTE6_KEY, REMOTE6_VALUE),
                )
                .map_err(io("add a remote IPv6 block to the fast path"))?;
        }
        Ok(())
    }

    /// Every remote IPv6 block and its next hop.
    pub fn remotes6(&self) -> Result<Vec<(Ipv6Net, Ipv6Addr)>, KernelError> {
        let Some(remote6) = &self.remote6 else {
            return Ok(vec![]);
        };
        let mut out = Vec::new();
        for key in remote6
            .keys(REMOTE6_KEY)
            .map_err(io("list the fast path's remote IPv6 blocks"))?
        {
            let mut via = [0u8; REMOTE6_VALUE];
            let found = remote6
                .lookup(&key, &mut via, (REMOTE6_KEY, REMOTE6_VALUE))
                .map_err(io("read a remote IPv6 block"))?;
            let len = u32::from_ne_bytes([key[0], key[1], key[2], key[3]]);
            let addr = <[u8; 16]>::try_from(&key[4..]).map(Ipv6Addr::from).ok();
            let block = u8::try_from(len)
                .ok()
                .zip(addr)
                .and_then(|(len, addr)| Ipv6Net::new(addr, len).ok());
            if let (true, Some(block)) = (found, block) {
                out.push((block, Ipv6Addr::from(via)));
            }
        }
        Ok(out)
    }

    /// Whether the remote blocks of both families are exactly `routes` and `routes6` (in any order). A
    /// program made without a family's map matches whatever is wanted of it: there is nothing to put back.
    pub fn remotes_are(
        &self,
        routes: &[(Ipv4Net, Ipv4Addr)],
        routes6: &[(Ipv6Net, Ipv6Addr)],
    ) -> Result<bool, KernelError> {
        fn same<T: Ord + Clone>(mut have: Vec<T>, want: &[T]) -> bool {
            let mut want = want.to_vec();
            have.sort();
            want.sort();
            have == want
        }
        let v4 = self.tunnel.is_none() || same(self.remotes()?, routes);
        let v6 = self.remote6.is_none() || same(self.remotes6()?, routes6);
        Ok(v4 && v6)
    }

    /// Run the program on `frame` as if port `ifindex` had received it: [`REDIRECTED`] or [`PASSED`].
    pub fn verdict(&self, frame: &[u8], ifindex: u32) -> Result<u32, KernelError> {
        self.prog
            .test_run(frame, ifindex)
            .map_err(io("test-run the fast path's program"))
    }
}

/// The `config` array's one value.
fn read_config(config: &Map) -> Result<[u8; CONFIG], KernelError> {
    let mut v = [0u8; CONFIG];
    config
        .lookup(&0u32.to_ne_bytes(), &mut v, (4, CONFIG))
        .map_err(io("read the fast path's tunnel"))?;
    Ok(v)
}

fn write_config(config: &Map, v: &[u8; CONFIG]) -> Result<(), KernelError> {
    config
        .update(&0u32.to_ne_bytes(), v, (4, CONFIG))
        .map_err(io("configure the fast path's tunnel"))
}

/// The preference and handle of the filter that runs the fast path of the bridge named `bridge` on an
/// underlay device (host-gw). The handle is the bridge's block number, unique on the host like the bridge's
/// name; the preference comes from it too, in 0xf000..=0xffff: after the preferences tc picks by itself
/// (49152 and down), so other tools' filters there run first, and rarely the same as another network's
/// (two networks sharing one is fine: their handles differ).
pub fn underlay_filter(bridge: &str) -> (u16, u32) {
    let handle = block_of(bridge);
    (underlay_pref(handle), handle)
}

/// The preference of the underlay filter with handle `handle`.
pub fn underlay_pref(handle: u32) -> u16 {
    0xf000 | u16::try_from(handle & 0x0fff).unwrap_or(0)
}

/// Where the fast path of a bridge stands on an underlay device ([`on_underlay`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnderlay {
    /// The device runs the bridge's program as its [`underlay_filter`].
    There,
    /// It does not, or runs another program there (a re-created bridge's).
    Missing,
    /// It cannot: the device's ingress is bound to a shared block (someone else's), or someone else's filter
    /// holds the preference and handle.
    Blocked,
}

/// Where the fast path of the bridge named `bridge` stands on underlay device `dev`; `None` when the bridge
/// has no fast path. A few dumps and no bpf call: the agent asks every second.
pub fn on_underlay(
    nl: &mut Netlink,
    bridge: &str,
    dev: u32,
) -> Result<Option<OnUnderlay>, KernelError> {
    let Some(prog) = nl
        .bpf_filters(FilterAt::Block(block_of(bridge)))?
        .into_iter()
        .find(|f| f.name == NAME)
    else {
        return Ok(None);
    };
    let (pref, handle) = underlay_filter(bridge);
    let at = FilterAt::Link(dev, TcHook::Ingress);
    let mine = |f: &&BpfFilter| f.pref == pref && f.handle == handle;
    let filters = nl.bpf_filters(at)?;
    // The usual answer first, from the two dumps; the qdisc dump (every link's) only when it is not there.
    Ok(Some(match filters.iter().find(mine) {
        Some(f) if f.name == NAME && f.id == prog.id && f.block.is_none() => OnUnderlay::There,
        Some(f) if f.name != NAME => OnUnderlay::Blocked,
        _ if nl.ingress_qdisc(dev)?.is_some_and(|q| q.block.is_some()) => OnUnderlay::Blocked,
        _ if nl.filter_kinds(at, pref)?.iter().any(|k| k != "bpf") => OnUnderlay::Blocked,
        _ => OnUnderlay::Missing,
    }))
}

/// The fast path filters on the host's underlay devices whose bridge is gone (or runs another program now):
/// (device, handle). Such a filter keeps its program and map of sandboxes alive, and would hand frames to
/// port indexes that no longer exist, or that other links have taken since. Only links with an ingress qdisc
/// of their own are looked at (nsnet's ports are bound to blocks); `links` are the host's links.
pub fn stale_underlay_filters(
    nl: &mut Netlink,
    links: &[super::Link],
) -> Result<Vec<(String, u32)>, KernelError> {
    let mut out = Vec::new();
    for (index, q) in nl.ingress_qdiscs()? {
        if q.block.is_some() {
            continue;
        }
        let Some(dev) = links.iter().find(|l| l.index == index) else {
            continue;
        };
        for f in nl.bpf_filters(FilterAt::Link(index, TcHook::Ingress))? {
            if f.name != NAME || f.pref != underlay_pref(f.handle) || f.handle & 0x8000_0000 == 0 {
                continue;
            }
            let mut live = false;
            for bridge in links.iter().filter(|l| block_of(&l.name) == f.handle) {
                live |= nl
                    .bpf_filters(FilterAt::Block(block_of(&bridge.name)))?
                    .iter()
                    .any(|b| b.name == NAME && b.id == f.id);
            }
            if !live {
                out.push((dev.name.clone(), f.handle));
            }
        }
    }
    Ok(out)
}

/// Take the fast path's filter with handle `handle` (see [`underlay_filter`]) off underlay device `dev`, and
/// nothing else: another filter there, whoever's, stays. With `drop_qdisc` (nsnet made the device's ingress
/// qdisc), the qdisc goes too when no filter at all is left on it. The program it ran stops delivering from
/// `dev` first (its bridge's sandboxes may outlive this: a stale device index must not name a port later).
pub fn detach_underlay(
    nl: &mut Netlink,
    dev: u32,
    handle: u32,
    drop_qdisc: bool,
) -> Result<(), KernelError> {
    let at = FilterAt::Link(dev, TcHook::Ingress);
    let pref = underlay_pref(handle);
    let ours: Vec<BpfFilter> = nl
        .bpf_filters(at)?
        .into_iter()
        .filter(|f| f.pref == pref && f.handle == handle && f.name == NAME)
        .collect();
    if let Some(fp) = FastPath::open(&ours, handle)? {
        if let Some(config) = fp.config() {
            let mut v = read_config(config)?;
            if v[4..8] == dev.to_ne_bytes() {
                v[4..8].copy_from_slice(&0u32.to_ne_bytes());
                write_config(config, &v)?;
            }
        }
    }
    if !ours.is_empty() {
        nl.delete_bpf_filter(at, (pref, handle))?;
    }
    let plain = nl
        .ingress_qdisc(dev)?
        .is_some_and(|q| q.kind == "ingress" && q.block.is_none());
    if drop_qdisc && plain && nl.filter_count(at)? == 0 {
        nl.delete_ingress_qdisc(dev)?;
    }
    Ok(())
}

/// A `remote` trie key: the prefix length (native order), then the block's address.
fn remote_key(block: Ipv4Net) -> [u8; REMOTE_KEY] {
    let mut k = [0u8; REMOTE_KEY];
    k[..4].copy_from_slice(&u32::from(block.prefix_len()).to_ne_bytes());
    k[4..].copy_from_slice(&block.network().octets());
    k
}

/// A `remote6` trie key: the prefix length (native order), then the block's address.
fn remote6_key(block: Ipv6Net) -> [u8; REMOTE6_KEY] {
    let mut k = [0u8; REMOTE6_KEY];
    k[..4].copy_from_slice(&u32::from(block.prefix_len()).to_ne_bytes());
    k[4..].copy_from_slice(&block.network().octets());
    k
}

/// A map value: the port's ifindex as the program loads it (native order), then the MAC.
fn peer(port: u32, mac: [u8; 6]) -> [u8; VALUE] {
    let mut v = [0u8; VALUE];
    v[..4].copy_from_slice(&port.to_ne_bytes());
    v[4..10].copy_from_slice(&mac);
    v
}

/// `BPF_PSEUDO_MAP_FD`: the 64-bit immediate is a map's file descriptor, turned into the map by the loader.
const PSEUDO_MAP_FD: u8 = 1;

const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
const HELPER_REDIRECT_NEIGH: i32 = 152;
const HELPER_REDIRECT_PEER: i32 = 155;
/// `struct bpf_redir_neigh`: `nh_family`, then the address (room for IPv6): what `bpf_redirect_neigh` reads.
const REDIR_NEIGH: i32 = 20;
/// `PACKET_HOST`: the frame's destination MAC is the receiving device's own.
const PACKET_HOST: i32 = 0;

// Offsets in the frame: Ethernet (destination, source, type), then the IPv4 header's addresses.
const ETH_DST: i16 = 0;
const ETH_SRC: i16 = 6;
const ETH_TYPE: i16 = 12;
const IP_TTL: i16 = 22;
const IP_SADDR: i16 = 26;
const IP_DADDR: i16 = 30;
const HEADERS: i32 = 34;
// The IPv6 header's next header and addresses.
const IP6_NEXT: i16 = 20;
const IP6_HOPS: i16 = 21;
const IP6_SADDR: i16 = 22;
const IP6_DADDR: i16 = 38;
const HEADERS6: i32 = 54;
/// `IPPROTO_TCP`, `IPPROTO_UDP`: the only next headers the IPv6 branch takes.
const TCP: i32 = 6;
const UDP: i32 = 17;

// The stack (below r10): the addresses as keys of the sandboxes' map, the config key, a trie key, the
// next hop for `bpf_redirect_neigh`, and the IPv6 addresses as keys of `local6`.
const AT_SADDR: i16 = -8;
const AT_DADDR: i16 = -4;
const AT_CONFIG_KEY: i16 = -12;
const AT_TRIE_KEY: i16 = -20;
const AT_NEXT_HOP: i16 = -40;
const AT_SADDR6: i16 = -56;
const AT_DADDR6: i16 = -72;
const AT_TRIE6_KEY: i16 = -92;

/// The fast path's own instructions, on top of the shared assembler.
impl Asm {
    /// `dst = map` (two instruction slots).
    fn map(&mut self, dst: u8, fd: i32) {
        self.op(LD_DW_IMM, dst, PSEUDO_MAP_FD, 0, fd);
        self.op(0, 0, 0, 0, 0);
    }

    /// `r0 = map[key at fp+key]` (r0 is 0 when there is no such entry).
    fn lookup(&mut self, map_fd: i32, key: i16) {
        self.map(R1, map_fd);
        self.op(MOV64_X, R2, R10, 0, 0);
        self.op(ADD64_K, R2, 0, 0, i32::from(key));
        self.op(CALL, 0, 0, 0, HELPER_MAP_LOOKUP_ELEM);
    }

    /// `r0 = map[key at fp+key]`, or on to `pass` when there is no such entry.
    fn lookup_or_pass(&mut self, map_fd: i32, key: i16) {
        self.lookup(map_fd, key);
        self.or_pass(JEQ_K, R0, 0, 0);
    }

    /// On to `pass` unless the 6 bytes at `value` bytes into the map value at `reg` are the MAC at `frame`
    /// bytes into the frame (r7).
    fn same_mac_or_pass(&mut self, reg: u8, value: i16, frame: i16) {
        self.op(LDX_W, R2, reg, value, 0);
        self.op(LDX_W, R3, R7, frame, 0);
        self.or_pass(JNE_X, R2, R3, 0);
        self.op(LDX_H, R2, reg, value + 4, 0);
        self.op(LDX_H, R3, R7, frame + 4, 0);
        self.or_pass(JNE_X, R2, R3, 0);
    }

    /// Write the 6 bytes at `value` bytes into the map value at `reg` over the MAC at `frame` in the frame.
    /// Out by the tunnel's device (its index in the config entry r8 points at) to the next hop written at
    /// `AT_NEXT_HOP` (`struct bpf_redir_neigh`), whose neighbour entry gives the MACs; the verdict is final.
    fn out_to_next_hop(&mut self) {
        self.op(LDX_W, R1, R8, 0, 0);
        self.op(MOV64_X, R2, R10, 0, 0);
        self.op(ADD64_K, R2, 0, 0, i32::from(AT_NEXT_HOP));
        self.op(MOV64_K, R3, 0, 0, REDIR_NEIGH);
        self.op(MOV64_K, R4, 0, 0, 0);
        self.op(CALL, 0, 0, 0, HELPER_REDIRECT_NEIGH);
        self.op(EXIT, 0, 0, 0, 0);
    }

    /// A frame from another host's block to the sandbox whose entry r9 points at, as the bridge would hand
    /// it over (the sandbox's MAC as destination, the gateway's from the config entry in r8 as source).
    fn deliver_from_tunnel(&mut self) {
        self.put_mac(R9, 4, ETH_DST);
        self.put_mac(R8, 8, ETH_SRC);
        self.op(LDX_W, R1, R9, 0, 0);
        self.op(MOV64_K, R2, 0, 0, 0);
        self.op(CALL, 0, 0, 0, HELPER_REDIRECT_PEER);
        self.op(EXIT, 0, 0, 0, 0);
    }

    fn put_mac(&mut self, reg: u8, value: i16, frame: i16) {
        self.op(LDX_W, R2, reg, value, 0);
        self.op(STX_W, R7, R2, frame, 0);
        self.op(LDX_H, R2, reg, value + 4, 0);
        self.op(STX_H, R7, R2, frame + 4, 0);
    }

    /// From a sandbox to a sandbox, with both addresses as keys of `map` at `saddr` and `daddr` on the stack:
    /// the sender must be a sandbox of this network, on the port the frame came in by, with its own MAC; the
    /// receiver one addressed by its own MAC, whose host port's peer gets the frame. No entry for the
    /// receiver: on to `miss`, or else to `pass`.
    fn sandbox_to_sandbox(&mut self, map: i32, saddr: i16, daddr: i16, miss: Option<Label>) {
        self.lookup_or_pass(map, saddr);
        self.op(LDX_W, R2, R0, 0, 0);
        self.op(LDX_W, R3, R6, SKB_IFINDEX, 0);
        self.or_pass(JNE_X, R2, R3, 0);
        self.same_mac_or_pass(R0, 4, ETH_SRC);
        match miss {
            Some(miss) => {
                self.lookup(map, daddr);
                self.jump(JEQ_K, R0, 0, 0, miss);
            }
            None => self.lookup_or_pass(map, daddr),
        }
        self.same_mac_or_pass(R0, 4, ETH_DST);
        // Into the receiver's namespace, through the peer of its host port.
        self.op(LDX_W, R1, R0, 0, 0);
        self.op(MOV64_K, R2, 0, 0, 0);
        self.op(CALL, 0, 0, 0, HELPER_REDIRECT_PEER);
        self.op(EXIT, 0, 0, 0, 0);
    }

    /// The `remote6` key for the IPv6 address stored at `addr` on the stack: a full-length prefix.
    fn trie6_key(&mut self, addr: i16) {
        self.op(ST_W, R10, 0, AT_TRIE6_KEY, 128);
        for word in [0, 4, 8, 12] {
            self.op(LDX_W, R2, R10, addr + word, 0);
            self.op(STX_W, R10, R2, AT_TRIE6_KEY + 4 + word, 0);
        }
    }

    /// The trie key for the address stored at `addr` on the stack: a full-length prefix.
    fn trie_key(&mut self, addr: i16) {
        self.op(ST_W, R10, 0, AT_TRIE_KEY, 32);
        self.op(LDX_W, R2, R10, addr, 0);
        self.op(STX_W, R10, R2, AT_TRIE_KEY + 4, 0);
    }
}

/// The program's maps, by file descriptor: the sandboxes, the tunnel's config, the remote blocks.
#[derive(Debug, Clone, Copy)]
pub struct Fds {
    pub local: i32,
    pub local6: i32,
    pub config: i32,
    pub remote: i32,
    pub remote6: i32,
}

/// The program for the bridge with index `bridge` and the maps `fds` (see the module doc for what it does).
pub fn program(fds: Fds, bridge: u32) -> io::Result<Vec<Insn>> {
    // The kernel's ifindexes are positive `int`s. A jump's immediate is sign-extended before it is compared
    // with the 32-bit ifindex the program loads, so only an index that fits in an i32 compares right.
    let bridge = i32::try_from(bridge).map_err(|_| invalid("bridge ifindex out of range"))?;
    let mut a = Asm::new();
    let (remote, decap, ipv6) = (a.label(), a.label(), a.label());
    a.op(MOV64_X, R6, R1, 0, 0); // r6 = skb
                                 // On the bridge itself the program only holds the maps; leave at once.
    a.op(LDX_W, R2, R6, SKB_IFINDEX, 0);
    a.or_pass(JEQ_K, R2, 0, bridge);
    // Untagged frames only (a VLAN tag the veth offloaded would not show in the header).
    a.op(LDX_W, R2, R6, SKB_VLAN_PRESENT, 0);
    a.or_pass(JNE_K, R2, 0, 0);
    // r7 = frame; Ethernet + IPv4 addresses must be there.
    a.op(LDX_W, R7, R6, SKB_DATA, 0);
    a.op(LDX_W, R3, R6, SKB_DATA_END, 0);
    a.op(MOV64_X, R2, R7, 0, 0);
    a.op(ADD64_K, R2, 0, 0, HEADERS);
    a.or_pass(JGT_X, R2, R3, 0);
    a.op(LDX_H, R2, R7, ETH_TYPE, 0);
    a.jump(
        JEQ_K,
        R2,
        0,
        i32::from(u16::from_ne_bytes([0x86, 0xdd])),
        ipv6,
    );
    a.or_pass(JNE_K, R2, 0, i32::from(u16::from_ne_bytes([0x08, 0x00])));
    // The addresses on the stack, as keys.
    a.op(LDX_W, R2, R7, IP_SADDR, 0);
    a.op(STX_W, R10, R2, AT_SADDR, 0);
    a.op(LDX_W, R2, R7, IP_DADDR, 0);
    a.op(STX_W, R10, R2, AT_DADDR, 0);
    // r8 = the tunnel's config (an array's entry always exists: zeros when there is no tunnel).
    a.op(ST_W, R10, 0, AT_CONFIG_KEY, 0);
    a.lookup_or_pass(fds.config, AT_CONFIG_KEY);
    a.op(MOV64_X, R8, R0, 0, 0);
    // Received by the tunnel's device (never index 0, which means none): delivery, below.
    a.op(LDX_W, R2, R6, SKB_IFINDEX, 0);
    a.op(LDX_W, R3, R8, 4, 0);
    a.jump(JEQ_X, R2, R3, 0, decap);

    // Sandbox to sandbox; a receiver that is no sandbox here may be a remote one.
    a.sandbox_to_sandbox(fds.local, AT_SADDR, AT_DADDR, Some(remote));

    // Another host's block: routed, so addressed to the gateway; out by the tunnel's device, to the next
    // hop its route names (the kernel's neighbour entry gives the MACs).
    a.bind(remote);
    a.op(LDX_W, R2, R8, 0, 0);
    a.or_pass(JEQ_K, R2, 0, 0);
    a.same_mac_or_pass(R8, 8, ETH_DST);
    // The fast path does not decrement the TTL, where the slow path routes twice (this host, then the
    // other): a frame the slow path would expire on the way (TTL 2 or less) takes it, and its ICMP error.
    a.op(LDX_B, R2, R7, IP_TTL, 0);
    a.or_pass(JLT_K, R2, 0, 3);
    a.trie_key(AT_DADDR);
    a.lookup_or_pass(fds.remote, AT_TRIE_KEY);
    a.op(ST_W, R10, 0, AT_NEXT_HOP, libc::AF_INET);
    a.op(LDX_W, R2, R0, 0, 0);
    a.op(STX_W, R10, R2, AT_NEXT_HOP + 4, 0);
    for word in [8, 12, 16] {
        a.op(ST_W, R10, 0, AT_NEXT_HOP + word, 0);
    }
    a.out_to_next_hop();

    // Decapsulated: from another host's block, for a sandbox of this network; delivered as the bridge would
    // (the sandbox's MAC as destination, the gateway's as source).
    a.bind(decap);
    // Only a frame addressed to the device's own MAC, as the kernel would route it: `bpf_redirect_peer` makes
    // any frame the sandbox's own (it resets the type), so a member's inner frame for another MAC, or a
    // broadcast or multicast one, would otherwise reach the sandbox where the slow path drops it.
    a.op(LDX_W, R2, R6, SKB_PKT_TYPE, 0);
    a.or_pass(JNE_K, R2, 0, PACKET_HOST);
    // Nor one this host's routing would expire (TTL 1 or less; see the sender's check).
    a.op(LDX_B, R2, R7, IP_TTL, 0);
    a.or_pass(JLT_K, R2, 0, 2);
    // The sandbox first: on host-gw's underlay every frame for the host comes this way, and a hash miss is
    // the cheapest way to let it go. r9 keeps the entry across the trie's lookup.
    a.lookup_or_pass(fds.local, AT_DADDR);
    a.op(MOV64_X, R9, R0, 0, 0);
    a.trie_key(AT_SADDR);
    a.lookup_or_pass(fds.remote, AT_TRIE_KEY);
    a.deliver_from_tunnel();

    // IPv6: as IPv4, for TCP and UDP only. r3 still holds the frame's end.
    a.bind(ipv6);
    a.op(MOV64_X, R2, R7, 0, 0);
    a.op(ADD64_K, R2, 0, 0, HEADERS6);
    a.or_pass(JGT_X, R2, R3, 0);
    // TCP or UDP right after the fixed header. ICMPv6 goes to the bridge, whose rules judge neighbour
    // discovery (an advertisement's target), and so does an extension header, whatever it leads to.
    let transport = a.label();
    a.op(LDX_B, R2, R7, IP6_NEXT, 0);
    a.jump(JEQ_K, R2, 0, TCP, transport);
    a.or_pass(JNE_K, R2, 0, UDP);
    a.bind(transport);
    for word in [0, 4, 8, 12] {
        a.op(LDX_W, R2, R7, IP6_SADDR + word, 0);
        a.op(STX_W, R10, R2, AT_SADDR6 + word, 0);
        a.op(LDX_W, R2, R7, IP6_DADDR + word, 0);
        a.op(STX_W, R10, R2, AT_DADDR6 + word, 0);
    }
    // The tunnel's config, as for IPv4; received by the tunnel's device: delivery, below.
    let (remote6, decap6) = (a.label(), a.label());
    a.op(ST_W, R10, 0, AT_CONFIG_KEY, 0);
    a.lookup_or_pass(fds.config, AT_CONFIG_KEY);
    a.op(MOV64_X, R8, R0, 0, 0);
    a.op(LDX_W, R2, R6, SKB_IFINDEX, 0);
    a.op(LDX_W, R3, R8, 4, 0);
    a.jump(JEQ_X, R2, R3, 0, decap6);
    a.sandbox_to_sandbox(fds.local6, AT_SADDR6, AT_DADDR6, Some(remote6));

    // Another host's IPv6 block (`remote6`: block -> next hop, the block's first address, whose permanent
    // neighbour entry on the device gives the MAC), as for IPv4, the hop limit in place of the TTL.
    a.bind(remote6);
    a.op(LDX_W, R2, R8, 0, 0);
    a.or_pass(JEQ_K, R2, 0, 0);
    a.same_mac_or_pass(R8, 8, ETH_DST);
    a.op(LDX_B, R2, R7, IP6_HOPS, 0);
    a.or_pass(JLT_K, R2, 0, 3);
    a.trie6_key(AT_DADDR6);
    a.lookup_or_pass(fds.remote6, AT_TRIE6_KEY);
    a.op(ST_W, R10, 0, AT_NEXT_HOP, libc::AF_INET6);
    for word in [0, 4, 8, 12] {
        a.op(LDX_W, R2, R0, word, 0);
        a.op(STX_W, R10, R2, AT_NEXT_HOP + 4 + word, 0);
    }
    a.out_to_next_hop();

    // Decapsulated (or, host-gw, received on the underlay): from another host's IPv6 block, for a sandbox
    // here, addressed to the device's own MAC, not expiring here; delivered as the bridge would.
    a.bind(decap6);
    a.op(LDX_W, R2, R6, SKB_PKT_TYPE, 0);
    a.or_pass(JNE_K, R2, 0, PACKET_HOST);
    a.op(LDX_B, R2, R7, IP6_HOPS, 0);
    a.or_pass(JLT_K, R2, 0, 2);
    a.lookup_or_pass(fds.local6, AT_DADDR6);
    a.op(MOV64_X, R9, R0, 0, 0);
    a.trie6_key(AT_SADDR6);
    a.lookup_or_pass(fds.remote6, AT_TRIE6_KEY);
    a.deliver_from_tunnel();
    a.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FDS: Fds = Fds {
        local: 3,
        local6: 6,
        config: 4,
        remote: 5,
        remote6: 8,
    };

    #[test]
    fn every_jump_goes_forward_inside_the_program_and_pass_leaves_it_to_the_bridge() {
        let p = program(FDS, 7).expect("assembles");
        let n = p.len();
        assert_eq!(p[n - 2].code, MOV64_K);
        assert_eq!(p[n - 2].imm, -1);
        assert_eq!(p[n - 1].code, EXIT);
        let jumps: Vec<usize> = (0..n)
            .filter(|&i| matches!(p[i].code, JEQ_K | JEQ_X | JNE_K | JNE_X | JGT_X | JLT_K))
            .collect();
        assert!(jumps.len() > 20, "{}", jumps.len());
        let to_pass = jumps
            .iter()
            .filter(|&&i| (i + 1).checked_add_signed(isize::from(p[i].off)) == Some(n - 2))
            .count();
        assert!(to_pass >= 20, "{to_pass}");
        for i in jumps {
            assert!(p[i].off >= 0, "jump at {i} goes back");
            let to = (i + 1).checked_add_signed(isize::from(p[i].off));
            assert!(to.is_some_and(|t| t < n), "jump at {i} leaves the program");
        }
        // Every way out is an exit after a verdict: three redirects per family, and pass.
        assert_eq!(p.iter().filter(|i| i.code == EXIT).count(), 7);
    }

    #[test]
    fn the_maps_are_loaded_by_descriptor_and_the_bridge_index_is_baked_in() {
        let p = program(FDS, 9).expect("assembles");
        let loads: Vec<&Insn> = p.iter().filter(|i| i.code == LD_DW_IMM).collect();
        assert!(loads.iter().all(|i| i.regs >> 4 == PSEUDO_MAP_FD));
        let fds: std::collections::BTreeSet<i32> = loads.iter().map(|i| i.imm).collect();
        assert_eq!(fds, [3, 4, 5, 6, 8].into());
        assert!(p.iter().any(|i| i.code == JEQ_K && i.imm == 9));
        let calls: Vec<i32> = p.iter().filter(|i| i.code == CALL).map(|i| i.imm).collect();
        assert_eq!(
            calls,
            [
                HELPER_MAP_LOOKUP_ELEM,
                HELPER_MAP_LOOKUP_ELEM,
                HELPER_MAP_LOOKUP_ELEM,
                HELPER_REDIRECT_PEER,
                HELPER_MAP_LOOKUP_ELEM,
                HELPER_REDIRECT_NEIGH,
                HELPER_MAP_LOOKUP_ELEM,
                HELPER_MAP_LOOKUP_ELEM,
                HELPER_REDIRECT_PEER,
                // IPv6: the config, sandbox to sandbox, a remote block, delivery.
                HELPER_MAP_LOOKUP_ELEM,
                HELPER_MAP_LOOKUP_ELEM,
                HELPER_MAP_LOOKUP_ELEM,
                HELPER_REDIRECT_PEER,
                HELPER_MAP_LOOKUP_ELEM,
                HELPER_REDIRECT_NEIGH,
                HELPER_MAP_LOOKUP_ELEM,
                HELPER_MAP_LOOKUP_ELEM,
                HELPER_REDIRECT_PEER,
            ]
        );
    }

    #[test]
    fn ipv6_takes_only_tcp_and_udp_behind_a_whole_header_and_looks_up_local6() {
        let p = program(FDS, 9).expect("assembles");
        let at = |code: u8, imm: i32| p.iter().position(|i| i.code == code && i.imm == imm);
        let ipv6 = at(JEQ_K, i32::from(u16::from_ne_bytes([0x86, 0xdd]))).expect("0x86dd");
        let ipv4 = at(JNE_K, i32::from(u16::from_ne_bytes([0x08, 0x00]))).expect("0x0800");
        assert_eq!(ipv4, ipv6 + 1, "IPv6 is told apart before IPv4 is required");
        let branch = ipv6 + 1 + usize::try_from(p[ipv6].off).unwrap();
        // Its own bounds check (Ethernet and the fixed IPv6 header), then the next header.
        assert_eq!(p[branch + 1].imm, HEADERS6);
        assert_eq!(p[branch + 2].code, JGT_X);
        assert_eq!((p[branch + 3].code, p[branch + 3].off), (LDX_B, IP6_NEXT));
        assert_eq!((p[branch + 4].code, p[branch + 4].imm), (JEQ_K, TCP));
        assert_eq!((p[branch + 5].code, p[branch + 5].imm), (JNE_K, UDP));
        // The config, then local6 and remote6 only, never the IPv4 maps.
        let maps: Vec<i32> = p[branch..]
            .iter()
            .filter(|i| i.code == LD_DW_IMM)
            .map(|i| i.imm)
            .collect();
        assert_eq!(maps, [4, 6, 6, 8, 6, 8]);
    }

    #[test]
    fn a_bridge_index_beyond_an_int_is_refused() {
        assert!(program(FDS, i32::MAX.unsigned_abs()).is_ok());
        let e = program(FDS, i32::MAX.unsigned_abs() + 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn remote6_keys_are_the_prefix_length_then_the_block() {
        let k = remote6_key("fd00:10:244:2::/64".parse().unwrap());
        assert_eq!(&k[..4], &64u32.to_ne_bytes());
        assert_eq!(&k[4..6], &[0xfd, 0]);
        assert_eq!(k.len(), 20);
    }

    #[test]
    fn remote_keys_are_the_prefix_length_then_the_block() {
        let k = remote_key("10.244.2.0/24".parse().unwrap());
        assert_eq!(&k[..4], &24u32.to_ne_bytes());
        assert_eq!(&k[4..], &[10, 244, 2, 0]);
    }

    #[test]
    fn map_values_hold_the_port_then_the_mac() {
        let v = peer(0x0102_0304, [2, 0x6e, 10, 89, 0, 2]);
        assert_eq!(&v[..4], &0x0102_0304u32.to_ne_bytes());
        assert_eq!(&v[4..10], &[2, 0x6e, 10, 89, 0, 2]);
        assert_eq!(&v[10..], &[0, 0]);
    }
}
