//! Dual-stack overlay networks (issue #19, Phase 4): the IPv6 twins of `overlay.rs` and `overlay_attacks.rs`,
//! in a dual-stack world ([`World::new6`]: IPv6 on in the throwaway hosts). Sandboxes on different hosts
//! reach each other by their own IPv6 addresses (no NAT66 inside the cluster), traffic leaving the cluster is
//! masqueraded unless `--ipv6-nat=false`, and the IPv4 overlay's guarantees hold over IPv6: forged sources,
//! another network, hop limits.

mod world;

use std::io::Write as _;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use ipnet::Ipv6Net;
use nsnet_core::probe;
use serde_json::Value;
use world::common::reach_any;
use world::six::*;
use world::{in_ns, wait_until, Signal, World, OUTSIDE_IP6};

/// A dual-stack world of `hosts` hosts, the overlay network made with `extra`, every host's agent joined.
fn cluster(test: &str, hosts: usize, extra: &[&str]) -> World {
    world::six::cluster(test, hosts, extra, &[])
}

/// Host `i`'s IPv6 block, from its record.
fn block6(w: &World, i: usize) -> Ipv6Net {
    local(w, i).expect("joined")["ipv6"]["subnet"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("an IPv6 block")
}

fn echos6(ns: &Path) -> u64 {
    snmp6(ns, "Icmp6InEchos")
}

fn assert_raw_dropped(from: &Path, frame: &[u8], victim: &Path, what: &str) {
    let before = echos6(victim);
    probe::send_frames(from, "eth0", &vec![frame.to_vec(); 5]).expect("send frames");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(echos6(victim), before, "delivered: {what}");
}

fn assert_raw_delivered(from: &Path, frame: &[u8], victim: &Path, what: &str) {
    let before = echos6(victim);
    probe::send_frames(from, "eth0", &[frame.to_vec()]).expect("send frames");
    assert!(
        wait_until(Duration::from_secs(3), || echos6(victim) > before),
        "the control did not arrive: {what}"
    );
}

/// Host `i`'s IPv6 gateway and its bridge's MAC.
fn gateway6(w: &World, i: usize) -> (Ipv6Addr, [u8; 6]) {
    let v = local(w, i).expect("joined");
    let gw = v["ipv6"]["gateway"].as_str().and_then(|g| g.parse().ok());
    let mac = world::mac_of(&w.host_path(i), v["interface"].as_str().expect("a bridge"));
    (gw.expect("an IPv6 gateway"), mac)
}

/// Three hosts on a dual-stack VXLAN overlay: each leases an IPv4 block and the IPv6 block that goes with it,
/// and sandboxes reach each other across hosts by their own IPv6 addresses (ping6, TCP: the receiver sees the
/// sender's address), through an onlink route via the peer block's first address, whose neighbour entry is
/// permanent (no solicitation crosses). IPv4 works as before. Leaving the cluster, IPv6 is masqueraded to the
/// host's underlay address (NAT66).
#[test]
fn three_hosts_on_vxlan_reach_each_other_by_their_own_ipv6_addresses() {
    let w = cluster("ov6vx3", 3, &[]);
    let cluster6: Ipv6Net = CLUSTER6.parse().expect("a prefix");
    let blocks: Vec<Ipv6Net> = (1..=3).map(|i| block6(&w, i)).collect();
    for (i, b) in blocks.iter().enumerate() {
        assert!(
            cluster6.contains(b) && b.prefix_len() == 64,
            "host {}: {b}",
            i + 1
        );
        assert!(!blocks[..i].contains(b), "blocks shared: {blocks:?}");
    }
    // The lease in etcd carries both blocks.
    let inspect = w.ok(2, &["network", "inspect", NET, "--etcd", &w.etcd_url()]);
    assert!(
        inspect.contains(CLUSTER6) && inspect.contains(&blocks[2].to_string()),
        "{inspect}"
    );

    let a = sandbox(&w, 1, "a");
    let b = sandbox(&w, 2, "b");
    let c = sandbox(&w, 3, "c");
    let (pa, pb, pc) = (w.sb_path("a"), w.sb_path("b"), w.sb_path("c"));
    for (from, to, what) in [
        (&pa, b, "a -> b"),
        (&pb, a, "b -> a"),
        (&pb, c, "b -> c"),
        (&pc, a, "c -> a"),
    ] {
        assert!(pings6(from, to), "{what}");
    }
    let seen = reach_any(&pb, 80, &pa, SocketAddr::new(b.into(), 80));
    assert_eq!(seen, Some(IpAddr::V6(a)), "b sees a's own address");
    let seen = reach_any(&pa, 81, &pc, SocketAddr::new(a.into(), 81));
    assert_eq!(seen, Some(IpAddr::V6(c)), "a sees c's own address");
    // IPv4 still.
    let a4 = w.address(1, "a");
    assert!(probe::ping(&pb, a4).unwrap_or(false), "b -> a over IPv4");

    // Host 1's entries for host 2: the route onlink via the block's first address, a permanent neighbour.
    let via = blocks[1].network();
    let routes = lines(&w, 1, &["ip", "-6", "route", "show", "proto", "110"]);
    assert!(
        routes.iter().any(
            |r| r.starts_with(&format!("{} via {via} dev nsvx1", blocks[1]))
                && r.contains("onlink")
        ),
        "{routes:?}"
    );
    let neigh = lines(&w, 1, &["ip", "-6", "neigh", "show", "dev", "nsvx1"]);
    let vtep2 = world::mac_of(&w.host_path(2), "nsvx1");
    let vtep2 = vtep2
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    assert!(
        neigh
            .iter()
            .any(|n| n.starts_with(&format!("{via} lladdr {vtep2} PERMANENT"))),
        "{neigh:?}"
    );
    // Only permanent neighbours on the tunnel: nothing was ever solicited across it.
    assert!(neigh.iter().all(|n| n.contains("PERMANENT")), "{neigh:?}");

    // Out of the cluster: masqueraded to host 1's underlay address.
    let seen = reach_any(
        &w.outside_path(),
        82,
        &pa,
        SocketAddr::new(OUTSIDE_IP6.into(), 82),
    );
    assert_eq!(
        seen,
        Some(IpAddr::V6(w.host_ip6(1))),
        "NAT66 to the outside"
    );
    teardown(&w, &[(1, "a"), (2, "b"), (3, "c")]);
}

/// host-gw on a dual-stack overlay: an IPv6 route cannot have an IPv4 next hop, so a peer's IPv6 block is routed
/// onlink on the underlay via the block's first address, bound to the peer's underlay MAC (from its lease) by a
/// permanent neighbour entry: no IPv6 address of the underlay is used. With `--ipv6-nat=false`, a sandbox reaches
/// the outside (which routes the cluster's prefix back via host 1) with its own address. From the underlay, only
/// the cluster's prefix is routed to a sandbox.
#[test]
fn host_gw_routes_ipv6_via_the_peer_s_underlay_mac() {
    let w = cluster("ov6hgw", 2, &["--backend", "host-gw", "--ipv6-nat=false"]);
    let a = sandbox(&w, 1, "a");
    let b = sandbox(&w, 2, "b");
    let (pa, pb) = (w.sb_path("a"), w.sb_path("b"));
    assert!(pings6(&pa, b) && pings6(&pb, a), "a <-> b");
    let seen = reach_any(&pb, 80, &pa, SocketAddr::new(b.into(), 80));
    assert_eq!(seen, Some(IpAddr::V6(a)), "b sees a's own address");
    let block2 = block6(&w, 2);
    let routes = lines(&w, 1, &["ip", "-6", "route", "show", "proto", "110"]);
    let via = block2.network();
    assert!(
        routes.iter().any(|r| r.starts_with(&format!("{block2} via {via} dev eth0")) && r.contains("onlink")),
        "{routes:?}"
    );
    let mac2 = w
        .host_mac(2)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let neigh = lines(
        &w,
        1,
        &[
            "ip",
            "-6",
            "neigh",
            "show",
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    );
    assert_eq!(
        neigh,
        vec![format!("{via} lladdr {mac2} PERMANENT")],
        "{neigh:?}"
    );
    // No NAT66: the outside sees a's own address (it routes the cluster's prefix back via host 1).
    in_ns(
        &w.outside_path(),
        &[
            "ip",
            "-6",
            "route",
            "add",
            CLUSTER6,
            "via",
            &w.host_ip6(1).to_string(),
        ],
    );
    let seen = reach_any(
        &w.outside_path(),
        82,
        &pa,
        SocketAddr::new(OUTSIDE_IP6.into(), 82),
    );
    assert_eq!(seen, Some(IpAddr::V6(a)), "--ipv6-nat=false");
    // From the underlay, host 2 routes to b only what comes from the cluster's prefix (`overlay_in6`): not
    // the outside's own address, nor another prefix. (host-gw trusts its L2 segment as over IPv4: a cluster
    // source is taken from any machine on it; the control.)
    let out_mac = world::mac_of(&w.outside_path(), "eth0");
    let other: Ipv6Addr = "fd00:99::7".parse().expect("an address");
    for src in [OUTSIDE_IP6, other] {
        let forged = echo6(w.host_mac(2), out_mac, src, b);
        assert_raw_dropped(
            &w.outside_path(),
            &forged,
            &pb,
            &format!("from {src} via host 2"),
        );
    }
    let from_cluster = echo6(w.host_mac(2), out_mac, a, b);
    assert_raw_delivered(
        &w.outside_path(),
        &from_cluster,
        &pb,
        "a cluster source on the segment",
    );
    teardown(&w, &[(1, "a"), (2, "b")]);
}

/// The IPv6 twin of `a_sandbox_forging_its_source_reaches_no_sandbox_on_another_host`: forged IPv6 sources
/// (a neighbour's, host 2's block, no block's, either gateway) never reach a sandbox on another host; a1's
/// own frame does.
#[test]
fn a_sandbox_forging_its_ipv6_source_reaches_no_sandbox_on_another_host() {
    let w = cluster("ov6spf", 2, &[]);
    let a1 = sandbox(&w, 1, "a1");
    let a2 = sandbox(&w, 1, "a2");
    let b = sandbox(&w, 2, "b");
    let (pa1, pa2, pb) = (w.sb_path("a1"), w.sb_path("a2"), w.sb_path("b"));
    assert!(pings6(&pa1, b) && pings6(&pa2, b), "a1, a2 -> b");
    let (gw1, gw1_mac) = gateway6(&w, 1);
    let (gw2, _) = gateway6(&w, 2);
    let (mac1, mac2) = (world::mac_of(&pa1, "eth0"), world::mac_of(&pa2, "eth0"));
    let in_block2 = Ipv6Addr::from(u128::from(block6(&w, 2).network()) + 77);
    let no_block: Ipv6Addr = "fd00:10:244:ff::7".parse().expect("an address");
    for (mac, src, what) in [
        (mac1, a2, "a2's address, a1's MAC"),
        (mac2, a2, "a2's address and MAC"),
        (mac1, in_block2, "an address of host 2's block"),
        (mac1, no_block, "an address of no block"),
        (mac1, gw2, "host 2's gateway"),
        (mac1, gw1, "host 1's gateway"),
    ] {
        assert_raw_dropped(&pa1, &echo6(gw1_mac, mac, src, b), &pb, what);
    }
    assert_raw_dropped(&pa1, &echo6(mac2, mac1, a1, b), &pb, "to a2's MAC");
    assert_raw_delivered(&pa1, &echo6(gw1_mac, mac1, a1, b), &pb, "a1's own frame");
    teardown(&w, &[(1, "a1"), (1, "a2"), (2, "b")]);
}

/// The IPv6 twin of `a_sandbox_of_another_network_reaches_no_overlay_sandbox_on_another_host`: a sandbox of a
/// plain dual-stack network on host 1 reaches no overlay sandbox on host 2 over IPv6, by ping or by a frame to
/// its gateway's MAC (with its own address or an overlay sandbox's).
#[test]
fn a_sandbox_of_another_network_reaches_no_overlay_sandbox_over_ipv6() {
    let w = cluster("ov6net", 2, &[]);
    w.ok(1, &["network", "create", "plain", "--ipv6"]);
    let c = sandbox_on(&w, 1, "c", "plain");
    let a = sandbox(&w, 1, "a");
    let b = sandbox(&w, 2, "b");
    let (pa, pb, pc) = (w.sb_path("a"), w.sb_path("b"), w.sb_path("c"));
    assert!(pings6(&pa, b), "a -> b");
    assert!(!pings6(&pc, b), "c -> b");
    let plain: Value =
        serde_json::from_str(&w.ok(1, &["network", "inspect", "plain", "--json"])).expect("JSON");
    let plain_mac = world::mac_of(
        &w.host_path(1),
        plain["interface"].as_str().expect("a bridge"),
    );
    let mac_c = world::mac_of(&pc, "eth0");
    assert_raw_dropped(
        &pc,
        &echo6(plain_mac, mac_c, c, b),
        &pb,
        "c to its gateway, for b",
    );
    assert_raw_dropped(&pc, &echo6(plain_mac, mac_c, a, b), &pb, "c as a, for b");
    w.ok(1, &["rm", &w.sb("c")]);
    w.ok(1, &["network", "rm", "plain"]);
    teardown(&w, &[(1, "a"), (2, "b")]);
}

/// The IPv6 twin of `frames_that_would_expire_on_the_way_take_the_slow_path_and_expire`: hop limit 1 expires at
/// host 1, 2 at host 2 (each says so in ICMPv6), 3 arrives.
#[test]
fn ipv6_frames_that_would_expire_on_the_way_expire() {
    let w = cluster("ov6ttl", 2, &[]);
    let a = sandbox(&w, 1, "a");
    let b = sandbox(&w, 2, "b");
    let (pa, pb) = (w.sb_path("a"), w.sb_path("b"));
    assert!(pings6(&pa, b), "a -> b");
    let (_, gw1_mac) = gateway6(&w, 1);
    let frame = echo6(gw1_mac, world::mac_of(&pa, "eth0"), a, b);
    // ICMPv6 takes the slow path, which expires it.
    let expired = |i: usize| snmp6(&w.host_path(i), "Icmp6OutTimeExcds");
    for (hops, host) in [(0, 1), (1, 1), (2, 2)] {
        let before = expired(host);
        assert_raw_dropped(
            &pa,
            &with_hops(frame.clone(), hops),
            &pb,
            &format!("hop limit {hops}"),
        );
        if hops > 0 {
            assert!(
                expired(host) > before,
                "hop limit {hops}: host {host} sent no time exceeded"
            );
        }
    }
    assert_raw_delivered(&pa, &with_hops(frame, 3), &pb, "hop limit 3");
    // UDP, which the fast path takes: the same.
    let udp = udp6(gw1_mac, world::mac_of(&pa, "eth0"), a, b);
    let no_port = || snmp6(&pb, "Udp6NoPorts");
    for (hops, host) in [(1, 1), (2, 2)] {
        let (before, arrived) = (expired(host), no_port());
        probe::send_frames(&pa, "eth0", &[with_hops(udp.clone(), hops)]).expect("send");
        assert!(
            wait_until(Duration::from_secs(3), || expired(host) > before),
            "UDP hop limit {hops}: host {host} sent no time exceeded"
        );
        assert_eq!(no_port(), arrived, "UDP hop limit {hops} arrived");
    }
    let arrived = no_port();
    probe::send_frames(&pa, "eth0", &[with_hops(udp, 3)]).expect("send");
    assert!(
        wait_until(Duration::from_secs(3), || no_port() > arrived),
        "UDP hop limit 3"
    );
    teardown(&w, &[(1, "a"), (2, "b")]);
}

/// IPv6 TCP and UDP between sandboxes on different hosts take the fast path on both hosts (no IPv6 forwarding
/// counted by either kernel), on vxlan and host-gw; ICMPv6 takes the slow path (the counter counts).
#[test]
fn cross_host_ipv6_tcp_and_udp_are_never_routed_by_either_host() {
    for backend in ["vxlan", "host-gw"] {
        let w = cluster(
            &format!("ov6fst{}", &backend[..1]),
            2,
            &["--backend", backend],
        );
        let a = sandbox(&w, 1, "a");
        let b = sandbox(&w, 2, "b");
        let (pa, pb) = (w.sb_path("a"), w.sb_path("b"));
        let (h1, h2) = (w.host_path(1), w.host_path(2));
        // Neighbours learned on both bridges first.
        assert!(pings6(&pa, b) && pings6(&pb, a), "{backend}: a <-> b");
        let forwarded = |ns: &Path| snmp6(ns, "Ip6OutForwDatagrams");
        let before = (forwarded(&h1), forwarded(&h2));
        for port in 80..84 {
            let seen = reach_any(&pb, port, &pa, SocketAddr::new(b.into(), port));
            assert_eq!(seen, Some(IpAddr::V6(a)), "{backend}: a -> b:{port}");
            let seen = reach_any(&pa, port, &pb, SocketAddr::new(a.into(), port));
            assert_eq!(seen, Some(IpAddr::V6(b)), "{backend}: b -> a:{port}");
        }
        let server = probe::udp_server(&pb, SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 5353))
            .expect("udp");
        let reply = probe::udp_hello(&pa, SocketAddr::new(b.into(), 5353)).expect("UDP a -> b");
        assert!(reply.contains(&a.to_string()), "{reply}");
        assert_eq!(server.wait().expect("udp peer").ip(), IpAddr::V6(a));
        let routed = (forwarded(&h1) - before.0, forwarded(&h2) - before.1);
        assert!(
            routed.0 < 5 && routed.1 < 5,
            "{backend}: eight TCP exchanges and a UDP one, routed {routed:?} times by hosts 1 and 2"
        );
        let before = forwarded(&h1);
        assert!(pings6(&pa, b), "{backend}: a -> b");
        assert!(forwarded(&h1) > before, "{backend}: ICMPv6 is routed");
        teardown(&w, &[(1, "a"), (2, "b")]);
    }
}

/// Bad dual-stack overlay settings are refused in one line, with nothing written to etcd. `--dry-run` writes nothing and shows the IPv6 settings; the agent's dry run shows
/// the IPv6 entries it would program for a peer, and changes nothing.
#[test]
fn bad_dual_stack_overlay_input_is_refused_and_dry_runs_show_the_ipv6_steps() {
    let w = World::new6("ov6bad", 2);
    let url = w.etcd_url();
    let create = |extra: &[&str]| {
        let mut args = vec![
            "network", "create", NET, "--driver", "overlay", "--etcd", &url,
        ];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<String>>()
    };
    let refusals: [(&[&str], &str); 6] = [
        (
            &["--subnet", CLUSTER, "--subnet", "fd00:10:244::/64"],
            "host-subnet6-len 64",
        ),
        (
            &["--subnet", CLUSTER, "--subnet", "fd00:10:244::/60"],
            "fewer than",
        ),
        (
            &["--subnet", CLUSTER, "--subnet", "fd00:10:244::1/56"],
            "host bits",
        ),
        (&["--subnet", CLUSTER, "--ipv6"], "IPv6 --subnet"),
        (
            &["--subnet", CLUSTER, "--host-subnet6-len", "64"],
            "host-subnet6-len",
        ),
        (&["--subnet", CLUSTER6, "--ipv4=false"], "needs IPv4"),
    ];
    for (extra, says) in refusals {
        let args = create(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = world::check_one_line_failure(&args, w.nsnet(1, &args));
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert_eq!(
        w.etcdctl(&["get", "--prefix", "/nsnet/", "--keys-only"])
            .trim(),
        ""
    );

    let good = create(&["--subnet", CLUSTER, "--subnet", CLUSTER6]);
    let good: Vec<&str> = good.iter().map(String::as_str).collect();
    let mut dry = vec!["--dry-run"];
    dry.extend_from_slice(&good);
    let out = w.ok(1, &dry);
    assert!(
        out.contains("\"subnet6\":\"fd00:10:244::/56\",\"host_subnet6_len\":64"),
        "{out}"
    );
    assert_eq!(
        w.etcdctl(&["get", "--prefix", "/nsnet/", "--keys-only"])
            .trim(),
        ""
    );

    // A real one; host 2 joins; host 1's agent dry run shows its set-up and host 2's IPv6 entries.
    w.ok(1, &good);
    w.start_agent(2, &["--lease-ttl", TTL]);
    assert!(
        wait_until(CONVERGE, || local(&w, 2).is_some()),
        "{}",
        w.agent_log(2)
    );
    let out = w.ok(
        1,
        &["--dry-run", "agent", "--etcd", &url, "--iface", "eth0"],
    );
    let block2 = block6(&w, 2);
    let via = block2.network();
    assert!(
        out.contains(&format!("ip -6 neigh replace {via} lladdr ")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "ip -6 route replace {block2} via {via} dev nsvx1 onlink src "
        )),
        "{out}"
    );
    assert!(
        out.contains("net/ipv6/conf/nsvx1") || out.contains("nsvx1"),
        "{out}"
    );
    assert!(local(&w, 1).is_none(), "the dry run made host 1's part");
    assert!(lines(&w, 1, &["ip", "-o", "link"])
        .iter()
        .all(|l| !l.contains("nsvx")));
    w.ok(1, &["network", "rm", NET, "--etcd", &url]);
    assert!(
        wait_until(CONVERGE, || local(&w, 2).is_none()),
        "{}",
        w.agent_log(2)
    );
}

/// The IPv6 twin of `entries_deleted_by_hand_come_back`: a peer's IPv6 route and neighbour entry deleted by
/// hand (on vxlan's device, and on host-gw's underlay), and the VXLAN device itself, come back within the
/// agent's resync, and IPv6 flows again.
#[test]
fn ipv6_entries_deleted_by_hand_come_back() {
    for backend in ["vxlan", "host-gw"] {
        let w = cluster(
            &format!("ov6rep{}", &backend[..1]),
            2,
            &["--backend", backend],
        );
        let _a = sandbox(&w, 1, "a");
        let b = sandbox(&w, 2, "b");
        let h1 = w.host_path(1);
        let dev = if backend == "vxlan" { "nsvx1" } else { "eth0" };
        let state = || {
            let mut v = lines(&w, 1, &["ip", "-6", "route", "show", "proto", "110"]);
            v.extend(lines(
                &w,
                1,
                &["ip", "-6", "neigh", "show", "nud", "permanent"],
            ));
            v
        };
        let want = state();
        assert_eq!(want.len(), 2, "{want:?}");
        let back = |what: &str| {
            assert!(
                wait_until(Duration::from_secs(10), || state() == want),
                "{backend}: {what} did not come back: {:?}\n{}",
                state(),
                w.agent_log(1)
            );
            assert!(
                pings6(&w.sb_path("a"), b),
                "{backend}: a -> b after {what} came back"
            );
        };
        let block2 = block6(&w, 2);
        in_ns(
            &h1,
            &["ip", "-6", "route", "del", &block2.to_string(), "dev", dev],
        );
        back("the IPv6 route");
        in_ns(
            &h1,
            &[
                "ip",
                "-6",
                "neigh",
                "del",
                &block2.network().to_string(),
                "dev",
                dev,
            ],
        );
        back("the IPv6 neighbour entry");
        if backend == "vxlan" {
            in_ns(&h1, &["ip", "link", "del", "nsvx1"]);
            back("the VXLAN device");
        }
        teardown(&w, &[(1, "a"), (2, "b")]);
    }
}

/// The iptables backend on a dual-stack overlay, both backends: IPv6 between sandboxes on different hosts
/// keeps its addresses (ip6tables' overlay entries accept and exempt it from NAT66), IPv6 leaving the cluster
/// is masqueraded, from the underlay only the cluster's prefix gets in (host-gw), and nothing of nsnet's is
/// left in ip6tables afterwards.
#[test]
fn the_iptables_backend_keeps_the_same_ipv6_guarantees() {
    for backend in ["vxlan", "host-gw"] {
        let test = format!("ov6ipt{}", &backend[..1]);
        let w = world::six::cluster(
            &test,
            2,
            &["--backend", backend],
            &["--firewall", "iptables"],
        );
        let a = sandbox(&w, 1, "a");
        let b = sandbox(&w, 2, "b");
        let (pa, pb) = (w.sb_path("a"), w.sb_path("b"));
        assert!(pings6(&pa, b) && pings6(&pb, a), "{backend}: a <-> b");
        let seen = reach_any(&pb, 80, &pa, SocketAddr::new(b.into(), 80));
        assert_eq!(seen, Some(IpAddr::V6(a)), "{backend}: no NAT66 inside");
        let seen = reach_any(
            &w.outside_path(),
            82,
            &pb,
            SocketAddr::new(OUTSIDE_IP6.into(), 82),
        );
        assert_eq!(
            seen,
            Some(IpAddr::V6(w.host_ip6(2))),
            "{backend}: NAT66 leaving"
        );
        let rules = in_ns(&w.host_path(1), &["ip6tables-save"]);
        assert!(
            rules.contains(&format!("-s {CLUSTER6} -d {}", block6(&w, 1))),
            "{rules}"
        );
        if backend == "host-gw" {
            let out_mac = world::mac_of(&w.outside_path(), "eth0");
            let forged = echo6(w.host_mac(2), out_mac, OUTSIDE_IP6, b);
            assert_raw_dropped(
                &w.outside_path(),
                &forged,
                &pb,
                "iptables: the outside's own address",
            );
        }
        teardown(&w, &[(1, "a"), (2, "b")]);
        for i in [1, 2] {
            let left = in_ns(&w.host_path(i), &["ip6tables-save"]);
            assert!(
                !left.contains("NSNET"),
                "host {i} keeps nsnet's ip6tables chains:\n{left}"
            );
        }
    }
}

/// The IPv6 twin of `a_cni_container_on_the_overlay_reaches_a_sandbox_on_another_host`: a CNI container joining
/// this host's part of a dual-stack overlay gets an IPv6 address of its block too, and reaches a sandbox on
/// another host by it.
#[test]
fn a_cni_container_on_a_dual_stack_overlay_reaches_a_sandbox_on_another_host_over_ipv6() {
    let w = cluster("ov6cni", 2, &[]);
    let a = sandbox(&w, 1, "a");
    let cni = world::nsnet_bin().with_file_name("nsnet-cni");
    assert!(
        cni.exists(),
        "{} is not built; run `cargo test --workspace`",
        cni.display()
    );
    let ctr = w.sb("ctr");
    world::sh(&["ip", "netns", "add", &ctr]);
    let conf = r#"{"cniVersion": "1.0.0", "name": "pods", "type": "nsnet"}"#;
    let cni_run = |command: &str| {
        let ns = format!("--net={}", w.host_path(2).display());
        let mut child = std::process::Command::new("nsenter")
            .args([ns.as_str(), "--"])
            .arg(&cni)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &ctr)
            .env("CNI_NETNS", format!("/run/netns/{ctr}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/nonexistent")
            .env("NSNET_STATE_DIR", w.state_dir(2))
            .env("NSNET_CGROUP", w.state_dir(2))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run nsnet-cni");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(conf.as_bytes())
            .expect("config");
        let out = child.wait_with_output().expect("nsnet-cni");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, text) = cni_run("ADD");
    let cleanup = || {
        let _ = cni_run("DEL");
        world::sh(&["ip", "netns", "del", &ctr]);
    };
    if !ok {
        cleanup();
        panic!("CNI ADD: {text}");
    }
    let result: Value = serde_json::from_str(&text).expect("a CNI result");
    let ip6: Option<Ipv6Addr> = result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["address"].as_str()?.split('/').next()?.parse().ok())
        .next();
    let ctr_path = Path::new("/run/netns").join(&ctr);
    let reached = ip6.map(|ip6| {
        let ok = pings6(&ctr_path, a);
        let seen = reach_any(
            &w.sb_path("a"),
            80,
            &ctr_path,
            SocketAddr::new(a.into(), 80),
        );
        (ip6, ok, seen)
    });
    cleanup();
    let Some((ip6, pinged, seen)) = reached else {
        panic!("no IPv6 address in the CNI result: {text}")
    };
    assert!(
        block6(&w, 2).contains(&ip6),
        "{ip6} is not of host 2's block"
    );
    assert!(pinged, "container on host 2 -> a on host 1");
    assert_eq!(
        seen,
        Some(IpAddr::V6(ip6)),
        "a sees the container's own address"
    );
    teardown(&w, &[(1, "a")]);
}

/// The IPv6 twin of `a_member_s_frames_the_kernel_would_not_route_are_not_delivered`: a member host's VXLAN
/// whose inner IPv6 frame (UDP, which the fast path takes) the kernel would not route to the sandbox (for
/// another MAC than the VTEP's, or the sandbox's own, broadcast, multicast; hop limit 1 or 0) is not
/// delivered by the fast path either, from host 2's block (the fast path's) or from no block (the slow
/// path's); to the VTEP's MAC, hop limit 2, it arrives.
#[test]
fn a_member_s_ipv6_frames_the_kernel_would_not_route_are_not_delivered() {
    let w = cluster("ov6mem", 2, &[]);
    let a = sandbox(&w, 1, "a");
    let pa = w.sb_path("a");
    let h2 = w.host_path(2);
    let vtep1 = world::mac_of(&w.host_path(1), "nsvx1");
    let mac_a = world::mac_of(&pa, "eth0");
    let member = [0x0e, 0x6e, 1, 2, 3, 4];
    let arrived = || snmp6(&pa, "Udp6NoPorts");
    let send =
        |frame: &[u8]| world::send_forged_vxlan(&h2, w.host_ip(1), world::VXLAN_PORT, 1, frame);
    let in_block2 = Ipv6Addr::from(u128::from(block6(&w, 2).network()) + 77);
    let no_block: Ipv6Addr = "fd00:10:244:ff::7".parse().expect("an address");
    for src in [in_block2, no_block] {
        let before = arrived();
        for (mac, what) in [
            ([0x02, 0, 0, 0, 0, 0x99], "another MAC"),
            (mac_a, "the sandbox's MAC"),
            ([0xff; 6], "broadcast"),
            ([0x33, 0x33, 0, 0, 0, 1], "multicast"),
        ] {
            for _ in 0..3 {
                send(&udp6(mac, member, src, a));
            }
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(arrived(), before, "delivered: {what} from {src}");
        }
        for hops in [0, 1] {
            for _ in 0..3 {
                send(&with_hops(udp6(vtep1, member, src, a), hops));
            }
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(arrived(), before, "delivered: hop limit {hops} from {src}");
        }
        send(&with_hops(udp6(vtep1, member, src, a), 2));
        assert!(
            wait_until(Duration::from_secs(3), || arrived() > before),
            "the control did not arrive from {src}"
        );
    }
    teardown(&w, &[(1, "a")]);
}

/// A dual-stack host-gw overlay on a host whose underlay interface has IPv6 off: the agent says so and does
/// not make the network there (its IPv6 routes, and with them its IPv4 ones, would be refused), and nothing of
/// it is left on the host.
#[test]
fn host_gw_with_ipv6_off_on_the_underlay_is_refused_with_a_reason() {
    let w = World::new6("ov6off", 1);
    let url = w.etcd_url();
    w.ok(
        1,
        &[
            "network",
            "create",
            NET,
            "--driver",
            "overlay",
            "--subnet",
            CLUSTER,
            "--subnet",
            CLUSTER6,
            "--backend",
            "host-gw",
            "--etcd",
            &url,
        ],
    );
    in_ns(
        &w.host_path(1),
        &["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1"],
    );
    w.start_agent(1, &["--lease-ttl", TTL]);
    assert!(
        wait_until(CONVERGE, || w
            .agent_log(1)
            .contains("net.ipv6.conf.eth0.disable_ipv6 is not 0")),
        "{}",
        w.agent_log(1)
    );
    assert!(local(&w, 1).is_none(), "the network was made");
    assert!(lines(&w, 1, &["ip", "-o", "link"])
        .iter()
        .all(|l| !l.contains("nsbr")));
    assert_eq!(
        lines(&w, 1, &["ip", "-6", "route", "show", "proto", "110"]),
        Vec::<String>::new()
    );
    w.ok(1, &["network", "rm", NET, "--etcd", &url]);
}

/// The IPv6 twin of `a_removed_sandbox_or_a_lost_host_gets_nothing_and_nobody_gets_its_frames`, with UDP (the
/// fast path's): b removed, its frames reach neither c nor host 2; b's address taken by b2, they reach b2;
/// host 2 lost, host 1 withdraws its IPv6 block and they go nowhere; host 2 back, they arrive again.
#[test]
fn a_removed_sandbox_or_a_lost_host_gets_nothing_over_ipv6() {
    let w = cluster("ov6old", 2, &[]);
    let a = sandbox(&w, 1, "a");
    let b = sandbox(&w, 2, "b");
    let c = sandbox(&w, 2, "c");
    let (pa, pc) = (w.sb_path("a"), w.sb_path("c"));
    assert!(pings6(&pa, b) && pings6(&pa, c), "a -> b, c");
    let (_, gw1_mac) = gateway6(&w, 1);
    let to_b = udp6(gw1_mac, world::mac_of(&pa, "eth0"), a, b);
    let got = |ns: &Path| snmp6(ns, "Udp6NoPorts");
    let dropped = |victim: &Path, what: &str| {
        let before = got(victim);
        probe::send_frames(&pa, "eth0", &vec![to_b.clone(); 5]).expect("send");
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(got(victim), before, "delivered: {what}");
    };
    let delivered = |victim: &Path, what: &str| {
        let before = got(victim);
        probe::send_frames(&pa, "eth0", std::slice::from_ref(&to_b)).expect("send");
        assert!(
            wait_until(Duration::from_secs(3), || got(victim) > before),
            "not delivered: {what}"
        );
    };
    w.ok(2, &["rm", &w.sb("b")]);
    dropped(&pc, "b's frames, b gone, to c");
    dropped(&w.host_path(2), "b's frames, b gone, to host 2");
    let b2 = w.sb("b2");
    w.ok(
        2,
        &["create", &b2, "--network", NET, "--ip6", &b.to_string()],
    );
    let pb2 = w.sb_path("b2");
    delivered(&pb2, "to b's address, now b2's");
    dropped(&pc, "b2's frames, to c");

    w.kill_agent(2, world::Signal::SIGKILL);
    assert!(
        wait_until(CONVERGE, || local(&w, 1).is_some_and(|v| v["overlay"]
            ["peers"]
            .as_array()
            .map(Vec::len)
            == Some(0))),
        "host 1 did not withdraw host 2:\n{}",
        w.agent_log(1)
    );
    assert_eq!(
        lines(&w, 1, &["ip", "-6", "route", "show", "proto", "110"]),
        Vec::<String>::new()
    );
    dropped(&pb2, "to a lost host's sandbox");
    assert!(!pings6(&pa, c), "a -> c, host 2 lost");
    w.start_agent(2, &["--lease-ttl", TTL]);
    for i in [1, 2] {
        assert!(
            wait_until(CONVERGE, || local(&w, i).is_some_and(|v| v["overlay"]
                ["peers"]
                .as_array()
                .map(Vec::len)
                == Some(1))),
            "host {i} did not rejoin:\n{}",
            w.agent_log(i)
        );
    }
    assert!(
        wait_until(CONVERGE, || pings6(&pa, c)),
        "a -> c, host 2 back"
    );
    delivered(&pb2, "to b2, host 2 back");
    teardown(&w, &[(1, "a"), (2, "b2"), (2, "c")]);
}

/// Host `i`'s `nsnet explain FROM TO --json`: exit status and answer.
fn explain(w: &World, i: usize, from: &str, to: &str) -> (i32, Value) {
    explain_with(w, i, from, to, &[])
}

/// [`explain`] with `extra` arguments (`--probe`).
fn explain_with(w: &World, i: usize, from: &str, to: &str, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["--json", "explain", from, to];
    args.extend_from_slice(extra);
    let out = w.nsnet(i, &args);
    let code = out.status.code().unwrap_or(-1);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "explain {from} {to} (exit {code}) printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, json)
}

/// Every hop of an answer, with its rule, one per line.
fn hops(e: &Value) -> String {
    e["hops"]
        .as_array()
        .expect("hops")
        .iter()
        .map(|h| format!("{} {}", h["what"], h["rule"]))
        .collect::<Vec<_>>()
        .join("\n")
}

fn broken_of(e: &Value) -> Vec<String> {
    e["broken"]
        .as_array()
        .map(|b| {
            b.iter()
                .filter_map(|l| l.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// `nsnet explain` from a sandbox to a sandbox on another host by its IPv6 address, checked against real
/// packets: TCP by the fast path's `remote6` entry, ICMPv6 by the onlink route via the peer block's first
/// address and the forward chain, both by the permanent neighbour entry and the VXLAN device, with no NAT66
/// (the receiver sees the sender's own address); `--probe` sends both for real and agrees. On the receiving
/// host, from the sender's address: TCP by the device's fast path, ICMPv6 by `overlay_in6`. Both backends.
/// With the agent away, the IPv6 route deleted by hand is
/// named broken and ICMPv6 is dropped (TCP still crosses by the fast path, which needs no route), then the
/// neighbour entry too, which drops both; the agent's return puts it right.
#[test]
fn explain_follows_ipv6_to_another_host_and_names_what_is_broken() {
    for backend in ["vxlan", "host-gw"] {
        explain_across_hosts(backend);
    }
}

fn explain_across_hosts(backend: &str) {
    let w = cluster(
        &format!("ov6exp{}", &backend[..1]),
        2,
        &["--backend", backend],
    );
    let dev = if backend == "vxlan" { "nsvx1" } else { "eth0" };
    let a = sandbox(&w, 1, "a");
    let b = sandbox(&w, 2, "b");
    let (sa, sb) = (w.sb_path("a"), w.sb_path("b"));
    let block2 = block6(&w, 2);
    let via = block2.network().to_string();
    let tcp = format!("[{b}]:80");
    let icmp = b.to_string();
    let to_b = SocketAddr::new(b.into(), 80);

    let (code, e) = explain(&w, 1, &w.sb("a"), &tcp);
    assert_eq!(code, 0, "{e:#}");
    assert_eq!(broken_of(&e), Vec::<String>::new(), "{e:#}");
    let text = hops(&e);
    assert!(
        text.contains(&format!(
            "remote6 entry {block2} -> {via}, bpf_redirect_neigh"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("neighbour {via} lladdr "))
            && text.contains(&format!("PERMANENT on {dev}")),
        "{text}"
    );
    let device = if backend == "vxlan" {
        "VXLAN, VNI"
    } else {
        "on the underlay's segment"
    };
    assert!(text.contains(device), "{backend}: {text}");
    assert!(
        e["verdict"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no NAT66 inside the cluster")),
        "{e:#}"
    );
    assert_eq!(
        reach_any(&sb, 80, &sa, to_b),
        Some(IpAddr::V6(a)),
        "TCP a -> b"
    );
    let (code, e) = explain(&w, 1, &w.sb("a"), &icmp);
    assert_eq!(code, 0, "{e:#}");
    let text = hops(&e);
    assert!(
        text.contains(&format!("route {block2} via {via} dev {dev} onlink")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "@no_masq6 return (element {} . {CLUSTER6})",
            block6(&w, 1)
        )),
        "{text}"
    );
    assert!(pings6(&sa, b), "ping6 a -> b");

    // --probe sends them for real: ICMPv6 through the host's hooks (traced), TCP by the fast path (no hook
    // sees it; nothing listens on b, and its refusal comes back).
    let (code, e) = explain_with(&w, 1, &w.sb("a"), &icmp, &["--probe"]);
    let p = &e["probe"];
    assert!(
        code == 0 && p["delivered"] == true && p["agrees"] == true,
        "{e:#}"
    );
    assert!(
        p["trace"]
            .as_array()
            .is_some_and(|t| t.iter().any(|s| s["chain"]
                .as_str()
                .is_some_and(|c| c.starts_with("inet nsnet")))),
        "{e:#}"
    );
    let (code, e) = explain_with(&w, 1, &w.sb("a"), &tcp, &["--probe"]);
    let p = &e["probe"];
    assert!(
        code == 0 && p["delivered"] == true && p["agrees"] == true,
        "{e:#}"
    );
    assert!(
        p["detail"].as_str().is_some_and(|d| d.contains("refused")),
        "{e:#}"
    );
    assert!(p["notes"].to_string().contains("the fast path"), "{e:#}");

    // On host 2, from a's address: the device's ingress hands TCP to b, ICMPv6 takes overlay_in6.
    let (code, e) = explain(&w, 2, &a.to_string(), &format!("{}:80", w.sb("b")));
    assert_eq!(code, 0, "{e:#}");
    assert_eq!(broken_of(&e), Vec::<String>::new(), "{e:#}");
    assert!(hops(&e).contains("bpf_redirect_peer"), "{backend}: {e:#}");
    let (code, e) = explain(&w, 2, &a.to_string(), &w.sb("b"));
    assert_eq!(code, 0, "{e:#}");
    assert!(
        hops(&e).contains(&format!(
            "@overlay_in6 accept (element \\\"{dev}\\\" . {CLUSTER6} . {block2})"
        )),
        "{backend}: {}",
        hops(&e)
    );

    // The agent away, the IPv6 route goes: ICMPv6 is dropped, TCP takes the fast path still.
    w.kill_agent(1, Signal::SIGKILL);
    let h1 = w.host_path(1);
    in_ns(
        &h1,
        &["ip", "-6", "route", "del", &block2.to_string(), "dev", dev],
    );
    let route = format!("no IPv6 route to {block2} via {via} on {dev} (the agent puts it back)");
    let (code, e) = explain(&w, 1, &w.sb("a"), &icmp);
    assert_eq!(code, 1, "{e:#}");
    assert_eq!(broken_of(&e), vec![route.clone()], "{e:#}");
    assert!(!pings6(&sa, b), "ping6 a -> b without the route");
    let (code, e) = explain_with(&w, 1, &w.sb("a"), &icmp, &["--probe"]);
    let p = &e["probe"];
    assert!(
        code == 1 && p["delivered"] == false && p["agrees"] == true,
        "{e:#}"
    );
    let (code, e) = explain(&w, 1, &w.sb("a"), &tcp);
    assert_eq!(code, 0, "{e:#}");
    assert_eq!(broken_of(&e), vec![route.clone()], "{e:#}");
    assert_eq!(
        reach_any(&sb, 80, &sa, to_b),
        Some(IpAddr::V6(a)),
        "TCP a -> b by the fast path, without the route"
    );
    // Then the neighbour entry: nothing crosses.
    in_ns(&h1, &["ip", "-6", "neigh", "del", &via, "dev", dev]);
    let (code, e) = explain(&w, 1, &w.sb("a"), &tcp);
    assert_eq!(code, 1, "{e:#}");
    let lost = broken_of(&e);
    assert!(
        lost.len() == 2 && lost[1].starts_with(&format!("no IPv6 neighbour entry {via} -> ")),
        "{lost:#?}"
    );
    assert_eq!(
        reach_any(&sb, 80, &sa, to_b),
        None,
        "TCP a -> b without the neighbour"
    );
    let out = w.nsnet(1, &["explain", &w.sb("a"), &tcp]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("BROKEN: {route}")), "{text}");

    w.start_agent(1, &["--lease-ttl", TTL]);
    assert!(
        wait_until(CONVERGE, || {
            let (code, e) = explain(&w, 1, &w.sb("a"), &icmp);
            code == 0 && broken_of(&e).is_empty()
        }),
        "the agent did not put the route and neighbour back: {}",
        w.agent_log(1)
    );
    assert!(pings6(&sa, b), "ping6 a -> b once put back");
    teardown(&w, &[(1, "a"), (2, "b")]);
}
