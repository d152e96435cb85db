//! Published ports on every path a user tries, the 127.0.0.1 hole, network isolation, anti-spoofing and the
//! user chain: real packets in throwaway namespaces.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};

use common::{reach, TestHost, HOST_IP, LAN_IP};
use nsnet_core::{netns, probe};
use serde_json::Value;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("test address")
}

fn addr(s: &str, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip(s), port)
}

#[test]
fn a_published_port_works_from_every_path() {
    let h = TestHost::with_lan("paths");
    let empty = h.snapshot();
    h.ok(&["network", "create", "n1", "--subnet", "172.16.1.0/24"]);
    h.ok(&["network", "create", "n2", "--subnet", "172.16.2.0/24"]);
    let (a, b, c) = (h.sb("a"), h.sb("b"), h.sb("c"));
    h.ok(&["create", &a, "--network", "n1", "-p", "8080:80"]);
    h.ok(&["create", &b, "--network", "n1"]);
    h.ok(&["create", &c, "--network", "n2"]);
    let a_ns = h.sb_path("a");

    // Paths 1-4: outside peer, the host, other sandboxes, the sandbox itself.
    common::assert_every_path(&h, "a", "b", "c", 8080);
    assert!(
        reach(&a_ns, 80, &h.host_path(), addr("172.16.2.1", 8080)).is_some(),
        "host -> bridge address"
    );

    for s in [&a, &b, &c] {
        h.ok(&["rm", s]);
    }
    h.ok(&["network", "rm", "n1"]);
    h.ok(&["network", "rm", "n2"]);
    assert_eq!(h.snapshot(), empty);
}

#[test]
fn loopback_only_ports_are_unreachable_from_outside() {
    let h = TestHost::with_lan("loopback");
    let lan = h.lan.clone().expect("lan");
    // Make the LAN peer route 127.0.0.0/8 to the host, and (deliberately) the host accept loopback
    // addresses on its uplink: the worst case of moby#45610.
    for args in [
        vec![
            "ip",
            "-n",
            &lan,
            "route",
            "del",
            "local",
            "127.0.0.1",
            "dev",
            "lo",
            "table",
            "local",
        ],
        vec![
            "ip",
            "-n",
            &lan,
            "route",
            "del",
            "local",
            "127.0.0.0/8",
            "dev",
            "lo",
            "table",
            "local",
        ],
        vec![
            "ip",
            "-n",
            &lan,
            "route",
            "add",
            "127.0.0.0/8",
            "via",
            HOST_IP,
            "dev",
            "lan0",
        ],
    ] {
        common::sh(&args);
    }
    let peer_net = format!("--net={}", h.lan_path().display());
    common::sh(&[
        "nsenter",
        &peer_net,
        "sysctl",
        "-qw",
        "net.ipv4.conf.lan0.route_localnet=1",
    ]);
    h.in_host(&["sysctl", "-qw", "net.ipv4.conf.uplink0.route_localnet=1"]);
    let s = h.sb("s");
    h.ok(&["create", &s, "-p", "127.0.0.1:9090:80"]);
    let s_ns = h.sb_path("s");

    // Counters: SYNs for 127.0.0.1:9090 arriving at the host, and SYNs for port 80 arriving in the sandbox.
    for cmd in [
        "add table ip probe",
        "add chain ip probe pre { type filter hook prerouting priority -350; }",
        "add rule ip probe pre ip daddr 127.0.0.1 tcp dport 9090 counter",
    ] {
        h.in_host(&["nft", cmd]);
    }
    for cmd in [
        "add table ip probe",
        "add chain ip probe in { type filter hook input priority 0; }",
        "add rule ip probe in tcp dport 80 tcp flags syn counter",
    ] {
        h.ok(&["exec", &s, "--", "nft", cmd]);
    }
    let packets = |text: String| -> u64 {
        text.split("packets ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let at_host = || packets(h.in_host(&["nft", "list", "chain", "ip", "probe", "pre"]));
    let in_sandbox = || {
        packets(h.ok(&[
            "exec", &s, "--", "nft", "list", "chain", "ip", "probe", "in",
        ]))
    };

    // The peer tries 127.0.0.1:9090 and the host's address: its SYNs reach the host, none reaches the sandbox.
    assert_eq!(
        reach(&s_ns, 80, &h.lan_path(), addr("127.0.0.1", 9090)),
        None,
        "peer got in via 127.0.0.1"
    );
    assert_eq!(
        reach(&s_ns, 80, &h.lan_path(), addr(HOST_IP, 9090)),
        None,
        "peer got in via the host address"
    );
    assert!(
        at_host() > 0,
        "test rig: the peer's packets to 127.0.0.1 never reached the host"
    );
    assert_eq!(
        in_sandbox(),
        0,
        "a SYN from outside was forwarded into the sandbox"
    );

    // The host itself reaches its loopback-only port (and the sandbox's counter sees it).
    assert!(
        reach(&s_ns, 80, &h.host_path(), addr("127.0.0.1", 9090)).is_some(),
        "host -> 127.0.0.1:9090"
    );
    assert!(in_sandbox() > 0);

    h.ok(&["rm", &s]);
    h.ok(&["network", "rm", "nsnet0"]);
}

#[test]
fn networks_are_isolated_unless_both_opt_out() {
    let h = TestHost::new("isolation");
    let empty = h.snapshot();
    h.ok(&["network", "create", "n1", "--subnet", "172.16.1.0/24"]);
    h.ok(&["network", "create", "n2", "--subnet", "172.16.2.0/24"]);
    h.ok(&[
        "network",
        "create",
        "open1",
        "--subnet",
        "172.16.3.0/24",
        "--isolate=false",
    ]);
    h.ok(&[
        "network",
        "create",
        "open2",
        "--subnet",
        "172.16.4.0/24",
        "--isolate=false",
    ]);
    let sandboxes = [
        ("a", "n1"),
        ("b", "n1"),
        ("c", "n2"),
        ("d", "n2"),
        ("e", "open1"),
        ("f", "open2"),
    ];
    let mut addrs = Vec::new();
    for (name, net) in sandboxes {
        h.ok(&["create", &h.sb(name), "--network", net]);
        let cidr = h.inspect(&h.sb(name))["endpoints"][0]["address"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        addrs.push((name, net, ip(cidr.split('/').next().unwrap_or_default())));
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
                    let got = probe::ping(&h.sb_path(from), *to_ip).expect("ping");
                    assert_eq!(
                        got, expect,
                        "{from} ({from_net}) -> {to} ({to_net}): reached={got}"
                    );
                });
            }
        }
    });
    for (name, _) in sandboxes {
        h.ok(&["rm", &h.sb(name)]);
    }
    for n in ["n1", "n2", "open1", "open2"] {
        h.ok(&["network", "rm", n]);
    }
    assert_eq!(h.snapshot(), empty);
}

