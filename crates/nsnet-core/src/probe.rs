//! Reachability checks from inside namespaces: real packets for `nsnet demo` and the integration tests.
//!
//! Servers are bound on a thread that entered the namespace (the socket stays there); each serves one client,
//! tells it the address it came from, and reports that address back, so a check can see NAT at work.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::kernel::{netns, KernelError};

/// How long a probe waits for its peer.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// One `ping -c 1` from inside `ns`. Needs iputils-ping.
pub fn ping(ns: &Path, ip: std::net::Ipv4Addr) -> Result<bool, KernelError> {
    let mut cmd = Command::new("ping");
    cmd.args(["-c", "1", "-W", "2", "-q", &ip.to_string()])
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
pub fn tcp_server(ns: &Path, addr: SocketAddrV4) -> io::Result<Server> {
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
pub fn tcp_connect(ns: &Path, to: SocketAddrV4) -> io::Result<TcpStream> {
    in_ns(ns, || TcpStream::connect_timeout(&to.into(), TIMEOUT))
}

/// Connect over TCP from inside `ns` and read the server's greeting line.
pub fn tcp_hello(ns: &Path, to: SocketAddrV4) -> io::Result<String> {
    let stream = tcp_connect(ns, to)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

/// Wait on UDP `addr` inside `ns` for one datagram; answer "hello <client address>".
pub fn udp_server(ns: &Path, addr: SocketAddrV4) -> io::Result<Server> {
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
pub fn udp_hello(ns: &Path, to: SocketAddrV4) -> io::Result<String> {
    let sock = in_ns(ns, || UdpSocket::bind("0.0.0.0:0"))?;
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
        // SAFETY: if_nametoindex reads a NUL-terminated string that lives across the call.
        let index = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
        if index == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: plain socket(2) call; the descriptor is owned right below.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value that the fields below complete.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = index as i32;
        to.sll_halen = 6;
        for frame in frames {
            to.sll_addr[..6].copy_from_slice(&frame[..6.min(frame.len())]);
            // SAFETY: the buffer and the address are valid for the lengths given, for the whole call.
            let sent = unsafe {
                libc::sendto(
                    std::os::fd::AsRawFd::as_raw_fd(&sock),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&to as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if sent < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    })
}
