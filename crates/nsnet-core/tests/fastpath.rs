//! The fast path's program on the real kernel: which frames it takes and which it leaves to the bridge,
//! checked with `BPF_PROG_TEST_RUN` (the kernel runs the program on a frame and reports the verdict without
//! sending anything). Runs as root in a private network namespace of its own thread, which goes away with
//! the thread and takes the bridge, the ports, the program and the map with it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::thread;
use std::time::{Duration, Instant};

use nsnet_core::kernel::bpf::Program;
use nsnet_core::kernel::fastpath::{
    block_of, detach_underlay, on_underlay, stale_underlay_filters, underlay_filter, FastPath,
    OnUnderlay, PASSED, REDIRECTED,
};
use nsnet_core::kernel::{FilterAt, Netlink, TcHook, VethSpec};

const A_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const B_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);
const A_MAC: [u8; 6] = [2, 0x6e, 10, 77, 0, 2];
const B_MAC: [u8; 6] = [2, 0x6e, 10, 77, 0, 3];
const GW_MAC: [u8; 6] = [2, 0x6e, 10, 77, 0, 1];

/// A minimal Ethernet + IPv4 frame (UDP, no payload), padded to 60 bytes.
fn frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    ethertype: u16,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(&[0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.resize(60, 0);
    f
}

/// `f` with IPv4 TTL `ttl` (the program does not check the header's checksum).
fn with_ttl(mut f: Vec<u8>, ttl: u8) -> Vec<u8> {
    f[22] = ttl;
    f
}

fn in_private_netns<F: FnOnce() + Send + 'static>(f: F) {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let t = thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare a network namespace");
        f();
    });
    if let Err(panic) = t.join() {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn the_program_takes_exactly_the_frames_the_bridge_would_forward_port_to_port() {
    in_private_netns(|| {
        let mut nl = Netlink::open().expect("netlink");
        nl.create_bridge("br0", 1500, GW_MAC).expect("bridge");
        let bridge = nl.link_index("br0").expect("bridge index");
        let me = std::fs::File::open("/proc/thread-self/ns/net").expect("own namespace");
        for (host, peer) in [("ha", "pa"), ("hb", "pb")] {
            nl.create_veth(&VethSpec {
                host,
                peer,
                peer_netns: me.as_fd(),
                master: Some(bridge),
                mtu: 1500,
                peer_mac: None,
                host_mac: None,
            })
            .expect("veth");
        }
        let (ha, hb) = (nl.link_index("ha").unwrap(), nl.link_index("hb").unwrap());

        let fp = FastPath::ensure(&mut nl, "br0")
            .expect("create")
            .expect("this kernel runs bpf");
        fp.add(&mut nl, ha, A_IP, A_MAC).expect("add a");
        fp.add(&mut nl, hb, B_IP, B_MAC).expect("add b");
        fp.add(&mut nl, hb, B_IP, B_MAC)
            .expect("adding twice is fine");
        assert_eq!(fp.entry(B_IP).unwrap(), Some((hb, B_MAC)));

        // A later command finds the same program and map through the bridge.
        let found = FastPath::of_bridge(&mut nl, "br0")
            .unwrap()
            .expect("found on the bridge");
        assert_eq!(found.entry(A_IP).unwrap(), Some((ha, A_MAC)));

        let ok = frame(B_MAC, A_MAC, 0x0800, A_IP, B_IP);
        assert_eq!(
            found.verdict(&ok, ha).unwrap(),
            REDIRECTED,
            "a to b, as the bridge would"
        );
        assert_eq!(
            found
                .verdict(&frame(A_MAC, B_MAC, 0x0800, B_IP, A_IP), hb)
                .unwrap(),
            REDIRECTED,
            "b to a"
        );
        let passed = [
            (
                frame(B_MAC, A_MAC, 0x0800, A_IP, B_IP),
                hb,
                "arrived on the other sandbox's port",
            ),
            (
                frame(B_MAC, A_MAC, 0x0800, Ipv4Addr::new(10, 77, 0, 9), B_IP),
                ha,
                "spoofed source address",
            ),
            (
                frame(B_MAC, [2, 0, 0, 0, 0, 9], 0x0800, A_IP, B_IP),
                ha,
                "spoofed source MAC",
            ),
            (
                frame(GW_MAC, A_MAC, 0x0800, A_IP, B_IP),
                ha,
                "sent to the gateway's MAC (routed)",
            ),
            (
                frame(B_MAC, A_MAC, 0x0800, A_IP, Ipv4Addr::new(10, 77, 0, 1)),
                ha,
                "to the gateway",
            ),
            (
                frame(
                    [0xff; 6],
                    A_MAC,
                    0x0800,
                    A_IP,
                    Ipv4Addr::new(10, 77, 0, 255),
                ),
                ha,
                "broadcast",
            ),
            (frame([0xff; 6], A_MAC, 0x0806, A_IP, B_IP), ha, "ARP"),
            (ok.clone(), bridge, "on the bridge itself"),
            (frame(B_MAC, A_MAC, 0x8100, A_IP, B_IP), ha, "VLAN-tagged"),
        ];
        for (f, port, why) in &passed {
            assert_eq!(found.verdict(f, *port).unwrap(), PASSED, "{why}");
        }

        fp.remove(B_IP).expect("remove b");
        fp.remove(B_IP).expect("removing twice is fine");
        assert_eq!(fp.entry(B_IP).unwrap(), None);
        assert_eq!(found.verdict(&ok, ha).unwrap(), PASSED, "b is gone");

        // One filter, on the network's block, which the ports and the bridge run.
        let on = |nl: &mut Netlink, at| nl.bpf_filters(at).unwrap();
        let filters = on(&mut nl, FilterAt::Block(block_of("br0")));
        assert_eq!(filters.len(), 1, "one filter on the block");
        for link in [ha, bridge] {
            assert_eq!(
                on(&mut nl, FilterAt::Link(link, TcHook::Ingress)),
                filters,
                "link {link} runs the block"
            );
        }
        assert_eq!(filters[0].block, Some(block_of("br0")));
        // Deleting the bridge and its ports frees the program: nothing outlives the network.
        let id = filters[0].id;
        drop((fp, found));
        for link in ["ha", "hb", "br0"] {
            nl.delete_link(link).expect("delete");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Program::from_id(id).is_ok() {
            assert!(
                Instant::now() < deadline,
                "program {id} outlived its bridge"
            );
            thread::sleep(Duration::from_millis(20));
        }
    });
}

const A6: Ipv6Addr = Ipv6Addr::new(0xfd89, 0, 0, 0, 0, 0, 0, 2);
const B6: Ipv6Addr = Ipv6Addr::new(0xfd89, 0, 0, 0, 0, 0, 0, 3);
const GW6: Ipv6Addr = Ipv6Addr::new(0xfd89, 0, 0, 0, 0, 0, 0, 1);
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMPV6: u8 = 58;
/// IPv6's Destination Options extension header.
const DEST_OPTS: u8 = 60;

/// An Ethernet + IPv6 frame whose fixed header says `next` and is followed by `payload` (the program reads no
/// further than the fixed header, so the payload need not be a valid transport header).
fn frame6(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    next: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(54 + payload.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    let len = u16::try_from(payload.len()).expect("a short payload");
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&[next, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(payload);
    f
}

/// 20 bytes: enough to stand for a TCP header, or a UDP header and its payload.
const SEGMENT: [u8; 20] = [
    0x1b, 0x58, 0x1b, 0x59, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 2, 0xff, 0xff, 0, 0, 0, 0,
];

/// IPv6: TCP and UDP between two sandboxes take the fast path, as IPv4 does; every other frame goes to the
/// bridge, where its rules judge it: forged senders, neighbour discovery (an advertisement for a neighbour's
/// address included), anything behind an extension header (a Destination Options header in front of UDP),
/// multicast, and traffic for the gateway. The IPv6 addresses live in a map of their own, found again by its
/// key size, so an IPv4 entry never stands for an IPv6 address or the other way round.
#[test]
fn ipv6_takes_only_tcp_and_udp_between_sandboxes_and_leaves_neighbour_discovery_to_the_bridge() {
    in_private_netns(|| {
        let mut nl = Netlink::open().expect("netlink");
        nl.create_bridge("br0", 1500, GW_MAC).expect("bridge");
        let bridge = nl.link_index("br0").expect("bridge index");
        let me = std::fs::File::open("/proc/thread-self/ns/net").expect("own namespace");
        for (host, peer) in [("ha", "pa"), ("hb", "pb"), ("hc", "pc")] {
            nl.create_veth(&VethSpec {
                host,
                peer,
                peer_netns: me.as_fd(),
                master: Some(bridge),
                mtu: 1500,
                peer_mac: None,
                host_mac: None,
            })
            .expect("veth");
        }
        let index = |nl: &mut Netlink, name| nl.link_index(name).unwrap();
        let (ha, hb, hc) = (
            index(&mut nl, "ha"),
            index(&mut nl, "hb"),
            index(&mut nl, "hc"),
        );
        let fp = FastPath::ensure(&mut nl, "br0")
            .expect("create")
            .expect("this kernel runs bpf");
        assert!(fp.carries(IpAddr::V6(A6)), "a new fast path carries IPv6");
        for (port, ip4, ip6, mac) in [(ha, A_IP, A6, A_MAC), (hb, B_IP, B6, B_MAC)] {
            fp.add(&mut nl, port, ip4, mac).expect("add IPv4");
            fp.add(&mut nl, port, ip6, mac).expect("add IPv6");
        }
        fp.add(&mut nl, hb, B6, B_MAC)
            .expect("adding twice is fine");
        // c is on the network by IPv4 only.
        let c_mac = [2, 0x6e, 10, 77, 0, 4];
        fp.add(&mut nl, hc, Ipv4Addr::new(10, 77, 0, 4), c_mac)
            .expect("add c");

        // A later command finds both maps; each address is where it belongs.
        let found = FastPath::of_bridge(&mut nl, "br0").unwrap().expect("found");
        assert_eq!(found.entry(B6).unwrap(), Some((hb, B_MAC)));
        assert_eq!(found.entry(A_IP).unwrap(), Some((ha, A_MAC)));
        let mut entries: Vec<IpAddr> = found.entries().unwrap().into_iter().map(|e| e.0).collect();
        entries.sort();
        let mut want: Vec<IpAddr> = vec![
            A_IP.into(),
            B_IP.into(),
            Ipv4Addr::new(10, 77, 0, 4).into(),
            A6.into(),
            B6.into(),
        ];
        want.sort();
        assert_eq!(entries, want);

        let tcp = frame6(B_MAC, A_MAC, TCP, A6, B6, &SEGMENT);
        let udp = frame6(B_MAC, A_MAC, UDP, A6, B6, &SEGMENT[..12]);
        assert_eq!(found.verdict(&tcp, ha).unwrap(), REDIRECTED, "TCP a to b");
        assert_eq!(found.verdict(&udp, ha).unwrap(), REDIRECTED, "UDP a to b");
        let back = frame6(A_MAC, B_MAC, UDP, B6, A6, &SEGMENT[..12]);
        assert_eq!(found.verdict(&back, hb).unwrap(), REDIRECTED, "UDP b to a");
        // The smallest frame the branch reads: the fixed header and nothing after it. (A shorter one cannot be
        // tried here: the kernel refuses to test-run it. The verifier refuses a program that would read past
        // the frame, so the branch's bounds check is proven by the program loading at all.)
        let bare = frame6(B_MAC, A_MAC, UDP, A6, B6, &[]);
        assert_eq!(found.verdict(&bare, ha).unwrap(), REDIRECTED, "54 bytes");

        // A neighbour advertisement from a for b's address (as a spoofer would send it), unicast to b.
        let mut na = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
        na.extend_from_slice(&B6.octets());
        // UDP behind a Destination Options header (next header UDP, length 0, a PadN option).
        let mut opts = vec![UDP, 0, 1, 4, 0, 0, 0, 0];
        opts.extend_from_slice(&SEGMENT[..12]);
        let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
        let passed = [
            (tcp.clone(), hb, "arrived on the other sandbox's port"),
            (
                frame6(
                    B_MAC,
                    A_MAC,
                    TCP,
                    Ipv6Addr::new(0xfd89, 0, 0, 0, 0, 0, 0, 9),
                    B6,
                    &SEGMENT,
                ),
                ha,
                "forged source address",
            ),
            (
                frame6(B_MAC, A_MAC, TCP, B6, B6, &SEGMENT),
                ha,
                "a neighbour's address as source",
            ),
            (
                frame6(B_MAC, [2, 0, 0, 0, 0, 9], TCP, A6, B6, &SEGMENT),
                ha,
                "forged source MAC",
            ),
            (
                frame6(c_mac, A_MAC, TCP, A6, B6, &SEGMENT),
                ha,
                "b's address, another sandbox's MAC",
            ),
            (
                frame6(B_MAC, A_MAC, ICMPV6, A6, B6, &na),
                ha,
                "unicast neighbour advertisement",
            ),
            (
                frame6(B_MAC, A_MAC, ICMPV6, A6, B6, &[128, 0, 0, 0, 0, 1, 0, 1]),
                ha,
                "echo request (ICMPv6 is the bridge's)",
            ),
            (
                frame6(B_MAC, A_MAC, DEST_OPTS, A6, B6, &opts),
                ha,
                "a Destination Options header",
            ),
            (
                frame6(
                    [0x33, 0x33, 0, 0, 0, 1],
                    A_MAC,
                    UDP,
                    A6,
                    all_nodes,
                    &SEGMENT[..12],
                ),
                ha,
                "multicast",
            ),
            (
                frame6(GW_MAC, A_MAC, TCP, A6, GW6, &SEGMENT),
                ha,
                "to the gateway",
            ),
            (
                frame6(GW_MAC, A_MAC, TCP, A6, B6, &SEGMENT),
                ha,
                "sent to the gateway's MAC (routed)",
            ),
            (
                frame6(
                    B_MAC,
                    A_MAC,
                    TCP,
                    A6,
                    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
                    &SEGMENT,
                ),
                ha,
                "beyond the network",
            ),
            (
                frame6(
                    c_mac,
                    A_MAC,
                    TCP,
                    A6,
                    Ipv6Addr::new(0xfd89, 0, 0, 0, 0, 0, 0, 4),
                    &SEGMENT,
                ),
                ha,
                "to a sandbox with no IPv6 entry",
            ),
            (tcp.clone(), bridge, "on the bridge itself"),
        ];
        for (f, port, why) in &passed {
            assert_eq!(found.verdict(f, *port).unwrap(), PASSED, "{why}");
        }

        // An IPv4 entry does not stand for an IPv6 address: b off IPv6 only, its IPv6 frames pass.
        fp.remove(B6).expect("remove b's IPv6");
        fp.remove(B6).expect("removing twice is fine");
        assert_eq!(fp.entry(B6).unwrap(), None);
        assert_eq!(fp.entry(B_IP).unwrap(), Some((hb, B_MAC)));
        assert_eq!(found.verdict(&tcp, ha).unwrap(), PASSED, "b's IPv6 is gone");
        let ok4 = frame(B_MAC, A_MAC, 0x0800, A_IP, B_IP);
        assert_eq!(
            found.verdict(&ok4, ha).unwrap(),
            REDIRECTED,
            "b's IPv4 stays"
        );
        for link in ["ha", "hb", "hc", "br0"] {
            nl.delete_link(link).expect("delete");
        }
    });
}

/// A fast path made before nsnet carried IPv6 has no `local6`: it is still found (its maps told apart by type
/// and key size), still carries IPv4, and leaves IPv6 to its bridge: adding an IPv6 address puts nothing in a
/// map, and there is no IPv6 entry to find or miss.
#[test]
fn a_fast_path_made_before_ipv6_is_still_found_and_leaves_ipv6_to_the_bridge() {
    use nsnet_core::kernel::bpf::Map;
    use nsnet_core::kernel::fastpath::{program, Fds, NAME};
    use std::os::fd::AsRawFd;
    in_private_netns(|| {
        let mut nl = Netlink::open().expect("netlink");
        nl.create_bridge("br0", 1500, GW_MAC).expect("bridge");
        let bridge = nl.link_index("br0").expect("bridge index");
        let me = std::fs::File::open("/proc/thread-self/ns/net").expect("own namespace");
        for (host, peer) in [("ha", "pa"), ("hb", "pb")] {
            nl.create_veth(&VethSpec {
                host,
                peer,
                peer_netns: me.as_fd(),
                master: Some(bridge),
                mtu: 1500,
                peer_mac: None,
                host_mac: None,
            })
            .expect("veth");
        }
        let (ha, hb) = (nl.link_index("ha").unwrap(), nl.link_index("hb").unwrap());
        // The maps an older nsnet made: the IPv4 hash, the tunnel's array and trie. Today's program with
        // the IPv4 map in local6's place holds exactly those (the kernel lists a map once).
        let local = Map::hash(NAME, 4, 12, 1024).expect("map");
        let config = Map::array(NAME, 16, 1).expect("config");
        let remote = Map::lpm(NAME, 8, 4, 16).expect("remote");
        // (Today's program needs a `remote6`; the older one had none, which makes no difference here.)
        let remote6 = Map::lpm(NAME, 20, 16, 16).expect("remote6");
        let fds = Fds {
            local: local.fd().as_raw_fd(),
            local6: local.fd().as_raw_fd(),
            config: config.fd().as_raw_fd(),
            remote: remote.fd().as_raw_fd(),
            remote6: remote6.fd().as_raw_fd(),
        };
        let prog = Program::load_sched_cls(NAME, &program(fds, bridge).unwrap(), "Apache-2.0")
            .expect("load");
        let block = block_of("br0");
        nl.add_ingress_qdisc(bridge, block).expect("qdisc");
        nl.add_bpf_filter(FilterAt::Block(block), prog.fd().as_fd(), NAME)
            .expect("filter");
        drop((prog, local, config, remote, remote6));

        let fp = FastPath::ensure(&mut nl, "br0").unwrap().expect("found");
        assert!(fp.carries(IpAddr::V4(A_IP)) && !fp.carries(IpAddr::V6(A6)));
        for (port, ip4, ip6, mac) in [(ha, A_IP, A6, A_MAC), (hb, B_IP, B6, B_MAC)] {
            fp.add(&mut nl, port, ip4, mac).expect("add IPv4");
            fp.add(&mut nl, port, ip6, mac)
                .expect("IPv6: nothing to add");
        }
        assert_eq!(fp.entry(B6).unwrap(), None);
        fp.remove(B6).expect("IPv6: nothing to remove");
        let entries: Vec<IpAddr> = fp.entries().unwrap().into_iter().map(|e| e.0).collect();
        assert_eq!(entries.len(), 2, "{entries:?}");
        assert!(entries.iter().all(IpAddr::is_ipv4));
        // The ports joined the block all the same; IPv4 takes the fast path, IPv6 the bridge.
        assert_eq!(
            nl.bpf_filters(FilterAt::Link(hb, TcHook::Ingress)).unwrap(),
            nl.bpf_filters(FilterAt::Block(block)).unwrap()
        );
        let ok4 = frame(B_MAC, A_MAC, 0x0800, A_IP, B_IP);
        assert_eq!(fp.verdict(&ok4, ha).unwrap(), REDIRECTED);
        let tcp6 = frame6(B_MAC, A_MAC, TCP, A6, B6, &SEGMENT);
        assert_eq!(fp.verdict(&tcp6, ha).unwrap(), PASSED);
        for link in ["ha", "hb", "br0"] {
            nl.delete_link(link).expect("delete");
        }
    });
}

/// Across hosts: with a tunnel configured, the program sends a sandbox's routed frames for a remote block out
/// by the tunnel's device, and delivers what that device receives from a remote block to the sandbox. What
/// the bridge or the firewall must judge still passes: spoofed senders, blocks nobody holds, frames not sent
/// to the gateway, decapsulated frames from outside the cluster's blocks or for no sandbox here.
#[test]
fn with_a_tunnel_the_program_takes_remote_blocks_both_ways_and_nothing_else() {
    in_private_netns(|| {
        let mut nl = Netlink::open().expect("netlink");
        nl.create_bridge("br0", 1500, GW_MAC).expect("bridge");
        let bridge = nl.link_index("br0").expect("bridge index");
        let me = std::fs::File::open("/proc/thread-self/ns/net").expect("own namespace");
        // ha: a sandbox's port; vx/vy: stand-ins for the overlay device (only their index matters here).
        let vx_mac = [2, 0, 0, 0, 0, 0x44];
        for (host, peer, master, host_mac) in [
            ("ha", "pa", Some(bridge), None),
            ("vx", "vy", None, Some(vx_mac)),
        ] {
            nl.create_veth(&VethSpec {
                host,
                peer,
                peer_netns: me.as_fd(),
                master,
                mtu: 1500,
                peer_mac: None,
                host_mac,
            })
            .expect("veth");
        }
        let (ha, vx) = (nl.link_index("ha").unwrap(), nl.link_index("vx").unwrap());
        let fp = FastPath::ensure(&mut nl, "br0")
            .expect("create")
            .expect("this kernel runs bpf");
        fp.add(&mut nl, ha, A_IP, A_MAC).expect("add a");
        let far = Ipv4Addr::new(10, 78, 0, 5);
        let out = frame(GW_MAC, A_MAC, 0x0800, A_IP, far);
        // The kernel sets the frame's type against the receiving device's MAC: the tunnel takes only its own.
        let back = frame(vx_mac, [2, 0, 0, 0, 0, 0x43], 0x0800, far, A_IP);
        // No tunnel yet: as before, the bridge carries it all.
        assert_eq!(fp.verdict(&out, ha).unwrap(), PASSED, "no tunnel");
        assert_eq!(fp.verdict(&back, vx).unwrap(), PASSED, "no tunnel");

        assert!(fp
            .set_tunnel(&mut nl, vx, Some(vx), GW_MAC)
            .expect("tunnel"));
        let block: ipnet::Ipv4Net = "10.78.0.0/24".parse().unwrap();
        fp.set_remotes(&[(block, Ipv4Addr::new(10, 78, 0, 0))])
            .expect("remote");
        // A later command finds the tunnel through the bridge.
        let found = FastPath::of_bridge(&mut nl, "br0").unwrap().expect("found");
        assert_eq!(found.tunnel().unwrap(), Some((vx, vx, GW_MAC)));
        assert_eq!(
            found.remotes().unwrap(),
            [(block, Ipv4Addr::new(10, 78, 0, 0))]
        );
        // The device that delivers has joined the network's block.
        assert_eq!(
            nl.bpf_filters(FilterAt::Link(vx, TcHook::Ingress)).unwrap(),
            nl.bpf_filters(FilterAt::Block(block_of("br0"))).unwrap()
        );
        assert_eq!(found.verdict(&out, ha).unwrap(), REDIRECTED, "a -> far");
        assert_eq!(found.verdict(&back, vx).unwrap(), REDIRECTED, "far -> a");
        // The slow path routes twice on the way (TTL 3 arrives with 1), the receiving host once.
        let (out3, back2) = (with_ttl(out.clone(), 3), with_ttl(back.clone(), 2));
        assert_eq!(
            found.verdict(&out3, ha).unwrap(),
            REDIRECTED,
            "a -> far, TTL 3"
        );
        assert_eq!(
            found.verdict(&back2, vx).unwrap(),
            REDIRECTED,
            "far -> a, TTL 2"
        );
        let passed = [
            (
                frame(GW_MAC, A_MAC, 0x0800, Ipv4Addr::new(10, 77, 0, 9), far),
                ha,
                "out: spoofed source address",
            ),
            (
                frame(GW_MAC, [2, 0, 0, 0, 0, 9], 0x0800, A_IP, far),
                ha,
                "out: spoofed source MAC",
            ),
            (
                frame(B_MAC, A_MAC, 0x0800, A_IP, far),
                ha,
                "out: not sent to the gateway",
            ),
            (
                frame(GW_MAC, A_MAC, 0x0800, A_IP, Ipv4Addr::new(10, 79, 0, 5)),
                ha,
                "out: a block nobody holds",
            ),
            (frame(GW_MAC, A_MAC, 0x0806, A_IP, far), ha, "out: ARP"),
            (
                frame(GW_MAC, A_MAC, 0x0800, A_IP, far),
                bridge,
                "out: on the bridge itself",
            ),
            (
                frame(B_MAC, A_MAC, 0x0800, Ipv4Addr::new(192, 0, 2, 7), A_IP),
                vx,
                "in: from outside the remote blocks",
            ),
            (
                frame(B_MAC, A_MAC, 0x0800, far, B_IP),
                vx,
                "in: for no sandbox here",
            ),
            (
                frame(B_MAC, A_MAC, 0x0800, far, A_IP),
                ha,
                "in: a remote source on a sandbox's port",
            ),
            (
                frame([2, 0, 0, 0, 0, 0x42], A_MAC, 0x0800, far, A_IP),
                vx,
                "in: for another MAC than the device's",
            ),
            (with_ttl(out.clone(), 2), ha, "out: TTL 2"),
            (with_ttl(out.clone(), 0), ha, "out: TTL 0"),
            (with_ttl(back.clone(), 1), vx, "in: TTL 1"),
            (with_ttl(back.clone(), 0), vx, "in: TTL 0"),
            (
                frame([0xff; 6], A_MAC, 0x0800, far, A_IP),
                vx,
                "in: broadcast",
            ),
            (
                frame([0x01, 0, 0x5e, 0, 0, 1], A_MAC, 0x0800, far, A_IP),
                vx,
                "in: multicast",
            ),
        ];
        for (f, port, why) in &passed {
            assert_eq!(found.verdict(f, *port).unwrap(), PASSED, "{why}");
        }
        // The remote blocks follow the peers: one gone, its frames pass.
        found.set_remotes(&[]).expect("no remotes");
        assert_eq!(found.remotes().unwrap(), []);
        assert_eq!(found.verdict(&out, ha).unwrap(), PASSED, "block gone");
        assert_eq!(found.verdict(&back, vx).unwrap(), PASSED, "block gone");
        for link in ["ha", "vx", "br0"] {
            nl.delete_link(link).expect("delete");
        }
    });
}

/// `frame` (a [`frame6`]) with IPv6 hop limit `hops`.
fn with_hops(mut f: Vec<u8>, hops: u8) -> Vec<u8> {
    f[21] = hops;
    f
}

/// The IPv6 twin of the tunnel test above (dual-stack overlays): TCP and UDP for a remote IPv6 block go out by
/// the tunnel's device, and what the device receives from a remote IPv6 block for a sandbox here is delivered;
/// the same frames the IPv4 branch leaves to the slow path are left there, and so is ICMPv6 (neighbour
/// discovery, echo) and anything behind an extension header. The remote IPv6 blocks live in a trie of their
/// own, found again by its key size.
#[test]
fn with_a_tunnel_the_program_takes_remote_ipv6_blocks_both_ways_and_nothing_else() {
    in_private_netns(|| {
        let mut nl = Netlink::open().expect("netlink");
        nl.create_bridge("br0", 1500, GW_MAC).expect("bridge");
        let bridge = nl.link_index("br0").expect("bridge index");
        let me = std::fs::File::open("/proc/thread-self/ns/net").expect("own namespace");
        let vx_mac = [2, 0, 0, 0, 0, 0x44];
        for (host, peer, master, host_mac) in [
            ("ha", "pa", Some(bridge), None),
            ("vx", "vy", None, Some(vx_mac)),
        ] {
            nl.create_veth(&VethSpec {
                host,
                peer,
                peer_netns: me.as_fd(),
                master,
                mtu: 1500,
                peer_mac: None,
                host_mac,
            })
            .expect("veth");
        }
        let (ha, vx) = (nl.link_index("ha").unwrap(), nl.link_index("vx").unwrap());
        let fp = FastPath::ensure(&mut nl, "br0")
            .expect("create")
            .expect("this kernel runs bpf");
        fp.add(&mut nl, ha, A_IP, A_MAC).expect("add a");
        fp.add(&mut nl, ha, A6, A_MAC).expect("add a's IPv6");
        let far = Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 5);
        let out = frame6(GW_MAC, A_MAC, TCP, A6, far, &SEGMENT);
        let back = frame6(vx_mac, [2, 0, 0, 0, 0, 0x43], UDP, far, A6, &SEGMENT);
        assert!(fp
            .set_tunnel(&mut nl, vx, Some(vx), GW_MAC)
            .expect("tunnel"));
        // IPv4 remote blocks only: IPv6 takes the slow path.
        assert_eq!(fp.verdict(&out, ha).unwrap(), PASSED, "no IPv6 block yet");
        assert_eq!(fp.verdict(&back, vx).unwrap(), PASSED, "no IPv6 block yet");
        let block: ipnet::Ipv6Net = "fd00:10:244:2::/64".parse().unwrap();
        fp.set_remotes6(&[(block, block.network())])
            .expect("remote6");
        let found = FastPath::of_bridge(&mut nl, "br0").unwrap().expect("found");
        assert_eq!(found.remotes6().unwrap(), [(block, block.network())]);
        assert_eq!(found.remotes().unwrap(), [], "the IPv4 trie is another map");
        assert_eq!(found.verdict(&out, ha).unwrap(), REDIRECTED, "a -> far");
        assert_eq!(found.verdict(&back, vx).unwrap(), REDIRECTED, "far -> a");
        let udp_out = frame6(GW_MAC, A_MAC, UDP, A6, far, &SEGMENT);
        assert_eq!(
            found.verdict(&udp_out, ha).unwrap(),
            REDIRECTED,
            "UDP a -> far"
        );
        assert_eq!(
            found.verdict(&with_hops(out.clone(), 3), ha).unwrap(),
            REDIRECTED,
            "hop limit 3"
        );
        assert_eq!(
            found.verdict(&with_hops(back.clone(), 2), vx).unwrap(),
            REDIRECTED,
            "hop limit 2"
        );
        let other = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 9);
        let passed = [
            (
                frame6(GW_MAC, A_MAC, TCP, other, far, &SEGMENT),
                ha,
                "out: spoofed source",
            ),
            (
                frame6(GW_MAC, [2, 0, 0, 0, 0, 9], TCP, A6, far, &SEGMENT),
                ha,
                "out: spoofed MAC",
            ),
            (
                frame6(B_MAC, A_MAC, TCP, A6, far, &SEGMENT),
                ha,
                "out: not sent to the gateway",
            ),
            (
                frame6(GW_MAC, A_MAC, TCP, A6, other, &SEGMENT),
                ha,
                "out: a block nobody holds",
            ),
            (
                frame6(GW_MAC, A_MAC, ICMPV6, A6, far, &SEGMENT),
                ha,
                "out: ICMPv6",
            ),
            (
                frame6(GW_MAC, A_MAC, DEST_OPTS, A6, far, &SEGMENT),
                ha,
                "out: an extension header",
            ),
            (
                frame6(GW_MAC, A_MAC, TCP, A6, far, &SEGMENT),
                bridge,
                "out: on the bridge itself",
            ),
            (
                frame6(vx_mac, B_MAC, UDP, other, A6, &SEGMENT),
                vx,
                "in: from outside the remote blocks",
            ),
            (
                frame6(vx_mac, B_MAC, UDP, far, B6, &SEGMENT),
                vx,
                "in: for no sandbox here",
            ),
            (
                frame6(vx_mac, B_MAC, ICMPV6, far, A6, &SEGMENT),
                vx,
                "in: ICMPv6",
            ),
            (
                frame6(B_MAC, A_MAC, UDP, far, A6, &SEGMENT),
                ha,
                "in: a remote source on a sandbox's port",
            ),
            (
                frame6([2, 0, 0, 0, 0, 0x42], B_MAC, UDP, far, A6, &SEGMENT),
                vx,
                "in: another MAC",
            ),
            (
                frame6([0x33, 0x33, 0, 0, 0, 1], B_MAC, UDP, far, A6, &SEGMENT),
                vx,
                "in: multicast",
            ),
            (with_hops(out.clone(), 2), ha, "out: hop limit 2"),
            (with_hops(out.clone(), 0), ha, "out: hop limit 0"),
            (with_hops(back.clone(), 1), vx, "in: hop limit 1"),
            (with_hops(back.clone(), 0), vx, "in: hop limit 0"),
        ];
        for (f, port, why) in &passed {
            assert_eq!(found.verdict(f, *port).unwrap(), PASSED, "{why}");
        }
        found.set_remotes6(&[]).expect("no remotes");
        assert_eq!(found.remotes6().unwrap(), []);
        assert_eq!(found.verdict(&out, ha).unwrap(), PASSED, "block gone");
        assert_eq!(found.verdict(&back, vx).unwrap(), PASSED, "block gone");
        for link in ["ha", "vx", "br0"] {
            nl.delete_link(link).expect("delete");
        }
    });
}

/// Another tool's filter: classic bpf that matches no frame (so nsnet's, later, still runs).
const NO_MATCH: &str = "1,6 0 0 0,";

/// `tc ARGS` in this thread's namespace (the test's own): what another tool on the host does.
fn tc(args: &[&str]) -> String {
    let out = std::process::Command::new("tc")
        .args(args)
        .output()
        .expect("run tc");
    assert!(
        out.status.success(),
        "tc {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// host-gw's receiving side: the program as one filter on an underlay interface nsnet does not own. It
/// delivers exactly what the kernel would route from a remote block to a sandbox (addressed to the
/// interface's own MAC, TTL above 1) and passes everything else, the host's own traffic included. Its
/// filter sits beside other tools' filters and qdiscs (never binding the interface to nsnet's block) and
/// goes alone: a foreign filter, a foreign `clsact` qdisc and a qdisc nsnet did not make all stay; the
/// `ingress` qdisc nsnet made goes when no filter is left on it, and only then.
#[test]
fn on_host_gw_s_underlay_the_program_is_one_filter_among_others_and_delivers_only_what_routing_would(
) {
    in_private_netns(|| {
        let mut nl = Netlink::open().expect("netlink");
        nl.create_bridge("br0", 1500, GW_MAC).expect("bridge");
        let me = std::fs::File::open("/proc/thread-self/ns/net").expect("own namespace");
        let bridge = nl.link_index("br0").unwrap();
        let ul_mac = [2, 0, 0, 0, 0, 0x55];
        for (host, peer, master, host_mac) in [
            ("ha", "pa", Some(bridge), None),
            ("ul", "ulp", None, Some(ul_mac)),
        ] {
            nl.create_veth(&VethSpec {
                host,
                peer,
                peer_netns: me.as_fd(),
                master,
                mtu: 1500,
                peer_mac: None,
                host_mac,
            })
            .expect("veth");
        }
        let (ha, ul) = (nl.link_index("ha").unwrap(), nl.link_index("ul").unwrap());
        let fp = FastPath::ensure(&mut nl, "br0").unwrap().expect("bpf");
        fp.add(&mut nl, ha, A_IP, A_MAC).expect("add a");
        let far = Ipv4Addr::new(10, 78, 0, 5);
        let block: ipnet::Ipv4Net = "10.78.0.0/24".parse().unwrap();
        // host-gw: out by the underlay to the peer's underlay address; delivery left as it is (none yet).
        assert!(fp.set_tunnel(&mut nl, ul, None, GW_MAC).unwrap());
        fp.set_remotes(&[(block, Ipv4Addr::new(192, 168, 200, 12))])
            .unwrap();
        assert_eq!(fp.tunnel().unwrap(), Some((ul, 0, GW_MAC)));
        let (pref, handle) = underlay_filter("br0");
        let at = FilterAt::Link(ul, TcHook::Ingress);

        // No qdisc there: nsnet may make one (the record says it owns it).
        assert_eq!(nl.ingress_qdisc(ul).unwrap(), None);
        assert_eq!(
            on_underlay(&mut nl, "br0", ul).unwrap(),
            Some(OnUnderlay::Missing)
        );
        assert!(fp.attach_underlay(&mut nl, "br0", ul, true).unwrap());
        assert!(
            fp.attach_underlay(&mut nl, "br0", ul, true).unwrap(),
            "twice"
        );
        assert_eq!(
            on_underlay(&mut nl, "br0", ul).unwrap(),
            Some(OnUnderlay::There)
        );
        let q = nl.ingress_qdisc(ul).unwrap().expect("an ingress qdisc");
        assert_eq!(
            (q.kind.as_str(), q.block),
            ("ingress", None),
            "never bound to a block"
        );
        let filters = nl.bpf_filters(at).unwrap();
        assert_eq!(filters.len(), 1, "{filters:?}");
        assert_eq!(
            (filters[0].pref, filters[0].handle, filters[0].block),
            (pref, handle, None)
        );
        assert_eq!(fp.tunnel().unwrap(), Some((ul, ul, GW_MAC)));

        let back = frame(ul_mac, [2, 0, 0, 0, 0, 0x43], 0x0800, far, A_IP);
        assert_eq!(fp.verdict(&back, ul).unwrap(), REDIRECTED, "far -> a");
        assert_eq!(
            fp.verdict(&with_ttl(back.clone(), 2), ul).unwrap(),
            REDIRECTED,
            "TTL 2"
        );
        let host_ip = Ipv4Addr::new(192, 168, 200, 11);
        let passed = [
            (
                frame(ul_mac, [2, 0, 0, 0, 0, 0x43], 0x0800, far, host_ip),
                "for the host itself",
            ),
            (
                frame(ul_mac, [2, 0, 0, 0, 0, 0x43], 0x0800, host_ip, A_IP),
                "from outside the remote blocks",
            ),
            (
                frame(
                    ul_mac,
                    [2, 0, 0, 0, 0, 0x43],
                    0x0800,
                    Ipv4Addr::new(10, 77, 0, 9),
                    A_IP,
                ),
                "from this host's own block",
            ),
            (
                frame(ul_mac, [2, 0, 0, 0, 0, 0x43], 0x0800, far, B_IP),
                "for no sandbox here",
            ),
            (
                frame(A_MAC, [2, 0, 0, 0, 0, 0x43], 0x0800, far, A_IP),
                "to the sandbox's MAC",
            ),
            (
                frame(
                    [2, 0, 0, 0, 0, 0x42],
                    [2, 0, 0, 0, 0, 0x43],
                    0x0800,
                    far,
                    A_IP,
                ),
                "to another MAC",
            ),
            (
                frame([0xff; 6], [2, 0, 0, 0, 0, 0x43], 0x0800, far, A_IP),
                "broadcast",
            ),
            (
                frame(
                    [0x01, 0, 0x5e, 0, 0, 1],
                    [2, 0, 0, 0, 0, 0x43],
                    0x0800,
                    far,
                    A_IP,
                ),
                "multicast",
            ),
            (with_ttl(back.clone(), 1), "TTL 1"),
            (with_ttl(back.clone(), 0), "TTL 0"),
            (
                frame(ul_mac, [2, 0, 0, 0, 0, 0x43], 0x0806, far, A_IP),
                "ARP",
            ),
            (
                frame(ul_mac, [2, 0, 0, 0, 0, 0x43], 0x8100, far, A_IP),
                "VLAN-tagged",
            ),
        ];
        for (f, why) in &passed {
            assert_eq!(fp.verdict(f, ul).unwrap(), PASSED, "{why}");
        }
        // The same frame on a sandbox's port is a sender's, and no sandbox sends from a remote block.
        assert_eq!(
            fp.verdict(&back, ha).unwrap(),
            PASSED,
            "on a sandbox's port"
        );

        // Another tool's filter beside it: taking nsnet's away leaves that one, and the qdisc it is on.
        tc(&[
            "filter", "add", "dev", "ul", "ingress", "pref", "7", "protocol", "all", "bpf",
            "bytecode", NO_MATCH,
        ]);
        detach_underlay(&mut nl, ul, handle, true).expect("detach");
        detach_underlay(&mut nl, ul, handle, true).expect("twice");
        assert_eq!(
            nl.bpf_filters(at).unwrap(),
            vec![],
            "nsnet's filter is gone"
        );
        assert_eq!(fp.tunnel().unwrap(), Some((ul, 0, GW_MAC)), "delivery off");
        let left = tc(&["filter", "show", "dev", "ul", "ingress"]);
        assert!(
            left.contains("bytecode") && left.contains("pref 7"),
            "{left}"
        );
        assert!(
            nl.ingress_qdisc(ul).unwrap().is_some(),
            "a filter is left on it"
        );
        // That one gone too, the qdisc nsnet made goes with nsnet's filter.
        assert!(fp.attach_underlay(&mut nl, "br0", ul, true).unwrap());
        tc(&["filter", "del", "dev", "ul", "ingress", "pref", "7"]);
        detach_underlay(&mut nl, ul, handle, true).expect("detach");
        assert_eq!(nl.ingress_qdisc(ul).unwrap(), None);

        // Someone else's clsact with a filter: nsnet uses it, never makes or removes a qdisc.
        tc(&["qdisc", "add", "dev", "ul", "clsact"]);
        tc(&[
            "filter", "add", "dev", "ul", "ingress", "pref", "7", "protocol", "all", "bpf",
            "bytecode", NO_MATCH,
        ]);
        tc(&[
            "filter", "add", "dev", "ul", "egress", "pref", "7", "protocol", "all", "bpf",
            "bytecode", NO_MATCH,
        ]);
        assert!(fp.attach_underlay(&mut nl, "br0", ul, false).unwrap());
        assert_eq!(fp.verdict(&back, ul).unwrap(), REDIRECTED, "far -> a");
        detach_underlay(&mut nl, ul, handle, false).expect("detach");
        assert_eq!(
            nl.ingress_qdisc(ul).unwrap().map(|q| q.kind),
            Some("clsact".into())
        );
        let left = tc(&["filter", "show", "dev", "ul", "ingress"])
            + &tc(&["filter", "show", "dev", "ul", "egress"]);
        assert_eq!(left.matches("bytecode").count(), 2, "{left}");
        tc(&["qdisc", "del", "dev", "ul", "clsact"]);
        // An empty ingress qdisc nsnet did not make stays, filter or no filter.
        tc(&["qdisc", "add", "dev", "ul", "ingress"]);
        assert!(fp.attach_underlay(&mut nl, "br0", ul, false).unwrap());
        detach_underlay(&mut nl, ul, handle, false).expect("detach");
        assert!(nl.ingress_qdisc(ul).unwrap().is_some(), "not nsnet's qdisc");
        tc(&["qdisc", "del", "dev", "ul", "ingress"]);
        // A qdisc that went away since the plan (the record says it is someone else's): nothing made.
        assert!(!fp.attach_underlay(&mut nl, "br0", ul, false).unwrap());
        assert_eq!(nl.ingress_qdisc(ul).unwrap(), None);
        // An ingress bound to a shared block is someone else's: no filter goes there.
        tc(&[
            "qdisc",
            "add",
            "dev",
            "ul",
            "ingress_block",
            "77",
            "ingress",
        ]);
        assert_eq!(
            on_underlay(&mut nl, "br0", ul).unwrap(),
            Some(OnUnderlay::Blocked)
        );
        assert!(!fp.attach_underlay(&mut nl, "br0", ul, true).unwrap());
        assert_eq!(nl.bpf_filters(FilterAt::Block(77)).unwrap(), vec![]);
        tc(&["qdisc", "del", "dev", "ul", "ingress"]);

        // A filter left on the underlay after its bridge went is found as stale; a live one is not.
        assert!(fp.attach_underlay(&mut nl, "br0", ul, true).unwrap());
        let links = nl.links().unwrap();
        assert_eq!(stale_underlay_filters(&mut nl, &links).unwrap(), vec![]);
        drop(fp);
        for link in ["ha", "br0"] {
            nl.delete_link(link).expect("delete");
        }
        let links = nl.links().unwrap();
        assert_eq!(
            stale_underlay_filters(&mut nl, &links).unwrap(),
            vec![("ul".to_string(), handle)]
        );
        detach_underlay(&mut nl, ul, handle, true).expect("detach");
        assert_eq!(nl.ingress_qdisc(ul).unwrap(), None);
        nl.delete_link("ul").expect("delete");
    });
}
