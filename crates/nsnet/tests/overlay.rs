//! Overlay networks across hosts (`nsnet agent`, VXLAN, host-gw), in a multi-host world of namespaces with a
//! real etcd. For now: smoke tests of the world itself.

mod world;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use nsnet_core::kernel::netns;
use nsnet_core::probe;
use world::{
    icmp_echo_frame, in_ns, inet_checksum, leftovers_of, send_forged_vxlan, World, OUTSIDE_IP,
    VXLAN_PORT,
};

/// ICMP echo requests the namespace at `ns` has received.
fn in_echos(ns: &std::path::Path) -> u64 {
    world::snmp(ns, "Icmp", "InEchos")
}

#[test]
fn a_world_comes_up_talks_keeps_etcd_data_across_restarts_and_leaves_nothing() {
    let w = World::new("world_up", 3);
    let tag = w.tag.clone();
    for i in 1..=3 {
        for j in (1..=3).filter(|j| *j != i) {
            assert!(
                probe::ping(&w.host_path(i), w.host_ip(j)).expect("ping"),
                "host {i} cannot reach host {j}"
            );
        }
        assert!(
            probe::ping(&w.host_path(i), OUTSIDE_IP).expect("ping"),
            "host {i} cannot reach the outside peer"
        );
    }

    w.etcdctl(&["put", "/world/k", "v1"]);
    assert_eq!(
        w.etcdctl(&["get", "--print-value-only", "/world/k"]).trim(),
        "v1"
    );
    w.stop_etcd();
    assert!(!w.etcd_running());
    let out = w.try_etcdctl(&["--command-timeout=500ms", "get", "/world/k"]);
    assert!(
        !out.status.success(),
        "etcdctl worked with etcd stopped: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    w.start_etcd();
    assert_eq!(
        w.etcdctl(&["get", "--print-value-only", "/world/k"]).trim(),
        "v1",
        "the key did not survive a restart"
    );

    assert!(!w.leftovers().is_empty(), "a live world shows up as live");
    drop(w);
    assert_eq!(leftovers_of(&tag), Vec::<String>::new());
}

#[test]
fn forged_vxlan_from_the_outside_peer_reaches_host_udp_4789() {
    let w = World::new("forged", 2);
    let host = netns::open(&w.host_path(1)).expect("open host 1");
    let sock = netns::run_in(&host, || {
        UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, VXLAN_PORT))
    })
    .expect("enter host 1")
    .expect("bind UDP 4789 in host 1");
    sock.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("set a timeout");

    let (host_mac, out_mac) = (w.host_mac(1), world::mac_of(&w.outside_path(), "eth0"));
    let inner = icmp_echo_frame(host_mac, out_mac, OUTSIDE_IP, w.host_ip(1));
    send_forged_vxlan(
        &w.outside_path(),
        w.host_ip(1),
        VXLAN_PORT,
        0x00ab_cdef,
        &inner,
    );
    let mut buf = [0u8; 2048];
    let (n, from) = sock.recv_from(&mut buf).expect("a datagram on 4789");
    assert_eq!(from.ip(), std::net::IpAddr::V4(OUTSIDE_IP));
    let got = &buf[..n];
    assert_eq!(got[0], 0x08, "flags: VNI valid");
    assert_eq!(&got[4..7], &[0xab, 0xcd, 0xef], "VNI");
    assert_eq!(&got[8..], inner.as_slice(), "inner frame");

    // The inner frame is one a kernel accepts: IPv4 and ICMP checksums both check out, and host 1 answers it
    // when it arrives bare on its eth0.
    assert_eq!(inet_checksum(&inner[14..34]), 0, "IPv4 header checksum");
    assert_eq!(inet_checksum(&inner[34..]), 0, "ICMP checksum");
    let before = in_echos(&w.host_path(1));
    probe::send_frames(&w.outside_path(), "eth0", &[inner]).expect("send a raw frame");
    assert!(
        world::wait_until(Duration::from_secs(3), || in_echos(&w.host_path(1))
            > before),
        "host 1 did not take the echo request"
    );
}

// ---------------------------------------------------------------------------------------------------------
// Overlay networks, end to end: real etcd, real agents, real packets.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;

use serde_json::Value;
use world::{common, try_in_ns, wait_until, Signal};

const NET: &str = "pods";
const CLUSTER: &str = "10.244.0.0/16";
/// Agents renew every second in the tests, so a lost host goes within seconds.
const TTL: &str = "3";
const CONVERGE: Duration = Duration::from_secs(15);

/// `network create pods --driver overlay` on host 1, with `extra` options.
fn make_overlay(w: &World, extra: &[&str]) {
    let url = w.etcd_url();
    let mut args = vec![
        "network", "create", NET, "--driver", "overlay", "--subnet", CLUSTER, "--etcd", &url,
    ];
    args.extend_from_slice(extra);
    w.ok(1, &args);
}

/// A world of `hosts` hosts with the overlay network made, and agents (with `agent_extra`) on the first `joined`
/// hosts, which have all joined.
fn cluster(test: &str, hosts: usize, joined: usize, agent_extra: &[&str]) -> World {
    cluster_of(test, hosts, joined, agent_extra, &[])
}

/// [`cluster`], the network made with `overlay_extra` (`--backend host-gw`).
fn cluster_of(
    test: &str,
    hosts: usize,
    joined: usize,
    agent_extra: &[&str],
    overlay_extra: &[&str],
) -> World {
    let w = World::new(test, hosts);
    make_overlay(&w, overlay_extra);
    let mut args = vec!["--lease-ttl", TTL];
    args.extend_from_slice(agent_extra);
    for i in 1..=joined {
        w.start_agent(i, &args);
    }
    let all: Vec<usize> = (1..=joined).collect();
    wait_joined(&w, &all, joined - 1);
    w
}

