//! IPv6 (issue #19): the harness's IPv6 host and LAN, and the dual-stack behaviour, each test the twin of an
//! IPv4 one.

mod common;

use std::net::{Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use common::dns::dig;
use common::{TestHost, HOST_IP6, LAN_IP6};
use ipnet::Ipv6Net;
use nsnet_core::probe;
use serde_json::Value;

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("JSON")
}

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

#[test]
fn dual_stack_networks_and_sandboxes_are_recorded() {
    let h = TestHost::with_lan6("v6rec");
    let net = json(&h.ok(&["network", "create", "ds", "--ipv6", "--json"]));
    let subnet: Ipv6Net = net["ipv6"]["subnet"]
        .as_str()
        .expect("an IPv6 subnet")
        .parse()
        .expect("a CIDR");
    // A /64 of this host's unique local prefix (fd00::/8), the gateway its ::1, NAT66 on.
    assert_eq!(subnet.prefix_len(), 64, "{net}");
    assert_eq!(subnet.network().octets()[0], 0xfd, "{net}");
    let at = |n: u128| Ipv6Addr::from(u128::from(subnet.network()) + n);
    assert_eq!(net["ipv6"]["gateway"], at(1).to_string());
    assert_eq!(net["ipv6"]["nat"], true);
    // The next network takes the next /64 of the same prefix.
    let next = json(&h.ok(&["network", "create", "ds2", "--ipv6", "--json"]));
    let next: Ipv6Net = next["ipv6"]["subnet"]
        .as_str()
        .unwrap_or("")
        .parse()
        .expect("CIDR");
    let p48 = |n: Ipv6Net| {
        Ipv6Net::new(n.network(), 48)
            .map(|p| p.trunc())
            .expect("a /48")
    };
    assert_eq!(p48(next), p48(subnet));
    assert_ne!(next, subnet);

    // Sandboxes: the next free address from ::2, or the one asked for.
    let (a, b) = (h.sb("a"), h.sb("b"));
    h.ok(&["create", &a, "--network", "ds"]);
    h.ok(&[
        "create",
        &b,
        "--network",
        "ds",
        "--ip6",
        &at(0x99).to_string(),
    ]);
    let ep = &h.inspect(&a)["endpoints"][0];
    assert_eq!(ep["ipv6"]["address"], format!("{}/64", at(2)), "{ep}");
    assert_eq!(ep["ipv6"]["gateway"], at(1).to_string());
    assert_eq!(
        h.inspect(&b)["endpoints"][0]["ipv6"]["address"],
        format!("{}/64", at(0x99))
    );
    let ledger = std::fs::read_to_string(h.state.join("networks/ds.ledger")).expect("ledger");
    assert!(ledger.contains(&format!("+ip {} {a}\n", at(2))), "{ledger}");
    // Taken addresses are refused, naming by whom.
    let out = h.nsnet(&[
        "create",
        &h.sb("c"),
        "--network",
        "ds",
        "--ip6",
        &at(2).to_string(),
    ]);
    let err = common::check_one_line_failure(&[], out);
    assert!(err.contains(&format!("in use by sandbox {a}")), "{err}");
    // A sandbox on an IPv4 network beside them has no IPv6.
    h.ok(&["network", "create", "v4"]);
    let c = h.sb("c");
    h.ok(&["create", &c, "--network", "v4"]);
    assert!(h.inspect(&c)["endpoints"][0].get("ipv6").is_none());

    h.ok(&["rm", &a]);
    let held = json(&h.ok(&["network", "inspect", "ds", "--json"]));
    assert_eq!(
        held["allocations6"],
        serde_json::json!({ at(0x99).to_string(): b.clone() }),
        "{held}"
    );
    for s in [&b, &c] {
        h.ok(&["rm", s]);
    }
    for n in ["ds", "ds2", "v4"] {
        h.ok(&["network", "rm", n]);
    }
    assert!(!h.state.exists(), "the state dir outlived the last network");
}

