//! nsnet's guarantees attacked the way a hostile sandbox or LAN peer would: forged frames, routes the attacker
//! adds, a second state dir. Each test fails if the guarantee it attacks breaks.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::MetadataExt as _;
use std::time::Duration;

use common::{ipv4_header, reach, TestHost};
use nsnet_core::probe;
use serde_json::Value;

/// An Ethernet frame carrying a UDP datagram from `src` to `dst` (port 9), with the given MACs.
fn udp_frame(dst_mac: [u8; 6], src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let payload = b"forged";
    let udp_len = 8 + payload.len();
    let mut frame = [dst_mac, src_mac].concat();
    frame.extend([0x08, 0x00]);
    frame.extend(ipv4_header(17, src, dst, udp_len));
    frame.extend([0x30, 0x39, 0, 9]);
    frame.extend(
        u16::try_from(udp_len)
            .expect("a small datagram")
            .to_be_bytes(),
    );
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
        let victim_mac = h.mac(&victim);
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

fn addr(ip: &str, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip.parse().expect("test address"), port)
}

#[test]
fn internal_networks_reach_no_other_network_through_published_ports() {
    for backend in ["nftables", "iptables"] {
        let mut h = TestHost::with_lan("intpub");
        h.firewall = Some(backend);
        h.ok(&["network", "create", "pub", "--subnet", "172.16.3.0/24"]);
        h.ok(&[
            "network",
            "create",
            "int",
            "--subnet",
            "172.16.4.0/24",
            "--internal",
        ]);
        let (web, inside, other) = (h.sb("web"), h.sb("in"), h.sb("other"));
        h.ok(&["create", &web, "--network", "pub", "-p", "8080:80"]);
        h.ok(&["create", &inside, "--network", "int"]);
        h.ok(&["create", &other, "--network", "pub"]);
        let web_ns = h.sb_path("web");
        // The port works (so a refusal below is the guard's doing, not a broken port).
        assert!(
            reach(
                &web_ns,
                80,
                &h.sb_path("other"),
                addr(common::HOST_IP, 8080)
            )
            .is_some(),
            "{backend}: a sandbox of a normal network reaches the published port"
        );
        // From the internal network: through the host's uplink address and through its own gateway, which
        // is a host address too.
        for to in [common::HOST_IP, "172.16.4.1"] {
            assert!(
                reach(&web_ns, 80, &h.sb_path("in"), addr(to, 8080)).is_none(),
                "{backend}: an internal sandbox reached another network's sandbox through {to}:8080"
            );
        }
        for sb in [&web, &inside, &other] {
            h.ok(&["rm", sb]);
        }
        h.ok(&["network", "rm", "pub"]);
        h.ok(&["network", "rm", "int"]);
    }
}

#[test]
fn a_lan_peer_routing_to_sandboxes_reaches_published_ports_only_unless_routed() {
    for backend in ["nftables", "iptables"] {
        let mut h = TestHost::with_lan("routed");
        h.firewall = Some(backend);
        h.ok(&["network", "create", "n", "--subnet", "172.16.5.0/24"]);
        h.ok(&[
            "network",
            "create",
            "r",
            "--subnet",
            "172.16.6.0/24",
            "--gateway-mode",
            "routed",
        ]);
        let (s, t) = (h.sb("s"), h.sb("t"));
        h.ok(&[
            "create",
            &s,
            "--network",
            "n",
            "--ip",
            "172.16.5.2",
            "-p",
            "8080:80",
        ]);
        h.ok(&["create", &t, "--network", "r", "--ip", "172.16.6.2"]);
        // The attacker on the LAN routes both subnets through the host.
        let lan = h.lan.clone().expect("a LAN peer");
        for subnet in ["172.16.5.0/24", "172.16.6.0/24"] {
            common::sh(&[
                "ip",
                "-n",
                &lan,
                "route",
                "add",
                subnet,
                "via",
                common::HOST_IP,
            ]);
        }
        let lan_ip: Ipv4Addr = common::LAN_IP.parse().unwrap();
        let (s_ns, t_ns) = (h.sb_path("s"), h.sb_path("t"));
        assert_eq!(
            reach(&s_ns, 80, &h.lan_path(), addr(common::HOST_IP, 8080)),
            Some(lan_ip),
            "{backend}: the published port"
        );
        for port in [80, 81] {
            assert!(
                reach(&s_ns, port, &h.lan_path(), addr("172.16.5.2", port)).is_none(),
                "{backend}: the LAN peer reached port {port} of a nat-mode sandbox directly"
            );
        }
        // UDP too: nothing routed in gets an answer.
        let udp = probe::udp_server(&s_ns, addr("0.0.0.0", 53)).expect("udp server");
        assert!(probe::udp_hello(&h.lan_path(), addr("172.16.5.2", 53)).is_err());
        assert!(udp.wait().is_err(), "{backend}: a datagram got in");
        // Routed: every port, and the sandbox sees the real client, and the LAN sees the sandbox's own
        // address (no masquerade).
        assert_eq!(
            reach(&t_ns, 81, &h.lan_path(), addr("172.16.6.2", 81)),
            Some(lan_ip),
            "{backend}: a routed network is reached directly"
        );
        assert_eq!(
            reach(&h.lan_path(), 82, &t_ns, addr(common::LAN_IP, 82)),
            Some("172.16.6.2".parse().unwrap()),
            "{backend}: a routed network's traffic leaves unmasqueraded"
        );
        h.ok(&["rm", &s]);
        h.ok(&["rm", &t]);
        h.ok(&["network", "rm", "n"]);
        h.ok(&["network", "rm", "r"]);
    }
}

