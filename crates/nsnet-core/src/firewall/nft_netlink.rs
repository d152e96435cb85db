//! The hot path of the nftables driver: adding and removing set and map elements (published ports, endpoint
//! guards, an overlay's member hosts) straight over nf_tables netlink, in one nfnetlink batch (one kernel transaction).
//!
//! Why not `nft -f`: every `nft` run costs a process (~3 ms), and nft 1.0.6 loads a set's whole contents before
//! deleting one element from it, so removing a published port grew with the number of ports. Here both are
//! constant: the kernel's hash sets do one lookup, and deletions use `NFT_MSG_DESTROYSETELEM` (Linux 6.3+),
//! which, unlike `DELSETELEM`, is not an error when the element is already gone, so teardown stays idempotent.
//! On an older kernel the caller falls back to `nft -f`.
//!
//! Keys and values are written as nftables stores them: each field of a concatenation padded to 4 bytes,
//! integers in network byte order, interface names as 16 zero-padded bytes.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use nix::fcntl::OFlag;
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, pipe2, read, ForkResult};

use super::element::{elements, Element};
use super::{Batch, Change, Rule};

/// The name of both of nsnet's tables (`inet nsnet`, `bridge nsnet`); the family tells them apart.
const TABLE_NAME: &str = "nsnet";
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DESTROYSETELEM: u16 = 30;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;

/// Whether every change in the batch is an element of a plain (non-interval) set, which this path handles.
pub fn handles(batch: &Batch) -> bool {
    !batch.is_empty()
        && batch.0.iter().all(|c| {
            matches!(
                c,
                Change::Add(Rule::Port { .. } | Rule::Endpoint { .. } | Rule::VxlanMember { .. })
                    | Change::Delete(
                        Rule::Port { .. } | Rule::Endpoint { .. } | Rule::VxlanMember { .. }
                    )
            )
        })
}

/// A netlink attribute writer.
struct Attrs(Vec<u8>);

impl Attrs {
    /// One attribute; an attribute's length is a `u16`, so a longer one is an error (a message holds at most
    /// [`ELEMENTS_PER_MESSAGE`] elements, which keeps its element list far below that).
    fn put(&mut self, kind: u16, payload: &[u8]) -> io::Result<()> {
        let len = u16::try_from(4 + payload.len()).map_err(|_| too_long("attribute"))?;
        self.0.extend(len.to_ne_bytes());
        self.0.extend(kind.to_ne_bytes());
        self.0.extend(payload);
        self.0.resize(self.0.len().div_ceil(4) * 4, 0);
        Ok(())
    }

    fn nest(&mut self, kind: u16, inner: Attrs) -> io::Result<()> {
        self.put(kind | NLA_F_NESTED, &inner.0)
    }

    fn string(&mut self, kind: u16, s: &str) -> io::Result<()> {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.put(kind, &b)
    }
}

/// An nfnetlink message: netlink header, nfgenmsg, attributes.
fn message(
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[u8],
) -> io::Result<Vec<u8>> {
    let len = 16 + 4 + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend(
        u32::try_from(len)
            .map_err(|_| too_long("message"))?
            .to_ne_bytes(),
    );
    m.extend(kind.to_ne_bytes());
    m.extend(flags.to_ne_bytes());
    m.extend(seq.to_ne_bytes());
    m.extend(0u32.to_ne_bytes());
    m.push(family);
    m.push(0); // NFNETLINK_V0
    m.extend(res_id.to_be_bytes());
    m.extend(attrs);
    Ok(m)
}

fn too_long(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("nfnetlink {what} too long"),
    )
}

/// Most elements in one message: keeps each message well under the socket buffers.
const ELEMENTS_PER_MESSAGE: usize = 256;

