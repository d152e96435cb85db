//! A real containerd runs real containers whose networking is nsnet-cni (issue #17): Debian 12's containerd
//! 1.6 with runc, its `ctr` client with `--cni`, and a busybox image this test builds (there is no registry to
//! pull from). It proves, with real traffic, that containers started by containerd get nsnet addresses, reach
//! each other and are reached from the host, that nsnet's own view lists them, and that removing them leaves
//! nothing: no sandbox record, no veth, no firewall element, nothing on the machine. A second test kills
//! containerd with SIGKILL while two containers run: a detached one keeps its network, an attached one is let
//! go by its dying client, containerd adopts both again after a restart, and removing them leaks nothing
//! either.
//!
//! How containerd 1.6 calls CNI (cmd/ctr/commands/run/run.go): `ctr run --cni` runs the plugins itself
//! (go-cni inside the client, not the daemon), ADD between creating and starting the task; DEL only in the
//! attached form (`ctr run --rm --cni`, no `-d`), after the task exits. A detached container (`-d`) is never
//! DELed by ctr, and ctr passes no `portMappings`, so ports are not covered here. go-cni's directories are
//! fixed (/etc/cni/net.d, /opt/cni/bin) and the shims' sockets too (/run/containerd/s): containerd and every
//! ctr run in a private mount namespace where /etc, /opt and /run are overlays whose writes land in a tmpfs,
//! so the machine's own /etc, /opt and /run are never written (the test compares them before and after).

#[path = "../../nsnet/tests/common/mod.rs"]
mod common;

use std::fs::{self, File};
use std::io::{BufRead as _, BufReader};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use common::{wait_exit, TestHost};
use nsnet_core::probe;
use serde_json::{json, Value};

/// containerd's namespace for this test's containers; nsnet names a CNI sandbox `NAMESPACE-ID` (ctr's ID).
const CTR_NS: &str = "nsnet";
const IMAGE_BASE: &str = "nsnet.test/busybox";
const IMAGE: &str = "nsnet.test/busybox:latest";
/// The port each container's greeter listens on.
const PORT: u16 = 7000;
const PACKAGES: &str =
    "apt-get install containerd runc busybox-static (scripts/setup --packages does)";

/// Sets up the private mount namespace, then stays in it (as `sleep`) so containerd, restarted or not, and
/// every ctr enter the same one. Overlays rather than tmpfs over /etc, /opt and /run: the programs still
/// need the machine's files there (libraries, /run/netns), only their writes must go elsewhere.
const HOLDER: &str = r#"
t=$1
mount -t tmpfs nsnet-ctrd "$t/mnt"
mkdir "$t/mnt/netns"
mount --rbind /run/netns "$t/mnt/netns"
for d in etc opt run; do
    mkdir "$t/mnt/$d" "$t/mnt/$d/upper" "$t/mnt/$d/work"
    mount -t overlay overlay -o "lowerdir=/$d,upperdir=$t/mnt/$d/upper,workdir=$t/mnt/$d/work" "/$d"
done
mount --move "$t/mnt/netns" /run/netns
mkdir -p /etc/cni/net.d /opt/cni/bin
mount --bind "$t/net.d" /etc/cni/net.d
mount --bind "$t/bin" /opt/cni/bin
echo ready
exec sleep infinity
"#;

/// Fail, naming the packages, unless containerd, ctr, the runc shim, runc and a static busybox are here.
fn require_tools() {
    let missing: Vec<&str> = ["containerd", "ctr", "containerd-shim-runc-v2", "runc"]
        .into_iter()
        .filter(|t| !on_path(t))
        .collect();
    assert!(
        missing.is_empty(),
        "the containerd test needs {missing:?}: {PACKAGES}"
    );
    // The image has no libc: a dynamically linked busybox (Debian's `busybox`) cannot run in it.
    let busybox = fs::read("/bin/busybox").unwrap_or_default();
    assert!(
        is_static_elf(&busybox),
        "the containerd test needs a static /bin/busybox: {PACKAGES}"
    );
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// Whether `elf` is a 64-bit little-endian ELF file without a program interpreter (PT_INTERP).
fn is_static_elf(elf: &[u8]) -> bool {
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?));
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(size), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    let p_type = |i: usize| u32_at(i.checked_mul(usize::from(size))?.checked_add(phoff)?);
    (0..usize::from(count)).all(|i| p_type(i).is_some_and(|t| t != 3 /* PT_INTERP */))
}

/// This machine's architecture as OCI names it.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Run a command; it must succeed. Returns stdout.
fn checked(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Write `bytes` as a content-addressed blob of the OCI layout at `layout`; returns its descriptor.
fn blob(layout: &Path, media_type: &str, bytes: &[u8]) -> Value {
    let staged = layout.join("staged");
    fs::write(&staged, bytes).expect("write a blob");
    let sum = checked(Command::new("sha256sum").arg(&staged));
    let hex = sum
        .split_whitespace()
        .next()
        .expect("sha256sum prints a digest");
    fs::rename(&staged, layout.join("blobs/sha256").join(hex)).expect("store a blob");
    json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len()})
}