#[test]
fn a_second_state_dir_cannot_take_over_the_firewall_or_the_links() {
    for backend in ["nftables", "iptables"] {
        let mut h = TestHost::with_lan("2state");
        h.firewall = Some(backend);
        h.ok(&["network", "create", "a", "--subnet", "172.16.7.0/24"]);
        let web = h.sb("web");
        h.ok(&["create", &web, "--network", "a", "-p", "8080:80"]);
        let before = h.snapshot();
        let other = tempfile::tempdir().expect("tempdir");
        let b_state = other.path().join("b");
        let b =
            |args: &[&str]| h.nsnet_env(args, &[("NSNET_STATE_DIR", b_state.to_str().unwrap())]);
        let args = ["network", "create", "b", "--subnet", "172.16.8.0/24"];
        let line = common::check_one_line_failure(&args, b(&args));
        let a_dir = std::fs::canonicalize(&h.state).expect("state dir");
        assert!(
            line.contains(&format!("state dir {}", a_dir.display()))
                && line.contains("--state-dir"),
            "{backend}: {line}"
        );
        // B's housekeeping leaves A's bridge, veths and rules alone.
        for args in [&["gc"][..], &["firewall", "reload"], &["network", "ls"]] {
            assert!(b(args).status.success(), "{backend}: nsnet {args:?} in B");
        }
        assert_eq!(h.snapshot(), before, "{}", h.snapshot().diff(&before));
        let lan: Ipv4Addr = common::LAN_IP.parse().unwrap();
        assert_eq!(
            reach(
                &h.sb_path("web"),
                80,
                &h.lan_path(),
                addr(common::HOST_IP, 8080)
            ),
            Some(lan),
            "{backend}: A's published port"
        );
        h.ok(&["rm", &web]);
        h.ok(&["network", "rm", "a"]);
        // Once A's tables are gone, B may have them.
        assert!(b(&args).status.success(), "{backend}: B after A");
        assert!(b(&["network", "rm", "b"]).status.success());
    }
}

#[test]
fn a_record_cannot_make_nsnet_delete_a_link_it_did_not_make() {
    let h = TestHost::with_lan("uplink");
    h.ok(&["network", "create", "n", "--subnet", "172.16.9.0/24"]);
    // The network record now names the host's uplink as its bridge (a hand-edited or planted state file).
    let file = h.state.join("networks/n.json");
    let text = std::fs::read_to_string(&file).expect("network record");
    std::fs::write(&file, text.replace("\"nsbr-n\"", "\"uplink0\"")).expect("write record");
    let out = h.nsnet(&["network", "rm", "n"]);
    assert!(!out.status.success(), "network rm deleted the uplink");
    assert!(
        h.link_names().iter().any(|l| l == "uplink0"),
        "the uplink is gone"
    );
    std::fs::write(&file, text).expect("write record");
    h.ok(&["network", "rm", "n"]);
}

