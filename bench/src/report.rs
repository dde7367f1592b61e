//! Tables and RESULT lines: each target's figures per operation and connection count
//! (rounds pooled), and the ratios the goals are stated in — cost per request against the
//! HTTP floor, throughput against local-kms — all from the same run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::kms::Operation;
use crate::load::LoadReport;

/// The name of the baseline target whose cost per request is the floor.
pub const FLOOR: &str = "floor";
/// The name of the peer whose throughput the others are compared with.
pub const PEER: &str = "local-kms";

/// One load run against one target.
#[derive(Debug, Clone)]
pub struct Run {
    /// The target's name.
    pub target: &'static str,
    /// Which round of the benchmark (rounds interleave the targets).
    pub round: usize,
    /// What the load client measured.
    pub report: LoadReport,
}

/// The rounds of one target, operation and connection count, pooled.
#[derive(Debug, Clone)]
pub struct Aggregate {
    /// The target's name.
    pub target: &'static str,
    /// The operation.
    pub operation: Operation,
    /// Connections.
    pub connections: usize,
    /// How many rounds are pooled.
    pub rounds: usize,
    /// Successful requests of all timed phases.
    pub ok: u64,
    /// All timed phases together.
    pub duration: Duration,
    /// The lowest and highest throughput of a single round.
    pub rps_min: f64,
    /// See `rps_min`.
    pub rps_max: f64,
    /// Latencies of all rounds.
    pub latency: Histogram<u64>,
    /// Failed requests of all rounds, in and outside the timed phases, by type.
    pub errors: BTreeMap<String, u64>,
    /// Mean CPU of the client, the server and the rest of the machine, in cores.
    pub client_cores: f64,
    /// See `client_cores`.
    pub server_cores: Option<f64>,
    /// See `client_cores`.
    pub other_cores: f64,
}

