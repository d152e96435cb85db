//! Port 53 of 127.0.0.11 inside a sandbox, without taking port 53 from the sandbox.
//!
//! The resolver ([`crate::dns`]) listens in each sandbox on 127.0.0.11 at a random port P. A socket on
//! 127.0.0.11:53 itself would keep the sandbox's own programs from binding 0.0.0.0:53 (a DNS server in a
//! container: EADDRINUSE). Docker solves that with a DNAT rule in every container, which turns connection
//! tracking on for all of the container's traffic. nsnet instead puts a small bpf program on the ingress of
//! the sandbox's `lo`, which every packet to and from 127.0.0.11 crosses, and rewrites ports statelessly:
//! to 127.0.0.11:53 becomes to :P, and from 127.0.0.11:P becomes from :53, for UDP and TCP. Nothing else is
//! touched, and nothing is tracked.

use std::io;
use std::os::fd::AsFd;

use super::bpf::op::*;
use super::bpf::{Insn, Program};
use super::{FilterAt, KernelError, Netlink, TcHook};
use crate::dns::RESOLVER_ADDR;

/// The program's name (and its tc filter's).
pub const NAME: &str = "nsnet_dns";
/// `lo` is always the first link of a namespace.
const LO: u32 = 1;

const HELPER_SKB_STORE_BYTES: i32 = 9;
const HELPER_L4_CSUM_REPLACE: i32 = 11;
/// `BPF_F_MARK_MANGLED_0`: a UDP checksum of 0 (none) stays 0.
const MANGLED_0: i32 = 0x20;
/// Frame offsets on `lo` (an Ethernet header of zeros, then IPv4 without options).
const ETH_TYPE: i16 = 12;
const IP_VHL: i16 = 14;
const IP_PROTO: i16 = 23;
const IP_SADDR: i16 = 26;
const IP_DADDR: i16 = 30;
const L4_SPORT: i32 = 34;
const L4_DPORT: i32 = 36;
const UDP_CSUM: i32 = 40;
const TCP_CSUM: i32 = 50;
const HEADERS: i32 = 38;

/// A value as the program loads it from the frame (network order bytes, read in host order).
fn wire16(v: u16) -> i32 {
    i32::from(u16::from_ne_bytes(v.to_be_bytes()))
}