/// The pid of a `sleep` started in namespace `ns` (a path under /run/netns), once it runs there.
fn sleeper(ns: &std::path::Path) -> std::process::Child {
    let net = format!("--net={}", ns.display());
    let child = std::process::Command::new("nsenter")
        .args([net.as_str(), "--", "sleep", "60"])
        .spawn()
        .expect("spawn sleep");
    let proc_ns = format!("/proc/{}/ns/net", child.id());
    let ino = |p: &std::path::Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    for _ in 0..1000 {
        if ino(proc_ns.as_ref()).is_some() && ino(proc_ns.as_ref()) == ino(ns) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        ino(proc_ns.as_ref()),
        ino(ns),
        "sleep did not enter {}",
        ns.display()
    );
    child
}

#[test]
fn the_hosts_own_namespace_is_not_a_sandbox() {
    let h = TestHost::new("hostns");
    h.ok(&["network", "create", "n", "--subnet", "172.16.11.0/24"]);
    let before = h.snapshot();
    let mut host_proc = sleeper(&h.host_path());
    let by_pid = format!("/proc/{}/ns/net", host_proc.id());
    let host = h.host_path().to_string_lossy().into_owned();
    let name = h.sb("x");
    for target in [by_pid.as_str(), host.as_str(), "/proc/self/ns/net"] {
        let line = h.fails(&["attach", target, "--name", &name, "--network", "n"]);
        assert!(
            line.contains("this host's own network namespace"),
            "{target}: {line}"
        );
        assert_eq!(h.snapshot(), before, "{target}");
    }
    let _ = host_proc.kill();
    let _ = host_proc.wait();
    h.ok(&["network", "rm", "n"]);
}

#[test]
fn a_reused_pid_does_not_make_the_host_a_sandbox() {
    let h = TestHost::new("pidre");
    h.ok(&["network", "create", "n", "--subnet", "172.16.12.0/24"]);
    h.ok(&["network", "create", "m", "--subnet", "172.16.13.0/24"]);
    // A container: a process in a namespace of its own, attached by its /proc path.
    let ctr = h.sb("ctr");
    common::sh(&["ip", "netns", "add", &ctr]);
    let mut ctr_proc = sleeper(&h.sb_path("ctr"));
    let app = h.sb("app");
    let path = format!("/proc/{}/ns/net", ctr_proc.id());
    h.ok(&["attach", &path, "--name", &app, "--network", "n"]);
    // The container exits and its PID goes to a host process: the recorded path now names the host.
    let _ = ctr_proc.kill();
    let _ = ctr_proc.wait();
    common::sh(&["ip", "netns", "del", &ctr]);
    h.wait_veths_gone(&app);
    let mut host_proc = sleeper(&h.host_path());
    let file = h.state.join(format!("sandboxes/{app}.json"));
    let record = std::fs::read_to_string(&file).expect("record");
    let reused = format!("/proc/{}/ns/net", host_proc.id());
    std::fs::write(&file, record.replace(&path, &reused)).expect("write record");
    assert_eq!(
        std::fs::metadata(&reused).map(|m| m.ino()).ok(),
        std::fs::metadata(h.host_path()).map(|m| m.ino()).ok()
    );

    let before = h.snapshot();
    // Not a command runs in the host, not an interface goes into it.
    for args in [
        &["exec", &app, "--", "true"][..],
        &["attach", &app, "--network", "m"][..],
    ] {
        let line = h.fails(args);
        assert!(
            line.contains("has lost its network namespace"),
            "{args:?}: {line}"
        );
        assert_eq!(h.snapshot(), before, "{args:?}");
    }
    let ls = h.ok(&["ls"]);
    assert!(ls.contains("namespace gone"), "{ls}");
    let done = h.ok(&["gc"]);
    assert!(
        done.contains(&format!("released sandbox '{app}'")),
        "{done}"
    );
    assert!(!h.link_names().iter().any(|l| l == "eth0" || l == "eth1"));
    let _ = host_proc.kill();
    let _ = host_proc.wait();
    h.ok(&["network", "rm", "n"]);
    h.ok(&["network", "rm", "m"]);
}

