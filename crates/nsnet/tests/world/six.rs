//! What the dual-stack overlay tests (`overlay6*.rs`) share: the cluster they make, and the probes they
//! send and count.

use std::net::Ipv6Addr;
use std::path::Path;
use std::time::Duration;

use nsnet_core::probe;
use serde_json::Value;

use super::common::icmpv6_frame;
use super::{in_ns, try_in_ns, wait_until, World};

pub const NET: &str = "pods";
pub const CLUSTER: &str = "10.244.0.0/16";
pub const CLUSTER6: &str = "fd00:10:244::/56";
pub const TTL: &str = "3";
pub const CONVERGE: Duration = Duration::from_secs(15);

/// A dual-stack world of `hosts` hosts, the overlay network made with `extra`, every host's agent run with
/// `agent_extra` (`--firewall iptables`) and joined.
pub fn cluster(test: &str, hosts: usize, extra: &[&str], agent_extra: &[&str]) -> World {
    let w = World::new6(test, hosts);
    let url = w.etcd_url();
    let mut args = vec![
        "network", "create", NET, "--driver", "overlay", "--subnet", CLUSTER, "--subnet", CLUSTER6,
        "--etcd", &url,
    ];
    args.extend_from_slice(extra);
    w.ok(1, &args);
    let mut agent = vec!["--lease-ttl", TTL];
    agent.extend_from_slice(agent_extra);
    for i in 1..=hosts {
        w.start_agent(i, &agent);
    }
    for i in 1..=hosts {
        let ok = wait_until(CONVERGE, || {
            local(&w, i)
                .is_some_and(|v| v["overlay"]["peers"].as_array().map(Vec::len) == Some(hosts - 1))
        });
        assert!(ok, "host {i} did not join:\n{}", w.agent_log(i));
    }
    w
}

/// Host `i`'s record of the overlay network, once its agent made it.
pub fn local(w: &World, i: usize) -> Option<Value> {
    let out = w.nsnet(i, &["network", "inspect", NET, "--json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("inspect --json is JSON"))
}

/// Create sandbox `name` on host `i` on network `net`; returns its IPv6 address.
pub fn sandbox_on(w: &World, i: usize, name: &str, net: &str) -> Ipv6Addr {
    w.ok(i, &["create", &w.sb(name), "--network", net]);
    let v: Value =
        serde_json::from_str(&w.ok(i, &["inspect", &w.sb(name), "--json"])).expect("JSON");
    v["endpoints"][0]["ipv6"]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .expect("an IPv6 address")
}

pub fn sandbox(w: &World, i: usize, name: &str) -> Ipv6Addr {
    sandbox_on(w, i, name, NET)
}

pub fn pings6(from: &Path, to: Ipv6Addr) -> bool {
    probe::ping6(from, to).unwrap_or(false)
}

/// The lines of `cmd` in host `i`'s namespace.
pub fn lines(w: &World, i: usize, cmd: &[&str]) -> Vec<String> {
    let out = try_in_ns(&w.host_path(i), cmd);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// A counter of `/proc/net/snmp6` in the namespace at `ns` (e.g. `Icmp6InEchos`).
pub fn snmp6(ns: &Path, field: &str) -> u64 {
    in_ns(ns, &["cat", "/proc/net/snmp6"])
        .lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(field)).then(|| it.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no counter {field}"))
}

/// An ICMPv6 echo request frame.
pub fn echo6(dst_mac: [u8; 6], src_mac: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    icmpv6_frame(
        dst_mac,
        src_mac,
        src,
        dst,
        128,
        0,
        &[0, 7, 0, 1, 0xab, 0xcd],
    )
}

/// A UDP datagram (to a port nobody listens on) as an Ethernet frame, its checksum right.
pub fn udp6(dst_mac: [u8; 6], src_mac: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let mut udp = vec![0x9c, 0x40, 0x9c, 0x41, 0, 12, 0, 0, 1, 2, 3, 4];
    let sum = super::common::ipv6_checksum(17, src, dst, &udp);
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    let mut frame = dst_mac.to_vec();
    frame.extend(src_mac);
    frame.extend(0x86ddu16.to_be_bytes());
    frame.extend(super::common::ipv6_header(17, src, dst, udp.len()));
    frame.extend(udp);
    frame
}

/// `frame` with IPv6 hop limit `hops` (no header checksum in IPv6; ICMPv6's does not cover it).
pub fn with_hops(mut frame: Vec<u8>, hops: u8) -> Vec<u8> {
    frame[21] = hops;
    frame
}

/// Remove sandboxes `names` (host, name) and the overlay network; every host lets it go, with its IPv6 routes
/// and neighbours, and nsnet's tables.
pub fn teardown(w: &World, names: &[(usize, &str)]) {
    for (i, name) in names {
        w.ok(*i, &["rm", &w.sb(name)]);
    }
    w.ok(1, &["network", "rm", NET, "--etcd", &w.etcd_url()]);
    for i in 1..=w.hosts() {
        assert!(
            wait_until(CONVERGE, || local(w, i).is_none()),
            "host {i} kept its part of the network:\n{}",
            w.agent_log(i)
        );
        assert_eq!(
            lines(w, i, &["ip", "-6", "route", "show", "proto", "110"]),
            Vec::<String>::new(),
            "host {i}'s IPv6 routes"
        );
        let neigh = lines(w, i, &["ip", "-6", "neigh", "show", "nud", "permanent"]);
        assert_eq!(neigh, Vec::<String>::new(), "host {i}'s IPv6 neighbours");
        let tables = in_ns(&w.host_path(i), &["nft", "list", "tables"]);
        assert!(!tables.contains("nsnet"), "host {i} keeps {tables}");
    }
}
