//! Operations: each public method is one command, written as request → validate → plan → apply → record.
//!
//! Validation reads the state and the host (addresses, routes, link names) and fails with
//! [`Error::Invalid`] before anything changes. The plan comes from the pure builders in [`crate::plan::build`].
//! With `dry_run` the plan is returned unapplied; otherwise [`crate::apply`] carries it out and the records are
//! written last; a failed write rolls the kernel back.

mod check;
mod explain;
mod firewall;
mod gc;
pub(crate) mod host;
mod network;
mod overlay;
mod query;
mod reap;
mod resolver;
mod sandbox;
mod topology;

pub use host::Underlay;
pub use network::{Ipv6Request, NetworkRequest};
pub use overlay::{vtep_mac, vxlan_device, OverlayJoin, PeerSync, VXLAN_OVERHEAD};
pub use query::SandboxStatus;
pub(crate) use reap::detach;
pub use reap::{reaper_for, REAPER_ENV};
pub use resolver::ResolverStatus;
pub use sandbox::{AttachRequest, Target};

use crate::apply::{Applier, Observer, Undo};
use crate::error::{Error, Result};
use crate::firewall::{Backend, Tables, TablesOwner};
use crate::invalid;
use crate::plan::Plan;
use crate::plan::Step;
use crate::store::{Intent, Lock, Record, Removal, Store};
use host::Host;

/// Name of the network `create`/`run`/`attach` use when none is given; created on first use.
pub const DEFAULT_NETWORK: &str = "nsnet0";

/// Told how far a long command has got: what it is doing, how many of how many things are done (`nsnet`
/// draws it as a line on a terminal). The library only counts.
pub type Progress = std::sync::Arc<dyn Fn(&str, usize, usize) + Send + Sync>;

/// What a long command counts for [`Nsnet::progress`]: the steps `counts` picks, out of `total`.
pub(crate) struct Tally {
    pub what: String,
    pub total: usize,
    pub counts: Box<dyn Fn(&Step) -> bool + Send + Sync>,
}

/// nsnet's operations over one state dir.
pub struct Nsnet {
    /// The records. Private to the library: commands change them under the writer lock, and readers go
    /// through the queries (`networks`, `sandbox`, ...), which take the shared lock.
    pub(crate) store: Store,
    /// Plan only: return the plan, change nothing (no state dir, no lock file, no kernel change).
    pub dry_run: bool,
    /// The firewall backend new networks use (`--firewall`); `None` takes the one the host's networks
    /// already use, or nftables.
    pub firewall: Option<Backend>,
    /// How the caller names its inputs in messages ([`Terms::CLI`] unless the caller says otherwise).
    pub terms: Terms,
    /// Told about each kernel and firewall step just before it runs (`nsnet -v`).
    pub observer: Option<Observer>,
    /// Told how far `network rm --force` and `gc` have got.
    pub progress: Option<Progress>,
    /// The program started (with [`REAPER_ENV`]) to delete the veths a removal retired, off its path: the
    /// binaries name themselves. `None`: the next reaper or `gc` deletes them.
    pub reaper: Option<std::path::PathBuf>,
}

/// How the caller names the inputs a message may tell the user to change: the CLI's flags, or the CNI
/// configuration's fields. A CNI error that says `--ip` sends an operator looking for a flag that does not
/// exist in a configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    /// The address asked for.
    pub ip: &'static str,
    /// A published port.
    pub port: &'static str,
    /// A published port's host address.
    pub host_ip: &'static str,
    /// The MAC address asked for.
    pub mac: &'static str,
    /// The sandbox's name.
    pub name: &'static str,
    pub subnet: &'static str,
    pub bridge: &'static str,
    pub firewall: &'static str,
    pub mtu: &'static str,
    pub isolate: &'static str,
    pub fast_path: &'static str,
    /// [`crate::model::NetOptions`]: masquerade, the gateway on the bridge, hairpin mode.
    pub masquerade: &'static str,
    pub host_gateway: &'static str,
    pub hairpin: &'static str,
    pub gateway_mode: &'static str,
    /// Names and upstream resolvers ([`crate::dns`]).
    pub dns: &'static str,
    /// A sandbox's other names.
    pub alias: &'static str,
    /// The IPv6 address asked for.
    pub ip6: &'static str,
    /// What gives a network its IPv6 part.
    pub ipv6: &'static str,
}