#[test]
fn a_foreign_namespace_is_forgotten_with_its_last_network() {
    let h = TestHost::new("forget");
    h.ok(&["network", "create", "n", "--subnet", "172.16.15.0/24"]);
    let ext = h.sb("ext");
    common::sh(&["ip", "netns", "add", &ext]);
    h.ok(&["attach", &ext, "--network", "n"]);
    h.ok(&["network", "rm", "n", "--force"]);
    assert!(
        !h.ok(&["ls"]).contains(&ext),
        "an empty record stayed behind"
    );
    assert!(!h.state.join(format!("sandboxes/{ext}.json")).exists());
    assert!(
        h.sb_path("ext").exists(),
        "nsnet removed a namespace it did not make"
    );
    common::sh(&["ip", "netns", "del", &ext]);
}

#[test]
fn an_internal_network_cannot_inject_into_another_internal_network() {
    for backend in ["nftables", "iptables"] {
        let mut h = TestHost::new("int2int");
        h.firewall = Some(backend);
        // A normal network too: it turns forwarding on, as on any host that has one. Both internal networks
        // opt out of isolation, so only the internal rule stands between them.
        h.ok(&["network", "create", "pub", "--subnet", "172.16.19.0/24"]);
        h.ok(&[
            "network",
            "create",
            "i1",
            "--subnet",
            "172.16.17.0/24",
            "--internal",
            "--isolate=false",
        ]);
        h.ok(&[
            "network",
            "create",
            "i2",
            "--subnet",
            "172.16.18.0/24",
            "--internal",
            "--isolate=false",
        ]);
        let (x, y) = (h.sb("x"), h.sb("y"));
        h.ok(&["create", &x, "--network", "i1"]);
        h.ok(&["create", &y, "--network", "i2", "--ip", "172.16.18.2"]);
        // The attacker is root in its sandbox: it routes the other internal subnet through its gateway.
        h.ok(&[
            "exec",
            &x,
            "--",
            "ip",
            "route",
            "add",
            "172.16.18.0/24",
            "via",
            "172.16.17.1",
        ]);
        // The victim answers along a route back, so the probe can tell whether the datagram arrived.
        h.ok(&[
            "exec",
            &y,
            "--",
            "ip",
            "route",
            "add",
            "172.16.17.0/24",
            "via",
            "172.16.18.1",
        ]);
        let server = probe::udp_server(&h.sb_path("y"), addr("0.0.0.0", 53)).expect("udp server");
        let _ = probe::udp_hello(&h.sb_path("x"), addr("172.16.18.2", 53));
        assert!(
            server.wait().is_err(),
            "{backend}: a datagram crossed from one internal network into another"
        );
        h.ok(&["rm", &x]);
        h.ok(&["rm", &y]);
        h.ok(&["network", "rm", "i1"]);
        h.ok(&["network", "rm", "i2"]);
        h.ok(&["network", "rm", "pub"]);
    }
}

