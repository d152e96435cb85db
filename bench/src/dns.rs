//! `nsnet-bench dns`: nsnet's resolver beside Debian's aardvark-dns 1.4, in one throwaway host, with one
//! dnsmasq upstream for both (issue #18). Query rate and latency for a local and a forwarded name, the time
//! from `nsnet create` returning to its name answering, and the resolver's memory as names are added.
//!
//! Layout: a host namespace; a namespace of its own for dnsmasq (10.0.1.26, on a veth from the host); two nsnet
//! networks in the host, `names` (names on: nsnet's resolver on 127.0.0.11 in each sandbox) and `plain`
//! (`--dns=false`: aardvark-dns serves it on its gateway address, port 53, as netavark runs it). The load
//! generator is this process: UDP sockets opened inside a sandbox's namespace, queries built with
//! hickory-proto.

use std::fmt::Write as _;
use std::fs;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use hickory_proto::op::{Message, MessageType, OpCode, Query as Question};
use hickory_proto::rr::{Name, RData, RecordType};
use nsnet_core::netns;

use crate::overlay::{clock_ticks, cpu_ticks};
use crate::world::{Host, LAN_IP};
use crate::{f64_of, f64_of_i64, f64_of_u64, machine, median, quantile, sh};

const AARDVARK: &str = "/usr/lib/podman/aardvark-dns";
const DNSMASQ: &str = "/usr/sbin/dnsmasq";
/// What dnsmasq answers itself, for the forwarded rows.
const FORWARDED: &str = "www.example.test.";
const FORWARDED_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
/// Big enough for 1,000 sandboxes (a /20 holds 4,093), and below Linux's 1,024 ports per bridge.
const NAMES_SUBNET: &str = "10.91.0.0/20";
const PLAIN_SUBNET: &str = "10.93.0.0/20";
/// How long a query may go unanswered before it counts as lost (a resolver here answers in microseconds).
const LOST_AFTER: Duration = Duration::from_millis(500);
/// How long one try of the create-to-answer loop waits before asking again.
const RETRY_AFTER: Duration = Duration::from_millis(20);

pub struct Opts {
    /// Rounds of the four query cases, interleaved so a burst of other load on the machine hits every row.
    pub rounds: usize,
    /// Seconds per case per round, for each of the closed loop and the window.
    pub secs: f64,
    /// Queries in flight in the windowed (rate) measurement.
    pub window: usize,
    /// `nsnet create`s timed to their name answering.
    pub creates: usize,
    /// Names on the network at the end of the memory series.
    pub names: usize,
}

impl Opts {
    pub fn new(quick: bool) -> Opts {
        Opts {
            rounds: if quick { 2 } else { 5 },
            secs: if quick { 0.5 } else { 2.0 },
            window: 16,
            creates: 20,
            names: if quick { 250 } else { 1000 },
        }
    }
}

/// The throwaway world, and every process the run starts; all of it goes when this is dropped.
struct Bench {
    host: Host,
    nsnet: String,
    /// resolv.conf naming dnsmasq, and aardvark's config directory.
    work: PathBuf,
    aardvark_dir: PathBuf,
    upstream_ns: String,
    dnsmasq: Option<Child>,
    /// /etc/netns was there before the run (nsnet puts each sandbox's resolv.conf under it).
    etc_netns_existed: bool,
}

impl Bench {
    fn new() -> Result<Bench> {
        let host = Host::new("dn")?;
        let work = std::env::temp_dir().join(format!("{}-dns", host.prefix));
        let b = Bench {
            nsnet: std::env::var("NSNET").unwrap_or_else(|_| "target/release/nsnet".into()),
            aardvark_dir: work.join("aardvark"),
            upstream_ns: format!("{}-up", host.prefix),
            work,
            host,
            dnsmasq: None,
            etc_netns_existed: Path::new(netns::ETC_NETNS).exists(),
        };
        fs::create_dir_all(&b.aardvark_dir)?;
        fs::write(b.resolv_conf(), format!("nameserver {LAN_IP}\n"))?;
        Ok(b)
    }

    fn resolv_conf(&self) -> PathBuf {
        self.work.join("resolv.conf")
    }

