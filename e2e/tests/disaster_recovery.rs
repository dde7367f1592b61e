//! The disaster-recovery runbook (docs/disaster-recovery.md), followed literally on real
//! control planes (etcd + kube-apiserver from `hack/control-plane.sh`, the real
//! `kubekms-plugin` and `kubekms-operator` binaries):
//!
//! - `restore_on_a_new_host`: host A (plugin in follow mode after the hand-over, the
//!   operator) holds Secrets written under two versions of the API server's key, and a
//!   KmsKey of every key spec, a symmetric one rotated twice; ciphertexts, signatures and
//!   MACs are made with each. The backup is `etcdctl snapshot save` and a copy of
//!   `root.key`. A is stopped and its whole folder deleted. Host B is built in a new
//!   folder from the snapshot and the root key only: every Secret reads, the plugin serves
//!   the same key_id, every version of every key decrypts and verifies what A made, B's
//!   new signatures verify under A's public keys, and the operator on B rotates again.
//! - `restore_from_before_the_last_rotation`: the snapshot predates a rotation; what was
//!   made under the newer version is stated exactly.
//! - `wrong_or_lost_root_key`: every component refuses loudly, naming the root key the
//!   records need and the one given (or the missing path), and no new key is made.
//!
//! On A the ciphertexts and signatures are made by kms-core on keys unwrapped from the
//! cluster's objects by `kubekms_k8s::unwrap::key_from_objects`, the function the keyring
//! of kubekms-server and of the plugin's follow mode unwraps with; on B they are checked
//! the same way and through a real kubekms-server with the AWS SDK for Rust.

mod envelope;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, ensure};
use envelope::parse_stored;
use kms_core::keystore::{FileKeyStore, RootKeyStore};
use kms_core::ops;
use kms_core::{EncryptionAlgorithm, EncryptionContext, KeySpec, KmsKey, MessageType};
use kms_plugin::client::connect;
use kms_plugin::pb::StatusRequest;
use kms_plugin::restore::BackupObjects;
use kubekms_e2e::drill::{self, APISERVER_KEY, SYSTEM_NAMESPACE, Site};
use kubekms_e2e::{kms_server, secret_etcd_key};

const APP: &str = "dr-app";

fn phase(started: Instant, test: &str, what: &str) {
    eprintln!(
        "[e2e dr {test}] {:>6.1}s {what}",
        started.elapsed().as_secs_f64()
    );
}

/// Every key spec the CRD offers, with the usage each is checked under.
fn every_key_spec() -> Vec<(&'static str, serde_json::Value)> {
    let key = |spec: &str, usage: &str| serde_json::json!({"keySpec": spec, "keyUsage": usage});
    vec![
        ("sym", key("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT")),
        ("rsa-2048-enc", key("RSA_2048", "ENCRYPT_DECRYPT")),
        ("rsa-3072-sign", key("RSA_3072", "SIGN_VERIFY")),
        ("rsa-4096-sign", key("RSA_4096", "SIGN_VERIFY")),
        ("p256-sign", key("ECC_NIST_P256", "SIGN_VERIFY")),
        ("p384-sign", key("ECC_NIST_P384", "SIGN_VERIFY")),
        ("p521-sign", key("ECC_NIST_P521", "SIGN_VERIFY")),
        ("p256-agree", key("ECC_NIST_P256", "KEY_AGREEMENT")),
        ("k256-sign", key("ECC_SECG_P256K1", "SIGN_VERIFY")),
        ("hmac-224", key("HMAC_224", "GENERATE_VERIFY_MAC")),
        ("hmac-256", key("HMAC_256", "GENERATE_VERIFY_MAC")),
        ("hmac-384", key("HMAC_384", "GENERATE_VERIFY_MAC")),
        ("hmac-512", key("HMAC_512", "GENERATE_VERIFY_MAC")),
    ]
}

/// Creates the namespace `ns` and the KmsKeys in it; waits until each is Enabled.
fn create_keys(site: &Site, ns: &str, keys: &[(&str, serde_json::Value)]) -> Result<()> {
    site.cp.kubectl(["create", "namespace", ns])?;
    site.create_keys(ns, keys)
}

/// Every key of the cluster, unwrapped under `root_key` from its objects; fails on any
/// key that does not unwrap.
fn unwrap_all(site: &Site, root_key: &Path) -> Result<BTreeMap<String, KmsKey>> {
    drill::unwrap_all(
        &BackupObjects::parse(&site.objects_json()?)?,
        &FileKeyStore::open(root_key)?,
    )
}

fn context() -> EncryptionContext {
    EncryptionContext::from_pairs([("purpose", "disaster-recovery-drill")]).expect("context")
}

