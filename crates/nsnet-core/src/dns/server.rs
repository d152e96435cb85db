//! The resolver process: one thread waits (epoll) on every sandbox's UDP and TCP sockets, the upstream
//! sockets and the control socket. A TCP connection gets a thread of its own (rare: answers too long for UDP).
//!
//! Forwarding never blocks the loop: a forwarded query is sent upstream with a random ID from one of a pool
//! of sockets connected to that server, each on its own random port (as dnsmasq keeps random sockets: an
//! off-path attacker must guess port and ID to forge an answer; a refusal reaches the connected socket, so
//! the next server is tried at once), and kept pending; the answer, or the next server after [`upstream::TRY_FOR`], comes in a later turn of the loop. So
//! an upstream that does not answer stalls nothing local.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket,
};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use nix::sys::socket::{self as sock, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};

use super::names::{Answer, Names};
use super::wire::{self, Parsed};
use super::{upstream, Member, Update, RESOLVER_ADDR};
use crate::kernel::{dnsport, netns};
use crate::store::Store;

/// Files in the state dir: the control socket, the flock one resolver holds, its pid, its generation.
pub const SOCKET: &str = "dns.sock";
const LOCK: &str = "dns.lock";
pub const PID: &str = "dns.pid";
pub const GENERATION_FILE: &str = "dns.generation";

/// What this build's resolver understands of records and updates. A resolver keeps running across an
/// upgrade, so a command that finds one of an older generation asks it to step down and starts its own
/// (`client::tell`). 2: IPv6 (AAAA answers, IPv6 upstream servers and port addresses in records, records read
/// without ever being set aside). 3: IPv6-only members (no IPv4 address). Resolvers before 2 wrote no
/// generation file.
pub const GENERATION: u32 = 3;

/// How often the resolver reads the whole state again (and the host's resolv.conf).
const RESYNC: Duration = Duration::from_secs(5);
/// Forwarded queries in flight at once; beyond, SERVFAIL at once rather than unbounded memory.
const MAX_PENDING: usize = 4096;
/// Sockets per upstream server: each on a random port of its own.
const POOL: usize = 16;
/// TCP connections served at once.
const MAX_TCP: usize = 64;
/// How long a TCP connection may sit idle, and a command may take to send its updates.
const IDLE: Duration = Duration::from_secs(5);

/// What an epoll event is about.
#[derive(Debug, Clone)]
enum Source {
    Control,
    /// Socket number N of the pool connected to this upstream server.
    Upstream(SocketAddr, usize),
    /// A directory of namespace mount points changed (`ip netns del`).
    Namespaces,
    /// The process whose namespace a sandbox is exited.
    Exited(Rc<str>),
    // A sandbox's sockets, by its name (an `Rc`: the loop clones the source of every event it takes).
    Udp(Rc<str>),
    Tcp(Rc<str>),
}

/// A sandbox's two listening sockets, inside its namespace.
struct Listen {
    udp: UdpSocket,
    tcp: TcpListener,
    /// For a namespace reached through a process (`/proc/PID/ns/net`): that process, as a pidfd, readable
    /// once it exits (then the path no longer names the namespace, and the sandbox counts as gone).
    process: Option<(OwnedFd, u64)>,
    tokens: [u64; 2],
    netns: PathBuf,
}

/// A forwarded query waiting for upstream.
struct Pending {
    member: String,
    client: SocketAddr,
    id: u16,
    /// The query as sent upstream (with the upstream ID).
    bytes: Vec<u8>,
    /// The pool socket it was last sent from (its server, and its number there).
    socket: Option<(SocketAddr, usize)>,
    servers: Vec<SocketAddr>,
    tried: usize,
    deadline: Instant,
}

