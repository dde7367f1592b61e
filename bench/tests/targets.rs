//! The benchmark's real targets, started as the bench starts them: the HTTP floor process,
//! local-kms (built from its Go module by hack/tools/local-kms.sh) and kubekms-server (its
//! own control plane, the operator, RBAC) answer every measured operation with 200 and
//! nothing else, so a benchmark run measures successes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kubekms_bench::kms::Operation;
use kubekms_bench::load::{LoadConfig, run_load};
use kubekms_bench::targets::{
    ExternalServer, HttpFloor, KubekmsServer, LocalKms, RunningTarget, ServerBinaries,
    StartContext, StartError, Target,
};

fn context(scratch: &Path) -> StartContext {
    StartContext {
        scratch: scratch.to_owned(),
        region: "us-east-1".to_owned(),
        repo_root: Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("repo root")
            .to_owned(),
        // The first local-kms build downloads its Go modules.
        ready_timeout: Duration::from_secs(120),
    }
}

async fn answers_every_operation(target: &RunningTarget) {
    for operation in Operation::ALL {
        let mut config = LoadConfig::new(target.endpoint.clone(), &target.key_id, operation);
        config.connections = 2;
        config.warmup = Duration::from_millis(100);
        config.duration = Duration::from_millis(300);
        config.server_pid = Some(target.pid());
        let report = run_load(&config).await.expect("run");
        assert!(report.ok > 0, "{} {operation}: {report:?}", target.name);
        assert!(
            report.all_errors().is_empty(),
            "{} {operation}: {:?}",
            target.name,
            report.all_errors()
        );
        assert!(
            report.cpu.server.is_some(),
            "{}: no server CPU reading",
            target.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floor_process_answers_every_operation() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let floor = HttpFloor {
        bin: PathBuf::from(env!("CARGO_BIN_EXE_kubekms-http-floor")),
    };
    let target = floor.start(&context(scratch.path())).expect("floor");
    answers_every_operation(&target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_kms_answers_every_operation_with_its_seeded_key() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let local_kms = LocalKms { bin: None };
    let target = tokio::task::block_in_place(|| local_kms.start(&context(scratch.path())))
        .expect("local-kms (needs Go; hack/tools/local-kms.sh builds it)");
    answers_every_operation(&target).await;
}

/// kubekms-server as the bench starts it: its own control plane, the operator making the
/// key, the server with its RBAC and the client's static credentials; every measured
/// operation succeeds (SigV4-verified, authorized by the Role, audited).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubekms_server_answers_every_operation_as_the_bench_starts_it() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("exe");
    let server = KubekmsServer {
        binaries: tokio::task::block_in_place(|| ServerBinaries::locate(&exe)),
        external: None,
    };
    let target = tokio::task::block_in_place(|| server.start(&context(scratch.path())))
        .expect("kubekms-server (needs the Go tools that hack/tools/build.sh builds)");
    answers_every_operation(&target).await;
    let audit_log = scratch.path().join("audit.log");
    drop(target);
    // Stopped with SIGTERM: the server flushed its audit log, one record per request.
    let audit = std::fs::read_to_string(&audit_log).expect("audit log");
    for operation in ["Encrypt", "Decrypt", "GenerateDataKey"] {
        assert!(
            audit.lines().any(
                |line| line.contains(&format!("\"eventName\":\"{operation}\""))
                    && line.contains("\"authorizedBy\":[\"rbac\"]")
            ),
            "no audited {operation} allowed by RBAC in {}",
            audit_log.display()
        );
    }
}

#[test]
fn kubekms_server_says_why_it_is_not_measured() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let server = KubekmsServer {
        binaries: Err("cargo build failed".to_owned()),
        external: None,
    };
    match server.start(&context(scratch.path())) {
        Err(StartError::Unavailable(why)) => {
            assert!(
                why.contains("not built") && why.contains("cargo build failed"),
                "{why}"
            );
        }
        Err(e) => panic!("expected Unavailable, got {e}"),
        Ok(_) => panic!("expected Unavailable, got a running server"),
    }
}

/// A server started outside the benchmark is measured where it listens, with its pid's CPU
/// (here the floor process stands in for a running kubekms-server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_is_measured_as_kubekms_server() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let floor = HttpFloor {
        bin: PathBuf::from(env!("CARGO_BIN_EXE_kubekms-http-floor")),
    }
    .start(&context(scratch.path()))
    .expect("floor");
    let server = KubekmsServer {
        binaries: Err("not asked for".to_owned()),
        external: Some(ExternalServer {
            endpoint: floor.endpoint.clone(),
            key_id: floor.key_id.clone(),
            pid: floor.pid(),
        }),
    };
    let mut target = server.start(&context(scratch.path())).expect("external");
    assert_eq!(target.name, "kubekms-server");
    assert!(target.is_running());
    answers_every_operation(&target).await;
    drop(floor);
    // The floor process is gone (stopped by its own guard): the external target sees it.
    assert!(!target.is_running());
}
