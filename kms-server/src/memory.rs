//! In-memory implementations of the seams: a test double of the Kubernetes layer (keys,
//! aliases, grants and tags held in maps; RBAC-like rules; a token table for reviews).
//! Tests and benchmarks use them; the real ones read the keyring and call kube-apiserver.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use kms_core::grants::Grant;
use kms_core::{AliasName, Arn, ArnScope, KeyId, KeyIdentifier, KmsError, KmsKey, KmsResult};

use crate::authorize::{Allowed, AuthorizationRequest, Authorizer, Denied, Resource};
use crate::directory::{AliasEntry, GrantEntry, KeyDirectory, KeyEntry, ResolvedKey, Tag};
use crate::sts::{ReviewError, ReviewedIdentity, TokenReviewer};

/// The 12-digit account id of a namespace without an annotation
/// ([`kms_core::derive_account_id`]: what the Kubernetes layer and the operator derive).
#[must_use]
pub fn account_id_of(namespace: &str) -> String {
    kms_core::derive_account_id(namespace)
}

#[derive(Debug, Default)]
struct Contents {
    keys: BTreeMap<(String, KeyId), Arc<ResolvedKey>>,
    aliases: BTreeMap<(String, String), (KeyId, AliasEntry)>,
    grants: BTreeMap<KeyId, Vec<GrantEntry>>,
    tags: BTreeMap<KeyId, Vec<Tag>>,
}

/// Keys, aliases, grants and tags in memory.
#[derive(Debug)]
pub struct MemoryDirectory {
    scope: ArnScope,
    contents: RwLock<Contents>,
}

impl MemoryDirectory {
    /// An empty directory for ARNs of `partition` and `region`.
    #[must_use]
    pub fn new(partition: &str, region: &str) -> Self {
        Self {
            scope: ArnScope {
                partition: partition.to_owned(),
                region: region.to_owned(),
            },
            contents: RwLock::new(Contents::default()),
        }
    }

    /// Adds (or replaces) a key of `namespace` named `name`.
    pub fn add_key(
        &self,
        namespace: &str,
        name: &str,
        key: KmsKey,
        served_by_plugin: bool,
    ) -> Arc<ResolvedKey> {
        let key_id = key.key_id();
        let arn = Arn::for_key(&self.scope, &account_id_of(namespace), key_id);
        let resolved = Arc::new(ResolvedKey::new(
            arn,
            namespace,
            name,
            Arc::new(key),
            served_by_plugin,
        ));
        if let Ok(mut contents) = self.contents.write() {
            contents
                .keys
                .insert((namespace.to_owned(), key_id), Arc::clone(&resolved));
        }
        resolved
    }

    /// Adds an alias of `namespace` pointing at `target`.
    ///
    /// # Errors
    /// `InvalidAliasNameException` for a bad name.
    pub fn add_alias(&self, namespace: &str, alias_name: &str, target: KeyId) -> KmsResult<()> {
        let alias = AliasName::parse(alias_name)?;
        let arn = Arn::for_alias(&self.scope, &account_id_of(namespace), alias.clone());
        let entry = AliasEntry {
            alias_name: alias.to_string(),
            alias_arn: arn.to_string(),
            target_key_id: Some(target.to_string()),
            creation_date: None,
            last_updated_date: None,
        };
        if let Ok(mut contents) = self.contents.write() {
            contents
                .aliases
                .insert((namespace.to_owned(), alias.to_string()), (target, entry));
        }
        Ok(())
    }

    /// Adds a grant entry (for ListGrants) on `key`.
    pub fn add_grant_entry(&self, key: KeyId, grant: GrantEntry) {
        if let Ok(mut contents) = self.contents.write() {
            contents.grants.entry(key).or_default().push(grant);
        }
    }

    /// Sets the tags of `key`.
    pub fn set_tags(&self, key: KeyId, tags: Vec<Tag>) {
        if let Ok(mut contents) = self.contents.write() {
            contents.tags.insert(key, tags);
        }
    }
}

impl KeyDirectory for MemoryDirectory {
    fn account_id(&self, namespace: &str) -> String {
        account_id_of(namespace)
    }