struct Resolver {
    store: Store,
    epoll: Epoll,
    names: Arc<Mutex<Names>>,
    listening: HashMap<String, Listen>,
    sources: HashMap<u64, Source>,
    next_token: u64,
    pending: HashMap<u16, Pending>,
    host_servers: Vec<SocketAddr>,
    tcp_open: Arc<AtomicUsize>,
    /// Directories holding members' namespace mount points (/run/netns), watched: a sandbox's sockets hold
    /// its namespace, so the resolver must let go as soon as the mount point goes, not at the next resync.
    inotify: Inotify,
    watched: HashMap<WatchDescriptor, PathBuf>,
    /// Per upstream server, its pool of connected sockets ([`POOL`]), made when it is first asked.
    upstreams: HashMap<SocketAddr, Vec<UdpSocket>>,
}

/// The exit status of a resolver that found another one serving the state dir (or one still stopping): the
/// command that started it tries again.
pub const BUSY: u8 = 75;

/// The resolver process's whole life, for the binaries' `main`: its exit status (0, [`BUSY`], or 1 after a
/// failure, said on stderr).
pub fn main(state_dir: &Path) -> u8 {
    match serve(state_dir) {
        Ok(true) => 0,
        Ok(false) => BUSY,
        Err(e) => {
            eprintln!("nsnet: resolver: {e}");
            1
        }
    }
}

/// Run the resolver for `state_dir` until no sandbox needs it. `Ok(false)`: another resolver holds the state
/// dir (exit with [`BUSY`]).
pub fn serve(state_dir: &Path) -> Result<bool, String> {
    // Read only: the resolver writes no record, and it keeps running across an upgrade (until no sandbox needs
    // it), so a record it cannot read may simply be newer than it is (an IPv6 `--dns` server, say). Setting
    // such a record aside would lose a sandbox; and its warnings go nowhere. The next command decides.
    let store = Store::new(state_dir).read_only();
    let lock = File::create(state_dir.join(LOCK)).map_err(|e| format!("open {LOCK}: {e}"))?;
    // One resolver per state dir: a second one started in a race leaves.
    let Ok(_lock) = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
    else {
        return Ok(false);
    };
    raise_fd_limit();
    let control_path = state_dir.join(SOCKET);
    // Left by a resolver that died: this one holds the lock, so no other listens there.
    let _ = fs::remove_file(&control_path);
    // Before the socket exists, so no command ever finds this resolver without its generation (and takes it
    // for an older one).
    let _ = fs::write(state_dir.join(PID), format!("{}\n", std::process::id()));
    let _ = fs::write(state_dir.join(GENERATION_FILE), format!("{GENERATION}\n"));
    let result = serve_locked(store, &control_path);
    // Gone before the lock is let go, so the next resolver binds a fresh socket; and after a failure too, so
    // no command takes a pid or generation file for a resolver that is not there.
    remove_files(state_dir);
    result.map(|()| true)
}

