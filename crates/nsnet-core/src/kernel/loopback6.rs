//! The host reaching published ports at `[::1]` (and at its own IPv6 addresses): translation at the socket.
//!
//! IPv6 has no `route_localnet`: a DNAT of `::1` to a sandbox never completes (the reply's `::1` matches no
//! route off `lo`, and the kernel drops a loopback source arriving on a bridge). So nsnet rewrites the
//! destination before any packet exists, in the host's own `connect()` and `sendmsg()`, with four cgroup
//! `sock_addr` programs (the technique Cilium uses for host services):
//!
//! - `connect6` and `sendmsg6`: a destination of `[::1]:P`, or of one of the host's own IPv6 addresses and
//!   `P` for a port published on every address, where `(protocol, P)` is in the map `nsnet_loopback6`,
//!   becomes the sandbox's address and container port. The original destination is remembered by socket
//!   cookie (map `nsnet_lo6_rev`, least recently used entries evicted).
//! - `recvmsg6` and `getpeername6`: a peer so remembered for this socket is reported as the original, so the
//!   client sees `[::1]:P`.
//!
//! Every program first checks that the socket is in the host's network namespace (its netns cookie, read
//! with `SO_NETNS_COOKIE` when the programs are made, sits in the `nsnet_lo6_cfg` array): a cgroup holds
//! processes of every namespace, and a sandbox connecting to its own `[::1]` must never ride the rewrite.
//! The host's IPv6 addresses are the map `nsnet_lo6_host`, written from a dump of them whenever a port is
//! added (and by `gc` and `firewall reload`).
//!
//! The programs are attached to one cgroup v2 ([`cgroup`]: `NSNET_CGROUP`, by default the root of the
//! cgroup2 mount) with `BPF_F_ALLOW_MULTI`, beside anyone else's. Nothing is pinned: the cgroup keeps them
//! alive, and the next nsnet command finds them with `BPF_PROG_QUERY` by name (`nsnet_lo6_*`) and by the
//! netns cookie in their config map (programs of nsnet in other namespaces attached to the same cgroup are
//! theirs). When the last port goes, nsnet detaches them and the kernel frees them with their maps.

use std::io;
use std::net::Ipv6Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::bpf::op::*;
use super::bpf::{self, Asm, CgroupHook, Insn, Map, Program};
use super::KernelError;
use crate::portmap::Proto;

/// The setting naming the cgroup the programs are attached to.
pub const CGROUP_ENV: &str = "NSNET_CGROUP";
/// Every program's name starts with this (`bpftool cgroup tree` shows them).
pub const PREFIX: &str = "nsnet_lo6";
/// The map of published ports: (port, protocol) -> (sandbox address, container port, every address).
pub const PORTS_MAP: &str = "nsnet_loopback6";
const HOST_MAP: &str = "nsnet_lo6_host";
const REV_MAP: &str = "nsnet_lo6_rev";
const CONFIG_MAP: &str = "nsnet_lo6_cfg";
/// The program's own code; it calls no GPL-only helper.
const LICENSE: &str = "Apache-2.0";

/// The hooks, each with its program's name.
const HOOKS: [(CgroupHook, &str); 4] = [
    (CgroupHook::Inet6Connect, "nsnet_lo6_conn"),
    (CgroupHook::Udp6Sendmsg, "nsnet_lo6_send"),
    (CgroupHook::Udp6Recvmsg, "nsnet_lo6_recv"),
    (CgroupHook::Inet6Getpeername, "nsnet_lo6_peer"),
];

/// Ports key: the port as the socket address holds it (network order in the low 16 bits of a native
/// `u32`), then the protocol number (native `u32`).
const PORT_KEY: usize = 8;
/// Ports value: the sandbox's address, its port (as in the key), then flags ([`EVERY`]).
const PORT_VALUE: usize = 24;
/// The port is published on every host address, not only on `[::1]`.
const EVERY: u32 = 1;
const HOST_KEY: usize = 16;
/// Reverse key: socket cookie, sandbox address, port, protocol. Value: the original address and port.
const REV_KEY: usize = 32;
const REV_VALUE: usize = 20;
const CONFIG: usize = 8;
const MAX_PORTS: u32 = 65_536 * 2;
const MAX_HOST: u32 = 1024;
const MAX_REV: u32 = 65_536;

