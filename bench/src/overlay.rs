//! `overlay`: overlay networks across hosts (`nsnet agent`). Every host is a namespace on one underlay bridge,
//! with a real etcd in a namespace of its own. Three parts:
//!
//! - the data path between two hosts, sandbox to sandbox: nsnet's vxlan and host-gw networks, each against the
//!   same thing built by hand between two other host namespaces on the same underlay (a VXLAN device with
//!   static FDB, neighbour and onlink route; plain routes via the underlay), the underlay itself, and nsnet
//!   again on hosts whose agents run with `--firewall none` (the firewall's share of the difference);
//! - convergence at 3 and at 50 hosts: the last host joins (its agent starts) and leaves (its etcd lease is
//!   revoked), again and again; the time until every other host has, and then no longer has, its route to
//!   the host's block, seen by a netlink route monitor in each host;
//! - what the agents cost at 50 hosts, idle: CPU, memory, etcd traffic, kernel objects per host.
//!
//! Everything it makes (namespaces, etcd, agents, temp dirs) is removed again, also on an error.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use ipnet::Ipv4Net;
use nix::sys::socket::{
    bind, recv, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use nix::sys::time::{TimeVal, TimeValLike as _};
use nsnet_core::etcd::{Change, Etcd, WatchEvent, WatchStopper};
use nsnet_core::kernel::{netns, Netlink, NSNET_ROUTE_PROTOCOL};

use crate::{f64_of, f64_of_u64, machine, median, quantile, sh};

/// The overlay network every part uses, and its cluster subnet.
const NET: &str = "pods";
const CLUSTER: &str = "10.244.0.0/16";
/// The host-gw network of the data path.
const GW_NET: &str = "gw";
const GW_CLUSTER: &str = "10.245.0.0/16";
/// Agents renew every TTL/3 = 1 s; a lost host's block goes after 5 s.
const LEASE_TTL: &str = "5";
const ETCD_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 2);
/// The VXLAN MTU: the underlay's 1500 less 50, as nsnet sets it.
const VXLAN_MTU: &str = "1450";

/// What `nsnet-bench overlay` runs.
pub struct Opts {
    /// iperf3 seconds per run, and runs per path (interleaved).
    pub secs: u32,
    pub reps: usize,
    /// Rounds of 200 pings per path (interleaved).
    pub ping_rounds: usize,
    /// Cluster sizes for convergence; the largest also gets the cost measurement.
    pub hosts: Vec<usize>,
    /// Join + leave cycles per size.
    pub cycles: usize,
    /// Seconds over which the idle agents' cost is measured.
    pub window: u64,
}

impl Opts {
    pub fn new(quick: bool) -> Opts {
        if quick {
            Opts {
                secs: 2,
                reps: 3,
                ping_rounds: 1,
                hosts: vec![3, 50],
                cycles: 4,
                window: 10,
            }
        } else {
            Opts {
                secs: 4,
                reps: 10,
                ping_rounds: 2,
                hosts: vec![3, 50],
                cycles: 12,
                window: 30,
            }
        }
    }
}

fn nsnet_bin() -> String {
    std::env::var("NSNET").unwrap_or_else(|_| "target/release/nsnet".into())
}

/// A command run inside the named namespace `ns` (nsenter execs it: the child's pid is the program's).
fn in_ns(ns: &str, program: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(program)
        .stdin(Stdio::null());
    c
}

/// Have `cmd`'s process killed when the bench's thread that started it ends (an interrupted run leaves no
/// etcd or agent behind; the kernel keeps the signal across nsenter's exec).
fn dies_with_bench(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure runs in the forked child before exec and only makes one prctl call, which is
    // async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        })
    }
}

