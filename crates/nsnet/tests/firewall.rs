//! The firewall around nsnet: reload after the ruleset was flushed, and hosts whose own forward chain drops
//! by default. Real packets in throwaway namespaces.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use common::{TestHost, HOST_IP, LAN_IP};
use nsnet_core::probe;

fn addr(s: &str, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(s.parse().expect("test address"), port)
}

/// A ruleset's content, independent of the order nft prints set elements in: every rule line and every set
/// element, sorted.
fn content(ruleset: &str) -> Vec<String> {
    let mut items: Vec<String> = ruleset
        .split(['\n', ',', '{', '}'])
        .map(|s| s.trim().trim_start_matches("elements = ").to_string())
        .filter(|s| !s.is_empty())
        .collect();
    items.sort();
    items
}

/// LAN peer -> host:8080 reaches sandbox `name`'s port 80.
fn published_works(h: &TestHost, name: &str) -> bool {
    let Ok(server) = probe::tcp_server(
        &h.sb_path(name),
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80),
    ) else {
        return false;
    };
    let hello = probe::tcp_hello(&h.lan_path(), addr(HOST_IP, 8080));
    server.wait().is_ok() && hello.is_ok()
}

/// Sandbox `name` -> LAN peer:9000.
fn egress_works(h: &TestHost, name: &str) -> bool {
    let Ok(server) = probe::tcp_server(&h.lan_path(), addr(LAN_IP, 9000)) else {
        return false;
    };
    let hello = probe::tcp_hello(&h.sb_path(name), addr(LAN_IP, 9000));
    server.wait().is_ok() && hello.is_ok()
}

#[test]
fn reload_restores_a_flushed_ruleset_and_is_idempotent() {
    let h = TestHost::with_lan("reload");
    let empty = h.snapshot();
    h.ok(&["network", "create", "other", "--subnet", "172.16.7.0/24"]);
    let (s, o) = (h.sb("s"), h.sb("o"));
    h.ok(&["create", &s, "-p", "8080:80"]);
    h.ok(&["create", &o, "--network", "other"]);
    let o_ip: Ipv4Addr = "172.16.7.2".parse().expect("ip");
    assert!(published_works(&h, "s"));
    assert!(
        !probe::ping(&h.sb_path("s"), o_ip).expect("ping"),
        "isolation before the flush"
    );
    let intact = content(&h.in_host(&["nft", "list", "ruleset"]));

    h.in_host(&["nft", "flush", "ruleset"]);
    assert!(
        !published_works(&h, "s"),
        "the flush took the published port away"
    );
    h.ok(&["firewall", "reload"]);
    assert_eq!(content(&h.in_host(&["nft", "list", "ruleset"])), intact);
    assert!(published_works(&h, "s"));
    assert!(egress_works(&h, "s"));
    assert!(
        !probe::ping(&h.sb_path("s"), o_ip).expect("ping"),
        "isolation after the reload"
    );

    // Again, on an intact ruleset: nothing changes.
    h.ok(&["firewall", "reload"]);
    assert_eq!(content(&h.in_host(&["nft", "list", "ruleset"])), intact);

    h.ok(&["rm", &s]);
    h.ok(&["rm", &o]);
    h.ok(&["network", "rm", "nsnet0"]);
    h.ok(&["network", "rm", "other"]);
    assert_eq!(h.snapshot(), empty);
}

#[test]
fn a_flushed_ruleset_does_not_block_removal_and_create_says_how_to_fix_it() {
    let h = TestHost::new("flushed");
    let empty = h.snapshot();
    h.ok(&["network", "create", "a", "--subnet", "172.16.8.0/24"]);
    let s = h.sb("s");
    h.ok(&["create", &s, "--network", "a", "-p", "8080:80"]);
    h.in_host(&["nft", "flush", "ruleset"]);
    let before = h.snapshot();
    let err = h.fails(&["network", "create", "b", "--subnet", "172.16.9.0/24"]);
    assert!(err.contains("nsnet firewall reload"), "{err}");
    assert_eq!(h.snapshot(), before);
    // Removal needs no reload: what it would delete is gone already.
    h.ok(&["rm", &s]);
    h.ok(&["network", "rm", "a"]);
    assert_eq!(h.snapshot(), empty);
}

