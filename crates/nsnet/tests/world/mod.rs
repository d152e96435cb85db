//! Multi-host test harness for overlay networks: a throwaway "world" of host namespaces on one L2 underlay, a
//! real etcd, an outside peer, and `nsnet agent`s, all removed again when the world is dropped.
//!
//! Layout (every namespace is `nsnt-<tag>-...`; addresses are on the underlay, 192.168.200.0/24):
//!
//! ```text
//!   nsnt-<tag>-ul      bridge ul0 (the switch); ports h1..hN, etcd, out
//!   nsnt-<tag>-h<i>    eth0 192.168.200.(10+i)   host i: nsnet and its agent run here
//!   nsnt-<tag>-etcd    eth0 192.168.200.2        etcd, client URL http://192.168.200.2:2379
//!   nsnt-<tag>-out     eth0 192.168.200.200      not a cluster host: a client, or an attacker
//! ```
//!
//! Sandboxes are named `<tag>-<name>` ([`World::sb`]); /run/netns is shared by every host, so two hosts
//! cannot both have a sandbox of the same name.
#![allow(dead_code)]

#[path = "../common/mod.rs"]
pub mod common;
pub mod six;

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::kill;
use nix::unistd::Pid;
use nsnet_core::kernel::netns;
use serde_json::Value;

pub use common::{check_one_line_failure, inet_checksum, ipv4_header, nsnet_bin, sh};
pub use nix::sys::signal::Signal;

/// The underlay's prefix length.
pub const UNDERLAY_PREFIX: u8 = 24;
/// etcd's address on the underlay.
pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 2);
/// The outside peer's address on the underlay.
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 200);
/// The outside peer's IPv6 address on the underlay, in a dual-stack world ([`World::new6`]).
pub const OUTSIDE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 0xc8);
/// The IANA VXLAN port (RFC 7348).
pub const VXLAN_PORT: u16 = 4789;
/// Set on every process the world starts, so [`leftovers_of`] can find any that outlive it (children
/// included: they inherit it).
pub const TAG_ENV: &str = "NSNET_WORLD_TAG";

const ETCD_BIN: &str = "/usr/bin/etcd";
const ETCD_CLIENT_PORT: u16 = 2379;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A multi-host world; see the module docs for its layout. Hosts are numbered from 1.
pub struct World {
    /// Prefix of every name this world uses (namespaces `nsnt-<tag>-...`, sandboxes `<tag>-...`).
    pub tag: String,
    n_hosts: usize,
    /// Namespaces made so far, in order (a panic halfway through [`World::new`] still removes them).
    made: Vec<String>,
    /// Each host's current underlay address ([`World::set_host_ip`] changes it).
    ips: Mutex<Vec<Ipv4Addr>>,
    etcd: Mutex<Option<Child>>,
    agents: Mutex<Vec<Option<Child>>>,
    tmp: Option<tempfile::TempDir>,
    /// A dual-stack world ([`World::new6`]): IPv6 on in the hosts and the outside peer, and the IPv6 gate
    /// open for every nsnet it runs.
    ipv6: bool,
}

/// A command run inside the namespace at `ns` (by `nsenter`, which execs it: the child's pid is the program's).
fn command_in(ns: &Path, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", ns.display()))
        .arg("--")
        .arg(program)
        .args(args)
        .stdin(Stdio::null());
    cmd
}

fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Run `args` inside the namespace at `ns`; it must succeed. Returns stdout.
pub fn in_ns(ns: &Path, args: &[&str]) -> String {
    let out = try_in_ns(ns, args);
    assert!(
        out.status.success(),
        "{args:?} in {} failed: {}",
        ns.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run `args` inside the namespace at `ns`, whatever its outcome.
pub fn try_in_ns(ns: &Path, args: &[&str]) -> Output {
    output(&mut command_in(ns, args[0], &args[1..]))
}

/// Poll `f` every 50 ms until it holds or `timeout` passes; whether it held.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Counter `field` of protocol `proto` (`Icmp`, `Ip`) in the /proc/net/snmp of the namespace at `ns`.
pub fn snmp(ns: &Path, proto: &str, field: &str) -> u64 {
    let text = in_ns(ns, &["cat", "/proc/net/snmp"]);
    let prefix = format!("{proto}: ");
    let mut rows = text.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) = (
        rows.next().expect("counter names"),
        rows.next().expect("counter values"),
    );
    let at = names
        .split_whitespace()
        .position(|n| n == field)
        .unwrap_or_else(|| panic!("no counter {proto}:{field}"));
    values
        .split_whitespace()
        .nth(at)
        .and_then(|v| v.parse().ok())
        .expect("a number")
}

/// The MAC address of interface `ifname` inside the namespace at `ns`.
pub fn mac_of(ns: &Path, ifname: &str) -> [u8; 6] {
    let links: Value = serde_json::from_str(&in_ns(ns, &["ip", "-j", "link", "show", ifname]))
        .expect("ip -j link");
    let text = links[0]["address"].as_str().unwrap_or_default();
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.split(':').collect();
    assert_eq!(parts.len(), 6, "{ifname} has no MAC: {text:?}");
    for (slot, part) in mac.iter_mut().zip(parts) {
        *slot = u8::from_str_radix(part, 16).expect("a MAC from ip");
    }
    mac
}

/// A VXLAN datagram's payload (RFC 7348): flags 0x08 (VNI valid), the 24-bit `vni` in bytes 4..7, then
/// `inner` (an Ethernet frame without FCS).
pub fn vxlan_datagram(vni: u32, inner: &[u8]) -> Vec<u8> {
    assert!(vni < 1 << 24, "VNI {vni} does not fit in 24 bits");
    let [_, a, b, c] = vni.to_be_bytes();
    let mut d = vec![0x08, 0, 0, 0, a, b, c, 0];
    d.extend_from_slice(inner);
    d
}

/// Send one VXLAN datagram ([`vxlan_datagram`]) from a plain UDP socket inside the namespace at `from` to
/// `to:port`: what a forging peer on the underlay can do without any privilege there.
pub fn send_forged_vxlan(from: &Path, to: Ipv4Addr, port: u16, vni: u32, inner: &[u8]) {
    let datagram = vxlan_datagram(vni, inner);
    let fd = netns::open(from).expect("open the sender's namespace");
    netns::run_in(&fd, || -> std::io::Result<usize> {
        UdpSocket::bind("0.0.0.0:0")?.send_to(&datagram, SocketAddrV4::new(to, port))
    })
    .expect("enter the sender's namespace")
    .unwrap_or_else(|e| panic!("send a forged VXLAN datagram to {to}:{port}: {e}"));
}

/// An Ethernet frame (no FCS) holding an ICMP echo request from `src_ip` to `dst_ip` (id 0x4e53, seq 1, 16
/// bytes of payload), with correct IPv4 and ICMP checksums.
pub fn icmp_echo_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src_ip: Ipv4Addr,
    dst_ip: Ipv4Addr,
) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x4e, 0x53, 0, 1];
    icmp.extend_from_slice(b"nsnet-world-ping");
    let sum = inet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut frame = [dst_mac, src_mac].concat();
    frame.extend([0x08, 0x00]);
    frame.extend(ipv4_header(1, src_ip, dst_ip, icmp.len()));
    frame.extend(icmp);
    frame
}

/// Pids of live processes started by the world tagged `tag` (or by them), as `pid (comm)`.
fn tagged_processes(tag: &str) -> Vec<(u32, String)> {
    let needle = format!("{TAG_ENV}={tag}");
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<(u32, String)> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // A zombie's environ reads empty: it is dead already, only not yet reaped.
            fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == needle.as_bytes()))
        })
        .map(|pid| {
            let comm = common::process(pid).map(|(c, _)| c).unwrap_or_default();
            (pid, comm)
        })
        .collect();
    found.sort();
    found
}

/// Names under /run/netns that belong to the world tagged `tag`: its own `nsnt-<tag>-...` and its
/// sandboxes' `<tag>-...`.
fn tagged_namespaces(tag: &str) -> Vec<String> {
    let (own, sandbox) = (format!("nsnt-{tag}-"), format!("{tag}-"));
    let mut names: Vec<String> = fs::read_dir(netns::NETNS_DIR)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&own) || n.starts_with(&sandbox))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The temp dir prefix of the world tagged `tag`.