/// Run `args` in namespace `ns`; it must succeed. Returns stdout.
fn run_in_ns(ns: &str, args: &[&str]) -> Result<String> {
    let out = in_ns(ns, args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("run {args:?} in {ns}"))?;
    if !out.status.success() {
        bail!(
            "{args:?} in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The last `n` lines of a file, for an error message.
fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A throwaway cluster: an underlay bridge namespace, etcd in a namespace of its own, and hosts 1..=N, each a
/// namespace with `eth0` on the underlay (192.168.200.(10+i)/24) and a state dir. Dropping it kills the
/// agents and etcd and removes every namespace and the temp dir.
struct Cluster {
    prefix: String,
    dir: PathBuf,
    n: usize,
    /// Namespaces made so far, in order (removed in reverse).
    made: Vec<String>,
    etcd: Option<Child>,
    agents: Vec<Option<Child>>,
    client: Etcd,
}

impl Cluster {
    fn new(tag: &str, n: usize) -> Result<Cluster> {
        if !(1..=200).contains(&n) {
            bail!("a cluster has 1 to 200 hosts, not {n}");
        }
        let prefix = format!("nsb{}ov{tag}", std::process::id());
        let dir = std::env::temp_dir().join(format!("nsnet-bench-{prefix}"));
        let url = format!("http://{ETCD_IP}:2379");
        let mut c = Cluster {
            prefix,
            dir,
            n,
            made: Vec::new(),
            etcd: None,
            agents: (0..n).map(|_| None).collect(),
            client: Etcd::new(&[url])?,
        };
        fs::create_dir_all(&c.dir)?;
        let ul = c.add_ns("ul")?;
        sh(&["ip", "-n", &ul, "link", "add", "ul0", "type", "bridge"])?;
        sh(&["ip", "-n", &ul, "link", "set", "ul0", "up"])?;
        for i in 1..=n {
            let ns = c.add_ns(&format!("h{i}"))?;
            c.plug(&ns, &format!("h{i}"), c.ip(i)?)?;
            fs::create_dir_all(c.state(i))?;
        }
        let etcd = c.add_ns("etcd")?;
        c.plug(&etcd, "etcd", ETCD_IP)?;
        c.start_etcd()?;
        Ok(c)
    }

    /// Add namespace `<prefix>-<what>` with `lo` up and IPv6 off (before any link is in it).
    fn add_ns(&mut self, what: &str) -> Result<String> {
        let name = format!("{}-{what}", self.prefix);
        sh(&["ip", "netns", "add", &name])?;
        self.made.push(name.clone());
        for key in [
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ] {
            run_in_ns(&name, &["sysctl", "-qw", key])?;
        }
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"])?;
        Ok(name)
    }

    /// Connect `ns` to the underlay: its `eth0` with `ip`, the peer `port` on ul0.
    fn plug(&self, ns: &str, port: &str, ip: Ipv4Addr) -> Result<()> {
        let ul = self.ns("ul");
        sh(&[
            "ip", "-n", &ul, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns",
            ns,
        ])?;
        sh(&["ip", "-n", &ul, "link", "set", port, "master", "ul0", "up"])?;
        sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ])?;
        sh(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
        Ok(())
    }

    fn ns(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }

    fn host(&self, i: usize) -> String {
        self.ns(&format!("h{i}"))
    }

    fn ip(&self, i: usize) -> Result<Ipv4Addr> {
        let last = u8::try_from(10 + i).context("at most 245 hosts")?;
        Ok(Ipv4Addr::new(192, 168, 200, last))
    }

    fn state(&self, i: usize) -> PathBuf {
        self.dir.join(format!("host{i}"))
    }

    fn url(&self) -> String {
        format!("http://{ETCD_IP}:2379")
    }

    fn log(&self, what: &str) -> PathBuf {
        self.dir.join(format!("{what}.log"))
    }

    /// The etcd namespace, opened (the bench's own etcd calls are made from inside it).
    fn etcd_fd(&self) -> Result<OwnedFd> {
        Ok(netns::open(&netns::named_path(&self.ns("etcd")))?)
    }

    /// Run `f` with the bench's etcd client, from inside etcd's namespace.
    fn with_etcd<T: Send>(&self, f: impl FnOnce(&Etcd) -> T + Send) -> Result<T> {
        let fd = self.etcd_fd()?;
        Ok(netns::run_in(&fd, || f(&self.client))?)
    }

    fn start_etcd(&mut self) -> Result<()> {
        let url = self.url();
        let peer = "http://127.0.0.1:2380";
        let args = [
            "--name=bench".to_string(),
            format!("--data-dir={}", self.dir.join("etcd-data").display()),
            format!("--listen-client-urls={url}"),
            format!("--advertise-client-urls={url}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=bench={peer}"),
            "--initial-cluster-state=new".into(),
            // One member: a short election timeout is a fast start.
            "--heartbeat-interval=20".into(),
            "--election-timeout=200".into(),
            "--logger=zap".into(),
            "--log-outputs=stderr".into(),
        ];
        let log = File::create(self.log("etcd"))?;
        let child = dies_with_bench(&mut in_ns(&self.ns("etcd"), "/usr/bin/etcd"))
            .args(&args)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("run /usr/bin/etcd (apt-get install etcd-server)")?;
        self.etcd = Some(child);
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if self.with_etcd(|e| e.get_prefix("/nsnet/").is_ok())? {
                return Ok(());
            }
            if Instant::now() > end {
                bail!(
                    "etcd did not answer within 20 s:\n{}",
                    tail(&self.log("etcd"), 20)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Run nsnet in host `i` with its state dir; it must succeed. Returns stdout.
    fn nsnet(&self, i: usize, args: &[&str]) -> Result<String> {
        let out = in_ns(&self.host(i), &nsnet_bin())
            .args(args)
            .env("NSNET_STATE_DIR", self.state(i))
            .output()
            .context("run nsnet (build it first: cargo build --release)")?;
        if !out.status.success() {
            bail!(
                "nsnet {args:?} on host {i}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Start `nsnet agent` in host `i` (with `--firewall` when given); its output goes to `agent<i>.log`.
    fn start_agent(&mut self, i: usize, firewall: Option<&str>) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(&format!("agent{i}")))?;
        let url = self.url();
        let child = dies_with_bench(&mut in_ns(&self.host(i), &nsnet_bin()))
            .args([
                "agent",
                "--etcd",
                &url,
                "--iface",
                "eth0",
                "--lease-ttl",
                LEASE_TTL,
            ])
            .env("NSNET_STATE_DIR", self.state(i))
            .env("NSNET_FIREWALL", firewall.unwrap_or("nftables"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("run nsnet agent")?;
        self.agents[i - 1] = Some(child);
        Ok(())
    }

    /// SIGKILL host `i`'s agent and reap it.
    fn kill_agent(&mut self, i: usize) -> Result<()> {
        if let Some(mut child) = self.agents[i - 1].take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    fn agent_pid(&self, i: usize) -> Option<u32> {
        self.agents[i - 1].as_ref().map(Child::id)
    }

    /// CPU of the agents on `hosts` so far (their threads, and the processes they ran), in clock ticks.
    fn agents_ticks(&self, hosts: &[usize]) -> Result<u64> {
        let mut sum = 0;
        for &i in hosts {
            let pid = self.agent_pid(i).context("no agent")?;
            let (own, children) = cpu_ticks(pid)?;
            sum += own + children;
        }
        Ok(sum)
    }

    /// Host `i`'s nsnet routes (protocol 110), by destination.
    fn routes(&self, i: usize) -> Result<Vec<Ipv4Net>> {
        let mut nl: Netlink = netns::netlink_in(&netns::named_path(&self.host(i)))?;
        Ok(nl
            .routes_with_protocol(NSNET_ROUTE_PROTOCOL)?
            .into_iter()
            .map(|r| r.dst)
            .collect())
    }

    /// Wait until each of `hosts` has `want` nsnet routes; how long that took.
    fn wait_routes(&self, hosts: &[usize], want: usize, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        let mut pending: Vec<usize> = hosts.to_vec();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for &i in &pending {
                if self.routes(i)?.len() != want {
                    still.push(i);
                }
            }
            pending = still;
            if let Some(&i) = pending.first() {
                if start.elapsed() > timeout {
                    bail!(
                        "{} host(s) did not reach {want} routes within {timeout:?} (host {i} has {}); its agent:\n{}",
                        pending.len(),
                        self.routes(i)?.len(),
                        tail(&self.log(&format!("agent{i}")), 30)
                    );
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(start.elapsed())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Agents first (they hold etcd connections and links), then etcd; all are our own children.
        for child in self.agents.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(child) = self.etcd.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Sandboxes nsnet made carry the prefix too; then ours, in reverse (the underlay last).
        let ours: Vec<String> = fs::read_dir("/run/netns")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&format!("{}-", self.prefix)))
                    .filter(|n| !self.made.contains(n))
                    .collect()
            })
            .unwrap_or_default();
        for name in ours.iter().chain(self.made.iter().rev()) {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------------------
// The data path

/// Throughput in Gbit/s from namespace `client` to `server` (listening on `ip`), over `secs`. On two or more
/// CPUs the client runs on CPU 0 and the server on CPU 1, every run alike.
pub(crate) fn iperf(server: &str, client: &str, ip: &str, secs: u32, pin: bool) -> Result<f64> {
    Ok(iperf_run(server, client, ip, secs, pin)?.0)
}

/// [`iperf`], with the sender's retransmitted segments: on veths nothing is lost, so they count the
/// spurious ones (segments reordered between the two CPUs' backlogs), which move the throughput a lot.
pub(crate) fn iperf_run(
    server: &str,
    client: &str,
    ip: &str,
    secs: u32,
    pin: bool,
) -> Result<(f64, u64)> {
    let (scpu, ccpu) = if pin { ("1", "0") } else { ("0-63", "0-63") };
    let mut srv = in_ns(server, "taskset")
        .args(["-c", scpu, "iperf3", "-s", "-1", "-p", "5299"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("run iperf3 (apt-get install iperf3)")?;
    // The client retries until the server listens (nsenter, taskset and iperf3 start in a few ms, but not
    // always in the same few).
    let end = Instant::now() + Duration::from_secs(5);
    let out = loop {
        thread::sleep(Duration::from_millis(100));
        let out = in_ns(client, "taskset")
            .args(["-c", ccpu, "iperf3", "-c", ip, "-p", "5299", "-J", "-t"])
            .arg(secs.to_string())
            .output();
        let refused = out
            .as_ref()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("Connection refused"));
        if !refused || Instant::now() > end || srv.try_wait()?.is_some() {
            break out;
        }
    };
    // The one-off server ends with its client; if the client never came, it is stopped here.
    let end = Instant::now() + Duration::from_secs(3);
    while srv.try_wait()?.is_none() && Instant::now() < end {
        thread::sleep(Duration::from_millis(20));
    }
    if srv.try_wait()?.is_none() {
        let _ = srv.kill();
        let _ = srv.wait();
    }
    let out = out?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 -J")?;
    let retransmits = json["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    match json["end"]["sum_received"]["bits_per_second"].as_f64() {
        Some(bps) => Ok((bps / 1e9, retransmits)),
        None => bail!("iperf3 {client} -> {ip}: {}", json["error"]),
    }
}

/// Round trips in µs of `count` pings 10 ms apart, and how many got no answer.
fn pings(client: &str, ip: &str, count: usize) -> Result<(Vec<f64>, usize)> {
    let out = in_ns(client, "ping")
        .args(["-c", &count.to_string(), "-i", "0.01", "-W", "1", ip])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // 64 bytes from 10.244.1.2: icmp_seq=1 ttl=62 time=0.270 ms
    let rtts: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .map(|ms| ms * 1000.0)
        .collect();
    let lost = count.saturating_sub(rtts.len());
    Ok((rtts, lost))
}

/// Wait until `client` gets an answer from `ip` (ARP and the first route lookups done), up to 10 s.
fn reachable(client: &str, ip: &str) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = in_ns(client, "ping")
            .args(["-c", "1", "-W", "1", ip])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?
            .success();
        if ok {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("{client} cannot reach {ip}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The hand-built floors on host `i` (peer `j`): a bridge with one veth sandbox behind a VXLAN device (VNI 42,
/// port 4789, no learning, no outer UDP checksum, MTU 1450; static FDB, permanent neighbour and an onlink route to the peer's
/// 10.246.j.0/24, as nsnet programs a peer), and a second bridge and sandbox routed via the peer's underlay
/// address (10.247.j.0/24). No firewall, no conntrack, no bpf.
fn floor_host(c: &mut Cluster, i: usize, j: usize) -> Result<()> {
    let h = c.host(i);
    let (ip_j, oi, oj) = (
        c.ip(j)?,
        u8::try_from(i).context("host")?,
        u8::try_from(j).context("host")?,
    );
    let ipr = |args: &[&str]| -> Result<String> {
        let mut all = vec!["ip", "-n", h.as_str()];
        all.extend_from_slice(args);
        sh(&all)
    };
    run_in_ns(&h, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    let mac = |o: u8| format!("0e:42:00:00:00:{o:02x}");
    ipr(&[
        "link",
        "add",
        "vx42",
        "type",
        "vxlan",
        "id",
        "42",
        "dstport",
        "4789",
        "nolearning",
    ])?;
    ipr(&[
        "link",
        "set",
        "vx42",
        "address",
        &mac(oi),
        "mtu",
        VXLAN_MTU,
        "up",
    ])?;
    let sandbox = |c: &mut Cluster,
                   what: &str,
                   bridge: &str,
                   port: &str,
                   mtu: &str,
                   net: &str|
     -> Result<()> {
        ipr(&["link", "add", bridge, "mtu", mtu, "type", "bridge"])?;
        ipr(&["addr", "add", &format!("{net}.{oi}.1/24"), "dev", bridge])?;
        ipr(&["link", "set", bridge, "up"])?;
        let sb = c.add_ns(&format!("{what}{i}"))?;
        ipr(&[
            "link", "add", port, "mtu", mtu, "type", "veth", "peer", "name", "eth0", "mtu", mtu,
            "netns", &sb,
        ])?;
        ipr(&["link", "set", port, "master", bridge, "up"])?;
        sh(&[
            "ip",
            "-n",
            &sb,
            "addr",
            "add",
            &format!("{net}.{oi}.2/24"),
            "dev",
            "eth0",
        ])?;
        sh(&["ip", "-n", &sb, "link", "set", "eth0", "up"])?;
        sh(&[
            "ip",
            "-n",
            &sb,
            "route",
            "add",
            "default",
            "via",
            &format!("{net}.{oi}.1"),
        ])?;
        Ok(())
    };
    sandbox(c, "fv", "br42", "fv", VXLAN_MTU, "10.246")?;
    sandbox(c, "fg", "br47", "fg", "1500", "10.247")?;
    sh(&[
        "bridge",
        "-n",
        &h,
        "fdb",
        "append",
        &mac(oj),
        "dev",
        "vx42",
        "dst",
        &ip_j.to_string(),
        "self",
        "permanent",
    ])?;
    let gw = format!("10.246.{oj}.0");
    ipr(&[
        "neigh",
        "replace",
        &gw,
        "lladdr",
        &mac(oj),
        "dev",
        "vx42",
        "nud",
        "permanent",
    ])?;
    ipr(&[
        "route",
        "replace",
        &format!("10.246.{oj}.0/24"),
        "via",
        &gw,
        "dev",
        "vx42",
        "onlink",
        "src",
        &format!("10.246.{oi}.1"),
    ])?;
    ipr(&[
        "route",
        "replace",
        &format!("10.247.{oj}.0/24"),
        "via",
        &ip_j.to_string(),
        "dev",
        "eth0",
        "src",
        &format!("10.247.{oi}.1"),
    ])?;
    Ok(())
}

/// A sandbox's address, from `nsnet inspect NAME --json`.
fn address_of(c: &Cluster, i: usize, name: &str) -> Result<String> {
    let v: serde_json::Value = serde_json::from_str(&c.nsnet(i, &["inspect", name, "--json"])?)?;
    let cidr = v["endpoints"][0]["address"]
        .as_str()
        .context("inspect: no address")?;
    Ok(cidr.split('/').next().unwrap_or(cidr).to_string())
}

struct PathResult {
    name: &'static str,
    floor: Option<usize>,
    gbps: Vec<f64>,
    rtts: Vec<f64>,
    lost: usize,
}

fn datapath(o: &Opts) -> Result<String> {
    // Hosts 1 and 2: nsnet; 3 and 4: the floors, by hand; 5 and 6: nsnet with `--firewall none`, to tell
    // the firewall's share from the rest.
    let mut c = Cluster::new("dp", 6)?;
    let url = c.url();
    c.nsnet(
        1,
        &[
            "network", "create", NET, "--driver", "overlay", "--subnet", CLUSTER, "--etcd", &url,
        ],
    )?;
    // host-gw has no VXLAN device, but network create refuses a second overlay network on the same VNI and
    // port whatever its backend: give it VNI 2.
    c.nsnet(
        1,
        &[
            "network",
            "create",
            GW_NET,
            "--driver",
            "overlay",
            "--backend",
            "host-gw",
            "--vni",
            "2",
            "--subnet",
            GW_CLUSTER,
            "--etcd",
            &url,
        ],
    )?;
    c.start_agent(1, None)?;
    c.start_agent(2, None)?;
    c.start_agent(5, Some("none"))?;
    c.start_agent(6, Some("none"))?;
    // Each nsnet host has the three others as peers, on both networks.
    c.wait_routes(&[1, 2, 5, 6], 6, Duration::from_secs(30))?;
    let prefix = c.prefix.clone();
    let sb = |what: &str| format!("{prefix}-{what}");
    for (i, name, net) in [
        (1, sb("v1"), NET),
        (2, sb("v2"), NET),
        (1, sb("g1"), GW_NET),
        (2, sb("g2"), GW_NET),
        (5, sb("v5"), NET),
        (6, sb("v6"), NET),
        (5, sb("g5"), GW_NET),
        (6, sb("g6"), GW_NET),
    ] {
        c.nsnet(i, &["create", &name, "--network", net])?;
    }
    let (v2, g2) = (address_of(&c, 2, &sb("v2"))?, address_of(&c, 2, &sb("g2"))?);
    let (v6, g6) = (address_of(&c, 6, &sb("v6"))?, address_of(&c, 6, &sb("g6"))?);
    floor_host(&mut c, 3, 4)?;
    floor_host(&mut c, 4, 3)?;
    let underlay = c.ip(4)?.to_string();
    let underlay6 = c.ip(6)?.to_string();
    // (name, index of its floor, server namespace, client namespace, server address)
    let cases: [(&'static str, Option<usize>, String, String, String); 8] = [
        (
            "underlay: host -> host",
            None,
            c.host(4),
            c.host(3),
            underlay,
        ),
        // The hosts' own traffic through the eth0 filters of host-gw's fast path (which it does not match),
        // on hosts without nsnet's firewall (whose conntrack would cost the host's traffic too).
        (
            "underlay: host -> host, nsnet's host-gw filter on both eth0s (diagnostic)",
            Some(0),
            c.host(6),
            c.host(5),
            underlay6,
        ),
        (
            "VXLAN by hand (floor for vxlan)",
            None,
            sb("fv4"),
            sb("fv3"),
            "10.246.4.2".into(),
        ),
        ("nsnet vxlan", Some(2), sb("v2"), sb("v1"), v2),
        (
            "nsnet vxlan, `--firewall none` (diagnostic)",
            Some(2),
            sb("v6"),
            sb("v5"),
            v6,
        ),
        (
            "routes by hand (floor for host-gw)",
            None,
            sb("fg4"),
            sb("fg3"),
            "10.247.4.2".into(),
        ),
        ("nsnet host-gw", Some(5), sb("g2"), sb("g1"), g2),
        (
            "nsnet host-gw, `--firewall none` (diagnostic)",
            Some(5),
            sb("g6"),
            sb("g5"),
            g6,
        ),
    ];
    for (_, _, _, client, ip) in &cases {
        reachable(client, ip)?;
    }
    let pin = thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
    let mut results: Vec<PathResult> = cases
        .iter()
        .map(|(name, floor, ..)| PathResult {
            name,
            floor: *floor,
            gbps: Vec::new(),
            rtts: Vec::new(),
            lost: 0,
        })
        .collect();
    // Interleaved (A B C D E, A B C D E, ...), so the machine's drift hits every path alike.
    for rep in 0..o.reps {
        for (r, (name, _, server, client, ip)) in results.iter_mut().zip(&cases) {
            let g = iperf(server, client, ip, o.secs, pin)?;
            eprintln!(
                "overlay: data path round {}: {name}: {g:.2} Gbit/s",
                rep + 1
            );
            r.gbps.push(g);
        }
    }
    for _ in 0..o.ping_rounds {
        for (r, (_, _, _, client, ip)) in results.iter_mut().zip(&cases) {
            let (rtts, lost) = pings(client, ip, 200)?;
            r.rtts.extend(rtts);
            r.lost += lost;
        }
    }
    drop(c);
    Ok(datapath_table(o, &results, pin))
}

fn datapath_table(o: &Opts, paths: &[PathResult], pin: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Data path across two hosts: one TCP stream (iperf3, {} s, {} runs per path, interleaved) and \
         ping ({} x 200 pings, 10 ms apart)\n",
        o.secs, o.reps, o.ping_rounds
    );
    let _ = writeln!(
        s,
        "Sandbox on host A to sandbox on host B; the floors are the same tunnel or routes built by hand with `ip` \
         between two other hosts on the same underlay bridge (no firewall, no conntrack). The diagnostic rows are nsnet \
         on a third pair of hosts whose agents run with `--firewall none`: what is left without nsnet's nftables \
         rules and conntrack. {}\n",
        if pin {
            "iperf3's client runs on CPU 0, its server on CPU 1."
        } else {
            "One CPU: iperf3 is not pinned."
        }
    );
    let _ = writeln!(
        s,
        "| path | throughput (median) | p10–p90 | vs its floor | same round vs floor: median (p10–p90) | RTT median | RTT p99 | RTT vs floor | lost pings |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for p in paths {
        let med = median(p.gbps.clone());
        let (ratio, paired, rtt) = match p.floor.and_then(|f| paths.get(f)) {
            Some(f) => {
                let pr: Vec<f64> = p.gbps.iter().zip(&f.gbps).map(|(a, b)| a / b).collect();
                (
                    format!("**{:.1}%**", 100.0 * med / median(f.gbps.clone())),
                    format!(
                        "{:.1}% ({:.1}–{:.1}%)",
                        100.0 * quantile(&pr, 0.5),
                        100.0 * quantile(&pr, 0.1),
                        100.0 * quantile(&pr, 0.9)
                    ),
                    format!("{:+.0} µs", quantile(&p.rtts, 0.5) - quantile(&f.rtts, 0.5)),
                )
            }
            None => (String::new(), String::new(), String::new()),
        };
        let _ = writeln!(
            s,
            "| {} | {:.2} Gbit/s | {:.2}–{:.2} | {ratio} | {paired} | {:.0} µs | {:.0} µs | {rtt} | {} |",
            p.name,
            med,
            quantile(&p.gbps, 0.1),
            quantile(&p.gbps, 0.9),
            quantile(&p.rtts, 0.5),
            quantile(&p.rtts, 0.99),
            p.lost
        );
    }
    s
}

// ---------------------------------------------------------------------------------------------------------
// Convergence: a netlink route monitor per host, and a watch on the leases

const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTA_DST: u16 = 1;
const AF_INET: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    New,
    Del,
    /// The socket's buffer overflowed: events were lost.
    Overflow,
}

struct RouteEvent {
    host: usize,
    at: Instant,
    seen: Seen,
    dst: Ipv4Net,
}

/// nsnet's route changes (protocol 110) in a netlink message buffer: (added, destination).
fn parse_routes(buf: &[u8]) -> Vec<(bool, Ipv4Net)> {
    let u16_at = |b: &[u8], at: usize| {
        b.get(at..at + 2)
            .map_or(0, |x| u16::from_ne_bytes([x[0], x[1]]))
    };
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(head) = buf.get(at..at + 16) {
        let len =
            usize::try_from(u32::from_ne_bytes([head[0], head[1], head[2], head[3]])).unwrap_or(0);
        let kind = u16::from_ne_bytes([head[4], head[5]]);
        if len < 16 || at + len > buf.len() {
            break;
        }
        let msg = &buf[at + 16..at + len];
        if (kind == RTM_NEWROUTE || kind == RTM_DELROUTE)
            && msg.len() >= 12
            && msg[0] == AF_INET
            && msg[5] == NSNET_ROUTE_PROTOCOL
        {
            let mut dst = Ipv4Addr::UNSPECIFIED;
            let mut a = 12;
            while a + 4 <= msg.len() {
                let alen = usize::from(u16_at(msg, a));
                if alen < 4 || a + alen > msg.len() {
                    break;
                }
                if u16_at(msg, a + 2) == RTA_DST && alen == 8 {
                    dst = Ipv4Addr::new(msg[a + 4], msg[a + 5], msg[a + 6], msg[a + 7]);
                }
                a += (alen + 3) & !3;
            }
            if let Ok(net) = Ipv4Net::new(dst, msg[1]) {
                out.push((kind == RTM_NEWROUTE, net));
            }
        }
        at += (len + 3) & !3;
    }
    out
}

/// A thread per host, each blocked on a netlink socket in that host that receives every IPv4 route change:
/// nsnet's are sent on with the time they arrived. No polling: the time is the kernel's notification.
struct Monitor {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    rx: Receiver<RouteEvent>,
}

impl Monitor {
    fn new(c: &Cluster, hosts: &[usize]) -> Result<Monitor> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let mut m = Monitor {
            stop,
            threads: Vec::new(),
            rx,
        };
        for &i in hosts {
            let ns = netns::open(&netns::named_path(&c.host(i)))?;
            let sock = netns::run_in(&ns, || -> nix::Result<OwnedFd> {
                let s = socket(
                    AddressFamily::Netlink,
                    SockType::Raw,
                    SockFlag::SOCK_CLOEXEC,
                    SockProtocol::NetlinkRoute,
                )?;
                bind(s.as_raw_fd(), &NetlinkAddr::new(0, RTMGRP_IPV4_ROUTE))?;
                setsockopt(&s, sockopt::RcvBuf, &(4 << 20))?;
                setsockopt(&s, sockopt::ReceiveTimeout, &TimeVal::milliseconds(100))?;
                Ok(s)
            })??;
            let (tx, stop): (Sender<RouteEvent>, _) = (tx.clone(), m.stop.clone());
            m.threads.push(thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                while !stop.load(Ordering::Relaxed) {
                    match recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                        Ok(n) => {
                            let at = Instant::now();
                            for (new, dst) in parse_routes(&buf[..n]) {
                                let seen = if new { Seen::New } else { Seen::Del };
                                let _ = tx.send(RouteEvent {
                                    host: i,
                                    at,
                                    seen,
                                    dst,
                                });
                            }
                        }
                        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                        Err(nix::errno::Errno::ENOBUFS) => {
                            let _ = tx.send(RouteEvent {
                                host: i,
                                at: Instant::now(),
                                seen: Seen::Overflow,
                                dst: Ipv4Net::default(),
                            });
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        Ok(m)
    }

    fn drain(&self) {
        while self.rx.try_recv().is_ok() {}
    }

    /// Wait until every host in `hosts` saw `seen` for `dst`; when each first did.
    fn wait(
        &self,
        hosts: &[usize],
        dst: Ipv4Net,
        seen: Seen,
        timeout: Duration,
    ) -> Result<HashMap<usize, Instant>> {
        let end = Instant::now() + timeout;
        let mut got: HashMap<usize, Instant> = HashMap::new();
        while got.len() < hosts.len() {
            let left = end.saturating_duration_since(Instant::now());
            let e = match self.rx.recv_timeout(left) {
                Ok(e) => e,
                Err(RecvTimeoutError::Timeout) => bail!(
                    "{} of {} hosts did not see {seen:?} {dst} within {timeout:?}",
                    hosts.len() - got.len(),
                    hosts.len()
                ),
                Err(RecvTimeoutError::Disconnected) => bail!("the route monitors ended"),
            };
            if e.seen == Seen::Overflow {
                bail!("host {}'s route monitor overflowed", e.host);
            }
            if e.seen == seen && e.dst == dst && hosts.contains(&e.host) {
                got.entry(e.host).or_insert(e.at);
            }
        }
        Ok(got)
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A watch on `/nsnet/leases/`: every change, with the time the bench saw it.
struct LeaseWatch {
    stopper: WatchStopper,
    thread: Option<JoinHandle<()>>,
    rx: Receiver<(Instant, Change)>,
}

impl LeaseWatch {
    fn new(c: &Cluster) -> Result<LeaseWatch> {
        let mut watch = c.with_etcd(|e| e.watch("/nsnet/leases/", 0))??;
        let stopper = watch.stopper();
        let (tx, rx) = mpsc::channel();
        let thread = thread::spawn(move || loop {
            match watch.next() {
                Ok(WatchEvent::Changes { events, .. }) => {
                    let at = Instant::now();
                    for e in events {
                        if tx.send((at, e)).is_err() {
                            return;
                        }
                    }
                }
                Ok(WatchEvent::Progress { .. }) => {}
                _ => return,
            }
        });
        Ok(LeaseWatch {
            stopper,
            thread: Some(thread),
            rx,
        })
    }

    fn drain(&self) {
        while self.rx.try_recv().is_ok() {}
    }

    /// The first change `want` accepts, within `timeout`.
    fn wait<T>(
        &self,
        timeout: Duration,
        mut want: impl FnMut(&Change) -> Option<T>,
    ) -> Result<(Instant, T)> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((at, change)) => {
                    if let Some(t) = want(&change) {
                        return Ok((at, t));
                    }
                }
                Err(_) => bail!("etcd showed no such lease change within {timeout:?}"),
            }
        }
    }
}

impl Drop for LeaseWatch {
    fn drop(&mut self) {
        self.stopper.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The block in a lease key `/nsnet/leases/NET/10.244.3.0-24`.
fn block_of(key: &str) -> Option<Ipv4Net> {
    key.rsplit('/').next()?.replacen('-', "/", 1).parse().ok()
}

/// One join and one leave, in ms.
struct Cycle {
    /// Agent started → the last other host has the route.
    join: f64,
    /// The lease key appeared in etcd (as the bench's watch saw it) → the last host has the route.
    join_etcd: f64,
    /// The first and the median other host, from the agent's start.
    join_first_host: f64,
    join_median_host: f64,
    /// Lease revoked → the last other host has no route.
    leave: f64,
    leave_first_host: f64,
    leave_median_host: f64,
}

struct Convergence {
    hosts: usize,
    /// Hosts 1..N-1 started together → every one has the others' routes.
    first: Duration,
    cycles: Vec<Cycle>,
    /// CPU each other agent spent per join or leave (its own threads and the processes it ran), in ms.
    per_change_ms: f64,
    cost: Option<Cost>,
}

fn ms_since(t0: Instant, t: Instant) -> f64 {
    t.saturating_duration_since(t0).as_secs_f64() * 1e3
}

/// The last, the first and the median host's time after `t0`, in ms.
fn spread(t0: Instant, got: &HashMap<usize, Instant>) -> (f64, f64, f64) {
    let v: Vec<f64> = got.values().map(|t| ms_since(t0, *t)).collect();
    (quantile(&v, 1.0), quantile(&v, 0.0), median(v))
}

fn convergence(o: &Opts, n: usize, cost: bool) -> Result<Convergence> {
    if n < 2 {
        bail!("convergence needs at least 2 hosts");
    }
    let mut c = Cluster::new(&format!("c{n}"), n)?;
    let url = c.url();
    c.nsnet(
        1,
        &[
            "network", "create", NET, "--driver", "overlay", "--subnet", CLUSTER, "--etcd", &url,
        ],
    )?;
    let others: Vec<usize> = (1..n).collect();
    let t = Instant::now();
    for &i in &others {
        c.start_agent(i, None)?;
    }
    c.wait_routes(&others, n - 2, Duration::from_secs(300))?;
    let first = t.elapsed();
    eprintln!(
        "overlay: {n} hosts: {} agents converged in {first:.1?}",
        n - 1
    );
    thread::sleep(Duration::from_secs(2));
    // The others' idle CPU first, so what a join and a leave cost them can be told apart from it.
    let (idle0, t_idle) = (c.agents_ticks(&others)?, Instant::now());
    thread::sleep(Duration::from_secs(5));
    let idle_per_s =
        f64_of_u64(c.agents_ticks(&others)?.saturating_sub(idle0)) / t_idle.elapsed().as_secs_f64();
    let (busy0, t_busy) = (c.agents_ticks(&others)?, Instant::now());
    let monitor = Monitor::new(&c, &others)?;
    let leases = LeaseWatch::new(&c)?;
    let me = c.ip(n)?.to_string();
    let settle = Duration::from_millis(if n > 10 { 1500 } else { 500 });
    let mut cycles = Vec::new();
    for k in 0..o.cycles {
        // Join: host N's agent starts; it takes its block (its old one after the first time) and publishes it.
        monitor.drain();
        leases.drain();
        let t0 = Instant::now();
        c.start_agent(n, None)?;
        let (t_put, (block, lease)) = leases.wait(Duration::from_secs(20), |ch| match ch {
            Change::Put(kv) => {
                let v: serde_json::Value = serde_json::from_slice(&kv.value).ok()?;
                (v["underlay"].as_str() == Some(me.as_str()))
                    .then(|| block_of(&kv.key).map(|b| (b, kv.lease)))
                    .flatten()
            }
            Change::Delete { .. } => None,
        })?;
        let got = monitor.wait(&others, block, Seen::New, Duration::from_secs(30))?;
        let (join, join_first_host, join_median_host) = spread(t0, &got);
        let (join_etcd, _, _) = spread(t_put, &got);
        for &i in &others {
            if !c.routes(i)?.contains(&block) {
                bail!("host {i} announced a route to {block} it does not have");
            }
        }
        thread::sleep(settle);
        // Leave: the agent dies, and its lease is revoked at once (etcd deletes its keys).
        c.kill_agent(n)?;
        monitor.drain();
        let t1 = Instant::now();
        c.with_etcd(|e| e.lease_revoke(lease))??;
        let got = monitor.wait(&others, block, Seen::Del, Duration::from_secs(30))?;
        let (leave, leave_first_host, leave_median_host) = spread(t1, &got);
        for &i in &others {
            if c.routes(i)?.contains(&block) {
                bail!("host {i} announced it removed its route to {block}, but has it");
            }
        }
        eprintln!(
            "overlay: {n} hosts, cycle {}: join {join:.0} ms ({join_etcd:.0} ms after etcd), leave {leave:.0} ms",
            k + 1
        );
        cycles.push(Cycle {
            join,
            join_etcd,
            join_first_host,
            join_median_host,
            leave,
            leave_first_host,
            leave_median_host,
        });
        thread::sleep(settle);
    }
    // What the others spent on the joins and leaves, above their idle rate: per agent and per change.
    let busy = f64_of_u64(c.agents_ticks(&others)?.saturating_sub(busy0))
        - idle_per_s * t_busy.elapsed().as_secs_f64();
    let per_change_ms = busy.max(0.0) * 1e3
        / f64_of_u64(clock_ticks())
        / f64_of(others.len())
        / f64_of(2 * o.cycles.max(1));
    drop(leases);
    drop(monitor);
    let cost = if cost {
        c.start_agent(n, None)?;
        let all: Vec<usize> = (1..=n).collect();
        c.wait_routes(&all, n - 1, Duration::from_secs(60))?;
        thread::sleep(Duration::from_secs(5));
        Some(measure_cost(&c, o.window)?)
    } else {
        None
    };
    Ok(Convergence {
        hosts: n,
        first,
        cycles,
        per_change_ms,
        cost,
    })
}

// ---------------------------------------------------------------------------------------------------------
// What the agents cost

struct Cost {
    hosts: usize,
    window: f64,
    /// Per agent, % of one CPU: its own threads, and the processes it ran and reaped.
    cpu: Vec<f64>,
    children_cpu: f64,
    /// TCP connections etcd accepted over the window.
    etcd_conns: u64,
    rss_kib: Vec<f64>,
    etcd_cpu: f64,
    /// Bytes at etcd's interface (received, sent) over the window.
    etcd_rx: u64,
    etcd_tx: u64,
    /// On host 1: VXLAN FDB entries with a destination, neighbours on the VXLAN device, nsnet routes, and
    /// members in the firewall's VXLAN set.
    fdb: usize,
    neigh: usize,
    routes: usize,
    members: usize,
}

/// utime + stime of `pid` (all its threads, live and exited), and cutime + cstime (the children it reaped),
/// in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> Result<(u64, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit(')').next().context("stat")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15, cutime 16, cstime 17.
    let t = |k: usize| -> Result<u64> { Ok(f.get(k - 3).context("stat field")?.parse()?) };
    Ok((t(14)? + t(15)?, t(16)? + t(17)?))
}

/// Clock ticks per second (`/proc` times are in these).
pub(crate) fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .unwrap_or(100)
}

/// TCP connections accepted so far in the namespace `pid` is in (`Tcp: PassiveOpens`).
fn passive_opens(pid: u32) -> Result<u64> {
    let snmp = fs::read_to_string(format!("/proc/{pid}/net/snmp"))?;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp: "));
    let (names, values) = (tcp.next().context("Tcp")?, tcp.next().context("Tcp")?);
    let at = names
        .split_whitespace()
        .position(|n| n == "PassiveOpens")
        .context("PassiveOpens")?;
    Ok(values
        .split_whitespace()
        .nth(at)
        .context("PassiveOpens")?
        .parse()?)
}

fn rss_kib(pid: u32) -> Result<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS")?
        .parse::<f64>()?)
}

/// Bytes received and sent on `eth0` of the namespace `pid` is in.
fn eth0_bytes(pid: u32) -> Result<(u64, u64)> {
    let dev = fs::read_to_string(format!("/proc/{pid}/net/dev"))?;
    let line = dev
        .lines()
        .find(|l| l.trim_start().starts_with("eth0:"))
        .context("no eth0 in etcd's namespace")?;
    let f: Vec<u64> = line
        .split(':')
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    Ok((
        *f.first().context("rx bytes")?,
        *f.get(8).context("tx bytes")?,
    ))
}

fn measure_cost(c: &Cluster, window: u64) -> Result<Cost> {
    let tick = clock_ticks();
    let pids: Vec<u32> = (1..=c.n).filter_map(|i| c.agent_pid(i)).collect();
    let etcd_pid = c.etcd.as_ref().map(Child::id).context("etcd")?;
    let before: Vec<(u64, u64)> = pids.iter().map(|p| cpu_ticks(*p)).collect::<Result<_>>()?;
    let (etcd_before, _) = cpu_ticks(etcd_pid)?;
    let (rx0, tx0) = eth0_bytes(etcd_pid)?;
    let conns0 = passive_opens(etcd_pid)?;
    let t = Instant::now();
    thread::sleep(Duration::from_secs(window));
    let after: Vec<(u64, u64)> = pids.iter().map(|p| cpu_ticks(*p)).collect::<Result<_>>()?;
    let (etcd_after, _) = cpu_ticks(etcd_pid)?;
    let (rx1, tx1) = eth0_bytes(etcd_pid)?;
    let conns1 = passive_opens(etcd_pid)?;
    let secs = t.elapsed().as_secs_f64();
    let pct = |d: u64| 100.0 * f64_of_u64(d) / f64_of_u64(tick) / secs;
    let cpu = before
        .iter()
        .zip(&after)
        .map(|(b, a)| pct(a.0.saturating_sub(b.0)))
        .collect();
    let children: u64 = before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.1.saturating_sub(b.1))
        .sum();
    let rss = pids.iter().map(|p| rss_kib(*p)).collect::<Result<_>>()?;
    let h = c.host(1);
    let routes: serde_json::Value = serde_json::from_str(&sh(&[
        "ip", "-n", &h, "-j", "route", "show", "proto", "110",
    ])?)?;
    let routes = routes.as_array().cloned().unwrap_or_default();
    let dev = routes
        .first()
        .and_then(|r| r["dev"].as_str())
        .unwrap_or("nsvx1")
        .to_string();
    let fdb: serde_json::Value = serde_json::from_str(&sh(&[
        "bridge", "-n", &h, "-j", "fdb", "show", "dev", &dev,
    ])?)?;
    let fdb = fdb
        .as_array()
        .map_or(0, |a| a.iter().filter(|e| e.get("dst").is_some()).count());
    let neigh: serde_json::Value =
        serde_json::from_str(&sh(&["ip", "-n", &h, "-j", "neigh", "show", "dev", &dev])?)?;
    let neigh = neigh.as_array().map_or(0, Vec::len);
    let set: serde_json::Value = serde_json::from_str(&run_in_ns(
        &h,
        &["nft", "-j", "list", "set", "inet", "nsnet", "vxlan_members"],
    )?)?;
    let members = set["nftables"]
        .as_array()
        .and_then(|a| a.iter().find_map(|o| o["set"]["elem"].as_array()))
        .map_or(0, Vec::len);
    Ok(Cost {
        hosts: c.n,
        window: secs,
        cpu,
        children_cpu: pct(children),
        etcd_conns: conns1.saturating_sub(conns0),
        rss_kib: rss,
        etcd_cpu: pct(etcd_after.saturating_sub(etcd_before)),
        etcd_rx: rx1.saturating_sub(rx0),
        etcd_tx: tx1.saturating_sub(tx0),
        fdb,
        neigh,
        routes: routes.len(),
        members,
    })
}

fn convergence_table(o: &Opts, runs: &[Convergence]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Convergence: the last host joins and leaves, {} times per cluster size\n",
        o.cycles
    );
    let _ = writeln!(
        s,
        "*Join*: `nsnet agent` starts on host N (the first time it takes a new block, then its old one again); \
         the time until every other host has its route to the block (netlink route monitor in each host). \
         *Leave*: the agent is killed and its etcd lease revoked; the time from the revoke until every other host's \
         route is gone. `--lease-ttl {LEASE_TTL}`. Target: p99 ≤ 1 s. With {} cycles p99 is the slowest one.\n",
        o.cycles
    );
    let _ = writeln!(
        s,
        "| hosts | all agents started together → converged | join p50 | join p99 | join after etcd had the lease, p50 / p99 | join: first / median host | leave p50 | leave p99 | leave: first / median host | CPU per agent per change |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in runs {
        let col = |f: fn(&Cycle) -> f64| -> Vec<f64> { r.cycles.iter().map(f).collect() };
        let (join, etcd, leave) = (col(|c| c.join), col(|c| c.join_etcd), col(|c| c.leave));
        let _ = writeln!(
            s,
            "| {} | {:.1} s ({} agents) | {:.0} ms | **{:.0} ms** | {:.0} / {:.0} ms | {:.0} / {:.0} ms | {:.0} ms | **{:.0} ms** | {:.0} / {:.0} ms | {:.1} ms |",
            r.hosts,
            r.first.as_secs_f64(),
            r.hosts - 1,
            quantile(&join, 0.5),
            quantile(&join, 0.99),
            quantile(&etcd, 0.5),
            quantile(&etcd, 0.99),
            median(col(|c| c.join_first_host)),
            median(col(|c| c.join_median_host)),
            quantile(&leave, 0.5),
            quantile(&leave, 0.99),
            median(col(|c| c.leave_first_host)),
            median(col(|c| c.leave_median_host)),
            r.per_change_ms,
        );
    }
    let _ = writeln!(
        s,
        "\nFirst / median host: medians over the cycles of the first and the median other host to get there. CPU per \
         agent per change: what the other agents spent over all cycles (their threads and the processes they ran, \
         less their idle rate measured just before), per agent and per join or leave."
    );
    for r in runs {
        let list = |f: fn(&Cycle) -> f64| -> String {
            r.cycles
                .iter()
                .map(|c| format!("{:.0}", f(c)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            s,
            "\n{} hosts, every cycle (ms): join {}; leave {}.",
            r.hosts,
            list(|c| c.join),
            list(|c| c.leave)
        );
    }
    s
}

fn cost_table(k: &Cost) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Agent cost at {} hosts, idle (all converged), over {:.0} s\n",
        k.hosts, k.window
    );
    let _ = writeln!(s, "| figure | value |");
    let _ = writeln!(s, "|---|---:|");
    let total: f64 = k.cpu.iter().sum();
    let _ = writeln!(
        s,
        "| CPU per agent (utime+stime, all threads), mean / max | {:.2}% / {:.2}% of one core |",
        total / f64_of(k.cpu.len().max(1)),
        quantile(&k.cpu, 1.0)
    );
    let _ = writeln!(
        s,
        "| CPU of all {} agents together; of processes they ran | {:.1}% of one core; {:.1}% |",
        k.hosts, total, k.children_cpu
    );
    let _ = writeln!(
        s,
        "| RSS per agent (VmRSS), median / max | {:.1} / {:.1} MiB |",
        median(k.rss_kib.clone()) / 1024.0,
        quantile(&k.rss_kib, 1.0) / 1024.0
    );
    let per_min = |b: u64| f64_of_u64(b) / f64_of(k.hosts) / (k.window / 60.0) / 1024.0;
    let _ = writeln!(
        s,
        "| etcd traffic per host per minute (etcd's eth0: received + sent) | {:.1} KiB ({:.1} + {:.1}) |",
        per_min(k.etcd_rx + k.etcd_tx),
        per_min(k.etcd_rx),
        per_min(k.etcd_tx)
    );
    let _ = writeln!(
        s,
        "| TCP connections to etcd per host per minute | {:.0} |",
        f64_of_u64(k.etcd_conns) / f64_of(k.hosts) / (k.window / 60.0)
    );
    let _ = writeln!(s, "| etcd's CPU | {:.1}% of one core |", k.etcd_cpu);
    let _ = writeln!(
        s,
        "| kernel objects on host 1: VXLAN FDB entries / neighbours / nsnet routes / firewall VXLAN members | {} / {} / {} / {} (want {} each) |",
        k.fdb,
        k.neigh,
        k.routes,
        k.members,
        k.hosts - 1
    );
    s
}

/// The 1, 5 and 15 minute load averages: anything else running on the machine shows here.
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The whole `overlay` run, as markdown.
pub fn run(o: &Opts) -> Result<String> {
    let start = Instant::now();
    let mut md = format!(
        "# nsnet overlay benchmark\n\nMachine: {}\n\nOne run of `nsnet-bench overlay`: every host is a network \
         namespace on one underlay bridge (veth, MTU 1500), with etcd 3.4 in a namespace of its own; all on \
         this one machine. Load average at the start: {}. No peer rows: flannel is not available offline here; \
         the hand-built kernel floors stand in for it (see bench/README.md).\n\n",
        machine(),
        loadavg()
    );
    if o.reps > 0 {
        md += &datapath(o)?;
    }
    let mut runs = Vec::new();
    let largest = o.hosts.iter().copied().max().unwrap_or(0);
    for &n in &o.hosts {
        runs.push(convergence(o, n, n == largest)?);
    }
    if !runs.is_empty() {
        md += "\n";
        md += &convergence_table(o, &runs);
    }
    if let Some(k) = runs.iter().find_map(|r| r.cost.as_ref()) {
        md += "\n";
        md += &cost_table(k);
    }
    let _ = writeln!(
        md,
        "\nWhole run: {:.0} s; load average at the end: {}.",
        start.elapsed().as_secs_f64(),
        loadavg()
    );
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_route_notification() {
        // nlmsghdr (16) + rtmsg (12) + RTA_DST (8) + RTA_OIF (8).
        let mut m = Vec::new();
        m.extend(44u32.to_ne_bytes());
        m.extend(RTM_NEWROUTE.to_ne_bytes());
        m.extend([0u8; 10]);
        m.extend([
            AF_INET,
            24,
            0,
            0,
            254,
            NSNET_ROUTE_PROTOCOL,
            0,
            1,
            0,
            0,
            0,
            0,
        ]);
        m.extend(8u16.to_ne_bytes());
        m.extend(RTA_DST.to_ne_bytes());
        m.extend([10, 244, 7, 0]);
        m.extend(8u16.to_ne_bytes());
        m.extend(4u16.to_ne_bytes());
        m.extend(3u32.to_ne_bytes());
        let got = parse_routes(&m);
        assert_eq!(got, vec![(true, "10.244.7.0/24".parse().unwrap())]);
        // Another protocol's route is not ours.
        m[21] = 4;
        assert!(parse_routes(&m).is_empty());
    }

    #[test]
    fn a_lease_key_names_its_block() {
        assert_eq!(
            block_of("/nsnet/leases/pods/10.244.3.0-24"),
            Some("10.244.3.0/24".parse().unwrap())
        );
        assert_eq!(block_of("/nsnet/leases/pods/garbage"), None);
    }
}
