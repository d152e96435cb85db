//! Work a command leaves to one detached child, so that its own exit does not wait for the kernel.
//!
//! Two things a command ends with are slow for reasons of the kernel's, and neither needs the command:
//! - closing an nf_tables socket whose batch deleted elements waits for an RCU grace period (see
//!   `firewall::nft_netlink`): the socket is handed here ([`close_later`]) instead;
//! - deleting the veths a removal retired waits for one too: the reaper does it ([`reap_later`]).
//!
//! A binary that exits right after its command opts in ([`enable`]) and calls [`finish`] last, once everything
//! is printed. `finish` forks once, without `exec` and without waiting for the child: the child waits until
//! the command has closed its own copies of the sockets (a pipe's end of file tells it, right after the
//! fork), starts the reaper, and closes the sockets once nf_tables has finished with them, by which time the
//! command has long exited. A process that has not opted in (a library user, the agent, the tests'
//! in-process calls) keeps the plain way: sockets closed by a short-lived grandchild, the reaper spawned at
//! once.
//!
//! Before forking, `finish` points the command's stdin, stdout and stderr at /dev/null, and the child closes
//! every other descriptor first thing: a runtime reading the command's output until end of file, or the next
//! command waiting for the state lock, must not wait for the child.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use nix::fcntl::OFlag;
use nix::unistd::{fork, pipe2, read, ForkResult};

/// How long after the command the child closes its sockets: several RCU grace periods (tens of
/// milliseconds each on a busy 2-vCPU VM), by which time nf_tables has freed what the command deleted.
const DESTROY_WORK_DONE: std::time::Duration = std::time::Duration::from_millis(250);

/// What the command leaves: `None` until a binary opts in.
static PENDING: Mutex<Option<Pending>> = Mutex::new(None);

#[derive(Default)]
struct Pending {
    sockets: Vec<OwnedFd>,
    /// The program to run as the reaper, and its environment variable (name, value).
    reaper: Option<(PathBuf, OsString, OsString)>,
}

/// Opt in: this process exits right after its command and calls [`finish`] last.
pub fn enable() {
    if let Ok(mut p) = PENDING.lock() {
        p.get_or_insert_with(Pending::default);
    }
}

/// Keep `fd` open until after this process exits, and close it then in the detached child. Gives `fd` back
/// when this process has not opted in.
pub fn close_later(fd: OwnedFd) -> Result<(), OwnedFd> {
    match PENDING.lock() {
        Ok(mut guard) => match guard.as_mut() {
            Some(p) => {
                p.sockets.push(fd);
                Ok(())
            }
            None => Err(fd),
        },
        Err(_) => Err(fd),
    }
}

/// Run `program` with `var=value` in its environment after this process exits, from the detached child.
/// False when this process has not opted in (the caller then starts it itself).
pub(crate) fn reap_later(program: PathBuf, var: &str, value: OsString) -> bool {
    match PENDING.lock() {
        Ok(mut guard) => match guard.as_mut() {
            Some(p) => {
                p.reaper = Some((program, var.into(), value));
                true
            }
            None => false,
        },
        Err(_) => false,
    }
}

/// Hand what is pending to a detached child, and return at once. Call it last: it points stdin, stdout and
/// stderr at /dev/null. Nothing pending, nothing happens.
pub fn finish() {
    let Some(pending) = PENDING.lock().ok().and_then(|mut g| g.take()) else {
        return;
    };
    if pending.sockets.is_empty() && pending.reaper.is_none() {
        return;
    }
    if !single_threaded() {
        // A fork that runs Rust code is only sound with no other thread (one could hold the allocator's lock).
        // Never the case at the end of nsnet's binaries.
        return plainly(pending);
    }
    quiet_stdio();
    let Ok((read_end, write_end)) = pipe2(OFlag::O_CLOEXEC) else {
        return plainly(pending);
    };
    // SAFETY: this process has a single thread (checked above), so the child may run ordinary Rust code: no
    // lock can be held by a thread that does not exist in it. The child never returns into the caller's code:
    // it ends in `_exit`.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            // Its own copy of the write end goes first: the end of file it waits for must not depend on
            // close_range(2), which kernels before 5.9 lack and some seccomp profiles refuse.
            drop(write_end);
            child(pending, read_end)
        }
        Ok(ForkResult::Parent { .. }) => {
            // Not waited for: the child is reaped by whoever adopts it once this process exits.
            drop(pending.sockets);
            drop(read_end);
            drop(write_end);
        }
        Err(_) => plainly(pending),
    }
}

