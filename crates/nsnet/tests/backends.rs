//! The iptables and `none` firewall backends, with real packets: what the nftables tests check, where it
//! applies.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};

use common::{reach, reach_any, TestHost, HOST_IP, HOST_IP6, LAN_IP, LAN_IP6};
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
    nsnet_rules_of(h, "iptables-save")
}

/// What nsnet's chains hold right now in `tool`'s (`iptables-save` or `ip6tables-save`) tables.
fn nsnet_rules_of(h: &TestHost, tool: &str) -> Vec<String> {
    h.in_host(&[tool])
        .lines()
        .filter(|l| l.contains("NSNET"))
        .map(str::to_string)
        .collect()
}

/// A dual-stack iptables host with a LAN peer, IPv6 forwarding on (as a host that routes IPv6 has it).
fn iptables_host6(test: &str) -> TestHost {
    let mut h = TestHost::with_lan6(test);
    h.firewall = Some("iptables");
    h.in_host(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    h
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("test address")
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

/// `iptables_backend_publishes_isolates_and_cleans_up` on dual-stack networks: the IPv6 side lives in
/// ip6tables. A published port is reached over IPv6 from every path, sandboxes get out with NAT66, networks
/// are isolated over IPv6 too, a forged IPv6 source is dropped at the bridge (physdev) while the sandbox's
/// own addresses pass, `firewall reload` puts back what was removed by hand, and after `network rm` nothing of
/// nsnet is left in either family (the snapshot holds the whole ruleset, ip6tables-nft's tables included).
#[test]
fn iptables_backend_on_dual_stack_networks_publishes_isolates_and_cleans_up() {
    let h = iptables_host6("ipt6");
    // A first cycle lets iptables-nft create its (empty) built-in tables of both families.
    h.ok(&["network", "create", "warm", "--ipv6"]);
    h.ok(&["network", "rm", "warm"]);
    assert!(nsnet_rules_of(&h, "ip6tables-save").is_empty());
    let baseline = h.snapshot();

    h.ok(&[
        "network",
        "create",
        "n1",
        "--ipv6",
        "--subnet",
        "172.16.1.0/24",
    ]);
    h.ok(&[
        "network",
        "create",
        "n2",
        "--ipv6",
        "--subnet",
        "172.16.2.0/24",
    ]);
    let (a, b, c) = (h.sb("a"), h.sb("b"), h.sb("c"));
    h.ok(&["create", &a, "--network", "n1", "-p", "8080:80"]);
    h.ok(&["create", &b, "--network", "n1"]);
    h.ok(&["create", &c, "--network", "n2"]);
    let (a6, b6) = (h.address6(&a), h.address6(&b));
    let rules6 = nsnet_rules_of(&h, "ip6tables-save");
    assert!(
        rules6
            .iter()
            .any(|r| r.ends_with(&format!("--to-destination [{a6}]:80"))),
        "{rules6:#?}"
    );
    assert!(
        h.in_host(&["nft", "list", "tables"])
            .lines()
            .all(|t| !t.contains("nsnet")),
        "nft tables on iptables"
    );

    // The published port over IPv6, from every path; IPv4 as before.
    let a_ns = h.sb_path("a");
    let to = SocketAddr::new(v6(HOST_IP6).into(), 8080);
    let gw: IpAddr = v6(h.inspect(&a)["endpoints"][0]["ipv6"]["gateway"]
        .as_str()
        .unwrap_or_default())
    .into();
    assert_eq!(
        reach_any(&a_ns, 80, &h.lan_path(), to),
        Some(v6(LAN_IP6).into()),
        "LAN peer -> host over IPv6: the sandbox sees the real client"
    );
    assert!(
        reach_any(&a_ns, 80, &h.host_path(), to).is_some(),
        "host -> own IPv6 address"
    );
    assert_eq!(
        reach_any(&a_ns, 80, &h.sb_path("b"), to),
        Some(gw),
        "same network"
    );
    assert!(
        reach_any(&a_ns, 80, &h.sb_path("c"), to).is_some(),
        "other network"
    );
    assert_eq!(
        reach_any(&a_ns, 80, &a_ns, to),
        Some(gw),
        "hairpin to itself"
    );
    common::assert_every_path(&h, "a", "b", "c", 8080);

    // Egress with NAT66; isolation between networks over IPv6, not within one.
    let lan = SocketAddr::new(v6(LAN_IP6).into(), 9000);
    assert_eq!(
        reach_any(&h.lan_path(), 9000, &h.sb_path("b"), lan),
        Some(v6(HOST_IP6).into()),
        "NAT66: the LAN peer sees the host's address"
    );
    assert!(probe::ping6(&h.sb_path("a"), b6).expect("ping"), "a -> b");
    assert!(
        !probe::ping6(&h.sb_path("c"), a6).expect("ping"),
        "c -> a over IPv6"
    );

    // Spoofing: b's own sources (global and link-local) reach a, anyone else's and `::` do not.
    let (a_mac, b_mac, b_ll) = (h.mac(&a), h.mac(&b), h.link_local6("b"));
    let echo = |src: Ipv6Addr| common::icmpv6_frame(a_mac, b_mac, src, a6, 128, 0, &[0, 7, 0, 1]);
    let send = |frames: &[Vec<u8>]| {
        probe::send_frames(&h.sb_path("b"), "eth0", frames).expect("send raw frames");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let before = h.echoes6("a");
    send(&[echo(b6), echo(b_ll)]);
    assert_eq!(h.echoes6("a"), before + 2, "b's own sources pass");
    let c6 = h.address6(&c);
    send(&[
        echo(c6),
        echo(v6("::")),
        echo(v6("fe80::bad")),
        echo(v6("fd00::bad")),
    ]);
    assert_eq!(h.echoes6("a"), before + 2, "a forged IPv6 source reached a");

    // Reload after nsnet's IPv6 rules were removed by hand: the same rules come back.
    let mut before = nsnet_rules_of(&h, "ip6tables-save");
    for (table, chain) in [
        ("raw", "NSNET-GUARD"),
        ("nat", "NSNET-PORTS"),
        ("filter", "NSNET-ACCEPT"),
    ] {
        h.in_host(&["ip6tables", "-t", table, "-F", chain]);
    }
    h.ok(&["firewall", "reload"]);
    h.ok(&["firewall", "reload"]);
    let mut got = nsnet_rules_of(&h, "ip6tables-save");
    got.sort();
    before.sort();
    assert_eq!(got, before);
    assert_eq!(
        reach_any(&a_ns, 80, &h.lan_path(), to),
        Some(v6(LAN_IP6).into()),
        "after reload"
    );

    for s in [&a, &b, &c] {
        h.ok(&["rm", s]);
    }
    h.ok(&["network", "rm", "n1"]);
    h.ok(&["network", "rm", "n2"]);
    assert!(nsnet_rules(&h).is_empty(), "{:?}", nsnet_rules(&h));
    let left = nsnet_rules_of(&h, "ip6tables-save");
    assert!(left.is_empty(), "{left:?}");
    let after = h.snapshot();
    assert_eq!(after, baseline, "{}", after.diff(&baseline));
}

/// `iptables_backend_on_a_forward_drop_policy` on a dual-stack network, with `ip6tables -P FORWARD DROP`:
/// egress over IPv6 and the published port work, the IPv6 user chain runs first, and removing the network
/// leaves only the user's chain and rule.
#[test]
fn iptables_backend_on_an_ipv6_forward_drop_policy() {
    let h = iptables_host6("ipt6drop");
    h.in_host(&["iptables", "-P", "FORWARD", "DROP"]);
    h.in_host(&["ip6tables", "-P", "FORWARD", "DROP"]);
    h.ok(&["network", "create", "ds", "--ipv6"]);
    let s = h.sb("s");
    h.ok(&["create", &s, "--network", "ds", "-p", "8080:80"]);
    let lan = SocketAddr::new(v6(LAN_IP6).into(), 9000);
    assert_eq!(
        reach_any(&h.lan_path(), 9000, &h.sb_path("s"), lan),
        Some(v6(HOST_IP6).into()),
        "egress over IPv6 through a DROP policy"
    );
    let to = SocketAddr::new(v6(HOST_IP6).into(), 8080);
    assert!(reach_any(&h.sb_path("s"), 80, &h.lan_path(), to).is_some());
    assert!(reach(&h.sb_path("s"), 80, &h.lan_path(), addr(HOST_IP, 8080)).is_some());
    // The user chain runs first.
    h.in_host(&["ip6tables", "-A", "NSNET-USER", "-s", LAN_IP6, "-j", "DROP"]);
    assert_eq!(reach_any(&h.sb_path("s"), 80, &h.lan_path(), to), None);
    h.ok(&["rm", &s]);
    h.ok(&["network", "rm", "ds"]);
    assert_eq!(
        nsnet_rules_of(&h, "ip6tables-save"),
        vec![
            ":NSNET-USER - [0:0]".to_string(),
            format!("-A NSNET-USER -s {LAN_IP6}/128 -j DROP")
        ]
    );
    // The IPv4 user chain, empty, stays with it (one decision for both families).
    assert_eq!(nsnet_rules(&h), vec![":NSNET-USER - [0:0]"]);
}

/// A restore commits table by table, and the two families are two restores: when one is refused after
/// others landed, they are undone, in place. A user's rule that jumps to NSNET-PORTS (IPv4's nat table) makes
/// the last `network rm` fail at deleting that chain, after ip6tables' tables and iptables' filter table
/// committed; all of them are then exactly as before (rules in the same order: deleted ones back at their
/// places, flushed chains refilled).
#[test]
fn a_refused_restore_undoes_what_landed_before_it() {
    let h = iptables_host6("ipt6undo");
    h.ok(&["network", "create", "ds", "--ipv6"]);
    let s = h.sb("s");
    h.ok(&["create", &s, "--network", "ds", "-p", "8080:80"]);
    h.ok(&["rm", &s]);
    h.in_host(&["iptables", "-t", "nat", "-I", "OUTPUT", "-j", "NSNET-PORTS"]);
    let ordered = |tool: &str| {
        h.in_host(&[tool])
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (v4, v6) = (ordered("iptables-save"), ordered("ip6tables-save"));
    assert!(v6.iter().any(|l| l.contains("NSNET-ACCEPT -i")), "{v6:#?}");
    let err =
        common::check_one_line_failure(&["network", "rm", "ds"], h.nsnet(&["network", "rm", "ds"]));
    assert!(err.contains("iptables-restore"), "{err}");
    assert_eq!(
        ordered("ip6tables-save"),
        v6,
        "the IPv6 restore was not undone"
    );
    assert_eq!(
        ordered("iptables-save"),
        v4,
        "the IPv4 filter table was not undone"
    );
    h.in_host(&["iptables", "-t", "nat", "-D", "OUTPUT", "-j", "NSNET-PORTS"]);
    h.ok(&["network", "rm", "ds"]);
    assert!(nsnet_rules(&h).is_empty(), "{:?}", nsnet_rules(&h));
    assert!(nsnet_rules_of(&h, "ip6tables-save").is_empty());
}

/// A host whose chains an nsnet without the IPv6 side made (ip6tables holds none of them): the next command
/// that adds anything makes them first, for the same owner, and removing what the older nsnet added (with no
/// IPv6 rules) deletes nothing that is not there.
#[test]
fn chains_from_before_the_ipv6_side_are_made_on_the_next_add() {
    let h = iptables_host("ipt6old");
    h.ok(&["network", "create", "n", "--subnet", "172.16.5.0/24"]);
    let (a, b) = (h.sb("a"), h.sb("b"));
    h.ok(&["create", &a, "--network", "n"]);
    // What an older nsnet leaves: nothing in ip6tables (iptables-nft makes its tables on first use).
    for table in ["raw", "nat", "filter"] {
        h.in_host(&["nft", "delete", "table", "ip6", table]);
    }
    // Nor the mark of IPv6 dropped per network (an older nsnet dropped it per endpoint).
    h.in_host(&[
        "iptables",
        "-t",
        "nat",
        "-D",
        "NSNET-POSTROUTING",
        "-m",
        "comment",
        "--comment",
        "nsnet:ipv6-guard-per-network",
    ]);
    assert!(nsnet_rules_of(&h, "ip6tables-save").is_empty());
    h.ok(&["create", &b, "--network", "n"]);
    let rules6 = nsnet_rules_of(&h, "ip6tables-save");
    let port = h.inspect(&b)["endpoints"][0]["host_interface"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for want in [
        "-A PREROUTING -j NSNET-GUARD".to_string(),
        format!("-A NSNET-GUARD -m physdev --physdev-in {port} -j DROP"),
    ] {
        assert!(rules6.contains(&want), "{want} not in {rules6:#?}");
    }
    let owner = |tool: &str| {
        h.in_host(&[tool, "-t", "nat"])
            .lines()
            .find(|l| l.starts_with("-A NSNET-POSTROUTING -m comment"))
            .map(str::to_string)
    };
    assert_eq!(owner("ip6tables-save"), owner("iptables-save"));
    h.ok(&["rm", &a]);
    h.ok(&["rm", &b]);
    h.ok(&["network", "rm", "n"]);
    assert!(nsnet_rules(&h).is_empty(), "{:?}", nsnet_rules(&h));
    assert!(nsnet_rules_of(&h, "ip6tables-save").is_empty());
}

/// An IPv4 network's sandboxes send no IPv6: on chains this nsnet made, one ip6tables drop per network
/// (`-i BRIDGE`), and a sandbox's set-up and removal leave ip6tables as it is. On chains an older nsnet made
/// (no mark in iptables, one drop pair per endpoint in ip6tables), `rm` still deletes its endpoint's pair and
/// `create` writes one, until `firewall reload` moves the host over: the pairs go, the network's drop and the
/// mark come.
#[test]
fn ipv4_networks_drop_ipv6_per_network_and_older_per_endpoint_drops_still_go() {
    let h = iptables_host("ipt6net");
    h.ok(&[
        "network",
        "create",
        "n",
        "--subnet",
        "172.16.6.0/24",
        "--bridge",
        "nsbr-ipt6n",
    ]);
    let guard = "-A NSNET-GUARD -i nsbr-ipt6n -j DROP".to_string();
    let mark = "-A NSNET-POSTROUTING -m comment --comment \"nsnet:ipv6-guard-per-network\"";
    assert!(nsnet_rules_of(&h, "ip6tables-save").contains(&guard));
    assert!(nsnet_rules(&h).iter().any(|r| r == mark));
    let before = nsnet_rules_of(&h, "ip6tables-save");
    let (a, b) = (h.sb("a"), h.sb("b"));
    h.ok(&["create", &a, "--network", "n"]);
    assert_eq!(nsnet_rules_of(&h, "ip6tables-save"), before);
    let port = |sb: &str| {
        h.inspect(sb)["endpoints"][0]["host_interface"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let pair = |p: &str| {
        [
            format!("-A NSNET-GUARD -m physdev --physdev-in {p} -j DROP"),
            format!("-A NSNET-GUARD -i {p} -j DROP"),
        ]
    };
    // What an older nsnet left: no mark, no network drop, a drop pair for the endpoint.
    h.in_host(&[
        "iptables",
        "-t",
        "nat",
        "-D",
        "NSNET-POSTROUTING",
        "-m",
        "comment",
        "--comment",
        "nsnet:ipv6-guard-per-network",
    ]);
    h.in_host(&[
        "ip6tables",
        "-t",
        "raw",
        "-D",
        "NSNET-GUARD",
        "-i",
        "nsbr-ipt6n",
        "-j",
        "DROP",
    ]);
    let pa = port(&a);
    h.in_host(&[
        "ip6tables",
        "-t",
        "raw",
        "-A",
        "NSNET-GUARD",
        "-m",
        "physdev",
        "--physdev-in",
        &pa,
        "-j",
        "DROP",
    ]);
    h.in_host(&[
        "ip6tables",
        "-t",
        "raw",
        "-A",
        "NSNET-GUARD",
        "-i",
        &pa,
        "-j",
        "DROP",
    ]);
    h.ok(&["create", &b, "--network", "n"]);
    let rules6 = nsnet_rules_of(&h, "ip6tables-save");
    for want in pair(&port(&b)) {
        assert!(rules6.contains(&want), "{want} not in {rules6:#?}");
    }
    h.ok(&["rm", &a]);
    let rules6 = nsnet_rules_of(&h, "ip6tables-save");
    assert!(!rules6.iter().any(|r| r.contains(&pa)), "{rules6:#?}");
    h.ok(&["firewall", "reload"]);
    let rules6 = nsnet_rules_of(&h, "ip6tables-save");
    assert!(rules6.contains(&guard), "{rules6:#?}");
    assert!(!rules6.iter().any(|r| r.contains(&port(&b))), "{rules6:#?}");
    assert!(nsnet_rules(&h).iter().any(|r| r == mark));
    let before = nsnet_rules_of(&h, "ip6tables-save");
    h.ok(&["rm", &b]);
    assert_eq!(nsnet_rules_of(&h, "ip6tables-save"), before);
    h.ok(&["network", "rm", "n"]);
    assert!(nsnet_rules(&h).is_empty(), "{:?}", nsnet_rules(&h));
    assert!(nsnet_rules_of(&h, "ip6tables-save").is_empty());
}