/// The whole batch as one nfnetlink transaction. Consecutive elements of the same set and operation share a
/// message (one ack each, not one per element). Returns the bytes and the sequence numbers that get acks.
/// `legacy`: the main table is an older nsnet's `ip nsnet`.
fn encode(batch: &Batch, legacy: bool) -> io::Result<(Vec<u8>, Vec<u32>)> {
    // (message type, element) in batch order.
    let mut ops: Vec<(u16, Element)> = Vec::new();
    for change in &batch.0 {
        let (rule, kind) = match change {
            Change::Add(r) => (r, NFT_MSG_NEWSETELEM),
            Change::Delete(r) => (r, NFT_MSG_DESTROYSETELEM),
        };
        ops.extend(elements(rule).into_iter().map(|e| (kind, e)));
    }
    let mut out = message(
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        1,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    )?;
    let mut seqs = Vec::new();
    let mut seq = 1;
    let mut i = 0;
    while i < ops.len() {
        let (kind, first) = (ops[i].0, &ops[i].1);
        let same =
            |(k, e): &(u16, Element)| *k == kind && e.family == first.family && e.set == first.set;
        let run = ops[i..]
            .iter()
            .take(ELEMENTS_PER_MESSAGE)
            .take_while(|op| same(op))
            .count();
        let mut list = Attrs(Vec::new());
        for (_, e) in &ops[i..i + run] {
            let Some(key_bytes) = e.key_bytes() else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("set {} needs nft", e.set),
                ));
            };
            let mut key = Attrs(Vec::new());
            key.put(NFTA_DATA_VALUE, &key_bytes)?;
            let mut elem = Attrs(Vec::new());
            elem.nest(NFTA_SET_ELEM_KEY, key)?;
            if let (Some(value), NFT_MSG_NEWSETELEM) = (e.value_bytes(), kind) {
                let mut data = Attrs(Vec::new());
                data.put(NFTA_DATA_VALUE, &value)?;
                elem.nest(NFTA_SET_ELEM_DATA, data)?;
            }
            list.nest(NFTA_LIST_ELEM, elem)?;
        }
        let mut attrs = Attrs(Vec::new());
        attrs.string(NFTA_SET_ELEM_LIST_TABLE, TABLE_NAME)?;
        attrs.string(NFTA_SET_ELEM_LIST_SET, first.set)?;
        attrs.nest(NFTA_SET_ELEM_LIST_ELEMENTS, list)?;
        let flags = match kind {
            NFT_MSG_NEWSETELEM => NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
            _ => NLM_F_REQUEST | NLM_F_ACK,
        };
        seq += 1;
        seqs.push(seq);
        out.extend(message(
            (NFNL_SUBSYS_NFTABLES << 8) | kind,
            flags,
            seq,
            first.family.nfproto(legacy),
            0,
            &attrs.0,
        )?);
        i += run;
    }
    out.extend(message(
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq + 1,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    )?);
    Ok((out, seqs))
}

/// A socket buffer size as the kernel takes it, an `int` (nix passes the value on as one): a larger request
/// gets the largest.
fn buffer_size(size: usize) -> usize {
    size.min(usize::try_from(libc::c_int::MAX).unwrap_or(usize::MAX))
}

/// Apply a fast-path batch as one kernel transaction. Errors carry the kernel's errno (the whole batch is
/// rolled back by the kernel when any message fails). `legacy`: write to an older nsnet's `ip nsnet`.
pub fn apply(batch: &Batch, legacy: bool) -> io::Result<()> {
    let (bytes, seqs) = encode(batch, legacy)?;
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    // The kernel runs a batch from one datagram, so a large one (10,000 ports is ~440 KB) needs a send buffer
    // that big; its acks come back together too. The FORCE options (root) pass the sysctl limits, as nft does.
    let room = buffer_size(bytes.len() + (64 << 10));
    setsockopt(&sock, sockopt::SndBufForce, &room)?;
    setsockopt(&sock, sockopt::RcvBufForce, &room)?;
    sock.send(&bytes, 0)?;
    let mut pending: Vec<u32> = seqs;
    let mut buf = Vec::with_capacity(64 * 1024);
    while !pending.is_empty() {
        buf.clear();
        let n = sock.recv(&mut buf, 0)?;
        let data = &buf[..n.min(buf.len())];
        let mut off = 0;
        while off + 16 <= data.len() {
            let len = u32::from_ne_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]])
                as usize;
            let kind = u16::from_ne_bytes([data[off + 4], data[off + 5]]);
            let seq =
                u32::from_ne_bytes([data[off + 8], data[off + 9], data[off + 10], data[off + 11]]);
            if len < 16 || off + len > data.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "short nfnetlink reply",
                ));
            }
            if kind == NLMSG_ERROR && len >= 20 {
                let code = i32::from_ne_bytes([
                    data[off + 16],
                    data[off + 17],
                    data[off + 18],
                    data[off + 19],
                ]);
                if code != 0 {
                    return Err(io::Error::from_raw_os_error(-code));
                }
                pending.retain(|s| *s != seq);
            }
            off += len.div_ceil(4) * 4;
        }
    }
    if batch.0.iter().any(|c| matches!(c, Change::Delete(_))) {
        release_later(sock);
    }
    Ok(())
}

/// Closing an nf_tables socket whose batch deleted elements blocks until the kernel has freed them: the
/// socket's NETLINK_URELEASE handler flushes nf_tables' destroy work, which waits for an RCU grace period
/// (10–20 ms here). The deletions are committed and in force already, so the last reference to the socket goes
/// to a detached grandchild: it holds its copy until this process has closed its own (a pipe's end of file
/// tells it), then exits, and the kernel's wait happens there, off the command's path. If `fork` or `pipe`
/// fails, the socket is simply closed here.
///
/// A binary that has opted in to [`crate::afterwards`] hands the socket there instead: one child for all
/// of the command's leftovers, forked once at its end and never waited for.
fn release_later(sock: Socket) {
    // SAFETY: `into_raw_fd` gives up the socket's descriptor, which this OwnedFd now owns alone.
    let fd = unsafe { OwnedFd::from_raw_fd(sock.into_raw_fd()) };
    let sock = match crate::afterwards::close_later(fd) {
        Ok(()) => return,
        // SAFETY: the descriptor came back unused and is owned by the Socket alone again.
        Err(fd) => unsafe { Socket::from_raw_fd(fd.into_raw_fd()) },
    };
    let Ok((read_end, write_end)) = pipe2(OFlag::O_CLOEXEC) else {
        return;
    };
    // SAFETY: the children run only async-signal-safe calls (fork, close_range, read, _exit) and allocate
    // nothing, so forking while other threads run is sound. The middle child exits at once, so the grandchild
    // is reparented to init, which reaps it; this process reaps the middle child and never waits on the
    // grandchild.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            // SAFETY: as above.
            if let Ok(ForkResult::Child) = unsafe { fork() } {
                // Its own copy of the write end goes first (close(2) is async-signal-safe): the end of file it
                // waits for must not depend on close_range(2), which some kernels and seccomp profiles refuse.
                drop(write_end);
                hold_until_closed(sock.as_raw_fd(), &read_end);
            }
            // SAFETY: _exit(2) is async-signal-safe and ends the middle child (also when the second fork failed)
            // without running the parent's exit handlers or destructors.
            unsafe { libc::_exit(0) }
        }
        Ok(ForkResult::Parent { child }) => {
            let _ = waitpid(child, None);
        }
        Err(_) => {}
    }
    drop(read_end);
    drop(sock);
    drop(write_end);
}

