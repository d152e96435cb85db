//! Interop with a real CNI runtime library: a small Go runtime built on libcni (Debian's
//! golang-github-appc-cni-dev, built with Debian's golang-go, no module proxy) loads a conflist where nsnet-cni
//! comes first, followed by the reference `tuning` and `bandwidth` plugins, and runs AddNetworkList,
//! CheckNetworkList and DelNetworkList. Real traffic in between; nothing left after.

#[path = "../../nsnet/tests/common/mod.rs"]
mod common;

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{reach, sh, TestHost, HOST_IP, LAN_IP};
use nsnet_core::probe;
use serde_json::{json, Value};

/// Build the Go runtime into `dir`.
fn build_runtime(dir: &Path) -> PathBuf {
    let out = dir.join("cni-runtime");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/runtime.go");
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(&src)
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", dir.join("gocache"))
        .env("GOFLAGS", "-buildvcs=false")
        .status()
        .expect("run `go` (apt-get install golang-go golang-github-appc-cni-dev)");
    assert!(status.success(), "go build of the libcni runtime failed");
    out
}

struct Runtime<'a> {
    h: &'a TestHost,
    bin: PathBuf,
    conf_dir: PathBuf,
    cache: PathBuf,
    plugins: String,
}

impl Runtime<'_> {
    fn run(&self, op: &str, netns: &str, id: &str) -> (bool, String) {
        self.run_with(op, netns, id, &[])
    }

    fn run_with(&self, op: &str, netns: &str, id: &str, env: &[(&str, &str)]) -> (bool, String) {
        let net = format!("--net={}", self.h.host_path().display());
        let out = Command::new("nsenter")
            .arg(&net)
            .arg("--")
            .arg(&self.bin)
            .args([op])
            .arg(&self.conf_dir)
            .args(["interop", netns, id])
            .arg(&self.cache)
            .env("CNI_PATH", &self.plugins)
            .env_remove("NSNET_STATE_DIR")
            .envs(env.iter().copied())
            .output()
            .expect("cni-runtime");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), format!("{text}{err}"))
    }
}

/// The Go runtime, built into `tmp`, with nsnet-cni and the reference plugins side by side in CNI_PATH and
/// `conflist` as its only configuration (network `interop`).
fn runtime<'a>(h: &'a TestHost, tmp: &Path, conflist: &Value) -> Runtime<'a> {
    let bin = build_runtime(tmp);
    let plugins = tmp.join("plugins");
    std::fs::create_dir_all(&plugins).expect("mkdir");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_nsnet-cni"), plugins.join("nsnet"))
        .expect("link");
    let conf_dir = tmp.join("net.d");
    std::fs::create_dir_all(&conf_dir).expect("mkdir");
    std::fs::write(conf_dir.join("10-interop.conflist"), conflist.to_string()).expect("conflist");
    Runtime {
        h,
        bin,
        conf_dir,
        cache: tmp.join("cache"),
        plugins: format!("{}:/usr/lib/cni", plugins.display()),
    }
}

