//! nsnet's benchmarks against its peers. Each case runs in throwaway namespaces of its own and removes them;
//! see bench/README.md for what each measures.

mod curve;
mod datapath;
mod dns;
mod floor;
mod lifecycle;
mod overlay;
mod peers;
mod ports;
mod soak;
mod world;

use std::process::Command;
use std::thread;

use anyhow::{bail, Context as _, Result};

pub fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("run {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One finished process: wall time, peak RSS, and what it printed.
pub struct Run {
    pub ms: f64,
    pub rss_kib: i64,
    pub ok: bool,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

/// Run `cmd` (with `stdin` fed to it) and account for it with wait4: wall time and the kernel's peak RSS of
/// that one process.
pub fn measured(cmd: &mut Command, stdin: Option<&[u8]>) -> Result<Run> {
    use std::io::{Read as _, Write as _};
    use std::process::Stdio;
    let start = std::time::Instant::now();
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {cmd:?}"))?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let _ = pipe.write_all(data);
    }
    let mut stdout = Vec::new();
    let mut stderr = String::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_end(&mut stdout)?;
    }
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut stderr)?;
    }
    let pid = i32::try_from(child.id()).context("pid")?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child, which nothing else reaps.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to locals, for the duration of the call.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if rc != pid {
        bail!("wait4 for {cmd:?} failed");
    }
    Ok(Run {
        ms: start.elapsed().as_secs_f64() * 1e3,
        rss_kib: usage.ru_maxrss,
        ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        stdout,
        stderr,
    })
}

/// The `q`-quantile (0..=1) of `v`, by nearest rank.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    // Nearest rank: round(q * (len - 1)), counted instead of cast back from the float (q below 0 or NaN is
    // the first, above 1 the last).
    let target = f64_of(v.len() - 1) * q;
    let i = (1..v.len())
        .take_while(|&k| f64_of(k) <= target + 0.5)
        .count();
    v[i.min(v.len() - 1)]
}

/// `n` as an `f64`, for figures and plots: exact up to 2^53 and rounded to nearest above, as `as` would,
/// but assembled from two exact halves instead of a lossy cast.
pub fn f64_of_u64(n: u64) -> f64 {
    let [a, b, c, d, e, f, g, h] = n.to_be_bytes();
    f64::from(u32::from_be_bytes([a, b, c, d])) * 4_294_967_296.0
        + f64::from(u32::from_be_bytes([e, f, g, h]))
}

/// A count as an `f64` (see [`f64_of_u64`]; a usize is at most 64 bits on every Linux target).
pub fn f64_of(n: usize) -> f64 {
    f64_of_u64(u64::try_from(n).unwrap_or(u64::MAX))
}

