//! Bad input: a one-line error that says what is wrong, a non-zero exit, and kernel and state exactly as they
//! were (compared as before/after snapshots).

mod common;

use common::{check_one_line_failure, sh, TestHost};

/// Run a bad command; check the error mentions `expect` and nothing changed.
fn rejects(h: &TestHost, args: &[&str], expect: &str) {
    let before = h.snapshot();
    let line = h.fails(args);
    assert!(
        line.contains(expect),
        "nsnet {args:?}: expected {expect:?} in {line:?}"
    );
    assert_eq!(h.snapshot(), before, "nsnet {args:?} changed something");
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let h = TestHost::with_lan("badin");
    h.ok(&[
        "network",
        "create",
        "used",
        "--subnet",
        "172.16.0.0/24",
        "--gateway",
        "172.16.0.100",
        "--bridge",
        "br0",
    ]);
    h.ok(&[
        "network",
        "create",
        "p2p",
        "--driver",
        "veth",
        "--subnet",
        "172.24.0.0/30",
    ]);
    h.ok(&[
        "network",
        "create",
        "int",
        "--internal",
        "--subnet",
        "172.25.0.0/24",
    ]);
    let (a, b, new) = (h.sb("a"), h.sb("b"), h.sb("new"));
    h.ok(&[
        "create",
        &a,
        "--network",
        "used",
        "--ip",
        "172.16.0.102",
        "-p",
        "8088:80",
    ]);
    h.ok(&["create", &b, "--network", "p2p"]);
    let long = "n".repeat(65);

    // Networks.
    rejects(
        &h,
        &["network", "create", "x", "--subnet", "10.0.0.0/33"],
        "is not an IPv4 CIDR",
    );
    rejects(
        &h,
        &["network", "create", "x", "--subnet", "banana"],
        "is not an IPv4 CIDR",
    );
    rejects(
        &h,
        &["network", "create", "x", "--subnet", "10.1.0.5/24"],
        "did you mean 10.1.0.0/24",
    );
    rejects(
        &h,
        &["network", "create", "x", "--subnet", "172.16.0.0/16"],
        "overlaps network 'used'",
    );
    rejects(
        &h,
        &["network", "create", "x", "--subnet", "10.0.1.0/25"],
        "overlaps host address 10.0.1.48/24",
    );
    rejects(
        &h,
        &[
            "network",
            "create",
            "x",
            "--subnet",
            "172.30.0.0/24",
            "--gateway",
            "172.31.0.1",
        ],
        "not a host address of subnet",
    );
    rejects(
        &h,
        &[
            "network",
            "create",
            "x",
            "--subnet",
            "172.30.0.0/24",
            "--gateway",
            "nope",
        ],
        "invalid value 'nope'",
    );
    rejects(
        &h,
        &["network", "create", "used"],
        "network 'used' already exists",
    );
    rejects(
        &h,
        &["network", "create", "x", "--bridge", "br0"],
        "already belongs to network 'used'",
    );
    rejects(
        &h,
        &["network", "create", "x", "--bridge", "uplink0"],
        "already exists on this host",
    );
    rejects(
        &h,
        &["network", "create", "x", "--bridge", "much-too-long-ifname"],
        "at most 15",
    );
    rejects(
        &h,
        &["network", "create", "x", "--mtu", "10"],
        "out of range",
    );
    rejects(
        &h,
        &["network", "create", "x", "--driver", "macvlan"],
        "invalid value 'macvlan'",
    );
    rejects(&h, &["network", "create", "bad/name"], "contains '/'");
    rejects(&h, &["network", "create", "bad name"], "contains ' '");
    rejects(&h, &["network", "create", &long], "use at most 64");
    rejects(&h, &["network", "rm", "nope"], "no network named 'nope'");
    rejects(
        &h,
        &["network", "inspect", "nope"],
        "no network named 'nope'",
    );
    rejects(&h, &["network", "rm", "used"], "in use by sandbox");

    // Sandboxes.
    rejects(
        &h,
        &["create", &new, "-p", "8088:abc"],
        "container port 'abc'",
    );
    rejects(
        &h,
        &["create", &new, "-p", "1:2/sctp"],
        "unknown protocol 'sctp'",
    );
    rejects(&h, &["create", &new, "-p", "70000:80"], "host port '70000'");
    rejects(
        &h,
        &["create", &new, "-p", "a.b.c.d:1:2"],
        "not an IPv4 address",
    );
    rejects(
        &h,
        &["create", &new, "--network", "used", "--ip", "172.16.0.102"],
        &format!("in use by sandbox {a}"),
    );
    rejects(
        &h,
        &["create", &new, "--network", "used", "--ip", "172.17.0.5"],
        "outside network used's subnet",
    );
    rejects(
        &h,
        &["create", &new, "--network", "used", "--ip", "172.16.0.100"],
        "is the gateway",
    );
    rejects(
        &h,
        &["create", &new, "--network", "used", "-p", "8088:81"],
        &format!("already published by sandbox '{a}'"),
    );
    rejects(
        &h,
        &[
            "create",
            &new,
            "--network",
            "used",
            "-p",
            "9000:80",
            "-p",
            "9000:81",
        ],
        "publish the same host port",
    );
    rejects(
        &h,
        &[
            "create",
            &new,
            "--network",
            "used",
            "-p",
            "10.0.1.99:8080:80",
        ],
        "-p HOST_IP: 10.0.1.99 is not an address of this host",
    );
    rejects(
        &h,
        &["create", &new, "--network", "nope"],
        "no network named 'nope'",
    );
    rejects(
        &h,
        &["create", &new, "--network", "p2p"],
        "already links sandbox",
    );
    rejects(
        &h,
        &["create", &new, "--network", "int", "-p", "80:80"],
        "is --internal",
    );
    rejects(&h, &["create", &a, "--network", "used"], "already exists");
    rejects(&h, &["create", "bad name"], "contains ' '");
    // A leading dot would hide the namespace (/run/netns/.NAME) and the records; a trailing one is a typo.
    rejects(&h, &["create", &format!(".{new}")], "starts with '.'");
    rejects(&h, &["create", &format!("{new}.")], "ends with '.'");
    rejects(&h, &["network", "create", ".x"], "starts with '.'");
    rejects(&h, &["network", "create", "x.."], "ends with '.'");
    rejects(&h, &["create", &long], "use at most 64");
    rejects(
        &h,
        &["attach", &h.sb("nonexistent")],
        "no network namespace at",
    );
    rejects(
        &h,
        &["attach", &a, "--network", "used"],
        "already on network 'used'",
    );
    // --json where it would be ignored.
    rejects(
        &h,
        &["run", "--json", "--rm", "--name", &new, "--", "true"],
        "--json does not apply here",
    );
    rejects(
        &h,
        &["exec", "--json", &a, "--", "true"],
        "--json does not apply here",
    );
    rejects(
        &h,
        &["--dry-run", "--json", "create", &new],
        "--json does not apply here",
    );
    rejects(&h, &["rm", "nope"], "no sandbox named 'nope'");
    rejects(&h, &["inspect", "nope"], "no sandbox named 'nope'");
    rejects(
        &h,
        &["exec", "nope", "--", "true"],
        "no sandbox named 'nope'",
    );

    // A namespace that exists but is not nsnet's: create refuses to take it over.
    let taken = h.sb("taken");
    sh(&["ip", "netns", "add", &taken]);
    rejects(
        &h,
        &["create", &taken],
        "already exists; network it with `nsnet attach",
    );
    sh(&["ip", "netns", "del", &taken]);

    // Not root.
    let before = h.snapshot();
    let args = ["network", "create", "x"];
    let out = h.nsnet_raw(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
        &args,
    );
    let line = check_one_line_failure(&args, out);
    assert!(line.contains("must run as root"), "{line}");
    assert_eq!(h.snapshot(), before);

    h.ok(&["rm", &a]);
    h.ok(&["rm", &b]);
    for n in ["used", "p2p", "int"] {
        h.ok(&["network", "rm", n]);
    }
    assert!(!h.state.exists(), "the state dir outlived the last network");
}

