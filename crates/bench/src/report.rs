//! The summary: figures, targets, and their rendering as a table or JSON.

use serde::Serialize;

use crate::phases::{IngestResult, ListingsResult, SweepResult};
use crate::sampler::PhaseUsage;

#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    pub engines: usize,
    pub hung: usize,
    pub health_check_interval_s: f64,
    pub health_check_timeout_s: f64,
    pub collect_interval_s: f64,
    pub sweep_duration_s: f64,
    pub sweep_poll_ms: u64,
    pub ingest_seconds: f64,
    pub extra_orchestrator_env: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            cpu_model,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    /// `<=` or `>=`.
    pub comparison: &'static str,
    pub limit: f64,
    pub measured: f64,
    pub unit: &'static str,
    pub pass: bool,
}

impl Target {
    pub fn at_most(name: &str, limit: f64, measured: f64, unit: &'static str) -> Target {
        Target {
            name: name.into(),
            comparison: "<=",
            limit,
            measured,
            unit,
            pass: measured <= limit,
        }
    }

    pub fn at_least(name: &str, limit: f64, measured: f64, unit: &'static str) -> Target {
        Target {
            name: name.into(),
            comparison: ">=",
            limit,
            measured,
            unit,
            pass: measured >= limit,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub config: RunConfig,
    pub machine: Machine,
    pub register_seconds: f64,
    pub warm_up_seconds: f64,
    pub sweeps: SweepResult,
    pub ingest: IngestResult,
    /// Max age in one `GET /engines` right after the ingest phase.
    pub max_age_after_ingest_s: Option<f64>,
    /// VmHWM of the orchestrator at the end, MiB.
    pub peak_rss_mb: f64,
    /// Highest VmRSS sampled (every 200 ms), MiB.
    pub max_sampled_rss_mb: f64,
    pub phases: Vec<PhaseUsage>,
    /// `/proc/loadavg` when the orchestrator had started.
    pub load_average_at_start: Option<String>,
    /// WARN/ERROR lines the orchestrator logged.
    pub orchestrator_warnings: usize,
    pub orchestrator_warning_samples: Vec<String>,
    pub targets: Vec<Target>,
    pub all_pass: bool,
    /// `GET /engines` gzip-compressed and `?health=unhealthy`.
    pub listings: ListingsResult,
    /// Probes the orchestrator's health sweep allowed in flight
    /// (`orch_health_sweep_concurrency`).
    pub sweep_concurrency: Option<u64>,
    pub total_seconds: f64,
}

fn fmt_value(value: f64, unit: &str) -> String {
    match unit {
        "events/s" => format!("{value:.0} {unit}"),
        "ms" => format!("{value:.2} {unit}"),
        "s" => format!("{value:.2} {unit}"),
        _ => format!("{value:.1} {unit}"),
    }
}

pub fn print_table(s: &Summary) {
    let c = &s.config;
    println!();
    println!(
        "=== orchestrator benchmark: {} engines ({} hung), health interval {}s / timeout {}s, {} CPUs ({}) ===",
        c.engines,
        c.hung,
        c.health_check_interval_s,
        c.health_check_timeout_s,
        s.machine.cpus,
        s.machine.cpu_model
    );
    if !c.extra_orchestrator_env.is_empty() {
        println!(
            "extra orchestrator environment: {}",
            c.extra_orchestrator_env.join(" ")
        );
    }
    println!();
    println!(
        "{:<42} {:>14} {:>14}  result",
        "target", "limit", "measured"
    );
    println!("{}", "-".repeat(80));
    for t in &s.targets {
        println!(
            "{:<42} {:>14} {:>14}  {}",
            t.name,
            format!("{} {}", t.comparison, fmt_value(t.limit, t.unit)),
            fmt_value(t.measured, t.unit),
            if t.pass { "PASS" } else { "FAIL" }
        );
    }
    println!();

    let w = &s.sweeps;
    println!(
        "sweeps   {:.1}s: {} GET /engines ({} errors), body {:.0} KiB; latency ms: mean {:.2}, p50 {:.2}, p90 {:.2}, p99 {:.2}, max {:.2}",
        w.seconds,
        w.requests,
        w.errors,
        w.mean_body_kb,
        w.latency.mean_ms,
        w.latency.p50_ms,
        w.latency.p90_ms,
        w.latency.p99_ms,
        w.latency.max_ms
    );
    println!(
        "         max age: {:.2}s (healthy engines {:.2}s, hung engines {:.2}s); answers with an unexpected status: {} ({} engine-answers), never checked: {}",
        w.max_age_s,
        w.max_age_healthy_s,
        w.max_age_hung_s,
        w.answers_with_wrong_status,
        w.wrong_statuses,
        w.never_checked
    );
    println!(
        "         while the health monitor records checks (newest check < 150 ms old): {} answers, p50 {:.2} ms, p99 {:.2} ms; otherwise: {} answers, p50 {:.2} ms, p99 {:.2} ms",
        w.during_check_bursts.count,
        w.during_check_bursts.p50_ms,
        w.during_check_bursts.p99_ms,
        w.between_check_bursts.count,
        w.between_check_bursts.p50_ms,
        w.between_check_bursts.p99_ms
    );
    let slowest: Vec<String> = w
        .slowest
        .iter()
        .map(|a| {
            format!(
                "{:.2} ms at {:.1}s (newest check {:.3}s old)",
                a.latency_ms, a.at_s, a.newest_check_age_s
            )
        })
        .collect();
    println!("         slowest: {}", slowest.join(", "));
    for e in &w.first_errors {
        println!("         error: {e}");
    }
    let l = &s.listings;
    println!(
        "listings gzip: p50 {:.2} ms, p99 {:.2} ms, body {:.0} KiB; ?health=unhealthy: p50 {:.2} ms, p99 {:.2} ms, {} engines, body {:.0} KiB; {} errors",
        l.gzip.p50_ms,
        l.gzip.p99_ms,
        l.gzip_body_kb,
        l.unhealthy.p50_ms,
        l.unhealthy.p99_ms,
        l.unhealthy_engines,
        l.unhealthy_body_kb,
        l.errors
    );
    for e in &l.first_errors {
        println!("         error: {e}");
    }
    if let Some(lanes) = s.sweep_concurrency {
        println!("         health sweep concurrency (orch_health_sweep_concurrency): {lanes}");
    }
    let i = &s.ingest;
    println!(
        "ingest   {:.1}s, {} connections: {} stream_started + {} stream_ended ({} left open); {} ok, {} errors ({} without answer) -> {:.0} events/s",
        i.seconds,
        i.senders,
        i.started_sent,
        i.ended_sent,
        i.started_sent - i.ended_sent,
        i.ok,
        i.errors,
        i.transport_errors,
        i.events_per_s
    );
    println!(
        "         latency ms: mean {:.3}, p50 {:.3}, p90 {:.3}, p99 {:.3}, max {:.2}",
        i.latency.mean_ms, i.latency.p50_ms, i.latency.p90_ms, i.latency.p99_ms, i.latency.max_ms
    );
    for e in &i.first_errors {
        println!("         error: {e}");
    }
    if let Some(age) = s.max_age_after_ingest_s {
        println!("after ingest: max age {age:.2}s");
    }
    println!(
        "memory   peak RSS (VmHWM) {:.1} MiB; highest sampled VmRSS {:.1} MiB",
        s.peak_rss_mb, s.max_sampled_rss_mb
    );
    println!();
    println!(
        "CPU in % of one core (this machine has {} cores):",
        s.machine.cpus
    );
    println!(
        "{:<10} {:>8} {:>10} {:>14} {:>8} {:>8} {:>8}",
        "phase", "seconds", "orch CPU", "orch max RSS", "sims", "bench", "other"
    );
    for p in &s.phases {
        println!(
            "{:<10} {:>8.1} {:>10.1} {:>10.1} MiB {:>8.1} {:>8.1} {:>8.1}",
            p.phase,
            p.seconds,
            p.orchestrator_cpu_percent,
            p.orchestrator_max_rss_mb,
            p.sims_cpu_percent,
            p.bench_cpu_percent,
            p.other_cpu_percent
        );
    }
    if let Some(load) = &s.load_average_at_start {
        println!("load average when the measurement started: {load}");
    }
    let busiest_other = s
        .phases
        .iter()
        .filter(|p| p.seconds >= 1.0)
        .map(|p| p.other_cpu_percent)
        .fold(0.0, f64::max);
    if busiest_other > 20.0 {
        println!(
            "warning: other processes used up to {busiest_other:.0}% of a core during the run; \
             latency and throughput figures are pessimistic"
        );
    }
    println!();
    println!(
        "register {:.1}s, warm-up {:.1}s, whole run {:.1}s; orchestrator WARN/ERROR lines: {}",
        s.register_seconds, s.warm_up_seconds, s.total_seconds, s.orchestrator_warnings
    );
    for line in &s.orchestrator_warning_samples {
        println!("  {line}");
    }
    println!(
        "{}",
        if s.all_pass {
            "ALL TARGETS PASS"
        } else {
            "SOME TARGETS FAIL"
        }
    );
}

/// How the costs grow with the pool: one line per size of a `--scale` run.
pub fn print_scale(runs: &[Summary]) {
    let Some(first) = runs.first() else { return };
    println!();
    println!(
        "=== scale: health interval {}s / timeout {}s, {} CPUs ({}) ===",
        first.config.health_check_interval_s,
        first.config.health_check_timeout_s,
        first.machine.cpus,
        first.machine.cpu_model
    );
    println!(
        "{:>7} {:>5} {:>5} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>7} {:>7} {:>7} {:>7} {:>7}  targets",
        "engines", "hung", "lanes", "maxage", "p50", "p99", "body", "gz p50", "gz KiB",
        "unh p50", "ingest", "RSS", "CPU sw", "CPU in", "other"
    );
    println!(
        "{:>7} {:>5} {:>5} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>7} {:>7} {:>7} {:>7} {:>7}",
        "", "", "", "s", "ms", "ms", "KiB", "ms", "", "ms", "ev/s", "MiB", "%", "%", "%"
    );
    for s in runs {
        let cpu = |phase: &str| {
            s.phases
                .iter()
                .find(|p| p.phase == phase)
                .map_or(0.0, |p| p.orchestrator_cpu_percent)
        };
        let other = s
            .phases
            .iter()
            .filter(|p| p.seconds >= 1.0)
            .map(|p| p.other_cpu_percent)
            .fold(0.0, f64::max);
        let failed: Vec<&str> = s
            .targets
            .iter()
            .filter(|t| !t.pass)
            .map(|t| t.name.as_str())
            .collect();
        println!(
            "{:>7} {:>5} {:>5} {:>7.2} {:>7.2} {:>7.2} {:>7.0} {:>7.2} {:>7.0} {:>8.2} {:>7.0} {:>7.1} {:>7.1} {:>7.1} {:>7.0}  {}",
            s.config.engines,
            s.config.hung,
            s.sweep_concurrency.map_or("?".into(), |c| c.to_string()),
            s.sweeps.max_age_s,
            s.sweeps.latency.p50_ms,
            s.sweeps.latency.p99_ms,
            s.sweeps.mean_body_kb,
            s.listings.gzip.p50_ms,
            s.listings.gzip_body_kb,
            s.listings.unhealthy.p50_ms,
            s.ingest.events_per_s,
            s.peak_rss_mb,
            cpu("sweeps"),
            cpu("ingest"),
            other,
            if failed.is_empty() {
                "all pass".to_owned()
            } else {
                format!("FAIL: {}", failed.join(", "))
            }
        );
    }
    println!(
        "lanes = orch_health_sweep_concurrency; maxage = max age of last_health_check; p50/p99 = GET /engines; \
         gz = the same with Accept-Encoding: gzip; unh = ?health=unhealthy; RSS = peak (VmHWM); \
         CPU sw / in = orchestrator in the sweeps / ingest phase, % of one core; other = busiest \
         phase's CPU used by other processes"
    );
}