    fn resolve(&self, namespace: &str, key: &KeyIdentifier) -> KmsResult<Arc<ResolvedKey>> {
        let contents = self
            .contents
            .read()
            .map_err(|_| KmsError::Internal("directory lock poisoned".to_owned()))?;
        let key_id = key.resolve(&self.scope, &account_id_of(namespace), |alias| {
            contents
                .aliases
                .get(&(namespace.to_owned(), alias.to_string()))
                .map(|(target, _)| *target)
        })?;
        contents
            .keys
            .get(&(namespace.to_owned(), key_id))
            .cloned()
            .ok_or_else(|| {
                KmsError::NotFound(format!(
                    "Key '{}' does not exist",
                    Arn::for_key(&self.scope, &account_id_of(namespace), key_id)
                ))
            })
    }

    fn list_keys(&self, namespace: &str) -> Vec<KeyEntry> {
        let Ok(contents) = self.contents.read() else {
            return Vec::new();
        };
        contents
            .keys
            .iter()
            .filter(|((ns, _), _)| ns == namespace)
            .map(|((_, id), key)| KeyEntry {
                key_id: id.to_string(),
                key_arn: key.arn_text().to_owned(),
                served_by_plugin: key.served_by_plugin(),
            })
            .collect()
    }

    fn list_aliases(&self, namespace: &str) -> Vec<AliasEntry> {
        let Ok(contents) = self.contents.read() else {
            return Vec::new();
        };
        contents
            .aliases
            .iter()
            .filter(|((ns, _), _)| ns == namespace)
            .map(|(_, (_, entry))| entry.clone())
            .collect()
    }

    fn list_grants(&self, key: &ResolvedKey) -> Vec<GrantEntry> {
        self.contents
            .read()
            .ok()
            .and_then(|c| c.grants.get(&key.key().key_id()).cloned())
            .unwrap_or_default()
    }

    fn list_tags(&self, key: &ResolvedKey) -> Vec<Tag> {
        self.contents
            .read()
            .ok()
            .and_then(|c| c.tags.get(&key.key().key_id()).cloned())
            .unwrap_or_default()
    }
}

/// An RBAC-like rule: `username` may do `verbs` (`*` for all) on keys `names` (`None`: any
/// key and the account) in `namespace`.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The username.
    pub username: String,
    /// The namespace.
    pub namespace: String,
    /// Lower-case verbs, or `*`.
    pub verbs: Vec<String>,
    /// Key names, or any.
    pub names: Option<Vec<String>>,
}

/// A grant as the test double evaluates it.
#[derive(Debug, Clone)]
pub struct MemoryGrant {
    /// Grant id.
    pub grant_id: String,
    /// Grantee username.
    pub grantee: String,
    /// The key.
    pub key_id: KeyId,
    /// Operations and constraints.
    pub grant: Grant,
    /// A token that carries the grant.
    pub token: Option<String>,
}

/// Rules and grants in memory; optionally slow, to test timeouts.
#[derive(Debug, Default)]
pub struct MemoryAuthorizer {
    rules: RwLock<Vec<Rule>>,
    grants: RwLock<Vec<MemoryGrant>>,
    delay: RwLock<Option<Duration>>,
    calls: std::sync::atomic::AtomicUsize,
}

impl MemoryAuthorizer {
    /// How many decisions were asked for (tests wait on it as evidence a request arrived).
    #[must_use]
    pub fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Denies everything until rules are added.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a rule.
    pub fn allow(&self, rule: Rule) {
        if let Ok(mut rules) = self.rules.write() {
            rules.push(rule);
        }
    }

    /// Lets `username` do everything in `namespace`.
    pub fn allow_all(&self, username: &str, namespace: &str) {
        self.allow(Rule {
            username: username.to_owned(),
            namespace: namespace.to_owned(),
            verbs: vec!["*".to_owned()],
            names: None,
        });
    }

    /// Removes every rule of `username`.
    pub fn revoke(&self, username: &str) {
        if let Ok(mut rules) = self.rules.write() {
            rules.retain(|r| r.username != username);
        }
    }

    /// Adds a grant.
    pub fn add_grant(&self, grant: MemoryGrant) {
        if let Ok(mut grants) = self.grants.write() {
            grants.push(grant);
        }
    }

    /// Makes every decision take `delay` (a hung kube-apiserver).
    pub fn set_delay(&self, delay: Option<Duration>) {
        if let Ok(mut d) = self.delay.write() {
            *d = delay;
        }
    }
}

