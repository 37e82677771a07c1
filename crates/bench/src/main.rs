//! `bench`: runs the release orchestrator against many emulated engines (some
//! of them hung) and measures what operators care about: how fresh the health
//! verdicts are, how fast `GET /engines` answers, how much memory the
//! orchestrator holds and how many events per second it takes in.
//!
//! ```sh
//! cargo run --release -p bench                      # 1000 engines, 100 hung
//! cargo run --release -p bench -- --engines 200 --hung 20 --duration 10 --ingest-seconds 5
//! cargo run --release -p bench -- --json            # summary as JSON on stdout
//! cargo run --release -p bench -- --load            # 200 clients, mixed routes, 60 s
//! cargo run --release -p bench -- --soak-seconds 600  # the same mix for 10 min, RSS series
//! cargo run --release -p bench -- --proxy           # the built-in stream proxy (fan-out, failovers...)
//! cargo run --release -p bench -- --retention       # a year of traffic, then the database clean-up
//! cargo run --release -p bench -- --hls             # 200 HLS viewers of one stream
//! cargo run --release -p bench -- --panel           # one dashboard's event stream, bytes/s
//! ```
//!
//! Progress goes to stderr, the summary to stdout. Exits 0 when the run
//! completed (whether or not every target passed), non-zero when the harness
//! itself failed. See docs/PERFORMANCE.md.

mod hls;
mod load;
mod panel;
mod phases;
mod procs;
mod proxy;
mod report;
mod retention;
mod sampler;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use tokio::time::Instant;

use phases::{Expect, Expectations};
use procs::{Orch, OrchSettings, Sim};
use report::{Machine, RunConfig, Summary, Target};
use sampler::{kb_to_mb, Sampler, Watched};

/// Targets up to [`LARGE_POOL`] engines.
const MAX_AGE_SLACK_S: f64 = 1.2;
const ENGINES_P99_MS: f64 = 10.0;
const PEAK_RSS_MB: f64 = 40.0;
const INGEST_EVENTS_PER_S: f64 = 3000.0;

/// Above this many engines the large-pool targets apply (issue 11: 5,000
/// engines, a tenth hung): max age <= interval + 1.5 s, `GET /engines` p99
/// <= 50 ms, peak RSS <= 128 MiB; ingest as above.
const LARGE_POOL: usize = 1000;
const LARGE_MAX_AGE_SLACK_S: f64 = 1.5;
const LARGE_ENGINES_P99_MS: f64 = 50.0;
const LARGE_PEAK_RSS_MB: f64 = 128.0;

/// The targets a run is held to.
struct Goals {
    max_age_slack_s: f64,
    engines_p99_ms: f64,
    peak_rss_mb: f64,
}

impl Goals {
    fn for_size(args: &Args) -> Goals {
        if args.engines > LARGE_POOL {
            Goals {
                max_age_slack_s: LARGE_MAX_AGE_SLACK_S,
                engines_p99_ms: LARGE_ENGINES_P99_MS,
                peak_rss_mb: LARGE_PEAK_RSS_MB,
            }
        } else {
            Goals {
                max_age_slack_s: MAX_AGE_SLACK_S,
                engines_p99_ms: ENGINES_P99_MS,
                peak_rss_mb: PEAK_RSS_MB,
            }
        }
    }
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "bench",
    about = "Benchmark the orchestrator against many emulated engines, some of them hung",
    after_help = "Targets: max age of last_health_check <= interval + 1.2 s, GET /engines p99 <= 10 ms, \
                  peak RSS <= 40 MiB, ingest >= 3000 events/s; above 1000 engines: max age <= interval \
                  + 1.5 s, p99 <= 50 ms, peak RSS <= 128 MiB. Exit status 0 = the run completed \
                  (read the PASS/FAIL column), non-zero = the harness failed."
)]
struct Args {
    /// Engines in total (healthy + hung).
    #[arg(long, default_value_t = 1000)]
    engines: usize,

    /// Of those, engines that accept connections and never answer.
    #[arg(long, default_value_t = 100)]
    hung: usize,

    /// Seconds of the `GET /engines` sweep phase.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,

    /// Seconds of the event ingest phase.
    #[arg(long, default_value_t = 10.0)]
    ingest_seconds: f64,

    /// Connections sending events at once in the ingest phase, one request
    /// at a time each (1 = the round trip of one event; figures before
    /// 2026-12-02 in docs/PERFORMANCE.md are 1).
    #[arg(long, default_value_t = 8)]
    ingest_senders: usize,