#[test]
fn libcni_runs_nsnet_chained_with_reference_plugins() {
    let h = TestHost::with_lan("interop");
    let empty = h.snapshot();
    let tmp = tempfile::tempdir().expect("tempdir");
    // Debian's libcni and plugins speak up to 1.0.0. The bandwidth plugin shapes on the host veth (an
    // `ingress` qdisc there, a tbf on the other side), which the fast path would skip and whose hook it shares:
    // a chain with bandwidth turns the fast path off.
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "interop",
        "plugins": [
            {
                "type": "nsnet",
                "bridge": "cnibr7",
                "stateDir": h.state,
                "ipam": {"subnet": "10.66.8.0/24"},
                "fastPath": false,
                "capabilities": {"portMappings": true},
            },
            {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.accept_local": "1"}},
            {"type": "bandwidth", "ingressRate": 100_000_000u64, "ingressBurst": 1_000_000u64,
             "egressRate": 100_000_000u64, "egressBurst": 1_000_000u64},
        ],
    });
    let rt = runtime(&h, tmp.path(), &conflist);

    let (a, b) = (h.sb("a"), h.sb("b"));
    sh(&["ip", "netns", "add", &a]);
    sh(&["ip", "netns", "add", &b]);
    let (a_path, b_path) = (format!("/run/netns/{a}"), format!("/run/netns/{b}"));
    let (ok, out) = rt.run_with("add", &a_path, "ctr-a", &[("HOST_PORT", "8080")]);
    assert!(ok, "AddNetworkList: {out}");
    let result: Value = serde_json::from_str(&out).expect("result JSON");
    assert_eq!(result["cniVersion"], "1.0.0");
    assert_eq!(result["interfaces"][2]["name"], "eth0", "{result}");

    // The chained plugins did their part: tuning's sysctl inside, bandwidth's shaping on the host veth.
    let sysctl = sh(&[
        "ip",
        "netns",
        "exec",
        &a,
        "sysctl",
        "-n",
        "net.ipv4.conf.eth0.accept_local",
    ]);
    assert_eq!(sysctl.trim(), "1");
    let host_veth = result["interfaces"][1]["name"]
        .as_str()
        .expect("host veth")
        .to_string();
    let qdisc = h.in_host(&["tc", "qdisc", "show", "dev", &host_veth]);
    assert!(qdisc.contains("tbf"), "{qdisc}");

    let (ok, out) = rt.run("add", &b_path, "ctr-b");
    assert!(ok, "AddNetworkList b: {out}");
    let rb: Value = serde_json::from_str(&out).expect("result JSON");
    let ip_b = rb["ips"][0]["address"]
        .as_str()
        .and_then(|s| s.split('/').next())
        .expect("ip");
    assert!(
        probe::ping(Path::new(&a_path), ip_b.parse().expect("ip")).expect("ping"),
        "a -> b"
    );
    // The portMappings capability reached nsnet: the LAN peer reaches a through the host.
    assert_eq!(
        reach(
            Path::new(&a_path),
            80,
            &h.lan_path(),
            SocketAddrV4::new(HOST_IP.parse().expect("ip"), 8080)
        ),
        Some(LAN_IP.parse().expect("ip"))
    );
    // nsnet sees the libcni containers.
    let ls = h.ok(&["ls"]);
    assert!(ls.contains("ctr-a") && ls.contains("ctr-b"), "{ls}");

    let (ok, out) = rt.run_with("check", &a_path, "ctr-a", &[("HOST_PORT", "8080")]);
    assert!(ok, "CheckNetworkList: {out}");
    // CHECK notices a broken attachment through libcni too.
    h.in_host(&["ip", "link", "set", &host_veth, "nomaster"]);
    let (ok, out) = rt.run_with("check", &a_path, "ctr-a", &[("HOST_PORT", "8080")]);
    assert!(!ok && out.contains("not on bridge"), "{out}");

    for (id, path) in [("ctr-a", &a_path), ("ctr-b", &b_path)] {
        let (ok, out) = rt.run("del", path, id);
        assert!(ok, "DelNetworkList {id}: {out}");
        let (ok, out) = rt.run("del", path, id);
        assert!(ok, "DelNetworkList {id} again: {out}");
    }
    h.ok(&["network", "rm", "interop"]);
    sh(&["ip", "netns", "del", &a]);
    sh(&["ip", "netns", "del", &b]);
    let after = h.snapshot();
    assert!(after == empty, "{}", after.diff(&empty));
}

