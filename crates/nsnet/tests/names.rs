//! Names (issue #18): sandboxes find each other by name through nsnet's resolver, on 127.0.0.11 inside each
//! sandbox. Real queries (`dig`, `getent`) from real sandboxes; upstream resolvers are dnsmasq instances the
//! tests start on their own LAN peer, never a real resolver.

mod common;

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::dns::*;
use common::*;

fn address(h: &TestHost, sb: &str) -> String {
    let v = h.inspect(sb);
    v["endpoints"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .expect("an address")
        .to_string()
}

/// dnsmasq on the LAN peer (10.0.1.26:53), answering `*.example.test` with 192.0.2.7 ([`dnsmasq`]).
fn upstream(h: &TestHost) -> Killed {
    dnsmasq(h, LAN_IP)
}

/// Network `n` on `subnet`, with sandboxes `a` and `b` on it; their names.
fn two_on_a_network(h: &TestHost, subnet: &str) -> (String, String) {
    h.ok(&["network", "create", "n", "--subnet", subnet]);
    let (a, b) = (h.sb("a"), h.sb("b"));
    h.ok(&["create", &a, "--network", "n"]);
    h.ok(&["create", &b, "--network", "n"]);
    (a, b)
}

/// `nsnet rm` each of `sandboxes`.
fn remove(h: &TestHost, sandboxes: &[&str]) {
    for sb in sandboxes {
        h.ok(&["rm", sb]);
    }
}

fn stop(c: Killed) {
    drop(c);
}

#[test]
fn names_resolve_within_a_network_and_never_across() {
    let h = TestHost::new("names");
    let (a, b, c, d) = (h.sb("a"), h.sb("b"), h.sb("c"), h.sb("d"));
    h.ok(&["network", "create", "front", "--subnet", "10.77.1.0/24"]);
    h.ok(&["network", "create", "back", "--subnet", "10.77.2.0/24"]);
    h.ok(&["create", &a, "--network", "front"]);
    h.ok(&[
        "create",
        &b,
        "--network",
        "front",
        "--alias",
        "web",
        "--alias",
        "Api",
    ]);
    h.ok(&["create", &c, "--network", "back", "--alias", "db"]);
    // d is on both networks (its second endpoint through attach, with an alias of that network only).
    h.ok(&["create", &d, "--network", "front"]);
    h.ok(&["attach", &d, "--network", "back", "--alias", "cache"]);
    let (ab, ac) = (address(&h, &b), address(&h, &c));

    // Within a network: the name, every alias (any case), and the reverse name.
    for name in [b.as_str(), "web", "api", "WEB."] {
        let r = dig(&h, &a, &[name]);
        assert_eq!(
            (r.status.as_str(), r.answers.clone()),
            ("NOERROR", vec![ab.clone()]),
            "{name}"
        );
    }
    let r = dig(&h, &a, &["-x", &ab]);
    assert_eq!(r.answers, vec![format!("{b}.")]);
    // A local name has no AAAA: an empty answer, not NXDOMAIN (which would spoil the A lookup).
    let r = dig(&h, &a, &[&b, "AAAA"]);
    assert_eq!((r.status.as_str(), r.answers.len()), ("NOERROR", 0));

    // Across networks: NXDOMAIN, both ways, and never the other network's address.
    for (from, name) in [
        (&a, c.as_str()),
        (&a, "db"),
        (&a, "cache"),
        (&c, a.as_str()),
        (&c, "web"),
    ] {
        let r = dig(&h, from, &[name]);
        assert_eq!(r.status, "NXDOMAIN", "{from} asking for {name}: {r:?}");
    }
    let r = dig(&h, &a, &["-x", &ac]);
    assert!(r.answers.is_empty(), "{r:?}");
    // d sees both networks' names; its back-only alias is seen on back only.
    assert_eq!(dig(&h, &d, &[&c]).answers, vec![ac.clone()]);
    assert_eq!(dig(&h, &d, &["web"]).answers, vec![ab.clone()]);
    let dc = h.inspect(&d)["endpoints"][1]["address"]
        .as_str()
        .and_then(|x| x.split('/').next())
        .expect("d's back address")
        .to_string();
    assert_eq!(dig(&h, &c, &["cache"]).answers, vec![dc]);

    // The sandbox's resolv.conf points at the resolver; `nsnet exec` shows it as /etc/resolv.conf, so the C
    // library resolves names too.
    let conf = fs::read_to_string(format!("/etc/netns/{a}/resolv.conf")).expect("resolv.conf");
    assert!(conf.contains("nameserver 127.0.0.11"), "{conf}");
    let seen = h.ok(&["exec", &a, "--", "cat", "/etc/resolv.conf"]);
    assert_eq!(seen, conf);
    let got = h.ok(&["exec", &a, "--", "getent", "hosts", "web"]);
    assert!(got.starts_with(&ab), "{got}");
    // The host's own /etc/resolv.conf is untouched by that.
    assert_ne!(
        fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        conf
    );

    for sb in [&a, &b, &c, &d] {
        h.ok(&["rm", sb]);
    }
    // The last sandbox with names gone, the resolver goes too.
    assert!(
        wait(|| h.resolver_pid().is_none()),
        "the resolver outlived its last sandbox"
    );
    assert!(h.etc_netns().is_empty());
}

fn wait(mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn a_shared_alias_answers_every_address_turning_each_time() {
    let h = TestHost::new("alias");
    h.ok(&["network", "create", "n", "--subnet", "10.77.3.0/24"]);
    let names: Vec<String> = (1..=3).map(|i| h.sb(&format!("w{i}"))).collect();
    for n in &names {
        h.ok(&["create", n, "--network", "n", "--alias", "web"]);
    }
    let mut want: Vec<String> = names.iter().map(|n| address(&h, n)).collect();
    want.sort();
    let mut firsts = Vec::new();
    for _ in 0..3 {
        let r = dig(&h, &names[0], &["web"]);
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
}

#[test]
fn a_name_answers_when_create_returns_and_is_gone_when_rm_returns() {
    let h = TestHost::new("nowait");
    h.ok(&["network", "create", "n", "--subnet", "10.77.4.0/24"]);
    let (asker, x) = (h.sb("asker"), h.sb("x"));
    h.ok(&["create", &asker, "--network", "n"]);
    for round in 0..5 {
        h.ok(&["create", &x, "--network", "n"]);
        let r = dig(&h, &asker, &[&x]);
        assert_eq!(r.answers, vec![address(&h, &x)], "round {round}: {r:?}");
        h.ok(&["rm", &x]);
        let r = dig(&h, &asker, &[&x]);
        assert_eq!(r.status, "NXDOMAIN", "round {round}: {r:?}");
    }
    h.ok(&["rm", &asker]);
}

#[test]
fn an_answer_too_long_for_udp_comes_whole_over_tcp() {
    let h = TestHost::new("tcp");
    h.ok(&["network", "create", "n", "--subnet", "10.77.5.0/24"]);
    let names: Vec<String> = (0..40).map(|i| h.sb(&format!("m{i}"))).collect();
    for n in &names {
        h.ok(&["create", n, "--network", "n", "--alias", "many"]);
    }
    // Over UDP (no retry): truncated, no records.
    let r = dig(&h, &names[0], &["+ignore", "+noedns", "many"]);
    assert!(r.truncated && r.answers.is_empty(), "{r:?}");
    // dig's default: it retries over TCP and gets all 40.
    let r = dig(&h, &names[0], &["+noedns", "many"]);
    assert_eq!(r.answers.len(), 40, "{r:?}");
    let r = dig(&h, &names[0], &["+tcp", "many"]);
    assert_eq!(r.answers.len(), 40, "{r:?}");
    for n in &names {
        h.ok(&["rm", n]);
    }
}

#[test]
fn other_names_go_to_the_hosts_upstream_resolvers() {
    let h = TestHost::with_lan("fwd");
    let dnsmasq = upstream(&h);
    fs::write(
        h.resolv_conf(),
        "nameserver 10.0.1.26\nsearch corp.example\noptions ndots:2\n",
    )
    .unwrap();
    h.ok(&["network", "create", "n", "--subnet", "10.77.6.0/24"]);
    let a = h.sb("a");
    h.ok(&["create", &a, "--network", "n"]);
    let r = dig(&h, &a, &["www.example.test"]);
    assert_eq!(
        (r.status.as_str(), r.answers.clone()),
        ("NOERROR", vec!["192.0.2.7".to_string()])
    );
    // Over TCP, forwarded over TCP.
    let r = dig(&h, &a, &["+tcp", "www.example.test"]);
    assert_eq!(r.answers, vec!["192.0.2.7".to_string()]);
    // Names upstream does not have: its NXDOMAIN, passed on.
    assert_eq!(dig(&h, &a, &["nothing.invalid"]).status, "NXDOMAIN");
    // search and options come from the host's resolv.conf.
    let conf = fs::read_to_string(format!("/etc/netns/{a}/resolv.conf")).unwrap();
    assert!(
        conf.contains("search corp.example") && conf.contains("options ndots:2"),
        "{conf}"
    );
    h.ok(&["rm", &a]);
    stop(dnsmasq);
}

#[test]
fn behind_a_loopback_stub_the_servers_behind_it_are_used() {
    let h = TestHost::with_lan("stub");
    let dnsmasq = upstream(&h);
    // systemd-resolved's shape: the host points at its stub; the real servers are listed elsewhere.
    fs::write(
        h.resolv_conf(),
        "nameserver 127.0.0.53\noptions edns0 trust-ad\n",
    )
    .unwrap();
    let behind = h.resolv_conf().with_file_name("resolved.conf");
    fs::write(&behind, "nameserver 10.0.1.26\n").unwrap();
    let behind = behind.display().to_string();
    h.ok(&["network", "create", "n", "--subnet", "10.77.7.0/24"]);
    let a = h.sb("a");
    let out = h.nsnet_env(
        &["create", &a, "--network", "n"],
        &[("NSNET_RESOLVED_CONF", &behind)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = dig(&h, &a, &["www.example.test"]);
    assert_eq!(r.answers, vec!["192.0.2.7".to_string()], "{r:?}");
    h.ok(&["rm", &a]);
    stop(dnsmasq);
}

#[test]
fn a_silent_upstream_stalls_no_local_answer_and_ends_in_servfail() {
    let h = TestHost::with_lan("slow");
    // The LAN peer runs no DNS server: it refuses (ICMP), and the query fails at once.
    fs::write(h.resolv_conf(), "nameserver 10.0.1.26\n").unwrap();
    let (a, b) = two_on_a_network(&h, "10.77.8.0/24");
    let t = Instant::now();
    assert_eq!(dig(&h, &a, &["www.example.test"]).status, "SERVFAIL");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // Now it drops DNS without a word: the query waits for the server's 2 s, then SERVFAIL.
    let lan = format!("--net={}", h.lan_path().display());
    for rule in [
        "add table inet blackhole",
        "add chain inet blackhole input { type filter hook input priority 0; }",
        "add rule inet blackhole input udp dport 53 drop",
    ] {
        let mut args = vec!["nsenter", &lan, "--", "nft"];
        args.extend(rule.split(' '));
        sh(&args);
    }
    let host = format!("--net={}", h.host_path().display());
    let slow = Command::new("nsenter")
        .args([&host, "--"])
        .arg(nsnet_bin())
        .env("NSNET_CGROUP", &h.cgroup)
        .args([
            "exec",
            &a,
            "--",
            "dig",
            "+time=8",
            "+tries=1",
            "@127.0.0.11",
            "www.example.test",
        ])
        .env("NSNET_STATE_DIR", &h.state)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("dig");
    std::thread::sleep(Duration::from_millis(200));
    // While that waits on upstream, local names answer at once.
    for _ in 0..5 {
        let t = Instant::now();
        let r = dig(&h, &a, &[&b]);
        assert_eq!(r.answers, vec![address(&h, &b)]);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }
    let out = slow.wait_with_output().expect("dig");
    let r = parse_dig(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(r.status, "SERVFAIL", "{r:?}");
    remove(&h, &[&a, &b]);
}

#[test]
fn a_sandbox_or_a_network_can_name_its_own_upstream() {
    let h = TestHost::with_lan("own");
    let dnsmasq = upstream(&h);
    // The host has no upstream at all.
    h.ok(&["network", "create", "n", "--subnet", "10.77.9.0/24"]);
    h.ok(&[
        "network",
        "create",
        "m",
        "--subnet",
        "10.77.10.0/24",
        "--dns",
        "10.0.1.26",
    ]);
    let (a, b, c) = (h.sb("a"), h.sb("b"), h.sb("c"));
    h.ok(&["create", &a, "--network", "n", "--dns", "10.0.1.26"]);
    h.ok(&["create", &b, "--network", "n"]);
    h.ok(&["create", &c, "--network", "m"]);
    assert_eq!(
        dig(&h, &a, &["www.example.test"]).answers,
        vec!["192.0.2.7".to_string()]
    );
    assert_eq!(
        dig(&h, &c, &["www.example.test"]).answers,
        vec!["192.0.2.7".to_string()]
    );
    // b has no server to ask: NXDOMAIN, not a wait.
    assert_eq!(dig(&h, &b, &["www.example.test"]).status, "NXDOMAIN");
    for sb in [&a, &b, &c] {
        h.ok(&["rm", sb]);
    }
    stop(dnsmasq);
}

#[test]
fn internal_networks_resolve_their_own_names_and_forward_nothing() {
    let h = TestHost::with_lan("intern");
    let dnsmasq = upstream(&h);
    fs::write(h.resolv_conf(), "nameserver 10.0.1.26\n").unwrap();
    h.ok(&[
        "network",
        "create",
        "in",
        "--internal",
        "--subnet",
        "10.77.11.0/24",
    ]);
    let (a, b) = (h.sb("a"), h.sb("b"));
    h.ok(&["create", &a, "--network", "in"]);
    h.ok(&["create", &b, "--network", "in"]);
    assert_eq!(dig(&h, &a, &[&b]).answers, vec![address(&h, &b)]);
    assert_eq!(dig(&h, &a, &["www.example.test"]).status, "NXDOMAIN");
    remove(&h, &[&a, &b]);
    stop(dnsmasq);
}

#[test]
fn it_works_beside_a_dns_server_on_the_hosts_port_53() {
    let h = TestHost::new("beside");
    // A host DNS server on every address of the host, port 53 (dnsmasq's default).
    let host = format!("--net={}", h.host_path().display());
    let mut hostdns = Killed(
        Command::new("nsenter")
            .args([
                &host,
                "--",
                "dnsmasq",
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--pid-file=",
                "--user=root",
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq"),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        hostdns.0.try_wait().expect("dnsmasq").is_none(),
        "dnsmasq runs"
    );
    let (a, b) = two_on_a_network(&h, "10.77.12.0/24");
    assert_eq!(dig(&h, &a, &[&b]).answers, vec![address(&h, &b)]);
    remove(&h, &[&a, &b]);
    drop(hostdns);
}

/// The resolver outlives upgrades, so a record it cannot read may be one a newer nsnet wrote (an IPv6 `--dns`
/// server before this version read them): it leaves such a record where it is, serves the others, and the
/// next command (which warns where someone sees it) decides what to do with it.
#[test]
fn the_resolver_never_sets_a_record_aside() {
    let h = TestHost::new("aside");
    h.ok(&["network", "create", "n", "--subnet", "10.77.26.0/24"]);
    let newer = h.state.join("sandboxes/newer.json");
    let text = r#"{"name":"newer","netns":"/run/netns/none","owned":true,"endpoints":[],"dns_servers":["a server from the future"]}"#;
    fs::write(&newer, text).expect("record");
    let (a, b) = (h.sb("a"), h.sb("b"));
    h.ok(&["create", &a, "--network", "n"]);
    h.ok(&["create", &b, "--network", "n"]);
    // The resolver read every record when it started, before create returned.
    assert!(h.resolver_pid().is_some());
    assert_eq!(dig(&h, &a, &[&b]).answers, vec![address(&h, &b)]);
    assert_eq!(fs::read_to_string(&newer).ok().as_deref(), Some(text));
    assert!(!h.state.join("quarantine").exists());
    fs::remove_file(&newer).expect("remove");
    remove(&h, &[&a, &b]);
}

/// A resolver keeps running across an upgrade. One of an older generation (those wrote no generation file)
/// steps down for the next command, which starts its own; a pid file naming another process (a reused pid,
/// or one planted there) gets no signal.
#[test]
fn an_older_resolver_steps_down_and_a_planted_pid_is_never_signalled() {
    let h = TestHost::new("stepdown");
    let (a, b) = two_on_a_network(&h, "10.77.27.0/24");
    let old = h.resolver_pid().expect("a resolver runs");
    let generation = h.state.join("dns.generation");
    assert_eq!(
        fs::read_to_string(&generation).expect("generation").trim(),
        "3"
    );
    fs::remove_file(&generation).expect("look older");

    let c = h.sb("c");
    h.ok(&["create", &c, "--network", "n"]);
    let new = h.resolver_pid().expect("a resolver runs");
    assert_ne!(new, old, "the older resolver still serves");
    // Gone, or a zombie until whoever inherited it reaps it.
    let exited = || {
        fs::read_to_string(format!("/proc/{old}/stat")).map_or(true, |stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
    };
    assert!(wait(exited), "the older resolver is still running");
    assert!(generation.exists());
    // The new one serves every sandbox, the ones from before it too.
    assert_eq!(dig(&h, &a, &[&c]).answers, vec![address(&h, &c)]);
    assert_eq!(dig(&h, &c, &[&b]).answers, vec![address(&h, &b)]);

    // The pid file now names a process of someone else's, and the generation file is gone again.
    let mut decoy = Command::new("sleep").arg("60").spawn().expect("sleep");
    fs::write(h.state.join("dns.pid"), format!("{}\n", decoy.id())).expect("plant");
    fs::remove_file(&generation).expect("look older");
    let d = h.sb("d");
    h.ok(&["create", &d, "--network", "n"]);
    assert!(
        decoy.try_wait().expect("wait").is_none(),
        "the decoy was signalled"
    );
    // The running resolver was not stopped either: it serves the new sandbox as before.
    assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(new), None).is_ok());
    assert_eq!(dig(&h, &a, &[&d]).answers, vec![address(&h, &d)]);
    let _ = decoy.kill();
    let _ = decoy.wait();
    remove(&h, &[&a, &b, &c, &d]);
}

#[test]
fn a_killed_resolver_is_reported_and_brought_back() {
    let h = TestHost::new("revive");
    h.ok(&["network", "create", "n", "--subnet", "10.77.13.0/24"]);
    h.ok(&[
        "network",
        "create",
        "plain",
        "--dns",
        "false",
        "--subnet",
        "10.77.14.0/24",
    ]);
    let (a, b, c) = (h.sb("a"), h.sb("b"), h.sb("c"));
    h.ok(&["create", &a, "--network", "n"]);
    h.ok(&["create", &b, "--network", "n"]);
    let revivals: Vec<Vec<&str>> = vec![vec!["gc"], vec!["create", &c, "--network", "plain"]];
    for (round, revive) in revivals.iter().enumerate() {
        let pid = h.resolver_pid().expect("a resolver runs");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill");
        assert!(wait(|| h.resolver_pid().is_none()));
        assert_eq!(dig(&h, &a, &[&b]).status, "NO ANSWER", "round {round}");
        let out = h.nsnet(&["ls"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("resolver is down") && err.contains("nsnet gc"),
            "{err}"
        );
        // `gc`, then any changing command (on a network without names, even): it comes back.
        let out = h.nsnet(revive);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            dig(&h, &a, &[&b]).answers,
            vec![address(&h, &b)],
            "round {round}"
        );
        let out = h.nsnet(&["ls"]);
        assert!(!String::from_utf8_lossy(&out.stderr).contains("resolver"));
    }
    // A network without names gives its sandboxes no resolv.conf.
    assert!(!std::path::Path::new(&format!("/etc/netns/{c}")).exists());
    for sb in [&a, &b, &c] {
        h.ok(&["rm", sb]);
    }
}

#[test]
fn networks_without_names_start_no_resolver() {
    let h = TestHost::new("nodns");
    h.ok(&[
        "network",
        "create",
        "plain",
        "--dns=false",
        "--subnet",
        "10.77.15.0/24",
    ]);
    let (a, b) = (h.sb("a"), h.sb("b"));
    h.ok(&["create", &a, "--network", "plain"]);
    // The default network has no names either (as Docker's default bridge, Podman's default network).
    h.ok(&["create", &b]);
    assert!(h.resolver_pid().is_none());
    assert!(h.etc_netns().is_empty());
    assert_eq!(dig(&h, &a, &[&b]).status, "NO ANSWER");
    let net: serde_json::Value =
        serde_json::from_str(&h.ok(&["network", "inspect", "plain", "--json"])).unwrap();
    assert_eq!(net["dns"], false);
    remove(&h, &[&a, &b]);
}

#[test]
fn bad_names_and_servers_are_refused_and_change_nothing() {
    let h = TestHost::new("badns");
    h.ok(&["network", "create", "n", "--subnet", "10.77.16.0/24"]);
    let a = h.sb("a");
    h.ok(&["create", &a, "--network", "n"]);
    let before = h.snapshot();
    let x = h.sb("x");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["create", &x, "--network", "n", "--alias", "bad name"],
            "alias 'bad name'",
        ),
        (
            vec!["create", &x, "--network", "n", "--alias=-db"],
            "starts or ends with '-'",
        ),
        (
            vec!["create", &x, "--network", "n", "--alias", "10.0.0.1"],
            "looks like an address",
        ),
        (
            vec![
                "create",
                &x,
                "--network",
                "n",
                "--alias",
                "db",
                "--alias",
                "DB",
            ],
            "given twice",
        ),
        (
            vec!["create", &x, "--network", "n", "--dns", "224.0.0.1"],
            "not the address of a DNS server",
        ),
        (
            vec!["create", &x, "--network", "n", "--dns", "not-an-ip"],
            "not-an-ip",
        ),
        (
            vec!["network", "create", "m", "--dns", "maybe"],
            "neither true, false nor an IP address",
        ),
        (
            vec![
                "network",
                "create",
                "m",
                "--dns",
                "false",
                "--dns",
                "192.0.2.1",
            ],
            "names on",
        ),
        (
            vec!["network", "create", "m", "--internal", "--dns", "192.0.2.1"],
            "forwards nothing",
        ),
    ];
    for (args, want) in cases {
        let line = h.fails(&args);
        assert!(line.contains(want), "{args:?}: {line}");
        assert_eq!(
            h.snapshot(),
            before,
            "{args:?} changed something:\n{}",
            before.diff(&h.snapshot())
        );
    }
    h.ok(&["rm", &a]);
}

#[test]
fn dry_run_shows_the_resolv_conf_as_commands() {
    let h = TestHost::new("dryns");
    h.ok(&["network", "create", "n", "--subnet", "10.77.17.0/24"]);
    let a = h.sb("a");
    let plan = h.ok(&[
        "--dry-run",
        "create",
        &a,
        "--network",
        "n",
        "--alias",
        "web",
    ]);
    assert!(plan.contains(&format!("mkdir -p /etc/netns/{a}")), "{plan}");
    assert!(plan.contains("'nameserver 127.0.0.11'"), "{plan}");
    assert!(h.resolver_pid().is_none());
    h.ok(&["create", &a, "--network", "n"]);
    let plan = h.ok(&["--dry-run", "rm", &a]);
    assert!(
        plan.contains(&format!("rm /etc/netns/{a}/resolv.conf")),
        "{plan}"
    );
    h.ok(&["rm", &a]);
}

/// A DNS query for an A record of `name`, with `id` (a test's own client: dig per query would be too slow to
/// keep the resolver busy).
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(u8::try_from(label.len()).expect("short label"));
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

#[test]
fn updating_names_drops_no_query() {
    let h = TestHost::new("nodrop");
    let (a, b) = two_on_a_network(&h, "10.77.18.0/24");
    // A client socket inside a's namespace.
    let fd = nsnet_core::kernel::netns::open(&h.sb_path("a")).expect("a's namespace");
    let socket = nsnet_core::kernel::netns::run_in(&fd, || std::net::UdpSocket::bind("0.0.0.0:0"))
        .expect("enter")
        .expect("socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    socket.connect("127.0.0.11:53").expect("connect");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let asking = {
        let (stop, b) = (stop.clone(), b.clone());
        std::thread::spawn(move || {
            let (mut sent, mut answered) = (0u32, 0u32);
            let mut buf = [0u8; 512];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || sent < 200 {
                let id = u16::try_from(sent % 65536).unwrap_or(0);
                socket.send(&query(id, &b)).expect("send");
                sent += 1;
                if let Ok(n) = socket.recv(&mut buf) {
                    // The right answer: the same ID, NOERROR, one record.
                    if n > 12 && buf[..2] == id.to_be_bytes() && buf[3] & 0x0f == 0 && buf[7] == 1 {
                        answered += 1;
                    }
                }
            }
            (sent, answered)
        })
    };
    // Meanwhile, sandboxes come and go on the same network (each a change the resolver takes).
    for i in 0..10 {
        let x = h.sb(&format!("x{i}"));
        h.ok(&["create", &x, "--network", "n", "--alias", "churn"]);
        h.ok(&["rm", &x]);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, answered) = asking.join().expect("asker");
    assert!(sent >= 200, "{sent}");
    assert_eq!(answered, sent, "queries lost or wrong while names changed");
    remove(&h, &[&a, &b]);
}

#[test]
fn port_53_stays_free_for_the_sandboxs_own_dns_server() {
    let h = TestHost::new("own53");
    let (a, b) = two_on_a_network(&h, "10.77.19.0/24");
    // A DNS server in a, on every address of a, port 53 (as a containerised DNS server binds).
    let own = Killed(
        Command::new("nsenter")
            .arg(format!("--net={}", h.sb_path("a").display()))
            .args([
                "--",
                "dnsmasq",
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--port=53",
                "--address=/own.test/192.0.2.9",
                "--pid-file=",
                "--user=root",
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dnsmasq"),
    );
    let aa = address(&h, &a);
    let asked = |from: &str, server: &str, name: &str| {
        let out = h.nsnet(&[
            "exec",
            from,
            "--",
            "dig",
            "+short",
            "+time=2",
            "+tries=1",
            &format!("@{server}"),
            name,
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert!(
        wait(|| asked(&b, &aa, "x.own.test") == "192.0.2.9"),
        "a's own server on its address, port 53"
    );
    // And the names still answer on 127.0.0.11:53 in a, over UDP and TCP.
    assert_eq!(asked(&a, "127.0.0.11", &b), address(&h, &b));
    let out = h.nsnet(&[
        "exec",
        &a,
        "--",
        "dig",
        "+tcp",
        "+short",
        "+time=2",
        "+tries=1",
        "@127.0.0.11",
        &b,
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), address(&h, &b));
    drop(own);
    remove(&h, &[&a, &b]);
}

#[test]
fn an_attached_namespace_is_let_go_when_its_process_exits() {
    let h = TestHost::new("letgo");
    h.ok(&["network", "create", "n", "--subnet", "10.77.20.0/24"]);
    let ctr = h.sb("ctr");
    common::sh(&["ip", "netns", "add", &ctr]);
    let sleeper = Killed(
        Command::new("nsenter")
            .arg(format!("--net={}", h.sb_path("ctr").display()))
            .args(["--", "sleep", "60"])
            .spawn()
            .expect("sleep"),
    );
    let path = format!("/proc/{}/ns/net", sleeper.0.id());
    // Wait for nsenter to have entered (its /proc path then names ctr's namespace).
    let want = std::fs::metadata(h.sb_path("ctr"))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .ok();
    assert!(wait(|| std::fs::metadata(&path)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .ok()
        == want));
    let app = h.sb("app");
    h.ok(&["attach", &path, "--name", &app, "--network", "n"]);
    assert!(h.resolver_pid().is_some());
    // The process goes and so does the namespace's mount: the resolver must not keep the namespace (and its
    // veth) alive until a resync.
    drop(sleeper);
    common::sh(&["ip", "netns", "del", &ctr]);
    h.wait_veths_gone(&app);
    h.ok(&["gc"]);
    assert!(wait(|| h.resolver_pid().is_none()));
}

#[test]
fn off_its_last_network_with_names_a_sandbox_keeps_nothing_of_them() {
    let h = TestHost::new("detns");
    h.ok(&["network", "create", "n", "--subnet", "10.77.21.0/24"]);
    h.ok(&[
        "network",
        "create",
        "plain",
        "--dns=false",
        "--subnet",
        "10.77.22.0/24",
    ]);
    let (a, b) = (h.sb("a"), h.sb("b"));
    h.ok(&["create", &a, "--network", "plain"]);
    h.ok(&["attach", &a, "--network", "n"]);
    h.ok(&["create", &b, "--network", "n"]);
    let lo_filters = || common::sh(&["tc", "-n", &a, "filter", "show", "dev", "lo", "ingress"]);
    assert!(lo_filters().contains("nsnet_dns"));
    assert_eq!(
        h.etc_netns(),
        vec![format!("/etc/netns/{a}"), format!("/etc/netns/{b}")]
    );
    assert_eq!(dig(&h, &a, &[&b]).answers, vec![address(&h, &b)]);
    h.ok(&["detach", &a, "--network", "n"]);
    // Its names, its resolv.conf and the port map on its lo: gone; the other network stays.
    assert_eq!(dig(&h, &b, &[&a]).status, "NXDOMAIN");
    assert!(lo_filters().trim().is_empty(), "{}", lo_filters());
    assert!(common::sh(&["tc", "-n", &a, "qdisc", "show", "dev", "lo"]).contains("noqueue"));
    assert_eq!(h.etc_netns(), vec![format!("/etc/netns/{b}")]);
    remove(&h, &[&a, &b]);
}

#[test]
fn a_hostile_sandbox_cannot_crash_or_turn_the_resolver() {
    let h = TestHost::new("hostile");
    let (a, b) = two_on_a_network(&h, "10.77.23.0/24");
    let pid = h.resolver_pid().expect("a resolver");
    let fd = nsnet_core::kernel::netns::open(&h.sb_path("a")).expect("a's namespace");
    let (udp, tcp) = nsnet_core::kernel::netns::run_in(&fd, || {
        let udp = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
        udp.connect("127.0.0.11:53").expect("connect");
        udp.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let tcp = std::net::TcpStream::connect("127.0.0.11:53").expect("tcp");
        (udp, tcp)
    })
    .expect("enter");
    let mut header_only = query(7, "x");
    header_only.truncate(12);
    let mut huge_counts = query(8, "x");
    huge_counts[4..12].copy_from_slice(&[0xff; 8]);
    // A name whose label points at itself (a compression loop).
    let mut looped = query(9, "x");
    looped.truncate(12);
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    let mut long_label = query(10, "x");
    long_label.truncate(12);
    long_label.push(63);
    long_label.extend_from_slice(&[b'a'; 10]);
    let mut answer = query(11, &b);
    answer[2] |= 0x80;
    for junk in [
        vec![],
        vec![0],
        header_only,
        huge_counts,
        looped,
        long_label,
        answer.clone(),
    ] {
        let _ = udp.send(&junk);
    }
    let mut buf = [0u8; 512];
    // Answers are never answered (no loop between two resolvers); bad queries get at most a FORMERR.
    while let Ok(n) = udp.recv(&mut buf) {
        assert!(n >= 12 && buf[..2] != answer[..2], "answered an answer");
        assert_eq!(buf[3] & 0x0f, 1, "FORMERR, got rcode {}", buf[3] & 0x0f);
    }
    // TCP: a length that never comes, then gone.
    let mut tcp = tcp;
    use std::io::Write as _;
    let _ = tcp.write_all(&[0xff, 0xff, 1, 2, 3]);
    drop(tcp);
    // Still the same resolver, answering.
    assert_eq!(dig(&h, &a, &[&b]).answers, vec![address(&h, &b)]);
    assert_eq!(h.resolver_pid(), Some(pid));
    remove(&h, &[&a, &b]);
}

#[test]
fn a_resolver_started_by_run_blocks_no_signal() {
    let h = TestHost::new("runsig");
    h.ok(&["network", "create", "n", "--subnet", "10.77.24.0/24"]);
    let a = h.sb("a");
    // `nsnet run` blocks the signals it passes on to its command: the resolver it starts must not keep that.
    h.ok(&["run", "--name", &a, "--network", "n", "--", "true"]);
    let pid = h.resolver_pid().expect("a resolver");
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let blocked = status
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .map(str::trim)
        .expect("SigBlk");
    assert_eq!(blocked, "0000000000000000", "{status}");
    // So a plain SIGTERM stops it, and the next changing command brings it back.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("kill");
    assert!(wait(|| h.resolver_pid().is_none()));
    h.ok(&["gc"]);
    assert!(h.resolver_pid().is_some());
    remove(&h, &[&a]);
}