fn tmp_prefix(tag: &str) -> String {
    format!("nsnet-world-{tag}-")
}

/// Everything of the world tagged `tag` that still exists: namespaces, processes (etcd, agents and anything
/// they started), temp dirs. Empty once the world is dropped; a test asserts that.
pub fn leftovers_of(tag: &str) -> Vec<String> {
    let mut left: Vec<String> = tagged_namespaces(tag)
        .into_iter()
        .map(|n| format!("namespace {n}"))
        .collect();
    left.extend(
        tagged_processes(tag)
            .into_iter()
            .map(|(pid, comm)| format!("process {pid} ({comm})")),
    );
    let prefix = tmp_prefix(tag);
    if let Ok(dir) = fs::read_dir(std::env::temp_dir()) {
        left.extend(
            dir.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| format!("temp dir {}", e.path().display())),
        );
    }
    left
}

/// Signal `child` (unless it has exited already: its pid may be reused once reaped) and wait for it.
fn stop(child: &mut Child, signal: Signal) -> ExitStatus {
    if let Some(status) = child.try_wait().expect("wait for a child") {
        return status;
    }
    // Not reaped yet, so the pid is still this child's (a zombie at worst).
    let pid = i32::try_from(child.id()).expect("a pid fits in pid_t");
    let _ = kill(Pid::from_raw(pid), signal);
    common::wait_exit(child)
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl World {
    /// A world of `n_hosts` hosts, etcd running and answering. `test` names the world (its first letters go
    /// into the tag).
    pub fn new(test: &str, n_hosts: usize) -> World {
        assert!(
            (1..=100).contains(&n_hosts),
            "a world has 1 to 100 hosts, not {n_hosts}"
        );
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let short: String = test
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(6)
            .collect();
        let tag = format!("w{}x{n}{short}", std::process::id() % 100_000);
        let tmp = tempfile::Builder::new()
            .prefix(&tmp_prefix(&tag))
            .tempdir()
            .expect("tempdir");
        let ips = (1..=n_hosts)
            .map(|i| {
                let last = u8::try_from(10 + i).expect("at most 100 hosts");
                Ipv4Addr::new(192, 168, 200, last)
            })
            .collect();
        let mut w = World {
            tag,
            n_hosts,
            made: Vec::new(),
            ips: Mutex::new(ips),
            etcd: Mutex::new(None),
            agents: Mutex::new((0..n_hosts).map(|_| None).collect()),
            tmp: Some(tmp),
            ipv6: false,
        };
        let ul = w.add_ns("ul");
        sh(&["ip", "-n", &ul, "link", "add", "ul0", "type", "bridge"]);
        sh(&["ip", "-n", &ul, "link", "set", "ul0", "up"]);
        for i in 1..=n_hosts {
            let ns = w.add_ns(&format!("h{i}"));
            w.plug(&ns, &format!("h{i}"), w.host_ip(i));
            fs::create_dir_all(w.state_dir(i)).expect("create a host's state dir");
        }
        let etcd = w.add_ns("etcd");
        w.plug(&etcd, "etcd", ETCD_IP);
        let out = w.add_ns("out");
        w.plug(&out, "out", OUTSIDE_IP);
        w.start_etcd();
        w
    }

    /// A dual-stack world: as [`World::new`], then IPv6 on in every host and the outside peer (only inside
    /// these throwaway namespaces), each with a fixed underlay address in `fd00:200::/64`
    /// ([`World::host_ip6`], [`OUTSIDE_IP6`]) without DAD; and every nsnet the world runs, agents included,
    /// gets the IPv6 gate.
    pub fn new6(test: &str, n_hosts: usize) -> World {
        let mut w = World::new(test, n_hosts);
        w.ipv6 = true;
        let mut on: Vec<(PathBuf, Ipv6Addr)> = (1..=n_hosts)
            .map(|i| (w.host_path(i), w.host_ip6(i)))
            .collect();
        on.push((w.outside_path(), OUTSIDE_IP6));
        for (ns, ip) in on {
            for conf in ["all", "default", "eth0"] {
                in_ns(
                    &ns,
                    &[
                        "sysctl",
                        "-qw",
                        &format!("net.ipv6.conf.{conf}.disable_ipv6=0"),
                    ],
                );
            }
            in_ns(
                &ns,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{ip}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            );
        }
        w
    }

    /// Host `i`'s IPv6 underlay address (a dual-stack world's, [`World::new6`]): `fd00:200::` and its IPv4
    /// address's last byte.
    pub fn host_ip6(&self, i: usize) -> Ipv6Addr {
        let last = self.host_ip(i).octets()[3];
        Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, u16::from(last))
    }

    /// Add namespace `nsnt-<tag>-<what>` with `lo` up and IPv6 off (set before any link is made or moved in,
    /// so the defaults cover them all); returns its name.
    fn add_ns(&mut self, what: &str) -> String {
        let name = format!("nsnt-{}-{what}", self.tag);
        sh(&["ip", "netns", "add", &name]);
        self.made.push(name.clone());
        let path = netns::named_path(&name);
        in_ns(
            &path,
            &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"],
        );
        in_ns(
            &path,
            &["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"],
        );
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// Connect namespace `ns` to the underlay: its `eth0` with address `ip`, the peer `port` on ul0.
    fn plug(&self, ns: &str, port: &str, ip: Ipv4Addr) {
        let ul = self.ns_name("ul");
        sh(&[
            "ip", "-n", &ul, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns",
            ns,
        ]);
        sh(&["ip", "-n", &ul, "link", "set", port, "master", "ul0", "up"]);
        let cidr = format!("{ip}/{UNDERLAY_PREFIX}");
        sh(&["ip", "-n", ns, "addr", "add", &cidr, "dev", "eth0"]);
        sh(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
    }

    fn ns_name(&self, what: &str) -> String {
        format!("nsnt-{}-{what}", self.tag)
    }

    /// The world's temp dir (state dirs, etcd's data, logs).
    pub fn dir(&self) -> &Path {
        self.tmp.as_ref().expect("the world is live").path()
    }

    fn check_host(&self, i: usize) -> usize {
        assert!(
            (1..=self.n_hosts).contains(&i),
            "no host {i}: hosts are 1..={}",
            self.n_hosts
        );
        i - 1
    }

    /// How many hosts the world has.
    pub fn hosts(&self) -> usize {
        self.n_hosts
    }

    /// Host `i`'s namespace path.
    pub fn host_path(&self, i: usize) -> PathBuf {
        self.check_host(i);
        netns::named_path(&self.ns_name(&format!("h{i}")))
    }

    /// Host `i`'s current underlay address (on its `eth0`).
    pub fn host_ip(&self, i: usize) -> Ipv4Addr {
        let at = self.check_host(i);
        lock(&self.ips)[at]
    }

    /// Host `i`'s `eth0` MAC address.
    pub fn host_mac(&self, i: usize) -> [u8; 6] {
        mac_of(&self.host_path(i), "eth0")
    }

    /// Host `i`'s nsnet state dir (`NSNET_STATE_DIR` of its commands and agent).
    pub fn state_dir(&self, i: usize) -> PathBuf {
        self.check_host(i);
        self.dir().join(format!("host{i}")).join("state")
    }

    /// The underlay namespace's path (bridge `ul0`; host `i`'s port is `h<i>`).
    pub fn underlay_path(&self) -> PathBuf {
        netns::named_path(&self.ns_name("ul"))
    }

    /// The etcd namespace's path.
    pub fn etcd_path(&self) -> PathBuf {
        netns::named_path(&self.ns_name("etcd"))
    }

    /// The outside peer's namespace path ([`OUTSIDE_IP`] on its `eth0`).
    pub fn outside_path(&self) -> PathBuf {
        netns::named_path(&self.ns_name("out"))
    }

    /// This world's name for a sandbox.
    pub fn sb(&self, name: &str) -> String {
        format!("{}-{name}", self.tag)
    }

    /// The namespace path of one of this world's sandboxes.
    pub fn sb_path(&self, name: &str) -> PathBuf {
        netns::named_path(&self.sb(name))
    }

    /// The first address of sandbox `name` (this world's name for it, see [`World::sb`]) on host `i`, from
    /// `nsnet inspect --json`.
    pub fn address(&self, i: usize, name: &str) -> Ipv4Addr {
        let v: serde_json::Value =
            serde_json::from_str(&self.ok(i, &["inspect", &self.sb(name), "--json"]))
                .expect("JSON");
        let cidr = v["endpoints"][0]["address"].as_str().expect("an address");
        cidr.split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .expect("an IPv4 address")
    }

    /// A command for nsnet inside host `i`, with its state dir.
    fn nsnet_command(&self, i: usize, args: &[&str]) -> Command {
        let mut cmd = command_in(&self.host_path(i), nsnet_bin(), args);
        cmd.env("NSNET_STATE_DIR", self.state_dir(i))
            // Not a cgroup: no [::1] translation in the world, never on the machine's root cgroup.
            .env("NSNET_CGROUP", self.state_dir(i))
            .env(TAG_ENV, &self.tag)
            // No upstream resolver: nothing is forwarded beyond the world.
            .env("NSNET_RESOLV_CONF", "/dev/null");
        cmd
    }

    /// Run nsnet inside host `i` with its state dir, whatever the outcome.
    pub fn nsnet(&self, i: usize, args: &[&str]) -> Output {
        output(&mut self.nsnet_command(i, args))
    }

    /// Run nsnet inside host `i`; it must succeed. Returns stdout.
    pub fn ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.nsnet(i, args);
        assert!(
            out.status.success(),
            "nsnet {args:?} on host {i} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run nsnet inside host `i`; it must fail with exactly one line on stderr. Returns that line.
    pub fn fails(&self, i: usize, args: &[&str]) -> String {
        check_one_line_failure(args, self.nsnet(i, args))
    }

    /// etcd's client URL.
    pub fn etcd_url(&self) -> String {
        format!("http://{ETCD_IP}:{ETCD_CLIENT_PORT}")
    }

    /// `ETCDCTL_API=3 etcdctl --endpoints <url> <args>` inside host 1, whatever the outcome.
    pub fn try_etcdctl(&self, args: &[&str]) -> Output {
        let endpoints = format!("--endpoints={}", self.etcd_url());
        let mut all = vec![endpoints.as_str()];
        all.extend_from_slice(args);
        let mut cmd = command_in(&self.host_path(1), "etcdctl", &all);
        cmd.env("ETCDCTL_API", "3").env(TAG_ENV, &self.tag);
        output(&mut cmd)
    }

    /// `ETCDCTL_API=3 etcdctl --endpoints <url> <args>` inside host 1; it must succeed. Returns stdout.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let out = self.try_etcdctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Start etcd (on the same data dir as before: what it held survives) and wait (up to 20 s) until it
    /// answers.
    pub fn start_etcd(&self) {
        let mut slot = lock(&self.etcd);
        if let Some(child) = slot.as_mut() {
            assert!(
                child.try_wait().expect("wait for etcd").is_some(),
                "etcd is running already"
            );
        }
        let data = self.dir().join("etcd-data");
        let url = self.etcd_url();
        let peer = "http://127.0.0.1:2380";
        let cluster = format!("world={peer}");
        let args = [
            "--name=world",
            &format!("--data-dir={}", data.display()),
            &format!("--listen-client-urls={url}"),
            &format!("--advertise-client-urls={url}"),
            &format!("--listen-peer-urls={peer}"),
            &format!("--initial-advertise-peer-urls={peer}"),
            &format!("--initial-cluster={cluster}"),
            "--initial-cluster-state=new",
            // One member: no peer can miss a heartbeat, and a short election timeout is a fast (re)start.
            "--heartbeat-interval=20",
            "--election-timeout=200",
            "--logger=zap",
            "--log-outputs=stderr",
        ]
        .map(|s| s.to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        *slot = Some(self.spawn_logged(
            &self.etcd_path(),
            Path::new(ETCD_BIN),
            &args,
            &[],
            &self.dir().join("etcd.log"),
        ));
        drop(slot);
        let healthy = wait_until(Duration::from_secs(20), || {
            assert!(
                self.etcd_running(),
                "etcd exited: {}",
                tail(&self.etcd_log(), 20)
            );
            self.etcd_healthy()
        });
        assert!(
            healthy,
            "etcd did not answer within 20 s: {}",
            tail(&self.etcd_log(), 20)
        );
    }

    /// Stop etcd with SIGTERM and wait for it to exit.
    pub fn stop_etcd(&self) {
        let mut child = lock(&self.etcd).take().expect("etcd was not started");
        stop(&mut child, Signal::SIGTERM);
    }

    /// Whether etcd's process is alive (not whether it answers).
    pub fn etcd_running(&self) -> bool {
        lock(&self.etcd)
            .as_mut()
            .is_some_and(|c| c.try_wait().expect("wait for etcd").is_none())
    }

    /// etcd's log so far (all runs).
    pub fn etcd_log(&self) -> String {
        fs::read_to_string(self.dir().join("etcd.log")).unwrap_or_default()
    }

    /// Whether etcd's `/health` says it is healthy (asked from inside its own namespace, so this holds
    /// whatever a test did to the hosts).
    fn etcd_healthy(&self) -> bool {
        let fd = netns::open(&self.etcd_path()).expect("open etcd's namespace");
        let to = SocketAddrV4::new(ETCD_IP, ETCD_CLIENT_PORT).into();
        netns::run_in(&fd, || -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(1))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"GET /health HTTP/1.0\r\n\r\n")?;
            let mut reply = String::new();
            s.read_to_string(&mut reply)?;
            Ok(reply)
        })
        .expect("enter etcd's namespace")
        .is_ok_and(|reply| reply.contains("\"health\":\"true\""))
    }

    /// Start `program args` inside the namespace at `ns` with the world's tag (and `env`), stdin empty and
    /// stdout and stderr appended to `log`.
    fn spawn_logged(
        &self,
        ns: &Path,
        program: &Path,
        args: &[&str],
        env: &[(&str, &Path)],
        log: &Path,
    ) -> Child {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open a log file");
        writeln!(file, "=== {} {}", program.display(), args.join(" ")).expect("write a log");
        let mut cmd = command_in(ns, program, args);
        cmd.env(TAG_ENV, &self.tag)
            .envs(env.iter().copied())
            .stdout(file.try_clone().expect("dup a log file"))
            .stderr(file);
        cmd.spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
    }

    fn agent_log_path(&self, i: usize) -> PathBuf {
        self.dir().join(format!("agent-{i}.log"))
    }

    /// Start `nsnet agent --etcd <url> --iface eth0 <extra>` inside host `i`, with its state dir; its output
    /// goes to [`World::agent_log`]. Host `i` must have no agent running.
    pub fn start_agent(&self, i: usize, extra: &[&str]) {
        let at = self.check_host(i);
        let mut agents = lock(&self.agents);
        if let Some(child) = agents[at].as_mut() {
            assert!(
                child.try_wait().expect("wait for an agent").is_some(),
                "host {i} has an agent running already"
            );
        }
        let url = self.etcd_url();
        let mut args = vec!["agent", "--etcd", url.as_str(), "--iface", "eth0"];
        args.extend_from_slice(extra);
        let state = self.state_dir(i);
        let env = vec![
            ("NSNET_STATE_DIR", state.as_path()),
            ("NSNET_CGROUP", &state),
        ];
        agents[at] = Some(self.spawn_logged(
            &self.host_path(i),
            &nsnet_bin(),
            &args,
            &env,
            &self.agent_log_path(i),
        ));
    }

    /// Send `signal` to host `i`'s agent (unless it has exited already) and wait (up to 15 s) for it to exit.
    pub fn kill_agent(&self, i: usize, signal: Signal) -> ExitStatus {
        let at = self.check_host(i);
        let mut child = lock(&self.agents)[at]
            .take()
            .unwrap_or_else(|| panic!("host {i} has no agent"));
        stop(&mut child, signal)
    }

    /// Whether host `i`'s agent is alive.
    pub fn agent_running(&self, i: usize) -> bool {
        let at = self.check_host(i);
        lock(&self.agents)[at]
            .as_mut()
            .is_some_and(|c| c.try_wait().expect("wait for an agent").is_none())
    }

    /// Host `i`'s agent's pid, while it has one started.
    pub fn agent_pid(&self, i: usize) -> Option<u32> {
        let at = self.check_host(i);
        lock(&self.agents)[at].as_ref().map(Child::id)
    }

    /// Everything host `i`'s agents have written so far (each start begins with a `===` line).
    pub fn agent_log(&self, i: usize) -> String {
        fs::read_to_string(self.agent_log_path(i)).unwrap_or_default()
    }

    /// Move host `i` to underlay address `ip` (same /24): its `eth0` address is replaced.
    pub fn set_host_ip(&self, i: usize, ip: Ipv4Addr) {
        let at = self.check_host(i);
        let mut ips = lock(&self.ips);
        let host = self.ns_name(&format!("h{i}"));
        // Old one first: deleting a primary address also deletes the secondaries of its subnet.
        let old = format!("{}/{UNDERLAY_PREFIX}", ips[at]);
        sh(&["ip", "-n", &host, "addr", "del", &old, "dev", "eth0"]);
        let new = format!("{ip}/{UNDERLAY_PREFIX}");
        sh(&["ip", "-n", &host, "addr", "add", &new, "dev", "eth0"]);
        ips[at] = ip;
    }

    /// Cut host `i` off the underlay (its port on ul0 goes down; the host sees no carrier), as if it died.
    pub fn host_link_down(&self, i: usize) {
        self.check_host(i);
        sh(&[
            "ip",
            "-n",
            &self.ns_name("ul"),
            "link",
            "set",
            &format!("h{i}"),
            "down",
        ]);
    }

    /// Reconnect host `i` to the underlay.
    pub fn host_link_up(&self, i: usize) {
        self.check_host(i);
        sh(&[
            "ip",
            "-n",
            &self.ns_name("ul"),
            "link",
            "set",
            &format!("h{i}"),
            "up",
        ]);
    }

    /// What of this world exists now (see [`leftovers_of`]); after the world is dropped, call
    /// `leftovers_of(&tag)` instead.
    pub fn leftovers(&self) -> Vec<String> {
        leftovers_of(&self.tag)
    }

    /// On a failing test: etcd's and every agent's log, for the test output.
    fn print_logs(&self) {
        eprintln!(
            "--- world {}: etcd log (tail) ---\n{}",
            self.tag,
            tail(&self.etcd_log(), 30)
        );
        for i in 1..=self.n_hosts {
            let log = self.agent_log(i);
            if !log.is_empty() {
                eprintln!("--- host {i}: agent log ---\n{}", tail(&log, 200));
            }
        }
    }
}

/// A lock that a panicking test thread left poisoned still guards consistent data here.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for World {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking && self.tmp.is_some() {
            self.print_logs();
        }
        // Agents first (they talk to etcd and hold links in the hosts), then etcd.
        for child in lock(&self.agents).iter_mut().flatten() {
            stop(child, Signal::SIGKILL);
        }
        if let Some(child) = lock(&self.etcd).as_mut() {
            stop(child, Signal::SIGKILL);
        }
        // Whatever they started: a leak, but the machine is cleaned up all the same (by pid, found by tag).
        let _ = wait_until(Duration::from_secs(2), || {
            tagged_processes(&self.tag).is_empty()
        });
        let strays = tagged_processes(&self.tag);
        for (pid, _) in &strays {
            if let Ok(pid) = i32::try_from(*pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        let _ = wait_until(Duration::from_secs(2), || {
            tagged_processes(&self.tag).is_empty()
        });
        // Sandboxes (the hosts' veths die with them), then the world's own namespaces, underlay last.
        for name in tagged_namespaces(&self.tag)
            .into_iter()
            .filter(|n| !self.made.contains(n))
        {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
        for name in self.made.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
        if let Some(tmp) = self.tmp.take() {
            let _ = tmp.close();
        }
        if !panicking {
            assert!(
                strays.is_empty(),
                "processes outlived their world (killed now): {strays:?}"
            );
            let left = leftovers_of(&self.tag);
            assert!(left.is_empty(), "left behind: {left:?}");
        }
    }
}
