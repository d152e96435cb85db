//! A named network namespace for one kernel test, deleted when dropped (panic or not), and commands run in it.
#![allow(dead_code)]

use std::process::{Command, Output};

use nsnet_core::kernel::{netns, Netlink};
use serde_json::Value;

/// A named namespace made for one test; deleted when dropped, panic or not.
pub struct Ns(pub String);

impl Ns {
    /// `/run/netns/<prefix><pid>-<tag>` and a netlink socket inside it, or `None` when not root.
    pub fn create(prefix: &str, tag: &str) -> Option<(Ns, Netlink)> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return None;
        }
        let name = format!("{prefix}{}-{tag}", std::process::id());
        let nl = netns::create(&name, None).expect("create namespace");
        Some((Ns(name), nl))
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }

    /// Run a command inside this namespace.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.path()))
            .args(args)
            .output()
            .expect("run nsenter")
    }

    /// Run a command inside this namespace that must succeed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} in {}: {}",
            self.0,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The JSON a `-j` command prints (an empty array when it prints nothing).
    pub fn json(&self, args: &[&str]) -> Vec<Value> {
        let out = self.ok(args);
        if out.trim().is_empty() {
            return vec![];
        }
        match serde_json::from_str(&out) {
            Ok(Value::Array(a)) => a,
            other => panic!("{args:?} printed {out:?}: {other:?}"),
        }
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        if let Err(e) = netns::delete(&self.0) {
            eprintln!("could not delete namespace {}: {e}", self.0);
        }
    }
}
