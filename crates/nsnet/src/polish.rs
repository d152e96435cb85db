//! Everyday polish: `--version` with the commit, `nsnet completions`, `nsnet man`, and the progress line of
//! long commands.

use std::io::{IsTerminal as _, Write as _};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;

/// `nsnet --version`: the package's version and the commit it was built from (`unknown` outside a git
/// checkout, e.g. from a source tarball); build.rs finds the commit.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("NSNET_COMMIT"),
    ")"
);

/// The shells `nsnet completions` writes for: the ones scripts/setup installs for.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// `nsnet completions SHELL`: the completion script, from the CLI's own definition.
pub fn completions(shell: Shell) -> Result<ExitCode> {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut cmd = crate::Cli::command();
    clap_complete::generate(shell, &mut cmd, "nsnet", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// `nsnet man [--dir DIR]`: the main page on stdout, or every command's page written into DIR.
pub fn man(dir: Option<&Path>) -> Result<ExitCode> {
    let cmd = crate::Cli::command();
    match dir {
        Some(dir) => {
            clap_mangen::generate_to(cmd, dir).with_context(|| {
                format!(
                    "cannot write manual pages into {}; give a directory that exists and is writable",
                    dir.display()
                )
            })?;
        }
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            std::io::stdout().write_all(&out)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether a progress line is on the terminal now (an error message first clears it).
static DRAWN: AtomicBool = AtomicBool::new(false);

/// The progress line for long commands (`network rm --force`, `gc`), on stderr when it is a terminal, and
/// nothing otherwise: `removing sandboxes 37/200`, rewritten in place, gone once the count is full.
pub fn progress() -> Option<nsnet_core::ops::Progress> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    Some(Arc::new(|what: &str, done: usize, total: usize| {
        let mut err = std::io::stderr().lock();
        if done >= total {
            let _ = write!(err, "\r\x1b[K");
            DRAWN.store(false, Ordering::Relaxed);
        } else {
            let _ = write!(err, "\r{what} {done}/{total}\x1b[K");
            DRAWN.store(true, Ordering::Relaxed);
        }
        let _ = err.flush();
    }))
}

/// Clear a progress line a failed command left, before its message.
pub fn clear_progress() {
    if DRAWN.swap(false, Ordering::Relaxed) {
        eprint!("\r\x1b[K");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_the_commit() {
        assert!(VERSION.starts_with(env!("CARGO_PKG_VERSION")));
        let commit = VERSION
            .split("(commit ")
            .nth(1)
            .and_then(|c| c.strip_suffix(')'))
            .expect("a commit");
        assert!(
            commit == "unknown"
                || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
            "{commit}"
        );
    }

    #[test]
    fn bash_completion_knows_the_commands() {
        let mut cmd = crate::Cli::command();
        let mut out = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "nsnet", &mut out);
        let script = String::from_utf8(out).expect("utf-8");
        for word in [
            "topology",
            "network",
            "create",
            "completions",
            "--state-dir",
            "--format",
        ] {
            assert!(script.contains(word), "no {word} in the bash completion");
        }
        for shell in [clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut crate::Cli::command(), "nsnet", &mut out);
            assert!(
                String::from_utf8_lossy(&out).contains("topology"),
                "{shell}"
            );
        }
    }

    #[test]
    fn man_pages_are_roff_for_every_command() {
        let mut out = Vec::new();
        clap_mangen::Man::new(crate::Cli::command())
            .render(&mut out)
            .expect("render");
        let page = String::from_utf8(out).expect("utf-8");
        assert!(
            page.starts_with(".ie") || page.contains(".TH nsnet"),
            "{page}"
        );
        assert!(page.contains(".TH nsnet 1"), "{page}");
        assert!(page.contains("topology"));
        let dir = tempfile::tempdir().expect("tempdir");
        clap_mangen::generate_to(crate::Cli::command(), dir.path()).expect("pages");
        for page in [
            "nsnet.1",
            "nsnet-network.1",
            "nsnet-network-create.1",
            "nsnet-topology.1",
        ] {
            assert!(dir.path().join(page).exists(), "no {page}");
        }
    }
}
