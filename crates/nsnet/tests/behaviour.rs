//! The commands' behaviour on the real kernel: default network, run/exec, IPAM, attach, internal networks,
//! UDP and host-address ports, forced network removal, dry runs, rollback and concurrency.

use std::os::unix::fs::MetadataExt;

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Command;

use common::{sh, wait_exit, wait_for_child, wait_for_exec, TestHost, HOST_IP, LAN_IP};
use nsnet_core::probe;
use serde_json::Value;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("test address")
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("JSON output")
}

#[test]
fn default_network_run_exec_and_address_reuse() {
    let h = TestHost::new("default");
    let empty = h.snapshot();
    let (a, b, c) = (h.sb("a"), h.sb("b"), h.sb("c"));

    // `run` without --network creates nsnet0 from the pool; --rm removes the sandbox afterwards.
    let out = h.ok(&[
        "run", "--rm", "--name", &a, "--", "ip", "-4", "-o", "addr", "show", "eth0",
    ]);
    assert!(out.contains("inet 10.89.0.2/24"), "{out}");
    let nets = json(&h.ok(&["network", "ls", "--json"]));
    assert_eq!(nets[0]["name"], "nsnet0");
    assert_eq!(nets[0]["subnet"], "10.89.0.0/24");
    assert_eq!(nets[0]["interface"], "nsnet0");
    assert_eq!(json(&h.ok(&["ls", "--json"])), json("[]"));

    // Addresses are handed out next fit (after the last one given), never twice, and freed on removal, but not
    // handed out again until the search comes round.
    h.ok(&["create", &a]);
    h.ok(&["create", &b]);
    assert_eq!(h.inspect(&a)["endpoints"][0]["address"], "10.89.0.3/24");
    assert_eq!(h.inspect(&b)["endpoints"][0]["address"], "10.89.0.4/24");
    h.ok(&["rm", &a]);
    h.ok(&["create", &c]);
    assert_eq!(h.inspect(&c)["endpoints"][0]["address"], "10.89.0.5/24");

    // exec runs inside the sandbox and passes the exit status on.
    let routes = h.ok(&["exec", &b, "--", "ip", "route"]);
    assert!(
        routes.contains("default via 10.89.0.1 dev eth0"),
        "{routes}"
    );
    let status = h.nsnet(&["exec", &b, "--", "sh", "-c", "exit 7"]).status;
    assert_eq!(status.code(), Some(7));
    assert!(
        probe::ping(&h.sb_path("b"), ip("10.89.0.5")).expect("ping"),
        "b -> c"
    );

    let ls = json(&h.ok(&["ls", "--json"]));
    assert_eq!(ls.as_array().map(Vec::len), Some(2));
    h.ok(&["rm", &b]);
    h.ok(&["rm", &c]);
    h.ok(&["network", "rm", "nsnet0"]);
    assert_eq!(h.snapshot(), empty);
}

/// `run --rm` stopped by a signal behaves like `docker run --rm`: the command gets the signal, nsnet waits for
/// it, removes the sandbox, and exits with 128 + the signal.
#[test]
fn run_rm_passes_a_signal_on_and_removes_the_sandbox() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let h = TestHost::new("runsig");
    // The default network, made beforehand so the snapshot holds it.
    h.ok(&["run", "--rm", "--name", &h.sb("first"), "--", "true"]);
    let before = h.snapshot();
    for (sig, code) in [(Signal::SIGTERM, 143), (Signal::SIGINT, 130)] {
        let name = h.sb("sig");
        let mut nsnet = h.spawn(&["run", "--rm", "--name", &name, "--", "sleep", "60"]);
        wait_for_exec(nsnet.id(), "nsnet");
        let sleep = wait_for_child(nsnet.id(), "sleep");
        let pid = Pid::from_raw(i32::try_from(nsnet.id()).expect("pid"));
        kill(pid, sig).expect("signal nsnet");
        let status = wait_exit(&mut nsnet);
        let orphan = common::process(sleep).is_some();
        if orphan {
            let _ = kill(
                Pid::from_raw(i32::try_from(sleep).expect("pid")),
                Signal::SIGKILL,
            );
        }
        assert!(!orphan, "{sig}: the command outlived nsnet");
        assert_eq!(status.code(), Some(code), "{sig}: {status:?}");
        assert!(!h.sb_path("sig").exists(), "{sig}: the namespace is left");
        assert_eq!(json(&h.ok(&["ls", "--json"])), json("[]"), "{sig}");
        assert_eq!(h.snapshot(), before, "{sig}");
    }
    h.ok(&["network", "rm", "nsnet0"]);
}

