//! Test harness: every test runs nsnet inside its own throwaway "host" network namespace, optionally with a
//! "LAN peer" namespace on the host's uplink, and removes everything it made when dropped.
#![allow(dead_code)]

pub mod dns;

use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use nsnet_core::probe;
use serde_json::Value;

/// The host's address on its uplink, and the LAN peer's (as in the seed article).
pub const HOST_IP: &str = "10.0.1.48";
pub const LAN_IP: &str = "10.0.1.26";
/// Their IPv6 addresses on the same link ([`TestHost::with_lan6`]; documentation prefix, RFC 3849).
pub const HOST_IP6: &str = "2001:db8:1::48";
pub const LAN_IP6: &str = "2001:db8:1::26";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The nsnet binary: this package's, or, for the CNI plugin's tests (which share this harness), the one
/// built beside `nsnet-cni` (`cargo test --workspace` builds both).
pub fn nsnet_bin() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_nsnet") {
        return PathBuf::from(p);
    }
    let cni = PathBuf::from(option_env!("CARGO_BIN_EXE_nsnet-cni").unwrap_or("nsnet-cni"));
    let nsnet = cni.with_file_name("nsnet");
    assert!(
        nsnet.exists(),
        "{} is not built; run the tests with `cargo test --workspace`",
        nsnet.display()
    );
    nsnet
}

/// Connect from `from` to `to`, with a one-shot server on port `listen` in sandbox `server_ns`; returns the
/// client address the server saw, or `None` when the connection failed.
pub fn reach(server_ns: &Path, listen: u16, from: &Path, to: SocketAddrV4) -> Option<Ipv4Addr> {
    let server = probe::tcp_server(server_ns, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, listen))
        .expect("listen");
    let hello = probe::tcp_hello(from, to);
    let seen = server.wait();
    match (hello, seen) {
        (Ok(_), Ok(peer)) => match peer.ip() {
            std::net::IpAddr::V4(v4) => Some(v4),
            std::net::IpAddr::V6(_) => None,
        },
        _ => None,
    }
}

