//! A network's ledger: the addresses and ports it has handed out, kept apart from its settings so that handing
//! one out costs one appended line, not a rewrite of every entry (which made the 1,000th sandbox pay for the
//! 999 before it).
//!
//! `networks/NAME.ledger` is plain text, one entry per line, oldest first:
//! ```text
//! +ip 10.88.0.5 web            address 10.88.0.5 is held by sandbox web
//! -ip 10.88.0.5                it is free again
//! +port web tcp * 8080 80 1    host port 8080 (any host address) leads to port 80 of web; 1 port
//! -port web tcp * 8080 80 1    that mapping is gone
//! cursor 10.88.0.5             the address handed out last (next fit); also set by each +ip
//! ```
//! Lines are only appended under the state lock, and a command's appends are undone by truncating back to
//! the length it started from. Once dead lines outnumber live ones the file is rewritten with the live
//! entries only (atomically, under the lock, with no command in flight).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::model::{Network, Published};
use crate::portmap::{PortMapping, Proto};

/// The entries of a ledger file, as the network record holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    pub allocations: BTreeMap<Ipv4Addr, String>,
    pub published: Vec<Published>,
    pub cursor: Option<Ipv4Addr>,
    /// Lines in the file, live or dead: the file is compacted when most are dead.
    pub lines: usize,
}

impl Ledger {
    /// Read a ledger's text. Errors name the line.
    ///
    /// Every command reads its network's ledger, a line per address and per port, so this is built to cost
    /// little per line: entries are collected as borrowed text and in the order written, and only the live
    /// ones are copied out at the end, the addresses into their map in one sorted build (not a search per
    /// line).
    pub fn parse(text: &str) -> Result<Ledger, String> {
        let mut pass = Pass::default();
        for (n, line) in Lines(text).enumerate() {
            pass.line(line)
                .map_err(|e| format!("line {}: {e}: '{line}'", n + 1))?;
        }
        Ok(pass.finish())
    }

    /// Whether rewriting the file would drop more lines than it keeps.
    pub fn wants_compaction(&self) -> bool {
        let live = self.allocations.len() + self.published.len() + 1;
        self.lines > 64 && self.lines > 2 * live
    }

    /// The lines that turn this ledger into `net`'s entries (empty when they already agree). One linear walk
    /// over each list: a command changes a few entries of thousands, and pays for the walk, not for pairs.
    pub fn changes_to(&self, net: &Network) -> String {
        let mut out = String::new();
        // Addresses: both maps are sorted, so walk them side by side.
        let (mut held, mut wanted) = (
            self.allocations.iter().peekable(),
            net.allocations.iter().peekable(),
        );
        let mut added = Vec::new();
        loop {
            match (held.peek(), wanted.peek()) {
                (None, None) => break,
                (Some((ip, _)), None) => {
                    let _ = writeln!(out, "-ip {ip}");
                    held.next();
                }
                (None, Some(w)) => {
                    added.push(*w);
                    wanted.next();
                }
                (Some((hip, howner)), Some((wip, wowner))) => {
                    if hip < wip {
                        let _ = writeln!(out, "-ip {hip}");
                        held.next();
                    } else if wip < hip {
                        added.push((*wip, *wowner));
                        wanted.next();
                    } else {
                        if howner != wowner {
                            let _ = writeln!(out, "-ip {hip}");
                            added.push((*wip, *wowner));
                        }
                        held.next();
                        wanted.next();
                    }
                }
            }
        }
        // Ports: `net`'s list is normally this one with some entries dropped and new ones at the end (the order
        // they were published in). Walk both: an entry that is not next in `net` is gone; whatever of `net` is
        // left after the walk is new. Any other order still comes out right, as removals and re-adds.
        let mut next = 0;
        for p in &self.published {
            if net.published.get(next) == Some(p) {
                next += 1;
            } else {
                let _ = writeln!(out, "-port {}", port_entry(p));
            }
        }
        let mut cursor = self.cursor;
        for (ip, owner) in added {
            let _ = writeln!(out, "+ip {ip} {owner}");
            cursor = Some(*ip);
        }
        for p in &net.published[next..] {
            let _ = writeln!(out, "+port {}", port_entry(p));
        }
        if let Some(want) = net.last_allocated {
            if cursor != Some(want) {
                let _ = writeln!(out, "cursor {want}");
            }
        }
        out
    }

