//! nsnet's state on disk: human-readable files under the state dir.
//!
//! ```text
//! STATE_DIR/              0700
//!   lock                  flock(2): one writer at a time (readers take it shared)
//!   intents/N.json        intent slots: a command in flight, flocked by its process while it lives; empty
//!                         when free (reused, so commands do not create and delete a file each)
//!   networks/NAME.json    a network's settings
//!   networks/NAME.ledger  the addresses and ports it has handed out, one line each (see [`ledger`])
//!   networks/NAME.index   the same as sorted numbers, stamped with the ledger it describes (see [`index`])
//!   sandboxes/NAME.json   a sandbox and its endpoints
//!   tmp/                  files being written
//!   quarantine/           records that could not be read, moved aside (never deleted) for a human to repair
//! ```
//! A JSON file is written to `tmp/` and renamed over the old one, so a reader sees either the old or the new file,
//! never half of one; settings are fsynced first, sandbox records are not (they describe what a reboot removes
//! anyway: see [`Store::write_file`]). A ledger only grows by appended lines, written under the lock and not
//! synced either (a torn last line is left out when it is read). Files are 0600.
//!
//! Nothing in the state dir is trusted blindly (see [`trust`]): the directories must be this user's and writable
//! by nobody else, no entry may be a symlink, and each record must carry its file's name and valid interface
//! names. A sandbox record that fails is moved to `quarantine/` with a warning, and the others stay usable; so
//! is a network's (settings, ledger and index together), unless sandboxes are still on it.

pub mod index;
pub mod ledger;
mod trust;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ipam::Allocated;
use crate::model::{Allocations, Network, NetworkRecord, Sandbox};
use crate::plan::Step;
use crate::portmap::PortMapping;
use index::{Index, Stamp};
use ledger::Ledger;

/// One change to the records, as data: what a command writes once its kernel work is done.
#[derive(Debug, Clone)]
pub enum Record {
    /// A network's settings and what it has handed out: the settings file is written, and the ledger gets
    /// the lines that turn what it holds into these allocations.
    Network(NetworkRecord),
    /// A network's settings alone (a mark, a new host chain): its ledger is left as it is.
    Settings(Network),
    Sandbox(Sandbox),
    NoNetwork(String),
    NoSandbox(String),
    /// A join's entries, appended to its network's ledger as they are: `sandbox` holds `ip` and publishes
    /// `ports`. A join records this rather than the whole network, so it never reads the entries into memory.
    Joined {
        network: String,
        sandbox: String,
        /// None on an IPv6-only network.
        ip: Option<std::net::Ipv4Addr>,
        /// Its IPv6 address, on a dual-stack network.
        ip6: Option<std::net::Ipv6Addr>,
        ports: Vec<crate::portmap::PortMapping>,
    },
}

/// A record file's content at some moment, by path relative to the state dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum FileState {
    /// The whole file (`None`: no such file).
    Whole {
        path: String,
        content: Option<String>,
    },
    /// A ledger: its first `len` bytes, then `append`. Making a file so truncates it to `len` and appends, so
    /// the same state written twice is the same file; `len` 0 with nothing to append is no file.
    Ledger {
        path: String,
        len: u64,
        append: String,
    },
}

/// The format of the intents this nsnet writes, stored in each one (`"format"`, with `"written_by"`: the nsnet
/// version). An intent outlives the nsnet that wrote it: a command killed before an upgrade is recovered by the
/// new version. So a change under which an intent already on disk would not parse the same (a renamed or
/// removed field or variant of [`Intent`], [`Step`], [`crate::firewall::Rule`] or what they hold) bumps this,
/// and reading goes on accepting every older format. `tests/golden/` holds one intent of each format, with
/// every variant, that must keep parsing. Intents written before formats were numbered carry none: format 1.
pub const INTENT_FORMAT: u64 = 5;

/// How every owner tag starts ([`Store::owner_tag`]): a link alias or table comment with it is some state
/// dir's nsnet's.
pub const TAG_PREFIX: &str = "nsnet:";

/// What a command in flight may have done, written before it touches the kernel and removed when it is
/// finished. If nsnet is killed in between, recovery reads it: a set-up whose records all landed is done;
/// otherwise its `undo` steps run and the records go back to `before`. A teardown is finished: `redo` runs
/// again (every teardown step is idempotent), then `finish` releases the records. On disk it also carries its
/// format ([`INTENT_FORMAT`]) and the version of nsnet that wrote it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Intent {
    pub command: String,
    pub setup: bool,
    /// Set-up: the undo steps of the whole plan, newest first (undoing a step that never ran is harmless).
    #[serde(default)]
    pub undo: Vec<Step>,
    /// Removal: the kernel steps (link and namespace deletions).
    #[serde(default)]
    pub redo: Vec<Step>,
    /// Removal: what releases the records once the kernel steps are done.
    #[serde(default)]
    pub finish: Option<Removal>,
    pub before: Vec<FileState>,
    pub after: Vec<FileState>,
}

/// An intent as written to its slot: with its format and the nsnet that wrote it, so a later nsnet knows
/// what it reads, and a message can name the version that can finish it.
#[derive(Serialize)]
struct IntentOnDisk<'a> {
    format: u64,
    written_by: &'a str,
    #[serde(flatten)]
    intent: &'a Intent,
}

/// Why an intent slot holds no intent this nsnet can act on.
#[derive(Debug, PartialEq, Eq)]
enum Unreadable {
    /// A write cut short: a prefix of an intent (perhaps padded with NUL bytes, as a file can be after a power
    /// loss). The slot is written before its command touches anything, so there is nothing to undo.
    Torn,
    /// A whole file, but not an intent in a format this nsnet knows (a newer nsnet's, or one it no longer
    /// reads): its command may have changed the kernel, so it must not be guessed at, nor dropped.
    Format {
        command: Option<String>,
        written_by: Option<String>,
        reason: String,
    },
}

/// The intent in a slot's bytes. A torn write is told apart from a format this nsnet cannot read by the
/// JSON itself: a prefix of a JSON document always ends early (serde_json's EOF error), while a whole one
/// that does not fit [`Intent`] fails on its content.
fn parse_intent(bytes: &[u8]) -> Result<Intent, Unreadable> {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let body = &bytes[..end];
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Unreadable::Torn);
    }
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) if e.is_eof() => return Err(Unreadable::Torn),
        Err(e) => {
            return Err(Unreadable::Format {
                command: None,
                written_by: None,
                reason: format!("not JSON: {e}"),
            })
        }
    };
    let text = |key: &str| value.get(key).and_then(|v| v.as_str()).map(String::from);
    let unreadable = |reason: String| Unreadable::Format {
        command: text("command"),
        written_by: text("written_by"),
        reason,
    };
    match value.get("format") {
        // Written before intents carried their format: the format they had then is format 1.
        None => {}
        Some(f) => match f.as_u64() {
            Some(1..=INTENT_FORMAT) => {}
            Some(n) if n > INTENT_FORMAT => {
                return Err(unreadable(format!(
                    "it is in format {n}, newer than this nsnet's {INTENT_FORMAT}"
                )))
            }
            _ => {
                return Err(unreadable(format!(
                    "its format {f} is no format nsnet wrote"
                )))
            }
        },
    }
    serde_json::from_value(value.clone()).map_err(|e| unreadable(e.to_string()))
}

/// The object a teardown removes; its firewall elements and records are worked out from the records current
/// when it finishes (under the lock), so concurrent commands in between are accounted for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum Removal {
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
    file: File,
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
    /// The state dir, a subdirectory or the lock file could have been changed by someone else.
    #[error("refusing state dir entry {}: it {problem}; {fix}", path.display())]
    Untrusted {
        path: PathBuf,
        problem: String,
        fix: String,
    },
    /// A killed command's intent that this nsnet cannot read. Its command may have changed the kernel, so
    /// nothing goes on until someone deals with it: the nsnet that wrote it, or a human.
    #[error("{0}")]
    UnreadableIntent(Box<UnreadableIntent>),
    /// A network's files are corrupt, and sandboxes still use it: setting it aside would leave them with a
    /// network nsnet no longer knows (its bridge, addresses and rules would look like nobody's).
    #[error(
        "state file {} is corrupt ({reason}) and sandboxes {} are still on network '{network}', so nsnet \
         leaves it in place; repair the file by hand",
        path.display(), users.join(", ")
    )]
    CorruptInUse {
        path: PathBuf,
        reason: String,
        network: String,
        users: Vec<String>,
    },
}

/// An intent this nsnet cannot read ([`StoreError::UnreadableIntent`]), with what it could make out of it.
#[derive(Debug)]
pub struct UnreadableIntent {
    pub path: PathBuf,
    /// The command that left it, when that much could be read.
    pub command: Option<String>,
    /// The version of nsnet that wrote it, when it says.
    pub written_by: Option<String>,
    /// What this nsnet could not read.
    pub reason: String,
}

impl std::fmt::Display for UnreadableIntent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&unreadable_intent(
            &self.path,
            self.command.as_deref(),
            self.written_by.as_deref(),
            &self.reason,
        ))
    }
}