/// Host `i`'s record of the overlay network, once its agent made it.
fn local(w: &World, i: usize) -> Option<Value> {
    let out = w.nsnet(i, &["network", "inspect", NET, "--json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("inspect --json is JSON"))
}

/// Wait until every host in `hosts` has joined with `peers` peers programmed.
fn wait_joined(w: &World, hosts: &[usize], peers: usize) {
    for &i in hosts {
        let ok = wait_until(CONVERGE, || {
            local(w, i)
                .is_some_and(|v| v["overlay"]["peers"].as_array().map(Vec::len) == Some(peers))
        });
        assert!(
            ok,
            "host {i} did not join with {peers} peers: {:?}\nagent log:\n{}",
            local(w, i),
            w.agent_log(i)
        );
    }
}

/// This host's block of the cluster, from its record.
fn block(w: &World, i: usize) -> String {
    local(w, i).expect("joined")["subnet"]
        .as_str()
        .expect("a subnet")
        .to_string()
}

/// Create sandbox `name` on host `i` on the overlay network; returns its address.
fn sandbox(w: &World, i: usize, name: &str, extra: &[&str]) -> Ipv4Addr {
    let sb = w.sb(name);
    let mut args = vec!["create", sb.as_str(), "--network", NET];
    args.extend_from_slice(extra);
    w.ok(i, &args);
    w.address(i, name)
}

fn pings(from: &Path, to: Ipv4Addr) -> bool {
    probe::ping(from, to).unwrap_or(false)
}

/// The lines of `cmd` run in host `i`'s namespace (e.g. `bridge fdb show dev nsvx1`).
fn lines(w: &World, i: usize, cmd: &[&str]) -> Vec<String> {
    // A device that is gone has no entries (the repair test deletes it).
    let out = try_in_ns(&w.host_path(i), cmd);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// nsnet's overlay routes on host `i` (protocol 110 in the kernel's table).
fn overlay_routes(w: &World, i: usize) -> Vec<String> {
    lines(w, i, &["ip", "route", "show", "proto", "110"])
}

/// Remove the overlay network from the cluster and wait until every host's agent removed its part.
fn remove_overlay(w: &World, hosts: &[usize]) {
    w.ok(1, &["network", "rm", NET, "--etcd", &w.etcd_url()]);
    for &i in hosts {
        assert!(
            wait_until(CONVERGE, || local(w, i).is_none()),
            "host {i} kept its part of the network:\n{}",
            w.agent_log(i)
        );
        assert!(
            !in_ns(&w.host_path(i), &["ip", "-o", "link"]).contains("nsvx"),
            "host {i} kept its VXLAN device"
        );
        assert_eq!(
            overlay_routes(w, i),
            Vec::<String>::new(),
            "host {i}'s routes"
        );
        // Its last network gone, nsnet's tables went with it.
        let tables = in_ns(&w.host_path(i), &["nft", "list", "tables"]);
        assert!(
            !tables.contains("nsnet"),
            "host {i} keeps nsnet's tables: {tables}"
        );
    }
    assert_eq!(
        w.etcdctl(&["get", "--prefix", "/nsnet/", "--keys-only"])
            .trim(),
        "",
        "etcd keeps keys of the removed network"
    );
}

#[test]
fn three_hosts_on_vxlan_reach_each_other_by_their_own_addresses() {
    let w = cluster("vxlan3", 3, 3, &[]);
    let blocks: Vec<String> = (1..=3).map(|i| block(&w, i)).collect();
    let mut unique = blocks.clone();
    unique.dedup();
    assert_eq!(unique.len(), 3, "blocks shared: {blocks:?}");

    // The cluster's view, from any host.
    let ls = w.ok(2, &["network", "ls", "--etcd", &w.etcd_url()]);
    assert!(ls.contains(NET) && ls.contains(CLUSTER), "{ls}");
    let inspect: Value = serde_json::from_str(&w.ok(
        3,
        &["network", "inspect", NET, "--etcd", &w.etcd_url(), "--json"],
    ))
    .expect("JSON");
    assert_eq!(
        inspect["hosts"].as_array().map(Vec::len),
        Some(3),
        "{inspect}"
    );

    let a = sandbox(&w, 1, "a", &[]);
    let b = sandbox(&w, 2, "b", &[]);
    let c = sandbox(&w, 3, "c", &[]);
    let (pa, pb, pc) = (w.sb_path("a"), w.sb_path("b"), w.sb_path("c"));
    for (from, to, what) in [
        (&pa, b, "a -> b"),
        (&pb, a, "b -> a"),
        (&pb, c, "b -> c"),
        (&pc, a, "c -> a"),
    ] {
        assert!(pings(from, to), "{what}");
    }
    // TCP and UDP both ways, and the receiver sees the sender's own address (no NAT inside the cluster).
    assert_eq!(
        common::reach(&pb, 80, &pa, SocketAddrV4::new(b, 80)),
        Some(a)
    );
    assert_eq!(
        common::reach(&pa, 81, &pc, SocketAddrV4::new(a, 81)),
        Some(c)
    );
    let server =
        probe::udp_server(&pa, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 5353)).expect("udp");
    let reply = probe::udp_hello(&pb, SocketAddrV4::new(a, 5353)).expect("UDP b -> a");
    assert!(reply.contains(&b.to_string()), "{reply}");
    assert_eq!(
        server.wait().expect("udp peer").ip(),
        std::net::IpAddr::V4(b)
    );
    let server =
        probe::udp_server(&pb, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 5353)).expect("udp");
    probe::udp_hello(&pa, SocketAddrV4::new(b, 5353)).expect("UDP a -> b");
    assert_eq!(
        server.wait().expect("udp peer").ip(),
        std::net::IpAddr::V4(a)
    );
    // Every host reaches every sandbox.
    assert!(pings(&w.host_path(3), a), "host 3 -> a");
    assert!(pings(&w.host_path(1), c), "host 1 -> c");

    // Leaving the cluster subnet: masqueraded to the host's underlay address.
    let seen = common::reach(
        &w.outside_path(),
        8000,
        &pa,
        SocketAddrV4::new(OUTSIDE_IP, 8000),
    );
    assert_eq!(seen, Some(w.host_ip(1)), "a -> outside is masqueraded");

    // A published port on host 2, from the outside peer: the sandbox sees the real client.
    let d = sandbox(&w, 2, "d", &["-p", "8080:80"]);
    let seen = common::reach(
        &w.sb_path("d"),
        80,
        &w.outside_path(),
        SocketAddrV4::new(w.host_ip(2), 8080),
    );
    assert_eq!(seen, Some(OUTSIDE_IP), "outside -> host 2:8080 -> d ({d})");
    // The same port from sandboxes of the network: on host 2, on host 1 (masqueraded to host 1's address on
    // the underlay), and from d itself (hairpin).
    let to_d = SocketAddrV4::new(w.host_ip(2), 8080);
    let pd = w.sb_path("d");
    assert!(
        common::reach(&pd, 80, &pb, to_d).is_some(),
        "b -> host 2:8080 -> d"
    );
    assert!(
        common::reach(&pd, 80, &pa, to_d).is_some(),
        "a -> host 2:8080 -> d"
    );
    assert!(
        common::reach(&pd, 80, &pd, to_d).is_some(),
        "d -> itself (hairpin)"
    );

    // MTU: the underlay's 1500 less 50, on the device, the bridge and the veths; a don't-fragment packet
    // of the full size crosses, one byte more is refused at the sender.
    let mtu = |ns: &Path, dev: &str| -> String {
        let v: Value =
            serde_json::from_str(&in_ns(ns, &["ip", "-j", "link", "show", dev])).expect("JSON");
        v[0]["mtu"].to_string()
    };
    assert_eq!(mtu(&w.host_path(1), "nsvx1"), "1450");
    assert_eq!(mtu(&pa, "eth0"), "1450");
    let df_ping = |size: &str| {
        let b = b.to_string();
        try_in_ns(&pa, &["ping", "-c1", "-W2", "-M", "do", "-s", size, &b])
    };
    assert!(
        df_ping("1422").status.success(),
        "a full-MTU DF ping a -> b failed"
    );
    let over = df_ping("1423");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&over.stdout),
        String::from_utf8_lossy(&over.stderr)
    );
    assert!(
        !over.status.success() && said.contains("message too long"),
        "one byte over the MTU: {said}"
    );

    // Per remote host exactly one FDB entry, one permanent neighbour entry, one route.
    let fdb: Vec<String> = lines(&w, 1, &["bridge", "fdb", "show", "dev", "nsvx1"])
        .into_iter()
        .filter(|l| l.contains(" dst "))
        .collect();
    assert_eq!(fdb.len(), 2, "{fdb:?}");
    for j in [2, 3] {
        assert!(
            fdb.iter().any(|l| l.contains(&w.host_ip(j).to_string())),
            "{fdb:?}"
        );
    }
    let neigh = lines(&w, 1, &["ip", "neigh", "show", "dev", "nsvx1"]);
    assert_eq!(neigh.len(), 2, "{neigh:?}");
    assert!(neigh.iter().all(|l| l.contains("PERMANENT")), "{neigh:?}");
    assert_eq!(
        overlay_routes(&w, 1).len(),
        2,
        "{:?}",
        overlay_routes(&w, 1)
    );
    let link = in_ns(&w.host_path(1), &["ip", "-d", "link", "show", "nsvx1"]);
    assert!(link.contains("nolearning"), "{link}");

    for (i, name) in [(1, "a"), (2, "b"), (3, "c"), (2, "d")] {
        w.ok(i, &["rm", &w.sb(name)]);
    }
    remove_overlay(&w, &[1, 2, 3]);
}