#[test]
fn bad_input_on_a_fresh_host_creates_no_state() {
    let h = TestHost::new("fresh");
    let before = h.snapshot();
    for (args, expect) in [
        (
            &["network", "create", "x", "--subnet", "10.0.0.1/24"][..],
            "did you mean 10.0.0.0/24",
        ),
        (
            &["create", &h.sb("s"), "-p", "80:80:80:80"][..],
            "is malformed",
        ),
        (
            &["create", &h.sb("s"), "--network", "missing"][..],
            "no network named 'missing'",
        ),
        (&["rm", &h.sb("s")][..], "no sandbox named"),
    ] {
        let line = h.fails(args);
        assert!(line.contains(expect), "{args:?}: {line}");
        assert_eq!(h.snapshot(), before, "{args:?}");
        assert!(!h.state.exists(), "{args:?} created the state dir");
    }
}

/// Each IPv6 refusal is one line and changes nothing.
#[test]
fn ipv6_bad_input_is_refused_and_changes_nothing() {
    let h = TestHost::with_lan6("badin6");
    h.ok(&["network", "create", "v4", "--subnet", "172.16.0.0/24"]);
    let new = h.sb("new");

    // A dual-stack network to refuse things against.
    let out = h.nsnet(&[
        "network",
        "create",
        "ds",
        "--subnet",
        "fd00:89:1::/64",
        "--ipv6-nat=false",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad: &[(&[&str], &str)] = &[
        (
            &["network", "create", "x", "--ipv6", "--mtu", "1200"],
            "below 1280",
        ),
        (
            &[
                "network",
                "create",
                "x",
                "--subnet",
                "fd00:2::/64",
                "--subnet",
                "fd00:3::/64",
            ],
            "--subnet is given twice for IPv6 (fd00:2::/64 and fd00:3::/64)",
        ),
        (
            &["network", "create", "x", "--subnet", "fe80::/64"],
            "link-local",
        ),
        (
            &["network", "create", "x", "--subnet", "fd00::1/64"],
            "did you mean fd00::/64",
        ),
        (
            &["network", "create", "x", "--subnet", "fd00::/121"],
            "/48 to /120",
        ),
        (
            &["network", "create", "x", "--subnet", "fd00:89:1::/56"],
            "overlaps network 'ds' (fd00:89:1::/64)",
        ),
        (
            &["network", "create", "x", "--subnet", "2001:db8:1::/64"],
            "overlaps host address 2001:db8:1::48/64",
        ),
        (
            &[
                "network",
                "create",
                "x",
                "--subnet",
                "fd00:4::/64",
                "--gateway",
                "fd00:5::1",
            ],
            "not a host address of subnet fd00:4::/64",
        ),
        (
            &[
                "network",
                "create",
                "x",
                "--subnet",
                "fd00:4::/64",
                "--gateway",
                "fd00:4::",
            ],
            "not a host address of subnet fd00:4::/64",
        ),
        (
            &["network", "create", "x", "--gateway", "fd00::1"],
            "add --ipv6",
        ),
        (
            &["network", "create", "x", "--ipv6-nat=false"],
            "add --ipv6",
        ),
        (
            &[
                "network",
                "create",
                "x",
                "--driver",
                "overlay",
                "--ipv6",
                "--subnet",
                "10.244.0.0/16",
            ],
            "needs an IPv6 --subnet too, the whole cluster's IPv6 prefix",
        ),
        (
            &["create", &new, "--network", "v4", "--ip6", "fd00:89:1::5"],
            "network 'v4' has no IPv6",
        ),
        (
            &["create", &new, "--network", "v4", "-p", "[::1]:8080:80"],
            "network 'v4' has no IPv6",
        ),
        (
            &[
                "create",
                &new,
                "--network",
                "ds",
                "-p",
                "[2001:db8:9::1]:8080:80",
            ],
            "2001:db8:9::1 is not an address of this host",
        ),
        (
            &["create", &new, "--network", "ds", "--ip6", "fd00:89:1::1"],
            "is the IPv6 gateway of network ds",
        ),
        (
            &["create", &new, "--network", "ds", "--ip6", "fd00:89:2::5"],
            "outside network ds's IPv6 subnet fd00:89:1::/64",
        ),
        (
            &["create", &new, "--network", "ds", "--ip6", "nope"],
            "invalid value 'nope'",
        ),
    ];
    for (args, expect) in bad {
        rejects(&h, args, expect);
    }
    // The host turning IPv6 off: refused for new dual-stack networks.
    h.in_host(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    rejects(
        &h,
        &["network", "create", "x", "--ipv6"],
        "this host has IPv6 turned off",
    );
    h.in_host(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0"]);

    h.ok(&["network", "rm", "ds"]);
    h.ok(&["network", "rm", "v4"]);
    assert!(!h.state.exists(), "the state dir outlived the last network");
}