/// What A made with one key, to be checked on B.
#[derive(Debug)]
enum Made {
    /// Symmetric blobs, one per version: (version, plaintext, blob).
    Blobs(Vec<(u32, Vec<u8>, Vec<u8>)>),
    /// RSA-OAEP ciphertext.
    Oaep {
        plaintext: Vec<u8>,
        ciphertext: Vec<u8>,
    },
    /// A signature and the public key it verifies under.
    Signature {
        message: Vec<u8>,
        signature: Vec<u8>,
        public_key: Vec<u8>,
    },
    /// A MAC (deterministic: B must compute the same one).
    Mac { message: Vec<u8>, mac: Vec<u8> },
    /// A key-agreement key: its public key.
    PublicKey(Vec<u8>),
}

fn public_key(key: &KmsKey) -> Result<Vec<u8>> {
    Ok(ops::get_public_key(key)?.public_key)
}

/// Makes one piece of evidence with `key` (every retained version, for symmetric keys).
fn make(key: &KmsKey, blobs_so_far: Option<&Made>) -> Result<Made> {
    let spec = key.metadata.spec;
    let message = format!("dr drill message for {}", key.key_id()).into_bytes();
    Ok(match key.metadata.usage {
        kms_core::KeyUsage::EncryptDecrypt if spec == KeySpec::SymmetricDefault => {
            let mut blobs = match blobs_so_far {
                Some(Made::Blobs(b)) => b.clone(),
                _ => Vec::new(),
            };
            let version = key.current_material()?.0;
            let plaintext = format!("secret under v{version}").into_bytes();
            let blob = ops::encrypt(
                key,
                &plaintext,
                &context(),
                EncryptionAlgorithm::SymmetricDefault,
            )?;
            blobs.push((version, plaintext, blob));
            Made::Blobs(blobs)
        }
        kms_core::KeyUsage::EncryptDecrypt => {
            let plaintext = b"a data key wrapped by RSA".to_vec();
            let ciphertext = ops::encrypt(
                key,
                &plaintext,
                &EncryptionContext::new(),
                EncryptionAlgorithm::RsaesOaepSha256,
            )?;
            Made::Oaep {
                plaintext,
                ciphertext,
            }
        }
        kms_core::KeyUsage::SignVerify => {
            let algorithm = spec.signing_algorithms()[0];
            let signature = ops::sign(key, &message, MessageType::Raw, algorithm)?;
            Made::Signature {
                message,
                signature,
                public_key: public_key(key)?,
            }
        }
        kms_core::KeyUsage::GenerateVerifyMac => {
            let mac = ops::generate_mac(key, &message, spec.mac_algorithms()[0])?;
            Made::Mac { message, mac }
        }
        kms_core::KeyUsage::KeyAgreement => Made::PublicKey(public_key(key)?),
    })
}

/// Checks on B what A made: decrypts, verifies, and for signing keys signs anew and
/// verifies that signature with A's key (the same public key).
fn check(name: &str, made: &Made, on_b: &KmsKey, on_a: &KmsKey) -> Result<usize> {
    let spec = on_b.metadata.spec;
    match made {
        Made::Blobs(blobs) => {
            for (version, plaintext, blob) in blobs {
                let (got, used) = ops::decrypt(
                    on_b,
                    blob,
                    &context(),
                    EncryptionAlgorithm::SymmetricDefault,
                )
                .with_context(|| format!("{name}: decrypting the v{version} blob"))?;
                ensure!(
                    got.expose() == plaintext.as_slice() && used == *version,
                    "{name} v{version}: wrong plaintext or version {used}"
                );
            }
            Ok(blobs.len())
        }
        Made::Oaep {
            plaintext,
            ciphertext,
        } => {
            let (got, _) = ops::decrypt(
                on_b,
                ciphertext,
                &EncryptionContext::new(),
                EncryptionAlgorithm::RsaesOaepSha256,
            )
            .with_context(|| format!("{name}: RSA-OAEP decrypt"))?;
            ensure!(
                got.expose() == plaintext.as_slice(),
                "{name}: wrong plaintext"
            );
            ensure!(
                public_key(on_b)? == public_key(on_a)?,
                "{name}: public key changed"
            );
            Ok(1)
        }
        Made::Signature {
            message,
            signature,
            public_key: old_public,
        } => {
            let algorithm = spec.signing_algorithms()[0];
            ops::verify(on_b, message, MessageType::Raw, signature, algorithm)
                .with_context(|| format!("{name}: verifying A's signature on B"))?;
            ensure!(
                &public_key(on_b)? == old_public,
                "{name}: public key changed"
            );
            let fresh = ops::sign(on_b, b"signed on B", MessageType::Raw, algorithm)?;
            ops::verify(on_a, b"signed on B", MessageType::Raw, &fresh, algorithm)
                .with_context(|| format!("{name}: B's signature under A's key"))?;
            Ok(1)
        }
        Made::Mac { message, mac } => {
            let algorithm = spec.mac_algorithms()[0];
            ops::verify_mac(on_b, message, mac, algorithm)
                .with_context(|| format!("{name}: VerifyMac"))?;
            ensure!(
                &ops::generate_mac(on_b, message, algorithm)? == mac,
                "{name}: another MAC"
            );
            Ok(1)
        }
        Made::PublicKey(old) => {
            ensure!(&public_key(on_b)? == old, "{name}: public key changed");
            Ok(1)
        }
    }
}