/// The one line that says what an unreadable intent is, and what to do about it.
fn unreadable_intent(
    path: &Path,
    command: Option<&str>,
    written_by: Option<&str>,
    reason: &str,
) -> String {
    let what = command.map_or("a killed nsnet command".into(), |c| {
        format!("the killed `nsnet {c}`")
    });
    let (by, with) = match written_by {
        Some(v) => (format!("nsnet {v}"), format!("nsnet {v}")),
        None => (
            "an nsnet from before intents named their version".into(),
            "that nsnet".into(),
        ),
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    format!(
        "nsnet {ours} cannot read the intent {what} left in {path} ({reason}); it was written by {by}, and \
         its changes may still be in the kernel, so nsnet does nothing until it is dealt with: run `nsnet gc` \
         with {with}, or check by hand that the kernel holds nothing of that command, then move the file out of \
         {dir}",
        ours = env!("CARGO_PKG_VERSION"),
        path = path.display(),
        dir = dir.display(),
    )
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
    /// Ledgers this process has parsed, by path, with the file identity they were parsed at: a command reads
    /// a ledger to load the network and again to work out what to append, and a long one is worth parsing once.
    ledgers: Arc<Mutex<LedgerCache>>,
    /// Indexes this process has read or written, by network: a join looks at its network's index three times
    /// (to plan, for the ledger's length, to update it), and reads the file once.
    indexes: Arc<Mutex<HashMap<String, Index>>>,
    /// Whether a record that cannot be read is moved to `quarantine/` (false for dry runs, which change
    /// nothing: it is only left out, with a warning).
    set_aside: bool,
    /// [`Store::owner_tag`], worked out once: a command asks for it several times, and each time would
    /// canonicalize the path again.
    owner: Arc<std::sync::OnceLock<String>>,
    /// Set while this process holds the writer lock, whose taking checked the state dir and made its
    /// directories: until it is let go nobody else changes them (they are this user's alone, and the store is
    /// only removed under the lock), so the check is not repeated for every file (it was a hundred `stat`s per
    /// command).
    verified: Arc<std::sync::atomic::AtomicBool>,
}

/// Parsed ledgers by path, each with the file identity it was parsed at.
type LedgerCache = HashMap<PathBuf, (FileId, Arc<Ledger>)>;

/// Inode, length and modification time: a ledger only grows by appends (or is replaced whole, which changes
/// the inode), so these name its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId(u64, u64, i64, i64);

impl FileId {
    fn of(m: &fs::Metadata) -> FileId {
        FileId(m.ino(), m.len(), m.mtime(), m.mtime_nsec())
    }

    fn stamp(self) -> Stamp {
        // The times' bits as they are (a stamp is only compared for equality): the same value as always.
        [
            self.0,
            self.1,
            u64::from_ne_bytes(self.2.to_ne_bytes()),
            u64::from_ne_bytes(self.3.to_ne_bytes()),
        ]
    }
}

/// What a join reads of a network's ledger: its index when that is current (a few KiB, whatever the number of
/// sandboxes), else the ledger itself.
#[derive(Debug, Clone)]
pub enum AllocationsView {
    Index(Index),
    Ledger(Arc<Ledger>),
}

impl AllocationsView {
    /// How many addresses are allocated, of the family with more (each sandbox holds one of each family its
    /// network has, so this is its number of sandboxes, IPv6-only networks included).
    pub fn addresses(&self) -> usize {
        match self {
            AllocationsView::Index(ix) => ix.addresses().max(ix.addresses6()),
            AllocationsView::Ledger(l) => l.addresses().max(l.holders6().count()),
        }
    }

    /// Whether a published port may conflict with `m`: an index knows only that one of its host ports is in
    /// use, the ledger knows on which host address (and whether that overlaps).
    pub fn may_conflict(&self, m: &PortMapping) -> bool {
        match self {
            AllocationsView::Index(ix) => ix.port_taken(m),
            AllocationsView::Ledger(l) => l.published().any(|(_, p)| p.conflicts_with(m)),
        }
    }

    /// The ledger, when that is what was read.
    pub fn ledger(&self) -> Option<&Ledger> {
        match self {
            AllocationsView::Index(_) => None,
            AllocationsView::Ledger(l) => Some(l),
        }
    }
}

impl Allocated for AllocationsView {
    fn is_allocated(&self, ip: std::net::Ipv4Addr) -> bool {
        match self {
            AllocationsView::Index(ix) => ix.is_allocated(ip),
            AllocationsView::Ledger(l) => l.is_allocated(ip),
        }
    }

    fn holder(&self, ip: std::net::Ipv4Addr) -> Option<&str> {
        self.ledger()?.holder(ip)
    }

    fn cursor(&self) -> Option<std::net::Ipv4Addr> {
        match self {
            AllocationsView::Index(ix) => ix.cursor(),
            AllocationsView::Ledger(l) => Allocated::<std::net::Ipv4Addr>::cursor(l.as_ref()),
        }
    }
}

impl Allocated<std::net::Ipv6Addr> for AllocationsView {
    fn is_allocated(&self, ip: std::net::Ipv6Addr) -> bool {
        match self {
            AllocationsView::Index(ix) => ix.is_allocated6(ip),
            AllocationsView::Ledger(l) => l.is_allocated(ip),
        }
    }

    fn holder(&self, ip: std::net::Ipv6Addr) -> Option<&str> {
        self.ledger()?.holder(ip)
    }

    fn cursor(&self) -> Option<std::net::Ipv6Addr> {
        match self {
            AllocationsView::Index(ix) => Allocated::<std::net::Ipv6Addr>::cursor(ix),
            AllocationsView::Ledger(l) => l.cursor6(),
        }
    }
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
        self.store
            .verified
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Store {
    /// A store rooted at `dir`. Nothing is created until something is written or locked.
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store {
            dir: dir.into(),
            ledgers: Default::default(),
            indexes: Default::default(),
            set_aside: true,
            owner: Default::default(),
            verified: Default::default(),
        }
    }

    /// The same store for a dry run: a record that cannot be read is left out with a warning, not moved.
    pub fn read_only(mut self) -> Store {
        self.set_aside = false;
        self
    }

    /// Check that the state dir can be trusted: it, its subdirectories and its lock file are owned by this
    /// user, writable by nobody else, and not symlinks. The lock functions do this; dry runs, which take no
    /// lock, call it themselves.
    pub fn check(&self) -> Result<(), StoreError> {
        if self.verified.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        trust::check_dir(&self.dir)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The tag on the namespaces this store's sandboxes own (`lo`'s alias inside them): `nsnet:STATE_DIR`.
    /// Several stores can share a host (tests do); `gc` reaps only namespaces with its own tag.
    /// Host links carry it too (their alias). The same before and after the state dir exists: a missing dir is
    /// named through its parent's canonical path.
    pub fn owner_tag(&self) -> String {
        self.owner.get_or_init(|| self.work_out_owner_tag()).clone()
    }

    fn work_out_owner_tag(&self) -> String {
        let dir = fs::canonicalize(&self.dir).unwrap_or_else(|_| {
            let parent = self.dir.parent().filter(|p| !p.as_os_str().is_empty());
            match (parent.map(fs::canonicalize), self.dir.file_name()) {
                (Some(Ok(p)), Some(name)) => p.join(name),
                _ => std::path::absolute(&self.dir).unwrap_or_else(|_| self.dir.clone()),
            }
        });
        let dir = dir.display().to_string();
        // The tag goes into link aliases, table comments and iptables comments (256 bytes at most, quoted):
        // a long or unusual path is named by its hash instead.
        let plain = dir.len() <= 160
            && dir
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b));
        if plain {
            format!("{TAG_PREFIX}{dir}")
        } else {
            format!("{TAG_PREFIX}#{:08x}", crate::names::short_hash(&[&dir]))
        }
    }

    fn ensure_dirs(&self) -> Result<(), StoreError> {
        if self.verified.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        // Checked first, so nothing is made inside a directory someone else could change.
        self.check()?;
        for d in [
            self.dir.clone(),
            self.dir.join("networks"),
            self.dir.join("sandboxes"),
            self.dir.join("tmp"),
        ] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&d)
                .map_err(io_err("create state directory", &d))?;
        }
        Ok(())
    }

    /// This host's identity in overlay networks (`host-id`): made once at random and kept with the state, so a
    /// restarted agent knows its own leases (an address or a hostname can change; the state stays).
    pub fn host_id(&self) -> Result<String, StoreError> {
        let path = self.dir.join("host-id");
        if let Some(text) = read_text(&path)? {
            let id = text.trim();
            if (8..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(id.to_string());
            }
            return Err(StoreError::Corrupt {
                path,
                reason: "it is not a host id (8 to 64 hex digits)".into(),
            });
        }
        self.ensure_dirs()?;
        let mut bytes = [0u8; 8];
        File::open("/dev/urandom")
            .and_then(|mut f| io::Read::read_exact(&mut f, &mut bytes))
            .map_err(io_err("read random bytes", Path::new("/dev/urandom")))?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.write_text(&path, &format!("{id}\n"))?;
        Ok(id)
    }

    /// A shared lock for readers (`ls`, `inspect`), so they never see a command's records half written.
    /// `None` when there is no state at all (nothing to read, and no lock file to create).
    pub fn read_lock(&self) -> Result<Option<File>, StoreError> {
        self.check()?;
        let path = self.dir.join("lock");
        let file = match trust::open_read(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("open lock file", &path)(e)),
        };
        file.lock_shared().map_err(io_err("lock", &path))?;
        Ok(Some(file))
    }

    /// Take the writer lock, creating the state dir on first use. Blocks until other writers are done.
    pub fn lock(&self) -> Result<Lock, StoreError> {
        let path = self.dir.join("lock");
        loop {
            self.ensure_dirs()?;
            let file = open_for_writing(&path).map_err(io_err("open lock file", &path))?;
            file.lock().map_err(io_err("lock", &path))?;
            // The previous holder may have removed the (empty) store while we waited: then we hold a lock on
            // an unlinked file, and must lock the current one instead.
            let locked = file.metadata().map_err(io_err("stat lock file", &path))?;
            match fs::metadata(&path) {
                Ok(now) if now.ino() == locked.ino() && now.dev() == locked.dev() => {
                    self.verified
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    return Ok(Lock {
                        _file: file,
                        store: self.clone(),
                    });
                }
                _ => continue,
            }
        }
    }

    /// Write a file atomically: a temp file in `tmp/`, fsync, rename over `path`, fsync its directory.
    fn write_text(&self, path: &Path, text: &str) -> Result<(), StoreError> {
        self.write_file(path, text, true)
    }

    /// Write a file atomically (a temp file in `tmp/` renamed over `path`), and with `durable`, make it survive
    /// a power loss (fsync the file, then its directory).
    ///
    /// Sandbox records are written without: what they describe (a namespace, its veths, its firewall
    /// elements) dies with the kernel, so a power loss that tears or loses a record has removed its sandbox
    /// too, and `nsnet gc` matches what is left to the empty kernel (a record whose namespace is gone is
    /// released, addresses held by no record go back, a record left empty is removed). The rename alone
    /// keeps a killed command's write whole for the next one (the page cache outlives the process). Settings,
    /// which outlive a reboot, are synced. The two fsyncs were about a millisecond of every create and removal.
    fn write_file(&self, path: &Path, text: &str, durable: bool) -> Result<(), StoreError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let tmp = self.dir.join("tmp").join(format!(
            "{}.{name}",
            dir.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io_err("write state file", &tmp))?;
        f.write_all(text.as_bytes())
            .map_err(io_err("write state file", &tmp))?;
        if durable {
            f.sync_all().map_err(io_err("sync state file", &tmp))?;
        }
        if let Err(e) = fs::rename(&tmp, path) {
            // Not left for the next command's recovery to find.
            let _ = fs::remove_file(&tmp);
            return Err(io_err("replace state file", path)(e));
        }
        if !durable {
            return Ok(());
        }
        // The rename is durable once the directory is synced too.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync state directory", dir))
    }

    fn network_path(&self, name: &str) -> PathBuf {
        self.dir.join(network_file(name))
    }

    fn sandbox_path(&self, name: &str) -> PathBuf {
        self.dir.join(sandbox_file(name))
    }

    fn ledger_path(&self, name: &str) -> PathBuf {
        self.dir.join(ledger_file(name))
    }

    /// A network with what it has handed out (its ledger, read). A network whose files cannot be read is set
    /// aside (see [`Store::network_or_aside`]) and reads as none.
    pub fn network_record(&self, name: &str) -> Result<Option<NetworkRecord>, StoreError> {
        let loaded = read(&self.network_path(name), name)
            .and_then(|n| n.map(|n| self.with_ledger(n)).transpose());
        self.network_or_aside(name, loaded)
    }

    /// A network's settings: its ledger is not read.
    pub fn network(&self, name: &str) -> Result<Option<Network>, StoreError> {
        self.network_or_aside(name, read(&self.network_path(name), name))
    }

    /// `loaded`, unless it failed because the network's files are corrupt: then they are set aside (settings,
    /// ledger and index together: a ledger without its network, or a network without its ledger, would hand
    /// out addresses that are taken) and the network reads as none. Not while sandboxes are still on it: they
    /// would be left on a network nsnet no longer knows, whose bridge `gc` would take for nobody's.
    fn network_or_aside<T>(
        &self,
        name: &str,
        loaded: Result<Option<T>, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let (path, reason) = match loaded {
            Err(StoreError::Corrupt { path, reason }) => (path, reason),
            other => return other,
        };
        let users: Vec<String> = self
            .sandboxes()?
            .into_iter()
            .filter(|sb| sb.endpoints.iter().any(|e| e.network == name))
            .map(|sb| sb.name)
            .collect();
        if !users.is_empty() {
            return Err(StoreError::CorruptInUse {
                path,
                reason,
                network: name.into(),
                users,
            });
        }
        let files = [
            self.network_path(name),
            self.ledger_path(name),
            self.index_path(name),
        ];
        self.put_aside(&path, &reason, &files)?;
        self.indexes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        Ok(None)
    }

    /// `loaded`, unless it failed because the sandbox's record is corrupt: then the record is set aside and
    /// the sandbox reads as none. Its addresses stay allocated in its networks' ledgers, under its name.
    fn sandbox_or_aside(
        &self,
        name: &str,
        loaded: Result<Option<Sandbox>, StoreError>,
    ) -> Result<Option<Sandbox>, StoreError> {
        match loaded {
            Err(StoreError::Corrupt { path, .. }) if torn_by_power_loss(&path) => {
                // Only a power loss leaves one (nsnet renames every record into place whole, and writes
                // sandbox records without fsync), and it took the sandbox away with the kernel: set aside,
                // it would stop every `gc` until a human came. Removed, its addresses, held by no record
                // now, are released by `gc` as a missing record's are.
                if self.set_aside {
                    remove(&path)?;
                    eprintln!(
                        "nsnet: warning: state file {} was torn by a power loss, which took its sandbox too; \
                         removed it",
                        path.display()
                    );
                }
                Ok(None)
            }
            Err(StoreError::Corrupt { path, reason }) => {
                self.put_aside(&path, &reason, &[self.sandbox_path(name)])?;
                Ok(None)
            }
            other => other,
        }
    }

    /// Move `files` to `quarantine/` because `path` (one of them) is corrupt, and say so in one line on
    /// stderr; a dry run only says it leaves them out.
    fn put_aside(&self, path: &Path, reason: &str, files: &[PathBuf]) -> Result<(), StoreError> {
        if !self.set_aside {
            eprintln!(
                "nsnet: warning: state file {} is corrupt ({reason}); left out (a command that is not a dry \
                 run moves it to {})",
                path.display(),
                self.dir.join(trust::QUARANTINE).display()
            );
            return Ok(());
        }
        let moved = trust::move_aside(&self.dir, files)?;
        if moved.is_empty() {
            // Another reader set it aside meanwhile, and said so.
            return Ok(());
        }
        let to: Vec<String> = moved.iter().map(|(_, d)| d.display().to_string()).collect();
        eprintln!(
            "nsnet: warning: state file {} is corrupt ({reason}); moved it to {} and carrying on without it: \
             repair it and move it back, or remove what it describes by hand",
            path.display(),
            to.join(", ")
        );
        Ok(())
    }

    /// The files set aside in `quarantine/`, by path.
    pub fn quarantined(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(self.dir.join(trust::QUARANTINE)) else {
            return vec![];
        };
        let mut out: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        out.sort();
        out
    }

    fn with_ledger(&self, settings: Network) -> Result<NetworkRecord, StoreError> {
        let allocations = match self.ledger(&self.ledger_path(&settings.name))? {
            Some(ledger) => ledger.allocations(),
            None => Allocations::default(),
        };
        Ok(NetworkRecord {
            settings,
            allocations,
        })
    }

    /// Every network's settings, each with what it has handed out as its index says, or its ledger where the
    /// index is not current: what a join plans from.
    pub fn networks_in_place(&self) -> Result<Vec<(Network, AllocationsView)>, StoreError> {
        let mut out = Vec::new();
        for name in self.names("networks")? {
            let loaded = read::<Network>(&self.network_path(&name), &name).and_then(|n| {
                let Some(n) = n else { return Ok(None) };
                let allocated = match self.current_index(&n.name) {
                    Some(ix) => AllocationsView::Index(ix),
                    None => AllocationsView::Ledger(self.ledger_of(&n.name)?),
                };
                Ok(Some((n, allocated)))
            });
            out.extend(self.network_or_aside(&name, loaded)?);
        }
        Ok(out)
    }

    /// The names of the records in `networks/` or `sandboxes/` (their `.json` files), sorted.
    fn names(&self, sub: &str) -> Result<Vec<String>, StoreError> {
        let dir = self.dir.join(sub);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(io_err("list state directory", &dir)(e)),
        };
        let mut names = Vec::new();
        for e in entries.filter_map(|e| e.ok()) {
            let file = e.file_name().to_string_lossy().into_owned();
            let Some(name) = file.strip_suffix(".json") else {
                continue;
            };
            // nsnet writes no such file, and no command could name it: set it aside rather than skip it.
            if let Err(reason) = crate::names::check_name("record", name) {
                self.put_aside(&e.path(), &reason, &[e.path()])?;
                continue;
            }
            names.push(name.to_string());
        }
        names.sort();
        Ok(names)
    }

    /// A network's ledger, parsed (empty when it has none).
    pub fn ledger_of(&self, name: &str) -> Result<Arc<Ledger>, StoreError> {
        Ok(self.ledger(&self.ledger_path(name))?.unwrap_or_default())
    }

    fn index_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("networks/{name}.index"))
    }

    /// A network's index, if it describes its ledger as the ledger is now.
    fn current_index(&self, name: &str) -> Option<Index> {
        let now = FileId::of(&fs::metadata(self.ledger_path(name)).ok()?).stamp();
        let mut cache = self.indexes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ix) = cache.get(name).filter(|ix| ix.stamp == now) {
            return Some(ix.clone());
        }
        let ix = Index::decode(&read_bytes(&self.index_path(name)).ok()?)?;
        if ix.stamp != now {
            return None;
        }
        cache.insert(name.to_string(), ix.clone());
        Some(ix)
    }

    /// Whether a network's index, if it claims to describe the ledger as it is now, says what the ledger says
    /// (a stale or missing index is fine: it is not used). For tests that kill commands halfway.
    pub fn index_agrees(&self, name: &str) -> bool {
        let Some(ix) = self.current_index(name) else {
            return true;
        };
        self.ledger_of(name)
            .is_ok_and(|ledger| Index::of(&ledger, ix.stamp) == ix)
    }

    /// Write a network's index for its ledger as it is now; best effort (a failed write leaves no index, and
    /// the next command parses the ledger instead).
    fn put_index(&self, name: &str, mut ix: Index) {
        let path = self.index_path(name);
        let written = fs::metadata(self.ledger_path(name)).and_then(|m| {
            ix.stamp = FileId::of(&m).stamp();
            let bytes = ix.encode();
            let f = open_for_writing(&path)?;
            std::os::unix::fs::FileExt::write_all_at(&f, &bytes, 0)?;
            f.set_len(bytes.len() as u64)
        });
        let mut cache = self.indexes.lock().unwrap_or_else(|e| e.into_inner());
        match written {
            Ok(()) => {
                cache.insert(name.to_string(), ix);
            }
            Err(_) => {
                cache.remove(name);
                let _ = fs::remove_file(&path);
            }
        }
    }

    /// Remove a network's index, file and cached copy.
    fn drop_index(&self, name: &str) -> Result<(), StoreError> {
        self.indexes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        remove(&self.index_path(name))
    }

    /// The index of a ledger about to be appended to, if it costs no parse: the current index, or one built
    /// from the ledger this process parsed while the file was as it is now.
    fn index_before_append(&self, name: &str) -> Option<Index> {
        if let Some(ix) = self.current_index(name) {
            return Some(ix);
        }
        let path = self.ledger_path(name);
        let id = FileId::of(&fs::metadata(&path).ok()?);
        let cache = self.ledgers.lock().unwrap_or_else(|e| e.into_inner());
        let (seen, ledger) = cache.get(&path)?;
        (*seen == id).then(|| Index::of(ledger, id.stamp()))
    }

    /// A ledger file parsed; `None` when there is none.
    fn ledger(&self, path: &Path) -> Result<Option<Arc<Ledger>>, StoreError> {
        // Its own metadata, not a symlink target's: a symlink fails to open below, as corrupt.
        let id = match fs::symlink_metadata(path) {
            Ok(m) => FileId::of(&m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read state file", path)(e)),
        };
        let mut cache = self.ledgers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, ledger)) = cache.get(path) {
            if *seen == id {
                return Ok(Some(ledger.clone()));
            }
        }
        let Some(text) = read_text(path)? else {
            return Ok(None);
        };
        let ledger = Arc::new(parse_ledger(path, text)?);
        // Cached only if the file did not change while it was read.
        if id.1 == ledger.len() {
            cache.insert(path.to_path_buf(), (id, ledger.clone()));
        }
        Ok(Some(ledger))
    }

    /// A sandbox's record. One that cannot be read is set aside and reads as none.
    pub fn sandbox(&self, name: &str) -> Result<Option<Sandbox>, StoreError> {
        self.sandbox_or_aside(name, read(&self.sandbox_path(name), name))
    }

    /// Every network with what it has handed out, by name; those whose files cannot be read are set aside
    /// (see [`Store::network_record`]).
    pub fn network_records(&self) -> Result<Vec<NetworkRecord>, StoreError> {
        let mut out = Vec::new();
        for name in self.names("networks")? {
            out.extend(self.network_record(&name)?);
        }
        Ok(out)
    }

    /// Every network's settings, by name (no ledger is read).
    pub fn networks(&self) -> Result<Vec<Network>, StoreError> {
        let mut out = Vec::new();
        for name in self.names("networks")? {
            out.extend(self.network(&name)?);
        }
        Ok(out)
    }

    /// Every sandbox, by name; those whose records cannot be read are set aside.
    pub fn sandboxes(&self) -> Result<Vec<Sandbox>, StoreError> {
        let mut out = Vec::new();
        for name in self.names("sandboxes")? {
            out.extend(self.sandbox(&name)?);
        }
        Ok(out)
    }

    /// The length of a network's ledger before a command appends to it. Read from the index when that is
    /// current, so a join never parses the ledger.
    fn ledger_len(&self, name: &str) -> Result<u64, StoreError> {
        match self.current_index(name) {
            Some(ix) => Ok(ix.stamp[1]),
            None => Ok(self.ledger_of(name)?.len()),
        }
    }

    /// Rewrite the ledgers among `files` that are mostly dead lines, and write their indexes afresh. A separate
    /// step, called under the lock once a command's records are written and its intent is cleared: an intent
    /// holds a ledger's length (a rollback truncates to it), so a ledger must not be rewritten while an intent
    /// that names it may still be acted on, and [`Store::file_states`], which writes those lengths, only reads.
    /// The content stays the same (the rewrite is atomic), so a failure here loses nothing but space.
    pub fn compact(&self, files: &[FileState]) -> Result<(), StoreError> {
        for f in files {
            let FileState::Ledger { path, .. } = f else {
                continue;
            };
            let Some(name) = ledger_name(path) else {
                continue;
            };
            // The index says so without parsing the ledger (a join's common case).
            if self
                .current_index(name)
                .is_some_and(|ix| !ix.wants_compaction())
            {
                continue;
            }
            let full = self.ledger_path(name);
            let Some(ledger) = self.ledger(&full)? else {
                continue;
            };
            if !ledger.wants_compaction() {
                continue;
            }
            let fresh = ledger.compacted();
            self.write_text(&full, &fresh)?;
            let fresh = parse_ledger(&full, fresh)?;
            self.put_index(name, Index::of(&fresh, [0; 4]));
        }
        Ok(())
    }

    /// What the files of these records hold now, and what they will hold once the records are written.
    /// Files that do not change are left out of both. Only reads: it changes no file (see [`Store::compact`]).
    pub fn file_states(
        &self,
        records: &[Record],
    ) -> Result<(Vec<FileState>, Vec<FileState>), StoreError> {
        let (mut before, mut after) = (Vec::new(), Vec::new());
        let mut whole = |path: String, content: Option<String>| -> Result<(), StoreError> {
            let now = read_text(&self.dir.join(&path))?;
            if now != content {
                before.push(FileState::Whole {
                    path: path.clone(),
                    content: now,
                });
                after.push(FileState::Whole { path, content });
            }
            Ok(())
        };
        let mut ledgers = Vec::new();
        let mut joins = Vec::new();
        for r in records {
            match r {
                Record::Network(n) => {
                    let text = pretty(&n.settings, &self.network_path(&n.settings.name))?;
                    whole(network_file(&n.settings.name), Some(text))?;
                    ledgers.push(n);
                }
                Record::Settings(n) => {
                    let text = pretty(n, &self.network_path(&n.name))?;
                    whole(network_file(&n.name), Some(text))?;
                }
                Record::NoNetwork(name) => {
                    whole(network_file(name), None)?;
                    whole(ledger_file(name), None)?;
                }
                Record::Sandbox(sb) => {
                    let text = pretty(sb, &self.sandbox_path(&sb.name))?;
                    whole(sandbox_file(&sb.name), Some(text))?
                }
                Record::NoSandbox(name) => whole(sandbox_file(name), None)?,
                Record::Joined {
                    network,
                    sandbox,
                    ip,
                    ip6,
                    ports,
                } => joins.push((network, Ledger::joined(sandbox, *ip, *ip6, ports))),
            }
        }
        // Each ledger's lines, gathered into one append per file at the length it has now (a new network's
        // record and its first join both write to its ledger).
        let mut appends: Vec<(&str, u64, String)> = Vec::new();
        for n in ledgers {
            let current = self.ledger_of(&n.settings.name)?;
            appends.push((
                &n.settings.name,
                current.len(),
                current.changes_to(&n.allocations),
            ));
        }
        for (name, lines) in &joins {
            match appends.iter_mut().find(|(n, _, _)| n == name) {
                Some((_, _, all)) => all.push_str(lines),
                None => appends.push((name, self.ledger_len(name)?, lines.clone())),
            }
        }
        for (name, len, append) in appends {
            if append.is_empty() {
                continue;
            }
            let path = ledger_file(name);
            before.push(FileState::Ledger {
                path: path.clone(),
                len,
                append: String::new(),
            });
            after.push(FileState::Ledger { path, len, append });
        }
        Ok((before, after))
    }

    /// Make the files hold exactly these contents.
    pub fn set_files(&self, files: &[FileState]) -> Result<(), StoreError> {
        self.ensure_dirs()?;
        for f in files {
            die_before_write();
            match f {
                FileState::Whole {
                    path,
                    content: Some(text),
                } => self.write_file(&self.dir.join(path), text, !is_sandbox_file(path))?,
                FileState::Whole {
                    path,
                    content: None,
                } => {
                    remove(&self.dir.join(path))?;
                    if let Some(name) = ledger_name(path) {
                        self.drop_index(name)?;
                    }
                }
                FileState::Ledger { path, len, append } => self.set_ledger(path, *len, append)?,
            }
        }
        Ok(())
    }

    /// Make a ledger its first `len` bytes followed by `append`, and keep its index: an append takes the same
    /// lines; anything else (a rollback's truncation) drops it, for the next command to rebuild.
    fn set_ledger(&self, path: &str, len: u64, append: &str) -> Result<(), StoreError> {
        let full = self.dir.join(path);
        let name = ledger_name(path);
        let appending = !append.is_empty()
            && match fs::metadata(&full) {
                Ok(m) => m.len() == len,
                Err(_) => len == 0,
            };
        let index = match name {
            Some(_) if appending && len == 0 => Some(Index::of(&Ledger::default(), [0; 4])),
            Some(n) if appending => self.index_before_append(n),
            _ => None,
        };
        append_at(&full, len, append)?;
        let Some(name) = name else {
            return Ok(());
        };
        match index.map(|mut ix| ix.follow(append).map(|()| ix)) {
            Some(Ok(ix)) => self.put_index(name, ix),
            _ => self.drop_index(name)?,
        }
        Ok(())
    }

    /// Whether the files hold exactly these contents.
    pub fn files_are(&self, files: &[FileState]) -> bool {
        files.iter().all(|f| match f {
            FileState::Whole { path, content } => {
                read_bytes(&self.dir.join(path))
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    == *content
            }
            FileState::Ledger { path, len, append } => {
                read_bytes(&self.dir.join(path)).is_ok_and(|b| {
                    b.len() as u64 == len + append.len() as u64 && b.ends_with(append.as_bytes())
                })
            }
        })
    }

    /// Record a command in flight, in the first free intent slot; returns it flocked, to clear when done.
    /// The slot is written in place (not through a rename: the flock that tells recovery its command is alive
    /// is on the slot's inode), so a kill or a power loss mid-write can leave a prefix of it. Its command has
    /// done nothing yet then, and recovery discards the torn intent; a whole intent it cannot read, it never
    /// discards (see [`Store::intents`]).
    pub fn put_intent(&self, intent: &Intent) -> Result<IntentFile, StoreError> {
        let dir = self.dir.join("intents");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err("create state directory", &dir))?;
        let text = pretty(
            &IntentOnDisk {
                format: INTENT_FORMAT,
                written_by: env!("CARGO_PKG_VERSION"),
                intent,
            },
            &dir,
        )?;
        for slot in 0.. {
            let path = dir.join(format!("{slot}.json"));
            let file = open_for_writing(&path).map_err(io_err("open intent", &path))?;
            if !try_lock(&file, &path)? {
                continue;
            }
            // A killed command's intent is recovery's to finish, never to overwrite.
            if file.metadata().map_err(io_err("stat intent", &path))?.len() != 0 {
                continue;
            }
            // Not synced to disk: an intent is for a command that dies (killed, OOM, a panic), and the page
            // cache keeps its write for the next command whatever becomes of the writer. A power loss takes the
            // kernel objects it describes along; the records it would reconcile are each written atomically,
            // and `nsnet gc` matches them to the (empty) kernel. Its sync was the one fsync on
            // every command's path before any kernel change, and the widest spread of their times.
            std::os::unix::fs::FileExt::write_all_at(&file, text.as_bytes(), 0)
                .map_err(io_err("write intent", &path))?;
            return Ok(IntentFile { path, file });
        }
        unreachable!("the slot loop only ends by returning")
    }

    /// Every intent left by a command that is no longer running (its flock is free), flocked for the caller.
    /// A torn one (its command was killed while writing it, before touching anything) is cleared on the way.
    /// One this nsnet cannot read (a newer nsnet's, or a format it no longer reads) is an error that names it
    /// and says what to do, and stays where it is: its command may have changed the kernel, and dropping it
    /// would lose the only record of how to undo that.
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
            let file = match OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) if trust::is_link(&e) => return Err(linked(&path)),
                Err(e) => return Err(io_err("open intent", &path)(e)),
            };
            if !try_lock(&file, &path)? {
                continue;
            }
            let mut bytes = Vec::new();
            io::Read::read_to_end(&mut &file, &mut bytes).map_err(io_err("read intent", &path))?;
            if bytes.is_empty() {
                continue;
            }
            match parse_intent(&bytes) {
                Ok(intent) => out.push((IntentFile { path, file }, intent)),
                Err(Unreadable::Torn) => self.remove_intent(IntentFile { path, file })?,
                Err(Unreadable::Format {
                    command,
                    written_by,
                    reason,
                }) => {
                    return Err(StoreError::UnreadableIntent(Box::new(UnreadableIntent {
                        path,
                        command,
                        written_by,
                        reason,
                    })))
                }
            }
        }
        Ok(out)
    }

    /// Whether a command that is no longer running left an intent (its slot is not empty, and nobody holds
    /// its flock): its records may be half written until recovery deals with it. Only looks; takes nothing.
    pub fn has_unfinished_intents(&self) -> Result<bool, StoreError> {
        let dir = self.dir.join("intents");
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(false);
        };
        for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
            let file = match trust::open_read(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) if trust::is_link(&e) => return Err(linked(&path)),
                Err(e) => return Err(io_err("open intent", &path)(e)),
            };
            let used = file.metadata().is_ok_and(|m| m.len() > 0);
            // A live command holds its slot exclusively; a shared try succeeds only on a dead one's.
            if used && file.try_lock_shared().is_ok() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Remove the temp files of writes that were killed before their rename (call with the lock held: then
    /// no write is in flight).
    pub fn remove_stale_temp_files(&self) -> Result<(), StoreError> {
        let Ok(entries) = fs::read_dir(self.dir.join("tmp")) else {
            return Ok(());
        };
        for e in entries.filter_map(|e| e.ok()) {
            remove(&e.path())?;
        }
        Ok(())
    }

    /// The intent is dealt with: its slot is free again.
    pub fn remove_intent(&self, intent: IntentFile) -> Result<(), StoreError> {
        intent
            .file
            .set_len(0)
            .map_err(io_err("clear intent", &intent.path))
    }

    /// Remove the state dir itself when it holds no networks and no sandboxes (called with the lock held).
    fn remove_if_empty(&self) -> Result<(), StoreError> {
        let has_files = |sub: &str| {
            fs::read_dir(self.dir.join(sub))
                .map(|mut d| d.next().is_some())
                .unwrap_or(false)
        };
        // Records set aside keep the store too: they are for a human to repair, never to lose.
        if has_files("networks") || has_files("sandboxes") || has_files(trust::QUARANTINE) {
            return Ok(());
        }
        // Free intent slots go with the store; one in use (or left by a killed command) keeps it.
        if let Ok(slots) = fs::read_dir(self.dir.join("intents")) {
            for slot in slots.filter_map(|e| e.ok()) {
                let path = slot.path();
                let free = File::open(&path).is_ok_and(|f| {
                    f.try_lock().is_ok() && f.metadata().is_ok_and(|m| m.len() == 0)
                });
                if !free {
                    return Ok(());
                }
                remove(&path)?;
            }
        }
        for sub in trust::SUBDIRS {
            let _ = fs::remove_dir(self.dir.join(sub));
        }
        let _ = fs::remove_file(self.dir.join("lock"));
        // The resolver's lock file, when no resolver holds it (it stops with its last sandbox, and removes it).
        let resolver = self.dir.join("dns.lock");
        if File::open(&resolver).is_ok_and(|f| f.try_lock().is_ok()) {
            let _ = fs::remove_file(&resolver);
        }
        let _ = fs::remove_dir(&self.dir);
        Ok(())
    }
}

