//! IPv6-only networks (C14 of issue #19): `network create --ipv6 --ipv4=false`. The
//! twins of the IPv4 and dual-stack behaviour tests (published ports from every path, an internal network
//! with no way out, spoofing, names), the refusals, and the records.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use common::dns::dig;
use common::{TestHost, HOST_IP6, LAN_IP6};
use nsnet_core::probe;
use serde_json::Value;

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("JSON")
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("test address")
}

/// `network create NAME --ipv6 --ipv4=false` plus `extra`.
fn create_only6(h: &TestHost, name: &str, extra: &[&str]) {
    let mut args = vec!["network", "create", name, "--ipv6", "--ipv4=false"];
    args.extend(extra);
    h.ok(&args);
}

fn gateway6(h: &TestHost, net: &str) -> Ipv6Addr {
    let n = json(&h.ok(&["network", "inspect", net, "--json"]));
    v6(n["ipv6"]["gateway"].as_str().unwrap_or_default())
}

/// What a sandbox's namespace runs `args` to, as text.
fn in_sb(h: &TestHost, sb: &str, args: &[&str]) -> String {
    let ns = format!("--net={}", h.sb_path(sb).display());
    let mut all = vec!["nsenter", &ns, "--"];
    all.extend(args);
    common::sh(&all)
}