/// kubekms-server on `site` with `root_key`, as its ServiceAccount (deploy/rbac), and an
/// AWS SDK client with a static credential of the user `dr-admin` (cluster-admin, account
/// `APP`) that trusts the control plane's CA.
async fn server_and_client(
    site: &Site,
    name: &str,
    root_key: &Path,
) -> Result<(kms_server::KmsServer, aws_sdk_kms::Client)> {
    let dir = site.base.join(name);
    let kms_server::AdminClientFiles {
        credential,
        credentials,
        cert,
    } = kms_server::admin_client_files(&site.cp, &dir, "dr-admin", "dr-admin", APP)?;
    let server = kms_server::KmsServer::start(
        &site.cp,
        name,
        &kms_server::ServerOptions {
            root_key: root_key.to_path_buf(),
            cert: cert.clone(),
            static_credentials: Some(credentials),
            authz_cache_seconds: 1,
            rust_log: "info".to_owned(),
            dir,
        },
    )?;
    let config = kms_server::sdk_config(
        &server.endpoint,
        std::fs::read(&cert.ca_bundle)?,
        &credential,
        "dr-static",
    )?
    .build();
    Ok((server, aws_sdk_kms::Client::from_conf(config)))
}

/// Checks through kubekms-server on B what A made (key `id` = `namespace/name`, in the
/// caller's account `APP`): every blob decrypts, A's signatures and MACs verify, the
/// public keys are A's, and a signature made by the server verifies under A's key.
async fn check_through_server(
    kms: &aws_sdk_kms::Client,
    key_id: &str,
    made: &Made,
    on_a: &KmsKey,
) -> Result<usize> {
    use aws_sdk_kms::primitives::Blob;
    use aws_sdk_kms::types::{EncryptionAlgorithmSpec, MacAlgorithmSpec, SigningAlgorithmSpec};
    let spec = on_a.metadata.spec;
    let public_key = || async {
        let answer = kms.get_public_key().key_id(key_id).send().await?;
        Ok::<_, anyhow::Error>(answer.public_key.map(Blob::into_inner).unwrap_or_default())
    };
    match made {
        Made::Blobs(blobs) => {
            for (version, plaintext, blob) in blobs {
                let answer = kms
                    .decrypt()
                    .key_id(key_id)
                    .ciphertext_blob(Blob::new(blob.clone()))
                    .encryption_context("purpose", "disaster-recovery-drill")
                    .send()
                    .await
                    .with_context(|| format!("server Decrypt of {key_id} v{version}"))?;
                ensure!(
                    answer.plaintext.map(Blob::into_inner).as_deref() == Some(plaintext.as_slice()),
                    "{key_id} v{version}: the server's plaintext differs"
                );
            }
            Ok(blobs.len())
        }
        Made::Oaep {
            plaintext,
            ciphertext,
        } => {
            let answer = kms
                .decrypt()
                .key_id(key_id)
                .ciphertext_blob(Blob::new(ciphertext.clone()))
                .encryption_algorithm(EncryptionAlgorithmSpec::RsaesOaepSha256)
                .send()
                .await
                .with_context(|| format!("server RSA-OAEP Decrypt of {key_id}"))?;
            ensure!(
                answer.plaintext.map(Blob::into_inner).as_deref() == Some(plaintext.as_slice())
            );
            Ok(1)
        }
        Made::Signature {
            message,
            signature,
            public_key: old,
        } => {
            let algorithm = SigningAlgorithmSpec::from(spec.signing_algorithms()[0].as_str());
            let answer = kms
                .verify()
                .key_id(key_id)
                .message(Blob::new(message.clone()))
                .message_type(aws_sdk_kms::types::MessageType::Raw)
                .signature(Blob::new(signature.clone()))
                .signing_algorithm(algorithm.clone())
                .send()
                .await
                .with_context(|| format!("server Verify of A's signature, {key_id}"))?;
            ensure!(
                answer.signature_valid,
                "{key_id}: A's signature is not valid on B"
            );
            ensure!(
                &public_key().await? == old,
                "{key_id}: the server's public key is not A's"
            );
            let signed = kms
                .sign()
                .key_id(key_id)
                .message(Blob::new(b"signed by the server on B".to_vec()))
                .message_type(aws_sdk_kms::types::MessageType::Raw)
                .signing_algorithm(algorithm)
                .send()
                .await?;
            let fresh = signed.signature.map(Blob::into_inner).unwrap_or_default();
            ops::verify(
                on_a,
                b"signed by the server on B",
                MessageType::Raw,
                &fresh,
                spec.signing_algorithms()[0],
            )
            .with_context(|| format!("{key_id}: the server's new signature under A's key"))?;
            Ok(1)
        }
        Made::Mac { message, mac } => {
            let algorithm = MacAlgorithmSpec::from(spec.mac_algorithms()[0].as_str());
            let answer = kms
                .verify_mac()
                .key_id(key_id)
                .message(Blob::new(message.clone()))
                .mac(Blob::new(mac.clone()))
                .mac_algorithm(algorithm)
                .send()
                .await
                .with_context(|| format!("server VerifyMac, {key_id}"))?;
            ensure!(answer.mac_valid, "{key_id}: A's MAC is not valid on B");
            Ok(1)
        }
        Made::PublicKey(old) => {
            ensure!(
                &public_key().await? == old,
                "{key_id}: the server's public key is not A's"
            );
            Ok(1)
        }
    }
}

