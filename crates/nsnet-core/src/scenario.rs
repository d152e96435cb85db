//! The seed article's walkthrough, in one place: the networks, sandboxes and published port it builds with
//! nsnet's own commands, and every check it makes with real packets; then the same on a dual-stack network,
//! checked over IPv6. `nsnet demo` runs it and prints each
//! check; `tests/article.rs` runs it and asserts each one. Each supplies a [`Runner`]: the throwaway host and
//! LAN peer namespaces, how to run nsnet in the host, and what a check's outcome does.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

use crate::kernel::netns;
use crate::probe;

/// The host's address on its uplink (`uplink0`, a /24), as in the article.
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 48);
/// The LAN peer's address, on the other end of the uplink.
pub const LAN_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 26);
/// The host's IPv6 address on its uplink (a /64 of the documentation prefix).
pub const HOST_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x48);
/// The LAN peer's IPv6 address.
pub const LAN_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x26);

/// What the scenario runs on: a host namespace with an uplink to a LAN peer namespace, in which nsnet runs.
pub trait Runner {
    /// The namespace nsnet runs in, with `uplink0` holding [`HOST_IP`] and [`HOST_IP6`].
    fn host(&self) -> PathBuf;
    /// The LAN peer's namespace, holding [`LAN_IP`] and [`LAN_IP6`].
    fn lan(&self) -> PathBuf;
    /// The name to give the scenario's sandbox `name` (`netns1`, ...): namespaces are host-wide, so each
    /// runner makes them its own.
    fn sandbox(&self, name: &str) -> String;
    /// A part of the walkthrough begins.
    fn step(&mut self, title: &str);
    /// Run `nsnet ARGS` in the host namespace; its stdout, or `None` when it failed (the runner reports that).
    fn nsnet(&mut self, args: &[&str]) -> Option<String>;
    /// The outcome of one check.
    fn check(&mut self, ok: bool, what: &str);
    /// Everything nsnet made so far is gone again (`after` names the part that made it).
    fn clean(&mut self, after: &str);
}

/// Run the walkthrough on `r`.
pub fn run(r: &mut impl Runner) {
    let (ns1, ns2, ns3) = (
        r.sandbox("netns1"),
        r.sandbox("netns2"),
        r.sandbox("netns3"),
    );
    let (host, lan) = (r.host(), r.lan());
    let (p1, p2, p3) = (
        netns::named_path(&ns1),
        netns::named_path(&ns2),
        netns::named_path(&ns3),
    );
    let ip = |d: u8| Ipv4Addr::new(172, 16, 0, d);

    r.step("1. A veth pair, point to point: host end 172.16.0.1, sandbox end 172.16.0.2");
    r.nsnet(&[
        "network",
        "create",
        "p2p",
        "--driver",
        "veth",
        "--subnet",
        "172.16.0.0/24",
        "--bridge",
        "veth1",
    ]);
    r.nsnet(&["create", &ns1, "--network", "p2p", "--ip", "172.16.0.2"]);
    ping(r, &host, "host -> sandbox", ip(2));
    ping(r, &p1, "sandbox -> host", ip(1));
    r.nsnet(&["rm", &ns1]);
    r.nsnet(&["network", "rm", "p2p"]);
    r.clean("the point-to-point part");

    r.step("2. A bridge br0 (172.16.0.100) joining two sandboxes, 172.16.0.102 and 172.16.0.103");
    r.nsnet(&[
        "network",
        "create",
        "br0net",
        "--subnet",
        "172.16.0.0/24",
        "--gateway",
        "172.16.0.100",
        "--bridge",
        "br0",
    ]);
    r.nsnet(&[
        "create",
        &ns2,
        "--network",
        "br0net",
        "--ip",
        "172.16.0.102",
        "-p",
        "8088:80",
    ]);
    r.nsnet(&[
        "create",
        &ns3,
        "--network",
        "br0net",
        "--ip",
        "172.16.0.103",
    ]);
    ping(r, &p2, "netns2 -> netns3", ip(103));
    ping(r, &p3, "netns3 -> netns2", ip(102));
    inspect(r, &ns2, &p2);
    // Between sandboxes of one network the source address stays (no masquerade inside a network).
    connect(
        r,
        (&p3, SocketAddrV4::new(ip(103), 7000)),
        (&p2, SocketAddrV4::new(ip(103), 7000)),
        ip(102),
        "netns2 -> netns3:7000",
    );

    r.step("3. Out to the LAN: default route via br0, forwarding, masquerade");
    connect(
        r,
        (&lan, SocketAddrV4::new(LAN_IP, 9000)),
        (&p2, SocketAddrV4::new(LAN_IP, 9000)),
        HOST_IP,
        "netns2 -> LAN peer :9000",
    );
    ping(r, &p3, "netns3 -> LAN peer", LAN_IP);

    r.step(&format!(
        "4. A published port: LAN peer -> {HOST_IP}:8088 reaches netns2:80"
    ));
    connect(
        r,
        (&p2, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80)),
        (&lan, SocketAddrV4::new(HOST_IP, 8088)),
        LAN_IP,
        &format!("LAN peer -> {HOST_IP}:8088"),
    );

    r.step("5. Removal");
    r.nsnet(&["rm", &ns2]);
    r.nsnet(&["rm", &ns3]);
    r.nsnet(&["network", "rm", "br0net"]);
    r.clean("the teardown");

    dual_stack(r, (&ns2, &p2), (&ns3, &p3));
}

