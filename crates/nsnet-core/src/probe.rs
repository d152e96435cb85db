//! Reachability checks from inside namespaces: real packets for `nsnet demo` and the integration tests.
//!
//! Servers are bound on a thread that entered the namespace (the socket stays there); each serves one client,
//! tells it the address it came from, and reports that address back, so a check can see NAT at work.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::net::if_::if_nametoindex;
use nix::sys::socket::{
    sendto, socket, AddressFamily, LinkAddr, MsgFlags, SockFlag, SockType, SockaddrLike,
};

use crate::kernel::{netns, KernelError};

/// How long a probe waits for its peer.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// One `ping -c 1` from inside `ns`. Needs iputils-ping.
pub fn ping(ns: &Path, ip: Ipv4Addr) -> Result<bool, KernelError> {
    ping_ip(ns, ip.into())
}

/// [`ping`] to an IPv6 address.
pub fn ping6(ns: &Path, ip: Ipv6Addr) -> Result<bool, KernelError> {
    ping_ip(ns, ip.into())
}

fn ping_ip(ns: &Path, ip: IpAddr) -> Result<bool, KernelError> {
    let family = if ip.is_ipv6() { "-6" } else { "-4" };
    let mut cmd = Command::new("ping");
    cmd.args([family, "-c", "1", "-W", "2", "-q", &ip.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    netns::command_in(&mut cmd, netns::open(ns)?);
    let status = cmd
        .status()
        .map_err(|e| KernelError::io("run ping (apt-get install iputils-ping)", e))?;
    Ok(status.success())
}

/// A one-shot server; [`Server::wait`] gives the client address it saw.
pub struct Server {
    handle: JoinHandle<io::Result<SocketAddr>>,
}

impl Server {
    /// Wait for the single client; the address it came from, as this namespace saw it.
    pub fn wait(self) -> io::Result<SocketAddr> {
        self.handle
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("server thread panicked")))
    }
}

fn in_ns<T: Send>(ns: &Path, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let fd = netns::open(ns).map_err(io::Error::other)?;
    netns::run_in(&fd, f).map_err(io::Error::other)?
}

/// Bind in `ns`, trying again for up to a second while the address is in use. A socket this process just
/// closed can still be open for a moment: another thread's spawn copies the descriptor table, and the copy
/// holds the socket until the child execs (close-on-exec closes it only then).
fn bind_in<T: Send>(ns: &Path, bind: impl Fn() -> io::Result<T> + Send + Sync) -> io::Result<T> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match in_ns(ns, &bind) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Listen on TCP `addr` inside `ns` for one client; greet it with "hello <client address>".
pub fn tcp_server(ns: &Path, addr: impl Into<SocketAddr>) -> io::Result<Server> {
    let addr = addr.into();
    let listener = bind_in(ns, || TcpListener::bind(addr))?;
    listener.set_nonblocking(true)?;
    let handle = thread::spawn(move || {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    stream.set_nonblocking(false)?;
                    writeln!(stream, "hello {peer}")?;
                    return Ok(peer);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(5));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "no client came"))
                }
                Err(e) => return Err(e),
            }
        }
    });
    Ok(Server { handle })
}

/// Open a TCP connection from inside `ns` (to any server, not just [`tcp_server`]).
pub fn tcp_connect(ns: &Path, to: impl Into<SocketAddr>) -> io::Result<TcpStream> {
    let to = to.into();
    in_ns(ns, || TcpStream::connect_timeout(&to, TIMEOUT))
}