/// An OCI image-layout tar (what `ctr images import` takes) of one layer: Debian's static busybox and the
/// applets the test runs, as links to it.
fn build_image(dir: &Path) -> PathBuf {
    let rootfs = dir.join("image/rootfs");
    fs::create_dir_all(rootfs.join("bin")).expect("mkdir rootfs");
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copy busybox");
    for applet in ["sh", "sleep", "ip", "ping", "nc", "echo", "cat"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).expect("link");
    }
    let layer = dir.join("image/layer.tar");
    checked(
        Command::new("tar")
            .args([
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--sort=name",
                "--mtime=@0",
                "-C",
            ])
            .arg(&rootfs)
            .arg("-cf")
            .arg(&layer)
            .arg("bin"),
    );
    let layout = dir.join("image/layout");
    fs::create_dir_all(layout.join("blobs/sha256")).expect("mkdir layout");
    let layer = blob(
        &layout,
        "application/vnd.oci.image.layer.v1.tar",
        &fs::read(&layer).expect("read the layer"),
    );
    // Uncompressed: the layer's digest is its diff ID.
    let config = json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
    });
    let config = blob(
        &layout,
        "application/vnd.oci.image.config.v1+json",
        config.to_string().as_bytes(),
    );
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": [layer],
    });
    let mut manifest = blob(
        &layout,
        "application/vnd.oci.image.manifest.v1+json",
        manifest.to_string().as_bytes(),
    );
    // `ctr images import --base-name nsnet.test/busybox` names it nsnet.test/busybox:latest.
    manifest["annotations"] = json!({"org.opencontainers.image.ref.name": "latest"});
    manifest["platform"] = json!({"architecture": oci_arch(), "os": "linux"});
    let index = json!({"schemaVersion": 2, "manifests": [manifest]});
    fs::write(layout.join("index.json"), index.to_string()).expect("index.json");
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("oci-layout");
    let tar = dir.join("image.tar");
    checked(
        Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&tar)
            .args(["oci-layout", "index.json", "blobs"]),
    );
    tar
}

/// A container's command: a greeter on [`PORT`] that answers every connection with `hello-from-ID`.
fn greeter(id: &str) -> Vec<String> {
    ["nc", "-ll", "-p", &PORT.to_string(), "-e", "echo"]
        .into_iter()
        .map(str::to_string)
        .chain([format!("hello-from-{id}")])
        .collect()
}

/// The conflist ctr finds in /etc/cni/net.d: nsnet-cni alone, on this test's state dir.
fn conflist(h: &TestHost, network: &str, bridge: &str, subnet: &str) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [{
            "type": "nsnet",
            "bridge": bridge,
            "stateDir": h.state,
            "ipam": {"subnet": subnet},
        }],
    })
}

/// Call `f` every 20 ms until it gives something, for at most `limit`.
fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait (up to `limit`) for `child` to exit; `None` if it did not.
fn exit_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    poll(limit, || child.try_wait().ok().flatten())
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// The processes (pid, name) whose mount namespace is the one with nsfs inode `ino`.
fn processes_in_mount_ns(ino: u64) -> Vec<(u32, String)> {
    let Ok(procs) = fs::read_dir("/proc") else {
        return vec![];
    };
    procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| fs::metadata(format!("/proc/{pid}/ns/mnt")).is_ok_and(|m| m.ino() == ino))
        .map(|pid| (pid, common::process(pid).map(|p| p.0).unwrap_or_default()))
        .collect()
}

/// The directories of cgroup `name` (a top-level cgroup) in every hierarchy: v1 controllers and v2 alike.
fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(name)];
    if let Ok(hierarchies) = fs::read_dir(root) {
        dirs.extend(hierarchies.filter_map(|e| Some(e.ok()?.path().join(name))));
    }
    dirs.retain(|d| d.is_dir());
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Every directory under `dir`, deepest first, `dir` last.
fn subdirs_deepest_first(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                subdirs_deepest_first(&e.path(), out);
            }
        }
    }
    out.push(dir.to_path_buf());
}

/// What of the machine itself a containerd run could change if the private mount namespace leaked: the top
/// of /etc and /opt (go-cni's /etc/cni and /opt/cni, containerd's /opt/containerd), /run/containerd and
/// /var/lib/containerd, and the root namespace's links and nft tables.
fn machine() -> Vec<String> {
    let mut out = Vec::new();
    for dir in ["/etc", "/opt"] {
        let mut names: Vec<String> = fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| Some(format!("{dir}/{}", e.ok()?.file_name().to_str()?)))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        out.extend(names);
    }
    for path in [
        "/run/containerd",
        "/var/lib/containerd",
        "/etc/cni",
        "/opt/cni",
    ] {
        out.push(format!("{path} exists: {}", Path::new(path).exists()));
    }
    let links = checked(Command::new("ip").args(["-o", "link", "show"]));
    out.extend(
        links
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|l| format!("link {l}")),
    );
    out.extend(
        checked(Command::new("nft").args(["list", "tables"]))
            .lines()
            .map(str::to_string),
    );
    out
}