#[test]
fn sandboxes_cannot_spoof_source_addresses() {
    let h = TestHost::new("spoof");
    h.ok(&["network", "create", "n", "--subnet", "172.16.1.0/24"]);
    h.ok(&[
        "network",
        "create",
        "p2p",
        "--driver",
        "veth",
        "--subnet",
        "172.16.9.0/30",
    ]);
    let (b, p) = (h.sb("b"), h.sb("p"));
    h.ok(&["create", &b, "--network", "n"]);
    h.ok(&["create", &p, "--network", "p2p"]);
    // Each sandbox gives itself an address nobody owns, and the host is told (statically, so no ARP is
    // involved) that this address lives at the sandbox's MAC: without the guard, pings from that address
    // would be answered.
    let cases = [
        (&b, "172.16.1.200", "172.16.1.1", "172.16.1.2", "nsbr-n"),
        (&p, "172.16.9.3", "172.16.9.1", "172.16.9.2", "nsve-p2p"),
    ];
    for (sb, spoof, gw, own, host_if) in cases {
        let mac = h.inspect(sb)["endpoints"][0]["mac"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        h.in_host(&[
            "ip",
            "neigh",
            "replace",
            spoof,
            "lladdr",
            &mac,
            "dev",
            host_if,
            "nud",
            "permanent",
        ]);
        h.ok(&[
            "exec",
            sb,
            "--",
            "ip",
            "addr",
            "add",
            &format!("{spoof}/32"),
            "dev",
            "eth0",
        ]);
        let ping = |src: &str| {
            let args = [
                "exec", sb, "--", "ping", "-c", "1", "-W", "1", "-I", src, gw,
            ];
            h.nsnet(&args).status.success()
        };
        assert!(ping(own), "{sb}: its own address works");
        assert!(!ping(spoof), "{sb}: a spoofed source got through");
    }
    h.ok(&["rm", &b]);
    h.ok(&["rm", &p]);
    h.ok(&["network", "rm", "n"]);
    h.ok(&["network", "rm", "p2p"]);
}

#[test]
fn ranges_automatic_ports_and_host_listeners() {
    let h = TestHost::with_lan("ranges");
    let empty = h.snapshot();
    let (r, auto) = (h.sb("r"), h.sb("auto"));
    h.ok(&["create", &r, "-p", "8000-8002:80-82", "-p", "5300:53/udp"]);
    assert!(
        reach(&h.sb_path("r"), 81, &h.lan_path(), addr(HOST_IP, 8001)).is_some(),
        "8001 -> 81"
    );
    let ports = h.ok(&["port", &r]);
    assert_eq!(ports, "80/tcp -> 0.0.0.0:8000\n81/tcp -> 0.0.0.0:8001\n82/tcp -> 0.0.0.0:8002\n53/udp -> 0.0.0.0:5300\n");

    // `-p 80` alone: the lowest free port of the local port range.
    h.ok(&["create", &auto, "-p", "80"]);
    let mapped: Value = serde_json::from_str(&h.ok(&["port", &auto, "--json"])).expect("json");
    let port = u16::try_from(mapped[0]["host_port"].as_u64().unwrap_or(0)).unwrap_or(0);
    let range = h.in_host(&["sysctl", "-n", "net.ipv4.ip_local_port_range"]);
    let low: u16 = range
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    assert_eq!(port, low, "{mapped}");
    assert!(reach(&h.sb_path("auto"), 80, &h.lan_path(), addr(HOST_IP, port)).is_some());

    // A port a host process listens on is refused, and nothing changes.
    let fd = netns::open(&h.host_path()).expect("host ns");
    let listener = netns::run_in(&fd, || TcpListener::bind((HOST_IP, 7070)))
        .expect("enter")
        .expect("bind");
    let before = h.snapshot();
    let err = h.fails(&["create", &h.sb("x"), "-p", "7070:80"]);
    assert!(
        err.contains("in use by a process on this host (bound to 10.0.1.48:7070)"),
        "{err}"
    );
    let err = h.fails(&["create", &h.sb("x"), "-p", "8001:80"]);
    assert!(
        err.contains(&format!("already published by sandbox '{r}'")),
        "{err}"
    );
    // A range names the port that clashes, not its first one: 8000 is r's, 7070 the listener's.
    let err = h.fails(&["create", &h.sb("x"), "-p", "1-65535:1-65535"]);
    assert!(
        err.contains(&format!(
            "host port 8000/tcp is already published by sandbox '{r}'"
        )),
        "{err}"
    );
    let err = h.fails(&["create", &h.sb("x"), "-p", "1-7999:1-7999"]);
    assert!(
        err.contains("host port 7070/tcp is already in use"),
        "{err}"
    );
    let err = h.fails(&["create", &h.sb("x"), "-p", "1-100:1-100", "-p", "50:80"]);
    assert!(err.contains("publish the same host port 50/tcp"), "{err}");
    assert_eq!(h.snapshot(), before);
    drop(listener);

    h.ok(&["rm", &r]);
    h.ok(&["rm", &auto]);
    h.ok(&["network", "rm", "nsnet0"]);
    assert_eq!(h.snapshot(), empty);
}

#[test]
fn the_user_chain_runs_first_and_is_never_flushed() {
    let h = TestHost::with_lan("userchain");
    let s = h.sb("s");
    h.ok(&["create", &s, "-p", "8080:80"]);
    assert!(reach(&h.sb_path("s"), 80, &h.lan_path(), addr(HOST_IP, 8080)).is_some());
    // The user blocks the LAN peer from published ports (after DNAT the port is the sandbox's).
    h.in_host(&[
        "nft", "add", "rule", "inet", "nsnet", "user", "ip", "saddr", LAN_IP, "tcp", "dport", "80",
        "drop",
    ]);
    assert_eq!(
        reach(&h.sb_path("s"), 80, &h.lan_path(), addr(HOST_IP, 8080)),
        None
    );
    // Networks come and go; the user's rule stays, even with no network left.
    h.ok(&["network", "create", "other", "--subnet", "172.16.5.0/24"]);
    h.ok(&["network", "rm", "other"]);
    h.ok(&["rm", &s]);
    h.ok(&["network", "rm", "nsnet0"]);
    let left = h.in_host(&["nft", "list", "ruleset"]);
    assert!(
        left.contains("chain user") && left.contains("ip saddr 10.0.1.26 tcp dport 80 drop"),
        "{left}"
    );
    assert!(
        !left.contains("table bridge nsnet") && !left.contains("chain forward"),
        "{left}"
    );
    // And it is back in force as soon as nsnet builds its tables again.
    h.ok(&["create", &s, "-p", "8080:80"]);
    assert_eq!(
        reach(&h.sb_path("s"), 80, &h.lan_path(), addr(HOST_IP, 8080)),
        None
    );
    h.in_host(&["nft", "flush", "chain", "inet", "nsnet", "user"]);
    assert!(reach(&h.sb_path("s"), 80, &h.lan_path(), addr(HOST_IP, 8080)).is_some());
    h.ok(&["rm", &s]);
    h.ok(&["network", "rm", "nsnet0"]);
    assert!(
        h.in_host(&["nft", "list", "ruleset"]).trim().is_empty(),
        "an empty user chain goes with the last network"
    );
}

/// A host process that binds a published port afterwards gets none of its connections (the DNAT wins);
/// nsnet cannot stop it from binding, so `nsnet port` says so.
#[test]
fn a_port_a_host_process_binds_later_is_marked() {
    let h = TestHost::new("shadow");
    h.ok(&["network", "create", "n", "--subnet", "172.16.16.0/24"]);
    let s = h.sb("s");
    h.ok(&["create", &s, "--network", "n", "-p", "8090:80"]);
    assert_eq!(h.ok(&["port", &s]).trim(), "80/tcp -> 0.0.0.0:8090");
    let listener = probe::tcp_server(
        &h.host_path(),
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8090),
    )
    .expect("a host listener");
    let shown = h.ok(&["port", &s]);
    assert!(
        shown.contains("80/tcp -> 0.0.0.0:8090")
            && shown.contains("a host process listens here too"),
        "{shown}"
    );
    assert!(listener.wait().is_err(), "nobody connected");
    h.ok(&["rm", &s]);
    h.ok(&["network", "rm", "n"]);
}

