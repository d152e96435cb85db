//! Raw `bpf(2)`, just what the fast path needs: hash, array and LPM-trie maps, a `sched_cls` program built from instructions,
//! finding both again by id, and a test run. Attaching the program to devices is tc's business, over
//! rtnetlink ([`crate::kernel::Netlink::add_bpf_filter`]).
//!
//! No libbpf, no BTF, no object files: the one program nsnet loads is a few dozen instructions assembled in
//! [`crate::kernel::fastpath`], so there is no C toolchain in the build.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

// `enum bpf_cmd` (include/uapi/linux/bpf.h).
const MAP_CREATE: libc::c_long = 0;
const MAP_LOOKUP_ELEM: libc::c_long = 1;
const MAP_UPDATE_ELEM: libc::c_long = 2;
const MAP_DELETE_ELEM: libc::c_long = 3;
const MAP_GET_NEXT_KEY: libc::c_long = 4;
const PROG_LOAD: libc::c_long = 5;
const PROG_TEST_RUN: libc::c_long = 10;
const PROG_GET_FD_BY_ID: libc::c_long = 13;
const MAP_GET_FD_BY_ID: libc::c_long = 14;
const OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const PROG_ATTACH: libc::c_long = 8;
const PROG_DETACH: libc::c_long = 9;
const PROG_QUERY: libc::c_long = 16;

const MAP_TYPE_HASH: u32 = 1;
const MAP_TYPE_ARRAY: u32 = 2;
const MAP_TYPE_LPM_TRIE: u32 = 11;
const MAP_TYPE_LRU_HASH: u32 = 9;
/// `BPF_F_NO_PREALLOC`: entries are allocated as they are added, not all up front.
const F_NO_PREALLOC: u32 = 1;
const PROG_TYPE_SCHED_CLS: u32 = 3;
const PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
/// `BPF_F_ALLOW_MULTI`: a cgroup hook runs every program attached with it, in order, beside other tools' ones.
const F_ALLOW_MULTI: u32 = 2;
const OBJ_NAME_LEN: usize = 16;

/// Calls `bpf(cmd, attr, sizeof attr)`.
///
/// # Safety
/// `T` must be the `repr(C)` member of `union bpf_attr` that `cmd` reads, with every field the kernel does
/// not know zeroed, and every pointer in it valid for the length given next to it for the whole call.
unsafe fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    let size = len_u32(size_of::<T>())?;
    // SAFETY: the caller guarantees that `attr` is the member of `union bpf_attr` that `cmd` reads, zeroed
    // where the kernel does not know it, and that its pointers are valid; `size` is its exact size, so the
    // kernel reads and writes only inside it.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A `bpf()` call that returns a new file descriptor.
///
/// # Safety
/// As [`sys_bpf`]; `cmd` must be one that returns a new descriptor.
unsafe fn sys_bpf_fd<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: the caller's guarantees are this function's own.
    let r = unsafe { sys_bpf(cmd, attr) }?;
    // bpf() returns descriptors as an `int`; the wider `long` of syscall(2) always holds one.
    let fd = RawFd::try_from(r).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    // SAFETY: `cmd` returns a new descriptor (the caller's guarantee) and the call succeeded, so `fd` is
    // open and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A length as the `u32` that `bpf_attr` carries; `E2BIG` for one that does not fit (none that nsnet
/// passes comes close).
fn len_u32(len: usize) -> io::Result<u32> {
    u32::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))
}

fn obj_name(name: &str) -> [u8; OBJ_NAME_LEN] {
    let mut out = [0u8; OBJ_NAME_LEN];
    // The kernel wants a NUL inside the 16 bytes and only [A-Za-z0-9_.]; callers pass constants.
    for (o, b) in out.iter_mut().zip(name.bytes().take(OBJ_NAME_LEN - 1)) {
        *o = b;
    }
    out
}

/// `EINVAL` unless a key and a value have the map's sizes: the kernel reads or writes exactly that many bytes.
fn check_sizes(key: usize, value: usize, sizes: (usize, usize)) -> io::Result<()> {
    if (key, value) == sizes {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    }
}

