//! [`KeyDirectory`] over the keyring: keys, aliases, grants and tags from the keyring's
//! `Arc<KeySet>` snapshots, account ids from the Namespaces.
//!
//! Each time either changes, a [`View`] is built once (every usable key as a ready
//! [`ResolvedKey`] with its ARN, every grant evaluated against its key with its id and
//! token derived from the root key) and published; requests read the current view without
//! waiting and without building anything.
//!
//! Resolution:
//! - a bare key id or alias name: in the caller's namespace;
//! - an ARN: its partition and region must be this installation's; its account names the
//!   namespace (the one whose account id it is; an unknown or ambiguous account is
//!   `NotFoundException`), and authorization then decides (RBAC in that namespace, or a
//!   grant on the key);
//! - a key whose material did not unwrap: `KeyUnavailableException` (wrapped under another
//!   root key) or `KMSInternalException` (damaged, tampered, moved), with no detail of the
//!   failure (that is in the keyring's log);
//! - `served_by_plugin` comes from the keyring, which watches the plugins' heartbeat
//!   Leases as well as `status.servedBy`.

use std::collections::HashMap;
use std::sync::Arc;

use kms_core::grants::Grant;
use kms_core::keystore::RootKeyStore;
use kms_core::{AliasName, Arn, ArnScope, KeyId, KeyIdentifier, KeyTarget, KmsError, KmsResult};
use kube::ResourceExt as _;
use kubekms_k8s::KmsGrant;
use kubekms_k8s::account::Accounts;
use kubekms_k8s::grant::{Grantee, grant_id_and_token, to_grant};
use kubekms_keyring::{KeyEntry as RingEntry, KeySet};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::directory::{AliasEntry, GrantEntry, KeyDirectory, KeyEntry, ResolvedKey, Tag};

/// A grant as the authorizer evaluates it.
#[derive(Debug)]
pub struct EffectiveGrant {
    /// The grant id (derived from the KmsGrant's uid under the root key).
    pub grant_id: String,
    /// The grant token (derived likewise; never logged).
    token: String,
    /// Who it is for.
    pub grantee: Grantee,
    /// Operations and constraints, validated against the key as CreateGrant does.
    pub grant: Grant,
    /// The KmsGrant's name.
    pub name: String,
    /// The KmsGrant's AWS `Name`, if set.
    pub aws_name: Option<String>,
    /// Who may retire it (a username).
    pub retiring_principal: Option<String>,
    /// When the object was created.
    pub created: Option<OffsetDateTime>,
}

impl EffectiveGrant {
    /// Whether `token` is this grant's token (constant time).
    #[must_use]
    pub fn has_token(&self, token: &str) -> bool {
        use subtle::ConstantTimeEq as _;
        self.token.len() == token.len() && bool::from(self.token.as_bytes().ct_eq(token.as_bytes()))
    }
}

#[derive(Debug)]
enum Slot {
    Usable(Arc<ResolvedKey>),
    Unusable(KmsError),
}

/// What requests read: one consistent picture of keys, aliases, grants and accounts.
#[derive(Debug, Default)]
pub struct View {
    set: Arc<KeySet>,
    accounts: Arc<Accounts>,
    keys: HashMap<String, HashMap<KeyId, Slot>>,
    /// By namespace, then KmsKey name (looked up without building a key).
    grants: HashMap<String, HashMap<String, Vec<Arc<EffectiveGrant>>>>,
}

fn unusable(arn: &Arn, error: &kubekms_k8s::unwrap::UnwrapError) -> KmsError {
    match error.to_kms_error() {
        KmsError::KeyUnavailable(_) => KmsError::KeyUnavailable(format!(
            "The key material of {arn} is not available: it is wrapped under another root key"
        )),
        _ => KmsError::Internal(format!(
            "The key material of {arn} could not be unwrapped; the server log says why"
        )),
    }
}

impl View {
    /// Builds the view of a snapshot and the accounts. `root` derives grant ids and tokens.
    #[must_use]
    pub fn build(
        scope: &ArnScope,
        set: Arc<KeySet>,
        accounts: Arc<Accounts>,
        root: &dyn RootKeyStore,
    ) -> Self {
        let duplicates: std::collections::HashSet<KeyId> =
            set.duplicate_key_ids().copied().collect();
        let mut keys: HashMap<String, HashMap<KeyId, Slot>> = HashMap::new();
        for entry in set.keys() {
            let Some(key_id) = entry.key_id() else {
                continue;
            };
            if duplicates.contains(&key_id) {
                continue;
            }
            let account = accounts.account_of(&entry.namespace);
            let arn = Arn::for_key(scope, &account, key_id);
            let slot = match &entry.key {
                Ok(key) => Slot::Usable(Arc::new(ResolvedKey::new(
                    arn,
                    entry.namespace.clone(),
                    entry.name.clone(),
                    key.clone(),
                    entry.served_by_plugin,
                ))),
                Err(error) => Slot::Unusable(unusable(&arn, error)),
            };
            let slots = keys.entry(entry.namespace.clone()).or_default();
            // A usable key wins over a broken claim of the same id.
            if !matches!(slots.get(&key_id), Some(Slot::Usable(_))) {
                slots.insert(key_id, slot);
            }
        }
        let mut grants: HashMap<String, HashMap<String, Vec<Arc<EffectiveGrant>>>> = HashMap::new();
        for entry in set.keys() {
            for grant in set.grants_for(&entry.namespace, &entry.name) {
                if let Some(effective) = effective_grant(grant, entry, root) {
                    grants
                        .entry(entry.namespace.clone())
                        .or_default()
                        .entry(entry.name.clone())
                        .or_default()
                        .push(Arc::new(effective));
                }
            }
        }
        for list in grants.values_mut().flat_map(HashMap::values_mut) {
            list.sort_by(|a, b| a.grant_id.cmp(&b.grant_id));
        }
        Self {
            set,
            accounts,
            keys,
            grants,
        }
    }

