//! `nsnet explain`: for a matrix of packets, the static verdict, a real probe (`--probe`) and the harness's
//! own traffic all agree; the probe leaves no table or rule behind; bad input exits 2 and changes nothing.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::Output;

use common::{reach, TestHost, HOST_IP, LAN_IP};
use serde_json::Value;

fn addr(ip: &str, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip.parse().expect("test address"), port)
}

/// `nsnet --json explain ARGS`: the exit status and the parsed answer.
fn explain(h: &TestHost, args: &[&str]) -> (i32, Value) {
    let mut full = vec!["--json", "explain"];
    full.extend_from_slice(args);
    let out: Output = h.nsnet(&full);
    let code = out.status.code().unwrap_or(-1);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "explain {args:?} (exit {code}) printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, json)
}

/// The host's ruleset as text: what a probe must leave as it found it.
fn ruleset(h: &TestHost) -> String {
    h.in_host(&["nft", "list", "ruleset"])
}

/// One question and what must happen.
struct Case {
    name: &'static str,
    args: Vec<String>,
    delivered: bool,
    /// The harness's own check: (receiving sandbox, its port, sender's namespace, address to connect to).
    real: Option<(String, u16, PathBuf, SocketAddrV4)>,
    /// A word the deciding rule or reason holds.
    word: &'static str,
}

/// Static verdict, probe and (where given) the harness's connection agree, for each case.
fn check(h: &TestHost, cases: &[Case], traced: bool) {
    for c in cases {
        let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
        let want = if c.delivered { 0 } else { 1 };
        let (code, answer) = explain(h, &args);
        assert_eq!(code, want, "{}: static verdict: {answer:#}", c.name);
        assert_eq!(answer["verdict"]["delivered"], c.delivered, "{}", c.name);
        let said = format!(
            "{} {}",
            answer["verdict"]["reason"], answer["verdict"]["rule"]
        );
        assert!(
            said.contains(c.word),
            "{}: {said} lacks {:?}",
            c.name,
            c.word
        );
        let mut probe_args = args.clone();
        probe_args.push("--probe");
        if c.args[0] == LAN_IP {
            probe_args.extend(["--peer-netns", "LAN"]);
        }
        let lan = h.lan_path().display().to_string();
        let probe_args: Vec<&str> = probe_args
            .iter()
            .map(|a| if *a == "LAN" { lan.as_str() } else { a })
            .collect();
        let (code, probed) = explain(h, &probe_args);
        let report = &probed["probe"];
        assert_eq!(
            report["delivered"], c.delivered,
            "{}: probe: {probed:#}",
            c.name
        );
        assert_eq!(report["agrees"], true, "{}", c.name);
        assert_eq!(code, want, "{}: probe exit status", c.name);
        if traced {
            assert!(
                report.get("trace").is_some(),
                "{}: no trace: {report:#}",
                c.name
            );
        }
        if let Some((sb, port, from, to)) = &c.real {
            let got = reach(&h.sb_path(sb), *port, from, *to).is_some();
            assert_eq!(got, c.delivered, "{}: the harness's own connection", c.name);
        }
    }
}

