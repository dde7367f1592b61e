//! [`Authorizer`] for Kubernetes. In this order (a key policy Deny will come first):
//!
//! 1. **KmsGrant**: a grant on the key whose grantee is the caller (its username, or one
//!    of its groups), whose operations include the action and whose encryption context
//!    constraints permit the request's context allows it. Grant tokens in the request
//!    that are a grant's token select that grant first; a token never lets anyone but
//!    the grantee use a grant. Grants are read from the keyring snapshot, their ids and
//!    tokens derived from the root key (status is not trusted for them), their operations
//!    checked against the key's type as CreateGrant does.
//! 2. **RBAC**: a SubjectAccessReview for the caller (user, uid, groups) on group
//!    `kubekms.io`, resource `kmskeys`, the key's namespace and name (none for
//!    account-level actions), verb [`crate::Action::verb`]. Answers, allowed and denied,
//!    are cached for `cache_ttl` (5 s by default) in a bounded cache; concurrent requests
//!    asking the same question wait for one review; each review is bounded by
//!    `review_timeout`, and a review that fails or times out is
//!    [`Denied::Unavailable`] (not cached).
//! 3. Otherwise [`Denied::Forbidden`]; the caller is told only who and which verb, the
//!    reason goes to the audit record.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt as _;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};

use crate::authorize::{Allowed, AuthorizationRequest, Authorizer, Denied, Resource};
use crate::kubernetes::cache::{Decision, DecisionCache, Lookup};
use crate::kubernetes::directory::KeyringDirectory;
use crate::kubernetes::metrics::KubernetesMetrics;

/// The API group of the RBAC checks.
pub const RBAC_GROUP: &str = "kubekms.io";
/// The resource of the RBAC checks.
pub const RBAC_RESOURCE: &str = "kmskeys";

/// Settings of the authorizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizerConfig {
    /// How long an RBAC answer is reused (zero: not at all).
    pub cache_ttl: Duration,
    /// How many answers are kept at most.
    pub cache_capacity: usize,
    /// Longest wait for one SubjectAccessReview.
    pub review_timeout: Duration,
}

impl Default for AuthorizerConfig {
    fn default() -> Self {
        Self {
            cache_ttl: Duration::from_secs(5),
            cache_capacity: 10_000,
            review_timeout: Duration::from_secs(3),
        }
    }
}

/// One RBAC question (the cache key).
#[derive(Debug, Clone)]
pub struct Question {
    /// Username.
    pub user: String,
    /// Uid.
    pub uid: Option<String>,
    /// Groups.
    pub groups: Vec<String>,
    /// The key's namespace (the caller's for account-level actions).
    pub namespace: String,
    /// The KmsKey's name; none for account-level actions.
    pub name: Option<String>,
    /// The verb.
    pub verb: String,
}

/// A question with borrowed fields: what a request looks up in the decision cache
/// without building a [`Question`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuestionRef<'a> {
    /// Username.
    pub user: &'a str,
    /// Uid.
    pub uid: Option<&'a str>,
    /// Groups.
    pub groups: &'a [String],
    /// The key's namespace.
    pub namespace: &'a str,
    /// The KmsKey's name.
    pub name: Option<&'a str>,
    /// The verb.
    pub verb: &'a str,
}

impl QuestionRef<'_> {
    /// The owned question.
    #[must_use]
    pub fn to_question(&self) -> Question {
        Question {
            user: self.user.to_owned(),
            uid: self.uid.map(str::to_owned),
            groups: self.groups.to_vec(),
            namespace: self.namespace.to_owned(),
            name: self.name.map(str::to_owned),
            verb: self.verb.to_owned(),
        }
    }
}

/// What [`Question`] and [`QuestionRef`] have in common: the cache is keyed by
/// `Question` and looked up by `dyn AsQuestion` (the standard way to look a map up by a
/// borrowed compound key), so both must hash and compare as their [`QuestionRef`].
pub trait AsQuestion: Sync {
    /// The borrowed form.
    fn as_question(&self) -> QuestionRef<'_>;
}

impl AsQuestion for Question {
    fn as_question(&self) -> QuestionRef<'_> {
        QuestionRef {
            user: &self.user,
            uid: self.uid.as_deref(),
            groups: &self.groups,
            namespace: &self.namespace,
            name: self.name.as_deref(),
            verb: &self.verb,
        }
    }
}

impl AsQuestion for QuestionRef<'_> {
    fn as_question(&self) -> QuestionRef<'_> {
        *self
    }
}

impl<'a> std::borrow::Borrow<dyn AsQuestion + 'a> for Question {
    fn borrow(&self) -> &(dyn AsQuestion + 'a) {
        self
    }
}

impl std::hash::Hash for dyn AsQuestion + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_question().hash(state);
    }
}

impl PartialEq for dyn AsQuestion + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.as_question() == other.as_question()
    }
}

impl Eq for dyn AsQuestion + '_ {}

impl std::hash::Hash for Question {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_question().hash(state);
    }
}

impl PartialEq for Question {
    fn eq(&self, other: &Self) -> bool {
        self.as_question() == other.as_question()
    }
}

impl Eq for Question {}