#[test]
fn host_gw_routes_via_the_underlay_and_refuses_a_peer_behind_a_router() {
    let w = World::new("hostgw", 2);
    make_overlay(&w, &["--backend", "host-gw"]);
    w.start_agent(1, &["--lease-ttl", TTL]);
    wait_joined(&w, &[1], 0);
    // What host 2's agent would do, as commands, changing nothing: its bridge, and the route to host 1.
    let url = w.etcd_url();
    let links_before = lines(&w, 2, &["ip", "-o", "link"]);
    let plan = w.ok(
        2,
        &["agent", "--etcd", &url, "--iface", "eth0", "--dry-run"],
    );
    for want in [
        "# network pods: this host holds 10.244.",
        "type bridge",
        &format!("via {} dev eth0 src 10.244.", w.host_ip(1)),
        "proto 110",
        // The fast path's tunnel: host 1's block straight out of eth0, to host 1.
        "# fast path: bpf program nsnet_fastpath of",
        "sends to eth0: 10.244.",
        // ... and delivers what arrives on eth0 from there: one filter of its own on eth0's ingress, whose
        // qdisc nsnet makes (host 2 has none).
        "tc qdisc add dev eth0 ingress",
        "tc filter replace dev eth0 ingress protocol all pref ",
    ] {
        assert!(plan.contains(want), "{want:?} not in:\n{plan}");
    }
    assert_eq!(
        lines(&w, 2, &["ip", "-o", "link"]),
        links_before,
        "a dry run changed links"
    );
    assert_eq!(
        lines(&w, 2, &["tc", "qdisc", "show", "dev", "eth0", "ingress"]),
        Vec::<String>::new(),
        "a dry run made a qdisc"
    );
    assert!(local(&w, 2).is_none(), "a dry run recorded a network");
    let leases = w.etcdctl(&["get", "--prefix", "/nsnet/leases/", "--keys-only"]);
    assert_eq!(
        leases.lines().filter(|l| !l.is_empty()).count(),
        1,
        "{leases}"
    );
    w.start_agent(2, &["--lease-ttl", TTL]);
    wait_joined(&w, &[1, 2], 1);
    let a = sandbox(&w, 1, "a", &[]);
    let b = sandbox(&w, 2, "b", &[]);
    assert!(pings(&w.sb_path("a"), b), "a -> b");
    assert_eq!(
        common::reach(
            &w.sb_path("a"),
            80,
            &w.sb_path("b"),
            SocketAddrV4::new(a, 80)
        ),
        Some(b),
        "a sees b's own address"
    );
    assert!(pings(&w.host_path(2), a), "host 2 -> a");
    let routes = overlay_routes(&w, 1);
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert!(
        routes[0].contains(&format!("via {}", w.host_ip(2))),
        "{routes:?}"
    );
    let mtu = in_ns(&w.sb_path("a"), &["ip", "-o", "link", "show", "eth0"]);
    assert!(
        mtu.contains("mtu 1500"),
        "host-gw keeps the underlay's MTU: {mtu}"
    );

    // A host whose underlay address host 1 reaches only through a router: its route would black-hole.
    in_ns(
        &w.host_path(1),
        &[
            "ip",
            "route",
            "add",
            "192.168.201.0/24",
            "via",
            &w.host_ip(2).to_string(),
        ],
    );
    let fake = r#"{"host":"00ff00ff00ff00ff","hostname":"far","underlay":"192.168.201.5"}"#;
    w.etcdctl(&["put", "/nsnet/leases/pods/10.244.200.0-24", fake]);
    assert!(
        wait_until(CONVERGE, || w
            .agent_log(1)
            .contains("not on this host's L2 segment")),
        "no refusal in the log:\n{}",
        w.agent_log(1)
    );
    assert!(
        !overlay_routes(&w, 1)
            .iter()
            .any(|r| r.contains("10.244.200.0")),
        "a route to the far host's block: {:?}",
        overlay_routes(&w, 1)
    );
    w.etcdctl(&["del", "/nsnet/leases/pods/10.244.200.0-24"]);
    in_ns(&w.host_path(1), &["ip", "route", "del", "192.168.201.0/24"]);

    w.ok(1, &["rm", &w.sb("a")]);
    w.ok(2, &["rm", &w.sb("b")]);
    remove_overlay(&w, &[1, 2]);
}

/// ICMP echo requests received inside a sandbox.
fn echos(ns: &Path) -> u64 {
    in_echos(ns)
}

/// Send `frame` in VXLAN (VNI 1) five times from `from` to host address `to`: the sandbox at `victim` must
/// not get it.
fn assert_vxlan_dropped(from: &Path, to: Ipv4Addr, frame: &[u8], victim: &Path, what: &str) {
    let before = echos(victim);
    for _ in 0..5 {
        send_forged_vxlan(from, to, VXLAN_PORT, 1, frame);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        echos(victim),
        before,
        "forged VXLAN reached a sandbox: {what}"
    );
}

/// The same from a member host: delivered, so the tests above can see a delivery when there is one.
fn assert_vxlan_delivered(from: &Path, to: Ipv4Addr, frame: &[u8], victim: &Path) {
    let before = echos(victim);
    send_forged_vxlan(from, to, VXLAN_PORT, 1, frame);
    assert!(
        wait_until(Duration::from_secs(3), || echos(victim) > before),
        "the control packet from a member did not arrive"
    );
}