#[test]
fn explain_agrees_with_real_packets() {
    let h = TestHost::with_lan("explain");
    let empty = h.snapshot();
    h.ok(&["network", "create", "n1", "--subnet", "172.16.1.0/24"]);
    h.ok(&["network", "create", "n2", "--subnet", "172.16.2.0/24"]);
    h.ok(&[
        "network",
        "create",
        "int",
        "--subnet",
        "172.16.4.0/24",
        "--internal",
    ]);
    h.ok(&[
        "network",
        "create",
        "r",
        "--subnet",
        "172.16.6.0/24",
        "--gateway-mode",
        "routed",
    ]);
    let (a, b, c, i, t) = (h.sb("a"), h.sb("b"), h.sb("c"), h.sb("i"), h.sb("t"));
    h.ok(&[
        "create",
        &a,
        "--network",
        "n1",
        "--ip",
        "172.16.1.2",
        "-p",
        "8080:80",
        "-p",
        "127.0.0.1:9090:90",
    ]);
    h.ok(&["create", &b, "--network", "n1", "--ip", "172.16.1.3"]);
    h.ok(&["create", &c, "--network", "n2"]);
    h.ok(&["create", &i, "--network", "int"]);
    h.ok(&["create", &t, "--network", "r", "--ip", "172.16.6.2"]);
    // The LAN peer routes the sandboxes' subnets via the host (to try their addresses directly).
    let lan = h.lan.clone().expect("a LAN peer");
    for subnet in ["172.16.1.0/24", "172.16.4.0/24", "172.16.6.0/24"] {
        common::sh(&["ip", "-n", &lan, "route", "add", subnet, "via", HOST_IP]);
    }
    let before = ruleset(&h);
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let (lan_ns, host_ns) = (h.lan_path(), h.host_path());
    let real = |sb: &str, port: u16, from: &PathBuf, to: SocketAddrV4| {
        Some((sb.to_string(), port, from.clone(), to))
    };
    let cases = vec![
        Case {
            name: "same network",
            args: s(&[&a, &format!("{b}:80")]),
            delivered: true,
            real: real("b", 80, &h.sb_path("a"), addr("172.16.1.3", 80)),
            word: "fast path",
        },
        Case {
            name: "same network, ping",
            args: s(&[&a, &b]),
            delivered: true,
            real: None,
            word: "fast path",
        },
        Case {
            name: "other network (isolated)",
            args: s(&[&a, &format!("{c}:80")]),
            delivered: false,
            real: None,
            word: "@isolation",
        },
        Case {
            name: "internal network to the published port through its gateway",
            args: s(&[&i, "172.16.4.1:8080"]),
            delivered: false,
            real: real("a", 80, &h.sb_path("i"), addr("172.16.4.1", 8080)),
            word: "@internal",
        },
        Case {
            name: "internal network has no route out",
            args: s(&[&i, &format!("{a}:80")]),
            delivered: false,
            real: None,
            word: "no default route",
        },
        Case {
            name: "into an internal network from the LAN",
            args: s(&[LAN_IP, &i]),
            delivered: false,
            real: None,
            word: "@internal",
        },
        Case {
            name: "published port from the LAN",
            args: s(&[LAN_IP, &format!("{HOST_IP}:8080")]),
            delivered: true,
            real: real("a", 80, &lan_ns, addr(HOST_IP, 8080)),
            word: "@ports",
        },
        Case {
            name: "published port from the host, by its address",
            args: s(&["host", &format!("{HOST_IP}:8080")]),
            delivered: true,
            real: real("a", 80, &host_ns, addr(HOST_IP, 8080)),
            word: "@ports",
        },
        Case {
            name: "published port from the host, by 127.0.0.1",
            args: s(&["host", "127.0.0.1:8080"]),
            delivered: true,
            real: real("a", 80, &host_ns, addr("127.0.0.1", 8080)),
            word: "@ports",
        },
        Case {
            name: "published port from the same network",
            args: s(&[&b, &format!("{HOST_IP}:8080")]),
            delivered: true,
            real: real("a", 80, &h.sb_path("b"), addr(HOST_IP, 8080)),
            word: "@ports",
        },
        Case {
            name: "published port from another network",
            args: s(&[&c, &format!("{HOST_IP}:8080")]),
            delivered: true,
            real: real("a", 80, &h.sb_path("c"), addr(HOST_IP, 8080)),
            word: "@ports",
        },
        Case {
            name: "hairpin",
            args: s(&[&a, &format!("{HOST_IP}:8080")]),
            delivered: true,
            real: real("a", 80, &h.sb_path("a"), addr(HOST_IP, 8080)),
            word: "@ports",
        },
        Case {
            name: "127.0.0.1-only port from the LAN",
            args: s(&[LAN_IP, &format!("{HOST_IP}:9090")]),
            delivered: false,
            real: real("a", 90, &lan_ns, addr(HOST_IP, 9090)),
            word: "127.0.0.1",
        },
        Case {
            name: "127.0.0.1-only port from the host",
            args: s(&["host", "127.0.0.1:9090"]),
            delivered: true,
            real: real("a", 90, &host_ns, addr("127.0.0.1", 9090)),
            word: "@ports_ip",
        },
        Case {
            name: "127.0.0.1-only port from the host's own address",
            args: s(&["host", &format!("{HOST_IP}:9090")]),
            delivered: false,
            real: real("a", 90, &host_ns, addr(HOST_IP, 9090)),
            word: "127.0.0.1",
        },
        Case {
            name: "spoofed source",
            args: s(&[&a, &format!("{b}:80"), "--src", "172.16.1.200"]),
            delivered: false,
            real: None,
            word: "@endpoints",
        },
        Case {
            name: "unpublished port from the LAN, gateway mode nat",
            args: s(&[LAN_IP, &format!("{a}:80")]),
            delivered: false,
            real: real("a", 80, &lan_ns, addr("172.16.1.2", 80)),
            word: "@published_only",
        },
        Case {
            name: "any port from the LAN, gateway mode routed",
            args: s(&[LAN_IP, &format!("{t}:81")]),
            delivered: true,
            real: real("t", 81, &lan_ns, addr("172.16.6.2", 81)),
            word: "routed",
        },
        Case {
            name: "the host to a sandbox",
            args: s(&["host", &format!("{b}:80")]),
            delivered: true,
            real: real("b", 80, &host_ns, addr("172.16.1.3", 80)),
            word: "route",
        },
        Case {
            name: "a sandbox to the LAN",
            args: s(&[&a, &format!("{LAN_IP}:82/udp")]),
            delivered: true,
            real: None,
            word: "leaves the host",
        },
    ];
    check(&h, &cases, true);
    // The probes' tables came and went: the ruleset is as it was.
    assert_eq!(ruleset(&h), before, "a probe left something in the ruleset");

    // The user chain: explain says it cannot see its rules; the probe shows what they do.
    h.in_host(&[
        "nft", "add", "rule", "inet", "nsnet", "user", "ip", "saddr", LAN_IP, "tcp", "dport", "80",
        "drop",
    ]);
    let (code, answer) = explain(&h, &[LAN_IP, &format!("{HOST_IP}:8080")]);
    assert_eq!(code, 0, "{answer:#}");
    let caveats = answer["verdict"]["caveats"].to_string();
    assert!(caveats.contains("--probe"), "{caveats}");
    let lan_path = h.lan_path().display().to_string();
    let (code, probed) = explain(
        &h,
        &[
            LAN_IP,
            &format!("{HOST_IP}:8080"),
            "--probe",
            "--peer-netns",
            &lan_path,
        ],
    );
    assert_eq!(code, 1, "the user's drop decides: {probed:#}");
    assert_eq!(probed["probe"]["agrees"], false);
    let trace = probed["probe"]["trace"].to_string();
    assert!(
        trace.contains("inet nsnet user") && trace.contains("drop"),
        "{trace}"
    );
    h.in_host(&["nft", "flush", "chain", "inet", "nsnet", "user"]);

    for sb in [&a, &b, &c, &i, &t] {
        h.ok(&["rm", sb]);
    }
    for n in ["n1", "n2", "int", "r"] {
        h.ok(&["network", "rm", n]);
    }
    for subnet in ["172.16.1.0/24", "172.16.4.0/24", "172.16.6.0/24"] {
        common::sh(&["ip", "-n", &lan, "route", "del", subnet]);
    }
    assert_eq!(h.snapshot(), empty);
}

