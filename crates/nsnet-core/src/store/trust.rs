//! Whether the state dir can be trusted, and what becomes of a record that cannot.
//!
//! The records decide which namespaces and links nsnet deletes, so nobody but nsnet's own user may be able to
//! change them: the state dir and its subdirectories must be owned by the effective uid and writable by nobody
//! else, and nothing inside may be a symlink (a link could point a record, the lock or a whole subdirectory at
//! someone else's file). The state dir itself may be a symlink (an administrator's choice, e.g. onto another
//! disk); what it points to is checked. A record that cannot be read is moved to `quarantine/` rather than
//! deleted, so no information is lost.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::StoreError;

/// The subdirectories nsnet makes in its state dir.
pub(super) const SUBDIRS: [&str; 5] = ["networks", "sandboxes", "intents", "tmp", "quarantine"];

/// Where records that could not be read are moved.
pub(super) const QUARANTINE: &str = "quarantine";

/// What a state-dir entry must be.
#[derive(Clone, Copy)]
enum Kind {
    Dir,
    File,
}

/// Check the state dir, its subdirectories and its lock file: owned by this user, writable by nobody else, no
/// symlinks. Nothing to check for what does not exist yet.
pub(super) fn check_dir(dir: &Path) -> Result<(), StoreError> {
    match fs::metadata(dir) {
        Ok(m) => check_entry(dir, &m, Kind::Dir)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error("read state directory", dir, e)),
    }
    for sub in SUBDIRS {
        let path = dir.join(sub);
        if let Some(m) = lstat(&path)? {
            check_entry(&path, &m, Kind::Dir)?;
        }
    }
    let lock = dir.join("lock");
    if let Some(m) = lstat(&lock)? {
        check_entry(&lock, &m, Kind::File)?;
    }
    Ok(())
}

/// One entry's type, owner and mode.
fn check_entry(path: &Path, meta: &fs::Metadata, kind: Kind) -> Result<(), StoreError> {
    let refuse = |problem: String, fix: String| {
        Err(StoreError::Untrusted {
            path: path.into(),
            problem,
            fix,
        })
    };
    let (noun, mode_wanted) = match kind {
        Kind::Dir => ("directory", 0o700),
        Kind::File => ("file", 0o600),
    };
    if meta.file_type().is_symlink() {
        return refuse(
            "is a symlink, and nsnet follows none inside its state dir".into(),
            format!("replace it with the {noun} it points to"),
        );
    }
    let right_type = match kind {
        Kind::Dir => meta.is_dir(),
        Kind::File => meta.is_file(),
    };
    if !right_type {
        return refuse(
            format!("is not a {noun}"),
            "move it out of the way (nsnet makes it anew)".into(),
        );
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return refuse(
            format!(
                "is owned by uid {}, not by this user (uid {me})",
                meta.uid()
            ),
            format!(
                "if it is nsnet's, run `chown {me} {}`; otherwise use another --state-dir",
                path.display()
            ),
        );
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return refuse(
            format!("is writable by group or others (mode {mode:04o})"),
            format!("run `chmod {mode_wanted:04o} {}`", path.display()),
        );
    }
    Ok(())
}

/// An entry's own metadata (a symlink's, not its target's); `None` when there is none.
fn lstat(path: &Path) -> Result<Option<fs::Metadata>, StoreError> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("read state directory", path, e)),
    }
}

fn io_error(what: &'static str, path: &Path, error: io::Error) -> StoreError {
    StoreError::Io {
        what,
        path: path.into(),
        error,
    }
}

/// Open a state file for reading; a symlink is not followed (the open fails with ELOOP, see [`is_link`]).
pub(super) fn open_read(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Whether an open failed because the file is a symlink.
pub(super) fn is_link(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ELOOP)
}

/// Move `files` (those that exist) into `dir/quarantine/` (made 0700), each under a name that says where it
/// was and when: `sandboxes.a.json.1700000000`. A symlink moves as itself; its target is left alone. Returns
/// each file moved with its new path.
pub(super) fn move_aside(
    dir: &Path,
    files: &[PathBuf],
) -> Result<Vec<(PathBuf, PathBuf)>, StoreError> {
    let q = dir.join(QUARANTINE);
    std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
        .create(&q)
        .map_err(|e| io_error("create state directory", &q, e))?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut moved = Vec::new();
    for src in files {
        let rel = src.strip_prefix(dir).unwrap_or(src);
        let base = rel.to_string_lossy().replace('/', ".");
        for n in 0u32.. {
            let dst = match n {
                0 => q.join(format!("{base}.{secs}")),
                _ => q.join(format!("{base}.{secs}.{n}")),
            };
            // link(2) neither follows a symlink nor replaces an existing file: the move never overwrites
            // anything already set aside.
            match fs::hard_link(src, &dst) {
                Ok(()) => {
                    fs::remove_file(src)
                        .or_else(not_found_ok)
                        .map_err(|e| io_error("remove state file", src, e))?;
                    moved.push((src.clone(), dst));
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                // Another reader set it aside first.
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(io_error("move state file aside", src, e)),
            }
        }
    }
    // Durable like any other state change; best effort, the files are safe either way.
    for d in [q.as_path(), dir] {
        let _ = File::open(d).and_then(|f| f.sync_all());
    }
    Ok(moved)
}

fn not_found_ok(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}
