//! The deploy manifests (deploy/static-pod, deploy/operator, deploy/server) against the
//! real kube-apiserver, so that a manifest drifting from the API or from the binaries'
//! flags fails here rather than in a user's cluster:
//!
//! - kube-apiserver accepts every object (`kubectl apply --dry-run=server
//!   --validate=strict`: unknown or misplaced fields are errors), after the CRDs and
//!   deploy/rbac are applied, as docs/images.md says to;
//! - every pod runs the kubekms image with `IfNotPresent`, as non-root with a read-only
//!   root filesystem, no capabilities and the RuntimeDefault seccomp profile; the
//!   Deployments use a ServiceAccount that deploy/rbac creates;
//! - every container's `command` is accepted by the binary it names: the built binary runs
//!   with the same arguments and `--help` appended (clap refuses an unknown flag or
//!   subcommand before it prints help), then as the pod starts it, with the container's
//!   environment and host paths moved to a missing folder, and must not exit with clap's
//!   usage error (how flags and `env` go together: a static pod that set NODE_NAME
//!   without --follow was refused by the plugin this way).
//!
//! Runs on the suite's control plane (no node needed: dry-run creates nothing).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail, ensure};
use kubekms_e2e::{ControlPlane, repo_root};
use serde_json::Value;

const IMAGE: &str = "kubekms.local/kubekms:dev";

fn manifests() -> Vec<PathBuf> {
    let deploy = repo_root().join("deploy");
    vec![
        deploy.join("static-pod/kubekms-plugin.yaml"),
        deploy.join("operator"),
        deploy.join("server"),
    ]
}