/// A host process listening on IPv6 alone (`[::]:P`, v6only) holds the port on a dual-stack network, for a
/// port asked for and for one nsnet picks; an IPv4-only network does not see it.
#[test]
fn a_host_listener_on_ipv6_only_holds_its_port_on_dual_stack_networks() {
    let h = TestHost::with_lan6("v6lis");
    h.ok(&["network", "create", "ds", "--ipv6"]);
    h.ok(&["network", "create", "v4"]);
    h.in_host(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40010"]);
    // Sockets on `::` take IPv6 only in this namespace.
    h.in_host(&["sysctl", "-qw", "net.ipv6.bindv6only=1"]);
    let fd = nsnet_core::netns::open(&h.host_path()).expect("host ns");
    let listener = nsnet_core::netns::run_in(&fd, || {
        std::net::TcpListener::bind((Ipv6Addr::UNSPECIFIED, 40000))
    })
    .expect("enter")
    .expect("bind");

    let before = h.snapshot();
    let out = h.nsnet(&["create", &h.sb("x"), "--network", "ds", "-p", "40000:80"]);
    let err = common::check_one_line_failure(&[], out);
    assert!(
        err.contains("host port 40000/tcp is already in use by a process"),
        "{err}"
    );
    assert_eq!(h.snapshot(), before, "the refusal changed something");

    let (d, v) = (h.sb("d"), h.sb("v"));
    h.ok(&["create", &d, "--network", "ds", "-p", "80"]);
    assert_eq!(
        h.inspect(&d)["endpoints"][0]["ports"][0]["host_port"],
        40001
    );
    h.ok(&["create", &v, "--network", "v4", "-p", "80"]);
    assert_eq!(
        h.inspect(&v)["endpoints"][0]["ports"][0]["host_port"],
        40000
    );
    drop(listener);

    h.ok(&["rm", &d]);
    h.ok(&["rm", &v]);
    h.ok(&["network", "rm", "ds"]);
    h.ok(&["network", "rm", "v4"]);
}

/// A network's IPv6 gateway and an endpoint's IPv6 address (without its prefix), from their records.
fn gateway6(h: &TestHost, net: &str) -> Ipv6Addr {
    let n = json(&h.ok(&["network", "inspect", net, "--json"]));
    v6(n["ipv6"]["gateway"].as_str().unwrap_or_default())
}

fn address4(h: &TestHost, sb: &str) -> std::net::Ipv4Addr {
    let ep = &h.inspect(sb)["endpoints"][0];
    ep["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .expect("an IPv4 address")
}

/// `behaviour.rs::create_returns_with_the_sandbox_reachable` over IPv6: a dual-stack sandbox reaches its
/// gateway and a neighbour over both families as soon as `create` returns. Its addresses were added without
/// DAD, so none is ever `tentative` (moby#18871). The bridge holds `fe80::1` and the gateway and takes no
/// router advertisements; an IPv4 network's bridge beside it still has IPv6 off. Everything goes with `rm`.
#[test]
fn a_dual_stack_sandbox_reaches_its_gateway_and_a_neighbour_at_once() {
    let h = TestHost::with_ipv6("v6up");
    let empty = h.snapshot();
    h.ok(&["network", "create", "ds", "--ipv6", "--bridge", "nsbr-v6"]);
    h.ok(&["network", "create", "v4", "--bridge", "nsbr-v4"]);
    let gw6 = gateway6(&h, "ds");
    let bridge = h.in_host(&["ip", "-6", "addr", "show", "dev", "nsbr-v6"]);
    assert!(
        bridge.contains("inet6 fe80::1/64") && bridge.contains(&format!("inet6 {gw6}/64")),
        "{bridge}"
    );
    // Only the addresses nsnet gave it: no link-local address of the bridge's own.
    assert_eq!(bridge.matches("inet6").count(), 2, "{bridge}");
    let sysctl = |key: &str| h.in_host(&["sysctl", "-n", key]).trim().to_string();
    assert_eq!(sysctl("net.ipv6.conf.nsbr-v6.accept_ra"), "0");
    assert_eq!(sysctl("net.ipv6.conf.nsbr-v6.disable_ipv6"), "0");
    assert_eq!(sysctl("net.ipv6.conf.nsbr-v4.disable_ipv6"), "1");

    let (a, b) = (h.sb("a"), h.sb("b"));
    for s in [&a, &b] {
        h.ok(&["create", s, "--network", "ds"]);
        let ns = format!("--net=/run/netns/{s}");
        let addrs = common::sh(&[
            "nsenter", &ns, "--", "ip", "-6", "addr", "show", "dev", "eth0",
        ]);
        assert!(!addrs.contains("tentative"), "{s}: {addrs}");
        assert!(
            addrs.contains("scope link") && addrs.contains("scope global"),
            "{addrs}"
        );
    }
    // At once: no try but the first.
    assert!(
        probe::ping6(&h.sb_path("a"), gw6).expect("ping"),
        "a -> gateway"
    );
    assert!(
        probe::ping6(&h.sb_path("a"), h.address6(&b)).expect("ping"),
        "a -> b"
    );
    assert!(
        probe::ping(&h.sb_path("b"), address4(&h, &a)).expect("ping"),
        "b -> a over IPv4"
    );
    let routes = common::sh(&[
        "nsenter",
        &format!("--net=/run/netns/{a}"),
        "--",
        "ip",
        "-6",
        "route",
    ]);
    assert!(
        routes.contains(&format!("default via {gw6} dev eth0")),
        "{routes}"
    );
    // A sandbox on the IPv4 network has no IPv6 at all, and does not reach the dual-stack ones over it.
    let c = h.sb("c");
    h.ok(&["create", &c, "--network", "v4"]);
    let addrs = common::sh(&[
        "nsenter",
        &format!("--net=/run/netns/{c}"),
        "--",
        "ip",
        "-6",
        "addr",
    ]);
    assert!(!addrs.contains("eth0"), "{addrs}");

    for s in [&a, &b, &c] {
        h.ok(&["rm", s]);
    }
    h.ok(&["network", "rm", "ds"]);
    h.ok(&["network", "rm", "v4"]);
    assert_eq!(h.snapshot(), empty);
}

/// `behaviour.rs::dry_run_prints_the_plan_and_changes_nothing` for a dual-stack network and sandbox.
#[test]
fn a_dual_stack_dry_run_prints_the_ipv6_steps_and_changes_nothing() {
    let h = TestHost::with_ipv6("v6dry");
    let empty = h.snapshot();
    let plan = h.ok(&[
        "--dry-run",
        "network",
        "create",
        "ds",
        "--ipv6",
        "--bridge",
        "nsbr-v6",
        "--subnet",
        "fd89:5:5:5::/64",
    ]);
    for expected in [
        "ip link set nsbr-v6 addrgenmode none",
        "sysctl -w net.ipv6.conf.nsbr-v6.accept_ra=0",
        "sysctl -w net.ipv6.conf.nsbr-v6.disable_ipv6=0",
        "ip addr add fe80::1/64 dev nsbr-v6 nodad",
        "ip addr add fd89:5:5:5::1/64 dev nsbr-v6 nodad",
    ] {
        assert!(plan.contains(expected), "missing {expected:?} in:\n{plan}");
    }
    assert_eq!(h.snapshot(), empty);
    h.ok(&[
        "network",
        "create",
        "ds",
        "--ipv6",
        "--bridge",
        "nsbr-v6",
        "--subnet",
        "fd89:5:5:5::/64",
    ]);
    let made = h.snapshot();
    let s = h.sb("s");
    let plan = h.ok(&["--dry-run", "create", &s, "--network", "ds"]);
    for expected in [
        format!("ip -n {s} addr add fd89:5:5:5::2/64 dev eth0 nodad"),
        format!("ip -n {s} -6 route add default via fd89:5:5:5::1 dev eth0"),
        "# fast path: fd89:5:5:5::2 -> veth".to_string(),
    ] {
        assert!(plan.contains(&expected), "missing {expected:?} in:\n{plan}");
    }
    assert!(
        plan.contains(&format!("ip -n {s} addr add fe80::")),
        "{plan}"
    );
    assert!(
        plan.contains("add element bridge nsnet endpoint_ifs6"),
        "{plan}"
    );
    assert_eq!(h.snapshot(), made);
    h.ok(&["network", "rm", "ds"]);
    assert_eq!(h.snapshot(), empty);
}

/// `behaviour.rs::a_kernel_failure_midway_rolls_everything_back` on a dual-stack network.
#[test]
fn a_kernel_failure_midway_rolls_a_dual_stack_create_back() {
    let h = TestHost::with_ipv6("v6rb");
    let empty = h.snapshot();
    h.ok(&["network", "create", "n", "--ipv6", "--bridge", "nsbr-rb6"]);
    // Pull the bridge out from under nsnet: the veth step will fail after the namespace was made.
    h.in_host(&["ip", "link", "del", "nsbr-rb6"]);
    let before = h.snapshot();
    let out = h.nsnet(&["create", &h.sb("s"), "--network", "n", "-p", "8000:80"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nsbr-rb6") && err.contains("undone"), "{err}");
    assert_eq!(
        h.snapshot(),
        before,
        "the failed create left something behind"
    );
    h.ok(&["network", "rm", "n"]);
    assert_eq!(h.snapshot(), empty);
}

/// `retire.rs` over IPv6: a dual-stack sandbox whose namespace a process keeps is detached (its veth
/// retired) and attached again, and its IPv6 works as before.
#[test]
fn a_dual_stack_sandbox_detached_and_attached_again_talks_ipv6() {
    let h = TestHost::with_ipv6("v6ret");
    h.ok(&["network", "create", "ds", "--ipv6"]);
    let (a, b) = (h.sb("a"), h.sb("b"));
    h.ok(&["create", &a, "--network", "ds"]);
    h.ok(&["create", &b, "--network", "ds"]);
    let ns = format!("--net=/run/netns/{a}");
    let mut inside = std::process::Command::new("nsenter")
        .args([ns.as_str(), "--", "sleep", "60"])
        .spawn()
        .expect("sleep inside a");
    std::thread::sleep(std::time::Duration::from_millis(200));
    h.ok(&["detach", &a, "--network", "ds"]);
    h.ok(&["attach", &a, "--network", "ds"]);
    assert!(
        probe::ping6(&h.sb_path("b"), h.address6(&a)).expect("ping"),
        "b -> a"
    );
    let _ = inside.kill();
    let _ = inside.wait();
    h.ok(&["rm", &a]);
    h.ok(&["rm", &b]);
    h.ok(&["network", "rm", "ds"]);
}

/// The veth driver on a dual-stack network: its host end is the gateway of both families (`fe80::1` and
/// the IPv6 gateway, no router advertisements taken). Without nsnet's firewall (`none`), nothing at the bridge
/// drops a neighbour's router advertisements, so each sandbox ignores them itself (`accept_ra=0`).
#[test]
fn the_veth_driver_and_the_none_firewall_on_a_dual_stack_network() {
    let mut h = TestHost::with_ipv6("v6p2p");
    let empty = h.snapshot();
    h.ok(&["network", "create", "p", "--driver", "veth", "--ipv6"]);
    let s = h.sb("s");
    h.ok(&["create", &s, "--network", "p"]);
    let host_end = h.inspect(&s)["endpoints"][0]["host_interface"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let gw6 = gateway6(&h, "p");
    let addrs = h.in_host(&["ip", "-6", "addr", "show", "dev", &host_end]);
    assert!(
        addrs.contains("inet6 fe80::1/64") && addrs.contains(&format!("inet6 {gw6}/64")),
        "{addrs}"
    );
    assert!(!addrs.contains("tentative"), "{addrs}");
    let sysctl = |key: &str| h.in_host(&["sysctl", "-n", key]).trim().to_string();
    assert_eq!(sysctl(&format!("net.ipv6.conf.{host_end}.accept_ra")), "0");
    assert!(
        probe::ping6(&h.sb_path("s"), gw6).expect("ping"),
        "s -> its gateway"
    );
    h.ok(&["rm", &s]);
    h.ok(&["network", "rm", "p"]);
    // The veth driver's host end is one end of the sandbox's pair: the kernel takes it with the sandbox's
    // namespace, in the background, moments after `rm` returns (`settle` waits for it).
    h.settle();
    assert!(
        !h.link_names().contains(&host_end),
        "{host_end} outlived its namespace"
    );
    assert_eq!(h.snapshot(), empty);

    h.firewall = Some("none");
    h.ok(&["network", "create", "n", "--ipv6"]);
    let (a, b) = (h.sb("a"), h.sb("b"));
    h.ok(&["create", &a, "--network", "n"]);
    h.ok(&["create", &b, "--network", "n"]);
    let ns = format!("--net=/run/netns/{a}");
    let accept_ra = common::sh(&[
        "nsenter",
        &ns,
        "--",
        "sysctl",
        "-n",
        "net.ipv6.conf.eth0.accept_ra",
    ]);
    assert_eq!(accept_ra.trim(), "0");
    assert!(
        probe::ping6(&h.sb_path("a"), h.address6(&b)).expect("ping"),
        "a -> b"
    );
    h.ok(&["rm", &a]);
    h.ok(&["rm", &b]);
    h.ok(&["network", "rm", "n"]);
    assert_eq!(h.snapshot(), empty);
}

/// `behaviour.rs::attach_existing_namespaces_and_a_second_network` on dual-stack networks: the second
/// network's endpoint has both addresses but neither default route (only the first network carries them),
/// and the sandbox reaches both gateways over IPv6.
#[test]
fn a_second_dual_stack_network_adds_addresses_but_no_default_route() {
    let h = TestHost::with_ipv6("v6two");
    h.ok(&["network", "create", "one", "--ipv6"]);
    h.ok(&["network", "create", "two", "--ipv6"]);
    let s = h.sb("s");
    h.ok(&["create", &s, "--network", "one"]);
    h.ok(&["attach", &s, "--network", "two"]);
    let ns = format!("--net=/run/netns/{s}");
    let routes = common::sh(&["nsenter", &ns, "--", "ip", "-6", "route", "show", "default"]);
    assert_eq!(routes.lines().count(), 1, "{routes}");
    assert!(
        routes.contains(&format!("default via {} dev eth0", gateway6(&h, "one"))),
        "{routes}"
    );
    let routes4 = common::sh(&["nsenter", &ns, "--", "ip", "route", "show", "default"]);
    assert_eq!(routes4.lines().count(), 1, "{routes4}");
    let second = &h.inspect(&s)["endpoints"][1];
    let dev = second["interface"].as_str().unwrap_or_default().to_string();
    let addrs = common::sh(&[
        "nsenter", &ns, "--", "ip", "-6", "addr", "show", "dev", &dev,
    ]);
    assert!(
        addrs.contains("scope link")
            && addrs.contains("scope global")
            && !addrs.contains("tentative"),
        "{addrs}"
    );
    for net in ["one", "two"] {
        assert!(
            probe::ping6(&h.sb_path("s"), gateway6(&h, net)).expect("ping"),
            "s -> {net}'s gateway"
        );
    }
    h.ok(&["rm", &s]);
    h.ok(&["network", "rm", "one"]);
    h.ok(&["network", "rm", "two"]);
}

/// `gc.rs::gc_repairs_links_deleted_by_hand` on a dual-stack network: a veth or the bridge deleted by hand
/// comes back with its IPv6 addresses and routes, and the sandboxes talk IPv6 again.
#[test]
fn gc_repairs_dual_stack_links_deleted_by_hand() {
    let h = TestHost::with_ipv6("v6gc");
    h.ok(&["network", "create", "n", "--ipv6", "--bridge", "nsbr-gc6"]);
    let (a, b) = (h.sb("a"), h.sb("b"));
    h.ok(&["create", &a, "--network", "n"]);
    h.ok(&["create", &b, "--network", "n"]);
    let inside = |s: &str| {
        let ns = format!("--net=/run/netns/{s}");
        let addrs = common::sh(&["nsenter", &ns, "--", "ip", "-6", "-br", "addr"]);
        let routes = common::sh(&["nsenter", &ns, "--", "ip", "-6", "route"]);
        // Without the peer's index (`eth0@if7`): a re-created veth gets a new one.
        format!("{addrs}{routes}")
            .split_whitespace()
            .map(|w| w.split('@').next().unwrap_or(w).to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (whole, inside_a) = (h.snapshot(), inside(&a));
    let talk = || {
        probe::ping6(&h.sb_path("a"), h.address6(&b)).expect("ping")
            && probe::ping6(&h.sb_path("b"), h.address6(&a)).expect("ping")
    };
    assert!(talk());
    let veth = h.inspect(&a)["endpoints"][0]["host_interface"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    h.in_host(&["ip", "link", "del", &veth]);
    let done = h.ok(&["gc"]);
    assert!(done.contains(&format!("re-created veth {veth}")), "{done}");
    assert_eq!(h.snapshot(), whole, "{}", h.snapshot().diff(&whole));
    assert_eq!(inside(&a), inside_a);
    assert!(talk());

    h.in_host(&["ip", "link", "del", "nsbr-gc6"]);
    let done = h.ok(&["gc"]);
    assert!(done.contains("re-created bridge nsbr-gc6"), "{done}");
    assert_eq!(h.snapshot(), whole, "{}", h.snapshot().diff(&whole));
    assert!(talk());
    h.ok(&["rm", &a]);
    h.ok(&["rm", &b]);
    h.ok(&["network", "rm", "n"]);
}

/// `behaviour.rs::sixty_four_commands_at_once` on a dual-stack network, smaller: 24 creates and 8 removals at
/// once; every command succeeds, IPv6 addresses are unique, every sandbox reaches the first over IPv6 with
/// nothing tentative, and nothing is left.
#[test]
fn dual_stack_commands_at_once() {
    let h = TestHost::with_ipv6("v6many");
    let empty = h.snapshot();
    h.ok(&["network", "create", "n", "--ipv6"]);
    let doomed: Vec<String> = (0..8).map(|i| h.sb(&format!("d{i}"))).collect();
    for name in &doomed {
        h.ok(&["create", name, "--network", "n"]);
    }
    let created: Vec<String> = (0..24).map(|i| h.sb(&format!("c{i}"))).collect();
    std::thread::scope(|s| {
        for chunk in created.chunks(3) {
            let h = &h;
            s.spawn(move || {
                for name in chunk {
                    h.ok(&["create", name, "--network", "n"]);
                }
            });
        }
        for name in &doomed {
            let h = &h;
            s.spawn(move || h.ok(&["rm", name]));
        }
    });
    let addrs: std::collections::BTreeSet<Ipv6Addr> =
        created.iter().map(|s| h.address6(s)).collect();
    assert_eq!(addrs.len(), created.len(), "IPv6 addresses are unique");
    let first = h.address6(&created[0]);
    for (i, name) in created.iter().enumerate().skip(1) {
        let ns = format!("--net=/run/netns/{name}");
        let a = common::sh(&["nsenter", &ns, "--", "ip", "-6", "addr"]);
        assert!(!a.contains("tentative"), "{name}: {a}");
        assert!(
            probe::ping6(&h.sb_path(&format!("c{i}")), first).expect("ping"),
            "c{i} -> c0"
        );
    }
    for name in &created {
        h.ok(&["rm", name]);
    }
    h.ok(&["network", "rm", "n"]);
    assert_eq!(h.snapshot(), empty);
}

/// Tables an older nsnet made (`ip nsnet`, and a bridge table without the set that lets a dual-stack port's
/// IPv6 through) are brought up to date by the first dual-stack network's create itself: it reloads the
/// firewall first, which migrates `ip nsnet` to `inet nsnet`.
#[test]
fn tables_from_before_dual_stack_are_reloaded_first() {
    let h = TestHost::with_ipv6("v6old");
    let empty = h.snapshot();
    h.ok(&["network", "create", "v4"]);
    // As an older nsnet left them: the main table as `ip nsnet`, no endpoint_ifs6 and no rules using it.
    h.make_legacy_tables();
    h.in_host(&["nft", "flush", "chain", "bridge", "nsnet", "prerouting"]);
    h.in_host(&["nft", "delete", "set", "bridge", "nsnet", "endpoint_ifs6"]);
    h.ok(&["network", "create", "ds", "--ipv6"]);
    let tables = h.in_host(&["nft", "list", "tables"]);
    assert!(
        !tables.contains("table ip nsnet") && tables.contains("table inet nsnet"),
        "{tables}"
    );
    h.in_host(&["nft", "list", "set", "bridge", "nsnet", "endpoint_ifs6"]);
    let (a, b) = (h.sb("a"), h.sb("b"));
    h.ok(&["create", &a, "--network", "ds"]);
    h.ok(&["create", &b, "--network", "ds"]);
    assert!(
        probe::ping6(&h.sb_path("a"), h.address6(&b)).expect("ping"),
        "a -> b"
    );
    h.ok(&["rm", &a]);
    h.ok(&["rm", &b]);
    h.ok(&["network", "rm", "ds"]);
    h.ok(&["network", "rm", "v4"]);
    assert_eq!(h.snapshot(), empty);
}

/// A sandbox's IPv6 neighbours: (address, lladdr) of each entry that has one.
fn neighbours6(h: &TestHost, sb: &str) -> Vec<(String, String)> {
    let ns = format!("--net={}", h.sb_path(sb).display());
    let text = common::sh(&[
        "nsenter", &ns, "--", "ip", "-6", "neigh", "show", "dev", "eth0",
    ]);
    let mut out: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "lladdr")?;
            Some((words[0].to_string(), words.get(at + 1)?.to_string()))
        })
        .collect();
    out.sort();
    out
}

/// An Ethernet frame with an ICMPv6 message behind a Destination Options header (one PadN option).
fn icmpv6_behind_dest_options(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    kind: u8,
    body: &[u8],
) -> Vec<u8> {
    let plain = common::icmpv6_frame(dst_mac, src_mac, src, dst, kind, 0, body);
    let icmp = &plain[14 + 40..];
    let dest_options = [58, 0, 1, 4, 0, 0, 0, 0];
    let mut frame = plain[..14].to_vec();
    frame.extend(common::ipv6_header(
        60,
        src,
        dst,
        dest_options.len() + icmp.len(),
    ));
    frame.extend(dest_options);
    frame.extend(icmp);
    frame
}

/// A neighbour advertisement's body (after the checksum): override flag, `target`, and `mac` as its target
/// link-layer address.
fn advert_body(target: Ipv6Addr, mac: [u8; 6]) -> Vec<u8> {
    let mut body = vec![0x20, 0, 0, 0];
    body.extend(target.octets());
    body.extend([2, 1]);
    body.extend(mac);
    body
}

/// `ports.rs::sandboxes_cannot_spoof_source_addresses` over IPv6, with its neighbour-discovery half: a
/// dual-stack sandbox sends only from its own addresses (`::` included), and its neighbour advertisements name
/// only its own addresses, also behind a Destination Options header; its neighbour's cache stays as it was.
#[test]
fn sandboxes_cannot_spoof_ipv6_addresses_or_advertise_a_neighbours() {
    let h = TestHost::with_ipv6("v6spf");
    let empty = h.snapshot();
    h.ok(&["network", "create", "ds", "--ipv6", "--bridge", "nsbr-spf6"]);
    let (evil, victim, other) = (h.sb("evil"), h.sb("victim"), h.sb("other"));
    for sb in [&evil, &victim, &other] {
        h.ok(&["create", sb, "--network", "ds"]);
    }
    let (gw, victim_ip, other_ip) = (gateway6(&h, "ds"), h.address6(&victim), h.address6(&other));
    let (evil_mac, victim_mac) = (h.mac(&evil), h.mac(&victim));
    let evil_ll = h.link_local6("evil");
    let send = |frames: &[Vec<u8>]| {
        probe::send_frames(&h.sb_path("evil"), "eth0", frames).expect("send raw frames");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let echo = |src: Ipv6Addr| {
        common::icmpv6_frame(victim_mac, evil_mac, src, victim_ip, 128, 0, &[0, 7, 0, 1])
    };

    // Sources: its own addresses pass (the frames themselves are good), anyone else's and `::` do not.
    let before = h.echoes6("victim");
    send(&[echo(h.address6(&evil)), echo(evil_ll)]);
    assert_eq!(h.echoes6("victim"), before + 2, "evil's own sources pass");
    send(&[
        echo(other_ip),
        echo(gw),
        echo(v6("::")),
        echo(v6("fd00::bad")),
        echo(v6("fe80::bad")),
    ]);
    assert_eq!(
        h.echoes6("victim"),
        before + 2,
        "a forged IPv6 source reached the victim"
    );

    // The victim knows its gateway and its neighbour.
    assert!(probe::ping6(&h.sb_path("victim"), gw).expect("ping"));
    assert!(probe::ping6(&h.sb_path("victim"), other_ip).expect("ping"));
    assert!(probe::ping6(&h.sb_path("victim"), h.address6(&evil)).expect("ping"));
    // An advertisement for evil's own address, with another MAC, takes effect: the frames are good.
    let fake = [0x02, 0x0b, 0xad, 0, 0, 1];
    let advert = |src: Ipv6Addr, target: Ipv6Addr| {
        common::icmpv6_frame(
            victim_mac,
            evil_mac,
            src,
            victim_ip,
            136,
            0,
            &advert_body(target, fake),
        )
    };
    send(&[advert(evil_ll, h.address6(&evil))]);
    let own = h.address6(&evil).to_string();
    assert!(
        neighbours6(&h, "victim").contains(&(own.clone(), "02:0b:ad:00:00:01".into())),
        "the control advertisement did not take: {:?}",
        neighbours6(&h, "victim")
    );
    let cache = neighbours6(&h, "victim");
    let hidden = |target: Ipv6Addr| {
        icmpv6_behind_dest_options(
            victim_mac,
            evil_mac,
            evil_ll,
            victim_ip,
            136,
            &advert_body(target, fake),
        )
    };
    for target in [gw, v6("fe80::1"), other_ip] {
        send(&[
            advert(evil_ll, target),
            hidden(target),
            advert(v6("::"), target),
        ]);
    }
    assert_eq!(
        neighbours6(&h, "victim"),
        cache,
        "an advertisement for another's address took"
    );
    assert!(
        neighbours6(&h, "victim")
            .iter()
            .all(|(a, mac)| a == &own || mac != "02:0b:ad:00:00:01"),
        "{:?}",
        neighbours6(&h, "victim")
    );
    assert!(
        probe::ping6(&h.sb_path("victim"), gw).expect("ping"),
        "victim -> gateway"
    );
    assert!(
        probe::ping6(&h.sb_path("victim"), other_ip).expect("ping"),
        "victim -> other"
    );
    for sb in [&evil, &victim, &other] {
        h.ok(&["rm", sb]);
    }
    h.ok(&["network", "rm", "ds"]);
    assert_eq!(h.snapshot(), empty);
}

/// `ports.rs::networks_are_isolated_unless_both_opt_out` over IPv6: the isolation rules are the same inet
/// rules for both families.
#[test]
fn dual_stack_networks_are_isolated_unless_both_opt_out() {
    let h = TestHost::with_ipv6("v6iso");
    let empty = h.snapshot();
    for (net, open) in [
        ("n1", false),
        ("n2", false),
        ("open1", true),
        ("open2", true),
    ] {
        let mut args = vec!["network", "create", net, "--ipv6"];
        if open {
            args.push("--isolate=false");
        }
        h.ok(&args);
    }
    let sandboxes = [
        ("a", "n1"),
        ("b", "n1"),
        ("c", "n2"),
        ("e", "open1"),
        ("f", "open2"),
    ];
    let mut addrs = Vec::new();
    for (name, net) in sandboxes {
        h.ok(&["create", &h.sb(name), "--network", net]);
        addrs.push((name, net, h.address6(&h.sb(name))));
    }
    let open = |n: &str| n.starts_with("open");
    // Every ordered pair, in parallel: a blocked ping costs its whole timeout.
    std::thread::scope(|scope| {
        for (from, from_net, _) in &addrs {
            for (to, to_net, to_ip) in &addrs {
                if from == to {
                    continue;
                }
                let h = &h;
                scope.spawn(move || {
                    let expect = from_net == to_net || (open(from_net) && open(to_net));
                    let got = probe::ping6(&h.sb_path(from), *to_ip).expect("ping");
                    assert_eq!(
                        got, expect,
                        "{from} ({from_net}) -> {to} ({to_net}): reached={got}"
                    );
                });
            }
        }
    });
    for (name, _) in sandboxes {
        h.ok(&["rm", &h.sb(name)]);
    }
    for n in ["n1", "n2", "open1", "open2"] {
        h.ok(&["network", "rm", n]);
    }
    assert_eq!(h.snapshot(), empty);
}

/// `internal_network_has_no_way_out` and `an_internal_network_cannot_inject_into_another_…` over IPv6, as a
/// hostile sandbox tries it: it adds a default route through its gateway itself, and a LAN peer routes the
/// internal subnet to the host. IPv6 forwarding is on (another dual-stack network needs it), yet nothing
/// crosses: not to the LAN, not to another network, not from either.
#[test]
fn an_internal_dual_stack_network_has_no_way_out_and_reaches_no_other_network() {
    let h = TestHost::with_lan6("v6int");
    // IPv6 forwarding stays on once on (with the uplink's subnet-router anycast routes): as a host has it.
    h.in_host(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    let empty = h.snapshot();
    h.ok(&["network", "create", "int", "--ipv6", "--internal"]);
    h.ok(&["network", "create", "int2", "--ipv6", "--internal"]);
    h.ok(&["network", "create", "out", "--ipv6", "--isolate=false"]);
    let (s, t, o) = (h.sb("s"), h.sb("t"), h.sb("o"));
    h.ok(&["create", &s, "--network", "int"]);
    h.ok(&["create", &t, "--network", "int2"]);
    h.ok(&["create", &o, "--network", "out", "-p", "8080:80"]);
    let forwarding = h.in_host(&["sysctl", "-n", "net.ipv6.conf.all.forwarding"]);
    assert_eq!(forwarding.trim(), "1", "the test needs IPv6 forwarding on");
    let gw = gateway6(&h, "int");
    let ns = format!("--net={}", h.sb_path("s").display());
    let routes = common::sh(&["nsenter", &ns, "--", "ip", "-6", "route"]);
    assert!(!routes.contains("default"), "{routes}");
    common::sh(&[
        "nsenter",
        &ns,
        "--",
        "ip",
        "-6",
        "route",
        "add",
        "default",
        "via",
        &gw.to_string(),
    ]);
    let lan = format!("--net={}", h.lan_path().display());
    let subnet = json(&h.ok(&["network", "inspect", "int", "--json"]))["ipv6"]["subnet"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    common::sh(&[
        "nsenter", &lan, "--", "ip", "-6", "route", "add", &subnet, "via", HOST_IP6,
    ]);
    let (s_ip, t_ip, o_ip) = (h.address6(&s), h.address6(&t), h.address6(&o));
    assert!(
        probe::ping6(&h.sb_path("s"), gw).expect("ping"),
        "the gateway is reachable"
    );
    std::thread::scope(|scope| {
        let pairs = [
            ("s", v6(LAN_IP6), "the LAN"),
            ("s", o_ip, "another network"),
            ("s", t_ip, "another internal network"),
            ("o", s_ip, "into the internal network"),
            ("t", s_ip, "from another internal network"),
        ];
        for (from, to, what) in pairs {
            let h = &h;
            scope.spawn(move || {
                assert!(
                    !probe::ping6(&h.sb_path(from), to).expect("ping"),
                    "{from} reached {what}"
                );
            });
        }
        scope.spawn(|| {
            assert!(
                !probe::ping6(&h.lan_path(), s_ip).expect("ping"),
                "the LAN reached the internal sandbox"
            );
        });
    });
    // Nor through another network's published port, on the host's address or the gateway's.
    for to in [v6(HOST_IP6), gw] {
        let to = SocketAddr::new(to.into(), 8080);
        assert_eq!(
            common::reach_any(&h.sb_path("o"), 80, &h.sb_path("s"), to),
            None,
            "the internal sandbox reached a published port through {to}"
        );
    }
    for sb in [&s, &t, &o] {
        h.ok(&["rm", sb]);
    }
    for n in ["int", "int2", "out"] {
        h.ok(&["network", "rm", n]);
    }
    common::sh(&[
        "nsenter", &lan, "--", "ip", "-6", "route", "del", &subnet, "via", HOST_IP6,
    ]);
    assert_eq!(h.snapshot(), empty);
}

/// `ports.rs::the_user_chain_runs_first_and_is_never_flushed` for both families: one rule in `inet nsnet
/// user` stops IPv4 and IPv6 between two networks that opted out of isolation, and survives networks coming
/// and going.
#[test]
fn one_user_rule_acts_on_both_families_and_is_never_flushed() {
    let h = TestHost::with_ipv6("v6user");
    let empty = h.snapshot();
    h.ok(&[
        "network",
        "create",
        "p",
        "--ipv6",
        "--isolate=false",
        "--bridge",
        "nsbr-up",
    ]);
    h.ok(&[
        "network",
        "create",
        "q",
        "--ipv6",
        "--isolate=false",
        "--bridge",
        "nsbr-uq",
    ]);
    let (a, b) = (h.sb("a"), h.sb("b"));
    h.ok(&["create", &a, "--network", "p"]);
    h.ok(&["create", &b, "--network", "q"]);
    let (b4, b6) = (address4(&h, &b), h.address6(&b));
    let both = |h: &TestHost| {
        (
            probe::ping(&h.sb_path("a"), b4).expect("ping"),
            probe::ping6(&h.sb_path("a"), b6).expect("ping"),
        )
    };
    assert_eq!(both(&h), (true, true), "open networks reach each other");
    h.in_host(&[
        "nft", "add", "rule", "inet", "nsnet", "user", "iifname", "nsbr-up", "oifname", "nsbr-uq",
        "drop",
    ]);
    assert_eq!(
        both(&h),
        (false, false),
        "the user's rule stops both families"
    );
    h.ok(&["network", "create", "other", "--ipv6"]);
    h.ok(&["network", "rm", "other"]);
    h.ok(&["firewall", "reload"]);
    assert_eq!(both(&h), (false, false), "the user's rule outlives resets");
    h.in_host(&["nft", "flush", "chain", "inet", "nsnet", "user"]);
    assert_eq!(both(&h), (true, true));
    h.ok(&["rm", &a]);
    h.ok(&["rm", &b]);
    h.ok(&["network", "rm", "p"]);
    h.ok(&["network", "rm", "q"]);
    assert_eq!(h.snapshot(), empty);
}

/// `firewall.rs::works_on_a_host_whose_forward_chain_drops` over IPv6: the host's own `ip6 filter FORWARD`
/// and `inet filter forward` chains drop by default; nsnet's accepts there let a dual-stack sandbox reach the
/// LAN over IPv6 (the LAN peer routes the subnet back), and go with the network.
#[test]
fn a_dual_stack_network_works_on_a_host_whose_ipv6_forward_chains_drop() {
    let h = TestHost::with_lan6("v6drop");
    // IPv6 forwarding stays on once on (with the uplink's subnet-router anycast routes): as a host has it.
    h.in_host(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    for cmd in [
        "add table ip6 filter",
        "add chain ip6 filter FORWARD { type filter hook forward priority filter; policy drop; }",
        "add table inet filter",
        "add chain inet filter forward { type filter hook forward priority filter; policy drop; }",
    ] {
        h.in_host(&["nft", cmd]);
    }
    let host_firewall = h.snapshot();
    h.ok(&["network", "create", "ds", "--ipv6"]);
    let s = h.sb("s");
    h.ok(&["create", &s, "--network", "ds"]);
    let lan = format!("--net={}", h.lan_path().display());
    let subnet = json(&h.ok(&["network", "inspect", "ds", "--json"]))["ipv6"]["subnet"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    common::sh(&[
        "nsenter", &lan, "--", "ip", "-6", "route", "add", &subnet, "via", HOST_IP6,
    ]);
    assert!(
        probe::ping6(&h.sb_path("s"), v6(LAN_IP6)).expect("ping"),
        "the sandbox cannot get out over IPv6"
    );
    for chain in [["ip6", "filter", "FORWARD"], ["inet", "filter", "forward"]] {
        let text = h.in_host(&["nft", "list", "chain", chain[0], chain[1], chain[2]]);
        assert_eq!(text.matches("comment \"nsnet ").count(), 3, "{text}");
    }
    h.ok(&["rm", &s]);
    h.ok(&["network", "rm", "ds"]);
    common::sh(&[
        "nsenter", &lan, "--", "ip", "-6", "route", "del", &subnet, "via", HOST_IP6,
    ]);
    assert_eq!(
        h.snapshot(),
        host_firewall,
        "nsnet left rules in the host's chains"
    );
}

/// `ports.rs::a_published_port_works_from_every_path` over IPv6: `-p 8080:80` on a dual-stack network is
/// published on both families (one element in `ports`, one in `ports6`); over IPv6 it is reached from a LAN
/// peer through the host's uplink address (the sandbox sees the peer's real address), from the host itself,
/// from a sandbox of the same and of another network, and by the sandbox itself (hairpin). A port on one host
/// IPv6 address is there only.
#[test]
fn a_published_port_works_over_ipv6_from_every_path() {
    let h = TestHost::with_lan6("v6pub");
    // IPv6 forwarding stays on once on (with the uplink's subnet-router anycast routes): as a host has it.
    h.in_host(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    let empty = h.snapshot();
    h.ok(&["network", "create", "ds", "--ipv6"]);
    h.ok(&["network", "create", "other", "--ipv6"]);
    let (a, b, c) = (h.sb("a"), h.sb("b"), h.sb("c"));
    h.ok(&[
        "create",
        &a,
        "--network",
        "ds",
        "-p",
        "8080:80",
        "-p",
        &format!("[{HOST_IP6}]:8081:80"),
    ]);
    h.ok(&["create", &b, "--network", "ds"]);
    h.ok(&["create", &c, "--network", "other"]);
    let a6 = h.address6(&a);
    let ports = h.in_host(&["nft", "list", "map", "inet", "nsnet", "ports"]);
    let ports6 = h.in_host(&["nft", "list", "map", "inet", "nsnet", "ports6"]);
    let ports6_ip = h.in_host(&["nft", "list", "map", "inet", "nsnet", "ports6_ip"]);
    assert!(ports.contains("tcp . 8080 : "), "{ports}");
    assert!(
        ports6.contains(&format!("tcp . 8080 : {a6} . 80")),
        "{ports6}"
    );
    assert!(
        !ports6.contains("8081") && !ports.contains("8081"),
        "{ports}{ports6}"
    );
    assert!(
        ports6_ip.contains(&format!("{HOST_IP6} . tcp . 8081 : {a6} . 80")),
        "{ports6_ip}"
    );

    let to = |port| SocketAddr::new(v6(HOST_IP6).into(), port);
    let a_ns = h.sb_path("a");
    let gw = std::net::IpAddr::from(gateway6(&h, "ds"));
    assert_eq!(
        common::reach_any(&a_ns, 80, &h.lan_path(), to(8080)),
        Some(v6(LAN_IP6).into()),
        "LAN peer -> host over IPv6: the sandbox sees the real client"
    );
    assert_eq!(
        common::reach_any(&a_ns, 80, &h.lan_path(), to(8081)),
        Some(v6(LAN_IP6).into()),
        "LAN peer -> the port on the host's one IPv6 address"
    );
    let v4 = SocketAddr::new(common::HOST_IP.parse().expect("address"), 8081);
    assert_eq!(
        common::reach_any(&a_ns, 80, &h.lan_path(), v4),
        None,
        "[v6]:8081 is not on IPv4"
    );
    assert!(
        common::reach_any(&a_ns, 80, &h.host_path(), to(8080)).is_some(),
        "host -> own IPv6 address"
    );
    assert_eq!(
        common::reach_any(&a_ns, 80, &h.sb_path("b"), to(8080)),
        Some(gw),
        "same network"
    );
    assert_eq!(
        common::reach_any(&a_ns, 80, &h.sb_path("c"), to(8080)),
        Some(gw),
        "other network"
    );
    assert_eq!(
        common::reach_any(&a_ns, 80, &a_ns, to(8080)),
        Some(gw),
        "hairpin to itself"
    );
    // IPv4 as before.
    let v4 = SocketAddr::new(common::HOST_IP.parse().expect("address"), 8080);
    assert_eq!(
        common::reach_any(&a_ns, 80, &h.lan_path(), v4),
        Some(common::LAN_IP.parse().expect("address")),
        "LAN peer -> host over IPv4"
    );
    for sb in [&a, &b, &c] {
        h.ok(&["rm", sb]);
    }
    h.ok(&["network", "rm", "ds"]);
    h.ok(&["network", "rm", "other"]);
    assert_eq!(h.snapshot(), empty);
}

/// NAT66: a dual-stack network's sandbox reaches the LAN peer over IPv6 from the host's address (the ULA
/// subnet is masqueraded), while on a network made with `--ipv6-nat=false` it keeps its own address (the LAN
/// peer routes that subnet to the host) and nothing is masqueraded.
#[test]
fn nat66_by_default_and_the_sandboxs_own_address_without_it() {
    let h = TestHost::with_lan6("v6nat");
    h.in_host(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    let empty = h.snapshot();
    h.ok(&["network", "create", "nat", "--ipv6"]);
    h.ok(&["network", "create", "routed", "--ipv6", "--ipv6-nat=false"]);
    let (s, r) = (h.sb("s"), h.sb("r"));
    h.ok(&["create", &s, "--network", "nat"]);
    h.ok(&["create", &r, "--network", "routed"]);
    let masq = h.in_host(&["nft", "list", "set", "inet", "nsnet", "masq_nets6"]);
    let routed = json(&h.ok(&["network", "inspect", "routed", "--json"]))["ipv6"]["subnet"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!masq.contains(&routed), "{masq}");
    let lan = SocketAddr::new(v6(LAN_IP6).into(), 9000);
    assert_eq!(
        common::reach_any(&h.lan_path(), 9000, &h.sb_path("s"), lan),
        Some(v6(HOST_IP6).into()),
        "NAT66: the LAN peer sees the host's address"
    );
    let lan_ns = format!("--net={}", h.lan_path().display());
    common::sh(&[
        "nsenter", &lan_ns, "--", "ip", "-6", "route", "add", &routed, "via", HOST_IP6,
    ]);
    assert_eq!(
        common::reach_any(&h.lan_path(), 9000, &h.sb_path("r"), lan),
        Some(h.address6(&r).into()),
        "--ipv6-nat=false: the LAN peer sees the sandbox's own address"
    );
    // Routed to, the sandbox is still reached only through published ports (gateway mode nat).
    assert!(
        !probe::ping6(&h.lan_path(), h.address6(&r)).expect("ping"),
        "the LAN peer reached an unpublished sandbox directly"
    );
    common::sh(&[
        "nsenter", &lan_ns, "--", "ip", "-6", "route", "del", &routed, "via", HOST_IP6,
    ]);
    h.ok(&["rm", &s]);
    h.ok(&["rm", &r]);
    h.ok(&["network", "rm", "nat"]);
    h.ok(&["network", "rm", "routed"]);
    assert_eq!(h.snapshot(), empty);
}

/// The veth driver's sandboxes are guarded in `inet nsnet` (their packets never cross a bridge): a
/// forged IPv6 source never reaches the host, while the sandbox's own addresses do.
#[test]
fn a_point_to_point_sandbox_cannot_spoof_its_ipv6_source() {
    for backend in ["nftables", "iptables"] {
        point_to_point_ipv6_spoofing(backend);
    }
}

/// With iptables, the guard is ip6tables' raw table, on the port itself (`-i`).
fn point_to_point_ipv6_spoofing(backend: &'static str) {
    let mut h = TestHost::with_ipv6("v6p2ps");
    h.firewall = Some(backend);
    let empty = h.snapshot();
    h.ok(&["network", "create", "p", "--driver", "veth", "--ipv6"]);
    let s = h.sb("s");
    h.ok(&["create", &s, "--network", "p"]);
    let host_end = h.inspect(&s)["endpoints"][0]["host_interface"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let link: Value = json(&h.in_host(&["ip", "-j", "link", "show", "dev", &host_end]));
    let host_mac = common::parse_mac(link[0]["address"].as_str().unwrap_or_default());
    let gw = gateway6(&h, "p");
    let echoes = || -> u64 {
        h.in_host(&["cat", "/proc/net/snmp6"])
            .lines()
            .find_map(|l| l.strip_prefix("Icmp6InEchos"))
            .and_then(|v| v.trim().parse().ok())
            .expect("Icmp6InEchos")
    };
    let echo =
        |src: Ipv6Addr| common::icmpv6_frame(host_mac, h.mac(&s), src, gw, 128, 0, &[0, 9, 0, 1]);
    let send = |frames: &[Vec<u8>]| {
        probe::send_frames(&h.sb_path("s"), "eth0", frames).expect("send raw frames");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let before = echoes();
    send(&[echo(h.address6(&s)), echo(h.link_local6("s"))]);
    assert_eq!(echoes(), before + 2, "the sandbox's own sources pass");
    send(&[echo(v6("fd00::bad")), echo(v6("::")), echo(v6("fe80::bad"))]);
    assert_eq!(
        echoes(),
        before + 2,
        "{backend}: a forged IPv6 source reached the host"
    );
    h.ok(&["rm", &s]);
    h.ok(&["network", "rm", "p"]);
    assert!(common::within(std::time::Duration::from_secs(3), || !h
        .link_names()
        .contains(&host_end)));
    if backend == "iptables" {
        // iptables-nft leaves its (empty) built-in tables behind: nsnet's chains must be gone.
        for tool in ["iptables-save", "ip6tables-save"] {
            let text = h.in_host(&[tool]);
            assert!(!text.contains("NSNET"), "{tool}:\n{text}");
        }
        return;
    }
    assert_eq!(h.snapshot(), empty);
}

/// `udp_ports_and_ports_bound_to_one_host_address` and `reload_restores_a_flushed_ruleset_and_is_idempotent`
/// on a dual-stack network: a UDP port on the host's one IPv6 address answers the LAN peer with its real
/// address; after `nft flush ruleset`, `firewall reload` brings back the same ruleset (IPv6 sets, elements
/// and rules included) and the ports work again; a second reload changes nothing.
#[test]
fn a_flushed_dual_stack_ruleset_is_reloaded_and_udp_ports_work_over_ipv6() {
    let h = TestHost::with_lan6("v6rel");
    h.in_host(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    let empty = h.snapshot();
    h.ok(&["network", "create", "ds", "--ipv6"]);
    let s = h.sb("s");
    let udp = format!("[{HOST_IP6}]:5353:53/udp");
    h.ok(&["create", &s, "--network", "ds", "-p", &udp, "-p", "8080:80"]);
    let works = |h: &TestHost| {
        let server = probe::udp_server(
            &h.sb_path("s"),
            SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 53),
        )
        .expect("listen");
        let answer = probe::udp_hello(&h.lan_path(), SocketAddr::new(v6(HOST_IP6).into(), 5353));
        let udp = matches!((answer, server.wait()), (Ok(_), Ok(peer)) if peer.ip() == v6(LAN_IP6));
        let tcp = common::reach_any(
            &h.sb_path("s"),
            80,
            &h.lan_path(),
            SocketAddr::new(v6(HOST_IP6).into(), 8080),
        ) == Some(v6(LAN_IP6).into());
        udp && tcp
    };
    assert!(works(&h), "UDP and TCP over IPv6 before the flush");
    let content = |h: &TestHost| {
        let mut items: Vec<String> = h
            .in_host(&["nft", "-s", "list", "ruleset"])
            .split(['\n', ',', '{', '}'])
            .map(|s| s.trim().trim_start_matches("elements = ").to_string())
            .filter(|s| !s.is_empty())
            .collect();
        items.sort();
        items
    };
    let intact = content(&h);
    assert!(intact.iter().any(|l| l.contains("ports6_ip")), "{intact:?}");
    h.in_host(&["nft", "flush", "ruleset"]);
    h.ok(&["firewall", "reload"]);
    assert_eq!(content(&h), intact);
    assert!(works(&h), "UDP and TCP over IPv6 after the reload");
    h.ok(&["firewall", "reload"]);
    assert_eq!(content(&h), intact);
    h.ok(&["rm", &s]);
    h.ok(&["network", "rm", "ds"]);
    assert_eq!(h.snapshot(), empty);
}

/// `attacks.rs::a_sandbox_cannot_take_a_neighbours_mac` with IPv6 frames: a dual-stack sandbox that sends
/// from its neighbour's MAC (an ICMPv6 echo from its own address, an unsolicited neighbour advertisement for
/// its own address) does not move that MAC to its port, and the neighbour is still reached over IPv6.
#[test]
fn a_dual_stack_sandbox_cannot_take_a_neighbours_mac() {
    let h = TestHost::with_ipv6("v6mac");
    h.ok(&["network", "create", "ds", "--ipv6", "--bridge", "nsbr-mac6"]);
    let (attacker, victim) = (h.sb("a"), h.sb("v"));
    h.ok(&["create", &attacker, "--network", "ds"]);
    h.ok(&["create", &victim, "--network", "ds"]);
    let victim_mac = h.mac(&victim);
    let victim_port = h.inspect(&victim)["endpoints"][0]["host_interface"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let fdb_ports = || -> Vec<String> {
        let want = victim_mac.map(|b| format!("{b:02x}")).join(":");
        json(&h.in_host(&["bridge", "-j", "fdb", "show", "br", "nsbr-mac6"]))
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["mac"] == want.as_str())
            .filter_map(|e| e["ifname"].as_str().map(str::to_string))
            .collect()
    };
    let (own, own_ll, gw) = (
        h.address6(&attacker),
        h.link_local6("a"),
        gateway6(&h, "ds"),
    );
    let all_nodes = [0x33, 0x33, 0, 0, 0, 1];
    let frames = [
        common::icmpv6_frame(all_nodes, victim_mac, own, gw, 128, 0, &[0, 3, 0, 1]),
        common::icmpv6_frame(
            all_nodes,
            victim_mac,
            own_ll,
            v6("ff02::1"),
            136,
            0,
            &advert_body(own, victim_mac),
        ),
    ];
    for _ in 0..3 {
        probe::send_frames(&h.sb_path("a"), "eth0", &frames).expect("send raw frames");
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        fdb_ports(),
        vec![victim_port],
        "the bridge put the victim's MAC on another port"
    );
    assert!(
        probe::ping6(&h.host_path(), h.address6(&victim)).expect("ping"),
        "the host no longer reaches the victim over IPv6"
    );
    h.ok(&["rm", &attacker]);
    h.ok(&["rm", &victim]);
    h.ok(&["network", "rm", "ds"]);
}

// Names (C13): the `names.rs` twins over IPv6. The resolver stays on 127.0.0.11 in every sandbox; AAAA and
// `ip6.arpa` questions reach it over IPv4 loopback, as any question does.

/// An endpoint's IPv6 address (its `n`th), as dig prints it.
fn address6_of(h: &TestHost, sb: &str, n: usize) -> String {
    let ep = &h.inspect(sb)["endpoints"][n];
    ep["ipv6"]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .expect("an IPv6 address")
        .to_string()
}

/// An address's `ip6.arpa` name: 32 nibbles, lowest first.
fn arpa6(ip: Ipv6Addr) -> String {
    let n = u128::from(ip);
    let nibbles: Vec<String> = (0..32)
        .map(|i| format!("{:x}", (n >> (4 * i)) & 0xf))
        .collect();
    format!("{}.ip6.arpa", nibbles.join("."))
}

/// `names.rs::names_resolve_within_a_network_and_never_across` on dual-stack networks: AAAA and `dig -x` of
/// an IPv6 address answer within a network and never across; a name with no IPv6 address has none (NOERROR,
/// empty), and A still answers IPv4.
#[test]
fn dual_stack_names_resolve_within_a_network_and_never_across() {
    let h = TestHost::with_ipv6("v6names");
    let (a, b, c, d, e) = (h.sb("a"), h.sb("b"), h.sb("c"), h.sb("d"), h.sb("e"));
    h.ok(&["network", "create", "front", "--ipv6"]);
    h.ok(&["network", "create", "back", "--ipv6"]);
    h.ok(&["network", "create", "plain"]);
    h.ok(&["create", &a, "--network", "front"]);
    h.ok(&["create", &b, "--network", "front", "--alias", "web"]);
    h.ok(&["create", &c, "--network", "back", "--alias", "db"]);
    // d is on both, its second endpoint through attach; e on the IPv4 network and front.
    h.ok(&["create", &d, "--network", "front"]);
    h.ok(&["attach", &d, "--network", "back", "--alias", "cache"]);
    h.ok(&["create", &e, "--network", "plain"]);
    h.ok(&["attach", &e, "--network", "front"]);
    let (b6, c6) = (h.address6(&b), h.address6(&c));

    for name in [b.as_str(), "web", "WEB."] {
        let r = dig(&h, &a, &[name, "AAAA"]);
        assert_eq!(
            (r.status.as_str(), r.answers.clone()),
            ("NOERROR", vec![b6.to_string()]),
            "{name}"
        );
    }
    assert_eq!(
        dig(&h, &a, &["web"]).answers,
        vec![address4(&h, &b).to_string()]
    );
    let r = dig(&h, &a, &["-x", &b6.to_string()]);
    assert_eq!(r.answers, vec![format!("{b}.")], "{r:?}");
    // As the C library asks: both families of a name.
    let got = h.ok(&["exec", &a, "--", "getent", "ahostsv6", "web"]);
    assert!(got.starts_with(&b6.to_string()), "{got}");
    // e's endpoint on front is its second; from front, e has that address only, AAAA included.
    assert_eq!(
        dig(&h, &a, &[&e, "AAAA"]).answers,
        vec![address6_of(&h, &e, 1)]
    );

    // Across networks: NXDOMAIN for AAAA as for A, and never the other network's address.
    for (from, name) in [(&a, c.as_str()), (&a, "db"), (&a, "cache"), (&c, "web")] {
        let r = dig(&h, from, &[name, "AAAA"]);
        assert_eq!(r.status, "NXDOMAIN", "{from} asking for {name}: {r:?}");
    }
    // c's address from a: not local to a, so it goes the way of other names (no upstream here: NXDOMAIN).
    let r = dig(&h, &a, &["-x", &c6.to_string()]);
    assert!(r.answers.is_empty(), "{r:?}");
    assert_eq!(dig(&h, &d, &[&c, "AAAA"]).answers, vec![c6.to_string()]);
    assert_eq!(
        dig(&h, &c, &["cache", "AAAA"]).answers,
        vec![address6_of(&h, &d, 1)]
    );
    assert_eq!(
        dig(&h, &c, &["-x", &address6_of(&h, &d, 1)]).answers,
        vec![format!("{d}.")]
    );
    // On the IPv4 network, e has no IPv6 address: no data, not NXDOMAIN; A answers.
    let f = h.sb("f");
    h.ok(&["create", &f, "--network", "plain"]);
    let r = dig(&h, &f, &[&e, "AAAA"]);
    assert_eq!(
        (r.status.as_str(), r.answers.len()),
        ("NOERROR", 0),
        "{r:?}"
    );
    assert_eq!(
        dig(&h, &f, &[&e]).answers,
        vec![address4(&h, &e).to_string()]
    );

    for sb in [&a, &b, &c, &d, &e, &f] {
        h.ok(&["rm", sb]);
    }
    assert!(
        common::within(std::time::Duration::from_secs(3), || h
            .resolver_pid()
            .is_none()),
        "the resolver outlived its last sandbox"
    );
    assert!(h.etc_netns().is_empty());
    for n in ["front", "back", "plain"] {
        h.ok(&["network", "rm", n]);
    }
}

/// `names.rs::a_shared_alias_answers_every_address_turning_each_time` for AAAA.
#[test]
fn a_shared_alias_answers_every_ipv6_address_turning_each_time() {
    let h = TestHost::with_ipv6("v6alias");
    h.ok(&["network", "create", "n", "--ipv6"]);
    let names: Vec<String> = (1..=3).map(|i| h.sb(&format!("w{i}"))).collect();
    for n in &names {
        h.ok(&["create", n, "--network", "n", "--alias", "web"]);
    }
    let mut want: Vec<String> = names.iter().map(|n| h.address6(n).to_string()).collect();
    want.sort();
    let mut firsts = Vec::new();
    for _ in 0..3 {
        let r = dig(&h, &names[0], &["web", "AAAA"]);
        let mut got = r.answers.clone();
        got.sort();
        assert_eq!(got, want, "{r:?}");
        firsts.push(r.answers[0].clone());
    }
    firsts.sort();
    assert_eq!(firsts, want, "each address comes first in turn");
    for n in &names {
        h.ok(&["rm", n]);
    }
    h.ok(&["network", "rm", "n"]);
}

/// `names.rs::a_name_answers_when_create_returns_and_is_gone_when_rm_returns` for AAAA and `ip6.arpa`.
#[test]
fn a_dual_stack_name_answers_when_create_returns_and_is_gone_when_rm_returns() {
    let h = TestHost::with_ipv6("v6nowait");
    h.ok(&["network", "create", "n", "--ipv6"]);
    let (asker, x) = (h.sb("asker"), h.sb("x"));
    h.ok(&["create", &asker, "--network", "n"]);
    for round in 0..3 {
        h.ok(&["create", &x, "--network", "n"]);
        let x6 = h.address6(&x).to_string();
        let r = dig(&h, &asker, &[&x, "AAAA"]);
        assert_eq!(r.answers, vec![x6.clone()], "round {round}: {r:?}");
        assert_eq!(dig(&h, &asker, &["-x", &x6]).answers, vec![format!("{x}.")]);
        h.ok(&["rm", &x]);
        let r = dig(&h, &asker, &[&x, "AAAA"]);
        assert_eq!(r.status, "NXDOMAIN", "round {round}: {r:?}");
        assert!(dig(&h, &asker, &["-x", &x6]).answers.is_empty());
    }
    h.ok(&["rm", &asker]);
    h.ok(&["network", "rm", "n"]);
}

/// `names.rs::a_sandbox_or_a_network_can_name_its_own_upstream` with an IPv6 upstream (dnsmasq on the LAN
/// peer's IPv6 address), and the host's resolv.conf naming one; a scoped or link-local upstream is refused in
/// one line, changing nothing.
#[test]
fn an_ipv6_upstream_answers_for_a_sandbox_a_network_and_the_host() {
    let h = TestHost::with_lan6("v6up53");
    let dnsmasq = common::dns::dnsmasq(&h, LAN_IP6);
    h.ok(&["network", "create", "n", "--ipv6"]);
    h.ok(&["network", "create", "m", "--ipv6", "--dns", LAN_IP6]);
    let (a, b, c) = (h.sb("a"), h.sb("b"), h.sb("c"));
    h.ok(&["create", &a, "--network", "n", "--dns", LAN_IP6]);
    h.ok(&["create", &b, "--network", "n"]);
    h.ok(&["create", &c, "--network", "m"]);
    let net = json(&h.ok(&["network", "inspect", "m", "--json"]));
    assert_eq!(net["dns_servers"], serde_json::json!([LAN_IP6]), "{net}");
    for sb in [&a, &c] {
        assert_eq!(
            dig(&h, sb, &["www.example.test"]).answers,
            vec!["192.0.2.7".to_string()],
            "{sb}"
        );
        assert_eq!(
            dig(&h, sb, &["www.example.test", "AAAA"]).answers,
            vec!["2001:db8::7".to_string()]
        );
        // Over TCP, forwarded over TCP to the IPv6 server.
        assert_eq!(
            dig(&h, sb, &["+tcp", "www.example.test"]).answers,
            vec!["192.0.2.7".to_string()]
        );
    }
    // b has no server to ask: NXDOMAIN; then the host's resolv.conf names the IPv6 server.
    assert_eq!(dig(&h, &b, &["www.example.test"]).status, "NXDOMAIN");
    std::fs::write(h.resolv_conf(), format!("nameserver {LAN_IP6}\n")).expect("resolv.conf");
    assert!(
        common::within(std::time::Duration::from_secs(10), || dig(
            &h,
            &b,
            &["www.example.test"]
        )
        .answers
            == vec!["192.0.2.7".to_string()]),
        "the host's IPv6 upstream is used"
    );

    // Refused in one line, nothing changed: link-local, scoped and multicast servers.
    let before = h.snapshot();
    let x = h.sb("x");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["create", &x, "--network", "n", "--dns", "fe80::1"],
            "link-local",
        ),
        (
            vec!["create", &x, "--network", "n", "--dns", "fe80::1%uplink0"],
            "scoped",
        ),
        (
            vec!["network", "create", "o", "--dns", "fe80::53"],
            "link-local",
        ),
        (
            vec!["network", "create", "o", "--dns", "fe80::53%2"],
            "scoped",
        ),
        (
            vec!["create", &x, "--network", "n", "--dns", "ff02::1"],
            "not the address of a DNS server",
        ),
    ];
    for (args, want) in cases {
        let out = h.nsnet(&args);
        let line = common::check_one_line_failure(&args, out);
        assert!(line.contains(want), "{args:?}: {line}");
        assert_eq!(
            h.snapshot(),
            before,
            "{args:?} changed something:\n{}",
            before.diff(&h.snapshot())
        );
    }
    for sb in [&a, &b, &c] {
        h.ok(&["rm", sb]);
    }
    h.ok(&["network", "rm", "n"]);
    h.ok(&["network", "rm", "m"]);
    drop(dnsmasq);
}

/// `names.rs::internal_networks_resolve_their_own_names_and_forward_nothing` on a dual-stack internal
/// network, with the host's upstream on IPv6: its own names (AAAA, `ip6.arpa`) answer, nothing goes out.
#[test]
fn internal_dual_stack_networks_resolve_their_own_names_and_forward_nothing() {
    let h = TestHost::with_lan6("v6intern");
    let dnsmasq = common::dns::dnsmasq(&h, LAN_IP6);
    std::fs::write(h.resolv_conf(), format!("nameserver {LAN_IP6}\n")).expect("resolv.conf");
    h.ok(&["network", "create", "in", "--internal", "--ipv6"]);
    let (a, b) = (h.sb("a"), h.sb("b"));
    h.ok(&["create", &a, "--network", "in"]);
    h.ok(&["create", &b, "--network", "in"]);
    let b6 = h.address6(&b).to_string();
    assert_eq!(dig(&h, &a, &[&b, "AAAA"]).answers, vec![b6.clone()]);
    assert_eq!(dig(&h, &a, &["-x", &b6]).answers, vec![format!("{b}.")]);
    assert_eq!(
        dig(&h, &a, &["www.example.test", "AAAA"]).status,
        "NXDOMAIN"
    );
    let r = dig(&h, &a, &["-x", "2001:db8::7"]);
    assert_eq!(
        (r.status.as_str(), r.answers.len()),
        ("NXDOMAIN", 0),
        "{r:?}"
    );
    h.ok(&["rm", &a]);
    h.ok(&["rm", &b]);
    h.ok(&["network", "rm", "in"]);
    drop(dnsmasq);
}

/// A DNS query with raw `labels` (any bytes) and `qtype`, with `id`.
fn raw_query(id: u16, labels: &[&[u8]], qtype: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in labels {
        q.push(u8::try_from(label.len()).expect("short label"));
        q.extend_from_slice(label);
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    q
}

/// `names.rs::a_hostile_sandbox_cannot_crash_or_turn_the_resolver` with malformed `ip6.arpa` questions: each
/// gets NXDOMAIN or FORMERR at once (never another sandbox's name, never a crash, nothing sent upstream),
/// over UDP and TCP; the same resolver answers afterwards.
#[test]
fn a_hostile_sandbox_sending_malformed_ip6_arpa_questions_does_not_break_the_resolver() {
    use std::io::{Read as _, Write as _};
    let h = TestHost::with_lan6("v6hostile");
    // The host's upstream: a socket on the LAN peer that never answers and counts what reaches it (a
    // forwarded question would come back SERVFAIL, and show up here).
    let lan = nsnet_core::kernel::netns::open(&h.lan_path()).expect("the LAN peer");
    let upstream = nsnet_core::kernel::netns::run_in(&lan, || {
        std::net::UdpSocket::bind(SocketAddr::new(v6(LAN_IP6).into(), 53)).expect("bind")
    })
    .expect("enter");
    upstream.set_nonblocking(true).expect("nonblocking");
    std::fs::write(h.resolv_conf(), format!("nameserver {LAN_IP6}\n")).expect("resolv.conf");
    h.ok(&["network", "create", "n", "--ipv6"]);
    let (a, b) = (h.sb("a"), h.sb("b"));
    h.ok(&["create", &a, "--network", "n"]);
    h.ok(&["create", &b, "--network", "n"]);
    let pid = h.resolver_pid().expect("a resolver");
    let b6 = h.address6(&b);
    let name = arpa6(b6);
    let nibbles: Vec<&str> = name.trim_end_matches(".ip6.arpa").split('.').collect();
    let with = |edit: &dyn Fn(&mut Vec<Vec<u8>>)| {
        let mut labels: Vec<Vec<u8>> = nibbles.iter().map(|n| n.as_bytes().to_vec()).collect();
        edit(&mut labels);
        labels.push(b"ip6".to_vec());
        labels.push(b"arpa".to_vec());
        labels
    };
    const PTR: u16 = 12;
    let hostile: Vec<Vec<Vec<u8>>> = vec![
        with(&|l| {
            l.remove(0);
        }), // 31 nibbles
        with(&|l| l.insert(0, b"0".to_vec())), // 33
        with(&|l| l[0] = b"00".to_vec()),
        with(&|l| l[0] = b"g".to_vec()),
        with(&|l| l[0] = b"1.2".to_vec()), // a dot inside a label
        with(&|l| l[0] = vec![0xff]),
        with(&|l| l[0] = vec![0]),
        with(&|l| l[5] = b"-".to_vec()),
        with(&|l| l.truncate(1)),
        with(&|l| l.extend((0..60).map(|_| b"f".to_vec()))), // 92 nibbles, still a legal name
    ];
    let fd = nsnet_core::kernel::netns::open(&h.sb_path("a")).expect("a's namespace");
    let (udp, tcp) = nsnet_core::kernel::netns::run_in(&fd, || {
        let udp = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
        udp.connect("127.0.0.11:53").expect("connect");
        udp.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .expect("timeout");
        let tcp = std::net::TcpStream::connect("127.0.0.11:53").expect("tcp");
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .expect("timeout");
        (udp, tcp)
    })
    .expect("enter");
    let mut buf = [0u8; 1500];
    for (i, labels) in hostile.iter().enumerate() {
        let refs: Vec<&[u8]> = labels.iter().map(Vec::as_slice).collect();
        let id = 0x100 + u16::try_from(i).expect("few");
        udp.send(&raw_query(id, &refs, PTR)).expect("send");
        let n = udp.recv(&mut buf).expect("an answer to each question");
        let rcode = buf[3] & 0x0f;
        assert_eq!(u16::from_be_bytes([buf[0], buf[1]]), id, "case {i}");
        assert!(rcode == 3 || rcode == 1, "case {i}: rcode {rcode}");
        assert_eq!(&buf[6..8], &[0, 0], "case {i}: an answer record");
        assert!(n >= 12);
    }
    // A compression pointer into itself, under ip6.arpa.
    let mut looped = raw_query(0x200, &[b"0"], PTR);
    looped.truncate(12);
    looped.extend_from_slice(&[1, b'0', 0xc0, 12, 0, 12, 0, 1]);
    udp.send(&looped).expect("send");
    let _ = udp.recv(&mut buf).expect("FORMERR");
    assert_eq!(buf[3] & 0x0f, 1, "FORMERR");
    // Over TCP: a malformed one, then the upper-case form of b's name (case does not matter in DNS).
    let mut tcp = tcp;
    let upper: Vec<Vec<u8>> = with(&|l| {
        for n in l.iter_mut() {
            n.make_ascii_uppercase();
        }
    });
    for (id, labels, want) in [(0x300u16, &hostile[0], 3u8), (0x301, &upper, 0)] {
        let refs: Vec<&[u8]> = labels.iter().map(Vec::as_slice).collect();
        let q = raw_query(id, &refs, PTR);
        let mut framed = u16::try_from(q.len())
            .expect("short")
            .to_be_bytes()
            .to_vec();
        framed.extend_from_slice(&q);
        tcp.write_all(&framed).expect("write");
        let mut len = [0u8; 2];
        tcp.read_exact(&mut len).expect("a length");
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
        tcp.read_exact(&mut answer).expect("an answer");
        assert_eq!(u16::from_be_bytes([answer[0], answer[1]]), id);
        assert_eq!(answer[3] & 0x0f, want, "{id:#x}");
    }
    drop(tcp);
    let mut got = [0u8; 512];
    assert!(
        upstream.recv(&mut got).is_err(),
        "a malformed question went upstream"
    );
    // While a well-formed name that is not local does go there (so the check above can see one).
    let far = arpa6(v6("2001:db8::7"));
    let far: Vec<&[u8]> = far.split('.').map(str::as_bytes).collect();
    udp.send(&raw_query(0x400, &far, PTR)).expect("send");
    assert!(
        common::within(std::time::Duration::from_secs(2), || upstream
            .recv(&mut got)
            .is_ok()),
        "a well-formed name was not forwarded"
    );
    // Still the same resolver, answering.
    assert_eq!(
        dig(&h, &a, &["-x", &b6.to_string()]).answers,
        vec![format!("{b}.")]
    );
    assert_eq!(dig(&h, &a, &[&b, "AAAA"]).answers, vec![b6.to_string()]);
    assert_eq!(h.resolver_pid(), Some(pid));
    h.ok(&["rm", &a]);
    h.ok(&["rm", &b]);
    h.ok(&["network", "rm", "n"]);
}

/// (packets the host end of `sb`'s veth transmitted, packets `sb`'s eth0 received).
fn port_and_eth0(h: &TestHost, sb: &str) -> (u64, u64) {
    let packets = |text: &str, dir: &str| -> u64 {
        let v: Value = serde_json::from_str(text).expect("ip -s -j");
        v[0]["stats64"][dir]["packets"].as_u64().expect("packets")
    };
    let port = h.inspect(sb)["endpoints"][0]["host_interface"]
        .as_str()
        .expect("host interface")
        .to_string();
    let tx = packets(
        &h.in_host(&["ip", "-s", "-j", "link", "show", "dev", &port]),
        "tx",
    );
    let rx = packets(
        &common::sh(&["ip", "-n", sb, "-s", "-j", "link", "show", "dev", "eth0"]),
        "rx",
    );
    (tx, rx)
}

/// How many packets `to`'s bridge port transmitted and its eth0 received while `f` ran.
fn through(h: &TestHost, to: &str, f: impl FnOnce()) -> (u64, u64) {
    let before = port_and_eth0(h, to);
    f();
    let after = port_and_eth0(h, to);
    (after.0 - before.0, after.1 - before.1)
}

/// 40 TCP and 40 UDP greetings from `from` to `to`'s IPv6 address: 200 packets or more reach `to`.
fn tcp_and_udp6(h: &TestHost, from: &str, to: &str) {
    let dst = h.address6(to);
    let (server, client) = (
        PathBuf::from("/run/netns").join(to),
        PathBuf::from("/run/netns").join(from),
    );
    for port in 7000..7040 {
        let srv = probe::tcp_server(&server, SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port))
            .expect("listen");
        probe::tcp_hello(&client, SocketAddr::new(dst.into(), port)).expect("tcp over IPv6");
        assert!(srv.wait().is_ok());
        let srv = probe::udp_server(&server, SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port))
            .expect("bind");
        probe::udp_hello(&client, SocketAddr::new(dst.into(), port)).expect("udp over IPv6");
        assert!(srv.wait().is_ok());
    }
}

/// `n` UDP datagrams to `to`'s IPv6 address from `from`'s namespace, sent from address `src` (answered or
/// not: nothing waits for a reply).
fn datagrams6(h: &TestHost, from: &str, src: Ipv6Addr, to: &str, n: usize) {
    let ns =
        nsnet_core::kernel::netns::open(&PathBuf::from("/run/netns").join(from)).expect("open");
    let sock = nsnet_core::kernel::netns::run_in(&ns, || {
        std::net::UdpSocket::bind(SocketAddr::new(src.into(), 0))
    })
    .expect("enter")
    .expect("bind");
    let dst = SocketAddr::new(h.address6(to).into(), 7100);
    for _ in 0..n {
        sock.send_to(b"hello", dst).expect("send");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// The fast path's entries for `ip` (any bridge's).
fn fast_path_lines(h: &TestHost, ip: impl std::fmt::Display) -> Vec<String> {
    let ip = format!(" fast path: {ip} -> ");
    h.fast_path()
        .into_iter()
        .filter(|l| l.contains(&ip))
        .collect()
}

/// What CHECK (`Nsnet::check_endpoint`, CNI `CHECK`'s) finds wrong with `sb` on `net`.
fn check(h: &TestHost, sb: &str, net: &str) -> Vec<String> {
    let nsnet = nsnet_core::ops::Nsnet::new(h.state.clone(), false);
    let host = nsnet_core::kernel::netns::open(&h.host_path()).expect("host namespace");
    nsnet_core::kernel::netns::run_in(&host, || nsnet.check_endpoint(sb, net))
        .expect("enter")
        .expect("check")
        .0
}

/// `fastpath.rs::sandbox_traffic_skips_the_bridge_only_where_the_bridge_would_forward_it` over IPv6: TCP and
/// UDP between two dual-stack sandboxes go veth to veth (the receiver's bridge port never transmits them),
/// over both families; ICMPv6 (ping6, and with it neighbour discovery) still crosses the bridge, and so does a
/// forged source address (the bridge's rules judge it: nothing reaches the receiver that its port did not
/// send). `--fast-path=false` sends it all through the bridge. CHECK reports a missing IPv6 entry, and a
/// detach (its veth retired: a process holds the namespace) and `rm` leave no entry behind.
#[test]
fn dual_stack_tcp_and_udp_skip_the_bridge_and_icmpv6_does_not() {
    let h = TestHost::with_ipv6("v6fast");
    let empty = h.snapshot();
    h.ok(&["network", "create", "fast", "--ipv6", "--bridge", "nsbr-f6"]);
    h.ok(&[
        "network",
        "create",
        "slow",
        "--ipv6",
        "--bridge",
        "nsbr-s6",
        "--fast-path=false",
    ]);
    let (a, b, c, d) = (h.sb("a"), h.sb("b"), h.sb("c"), h.sb("d"));
    for (sb, net) in [(&a, "fast"), (&b, "fast"), (&c, "slow"), (&d, "slow")] {
        h.ok(&["create", sb, "--network", net]);
    }
    // Both families of a and b; nobody on the slow network.
    for sb in [&a, &b] {
        assert_eq!(
            fast_path_lines(&h, h.address6(sb)).len(),
            1,
            "{:#?}",
            h.fast_path()
        );
        assert_eq!(
            fast_path_lines(&h, address4(&h, sb)).len(),
            1,
            "{:#?}",
            h.fast_path()
        );
    }
    assert_eq!(
        h.fast_path()
            .iter()
            .filter(|l| l.contains("fast path:"))
            .count(),
        4,
        "{:#?}",
        h.fast_path()
    );
    assert!(check(&h, &a, "fast").is_empty());

    // TCP and UDP: b receives them without its bridge port sending them (neighbour discovery at most); over
    // the slow network every one crosses the bridge.
    let (port_tx, rx) = through(&h, &b, || tcp_and_udp6(&h, &a, &b));
    assert!(rx >= 200, "b received {rx}");
    assert!(port_tx < 20, "fast: b's bridge port sent {port_tx} of {rx}");
    let (port_tx, rx) = through(&h, &a, || tcp_and_udp6(&h, &b, &a));
    assert!(
        rx >= 200 && port_tx < 20,
        "b -> a: port {port_tx}, a got {rx}"
    );
    let (port_tx, rx) = through(&h, &d, || tcp_and_udp6(&h, &c, &d));
    assert!(
        port_tx >= 200 && rx >= 200,
        "slow: d's port sent {port_tx}, d got {rx}"
    );

    // ping6 is ICMPv6: the bridge carries it, fast path or not.
    let ping6 = |from: &str, to: &str| {
        let dst = h.address6(to).to_string();
        let ns = format!("--net=/run/netns/{from}");
        let out = common::sh(&[
            "nsenter", &ns, "ping", "-6", "-q", "-c", "100", "-i", "0.002", "-W", "1", &dst,
        ]);
        assert!(out.contains("100 received"), "{from} -> {to}: {out}");
    };
    let (port_tx, rx) = through(&h, &b, || ping6(&a, &b));
    assert!(
        port_tx >= 100 && rx >= 100,
        "ping6: b's port sent {port_tx}, b got {rx}"
    );

    // A forged source address: not the fast path's to take. Until the bridge's IPv6 anti-spoofing (C8)
    // drops them, the bridge delivers them; either way, through b's port.
    let forged = Ipv6Addr::from(u128::from(h.address6(&a)) + 0x77);
    let ns = format!("--net=/run/netns/{a}");
    let forged_cidr = format!("{forged}/64");
    common::sh(&[
        "nsenter",
        &ns,
        "ip",
        "-6",
        "addr",
        "add",
        &forged_cidr,
        "dev",
        "eth0",
        "nodad",
    ]);
    let (port_tx, rx) = through(&h, &b, || datagrams6(&h, &a, forged, &b, 50));
    assert!(
        rx <= port_tx + 5,
        "forged: b got {rx}, its port sent only {port_tx}"
    );
    common::sh(&[
        "nsenter",
        &ns,
        "ip",
        "-6",
        "addr",
        "del",
        &forged_cidr,
        "dev",
        "eth0",
    ]);
    // The same from a's own address is the fast path's.
    let (port_tx, rx) = through(&h, &b, || datagrams6(&h, &a, h.address6(&a), &b, 50));
    assert!(
        rx >= 50 && port_tx < 10,
        "a's own: port {port_tx}, b got {rx}"
    );

    // CHECK reports a missing IPv6 entry, as it does an IPv4 one.
    let a6 = h.address6(&a);
    let entry = h.with_fast_path("nsbr-f6", |fp, _| {
        let entry = fp
            .entry(a6)
            .expect("entry")
            .expect("a's IPv6 is on the fast path");
        fp.remove(a6).expect("remove");
        entry
    });
    let problems = check(&h, &a, "fast");
    assert!(
        problems.len() == 1 && problems[0].contains(&format!("the fast path does not send {a6}")),
        "{problems:?}"
    );
    h.with_fast_path("nsbr-f6", |fp, nl| {
        fp.add(nl, entry.0, a6, entry.1).expect("put back")
    });
    assert!(check(&h, &a, "fast").is_empty());

    // Detached while a process keeps its namespace (the veth is retired): both entries go; attached
    // again, both come back.
    let mut inside = std::process::Command::new("nsenter")
        .args([ns.as_str(), "--", "sleep", "60"])
        .spawn()
        .expect("sleep inside a");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let a4 = address4(&h, &a);
    h.ok(&["detach", &a, "--network", "fast"]);
    assert!(fast_path_lines(&h, a6).is_empty() && fast_path_lines(&h, a4).is_empty());
    h.ok(&["attach", &a, "--network", "fast"]);
    assert_eq!(
        fast_path_lines(&h, h.address6(&a)).len(),
        1,
        "{:#?}",
        h.fast_path()
    );
    assert!(check(&h, &a, "fast").is_empty());
    let _ = inside.kill();
    let _ = inside.wait();

    // Removing b takes both its entries away; a no longer reaches its IPv6 address.
    let b6 = h.address6(&b);
    h.ok(&["rm", &b]);
    assert!(fast_path_lines(&h, b6).is_empty(), "{:#?}", h.fast_path());
    h.settle();
    assert!(
        !probe::ping6(&h.sb_path("a"), b6).expect("ping"),
        "a still reaches b"
    );
    assert!(
        probe::tcp_hello(&h.sb_path("a"), SocketAddr::new(b6.into(), 7000)).is_err(),
        "a still reaches b over TCP"
    );

    for sb in [&a, &c, &d] {
        h.ok(&["rm", sb]);
    }
    h.ok(&["network", "rm", "fast"]);
    h.ok(&["network", "rm", "slow"]);
    h.settle();
    assert_eq!(h.snapshot(), empty);
}

/// Frames the interface `eth0` of sandbox `sb` has received.
fn rx_packets(h: &TestHost, sb: &str) -> u64 {
    let out = common::sh(&["ip", "-n", &h.sb(sb), "-s", "-j", "link", "show", "eth0"]);
    let v: Value = serde_json::from_str(&out).expect("ip -j");
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .expect("rx packets")
}

/// New sandboxes send nothing an idle neighbour receives, on a dual-stack network as on an IPv4 one: no DAD,
/// no MLD report, no router solicitation reaches another port (each is dropped at its own port, whose guard
/// is in before its veth has a carrier), and the bridge floods nothing. (A sandbox removed within a second of
/// its creation may still get a delayed MLD report out: its guard goes with it, its veth a moment later.)
#[test]
fn new_sandboxes_send_nothing_to_an_idle_neighbour() {
    let h = TestHost::with_ipv6("v6quiet");
    h.ok(&[
        "network",
        "create",
        "ds",
        "--ipv6",
        "--subnet",
        "10.78.0.0/24",
        "--dns=false",
    ]);
    h.ok(&[
        "network",
        "create",
        "v4",
        "--subnet",
        "10.78.1.0/24",
        "--dns=false",
    ]);
    for net in ["ds", "v4"] {
        let idle = h.sb(&format!("idle-{net}"));
        h.ok(&["create", &idle, "--network", net]);
    }
    // What an idle sandbox got while it and its network came up is not the question (the bridge sends its
    // own MLD and IGMP reports for a second or two after it gets its addresses): count from here.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let before = [rx_packets(&h, "idle-ds"), rx_packets(&h, "idle-v4")];
    for i in 0..20 {
        for net in ["ds", "v4"] {
            h.ok(&["create", &h.sb(&format!("{net}{i}")), "--network", net]);
        }
    }
    // MLD reports repeat for a second or two after an address appears: give them time to show.
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(
        [rx_packets(&h, "idle-ds"), rx_packets(&h, "idle-v4")],
        before,
        "an idle sandbox received frames while 20 others came up (dual-stack, IPv4)"
    );
    for i in 0..20 {
        for net in ["ds", "v4"] {
            h.ok(&["rm", &h.sb(&format!("{net}{i}"))]);
        }
    }
    for net in ["ds", "v4"] {
        h.ok(&["rm", &h.sb(&format!("idle-{net}"))]);
        h.ok(&["network", "rm", net]);
    }
}