#[test]
fn with_iptables_the_probe_confirms_without_tracing() {
    let mut h = TestHost::with_lan("explipt");
    h.firewall = Some("iptables");
    h.ok(&["network", "create", "n1", "--subnet", "172.16.1.0/24"]);
    h.ok(&["network", "create", "n2", "--subnet", "172.16.2.0/24"]);
    let (a, c) = (h.sb("a"), h.sb("c"));
    h.ok(&[
        "create",
        &a,
        "--network",
        "n1",
        "--ip",
        "172.16.1.2",
        "-p",
        "8080:80",
    ]);
    h.ok(&["create", &c, "--network", "n2"]);
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let cases = vec![
        Case {
            name: "iptables: other network",
            args: s(&[&c, &format!("{a}:80")]),
            delivered: false,
            real: None,
            word: "NSNET-ISOLATE",
        },
        Case {
            name: "iptables: published port from the LAN",
            args: s(&[LAN_IP, &format!("{HOST_IP}:8080")]),
            delivered: true,
            real: Some(("a".into(), 80, h.lan_path(), addr(HOST_IP, 8080))),
            word: "NSNET-PORTS",
        },
        Case {
            name: "iptables: spoofed source",
            args: s(&[&a, &c, "--src", "172.16.1.9"]),
            delivered: false,
            real: None,
            word: "NSNET-GUARD",
        },
    ];
    check(&h, &cases, false);
    let (_, probed) = explain(&h, &[&c, &format!("{a}:80"), "--probe"]);
    assert!(probed["probe"].get("trace").is_none());
    assert!(probed["probe"]["notes"].to_string().contains("iptables"));
    h.ok(&["rm", &a]);
    h.ok(&["rm", &c]);
    h.ok(&["network", "rm", "n1"]);
    h.ok(&["network", "rm", "n2"]);
}

