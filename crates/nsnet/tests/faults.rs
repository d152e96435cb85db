//! All or nothing: every step of a set-up command is failed in turn (test builds with the `fault-injection`
//! feature); each time, the kernel and the state must be exactly as before.
#![cfg(feature = "fault-injection")]

mod common;

use common::{sh, TestHost};

/// Fail step 1, 2, ... of `args` until the command gets through; after each failure nothing may have changed.
/// Returns how many steps the command has.
fn fail_every_step(h: &TestHost, args: &[&str]) -> usize {
    for k in 1..100 {
        let before = h.snapshot();
        let out = h.nsnet_env(args, &[("NSNET_FAIL_AT", &k.to_string())]);
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
