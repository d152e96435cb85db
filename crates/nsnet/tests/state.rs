//! Trusting the state dir: nsnet refuses one that someone else could have changed, and sets aside a record it
//! cannot read (moved to `quarantine/`, with a warning) while everything else keeps working.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::{check_one_line_failure, TestHost};

fn chmod(path: &std::path::Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn an_untrusted_state_dir_is_refused_and_nothing_changes() {
    let h = TestHost::new("trust");
    h.ok(&["network", "create", "n", "--subnet", "172.16.5.0/24"]);
    let a = h.sb("a");
    let before = h.snapshot();
    let state = h.state.display().to_string();

    chmod(&h.state, 0o777);
    for args in [
        &["ls"][..],
        &["network", "ls"],
        &["create", &a, "--network", "n"],
        &["--dry-run", "create", &a, "--network", "n"],
    ] {
        let line = h.fails(args);
        assert!(
            line.contains("writable by group or others (mode 0777)")
                && line.contains(&format!("run `chmod 0700 {state}`")),
            "nsnet {args:?}: {line}"
        );
    }
    chmod(&h.state, 0o700);
    assert_eq!(h.snapshot(), before);

    // A symlinked subdirectory: its records could be anyone's.
    let moved = h.state.with_file_name("sandboxes-elsewhere");
    fs::rename(h.state.join("sandboxes"), &moved).expect("move sandboxes");
    std::os::unix::fs::symlink(&moved, h.state.join("sandboxes")).expect("symlink");
    let line = h.fails(&["create", &a, "--network", "n"]);
    assert!(line.contains("sandboxes: it is a symlink"), "{line}");
    fs::remove_file(h.state.join("sandboxes")).expect("remove symlink");
    fs::rename(&moved, h.state.join("sandboxes")).expect("move back");
    assert_eq!(h.snapshot(), before);

    h.ok(&["network", "rm", "n"]);
}

#[test]
fn a_corrupt_sandbox_record_is_set_aside_and_the_rest_keeps_working() {
    let h = TestHost::new("quar");
    h.ok(&["network", "create", "n", "--subnet", "172.16.6.0/24"]);
    let (a, b) = (h.sb("a"), h.sb("b"));
    h.ok(&["create", &a, "--network", "n", "-p", "8080:80"]);
    h.ok(&["create", &b, "--network", "n"]);
    // a's record now says it is b: today `rm a` would remove b's namespace.
    let a_file = h.state.join(format!("sandboxes/{a}.json"));
    let b_text = fs::read_to_string(h.state.join(format!("sandboxes/{b}.json"))).expect("b");
    fs::write(&a_file, &b_text).expect("write");

    let out = h.nsnet(&["ls"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("nsnet: warning: ")
            && stderr.contains(&a_file.display().to_string())
            && stderr.contains(&format!("but its file is that of '{a}'"))
            && stderr.contains("quarantine/"),
        "{stderr}"
    );
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(listed.contains(&b) && !listed.contains(&a), "{listed}");
    let q = h.state.join("quarantine");
    let kept: Vec<_> = fs::read_dir(&q).expect("quarantine").flatten().collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(fs::read_to_string(kept[0].path()).expect("kept"), b_text);
    assert!(!a_file.exists());

    // rm a finds no record, and b's namespace stays; everything else works, once warned.
    let line = h.fails(&["rm", &a]);
    assert!(line.contains(&format!("no sandbox named '{a}'")), "{line}");
    assert!(h.sb_path("b").exists() && h.sb_path("a").exists());
    h.ok(&["firewall", "reload"]);
    h.ok(&["inspect", &b]);
    // gc leaves what a's record owned alone while its record sits in quarantine.
    let done = h.ok(&["gc"]);
    assert!(done.contains("holds 1 record file(s)"), "{done}");
    assert!(h.sb_path("a").exists());

    // Repaired and moved back, a is a sandbox again, and goes like any other.
    let fixed = b_text.replace(&format!("\"{b}\""), &format!("\"{a}\""));
    assert!(fixed.contains(&a));
    let mut sb: serde_json::Value = serde_json::from_str(&fixed).expect("json");
    sb["netns"] = serde_json::Value::String(h.sb_path("a").display().to_string());
    fs::write(&a_file, sb.to_string()).expect("restore");
    fs::remove_file(kept[0].path()).expect("empty the quarantine");
    h.ok(&["rm", &b]);
    h.ok(&["network", "rm", "n", "--force"]);
}

#[test]
fn a_corrupt_network_that_sandboxes_are_on_stays_and_is_named_once() {
    let h = TestHost::new("qnet");
    h.ok(&["network", "create", "n", "--subnet", "172.16.7.0/24"]);
    let (a, b) = (h.sb("a"), h.sb("b"));
    h.ok(&["create", &a, "--network", "n"]);
    let ledger = h.state.join("networks/n.ledger");
    let good = fs::read_to_string(&ledger).expect("ledger");
    fs::write(&ledger, "+ip nonsense\n").expect("corrupt");
    let before = h.snapshot();
    let args = ["create", &b, "--network", "n"];
    let line = check_one_line_failure(&args, h.nsnet(&args));
    assert!(
        line.contains(&format!("{} is corrupt (line 1: ", ledger.display()))
            && line.contains(&format!("sandboxes {a} are still on network 'n'")),
        "{line}"
    );
    assert_eq!(line.matches("is corrupt").count(), 1, "said twice: {line}");
    assert_eq!(h.snapshot(), before);
    fs::write(&ledger, good).expect("repair");
    h.ok(&["rm", &a]);
    h.ok(&["network", "rm", "n"]);
}
