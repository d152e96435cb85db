//! The host reaching published ports at `[::1]` (issue #19, C10): the cgroup `sock_addr` translation
//! (`kernel::loopback6`). Every program goes onto the test's throwaway cgroup
//! (`TestHost::cgroup`, `NSNET_CGROUP`), and every client that should meet it runs inside that cgroup
//! (`TestHost::client6`), never on this machine's real root cgroup.

mod common;

use std::net::{Ipv6Addr, SocketAddr};

use common::{TestHost, HOST_IP6};
use nsnet_core::probe;
use serde_json::Value;

fn gateway6(h: &TestHost, net: &str) -> Ipv6Addr {
    let n: Value =
        serde_json::from_str(&h.ok(&["network", "inspect", net, "--json"])).expect("JSON");
    n["ipv6"]["gateway"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("a gateway")
}

/// IPv6 forwarding on from the start: turning it on adds the uplink's subnet-router anycast route, which
/// stays (nsnet never turns forwarding off), and would show in the snapshots.
fn with_forwarding(h: TestHost) -> TestHost {
    h.in_host(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    h
}

/// A TCP client of this test's cgroup, in `ns`, with a one-shot server on port 80 of sandbox `server`:
/// what the client saw ("[peer]:port hello [client]:port"), and the client address the server saw.
fn tcp(
    h: &TestHost,
    server: &str,
    ns: &std::path::Path,
    to: &str,
    port: u16,
) -> (String, Option<SocketAddr>) {
    let srv = probe::tcp_server(
        &std::path::Path::new("/run/netns").join(server),
        (Ipv6Addr::UNSPECIFIED, 80),
    )
    .expect("listen");
    let seen = h.client6(ns, "tcp", to, port);
    (seen, srv.wait().ok())
}

fn udp(
    h: &TestHost,
    server: &str,
    ns: &std::path::Path,
    to: &str,
    port: u16,
) -> (String, Option<SocketAddr>) {
    let srv = probe::udp_server(
        &std::path::Path::new("/run/netns").join(server),
        (Ipv6Addr::UNSPECIFIED, 80),
    )
    .expect("listen");
    let seen = h.client6(ns, "udp", to, port);
    (seen, srv.wait().ok())
}

/// Twin of `ports.rs::loopback_only_ports_are_unreachable_from_outside` for `[::1]`: the host reaches it over
/// TCP and UDP and its client sees `[::1]:8080` as its peer (the sandbox sees the gateway); the LAN peer and
/// another sandbox cannot reach it; a hostile sandbox connecting to its own `[::1]:8080` from the very cgroup
/// the programs act on is not translated. Everything goes with `rm` and `network rm`.
#[test]
fn loopback6_only_ports_are_reachable_from_the_host_alone() {
    let h = with_forwarding(TestHost::with_lan6("lo6"));
    let empty = h.snapshot();
    h.ok(&["network", "create", "ds", "--ipv6", "--bridge", "nsbr-lo6"]);
    let (s, t) = (h.sb("s"), h.sb("t"));
    h.ok(&[
        "create",
        &s,
        "--network",
        "ds",
        "-p",
        "[::1]:8080:80",
        "-p",
        "[::1]:8080:80/udp",
    ]);
    h.ok(&["create", &t, "--network", "ds"]);
    let gw = gateway6(&h, "ds");
    let host = h.host_path();

    let (seen, server) = tcp(&h, &s, &host, "::1", 8080);
    assert!(
        seen.starts_with("[::1]:8080 hello"),
        "TCP from the host: {seen}"
    );
    assert_eq!(
        server.map(|a| a.ip()),
        Some(gw.into()),
        "the sandbox sees the gateway"
    );
    let (seen, server) = udp(&h, &s, &host, "::1", 8080);
    assert!(
        seen.starts_with("[::1]:8080 hello"),
        "UDP from the host: {seen}"
    );
    assert_eq!(server.map(|a| a.ip()), Some(gw.into()));
    let mut expected = vec![
        "[::1] port 17/8080".to_string(),
        "[::1] port 6/8080".to_string(),
    ];
    for (hook, name) in [
        ("cgroup_inet6_connect", "conn"),
        ("cgroup_udp6_sendmsg", "send"),
        ("cgroup_udp6_recvmsg", "recv"),
        ("cgroup_inet6_getpeername", "peer"),
    ] {
        expected.push(format!("cgroup {hook} nsnet_lo6_{name}"));
    }
    expected.sort();
    assert_eq!(h.loopback6(), expected);

    // A hostile sandbox, in the programs' cgroup, to its own [::1]:8080, where it listens itself: it reaches
    // its own listener, never s. Then with nothing listening there (the translation must not carry it on).
    let t_ns = h.sb_path("t");
    let own = (Ipv6Addr::LOCALHOST, 8080);
    let mine = probe::tcp_server(&t_ns, own).expect("listen in t");
    let (seen, server) = tcp(&h, &s, &t_ns, "::1", 8080);
    assert!(seen.starts_with("[::1]:8080 hello [::1]:"), "t: {seen}");
    assert_eq!(server, None, "t's own [::1] was carried to s");
    assert!(mine.wait().is_ok_and(|c| c.ip() == Ipv6Addr::LOCALHOST));
    let mine = probe::udp_server(&t_ns, own).expect("listen in t");
    let (seen, server) = udp(&h, &s, &t_ns, "::1", 8080);
    assert!(
        seen.starts_with("[::1]:8080 hello [::1]:"),
        "t over UDP: {seen}"
    );
    assert_eq!(server, None, "t's own [::1] was carried to s over UDP");
    assert!(mine.wait().is_ok());
    let (seen, server) = tcp(&h, &s, &t_ns, "::1", 8080);
    assert!(
        seen.starts_with("ERR"),
        "t's own [::1] was translated: {seen}"
    );
    assert_eq!(server, None);
    let (seen, server) = udp(&h, &s, &t_ns, "::1", 8080);
    assert!(seen.starts_with("ERR"), "t's own [::1] over UDP: {seen}");
    assert_eq!(server, None);
    for to in [HOST_IP6.to_string(), gw.to_string()] {
        let to6: SocketAddr = format!("[{to}]:8080").parse().expect("address");
        for (from, who) in [(h.lan_path(), "LAN peer"), (t_ns.clone(), "sandbox t")] {
            assert_eq!(
                common::reach_any(&h.sb_path("s"), 80, &from, to6),
                None,
                "{who} reached [::1]-only port at {to}"
            );
        }
        // Nor the host itself at an address other than [::1].
        let (seen, _) = tcp(&h, &s, &host, &to, 8080);
        assert!(seen.starts_with("ERR"), "host at {to}: {seen}");
    }

    h.ok(&["rm", &s]);
    assert_eq!(
        h.loopback6(),
        Vec::<String>::new(),
        "the last port takes the programs"
    );
    h.ok(&["rm", &t]);
    h.ok(&["network", "rm", "ds"]);
    let after = h.snapshot();
    assert!(after == empty, "{}", after.diff(&empty));
}

/// A plain `-p 8081:80` on a dual-stack network: the host reaches it at `[::1]:8081` and at its own IPv6
/// addresses (the uplink's and the gateway's), over TCP and UDP. A second sandbox's port keeps the programs
/// when the first goes; `gc` and `firewall reload` put back a program lost by hand; `rm` takes each entry.
#[test]
fn every_address_ports_are_reachable_from_the_host_at_loopback6_and_its_own_addresses() {
    let h = with_forwarding(TestHost::with_lan6("lo6all"));
    let empty = h.snapshot();
    h.ok(&["network", "create", "ds", "--ipv6", "--bridge", "nsbr-lo6a"]);
    let (a, b) = (h.sb("a"), h.sb("b"));
    h.ok(&[
        "create",
        &a,
        "--network",
        "ds",
        "-p",
        "8081:80",
        "-p",
        "8081:80/udp",
    ]);
    h.ok(&["create", &b, "--network", "ds", "-p", "8082:80"]);
    let host = h.host_path();
    let gw = gateway6(&h, "ds");
    // An IPv4-mapped address is IPv4 on the wire: 127.0.0.1's own DNAT serves it, from an IPv6 socket.
    for to in [
        "::1".to_string(),
        HOST_IP6.to_string(),
        gw.to_string(),
        "::ffff:127.0.0.1".to_string(),
    ] {
        let (seen, server) = tcp(&h, &a, &host, &to, 8081);
        assert!(
            seen.starts_with(&format!("[{to}]:8081 hello")),
            "TCP to {to}: {seen}"
        );
        assert!(server.is_some());
        let (seen, _) = udp(&h, &a, &host, &to, 8081);
        assert!(
            seen.starts_with(&format!("[{to}]:8081 hello")),
            "UDP to {to}: {seen}"
        );
    }
    let (seen, _) = tcp(&h, &b, &host, "::1", 8082);
    assert!(seen.starts_with("[::1]:8082 hello"), "{seen}");
    assert_ne!(h.address6(&a), h.address6(&b));

    // A program detached by hand comes back with gc, and with firewall reload; an entry no record holds
    // (tcp 9999, put in by hand) goes.
    let full = h.loopback6();
    let cg = h.cgroup.to_string_lossy().into_owned();
    for repair in [&["gc"][..], &["firewall", "reload"][..]] {
        let id = common::sh(&["bpftool", "-j", "cgroup", "show", &cg]);
        let progs: Value = serde_json::from_str(&id).expect("JSON");
        let conn = progs
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "nsnet_lo6_conn")
            .and_then(|p| p["id"].as_u64())
            .expect("the connect6 program");
        let map = loopback_map(conn);
        let mut key: Vec<String> = [0x27u8, 0x0f, 0, 0].iter().map(|b| b.to_string()).collect();
        key.extend(6u32.to_ne_bytes().iter().map(|b| b.to_string()));
        let value: Vec<String> = (0..24)
            .map(|i| if i == 0 { "253" } else { "0" }.to_string())
            .collect();
        let mut args = vec!["bpftool", "map", "update", "id", map.as_str(), "key"];
        args.extend(key.iter().map(String::as_str));
        args.push("value");
        args.extend(value.iter().map(String::as_str));
        common::sh(&args);
        assert!(h.loopback6().contains(&"[::1] port 6/9999".to_string()));
        common::sh(&[
            "bpftool",
            "cgroup",
            "detach",
            &cg,
            "connect6",
            "id",
            &conn.to_string(),
        ]);
        assert_ne!(h.loopback6(), full);
        h.ok(repair);
        assert_eq!(h.loopback6(), full, "after {repair:?}");
        let (seen, _) = tcp(&h, &a, &host, "::1", 8081);
        assert!(
            seen.starts_with("[::1]:8081 hello"),
            "after {repair:?}: {seen}"
        );
    }

    h.ok(&["rm", &a]);
    let left = h.loopback6();
    assert!(left.contains(&"[::1] port 6/8082".to_string()), "{left:?}");
    assert!(!left.iter().any(|l| l.contains("/8081")), "{left:?}");
    h.ok(&["rm", &b]);
    assert_eq!(h.loopback6(), Vec::<String>::new());
    h.ok(&["network", "rm", "ds"]);
    let after = h.snapshot();
    assert!(after == empty, "{}", after.diff(&empty));
}

/// The dry run shows the translation as bpftool commands, and changes nothing.
#[test]
fn a_loopback6_dry_run_names_the_programs_and_changes_nothing() {
    let h = TestHost::with_ipv6("lo6dry");
    h.ok(&["network", "create", "ds", "--ipv6", "--bridge", "nsbr-lo6d"]);
    let before = h.snapshot();
    let s = h.sb("s");
    let out = h.ok(&[
        "create",
        &s,
        "--network",
        "ds",
        "-p",
        "[::1]:8080:80",
        "--dry-run",
    ]);
    assert!(out.contains("bpftool cgroup attach"), "{out}");
    assert!(out.contains("connect6 name nsnet_lo6_conn multi"), "{out}");
    assert!(
        out.contains("bpftool map update name nsnet_loopback6 key tcp [::1]:8080 value ["),
        "{out}"
    );
    let after = h.snapshot();
    assert!(after == before, "{}", after.diff(&before));
    h.ok(&["network", "rm", "ds"]);
}

/// Where the cgroup is not a cgroup2 one (or bpf cannot be loaded), `-p [::1]` is refused in one line and
/// nothing changes; a port on every address is still published (the translation is then left out).
#[test]
fn loopback6_without_a_cgroup2_is_refused_in_one_line() {
    let h = TestHost::with_ipv6("lo6no");
    h.ok(&["network", "create", "ds", "--ipv6", "--bridge", "nsbr-lo6n"]);
    let before = h.snapshot();
    let not_cgroup2 = h
        .state
        .parent()
        .expect("the test's temporary dir")
        .to_path_buf();
    let s = h.sb("s");
    let args = [
        "create",
        s.as_str(),
        "--network",
        "ds",
        "-p",
        "[::1]:8080:80",
    ];
    let env = [("NSNET_CGROUP", not_cgroup2.to_str().expect("a UTF-8 path"))];
    let line = common::check_one_line_failure(&args, h.nsnet_env(&args, &env));
    assert!(line.contains("[::1] needs cgroup2 and bpf"), "{line}");
    assert!(line.contains("is not a cgroup2 directory"), "{line}");
    let after = h.snapshot();
    assert!(after == before, "{}", after.diff(&before));
    let out = h.nsnet_env(&["create", &s, "--network", "ds", "-p", "8080:80"], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(h.loopback6(), Vec::<String>::new());
    h.ok(&["rm", &s]);
    h.ok(&["network", "rm", "ds"]);
}

/// Commands at once: sandboxes with `[::1]` ports created and removed side by side attach one set of
/// programs (the cgroup is flocked while nsnet finds or makes them) holding every live port, and the last
/// `rm` takes them.
#[test]
fn loopback6_ports_published_at_once_share_one_set_of_programs() {
    let h = TestHost::with_ipv6("lo6many");
    let empty = h.snapshot();
    h.ok(&["network", "create", "ds", "--ipv6", "--bridge", "nsbr-lo6m"]);
    let names: Vec<String> = (0..8).map(|i| h.sb(&format!("m{i}"))).collect();
    let port = |i: usize| format!("[::1]:{}:80", 9100 + i);
    std::thread::scope(|s| {
        for (i, name) in names.iter().enumerate() {
            let (h, p) = (&h, port(i));
            s.spawn(move || h.ok(&["create", name, "--network", "ds", "-p", &p]));
        }
    });
    let mut expected: Vec<String> = (0..8)
        .map(|i| format!("[::1] port 6/{}", 9100 + i))
        .collect();
    for (hook, name) in [
        ("cgroup_inet6_connect", "conn"),
        ("cgroup_udp6_sendmsg", "send"),
        ("cgroup_udp6_recvmsg", "recv"),
        ("cgroup_inet6_getpeername", "peer"),
    ] {
        expected.push(format!("cgroup {hook} nsnet_lo6_{name}"));
    }
    expected.sort();
    assert_eq!(h.loopback6(), expected);
    let host = h.host_path();
    let (seen, _) = tcp(&h, &names[5], &host, "::1", 9105);
    assert!(seen.starts_with("[::1]:9105 hello"), "{seen}");
    std::thread::scope(|s| {
        for name in &names {
            let h = &h;
            s.spawn(move || h.ok(&["rm", name]));
        }
    });
    h.ok(&["network", "rm", "ds"]);
    let after = h.snapshot();
    assert!(after == empty, "{}", after.diff(&empty));
}

/// The id of the `nsnet_loopback6` map of program `prog`.
fn loopback_map(prog: u64) -> String {
    let shown: Value = serde_json::from_str(&common::sh(&[
        "bpftool",
        "-j",
        "prog",
        "show",
        "id",
        &prog.to_string(),
    ]))
    .expect("JSON");
    shown["map_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .map(|id| id.to_string())
        .find(|id| {
            let m: Value =
                serde_json::from_str(&common::sh(&["bpftool", "-j", "map", "show", "id", id]))
                    .expect("JSON");
            m["name"] == "nsnet_loopback6"
        })
        .expect("the ports map")
}