/// An element call's outcome as "was the key there": `ENOENT` is `Ok(false)`.
fn found(r: io::Result<libc::c_long>) -> io::Result<bool> {
    match r {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A descriptor as `bpf_attr`'s `__u32` field. An open descriptor is never negative, so this fails
/// (`EBADF`) only on a descriptor that is not one.
fn fd_u32(fd: &OwnedFd) -> io::Result<u32> {
    u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))
}

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; OBJ_NAME_LEN],
}

#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; OBJ_NAME_LEN],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct GetByIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The head of `struct bpf_prog_info`, up to the name; the kernel fills as much as it is given.
#[repr(C)]
#[derive(Default)]
struct ProgInfo {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; OBJ_NAME_LEN],
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// The registers, opcodes and `struct __sk_buff` offsets nsnet's hand-assembled programs use
/// ([`super::fastpath`], [`super::dnsport`]).
pub mod op {
    // Registers: r0 return value, r1-r5 helper arguments (clobbered by calls), r6-r9 kept across calls, r10
    // the read-only frame pointer.
    pub const R0: u8 = 0;
    pub const R1: u8 = 1;
    pub const R2: u8 = 2;
    pub const R3: u8 = 3;
    pub const R4: u8 = 4;
    pub const R5: u8 = 5;
    pub const R6: u8 = 6;
    pub const R7: u8 = 7;
    pub const R8: u8 = 8;
    pub const R9: u8 = 9;
    pub const R10: u8 = 10;

    // Opcodes (class | size or operation | source).
    pub const LDX_W: u8 = 0x61;
    pub const LDX_H: u8 = 0x69;
    pub const LDX_B: u8 = 0x71;
    pub const LDX_DW: u8 = 0x79;
    pub const STX_DW: u8 = 0x7b;
    pub const STX_W: u8 = 0x63;
    pub const STX_H: u8 = 0x6b;
    pub const ST_W: u8 = 0x62;
    pub const ST_H: u8 = 0x6a;
    pub const MOV64_X: u8 = 0xbf;
    pub const MOV64_K: u8 = 0xb7;
    pub const ADD64_K: u8 = 0x07;
    pub const OR64_K: u8 = 0x47;
    pub const JA: u8 = 0x05;
    pub const JEQ_K: u8 = 0x15;
    pub const JEQ_X: u8 = 0x1d;
    pub const JNE_K: u8 = 0x55;
    pub const JNE_X: u8 = 0x5d;
    pub const JGT_X: u8 = 0x2d;
    pub const JLT_K: u8 = 0xa5;
    pub const CALL: u8 = 0x85;
    pub const EXIT: u8 = 0x95;
    pub const LD_DW_IMM: u8 = 0x18;

    // Offsets in `struct __sk_buff`.
    pub const SKB_PKT_TYPE: i16 = 4;
    pub const SKB_VLAN_PRESENT: i16 = 20;
    pub const SKB_IFINDEX: i16 = 40;
    pub const SKB_DATA: i16 = 76;
    pub const SKB_DATA_END: i16 = 80;
}

/// A place in a program that jumps go to, bound once with [`Asm::bind`].
#[derive(Clone, Copy)]
pub(crate) struct Label(usize);

/// A program being assembled: instructions with forward jumps to labels; `pass` (`r0 = TC_ACT_UNSPEC`: leave
/// the frame as it is, to whatever comes next) is the last one.
pub(crate) struct Asm {
    insns: Vec<Insn>,
    /// Where each label was bound, by label number.
    bound: Vec<Option<usize>>,
    /// Jumps to patch: (instruction, label).
    jumps: Vec<(usize, Label)>,
    pass: Label,
}

impl Asm {
    pub(crate) fn new() -> Asm {
        Asm {
            insns: Vec::new(),
            bound: vec![None],
            jumps: Vec::new(),
            pass: Label(0),
        }
    }

    pub(crate) fn op(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.insns.push(Insn {
            code,
            regs: dst | (src << 4),
            off,
            imm,
        });
    }

    pub(crate) fn label(&mut self) -> Label {
        self.bound.push(None);
        Label(self.bound.len() - 1)
    }

    pub(crate) fn bind(&mut self, label: Label) {
        self.bound[label.0] = Some(self.insns.len());
    }