/// In test builds with the `fault-injection` feature, `NSNET_KILL_AT_WRITE=K` SIGKILLs the process just before
/// the K-th record file it writes (counting from 1), to stop a command at an exact point between its kernel
/// work and its records, or between two of its records.
#[cfg(feature = "fault-injection")]
fn die_before_write() {
    static WRITES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let Some(at) = std::env::var("NSNET_KILL_AT_WRITE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    else {
        return;
    };
    if WRITES.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == at {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(not(feature = "fault-injection"))]
fn die_before_write() {}

/// Where a network's record lives, relative to the state dir.
fn network_file(name: &str) -> String {
    format!("networks/{name}.json")
}

/// Where a network's ledger lives, relative to the state dir.
fn ledger_file(name: &str) -> String {
    format!("networks/{name}.ledger")
}

/// The network whose ledger is at `path` (relative to the state dir).
fn ledger_name(path: &str) -> Option<&str> {
    path.strip_prefix("networks/")?.strip_suffix(".ledger")
}

/// Where a sandbox's record lives, relative to the state dir.
fn sandbox_file(name: &str) -> String {
    format!("sandboxes/{name}.json")
}

/// Take an intent's lock without waiting: false when its command still holds it. (std's file locks are
/// flock(2) on Linux, the same lock the nsnet of any version takes.)
fn try_lock(file: &File, path: &Path) -> Result<bool, StoreError> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err("lock", path)(e)),
    }
}

