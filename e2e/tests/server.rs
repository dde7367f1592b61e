//! kubekms-server end to end, with real AWS clients: the real control plane (kube-apiserver
//! and etcd), the real operator binary making the keys, and the real kubekms-server binary
//! running as a process with its ServiceAccount's RBAC (deploy/rbac/server.yaml), TLS from a
//! certificate the control plane's CA signed. boto3 and the AWS CLI (the pinned venv of
//! hack/tools/python.sh) authenticate as a pod does: a ServiceAccount token minted with the
//! TokenRequest API in `AWS_WEB_IDENTITY_TOKEN_FILE`, exchanged by the SDK itself at the
//! server's STS (`AWS_ENDPOINT_URL_STS`); or with static credentials, as a client outside
//! the cluster.
//!
//! One world per test process ([`ServerWorld::shared`]: namespaces, operators, server);
//! each test makes its own keys and ServiceAccounts in it. The Python scripts under
//! `e2e/tests/server/` make the calls and print what happened as JSON; the assertions are
//! here.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use kubekms_e2e::kms_server::{
    AUTHZ_CACHE_SECONDS, Identity, KeyInfo, KmsServer, Outcomes, PodIdentity, REGION,
    ServerOptions, ServerWorld, StaticCredential, Subject, b64, blob, run_aws_cli, run_python,
    write_static_credentials,
};
use kubekms_e2e::unique_name;
use serde_json::{Value, json};

/// The RBAC verbs of docs/api.md: every action on a key, and the account-level ones.
const ALL_VERBS: &[&str] = &[
    "encrypt",
    "decrypt",
    "reencryptfrom",
    "reencryptto",
    "generatedatakey",
    "generatedatakeywithoutplaintext",
    "generatedatakeypair",
    "generatedatakeypairwithoutplaintext",
    "getpublickey",
    "sign",
    "verify",
    "generatemac",
    "verifymac",
    "derivesharedsecret",
    "describekey",
    "listgrants",
    "getkeyrotationstatus",
    "listkeyrotations",
    "listresourcetags",
    "listkeys",
    "listaliases",
    "generaterandom",
];

/// How long a change of Kubernetes objects may take to reach the server's keyring (and
/// a cached RBAC decision to expire): a bound on waiting, not a timing assertion.
const PROPAGATION: f64 = 90.0;

fn world() -> Result<&'static ServerWorld> {
    ServerWorld::shared()
}

/// A ServiceAccount of the main namespace allowed every verb on every key there.
fn full_access(world: &ServerWorld, name: &str) -> Result<PodIdentity> {
    let id = world.pod_identity(&world.namespace, name)?;
    world.grant_rbac(
        &world.namespace,
        &format!("{name}-all-keys"),
        ALL_VERBS,
        &[],
        &id.subject(),
    )?;
    Ok(id)
}

/// Runs calls.py as `identity` against the world's server.
fn calls(world: &ServerWorld, identity: &Identity, spec: &Value) -> Result<Outcomes> {
    Ok(Outcomes::new(run_python(
        "calls.py",
        &world.env(identity),
        spec,
    )?))
}

/// One step for calls.py.
fn step(name: &str, op: &str, args: Value) -> Value {
    json!({"name": name, "op": op, "args": args})
}

/// A step repeated until it fails with `error` (or succeeds, for `None`) or
/// [`PROPAGATION`] passes.
fn step_until(name: &str, op: &str, args: Value, error: Option<&str>) -> Value {
    json!({"name": name, "op": op, "args": args,
           "until": {"error": error, "timeout": PROPAGATION}})
}

/// Waits until the server answers DescribeKey for every key (its keyring has them), as
/// `identity` (which must be allowed `describekey`).
fn wait_served(world: &ServerWorld, identity: &Identity, arns: &[&str]) -> Result<()> {
    let steps: Vec<Value> = arns
        .iter()
        .enumerate()
        .map(|(i, arn)| {
            step_until(
                &format!("k{i}"),
                "describe_key",
                json!({"KeyId": arn}),
                None,
            )
        })
        .collect();
    let out = calls(world, identity, &json!({"steps": steps}))?;
    for (i, arn) in arns.iter().enumerate() {
        out.ok(&format!("k{i}"))
            .with_context(|| format!("the server never served {arn}"))?;
    }
    Ok(())
}

/// The key id and material version a symmetric ciphertext blob names
/// (docs/ciphertext-format.md).
fn blob_header(bytes: &[u8]) -> Result<(uuid::Uuid, u32)> {
    ensure!(bytes.len() >= 83, "blob of {} bytes", bytes.len());
    ensure!(
        bytes[0] == 1 && bytes[1] == 1,
        "blob header {:?}",
        &bytes[..2]
    );
    let id = uuid::Uuid::from_slice(&bytes[2..18])?;
    let version = u32::from_be_bytes([bytes[18], bytes[19], bytes[20], bytes[21]]);
    Ok((id, version))
}

fn sorted(values: &Value) -> Vec<String> {
    let mut out: Vec<String> = values
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    out.sort();
    out
}

fn strings(values: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = values.iter().map(|s| (*s).to_owned()).collect();
    out.sort();
    out
}

fn account_of(arn: &str) -> &str {
    arn.split(':').nth(4).unwrap_or_default()
}

/// The key specs of issue 9: logical name (as every_operation.py knows it), KmsKey spec,
/// and the algorithms the spec allows.
fn key_catalog() -> Vec<(String, Value, Vec<&'static str>)> {
    let rsa_sign = vec![
        "RSASSA_PKCS1_V1_5_SHA_256",
        "RSASSA_PKCS1_V1_5_SHA_384",
        "RSASSA_PKCS1_V1_5_SHA_512",
        "RSASSA_PSS_SHA_256",
        "RSASSA_PSS_SHA_384",
        "RSASSA_PSS_SHA_512",
    ];
    let rsa_enc = vec!["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"];
    let mut catalog = vec![
        (
            "sym".to_owned(),
            json!({"keySpec": "SYMMETRIC_DEFAULT", "description": "e2e every operation",
                   "rotation": {"automatic": true, "periodInDays": 90},
                   "tags": {"team": "e2e", "purpose": "every-operation"}}),
            vec!["SYMMETRIC_DEFAULT"],
        ),
        (
            "sym2".to_owned(),
            json!({"keySpec": "SYMMETRIC_DEFAULT"}),
            vec!["SYMMETRIC_DEFAULT"],
        ),
    ];
    for bits in ["2048", "3072", "4096"] {
        let spec = format!("RSA_{bits}");
        catalog.push((
            format!("rsa_{bits}_enc"),
            json!({"keySpec": spec, "keyUsage": "ENCRYPT_DECRYPT"}),
            rsa_enc.clone(),
        ));
        catalog.push((
            format!("rsa_{bits}_sign"),
            json!({"keySpec": spec, "keyUsage": "SIGN_VERIFY"}),
            rsa_sign.clone(),
        ));
    }
    for (curve, alg) in [
        ("P256", "ECDSA_SHA_256"),
        ("P384", "ECDSA_SHA_384"),
        ("P521", "ECDSA_SHA_512"),
    ] {
        let spec = format!("ECC_NIST_{curve}");
        let lower = curve.to_ascii_lowercase();
        catalog.push((
            format!("ecc_nist_{lower}_sign"),
            json!({"keySpec": spec, "keyUsage": "SIGN_VERIFY"}),
            vec![alg],
        ));
        catalog.push((
            format!("ecc_nist_{lower}_agree"),
            json!({"keySpec": spec, "keyUsage": "KEY_AGREEMENT"}),
            vec!["ECDH"],
        ));
    }
    catalog.push((
        "ecc_secg_p256k1_sign".to_owned(),
        json!({"keySpec": "ECC_SECG_P256K1", "keyUsage": "SIGN_VERIFY"}),
        vec!["ECDSA_SHA_256"],
    ));
    for (bits, alg) in [
        ("224", "HMAC_SHA_224"),
        ("256", "HMAC_SHA_256"),
        ("384", "HMAC_SHA_384"),
        ("512", "HMAC_SHA_512"),
    ] {
        catalog.push((
            format!("hmac_{bits}"),
            json!({"keySpec": format!("HMAC_{bits}"), "keyUsage": "GENERATE_VERIFY_MAC"}),
            vec![alg],
        ));
    }
    catalog
}

/// The KmsKey name of a logical key name in a test.
fn kube_name(prefix: &str, logical: &str) -> String {
    format!("{prefix}-{}", logical.replace('_', "-"))
}

