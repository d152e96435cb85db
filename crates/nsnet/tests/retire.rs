//! Removing a sandbox whose namespace someone else owns (`nsnet rm` after `attach`, CNI `DEL`): its veth is
//! retired at once (down, the sandbox's end renamed, the host end in the retired link group) and deleted later
//! by a reaper, off the command's path. Nothing leaks, and no address is handed out while a link still
//! carries it.

mod common;

use common::{holders, host_veth, sh, TestHost};

fn links_in(ns: &str) -> String {
    sh(&["ip", "-n", ns, "-o", "link"])
}

#[test]
fn a_runtime_owned_namespace_is_free_at_once_and_its_veth_goes_later() {
    let h = TestHost::new("retire");
    h.ok(&["network", "create", "n", "--subnet", "172.16.60.0/24"]);
    let ctr = h.sb("ctr");
    sh(&["ip", "netns", "add", &ctr]);
    h.ok(&["attach", &ctr, "--network", "n"]);
    let veth = host_veth(&h, &ctr);
    h.ok(&["rm", &ctr]);
    // At once: the interface name inside is free, and the host end is down (or already gone).
    assert!(!links_in(&ctr).contains(" eth0"), "{}", links_in(&ctr));
    let host_links = h.in_host(&["ip", "-o", "link"]);
    assert!(
        !host_links
            .lines()
            .any(|l| l.contains(&veth) && l.contains(",UP")),
        "{host_links}"
    );
    // The runtime networks the same namespace again with the same interface name, at once.
    h.ok(&["attach", &ctr, "--network", "n"]);
    assert!(links_in(&ctr).contains(" eth0"), "{}", links_in(&ctr));
    h.ok(&["rm", &ctr]);
    // Later, off the command's path: the retired veths are gone and their addresses back.
    h.settle();
    assert!(!h.link_names().contains(&veth), "{:?}", h.link_names());
    assert_eq!(holders(&h, "n"), Vec::<String>::new());
    sh(&["ip", "netns", "del", &ctr]);
    h.ok(&["network", "rm", "n"]);
}

// Holds the reaper back with NSNET_NO_REAPER, which only a fault-injection build reads.
#[cfg(feature = "fault-injection")]
#[test]
fn a_retired_veth_keeps_its_address_until_it_is_gone() {
    let h = TestHost::new("retaddr");
    // One address for sandboxes: .1 is the gateway, .2 the only one.
    h.ok(&["network", "create", "tiny", "--subnet", "172.16.61.0/30"]);
    let (a, b) = (h.sb("a"), h.sb("b"));
    for ns in [&a, &b] {
        sh(&["ip", "netns", "add", ns]);
    }
    h.ok(&["attach", &a, "--network", "tiny"]);
    let veth = host_veth(&h, &a);
    // No reaper comes (the fault-injection knob): the retired veth stays, and so does its hold on .2.
    let out = h.nsnet_env(&["rm", &a], &[("NSNET_NO_REAPER", "1")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(h.link_names().contains(&veth), "{:?}", h.link_names());
    assert_eq!(holders(&h, "tiny"), vec![format!("~{veth}")]);
    // Asked for by address, it is refused while its link is there.
    let line = h.fails(&["attach", &b, "--network", "tiny", "--ip", "172.16.61.2"]);
    assert!(line.contains("being deleted"), "{line}");
    assert!(h.link_names().contains(&veth), "{:?}", h.link_names());
    // The pool is exhausted but for it: the next attach deletes the retired veth itself, then takes .2.
    h.ok(&["attach", &b, "--network", "tiny"]);
    assert!(!h.link_names().contains(&veth), "{:?}", h.link_names());
    let ip = h.inspect(&b)["endpoints"][0]["address"].to_string();
    assert!(ip.contains("172.16.61.2"), "{ip}");
    assert_eq!(holders(&h, "tiny"), vec![b.clone()]);
    h.ok(&["gc"]);
    h.ok(&["rm", &b]);
    h.settle();
    for ns in [&a, &b] {
        sh(&["ip", "netns", "del", ns]);
    }
    h.ok(&["network", "rm", "tiny"]);
}

// Holds the reaper back with NSNET_NO_REAPER, which only a fault-injection build reads.
#[cfg(feature = "fault-injection")]
#[test]
fn a_reaper_that_never_ran_is_made_up_for_by_the_next() {
    let h = TestHost::new("reapnext");
    h.ok(&["network", "create", "n", "--subnet", "172.16.62.0/24"]);
    let (a, c) = (h.sb("a"), h.sb("c"));
    for ns in [&a, &c] {
        sh(&["ip", "netns", "add", ns]);
        h.ok(&["attach", ns, "--network", "n"]);
    }
    let out = h.nsnet_env(&["rm", &a], &[("NSNET_NO_REAPER", "1")]);
    assert!(out.status.success());
    // The next removal's reaper deletes every retired veth, a's too, and gives both addresses back.
    h.ok(&["rm", &c]);
    h.settle();
    assert!(
        !h.link_names().iter().any(|l| l.starts_with("veth")),
        "{:?}",
        h.link_names()
    );
    assert_eq!(holders(&h, "n"), Vec::<String>::new());
    for ns in [&a, &c] {
        sh(&["ip", "netns", "del", ns]);
    }
    h.ok(&["network", "rm", "n"]);
}