impl Terms {
    /// The CLI's flags (settings it has no flag for are named in words).
    pub const CLI: Terms = Terms {
        ip: "--ip",
        port: "-p",
        host_ip: "-p HOST_IP",
        mac: "MAC address",
        name: "--name",
        subnet: "--subnet",
        bridge: "--bridge",
        firewall: "--firewall",
        mtu: "--mtu",
        isolate: "--isolate",
        fast_path: "--fast-path",
        masquerade: "masquerade",
        host_gateway: "gateway on the bridge",
        hairpin: "hairpin mode",
        gateway_mode: "--gateway-mode",
        dns: "--dns",
        alias: "--alias",
        ip6: "--ip6",
        ipv6: "--ipv6 (or an IPv6 --subnet)",
    };
    /// A CNI network configuration's fields.
    pub const CNI: Terms = Terms {
        ip: "runtimeConfig.ips",
        port: "runtimeConfig.portMappings",
        host_ip: "runtimeConfig.portMappings hostIP",
        mac: "runtimeConfig.mac",
        name: "CNI_CONTAINERID",
        subnet: "ipam.subnet",
        bridge: "bridge",
        firewall: "firewall",
        mtu: "mtu",
        isolate: "isolate",
        fast_path: "fastPath",
        masquerade: "ipMasq",
        host_gateway: "isGateway",
        hairpin: "hairpinMode",
        gateway_mode: "gatewayMode",
        dns: "resolver",
        alias: "runtimeConfig.aliases",
        ip6: "runtimeConfig.ips",
        ipv6: "IPv6 (ipam.ranges)",
    };
}

impl Default for Terms {
    fn default() -> Terms {
        Terms::CLI
    }
}

impl Nsnet {
    /// nsnet over the state dir `state_dir` (nothing is read or made until a command runs). A dry run plans
    /// and reads, and changes nothing.
    pub fn new(state_dir: impl Into<std::path::PathBuf>, dry_run: bool) -> Nsnet {
        let store = Store::new(state_dir);
        Nsnet {
            // A dry run changes nothing, not even by moving a corrupt record aside.
            store: if dry_run { store.read_only() } else { store },
            dry_run,
            firewall: None,
            terms: Terms::CLI,
            observer: None,
            progress: None,
            reaper: None,
        }
    }

    /// An applier for this command's steps, telling [`Nsnet::observer`] about each.
    fn applier(&self) -> Applier {
        Applier::observed(self.observer.clone())
    }

    /// An applier that also tells [`Nsnet::progress`] of each step `tally` counts, as it is done.
    fn applier_with(&self, tally: Option<Tally>) -> Applier {
        let (Some(progress), Some(tally)) = (self.progress.clone(), tally) else {
            return self.applier();
        };
        if tally.total == 0 {
            return self.applier();
        }
        let inner = self.observer.clone();
        let done = std::sync::atomic::AtomicUsize::new(0);
        Applier::observed(Some(std::sync::Arc::new(move |step: &Step, phase| {
            if let Some(o) = &inner {
                o(step, phase);
            }
            if matches!(phase, crate::apply::Phase::Do) && (tally.counts)(step) {
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                progress(&tally.what, n.min(tally.total), tally.total);
            }
        })))
    }

    /// The writer lock, except for dry runs, which only read. Whatever a killed command left half done is
    /// finished or rolled back first (see [`Nsnet::recover`]).
    fn lock(&self) -> Result<Option<Lock>> {
        if self.dry_run {
            // No lock, but the same trust in what it reads.
            self.store.check()?;
            return Ok(None);
        }
        let lock = self.store.lock()?;
        self.recover()?;
        self.revive_resolver(false);
        Ok(Some(lock))
    }

