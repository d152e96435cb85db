//! The text side of the iptables driver: what a save tool prints, read into chains and rules in order, and
//! the restore script written against it, with the script that undoes it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Where a rule goes in its chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum At {
    Append,
    /// Insert at this 1-based position.
    Insert(u32),
}

/// One iptables rule: table, chain, spec (as `iptables-save` prints it), position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) table: &'static str,
    pub(super) chain: &'static str,
    pub(super) spec: String,
    pub(super) at: At,
}

pub(super) fn entry(table: &'static str, chain: &'static str, spec: String, at: At) -> Entry {
    Entry {
        table,
        chain,
        spec,
        at,
    }
}

/// What `iptables-save` shows: every chain of every table with its rules, in order.
#[derive(Debug, Default, Clone)]
pub(super) struct Current {
    pub(super) chains: BTreeMap<(String, String), Vec<String>>,
}

impl Current {
    pub(super) fn parse(text: &str) -> Current {
        let mut cur = Current::default();
        let mut table = String::new();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix('*') {
                table = t.to_string();
            } else if let Some(decl) = line.strip_prefix(':') {
                if let Some(chain) = decl.split_whitespace().next() {
                    cur.chains
                        .entry((table.clone(), chain.to_string()))
                        .or_default();
                }
            } else if let Some(rule) = line.strip_prefix("-A ") {
                if let Some((chain, spec)) = rule.split_once(' ') {
                    cur.chains
                        .entry((table.clone(), chain.to_string()))
                        .or_default()
                        .push(spec.to_string());
                }
            }
        }
        cur
    }

    /// The owner written in NSNET-POSTROUTING, when the chain is there and has one.
    pub(super) fn owner(&self) -> Option<String> {
        let rules = self
            .chains
            .get(&("nat".to_string(), "NSNET-POSTROUTING".to_string()))?;
        // The IPv6 guard's mark is a comment too, and not an owner.
        rules
            .iter()
            .filter(|s| *s != super::iptables::GUARD6_MARK)
            .find_map(|spec| {
                let owner = spec
                    .strip_prefix("-m comment --comment \"")?
                    .strip_suffix('"')?;
                Some(owner.to_string())
            })
    }

    /// One table's chains and rules.
    pub(super) fn table(&self, table: &str) -> Vec<(&String, &Vec<String>)> {
        self.chains
            .iter()
            .filter(|((t, _), _)| t == table)
            .map(|((_, c), rules)| (c, rules))
            .collect()
    }

    pub(super) fn has_chain(&self, table: &str, chain: &str) -> bool {
        self.chains
            .contains_key(&(table.to_string(), chain.to_string()))
    }

    /// Where the rule is in its chain (0-based; iptables deletes the first match).
    pub(super) fn position(&self, e: &Entry) -> Option<usize> {
        self.chains
            .get(&(e.table.to_string(), e.chain.to_string()))?
            .iter()
            .position(|s| *s == e.spec)
    }

    pub(super) fn has_rule(&self, e: &Entry) -> bool {
        self.position(e).is_some()
    }

    pub(super) fn chain_is_empty(&self, table: &str, chain: &str) -> bool {
        self.chains
            .get(&(table.to_string(), chain.to_string()))
            .is_none_or(Vec::is_empty)
    }
}

/// Restore lines per table, and the lines that undo them (per change, in the order they are written).
#[derive(Default)]
pub(super) struct Script {
    pub(super) tables: BTreeMap<&'static str, Vec<String>>,
    undo: BTreeMap<&'static str, Vec<Vec<String>>>,
}

impl Script {
    pub(super) fn line(&mut self, table: &'static str, line: String, undo: Vec<String>) {
        self.tables.entry(table).or_default().push(line);
        self.undo.entry(table).or_default().push(undo);
    }

    pub(super) fn text(tables: &BTreeMap<&'static str, Vec<String>>) -> String {
        let mut out = String::new();
        for (table, lines) in tables {
            let _ = writeln!(out, "*{table}");
            // Chain declarations first: iptables-restore wants them before the rules that use them.
            for l in lines.iter().filter(|l| l.starts_with(':')) {
                let _ = writeln!(out, "{l}");
            }
            for l in lines.iter().filter(|l| !l.starts_with(':')) {
                let _ = writeln!(out, "{l}");
            }
            let _ = writeln!(out, "COMMIT");
        }
        out
    }

    /// The script that undoes this one on the state it was written against: each table's lines, reversed.
    pub(super) fn undo_text(&self, only: impl Fn(&str) -> bool) -> String {
        let tables = self
            .undo
            .iter()
            .filter(|(t, _)| only(t))
            .map(|(t, changes)| (*t, changes.iter().rev().flatten().cloned().collect()))
            .collect();
        Script::text(&tables)
    }
}
