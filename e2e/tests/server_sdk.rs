//! A second, independent client of kubekms-server: the AWS SDK for Rust (aws-config,
//! aws-sdk-kms) configured by a pod's environment alone, through its own web-identity
//! provider. Its blobs and boto3's are interchangeable both ways, and its signatures
//! verify with boto3 and with openssl.
//!
//! The environment of this process cannot be changed safely (other tests run in threads),
//! so the test runs its own binary as a child ([`rust_sdk_child`]) with the variables a pod
//! sets: `AWS_WEB_IDENTITY_TOKEN_FILE`, `AWS_ROLE_ARN`, `AWS_ENDPOINT_URL_STS`,
//! `AWS_ENDPOINT_URL_KMS`, `AWS_REGION`.
//!
//! What the Rust SDK does with them (aws-config 1.8): the web-identity provider builds its
//! STS client from the same environment, so `AWS_ENDPOINT_URL_STS` (service-specific
//! endpoint URLs) is honoured — the audit log shows the exchange made by the Rust SDK's
//! user agent. `AWS_CA_BUNDLE` is NOT read by the Rust SDK (boto3 and the AWS CLI read it);
//! the supported way to trust a private CA is an HTTP client with that CA in its trust
//! store, given to `aws_config::defaults(..).http_client(..)`, which the web-identity
//! provider's STS client uses too. The child does that with the file `AWS_CA_BUNDLE` names.

use std::path::PathBuf;