#[test]
fn forged_vxlan_from_a_non_member_never_reaches_a_sandbox() {
    let w = cluster("forge", 2, 2, &[]);
    let a = sandbox(&w, 1, "a", &[]);
    let pa = w.sb_path("a");
    let vtep = world::mac_of(&w.host_path(1), "nsvx1");
    // The inner frame claims to come from host 2's block, to host 1's VTEP, for sandbox a.
    let b2 = block(&w, 2);
    let spoofed: Ipv4Addr = b2
        .split('/')
        .next()
        .and_then(|s| s.parse::<Ipv4Addr>().ok())
        .map(|n| Ipv4Addr::from(u32::from(n) + 9))
        .expect("host 2's block");
    let frame = icmp_echo_frame(vtep, [0x0e, 0x6e, 1, 2, 3, 4], spoofed, a);

    let out = w.outside_path();
    assert_vxlan_dropped(&out, w.host_ip(1), &frame, &pa, "from a non-member");
    // The same packet from a member's address is delivered: the test can see a delivery when there is one.
    assert_vxlan_delivered(&w.host_path(2), w.host_ip(1), &frame, &pa);

    w.ok(1, &["rm", &w.sb("a")]);
    remove_overlay(&w, &[1, 2]);
}

/// The kernel objects whose identity a restart must keep: VXLAN device and bridge ifindexes, and every entry.
fn kernel_state(w: &World, i: usize) -> Vec<String> {
    let mut out = lines(w, i, &["ip", "-o", "link", "show", "type", "vxlan"]);
    out.extend(lines(w, i, &["ip", "-o", "link", "show", "type", "bridge"]));
    out.extend(lines(w, i, &["bridge", "fdb", "show", "dev", "nsvx1"]));
    out.extend(lines(w, i, &["ip", "neigh", "show", "dev", "nsvx1"]));
    out.extend(overlay_routes(w, i));
    // Counters and flags that move on their own are not identity.
    out.iter()
        .map(|l| {
            l.split_whitespace()
                .filter(|t| !matches!(*t, "state" | "UP" | "DOWN" | "UNKNOWN" | "LOWER_UP"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[test]
fn an_agent_restart_or_crash_changes_nothing_and_connections_survive() {
    let w = cluster("restart", 2, 2, &[]);
    let _a = sandbox(&w, 1, "a", &[]);
    let b = sandbox(&w, 2, "b", &[]);
    let subnet = block(&w, 1);

    // An echo server in b; a connection from a that stays open through the restarts.
    let fd = netns::open(&w.sb_path("b")).expect("open b");
    let listener = netns::run_in(&fd, || TcpListener::bind(SocketAddrV4::new(b, 7000)))
        .expect("enter b")
        .expect("listen in b");
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (conn, _) = listener.accept()?;
        let mut reader = BufReader::new(conn.try_clone()?);
        let mut conn = conn;
        let mut line = String::new();
        while reader.read_line(&mut line)? > 0 {
            conn.write_all(line.as_bytes())?;
            line.clear();
        }
        Ok(())
    });
    let mut client =
        probe::tcp_connect(&w.sb_path("a"), SocketAddrV4::new(b, 7000)).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut reader = BufReader::new(client.try_clone().expect("clone"));
    let mut echo = |text: &str| {
        client
            .write_all(format!("{text}\n").as_bytes())
            .expect("send");
        let mut line = String::new();
        reader.read_line(&mut line).expect("echo back");
        assert_eq!(line.trim(), text);
    };
    echo("before");

    let before = kernel_state(&w, 1);
    for signal in [Signal::SIGKILL, Signal::SIGTERM] {
        w.kill_agent(1, signal);
        echo("agent away");
        w.start_agent(1, &["--lease-ttl", TTL]);
        // Give it a few rounds to do anything it would do.
        std::thread::sleep(Duration::from_secs(3));
        assert!(w.agent_running(1), "{}", w.agent_log(1));
        assert_eq!(
            kernel_state(&w, 1),
            before,
            "{signal:?}: the kernel changed across the restart"
        );
        assert_eq!(block(&w, 1), subnet, "the host kept its block");
        echo("after restart");
    }
    // gc finds everything of the overlay's owned by a record, and leaves it alone.
    w.ok(1, &["gc"]);
    assert_eq!(
        kernel_state(&w, 1),
        before,
        "gc changed the overlay's kernel state"
    );
    echo("after gc");
    drop(client);
    drop(reader);
    let _ = server.join();
    w.ok(1, &["rm", &w.sb("a")]);
    w.ok(2, &["rm", &w.sb("b")]);
    remove_overlay(&w, &[1, 2]);
}

/// Count of ping replies of `ping -c N -i 0.1` from `from` to `to`.
fn ping_many(from: &Path, to: Ipv4Addr, n: u32) -> std::process::Child {
    let ns = format!("--net={}", from.display());
    std::process::Command::new("nsenter")
        .args([
            ns.as_str(),
            "--",
            "ping",
            "-q",
            "-c",
            &n.to_string(),
            "-i",
            "0.1",
            "-W",
            "1",
        ])
        .arg(to.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ping")
}

#[test]
fn etcd_away_hurts_nothing_and_the_agents_catch_up_after_a_compaction() {
    let w = cluster("etcddown", 3, 2, &[]);
    let a = sandbox(&w, 1, "a", &[]);
    let b = sandbox(&w, 2, "b", &[]);

    // etcd stops while traffic flows: not one packet lost.
    let pinger = ping_many(&w.sb_path("a"), b, 40);
    std::thread::sleep(Duration::from_millis(500));
    w.stop_etcd();
    let out = pinger.wait_with_output().expect("ping");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" 0% packet loss"), "{text}");
    // A host that holds its block still creates sandboxes, reachable across hosts.
    let a2 = sandbox(&w, 1, "a2", &[]);
    assert!(pings(&w.sb_path("b"), a2), "b -> a2 with etcd down");
    w.start_etcd();

    // Host 1 is cut off from etcd (connections refused); meanwhile host 3 joins and etcd compacts its history.
    let cut = ["nft", "add", "table", "ip", "cut"];
    let host1 = w.host_path(1);
    in_ns(&host1, &cut);
    in_ns(
        &host1,
        &[
            "nft",
            "add",
            "chain",
            "ip",
            "cut",
            "out",
            "{ type filter hook output priority 0; }",
        ],
    );
    let etcd_ip = world::ETCD_IP.to_string();
    in_ns(
        &host1,
        &[
            "nft", "add", "rule", "ip", "cut", "out", "ip", "daddr", &etcd_ip, "tcp", "dport",
            "2379", "reject", "with", "tcp", "reset",
        ],
    );
    // Break host 1's watch: etcd restarts (its connections close) while host 1 cannot reconnect.
    w.stop_etcd();
    w.start_etcd();
    w.start_agent(3, &["--lease-ttl", TTL]);
    wait_joined(&w, &[3], 2);
    let c = sandbox(&w, 3, "c", &[]);
    // Host 1 is cut off, so etcdctl runs beside etcd.
    let url = w.etcd_url();
    let etcdctl = |args: &[&str]| {
        let mut full = vec!["etcdctl", "--endpoints", url.as_str()];
        full.extend_from_slice(args);
        in_ns(&w.etcd_path(), &full)
    };
    let status = etcdctl(&["endpoint", "status", "-w", "json"]);
    let rev = serde_json::from_str::<Value>(&status).expect("JSON")[0]["Status"]["header"]
        ["revision"]
        .as_i64()
        .expect("a revision");
    etcdctl(&["compact", &rev.to_string()]);
    in_ns(&host1, &["nft", "delete", "table", "ip", "cut"]);

    // Host 1 converges on what it missed: host 3 is its peer, a reaches c.
    wait_joined(&w, &[1], 2);
    assert!(
        pings(&w.sb_path("a"), c),
        "a -> c after catching up\n{}",
        w.agent_log(1)
    );
    assert!(pings(&w.sb_path("c"), a), "c -> a");
    let log = w.agent_log(1);
    assert!(
        log.contains("compacted away; listing again"),
        "host 1 did not meet the compaction it was set up to meet:\n{log}"
    );

    for (i, name) in [(1, "a"), (1, "a2"), (2, "b"), (3, "c")] {
        w.ok(i, &["rm", &w.sb(name)]);
    }
    remove_overlay(&w, &[1, 2, 3]);
}

#[test]
fn a_lost_host_is_withdrawn_and_gets_its_block_back_when_it_returns() {
    let w = cluster("hostloss", 3, 3, &[]);
    let lost = block(&w, 3);
    w.kill_agent(3, Signal::SIGKILL);
    w.host_link_down(3);
    // Its lease expires after the TTL; every other host withdraws its entries.
    wait_joined(&w, &[1, 2], 1);
    for i in [1, 2] {
        assert!(
            !overlay_routes(&w, i)
                .iter()
                .any(|r| r.starts_with(lost.as_str())),
            "host {i} still routes {lost}: {:?}",
            overlay_routes(&w, i)
        );
        let fdb = lines(&w, i, &["bridge", "fdb", "show", "dev", "nsvx1"]);
        assert!(
            !fdb.iter().any(|l| l.contains(&w.host_ip(3).to_string())),
            "host {i} keeps host 3's FDB entry: {fdb:?}"
        );
    }
    // Back: its old block again.
    w.host_link_up(3);
    w.start_agent(3, &["--lease-ttl", TTL]);
    wait_joined(&w, &[1, 2, 3], 2);
    assert_eq!(block(&w, 3), lost, "host 3 came back with another block");
    remove_overlay(&w, &[1, 2, 3]);
}

#[test]
fn racing_agents_never_share_a_block_and_a_full_cluster_says_so() {
    let w = World::new("race", 3);
    // Two /24 blocks for three hosts.
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
            "10.250.0.0/23",
            "--etcd",
            &url,
        ],
    );
    for i in 1..=3 {
        w.start_agent(i, &["--lease-ttl", TTL]);
    }
    let joined = || (1..=3).filter(|i| local(&w, *i).is_some()).count();
    assert!(
        wait_until(CONVERGE, || joined() == 2),
        "joined: {}",
        joined()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(joined(), 2, "a third host joined a two-block network");
    let mut blocks: Vec<String> = (1..=3)
        .filter_map(|i| local(&w, i))
        .map(|v| v["subnet"].to_string())
        .collect();
    blocks.dedup();
    assert_eq!(blocks.len(), 2, "{blocks:?}");
    let left = (1..=3)
        .find(|i| local(&w, *i).is_none())
        .expect("one host left out");
    assert!(
        w.agent_log(left).contains("is full"),
        "no clear error:\n{}",
        w.agent_log(left)
    );
    remove_overlay(&w, &[1, 2, 3]);
}

#[test]
fn peers_follow_an_underlay_address_change() {
    let w = cluster("readdr", 2, 2, &[]);
    let _a = sandbox(&w, 1, "a", &[]);
    let b = sandbox(&w, 2, "b", &[]);
    assert!(pings(&w.sb_path("a"), b));
    let new_ip = Ipv4Addr::new(192, 168, 200, 99);
    w.set_host_ip(2, new_ip);
    let follows = wait_until(CONVERGE, || {
        lines(&w, 1, &["bridge", "fdb", "show", "dev", "nsvx1"])
            .iter()
            .any(|l| l.contains("dst 192.168.200.99"))
    });
    assert!(follows, "host 1 kept the old address:\n{}", w.agent_log(2));
    // Host 1's FDB entry is one side of the move; the path works once host 2's agent has taken its new
    // address too, in its own sync (the two agents follow the change independently).
    assert!(
        wait_until(CONVERGE, || pings(&w.sb_path("a"), b)),
        "a -> b after host 2 moved"
    );
    w.ok(1, &["rm", &w.sb("a")]);
    w.ok(2, &["rm", &w.sb("b")]);
    remove_overlay(&w, &[1, 2]);
}

#[test]
fn entries_deleted_by_hand_come_back() {
    let w = cluster("repair", 2, 2, &[]);
    let _a = sandbox(&w, 1, "a", &[]);
    let b = sandbox(&w, 2, "b", &[]);
    let peer = block(&w, 2);
    let h1 = w.host_path(1);
    let want = kernel_state(&w, 1);
    let back = |what: &str| {
        assert!(
            wait_until(Duration::from_secs(10), || {
                let now = kernel_state(&w, 1);
                // A re-created device gets a new ifindex: compare without the index.
                let strip = |v: Vec<String>| -> Vec<String> {
                    v.into_iter()
                        .map(|l| l.split_once(": ").map_or(l.clone(), |(_, r)| r.to_string()))
                        .collect()
                };
                strip(now) == strip(want.clone())
            }),
            "{what} did not come back: {:?}\n{}",
            kernel_state(&w, 1),
            w.agent_log(1)
        );
        assert!(pings(&w.sb_path("a"), b), "a -> b after {what} came back");
    };
    in_ns(&h1, &["ip", "route", "del", &peer]);
    back("the route");
    let mac = world::mac_of(&w.host_path(2), "nsvx1");
    let mac = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    in_ns(&h1, &["bridge", "fdb", "del", &mac, "dev", "nsvx1", "self"]);
    back("the FDB entry");
    let via = peer.split('/').next().expect("block");
    in_ns(&h1, &["ip", "neigh", "del", via, "dev", "nsvx1"]);
    back("the neighbour entry");
    in_ns(&h1, &["ip", "link", "del", "nsvx1"]);
    back("the VXLAN device");
    w.ok(1, &["rm", &w.sb("a")]);
    w.ok(2, &["rm", &w.sb("b")]);
    remove_overlay(&w, &[1, 2]);
}

#[test]
fn bad_overlay_input_is_refused_in_one_line_and_changes_nothing() {
    let w = World::new("badov", 1);
    let url = w.etcd_url();
    let keys = || w.etcdctl(&["get", "--prefix", "/", "--keys-only"]);
    let before = keys();
    let state_before = std::fs::read_dir(w.state_dir(1))
        .map(|d| d.count())
        .unwrap_or(0);
    let create = ["network", "create", NET, "--driver", "overlay"];
    let with = |extra: &[&'static str]| -> Vec<String> {
        create.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let full = |extra: &[&'static str]| -> Vec<String> {
        let mut v = with(&["--subnet", CLUSTER, "--etcd"]);
        v.push(url.clone());
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let owned = |args: &[&str]| -> Vec<String> { args.iter().map(|s| s.to_string()).collect() };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (with(&["--subnet", CLUSTER]), "--etcd"),
        (
            owned(&[
                "network", "create", NET, "--driver", "overlay", "--etcd", &url,
            ]),
            "--subnet",
        ),
        (full(&["--vni", "0"]), "VNI"),
        (full(&["--host-subnet-len", "12"]), "host-subnet-len"),
        (full(&["--backend", "gre"]), "vxlan or host-gw"),
        (full(&["--internal"]), "--internal"),
        (
            with(&["--subnet", CLUSTER, "--etcd", "https://1.2.3.4:2379"]),
            "TLS",
        ),
        (
            owned(&[
                "network",
                "create",
                NET,
                "--subnet",
                "10.9.0.0/24",
                "--vni",
                "5",
            ]),
            "--driver overlay",
        ),
        (
            owned(&["network", "rm", "nothere", "--etcd", &url]),
            "no overlay network",
        ),
        (
            owned(&["agent", "--etcd", &url, "--iface", "nosuch0"]),
            "nosuch0",
        ),
        (
            owned(&["agent", "--etcd", &url, "--lease-ttl", "1"]),
            "lease-ttl",
        ),
    ];
    for (args, want) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let line = w.fails(1, &args);
        assert!(line.contains(want), "{args:?}: {line}");
    }
    assert_eq!(keys(), before, "etcd changed");
    assert_eq!(
        std::fs::read_dir(w.state_dir(1))
            .map(|d| d.count())
            .unwrap_or(0),
        state_before,
        "the state dir changed"
    );
    // An existing name is refused, and the cluster keeps the first one's settings.
    make_overlay(&w, &[]);
    let line = w.fails(
        1,
        &[
            "network",
            "create",
            NET,
            "--driver",
            "overlay",
            "--subnet",
            "10.9.0.0/16",
            "--etcd",
            &url,
        ],
    );
    assert!(line.contains("already exists"), "{line}");
    let line = w.fails(
        1,
        &[
            "network",
            "create",
            "other",
            "--driver",
            "overlay",
            "--subnet",
            "10.9.0.0/16",
            "--etcd",
            &url,
        ],
    );
    assert!(line.contains("VNI 1"), "{line}");
    // host-gw uses neither VNI nor port: another network on the same defaults is fine.
    w.ok(
        1,
        &[
            "network",
            "create",
            "gw",
            "--driver",
            "overlay",
            "--backend",
            "host-gw",
            "--subnet",
            "10.11.0.0/16",
            "--etcd",
            &url,
        ],
    );
    w.ok(1, &["network", "rm", "gw", "--etcd", &url]);
    // On a host, the agent's part of the network is not removed by hand.
    w.start_agent(1, &["--lease-ttl", TTL]);
    wait_joined(&w, &[1], 0);
    let line = w.fails(1, &["network", "rm", NET]);
    assert!(
        line.contains("nsnet agent") && line.contains("--etcd"),
        "{line}"
    );
    remove_overlay(&w, &[1]);
}

#[test]
fn a_cni_container_on_the_overlay_reaches_a_sandbox_on_another_host() {
    let w = cluster("ovcni", 2, 2, &[]);
    let a = sandbox(&w, 1, "a", &[]);
    let cni = world::nsnet_bin().with_file_name("nsnet-cni");
    assert!(
        cni.exists(),
        "{} is not built; run `cargo test --workspace`",
        cni.display()
    );
    // The runtime's namespace, on host 2.
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
        assert!(
            out.status.success(),
            "CNI {command}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let result: Value = serde_json::from_str(&cni_run("ADD")).expect("a CNI result");
    let ip = result["ips"][0]["address"]
        .as_str()
        .expect("an address")
        .to_string();
    let ip: Ipv4Addr = ip
        .split('/')
        .next()
        .and_then(|s| s.parse().ok())
        .expect("IPv4");
    let ctr_path = Path::new("/run/netns").join(&ctr);
    assert!(pings(&ctr_path, a), "container on host 2 -> a on host 1");
    assert_eq!(
        common::reach(&w.sb_path("a"), 80, &ctr_path, SocketAddrV4::new(a, 80)),
        Some(ip),
        "a sees the container's own address"
    );
    cni_run("DEL");
    world::sh(&["ip", "netns", "del", &ctr]);
    w.ok(1, &["rm", &w.sb("a")]);
    remove_overlay(&w, &[1, 2]);
}

#[test]
fn the_iptables_backend_keeps_the_same_guarantees() {
    let w = cluster("ovipt", 2, 2, &["--firewall", "iptables"]);
    let a = sandbox(&w, 1, "a", &[]);
    let b = sandbox(&w, 2, "b", &[]);
    let (pa, pb) = (w.sb_path("a"), w.sb_path("b"));
    assert!(pings(&pa, b), "a -> b");
    assert_eq!(
        common::reach(&pb, 80, &pa, SocketAddrV4::new(b, 80)),
        Some(a),
        "no NAT inside"
    );
    let seen = common::reach(
        &w.outside_path(),
        8000,
        &pb,
        SocketAddrV4::new(OUTSIDE_IP, 8000),
    );
    assert_eq!(seen, Some(w.host_ip(2)), "masquerade leaving the cluster");
    let rules = in_ns(&w.host_path(1), &["iptables-save"]);
    assert!(
        rules.contains("NSNET-INPUT") && rules.contains("--dport 4789 -j DROP"),
        "{rules}"
    );
    // A forged VXLAN packet from a non-member never reaches a; from a member it does.
    let vtep = world::mac_of(&w.host_path(1), "nsvx1");
    let frame = icmp_echo_frame(vtep, [0x0e, 0x6e, 9, 9, 9, 9], b, a);
    let out = w.outside_path();
    assert_vxlan_dropped(
        &out,
        w.host_ip(1),
        &frame,
        &pa,
        "iptables: from a non-member",
    );
    // Nor from a sandbox, whose packets would leave masqueraded to its host's (a member's) address.
    assert_vxlan_dropped(&pb, w.host_ip(1), &frame, &pa, "iptables: from a sandbox");
    assert_vxlan_delivered(&w.host_path(2), w.host_ip(1), &frame, &pa);
    w.ok(1, &["rm", &w.sb("a")]);
    w.ok(2, &["rm", &w.sb("b")]);
    remove_overlay(&w, &[1, 2]);
    for i in [1, 2] {
        let left = in_ns(&w.host_path(i), &["iptables-save"]);
        assert!(
            !left.contains("NSNET"),
            "host {i} keeps nsnet's chains:\n{left}"
        );
    }
}

#[test]
fn a_sandbox_cannot_inject_vxlan_through_its_own_host_s_membership() {
    // A hostile sandbox on host 1 sends VXLAN to host 2: masqueraded, it would come from host 1's underlay
    // address, a member's, and carry any inner frame it likes (another sandbox's address as the source).
    let w = cluster("ovinj", 2, 2, &[]);
    let a = sandbox(&w, 1, "a", &[]);
    let b = sandbox(&w, 2, "b", &[]);
    let pb = w.sb_path("b");
    let vtep2 = world::mac_of(&w.host_path(2), "nsvx1");
    let spoofed = Ipv4Addr::from(u32::from(a) + 7);
    let frame = icmp_echo_frame(vtep2, [0x0e, 0x6e, 7, 7, 7, 7], spoofed, b);
    let pa = w.sb_path("a");
    assert_vxlan_dropped(
        &pa,
        w.host_ip(2),
        &frame,
        &pb,
        "from a sandbox to another host",
    );
    // Nor through its gateway to its own host's VXLAN socket.
    assert_vxlan_dropped(
        &pa,
        w.host_ip(1),
        &frame,
        &pb,
        "from a sandbox to its own host",
    );
    // The host itself (a member) still can: the test sees a delivery when there is one.
    assert_vxlan_delivered(&w.host_path(1), w.host_ip(2), &frame, &pb);
    w.ok(1, &["rm", &w.sb("a")]);
    w.ok(2, &["rm", &w.sb("b")]);
    remove_overlay(&w, &[1, 2]);
}

/// New connections between sandboxes on different hosts cross a host firewall whose forward policy is drop
/// (Docker sets one), both ways: nsnet finds the chain when the agent joins and lets its network's bridge and
/// VXLAN device through. The host's firewall is left as it was when the network goes.
fn across_a_host_firewall(test: &str, firewall: &str) {
    let w = World::new(test, 2);
    make_overlay(&w, &[]);
    for i in 1..=2 {
        let h = w.host_path(i);
        if firewall == "iptables" {
            in_ns(&h, &["iptables", "-P", "FORWARD", "DROP"]);
        } else {
            in_ns(&h, &["nft", "add", "table", "ip", "hostfw"]);
            in_ns(
                &h,
                &[
                    "nft",
                    "add",
                    "chain",
                    "ip",
                    "hostfw",
                    "forward",
                    "{ type filter hook forward priority 0; policy drop; }",
                ],
            );
        }
        w.start_agent(i, &["--lease-ttl", TTL, "--firewall", firewall]);
    }
    wait_joined(&w, &[1, 2], 1);

    let a = sandbox(&w, 1, "a", &[]);
    let b = sandbox(&w, 2, "b", &["-p", "8080:80"]);
    let (pa, pb) = (w.sb_path("a"), w.sb_path("b"));
    assert_eq!(
        common::reach(&pb, 80, &pa, SocketAddrV4::new(b, 80)),
        Some(a),
        "a -> b"
    );
    assert_eq!(
        common::reach(&pa, 81, &pb, SocketAddrV4::new(a, 81)),
        Some(b),
        "b -> a"
    );
    assert!(pings(&pa, b) && pings(&pb, a), "ping both ways");
    assert!(pings(&w.host_path(1), b), "host 1 -> b");
    assert_eq!(
        common::reach(&pb, 80, &pa, SocketAddrV4::new(w.host_ip(2), 8080)),
        Some(w.host_ip(1)),
        "a -> host 2:8080 -> b"
    );
    // Through host 2's gateway address (one of the cluster's): b sees the gateway, whose masquerade brings
    // the replies back to host 2 to undo the DNAT (sandbox to sandbox they would take the fast path, which
    // does no NAT).
    let gw2: Ipv4Addr = local(&w, 2).expect("joined")["gateway"]
        .as_str()
        .and_then(|g| g.parse().ok())
        .expect("a gateway");
    assert_eq!(
        common::reach(&pb, 80, &pa, SocketAddrV4::new(gw2, 8080)),
        Some(gw2),
        "a -> host 2's gateway:8080 -> b"
    );

    w.ok(1, &["rm", &w.sb("a")]);
    w.ok(2, &["rm", &w.sb("b")]);
    remove_overlay(&w, &[1, 2]);
    for i in 1..=2 {
        let rules = match firewall {
            "iptables" => in_ns(&w.host_path(i), &["iptables-save"]),
            _ => in_ns(&w.host_path(i), &["nft", "list", "table", "ip", "hostfw"]),
        };
        assert!(
            !rules.contains("nsnet") && !rules.contains("NSNET"),
            "host {i}:\n{rules}"
        );
    }
}

#[test]
fn cross_host_connections_cross_a_host_firewall_with_policy_drop_nftables() {
    across_a_host_firewall("ovdrpn", "nftables");
}

#[test]
fn cross_host_connections_cross_a_host_firewall_with_policy_drop_iptables() {
    across_a_host_firewall("ovdrpi", "iptables");
}

/// `Ip: ForwDatagrams` of the namespace at `ns`: the packets its kernel routed on.
fn forwarded_datagrams(ns: &Path) -> u64 {
    world::snmp(ns, "Ip", "ForwDatagrams")
}

/// Sandbox-to-sandbox traffic across hosts takes the fast path on both: the sender's host hands it to the
/// VXLAN device, the receiver's hands it from the device to the sandbox, and neither kernel routes it (or
/// runs netfilter on it). What the fast path must not take, it leaves to the slow path, whose firewall
/// still decides: here a member's decapsulated frame from outside the cluster's blocks.
#[test]
fn cross_host_traffic_between_sandboxes_is_never_routed_by_either_host() {
    never_routed("ovfast", &[]);
}

/// The same on host-gw: out by the underlay straight from the sender's bridge port, and in from the
/// underlay straight into the sandbox (the fast path's own filter on eth0's ingress).
#[test]
fn cross_host_traffic_on_host_gw_is_never_routed_by_either_host() {
    never_routed("ovfasthg", &["--backend", "host-gw"]);
}

fn never_routed(test: &str, overlay_extra: &[&str]) {
    let w = cluster_of(test, 2, 2, &[], overlay_extra);
    let hostgw = !overlay_extra.is_empty();
    let a = sandbox(&w, 1, "a", &[]);
    let b = sandbox(&w, 2, "b", &[]);
    let (pa, pb) = (w.sb_path("a"), w.sb_path("b"));
    let (h1, h2) = (w.host_path(1), w.host_path(2));
    assert!(
        pings(&pa, b),
        "a -> b (and the gateways' neighbours learned)"
    );
    let before = (forwarded_datagrams(&h1), forwarded_datagrams(&h2));
    let ping = try_in_ns(
        &pa,
        &["ping", "-c", "30", "-i", "0.01", "-W", "1", &b.to_string()],
    );
    assert!(ping.status.success(), "30 pings a -> b");
    assert_eq!(
        common::reach(&pb, 80, &pa, SocketAddrV4::new(b, 80)),
        Some(a)
    );
    assert_eq!(
        common::reach(&pa, 81, &pb, SocketAddrV4::new(a, 81)),
        Some(b)
    );
    let routed = (
        forwarded_datagrams(&h1) - before.0,
        forwarded_datagrams(&h2) - before.1,
    );
    assert!(
        routed.0 < 5 && routed.1 < 5,
        "60 echo packets and two TCP exchanges, routed {routed:?} times by hosts 1 and 2"
    );
    // The counter counts: traffic leaving the cluster is routed (and masqueraded) by host 1.
    let before = forwarded_datagrams(&h1);
    assert!(pings(&pa, OUTSIDE_IP), "a -> outside");
    assert!(forwarded_datagrams(&h1) > before, "routed to the outside");

    if hostgw {
        // The hosts' own traffic on the underlay still reaches them; host 2's to a leaves from its gateway
        // address (of its block), so it is a remote block's frame for host 1's fast path too.
        assert!(pings(&h2, w.host_ip(1)), "host 2 -> host 1");
        assert!(pings(&h2, a), "host 2 -> a");
    } else {
        // A member's VXLAN frame whose inner source is outside the cluster's blocks (the outside peer's
        // address) is not the fast path's to deliver, and the slow path's firewall drops it.
        let vtep = world::mac_of(&h1, "nsvx1");
        let frame = icmp_echo_frame(vtep, [0x0e, 0x6e, 1, 2, 3, 5], OUTSIDE_IP, a);
        assert_vxlan_dropped(
            &h2,
            w.host_ip(1),
            &frame,
            &pa,
            "a member, from outside the blocks",
        );
    }

    w.ok(1, &["rm", &w.sb("a")]);
    w.ok(2, &["rm", &w.sb("b")]);
    remove_overlay(&w, &[1, 2]);
}

/// `tc filter show dev eth0 ingress` on host `i`.
fn eth0_filters(w: &World, i: usize) -> String {
    lines(w, i, &["tc", "filter", "show", "dev", "eth0", "ingress"]).join("\n")
}

/// host-gw's filter on the underlay is one among others: another tool's ingress qdisc and filter on host
/// 1's eth0 are there before the agent joins and after the network goes, untouched through a sync that puts
/// back nsnet's filter deleted by hand, and through `gc`; on host 2, which had no qdisc, nsnet's own goes
/// with the network.
#[test]
fn host_gw_leaves_another_tool_s_filter_and_qdisc_on_the_underlay_alone() {
    let w = World::new("hgwtc", 2);
    make_overlay(&w, &["--backend", "host-gw"]);
    let h1 = w.host_path(1);
    in_ns(&h1, &["tc", "qdisc", "add", "dev", "eth0", "ingress"]);
    // Classic bpf that matches nothing (nsnet's filter, later in order, still runs).
    in_ns(
        &h1,
        &[
            "tc",
            "filter",
            "add",
            "dev",
            "eth0",
            "ingress",
            "pref",
            "7",
            "protocol",
            "all",
            "bpf",
            "bytecode",
            "1,6 0 0 0,",
        ],
    );
    let foreign = eth0_filters(&w, 1);
    assert!(foreign.contains("pref 7 bpf"), "{foreign}");
    for i in 1..=2 {
        w.start_agent(i, &["--lease-ttl", TTL]);
    }
    wait_joined(&w, &[1, 2], 1);
    for i in 1..=2 {
        let f = eth0_filters(&w, i);
        assert!(f.contains("nsnet_fastpath"), "host {i}: {f}");
        assert!(!f.contains("block"), "host {i}: eth0 bound to a block: {f}");
    }
    assert!(
        eth0_filters(&w, 1).contains(&foreign),
        "{}",
        eth0_filters(&w, 1)
    );
    let owned = |i: usize| local(&w, i).expect("joined")["overlay"]["underlay_qdisc"] == true;
    assert!(!owned(1), "host 1's qdisc is the other tool's");
    assert!(owned(2), "host 2's qdisc is nsnet's");
    let a = sandbox(&w, 1, "a", &[]);
    let b = sandbox(&w, 2, "b", &[]);
    assert!(
        pings(&w.sb_path("a"), b) && pings(&w.sb_path("b"), a),
        "a <-> b"
    );

    // nsnet's filter deleted by hand: the agent puts it back, and only it.
    for i in 1..=2 {
        let ours = eth0_filters(&w, i);
        let pref = ours
            .lines()
            .find(|l| l.contains("nsnet_fastpath"))
            .and_then(|l| l.split("pref ").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .expect("nsnet's filter's pref")
            .to_string();
        in_ns(
            &w.host_path(i),
            &[
                "tc", "filter", "del", "dev", "eth0", "ingress", "pref", &pref,
            ],
        );
        // (`tc filter del` succeeded: it was there and went. Not checked again here: the agent may put it back
        // before a second look, which is what is tested next.)
        assert!(
            wait_until(CONVERGE, || eth0_filters(&w, i).contains("nsnet_fastpath")),
            "host {i}: the agent did not put the filter back:\n{}",
            w.agent_log(i)
        );
    }
    assert!(eth0_filters(&w, 1).contains(&foreign));
    for i in 1..=2 {
        w.ok(i, &["gc"]);
        assert!(
            eth0_filters(&w, i).contains("nsnet_fastpath"),
            "host {i} after gc"
        );
    }
    assert!(eth0_filters(&w, 1).contains(&foreign));
    assert!(
        pings(&w.sb_path("a"), b) && pings(&w.sb_path("b"), a),
        "a <-> b"
    );

    w.ok(1, &["rm", &w.sb("a")]);
    w.ok(2, &["rm", &w.sb("b")]);
    remove_overlay(&w, &[1, 2]);
    assert_eq!(eth0_filters(&w, 1), foreign, "host 1's other filter");
    assert_eq!(
        lines(&w, 1, &["tc", "qdisc", "show", "dev", "eth0", "ingress"]).len(),
        1,
        "host 1's other qdisc"
    );
    assert_eq!(eth0_filters(&w, 2), "", "host 2");
    assert_eq!(
        lines(&w, 2, &["tc", "qdisc", "show", "dev", "eth0", "ingress"]),
        Vec::<String>::new(),
        "host 2's qdisc, nsnet's, went with the network"
    );
    for i in 1..=2 {
        w.ok(i, &["gc"]);
    }
    assert_eq!(
        eth0_filters(&w, 1),
        foreign,
        "host 1's other filter after gc"
    );
}
