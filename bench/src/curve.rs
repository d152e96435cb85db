//! The cost curve: N sandboxes created one after another on one network, then removed; the time of each, by
//! position. Also what the state weighs at N, and what nsnet does when a bridge is full (1,024 ports).

use std::fmt::Write as _;

use anyhow::Result;

use crate::peers::{total_ms, Kind, Peer};
use crate::{f64_of, f64_of_i64, f64_of_u64, measured, median, port_of};

#[derive(Clone)]
pub struct Curve {
    pub kind: Kind,
    pub create: Vec<f64>,
    pub remove: Vec<f64>,
    /// nsnet only: state dir size, `nsnet ls` peak RSS and time, at N sandboxes.
    pub state_bytes: Option<u64>,
    pub ls: Option<(f64, i64)>,
    /// nsnet only: what the sandbox after the bridge's last port gets.
    pub bridge_full: Option<String>,
    /// The trend-line ratio (#n / #10) of every run of this tool's creates; the series above is the
    /// run with the median one.
    pub runs: Vec<f64>,
    /// Frames the first sandbox, idle, received per later create: what each new sandbox floods to its
    /// neighbours (neighbour discovery, MLD, router solicitations): (frames, creates). It should be 0
    /// frames, but for the bridge's own one-off IGMP/MLD report when it lands inside the window.
    pub idle_rx: Option<(u64, usize)>,
}

