//! Attacks on an overlay network's cross-host fast path (and the firewall around it), with real packets in a
//! multi-host world: a hostile sandbox forging its frames, a sandbox of another network, a LAN peer that is
//! not a member, a member host sending odd VXLAN, and stale state after a sandbox or a host goes. Each test
//! asserts the attack fails, with a control that shows the same packet, sent legitimately, arrives (so a
//! test cannot pass by seeing nothing at all).

mod world;

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use world::{icmp_echo_frame, inet_checksum, send_forged_vxlan, wait_until, World, VXLAN_PORT};

const NET: &str = "pods";
const CLUSTER: &str = "10.244.0.0/16";
const TTL: &str = "3";
const CONVERGE: Duration = Duration::from_secs(15);

/// A world of `hosts` hosts, the overlay network made, every host's agent joined.
fn cluster(test: &str, hosts: usize) -> World {
    cluster_with(test, hosts, "nftables")
}

/// [`cluster`], the agents using firewall backend `firewall`.
fn cluster_with(test: &str, hosts: usize, firewall: &str) -> World {
    let w = World::new(test, hosts);
    let url = w.etcd_url();
    w.ok(
        1,
        &[
            "network", "create", NET, "--driver", "overlay", "--subnet", CLUSTER, "--etcd", &url,
        ],
    );
    for i in 1..=hosts {
        w.start_agent(i, &["--lease-ttl", TTL, "--firewall", firewall]);
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
fn local(w: &World, i: usize) -> Option<Value> {
    let out = w.nsnet(i, &["network", "inspect", NET, "--json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("inspect --json is JSON"))
}

/// A string field of host `i`'s record of the overlay network.
fn field(w: &World, i: usize, name: &str) -> String {
    local(w, i).expect("joined")[name]
        .as_str()
        .unwrap_or_else(|| panic!("no {name} in the record"))
        .to_string()
}

/// Host `i`'s gateway address and its bridge's MAC.
fn gateway(w: &World, i: usize) -> (Ipv4Addr, [u8; 6]) {
    let gw = field(w, i, "gateway").parse().expect("an address");
    let mac = world::mac_of(&w.host_path(i), &field(w, i, "interface"));
    (gw, mac)
}

/// Host `i`'s block's network address, plus `n`.
fn in_block(w: &World, i: usize, n: u32) -> Ipv4Addr {
    let block: ipnet::Ipv4Net = field(w, i, "subnet").parse().expect("a block");
    Ipv4Addr::from(u32::from(block.network()) + n)
}

/// Create sandbox `name` on host `i` on the overlay network (or on `net`); returns its address.
fn sandbox_on(w: &World, i: usize, name: &str, net: &str) -> Ipv4Addr {
    let sb = w.sb(name);
    w.ok(i, &["create", sb.as_str(), "--network", net]);
    w.address(i, name)
}

fn sandbox(w: &World, i: usize, name: &str) -> Ipv4Addr {
    sandbox_on(w, i, name, NET)
}

/// ICMP echo requests the namespace at `ns` has received (`Icmp: InEchos`).
fn echos(ns: &Path) -> u64 {
    world::snmp(ns, "Icmp", "InEchos")
}

/// Send each of `frames` as it is (an Ethernet frame without FCS) out of `ifname` in the namespace at `ns`,
/// from an AF_PACKET socket: what any process with CAP_NET_RAW there can do.
fn send_raw(ns: &Path, ifname: &str, frames: &[Vec<u8>]) {
    let fd = nsnet_core::kernel::netns::open(ns).expect("open the sender's namespace");
    nsnet_core::kernel::netns::run_in(&fd, || -> std::io::Result<()> {
        let name = std::ffi::CString::new(ifname).expect("an interface name");
        // SAFETY: `name` is a valid NUL-terminated string for the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        let index = i32::try_from(index).expect("an ifindex");
        if index == 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a plain socket(2) call; the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data; all zeros is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = u16::try_from(libc::AF_PACKET).expect("AF_PACKET fits");
        addr.sll_ifindex = index;
        addr.sll_halen = 6;
        let len = u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).expect("fits");
        for frame in frames {
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
            let to = std::ptr::from_ref(&addr).cast::<libc::sockaddr>();
            // SAFETY: the buffer and the address are valid for their lengths during the call.
            let sent = unsafe {
                libc::sendto(
                    sock.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    to,
                    len,
                )
            };
            if sent < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    })
    .expect("enter the sender's namespace")
    .unwrap_or_else(|e| panic!("send raw frames out of {ifname}: {e}"));
}

/// `frame` (an [`icmp_echo_frame`]) with IPv4 TTL `ttl`, its header checksum redone.
fn with_ttl(mut frame: Vec<u8>, ttl: u8) -> Vec<u8> {
    frame[22] = ttl;
    frame[24..26].copy_from_slice(&[0, 0]);
    let sum = inet_checksum(&frame[14..34]);
    frame[24..26].copy_from_slice(&sum.to_be_bytes());
    frame
}

/// Send `frame` five times out of `ifname` in `from`: the namespace at `victim` must receive no echo.
fn assert_raw_dropped(from: &Path, ifname: &str, frame: &[u8], victim: &Path, what: &str) {
    let before = echos(victim);
    send_raw(from, ifname, &vec![frame.to_vec(); 5]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(echos(victim), before, "delivered: {what}");
}

/// Send `frame` out of `ifname` in `from`: the namespace at `victim` must receive it (the control).
fn assert_raw_delivered(from: &Path, ifname: &str, frame: &[u8], victim: &Path, what: &str) {
    let before = echos(victim);
    send_raw(from, ifname, &[frame.to_vec()]);
    assert!(
        wait_until(Duration::from_secs(3), || echos(victim) > before),
        "the control did not arrive: {what}"
    );
}

/// Send `frame` in VXLAN (VNI 1) five times from `from` to `to`: the namespace at `victim` must receive no echo.
fn assert_vxlan_dropped(from: &Path, to: Ipv4Addr, frame: &[u8], victim: &Path, what: &str) {
    let before = echos(victim);
    for _ in 0..5 {
        send_forged_vxlan(from, to, VXLAN_PORT, 1, frame);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(echos(victim), before, "delivered: {what}");
}

fn assert_vxlan_delivered(from: &Path, to: Ipv4Addr, frame: &[u8], victim: &Path, what: &str) {
    let before = echos(victim);
    send_forged_vxlan(from, to, VXLAN_PORT, 1, frame);
    assert!(
        wait_until(Duration::from_secs(3), || echos(victim) > before),
        "the control did not arrive: {what}"
    );
}

fn pings(from: &Path, to: Ipv4Addr) -> bool {
    nsnet_core::probe::ping(from, to).unwrap_or(false)
}

/// Remove the sandboxes `names` (host, name) and the overlay network, and wait until every host let it go.
fn teardown(w: &World, names: &[(usize, &str)]) {
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
    }
}

/// A LAN peer that is no member cannot send VXLAN; nor may it use a member as a router into the overlay:
/// frames for another host's sandbox, sent to host 1's underlay MAC with a source address of the cluster
/// (host 1's sandbox, an unused address of host 1's block, an address of no block), would be routed by host 1
/// into its VXLAN device and arrive at host 2 from a member. Host 2 cannot tell them from its peers' sandboxes'.
/// Host 1 keeps the tunnel to nsnet's own networks, as it keeps its bridge: a LAN peer reaches sandboxes through
/// published ports only. (Before the VXLAN device was published-only, the frames via host 1 all arrived.)
#[test]
fn a_lan_peer_cannot_use_a_member_as_a_router_into_the_overlay() {
    lan_peer_through_a_member("atklan", "nftables");
}

#[test]
fn a_lan_peer_cannot_use_a_member_as_a_router_into_the_overlay_iptables() {
    lan_peer_through_a_member("atklai", "iptables");
}

fn lan_peer_through_a_member(test: &str, firewall: &str) {
    let w = cluster_with(test, 2, firewall);
    let a = sandbox(&w, 1, "a");
    let b = sandbox(&w, 2, "b");
    let (pa, pb) = (w.sb_path("a"), w.sb_path("b"));
    assert!(pings(&pa, b), "a -> b");
    let out = w.outside_path();
    let out_mac = world::mac_of(&out, "eth0");
    for (src, what) in [
        (a, "as host 1's sandbox"),
        (
            in_block(&w, 1, 200),
            "as an unused address of host 1's block",
        ),
        (Ipv4Addr::new(10, 244, 255, 7), "as an address of no block"),
    ] {
        let frame = icmp_echo_frame(w.host_mac(1), out_mac, src, b);
        assert_raw_dropped(
            &out,
            "eth0",
            &frame,
            &pb,
            &format!("outside via host 1 {what}"),
        );
        // Nor straight to host 2 (the published-only rule).
        let frame = icmp_echo_frame(w.host_mac(2), out_mac, src, b);
        assert_raw_dropped(
            &out,
            "eth0",
            &frame,
            &pb,
            &format!("outside via host 2 {what}"),
        );
    }
    // Control: the same inner frame from a member is delivered.
    let vtep2 = world::mac_of(&w.host_path(2), "nsvx1");
    let inner = icmp_echo_frame(vtep2, [0x0e, 0x6e, 1, 2, 3, 4], a, b);
    assert_vxlan_delivered(
        &w.host_path(1),
        w.host_ip(2),
        &inner,
        &pb,
        "from member host 1",
    );
    teardown(&w, &[(1, "a"), (2, "b")]);
}

/// A hostile sandbox on host 1 forges raw frames to its gateway's MAC, for a sandbox on host 2: with another
/// sandbox's address (with its own MAC, or with the other sandbox's), with an address of host 2's block, of no
/// block, or host 2's gateway. None may arrive: the fast path takes only a sandbox's own address, MAC and
/// port, and leaves the rest to the bridge's anti-spoofing.
#[test]
fn a_sandbox_forging_its_source_reaches_no_sandbox_on_another_host() {
    let w = cluster("atkspf", 2);
    let a1 = sandbox(&w, 1, "a1");
    let a2 = sandbox(&w, 1, "a2");
    let b = sandbox(&w, 2, "b");
    let (pa1, pa2, pb) = (w.sb_path("a1"), w.sb_path("a2"), w.sb_path("b"));
    assert!(pings(&pa1, b) && pings(&pa2, b), "a1, a2 -> b");
    let (gw1, gw1_mac) = gateway(&w, 1);
    let (gw2, _) = gateway(&w, 2);
    let (mac1, mac2) = (world::mac_of(&pa1, "eth0"), world::mac_of(&pa2, "eth0"));
    let forged = [
        (mac1, a2, "a2's address, a1's MAC"),
        (mac2, a2, "a2's address and MAC"),
        (mac1, in_block(&w, 2, 77), "an address of host 2's block"),
        (
            mac1,
            Ipv4Addr::new(10, 244, 255, 7),
            "an address of no block",
        ),
        (mac1, gw2, "host 2's gateway"),
        (mac1, gw1, "host 1's gateway"),
    ];
    for (mac, src, what) in forged {
        let frame = icmp_echo_frame(gw1_mac, mac, src, b);
        assert_raw_dropped(&pa1, "eth0", &frame, &pb, what);
    }
    // A frame for b to a2's MAC (not the gateway's) is not routed by anyone.
    let frame = icmp_echo_frame(mac2, mac1, a1, b);
    assert_raw_dropped(&pa1, "eth0", &frame, &pb, "to a2's MAC");
    // Control: a1's own frame arrives.
    let frame = icmp_echo_frame(gw1_mac, mac1, a1, b);
    assert_raw_delivered(&pa1, "eth0", &frame, &pb, "a1's own frame");
    teardown(&w, &[(1, "a1"), (1, "a2"), (2, "b")]);
}

/// A sandbox of another network on host 1 (a plain bridge network, isolated from the overlay as networks are
/// by default) reaches no sandbox of the overlay on host 2: its own network's fast path has no tunnel, and
/// the slow path's isolation covers the VXLAN device. Not by ping, nor by a frame to its gateway's MAC.
#[test]
fn a_sandbox_of_another_network_reaches_no_overlay_sandbox_on_another_host() {
    let w = cluster("atknet", 2);
    w.ok(
        1,
        &["network", "create", "plain", "--subnet", "10.99.0.0/24"],
    );
    let c = sandbox_on(&w, 1, "c", "plain");
    let a = sandbox(&w, 1, "a");
    let b = sandbox(&w, 2, "b");
    let (pa, pb, pc) = (w.sb_path("a"), w.sb_path("b"), w.sb_path("c"));
    assert!(pings(&pa, b), "a -> b");
    assert!(!pings(&pc, b), "c -> b");
    let plain: Value =
        serde_json::from_str(&w.ok(1, &["network", "inspect", "plain", "--json"])).expect("JSON");
    let plain_mac = world::mac_of(
        &w.host_path(1),
        plain["interface"].as_str().expect("a bridge"),
    );
    let mac_c = world::mac_of(&pc, "eth0");
    let frame = icmp_echo_frame(plain_mac, mac_c, c, b);
    assert_raw_dropped(&pc, "eth0", &frame, &pb, "c to its gateway, for b");
    // With a's address (a sandbox of the overlay), from c's port: the overlay's map knows no such port.
    let frame = icmp_echo_frame(plain_mac, mac_c, a, b);
    assert_raw_dropped(&pc, "eth0", &frame, &pb, "c as a, for b");
    w.ok(1, &["rm", &w.sb("c")]);
    w.ok(1, &["network", "rm", "plain"]);
    teardown(&w, &[(1, "a"), (2, "b")]);
}

/// A member host's VXLAN whose inner frame the kernel would not route (for another MAC than the VTEP's,
/// broadcast, multicast; TTL 1 or 0) is not the fast path's either: `bpf_redirect_peer` makes any frame the
/// sandbox's own, so the fast path would deliver what the slow path drops. (Before the fast path checked the
/// frame's type and TTL, every one of these arrived; a hostile member can send a well-formed frame instead, so
/// this keeps the two paths the same rather than stopping a member.)
#[test]
fn a_member_s_frames_the_kernel_would_not_route_are_not_delivered() {
    let w = cluster("atkmem", 2);
    let a = sandbox(&w, 1, "a");
    let pa = w.sb_path("a");
    let h2 = w.host_path(2);
    let vtep1 = world::mac_of(&w.host_path(1), "nsvx1");
    let mac_a = world::mac_of(&pa, "eth0");
    // From host 2's block (the fast path's), and from an address of no block (the slow path's).
    let srcs = [in_block(&w, 2, 77), Ipv4Addr::new(10, 244, 255, 7)];
    for src in srcs {
        for (mac, what) in [
            ([0x02, 0, 0, 0, 0, 0x99], "another MAC"),
            (mac_a, "the sandbox's MAC"),
            ([0xff; 6], "broadcast"),
            ([0x01, 0, 0x5e, 0, 0, 1], "multicast"),
        ] {
            let f = icmp_echo_frame(mac, [0x0e, 0x6e, 1, 2, 3, 4], src, a);
            assert_vxlan_dropped(&h2, w.host_ip(1), &f, &pa, &format!("{what} from {src}"));
        }
        for ttl in [0, 1] {
            let f = with_ttl(
                icmp_echo_frame(vtep1, [0x0e, 0x6e, 1, 2, 3, 4], src, a),
                ttl,
            );
            assert_vxlan_dropped(&h2, w.host_ip(1), &f, &pa, &format!("TTL {ttl} from {src}"));
        }
        // Control: to the VTEP's MAC, TTL 2, it arrives.
        let f = with_ttl(icmp_echo_frame(vtep1, [0x0e, 0x6e, 1, 2, 3, 4], src, a), 2);
        assert_vxlan_delivered(&h2, w.host_ip(1), &f, &pa, &format!("from {src}"));
    }
    teardown(&w, &[(1, "a")]);
}

/// The fast path does not decrement the TTL. A frame the slow path would expire on the way takes the slow
/// path: TTL 1 expires at host 1, TTL 2 at host 2 (each says so in ICMP), TTL 3 arrives. (Before, all
/// arrived: a TTL-1 frame crossed two hosts.)
#[test]
fn frames_that_would_expire_on_the_way_take_the_slow_path_and_expire() {
    let w = cluster("atkttl", 2);
    let a = sandbox(&w, 1, "a");
    let b = sandbox(&w, 2, "b");
    let (pa, pb) = (w.sb_path("a"), w.sb_path("b"));
    assert!(pings(&pa, b), "a -> b");
    let (_, gw1_mac) = gateway(&w, 1);
    let mac_a = world::mac_of(&pa, "eth0");
    let frame = icmp_echo_frame(gw1_mac, mac_a, a, b);
    let expired = |i: usize| world::snmp(&w.host_path(i), "Icmp", "OutTimeExcds");
    for (ttl, host) in [(0, 1), (1, 1), (2, 2)] {
        let before = expired(host);
        assert_raw_dropped(
            &pa,
            "eth0",
            &with_ttl(frame.clone(), ttl),
            &pb,
            &format!("TTL {ttl}"),
        );
        assert!(
            expired(host) > before,
            "TTL {ttl}: host {host} sent no time exceeded"
        );
    }
    assert_raw_delivered(&pa, "eth0", &with_ttl(frame, 3), &pb, "TTL 3");
    teardown(&w, &[(1, "a"), (2, "b")]);
}

/// Stale state on the receiving host: a sandbox removed, its frames reach no other sandbox; its address taken
/// by a new sandbox, they reach the new one (the map follows). Then the receiving host is lost: host 1
/// withdraws its block, and a's frames for it go nowhere, on either path, until it comes back.
#[test]
fn a_removed_sandbox_or_a_lost_host_gets_nothing_and_nobody_gets_its_frames() {
    let w = cluster("atkold", 2);
    let a = sandbox(&w, 1, "a");
    let b = sandbox(&w, 2, "b");
    let c = sandbox(&w, 2, "c");
    let (pa, pc) = (w.sb_path("a"), w.sb_path("c"));
    assert!(pings(&pa, b) && pings(&pa, c), "a -> b, c");
    let (_, gw1_mac) = gateway(&w, 1);
    let mac_a = world::mac_of(&pa, "eth0");
    let to_b = icmp_echo_frame(gw1_mac, mac_a, a, b);
    w.ok(2, &["rm", &w.sb("b")]);
    assert_raw_dropped(&pa, "eth0", &to_b, &pc, "b's frames, b gone, to c");
    assert_raw_dropped(
        &pa,
        "eth0",
        &to_b,
        &w.host_path(2),
        "b's frames, b gone, to host 2",
    );
    let b2 = w.sb("b2");
    w.ok(
        2,
        &["create", &b2, "--network", NET, "--ip", &b.to_string()],
    );
    let pb2 = w.sb_path("b2");
    assert_raw_delivered(&pa, "eth0", &to_b, &pb2, "to b's address, now b2's");
    assert_raw_dropped(&pa, "eth0", &to_b, &pc, "b2's frames, to c");

    // Host 2 lost (its agent killed: it keeps its sandboxes and tunnel, host 1 withdraws its block).
    w.kill_agent(2, world::Signal::SIGKILL);
    assert!(
        wait_until(CONVERGE, || local(&w, 1).is_some_and(|v| {
            v["overlay"]["peers"].as_array().map(Vec::len) == Some(0)
        })),
        "host 1 did not withdraw host 2:\n{}",
        w.agent_log(1)
    );
    assert_raw_dropped(&pa, "eth0", &to_b, &pb2, "to a lost host's sandbox");
    assert!(!pings(&pa, c), "a -> c, host 2 lost");
    // Host 2 back: its block is host 1's peer again, and the frames arrive.
    w.start_agent(2, &["--lease-ttl", TTL]);
    for i in [1, 2] {
        assert!(
            wait_until(CONVERGE, || local(&w, i).is_some_and(|v| {
                v["overlay"]["peers"].as_array().map(Vec::len) == Some(1)
            })),
            "host {i} did not rejoin:\n{}",
            w.agent_log(i)
        );
    }
    assert!(
        wait_until(CONVERGE, || pings(&pa, c)),
        "a -> c, host 2 back"
    );
    assert_raw_delivered(&pa, "eth0", &to_b, &pb2, "to b2, host 2 back");
    teardown(&w, &[(1, "a"), (2, "b2"), (2, "c")]);
}

/// [`cluster`] on the host-gw backend.
fn cluster_host_gw(test: &str, hosts: usize) -> World {
    let w = World::new(test, hosts);
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
            "--backend",
            "host-gw",
            "--etcd",
            &url,
        ],
    );
    for i in 1..=hosts {
        w.start_agent(i, &["--lease-ttl", TTL]);
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

/// The preference of nsnet's fast path filter on host `i`'s eth0, if it has one there.
fn underlay_filter_pref(w: &World, i: usize) -> Option<String> {
    let out = world::in_ns(
        &w.host_path(i),
        &["tc", "filter", "show", "dev", "eth0", "ingress"],
    );
    out.lines()
        .find(|l| l.contains("nsnet_fastpath"))
        .and_then(|l| l.split("pref ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .map(str::to_string)
}

/// Whether `frame`, sent three times out of the outside peer's eth0, reaches the namespace at `victim` (an
/// echo request counted there).
fn from_outside_arrives(w: &World, frame: &[u8], victim: &Path) -> bool {
    let before = echos(victim);
    send_raw(&w.outside_path(), "eth0", &vec![frame.to_vec(); 3]);
    wait_until(Duration::from_millis(1500), || echos(victim) > before)
}

/// host-gw's fast path on the receiving host delivers exactly what its slow path (routing and the firewall)
/// would: a LAN peer that is no member sends raw frames onto the underlay, and each gets the same verdict
/// with nsnet's filter on host 2's eth0 as without it (host 2's agent stopped and the filter deleted, then
/// the agent restarted, which puts it back). host-gw trusts the L2 segment, on either path: a LAN peer that
/// forges a remote block's source reaches a sandbox (the control: it arrives, on the fast path without
/// host 2 routing it); to another MAC, broadcast, TTL 1, from outside the remote blocks, for what is not a
/// sandbox, it is the slow path's call either way.
#[test]
fn on_host_gw_the_receiving_fast_path_gives_every_frame_the_slow_path_s_verdict() {
    let w = cluster_host_gw("atkhgw", 2);
    let a = sandbox(&w, 1, "a");
    let b = sandbox(&w, 2, "b");
    let (pa, pb, h2) = (w.sb_path("a"), w.sb_path("b"), w.host_path(2));
    assert!(pings(&pa, b) && pings(&pb, a), "a <-> b");
    let (gw2, _) = gateway(&w, 2);
    let out_mac = world::mac_of(&w.outside_path(), "eth0");
    let to2 = w.host_mac(2);
    let cases: Vec<(Vec<u8>, &Path, &str)> = vec![
        (
            icmp_echo_frame(to2, out_mac, a, b),
            &pb,
            "from host 1's sandbox's address",
        ),
        (
            icmp_echo_frame(to2, out_mac, in_block(&w, 1, 200), b),
            &pb,
            "from an unused address of host 1's block",
        ),
        (
            icmp_echo_frame(to2, out_mac, Ipv4Addr::new(10, 244, 255, 7), b),
            &pb,
            "from an address of no block",
        ),
        (
            icmp_echo_frame(to2, out_mac, in_block(&w, 2, 77), b),
            &pb,
            "from an address of host 2's own block",
        ),
        (
            icmp_echo_frame([0x02, 0, 0, 0, 0, 0x99], out_mac, a, b),
            &pb,
            "to another MAC",
        ),
        (icmp_echo_frame([0xff; 6], out_mac, a, b), &pb, "broadcast"),
        (
            icmp_echo_frame([0x01, 0, 0x5e, 0, 0, 1], out_mac, a, b),
            &pb,
            "multicast",
        ),
        (
            with_ttl(icmp_echo_frame(to2, out_mac, a, b), 0),
            &pb,
            "TTL 0",
        ),
        (
            with_ttl(icmp_echo_frame(to2, out_mac, a, b), 1),
            &pb,
            "TTL 1",
        ),
        (
            with_ttl(icmp_echo_frame(to2, out_mac, a, b), 2),
            &pb,
            "TTL 2",
        ),
        (
            icmp_echo_frame(to2, out_mac, a, gw2),
            &h2,
            "for host 2's gateway",
        ),
        (
            icmp_echo_frame(to2, out_mac, a, w.host_ip(2)),
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
    let routed = || world::snmp(&h2, "Ip", "ForwDatagrams");

    // The fast path: the first frame arrives and host 2 does not route it.
    let pref = underlay_filter_pref(&w, 2).expect("nsnet's filter on host 2's eth0");
    let before = routed();
    assert!(from_outside_arrives(&w, &cases[0].0, &pb), "the control");
    assert!(routed() - before < 3, "the fast path took it");
    let fast = verdicts(&w);

    // The slow path: host 2's agent stopped, nsnet's filter (and only it) deleted.
    w.kill_agent(2, world::Signal::SIGKILL);
    world::in_ns(
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
    // What the slow path does with them, for the record: host-gw trusts its L2 segment.
    let arrived: Vec<&str> = cases
        .iter()
        .zip(&slow)
        .filter(|(_, v)| **v)
        .map(|((_, _, what), _)| *what)
        .collect();
    eprintln!("arrived on both paths: {arrived:?}");
    for want in [
        "from host 1's sandbox's address",
        "TTL 2",
        "for host 2's gateway",
    ] {
        assert!(
            arrived.contains(&want),
            "{want} did not arrive: {arrived:?}"
        );
    }
    for never in ["to another MAC", "broadcast", "multicast", "TTL 0", "TTL 1"] {
        assert!(!arrived.contains(&never), "{never} arrived: {arrived:?}");
    }
    teardown(&w, &[(1, "a"), (2, "b")]);
}