/// The same chain on an IPv6-only configuration (issue #19's C14: only an IPv6 range):
/// libcni gets a result with one IPv6 address and `::/0`, the reference plugins do their part (tuning's IPv6
/// sysctl, bandwidth's shaping), the sandboxes talk over IPv6, the published port is reached from the LAN peer
/// over IPv6 with its real address and not over IPv4; CHECK passes, then notices a broken attachment; DEL
/// twice; nothing left.
#[test]
fn libcni_runs_nsnet_ipv6_only_chained_with_reference_plugins() {
    let h = TestHost::with_lan6("interop6o");
    h.in_host(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    let empty = h.snapshot();
    let tmp = tempfile::tempdir().expect("tempdir");
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "interop",
        "plugins": [
            {
                "type": "nsnet",
                "bridge": "cnibr6o",
                "stateDir": h.state,
                "ipam": {"ranges": [[{"subnet": "fd66:9::/64"}]]},
                "fastPath": false,
                "capabilities": {"portMappings": true},
            },
            {"type": "tuning", "sysctl": {"net.ipv6.conf.eth0.hop_limit": "42"}},
            {"type": "bandwidth", "ingressRate": 100_000_000u64, "ingressBurst": 1_000_000u64,
             "egressRate": 100_000_000u64, "egressBurst": 1_000_000u64},
        ],
    });
    let rt = runtime(&h, tmp.path(), &conflist);
    let (a, b) = (h.sb("a"), h.sb("b"));
    sh(&["ip", "netns", "add", &a]);
    sh(&["ip", "netns", "add", &b]);
    let (a_path, b_path) = (format!("/run/netns/{a}"), format!("/run/netns/{b}"));
    let (ok, out) = rt.run_with("add", &a_path, "ctr-a", &[("HOST_PORT", "8080")]);
    assert!(ok, "AddNetworkList: {out}");
    let result: Value = serde_json::from_str(&out).expect("result JSON");
    let ips = result["ips"].as_array().cloned().unwrap_or_default();
    assert_eq!(ips.len(), 1, "{result}");
    assert!(
        ips[0]["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("fd66:9::")),
        "{result}"
    );
    let routes: Vec<&str> = result["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["dst"].as_str())
        .collect();
    assert_eq!(routes, vec!["::/0"], "{result}");
    let sysctl = sh(&[
        "ip",
        "netns",
        "exec",
        &a,
        "sysctl",
        "-n",
        "net.ipv6.conf.eth0.hop_limit",
    ]);
    assert_eq!(sysctl.trim(), "42");
    let host_veth = result["interfaces"][1]["name"]
        .as_str()
        .expect("host veth")
        .to_string();
    let qdisc = h.in_host(&["tc", "qdisc", "show", "dev", &host_veth]);
    assert!(qdisc.contains("tbf"), "{qdisc}");
    let v4 = sh(&["ip", "-n", &a, "-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(v4.trim().is_empty(), "{v4}");

    let (ok, out) = rt.run_with("add", &b_path, "ctr-b", &[]);
    assert!(ok, "AddNetworkList b: {out}");
    let rb: Value = serde_json::from_str(&out).expect("result JSON");
    let ip_b: std::net::Ipv6Addr = rb["ips"][0]["address"]
        .as_str()
        .and_then(|s| s.split('/').next())
        .and_then(|s| s.parse().ok())
        .expect("ip");
    assert!(
        probe::ping6(Path::new(&a_path), ip_b).expect("ping"),
        "a -> b"
    );
    let to = |ip: &str| std::net::SocketAddr::new(ip.parse().expect("ip"), 8080);
    assert_eq!(
        common::reach_any(Path::new(&a_path), 80, &h.lan_path(), to(common::HOST_IP6)),
        Some(common::LAN_IP6.parse().expect("ip")),
        "the LAN peer over IPv6"
    );
    assert_eq!(
        common::reach_any(Path::new(&a_path), 80, &h.lan_path(), to(HOST_IP)),
        None,
        "an IPv6-only container's port is not on IPv4"
    );

    let (ok, out) = rt.run_with("check", &a_path, "ctr-a", &[("HOST_PORT", "8080")]);
    assert!(ok, "CheckNetworkList: {out}");
    h.in_host(&["ip", "link", "set", &host_veth, "nomaster"]);
    let (ok, out) = rt.run_with("check", &a_path, "ctr-a", &[("HOST_PORT", "8080")]);
    assert!(!ok && out.contains("not on bridge"), "{out}");

    for (id, path) in [("ctr-a", &a_path), ("ctr-b", &b_path)] {
        for _ in 0..2 {
            let (ok, out) = rt.run_with("del", path, id, &[]);
            assert!(ok, "DelNetworkList {id}: {out}");
        }
    }
    h.ok(&["network", "rm", "interop"]);
    sh(&["ip", "netns", "del", &a]);
    sh(&["ip", "netns", "del", &b]);
    let after = h.snapshot();
    assert!(after == empty, "{}", after.diff(&empty));
}
