//! End-to-end tests against a real kube-apiserver and etcd (see the `kubekms_e2e` crate
//! docs for where the control plane comes from). All tests share one control plane per
//! test process and isolate themselves in namespaces of their own.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kubekms_e2e::{
    ControlPlane, ENV_STATE, KMS_PROVIDER_NAME, PROTOBUF_MAGIC, check_kms_encrypted,
    check_stored_unencrypted, in_namespace, pinned_go_module, preview, repo_root, secret_etcd_key,
    unique_name,
};

fn control_plane() -> Result<&'static ControlPlane> {
    ControlPlane::shared()
}

fn secret(name: &str, data: &[(&str, &[u8])]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Secret::default()
    }
}

#[tokio::test]
async fn control_plane_is_ready_and_runs_the_pinned_versions() -> Result<()> {
    let cp = control_plane()?;

    let readyz = cp.kubectl(["get", "--raw", "/readyz?verbose"])?;
    let readyz = String::from_utf8_lossy(&readyz.stdout);
    ensure!(
        readyz.contains("readyz check passed"),
        "kube-apiserver /readyz: {readyz}\n{}",
        cp.where_to_look()
    );

    let client = cp.client().await?;
    let info = client
        .apiserver_version()
        .await
        .with_context(|| cp.where_to_look())?;
    let expected = cp.expected_kube_version()?;
    ensure!(
        info.git_version == expected,
        "kube-apiserver reports {} but {expected} is expected (the pin in hack/tools/kubernetes/go.mod)",
        info.git_version
    );

    let etcd = cp.etcd_server_version()?;
    if !cp.etcd_is_pinned_build() {
        eprintln!("etcd {etcd} is not ours (kind): not compared with the pin");
        return Ok(());
    }
    let etcd_pin = pinned_go_module("etcd", "go.etcd.io/etcd/server/v3")?;
    ensure!(
        etcd_pin.trim_start_matches('v') == etcd,
        "etcd reports {etcd} but hack/tools/etcd/go.mod pins {etcd_pin}"
    );
    Ok(())
}