/// `run` and `exec` of a command that is not there, or not executable, exit as a shell does (127, 126) with a
/// one-line message; `run --rm` still removes the sandbox.
#[test]
fn a_missing_command_exits_127() {
    let h = TestHost::new("exit127");
    let s = h.sb("s");
    h.ok(&["create", &s]);
    let with_sandbox = h.snapshot();
    let script = tempfile::NamedTempFile::new().expect("temp file"); // mode 0600: no x bit
    let plain = script.path().display().to_string();
    for (cmd, code, why) in [
        ("no-such-command", 127, "command not found"),
        ("/no/such/file", 127, "no such file"),
        (plain.as_str(), 126, "not executable"),
    ] {
        for args in [
            &["exec", &s, "--", cmd][..],
            &["run", "--rm", "--name", &h.sb("r"), "--", cmd][..],
        ] {
            let out = h.nsnet(args);
            assert_eq!(out.status.code(), Some(code), "{args:?}: {out:?}");
            let line = common::check_one_line_failure(args, out);
            assert!(line.contains(&format!("cannot run {cmd}: {why}")), "{line}");
            assert_eq!(h.snapshot(), with_sandbox, "{args:?}");
        }
    }
    h.ok(&["rm", &s]);
    h.ok(&["network", "rm", "nsnet0"]);
}

/// `--json` on the changing commands: the record they leave, as `inspect --json` shows it, or a summary.
#[test]
fn changing_commands_print_json() {
    let h = TestHost::new("json");
    let empty = h.snapshot();
    let s = h.sb("s");
    let net = json(&h.ok(&[
        "network",
        "create",
        "n",
        "--subnet",
        "172.16.8.0/24",
        "--json",
    ]));
    assert_eq!(net, json(&h.ok(&["network", "inspect", "n", "--json"])));
    let created = json(&h.ok(&["create", &s, "--network", "n", "--json"]));
    assert_eq!(created, h.inspect(&s));
    assert_eq!(created["endpoints"][0]["address"], "172.16.8.2/24");
    assert_eq!(
        json(&h.ok(&["gc", "--json"])),
        serde_json::json!({ "done": [] })
    );
    assert_eq!(
        json(&h.ok(&["firewall", "reload", "--json"])),
        serde_json::json!({ "firewall": "reloaded" })
    );
    assert_eq!(
        json(&h.ok(&["rm", &s, "--json"])),
        serde_json::json!({ "sandbox": s, "removed": true })
    );
    assert_eq!(
        json(&h.ok(&["network", "rm", "n", "--json"])),
        serde_json::json!({ "network": "n", "removed": true })
    );
    assert_eq!(h.snapshot(), empty);
}

/// Every row of a table starts each column where its header does.
fn assert_aligned(table: &str) {
    let mut lines = table.lines();
    let header = lines.next().expect("a header");
    let starts: Vec<usize> = header
        .char_indices()
        .filter(|&(i, c)| c != ' ' && (i == 0 || header.as_bytes()[i - 1] == b' '))
        .map(|(i, _)| i)
        .collect();
    for line in lines {
        for &at in &starts[1..] {
            let (before, here) = (line.as_bytes().get(at - 1), line.as_bytes().get(at));
            assert!(
                before == Some(&b' ') && here.is_some_and(|c| *c != b' '),
                "column at {at} does not line up:\n{table}"
            );
        }
    }
}