/// Connect over TCP from inside `ns` and read the server's greeting line.
pub fn tcp_hello(ns: &Path, to: impl Into<SocketAddr>) -> io::Result<String> {
    let stream = tcp_connect(ns, to)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

/// Wait on UDP `addr` inside `ns` for one datagram; answer "hello <client address>".
pub fn udp_server(ns: &Path, addr: impl Into<SocketAddr>) -> io::Result<Server> {
    let addr = addr.into();
    let sock = bind_in(ns, || UdpSocket::bind(addr))?;
    sock.set_read_timeout(Some(TIMEOUT))?;
    let handle = thread::spawn(move || {
        let mut buf = [0u8; 64];
        let (_, peer) = sock.recv_from(&mut buf)?;
        sock.send_to(format!("hello {peer}").as_bytes(), peer)?;
        Ok(peer)
    });
    Ok(Server { handle })
}

/// Send one UDP datagram from inside `ns` and read the server's answer.
pub fn udp_hello(ns: &Path, to: impl Into<SocketAddr>) -> io::Result<String> {
    let to = to.into();
    // A socket of the destination's family, on any address and port.
    let any: IpAddr = if to.is_ipv6() {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    let sock = in_ns(ns, || UdpSocket::bind((any, 0)))?;
    sock.set_read_timeout(Some(TIMEOUT))?;
    sock.send_to(b"hi", to)?;
    let mut buf = [0u8; 128];
    let n = sock.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Send raw Ethernet frames (destination MAC first, no FCS) out of `ifname` inside `ns`, the way a hostile
/// sandbox would: forged source MACs, forged ARP, any ether type. For the tests that attack nsnet's guards.
pub fn send_frames(ns: &Path, ifname: &str, frames: &[Vec<u8>]) -> io::Result<()> {
    let ifname = std::ffi::CString::new(ifname).map_err(io::Error::other)?;
    in_ns(ns, || {
        let index = if_nametoindex(ifname.as_c_str())?;
        let sock = socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::empty(),
            None,
        )?;
        let mut to = libc::sockaddr_ll {
            sll_family: u16::try_from(libc::AF_PACKET).map_err(io::Error::other)?,
            sll_protocol: 0,
            sll_ifindex: i32::try_from(index).map_err(io::Error::other)?,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 6,
            sll_addr: [0; 8],
        };
        for frame in frames {
            to.sll_addr[..6].copy_from_slice(&frame[..6.min(frame.len())]);
            sendto(sock.as_raw_fd(), frame, &link_addr(&to)?, MsgFlags::empty())?;
        }
        Ok(())
    })
}

/// `ll` as nix's `LinkAddr`, which has no constructor of its own on Linux.
fn link_addr(ll: &libc::sockaddr_ll) -> io::Result<LinkAddr> {
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_ll>())
        .map_err(io::Error::other)?;
    // SAFETY: `ll` points to a whole, initialized sockaddr_ll and `len` is its size; from_raw only copies it
    // (after checking the length and the family).
    unsafe { LinkAddr::from_raw(std::ptr::from_ref(ll).cast(), Some(len)) }
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

/// A client socket of `nsnet explain --probe`, made inside `ns` and bound to `src` (port 0: the kernel picks
/// one, returned with it) before it connects, so the trace can match the packet's exact ports. `forged`: `src`
/// is not the namespace's own (`--src`); `IP_TRANSPARENT` lets the socket send from it anyway.
pub fn bound_socket(
    ns: &Path,
    stream: bool,
    src: SocketAddr,
    forged: bool,
) -> io::Result<(std::os::fd::OwnedFd, u16)> {
    use nix::sys::socket::{bind, getsockname, setsockopt, sockopt, SockaddrIn, SockaddrIn6};
    let kind = if stream {
        SockType::Stream
    } else {
        SockType::Datagram
    };
    in_ns(ns, move || {
        let family = if src.is_ipv6() {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let fd = socket(family, kind, SockFlag::SOCK_CLOEXEC, None)?;
        if forged {
            setsockopt(&fd, sockopt::IpTransparent, &true)?;
        }
        let port = match src {
            SocketAddr::V4(a) => {
                bind(fd.as_raw_fd(), &SockaddrIn::from(a))?;
                getsockname::<SockaddrIn>(fd.as_raw_fd())?.port()
            }
            SocketAddr::V6(a) => {
                bind(fd.as_raw_fd(), &SockaddrIn6::from(a))?;
                getsockname::<SockaddrIn6>(fd.as_raw_fd())?.port()
            }
        };
        Ok((fd, port))
    })
}

/// Connect a socket from [`bound_socket`] over TCP within [`TIMEOUT`].
pub fn connect_bound(fd: std::os::fd::OwnedFd, to: SocketAddr) -> io::Result<TcpStream> {
    use nix::sys::socket::{connect, setsockopt, sockopt, SockaddrIn, SockaddrIn6};
    // A blocking connect gives up after the send timeout (EINPROGRESS).
    let limit = nix::sys::time::TimeVal::new(i64::try_from(TIMEOUT.as_secs()).unwrap_or(3), 0);
    setsockopt(&fd, sockopt::SendTimeout, &limit)?;
    let done = match to {
        SocketAddr::V4(a) => connect(fd.as_raw_fd(), &SockaddrIn::from(a)),
        SocketAddr::V6(a) => connect(fd.as_raw_fd(), &SockaddrIn6::from(a)),
    };
    match done {
        Ok(()) => Ok(TcpStream::from(fd)),
        Err(nix::errno::Errno::EINPROGRESS) => {
            Err(io::Error::new(io::ErrorKind::TimedOut, "no answer"))
        }
        Err(e) => Err(e.into()),
    }
}

/// Send one datagram from a socket from [`bound_socket`] and wait for an answer: `Ok` with it, or the error
/// (connection refused: an ICMP port unreachable came back; timed out: nothing did).
pub fn udp_exchange(fd: std::os::fd::OwnedFd, to: SocketAddr) -> io::Result<String> {
    let sock = UdpSocket::from(fd);
    sock.connect(to)?;
    sock.set_read_timeout(Some(TIMEOUT))?;
    sock.send(b"hi")?;
    let mut buf = [0u8; 128];
    let n = sock.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}
