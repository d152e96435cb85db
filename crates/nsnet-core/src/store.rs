//! nsnet's state on disk: one human-readable JSON file per network and per sandbox under the state dir.
//!
//! ```text
//! STATE_DIR/            0700
//!   lock                flock(2): one writer at a time (readers take it shared)
//!   intents/PID.json    a command in flight, flocked by its process while it lives
//!   networks/NAME.json  a network and the addresses / ports it has handed out
//!   sandboxes/NAME.json a sandbox and its endpoints
//! ```
//! Every write goes to a temp file that is fsynced and renamed over the old one, so a reader sees either the old
//! or the new file, never half of one. Files are 0600.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::model::{Network, Sandbox};
use crate::plan::Step;

/// One change to the records, as data: what a command writes once its kernel work is done.
#[derive(Debug, Clone)]
pub enum Record {
    Network(Network),
    Sandbox(Sandbox),
    NoNetwork(String),
    NoSandbox(String),
}

/// A record file's content at some moment (`None`: no such file), by path relative to the state dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FileState {
    pub path: String,
    pub content: Option<String>,
}

/// What a command in flight may have done, written before it touches the kernel and removed when it is
/// finished. If nsnet is killed in between, recovery reads it: a set-up whose records all landed is done;
/// otherwise its `undo` steps run and the records go back to `before`. A teardown is finished: `redo` runs
/// again (every teardown step is idempotent), then `finish` releases the records.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Intent {
    pub command: String,
    pub setup: bool,
    /// Set-up: the undo steps of the whole plan, newest first (undoing a step that never ran is harmless).
    #[serde(default)]
    pub undo: Vec<Step>,
    /// Teardown: the kernel steps (link and namespace deletions).
    #[serde(default)]
    pub redo: Vec<Step>,
    /// Teardown: what releases the records once the kernel steps are done.
    #[serde(default)]
    pub finish: Option<Teardown>,
    pub before: Vec<FileState>,
    pub after: Vec<FileState>,
}

/// The object a teardown removes; its firewall elements and records are worked out from the records current
/// when it finishes (under the lock), so concurrent commands in between are accounted for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum Teardown {
    Sandbox(String),
    Network(String),
    /// One sandbox's endpoint on one network (`nsnet detach`, CNI `DEL`).
    Endpoint {
        sandbox: String,
        network: String,
    },
}

/// An intent on disk, flocked for as long as its command runs: recovery skips intents whose command is alive.
#[derive(Debug)]
pub struct IntentFile {
    pub path: PathBuf,
    _file: File,
}

/// A state-dir failure, naming the file involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {}: {error}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("state file {} is corrupt ({reason}); fix or remove it by hand", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_path_buf(),
        error: source,
    }
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// Held while a command changes state. On drop, a store left with no networks and no sandboxes is removed
/// altogether (so nothing nsnet made outlives its last object, and a failed first command leaves no trace),
/// then the lock is released.
#[derive(Debug)]
pub struct Lock {
    _file: File,
    store: Store,
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Runs before the fields drop: the store is checked and removed while the flock is still held.
        let _ = self.store.remove_if_empty();
    }
}

