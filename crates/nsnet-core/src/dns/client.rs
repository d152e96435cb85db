//! The commands' side: tell the resolver what changed, starting it first when a sandbox needs it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::server::{BUSY, GENERATION, GENERATION_FILE, PID, SOCKET};
use super::{Update, RESOLVER_ENV};

/// How long a command waits for a resolver it started to listen, and for its answers.
const WAIT: Duration = Duration::from_secs(3);

/// Whether a resolver serves `state_dir` now.
pub fn running(state_dir: &Path) -> bool {
    UnixStream::connect(state_dir.join(SOCKET)).is_ok()
}

/// Send `updates` to the resolver of `state_dir` and wait for its answers. With none running, one is started
/// (`program` with [`RESOLVER_ENV`], detached) when an update brings a sandbox up; updates that only take
/// sandboxes down need no resolver. `Err`: what went wrong, for a warning (the records are already right, and
/// the resolver reads them when it starts, and every few seconds).
pub fn tell(state_dir: &Path, program: Option<&Path>, updates: &[Update]) -> Result<(), String> {
    if updates.is_empty() {
        return Ok(());
    }
    let mut ups = updates.iter().any(|u| matches!(u, Update::Up(_)));
    let sent = match UnixStream::connect(state_dir.join(SOCKET)) {
        // One of an older generation may not read what these updates (or the records) now hold: it steps
        // down, and this command starts its own, which reads the records whole.
        Ok(conn) if older(state_dir) && step_down(state_dir) => {
            drop(conn);
            ups = true;
            Err("an older resolver stepped down".to_string())
        }
        Ok(conn) => send(conn, updates),
        Err(_) if !ups => return Ok(()),
        Err(e) => Err(e.to_string()),
    };
    match (sent, program) {
        (Ok(()), _) => Ok(()),
        // None runs, or the one that ran stopped (its last sandbox went) as these came: start one. It reads
        // the records when it starts, and they hold these updates already.
        (Err(_), Some(program)) if ups => start(state_dir, program),
        (Err(e), None) if ups => Err(format!("{e}; and this command cannot start a resolver")),
        (Err(e), _) => Err(e),
    }
}

/// Whether the resolver serving `state_dir` is of an older generation than this build's ([`GENERATION`]):
/// it says so in its generation file, or (before generations) wrote none.
fn older(state_dir: &Path) -> bool {
    std::fs::read_to_string(state_dir.join(GENERATION_FILE))
        .ok()
        .and_then(|g| g.trim().parse::<u32>().ok())
        .is_none_or(|g| g < GENERATION)
}

/// Ask the resolver of `state_dir` to stop (SIGTERM) and wait until it has. Only a process that is that
/// state dir's resolver (its environment says so) is signalled: the pid file may name a pid that was reused
/// by another process since. False when there was none to stop, or it did not stop.
fn step_down(state_dir: &Path) -> bool {
    let Some(pid) = std::fs::read_to_string(state_dir.join(PID))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .filter(|p| *p > 1)
    else {
        return false;
    };
    let mut want = format!("{RESOLVER_ENV}=").into_bytes();
    want.extend_from_slice(state_dir.as_os_str().as_encoded_bytes());
    let is_resolver = std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|b| *b == 0).any(|entry| entry == want.as_slice()));
    if !is_resolver {
        return false;
    }
    let pid = nix::unistd::Pid::from_raw(pid);
    if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_err() {
        return false;
    }
    // Its listening socket goes with it (a connection is refused then), and so does its lock.
    let until = Instant::now() + WAIT;
    while Instant::now() < until {
        if UnixStream::connect(state_dir.join(SOCKET)).is_err() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

fn send(conn: UnixStream, updates: &[Update]) -> Result<(), String> {
    conn.set_read_timeout(Some(WAIT))
        .map_err(|e| e.to_string())?;
    let mut out = conn.try_clone().map_err(|e| e.to_string())?;
    let mut text = String::new();
    for u in updates {
        text.push_str(&serde_json::to_string(u).map_err(|e| e.to_string())?);
        text.push('\n');
    }
    out.write_all(text.as_bytes())
        .and_then(|()| out.shutdown(std::net::Shutdown::Write))
        .map_err(|e| format!("write to the resolver: {e}"))?;
    let mut problems = Vec::new();
    let mut answered = 0;
    for line in BufReader::new(conn).lines() {
        let line = line.map_err(|e| format!("read the resolver's answer: {e}"))?;
        answered += 1;
        if line != "ok" {
            problems.push(line);
        }
    }
    if answered < updates.len() {
        return Err("the resolver stopped before it answered".into());
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(problems.join("; ")),
    }
}

/// Start a resolver and wait until it listens (it has read the records by then).
pub fn start(state_dir: &Path, program: &Path) -> Result<(), String> {
    let path = state_dir.join(SOCKET);
    let until = Instant::now() + WAIT;
    while Instant::now() < until {
        let mut cmd = Command::new(program);
        cmd.env(RESOLVER_ENV, state_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        crate::ops::detach(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("start the resolver ({}): {e}", program.display()))?;
        loop {
            if UnixStream::connect(&path).is_ok() {
                return Ok(());
            }
            match child.try_wait() {
                // Another resolver holds the state dir: one stopping (then start another), or one that won
                // a race (then it listens soon).
                Ok(Some(status)) if status.code() == Some(i32::from(BUSY)) => {
                    std::thread::sleep(Duration::from_millis(2));
                    break;
                }
                // It found nothing to serve, or failed (it wrote nothing: its output is not kept).
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => return Err(format!("the resolver exited at once ({status})")),
                _ => {}
            }
            if Instant::now() >= until {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Err(format!(
        "the resolver did not start listening within {}s",
        WAIT.as_secs()
    ))
}