    /// The shared lock for readers (the queries, CNI `CHECK`, `exec`), so they never see a command's records
    /// half written. Records can also be half written by a command that was killed: its intent is still on disk,
    /// and no live process holds it. Then the reader first takes the writer lock, which runs the recovery
    /// every changing command runs ([`Nsnet::recover`]), and reads after that. `None` when there is no state.
    fn read_lock(&self) -> Result<Option<std::fs::File>> {
        // Each round recovers what was left before it; a command killed between two rounds is rare, and
        // three rounds bound a reader racing a crash loop.
        for _ in 0..3 {
            let shared = self.store.read_lock()?;
            if self.dry_run || shared.is_none() || !self.store.has_unfinished_intents()? {
                return Ok(shared);
            }
            drop(shared);
            drop(self.lock()?);
        }
        Ok(self.store.read_lock()?)
    }

    /// Apply a set-up plan, then write the records; if writing fails, undo the plan. An intent on disk covers
    /// the whole span, so a kill at any point is rolled back by the next command.
    fn bring_up(&self, plan: Plan, records: Vec<Record>) -> Result<Plan> {
        if self.dry_run {
            return Ok(plan);
        }
        if records.is_empty() {
            // Nothing to record (`firewall reload`): its one transaction lands whole or not at all, so there is
            // nothing to recover, and rolling it back would wipe the firewall.
            let _kept = self.applier().apply(&plan)?;
            return Ok(plan);
        }
        let (before, after) = self.store.file_states(&records)?;
        let undo: Vec<Step> = plan.steps.iter().rev().filter_map(Step::undo).collect();
        let intent = self.store.put_intent(&Intent {
            command: self.command(),
            setup: true,
            undo,
            redo: vec![],
            finish: None,
            before,
            after: after.clone(),
        })?;
        let mut applier = self.applier();
        let done = match applier.apply(&plan) {
            Ok(undo) => undo,
            Err(e) => {
                self.store.remove_intent(intent)?;
                return Err(e);
            }
        };
        if let Err(cause) = self.store.set_files(&after) {
            let rollback = done.rollback(&mut applier);
            self.store.remove_intent(intent)?;
            return Err(Error::RolledBack {
                cause: Box::new(cause.into()),
                rollback,
            });
        }
        // Told while the intent is still there: a kill before it leaves the telling to the recovery.
        self.tell_resolver(&records);
        self.store.remove_intent(intent)?;
        self.compact(&after);
        applier.settle(&plan);
        Ok(plan)
    }

    /// Compact the ledgers a command just wrote, once its intent is cleared (see [`Store::compact`]). Best
    /// effort: the command is done and recorded, and a ledger left long is still right.
    fn compact(&self, written: &[crate::store::FileState]) {
        if let Err(e) = self.store.compact(written) {
            eprintln!(
                "nsnet: warning: {e} (compacting the ledger; it stays as it is, which is fine)"
            );
        }
    }