impl Question {
    /// The SubjectAccessReview that asks it.
    #[must_use]
    pub fn review(&self) -> SubjectAccessReview {
        SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(self.user.clone()),
                uid: self.uid.clone(),
                groups: Some(self.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(RBAC_GROUP.to_owned()),
                    resource: Some(RBAC_RESOURCE.to_owned()),
                    namespace: Some(self.namespace.clone()),
                    name: self.name.clone(),
                    verb: Some(self.verb.clone()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        }
    }
}

/// See the module documentation.
pub struct KubeAuthorizer {
    client: Client,
    directory: Arc<KeyringDirectory>,
    cache: DecisionCache<Question>,
    config: AuthorizerConfig,
    metrics: Arc<KubernetesMetrics>,
}

impl KubeAuthorizer {
    /// An authorizer asking kube-apiserver through `client` (a call client with a read
    /// timeout), reading grants from `directory`.
    #[must_use]
    pub fn new(
        client: Client,
        directory: Arc<KeyringDirectory>,
        config: AuthorizerConfig,
        metrics: Arc<KubernetesMetrics>,
    ) -> Self {
        Self {
            client,
            directory,
            cache: DecisionCache::new(config.cache_ttl, config.cache_capacity),
            config,
            metrics,
        }
    }

    /// Entries in the decision cache.
    #[must_use]
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    fn by_grant(&self, request: &AuthorizationRequest<'_>) -> Option<Allowed> {
        let (Resource::Key(key), Some(operation)) =
            (request.resource, request.action.grant_operation())
        else {
            return None;
        };
        let view = self.directory.view();
        let grants = view.grants_for(key.namespace(), key.name());
        if grants.is_empty() {
            return None;
        }
        let principal = request.principal;
        let usable = |grant: &&Arc<crate::kubernetes::directory::EffectiveGrant>| {
            grant
                .grantee
                .matches(&principal.username, &principal.groups)
                && grant
                    .grant
                    .permits(operation, request.encryption_context, None)
        };
        let by_token = grants.iter().filter(usable).find(|grant| {
            request
                .grant_tokens
                .iter()
                .any(|token| grant.has_token(token))
        });
        let chosen = by_token.or_else(|| grants.iter().find(usable))?;
        self.metrics.grant_allowed.inc();
        Some(Allowed::Grant {
            grant_id: chosen.grant_id.clone(),
        })
    }
}

async fn ask(
    client: Client,
    question: Question,
    timeout: Duration,
    metrics: Arc<KubernetesMetrics>,
) -> Result<Decision, String> {
    let api: Api<SubjectAccessReview> = Api::all(client);
    let review = question.review();
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(timeout, api.create(&PostParams::default(), &review)).await;
    metrics.sar_seconds.observe(started.elapsed().as_secs_f64());
    match answer {
        Err(_) => {
            metrics.sar("timeout");
            Err(format!(
                "the SubjectAccessReview did not answer within {timeout:?}"
            ))
        }
        Ok(Err(error)) => {
            metrics.sar("error");
            Err(format!("the SubjectAccessReview failed: {error}"))
        }
        Ok(Ok(review)) => {
            let status = review.status.unwrap_or_default();
            let allowed = status.allowed && status.denied != Some(true);
            metrics.sar(if allowed { "allowed" } else { "denied" });
            let reason = match (status.reason, status.evaluation_error) {
                (Some(reason), _) if !reason.is_empty() => reason,
                (_, Some(error)) if !error.is_empty() => error,
                _ if allowed => "allowed".to_owned(),
                _ => "no RBAC rule allows it".to_owned(),
            };
            Ok(Decision {
                allowed,
                reason: Arc::from(reason.as_str()),
            })
        }
    }
}

#[async_trait]
impl Authorizer for KubeAuthorizer {
    async fn authorize(&self, request: &AuthorizationRequest<'_>) -> Result<Allowed, Denied> {
        if let Some(allowed) = self.by_grant(request) {
            return Ok(allowed);
        }
        let (namespace, name) = match request.resource {
            Resource::Key(key) => (key.namespace(), Some(key.name())),
            Resource::Account { namespace } => (namespace, None),
        };
        let principal = request.principal;
        let question = QuestionRef {
            user: &principal.username,
            uid: principal.uid.as_deref(),
            groups: &principal.groups,
            namespace,
            name,
            verb: request.action.verb(),
        };
        let (answer, lookup) = self
            .cache
            .get_or_ask_with(
                &question as &dyn AsQuestion,
                || question.to_question(),
                |asked| {
                    ask(
                        self.client.clone(),
                        asked.clone(),
                        self.config.review_timeout,
                        self.metrics.clone(),
                    )
                    .boxed()
                },
            )
            .await;
        // Entries change only when a question is asked (answers expire in place).
        let asked = match lookup {
            Lookup::Hit => {
                self.metrics.authz_cache_hits.inc();
                false
            }
            Lookup::Miss => {
                self.metrics.authz_cache_misses.inc();
                true
            }
            Lookup::Coalesced => {
                self.metrics.authz_coalesced.inc();
                true
            }
        };
        if asked {
            self.metrics
                .authz_cache_entries
                .set(i64::try_from(self.cache.len()).unwrap_or(i64::MAX));
        }
        match answer {
            Ok(decision) if decision.allowed => Ok(Allowed::Rbac),
            Ok(decision) => Err(Denied::Forbidden {
                reason: format!(
                    "RBAC denied {} on {RBAC_RESOURCE} in {namespace} ({}); no KmsGrant allows it",
                    request.action.verb(),
                    decision.reason
                ),
            }),
            Err(reason) => Err(Denied::Unavailable { reason }),
        }
    }
}

impl std::fmt::Debug for KubeAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeAuthorizer").finish_non_exhaustive()
    }
}