/// `a_port_a_host_process_binds_later_is_marked` over IPv6 (issue #19): on a dual-stack network, a host
/// process that binds the published port afterwards on the host's IPv6 address, or on `[::1]`, is marked by
/// `nsnet port` too (the port is taken on both families), and gets none of the connections: the LAN peer's
/// go to the sandbox through the DNAT, the host's own to `[::1]` through the socket translation. On an IPv4
/// network the same IPv6 listener shadows nothing and is not marked.
#[test]
fn a_port_a_host_process_binds_later_on_ipv6_is_marked() {
    use std::net::{IpAddr, Ipv6Addr, SocketAddr};
    let h = TestHost::with_lan6("shadow6");
    h.ok(&["network", "create", "ds", "--ipv6"]);
    h.ok(&["network", "create", "v4", "--subnet", "172.16.17.0/24"]);
    let (s, t) = (h.sb("s"), h.sb("t"));
    h.ok(&["create", &s, "--network", "ds", "-p", "8090:80"]);
    h.ok(&["create", &t, "--network", "v4", "-p", "8091:80"]);
    assert_eq!(h.ok(&["port", &s]).trim(), "80/tcp -> 0.0.0.0:8090");
    let host6: Ipv6Addr = common::HOST_IP6.parse().expect("test address");
    let lan6: IpAddr = common::LAN_IP6.parse().expect("test address");
    for at in [host6, Ipv6Addr::LOCALHOST] {
        let listener =
            probe::tcp_server(&h.host_path(), SocketAddr::new(at.into(), 8090)).expect("listen");
        let shown = h.ok(&["port", &s]);
        assert!(
            shown.contains("80/tcp -> 0.0.0.0:8090")
                && shown.contains("a host process listens here too"),
            "a listener on [{at}]:8090: {shown}"
        );
        // The listener is not what answers: the LAN peer reaches the sandbox, with its own address.
        assert_eq!(
            common::reach_any(
                &h.sb_path("s"),
                80,
                &h.lan_path(),
                SocketAddr::new(host6.into(), 8090)
            ),
            Some(lan6),
            "the LAN peer, with [{at}]:8090 bound on the host"
        );
        if common::cgroup2_root().is_some() {
            let srv =
                probe::tcp_server(&h.sb_path("s"), (Ipv6Addr::UNSPECIFIED, 80)).expect("listen");
            let seen = h.client6(&h.host_path(), "tcp", "::1", 8090);
            assert!(
                seen.starts_with("[::1]:8090 hello"),
                "host -> [::1]: {seen}"
            );
            assert!(
                srv.wait().is_ok(),
                "host -> [::1] did not reach the sandbox"
            );
        }
        assert!(
            listener.wait().is_err(),
            "the host listener on [{at}] got a connection"
        );
    }
    // An IPv4 network's port on every address is IPv4's only: an IPv6 listener does not shadow it.
    let listener =
        probe::tcp_server(&h.host_path(), SocketAddr::new(host6.into(), 8091)).expect("listen");
    assert_eq!(h.ok(&["port", &t]).trim(), "80/tcp -> 0.0.0.0:8091");
    assert!(probe::tcp_hello(&h.lan_path(), SocketAddr::new(host6.into(), 8091)).is_ok());
    assert_eq!(
        listener.wait().ok().map(|peer| peer.ip()),
        Some(lan6),
        "the IPv6 listener beside an IPv4 network's port gets its connections"
    );
    h.ok(&["rm", &s]);
    h.ok(&["rm", &t]);
    h.ok(&["network", "rm", "ds"]);
    h.ok(&["network", "rm", "v4"]);
}