impl Store {
    /// A store rooted at `dir`. Nothing is created until something is written or locked.
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The tag on the namespaces this store's sandboxes own (`lo`'s alias inside them): `nsnet:STATE_DIR`.
    /// Several stores can share a host (tests do); `gc` reaps only namespaces with its own tag.
    pub fn owner_tag(&self) -> String {
        let dir = fs::canonicalize(&self.dir).unwrap_or_else(|_| self.dir.clone());
        format!("nsnet:{}", dir.display())
    }

    fn ensure_dirs(&self) -> Result<(), StoreError> {
        for d in [
            self.dir.clone(),
            self.dir.join("networks"),
            self.dir.join("sandboxes"),
        ] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&d)
                .map_err(io_err("create state directory", &d))?;
        }
        Ok(())
    }

    /// A shared lock for readers (`ls`, `inspect`), so they never see a command's records half written.
    /// `None` when there is no state at all (nothing to read, and no lock file to create).
    pub fn read_lock(&self) -> Result<Option<File>, StoreError> {
        let path = self.dir.join("lock");
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("open lock file", &path)(e)),
        };
        flock(&file, libc::LOCK_SH).map_err(io_err("lock", &path))?;
        Ok(Some(file))
    }

    /// Take the writer lock, creating the state dir on first use. Blocks until other writers are done.
    pub fn lock(&self) -> Result<Lock, StoreError> {
        let path = self.dir.join("lock");
        loop {
            self.ensure_dirs()?;
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)
                .map_err(io_err("open lock file", &path))?;
            flock(&file, libc::LOCK_EX).map_err(io_err("lock", &path))?;
            // The previous holder may have removed the (empty) store while we waited: then we hold a lock on
            // an unlinked file, and must lock the current one instead.
            let held = file.metadata().map_err(io_err("stat lock file", &path))?;
            match fs::metadata(&path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok(Lock {
                        _file: file,
                        store: self.clone(),
                    });
                }
                _ => continue,
            }
        }
    }

    fn network_path(&self, name: &str) -> PathBuf {
        self.dir.join(network_file(name))
    }

    fn sandbox_path(&self, name: &str) -> PathBuf {
        self.dir.join(sandbox_file(name))
    }

    pub fn network(&self, name: &str) -> Result<Option<Network>, StoreError> {
        read(&self.network_path(name))
    }

    pub fn sandbox(&self, name: &str) -> Result<Option<Sandbox>, StoreError> {
        read(&self.sandbox_path(name))
    }

    /// Every network, by name.
    pub fn networks(&self) -> Result<Vec<Network>, StoreError> {
        read_all(&self.dir.join("networks"))
    }

    /// Every sandbox, by name.
    pub fn sandboxes(&self) -> Result<Vec<Sandbox>, StoreError> {
        read_all(&self.dir.join("sandboxes"))
    }

    fn record_file(&self, r: &Record) -> Result<(String, Option<String>), StoreError> {
        let (path, value) = match r {
            Record::Network(n) => (
                network_file(&n.name),
                serde_json::to_string_pretty(n).map(Some),
            ),
            Record::Sandbox(s) => (
                sandbox_file(&s.name),
                serde_json::to_string_pretty(s).map(Some),
            ),
            Record::NoNetwork(name) => (network_file(name), Ok(None)),
            Record::NoSandbox(name) => (sandbox_file(name), Ok(None)),
        };
        let content = value
            .map(|c| c.map(|t| t + "\n"))
            .map_err(|e| StoreError::Corrupt {
                path: self.dir.join(&path),
                reason: e.to_string(),
            })?;
        Ok((path, content))
    }

    /// What the files of these records hold now, and what they will hold once the records are written.
    pub fn file_states(
        &self,
        records: &[Record],
    ) -> Result<(Vec<FileState>, Vec<FileState>), StoreError> {
        let (mut before, mut after) = (Vec::new(), Vec::new());
        for r in records {
            let (path, content) = self.record_file(r)?;
            let now = match fs::read_to_string(self.dir.join(&path)) {
                Ok(t) => Some(t),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(StoreError::Io {
                        what: "read state file",
                        path: self.dir.join(&path),
                        error: e,
                    })
                }
            };
            before.push(FileState {
                path: path.clone(),
                content: now,
            });
            after.push(FileState { path, content });
        }
        Ok((before, after))
    }

    /// Make the files hold exactly these contents (`None`: removed).
    pub fn set_files(&self, files: &[FileState]) -> Result<(), StoreError> {
        self.ensure_dirs()?;
        for f in files {
            let path = self.dir.join(&f.path);
            match &f.content {
                Some(text) => write_text(&path, text)?,
                None => remove(&path)?,
            }
        }
        Ok(())
    }

    /// Whether the files hold exactly these contents.
    pub fn files_are(&self, files: &[FileState]) -> bool {
        files
            .iter()
            .all(|f| fs::read_to_string(self.dir.join(&f.path)).ok() == f.content)
    }

    /// Record a command in flight; returns the intent file, flocked, to remove when it is done.
    pub fn put_intent(&self, intent: &Intent) -> Result<IntentFile, StoreError> {
        let dir = self.dir.join("intents");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err("create state directory", &dir))?;
        let path = dir.join(format!("{}.json", std::process::id()));
        write_atomic(&path, intent)?;
        // Locked only after the rename, so the lock is on the file recovery will open.
        let file = File::open(&path).map_err(io_err("open intent", &path))?;
        flock(&file, libc::LOCK_EX).map_err(io_err("lock", &path))?;
        Ok(IntentFile { path, _file: file })
    }

    /// Every intent left by a command that is no longer running (its flock is free), flocked for the caller.
    pub fn intents(&self) -> Result<Vec<(IntentFile, Intent)>, StoreError> {
        let dir = self.dir.join("intents");
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(vec![]);
        };
        let mut out = Vec::new();
        for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("open intent", &path)(e)),
            };
            match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(io_err("lock", &path)(e)),
            }
            if let Some(intent) = read(&path)? {
                out.push((IntentFile { path, _file: file }, intent));
            }
        }
        Ok(out)
    }

    /// Remove the temp files of writes that were killed before their rename (call with the lock held: then
    /// no write is in flight).
    pub fn remove_stale_temp_files(&self) -> Result<(), StoreError> {
        for sub in ["networks", "sandboxes", "intents"] {
            let Ok(entries) = fs::read_dir(self.dir.join(sub)) else {
                continue;
            };
            for e in entries.filter_map(|e| e.ok()) {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') && name.ends_with(".tmp") {
                    remove(&e.path())?;
                }
            }
        }
        Ok(())
    }

    /// The intent is dealt with.
    pub fn remove_intent(&self, intent: IntentFile) -> Result<(), StoreError> {
        remove(&intent.path)
    }

    /// Remove the state dir itself when it holds no networks and no sandboxes (called with the lock held).
    fn remove_if_empty(&self) -> Result<(), StoreError> {
        let has_files = |sub: &str| {
            fs::read_dir(self.dir.join(sub))
                .map(|mut d| d.next().is_some())
                .unwrap_or(false)
        };
        if has_files("networks") || has_files("sandboxes") {
            return Ok(());
        }
        if has_files("intents") {
            return Ok(());
        }
        for sub in ["networks", "sandboxes", "intents"] {
            let _ = fs::remove_dir(self.dir.join(sub));
        }
        let _ = fs::remove_file(self.dir.join("lock"));
        let _ = fs::remove_dir(&self.dir);
        Ok(())
    }
}