    /// A jump to `label` (conditional, or `op::JA`).
    pub(crate) fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, label: Label) {
        self.jumps.push((self.insns.len(), label));
        self.op(code, dst, src, 0, imm);
    }

    /// A conditional jump to `pass`.
    pub(crate) fn or_pass(&mut self, code: u8, dst: u8, src: u8, imm: i32) {
        self.jump(code, dst, src, imm, self.pass);
    }

    /// Appends `pass: r0 = TC_ACT_UNSPEC; exit` and points every jump at its label. A jump's offset is an
    /// `i16`: a program too long for one is an error.
    pub(crate) fn finish(self) -> io::Result<Vec<Insn>> {
        self.finish_with(-1)
    }

    /// [`Asm::finish`] with `pass` returning `verdict` (a cgroup hook's "go on" is 1).
    pub(crate) fn finish_with(mut self, verdict: i32) -> io::Result<Vec<Insn>> {
        let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, why.to_string());
        let pass = self.pass;
        self.bind(pass);
        self.op(op::MOV64_K, op::R0, 0, 0, verdict);
        self.op(op::EXIT, 0, 0, 0, 0);
        for (at, label) in self.jumps {
            let to = self.bound[label.0].ok_or_else(|| invalid("a jump to a label never bound"))?;
            let off = to
                .checked_sub(at + 1)
                .ok_or_else(|| invalid("a backward jump in a bpf program"))?;
            self.insns[at].off =
                i16::try_from(off).map_err(|_| invalid("a bpf program too long for its jumps"))?;
        }
        Ok(self.insns)
    }
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// Destination register in the low nibble, source in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

/// A BPF map, by its file descriptor.
#[derive(Debug)]
pub struct Map(OwnedFd);

/// The kinds of map nsnet makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapType {
    Hash,
    Array,
    LpmTrie,
    Other,
}

/// The head of `struct bpf_map_info`; the kernel fills as much as it is given.
#[repr(C)]
#[derive(Default)]
struct MapInfo {
    map_type: u32,
    id: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    name: [u8; OBJ_NAME_LEN],
}

impl Map {
    /// A hash map with fixed-size keys and values, entries allocated as they come.
    pub fn hash(name: &str, key_size: usize, value_size: usize, max: u32) -> io::Result<Map> {
        Self::create(
            MAP_TYPE_HASH,
            F_NO_PREALLOC,
            name,
            key_size,
            value_size,
            max,
        )
    }

    /// An array of `max` values, all zero to begin with.
    pub fn array(name: &str, value_size: usize, max: u32) -> io::Result<Map> {
        Self::create(MAP_TYPE_ARRAY, 0, name, size_of::<u32>(), value_size, max)
    }

    /// A hash map the kernel keeps at most `max` entries of, evicting the least recently used.
    pub fn lru_hash(name: &str, key_size: usize, value_size: usize, max: u32) -> io::Result<Map> {
        Self::create(MAP_TYPE_LRU_HASH, 0, name, key_size, value_size, max)
    }

    /// A longest-prefix-match trie: keys are a `u32` prefix length (native order) and then the address
    /// bytes; a lookup with a full-length key finds the longest prefix holding it. The kernel allocates its
    /// entries as they come (it refuses a preallocated trie).
    pub fn lpm(name: &str, key_size: usize, value_size: usize, max: u32) -> io::Result<Map> {
        Self::create(
            MAP_TYPE_LPM_TRIE,
            F_NO_PREALLOC,
            name,
            key_size,
            value_size,
            max,
        )
    }

    fn create(
        map_type: u32,
        map_flags: u32,
        name: &str,
        key_size: usize,
        value_size: usize,
        max: u32,
    ) -> io::Result<Map> {
        let mut attr = MapCreateAttr {
            map_type,
            key_size: len_u32(key_size)?,
            value_size: len_u32(value_size)?,
            max_entries: max,
            map_flags,
            map_name: obj_name(name),
            ..Default::default()
        };
        // SAFETY: MapCreateAttr is the BPF_MAP_CREATE member; it holds no pointers.
        unsafe { sys_bpf_fd(MAP_CREATE, &mut attr) }.map(Map)
    }

    /// The map's type (`BPF_MAP_TYPE_*`) and key size, from the kernel.
    pub fn shape(&self) -> io::Result<(MapType, usize)> {
        let info = self.info()?;
        let kind = match info.map_type {
            MAP_TYPE_HASH => MapType::Hash,
            MAP_TYPE_ARRAY => MapType::Array,
            MAP_TYPE_LPM_TRIE => MapType::LpmTrie,
            _ => MapType::Other,
        };
        let key_size = usize::try_from(info.key_size)
            .map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
        Ok((kind, key_size))
    }