/// The objects kube-apiserver would store, as it returns them from a server-side dry run.
fn dry_run(cp: &ControlPlane, paths: &[PathBuf]) -> Result<Vec<Value>> {
    let mut args: Vec<&std::ffi::OsStr> = [
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-o",
        "json",
    ]
    .iter()
    .map(|a| a.as_ref())
    .collect();
    for path in paths {
        args.push("-f".as_ref());
        args.push(path.as_os_str());
    }
    let out = cp.kubectl(args)?;
    ensure!(
        out.stderr.is_empty(),
        "kubectl warned about the manifests:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).context("kubectl's JSON output")?;
    Ok(match listed.get("items") {
        Some(Value::Array(items)) => items.clone(),
        _ => vec![listed],
    })
}

fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// `kind/namespace/name` of an object.
fn id(object: &Value) -> String {
    format!(
        "{}/{}/{}",
        text(object, "/kind"),
        text(object, "/metadata/namespace"),
        text(object, "/metadata/name")
    )
}

/// The pod spec of a Pod or of a Deployment's template.
fn pod_spec(object: &Value) -> Option<&Value> {
    match text(object, "/kind") {
        "Pod" => object.get("spec"),
        "Deployment" => object.pointer("/spec/template/spec"),
        _ => None,
    }
}

/// What every pod of the manifests must hold; the problems found, empty when none.
fn hardening_problems(object: &Value, spec: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut expect = |what: &str, ok: bool| {
        if !ok {
            problems.push(format!("{}: {what}", id(object)));
        }
    };
    expect(
        "pod securityContext.runAsNonRoot true",
        spec.pointer("/securityContext/runAsNonRoot") == Some(&Value::Bool(true)),
    );
    expect(
        "pod seccompProfile RuntimeDefault",
        text(spec, "/securityContext/seccompProfile/type") == "RuntimeDefault",
    );
    let containers = spec
        .get("containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    expect("at least one container", !containers.is_empty());
    for c in &containers {
        let name = text(c, "/name");
        expect(
            &format!("container {name}: image {IMAGE}"),
            text(c, "/image") == IMAGE,
        );
        expect(
            &format!("container {name}: imagePullPolicy IfNotPresent"),
            text(c, "/imagePullPolicy") == "IfNotPresent",
        );
        expect(
            &format!("container {name}: readOnlyRootFilesystem"),
            c.pointer("/securityContext/readOnlyRootFilesystem") == Some(&Value::Bool(true)),
        );
        expect(
            &format!("container {name}: allowPrivilegeEscalation false"),
            c.pointer("/securityContext/allowPrivilegeEscalation") == Some(&Value::Bool(false)),
        );
        expect(
            &format!("container {name}: capabilities drop ALL"),
            c.pointer("/securityContext/capabilities/drop")
                .and_then(Value::as_array)
                .is_some_and(|d| d.iter().any(|v| v == "ALL")),
        );
        expect(
            &format!("container {name}: liveness and readiness probes"),
            c.get("livenessProbe").is_some() && c.get("readinessProbe").is_some(),
        );
        expect(
            &format!("container {name}: a memory limit"),
            c.pointer("/resources/limits/memory").is_some(),
        );
    }
    problems
}

/// Runs the built binary that `command[0]` names with `command[1..]` and `--help`: a flag
/// or subcommand the binary does not know fails it.
fn check_command(object: &Value, container: &Value) -> Result<()> {
    let command: Vec<&str> = container
        .get("command")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("{}: a container without command", id(object)))?
        .iter()
        .map(|v| v.as_str().unwrap_or(""))
        .collect();
    let (program, args) = command
        .split_first()
        .ok_or_else(|| anyhow!("{}: empty command", id(object)))?;
    let name = Path::new(program)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    let env = match name {
        "kubekms-plugin" => "KUBEKMS_PLUGIN_BIN",
        "kubekms-operator" => "KUBEKMS_OPERATOR_BIN",
        "kubekms-server" => "KUBEKMS_SERVER_BIN",
        other => bail!(
            "{}: command runs {other:?}, not a kubekms binary",
            id(object)
        ),
    };
    ensure!(
        *program == format!("/usr/local/bin/{name}"),
        "{}: {program} is not where the image has it (/usr/local/bin/{name})",
        id(object)
    );
    let bin = kubekms_e2e::process::sibling_bin(env, name)?;
    let out = Command::new(&bin)
        .args(args)
        .arg("--help")
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    ensure!(
        out.status.success(),
        "{}: {name} refuses the manifest's arguments {args:?}: {}",
        id(object),
        String::from_utf8_lossy(&out.stderr)
    );
    check_arguments_validate(object, container, &bin, args)
}

/// `--help` stops clap before it checks how arguments go together (`requires`,
/// `conflicts_with`) and what the environment adds (an `env` of the container sets a
/// flag too). So the command also runs as the pod would start it, with the container's
/// environment (values from the Downward API as placeholders) and every host path moved
/// under a folder that does not exist: it must get past clap (which exits 2 on a usage
/// error) and stop on the missing files, or still be running after a few seconds.
fn check_arguments_validate(
    object: &Value,
    container: &Value,
    bin: &Path,
    args: &[&str],
) -> Result<()> {
    let missing = std::env::temp_dir().join(kubekms_e2e::unique_name("kubekms-manifests-absent"));
    let args: Vec<String> = args
        .iter()
        .map(|arg| match arg.split_once("=/") {
            Some((flag, path)) if flag.starts_with("--") => {
                format!("{flag}={}", missing.join(path).display())
            }
            _ => (*arg).to_owned(),
        })
        .collect();
    let mut cmd = Command::new(bin);
    cmd.args(&args)
        .env_clear()
        .env("KUBECONFIG", missing.join("kubeconfig"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for var in container
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let value = var
            .get("value")
            .and_then(Value::as_str)
            .unwrap_or("from-the-downward-api");
        cmd.env(text(var, "/name"), value);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {}", bin.display()))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read as _;
        pipe.read_to_string(&mut stderr)?;
    }
    ensure!(
        status.and_then(|s| s.code()) != Some(2),
        "{}: {} refuses the manifest's arguments and environment {args:?}: {stderr}",
        id(object),
        bin.display()
    );
    Ok(())
}

#[test]
fn the_deploy_manifests_are_accepted_by_the_api_server_and_the_binaries() -> Result<()> {
    let cp = ControlPlane::shared()?;
    cp.apply_crds()?;
    let rbac = repo_root().join("deploy/rbac");
    cp.kubectl(["apply".as_ref(), "-f".as_ref(), rbac.as_os_str()])?;
    // The ServiceAccount admission plugin wants the namespace's `default` account for a
    // Pod; kube-controller-manager makes it, and the suite's control plane may run none.
    // (The kubelet's mirror pod of the static pod is exempt; the dry run of the Pod is not.)
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        b"apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: default, namespace: kube-system}\n",
    )?;

    let objects = dry_run(cp, &manifests())?;
    let mut ids: Vec<String> = objects.iter().map(id).collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "Deployment/kubekms-system/kubekms-operator",
            "Deployment/kubekms-system/kubekms-server",
            "Pod/kube-system/kubekms-plugin",
            "Service/kubekms-system/kubekms-server",
        ],
        "the objects of the deploy manifests"
    );

    let problems = problems_of(cp, &objects);
    assert!(
        problems.is_empty(),
        "problems in the deploy manifests:\n{}",
        problems.join("\n")
    );
    Ok(())
}

/// The hardening, ServiceAccount and command problems of dry-run objects.
fn problems_of(cp: &ControlPlane, objects: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    for object in objects {
        let Some(spec) = pod_spec(object) else {
            continue;
        };
        problems.extend(hardening_problems(object, spec));
        if text(object, "/kind") == "Deployment" {
            let account = text(spec, "/serviceAccountName");
            if account.is_empty() {
                problems.push(format!("{}: no serviceAccountName", id(object)));
            } else if let Err(e) =
                cp.kubectl(["get", "serviceaccount", "-n", "kubekms-system", account])
            {
                problems.push(format!("{}: ServiceAccount {account}: {e:#}", id(object)));
            }
        }
        for container in spec
            .get("containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Err(e) = check_command(object, container) {
                problems.push(format!("{e:#}"));
            }
        }
    }
    problems
}