/// Every operation of issue 9 through boto3 (every_operation.py, one run), on a key of
/// every spec with every algorithm the spec allows: round trips, encryption context,
/// ReEncrypt across key types, data keys and key pairs (the private key's public half is the
/// PublicKey returned), signatures RAW and DIGEST verified by openssl with the key
/// GetPublicKey returns, RSA-OAEP ciphertexts made by openssl decrypted by the API, ECDH
/// secrets equal to openssl's, MACs, the metadata operations with paging, DryRun, and the
/// errors of wrong usages, algorithms, contexts and limits.
#[test]
fn every_operation_every_key_spec_through_boto3() -> Result<()> {
    let world = world()?;
    let ns = &world.namespace;
    let prefix = unique_name("ops");
    let catalog = key_catalog();
    let manifests: Vec<(String, Value)> = catalog
        .iter()
        .map(|(logical, spec, _)| (kube_name(&prefix, logical), spec.clone()))
        .collect();
    let manifest_refs: Vec<(&str, Value)> = manifests
        .iter()
        .map(|(n, s)| (n.as_str(), s.clone()))
        .collect();
    let made = world.create_keys(ns, &manifest_refs)?;
    let key = |logical: &str| -> Result<&KeyInfo> {
        made.get(&kube_name(&prefix, logical))
            .ok_or_else(|| anyhow!("no key {logical}"))
    };
    let sym = key("sym")?.clone();

    let alias_name = format!("alias/{prefix}");
    let app = full_access(world, &format!("{prefix}-app"))?;
    world.cp.apply(&json!([
        {"apiVersion": "kubekms.io/v1alpha1", "kind": "KmsAlias",
         "metadata": {"name": prefix, "namespace": ns},
         "spec": {"aliasName": alias_name, "targetKeyRef": {"name": sym.name}}},
        {"apiVersion": "kubekms.io/v1alpha1", "kind": "KmsGrant",
         "metadata": {"name": format!("{prefix}-listed"), "namespace": ns},
         "spec": {"keyRef": {"name": sym.name},
                  "grantee": {"serviceAccount": {"name": "someone-else"}},
                  "operations": ["Encrypt", "Decrypt"],
                  "constraints": {"encryptionContextSubset": {"tenant": "listed"}}}},
    ]))?;
    world.wait_condition("kmsalias", ns, &prefix, "Ready")?;
    let grant = world.wait_condition("kmsgrant", ns, &format!("{prefix}-listed"), "Granted")?;
    let grant_id = grant
        .pointer("/status/grantId")
        .and_then(Value::as_str)
        .context("grantId")?
        .to_owned();
    let alias_arn = format!("arn:aws:kms:{REGION}:{}:{alias_name}", account_of(&sym.arn));

    let identity = app.web_identity(&world.server.endpoint);
    let arns: Vec<&str> = made.values().map(|k| k.arn.as_str()).collect();
    wait_served(world, &identity, &arns)?;
    // The alias too (aliases come from their own watch).
    calls(
        world,
        &identity,
        &json!({"steps": [step_until("alias", "describe_key", json!({"KeyId": alias_name}), None)]}),
    )?
    .ok("alias")?;

    let marker = unique_name("e2e-every-op");
    let context = json!({"purpose": "every-operation", "run": marker});
    let keys_input: Vec<Value> = catalog
        .iter()
        .map(|(logical, _, _)| {
            let k = key(logical)?;
            Ok(json!({"name": logical, "arn": k.arn, "keyId": k.key_id,
                      "spec": k.spec, "usage": k.usage}))
        })
        .collect::<Result<_>>()?;
    let started = Instant::now();
    let out = Outcomes::new(run_python(
        "every_operation.py",
        &world.env(&identity),
        &json!({"keys": keys_input, "alias": alias_name, "aliasArn": alias_arn,
                "context": context, "marker": marker}),
    )?);
    eprintln!(
        "every_operation.py: {} calls in {:.1}s",
        out.request_ids().len(),
        started.elapsed().as_secs_f64()
    );
    let plaintext = format!("{marker}-encrypt-plaintext").into_bytes();
    let openssl = |name: &str| -> Result<&Value> {
        out.json
            .pointer("/openssl")
            .and_then(|o| o.get(name))
            .ok_or_else(|| anyhow!("no openssl check {name}"))
    };
    let openssl_ok = |name: &str| -> Result<&Value> {
        let check = openssl(name)?;
        ensure!(
            check["rc"] == 0,
            "openssl {name} failed: {}",
            check["err"].as_str().unwrap_or_default()
        );
        Ok(check)
    };
    let openssl_stdout = |name: &str| -> Result<Vec<u8>> {
        Ok(BASE64.decode(openssl_ok(name)?["stdout_b64"].as_str().unwrap_or_default())?)
    };

    // ---------------------------------------------------------------- symmetric
    ensure!(
        out.text("sym.encrypt", "/KeyId")? == sym.arn,
        "Encrypt KeyId"
    );
    ensure!(out.text("sym.encrypt", "/EncryptionAlgorithm")? == "SYMMETRIC_DEFAULT");
    let ciphertext = out.blob("sym.encrypt", "/CiphertextBlob")?;
    let (blob_key, blob_version) = blob_header(&ciphertext)?;
    ensure!(
        blob_key.to_string() == sym.key_id && blob_version == 1,
        "blob names {blob_key} v{blob_version}, the key is {}",
        sym.key_id
    );
    ensure!(
        !ciphertext
            .windows(plaintext.len())
            .any(|w| w == plaintext.as_slice()),
        "the plaintext is in the ciphertext"
    );
    for way in ["without_key_id", "by_arn", "by_key_id", "by_alias"] {
        let name = format!("sym.decrypt.{way}");
        ensure!(out.blob(&name, "/Plaintext")? == plaintext, "{name}");
        ensure!(out.text(&name, "/KeyId")? == sym.arn, "{name} KeyId");
    }
    for way in ["wrong_context", "no_context", "tampered"] {
        out.error(&format!("sym.decrypt.{way}"), "InvalidCiphertextException")?;
    }
    out.error("sym.decrypt.other_key", "IncorrectKeyException")?;
    ensure!(out.text("sym.encrypt.by_alias", "/KeyId")? == sym.arn);
    ensure!(out.text("sym.encrypt.by_key_id", "/KeyId")? == sym.arn);
    out.ok("sym.encrypt.explicit_algorithm")?;
    out.error("sym.encrypt.rsa_algorithm", "InvalidKeyUsageException")?;
    out.ok("sym.encrypt.max_plaintext")?;
    out.error("sym.encrypt.over_max_plaintext", "ValidationException")?;

    let sym2 = key("sym2")?;
    let rsa_enc = key("rsa_2048_enc")?;
    ensure!(out.text("reencrypt.sym_to_sym", "/SourceKeyId")? == sym.arn);
    ensure!(out.text("reencrypt.sym_to_sym", "/KeyId")? == sym2.arn);
    let (reencrypted_key, _) = blob_header(&out.blob("reencrypt.sym_to_sym", "/CiphertextBlob")?)?;
    ensure!(
        reencrypted_key.to_string() == sym2.key_id,
        "ReEncrypt blob key"
    );
    for name in [
        "reencrypt.sym_to_sym.decrypt",
        "reencrypt.sym_to_rsa.decrypt",
        "reencrypt.rsa_to_sym.decrypt",
    ] {
        ensure!(out.blob(name, "/Plaintext")? == plaintext, "{name}");
    }
    ensure!(out.text("reencrypt.sym_to_sym.decrypt", "/KeyId")? == sym2.arn);
    ensure!(out.text("reencrypt.sym_to_rsa", "/KeyId")? == rsa_enc.arn);
    ensure!(
        out.text("reencrypt.sym_to_rsa", "/DestinationEncryptionAlgorithm")?
            == "RSAES_OAEP_SHA_256"
    );
    ensure!(out.text("reencrypt.rsa_to_sym", "/SourceKeyId")? == rsa_enc.arn);
    out.error(
        "reencrypt.wrong_source_context",
        "InvalidCiphertextException",
    )?;

    // Data keys: the plaintext returned is what the blob decrypts to.
    for (name, len) in [
        ("aes_256", 32),
        ("aes_128", 16),
        ("bytes_64", 64),
        ("bytes_1", 1),
        ("bytes_1024", 1024),
    ] {
        let step = format!("gdk.{name}");
        let data_key = out.blob(&step, "/Plaintext")?;
        ensure!(data_key.len() == len, "{step}: {} bytes", data_key.len());
        ensure!(out.text(&step, "/KeyId")? == sym.arn);
        ensure!(
            out.blob(&format!("{step}.decrypt"), "/Plaintext")? == data_key,
            "{step}: the blob decrypts to another key"
        );
    }
    ensure!(
        out.blob("gdk.aes_256", "/Plaintext")? != out.blob("gdk.aes_128", "/Plaintext")?[..],
        "data keys repeat"
    );
    for name in ["gdk.both_specs", "gdk.neither_spec", "gdk.bytes_1025"] {
        out.error(name, "ValidationException")?;
    }
    out.error("gdk.on_rsa_key", "InvalidKeyUsageException")?;
    for (name, len) in [("aes_256", 32), ("bytes_48", 48)] {
        let step = format!("gdkwp.{name}");
        ensure!(
            out.ok(&step)?.get("Plaintext").is_none(),
            "{step} returned a plaintext"
        );
        let decrypted = out.blob(&format!("{step}.decrypt"), "/Plaintext")?;
        ensure!(decrypted.len() == len, "{step}: {} bytes", decrypted.len());
    }
    for pair in [
        "RSA_2048",
        "RSA_3072",
        "RSA_4096",
        "ECC_NIST_P256",
        "ECC_NIST_P384",
        "ECC_NIST_P521",
        "ECC_SECG_P256K1",
    ] {
        for variant in ["gdkp", "gdkpwp"] {
            let step = format!("{variant}.{pair}");
            ensure!(out.text(&step, "/KeyPairSpec")? == pair, "{step}");
            ensure!(out.text(&step, "/KeyId")? == sym.arn, "{step}");
            let public = out.blob(&step, "/PublicKey")?;
            let private = out.blob(&format!("{step}.decrypt"), "/Plaintext")?;
            if variant == "gdkp" {
                ensure!(
                    out.blob(&step, "/PrivateKeyPlaintext")? == private,
                    "{step}: the private key blob decrypts to another key"
                );
            } else {
                ensure!(
                    out.ok(&step)?.get("PrivateKeyPlaintext").is_none(),
                    "{step} returned the private key"
                );
            }
            ensure!(
                openssl_stdout(&format!("{step}.public_of_private"))? == public,
                "{step}: PublicKey is not the public half of the private key"
            );
        }
    }
    for n in [1usize, 32, 1024] {
        ensure!(out.blob(&format!("random.{n}"), "/Plaintext")?.len() == n);
    }
    out.error("random.1025", "ValidationException")?;
    out.error("random.custom_key_store", "CustomKeyStoreNotFoundException")?;

    // Metadata.
    let account = account_of(&sym.arn).to_owned();
    ensure!(
        account.len() == 12 && account.chars().all(|c| c.is_ascii_digit()),
        "account {account}"
    );
    for way in ["by_arn", "by_key_id", "by_alias", "by_alias_arn"] {
        let m = out.ok(&format!("describe.{way}"))?;
        let m = &m["KeyMetadata"];
        ensure!(m["Arn"] == sym.arn.as_str(), "describe.{way}: {m}");
        ensure!(m["KeyId"] == sym.key_id.as_str(), "describe.{way}: {m}");
        ensure!(m["AWSAccountId"] == account.as_str(), "{m}");
        ensure!(m["KeyState"] == "Enabled" && m["Enabled"] == true, "{m}");
        ensure!(m["KeySpec"] == "SYMMETRIC_DEFAULT", "{m}");
        ensure!(m["KeyUsage"] == "ENCRYPT_DECRYPT", "{m}");
        ensure!(m["Origin"] == "AWS_KMS", "{m}");
        ensure!(m["Description"] == "e2e every operation", "{m}");
        ensure!(
            sorted(&m["EncryptionAlgorithms"]) == ["SYMMETRIC_DEFAULT"],
            "{m}"
        );
    }
    let mut listed = BTreeMap::new();
    let mut pages = 0;
    while let Ok(page) = out.ok(&format!("list_keys.page{pages}")) {
        let entries = page["Keys"].as_array().cloned().unwrap_or_default();
        ensure!(
            entries.len() <= 2,
            "page {pages} has {} keys",
            entries.len()
        );
        for entry in entries {
            listed.insert(
                entry["KeyId"].as_str().unwrap_or_default().to_owned(),
                entry["KeyArn"].as_str().unwrap_or_default().to_owned(),
            );
        }
        pages += 1;
    }
    ensure!(pages > 1, "ListKeys with Limit 2 gave {pages} page(s)");
    for k in made.values() {
        ensure!(
            listed.get(&k.key_id) == Some(&k.arn),
            "ListKeys lacks {} ({})",
            k.name,
            k.arn
        );
    }
    out.error("list_keys.bad_marker", "InvalidMarkerException")?;
    let aliases = out.ok("list_aliases")?["Aliases"].clone();
    let ours: Vec<&Value> = aliases
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["AliasName"] == alias_name.as_str())
        .collect();
    ensure!(
        ours.len() == 1
            && ours[0]["TargetKeyId"] == sym.key_id.as_str()
            && ours[0]["AliasArn"] == alias_arn.as_str(),
        "ListAliases: {aliases}"
    );
    let for_key = out.ok("list_aliases.for_key")?["Aliases"].clone();
    ensure!(
        for_key.as_array().map(Vec::len) == Some(1)
            && for_key[0]["AliasName"] == alias_name.as_str(),
        "ListAliases KeyId: {for_key}"
    );
    let grants = out.ok("list_grants")?["Grants"].clone();
    let listed_grant = grants
        .as_array()
        .into_iter()
        .flatten()
        .find(|g| g["GrantId"] == grant_id.as_str())
        .ok_or_else(|| anyhow!("ListGrants lacks {grant_id}: {grants}"))?;
    ensure!(
        listed_grant["GranteePrincipal"]
            == format!("system:serviceaccount:{ns}:someone-else").as_str()
            && sorted(&listed_grant["Operations"]) == strings(&["Decrypt", "Encrypt"])
            && listed_grant["Constraints"]["EncryptionContextSubset"]["tenant"] == "listed"
            && listed_grant["KeyId"] == sym.arn.as_str(),
        "ListGrants: {listed_grant}"
    );
    let rotation = out.ok("rotation_status")?;
    ensure!(
        rotation["KeyRotationEnabled"] == true && rotation["RotationPeriodInDays"] == 90,
        "GetKeyRotationStatus: {rotation}"
    );
    ensure!(
        out.ok("list_key_rotations")?["Rotations"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "ListKeyRotations of a key never rotated"
    );
    out.error("rotation_status.rsa", "UnsupportedOperationException")?;
    let tags: BTreeSet<(String, String)> = out.ok("list_resource_tags")?["Tags"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            (
                t["TagKey"].as_str().unwrap_or_default().to_owned(),
                t["TagValue"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    ensure!(
        tags == BTreeSet::from([
            ("purpose".to_owned(), "every-operation".to_owned()),
            ("team".to_owned(), "e2e".to_owned()),
        ]),
        "ListResourceTags: {tags:?}"
    );

    // ---------------------------------------------------------------- every key spec
    let inputs = out.json.get("inputs").cloned().unwrap_or_default();
    let input = |name: &str| -> Result<Vec<u8>> {
        Ok(BASE64.decode(
            inputs
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("no input {name}"))?,
        )?)
    };
    let mut checked_algorithms = 0;
    for (logical, _, algorithms) in &catalog {
        let k = key(logical)?;
        let m = &out.ok(&format!("{logical}.describe"))?["KeyMetadata"];
        ensure!(
            m["Arn"] == k.arn.as_str()
                && m["KeySpec"] == k.spec.as_str()
                && m["KeyUsage"] == k.usage.as_str(),
            "{logical}: {m}"
        );
        let exercised = sorted(&out.json["algorithms"][logical.as_str()]);
        if *logical != "sym" && *logical != "sym2" {
            ensure!(
                exercised == strings(algorithms),
                "{logical}: algorithms {exercised:?}, the spec allows {algorithms:?}"
            );
        }
        if k.spec.starts_with("RSA") || k.spec.starts_with("ECC") {
            let public = out.ok(&format!("{logical}.get_public_key"))?;
            ensure!(
                public["KeySpec"] == k.spec.as_str()
                    && public["KeyUsage"] == k.usage.as_str()
                    && public["KeyId"] == k.arn.as_str(),
                "{logical} GetPublicKey: {public}"
            );
            openssl_ok(&format!("{logical}.public_pem"))?;
        }
        match k.usage.as_str() {
            "ENCRYPT_DECRYPT" if k.spec.starts_with("RSA") => {
                for alg in algorithms {
                    let secret = input(&format!("{logical}.{alg}"))?;
                    let encrypted = format!("{logical}.{alg}.encrypt");
                    ensure!(out.text(&encrypted, "/EncryptionAlgorithm")? == *alg);
                    ensure!(
                        out.blob(&format!("{logical}.{alg}.decrypt"), "/Plaintext")? == secret,
                        "{logical} {alg}: round trip"
                    );
                    openssl_ok(&format!("{logical}.{alg}.openssl_encrypt"))?;
                    ensure!(
                        out.blob(&format!("{logical}.{alg}.decrypt_openssl"), "/Plaintext")?
                            == secret,
                        "{logical} {alg}: a ciphertext openssl made with the public key"
                    );
                    checked_algorithms += 1;
                }
                out.error(
                    &format!("{logical}.decrypt.without_key_id"),
                    "InvalidCiphertextException",
                )?;
                out.error(
                    &format!("{logical}.encrypt.no_algorithm"),
                    "InvalidKeyUsageException",
                )?;
                out.error(&format!("{logical}.sign"), "InvalidKeyUsageException")?;
            }
            "SIGN_VERIFY" => {
                for alg in algorithms {
                    for kind in ["raw", "digest"] {
                        let s = format!("{logical}.{alg}.{kind}");
                        ensure!(out.text(&format!("{s}.sign"), "/SigningAlgorithm")? == *alg);
                        ensure!(out.text(&format!("{s}.sign"), "/KeyId")? == k.arn);
                        ensure!(
                            out.ok(&format!("{s}.verify"))?["SignatureValid"] == true,
                            "{s}: Verify"
                        );
                        let verified = openssl_ok(&format!("{s}.openssl"))?;
                        ensure!(
                            verified["out"]
                                .as_str()
                                .is_some_and(|o| o.contains("Verified")
                                    || o.contains("Signature Verified Successfully")),
                            "{s}: openssl says {verified}"
                        );
                    }
                    let other = openssl(&format!("{logical}.{alg}.raw.openssl_other_message"))?;
                    ensure!(
                        other["rc"] != 0,
                        "openssl accepted a signature of another message"
                    );
                    out.error(
                        &format!("{logical}.{alg}.raw.verify_tampered"),
                        "KMSInvalidSignatureException",
                    )?;
                    ensure!(
                        out.ok(&format!("{logical}.{alg}.digest.verify_as_raw"))?["SignatureValid"]
                            == true,
                        "{logical} {alg}: a DIGEST signature is over the digest of the RAW message"
                    );
                    out.error(
                        &format!("{logical}.{alg}.digest.sign_wrong_length"),
                        "ValidationException",
                    )?;
                    checked_algorithms += 1;
                }
                out.error(&format!("{logical}.encrypt"), "InvalidKeyUsageException")?;
                out.error(
                    &format!("{logical}.sign.wrong_algorithm"),
                    "InvalidKeyUsageException",
                )?;
            }
            "KEY_AGREEMENT" => {
                let derived = out.ok(&format!("{logical}.derive"))?;
                ensure!(
                    derived["KeyAgreementAlgorithm"] == "ECDH"
                        && derived["KeyId"] == k.arn.as_str()
                );
                let secret = blob(&derived["SharedSecret"])?;
                ensure!(
                    openssl_stdout(&format!("{logical}.openssl_derive"))? == secret,
                    "{logical}: the shared secret differs from openssl's ECDH"
                );
                out.error(
                    &format!("{logical}.derive.other_curve"),
                    "ValidationException",
                )?;
                out.error(&format!("{logical}.sign"), "InvalidKeyUsageException")?;
                checked_algorithms += 1;
            }
            "GENERATE_VERIFY_MAC" => {
                for alg in algorithms {
                    let s = format!("{logical}.{alg}");
                    let bits: usize = alg.trim_start_matches("HMAC_SHA_").parse()?;
                    ensure!(out.blob(&format!("{s}.generate"), "/Mac")?.len() == bits / 8);
                    ensure!(out.ok(&format!("{s}.verify"))?["MacValid"] == true, "{s}");
                    out.error(&format!("{s}.verify_tampered"), "KMSInvalidMacException")?;
                    out.error(
                        &format!("{s}.verify_other_message"),
                        "KMSInvalidMacException",
                    )?;
                    checked_algorithms += 1;
                }
                out.error(
                    &format!("{logical}.generate.wrong_algorithm"),
                    "InvalidKeyUsageException",
                )?;
                out.error(&format!("{logical}.encrypt"), "InvalidKeyUsageException")?;
                out.error(
                    &format!("{logical}.rotation_status"),
                    "UnsupportedOperationException",
                )?;
            }
            _ => {}
        }
    }
    ensure!(
        checked_algorithms == 2 * 3 + 6 * 3 + 4 + 3 + 4,
        "{checked_algorithms} algorithms checked"
    );

    // ---------------------------------------------------------------- DryRun
    for name in [
        "encrypt",
        "decrypt",
        "reencrypt",
        "generate_data_key",
        "generate_data_key_without_plaintext",
        "generate_data_key_pair",
        "generate_data_key_pair_without_plaintext",
        "sign",
        "verify",
        "generate_mac",
        "verify_mac",
        "derive_shared_secret",
    ] {
        let step = format!("dry_run.{name}");
        out.error(&step, "DryRunOperationException")?;
        ensure!(
            out.status(&step)? == 412,
            "{step}: HTTP {}",
            out.status(&step)?
        );
    }
    out.error("dry_run.encrypt_with_hmac_key", "InvalidKeyUsageException")?;
    out.error(
        "dry_run.decrypt_wrong_context",
        "InvalidCiphertextException",
    )?;

    // Every call was made as the ServiceAccount, through a session the SDK got at STS.
    let records = world.server.wait_audited(&out.request_ids())?;
    for record in &records {
        ensure!(
            record
                .pointer("/userIdentity/userName")
                .and_then(Value::as_str)
                == Some(app.username().as_str())
                && record.pointer("/userIdentity/type").and_then(Value::as_str) == Some("session")
                && record
                    .pointer("/userIdentity/accessKeyId")
                    .and_then(Value::as_str)
                    .is_some_and(|id| id.starts_with("ASIA")),
            "not the ServiceAccount's session: {record}"
        );
    }
    Ok(())
}

/// Runs openssl; fails with its stderr on a non-zero exit.
fn openssl(args: &[&std::ffi::OsStr]) -> Result<std::process::Output> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()?;
    ensure!(
        out.status.success(),
        "openssl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// A representative set through the AWS CLI (awscli v1), authenticated by web identity,
/// with signatures checked by openssl.
#[test]
fn aws_cli_round_trips_and_openssl_verifies_its_signatures() -> Result<()> {
    let world = world()?;
    let ns = &world.namespace;
    let prefix = unique_name("cli");
    let keys = world.create_keys(
        ns,
        &[
            (
                &format!("{prefix}-sym"),
                json!({"keySpec": "SYMMETRIC_DEFAULT"}),
            ),
            (
                &format!("{prefix}-ecc"),
                json!({"keySpec": "ECC_NIST_P256", "keyUsage": "SIGN_VERIFY"}),
            ),
            (
                &format!("{prefix}-rsa"),
                json!({"keySpec": "RSA_3072", "keyUsage": "SIGN_VERIFY"}),
            ),
        ],
    )?;
    let sym = &keys[&format!("{prefix}-sym")];
    let ecc = &keys[&format!("{prefix}-ecc")];
    let rsa = &keys[&format!("{prefix}-rsa")];
    let app = full_access(world, &prefix)?;
    let identity = app.web_identity(&world.server.endpoint);
    wait_served(world, &identity, &[&sym.arn, &ecc.arn, &rsa.arn])?;
    let env = world.env(&identity);
    let dir = world.dir.join(&prefix);
    std::fs::create_dir_all(&dir)?;
    let file = |name: &str, bytes: &[u8]| -> Result<String> {
        let path = dir.join(name);
        std::fs::write(&path, bytes)?;
        Ok(format!("fileb://{}", path.display()))
    };
    let aws = |args: &[&str]| -> Result<Value> {
        let (status, stdout, stderr) = run_aws_cli(args, &env)?;
        ensure!(
            status.success(),
            "aws {}: {status}\n{stdout}\n{stderr}",
            args.join(" ")
        );
        serde_json::from_str(&stdout).with_context(|| format!("aws {}: {stdout}", args.join(" ")))
    };
    let decode = |v: &Value| -> Result<Vec<u8>> {
        Ok(BASE64.decode(v.as_str().ok_or_else(|| anyhow!("not base64 text: {v}"))?)?)
    };

    let described = aws(&[
        "kms",
        "describe-key",
        "--key-id",
        &sym.key_id,
        "--output",
        "json",
    ])?;
    ensure!(
        described["KeyMetadata"]["Arn"] == sym.arn.as_str()
            && described["KeyMetadata"]["KeyState"] == "Enabled",
        "describe-key: {described}"
    );
    let plaintext = format!("{prefix}-cli-plaintext").into_bytes();
    let context = format!("purpose=cli,run={prefix}");
    let encrypted = aws(&[
        "kms",
        "encrypt",
        "--key-id",
        &sym.key_id,
        "--plaintext",
        &file("p", &plaintext)?,
        "--encryption-context",
        &context,
        "--output",
        "json",
    ])?;
    ensure!(
        encrypted["KeyId"] == sym.arn.as_str(),
        "encrypt: {encrypted}"
    );
    let blob_path = file("c", &decode(&encrypted["CiphertextBlob"])?)?;
    let decrypted = aws(&[
        "kms",
        "decrypt",
        "--ciphertext-blob",
        &blob_path,
        "--encryption-context",
        &context,
        "--output",
        "json",
    ])?;
    ensure!(
        decode(&decrypted["Plaintext"])? == plaintext && decrypted["KeyId"] == sym.arn.as_str(),
        "decrypt: {decrypted}"
    );
    let (status, _, stderr) = run_aws_cli(
        &[
            "kms",
            "decrypt",
            "--ciphertext-blob",
            &blob_path,
            "--encryption-context",
            "purpose=other",
        ],
        &env,
    )?;
    ensure!(
        !status.success() && stderr.contains("InvalidCiphertextException"),
        "decrypt with another context: {status} {stderr}"
    );
    let data_key = aws(&[
        "kms",
        "generate-data-key",
        "--key-id",
        &sym.arn,
        "--key-spec",
        "AES_256",
        "--encryption-context",
        &context,
        "--output",
        "json",
    ])?;
    let data_key_plaintext = decode(&data_key["Plaintext"])?;
    ensure!(
        data_key_plaintext.len() == 32,
        "generate-data-key: {data_key}"
    );
    let data_key_blob = file("dk", &decode(&data_key["CiphertextBlob"])?)?;
    let unwrapped = aws(&[
        "kms",
        "decrypt",
        "--ciphertext-blob",
        &data_key_blob,
        "--encryption-context",
        &context,
        "--output",
        "json",
    ])?;
    ensure!(
        decode(&unwrapped["Plaintext"])? == data_key_plaintext,
        "the data key blob decrypts to another key"
    );

    // Signatures: made by the CLI, verified by the CLI and by openssl with the public key
    // the CLI fetched.
    let message = format!("{prefix}-message-to-sign").into_bytes();
    let message_path = dir.join("m");
    std::fs::write(&message_path, &message)?;
    for (key, algorithm, digest, openssl_opts) in [
        (ecc, "ECDSA_SHA_256", "-sha256", &[][..]),
        (
            rsa,
            "RSASSA_PSS_SHA_384",
            "-sha384",
            &[
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:digest",
            ][..],
        ),
        (rsa, "RSASSA_PKCS1_V1_5_SHA_512", "-sha512", &[][..]),
    ] {
        let public = aws(&[
            "kms",
            "get-public-key",
            "--key-id",
            &key.arn,
            "--output",
            "json",
        ])?;
        let der = dir.join(format!("{}.der", key.name));
        let pem = dir.join(format!("{}.pem", key.name));
        std::fs::write(&der, decode(&public["PublicKey"])?)?;
        openssl(&[
            "pkey".as_ref(),
            "-pubin".as_ref(),
            "-inform".as_ref(),
            "DER".as_ref(),
            "-in".as_ref(),
            der.as_os_str(),
            "-out".as_ref(),
            pem.as_os_str(),
        ])?;
        let signed = aws(&[
            "kms",
            "sign",
            "--key-id",
            &key.arn,
            "--message",
            &format!("fileb://{}", message_path.display()),
            "--message-type",
            "RAW",
            "--signing-algorithm",
            algorithm,
            "--output",
            "json",
        ])?;
        ensure!(signed["SigningAlgorithm"] == algorithm, "sign: {signed}");
        let signature = decode(&signed["Signature"])?;
        let sig_path = dir.join(format!("{}-{algorithm}.sig", key.name));
        std::fs::write(&sig_path, &signature)?;
        let verified = aws(&[
            "kms",
            "verify",
            "--key-id",
            &key.arn,
            "--message",
            &format!("fileb://{}", message_path.display()),
            "--message-type",
            "RAW",
            "--signing-algorithm",
            algorithm,
            "--signature",
            &format!("fileb://{}", sig_path.display()),
            "--output",
            "json",
        ])?;
        ensure!(verified["SignatureValid"] == true, "verify: {verified}");
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "dgst".as_ref(),
            digest.as_ref(),
            "-verify".as_ref(),
            pem.as_os_str(),
            "-signature".as_ref(),
            sig_path.as_os_str(),
        ];
        args.extend(openssl_opts.iter().map(|o| std::ffi::OsStr::new(*o)));
        args.push(message_path.as_os_str());
        let out = openssl(&args)?;
        ensure!(
            String::from_utf8_lossy(&out.stdout).contains("Verified OK"),
            "openssl: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // The CLI made its session at the server's STS (AWS_ENDPOINT_URL_STS) itself.
    world
        .server
        .wait_record("the AWS CLI's AssumeRoleWithWebIdentity", |r| {
            r["eventName"] == "AssumeRoleWithWebIdentity"
                && r["status"] == 200
                && r["userIdentity"]["userName"] == app.username().as_str()
                && r["userAgent"]
                    .as_str()
                    .is_some_and(|ua| ua.starts_with("aws-cli/"))
        })?;
    let random = aws(&[
        "kms",
        "generate-random",
        "--number-of-bytes",
        "24",
        "--output",
        "json",
    ])?;
    ensure!(
        decode(&random["Plaintext"])?.len() == 24,
        "generate-random: {random}"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// A client outside the cluster with static credentials from the server's file: it acts
/// as its Kubernetes user (RBAC decides), and the file is re-read when it changes.
#[test]
fn static_credentials_act_as_their_user_and_follow_the_file() -> Result<()> {
    let world = world()?;
    let ns = &world.namespace;
    let prefix = unique_name("static");
    let keys = world.create_keys(ns, &[(&prefix, json!({"keySpec": "SYMMETRIC_DEFAULT"}))])?;
    let key = &keys[&prefix];
    let outsider = &world.initial_credentials[0];
    world.grant_rbac(
        ns,
        &format!("{prefix}-outsider"),
        &["encrypt", "decrypt"],
        &[&key.name],
        &Subject::User(outsider.user.clone()),
    )?;
    let late = StaticCredential::new(&format!("{prefix}-late"), ns);
    world.grant_rbac(
        ns,
        &format!("{prefix}-late"),
        &["encrypt"],
        &[&key.name],
        &Subject::User(late.user.clone()),
    )?;
    let out = calls(
        world,
        &outsider.identity(),
        &json!({"steps": [
            step_until("encrypt", "encrypt", json!({"KeyId": key.arn, "Plaintext": {"text": "outside"}}), None),
            step("decrypt", "decrypt", json!({"CiphertextBlob": {"ref": "encrypt", "field": "CiphertextBlob"}})),
            step("decrypt.bare_id", "decrypt", json!({"KeyId": key.key_id,
                "CiphertextBlob": {"ref": "encrypt", "field": "CiphertextBlob"}})),
            step("describe", "describe_key", json!({"KeyId": key.arn})),
        ]}),
    )?;
    ensure!(out.blob("decrypt", "/Plaintext")? == b"outside");
    // A bare key id resolves in the credential's namespace (its account).
    ensure!(out.blob("decrypt.bare_id", "/Plaintext")? == b"outside");
    let denied = out.error("describe", "AccessDeniedException")?;
    ensure!(
        denied.contains(&format!("User: {} ", outsider.user)) && denied.contains("describekey"),
        "{denied}"
    );
    let records = world.server.wait_audited(&out.request_ids())?;
    ensure!(
        records.iter().all(|r| {
            r.pointer("/userIdentity/userName").and_then(Value::as_str)
                == Some(outsider.user.as_str())
                && r.pointer("/userIdentity/accessKeyId")
                    .and_then(Value::as_str)
                    == Some(outsider.access_key_id.as_str())
        }),
        "audited as someone else: {records:?}"
    );

    // A credential added to the file works once the server re-reads it; one removed stops.
    let unknown = calls(
        world,
        &late.identity(),
        &json!({"steps": [step("encrypt", "encrypt", json!({"KeyId": key.arn, "Plaintext": {"text": "late"}}))]}),
    )?;
    unknown.error("encrypt", "UnrecognizedClientException")?;
    write_static_credentials(&world.static_credentials, std::slice::from_ref(&late))?;
    let added = calls(
        world,
        &late.identity(),
        &json!({"steps": [step_until("encrypt", "encrypt", json!({"KeyId": key.arn, "Plaintext": {"text": "late"}}), None)]}),
    )?;
    added
        .ok("encrypt")
        .context("a credential added to the file")?;
    let removed = calls(
        world,
        &outsider.identity(),
        &json!({"steps": [step_until("encrypt", "encrypt",
            json!({"KeyId": key.arn, "Plaintext": {"text": "outside"}}), Some("UnrecognizedClientException"))]}),
    )?;
    removed
        .error("encrypt", "UnrecognizedClientException")
        .context("a credential removed from the file")?;
    Ok(())
}

/// Encrypts `text` under `key` as `identity` (which must be allowed to) and returns the blob.
fn encrypt_as(
    world: &ServerWorld,
    identity: &Identity,
    key: &str,
    text: &str,
    context: &Value,
) -> Result<Vec<u8>> {
    let out = calls(
        world,
        identity,
        &json!({"steps": [step_until("encrypt", "encrypt",
            json!({"KeyId": key, "Plaintext": {"text": text}, "EncryptionContext": context}), None)]}),
    )?;
    out.blob("encrypt", "/CiphertextBlob")
}

/// Checks an AccessDeniedException message: it names the caller and the verb, and nothing
/// of the key.
fn check_denial(message: &str, caller: &str, verb: &str, key: &KeyInfo) -> Result<()> {
    ensure!(
        message.contains(&format!("User: {caller} ")) && message.contains(&format!("\"{verb}\"")),
        "the denial must name {caller} and {verb}: {message}"
    );
    let rest = message.replace(caller, "");
    ensure!(
        !rest.contains(&key.name) && !rest.contains(&key.key_id) && !rest.contains(&key.namespace),
        "the denial names the key: {message}"
    );
    Ok(())
}

/// A Role allowing `encrypt` and `generatedatakey` on one key allows exactly that.
#[test]
fn a_role_allows_exactly_its_verbs_on_its_key() -> Result<()> {
    let world = world()?;
    let ns = &world.namespace;
    let prefix = unique_name("rbac");
    let (a, b) = (format!("{prefix}-a"), format!("{prefix}-b"));
    let keys = world.create_keys(
        ns,
        &[
            (&a, json!({"keySpec": "SYMMETRIC_DEFAULT"})),
            (&b, json!({"keySpec": "SYMMETRIC_DEFAULT"})),
        ],
    )?;
    let (key_a, key_b) = (&keys[&a], &keys[&b]);
    let owner = full_access(world, &format!("{prefix}-owner"))?;
    let owner_id = owner.web_identity(&world.server.endpoint);
    wait_served(world, &owner_id, &[&key_a.arn, &key_b.arn])?;
    let blob_a = encrypt_as(world, &owner_id, &key_a.arn, "owner's secret", &json!({}))?;

    let limited = world.pod_identity(ns, &format!("{prefix}-limited"))?;
    world.grant_rbac(
        ns,
        &format!("{prefix}-limited"),
        &["encrypt", "generatedatakey"],
        &[&a],
        &limited.subject(),
    )?;
    let blob = json!({"b64": BASE64.encode(&blob_a)});
    let out = calls(
        world,
        &limited.web_identity(&world.server.endpoint),
        &json!({"steps": [
            step("encrypt", "encrypt", json!({"KeyId": key_a.arn, "Plaintext": {"text": "mine"}})),
            step("generate_data_key", "generate_data_key", json!({"KeyId": key_a.arn, "KeySpec": "AES_256"})),
            step("generate_data_key.by_key_id", "generate_data_key", json!({"KeyId": key_a.key_id, "NumberOfBytes": 16})),
            step("decrypt", "decrypt", json!({"CiphertextBlob": blob})),
            step("decrypt.own_blob", "decrypt", json!({"CiphertextBlob": {"ref": "encrypt", "field": "CiphertextBlob"}})),
            step("decrypt.with_key_id", "decrypt", json!({"KeyId": key_a.arn, "CiphertextBlob": blob})),
            step("generate_data_key_without_plaintext", "generate_data_key_without_plaintext", json!({"KeyId": key_a.arn, "KeySpec": "AES_256"})),
            step("generate_data_key_pair", "generate_data_key_pair", json!({"KeyId": key_a.arn, "KeyPairSpec": "ECC_NIST_P256"})),
            step("describe_key", "describe_key", json!({"KeyId": key_a.arn})),
            step("re_encrypt", "re_encrypt", json!({"CiphertextBlob": {"ref": "encrypt", "field": "CiphertextBlob"}, "DestinationKeyId": key_a.arn})),
            step("encrypt.other_key", "encrypt", json!({"KeyId": key_b.arn, "Plaintext": {"text": "mine"}})),
            step("generate_data_key.other_key", "generate_data_key", json!({"KeyId": key_b.arn, "KeySpec": "AES_256"})),
            step("list_keys", "list_keys", json!({})),
            step("list_aliases", "list_aliases", json!({})),
            step("generate_random", "generate_random", json!({"NumberOfBytes": 8})),
        ]}),
    )?;
    ensure!(out.text("encrypt", "/KeyId")? == key_a.arn);
    ensure!(out.blob("generate_data_key", "/Plaintext")?.len() == 32);
    ensure!(out.blob("generate_data_key.by_key_id", "/Plaintext")?.len() == 16);
    let caller = limited.username();
    for (step_name, verb, key) in [
        ("decrypt", "decrypt", key_a),
        ("decrypt.own_blob", "decrypt", key_a),
        ("decrypt.with_key_id", "decrypt", key_a),
        (
            "generate_data_key_without_plaintext",
            "generatedatakeywithoutplaintext",
            key_a,
        ),
        ("generate_data_key_pair", "generatedatakeypair", key_a),
        ("describe_key", "describekey", key_a),
        ("re_encrypt", "reencryptfrom", key_a),
        ("encrypt.other_key", "encrypt", key_b),
        ("generate_data_key.other_key", "generatedatakey", key_b),
        ("list_keys", "listkeys", key_a),
        ("list_aliases", "listaliases", key_a),
        ("generate_random", "generaterandom", key_a),
    ] {
        let message = out.error(step_name, "AccessDeniedException")?;
        check_denial(&message, &caller, verb, key).with_context(|| step_name.to_owned())?;
    }
    // The audit record of a denial has the reason; the caller's message did not.
    let records = world.server.wait_audited(&out.request_ids())?;
    let denied = records
        .iter()
        .filter(|r| r["errorCode"] == "AccessDeniedException")
        .collect::<Vec<_>>();
    ensure!(denied.len() == 12, "{} denials audited", denied.len());
    ensure!(
        denied
            .iter()
            .all(|r| r["denyReason"].as_str().is_some_and(|s| !s.is_empty())),
        "a denial without its reason in the audit: {denied:?}"
    );
    ensure!(
        records
            .iter()
            .filter(|r| r["status"] == 200)
            .all(|r| r["authorizedBy"] == json!(["rbac"])),
        "allowed by something else than RBAC: {records:?}"
    );
    Ok(())
}

/// A KmsGrant with an EncryptionContextSubset (or Equals) constraint allows matching
/// requests of its grantee, without any RBAC, and nothing else; its grant token selects it.
#[test]
fn a_grant_allows_its_operations_within_its_constraints() -> Result<()> {
    let world = world()?;
    let ns = &world.namespace;
    let prefix = unique_name("grant");
    let (a, b) = (format!("{prefix}-a"), format!("{prefix}-b"));
    let keys = world.create_keys(
        ns,
        &[
            (&a, json!({"keySpec": "SYMMETRIC_DEFAULT"})),
            (&b, json!({"keySpec": "SYMMETRIC_DEFAULT"})),
        ],
    )?;
    let (key_a, key_b) = (&keys[&a], &keys[&b]);
    let grantee = world.pod_identity(ns, &format!("{prefix}-grantee"))?;
    let intruder = world.pod_identity(ns, &format!("{prefix}-intruder"))?;
    let grant = |name: &str, key: &str, operations: Value, constraints: Value| {
        json!({"apiVersion": "kubekms.io/v1alpha1", "kind": "KmsGrant",
               "metadata": {"name": name, "namespace": ns},
               "spec": {"keyRef": {"name": key},
                        "grantee": {"serviceAccount": {"name": grantee.service_account}},
                        "operations": operations, "constraints": constraints}})
    };
    let (subset, equals, second) = (
        format!("{prefix}-subset"),
        format!("{prefix}-equals"),
        format!("{prefix}-second"),
    );
    world.cp.apply(&json!([
        grant(
            &subset,
            &a,
            json!(["Encrypt", "Decrypt", "GenerateDataKey"]),
            json!({"encryptionContextSubset": {"app": "billing"}})
        ),
        grant(
            &second,
            &a,
            json!(["Encrypt"]),
            json!({"encryptionContextSubset": {"app": "billing"}})
        ),
        grant(
            &equals,
            &b,
            json!(["Encrypt"]),
            json!({"encryptionContextEquals": {"app": "billing"}})
        ),
    ]))?;
    let mut ids = BTreeMap::new();
    for name in [&subset, &equals, &second] {
        let object = world.wait_condition("kmsgrant", ns, name, "Granted")?;
        let text = |p: &str| {
            object
                .pointer(p)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("{name}: no {p}"))
        };
        ids.insert(
            name.clone(),
            (text("/status/grantId")?, text("/status/grantToken")?),
        );
    }
    let owner = full_access(world, &format!("{prefix}-owner"))?;
    let owner_id = owner.web_identity(&world.server.endpoint);
    wait_served(world, &owner_id, &[&key_a.arn, &key_b.arn])?;
    let other_context_blob = encrypt_as(
        world,
        &owner_id,
        &key_a.arn,
        "not billing",
        &json!({"app": "payroll"}),
    )?;

    let billing = json!({"app": "billing", "invoice": "42"});
    let out = calls(
        world,
        &grantee.web_identity(&world.server.endpoint),
        &json!({"steps": [
            // The server learns of grants through its keyring: wait for the first.
            step_until("encrypt", "encrypt", json!({"KeyId": key_a.arn, "Plaintext": {"text": "billing"}, "EncryptionContext": billing}), None),
            step("decrypt", "decrypt", json!({"CiphertextBlob": {"ref": "encrypt", "field": "CiphertextBlob"}, "EncryptionContext": billing})),
            step("generate_data_key", "generate_data_key", json!({"KeyId": key_a.arn, "KeySpec": "AES_256", "EncryptionContext": {"app": "billing"}})),
            step("encrypt.other_context", "encrypt", json!({"KeyId": key_a.arn, "Plaintext": {"text": "x"}, "EncryptionContext": {"app": "payroll"}})),
            step("encrypt.no_context", "encrypt", json!({"KeyId": key_a.arn, "Plaintext": {"text": "x"}})),
            step("encrypt.case_differs", "encrypt", json!({"KeyId": key_a.arn, "Plaintext": {"text": "x"}, "EncryptionContext": {"app": "Billing"}})),
            step("decrypt.other_context", "decrypt", json!({"CiphertextBlob": {"b64": BASE64.encode(&other_context_blob)}, "EncryptionContext": {"app": "payroll"}})),
            step("generate_data_key_without_plaintext", "generate_data_key_without_plaintext", json!({"KeyId": key_a.arn, "KeySpec": "AES_256", "EncryptionContext": {"app": "billing"}})),
            step("describe_key", "describe_key", json!({"KeyId": key_a.arn})),
            step_until("equals.encrypt", "encrypt", json!({"KeyId": key_b.arn, "Plaintext": {"text": "x"}, "EncryptionContext": {"app": "billing"}}), None),
            step("equals.encrypt.extra_pair", "encrypt", json!({"KeyId": key_b.arn, "Plaintext": {"text": "x"}, "EncryptionContext": billing})),
            step("equals.generate_data_key", "generate_data_key", json!({"KeyId": key_b.arn, "KeySpec": "AES_256", "EncryptionContext": {"app": "billing"}})),
            step("token.second", "encrypt", json!({"KeyId": key_a.arn, "Plaintext": {"text": "x"}, "EncryptionContext": billing, "GrantTokens": [ids[&second].1]})),
            step("token.subset", "encrypt", json!({"KeyId": key_a.arn, "Plaintext": {"text": "x"}, "EncryptionContext": billing, "GrantTokens": [ids[&subset].1]})),
            step("token.malformed", "encrypt", json!({"KeyId": key_a.arn, "Plaintext": {"text": "x"}, "EncryptionContext": billing, "GrantTokens": ["not a grant token!"]})),
        ]}),
    )?;
    ensure!(out.blob("decrypt", "/Plaintext")? == b"billing");
    ensure!(out.blob("generate_data_key", "/Plaintext")?.len() == 32);
    let caller = grantee.username();
    for (name, verb, key) in [
        ("encrypt.other_context", "encrypt", key_a),
        ("encrypt.no_context", "encrypt", key_a),
        ("encrypt.case_differs", "encrypt", key_a),
        ("decrypt.other_context", "decrypt", key_a),
        (
            "generate_data_key_without_plaintext",
            "generatedatakeywithoutplaintext",
            key_a,
        ),
        ("describe_key", "describekey", key_a),
        ("equals.encrypt.extra_pair", "encrypt", key_b),
        ("equals.generate_data_key", "generatedatakey", key_b),
    ] {
        let message = out.error(name, "AccessDeniedException")?;
        check_denial(&message, &caller, verb, key).with_context(|| name.to_owned())?;
    }
    out.ok("equals.encrypt")?;
    out.error("token.malformed", "InvalidGrantTokenException")?;
    // Which grant allowed each call is in the audit: a token selects its grant.
    let records = world.server.wait_audited(&out.request_ids())?;
    let authorized_by = |step_name: &str| -> Result<Value> {
        let id = out.step(step_name)?["requestId"].clone();
        records
            .iter()
            .find(|r| r["requestId"] == id)
            .map(|r| r["authorizedBy"].clone())
            .ok_or_else(|| anyhow!("{step_name} not audited"))
    };
    ensure!(
        authorized_by("token.second")? == json!([format!("grant:{}", ids[&second].0)]),
        "GrantTokens of the second grant: {}",
        authorized_by("token.second")?
    );
    ensure!(
        authorized_by("token.subset")? == json!([format!("grant:{}", ids[&subset].0)]),
        "GrantTokens of the subset grant: {}",
        authorized_by("token.subset")?
    );
    ensure!(
        authorized_by("equals.encrypt")? == json!([format!("grant:{}", ids[&equals].0)]),
        "the Equals grant: {}",
        authorized_by("equals.encrypt")?
    );
    // A token lets nobody but the grantee use its grant.
    let stolen = calls(
        world,
        &intruder.web_identity(&world.server.endpoint),
        &json!({"steps": [step("encrypt", "encrypt", json!({"KeyId": key_a.arn,
            "Plaintext": {"text": "x"}, "EncryptionContext": billing,
            "GrantTokens": [ids[&subset].1]}))]}),
    )?;
    let message = stolen.error("encrypt", "AccessDeniedException")?;
    check_denial(&message, &intruder.username(), "encrypt", key_a)?;
    Ok(())
}

/// A RoleBinding deleted: the ServiceAccount is denied once the cached decision expires.
#[test]
fn a_deleted_role_binding_denies_after_the_cache_time() -> Result<()> {
    let world = world()?;
    let ns = &world.namespace;
    let prefix = unique_name("revoke");
    let keys = world.create_keys(ns, &[(&prefix, json!({"keySpec": "SYMMETRIC_DEFAULT"}))])?;
    let key = &keys[&prefix];
    let app = world.pod_identity(ns, &prefix)?;
    world.grant_rbac(ns, &prefix, &["encrypt"], &[&prefix], &app.subject())?;
    let identity = app.web_identity(&world.server.endpoint);
    let encrypt = json!({"KeyId": key.arn, "Plaintext": {"text": "revocable"}});
    let allowed = calls(
        world,
        &identity,
        &json!({"steps": [step_until("allowed", "encrypt", encrypt.clone(), None)]}),
    )?;
    allowed.ok("allowed")?;
    world
        .cp
        .kubectl(["delete", "rolebinding", &prefix, "-n", ns])?;
    let deleted_at = Instant::now();
    let denied = calls(
        world,
        &identity,
        &json!({"steps": [{"name": "denied", "op": "encrypt", "args": encrypt,
            "until": {"error": "AccessDeniedException",
                      "timeout": AUTHZ_CACHE_SECONDS as f64 + 30.0}}]}),
    )?;
    let message = denied
        .error("denied", "AccessDeniedException")
        .context("still allowed after the RoleBinding was deleted")?;
    check_denial(&message, &app.username(), "encrypt", key)?;
    eprintln!(
        "revocation: denied {:.1}s after the RoleBinding's deletion ({} attempts; cache {AUTHZ_CACHE_SECONDS}s)",
        deleted_at.elapsed().as_secs_f64(),
        denied.step("denied")?["attempts"]
    );
    Ok(())
}

/// A key of another namespace (account) by its ARN: denied without RBAC there, allowed
/// with it; a bare key id never leaves the caller's account.
#[test]
fn another_namespace_key_by_arn_needs_rbac_there() -> Result<()> {
    let world = world()?;
    let other = &world.other_namespace;
    let prefix = unique_name("xns");
    let keys = world.create_keys(other, &[(&prefix, json!({"keySpec": "SYMMETRIC_DEFAULT"}))])?;
    let key = &keys[&prefix];
    // Another account: the 12-digit id derived from the other namespace's name.
    ensure!(
        account_of(&key.arn) == kms_core::derive_account_id(other)
            && account_of(&key.arn) != kms_core::derive_account_id(&world.namespace),
        "{} is not the account of {other}",
        key.arn
    );
    let owner = world.pod_identity(other, &format!("{prefix}-owner"))?;
    world.grant_rbac(
        other,
        &format!("{prefix}-owner"),
        ALL_VERBS,
        &[],
        &owner.subject(),
    )?;
    let owner_id = owner.web_identity(&world.server.endpoint);
    wait_served(world, &owner_id, &[&key.arn])?;
    let owners_blob = encrypt_as(world, &owner_id, &key.arn, "cross-account", &json!({}))?;

    let caller = full_access(world, &format!("{prefix}-caller"))?;
    let identity = caller.web_identity(&world.server.endpoint);
    let blob = json!({"b64": BASE64.encode(&owners_blob)});
    let before = calls(
        world,
        &identity,
        &json!({"steps": [
            step("encrypt.arn", "encrypt", json!({"KeyId": key.arn, "Plaintext": {"text": "x"}})),
            step("encrypt.bare_id", "encrypt", json!({"KeyId": key.key_id, "Plaintext": {"text": "x"}})),
            step("decrypt.arn", "decrypt", json!({"KeyId": key.arn, "CiphertextBlob": blob})),
        ]}),
    )?;
    let message = before.error("encrypt.arn", "AccessDeniedException")?;
    check_denial(&message, &caller.username(), "encrypt", key)?;
    before.error("encrypt.bare_id", "NotFoundException")?;
    before.error("decrypt.arn", "AccessDeniedException")?;

    // RBAC in the key's namespace for the caller of the other namespace.
    world.grant_rbac(
        other,
        &format!("{prefix}-cross"),
        &["encrypt", "decrypt"],
        &[&prefix],
        &caller.subject(),
    )?;
    let after = calls(
        world,
        &identity,
        &json!({"steps": [
            step_until("encrypt.arn", "encrypt", json!({"KeyId": key.arn, "Plaintext": {"text": "x"}}), None),
            step("decrypt.arn", "decrypt", json!({"KeyId": key.arn, "CiphertextBlob": blob})),
            step("decrypt.without_key_id", "decrypt", json!({"CiphertextBlob": blob})),
            step("encrypt.bare_id", "encrypt", json!({"KeyId": key.key_id, "Plaintext": {"text": "x"}})),
            step("describe.arn", "describe_key", json!({"KeyId": key.arn})),
        ]}),
    )?;
    ensure!(after.text("encrypt.arn", "/KeyId")? == key.arn);
    ensure!(after.blob("decrypt.arn", "/Plaintext")? == b"cross-account");
    // Without KeyId a blob resolves in the caller's own account.
    after.error("decrypt.without_key_id", "InvalidCiphertextException")?;
    after.error("encrypt.bare_id", "NotFoundException")?;
    after.error("describe.arn", "AccessDeniedException")?;
    Ok(())
}

/// A key a KMS v2 plugin serves to kube-apiserver cannot be used through the API at all,
/// whatever RBAC says, and the `kubekms:` encryption context prefix is reserved.
#[test]
fn a_plugin_served_key_and_the_reserved_context_prefix_are_refused() -> Result<()> {
    let world = world()?;
    let ns = &world.namespace;
    let prefix = unique_name("served");
    let (served, plain) = (format!("{prefix}-served"), format!("{prefix}-plain"));
    let keys = world.create_keys(
        ns,
        &[
            (&served, json!({"keySpec": "SYMMETRIC_DEFAULT"})),
            (&plain, json!({"keySpec": "SYMMETRIC_DEFAULT"})),
        ],
    )?;
    let (served_key, plain_key) = (&keys[&served], &keys[&plain]);
    let app = full_access(world, &prefix)?;
    let identity = app.web_identity(&world.server.endpoint);
    wait_served(world, &identity, &[&served_key.arn, &plain_key.arn])?;
    let blob = json!({"b64": BASE64.encode(encrypt_as(world, &identity, &served_key.arn, "before", &json!({}))?)});

    // A plugin's heartbeat Lease naming the key (what `kubekms-plugin serve --follow`
    // writes): from then on the key is kube-apiserver's.
    let lease = format!("kubekms-plugin-{prefix}");
    let micro = time::OffsetDateTime::now_utc().format(time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    ))?;
    world.cp.apply(&json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": lease, "namespace": ns,
                     "labels": {"kubekms.io/plugin-for": served}},
        "spec": {"holderIdentity": prefix, "leaseDurationSeconds": 3600,
                 "acquireTime": micro, "renewTime": micro},
    }))?;
    let out = calls(
        world,
        &identity,
        &json!({"steps": [
            step_until("encrypt", "encrypt", json!({"KeyId": served_key.arn, "Plaintext": {"text": "x"}}), Some("UnsupportedOperationException")),
            step("decrypt", "decrypt", json!({"CiphertextBlob": blob})),
            step("decrypt.with_key_id", "decrypt", json!({"KeyId": served_key.arn, "CiphertextBlob": blob})),
            step("describe_key", "describe_key", json!({"KeyId": served_key.arn})),
            step("generate_data_key", "generate_data_key", json!({"KeyId": served_key.arn, "KeySpec": "AES_256"})),
            step("re_encrypt.to", "re_encrypt", json!({"CiphertextBlob": blob, "DestinationKeyId": plain_key.arn})),
            step("list_keys", "list_keys", json!({"Limit": 1000})),
            step("plain.encrypt", "encrypt", json!({"KeyId": plain_key.arn, "Plaintext": {"text": "x"}})),
            step("prefix.encrypt", "encrypt", json!({"KeyId": plain_key.arn, "Plaintext": {"text": "x"}, "EncryptionContext": {"kubekms:purpose": "dek-seed"}})),
            step("prefix.encrypt.among_others", "encrypt", json!({"KeyId": plain_key.arn, "Plaintext": {"text": "x"}, "EncryptionContext": {"app": "a", "kubekms:anything": "b"}})),
            step("prefix.decrypt", "decrypt", json!({"CiphertextBlob": {"ref": "plain.encrypt", "field": "CiphertextBlob"}, "EncryptionContext": {"kubekms:purpose": "dek-seed"}})),
            step("prefix.generate_data_key", "generate_data_key", json!({"KeyId": plain_key.arn, "KeySpec": "AES_256", "EncryptionContext": {"kubekms:purpose": "dek-seed"}})),
            step("prefix.re_encrypt", "re_encrypt", json!({"CiphertextBlob": {"ref": "plain.encrypt", "field": "CiphertextBlob"}, "DestinationKeyId": plain_key.arn, "DestinationEncryptionContext": {"kubekms:purpose": "x"}})),
            step("prefix.other_case", "encrypt", json!({"KeyId": plain_key.arn, "Plaintext": {"text": "x"}, "EncryptionContext": {"kubekms-purpose": "allowed"}})),
        ]}),
    )?;
    for name in [
        "encrypt",
        "decrypt",
        "decrypt.with_key_id",
        "describe_key",
        "generate_data_key",
        "re_encrypt.to",
    ] {
        out.error(name, "UnsupportedOperationException")?;
    }
    let listed = out.ok("list_keys")?["Keys"].to_string();
    ensure!(
        !listed.contains(&served_key.key_id),
        "ListKeys lists the served key"
    );
    ensure!(
        listed.contains(&plain_key.key_id),
        "ListKeys lacks the other key"
    );
    out.ok("plain.encrypt")?;
    for name in [
        "prefix.encrypt",
        "prefix.encrypt.among_others",
        "prefix.decrypt",
        "prefix.generate_data_key",
        "prefix.re_encrypt",
    ] {
        out.error(name, "ValidationException")?;
    }
    out.ok("prefix.other_case")?;
    world.cp.kubectl(["delete", "lease", &lease, "-n", ns])?;
    Ok(())
}

/// The key-state rules through the API: Disabled refuses with DisabledException,
/// PendingDeletion with KMSInvalidStateException; enabled again, old blobs decrypt.
#[test]
fn key_states_refuse_use_with_the_aws_exceptions() -> Result<()> {
    let world = world()?;
    let ns = &world.namespace;
    let prefix = unique_name("states");
    let keys = world.create_keys(ns, &[(&prefix, json!({"keySpec": "SYMMETRIC_DEFAULT"}))])?;
    let key = &keys[&prefix];
    let app = full_access(world, &prefix)?;
    let identity = app.web_identity(&world.server.endpoint);
    wait_served(world, &identity, &[&key.arn])?;
    let blob = json!({"b64": BASE64.encode(encrypt_as(world, &identity, &key.arn, "stateful", &json!({}))?)});
    let use_key = |label: &str, want: Option<&str>| -> Result<Outcomes> {
        calls(
            world,
            &identity,
            &json!({"steps": [
                step_until(&format!("{label}.encrypt"), "encrypt", json!({"KeyId": key.arn, "Plaintext": {"text": "x"}}), want),
                step(&format!("{label}.decrypt"), "decrypt", json!({"CiphertextBlob": blob})),
                step(&format!("{label}.generate_data_key"), "generate_data_key", json!({"KeyId": key.arn, "KeySpec": "AES_256"})),
                step(&format!("{label}.describe"), "describe_key", json!({"KeyId": key.arn})),
            ]}),
        )
    };

    world.patch_key_spec(ns, &prefix, &json!({"enabled": false}))?;
    world.wait_key(ns, &prefix, "Disabled", |k| {
        k["status"]["keyState"] == "Disabled"
    })?;
    let disabled = use_key("disabled", Some("DisabledException"))?;
    for op in ["encrypt", "decrypt", "generate_data_key"] {
        disabled.error(&format!("disabled.{op}"), "DisabledException")?;
    }
    let m = &disabled.ok("disabled.describe")?["KeyMetadata"];
    ensure!(m["KeyState"] == "Disabled" && m["Enabled"] == false, "{m}");

    world.patch_key_spec(
        ns,
        &prefix,
        &json!({"deletion": {"pendingWindowInDays": 7}}),
    )?;
    world.wait_key(ns, &prefix, "PendingDeletion", |k| {
        k["status"]["keyState"] == "PendingDeletion"
    })?;
    let pending = use_key("pending", Some("KMSInvalidStateException"))?;
    for op in ["encrypt", "decrypt", "generate_data_key"] {
        pending.error(&format!("pending.{op}"), "KMSInvalidStateException")?;
    }
    let m = &pending.ok("pending.describe")?["KeyMetadata"];
    ensure!(
        m["KeyState"] == "PendingDeletion" && m["DeletionDate"].is_number(),
        "{m}"
    );

    // Cancelled, the key is Disabled (as AWS's CancelKeyDeletion leaves it); enabled, the
    // blob from before decrypts again.
    world.patch_key_spec(ns, &prefix, &json!({"deletion": null}))?;
    world.wait_key(ns, &prefix, "Disabled after the cancellation", |k| {
        k["status"]["keyState"] == "Disabled"
    })?;
    world.patch_key_spec(ns, &prefix, &json!({"enabled": true}))?;
    world.wait_key(ns, &prefix, "Enabled", |k| {
        k["status"]["keyState"] == "Enabled"
    })?;
    let enabled = use_key("enabled", None)?;
    ensure!(enabled.blob("enabled.decrypt", "/Plaintext")? == b"stateful");
    enabled.ok("enabled.generate_data_key")?;
    Ok(())
}

/// A blob encrypted before an on-demand rotation decrypts after it, and new blobs name
/// the new material version.
#[test]
fn blobs_survive_rotation_and_new_blobs_use_the_new_version() -> Result<()> {
    let world = world()?;
    let ns = &world.namespace;
    let prefix = unique_name("rotate");
    let keys = world.create_keys(ns, &[(&prefix, json!({"keySpec": "SYMMETRIC_DEFAULT"}))])?;
    let key = &keys[&prefix];
    let app = full_access(world, &prefix)?;
    let identity = app.web_identity(&world.server.endpoint);
    wait_served(world, &identity, &[&key.arn])?;
    let context = json!({"rotation": "e2e"});
    let before = encrypt_as(world, &identity, &key.arn, "before rotation", &context)?;
    ensure!(
        blob_header(&before)?.1 == 1,
        "a new key's blob is version 1"
    );

    world.patch_key_spec(ns, &prefix, &json!({"rotation": {"onDemandToken": prefix}}))?;
    world.wait_key(ns, &prefix, "rotated to version 2", |k| {
        k["status"]["currentVersion"] == 2
    })?;
    let blob = json!({"b64": BASE64.encode(&before)});
    let out = calls(
        world,
        &identity,
        &json!({"steps": [
            // The server has the new version once ListKeyRotations shows the rotation.
            {"name": "rotations", "op": "list_key_rotations", "args": {"KeyId": key.arn},
             "until": {"error": null, "contains": "ON_DEMAND", "timeout": PROPAGATION}},
            step("decrypt.old", "decrypt", json!({"CiphertextBlob": blob, "EncryptionContext": context})),
            step("encrypt.new", "encrypt", json!({"KeyId": key.arn, "Plaintext": {"text": "after rotation"}, "EncryptionContext": context})),
            step("decrypt.new", "decrypt", json!({"CiphertextBlob": {"ref": "encrypt.new", "field": "CiphertextBlob"}, "EncryptionContext": context})),
            step("generate_data_key", "generate_data_key", json!({"KeyId": key.arn, "KeySpec": "AES_256"})),
            step("re_encrypt.old", "re_encrypt", json!({"CiphertextBlob": blob, "SourceEncryptionContext": context, "DestinationKeyId": key.arn, "DestinationEncryptionContext": context})),
            step("re_encrypt.old.decrypt", "decrypt", json!({"CiphertextBlob": {"ref": "re_encrypt.old", "field": "CiphertextBlob"}, "EncryptionContext": context})),
            step("describe", "describe_key", json!({"KeyId": key.arn})),
        ]}),
    )?;
    let rotations = out.ok("rotations")?["Rotations"].clone();
    ensure!(
        rotations.as_array().map(Vec::len) == Some(1)
            && rotations[0]["RotationType"] == "ON_DEMAND"
            && rotations[0]["KeyId"] == key.key_id.as_str(),
        "ListKeyRotations: {rotations}"
    );
    ensure!(out.blob("decrypt.old", "/Plaintext")? == b"before rotation");
    ensure!(out.blob("decrypt.new", "/Plaintext")? == b"after rotation");
    for (name, field) in [
        ("encrypt.new", "/CiphertextBlob"),
        ("generate_data_key", "/CiphertextBlob"),
        ("re_encrypt.old", "/CiphertextBlob"),
    ] {
        let (id, version) = blob_header(&out.blob(name, field)?)?;
        ensure!(
            id.to_string() == key.key_id && version == 2,
            "{name}: a blob of {id} version {version} after the rotation"
        );
    }
    ensure!(out.blob("re_encrypt.old.decrypt", "/Plaintext")? == b"before rotation");
    Ok(())
}

/// Two replicas (two processes, one root key): each decrypts the other's blobs and
/// accepts the other's STS sessions.
#[test]
fn two_replicas_answer_each_others_ciphertexts_and_sessions() -> Result<()> {
    let world = world()?;
    let ns = &world.namespace;
    let prefix = unique_name("replicas");
    let keys = world.create_keys(
        ns,
        &[
            (
                &format!("{prefix}-sym"),
                json!({"keySpec": "SYMMETRIC_DEFAULT"}),
            ),
            (
                &format!("{prefix}-ecc"),
                json!({"keySpec": "ECC_NIST_P384", "keyUsage": "SIGN_VERIFY"}),
            ),
        ],
    )?;
    let sym = &keys[&format!("{prefix}-sym")];
    let ecc = &keys[&format!("{prefix}-ecc")];
    let app = full_access(world, &prefix)?;
    let a = &world.server;
    let identity = app.web_identity(&a.endpoint);
    wait_served(world, &identity, &[&sym.arn, &ecc.arn])?;
    let mut b = KmsServer::start(
        world.cp,
        &unique_name("kubekms-server-b"),
        &ServerOptions {
            root_key: world.root_key.clone(),
            cert: world.cert.clone(),
            static_credentials: None,
            authz_cache_seconds: AUTHZ_CACHE_SECONDS,
            rust_log: "info".to_owned(),
            dir: world.dir.clone(),
        },
    )?;
    let result = (|| -> Result<()> {
        let ref_blob = |s: &str| json!({"ref": s, "field": "CiphertextBlob"});
        let out = calls(
            world,
            &identity,
            &json!({
                "clients": {
                    // STS and KMS at A (the environment), A's session at B, B's STS
                    // session at A.
                    "b_with_a_session": {"endpoint": b.endpoint, "credentials_of": "default"},
                    "b": {"endpoint": b.endpoint, "sts_endpoint": b.endpoint, "token": app.token},
                    "a_with_b_session": {"endpoint": a.endpoint, "credentials_of": "b"},
                },
                "steps": [
                    {"name": "a.encrypt", "op": "encrypt", "args": {"KeyId": sym.arn, "Plaintext": {"text": "from a"}}},
                    {"name": "b.decrypt_a", "client": "b_with_a_session", "op": "decrypt", "args": {"CiphertextBlob": ref_blob("a.encrypt")}},
                    {"name": "b.encrypt", "client": "b", "op": "encrypt", "args": {"KeyId": sym.arn, "Plaintext": {"text": "from b"}}},
                    {"name": "a.decrypt_b", "client": "a_with_b_session", "op": "decrypt", "args": {"CiphertextBlob": ref_blob("b.encrypt")}},
                    {"name": "a.decrypt_b.a_session", "op": "decrypt", "args": {"CiphertextBlob": ref_blob("b.encrypt")}},
                    {"name": "b.sign", "client": "b", "op": "sign", "args": {"KeyId": ecc.arn, "Message": {"text": "replicated"}, "SigningAlgorithm": "ECDSA_SHA_384"}},
                    {"name": "a.verify_b", "op": "verify", "args": {"KeyId": ecc.arn, "Message": {"text": "replicated"}, "SigningAlgorithm": "ECDSA_SHA_384", "Signature": {"ref": "b.sign", "field": "Signature"}}},
                    {"name": "b.generate_data_key", "client": "b_with_a_session", "op": "generate_data_key", "args": {"KeyId": sym.arn, "KeySpec": "AES_256"}},
                    {"name": "a.decrypt_data_key", "op": "decrypt", "args": {"CiphertextBlob": ref_blob("b.generate_data_key")}},
                ],
            }),
        )?;
        ensure!(out.blob("b.decrypt_a", "/Plaintext")? == b"from a");
        ensure!(out.blob("a.decrypt_b", "/Plaintext")? == b"from b");
        ensure!(out.blob("a.decrypt_b.a_session", "/Plaintext")? == b"from b");
        ensure!(out.ok("a.verify_b")?["SignatureValid"] == true);
        ensure!(
            out.blob("a.decrypt_data_key", "/Plaintext")?
                == out.blob("b.generate_data_key", "/Plaintext")?
        );
        // Each replica answered its share: the request ids are in its own audit log.
        let id = |s: &str| -> Result<String> {
            Ok(out.step(s)?["requestId"]
                .as_str()
                .unwrap_or_default()
                .to_owned())
        };
        b.wait_audited(&[
            id("b.decrypt_a")?,
            id("b.encrypt")?,
            id("b.sign")?,
            id("b.generate_data_key")?,
        ])?;
        a.wait_audited(&[
            id("a.decrypt_b")?,
            id("a.verify_b")?,
            id("a.decrypt_data_key")?,
        ])?;
        ensure!(
            b.audit()
                .contains("\"eventName\":\"AssumeRoleWithWebIdentity\""),
            "B issued no session"
        );
        Ok(())
    })();
    b.process.stop()?;
    result
}

/// The forms a leaked secret would take in a log line: as it is, base64 (padded or not,
/// standard or URL-safe) and hex.
fn leak_forms(secret: &[u8]) -> Vec<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        secret.to_vec(),
        BASE64.encode(secret).into_bytes(),
        STANDARD_NO_PAD.encode(secret).into_bytes(),
        URL_SAFE_NO_PAD.encode(secret).into_bytes(),
        hex.clone().into_bytes(),
        hex.to_ascii_uppercase().into_bytes(),
    ]
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    (!needle.is_empty())
        .then(|| haystack.windows(needle.len()).position(|w| w == needle))
        .flatten()
}