#[async_trait]
impl Authorizer for MemoryAuthorizer {
    async fn authorize(&self, request: &AuthorizationRequest<'_>) -> Result<Allowed, Denied> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let delay = self.delay.read().ok().and_then(|d| *d);
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let verb = request.action.verb();
        let (namespace, name) = match request.resource {
            Resource::Key(key) => (key.namespace(), Some(key.name())),
            Resource::Account { namespace } => (namespace, None),
        };
        let by_rule = self.rules.read().is_ok_and(|rules| {
            rules.iter().any(|rule| {
                rule.username == request.principal.username
                    && rule.namespace == namespace
                    && rule.verbs.iter().any(|v| v == "*" || *v == verb)
                    && match (&rule.names, name) {
                        (None, _) => true,
                        (Some(names), Some(name)) => names.iter().any(|n| n == name),
                        (Some(_), None) => false,
                    }
            })
        });
        if by_rule {
            return Ok(Allowed::Rbac);
        }
        if let (Resource::Key(key), Some(operation)) =
            (request.resource, request.action.grant_operation())
            && let Ok(grants) = self.grants.read()
        {
            for grant in grants.iter() {
                let holder = grant.grantee == request.principal.username
                    || grant
                        .token
                        .as_ref()
                        .is_some_and(|t| request.grant_tokens.contains(t));
                if holder
                    && grant.key_id == key.key().key_id()
                    && grant
                        .grant
                        .permits(operation, request.encryption_context, None)
                {
                    return Ok(Allowed::Grant {
                        grant_id: grant.grant_id.clone(),
                    });
                }
            }
        }
        Err(Denied::Forbidden {
            reason: format!(
                "no rule or grant allows {verb} for {}",
                request.principal.username
            ),
        })
    }
}

/// Tokens and the identities they review to.
#[derive(Debug, Default)]
pub struct MemoryReviewer {
    tokens: RwLock<HashMap<String, ReviewedIdentity>>,
    unavailable: RwLock<bool>,
    delay: RwLock<Option<Duration>>,
}

impl MemoryReviewer {
    /// Rejects every token until some are added.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `token` review to the ServiceAccount `namespace/name` for `audience`.
    pub fn add_service_account(&self, token: &str, namespace: &str, name: &str, audience: &str) {
        if let Ok(mut tokens) = self.tokens.write() {
            tokens.insert(
                token.to_owned(),
                ReviewedIdentity {
                    username: format!("system:serviceaccount:{namespace}:{name}"),
                    uid: Some(format!("uid-{namespace}-{name}")),
                    groups: crate::principal::Principal::service_account_groups(namespace),
                    audiences: vec![audience.to_owned()],
                },
            );
        }
    }

    /// Makes `token` review to any identity.
    pub fn add_identity(&self, token: &str, identity: ReviewedIdentity) {
        if let Ok(mut tokens) = self.tokens.write() {
            tokens.insert(token.to_owned(), identity);
        }
    }

    /// Simulates kube-apiserver being down.
    pub fn set_unavailable(&self, unavailable: bool) {
        if let Ok(mut u) = self.unavailable.write() {
            *u = unavailable;
        }
    }

    /// Makes every review take `delay` (a hung kube-apiserver).
    pub fn set_delay(&self, delay: Option<Duration>) {
        if let Ok(mut d) = self.delay.write() {
            *d = delay;
        }
    }
}

#[async_trait]
impl TokenReviewer for MemoryReviewer {
    async fn review(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<ReviewedIdentity, ReviewError> {
        let delay = self.delay.read().ok().and_then(|d| *d);
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        if self.unavailable.read().is_ok_and(|u| *u) {
            return Err(ReviewError::Unavailable(
                "kube-apiserver is down".to_owned(),
            ));
        }
        let identity = self
            .tokens
            .read()
            .ok()
            .and_then(|t| t.get(token).cloned())
            .ok_or_else(|| ReviewError::Rejected("unknown token".to_owned()))?;
        if !identity.audiences.iter().any(|a| audiences.contains(a)) {
            return Err(ReviewError::Rejected(
                "token not bound to the audience".to_owned(),
            ));
        }
        Ok(identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_are_twelve_digits_and_stable() {
        let a = account_id_of("team-a");
        assert_eq!(a.len(), 12);
        assert!(a.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(a, account_id_of("team-a"));
        assert_ne!(a, account_id_of("team-b"));
    }
}