    /// HEALTH_CHECK_INTERVAL_S given to the orchestrator.
    #[arg(long, default_value_t = 2.0)]
    interval: f64,

    /// HEALTH_CHECK_TIMEOUT_S given to the orchestrator.
    #[arg(long, default_value_t = 1.0)]
    timeout: f64,

    /// COLLECT_INTERVAL_S given to the orchestrator.
    #[arg(long, default_value_t = 5.0)]
    collect_interval: f64,

    /// Milliseconds between two `GET /engines` in the sweep phase.
    #[arg(long, default_value_t = 100)]
    poll_ms: u64,

    /// `POST /engines` requests in flight at once while registering.
    #[arg(long, default_value_t = 32)]
    register_concurrency: usize,

    /// Seconds the warm-up may take before the run is abandoned.
    #[arg(long, default_value_t = 60.0)]
    warmup_timeout: f64,

    /// The orchestrator binary (default: target/release/acestream-orchestrator).
    #[arg(long, value_name = "PATH")]
    orchestrator: Option<PathBuf>,

    /// The engine emulator binary (default: target/release/acestream-engine-sim).
    #[arg(long, value_name = "PATH")]
    sim: Option<PathBuf>,

    /// Do not run `cargo build --release` for the default binaries first.
    #[arg(long)]
    no_build: bool,

    /// More environment for the orchestrator, KEY=VALUE (repeatable), e.g.
    /// `--orch-env HEALTH_CHECK_CONCURRENCY=512`.
    #[arg(long = "orch-env", value_name = "KEY=VALUE")]
    orch_env: Vec<String>,

    /// Print the summary as JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,

    /// Load mode instead of the default phases: after register and warm-up,
    /// `--clients` concurrent keep-alive clients loop over 40 % GET /engines,
    /// 20 % POST /engines/select, 20 % stream_started, 20 % stream_ended.
    #[arg(long)]
    load: bool,

    /// Seconds of the load mode.
    #[arg(long, default_value_t = 60.0)]
    load_seconds: f64,

    /// Soak: the load mode for this many seconds (overrides --load-seconds),
    /// with the check end RSS <= RSS at 60 s + --rss-tolerance.
    #[arg(long)]
    soak_seconds: Option<f64>,

    /// Concurrent clients in the load mode.
    #[arg(long, default_value_t = 200)]
    clients: usize,

    /// In the load mode, "RSS after warm-up" is the RSS this long into the load
    /// (with 200 clients and 1,000 engines RSS levels off after about 20 s).
    #[arg(long, default_value_t = 20.0)]
    load_warmup_seconds: f64,

    /// Allowed RSS growth (fraction) for the no-growth checks of the load mode.
    #[arg(long, default_value_t = 0.10)]
    rss_tolerance: f64,

    /// Scale mode: the default phases once per pool size (comma-separated,
    /// e.g. 100,500,1000,2500,5000), each with a fresh orchestrator and
    /// emulators and --hung-share of it hung, then a table of how the costs
    /// grow. --engines and --hung do not apply.
    #[arg(long, value_delimiter = ',')]
    scale: Option<Vec<usize>>,

    /// Scale mode: share of each pool that hangs.
    #[arg(long, default_value_t = 0.10)]
    hung_share: f64,

    /// Panel mode instead of the default phases: register --engines (--hung of
    /// them hung), then measure one dashboard's event stream (bytes/s while
    /// the pool is checked every --interval) and a dashboard polling
    /// `?since=` every 2 s, for --panel-seconds.
    #[arg(long)]
    panel: bool,

    /// Panel mode: seconds to measure after the snapshot.
    #[arg(long, default_value_t = 30.0)]
    panel_seconds: f64,

    /// Proxy mode instead of the default phases: the built-in stream proxy
    /// (`GET /ace/getstream`) with emulated engines serving real video: time to
    /// first byte, fan-out, crash and hang failovers, headroom, many sessions.
    /// --engines, --hung and the phase options do not apply.
    #[arg(long)]
    proxy: bool,

    /// HLS mode instead of the default phases: viewers of one stream through
    /// `GET /ace/manifest.m3u8`, each reloading its playlist and fetching
    /// every new segment like a player; orchestrator CPU and memory. Takes
    /// --proxy-bitrate, --proxy-size, --proxy-step-seconds (the measured
    /// window) and --json.
    #[arg(long)]
    hls: bool,

    /// HLS mode: viewers.
    #[arg(long, default_value_t = 200)]
    hls_viewers: usize,

