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
//! +ip fd89::2 web              IPv6 (dual-stack networks): the same lines, the family read from the address;
//! cursor fd89::2               each family has its own cursor
//! ```
//! Lines are only appended under the state lock, and a command's appends are undone by truncating back to
//! the length it started from. Once dead lines outnumber live ones the file is rewritten with the live
//! entries only (atomically, under the lock, with no command in flight).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::ipam::Allocated;
use crate::model::{Allocations, Published};
use crate::portmap::{PortMapping, Proto};

/// A ledger file read in place: its text, and its live entries pointing into it. Nothing is copied per entry,
/// so a join at a thousand sandboxes pays for a walk over the text, not for a thousand names (copying them
/// cost a create more than the rest of its planning, and grew with every sandbox).
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    text: String,
    /// Allocated addresses, sorted, each with its holder's name in `text`.
    allocations: Vec<(Ipv4Addr, Span)>,
    /// Allocated IPv6 addresses, likewise.
    allocations6: Vec<(Ipv6Addr, Span)>,
    /// Published ports in the order they were published, each with its sandbox's name in `text`.
    published: Vec<(PortMapping, Span)>,
    cursor: Option<Ipv4Addr>,
    cursor6: Option<Ipv6Addr>,
    /// Lines in the file, live or dead: the file is compacted when most are dead.
    lines: usize,
}

/// Where a name lies in a ledger's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span(u32, u32);

impl Ledger {
    /// Read a ledger's text. Errors name the line.
    ///
    /// Appends are not synced (see [`super::Store::write_file`]), so a power loss can leave the last append
    /// torn: cut short, or padded with NUL bytes where the file grew before its data landed. Every line nsnet
    /// writes ends with a newline, so whatever follows the last newline is such a tail: it is left out, and
    /// [`Ledger::len`] (where the next append truncates to) ends before it. A torn line never names anything:
    /// the sandbox it was about died with the kernel.
    pub fn parse(mut text: String) -> Result<Ledger, String> {
        text.truncate(text.rfind('\n').map_or(0, |i| i + 1));
        let base = text.as_ptr() as usize;
        let too_large = || "the file is larger than 4 GiB".to_string();
        if u32::try_from(text.len()).is_err() {
            return Err(too_large());
        }
        // Slices of `text` to spans (both ends fit in u32, as the text's length does).
        let span = |part: &str| {
            let start = part.as_ptr() as usize - base;
            match (u32::try_from(start), u32::try_from(start + part.len())) {
                (Ok(start), Ok(end)) => Ok(Span(start, end)),
                _ => Err(too_large()),
            }
        };
        let mut pass = Pass::default();
        for (n, line) in Lines(&text).enumerate() {
            pass.line(line)
                .map_err(|e| format!("line {}: {e}: '{line}'", n + 1))?;
        }
        let allocations6 = pass
            .live6()
            .map(|(ip, o)| Ok((ip, span(o)?)))
            .collect::<Result<_, String>>()?;
        let (allocations, published) = pass.live();
        let allocations = allocations
            .map(|(ip, o)| Ok((ip, span(o)?)))
            .collect::<Result<_, String>>()?;
        let published = published
            .map(|(o, m)| Ok((m, span(o)?)))
            .collect::<Result<_, String>>()?;
        let (cursor, cursor6, lines) = (pass.cursor, pass.cursor6, pass.lines);
        Ok(Ledger {
            text,
            allocations,
            allocations6,
            published,
            cursor,
            cursor6,
            lines,
        })
    }

    fn name(&self, span: Span) -> &str {
        self.text
            .get(span.0 as usize..span.1 as usize)
            .unwrap_or_default()
    }

    /// The file's length in bytes.
    pub fn len(&self) -> u64 {
        self.text.len() as u64
    }

    /// Whether the file is empty (no ledger at all reads as one).
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Lines in the file, live or dead.
    pub fn lines(&self) -> usize {
        self.lines
    }

    /// How many IPv4 addresses are allocated.
    pub fn addresses(&self) -> usize {
        self.allocations.len()
    }

