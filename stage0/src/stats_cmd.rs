//! `pod stats [POD...] [--format json] [--no-stream] [--interval SECS]`:
//! per app CPU %, memory against its limit, pids, the pod's network I/O and
//! the app's storage I/O, refreshed like `podman stats`.
//!
//! Each pod's stage1 takes the samples (`pod-stage1-ns stats POD_DIR`,
//! `pod-stage1-vm stats POD_DIR`: counters as JSON, spec::stats); rates
//! come from two samples, so the first figures appear after one second. A
//! VM pod is one row, `vm`: the guest as the host sees it.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use spec::stats::{AppSample, PodSample};
use stage0::exit::Exit;
use stage0::lifecycle;
use stage0::paths::Dirs;
use stage0::pods::{PodRef, PodState, Pods};
use stage0::prepare::read_resolved;

use crate::{fail, print_table, Failed, Format};

/// The window of the first figures.
const FIRST_WINDOW: Duration = Duration::from_secs(1);

pub(crate) struct StatsArgs {
    pub pods: Vec<String>,
    pub format: Format,
    pub no_stream: bool,
    pub interval: Duration,
}

/// One pod as sampled: its uuid, name and sample, at an instant.
struct Taken {
    uuid: String,
    name: String,
    at: Instant,
    sample: PodSample,
}

/// One row of output.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    pod: String,
    pod_name: String,
    app: String,
    /// 100 is one CPU busy for the whole window.
    cpu_percent: f64,
    mem_usage: u64,
    mem_limit: u64,
    mem_percent: f64,
    net_input: Option<u64>,
    net_output: Option<u64>,
    block_input: Option<u64>,
    block_output: Option<u64>,
    pids: Option<u64>,
}

pub(crate) fn stats(dirs: &Dirs, args: StatsArgs) -> Result<(), Failed> {
    let pods = Pods::new(dirs);
    // Named pods must run now; with none named, every running pod, each
    // time (pods started meanwhile join the table).
    let named: Vec<PodRef> = args.pods.iter().map(|q| lifecycle::find(&pods, q)).collect::<Result<_, _>>()?;
    if let Some(p) = named.iter().find(|p| p.state != PodState::Running) {
        return Err(fail(Exit::Conflict, format!("pod {} is {}, not running", p.uuid, p.state)));
    }
    let selected = || -> Result<Vec<PodRef>, Failed> {
        if args.pods.is_empty() {
            Ok(pods.list()?.into_iter().filter(|p| p.state == PodState::Running).collect())
        } else {
            let uuids: Vec<&str> = named.iter().map(|p| p.uuid.as_str()).collect();
            Ok(pods
                .list()?
                .into_iter()
                .filter(|p| p.state == PodState::Running && uuids.contains(&p.uuid.as_str()))
                .collect())
        }
    };
    let host_memory = host_memory();
    let mut prev: HashMap<String, Taken> =
        sample_all(&pods, &selected()?)?.into_iter().map(|t| (t.uuid.clone(), t)).collect();
    let mut wait = FIRST_WINDOW;
    let mut first = true;
    loop {
        std::thread::sleep(wait);
        let now = sample_all(&pods, &selected()?)?;
        if now.is_empty() && !first {
            return Ok(());
        }
        let rows: Vec<Row> = now.iter().flat_map(|t| rows_of(t, prev.get(&t.uuid), host_memory)).collect();
        print_rows(&rows, args.format, !first || !args.no_stream);
        if args.no_stream {
            return Ok(());
        }
        prev = now.into_iter().map(|t| (t.uuid.clone(), t)).collect();
        wait = args.interval;
        first = false;
    }
}

/// Samples every pod; a pod that stopped meanwhile is left out.
fn sample_all(all: &Pods, pods: &[PodRef]) -> Result<Vec<Taken>, Failed> {
    let mut out = Vec::new();
    for pod in pods {
        let Some(resolved) = read_resolved(&pod.dir) else { continue };
        let stage1 = stage0::run::stage1_for(resolved.isolation).map_err(|e| fail(Exit::Failure, e.to_string()))?;
        let at = Instant::now();
        let ran = Command::new(&stage1)
            .arg("stats")
            .arg(&pod.dir)
            .env_clear()
            .output()
            .map_err(|e| fail(Exit::Failure, format!("run {}: {e}", stage1.display())))?;
        if !ran.status.success() {
            // Stopped since it was listed: not an error.
            if lifecycle::find(all, &pod.uuid).map(|p| p.state).ok() != Some(PodState::Running) {
                continue;
            }
            let why = String::from_utf8_lossy(&ran.stderr);
            return Err(fail(Exit::Failure, format!("pod {}: {}", pod.uuid, why.trim())));
        }
        let sample: PodSample = serde_json::from_slice(&ran.stdout).map_err(|e| {
            fail(Exit::Failure, format!("pod {}: {} stats printed no sample: {e}", pod.uuid, stage1.display()))
        })?;
        out.push(Taken { uuid: pod.uuid.clone(), name: resolved.name.to_string(), at, sample });
    }
    Ok(out)
}