    /// HLS mode: HLS_SEGMENT_S of the orchestrator.
    #[arg(long, default_value_t = 2.0)]
    hls_segment_s: f64,

    /// Proxy mode: what to run, comma-separated, of ttfb, fanout, crash, hang,
    /// headroom, sessions.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ttfb,fanout,crash,hang,headroom,sessions"
    )]
    proxy_parts: Vec<String>,

    /// Proxy mode: viewers of the one stream at each fan-out step.
    #[arg(long, value_delimiter = ',', default_value = "1,100,500,1000")]
    proxy_viewers: Vec<usize>,

    /// Proxy mode: seconds measured at each fan-out step (and in sessions).
    #[arg(long, default_value_t = 15.0)]
    proxy_step_seconds: f64,

    /// Proxy mode: video bitrate of the fan-out stream (ffmpeg units).
    #[arg(long, default_value = "8M")]
    proxy_bitrate: String,

    /// Proxy mode: picture size of the fan-out stream.
    #[arg(long, default_value = "1280x720")]
    proxy_size: String,

    /// Proxy mode: emulated engines for fan-out, joins and failovers (default:
    /// failovers + 2, since a session never returns to an engine it left).
    #[arg(long)]
    proxy_engines: Option<usize>,

    /// Proxy mode: viewers joining the running session, one at a time.
    #[arg(long, default_value_t = 50)]
    proxy_joins: usize,

    /// Proxy mode: forced failovers of each kind (crash, hang).
    #[arg(long, default_value_t = 20)]
    proxy_failovers: usize,

    /// Proxy mode: hang failovers with PROXY_HEADROOM_S=5.
    #[arg(long, default_value_t = 5)]
    proxy_headroom_failovers: usize,

    /// Proxy mode: contents played at once (one viewer each).
    #[arg(long, default_value_t = 150)]
    proxy_sessions: usize,

    /// Proxy mode: engines for the sessions (MAX_STREAMS_PER_ENGINE=2).
    #[arg(long, default_value_t = 75)]
    proxy_session_engines: usize,

    /// Retention mode instead of the default phases: --retention-sim-days of
    /// traffic written through the orchestrator's store with backdated times
    /// and the clean-up run every simulated hour, then the real binary started
    /// on the file while clients measure the API during its start-up clean-up.
    #[arg(long)]
    retention: bool,

    /// Retention mode: days of traffic simulated.
    #[arg(long, default_value_t = 365)]
    retention_sim_days: u32,

    /// Retention mode: streams a day.
    #[arg(long, default_value_t = 300.0)]
    retention_streams_per_day: f64,

    /// Retention mode: stat snapshots per stream (one per COLLECT_INTERVAL_S,
    /// 720 = one hour at 5 s, the STATS_HISTORY_MAX cap).
    #[arg(long, default_value_t = 720)]
    retention_snapshots: u32,

    /// Retention mode: STREAMS_RETENTION_DAYS.
    #[arg(long, default_value_t = 30)]
    retention_keep_days: u32,

    /// Retention mode: the last days simulated without a clean-up (the
    /// orchestrator was down, or the retention was just turned on): what the
    /// real binary's start-up clean-up removes while it is measured.
    #[arg(long, default_value_t = 7)]
    retention_backlog_days: u32,

    /// Retention mode: engines in the pool.
    #[arg(long, default_value_t = 20)]
    retention_engines: usize,

    /// Retention mode: concurrent API clients during the measurement.
    #[arg(long, default_value_t = 4)]
    retention_clients: usize,

    /// Retention mode: seconds measured after the start-up clean-up.
    #[arg(long, default_value_t = 10.0)]
    retention_after_seconds: f64,
}

impl Args {
    /// Seconds of load when the load (or soak) mode is on.
    fn load_mode_seconds(&self) -> Option<f64> {
        self.soak_seconds.or(if self.load {
            Some(self.load_seconds)
        } else {
            None
        })
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            result = run(args) => Some(result),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    // Dropping the run future above killed the children (kill_on_drop) and
    // removed the temporary directory.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        None => {
            eprintln!("bench: interrupted; child processes stopped and temporary files removed");
            ExitCode::from(130)
        }
        Some(Ok(())) => ExitCode::SUCCESS,
        Some(Err(e)) => {
            eprintln!("bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_env(pairs: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
            _ => bail!("--orch-env '{pair}' is not KEY=VALUE"),
        })
        .collect()
}