/// `network ls` and `ls` line their columns up whatever the names' lengths, and `ls` shows each sandbox's
/// networks and status.
#[test]
fn listings_line_up() {
    let h = TestHost::new("listing");
    let long_net = "a-network-name-longer-than-sixteen";
    h.ok(&["network", "create", long_net, "--subnet", "172.16.6.0/24"]);
    h.ok(&[
        "network",
        "create",
        "n",
        "--subnet",
        "172.16.7.0/24",
        "--internal",
    ]);
    let (a, b) = (h.sb("a"), h.sb("a-sandbox-name-much-longer-than-twenty"));
    h.ok(&["create", &a, "--network", "n"]);
    h.ok(&["attach", &a, "--network", long_net]);
    h.ok(&["create", &b, "--network", long_net, "-p", "8080:80"]);

    let nets = h.ok(&["network", "ls"]);
    assert!(nets.starts_with("NAME "), "{nets}");
    assert_aligned(&nets);
    let ls = h.ok(&["ls"]);
    assert!(
        ls.lines().next().is_some_and(|l| {
            l.split_whitespace().collect::<Vec<_>>()
                == ["NAME", "NETNS", "NETWORKS", "ADDRESSES", "PORTS", "STATUS"]
        }),
        "{ls}"
    );
    assert_aligned(&ls);
    let row = |name: &str| -> Vec<String> {
        let line = ls.lines().find(|l| l.starts_with(&format!("{name} ")));
        line.unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(row(&a)[2], format!("n,{long_net}"), "{ls}");
    assert_eq!(row(&a)[5], "up", "{ls}");
    assert_eq!(row(&b)[4], "8080:80/tcp", "{ls}");

    h.ok(&["rm", &a]);
    h.ok(&["rm", &b]);
    h.ok(&["network", "rm", long_net]);
    h.ok(&["network", "rm", "n"]);
}

#[test]
fn attach_existing_namespaces_and_a_second_network() {
    let h = TestHost::new("attach");
    let empty = h.snapshot();
    h.ok(&["network", "create", "one", "--subnet", "172.18.0.0/24"]);
    h.ok(&["network", "create", "two", "--subnet", "172.19.0.0/24"]);

    // A namespace made by someone else, by name.
    let ext = h.sb("ext");
    sh(&["ip", "netns", "add", &ext]);
    h.ok(&["attach", &ext, "--network", "one"]);
    assert!(
        probe::ping(&h.host_path(), ip("172.18.0.2")).expect("ping"),
        "host -> attached ns"
    );
    // ... and a second network on the same sandbox: eth1, no second default route.
    h.ok(&["attach", &ext, "--network", "two"]);
    let j = h.inspect(&ext);
    assert_eq!(j["owned"], false);
    assert_eq!(j["endpoints"][1]["interface"], "eth1");
    assert_eq!(j["endpoints"][1]["default_route"], false);
    assert!(
        probe::ping(&h.sb_path("ext"), ip("172.19.0.1")).expect("ping"),
        "ext -> gateway of two"
    );
    // detach takes one network away and keeps the other.
    h.ok(&["detach", &ext, "--network", "two"]);
    let j = h.inspect(&ext);
    assert_eq!(j["endpoints"].as_array().map(Vec::len), Some(1));
    let links = sh(&["ip", "-n", &ext, "-br", "link"]);
    assert!(links.contains("eth0") && !links.contains("eth1"), "{links}");
    assert!(
        probe::ping(&h.sb_path("ext"), ip("172.18.0.1")).expect("ping"),
        "ext -> gateway of one"
    );
    h.fails(&["detach", &ext, "--network", "two"]);
    // rm takes the endpoints but leaves the namespace nsnet was given.
    h.ok(&["rm", &ext]);
    assert!(h.sb_path("ext").exists());
    sh(&["ip", "netns", "del", &ext]);

    // A running process's namespace, by /proc path.
    let net = format!("--net={}", h.host_path().display());
    let mut child = Command::new("nsenter")
        .args([net.as_str(), "--", "unshare", "-n", "--", "sleep", "30"])
        .spawn()
        .expect("spawn sleep");
    let proc_ns = format!("/proc/{}/ns/net", child.id());
    // Wait until unshare has run (the process's namespace differs from the host's).
    // nsfs inodes name namespaces (the host's is a bind mount, not a link to read). Until nsenter has entered
    // the test host, the process is in this test's own namespace; then in the host's; only after unshare in
    // its own.
    let ino = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.ino()).ok();
    let unshared = || {
        let now = ino(proc_ns.as_ref());
        now.is_some()
            && now != ino(&h.host_path())
            && now != ino(std::path::Path::new("/proc/self/ns/net"))
    };
    for _ in 0..1000 {
        if unshared() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(unshared(), "unshare did not run within 5 s");
    let proc_name = h.sb("proc");
    h.ok(&["attach", &proc_ns, "--name", &proc_name, "--network", "one"]);
    assert!(
        probe::ping(std::path::Path::new(&proc_ns), ip("172.18.0.1")).expect("ping"),
        "process ns -> gateway"
    );
    assert_eq!(h.inspect(&proc_name)["netns"], proc_ns.as_str());
    h.ok(&["rm", &proc_name]);
    let _ = child.kill();
    let _ = child.wait();

    h.ok(&["network", "rm", "one"]);
    h.ok(&["network", "rm", "two"]);
    assert_eq!(h.snapshot(), empty);
}

#[test]
fn internal_network_has_no_way_out() {
    let h = TestHost::with_lan("internal");
    let empty = h.snapshot();
    h.ok(&[
        "network",
        "create",
        "int",
        "--internal",
        "--subnet",
        "172.20.0.0/24",
    ]);
    let s = h.sb("s");
    h.ok(&["create", &s, "--network", "int"]);
    assert_eq!(h.inspect(&s)["endpoints"][0]["default_route"], false);
    let routes = h.ok(&["exec", &s, "--", "ip", "route"]);
    assert!(!routes.contains("default"), "{routes}");
    assert!(
        probe::ping(&h.sb_path("s"), ip("172.20.0.1")).expect("ping"),
        "the gateway is reachable"
    );
    assert!(
        !probe::ping(&h.sb_path("s"), ip(LAN_IP)).expect("ping"),
        "the LAN is not"
    );
    let ruleset = h.in_host(&["nft", "list", "set", "inet", "nsnet", "masq_nets"]);
    assert!(!ruleset.contains("172.20.0.0"), "{ruleset}");
    h.ok(&["rm", &s]);
    h.ok(&["network", "rm", "int"]);
    assert_eq!(h.snapshot(), empty);
}

#[test]
fn udp_ports_and_ports_bound_to_one_host_address() {
    let h = TestHost::with_lan("ports");
    let empty = h.snapshot();
    h.in_host(&["ip", "addr", "add", "10.0.1.49/24", "dev", "uplink0"]);
    let with_second = h.snapshot();
    let s = h.sb("s");
    h.ok(&[
        "create",
        &s,
        "-p",
        "5353:53/udp",
        "-p",
        &format!("{HOST_IP}:8080:80"),
    ]);

    // UDP through any host address.
    let server = probe::udp_server(
        &h.sb_path("s"),
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 53),
    )
    .expect("bind");
    let answer = probe::udp_hello(&h.lan_path(), SocketAddrV4::new(ip("10.0.1.49"), 5353))
        .expect("udp answer");
    assert!(answer.starts_with(&format!("hello {LAN_IP}:")), "{answer}");
    server.wait().expect("served");

    // TCP bound to 10.0.1.48 only: works there, not on the host's other address.
    let server = probe::tcp_server(
        &h.sb_path("s"),
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80),
    )
    .expect("listen");
    probe::tcp_hello(&h.lan_path(), SocketAddrV4::new(ip(HOST_IP), 8080))
        .expect("bound address works");
    server.wait().expect("served");
    assert!(probe::tcp_hello(&h.lan_path(), SocketAddrV4::new(ip("10.0.1.49"), 8080)).is_err());

    // The host itself reaches a published port on its own address.
    let server = probe::tcp_server(
        &h.sb_path("s"),
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80),
    )
    .expect("listen");
    probe::tcp_hello(&h.host_path(), SocketAddrV4::new(ip(HOST_IP), 8080)).expect("from the host");
    server.wait().expect("served");

    h.ok(&["rm", &s]);
    h.ok(&["network", "rm", "nsnet0"]);
    assert_eq!(h.snapshot(), with_second);
    h.in_host(&["ip", "addr", "del", "10.0.1.49/24", "dev", "uplink0"]);
    assert_eq!(h.snapshot(), empty);
}