use anyhow::{Context as _, Result, anyhow, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use kubekms_e2e::kms_server::{Outcomes, ServerWorld, b64, blob, run_python};
use kubekms_e2e::unique_name;
use serde_json::{Value, json};

const CHILD_INPUT: &str = "KUBEKMS_SDK_CHILD_INPUT";
const CHILD_OUTPUT: &str = "KUBEKMS_SDK_CHILD_OUTPUT";

/// Every verb the test's ServiceAccount needs.
const VERBS: &[&str] = &[
    "encrypt",
    "decrypt",
    "generatedatakey",
    "sign",
    "verify",
    "getpublickey",
    "describekey",
];

fn calls(env: &[(String, std::ffi::OsString)], steps: Value) -> Result<Outcomes> {
    Ok(Outcomes::new(run_python(
        "calls.py",
        env,
        &json!({"steps": steps}),
    )?))
}

fn openssl_verify(
    dir: &std::path::Path,
    public_der: &[u8],
    digest: &str,
    pss: bool,
    message: &[u8],
    signature: &[u8],
) -> Result<bool> {
    let der = dir.join("public.der");
    let pem = dir.join("public.pem");
    let msg = dir.join("message");
    let sig = dir.join("signature");
    std::fs::write(&der, public_der)?;
    std::fs::write(&msg, message)?;
    std::fs::write(&sig, signature)?;
    let converted = std::process::Command::new("openssl")
        .args(["pkey", "-pubin", "-inform", "DER", "-in"])
        .arg(&der)
        .arg("-out")
        .arg(&pem)
        .output()?;
    ensure!(converted.status.success(), "openssl pkey: {converted:?}");
    let mut verify = std::process::Command::new("openssl");
    verify
        .args(["dgst", digest, "-verify"])
        .arg(&pem)
        .arg("-signature")
        .arg(&sig);
    if pss {
        verify.args([
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:digest",
        ]);
    }
    let out = verify.arg(&msg).output()?;
    Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Verified OK"))
}

#[test]
fn rust_sdk_through_web_identity_interoperates_with_boto3() -> Result<()> {
    let world = ServerWorld::shared()?;
    let ns = &world.namespace;
    let prefix = unique_name("sdk");
    let names = ["sym", "ecc", "rsa"].map(|n| format!("{prefix}-{n}"));
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
                json!({"keySpec": "RSA_2048", "keyUsage": "SIGN_VERIFY"}),
            ),
        ],
    )?;
    let [sym, ecc, rsa] = names.each_ref().map(|n| &keys[n]);
    let app = world.pod_identity(ns, &prefix)?;
    world.grant_rbac(ns, &prefix, VERBS, &[], &app.subject())?;
    let env = world.env(&app.web_identity(&world.server.endpoint));
    let context = json!({"client": "interop", "run": prefix});
    let message = format!("{prefix}-signed-by-both").into_bytes();

    // boto3 first: its blobs and signature for the Rust SDK to read.
    let steps: Vec<Value> = [&sym.arn, &ecc.arn, &rsa.arn]
        .iter()
        .enumerate()
        .map(|(i, arn)| json!({"name": format!("wait{i}"), "op": "describe_key", "args": {"KeyId": arn},
                                "until": {"error": null, "timeout": 90}}))
        .chain([
            json!({"name": "encrypt", "op": "encrypt", "args": {"KeyId": sym.arn, "Plaintext": {"text": "from boto3"}, "EncryptionContext": context}}),
            json!({"name": "data_key", "op": "generate_data_key", "args": {"KeyId": sym.arn, "KeySpec": "AES_256", "EncryptionContext": context}}),
            json!({"name": "sign", "op": "sign", "args": {"KeyId": ecc.arn, "Message": b64(&message), "SigningAlgorithm": "ECDSA_SHA_256"}}),
        ])
        .collect();
    let boto3 = calls(&env, json!(steps))?;
    let dir = world.dir.join(&prefix);
    std::fs::create_dir_all(&dir)?;
    let input = dir.join("input.json");
    let output = dir.join("output.json");
    std::fs::write(
        &input,
        serde_json::to_vec(&json!({
            "sym": sym.arn, "ecc": ecc.arn, "rsa": rsa.arn, "context": context,
            "message": BASE64.encode(&message),
            "boto3_blob": BASE64.encode(boto3.blob("encrypt", "/CiphertextBlob")?),
            "boto3_data_key_blob": BASE64.encode(boto3.blob("data_key", "/CiphertextBlob")?),
            "boto3_signature": BASE64.encode(boto3.blob("sign", "/Signature")?),
        }))?,
    )?;

    // The Rust SDK, in a child with nothing but a pod's environment.
    let mut child = std::process::Command::new(std::env::current_exe()?);
    kubekms_e2e::kms_server::clear_aws_env(&mut child);
    let out = child
        .args([
            "--ignored",
            "--exact",
            "rust_sdk_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env(CHILD_INPUT, &input)
        .env(CHILD_OUTPUT, &output)
        .stdin(std::process::Stdio::null())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.contains("1 passed"),
        "the Rust SDK child failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let rust: Value = serde_json::from_slice(&std::fs::read(&output)?)?;
    let rust_blob = |name: &str| -> Result<Vec<u8>> {
        blob(
            rust.get(name)
                .ok_or_else(|| anyhow!("the child reported no {name}: {rust}"))?,
        )
    };

    // What the Rust SDK read of boto3's.
    ensure!(rust_blob("decrypted_boto3")? == b"from boto3", "{rust}");
    ensure!(
        rust_blob("decrypted_boto3_data_key")? == boto3.blob("data_key", "/Plaintext")?,
        "the Rust SDK decrypted boto3's data key blob to another key"
    );
    ensure!(rust["verified_boto3_signature"] == true, "{rust}");
    ensure!(
        rust["wrong_context"] == "InvalidCiphertextException",
        "{rust}"
    );
    ensure!(
        rust["tampered_signature"] == "KMSInvalidSignatureException",
        "{rust}"
    );
    ensure!(
        rust["access_key_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("ASIA"))
            && rust["session_token_prefix"] == "kks1.",
        "the Rust SDK's credentials are not a session of the server's STS: {rust}"
    );

    // What boto3 reads of the Rust SDK's.
    let rust_data_key = rust_blob("data_key_plaintext")?;
    ensure!(rust_data_key.len() == 32);
    let back = calls(
        &env,
        json!([
            {"name": "decrypt", "op": "decrypt", "args": {"CiphertextBlob": b64(&rust_blob("encrypted")?), "EncryptionContext": context}},
            {"name": "decrypt_data_key", "op": "decrypt", "args": {"CiphertextBlob": b64(&rust_blob("data_key_blob")?), "EncryptionContext": context}},
            {"name": "verify_ecc", "op": "verify", "args": {"KeyId": ecc.arn, "Message": b64(&message), "Signature": b64(&rust_blob("ecc_signature")?), "SigningAlgorithm": "ECDSA_SHA_256"}},
            {"name": "verify_rsa", "op": "verify", "args": {"KeyId": rsa.arn, "Message": b64(&message), "Signature": b64(&rust_blob("rsa_signature")?), "SigningAlgorithm": "RSASSA_PSS_SHA_256"}},
            {"name": "ecc_public", "op": "get_public_key", "args": {"KeyId": ecc.arn}},
            {"name": "rsa_public", "op": "get_public_key", "args": {"KeyId": rsa.arn}},
        ]),
    )?;
    ensure!(back.blob("decrypt", "/Plaintext")? == b"from the Rust SDK");
    ensure!(back.text("decrypt", "/KeyId")? == sym.arn);
    ensure!(back.blob("decrypt_data_key", "/Plaintext")? == rust_data_key);
    ensure!(back.ok("verify_ecc")?["SignatureValid"] == true);
    ensure!(back.ok("verify_rsa")?["SignatureValid"] == true);
    ensure!(
        openssl_verify(
            &dir,
            &back.blob("ecc_public", "/PublicKey")?,
            "-sha256",
            false,
            &message,
            &rust_blob("ecc_signature")?
        )?,
        "openssl refuses the Rust SDK's ECDSA signature"
    );
    ensure!(
        openssl_verify(
            &dir,
            &back.blob("rsa_public", "/PublicKey")?,
            "-sha256",
            true,
            &message,
            &rust_blob("rsa_signature")?
        )?,
        "openssl refuses the Rust SDK's RSA-PSS signature"
    );
    ensure!(
        !openssl_verify(
            &dir,
            &back.blob("ecc_public", "/PublicKey")?,
            "-sha256",
            false,
            b"another message",
            &rust_blob("ecc_signature")?
        )?,
        "openssl accepts a signature of another message"
    );

    // The Rust SDK exchanged the token at the server's STS itself (AWS_ENDPOINT_URL_STS),
    // and signed its KMS calls with that session.
    // (The audit is written by a thread of its own: wait for the records.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let events = [
        "AssumeRoleWithWebIdentity",
        "Encrypt",
        "Decrypt",
        "GenerateDataKey",
        "Sign",
        "Verify",
    ];
    loop {
        let records = world.server.audit_records()?;
        let rust_agent = |r: &Value| {
            r["status"] == 200
                && r["userAgent"]
                    .as_str()
                    .is_some_and(|ua| ua.contains("aws-sdk-rust"))
                && r["userIdentity"]["userName"] == app.username().as_str()
        };
        // The sessions the Rust SDK got at the server's STS.
        let issued: Vec<&Value> = records
            .iter()
            .filter(|r| r["eventName"] == "AssumeRoleWithWebIdentity" && rust_agent(r))
            .map(|r| &r["userIdentity"]["accessKeyId"])
            .collect();
        let by_rust = |event: &str| {
            if event == "AssumeRoleWithWebIdentity" {
                return issued.contains(&&rust["access_key_id"]);
            }
            records.iter().any(|r| {
                r["eventName"] == event
                    && rust_agent(r)
                    && issued.contains(&&r["userIdentity"]["accessKeyId"])
            })
        };
        let missing: Vec<&str> = events.iter().copied().filter(|e| !by_rust(e)).collect();
        if missing.is_empty() {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "no {missing:?} by the Rust SDK in the audit log"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Runs in the child process started by [`rust_sdk_through_web_identity_interoperates_with_boto3`]:
/// the AWS SDK for Rust with the environment of a pod and nothing else.
#[tokio::test]
#[ignore = "run as a child process by rust_sdk_through_web_identity_interoperates_with_boto3"]
async fn rust_sdk_child() -> Result<()> {
    use aws_credential_types::provider::ProvideCredentials as _;
    use aws_sdk_kms::primitives::Blob;
    use aws_sdk_kms::types::{DataKeySpec, MessageType, SigningAlgorithmSpec};

    let (Some(input), Some(output)) = (
        std::env::var_os(CHILD_INPUT),
        std::env::var_os(CHILD_OUTPUT),
    ) else {
        eprintln!("not started by the parent test: nothing to do");
        return Ok(());
    };
    let input: Value = serde_json::from_slice(&std::fs::read(PathBuf::from(input))?)?;
    let text = |name: &str| -> Result<String> {
        input[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no {name} in the input"))
    };
    let bytes = |name: &str| -> Result<Vec<u8>> { Ok(BASE64.decode(text(name)?)?) };
    let context: std::collections::HashMap<String, String> =
        serde_json::from_value(input["context"].clone())?;

    // AWS_CA_BUNDLE is boto3's and the CLI's; the Rust SDK takes the CA in its HTTP client.
    let ca = std::fs::read(std::env::var_os("AWS_CA_BUNDLE").context("AWS_CA_BUNDLE")?)?;
    let http_client = kubekms_e2e::kms_server::https_client_trusting(ca)?;
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http_client)
        .load()
        .await;
    let credentials = config
        .credentials_provider()
        .context("no credentials provider")?
        .provide_credentials()
        .await?;
    let kms = aws_sdk_kms::Client::new(&config);
    let encrypted = kms
        .encrypt()
        .key_id(text("sym")?)
        .plaintext(Blob::new(b"from the Rust SDK".to_vec()))
        .set_encryption_context(Some(context.clone()))
        .send()
        .await?;
    let decrypted_boto3 = kms
        .decrypt()
        .ciphertext_blob(Blob::new(bytes("boto3_blob")?))
        .set_encryption_context(Some(context.clone()))
        .send()
        .await?;
    let decrypted_boto3_data_key = kms
        .decrypt()
        .ciphertext_blob(Blob::new(bytes("boto3_data_key_blob")?))
        .set_encryption_context(Some(context.clone()))
        .send()
        .await?;
    let wrong_context = kms
        .decrypt()
        .ciphertext_blob(Blob::new(bytes("boto3_blob")?))
        .encryption_context("client", "someone else")
        .send()
        .await
        .err()
        .context("Decrypt with another context succeeded")?
        .into_service_error();
    let data_key = kms
        .generate_data_key()
        .key_id(text("sym")?)
        .key_spec(DataKeySpec::Aes256)
        .set_encryption_context(Some(context.clone()))
        .send()
        .await?;
    let message = bytes("message")?;
    let ecc_signature = kms
        .sign()
        .key_id(text("ecc")?)
        .message(Blob::new(message.clone()))
        .message_type(MessageType::Raw)
        .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
        .send()
        .await?;
    let rsa_signature = kms
        .sign()
        .key_id(text("rsa")?)
        .message(Blob::new(message.clone()))
        .message_type(MessageType::Raw)
        .signing_algorithm(SigningAlgorithmSpec::RsassaPssSha256)
        .send()
        .await?;
    let verified_boto3 = kms
        .verify()
        .key_id(text("ecc")?)
        .message(Blob::new(message.clone()))
        .signature(Blob::new(bytes("boto3_signature")?))
        .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
        .send()
        .await?;
    let mut tampered = bytes("boto3_signature")?;
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x10;
    let tampered_signature = kms
        .verify()
        .key_id(text("ecc")?)
        .message(Blob::new(message))
        .signature(Blob::new(tampered))
        .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
        .send()
        .await
        .err()
        .context("a tampered signature verified")?
        .into_service_error();

    let blob_of = |b: Option<&Blob>| -> Result<Value> {
        Ok(b64(b.context("a blob is missing from a reply")?.as_ref()))
    };
    let report = json!({
        "encrypted": blob_of(encrypted.ciphertext_blob())?,
        "decrypted_boto3": blob_of(decrypted_boto3.plaintext())?,
        "decrypted_boto3_data_key": blob_of(decrypted_boto3_data_key.plaintext())?,
        "wrong_context": aws_sdk_kms::error::ProvideErrorMetadata::code(&wrong_context),
        "data_key_plaintext": blob_of(data_key.plaintext())?,
        "data_key_blob": blob_of(data_key.ciphertext_blob())?,
        "ecc_signature": blob_of(ecc_signature.signature())?,
        "rsa_signature": blob_of(rsa_signature.signature())?,
        "verified_boto3_signature": verified_boto3.signature_valid(),
        "tampered_signature": aws_sdk_kms::error::ProvideErrorMetadata::code(&tampered_signature),
        "access_key_id": credentials.access_key_id(),
        "session_token_prefix": credentials.session_token().map(|t| t.chars().take(5).collect::<String>()),
    });
    std::fs::write(PathBuf::from(output), serde_json::to_vec(&report)?)?;
    Ok(())
}
