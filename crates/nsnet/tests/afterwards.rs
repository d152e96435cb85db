//! What a command leaves behind when it returns (`afterwards.rs`, one-pass removals): a runtime reading its
//! output sees end of file when it exits, the state lock and every intent slot are free at once, the detached
//! child and the reaper it starts finish the work and go, a SIGKILL inside a one-pass removal is finished by
//! the next command, and what a power loss can do to a sandbox record (now written without fsync) is
//! reconciled by `gc` without a human.

mod common;

use std::fs;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{drain, holders, host_veth, nsnet_bin, processes_with, sh, within, TestHost};
use serde_json::Value;

/// What a run with its output on pipes gave: its status, its stdout, and how long after its exit the later of
/// its two pipes reached end of file (zero when both did before).
struct Piped {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    eof_after_exit: Duration,
}

/// Run nsnet in the test's host with stdout and stderr on pipes read to end of file, as a runtime (or a
/// shell's `$(...)`) does.
fn piped(h: &TestHost, args: &[&str]) -> Piped {
    let net = format!("--net={}", h.host_path().display());
    // nsenter without --fork execs nsnet in place: the child's exit is nsnet's.
    let mut child = Command::new("nsenter")
        .arg(&net)
        .arg("--")
        .arg(nsnet_bin())
        .args(args)
        .env("NSNET_STATE_DIR", &h.state)
        .env("NSNET_CGROUP", &h.cgroup)
        .env("NSNET_RESOLV_CONF", h.resolv_conf())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nsnet");
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let status = child.wait().expect("wait for nsnet");
    let exited = Instant::now();
    let (stdout, out_eof) = out.join().expect("stdout reader");
    let (stderr, err_eof) = err.join().expect("stderr reader");
    Piped {
        status,
        stdout,
        stderr,
        eof_after_exit: out_eof.max(err_eof).saturating_duration_since(exited),
    }
}

/// The detached child holds the sockets for 250 ms: a pipe it kept would reach end of file that late.
const EOF_SLACK: Duration = Duration::from_millis(150);