/// Beyond the article: parts 2 to 5 again on a dual-stack network, checked over IPv6.
fn dual_stack(r: &mut impl Runner, (ns2, p2): (&str, &Path), (ns3, p3): (&str, &Path)) {
    let lan = r.lan();
    let ip6 = |d: u16| Ipv6Addr::new(0xfd00, 0x16, 0, 0, 0, 0, 0, d);
    let at = |ip: Ipv6Addr, port: u16| SocketAddr::new(IpAddr::V6(ip), port);
    r.step(
        "6. Beyond the article, dual stack: br1 holds 172.16.0.100 and fd00:16::100, the sandboxes both families",
    );
    r.nsnet(&[
        "network",
        "create",
        "br1net",
        "--subnet",
        "172.16.0.0/24",
        "--subnet",
        "fd00:16::/64",
        "--gateway",
        "172.16.0.100",
        "--gateway",
        "fd00:16::100",
        "--bridge",
        "br1",
    ]);
    r.nsnet(&[
        "create",
        ns2,
        "--network",
        "br1net",
        "--ip",
        "172.16.0.102",
        "--ip6",
        "fd00:16::102",
        "-p",
        "8088:80",
    ]);
    r.nsnet(&[
        "create",
        ns3,
        "--network",
        "br1net",
        "--ip",
        "172.16.0.103",
        "--ip6",
        "fd00:16::103",
    ]);
    ping(r, p2, "netns2 -> netns3", Ipv4Addr::new(172, 16, 0, 103));
    ping6(r, p2, "netns2 -> netns3", ip6(0x103));
    ping6(r, p3, "netns3 -> netns2", ip6(0x102));
    connect(
        r,
        (p3, at(ip6(0x103), 7000)),
        (p2, at(ip6(0x103), 7000)),
        IpAddr::V6(ip6(0x102)),
        "netns2 -> [fd00:16::103]:7000",
    );
    connect(
        r,
        (&lan, at(LAN_IP6, 9000)),
        (p2, at(LAN_IP6, 9000)),
        IpAddr::V6(HOST_IP6),
        "netns2 -> LAN peer [2001:db8:1::26]:9000 (NAT66)",
    );
    connect(
        r,
        (p2, at(Ipv6Addr::UNSPECIFIED, 80)),
        (&lan, at(HOST_IP6, 8088)),
        IpAddr::V6(LAN_IP6),
        &format!("LAN peer -> [{HOST_IP6}]:8088"),
    );
    r.nsnet(&["rm", ns2]);
    r.nsnet(&["rm", ns3]);
    r.nsnet(&["network", "rm", "br1net"]);
    r.clean("the dual-stack part");
}

fn ping6(r: &mut impl Runner, from: &Path, label: &str, to: Ipv6Addr) {
    let (ok, why) = match probe::ping6(from, to) {
        Ok(ok) => (ok, String::new()),
        Err(e) => (false, format!(" ({e})")),
    };
    r.check(ok, &format!("{label}: ping {to}{why}"));
}

fn ping(r: &mut impl Runner, from: &Path, label: &str, to: Ipv4Addr) {
    let (ok, why) = match probe::ping(from, to) {
        Ok(ok) => (ok, String::new()),
        Err(e) => (false, format!(" ({e})")),
    };
    r.check(ok, &format!("{label}: ping {to}{why}"));
}

/// A TCP connection from `from` to `to`, served by a one-shot server listening at `at` in namespace `server`,
/// which must see the client as `seen`.
fn connect(
    r: &mut impl Runner,
    (server, at): (&Path, impl Into<SocketAddr>),
    (from, to): (&Path, impl Into<SocketAddr>),
    seen: impl Into<IpAddr>,
    label: &str,
) {
    let (at, to, seen) = (at.into(), to.into(), seen.into());
    let listening = match probe::tcp_server(server, at) {
        Ok(s) => s,
        Err(e) => return r.check(false, &format!("{label}: cannot listen on {at}: {e}")),
    };
    let hello = probe::tcp_hello(from, to);
    let peer = listening.wait();
    r.check(
        hello.is_ok(),
        &format!(
            "{label} connected: {:?}",
            hello.as_deref().unwrap_or_default()
        ),
    );
    let got = peer.map(|a| a.ip().to_string()).unwrap_or_default();
    r.check(
        got == seen.to_string(),
        &format!("{label}: the server saw {seen} (saw {got:?})"),
    );
}

/// `nsnet inspect --json` shows the sandbox as the article built it.
fn inspect(r: &mut impl Runner, name: &str, path: &Path) {
    let Some(text) = r.nsnet(&["inspect", name, "--json"]) else {
        return;
    };
    let j: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let ep = &j["endpoints"][0];
    let expect: [(&serde_json::Value, serde_json::Value); 9] = [
        (&j["netns"], path.display().to_string().into()),
        (&ep["network"], "br0net".into()),
        (&ep["interface"], "eth0".into()),
        (&ep["mac"], "02:6e:ac:10:00:66".into()),
        (&ep["address"], "172.16.0.102/24".into()),
        (&ep["gateway"], "172.16.0.100".into()),
        (&ep["ports"][0]["host_port"], 8088.into()),
        (&ep["ports"][0]["container_port"], 80.into()),
        (&ep["ports"][0]["protocol"], "tcp".into()),
    ];
    let wrong: Vec<String> = expect
        .iter()
        .filter(|(got, want)| *got != want)
        .map(|(got, want)| format!("{got} instead of {want}"))
        .collect();
    let what = match wrong.is_empty() {
        true => "inspect shows netns2 as it was made".to_string(),
        false => format!("inspect shows netns2 with {}", wrong.join(", ")),
    };
    r.check(wrong.is_empty(), &what);
}
