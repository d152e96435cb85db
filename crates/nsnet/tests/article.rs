//! The seed article's walkthrough as one test, on the real kernel, with real packets.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use common::{TestHost, HOST_IP, LAN_IP};
use nsnet_core::probe;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("test address")
}

#[test]
fn article_walkthrough() {
    let h = TestHost::with_lan("article");
    let empty = h.snapshot();
    let (ns1, ns2, ns3) = (h.sb("netns1"), h.sb("netns2"), h.sb("netns3"));

    // Step 2: a veth pair, point to point; ping both ways.
    h.ok(&[
        "network",
        "create",
        "p2p",
        "--driver",
        "veth",
        "--subnet",
        "172.16.0.0/24",
        "--bridge",
        "veth1",
    ]);
    h.ok(&["create", &ns1, "--network", "p2p", "--ip", "172.16.0.2"]);
    assert!(
        probe::ping(&h.host_path(), ip("172.16.0.2")).expect("ping"),
        "host -> netns1"
    );
    assert!(
        probe::ping(&h.sb_path("netns1"), ip("172.16.0.1")).expect("ping"),
        "netns1 -> host"
    );
    h.ok(&["rm", &ns1]);
    h.ok(&["network", "rm", "p2p"]);
    assert_eq!(
        h.snapshot(),
        empty,
        "the point-to-point part left something behind"
    );

    // Step 3: a bridge with the gateway address, two sandboxes that ping each other.
    h.ok(&[
        "network",
        "create",
        "br0net",
        "--subnet",
        "172.16.0.0/24",
        "--gateway",
        "172.16.0.100",
        "--bridge",
        "br0",
    ]);
    h.ok(&[
        "create",
        &ns2,
        "--network",
        "br0net",
        "--ip",
        "172.16.0.102",
        "-p",
        "8088:80",
    ]);
    h.ok(&[
        "create",
        &ns3,
        "--network",
        "br0net",
        "--ip",
        "172.16.0.103",
    ]);
    assert!(
        probe::ping(&h.sb_path("netns2"), ip("172.16.0.103")).expect("ping"),
        "netns2 -> netns3"
    );
    assert!(
        probe::ping(&h.sb_path("netns3"), ip("172.16.0.102")).expect("ping"),
        "netns3 -> netns2"
    );

    let j = h.inspect(&ns2);
    assert_eq!(j["netns"], format!("/run/netns/{ns2}"));
    let ep = &j["endpoints"][0];
    assert_eq!(ep["network"], "br0net");
    assert_eq!(ep["interface"], "eth0");
    assert_eq!(ep["mac"], "02:6e:ac:10:00:66");
    assert_eq!(ep["address"], "172.16.0.102/24");
    assert_eq!(ep["gateway"], "172.16.0.100");
    assert_eq!(ep["ports"][0]["host_port"], 8088);
    assert_eq!(ep["ports"][0]["container_port"], 80);
    assert_eq!(ep["ports"][0]["protocol"], "tcp");

    // Traffic between sandboxes on the bridge keeps its source address (no masquerade inside a network).
    let server = probe::tcp_server(
        &h.sb_path("netns3"),
        SocketAddrV4::new(ip("172.16.0.103"), 7000),
    )
    .expect("listen");
    probe::tcp_hello(
        &h.sb_path("netns2"),
        SocketAddrV4::new(ip("172.16.0.103"), 7000),
    )
    .expect("connect");
    assert_eq!(
        server.wait().expect("served").ip().to_string(),
        "172.16.0.102"
    );

    // Step 4: out to the LAN through the default route, forwarding and masquerade.
    let server =
        probe::tcp_server(&h.lan_path(), SocketAddrV4::new(ip(LAN_IP), 9000)).expect("listen");
    probe::tcp_hello(&h.sb_path("netns2"), SocketAddrV4::new(ip(LAN_IP), 9000))
        .expect("netns2 reaches the LAN");
    assert_eq!(
        server.wait().expect("served").ip().to_string(),
        HOST_IP,
        "the peer sees the host's address"
    );
    assert!(
        probe::ping(&h.sb_path("netns3"), ip(LAN_IP)).expect("ping"),
        "netns3 pings the LAN peer"
    );

    // The published port: `telnet 10.0.1.48 8088` from the LAN reaches `nc -lp 80` in netns2.
    let server = probe::tcp_server(
        &h.sb_path("netns2"),
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80),
    )
    .expect("listen");
    let hello = probe::tcp_hello(&h.lan_path(), SocketAddrV4::new(ip(HOST_IP), 8088))
        .expect("published port");
    assert!(hello.starts_with(&format!("hello {LAN_IP}:")), "{hello}");
    assert_eq!(
        server.wait().expect("served").ip().to_string(),
        LAN_IP,
        "the sandbox sees the real client"
    );

    // Everything removed.
    h.ok(&["rm", &ns2]);
    h.ok(&["rm", &ns3]);
    h.ok(&["network", "rm", "br0net"]);
    assert_eq!(h.snapshot(), empty);
}