/// Raises the open-file soft limit to the hard one (the children inherit it;
/// the orchestrator and the emulator raise theirs too), then warns when it
/// still looks too small for the fleet.
fn check_fd_limit(engines: usize) {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("bench: warning: cannot raise the open-file limit: {e}");
    }
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return;
    };
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(soft) = soft {
        if soft < engines * 2 + 256 {
            eprintln!(
                "bench: warning: the open-file limit is {soft}; {engines} engines need about {} \
                 (raise it with `ulimit -n`)",
                engines * 2 + 256
            );
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let run_started = Instant::now();
    if args.engines == 0 {
        bail!("--engines must be 1 or more");
    }
    if args.hung >= args.engines {
        bail!(
            "--hung ({}) must be below --engines ({}): ingest needs a healthy engine",
            args.hung,
            args.engines
        );
    }
    if args.ingest_senders == 0 {
        bail!("--ingest-senders must be 1 or more");
    }
    for (name, value) in [
        ("--duration", args.duration),
        ("--ingest-seconds", args.ingest_seconds),
        ("--interval", args.interval),
        ("--timeout", args.timeout),
        ("--collect-interval", args.collect_interval),
        ("--warmup-timeout", args.warmup_timeout),
        ("--load-seconds", args.load_seconds),
        ("--soak-seconds", args.soak_seconds.unwrap_or(1.0)),
        ("--load-warmup-seconds", args.load_warmup_seconds),
    ] {
        if !value.is_finite() || value <= 0.0 {
            bail!("{name} must be a number of seconds above 0");
        }
    }
    let extra_env = parse_env(&args.orch_env)?;
    if args.hls {
        check_fd_limit(args.hls_viewers);
    } else if args.proxy {
        let viewers = args.proxy_viewers.iter().copied().max().unwrap_or(0);
        check_fd_limit(viewers.max(args.proxy_sessions));
    } else {
        let largest = args.scale.iter().flatten().copied().max().unwrap_or(0);
        check_fd_limit(args.engines.max(largest));
    }

    // 1. Binaries.
    let release = procs::release_dir();
    let orch_bin = args
        .orchestrator
        .clone()
        .unwrap_or_else(|| release.join("acestream-orchestrator"));
    let sim_bin = args
        .sim
        .clone()
        .unwrap_or_else(|| release.join("acestream-engine-sim"));
    let uses_defaults = args.orchestrator.is_none() || args.sim.is_none();
    if uses_defaults && !args.no_build {
        tokio::task::spawn_blocking(procs::build_release)
            .await
            .context("the build task failed")??;
    }
    procs::require_binary(&orch_bin, "the orchestrator binary")?;
    procs::require_binary(&sim_bin, "the engine emulator binary")?;
    if args.hls {
        if args.hls_viewers == 0 || !(1.0..=10.0).contains(&args.hls_segment_s) {
            bail!("--hls-viewers must be 1 or more and --hls-segment-s between 1 and 10");
        }
        if !args.proxy_step_seconds.is_finite() || args.proxy_step_seconds <= 0.0 {
            bail!("--proxy-step-seconds must be a number of seconds above 0");
        }
        return hls::run(hls::HlsBenchConfig {
            viewers: args.hls_viewers,
            seconds: Duration::from_secs_f64(args.proxy_step_seconds),
            segment_s: args.hls_segment_s,
            proxy: proxy::ProxyConfig {
                orch_bin,
                sim_bin,
                viewer_steps: Vec::new(),
                step: Duration::from_secs_f64(args.proxy_step_seconds),
                bitrate: args.proxy_bitrate.clone(),
                size: args.proxy_size.clone(),
                engines: None,
                joins: 0,
                failovers: 0,
                headroom_failovers: 0,
                sessions: 0,
                session_engines: 0,
                parts: Default::default(),
                extra_env,
                json: args.json,
            },
        })
        .await;
    }
    if args.proxy {
        return run_proxy(args, extra_env, orch_bin, sim_bin).await;
    }
    if args.retention {
        let summary = retention::run(retention::RetentionConfig {
            orch_bin,
            sim_bin,
            days: args.retention_sim_days,
            streams_per_day: args.retention_streams_per_day,
            snapshots_per_stream: args.retention_snapshots,
            collect_interval_s: args.collect_interval,
            keep_days: args.retention_keep_days,
            backlog_days: args.retention_backlog_days,
            engines: args.retention_engines.max(1),
            clients: args.retention_clients.max(1),
            after_seconds: args.retention_after_seconds,
            extra_env,
        })
        .await?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&summary).context("cannot write the summary")?
            );
        } else {
            retention::print(&summary);
        }
        return Ok(());
    }
    if let Some(sizes) = args.scale.clone() {
        return run_scale(args, &sizes, extra_env, orch_bin, sim_bin).await;
    }
    let summary = run_one(&args, extra_env, &orch_bin, &sim_bin, run_started).await?;
    if let Some(summary) = summary {
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&summary).context("cannot write the summary")?
            );
        } else {
            report::print_table(&summary);
        }
    }
    Ok(())
}

