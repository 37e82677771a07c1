//! Resource use from `/proc`: resident memory (`VmRSS`, `VmHWM` in
//! `/proc/<pid>/status`) and CPU time (`utime + stime` in `/proc/<pid>/stat`).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

/// Clock ticks per second of the CPU times in `/proc/<pid>/stat`
/// (`getconf CLK_TCK`; 100 on Linux x86-64 and arm64).
pub const CLK_TCK: f64 = 100.0;

/// How often the background sampler reads `/proc`.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// One reading of one process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcReading {
    pub rss_kb: u64,
    pub hwm_kb: u64,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
}

pub fn read_proc(pid: &str) -> Option<ProcReading> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let rss_kb = field("VmRSS:")?;
    let hwm_kb = field("VmHWM:")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(ProcReading {
        rss_kb,
        hwm_kb,
        cpu_ticks: utime + stime,
    })
}

/// Whole-machine CPU time from the first line of `/proc/stat`, in clock ticks:
/// (busy, total), busy being everything but idle and iowait.
pub fn read_system() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest times are inside user).
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// The processes being watched.
#[derive(Clone)]
pub struct Watched {
    pub orchestrator: u32,
    pub sims: Vec<u32>,
}

/// Readings of everything at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    pub orch: Option<ProcReading>,
    /// CPU ticks of all emulator processes together.
    pub sims_ticks: u64,
    /// CPU ticks of this benchmark process.
    pub bench_ticks: u64,
    /// Busy CPU ticks of the whole machine (all cores).
    pub system_busy_ticks: u64,
}

fn take_sample(watched: &Watched) -> Sample {
    let sims_ticks = watched
        .sims
        .iter()
        .filter_map(|pid| read_proc(&pid.to_string()))
        .map(|r| r.cpu_ticks)
        .sum();
    Sample {
        at: Instant::now(),
        orch: read_proc(&watched.orchestrator.to_string()),
        sims_ticks,
        bench_ticks: read_proc("self").map(|r| r.cpu_ticks).unwrap_or(0),
        system_busy_ticks: read_system().map(|(busy, _)| busy).unwrap_or(0),
    }
}

/// Resource use over one phase of the benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseUsage {
    pub phase: String,
    pub seconds: f64,
    /// Orchestrator CPU, percent of one core, averaged over the phase.
    pub orchestrator_cpu_percent: f64,
    /// Highest orchestrator VmRSS sampled in the phase, MiB.
    pub orchestrator_max_rss_mb: f64,
    /// All emulator processes together, percent of one core.
    pub sims_cpu_percent: f64,
    /// This benchmark process (the load generator), percent of one core.
    pub bench_cpu_percent: f64,
    /// Everything else on the machine (other builds, tests...), percent of one
    /// core: all busy time minus the three above. Should be near 0 for a clean
    /// measurement.
    pub other_cpu_percent: f64,
}

pub fn kb_to_mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// Samples every [`SAMPLE_EVERY`] in the background and marks phases.
pub struct Sampler {
    watched: Watched,
    samples: Arc<Mutex<Vec<Sample>>>,
    task: JoinHandle<()>,
    phases: Vec<PhaseUsage>,
    current: Option<(String, Sample)>,
}

impl Sampler {
    pub fn start(watched: Watched) -> Sampler {
        let samples = Arc::new(Mutex::new(vec![take_sample(&watched)]));
        let task = {
            let watched = watched.clone();
            let samples = samples.clone();
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(SAMPLE_EVERY);
                ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    let sample = take_sample(&watched);
                    samples.lock().push(sample);
                }
            })
        };
        Sampler {
            watched,
            samples,
            task,
            phases: Vec::new(),
            current: None,
        }
    }

    /// Ends the running phase (if any) and starts `name`.
    pub fn phase(&mut self, name: &str) {
        self.end_phase();
        let start = take_sample(&self.watched);
        self.samples.lock().push(start);
        self.current = Some((name.to_owned(), start));
    }

    /// Ends the running phase and records its usage.
    pub fn end_phase(&mut self) {
        let Some((name, start)) = self.current.take() else {
            return;
        };
        let end = take_sample(&self.watched);
        self.samples.lock().push(end);
        let seconds = end.at.duration_since(start.at).as_secs_f64().max(1e-9);
        let percent = |ticks: u64| ticks as f64 / CLK_TCK / seconds * 100.0;
        let orch_ticks = match (start.orch, end.orch) {
            (Some(a), Some(b)) => b.cpu_ticks.saturating_sub(a.cpu_ticks),
            _ => 0,
        };
        let max_rss_kb = self
            .samples
            .lock()
            .iter()
            .filter(|s| s.at >= start.at && s.at <= end.at)
            .filter_map(|s| s.orch.map(|o| o.rss_kb))
            .max()
            .unwrap_or(0);
        let sims_ticks = end.sims_ticks.saturating_sub(start.sims_ticks);
        let bench_ticks = end.bench_ticks.saturating_sub(start.bench_ticks);
        let system_ticks = end
            .system_busy_ticks
            .saturating_sub(start.system_busy_ticks);
        let other_ticks = system_ticks.saturating_sub(orch_ticks + sims_ticks + bench_ticks);
        self.phases.push(PhaseUsage {
            phase: name,
            seconds,
            orchestrator_cpu_percent: percent(orch_ticks),
            orchestrator_max_rss_mb: kb_to_mb(max_rss_kb),
            sims_cpu_percent: percent(sims_ticks),
            bench_cpu_percent: percent(bench_ticks),
            other_cpu_percent: percent(other_ticks),
        });
    }

    /// The usage of the last phase that ended.
    pub fn last_phase(&self) -> Option<&PhaseUsage> {
        self.phases.last()
    }

    /// The orchestrator's reading now (for its final VmHWM).
    pub fn orchestrator_now(&self) -> Option<ProcReading> {
        read_proc(&self.watched.orchestrator.to_string())
    }

    /// Highest VmRSS any sample saw.
    pub fn max_rss_kb(&self) -> u64 {
        self.samples
            .lock()
            .iter()
            .filter_map(|s| s.orch.map(|o| o.rss_kb))
            .max()
            .unwrap_or(0)
    }

    pub fn finish(mut self) -> Vec<PhaseUsage> {
        self.end_phase();
        self.task.abort();
        self.phases
    }
}