    /// The live entries only, as the text of a fresh file.
    pub fn compacted(&self) -> String {
        let mut out = String::new();
        for (ip, owner) in &self.allocations {
            let _ = writeln!(out, "+ip {ip} {owner}");
        }
        for p in &self.published {
            let _ = writeln!(out, "+port {}", port_entry(p));
        }
        if let Some(c) = self.cursor {
            let _ = writeln!(out, "cursor {c}");
        }
        out
    }

    /// Put these entries into the network record.
    pub fn fill(self, net: &mut Network) {
        if net.allocations.is_empty() {
            net.allocations = self.allocations;
        } else {
            net.allocations.extend(self.allocations);
        }
        if net.published.is_empty() {
            net.published = self.published;
        } else {
            net.published.extend(self.published);
        }
        if self.cursor.is_some() {
            net.last_allocated = self.cursor;
        }
    }
}

/// One read through a ledger's text, in the order it was written.
#[derive(Default)]
struct Pass<'a> {
    /// Every `+ip` (with its sandbox) and `-ip` (without), as written.
    addresses: Vec<(Ipv4Addr, Option<&'a str>)>,
    ports: Vec<(&'a str, PortMapping)>,
    /// Removed ports, by count: dropped after the pass rather than searched for line by line. The ledger
    /// only ever removes a port it holds, so the result is the same.
    gone: HashMap<(&'a str, PortMapping), usize>,
    cursor: Option<Ipv4Addr>,
    lines: usize,
}

impl<'a> Pass<'a> {
    fn line(&mut self, line: &'a str) -> Result<(), String> {
        let mut f = Fields(line);
        match f.next().unwrap_or_default() {
            "+ip" => {
                let (ip, sandbox) = (f.next(), f.next());
                let (Some(ip), Some(sandbox), None) = (ip, sandbox, f.next()) else {
                    return Err("an address entry has an address and a sandbox".into());
                };
                let ip = addr(ip)?;
                self.addresses.push((ip, Some(sandbox)));
                self.cursor = Some(ip);
            }
            "-ip" => self.addresses.push((addr(f.rest())?, None)),
            "+port" => self.ports.push(published(f)?),
            "-port" => *self.gone.entry(published(f)?).or_default() += 1,
            "cursor" => self.cursor = Some(addr(f.rest())?),
            _ => return Err("not a ledger entry".into()),
        }
        self.lines += 1;
        Ok(())
    }

    fn finish(mut self) -> Ledger {
        // The last word on each address holds: a stable sort keeps each address's entries in order, and the
        // map is built from sorted entries in one pass.
        self.addresses.sort_by_key(|&(ip, _)| ip);
        let allocations = self
            .addresses
            .chunk_by(|a, b| a.0 == b.0)
            .filter_map(|entries| {
                let (ip, sandbox) = entries.last()?;
                Some((*ip, sandbox.as_ref()?.to_string()))
            })
            .collect();
        if !self.gone.is_empty() {
            // Most entries are live: a bit per host port spares them the hash lookup.
            let mut maybe = vec![0u64; 1024];
            for (_, m) in self.gone.keys() {
                let port = usize::from(m.host_port);
                maybe[port / 64] |= 1 << (port % 64);
            }
            let gone = &mut self.gone;
            self.ports.retain(|p| {
                let port = usize::from(p.1.host_port);
                if maybe[port / 64] & (1 << (port % 64)) == 0 {
                    return true;
                }
                match gone.get_mut(p) {
                    Some(left) if *left > 0 => {
                        *left -= 1;
                        false
                    }
                    _ => true,
                }
            });
        }
        let published = self
            .ports
            .into_iter()
            .map(|(sandbox, mapping)| Published {
                sandbox: sandbox.to_string(),
                mapping,
            })
            .collect();
        Ledger {
            allocations,
            published,
            cursor: self.cursor,
            lines: self.lines,
        }
    }
}

fn port_entry(p: &Published) -> String {
    let m = &p.mapping;
    let host_ip = m.host_ip.map_or("*".to_string(), |ip| ip.to_string());
    format!(
        "{} {} {host_ip} {} {} {}",
        p.sandbox, m.protocol, m.host_port, m.container_port, m.count
    )
}

fn addr(text: &str) -> Result<Ipv4Addr, String> {
    text.parse()
        .map_err(|_| format!("'{text}' is not an IPv4 address"))
}

fn port(text: &str) -> Result<u16, String> {
    text.parse()
        .map_err(|_| format!("'{text}' is not a port number"))
}

/// The space-separated fields of a line. A plain byte loop: the fields are a few bytes long and a ledger has a
/// line per address and per port, read by every command, where the general `str` searchers cost more than the
/// search.
struct Fields<'a>(&'a str);

impl<'a> Fields<'a> {
    /// What is left of the line, spaces and all.
    fn rest(&self) -> &'a str {
        self.0
    }
}

