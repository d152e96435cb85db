//! `nsnet topology` on the real kernel: what it lists, what it marks broken once something is deleted behind
//! nsnet's back, the NAME filter and a bad NAME, an overlay network's other hosts; the progress line of `network rm --force`; `--version`,
//! `completions` and `man` from the binary.

mod world;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use world::common::{nsnet_bin, sh, TestHost, LAN_IP};
use world::{in_ns, wait_until, Signal, World};

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("JSON output")
}

fn broken(t: &Value) -> Vec<String> {
    t["broken"]
        .as_array()
        .expect("broken is a list")
        .iter()
        .map(|b| b.as_str().expect("a line").to_string())
        .collect()
}

fn sandbox<'a>(t: &'a Value, name: &str) -> &'a Value {
    t["sandboxes"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no sandbox {name} in {t:#}"))
}

/// The MAC of `ifname` inside namespace `ns`, as the kernel has it.
fn kernel_mac(ns: &str, ifname: &str) -> String {
    let links = json(&sh(&["ip", "-j", "-n", ns, "link", "show", ifname]));
    links[0]["address"].as_str().expect("address").to_string()
}

#[test]
fn topology_shows_what_exists_and_marks_exactly_what_broke() {
    let h = TestHost::with_lan("topo");
    // An uplink with a default route, as a real host has.
    h.in_host(&[
        "ip", "route", "add", "default", "via", LAN_IP, "dev", "uplink0",
    ]);
    let empty = h.snapshot();
    let (a, b, c) = (h.sb("a"), h.sb("b"), h.sb("c"));
    h.ok(&[
        "network",
        "create",
        "web",
        "--subnet",
        "172.16.0.0/24",
        "--bridge",
        "nstweb",
    ]);
    h.ok(&[
        "network",
        "create",
        "db",
        "--subnet",
        "172.16.1.0/24",
        "--internal",
    ]);
    h.ok(&["create", &a, "--network", "web", "-p", "8088:80"]);
    h.ok(&["create", &b, "--network", "web"]);
    h.ok(&["create", &c, "--network", "db"]);

    let t = json(&h.ok(&["topology", "--json"]));
    assert_eq!(broken(&t), Vec::<String>::new(), "{t:#}");
    assert_eq!(t["host"]["uplink"]["interface"], "uplink0");
    assert_eq!(t["host"]["uplink"]["addresses"][0], "10.0.1.48/24");
    assert_eq!(t["host"]["uplink"]["gateway"], LAN_IP);
    let nets: Vec<&str> = t["networks"]
        .as_array()
        .expect("networks")
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(nets, ["db", "web"]);
    assert_eq!(t["networks"][0]["internal"], true);
    assert_eq!(t["networks"][1]["interface"], "nstweb");
    assert_eq!(t["networks"][1]["gateway"], "172.16.0.1");
    assert_eq!(t["networks"][1]["fast_path"], true);
    for (name, address) in [
        (&a, "172.16.0.2/24"),
        (&b, "172.16.0.3/24"),
        (&c, "172.16.1.2/24"),
    ] {
        let sb = sandbox(&t, name);
        assert_eq!(sb["state"], "ok", "{sb:#}");
        let ep = &sb["endpoints"][0];
        assert_eq!(ep["address"], address);
        assert_eq!(ep["state"], "ok");
        // The MAC is the kernel's, on both ends of the pair.
        assert_eq!(ep["mac"].as_str(), Some(kernel_mac(name, "eth0").as_str()));
        let host_end = ep["host_interface"].as_str().expect("host end");
        let links = json(&h.in_host(&["ip", "-j", "link", "show", host_end]));
        assert!(links[0]["ifname"] == host_end);
    }
    let port = &sandbox(&t, &a)["endpoints"][0]["ports"][0];
    assert_eq!(
        (port["host_port"].as_u64(), port["container_port"].as_u64()),
        (Some(8088), Some(80))
    );
    assert_eq!(port["target"], "172.16.0.2");
    assert_eq!(port["protocol"], "tcp");
    assert_eq!(port["state"], "ok");
    let text = h.ok(&["topology"]);
    assert!(!text.contains('✗') && !text.contains('\x1b'), "{text}");
    assert!(
        text.contains("port 0.0.0.0:8088/tcp -> 172.16.0.2:80"),
        "{text}"
    );

    // NAME: one network with its sandboxes, or one sandbox with its networks.
    let db = json(&h.ok(&["topology", "db", "--json"]));
    assert_eq!(db["networks"].as_array().map(Vec::len), Some(1));
    assert_eq!(db["sandboxes"].as_array().map(Vec::len), Some(1));
    assert_eq!(db["sandboxes"][0]["name"], c.as_str());
    let one = json(&h.ok(&["topology", &a, "--json"]));
    assert_eq!(one["sandboxes"].as_array().map(Vec::len), Some(1));
    assert_eq!(one["networks"][0]["name"], "web");

    // A bad NAME, or two formats: one line, non-zero, nothing changed.
    let before = h.snapshot();
    let err = h.fails(&["topology", "nosuch"]);
    assert!(
        err.contains("no network or sandbox named 'nosuch'") && err.contains("nsnet ls"),
        "{err}"
    );
    let err = h.fails(&["topology", "--json", "--format", "dot"]);
    assert!(err.contains("--json") && err.contains("--format"), "{err}");
    let err = h.fails(&["topology", "--format", "png"]);
    assert!(err.contains("png"), "{err}");
    assert_eq!(h.snapshot(), before);

    // Behind nsnet's back: b's host veth goes (and its pair with it).
    let b_host = sandbox(&t, &b)["endpoints"][0]["host_interface"]
        .as_str()
        .expect("host end")
        .to_string();
    h.in_host(&["ip", "link", "del", &b_host]);
    let t = json(&h.ok(&["topology", "--json"]));
    let lines = broken(&t);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].starts_with(&format!(
            "sandbox {b} eth0 on web: host end {b_host} is missing"
        )),
        "{lines:#?}"
    );
    assert_eq!(sandbox(&t, &b)["endpoints"][0]["state"], "broken");
    for ok in [&a, &c] {
        assert_eq!(sandbox(&t, ok)["endpoints"][0]["state"], "ok");
    }
    assert!(t["networks"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|n| n["state"] == "ok"));
    let text = h.ok(&["topology"]);
    let marked: Vec<&str> = text.lines().filter(|l| l.contains("✗ BROKEN")).collect();
    assert_eq!(marked.len(), 2, "{text}"); // the endpoint's line and the summary
    assert!(marked[0].contains(&b_host), "{text}");
    let dot = h.ok(&["topology", "--format", "dot"]);
    assert_eq!(
        dot.lines().filter(|l| l.contains("color=red")).count(),
        1,
        "{dot}"
    );
    let svg = h.ok(&["topology", "--format", "svg"]);
    assert!(svg.starts_with("<?xml") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("stroke-dasharray=\"7 4\"") && svg.contains(&a));

    // Its namespace goes from under c: c is broken, and only c.
    sh(&["ip", "netns", "del", &c]);
    let t = json(&h.ok(&["topology", "--json"]));
    assert_eq!(sandbox(&t, &c)["state"], "broken");
    assert!(sandbox(&t, &c)["problems"][0]
        .as_str()
        .is_some_and(|p| p.contains("is gone")));
    let lines = broken(&t);
    assert!(
        lines.iter().all(|l| l.contains(&c) || l.contains(&b_host)),
        "{lines:#?}"
    );
    assert_eq!(sandbox(&t, &a)["state"], "ok");

    // gc puts it right, and topology says so.
    h.ok(&["gc"]);
    let t = json(&h.ok(&["topology", "--json"]));
    assert_eq!(broken(&t), Vec::<String>::new(), "{t:#}");
    assert_eq!(t["sandboxes"].as_array().map(Vec::len), Some(2));

    h.ok(&["rm", &a]);
    h.ok(&["rm", &b]);
    h.ok(&["network", "rm", "web"]);
    h.ok(&["network", "rm", "db"]);
    assert_eq!(h.snapshot(), empty);
}

