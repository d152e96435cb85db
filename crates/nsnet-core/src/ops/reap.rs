//! Retired veths ([`Step::RetireVeth`]): a removal takes a runtime-owned sandbox's veth out of use at once and
//! leaves its deletion, which waits for an RCU grace period, to a reaper off the command's path. The reaper
//! deletes every retired link in one request, then gives their addresses back.
//!
//! Tracked so nothing leaks and no address is reused early: a retired link keeps its address in its network's
//! allocations (held by `~NAME`) until it is gone. If the reaper is killed (or the host reboots), the next
//! reaper (every removal that retires starts one) or `nsnet gc` finds the links, or finds them gone, and
//! finishes.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::{Host, Nsnet};
use crate::error::Result;
use crate::plan::{build, Plan, Step};
use crate::store::Record;

/// The environment variable that makes `nsnet` (or `nsnet-cni`) a reaper for the state dir it names.
pub const REAPER_ENV: &str = "NSNET_REAP";

impl Nsnet {
    /// Delete every retired link (one request, without the lock: it waits for a grace period), then, under
    /// the lock, give back the addresses of those that are gone. Returns those links.
    pub fn reap(&self) -> Result<Vec<String>> {
        if !self.dry_run {
            let tag = self.store.owner_tag();
            self.applier().run(&Step::DeleteRetired { tag })?;
        }
        // No store (its last network went meanwhile): no address to give back, and nothing to make.
        if !self.store.dir().join("lock").exists() {
            return Ok(vec![]);
        }
        // A look without the lock first: a removal since has usually given the addresses back already (it
        // releases retired veths that are gone with its own write), and taking the lock for nothing would hold
        // up the commands running now. A record that cannot be read takes the locked way.
        if !self.anything_to_release().unwrap_or(true) {
            return Ok(vec![]);
        }
        let _lock = self.lock()?;
        self.release_retired()
    }

    /// Whether any network holds an address for a retired veth that is gone (read without the lock: a hint).
    fn anything_to_release(&self) -> Result<bool> {
        let mut host = Host::new();
        for mut net in self.store.network_records()? {
            if super::sandbox::release_gone_retired(&mut host, &mut net.allocations)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Under the lock, for a command that found its network's pool exhausted: if retired links hold
    /// addresses (a removal moments ago, whose reaper has not finished), delete them now, on this command's
    /// path (it waits for a grace period), and give their addresses back. True when any came back.
    pub(super) fn reclaim_retired(&self) -> Result<bool> {
        let any = self.store.network_records()?.iter().any(|n| {
            n.allocations
                .addresses
                .values()
                .chain(n.allocations.addresses6.values())
                .any(|o| build::retired_holder(o).is_some())
        });
        if !any || self.dry_run {
            return Ok(false);
        }
        let tag = self.store.owner_tag();
        self.applier().run(&Step::DeleteRetired { tag })?;
        Ok(!self.release_retired()?.is_empty())
    }

    /// Under the lock: the addresses held by retired links that are gone go back to their networks.
    pub(super) fn release_retired(&self) -> Result<Vec<String>> {
        let mut host = Host::new();
        let (mut records, mut gone) = (Vec::new(), Vec::new());
        for mut net in self.store.network_records()? {
            let before: Vec<String> = retired_links(&net.allocations);
            if super::sandbox::release_gone_retired(&mut host, &mut net.allocations)? {
                let after = retired_links(&net.allocations);
                gone.extend(before.into_iter().filter(|l| !after.contains(l)));
                records.push(Record::Network(net));
            }
        }
        if !records.is_empty() {
            self.bring_up(Plan::default(), records)?;
        }
        Ok(gone)
    }

    /// Start a reaper for this state dir, detached (its own session, no terminal, nothing inherited), if the
    /// caller named a program for it ([`Nsnet::reaper`]) and `plan` retired a link. Best effort: without one,
    /// the next reaper or `gc` deletes the links.
    pub(super) fn start_reaper(&self, plan: &Plan) {
        let retired = plan
            .steps
            .iter()
            .any(|s| matches!(s, Step::RetireVeth { .. }));
        let (Some(program), false, true) = (&self.reaper, self.dry_run, retired) else {
            return;
        };
        // Test builds only: a reaper that never comes, to prove what holds until one does.
        if cfg!(feature = "fault-injection") && std::env::var_os("NSNET_NO_REAPER").is_some() {
            return;
        }
        // Started after this process exits, by the child it leaves its other slow work to, when it has one.
        if crate::afterwards::reap_later(program.clone(), REAPER_ENV, self.store.dir().into()) {
            return;
        }
        let mut cmd = Command::new(program);
        cmd.env(REAPER_ENV, self.store.dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        detach(&mut cmd);
        // Not waited for: it outlives this process. Its exit is reaped by init.
        let _ = cmd.spawn();
    }
}

/// The retired veths `allocations` holds addresses for, by link name.
fn retired_links(allocations: &crate::model::Allocations) -> Vec<String> {
    let mut links: Vec<String> = allocations
        .addresses
        .values()
        .chain(allocations.addresses6.values())
        .filter_map(|o| build::retired_holder(o).map(str::to_string))
        .collect();
    links.sort_unstable();
    links.dedup();
    links
}

/// Run `cmd` in a session of its own, so the caller's exit (or its terminal's) does not take it along.
///
/// Its signal mask starts empty: a process's blocked signals survive exec, and `nsnet run` blocks the ones it
/// passes on to its command, so a resolver it started would otherwise ignore SIGTERM for its whole life.
pub(crate) fn detach(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid(2) and sigprocmask(2) are async-signal-safe and allocate nothing (the empty set is built
    // on the stack); they run in the forked child before exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            nix::sys::signal::SigSet::empty()
                .thread_set_mask()
                .map_err(std::io::Error::from)?;
            Ok(())
        });
    }
}

/// The state dir a reaper was started for, when this process is one ([`REAPER_ENV`]).
pub fn reaper_for() -> Option<PathBuf> {
    std::env::var_os(REAPER_ENV).map(PathBuf::from)
}