    /// nsnet in the host namespace with this run's state dir and upstream; must succeed. Returns stdout.
    fn nsnet(&self, args: &[&str]) -> Result<String> {
        let out = self
            .host
            .cmd(&self.nsnet)
            .args(args)
            .env("NSNET_STATE_DIR", &self.host.state)
            .env("NSNET_RESOLV_CONF", self.resolv_conf())
            .stdin(Stdio::null())
            .output()
            .context("run nsnet (build it first: cargo build --release)")?;
        if !out.status.success() {
            bail!(
                "nsnet {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn inspect(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut full = args.to_vec();
        full.push("--json");
        serde_json::from_str(&self.nsnet(&full)?).context("nsnet's JSON")
    }

    /// A sandbox's address on its (first) network.
    fn address(&self, sandbox: &str) -> Result<Ipv4Addr> {
        let v = self.inspect(&["inspect", sandbox])?;
        v["endpoints"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("no address for {sandbox} in `nsnet inspect`"))
    }

    /// The upstream: dnsmasq in a namespace of its own, on a veth from the host, answering `*.example.test`.
    fn start_dnsmasq(&mut self) -> Result<()> {
        let (host, up) = (&self.host.name, &self.upstream_ns);
        crate::world::add_lan(host, up)?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{up}"))
            .args([
                "--",
                DNSMASQ,
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
            ])
            .args(["--bind-interfaces", &format!("--listen-address={LAN_IP}")])
            .arg(format!("--address=/example.test/{FORWARDED_ADDR}"))
            .args(["--pid-file=", "--user=root"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        dies_with_bench(&mut cmd);
        self.dnsmasq = Some(cmd.spawn().context("start dnsmasq")?);
        Ok(())
    }

    /// aardvark-dns as netavark 1.4 starts it: `--config DIR -p 53 run`, in the host's namespace; it forks,
    /// and its parent returns once the child serves.
    fn start_aardvark(&self) -> Result<()> {
        let out = self
            .host
            .cmd(AARDVARK)
            .arg("--config")
            .arg(&self.aardvark_dir)
            .args(["-p", "53", "run"])
            // What netavark passes on (podman's default log level).
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .context("run aardvark-dns (Debian's package: apt-get install aardvark-dns)")?;
        if !out.status.success() {
            bail!(
                "aardvark-dns: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn aardvark_pid(&self) -> Option<i32> {
        pid_in(&self.aardvark_dir.join("aardvark.pid"))
            .filter(|&pid| cmdline_has(pid, &self.aardvark_dir.to_string_lossy()))
    }

    fn resolver_pid(&self) -> Option<i32> {
        pid_in(&self.host.state.join("dns.pid")).filter(|&pid| {
            environ_has(
                pid,
                &format!("NSNET_RESOLVER={}", self.host.state.display()),
            )
        })
    }

    /// Write aardvark's file for network `plain` as netavark does (the gateway and the network's upstream on
    /// the first line, then `ID IPv4 IPv6 NAME[,ALIAS...]` per container) and tell aardvark (SIGHUP).
    fn write_aardvark(&self, gateway: Ipv4Addr, entries: &[(String, Ipv4Addr)]) -> Result<()> {
        let mut text = format!("{gateway} {LAN_IP}\n");
        for (i, (name, ip)) in entries.iter().enumerate() {
            let _ = writeln!(text, "{:064x} {ip}  {name}", i + 1);
        }
        // netavark writes in place under its lock; a rename keeps aardvark from reading half a file here.
        let tmp = self.aardvark_dir.join(".plain.tmp");
        fs::write(&tmp, text)?;
        fs::rename(&tmp, self.aardvark_dir.join("plain"))?;
        Ok(())
    }

    fn reload_aardvark(&self) -> Result<()> {
        let pid = self.aardvark_pid().context("aardvark-dns is not running")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGHUP,
        )?;
        Ok(())
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        // The resolver first: its sockets hold the sandboxes' namespaces.
        for pid in [self.resolver_pid(), self.aardvark_pid()]
            .into_iter()
            .flatten()
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Some(mut c) = self.dnsmasq.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let prefix = &self.host.prefix;
        let mine = |dir: &str| -> Vec<String> {
            fs::read_dir(dir)
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.starts_with(prefix.as_str()))
                        .collect()
                })
                .unwrap_or_default()
        };
        // Sandboxes without a process each (a thousand `ip netns del`s would take a while); the host's
        // namespace goes last, in Host's drop.
        for name in mine("/run/netns") {
            if name != self.host.name {
                let _ = netns::delete(&name);
            }
        }
        for name in mine(netns::ETC_NETNS) {
            let _ = fs::remove_dir_all(netns::etc_dir(&name));
        }
        if !self.etc_netns_existed {
            // Only if empty: someone else may have put something there meanwhile.
            let _ = fs::remove_dir(netns::ETC_NETNS);
        }
        let _ = fs::remove_dir_all(&self.work);
    }
}

/// Have dnsmasq killed if the bench dies first (nsenter execs it, so the signal stays with it).
fn dies_with_bench(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure runs in the forked child before exec and only makes one prctl call, which is
    // async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}

fn pid_in(file: &Path) -> Option<i32> {
    fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// Whether process `pid` runs with `needle` among its arguments (the pid file could be stale).
fn cmdline_has(pid: i32, needle: &str) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split(|&b| b == 0).any(|a| a == needle.as_bytes()))
        .unwrap_or(false)
}

fn environ_has(pid: i32, needle: &str) -> bool {
    fs::read(format!("/proc/{pid}/environ"))
        .map(|c| c.split(|&b| b == 0).any(|a| a == needle.as_bytes()))
        .unwrap_or(false)
}

/// VmRSS of `pid`, in KiB.
fn rss_kib(pid: i32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS for process {pid}"))
}

/// A UDP socket opened inside the namespace at `netns` (it stays there whichever thread uses it), connected
/// to `server`.
fn client(netns_path: &Path, server: SocketAddr) -> Result<UdpSocket> {
    let fd = netns::open(netns_path)?;
    let sock = netns::run_in(&fd, || -> std::io::Result<UdpSocket> {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.connect(server)?;
        Ok(s)
    })??;
    Ok(sock)
}

/// One question for A, encoded once; each send only changes the ID.
struct Query(Vec<u8>);

impl Query {
    fn new(name: &str) -> Result<Query> {
        let mut m = Message::new();
        m.set_id(0)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .add_query(Question::query(Name::from_ascii(name)?, RecordType::A));
        Ok(Query(m.to_vec()?))
    }

    fn with_id(&mut self, id: u16) -> &[u8] {
        self.0[..2].copy_from_slice(&id.to_be_bytes());
        &self.0
    }
}

/// What a reply's header says; enough for the load loops (the answers themselves are checked before, with
/// hickory-proto, in [`check`]).
#[derive(PartialEq, Eq)]
enum Reply {
    Answer,
    /// NOERROR without an answer, or an error code.
    NoAnswer,
}

fn header(bytes: &[u8]) -> Option<(u16, Reply)> {
    let [a, b, flags, rcode, _, _, an0, an1, ..] = *bytes else {
        return None;
    };
    if flags & 0x80 == 0 {
        return None;
    }
    let answered = rcode & 0x0f == 0 && u16::from_be_bytes([an0, an1]) > 0;
    Some((
        u16::from_be_bytes([a, b]),
        if answered {
            Reply::Answer
        } else {
            Reply::NoAnswer
        },
    ))
}

/// Ask `name` until the answer holds `expect` (a server just started may not listen yet).
fn check(sock: &UdpSocket, name: &str, expect: Ipv4Addr) -> Result<()> {
    let mut q = Query::new(name)?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = [0u8; 1500];
    let mut last = String::from("no answer");
    let end = Instant::now() + Duration::from_secs(5);
    let mut id = 1u16;
    while Instant::now() < end {
        id = id.wrapping_add(1);
        // A refused send (ICMP from a server not yet listening) is one more try.
        if sock.send(q.with_id(id)).is_err() {
            std::thread::sleep(RETRY_AFTER);
            continue;
        }
        let Ok(n) = sock.recv(&mut buf) else {
            std::thread::sleep(RETRY_AFTER);
            continue;
        };
        let Ok(m) = Message::from_vec(&buf[..n]) else {
            last = "an answer that does not parse".into();
            continue;
        };
        if m.id() != id {
            continue;
        }
        let got: Vec<Ipv4Addr> = m
            .answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect();
        if got.contains(&expect) {
            return Ok(());
        }
        last = format!("{} {got:?}", m.response_code());
        std::thread::sleep(RETRY_AFTER);
    }
    bail!("{name} never answered {expect} (last: {last})")
}

/// The queries of one case in one measurement: latencies (µs) of the answered ones.
#[derive(Default, Clone)]
struct Sample {
    lat_us: Vec<f64>,
    /// Answers without the address (an error code, or no answer record).
    empty: usize,
    lost: usize,
    /// Answered queries per second, one figure per round.
    qps: Vec<f64>,
    /// CPU seconds the server and the client spent, and the wall seconds they were measured over.
    server_cpu: f64,
    client_cpu: f64,
    wall: f64,
}

impl Sample {
    fn add(&mut self, other: Sample) {
        self.lat_us.extend(other.lat_us);
        self.empty += other.empty;
        self.lost += other.lost;
        self.qps.extend(other.qps);
        self.server_cpu += other.server_cpu;
        self.client_cpu += other.client_cpu;
        self.wall += other.wall;
    }
}

/// CPU seconds of the calling thread (the load generator), user and system.
fn thread_cpu() -> Result<f64> {
    use nix::sys::time::TimeValLike as _;
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_THREAD)?;
    Ok(f64_of_i64((u.user_time() + u.system_time()).num_microseconds()) / 1e6)
}

/// CPU seconds of process `pid` (every thread).
fn process_cpu(pid: u32) -> Result<f64> {
    Ok(f64_of_u64(cpu_ticks(pid)?.0) / f64_of_u64(clock_ticks()))
}

/// [`windowed`], with the CPU the server and the client spent on it.
fn windowed_cpu(
    sock: &UdpSocket,
    q: &mut Query,
    window: usize,
    secs: f64,
    server: u32,
) -> Result<Sample> {
    let (server0, client0, t) = (process_cpu(server)?, thread_cpu()?, Instant::now());
    let mut s = windowed(sock, q, window, secs)?;
    s.wall = t.elapsed().as_secs_f64();
    s.server_cpu = process_cpu(server)? - server0;
    s.client_cpu = thread_cpu()? - client0;
    Ok(s)
}

/// Closed loop: one query in flight, the next sent when its answer arrives. The latency row.
fn closed_loop(sock: &UdpSocket, q: &mut Query, secs: f64) -> Result<Sample> {
    sock.set_read_timeout(Some(LOST_AFTER))?;
    let mut s = Sample::default();
    let mut buf = [0u8; 1500];
    let start = Instant::now();
    let mut id: u16 = 0;
    while start.elapsed().as_secs_f64() < secs {
        id = id.wrapping_add(1);
        let t = Instant::now();
        if sock.send(q.with_id(id)).is_err() {
            s.lost += 1;
            std::thread::sleep(RETRY_AFTER);
            continue;
        }
        loop {
            match sock.recv(&mut buf) {
                Ok(n) => match header(&buf[..n]) {
                    Some((got, reply)) if got == id => {
                        s.lat_us.push(t.elapsed().as_secs_f64() * 1e6);
                        if reply == Reply::NoAnswer {
                            s.empty += 1;
                        }
                        break;
                    }
                    // A late answer to a query counted lost.
                    _ => {}
                },
                Err(_) => {
                    s.lost += 1;
                    break;
                }
            }
        }
    }
    s.qps
        .push(f64_of(s.lat_us.len()) / start.elapsed().as_secs_f64());
    Ok(s)
}

/// A fixed window: `window` queries in flight, a new one sent as each answer arrives, for `secs`. The rate
/// row (its latencies include the queueing the window causes).
fn windowed(sock: &UdpSocket, q: &mut Query, window: usize, secs: f64) -> Result<Sample> {
    sock.set_read_timeout(Some(Duration::from_millis(10)))?;
    let mut s = Sample::default();
    let mut buf = [0u8; 1500];
    // Send time by query ID.
    let mut sent: Vec<Option<Instant>> = vec![None; 1 << 16];
    let mut next: u16 = 0;
    let mut in_flight = 0usize;
    let send = |sent: &mut Vec<Option<Instant>>, next: &mut u16, q: &mut Query| {
        // Skip IDs still waiting (a lost query not yet expired).
        while sent[usize::from(*next)].is_some() {
            *next = next.wrapping_add(1);
        }
        sent[usize::from(*next)] = Some(Instant::now());
        // A failed send (an ICMP error pending on the socket) stays in the table: the sweep counts it lost.
        let _ = sock.send(q.with_id(*next));
        *next = next.wrapping_add(1);
    };
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    for _ in 0..window {
        send(&mut sent, &mut next, q);
        in_flight += 1;
    }
    let mut last_answer = start;
    let mut last_sweep = start;
    loop {
        let now = Instant::now();
        if let Ok(n) = sock.recv(&mut buf) {
            if let Some((id, reply)) = header(&buf[..n]) {
                if let Some(t) = sent[usize::from(id)].take() {
                    last_answer = Instant::now();
                    in_flight -= 1;
                    s.lat_us.push((last_answer - t).as_secs_f64() * 1e6);
                    if reply == Reply::NoAnswer {
                        s.empty += 1;
                    }
                    if last_answer < end {
                        send(&mut sent, &mut next, q);
                        in_flight += 1;
                    }
                }
            }
        }
        if now.duration_since(last_sweep) > Duration::from_millis(100) {
            last_sweep = now;
            for slot in sent.iter_mut() {
                if slot.is_some_and(|t| now.duration_since(t) > LOST_AFTER) {
                    *slot = None;
                    s.lost += 1;
                    in_flight -= 1;
                }
            }
            // Refill what the sweep took.
            while in_flight < window && now < end {
                send(&mut sent, &mut next, q);
                in_flight += 1;
            }
        }
        if in_flight == 0 || now > end + LOST_AFTER {
            s.lost += in_flight;
            break;
        }
    }
    s.qps
        .push(f64_of(s.lat_us.len()) / last_answer.duration_since(start).as_secs_f64());
    Ok(s)
}

/// Ask `name` from the client socket right away, again every [`RETRY_AFTER`] (or at once after an answer
/// without it), until it answers: the time from the call, and the queries it took.
fn until_answered(sock: &UdpSocket, q: &mut Query, id: &mut u16) -> Result<(f64, usize)> {
    sock.set_read_timeout(Some(RETRY_AFTER))?;
    let mut buf = [0u8; 1500];
    let start = Instant::now();
    let mut tries = 0;
    while start.elapsed() < Duration::from_secs(10) {
        *id = id.wrapping_add(1);
        tries += 1;
        if sock.send(q.with_id(*id)).is_err() {
            std::thread::sleep(RETRY_AFTER);
            continue;
        }
        let until = Instant::now() + RETRY_AFTER;
        while Instant::now() < until {
            match sock.recv(&mut buf) {
                Ok(n) => match header(&buf[..n]) {
                    Some((got, Reply::Answer)) if got == *id => {
                        return Ok((start.elapsed().as_secs_f64() * 1e3, tries));
                    }
                    Some((got, Reply::NoAnswer)) if got == *id => break,
                    _ => {}
                },
                // Timed out, or refused (a server restarting): ask again.
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    std::thread::sleep(RETRY_AFTER);
                    break;
                }
                Err(_) => break,
            }
        }
    }
    bail!("no answer within 10 s after {tries} queries")
}

