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
use super::bpf::{Asm, Insn, Program};
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
const L4_SPORT: i16 = 34;
const L4_DPORT: i16 = 36;
const UDP_CSUM: i32 = 40;
const TCP_CSUM: i32 = 50;
const HEADERS: i32 = 38;

/// A value as the program loads it from the frame (network order bytes, read in host order).
fn wire16(v: u16) -> i32 {
    i32::from(u16::from_ne_bytes(v.to_be_bytes()))
}

/// The program for port `port`.
pub fn program(port: u16) -> io::Result<Vec<Insn>> {
    let addr = i32::from_ne_bytes(RESOLVER_ADDR.octets());
    let (dns, p) = (wire16(53), wire16(port));
    let mut a = Asm::new();
    let (tcp, ports, reply, request) = (a.label(), a.label(), a.label(), a.label());
    a.op(MOV64_X, R6, R1, 0, 0);
    a.op(LDX_W, R2, R6, SKB_DATA, 0);
    a.op(LDX_W, R3, R6, SKB_DATA_END, 0);
    a.op(MOV64_X, R4, R2, 0, 0);
    a.op(ADD64_K, R4, 0, 0, HEADERS);
    a.or_pass(JGT_X, R4, R3, 0);
    // IPv4 without options.
    a.op(LDX_H, R4, R2, ETH_TYPE, 0);
    a.or_pass(JNE_K, R4, 0, wire16(0x0800));
    a.op(LDX_B, R4, R2, IP_VHL, 0);
    a.or_pass(JNE_K, R4, 0, 0x45);
    // The checksum's offset in r8, its flags in r9 (kept across helper calls). UDP: a zero one stays zero.
    a.op(LDX_B, R7, R2, IP_PROTO, 0);
    a.jump(JNE_K, R7, 0, 17, tcp);
    a.op(MOV64_K, R8, 0, 0, UDP_CSUM);
    a.op(MOV64_K, R9, 0, 0, MANGLED_0);
    a.jump(JA, 0, 0, 0, ports);
    a.bind(tcp);
    a.or_pass(JNE_K, R7, 0, 6);
    a.op(MOV64_K, R8, 0, 0, TCP_CSUM);
    a.op(MOV64_K, R9, 0, 0, 0);
    // To 127.0.0.11:53: the request; else from 127.0.0.11:P: the reply.
    a.bind(ports);
    a.op(LDX_W, R4, R2, IP_DADDR, 0);
    a.jump(JNE_K, R4, 0, addr, reply);
    a.op(LDX_H, R4, R2, L4_DPORT, 0);
    a.jump(JEQ_K, R4, 0, dns, request);
    a.bind(reply);
    a.op(LDX_W, R4, R2, IP_SADDR, 0);
    a.or_pass(JNE_K, R4, 0, addr);
    a.op(LDX_H, R4, R2, L4_SPORT, 0);
    a.or_pass(JNE_K, R4, 0, p);
    rewrite(&mut a, L4_SPORT, p, dns);
    a.or_pass(JA, 0, 0, 0);
    a.bind(request);
    rewrite(&mut a, L4_DPORT, dns, p);
    a.finish()
}

/// The port at `at` in the frame goes from `from` to `to` (as the program loads them), with the checksum fixed
/// (its offset in r8, its flags in r9).
fn rewrite(a: &mut Asm, at: i16, from: i32, to: i32) {
    a.op(MOV64_X, R1, R6, 0, 0);
    a.op(MOV64_X, R2, R8, 0, 0);
    a.op(MOV64_K, R3, 0, 0, from);
    a.op(MOV64_K, R4, 0, 0, to);
    a.op(MOV64_X, R5, R9, 0, 0);
    a.op(OR64_K, R5, 0, 0, 2);
    a.op(CALL, 0, 0, 0, HELPER_L4_CSUM_REPLACE);
    a.op(ST_H, R10, 0, -2, to);
    a.op(MOV64_X, R1, R6, 0, 0);
    a.op(MOV64_K, R2, 0, 0, i32::from(at));
    a.op(MOV64_X, R3, R10, 0, 0);
    a.op(ADD64_K, R3, 0, 0, -2);
    a.op(MOV64_K, R4, 0, 0, 2);
    a.op(MOV64_K, R5, 0, 0, 0);
    a.op(CALL, 0, 0, 0, HELPER_SKB_STORE_BYTES);
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