    /// The map's name, from the kernel.
    pub fn name(&self) -> io::Result<String> {
        let info = self.info()?;
        let end = info
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(OBJ_NAME_LEN);
        Ok(String::from_utf8_lossy(&info.name[..end]).into_owned())
    }

    fn info(&self) -> io::Result<MapInfo> {
        let mut info = MapInfo::default();
        let mut attr = InfoAttr {
            bpf_fd: fd_u32(&self.0)?,
            info_len: len_u32(size_of::<MapInfo>())?,
            info: &mut info as *mut MapInfo as u64,
        };
        // SAFETY: InfoAttr is the BPF_OBJ_GET_INFO_BY_FD member; `info` is writable for info_len bytes and
        // alive for the call.
        unsafe { sys_bpf(OBJ_GET_INFO_BY_FD, &mut attr) }?;
        Ok(info)
    }

    /// The map with this id, if it still exists.
    pub fn from_id(id: u32) -> io::Result<Map> {
        let mut attr = GetByIdAttr {
            id,
            ..Default::default()
        };
        // SAFETY: GetByIdAttr is the BPF_*_GET_FD_BY_ID member; it holds no pointers.
        unsafe { sys_bpf_fd(MAP_GET_FD_BY_ID, &mut attr) }.map(Map)
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.0
    }