/// One row of the query table: a resolver, a kind of name, and where the load generator asks from.
struct Case {
    resolver: &'static str,
    kind: &'static str,
    sock: UdpSocket,
    query: Query,
    /// The resolver's process, for its CPU time.
    server: u32,
    closed: Sample,
    window: Sample,
}

pub fn run(o: &Opts) -> Result<String> {
    if !Path::new(AARDVARK).exists() {
        bail!("{AARDVARK} is missing: apt-get install aardvark-dns (Debian's, 1.4)");
    }
    let aardvark_version = sh(&[AARDVARK, "--version"]).unwrap_or_default();
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut b = Bench::new()?;
    b.start_dnsmasq()?;
    b.nsnet(&["network", "create", "names", "--subnet", NAMES_SUBNET])?;
    b.nsnet(&[
        "network",
        "create",
        "plain",
        "--subnet",
        PLAIN_SUBNET,
        "--dns=false",
    ])?;
    let plain = b.inspect(&["network", "inspect", "plain"])?;
    let gateway: Ipv4Addr = plain
        .get("gateway")
        .or_else(|| plain.get("settings").and_then(|s| s.get("gateway")))
        .and_then(|g| g.as_str())
        .and_then(|g| g.parse().ok())
        .context("no gateway in `nsnet network inspect plain`")?;
    // Two sandboxes per resolver: the asker and the one asked for.
    let sb = |tag: &str| format!("{}-{tag}", b.host.prefix);
    let (s0, s1, a0, a1) = (sb("s0"), sb("s1"), sb("a0"), sb("a1"));
    for (name, net) in [
        (&s0, "names"),
        (&s1, "names"),
        (&a0, "plain"),
        (&a1, "plain"),
    ] {
        b.nsnet(&["create", name, "--network", net])?;
    }
    let (s1_ip, a0_ip, a1_ip) = (b.address(&s1)?, b.address(&a0)?, b.address(&a1)?);
    let base = vec![(a0.clone(), a0_ip), (a1.clone(), a1_ip)];
    b.write_aardvark(gateway, &base)?;
    b.start_aardvark()?;
    let nsnet_at = SocketAddr::new(IpAddr::V4(nsnet_core::dns::RESOLVER_ADDR), 53);
    let aardvark_at = SocketAddr::new(IpAddr::V4(gateway), 53);
    let (s0_path, a0_path) = (netns::named_path(&s0), netns::named_path(&a0));
    let mut cases = Vec::new();
    let pid = |p: Option<i32>, who: &str| -> Result<u32> {
        p.and_then(|p| u32::try_from(p).ok())
            .with_context(|| format!("{who} is not running"))
    };
    let (nsnet_pid, aardvark_pid) = (
        pid(b.resolver_pid(), "nsnet's resolver")?,
        pid(b.aardvark_pid(), "aardvark-dns")?,
    );
    for (resolver, path, at, local, local_ip, server) in [
        ("nsnet", &s0_path, nsnet_at, &s1, s1_ip, nsnet_pid),
        (
            "aardvark-dns",
            &a0_path,
            aardvark_at,
            &a1,
            a1_ip,
            aardvark_pid,
        ),
    ] {
        for (kind, name, expect) in [
            ("local", format!("{local}."), local_ip),
            ("forwarded", FORWARDED.to_string(), FORWARDED_ADDR),
        ] {
            let sock = client(path, at)?;
            check(&sock, &name, expect)
                .with_context(|| format!("{resolver}, {kind} name, before the run"))?;
            cases.push(Case {
                resolver,
                kind,
                sock,
                query: Query::new(&name)?,
                server,
                closed: Sample::default(),
                window: Sample::default(),
            });
        }
    }

    for round in 0..o.rounds {
        eprintln!("dns: queries, round {} of {} ...", round + 1, o.rounds);
        for c in &mut cases {
            c.closed.add(closed_loop(&c.sock, &mut c.query, o.secs)?);
            c.window.add(windowed_cpu(
                &c.sock,
                &mut c.query,
                o.window,
                o.secs,
                c.server,
            )?);
        }
    }
    let rss_after_load = (
        b.resolver_pid().map(rss_kib).transpose()?,
        b.aardvark_pid().map(rss_kib).transpose()?,
    );

    // Create, then ask at once from another sandbox.
    eprintln!("dns: create to answer ...");
    let ask = client(&s0_path, nsnet_at)?;
    let mut id = 0u16;
    let mut nsnet_ready = Vec::new();
    let mut created = 2usize;
    let mut create_ms = Vec::new();
    for i in 0..o.creates {
        let name = sb(&format!("c{i}"));
        let mut q = Query::new(&format!("{name}."))?;
        let t = Instant::now();
        b.nsnet(&["create", &name, "--network", "names"])?;
        create_ms.push(t.elapsed().as_secs_f64() * 1e3);
        nsnet_ready.push(until_answered(&ask, &mut q, &mut id)?);
        created += 1;
    }
    // aardvark's equivalent: netavark appends the line and sends SIGHUP.
    let ask = client(&a0_path, aardvark_at)?;
    let mut aardvark_ready = Vec::new();
    let mut entries = base.clone();
    for i in 0..o.creates {
        let name = sb(&format!("c{i}"));
        let mut q = Query::new(&format!("{name}."))?;
        entries.push((name, fake_address(entries.len())?));
        b.write_aardvark(gateway, &entries)?;
        b.reload_aardvark()?;
        aardvark_ready.push(until_answered(&ask, &mut q, &mut id)?);
    }

    // Memory: the resolver's VmRSS as the network fills up; aardvark's with as many entries.
    let mut marks: Vec<usize> = [created, 100, 250, 500, 1000]
        .into_iter()
        .filter(|&n| n >= created && n < o.names)
        .collect();
    marks.push(o.names.max(created));
    marks.dedup();
    let mut rss_rows = Vec::new();
    let mut next_ms: Vec<f64> = Vec::new();
    for &mark in &marks {
        eprintln!("dns: {mark} names ...");
        while created < mark {
            let name = sb(&format!("n{created}"));
            let t = Instant::now();
            b.nsnet(&["create", &name, "--network", "names"])?;
            next_ms.push(t.elapsed().as_secs_f64() * 1e3);
            created += 1;
        }
        // The newest name answers, so the resolver holds them all.
        let newest = if created > 2 + o.creates {
            sb(&format!("n{}", created - 1))
        } else {
            s1.clone()
        };
        let mut q = Query::new(&format!("{newest}."))?;
        until_answered(&client(&s0_path, nsnet_at)?, &mut q, &mut id)?;
        let nsnet_rss = rss_kib(b.resolver_pid().context("the resolver is not running")?)?;
        while entries.len() < mark {
            let name = sb(&format!("n{}", entries.len()));
            entries.push((name, fake_address(entries.len())?));
        }
        b.write_aardvark(gateway, &entries)?;
        b.reload_aardvark()?;
        let last = entries.last().map(|e| e.0.clone()).unwrap_or_default();
        let mut q = Query::new(&format!("{last}."))?;
        until_answered(&client(&a0_path, aardvark_at)?, &mut q, &mut id)?;
        let aardvark_rss = rss_kib(b.aardvark_pid().context("aardvark-dns is not running")?)?;
        rss_rows.push((
            mark,
            nsnet_rss,
            aardvark_rss,
            median(std::mem::take(&mut next_ms)),
        ));
    }
    // The local name once more, with the network full.
    let mut full = Vec::new();
    for c in cases.iter_mut().filter(|c| c.kind == "local") {
        full.push((c.resolver, closed_loop(&c.sock, &mut c.query, o.secs)?));
    }
    let resolver_alive = b.resolver_pid().is_some();
    drop(b);

    Ok(report(&Report {
        o,
        machine: machine(),
        load: load
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        aardvark_version: aardvark_version.trim().to_string(),
        cases: &cases,
        rss_after_load,
        nsnet_ready: &nsnet_ready,
        aardvark_ready: &aardvark_ready,
        create_ms: &create_ms,
        rss_rows: &rss_rows,
        full: &full,
        resolver_alive,
    }))
}