/// A tagged link no record owns shows up as broken, and so does a missing bridge.
#[test]
fn topology_marks_strays_and_missing_bridges() {
    let h = TestHost::new("topostray");
    let empty = h.snapshot();
    let a = h.sb("a");
    h.ok(&["network", "create", "web", "--subnet", "172.16.0.0/24"]);
    h.ok(&["create", &a, "--network", "web"]);
    let tag = {
        let links = json(&h.in_host(&["ip", "-j", "link", "show", "nsbr-web"]));
        links[0]["ifalias"]
            .as_str()
            .expect("tagged bridge")
            .to_string()
    };
    h.in_host(&["ip", "link", "add", "nststray", "type", "bridge"]);
    h.in_host(&["ip", "link", "set", "nststray", "alias", &tag]);
    let t = json(&h.ok(&["topology", "--json"]));
    assert_eq!(t["strays"][0]["name"], "nststray", "{t:#}");
    assert_eq!(broken(&t).len(), 1, "{t:#}");
    // The bridge goes, and the veth's host end with it.
    h.in_host(&["ip", "link", "del", "nsbr-web"]);
    let t = json(&h.ok(&["topology", "web", "--json"]));
    assert_eq!(t["networks"][0]["state"], "broken");
    assert_eq!(
        t["networks"][0]["problems"][0],
        "bridge nsbr-web is missing"
    );
    h.ok(&["gc"]);
    let t = json(&h.ok(&["topology", "--json"]));
    assert_eq!(broken(&t), Vec::<String>::new(), "{t:#}");
    h.ok(&["network", "rm", "web", "--force"]);
    h.ok(&["rm", &a]);
    assert_eq!(h.snapshot(), empty);
}