/// One run at `args.engines`: the default phases (answers their summary) or
/// the load mode (prints its own summary and answers `None`).
async fn run_one(
    args: &Args,
    extra_env: Vec<(String, String)>,
    orch_bin: &Path,
    sim_bin: &Path,
    run_started: Instant,
) -> anyhow::Result<Option<Summary>> {
    // 2. Engines.
    let healthy_count = args.engines - args.hung;
    eprintln!(
        "bench: starting {healthy_count} healthy and {} hung emulated engines",
        args.hung
    );
    let healthy_sim = Sim::start(sim_bin, healthy_count, "healthy").await?;
    let hung_sim = if args.hung > 0 {
        Some(Sim::start(sim_bin, args.hung, "hang").await?)
    } else {
        None
    };
    let mut expect = Expectations::new();
    for &port in &healthy_sim.ports {
        expect.insert(port, Expect::Healthy);
    }
    for &port in hung_sim.iter().flat_map(|s| s.ports.iter()) {
        expect.insert(port, Expect::Hung);
    }
    if expect.len() != args.engines {
        bail!("the emulators announced duplicate ports");
    }

    // 3. Orchestrator.
    let dir = tempfile::Builder::new()
        .prefix("orchestrator-bench-")
        .tempdir_in("/tmp")
        .context("cannot create a temporary directory in /tmp")?;
    let settings = OrchSettings {
        interval_s: args.interval,
        timeout_s: args.timeout,
        collect_interval_s: args.collect_interval,
        extra_env,
    };
    let mut orch = Orch::start(orch_bin, dir.path(), &settings).await?;
    let orch_pid = orch.pid().context("the orchestrator has no pid")?;
    eprintln!(
        "bench: orchestrator pid {orch_pid} at {} (database in {})",
        orch.base,
        dir.path().display()
    );
    let load_average_at_start = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    let sims_pids = std::iter::once(&healthy_sim)
        .chain(hung_sim.iter())
        .filter_map(Sim::pid)
        .collect();
    let mut sampler = Sampler::start(Watched {
        orchestrator: orch_pid,
        sims: sims_pids,
    });

    let result = match args.load_mode_seconds() {
        _ if args.panel => {
            match register_and_warm_up(args, &mut orch, &mut sampler, &expect).await {
                Ok(_) => panel::measure(&orch.base, args.panel_seconds)
                    .await
                    .map(Parts::Panel),
                Err(e) => Err(e),
            }
        }
        Some(seconds) => {
            measure_load(
                args,
                seconds,
                &mut orch,
                &mut sampler,
                &expect,
                &healthy_sim,
            )
            .await
        }
        None => measure(args, &mut orch, &mut sampler, &expect, &healthy_sim)
            .await
            .map(|m| Parts::Default(Box::new(m))),
    };
    let result = match result {
        Ok(parts) => Ok(parts),
        Err(e) => match orch.check_alive() {
            Err(dead) => Err(e.context(dead)),
            Ok(()) => Err(e),
        },
    };
    let peak = sampler.orchestrator_now();
    let max_sampled_rss_kb = sampler.max_rss_kb();
    let phase_usage = sampler.finish();
    let warnings = orch.tail.warnings();

    // Clean up before reporting.
    orch.stop().await;
    healthy_sim.stop().await;
    if let Some(sim) = hung_sim {
        sim.stop().await;
    }
    let dir_path = dir.path().to_path_buf();
    dir.close()
        .with_context(|| format!("cannot remove {}", dir_path.display()))?;

    let parts = match result? {
        Parts::Default(parts) => *parts,
        Parts::Panel(result) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&result).context("cannot write the summary")?
                );
            } else {
                panel::print(args.engines, args.hung, args.interval, &result);
            }
            return Ok(None);
        }
        Parts::Load {
            register,
            warm_up,
            load,
        } => {
            let peak_rss_mb = kb_to_mb(peak.map(|p| p.hwm_kb).unwrap_or(max_sampled_rss_kb));
            let load_phase = phase_usage.iter().find(|p| p.phase == "load").cloned();
            let summary = LoadSummary {
                engines: args.engines,
                hung: args.hung,
                health_check_interval_s: args.interval,
                health_check_timeout_s: args.timeout,
                collect_interval_s: args.collect_interval,
                extra_orchestrator_env: args.orch_env.clone(),
                machine: Machine::detect(),
                register_seconds: register.as_secs_f64(),
                warm_up_seconds: warm_up.as_secs_f64(),
                load,
                peak_rss_vmhwm_mb: peak_rss_mb,
                phases: phase_usage,
                load_average_at_start,
                orchestrator_warnings: warnings.len(),
                orchestrator_warning_samples: warnings.into_iter().take(5).collect(),
                total_seconds: run_started.elapsed().as_secs_f64(),
            };
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&summary).context("cannot write the summary")?
                );
            } else {
                print_load_summary(&summary, load_phase.as_ref());
            }
            return Ok(None);
        }
    };
    let peak_rss_mb = kb_to_mb(peak.map(|p| p.hwm_kb).unwrap_or(max_sampled_rss_kb));
    let goals = Goals::for_size(args);
    let targets = vec![
        Target::at_most(
            "max age of last_health_check",
            args.interval + goals.max_age_slack_s,
            parts.sweeps.max_age_s,
            "s",
        ),
        Target::at_most(
            "GET /engines p99 latency",
            goals.engines_p99_ms,
            parts.sweeps.latency.p99_ms,
            "ms",
        ),
        Target::at_most(
            "orchestrator peak RSS (VmHWM)",
            goals.peak_rss_mb,
            peak_rss_mb,
            "MiB",
        ),
        Target::at_least(
            "ingest rate (2xx events/s)",
            INGEST_EVENTS_PER_S,
            parts.ingest.events_per_s,
            "events/s",
        ),
    ];
    let summary = Summary {
        config: RunConfig {
            engines: args.engines,
            hung: args.hung,
            health_check_interval_s: args.interval,
            health_check_timeout_s: args.timeout,
            collect_interval_s: args.collect_interval,
            sweep_duration_s: args.duration,
            sweep_poll_ms: args.poll_ms,
            ingest_seconds: args.ingest_seconds,
            extra_orchestrator_env: args.orch_env.clone(),
        },
        machine: Machine::detect(),
        register_seconds: parts.register.as_secs_f64(),
        warm_up_seconds: parts.warm_up.as_secs_f64(),
        sweeps: parts.sweeps,
        ingest: parts.ingest,
        max_age_after_ingest_s: parts.max_age_after_ingest,
        peak_rss_mb,
        max_sampled_rss_mb: kb_to_mb(max_sampled_rss_kb),
        phases: phase_usage,
        load_average_at_start,
        orchestrator_warnings: warnings.len(),
        orchestrator_warning_samples: warnings.into_iter().take(5).collect(),
        all_pass: targets.iter().all(|t| t.pass),
        targets,
        listings: parts.listings,
        sweep_concurrency: parts.sweep_concurrency,
        total_seconds: run_started.elapsed().as_secs_f64(),
    };
    Ok(Some(summary))
}