    /// The allocated IPv4 addresses with their sandboxes, by address.
    pub fn holders(&self) -> impl Iterator<Item = (Ipv4Addr, &str)> + '_ {
        self.allocations.iter().map(|&(ip, o)| (ip, self.name(o)))
    }

    /// The allocated IPv6 addresses with their sandboxes, by address.
    pub fn holders6(&self) -> impl Iterator<Item = (Ipv6Addr, &str)> + '_ {
        self.allocations6.iter().map(|&(ip, o)| (ip, self.name(o)))
    }

    /// The IPv6 address handed out last.
    pub fn cursor6(&self) -> Option<Ipv6Addr> {
        self.cursor6
    }

    /// The published ports with their sandboxes, in the order they were published.
    pub fn published(&self) -> impl Iterator<Item = (&str, &PortMapping)> + '_ {
        self.published.iter().map(|(m, o)| (self.name(*o), m))
    }

    /// Whether rewriting the file would drop more lines than it keeps.
    pub fn wants_compaction(&self) -> bool {
        worth_compacting(
            self.lines,
            self.allocations.len() + self.allocations6.len() + self.published.len(),
        )
    }

    /// The lines a join appends: `sandbox` holds `ip` (and `ip6`, on a dual-stack network) and publishes
    /// `ports` (each `+ip` moves its family's cursor too).
    pub fn joined(
        sandbox: &str,
        ip: Option<Ipv4Addr>,
        ip6: Option<Ipv6Addr>,
        ports: &[PortMapping],
    ) -> String {
        let mut out = String::new();
        if let Some(ip) = ip {
            hold(&mut out, ip.into(), sandbox);
        }
        if let Some(ip6) = ip6 {
            hold(&mut out, ip6.into(), sandbox);
        }
        for m in ports {
            publish(&mut out, sandbox, m);
        }
        out
    }

    /// The lines that turn this ledger into `net`'s entries (empty when they already agree). One linear walk
    /// over each list: a command changes a few entries of thousands, and pays for the walk, not for pairs.
    pub fn changes_to(&self, net: &Allocations) -> String {
        let mut out = String::new();
        // Addresses: both lists are sorted, so walk them side by side.
        let added = walk(&mut out, self.holders(), net.addresses.iter());
        let added6 = walk(&mut out, self.holders6(), net.addresses6.iter());
        // Ports: `net`'s list is normally this one with some entries dropped and new ones at the end (the order
        // they were published in). Walk both: an entry that is not next in `net` is gone; whatever of `net` is
        // left after the walk is new. Any other order still comes out right, as removals and re-adds.
        let mut next = 0;
        for (sandbox, m) in self.published() {
            if net
                .published
                .get(next)
                .is_some_and(|p| p.sandbox == sandbox && p.mapping == *m)
            {
                next += 1;
            } else {
                let _ = writeln!(out, "-port {}", port_entry(sandbox, m));
            }
        }
        let mut cursor = self.cursor;
        for (ip, owner) in added {
            hold(&mut out, ip.into(), owner);
            cursor = Some(ip);
        }
        let mut cursor6 = self.cursor6;
        for (ip, owner) in added6 {
            hold(&mut out, ip.into(), owner);
            cursor6 = Some(ip);
        }
        for p in &net.published[next..] {
            publish(&mut out, &p.sandbox, &p.mapping);
        }
        if let Some(want) = net.last_allocated {
            if cursor != Some(want) {
                let _ = writeln!(out, "cursor {want}");
            }
        }
        if let Some(want) = net.last_allocated6 {
            if cursor6 != Some(want) {
                let _ = writeln!(out, "cursor {want}");
            }
        }
        out
    }

    /// The live entries only, as the text of a fresh file.
    pub fn compacted(&self) -> String {
        let mut out = String::new();
        for (ip, owner) in self.holders() {
            hold(&mut out, ip.into(), owner);
        }
        for (ip, owner) in self.holders6() {
            hold(&mut out, ip.into(), owner);
        }
        for (sandbox, m) in self.published() {
            publish(&mut out, sandbox, m);
        }
        if let Some(c) = self.cursor {
            let _ = writeln!(out, "cursor {c}");
        }
        if let Some(c) = self.cursor6 {
            let _ = writeln!(out, "cursor {c}");
        }
        out
    }

    /// Copy these entries into the network record.
    pub fn allocations(&self) -> Allocations {
        Allocations {
            addresses: self.holders().map(|(ip, o)| (ip, o.to_string())).collect(),
            published: self
                .published()
                .map(|(o, m)| Published {
                    sandbox: o.to_string(),
                    mapping: *m,
                })
                .collect(),
            last_allocated: self.cursor,
            addresses6: self.holders6().map(|(ip, o)| (ip, o.to_string())).collect(),
            last_allocated6: self.cursor6,
        }
    }
}

