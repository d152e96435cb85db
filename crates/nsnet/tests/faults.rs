//! All or nothing: every step of a set-up command is failed in turn (test builds with the `fault-injection`
//! feature); each time, the kernel and the state must be exactly as before.
#![cfg(feature = "fault-injection")]

mod common;

use common::{sh, TestHost};

/// Fail step 1, 2, ... of `args` until the command gets through; after each failure nothing may have changed.
/// Returns how many steps the command has.
fn fail_every_step(h: &TestHost, args: &[&str]) -> usize {
    fail_every_step_with(h, args, &[])
}

/// [`fail_every_step`] with more environment (the IPv6 gate).
fn fail_every_step_with(h: &TestHost, args: &[&str], env: &[(&str, &str)]) -> usize {
    for k in 1..100 {
        let before = h.snapshot();
        let at = k.to_string();
        let mut env = env.to_vec();
        env.push(("NSNET_FAIL_AT", &at));
        let out = h.nsnet_env(args, &env);
        if out.status.success() {
            return k - 1;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("injected fault at step {k}")),
            "{args:?} step {k}: {err}"
        );
        assert!(err.contains("undone"), "{err}");
        assert_eq!(
            h.snapshot(),
            before,
            "{args:?}: failing step {k} left something behind"
        );
    }
    panic!("{args:?} never succeeded");
}

#[test]
fn every_setup_step_rolls_back() {
    let h = TestHost::with_lan("faults");
    let empty = h.snapshot();
    // The first create also makes the default network and nsnet's firewall tables.
    let (a, b, ext) = (h.sb("a"), h.sb("b"), h.sb("ext"));
    let steps = fail_every_step(&h, &["create", &a, "-p", "8080:80"]);
    assert!(steps >= 8, "create has {steps} steps");
    let steps = fail_every_step(
        &h,
        &["network", "create", "n2", "--subnet", "172.16.2.0/24"],
    );
    assert!(steps >= 4, "network create has {steps} steps");
    fail_every_step(
        &h,
        &[
            "create",
            &b,
            "--network",
            "n2",
            "-p",
            "8081:80",
            "-p",
            "5353:53/udp",
        ],
    );
    // run is create, the command, then (with --rm) rm: a failed step of its create leaves nothing either.
    let r = h.sb("r");
    let steps = fail_every_step(
        &h,
        &["run", "--rm", "--name", &r, "--network", "n2", "--", "true"],
    );
    assert!(steps >= 4, "run has {steps} set-up steps");
    sh(&["ip", "netns", "add", &ext]);
    fail_every_step(&h, &["attach", &ext, "--network", "n2"]);
    fail_every_step(&h, &["attach", &a, "--network", "n2"]);

    for s in [&a, &b, &ext] {
        h.ok(&["rm", s]);
    }
    sh(&["ip", "netns", "del", &ext]);
    h.ok(&["network", "rm", "n2"]);
    h.ok(&["network", "rm", "nsnet0"]);
    assert_eq!(h.snapshot(), empty);
}

/// Addresses and routes inside each sandbox: a rolled-back teardown must bring these back too.
fn inside(sandboxes: &[&str]) -> Vec<String> {
    sandboxes
        .iter()
        .map(|s| {
            let ns = format!("--net=/run/netns/{s}");
            let addrs = sh(&["nsenter", &ns, "ip", "-br", "addr"]);
            let routes = sh(&["nsenter", &ns, "ip", "route"]);
            let routes6 = sh(&["nsenter", &ns, "ip", "-6", "route"]);
            // Without the peer's index (`eth0@if7`), and sorted: a re-created veth gets new indexes.
            let mut lines: Vec<String> = addrs
                .lines()
                .chain(routes.lines())
                .chain(routes6.lines())
                .map(|l| {
                    let words: Vec<&str> = l
                        .split_whitespace()
                        .map(|w| w.split('@').next().unwrap_or(w))
                        .collect();
                    words.join(" ")
                })
                .collect();
            lines.sort();
            format!("{s}: {}", lines.join("\n"))
        })
        .collect()
}

/// Like [`fail_every_step`], for teardown commands: the sandboxes' insides must come back as well, and the
/// sandboxes must still talk to each other.
fn fail_every_teardown_step(h: &TestHost, args: &[&str], sandboxes: &[&str]) -> usize {
    fail_every_teardown_step_with(h, args, sandboxes, &[])
}