/// A record as the pretty JSON text of its file (`path` names it in the error).
fn pretty<T: Serialize>(value: &T, path: &Path) -> Result<String, StoreError> {
    serde_json::to_string_pretty(value)
        .map(|t| t + "\n")
        .map_err(|e| StoreError::Corrupt {
            path: path.into(),
            reason: e.to_string(),
        })
}

/// A state file's text; `None` when there is no such file. A symlink or anything but a regular file is corrupt:
/// nsnet wrote neither.
fn read_text(path: &Path) -> Result<Option<String>, StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        path: path.into(),
        reason: reason.into(),
    };
    let mut file = match trust::open_read(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if trust::is_link(&e) => return Err(corrupt("it is a symlink")),
        Err(e) => return Err(io_err("read state file", path)(e)),
    };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Err(corrupt("it is not a regular file"));
    }
    let mut text = String::new();
    match io::Read::read_to_string(&mut file, &mut text) {
        Ok(_) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(corrupt("it is not UTF-8 text")),
        Err(e) => Err(io_err("read state file", path)(e)),
    }
}

/// A state file's bytes, without following a symlink.
fn read_bytes(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut trust::open_read(path)?, &mut bytes)?;
    Ok(bytes)
}

/// The error for an intent slot that is a symlink.
fn linked(path: &Path) -> StoreError {
    StoreError::Untrusted {
        path: path.into(),
        problem: "is a symlink, and nsnet follows none inside its state dir".into(),
        fix: "remove it (it is no intent nsnet wrote)".into(),
    }
}