/// The cgroup the programs go to: `NSNET_CGROUP`, or else the root of the cgroup2 mount. `None` when there
/// is no cgroup2 hierarchy.
pub fn cgroup() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(CGROUP_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    // Where systemd mounts it (unified, or hybrid): one statfs each. mountinfo lists every mount, a named
    // namespace's included, so reading it costs more the more sandboxes there are.
    for usual in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let cgroup2 = nix::sys::statfs::statfs(usual)
            .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
        if cgroup2 {
            return Some(PathBuf::from(usual));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    cgroup2_root(&mounts)
}

/// The mount point of the first cgroup2 file system in `mountinfo` (fields: ... mount point is the fifth,
/// the file system type follows the ` - ` separator).
fn cgroup2_root(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(unescape))
            .flatten()
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> PathBuf {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    PathBuf::from(out)
}

/// Whether `path` is a cgroup2 directory (`statfs` says `CGROUP2_SUPER_MAGIC`).
pub fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// Whether this caller can have the programs at all: a cgroup2 directory to attach to, and bpf maps (a
/// caller without `CAP_BPF`, or a kernel without bpf, cannot make one). A `None` answer is fine, the reason
/// otherwise.
pub fn unsupported_reason() -> Option<String> {
    let Some(cg) = cgroup() else {
        return Some("this host has no cgroup2 file system".into());
    };
    if !is_cgroup2(&cg) {
        return Some(format!("{} is not a cgroup2 directory", cg.display()));
    }
    if let Err(e) = Map::array(CONFIG_MAP, CONFIG, 1) {
        return Some(format!("bpf programs cannot be loaded here ({e})"));
    }
    netns_cookie()
        .err()
        .map(|e| format!("this kernel cannot tell namespaces apart ({e})"))
}

/// A caller without `CAP_BPF`, a kernel without bpf or these hooks, no such cgroup: no translation.
pub fn unsupported(e: &KernelError) -> bool {
    matches!(
        e.errno(),
        Some(libc::EPERM)
            | Some(libc::ENOSYS)
            | Some(libc::EOPNOTSUPP)
            | Some(libc::ENOENT)
            | Some(libc::ENOTDIR)
            | Some(libc::EBADF)
            // No SO_NETNS_COOKIE (before Linux 5.14).
            | Some(libc::ENOPROTOOPT)
    )
}

fn io(what: &str) -> impl FnOnce(io::Error) -> KernelError + '_ {
    move |e| KernelError::io(what, e)
}

/// The cookie of the network namespace this thread is in (`SO_NETNS_COOKIE` of a new socket).
pub fn netns_cookie() -> Result<u64, KernelError> {
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(KernelError::io("open a socket", io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut cookie = 0u64;
    // The size of `cookie`, a u64.
    let mut len: libc::socklen_t = 8;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, which is that long and alive for the call.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            &mut cookie as *mut u64 as *mut libc::c_void,
            &mut len,
        )
    };
    if r < 0 {
        return Err(KernelError::io(
            "read the netns cookie",
            io::Error::last_os_error(),
        ));
    }
    Ok(cookie)
}

/// One published port as the programs see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub proto: Proto,
    pub port: u16,
    pub target: Ipv6Addr,
    pub target_port: u16,
    /// On every host address, not only `[::1]`.
    pub every: bool,
}

fn proto_number(p: Proto) -> u32 {
    match p {
        Proto::Tcp => 6,
        Proto::Udp => 17,
    }
}

/// A port as `struct bpf_sock_addr` holds it: network order in the low 16 bits of a native `u32`.
fn sock_port(port: u16) -> [u8; 4] {
    u32::from(u16::from_ne_bytes(port.to_be_bytes())).to_ne_bytes()
}

fn port_key(proto: Proto, port: u16) -> [u8; PORT_KEY] {
    let mut k = [0u8; PORT_KEY];
    k[..4].copy_from_slice(&sock_port(port));
    k[4..].copy_from_slice(&proto_number(proto).to_ne_bytes());
    k
}