    /// Take an object down, all or nothing, without holding the lock while the kernel is slow (each link
    /// deletion, and each nf_tables commit that deletes elements, waits for an RCU grace period):
    ///
    /// 1. under `lock` (held by the caller): write an intent, and `mark` the object as being removed, so
    ///    nothing joins it and its addresses and ports stay reserved;
    /// 2. without the lock: delete its links and namespace (`kernel`). A sandbox's or endpoint's own nftables
    ///    elements are deleted at the same time, on a second thread, so the two grace periods overlap: the
    ///    mark keeps anyone else from being handed those addresses and ports, and `firewall reload` leaves
    ///    marked endpoints out;
    /// 3. under the lock again: delete the remaining firewall elements (a network's, worked out from the
    ///    records as they are now) and release the records ([`Nsnet::finish_removal`]).
    ///
    /// A failure in 2 or 3 restores what was deleted and unmarks the object. A kill is finished by the next
    /// command's recovery; until then the intent's flock tells recovery this command is still alive.
    fn take_down(
        &self,
        lock: Option<Lock>,
        what: Removal,
        mark: Record,
        kernel: Plan,
        tally: Option<Tally>,
    ) -> Result<Plan> {
        if self.dry_run {
            let (fw, _) = self.finish_removal(&what)?;
            return Ok(kernel.then(fw));
        }
        if !kernel.steps.iter().any(Step::waits_for_the_kernel) {
            return self.take_down_at_once(lock, &what, mark, kernel);
        }
        let early = match what {
            Removal::Network(_) => None,
            _ => Some(self.finish_removal(&what)?.0).filter(|p| {
                p.steps.iter().all(|s| {
                    matches!(
                        s,
                        Step::Firewall {
                            backend: Backend::Nftables,
                            ..
                        }
                    )
                })
            }),
        };
        let intent = self
            .store
            .put_intent(&self.removal_intent(&what, &kernel))?;
        // Nothing has changed yet: a failure to mark leaves no intent behind to "finish" later.
        let marked = self
            .store
            .file_states(std::slice::from_ref(&mark))
            .and_then(|(_, marked)| self.store.set_files(&marked));
        if let Err(e) = marked {
            self.store.remove_intent(intent)?;
            return Err(e.into());
        }
        // The resolver lets go of the sandbox's namespace (its sockets there) before the namespace goes.
        self.tell_resolver(&[mark]);
        drop(lock);

        let mut applier = self.applier_with(tally);
        let deleted = delete_unlocked(&mut applier, &kernel, early.as_ref());
        let _lock = self.lock()?;
        let done = match deleted {
            Ok(undo) => undo,
            Err((e, undo)) => {
                let rollback = undo.rollback(&mut applier);
                self.unmark(&what)?;
                self.store.remove_intent(intent)?;
                return Err(with_rollback(e, rollback));
            }
        };
        let (mut written, mut last) = (Vec::new(), Plan::default());
        // Every failure from here on goes through the same rollback: the links come back, the mark goes.
        let failure = match self.finish_removal(&what) {
            Err(e) => Some((e, done)),
            Ok((fw, records)) => {
                let fw = if early.is_some() { Plan::default() } else { fw };
                last = fw.clone();
                match applier.apply(&fw) {
                    // One step, so nothing of it to undo: report its own cause.
                    Err(Error::RolledBack { cause, .. }) => Some((*cause, done)),
                    Err(e) => Some((e, done)),
                    Ok(fw_undo) => match self.write_records(&records) {
                        Err(e) => Some((e, fw_undo.then(done))),
                        Ok((_, after)) => {
                            written = after;
                            self.tell_resolver(&records);
                            None
                        }
                    },
                }
            }
        };
        if let Some((cause, undo)) = failure {
            let rollback = undo.rollback(&mut applier);
            self.unmark(&what)?;
            self.store.remove_intent(intent)?;
            return Err(Error::RolledBack {
                cause: Box::new(cause),
                rollback,
            });
        }
        self.store.remove_intent(intent)?;
        self.compact(&written);
        self.start_reaper(&kernel);
        Ok(kernel.then(early.unwrap_or(last)))
    }

    /// [`Nsnet::take_down`] when no kernel step waits (a namespace unmounted, veths retired, map entries
    /// deleted): all under the lock the caller holds, in one pass, so nothing needs marking as being removed.
    /// Not writing the mark and not taking the lock again are what make a CNI `DEL` or an `rm` quick. The
    /// intent is the same as the two-phase one's (the kernel steps to redo, then the finish from the records),
    /// so a kill is finished by the next command's recovery the same way.
    fn take_down_at_once(
        &self,
        _lock: Option<Lock>,
        what: &Removal,
        mark: Record,
        kernel: Plan,
    ) -> Result<Plan> {
        let (fw, _) = self.finish_removal(what)?;
        let intent = self.store.put_intent(&self.removal_intent(what, &kernel))?;
        // The resolver lets go of the sandbox's namespace (its sockets there) before the namespace goes.
        self.tell_resolver(&[mark]);
        let mut applier = self.applier();
        let (records, after) = match self.remove_now(&mut applier, what, &fw, &kernel) {
            Ok(written) => written,
            Err((cause, undo)) => {
                let rollback = undo.rollback(&mut applier);
                // The resolver gets the sandbox back (its record is as it was: never written, or put back).
                self.unmark(what)?;
                self.store.remove_intent(intent)?;
                // A step's failure says already that what came before was undone; the records' must say so.
                return Err(match cause {
                    e @ Error::RolledBack { .. } => with_rollback(e, rollback),
                    e => Error::RolledBack {
                        cause: Box::new(e),
                        rollback,
                    },
                });
            }
        };
        self.tell_resolver(&records);
        self.store.remove_intent(intent)?;
        self.compact(&after);
        self.start_reaper(&kernel);
        Ok(kernel.then(fw))
    }