/// Where a network's record lives, relative to the state dir.
fn network_file(name: &str) -> String {
    format!("networks/{name}.json")
}

/// Where a sandbox's record lives, relative to the state dir.
fn sandbox_file(name: &str) -> String {
    format!("sandboxes/{name}.json")
}

/// flock(2) on a file we hold open.
fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    // SAFETY: the fd is valid for the duration of the call; flock has no memory effects.
    let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StoreError::Io {
                what: "read state file",
                path: path.into(),
                error: e,
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            path: path.into(),
            reason: e.to_string(),
        })
}

fn read_all<T: DeserializeOwned>(dir: &Path) -> Result<Vec<T>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => {
            return Err(StoreError::Io {
                what: "list state directory",
                path: dir.into(),
                error: e,
            })
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        if let Some(v) = read(&p)? {
            out.push(v);
        }
    }
    Ok(out)
}

fn write_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| StoreError::Corrupt {
        path: path.into(),
        reason: e.to_string(),
    })?;
    text.push('\n');
    write_text(path, &text)
}

/// Write a file atomically: temp file, fsync, rename, fsync the directory.
fn write_text(path: &Path, text: &str) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err("write state file", &tmp))?;
    f.write_all(text.as_bytes())
        .map_err(io_err("write state file", &tmp))?;
    f.sync_all().map_err(io_err("sync state file", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("replace state file", path))?;
    // The rename is durable once the directory is synced too.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync state directory", dir))
}

fn remove(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::Io {
            what: "remove state file",
            path: path.into(),
            error: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn net(name: &str) -> Network {
        Network::bridge(
            name,
            "10.89.0.0/24".parse().unwrap(),
            "10.89.0.1".parse().unwrap(),
            "nsnet0",
        )
    }

    /// Write records the way commands do: their files as they will be, made so.
    fn write(store: &Store, records: Vec<Record>) {
        let (_, after) = store.file_states(&records).unwrap();
        store.set_files(&after).unwrap();
    }

    #[test]
    fn round_trip_and_permissions() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path().join("state"));
        assert!(store.networks().unwrap().is_empty());
        let lock = store.lock().unwrap();
        write(
            &store,
            vec![Record::Network(net("a")), Record::Network(net("b"))],
        );
        assert_eq!(store.network("a").unwrap(), Some(net("a")));
        assert_eq!(store.networks().unwrap().len(), 2);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(store.dir()), 0o700);
        assert_eq!(mode(&store.network_path("a")), 0o600);
        write(&store, vec![Record::NoNetwork("a".into())]);
        write(
            &store,
            vec![Record::NoNetwork("a".into()), Record::NoNetwork("b".into())],
        );
        drop(lock);
        assert!(!store.dir().exists());
        // A lock taken and dropped on an empty store leaves nothing either.
        drop(store.lock().unwrap());
        assert!(!store.dir().exists());
    }

    #[test]
    fn corrupt_file_is_named_not_reset() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path());
        write(&store, vec![Record::Network(net("a"))]);
        fs::write(store.network_path("a"), "{\"name\": \"a\", ").unwrap();
        let err = store.networks().unwrap_err().to_string();
        assert!(err.contains("networks/a.json is corrupt"), "{err}");
    }
}
