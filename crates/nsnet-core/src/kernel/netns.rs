//! Network namespaces: named ones under `/run/netns` (as `ip netns` keeps them) and any other nsfs path.
//!
//! This is the one door to other namespaces. `setns` only runs here: for the span of one closure on the
//! calling thread, which is always put back in its own namespace before the closure's result is returned (or
//! its panic resumed), and in a forked child just before `exec`. No other code of nsnet changes namespace.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use super::{KernelError, Netlink};

/// Where named namespaces are mounted, shared with iproute2.
pub const NETNS_DIR: &str = "/run/netns";

/// The mount path of a named namespace.
pub fn named_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Identity of a namespace (device and inode of its nsfs file): two paths name the same namespace exactly
/// when these agree.
pub fn identity(path: &Path) -> Result<(u64, u64), KernelError> {
    let md =
        fs::metadata(path).map_err(|e| KernelError::io(format!("stat {}", path.display()), e))?;
    Ok((md.dev(), md.ino()))
}

/// Open a namespace file, checking that it really is a network namespace.
pub fn open(path: &Path) -> Result<OwnedFd, KernelError> {
    let file =
        File::open(path).map_err(|e| KernelError::io(format!("open {}", path.display()), e))?;
    let fd = OwnedFd::from(file);
    // SAFETY: NS_GET_NSTYPE only reads the fd's namespace type; the fd is valid for the call.
    let kind = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&fd), NS_GET_NSTYPE) };
    if kind != libc::CLONE_NEWNET {
        return Err(KernelError::io(
            format!("{} is not a network namespace", path.display()),
            io::Error::from_raw_os_error(libc::EINVAL),
        ));
    }
    Ok(fd)
}

/// ioctl(NS_GET_NSTYPE) = _IO(0xb7, 0x3).
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Run `f` on this thread, inside the namespace `fd`, then put the thread back in the namespace it was in.
/// Whatever `f` opens there (a netlink socket, a listening socket) stays bound to that namespace.
///
/// No thread is spawned: on a busy machine, handing work to a new thread and waiting for it cost a scheduling
/// delay (up to milliseconds) on every command that touches a sandbox. If `f` panics, the thread is put back
/// and the panic becomes an error ([`KernelError::Internal`]). If the thread cannot be put back (the kernel refusing `setns` into a namespace
/// this thread was just in, through a descriptor held open), the process aborts rather than go on working in
/// the wrong namespace.
pub fn run_in<T, F>(fd: &OwnedFd, f: F) -> Result<T, KernelError>
where
    F: FnOnce() -> T,
{
    let home = File::open("/proc/thread-self/ns/net")
        .map_err(|e| KernelError::io("open this thread's network namespace", e))?;
    setns(fd.as_fd(), CloneFlags::CLONE_NEWNET)
        .map_err(|e| KernelError::io("enter network namespace", e.into()))?;
    let _back = Return(home);
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|payload| panicked(payload.as_ref()))
}

/// Puts the thread back in its namespace when dropped (also while a panic unwinds).
struct Return(File);

impl Drop for Return {
    fn drop(&mut self) {
        if setns(self.0.as_fd(), CloneFlags::CLONE_NEWNET).is_err() {
            eprintln!("nsnet: cannot return to this process's network namespace; stopping");
            std::process::abort();
        }
    }
}

/// Code working in another namespace panicked: a bug of nsnet's, not a reply the kernel sent (so not
/// [`KernelError::Decode`]); it becomes [`crate::Error::Internal`], with the panic's own message.
fn panicked(payload: &(dyn std::any::Any + Send)) -> KernelError {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    KernelError::Internal(format!(
        "code working in another network namespace panicked ({what})"
    ))
}

/// A netlink socket inside the namespace at `path`.
pub fn netlink_in(path: &Path) -> Result<Netlink, KernelError> {
    let fd = open(path)?;
    run_in(&fd, Netlink::open)?
}

/// Create the named namespace `/run/netns/NAME`, with `lo` up, and hand back a netlink socket inside it.
/// Fails if the name is taken. Undone by [`delete`].
pub fn create(name: &str, tag: Option<&str>) -> Result<Netlink, KernelError> {
    ensure_dir()?;
    let path = named_path(name);
    // create_new: of two racing creators exactly one wins the mount point.
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&path)
        .map_err(|e| KernelError::io(format!("create {}", path.display()), e))?;
    let made = (|| -> Result<Netlink, KernelError> {
        let home = File::open("/proc/thread-self/ns/net")
            .map_err(|e| KernelError::io("open this thread's network namespace", e))?;
        unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| KernelError::io("unshare network namespace", e.into()))?;
        let _back = Return(home);
        mount(
            Some("/proc/thread-self/ns/net"),
            &path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| KernelError::io(format!("bind mount {}", path.display()), e.into()))?;
        let mut nl = Netlink::open()?;
        nl.set_up("lo")?;
        if let Some(tag) = tag {
            nl.set_alias("lo", tag)?;
        }
        Ok(nl)
    })();
    if made.is_err() {
        let _ = delete(name);
    }
    made
}

