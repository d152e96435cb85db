//! `nsnet gc` reconciles both ways: records whose namespace vanished are released, and what nsnet made that no
//! record owns (links, firewall elements) goes.

mod common;

use common::{sh, TestHost};

#[test]
fn gc_reconciles_records_and_kernel() {
    let h = TestHost::new("gc");
    let empty = h.snapshot();
    h.ok(&["network", "create", "n", "--subnet", "172.16.4.0/24"]);
    let (a, b) = (h.sb("a"), h.sb("b"));
    h.ok(&["create", &a, "--network", "n", "-p", "8080:80"]);
    h.ok(&["create", &b, "--network", "n"]);
    let clean = h.snapshot();
    assert_eq!(
        h.ok(&["gc"]).trim(),
        "nothing to do: records and kernel agree"
    );
    assert_eq!(h.snapshot(), clean);

    // Kernel objects nobody recorded: a veth on nsnet's bridge, a bridge named like nsnet's, a port element.
    h.in_host(&[
        "ip",
        "link",
        "add",
        "veth0badbeef",
        "type",
        "veth",
        "peer",
        "name",
        "strayp",
    ]);
    h.in_host(&["ip", "link", "set", "veth0badbeef", "master", "nsbr-n"]);
    h.in_host(&["ip", "link", "add", "nsbr-stray", "type", "bridge"]);
    // Made by this state dir (they carry its tag), then their records were lost.
    let tag = format!(
        "nsnet:{}",
        std::fs::canonicalize(&h.state)
            .expect("state dir")
            .display()
    );
    for link in ["veth0badbeef", "nsbr-stray"] {
        h.in_host(&["ip", "link", "set", link, "alias", &tag]);
    }
    // Named like nsnet's, but nobody's tag (or another state dir's): never touched.
    h.in_host(&["ip", "link", "add", "nsbr-theirs", "type", "bridge"]);
    h.in_host(&[
        "ip",
        "link",
        "add",
        "veth0000beef",
        "type",
        "veth",
        "peer",
        "name",
        "theirsp",
    ]);
    h.in_host(&[
        "ip",
        "link",
        "set",
        "veth0000beef",
        "alias",
        "nsnet:/elsewhere",
    ]);
    h.in_host(&[
        "nft",
        "add",
        "element",
        "inet",
        "nsnet",
        "ports",
        "{ tcp . 9999 : 172.16.4.77 . 80 }",
    ]);
    // A sandbox whose namespace vanished (its container exited).
    sh(&["ip", "netns", "del", &a]);

    let plan = h.ok(&["--dry-run", "gc"]);
    assert!(
        plan.contains(&format!("would release sandbox '{a}'")),
        "{plan}"
    );
    assert!(
        plan.contains("would delete link veth0badbeef")
            && plan.contains("would delete link nsbr-stray"),
        "{plan}"
    );

    assert!(
        !plan.contains("nsbr-theirs") && !plan.contains("veth0000beef"),
        "{plan}"
    );
    // The dry run shows the steps a real run applies, as commands.
    assert!(
        plan.contains("ip link del veth0badbeef\n")
            && plan.contains("ip link del nsbr-stray\n")
            && plan.contains("nft -f - <<'EOF'"),
        "{plan}"
    );
    let done = h.ok(&["gc"]);
    assert!(done.contains(&format!("released sandbox '{a}'")), "{done}");
    // Its entry on the fast path went too.
    let fast_path = h.fast_path();
    assert!(
        !fast_path.iter().any(|l| l.contains("172.16.4.2 ")),
        "{fast_path:?}"
    );
    let links = h.link_names();
    assert!(
        links.iter().any(|l| l == "nsbr-theirs") && links.iter().any(|l| l == "veth0000beef"),
        "gc deleted links it did not make: {links:?}"
    );
    h.in_host(&["ip", "link", "del", "nsbr-theirs"]);
    h.in_host(&["ip", "link", "del", "veth0000beef"]);
    assert!(
        done.contains("deleted link veth0badbeef") && done.contains("deleted link nsbr-stray"),
        "{done}"
    );
    let ports = h.in_host(&["nft", "list", "map", "inet", "nsnet", "ports"]);
    assert!(
        !ports.contains("9999") && !ports.contains("8080"),
        "{ports}"
    );
    let net: serde_json::Value =
        serde_json::from_str(&h.ok(&["network", "inspect", "n", "--json"])).expect("json");
    assert_eq!(
        net["allocations"].as_object().map(|o| o.len()),
        Some(1),
        "{net}"
    );
    assert_eq!(
        h.ok(&["gc"]).trim(),
        "nothing to do: records and kernel agree"
    );

    // A sandbox whose record was lost: its namespace (nsnet's tag), veth and addresses go; a namespace
    // someone else made stays.
    let (c, other) = (h.sb("c"), h.sb("other"));
    h.ok(&["create", &c, "--network", "n", "-p", "8081:80"]);
    sh(&["ip", "netns", "add", &other]);
    std::fs::remove_file(h.state.join(format!("sandboxes/{c}.json"))).expect("remove record");
    let plan = h.ok(&["--dry-run", "gc"]);
    assert!(
        plan.contains(&format!("would delete namespace {c}"))
            && plan.contains(&format!("would release the addresses of {c}"))
            && !plan.contains(&other),
        "{plan}"
    );
    let done = h.ok(&["gc"]);
    assert!(done.contains(&format!("deleted namespace {c}")), "{done}");
    assert!(h.sb_path("other").exists() && !h.sb_path("c").exists());
    sh(&["ip", "netns", "del", &other]);
    assert_eq!(
        h.ok(&["gc"]).trim(),
        "nothing to do: records and kernel agree"
    );

    h.ok(&["rm", &b]);
    h.ok(&["network", "rm", "n"]);
    assert_eq!(h.snapshot(), empty);
}

