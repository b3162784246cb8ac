//! The bench report as text tables (the terminal) or Markdown (what
//! BENCHMARKS.md holds): the same rows, two renderings, and the summary
//! against the targets of the issue that asked for the benchmarks.

use super::{Disruption, Report, Throughput};

/// Largest acceptable operator overhead of an endpoint rotation.
const OVERHEAD_TARGET_S: f64 = 1.0;
/// Create + connect of N stores within this factor of the quota minimum.
const THROUGHPUT_TARGET_RATIO: f64 = 1.10;

/// Rows under a header, rendered as Markdown or aligned text.
pub(super) struct Table {
    pub(super) head: Vec<&'static str>,
    pub(super) rows: Vec<Vec<String>>,
}

impl Table {
    pub(super) fn markdown(&self) -> String {
        let mut out = format!("| {} |\n", self.head.join(" | "));
        out.push_str(&format!("|{}\n", "---|".repeat(self.head.len())));
        for row in &self.rows {
            out.push_str(&format!("| {} |\n", row.join(" | ")));
        }
        out
    }

    pub(super) fn text(&self) -> String {
        let widths: Vec<usize> = (0..self.head.len())
            .map(|i| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(i))
                    .map(|c| c.chars().count())
                    .chain(std::iter::once(self.head[i].chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: Vec<&str>| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            format!("{}\n", padded.join("  ").trim_end())
        };
        let mut out = line(self.head.clone());
        for row in &self.rows {
            out.push_str(&line(row.iter().map(String::as_str).collect()));
        }
        out
    }
}

fn secs(s: f64) -> String {
    format!("{s:.2} s")
}

fn is_run_defaults(d: &Disruption) -> bool {
    d.config.contains("`run`")
}

fn disruption_table(rows: &[Disruption]) -> Table {
    Table {
        head: vec![
            "configuration",
            "poll",
            "describe cache TTL",
            "runs",
            "emulated",
            "window",
            "overhead",
            "share of window",
            "overhead min..max",
            "DISCONNECTED → Connect call",
        ],
        rows: rows
            .iter()
            .map(|d| {
                vec![
                    d.config.clone(),
                    format!("{} ms", d.poll_interval_ms),
                    format!("{} ms", d.describe_cache_ttl_ms),
                    d.runs.to_string(),
                    secs(d.emulated_transitions_s),
                    secs(d.window_s),
                    secs(d.overhead_s),
                    format!("{:.0}%", d.overhead_share * 100.0),
                    format!("{:.2}..{:.2} s", d.overhead_min_s, d.overhead_max_s),
                    secs(d.disconnected_to_connect_call_s),
                ]
            })
            .collect(),
    }
}

fn throughput_table(rows: &[Throughput]) -> Table {
    Table {
        head: vec![
            "configuration",
            "stores",
            "KMS quota",
            "elapsed",
            "minimum (quota)",
            "ratio",
            "minimum at the client rate",
            "throttled",
            "engine retries",
            "failed",
            "Describe calls per store",
            "calls by operation",
        ],
        rows: rows
            .iter()
            .map(|t| {
                let calls: Vec<String> = t
                    .calls
                    .iter()
                    .map(|(op, n)| {
                        format!(
                            "{}: {n}",
                            op.trim_end_matches("CustomKeyStores")
                                .trim_end_matches("CustomKeyStore")
                        )
                    })
                    .collect();
                vec![
                    t.config.clone(),
                    t.stores.to_string(),
                    format!("{}/s", t.kms_quota),
                    format!("{:.1} s", t.elapsed_s),
                    format!("{:.1} s", t.quota_minimum_s),
                    format!("{:.2}", t.ratio),
                    format!("{:.1} s", t.client_minimum_s),
                    t.throttled_by_kms.to_string(),
                    t.throttles_seen_by_engine.to_string(),
                    t.failed.to_string(),
                    format!("{:.2}", t.describe_per_store),
                    calls.join(", "),
                ]
            })
            .collect(),
    }
}

impl Report {
    fn steady_table(&self) -> Table {
        Table {
            head: vec![
                "configuration",
                "stores",
                "DescribeCustomKeyStores",
                "other KMS calls",
                "in sync",
            ],
            rows: self
                .steady_state
                .iter()
                .map(|s| {
                    vec![
                        s.config.clone(),
                        s.stores.to_string(),
                        s.describe_calls.to_string(),
                        s.other_kms_calls.to_string(),
                        s.in_sync.to_string(),
                    ]
                })
                .collect(),
        }
    }