fn port_value(e: &Entry) -> [u8; PORT_VALUE] {
    let mut v = [0u8; PORT_VALUE];
    v[..16].copy_from_slice(&e.target.octets());
    v[16..20].copy_from_slice(&sock_port(e.target_port));
    v[20..].copy_from_slice(&(if e.every { EVERY } else { 0 }).to_ne_bytes());
    v
}

/// The programs of this namespace's nsnet on one cgroup, and their maps.
#[derive(Debug)]
pub struct Loopback6 {
    cgroup: Cgroup,
    /// The hooks nsnet's programs are attached to, with the program.
    attached: Vec<(CgroupHook, Program)>,
    ports: Map,
    host: Map,
}

/// The cgroup directory, flocked for as long as the caller holds it: two commands at once must not both
/// find no programs and each attach a set (the second set's map would hold ports the first's never sees).
fn open_cgroup(path: &Path) -> Result<Cgroup, KernelError> {
    let f = std::fs::File::open(path).map_err(io("open the cgroup for the [::1] programs"))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| KernelError::io("lock the cgroup for the [::1] programs", e.into()))
}

type Cgroup = nix::fcntl::Flock<std::fs::File>;

/// The maps of a program, by name, and the config map's id.
struct Maps {
    ports: Option<Map>,
    host: Option<Map>,
    rev: Option<Map>,
    config: Option<(u32, Map)>,
}

/// The maps whose ids a program's info lists.
fn maps_of(ids: &[u32]) -> io::Result<Maps> {
    let mut m = Maps {
        ports: None,
        host: None,
        rev: None,
        config: None,
    };
    for &id in ids {
        let map = Map::from_id(id)?;
        match map.name()?.as_str() {
            PORTS_MAP => m.ports = Some(map),
            HOST_MAP => m.host = Some(map),
            REV_MAP => m.rev = Some(map),
            CONFIG_MAP => m.config = Some((id, map)),
            _ => {}
        }
    }
    Ok(m)
}

fn read_cookie(config: &Map) -> io::Result<u64> {
    let mut v = [0u8; CONFIG];
    config.lookup(&0u32.to_ne_bytes(), &mut v, (4, CONFIG))?;
    Ok(u64::from_ne_bytes(v))
}

impl Loopback6 {
    /// This namespace's programs on the cgroup at `path`, if there are any. Programs of nsnet in another
    /// namespace (another cookie) are left alone.
    pub fn find(path: &Path) -> Result<Option<Loopback6>, KernelError> {
        let cgroup = open_cgroup(path)?;
        let (attached, maps) = Self::ours(&cgroup, netns_cookie()?)?;
        let Some(m) = maps else {
            return Ok(None);
        };
        Ok(Some(Loopback6 {
            cgroup,
            attached,
            ports: m.0,
            host: m.1,
        }))
    }

    /// The programs of `cookie`'s namespace attached to `cgroup`, and the maps of its `connect6` or
    /// `sendmsg6` program, if one is there.
    #[allow(clippy::type_complexity)]
    fn ours(
        cgroup: &Cgroup,
        cookie: u64,
    ) -> Result<(Vec<(CgroupHook, Program)>, Option<(Map, Map, Map, Map)>), KernelError> {
        let mut attached = Vec::new();
        let mut maps = None;
        // The map ids of the first complete set found, config first: a later program whose maps are all
        // among them reads the same config, so it is ours without opening its maps again.
        let mut ours: Vec<u32> = Vec::new();
        for (hook, name) in HOOKS {
            let ids = bpf::cgroup_query(cgroup.as_fd(), hook)
                .map_err(io("list the programs of a cgroup hook"))?;
            for id in ids {
                // Detached by someone else in between: not there.
                let Ok(prog) = Program::from_id(id) else {
                    continue;
                };
                let info = prog.info().map_err(io("read a cgroup program's info"))?;
                if info.name != name {
                    continue;
                }
                let known = ours.first().is_some_and(|config| {
                    info.map_ids.contains(config) && info.map_ids.iter().all(|m| ours.contains(m))
                });
                if known {
                    attached.push((hook, prog));
                    continue;
                }
                let m = maps_of(&info.map_ids).map_err(io("open the [::1] programs' maps"))?;
                let Some((config_id, config)) = &m.config else {
                    continue;
                };
                if read_cookie(config).map_err(io("read the [::1] programs' config"))? != cookie {
                    continue;
                }
                let config_id = *config_id;
                if let (
                    None,
                    Maps {
                        ports: Some(p),
                        host: Some(h),
                        rev: Some(r),
                        config: Some((_, c)),
                    },
                ) = (&maps, m)
                {
                    maps = Some((p, h, r, c));
                    ours = std::iter::once(config_id)
                        .chain(info.map_ids.iter().copied().filter(|&m| m != config_id))
                        .collect();
                }
                attached.push((hook, prog));
            }
        }
        Ok((attached, maps))
    }