impl Aggregate {
    /// Successful requests per second over all rounds.
    #[must_use]
    pub fn rps(&self) -> f64 {
        let secs = self.duration.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    /// Latency at `quantile`, in microseconds.
    #[must_use]
    pub fn latency_us(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1e3
    }

    /// The slowest request, in microseconds.
    #[must_use]
    pub fn max_us(&self) -> f64 {
        self.latency.max() as f64 / 1e3
    }

    /// Failed requests, in and outside the timed phases.
    #[must_use]
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Server CPU time per successful request, in microseconds.
    #[must_use]
    pub fn server_cpu_us_per_request(&self) -> Option<f64> {
        let rps = self.rps();
        self.server_cores
            .filter(|_| rps > 0.0)
            .map(|cores| cores * 1e6 / rps)
    }

    /// CPU time of the client and the server together per successful request, in
    /// microseconds: the whole cost of a request on this machine, which the load of other
    /// processes changes much less than the wall-clock throughput.
    #[must_use]
    pub fn cpu_us_per_request(&self) -> Option<f64> {
        let rps = self.rps();
        self.server_cores
            .filter(|_| rps > 0.0)
            .map(|server| (server + self.client_cores) * 1e6 / rps)
    }

    /// Client CPU time per successful request, in microseconds.
    #[must_use]
    pub fn client_cpu_us_per_request(&self) -> Option<f64> {
        let rps = self.rps();
        (rps > 0.0).then(|| self.client_cores * 1e6 / rps)
    }
}

/// Pools the rounds of each (target, operation, connections), in the order first run.
#[must_use]
pub fn aggregate(runs: &[Run]) -> Vec<Aggregate> {
    let mut out: Vec<Aggregate> = Vec::new();
    for run in runs {
        let r = &run.report;
        let rps = r.throughput();
        let found = out.iter_mut().find(|a| {
            a.target == run.target && a.operation == r.operation && a.connections == r.connections
        });
        match found {
            Some(a) => {
                let n = a.rounds as f64;
                a.client_cores = (a.client_cores * n + r.cpu.client) / (n + 1.0);
                a.server_cores = match (a.server_cores, r.cpu.server) {
                    (Some(s), Some(x)) => Some((s * n + x) / (n + 1.0)),
                    _ => None,
                };
                a.other_cores = (a.other_cores * n + r.cpu.other) / (n + 1.0);
                a.rounds += 1;
                a.ok += r.ok;
                a.duration += r.duration;
                a.rps_min = a.rps_min.min(rps);
                a.rps_max = a.rps_max.max(rps);
                // Same bounds on both sides: adding cannot fail.
                let _ = a.latency.add(&r.latency);
                for (k, v) in r.all_errors() {
                    *a.errors.entry(k).or_default() += v;
                }
            }
            None => out.push(Aggregate {
                target: run.target,
                operation: r.operation,
                connections: r.connections,
                rounds: 1,
                ok: r.ok,
                duration: r.duration,
                rps_min: rps,
                rps_max: rps,
                latency: r.latency.clone(),
                errors: r.all_errors(),
                client_cores: r.cpu.client,
                server_cores: r.cpu.server,
                other_cores: r.cpu.other,
            }),
        }
    }
    out
}

/// The table of every aggregate.
#[must_use]
pub fn table(aggregates: &[Aggregate]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<15} {:<18} {:>5} {:>10} {:>19} {:>9} {:>9} {:>9} {:>6} {:>14} {:>14} {:>6}",
        "target",
        "operation",
        "conns",
        "req/s",
        "(rounds: min-max)",
        "p50 ms",
        "p99 ms",
        "max ms",
        "errors",
        "client cores",
        "server cores",
        "other"
    );
    for a in aggregates {
        let per_request = |cores: Option<f64>, us: Option<f64>| match (cores, us) {
            (Some(c), Some(u)) => format!("{c:.2} ({u:.0}us)"),
            (Some(c), None) => format!("{c:.2}"),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            out,
            "{:<15} {:<18} {:>5} {:>10.0} {:>19} {:>9.3} {:>9.3} {:>9.1} {:>6} {:>14} {:>14} {:>6.2}",
            a.target,
            a.operation.label(),
            a.connections,
            a.rps(),
            format!("{}x: {:.0}-{:.0}", a.rounds, a.rps_min, a.rps_max),
            a.latency_us(0.5) / 1e3,
            a.latency_us(0.99) / 1e3,
            a.max_us() / 1e3,
            a.error_count(),
            per_request(Some(a.client_cores), a.client_cpu_us_per_request()),
            per_request(a.server_cores, a.server_cpu_us_per_request()),
            a.other_cores,
        );
    }
    for a in aggregates.iter().filter(|a| a.error_count() > 0) {
        let _ = writeln!(
            out,
            "errors of {} {} x{}: {}",
            a.target,
            a.operation.label(),
            a.connections,
            a.errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    out
}

/// The RESULT line of one aggregate.
#[must_use]
pub fn result_line(a: &Aggregate) -> String {
    let opt = |v: Option<f64>| v.map_or_else(|| "na".to_owned(), |v| format!("{v:.2}"));
    format!(
        "RESULT api_load target={} op={} connections={} rounds={} rps={:.1} rps_min={:.1} rps_max={:.1} p50_us={:.0} p99_us={:.0} max_us={:.0} errors={} client_cores={:.2} server_cores={} other_cores={:.2} cpu_us_per_req={} server_cpu_us_per_req={} client_cpu_us_per_req={}",
        a.target,
        a.operation.label(),
        a.connections,
        a.rounds,
        a.rps(),
        a.rps_min,
        a.rps_max,
        a.latency_us(0.5),
        a.latency_us(0.99),
        a.max_us(),
        a.error_count(),
        a.client_cores,
        opt(a.server_cores),
        a.other_cores,
        opt(a.cpu_us_per_request()),
        opt(a.server_cpu_us_per_request()),
        opt(a.client_cpu_us_per_request()),
    )
}

/// A target compared with the floor and with local-kms at the same operation and
/// connection count.
#[derive(Debug, Clone, PartialEq)]
pub struct Ratio {
    /// The target.
    pub target: &'static str,
    /// The operation.
    pub operation: Operation,
    /// Connections.
    pub connections: usize,
    /// Wall time per request relative to the floor's (the floor's req/s over the
    /// target's): 1.0 is as cheap as the floor.
    pub cost_vs_floor: Option<f64>,
    /// Client + server CPU per request relative to the floor's.
    pub cpu_vs_floor: Option<f64>,
    /// Server CPU per request relative to the floor server's.
    pub server_cpu_vs_floor: Option<f64>,
    /// Throughput relative to local-kms's: 2.0 is twice as many requests per second.
    pub throughput_vs_peer: Option<f64>,
    /// Requests per CPU second (client + server) relative to local-kms's: the throughput
    /// ratio the two would have on cores of their own.
    pub cpu_throughput_vs_peer: Option<f64>,
}

/// The ratios of every target other than the floor.
#[must_use]
pub fn ratios(aggregates: &[Aggregate]) -> Vec<Ratio> {
    let find = |target: &str, a: &Aggregate| {
        aggregates.iter().find(|b| {
            b.target == target && b.operation == a.operation && b.connections == a.connections
        })
    };
    let div = |num: f64, den: f64| (den > 0.0 && num > 0.0).then(|| num / den);
    aggregates
        .iter()
        .filter(|a| a.target != FLOOR)
        .map(|a| {
            let floor = find(FLOOR, a);
            let peer = find(PEER, a).filter(|_| a.target != PEER);
            Ratio {
                target: a.target,
                operation: a.operation,
                connections: a.connections,
                cost_vs_floor: floor.and_then(|f| div(f.rps(), a.rps())),
                cpu_vs_floor: floor
                    .and_then(|f| div(a.cpu_us_per_request()?, f.cpu_us_per_request()?)),
                server_cpu_vs_floor: floor.and_then(|f| {
                    div(
                        a.server_cpu_us_per_request()?,
                        f.server_cpu_us_per_request()?,
                    )
                }),
                throughput_vs_peer: peer.and_then(|p| div(a.rps(), p.rps())),
                cpu_throughput_vs_peer: peer
                    .and_then(|p| div(p.cpu_us_per_request()?, a.cpu_us_per_request()?)),
            }
        })
        .collect()
}

/// The table of the ratios.
#[must_use]
pub fn ratio_table(ratios: &[Ratio]) -> String {
    let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}x"));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<15} {:<18} {:>5} | {:>27} {:>13} {:>13} | {:>20} {:>13}",
        "", "", "", "cost per request vs floor:", "", "", "req/s vs local-kms:", ""
    );
    let _ = writeln!(
        out,
        "{:<15} {:<18} {:>5} | {:>27} {:>13} {:>13} | {:>20} {:>13}",
        "target",
        "operation",
        "conns",
        "wall (floor req/s / req/s)",
        "CPU cl+srv",
        "server CPU",
        "wall",
        "per CPU s"
    );
    for r in ratios {
        let _ = writeln!(
            out,
            "{:<15} {:<18} {:>5} | {:>27} {:>13} {:>13} | {:>20} {:>13}",
            r.target,
            r.operation.label(),
            r.connections,
            opt(r.cost_vs_floor),
            opt(r.cpu_vs_floor),
            opt(r.server_cpu_vs_floor),
            opt(r.throughput_vs_peer),
            opt(r.cpu_throughput_vs_peer),
        );
    }
    out
}

