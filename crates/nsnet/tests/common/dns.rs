//! Names in tests: `dig` from inside a sandbox against its resolver, and dnsmasq upstreams on the LAN peer
//! (a namespace the test made), never a real resolver.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TestHost;

/// A dig answer: its status, and the data of its answer records, in order.
#[derive(Debug)]
pub struct Dig {
    pub status: String,
    pub answers: Vec<String>,
    pub truncated: bool,
}

/// `dig` run inside sandbox `sb` (through `nsnet exec`) against its resolver; `extra` are dig's options.
pub fn dig(h: &TestHost, sb: &str, extra: &[&str]) -> Dig {
    let mut args = vec![
        "exec",
        sb,
        "--",
        "dig",
        "+time=3",
        "+tries=1",
        "+nocookie",
        "@127.0.0.11",
    ];
    args.extend_from_slice(extra);
    let out = h.nsnet(&args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    parse_dig(&text)
}

pub fn parse_dig(text: &str) -> Dig {
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("NO ANSWER")
        .to_string();
    let truncated = text
        .lines()
        .find(|l| l.contains(";; flags:"))
        .is_some_and(|l| l.split(';').nth(2).is_some_and(|f| f.contains(" tc")));
    let answers = text
        .split(";; ANSWER SECTION:")
        .nth(1)
        .map(|sec| {
            sec.lines()
                .skip(1)
                .take_while(|l| !l.trim().is_empty())
                .filter_map(|l| l.split_whitespace().last().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Dig {
        status,
        answers,
        truncated,
    }
}

/// A process the test started, killed when the test ends however it ends.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// dnsmasq on the LAN peer, on `listen` (one of the peer's addresses) port 53, answering `*.example.test`
/// with 192.0.2.7 (A) and 2001:db8::7 (AAAA) and nothing else; returned once it answers.
pub fn dnsmasq(h: &TestHost, listen: &str) -> Killed {
    let child = Killed(dnsmasq_process(h, listen));
    let lan = format!("--net={}", h.lan_path().display());
    let at = format!("@{listen}");
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        let out = Command::new("nsenter")
            .args([
                &lan,
                "--",
                "dig",
                "+time=1",
                "+tries=1",
                &at,
                "www.example.test",
            ])
            .output()
            .expect("dig");
        if String::from_utf8_lossy(&out.stdout).contains("192.0.2.7") {
            return child;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("dnsmasq did not answer on {listen}");
}

/// [`dnsmasq`]'s process, not waited for.
pub fn dnsmasq_process(h: &TestHost, listen: &str) -> Child {
    let lan = format!("--net={}", h.lan_path().display());
    let listen = format!("--listen-address={listen}");
    Command::new("nsenter")
        .args([
            &lan,
            "--",
            "dnsmasq",
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &listen,
            "--address=/example.test/192.0.2.7",
            "--address=/example.test/2001:db8::7",
            // No such names: NXDOMAIN (without, dnsmasq refuses what it cannot forward).
            "--address=/invalid/",
            "--pid-file=",
            "--user=root",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq")
}