/// Links deleted by hand: `gc` says so and brings them back as set-up made them (a sandbox's host veth, a
/// network's bridge with its ports), and the sandboxes talk again.
#[test]
fn gc_repairs_links_deleted_by_hand() {
    let h = TestHost::new("gcfix");
    h.ok(&["network", "create", "n", "--subnet", "172.16.14.0/24"]);
    let (a, b) = (h.sb("a"), h.sb("b"));
    h.ok(&[
        "create",
        &a,
        "--network",
        "n",
        "--ip",
        "172.16.14.2",
        "-p",
        "8080:80",
    ]);
    h.ok(&["create", &b, "--network", "n", "--ip", "172.16.14.3"]);
    let whole = h.snapshot();
    let veth = h.inspect(&a)["endpoints"][0]["host_interface"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let ping = |from: &str, to: &str| {
        h.nsnet(&["exec", from, "--", "ping", "-c", "1", "-W", "2", to])
            .status
            .success()
    };
    assert!(ping(&a, "172.16.14.3"));

    h.in_host(&["ip", "link", "del", &veth]);
    let plan = h.ok(&["--dry-run", "gc"]);
    assert!(
        plan.contains(&format!("would re-create veth {veth} of sandbox '{a}'")),
        "{plan}"
    );
    let done = h.ok(&["gc"]);
    assert!(done.contains(&format!("re-created veth {veth}")), "{done}");
    assert_eq!(h.snapshot(), whole, "{}", h.snapshot().diff(&whole));
    assert!(ping(&a, "172.16.14.3") && ping(&b, "172.16.14.2"));

    h.in_host(&["ip", "link", "del", "nsbr-n"]);
    let done = h.ok(&["gc"]);
    assert!(
        done.contains("re-created bridge nsbr-n of network 'n'")
            && done.contains(&format!("sandbox '{b}'")),
        "{done}"
    );
    assert_eq!(h.snapshot(), whole, "{}", h.snapshot().diff(&whole));
    assert!(ping(&a, "172.16.14.3") && ping(&b, "172.16.14.2"));
    assert_eq!(
        h.ok(&["gc"]).trim(),
        "nothing to do: records and kernel agree"
    );

    h.ok(&["rm", &a]);
    h.ok(&["rm", &b]);
    h.ok(&["network", "rm", "n"]);
}

/// A sandbox whose namespace vanished behind nsnet's back: `ls` says so, and every command that needs the
/// namespace says what happened and that `nsnet gc` is the way out (not `nsnet create`, nor a raw `open` error).
#[test]
fn a_lost_namespace_points_to_gc() {
    let h = TestHost::new("lostns");
    h.ok(&["network", "create", "n", "--subnet", "172.16.5.0/24"]);
    let (a, b) = (h.sb("a"), h.sb("b"));
    h.ok(&["create", &a, "--network", "n"]);
    h.ok(&["create", &b, "--network", "n"]);
    let status = |name: &str| -> String {
        let ls = h.ok(&["ls"]);
        let line = ls
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} not in {ls}"));
        line.split("  ")
            .filter(|c| !c.is_empty())
            .last()
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    assert_eq!(status(&a), "up");
    sh(&["ip", "netns", "del", &a]);
    h.wait_veths_gone(&a);
    assert_eq!(status(&a), "namespace gone");
    assert_eq!(status(&b), "up");
    let out = h.nsnet(&["ls"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`nsnet gc`"),
        "{out:?}"
    );

    let before = h.snapshot();
    for args in [
        &["exec", &a, "--", "true"][..],
        &["run", "--name", &a, "--", "true"][..],
        &["create", &a, "--network", "n"][..],
        &["attach", &a, "--network", "n"][..],
    ] {
        let line = h.fails(args);
        assert!(
            line.contains("has lost its network namespace") && line.contains("`nsnet gc`"),
            "{args:?}: {line}"
        );
        assert!(!line.contains("No such file"), "{args:?}: {line}");
        assert_eq!(h.snapshot(), before, "{args:?}");
    }

    assert!(h.ok(&["gc"]).contains(&format!("released sandbox '{a}'")));
    assert!(!h.ok(&["ls"]).contains(&a));
    h.ok(&["rm", &b]);
    h.ok(&["network", "rm", "n"]);
}
