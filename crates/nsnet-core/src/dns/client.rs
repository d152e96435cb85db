//! The commands' side: tell the resolver what changed, starting it first when a sandbox needs it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::server::{BUSY, SOCKET};
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
    let ups = updates.iter().any(|u| matches!(u, Update::Up(_)));
    let sent = match UnixStream::connect(state_dir.join(SOCKET)) {
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