#[test]
fn works_on_a_host_whose_forward_chain_drops() {
    let h = TestHost::with_lan("droppolicy");
    // The host's own firewall, as iptables-nft writes it: FORWARD with policy drop and a rule of its own.
    for cmd in [
        "add table ip filter",
        "add chain ip filter FORWARD { type filter hook forward priority filter; policy drop; }",
        "add rule ip filter FORWARD tcp dport 9999 drop",
    ] {
        h.in_host(&["nft", cmd]);
    }
    let host_firewall = h.snapshot();
    let s = h.sb("s");
    h.ok(&["create", &s, "-p", "8080:80"]);
    assert!(egress_works(&h, "s"), "the sandbox cannot get out");
    assert!(
        published_works(&h, "s"),
        "the published port is unreachable"
    );
    let chain = h.in_host(&["nft", "list", "chain", "ip", "filter", "FORWARD"]);
    assert_eq!(
        chain.matches("comment \"nsnet nsnet0\"").count(),
        3,
        "{chain}"
    );
    assert!(chain.contains("tcp dport 9999 drop"), "{chain}");

    // The accepts are what lets traffic through: without them (as before nsnet), it stops.
    let json = h.in_host(&[
        "nft", "-j", "-a", "list", "chain", "ip", "filter", "FORWARD",
    ]);
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("json");
    let handles: Vec<u64> = parsed["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["rule"]["comment"] == "nsnet nsnet0")
        .filter_map(|i| i["rule"]["handle"].as_u64())
        .collect();
    for handle in &handles {
        h.in_host(&[
            "nft",
            "delete",
            "rule",
            "ip",
            "filter",
            "FORWARD",
            "handle",
            &handle.to_string(),
        ]);
    }
    assert!(
        !egress_works(&h, "s"),
        "test rig: the drop policy does not drop"
    );
    // A reload puts them back, once.
    h.ok(&["firewall", "reload"]);
    h.ok(&["firewall", "reload"]);
    let chain = h.in_host(&["nft", "list", "chain", "ip", "filter", "FORWARD"]);
    assert_eq!(
        chain.matches("comment \"nsnet nsnet0\"").count(),
        3,
        "{chain}"
    );
    assert!(egress_works(&h, "s"));

    h.ok(&["rm", &s]);
    h.ok(&["network", "rm", "nsnet0"]);
    assert_eq!(
        h.snapshot(),
        host_firewall,
        "nsnet left rules in the host's chain"
    );
}

#[test]
fn reload_lets_traffic_through_a_forward_chain_that_turned_drop_later() {
    let h = TestHost::with_lan("dropl8r");
    let empty = h.snapshot();
    let s = h.sb("s");
    h.ok(&["create", &s, "-p", "8080:80"]);
    assert!(egress_works(&h, "s"));
    // The host's firewall comes up after the network was made (a firewall service started at boot, late).
    for cmd in [
        "add table ip filter",
        "add chain ip filter FORWARD { type filter hook forward priority filter; policy drop; }",
    ] {
        h.in_host(&["nft", cmd]);
    }
    assert!(
        !egress_works(&h, "s"),
        "test rig: the drop policy does not drop"
    );
    h.ok(&["firewall", "reload"]);
    assert!(egress_works(&h, "s"), "reload did not let the sandbox out");
    assert!(
        published_works(&h, "s"),
        "reload did not let the published port in"
    );
    let chain = h.in_host(&["nft", "list", "chain", "ip", "filter", "FORWARD"]);
    assert_eq!(
        chain.matches("comment \"nsnet nsnet0\"").count(),
        3,
        "{chain}"
    );
    // Recorded with the network, so they go with it.
    h.ok(&["rm", &s]);
    h.ok(&["network", "rm", "nsnet0"]);
    let chain = h.in_host(&["nft", "list", "chain", "ip", "filter", "FORWARD"]);
    assert!(!chain.contains("nsnet"), "{chain}");
    h.in_host(&["nft", "delete", "table", "ip", "filter"]);
    assert_eq!(h.snapshot(), empty);
}

/// A router advertisement from the LAN peer's `lan0` (link-local source fe80::bad) to all nodes, giving a
/// default route for `lifetime` seconds (0 withdraws it).
fn lan_router_advertisement(h: &TestHost, lifetime: u16) -> Vec<u8> {
    let links: serde_json::Value = serde_json::from_str(&common::sh(&[
        "ip",
        "-n",
        &h.lan_path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        "-j",
        "link",
        "show",
        "lan0",
    ]))
    .expect("ip -j link");
    let mac: Vec<u8> = links[0]["address"]
        .as_str()
        .unwrap_or_default()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("a MAC"))
        .collect();
    let mac: [u8; 6] = mac.try_into().expect("six bytes");
    // Hop limit 64, no flags, the lifetime, reachable and retransmit times 0; the source link-layer address.
    let mut body = vec![64, 0];
    body.extend(lifetime.to_be_bytes());
    body.extend([0; 8]);
    body.extend([1, 1]);
    body.extend(mac);
    common::icmpv6_frame(
        [0x33, 0x33, 0, 0, 0, 1],
        mac,
        "fe80::bad".parse().expect("address"),
        "ff02::1".parse().expect("address"),
        134,
        0,
        &body,
    )
}