/// [`reach`] over either family: the server listens on the destination's family's any-address.
pub fn reach_any(
    server_ns: &Path,
    listen: u16,
    from: &Path,
    to: std::net::SocketAddr,
) -> Option<std::net::IpAddr> {
    let any: std::net::IpAddr = if to.is_ipv6() {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    let server = probe::tcp_server(server_ns, (any, listen)).expect("listen");
    let hello = probe::tcp_hello(from, to);
    match (hello, server.wait()) {
        (Ok(_), Ok(peer)) => Some(peer.ip()),
        _ => None,
    }
}

/// The four paths to a published port (host port `port` -> port 80 of sandbox `a`) must all work: from a LAN
/// peer to the host's address (the sandbox sees the real client), from the host itself to 127.0.0.1 and to its
/// own address, from sandboxes `b` (same network) and `c` (another network) through the host's address, and
/// from `a` itself (hairpin).
pub fn assert_every_path(h: &TestHost, a: &str, b: &str, c: &str, port: u16) {
    let to = |ip: &str| SocketAddrV4::new(ip.parse().expect("test address"), port);
    let a_ns = h.sb_path(a);
    let lan: Ipv4Addr = LAN_IP.parse().expect("test address");
    assert_eq!(
        reach(&a_ns, 80, &h.lan_path(), to(HOST_IP)),
        Some(lan),
        "LAN peer -> host"
    );
    assert!(
        reach(&a_ns, 80, &h.host_path(), to("127.0.0.1")).is_some(),
        "host -> 127.0.0.1"
    );
    assert!(
        reach(&a_ns, 80, &h.host_path(), to(HOST_IP)).is_some(),
        "host -> own address"
    );
    assert!(
        reach(&a_ns, 80, &h.sb_path(b), to(HOST_IP)).is_some(),
        "same network"
    );
    assert!(
        reach(&a_ns, 80, &h.sb_path(c), to(HOST_IP)).is_some(),
        "other network"
    );
    assert!(
        reach(&a_ns, 80, &a_ns, to(HOST_IP)).is_some(),
        "hairpin to itself"
    );
}

pub struct TestHost {
    /// Netns name of the throwaway host.
    pub host: String,
    /// Netns name of the LAN peer, when there is one.
    pub lan: Option<String>,
    /// Prefix for every sandbox name this test uses (namespaces under /run/netns are global).
    pub tag: String,
    _tmp: tempfile::TempDir,
    pub state: PathBuf,
    /// `NSNET_FIREWALL` for every nsnet run, when set.
    pub firewall: Option<&'static str>,
    /// A throwaway cgroup v2 (`NSNET_CGROUP` for every nsnet run): the `[::1]` translation's programs go
    /// there, never onto the machine's real root cgroup. Removed on drop.
    pub cgroup: PathBuf,
}

/// The root of the cgroup2 mount (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid host).
pub fn cgroup2_root() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Run a command and insist it succeeds.
pub fn sh(args: &[&str]) -> String {
    let out = run(Command::new(args[0]).args(&args[1..]));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl TestHost {
    /// A throwaway host namespace with `lo` up and IPv6 off (no DAD churn in snapshots).
    pub fn new(test: &str) -> TestHost {
        TestHost::make(test, false)
    }

    /// A throwaway host namespace with `lo` up and IPv6 left on, for dual-stack tests.
    pub fn with_ipv6(test: &str) -> TestHost {
        TestHost::make(test, true)
    }

    fn make(test: &str, ipv6: bool) -> TestHost {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag = format!(
            "t{}{n}{}",
            std::process::id() % 100_000,
            &test[..test.len().min(6)]
        );
        let host = format!("nsnt-{tag}-host");
        sh(&["ip", "netns", "add", &host]);
        let tmp = tempfile::tempdir().expect("tempdir");
        let state = tmp.path().join("state");
        // The host's resolv.conf as nsnet's resolver reads it: no upstream server, so no query ever leaves
        // for a real resolver (tests that forward name one they start).
        fs::write(tmp.path().join("resolv.conf"), "# test host: no upstream\n")
            .expect("resolv.conf");
        // Without cgroup2, a path in the test's own temporary dir: nsnet then has no [::1] translation.
        let cgroup = match cgroup2_root() {
            Some(root) => root.join(format!("nsnet-test-{tag}")),
            None => tmp.path().join("no-cgroup2"),
        };
        fs::create_dir(&cgroup).expect("a throwaway cgroup");
        let h = TestHost {
            host,
            lan: None,
            tag,
            _tmp: tmp,
            state,
            firewall: None,
            cgroup,
        };
        h.in_host(&["ip", "link", "set", "lo", "up"]);
        if !ipv6 {
            h.in_host(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
            h.in_host(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        }
        h
    }

    /// A host with an uplink `uplink0` (10.0.1.48/24) to a LAN peer namespace (`lan0`, 10.0.1.26/24).
    pub fn with_lan(test: &str) -> TestHost {
        TestHost::lan_of(TestHost::new(test), false)
    }

    /// [`TestHost::with_lan`] with IPv6 on: `uplink0` also holds 2001:db8:1::48/64 and `lan0`
    /// 2001:db8:1::26/64, both without DAD (link-local addresses too), so they are usable at once and no
    /// address or route turns up later in a snapshot.
    pub fn with_lan6(test: &str) -> TestHost {
        let h = TestHost::lan_of(TestHost::with_ipv6(test), true);
        let lan = h.lan.clone().expect("the LAN peer was just made");
        h.in_host(&[
            "ip",
            "addr",
            "add",
            &format!("{HOST_IP6}/64"),
            "dev",
            "uplink0",
            "nodad",
        ]);
        sh(&[
            "ip",
            "-n",
            &lan,
            "addr",
            "add",
            &format!("{LAN_IP6}/64"),
            "dev",
            "lan0",
            "nodad",
        ]);
        h
    }

    fn lan_of(mut h: TestHost, ipv6: bool) -> TestHost {
        let lan = format!("nsnt-{}-lan", h.tag);
        sh(&["ip", "netns", "add", &lan]);
        h.lan = Some(lan.clone());
        sh(&[
            "ip", "-n", &h.host, "link", "add", "uplink0", "type", "veth", "peer", "name", "lan0",
            "netns", &lan,
        ]);
        h.in_host(&[
            "ip",
            "addr",
            "add",
            &format!("{HOST_IP}/24"),
            "dev",
            "uplink0",
        ]);
        if ipv6 {
            h.in_host(&["sysctl", "-qw", "net.ipv6.conf.uplink0.accept_dad=0"]);
            sh(&[
                "ip",
                "netns",
                "exec",
                &lan,
                "sysctl",
                "-qw",
                "net.ipv6.conf.lan0.accept_dad=0",
            ]);
        }
        h.in_host(&["ip", "link", "set", "uplink0", "up"]);
        sh(&[
            "ip",
            "-n",
            &lan,
            "addr",
            "add",
            &format!("{LAN_IP}/24"),
            "dev",
            "lan0",
        ]);
        sh(&["ip", "-n", &lan, "link", "set", "lan0", "up"]);
        sh(&["ip", "-n", &lan, "link", "set", "lo", "up"]);
        h
    }

    pub fn host_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.host)
    }

    /// The host's resolv.conf as this test's nsnet reads it (`NSNET_RESOLV_CONF`).
    pub fn resolv_conf(&self) -> PathBuf {
        self._tmp.path().join("resolv.conf")
    }

    /// This test's sandboxes' files under /etc/netns (their resolv.conf).
    pub fn etc_netns(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir("/etc/netns")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&self.tag))
                    .map(|n| format!("/etc/netns/{n}"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The pid of the resolver serving this test's state dir, if one runs.
    pub fn resolver_pid(&self) -> Option<i32> {
        let pid: i32 = fs::read_to_string(self.state.join("dns.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            .is_ok()
            .then_some(pid)
    }

    pub fn lan_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(self.lan.as_ref().expect("test has no LAN peer"))
    }

    /// This test's name for a sandbox.
    pub fn sb(&self, name: &str) -> String {
        format!("{}-{name}", self.tag)
    }

    /// The namespace path of one of this test's sandboxes.
    pub fn sb_path(&self, name: &str) -> PathBuf {
        PathBuf::from("/run/netns").join(self.sb(name))
    }

    /// Run a command inside the host namespace; must succeed.
    pub fn in_host(&self, args: &[&str]) -> String {
        let net = format!("--net={}", self.host_path().display());
        let mut full = vec!["nsenter", net.as_str(), "--"];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Run nsnet inside the host namespace with this test's state dir.
    pub fn nsnet_raw(&self, prefix: &[&str], args: &[&str]) -> Output {
        run(&mut self.command(prefix, args))
    }

    /// nsnet (after `prefix`, a wrapper such as `strace`) inside the host namespace, with this test's state
    /// dir and firewall backend.
    fn command(&self, prefix: &[&str], args: &[&str]) -> Command {
        let net = format!("--net={}", self.host_path().display());
        let mut cmd = Command::new("nsenter");
        cmd.arg(&net)
            .arg("--")
            .args(prefix)
            .arg(nsnet_bin())
            .args(args);
        cmd.env("NSNET_STATE_DIR", &self.state);
        cmd.env("NSNET_RESOLV_CONF", self.resolv_conf());
        cmd.env("NSNET_CGROUP", &self.cgroup);
        if let Some(backend) = self.firewall {
            cmd.env("NSNET_FIREWALL", backend);
        }
        cmd
    }

    /// Start nsnet inside the host namespace without waiting for it. `nsenter` execs it (no fork), so the
    /// child's pid is nsnet's once [`wait_for_exec`] says so.
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        let mut cmd = self.command(&[], args);
        cmd.stdin(std::process::Stdio::null());
        cmd.spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
    }

    pub fn nsnet(&self, args: &[&str]) -> Output {
        self.nsnet_raw(&[], args)
    }

    /// Run nsnet with extra environment variables.
    pub fn nsnet_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.command(&[], args);
        cmd.envs(env.iter().copied());
        run(&mut cmd)
    }

    /// Run nsnet; it must succeed. Returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.nsnet(args);
        assert!(
            out.status.success(),
            "nsnet {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run nsnet; it must fail with exactly one line on stderr. Returns that line.
    pub fn fails(&self, args: &[&str]) -> String {
        check_one_line_failure(args, self.nsnet(args))
    }

    /// Turn this host's nsnet tables into what an nsnet before issue #19's C7 kept: the main table as
    /// `ip nsnet` (the same IPv4 sets, elements, chains and rules; no IPv6 set or rule), no `inet nsnet`.
    pub fn make_legacy_tables(&self) {
        let inet = self.in_host(&["nft", "list", "table", "inet", "nsnet"]);
        let mut legacy = String::new();
        let mut lines = inet.lines().peekable();
        while let Some(line) = lines.next() {
            let t = line.trim();
            if t.starts_with("set ") || t.starts_with("map ") {
                let mut block = vec![line];
                for inner in lines.by_ref() {
                    block.push(inner);
                    if inner.trim() == "}" {
                        break;
                    }
                }
                if !block.iter().any(|l| l.contains("ipv6_addr")) {
                    block
                        .iter()
                        .for_each(|l| legacy.push_str(&format!("{l}\n")));
                }
                continue;
            }
            if t.contains("ip6 ") || t.contains("nfproto ipv6") {
                continue;
            }
            let line = line
                .replace("table inet nsnet", "table ip nsnet")
                .replace("meta nfproto ipv4 ", "");
            legacy.push_str(&format!("{line}\n"));
        }
        let file = self.state.with_file_name("legacy.nft");
        fs::write(&file, format!("delete table inet nsnet\n{legacy}")).expect("write legacy.nft");
        self.in_host(&["nft", "-f", &file.to_string_lossy()]);
        fs::remove_file(&file).expect("remove legacy.nft");
    }

    /// `nsnet inspect NAME --json`, parsed.
    pub fn inspect(&self, name: &str) -> Value {
        serde_json::from_str(&self.ok(&["inspect", name, "--json"]))
            .expect("inspect --json is JSON")
    }

    /// The MAC of sandbox `name`'s first endpoint, from its record.
    pub fn mac(&self, name: &str) -> [u8; 6] {
        parse_mac(
            self.inspect(name)["endpoints"][0]["mac"]
                .as_str()
                .unwrap_or_default(),
        )
    }

    /// The global IPv6 address (without its prefix) of sandbox `name`'s first endpoint, from its record.
    pub fn address6(&self, name: &str) -> Ipv6Addr {
        self.inspect(name)["endpoints"][0]["ipv6"]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{name} has no IPv6 address in its record"))
    }

    /// The link-local address the eth0 of this test's sandbox `sb` holds.
    pub fn link_local6(&self, sb: &str) -> Ipv6Addr {
        let ns = format!("--net={}", self.sb_path(sb).display());
        let text = sh(&[
            "nsenter", &ns, "--", "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link",
        ]);
        text.split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .expect("a link-local address")
    }

    /// ICMPv6 echo requests this test's sandbox `sb` has received (its namespace's Icmp6InEchos).
    pub fn echoes6(&self, sb: &str) -> u64 {
        let ns = format!("--net={}", self.sb_path(sb).display());
        sh(&["nsenter", &ns, "--", "cat", "/proc/net/snmp6"])
            .lines()
            .find_map(|l| l.strip_prefix("Icmp6InEchos"))
            .and_then(|v| v.trim().parse().ok())
            .expect("Icmp6InEchos")
    }

    /// Everything a command could change: the host's links, addresses, routes and ruleset, the state dir, and
    /// this test's namespaces.
    pub fn snapshot(&self) -> Snapshot {
        self.settle();
        let link_list: Value =
            serde_json::from_str(&self.in_host(&["ip", "-j", "link"])).expect("ip -j link");
        let links = link_list
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| {
                format!(
                    "{} mtu={} master={} mac={}",
                    l["ifname"], l["mtu"], l["master"], l["address"]
                )
            })
            .collect();
        let addrs: Value =
            serde_json::from_str(&self.in_host(&["ip", "-j", "addr"])).expect("ip -j addr");
        let addrs = addrs
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|l| {
                let name = l["ifname"].to_string();
                l["addr_info"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(move |a| format!("{name} {}/{}", a["local"], a["prefixlen"]))
            })
            .collect();
        // Routes without their flags: `linkdown` follows a bridge's carrier, which the kernel updates
        // asynchronously (linkwatch) after its last port goes.
        let routes: Value = serde_json::from_str(
            &self.in_host(&["ip", "-4", "-j", "route", "show", "table", "all"]),
        )
        .expect("ip -j route");
        // IPv6 routes apart (none on a host with IPv6 off): `table all` without a family lists some of them.
        let routes6: Value = serde_json::from_str(
            &self.in_host(&["ip", "-6", "-j", "route", "show", "table", "all"]),
        )
        .expect("ip -6 -j route");
        let routes: Vec<String> = routes
            .as_array()
            .into_iter()
            .flatten()
            .chain(routes6.as_array().into_iter().flatten())
            .map(|r| {
                let mut r = r.clone();
                if let Some(o) = r.as_object_mut() {
                    o.remove("flags");
                }
                r.to_string()
            })
            .collect();
        // The ruleset without handles: they are the kernel's bookkeeping, and a rebuild (`firewall reload`,
        // `gc`) gives the same rules new ones.
        let mut ruleset: Value =
            serde_json::from_str(&self.in_host(&["nft", "-j", "list", "ruleset"])).expect("nft -j");
        strip_handles(&mut ruleset);
        let ruleset = ruleset.to_string();
        // Sorted: listing order follows interface indexes, which a deleted and re-created link changes.
        let (mut links, mut addrs, mut routes): (Vec<String>, Vec<String>, Vec<String>) =
            (links, addrs, routes);
        links.sort();
        addrs.sort();
        routes.sort();
        let mut state = Vec::new();
        walk(&self.state, &self.state, &mut state);
        let mut namespaces = self.tagged_namespaces();
        namespaces.extend(self.etc_netns());
        let fast_path = self.fast_path_of(&link_list);
        let loopback6 = self.loopback6();
        Snapshot {
            links,
            addrs,
            routes,
            ruleset,
            state,
            namespaces,
            fast_path,
            loopback6,
        }
    }

    /// The `[::1]` translation on this test's cgroup: every program named `nsnet_*` attached there (hook and
    /// name, as `bpftool cgroup show` lists them), and the published ports in the map of this host's ones.
    pub fn loopback6(&self) -> Vec<String> {
        let mut out = self.loopback6_programs();
        let fd =
            nsnet_core::kernel::netns::open(&self.host_path()).expect("open the host namespace");
        let cgroup = self.cgroup.clone();
        let ports = nsnet_core::kernel::netns::run_in(&fd, move || {
            nsnet_core::kernel::loopback6::Loopback6::find(&cgroup)
                .expect("find the [::1] programs")
                .map(|lo| lo.ports().expect("list the [::1] map"))
                .unwrap_or_default()
        })
        .expect("enter the host namespace");
        out.extend(
            ports
                .iter()
                .map(|(proto, port)| format!("[::1] port {proto}/{port}")),
        );
        out.sort();
        out
    }

    /// The programs named `nsnet_*` attached to this test's cgroup: "cgroup HOOK NAME" each.
    pub fn loopback6_programs(&self) -> Vec<String> {
        // Not a cgroup (a host without cgroup2): nothing can be attached there.
        let out = run(Command::new("bpftool")
            .args(["-j", "cgroup", "show"])
            .arg(&self.cgroup));
        let shown = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || shown.trim().is_empty() {
            return Vec::new();
        }
        let progs: Value = serde_json::from_str(&shown).expect("bpftool -j cgroup show");
        progs
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("nsnet")))
            .map(|p| {
                let text = |k: &str| p[k].as_str().unwrap_or_default().to_string();
                format!("cgroup {} {}", text("attach_type"), text("name"))
            })
            .collect()
    }

    /// Run `python3` client `mode` (`tcp` or `udp`) to `[host]:port` from namespace `ns`, as a process of
    /// this test's cgroup (where the `[::1]` programs act); returns "[peer]:port greeting" as the client saw
    /// it, or "ERR ...".
    pub fn client6(&self, ns: &Path, mode: &str, host: &str, port: u16) -> String {
        const CLIENT: &str = r#"
import socket, sys
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if mode == "tcp":
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.settimeout(3)
        s.connect((host, port))
        peer = s.getpeername()
        line = s.makefile().readline().strip()
    else:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.settimeout(3)
        s.sendto(b"hi", (host, port))
        data, peer = s.recvfrom(128)
        line = data.decode()
    print("[%s]:%d %s" % (peer[0], peer[1], line))
except Exception as e:
    print("ERR", e)
"#;
        let procs = self.cgroup.join("cgroup.procs");
        let join = format!(
            "echo $$ > {} && exec python3 -c \"$0\" \"$@\"",
            procs.display()
        );
        let net = format!("--net={}", ns.display());
        let port = port.to_string();
        sh(&[
            "nsenter", &net, "--", "sh", "-c", &join, CLIENT, mode, host, &port,
        ])
        .trim()
        .to_string()
    }

    /// The fast path as the kernel holds it in the host namespace: the tc bpf filters on every link (by
    /// program name), and every bridge's map (address -> port name and MAC). Port indexes are shown as names,
    /// since a re-created veth gets a new index.
    pub fn fast_path(&self) -> Vec<String> {
        let links: Value =
            serde_json::from_str(&self.in_host(&["ip", "-j", "link"])).expect("ip -j link");
        self.fast_path_of(&links)
    }

    /// [`TestHost::fast_path`], given the host's links as `ip -j link` lists them.
    fn fast_path_of(&self, links: &Value) -> Vec<String> {
        use nsnet_core::kernel::fastpath::FastPath;
        use nsnet_core::kernel::{FilterAt, Netlink, TcHook};
        let names: std::collections::HashMap<u32, String> = links
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| {
                Some((
                    u32::try_from(l["ifindex"].as_u64()?).ok()?,
                    l["ifname"].as_str()?.to_string(),
                ))
            })
            .collect();
        let name = |i: &u32| names.get(i).cloned().unwrap_or_else(|| format!("#{i}"));
        let fd =
            nsnet_core::kernel::netns::open(&self.host_path()).expect("open the host namespace");
        let mut out = nsnet_core::kernel::netns::run_in(&fd, || {
            let mut nl = Netlink::open().expect("netlink in the host namespace");
            let mut out = Vec::new();
            for index in names.keys() {
                for (hook, side) in [(TcHook::Ingress, "ingress"), (TcHook::Egress, "egress")] {
                    let at = FilterAt::Link(*index, hook);
                    for f in nl.bpf_filters(at).expect("list tc filters") {
                        // An `ingress` qdisc answers for both hooks: its block is listed once.
                        if hook == TcHook::Egress && f.block.is_some() {
                            continue;
                        }
                        let on = f.block.map(|b| format!(" (block {b})")).unwrap_or_default();
                        out.push(format!("{} tc {side}: {}{on}", name(index), f.name));
                    }
                }
                let fast_path = FastPath::of_bridge(&mut nl, &name(index));
                if let Some(fp) = fast_path.expect("find a fast path") {
                    for (ip, port, mac) in fp.entries().expect("list a fast path") {
                        out.push(format!(
                            "{} fast path: {ip} -> {} {mac:02x?}",
                            name(index),
                            name(&port)
                        ));
                    }
                }
            }
            out
        })
        .expect("enter the host namespace");
        out.sort();
        out
    }

    /// Run `f` on the fast path of bridge `bridge` in the host namespace (with a netlink socket there).
    pub fn with_fast_path<T: Send>(
        &self,
        bridge: &str,
        f: impl FnOnce(&nsnet_core::kernel::fastpath::FastPath, &mut nsnet_core::kernel::Netlink) -> T
            + Send,
    ) -> T {
        use nsnet_core::kernel::fastpath::FastPath;
        let fd =
            nsnet_core::kernel::netns::open(&self.host_path()).expect("open the host namespace");
        nsnet_core::kernel::netns::run_in(&fd, || {
            let mut nl = nsnet_core::kernel::Netlink::open().expect("netlink");
            let fp = FastPath::of_bridge(&mut nl, bridge)
                .expect("find the fast path")
                .expect("the bridge has a fast path");
            f(&fp, &mut nl)
        })
        .expect("enter the host namespace")
    }

    /// Wait (up to 3 s) until no nsnet host veth is left that no record owns. `nsnet rm` of an idle namespace
    /// only unmounts it; the kernel destroys the namespace and its veth pairs moments later, in the background.
    /// A veth that outlives the wait is a real leak, and the snapshot shows it.
    pub fn settle(&self) {
        for _ in 0..150 {
            let mut owned: Vec<String> = Vec::new();
            if let Ok(dir) = fs::read_dir(self.state.join("sandboxes")) {
                for e in dir.flatten() {
                    let text = fs::read_to_string(e.path()).unwrap_or_default();
                    let sb: Value = serde_json::from_str(&text).unwrap_or_default();
                    for ep in sb["endpoints"].as_array().into_iter().flatten() {
                        if let Some(h) = ep["host_interface"].as_str() {
                            owned.push(h.to_string());
                        }
                    }
                }
            }
            let links = self.link_names();
            // A sandbox's host veth (`vethXXXXXXXX`), or a veth-driver network's (`nsve-…`), that no record
            // holds: the kernel deletes it with its namespace, moments after the command returns.
            let stray = links.iter().any(|l| {
                let hashed = l.len() == 12
                    && l.starts_with("veth")
                    && l[4..].chars().all(|c| c.is_ascii_hexdigit());
                (hashed || l.starts_with("nsve-")) && !owned.contains(l)
            });
            // Retired veths (strays above, until deleted) go with their reaper, which then gives their
            // addresses back.
            let retired = self.state.join("networks").exists()
                && String::from_utf8_lossy(&self.nsnet(&["network", "ls", "--json"]).stdout)
                    .contains("\"~veth");
            if !stray && !retired {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// This test's sandbox namespaces under /run/netns (its host and LAN peer are named `nsnt-...`).
    pub fn tagged_namespaces(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir("/run/netns")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&self.tag))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Wait (up to 3 s) until sandbox `sb`'s host veths are gone: a namespace deleted behind nsnet's back (`ip
    /// netns del`, a container that exited) is destroyed by the kernel in the background, veths and all.
    pub fn wait_veths_gone(&self, sb: &str) {
        let veths: Vec<String> = self.inspect(sb)["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["host_interface"].as_str().map(str::to_string))
            .collect();
        let left = || {
            let links = self.link_names();
            veths.iter().any(|v| links.contains(v))
        };
        for _ in 0..300 {
            if !left() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!left(), "the veths of {sb} outlived its namespace");
    }

    /// Listing of every link name in the host.
    pub fn link_names(&self) -> Vec<String> {
        let links: Value =
            serde_json::from_str(&self.in_host(&["ip", "-j", "link"])).expect("ip -j link");
        links
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect()
    }
}

/// The name (`comm`) and parent pid of process `pid`, from `/proc/PID/stat`; `None` once it is gone.
pub fn process(pid: u32) -> Option<(String, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `PID (COMM) STATE PPID ...`; COMM may hold spaces and parentheses, so split at the last ')'.
    let (head, tail) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let ppid = tail.split_whitespace().nth(1)?.parse().ok()?;
    Some((comm, ppid))
}

/// Wait (up to 10 s) until a child of `parent` runs program `comm`; returns its pid.
pub fn wait_for_child(parent: u32, comm: &str) -> u32 {
    for _ in 0..500 {
        let found = fs::read_dir("/proc").ok().and_then(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .find(|pid| process(*pid).is_some_and(|(c, pp)| pp == parent && c == comm))
        });
        if let Some(pid) = found {
            return pid;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("process {parent} started no {comm} within 10 s");
}

/// Wait (up to 10 s) until `pid` has exec'ed program `comm`.
pub fn wait_for_exec(pid: u32, comm: &str) {
    for _ in 0..500 {
        if process(pid).is_some_and(|(c, _)| c == comm) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("process {pid} did not become {comm} within 10 s");
}

/// Wait (up to 15 s) for `child` to exit; kills it and fails the test if it does not.
pub fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    for _ in 0..750 {
        if let Some(status) = child.try_wait().expect("wait for a child") {
            return status;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("process {} did not exit within 15 s", child.id());
}

/// `02:6e:0a:59:00:02` as bytes (a malformed one fails the test).
pub fn parse_mac(text: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.split(':').collect();
    assert_eq!(parts.len(), 6, "not a MAC: {text:?}");
    for (slot, part) in mac.iter_mut().zip(parts) {
        *slot = u8::from_str_radix(part, 16).unwrap_or_else(|_| panic!("not a MAC: {text:?}"));
    }
    mac
}

/// The Internet checksum (RFC 1071) of `bytes`, ready to store big-endian: over a header whose checksum field
/// is zero it gives the field's value; over a whole, correct header it gives 0.
pub fn inet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0)))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // Folded: `sum` fits in its low 16 bits now.
    let [_, _, hi, lo] = sum.to_be_bytes();
    !u16::from_be_bytes([hi, lo])
}

/// An IPv4 header (no options) for `payload_len` bytes of protocol `protocol` from `src` to `dst`: ID 1, DF,
/// TTL 64, header checksum filled in.
pub fn ipv4_header(protocol: u8, src: Ipv4Addr, dst: Ipv4Addr, payload_len: usize) -> Vec<u8> {
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, protocol, 0, 0];
    let total = u16::try_from(20 + payload_len).expect("a packet of at most 64 KiB");
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend(src.octets());
    ip.extend(dst.octets());
    let sum = inet_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip
}

/// An IPv6 header for `payload_len` bytes of next header `next` from `src` to `dst`: hop limit 255 (as
/// neighbour discovery requires), no flow label.
pub fn ipv6_header(next: u8, src: Ipv6Addr, dst: Ipv6Addr, payload_len: usize) -> Vec<u8> {
    let mut ip = vec![0x60, 0, 0, 0];
    let len = u16::try_from(payload_len).expect("a payload of at most 64 KiB");
    ip.extend(len.to_be_bytes());
    ip.extend([next, 255]);
    ip.extend(src.octets());
    ip.extend(dst.octets());
    ip
}

/// The checksum of an upper-layer IPv6 message (ICMPv6, TCP, UDP): over the pseudo-header (RFC 8200 §8.1)
/// and `message`, whose checksum field is zero.
pub fn ipv6_checksum(next: u8, src: Ipv6Addr, dst: Ipv6Addr, message: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40 + message.len());
    pseudo.extend(src.octets());
    pseudo.extend(dst.octets());
    let len = u32::try_from(message.len()).expect("a message of at most 4 GiB");
    pseudo.extend(len.to_be_bytes());
    pseudo.extend([0, 0, 0, next]);
    pseudo.extend(message);
    inet_checksum(&pseudo)
}