/// [`serve`] once this resolver holds the state dir's lock and has written its pid and generation.
fn serve_locked(store: Store, control_path: &Path) -> Result<(), String> {
    let mut r = Resolver::new(store)?;
    r.resync();
    if r.names().is_empty() {
        return Ok(());
    }
    let control = UnixListener::bind(control_path)
        .map_err(|e| format!("bind {}: {e}", control_path.display()))?;
    fs::set_permissions(control_path, fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod {}: {e}", control_path.display()))?;
    control.set_nonblocking(true).map_err(|e| e.to_string())?;
    r.watch(&control, Source::Control)?;
    r.run(&control)
}

/// The resolver's files in the state dir: its socket, its pid, its generation, and its lock file (unlinked while still held:
/// a resolver started meanwhile locks a new one, and this one serves nothing any more).
fn remove_files(state_dir: &Path) {
    for f in [SOCKET, PID, GENERATION_FILE, LOCK] {
        let _ = fs::remove_file(state_dir.join(f));
    }
}

impl Resolver {
    fn new(store: Store) -> Result<Resolver, String> {
        let epoll =
            Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(|e| format!("epoll: {e}"))?;
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .map_err(|e| format!("inotify: {e}"))?;
        let mut r = Resolver {
            inotify,
            watched: HashMap::new(),
            upstreams: HashMap::new(),
            store,
            epoll,
            names: Arc::default(),
            listening: HashMap::new(),
            sources: HashMap::new(),
            next_token: 0,
            pending: HashMap::new(),
            host_servers: upstream::host_servers(),
            tcp_open: Arc::default(),
        };
        let fd = r
            .inotify
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| e.to_string())?;
        r.watch(&fd, Source::Namespaces)?;
        Ok(r)
    }

    fn names(&self) -> MutexGuard<'_, Names> {
        lock(&self.names)
    }

    fn watch(&mut self, fd: &impl AsFd, source: Source) -> Result<u64, String> {
        let token = self.next_token;
        self.next_token += 1;
        self.epoll
            .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, token))
            .map_err(|e| format!("epoll add: {e}"))?;
        self.sources.insert(token, source);
        Ok(token)
    }

    fn run(&mut self, control: &UnixListener) -> Result<(), String> {
        let mut events = vec![EpollEvent::empty(); 64];
        let mut next_resync = Instant::now() + RESYNC;
        loop {
            let now = Instant::now();
            let wake = self
                .pending
                .values()
                .map(|p| p.deadline)
                .chain([next_resync])
                .min()
                .unwrap_or(next_resync);
            let ms = u16::try_from(
                wake.saturating_duration_since(now)
                    .as_millis()
                    .saturating_add(1),
            )
            .unwrap_or(u16::MAX);
            let n = match self.epoll.wait(&mut events, ms) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => 0,
                Err(e) => return Err(format!("epoll wait: {e}")),
            };
            for ev in &events[..n] {
                let Some(source) = self.sources.get(&ev.data()).cloned() else {
                    continue;
                };
                match source {
                    Source::Control => {
                        if self.control(control) {
                            return Ok(());
                        }
                    }
                    Source::Upstream(server, n) => self.upstream_answers(server, n),
                    Source::Namespaces => {
                        if self.namespaces_gone() {
                            return Ok(());
                        }
                    }
                    Source::Exited(member) => {
                        let _ = self.apply(Update::Down(member.to_string()));
                        if self.names().is_empty() {
                            return Ok(());
                        }
                    }
                    Source::Udp(member) => self.serve_udp(&member),
                    Source::Tcp(member) => self.accept_tcp(&member),
                }
            }
            self.expire();
            if Instant::now() >= next_resync {
                if !self.store.dir().join("lock").exists() {
                    return Ok(());
                }
                self.host_servers = upstream::host_servers();
                self.resync();
                if self.names().is_empty() {
                    return Ok(());
                }
                next_resync = Instant::now() + RESYNC;
            }
        }
    }

    /// Serve the sandboxes the records hold now: the ones on networks with names whose namespace is there.
    fn resync(&mut self) {
        let (Ok(sandboxes), Ok(networks)) = (self.store.sandboxes(), self.store.networks()) else {
            return;
        };
        let nets: Vec<&crate::model::Network> = networks.iter().collect();
        let wanted: HashMap<String, Member> = sandboxes
            .iter()
            .filter(|sb| crate::ops::host::Host::namespace_is_there(sb))
            .filter_map(|sb| Member::of(sb, &nets))
            .map(|m| (m.name.clone(), m))
            .collect();
        let known: Vec<String> = self.names().members().map(|m| m.name.clone()).collect();
        for name in known.iter().filter(|n| !wanted.contains_key(*n)) {
            let _ = self.apply(Update::Down(name.clone()));
        }
        for (name, m) in wanted {
            if self.names().member(&name) != Some(&m) {
                let _ = self.apply(Update::Up(m));
            }
        }
    }

    /// Carry out one update. `Err`: the sandbox's names are served, but it cannot ask (no sockets).
    fn apply(&mut self, update: Update) -> Result<(), String> {
        match update {
            Update::Down(name) => {
                self.names().down(&name);
                self.close(&name);
                Ok(())
            }
            Update::Up(m) => {
                let name = m.name.clone();
                let same = self
                    .listening
                    .get(&name)
                    .is_some_and(|l| l.netns == m.netns);
                let opened = if same {
                    Ok(())
                } else {
                    self.close(&name);
                    self.open(&m)
                };
                self.names().up(m);
                opened
            }
        }
    }

    fn open(&mut self, m: &Member) -> Result<(), String> {
        let fd = netns::open(&m.netns).map_err(|e| e.to_string())?;
        if let Some(id) = m.netns_id {
            if netns::identity(&m.netns).ok() != Some(id) {
                return Err(format!(
                    "{} is no longer sandbox '{}''s namespace",
                    m.netns.display(),
                    m.name
                ));
            }
        }
        let (udp, tcp) = netns::run_in(&fd, bind_resolver)
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("listen on {RESOLVER_ADDR}:53 in sandbox '{}': {e}", m.name))?;
        // /proc/PID/ns/net cannot be watched: a process's namespace is found gone at the next resync.
        if let Some(dir) = m.netns.parent().filter(|d| !d.starts_with("/proc")) {
            if !self.watched.values().any(|w| w == dir) {
                if let Ok(wd) = self.inotify.add_watch(dir, AddWatchFlags::IN_DELETE) {
                    self.watched.insert(wd, dir.to_path_buf());
                }
            }
        }
        let process = match process_of(&m.netns).and_then(pidfd) {
            Some(fd) => Some((
                fd.try_clone().map_err(|e| e.to_string())?,
                self.watch(&fd, Source::Exited(m.name.as_str().into()))?,
            )),
            None => None,
        };
        let name: Rc<str> = m.name.as_str().into();
        let t1 = self.watch(&udp, Source::Udp(Rc::clone(&name)))?;
        let t2 = self.watch(&tcp, Source::Tcp(name))?;
        self.listening.insert(
            m.name.clone(),
            Listen {
                udp,
                tcp,
                process,
                tokens: [t1, t2],
                netns: m.netns.clone(),
            },
        );
        Ok(())
    }

    fn close(&mut self, name: &str) {
        if let Some(l) = self.listening.remove(name) {
            let _ = self.epoll.delete(&l.udp);
            let _ = self.epoll.delete(&l.tcp);
            for t in l.tokens {
                self.sources.remove(&t);
            }
            if let Some((fd, token)) = l.process {
                let _ = self.epoll.delete(&fd);
                self.sources.remove(&token);
            }
            // A sandbox that stays (off its last network with names) keeps nothing of the resolver's.
            if let Ok(fd) = netns::open(&l.netns) {
                let _ = netns::run_in(&fd, || {
                    crate::kernel::Netlink::open().and_then(|mut nl| dnsport::unredirect(&mut nl))
                });
            }
        }
    }

    /// Mount points deleted: their sandboxes go (the command that deleted one has told, or is telling, the
    /// resolver too; this covers `ip netns del` behind nsnet's back). True when nothing is left to serve.
    fn namespaces_gone(&mut self) -> bool {
        let Ok(events) = self.inotify.read_events() else {
            return false;
        };
        let gone: Vec<PathBuf> = events
            .into_iter()
            .filter_map(|e| Some(self.watched.get(&e.wd)?.join(e.name?)))
            .collect();
        let members: Vec<String> = self
            .names()
            .members()
            .filter(|m| gone.contains(&m.netns))
            .map(|m| m.name.clone())
            .collect();
        for name in members {
            let _ = self.apply(Update::Down(name));
        }
        self.names().is_empty()
    }

    /// A command's updates. True when the resolver has nothing left to serve and should stop.
    fn control(&mut self, listener: &UnixListener) -> bool {
        while let Ok((conn, _)) = listener.accept() {
            let _ = self.updates(conn);
        }
        self.names().is_empty()
    }

    fn updates(&mut self, conn: UnixStream) -> io::Result<()> {
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(IDLE))?;
        let mut out = conn.try_clone()?;
        let mut replies = String::new();
        for line in BufReader::new(conn).lines() {
            let line = line?;
            let reply = match serde_json::from_str::<Update>(&line) {
                Ok(u) => match self.apply(u) {
                    Ok(()) => "ok".to_string(),
                    Err(e) => e,
                },
                Err(e) => format!("not an update: {e}"),
            };
            replies.push_str(&reply.replace('\n', " "));
            replies.push('\n');
        }
        // Stopping: its files go before the command hears back, so the command that removed the last sandbox
        // (and the `network rm` after it) finds the state dir as the resolver never was.
        if self.names().is_empty() {
            remove_files(self.store.dir());
        }
        out.write_all(replies.as_bytes())
    }

    /// Queries from a sandbox over UDP.
    fn serve_udp(&mut self, member: &str) {
        let mut buf = [0u8; 4096];
        loop {
            let Some(l) = self.listening.get(member) else {
                return;
            };
            let (n, client) = match l.udp.recv_from(&mut buf) {
                Ok(x) => x,
                Err(_) => return,
            };
            let q = match wire::parse(&buf[..n]) {
                Parsed::Question(q) => q,
                Parsed::Reply(bytes) => {
                    let _ = l.udp.send_to(&bytes, client);
                    continue;
                }
                Parsed::Drop => continue,
            };
            let answer = lock(&self.names).lookup(member, &q.name, q.kind, &self.host_servers);
            match answer {
                Answer::Forward(servers) => {
                    self.forward(member, client, &buf[..n], q.message.id(), servers)
                }
                other => {
                    if let Some(bytes) = wire::respond(&q, &other, wire::udp_limit(&q)) {
                        if let Some(l) = self.listening.get(member) {
                            let _ = l.udp.send_to(&bytes, client);
                        }
                    }
                }
            }
        }
    }

    fn forward(
        &mut self,
        member: &str,
        client: SocketAddr,
        query: &[u8],
        id: u16,
        servers: Vec<SocketAddr>,
    ) {
        if self.pending.len() >= MAX_PENDING {
            return self.reply(member, client, wire::servfail(query));
        }
        let upstream_id = loop {
            let candidate = random_u16();
            if !self.pending.contains_key(&candidate) {
                break candidate;
            }
        };
        let mut bytes = query.to_vec();
        bytes[..2].copy_from_slice(&upstream_id.to_be_bytes());
        let p = Pending {
            member: member.to_string(),
            client,
            id,
            bytes,
            servers,
            tried: 0,
            deadline: Instant::now(),
            socket: None,
        };
        self.pending.insert(upstream_id, p);
        self.send_next(upstream_id);
    }

    /// Send a pending query to its next server, or answer SERVFAIL when none is left.
    fn send_next(&mut self, upstream_id: u16) {
        loop {
            let Some(p) = self.pending.get_mut(&upstream_id) else {
                return;
            };
            let Some(server) = p.servers.get(p.tried).copied() else {
                let Some(p) = self.pending.remove(&upstream_id) else {
                    return;
                };
                let mut original = p.bytes;
                original[..2].copy_from_slice(&p.id.to_be_bytes());
                return self.reply(&p.member, p.client, wire::servfail(&original));
            };
            p.tried += 1;
            p.deadline = Instant::now() + upstream::TRY_FOR;
            let n = usize::from(random_u16()) % POOL;
            let bytes = p.bytes.clone();
            let sent = self
                .pool(server)
                .and_then(|pool| pool.get(n)?.send(&bytes).ok());
            if sent.is_some() {
                if let Some(p) = self.pending.get_mut(&upstream_id) {
                    p.socket = Some((server, n));
                }
                return;
            }
        }
    }

    /// The pool of sockets connected to `server`, made on first use; `None` if it cannot be made.
    fn pool(&mut self, server: SocketAddr) -> Option<&Vec<UdpSocket>> {
        if !self.upstreams.contains_key(&server) {
            let local: SocketAddr = match server.ip() {
                IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let mut pool = Vec::with_capacity(POOL);
            for n in 0..POOL {
                // Connected: the kernel drops datagrams from anyone but the server, and reports its refusals.
                let socket = UdpSocket::bind(local)
                    .and_then(|s| s.set_nonblocking(true).map(|()| s))
                    .and_then(|s| s.connect(server).map(|()| s))
                    .ok()?;
                self.watch(&socket, Source::Upstream(server, n)).ok()?;
                pool.push(socket);
            }
            self.upstreams.insert(server, pool);
        }
        self.upstreams.get(&server)
    }

    fn reply(&self, member: &str, client: SocketAddr, bytes: Option<Vec<u8>>) {
        if let (Some(l), Some(b)) = (self.listening.get(member), bytes) {
            let _ = l.udp.send_to(&b, client);
        }
    }

    /// Answers on pool socket `n` of `server`: each back to its asker with the asker's ID.
    fn upstream_answers(&mut self, server: SocketAddr, n: usize) {
        let mut buf = [0u8; 65535];
        loop {
            let Some(socket) = self.upstreams.get(&server).and_then(|pool| pool.get(n)) else {
                return;
            };
            let len = match socket.recv(&mut buf) {
                Ok(len) => len,
                // Refused (ICMP): the server is not there; whatever waits on it moves to the next one, now.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    let waiting: Vec<u16> = self
                        .pending
                        .iter()
                        .filter(|(_, p)| p.socket == Some((server, n)))
                        .map(|(id, _)| *id)
                        .collect();
                    for id in waiting {
                        self.send_next(id);
                    }
                    continue;
                }
                Err(_) => return,
            };
            if len < 12 {
                continue;
            }
            // Only the answer to a query sent from this very socket (a stray datagram is dropped).
            let id = u16::from_be_bytes([buf[0], buf[1]]);
            if self.pending.get(&id).and_then(|p| p.socket) != Some((server, n)) {
                continue;
            }
            let Some(p) = self.pending.remove(&id) else {
                continue;
            };
            buf[..2].copy_from_slice(&p.id.to_be_bytes());
            if let Some(l) = self.listening.get(&p.member) {
                let _ = l.udp.send_to(&buf[..len], p.client);
            }
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let late: Vec<u16> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            self.send_next(id);
        }
    }

    fn accept_tcp(&mut self, member: &str) {
        let Some(l) = self.listening.get(member) else {
            return;
        };
        while let Ok((conn, _)) = l.tcp.accept() {
            if self.tcp_open.load(Ordering::Relaxed) >= MAX_TCP {
                continue;
            }
            self.tcp_open.fetch_add(1, Ordering::Relaxed);
            let (names, open) = (Arc::clone(&self.names), Arc::clone(&self.tcp_open));
            let (member, host) = (member.to_string(), self.host_servers.clone());
            let spawned = std::thread::Builder::new()
                .name("dns-tcp".into())
                .spawn(move || {
                    let _ = serve_tcp(conn, &member, &names, &host);
                    open.fetch_sub(1, Ordering::Relaxed);
                });
            if spawned.is_err() {
                self.tcp_open.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// One TCP connection: length-prefixed queries, answered in turn; forwarded ones over TCP upstream.
fn serve_tcp(
    mut conn: TcpStream,
    member: &str,
    names: &Mutex<Names>,
    host: &[SocketAddr],
) -> io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(IDLE))?;
    loop {
        let Some(query) = read_framed(&mut conn)? else {
            return Ok(());
        };
        let reply = match wire::parse(&query) {
            Parsed::Drop => continue,
            Parsed::Reply(b) => Some(b),
            Parsed::Question(q) => match lock(names).lookup(member, &q.name, q.kind, host) {
                Answer::Forward(servers) => {
                    forward_tcp(&query, &servers).or_else(|| wire::servfail(&query))
                }
                other => wire::respond(&q, &other, usize::from(u16::MAX)),
            },
        };
        if let Some(b) = reply {
            write_framed(&mut conn, &b)?;
        }
    }
}

fn forward_tcp(query: &[u8], servers: &[SocketAddr]) -> Option<Vec<u8>> {
    servers.iter().find_map(|s| {
        let mut c = TcpStream::connect_timeout(s, upstream::TRY_FOR).ok()?;
        c.set_read_timeout(Some(upstream::TRY_FOR)).ok()?;
        write_framed(&mut c, query).ok()?;
        let answer = read_framed(&mut c).ok()??;
        let _ = c.shutdown(Shutdown::Both);
        Some(answer)
    })
}

fn read_framed(c: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match c.read_exact(&mut len) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    }
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    c.read_exact(&mut msg)?;
    Ok(Some(msg))
}