/// C6 of issue #19: switching IPv6 forwarding on purges the routes router advertisements gave and ignores
/// later ones (moby#43466). A dual-stack network therefore first sets `accept_ra=2` on each uplink that takes
/// them, so the host keeps its default route and keeps listening to its router; an internal one switches
/// nothing on, and an IPv4 network leaves IPv6 forwarding alone.
#[test]
fn a_host_taking_router_advertisements_keeps_its_default_route() {
    let h = TestHost::with_lan6("v6fwd");
    let sysctl = |key: &str| h.in_host(&["sysctl", "-n", key]).trim().to_string();
    let advertise = |lifetime: u16| {
        let ra = lan_router_advertisement(&h, lifetime);
        probe::send_frames(&h.lan_path(), "lan0", &[ra]).expect("send");
    };
    let has_default = || {
        h.in_host(&["ip", "-6", "route", "show", "default"])
            .contains("default via fe80::bad dev uplink0 proto ra")
    };
    let wait_for = |want: bool| {
        for _ in 0..100 {
            if has_default() == want {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(30));
        }
        false
    };
    advertise(1800);
    assert!(
        wait_for(true),
        "the host took no default route from its router"
    );
    assert_eq!(sysctl("net.ipv6.conf.uplink0.accept_ra"), "1");

    // Neither an IPv4 network nor an internal dual-stack one switches IPv6 forwarding on.
    h.ok(&["network", "create", "v4"]);
    h.ok(&["network", "create", "int", "--ipv6", "--internal"]);
    assert_eq!(sysctl("net.ipv6.conf.all.forwarding"), "0");
    assert_eq!(sysctl("net.ipv6.conf.uplink0.accept_ra"), "1");

    let plan = h.ok(&["--dry-run", "network", "create", "ds", "--ipv6"]);
    assert!(
        plan.contains(
            "sysctl -w net.ipv6.conf.uplink0.accept_ra=2\nsysctl -w net.ipv6.conf.all.forwarding=1\n"
        ),
        "{plan}"
    );
    h.ok(&["network", "create", "ds", "--ipv6"]);
    assert_eq!(sysctl("net.ipv6.conf.all.forwarding"), "1");
    assert_eq!(sysctl("net.ipv6.conf.uplink0.accept_ra"), "2");
    assert!(
        has_default(),
        "switching forwarding on purged the router's default route"
    );
    // The host still listens to its router: a withdrawal takes the route away, a new advertisement brings it
    // back.
    advertise(0);
    assert!(wait_for(false), "the router's withdrawal went unheard");
    advertise(1800);
    assert!(wait_for(true), "the router's advertisement went unheard");
    // A reload (forwarding already on) plans no accept_ra change, and removing the network reverts nothing.
    let plan = h.ok(&["--dry-run", "firewall", "reload"]);
    assert!(
        plan.contains("sysctl -w net.ipv6.conf.all.forwarding=1"),
        "{plan}"
    );
    assert!(!plan.contains("accept_ra"), "{plan}");
    for n in ["ds", "int", "v4"] {
        h.ok(&["network", "rm", n]);
    }
    assert_eq!(sysctl("net.ipv6.conf.all.forwarding"), "1");
    assert!(has_default());
}

/// LAN peer -> host:`port` reaches sandbox `name`'s port 80 (a new server each time).
fn published_on(h: &TestHost, name: &str, port: u16) -> bool {
    let Ok(server) = probe::tcp_server(
        &h.sb_path(name),
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80),
    ) else {
        return false;
    };
    let hello = probe::tcp_hello(&h.lan_path(), addr(HOST_IP, port));
    // A dropped connection leaves the server waiting: its timeout ends it.
    let served = server.wait().is_ok();
    served && hello.is_ok()
}