/// `--scale`: the default phases at each size, one after the other.
async fn run_scale(
    args: Args,
    sizes: &[usize],
    extra_env: Vec<(String, String)>,
    orch_bin: PathBuf,
    sim_bin: PathBuf,
) -> anyhow::Result<()> {
    if sizes.is_empty() || sizes.contains(&0) {
        bail!("--scale must list pool sizes of 1 or more");
    }
    if !(0.0..1.0).contains(&args.hung_share) {
        bail!("--hung-share must be at least 0 and below 1");
    }
    let mut runs = Vec::new();
    for &engines in sizes {
        let mut one = args.clone();
        one.engines = engines;
        one.hung = ((engines as f64 * args.hung_share).round() as usize).min(engines - 1);
        one.scale = None;
        eprintln!("bench: scale: {engines} engines ({} hung)", one.hung);
        let started = Instant::now();
        if let Some(summary) =
            run_one(&one, extra_env.clone(), &orch_bin, &sim_bin, started).await?
        {
            if !args.json {
                report::print_table(&summary);
            }
            runs.push(summary);
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&runs).context("cannot write the summary")?
        );
    } else {
        report::print_scale(&runs);
    }
    Ok(())
}

async fn run_proxy(
    args: Args,
    extra_env: Vec<(String, String)>,
    orch_bin: PathBuf,
    sim_bin: PathBuf,
) -> anyhow::Result<()> {
    let mut parts = std::collections::HashSet::new();
    for part in &args.proxy_parts {
        let part = part.trim();
        if !proxy::ALL_PARTS.contains(&part) {
            bail!(
                "--proxy-parts: '{part}' is not one of {}",
                proxy::ALL_PARTS.join(", ")
            );
        }
        parts.insert(part.to_owned());
    }
    if args.proxy_viewers.is_empty() || args.proxy_viewers.contains(&0) {
        bail!("--proxy-viewers must be counts of 1 or more");
    }
    if args.proxy_engines.is_some_and(|n| n < 2) {
        bail!("--proxy-engines must be 2 or more: a failover needs a healthy engine to go to");
    }
    if !args.proxy_step_seconds.is_finite() || args.proxy_step_seconds <= 0.0 {
        bail!("--proxy-step-seconds must be a number of seconds above 0");
    }
    if args.proxy_session_engines * 2 < args.proxy_sessions {
        bail!("--proxy-session-engines × 2 streams per engine must cover --proxy-sessions");
    }
    proxy::run(proxy::ProxyConfig {
        orch_bin,
        sim_bin,
        viewer_steps: args.proxy_viewers.clone(),
        step: Duration::from_secs_f64(args.proxy_step_seconds),
        bitrate: args.proxy_bitrate.clone(),
        size: args.proxy_size.clone(),
        engines: args.proxy_engines,
        joins: args.proxy_joins,
        failovers: args.proxy_failovers,
        headroom_failovers: args.proxy_headroom_failovers,
        sessions: args.proxy_sessions,
        session_engines: args.proxy_session_engines,
        parts,
        extra_env,
        json: args.json,
    })
    .await
}