    /// The accounts this view was built with.
    #[must_use]
    pub fn accounts(&self) -> &Accounts {
        &self.accounts
    }

    /// The snapshot this view was built from.
    #[must_use]
    pub fn key_set(&self) -> &Arc<KeySet> {
        &self.set
    }

    /// The grants on the KmsKey `namespace/name`, by grant id.
    #[must_use]
    pub fn grants_for(&self, namespace: &str, name: &str) -> &[Arc<EffectiveGrant>] {
        self.grants
            .get(namespace)
            .and_then(|keys| keys.get(name))
            .map_or(&[], Vec::as_slice)
    }

    fn key(&self, scope: &ArnScope, namespace: &str, key_id: KeyId) -> KmsResult<Arc<ResolvedKey>> {
        match self.keys.get(namespace).and_then(|m| m.get(&key_id)) {
            Some(Slot::Usable(key)) => Ok(key.clone()),
            Some(Slot::Unusable(error)) => Err(error.clone()),
            None => Err(KmsError::NotFound(format!(
                "Key '{}' does not exist",
                Arn::for_key(scope, &self.accounts.account_of(namespace), key_id)
            ))),
        }
    }

    fn alias_target(&self, namespace: &str, alias: &AliasName) -> Option<KeyId> {
        let object = self.set.alias(namespace, alias)?;
        self.set
            .get(namespace, &object.spec.target_key_ref.name)
            .and_then(|entry| entry.key_id())
    }
}

fn time_of(time: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(time.0.as_second()).ok()
}

fn effective_grant(
    grant: &KmsGrant,
    key: &RingEntry,
    root: &dyn RootKeyStore,
) -> Option<EffectiveGrant> {
    let namespace = grant.namespace()?;
    let uid = grant.metadata.uid.as_deref()?;
    let grantee = Grantee::of(&grant.spec.grantee, &namespace)?;
    let built = match to_grant(&grant.spec, &key.object.spec) {
        Ok(built) => built,
        Err(error) => {
            tracing::debug!(grant = %format!("{namespace}/{}", grant.name_any()), %error, "KmsGrant not valid for its key; not in force");
            return None;
        }
    };
    let (grant_id, token) = match grant_id_and_token(root, uid) {
        Ok(derived) => derived,
        Err(error) => {
            tracing::warn!(%error, "grant ids cannot be derived from the root key");
            return None;
        }
    };
    Some(EffectiveGrant {
        grant_id,
        token,
        grantee,
        grant: built,
        name: grant.name_any(),
        aws_name: grant.spec.name.clone(),
        retiring_principal: grant
            .spec
            .retiring_principal
            .as_ref()
            .and_then(|p| Grantee::of(p, &namespace))
            .map(|g| g.name().to_owned()),
        created: grant.metadata.creation_timestamp.as_ref().and_then(time_of),
    })
}

/// The [`KeyDirectory`] of kubekms-server.
#[derive(Debug)]
pub struct KeyringDirectory {
    scope: ArnScope,
    view: watch::Receiver<Arc<View>>,
}

impl KeyringDirectory {
    /// A directory reading the views published on `view` (see [`ViewBuilder`]).
    #[must_use]
    pub fn new(scope: ArnScope, view: watch::Receiver<Arc<View>>) -> Self {
        Self { scope, view }
    }

    /// The current view.
    #[must_use]
    pub fn view(&self) -> Arc<View> {
        self.view.borrow().clone()
    }

    /// The partition and region of the ARNs.
    #[must_use]
    pub fn scope(&self) -> &ArnScope {
        &self.scope
    }
}

impl KeyDirectory for KeyringDirectory {
    fn account_id(&self, namespace: &str) -> String {
        self.view.borrow().accounts.account_of(namespace)
    }

