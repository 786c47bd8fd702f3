//! The printed tables and the check against the targets.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::methods::Method;
use crate::{mergekit, Results, Run};

/// The largest peak anonymous memory the issue allows, in bytes (256 MiB).
pub const ANON_TARGET: u64 = 256 << 20;
/// The largest wall time the issue allows, in multiples of the floor.
pub const FLOOR_TARGET: f64 = 4.0;
/// The smallest speed-up from 1 thread to 2 the issue asks for.
pub const THREADS_TARGET: f64 = 1.7;

/// One of the targets, checked against a measurement.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Target {
    /// What is checked.
    pub what: String,
    /// The goal, e.g. "≥ 50×".
    pub goal: String,
    /// The measured value.
    pub value: String,
    /// Whether it is met.
    pub met: bool,
}

/// Bytes as MiB (or GiB from 10 GiB up), e.g. "123.4 MiB".
pub fn mib(bytes: u64) -> String {
    let m = bytes as f64 / (1u64 << 20) as f64;
    if m >= 10240.0 {
        format!("{:.1} GiB", m / 1024.0)
    } else {
        format!("{m:.1} MiB")
    }
}

/// Now, as an ISO 8601 UTC timestamp.
pub fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    iso8601(secs)
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian).
pub fn iso8601(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from a day count: shift to an era starting on 0000-03-01.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn gbps(bytes: u64, s: f64) -> f64 {
    bytes as f64 / 1e9 / s
}

/// The successful unlimited mergekit measurement of `m`, if any.
fn mergekit_for(r: &Results, m: Method) -> Option<&mergekit::Entry> {
    r.mergekit
        .iter()
        .find(|e| e.method == m && e.memory_limit_bytes.is_none() && e.measured.ok())
}

fn sweep_pair(r: &Results, m: Method) -> Option<(&Run, &Run)> {
    let of = |t: usize| {
        r.threads_sweep
            .iter()
            .find(|x| x.method == m && x.threads == Some(t))
    };
    let one = of(1)?;
    let many = r
        .threads_sweep
        .iter()
        .filter(|x| x.method == m && x.threads.is_some_and(|t| t > 1))
        .max_by_key(|x| x.threads)?;
    Some((one, many))
}

/// Checks the targets that this run measured.
pub fn targets(r: &Results) -> Vec<Target> {
    let mut out = Vec::new();
    let floor = r.floor.total_s();
    for run in &r.runs {
        let m = run.method;
        if let (Some(mk), Some(goal)) = (mergekit_for(r, m), m.target_speedup()) {
            let s = mk.measured.wall_s / run.measured.wall_s;
            out.push(Target {
                what: format!("{} vs mergekit", m.label()),
                goal: format!("≥ {goal}× faster"),
                value: format!("{s:.1}×"),
                met: s >= goal,
            });
        }
        let x = run.measured.wall_s / floor;
        out.push(Target {
            what: format!("{} vs the floor", m.label()),
            goal: format!("≤ {FLOOR_TARGET}× the floor"),
            value: format!("{x:.2}×"),
            met: x <= FLOOR_TARGET,
        });
        out.push(Target {
            what: format!("{} peak anonymous memory (scale {})", m.label(), r.scale),
            goal: format!("≤ {}", mib(ANON_TARGET)),
            value: mib(run.measured.peak_anon_bytes),
            met: run.measured.peak_anon_bytes <= ANON_TARGET,
        });
        if let Some((one, many)) = sweep_pair(r, m) {
            let s = one.measured.wall_s / many.measured.wall_s;
            out.push(Target {
                what: format!(
                    "{} {} threads vs 1",
                    m.label(),
                    many.threads.unwrap_or_default()
                ),
                goal: format!("≥ {THREADS_TARGET}× faster"),
                value: format!("{s:.2}×"),
                met: s >= THREADS_TARGET,
            });
        }
    }
    for l in &r.memory_limit {
        if l.tool != "reefknot" {
            continue;
        }
        let mk = r
            .memory_limit
            .iter()
            .find(|x| x.tool == "mergekit" && x.method == l.method)
            .and_then(|x| x.measured.as_ref());
        let value = match (&l.measured, &l.error) {
            (Some(m), _) => format!(
                "reefknot {}{}",
                m.outcome(),
                mk.map(|k| format!(", mergekit {}", k.outcome()))
                    .unwrap_or_default()
            ),
            (None, Some(e)) => format!("not measured: {e}"),
            (None, None) => "not measured".into(),
        };
        out.push(Target {
            what: format!("{} under a {} limit", l.method.label(), mib(l.limit_bytes)),
            goal: "reefknot succeeds (mergekit cannot)".into(),
            value,
            met: l.measured.as_ref().is_some_and(|m| m.ok()),
        });
    }
    out
}

/// A simple left/right-aligned text table.
struct Table {
    rows: Vec<Vec<String>>,
    right: Vec<bool>,
}

impl Table {
    fn new(header: &[&str], right: &[bool]) -> Table {
        Table {
            rows: vec![header.iter().map(|s| s.to_string()).collect()],
            right: right.to_vec(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let cols = self.rows[0].len();
        let width: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut s = String::new();
        for (i, row) in self.rows.iter().enumerate() {
            let line: Vec<String> = (0..cols)
                .map(|c| {
                    let cell = row.get(c).map_or("", String::as_str);
                    let pad = width[c] - cell.chars().count();
                    if self.right.get(c).copied().unwrap_or(false) {
                        format!("{}{cell}", " ".repeat(pad))
                    } else {
                        format!("{cell}{}", " ".repeat(pad))
                    }
                })
                .collect();
            let _ = writeln!(s, "  {}", line.join("  ").trim_end());
            if i == 0 {
                let total = width.iter().sum::<usize>() + 2 * (cols - 1);
                let _ = writeln!(s, "  {}", "-".repeat(total));
            }
        }
        s
    }
}

/// The report of one scale.
pub fn render(r: &Results) -> String {
    let mut s = String::new();
    let f = &r.floor;
    let floor = f.total_s();
    let _ = writeln!(
        s,
        "\n== scale {}: {:.2} GB of inputs (base + {} fine-tunes), {:.2} GB output; warm page cache ==",
        r.scale,
        r.input_bytes as f64 / 1e9,
        r.family["tasks"],
        r.output_bytes as f64 / 1e9
    );
    let _ = writeln!(
        s,
        "{}{} (built {}{}); {}; {}",
        r.reefknot.version,
        r.reefknot
            .checkout
            .as_ref()
            .map(|c| format!(", checkout {c}"))
            .unwrap_or_default(),
        r.reefknot.built.as_deref().unwrap_or("?"),
        if r.reefknot.stale == Some(true) {
            ", older than the checkout's sources"
        } else {
            ""
        },
        r.machine.describe(),
        r.date
    );
    let others: Vec<String> = f
        .writes
        .iter()
        .skip(1)
        .map(|w| {
            if f.synced {
                format!("{} {:.3} + {:.3} s", w.method, w.write_s, w.sync_s)
            } else {
                format!("{} {:.3} s", w.method, w.write_s)
            }
        })
        .collect();
    let sync = if f.synced {
        format!(" + fsync {:.3} s", f.sync_s)
    } else {
        " (page cache, no fsync)".to_string()
    };
    let _ = writeln!(
        s,
        "floor ({} threads): read {:.2} GB in {:.3} s ({:.1} GB/s) + write {:.2} GB in {:.3} s{} ({}; {}) = {:.3} s\n",
        f.threads,
        f.read_bytes as f64 / 1e9,
        f.read_s,
        gbps(f.read_bytes, f.read_s),
        f.write_bytes as f64 / 1e9,
        f.write_s,
        sync,
        f.writes.first().map_or("?", |w| w.method.as_str()),
        if others.is_empty() { "-".into() } else { others.join(", ") },
        floor
    );
    let mut t = Table::new(
        &[
            "method",
            "reefknot",
            "input GB/s",
            "peak anon",
            "VmHWM",
            "×floor",
            "mergekit",
            "mk peak anon",
            "mk VmHWM",
            "speed-up",
        ],
        &[false, true, true, true, true, true, true, true, true, true],
    );
    for run in &r.runs {
        let m = &run.measured;
        let mk = mergekit_for(r, run.method);
        t.row(vec![
            run.method.label().into(),
            format!("{:.2} s", m.wall_s),
            format!("{:.2}", gbps(r.input_bytes, m.wall_s)),
            mib(m.peak_anon_bytes),
            mib(m.vm_hwm_bytes),
            format!("{:.2}", m.wall_s / floor),
            mk.map_or("-".into(), |e| format!("{:.1} s", e.measured.wall_s)),
            mk.map_or("-".into(), |e| mib(e.measured.peak_anon_bytes)),
            mk.map_or("-".into(), |e| mib(e.measured.vm_hwm_bytes)),
            mk.map_or("-".into(), |e| {
                format!("{:.1}×", e.measured.wall_s / m.wall_s)
            }),
        ]);
    }
    s.push_str(&t.render());
    let mk_notes: Vec<String> = r
        .mergekit
        .iter()
        .filter(|e| e.memory_limit_bytes.is_none())
        .map(|e| {
            format!(
                "{} {} ({}, {})",
                e.method.label(),
                e.measured.outcome(),
                if e.from_cache {
                    "cached"
                } else {
                    "measured now"
                },
                e.date
            )
        })
        .collect();
    if mk_notes.is_empty() {
        let _ = writeln!(
            s,
            "  (no mergekit results: run with --mergekit to measure them; they are cached in mergekit.json)"
        );
    } else {
        let _ = writeln!(
            s,
            "  mergekit {}: {}",
            r.mergekit
                .first()
                .map_or("?", |e| e.mergekit_version.as_str()),
            mk_notes.join("; ")
        );
    }
    let cpu: Vec<String> = r
        .runs
        .iter()
        .map(|run| {
            let m = &run.measured;
            format!(
                "{} {:.2} s user + {:.2} s sys ({:.2} cores busy)",
                run.method.label(),
                m.cpu_user_s,
                m.cpu_sys_s,
                (m.cpu_user_s + m.cpu_sys_s) / m.wall_s
            )
        })
        .collect();
    let _ = writeln!(s, "  reefknot CPU: {}", cpu.join("; "));
    let others: Vec<String> = r
        .runs
        .iter()
        .map(|run| {
            format!(
                "{} {:.2}",
                run.method.label(),
                run.measured.others_cpu_s / run.measured.wall_s
            )
        })
        .collect();
    let _ = writeln!(
        s,
        "  other work on the machine during each fastest run (cores busy): {}",
        others.join(", ")
    );

    if !r.threads_sweep.is_empty() {
        let _ = writeln!(s, "\nthreads:");
        let mut t = Table::new(
            &["method", "1 thread", "N threads", "speed-up"],
            &[false, true, true, true],
        );
        for &m in &Method::ALL {
            if let Some((one, many)) = sweep_pair(r, m) {
                t.row(vec![
                    m.label().into(),
                    format!("{:.2} s", one.measured.wall_s),
                    format!(
                        "{:.2} s ({})",
                        many.measured.wall_s,
                        many.threads.unwrap_or_default()
                    ),
                    format!("{:.2}×", one.measured.wall_s / many.measured.wall_s),
                ]);
            }
        }
        s.push_str(&t.render());
    }

    if !r.memory_limit.is_empty() {
        let _ = writeln!(s, "\nunder a cgroup v1 memory limit:");
        let mut t = Table::new(
            &[
                "tool",
                "method",
                "limit",
                "result",
                "wall",
                "peak anon",
                "cgroup max usage",
                "OOM kills",
            ],
            &[false, false, true, false, true, true, true, true],
        );
        for l in &r.memory_limit {
            match (&l.measured, &l.error) {
                (Some(m), _) => {
                    let c = l.cgroup.clone().unwrap_or_default();
                    t.row(vec![
                        l.tool.clone(),
                        l.method.label().into(),
                        mib(l.limit_bytes),
                        format!(
                            "{}{}",
                            m.outcome(),
                            if l.from_cache { " (cached)" } else { "" }
                        ),
                        format!("{:.2} s", m.wall_s),
                        mib(m.peak_anon_bytes),
                        c.max_usage_bytes.map_or("?".into(), mib),
                        c.oom_kills.map_or("?".into(), |n| n.to_string()),
                    ]);
                }
                (None, e) => t.row(vec![
                    l.tool.clone(),
                    l.method.label().into(),
                    mib(l.limit_bytes),
                    format!("not measured: {}", e.as_deref().unwrap_or("unknown reason")),
                ]),
            }
        }
        s.push_str(&t.render());
    }

    if !r.targets.is_empty() {
        let _ = writeln!(s, "\ntargets (issue 4):");
        for t in &r.targets {
            let _ = writeln!(
                s,
                "  [{}] {}: {} (goal {})",
                if t.met { "met" } else { "MISSED" },
                t.what,
                t.value,
                t.goal
            );
        }
    }
    s
}

/// Peak anonymous memory side by side for several scales.
pub fn render_scales(all: &[Results]) -> String {
    let mut header = vec!["method".to_string()];
    header.extend(
        all.iter()
            .map(|r| format!("x{} ({:.1} GB in)", r.scale, r.input_bytes as f64 / 1e9)),
    );
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    let right: Vec<bool> = (0..header.len()).map(|i| i > 0).collect();
    let mut t = Table::new(&header_refs, &right);
    for m in Method::ALL {
        let cells: Vec<String> = all
            .iter()
            .map(|r| {
                r.runs
                    .iter()
                    .find(|x| x.method == m)
                    .map_or("-".into(), |x| {
                        format!(
                            "{} / {:.2} s",
                            mib(x.measured.peak_anon_bytes),
                            x.measured.wall_s
                        )
                    })
            })
            .collect();
        if cells.iter().all(|c| c == "-") {
            continue;
        }
        let mut row = vec![m.label().to_string()];
        row.extend(cells);
        t.row(row);
    }
    format!(
        "\npeak anonymous memory / wall time by family size:\n{}",
        t.render()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn sizes_print() {
        assert_eq!(mib(256 << 20), "256.0 MiB");
        assert_eq!(mib(12 << 30), "12.0 GiB");
    }

    #[test]
    fn tables_align() {
        let mut t = Table::new(&["a", "bb"], &[false, true]);
        t.row(vec!["long".into(), "1".into()]);
        assert_eq!(t.render(), "  a     bb\n  --------\n  long   1\n");
    }
}