    /// This namespace's programs on the cgroup at `path`, made and attached if they are not there, and any
    /// hook that lost its program given it back (the maps kept). Programs left without their maps (only the
    /// way back survives) are replaced.
    pub fn ensure(path: &Path) -> Result<Loopback6, KernelError> {
        let cgroup = open_cgroup(path)?;
        let cookie = netns_cookie()?;
        let (mut attached, maps) = Self::ours(&cgroup, cookie)?;
        let (ports, host, rev, config) = match maps {
            Some(m) => m,
            None => {
                for (hook, prog) in attached.drain(..) {
                    bpf::cgroup_detach(cgroup.as_fd(), &prog, hook)
                        .map_err(io("detach a stale [::1] program"))?;
                }
                let config =
                    Map::array(CONFIG_MAP, CONFIG, 1).map_err(io("make the [::1] maps"))?;
                config
                    .update(&0u32.to_ne_bytes(), &cookie.to_ne_bytes(), (4, CONFIG))
                    .map_err(io("write the [::1] programs' config"))?;
                let ports = Map::hash(PORTS_MAP, PORT_KEY, PORT_VALUE, MAX_PORTS)
                    .map_err(io("make the [::1] maps"))?;
                let host = Map::hash(HOST_MAP, HOST_KEY, 1, MAX_HOST)
                    .map_err(io("make the [::1] maps"))?;
                let rev = Map::lru_hash(REV_MAP, REV_KEY, REV_VALUE, MAX_REV)
                    .map_err(io("make the [::1] maps"))?;
                (ports, host, rev, config)
            }
        };
        let fds = Fds {
            ports: ports.fd().as_raw_fd(),
            host: host.fd().as_raw_fd(),
            rev: rev.fd().as_raw_fd(),
            config: config.fd().as_raw_fd(),
        };
        for (hook, name) in HOOKS {
            if attached.iter().any(|(h, _)| *h == hook) {
                continue;
            }
            let insns = match hook {
                CgroupHook::Inet6Connect | CgroupHook::Udp6Sendmsg => forward(fds),
                CgroupHook::Udp6Recvmsg | CgroupHook::Inet6Getpeername => back(fds),
            }
            .map_err(io("assemble the [::1] program"))?;
            let prog = Program::load_sock_addr(name, hook, &insns, LICENSE)
                .map_err(io("load the [::1] program"))?;
            bpf::cgroup_attach(cgroup.as_fd(), &prog, hook)
                .map_err(io("attach the [::1] program to the cgroup"))?;
            attached.push((hook, prog));
        }
        Ok(Loopback6 {
            cgroup,
            attached,
            ports,
            host,
        })
    }

    /// Translate `[::1]:port` (and, with `every`, the host's addresses) for `e.proto` to the sandbox.
    pub fn add(&self, e: &Entry) -> Result<(), KernelError> {
        self.ports
            .update(
                &port_key(e.proto, e.port),
                &port_value(e),
                (PORT_KEY, PORT_VALUE),
            )
            .map_err(io("add a port to the [::1] map"))
    }

    /// Stop translating `port` for `proto`; already gone is fine.
    pub fn remove(&self, proto: Proto, port: u16) -> Result<(), KernelError> {
        self.ports
            .delete(&port_key(proto, port), PORT_KEY)
            .map(drop)
            .map_err(io("remove a port from the [::1] map"))
    }