/// How many times each tool's curve runs. A run's figures move with the VM's moment-to-moment noise (the
/// same code gave trend ratios 30% apart from one run to the next), so the quick tools run three times and
/// the table shows their median run; the peers take minutes per run and run once.
fn runs_of(kind: Kind) -> usize {
    match kind {
        Kind::Nsnet(_)
        | Kind::NsnetDualStack
        | Kind::NsnetCni
        | Kind::NsnetAttach
        | Kind::Floor => 3,
        Kind::Netavark(..) | Kind::CniChain => 1,
    }
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_bytes(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

pub fn run(kinds: &[Kind], n: usize) -> Result<Vec<Curve>> {
    let mut out = Vec::new();
    for (k, &kind) in kinds.iter().enumerate() {
        let mut runs = Vec::new();
        for r in 0..runs_of(kind) {
            eprintln!("curve: {} x {n}, run {} ...", kind.name(), r + 1);
            runs.push(run_one(kind, &format!("u{k}r{r}"), n, r == 0)?);
        }
        let ratios: Vec<f64> = runs.iter().map(|c| trend_ratio(&c.create, n)).collect();
        let mut order: Vec<usize> = (0..runs.len()).collect();
        order.sort_by(|&a, &b| ratios[a].total_cmp(&ratios[b]));
        let mut chosen = runs[order[order.len() / 2]].clone();
        // What is measured once (state size, `nsnet ls`, the full bridge) comes from the first run.
        chosen.state_bytes = runs[0].state_bytes;
        chosen.ls = runs[0].ls;
        chosen.bridge_full = runs[0].bridge_full.clone();
        // The worst run's flooding: one run that saw any is enough to tell.
        chosen.idle_rx = runs.iter().filter_map(|c| c.idle_rx).max();
        chosen.runs = ratios;
        out.push(chosen);
    }
    Ok(out)
}

/// One curve of `kind`; `extras` also measures the state, `nsnet ls` and the full bridge (nsnet only).
fn run_one(kind: Kind, tag: &str, n: usize, extras: bool) -> Result<Curve> {
    let p = Peer::new(kind, tag)?;
    let mut c = Curve {
        kind,
        create: vec![],
        remove: vec![],
        state_bytes: None,
        ls: None,
        bridge_full: None,
        runs: vec![],
        idle_rx: None,
    };
    let mut idle_before = None;
    for i in 0..n {
        p.prepare(i)?;
        c.create.push(total_ms(&p.up(i, port_of(i)?)?));
        if i == 0 {
            idle_before = rx_packets(&p.host.sandbox(0));
        }
    }
    if let (Some(before), Some(after), true) = (idle_before, rx_packets(&p.host.sandbox(0)), n > 1)
    {
        c.idle_rx = Some((after.saturating_sub(before), n - 1));
    }
    if let (Kind::Nsnet(fw), true) = (kind, extras) {
        c.state_bytes = Some(dir_bytes(&p.host.state));
        let nsnet =
            std::env::var("NSNET_BIN_DIR").unwrap_or_else(|_| "target/release".into()) + "/nsnet";
        let mut ls = p.host.cmd(&nsnet);
        ls.env("NSNET_STATE_DIR", &p.host.state)
            .env("NSNET_FIREWALL", fw)
            .arg("ls");
        let r = measured(&mut ls, None)?;
        c.ls = Some((r.ms, r.rss_kib));
        // Fill the bridge to its 1,023 ports, then ask for one more.
        let mut extra = n;
        while extra < nsnet_core::model::MAX_BRIDGE_PORTS {
            p.prepare(extra)?;
            p.up(extra, port_of(extra)?)?;
            extra += 1;
        }
        p.prepare(extra)?;
        c.bridge_full = Some(match p.up(extra, port_of(extra)?) {
            Ok(_) => "accepted (unexpected)".into(),
            Err(e) => e
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string(),
        });
        let _ = p.cleanup(extra);
        for i in (n..extra).rev() {
            p.down(i, port_of(i)?)?;
            p.cleanup(i)?;
        }
    }
    for i in 0..n {
        c.remove.push(total_ms(&p.down(i, port_of(i)?)?));
        p.cleanup(i)?;
    }
    Ok(c)
}

/// Packets received by every interface but `lo` of the namespace `/run/netns/NAME` (from its
/// `/proc/net/dev`, which follows the reader's namespace); `None` if it cannot be read.
fn rx_packets(name: &str) -> Option<u64> {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{name}"))
        .args(["cat", "/proc/net/dev"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut total = 0;
    for line in text.lines().skip(2) {
        let (ifname, counters) = line.split_once(':')?;
        if ifname.trim() == "lo" {
            continue;
        }
        // Receive bytes, then receive packets.
        total += counters.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// The trend line's value at #n over its value at #10.
fn trend_ratio(v: &[f64], n: usize) -> f64 {
    let (a, b) = trend(v);
    (a + b * f64_of(n)) / (a + b * 10.0)
}

/// Median of the window of 10 ending at 1-based position `pos`.
fn at(v: &[f64], pos: usize) -> f64 {
    let end = pos.min(v.len());
    let start = end.saturating_sub(10);
    median(v[start..end].to_vec())
}

/// The Theil–Sen line through the series (x = 1-based position): the median of the slopes between every pair
/// of points, and the median intercept for it. Unlike a window median it uses every operation, and unlike a
/// least-squares fit a few stalls of the VM do not tilt it.
fn trend(v: &[f64]) -> (f64, f64) {
    let mut slopes = Vec::with_capacity(v.len() * v.len() / 2);
    for i in 0..v.len() {
        for j in i + 1..v.len() {
            slopes.push((v[j] - v[i]) / f64_of(j - i));
        }
    }
    let slope = median(slopes);
    let intercept = median(
        v.iter()
            .enumerate()
            .map(|(i, y)| y - slope * f64_of(i + 1))
            .collect(),
    );
    (intercept, slope)
}

pub fn table(rows: &[Curve], n: usize) -> String {
    let mut s = String::new();
    let mut marks: Vec<usize> = [10, 100, n / 2, n]
        .into_iter()
        .filter(|&m| m >= 10 && m <= n)
        .collect();
    marks.sort_unstable();
    marks.dedup();
    let _ = writeln!(
        s,
        "### Cost curve: {n} sandboxes one after another on one network, then removed (ms, median of the 10 \
         operations ending at each position)\n"
    );
    let head: Vec<String> = marks.iter().map(|m| format!("#{m}")).collect();
    let _ = writeln!(
        s,
        "| tool | operation | {} | #{n} / #10 | trend line: #{n} / #10 | trend: ms per 100 more |",
        head.join(" | ")
    );
    let _ = writeln!(s, "|---|---|{}---:|---:|---:|", "---:|".repeat(marks.len()));
    for r in rows {
        for (what, v) in [("create", &r.create), ("remove", &r.remove)] {
            let cells: Vec<String> = marks.iter().map(|&m| format!("{:.1}", at(v, m))).collect();
            let (_, b) = trend(v);
            let _ = writeln!(
                s,
                "| {} | {what} | {} | {:.2} | {:.2} | {:+.2} |",
                r.kind.name(),
                cells.join(" | "),
                at(v, n) / at(v, 10),
                trend_ratio(v, n),
                b * 100.0
            );
        }
    }
    let _ = writeln!(
        s,
        "\nThe window medians follow the machine's moment-to-moment noise (ten operations each); the trend line \
         (Theil–Sen: the median slope over every pair of operations) uses all {n}."
    );
    for r in rows.iter().filter(|r| r.runs.len() > 1) {
        let all: Vec<String> = r.runs.iter().map(|x| format!("{x:.2}")).collect();
        let _ = writeln!(
            s,
            "\n{}: {} runs, create trend ratios {}; the rows above are the median run.",
            r.kind.name(),
            r.runs.len(),
            all.join(", ")
        );
    }
    for r in rows {
        if let (Some(bytes), Some((ms, kib))) = (r.state_bytes, r.ls) {
            let _ = writeln!(
                s,
                "\nAt {n} sandboxes, {}: the state dir holds {:.1} KiB ({:.0} bytes per sandbox); `nsnet ls` \
                 takes {ms:.1} ms and {:.1} MiB peak RSS.",
                r.kind.name(),
                f64_of_u64(bytes) / 1024.0,
                f64_of_u64(bytes) / f64_of(n),
                f64_of_i64(kib) / 1024.0
            );
        }
        if let Some((frames, creates)) = r.idle_rx {
            let _ = writeln!(
                s,
                "\n{}: the first sandbox, idle, received {frames} frames during the {creates} creates after it \
                 ({:.2} per create; the most of any run).",
                r.kind.name(),
                f64_of_u64(frames) / f64_of(creates)
            );
        }
        if let Some(full) = &r.bridge_full {
            let _ = writeln!(
                s,
                "\nThe 1,024th sandbox on one bridge network (a bridge has 1,023 ports): `{full}`"
            );
        }
    }
    s
}

/// Every operation's time, one line each: `tool,operation,position,ms` (position from 1).
pub fn csv(rows: &[Curve]) -> String {
    let mut s = String::from("tool,operation,position,ms\n");
    for r in rows {
        for (what, v) in [("create", &r.create), ("remove", &r.remove)] {
            for (i, ms) in v.iter().enumerate() {
                let _ = writeln!(s, "\"{}\",{what},{},{ms:.3}", r.kind.name(), i + 1);
            }
        }
    }
    s
}

/// The curve as an SVG: one panel for creates, one for removes; x the position, y the time (rolling median of
/// 15 to show the trend through the noise).
pub fn svg(rows: &[Curve], n: usize) -> String {
    const COLORS: [&str; 6] = [
        "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02",
    ];
    let (w, h, pad) = (900.0, 300.0, 60.0);
    let roll = |v: &[f64]| -> Vec<f64> {
        (0..v.len())
            .map(|i| median(v[i.saturating_sub(7)..(i + 8).min(v.len())].to_vec()))
            .collect()
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{}" font-family="sans-serif" font-size="12">"#,
        2.0 * h + 40.0
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (panel, what) in ["create", "remove"].iter().enumerate() {
        let series: Vec<Vec<f64>> = rows
            .iter()
            .map(|r| {
                roll(if *what == "create" {
                    &r.create
                } else {
                    &r.remove
                })
            })
            .collect();
        let ymax = series.iter().flatten().copied().fold(1.0_f64, f64::max) * 1.1;
        let top = f64_of(panel) * (h + 20.0) + 20.0;
        let (x0, y0, pw, ph) = (pad, top + 10.0, w - pad - 220.0, h - 50.0);
        let _ = writeln!(
            out,
            r#"<text x="{x0}" y="{}" font-weight="bold">{what} (ms) by position, 1..{n}</text>"#,
            top + 4.0
        );
        let _ = writeln!(
            out,
            r##"<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##
        );
        for t in 0..=4 {
            let v = ymax * f64::from(t) / 4.0;
            let y = y0 + ph - ph * f64::from(t) / 4.0;
            let _ = writeln!(
                out,
                r##"<text x="{}" y="{}" text-anchor="end">{v:.0}</text><line x1="{x0}" x2="{}" y1="{y}" y2="{y}" stroke="#eee"/>"##,
                x0 - 5.0,
                y + 4.0,
                x0 + pw
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end">{n}</text>"#,
            x0 + pw,
            y0 + ph + 15.0
        );
        for (k, (r, s)) in rows.iter().zip(&series).enumerate() {
            let color = COLORS[k % COLORS.len()];
            let pts: Vec<String> = s
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    format!(
                        "{:.1},{:.1}",
                        x0 + pw * f64_of(i) / f64_of(n.max(2) - 1),
                        y0 + ph - ph * v / ymax
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
                pts.join(" ")
            );
            let ly = y0 + 15.0 + 16.0 * f64_of(k);
            let _ = writeln!(
                out,
                r#"<rect x="{}" y="{}" width="12" height="3" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
                x0 + pw + 10.0,
                ly - 4.0,
                x0 + pw + 28.0,
                ly,
                r.kind.name()
            );
        }
    }
    out.push_str("</svg>\n");
    out
}
