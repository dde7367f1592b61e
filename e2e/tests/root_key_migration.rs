//! Migrating a running cluster from its root key file to root keys in a PKCS#11 token
//! (SoftHSM2), as docs/hsm.md ("Migrating from a root key file") says, on a real control
//! plane (etcd + kube-apiserver, the real plugin in follow mode, the real operator):
//!
//! 1. A cluster on `root.key` (`Site::install`): Secrets written under two versions of the
//!    API server's key, KmsKeys of several specs (a symmetric one rotated), ciphertexts,
//!    signatures and MACs made with every key, unwrapped under the file.
//! 2. The operator restarted with the token (`--init-root-key` creates its keys) and
//!    `--previous-root-key-file root.key`, paced at 2 records a second; SIGKILLed once some
//!    records are moved and some are not; `kubekms-plugin migrate-root-key` on the plugin's
//!    folder and the plugin restarted meanwhile; the operator started again: it finishes.
//! 3. Every KmsKeyMaterial version is wrap format 3 under the token's root key id;
//!    `kubekms-plugin verify` with the token only passes; a rotation under the token.
//! 4. `root.key` deleted; the plugin (token only) and kube-apiserver restarted: every Secret
//!    reads back; in a child process holding the token only, every version of every key
//!    decrypts, signs and MACs as before; kubekms-server with the token serves Encrypt and
//!    Decrypt of old and new ciphertexts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keystore_pkcs11::Pkcs11KeyStore;
use keystore_pkcs11::softhsm::SoftHsmToken;
use kms_core::keystore::{FileKeyStore, RootKeyStore};
use kms_core::ops;
use kms_core::{EncryptionAlgorithm, EncryptionContext, KeySpec, KmsKey, MessageType};
use kms_plugin::restore::BackupObjects;
use kubekms_e2e::drill::{APISERVER_KEY, SYSTEM_NAMESPACE, Site, unwrap_all};
use kubekms_e2e::kms_server;
use kubekms_e2e::process::sibling_bin;

const APP: &str = "migrate-app";
const LABEL: &str = "kubekms-migrate";
/// Set in the child process that checks the keys under the token only: the folder with
/// `objects.json` and `evidence.json`.
const CHILD_ENV: &str = "KUBEKMS_E2E_MIGRATION_CHILD";
const TIMEOUT: Duration = Duration::from_secs(240);

fn phase(started: Instant, what: &str) {
    eprintln!(
        "[e2e migrate] {:>6.1}s {what}",
        started.elapsed().as_secs_f64()
    );
}

fn app_keys() -> Vec<(String, serde_json::Value)> {
    let key = |spec: &str, usage: &str| serde_json::json!({"keySpec": spec, "keyUsage": usage});
    let mut keys = vec![
        (
            "sym".to_owned(),
            key("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"),
        ),
        (
            "rsa-2048-enc".to_owned(),
            key("RSA_2048", "ENCRYPT_DECRYPT"),
        ),
        ("p256-sign".to_owned(), key("ECC_NIST_P256", "SIGN_VERIFY")),
        (
            "hmac-256".to_owned(),
            key("HMAC_256", "GENERATE_VERIFY_MAC"),
        ),
    ];
    // More records, so that a kill at 2 records a second lands mid-migration.
    for i in 0..8 {
        keys.push((
            format!("extra-{i}"),
            key("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"),
        ));
    }
    keys
}

fn context() -> EncryptionContext {
    EncryptionContext::from_pairs([("purpose", "root-key-migration")]).expect("context")
}