    /// Delete every port but those of `keep` from the map.
    pub fn retain(&self, keep: &[Entry]) -> Result<(), KernelError> {
        let keep: Vec<[u8; PORT_KEY]> = keep.iter().map(|e| port_key(e.proto, e.port)).collect();
        for key in self
            .ports
            .keys(PORT_KEY)
            .map_err(io("list the [::1] map"))?
        {
            if !keep.iter().any(|k| k[..] == key[..]) {
                self.ports
                    .delete(&key, PORT_KEY)
                    .map_err(io("remove a port from the [::1] map"))?;
            }
        }
        Ok(())
    }

    /// The ports translated, as (protocol number, port), in the map's order.
    pub fn ports(&self) -> Result<Vec<(u32, u16)>, KernelError> {
        let keys = self
            .ports
            .keys(PORT_KEY)
            .map_err(io("list the [::1] map"))?;
        Ok(keys
            .iter()
            .filter_map(|k| {
                let port = u16::from_be_bytes([*k.first()?, *k.get(1)?]);
                let proto = u32::from_ne_bytes(k.get(4..8)?.try_into().ok()?);
                Some((proto, port))
            })
            .collect())
    }

    /// Make the host's addresses exactly `addrs` (loopback ones are not needed: `[::1]` is checked apart).
    pub fn set_host_addresses(&self, addrs: &[Ipv6Addr]) -> Result<(), KernelError> {
        for key in self
            .host
            .keys(HOST_KEY)
            .map_err(io("list the [::1] programs' host addresses"))?
        {
            let keep = <[u8; 16]>::try_from(key.as_slice())
                .is_ok_and(|o| addrs.contains(&Ipv6Addr::from(o)));
            if !keep {
                self.host
                    .delete(&key, HOST_KEY)
                    .map_err(io("update the [::1] programs' host addresses"))?;
            }
        }
        for a in addrs {
            self.host
                .update(&a.octets(), &[1], (HOST_KEY, 1))
                .map_err(io("update the [::1] programs' host addresses"))?;
        }
        Ok(())
    }

    /// Take the programs off the cgroup; the kernel frees them and their maps once no one holds them.
    pub fn detach(self) -> Result<(), KernelError> {
        for (hook, prog) in &self.attached {
            match bpf::cgroup_detach(self.cgroup.as_fd(), prog, *hook) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(KernelError::io("detach a [::1] program", e)),
            }
        }
        Ok(())
    }

    /// The hooks this namespace's programs are attached to.
    pub fn hooks(&self) -> Vec<CgroupHook> {
        self.attached.iter().map(|(h, _)| *h).collect()
    }

    /// Whether every hook has its program.
    pub fn is_complete(&self) -> bool {
        self.attached.len() == HOOKS.len()
    }
}