/// [`fail_every_teardown_step`] with more environment (the IPv6 gate).
fn fail_every_teardown_step_with(
    h: &TestHost,
    args: &[&str],
    sandboxes: &[&str],
    env: &[(&str, &str)],
) -> usize {
    for k in 1..100 {
        let (before, before_inside) = (h.snapshot(), inside(sandboxes));
        let at = k.to_string();
        let mut env = env.to_vec();
        env.push(("NSNET_FAIL_AT", &at));
        let out = h.nsnet_env(args, &env);
        if out.status.success() {
            return k - 1;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("injected fault at step {k}")) && err.contains("undone"),
            "{args:?} step {k}: {err}"
        );
        assert_eq!(h.snapshot(), before, "{args:?}: failing step {k}");
        assert_eq!(inside(sandboxes), before_inside, "{args:?}: step {k}");
    }
    panic!("{args:?} never succeeded");
}

#[test]
fn every_teardown_step_rolls_back() {
    let h = TestHost::new("tfaults");
    let empty = h.snapshot();
    let (a, b, ext) = (h.sb("a"), h.sb("b"), h.sb("ext"));
    h.ok(&["network", "create", "n2", "--subnet", "172.16.3.0/24"]);
    h.ok(&["create", &a, "-p", "8080:80"]);
    h.ok(&["attach", &a, "--network", "n2"]);
    h.ok(&["create", &b, "--network", "n2", "-p", "5353:53/udp"]);
    sh(&["ip", "netns", "add", &ext]);
    h.ok(&["attach", &ext, "--network", "n2"]);
    let ping = |from: &str, to: &str| {
        let ip = h.inspect(to)["endpoints"]
            .as_array()
            .and_then(|e| e.iter().find(|e| e["network"] == "n2"))
            .and_then(|e| e["address"].as_str())
            .and_then(|a| a.split('/').next())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no address on n2: {}", h.inspect(to)));
        let ns = format!("--net=/run/netns/{from}");
        sh(&["nsenter", &ns, "ping", "-c1", "-W2", &ip]);
    };

    // Detach: the fast path entry, the veth, its resolv.conf (n2 is its only network with names), then the
    // firewall step; then put it back.
    let steps = fail_every_teardown_step(&h, &["detach", &a, "--network", "n2"], &[&a, &b, &ext]);
    assert_eq!(steps, 4, "detach");
    // The detached veth was retired: its address is back once its reaper deleted it.
    h.settle();
    h.ok(&["attach", &a, "--network", "n2", "--ip", "172.16.3.2"]);
    // Sandbox rm while a process is inside a: its resolv.conf (n2 has names), its two fast path entries, its
    // two veths one by one, then its namespace, with the firewall step alongside. Each failure must bring
    // everything back.
    let ns = format!("--net=/run/netns/{a}");
    let mut sleeper = std::process::Command::new("nsenter")
        .args([ns.as_str(), "--", "sleep", "60"])
        .spawn()
        .expect("sleep inside a");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let steps = fail_every_teardown_step(&h, &["rm", &a], &[&a, &b, &ext]);
    assert_eq!(steps, 7, "rm of a busy sandbox on two networks");
    ping(&b, &ext);
    // The process kept the namespace; its veths are gone all the same.
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    h.settle();
    // An idle sandbox goes with one unmount (the kernel takes its veths): the firewall step, then its
    // resolv.conf, its two fast path entries and the unmount.
    h.ok(&["create", &a, "-p", "8080:80"]);
    h.ok(&["attach", &a, "--network", "n2", "--ip", "172.16.3.2"]);
    let steps = fail_every_teardown_step(&h, &["rm", &a], &[&a, &b, &ext]);
    assert_eq!(steps, 5, "rm of an idle sandbox");
    // An attached namespace keeps its namespace: fast path entry, veth, then firewall.
    let steps = fail_every_teardown_step(&h, &["rm", &ext], &[&b, &ext]);
    assert_eq!(steps, 3);
    sh(&["ip", "netns", "del", &ext]);
    // network rm --force detaches b (its resolv.conf: n2 was its network with names, its fast path entry,
    // veth), deletes the bridge, then the firewall step.
    let steps = fail_every_teardown_step(&h, &["network", "rm", "n2", "--force"], &[&b]);
    assert_eq!(steps, 5);
    assert!(h.etc_netns().is_empty());
    assert_eq!(h.inspect(&b)["endpoints"], serde_json::json!([]));
    h.ok(&["rm", &b]);
    // The last network also takes nsnet's tables.
    let steps = fail_every_teardown_step(&h, &["network", "rm", "nsnet0"], &[]);
    assert_eq!(steps, 2);
    assert_eq!(h.snapshot(), empty);
}