    fn resolve(&self, namespace: &str, key: &KeyIdentifier) -> KmsResult<Arc<ResolvedKey>> {
        let view = self.view();
        let (account, target) = key.target(&self.scope)?;
        let namespace = match account {
            None => namespace,
            Some(account) => match view.accounts.namespace_of(account) {
                Some(namespace) => namespace,
                None => {
                    return Err(KmsError::NotFound(match key {
                        KeyIdentifier::AliasArn(arn) => format!("Alias '{arn}' is not found."),
                        KeyIdentifier::KeyArn(arn) => format!("Key '{arn}' does not exist"),
                        _ => "The key does not exist".to_owned(),
                    }));
                }
            },
        };
        let key_id = match target {
            KeyTarget::KeyId(id) => id,
            KeyTarget::Alias(alias) => view.alias_target(namespace, alias).ok_or_else(|| {
                KmsError::NotFound(format!(
                    "Alias '{}' is not found.",
                    Arn::for_alias(
                        &self.scope,
                        &view.accounts.account_of(namespace),
                        alias.clone()
                    )
                ))
            })?,
        };
        view.key(&self.scope, namespace, key_id)
    }

    fn list_keys(&self, namespace: &str) -> Vec<KeyEntry> {
        let view = self.view();
        let account = view.accounts.account_of(namespace);
        let mut keys: Vec<KeyEntry> = view
            .keys
            .get(namespace)
            .into_iter()
            .flat_map(|m| m.iter())
            .map(|(key_id, slot)| KeyEntry {
                key_id: key_id.to_string(),
                key_arn: Arn::for_key(&self.scope, &account, *key_id).to_string(),
                served_by_plugin: match slot {
                    Slot::Usable(key) => key.served_by_plugin(),
                    Slot::Unusable(_) => false,
                },
            })
            .collect();
        // Keys that did not unwrap are listed too (as AWS lists every key), except those a
        // plugin serves, which the keyring flags on the entry.
        for entry in view.set.keys_in(namespace) {
            if entry.served_by_plugin
                && let Some(key_id) = entry.key_id()
                && let Some(listed) = keys.iter_mut().find(|k| k.key_id == key_id.to_string())
            {
                listed.served_by_plugin = true;
            }
        }
        keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        keys
    }

    fn list_aliases(&self, namespace: &str) -> Vec<AliasEntry> {
        let view = self.view();
        let account = view.accounts.account_of(namespace);
        view.set
            .aliases_in(namespace)
            .map(|(name, object)| AliasEntry {
                alias_name: name.to_string(),
                alias_arn: Arn::for_alias(&self.scope, &account, name.clone()).to_string(),
                target_key_id: view.alias_target(namespace, name).map(|id| id.to_string()),
                creation_date: object
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .and_then(time_of),
                last_updated_date: None,
            })
            .collect()
    }

    fn list_grants(&self, key: &ResolvedKey) -> Vec<GrantEntry> {
        let view = self.view();
        let account = view.accounts.account_of(key.namespace());
        view.grants_for(key.namespace(), key.name())
            .iter()
            .map(|grant| GrantEntry {
                key_arn: key.arn_text().to_owned(),
                grant_id: grant.grant_id.clone(),
                name: Some(grant.aws_name.clone().unwrap_or_else(|| grant.name.clone())),
                creation_date: grant.created,
                grantee_principal: grant.grantee.name().to_owned(),
                retiring_principal: grant.retiring_principal.clone(),
                issuing_account: account.clone(),
                operations: grant.grant.operations.iter().copied().collect(),
                constraints: grant.grant.constraints.clone(),
            })
            .collect()
    }

    fn list_tags(&self, key: &ResolvedKey) -> Vec<Tag> {
        let view = self.view();
        view.set
            .kms_key(key.namespace(), key.name())
            .map(|object| {
                object
                    .spec
                    .tags
                    .iter()
                    .map(|(k, v)| Tag {
                        key: k.clone(),
                        value: v.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Keeps a [`View`] of the latest key set and accounts published.
pub struct ViewBuilder;

impl ViewBuilder {
    /// Publishes a view now and after every change of `keys` or `accounts`, until both
    /// senders are gone. Returns the receiver of views and the task.
    pub fn spawn(
        scope: ArnScope,
        mut keys: watch::Receiver<Arc<KeySet>>,
        mut accounts: watch::Receiver<Arc<Accounts>>,
        root: Arc<dyn RootKeyStore>,
    ) -> (watch::Receiver<Arc<View>>, tokio::task::JoinHandle<()>) {
        let build = {
            let scope = scope.clone();
            let root = root.clone();
            move |set: Arc<KeySet>, accounts: Arc<Accounts>| {
                Arc::new(View::build(&scope, set, accounts, root.as_ref()))
            }
        };
        let first = build(
            keys.borrow_and_update().clone(),
            accounts.borrow_and_update().clone(),
        );
        let (tx, rx) = watch::channel(first);
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = keys.changed() => if changed.is_err() { break },
                    changed = accounts.changed() => if changed.is_err() { break },
                }
                let set = keys.borrow_and_update().clone();
                let accounts_now = accounts.borrow_and_update().clone();
                let build = build.clone();
                // HMACs and allocations per key: off the async threads.
                match tokio::task::spawn_blocking(move || build(set, accounts_now)).await {
                    Ok(view) => {
                        tx.send_replace(view);
                    }
                    Err(error) => tracing::error!(%error, "directory view build failed"),
                }
            }
        });
        (rx, task)
    }
}