/// Links made before nsnet tagged its links (an upgrade): still nsnet's to remove, recognised by the MAC nsnet
/// gave them, while a link with another MAC (the uplink, above) never is.
#[test]
fn links_made_before_tags_are_still_removed() {
    let h = TestHost::new("untag");
    h.ok(&["network", "create", "n", "--subnet", "172.16.20.0/24"]);
    let (a, b) = (h.sb("a"), h.sb("b"));
    h.ok(&["create", &a, "--network", "n"]);
    h.ok(&["create", &b, "--network", "n"]);
    // A process in b's namespace: its veth is deleted explicitly (not with the namespace).
    let mut inside = sleeper(&h.sb_path("b"));
    let veth = |sb: &str| {
        h.inspect(sb)["endpoints"][0]["host_interface"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    for link in [veth(&a), veth(&b), "nsbr-n".to_string()] {
        h.in_host(&["ip", "link", "set", &link, "alias", ""]);
    }
    h.ok(&["rm", &a]);
    h.ok(&["rm", &b]);
    h.ok(&["network", "rm", "n"]);
    assert!(!h.link_names().iter().any(|l| l == "nsbr-n"));
    let _ = inside.kill();
    let _ = inside.wait();
}

/// A router advertisement for `prefix`/64 from `mac` (link-local source fe80::bad), to all nodes.
fn router_advertisement(mac: [u8; 6], prefix: [u8; 16]) -> Vec<u8> {
    let src: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0b, 0xad];
    let dst: [u8; 16] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    // RA: type 134, code 0, checksum, hop limit 64, flags 0, router lifetime 1800 s, reachable 0, retrans 0.
    let mut icmp = vec![134, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
    // Prefix information: /64, on-link and autonomous, valid 1 day, preferred 4 h.
    icmp.extend([
        3, 4, 64, 0xc0, 0, 1, 0x51, 0x80, 0, 0, 0x38, 0x40, 0, 0, 0, 0,
    ]);
    icmp.extend(prefix);
    // Source link-layer address.
    icmp.extend([1, 1]);
    icmp.extend(mac);
    let len = u32::try_from(icmp.len()).expect("short");
    let mut pseudo = [
        src.as_slice(),
        dst.as_slice(),
        &len.to_be_bytes(),
        &[0, 0, 0, 58],
    ]
    .concat();
    pseudo.extend(&icmp);
    let sum = common::inet_checksum(&pseudo);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut frame = [[0x33, 0x33, 0, 0, 0, 1], mac].concat();
    frame.extend([0x86, 0xdd, 0x60, 0, 0, 0]);
    frame.extend(u16::try_from(icmp.len()).expect("short").to_be_bytes());
    frame.extend([58, 255]);
    frame.extend(src);
    frame.extend(dst);
    frame.extend(icmp);
    frame
}

/// A sandbox of an IPv4 network sends a router advertisement: its neighbour (which takes them, as a
/// sandbox's defaults have it) and the host take nothing. nftables drops the sandbox's IPv6 in its bridge
/// table, iptables in ip6tables' raw table (physdev); the host is guarded by its bridge having IPv6 off in any
/// case. On a nat-mode network, iptables has a second wall: bridged frames pass ip6tables' FORWARD through
/// br_netfilter, where the published-ports-only drop (`NSNET-INBOUND -o BRIDGE -j DROP`) stops every IPv6
/// frame between two ports. A routed network has no such drop, so there the endpoint's own ip6tables rules
/// are all that stands in the way (issue #19, C9): taken out by hand, the neighbour takes the advertisement.
#[test]
fn a_sandbox_cannot_configure_the_host_or_its_neighbours_with_router_advertisements() {
    for backend in ["nftables", "iptables"] {
        for mode in ["nat", "routed"] {
            router_advertisements(backend, mode);
        }
    }
}

/// The twin on a dual-stack network: the sandboxes talk IPv6 now, so the firewall lets their IPv6 through,
/// but never a router advertisement (the bridge itself takes none either: `accept_ra=0`): `bridge nsnet` with
/// nftables, ip6tables' raw table (physdev, `--icmpv6-type`) with iptables.
#[test]
fn a_dual_stack_sandbox_cannot_configure_the_host_or_its_neighbours_with_router_advertisements() {
    for backend in ["nftables", "iptables"] {
        dual_stack_router_advertisements(backend);
    }
}

fn dual_stack_router_advertisements(backend: &'static str) {
    let mut h = TestHost::with_ipv6("ra6");
    h.firewall = Some(backend);
    let ok = |args: &[&str]| {
        let out = h.nsnet(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(&["network", "create", "n", "--ipv6", "--bridge", "nsbr-ra6"]);
    let (evil, victim) = (h.sb("evil"), h.sb("victim"));
    ok(&["create", &evil, "--network", "n"]);
    ok(&["create", &victim, "--network", "n"]);
    let ns = |s: &str| format!("--net={}", h.sb_path(s).display());
    // The neighbour takes router advertisements, as a sandbox's defaults have it, and talks IPv6.
    let victim_ns = ns("victim");
    let accept_ra = common::sh(&[
        "nsenter",
        &victim_ns,
        "--",
        "sysctl",
        "-n",
        "net.ipv6.conf.eth0.accept_ra",
    ]);
    assert_eq!(accept_ra.trim(), "1");
    let victim_ip = h.inspect(&victim)["endpoints"][0]["ipv6"]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .expect("an IPv6 address");
    assert!(
        probe::ping6(&h.sb_path("evil"), victim_ip).expect("ping"),
        "evil -> victim over IPv6"
    );
    let seen = |ns: &str| {
        let addrs = common::sh(&["nsenter", ns, "--", "ip", "-6", "addr"]);
        let routes = common::sh(&["nsenter", ns, "--", "ip", "-6", "route"]);
        format!("{addrs}{routes}")
    };
    let host = format!("--net={}", h.host_path().display());
    let (host_before, victim_before) = (seen(&host), seen(&victim_ns));
    let ra = router_advertisement(
        h.mac(&evil),
        [
            0x20, 0x01, 0x0d, 0xb8, 0x0b, 0xad, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    );
    for _ in 0..3 {
        probe::send_frames(&h.sb_path("evil"), "eth0", std::slice::from_ref(&ra)).expect("send");
        std::thread::sleep(Duration::from_millis(300));
    }
    for (who, ns, was) in [
        ("the host", &host, host_before),
        ("the neighbour", &victim_ns, victim_before),
    ] {
        let text = seen(ns);
        assert!(
            !text.contains("2001:db8:bad") && !text.contains("fe80::bad"),
            "{backend}: {who} took the sandbox's router advertisement:\n{text}"
        );
        assert_eq!(text, was, "{backend}: {who}");
    }
    assert!(!seen(&host).contains("default"));
    h.ok(&["rm", &evil]);
    h.ok(&["rm", &victim]);
    h.ok(&["network", "rm", "n"]);
    for tool in ["iptables-save", "ip6tables-save"] {
        let text = h.in_host(&[tool]);
        assert!(!text.contains("NSNET"), "{backend}: {tool}:\n{text}");
    }
}

fn router_advertisements(backend: &'static str, mode: &str) {
    let mut h = TestHost::new("ra");
    h.firewall = Some(backend);
    // A host that runs IPv6 (the harness turns it off by default), as most do.
    for key in ["all", "default"] {
        h.in_host(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{key}.disable_ipv6=0"),
        ]);
    }
    h.ok(&[
        "network",
        "create",
        "n",
        "--subnet",
        "172.16.30.0/24",
        "--bridge",
        "nsbr-ra",
        "--gateway-mode",
        mode,
    ]);
    let (evil, victim) = (h.sb("evil"), h.sb("victim"));
    h.ok(&["create", &evil, "--network", "n"]);
    h.ok(&["create", &victim, "--network", "n"]);
    let victim_ns = format!("--net={}", h.sb_path("victim").display());
    // The victim's eth0 takes router advertisements, as a sandbox's defaults have it.
    let accept_ra = common::sh(&[
        "nsenter",
        &victim_ns,
        "--",
        "sysctl",
        "-n",
        "net.ipv6.conf.eth0.accept_ra",
        "net.ipv6.conf.eth0.disable_ipv6",
        "net.ipv6.conf.eth0.forwarding",
    ]);
    assert_eq!(
        accept_ra.split_whitespace().collect::<Vec<_>>(),
        ["1", "0", "0"]
    );
    let ra = router_advertisement(
        h.mac(&evil),
        [
            0x20, 0x01, 0x0d, 0xb8, 0x0b, 0xad, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    );
    for _ in 0..3 {
        probe::send_frames(&h.sb_path("evil"), "eth0", std::slice::from_ref(&ra)).expect("send");
        std::thread::sleep(Duration::from_millis(300));
    }
    let seen = |ns: &str| {
        let addrs = common::sh(&["nsenter", ns, "--", "ip", "-6", "addr"]);
        let routes = common::sh(&["nsenter", ns, "--", "ip", "-6", "route"]);
        format!("{addrs}{routes}")
    };
    let host = format!("--net={}", h.host_path().display());
    for (who, ns) in [("the host", &host), ("the neighbour", &victim_ns)] {
        let text = seen(ns);
        assert!(
            !text.contains("2001:db8:bad") && !text.contains("default"),
            "{backend}, {mode}: {who} took the sandbox's router advertisement:\n{text}"
        );
        let snmp6 = common::sh(&["nsenter", ns, "--", "cat", "/proc/net/snmp6"]);
        let got = snmp6
            .lines()
            .find_map(|l| l.strip_prefix("Icmp6InRouterAdvertisements"))
            .map(str::trim);
        assert_eq!(got, Some("0"), "{backend}, {mode}: {who} received it");
    }
    h.ok(&["rm", &evil]);
    h.ok(&["rm", &victim]);
    h.ok(&["network", "rm", "n"]);
}

/// A sandbox of a routed IPv4 network on iptables sends IPv6 straight at its neighbour's MAC: a UDP datagram
/// to the neighbour's link-local address, an unsolicited neighbour advertisement, a router advertisement. The
/// neighbour, listening on `[::]:9`, gets nothing, and its eth0 counts no advertisement in. That is one
/// ip6tables drop for the whole network (`-i BRIDGE`, br_netfilter): taken out by hand, the datagram
/// arrives (so the frames are real); `firewall reload` puts it back, and nothing arrives again.
#[test]
fn a_sandbox_of_an_ipv4_network_gets_no_ipv6_to_its_neighbour_on_iptables() {
    let mut h = TestHost::new("v4no6");
    h.firewall = Some("iptables");
    h.ok(&[
        "network",
        "create",
        "n",
        "--subnet",
        "172.16.31.0/24",
        "--bridge",
        "nsbr-v4no6",
        "--gateway-mode",
        "routed",
    ]);
    let (evil, victim) = (h.sb("evil"), h.sb("victim"));
    h.ok(&["create", &evil, "--network", "n"]);
    h.ok(&["create", &victim, "--network", "n"]);
    // An address of the victim's own on eth0 (without DAD: usable at once), for the datagram to go to.
    let victim_ns = format!("--net={}", h.sb_path("victim").display());
    common::sh(&[
        "nsenter",
        &victim_ns,
        "--",
        "ip",
        "-6",
        "addr",
        "add",
        "fe80::2/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    let (from, to): (std::net::Ipv6Addr, std::net::Ipv6Addr) = (
        "fe80::bad".parse().expect("ip"),
        "fe80::2".parse().expect("ip"),
    );
    let (evil_mac, victim_mac) = (h.mac(&evil), h.mac(&victim));
    let mut udp = vec![0x04, 0xd2, 0, 9, 0, 14, 0, 0];
    udp.extend(b"ipv6!!");
    let sum = common::ipv6_checksum(17, from, to, &udp);
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    let mut datagram = [victim_mac, evil_mac].concat();
    datagram.extend(0x86ddu16.to_be_bytes());
    datagram.extend(common::ipv6_header(17, from, to, udp.len()));
    datagram.extend(&udp);
    // Neighbour advertisement, override flag: "fe80::1 is at my MAC".
    let mut na = vec![0x20, 0, 0, 0];
    na.extend(
        "fe80::1"
            .parse::<std::net::Ipv6Addr>()
            .expect("ip")
            .octets(),
    );
    na.extend([2, 1]);
    na.extend(evil_mac);
    let na = common::icmpv6_frame(victim_mac, evil_mac, from, to, 136, 0, &na);
    let ra = router_advertisement(
        evil_mac,
        [
            0x20, 0x01, 0x0d, 0xb8, 0x0b, 0xad, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    );
    let victim_fd = nsnet_core::kernel::netns::open(&h.sb_path("victim")).expect("victim ns");
    let socket =
        nsnet_core::kernel::netns::run_in(&victim_fd, || std::net::UdpSocket::bind("[::]:9"))
            .expect("enter")
            .expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let received = |frames: &[Vec<u8>]| {
        probe::send_frames(&h.sb_path("evil"), "eth0", frames).expect("send");
        let mut buf = [0u8; 64];
        let mut n = 0;
        while socket.recv_from(&mut buf).is_ok() {
            n += 1;
        }
        n
    };
    let counted = |key: &str| {
        common::sh(&[
            "nsenter",
            &victim_ns,
            "--",
            "cat",
            "/proc/net/dev_snmp6/eth0",
        ])
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_string())
    };
    let all = [datagram.clone(), na, ra];
    assert_eq!(received(&all), 0, "the neighbour took the sandbox's IPv6");
    for key in [
        "Icmp6InNeighborAdvertisements",
        "Icmp6InRouterAdvertisements",
    ] {
        assert_eq!(counted(key).as_deref(), Some("0"), "{key}");
    }
    h.in_host(&[
        "ip6tables",
        "-t",
        "raw",
        "-D",
        "NSNET-GUARD",
        "-i",
        "nsbr-v4no6",
        "-j",
        "DROP",
    ]);
    assert!(
        received(std::slice::from_ref(&datagram)) > 0,
        "the frames are not real"
    );
    h.ok(&["firewall", "reload"]);
    assert_eq!(
        received(std::slice::from_ref(&datagram)),
        0,
        "reload did not put the drop back"
    );
    drop(socket);
    h.ok(&["rm", &evil]);
    h.ok(&["rm", &victim]);
    h.ok(&["network", "rm", "n"]);
}

/// A process already in a namespace that `attach` joins to a network floods forged frames from the moment
/// its interface appears: not one gets through, because the sandbox's guard is in the firewall before its veth
/// has a carrier (the locked bridge port stops forged MACs; the guard stops forged addresses). Its frames
/// from its own address do arrive, so the frames are real.
#[test]
fn a_process_in_an_attached_namespace_gets_no_forged_frame_out_while_it_is_joined() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let h = TestHost::new("attachflood");
    h.ok(&["network", "create", "n", "--subnet", "10.79.0.0/24"]);
    let victim = h.sb("v");
    h.ok(&["create", &victim, "--network", "n"]);
    let victim_ip: Ipv4Addr = "10.79.0.2".parse().expect("ip");
    let victim_mac = h.mac(&victim);
    let attacker = h.sb("x");
    common::sh(&["ip", "netns", "add", &attacker]);
    let forged: Ipv4Addr = "10.79.0.77".parse().expect("ip");
    let own: Ipv4Addr = "10.79.0.3".parse().expect("ip");

    // The victim counts every datagram on port 9, by source.
    let victim_fd = nsnet_core::kernel::netns::open(&h.sb_path("v")).expect("victim ns");
    let socket =
        nsnet_core::kernel::netns::run_in(&victim_fd, || std::net::UdpSocket::bind("0.0.0.0:9"))
            .expect("enter")
            .expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let stop = AtomicBool::new(false);
    let (seen, sent) = std::thread::scope(|s| {
        let listener = s.spawn(|| {
            let mut seen = Vec::new();
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, from)) = socket.recv_from(&mut buf) {
                    seen.push(from.ip());
                }
            }
            seen
        });
        let flooder = s.spawn(|| {
            let ns = h.sb_path("x");
            let until = std::time::Instant::now() + Duration::from_secs(10);
            // Wait for eth0 to appear, then send forged frames as fast as this loop goes.
            let mac = loop {
                let out = std::process::Command::new("ip")
                    .args(["-n", &attacker, "-j", "link", "show", "eth0"])
                    .output()
                    .expect("ip");
                if out.status.success() {
                    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
                    break common::parse_mac(v[0]["address"].as_str().unwrap_or_default());
                }
                assert!(std::time::Instant::now() < until, "eth0 never appeared");
            };
            let frames = vec![udp_frame(victim_mac, mac, forged, victim_ip); 32];
            let mut sent = 0;
            let flood_until = std::time::Instant::now() + Duration::from_millis(800);
            while std::time::Instant::now() < flood_until {
                // Refused while eth0 is down; some go out (to be dropped or not) from when it is up.
                if probe::send_frames(&ns, "eth0", &frames).is_ok() {
                    sent += frames.len();
                }
            }
            sent
        });
        h.ok(&["attach", &attacker, "--network", "n"]);
        let sent = flooder.join().expect("flooder");
        // From its own address, the same path delivers.
        let mac = h.mac(&attacker);
        let honest = vec![udp_frame(victim_mac, mac, own, victim_ip); 4];
        probe::send_frames(&h.sb_path("x"), "eth0", &honest).expect("send");
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        (listener.join().expect("listener"), sent)
    });
    assert!(sent > 0, "no forged frame could be sent at all");
    assert!(
        !seen.contains(&std::net::IpAddr::V4(forged)),
        "{} forged datagrams reached the victim (of {sent} sent)",
        seen.iter()
            .filter(|ip| **ip == std::net::IpAddr::V4(forged))
            .count()
    );
    assert!(
        seen.contains(&std::net::IpAddr::V4(own)),
        "its own datagrams did not arrive either: {seen:?}"
    );
    h.ok(&["rm", &attacker]);
    common::sh(&["ip", "netns", "del", &attacker]);
    h.ok(&["rm", &victim]);
    h.ok(&["network", "rm", "n"]);
}