enum Parts {
    Default(Box<Measured>),
    Panel(panel::PanelResult),
    Load {
        register: Duration,
        warm_up: Duration,
        load: load::LoadResult,
    },
}

#[derive(serde::Serialize)]
struct LoadSummary {
    engines: usize,
    hung: usize,
    health_check_interval_s: f64,
    health_check_timeout_s: f64,
    collect_interval_s: f64,
    extra_orchestrator_env: Vec<String>,
    machine: Machine,
    register_seconds: f64,
    warm_up_seconds: f64,
    load: load::LoadResult,
    /// The orchestrator's VmHWM at the end of the run (register and warm-up included).
    peak_rss_vmhwm_mb: f64,
    phases: Vec<sampler::PhaseUsage>,
    load_average_at_start: Option<String>,
    orchestrator_warnings: usize,
    orchestrator_warning_samples: Vec<String>,
    total_seconds: f64,
}

fn print_load_summary(s: &LoadSummary, load_phase: Option<&sampler::PhaseUsage>) {
    println!(
        "{} engines ({} hung), HEALTH_CHECK_INTERVAL_S={} HEALTH_CHECK_TIMEOUT_S={} COLLECT_INTERVAL_S={}; \
         register {:.1}s, warm-up {:.1}s; load average at start {}",
        s.engines,
        s.hung,
        s.health_check_interval_s,
        s.health_check_timeout_s,
        s.collect_interval_s,
        s.register_seconds,
        s.warm_up_seconds,
        s.load_average_at_start.as_deref().unwrap_or("?")
    );
    load::print(&s.load);
    println!(
        "orchestrator peak RSS (VmHWM, whole run) {:.1} MiB",
        s.peak_rss_vmhwm_mb
    );
    if let Some(p) = load_phase {
        println!(
            "average CPU over the load, % of one core: orchestrator {:.1}, emulators {:.1}, bench (clients) {:.1}, other {:.1}",
            p.orchestrator_cpu_percent, p.sims_cpu_percent, p.bench_cpu_percent, p.other_cpu_percent
        );
    }
    println!(
        "orchestrator warnings: {}{}",
        s.orchestrator_warnings,
        s.orchestrator_warning_samples
            .first()
            .map(|w| format!(" (first: {w})"))
            .unwrap_or_default()
    );
}

/// Registers every engine, then waits until each has the status it should
/// have (healthy, or unhealthy for the hung ones). Both phases are timed.
async fn register_and_warm_up(
    args: &Args,
    orch: &mut Orch,
    sampler: &mut Sampler,
    expect: &Expectations,
) -> anyhow::Result<(Duration, Duration)> {
    let client = phases::client()?;
    let mut ports: Vec<u16> = expect.keys().copied().collect();
    ports.sort_unstable();
    sampler.phase("register");
    let register = phases::register(&client, &orch.base, &ports, args.register_concurrency).await?;
    orch.check_alive()?;
    sampler.phase("warm-up");
    let warm_up = phases::warm_up(
        &client,
        &orch.base,
        expect,
        Duration::from_secs_f64(args.warmup_timeout),
    )
    .await?;
    orch.check_alive()?;
    Ok((register, warm_up))
}