#[test]
fn a_legacy_ip_table_is_migrated_with_the_users_rules() {
    let h = TestHost::with_lan("legacy");
    let empty = h.snapshot();
    let (s, t) = (h.sb("s"), h.sb("t"));
    h.ok(&["create", &s, "-p", "8080:80"]);
    h.make_legacy_tables();
    // The user's rule in the old table, in force: the LAN peer may not reach published ports.
    h.in_host(&[
        "nft",
        "add",
        "rule",
        "ip",
        "nsnet",
        "user",
        "ip",
        "saddr",
        LAN_IP,
        "tcp",
        "dport",
        "80",
        "counter",
        "drop",
        "comment",
        "\"no lan\"",
    ]);
    assert!(!published_on(&h, "s", 8080), "the legacy user rule drops");
    // Commands that only add or remove elements keep using the old table until a reset migrates it.
    h.ok(&["create", &t, "-p", "8081:80"]);
    let ports = h.in_host(&["nft", "list", "map", "ip", "nsnet", "ports"]);
    assert!(ports.contains("8081"), "{ports}");
    // A second network's elements (written by nft, not netlink) go there too, isolation included.
    h.ok(&[
        "network",
        "create",
        "other",
        "--subnet",
        "172.16.9.0/24",
        "--bridge",
        "nsbr-lother",
    ]);
    let isolation = h.in_host(&["nft", "list", "set", "ip", "nsnet", "isolation"]);
    assert!(isolation.contains("nsbr-lother"), "{isolation}");
    assert!(!h.in_host(&["nft", "list", "tables"]).contains("inet nsnet"));

    // A user rule that cannot move (it jumps to a chain of the old table) fails the reset, naming it, and
    // nothing changes.
    h.in_host(&["nft", "add", "chain", "ip", "nsnet", "mine"]);
    h.in_host(&["nft", "add", "rule", "ip", "nsnet", "user", "jump", "mine"]);
    let before = h.snapshot();
    let err = h.fails(&["firewall", "reload"]);
    assert!(
        err.contains("`jump mine`") && err.contains("ip nsnet user"),
        "{err}"
    );
    assert_eq!(h.snapshot(), before);
    let handle = h
        .in_host(&["nft", "-a", "list", "chain", "ip", "nsnet", "user"])
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("jump mine # handle ")
                .map(str::to_string)
        })
        .expect("the jump's handle");
    h.in_host(&[
        "nft", "delete", "rule", "ip", "nsnet", "user", "handle", &handle,
    ]);
    h.in_host(&["nft", "delete", "chain", "ip", "nsnet", "mine"]);

    // The reset migrates: the rule sits in inet nsnet user and still drops; ip nsnet is gone.
    h.ok(&["firewall", "reload"]);
    let tables = h.in_host(&["nft", "list", "tables"]);
    assert!(!tables.contains("table ip nsnet"), "{tables}");
    let user = h.in_host(&["nft", "list", "chain", "inet", "nsnet", "user"]);
    assert!(
        user.contains("ip saddr 10.0.1.26 tcp dport 80 counter packets")
            && user.contains("drop comment \"no lan\""),
        "{user}"
    );
    assert!(
        !published_on(&h, "s", 8080),
        "the migrated rule still drops"
    );
    assert!(!published_on(&h, "t", 8081));
    // Idempotent: a second reset changes nothing.
    let migrated = content(&h.in_host(&["nft", "-s", "list", "ruleset"]));
    h.ok(&["firewall", "reload"]);
    assert_eq!(
        content(&h.in_host(&["nft", "-s", "list", "ruleset"])),
        migrated
    );
    h.in_host(&["nft", "flush", "chain", "inet", "nsnet", "user"]);
    assert!(published_on(&h, "s", 8080) && published_on(&h, "t", 8081));

    let isolation = h.in_host(&["nft", "list", "set", "inet", "nsnet", "isolation"]);
    assert!(isolation.contains("nsbr-lother"), "{isolation}");
    h.ok(&["rm", &s]);
    h.ok(&["rm", &t]);
    h.ok(&["network", "rm", "other"]);
    h.ok(&["network", "rm", "nsnet0"]);
    assert_eq!(h.snapshot(), empty);
}

#[test]
fn the_last_network_going_takes_a_legacy_table_along() {
    let h = TestHost::with_lan("legacy2");
    let empty = h.snapshot();
    let s = h.sb("s");
    h.ok(&["create", &s, "-p", "8080:80"]);
    h.make_legacy_tables();
    h.ok(&["rm", &s]);
    h.ok(&["network", "rm", "nsnet0"]);
    assert_eq!(h.snapshot(), empty);
}
