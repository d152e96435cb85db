//! The seed article's walkthrough ([`nsnet_core::scenario`], the one `nsnet demo` runs) as one test, on the
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
    let h = TestHost::with_lan("article");
    let empty = h.snapshot();
    scenario::run(&mut Article { h, empty });
}