/// What one key made before the migration, as JSON (bytes in base64).
fn make(key: &KmsKey) -> Result<serde_json::Value> {
    let spec = key.metadata.spec;
    let message = format!("migration message for {}", key.key_id()).into_bytes();
    Ok(match key.metadata.usage {
        kms_core::KeyUsage::EncryptDecrypt if spec == KeySpec::SymmetricDefault => {
            let version = key.current_material()?.0;
            let plaintext = format!("secret under v{version}").into_bytes();
            let blob = ops::encrypt(
                key,
                &plaintext,
                &context(),
                EncryptionAlgorithm::SymmetricDefault,
            )?;
            serde_json::json!({"kind": "blob", "version": version, "plaintext": B64.encode(plaintext), "blob": B64.encode(blob)})
        }
        kms_core::KeyUsage::EncryptDecrypt => {
            let plaintext = b"a data key wrapped by RSA".to_vec();
            let ciphertext = ops::encrypt(
                key,
                &plaintext,
                &EncryptionContext::new(),
                EncryptionAlgorithm::RsaesOaepSha256,
            )?;
            serde_json::json!({"kind": "oaep", "plaintext": B64.encode(plaintext), "ciphertext": B64.encode(ciphertext)})
        }
        kms_core::KeyUsage::SignVerify => {
            let algorithm = spec.signing_algorithms()[0];
            let signature = ops::sign(key, &message, MessageType::Raw, algorithm)?;
            serde_json::json!({"kind": "signature", "message": B64.encode(message), "signature": B64.encode(signature),
                "public_key": B64.encode(ops::get_public_key(key)?.public_key)})
        }
        kms_core::KeyUsage::GenerateVerifyMac => {
            let mac = ops::generate_mac(key, &message, spec.mac_algorithms()[0])?;
            serde_json::json!({"kind": "mac", "message": B64.encode(message), "mac": B64.encode(mac)})
        }
        kms_core::KeyUsage::KeyAgreement => {
            serde_json::json!({"kind": "public_key", "public_key": B64.encode(ops::get_public_key(key)?.public_key)})
        }
    })
}

fn bytes(v: &serde_json::Value, field: &str) -> Result<Vec<u8>> {
    Ok(B64.decode(
        v[field]
            .as_str()
            .ok_or_else(|| anyhow!("no {field} in {v}"))?,
    )?)
}

/// Checks what `make` made with the key as unwrapped now.
fn check(name: &str, made: &serde_json::Value, key: &KmsKey) -> Result<()> {
    let spec = key.metadata.spec;
    match made["kind"].as_str() {
        Some("blob") => {
            let (got, used) = ops::decrypt(
                key,
                &bytes(made, "blob")?,
                &context(),
                EncryptionAlgorithm::SymmetricDefault,
            )
            .with_context(|| format!("{name}: decrypt"))?;
            ensure!(
                got.expose() == bytes(made, "plaintext")?.as_slice(),
                "{name}: wrong plaintext"
            );
            ensure!(
                Some(u64::from(used)) == made["version"].as_u64(),
                "{name}: version {used}"
            );
        }
        Some("oaep") => {
            let (got, _) = ops::decrypt(
                key,
                &bytes(made, "ciphertext")?,
                &EncryptionContext::new(),
                EncryptionAlgorithm::RsaesOaepSha256,
            )
            .with_context(|| format!("{name}: RSA-OAEP decrypt"))?;
            ensure!(
                got.expose() == bytes(made, "plaintext")?.as_slice(),
                "{name}: wrong plaintext"
            );
        }
        Some("signature") => {
            let algorithm = spec.signing_algorithms()[0];
            ensure!(
                ops::get_public_key(key)?.public_key == bytes(made, "public_key")?,
                "{name}: public key changed"
            );
            ops::verify(
                key,
                &bytes(made, "message")?,
                MessageType::Raw,
                &bytes(made, "signature")?,
                algorithm,
            )?;
            // A new signature by the private key as unwrapped now verifies under the old
            // public key: the private material is the same.
            let fresh = ops::sign(key, b"signed after", MessageType::Raw, algorithm)?;
            ops::verify(key, b"signed after", MessageType::Raw, &fresh, algorithm)?;
        }
        Some("mac") => {
            let mac = ops::generate_mac(key, &bytes(made, "message")?, spec.mac_algorithms()[0])?;
            ensure!(mac == bytes(made, "mac")?, "{name}: another MAC");
        }
        Some("public_key") => {
            ensure!(
                ops::get_public_key(key)?.public_key == bytes(made, "public_key")?,
                "{name}: public key changed"
            );
        }
        other => anyhow::bail!("{name}: unknown evidence {other:?}"),
    }
    Ok(())
}