/// One containerd of this test's own: root, state, socket and config in a temp dir, running inside the
/// test's host namespace and a private mount namespace. Dropping it (a failed test too) kills its
/// containers, shims and daemon and removes their cgroups; its temp dir goes with it.
struct Containerd {
    /// Fields drop in order: the temp dir goes last, after [`Drop::drop`] has stopped everything in it.
    holder: Child,
    /// The mount namespace's nsfs inode: every process in it (daemon, shims, ctr, nsnet-cni) is this test's.
    mnt_ns: u64,
    /// The mount namespace itself, held open until this is dropped: a namespace's inode number is free for a
    /// new one once the namespace is gone, and the teardown, which kills every process in `mnt_ns`, must never
    /// find a parallel test's containerd there.
    mnt_ns_held: Option<File>,
    daemon: Option<Child>,
    /// Attached `ctr run --rm --cni` clients, by container ID: they DEL when their task exits.
    clients: Vec<(String, Child)>,
    /// The cgroup every container of this test is put under (`--cgroup /NAME/ID`).
    cgroup: String,
    execs: usize,
    stopped: bool,
    dir: tempfile::TempDir,
}

impl Containerd {
    /// Start containerd in `h`'s host namespace, with ctr's CNI configuration `conflist` and nsnet-cni as
    /// the `nsnet` plugin, and import the busybox image.
    fn start(h: &TestHost, conflist: &Value) -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("nsnet-ctrd")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        for sub in ["root", "state", "tmp", "opt", "mnt", "net.d", "bin"] {
            fs::create_dir(d.join(sub)).expect("mkdir");
        }
        // No CRI plugin: ctr drives CNI itself. The `opt` plugin would create /opt/containerd.
        let config = format!(
            "version = 2\nroot = {root:?}\nstate = {state:?}\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = {sock:?}\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {opt:?}\n",
            root = d.join("root"),
            state = d.join("state"),
            sock = d.join("containerd.sock"),
            opt = d.join("opt"),
        );
        fs::write(d.join("config.toml"), config).expect("config.toml");
        fs::write(d.join("net.d/10-nsnet.conflist"), conflist.to_string()).expect("conflist");
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_nsnet-cni"), d.join("bin/nsnet"))
            .expect("link the plugin");
        let image = build_image(d);

