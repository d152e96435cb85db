//! IPv6 (issue #19), behind `NSNET_IPV6=1` until it is finished: the harness's IPv6 host and LAN, and the
//! dual-stack behaviour as it lands.

mod common;

use std::net::{Ipv6Addr, SocketAddr};

use common::{TestHost, HOST_IP6, LAN_IP6};
use nsnet_core::probe;

fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("test address")
}

#[test]
fn the_ipv6_test_host_reaches_its_lan_peer_at_once() {
    let h = TestHost::with_lan6("v6lan");
    // No DAD: usable the moment they are added.
    assert!(probe::ping6(&h.host_path(), v6(LAN_IP6)).expect("ping"));
    let to = SocketAddr::new(v6(HOST_IP6).into(), 7000);
    assert_eq!(
        common::reach_any(&h.host_path(), 7000, &h.lan_path(), to),
        Some(v6(LAN_IP6).into()),
        "LAN peer -> host over IPv6, the real client address"
    );
    let snap = h.snapshot();
    assert!(
        snap.routes.iter().any(|r| r.contains("2001:db8:1::/64")),
        "the snapshot lists IPv6 routes: {:?}",
        snap.routes
    );
}

#[test]
fn icmpv6_frames_carry_a_valid_checksum() {
    let (src, dst) = (v6("fe80::1"), v6("ff02::1"));
    let frame = common::icmpv6_frame(
        [0x33, 0x33, 0, 0, 0, 1],
        [2; 6],
        src,
        dst,
        128,
        0,
        &[0, 1, 0, 1],
    );
    assert_eq!(&frame[12..14], &[0x86, 0xdd]);
    let message = &frame[14 + 40..];
    // Summed with its checksum in place, a correct message gives 0.
    assert_eq!(common::ipv6_checksum(58, src, dst, message), 0);
    assert_eq!(frame[14 + 6], 58, "next header: ICMPv6");
}