/// Whether any process is in the namespace at `path` (compared by nsfs inode across `/proc/*/ns/net`). A
/// namespace that cannot be identified counts as in use.
pub fn in_use(path: &Path) -> bool {
    let Ok(target) = identity(path) else {
        return true;
    };
    let Ok(procs) = fs::read_dir("/proc") else {
        return true;
    };
    procs
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .any(|e| fs::metadata(e.path().join("ns/net")).is_ok_and(|m| (m.dev(), m.ino()) == target))
}

/// The names under /run/netns.
pub fn named() -> Result<Vec<String>, KernelError> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(KernelError::io(format!("list {NETNS_DIR}"), e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// Whether the namespace at `path` carries `tag` as its `lo`'s alias (see [`create`]). A path that is not a
/// namespace, or cannot be entered, carries no tag.
pub fn has_tag(path: &Path, tag: &str) -> bool {
    netlink_in(path)
        .and_then(|mut nl| nl.link("lo"))
        .ok()
        .flatten()
        .and_then(|lo| lo.alias)
        .is_some_and(|a| a == tag)
}

/// Remove the named namespace: unmount and unlink its file. The kernel frees the namespace (and the devices in
/// it) once nothing else holds it. Returns false when it did not exist.
pub fn delete(name: &str) -> Result<bool, KernelError> {
    let path = named_path(name);
    if !path.exists() {
        return Ok(false);
    }
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => {
            return Err(KernelError::io(
                format!("unmount {}", path.display()),
                e.into(),
            ))
        }
    }
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(KernelError::io(format!("remove {}", path.display()), e)),
    }
}

/// Where `ip netns exec NAME` finds files to show as the namespace's own /etc ones.
pub const ETC_NETNS: &str = "/etc/netns";

/// `/etc/netns/NAME`.
pub fn etc_dir(name: &str) -> PathBuf {
    Path::new(ETC_NETNS).join(name)
}

/// Where a resolv.conf is written before it is renamed into place.
const RESOLV_TMP: &str = ".resolv.conf.nsnet";

/// The first line of every resolv.conf nsnet writes: how it knows its own.
const RESOLV_MARK: &str = "# written by nsnet";

/// Write `/etc/netns/NAME/resolv.conf` (atomically), unless a file that is not nsnet's is there.
pub fn write_resolv_conf(name: &str, text: &str) -> Result<(), KernelError> {
    let dir = etc_dir(name);
    let path = dir.join("resolv.conf");
    if let Ok(old) = fs::read_to_string(&path) {
        if !old.starts_with(RESOLV_MARK) {
            return Ok(());
        }
    }
    fs::create_dir_all(&dir)
        .map_err(|e| KernelError::io(format!("create {}", dir.display()), e))?;
    let tmp = dir.join(RESOLV_TMP);
    fs::write(&tmp, text)
        .and_then(|()| fs::rename(&tmp, &path))
        .map_err(|e| KernelError::io(format!("write {}", path.display()), e))
}

/// The names under /etc/netns whose resolv.conf nsnet wrote for the state dir tagged `tag`, with the text.
pub fn tagged_resolv_confs(tag: &str) -> Vec<(String, String)> {
    let Ok(dir) = fs::read_dir(ETC_NETNS) else {
        return vec![];
    };
    let mark = format!("{RESOLV_MARK} ({tag})");
    dir.filter_map(|e| e.ok())
        .filter_map(|e| {
            let text = fs::read_to_string(e.path().join("resolv.conf")).ok()?;
            text.starts_with(&mark)
                .then(|| (e.file_name().to_string_lossy().into_owned(), text))
        })
        .collect()
}

/// Remove nsnet's `/etc/netns/NAME/resolv.conf`, and the directory (and `/etc/netns`) when nothing else is
/// in it. Someone else's file stays; one already gone is fine.
pub fn remove_resolv_conf(name: &str) -> Result<(), KernelError> {
    let dir = etc_dir(name);
    let path = dir.join("resolv.conf");
    match fs::read_to_string(&path) {
        Ok(text) if text.starts_with(RESOLV_MARK) => {
            fs::remove_file(&path)
                .map_err(|e| KernelError::io(format!("remove {}", path.display()), e))?;
        }
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(KernelError::io(format!("read {}", path.display()), e)),
    }
    // A write a kill cut short leaves its temp file; then only empty directories go (remove_dir refuses
    // others).
    let _ = fs::remove_file(dir.join(RESOLV_TMP));
    let _ = fs::remove_dir(&dir);
    let _ = fs::remove_dir(ETC_NETNS);
    Ok(())
}