    /// Insert or replace `key`. Both slices must have the map's key and value sizes (the kernel reads
    /// exactly that many bytes), which is checked here.
    pub fn update(&self, key: &[u8], value: &[u8], sizes: (usize, usize)) -> io::Result<()> {
        check_sizes(key.len(), value.len(), sizes)?;
        let mut attr = ElemAttr {
            map_fd: fd_u32(&self.0)?,
            key: key.as_ptr() as u64,
            value: value.as_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: ElemAttr is the BPF_MAP_*_ELEM member; key and value point to buffers of the map's sizes
        // (checked above) that outlive the call, and the kernel only reads them.
        unsafe { sys_bpf(MAP_UPDATE_ELEM, &mut attr) }.map(drop)
    }

    /// The value of `key` into `value`; `Ok(false)` when there is none. Slices as for [`Map::update`].
    pub fn lookup(&self, key: &[u8], value: &mut [u8], sizes: (usize, usize)) -> io::Result<bool> {
        check_sizes(key.len(), value.len(), sizes)?;
        let mut attr = ElemAttr {
            map_fd: fd_u32(&self.0)?,
            key: key.as_ptr() as u64,
            value: value.as_mut_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: as in `update`; the kernel writes exactly value_size bytes into `value`, which is that long.
        found(unsafe { sys_bpf(MAP_LOOKUP_ELEM, &mut attr) })
    }

    /// Every key in the map (`key_size` bytes each), in the map's own order.
    pub fn keys(&self, key_size: usize) -> io::Result<Vec<Vec<u8>>> {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut next = vec![0u8; key_size];
            let mut attr = ElemAttr {
                map_fd: fd_u32(&self.0)?,
                // No key: start at the first one.
                key: keys.last().map_or(0, |k| k.as_ptr() as u64),
                value: next.as_mut_ptr() as u64,
                ..Default::default()
            };
            // SAFETY: ElemAttr is the BPF_MAP_GET_NEXT_KEY member (`value` is `next_key`); `key` is null or a
            // key_size buffer, and `next` is writable for key_size bytes, both alive for the call.
            match unsafe { sys_bpf(MAP_GET_NEXT_KEY, &mut attr) } {
                Ok(_) => keys.push(next),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(keys),
                Err(e) => return Err(e),
            }
        }
    }

    /// Remove `key`; `Ok(false)` when it was not there.
    pub fn delete(&self, key: &[u8], key_size: usize) -> io::Result<bool> {
        if key.len() != key_size {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut attr = ElemAttr {
            map_fd: fd_u32(&self.0)?,
            key: key.as_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: as in `update`, without a value.
        found(unsafe { sys_bpf(MAP_DELETE_ELEM, &mut attr) })
    }
}

/// A loaded BPF program, by its file descriptor.
#[derive(Debug)]
pub struct Program(OwnedFd);

/// What the kernel says about a loaded program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramInfo {
    pub id: u32,
    pub name: String,
    /// The maps its instructions use (at most the first four).
    pub map_ids: Vec<u32>,
}

impl Program {
    /// Load a traffic-control classifier (`sched_cls`, for a tc filter in direct-action mode). On a verifier
    /// rejection the error carries the verifier's log.
    pub fn load_sched_cls(name: &str, insns: &[Insn], license: &str) -> io::Result<Program> {
        Self::load(PROG_TYPE_SCHED_CLS, 0, name, insns, license)
    }

    /// Load a cgroup `sock_addr` program for the hook `attach` (`BPF_CGROUP_*`, see [`CgroupHook`]).
    pub fn load_sock_addr(
        name: &str,
        attach: CgroupHook,
        insns: &[Insn],
        license: &str,
    ) -> io::Result<Program> {
        Self::load(
            PROG_TYPE_CGROUP_SOCK_ADDR,
            attach as u32,
            name,
            insns,
            license,
        )
    }

    fn load(
        prog_type: u32,
        expected_attach_type: u32,
        name: &str,
        insns: &[Insn],
        license: &str,
    ) -> io::Result<Program> {
        let license = std::ffi::CString::new(license)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let mut log = vec![0u8; 64 * 1024];
        let mut attr = ProgLoadAttr {
            prog_type,
            expected_attach_type,
            insn_cnt: len_u32(insns.len())?,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name: obj_name(name),
            ..Default::default()
        };
        // SAFETY: ProgLoadAttr is the BPF_PROG_LOAD member; `insns` holds insn_cnt repr(C) instructions and
        // `license` is NUL-terminated, both alive for the call; no log buffer is given.
        match unsafe { sys_bpf_fd(PROG_LOAD, &mut attr) } {
            Ok(fd) => return Ok(Program(fd)),
            Err(e)
                if e.raw_os_error() != Some(libc::EACCES)
                    && e.raw_os_error() != Some(libc::EINVAL) =>
            {
                return Err(e)
            }
            Err(_) => {}
        }
        // Rejected: load again with the verifier's log on, to say why.
        attr.log_level = 1;
        attr.log_size = len_u32(log.len())?;
        attr.log_buf = log.as_mut_ptr() as u64;
        // SAFETY: as above, and `log` is writable for log_size bytes for the call.
        match unsafe { sys_bpf_fd(PROG_LOAD, &mut attr) } {
            Ok(fd) => Ok(Program(fd)),
            Err(e) => {
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                let text = String::from_utf8_lossy(&log[..end]);
                let last = text.lines().rev().take(3).collect::<Vec<_>>().join(" / ");
                Err(io::Error::new(e.kind(), format!("{e}; verifier: {last}")))
            }
        }
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.0
    }

    /// The program with this id, if it still exists.
    pub fn from_id(id: u32) -> io::Result<Program> {
        let mut attr = GetByIdAttr {
            id,
            ..Default::default()
        };
        // SAFETY: GetByIdAttr is the BPF_*_GET_FD_BY_ID member; it holds no pointers.
        unsafe { sys_bpf_fd(PROG_GET_FD_BY_ID, &mut attr) }.map(Program)
    }

    pub fn info(&self) -> io::Result<ProgramInfo> {
        // Room for every map a program of nsnet's uses (the fast path has five), and then some.
        let mut ids = [0u32; 8];
        let mut info = ProgInfo {
            nr_map_ids: len_u32(ids.len())?,
            map_ids: ids.as_mut_ptr() as u64,
            ..Default::default()
        };
        let mut attr = InfoAttr {
            bpf_fd: fd_u32(&self.0)?,
            info_len: len_u32(size_of::<ProgInfo>())?,
            info: &mut info as *mut ProgInfo as u64,
        };
        // SAFETY: InfoAttr is the BPF_OBJ_GET_INFO_BY_FD member; `info` is writable for info_len bytes and
        // its map_ids points to nr_map_ids writable u32s, all alive for the call.
        unsafe { sys_bpf(OBJ_GET_INFO_BY_FD, &mut attr) }?;
        let end = info
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(OBJ_NAME_LEN);
        // The kernel reports how many maps the program uses, possibly more than it copied.
        let n = usize::try_from(info.nr_map_ids).map_or(ids.len(), |n| n.min(ids.len()));
        Ok(ProgramInfo {
            id: info.id,
            name: String::from_utf8_lossy(&info.name[..end]).into_owned(),
            map_ids: ids[..n].to_vec(),
        })
    }

    /// Run the program once on `packet` (an Ethernet frame) as if device `ifindex` had received it; returns
    /// its verdict. Nothing is sent: a redirect only reports `TC_ACT_REDIRECT`.
    pub fn test_run(&self, packet: &[u8], ifindex: u32) -> io::Result<u32> {
        // struct __sk_buff up to and including ifindex (offset 40); the rest stays zero.
        let mut ctx = [0u32; 12];
        ctx[10] = ifindex;
        let mut attr = TestRunAttr {
            prog_fd: fd_u32(&self.0)?,
            data_size_in: len_u32(packet.len())?,
            data_in: packet.as_ptr() as u64,
            repeat: 1,
            ctx_size_in: len_u32(size_of::<[u32; 12]>())?,
            ctx_in: ctx.as_mut_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: TestRunAttr is the BPF_PROG_TEST_RUN member; data_in and ctx_in point to buffers of the sizes
        // given, alive for the call and only read (no data_out / ctx_out given).
        unsafe { sys_bpf(PROG_TEST_RUN, &mut attr) }?;
        Ok(attr.retval)
    }
}

/// The cgroup hooks nsnet attaches programs to (`enum bpf_attach_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum CgroupHook {
    Inet6Connect = 11,
    Udp6Sendmsg = 15,
    Udp6Recvmsg = 20,
    Inet6Getpeername = 30,
}

/// The `BPF_PROG_ATTACH` / `BPF_PROG_DETACH` member of `bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// The `BPF_PROG_QUERY` member of `bpf_attr`, through `revision`: newer kernels write that field back
/// whatever size they are given, so it must be ours to write.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

fn raw_u32(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<u32> {
    u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))
}

/// Attach `prog` to the cgroup open at `cgroup` for `hook`, beside the programs already there
/// (`BPF_F_ALLOW_MULTI`).
pub fn cgroup_attach(
    cgroup: std::os::fd::BorrowedFd<'_>,
    prog: &Program,
    hook: CgroupHook,
) -> io::Result<()> {
    let mut attr = AttachAttr {
        target_fd: raw_u32(cgroup)?,
        attach_bpf_fd: fd_u32(&prog.0)?,
        attach_type: hook as u32,
        attach_flags: F_ALLOW_MULTI,
        ..Default::default()
    };
    // SAFETY: AttachAttr is the BPF_PROG_ATTACH member; it holds no pointers.
    unsafe { sys_bpf(PROG_ATTACH, &mut attr) }.map(drop)
}

/// Detach `prog` (and only it) from `hook` of the cgroup open at `cgroup`.
pub fn cgroup_detach(
    cgroup: std::os::fd::BorrowedFd<'_>,
    prog: &Program,
    hook: CgroupHook,
) -> io::Result<()> {
    let mut attr = AttachAttr {
        target_fd: raw_u32(cgroup)?,
        attach_bpf_fd: fd_u32(&prog.0)?,
        attach_type: hook as u32,
        ..Default::default()
    };
    // SAFETY: AttachAttr is the BPF_PROG_DETACH member; it holds no pointers.
    unsafe { sys_bpf(PROG_DETACH, &mut attr) }.map(drop)
}

/// The ids of the programs attached to `hook` of the cgroup open at `cgroup` itself (not inherited).
pub fn cgroup_query(cgroup: std::os::fd::BorrowedFd<'_>, hook: CgroupHook) -> io::Result<Vec<u32>> {
    // A hook runs at most 64 programs (BPF_CGROUP_MAX_PROGS).
    let mut ids = [0u32; 64];
    let mut attr = QueryAttr {
        target_fd: raw_u32(cgroup)?,
        attach_type: hook as u32,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: len_u32(ids.len())?,
        ..Default::default()
    };
    // SAFETY: QueryAttr is the BPF_PROG_QUERY member through every field the kernel writes back; prog_ids
    // points to prog_cnt writable u32s alive for the call, the other pointers are null (not asked for).
    unsafe { sys_bpf(PROG_QUERY, &mut attr) }?;
    let n = usize::try_from(attr.prog_cnt).map_or(ids.len(), |n| n.min(ids.len()));
    Ok(ids[..n].to_vec())
}