/// A signed figure (getrusage's KiB) as an `f64` (see [`f64_of_u64`]).
pub fn f64_of_i64(n: i64) -> f64 {
    let magnitude = f64_of_u64(n.unsigned_abs());
    if n < 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// The host port of sandbox `i` in the runs that publish one port per sandbox: 20000 + i.
pub fn port_of(i: usize) -> Result<u16> {
    20000usize
        .checked_add(i)
        .and_then(|p| u16::try_from(p).ok())
        .with_context(|| format!("sandbox {i} has no port to publish (20000 + {i} > 65535)"))
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = sh(&["uname", "-r"]).unwrap_or_default();
    let nft = sh(&["nft", "--version"]).unwrap_or_default();
    let ipt = sh(&["iptables", "--version"]).unwrap_or_default();
    format!(
        "{cpu}, {cores} cores; Linux {}; {}; {}",
        kernel.trim(),
        nft.trim(),
        ipt.trim()
    )
}

const USAGE: &str = "usage: nsnet-bench all [--out bench/results] [--quick] [--only nsnet,netavark,CNI,floor]
       nsnet-bench lifecycle [--reps 30] | concurrent [--creators 16] [--each 8] | curve [--n 1000]
       nsnet-bench datapath [-6] [--secs 4] [--reps 10] [--unpinned] | ports [--sizes 1,1000,10000] [--reps 15] [--portmap-max 1000]
       nsnet-bench soak [--cycles 2000]
       nsnet-bench overlay [--out bench/results] [--quick] [--secs 4] [--reps 10] [--hosts 3,50] [--cycles 12] [--window 30]
       nsnet-bench dns [--out bench/results] [--quick] [--rounds 5] [--secs 2] [--window 16] [--creates 20] [--names 1000]";

/// The positional argument at `i`, as a number.
fn number_at(args: &[String], i: usize) -> Result<u32> {
    args.get(i)
        .context("a number is missing")?
        .parse()
        .context("not a number")
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let number = |flag: &str, default: usize| -> Result<usize> {
        value(flag)
            .map(|v| v.parse().with_context(|| format!("{flag} takes a number")))
            .transpose()
            .map(|v| v.unwrap_or(default))
    };
    if !nix::unistd::geteuid().is_root() {
        bail!("run as root: the benchmark creates network namespaces");
    }
    // Run by the benchmark itself, inside a throwaway host, and timed: nothing else first (see floor.rs).
    if args.first().is_some_and(|a| a == "floor") {
        return match (args.get(1).map(String::as_str), args.get(2)) {
            (Some("up"), Some(name)) => floor::up(name, number_at(&args, 3)?),
            (Some("down"), Some(name)) => floor::down(name, number_at(&args, 3)?),
            (Some("bridge"), None) => floor::bridge(),
            _ => bail!("usage: nsnet-bench floor up NAME I | floor down NAME I | floor bridge"),
        };
    }
    let quick = args.iter().any(|a| a == "--quick");
    let sizes = || -> Result<Vec<u16>> {
        value("--sizes")
            .unwrap_or_else(|| "1,1000,10000".into())
            .split(',')
            .map(|s| s.parse().context("--sizes takes numbers like 1,1000,10000"))
            .collect()
    };
    let mut kinds = peers::Kind::available();
    if let Some(only) = value("--only") {
        // A comma-separated list of name fragments: `--only nsnet,floor`.
        kinds.retain(|k| only.split(',').any(|o| k.name().contains(o)));
    }
    match args.first().map(String::as_str) {
        Some("all") => {
            let out =
                std::path::PathBuf::from(value("--out").unwrap_or_else(|| "bench/results".into()));
            std::fs::create_dir_all(&out)?;
            let (reps, n, each, secs): (usize, usize, usize, u32) = if quick {
                (5, 100, 2, 2)
            } else {
                (30, 1000, 8, 5)
            };
            let mut md = format!(
                "# nsnet benchmark results\n\nMachine: {}\n\nEvery figure comes from one run of `nsnet-bench all`; \
                 each tool ran in throwaway network namespaces of its own.\n\n",
                machine()
            );
            let life = lifecycle::run(&kinds, reps)?;
            md += &lifecycle::table(&life, reps);
            let conc = lifecycle::concurrent(&kinds, 16, each)?;
            md += "\n";
            md += &lifecycle::concurrency_table(&conc, 16, each);
            let curve_kinds: Vec<peers::Kind> = kinds
                .iter()
                .copied()
                .filter(|k| !matches!(k, peers::Kind::Nsnet("iptables") | peers::Kind::NsnetAttach))
                .collect();
            let curves = curve::run(&curve_kinds, n)?;
            md += "\n";
            md += &curve::table(&curves, n);
            std::fs::write(out.join("curve.svg"), curve::svg(&curves, n))?;
            std::fs::write(out.join("curve.csv"), curve::csv(&curves))?;
            md += "\n![cost curve](curve.svg)\n\n";
            md += &datapath::run(secs, if quick { 3 } else { 10 })?;
            md += "\n";
            let sizes = if quick { vec![1, 1000] } else { sizes()? };
            md += &ports::ports(&sizes, if quick { 5 } else { 15 }, 1000)?;
            std::fs::write(out.join("results.md"), &md)?;
            print!("{md}");
            Ok(())
        }
        Some("lifecycle") => {
            let reps = number("--reps", 30)?;
            print!("{}", lifecycle::table(&lifecycle::run(&kinds, reps)?, reps));
            Ok(())
        }
        Some("concurrent") => {
            let (c, e) = (number("--creators", 16)?, number("--each", 8)?);
            print!(
                "{}",
                lifecycle::concurrency_table(&lifecycle::concurrent(&kinds, c, e)?, c, e)
            );
            Ok(())
        }
        Some("curve") => {
            let n = number("--n", 1000)?;
            let kinds: Vec<peers::Kind> = kinds
                .into_iter()
                .filter(|k| !matches!(k, peers::Kind::Nsnet("iptables") | peers::Kind::NsnetAttach))
                .collect();
            let curves = curve::run(&kinds, n)?;
            std::fs::write("curve.svg", curve::svg(&curves, n))?;
            std::fs::write("curve.csv", curve::csv(&curves))?;
            print!("{}", curve::table(&curves, n));
            eprintln!("plot written to curve.svg, every operation's time to curve.csv");
            Ok(())
        }
        Some("datapath") => {
            let (secs, reps, pin) = (
                u32::try_from(number("--secs", 4)?).context("--secs is too large")?,
                number("--reps", 10)?,
                !args.iter().any(|a| a == "--unpinned"),
            );
            if args.iter().any(|a| a == "-6") {
                print!("{}", datapath::run6(secs, reps, pin)?);
            } else {
                print!("{}", datapath::run_with(secs, reps, pin)?);
            }
            Ok(())
        }
        Some("ports") => {
            let out = ports::ports(
                &sizes()?,
                number("--reps", 15)?,
                u16::try_from(number("--portmap-max", 1000)?)
                    .context("--portmap-max takes a number up to 65535")?,
            )?;
            print!("{out}");
            Ok(())
        }
        Some("soak") => soak::soak(number("--cycles", 2000)?),
        Some("overlay") => {
            let mut o = overlay::Opts::new(quick);
            o.secs = u32::try_from(number("--secs", usize::try_from(o.secs)?)?)
                .context("--secs is too large")?;
            o.reps = number("--reps", o.reps)?;
            o.cycles = number("--cycles", o.cycles)?;
            o.window = u64::try_from(number("--window", usize::try_from(o.window)?)?)?;
            if let Some(h) = value("--hosts") {
                o.hosts = h
                    .split(',')
                    .filter(|s| *s != "0")
                    .map(|s| s.parse().context("--hosts takes numbers like 3,50"))
                    .collect::<Result<_>>()?;
            }
            let out =
                std::path::PathBuf::from(value("--out").unwrap_or_else(|| "bench/results".into()));
            let md = overlay::run(&o)?;
            std::fs::create_dir_all(&out)?;
            std::fs::write(out.join("overlay.md"), &md)?;
            print!("{md}");
            Ok(())
        }
        Some("dns") => {
            let mut o = dns::Opts::new(quick);
            o.rounds = number("--rounds", o.rounds)?;
            if let Some(secs) = value("--secs") {
                o.secs = secs.parse().context("--secs takes a number of seconds")?;
            }
            o.window = number("--window", o.window)?.max(1);
            o.creates = number("--creates", o.creates)?;
            o.names = number("--names", o.names)?;
            let out =
                std::path::PathBuf::from(value("--out").unwrap_or_else(|| "bench/results".into()));
            let md = dns::run(&o)?;
            std::fs::create_dir_all(&out)?;
            std::fs::write(out.join("dns.md"), &md)?;
            print!("{md}");
            Ok(())
        }
        _ => bail!("{USAGE}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f64_of_u64_rounds_to_nearest_even() {
        assert_eq!(f64_of_u64(0), 0.0);
        assert_eq!(f64_of_u64(1 << 32), 4_294_967_296.0);
        assert_eq!(f64_of_u64((1 << 53) - 1), 9_007_199_254_740_991.0);
        // Above 2^53 the spacing is 2: ties go to the even mantissa.
        assert_eq!(f64_of_u64((1 << 53) + 1), 9_007_199_254_740_992.0);
        assert_eq!(f64_of_u64((1 << 53) + 3), 9_007_199_254_740_996.0);
        assert_eq!(f64_of_u64(u64::MAX), 18_446_744_073_709_551_616.0);
        assert_eq!(f64_of_i64(-1536), -1536.0);
        assert_eq!(f64_of_i64(i64::MIN), -9_223_372_036_854_775_808.0);
    }

    #[test]
    fn quantile_is_the_nearest_rank() {
        let v: Vec<f64> = (0..11).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.0), 0.0);
        assert_eq!(quantile(&v, 0.5), 5.0);
        // 2.5 rounds away from zero, as f64::round does.
        assert_eq!(quantile(&v, 0.25), 3.0);
        assert_eq!(quantile(&v, 0.3), 3.0);
        assert_eq!(quantile(&v, 1.0), 10.0);
        assert_eq!(quantile(&v, 2.0), 10.0);
        assert_eq!(quantile(&v, -1.0), 0.0);
        assert_eq!(quantile(&[1.0, 2.0], 0.5), 2.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
