//! CPU time and memory of this process from /proc (Linux), split between
//! the emulator's threads and the rest (the operator side).

use std::collections::BTreeMap;

/// Name of the emulator runtime's threads (at most 15 bytes: /proc/…/comm).
pub const EMULATOR_THREAD: &str = "emulator";

/// Linux reports utime/stime in clock ticks; USER_HZ is 100 on every
/// mainstream architecture.
const TICKS_PER_SECOND: f64 = 100.0;

pub const HOW: &str = "CPU: utime+stime of /proc/self/stat (the whole process, exited threads included) minus those of the live threads named `emulator` in /proc/self/task/*/stat, in 1/100 s ticks; memory: VmHWM (peak) and VmRSS of /proc/self/status, one process holding both the operator and the emulator";

#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub process_s: f64,
    /// CPU seconds of each live emulator thread, by thread id.
    pub emulator: BTreeMap<String, f64>,
    pub peak_rss_kib: u64,
    pub rss_kib: u64,
}

/// utime + stime of a `stat` file, and its comm.
fn stat_times(text: &str) -> Option<(String, f64)> {
    // comm may hold spaces and parentheses: it ends at the last ')'.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((comm, (utime + stime) / TICKS_PER_SECOND))
}

fn status_kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

impl Sample {
    /// CPU seconds the emulator's threads used since `earlier`, by thread
    /// (threads of an emulator stopped in between are not counted against it).
    pub fn emulator_since(&self, earlier: &Sample) -> f64 {
        self.emulator
            .iter()
            .map(|(tid, s)| s - earlier.emulator.get(tid).copied().unwrap_or(0.0))
            .sum()
    }
}

pub fn sample() -> Sample {
    let process_s = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|t| stat_times(&t))
        .map_or(0.0, |(_, s)| s);
    let emulator = std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| {
            let text = std::fs::read_to_string(task.path().join("stat")).ok()?;
            let (comm, s) = stat_times(&text)?;
            comm.starts_with(EMULATOR_THREAD)
                .then(|| (task.file_name().to_string_lossy().into_owned(), s))
        })
        .collect();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    Sample {
        process_s,
        emulator,
        peak_rss_kib: status_kib(&status, "VmHWM:"),
        rss_kib: status_kib(&status, "VmRSS:"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_a_tricky_comm() {
        let line = "42 (tokio (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        let (comm, s) = stat_times(line).expect("parses");
        assert_eq!(comm, "tokio (x) y");
        assert!((s - 3.0).abs() < 1e-9);
    }

    #[test]
    fn reads_this_process() {
        let s = sample();
        assert!(s.rss_kib > 0 && s.peak_rss_kib >= s.rss_kib);
    }
}
