//! The fast path on the real kernel: sandbox-to-sandbox IPv4 goes veth to veth (the bridge port of the
//! receiver never transmits it), still only for the sandbox's own addresses; `--fast-path=false` sends it all
//! through the bridge; and removal leaves nothing behind.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use common::{sh, TestHost};
use nsnet_core::kernel::fastpath::block_of;
use nsnet_core::probe;
use serde_json::Value;

fn address(h: &TestHost, sb: &str) -> Ipv4Addr {
    h.inspect(&h.sb(sb))["endpoints"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .expect("address")
}

fn host_port(h: &TestHost, sb: &str) -> String {
    h.inspect(&h.sb(sb))["endpoints"][0]["host_interface"]
        .as_str()
        .expect("host interface")
        .to_string()
}

/// (packets the host end of `sb`'s veth transmitted, packets `sb`'s eth0 received).
fn counters(h: &TestHost, sb: &str) -> (u64, u64) {
    let packets = |text: &str, dir: &str| -> u64 {
        let v: Value = serde_json::from_str(text).expect("ip -s -j");
        v[0]["stats64"][dir]["packets"].as_u64().expect("packets")
    };
    let port = host_port(h, sb);
    let tx = packets(
        &h.in_host(&["ip", "-s", "-j", "link", "show", "dev", &port]),
        "tx",
    );
    let rx = packets(
        &sh(&[
            "ip",
            "-n",
            &h.sb(sb),
            "-s",
            "-j",
            "link",
            "show",
            "dev",
            "eth0",
        ]),
        "rx",
    );
    (tx, rx)
}

/// 200 pings from `from` to `to` (all must come back); returns how many packets `to`'s bridge port
/// transmitted meanwhile and how many its eth0 received.
fn pings_through(h: &TestHost, from: &str, to: &str) -> (u64, u64) {
    let before = counters(h, to);
    let dst = address(h, to).to_string();
    let ns = format!("--net={}", h.sb_path(from).display());
    let out = sh(&[
        "nsenter", &ns, "ping", "-q", "-c", "200", "-i", "0.002", "-W", "1", &dst,
    ]);
    assert!(out.contains("200 received"), "{from} -> {to}: {out}");
    let after = counters(h, to);
    (after.0 - before.0, after.1 - before.1)
}

#[test]
fn sandbox_traffic_skips_the_bridge_only_where_the_bridge_would_forward_it() {
    let h = TestHost::new("fastpath");
    let empty = h.snapshot();
    h.ok(&["network", "create", "fast", "--subnet", "172.16.20.0/24"]);
    h.ok(&[
        "network",
        "create",
        "slow",
        "--subnet",
        "172.16.21.0/24",
        "--fast-path=false",
    ]);
    let (a, b, c, d) = ("a", "b", "c", "d");
    for (sb, net) in [(a, "fast"), (b, "fast"), (c, "slow"), (d, "slow")] {
        h.ok(&["create", &h.sb(sb), "--network", net]);
    }
    let fast = h.fast_path();
    let entries: Vec<&String> = fast.iter().filter(|l| l.contains("fast path:")).collect();
    assert_eq!(
        entries.len(),
        2,
        "a and b, nobody on the slow network: {fast:#?}"
    );
    assert!(
        fast.contains(&format!(
            "nsbr-fast tc ingress: nsnet_fastpath (block {})",
            block_of("nsbr-fast")
        )),
        "{fast:#?}"
    );
    assert!(
        !fast.iter().any(|l| l.starts_with("nsbr-slow")),
        "{fast:#?}"
    );
    assert!(
        h.ok(&["network", "inspect", "slow"])
            .contains("fast path:  false"),
        "inspect shows the choice"
    );

    // The frames reach b without its bridge port sending them (a few ARP frames at most); over the slow
    // network every one crosses the bridge.
    let (port_tx, rx) = pings_through(&h, a, b);
    assert!(rx >= 200, "b received {rx}");
    assert!(port_tx < 20, "fast: b's bridge port sent {port_tx} of {rx}");
    let (port_tx, rx) = pings_through(&h, c, d);
    assert!(
        port_tx >= 200 && rx >= 200,
        "slow: d's port sent {port_tx}, d got {rx}"
    );

    // TCP and UDP both ways.
    let (pa, pb) = (h.sb_path(a), h.sb_path(b));
    for (server, client, to) in [(&pb, &pa, address(&h, b)), (&pa, &pb, address(&h, a))] {
        let srv =
            probe::tcp_server(server, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 7000)).unwrap();
        probe::tcp_hello(client, SocketAddrV4::new(to, 7000)).expect("tcp");
        assert!(srv.wait().is_ok());
        let srv =
            probe::udp_server(server, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 7001)).unwrap();
        probe::udp_hello(client, SocketAddrV4::new(to, 7001)).expect("udp");
        assert!(srv.wait().is_ok());
    }

    // A forged source address takes the bridge, whose anti-spoofing rules drop it.
    let ns = format!("--net={}", pa.display());
    sh(&[
        "nsenter",
        &ns,
        "ip",
        "addr",
        "add",
        "172.16.20.99/24",
        "dev",
        "eth0",
    ]);
    let forged = std::process::Command::new("nsenter")
        .args([&ns, "ping", "-c", "2", "-W", "1", "-I", "172.16.20.99"])
        .arg(address(&h, b).to_string())
        .output()
        .expect("ping");
    assert!(!forged.status.success(), "a forged source got through");
    sh(&[
        "nsenter",
        &ns,
        "ip",
        "addr",
        "del",
        "172.16.20.99/24",
        "dev",
        "eth0",
    ]);

    // Removing b takes its entry away; a can no longer reach its address.
    let b_ip = address(&h, b);
    h.ok(&["rm", &h.sb(b)]);
    let fast = h.fast_path();
    assert!(
        !fast.iter().any(|l| l.contains(&b_ip.to_string())),
        "{fast:#?}"
    );
    // rm unmounted b's namespace; the kernel destroys it (and its veth pair) in the background.
    h.settle();
    assert!(
        !probe::ping(&pa, b_ip).expect("ping"),
        "a still reaches b's address"
    );

    for sb in [a, c, d] {
        h.ok(&["rm", &h.sb(sb)]);
    }
    h.ok(&["network", "rm", "fast"]);
    h.ok(&["network", "rm", "slow"]);
    assert_eq!(h.snapshot(), empty);
}