fn parse_ledger(path: &Path, text: String) -> Result<Ledger, StoreError> {
    Ledger::parse(text).map_err(|reason| StoreError::Corrupt {
        path: path.into(),
        reason,
    })
}

/// A record, checked against the name it is read under (its file's); `None` when there is no such file. A
/// name that no record can have (one a ledger line or an endpoint gave) has no file either.
fn read<T: Loaded>(path: &Path, name: &str) -> Result<Option<T>, StoreError> {
    if crate::names::check_name("record", name).is_err() {
        return Ok(None);
    }
    let Some(text) = read_text(path)? else {
        return Ok(None);
    };
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.into(),
        reason,
    };
    let record: T = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    record.check(name).map_err(corrupt)?;
    Ok(Some(record))
}

/// A record as read from its file: what must hold before nsnet acts on it.
trait Loaded: DeserializeOwned {
    /// Whether the record is what its file `name` says (a record named otherwise would make `rm a` remove
    /// `b`), and the interface names it would hand the kernel are names.
    fn check(&self, name: &str) -> Result<(), String>;
}

fn same_name(kind: &str, recorded: &str, file: &str) -> Result<(), String> {
    if recorded == file {
        Ok(())
    } else {
        Err(format!(
            "it names {kind} '{recorded}', but its file is that of '{file}'"
        ))
    }
}

impl Loaded for Network {
    fn check(&self, name: &str) -> Result<(), String> {
        same_name("network", &self.name, name)?;
        crate::names::check_ifname(&self.interface)
    }
}

impl Loaded for Sandbox {
    fn check(&self, name: &str) -> Result<(), String> {
        same_name("sandbox", &self.name, name)?;
        for ep in &self.endpoints {
            crate::names::check_name("network", &ep.network)?;
            crate::names::check_ifname(&ep.host_interface)?;
            crate::names::check_ifname(&ep.interface)?;
        }
        Ok(())
    }
}