/// The lines of a text, like `str::lines` (a final `\r` dropped too), by the same byte loop as [`Fields`].
struct Lines<'a>(&'a str);

impl<'a> Iterator for Lines<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.0.is_empty() {
            return None;
        }
        let (line, rest) = match self.0.bytes().position(|b| b == b'\n') {
            Some(i) => (&self.0[..i], &self.0[i + 1..]),
            None => (self.0, ""),
        };
        self.0 = rest;
        Some(line.strip_suffix('\r').unwrap_or(line))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.0.is_empty() {
            return None;
        }
        let end = self.0.bytes().position(|b| b == b' ');
        // Splitting at an ASCII space keeps both halves on char boundaries.
        let (field, rest) = match end {
            Some(i) => (&self.0[..i], &self.0[i + 1..]),
            None => (self.0, ""),
        };
        self.0 = rest;
        Some(field)
    }
}

/// `SANDBOX PROTO HOST_IP|* HOST_PORT CONTAINER_PORT COUNT`.
fn published(mut f: Fields<'_>) -> Result<(&str, PortMapping), String> {
    let mut field = || f.next().ok_or("a port entry has 6 fields");
    let sandbox = field()?;
    let protocol = match field()? {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        other => return Err(format!("'{other}' is not tcp or udp")),
    };
    let host_ip = match field()? {
        "*" => None,
        ip => Some(addr(ip)?),
    };
    let mapping = PortMapping {
        protocol,
        host_ip,
        host_port: port(field()?)?,
        container_port: port(field()?)?,
        count: port(field()?)?,
    };
    if f.next().is_some() {
        return Err("a port entry has 6 fields".into());
    }
    Ok((sandbox, mapping))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> Network {
        Network::bridge(
            "n",
            "10.89.0.0/24".parse().unwrap(),
            "10.89.0.1".parse().unwrap(),
            "nsnet0",
        )
    }

    fn published(sandbox: &str, host_port: u16) -> Published {
        Published {
            sandbox: sandbox.into(),
            mapping: PortMapping {
                host_ip: None,
                host_port,
                container_port: 80,
                count: 1,
                protocol: Proto::Tcp,
            },
        }
    }

    /// Apply `changes_to` to a ledger's text, the way the store appends it.
    fn step(text: &mut String, want: &Network) -> Ledger {
        let l = Ledger::parse(text).unwrap();
        text.push_str(&l.changes_to(want));
        let after = Ledger::parse(text).unwrap();
        let mut got = Network { ..want.clone() };
        got.allocations.clear();
        got.published.clear();
        got.last_allocated = None;
        after.clone().fill(&mut got);
        assert_eq!(&got, want, "ledger text:\n{text}");
        after
    }

    #[test]
    fn appends_only_what_changed_and_reads_back() {
        let mut text = String::new();
        let mut n = net();
        for i in 2..6u8 {
            let ip = Ipv4Addr::new(10, 89, 0, i);
            n.allocations.insert(ip, format!("s{i}"));
            n.published
                .push(published(&format!("s{i}"), 8000 + u16::from(i)));
            n.last_allocated = Some(ip);
            let before = text.len();
            step(&mut text, &n);
            // One address and one port: two lines, whatever came before.
            assert_eq!(text[before..].lines().count(), 2, "{text}");
        }
        n.release("s3");
        step(&mut text, &n);
        assert!(
            text.ends_with("-ip 10.89.0.3\n-port s3 tcp * 8003 80 1\n"),
            "{text}"
        );
        // The cursor stays where it was when an earlier address is taken again.
        n.allocations
            .insert(Ipv4Addr::new(10, 89, 0, 3), "t".into());
        step(&mut text, &n);
        assert!(
            text.ends_with("+ip 10.89.0.3 t\ncursor 10.89.0.5\n"),
            "{text}"
        );
        // Nothing changed: nothing to append.
        assert_eq!(Ledger::parse(&text).unwrap().changes_to(&n), "");
    }

    #[test]
    fn compaction_keeps_the_live_entries_and_the_cursor() {
        let mut text = String::new();
        let mut n = net();
        for round in 0..40u8 {
            let ip = Ipv4Addr::new(10, 89, 0, 2 + round);
            n.allocations.insert(ip, "x".into());
            n.last_allocated = Some(ip);
            step(&mut text, &n);
            n.release("x");
            step(&mut text, &n);
        }
        n.allocations
            .insert(Ipv4Addr::new(10, 89, 0, 100), "keep".into());
        let l = step(&mut text, &n);
        assert!(l.wants_compaction());
        let fresh = l.compacted();
        // The cursor is where the last hand-out left it, not at the address given by hand.
        assert_eq!(fresh, "+ip 10.89.0.100 keep\ncursor 10.89.0.41\n");
        assert_eq!(
            Ledger {
                lines: 0,
                ..Ledger::parse(&fresh).unwrap()
            },
            Ledger { lines: 0, ..l }
        );
    }

    #[test]
    fn the_last_word_on_each_address_and_port_holds() {
        let l = Ledger::parse(
            "+ip 10.89.0.9 a\n+ip 10.89.0.2 b\n-ip 10.89.0.9\n+ip 10.89.0.9 c\n+ip 10.89.0.3 d\n\
             -ip 10.89.0.3\n-ip 10.89.0.7\n+port b tcp * 80 80 1\n+port b tcp * 80 80 1\n\
             +port c udp 10.0.0.1 53 53 1\n-port b tcp * 80 80 1\n",
        )
        .unwrap();
        let owners: Vec<(String, &str)> = l
            .allocations
            .iter()
            .map(|(ip, o)| (ip.to_string(), o.as_str()))
            .collect();
        assert_eq!(
            owners,
            [("10.89.0.2".into(), "b"), ("10.89.0.9".into(), "c")]
        );
        // The cursor is the last address handed out, whatever became of it.
        assert_eq!(l.cursor, Some(Ipv4Addr::new(10, 89, 0, 3)));
        // One removal takes one of two equal entries.
        let ports: Vec<(&str, u16)> = l
            .published
            .iter()
            .map(|p| (p.sandbox.as_str(), p.mapping.host_port))
            .collect();
        assert_eq!(ports, [("b", 80), ("c", 53)]);
        assert_eq!(l.lines, 11);
    }

    #[test]
    fn lines_and_fields_split_like_std() {
        for text in ["", "a", "a\n", "a\r\nb\n\nc", "\n\n", "x y\r\n"] {
            assert_eq!(
                Lines(text).collect::<Vec<_>>(),
                text.lines().collect::<Vec<_>>(),
                "{text:?}"
            );
        }
        assert_eq!(Fields("+ip 1 b").collect::<Vec<_>>(), ["+ip", "1", "b"]);
        assert_eq!(Fields("a  b").collect::<Vec<_>>(), ["a", "", "b"]);
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, what) in [
            ("+ip 10.89.0.2\n", "line 1"),
            (
                "+ip 10.89.0.2 a\n+ip 300.1.1.1 b\n",
                "line 2: '300.1.1.1' is not an IPv4 address",
            ),
            ("+port a sctp * 1 2 1\n", "'sctp' is not tcp or udp"),
            ("+port a tcp * 1 2\n", "6 fields"),
            ("+port a tcp * 1 2 1 9\n", "6 fields"),
            ("hello\n", "not a ledger entry"),
        ] {
            let e = Ledger::parse(text).unwrap_err();
            assert!(e.contains(what), "{text:?}: {e}");
        }
    }
}