    /// The one pass of [`Nsnet::take_down_at_once`], returning the records it wrote; on failure, the error and
    /// the undo of what landed. The firewall goes first, the namespace's unmount last, after the records: the
    /// kernel destroys an unmounted namespace in the background, so a rollback after it could not re-create
    /// its veths under their names yet, while records written can be put back. The records are worked out
    /// after the other kernel steps, from the kernel as it is then: a retired veth keeps its address until it
    /// is gone.
    fn remove_now(
        &self,
        applier: &mut Applier,
        what: &Removal,
        fw: &Plan,
        kernel: &Plan,
    ) -> std::result::Result<(Vec<Record>, Vec<crate::store::FileState>), (Error, Undo)> {
        let fw_undo = applier.apply(fw).map_err(|e| (e, Undo::default()))?;
        let (kernel, unmount) = split_unmount(kernel);
        let undo = match applier.apply(&kernel) {
            Ok(undo) => undo.then(fw_undo),
            Err(e) => return Err((e, fw_undo)),
        };
        let written = self.finish_removal(what).and_then(|(_, records)| {
            let (before, after) = self.write_records(&records)?;
            Ok((records, before, after))
        });
        let (records, before, after) = match written {
            Ok(w) => w,
            Err(e) => return Err((e, undo)),
        };
        if let Err(e) = applier.apply(&unmount) {
            // Best effort, as in `write_records`.
            let _ = self.store.set_files(&before);
            return Err((e, undo));
        }
        Ok((records, after))
    }

    /// Write the files of `records` ([`crate::store::Store::file_states`]), returning what they held before and
    /// hold now. If a write fails, what was written is put back (best effort), so the records still describe
    /// what the caller's rollback restores.
    fn write_records(
        &self,
        records: &[Record],
    ) -> Result<(Vec<crate::store::FileState>, Vec<crate::store::FileState>)> {
        let (before, after) = self.store.file_states(records)?;
        if let Err(e) = self.store.set_files(&after) {
            let _ = self.store.set_files(&before);
            return Err(e.into());
        }
        Ok((before, after))
    }

    /// The intent of a removal: its kernel steps to redo, then the finish worked out from the records.
    fn removal_intent(&self, what: &Removal, kernel: &Plan) -> Intent {
        Intent {
            command: self.command(),
            setup: false,
            undo: vec![],
            redo: kernel.steps.clone(),
            finish: Some(what.clone()),
            before: vec![],
            after: vec![],
        }
    }

    /// The firewall step and the record changes that finish removing `what`, from the records as they are now
    /// (other commands may have come and gone since the removal started).
    fn finish_removal(&self, what: &Removal) -> Result<(Plan, Vec<Record>)> {
        match what {
            Removal::Sandbox(name) => self.finish_sandbox_removal(name),
            Removal::Network(name) => self.finish_network_removal(name),
            Removal::Endpoint { sandbox, network } => {
                self.finish_endpoint_removal(sandbox, network)
            }
        }
    }

    /// Clear the removing mark of `what` after a failed removal, keeping whatever else changed meanwhile.
    fn unmark(&self, what: &Removal) -> Result<()> {
        let record = match what {
            Removal::Sandbox(name) | Removal::Endpoint { sandbox: name, .. } => {
                self.store.sandbox(name)?.map(|mut sb| {
                    sb.removing = false;
                    for ep in &mut sb.endpoints {
                        ep.removing = false;
                    }
                    Record::Sandbox(sb)
                })
            }
            Removal::Network(name) => self.store.network(name)?.map(|mut net| {
                net.removing = false;
                Record::Settings(net)
            }),
        };
        if let Some(r) = record {
            let (_, after) = self.store.file_states(std::slice::from_ref(&r))?;
            self.store.set_files(&after)?;
            self.tell_resolver(&[r]);
        }
        Ok(())
    }