    fn cost_table(&self) -> Option<Table> {
        let c = self.cost.as_ref()?;
        Some(Table {
            head: vec![
                "stores",
                "operator CPU",
                "emulator CPU",
                "wall",
                "operator peak RSS",
                "operator RSS before → after",
                "emulator peak RSS",
            ],
            rows: vec![vec![
                c.stores.to_string(),
                secs(c.operator_cpu_s),
                secs(c.emulator_cpu_s),
                format!("{:.1} s", c.wall_s),
                format!("{:.1} MiB", c.peak_rss_mib),
                format!("{:.1} → {:.1} MiB", c.rss_before_mib, c.rss_after_mib),
                format!("{:.1} MiB", c.emulator_peak_rss_mib),
            ]],
        })
    }

    /// The targets, and whether these figures meet them.
    fn verdicts(&self) -> Vec<String> {
        let mut out = Vec::new();
        let met = |ok: bool| if ok { "**met**" } else { "**not met**" };
        if let Some(d) = self.disruption.iter().find(|d| is_run_defaults(d)) {
            out.push(format!(
                "Rotation overhead under {OVERHEAD_TARGET_S} s with `xks-operator run`'s defaults (poll {} ms, describe cache TTL {} s): {} — {:.2} s, {:.0}% of the {:.2} s window.",
                d.poll_interval_ms,
                d.describe_cache_ttl_ms / 1000,
                met(d.overhead_s < OVERHEAD_TARGET_S),
                d.overhead_s,
                d.overhead_share * 100.0,
                d.window_s
            ));
        }
        if let Some(d) = self
            .disruption
            .iter()
            .filter(|d| !is_run_defaults(d))
            .min_by(|a, b| a.overhead_s.total_cmp(&b.overhead_s))
        {
            out.push(format!(
                "Best tuned rotation overhead: {:.2} s ({}, poll {} ms).",
                d.overhead_s, d.config, d.poll_interval_ms
            ));
        }
        if let Some(n) = self.throughput.iter().map(|t| t.stores).max() {
            for t in self
                .throughput
                .iter()
                .filter(|t| t.stores == n && t.config.starts_with("shared"))
            {
                let within = t.ratio <= THROUGHPUT_TARGET_RATIO;
                out.push(format!(
                    "{n} stores created and connected ({}): {:.2} × the quota minimum, within {:.0}%: {}; {} ThrottlingExceptions (absorbed by client-side limiting: {}); {} failed.",
                    t.config,
                    t.ratio,
                    (THROUGHPUT_TARGET_RATIO - 1.0) * 100.0,
                    met(within),
                    t.throttled_by_kms,
                    met(t.throttled_by_kms == 0),
                    t.failed
                ));
            }
        }
        if !self.shared_quota.is_empty() {
            let parts: Vec<String> = self
                .shared_quota
                .iter()
                .map(|t| {
                    format!(
                        "{}: {} throttled, {} reached the engine, {:.2} × its minimum",
                        if t.config.contains("standard retry") {
                            "SDK standard retry"
                        } else if t.config.contains("adaptive retry") {
                            "SDK adaptive retry"
                        } else {
                            "each call once, the engine retries (`run`)"
                        },
                        t.throttled_by_kms,
                        t.throttles_seen_by_engine,
                        t.ratio
                    )
                })
                .collect();
            out.push(format!(
                "Quota shared with other callers (KMS leaves {}/s of 5/s): {}.",
                self.shared_quota[0].kms_quota,
                parts.join("; ")
            ));
        }
        for s in self
            .steady_state
            .iter()
            .filter(|s| !s.config.starts_with("no "))
        {
            out.push(format!(
                "Drift round over {} stores: {} DescribeCustomKeyStores call(s), {} other KMS calls; one paginated listing per account and Region: {}.",
                s.stores,
                s.describe_calls,
                s.other_kms_calls,
                met(s.describe_calls == 1 && s.other_kms_calls == 0)
            ));
        }
        if let Some(a) = &self.accounts {
            out.push(format!(
                "Drift round over 3 accounts × 2 Regions ({} stores each): one listing per account and Region: {}; while KMS throttles every call of one account, the others' round took {:.2} s (without: {:.2} s).",
                a.stores_per_scope,
                met(a.one_listing_each()),
                a.others_round_with_throttling_s,
                a.others_round_s
            ));
        }
        if let Some(c) = &self.cost {
            out.push(format!(
                "Operator cost for {} resources: {:.2} s CPU, peak RSS {:.1} MiB (the emulator runs in a process of its own).",
                c.stores, c.operator_cpu_s, c.peak_rss_mib
            ));
        }
        if let Some(s) = &self.soak {
            let worst = s
                .down_after_episodes
                .iter()
                .map(|e| e.down_after_s)
                .fold(0.0, f64::max);
            out.push(format!(
                "Soak ({:.0} s, {} stores, {} crashes, {} fault episodes): converged by itself (no reconcile requested{}), a store declared Connected down at most {:.1} s after a fault episode ended ({:.1} s after the last; target 30 s), {} stall(s), each needing a person; no second store, nothing left disconnected, credential kept, no secret in status: {}{}.",
                s.duration_s,
                s.stores,
                s.crashes,
                s.down_after_episodes.len(),
                match s.person_requests {
                    0 => String::new(),
                    n => format!(
                        " but the person's {n} after putting a late secret on the proxies"
                    ),
                },
                worst,
                s.down_after_last_episode_s,
                s.stalls.values().sum::<u64>(),
                met(s.violations.is_empty()),
                if s.violations.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", s.violations.join("; "))
                }
            ));
        }
        out
    }

