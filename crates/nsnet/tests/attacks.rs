//! nsnet's guarantees attacked the way a hostile sandbox or LAN peer would: forged frames, routes the attacker
//! adds, a second state dir. Each test fails if the guarantee it attacks breaks.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use common::{reach, TestHost};
use nsnet_core::probe;
use serde_json::Value;

fn mac_of(h: &TestHost, sb: &str) -> [u8; 6] {
    let text = h.inspect(sb)["endpoints"][0]["mac"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut mac = [0u8; 6];
    for (slot, part) in mac.iter_mut().zip(text.split(':')) {
        *slot = u8::from_str_radix(part, 16).expect("a MAC from inspect");
    }
    mac
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0)))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame carrying a UDP datagram from `src` to `dst` (port 9), with the given MACs.
fn udp_frame(dst_mac: [u8; 6], src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let payload = b"forged";
    let udp_len = 8 + payload.len();
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip.extend(src.octets());
    ip.extend(dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut frame = [dst_mac, src_mac].concat();
    frame.extend([0x08, 0x00]);
    frame.extend(ip);
    frame.extend([0x30, 0x39, 0, 9]);
    frame.extend((udp_len as u16).to_be_bytes());
    frame.extend([0, 0]);
    frame.extend(payload);
    frame
}

/// A broadcast ARP reply: "`ip` is at `mac`", sent from `mac`.
fn arp_frame(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let mut frame = [[0xff; 6], mac].concat();
    frame.extend([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
    frame.extend(mac);
    frame.extend(ip.octets());
    frame.extend([0xff; 6]);
    frame.extend(ip.octets());
    frame
}

/// The bridge ports the bridge's FDB puts `mac` on.
fn fdb_ports(h: &TestHost, bridge: &str, mac: [u8; 6]) -> Vec<String> {
    let text = h.in_host(&["bridge", "-j", "fdb", "show", "br", bridge]);
    let want = mac.map(|b| format!("{b:02x}")).join(":");
    let entries: Value = serde_json::from_str(&text).expect("bridge -j fdb");
    entries
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["mac"] == want.as_str())
        .filter_map(|e| e["ifname"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn a_sandbox_cannot_take_a_neighbours_mac() {
    for backend in ["nftables", "iptables", "none"] {
        let mut h = TestHost::new("macspf");
        h.firewall = Some(backend);
        h.ok(&["network", "create", "n", "--subnet", "172.16.2.0/24"]);
        let (attacker, victim) = (h.sb("a"), h.sb("v"));
        h.ok(&["create", &attacker, "--network", "n", "--ip", "172.16.2.10"]);
        h.ok(&["create", &victim, "--network", "n", "--ip", "172.16.2.20"]);
        let victim_mac = mac_of(&h, &victim);
        let victim_port = h.inspect(&victim)["endpoints"][0]["host_interface"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let gateway_mac = [0x02, 0x6e, 172, 16, 2, 1];
        let own: Ipv4Addr = "172.16.2.10".parse().unwrap();
        // The attacker speaks with the victim's MAC: IPv4 from its own address, an ARP reply, and a frame of
        // an ether type no rule knows (IEEE local experimental).
        let mut odd = [gateway_mac, victim_mac].concat();
        odd.extend([0x88, 0xb5]);
        odd.extend([0u8; 46]);
        let frames = vec![
            udp_frame(gateway_mac, victim_mac, own, "172.16.2.1".parse().unwrap()),
            arp_frame(victim_mac, own),
            odd,
        ];
        for _ in 0..3 {
            probe::send_frames(&h.sb_path("a"), "eth0", &frames).expect("send raw frames");
        }
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            fdb_ports(&h, "nsbr-n", victim_mac),
            vec![victim_port.clone()],
            "{backend}: the bridge put the victim's MAC on another port"
        );
        // The victim's inbound traffic still reaches the victim.
        let to = SocketAddrV4::new("172.16.2.20".parse().unwrap(), 80);
        assert!(
            reach(&h.sb_path("v"), 80, &h.host_path(), to).is_some(),
            "{backend}: the host no longer reaches the victim"
        );
        h.ok(&["rm", &attacker]);
        h.ok(&["rm", &victim]);
        h.ok(&["network", "rm", "n"]);
    }
}
