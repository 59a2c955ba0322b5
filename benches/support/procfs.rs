//! A process's CPU time and memory, from `/proc`: what the benches measure, of themselves
//! (`"self"`) or of a process they started (its PID).
#![allow(dead_code)]

use std::process::Command;

/// Clock ticks per second of `/proc/PID/stat` (`getconf CLK_TCK`, 100 on Linux).
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// (user, system) CPU time of process `pid` so far, in clock ticks; `None` once it is gone.
pub fn cpu_ticks(pid: &str) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after its end.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // Fields 14 and 15 of the whole line are utime and stime; `rest` starts at field 3.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some((field(14)?, field(15)?))
}

/// CPU seconds (user + system) process `pid` has used so far.
pub fn cpu_s(pid: &str) -> Option<f64> {
    cpu_ticks(pid).map(|(user, system)| (user + system) as f64 / clock_ticks())
}

/// A `kB` line of `/proc/PID/status` (`VmRSS`, `VmHWM`), in MiB.
pub fn status_mib(pid: &str, key: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"));
    kib / 1024.0
}