impl Allocated for Ledger {
    fn is_allocated(&self, ip: Ipv4Addr) -> bool {
        self.holder(ip).is_some()
    }

    fn holder(&self, ip: Ipv4Addr) -> Option<&str> {
        let i = self
            .allocations
            .binary_search_by_key(&ip, |&(a, _)| a)
            .ok()?;
        Some(self.name(self.allocations[i].1))
    }

    fn cursor(&self) -> Option<Ipv4Addr> {
        self.cursor
    }
}

impl Allocated<Ipv6Addr> for Ledger {
    fn is_allocated(&self, ip: Ipv6Addr) -> bool {
        Allocated::<Ipv6Addr>::holder(self, ip).is_some()
    }

    fn holder(&self, ip: Ipv6Addr) -> Option<&str> {
        let i = self
            .allocations6
            .binary_search_by_key(&ip, |&(a, _)| a)
            .ok()?;
        Some(self.name(self.allocations6[i].1))
    }

    fn cursor(&self) -> Option<Ipv6Addr> {
        self.cursor6
    }
}

/// Walk a family's allocated addresses (`allocated`, sorted) beside the ones wanted (`wanted`, sorted),
/// writing a `-ip` line for each that goes or changes hands; returns the ones to add, in order.
fn walk<'w, A: Copy + Ord + std::fmt::Display + 'w>(
    out: &mut String,
    allocated: impl Iterator<Item = (A, &'w str)>,
    wanted: impl Iterator<Item = (&'w A, &'w String)>,
) -> Vec<(A, &'w str)> {
    let (mut allocated, mut wanted) = (allocated.peekable(), wanted.peekable());
    let mut added = Vec::new();
    loop {
        match (allocated.peek(), wanted.peek()) {
            (None, None) => break,
            (Some((ip, _)), None) => {
                let _ = writeln!(out, "-ip {ip}");
                allocated.next();
            }
            (None, Some((wip, wowner))) => {
                added.push((**wip, wowner.as_str()));
                wanted.next();
            }
            (Some((hip, howner)), Some((wip, wowner))) => {
                if hip < *wip {
                    let _ = writeln!(out, "-ip {hip}");
                    allocated.next();
                } else if *wip < hip {
                    added.push((**wip, wowner.as_str()));
                    wanted.next();
                } else {
                    if howner != wowner {
                        let _ = writeln!(out, "-ip {hip}");
                        added.push((**wip, wowner.as_str()));
                    }
                    allocated.next();
                    wanted.next();
                }
            }
        }
    }
    added
}

/// One read through a ledger's text, in the order it was written.
#[derive(Default)]
struct Pass<'a> {
    /// Every `+ip` (with its sandbox) and `-ip` (without), as written.
    addresses: Vec<(Ipv4Addr, Option<&'a str>)>,
    /// The same for IPv6 addresses.
    addresses6: Vec<(Ipv6Addr, Option<&'a str>)>,
    ports: Vec<(&'a str, PortMapping)>,
    /// Removed ports, by count: dropped after the pass rather than searched for line by line. The ledger
    /// only ever removes a port it holds, so the result is the same.
    gone: HashMap<(&'a str, PortMapping), usize>,
    cursor: Option<Ipv4Addr>,
    cursor6: Option<Ipv6Addr>,
    lines: usize,
}

/// One line of a ledger.
pub(super) enum Entry<'a> {
    /// `+ip ADDRESS SANDBOX`, either family
    Hold(IpAddr, &'a str),
    /// `-ip ADDRESS`
    Free(IpAddr),
    /// `+port SANDBOX PROTO HOST_IP|* HOST_PORT CONTAINER_PORT COUNT`
    Publish(&'a str, PortMapping),
    /// `-port ...`, as `+port`
    Unpublish(&'a str, PortMapping),
    /// `cursor ADDRESS`, each family's own
    Cursor(IpAddr),
}

impl<'a> Entry<'a> {
    pub(super) fn parse(line: &'a str) -> Result<Entry<'a>, String> {
        let mut f = Fields(line);
        Ok(match f.next().unwrap_or_default() {
            "+ip" => {
                let (ip, sandbox) = (f.next(), f.next());
                let (Some(ip), Some(sandbox), None) = (ip, sandbox, f.next()) else {
                    return Err("an address entry has an address and a sandbox".into());
                };
                Entry::Hold(addr(ip)?, sandbox)
            }
            "-ip" => Entry::Free(addr(f.rest())?),
            "+port" => {
                let (sandbox, m) = published(f)?;
                Entry::Publish(sandbox, m)
            }
            "-port" => {
                let (sandbox, m) = published(f)?;
                Entry::Unpublish(sandbox, m)
            }
            "cursor" => Entry::Cursor(addr(f.rest())?),
            _ => return Err("not a ledger entry".into()),
        })
    }
}

impl<'a> Pass<'a> {
    fn line(&mut self, line: &'a str) -> Result<(), String> {
        match Entry::parse(line)? {
            Entry::Hold(IpAddr::V4(ip), sandbox) => {
                self.addresses.push((ip, Some(sandbox)));
                self.cursor = Some(ip);
            }
            Entry::Hold(IpAddr::V6(ip), sandbox) => {
                self.addresses6.push((ip, Some(sandbox)));
                self.cursor6 = Some(ip);
            }
            Entry::Free(IpAddr::V4(ip)) => self.addresses.push((ip, None)),
            Entry::Free(IpAddr::V6(ip)) => self.addresses6.push((ip, None)),
            Entry::Publish(sandbox, m) => self.ports.push((sandbox, m)),
            Entry::Unpublish(sandbox, m) => *self.gone.entry((sandbox, m)).or_default() += 1,
            Entry::Cursor(IpAddr::V4(ip)) => self.cursor = Some(ip),
            Entry::Cursor(IpAddr::V6(ip)) => self.cursor6 = Some(ip),
        }
        self.lines += 1;
        Ok(())
    }

    /// The live IPv6 addresses, by address: the last word on each holds.
    fn live6(&mut self) -> impl Iterator<Item = (Ipv6Addr, &'a str)> + '_ {
        self.addresses6.sort_by_key(|&(ip, _)| ip);
        self.addresses6
            .chunk_by(|a, b| a.0 == b.0)
            .filter_map(|entries| {
                let (ip, sandbox) = entries.last()?;
                Some((*ip, (*sandbox)?))
            })
    }

    /// The live entries: the allocated addresses by address, and the published ports in order.
    #[allow(clippy::type_complexity)]
    fn live(
        &mut self,
    ) -> (
        impl Iterator<Item = (Ipv4Addr, &'a str)> + '_,
        impl Iterator<Item = (&'a str, PortMapping)> + '_,
    ) {
        // The last word on each address holds: a stable sort keeps each address's entries in order.
        self.addresses.sort_by_key(|&(ip, _)| ip);
        let allocations = self
            .addresses
            .chunk_by(|a, b| a.0 == b.0)
            .filter_map(|entries| {
                let (ip, sandbox) = entries.last()?;
                Some((*ip, (*sandbox)?))
            });
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
        (allocations, self.ports.iter().copied())
    }
}

/// Whether a ledger of `lines` lines, `live` of them entries in force, is worth rewriting: when it would drop
/// more lines than it keeps (the cursor line counts as kept).
pub(super) fn worth_compacting(lines: usize, live: usize) -> bool {
    lines > 64 && lines > 2 * (live + 1)
}

/// Write the line `+ip IP SANDBOX`.
fn hold(out: &mut String, ip: IpAddr, sandbox: &str) {
    let _ = writeln!(out, "+ip {ip} {sandbox}");
}

/// Write the line `+port SANDBOX ...`.
fn publish(out: &mut String, sandbox: &str, m: &PortMapping) {
    let _ = writeln!(out, "+port {}", port_entry(sandbox, m));
}

fn port_entry(sandbox: &str, m: &PortMapping) -> String {
    let host_ip = m.host_ip.map_or("*".to_string(), |ip| ip.to_string());
    format!(
        "{sandbox} {} {host_ip} {} {} {}",
        m.protocol, m.host_port, m.container_port, m.count
    )
}

/// An address as nsnet writes it: a dotted quad (no leading zeros; a byte loop, as the ledger holds one or
/// two per line), or an IPv6 address (any form std reads).
fn addr(text: &str) -> Result<IpAddr, String> {
    if text.contains(':') {
        return text
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| format!("'{text}' is not an IPv6 address"));
    }
    quad(text.as_bytes())
        .map(IpAddr::V4)
        .ok_or_else(|| format!("'{text}' is not an IPv4 address"))
}

fn quad(text: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let (mut i, mut n, mut digits) = (0, 0u32, 0);
    for &c in text {
        match c {
            // A second digit after a leading 0 is a leading zero.
            b'0'..=b'9' if !(digits == 1 && n == 0) && digits < 3 => {
                n = n * 10 + u32::from(c - b'0');
                digits += 1;
            }
            b'.' if digits > 0 && i < 3 => {
                octets[i] = u8::try_from(n).ok()?;
                (i, n, digits) = (i + 1, 0, 0);
            }
            _ => return None,
        }
    }
    if digits == 0 || i != 3 {
        return None;
    }
    octets[3] = u8::try_from(n).ok()?;
    Some(Ipv4Addr::from(octets))
}

fn port(text: &str) -> Result<u16, String> {
    number(text, 65535)
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| format!("'{text}' is not a port number"))
}

/// A decimal number up to `max`, without sign or leading zeros.
fn number(text: &str, max: u32) -> Option<u32> {
    let b = text.as_bytes();
    if b.is_empty() || b.len() > 5 || (b.len() > 1 && b[0] == b'0') {
        return None;
    }
    let mut n = 0u32;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u32::from(c - b'0');
    }
    (n <= max).then_some(n)
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

    fn net() -> Allocations {
        Allocations::default()
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
    fn step(text: &mut String, want: &Allocations) -> Ledger {
        let l = Ledger::parse(text.clone()).unwrap();
        text.push_str(&l.changes_to(want));
        let after = Ledger::parse(text.clone()).unwrap();
        assert_eq!(&after.allocations(), want, "ledger text:\n{text}");
        after
    }

    /// What a power loss can leave of an unsynced append: the line cut short, or NUL bytes where the file grew
    /// before its data landed. The tail is left out, and the next append goes where it began.
    #[test]
    fn a_torn_last_append_is_left_out() {
        let whole = "+ip 10.89.0.2 a\n+ip 10.89.0.3 b\n".to_string();
        for torn in [
            format!("{whole}+ip 10.89.0.4 c"),
            format!("{whole}+ip 10.8"),
            format!("{whole}\0\0\0\0\0\0"),
            format!("{whole}+ip 10.89.0.4\0\0\0"),
        ] {
            let l = Ledger::parse(torn.clone()).unwrap_or_else(|e| panic!("{torn:?}: {e}"));
            assert_eq!(l.len(), whole.len() as u64, "{torn:?}");
            let held: Vec<Ipv4Addr> = l.allocations().addresses.keys().copied().collect();
            assert_eq!(
                held,
                [Ipv4Addr::new(10, 89, 0, 2), Ipv4Addr::new(10, 89, 0, 3)]
            );
        }
    }

    /// A ledger as nsnet wrote it before IPv6 reads to the same entries.
    #[test]
    fn a_ledger_written_before_ipv6_reads_the_same() {
        let l = Ledger::parse(include_str!("../../tests/golden/ledger-ipv4.txt").into()).unwrap();
        let a = l.allocations();
        let held: Vec<String> = a
            .addresses
            .iter()
            .map(|(ip, o)| format!("{ip} {o}"))
            .collect();
        assert_eq!(held, ["10.89.3.2 app", "10.89.3.4 ~nsrt1a2b3c4d"]);
        assert_eq!(a.last_allocated, Some(Ipv4Addr::new(10, 89, 3, 4)));
        let ports: Vec<String> = a.published.iter().map(|p| p.mapping.to_string()).collect();
        assert_eq!(ports, ["8080:80/tcp", "10.0.1.48:5300-5301:53-54/udp"]);
        assert!(a.addresses6.is_empty() && a.last_allocated6.is_none());
        assert_eq!(
            l.compacted(),
            "+ip 10.89.3.2 app\n+ip 10.89.3.4 ~nsrt1a2b3c4d\n+port app tcp * 8080 80 1\n\
             +port app udp 10.0.1.48 5300 53 2\ncursor 10.89.3.4\n"
        );
    }

    #[test]
    fn ipv6_addresses_have_their_own_lines_and_cursor() {
        let ip6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        let mut want = net();
        want.addresses
            .insert(Ipv4Addr::new(10, 0, 0, 2), "a".into());
        want.addresses6.insert(ip6("fd00::2"), "a".into());
        want.last_allocated = Some(Ipv4Addr::new(10, 0, 0, 2));
        want.last_allocated6 = Some(ip6("fd00::2"));
        let mut text = String::new();
        step(&mut text, &want);
        assert_eq!(text, "+ip 10.0.0.2 a\n+ip fd00::2 a\n");
        want.addresses6.insert(ip6("fd00::3"), "b".into());
        want.last_allocated6 = Some(ip6("fd00::3"));
        step(&mut text, &want);
        assert!(text.ends_with("+ip fd00::3 b\n"), "{text}");
        want.release("a");
        let l = step(&mut text, &want);
        assert!(text.ends_with("-ip 10.0.0.2\n-ip fd00::2\n"), "{text}");
        assert_eq!(l.holder(ip6("fd00::3")), Some("b"));
        assert!(!l.is_allocated(ip6("fd00::2")));
        // The cursor of one family never moves the other's.
        assert_eq!(
            Allocated::<Ipv4Addr>::cursor(&l),
            Some(Ipv4Addr::new(10, 0, 0, 2))
        );
        assert_eq!(l.cursor6(), Some(ip6("fd00::3")));
        want.last_allocated6 = Some(ip6("fd00::9"));
        step(&mut text, &want);
        assert!(text.ends_with("cursor fd00::9\n"), "{text}");
        let compacted = Ledger::parse(text).unwrap().compacted();
        assert_eq!(
            compacted,
            "+ip fd00::3 b\ncursor 10.0.0.2\ncursor fd00::9\n"
        );
        assert_eq!(Ledger::parse(compacted).unwrap().allocations(), want);
        assert!(Ledger::parse("+ip fd00::zz a\n".into())
            .unwrap_err()
            .contains("not an IPv6 address"));
    }

    #[test]
    fn appends_only_what_changed_and_reads_back() {
        let mut text = String::new();
        let mut n = net();
        for i in 2..6u8 {
            let ip = Ipv4Addr::new(10, 89, 0, i);
            n.addresses.insert(ip, format!("s{i}"));
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
        n.addresses.insert(Ipv4Addr::new(10, 89, 0, 3), "t".into());
        step(&mut text, &n);
        assert!(
            text.ends_with("+ip 10.89.0.3 t\ncursor 10.89.0.5\n"),
            "{text}"
        );
        // Nothing changed: nothing to append.
        assert_eq!(Ledger::parse(text).unwrap().changes_to(&n), "");
    }

    #[test]
    fn compaction_keeps_the_live_entries_and_the_cursor() {
        let mut text = String::new();
        let mut n = net();
        for round in 0..40u8 {
            let ip = Ipv4Addr::new(10, 89, 0, 2 + round);
            n.addresses.insert(ip, "x".into());
            n.last_allocated = Some(ip);
            step(&mut text, &n);
            n.release("x");
            step(&mut text, &n);
        }
        n.addresses
            .insert(Ipv4Addr::new(10, 89, 0, 100), "keep".into());
        let l = step(&mut text, &n);
        assert!(l.wants_compaction());
        let fresh = l.compacted();
        // The cursor is where the last hand-out left it, not at the address given by hand.
        assert_eq!(fresh, "+ip 10.89.0.100 keep\ncursor 10.89.0.41\n");
        let again = Ledger::parse(fresh).unwrap();
        assert_eq!(entries(&again), entries(&l));
        assert!(!again.wants_compaction());
    }

    #[test]
    fn the_last_word_on_each_address_and_port_holds() {
        let l = Ledger::parse(
            "+ip 10.89.0.9 a\n+ip 10.89.0.2 b\n-ip 10.89.0.9\n+ip 10.89.0.9 c\n+ip 10.89.0.3 d\n\
             -ip 10.89.0.3\n-ip 10.89.0.7\n+port b tcp * 80 80 1\n+port b tcp * 80 80 1\n\
             +port c udp 10.0.0.1 53 53 1\n-port b tcp * 80 80 1\n"
                .to_string(),
        )
        .unwrap();
        let owners: Vec<(String, &str)> = l.holders().map(|(ip, o)| (ip.to_string(), o)).collect();
        assert_eq!(
            owners,
            [("10.89.0.2".into(), "b"), ("10.89.0.9".into(), "c")]
        );
        // The cursor is the last address handed out, whatever became of it.
        assert_eq!(l.cursor, Some(Ipv4Addr::new(10, 89, 0, 3)));
        // One removal takes one of two equal entries.
        let ports: Vec<(&str, u16)> = l.published().map(|(o, m)| (o, m.host_port)).collect();
        assert_eq!(ports, [("b", 80), ("c", 53)]);
        assert_eq!(l.lines, 11);
        assert_eq!(l.holder(Ipv4Addr::new(10, 89, 0, 9)), Some("c"));
        assert_eq!(l.holder(Ipv4Addr::new(10, 89, 0, 3)), None);
        assert_eq!(l.addresses(), 2);
    }

    /// A ledger's entries, to compare two read from different texts.
    #[allow(clippy::type_complexity)]
    fn entries(
        l: &Ledger,
    ) -> (
        Vec<(Ipv4Addr, &str)>,
        Vec<(&str, &PortMapping)>,
        Option<Ipv4Addr>,
    ) {
        (l.holders().collect(), l.published().collect(), l.cursor)
    }

    #[test]
    fn joined_lines_read_back_as_the_join() {
        let mut text = String::new();
        let mut n = net();
        let ip = Ipv4Addr::new(10, 89, 0, 7);
        let m = published("j", 8080).mapping;
        text.push_str(&Ledger::joined("j", Some(ip), None, &[m]));
        n.addresses.insert(ip, "j".into());
        n.published.push(published("j", 8080));
        n.last_allocated = Some(ip);
        // The join's lines are exactly what the diff of the records would append.
        assert_eq!(Ledger::default().changes_to(&n), text);
        let l = Ledger::parse(text).unwrap();
        assert_eq!(l.holder(ip), Some("j"));
        assert_eq!(l.cursor(), Some(ip));
    }

    #[test]
    fn numbers_read_as_std_reads_them() {
        for t in [
            "0.0.0.0",
            "10.89.0.5",
            "255.255.255.255",
            "1.2.3",
            "1.2.3.4.5",
            "256.1.1.1",
            "01.2.3.4",
            "1..2.3",
            "",
            "a.b.c.d",
            "1.2.3.4 ",
            "-1.2.3.4",
        ] {
            assert_eq!(
                addr(t).ok(),
                t.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
                "{t:?}"
            );
        }
        for t in ["0", "80", "65535", "65536", "", "x", "99999", "123456"] {
            assert_eq!(port(t).ok(), t.parse::<u16>().ok(), "{t:?}");
        }
        // Stricter than std where nsnet never writes such text.
        assert!(port("+80").is_err() && port("080").is_err());
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
            let e = Ledger::parse(text.to_string()).unwrap_err();
            assert!(e.contains(what), "{text:?}: {e}");
        }
    }
}