#[test]
fn network_rm_refuses_while_used_unless_forced() {
    let h = TestHost::new("netrm");
    let empty = h.snapshot();
    h.ok(&["network", "create", "n", "--subnet", "172.21.0.0/24"]);
    let (a, b) = (h.sb("a"), h.sb("b"));
    h.ok(&["create", &a, "--network", "n", "-p", "8000:80"]);
    h.ok(&["create", &b, "--network", "n"]);
    let before = h.snapshot();
    let err = h.fails(&["network", "rm", "n"]);
    assert!(
        err.contains("in use by sandboxes") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(h.snapshot(), before);

    h.ok(&["network", "rm", "n", "--force"]);
    assert_eq!(h.inspect(&a)["endpoints"], json("[]"));
    assert!(
        h.link_names().iter().all(|l| l == "lo"),
        "{:?}",
        h.link_names()
    );
    h.ok(&["rm", &a]);
    h.ok(&["rm", &b]);
    assert_eq!(h.snapshot(), empty);
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let h = TestHost::new("dryrun");
    let empty = h.snapshot();
    let s = h.sb("s");
    let plan = h.ok(&["--dry-run", "create", &s, "-p", "8088:80"]);
    for expected in [
        "sysctl -w net.ipv4.ip_forward=1",
        "ip link add nsnet0 address 02:6e:0a:59:00:01 mtu 1500 type bridge",
        "ip addr add 10.89.0.1/24 dev nsnet0",
        &format!("ip netns add {s}"),
        &format!("ip -n {s} addr add 10.89.0.2/24 dev eth0"),
        &format!("ip -n {s} route add default via 10.89.0.1 dev eth0"),
        "add element inet nsnet masq_nets { 10.89.0.0/24 }",
        "add element inet nsnet ports { tcp . 8088 : 10.89.0.2 . 80 }",
    ] {
        assert!(plan.contains(expected), "missing {expected:?} in:\n{plan}");
    }
    assert_eq!(h.snapshot(), empty);
    assert!(!h.state.exists(), "a dry run created the state dir");
    // `run` and `exec` enter only the network namespace: `ip netns exec` would also remount /sys and bind
    // /etc/netns files, so the plan names the command that does what nsnet does.
    let plan = h.ok(&[
        "--dry-run",
        "run",
        "--name",
        &s,
        "--",
        "sh",
        "-c",
        "echo it's",
    ]);
    let line = format!("nsenter --net=/run/netns/{s} -- sh -c 'echo it'\\''s'");
    assert!(plan.lines().any(|l| l == line), "no {line:?} in:\n{plan}");
    assert!(!plan.contains("ip netns exec"), "{plan}");

    h.ok(&["create", &s]);
    let created = h.snapshot();
    let plan = h.ok(&["--dry-run", "exec", &s, "--", "ip", "addr"]);
    assert_eq!(
        plan.trim(),
        format!("nsenter --net=/run/netns/{s} -- ip addr")
    );
    let plan = h.ok(&["--dry-run", "rm", &s]);
    assert!(plan.contains(&format!("ip netns del {s}")), "{plan}");
    let plan = h.ok(&["--dry-run", "network", "rm", "nsnet0", "--force"]);
    assert!(
        plan.contains("ip link del nsnet0") && plan.contains("delete table inet nsnet"),
        "{plan}"
    );
    assert_eq!(h.snapshot(), created);
    h.ok(&["rm", &s]);
    h.ok(&["network", "rm", "nsnet0"]);
    assert_eq!(h.snapshot(), empty);
}

#[test]
fn a_kernel_failure_midway_rolls_everything_back() {
    let h = TestHost::new("rollback");
    let empty = h.snapshot();
    h.ok(&[
        "network",
        "create",
        "n",
        "--subnet",
        "172.22.0.0/24",
        "--bridge",
        "nsbr-rb",
    ]);
    // Pull the bridge out from under nsnet: the veth step will fail after the namespace was made.
    h.in_host(&["ip", "link", "del", "nsbr-rb"]);
    let before = h.snapshot();
    let s = h.sb("s");
    let err = h.fails(&["create", &s, "--network", "n", "-p", "8000:80"]);
    assert!(err.contains("nsbr-rb") && err.contains("undone"), "{err}");
    assert_eq!(
        h.snapshot(),
        before,
        "the failed create left something behind"
    );
    h.ok(&["network", "rm", "n"]);
    assert_eq!(h.snapshot(), empty);
}

/// 64 commands at once against one network: 32 `create -p`, 16 `run --rm` (each pings the gateway from
/// inside) and 16 `rm` of sandboxes made beforehand, while readers list the state in a loop. Every command
/// succeeds, addresses and ports are unique, records and kernel agree, and nothing is left.
#[test]
fn sixty_four_commands_at_once() {
    let h = TestHost::new("concurrent");
    let empty = h.snapshot();
    h.ok(&["network", "create", "n", "--subnet", "172.23.0.0/24"]);
    let doomed: Vec<String> = (0..16).map(|i| h.sb(&format!("d{i}"))).collect();
    for name in &doomed {
        h.ok(&["create", name, "--network", "n"]);
    }
    let created: Vec<String> = (0..32).map(|i| h.sb(&format!("c{i}"))).collect();
    let runs: Vec<String> = (0..16).map(|i| h.sb(&format!("r{i}"))).collect();
    let done = std::sync::atomic::AtomicBool::new(false);
    let reads = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let (h, done, reads) = (&h, &done, &reads);
        // Readers: every listing is whole (a half-written record would fail to parse).
        for _ in 0..2 {
            scope.spawn(move || {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let ls = json(&h.ok(&["ls", "--json"]));
                    assert!(ls.is_array(), "{ls}");
                    reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
        let mut workers = Vec::new();
        for (i, name) in created.iter().enumerate() {
            let port = format!("{}:80", 20000 + i);
            workers.push(scope.spawn(move || {
                h.ok(&["create", name, "--network", "n", "-p", &port]);
            }));
        }
        for name in &runs {
            workers.push(scope.spawn(move || {
                h.ok(&[
                    "run",
                    "--name",
                    name,
                    "--network",
                    "n",
                    "--rm",
                    "--",
                    "ping",
                    "-c1",
                    "-W2",
                    "172.23.0.1",
                ]);
            }));
        }
        for name in &doomed {
            workers.push(scope.spawn(move || {
                h.ok(&["rm", name]);
            }));
        }
        for w in workers {
            w.join().expect("a command failed");
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert!(reads.into_inner() > 0);

    // Exactly the 32 created sandboxes remain, each with its own address and port, in records and kernel.
    let net = json(&h.ok(&["network", "inspect", "n", "--json"]));
    let mut owners: Vec<String> = net["allocations"]
        .as_object()
        .map(|o| {
            o.values()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    owners.sort();
    let mut expected = created.clone();
    expected.sort();
    assert_eq!(owners, expected, "allocations");
    assert_eq!(net["published"].as_array().map(Vec::len), Some(32));
    let mut addrs: Vec<String> = created
        .iter()
        .map(|n| {
            h.inspect(n)["endpoints"][0]["address"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), created.len(), "{addrs:?}");
    let veths = h
        .link_names()
        .iter()
        .filter(|l| l.starts_with("veth"))
        .count();
    assert_eq!(veths, created.len(), "host veths");
    assert_eq!(h.tagged_namespaces().len(), created.len());
    let first = addrs[0].split('/').next().unwrap_or_default().to_string();
    assert!(
        probe::ping(&h.sb_path("c1"), ip(&first)).expect("ping"),
        "sandbox to sandbox"
    );

    std::thread::scope(|scope| {
        for name in &created {
            let h = &h;
            scope.spawn(move || h.ok(&["rm", name]));
        }
    });
    h.ok(&["network", "rm", "n"]);
    assert_eq!(h.snapshot(), empty);
}

/// When `create` returns, the sandbox is on the wire: its bridge port forwards (the kernel moves a port there
/// asynchronously once its carrier comes up, and nsnet waits for that last) and a single ping gets through.
/// Creates on a second network run meanwhile, so the kernel is busy when each check runs.
#[test]
fn create_returns_with_the_sandbox_reachable() {
    let h = TestHost::new("ready");
    let empty = h.snapshot();
    h.ok(&["network", "create", "n", "--subnet", "172.16.9.0/24"]);
    h.ok(&["network", "create", "busy", "--subnet", "172.16.10.0/24"]);
    let names: Vec<String> = (0..6).map(|i| h.sb(&format!("r{i}"))).collect();
    let others: Vec<String> = (0..12).map(|i| h.sb(&format!("o{i}"))).collect();
    std::thread::scope(|s| {
        for chunk in others.chunks(6) {
            let h = &h;
            s.spawn(move || {
                for o in chunk {
                    h.ok(&["create", o, "--network", "busy"]);
                }
            });
        }
        for name in &names {
            h.ok(&["create", name, "--network", "n"]);
            // Every port of the bridge, this sandbox's included, at once: no other command in between.
            let ports = json(&h.in_host(&["ip", "-d", "-j", "link", "show", "master", "nsbr-n"]));
            let ports = ports.as_array().expect("ports");
            assert!(!ports.is_empty());
            for p in ports {
                assert_eq!(
                    p["linkinfo"]["info_slave_data"]["state"], "forwarding",
                    "after creating {name}: {p}"
                );
            }
        }
    });
    for (i, name) in names.iter().enumerate().skip(1) {
        let addr = h.inspect(name)["endpoints"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .expect("address")
            .to_string();
        assert!(
            probe::ping(&h.sb_path("r0"), ip(&addr)).expect("ping"),
            "r0 -> r{i}"
        );
    }
    for name in names.iter().chain(&others) {
        h.ok(&["rm", name]);
    }
    h.ok(&["network", "rm", "n"]);
    h.ok(&["network", "rm", "busy"]);
    assert_eq!(h.snapshot(), empty);
}

/// A point-to-point (veth driver) network's host end carries the network's name: `rm` deletes it before it
/// returns, so the network's next sandbox, or the network made again, can have it at once.
#[test]
fn a_point_to_point_network_takes_its_next_sandbox_right_after_rm() {
    let h = TestHost::new("p2pnext");
    let empty = h.snapshot();
    for round in 0..2 {
        h.ok(&[
            "network",
            "create",
            "p",
            "--driver",
            "veth",
            "--subnet",
            "10.77.0.0/30",
        ]);
        for i in 0..8 {
            let s = h.sb(&format!("s{round}{i}"));
            h.ok(&["create", &s, "--network", "p"]);
            assert!(
                probe::ping(
                    &h.sb_path(&format!("s{round}{i}")),
                    "10.77.0.1".parse().expect("ip")
                )
                .expect("ping"),
                "{s} -> its gateway"
            );
            h.ok(&["rm", &s]);
            assert!(
                !h.link_names().contains(&"nsve-p".to_string()),
                "nsve-p outlived rm"
            );
        }
        h.ok(&["network", "rm", "p"]);
    }
    assert_eq!(h.snapshot(), empty);
}