/// `network rm --force` draws its progress on a terminal (here a pseudo-terminal from `script`), and prints
/// nothing of it when stderr is not one.
#[test]
fn network_rm_force_shows_progress_only_on_a_terminal() {
    let h = TestHost::new("progress");
    let empty = h.snapshot();
    let names: Vec<String> = (0..4).map(|i| h.sb(&format!("p{i}"))).collect();
    let create_all = |net: &str| {
        h.ok(&["network", "create", net, "--subnet", "172.16.2.0/24"]);
        for n in &names {
            h.ok(&["create", n, "--network", net]);
        }
    };
    create_all("many");
    let out = h.nsnet(&["network", "rm", "many", "--force"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "no progress off a terminal"
    );
    for n in &names {
        h.ok(&["rm", n]);
    }

    // nsnet with a pseudo-terminal for stdout and stderr: what it wrote to them, together.
    let on_terminal = |args: &str| {
        let line = format!(
            "NSNET_STATE_DIR={} NSNET_CGROUP={} NSNET_RESOLV_CONF={} nsenter --net={} -- {} {args}",
            h.state.display(),
            h.cgroup.display(),
            h.resolv_conf().display(),
            h.host_path().display(),
            nsnet_bin().display()
        );
        let out = Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .output()
            .expect("script");
        let seen = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{seen}");
        seen
    };
    create_all("many");
    let seen = on_terminal("network rm many --force");
    for i in 1..4 {
        assert!(
            seen.contains(&format!("\rdetaching sandboxes from many {i}/4")),
            "{seen:?}"
        );
    }
    // The line is cleared at the end; the command's own output follows.
    assert!(seen.contains("\r\x1b[K"), "{seen:?}");
    assert!(seen.trim_end().ends_with("many"), "{seen:?}");
    for n in &names {
        h.ok(&["rm", n]);
    }

    // gc counts its steps: here releasing sandboxes whose namespaces went behind nsnet's back.
    create_all("many");
    for n in &names {
        sh(&["ip", "netns", "del", n]);
    }
    let seen = on_terminal("gc");
    assert!(seen.contains("\rgc: step 1/"), "{seen:?}");
    assert!(seen.contains("released sandbox"), "{seen:?}");
    h.ok(&["network", "rm", "many"]);
    assert_eq!(h.snapshot(), empty);
}

#[test]
fn version_completions_and_man_come_from_the_binary() {
    let run = |args: &[&str]| {
        let out = Command::new(nsnet_bin())
            .args(args)
            .output()
            .expect("nsnet");
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let version = run(&["--version"]);
    assert!(
        version.starts_with(&format!("nsnet {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    let head = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let Some(head) = head {
        assert_eq!(
            version.trim_end(),
            format!("nsnet {} (commit {head})", env!("CARGO_PKG_VERSION"))
        );
    }
    let bash = run(&["completions", "bash"]);
    assert!(
        bash.contains("topology") && bash.contains("network"),
        "{bash}"
    );
    assert!(run(&["completions", "zsh"]).contains("#compdef nsnet"));
    assert!(run(&["completions", "fish"]).contains("complete -c nsnet"));
    let page = run(&["man"]);
    assert!(page.contains(".TH nsnet 1"), "{page}");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_string_lossy().into_owned();
    run(&["man", "--dir", &path]);
    for page in ["nsnet.1", "nsnet-topology.1", "nsnet-network-rm.1"] {
        assert!(dir.path().join(page).exists(), "no {page}");
    }
    let out = Command::new(nsnet_bin())
        .args(["completions", "tcsh"])
        .output()
        .expect("nsnet");
    assert_eq!(out.status.code(), Some(2));
}

/// An overlay network's other hosts, with their blocks and underlay addresses; a route to one that goes while
/// the agent is away is marked, and the agent's return puts it right.
#[test]
fn topology_shows_an_overlay_networks_other_hosts() {
    let w = World::new("topoovl", 2);
    let url = w.etcd_url();
    w.ok(
        1,
        &[
            "network",
            "create",
            "pods",
            "--driver",
            "overlay",
            "--subnet",
            "10.244.0.0/16",
            "--etcd",
            &url,
        ],
    );
    for i in 1..=2 {
        w.start_agent(i, &["--lease-ttl", "3"]);
    }
    let topo = |i: usize| json(&w.ok(i, &["topology", "--json"]));
    let peers = |t: &Value| {
        t["networks"][0]["overlay"]["peers"]
            .as_array()
            .map(Vec::len)
    };
    for i in 1..=2 {
        assert!(
            wait_until(Duration::from_secs(15), || peers(&topo(i)) == Some(1)),
            "host {i} did not join: {}",
            w.agent_log(i)
        );
    }
    let (t1, t2) = (topo(1), topo(2));
    assert_eq!(broken(&t1), Vec::<String>::new(), "{t1:#}");
    let net = &t1["networks"][0];
    assert_eq!(net["driver"], "overlay/vxlan");
    assert_eq!(net["overlay"]["cluster"], "10.244.0.0/16");
    let peer = &net["overlay"]["peers"][0];
    let block2 = t2["networks"][0]["subnet"]
        .as_str()
        .expect("block")
        .to_string();
    assert_eq!(peer["subnet"], block2.as_str());
    assert_eq!(peer["underlay"], w.host_ip(2).to_string());
    assert_eq!(peer["state"], "ok");
    let text = w.ok(1, &["topology"]);
    assert!(
        text.contains(&format!("host at {} has {block2}", w.host_ip(2))),
        "{text}"
    );

    // The agent away, the route to host 2's block goes.
    w.kill_agent(1, Signal::SIGKILL);
    in_ns(&w.host_path(1), &["ip", "route", "del", &block2]);
    let t = topo(1);
    let lines = broken(&t);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains(&block2) && lines[0].contains("no route"),
        "{lines:#?}"
    );
    assert_eq!(t["networks"][0]["overlay"]["peers"][0]["state"], "broken");
    assert_eq!(t["networks"][0]["state"], "ok");
    assert!(w.ok(1, &["topology"]).contains("✗ BROKEN"));
    w.start_agent(1, &["--lease-ttl", "3"]);
    assert!(
        wait_until(Duration::from_secs(15), || broken(&topo(1)).is_empty()),
        "the agent did not put the route back: {}",
        w.agent_log(1)
    );

    w.ok(1, &["network", "rm", "pods", "--etcd", &url]);
    for i in 1..=2 {
        assert!(
            wait_until(Duration::from_secs(15), || !w
                .nsnet(i, &["network", "inspect", "pods"])
                .status
                .success()),
            "host {i} kept its part: {}",
            w.agent_log(i)
        );
    }
}

/// A dual-stack and an IPv6-only network, each with a sandbox publishing a port: topology names each IPv6
/// subnet, gateway and address and one port line per family; an IPv6 DNAT element, an anti-spoofing element,
/// the bridge's `fe80::1` and a sandbox's IPv6 address deleted by hand are each marked broken; `gc` puts the
/// firewall's elements and a deleted veth back.
#[test]
fn topology_shows_ipv6_and_marks_lost_ipv6_objects() {
    let h = TestHost::with_lan6("topo6");
    // An IPv6-only uplink: a default route via the LAN peer for IPv6 alone.
    h.in_host(&[
        "ip",
        "-6",
        "route",
        "add",
        "default",
        "via",
        world::common::LAN_IP6,
        "dev",
        "uplink0",
    ]);
    // IPv6 forwarding stays on once on (with the uplink's subnet-router anycast routes): as a host has it.
    h.in_host(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    let empty = h.snapshot();
    let (d, o) = (h.sb("d"), h.sb("o"));
    h.ok(&[
        "network",
        "create",
        "dual",
        "--subnet",
        "172.16.6.0/24",
        "--ipv6",
        "--subnet",
        "fd00:6::/64",
        "--bridge",
        "nst6dual",
    ]);
    h.ok(&[
        "network",
        "create",
        "only",
        "--ipv6",
        "--ipv4=false",
        "--subnet",
        "fd00:7::/64",
        "--bridge",
        "nst6only",
    ]);
    h.ok(&["create", &d, "--network", "dual", "-p", "8086:80"]);
    h.ok(&["create", &o, "--network", "only", "-p", "8087:80"]);

    let t = json(&h.ok(&["topology", "--json"]));
    assert_eq!(broken(&t), Vec::<String>::new(), "{t:#}");
    let uplink = &t["host"]["uplink"];
    assert_eq!(uplink["interface"], "uplink0", "{t:#}");
    assert_eq!(
        uplink["addresses6"][0],
        format!("{}/64", world::common::HOST_IP6)
    );
    assert_eq!(uplink["gateway6"], world::common::LAN_IP6);
    assert!(uplink["gateway"].is_null(), "{t:#}");
    let net = |name: &str| {
        t["networks"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no network {name} in {t:#}"))
    };
    let (dual, only) = (net("dual"), net("only"));
    assert_eq!(dual["subnet"], "172.16.6.0/24");
    assert_eq!(dual["ipv6"]["subnet"], "fd00:6::/64");
    assert_eq!(dual["ipv6"]["gateway"], "fd00:6::1");
    assert_eq!(dual["ipv6"]["link_local"], "fe80::1");
    assert_eq!(dual["ipv6"]["nat"], true);
    assert!(only.get("subnet").is_none(), "{only:#}");
    assert_eq!(only["ipv6"]["subnet"], "fd00:7::/64");
    let ep = &sandbox(&t, &d)["endpoints"][0];
    assert_eq!(ep["address"], "172.16.6.2/24");
    assert_eq!(ep["ipv6"]["address"], "fd00:6::2/64");
    let ports: Vec<(&str, &str)> = ep["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["target"].as_str().unwrap_or(""),
                p["state"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(ports, [("172.16.6.2", "ok"), ("fd00:6::2", "ok")]);
    let oep = &sandbox(&t, &o)["endpoints"][0];
    assert!(oep.get("address").is_none(), "{oep:#}");
    assert_eq!(oep["ipv6"]["address"], "fd00:7::2/64");
    // The link-local address is the kernel's.
    let inside = h.in_host(&[
        "nsenter",
        &format!("--net=/run/netns/{o}"),
        "--",
        "ip",
        "-6",
        "-o",
        "addr",
        "show",
        "dev",
        "eth0",
        "scope",
        "link",
    ]);
    let ll = oep["ipv6"]["link_local"].as_str().expect("link-local");
    assert!(inside.contains(&format!("{ll}/64")), "{inside}");
    assert_eq!(oep["ports"][0]["target"], "fd00:7::2");
    let text = h.ok(&["topology"]);
    for want in [
        "172.16.6.0/24 gateway 172.16.6.1, fd00:6::/64 gateway fd00:6::1 (fe80::1)",
        "fd00:7::/64 gateway fd00:7::1 (fe80::1)",
        "port 0.0.0.0:8086/tcp -> 172.16.6.2:80",
        "port [::]:8086/tcp -> [fd00:6::2]:80",
        "port [::]:8087/tcp -> [fd00:7::2]:80",
        "eth0 fd00:7::2/64 fe80::",
    ] {
        assert!(text.contains(want), "{want} in {text}");
    }
    assert!(!text.contains('✗'), "{text}");

    // The listings: IPv6 columns beside the IPv4 ones (`-` where a family is absent), JSON with the IPv6 fields.
    let ls = h.ok(&["ls"]);
    let head: Vec<&str> = ls.lines().next().unwrap_or("").split_whitespace().collect();
    assert_eq!(
        head,
        [
            "NAME",
            "NETNS",
            "NETWORKS",
            "ADDRESSES",
            "IPV6",
            "PORTS",
            "STATUS"
        ],
        "{ls}"
    );
    let row = |table: &str, name: &str| -> Vec<String> {
        let line = table.lines().find(|l| l.starts_with(&format!("{name} ")));
        line.unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        row(&ls, &d)[3..5],
        ["172.16.6.2/24", "fd00:6::2/64"],
        "{ls}"
    );
    assert_eq!(row(&ls, &o)[3..5], ["-", "fd00:7::2/64"], "{ls}");
    let nets = h.ok(&["network", "ls"]);
    let head: Vec<&str> = nets
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        head,
        [
            "NAME",
            "DRIVER",
            "SUBNET",
            "GATEWAY",
            "SUBNET6",
            "GATEWAY6",
            "INTERFACE",
            "SANDBOXES"
        ],
        "{nets}"
    );
    assert_eq!(
        row(&nets, "dual")[2..6],
        ["172.16.6.0/24", "172.16.6.1", "fd00:6::/64", "fd00:6::1"],
        "{nets}"
    );
    assert_eq!(
        row(&nets, "only")[2..6],
        ["-", "-", "fd00:7::/64", "fd00:7::1"],
        "{nets}"
    );
    let ls_json = json(&h.ok(&["ls", "--json"]));
    let d_json = ls_json
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == d.as_str()))
        .expect("d in ls --json");
    assert_eq!(d_json["endpoints"][0]["ipv6"]["address"], "fd00:6::2/64");
    let inspect = h.ok(&["network", "inspect", "only"]);
    for want in [
        "subnet:     none\n",
        "subnet6:    fd00:7::/64\n",
        "gateway6:   fd00:7::1 (fe80::1)\n",
        "nat66:      true\n",
    ] {
        assert!(inspect.contains(want), "{want} in {inspect}");
    }
    let inspect = h.ok(&["inspect", &d]);
    assert!(inspect.contains("address 172.16.6.2/24 "), "{inspect}");
    assert!(
        inspect.contains("  ipv6 fd00:6::2/64 link-local fe80::"),
        "{inspect}"
    );

    // Behind nsnet's back: the dual-stack port's IPv6 DNAT element, the IPv6-only sandbox's anti-spoofing
    // element for its global address, the bridge's fe80::1 and the dual-stack sandbox's IPv6 address.
    h.in_host(&[
        "nft",
        "delete",
        "element",
        "inet",
        "nsnet",
        "ports6",
        "{ tcp . 8086 }",
    ]);
    let o_host = oep["host_interface"]
        .as_str()
        .expect("host end")
        .to_string();
    h.in_host(&[
        "nft",
        "delete",
        "element",
        "inet",
        "nsnet",
        "endpoints6",
        &format!("{{ \"{o_host}\" . fd00:7::2 }}"),
    ]);
    h.in_host(&["ip", "addr", "del", "fe80::1/64", "dev", "nst6dual"]);
    sh(&["ip", "-n", &d, "addr", "del", "fd00:6::2/64", "dev", "eth0"]);
    let t = json(&h.ok(&["topology", "--json"]));
    let lines = broken(&t);
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert_eq!(
        lines[0],
        "network dual: nst6dual has lost IPv6 address fe80::1/64"
    );
    assert_eq!(
        lines[1],
        format!("sandbox {d} eth0 on dual: eth0 has lost IPv6 address fd00:6::2/64")
    );
    assert_eq!(
        lines[2],
        format!(
            "sandbox {d} port [::]:8086/tcp -> [fd00:6::2]:80: the firewall lacks its IPv6 DNAT element"
        )
    );
    assert_eq!(
        lines[3],
        format!("sandbox {o} eth0 on only: the firewall lacks its anti-spoofing element")
    );
    assert_eq!(sandbox(&t, &d)["endpoints"][0]["ports"][0]["state"], "ok");
    let text = h.ok(&["topology"]);
    assert!(
        text.contains("port [::]:8086/tcp -> [fd00:6::2]:80  ✗ BROKEN: the firewall lacks its IPv6 DNAT element"),
        "{text}"
    );

    // gc rebuilds the firewall (both elements back); addresses are not gc's (IPv4 ones neither): put back by
    // hand, as they were.
    h.ok(&["gc"]);
    let t = json(&h.ok(&["topology", "--json"]));
    assert_eq!(broken(&t).len(), 2, "{t:#}");
    h.in_host(&[
        "ip",
        "addr",
        "add",
        "fe80::1/64",
        "dev",
        "nst6dual",
        "nodad",
    ]);
    sh(&[
        "ip",
        "-n",
        &d,
        "addr",
        "add",
        "fd00:6::2/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    let t = json(&h.ok(&["topology", "--json"]));
    assert_eq!(broken(&t), Vec::<String>::new(), "{t:#}");

    // The IPv6-only sandbox's veth goes: broken, and gc makes it again.
    h.in_host(&["ip", "link", "del", &o_host]);
    let t = json(&h.ok(&["topology", "--json"]));
    assert!(broken(&t)[0].contains("is missing"), "{t:#}");
    h.ok(&["gc"]);
    let t = json(&h.ok(&["topology", "--json"]));
    assert_eq!(broken(&t), Vec::<String>::new(), "{t:#}");

    h.ok(&["rm", &d]);
    h.ok(&["rm", &o]);
    h.ok(&["network", "rm", "dual"]);
    h.ok(&["network", "rm", "only"]);
    assert_eq!(h.snapshot(), empty);
}

/// A dual-stack overlay network: the cluster's IPv6 prefix, this host's IPv6 block (the network's IPv6
/// subnet), and each other host's IPv6 block with its route's next hop (the block's first address) and the
/// permanent neighbour entry binding it to that host's VTEP MAC, all as the kernel has them. An IPv6 route
/// and a neighbour entry deleted while the agent is away are each marked; the agent's return puts them back.
#[test]
fn topology_shows_a_dual_stack_overlays_ipv6_blocks() {
    let w = World::new6("topoov6", 2);
    let url = w.etcd_url();
    w.ok(
        1,
        &[
            "network",
            "create",
            "pods",
            "--driver",
            "overlay",
            "--subnet",
            "10.244.0.0/16",
            "--subnet",
            "fd00:10:244::/56",
            "--etcd",
            &url,
        ],
    );
    for i in 1..=2 {
        w.start_agent(i, &["--lease-ttl", "3"]);
    }
    let topo = |i: usize| json(&w.ok(i, &["topology", "--json"]));
    let peers = |t: &Value| {
        t["networks"][0]["overlay"]["peers"]
            .as_array()
            .map(Vec::len)
    };
    for i in 1..=2 {
        assert!(
            wait_until(Duration::from_secs(15), || peers(&topo(i)) == Some(1)),
            "host {i} did not join: {}",
            w.agent_log(i)
        );
    }
    let (t1, t2) = (topo(1), topo(2));
    assert_eq!(broken(&t1), Vec::<String>::new(), "{t1:#}");
    let net = &t1["networks"][0];
    assert_eq!(net["overlay"]["cluster6"], "fd00:10:244::/56");
    let block1 = net["ipv6"]["subnet"].as_str().expect("host 1's IPv6 block");
    let block2 = t2["networks"][0]["ipv6"]["subnet"]
        .as_str()
        .expect("host 2's IPv6 block")
        .to_string();
    assert_ne!(block1, block2);
    let via = block2.trim_end_matches("/64").to_string();
    assert!(via.ends_with("::"), "{via}");
    let inspect2: Value =
        serde_json::from_str(&w.ok(2, &["network", "inspect", "pods", "--json"])).expect("JSON");
    let vtep2 = inspect2["overlay"]["vtep_mac"]
        .as_str()
        .expect("host 2's VTEP MAC")
        .to_string();
    let peer = &net["overlay"]["peers"][0];
    assert_eq!(peer["subnet6"], block2.as_str());
    assert_eq!(peer["via6"], via.as_str());
    assert_eq!(peer["mac6"], vtep2.as_str());
    assert_eq!(peer["state"], "ok");
    let device = net["overlay"]["device"]
        .as_str()
        .expect("device")
        .to_string();
    let text = w.ok(1, &["topology"]);
    assert!(
        text.contains(&format!(
            "host at {} has {} and {block2} via {via} (neighbour {vtep2})",
            w.host_ip(2),
            peer["subnet"].as_str().expect("block")
        )),
        "{text}"
    );
    assert!(
        text.contains("cluster 10.244.0.0/16 and fd00:10:244::/56"),
        "{text}"
    );

    // The agent away, the IPv6 route and the neighbour entry to host 2's block go.
    w.kill_agent(1, Signal::SIGKILL);
    in_ns(&w.host_path(1), &["ip", "-6", "route", "del", &block2]);
    in_ns(
        &w.host_path(1),
        &["ip", "-6", "neigh", "del", &via, "dev", &device],
    );
    let t = topo(1);
    let lines = broken(&t);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains(&format!("no IPv6 route to {block2} via {via} on {device}"))
            && lines[0].contains(&format!(
                "no IPv6 neighbour entry {via} -> {vtep2} on {device}"
            )),
        "{lines:#?}"
    );
    assert_eq!(t["networks"][0]["overlay"]["peers"][0]["state"], "broken");
    assert_eq!(t["networks"][0]["state"], "ok");
    assert!(w.ok(1, &["topology"]).contains("✗ BROKEN"));
    w.start_agent(1, &["--lease-ttl", "3"]);
    assert!(
        wait_until(Duration::from_secs(15), || broken(&topo(1)).is_empty()),
        "the agent did not put the IPv6 route and neighbour back: {}",
        w.agent_log(1)
    );

    w.ok(1, &["network", "rm", "pods", "--etcd", &url]);
    for i in 1..=2 {
        assert!(
            wait_until(Duration::from_secs(15), || !w
                .nsnet(i, &["network", "inspect", "pods"])
                .status
                .success()),
            "host {i} kept its part: {}",
            w.agent_log(i)
        );
    }
}