/// The set-up and teardown twins on a dual-stack network: every failed step leaves the kernel, the state and
/// the sandboxes' insides (IPv6 addresses and routes included, which go when a veth is retired) as before.
#[test]
fn every_dual_stack_step_rolls_back() {
    let h = TestHost::with_ipv6("faults6");
    let empty = h.snapshot();
    let (a, b) = (h.sb("a"), h.sb("b"));
    let steps = fail_every_step(
        &h,
        &[
            "network",
            "create",
            "ds",
            "--ipv6",
            "--subnet",
            "172.16.4.0/24",
        ],
    );
    assert!(steps >= 4, "network create has {steps} steps");
    fail_every_step(&h, &["create", &a, "--network", "ds", "-p", "8080:80"]);
    fail_every_step(&h, &["create", &b, "--network", "ds"]);
    // rm while a process keeps a's namespace: its veth is retired, and a failure after that must give the
    // sandbox back its IPv6 addresses and default route.
    let ns = format!("--net=/run/netns/{a}");
    let mut sleeper = std::process::Command::new("nsenter")
        .args([ns.as_str(), "--", "sleep", "60"])
        .spawn()
        .expect("sleep inside a");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let before = inside(&[&a]);
    // Its IPv6 is there to lose: the link-local and the ULA address, and the IPv6 default route.
    assert!(
        before[0].contains("fe80::") && before[0].contains("default via fd"),
        "{before:?}"
    );
    fail_every_teardown_step(&h, &["rm", &a], &[&a, &b]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    h.settle();
    fail_every_teardown_step(&h, &["network", "rm", "ds", "--force"], &[&b]);
    h.ok(&["rm", &b]);
    assert_eq!(h.snapshot(), empty);
}

/// The same on an IPv6-only network (C14): its plans have no IPv4 steps, and every failed step still
/// leaves everything as before.
#[test]
fn every_ipv6_only_step_rolls_back() {
    let h = TestHost::with_ipv6("faults6o");
    let empty = h.snapshot();
    let (a, b) = (h.sb("a"), h.sb("b"));
    let steps = fail_every_step(&h, &["network", "create", "v6o", "--ipv6", "--ipv4=false"]);
    assert!(steps >= 4, "network create has {steps} steps");
    fail_every_step(&h, &["create", &a, "--network", "v6o", "-p", "8080:80"]);
    fail_every_step(&h, &["create", &b, "--network", "v6o"]);
    let ns = format!("--net=/run/netns/{a}");
    let mut sleeper = std::process::Command::new("nsenter")
        .args([ns.as_str(), "--", "sleep", "60"])
        .spawn()
        .expect("sleep inside a");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let before = inside(&[&a]);
    assert!(
        before[0].contains("fe80::") && before[0].contains("default via fd"),
        "{before:?}"
    );
    fail_every_teardown_step(&h, &["rm", &a], &[&a, &b]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    h.settle();
    fail_every_teardown_step(&h, &["network", "rm", "v6o", "--force"], &[&b]);
    h.ok(&["rm", &b]);
    assert_eq!(h.snapshot(), empty);
}

/// `-v` prints each step just before it runs, as `--dry-run` renders it: a create that succeeds prints its
/// whole plan, and one whose third step fails has printed its first three steps (not the rest), then the
/// steps that undo the first two.
#[test]
fn verbose_prints_each_step_as_it_is_applied() {
    let h = TestHost::new("verbose");
    let a = h.sb("a");
    let plan = h.ok(&["--dry-run", "create", &a]);
    let out = h.nsnet_env(&["-v", "create", &a], &[("NSNET_FAIL_AT", "3")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let (done, undone) = err
        .split_once("# undo:\n")
        .unwrap_or_else(|| panic!("no undo steps shown: {err}"));
    assert!(
        !done.is_empty() && plan.starts_with(done) && plan.len() > done.len(),
        "not the plan's first steps:\n{done}\nplan:\n{plan}"
    );
    // The bridge made by step 2 goes again (step 1, a sysctl, is never reverted).
    assert!(undone.starts_with("ip link del "), "{err}");
    assert!(err.contains("injected fault at step 3"), "{err}");

    let plan = h.ok(&["--dry-run", "create", &a]);
    let out = h.nsnet(&["-v", "create", &a]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), plan);
    h.ok(&["rm", &a]);
}