    pub fn text(&self) -> String {
        let m = &self.machine;
        let mut out = format!(
            "machine: {} CPUs, {}, {}, {} build\n\n",
            m.cpus, m.cpu_model, m.memory, m.build
        );
        if !self.disruption.is_empty() {
            out.push_str("DISRUPTION WINDOW (Disconnect call -> CONNECTED observed, median)\n");
            out.push_str(&disruption_table(&self.disruption).text());
        }
        if !self.throughput.is_empty() {
            out.push_str("\nTHROUGHPUT (create + connect N stores under the KMS quota)\n");
            out.push_str(&throughput_table(&self.throughput).text());
        }
        if !self.shared_quota.is_empty() {
            out.push_str("\nSHARED QUOTA (other callers take part of it)\n");
            out.push_str(&throughput_table(&self.shared_quota).text());
        }
        if !self.steady_state.is_empty() {
            out.push_str("\nSTEADY STATE (KMS calls of one drift check of every store)\n");
            out.push_str(&self.steady_table().text());
        }
        if let Some(a) = &self.accounts {
            out.push_str("\nACCOUNTS (3 accounts × 2 Regions, one drift round)\n");
            out.push_str(&a.table().text());
            out.push_str(&format!("{}\n", a.isolation()));
        }
        if let Some(cost) = self.cost_table() {
            out.push_str("\nCOST (create + connect + two drift rounds)\n");
            out.push_str(&cost.text());
        }
        if let Some(soak) = &self.soak {
            out.push('\n');
            out.push_str(&soak.text());
        }
        out.push_str("\nSUMMARY\n");
        for v in self.verdicts() {
            out.push_str(&format!("- {}\n", v.replace("**", "")));
        }
        out
    }

    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut out = String::from("# Benchmarks\n\n");
        out.push_str(
            "Generated by `ci/bench.sh` (a release build, then `xks-operator bench --markdown --soak 3m`, then the end-to-end suite for the API-server section); do not edit by hand.\n\n",
        );
        out.push_str(&format!(
            "Machine: {} CPUs ({}), {} memory, Linux {}, {} build.\n\nCommand: `{}`\n\n",
            m.cpus, m.cpu_model, m.memory, m.kernel, m.build, self.command
        ));
        out.push_str("## Summary against the targets\n\n");
        for v in self.verdicts() {
            out.push_str(&format!("- {v}\n"));
        }
        if !self.disruption.is_empty() {
            out.push_str("\n## Disruption window of an endpoint rotation\n\n");
            out.push_str(&format!(
                "From the DisconnectCustomKeyStore call to the status write that records CONNECTED, against the emulator's DISCONNECTING + CONNECTING time; overhead = window − emulated time (median, min and max over the runs). KMS quota (5/s per operation) enforced by the emulator, client-side limit {}/s.\n\n",
                self.client_rate
            ));
            out.push_str(&disruption_table(&self.disruption).markdown());
            out.push_str(&format!(
                "\nEach run shifts the emulated transition time within one poll interval, so the runs sample where the end of a transition falls between two poll ticks, as real transitions of varying length do: each of the two waits overshoots by up to one poll interval (min..max), half of one on the median. Add the KMS calls on the critical path, each waiting up to {:.2} s for its turn at the {}/s client limit (the last column: DISCONNECTED observed → Connect call, update and health check included).\n",
                1.0 / self.client_rate.max(f64::MIN_POSITIVE),
                self.client_rate
            ));
        }
        if !self.throughput.is_empty() {
            out.push_str("\n## Create and connect N stores under the KMS quota\n\n");
            out.push_str(&format!(
                "The emulator enforces 5 requests/s per operation (token bucket, burst 5) on every operation. {} reconciles at a time, each calling `Engine::reconcile` and sleeping its requeue delays outside the limit (as the controller does), with `run`'s poll interval and its KMS client (each call sent once: a throttle goes back to the engine, which retries it with backoff). Minimum = (N − 5) / 5 s + the emulated CONNECTING time: N creates and N connects each need N/5 s of quota and overlap. `throttled` counts ThrottlingExceptions the emulator answered (SDK retries included); `engine retries` those that reached the engine.\n\n",
                self.concurrency
            ));
            out.push_str(&throughput_table(&self.throughput).markdown());
        }
        if !self.shared_quota.is_empty() {
            out.push_str("\n## KMS quota shared with other callers\n\n");
            out.push_str(&format!(
                "Other callers in the account (a console, a pipeline) use part of each operation's 5/s: the emulator lets {}/s through while the operator's client still spaces its calls for 5/s. The SDK's standard retry mode retries each throttle inside the call; its adaptive mode also slows the client down after one; `run` sends each call once and lets the engine's retry policy requeue the resource (a retry inside the call holds a reconcile worker: see Several accounts below).\n\n",
                self.shared_quota[0].kms_quota
            ));
            out.push_str(&throughput_table(&self.shared_quota).markdown());
        }
        if !self.steady_state.is_empty() {
            out.push_str("\n## Steady state: KMS calls of one drift check of every store\n\n");
            out.push_str("Every store reconciled once (in sync), counted by the emulator (quota lifted: only the count matters).\n\n");
            out.push_str(&self.steady_table().markdown());
        }
        if let Some(a) = &self.accounts {
            out.push_str("\n## Several accounts and Regions from one operator\n\n");
            out.push_str(&format!(
                "{} stores in each of 3 accounts × 2 Regions, the two other accounts reached by assuming a role through the emulator's STS; one engine per role and Region as `run` builds them (each with its own describe cache and 5/s client limit, each KMS call sent once), {} reconciles at a time shared by all. After create + connect, one drift round with fresh caches, counted per account and Region by the emulator:\n\n",
                a.stores_per_scope, self.concurrency
            ));
            out.push_str(&a.table().markdown());
            out.push_str(&format!("\n{}\n", a.isolation()));
        }
        if let (Some(c), Some(table)) = (&self.cost, self.cost_table()) {
            out.push_str(&format!(
                "\n## Operator cost for {} resources\n\nCreate + connect of {} stores, then two drift rounds.\n\n",
                c.stores, c.stores
            ));
            out.push_str(&table.markdown());
            out.push_str(&format!("\nHow: {}\n", c.how));
        }
        if let Some(soak) = &self.soak {
            out.push('\n');
            out.push_str(&soak.markdown(&self.command));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        Table {
            head: vec!["config", "n"],
            rows: vec![
                vec!["a".into(), "1000".into()],
                vec!["longer name".into(), "7".into()],
            ],
        }
    }

    #[test]
    fn markdown_tables_have_a_separator_row_and_one_line_per_row() {
        let md = table().markdown();
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(
            lines,
            [
                "| config | n |",
                "|---|---|",
                "| a | 1000 |",
                "| longer name | 7 |"
            ]
        );
    }

    #[test]
    fn text_tables_align_columns() {
        let text = table().text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "config       n");
        assert_eq!(lines[1], "a            1000");
        assert_eq!(lines[2], "longer name  7");
    }
}
