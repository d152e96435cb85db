//! Attacks on a dual-stack overlay from the underlay, over IPv6 (issue #19, Phase 4): the IPv6 twins of
//! `overlay_attacks.rs`'s LAN peer tests. A LAN peer that is no member may not use a member as an IPv6 router
//! into the overlay, and on host-gw the receiving host's fast path gives each IPv6 frame from the segment the
//! verdict its slow path (routing and the firewall) would. Each test has a control that arrives.

mod world;

use std::net::Ipv6Addr;
use std::path::Path;
use std::time::Duration;

use nsnet_core::probe;
use world::six::*;
use world::{in_ns, wait_until, World};

/// Host `i`'s IPv6 block's first address plus `n`.
fn in_block6(w: &World, i: usize, n: u128) -> Ipv6Addr {
    let block: ipnet::Ipv6Net = local(w, i).expect("joined")["ipv6"]["subnet"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("an IPv6 block");
    Ipv6Addr::from(u128::from(block.network()) + n)
}

/// What reached the namespace at `ns` of the frames these tests send: ICMPv6 echo requests (the slow path's)
/// and UDP datagrams to a port nobody listens on (the fast path's).
fn hits(ns: &Path) -> u64 {
    snmp6(ns, "Icmp6InEchos") + snmp6(ns, "Udp6NoPorts")
}

/// IPv6 datagrams the host at `ns` forwarded.
fn forwarded6(ns: &Path) -> u64 {
    snmp6(ns, "Ip6OutForwDatagrams")
}

fn assert_raw_dropped(from: &Path, frame: &[u8], victim: &Path, what: &str) {
    let before = hits(victim);
    probe::send_frames(from, "eth0", &vec![frame.to_vec(); 5]).expect("send frames");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(hits(victim), before, "delivered: {what}");
}

/// The IPv6 twin of `a_lan_peer_cannot_use_a_member_as_a_router_into_the_overlay`: a LAN peer that is no
/// member routes a cluster block via a member (a real route, its own address), or sends raw IPv6 frames to a
/// member's underlay MAC for another host's sandbox with a source of the cluster (host 1's sandbox, an unused
/// address of host 1's block, an address of no block) or its own: none reaches the sandbox, via host 1 or
/// straight to host 2. The same inner frame from a member, in VXLAN, arrives (the control).
#[test]
fn a_lan_peer_cannot_use_a_member_as_an_ipv6_router_into_the_overlay() {
    lan_peer_through_a_member("ov6lan", "nftables");
}

#[test]
fn a_lan_peer_cannot_use_a_member_as_an_ipv6_router_into_the_overlay_iptables() {
    lan_peer_through_a_member("ov6lai", "iptables");
}

fn lan_peer_through_a_member(test: &str, firewall: &str) {
    let w = cluster(test, 2, &[], &["--firewall", firewall]);
    let a = sandbox(&w, 1, "a");
    let b = sandbox(&w, 2, "b");
    let (pa, pb) = (w.sb_path("a"), w.sb_path("b"));
    assert!(pings6(&pa, b), "a -> b");
    let out = w.outside_path();

    // A real route to the cluster via host 1, then via host 2: the peer's pings get nowhere.
    for via in [1, 2] {
        let before = hits(&pb);
        let via_ip = w.host_ip6(via).to_string();
        in_ns(
            &out,
            &["ip", "-6", "route", "replace", CLUSTER6, "via", &via_ip],
        );
        assert!(!pings6(&out, b), "the outside pinged b via host {via}");
        assert_eq!(hits(&pb), before, "an echo reached b via host {via}");
    }
    in_ns(&out, &["ip", "-6", "route", "del", CLUSTER6]);

    let out_mac = world::mac_of(&out, "eth0");
    let no_block: Ipv6Addr = "fd00:10:244:ff::7".parse().expect("an address");
    for (src, what) in [
        (a, "as host 1's sandbox"),
        (
            in_block6(&w, 1, 200),
            "as an unused address of host 1's block",
        ),
        (no_block, "as an address of no block"),
        (world::OUTSIDE_IP6, "as itself"),
    ] {
        for host in [1, 2] {
            for frame in [echo6, udp6].map(|f| f(w.host_mac(host), out_mac, src, b)) {
                assert_raw_dropped(
                    &out,
                    &frame,
                    &pb,
                    &format!("outside via host {host} {what}"),
                );
            }
        }
    }
    // Control: the same inner frame from a member is delivered.
    let vtep2 = world::mac_of(&w.host_path(2), "nsvx1");
    for make in [echo6, udp6] {
        let inner = make(vtep2, [0x0e, 0x6e, 1, 2, 3, 4], a, b);
        let before = hits(&pb);
        world::send_forged_vxlan(&w.host_path(1), w.host_ip(2), world::VXLAN_PORT, 1, &inner);
        assert!(
            wait_until(Duration::from_secs(3), || hits(&pb) > before),
            "the control did not arrive: from member host 1"
        );
    }
    teardown(&w, &[(1, "a"), (2, "b")]);
}

/// The preference of nsnet's fast path filter on host `i`'s eth0, if it has one there.
fn underlay_filter_pref(w: &World, i: usize) -> Option<String> {
    let out = in_ns(
        &w.host_path(i),
        &["tc", "filter", "show", "dev", "eth0", "ingress"],
    );
    out.lines()
        .find(|l| l.contains("nsnet_fastpath"))
        .and_then(|l| l.split("pref ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .map(str::to_string)
}

/// Whether `frame`, sent three times out of the outside peer's eth0, reaches the namespace at `victim`.
fn from_outside_arrives(w: &World, frame: &[u8], victim: &Path) -> bool {
    let before = hits(victim);
    probe::send_frames(&w.outside_path(), "eth0", &vec![frame.to_vec(); 3]).expect("send frames");
    wait_until(Duration::from_millis(1500), || hits(victim) > before)
}

/// The IPv6 twin of `on_host_gw_the_receiving_fast_path_gives_every_frame_the_slow_path_s_verdict`: a LAN
/// peer sends raw IPv6 UDP frames (the fast path takes TCP and UDP only; ICMPv6 always goes the slow way) onto
/// the underlay, and each gets the same verdict with nsnet's filter on host 2's eth0 as without it (host 2's
/// agent SIGKILLed and the filter deleted), and again after the agent puts it back. host-gw trusts its L2
/// segment on either path: a source in the cluster's prefix reaches a sandbox (the control, on the fast path:
/// host 2 routes nothing); the outside's own address, another MAC, broadcast, multicast, hop limit 0 or 1
/// never do.
#[test]
fn on_host_gw_the_receiving_fast_path_gives_every_ipv6_frame_the_slow_path_s_verdict() {
    let w = cluster("ov6hgv", 2, &["--backend", "host-gw"], &[]);
    let a = sandbox(&w, 1, "a");
    let b = sandbox(&w, 2, "b");
    let (pa, pb, h2) = (w.sb_path("a"), w.sb_path("b"), w.host_path(2));
    assert!(pings6(&pa, b) && pings6(&pb, a), "a <-> b");
    let gw2: Ipv6Addr = local(&w, 2).expect("joined")["ipv6"]["gateway"]
        .as_str()
        .and_then(|g| g.parse().ok())
        .expect("an IPv6 gateway");
    let out_mac = world::mac_of(&w.outside_path(), "eth0");
    let to2 = w.host_mac(2);
    let no_block: Ipv6Addr = "fd00:10:244:ff::7".parse().expect("an address");
    let cases: Vec<(Vec<u8>, &Path, &str)> = vec![
        (
            udp6(to2, out_mac, a, b),
            &pb,
            "from host 1's sandbox's address",
        ),
        (
            udp6(to2, out_mac, in_block6(&w, 1, 200), b),
            &pb,
            "from an unused address of host 1's block",
        ),
        (
            udp6(to2, out_mac, no_block, b),
            &pb,
            "from an address of no block",
        ),
        (
            udp6(to2, out_mac, in_block6(&w, 2, 77), b),
            &pb,
            "from an address of host 2's own block",
        ),
        (
            udp6(to2, out_mac, world::OUTSIDE_IP6, b),
            &pb,
            "from the outside's own address",
        ),
        (
            udp6([0x02, 0, 0, 0, 0, 0x99], out_mac, a, b),
            &pb,
            "to another MAC",
        ),
        (udp6([0xff; 6], out_mac, a, b), &pb, "broadcast"),
        (
            udp6([0x33, 0x33, 0, 0, 0, 1], out_mac, a, b),
            &pb,
            "multicast",
        ),
        (with_hops(udp6(to2, out_mac, a, b), 0), &pb, "hop limit 0"),
        (with_hops(udp6(to2, out_mac, a, b), 1), &pb, "hop limit 1"),
        (with_hops(udp6(to2, out_mac, a, b), 2), &pb, "hop limit 2"),
        (udp6(to2, out_mac, a, gw2), &h2, "for host 2's gateway"),
        (
            udp6(to2, out_mac, a, w.host_ip6(2)),
            &h2,
            "for host 2's underlay address",
        ),
    ];
    let verdicts = |w: &World| -> Vec<bool> {
        cases
            .iter()
            .map(|(f, victim, _)| from_outside_arrives(w, f, victim))
            .collect()
    };
    // What host 2 routed towards b: all it forwarded but b's answers (port unreachable, ICMPv6: the slow
    // path's, also on the way back to a).
    let routed = || forwarded6(&h2) - snmp6(&pb, "Icmp6OutDestUnreachs");

    // The fast path: the first frame arrives and host 2 does not route it.
    let pref = underlay_filter_pref(&w, 2).expect("nsnet's filter on host 2's eth0");
    let before = routed();
    assert!(from_outside_arrives(&w, &cases[0].0, &pb), "the control");
    assert!(routed() - before < 3, "the fast path took it");
    let fast = verdicts(&w);

    // The slow path: host 2's agent stopped, nsnet's filter (and only it) deleted.
    w.kill_agent(2, world::Signal::SIGKILL);
    in_ns(
        &h2,
        &[
            "tc", "filter", "del", "dev", "eth0", "ingress", "pref", &pref,
        ],
    );
    assert_eq!(underlay_filter_pref(&w, 2), None);
    let before = routed();
    assert!(
        from_outside_arrives(&w, &cases[0].0, &pb),
        "the control, slow"
    );
    assert!(routed() - before >= 3, "host 2 routed it");
    let slow = verdicts(&w);

    // The agent back: it puts the filter back.
    w.start_agent(2, &["--lease-ttl", TTL]);
    assert!(
        wait_until(CONVERGE, || underlay_filter_pref(&w, 2).is_some()),
        "the agent did not put the filter back:\n{}",
        w.agent_log(2)
    );
    let again = verdicts(&w);
    for (i, (_, _, what)) in cases.iter().enumerate() {
        assert_eq!(
            fast[i], slow[i],
            "{what}: fast path {} slow path {}",
            fast[i], slow[i]
        );
        assert_eq!(again[i], slow[i], "{what}, after the restart");
    }
    let arrived: Vec<&str> = cases
        .iter()
        .zip(&slow)
        .filter(|(_, v)| **v)
        .map(|((_, _, what), _)| *what)
        .collect();
    eprintln!("arrived on both paths: {arrived:?}");
    for want in [
        "from host 1's sandbox's address",
        "hop limit 2",
        "for host 2's gateway",
    ] {
        assert!(
            arrived.contains(&want),
            "{want} did not arrive: {arrived:?}"
        );
    }
    for never in [
        "from the outside's own address",
        "to another MAC",
        "broadcast",
        "multicast",
        "hop limit 0",
        "hop limit 1",
    ] {
        assert!(!arrived.contains(&never), "{never} arrived: {arrived:?}");
    }
    teardown(&w, &[(1, "a"), (2, "b")]);
}