/// An Ethernet frame carrying one ICMPv6 message of `kind` and `code` with `body` (what follows the
/// checksum), from `src` to `dst`, the checksum filled in.
pub fn icmpv6_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    kind: u8,
    code: u8,
    body: &[u8],
) -> Vec<u8> {
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend(body);
    let sum = ipv6_checksum(58, src, dst, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut frame = dst_mac.to_vec();
    frame.extend(src_mac);
    frame.extend(0x86ddu16.to_be_bytes());
    frame.extend(ipv6_header(58, src, dst, icmp.len()));
    frame.extend(icmp);
    frame
}

pub fn check_one_line_failure(args: &[&str], out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "nsnet {args:?} should have failed; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "nsnet {args:?}: error is not one line: {stderr:?}"
    );
    assert!(stderr.starts_with("nsnet: "), "{stderr}");
    stderr.trim_end().to_string()
}

fn strip_handles(v: &mut Value) {
    match v {
        Value::Object(o) => {
            o.remove("handle");
            o.values_mut().for_each(strip_handles);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_handles),
        _ => {}
    }
}

/// A network ledger by its live entries, sorted: a sandbox created and removed again appends lines (and moves
/// the cursor) but hands back exactly what it took. `None` when nothing is live.
fn live_ledger(text: &str) -> Option<String> {
    let mut ips = std::collections::BTreeMap::new();
    let mut ports: Vec<&str> = Vec::new();
    for line in text.lines() {
        let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
        match kind {
            "+ip" => {
                let (ip, owner) = rest.split_once(' ').unwrap_or((rest, ""));
                ips.insert(ip, owner);
            }
            "-ip" => {
                ips.remove(rest);
            }
            "+port" => ports.push(rest),
            "-port" => {
                if let Some(i) = ports.iter().position(|p| *p == rest) {
                    ports.remove(i);
                }
            }
            _ => {}
        }
    }
    ports.sort_unstable();
    (!ips.is_empty() || !ports.is_empty()).then(|| format!("{ips:?} {ports:?}"))
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
        if p.is_dir() {
            out.push(format!("{rel}/"));
            walk(root, &p, out);
        } else {
            // Without a network's allocation cursor: it moves on with every address handed out (next fit), so
            // a sandbox created and removed again rightly leaves it elsewhere.
            let text = fs::read_to_string(&p).unwrap_or_default();
            // A free intent slot: left for the next command to reuse.
            if rel.starts_with("intents/") && text.is_empty() {
                continue;
            }
            // The resolver's own files (its lock, pid and socket): a process's, not records.
            if rel.starts_with("dns.") {
                continue;
            }
            if let Some(name) = rel
                .strip_prefix("networks/")
                .and_then(|r| r.strip_suffix(".index"))
            {
                // A cache of the ledger: it may be stale or missing, but one that claims to be current must
                // agree with the ledger exactly. It is not part of the state compared.
                let store = nsnet_core::store::Store::new(root);
                assert!(
                    store.index_agrees(name),
                    "the index of network {name} is current but disagrees with its ledger"
                );
                continue;
            }
            if rel.ends_with(".ledger") {
                // One with nothing live holds only history (and the cursor): the same as none.
                if let Some(live) = live_ledger(&text) {
                    out.push(format!("{rel}: {live}"));
                }
                continue;
            }
            let text = match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(mut o)) if rel.starts_with("networks/") => {
                    o.remove("last_allocated");
                    Value::Object(o).to_string()
                }
                _ => text,
            };
            out.push(format!("{rel}: {text}"));
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub links: Vec<String>,
    pub addrs: Vec<String>,
    pub routes: Vec<String>,
    pub ruleset: String,
    pub state: Vec<String>,
    pub namespaces: Vec<String>,
    pub fast_path: Vec<String>,
    pub loopback6: Vec<String>,
}