#[tokio::test]
async fn kubectl_apply_of_a_manifest_works_and_rbac_is_enforced() -> Result<()> {
    let cp = control_plane()?;
    in_namespace(cp, "apply", move |client, ns| async move {
        let manifest = format!(
            r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: {ns}
data:
  greeting: hello
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: reader
  namespace: {ns}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: secret-reader
  namespace: {ns}
rules:
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: reader-reads-secrets
  namespace: {ns}
subjects:
- kind: ServiceAccount
  name: reader
  namespace: {ns}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: secret-reader
"#
        );
        let path =
            std::env::temp_dir().join(format!("{}.yaml", unique_name("kubekms-e2e-manifest")));
        std::fs::write(&path, manifest)?;
        let apply = [OsStr::new("apply"), OsStr::new("-f"), path.as_os_str()];
        let first = cp.kubectl(apply);
        let second = cp.kubectl(apply);
        let _ = std::fs::remove_file(&path);
        let first = String::from_utf8_lossy(&first?.stdout).into_owned();
        let second = String::from_utf8_lossy(&second?.stdout).into_owned();
        for created in [
            "configmap/settings created",
            "serviceaccount/reader created",
            "role.rbac.authorization.k8s.io/secret-reader created",
            "rolebinding.rbac.authorization.k8s.io/reader-reads-secrets created",
        ] {
            ensure!(
                first.contains(created),
                "kubectl apply said:\n{first}\nexpected: {created}"
            );
        }
        ensure!(
            second.contains("configmap/settings unchanged"),
            "second kubectl apply should change nothing, said:\n{second}"
        );

        let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .get("settings")
            .await?;
        let greeting = cm.data.as_ref().and_then(|d| d.get("greeting"));
        ensure!(
            greeting.map(String::as_str) == Some("hello"),
            "ConfigMap data: {:?}",
            cm.data
        );

        // The RBAC authorizer really decides: the binding grants get, nothing grants delete.
        let sa = format!("system:serviceaccount:{ns}:reader");
        let can_i = |verb: &str| -> Result<String> {
            let out = Command::new(cp.tool("kubectl"))
                .env("KUBECONFIG", &cp.kubeconfig)
                .args(["auth", "can-i", verb, "secrets", "-n", &ns, "--as", &sa])
                .stdin(Stdio::null())
                .output()?;
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        };
        ensure!(
            can_i("get")? == "yes",
            "{sa} should be allowed to get secrets"
        );
        ensure!(
            can_i("delete")? == "no",
            "{sa} must not be allowed to delete secrets"
        );

        // ServiceAccount tokens are issued (TokenRequest) and verified (TokenReview) with
        // the launcher's signing keys, as the workloads' KMS API will need.
        let token = cp.kubectl(["create", "token", "reader", "-n", &ns])?;
        let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token),
                ..TokenReviewSpec::default()
            },
            ..TokenReview::default()
        };
        let reviewed = Api::<TokenReview>::all(client)
            .create(&PostParams::default(), &review)
            .await?;
        let status = reviewed.status.unwrap_or_default();
        let user = status.user.and_then(|u| u.username);
        ensure!(
            status.authenticated == Some(true) && user.as_deref() == Some(sa.as_str()),
            "TokenReview of a fresh token: authenticated={:?} user={user:?} error={:?}",
            status.authenticated,
            status.error
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn secret_round_trips_and_etcd_holds_what_the_provider_should_write() -> Result<()> {
    let cp = control_plane()?;
    in_namespace(cp, "secret", move |client, ns| async move {
        let secrets: Api<Secret> = Api::namespaced(client, &ns);
        let plaintext = format!("plaintext-{}", unique_name("pw"));
        let created = secrets
            .create(
                &PostParams::default(),
                &secret("db-credentials", &[("password", plaintext.as_bytes())]),
            )
            .await?;
        ensure!(created.metadata.uid.is_some(), "created Secret has no uid");

        let read = secrets.get("db-credentials").await?;
        let value = read
            .data
            .as_ref()
            .and_then(|d| d.get("password"))
            .map(|b| b.0.clone());
        ensure!(
            value.as_deref() == Some(plaintext.as_bytes()),
            "Secret read back differs: {value:?}"
        );

        let key = secret_etcd_key(&ns, "db-credentials");
        let stored = cp
            .etcd_get(&key)?
            .with_context(|| format!("etcd has no {key}; {}", cp.where_to_look()))?;
        match &cp.kms_socket {
            None => check_stored_unencrypted(&stored, plaintext.as_bytes())
                .with_context(|| format!("etcd key {key} (no KMS provider configured)"))?,
            Some(_) => check_kms_encrypted(&stored, KMS_PROVIDER_NAME, &[plaintext.as_bytes()])
                .with_context(|| format!("etcd key {key}"))?,
        }

        secrets
            .delete("db-credentials", &DeleteParams::default())
            .await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while cp.etcd_get(&key)?.is_some() {
            if Instant::now() > deadline {
                bail!("{key} is still in etcd 10s after the Secret was deleted");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    })
    .await
}

/// The control plane must have the kubekms KMS v2 provider configured: the one the harness
/// starts always has, `hack/test.sh`'s and `hack/local-up.sh`'s too. A control plane named
/// by `KUBEKMS_E2E_STATE` without one fails this test (it would check nothing); skip it by
/// name to run the rest against such a control plane.
#[tokio::test]
async fn secrets_are_encrypted_by_the_kubekms_plugin() -> Result<()> {
    let cp = control_plane()?;
    let Some(socket) = cp.kms_socket.clone() else {
        let what_to_do = if std::env::var_os(ENV_STATE).is_some_and(|v| !v.is_empty()) {
            format!(
                "Unset {ENV_STATE} (the tests then start a control plane with the kubekms \
                 plugin), or point it at one started with the plugin (hack/test.sh, \
                 hack/local-up.sh, or hack/control-plane.sh up --kms-socket SOCK --plugin-cmd \
                 CMD), or skip this test by name (-- --skip \
                 secrets_are_encrypted_by_the_kubekms_plugin)"
            )
        } else {
            "The harness started it (ControlPlane::start_for_this_process), which must configure \
             the kubekms plugin: fix the harness."
                .to_owned()
        };
        bail!(
            "the control plane in {} has no KMS provider, so nothing is encrypted and this test \
             would check nothing. {what_to_do}",
            cp.state_dir.display()
        );
    };
    in_namespace(cp, "kms", move |client, ns| async move {
        ensure!(
            socket.exists(),
            "KMS socket {} does not exist",
            socket.display()
        );
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let a = format!("first-{}", unique_name("secret"));
        let b = format!("second-{}", unique_name("secret"));
        secrets
            .create(
                &PostParams::default(),
                &secret("two-keys", &[("a", a.as_bytes()), ("b", b.as_bytes())]),
            )
            .await?;
        let key = secret_etcd_key(&ns, "two-keys");
        let stored = cp
            .etcd_get(&key)?
            .with_context(|| format!("etcd has no {key}"))?;
        check_kms_encrypted(
            &stored,
            KMS_PROVIDER_NAME,
            &[a.as_bytes(), b.as_bytes(), b"two-keys"],
        )?;

        // Only Secrets are configured: a ConfigMap stays plain protobuf.
        let cms: Api<ConfigMap> = Api::namespaced(client, &ns);
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("plain".to_owned());
        cm.data = Some([("k".to_owned(), a.clone())].into());
        cms.create(&PostParams::default(), &cm).await?;
        let stored = cp
            .etcd_get(&format!("/registry/configmaps/{ns}/plain"))?
            .context("etcd has no ConfigMap")?;
        ensure!(
            stored.starts_with(PROTOBUF_MAGIC),
            "ConfigMap stored as {}",
            preview(&stored)
        );
        Ok(())
    })
    .await
}

/// Runs `hack/control-plane.sh ARGS` with the tools of the shared control plane and a new
/// state folder, expecting it to fail; returns (stderr, state folder, elapsed).
fn launcher_expecting_failure(
    cp: &ControlPlane,
    args: &[&str],
) -> Result<(String, std::path::PathBuf, Duration)> {
    let state = std::env::temp_dir().join(unique_name("kubekms-e2e-launcher"));
    let started = Instant::now();
    let out = Command::new(repo_root().join("hack/control-plane.sh"))
        .arg("up")
        .arg("--state-dir")
        .arg(&state)
        .arg("--tools-bin")
        .arg(&cp.tools_bin)
        .args(["--watch-pid", &std::process::id().to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        !out.status.success(),
        "launcher should have failed, but it succeeded:\n{stderr}"
    );
    // Whatever failed, nothing it started may still run.
    let left: Vec<_> = std::fs::read_dir(state.join("pids"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    ensure!(
        left.is_empty(),
        "launcher left pid files behind after failing: {left:?}\n{stderr}"
    );
    Ok((stderr, state, started.elapsed()))
}

#[tokio::test]
async fn launcher_rejects_a_busy_port_at_once() -> Result<()> {
    let cp = control_plane()?;
    let busy = TcpListener::bind("127.0.0.1:0")?;
    let port = busy.local_addr()?.port().to_string();
    let (stderr, state, elapsed) = launcher_expecting_failure(cp, &["--apiserver-port", &port])?;
    ensure!(
        stderr.contains(&format!("port {port} on 127.0.0.1 is already in use")),
        "unclear error for a busy port:\n{stderr}"
    );
    ensure!(
        elapsed < Duration::from_secs(30),
        "busy port took {elapsed:?} to report"
    );
    let _ = std::fs::remove_dir_all(state);
    Ok(())
}

#[tokio::test]
async fn launcher_names_the_process_and_log_when_the_apiserver_is_not_ready() -> Result<()> {
    let cp = control_plane()?;
    // A KMS v2 provider whose plugin never comes up: kube-apiserver cannot become ready.
    let socket = std::env::temp_dir().join(format!("{}.sock", unique_name("kubekms-absent")));
    let socket = socket.to_string_lossy().into_owned();
    let (stderr, state, _) = tokio::task::spawn_blocking(move || {
        launcher_expecting_failure(cp, &["--kms-socket", &socket, "--timeout", "15"])
    })
    .await??;
    let log = state.join("logs/kube-apiserver.log");
    ensure!(
        stderr.contains("error: kube-apiserver") && stderr.contains(&log.display().to_string()),
        "failure message should name kube-apiserver and {}:\n{stderr}",
        log.display()
    );
    let config = std::fs::read_to_string(state.join("encryption-config.yaml"))?;
    for expected in [
        "kind: EncryptionConfiguration",
        "apiVersion: v2",
        "name: kubekms",
        "- identity: {}",
    ] {
        ensure!(
            config.contains(expected),
            "encryption-config.yaml lacks {expected:?}:\n{config}"
        );
    }
    let _ = std::fs::remove_dir_all(state);
    Ok(())
}
