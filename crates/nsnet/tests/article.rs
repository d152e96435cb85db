//! The seed article's walkthrough ([`nsnet_core::scenario`], the one `nsnet demo` runs, with its dual-stack twin) as one test, on the
//! real kernel, with real packets: every check is an assertion, and each part must leave the host as it found
//! it.

mod common;

use std::path::PathBuf;

use common::{Snapshot, TestHost};
use nsnet_core::scenario::{self, Runner};

struct Article {
    h: TestHost,
    empty: Snapshot,
}

impl Runner for Article {
    fn host(&self) -> PathBuf {
        self.h.host_path()
    }

    fn lan(&self) -> PathBuf {
        self.h.lan_path()
    }

    fn sandbox(&self, name: &str) -> String {
        self.h.sb(name)
    }

    fn step(&mut self, _title: &str) {}

    fn nsnet(&mut self, args: &[&str]) -> Option<String> {
        Some(self.h.ok(args))
    }

    fn check(&mut self, ok: bool, what: &str) {
        assert!(ok, "{what}");
    }

    fn clean(&mut self, after: &str) {
        let now = self.h.snapshot();
        assert!(
            now == self.empty,
            "{after} left something behind: {}",
            now.diff(&self.empty)
        );
    }
}

#[test]
fn article_walkthrough() {
    let h = TestHost::with_lan6("article");
    // The dual-stack part turns IPv6 forwarding on, and it stays on (as IPv4's does), with the uplink's
    // subnet-router anycast route: on from the start, so the snapshots compare what nsnet made.
    h.in_host(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    let empty = h.snapshot();
    scenario::run(&mut Article { h, empty });
}