/// Per record (`namespace/name`): its `rootKeyId`, and per version the wrap format and
/// the root key id in the wrapped material's header.
type RecordWraps = BTreeMap<String, (String, Vec<(u8, String)>)>;

/// `kubectl get kmskeymaterials -A`: (namespace/name, root key id, first byte and root key
/// id of each version's wrapped material).
fn record_wraps(site: &Site) -> Result<RecordWraps> {
    let out = site
        .cp
        .kubectl(["get", "kmskeymaterials", "-A", "-o", "json"])?;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut records = BTreeMap::new();
    for item in list["items"].as_array().into_iter().flatten() {
        let id = format!(
            "{}/{}",
            item.pointer("/metadata/namespace")
                .and_then(|v| v.as_str())
                .unwrap_or_default(),
            item.pointer("/metadata/name")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
        );
        let root = item
            .pointer("/spec/rootKeyId")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned();
        let mut versions = Vec::new();
        for v in item
            .pointer("/spec/versions")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            let wrapped = B64.decode(v["wrapped"].as_str().unwrap_or_default())?;
            versions.push((
                wrapped.first().copied().unwrap_or(0),
                kms_core::keystore::wrapped_root_key_id(&wrapped).unwrap_or_default(),
            ));
        }
        records.insert(id, (root, versions));
    }
    Ok(records)
}

/// Records whose every version is format 3 under `hsm_id`, and the others.
fn split_moved(records: &RecordWraps, hsm_id: &str) -> (usize, usize) {
    let moved = records
        .values()
        .filter(|(root, versions)| {
            root == hsm_id && versions.iter().all(|(f, id)| *f == 3 && id == hsm_id)
        })
        .count();
    (moved, records.len() - moved)
}

fn operator(
    site: &Site,
    token: &SoftHsmToken,
    previous: Option<&Path>,
    extra: &[&str],
) -> Result<Child> {
    let mut flags: Vec<std::ffi::OsString> = token.flags().into_iter().map(Into::into).collect();
    if let Some(previous) = previous {
        flags.push("--previous-root-key-file".into());
        flags.push(previous.into());
    }
    let mut args = vec!["--root-key-migration-records-per-second", "2"];
    args.extend_from_slice(extra);
    let (env, conf) = token.env();
    Ok(site
        .operator_command_with(&flags, "migrate-operator", &args)?
        .env(env, conf)
        .spawn()?)
}

fn plugin(site: &Site, token: &SoftHsmToken, args: &[&str]) -> Result<std::process::Output> {
    let (env, conf) = token.env();
    Ok(Command::new(&site.plugin_bin)
        .args(args)
        .env(env, conf)
        .stdin(Stdio::null())
        .output()?)
}

/// `kubekms-plugin migrate-root-key` on the plugin's folder, to the token.
fn migrate_plugin_folder(site: &Site, token: &SoftHsmToken) -> Result<std::process::Output> {
    let mut args = vec![
        "migrate-root-key".to_owned(),
        "--state-dir".to_owned(),
        site.plugin_state.display().to_string(),
    ];
    args.extend(token.flags());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    plugin(site, token, &argv)
}

