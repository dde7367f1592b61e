//! The AWS KMS API under load: the same SigV4-signed load (kubekms_bench::load) against
//! the HTTP floor, local-kms and kubekms-server in turn, in one run, on loopback; each
//! target's throughput and latency, and the ratios the goals are stated in.
//!
//! ```text
//! cargo bench -p kubekms-bench --bench api_load              # full: 3 rounds of 10 s
//! cargo bench -p kubekms-bench --bench api_load -- --quick   # a few seconds per target
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use clap::Parser;
use kubekms_bench::cpu::loadavg;
use kubekms_bench::kms::{KmsEndpoint, Operation, StaticCredentials};
use kubekms_bench::load::{LoadConfig, run_load};
use kubekms_bench::report::{
    Run, aggregate, ratio_result_line, ratio_table, ratios, result_line, table,
};
use kubekms_bench::targets::{
    ExternalServer, HttpFloor, KubekmsServer, LocalKms, RunningTarget, ServerBinaries,
    StartContext, StartError, Target,
};

/// The targets, in the order they are measured in each round. A new target is one more
/// entry here and an implementation of `Target::start` in bench/src/targets.rs.
fn all_targets(args: &Args) -> Result<Vec<Box<dyn Target>>> {
    Ok(vec![
        Box::new(HttpFloor {
            bin: PathBuf::from(env!("CARGO_BIN_EXE_kubekms-http-floor")),
        }),
        Box::new(LocalKms {
            bin: env_path("KUBEKMS_LOCAL_KMS_BIN"),
        }),
        Box::new(KubekmsServer {
            binaries: if args.targets.iter().any(|t| t == "kubekms-server")
                && args.kubekms_server_endpoint.is_none()
            {
                let exe = std::env::current_exe().context("the bench's own path")?;
                eprintln!(
                    "[api_load] building kubekms-server and kubekms-operator with the bench's profile (a no-op when up to date)"
                );
                ServerBinaries::locate(&exe)
            } else {
                Err("not asked for".to_owned())
            },
            external: external_kubekms_server(args)?,
        }),
    ])
}

/// The running kubekms-server named by `--kubekms-server-endpoint` and its companions,
/// signed for with the AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN of
/// the environment.
fn external_kubekms_server(args: &Args) -> Result<Option<ExternalServer>> {
    let Some(endpoint) = &args.kubekms_server_endpoint else {
        return Ok(None);
    };
    let bare = endpoint
        .strip_prefix("http://")
        .unwrap_or(endpoint)
        .trim_end_matches('/');
    let addr: std::net::SocketAddr = bare.parse().with_context(|| {
        format!("--kubekms-server-endpoint {endpoint:?}: expected http://IP:PORT")
    })?;
    ensure!(
        addr.ip().is_loopback(),
        "--kubekms-server-endpoint {addr}: only loopback addresses are allowed"
    );
    let key_id = args
        .kubekms_server_key_id
        .clone()
        .context("--kubekms-server-endpoint needs --kubekms-server-key-id")?;
    let pid = args
        .kubekms_server_pid
        .context("--kubekms-server-endpoint needs --kubekms-server-pid (its CPU is measured)")?;
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let credentials = StaticCredentials {
        access_key_id: var("AWS_ACCESS_KEY_ID")
            .context("--kubekms-server-endpoint needs AWS_ACCESS_KEY_ID in the environment")?,
        secret_access_key: var("AWS_SECRET_ACCESS_KEY")
            .context("--kubekms-server-endpoint needs AWS_SECRET_ACCESS_KEY in the environment")?,
        session_token: var("AWS_SESSION_TOKEN"),
    };
    Ok(Some(ExternalServer {
        endpoint: KmsEndpoint {
            addr,
            region: args.region.clone(),
            credentials,
        },
        key_id,
        pid,
    }))
}

/// The AWS KMS API benchmark (cargo bench -p kubekms-bench --bench api_load -- [options]).
#[derive(Parser, Debug)]
#[command(name = "api_load")]
struct Args {
    /// A short run for CI: 1 s of warm-up, 3 s timed, 1 round (unless given).
    #[arg(long)]
    quick: bool,
    /// Seconds of the timed phase of each run [default: 10, --quick 3].
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds of load before each timed phase [default: 2, --quick 1].
    #[arg(long)]
    warmup: Option<f64>,
    /// Rounds; each runs every target in turn, so slow drifts of the machine's load touch
    /// all targets alike [default: 3, --quick 1].
    #[arg(long)]
    rounds: Option<usize>,
    /// Connection counts, comma-separated (each is a run of its own).
    #[arg(long, value_delimiter = ',', default_value = "32")]
    connections: Vec<usize>,
    /// Operations, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "encrypt-4k,decrypt-4k,generate-data-key"
    )]
    operations: Vec<Operation>,
    /// Targets, comma-separated: floor, local-kms, kubekms-server.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "floor,local-kms,kubekms-server"
    )]
    targets: Vec<String>,
    /// Tokio worker threads of the load client.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// The region requests are signed for.
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// Measure a kubekms-server that runs already at this endpoint (http://127.0.0.1:PORT),
    /// signing with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN).
    #[arg(long)]
    kubekms_server_endpoint: Option<String>,
    /// The key the running kubekms-server is measured with (id, ARN or alias).
    #[arg(long)]
    kubekms_server_key_id: Option<String>,
    /// The pid of the running kubekms-server (its CPU time is measured).
    #[arg(long)]
    kubekms_server_pid: Option<u32>,
    /// Keep the scratch folder (targets' logs and data) after the run.
    #[arg(long)]
    keep_logs: bool,
    /// Given by `cargo bench`; without it (`cargo test --benches`) nothing runs.
    #[arg(long, hide = true)]
    bench: bool,
}