/// Register, warm up, then the load mode for `seconds`.
async fn measure_load(
    args: &Args,
    seconds: f64,
    orch: &mut Orch,
    sampler: &mut Sampler,
    expect: &Expectations,
    healthy_sim: &Sim,
) -> anyhow::Result<Parts> {
    let (register, warm_up) = register_and_warm_up(args, orch, sampler, expect).await?;
    eprintln!(
        "bench: load: {} clients for {seconds}s (40 % GET /engines, 20 % select, 20 % stream_started, 20 % stream_ended)",
        args.clients
    );
    sampler.phase("load");
    let cfg = load::LoadConfig {
        clients: args.clients.max(1),
        duration: Duration::from_secs_f64(seconds),
        warmup: Duration::from_secs_f64(args.load_warmup_seconds),
        sample_every: Duration::from_secs(10),
        soak_reference: Duration::from_secs(60),
        tolerance: args.rss_tolerance,
        healthy_ports: healthy_sim.ports.clone(),
    };
    let pid = orch.pid().context("the orchestrator has no pid")?;
    let load = load::run(&orch.base, pid, &cfg).await?;
    sampler.end_phase();
    orch.check_alive()?;
    Ok(Parts::Load {
        register,
        warm_up,
        load,
    })
}

struct Measured {
    register: Duration,
    warm_up: Duration,
    sweeps: phases::SweepResult,
    listings: phases::ListingsResult,
    sweep_concurrency: Option<u64>,
    ingest: phases::IngestResult,
    max_age_after_ingest: Option<f64>,
}

async fn measure(
    args: &Args,
    orch: &mut Orch,
    sampler: &mut Sampler,
    expect: &Expectations,
    healthy_sim: &Sim,
) -> anyhow::Result<Measured> {
    // 4. Registration, 5. warm-up.
    let (register, warm_up) = register_and_warm_up(args, orch, sampler, expect).await?;

    // 6. GET /engines sweeps; a fresh client, so that its one connection is
    // the only thing it does.
    eprintln!(
        "bench: sweeps: GET /engines every {} ms for {}s",
        args.poll_ms, args.duration
    );
    sampler.phase("sweeps");
    let sweeps = phases::sweeps(
        &phases::client()?,
        &orch.base,
        expect,
        Duration::from_secs_f64(args.duration),
        Duration::from_millis(args.poll_ms.max(1)),
    )
    .await?;
    orch.check_alive()?;
    let sweep_concurrency = phases::sweep_concurrency(&phases::client()?, &orch.base).await;

    // The listings a large pool's clients use: gzip, and only the unhealthy.
    eprintln!("bench: listings: GET /engines gzip-compressed and ?health=unhealthy, 20 of each");
    sampler.phase("listings");
    let listings = phases::listings(
        &phases::client()?,
        &orch.base,
        20,
        Duration::from_millis(args.poll_ms.max(1)),
    )
    .await?;
    orch.check_alive()?;

    // 7. Ingest.
    eprintln!(
        "bench: ingest: stream_started (+ stream_ended of the oldest, {} open per engine) from {} connections, one request at a time each, for {}s",
        phases::OPEN_STREAMS_PER_ENGINE,
        args.ingest_senders,
        args.ingest_seconds
    );
    sampler.phase("ingest");
    // A few connections, one request at a time each: run them on their own
    // single-threaded runtime so that the load generator's own cost per request
    // (and cross-thread wake-ups in it) stays as small as it can be.
    let ingest = {
        let senders = args.ingest_senders;
        let base = orch.base.clone();
        let ports = healthy_sim.ports.clone();
        let duration = Duration::from_secs_f64(args.ingest_seconds);
        tokio::task::spawn_blocking(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the ingest runtime")?;
            runtime.block_on(async {
                phases::ingest(&phases::client()?, &base, &ports, duration, senders).await
            })
        })
        .await
        .context("the ingest task failed")??
    };
    sampler.end_phase();
    orch.check_alive()?;
    let max_age_after_ingest = phases::max_age_now(&phases::client()?, &orch.base, expect)
        .await
        .ok();
    Ok(Measured {
        register,
        warm_up,
        sweeps,
        listings,
        sweep_concurrency,
        ingest,
        max_age_after_ingest,
    })
}
