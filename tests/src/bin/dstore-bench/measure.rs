//! Measurement helpers shared by the benchmarks: figure printing, throughput, peak RSS
//! (VmHWM), timed subprocesses, and the `key: value` reports child workers print.

use std::collections::HashMap;
use std::fmt::Display;
use std::io::ErrorKind;
use std::process::{Command, Output};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

/// The CPU model, its logical core count, and which of the `wanted` flags it has (SHA-NI,
/// AVX-512 and the like change the figures from one machine to the next).
pub fn cpu_summary(wanted: &[&str]) -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    let flags = field("flags");
    let present: Vec<&str> = flags
        .split_whitespace()
        .filter(|f| wanted.contains(f))
        .collect();
    format!(
        "{} ({} logical), flags: {}",
        field("model name"),
        info.lines().filter(|l| l.starts_with("processor")).count(),
        present.join(" ")
    )
}

/// Bytes in a MiB.
pub const MIB: u64 = 1 << 20;

/// Prints one figure as `name: value` on stdout (the only thing benchmarks print there).
pub fn figure(name: &str, value: impl Display) {
    println!("{name}: {value}");
}

/// Throughput in MiB/s of `bytes` processed in `elapsed`.
pub fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / MIB as f64 / elapsed.as_secs_f64()
}

/// Kibibytes to mebibytes.
pub fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// This process's peak resident set size so far in KiB: the `VmHWM` line of
/// /proc/self/status (Linux only).
pub fn peak_rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")
        .context("reading /proc/self/status for VmHWM (peak RSS needs Linux procfs)")?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .ok_or_else(|| anyhow!("no VmHWM line in /proc/self/status"))?;
    let kib = line
        .trim()
        .strip_suffix("kB")
        .ok_or_else(|| anyhow!("unexpected VmHWM line {line:?}"))?;
    kib.trim()
        .parse()
        .with_context(|| format!("parsing VmHWM line {line:?}"))
}

/// CPU seconds (user + system) process `pid` has used so far: fields 14 and 15 of
/// /proc/<pid>/stat, in the kernel's USER_HZ ticks (Linux only).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count from ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("unexpected {path}: {stat:?}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| anyhow!("no CPU time in {path}: {stat:?}"))
    };
    // After ')': state is field 3, so utime (14) and stime (15) sit at 11 and 12.
    let (utime, stime) = (ticks(11)?, ticks(12)?);
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    anyhow::ensure!(hz > 0, "sysconf(_SC_CLK_TCK) failed");
    Ok((utime + stime) as f64 / hz as f64)
}

/// Logical cores this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs `cmd` to completion with stdout and stderr captured, timing it wall-clock from
/// spawn to exit. Fails with a clear error if the program is missing or exits non-zero.
pub fn time_command(cmd: &mut Command) -> anyhow::Result<(Output, Duration)> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let start = Instant::now();
    let output = match cmd.output() {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            bail!("`{program}` not found on PATH: install it to run this benchmark")
        }
        Err(e) => return Err(e).with_context(|| format!("running `{program}`")),
    };
    let elapsed = start.elapsed();
    if !output.status.success() {
        bail!(
            "`{program}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok((output, elapsed))
}

/// The `key: value` lines a child worker prints on stdout, for its parent to parse.
pub struct Report(HashMap<String, String>);

impl Report {
    /// Parses `key: value` lines; other lines are ignored.
    pub fn parse(text: &str) -> Self {
        Report(
            text.lines()
                .filter_map(|l| l.split_once(": "))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect(),
        )
    }

    /// The value under `key`, parsed.
    pub fn get<T: FromStr>(&self, key: &str) -> anyhow::Result<T>
    where
        T::Err: Display,
    {
        let value = self
            .0
            .get(key)
            .ok_or_else(|| anyhow!("worker report has no `{key}` line"))?;
        value
            .parse()
            .map_err(|e| anyhow!("worker report `{key}: {value}`: {e}"))
    }
}

/// The 1, 5 and 15 minute load averages from /proc/loadavg, for diagnostics ("?" if
/// unreadable).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

/// Writes `bytes` bytes of a ChaCha stream to `path`, 1 MiB at a time, and fsyncs it.
pub fn write_random_bytes(path: &std::path::Path, bytes: u64) -> anyhow::Result<()> {
    use anyhow::Context;
    use rand::rngs::StdRng;
    use rand::{RngCore, SeedableRng};
    use std::io::Write;
    let mut file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut rng = StdRng::from_entropy();
    let mut block = vec![0u8; MIB as usize];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(MIB) as usize;
        rng.fill_bytes(&mut block[..n]);
        file.write_all(&block[..n])
            .with_context(|| format!("writing {}", path.display()))?;
        left -= n as u64;
    }
    file.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}