    /// Finish or roll back what killed commands left: for each intent on disk, a set-up whose records all
    /// landed is kept, any other is undone (kernel, then records); a teardown is run to its end. Runs under
    /// the lock, so no other command is in flight. Returns what it did, one line per intent.
    pub fn recover(&self) -> Result<Vec<String>> {
        self.store.remove_stale_temp_files()?;
        let mut done = Vec::new();
        for (file, intent) in self.store.intents()? {
            let mut applier = self.applier();
            if intent.setup && self.store.files_are(&intent.after) {
                // What the killed command had left to do: tell the resolver.
                self.tell_resolver(&sandbox_records(&intent.after));
                done.push(format!("kept the finished `{}`", intent.command));
            } else if intent.setup {
                // Undoing a step that never ran is harmless: every undo treats "already gone" as done.
                let failed: Vec<Error> = intent
                    .undo
                    .iter()
                    .filter_map(|s| applier.undo(s).err())
                    .collect();
                if !failed.is_empty() {
                    // The kernel's failures, not bad input: the intent stays for the next try.
                    return Err(Error::Recovery {
                        command: intent.command.clone(),
                        failed,
                    });
                }
                self.store.set_files(&intent.before)?;
                self.tell_resolver(&sandbox_records(&intent.before));
                done.push(format!("rolled back the interrupted `{}`", intent.command));
            } else {
                applier.teardown(&Plan {
                    steps: intent.redo.clone(),
                    restore: vec![],
                })?;
                match &intent.finish {
                    Some(what) => {
                        let (fw, records) = self.finish_removal(what)?;
                        applier.teardown(&fw)?;
                        let (_, after) = self.store.file_states(&records)?;
                        self.store.set_files(&after)?;
                        self.tell_resolver(&records);
                    }
                    None => {
                        self.store.set_files(&intent.after)?;
                        self.tell_resolver(&sandbox_records(&intent.after));
                    }
                }
                // The killed command may not have got to leaving a reaper for the veths it retired.
                self.start_reaper(&Plan {
                    steps: intent.redo.clone(),
                    restore: vec![],
                });
                done.push(format!("finished the interrupted `{}`", intent.command));
            }
            self.store.remove_intent(file)?;
        }
        Ok(done)
    }

    /// How this process was invoked, for intents and messages.
    fn command(&self) -> String {
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    }
}

/// The sandbox records among file states (as an intent holds them), for the resolver.
fn sandbox_records(states: &[crate::store::FileState]) -> Vec<Record> {
    states
        .iter()
        .filter_map(|f| match f {
            crate::store::FileState::Whole { path, content } => {
                let name = path.strip_prefix("sandboxes/")?.strip_suffix(".json")?;
                Some(match content {
                    Some(text) => Record::Sandbox(serde_json::from_str(text).ok()?),
                    None => Record::NoSandbox(name.to_string()),
                })
            }
            _ => None,
        })
        .collect()
}

/// Phase 2 of a teardown, without the lock: the kernel deletions, and the object's own firewall elements
/// (`early`). With veths to delete, the two run at once on two threads, so their RCU grace periods overlap;
/// otherwise (a namespace goes with one unmount) the firewall goes first. On failure, returns the error and
/// the undo of whatever of the two did land.
fn delete_unlocked(
    applier: &mut Applier,
    kernel: &Plan,
    early: Option<&Plan>,
) -> std::result::Result<Undo, (Error, Undo)> {
    let overlap = kernel
        .steps
        .iter()
        .any(|s| matches!(s, Step::DeleteLink { .. }));
    let (kernel_done, early_done) = if !overlap {
        match early.map(|p| applier.apply(p)).transpose() {
            Err(e) => (Ok(Undo::default()), Err(e)),
            Ok(f) => (applier.apply(kernel), Ok(f)),
        }
    } else {
        let kernel_steps = kernel.steps.len();
        std::thread::scope(|s| {
            let fw = early.map(|p| {
                // Numbered after the kernel steps, so a test's injected fault hits the same step every run.
                let mut second = applier.sibling(kernel_steps);
                s.spawn(move || second.apply(p))
            });
            let k = applier.apply(kernel);
            let f = fw.map(|t| {
                t.join().unwrap_or_else(|_| {
                    Err(Error::Internal(
                        "the thread deleting the firewall elements panicked".into(),
                    ))
                })
            });
            (k, f.transpose())
        })
    };
    match (kernel_done, early_done) {
        (Ok(k), Ok(f)) => Ok(f.unwrap_or_default().then(k)),
        (Err(e), Ok(f)) => Err((e, f.unwrap_or_default())),
        (Ok(k), Err(e)) => Err((e, k)),
        (Err(e), Err(_)) => Err((e, Undo::default())),
    }
}