/// This namespace's programs, made if they are not there (see [`Loopback6::ensure`]), with the host's IPv6
/// addresses (from `nl`) written afresh. `None` where there is no cgroup2, no bpf, or no right to either.
pub fn init(nl: &mut super::Netlink) -> Result<Option<Loopback6>, KernelError> {
    let Some(cg) = cgroup().filter(|cg| is_cgroup2(cg)) else {
        return Ok(None);
    };
    let lo = match Loopback6::ensure(&cg) {
        Ok(lo) => lo,
        Err(e) if unsupported(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let addrs: Vec<Ipv6Addr> = nl
        .ipv6_addresses()?
        .iter()
        .map(|a| a.addr())
        .filter(|a| !a.is_loopback())
        .collect();
    lo.set_host_addresses(&addrs)?;
    Ok(Some(lo))
}

/// This namespace's programs if they are there; `None` too where there cannot be any.
pub fn existing() -> Result<Option<Loopback6>, KernelError> {
    let Some(cg) = cgroup().filter(|cg| is_cgroup2(cg)) else {
        return Ok(None);
    };
    match Loopback6::find(&cg) {
        Err(e) if unsupported(&e) => Ok(None),
        other => other,
    }
}

/// Detach this namespace's programs if their map holds no port.
pub fn release() -> Result<(), KernelError> {
    match existing()? {
        Some(lo) if lo.ports()?.is_empty() => lo.detach(),
        _ => Ok(()),
    }
}

/// The maps by file descriptor, as the programs load them.
#[derive(Debug, Clone, Copy)]
pub struct Fds {
    pub ports: i32,
    pub host: i32,
    pub rev: i32,
    pub config: i32,
}

/// `BPF_PSEUDO_MAP_FD`: the 64-bit immediate is a map's file descriptor.
const PSEUDO_MAP_FD: u8 = 1;
const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
const HELPER_MAP_UPDATE_ELEM: i32 = 2;
const HELPER_GET_SOCKET_COOKIE: i32 = 46;
const HELPER_GET_NETNS_COOKIE: i32 = 122;
/// What a `sock_addr` program returns to let the call go on.
const ALLOW: i32 = 1;

// `struct bpf_sock_addr`.
const USER_IP6: i16 = 8;
const USER_PORT: i16 = 24;
const PROTOCOL: i16 = 36;

// The stack (below r10): the config key, the ports key (port, protocol), a host address key, the way back's
// key (socket cookie, sandbox address, port, protocol) and value (original address, port).
const AT_CONFIG_KEY: i16 = -4;
const AT_PORT_KEY: i16 = -12;
const AT_PROTO: i16 = -8;
const AT_HOST_KEY: i16 = -28;
const AT_REV_KEY: i16 = -64;
const AT_REV_VALUE: i16 = -88;

impl Asm {
    /// `dst = map` (two instruction slots).
    fn map_fd(&mut self, dst: u8, fd: i32) {
        self.op(LD_DW_IMM, dst, PSEUDO_MAP_FD, 0, fd);
        self.op(0, 0, 0, 0, 0);
    }

    /// `r0 = map[key at fp+key]`, or on to `pass` when there is no such entry.
    fn find_or_pass(&mut self, map_fd: i32, key: i16) {
        self.map_fd(R1, map_fd);
        self.op(MOV64_X, R2, R10, 0, 0);
        self.op(ADD64_K, R2, 0, 0, i32::from(key));
        self.op(CALL, 0, 0, 0, HELPER_MAP_LOOKUP_ELEM);
        self.or_pass(JEQ_K, R0, 0, 0);
    }

    /// On to `pass` unless the socket (ctx in r6) is in the namespace whose cookie the config holds.
    fn host_namespace_or_pass(&mut self, config: i32) {
        self.op(ST_W, R10, 0, AT_CONFIG_KEY, 0);
        self.find_or_pass(config, AT_CONFIG_KEY);
        self.op(LDX_DW, R7, R0, 0, 0);
        self.op(MOV64_X, R1, R6, 0, 0);
        self.op(CALL, 0, 0, 0, HELPER_GET_NETNS_COOKIE);
        self.or_pass(JNE_X, R0, R7, 0);
    }

    /// Copy the 4 words at `from` bytes into the memory at `src` to `to` bytes into `dst`.
    fn copy_words(&mut self, dst: u8, to: i16, src: u8, from: i16, words: i16) {
        for i in 0..words {
            self.op(LDX_W, R2, src, from + 4 * i, 0);
            self.op(STX_W, dst, R2, to + 4 * i, 0);
        }
    }

    /// The socket's cookie at `fp+at`.
    fn socket_cookie(&mut self, at: i16) {
        self.op(MOV64_X, R1, R6, 0, 0);
        self.op(CALL, 0, 0, 0, HELPER_GET_SOCKET_COOKIE);
        self.op(STX_DW, R10, R0, at, 0);
    }
}

/// `connect6` / `sendmsg6`: a published destination becomes the sandbox (see the module doc).
pub fn forward(fds: Fds) -> io::Result<Vec<Insn>> {
    let mut a = Asm::new();
    let (other, rewrite) = (a.label(), a.label());
    a.op(MOV64_X, R6, R1, 0, 0); // r6 = ctx
    a.host_namespace_or_pass(fds.config);
    // r7 = the published port's entry.
    a.op(LDX_W, R2, R6, USER_PORT, 0);
    a.op(STX_W, R10, R2, AT_PORT_KEY, 0);
    a.op(LDX_W, R2, R6, PROTOCOL, 0);
    a.op(STX_W, R10, R2, AT_PROTO, 0);
    a.find_or_pass(fds.ports, AT_PORT_KEY);
    a.op(MOV64_X, R7, R0, 0, 0);
    // [::1]: three zero words, then 1 in network order.
    for word in 0..3 {
        a.op(LDX_W, R2, R6, USER_IP6 + 4 * word, 0);
        a.jump(JNE_K, R2, 0, 0, other);
    }
    a.op(LDX_W, R2, R6, USER_IP6 + 12, 0);
    a.jump(JNE_K, R2, 0, i32::from_ne_bytes([0, 0, 0, 1]), other);
    a.jump(JA, 0, 0, 0, rewrite);
    // Another address: only for a port on every address, and only one of the host's own.
    a.bind(other);
    a.op(LDX_W, R2, R7, 20, 0);
    a.or_pass(JEQ_K, R2, 0, 0);
    a.copy_words(R10, AT_HOST_KEY, R6, USER_IP6, 4);
    a.find_or_pass(fds.host, AT_HOST_KEY);

    a.bind(rewrite);
    // The way back: (socket, sandbox address, port, protocol) -> the original destination.
    a.copy_words(R10, AT_REV_VALUE, R6, USER_IP6, 5);
    a.socket_cookie(AT_REV_KEY);
    a.copy_words(R10, AT_REV_KEY + 8, R7, 0, 5);
    a.op(LDX_W, R2, R10, AT_PROTO, 0);
    a.op(STX_W, R10, R2, AT_REV_KEY + 28, 0);
    // The new destination.
    a.copy_words(R6, USER_IP6, R7, 0, 5);
    a.map_fd(R1, fds.rev);
    a.op(MOV64_X, R2, R10, 0, 0);
    a.op(ADD64_K, R2, 0, 0, i32::from(AT_REV_KEY));
    a.op(MOV64_X, R3, R10, 0, 0);
    a.op(ADD64_K, R3, 0, 0, i32::from(AT_REV_VALUE));
    a.op(MOV64_K, R4, 0, 0, 0);
    a.op(CALL, 0, 0, 0, HELPER_MAP_UPDATE_ELEM);
    a.finish_with(ALLOW)
}

/// `recvmsg6` / `getpeername6`: a peer the forward program put in this socket's way is shown as the
/// destination the client asked for.
pub fn back(fds: Fds) -> io::Result<Vec<Insn>> {
    let mut a = Asm::new();
    a.op(MOV64_X, R6, R1, 0, 0); // r6 = ctx
    a.host_namespace_or_pass(fds.config);
    a.socket_cookie(AT_REV_KEY);
    a.copy_words(R10, AT_REV_KEY + 8, R6, USER_IP6, 5);
    a.op(LDX_W, R2, R6, PROTOCOL, 0);
    a.op(STX_W, R10, R2, AT_REV_KEY + 28, 0);
    a.find_or_pass(fds.rev, AT_REV_KEY);
    a.copy_words(R6, USER_IP6, R0, 0, 5);
    a.finish_with(ALLOW)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FDS: Fds = Fds {
        ports: 3,
        host: 4,
        rev: 5,
        config: 6,
    };

    fn jumps(p: &[Insn]) -> Vec<usize> {
        (0..p.len())
            .filter(|&i| matches!(p[i].code, JA | JEQ_K | JEQ_X | JNE_K | JNE_X))
            .collect()
    }

    fn target(p: &[Insn], i: usize) -> Option<usize> {
        (i + 1).checked_add_signed(isize::from(p[i].off))
    }

    #[test]
    fn every_jump_goes_forward_inside_the_program_and_every_way_out_allows() {
        for p in [forward(FDS).expect("forward"), back(FDS).expect("back")] {
            let n = p.len();
            assert_eq!(p[n - 2].code, MOV64_K);
            assert_eq!(p[n - 2].imm, ALLOW);
            assert_eq!(p[n - 1].code, EXIT);
            assert_eq!(p.iter().filter(|i| i.code == EXIT).count(), 1);
            for i in jumps(&p) {
                assert!(p[i].off >= 0, "jump at {i} goes back");
                assert!(
                    target(&p, i).is_some_and(|t| t < n),
                    "jump at {i} leaves the program"
                );
            }
        }
    }

    #[test]
    fn the_loopback_check_falls_to_the_host_address_check_and_loopback_skips_it() {
        let p = forward(FDS).expect("forward");
        let js = jumps(&p);
        // The four word checks of [::1] all go to one place (`other`); the unconditional jump after them
        // goes past the host address check to the rewrite.
        let words: Vec<usize> = js.iter().copied().filter(|&i| p[i].code == JNE_K).collect();
        assert_eq!(words.len(), 4);
        let other = target(&p, words[0]).expect("target");
        assert!(words.iter().all(|&i| target(&p, i) == Some(other)));
        assert_eq!(p[words[3]].imm, i32::from_ne_bytes([0, 0, 0, 1]));
        let ja = js
            .iter()
            .copied()
            .find(|&i| p[i].code == JA)
            .expect("a jump to the rewrite");
        assert_eq!(
            ja + 1,
            other,
            "the loopback path jumps right before `other`"
        );
        let rewrite = target(&p, ja).expect("target");
        // `other` reads the flags, and between it and the rewrite the host map is looked up.
        assert_eq!((p[other].code, p[other].off), (LDX_W, 20));
        let host_lookups = p[other..rewrite]
            .iter()
            .filter(|i| i.code == LD_DW_IMM && i.imm == FDS.host)
            .count();
        assert_eq!(host_lookups, 1);
        // The rewrite writes the destination: address words and port, into the context (r6).
        let writes: Vec<i16> = p[rewrite..]
            .iter()
            .filter(|i| i.code == STX_W && i.regs & 0x0f == R6)
            .map(|i| i.off)
            .collect();
        assert_eq!(writes, [8, 12, 16, 20, 24]);
    }

    #[test]
    fn the_namespace_is_checked_before_anything_else_and_the_maps_are_loaded_by_descriptor() {
        for (p, maps) in [
            (forward(FDS).expect("forward"), vec![6, 3, 4, 5]),
            (back(FDS).expect("back"), vec![6, 5]),
        ] {
            let calls: Vec<i32> = p.iter().filter(|i| i.code == CALL).map(|i| i.imm).collect();
            assert_eq!(
                &calls[..2],
                &[HELPER_MAP_LOOKUP_ELEM, HELPER_GET_NETNS_COOKIE]
            );
            let loads: Vec<&Insn> = p.iter().filter(|i| i.code == LD_DW_IMM).collect();
            assert!(loads.iter().all(|i| i.regs >> 4 == PSEUDO_MAP_FD));
            assert_eq!(loads.iter().map(|i| i.imm).collect::<Vec<_>>(), maps);
            // The cookie check passes (allows, untouched) on a mismatch.
            let check = p
                .iter()
                .position(|i| i.code == JNE_X)
                .expect("the cookie check");
            assert_eq!(target(&p, check), Some(p.len() - 2));
        }
    }

    #[test]
    fn keys_and_values_hold_ports_as_the_socket_address_does() {
        let k = port_key(Proto::Udp, 8080);
        assert_eq!(&k[..2], &8080u16.to_be_bytes());
        assert_eq!(&k[2..4], &[0, 0]);
        assert_eq!(&k[4..], &17u32.to_ne_bytes());
        let e = Entry {
            proto: Proto::Tcp,
            port: 8080,
            target: "fd00::2".parse().expect("address"),
            target_port: 80,
            every: true,
        };
        let v = port_value(&e);
        assert_eq!(&v[..16], &e.target.octets());
        assert_eq!(&v[16..18], &80u16.to_be_bytes());
        assert_eq!(&v[20..], &EVERY.to_ne_bytes());
    }

    #[test]
    fn the_cgroup2_root_is_read_from_mountinfo() {
        let info = "25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                    33 25 0:28 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_root(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_root("1 2 0:1 / /a\\040b rw - cgroup2 x rw"),
            Some("/a b".into())
        );
        assert_eq!(cgroup2_root("1 2 0:1 / /x rw - tmpfs x rw"), None);
    }
}