/// A namespace's counter `name` of /proc/net/snmp's `Icmp:` lines (InEchos, ...).
fn icmp4_counter(h: &TestHost, sb: &str, name: &str) -> u64 {
    let text = in_sb(h, sb, &["cat", "/proc/net/snmp"]);
    let mut lines = text.lines().filter(|l| l.starts_with("Icmp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        panic!("no Icmp lines in {text}");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .expect("the counter")
}

fn icmp6_in_echos(h: &TestHost, sb: &str) -> u64 {
    in_sb(h, sb, &["cat", "/proc/net/snmp6"])
        .lines()
        .find_map(|l| l.strip_prefix("Icmp6InEchos"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Icmp6InEchos")
}

/// An Ethernet frame with an ICMP echo request from `src` to `dst`.
fn icmp4_echo_frame(dst_mac: [u8; 6], src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0, 7, 0, 1];
    let sum = common::inet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut frame = dst_mac.to_vec();
    frame.extend(src_mac);
    frame.extend(0x0800u16.to_be_bytes());
    frame.extend(common::ipv4_header(1, src, dst, icmp.len()));
    frame.extend(icmp);
    frame
}

/// The records and the kernel of an IPv6-only network: no IPv4 subnet, gateway or address anywhere (JSON,
/// the sandbox's eth0, its routes), a `02:6c:` MAC, no `ip_forward` written, and `ls` showing the IPv6 subnet.
/// `ports.rs::a_published_port_works_from_every_path`'s IPv6-only twin then: from the LAN peer, the host, the
/// same network, another IPv6-only network and itself; IPv4 to the port reaches nothing. Everything goes with
/// `rm`.
#[test]
fn a_published_port_works_on_an_ipv6_only_network_from_every_path() {
    let h = TestHost::with_lan6("v6opub");
    // IPv6 forwarding stays on once on (with the uplink's subnet-router anycast routes): as a host has it.
    h.in_host(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    // IPv4 forwarding off in the throwaway host: an IPv6-only network must not turn it on.
    h.in_host(&["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    let forward4 = h.in_host(&["sysctl", "-n", "net.ipv4.ip_forward"]);
    assert_eq!(forward4.trim(), "0");
    let empty = h.snapshot();
    create_only6(&h, "v6o", &["--bridge", "nsbr-v6o"]);
    create_only6(&h, "other", &[]);
    let (a, b, c) = (h.sb("a"), h.sb("b"), h.sb("c"));
    h.ok(&[
        "create",
        &a,
        "--network",
        "v6o",
        "-p",
        "8080:80",
        "-p",
        &format!("[{HOST_IP6}]:8081:80"),
    ]);
    h.ok(&["create", &b, "--network", "v6o"]);
    h.ok(&["create", &c, "--network", "other"]);

    // Records: the IPv4 fields are left out, the IPv6 part is there.
    let n = json(&h.ok(&["network", "inspect", "v6o", "--json"]));
    let settings = if n.get("settings").is_some() {
        &n["settings"]
    } else {
        &n
    };
    assert!(
        settings.get("subnet").is_none() && settings.get("gateway").is_none(),
        "{n}"
    );
    assert!(settings["ipv6"]["subnet"].is_string(), "{n}");
    let ep = &h.inspect(&a)["endpoints"][0];
    assert!(
        ep.get("address").is_none() && ep.get("gateway").is_none(),
        "{ep}"
    );
    assert_eq!(h.mac(&a)[..2], [0x02, 0x6c]);
    let bridge = h.in_host(&["ip", "-o", "link", "show", "nsbr-v6o"]);
    assert!(bridge.contains("link/ether 02:6c:"), "{bridge}");
    let ls = h.ok(&["network", "ls"]);
    let subnet6 = settings["ipv6"]["subnet"].as_str().unwrap_or_default();
    assert!(ls.contains(subnet6), "{ls}");
    // The kernel: IPv6 only in the sandbox, IPv4 forwarding untouched.
    let addrs4 = in_sb(&h, "a", &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(addrs4.trim().is_empty(), "{addrs4}");
    let routes4 = in_sb(&h, "a", &["ip", "-4", "route"]);
    assert!(routes4.trim().is_empty(), "{routes4}");
    let routes6 = in_sb(&h, "a", &["ip", "-6", "route"]);
    assert!(routes6.contains("default via"), "{routes6}");
    assert_eq!(
        h.in_host(&["sysctl", "-n", "net.ipv4.ip_forward"]),
        forward4
    );
    let ports = h.in_host(&["nft", "list", "map", "inet", "nsnet", "ports"]);
    assert!(!ports.contains("8080"), "no IPv4 DNAT: {ports}");

    let a6 = h.address6(&a);
    // Same-network IPv6 takes the fast path, as on a dual-stack network.
    let fast = h.fast_path();
    assert!(
        fast.iter()
            .any(|l| l.contains(&format!(" fast path: {a6} -> "))),
        "{fast:?}"
    );
    let ports6 = h.in_host(&["nft", "list", "map", "inet", "nsnet", "ports6"]);
    assert!(
        ports6.contains(&format!("tcp . 8080 : {a6} . 80")),
        "{ports6}"
    );
    let to = |port| SocketAddr::new(v6(HOST_IP6).into(), port);
    let a_ns = h.sb_path("a");
    let gw = std::net::IpAddr::from(gateway6(&h, "v6o"));
    assert_eq!(
        common::reach_any(&a_ns, 80, &h.lan_path(), to(8080)),
        Some(v6(LAN_IP6).into()),
        "LAN peer -> host: the sandbox sees the real client"
    );
    assert_eq!(
        common::reach_any(&a_ns, 80, &h.lan_path(), to(8081)),
        Some(v6(LAN_IP6).into()),
        "LAN peer -> the port on the host's one IPv6 address"
    );
    assert!(
        common::reach_any(&a_ns, 80, &h.host_path(), to(8080)).is_some(),
        "host -> own IPv6 address"
    );
    assert_eq!(
        common::reach_any(&a_ns, 80, &h.sb_path("b"), to(8080)),
        Some(gw),
        "same network"
    );
    assert_eq!(
        common::reach_any(&a_ns, 80, &h.sb_path("c"), to(8080)),
        Some(gw),
        "other network"
    );
    assert_eq!(
        common::reach_any(&a_ns, 80, &a_ns, to(8080)),
        Some(gw),
        "hairpin to itself"
    );
    let v4 = SocketAddr::new(common::HOST_IP.parse().expect("address"), 8080);
    assert_eq!(
        common::reach_any(&a_ns, 80, &h.lan_path(), v4),
        None,
        "the port is not on IPv4"
    );
    for sb in [&a, &b, &c] {
        h.ok(&["rm", sb]);
    }
    h.ok(&["network", "rm", "v6o"]);
    h.ok(&["network", "rm", "other"]);
    assert_eq!(h.snapshot(), empty);
}

/// `attacks.rs::internal_network_has_no_way_out` on an IPv6-only network: even with a default route added
/// by hand, its sandbox reaches neither the LAN nor another network, nor they it.
#[test]
fn an_internal_ipv6_only_network_has_no_way_out() {
    let h = TestHost::with_lan6("v6oint");
    h.in_host(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    let empty = h.snapshot();
    create_only6(&h, "int", &["--internal"]);
    create_only6(&h, "out", &["--isolate=false"]);
    let (s, o) = (h.sb("s"), h.sb("o"));
    h.ok(&["create", &s, "--network", "int"]);
    h.ok(&["create", &o, "--network", "out", "-p", "8080:80"]);
    let gw = gateway6(&h, "int");
    let routes = in_sb(&h, "s", &["ip", "-6", "route"]);
    assert!(!routes.contains("default"), "{routes}");
    in_sb(
        &h,
        "s",
        &[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            &gw.to_string(),
        ],
    );
    let (s_ip, o_ip) = (h.address6(&s), h.address6(&o));
    assert!(
        probe::ping6(&h.sb_path("s"), gw).expect("ping"),
        "the gateway"
    );
    for (from, to, what) in [
        ("s", v6(LAN_IP6), "the LAN"),
        ("s", o_ip, "another network"),
        ("o", s_ip, "into the internal network"),
    ] {
        assert!(
            !probe::ping6(&h.sb_path(from), to).expect("ping"),
            "{from} reached {what}"
        );
    }
    assert!(
        !probe::ping6(&h.lan_path(), s_ip).expect("ping"),
        "the LAN reached the internal sandbox"
    );
    for to in [v6(HOST_IP6), gw] {
        let to = SocketAddr::new(to.into(), 8080);
        assert_eq!(
            common::reach_any(&h.sb_path("o"), 80, &h.sb_path("s"), to),
            None,
            "the internal sandbox reached a published port through {to}"
        );
    }
    h.ok(&["rm", &s]);
    h.ok(&["rm", &o]);
    h.ok(&["network", "rm", "int"]);
    h.ok(&["network", "rm", "out"]);
    assert_eq!(h.snapshot(), empty);
}

/// `ipv6.rs::sandboxes_cannot_spoof_ipv6_addresses_or_advertise_a_neighbours` on an IPv6-only network, and
/// what is new there: a hostile sandbox's port is in no IPv4 set, so it sends no IPv4 at all, not even to a
/// neighbour that gave itself an IPv4 address by hand.
#[test]
fn ipv6_only_sandboxes_cannot_spoof_or_speak_ipv4() {
    for backend in ["nftables", "iptables"] {
        spoofing(backend);
    }
}

/// With iptables, the guards are iptables' and ip6tables' raw tables (`physdev`).
fn spoofing(backend: &'static str) {
    let mut h = TestHost::with_ipv6("v6ospf");
    h.firewall = Some(backend);
    let empty = h.snapshot();
    create_only6(&h, "v6o", &["--bridge", "nsbr-v6ospf"]);
    let (evil, victim, other) = (h.sb("evil"), h.sb("victim"), h.sb("other"));
    for sb in [&evil, &victim, &other] {
        h.ok(&["create", sb, "--network", "v6o"]);
    }
    let (gw, victim_ip, other_ip, evil_ip) = (
        gateway6(&h, "v6o"),
        h.address6(&victim),
        h.address6(&other),
        h.address6(&evil),
    );
    let (evil_mac, victim_mac) = (h.mac(&evil), h.mac(&victim));
    assert_ne!(evil_mac, victim_mac);
    let send = |frames: &[Vec<u8>]| {
        probe::send_frames(&h.sb_path("evil"), "eth0", frames).expect("send raw frames");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let echo = |src: Ipv6Addr| {
        common::icmpv6_frame(victim_mac, evil_mac, src, victim_ip, 128, 0, &[0, 7, 0, 1])
    };
    let before = icmp6_in_echos(&h, "victim");
    send(&[echo(evil_ip)]);
    assert_eq!(
        icmp6_in_echos(&h, "victim"),
        before + 1,
        "evil's own source passes"
    );
    send(&[
        echo(other_ip),
        echo(gw),
        echo(v6("::")),
        echo(v6("fd00::bad")),
    ]);
    assert_eq!(
        icmp6_in_echos(&h, "victim"),
        before + 1,
        "{backend}: a forged IPv6 source reached the victim"
    );

    // IPv4: the victim takes an address by hand; evil's echo to it, from any source, is dropped at its port.
    in_sb(
        &h,
        "victim",
        &["ip", "addr", "add", "192.0.2.2/24", "dev", "eth0"],
    );
    let (victim4, evil4) = (Ipv4Addr::new(192, 0, 2, 2), Ipv4Addr::new(192, 0, 2, 3));
    // The control: the frame is good; sent by the host out of the bridge, it reaches the victim.
    let before4 = icmp4_counter(&h, "victim", "InEchos");
    let frame = icmp4_echo_frame(victim_mac, evil_mac, evil4, victim4);
    probe::send_frames(&h.host_path(), "nsbr-v6ospf", &[frame]).expect("send from the host");
    assert!(
        common::within(std::time::Duration::from_secs(2), || {
            icmp4_counter(&h, "victim", "InEchos") == before4 + 1
        }),
        "the control frame did not arrive"
    );
    let before4 = before4 + 1;
    send(&[
        icmp4_echo_frame(victim_mac, evil_mac, evil4, victim4),
        icmp4_echo_frame(victim_mac, evil_mac, Ipv4Addr::UNSPECIFIED, victim4),
    ]);
    assert_eq!(
        icmp4_counter(&h, "victim", "InEchos"),
        before4,
        "{backend}: IPv4 from an IPv6-only sandbox reached its neighbour"
    );
    assert!(probe::ping6(&h.sb_path("victim"), gw).expect("ping"));
    assert!(probe::ping6(&h.sb_path("victim"), other_ip).expect("ping"));
    for sb in [&evil, &victim, &other] {
        h.ok(&["rm", sb]);
    }
    h.ok(&["network", "rm", "v6o"]);
    if backend == "iptables" {
        // iptables-nft leaves its (empty) built-in tables behind: nsnet's chains must be gone.
        for tool in ["iptables-save", "ip6tables-save"] {
            let text = h.in_host(&[tool]);
            assert!(!text.contains("NSNET"), "{tool}:\n{text}");
        }
        return;
    }
    assert_eq!(h.snapshot(), empty);
}

/// Names on an IPv6-only network: AAAA answers a neighbour's address, `dig -x` its name; an A question for
/// it gets NOERROR with no answer (the name exists, with nothing of that type), not NXDOMAIN.
#[test]
fn ipv6_only_names_answer_aaaa_and_nothing_for_a() {
    let h = TestHost::with_ipv6("v6onames");
    create_only6(&h, "v6o", &[]);
    let (a, b) = (h.sb("a"), h.sb("b"));
    h.ok(&["create", &a, "--network", "v6o"]);
    h.ok(&["create", &b, "--network", "v6o", "--alias", "web"]);
    let b6 = h.address6(&b);
    for name in [b.as_str(), "web"] {
        let r = dig(&h, &a, &[name, "AAAA"]);
        assert_eq!(
            (r.status.as_str(), r.answers.clone()),
            ("NOERROR", vec![b6.to_string()]),
            "{name}"
        );
        let r = dig(&h, &a, &[name, "A"]);
        assert_eq!(
            (r.status.as_str(), r.answers.clone()),
            ("NOERROR", vec![]),
            "{name}: {r:?}"
        );
    }
    let r = dig(&h, &a, &["-x", &b6.to_string()]);
    assert_eq!(r.answers, vec![format!("{b}.")], "{r:?}");
    h.ok(&["rm", &a]);
    h.ok(&["rm", &b]);
    h.ok(&["network", "rm", "v6o"]);
}

/// Bad input about IPv6-only networks: one line, non-zero exit, nothing changed.
#[test]
fn ipv6_only_bad_input_is_refused_and_changes_nothing() {
    let h = TestHost::with_ipv6("v6obad");
    create_only6(&h, "v6o", &[]);
    let new = h.sb("new");
    let before = h.snapshot();
    let bad: &[(&[&str], &str)] = &[
        (
            &["network", "create", "x", "--ipv4=false"],
            "--ipv4=false leaves the network no address family",
        ),
        (
            &[
                "network",
                "create",
                "x",
                "--ipv6",
                "--ipv4=false",
                "--subnet",
                "10.9.0.0/24",
            ],
            "--subnet 10.9.0.0/24 is IPv4",
        ),
        (
            &["create", &new, "--network", "v6o", "--ip", "10.9.0.5"],
            "is IPv6-only",
        ),
        (
            &[
                "create",
                &new,
                "--network",
                "v6o",
                "-p",
                "127.0.0.1:8080:80",
            ],
            "127.0.0.1 is an IPv4 address, and network 'v6o' is IPv6-only",
        ),
        (
            &[
                "create",
                &new,
                "--network",
                "v6o",
                "-p",
                &format!("{}:8080:80", common::HOST_IP),
            ],
            "is IPv6-only",
        ),
    ];
    for (args, expected) in bad {
        let line = common::check_one_line_failure(args, h.nsnet(args));
        assert!(line.contains(expected), "{args:?}: {line}");
        assert_eq!(h.snapshot(), before, "{args:?} changed something");
    }
    h.ok(&["network", "rm", "v6o"]);
}

/// The veth driver on an IPv6-only network: the host end holds the IPv6 gateway alone; `firewall reload` and
/// `gc` keep the sandbox working and write no IPv4 forwarding; everything goes with `rm`.
#[test]
fn the_veth_driver_reload_and_gc_on_an_ipv6_only_network() {
    let h = TestHost::with_ipv6("v6oveth");
    h.in_host(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    // IPv4 forwarding off in the throwaway host: an IPv6-only network must not turn it on.
    h.in_host(&["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    let forward4 = h.in_host(&["sysctl", "-n", "net.ipv4.ip_forward"]);
    assert_eq!(forward4.trim(), "0");
    let empty = h.snapshot();
    create_only6(&h, "p2p", &["--driver", "veth", "--bridge", "nsve-v6o"]);
    let s = h.sb("s");
    h.ok(&["create", &s, "--network", "p2p"]);
    let host_end = h.in_host(&["ip", "-o", "addr", "show", "dev", "nsve-v6o"]);
    assert!(!host_end.contains("inet "), "{host_end}");
    let gw = gateway6(&h, "p2p");
    assert!(host_end.contains(&gw.to_string()), "{host_end}");
    assert!(probe::ping6(&h.sb_path("s"), gw).expect("ping"));
    h.ok(&["firewall", "reload"]);
    h.ok(&["gc"]);
    assert!(
        probe::ping6(&h.sb_path("s"), gw).expect("ping"),
        "after reload and gc"
    );
    assert_eq!(
        h.in_host(&["sysctl", "-n", "net.ipv4.ip_forward"]),
        forward4
    );
    h.ok(&["rm", &s]);
    h.ok(&["network", "rm", "p2p"]);
    assert_eq!(h.snapshot(), empty);
}

/// Which requests make an IPv6-only network: `--ipv4=false`, or an IPv6 `--subnet` alone; `--ipv6` with an
/// IPv6 subnet, or `--ipv4=true`, stays dual stack.
#[test]
fn only_an_ipv6_subnet_asks_for_ipv6_only() {
    let h = TestHost::with_ipv6("v6osub");
    let empty = h.snapshot();
    let has_ipv4 = |net: &str| {
        let n = json(&h.ok(&["network", "inspect", net, "--json"]));
        assert!(n["ipv6"]["subnet"].is_string(), "{n}");
        n.get("subnet").is_some()
    };
    h.ok(&["network", "create", "a", "--subnet", "fd89:71::/64"]);
    assert!(!has_ipv4("a"), "an IPv6 subnet alone");
    h.ok(&[
        "network",
        "create",
        "b",
        "--ipv6",
        "--subnet",
        "fd89:72::/64",
    ]);
    assert!(has_ipv4("b"), "--ipv6 with an IPv6 subnet");
    h.ok(&[
        "network",
        "create",
        "c",
        "--subnet",
        "fd89:73::/64",
        "--ipv4=true",
    ]);
    assert!(has_ipv4("c"), "--ipv4=true");
    h.ok(&[
        "network",
        "create",
        "d",
        "--subnet",
        "fd89:74::/64",
        "--subnet",
        "10.89.74.0/24",
    ]);
    assert!(has_ipv4("d"), "both subnets");
    for n in ["a", "b", "c", "d"] {
        h.ok(&["network", "rm", n]);
    }
    assert_eq!(h.snapshot(), empty);
}

/// `explain` and `topology` follow IPv4 only: with an IPv6-only network beside an IPv4 one, both still
/// answer (explain says an IPv6-only sandbox has no IPv4 way to the LAN, in one line), and the IPv4
/// network's answers are as before.
#[test]
fn explain_and_topology_live_beside_an_ipv6_only_network() {
    let h = TestHost::with_ipv6("v6oexpl");
    create_only6(&h, "v6o", &[]);
    h.ok(&["network", "create", "n4", "--subnet", "172.16.9.0/24"]);
    let (s, t) = (h.sb("s"), h.sb("t"));
    h.ok(&["create", &s, "--network", "v6o"]);
    h.ok(&["create", &t, "--network", "n4"]);
    let topo = h.ok(&["topology"]);
    assert!(
        topo.contains("v6o") && topo.contains("172.16.9.0/24"),
        "{topo}"
    );
    let json_topo = h.ok(&["--json", "topology"]);
    assert!(json_topo.contains("\"v6o\""), "{json_topo}");
    let out = h.nsnet(&["explain", &s, common::LAN_IP]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(1), "dropped: {stdout}{stderr}");
    assert!(
        stdout.contains("IPv6-only (no default route for IPv4)"),
        "{stdout}"
    );
    let out = h.nsnet(&["explain", &t, "172.16.9.1"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    h.ok(&["rm", &s]);
    h.ok(&["rm", &t]);
    h.ok(&["network", "rm", "v6o"]);
    h.ok(&["network", "rm", "n4"]);
}

/// `ports.rs::networks_are_isolated_unless_both_opt_out` between IPv6-only networks, and between one and a
/// dual-stack network: every ordered pair of sandboxes pings over IPv6 only within its network, or between
/// two networks that both opted out; a TCP port a sandbox opens is reached the same way and no other.
#[test]
fn ipv6_only_networks_are_isolated_unless_both_opt_out() {
    let h = TestHost::with_ipv6("v6oiso");
    let empty = h.snapshot();
    create_only6(&h, "n1", &[]);
    create_only6(&h, "n2", &[]);
    create_only6(&h, "open1", &["--isolate=false"]);
    create_only6(&h, "open2", &["--isolate=false"]);
    h.ok(&["network", "create", "ds", "--ipv6"]);
    let sandboxes = [
        ("a", "n1"),
        ("b", "n1"),
        ("c", "n2"),
        ("e", "open1"),
        ("f", "open2"),
        ("g", "ds"),
    ];
    let mut addrs = Vec::new();
    for (name, net) in sandboxes {
        h.ok(&["create", &h.sb(name), "--network", net]);
        addrs.push((name, net, h.address6(&h.sb(name))));
    }
    let open = |n: &str| n.starts_with("open");
    // Every ordered pair, in parallel: a blocked ping costs its whole timeout.
    std::thread::scope(|scope| {
        for (from, from_net, _) in &addrs {
            for (to, to_net, to_ip) in &addrs {
                if from == to {
                    continue;
                }
                let h = &h;
                scope.spawn(move || {
                    let expect = from_net == to_net || (open(from_net) && open(to_net));
                    let got = probe::ping6(&h.sb_path(from), *to_ip).expect("ping");
                    assert_eq!(got, expect, "{from} ({from_net}) -> {to} ({to_net})");
                });
            }
        }
    });
    // TCP as well, to a port a's own process opened: its network only; and between the open networks.
    let a_ip = addrs[0].2;
    for (from, expect) in [("b", true), ("c", false), ("e", false), ("g", false)] {
        let got = common::reach_any(
            &h.sb_path("a"),
            90,
            &h.sb_path(from),
            SocketAddr::new(a_ip.into(), 90),
        );
        assert_eq!(got.is_some(), expect, "{from} -> a:90");
    }
    let e_ip = addrs[3].2;
    let got = common::reach_any(
        &h.sb_path("e"),
        90,
        &h.sb_path("f"),
        SocketAddr::new(e_ip.into(), 90),
    );
    // Masqueraded to open1's gateway on its way in, as IPv4 between networks is (NAT66 covers the subnet).
    assert_eq!(got, Some(gateway6(&h, "open1").into()), "open2 -> open1");
    for (name, _) in sandboxes {
        h.ok(&["rm", &h.sb(name)]);
    }
    for n in ["n1", "n2", "open1", "open2", "ds"] {
        h.ok(&["network", "rm", n]);
    }
    assert_eq!(h.snapshot(), empty);
}

/// Datagrams the LAN peer's kernel has taken in, UDP over both families plus TCP connections opened to it:
/// what would move if anything were forwarded to its DNS server.
fn lan_dns_traffic(h: &TestHost) -> u64 {
    let ns = format!("--net={}", h.lan_path().display());
    let snmp = common::sh(&["nsenter", &ns, "--", "cat", "/proc/net/snmp"]);
    let field = |proto: &str, name: &str| -> u64 {
        let mut lines = snmp.lines().filter(|l| l.starts_with(proto));
        let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
            panic!("no {proto} lines in {snmp}");
        };
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.parse().ok())
            .expect("the counter")
    };
    let udp6: u64 = common::sh(&["nsenter", &ns, "--", "cat", "/proc/net/snmp6"])
        .lines()
        .find_map(|l| l.strip_prefix("Udp6InDatagrams"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Udp6InDatagrams");
    field("Udp:", "InDatagrams") + field("Tcp:", "PassiveOpens") + udp6
}

/// `names.rs::a_sandbox_or_a_network_can_name_its_own_upstream` on IPv6-only networks, with an IPv6 upstream
/// (dnsmasq on the LAN peer): a sandbox's `--dns`, a network's `--dns`, and the host's resolv.conf, over UDP
/// and TCP; the resolver forwards from the host, so an IPv6-only sandbox gets A answers too. Names still stay
/// within a network: the other network's sandbox is NXDOMAIN, never forwarded.
#[test]
fn an_ipv6_upstream_answers_for_ipv6_only_sandboxes_and_networks() {
    let h = TestHost::with_lan6("v6oup");
    // IPv6 forwarding stays on once on (with the uplink's subnet-router anycast routes): as a host has it.
    h.in_host(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    let empty = h.snapshot();
    let dnsmasq = common::dns::dnsmasq(&h, LAN_IP6);
    create_only6(&h, "n", &[]);
    create_only6(&h, "m", &["--dns", LAN_IP6]);
    let (a, b, c) = (h.sb("a"), h.sb("b"), h.sb("c"));
    h.ok(&["create", &a, "--network", "n", "--dns", LAN_IP6]);
    h.ok(&["create", &b, "--network", "n"]);
    h.ok(&["create", &c, "--network", "m"]);
    let net = json(&h.ok(&["network", "inspect", "m", "--json"]));
    assert_eq!(net["dns_servers"], serde_json::json!([LAN_IP6]), "{net}");
    for sb in [&a, &c] {
        assert_eq!(
            dig(&h, sb, &["www.example.test", "AAAA"]).answers,
            vec!["2001:db8::7".to_string()],
            "{sb}"
        );
        assert_eq!(
            dig(&h, sb, &["www.example.test"]).answers,
            vec!["192.0.2.7".to_string()],
            "{sb}"
        );
        assert_eq!(
            dig(&h, sb, &["+tcp", "www.example.test", "AAAA"]).answers,
            vec!["2001:db8::7".to_string()],
            "{sb} over TCP"
        );
    }
    // Another network's sandbox is no name here, and the question is not forwarded.
    let before = lan_dns_traffic(&h);
    let r = dig(&h, &c, &[&a, "AAAA"]);
    assert_eq!(
        (r.status.as_str(), r.answers.len()),
        ("NXDOMAIN", 0),
        "{r:?}"
    );
    assert_eq!(
        dig(&h, &b, &[&a, "AAAA"]).answers,
        vec![h.address6(&a).to_string()]
    );
    assert_eq!(
        lan_dns_traffic(&h),
        before,
        "a sandbox's name went upstream"
    );
    // b has no server to ask: NXDOMAIN; then the host's resolv.conf names the IPv6 server.
    assert_eq!(dig(&h, &b, &["www.example.test"]).status, "NXDOMAIN");
    std::fs::write(h.resolv_conf(), format!("nameserver {LAN_IP6}\n")).expect("resolv.conf");
    assert!(
        common::within(std::time::Duration::from_secs(10), || dig(
            &h,
            &b,
            &["www.example.test", "AAAA"]
        )
        .answers
            == vec!["2001:db8::7".to_string()]),
        "the host's IPv6 upstream is used"
    );
    for sb in [&a, &b, &c] {
        h.ok(&["rm", sb]);
    }
    h.ok(&["network", "rm", "n"]);
    h.ok(&["network", "rm", "m"]);
    drop(dnsmasq);
    assert_eq!(h.snapshot(), empty);
}

/// `names.rs::internal_networks_resolve_their_own_names_and_forward_nothing` on an internal IPv6-only
/// network, with the host's upstream on IPv6 and the network naming one itself: its own names answer (AAAA,
/// `ip6.arpa`, A with nothing), and nothing reaches the upstream, whatever a sandbox asks, over UDP or TCP.
#[test]
fn internal_ipv6_only_networks_resolve_their_own_names_and_forward_nothing() {
    let h = TestHost::with_lan6("v6ointn");
    let empty = h.snapshot();
    let dnsmasq = common::dns::dnsmasq(&h, LAN_IP6);
    std::fs::write(h.resolv_conf(), format!("nameserver {LAN_IP6}\n")).expect("resolv.conf");
    create_only6(&h, "in", &["--internal"]);
    let (a, b) = (h.sb("a"), h.sb("b"));
    h.ok(&["create", &a, "--network", "in", "--dns", LAN_IP6]);
    h.ok(&["create", &b, "--network", "in"]);
    let b6 = h.address6(&b).to_string();
    let before = lan_dns_traffic(&h);
    assert_eq!(dig(&h, &a, &[&b, "AAAA"]).answers, vec![b6.clone()]);
    let r = dig(&h, &a, &[&b, "A"]);
    assert_eq!(
        (r.status.as_str(), r.answers.len()),
        ("NOERROR", 0),
        "{r:?}"
    );
    assert_eq!(dig(&h, &a, &["-x", &b6]).answers, vec![format!("{b}.")]);
    for (sb, extra) in [
        (&a, &["www.example.test", "AAAA"][..]),
        (&a, &["+tcp", "www.example.test"][..]),
        (&b, &["www.example.test"][..]),
        (&b, &["-x", "2001:db8::7"][..]),
    ] {
        let r = dig(&h, sb, extra);
        assert_eq!(
            (r.status.as_str(), r.answers.len()),
            ("NXDOMAIN", 0),
            "{sb} {extra:?}: {r:?}"
        );
    }
    assert_eq!(
        lan_dns_traffic(&h),
        before,
        "an internal network's question went upstream"
    );
    h.ok(&["rm", &a]);
    h.ok(&["rm", &b]);
    h.ok(&["network", "rm", "in"]);
    drop(dnsmasq);
    assert_eq!(h.snapshot(), empty);
}

/// Host processes and an IPv6-only network's published ports: only IPv6 holders count. A process on IPv4
/// alone (`0.0.0.0:P`) holds nothing the network publishes, so `-p P:80` is taken and `nsnet port` marks
/// nothing, and the process keeps its IPv4 connections; one on the host's IPv6 address holds the port, so
/// `-p Q:80` is refused in one line and nothing changes; one that binds the published port's IPv6 side later
/// is marked.
#[test]
fn only_ipv6_host_processes_hold_an_ipv6_only_networks_ports() {
    let h = TestHost::with_lan6("v6ohold");
    create_only6(&h, "v6o", &[]);
    let (s, t) = (h.sb("s"), h.sb("t"));
    let v4 = probe::tcp_server(&h.host_path(), (Ipv4Addr::UNSPECIFIED, 8095)).expect("listen");
    let one = format!("[{HOST_IP6}]:8097:81");
    h.ok(&[
        "create",
        &s,
        "--network",
        "v6o",
        "-p",
        "8095:80",
        "-p",
        &one,
    ]);
    // Every address of an IPv6-only network is every IPv6 address; an IPv6 address is written in brackets.
    assert_eq!(
        h.ok(&["port", &s]).trim(),
        format!("80/tcp -> [::]:8095\n81/tcp -> [{HOST_IP6}]:8097")
    );
    let host4: Ipv4Addr = common::HOST_IP.parse().expect("address");
    assert!(probe::tcp_hello(&h.lan_path(), (host4, 8095)).is_ok());
    assert_eq!(
        v4.wait().ok().map(|p| p.ip()),
        Some(common::LAN_IP.parse().expect("address")),
        "the IPv4 process keeps its connections"
    );
    let _held = probe::tcp_server(&h.host_path(), (v6(HOST_IP6), 8096)).expect("listen");
    let before = h.snapshot();
    let args = ["create", &t, "--network", "v6o", "-p", "8096:80"];
    let line = common::check_one_line_failure(&args, h.nsnet(&args));
    assert!(
        line.contains("host port 8096/tcp is already in use"),
        "{line}"
    );
    assert_eq!(h.snapshot(), before, "the refused create changed something");
    let later = probe::tcp_server(&h.host_path(), (Ipv6Addr::UNSPECIFIED, 8095)).expect("listen");
    let shown = h.ok(&["port", &s]);
    assert!(shown.contains("a host process listens here too"), "{shown}");
    assert_eq!(
        common::reach_any(
            &h.sb_path("s"),
            80,
            &h.lan_path(),
            SocketAddr::new(v6(HOST_IP6).into(), 8095)
        ),
        Some(v6(LAN_IP6).into()),
        "the sandbox still gets the LAN peer's connections"
    );
    assert!(later.wait().is_err(), "the later IPv6 listener got one");
    h.ok(&["rm", &s]);
    h.ok(&["network", "rm", "v6o"]);
}