fn write_framed(c: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| io::Error::other("message over 64 KiB"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    c.write_all(&out)
}

/// The UDP socket and TCP listener the sandbox reaches as 127.0.0.11:53, made in the calling thread's
/// namespace: on 127.0.0.11 at a random port, which the `lo` program maps to 53 ([`dnsport`]), so port 53
/// stays free for the sandbox's own programs. Where that program cannot be had (no bpf), on port 53 itself.
/// IP_FREEBIND: a namespace whose `lo` is not up yet (a runtime's, before its loopback plugin ran) has no
/// 127.0.0.11 to bind to; the sockets receive once it is up.
fn bind_resolver() -> io::Result<(UdpSocket, TcpListener)> {
    let make = |kind: SockType, port: u16| -> io::Result<OwnedFd> {
        let fd = sock::socket(
            AddressFamily::Inet,
            kind,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        sock::setsockopt(&fd, sockopt::IpFreebind, &true)?;
        sock::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        sock::bind(
            fd.as_raw_fd(),
            &SockaddrIn::from(SocketAddrV4::new(RESOLVER_ADDR, port)),
        )?;
        Ok(fd)
    };
    let listen = |fd: OwnedFd| -> io::Result<TcpListener> {
        sock::listen(&fd, sock::Backlog::new(64).map_err(io::Error::from)?)?;
        Ok(TcpListener::from(fd))
    };
    // One port for both (the program maps both protocols to it): the TCP listener's, if UDP has it free.
    for _ in 0..8 {
        let tcp = listen(make(SockType::Stream, 0)?)?;
        let port = tcp.local_addr()?.port();
        let Ok(udp) = make(SockType::Datagram, port) else {
            continue;
        };
        let mapped = crate::kernel::Netlink::open()
            .map_err(|e| io::Error::other(e.to_string()))
            .and_then(|mut nl| {
                dnsport::redirect(&mut nl, port).map_err(|e| io::Error::other(e.to_string()))
            });
        if mapped.is_ok() {
            return Ok((UdpSocket::from(udp), tcp));
        }
        break;
    }
    let udp = UdpSocket::from(make(SockType::Datagram, 53)?);
    Ok((udp, listen(make(SockType::Stream, 53)?)?))
}

/// The process a namespace path goes through (`/proc/PID/ns/net`), if any.
fn process_of(netns: &Path) -> Option<i32> {
    let rest = netns.strip_prefix("/proc").ok()?;
    let mut parts = rest.components();
    let pid = parts.next()?.as_os_str().to_str()?.parse().ok()?;
    (parts.as_path() == Path::new("ns/net")).then_some(pid)
}

/// A pidfd for process `pid` (readable once it exits); `None` if it is gone already or the kernel has none.
fn pidfd(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor (or -1), nothing else.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: `fd` was just returned by the kernel, is open, and nothing else owns it.
    Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Two sockets per sandbox: a thousand sandboxes need more than the usual 1,024 descriptors.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// An unpredictable query ID for upstream (an off-path attacker must guess it to forge an answer).
fn random_u16() -> u16 {
    let mut b = [0u8; 2];
    // SAFETY: getrandom(2) writes at most `b.len()` bytes into `b`, which is valid for writes of that length.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 2 {
        // No entropy source: still unique among the pending ones (the caller checks), only guessable.
        let t = Instant::now().elapsed().subsec_nanos() ^ std::process::id();
        return u16::try_from(t & 0xffff).unwrap_or(0);
    }
    u16::from_ne_bytes(b)
}

fn lock(names: &Mutex<Names>) -> MutexGuard<'_, Names> {
    // A TCP thread that panicked mid-lookup leaves the table as it was (lookups only turn a counter).
    names
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
