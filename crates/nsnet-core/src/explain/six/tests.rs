//! Unit tests of the IPv6 walk: a dual-stack and an IPv6-only network with the kernel agreeing, then each
//! kernel object the walk checks taken away in turn.
use super::super::{explain, HostRoute, Protocol, Query};
use super::*;
use crate::model::{Ep6, Mac, Net6, Sandbox};

fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("test address")
}

fn net(name: &str, v4: Option<&str>, subnet6: &str, nat: bool) -> Network {
    let subnet6: Ipv6Net = subnet6.parse().expect("subnet");
    let mut seg = subnet6.network().segments();
    seg[7] = 1;
    let gw6 = Ipv6Addr::from(seg);
    let mut n = match v4 {
        Some(s) => {
            let s: ipnet::Ipv4Net = s.parse().expect("subnet");
            Network::bridge(
                name,
                s,
                s.hosts().next().expect("a host"),
                &format!("nsbr-{name}"),
            )
        }
        None => {
            let mut n = Network::bridge(
                name,
                "10.0.0.0/24".parse().expect("x"),
                "10.0.0.1".parse().expect("x"),
                &format!("nsbr-{name}"),
            );
            n.subnet = None;
            n.gateway = None;
            n
        }
    };
    n.ipv6 = Some(Net6 {
        subnet: subnet6,
        gateway: gw6,
        nat,
    });
    n
}

fn sandbox(name: &str, n: &Network, last: u16, ports: Vec<PortMapping>) -> SandboxFacts {
    let v6net = n.ipv6.expect("ipv6");
    let mut seg = v6net.subnet.network().segments();
    seg[7] = last;
    let ip = Ipv6Addr::from(seg);
    let address = n.subnet.map(|s| {
        let o = s.network().octets();
        ipnet::Ipv4Net::new(
            std::net::Ipv4Addr::new(o[0], o[1], o[2], u8::try_from(last).unwrap_or(0)),
            24,
        )
        .expect("prefix")
    });
    SandboxFacts {
        sandbox: Sandbox {
            name: name.into(),
            netns: format!("/run/netns/{name}").into(),
            owned: true,
            netns_id: None,
            cni: false,
            endpoints: vec![Endpoint {
                network: n.name.clone(),
                interface: "eth0".into(),
                host_interface: format!("veth{name}"),
                mac: Mac::for_ipv6(ip),
                address,
                gateway: n.gateway,
                default_route: true,
                mtu: 1500,
                ports,
                removing: false,
                aliases: vec![],
                ipv6: Some(Ep6 {
                    address: Ipv6Net::new(ip, 64).expect("prefix"),
                    gateway: v6net.gateway,
                }),
            }],
            removing: false,
            dns_servers: vec![],
        },
        up: true,
    }
}

fn port(host_ip: Option<&str>, host_port: u16, container_port: u16) -> PortMapping {
    PortMapping {
        host_ip: host_ip.map(|s| s.parse().expect("ip")),
        host_port,
        container_port,
        count: 1,
        protocol: Proto::Tcp,
    }
}

fn inside(sb: &SandboxFacts) -> Inside6 {
    let ep = &sb.sandbox.endpoints[0];
    let e6 = ep.ipv6.expect("ipv6");
    Inside6 {
        addresses: vec![
            ("eth0".into(), e6.address),
            (
                "eth0".into(),
                Ipv6Net::new(ep.mac.link_local6(), 64).expect("ll"),
            ),
        ],
        default_routes: vec![("eth0".into(), Some(e6.gateway))],
    }
}

