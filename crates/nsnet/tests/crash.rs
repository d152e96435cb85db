//! Killed halfway: `nsnet create` and `nsnet rm` are SIGKILLed at random points, many times; after
//! `nsnet gc` the state and the kernel must agree exactly and nothing may have leaked.

mod common;

use std::process::{Child, Command};
use std::time::Duration;

use common::TestHost;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// A small xorshift generator: the runs are random but reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn spawn(h: &TestHost, args: &[&str]) -> Child {
    let net = format!("--net={}", h.host_path().display());
    // nsenter without --fork execs nsnet in place: the child's pid is nsnet's.
    Command::new("nsenter")
        .arg(&net)
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_nsnet"))
        .args(args)
        .env("NSNET_STATE_DIR", &h.state)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn nsnet")
}

fn kill_after(mut child: Child, micros: u64) {
    std::thread::sleep(Duration::from_micros(micros));
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    let _ = child.wait();
}

/// The sandbox is either wholly there (record, namespace, host veth, port element) or wholly absent.
fn whole_or_absent(h: &TestHost, name: &str, port: u16) -> bool {
    let ls: Value = serde_json::from_str(&h.ok(&["ls", "--json"])).expect("json");
    let recorded = ls
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == name)
        .cloned();
    let ports = h.in_host(&["nft", "list", "map", "ip", "nsnet", "ports"]);
    let has_port = ports.contains(&format!("tcp . {port} :"));
    let has_ns = h
        .sb_path(name.trim_start_matches(&format!("{}-", h.tag)))
        .exists();
    match recorded {
        Some(sb) => {
            let veth = sb["endpoints"][0]["host_interface"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(
                has_ns && has_port && h.link_names().contains(&veth),
                "{name}: recorded but incomplete"
            );
            true
        }
        None => {
            assert!(
                !has_ns && !has_port,
                "{name}: not recorded, but its namespace or port is there"
            );
            false
        }
    }
}

#[test]
fn killed_commands_are_finished_or_rolled_back() {
    let h = TestHost::new("crash");
    h.ok(&["network", "create", "n", "--subnet", "172.16.3.0/24"]);
    let baseline = h.snapshot();
    let seed = u64::from(std::process::id()) | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let (mut kept, mut rolled_back, mut recovered) = (0, 0, 0);
    for i in 0..200u16 {
        let name = h.sb(&format!("k{i}"));
        let port = 20000 + i;
        let p = format!("{port}:80");
        kill_after(
            spawn(&h, &["create", &name, "--network", "n", "-p", &p]),
            rng.below(15_000),
        );
        if h.ok(&["gc"]).contains("the interrupted") {
            recovered += 1;
        }
        if whole_or_absent(&h, &name, port) {
            kept += 1;
            h.ok(&["rm", &name]);
        } else {
            rolled_back += 1;
        }
        assert_eq!(
            h.snapshot(),
            baseline,
            "create killed in run {i} (seed {seed}) left something behind"
        );
    }
    eprintln!(
        "create: {kept} finished, {rolled_back} rolled back, {recovered} caught mid-command by gc"
    );
    assert!(
        kept > 0 && rolled_back > 0,
        "the kills all landed on the same side: {kept} / {rolled_back}"
    );
    assert!(recovered > 0, "no kill landed while a create was in flight");

    let (mut finished, mut untouched, mut recovered) = (0, 0, 0);
    for i in 0..60u16 {
        let name = h.sb(&format!("r{i}"));
        let port = 30000 + i;
        h.ok(&[
            "create",
            &name,
            "--network",
            "n",
            "-p",
            &format!("{port}:80"),
        ]);
        // rm is done in ~5 ms: kills spread over 15 ms land in flight often enough to be sure of some.
        kill_after(spawn(&h, &["rm", &name]), rng.below(15_000));
        if h.ok(&["gc"]).contains("finished the interrupted") {
            recovered += 1;
        }
        if whole_or_absent(&h, &name, port) {
            untouched += 1;
            h.ok(&["rm", &name]);
        } else {
            finished += 1;
        }
        assert_eq!(
            h.snapshot(),
            baseline,
            "rm killed in run {i} (seed {seed}) left something behind"
        );
    }
    eprintln!("rm: {finished} finished, {untouched} not started, {recovered} finished by gc");
    assert!(recovered > 0, "no kill landed while an rm was in flight");
    h.ok(&["network", "rm", "n"]);
}