/// Without the child: close the sockets here (waiting for the kernel) and start the reaper the plain way, so
/// that what the command retired is still deleted.
fn plainly(pending: Pending) {
    drop(pending.sockets);
    if let Some((program, var, value)) = pending.reaper {
        let _ = detached(&program, &var, &value).spawn();
    }
}

/// The detached child: nothing of the command's but the sockets and the pipe.
fn child(pending: Pending, read_end: OwnedFd) -> ! {
    let mut keep: Vec<i32> = pending.sockets.iter().map(AsRawFd::as_raw_fd).collect();
    keep.push(read_end.as_raw_fd());
    keep.extend([0, 1, 2]);
    close_all_but(&keep);
    // Its own session, so the command's terminal going away does not take it along, and no signal blocked
    // (`nsnet run` blocks those it passes on, and the mask would survive into the reaper).
    let _ = nix::unistd::setsid();
    let _ = nix::sys::signal::SigSet::empty().thread_set_mask();
    let mut byte = [0u8; 1];
    // Returns at end of file: the command has closed its copies of the sockets (and exited, or is about to).
    while matches!(read(&read_end, &mut byte), Ok(n) if n > 0) {}
    drop(read_end);
    // The reaper at once, as if the command had started it (not waited for: it is reparented when this exits).
    if let Some((program, var, value)) = pending.reaper {
        let _ = reaper(&program, &var, &value).spawn();
    }
    // The last reference to each socket. Closing one flushes nf_tables' pending destroy work while holding its
    // commit mutex, which every other nf_tables transaction on the host needs: closed at once, the next
    // command's batch would wait out the grace period too. The destroy work finishes by itself after one grace
    // period, and a socket closed after that has nothing left to flush.
    if !pending.sockets.is_empty() {
        std::thread::sleep(DESTROY_WORK_DONE);
    }
    drop(pending.sockets);
    // SAFETY: _exit(2) ends this process without running the command's exit handlers or destructors.
    unsafe { libc::_exit(0) }
}

/// The reaper's command line: the program with only its variable added, and no terminal.
fn reaper(program: &PathBuf, var: &OsString, value: &OsString) -> Command {
    let mut cmd = Command::new(program);
    cmd.env(var, value)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// [`reaper`] in a session of its own with no signal blocked, for a process that starts it directly.
fn detached(program: &PathBuf, var: &OsString, value: &OsString) -> Command {
    let mut cmd = reaper(program, var, value);
    crate::ops::detach(&mut cmd);
    cmd
}

/// Whether this process has one thread (`/proc/self/task` has one entry). Unknown counts as no.
fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|d| d.count() == 1)
}

/// stdin, stdout and stderr become /dev/null (what was printed has been written: Rust's stdout is flushed
/// first).
fn quiet_stdio() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return;
    };
    for fd in 0..3 {
        // SAFETY: dup2(2) only replaces descriptor `fd` (0, 1 or 2) with a copy of an open one; nothing in
        // this process holds a Rust owner of 0, 1 or 2 that would be confused by the swap.
        unsafe { libc::dup2(null.as_raw_fd(), fd) };
    }
}

/// Close every descriptor not in `keep`: with close_range(2), or where that fails, one by one as
/// /proc/self/fd lists them (a runtime's descriptor left open would otherwise go on to the reaper).
fn close_all_but(keep: &[i32]) {
    let mut sorted: Vec<libc::c_uint> = keep
        .iter()
        .filter_map(|&k| libc::c_uint::try_from(k).ok())
        .collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut from: libc::c_uint = 0;
    let mut failed = false;
    for k in sorted {
        if k > from {
            // SAFETY: close_range(2) only closes descriptors; none in [from, k) is used by this process again.
            failed |= unsafe { libc::syscall(libc::SYS_close_range, from, k - 1, 0) } != 0;
        }
        from = k.saturating_add(1);
    }
    // SAFETY: as above, for every descriptor above the last kept one.
    failed |= unsafe { libc::syscall(libc::SYS_close_range, from, libc::c_uint::MAX, 0) } != 0;
    if !failed {
        return;
    }
    // Listed first, closed after: the listing's own descriptor is gone by then (closing it again is EBADF).
    let open: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for fd in open.into_iter().filter(|fd| !keep.contains(fd)) {
        // SAFETY: close(2) of a descriptor this process does not use again.
        unsafe { libc::close(fd) };
    }
}