/// `kernel` without its last step when that unmounts a namespace, and that step alone (else an empty plan).
fn split_unmount(kernel: &Plan) -> (Plan, Plan) {
    match kernel.steps.split_last() {
        Some((last @ Step::DeleteNetns { .. }, head)) => {
            let n = head.len();
            let part = |steps: Vec<Step>, restore: Vec<Vec<Step>>| Plan { steps, restore };
            (
                part(
                    head.to_vec(),
                    kernel.restore.iter().take(n).cloned().collect(),
                ),
                part(
                    vec![last.clone()],
                    kernel.restore.get(n).cloned().into_iter().collect(),
                ),
            )
        }
        _ => (kernel.clone(), Plan::default()),
    }
}

/// `e`, with the failures of undoing what came before it (if any) added to its report.
fn with_rollback(e: Error, rollback: Vec<Error>) -> Error {
    match (e, rollback.is_empty()) {
        (e, true) => e,
        (Error::RolledBack { cause, rollback: r }, false) => Error::RolledBack {
            cause,
            rollback: r.into_iter().chain(rollback).collect(),
        },
        (e, false) => Error::RolledBack {
            cause: Box::new(e),
            rollback,
        },
    }
}

impl Nsnet {
    /// Whether a command that creates the first network, or removes the last, must also create or delete
    /// nsnet's firewall tables: `Some` then (it reads the user chain), `None` when other networks stay. Refused
    /// when the tables are another state dir's.
    fn tables_change(&self, networks_left: usize, backend: Backend) -> Result<Option<Tables>> {
        if networks_left > 0 || backend == Backend::None {
            return Ok(None);
        }
        self.check_tables_owner(backend)?;
        Ok(Some(Tables {
            keep_user_chain: Host::user_chain_has_rules(backend),
            owner: self.store.owner_tag(),
        }))
    }

    /// Refuse to touch nsnet's tables when another state dir made them: its published ports, isolation and
    /// anti-spoofing live in the same sets, which this one's commands would rewrite or flush.
    fn check_tables_owner(&self, backend: Backend) -> Result<()> {
        let mine = self.store.owner_tag();
        match Host::tables_owner(backend)? {
            TablesOwner::Of(other) if other != mine => {
                let dir = other.strip_prefix("nsnet:").unwrap_or(&other);
                let what = match backend {
                    Backend::Iptables => "iptables chains (NSNET-*)",
                    _ => "nftables tables (inet nsnet, bridge nsnet)",
                };
                Err(invalid!(
                    "nsnet's {what} on this host belong to the state dir {dir}, and one state dir per host \
                     holds them; use --state-dir {dir} (NSNET_STATE_DIR, CNI stateDir), or remove that state \
                     dir's networks first"
                ))
            }
            _ => Ok(()),
        }
    }
}

/// The record of a sandbox that just lost an endpoint: a sandbox on no network whose namespace nsnet did not
/// make is nothing of nsnet's any more, so it is forgotten (`detach`, `network rm --force` alike).
fn left_with(sb: crate::model::Sandbox) -> Record {
    if sb.endpoints.is_empty() && !sb.owned {
        Record::NoSandbox(sb.name)
    } else {
        Record::Sandbox(sb)
    }
}

fn no_network(name: &str) -> Error {
    Error::Invalid(format!(
        "no network named '{name}'; `nsnet network ls` lists them, `nsnet network create {name}` makes it"
    ))
}