/// The RESULT line of one ratio.
#[must_use]
pub fn ratio_result_line(r: &Ratio) -> String {
    let opt = |v: Option<f64>| v.map_or_else(|| "na".to_owned(), |v| format!("{v:.3}"));
    format!(
        "RESULT api_load_ratio target={} op={} connections={} cost_vs_floor={} cpu_vs_floor={} server_cpu_vs_floor={} throughput_vs_local_kms={} cpu_throughput_vs_local_kms={}",
        r.target,
        r.operation.label(),
        r.connections,
        opt(r.cost_vs_floor),
        opt(r.cpu_vs_floor),
        opt(r.server_cpu_vs_floor),
        opt(r.throughput_vs_peer),
        opt(r.cpu_throughput_vs_peer),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::CpuUsage;

    fn report(operation: Operation, ok: u64, server: f64, latency_us: &[u64]) -> LoadReport {
        let mut latency = Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
        for us in latency_us {
            latency.record(us * 1000).expect("record");
        }
        LoadReport {
            operation,
            connections: 8,
            duration: Duration::from_secs(2),
            ok,
            errors: BTreeMap::new(),
            untimed_ok: 0,
            untimed_errors: BTreeMap::from([("400 NotFoundException".to_owned(), 1)]),
            latency,
            cpu: CpuUsage {
                client: 0.5,
                server: Some(server),
                other: 0.1,
                machine_cores: 2.0,
            },
        }
    }

    #[test]
    fn rounds_pool_and_ratios_compare_at_the_same_operation_and_connections() {
        let op = Operation::Encrypt4k;
        let runs = vec![
            Run {
                target: FLOOR,
                round: 0,
                report: report(op, 40_000, 1.0, &[100, 200]),
            },
            Run {
                target: PEER,
                round: 0,
                report: report(op, 10_000, 1.5, &[400]),
            },
            Run {
                target: "kubekms-server",
                round: 0,
                report: report(op, 20_000, 1.2, &[300]),
            },
            Run {
                target: FLOOR,
                round: 1,
                report: report(op, 20_000, 1.0, &[300]),
            },
        ];
        let aggregates = aggregate(&runs);
        assert_eq!(aggregates.len(), 3);
        let floor = &aggregates[0];
        assert_eq!(floor.rounds, 2);
        assert_eq!(floor.ok, 60_000);
        assert!((floor.rps() - 15_000.0).abs() < 1e-9);
        assert!((floor.rps_min - 10_000.0).abs() < 1e-9);
        assert!((floor.rps_max - 20_000.0).abs() < 1e-9);
        assert_eq!(floor.latency.len(), 3);
        // Errors outside the timed phase are never dropped: one per round.
        assert_eq!(floor.error_count(), 2);

        let ratios = ratios(&aggregates);
        assert_eq!(ratios.len(), 2);
        let peer = &ratios[0];
        assert_eq!(peer.target, PEER);
        assert!((peer.cost_vs_floor.expect("cost") - 3.0).abs() < 1e-9);
        assert_eq!(peer.throughput_vs_peer, None);
        let kubekms = &ratios[1];
        assert!((kubekms.cost_vs_floor.expect("cost") - 1.5).abs() < 1e-9);
        assert!((kubekms.throughput_vs_peer.expect("vs peer") - 2.0).abs() < 1e-9);
        // Server CPU per request: 1.2 cores / 10k rps vs 1.0 core / 15k rps.
        let cpu = kubekms.server_cpu_vs_floor.expect("cpu");
        assert!((cpu - (120.0 / (1e6 / 15_000.0))).abs() < 1e-9, "{cpu}");
        // Client + server: (0.5 + 1.2) / 10k vs (0.5 + 1.0) / 15k.
        let total = kubekms.cpu_vs_floor.expect("cpu");
        assert!((total - (170.0 / 100.0)).abs() < 1e-9, "{total}");
        // Per CPU second against local-kms: (0.5 + 1.5) / 5k = 400 us vs 170 us.
        let per_cpu = kubekms.cpu_throughput_vs_peer.expect("per cpu");
        assert!((per_cpu - 400.0 / 170.0).abs() < 1e-9, "{per_cpu}");

        let line = result_line(&aggregates[2]);
        assert!(line.starts_with("RESULT api_load target=kubekms-server op=encrypt-4k connections=8 rounds=1 rps=10000.0"), "{line}");
        assert!(line.contains(" errors=1 "), "{line}");
        let table = table(&aggregates);
        assert!(
            table.contains("errors of floor encrypt-4k x8: 400 NotFoundException: 2"),
            "{table}"
        );
        assert!(ratio_result_line(kubekms).contains("throughput_vs_local_kms=2.000"));
    }
}
