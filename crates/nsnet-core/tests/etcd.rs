//! The etcd client against a real etcd (Debian 12's 3.4), each test with an etcd of its own in a throwaway
//! network namespace (`nsetcd-<pid>-<n>`), so nothing touches the machine's network. The client's calls run on
//! threads inside that namespace (`netns::run_in`); a watch made there keeps reading from its socket anywhere.
//! Needs root (skipped without it) and the etcd binary (which scripts/setup installs).

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use nsnet_core::etcd::{Change, Etcd, EtcdError, Watch, WatchEvent};
use nsnet_core::netns;

const URL: &str = "http://127.0.0.1:23790";

/// An etcd in a namespace of its own; dropping it kills etcd and deletes the namespace and the data dir.
struct EtcdNs {
    name: String,
    ns: Option<OwnedFd>,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run a command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl EtcdNs {
    /// None (after saying why) when the test cannot run here.
    fn start() -> Option<EtcdNs> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return None;
        }
        // Installed by scripts/setup: a missing etcd is a broken set-up, not a reason to pass.
        assert!(
            Path::new("/usr/bin/etcd").exists(),
            "etcd is not installed: run ./scripts/setup --packages (Debian 12: apt-get install etcd-server)"
        );
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "nsetcd-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]));
        // From here on Drop cleans up, whatever fails next.
        let mut env = EtcdNs {
            ns: None,
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
            name,
        };
        let path = netns::named_path(&env.name);
        run(Command::new("nsenter")
            .arg(format!("--net={}", path.display()))
            .args(["ip", "link", "set", "lo", "up"]));
        env.ns = Some(netns::open(&path).expect("open the namespace"));
        env.start_etcd();
        Some(env)
    }

    fn start_etcd(&mut self) {
        let log = File::create(self.dir.path().join("etcd.log")).expect("log file");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns::named_path(&self.name).display()))
            .arg("etcd")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--name", "default"])
            .args(["--listen-client-urls", URL, "--advertise-client-urls", URL])
            .args(["--listen-peer-urls", "http://127.0.0.1:23800"])
            .args(["--initial-advertise-peer-urls", "http://127.0.0.1:23800"])
            .args(["--initial-cluster", "default=http://127.0.0.1:23800"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        // Ready once it answers a read.
        let etcd = self.client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.run(|| etcd.get("ready")).is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("etcd exited ({status}): {}", self.log());
            }
            assert!(Instant::now() < deadline, "etcd not ready: {}", self.log());
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    fn client(&self) -> Etcd {
        Etcd::new(&[URL]).expect("client")
    }

    /// `f` on a thread inside the namespace (and so are the threads it starts).
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        netns::run_in(self.ns.as_ref().expect("namespace"), f).expect("run in the namespace")
    }

    /// Stop etcd the polite way (SIGTERM): it says goodbye to its clients, then exits.
    fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = i32::try_from(child.id()).expect("pid");
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM);
            let _ = child.wait();
        }
    }

    /// Kill etcd (SIGKILL: no goodbye to its clients) and reap it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdNs {
    fn drop(&mut self) {
        self.kill();
        self.ns = None;
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The next watch response, or the test fails after `limit` (the watch is stopped, so nothing hangs).
fn next_within(watch: &mut Watch, limit: Duration) -> WatchEvent {
    let stopper = watch.stopper();
    let (done, wait) = mpsc::channel::<()>();
    let guard = thread::spawn(move || {
        if wait.recv_timeout(limit).is_err() {
            stopper.stop();
        }
    });
    let got = watch.next();
    let _ = done.send(());
    guard.join().expect("watchdog");
    got.unwrap_or_else(|e| panic!("no watch response within {limit:?}: {e}"))
}

/// Changes from the watch until `count` have come (progress notifications skipped).
fn changes(watch: &mut Watch, count: usize) -> Vec<Change> {
    let mut seen = Vec::new();
    while seen.len() < count {
        match next_within(watch, Duration::from_secs(10)) {
            WatchEvent::Changes { events, .. } => seen.extend(events),
            WatchEvent::Progress { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    seen
}

fn key_of(change: &Change) -> (&str, &str) {
    match change {
        Change::Put(kv) => ("put", &kv.key),
        Change::Delete { key, .. } => ("delete", key),
    }
}

#[test]
fn put_get_and_get_prefix_with_its_revision() {
    let Some(env) = EtcdNs::start() else { return };
    let etcd = env.client();
    env.run(|| {
        let r1 = etcd.put("a/2", b"two", None).expect("put");
        let r2 = etcd.put("a/1", &[0, 0xff, b'\n'], None).expect("put");
        etcd.put("a0", b"outside", None).expect("put");
        let r3 = etcd.put("a/", b"the prefix itself", None).expect("put");
        assert!(r1 < r2 && r2 < r3, "{r1} {r2} {r3}");

        let kv = etcd.get("a/1").expect("get").expect("a/1 is there");
        assert_eq!(kv.value, [0, 0xff, b'\n']);
        assert_eq!((kv.create_revision, kv.mod_revision, kv.lease), (r2, r2, 0));
        assert_eq!(etcd.get("a/3").expect("get"), None);
        assert_eq!(etcd.get("a").expect("get"), None);

        let r4 = etcd.put("a/1", b"one", None).expect("put again");
        let kv = etcd.get("a/1").expect("get").expect("a/1");
        assert_eq!((kv.create_revision, kv.mod_revision), (r2, r4));

        let (kvs, revision) = etcd.get_prefix("a/").expect("list");
        let keys: Vec<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["a/", "a/1", "a/2"]);
        assert_eq!(revision, r4);
        let (all, _) = etcd.get_prefix("").expect("list everything");
        assert_eq!(all.len(), 4);

        assert!(etcd.delete("a/2").expect("delete"));
        assert!(!etcd.delete("a/2").expect("delete again"));
        let (_, revision) = etcd.get_prefix("a/").expect("list");
        assert_eq!(revision, r4 + 1, "a delete is a revision too");
    });
}

#[test]
fn of_two_threads_creating_the_same_key_exactly_one_wins() {
    let Some(env) = EtcdNs::start() else { return };
    let etcd = env.client();
    env.run(|| {
        for round in 0..20 {
            let key = format!("race/{round}");
            let start = Barrier::new(2);
            let wins: Vec<bool> = thread::scope(|s| {
                let racers: Vec<_> = ["left", "right"]
                    .into_iter()
                    .map(|who| {
                        let (etcd, key, start) = (&etcd, &key, &start);
                        s.spawn(move || {
                            start.wait();
                            etcd.create(key, who.as_bytes(), None).expect("create")
                        })
                    })
                    .collect();
                racers
                    .into_iter()
                    .map(|r| r.join().expect("racer"))
                    .collect()
            });
            assert_eq!(wins.iter().filter(|w| **w).count(), 1, "{key}: {wins:?}");
            let winner = if wins[0] { "left" } else { "right" };
            let kv = etcd.get(&key).expect("get").expect("created");
            assert_eq!(kv.value, winner.as_bytes());
        }
        assert!(!etcd.create("race/0", b"late", None).expect("create"));
        assert_ne!(etcd.get("race/0").expect("get").expect("kv").value, b"late");
    });
}

#[test]
fn delete_prefix_removes_exactly_the_keys_under_it() {
    let Some(env) = EtcdNs::start() else { return };
    let etcd = env.client();
    env.run(|| {
        for key in ["p/1", "p/2", "p/x/3", "p", "p0", "q/1"] {
            etcd.put(key, b"v", None).expect("put");
        }
        assert_eq!(etcd.delete_prefix("p/").expect("delete prefix"), 3);
        assert_eq!(etcd.delete_prefix("p/").expect("delete prefix again"), 0);
        let (left, _) = etcd.get_prefix("").expect("list");
        let keys: Vec<&str> = left.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["p", "p0", "q/1"]);
    });
}

#[test]
fn a_lease_kept_alive_holds_its_key_and_its_expiry_deletes_it() {
    let Some(env) = EtcdNs::start() else { return };
    let etcd = env.client();
    env.run(|| {
        let lease = etcd.lease_grant(2).expect("grant");
        assert_eq!(lease.ttl, 2);
        let put = etcd.put("l/k", b"v", Some(lease.id)).expect("put");
        assert_eq!(etcd.get("l/k").expect("get").expect("kv").lease, lease.id);
        // Kept alive for twice its TTL: the key stays.
        for _ in 0..8 {
            thread::sleep(Duration::from_millis(500));
            assert_eq!(etcd.lease_keepalive(lease.id).expect("keepalive"), Some(2));
        }
        assert!(etcd.get("l/k").expect("get").is_some());
        // Left to expire: etcd deletes the key, and the watch says so.
        let mut watch = etcd.watch("l/", put + 1).expect("watch");
        let started = Instant::now();
        let seen = changes(&mut watch, 1);
        assert!(
            matches!(&seen[..], [Change::Delete { key, .. }] if key == "l/k"),
            "{seen:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(etcd.lease_keepalive(lease.id).expect("keepalive"), None);
    });
}

#[test]
fn a_revoked_lease_takes_its_keys_and_unknown_leases_are_refused() {
    let Some(env) = EtcdNs::start() else { return };
    let etcd = env.client();
    env.run(|| {
        let lease = etcd.lease_grant(60).expect("grant");
        assert_eq!(lease.ttl, 60);
        etcd.put("r/1", b"v", Some(lease.id)).expect("put");
        assert!(etcd.create("r/2", b"v", Some(lease.id)).expect("create"));
        etcd.lease_revoke(lease.id).expect("revoke");
        assert_eq!(etcd.get_prefix("r/").expect("list").0, []);
        etcd.lease_revoke(lease.id).expect("revoking again is fine");
        assert_eq!(etcd.lease_keepalive(lease.id).expect("keepalive"), None);
        // A put with a lease that is gone: etcd's own error, in one line.
        let e = etcd.put("r/3", b"v", Some(lease.id)).expect_err("put");
        assert!(matches!(e, EtcdError::Http { status: 404, .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "etcd at 127.0.0.1:23790 answered /v3/kv/put with HTTP 404: \
             etcdserver: requested lease not found (gRPC code 5)"
        );
    });
}

#[test]
fn a_watch_sees_puts_and_deletes_in_revision_order() {
    let Some(env) = EtcdNs::start() else { return };
    let etcd = env.client();
    env.run(|| {
        etcd.put("w/before", b"0", None).expect("put");
        let (listed, revision) = etcd.get_prefix("w/").expect("list");
        assert_eq!(listed.len(), 1);
        let mut watch = etcd.watch("w/", revision + 1).expect("watch");
        assert!(matches!(
            next_within(&mut watch, Duration::from_secs(5)),
            WatchEvent::Progress { revision: r } if r == revision
        ));
        let mut revisions = vec![];
        revisions.push(etcd.put("w/a", b"1", None).expect("put"));
        etcd.put("elsewhere", b"x", None).expect("put");
        revisions.push(etcd.put("w/b", b"2", None).expect("put"));
        revisions.push(etcd.put("w/a", b"3", None).expect("put"));
        assert!(etcd.delete("w/before").expect("delete"));
        assert_eq!(etcd.delete_prefix("w/").expect("delete prefix"), 2);
        let seen = changes(&mut watch, 6);
        let kinds: Vec<(&str, &str)> = seen.iter().map(key_of).collect();
        assert_eq!(
            kinds,
            [
                ("put", "w/a"),
                ("put", "w/b"),
                ("put", "w/a"),
                ("delete", "w/before"),
                ("delete", "w/a"),
                ("delete", "w/b"),
            ]
        );
        let Change::Put(third) = &seen[2] else {
            panic!("{seen:?}")
        };
        assert_eq!(third.value, b"3");
        assert_eq!(third.mod_revision, revisions[2]);
        assert_eq!(third.create_revision, revisions[0]);
        let Change::Delete { mod_revision, .. } = &seen[5] else {
            panic!("{seen:?}")
        };
        assert_eq!(
            *mod_revision,
            revisions[2] + 2,
            "one revision for the whole delete_prefix"
        );
    });
}

#[test]
fn a_watch_from_a_compacted_revision_says_so_and_relist_then_watch_recovers() {
    let Some(env) = EtcdNs::start() else { return };
    let etcd = env.client();
    env.run(|| {
        let first = etcd.put("c/1", b"1", None).expect("put");
        let mut last = first;
        for i in 2..6 {
            last = etcd.put(&format!("c/{i}"), b"v", None).expect("put");
        }
        etcd.compact(last - 1).expect("compact");
        etcd.compact(first)
            .expect("compacting below the compacted revision is fine");
        let e = etcd.compact(last + 100).expect_err("compact the future");
        assert!(e.to_string().contains("future revision"), "{e}");

        let mut watch = etcd.watch("c/", first).expect("watch");
        let compacted = loop {
            match next_within(&mut watch, Duration::from_secs(5)) {
                WatchEvent::Progress { .. } => continue,
                other => break other,
            }
        };
        assert_eq!(
            compacted,
            WatchEvent::Compacted {
                compact_revision: last - 1
            }
        );
        let e = watch.next().expect_err("the watch is over");
        assert!(matches!(e, EtcdError::WatchEnded { .. }), "{e}");

        // What the caller does: list, then watch from just after the listing.
        let (kvs, revision) = etcd.get_prefix("c/").expect("relist");
        assert_eq!((kvs.len(), revision), (5, last));
        let mut watch = etcd.watch("c/", revision + 1).expect("watch again");
        let put = etcd.put("c/6", b"6", None).expect("put");
        let seen = changes(&mut watch, 1);
        assert!(
            matches!(&seen[..], [Change::Put(kv)] if kv.key == "c/6" && kv.mod_revision == put)
        );
    });
}

#[test]
fn calls_and_watches_fail_over_from_a_closed_port_to_the_live_endpoint() {
    let Some(env) = EtcdNs::start() else { return };
    let etcd = Etcd::new(&["http://127.0.0.1:1", URL]).expect("client");
    env.run(|| {
        let revision = etcd.put("f/1", b"v", None).expect("put fails over");
        assert_eq!(
            etcd.get("f/1").expect("get").expect("kv").mod_revision,
            revision
        );
        let mut watch = etcd.watch("f/", revision + 1).expect("watch fails over");
        etcd.put("f/2", b"v", None).expect("put");
        assert_eq!(changes(&mut watch, 1).len(), 1);
    });
    // Both named when neither answers.
    let both = Etcd::new(&["http://127.0.0.1:1,http://127.0.0.1:2"]).expect("client");
    let e = env.run(|| both.get("f/1")).expect_err("nothing listens");
    let EtcdError::Unreachable { endpoints, why } = &e else {
        panic!("{e}")
    };
    assert_eq!(endpoints, &["127.0.0.1:1", "127.0.0.1:2"]);
    assert!(
        why.contains("127.0.0.1:1: ") && why.contains("; 127.0.0.1:2: "),
        "{e}"
    );
}

#[test]
fn a_stopped_etcd_is_unreachable_and_a_silent_one_times_out() {
    let Some(mut env) = EtcdNs::start() else {
        return;
    };
    let timeout = Duration::from_secs(1);
    let etcd = env.client().with_timeout(timeout);
    env.run(|| etcd.put("s/1", b"v", None)).expect("put");
    env.kill();
    let started = Instant::now();
    let e = env.run(|| etcd.get("s/1")).expect_err("etcd is down");
    assert!(started.elapsed() < timeout, "{:?}", started.elapsed());
    assert!(matches!(e, EtcdError::Unreachable { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("etcd unreachable: 127.0.0.1:23790: "),
        "{e}"
    );

    // Something that accepts the connection and never answers: an error after the timeout, not a hang.
    let e = env.run(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:23790").expect("listen");
        let started = Instant::now();
        let e = etcd.get("s/1").expect_err("no answer");
        let waited = started.elapsed();
        drop(listener);
        assert!(waited >= timeout && waited < timeout * 3, "{waited:?}");
        e
    });
    assert!(matches!(e, EtcdError::Connection { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("etcd at 127.0.0.1:23790: /v3/kv/range: "),
        "{e}"
    );
}

#[test]
fn a_watch_errors_when_etcd_is_killed() {
    let Some(mut env) = EtcdNs::start() else {
        return;
    };
    let etcd = env.client();
    let mut watch = env.run(|| etcd.watch("k/", 0)).expect("watch");
    assert!(matches!(
        next_within(&mut watch, Duration::from_secs(5)),
        WatchEvent::Progress { .. }
    ));
    env.kill();
    let started = Instant::now();
    let e = watch.next().expect_err("etcd is gone");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(e, EtcdError::Connection { .. }), "{e}");
    let again = watch.next().expect_err("still over");
    assert!(matches!(again, EtcdError::WatchEnded { .. }), "{again}");
}

#[test]
fn a_watch_errors_when_etcd_shuts_down() {
    let Some(mut env) = EtcdNs::start() else {
        return;
    };
    let etcd = env.client();
    let mut watch = env.run(|| etcd.watch("k/", 0)).expect("watch");
    assert!(matches!(
        next_within(&mut watch, Duration::from_secs(5)),
        WatchEvent::Progress { .. }
    ));
    env.terminate();
    // Mostly the gateway's error message (seen: HTTP 503 "transport is closing", HTTP 408 "grpc: the client
    // connection is closing"); a connection closed first would do too.
    let e = watch.next().expect_err("etcd is gone");
    assert!(
        matches!(e, EtcdError::Http { .. } | EtcdError::Connection { .. }),
        "{e}"
    );
    let again = watch.next().expect_err("still over");
    assert!(matches!(again, EtcdError::WatchEnded { .. }), "{again}");
}

#[test]
fn a_stopper_ends_a_blocked_next() {
    let Some(env) = EtcdNs::start() else { return };
    let etcd = env.client();
    let mut watch = env.run(|| etcd.watch("quiet/", 0)).expect("watch");
    assert!(matches!(
        next_within(&mut watch, Duration::from_secs(5)),
        WatchEvent::Progress { .. }
    ));
    let stopper = watch.stopper();
    let started = Instant::now();
    let blocked = thread::spawn(move || watch.next());
    thread::sleep(Duration::from_millis(300));
    assert!(
        !blocked.is_finished(),
        "next() should block on a quiet prefix"
    );
    stopper.stop();
    let e = blocked.join().expect("watcher").expect_err("stopped");
    assert!(matches!(e, EtcdError::WatchStopped), "{e}");
    assert!(started.elapsed() < Duration::from_secs(3));
}