/// The rows of one pod: rates against its previous sample (none: zero).
fn rows_of(now: &Taken, prev: Option<&Taken>, host_memory: u64) -> Vec<Row> {
    let window = prev.map(|p| now.at.duration_since(p.at)).unwrap_or_default();
    now.sample
        .apps
        .iter()
        .map(|app| {
            let before = prev.and_then(|p| p.sample.apps.iter().find(|a| a.name == app.name));
            row(now, app, before, window, host_memory)
        })
        .collect()
}

fn row(pod: &Taken, app: &AppSample, before: Option<&AppSample>, window: Duration, host_memory: u64) -> Row {
    let cpu_percent = match before {
        Some(b) if !window.is_zero() => app.cpu_ns.saturating_sub(b.cpu_ns) as f64 / window.as_nanos() as f64 * 100.0,
        _ => 0.0,
    };
    let mem_limit = app.memory_limit.filter(|l| *l < host_memory).unwrap_or(host_memory);
    let mem_percent = if mem_limit == 0 { 0.0 } else { app.memory_bytes as f64 / mem_limit as f64 * 100.0 };
    Row {
        pod: pod.uuid.clone(),
        pod_name: pod.name.clone(),
        app: app.name.clone(),
        cpu_percent,
        mem_usage: app.memory_bytes,
        mem_limit,
        mem_percent,
        net_input: pod.sample.net.map(|n| n.input),
        net_output: pod.sample.net.map(|n| n.output),
        block_input: app.block.map(|b| b.input),
        block_output: app.block.map(|b| b.output),
        pids: app.pids,
    }
}

fn print_rows(rows: &[Row], format: Format, refresh: bool) {
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => {
            let _ = writeln!(out, "{}", serde_json::to_string(rows).unwrap_or_default());
        }
        Format::Table => {
            if refresh && std::io::stdout().is_terminal() {
                // As podman: the table replaces the one before.
                let _ = write!(out, "\x1b[2J\x1b[H");
            }
            drop(out);
            let mut text = String::from("POD\tNAME\tAPP\tCPU %\tMEM USAGE / LIMIT\tMEM %\tNET IO\tBLOCK IO\tPIDS\n");
            for r in rows {
                let io = |i: Option<u64>, o: Option<u64>| match (i, o) {
                    (Some(i), Some(o)) => format!("{} / {}", human(i), human(o)),
                    _ => "-- / --".to_owned(),
                };
                text.push_str(&format!(
                    "{}\t{}\t{}\t{:.2}%\t{} / {}\t{:.2}%\t{}\t{}\t{}\n",
                    &r.pod[..r.pod.len().min(8)],
                    r.pod_name,
                    r.app,
                    r.cpu_percent,
                    human(r.mem_usage),
                    human(r.mem_limit),
                    r.mem_percent,
                    io(r.net_input, r.net_output),
                    io(r.block_input, r.block_output),
                    r.pids.map_or("--".to_owned(), |p| p.to_string()),
                ));
            }
            print_table(&text);
            if refresh && !std::io::stdout().is_terminal() {
                println!();
            }
        }
    }
}

/// Bytes in decimal units, as podman prints them (`1.5MB`).
fn human(bytes: u64) -> String {
    const UNITS: &[&str] = &["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{}{}", trim_zeros(&format!("{v:.3}")), UNITS[unit])
    }
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// The host's memory, the limit of an app that has none.
fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| l.strip_prefix("MemTotal:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .map_or(u64::MAX, |kib: u64| kib.saturating_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;
    use spec::stats::Io;

    fn taken(at: Instant, cpu_ns: u64, net: Option<Io>) -> Taken {
        let app = AppSample {
            name: "web".into(),
            cpu_ns,
            memory_bytes: 50 << 20,
            memory_limit: Some(200 << 20),
            pids: Some(3),
            block: Some(Io { input: 4096, output: 0 }),
        };
        Taken { uuid: "0123456789".into(), name: "demo".into(), at, sample: PodSample { apps: vec![app], net } }
    }

    #[test]
    fn rates_and_percentages_from_two_samples() {
        let t0 = Instant::now();
        let before = taken(t0, 1_000_000_000, None);
        let now = taken(t0 + Duration::from_secs(2), 2_000_000_000, Some(Io { input: 10, output: 20 }));
        let rows = rows_of(&now, Some(&before), 1 << 40);
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert!((r.cpu_percent - 50.0).abs() < 1e-9, "1 s of CPU in 2 s: {r:?}");
        assert_eq!((r.mem_usage, r.mem_limit), (50 << 20, 200 << 20));
        assert!((r.mem_percent - 25.0).abs() < 1e-9);
        assert_eq!((r.net_input, r.net_output, r.block_input, r.pids), (Some(10), Some(20), Some(4096), Some(3)));
        // No previous sample: no rate yet. No limit, or one above the
        // host's memory: the host's memory.
        let r = &rows_of(&now, None, 100 << 20)[0];
        assert_eq!((r.cpu_percent, r.mem_limit), (0.0, 100 << 20));
    }

    #[test]
    fn sizes_as_podman_prints_them() {
        assert_eq!(human(999), "999B");
        assert_eq!(human(1500), "1.5kB");
        assert_eq!(human(52_428_800), "52.429MB");
        assert_eq!(human(2_000_000_000), "2GB");
    }
}
