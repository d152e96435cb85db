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

/// ICMP echo requests the namespace at `ns` has received (`Icmp: InEchos` of its /proc/net/snmp).
fn in_echos(ns: &std::path::Path) -> u64 {
    let snmp = in_ns(ns, &["cat", "/proc/net/snmp"]);
    let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp: "));
    let (names, values) = (
        icmp.next().expect("Icmp names"),
        icmp.next().expect("Icmp values"),
    );
    let at = names
        .split_whitespace()
        .position(|n| n == "InEchos")
        .expect("an InEchos counter");
    values
        .split_whitespace()
        .nth(at)
        .and_then(|v| v.parse().ok())
        .expect("a number")
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