/// Open a state file for writing, creating it (0600) if missing, never truncating it.
fn open_for_writing(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Whether a record file is what a power loss leaves of one whose data was not all on disk yet (its length
/// landed, some of its bytes did not): a regular file holding nothing, NUL bytes, or a prefix of a JSON
/// document followed by NULs. A prefix alone, or a whole document that is not a record, is not torn: a hand
/// edit or a damaged disk, for a human to look at.
fn torn_by_power_loss(path: &Path) -> bool {
    if !fs::symlink_metadata(path).is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut bytes = Vec::new();
    if trust::open_read(path)
        .and_then(|mut f| io::Read::read_to_end(&mut f, &mut bytes))
        .is_err()
    {
        return false;
    }
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let body = &bytes[..end];
    body.iter().all(u8::is_ascii_whitespace)
        || (end < bytes.len()
            && serde_json::from_slice::<serde_json::Value>(body).is_err_and(|e| e.is_eof()))
}

/// Whether `path` (relative to the state dir) is a sandbox record, which lives only as long as the boot.
fn is_sandbox_file(path: &str) -> bool {
    path.starts_with("sandboxes/")
}

/// Make a ledger file its first `len` bytes followed by `append` (no file when both are empty).
///
/// Not synced, like sandbox records (see [`Store::write_file`]): every line is about a sandbox's address or
/// port, which a power loss takes away with the kernel; a lost line leaves an address held by a sandbox that
/// `nsnet gc` releases (its namespace is gone, or it has no record), and a torn last line is left out when the
/// ledger is read ([`Ledger::parse`]). The sync was a fifth of a millisecond on every create and removal.
fn append_at(path: &Path, len: u64, append: &str) -> Result<(), StoreError> {
    if len == 0 && append.is_empty() {
        return remove(path);
    }
    let f = open_for_writing(path).map_err(io_err("open ledger", path))?;
    f.set_len(len).map_err(io_err("truncate ledger", path))?;
    std::os::unix::fs::FileExt::write_all_at(&f, append.as_bytes(), len)
        .map_err(io_err("append to ledger", path))?;
    Ok(())
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

    fn net(name: &str) -> NetworkRecord {
        NetworkRecord::new(Network::bridge(
            name,
            "10.89.0.0/24".parse().unwrap(),
            "10.89.0.1".parse().unwrap(),
            "nsnet0",
        ))
    }

    /// Write records the way commands do: their files as they will be, made so, then compacted.
    fn write(store: &Store, records: Vec<Record>) {
        let (_, after) = store.file_states(&records).unwrap();
        store.set_files(&after).unwrap();
        store.compact(&after).unwrap();
    }

    /// Settings are written apart from what a network has handed out: changing a setting (a mark, a host chain)
    /// cannot release anybody's address, whatever the copy of the settings it started from.
    #[test]
    fn writing_settings_leaves_the_allocations_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path());
        let _lock = store.lock().unwrap();
        let mut n = net("a");
        let ip: std::net::Ipv4Addr = "10.89.0.2".parse().unwrap();
        n.allocations.addresses.insert(ip, "s".into());
        n.allocations.last_allocated = Some(ip);
        write(&store, vec![Record::Network(n.clone())]);
        let mut settings = store.network("a").unwrap().unwrap();
        settings.removing = true;
        let (_, after) = store
            .file_states(&[Record::Settings(settings.clone())])
            .unwrap();
        assert!(
            after.iter().all(|f| !matches!(f, FileState::Ledger { .. })),
            "{after:?}"
        );
        store.set_files(&after).unwrap();
        let back = store.network_record("a").unwrap().unwrap();
        assert_eq!(back.settings, settings);
        assert_eq!(back.allocations, n.allocations);
        assert_eq!(back.allocations.users(), vec!["s"]);
    }

    #[test]
    fn an_unusual_state_dir_is_tagged_by_its_hash() {
        let plain = Store::new("/var/lib/nsnet").owner_tag();
        assert_eq!(plain, "nsnet:/var/lib/nsnet");
        for odd in [
            "/tmp/a b",
            "/tmp/it's",
            "/tmp/back\\slash",
            &format!("/{}", "d".repeat(200)),
        ] {
            let tag = Store::new(odd).owner_tag();
            assert!(
                tag.starts_with("nsnet:#") && tag.len() == 15,
                "{odd}: {tag}"
            );
        }
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
        assert_eq!(store.network_record("a").unwrap(), Some(net("a")));
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
    fn a_ledger_grows_by_lines_rolls_back_by_truncation_and_stays_small() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path());
        let _lock = store.lock().unwrap();
        let empty = net("a");
        write(&store, vec![Record::Network(empty.clone())]);
        let mut n = empty.clone();
        let ip: std::net::Ipv4Addr = "10.89.0.2".parse().unwrap();
        n.allocations.addresses.insert(ip, "s".into());
        n.allocations.last_allocated = Some(ip);
        let (before, after) = store.file_states(&[Record::Network(n.clone())]).unwrap();
        // The settings did not change: only one line goes to the ledger.
        assert_eq!(
            after,
            vec![FileState::Ledger {
                path: "networks/a.ledger".into(),
                len: 0,
                append: "+ip 10.89.0.2 s\n".into()
            }]
        );
        store.set_files(&after).unwrap();
        assert!(store.files_are(&after));
        assert_eq!(store.network_record("a").unwrap(), Some(n.clone()));
        assert!(!fs::read_to_string(store.network_path("a"))
            .unwrap()
            .contains("10.89.0.2"));
        // Rolling back truncates to where the command started: here, no ledger at all.
        store.set_files(&before).unwrap();
        assert_eq!(store.network_record("a").unwrap(), Some(empty));
        assert!(!store.ledger_path("a").exists());

        // Hand out and give back 500 addresses: the file is compacted as it goes.
        for i in 0..500u32 {
            let ip = std::net::Ipv4Addr::from(0x0a59_0002 + i % 250);
            n.allocations.addresses.insert(ip, format!("t{i}"));
            n.allocations.last_allocated = Some(ip);
            write(&store, vec![Record::Network(n.clone())]);
            n.allocations.addresses.remove(&ip);
            write(&store, vec![Record::Network(n.clone())]);
        }
        assert_eq!(store.network_record("a").unwrap(), Some(n.clone()));
        let lines = fs::read_to_string(store.ledger_path("a"))
            .unwrap()
            .lines()
            .count();
        assert!(lines <= 70, "{lines} lines");
    }

    #[test]
    fn joins_keep_the_index_current_and_anything_else_drops_it() {
        let tmp = tempfile::tempdir().unwrap();
        let _lock = Store::new(tmp.path()).lock().unwrap();
        // Each command is a new process: a fresh store, with nothing parsed yet.
        let store = || Store::new(tmp.path());
        let indexed = |s: &Store| match &s.networks_in_place().unwrap()[0].1 {
            AllocationsView::Index(ix) => Some(ix.addresses()),
            AllocationsView::Ledger(_) => None,
        };
        write(&store(), vec![Record::Network(net("a"))]);
        let join = |i: u32| Record::Joined {
            network: "a".into(),
            sandbox: format!("s{i}"),
            ip: Some(std::net::Ipv4Addr::from(0x0a59_0002 + i)),
            ip6: None,
            ports: vec![],
        };
        for i in 0..3 {
            write(&store(), vec![join(i)]);
        }
        // The first join made the index; the next ones read it, never the ledger, and kept it current.
        assert_eq!(indexed(&store()), Some(3));
        assert!(store().index_agrees("a"));

        // A rolled-back join truncates the ledger: the index is dropped, and the ledger is read instead.
        let (before, after) = store().file_states(&[join(3)]).unwrap();
        store().set_files(&after).unwrap();
        assert_eq!(indexed(&store()), Some(4));
        store().set_files(&before).unwrap();
        assert_eq!(indexed(&store()), None);
        assert_eq!(store().ledger_of("a").unwrap().addresses(), 3);
        // The next join that parsed the ledger writes the index again.
        write(&store(), vec![join(3)]);
        assert_eq!(indexed(&store()), Some(4));

        // Removals (written from the whole record) and compaction keep it current too.
        for _ in 0..40 {
            let s = store();
            let mut n = s.network_record("a").unwrap().unwrap();
            n.allocations.release("s3");
            write(&s, vec![Record::Network(n)]);
            write(&store(), vec![join(3)]);
        }
        assert!(store().ledger_of("a").unwrap().lines() < 64);
        assert_eq!(indexed(&store()), Some(4));
        assert!(store().index_agrees("a"));

        // A ledger changed behind nsnet's back no longer matches the index's stamp.
        let mut f = OpenOptions::new()
            .append(true)
            .open(store().ledger_path("a"))
            .unwrap();
        f.write_all(b"-ip 10.89.0.2\n").unwrap();
        assert_eq!(indexed(&store()), None);
        write(&store(), vec![Record::NoNetwork("a".into())]);
        assert!(!store().index_path("a").exists());
    }

    fn sandbox(name: &str, network: &str) -> Sandbox {
        Sandbox {
            name: name.into(),
            netns: format!("/run/netns/{name}").into(),
            owned: true,
            netns_id: None,
            cni: false,
            endpoints: vec![crate::model::Endpoint {
                network: network.into(),
                interface: "eth0".into(),
                host_interface: "veth0bce226a".into(),
                mac: crate::model::Mac::for_ipv4("10.89.0.2".parse().unwrap()),
                address: Some("10.89.0.2/24".parse().unwrap()),
                gateway: Some("10.89.0.1".parse().unwrap()),
                default_route: true,
                mtu: 1500,
                ports: vec![],
                removing: false,
                aliases: vec![],
                ipv6: None,
            }],
            removing: false,
            dns_servers: vec![],
        }
    }

    /// What `quarantine/` holds: each file's name (without the time it was moved) and content.
    fn quarantine(store: &Store) -> Vec<(String, String)> {
        store
            .quarantined()
            .iter()
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                let name = name.rsplit_once('.').unwrap().0.to_string();
                let content = fs::read_link(p)
                    .map(|t| format!("-> {}", t.display()))
                    .unwrap_or_else(|_| fs::read_to_string(p).unwrap());
                (name, content)
            })
            .collect()
    }

    #[test]
    fn a_corrupt_record_is_set_aside_and_the_rest_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path().join("state"));
        let lock = store.lock().unwrap();
        write(
            &store,
            vec![
                Record::Network(net("a")),
                Record::Network(net("b")),
                Record::Sandbox(sandbox("s", "a")),
                Record::Sandbox(sandbox("t", "a")),
            ],
        );
        fs::write(store.sandbox_path("s"), "{\"name\": \"s\", ").unwrap();
        assert_eq!(store.sandboxes().unwrap(), vec![sandbox("t", "a")]);
        assert_eq!(store.sandbox("s").unwrap(), None);
        assert_eq!(
            quarantine(&store),
            vec![("sandboxes.s.json".into(), "{\"name\": \"s\", ".into())]
        );
        let mode = fs::metadata(store.dir().join("quarantine")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);

        // A network's corrupt ledger: while a sandbox is on it, it stays, and the error says why.
        fs::write(store.ledger_path("a"), "+ip nonsense\n").unwrap();
        let err = store.network_records().unwrap_err().to_string();
        assert!(
            err.contains("networks/a.ledger is corrupt")
                && err.contains("sandboxes t are still on"),
            "{err}"
        );
        assert!(store.ledger_path("a").exists());
        // Once nobody is on it, the network goes aside whole: its settings with its ledger.
        write(&store, vec![Record::NoSandbox("t".into())]);
        assert_eq!(store.network_records().unwrap(), vec![net("b")]);
        let names: Vec<String> = quarantine(&store).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            ["networks.a.json", "networks.a.ledger", "sandboxes.s.json"]
        );

        // The store is not removed with its last record while something sits in quarantine.
        write(&store, vec![Record::NoNetwork("b".into())]);
        drop(lock);
        assert_eq!(quarantine(&store).len(), 3);
    }

    /// What a power loss leaves of a record written without fsync (nothing, NULs, a prefix then NULs) is
    /// removed, not set aside: its sandbox went with the power. A prefix alone still goes aside.
    #[test]
    fn a_record_torn_by_a_power_loss_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path().join("state"));
        let _lock = store.lock().unwrap();
        let torn: [&[u8]; 4] = [b"", b"\0\0\0\0", b"{\"name\": \"s\", \0\0", b"\n"];
        for bytes in torn {
            write(&store, vec![Record::Sandbox(sandbox("s", "a"))]);
            fs::write(store.sandbox_path("s"), bytes).unwrap();
            assert_eq!(store.sandbox("s").unwrap(), None, "{bytes:?}");
            assert!(!store.sandbox_path("s").exists(), "{bytes:?}");
            assert!(quarantine(&store).is_empty(), "{bytes:?}");
        }
        fs::write(store.sandbox_path("s"), "{\"name\": \"s\"}\0").unwrap();
        assert_eq!(store.sandbox("s").unwrap(), None);
        assert_eq!(quarantine(&store).len(), 1);
    }

    #[test]
    fn records_under_another_name_with_bad_interfaces_or_symlinked_are_set_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path().join("state"));
        let _lock = store.lock().unwrap();
        write(
            &store,
            vec![
                Record::Network(net("n")),
                Record::Sandbox(sandbox("b", "n")),
            ],
        );
        // sandboxes/a.json saying it is b: `rm a` would remove b's namespace.
        let b = fs::read_to_string(store.sandbox_path("b")).unwrap();
        fs::write(store.sandbox_path("a"), &b).unwrap();
        assert_eq!(store.sandbox("a").unwrap(), None);
        assert_eq!(store.sandbox("b").unwrap(), Some(sandbox("b", "n")));
        assert_eq!(quarantine(&store), vec![("sandboxes.a.json".into(), b)]);

        let mut bad = sandbox("c", "n");
        bad.endpoints[0].host_interface = "../../etc/x".into();
        write(&store, vec![Record::Sandbox(bad)]);
        let mut long = net("m");
        long.settings.interface = "a-very-long-ifname".into();
        write(&store, vec![Record::Network(long)]);
        let mut empty = net("e");
        empty.settings.interface = String::new();
        write(&store, vec![Record::Network(empty)]);
        assert_eq!(store.sandboxes().unwrap(), vec![sandbox("b", "n")]);
        assert_eq!(store.network_records().unwrap(), vec![net("n")]);

        // A record that is a symlink is set aside as the link; its target is not touched.
        let elsewhere = tmp.path().join("elsewhere.json");
        fs::write(
            &elsewhere,
            fs::read_to_string(store.sandbox_path("b")).unwrap(),
        )
        .unwrap();
        fs::remove_file(store.sandbox_path("b")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, store.sandbox_path("b")).unwrap();
        assert_eq!(store.sandboxes().unwrap(), vec![]);
        assert!(elsewhere.exists());
        let q = quarantine(&store);
        assert!(
            q.contains(&(
                "sandboxes.b.json".into(),
                format!("-> {}", elsewhere.display())
            )),
            "{q:?}"
        );
        assert_eq!(q.len(), 5, "{q:?}");
    }

    #[test]
    fn an_untrusted_state_dir_is_refused_with_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path().join("state"));
        drop(
            store
                .lock()
                .map(|_l| write(&store, vec![Record::Network(net("a"))])),
        );
        let dir = store.dir().to_path_buf();
        let refused = |want: &str| {
            let w = store.lock().map(|_| ()).unwrap_err().to_string();
            let r = store.read_lock().map(|_| ()).unwrap_err().to_string();
            assert!(w.contains(want), "{w}");
            assert_eq!(w, r);
            w
        };
        let chmod =
            |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();

        chmod(&dir, 0o777);
        let e = refused(&format!("run `chmod 0700 {}`", dir.display()));
        assert!(e.contains("writable by group or others (mode 0777)"), "{e}");
        chmod(&dir, 0o700);
        chmod(&dir.join("networks"), 0o770);
        refused(&format!("run `chmod 0700 {}/networks`", dir.display()));
        chmod(&dir.join("networks"), 0o700);

        std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
        let e = refused(&format!(
            "chown {} {}",
            nix::unistd::geteuid(),
            dir.display()
        ));
        assert!(e.contains("owned by uid 65534"), "{e}");
        std::os::unix::fs::chown(&dir, Some(nix::unistd::geteuid().as_raw()), None).unwrap();

        // A symlinked subdirectory, and a symlinked lock file.
        let real = tmp.path().join("real-sandboxes");
        fs::create_dir(&real).unwrap();
        fs::remove_dir(dir.join("sandboxes")).unwrap();
        std::os::unix::fs::symlink(&real, dir.join("sandboxes")).unwrap();
        refused("sandboxes: it is a symlink");
        fs::remove_file(dir.join("sandboxes")).unwrap();
        let lock = tmp.path().join("other-lock");
        fs::write(&lock, "").unwrap();
        fs::remove_file(dir.join("lock")).unwrap();
        std::os::unix::fs::symlink(&lock, dir.join("lock")).unwrap();
        refused("lock: it is a symlink");
        fs::remove_file(dir.join("lock")).unwrap();

        // Repaired, it is used again; the record was never touched.
        drop(store.lock().unwrap());
        assert_eq!(store.network_records().unwrap(), vec![net("a")]);
    }

    #[test]
    fn an_intent_is_unfinished_only_once_its_command_is_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path());
        let _lock = store.lock().unwrap();
        assert!(!store.has_unfinished_intents().unwrap());
        let intent = Intent {
            command: "create a".into(),
            setup: true,
            undo: vec![],
            redo: vec![],
            finish: None,
            before: vec![],
            after: vec![],
        };
        // Held by its (live) command: a reader leaves it alone.
        let slot = store.put_intent(&intent).unwrap();
        assert!(!store.has_unfinished_intents().unwrap());
        // Its command died (its flock went with it): a reader must recover before it reads.
        drop(slot);
        assert!(store.has_unfinished_intents().unwrap());
        for (slot, _) in store.intents().unwrap() {
            store.remove_intent(slot).unwrap();
        }
        assert!(!store.has_unfinished_intents().unwrap());
    }

    /// An intent as a command of format 1 writes it, with one of every step, firewall rule and change,
    /// namespace, backend and file state. Intents on disk outlive the nsnet that wrote them (a command killed
    /// before an upgrade), so this file is frozen: it must keep parsing, to the same values. A change that
    /// breaks that needs a new format ([`INTENT_FORMAT`]) that still reads this one, and a golden file of its own.
    const GOLDEN_1: &str = include_str!("../../tests/golden/intent-format-1.json");
    /// Format 2 added the overlay network's steps and rules (a VXLAN device, peers, VXLAN members): an nsnet
    /// of format 1 cannot know them, so it refuses such an intent by its format instead of by a parse error.
    const GOLDEN_2: &str = include_str!("../../tests/golden/intent-format-2.json");
    /// Format 3 added the fast path's tunnel (cross-host traffic on the fast path).
    const GOLDEN_3: &str = include_str!("../../tests/golden/intent-format-3.json");
    /// Format 4 added the sandboxes' resolv.conf files (names, `dns`) and host-gw's fast path filter on the
    /// underlay (`UnderlayFilter`, `RemoveUnderlayFilter`).
    const GOLDEN_4: &str = include_str!("../../tests/golden/intent-format-4.json");
    /// Format 5 (IPv6, issue #19) widened addresses and default routes to either family and gave `Sysctl` a
    /// namespace: an nsnet of format 4 would read such a sysctl as the host's, so it must refuse the intent.
    const GOLDEN_5: &str = include_str!("../../tests/golden/intent-format-5.json");

    /// The variant names of an externally tagged enum, as serde lists them when asked for one it does not have
    /// ("unknown variant `x`, expected one of `A`, `B`"): a variant added later is found without anyone
    /// remembering to list it here.
    fn variants<T: DeserializeOwned + std::fmt::Debug>() -> Vec<String> {
        let err = serde_json::from_str::<T>(r#"{"no such variant": null}"#)
            .expect_err("no such variant")
            .to_string();
        let (_, expected) = err
            .split_once("expected")
            .expect("serde lists the variants");
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(String::from)
            .collect()
    }

    /// Every object key and string in a JSON value: where the variant names of a serialized value show.
    fn words(v: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
        match v {
            serde_json::Value::String(s) => {
                out.insert(s.clone());
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| words(v, out)),
            serde_json::Value::Object(o) => {
                for (k, v) in o {
                    out.insert(k.clone());
                    words(v, out);
                }
            }
            _ => {}
        }
    }

    /// Whether everything `old` says, `new` says the same way (`new` may say more: a field added since, with a
    /// default). A field renamed with `#[serde(default)]` would parse from old files silently wrong; this
    /// catches it.
    fn said_again(old: &serde_json::Value, new: &serde_json::Value) -> bool {
        use serde_json::Value;
        match (old, new) {
            (Value::Object(o), Value::Object(n)) => o
                .iter()
                .all(|(k, v)| n.get(k).is_some_and(|w| said_again(v, w))),
            (Value::Array(o), Value::Array(n)) => {
                o.len() == n.len() && o.iter().zip(n).all(|(v, w)| said_again(v, w))
            }
            _ => old == new,
        }
    }

    #[test]
    fn intents_of_format_1_keep_parsing() {
        golden_parses(GOLDEN_1, 1, false);
    }

    #[test]
    fn intents_of_format_2_keep_parsing() {
        golden_parses(GOLDEN_2, 2, false);
    }

    #[test]
    fn intents_of_format_3_keep_parsing() {
        golden_parses(GOLDEN_3, 3, false);
    }

    #[test]
    fn intents_of_format_4_keep_parsing() {
        golden_parses(GOLDEN_4, 4, false);
    }

    #[test]
    fn intents_of_format_5_keep_parsing() {
        golden_parses(GOLDEN_5, 5, true);
    }

    /// A golden intent of `format` parses to the values it holds; `every_variant`: it holds every variant there
    /// is (the newest format's file does).
    fn golden_parses(text: &str, format: u64, every_variant: bool) {
        let intent = parse_intent(text.as_bytes()).expect("the golden intent parses");
        let mut golden: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(golden["format"], format);
        // Parsed to the same values: written again, it says all the file said, under the same names.
        let again = serde_json::to_value(&intent).unwrap();
        let envelope = golden.as_object_mut().unwrap();
        envelope.remove("format");
        envelope.remove("written_by");
        assert!(
            said_again(&golden, &again),
            "the golden intent no longer reads as it was written:\n{golden:#}\nreads as\n{again:#}"
        );
        // Every variant is in it, so renaming any of them breaks this test.
        let mut seen = Default::default();
        words(&golden, &mut seen);
        let all = [
            ("Step", variants::<Step>()),
            ("Rule", variants::<crate::firewall::Rule>()),
            ("Change", variants::<crate::firewall::Change>()),
            ("Backend", variants::<crate::firewall::Backend>()),
            ("Ns", variants::<crate::plan::Ns>()),
            ("FileState", variants::<FileState>()),
            ("Proto", variants::<crate::portmap::Proto>()),
        ];
        for (kind, names) in all.into_iter().filter(|_| every_variant) {
            assert!(names.len() > 1, "{kind}: {names:?}");
            let missing: Vec<&String> = names.iter().filter(|n| !seen.contains(*n)).collect();
            assert!(
                missing.is_empty(),
                "{kind} variants {missing:?} are not in tests/golden/intent-format-{format}.json: a new \
                 variant goes into a new format's golden file"
            );
        }
        // The golden intent finishes one kind of teardown; the others, as format 1 writes them.
        assert_eq!(variants::<Removal>(), ["Sandbox", "Network", "Endpoint"]);
        for (json, want) in [
            (r#"{"Sandbox": "s"}"#, Removal::Sandbox("s".into())),
            (r#"{"Network": "n"}"#, Removal::Network("n".into())),
        ] {
            assert_eq!(serde_json::from_str::<Removal>(json).unwrap(), want);
        }
        // Written before intents carried a format: the same, format 1.
        let unnumbered = serde_json::to_string(&golden).unwrap();
        assert!(parse_intent(unnumbered.as_bytes()).is_ok());
    }

    #[test]
    fn a_torn_intent_is_any_prefix_and_nothing_else() {
        let whole = GOLDEN_1.as_bytes();
        let json_end = whole.len() - 1; // the text ends with "}\n"
        for cut in 0..json_end {
            assert_eq!(
                parse_intent(&whole[..cut]).map(|_| ()),
                Err(Unreadable::Torn),
                "cut at {cut}"
            );
        }
        // A power loss can leave the file's new length with zeros where the data did not land.
        let mut padded = whole[..100].to_vec();
        padded.extend([0; 300]);
        assert_eq!(parse_intent(&padded).map(|_| ()), Err(Unreadable::Torn));
        assert!(parse_intent(&whole[..json_end]).is_ok());
        // Whole, but not JSON (a hand edit, a damaged disk): not torn, so not dropped.
        let garbled = GOLDEN_1.replacen("\"undo\"", "undo", 1);
        assert!(matches!(
            parse_intent(garbled.as_bytes()),
            Err(Unreadable::Format { .. })
        ));
    }

    #[test]
    fn an_intent_this_nsnet_cannot_read_is_refused_and_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path().join("state"));
        let _lock = store.lock().unwrap();
        let slot = store
            .put_intent(&Intent {
                command: "create a".into(),
                setup: true,
                undo: vec![Step::DeleteNetns { name: "a".into() }],
                redo: vec![],
                finish: None,
                before: vec![],
                after: vec![],
            })
            .unwrap();
        let path = slot.path.clone();
        drop(slot); // its command died
        let written = fs::read_to_string(&path).unwrap();
        assert!(
            written.contains(&format!("\"format\": {INTENT_FORMAT}"))
                && written.contains("\"written_by\"")
        );

        // A later nsnet renamed a step, then was killed and downgraded: this one cannot read the step.
        let renamed = written.replace("DeleteNetns", "RemoveNetns");
        fs::write(&path, &renamed).unwrap();
        let err = store.intents().map(|_| ()).unwrap_err().to_string();
        for want in [
            format!(
                "cannot read the intent the killed `nsnet create a` left in {}",
                path.display()
            ),
            "unknown variant `RemoveNetns`".into(),
            format!("written by nsnet {}", env!("CARGO_PKG_VERSION")),
            "run `nsnet gc` with nsnet".into(),
            format!("move the file out of {}", path.parent().unwrap().display()),
        ] {
            assert!(err.contains(&want), "{want:?} not in: {err}");
        }
        assert!(!err.contains('\n'), "{err}");
        // Still there, untouched, and still what readers must recover first (so they refuse too).
        assert_eq!(fs::read_to_string(&path).unwrap(), renamed);
        assert!(store.has_unfinished_intents().unwrap());
        // The next command does not take the slot over either.
        let other = store
            .put_intent(&Intent {
                command: "create b".into(),
                ..Intent::clone(&serde_json::from_str(&written).unwrap())
            })
            .unwrap();
        assert_ne!(other.path, path);
        drop(other);

        // A newer format is not guessed at, even where it would parse.
        let newer = INTENT_FORMAT + 1;
        fs::write(
            &path,
            written.replace(
                &format!("\"format\": {INTENT_FORMAT}"),
                &format!("\"format\": {newer}"),
            ),
        )
        .unwrap();
        let err = store.intents().map(|_| ()).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "format {newer}, newer than this nsnet's {INTENT_FORMAT}"
            )),
            "{err}"
        );
        assert!(fs::metadata(&path).unwrap().len() > 0);

        // One from before intents carried a format is format 1, and read.
        let mut old: serde_json::Value = serde_json::from_str(&written).unwrap();
        old.as_object_mut().unwrap().remove("format");
        old.as_object_mut().unwrap().remove("written_by");
        fs::write(&path, serde_json::to_string_pretty(&old).unwrap()).unwrap();
        let found = store.intents().unwrap();
        assert_eq!(found.len(), 2, "the old intent and create b's");

        // A torn one is cleared: its command had done nothing yet.
        drop(found);
        fs::write(&path, &written[..written.len() / 2]).unwrap();
        let found = store.intents().unwrap();
        assert_eq!(found.len(), 1, "create b's");
        assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    }

    #[test]
    fn file_states_only_reads_and_compaction_is_its_own_step() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path());
        let _lock = store.lock().unwrap();
        let mut n = net("a");
        write(&store, vec![Record::Network(n.clone())]);
        // Hand out and give back addresses, writing without compacting: mostly dead lines.
        for i in 0..100u32 {
            let ip = std::net::Ipv4Addr::from(0x0a59_0002 + i);
            for allocated in [true, false] {
                if allocated {
                    n.allocations.addresses.insert(ip, format!("t{i}"));
                    n.allocations.last_allocated = Some(ip);
                } else {
                    n.allocations.addresses.remove(&ip);
                }
                let (_, after) = store.file_states(&[Record::Network(n.clone())]).unwrap();
                store.set_files(&after).unwrap();
            }
        }
        let ledger = fs::read(store.ledger_path("a")).unwrap();
        assert!(store.ledger_of("a").unwrap().wants_compaction());

        // Working out a command's files changes none of them.
        let ip = std::net::Ipv4Addr::from(0x0a59_00f0);
        n.allocations.addresses.insert(ip, "u".into());
        let (before, after) = store.file_states(&[Record::Network(n.clone())]).unwrap();
        assert_eq!(fs::read(store.ledger_path("a")).unwrap(), ledger);
        assert_eq!(
            before,
            vec![FileState::Ledger {
                path: "networks/a.ledger".into(),
                len: ledger.len() as u64,
                append: String::new()
            }]
        );

        // Written, then compacted as its own step: the same entries, in a few lines, with a current index.
        store.set_files(&after).unwrap();
        store.compact(&after).unwrap();
        let lines = fs::read_to_string(store.ledger_path("a"))
            .unwrap()
            .lines()
            .count();
        assert!(lines < 5, "{lines} lines");
        assert_eq!(store.network_record("a").unwrap(), Some(n));
        assert!(store.index_agrees("a"));
    }
}