#[test]
fn bad_input_exits_2_and_changes_nothing() {
    let h = TestHost::with_lan("explbad");
    h.ok(&["network", "create", "n1", "--subnet", "172.16.1.0/24"]);
    let a = h.sb("a");
    h.ok(&["create", &a, "--network", "n1"]);
    let before = h.snapshot();
    let to_a = format!("{a}:80");
    let bad: Vec<Vec<&str>> = vec![
        vec!["explain", "nosuch", &a],
        vec!["explain", &a, "nosuch:80"],
        vec!["explain", &a, "host:0"],
        vec!["explain", &a, "host:65536"],
        vec!["explain", &a, "host:http"],
        vec!["explain", &a, "host:80/sctp"],
        vec!["explain", &a, "host:80/icmp"],
        vec!["explain", "host", &a, "--src", "172.16.1.9"],
        vec!["explain", LAN_IP, "192.0.2.7"],
        vec!["explain", "999.1.1.1", &a],
        vec!["explain", &a],
        // A probe from a LAN address needs a way onto that machine.
        vec!["explain", LAN_IP, &to_a, "--probe"],
    ];
    for args in bad {
        let out = h.nsnet(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        common::check_one_line_failure(&args, out);
    }
    assert_eq!(h.snapshot(), before);
    h.ok(&["rm", &a]);
    h.ok(&["network", "rm", "n1"]);
}

/// The text output names the path and the rule, for a person (the README shows one).
#[test]
fn the_text_names_hops_and_the_rule() {
    let h = TestHost::new("expltext");
    h.ok(&["network", "create", "n1", "--subnet", "172.16.1.0/24"]);
    h.ok(&["network", "create", "n2", "--subnet", "172.16.2.0/24"]);
    let (a, c) = (h.sb("a"), h.sb("c"));
    h.ok(&["create", &a, "--network", "n1"]);
    h.ok(&["create", &c, "--network", "n2"]);
    let out = h.nsnet(&["explain", &a, &format!("{c}:80")]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("verdict: DROPPED"), "{text}");
    assert!(
        text.contains("decided by: inet nsnet forward: iifname . oifname @isolation drop"),
        "{text}"
    );
    let ip: Ipv4Addr = h.inspect(&c)["endpoints"][0]["address"]
        .as_str()
        .and_then(|s| s.split('/').next())
        .and_then(|s| s.parse().ok())
        .expect("c's address");
    assert!(text.contains(&ip.to_string()), "{text}");
    h.ok(&["rm", &a]);
    h.ok(&["rm", &c]);
    h.ok(&["network", "rm", "n1"]);
    h.ok(&["network", "rm", "n2"]);
}

/// A host whose own forward chain drops by policy: explain knows which of nsnet's accepts there cover the
/// packet, and says so when none does.
#[test]
fn a_drop_policy_host_is_explained() {
    let h = TestHost::with_lan("expldrop");
    // The host's own firewall, there before nsnet's first network: nsnet puts its accepts in it.
    for cmd in [
        "add table ip hostfw",
        "add chain ip hostfw forward { type filter hook forward priority filter; policy drop; }",
    ] {
        h.in_host(&["nft", cmd]);
    }
    h.ok(&["network", "create", "n1", "--subnet", "172.16.1.0/24"]);
    h.ok(&[
        "network",
        "create",
        "r",
        "--subnet",
        "172.16.6.0/24",
        "--gateway-mode",
        "routed",
    ]);
    h.ok(&[
        "network",
        "create",
        "slow",
        "--subnet",
        "172.16.7.0/24",
        "--fast-path=false",
    ]);
    let (a, t, p, q) = (h.sb("a"), h.sb("t"), h.sb("p"), h.sb("q"));
    h.ok(&[
        "create",
        &a,
        "--network",
        "n1",
        "--ip",
        "172.16.1.2",
        "-p",
        "8080:80",
    ]);
    h.ok(&["create", &t, "--network", "r", "--ip", "172.16.6.2"]);
    h.ok(&["create", &p, "--network", "slow", "--ip", "172.16.7.2"]);
    h.ok(&["create", &q, "--network", "slow", "--ip", "172.16.7.3"]);
    let lan = h.lan.clone().expect("a LAN peer");
    common::sh(&[
        "ip",
        "-n",
        &lan,
        "route",
        "add",
        "172.16.6.0/24",
        "via",
        HOST_IP,
    ]);
    let before = ruleset(&h);
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let cases = vec![
        Case {
            name: "drop policy: published port from the LAN",
            args: s(&[LAN_IP, &format!("{HOST_IP}:8080")]),
            delivered: true,
            real: Some(("a".into(), 80, h.lan_path(), addr(HOST_IP, 8080))),
            word: "@ports",
        },
        Case {
            name: "drop policy: a sandbox to the LAN",
            args: s(&[&a, &format!("{LAN_IP}:83/udp")]),
            delivered: true,
            real: None,
            word: "nsnet nsbr-n1",
        },
        Case {
            name: "drop policy: the LAN to a routed sandbox directly",
            args: s(&[LAN_IP, &format!("{t}:81")]),
            delivered: false,
            real: Some(("t".into(), 81, h.lan_path(), addr("172.16.6.2", 81))),
            word: "policy",
        },
        Case {
            name: "no fast path: the bridge forwards",
            args: s(&[&p, &format!("{q}:80")]),
            delivered: true,
            real: Some(("q".into(), 80, h.sb_path("p"), addr("172.16.7.3", 80))),
            word: "bridge",
        },
    ];
    check(&h, &cases, true);
    assert_eq!(ruleset(&h), before, "a probe left something in the ruleset");
    for sb in [&a, &t, &p, &q] {
        h.ok(&["rm", sb]);
    }
    for n in ["n1", "r", "slow"] {
        h.ok(&["network", "rm", n]);
    }
    common::sh(&["ip", "-n", &lan, "route", "del", "172.16.6.0/24"]);
    h.in_host(&["nft", "delete", "table", "ip", "hostfw"]);
}

/// The probe's trace tables go even when the probe is interrupted, and a probe deletes those a killed probe
/// left; nothing else in the ruleset changes.
#[test]
fn the_probe_leaves_no_table_behind() {
    let h = TestHost::new("explclean");
    h.ok(&["network", "create", "n1", "--subnet", "172.16.1.0/24"]);
    h.ok(&["network", "create", "n2", "--subnet", "172.16.2.0/24"]);
    let (a, c) = (h.sb("a"), h.sb("c"));
    h.ok(&["create", &a, "--network", "n1"]);
    h.ok(&["create", &c, "--network", "n2"]);
    let before = ruleset(&h);
    // A dropped probe waits for its listener (seconds): interrupt it meanwhile.
    let to = format!("{c}:80");
    let mut child = h.spawn(&["explain", &a, &to, "--probe"]);
    common::wait_for_exec(child.id(), "nsnet");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut traced = false;
    while !traced && std::time::Instant::now() < deadline {
        traced = ruleset(&h).contains("nsnet_probe_");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(traced, "the probe's tables never appeared");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let status = common::wait_exit(&mut child);
    assert!(!status.success());
    assert_eq!(ruleset(&h), before, "an interrupted probe left its tables");
    // Tables of a probe that was killed outright (its pid gone): the next probe deletes them.
    h.in_host(&["nft", "add table ip nsnet_probe_4999999"]);
    let (code, _) = explain(&h, &[&a, &to, "--probe"]);
    assert_eq!(code, 1);
    assert_eq!(ruleset(&h), before);
    h.ok(&["rm", &a]);
    h.ok(&["rm", &c]);
    h.ok(&["network", "rm", "n1"]);
    h.ok(&["network", "rm", "n2"]);
}

/// IPv6 (behind the gate): a dual-stack and an IPv6-only network, each with a sandbox publishing a port.
/// explain names the IPv6 facts (addresses with the link-local one, the default route via the gateway, the
/// gateway on the bridge, neighbour discovery, NAT66, the IPv6 DNAT element) and real connections agree; an
/// IPv6 object deleted by hand (a port's DNAT element, the sandbox's address) is named as broken and the
/// packet dropped, and `gc` puts the firewall's element back. Bad IPv6 input exits 2 and changes nothing.
#[test]
fn explain_follows_ipv6_and_names_what_is_broken() {
    use common::{reach_any, HOST_IP6, LAN_IP6};
    use std::net::SocketAddr;
    let h = TestHost::with_lan6("expl6");
    // IPv6 forwarding stays on once on (with the uplink's subnet-router anycast routes): as a host has it.
    h.in_host(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    let empty = h.snapshot();
    h.ok(&[
        "network",
        "create",
        "dual",
        "--subnet",
        "172.16.16.0/24",
        "--ipv6",
        "--subnet",
        "fd00:16::/64",
    ]);
    h.ok(&[
        "network",
        "create",
        "only",
        "--ipv6",
        "--ipv4=false",
        "--subnet",
        "fd00:17::/64",
    ]);
    let (d, e, o) = (h.sb("d"), h.sb("e"), h.sb("o"));
    h.ok(&["create", &d, "--network", "dual", "-p", "8096:80"]);
    h.ok(&["create", &e, "--network", "dual"]);
    h.ok(&["create", &o, "--network", "only", "-p", "8097:80"]);
    let words = |v: &Value| v.to_string();
    let v6 = |s: &str| -> std::net::IpAddr { s.parse().expect("test address") };

    // Same network: neighbour discovery, then the fast path (or the bridge).
    let (code, v) = explain(&h, &["-6", &d, &format!("{e}:80")]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["ipv6"], true);
    let text = words(&v);
    assert!(
        text.contains("@nd_targets") && text.contains("fd00:16::3"),
        "{v:#}"
    );
    assert!(text.contains("link-local fe80::"), "{v:#}");
    assert!(reach_any(
        &h.sb_path("e"),
        80,
        &h.sb_path("d"),
        SocketAddr::new(v6("fd00:16::3"), 80)
    )
    .is_some());

    // --probe: a real IPv6 packet, a listener in e; ICMPv6 takes the bridge, whose rules the trace names;
    // to the LAN peer, NAT66 in the trace.
    let (code, v) = explain(&h, &["-6", &d, &format!("{e}:80"), "--probe"]);
    let p = &v["probe"];
    assert!(
        code == 0 && p["delivered"] == true && p["agrees"] == true,
        "{v:#}"
    );
    assert!(
        p["detail"]
            .as_str()
            .is_some_and(|t| t.contains("received it from [fd00:16::2]")),
        "{v:#}"
    );
    let (code, v) = explain(&h, &["-6", &d, &e, "--probe"]);
    let p = &v["probe"];
    assert!(
        code == 0 && p["delivered"] == true && p["agrees"] == true,
        "{v:#}"
    );
    assert!(
        p["trace"].to_string().contains("bridge nsnet prerouting"),
        "{v:#}"
    );
    let (code, v) = explain(&h, &[&d, &format!("[{LAN_IP6}]:443"), "--probe"]);
    let p = &v["probe"];
    assert!(
        code == 0 && p["delivered"] == true && p["agrees"] == true,
        "{v:#}"
    );
    assert!(p["trace"].to_string().contains("@masq_nets6"), "{v:#}");

    // Out to the LAN peer: the default route via the gateway, the gateway on the bridge, NAT66.
    let (code, v) = explain(&h, &[&d, &format!("[{LAN_IP6}]:443")]);
    assert_eq!(code, 0, "{v:#}");
    let text = words(&v);
    assert!(text.contains("default via fd00:16::1 dev eth0"), "{v:#}");
    assert!(
        text.contains("fd00:16::1 (and fe80::1) is nsbr-dual's"),
        "{v:#}"
    );
    assert!(
        text.contains("@masq_nets6 masquerade (element fd00:16::/64)"),
        "{v:#}"
    );
    // An IPv6-only sandbox's question is IPv6 without -6.
    let (code, v) = explain(&h, &[&o, "host"]);
    assert_eq!((code, &v["ipv6"]), (0, &Value::Bool(true)), "{v:#}");
    assert!(words(&v).contains("fd00:17::1"), "{v:#}");

    // Published ports over IPv6, from the LAN peer; the real connection agrees.
    for (port, sb, target) in [("8096", "d", "fd00:16::2"), ("8097", "o", "fd00:17::2")] {
        let (code, v) = explain(&h, &[LAN_IP6, &format!("[{HOST_IP6}]:{port}")]);
        assert_eq!(code, 0, "{v:#}");
        assert_eq!(v["to"], format!("[{HOST_IP6}]"));
        let rule = v["verdict"]["rule"]["rule"].as_str().unwrap_or_default();
        assert!(
            rule.contains(&format!("@ports6 (element tcp . {port} : {target} . 80)")),
            "{v:#}"
        );
        let to = SocketAddr::new(v6(HOST_IP6), port.parse().expect("port"));
        assert_eq!(
            reach_any(&h.sb_path(sb), 80, &h.lan_path(), to),
            Some(v6(LAN_IP6)),
            "{port}"
        );
    }

    // From the host to [::1]: the cgroup programs translate the socket (the test's cgroup holds them).
    let (code, v) = explain(&h, &["host", "[::1]:8096"]);
    assert_eq!(code, 0, "{v:#}");
    assert!(words(&v).contains("cgroup bpf nsnet_lo6"), "{v:#}");

    // Behind nsnet's back: the dual-stack port's IPv6 DNAT element.
    h.in_host(&[
        "nft",
        "delete",
        "element",
        "inet",
        "nsnet",
        "ports6",
        "{ tcp . 8096 }",
    ]);
    let (code, v) = explain(&h, &[LAN_IP6, &format!("[{HOST_IP6}]:8096")]);
    assert_eq!(code, 1, "{v:#}");
    assert!(
        v["broken"][0]
            .as_str()
            .is_some_and(|b| b.contains("lacks the IPv6 DNAT element")),
        "{v:#}"
    );
    let out = h.nsnet(&["explain", LAN_IP6, &format!("[{HOST_IP6}]:8096")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("BROKEN: the firewall lacks the IPv6 DNAT element"),
        "{text}"
    );
    let to = SocketAddr::new(v6(HOST_IP6), 8096);
    assert_eq!(reach_any(&h.sb_path("d"), 80, &h.lan_path(), to), None);
    h.ok(&["gc"]);
    let (code, v) = explain(&h, &[LAN_IP6, &format!("[{HOST_IP6}]:8096")]);
    assert_eq!(code, 0, "{v:#}");
    assert!(v.get("broken").is_none(), "{v:#}");

    // The sandbox's IPv6 address: broken, nothing is sent from it (gc restores links and the firewall, not
    // addresses: put back by hand).
    common::sh(&[
        "ip",
        "-n",
        &d,
        "addr",
        "del",
        "fd00:16::2/64",
        "dev",
        "eth0",
    ]);
    let (code, v) = explain(&h, &[&d, &format!("[{LAN_IP6}]:443")]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(
        v["broken"][0],
        format!("sandbox {d}: eth0 has lost IPv6 address fd00:16::2/64")
    );
    common::sh(&[
        "ip",
        "-n",
        &d,
        "addr",
        "add",
        "fd00:16::2/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    let (code, v) = explain(&h, &[&d, &format!("[{LAN_IP6}]:443")]);
    assert_eq!(code, 0, "{v:#}");

    // Bad input: one line, exit 2, nothing changed.
    let before = h.snapshot();
    for args in [
        vec!["explain", "-6", &d, "10.0.1.26"],
        vec!["explain", &d, "[fd00:16::3]80"],
        vec!["explain", &d, "fd00::zz"],
        vec!["explain", LAN_IP, "fd00:16::3"],
        vec!["explain", &d, &e, "--src", "172.16.16.9", "-6"],
        vec!["explain", LAN_IP6, "[2001:db8:9::1]:80"],
        // --probe sends IPv6 from a sandbox, with its own source, only.
        vec!["explain", "-6", "host", &e, "--probe"],
        vec!["explain", &d, &e, "--src", "fd00:16::99", "--probe"],
    ] {
        let out = h.nsnet(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        common::check_one_line_failure(&args, out);
    }
    assert_eq!(h.snapshot(), before);

    h.ok(&["rm", &d]);
    h.ok(&["rm", &e]);
    h.ok(&["rm", &o]);
    h.ok(&["network", "rm", "dual"]);
    h.ok(&["network", "rm", "only"]);
    assert_eq!(h.snapshot(), empty);
}