/// Every operation with recognisable plaintexts: none of them, nor the data keys, private
/// keys, shared secrets, random bytes, ciphertexts, the session's secret and token or the
/// ServiceAccount token, is in the audit log or any process log.
#[test]
fn audit_and_logs_hold_no_secrets() -> Result<()> {
    let world = world()?;
    let ns = &world.namespace;
    let prefix = unique_name("audit");
    let names = ["sym", "ecc", "hmac", "agree", "rsa"].map(|n| format!("{prefix}-{n}"));
    let keys = world.create_keys(
        ns,
        &[
            (&names[0], json!({"keySpec": "SYMMETRIC_DEFAULT"})),
            (
                &names[1],
                json!({"keySpec": "ECC_NIST_P256", "keyUsage": "SIGN_VERIFY"}),
            ),
            (
                &names[2],
                json!({"keySpec": "HMAC_256", "keyUsage": "GENERATE_VERIFY_MAC"}),
            ),
            (
                &names[3],
                json!({"keySpec": "ECC_NIST_P256", "keyUsage": "KEY_AGREEMENT"}),
            ),
            (
                &names[4],
                json!({"keySpec": "RSA_2048", "keyUsage": "ENCRYPT_DECRYPT"}),
            ),
        ],
    )?;
    let [sym, ecc, hmac, agree, rsa] = names.each_ref().map(|n| &keys[n]);
    let app = full_access(world, &prefix)?;
    let identity = app.web_identity(&world.server.endpoint);
    wait_served(
        world,
        &identity,
        &[&sym.arn, &ecc.arn, &hmac.arn, &agree.arn, &rsa.arn],
    )?;
    let dir = world.dir.join(&prefix);
    std::fs::create_dir_all(&dir)?;
    let peer = dir.join("peer.pem");
    openssl(&[
        "genpkey".as_ref(),
        "-algorithm".as_ref(),
        "EC".as_ref(),
        "-pkeyopt".as_ref(),
        "ec_paramgen_curve:P-256".as_ref(),
        "-out".as_ref(),
        peer.as_os_str(),
    ])?;
    let peer_der = openssl(&[
        "pkey".as_ref(),
        "-in".as_ref(),
        peer.as_os_str(),
        "-pubout".as_ref(),
        "-outform".as_ref(),
        "DER".as_ref(),
    ])?
    .stdout;

    let m = prefix.replace('-', "");
    let text = |what: &str| format!("{m}-secret-{what}");
    let context = json!({"audit": "e2e"});
    let r = |s: &str, f: &str| json!({"ref": s, "field": f});
    let out = calls(
        world,
        &identity,
        &json!({"report_credentials": ["default"], "steps": [
            step("encrypt", "encrypt", json!({"KeyId": sym.arn, "Plaintext": {"text": text("encrypt")}, "EncryptionContext": context})),
            step("decrypt", "decrypt", json!({"CiphertextBlob": r("encrypt", "CiphertextBlob"), "EncryptionContext": context})),
            step("decrypt.refused", "decrypt", json!({"CiphertextBlob": r("encrypt", "CiphertextBlob"), "EncryptionContext": {"audit": "other"}})),
            step("re_encrypt", "re_encrypt", json!({"CiphertextBlob": r("encrypt", "CiphertextBlob"), "SourceEncryptionContext": context, "DestinationKeyId": sym.arn})),
            step("generate_data_key", "generate_data_key", json!({"KeyId": sym.arn, "KeySpec": "AES_256"})),
            step("generate_data_key_without_plaintext", "generate_data_key_without_plaintext", json!({"KeyId": sym.arn, "NumberOfBytes": 48})),
            step("generate_data_key_pair", "generate_data_key_pair", json!({"KeyId": sym.arn, "KeyPairSpec": "ECC_NIST_P256"})),
            step("generate_data_key_pair_without_plaintext", "generate_data_key_pair_without_plaintext", json!({"KeyId": sym.arn, "KeyPairSpec": "RSA_2048"})),
            step("generate_random", "generate_random", json!({"NumberOfBytes": 64})),
            step("sign", "sign", json!({"KeyId": ecc.arn, "Message": {"text": text("sign")}, "SigningAlgorithm": "ECDSA_SHA_256"})),
            step("verify", "verify", json!({"KeyId": ecc.arn, "Message": {"text": text("sign")}, "Signature": r("sign", "Signature"), "SigningAlgorithm": "ECDSA_SHA_256"})),
            step("sign.digest", "sign", json!({"KeyId": ecc.arn, "Message": {"text": text("digest-of-32-bytes-exactly")[..32]}, "MessageType": "DIGEST", "SigningAlgorithm": "ECDSA_SHA_256"})),
            step("generate_mac", "generate_mac", json!({"KeyId": hmac.arn, "Message": {"text": text("mac")}, "MacAlgorithm": "HMAC_SHA_256"})),
            step("verify_mac", "verify_mac", json!({"KeyId": hmac.arn, "Message": {"text": text("mac")}, "Mac": r("generate_mac", "Mac"), "MacAlgorithm": "HMAC_SHA_256"})),
            step("derive_shared_secret", "derive_shared_secret", json!({"KeyId": agree.arn, "KeyAgreementAlgorithm": "ECDH", "PublicKey": b64(&peer_der)})),
            step("rsa.encrypt", "encrypt", json!({"KeyId": rsa.arn, "Plaintext": {"text": text("rsa")}, "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"})),
            step("rsa.decrypt", "decrypt", json!({"KeyId": rsa.arn, "CiphertextBlob": r("rsa.encrypt", "CiphertextBlob"), "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"})),
            step("get_public_key", "get_public_key", json!({"KeyId": ecc.arn})),
            step("describe_key", "describe_key", json!({"KeyId": sym.arn})),
            step("list_keys", "list_keys", json!({})),
            step("list_aliases", "list_aliases", json!({})),
            step("list_grants", "list_grants", json!({"KeyId": sym.arn})),
            step("get_key_rotation_status", "get_key_rotation_status", json!({"KeyId": sym.arn})),
            step("list_key_rotations", "list_key_rotations", json!({"KeyId": sym.arn})),
            step("list_resource_tags", "list_resource_tags", json!({"KeyId": sym.arn})),
            step("dry_run", "encrypt", json!({"KeyId": sym.arn, "Plaintext": {"text": text("dry-run")}, "DryRun": true})),
        ]}),
    )?;
    let mut secrets: Vec<(String, Vec<u8>)> = ["encrypt", "sign", "mac", "rsa", "dry-run"]
        .iter()
        .map(|w| (format!("plaintext {w}"), text(w).into_bytes()))
        .collect();
    secrets.push((
        "digest".into(),
        text("digest-of-32-bytes-exactly").as_bytes()[..32].to_vec(),
    ));
    for (label, name, field) in [
        ("ciphertext", "encrypt", "/CiphertextBlob"),
        ("re-encrypted ciphertext", "re_encrypt", "/CiphertextBlob"),
        ("data key", "generate_data_key", "/Plaintext"),
        ("data key blob", "generate_data_key", "/CiphertextBlob"),
        (
            "data key pair private key",
            "generate_data_key_pair",
            "/PrivateKeyPlaintext",
        ),
        (
            "data key pair private key blob",
            "generate_data_key_pair_without_plaintext",
            "/PrivateKeyCiphertextBlob",
        ),
        ("random bytes", "generate_random", "/Plaintext"),
        ("shared secret", "derive_shared_secret", "/SharedSecret"),
        ("RSA ciphertext", "rsa.encrypt", "/CiphertextBlob"),
    ] {
        secrets.push((label.to_owned(), out.blob(name, field)?));
    }
    ensure!(out.blob("decrypt", "/Plaintext")? == text("encrypt").as_bytes());
    out.error("decrypt.refused", "InvalidCiphertextException")?;
    out.error("dry_run", "DryRunOperationException")?;
    let session = out
        .json
        .pointer("/credentials/default")
        .cloned()
        .context("the session's credentials")?;
    let session_token = session["SessionToken"].as_str().context("session token")?;
    ensure!(
        session_token.starts_with("kks1."),
        "session token {session_token:.8}…"
    );
    secrets.push(("session token".into(), session_token.as_bytes().to_vec()));
    secrets.push((
        "session token body".into(),
        session_token
            .trim_start_matches("kks1.")
            .as_bytes()
            .to_vec(),
    ));
    secrets.push((
        "session secret".into(),
        session["SecretAccessKey"]
            .as_str()
            .context("secret")?
            .as_bytes()
            .to_vec(),
    ));
    secrets.push(("ServiceAccount token".into(), app.token.as_bytes().to_vec()));
    // The JWT's signature part alone.
    if let Some(signature) = app.token.rsplit('.').next() {
        secrets.push((
            "ServiceAccount token signature".into(),
            signature.as_bytes().to_vec(),
        ));
    }

    let ids = out.request_ids();
    ensure!(ids.len() == 26, "{} calls answered", ids.len());
    let records = world.server.wait_audited(&ids)?;
    let access_key = session["AccessKeyId"].as_str().unwrap_or_default();
    for record in &records {
        ensure!(
            record["userIdentity"]["userName"] == app.username().as_str()
                && record["userIdentity"]["accessKeyId"] == access_key,
            "{record}"
        );
    }
    let encrypt_record = records
        .iter()
        .find(|r| r["eventName"] == "Encrypt" && r["status"] == 200)
        .context("the Encrypt record")?;
    ensure!(
        encrypt_record["encryptionContext"] == context
            && encrypt_record["resources"] == json!([sym.arn]),
        "{encrypt_record}"
    );
    // The session's own record: issued at the server's STS to this ServiceAccount.
    let audit = world.server.audit();
    ensure!(
        audit.lines().any(
            |l| l.contains("\"eventName\":\"AssumeRoleWithWebIdentity\"")
                && l.contains(access_key)
                && l.contains(&app.username())
        ),
        "no AssumeRoleWithWebIdentity record issued {access_key}"
    );
    // The logs saw these requests (the refused one is logged with its request id), so
    // the search below looks at lines written while they ran.
    let refused_id = out.step("decrypt.refused")?["requestId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !world.server.process.log().contains(&refused_id) {
        ensure!(
            Instant::now() < deadline,
            "the server log never mentions the refused request {refused_id}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut files: Vec<(String, Vec<u8>)> = vec![("audit log".into(), audit.into_bytes())];
    for (name, log) in world.process_logs() {
        files.push((format!("log of {name}"), log.into_bytes()));
    }
    let mut found = Vec::new();
    for (label, secret) in &secrets {
        ensure!(
            secret.len() >= 16,
            "{label}: {} bytes is too short to search",
            secret.len()
        );
        for form in leak_forms(secret) {
            for (file, bytes) in &files {
                if let Some(at) = find(bytes, &form) {
                    let start = at.saturating_sub(120);
                    let end = (at + form.len() + 40).min(bytes.len());
                    found.push(format!(
                        "{label} in the {file}: …{}…",
                        String::from_utf8_lossy(&bytes[start..end])
                    ));
                }
            }
        }
    }
    ensure!(found.is_empty(), "secrets leaked:\n{}", found.join("\n"));
    eprintln!(
        "audit: {} secrets ({} forms each) absent from {} files ({} bytes)",
        secrets.len(),
        leak_forms(b"x").len(),
        files.len(),
        files.iter().map(|(_, b)| b.len()).sum::<usize>()
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Bad requests of every class get the right AWS exception (and HTTP status) without
/// echoing what was sent, and the server stays up.
#[test]
fn bad_input_gets_the_right_exception_and_the_server_stays_up() -> Result<()> {
    use kms_core::SecretBytes;
    use kms_core::keystore::FileKeyStore;
    use kubekms_server::auth::SessionSealer;
    use kubekms_server::auth::session::{SessionClaims, new_access_key_id};

    let world = world()?;
    let ns = &world.namespace;
    let prefix = unique_name("bad");
    let keys = world.create_keys(ns, &[(&prefix, json!({"keySpec": "SYMMETRIC_DEFAULT"}))])?;
    let key = &keys[&prefix];
    let app = full_access(world, &prefix)?;
    let identity = app.web_identity(&world.server.endpoint);
    wait_served(world, &identity, &[&key.arn])?;

    // A session as the server would have issued it an hour ago, sealed with the root key
    // (every replica's), now expired.
    let sealer = SessionSealer::from_root_store(&FileKeyStore::open(&world.root_key)?)?;
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let access_key_id = new_access_key_id()?;
    let now = time::OffsetDateTime::now_utc();
    let expired_token = sealer.seal(&SessionClaims {
        access_key_id: access_key_id.clone(),
        secret_access_key: SecretBytes::from_slice(secret.as_bytes()),
        username: app.username(),
        uid: None,
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".into(),
        ],
        namespace: ns.clone(),
        audience: "kubekms".into(),
        issued_at: now - time::Duration::hours(2),
        expires_at: now - time::Duration::hours(1),
    })?;
    let wrong_audience =
        world
            .cp
            .service_account_token(ns, &app.service_account, "not-kubekms", 600)?;
    let foreign_arn = format!("arn:aws:kms:{REGION}:000000000001:key/{}", key.key_id);
    let pid = world.server.process.pid();
    let out = Outcomes::new(run_python(
        "bad_input.py",
        &world.env(&identity),
        &json!({"key_arn": key.arn, "key_id": key.key_id, "foreign_arn": foreign_arn,
                "region": REGION, "wrong_audience_token": wrong_audience, "sts_token": app.token,
                "expired": {"AccessKeyId": access_key_id, "SecretAccessKey": secret,
                            "SessionToken": expired_token}}),
    )?);
    let case = |name: &str| -> Result<&Value> {
        out.json
            .pointer("/results")
            .and_then(|r| r.get(name))
            .ok_or_else(|| anyhow!("no case {name}"))
    };
    let expect = |name: &str, status: u64, code: &str| -> Result<String> {
        let c = case(name)?;
        ensure!(
            c["status"] == status && c["type"] == code,
            "{name}: expected {status} {code}, got {c}"
        );
        ensure!(
            c["requestId"].as_str().is_some_and(|id| !id.is_empty()),
            "{name}: no x-amzn-RequestId: {c}"
        );
        Ok(c["message"].as_str().unwrap_or_default().to_owned())
    };
    ensure!(
        case("valid_before")?["status"] == 200,
        "{}",
        case("valid_before")?
    );
    for (name, status, code) in [
        ("unknown_target", 400, "UnknownOperationException"),
        ("management_operation", 400, "UnknownOperationException"),
        ("missing_target", 400, "UnknownOperationException"),
        ("malformed_json", 400, "SerializationException"),
        ("not_an_object", 400, "SerializationException"),
        ("wrong_types", 400, "SerializationException"),
        ("blob_not_base64", 400, "SerializationException"),
        ("missing_member", 400, "ValidationException"),
        ("oversize_body", 413, "RequestEntityTooLargeException"),
        ("random_too_many", 400, "ValidationException"),
        ("random_zero", 400, "ValidationException"),
        ("empty_key_id", 400, "ValidationException"),
        (
            "missing_authorization",
            400,
            "MissingAuthenticationTokenException",
        ),
        ("bad_signature", 400, "InvalidSignatureException"),
        (
            "body_changed_after_signing",
            400,
            "InvalidSignatureException",
        ),
        (
            "target_changed_after_signing",
            400,
            "InvalidSignatureException",
        ),
        (
            "malformed_authorization",
            400,
            "IncompleteSignatureException",
        ),
        ("wrong_secret", 400, "InvalidSignatureException"),
        ("unknown_access_key", 400, "UnrecognizedClientException"),
        ("other_region", 400, "InvalidSignatureException"),
        ("other_service", 400, "InvalidSignatureException"),
        ("signed_20_minutes_ago", 400, "InvalidSignatureException"),
        ("unsigned_payload", 400, "InvalidSignatureException"),
        ("forged_session_token", 400, "UnrecognizedClientException"),
        ("tampered_session_token", 400, "UnrecognizedClientException"),
        (
            "session_token_of_another_key",
            400,
            "UnrecognizedClientException",
        ),
        ("no_session_token", 400, "UnrecognizedClientException"),
        ("expired_session_token", 400, "ExpiredTokenException"),
        ("nonexistent_key_id", 400, "NotFoundException"),
        ("nonexistent_alias", 400, "NotFoundException"),
        ("foreign_account_arn", 400, "NotFoundException"),
        ("malformed_arn", 400, "InvalidArnException"),
        ("invalid_ciphertext", 400, "InvalidCiphertextException"),
        ("get_root", 404, "UnknownOperationException"),
        ("post_elsewhere", 404, "UnknownOperationException"),
        ("sts_garbage_token", 400, "InvalidIdentityToken"),
        ("sts_wrong_audience", 400, "InvalidIdentityToken"),
        ("sts_unknown_action", 400, "InvalidAction"),
        ("sts_missing_action", 400, "MissingAction"),
        ("sts_session_policy", 400, "ValidationError"),
        ("sts_duration_too_short", 400, "ValidationError"),
    ] {
        let message = expect(name, status, code)?;
        // Nothing the caller sent comes back in a message.
        for sent in [
            session_token_of(&out)?.as_str(),
            "kks1.AAAA",
            "not.a.token",
            expired_token.as_str(),
            wrong_audience.as_str(),
            app.token.as_str(),
            "aGVsbG8",
        ] {
            ensure!(
                !message.contains(sent),
                "{name}: the message echoes what was sent: {message}"
            );
        }
    }
    let skew = expect("signed_20_minutes_ago", 400, "InvalidSignatureException")?;
    ensure!(skew.contains("Signature expired"), "{skew}");
    ensure!(
        case("valid_after")?["status"] == 200,
        "{}",
        case("valid_after")?
    );
    // Still the same process, healthy.
    ensure!(world.server.process.is_running() && world.server.process.pid() == pid);
    ensure!(
        world.server.healthz()? == 200,
        "/healthz after the bad input"
    );
    Ok(())
}

fn session_token_of(out: &Outcomes) -> Result<String> {
    out.json
        .pointer("/credentials/SessionToken")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .context("the session token bad_input.py used")
}