struct Plan {
    warmup: Duration,
    duration: Duration,
    rounds: usize,
}

fn plan(args: &Args) -> Result<Plan> {
    let secs = |name: &str, v: f64| {
        Duration::try_from_secs_f64(v).map_err(|_| anyhow!("--{name} {v}: not a duration"))
    };
    let plan = Plan {
        warmup: secs(
            "warmup",
            args.warmup.unwrap_or(if args.quick { 1.0 } else { 2.0 }),
        )?,
        duration: secs(
            "duration",
            args.duration.unwrap_or(if args.quick { 3.0 } else { 10.0 }),
        )?,
        rounds: args.rounds.unwrap_or(if args.quick { 1 } else { 3 }),
    };
    ensure!(!plan.duration.is_zero(), "--duration must be positive");
    ensure!(plan.rounds > 0, "--rounds must be at least 1");
    ensure!(
        args.connections.iter().all(|c| *c > 0),
        "--connections must be at least 1"
    );
    ensure!(
        args.client_threads > 0,
        "--client-threads must be at least 1"
    );
    Ok(plan)
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn log(started: Instant, what: &str) {
    eprintln!(
        "[api_load] {:>6.1}s {what}",
        started.elapsed().as_secs_f64()
    );
}

fn run(args: &Args) -> Result<()> {
    let plan = plan(args)?;
    let started = Instant::now();
    let loadavg_before = loadavg();
    let repo_root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the bench crate has no parent folder")?
        .to_owned();
    let scratch = tempfile::Builder::new()
        .prefix("kubekms-api-load.")
        .tempdir()
        .context("making a scratch folder")?;
    log(
        started,
        &format!(
            "{} cores, load average {loadavg_before}; scratch {}",
            std::thread::available_parallelism().map_or(0, usize::from),
            scratch.path().display()
        ),
    );

    let mut failures: Vec<String> = Vec::new();
    let mut unavailable: Vec<String> = Vec::new();
    let mut running: Vec<RunningTarget> = Vec::new();
    let known = all_targets(args)?;
    for name in &args.targets {
        ensure!(
            known.iter().any(|t| t.name() == name),
            "--targets: unknown target {name:?} (known: {})",
            known
                .iter()
                .map(|t| t.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for target in known
        .iter()
        .filter(|t| args.targets.iter().any(|n| n == t.name()))
    {
        let folder = scratch.path().join(target.name());
        std::fs::create_dir_all(&folder)?;
        let context = StartContext {
            scratch: folder,
            region: args.region.clone(),
            repo_root: repo_root.clone(),
            ready_timeout: Duration::from_secs(60),
        };
        match target.start(&context) {
            Ok(t) => {
                log(
                    started,
                    &format!(
                        "{} listens on {} (pid {}; {})",
                        t.name,
                        t.endpoint.addr,
                        t.pid(),
                        t.notes
                    ),
                );
                running.push(t);
            }
            Err(StartError::Unavailable(why)) => {
                log(started, &format!("{}: {why}", target.name()));
                unavailable.push(format!("{}: {why}", target.name()));
            }
            Err(e) => {
                log(started, &format!("{} did not start: {e}", target.name()));
                failures.push(format!("{} did not start: {e}", target.name()));
            }
        }
    }
    ensure!(!running.is_empty(), "no target started");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads)
        .enable_all()
        .build()?;
    let mut runs: Vec<Run> = Vec::new();
    let mut broken: Vec<&'static str> = Vec::new();
    for round in 0..plan.rounds {
        for target in &mut running {
            for &operation in &args.operations {
                for &connections in &args.connections {
                    if broken.contains(&target.name) {
                        continue;
                    }
                    if !target.is_running() {
                        failures.push(format!(
                            "{} exited during the benchmark{}",
                            target.name,
                            target
                                .log
                                .as_ref()
                                .map(|l| format!(" (log {})", l.display()))
                                .unwrap_or_default()
                        ));
                        broken.push(target.name);
                        continue;
                    }
                    let mut config =
                        LoadConfig::new(target.endpoint.clone(), target.key_id.clone(), operation);
                    config.connections = connections;
                    config.warmup = plan.warmup;
                    config.duration = plan.duration;
                    config.server_pid = Some(target.pid());
                    match runtime.block_on(run_load(&config)) {
                        Ok(report) => {
                            let errors = report.all_errors();
                            log(
                                started,
                                &format!(
                                    "round {}/{} {} {operation} x{connections}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, client {:.2} / server {:.2} / other {:.2} cores{}",
                                    round + 1,
                                    plan.rounds,
                                    target.name,
                                    report.throughput(),
                                    report.latency_at(0.5).as_secs_f64() * 1e3,
                                    report.latency_at(0.99).as_secs_f64() * 1e3,
                                    report.cpu.client,
                                    report.cpu.server.unwrap_or(0.0),
                                    report.cpu.other,
                                    if errors.is_empty() {
                                        String::new()
                                    } else {
                                        format!(", ERRORS {errors:?}")
                                    }
                                ),
                            );
                            runs.push(Run {
                                target: target.name,
                                round,
                                report,
                            });
                        }
                        Err(e) => {
                            log(started, &format!("{} {operation}: {e}", target.name));
                            failures
                                .push(format!("{} {operation} x{connections}: {e}", target.name));
                            broken.push(target.name);
                        }
                    }
                }
            }
        }
    }
    drop(running);
    let loadavg_after = loadavg();

    let aggregates = aggregate(&runs);
    let ratios = ratios(&aggregates);
    println!();
    println!(
        "AWS API load: {} round(s) of {:?} after {:?} of warm-up per run; client: {} tokio threads, SigV4 per request; machine: {} cores; load average {loadavg_before} -> {loadavg_after}",
        plan.rounds,
        plan.duration,
        plan.warmup,
        args.client_threads,
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    println!(
        "(cores: CPU seconds per second in the timed phase, with CPU time per request; other: the rest of the machine)"
    );
    print!("{}", table(&aggregates));
    println!();
    print!("{}", ratio_table(&ratios));
    for line in &unavailable {
        println!("not measured: {line}");
    }
    print_goals(&aggregates, &ratios);
    let busiest = aggregates.iter().map(|a| a.other_cores).fold(0.0, f64::max);
    if busiest > 0.25 {
        println!(
            "note: other work on the machine took up to {busiest:.2} cores during a run; every target shares that noise, the absolute figures are lower than on an idle machine"
        );
    }
    for a in &aggregates {
        println!("{}", result_line(a));
    }
    for r in &ratios {
        println!("{}", ratio_result_line(r));
    }
    println!(
        "RESULT api_load_run rounds={} duration_s={} warmup_s={} client_threads={} loadavg_before=\"{loadavg_before}\" loadavg_after=\"{loadavg_after}\" unavailable={}",
        plan.rounds,
        plan.duration.as_secs_f64(),
        plan.warmup.as_secs_f64(),
        args.client_threads,
        unavailable.len()
    );

    for a in aggregates.iter().filter(|a| a.error_count() > 0) {
        failures.push(format!(
            "{} {} x{}: {} failed requests ({:?})",
            a.target,
            a.operation,
            a.connections,
            a.error_count(),
            a.errors
        ));
    }
    if args.keep_logs || !failures.is_empty() {
        let kept = scratch.keep();
        log(started, &format!("logs kept in {}", kept.display()));
    }
    if !failures.is_empty() {
        bail!("the benchmark is not valid:\n  {}", failures.join("\n  "));
    }
    log(started, "done");
    Ok(())
}

/// The goals of issue 9 for Encrypt of 4 KiB, as measured (never asserted: a busy
/// machine moves every figure).
fn print_goals(
    aggregates: &[kubekms_bench::report::Aggregate],
    ratios: &[kubekms_bench::report::Ratio],
) {
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    for a in aggregates
        .iter()
        .filter(|a| a.target == "kubekms-server" && a.operation == Operation::Encrypt4k)
    {
        println!(
            "goal kubekms-server encrypt-4k x{}: >= 20000 req/s: {:.0} ({})",
            a.connections,
            a.rps(),
            verdict(a.rps() >= 20_000.0)
        );
        if let Some(r) = ratios.iter().find(|r| {
            r.target == a.target && r.operation == a.operation && r.connections == a.connections
        }) {
            if let Some(x) = r.throughput_vs_peer {
                println!("goal: >= 2x local-kms: {x:.2}x ({})", verdict(x >= 2.0));
            }
            if let Some(x) = r.cost_vs_floor {
                println!(
                    "goal: cost per request <= 1.5x the floor's: {x:.2}x wall, {} CPU ({})",
                    r.cpu_vs_floor
                        .map_or_else(|| "-".to_owned(), |c| format!("{c:.2}x")),
                    verdict(x <= 1.5)
                );
            }
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !args.bench {
        println!(
            "api_load: not run (no --bench argument); run it with `cargo bench -p kubekms-bench --bench api_load`"
        );
        return ExitCode::SUCCESS;
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("api_load: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