/// The grandchild of [`release_later`]: keeps only the socket and the pipe's read end (no lock file, pipe or
/// other descriptor of the command may outlive it here), waits for the pipe's end of file (every copy of the
/// write end closed: the command has closed its socket), then exits, closing the socket's last reference.
fn hold_until_closed(sock: RawFd, read_end: &OwnedFd) -> ! {
    let mut keep = [sock, read_end.as_raw_fd()];
    keep.sort_unstable();
    let mut from: libc::c_uint = 0;
    for k in keep {
        // Open descriptors are never negative.
        let Ok(k) = libc::c_uint::try_from(k) else {
            continue;
        };
        if k > from {
            // SAFETY: close_range(2) only closes descriptors; none in [from, k) is used by this process again
            // (it runs nothing but this function, which uses only the two kept descriptors).
            unsafe { libc::syscall(libc::SYS_close_range, from, k - 1, 0) };
        }
        from = k + 1;
    }
    // SAFETY: as above, for every descriptor above the last kept one.
    unsafe { libc::syscall(libc::SYS_close_range, from, libc::c_uint::MAX, 0) };
    let mut byte = [0u8; 1];
    // Returns at end of file: when every copy of the write end is closed.
    while matches!(read(read_end, &mut byte), Ok(n) if n > 0) {}
    // SAFETY: _exit(2) is async-signal-safe and ends this process without running destructors.
    unsafe { libc::_exit(0) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portmap::{PortMapping, Proto};
    use std::net::Ipv4Addr;

    #[test]
    fn an_attribute_longer_than_its_u16_length_is_refused() {
        let mut a = Attrs(Vec::new());
        assert!(a.put(1, &vec![0; usize::from(u16::MAX) - 4]).is_ok());
        let mut b = Attrs(Vec::new());
        let e = b.put(1, &vec![0; usize::from(u16::MAX) - 3]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(b.0.is_empty());
    }

    #[test]
    fn elements_of_one_set_share_a_message() {
        let mut b = Batch::default();
        b.add(Rule::Port {
            mapping: PortMapping {
                host_ip: None,
                host_port: 20000,
                container_port: 20000,
                count: 1000,
                protocol: Proto::Tcp,
            },
            target: Ipv4Addr::new(10, 89, 0, 2).into(),
        });
        let (_, seqs) = encode(&b, false).unwrap();
        assert_eq!(seqs.len(), 1000_usize.div_ceil(ELEMENTS_PER_MESSAGE));
    }

    #[test]
    fn only_plain_elements_take_this_path() {
        let mut b = Batch::default();
        b.add(Rule::Endpoint {
            host_interface: "v".into(),
            address: Some(Ipv4Addr::new(1, 2, 3, 4)),
            ipv6: vec![],
        });
        assert!(handles(&b));
        b.add(Rule::Isolate {
            from: "a".into(),
            to: "b".into(),
        });
        assert!(!handles(&b));
        assert!(!handles(&Batch::default()));
    }

    #[test]
    fn a_batch_is_framed_by_begin_and_end() {
        let mut b = Batch::default();
        b.delete(Rule::Endpoint {
            host_interface: "v".into(),
            address: Some(Ipv4Addr::new(1, 2, 3, 4)),
            ipv6: vec![],
        });
        let (bytes, seqs) = encode(&b, false).unwrap();
        assert_eq!(seqs.len(), 4);
        assert_eq!(
            u16::from_ne_bytes([bytes[4], bytes[5]]),
            NFNL_MSG_BATCH_BEGIN
        );
        // BEGIN is 20 bytes (header + nfgenmsg); the first element message follows it.
        assert_eq!(
            u16::from_ne_bytes([bytes[24], bytes[25]]),
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DESTROYSETELEM
        );
        let end = bytes.len() - 20;
        assert_eq!(
            u16::from_ne_bytes([bytes[end + 4], bytes[end + 5]]),
            NFNL_MSG_BATCH_END
        );
    }
}