fn op(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// The program for port `port`: straight-line, every jump forward, counted by hand below.
pub fn program(port: u16) -> io::Result<Vec<Insn>> {
    let addr = i32::from_ne_bytes(RESOLVER_ADDR.octets());
    let (dns, p) = (wire16(53), wire16(port));
    // One rewrite: the port at `at` goes from `from` to `to`; the checksum's offset is in r8, its flags in r9.
    let rewrite = |at: i32, from: i32, to: i32| -> Vec<Insn> {
        vec![
            op(MOV64_X, R1, R6, 0, 0),
            op(MOV64_X, R2, R8, 0, 0),
            op(MOV64_K, R3, 0, 0, from),
            op(MOV64_K, R4, 0, 0, to),
            op(MOV64_X, R5, R9, 0, 0),
            op(OR64_K, R5, 0, 0, 2),
            op(CALL, 0, 0, 0, HELPER_L4_CSUM_REPLACE),
            op(ST_H, R10, 0, -2, to),
            op(MOV64_X, R1, R6, 0, 0),
            op(MOV64_K, R2, 0, 0, at),
            op(MOV64_X, R3, R10, 0, 0),
            op(ADD64_K, R3, 0, 0, -2),
            op(MOV64_K, R4, 0, 0, 2),
        ]
    };
    // The tail of a rewrite: flags 0 and the store.
    let store = [
        op(MOV64_K, R5, 0, 0, 0),
        op(CALL, 0, 0, 0, HELPER_SKB_STORE_BYTES),
    ];
    let request = [rewrite(L4_DPORT, dns, p), store.to_vec()].concat();
    let reply = [rewrite(L4_SPORT, p, dns), store.to_vec()].concat();
    let rq = len(&request)?;
    let mut v = vec![
        op(MOV64_X, R6, R1, 0, 0),
        op(LDX_W, R2, R6, SKB_DATA, 0),
        op(LDX_W, R3, R6, SKB_DATA_END, 0),
        op(MOV64_X, R4, R2, 0, 0),
        op(ADD64_K, R4, 0, 0, HEADERS),
    ];
    // From here every "pass" jumps to the last instruction pair; offsets are filled in below.
    let head = v.len();
    v.extend([
        op(JGT_X, R4, R3, PASS, 0),
        op(LDX_H, R4, R2, ETH_TYPE, 0),
        op(JNE_K, R4, 0, PASS, wire16(0x0800)),
        op(LDX_B, R4, R2, IP_VHL, 0),
        op(JNE_K, R4, 0, PASS, 0x45),
        op(LDX_B, R7, R2, IP_PROTO, 0),
        // UDP: the checksum at 40, and a zero one stays zero.
        op(MOV64_K, R8, 0, 0, UDP_CSUM),
        op(MOV64_K, R9, 0, 0, MANGLED_0),
        op(JEQ_K, R7, 0, 3, 17),
        op(JNE_K, R7, 0, PASS, 6),
        op(MOV64_K, R8, 0, 0, TCP_CSUM),
        op(MOV64_K, R9, 0, 0, 0),
        // To 127.0.0.11:53: the request rewrite; else from 127.0.0.11:P: the reply rewrite.
        op(LDX_W, R4, R2, IP_DADDR, 0),
        op(JNE_K, R4, 0, 2, addr),
        op(LDX_H, R4, R2, L4_DPORT_16, 0),
        op(JEQ_K, R4, 0, 4, dns),
        op(LDX_W, R4, R2, IP_SADDR, 0),
        op(JNE_K, R4, 0, PASS, addr),
        op(LDX_H, R4, R2, L4_SPORT_16, 0),
        op(JNE_K, R4, 0, PASS, p),
    ]);
    // The reply rewrite comes first (falls through from the checks), then a jump over the request one.
    v.extend(reply);
    v.push(op(JA, 0, 0, rq, 0));
    let request_at = v.len();
    v.extend(request);
    let pass = v.len();
    v.push(op(MOV64_K, R0, 0, 0, -1));
    v.push(op(EXIT, 0, 0, 0, 0));
    // The `JEQ dport == 53` jumps over the saddr/sport checks and the reply rewrite and its jump: to request.
    for (i, insn) in v.iter_mut().enumerate().skip(head) {
        if i >= request_at {
            break;
        }
        if insn.off == PASS {
            insn.off = i16::try_from(pass - i - 1).map_err(|_| too_long())?;
        }
        if insn.code == JEQ_K && insn.imm == dns {
            insn.off = i16::try_from(request_at - i - 1).map_err(|_| too_long())?;
        }
    }
    Ok(v)
}

/// A jump target not yet known: the pass at the end.
const PASS: i16 = i16::MIN;
const L4_DPORT_16: i16 = 36;
const L4_SPORT_16: i16 = 34;

fn len(v: &[Insn]) -> io::Result<i16> {
    i16::try_from(v.len()).map_err(|_| too_long())
}

fn too_long() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "the dns port program is too long for its jumps",
    )
}

/// In the namespace `nl` is bound to: 127.0.0.11:53 on `lo` goes to `port` (a filter already there, for an
/// earlier port, is replaced).
pub fn redirect(nl: &mut Netlink, port: u16) -> Result<(), KernelError> {
    let insns = program(port).map_err(|e| KernelError::io("assemble the dns port program", e))?;
    let prog = Program::load_sched_cls(NAME, &insns, "Apache-2.0")
        .map_err(|e| KernelError::io("load the dns port program", e))?;
    nl.add_own_ingress_qdisc(LO)?;
    nl.replace_bpf_filter(
        FilterAt::Link(LO, TcHook::Ingress),
        (1, 1),
        prog.fd().as_fd(),
        NAME,
    )
}

/// Undo [`redirect`] in the namespace `nl` is bound to: the ingress qdisc of `lo` goes, if the program is
/// all it holds (a filter someone else put there keeps it, and the program with it: mapping a port nothing
/// listens on is harmless).
pub fn unredirect(nl: &mut Netlink) -> Result<(), KernelError> {
    let filters = nl.bpf_filters(FilterAt::Link(LO, TcHook::Ingress))?;
    if !filters.is_empty() && filters.iter().all(|f| f.name == NAME) {
        nl.delete_ingress_qdisc(LO)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_jump_lands_inside_and_forward() {
        let p = program(40_000).expect("assembles");
        assert_eq!(p.last().map(|i| i.code), Some(EXIT));
        for (i, insn) in p.iter().enumerate() {
            if matches!(insn.code, JA | JEQ_K | JNE_K | JGT_X) {
                assert!(insn.off >= 0, "jump at {i} goes back");
                let to = i + 1 + usize::try_from(insn.off).unwrap_or(usize::MAX);
                assert!(to < p.len(), "jump at {i} leaves the program");
            }
        }
    }
}