/// Restarts the plugin with the token's configuration in its environment, then
/// kube-apiserver (which then asks the plugin to decrypt every DEK again).
fn restart_plugin_and_apiserver(site: &Site, token: &SoftHsmToken) -> Result<()> {
    let mut argv = site.cp.argv_of("kms-plugin")?;
    // argv_of gives the command line; drop an `env SOFTHSM2_CONF=...` prefix of before.
    if argv.first().map(String::as_str) == Some("env") {
        argv.drain(..2);
    }
    let mut with_env = vec![
        "env".to_owned(),
        format!("SOFTHSM2_CONF={}", token.conf.display()),
    ];
    with_env.extend(argv);
    site.cp.stop_process("kms-plugin")?;
    site.cp.start_process("kms-plugin", &with_env)?;
    let apiserver = site.cp.argv_of("kube-apiserver")?;
    site.cp.stop_process("kube-apiserver")?;
    site.cp.start_process("kube-apiserver", &apiserver)?;
    site.cp.wait_apiserver_ready()
}

fn read_all_secrets(site: &Site, secrets: &BTreeMap<String, String>) -> Result<()> {
    for (name, value) in secrets {
        let got = site
            .cp
            .read_secret(APP, name)
            .with_context(|| format!("Secret {name}"))?;
        ensure!(&got == value, "Secret {name} reads {got:?}, not {value:?}");
    }
    Ok(())
}

/// The child: opens the token only and checks every key against the evidence.
fn child_check(folder: &Path) -> Result<()> {
    let token_config: keystore_pkcs11::Pkcs11Config = keystore_pkcs11::Pkcs11Config {
        module: keystore_pkcs11::softhsm::SOFTHSM_MODULE.into(),
        token_label: LABEL.to_owned(),
        pin_file: folder.join("token").join("hsm.pin"),
    };
    let store = Pkcs11KeyStore::open(&token_config)?;
    let objects = BackupObjects::parse(&std::fs::read_to_string(folder.join("objects.json"))?)?;
    let evidence: BTreeMap<String, Vec<serde_json::Value>> =
        serde_json::from_slice(&std::fs::read(folder.join("evidence.json"))?)?;
    let keys = unwrap_all(&objects, &store)?;
    let mut checked = 0;
    for (id, made) in &evidence {
        let key = keys.get(id).ok_or_else(|| anyhow!("{id} is gone"))?;
        for m in made {
            check(id, m, key)?;
            checked += 1;
        }
    }
    ensure!(checked > 0, "nothing checked");
    eprintln!("[e2e migrate child] {checked} pieces of evidence check under the token only");
    Ok(())
}

#[test]
fn child_checks_keys_under_the_token_only() -> Result<()> {
    // Runs only as the child of the test below (SoftHSM2 reads its configuration once
    // per process, from the environment).
    match std::env::var_os(CHILD_ENV) {
        Some(folder) => child_check(Path::new(&folder)),
        None => Ok(()),
    }
}