/// Dual-stack `d` (NAT66) with a (8080 -> 80 on every address, [::1]:9090 -> 90) and b; IPv6-only `o`
/// (no NAT66) with c; the host's uplink 2001:db8:1::48/64 with a LAN peer ::26; the kernel agreeing.
fn world() -> Facts {
    let d = net("d", Some("172.16.1.0/24"), "fd00:1::/64", true);
    let o = net("o", None, "fd00:2::/64", false);
    let sandboxes = vec![
        sandbox(
            "a",
            &d,
            2,
            vec![port(None, 8080, 80), port(Some("::1"), 9090, 90)],
        ),
        sandbox("b", &d, 3, vec![]),
        sandbox("c", &o, 2, vec![]),
    ];
    let mut six = Facts6 {
        host_addresses: vec![("uplink0".into(), "2001:db8:1::48/64".parse().expect("a"))],
        routes: vec![(
            v6("2001:db8:1::26"),
            Some(HostRoute6 {
                interface: "uplink0".into(),
                gateway: None,
            }),
        )],
        missing: Some(vec![]),
        loopback6_ports: Some(vec![(6, 9090), (6, 8080)]),
        ..Facts6::default()
    };
    for n in [&d, &o] {
        for a in gateway_addresses6(n) {
            if let IpNet::V6(a) = a {
                six.host_addresses.push((n.interface.clone(), a));
            }
        }
    }
    for sb in &sandboxes {
        six.inside.insert(sb.sandbox.name.clone(), inside(sb));
        if sb.sandbox.endpoints[0].network == "d" {
            six.fast_path
                .insert(sb.sandbox.endpoints[0].ipv6.expect("v6").address.addr());
        }
    }
    Facts {
        networks: vec![d, o],
        sandboxes,
        host_addresses: vec![("uplink0".into(), "10.0.1.48/24".parse().expect("a"))],
        routes: vec![(
            "10.0.1.26".parse().expect("peer"),
            Some(HostRoute {
                interface: "uplink0".into(),
                gateway: None,
            }),
        )],
        backend: Backend::Nftables,
        six,
        ..Facts::default()
    }
}

fn ask(f: &Facts, from: &str, to: &str, src: Option<&str>) -> Explanation {
    let q = Query::parse_ip(from, to, src.map(|s| s.parse().expect("src")), true).expect("query");
    explain(&q, f).expect("an answer")
}

