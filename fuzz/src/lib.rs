//! What the fuzz targets share: real keys from a real plugin state folder
//! (`fixtures/plugin-state`, made by `kubekms-plugin init` and two `rotate`s, with its
//! fuzz-only root key), the KmsKey and KmsKeyMaterial that `kubekms-plugin export` wrote
//! for that key (`fixtures/exported-key.yaml`), and the credential that signed the SigV4
//! seeds. Every fixture is built once per process.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use kms_core::keystore::FileKeyStore;
use kms_core::{KeyId, KmsKey, SecretBytes};
use kms_plugin::metrics::Metrics;
use kms_plugin::state::record::ActiveKey;
use kms_plugin::{Plugin, StateDir};
use kubekms_k8s::{KmsKey as KmsKeyObject, KmsKeyMaterial};
use kubekms_server::auth::{Authenticator, SessionSealer, StaticCredentials};
use serde::Deserialize as _;

/// The folder of the committed fixtures.
#[must_use]
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The access key id the SigV4 seeds are signed with (fuzz/seeds/capture_aws.py).
pub const FUZZ_ACCESS_KEY_ID: &str = "AKIDKUBEKMSFUZZ0001";
/// Its secret.
pub const FUZZ_SECRET: &str = "fuzz-secret-access-key-not-secret";
/// The region of the seeds.
pub const FUZZ_REGION: &str = "us-east-1";

/// The plugin fixture: a copy of `fixtures/plugin-state` with the modes the plugin
/// demands (git keeps none), opened as the plugin opens it.
pub struct PluginFixture {
    _dir: tempfile::TempDir,
    /// The copied state folder.
    pub state: StateDir,
    /// Its root key.
    pub store: FileKeyStore,
    /// The plugin over it.
    pub plugin: Plugin,
    /// The active key (3 material versions).
    pub key: Arc<KmsKey>,
}

fn copy_private(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(to).expect("create the state copy");
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700)).expect("chmod 700");
    for entry in std::fs::read_dir(from).expect("read fixtures") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_private(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy fixture");
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))
                .expect("chmod 600");
        }
    }
}

/// The plugin fixture, built on first use.
pub fn plugin_fixture() -> &'static PluginFixture {
    static FIXTURE: OnceLock<PluginFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("plugin-state");
        copy_private(&fixtures().join("plugin-state"), &root);
        let state = StateDir::new(&root);
        let store = FileKeyStore::open(&root.join("root.key")).expect("root key");
        let plugin = Plugin::open(StateDir::new(&root), Arc::new(Metrics::new())).expect("open");
        let active: ActiveKey = serde_json::from_slice(
            &std::fs::read(root.join("active-key.json")).expect("active-key.json"),
        )
        .expect("active key");
        let key_id = KeyId::parse(&active.key_id).expect("key id");
        let key = plugin
            .ring()
            .key(&key_id)
            .expect("active key loaded")
            .clone();
        PluginFixture {
            _dir: dir,
            state,
            store,
            plugin,
            key,
        }
    })
}

/// The KmsKey and KmsKeyMaterial of `fixtures/exported-key.yaml`.
pub fn exported_objects() -> &'static (KmsKeyObject, KmsKeyMaterial) {
    static OBJECTS: OnceLock<(KmsKeyObject, KmsKeyMaterial)> = OnceLock::new();
    OBJECTS.get_or_init(|| {
        let text = std::fs::read_to_string(fixtures().join("exported-key.yaml")).expect("read");
        let mut key = None;
        let mut material = None;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc).expect("yaml");
            match value.get("kind").and_then(|k| k.as_str()) {
                Some("KmsKey") => key = Some(serde_yaml::from_value(value).expect("KmsKey")),
                Some("KmsKeyMaterial") => {
                    material = Some(serde_yaml::from_value(value).expect("KmsKeyMaterial"));
                }
                _ => {}
            }
        }
        (key.expect("a KmsKey"), material.expect("a KmsKeyMaterial"))
    })
}

/// An authenticator that knows the seeds' credential.
pub fn authenticator() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| {
        let yaml = format!(
            "credentials:\n- accessKeyId: {FUZZ_ACCESS_KEY_ID}\n  secretAccessKey: {FUZZ_SECRET}\n  user: fuzz\n  namespace: team-a\n"
        );
        let credentials = StaticCredentials::from_yaml(&yaml).expect("credentials");
        let sealer = SessionSealer::new(&SecretBytes::new(vec![7; 32])).expect("sealer");
        Authenticator::new(FUZZ_REGION, Arc::new(credentials), Arc::new(sealer))
    })
}

/// Prints `what` when KUBEKMS_FUZZ_TRACE is set: `hack/fuzz.sh` never sets it; run a
/// target on its seeds with it (`-runs=0`) to see that each seed reaches the deep path
/// it was made for (decrypted, verified, unwrapped, ...).
pub fn trace(what: std::fmt::Arguments<'_>) {
    static ON: OnceLock<bool> = OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("KUBEKMS_FUZZ_TRACE").is_some()) {
        eprintln!("[trace] {what}");
    }
}
