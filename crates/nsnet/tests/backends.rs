//! The iptables and `none` firewall backends, with real packets: what the nftables tests check, where it
//! applies.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use common::{reach, TestHost, HOST_IP, LAN_IP};
use nsnet_core::probe;

fn addr(s: &str, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(s.parse().expect("test address"), port)
}

fn iptables_host(test: &str) -> TestHost {
    let mut h = TestHost::with_lan(test);
    h.firewall = Some("iptables");
    h
}

/// What nsnet's iptables chains hold right now.
fn nsnet_rules(h: &TestHost) -> Vec<String> {
    h.in_host(&["iptables-save"])
        .lines()
        .filter(|l| l.contains("NSNET"))
        .map(str::to_string)
        .collect()
}

#[test]
fn iptables_backend_publishes_isolates_and_cleans_up() {
    let h = iptables_host("ipt");
    // A first cycle lets iptables-nft create its (empty) built-in tables; the baseline is after it.
    h.ok(&["create", &h.sb("warm")]);
    h.ok(&["rm", &h.sb("warm")]);
    h.ok(&["network", "rm", "nsnet0"]);
    assert!(nsnet_rules(&h).is_empty(), "{:?}", nsnet_rules(&h));
    let baseline = h.snapshot();

    h.ok(&["network", "create", "n1", "--subnet", "172.16.1.0/24"]);
    h.ok(&["network", "create", "n2", "--subnet", "172.16.2.0/24"]);
    let (a, b, c) = (h.sb("a"), h.sb("b"), h.sb("c"));
    h.ok(&[
        "create",
        &a,
        "--network",
        "n1",
        "-p",
        "8080:80",
        "-p",
        "127.0.0.1:9090:80",
    ]);
    h.ok(&["create", &b, "--network", "n1"]);
    h.ok(&["create", &c, "--network", "n2"]);
    assert_eq!(h.inspect(&a)["endpoints"][0]["network"], "n1");
    let net: serde_json::Value =
        serde_json::from_str(&h.ok(&["network", "inspect", "n1", "--json"])).expect("json");
    assert_eq!(net["firewall"], "iptables");
    assert!(
        h.in_host(&["nft", "list", "tables"])
            .lines()
            .all(|t| !t.contains("nsnet")),
        "nft tables on iptables"
    );
    let a_ns = h.sb_path("a");

    // Every path to the published port, and the loopback-only one from the host.
    common::assert_every_path(&h, "a", "b", "c", 8080);
    assert!(
        reach(&a_ns, 80, &h.host_path(), addr("127.0.0.1", 9090)).is_some(),
        "host -> loopback-only port"
    );
    assert_eq!(
        reach(&a_ns, 80, &h.lan_path(), addr(HOST_IP, 9090)),
        None,
        "loopback-only port from outside"
    );

    // Egress with masquerade; isolation between networks, not within one.
    let server = probe::tcp_server(&h.lan_path(), addr(LAN_IP, 9000)).expect("listen");
    probe::tcp_hello(&h.sb_path("b"), addr(LAN_IP, 9000)).expect("egress");
    assert_eq!(server.wait().expect("served").ip().to_string(), HOST_IP);
    assert!(
        probe::ping(&h.sb_path("a"), "172.16.1.3".parse().expect("ip")).expect("ping"),
        "a -> b"
    );
    assert!(
        !probe::ping(&h.sb_path("c"), "172.16.1.2".parse().expect("ip")).expect("ping"),
        "c -> a"
    );

    // Spoofing (IPv4; iptables does not filter ARP): a static neighbour so only the IP check can stop it.
    let mac = h.inspect(&b)["endpoints"][0]["mac"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    h.in_host(&[
        "ip",
        "neigh",
        "replace",
        "172.16.1.200",
        "lladdr",
        &mac,
        "dev",
        "nsbr-n1",
        "nud",
        "permanent",
    ]);
    h.ok(&[
        "exec",
        &b,
        "--",
        "ip",
        "addr",
        "add",
        "172.16.1.200/32",
        "dev",
        "eth0",
    ]);
    let ping = |src: &str| {
        h.nsnet(&[
            "exec",
            &b,
            "--",
            "ping",
            "-c1",
            "-W1",
            "-I",
            src,
            "172.16.1.1",
        ])
        .status
        .success()
    };
    assert!(
        ping("172.16.1.3") && !ping("172.16.1.200"),
        "spoofed source got through"
    );
    h.in_host(&["ip", "neigh", "del", "172.16.1.200", "dev", "nsbr-n1"]);

    // Reload after the ruleset was flushed: the same rules come back, and again changes nothing.
    let before: Vec<String> = nsnet_rules(&h);
    h.in_host(&["nft", "flush", "ruleset"]);
    assert!(nsnet_rules(&h).is_empty());
    h.ok(&["firewall", "reload"]);
    h.ok(&["firewall", "reload"]);
    let mut got = nsnet_rules(&h);
    let mut want = before.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(
        reach(&a_ns, 80, &h.lan_path(), addr(HOST_IP, 8080)),
        Some(LAN_IP.parse().expect("ip"))
    );

    for s in [&a, &b, &c] {
        h.ok(&["rm", s]);
    }
    h.ok(&["network", "rm", "n1"]);
    h.ok(&["network", "rm", "n2"]);
    assert!(nsnet_rules(&h).is_empty(), "{:?}", nsnet_rules(&h));
    // The flush above removed iptables' own empty tables too; compare what nsnet is responsible for.
    let after = h.snapshot();
    assert_eq!(
        (after.links, after.addrs, after.state, after.namespaces),
        (
            baseline.links,
            baseline.addrs,
            baseline.state,
            baseline.namespaces
        )
    );
}

#[test]
fn iptables_backend_on_a_forward_drop_policy() {
    let h = iptables_host("iptdrop");
    h.in_host(&["iptables", "-P", "FORWARD", "DROP"]);
    let s = h.sb("s");
    h.ok(&["create", &s, "-p", "8080:80"]);
    let server = probe::tcp_server(&h.lan_path(), addr(LAN_IP, 9000)).expect("listen");
    probe::tcp_hello(&h.sb_path("s"), addr(LAN_IP, 9000)).expect("egress through a DROP policy");
    server.wait().expect("served");
    assert!(reach(&h.sb_path("s"), 80, &h.lan_path(), addr(HOST_IP, 8080)).is_some());
    // The user chain runs first.
    h.in_host(&["iptables", "-A", "NSNET-USER", "-s", LAN_IP, "-j", "DROP"]);
    assert_eq!(
        reach(&h.sb_path("s"), 80, &h.lan_path(), addr(HOST_IP, 8080)),
        None
    );
    h.ok(&["rm", &s]);
    h.ok(&["network", "rm", "nsnet0"]);
    assert_eq!(
        nsnet_rules(&h),
        vec![
            ":NSNET-USER - [0:0]",
            &format!("-A NSNET-USER -s {LAN_IP}/32 -j DROP")
        ]
    );
}

#[test]
fn firewall_none_writes_no_rules_and_refuses_ports() {
    let mut h = TestHost::new("fwnone");
    h.firewall = Some("none");
    let empty = h.snapshot();
    let s = h.sb("s");
    let err = h.fails(&["create", &s, "-p", "8080:80"]);
    assert!(err.contains("--firewall none"), "{err}");
    h.ok(&["create", &s]);
    assert!(h.in_host(&["nft", "list", "ruleset"]).trim().is_empty());
    assert!(probe::ping(&h.sb_path("s"), Ipv4Addr::new(10, 89, 0, 1)).expect("ping"));
    // Later commands follow the recorded backend, whatever the environment says.
    h.firewall = Some("nftables");
    let err = h.fails(&["network", "create", "x"]);
    assert!(err.contains("use the none firewall"), "{err}");
    h.ok(&["rm", &s]);
    h.ok(&["network", "rm", "nsnet0"]);
    assert_eq!(h.snapshot(), empty);
}