fn rules(e: &Explanation) -> String {
    e.hops
        .iter()
        .filter_map(|h| h.rule.as_ref().map(|r| format!("{} {}", h.what, r)))
        .chain(e.hops.iter().map(|h| h.what.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn same_network_takes_the_fast_path_after_neighbour_discovery() {
    let f = world();
    let e = ask(&f, "a", "b:80", None);
    assert!(e.verdict.delivered, "{e}");
    assert!(e.ipv6 && e.broken.is_empty(), "{e}");
    let text = rules(&e);
    assert!(text.contains("local6"), "{text}");
    assert!(text.contains("@nd_targets"), "{text}");
    assert!(text.contains("link-local fe80::"), "{text}");
    assert!(e.to.contains("fd00:1::3"), "{e}");
    // ICMPv6 takes the bridge.
    let e = ask(&f, "a", "b", None);
    assert!(
        e.verdict.delivered
            && e.verdict
                .rule
                .as_ref()
                .is_some_and(|r| r.rule.contains("FDB")),
        "{e}"
    );
}

#[test]
fn leaving_the_host_is_nat66_or_not() {
    let f = world();
    let e = ask(&f, "a", "[2001:db8:1::26]:443", None);
    assert!(e.verdict.delivered, "{e}");
    let text = rules(&e);
    assert!(text.contains("default via fd00:1::1 dev eth0"), "{text}");
    assert!(
        text.contains("ip6 saddr @masq_nets6 masquerade (element fd00:1::/64)"),
        "{text}"
    );
    assert!(
        text.contains("the gateway fd00:1::1 (and fe80::1) is nsbr-d's"),
        "{text}"
    );
    let e = ask(&f, "c", "2001:db8:1::26", None);
    assert!(e.verdict.delivered, "{e}");
    assert!(rules(&e).contains("no NAT66"), "{e}");
    assert!(
        e.verdict
            .caveats
            .iter()
            .any(|c| c.contains("route fd00:2::/64 back")),
        "{e}"
    );
}

#[test]
fn published_ports_over_ipv6_and_the_loopback_translation() {
    let f = world();
    let e = ask(&f, "2001:db8:1::26", "[2001:db8:1::48]:8080", None);
    assert!(e.verdict.delivered, "{e}");
    assert!(
        e.to_string()
            .starts_with("peer 2001:db8:1::26 -> [2001:db8:1::48]:8080 (tcp, IPv6)\n"),
        "{e}"
    );
    assert!(
        e.verdict.rule.as_ref().is_some_and(|r| r
            .rule
            .contains("@ports6 (element tcp . 8080 : fd00:1::2 . 80)")),
        "{e}"
    );
    let e = ask(&f, "host", "[::1]:9090", None);
    assert!(e.verdict.delivered, "{e}");
    assert!(rules(&e).contains("cgroup bpf nsnet_lo6"), "{e}");
    // From outside, ::1 is never reached.
    let e = ask(&f, "2001:db8:1::26", "[::1]:9090", None);
    assert!(!e.verdict.delivered, "{e}");
    let mut f = world();
    f.six.loopback6_ports = Some(vec![]);
    let e = ask(&f, "host", "[::1]:9090", None);
    assert!(!e.verdict.delivered, "{e}");
    assert_eq!(e.broken, ["the [::1] translation's map lacks 9090/tcp"]);
    f.six.loopback6_ports = None;
    let e = ask(&f, "host", "[::1]:9090", None);
    assert!(e.broken[0].contains("programs are missing"), "{e}");
    // A port on every address is in the map too; without the programs where the host can have them, it
    // is broken at [::1] and still DNATed at the host's address.
    let e = ask(&f, "host", "[::1]:8080", None);
    assert!(!e.verdict.delivered && e.broken.is_empty(), "{e}");
    f.six.loopback6_supported = true;
    let e = ask(&f, "host", "[::1]:8080", None);
    assert!(
        !e.verdict.delivered && e.broken[0].contains("programs are missing"),
        "{e}"
    );
    let e = ask(&f, "host", "[2001:db8:1::48]:8080", None);
    assert!(e.verdict.delivered && e.broken.len() == 1, "{e}");
    assert!(
        e.verdict
            .rule
            .as_ref()
            .is_some_and(|r| r.rule.contains("@ports6")),
        "{e}"
    );
    f.six.loopback6_ports = Some(vec![(6, 8080)]);
    let e = ask(&f, "host", "[2001:db8:1::48]:8080", None);
    assert!(
        e.verdict.delivered && e.broken.is_empty() && rules(&e).contains("nsnet_lo6"),
        "{e}"
    );
}

#[test]
fn a_forged_ipv6_source_is_dropped_by_endpoints6() {
    let f = world();
    let e = ask(&f, "a", "b:80", Some("fd00:1::99"));
    assert!(!e.verdict.delivered, "{e}");
    let rule = e.verdict.rule.clone().expect("a rule");
    assert_eq!(rule.chain, "bridge nsnet prerouting");
    assert!(rule.rule.contains("@endpoints6"), "{rule}");
    // Its own link-local address is its own.
    let ll = f.sandboxes[0].sandbox.endpoints[0]
        .mac
        .link_local6()
        .to_string();
    let e = ask(&f, "a", "b:80", Some(&ll));
    assert!(e.verdict.delivered, "{e}");
}

#[test]
fn missing_kernel_objects_are_broken() {
    let a6 = v6("fd00:1::2");
    // The sandbox's global address.
    let mut f = world();
    if let Some(i) = f.six.inside.get_mut("a") {
        i.addresses.retain(|(_, a)| a.addr() != a6);
    }
    let e = ask(&f, "a", "2001:db8:1::26", None);
    assert!(!e.verdict.delivered, "{e}");
    assert_eq!(
        e.broken,
        ["sandbox a: eth0 has lost IPv6 address fd00:1::2/64"]
    );
    assert!(
        e.to_string().contains("BROKEN: sandbox a: eth0 has lost"),
        "{e}"
    );
    // The DNAT element.
    let mut f = world();
    let m = f.sandboxes[0].sandbox.endpoints[0].ports[0];
    f.six.missing = Some(vec![Rule::Port {
        mapping: m,
        target: a6.into(),
    }]);
    let e = ask(&f, "2001:db8:1::26", "[2001:db8:1::48]:8080", None);
    assert!(!e.verdict.delivered, "{e}");
    assert!(
        e.broken[0].contains("lacks the IPv6 DNAT element of a"),
        "{e}"
    );
    // The anti-spoofing elements.
    let mut f = world();
    let guard = endpoint_rules(&f.sandboxes[0].sandbox.endpoints[0]).remove(0);
    f.six.missing = Some(vec![guard]);
    let e = ask(&f, "a", "b:80", None);
    assert!(
        !e.verdict.delivered && e.broken[0].contains("anti-spoofing"),
        "{e}"
    );
    // The default route.
    let mut f = world();
    if let Some(i) = f.six.inside.get_mut("c") {
        i.default_routes.clear();
    }
    let e = ask(&f, "c", "2001:db8:1::26", None);
    assert!(
        !e.verdict.delivered && e.broken[0].contains("no IPv6 default route via fd00:2::1"),
        "{e}"
    );
    // The bridge's fe80::1.
    let mut f = world();
    f.six
        .host_addresses
        .retain(|(i, a)| !(i == "nsbr-d" && is_link_local(a.addr())));
    let e = ask(&f, "a", "2001:db8:1::26", None);
    assert!(
        !e.verdict.delivered && e.broken[0] == "nsbr-d has lost IPv6 address fe80::1/64",
        "{e}"
    );
    // A local6 entry: the bridge still delivers, the entry is named.
    let mut f = world();
    let b6 = v6("fd00:1::3");
    f.six.fast_path.remove(&b6);
    f.six.fast_path_lacking.insert(b6);
    let e = ask(&f, "a", "b:80", None);
    assert!(e.verdict.delivered, "{e}");
    assert_eq!(
        e.broken,
        ["the fast path of nsbr-d has no local6 entry for fd00:1::3"]
    );
}

#[test]
fn questions_in_ipv6() {
    let q = Query::parse_ip("a", "[fd00::2]:53/udp", None, false).expect("q");
    assert!(q.ipv6);
    assert_eq!((q.port, q.protocol), (Some(53), Protocol::Udp));
    assert_eq!(q.to, Party::Address6(v6("fd00::2")));
    let q = Query::parse_ip("a", "fd00::2", None, false).expect("q");
    assert_eq!((q.port, q.protocol), (None, Protocol::Icmp));
    for (from, to, src, six) in [
        ("10.0.1.26", "fd00::2", None, false),
        ("a", "10.0.1.2", None, true),
        ("a", "b", Some("10.0.0.9"), true),
        ("a", "[fd00::2]80", None, false),
        ("a", "[fd00::2", None, false),
        ("a", "fd00::zz", None, false),
    ] {
        let src = src.map(|s: &str| s.parse().expect("src"));
        assert!(Query::parse_ip(from, to, src, six).is_err(), "{from} {to}");
    }
    // A sandbox with no IPv4 makes the question IPv6 by itself; one with no IPv6 is refused.
    let f = world();
    let q = Query::parse("c", "host", None).expect("q");
    let e = explain(&q, &f).expect("answer");
    assert!(
        e.ipv6 && e.verdict.delivered && e.to.contains("fd00:2::1"),
        "{e}"
    );
    let mut f = world();
    f.sandboxes[1].sandbox.endpoints[0].ipv6 = None;
    let q = Query::parse_ip("b", "a", None, true).expect("q");
    assert!(explain(&q, &f).is_err());
    // An IPv4 question about a dual-stack sandbox is as before: no IPv6 keys in its JSON.
    let f = world();
    let q = Query::parse("a", "b", None).expect("q");
    let e = explain(&q, &f).expect("answer");
    let json = serde_json::to_string(&e).expect("json");
    assert!(
        !e.ipv6 && !json.contains("ipv6") && !json.contains("broken"),
        "{json}"
    );
}

#[test]
fn the_iptables_backend_names_its_ip6tables_rules() {
    let mut f = world();
    f.backend = Backend::Iptables;
    let e = ask(&f, "a", "b:80", Some("fd00:1::99"));
    let rule = e.verdict.rule.clone().expect("a rule");
    assert_eq!(rule.chain, "ip6tables raw NSNET-GUARD", "{e}");
    assert!(
        rule.rule
            .starts_with("-m physdev --physdev-in vetha -j DROP (after -s fe80::"),
        "{e}"
    );
    let e = ask(&f, "2001:db8:1::26", "[2001:db8:1::48]:8080", None);
    assert!(e.verdict.delivered, "{e}");
    assert_eq!(
        e.verdict.rule.as_ref().map(ToString::to_string).as_deref(),
        Some("ip6tables nat NSNET-PORTS: -p tcp -m tcp --dport 8080 -j DNAT --to-destination [fd00:1::2]:80")
    );
    let e = ask(&f, "a", "[2001:db8:1::26]:443", None);
    assert!(
        rules(&e)
            .contains("ip6tables nat NSNET-POSTROUTING: -s fd00:1::/64 ! -o nsbr-d -j MASQUERADE"),
        "{e}"
    );
}

/// Network `d` as a dual-stack VXLAN overlay (cluster fd00::/16) with one other host holding fd00:5::/64,
/// and the kernel agreeing: the route via fd00:5::, its permanent neighbour, the FDB entry, remote6.
fn overlay_world() -> Facts {
    let mut f = world();
    let vtep = Mac([0x0e, 0x6e, 10, 0, 5, 0]);
    let underlay: std::net::Ipv4Addr = "192.0.2.12".parse().expect("underlay");
    f.networks[0].overlay = Some(crate::model::Overlay {
        cluster: "172.16.0.0/16".parse().expect("cluster"),
        cluster6: Some("fd00::/16".parse().expect("cluster6")),
        backend: crate::model::OverlayBackend::Vxlan,
        vni: 7,
        port: 4789,
        device: "nsvx-d".into(),
        vtep_mac: Mac([0x0e, 0x6e, 172, 16, 1, 0]),
        peers: vec![crate::model::Peer {
            subnet: "172.16.5.0/24".parse().expect("block"),
            underlay,
            vtep_mac: Some(vtep),
            subnet6: Some("fd00:5::/64".parse().expect("block6")),
            underlay_mac: None,
        }],
        underlay_qdisc: false,
    });
    let block: Ipv6Net = "fd00:5::/64".parse().expect("block6");
    f.six.overlay.insert(
        "d".into(),
        Some(OverlayKernel6 {
            routes: vec![(block, v6("fd00:5::"))],
            neighbours: vec![(v6("fd00:5::"), vtep.0)],
            fdb: vec![(vtep.0, Some(underlay))],
            remote6: Some(vec![(block, v6("fd00:5::"))]),
        }),
    );
    f.six.routes.push((
        v6("fd00:5::2"),
        Some(HostRoute6 {
            interface: "nsvx-d".into(),
            gateway: Some(v6("fd00:5::")),
        }),
    ));
    f
}

/// Across hosts: TCP on the fast path (remote6), ICMPv6 on the slow path with no NAT66 in the cluster; the
/// route, the neighbour entry, the FDB entry, remote6 and the device each taken away is named broken.
#[test]
fn another_hosts_block_by_route_neighbour_and_the_fast_path() {
    let f = overlay_world();
    let e = ask(&f, "a", "[fd00:5::2]:80", None);
    assert!(e.verdict.delivered && e.broken.is_empty(), "{e}");
    let text = rules(&e);
    assert!(
        text.contains("neighbour fd00:5:: lladdr 0e:6e:0a:00:05:00 PERMANENT on nsvx-d"),
        "{text}"
    );
    assert!(
        text.contains("remote6 entry fd00:5::/64 -> fd00:5::, bpf_redirect_neigh"),
        "{text}"
    );
    assert!(
        text.contains("VXLAN, VNI 7, UDP to 192.0.2.12:4789"),
        "{text}"
    );
    assert!(!text.contains("masquerade"), "{text}");
    assert!(
        e.verdict.reason.contains("no NAT66 inside the cluster"),
        "{e}"
    );

    // ICMPv6: the forward chain, then no NAT66.
    let e = ask(&f, "a", "fd00:5::2", None);
    assert!(e.verdict.delivered && e.broken.is_empty(), "{e}");
    let text = rules(&e);
    assert!(
        text.contains("forward nsbr-d -> nsvx-d: accepted"),
        "{text}"
    );
    assert!(
        text.contains("ip6 saddr . ip6 daddr @no_masq6 return (element fd00:1::/64 . fd00::/16)"),
        "{text}"
    );
    assert!(!text.contains("bpf_redirect_neigh"), "{text}");

    let lose_to = |to: &str, what: &dyn Fn(&mut OverlayKernel6)| {
        let mut f = overlay_world();
        if let Some(Some(k)) = f.six.overlay.get_mut("d") {
            what(k);
        }
        ask(&f, "a", to, None)
    };
    let lose = |what: &dyn Fn(&mut OverlayKernel6)| lose_to("[fd00:5::2]:80", what);
    // Without the route, ICMPv6 goes nowhere; TCP still leaves by the fast path, which needs no route.
    let route =
        vec!["no IPv6 route to fd00:5::/64 via fd00:5:: on nsvx-d (the agent puts it back)"];
    let e = lose_to("fd00:5::2", &|k| k.routes.clear());
    assert!(!e.verdict.delivered, "{e}");
    assert_eq!(e.broken, route);
    let e = lose(&|k| k.routes.clear());
    assert!(
        e.verdict.delivered && rules(&e).contains("remote6 entry"),
        "{e}"
    );
    assert_eq!(e.broken, route);
    let e = lose(&|k| k.neighbours.clear());
    assert!(!e.verdict.delivered, "{e}");
    assert_eq!(
        e.broken,
        vec!["no IPv6 neighbour entry fd00:5:: -> 0e:6e:0a:00:05:00 on nsvx-d (the agent puts it back)"]
    );
    let e = lose(&|k| k.fdb.clear());
    assert!(!e.verdict.delivered, "{e}");
    assert!(
        e.broken[0].starts_with("no FDB entry 0e:6e:0a:00:05:00 -> 192.0.2.12"),
        "{e}"
    );
    // Without its remote6 entry, the slow path still delivers it.
    let e = lose(&|k| k.remote6 = Some(vec![]));
    assert!(e.verdict.delivered, "{e}");
    assert_eq!(
        e.broken,
        vec![
            "the fast path of nsbr-d has no remote6 entry for fd00:5::/64 (the agent puts it back)"
        ]
    );
    assert!(rules(&e).contains("@no_masq6 return"), "{e}");
    let mut f = overlay_world();
    f.six.overlay.insert("d".into(), None);
    let e = ask(&f, "a", "[fd00:5::2]:80", None);
    assert!(
        !e.verdict.delivered && e.broken[0].contains("nsvx-d"),
        "{e}"
    );
}

/// From another host's sandbox: TCP by the fast path on the device's ingress, ICMPv6 by `overlay_in6`; a
/// lost route back is named broken (the answers need it).
#[test]
fn from_another_hosts_block_by_the_fast_path_or_overlay_in6() {
    let f = overlay_world();
    let e = ask(&f, "fd00:5::2", "a:80", None);
    assert!(e.verdict.delivered && e.broken.is_empty(), "{e}");
    let text = rules(&e);
    assert!(text.contains("nsvx-d decapsulates it"), "{text}");
    assert!(text.contains("bpf_redirect_peer"), "{text}");
    let e = ask(&f, "fd00:5::2", "a", None);
    assert!(e.verdict.delivered && e.broken.is_empty(), "{e}");
    let text = rules(&e);
    assert!(
        text.contains("@overlay_in6 accept (element \"nsvx-d\" . fd00::/16 . fd00:1::/64)"),
        "{text}"
    );
    assert!(text.contains("the receiver sees fd00:5::2"), "{text}");
    let mut f = overlay_world();
    if let Some(Some(k)) = f.six.overlay.get_mut("d") {
        k.routes.clear();
    }
    let e = ask(&f, "fd00:5::2", "a", None);
    assert_eq!(
        e.broken,
        vec!["no IPv6 route to fd00:5::/64 via fd00:5:: on nsvx-d (the agent puts it back)"]
    );
}