        let holder = Command::new("nsenter")
            .arg(format!("--net={}", h.host_path().display()))
            .args(["--", "unshare", "--mount", "--propagation", "private", "--"])
            .args(["sh", "-euc", HOLDER, "holder"])
            .arg(d)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(d.join("holder.log")).expect("holder.log"))
            .spawn()
            .expect("start the mount namespace's holder");
        let mut c = Containerd {
            mnt_ns: 0,
            mnt_ns_held: None,
            holder,
            daemon: None,
            clients: Vec::new(),
            cgroup: format!("nsnet-{}", h.tag),
            execs: 0,
            stopped: false,
            dir,
        };
        let mut line = String::new();
        if let Some(out) = c.holder.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        assert_eq!(
            line.trim(),
            "ready",
            "the private mount namespace: {}",
            fs::read_to_string(c.path("holder.log")).unwrap_or_default()
        );
        let held = File::open(format!("/proc/{}/ns/mnt", c.holder.id()))
            .expect("the holder's mount namespace");
        c.mnt_ns = held.metadata().expect("its nsfs inode").ino();
        c.mnt_ns_held = Some(held);
        c.start_daemon();
        let out = c.ctr(&[
            "images",
            "import",
            "--base-name",
            IMAGE_BASE,
            image.to_str().expect("a UTF-8 temp path"),
        ]);
        assert!(out.status.success(), "import: {}", text(&out));
        c
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A command run inside the test's host and private mount namespaces (those of the holder).
    fn inside(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args([
            "-t",
            &self.holder.id().to_string(),
            "-m",
            "-n",
            "--",
            program,
        ])
        .env_remove("NSNET_STATE_DIR")
        .env_remove("CONTAINERD_ADDRESS")
        .env_remove("CONTAINERD_NAMESPACE");
        cmd
    }

    /// `ctr` on this containerd and namespace.
    fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = self.inside("ctr");
        cmd.arg("--address")
            .arg(self.path("containerd.sock"))
            .args(["--namespace", CTR_NS])
            .args(args);
        cmd
    }

    /// `ctr`, bounded: a hung call fails the test, not the suite.
    fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_command(&[&["--timeout", "60s"], args].concat())
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// `ctr`; must succeed. Returns stdout.
    fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}\ncontainerd's log:\n{}",
            text(&out),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.path("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Start (or restart) the daemon and wait until it answers.
    fn start_daemon(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.path("containerd.log"))
            .expect("containerd.log");
        let daemon = self
            .inside("containerd")
            .arg("--config")
            .arg(self.path("config.toml"))
            // Where it makes its temporary mount points.
            .env("TMPDIR", self.path("tmp"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        self.daemon = Some(daemon);
        let answered = poll(Duration::from_secs(20), || {
            if let Some(Ok(Some(status))) = self.daemon.as_mut().map(Child::try_wait) {
                panic!("containerd exited ({status}):\n{}", self.log_tail());
            }
            let up = self.path("containerd.sock").exists()
                && self
                    .ctr(&["--connect-timeout", "1s", "version"])
                    .status
                    .success();
            up.then_some(())
        });
        assert!(
            answered.is_some(),
            "containerd did not answer within 20 s:\n{}",
            self.log_tail()
        );
    }

    /// SIGKILL the daemon (its shims, and so the containers, live on).
    fn kill_daemon(&mut self) {
        let mut daemon = self.daemon.take().expect("containerd runs");
        daemon.kill().expect("SIGKILL containerd");
        daemon.wait().expect("reap containerd");
    }

    /// The task's pid and status (`RUNNING`, `STOPPED`, ...), from `ctr task ls`.
    fn task(&self, id: &str) -> Option<(u32, String)> {
        self.ctr_ok(&["task", "ls"]).lines().skip(1).find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            match cols[..] {
                [task, pid, status] if task == id => Some((pid.parse().ok()?, status.to_string())),
                _ => None,
            }
        })
    }

    /// Wait (up to 20 s) until task `id` has status `want`; returns its pid. Fails at once if the attached
    /// client of `id` exits meanwhile (a failed CNI ADD, say).
    fn wait_task(&mut self, id: &str, want: &str) -> u32 {
        let pid = poll(Duration::from_secs(20), || {
            let client = self.clients.iter_mut().find(|(c, _)| c == id);
            if let Some(Ok(Some(status))) = client.map(|(_, c)| c.try_wait()) {
                let log = fs::read_to_string(self.path(&format!("ctr-{id}.log")));
                panic!(
                    "ctr run {id} exited ({status}): {}",
                    log.unwrap_or_default()
                );
            }
            self.task(id)
                .and_then(|(pid, status)| (status == want).then_some(pid))
        });
        pid.unwrap_or_else(|| panic!("task {id} is not {want} after 20 s: {:?}", self.task(id)))
    }

    fn run_args(&self, id: &str, mode: &str) -> Vec<String> {
        let cgroup = format!("/{}/{id}", self.cgroup);
        [
            "run",
            mode,
            "--cni",
            "--null-io",
            "--cgroup",
            &cgroup,
            IMAGE,
            id,
        ]
        .into_iter()
        .map(str::to_string)
        .collect()
    }

    /// `ctr run --rm --cni IMAGE ID CMD` (attached: the client stays, and DELs when the task exits); returns
    /// once the task runs (CNI ADD is done before the task starts).
    fn run_attached(&mut self, id: &str, cmd: &[String]) -> u32 {
        let mut args = self.run_args(id, "--rm");
        args.extend_from_slice(cmd);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = File::create(self.path(&format!("ctr-{id}.log"))).expect("ctr log");
        let client = self
            .ctr_command(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("ctr run");
        self.clients.push((id.to_string(), client));
        self.wait_task(id, "RUNNING")
    }

    /// `ctr run -d --cni IMAGE ID CMD` (detached: nobody DELs it later); returns the task's pid.
    fn run_detached(&mut self, id: &str, cmd: &[String]) -> u32 {
        let mut args = self.run_args(id, "--detach");
        args.extend_from_slice(cmd);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ctr_ok(&args);
        self.wait_task(id, "RUNNING")
    }

    /// Remove an attached container the way its user would: SIGKILL its task; the client sees the exit, runs
    /// CNI DEL, deletes the task and (`--rm`) the container.
    fn remove_attached(&mut self, id: &str) {
        self.ctr_ok(&["task", "kill", "--signal", "SIGKILL", id]);
        let (status, log) = self.client_exit(id);
        // ctr exits with the task's status (128 + SIGKILL), and logs an error if CNI DEL failed.
        assert_eq!(status.code(), Some(137), "ctr run {id}: {log}");
        assert!(!log.contains("level=error"), "ctr run {id}: {log}");
        let containers = self.ctr_ok(&["containers", "ls", "--quiet"]);
        assert!(!containers.lines().any(|c| c == id), "{containers}");
    }

    /// Wait (up to 15 s) for the attached client of `id` to exit; returns its status and what it logged.
    fn client_exit(&mut self, id: &str) -> (ExitStatus, String) {
        let at = self
            .clients
            .iter()
            .position(|(c, _)| c == id)
            .expect("an attached container");
        let (_, mut client) = self.clients.remove(at);
        let status = wait_exit(&mut client);
        let log = fs::read_to_string(self.path(&format!("ctr-{id}.log"))).unwrap_or_default();
        (status, log)
    }

    /// Remove a container whose client is gone: SIGKILL its task, then delete the task and the container.
    fn remove_unattended(&mut self, id: &str) {
        self.ctr_ok(&["task", "kill", "--signal", "SIGKILL", id]);
        self.wait_task(id, "STOPPED");
        self.ctr_ok(&["task", "rm", id]);
        self.ctr_ok(&["containers", "rm", id]);
    }

    /// Run `args` in container `id` (`ctr task exec`).
    fn exec(&mut self, id: &str, args: &[&str]) -> Output {
        self.execs += 1;
        let exec_id = format!("x{}", self.execs);
        let mut all = vec!["task", "exec", "--exec-id", &exec_id, id];
        all.extend_from_slice(args);
        self.ctr(&all)
    }

    /// What container `from` gets from the greeter at `addr` ([`PORT`]), over TCP with busybox's nc. A task
    /// counts as running before its greeter listens: asked again for up to 10 s while the answer is empty.
    fn greeting(&mut self, from: &str, addr: &str) -> String {
        let mut last = String::new();
        let got = poll(Duration::from_secs(10), || {
            last = text(&self.exec(from, &["nc", "-w", "3", addr, &PORT.to_string()]))
                .trim()
                .to_string();
            (!last.is_empty()).then(|| last.clone())
        });
        got.unwrap_or(last)
    }

    /// Container `id`'s global IPv6 address on eth0, without prefix.
    fn address6(&mut self, id: &str) -> Ipv6Addr {
        let out = self.exec(
            id,
            &[
                "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global",
            ],
        );
        assert!(out.status.success(), "ip -6 addr in {id}: {}", text(&out));
        let shown = String::from_utf8_lossy(&out.stdout).into_owned();
        shown
            .split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no global IPv6 address on {id}'s eth0: {shown}"))
    }

    /// Container `id`'s IPv4 address on eth0, as busybox `ip` shows it inside.
    fn address(&mut self, id: &str) -> String {
        let out = self.exec(id, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
        assert!(out.status.success(), "ip addr in {id}: {}", text(&out));
        let shown = String::from_utf8_lossy(&out.stdout).into_owned();
        shown
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .unwrap_or_else(|| panic!("no IPv4 address on {id}'s eth0: {shown}"))
            .to_string()
    }

    /// Stop everything (see [`Containerd::teardown`]), then insist nothing of it is left.
    fn stop(mut self) {
        self.teardown();
        let left = processes_in_mount_ns(self.mnt_ns);
        assert!(left.is_empty(), "processes left: {left:?}");
        let cgroups = cgroup_dirs(&self.cgroup);
        assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
        let dir = self.dir.path().to_string_lossy().into_owned();
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        assert!(!mounts.contains(&dir), "mounts left: {mounts}");
    }

    /// Kill the containers (by their cgroups), let attached clients finish, remove what containerd still
    /// holds, stop it, kill whatever is left in the mount namespace (shims), and remove the cgroups.
    fn teardown(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let cgroup_procs = |dirs: &[PathBuf]| -> Vec<u32> {
            let mut all = Vec::new();
            for top in dirs {
                let mut sub = Vec::new();
                subdirs_deepest_first(top, &mut sub);
                for d in sub {
                    let procs = fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
                    all.extend(procs.lines().filter_map(|p| p.parse::<u32>().ok()));
                }
            }
            all
        };
        for pid in cgroup_procs(&cgroup_dirs(&self.cgroup)) {
            signal(pid, "-KILL");
        }
        for (_, client) in &mut self.clients {
            if exit_within(client, Duration::from_secs(10)).is_none() {
                let _ = client.kill();
                let _ = client.wait();
            }
        }
        if self.daemon.is_some() {
            let ids = self.ctr(&["containers", "ls", "--quiet"]);
            for id in String::from_utf8_lossy(&ids.stdout).lines() {
                let _ = self.ctr(&["task", "rm", "--force", id]);
                let _ = self.ctr(&["containers", "rm", id]);
            }
        }
        if let Some(mut daemon) = self.daemon.take() {
            signal(daemon.id(), "-TERM");
            if exit_within(&mut daemon, Duration::from_secs(10)).is_none() {
                let _ = daemon.kill();
                let _ = daemon.wait();
            }
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        // Shims of containers containerd no longer holds, a reaper: all this test's, by their namespace.
        for _ in 0..100 {
            let left = processes_in_mount_ns(self.mnt_ns);
            if left.is_empty() {
                break;
            }
            for (pid, _) in left {
                signal(pid, "-KILL");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // A cgroup goes once its last process has gone, which a killed one takes a moment to do.
        for _ in 0..100 {
            let dirs = cgroup_dirs(&self.cgroup);
            if dirs.is_empty() {
                break;
            }
            for pid in cgroup_procs(&dirs) {
                signal(pid, "-KILL");
            }
            for top in dirs {
                let mut sub = Vec::new();
                subdirs_deepest_first(&top, &mut sub);
                for d in sub {
                    let _ = fs::remove_dir(d);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ip(addr: &str) -> Ipv4Addr {
    addr.split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("not an address: {addr}"))
}

/// nsnet's sandboxes (`nsnet ls --json`) by name.
fn sandboxes(h: &TestHost) -> Vec<Value> {
    let ls: Value = serde_json::from_str(&h.ok(&["ls", "--json"])).expect("ls --json");
    ls.as_array().cloned().unwrap_or_default()
}

/// The greeting container `id` answers on [`PORT`] at `addr`, asked from the test's host namespace.
fn greeting_from_host(h: &TestHost, addr: Ipv4Addr) -> String {
    probe::tcp_hello(&h.host_path(), SocketAddrV4::new(addr, PORT))
        .unwrap_or_else(|e| panic!("host -> {addr}:{PORT}: {e}"))
}

/// The host veths in `h`'s host namespace.
fn veths(h: &TestHost) -> Vec<String> {
    h.link_names()
        .into_iter()
        .filter(|l| l.starts_with("veth"))
        .collect()
}

/// The check for a static busybox tells Debian's dynamically linked programs apart.
#[test]
fn a_dynamic_program_is_not_static() {
    assert!(!is_static_elf(&fs::read("/bin/ls").expect("read /bin/ls")));
    assert!(!is_static_elf(b"#!/bin/sh\n"));
}

#[test]
fn containerd_runs_containers_on_nsnet_cni() {
    require_tools();
    let before = machine();
    let h = TestHost::new("ctrd");
    let empty = h.snapshot();
    let mut c = Containerd::start(&h, &conflist(&h, "ctrd", "ctrdbr0", "10.66.20.0/24"));

    c.run_attached("a", &greeter("a"));
    c.run_attached("b", &greeter("b"));
    let (addr_a, addr_b) = (c.address("a"), c.address("b"));
    let (ip_a, ip_b) = (ip(&addr_a), ip(&addr_b));
    assert_ne!(ip_a, ip_b);
    for addr in [&addr_a, &addr_b] {
        assert!(
            addr.starts_with("10.66.20.") && addr.ends_with("/24"),
            "{addr}"
        );
    }

    // nsnet's view: a CNI sandbox per container, named NAMESPACE-ID, with the address the container has.
    let listed = sandboxes(&h);
    for (id, addr) in [("a", &addr_a), ("b", &addr_b)] {
        let name = format!("{CTR_NS}-{id}");
        let sb = listed
            .iter()
            .find(|s| s["name"] == name.as_str())
            .unwrap_or_else(|| panic!("nsnet ls lists no {name}: {listed:?}"));
        assert_eq!(sb["cni"], true, "{sb}");
        assert_eq!(sb["endpoints"][0]["address"], addr.as_str(), "{sb}");
        assert_eq!(sb["endpoints"][0]["interface"], "eth0", "{sb}");
    }
    let veth_a = h.inspect(&format!("{CTR_NS}-a"))["endpoints"][0]["host_interface"]
        .as_str()
        .expect("a host veth")
        .to_string();
    assert!(h.link_names().contains(&veth_a));

    // Container to container: ICMP and TCP, with busybox inside containerd's containers.
    let ping = c.exec("a", &["ping", "-c", "1", "-W", "3", &ip_b.to_string()]);
    assert!(ping.status.success(), "a pings b: {}", text(&ping));
    let tcp = c.greeting("a", &ip_b.to_string());
    assert_eq!(tcp, "hello-from-b", "a -> b over TCP");
    // The host namespace reaches both.
    assert!(
        probe::ping(&h.host_path(), ip_a).expect("ping"),
        "host -> a"
    );
    assert_eq!(greeting_from_host(&h, ip_a), "hello-from-a");
    assert_eq!(greeting_from_host(&h, ip_b), "hello-from-b");

    // Removal: ctr DELs, and nsnet forgets the container; its veth goes (retired, then reaped).
    c.remove_attached("a");
    let names: Vec<Value> = sandboxes(&h).iter().map(|s| s["name"].clone()).collect();
    assert_eq!(names, vec![json!(format!("{CTR_NS}-b"))]);
    h.settle();
    assert!(!h.link_names().contains(&veth_a), "{veth_a} left behind");
    assert_eq!(
        greeting_from_host(&h, ip_b),
        "hello-from-b",
        "b after a went"
    );

    // A third container on the same network, after a removal: an address, traffic both ways.
    c.run_attached("c", &greeter("c"));
    let ip_c = ip(&c.address("c"));
    assert!(ip_c != ip_b, "c got b's address");
    let tcp = c.greeting("c", &ip_b.to_string());
    assert_eq!(tcp, "hello-from-b", "c -> b over TCP");
    let tcp = c.greeting("b", &ip_c.to_string());
    assert_eq!(tcp, "hello-from-c", "b -> c over TCP");
    assert_eq!(greeting_from_host(&h, ip_c), "hello-from-c");

    c.remove_attached("b");
    c.remove_attached("c");
    assert!(sandboxes(&h).is_empty(), "{:?}", sandboxes(&h));
    h.settle();
    assert!(veths(&h).is_empty(), "veths left: {:?}", veths(&h));
    // The network CNI ADD made stays for the next container; removing it leaves the host as it was.
    h.ok(&["network", "rm", "ctrd"]);
    let after = h.snapshot();
    assert!(after == empty, "{}", after.diff(&empty));
    c.stop();
    assert_eq!(machine(), before, "the machine itself changed");
}

/// A dual-stack conflist (issue #19, behind its gate): containers get both addresses and talk over IPv6.
#[test]
fn containerd_runs_dual_stack_containers_on_nsnet_cni() {
    require_tools();
    let before = machine();
    let h = TestHost::with_ipv6("ctrd6");
    // nsnet turns IPv6 forwarding on and never off (as IPv4's): on beforehand, in the before picture.
    h.in_host(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    let empty = h.snapshot();
    let mut list = conflist(&h, "ctrd6", "ctrdbr6", "10.66.21.0/24");
    list["plugins"][0]["ipam"] =
        json!({"ranges": [[{"subnet": "10.66.21.0/24"}], [{"subnet": "fd66:21::/64"}]]});
    let mut c = Containerd::start(&h, &list);

    c.run_attached("a", &greeter("a"));
    c.run_attached("b", &greeter("b"));
    let (a6, b6) = (c.address6("a"), c.address6("b"));
    assert!(
        ip(&c.address("a")).octets()[..3] == [10, 66, 21],
        "a's IPv4 address"
    );
    for (id, addr) in [("a", a6), ("b", b6)] {
        assert!(addr.segments()[..2] == [0xfd66, 0x21], "{id}: {addr}");
        let sb = h.inspect(&format!("{CTR_NS}-{id}"));
        assert_eq!(
            sb["endpoints"][0]["ipv6"]["address"],
            format!("{addr}/64"),
            "{sb}"
        );
    }
    // Container to container over IPv6: ICMPv6 and TCP, with busybox inside containerd's containers.
    let ping = c.exec("a", &["ping", "-6", "-c", "1", "-W", "3", &b6.to_string()]);
    assert!(
        ping.status.success(),
        "a pings b over IPv6: {}",
        text(&ping)
    );
    let tcp = c.greeting("a", &b6.to_string());
    assert_eq!(tcp, "hello-from-b", "a -> b over TCP/IPv6");
    // The host reaches both through the bridge's IPv6 gateway.
    let hello = probe::tcp_hello(&h.host_path(), SocketAddr::from((a6, PORT)))
        .unwrap_or_else(|e| panic!("host -> [{a6}]:{PORT}: {e}"));
    assert_eq!(hello, "hello-from-a");

    c.remove_attached("a");
    c.remove_attached("b");
    assert!(sandboxes(&h).is_empty(), "{:?}", sandboxes(&h));
    h.settle();
    assert!(veths(&h).is_empty(), "veths left: {:?}", veths(&h));
    h.ok(&["network", "rm", "ctrd6"]);
    let after = h.snapshot();
    assert!(after == empty, "{}", after.diff(&empty));
    c.stop();
    assert_eq!(machine(), before, "the machine itself changed");
}

/// An IPv6-only conflist (issue #19's C14, behind its gate: only an IPv6 range): containers get an IPv6
/// address and no IPv4 at all (neither inside nor in nsnet's record), talk to each other over ICMPv6 and TCP,
/// and the host reaches them through the bridge's IPv6 gateway; everything goes with the containers and the
/// network.
#[test]
fn containerd_runs_ipv6_only_containers_on_nsnet_cni() {
    require_tools();
    let before = machine();
    let h = TestHost::with_ipv6("ctrd6o");
    h.in_host(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    let empty = h.snapshot();
    let mut list = conflist(&h, "ctrd6o", "ctrdbr6o", "fd66:22::/64");
    list["plugins"][0]["ipam"] = json!({"ranges": [[{"subnet": "fd66:22::/64"}]]});
    let mut c = Containerd::start(&h, &list);

    c.run_attached("a", &greeter("a"));
    c.run_attached("b", &greeter("b"));
    let (a6, b6) = (c.address6("a"), c.address6("b"));
    assert_ne!(a6, b6);
    for (id, addr) in [("a", a6), ("b", b6)] {
        assert!(addr.segments()[..2] == [0xfd66, 0x22], "{id}: {addr}");
        let sb = h.inspect(&format!("{CTR_NS}-{id}"));
        assert_eq!(sb["cni"], true, "{sb}");
        assert_eq!(
            sb["endpoints"][0]["ipv6"]["address"],
            format!("{addr}/64"),
            "{sb}"
        );
        assert!(sb["endpoints"][0].get("address").is_none(), "{sb}");
        let v4 = c.exec(id, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
        assert!(
            String::from_utf8_lossy(&v4.stdout).trim().is_empty(),
            "{id} has IPv4: {}",
            text(&v4)
        );
    }
    let net: Value = serde_json::from_str(&h.ok(&["network", "inspect", "ctrd6o", "--json"]))
        .expect("network inspect --json");
    assert!(net.get("subnet").is_none(), "{net}");
    let ping = c.exec("a", &["ping", "-6", "-c", "1", "-W", "3", &b6.to_string()]);
    assert!(ping.status.success(), "a pings b: {}", text(&ping));
    assert_eq!(c.greeting("a", &b6.to_string()), "hello-from-b", "a -> b");
    assert_eq!(c.greeting("b", &a6.to_string()), "hello-from-a", "b -> a");
    for (id, addr) in [("a", a6), ("b", b6)] {
        let hello = probe::tcp_hello(&h.host_path(), SocketAddr::from((addr, PORT)))
            .unwrap_or_else(|e| panic!("host -> [{addr}]:{PORT}: {e}"));
        assert_eq!(hello, format!("hello-from-{id}"));
    }

    c.remove_attached("a");
    c.remove_attached("b");
    assert!(sandboxes(&h).is_empty(), "{:?}", sandboxes(&h));
    h.settle();
    assert!(veths(&h).is_empty(), "veths left: {:?}", veths(&h));
    h.ok(&["network", "rm", "ctrd6o"]);
    let after = h.snapshot();
    assert!(after == empty, "{}", after.diff(&empty));
    c.stop();
    assert_eq!(machine(), before, "the machine itself changed");
}

#[test]
fn containerd_killed_and_restarted_leaks_nothing() {
    require_tools();
    let before = machine();
    let h = TestHost::new("ctrdkill");
    let empty = h.snapshot();
    let mut c = Containerd::start(&h, &conflist(&h, "ctrdk", "ctrdbr1", "10.66.21.0/24"));

    // One detached container (no client to lose) and one attached (its client talks to containerd until
    // the task exits).
    let pid_k = c.run_detached("k", &greeter("k"));
    let pid_w = c.run_attached("w", &greeter("w"));
    let (ip_k, ip_w) = (ip(&c.address("k")), ip(&c.address("w")));
    assert_eq!(greeting_from_host(&h, ip_k), "hello-from-k");
    assert_eq!(greeting_from_host(&h, ip_w), "hello-from-w");
    let (k, w) = (format!("{CTR_NS}-k"), format!("{CTR_NS}-w"));
    let host_veth = |sb: &str| {
        h.inspect(sb)["endpoints"][0]["host_interface"]
            .as_str()
            .expect("a host veth")
            .to_string()
    };
    let (veth_k, veth_w) = (host_veth(&k), host_veth(&w));

    // containerd dies; the shims keep the containers, and nsnet's wiring needs neither.
    c.kill_daemon();
    assert!(common::process(pid_k).is_some(), "k died with containerd");
    assert!(common::process(pid_w).is_some(), "w died with containerd");
    assert_eq!(
        greeting_from_host(&h, ip_k),
        "hello-from-k",
        "with containerd dead"
    );
    let ls = h.ok(&["ls"]);
    assert!(
        ls.lines().any(|l| l.starts_with(&k) && l.ends_with("up")),
        "{ls}"
    );
    // w's client lost its daemon and ran DEL on its way out (ctr's doing): w runs on without a network,
    // and nsnet let go of all of it.
    let (status, log) = c.client_exit("w");
    assert!(!status.success(), "ctr run w: {log}");
    assert!(
        sandboxes(&h).iter().all(|s| s["name"] != w.as_str()),
        "{ls}"
    );
    h.settle();
    assert!(!h.link_names().contains(&veth_w), "{veth_w} left behind");
    assert!(common::process(pid_w).is_some(), "w died with its client");

    // Restarted, containerd adopts both running tasks again.
    c.start_daemon();
    assert_eq!(c.task("k"), Some((pid_k, "RUNNING".to_string())));
    assert_eq!(c.task("w"), Some((pid_w, "RUNNING".to_string())));
    assert_eq!(ip(&c.address("k")), ip_k);
    assert_eq!(
        greeting_from_host(&h, ip_k),
        "hello-from-k",
        "after the restart"
    );
    let links = c.exec("w", &["ip", "-o", "link"]);
    assert!(
        !text(&links).contains("eth0"),
        "w kept eth0: {}",
        text(&links)
    );

    c.remove_unattended("w");
    c.remove_unattended("k");
    // Nobody DELs k (ctr never does for a detached container): the kernel took its veth with its
    // namespace, and nsnet keeps its address until `nsnet gc` sees the namespace gone.
    h.wait_veths_gone(&k);
    assert!(!h.link_names().contains(&veth_k));
    let ls = h.ok(&["ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with(&k) && l.ends_with("namespace gone")),
        "{ls}"
    );
    let gc = h.ok(&["gc"]);
    assert!(gc.contains(&format!("released sandbox '{k}'")), "{gc}");
    assert!(sandboxes(&h).is_empty(), "{:?}", sandboxes(&h));
    h.settle();
    assert!(veths(&h).is_empty(), "veths left: {:?}", veths(&h));
    h.ok(&["network", "rm", "ctrdk"]);
    let after = h.snapshot();
    assert!(after == empty, "{}", after.diff(&empty));
    c.stop();
    assert_eq!(machine(), before, "the machine itself changed");
}