impl Snapshot {
    /// The fields that differ, for a readable failure message.
    pub fn diff(&self, other: &Snapshot) -> String {
        let mut out = String::new();
        let mut field = |name: &str, a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| {
            let (a, b) = (format!("{a:#?}"), format!("{b:#?}"));
            if a != b {
                out.push_str(&format!("{name}:\n  left:  {a}\n  right: {b}\n"));
            }
        };
        field("links", &self.links, &other.links);
        field("addrs", &self.addrs, &other.addrs);
        field("routes", &self.routes, &other.routes);
        field("ruleset", &self.ruleset, &other.ruleset);
        field("state", &self.state, &other.state);
        field("namespaces", &self.namespaces, &other.namespaces);
        field("fast_path", &self.fast_path, &other.fast_path);
        field("loopback6", &self.loopback6, &other.loopback6);
        out
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        // A resolver still running serves sandboxes the test left: it goes first (its sockets hold their
        // namespaces).
        let resolver = self.resolver_pid();
        if let Some(pid) = resolver {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Files a test left (as namespaces: a failing test's, or one it set aside on purpose) go too; what
        // cannot be removed is a leak.
        for dir in self.etc_netns() {
            let _ = fs::remove_dir_all(dir);
        }
        let _ = fs::remove_dir("/etc/netns");
        let etc = self.etc_netns();
        // Remove this test's sandboxes' namespaces if a failing test left any, then the host and LAN peer.
        for name in self.tagged_namespaces() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
        if let Some(lan) = &self.lan {
            let _ = Command::new("ip").args(["netns", "del", lan]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.host])
            .status();
        // The cgroup goes last: removing it also frees any program still attached (a test that left its
        // sandboxes to the namespaces' deletion; the snapshot is where a leak shows).
        let _ = fs::remove_dir(&self.cgroup);
        let leftovers: Vec<String> = fs::read_dir("/run/netns")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
            })
            .map(|names| names.filter(|n| n.contains(&self.tag)).collect())
            .unwrap_or_default();
        if !std::thread::panicking() {
            assert!(
                leftovers.is_empty(),
                "namespaces left behind: {leftovers:?}"
            );
            assert!(etc.is_empty(), "files left behind: {etc:?}");
            assert!(
                !self.cgroup.exists(),
                "cgroup left behind: {:?}",
                self.cgroup
            );
        }
    }
}

