//! What a CNI `DEL` leaves behind when it returns: the runtime reading its output sees end of file when the
//! plugin exits (not when the detached child it leaves its slow work to is done), the state lock and every
//! intent slot are free at once, and the child and the reaper it starts do their work and go.

#[path = "../../nsnet/tests/common/mod.rs"]
mod common;

use std::fs;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{drain, holders, processes_with, sh, within, TestHost};
use serde_json::{json, Value};

/// What the runtime got: success, stdout, stderr, and how long after the plugin's exit the last of its
/// pipes reached end of file (zero when all did before).
struct Reply {
    ok: bool,
    out: String,
    err: String,
    eof_after_exit: Duration,
}

/// Run the plugin as a runtime does: configuration on stdin, stdout and stderr on pipes read to end of file,
/// and (as a careless runtime may) a third pipe's write end left open in it as descriptor 3.
fn cni(h: &TestHost, command: &str, conf: &Value, env: &[(&str, &str)]) -> Reply {
    let net = format!("--net={}", h.host_path().display());
    // nsenter without --fork execs the plugin in place: the child's exit is the plugin's.
    let mut cmd = Command::new("nsenter");
    cmd.arg(&net)
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_nsnet-cni"))
        .env_remove("NSNET_STATE_DIR")
        // The [::1] translation's programs go to the test's throwaway cgroup, never the machine's root.
        .env("NSNET_CGROUP", &h.cgroup)
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.envs(env.iter().copied());
    // pipe(2) without O_CLOEXEC: the plugin inherits the write end under its number (the read end is kept
    // from it). Nothing else is spawned meanwhile, and the test's copy goes right after the spawn.
    let (extra_read, extra_write) = nix::unistd::pipe().expect("a pipe");
    let cloexec = nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC);
    nix::fcntl::fcntl(&extra_read, cloexec).expect("close-on-exec");
    let mut child = cmd.spawn().expect("spawn nsnet-cni");
    drop(extra_write);
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(conf.to_string().as_bytes())
            .expect("write stdin");
    }
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let extra = drain(Some(Box::new(std::fs::File::from(extra_read)) as _));
    let status = child.wait().expect("wait for nsnet-cni");
    let exited = Instant::now();
    let (out, out_eof) = out.join().expect("stdout reader");
    let (err, err_eof) = err.join().expect("stderr reader");
    let (_, extra_eof) = extra.join().expect("descriptor 3's reader");
    Reply {
        ok: status.success(),
        out,
        err,
        eof_after_exit: out_eof
            .max(err_eof)
            .max(extra_eof)
            .saturating_duration_since(exited),
    }
}

/// The detached child keeps its sockets 250 ms: a pipe it kept would reach end of file that late.
const EOF_SLACK: Duration = Duration::from_millis(150);

/// The state lock and every intent slot can be taken at once, and every slot is free (empty).
fn nothing_held(h: &TestHost) {
    let lock = fs::File::open(h.state.join("lock")).expect("the lock file");
    assert!(lock.try_lock().is_ok(), "the state lock is still held");
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
        assert_eq!(f.metadata().map(|m| m.len()).unwrap_or(1), 0);
    }
}

#[test]
fn a_del_returns_with_nothing_held_and_its_leftovers_go() {
    let h = TestHost::new("cniaft");
    let ctr = h.sb("ctr");
    sh(&["ip", "netns", "add", &ctr]);
    let path = h.sb_path("ctr").to_string_lossy().into_owned();
    let conf = json!({
        "cniVersion": "1.1.0",
        "name": "cninet",
        "type": "nsnet",
        "stateDir": h.state,
        "bridge": "cniaft0",
        "ipam": {"subnet": "10.67.0.0/24"},
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
    });
    for round in 0..3 {
        let id = format!("{ctr}-{round}");
        let env = [
            ("CNI_CONTAINERID", id.as_str()),
            ("CNI_NETNS", path.as_str()),
            ("CNI_IFNAME", "eth0"),
        ];
        let add = cni(&h, "ADD", &conf, &env);
        assert!(add.ok, "round {round}: {} {}", add.out, add.err);
        let result: Value = serde_json::from_str(&add.out).expect("a result");
        let veth = result["interfaces"][1]["name"]
            .as_str()
            .expect("the host veth")
            .to_string();
        assert!(veth.starts_with("veth"), "round {round}: {veth}");
        let mut prev = conf.clone();
        prev["prevResult"] = result;
        let del = cni(&h, "DEL", &prev, &env);
        assert!(del.ok, "round {round}: {} {}", del.out, del.err);
        assert!(
            del.eof_after_exit < EOF_SLACK,
            "round {round}: stdout/stderr reached end of file {:?} after the plugin exited",
            del.eof_after_exit
        );
        nothing_held(&h);
        // A DEL again (the runtime may repeat it) has nothing to leave, and holds nothing either.
        let again = cni(&h, "DEL", &prev, &env);
        assert!(again.ok, "round {round}: {} {}", again.out, again.err);
        assert!(again.eof_after_exit < EOF_SLACK, "round {round}");
        nothing_held(&h);
        // The reaper ran: the retired veth is gone and its address back.
        assert!(
            within(Duration::from_secs(3), || !h.link_names().contains(&veth)),
            "round {round}: retired veth {veth} outlived its reaper"
        );
        assert!(
            within(Duration::from_secs(3), || holders(&h, "cninet").is_empty()),
            "round {round}: {:?}",
            holders(&h, "cninet")
        );
        // Everything the plugin left went with it.
        let marker = format!("CNI_CONTAINERID={id}");
        assert!(
            within(Duration::from_secs(2), || processes_with(&marker)
                .is_empty()),
            "round {round}: left running: {:?}",
            processes_with(&marker)
        );
    }
    sh(&["ip", "netns", "del", &ctr]);
    h.ok(&["network", "rm", "cninet"]);
}