/// The PKCS#11 variant the manifests carry as comments (docs/hsm.md): the `--pkcs11-*`
/// flags in place of `--root-key`, and the module and PIN volumes, uncommented.
fn pkcs11_variant(text: &str) -> String {
    let mut out = Vec::new();
    let mut in_block = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if trimmed.starts_with("- --root-key=") {
            in_block = false;
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix("# ") {
            let starts = rest.starts_with("- --pkcs11-")
                || rest.starts_with("- name: pkcs11-module")
                || rest.starts_with("- name: hsm-pin");
            if starts || (in_block && rest.starts_with("  ")) {
                in_block = !rest.starts_with("- --pkcs11-");
                out.push(format!("{indent}{rest}"));
                continue;
            }
        }
        in_block = false;
        out.push(line.to_owned());
    }
    out.join("\n") + "\n"
}

#[test]
fn the_pkcs11_variant_of_the_deploy_manifests_is_accepted_too() -> Result<()> {
    let cp = ControlPlane::shared()?;
    cp.apply_crds()?;
    let rbac = repo_root().join("deploy/rbac");
    cp.kubectl(["apply".as_ref(), "-f".as_ref(), rbac.as_os_str()])?;
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        b"apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: default, namespace: kube-system}\n",
    )?;
    let dir = std::env::temp_dir().join(kubekms_e2e::unique_name("kubekms-pkcs11-manifests"));
    std::fs::create_dir_all(&dir)?;
    let mut paths = Vec::new();
    for file in [
        "static-pod/kubekms-plugin.yaml",
        "operator/deployment.yaml",
        "server/deployment.yaml",
    ] {
        let text = std::fs::read_to_string(repo_root().join("deploy").join(file))?;
        let variant = pkcs11_variant(&text);
        let path = dir.join(file.replace('/', "-"));
        std::fs::write(&path, &variant)?;
        paths.push(path);
    }
    let objects = dry_run(cp, &paths)?;
    std::fs::remove_dir_all(&dir).ok();
    let mut problems = problems_of(cp, &objects);
    for object in &objects {
        let Some(spec) = pod_spec(object) else {
            continue;
        };
        let mounts: Vec<&str> = spec
            .pointer("/containers/0/volumeMounts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|m| m.get("name").and_then(Value::as_str))
            .collect();
        for wanted in ["pkcs11-module", "hsm-pin"] {
            if !mounts.contains(&wanted) {
                problems.push(format!(
                    "{}: no {wanted} mount in the PKCS#11 variant",
                    id(object)
                ));
            }
        }
        let command = spec
            .pointer("/containers/0/command")
            .map(Value::to_string)
            .unwrap_or_default();
        let is_plugin = command.contains("kubekms-plugin");
        if !is_plugin && (!command.contains("--pkcs11-pin-file") || command.contains("--root-key"))
        {
            problems.push(format!("{}: PKCS#11 variant runs {command}", id(object)));
        }
    }
    assert!(
        problems.is_empty(),
        "problems in the PKCS#11 variant of the deploy manifests:\n{}",
        problems.join("\n")
    );
    Ok(())
}

#[test]
fn the_pkcs11_variant_uncomments_only_its_lines() {
    let text = "        command:\n          - /usr/local/bin/kubekms-server\n          - --root-key=/k\n          # A comment.\n          # - --pkcs11-module=/m\n          - --listen=0.0.0.0:1\n        volumeMounts:\n          # - name: hsm-pin\n          #   mountPath: /p\n          # - name: kubeconfig\n          #   mountPath: /c\n";
    assert_eq!(
        pkcs11_variant(text),
        "        command:\n          - /usr/local/bin/kubekms-server\n          # A comment.\n          - --pkcs11-module=/m\n          - --listen=0.0.0.0:1\n        volumeMounts:\n          - name: hsm-pin\n            mountPath: /p\n          # - name: kubeconfig\n          #   mountPath: /c\n"
    );
}

/// The checks above catch what they say: a manifest without the hardening fails them.
#[test]
fn the_hardening_check_finds_a_missing_setting() {
    let object = serde_json::json!({
        "kind": "Pod",
        "metadata": {"namespace": "ns", "name": "p"},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "c",
                "image": IMAGE,
                "imagePullPolicy": "IfNotPresent",
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"]}
                },
                "livenessProbe": {}, "readinessProbe": {},
                "resources": {"limits": {"memory": "1Gi"}}
            }]
        }
    });
    let spec = pod_spec(&object).expect("a pod spec");
    assert_eq!(hardening_problems(&object, spec), Vec::<String>::new());
    let mut writable = object.clone();
    writable["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] =
        Value::Bool(false);
    let spec = pod_spec(&writable).expect("a pod spec");
    assert_eq!(
        hardening_problems(&writable, spec),
        ["Pod/ns/p: container c: readOnlyRootFilesystem"]
    );
}