/// An address on `plain` for aardvark's entry `i` beyond the real sandboxes: 10.93.(8+).x, clear of the
/// ones nsnet hands out from the start of the subnet.
fn fake_address(i: usize) -> Result<Ipv4Addr> {
    let base = u32::from(Ipv4Addr::new(10, 93, 8, 0));
    let i = u32::try_from(i).context("too many entries")?;
    if i >= 2048 {
        bail!("at most 2048 aardvark entries");
    }
    Ok(Ipv4Addr::from(base + i))
}

struct Report<'a> {
    o: &'a Opts,
    machine: String,
    load: String,
    aardvark_version: String,
    cases: &'a [Case],
    rss_after_load: (Option<u64>, Option<u64>),
    nsnet_ready: &'a [(f64, usize)],
    aardvark_ready: &'a [(f64, usize)],
    create_ms: &'a [f64],
    /// Names, nsnet resolver KiB, aardvark KiB, median ms per `nsnet create` to reach them.
    rss_rows: &'a [(usize, u64, u64, f64)],
    full: &'a [(&'static str, Sample)],
    resolver_alive: bool,
}

fn mib(kib: u64) -> f64 {
    crate::f64_of_u64(kib) / 1024.0
}

fn report(r: &Report) -> String {
    let o = r.o;
    let mut s = String::new();
    let _ = writeln!(s, "# Names: nsnet's resolver and aardvark-dns\n");
    let _ = writeln!(
        s,
        "Machine: {}. Load average at the start: {}. {}.\n",
        r.machine, r.load, r.aardvark_version
    );
    let _ = writeln!(
        s,
        "`nsnet-bench dns`: {} rounds; per round and case, {} s of closed-loop queries (one in flight: the \
         latency columns) and {} s with a window of {} in flight (the rate column). One UDP client in a \
         sandbox's namespace; every server and the client share the machine's CPUs. Upstream: one dnsmasq \
         for both.\n",
        o.rounds, o.secs, o.secs, o.window
    );
    let _ = writeln!(
        s,
        "| resolver | name | p50 | p99 | queries/s (window {}), median of rounds (min–max) | vs aardvark-dns | lost / empty |",
        o.window
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|");
    for c in r.cases {
        let qps = median(c.window.qps.clone());
        let peer = r
            .cases
            .iter()
            .find(|p| p.resolver == "aardvark-dns" && p.kind == c.kind)
            .map(|p| median(p.window.qps.clone()))
            .unwrap_or(f64::NAN);
        let (lo, hi) = (quantile(&c.window.qps, 0.0), quantile(&c.window.qps, 1.0));
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} µs | {:.0} µs | {:.0} ({:.0}–{:.0}) | {:.2}x | {} / {} |",
            c.resolver,
            c.kind,
            quantile(&c.closed.lat_us, 0.5),
            quantile(&c.closed.lat_us, 0.99),
            qps,
            lo,
            hi,
            qps / peer,
            c.closed.lost + c.window.lost,
            c.closed.empty + c.window.empty,
        );
    }
    let _ = writeln!(
        s,
        "\nWith the window full, latency (queueing included): {}.\n",
        r.cases
            .iter()
            .map(|c| format!(
                "{} {} p50 {:.0} µs, p99 {:.0} µs",
                c.resolver,
                c.kind,
                quantile(&c.window.lat_us, 0.5),
                quantile(&c.window.lat_us, 0.99)
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );

    let _ = writeln!(
        s,
        "CPU during the window runs (all rounds; the server's from /proc, every thread; the client's from \
         getrusage of its thread):\n"
    );
    let _ = writeln!(
        s,
        "| resolver | name | server, % of one core | client, % of one core | server CPU per answer |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|");
    for c in r.cases {
        let w = &c.window;
        let _ = writeln!(
            s,
            "| {} | {} | {:.0}% | {:.0}% | {:.1} µs |",
            c.resolver,
            c.kind,
            100.0 * w.server_cpu / w.wall,
            100.0 * w.client_cpu / w.wall,
            1e6 * w.server_cpu / f64_of(w.lat_us.len())
        );
    }
    let _ = writeln!(s);

    let ready = |v: &[(f64, usize)]| {
        let ms: Vec<f64> = v.iter().map(|x| x.0).collect();
        let tries: Vec<f64> = v.iter().map(|x| f64_of(x.1)).collect();
        let first = v.iter().filter(|x| x.1 == 1).count();
        format!(
            "{:.2} ms | {:.2} ms | {first} of {} | {:.0}",
            median(ms.clone()),
            quantile(&ms, 0.99),
            v.len(),
            quantile(&tries, 1.0)
        )
    };
    let _ = writeln!(
        s,
        "### From the change to the name answering ({} times each; asked at once, again every {} ms or at once after an answer without it)\n",
        o.creates,
        RETRY_AFTER.as_millis()
    );
    let _ = writeln!(
        s,
        "| resolver | change | median | p99 | answered by the first query | most queries |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|");
    let _ = writeln!(
        s,
        "| nsnet | from `nsnet create` returning (create took {:.1} ms median) | {} |",
        median(r.create_ms.to_vec()),
        ready(r.nsnet_ready)
    );
    let _ = writeln!(
        s,
        "| aardvark-dns | from the SIGHUP after the entry is written (as netavark does) | {} |",
        ready(r.aardvark_ready)
    );

    let _ = writeln!(s, "\n### Memory (VmRSS) as names are added\n");
    let _ = writeln!(
        s,
        "| names | nsnet resolver | aardvark-dns (same number of entries) | `nsnet create` to get there, median |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|");
    if let (Some(n), Some(a)) = r.rss_after_load {
        let _ = writeln!(
            s,
            "| 2, after the query runs | {:.1} MiB | {:.1} MiB | |",
            mib(n),
            mib(a)
        );
    }
    for &(names, n, a, ms) in r.rss_rows {
        let _ = writeln!(
            s,
            "| {names} | {:.1} MiB | {:.1} MiB | {} |",
            mib(n),
            mib(a),
            if ms.is_nan() {
                String::new()
            } else {
                format!("{ms:.1} ms")
            }
        );
    }
    let _ = writeln!(
        s,
        "\nLocal name with the network full ({} names), closed loop: {}. Resolver still running at the end: {}.",
        r.rss_rows.last().map(|x| x.0).unwrap_or(0),
        r.full
            .iter()
            .map(|(who, x)| format!(
                "{who} p50 {:.0} µs, p99 {:.0} µs",
                quantile(&x.lat_us, 0.5),
                quantile(&x.lat_us, 0.99)
            ))
            .collect::<Vec<_>>()
            .join("; "),
        if r.resolver_alive { "yes" } else { "no" }
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::{rdata::A, Record};

    #[test]
    fn the_reply_header_gives_the_id_and_whether_it_answered() -> Result<()> {
        let mut q = Query::new("db.")?;
        // A query is not a reply.
        assert!(header(q.with_id(7)).is_none());
        let mut m = Message::from_vec(q.with_id(7))?;
        m.set_message_type(MessageType::Response);
        let empty = m.to_vec()?;
        let name = Name::from_ascii("db.")?;
        m.add_answer(Record::from_rdata(name, 0, RData::A(A::new(10, 91, 0, 3))));
        let full = m.to_vec()?;
        assert!(header(&full) == Some((7, Reply::Answer)));
        assert!(header(&empty) == Some((7, Reply::NoAnswer)));
        assert!(header(&full[..5]).is_none());
        Ok(())
    }

    #[test]
    fn fake_entries_stay_clear_of_the_sandboxes_addresses() -> Result<()> {
        assert_eq!(fake_address(0)?, Ipv4Addr::new(10, 93, 8, 0));
        assert_eq!(fake_address(1000)?, Ipv4Addr::new(10, 93, 11, 232));
        assert!(fake_address(2048).is_err());
        Ok(())
    }
}
