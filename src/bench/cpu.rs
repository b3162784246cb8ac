//! CPU time and memory of a process from /proc (Linux): this one (the
//! operator side) or the emulator's child process.

/// Linux reports utime/stime in clock ticks; USER_HZ is 100 on every
/// mainstream architecture.
const TICKS_PER_SECOND: f64 = 100.0;

pub const HOW: &str = "the operator runs in the bench process and the emulator in a child process (`xks-operator emulator`); CPU: utime+stime of /proc/<pid>/stat of each, in 1/100 s ticks; memory: VmHWM (peak) and VmRSS of the bench process's /proc/self/status";

#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub cpu_s: f64,
    pub peak_rss_kib: u64,
    pub rss_kib: u64,
}

/// utime + stime of a `stat` file.
fn stat_cpu_s(text: &str) -> Option<f64> {
    // comm may hold spaces and parentheses: it ends at the last ')'.
    let close = text.rfind(')')?;
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

fn status_kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// This process (`None`) or the process `pid`.
pub fn sample(pid: Option<u32>) -> Sample {
    let dir = pid.map_or_else(|| "/proc/self".to_string(), |p| format!("/proc/{p}"));
    let cpu_s = std::fs::read_to_string(format!("{dir}/stat"))
        .ok()
        .and_then(|t| stat_cpu_s(&t))
        .unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("{dir}/status")).unwrap_or_default();
    Sample {
        cpu_s,
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
        let s = stat_cpu_s(line).expect("parses");
        assert!((s - 3.0).abs() < 1e-9);
    }

    #[test]
    fn reads_this_process() {
        let s = sample(None);
        assert!(s.rss_kib > 0 && s.peak_rss_kib >= s.rss_kib);
        let by_pid = sample(Some(std::process::id()));
        assert!(by_pid.rss_kib > 0);
    }
}