fn wait_until(what: &str, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if ready()? {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{what}: not after {}s",
            TIMEOUT.as_secs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_moves_from_the_root_key_file_to_the_hsm() -> Result<()> {
    if std::env::var_os(CHILD_ENV).is_some() {
        return Ok(());
    }
    let started = Instant::now();
    let mut site = tokio::task::block_in_place(|| Site::install("migrate"))?;
    let folder = site.base.join("migration");
    let token = SoftHsmToken::create(&folder.join("token"), LABEL).map_err(|e| anyhow!(e))?;
    let root_key: PathBuf = site.plugin_state.join("root.key");
    phase(started, "cluster on root.key installed");

    // Secrets under two versions of the API server's key; KmsKeys of several specs.
    site.cp.kubectl(["create", "namespace", APP])?;
    let mut secrets = BTreeMap::new();
    for i in 0..4 {
        let value = format!("before-rotation-{i}-{}", uuid_like());
        site.cp.create_secret(APP, &format!("s{i}"), &value)?;
        secrets.insert(format!("s{i}"), value);
    }
    site.rotate(SYSTEM_NAMESPACE, APISERVER_KEY, "r1", 2)?;
    let keys = app_keys();
    site.create_keys(APP, &keys)?;
    // Evidence under each version of `sym`: v1, then v2 after a rotation.
    let file_store = FileKeyStore::open(&root_key)?;
    let mut evidence: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for (id, key) in unwrap_all(&BackupObjects::parse(&site.objects_json()?)?, &file_store)? {
        evidence.entry(id).or_default().push(make(&key)?);
    }
    site.rotate(APP, "sym", "r1", 2)?;
    for (id, key) in unwrap_all(&BackupObjects::parse(&site.objects_json()?)?, &file_store)? {
        if id == format!("{APP}/sym") || id == format!("{SYSTEM_NAMESPACE}/{APISERVER_KEY}") {
            evidence.entry(id).or_default().push(make(&key)?);
        }
    }
    for i in 4..8 {
        let value = format!("after-rotation-{i}-{}", uuid_like());
        site.cp.create_secret(APP, &format!("s{i}"), &value)?;
        secrets.insert(format!("s{i}"), value);
    }
    let before = record_wraps(&site)?;
    let file_id = file_store.root_key_id();
    ensure!(
        before.values().all(|(root, _)| root == &file_id),
        "records not under the file: {before:?}"
    );
    phase(
        started,
        &format!(
            "{} records, {} Secrets under root.key",
            before.len(),
            secrets.len()
        ),
    );

    // The operator on the token, creating its keys, with root.key as the previous root key.
    site.stop_operator();
    let mut op = operator(&site, &token, Some(&root_key), &["--init-root-key"])?;
    let mut hsm_id = String::new();
    wait_until("first records moved", || {
        let records = record_wraps(&site)?;
        if let Some((root, _)) = records.values().find(|(root, _)| root != &file_id) {
            hsm_id = root.clone();
        }
        Ok(!hsm_id.is_empty() && split_moved(&records, &hsm_id).0 >= 2)
    })?;
    op.kill()?; // SIGKILL
    op.wait()?;
    let (moved, pending) = split_moved(&record_wraps(&site)?, &hsm_id);
    phase(
        started,
        &format!("operator SIGKILLed with {moved} records moved, {pending} pending"),
    );
    ensure!(
        pending > 0,
        "the migration finished before the kill: nothing to resume"
    );
    read_all_secrets(&site, &secrets)?;

    // The plugin's folder: the token recorded, root.key kept as previous, records rewrapped.
    let out = migrate_plugin_folder(&site, &token)?;
    ensure!(
        out.status.success(),
        "migrate-root-key: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    phase(
        started,
        &format!(
            "plugin folder: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        ),
    );
    restart_plugin_and_apiserver(&site, &token)?;
    read_all_secrets(&site, &secrets)?;

    // Mid-migration, kubekms-server with the token and the previous file serves a key whose
    // record is still under the file (records are moved in list order; `sym` comes last).
    ensure!(
        record_wraps(&site)?[&format!("{APP}/sym")].0 == file_id,
        "sym was moved before the kill: this step would not test the previous root key"
    );
    server_round_trip(
        &site,
        &token,
        Some(&root_key),
        "kubekms-server-migrating",
        &evidence[&format!("{APP}/sym")],
    )
    .await?;
    phase(
        started,
        "mid-migration: kubekms-server with the token and root.key serves the key still under root.key",
    );

    // The operator again: it resumes and finishes.
    let mut op = operator(&site, &token, Some(&root_key), &[])?;
    wait_until("every record moved", || {
        let (_, pending) = split_moved(&record_wraps(&site)?, &hsm_id);
        Ok(pending == 0)
    })?;
    let after = record_wraps(&site)?;
    ensure!(
        after.len() == before.len(),
        "records lost: {} of {}",
        after.len(),
        before.len()
    );
    for (id, (_, versions)) in &before {
        ensure!(
            after[id].1.len() == versions.len(),
            "{id}: versions {} became {}",
            versions.len(),
            after[id].1.len()
        );
    }
    phase(
        started,
        "every record is wrap format 3 under the token's root key id",
    );
    // The pass that wrote the last record then reports the migration done.
    wait_until("the operator's 'root key migration done' line", || {
        Ok(
            std::fs::read_to_string(site.cp.log_path("kubekms-operator"))?
                .contains("root key migration done"),
        )
    })?;
    read_all_secrets(&site, &secrets)?;

    // `verify` with the token only.
    let objects = folder.join("objects.json");
    std::fs::write(&objects, site.objects_json()?)?;
    let mut args = vec![
        "verify".to_owned(),
        "--objects".to_owned(),
        objects.display().to_string(),
    ];
    args.extend(token.flags());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = plugin(&site, &token, &argv)?;
    ensure!(
        out.status.success(),
        "verify with the token only: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    phase(
        started,
        &format!(
            "verify (token only): {}",
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap_or_default()
        ),
    );

    // The file goes: the operator on the token only, the plugin's folder finished and
    // root.key deleted; a rotation under the token.
    op.kill()?;
    op.wait()?;
    let out = migrate_plugin_folder(&site, &token)?;
    ensure!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("root.key can be removed"),
        "migrate-root-key again: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(&root_key)?;
    ensure!(!root_key.exists(), "root.key still there");
    restart_plugin_and_apiserver(&site, &token)?;
    let mut op = operator(&site, &token, None, &[])?;
    site.rotate(APP, "sym", "r2", 3)?;
    site.rotate(SYSTEM_NAMESPACE, APISERVER_KEY, "r2", 3)?;
    let value = format!("after-migration-{}", uuid_like());
    site.cp.create_secret(APP, "s-new", &value)?;
    secrets.insert("s-new".to_owned(), value);
    let (_, pending) = split_moved(&record_wraps(&site)?, &hsm_id);
    ensure!(
        pending == 0,
        "a rotation under the token left {pending} records off it"
    );
    read_all_secrets(&site, &secrets)?;
    phase(
        started,
        "root.key deleted: plugin and operator on the token only; Secrets read; rotated",
    );

    // Every version of every key, under the token only, in a child process.
    std::fs::write(&objects, site.objects_json()?)?;
    std::fs::write(folder.join("evidence.json"), serde_json::to_vec(&evidence)?)?;
    let (env, conf) = token.env();
    let out = Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "child_checks_keys_under_the_token_only",
            "--nocapture",
        ])
        .env(CHILD_ENV, &folder)
        .env(env, conf)
        .output()?;
    ensure!(
        out.status.success(),
        "the child's check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("check under the token only"),
        "the child did not check: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    phase(
        started,
        "every key version decrypts, signs and MACs as before, under the token only",
    );

    // The token goes away (its folder moved): the plugin keeps serving what it unwrapped,
    // so every Secret still reads; a new process that needs the token fails naming it;
    // the token back, it works again.
    let tokens = folder.join("token").join("tokens");
    let away = folder.join("token").join("tokens-away");
    std::fs::rename(&tokens, &away)?;
    read_all_secrets(&site, &secrets)?;
    let mut args = vec![
        "verify".to_owned(),
        "--objects".to_owned(),
        objects.display().to_string(),
    ];
    args.extend(token.flags());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = plugin(&site, &token, &argv)?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        !out.status.success() && said.contains(LABEL),
        "verify without the token: {said}"
    );
    std::fs::rename(&away, &tokens)?;
    let out = plugin(&site, &token, &argv)?;
    ensure!(
        out.status.success(),
        "verify with the token back: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    phase(
        started,
        &format!(
            "token away: Secrets read, verify fails naming it ({}); token back: verify passes",
            said.lines()
                .find(|l| l.contains(LABEL))
                .unwrap_or_default()
                .trim()
        ),
    );

    // kubekms-server on the token: Decrypt of the blobs made under the file, Encrypt and
    // Decrypt anew.
    server_round_trip(
        &site,
        &token,
        None,
        "kubekms-server-hsm",
        &evidence[&format!("{APP}/sym")],
    )
    .await?;
    phase(
        started,
        "kubekms-server on the token decrypts old ciphertexts and encrypts anew",
    );
    op.kill()?;
    op.wait()?;
    drop(site);
    Ok(())
}

