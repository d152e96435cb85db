//! One sandbox with one published port, set up and torn down, over and over (targets: 5x faster than
//! netavark, 10x faster than the CNI chain); and 16 creators at once against one network.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::Result;

use crate::peers::{peak_kib, total_ms, Kind, Peer};
use crate::{f64_of, f64_of_i64, median, port_of, quantile};

/// Per-tool figures of the lifecycle run.
pub struct Lifecycle {
    pub kind: Kind,
    pub up: Vec<f64>,
    pub down: Vec<f64>,
    pub total: Vec<f64>,
    pub peak_kib: i64,
}

/// `reps` set-up + teardown cycles per tool, after 3 warm-up cycles, with one resident sandbox kept up so
/// every tool is measured in its steady state (bridge and base rules already there).
pub fn run(kinds: &[Kind], reps: usize) -> Result<Vec<Lifecycle>> {
    let mut out = Vec::new();
    for (n, &kind) in kinds.iter().enumerate() {
        eprintln!("lifecycle: {} ...", kind.name());
        let p = Peer::new(kind, &format!("l{n}"))?;
        p.prepare(0)?;
        p.up(0, 30000)?;
        let mut l = Lifecycle {
            kind,
            up: vec![],
            down: vec![],
            total: vec![],
            peak_kib: 0,
        };
        for r in 0..reps + 3 {
            let i = r + 1;
            p.prepare(i)?;
            let up = p.up(i, 8080)?;
            let down = p.down(i, 8080)?;
            p.cleanup(i)?;
            if r >= 3 {
                l.up.push(total_ms(&up));
                l.down.push(total_ms(&down));
                l.total.push(total_ms(&up) + total_ms(&down));
                l.peak_kib = l.peak_kib.max(peak_kib(&up)).max(peak_kib(&down));
            }
        }
        p.down(0, 30000)?;
        p.cleanup(0)?;
        out.push(l);
    }
    Ok(out)
}

fn spread(v: &[f64]) -> String {
    format!(
        "{:.1} ({:.1}–{:.1})",
        median(v.to_vec()),
        quantile(v, 0.1),
        quantile(v, 0.9)
    )
}

pub fn table(rows: &[Lifecycle], reps: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### One sandbox, one published port: set-up + teardown ({reps} cycles, ms: median (p10–p90))\n"
    );
    let _ = writeln!(s, "| tool | set-up | teardown | set-up + teardown | peak RSS of one process | time vs nsnet (nftables) |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    let base = rows
        .first()
        .map(|r| median(r.total.clone()))
        .unwrap_or(f64::NAN);
    for r in rows {
        let t = median(r.total.clone());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.1} MiB | {:.2}x |",
            r.kind.name(),
            spread(&r.up),
            spread(&r.down),
            spread(&r.total),
            f64_of_i64(r.peak_kib) / 1024.0,
            t / base
        );
    }
    s
}

/// Per-tool figures of the concurrency run.
pub struct Concurrency {
    pub kind: Kind,
    pub creates_per_s: f64,
    pub removes_per_s: f64,
    pub failures: usize,
    pub first_failure: String,
}

/// `creators` threads, each bringing `each` sandboxes up (then, all together again, down) on one network.
pub fn concurrent(kinds: &[Kind], creators: usize, each: usize) -> Result<Vec<Concurrency>> {
    let mut out = Vec::new();
    for (n, &kind) in kinds.iter().enumerate() {
        eprintln!("concurrency: {} ...", kind.name());
        let p = Peer::new(kind, &format!("c{n}"))?;
        p.prepare(0)?;
        p.up(0, 30000)?;
        let total = creators * each;
        for i in 1..=total {
            p.prepare(i)?;
        }
        let phase = |up: bool| -> (f64, Vec<String>) {
            let t = Instant::now();
            let errors: Vec<String> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..creators)
                    .map(|c| {
                        let p = &p;
                        s.spawn(move || {
                            let mut errs = Vec::new();
                            for k in 0..each {
                                let i = 1 + c * each + k;
                                let r = port_of(i).and_then(|port| {
                                    if up {
                                        p.up(i, port)
                                    } else {
                                        p.down(i, port)
                                    }
                                });
                                if let Err(e) = r {
                                    errs.push(e.to_string());
                                }
                            }
                            errs
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().unwrap_or_else(|_| vec!["thread panicked".into()]))
                    .collect()
            });
            (f64_of(total) / t.elapsed().as_secs_f64(), errors)
        };
        let (creates, mut errors) = phase(true);
        let (removes, more) = phase(false);
        errors.extend(more);
        for i in 1..=total {
            let _ = p.cleanup(i);
        }
        p.down(0, 30000)?;
        p.cleanup(0)?;
        out.push(Concurrency {
            kind,
            creates_per_s: creates,
            removes_per_s: removes,
            failures: errors.len(),
            first_failure: errors.first().cloned().unwrap_or_default(),
        });
    }
    Ok(out)
}

pub fn concurrency_table(rows: &[Concurrency], creators: usize, each: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### {creators} creators at once against one network ({creators} x {each} sandboxes, each with a port)\n"
    );
    let _ = writeln!(
        s,
        "| tool | set-ups/s | teardowns/s | failed operations | vs nsnet (set-ups/s) |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|");
    let base = rows.first().map(|r| r.creates_per_s).unwrap_or(f64::NAN);
    for r in rows {
        let failed = if r.failures == 0 {
            "0".to_string()
        } else {
            let first: String = r.first_failure.chars().take(120).collect();
            format!(
                "{} (first: {})",
                r.failures,
                first.replace('|', "/").replace('\n', " ")
            )
        };
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.1} | {failed} | {:.2}x |",
            r.kind.name(),
            r.creates_per_s,
            r.removes_per_s,
            r.creates_per_s / base
        );
    }
    s
}