/// The state lock and every intent slot can be taken at once (nobody, the detached child included, holds
/// them), and every slot is free (empty).
fn nothing_held(h: &TestHost) {
    let lock = fs::File::open(h.state.join("lock")).expect("the lock file");
    assert!(lock.try_lock().is_ok(), "the state lock is still held");
    drop(lock);
    for slot in fs::read_dir(h.state.join("intents"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let f = fs::File::open(slot.path()).expect("an intent slot");
        assert!(
            f.try_lock().is_ok(),
            "intent slot {} is still held",
            slot.path().display()
        );
        assert_eq!(
            f.metadata().map(|m| m.len()).unwrap_or(1),
            0,
            "intent slot {} is not free",
            slot.path().display()
        );
    }
}

/// `nsnet rm` of an attached sandbox with a published port: a one-pass removal that retires a veth (the
/// reaper is left to do) and deletes firewall elements (a socket is left to close). Its pipes reach end of
/// file when it exits, nothing is held after, and the detached child and the reaper do their work and go.
#[test]
fn an_rm_returns_with_nothing_held_and_its_leftovers_go() {
    let h = TestHost::new("aftrm");
    h.ok(&[
        "network",
        "create",
        "n",
        "--subnet",
        "172.16.90.0/24",
        "--dns",
        "false",
    ]);
    let ctr = h.sb("ctr");
    sh(&["ip", "netns", "add", &ctr]);
    let marker = format!("NSNET_STATE_DIR={}", h.state.display());
    for round in 0..3 {
        h.ok(&["attach", &ctr, "--network", "n", "-p", "18080:80"]);
        let veth = host_veth(&h, &ctr);
        let rm = piped(&h, &["rm", &ctr]);
        assert!(rm.status.success(), "round {round}: {}", rm.stderr);
        assert!(rm.stdout.contains(&ctr), "round {round}: {}", rm.stdout);
        assert!(
            rm.eof_after_exit < EOF_SLACK,
            "round {round}: stdout/stderr reached end of file {:?} after nsnet exited",
            rm.eof_after_exit
        );
        nothing_held(&h);
        // The reaper ran: the retired veth is gone and its address back.
        assert!(
            within(Duration::from_secs(3), || !h.link_names().contains(&veth)),
            "round {round}: retired veth {veth} outlived its reaper"
        );
        assert!(
            within(Duration::from_secs(3), || holders(&h, "n").is_empty()),
            "round {round}: {:?}",
            holders(&h, "n")
        );
        // And everything the command left went with it.
        assert!(
            within(Duration::from_secs(2), || processes_with(&marker)
                .is_empty()),
            "round {round}: left running: {:?}",
            processes_with(&marker)
        );
    }
    sh(&["ip", "netns", "del", &ctr]);
    h.ok(&["network", "rm", "n"]);
}

/// A one-pass removal SIGKILLed before each of its record writes (after its firewall and kernel steps) is
/// finished by the next command: the sandbox is gone from the records, and after `gc` (which makes up for the
/// reaper the killed command never left) nothing of it is left.
#[cfg(feature = "fault-injection")]
#[test]
fn a_killed_one_pass_removal_is_finished_by_the_next_command() {
    let h = TestHost::new("aftkill");
    h.ok(&[
        "network",
        "create",
        "n",
        "--subnet",
        "172.16.91.0/24",
        "--dns",
        "false",
    ]);
    let baseline = h.snapshot();
    let ctr = h.sb("ctr");
    sh(&["ip", "netns", "add", &ctr]);
    for (how, owned) in [("attached", false), ("owned", true)] {
        for k in 1.. {
            let sb = if owned { h.sb("own") } else { ctr.clone() };
            if owned {
                h.ok(&["create", &sb, "--network", "n", "-p", "18081:80"]);
            } else {
                h.ok(&["attach", &sb, "--network", "n", "-p", "18081:80"]);
            }
            let out = h.nsnet_env(&["rm", &sb], &[("NSNET_KILL_AT_WRITE", &k.to_string())]);
            if out.status.success() {
                assert!(k > 1, "{how}: rm wrote no record");
                h.ok(&["gc"]);
                break;
            }
            // The next command (a reader) finishes it, and holds nothing after.
            let ls: Value = serde_json::from_str(&h.ok(&["ls", "--json"])).expect("ls --json");
            assert!(
                !ls.to_string().contains(&sb),
                "{how}, killed before write {k}: {ls}"
            );
            nothing_held(&h);
            h.ok(&["gc"]);
            let gc = h.ok(&["gc"]);
            assert_eq!(
                gc.trim(),
                "nothing to do: records and kernel agree",
                "{how}, killed before write {k}"
            );
            let mut now = h.snapshot();
            now.namespaces.retain(|n| *n != ctr);
            assert_eq!(
                now,
                baseline,
                "{how}, killed before write {k}: {}",
                now.diff(&baseline)
            );
        }
    }
    sh(&["ip", "netns", "del", &ctr]);
    h.ok(&["network", "rm", "n"]);
}

/// A sandbox that a power loss took away: its namespace and veths gone with the kernel.
fn lose_to_a_power_loss(h: &TestHost, sb: &str) {
    let veth = host_veth(h, sb);
    sh(&["ip", "netns", "del", sb]);
    assert!(
        within(Duration::from_secs(3), || !h.link_names().contains(&veth)),
        "the veth of {sb} outlived its namespace"
    );
}

/// After a power loss, `gc` alone brings records and kernel back in agreement, and the next `gc` finds
/// nothing to do: no record set aside for a human, nothing held.
fn gc_recovers_alone(h: &TestHost, what: &str, baseline: &common::Snapshot) {
    let out = h.nsnet(&["gc"]);
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = h.ok(&["gc"]);
    assert_eq!(
        again.trim(),
        "nothing to do: records and kernel agree",
        "{what}"
    );
    assert!(
        !h.state.join("quarantine").exists(),
        "{what}: a record was set aside for a human"
    );
    assert_eq!(holders(h, "n"), Vec::<String>::new(), "{what}");
    let now = h.snapshot();
    assert_eq!(&now, baseline, "{what}: {}", now.diff(baseline));
}

/// Sandbox records are written without fsync: a power loss can leave one empty (delayed allocation: the
/// rename landed, the data did not) or its length filled with NUL bytes. Its sandbox died with the kernel, so
/// `gc` must reconcile on its own, as it does for a record that is missing altogether, or one whose
/// release line made it to the (synced) ledger while its removal did not.
#[test]
fn gc_reconciles_what_a_power_loss_leaves_of_sandbox_records() {
    let h = TestHost::new("aftpwr");
    h.ok(&[
        "network",
        "create",
        "n",
        "--subnet",
        "172.16.92.0/24",
        "--dns",
        "false",
        // The fast path's map lives in the kernel and a power loss empties it; here it would outlive the
        // simulated one.
        "--fast-path=false",
    ]);
    let baseline = h.snapshot();
    let sb = h.sb("a");
    let record = h.state.join("sandboxes").join(format!("{sb}.json"));
    let ledger = h.state.join("networks").join("n.ledger");

    // Empty: the rename landed, the data did not.
    h.ok(&["create", &sb, "--network", "n", "-p", "18082:80"]);
    lose_to_a_power_loss(&h, &sb);
    fs::write(&record, "").expect("truncate the record");
    gc_recovers_alone(&h, "an empty record", &baseline);

    // Its length in NUL bytes: the size landed, the data did not.
    h.ok(&["create", &sb, "--network", "n", "-p", "18082:80"]);
    lose_to_a_power_loss(&h, &sb);
    let len = fs::metadata(&record).expect("the record").len();
    fs::write(&record, vec![0u8; usize::try_from(len).expect("small")]).expect("zero the record");
    gc_recovers_alone(&h, "a record of NUL bytes", &baseline);

    // Its first half, then NUL bytes: a record longer than what made it to disk.
    h.ok(&["create", &sb, "--network", "n", "-p", "18082:80"]);
    lose_to_a_power_loss(&h, &sb);
    let mut bytes = fs::read(&record).expect("the record");
    let half = bytes.len() / 2;
    bytes[half..].fill(0);
    fs::write(&record, bytes).expect("tear the record");
    gc_recovers_alone(&h, "a record torn in half", &baseline);

    // The ledger's last append torn: its line cut short and padded with NULs (appends are not synced either).
    h.ok(&["create", &sb, "--network", "n", "-p", "18082:80"]);
    lose_to_a_power_loss(&h, &sb);
    let mut bytes = fs::read(&ledger).expect("the ledger");
    let last = bytes[..bytes.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let cut = last + (bytes.len() - last) / 2;
    bytes[cut..].fill(0);
    fs::write(&ledger, bytes).expect("tear the ledger");
    gc_recovers_alone(&h, "a ledger whose last line is torn", &baseline);

    // Missing: the ledger line holding its address landed, the record did not.
    h.ok(&["create", &sb, "--network", "n", "-p", "18082:80"]);
    lose_to_a_power_loss(&h, &sb);
    fs::remove_file(&record).expect("remove the record");
    gc_recovers_alone(&h, "a missing record", &baseline);

    // Present, with the ledger as it was before its address was handed out: the record landed, the
    // ledger line did not.
    let before = fs::read(&ledger).unwrap_or_default();
    h.ok(&["create", &sb, "--network", "n", "-p", "18082:80"]);
    lose_to_a_power_loss(&h, &sb);
    fs::write(&ledger, &before).expect("roll the ledger back");
    gc_recovers_alone(&h, "a record without its ledger line", &baseline);

    h.ok(&["network", "rm", "n"]);
}

/// Run `nsnet rm` of an attached sandbox (a veth to reap, a socket to close) under strace, which follows
/// every process nsnet starts and makes each fail `syscall` as `inject` says; strace exits once all of them
/// have. Within 5 s they must all be gone, and the reaper must have done its work.
fn rm_under_strace(test: &str, subnet: &str, syscall: &str, inject: &str) {
    let h = TestHost::new(test);
    h.ok(&[
        "network", "create", "n", "--subnet", subnet, "--dns", "false",
    ]);
    let ctr = h.sb("ctr");
    sh(&["ip", "netns", "add", &ctr]);
    h.ok(&["attach", &ctr, "--network", "n", "-p", "18083:80"]);
    let veth = host_veth(&h, &ctr);
    let net = format!("--net={}", h.host_path().display());
    let trace = format!("trace={syscall}");
    let inject = format!("inject={syscall}:{inject}");
    let mut strace = Command::new("nsenter")
        .arg(&net)
        .args(["--", "strace", "-f", "-qq", "-o", "/dev/null"])
        .args(["-e", &trace, "-e", &inject])
        .arg(nsnet_bin())
        .args(["rm", &ctr])
        .env("NSNET_STATE_DIR", &h.state)
        .env("NSNET_CGROUP", &h.cgroup)
        .env("NSNET_RESOLV_CONF", h.resolv_conf())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn strace");
    let marker = format!("NSNET_STATE_DIR={}", h.state.display());
    let ended = within(Duration::from_secs(5), || {
        strace.try_wait().ok().flatten().is_some()
    });
    if !ended {
        // Leave nothing behind: what strace still follows, then strace.
        let left = processes_with(&marker);
        for line in &left {
            if let Some(pid) = line.split(':').next().and_then(|p| p.parse().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = strace.kill();
        let _ = strace.wait();
        h.ok(&["gc"]);
        sh(&["ip", "netns", "del", &ctr]);
        h.ok(&["network", "rm", "n"]);
        panic!("{inject}: still running 5 s after the rm: {left:?}");
    }
    let reaped = within(Duration::from_secs(3), || {
        !h.link_names().contains(&veth) && holders(&h, "n").is_empty()
    });
    if !reaped {
        h.ok(&["gc"]);
    }
    sh(&["ip", "netns", "del", &ctr]);
    h.ok(&["network", "rm", "n"]);
    assert!(reaped, "{inject}: retired veth {veth} was never reaped");
}

/// The detached child learns that the command is done from end of file on a pipe. Where `close_range(2)` is
/// missing (a kernel before 5.9) or refused (a container's seccomp profile), it must still see it.
#[test]
fn the_detached_child_goes_without_close_range() {
    rm_under_strace("aftcr", "172.16.93.0/24", "close_range", "error=ENOSYS");
}

/// Where the command cannot make the child's pipe (out of descriptors), the reaper is still started.
#[test]
fn the_reaper_starts_when_the_child_cannot_be_made() {
    rm_under_strace("aftpipe", "172.16.94.0/24", "pipe2", "error=EMFILE:when=1");
}

/// `nsnet rm` of an idle sandbox SIGKILLed as it unmounts the namespace (its firewall elements and fast
/// path entry already gone, its records not yet written): the next command finishes the removal.
#[test]
fn an_rm_killed_at_its_unmount_is_finished_by_the_next_command() {
    let h = TestHost::new("aftumnt");
    h.ok(&[
        "network",
        "create",
        "n",
        "--subnet",
        "172.16.95.0/24",
        "--dns",
        "false",
    ]);
    let baseline = h.snapshot();
    let sb = h.sb("a");
    h.ok(&["create", &sb, "--network", "n", "-p", "18084:80"]);
    let out = h.nsnet_raw(
        &[
            "strace",
            "-qq",
            "-o",
            "/dev/null",
            "-e",
            "trace=umount2",
            "-e",
            "inject=umount2:signal=SIGKILL",
        ],
        &["rm", &sb],
    );
    assert!(!out.status.success(), "rm was not killed at its unmount");
    let ls: Value = serde_json::from_str(&h.ok(&["ls", "--json"])).expect("ls --json");
    assert!(!ls.to_string().contains(&sb), "{ls}");
    nothing_held(&h);
    // The kernel destroys the unmounted namespace, veths and all, in the background.
    h.settle();
    assert_eq!(
        h.ok(&["gc"]).trim(),
        "nothing to do: records and kernel agree"
    );
    let now = h.snapshot();
    assert_eq!(now, baseline, "{}", now.diff(&baseline));
    h.ok(&["network", "rm", "n"]);
}

/// `chattr +i` on a file for as long as it lives: root cannot write it either.
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn new(path: std::path::PathBuf) -> Immutable {
        sh(&["chattr", "+i", &path.to_string_lossy()]);
        Immutable(path)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr")
            .args(["-i", &self.0.to_string_lossy()])
            .status();
    }
}

/// The addresses and routes inside a namespace, without interface indexes.
fn inside(ns: &str) -> Vec<String> {
    let net = format!("--net=/run/netns/{ns}");
    let mut lines: Vec<String> = sh(&["nsenter", &net, "ip", "-br", "addr"])
        .lines()
        .chain(sh(&["nsenter", &net, "ip", "route"]).lines())
        .map(|l| {
            l.split_whitespace()
                .map(|w| w.split('@').next().unwrap_or(w))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    lines.sort();
    lines
}

/// A removal whose records cannot be written (its network's ledger immutable) is undone whole:
/// the kernel as it was, the sandbox still recorded, nothing that failed to come back. For an idle
/// sandbox this means its namespace must not have been unmounted yet: the kernel destroys an unmounted
/// namespace in the background, and its veths' names stay taken until then.
#[test]
fn a_removal_whose_records_cannot_be_written_is_undone() {
    let h = TestHost::new("aftro");
    h.ok(&[
        "network",
        "create",
        "n",
        "--subnet",
        "172.16.96.0/24",
        "--dns",
        "false",
    ]);
    let (own, ctr) = (h.sb("own"), h.sb("ctr"));
    h.ok(&["create", &own, "--network", "n", "-p", "18085:80"]);
    sh(&["ip", "netns", "add", &ctr]);
    h.ok(&["attach", &ctr, "--network", "n", "-p", "18086:80"]);
    let ledger = h.state.join("networks").join("n.ledger");
    for sb in [&own, &ctr] {
        let (before, before_inside) = (h.snapshot(), inside(sb));
        let out = {
            let _frozen = Immutable::new(ledger.clone());
            h.nsnet(&["rm", sb])
        };
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{sb}: rm wrote an immutable ledger");
        assert!(
            err.contains("undone") && !err.contains("also failed"),
            "{sb}: {err}"
        );
        assert_eq!(h.inspect(sb)["name"], sb.as_str(), "{sb}: its record");
        assert_eq!(inside(sb), before_inside, "{sb}: inside");
        let now = h.snapshot();
        assert_eq!(now, before, "{sb}: {}", now.diff(&before));
    }
    // The same for a removal in three phases (the bridge is deleted without the lock).
    let (before, before_inside) = (h.snapshot(), [inside(&own), inside(&ctr)]);
    let out = {
        let _frozen = Immutable::new(ledger.clone());
        h.nsnet(&["network", "rm", "n", "--force"])
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "network rm wrote an immutable ledger"
    );
    assert!(
        err.contains("undone") && !err.contains("also failed"),
        "{err}"
    );
    assert_eq!(h.inspect(&own)["endpoints"][0]["network"], "n");
    assert_eq!([inside(&own), inside(&ctr)], before_inside);
    let now = h.snapshot();
    assert_eq!(now, before, "network rm: {}", now.diff(&before));
    h.ok(&["rm", &own]);
    h.ok(&["rm", &ctr]);
    sh(&["ip", "netns", "del", &ctr]);
    h.ok(&["network", "rm", "n"]);
}

/// A removal killed after it retired a veth (before its records, so before it could leave a reaper): the
/// command that finishes it leaves one, and the veth goes and its address comes back without a `gc`.
#[cfg(feature = "fault-injection")]
#[test]
fn a_killed_removal_s_retired_veth_is_reaped_once_it_is_finished() {
    let h = TestHost::new("aftreap");
    h.ok(&[
        "network",
        "create",
        "n",
        "--subnet",
        "172.16.97.0/24",
        "--dns",
        "false",
    ]);
    let ctr = h.sb("ctr");
    sh(&["ip", "netns", "add", &ctr]);
    h.ok(&["attach", &ctr, "--network", "n"]);
    let veth = host_veth(&h, &ctr);
    let out = h.nsnet_env(&["rm", &ctr], &[("NSNET_KILL_AT_WRITE", "1")]);
    assert!(!out.status.success(), "rm was not killed");
    // A reader finishes it.
    h.ok(&["ls"]);
    let reaped = within(Duration::from_secs(3), || {
        !h.link_names().contains(&veth) && holders(&h, "n").is_empty()
    });
    if !reaped {
        h.ok(&["gc"]);
    }
    sh(&["ip", "netns", "del", &ctr]);
    h.ok(&["network", "rm", "n"]);
    assert!(reaped, "retired veth {veth} waits for a gc");
}