fn uuid_like() -> String {
    kubekms_e2e::unique_name("v")
}

async fn server_round_trip(
    site: &Site,
    token: &SoftHsmToken,
    previous: Option<&Path>,
    name: &str,
    blobs: &[serde_json::Value],
) -> Result<()> {
    use aws_sdk_kms::primitives::Blob;
    let dir = site.base.join(name);
    let kms_server::AdminClientFiles {
        credential,
        credentials,
        cert,
    } = kms_server::admin_client_files(
        &site.cp,
        &dir,
        &format!("migrate-admin-{name}"),
        "migrate-admin",
        APP,
    )?;
    let kubeconfig = dir.join("server.kubeconfig");
    site.cp
        .write_service_account_kubeconfig(SYSTEM_NAMESPACE, "kubekms-server", &kubeconfig)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let health = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let bin = sibling_bin("KUBEKMS_SERVER_BIN", "kubekms-server")?;
    let mut args: Vec<std::ffi::OsString> = token.flags().into_iter().map(Into::into).collect();
    if let Some(previous) = previous {
        args.push("--previous-root-key-file".into());
        args.push(previous.into());
    }
    for a in [
        "--kubeconfig".into(),
        kubeconfig.into_os_string(),
        "--listen".into(),
        format!("127.0.0.1:{port}").into(),
        "--tls-cert".into(),
        cert.cert.clone().into_os_string(),
        "--tls-key".into(),
        cert.key.clone().into_os_string(),
        "--health-addr".into(),
        health.to_string().into(),
        "--region".into(),
        kms_server::REGION.into(),
        "--static-credentials".into(),
        credentials.into_os_string(),
        "--audit-log".into(),
        dir.join("audit.log").into_os_string(),
        "--log-format".into(),
        "json".into(),
    ] {
        args.push(a);
    }
    let mut server = kms_server::Supervised::start(
        &site.cp,
        name,
        &[
            ("SOFTHSM2_CONF", token.conf.clone().into_os_string()),
            ("RUST_LOG", "info".into()),
        ],
        &bin,
        &args,
    )?;
    wait_until("kubekms-server ready", || {
        ensure!(
            server.is_running(),
            "kubekms-server exited: {}",
            server.log_tail(40)
        );
        Ok(kms_server::http_get(health, "/readyz")
            .map(|(code, _)| code == 200)
            .unwrap_or(false))
    })?;
    let config = kms_server::sdk_config(
        &format!("https://127.0.0.1:{port}"),
        std::fs::read(&cert.ca_bundle)?,
        &credential,
        "migrate-static",
    )?
    .build();
    let kms = aws_sdk_kms::Client::from_conf(config);
    for made in blobs {
        let answer = kms
            .decrypt()
            .ciphertext_blob(Blob::new(bytes(made, "blob")?))
            .encryption_context("purpose", "root-key-migration")
            .send()
            .await
            .context("server Decrypt of a blob made under root.key")?;
        ensure!(
            answer.plaintext.map(Blob::into_inner) == Some(bytes(made, "plaintext")?),
            "the server's plaintext differs"
        );
    }
    let key_id = {
        let sym = site.get_json("kmskey", APP, "sym")?;
        sym.pointer("/status/keyId")
            .and_then(|v| v.as_str())
            .ok_or_else(|| anyhow!("no keyId"))?
            .to_owned()
    };
    let encrypted = kms
        .encrypt()
        .key_id(&key_id)
        .plaintext(Blob::new(b"after the migration".to_vec()))
        .send()
        .await
        .context("server Encrypt")?;
    let blob = encrypted
        .ciphertext_blob
        .ok_or_else(|| anyhow!("no blob"))?;
    let decrypted = kms
        .decrypt()
        .ciphertext_blob(blob)
        .send()
        .await
        .context("server Decrypt")?;
    ensure!(
        decrypted.plaintext.map(Blob::into_inner).as_deref() == Some(&b"after the migration"[..]),
        "round trip"
    );
    server.stop()?;
    Ok(())
}