/// Status of the plugin as kube-apiserver sees it: (healthz, key_id).
async fn plugin_status(site: &Site) -> Result<(String, String)> {
    let mut client = connect(&site.socket).await?;
    let status = client.status(StatusRequest {}).await?.into_inner();
    Ok((status.healthz, status.key_id))
}

async fn wait_plugin_key_id(site: &Site, wanted: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = plugin_status(site).await;
        if matches!(&status, Ok((h, k)) if h == "ok" && k == wanted) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the plugin does not serve {wanted} after 60 s: {status:?}; log {}",
            site.cp.log_path("kms-plugin").display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The key_id a Secret is stored under in etcd (checked: no plaintext).
fn stored_key_id(site: &Site, name: &str, value: &str) -> Result<String> {
    let key = secret_etcd_key(APP, name);
    let bytes = site
        .cp
        .etcd_get(&key)?
        .ok_or_else(|| anyhow!("etcd has no {key}"))?;
    Ok(parse_stored(&bytes, &[value.as_bytes()])?.key_id)
}

/// The API server's KmsKey's `status.keyId`.
fn apiserver_key_id(site: &Site) -> Result<String> {
    site.get_json("kmskey", SYSTEM_NAMESPACE, APISERVER_KEY)?
        .pointer("/status/keyId")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no status.keyId"))
}

/// The backup of the runbook: the snapshot and a copy of the root key, outside the host.
struct Backup {
    dir: tempfile::TempDir,
}

impl Backup {
    fn take(site: &Site) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        site.snapshot(&dir.path().join("etcd.db"))?;
        kubekms_e2e::drill::put_back_root_key(
            &site.plugin_state.join("root.key"),
            &dir.path().join("root.key"),
        )?;
        Ok(Self { dir })
    }
    fn snapshot(&self) -> std::path::PathBuf {
        self.dir.path().join("etcd.db")
    }
    fn root_key(&self) -> std::path::PathBuf {
        self.dir.path().join("root.key")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_on_a_new_host() -> Result<()> {
    let started = Instant::now();
    let t = "new-host";
    let a = Site::install("a")?;
    phase(
        started,
        t,
        "host A up, apiserver-key handed over to the operator",
    );
    let key_uuid = apiserver_key_id(&a)?;
    wait_plugin_key_id(&a, &format!("{key_uuid}/v1")).await?;

    let mut secrets = BTreeMap::new();
    let specs = every_key_spec();
    create_keys(&a, APP, &specs)?;
    phase(started, t, "every key spec Enabled on A");
    for i in 0..3 {
        let (name, value) = (format!("before-{i}"), format!("value-before-rotation-{i}"));
        a.cp.create_secret(APP, &name, &value)?;
        secrets.insert(name, value);
    }
    ensure!(stored_key_id(&a, "before-0", "value-before-rotation-0")? == format!("{key_uuid}/v1"));

    // Evidence under every version: the symmetric key is rotated twice.
    let mut made: BTreeMap<String, Made> = BTreeMap::new();
    let keys_a = unwrap_all(&a, &a.plugin_state.join("root.key"))?;
    for (id, key) in &keys_a {
        made.insert(id.clone(), make(key, None)?);
    }
    for (round, versions) in [("r1", 2), ("r2", 3)] {
        a.rotate(APP, "sym", round, versions)?;
        let sym = &unwrap_all(&a, &a.plugin_state.join("root.key"))?[&format!("{APP}/sym")];
        let so_far = made.remove(&format!("{APP}/sym"));
        made.insert(format!("{APP}/sym"), make(sym, so_far.as_ref())?);
    }
    // The API server's key rotated once: the plugin serves v2 at once, kube-apiserver
    // writes under it after its next Status poll (within a minute).
    a.rotate(SYSTEM_NAMESPACE, APISERVER_KEY, "r1", 2)?;
    wait_plugin_key_id(&a, &format!("{key_uuid}/v2")).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0.. {
        let (name, value) = (format!("after-{i}"), format!("value-after-rotation-{i}"));
        a.cp.create_secret(APP, &name, &value)?;
        let under = stored_key_id(&a, &name, &value)?;
        secrets.insert(name, value);
        if under == format!("{key_uuid}/v2") {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "kube-apiserver still writes under {under} after 120 s"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    phase(
        started,
        t,
        &format!(
            "{} Secrets under v1 and v2 of the API server's key",
            secrets.len()
        ),
    );
    let keys_a = unwrap_all(&a, &a.plugin_state.join("root.key"))?;
    let records_a =
        a.cp.kubectl(["get", "kmskeymaterials", "-A", "-o", "json"])?
            .stdout;

    // Backup, checked as the runbook says, then the disaster: A and its folder are gone.
    let backup = Backup::take(&a)?;
    let checked = kubekms_e2e::drill::check_backup(&backup.snapshot(), &backup.root_key())?;
    let report = String::from_utf8_lossy(&checked.stdout);
    ensure!(
        checked.status.success()
            && report.contains(&format!("{} keys, ", keys_a.len()))
            && report.contains("; 0 unusable"),
        "hack/dr-check-backup.sh: {report}\n{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    a.destroy()?;
    phase(started, t, "snapshot and root key saved; host A destroyed");

    let restore_started = Instant::now();
    let mut b = Site::restore("b", &backup.snapshot(), Some(&backup.root_key()))?;
    let up_seconds = restore_started.elapsed().as_secs_f64();
    let plugin_log = std::fs::read_to_string(b.cp.log_path("kms-plugin"))?;
    ensure!(
        plugin_log.contains(&format!("{} keys, ", keys_a.len()))
            && plugin_log.contains("; 0 unusable"),
        "kubekms-plugin verify did not report every key usable:\n{plugin_log}"
    );
    ensure!(
        plugin_log.contains(&format!("key_id {key_uuid}/v2")),
        "restore output:\n{plugin_log}"
    );
    wait_plugin_key_id(&b, &format!("{key_uuid}/v2")).await?;
    b.cp.check_all_read(APP, &secrets, "on the restored host B")?;
    phase(
        started,
        t,
        &format!("B up from the backup in {up_seconds:.1}s; every Secret reads"),
    );

    // The operator on B, on the root key put back: every key as on A.
    let root_b = b.plugin_state.join("root.key");
    b.start_operator(&root_b, &[])?;
    let keys_b = unwrap_all(&b, &root_b)?;
    ensure!(
        keys_b.len() == keys_a.len(),
        "{} keys on B, {} on A",
        keys_b.len(),
        keys_a.len()
    );
    let mut checked = 0;
    for (id, evidence) in &made {
        let on_b = keys_b.get(id).ok_or_else(|| anyhow!("{id} missing on B"))?;
        let on_a = &keys_a[id];
        ensure!(on_b.key_id() == on_a.key_id(), "{id}: another key id on B");
        ensure!(
            on_b.material_versions().collect::<Vec<_>>()
                == on_a.material_versions().collect::<Vec<_>>(),
            "{id}: other versions on B"
        );
        checked += check(id, evidence, on_b, on_a)?;
    }
    let records_b =
        b.cp.kubectl(["get", "kmskeymaterials", "-A", "-o", "json"])?
            .stdout;
    let specs_of = |json: &[u8]| -> Result<Vec<serde_json::Value>> {
        let v: serde_json::Value = serde_json::from_slice(json)?;
        Ok(v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| i["spec"].clone())
            .collect())
    };
    ensure!(
        specs_of(&records_a)? == specs_of(&records_b)?,
        "the records changed in the restore"
    );
    phase(
        started,
        t,
        &format!(
            "{checked} ciphertexts, signatures and MACs of {} keys check on B",
            made.len()
        ),
    );

    // The same through kubekms-server on B, started on the root key put back.
    let (mut server, kms) = server_and_client(&b, "kubekms-server-b", &root_b).await?;
    let mut through_server = 0;
    for (id, evidence) in made
        .iter()
        .filter(|(id, _)| id.starts_with(&format!("{APP}/")))
    {
        let key_id = keys_a[id].key_id().to_string();
        through_server += check_through_server(&kms, &key_id, evidence, &keys_a[id]).await?;
    }
    server.process.stop()?;
    phase(
        started,
        t,
        &format!("{through_server} checks through kubekms-server on B"),
    );

    // The operator on B runs the keys: a rotation (after the restored Lease of A's
    // operator expired) adds version 4, and every older one still decrypts.
    b.rotate(APP, "sym", "r3", 4)?;
    let sym_b = &unwrap_all(&b, &root_b)?[&format!("{APP}/sym")];
    let evidence = make(sym_b, made.get(&format!("{APP}/sym")))?;
    ensure!(check("sym after a rotation on B", &evidence, sym_b, sym_b)? == 4);
    b.cp.create_secret(APP, "written-on-b", "value-written-on-b")?;
    ensure!(b.cp.read_secret(APP, "written-on-b")? == "value-written-on-b");
    phase(
        started,
        t,
        &format!(
            "operator on B rotated sym to v4; restore to all checked: {:.1}s",
            restore_started.elapsed().as_secs_f64()
        ),
    );
    b.stop_operator();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_from_before_the_last_rotation() -> Result<()> {
    let started = Instant::now();
    let t = "older-snapshot";
    let a = Site::install("a-old")?;
    let key_uuid = apiserver_key_id(&a)?;
    create_keys(
        &a,
        APP,
        &[("sym", serde_json::json!({"keySpec": "SYMMETRIC_DEFAULT"}))],
    )?;
    a.cp.create_secret(APP, "in-snapshot", "value-in-snapshot")?;
    let root_a = a.plugin_state.join("root.key");
    let sym_v1 = unwrap_all(&a, &root_a)?
        .remove(&format!("{APP}/sym"))
        .ok_or_else(|| anyhow!("no sym"))?;
    let v1 = make(&sym_v1, None)?;
    let backup = Backup::take(&a)?;
    phase(
        started,
        t,
        "snapshot taken with sym and apiserver-key at v1",
    );

    // After the snapshot: both keys rotate, a blob is made under sym v2, a Secret written.
    a.rotate(APP, "sym", "r1", 2)?;
    a.rotate(SYSTEM_NAMESPACE, APISERVER_KEY, "r1", 2)?;
    wait_plugin_key_id(&a, &format!("{key_uuid}/v2")).await?;
    let sym_v2 = unwrap_all(&a, &root_a)?
        .remove(&format!("{APP}/sym"))
        .ok_or_else(|| anyhow!("no sym"))?;
    let lost_blob = ops::encrypt(
        &sym_v2,
        b"made under v2 after the snapshot",
        &context(),
        EncryptionAlgorithm::SymmetricDefault,
    )?;
    a.cp.create_secret(APP, "after-snapshot", "value-after-snapshot")?;
    a.destroy()?;
    phase(started, t, "rotated after the snapshot; host A destroyed");

    let mut b = Site::restore("b-old", &backup.snapshot(), Some(&backup.root_key()))?;
    // The restored record holds v1 only: the plugin serves v1 again.
    wait_plugin_key_id(&b, &format!("{key_uuid}/v1")).await?;
    ensure!(b.cp.read_secret(APP, "in-snapshot")? == "value-in-snapshot");
    let missing =
        b.cp.read_secret(APP, "after-snapshot")
            .expect_err("a Secret written after the snapshot");
    ensure!(format!("{missing:#}").contains("NotFound"), "{missing:#}");
    let root_b = b.plugin_state.join("root.key");
    b.start_operator(&root_b, &[])?;
    let sym_b = unwrap_all(&b, &root_b)?
        .remove(&format!("{APP}/sym"))
        .ok_or_else(|| anyhow!("no sym"))?;
    ensure!(sym_b.material_versions().collect::<Vec<_>>() == [1]);
    check("sym v1", &v1, &sym_b, &sym_v1)?;
    // A blob of the lost version names version 2, which the restored key does not hold.
    let err = ops::decrypt(
        &sym_b,
        &lost_blob,
        &context(),
        EncryptionAlgorithm::SymmetricDefault,
    )
    .expect_err("v2 was made after the snapshot");
    eprintln!(
        "[e2e dr {t}] the lost v2 blob on B: {} ({err})",
        err.aws_exception_name()
    );
    ensure!(
        err.aws_exception_name() == "InvalidCiphertextException",
        "{err}"
    );

    // The operator on B rotates again: a new version 2, other material under the same
    // number. The lost blob still fails; B's own v2 blob decrypts.
    b.rotate(APP, "sym", "r1-after-restore", 2)?;
    let sym_b2 = unwrap_all(&b, &root_b)?
        .remove(&format!("{APP}/sym"))
        .ok_or_else(|| anyhow!("no sym"))?;
    let err = ops::decrypt(
        &sym_b2,
        &lost_blob,
        &context(),
        EncryptionAlgorithm::SymmetricDefault,
    )
    .expect_err("the new v2 is other material");
    eprintln!(
        "[e2e dr {t}] the lost v2 blob after B's rotation: {} ({err})",
        err.aws_exception_name()
    );
    ensure!(
        err.aws_exception_name() == "InvalidCiphertextException",
        "{err}"
    );
    ensure!(
        !sym_b2
            .material(2)
            .expect("v2")
            .same_as(sym_v2.material(2).expect("v2"))
    );
    let fresh = make(&sym_b2, Some(&v1))?;
    ensure!(check("sym v1 and B's v2", &fresh, &sym_b2, &sym_b2)? == 2);
    phase(
        started,
        t,
        "older snapshot: v1 and its Secrets restored, v2 lost as stated",
    );
    b.stop_operator();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_or_lost_root_key() -> Result<()> {
    let started = Instant::now();
    let t = "root-key";
    let a = Site::install("a-key")?;
    let needed = FileKeyStore::open(&a.plugin_state.join("root.key"))?.root_key_id();
    a.cp.create_secret("default", "kept", "value-kept")?;
    create_keys(
        &a,
        APP,
        &[("sym", serde_json::json!({"keySpec": "SYMMETRIC_DEFAULT"}))],
    )?;
    let sym_a = unwrap_all(&a, &a.plugin_state.join("root.key"))?
        .remove(&format!("{APP}/sym"))
        .ok_or_else(|| anyhow!("no sym"))?;
    let blob = ops::encrypt(
        &sym_a,
        b"kept by an application",
        &context(),
        EncryptionAlgorithm::SymmetricDefault,
    )?;
    let backup = Backup::take(&a)?;
    a.destroy()?;
    phase(started, t, "host A backed up and destroyed");

    let scratch = tempfile::tempdir()?;
    let wrong_key = scratch.path().join("wrong-root.key");
    let wrong = FileKeyStore::init(&wrong_key)?.root_key_id();

    // The backup check with the wrong root key fails, naming both root keys.
    let checked = kubekms_e2e::drill::check_backup(&backup.snapshot(), &wrong_key)?;
    let report = String::from_utf8_lossy(&checked.stdout);
    ensure!(
        !checked.status.success()
            && report.contains(&format!(
                "wrapped under root key {needed}, but this root key is {wrong}"
            )),
        "hack/dr-check-backup.sh with the wrong root key: {report}\n{}",
        String::from_utf8_lossy(&checked.stderr)
    );

    // A wrong root key: `verify` (the runbook's check before anything is written) refuses,
    // naming the root key the records need and the one given; the plugin never starts and
    // its folder holds no key.
    let failed = Site::try_restore("b-wrong", &backup.snapshot(), Some(&wrong_key))?
        .err()
        .ok_or_else(|| anyhow!("a restore with the wrong root key came up"))?;
    let log = &failed.plugin_log;
    ensure!(
        log.contains(&format!(
            "wrapped under root key {needed}, but this root key is {wrong}"
        )),
        "verify does not name both root keys:\n{log}"
    );
    ensure!(log.contains("do not unwrap under"), "{log}");
    ensure!(
        failed.up_stderr.contains("kms-plugin"),
        "up does not name the plugin: {}",
        failed.up_stderr
    );
    ensure!(
        !failed.plugin_state.join("active-key.json").exists()
            && !failed.plugin_state.join("keys").exists(),
        "a key was written"
    );
    let objects = failed
        .plugin_state
        .parent()
        .map(|p| p.join("kubekms-objects.json"))
        .ok_or_else(|| anyhow!("no parent"))?;
    // `restore` alone says the same and writes nothing.
    let plugin_bin = kubekms_e2e::process::sibling_bin("KUBEKMS_PLUGIN_BIN", "kubekms-plugin")?;
    let restore = std::process::Command::new(&plugin_bin)
        .arg("restore")
        .arg("--state-dir")
        .arg(&failed.plugin_state)
        .args([
            "--follow",
            &kubekms_e2e::drill::apiserver_target(),
            "--objects",
        ])
        .arg(&objects)
        .output()?;
    let text = String::from_utf8_lossy(&restore.stderr);
    ensure!(
        !restore.status.success() && text.contains(&needed) && text.contains(&wrong),
        "restore: {text}"
    );
    ensure!(
        !failed.plugin_state.join("active-key.json").exists(),
        "restore wrote a key"
    );
    // `serve` on that folder refuses too: no implicit init, no new key.
    let serve = std::process::Command::new(&plugin_bin)
        .arg("serve")
        .arg("--state-dir")
        .arg(&failed.plugin_state)
        .arg("--socket")
        .arg(scratch.path().join("s.sock"))
        .output()?;
    let text = String::from_utf8_lossy(&serve.stderr);
    ensure!(
        !serve.status.success() && text.contains("not initialised"),
        "serve: {text}"
    );
    ensure!(
        !failed.plugin_state.join("active-key.json").exists(),
        "serve made a key"
    );
    phase(
        started,
        t,
        "wrong root key refused by verify, restore and serve",
    );

    // The root key lost: the message names the missing path and the root key needed.
    let lost = Site::try_restore("b-lost", &backup.snapshot(), None)?
        .err()
        .ok_or_else(|| anyhow!("a restore without a root key came up"))?;
    let log = &lost.plugin_log;
    let path = lost.plugin_state.join("root.key");
    ensure!(
        log.contains(&format!("the root key file {} is missing", path.display()))
            && log.contains(&needed),
        "no message naming the missing root key and the one needed:\n{log}"
    );
    ensure!(
        !path.exists() && !lost.plugin_state.join("keys").exists(),
        "a root key or key was made"
    );
    phase(started, t, "lost root key named by path and id");

    // The right root key for the plugin, but the operator given a wrong one: every key
    // turns Invalid naming both root keys, and no record is touched.
    let mut b = Site::restore("b-right", &backup.snapshot(), Some(&backup.root_key()))?;
    ensure!(b.cp.read_secret("default", "kept")? == "value-kept");
    let before = b.get_json("kmskeymaterial", SYSTEM_NAMESPACE, APISERVER_KEY)?;
    b.start_operator(&wrong_key, &[])?;
    let invalid = b.wait_key(SYSTEM_NAMESPACE, APISERVER_KEY, "Invalid", |k| {
        k.pointer("/status/conditions")
            .and_then(|c| c.as_array())
            .is_some_and(|c| {
                c.iter().any(|c| {
                    c["type"] == "Ready" && c["status"] == "False" && c["reason"] == "Invalid"
                })
            })
    })?;
    let message = invalid.to_string();
    ensure!(
        message.contains(&needed) && message.contains(&wrong),
        "the Invalid condition does not name both root keys: {message}"
    );
    b.stop_operator();
    let after = b.get_json("kmskeymaterial", SYSTEM_NAMESPACE, APISERVER_KEY)?;
    ensure!(
        before["spec"] == after["spec"],
        "the operator with the wrong root key changed the record"
    );
    phase(
        started,
        t,
        "operator with the wrong root key: Invalid, naming both, record untouched",
    );

    // kubekms-server on the wrong root key: ready (it serves the keys it can), but the
    // key answers KeyUnavailableException and its log names both root keys.
    let (mut server, kms) = server_and_client(&b, "kubekms-server-wrong", &wrong_key).await?;
    let refused = kms
        .decrypt()
        .key_id(sym_a.key_id().to_string())
        .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(blob.clone()))
        .encryption_context("purpose", "disaster-recovery-drill")
        .send()
        .await
        .err()
        .ok_or_else(|| anyhow!("the server decrypted under the wrong root key"))?
        .into_service_error();
    let code = aws_sdk_kms::error::ProvideErrorMetadata::code(&refused)
        .unwrap_or_default()
        .to_owned();
    let text = aws_sdk_kms::error::ProvideErrorMetadata::message(&refused)
        .unwrap_or_default()
        .to_owned();
    ensure!(
        code == "KeyUnavailableException" && text.contains("wrapped under another root key"),
        "server answer with the wrong root key: {code}: {text}"
    );
    let log = server.process.log();
    ensure!(
        log.contains("KmsKeyMaterial not usable") && log.contains(&needed) && log.contains(&wrong),
        "the server log does not name both root keys:\n{log}"
    );
    server.process.stop()?;
    phase(
        started,
        t,
        "kubekms-server on the wrong root key: KeyUnavailableException, log names both",
    );

    // `--init-root-key` on a restored cluster whose root key is not there: refused, no file.
    let new_key = scratch.path().join("new-root.key");
    // Bounded: an operator that accepted would run on; the new file is the evidence.
    let mut operator = b
        .operator_command(&new_key, &["--init-root-key"])?
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = operator.try_wait()? {
            break Some(status);
        }
        if new_key.exists() || Instant::now() > deadline {
            let _ = operator.kill();
            let _ = operator.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = std::fs::read_to_string(b.cp.log_path("kubekms-operator"))?;
    ensure!(
        status.is_some_and(|s| !s.success()),
        "the operator did not refuse --init-root-key ({status:?}):\n{text}"
    );
    ensure!(!new_key.exists(), "the operator made a new root key");
    ensure!(
        text.contains("refusing to create a new root key") && text.contains(&needed),
        "{text}"
    );
    phase(
        started,
        t,
        "operator --init-root-key refused on a restored cluster",
    );
    wait_plugin_key_id(&b, &format!("{}/v1", apiserver_key_id(&b)?)).await?;
    Ok(())
}
