//! The KMS v2 plugin with its root key in a PKCS#11 token (SoftHSM2), behind a real
//! kube-apiserver and etcd: `kubekms-plugin init` with the --pkcs11-* flags, `serve` as
//! kube-apiserver's KMS plugin, Secrets stored encrypted in etcd and read back, across a
//! plugin restart (which unwraps its key material in the token again).

use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Result, ensure};
use keystore_pkcs11::softhsm::SoftHsmToken;
use kubekms_e2e::process::{sh_quote, sibling_bin};
use kubekms_e2e::{
    ControlPlane, KMS_PROVIDER_NAME, check_kms_encrypted, secret_etcd_key, unique_name,
};

const LABEL: &str = "kubekms-e2e";

#[test]
fn kube_apiserver_encrypts_secrets_with_the_root_key_in_softhsm() -> Result<()> {
    let t0 = Instant::now();
    let bin = sibling_bin("KUBEKMS_PLUGIN_BIN", "kubekms-plugin")?;
    let base = std::env::temp_dir().join(unique_name("kubekms-e2e-hsm"));
    std::fs::create_dir_all(&base)?;
    let token = SoftHsmToken::create(&base, LABEL).map_err(anyhow::Error::msg)?;
    let conf = token.conf.clone();

    let state = base.join("plugin-state");
    let out = Command::new(&bin)
        .args(["init", "--state-dir"])
        .arg(&state)
        .args(token.flags())
        .env("SOFTHSM2_CONF", &conf)
        .stdin(Stdio::null())
        .output()?;
    ensure!(out.status.success(), "kubekms-plugin init: {out:?}");
    ensure!(
        !state.join("root.key").exists(),
        "a root key file was written"
    );

    let socket = base.join("kms.sock");
    let plugin_cmd = format!(
        "SOFTHSM2_CONF={} exec {} serve --state-dir {} --socket {}",
        sh_quote(&conf),
        sh_quote(&bin),
        sh_quote(&state),
        sh_quote(&socket)
    );
    let cp = ControlPlane::start_with_plugin(&base.join("cp"), &socket, &plugin_cmd)?;
    eprintln!("[e2e hsm] control plane up in {:?}", t0.elapsed());

    let ns = unique_name("e2e-hsm");
    cp.kubectl(["create", "namespace", &ns])?;
    let value = unique_name("hsm-secret");
    cp.create_secret(&ns, "s1", &value)?;
    let stored = cp
        .etcd_get(&secret_etcd_key(&ns, "s1"))?
        .ok_or_else(|| anyhow::anyhow!("Secret s1 not in etcd"))?;
    check_kms_encrypted(&stored, KMS_PROVIDER_NAME, &[value.as_bytes()])?;
    ensure!(cp.read_secret(&ns, "s1")? == value, "s1 reads back");

    // A restarted plugin opens the token again and decrypts what it encrypted before.
    // (/proc/PID/cmdline has no environment: SOFTHSM2_CONF is given again. Without it the
    // plugin refuses to start, naming the token it cannot find.)
    let mut argv = vec![
        "env".to_owned(),
        format!("SOFTHSM2_CONF={}", conf.display()),
    ];
    argv.extend(cp.argv_of("kms-plugin")?);
    cp.stop_process("kms-plugin")?;
    cp.start_process("kms-plugin", &argv)?;
    let argv = cp.argv_of("kube-apiserver")?;
    cp.stop_process("kube-apiserver")?;
    cp.start_process("kube-apiserver", &argv)?;
    cp.wait_apiserver_ready()?;
    ensure!(
        cp.read_secret(&ns, "s1")? == value,
        "s1 reads back after restarts"
    );
    eprintln!("[e2e hsm] done in {:?}", t0.elapsed());
    Ok(())
}