/// The holders of a network's addresses (sandbox names, `~LINK` for a retired veth), from `network inspect`.
pub fn holders(h: &TestHost, net: &str) -> Vec<String> {
    let v: Value =
        serde_json::from_str(&h.ok(&["network", "inspect", net, "--json"])).expect("JSON");
    v["allocations"]
        .as_object()
        .map(|m| {
            m.values()
                .filter_map(|o| o.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A sandbox's first endpoint's host veth.
pub fn host_veth(h: &TestHost, sb: &str) -> String {
    h.inspect(sb)["endpoints"][0]["host_interface"]
        .as_str()
        .expect("a host veth")
        .to_string()
}

/// Wait (up to `limit`) until `done` holds; says whether it did.
pub fn within(limit: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    loop {
        if done() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Processes (other than a resolver) whose environment holds `marker`: nsnet's detached child and its reaper
/// carry the command's environment.
pub fn processes_with(marker: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()) && *pid != me)
        .filter_map(|pid| {
            let env = fs::read(format!("/proc/{pid}/environ")).ok()?;
            let has = |needle: &[u8]| env.split(|b| *b == 0).any(|v| v.starts_with(needle));
            (has(marker.as_bytes()) && !has(b"NSNET_RESOLVER=")).then(|| {
                let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                format!(
                    "{pid}: {}",
                    String::from_utf8_lossy(&cmd).replace('\0', " ")
                )
            })
        })
        .collect()
}

/// Read `pipe` to its end on a thread of its own; the thread returns what it read and when the end came.
pub fn drain(
    pipe: Option<Box<dyn std::io::Read + Send>>,
) -> std::thread::JoinHandle<(String, std::time::Instant)> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_string(&mut text);
        }
        (text, std::time::Instant::now())
    })
}
