//! Load client: the plugin's Encrypt and Decrypt of a 32-byte DEK seed against the
//! transport floor (an empty unary RPC served by tonic on a Unix socket), in one run.
//!
//! `cargo bench -p kubekms-plugin --bench transport` (optionally `-- ITERATIONS`).
//! Prints p50/p99 per call, the ratio of each p50 to the floor's, and the Decrypt
//! throughput: 10,000 distinct ciphertexts decrypted one at a time and 16 at a time.
//!
//! What that throughput is not: a kube-apiserver start. With KMS v2 the API server
//! decrypts each distinct DEK seed it finds in etcd once (and caches it); a seed is made at
//! each start of an API server and each key_id change, so a start costs one Decrypt per
//! such seed still in use (a handful), not one per Secret as with KMS v1. 10,000 distinct
//! seeds is a bound far above any start; the figure says how fast the plugin decrypts.
//! Not a test: nothing here asserts a time.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kms_plugin::client::{Client, connect};
use kms_plugin::metrics::Metrics;
use kms_plugin::pb::key_management_service_server::{
    KeyManagementService, KeyManagementServiceServer,
};
use kms_plugin::pb::{
    DecryptRequest, DecryptResponse, EncryptRequest, EncryptResponse, StatusRequest, StatusResponse,
};
use kms_plugin::server::{ServeConfig, serve};
use kms_plugin::{Plugin, StateDir};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

/// The floor: answers at once, touches nothing.
struct Empty;

#[tonic::async_trait]
impl KeyManagementService for Empty {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(StatusResponse::default()))
    }
    async fn encrypt(
        &self,
        _: Request<EncryptRequest>,
    ) -> Result<Response<EncryptResponse>, Status> {
        Ok(Response::new(EncryptResponse::default()))
    }
    async fn decrypt(
        &self,
        _: Request<DecryptRequest>,
    ) -> Result<Response<DecryptResponse>, Status> {
        Ok(Response::new(DecryptResponse::default()))
    }
}

async fn wait_client(socket: &Path) -> Client {
    for _ in 0..500 {
        if let Ok(c) = connect(socket).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no server on {}", socket.display());
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

struct Stats {
    name: &'static str,
    samples: Vec<Duration>,
}

impl Stats {
    fn p(&mut self, q: f64) -> Duration {
        self.samples.sort_unstable();
        percentile(&self.samples, q)
    }
}

fn main() {
    let iterations: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(iterations));
}

async fn run(iterations: usize) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    StateDir::new(&state)
        .init(time::OffsetDateTime::now_utc())
        .expect("init");

    // The floor server.
    let floor_socket = tmp.path().join("floor.sock");
    let listener = tokio::net::UnixListener::bind(&floor_socket).expect("bind floor");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(KeyManagementServiceServer::new(Empty))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    // The plugin.
    let plugin_socket = tmp.path().join("kms.sock");
    let plugin = Plugin::open(StateDir::new(&state), Arc::new(Metrics::new())).expect("open");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        plugin,
        ServeConfig {
            socket: plugin_socket.clone(),
            http_addr: None,
            reload_interval: Duration::from_secs(2),
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let mut floor = wait_client(&floor_socket).await;
    let mut kms = wait_client(&plugin_socket).await;

    let seed = vec![7u8; 32];
    let enc = kms
        .encrypt(EncryptRequest {
            plaintext: seed.clone(),
            uid: "bench".into(),
        })
        .await
        .expect("encrypt")
        .into_inner();
    let decrypt_req = DecryptRequest {
        ciphertext: enc.ciphertext.clone(),
        uid: "bench".into(),
        key_id: enc.key_id.clone(),
        annotations: enc.annotations.clone(),
    };

    let mut stats = [
        Stats {
            name: "floor (empty unary RPC)",
            samples: Vec::with_capacity(iterations),
        },
        Stats {
            name: "Encrypt 32-byte seed",
            samples: Vec::with_capacity(iterations),
        },
        Stats {
            name: "Decrypt 32-byte seed",
            samples: Vec::with_capacity(iterations),
        },
    ];
    // Warm-up, then rounds that interleave the three so drift hits all alike.
    let rounds = 20;
    let per_round = iterations.div_ceil(rounds);
    for round in 0..=rounds {
        let record = round > 0;
        for (which, stat) in stats.iter_mut().enumerate() {
            for _ in 0..per_round {
                let t = Instant::now();
                match which {
                    0 => {
                        floor.status(StatusRequest {}).await.expect("floor");
                    }
                    1 => {
                        kms.encrypt(EncryptRequest {
                            plaintext: seed.clone(),
                            uid: String::new(),
                        })
                        .await
                        .expect("encrypt");
                    }
                    _ => {
                        kms.decrypt(decrypt_req.clone()).await.expect("decrypt");
                    }
                }
                if record {
                    stat.samples.push(t.elapsed());
                }
            }
        }
    }
    let floor_p50 = stats[0].p(0.5);
    println!(
        "KMS v2 over a Unix socket, {} calls each, one client, sequential",
        stats[0].samples.len()
    );
    println!(
        "{:<26} {:>10} {:>10} {:>14}",
        "call", "p50 (µs)", "p99 (µs)", "p50 / floor"
    );
    for s in &mut stats {
        let p50 = s.p(0.5);
        let p99 = s.p(0.99);
        println!(
            "{:<26} {:>10.1} {:>10.1} {:>13.2}x",
            s.name,
            us(p50),
            us(p99),
            p50.as_secs_f64() / floor_p50.as_secs_f64()
        );
    }

    // Decrypt throughput over 10,000 distinct ciphertexts (a KMS v2 start needs one per
    // DEK seed in use, a handful: see the header).
    let mut requests = Vec::with_capacity(10_000);
    for i in 0..10_000u32 {
        let mut s = seed.clone();
        s[..4].copy_from_slice(&i.to_be_bytes());
        let e = kms
            .encrypt(EncryptRequest {
                plaintext: s,
                uid: String::new(),
            })
            .await
            .expect("encrypt")
            .into_inner();
        requests.push(DecryptRequest {
            ciphertext: e.ciphertext,
            uid: format!("start-{i}"),
            key_id: e.key_id,
            annotations: e.annotations,
        });
    }
    let t = Instant::now();
    for r in &requests {
        kms.decrypt(r.clone()).await.expect("decrypt");
    }
    let sequential = t.elapsed();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for chunk in requests.chunks(requests.len().div_ceil(16)) {
        let mut c = kms.clone();
        let chunk = chunk.to_vec();
        tasks.push(tokio::spawn(async move {
            for r in chunk {
                c.decrypt(r).await.expect("decrypt");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let concurrent = t.elapsed();
    println!(
        "Decrypt throughput, 10,000 distinct ciphertexts: {:.0} ms sequential, {:.0} ms with 16 concurrent callers",
        sequential.as_secs_f64() * 1e3,
        concurrent.as_secs_f64() * 1e3
    );
    let _ = stop.send(());
    let _ = server.await;
}
