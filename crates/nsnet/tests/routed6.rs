//! `--gateway-mode routed` on dual-stack networks (issue #19): the IPv6 twins of the routed-mode tests in
//! `attacks.rs`. A routed network's sandboxes are reached directly by whoever routes its
//! subnet to the host, and reach out with their own addresses; everything else still holds: published ports,
//! isolation, and the anti-spoofing guard, which is all that stands between a sandbox and a forged source on
//! the LAN once nothing is masqueraded.

mod common;

use std::net::{Ipv6Addr, SocketAddr};

use common::{TestHost, HOST_IP6, LAN_IP6};
use nsnet_core::probe;
use serde_json::Value;

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("JSON")
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("test address")
}

fn at(ip: Ipv6Addr, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// A network's IPv6 subnet and gateway, from its record.
fn net6(h: &TestHost, net: &str) -> (String, Ipv6Addr) {
    let n = json(&h.ok(&["network", "inspect", net, "--json"]));
    (
        n["ipv6"]["subnet"].as_str().unwrap_or_default().to_string(),
        v6(n["ipv6"]["gateway"].as_str().unwrap_or_default()),
    )
}

/// The LAN peer routes `subnet` through the host (`add`), or stops (`del`).
fn lan_route(h: &TestHost, verb: &str, subnet: &str) {
    let lan = h.lan.clone().expect("a LAN peer");
    common::sh(&[
        "ip", "-n", &lan, "-6", "route", verb, subnet, "via", HOST_IP6,
    ]);
}

/// A LAN host with IPv6 forwarding on, as a router of routed subnets has it (on before the snapshot: turning
/// it on adds the uplink's subnet-router anycast route).
fn lan_host(test: &str, backend: &'static str) -> TestHost {
    let mut h = TestHost::with_lan6(test);
    h.firewall = Some(backend);
    h.in_host(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    h
}

/// After `rm`, what iptables-nft leaves is its own empty tables: nsnet's chains must be gone on both families;
/// with nftables, the host is exactly as it was.
fn assert_clean(h: &TestHost, backend: &str, empty: &common::Snapshot) {
    if backend == "iptables" {
        for tool in ["iptables-save", "ip6tables-save"] {
            let text = h.in_host(&[tool]);
            assert!(!text.contains("NSNET"), "{tool}:\n{text}");
        }
        return;
    }
    assert_eq!(&h.snapshot(), empty);
}

/// `attacks.rs::a_lan_peer_routing_to_sandboxes_reaches_published_ports_only_unless_routed` over IPv6. The
/// attacker on the LAN routes both IPv6 subnets through the host: the nat-mode sandbox answers only on its
/// published port (TCP, UDP, echo); the routed one is reached directly on any port the moment `create`
/// returns, sees the real client, and reaches the LAN with its own address (no NAT66).
#[test]
fn a_lan_peer_routing_to_dual_stack_sandboxes_reaches_published_ports_only_unless_routed() {
    for backend in ["nftables", "iptables"] {
        let h = lan_host("r6lan", backend);
        let empty = h.snapshot();
        h.ok(&["network", "create", "n", "--ipv6"]);
        h.ok(&[
            "network",
            "create",
            "r",
            "--ipv6",
            "--gateway-mode",
            "routed",
        ]);
        let (n_subnet, _) = net6(&h, "n");
        let (r_subnet, _) = net6(&h, "r");
        for subnet in [&n_subnet, &r_subnet] {
            lan_route(&h, "add", subnet);
        }
        let (s, t) = (h.sb("s"), h.sb("t"));
        h.ok(&["create", &s, "--network", "n", "-p", "8080:80"]);
        h.ok(&["create", &t, "--network", "r"]);
        let (s6, t6) = (h.address6(&s), h.address6(&t));
        let (s_ns, t_ns, lan) = (h.sb_path("s"), h.sb_path("t"), h.lan_path());
        // At once: the first try, no neighbour or address settling first.
        assert_eq!(
            common::reach_any(&t_ns, 81, &lan, at(t6, 81)),
            Some(v6(LAN_IP6).into()),
            "{backend}: a routed network is reached directly, with the real client"
        );
        assert!(
            probe::ping6(&lan, t6).expect("ping"),
            "{backend}: echo to a routed sandbox"
        );
        assert_eq!(
            common::reach_any(&lan, 82, &t_ns, at(v6(LAN_IP6), 82)),
            Some(t6.into()),
            "{backend}: a routed network's traffic leaves with its own address"
        );
        assert_eq!(
            common::reach_any(&s_ns, 80, &lan, at(v6(HOST_IP6), 8080)),
            Some(v6(LAN_IP6).into()),
            "{backend}: the published port"
        );
        for port in [80, 81] {
            assert_eq!(
                common::reach_any(&s_ns, port, &lan, at(s6, port)),
                None,
                "{backend}: the LAN peer reached port {port} of a nat-mode sandbox directly"
            );
        }
        assert!(
            !probe::ping6(&lan, s6).expect("ping"),
            "{backend}: the LAN peer's echo reached a nat-mode sandbox"
        );
        let udp = probe::udp_server(&s_ns, at(Ipv6Addr::UNSPECIFIED, 53)).expect("udp server");
        assert!(probe::udp_hello(&lan, at(s6, 53)).is_err());
        assert!(udp.wait().is_err(), "{backend}: a datagram got in");
        h.ok(&["rm", &s]);
        h.ok(&["rm", &t]);
        h.ok(&["network", "rm", "n"]);
        h.ok(&["network", "rm", "r"]);
        for subnet in [&n_subnet, &r_subnet] {
            lan_route(&h, "del", subnet);
        }
        assert_clean(&h, backend, &empty);
    }
}

/// `ports.rs::a_published_port_works_from_every_path` on a routed dual-stack network: the DNAT does not care
/// how the network reaches out. Over IPv6 from the LAN peer (the real client), the host's own address and
/// `[::1]`, a sandbox of the same and of another network, and the sandbox itself (hairpin); over IPv4 from the
/// LAN peer. On both firewall backends.
#[test]
fn a_published_port_on_a_routed_dual_stack_network_works_from_every_path() {
    for backend in ["nftables", "iptables"] {
        every_path(backend);
    }
}

fn every_path(backend: &'static str) {
    let h = lan_host("r6pub", backend);
    let empty = h.snapshot();
    h.ok(&[
        "network",
        "create",
        "r",
        "--ipv6",
        "--gateway-mode",
        "routed",
    ]);
    h.ok(&["network", "create", "other", "--ipv6"]);
    let (a, b, c) = (h.sb("a"), h.sb("b"), h.sb("c"));
    h.ok(&["create", &a, "--network", "r", "-p", "8080:80"]);
    h.ok(&["create", &b, "--network", "r"]);
    h.ok(&["create", &c, "--network", "other"]);
    let a_ns = h.sb_path("a");
    let host = |port| at(v6(HOST_IP6), port);
    assert_eq!(
        common::reach_any(&a_ns, 80, &h.lan_path(), host(8080)),
        Some(v6(LAN_IP6).into()),
        "{backend}: LAN peer -> host over IPv6"
    );
    assert!(
        common::reach_any(&a_ns, 80, &h.host_path(), host(8080)).is_some(),
        "{backend}: host -> own IPv6 address"
    );
    if common::cgroup2_root().is_some() {
        // From the test's cgroup, where the [::1] translation acts.
        let srv = probe::tcp_server(&a_ns, at(Ipv6Addr::UNSPECIFIED, 80)).expect("listen");
        let seen = h.client6(&h.host_path(), "tcp", "::1", 8080);
        assert!(
            seen.starts_with("[::1]:8080 "),
            "{backend}: host -> [::1]: {seen}"
        );
        assert!(
            srv.wait().is_ok(),
            "{backend}: host -> [::1]: the sandbox saw nobody"
        );
    }
    for (from, what) in [
        ("b", "same network"),
        ("c", "other network"),
        ("a", "hairpin"),
    ] {
        assert!(
            common::reach_any(&a_ns, 80, &h.sb_path(from), host(8080)).is_some(),
            "{backend}: {what}"
        );
    }
    let v4 = SocketAddr::new(common::HOST_IP.parse().expect("address"), 8080);
    assert_eq!(
        common::reach_any(&a_ns, 80, &h.lan_path(), v4),
        Some(common::LAN_IP.parse().expect("address")),
        "{backend}: LAN peer -> host over IPv4"
    );
    for sb in [&a, &b, &c] {
        h.ok(&["rm", sb]);
    }
    h.ok(&["network", "rm", "r"]);
    h.ok(&["network", "rm", "other"]);
    assert_clean(&h, backend, &empty);
}

/// `ipv6.rs::dual_stack_networks_are_isolated_unless_both_opt_out` with routed networks: a routed network's
/// sandboxes reach the LAN directly, never another network's (routed or nat) over IPv6 or IPv4, nor they its,
/// and the LAN peer routing every subnet to the host reaches the routed ones only. On both firewall backends.
#[test]
fn routed_dual_stack_networks_are_isolated() {
    for backend in ["nftables", "iptables"] {
        routed_isolation(backend);
    }
}

fn routed_isolation(backend: &'static str) {
    let h = lan_host("r6iso", backend);
    let empty = h.snapshot();
    let routed = ["--ipv6", "--gateway-mode", "routed"];
    for (net, extra) in [
        ("r1", &routed[..]),
        ("r2", &routed[..]),
        ("n", &["--ipv6"][..]),
    ] {
        let mut args = vec!["network", "create", net];
        args.extend_from_slice(extra);
        h.ok(&args);
    }
    let subnets: Vec<String> = ["r1", "r2", "n"].iter().map(|n| net6(&h, n).0).collect();
    for subnet in &subnets {
        lan_route(&h, "add", subnet);
    }
    let sandboxes = [("a", "r1"), ("b", "r1"), ("c", "r2"), ("d", "n")];
    let mut addrs = Vec::new();
    for (name, net) in sandboxes {
        h.ok(&["create", &h.sb(name), "--network", net]);
        addrs.push((name, net, h.address6(&h.sb(name))));
    }
    // Every ordered pair, and the LAN peer to each, in parallel: a blocked ping costs its whole timeout.
    std::thread::scope(|scope| {
        for (from, from_net, _) in &addrs {
            for (to, to_net, to_ip) in &addrs {
                if from == to {
                    continue;
                }
                let h = &h;
                scope.spawn(move || {
                    let got = probe::ping6(&h.sb_path(from), *to_ip).expect("ping");
                    assert_eq!(
                        got,
                        from_net == to_net,
                        "{backend}: {from} ({from_net}) -> {to} ({to_net})"
                    );
                });
            }
            let (h, from) = (&h, *from);
            scope.spawn(move || {
                let lan = v6(LAN_IP6);
                let got = probe::ping6(&h.sb_path(from), lan).expect("ping");
                assert!(got, "{backend}: {from} cannot reach the LAN");
            });
        }
        for (to, to_net, to_ip) in &addrs {
            let h = &h;
            scope.spawn(move || {
                let got = probe::ping6(&h.lan_path(), *to_ip).expect("ping");
                assert_eq!(
                    got,
                    to_net.starts_with('r'),
                    "{backend}: the LAN peer -> {to} ({to_net})"
                );
            });
        }
    });
    // A port a routed sandbox opens is for the LAN, not for the other networks: not over IPv4 either.
    let (a_ns, c_ns, d_ns) = (h.sb_path("a"), h.sb_path("c"), h.sb_path("d"));
    let a_ip = addrs[0].2;
    for (from, what) in [(&c_ns, "another routed network"), (&d_ns, "a nat network")] {
        assert_eq!(
            common::reach_any(&a_ns, 90, from, at(a_ip, 90)),
            None,
            "{backend}: {what} reached a routed sandbox's open port"
        );
    }
    let a4: std::net::Ipv4Addr = h.inspect(&h.sb("a"))["endpoints"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .expect("an IPv4 address");
    assert_eq!(
        common::reach_any(&a_ns, 90, &c_ns, SocketAddr::new(a4.into(), 90)),
        None,
        "{backend}: another routed network reached it over IPv4"
    );
    for (name, _) in sandboxes {
        h.ok(&["rm", &h.sb(name)]);
    }
    for n in ["r1", "r2", "n"] {
        h.ok(&["network", "rm", n]);
    }
    for subnet in &subnets {
        lan_route(&h, "del", subnet);
    }
    assert_clean(&h, backend, &empty);
}

/// ICMPv6 echo requests the LAN peer has received.
fn lan_echoes6(h: &TestHost) -> u64 {
    let ns = format!("--net={}", h.lan_path().display());
    common::sh(&["nsenter", &ns, "--", "cat", "/proc/net/snmp6"])
        .lines()
        .find_map(|l| l.strip_prefix("Icmp6InEchos"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Icmp6InEchos")
}

/// Nothing masquerades a routed network's traffic, so the source a sandbox writes is the source the LAN sees:
/// a hostile sandbox crafting echo requests to the LAN peer through its gateway gets its own addresses out
/// (the control), and never a neighbour's, another network's, the LAN peer's own, `::` or a made-up one. On
/// both firewall backends.
#[test]
fn a_routed_dual_stack_sandbox_cannot_spoof_its_source_to_the_lan() {
    for backend in ["nftables", "iptables"] {
        let h = lan_host("r6spf", backend);
        let empty = h.snapshot();
        h.ok(&[
            "network",
            "create",
            "r",
            "--ipv6",
            "--gateway-mode",
            "routed",
            "--bridge",
            "nsbr-r6spf",
        ]);
        h.ok(&["network", "create", "n", "--ipv6"]);
        let (r_subnet, _) = net6(&h, "r");
        lan_route(&h, "add", &r_subnet);
        let (evil, victim, other) = (h.sb("evil"), h.sb("victim"), h.sb("other"));
        h.ok(&["create", &evil, "--network", "r"]);
        h.ok(&["create", &victim, "--network", "r"]);
        h.ok(&["create", &other, "--network", "n"]);
        let link = json(&h.in_host(&["ip", "-j", "link", "show", "dev", "nsbr-r6spf"]));
        let bridge_mac = common::parse_mac(link[0]["address"].as_str().unwrap_or_default());
        let evil_mac = h.mac(&evil);
        let echo = |src: Ipv6Addr| {
            common::icmpv6_frame(
                bridge_mac,
                evil_mac,
                src,
                v6(LAN_IP6),
                128,
                0,
                &[0, 5, 0, 1],
            )
        };
        let send = |frames: &[Vec<u8>]| {
            probe::send_frames(&h.sb_path("evil"), "eth0", frames).expect("send raw frames");
            std::thread::sleep(std::time::Duration::from_millis(300));
        };
        // The host must know the LAN peer's MAC for the control to count: one real echo first.
        assert!(probe::ping6(&h.sb_path("evil"), v6(LAN_IP6)).expect("ping"));
        let before = lan_echoes6(&h);
        send(&[echo(h.address6(&evil))]);
        assert_eq!(lan_echoes6(&h), before + 1, "{backend}: evil's own source");
        let forged = [
            h.address6(&victim),
            h.address6(&other),
            v6(LAN_IP6),
            v6(HOST_IP6),
            v6("::"),
            v6("2001:db8:99::1"),
            Ipv6Addr::from(u128::from(h.address6(&evil)) + 0x100),
        ];
        send(&forged.map(echo));
        assert_eq!(
            lan_echoes6(&h),
            before + 1,
            "{backend}: a forged IPv6 source reached the LAN"
        );
        for sb in [&evil, &victim, &other] {
            h.ok(&["rm", sb]);
        }
        h.ok(&["network", "rm", "r"]);
        h.ok(&["network", "rm", "n"]);
        lan_route(&h, "del", &r_subnet);
        assert_clean(&h, backend, &empty);
    }
}

/// The gateway side of a point-to-point network is its host end (`gateway_on`), and an IPv6-only network has
/// no IPv4 at all: routed, both are reached directly by the LAN peer routing their subnet to the host (at
/// once, with the real client) and reach it with their own addresses; unrouted ports stay closed on the
/// nat-mode twin of each. On both firewall backends.
#[test]
fn routed_point_to_point_and_ipv6_only_sandboxes_are_reached_directly() {
    for backend in ["nftables", "iptables"] {
        routed_kinds(backend);
    }
}

fn routed_kinds(backend: &'static str) {
    let h = lan_host("r6p2p", backend);
    let empty = h.snapshot();
    let kinds: [(&str, &[&str]); 2] = [
        ("p2p", &["--driver", "veth", "--ipv6"]),
        ("only6", &["--ipv6", "--ipv4=false"]),
    ];
    for (kind, extra) in kinds {
        for mode in ["routed", "nat"] {
            let net = format!("{kind}-{mode}");
            let mut args = vec!["network", "create", &net, "--gateway-mode", mode];
            args.extend_from_slice(extra);
            h.ok(&args);
            let (subnet, _) = net6(&h, &net);
            lan_route(&h, "add", &subnet);
            let s = h.sb(&net);
            h.ok(&["create", &s, "--network", &net]);
            let (s6, s_ns, lan) = (h.address6(&s), h.sb_path(&net), h.lan_path());
            let routed = mode == "routed";
            assert_eq!(
                common::reach_any(&s_ns, 81, &lan, at(s6, 81)),
                routed.then_some(v6(LAN_IP6).into()),
                "{backend}, {net}: the LAN peer to the sandbox directly"
            );
            // Out: its own address when routed; NAT66 (the host's address) otherwise.
            let out = if routed { s6 } else { v6(HOST_IP6) };
            assert_eq!(
                common::reach_any(&lan, 82, &s_ns, at(v6(LAN_IP6), 82)),
                Some(out.into()),
                "{backend}, {net}: the sandbox to the LAN peer"
            );
            h.ok(&["rm", &s]);
            h.ok(&["network", "rm", &net]);
            lan_route(&h, "del", &subnet);
        }
    }
    assert_clean(&h, backend, &empty);
}
