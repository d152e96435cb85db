//! Running a command in a sandbox the way a shell or `docker run` does: signals sent to nsnet reach the
//! command, nsnet waits for it, and the command's exit status becomes nsnet's.
//!
//! Without this, a SIGTERM or SIGINT sent to `nsnet run --rm` killed nsnet and left the sandbox behind, with
//! its command still running in it, orphaned.

use std::os::unix::process::{CommandExt as _, ExitStatusExt};
use std::process::{Command, ExitStatus};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context as _, Result};
use nix::errno::Errno;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;

use crate::Exit;

/// The signals nsnet passes on to its command; the ones a terminal, a service manager or `kill` sends.
const FORWARDED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Where the command is, as the signal thread sees it.
enum Stage {
    /// Not started yet (the sandbox is being set up); the first signal that came, if any.
    Before(Option<Signal>),
    /// Running, or exited but not reaped: its pid cannot be reused yet, so a signal never hits a stranger.
    Running(Pid),
    /// Reaped: later signals are dropped, so nothing interrupts the sandbox's removal.
    Done,
}

/// Owns the forwarded signals for the rest of nsnet's life (see [`Supervisor::start`]).
pub struct Supervisor {
    stage: Arc<Mutex<Stage>>,
}

impl Supervisor {
    /// Block the forwarded signals and start the thread that takes them. Call it before anything else starts a
    /// thread: threads inherit the mask, and one that left them unblocked would let the default action kill
    /// nsnet halfway.
    pub fn start() -> Result<Supervisor> {
        let set = forwarded();
        set.thread_block().context("block signals")?;
        // Blocked signals queue up here (the command does not inherit it).
        let signals =
            SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC).context("open a signalfd")?;
        let stage = Arc::new(Mutex::new(Stage::Before(None)));
        let shared = Arc::clone(&stage);
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || take_signals(&signals, &shared))
            .context("start the signal thread")?;
        Ok(Supervisor { stage })
    }

    /// Run `command` (unless a signal came while the sandbox was being set up), pass signals on to it, wait
    /// for it and return nsnet's exit status: the command's, or 128 + the signal that ended it.
    pub fn run(&self, command: &mut Command, prog: &str) -> Result<u8> {
        let (child, pid) = {
            let mut stage = lock(&self.stage);
            if let Stage::Before(Some(sig)) = *stage {
                // Interrupted before it started: do not start it at all.
                *stage = Stage::Done;
                return Ok(128 + sig as u8);
            }
            unblock_in_child(command);
            // Spawned under the lock, so a signal that comes meanwhile finds the pid.
            let child = command.spawn().map_err(|e| not_started(prog, &e))?;
            let pid = Pid::from_raw(i32::try_from(child.id()).context("child pid out of range")?);
            *stage = Stage::Running(pid);
            (child, pid)
        };
        // Wait without reaping, so the pid stays the command's until no signal can be sent to it any more.
        loop {
            match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Ok(_) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e).context("wait for the command"),
            }
        }
        *lock(&self.stage) = Stage::Done;
        let mut child = child;
        let status = child.wait().context("wait for the command")?;
        Ok(exit_code(status))
    }
}

/// The command starts with the forwarded signals blocked (a child inherits its parent's mask, and std does not
/// reset it): unblock them between fork and exec, or a SIGTERM would stay pending in it forever.
fn unblock_in_child(command: &mut Command) {
    let set = forwarded();
    // SAFETY: runs in the forked child before exec; pthread_sigmask is async-signal-safe and allocates nothing.
    unsafe {
        command.pre_exec(move || set.thread_unblock().map_err(std::io::Error::from));
    }
}

fn forwarded() -> SigSet {
    let mut set = SigSet::empty();
    FORWARDED.iter().for_each(|s| set.add(*s));
    set
}

/// The signal thread: forwards each signal to the command, or remembers it while there is none yet.
fn take_signals(signals: &SignalFd, stage: &Mutex<Stage>) {
    loop {
        let Ok(Some(info)) = signals.read_signal() else {
            continue; // EINTR
        };
        let Some(sig) = i32::try_from(info.ssi_signo)
            .ok()
            .and_then(|n| Signal::try_from(n).ok())
        else {
            continue;
        };
        let mut stage = lock(stage);
        match *stage {
            Stage::Before(ref mut first) => {
                first.get_or_insert(sig);
            }
            // A terminal's ^C or ^\ (sent by the kernel) goes to the whole foreground process group, the
            // command included: passing it on would deliver it twice.
            Stage::Running(_) if info.ssi_code == libc::SI_KERNEL => {}
            Stage::Running(pid) => {
                // The pid is the command's until it is reaped, and it is not reaped while this lock is held.
                let _ = kill(pid, sig);
            }
            Stage::Done => {}
        }
    }
}

fn lock(stage: &Mutex<Stage>) -> MutexGuard<'_, Stage> {
    // The stage is a plain value: a thread that panicked holding it left nothing half-changed.
    stage.lock().unwrap_or_else(|e| e.into_inner())
}

/// The exit status a shell gives: the command's code, or 128 + the signal that killed it.
fn exit_code(status: ExitStatus) -> u8 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .and_then(|c| u8::try_from(c).ok())
        .unwrap_or(1)
}

/// Why the command could not start, with a shell's exit status: 127 when there is no such command, 126 when
/// it is there but cannot be executed.
fn not_started(prog: &str, e: &std::io::Error) -> anyhow::Error {
    let (code, why) = match Errno::from_raw(e.raw_os_error().unwrap_or(0)) {
        Errno::ENOENT if prog.contains('/') => (127, "no such file".to_string()),
        Errno::ENOENT => (127, "command not found".to_string()),
        Errno::EACCES | Errno::ENOEXEC | Errno::EISDIR | Errno::EPERM => {
            (126, format!("not executable ({})", e.kind()))
        }
        _ => (126, e.to_string()),
    };
    Exit {
        code,
        message: format!("cannot run {prog}: {why}"),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGTERM)), 143);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGINT)), 130);
    }
}