/// Make `cmd` run inside the namespace `fd` (network namespace only, like `nsenter --net`).
pub fn command_in(cmd: &mut Command, fd: OwnedFd) {
    // SAFETY: the closure runs in the forked child before exec; it only calls setns(2), which is
    // async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            Ok(())
        });
    }
}

/// Make `cmd` see `file` as /etc/resolv.conf, in a mount namespace of its own (so nothing else sees it), as
/// `ip netns exec` shows /etc/netns/NAME's files.
pub fn resolv_conf_in(cmd: &mut Command, file: &Path) -> Result<(), KernelError> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|e| KernelError::io(format!("path {}", p.display()), io::Error::other(e)))
    };
    // Made before the fork: the child may not allocate.
    let (source, target, root) = (
        c(file)?,
        c(Path::new("/etc/resolv.conf"))?,
        c(Path::new("/"))?,
    );
    fn mount(
        src: Option<&std::ffi::CStr>,
        dst: &std::ffi::CStr,
        flags: libc::c_ulong,
    ) -> io::Result<()> {
        let src = src.map_or(std::ptr::null(), std::ffi::CStr::as_ptr);
        // SAFETY: `src` is null or a C string, `dst` a C string, both alive for the call; the rest is null.
        let r =
            unsafe { libc::mount(src, dst.as_ptr(), std::ptr::null(), flags, std::ptr::null()) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
    let child = move || -> io::Result<()> {
        // SAFETY: unshare(2) takes no pointer; it gives this process a mount namespace of its own.
        if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // Nothing mounted here from now on reaches the host's mount namespace.
        mount(None, &root, libc::MS_REC | libc::MS_SLAVE)?;
        mount(Some(&source), &target, libc::MS_BIND)
    };
    // SAFETY: the closure runs in the forked child before exec; it only calls unshare(2) and mount(2), which
    // are async-signal-safe, with C strings made before the fork, and allocates nothing.
    unsafe {
        cmd.pre_exec(child);
    }
    Ok(())
}

/// `/run/netns` exists and is a shared mount, as iproute2 sets it up, so namespaces mounted here show in every
/// mount namespace that shares it.
fn ensure_dir() -> Result<(), KernelError> {
    let dir = Path::new(NETNS_DIR);
    fs::create_dir_all(dir).map_err(|e| KernelError::io(format!("create {NETNS_DIR}"), e))?;
    // Only /run/netns itself: mounts made under a shared mount are shared already, and MS_REC would walk
    // every namespace mounted there (a cost that grows with each sandbox).
    let shared = MsFlags::MS_SHARED;
    match mount(None::<&str>, dir, Some("none"), shared, None::<&str>) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) => {
            // Not a mount point yet: bind it onto itself, then share it.
            mount(
                Some(dir),
                dir,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .and_then(|_| mount(None::<&str>, dir, Some("none"), shared, None::<&str>))
            .map_err(|e| KernelError::io(format!("make {NETNS_DIR} a shared mount"), e.into()))
        }
        Err(e) => Err(KernelError::io(
            format!("make {NETNS_DIR} a shared mount"),
            e.into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic inside another namespace is a bug of nsnet's: it must reach the user as an internal error that
    /// asks for a bug report, not as a kernel reply that could not be decoded, nor as bad input.
    #[test]
    fn a_panic_in_another_namespace_is_an_internal_error() {
        let fd = open(Path::new("/proc/self/ns/net")).expect("own namespace");
        let err = run_in(&fd, || -> u8 { panic!("boom") }).expect_err("the closure panicked");
        let err = crate::Error::from(err);
        assert!(matches!(err, crate::Error::Internal(_)), "{err:?}");
        let line = err.to_string();
        assert!(
            line.contains("panicked (boom)") && line.contains("this is a bug"),
            "{line}"
        );
    }

    /// `run_in` works on the calling thread: inside, the thread is in the other namespace (and a socket opened
    /// there stays there); after, returning or panicking, it is back in its own.
    #[test]
    fn run_in_puts_the_thread_back() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to make a namespace");
            return;
        }
        let here = Path::new("/proc/thread-self/ns/net");
        // A namespace of our own, made on a thread of its own and kept by the descriptor.
        let other = std::thread::spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare");
            open(Path::new("/proc/thread-self/ns/net")).expect("open the new namespace")
        })
        .join()
        .expect("thread");
        let home = identity(here).expect("home");
        let other_id = {
            let md = fs::metadata(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&other)
            ))
            .expect("stat");
            (md.dev(), md.ino())
        };
        assert_ne!(home, other_id);
        let inside = run_in(&other, || identity(here))
            .expect("run_in")
            .expect("identity");
        assert_eq!(inside, other_id, "the closure ran in the other namespace");
        assert_eq!(identity(here).expect("after"), home, "back home after");
        let _ = run_in(&other, || panic!("boom"));
        assert_eq!(
            identity(here).expect("after a panic"),
            home,
            "back home after a panic"
        );
    }
}
