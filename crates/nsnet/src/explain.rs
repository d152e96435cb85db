//! `nsnet explain FROM TO[:PORT[/PROTO]]`: the path and verdict of one packet, and with `--probe` a real one.
//! Exit status: 0 delivered, 1 dropped, 2 bad input, 3 when nsnet could not answer (a kernel or firewall
//! failure); with `--probe`, the real packet's outcome decides.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use nsnet_core::explain::Query;
use nsnet_core::ops::Nsnet;

/// `nsnet explain`'s arguments.
#[derive(Args)]
pub struct ExplainArgs {
    /// Where the packet starts: a sandbox, `host`, or an address (a LAN peer).
    from: String,
    /// Where it goes: a sandbox, `host` or an address, with an optional PORT and PROTO (tcp, udp; icmp when
    /// no port is given), e.g. `web:80`, `10.0.1.48:8080/udp`, `[fd00::2]:80` (a bare IPv6 address has no
    /// port).
    to: String,
    /// Ask about a packet a sandbox forges with this source address.
    #[arg(long, value_name = "IP")]
    src: Option<IpAddr>,
    /// Ask about an IPv6 packet between sandboxes, or a sandbox and the host (an IPv6 address in FROM, TO
    /// or --src, or a sandbox with no IPv4, asks that already).
    #[arg(short = '6', long = "ipv6")]
    ipv6: bool,
    /// Send a real packet (with a listener where it should land) and trace the rules it meets.
    #[arg(long)]
    probe: bool,
    /// With --probe from a LAN peer's address: the network namespace that holds that address.
    #[arg(long, value_name = "PATH")]
    peer_netns: Option<PathBuf>,
}

/// An error that is the user's: exit status 2.
fn bad(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("nsnet: error: {message}");
    ExitCode::from(2)
}

/// The library's answer, or the exit status its error means: 2 for bad input, 3 for anything else.
fn answer<T>(r: nsnet_core::Result<T>) -> std::result::Result<T, ExitCode> {
    match r {
        Ok(v) => Ok(v),
        Err(nsnet_core::Error::Invalid(m)) => Err(bad(m)),
        Err(e) => {
            eprintln!("nsnet: error: {e}");
            Err(ExitCode::from(3))
        }
    }
}

/// Run `nsnet explain`.
pub fn run(nsnet: &Nsnet, args: &ExplainArgs, json: bool) -> Result<ExitCode> {
    let q = match Query::parse_ip(&args.from, &args.to, args.src, args.ipv6) {
        Ok(q) => q,
        Err(e) => return Ok(bad(e)),
    };
    if args.peer_netns.is_some() && !args.probe {
        return Ok(bad("--peer-netns is for --probe"));
    }
    let e = match answer(nsnet.explain(&q)) {
        Ok(e) => e,
        Err(code) => return Ok(code),
    };
    let report = if args.probe {
        match answer(nsnet.explain_probe(&q, &e, args.peer_netns.as_deref())) {
            Ok(r) => Some(r),
            Err(code) => return Ok(code),
        }
    } else {
        None
    };
    if json {
        /// The explanation with the probe's report beside its fields, in their order.
        #[derive(serde::Serialize)]
        struct Out<'a> {
            #[serde(flatten)]
            explanation: &'a nsnet_core::explain::Explanation,
            #[serde(skip_serializing_if = "Option::is_none")]
            probe: Option<&'a nsnet_core::explain::ProbeReport>,
        }
        let out = Out {
            explanation: &e,
            probe: report.as_ref(),
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{e}");
        if let Some(r) = &report {
            print!("{r}");
        }
    }
    let delivered = report.as_ref().map_or(e.verdict.delivered, |r| r.delivered);
    Ok(if delivered {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
