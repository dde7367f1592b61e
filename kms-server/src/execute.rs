//! The core operation: for each typed request, resolve its key(s), apply the protocol's
//! rules, authorize, run the kms-core operation, and build the typed response. Private-key
//! operations (RSA and elliptic curves, key pair generation) run on the blocking pool,
//! bounded by a semaphore; symmetric and HMAC operations run inline (microseconds).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kms_core::ops::{self, ReEncryptSide};
use kms_core::{EncryptionContext, KeyUsage, KmsError, KmsResult, Operation};
use tokio::sync::Semaphore;

use crate::authorize::{Action, Allowed, AuthorizationRequest, Authorizer, Denied, Resource};
use crate::directory::{KeyDirectory, ResolvedKey};
use crate::error::ApiError;
use crate::principal::Principal;
use crate::protocol::request::*;
use crate::protocol::response::{KmsResponse, RotationEntry};
use crate::resolve::{refuse_reserved_context, resolve, resolve_from_blob};

/// What the request path needs beyond the request: the two seams and the bound on
/// blocking work.
#[derive(Clone)]
pub struct Services {
    /// Where keys are found.
    pub directory: Arc<dyn KeyDirectory>,
    /// Who may do what.
    pub authorizer: Arc<dyn Authorizer>,
    /// Bounds concurrent private-key operations on the blocking pool.
    pub blocking: Arc<Semaphore>,
    /// Longest wait for an authorization decision.
    pub authorize_timeout: Duration,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("authorize_timeout", &self.authorize_timeout)
            .finish_non_exhaustive()
    }
}

/// Facts gathered along the path for the audit record.
#[derive(Debug, Default)]
pub struct Trail {
    /// ARNs of the keys involved (source first for ReEncrypt).
    pub key_arns: Vec<String>,
    /// Why each authorization allowed.
    pub allowed: Vec<Allowed>,
    /// Why an authorization denied (never sent to the caller).
    pub denied: Option<String>,
}

async fn authorize(
    services: &Services,
    principal: &Principal,
    action: Action,
    resource: Resource<'_>,
    encryption_context: &EncryptionContext,
    grant_tokens: &[String],
    trail: &mut Trail,
) -> Result<(), ApiError> {
    let request = AuthorizationRequest {
        principal,
        action,
        resource,
        encryption_context,
        grant_tokens,
    };
    let decision = tokio::time::timeout(
        services.authorize_timeout,
        services.authorizer.authorize(&request),
    )
    .await
    .unwrap_or_else(|_| {
        Err(Denied::Unavailable {
            reason: format!(
                "no decision within {} ms",
                services.authorize_timeout.as_millis()
            ),
        })
    });
    match decision {
        Ok(allowed) => {
            trail.allowed.push(allowed);
            Ok(())
        }
        Err(Denied::Forbidden { reason }) => {
            trail.denied = Some(reason);
            Err(KmsError::AccessDenied(format!(
                "User: {} is not authorized to perform: kms:{action} (verb \"{}\")",
                principal.username,
                action.verb()
            ))
            .into())
        }
        Err(Denied::Unavailable { reason }) => {
            trail.denied = Some(reason);
            Err(ApiError::DependencyTimeout(
                "The authorization decision could not be made in time; retry".to_owned(),
            ))
        }
    }
}

/// Runs a private-key operation on the blocking pool.
async fn blocking<T: Send + 'static>(
    services: &Services,
    work: impl FnOnce() -> KmsResult<T> + Send + 'static,
) -> Result<T, ApiError> {
    let _permit = services
        .blocking
        .acquire()
        .await
        .map_err(|_| KmsError::Internal("the worker pool is closed".to_owned()))?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| KmsError::Internal("a cryptographic worker stopped".to_owned()))?
        .map_err(ApiError::from)
}

/// State and usage checks without the operation (DryRun with IGNORE_CIPHERTEXT).
fn check_only(key: &ResolvedKey, operation: Operation, usage: KeyUsage) -> Result<(), ApiError> {
    let metadata = &key.key().metadata;
    metadata.check(operation)?;
    if metadata.usage != usage {
        return Err(KmsError::InvalidKeyUsage(format!(
            "{} has KeyUsage {}; {operation} needs {usage}",
            metadata.key_id, metadata.usage
        ))
        .into());
    }
    Ok(())
}

fn dry_run_or<T>(dry_run: bool, value: T) -> Result<T, ApiError> {
    if dry_run {
        Err(ApiError::DryRun)
    } else {
        Ok(value)
    }
}

fn is_private_key_work(key: &ResolvedKey) -> bool {
    key.key().metadata.spec.is_asymmetric()
}

/// A page of `items` (sorted by `sort_key`) after `page.marker`.
fn paginate<T>(
    mut items: Vec<T>,
    sort_key: impl Fn(&T) -> String,
    page: &Page,
    default_limit: u32,
    max_limit: u32,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    items.sort_by_key(&sort_key);
    let after = match &page.marker {
        None => None,
        Some(marker) => Some(
            URL_SAFE_NO_PAD
                .decode(marker)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| {
                    ApiError::InvalidMarker("The marker was not issued by this server".to_owned())
                })?,
        ),
    };
    let limit = usize::try_from(page.limit.unwrap_or(default_limit).min(max_limit)).unwrap_or(1);
    let mut remaining = items
        .into_iter()
        .filter(|item| after.as_ref().is_none_or(|after| sort_key(item) > *after))
        .peekable();
    let mut out = Vec::with_capacity(limit.min(1000));
    while out.len() < limit {
        match remaining.next() {
            Some(item) => out.push(item),
            None => break,
        }
    }
    let next = match (remaining.peek(), out.last()) {
        (Some(_), Some(last)) => Some(URL_SAFE_NO_PAD.encode(sort_key(last))),
        _ => None,
    };
    Ok((out, next))
}

/// One request's way through resolution and authorization, noting for the audit record
/// every key involved and what allowed or denied each step.
struct Steps<'a> {
    services: &'a Services,
    principal: &'a Principal,
    trail: &'a mut Trail,
}

impl Steps<'_> {
    /// Resolves `key_id` in the caller's account and notes the key.
    fn resolve(&mut self, key_id: &str) -> Result<Arc<ResolvedKey>, ApiError> {
        let key = resolve(self.services.directory.as_ref(), self.principal, key_id)?;
        Ok(self.note(key))
    }

    /// Resolves the key a request names by `key_id`, or else by its ciphertext blob (Decrypt
    /// and ReEncrypt), and notes it; `missing` is the message when it names neither.
    fn resolve_key_or_blob(
        &mut self,
        key_id: Option<&str>,
        blob: Option<&[u8]>,
        missing: &str,
    ) -> Result<Arc<ResolvedKey>, ApiError> {
        let directory = self.services.directory.as_ref();
        let key = match (key_id, blob) {
            (Some(key_id), _) => resolve(directory, self.principal, key_id)?,
            (None, Some(blob)) => resolve_from_blob(directory, self.principal, blob)?,
            (None, None) => return Err(ApiError::validation(missing)),
        };
        Ok(self.note(key))
    }

    fn note(&mut self, key: Arc<ResolvedKey>) -> Arc<ResolvedKey> {
        self.trail.key_arns.push(key.arn_text().to_owned());
        key
    }

    /// Authorizes `action` on `key` with the request's context and grant tokens.
    async fn authorize_key(
        &mut self,
        key: &ResolvedKey,
        action: Action,
        encryption_context: &EncryptionContext,
        grant_tokens: &[String],
    ) -> Result<(), ApiError> {
        authorize(
            self.services,
            self.principal,
            action,
            Resource::Key(key),
            encryption_context,
            grant_tokens,
            self.trail,
        )
        .await
    }

    /// Authorizes an account-level `action` in the caller's account.
    async fn authorize_account(&mut self, action: Action) -> Result<(), ApiError> {
        authorize(
            self.services,
            self.principal,
            action,
            Resource::Account {
                namespace: &self.principal.namespace,
            },
            &EncryptionContext::new(),
            &[],
            self.trail,
        )
        .await
    }

    /// Resolves `key_id` and authorizes `action` on it: how most operations begin.
    async fn key(
        &mut self,
        key_id: &str,
        action: Action,
        encryption_context: &EncryptionContext,
        grant_tokens: &[String],
    ) -> Result<Arc<ResolvedKey>, ApiError> {
        let key = self.resolve(key_id)?;
        self.authorize_key(&key, action, encryption_context, grant_tokens)
            .await?;
        Ok(key)
    }

    /// As [`Steps::key`] for an operation without an encryption context.
    async fn key_without_context(
        &mut self,
        key_id: &str,
        action: Action,
        grant_tokens: &[String],
    ) -> Result<Arc<ResolvedKey>, ApiError> {
        self.key(key_id, action, &EncryptionContext::new(), grant_tokens)
            .await
    }
}

/// Runs a cryptographic operation: private-key work on the blocking pool, the rest
/// (symmetric and HMAC: microseconds) inline.
async fn crypto<T: Send + 'static>(
    services: &Services,
    private_key_work: bool,
    work: impl FnOnce() -> KmsResult<T> + Send + 'static,
) -> Result<T, ApiError> {
    if private_key_work {
        blocking(services, work).await
    } else {
        work().map_err(ApiError::from)
    }
}

/// Executes one request as `principal`.
///
/// # Errors
/// Every exception of the operation, in AWS's order: validation, resolution (NotFound),
/// the protocol's rules, authorization (AccessDenied), then kms-core's (state, usage,
/// ciphertext), and DryRunOperationException when all passed under DryRun.
pub async fn execute(
    services: &Services,
    principal: &Principal,
    request: KmsRequest,
    trail: &mut Trail,
) -> Result<KmsResponse, ApiError> {
    refuse_reserved_context(request.encryption_contexts())?;
    let directory = services.directory.as_ref();
    let mut steps = Steps {
        services,
        principal,
        trail,
    };
    match request {
        KmsRequest::Encrypt(r) => {
            let key = steps
                .key(
                    &r.key_id,
                    Action::Encrypt,
                    &r.encryption_context,
                    &r.grant_tokens,
                )
                .await?;
            let algorithm = r.algorithm;
            let (k, plaintext, context) = (Arc::clone(&key), r.plaintext, r.encryption_context);
            let ciphertext_blob = crypto(services, is_private_key_work(&key), move || {
                ops::encrypt(k.key(), plaintext.expose(), &context, algorithm)
            })
            .await?;
            dry_run_or(
                r.dry_run,
                KmsResponse::Encrypt {
                    key_arn: key.arn_text().to_owned(),
                    ciphertext_blob,
                    algorithm,
                },
            )
        }
        KmsRequest::Decrypt(r) => {
            let key = steps.resolve_key_or_blob(
                r.key_id.as_deref(),
                r.ciphertext_blob.as_deref(),
                "KeyId is required when the IGNORE_CIPHERTEXT dry-run modifier omits CiphertextBlob",
            )?;
            steps
                .authorize_key(
                    &key,
                    Action::Decrypt,
                    &r.encryption_context,
                    &r.grant_tokens,
                )
                .await?;
            let algorithm = r.algorithm;
            let blob = match r.ciphertext_blob {
                Some(blob) if !(r.dry_run && r.ignore_ciphertext) => blob,
                _ => {
                    check_only(&key, Operation::Decrypt, KeyUsage::EncryptDecrypt)?;
                    return Err(ApiError::DryRun);
                }
            };
            let (k, context) = (Arc::clone(&key), r.encryption_context);
            let (plaintext, _) = crypto(services, is_private_key_work(&key), move || {
                ops::decrypt(k.key(), &blob, &context, algorithm)
            })
            .await?;
            dry_run_or(
                r.dry_run,
                KmsResponse::Decrypt {
                    key_arn: key.arn_text().to_owned(),
                    plaintext,
                    algorithm,
                },
            )
        }
        KmsRequest::ReEncrypt(r) => {
            let source = steps.resolve_key_or_blob(
                r.source_key_id.as_deref(),
                r.ciphertext_blob.as_deref(),
                "SourceKeyId is required when the IGNORE_CIPHERTEXT dry-run modifier omits CiphertextBlob",
            )?;
            let destination = steps.resolve(&r.destination_key_id)?;
            steps
                .authorize_key(
                    &source,
                    Action::ReEncryptFrom,
                    &r.source_encryption_context,
                    &r.grant_tokens,
                )
                .await?;
            steps
                .authorize_key(
                    &destination,
                    Action::ReEncryptTo,
                    &r.destination_encryption_context,
                    &r.grant_tokens,
                )
                .await?;
            let blob = match r.ciphertext_blob {
                Some(blob) if !(r.dry_run && r.ignore_ciphertext) => blob,
                _ => {
                    check_only(&source, Operation::ReEncryptFrom, KeyUsage::EncryptDecrypt)?;
                    check_only(
                        &destination,
                        Operation::ReEncryptTo,
                        KeyUsage::EncryptDecrypt,
                    )?;
                    return Err(ApiError::DryRun);
                }
            };
            let (source_algorithm, destination_algorithm) =
                (r.source_algorithm, r.destination_algorithm);
            let (s, d) = (Arc::clone(&source), Arc::clone(&destination));
            let (source_context, destination_context) = (
                r.source_encryption_context,
                r.destination_encryption_context,
            );
            let private_key_work =
                is_private_key_work(&source) || is_private_key_work(&destination);
            let ciphertext_blob = crypto(services, private_key_work, move || {
                ops::re_encrypt(
                    &blob,
                    ReEncryptSide {
                        key: s.key(),
                        context: &source_context,
                        algorithm: source_algorithm,
                    },
                    ReEncryptSide {
                        key: d.key(),
                        context: &destination_context,
                        algorithm: destination_algorithm,
                    },
                )
            })
            .await?;
            dry_run_or(
                r.dry_run,
                KmsResponse::ReEncrypt {
                    ciphertext_blob,
                    source_key_arn: source.arn_text().to_owned(),
                    key_arn: destination.arn_text().to_owned(),
                    source_algorithm,
                    destination_algorithm,
                },
            )
        }
        KmsRequest::GenerateDataKey(r) => generate_data_key(&mut steps, r, true).await,
        KmsRequest::GenerateDataKeyWithoutPlaintext(r) => {
            generate_data_key(&mut steps, r, false).await
        }
        KmsRequest::GenerateDataKeyPair(r) => generate_data_key_pair(&mut steps, r, true).await,
        KmsRequest::GenerateDataKeyPairWithoutPlaintext(r) => {
            generate_data_key_pair(&mut steps, r, false).await
        }
        KmsRequest::GenerateRandom(r) => {
            steps.authorize_account(Action::GenerateRandom).await?;
            Ok(KmsResponse::GenerateRandom {
                plaintext: ops::generate_random(r.number_of_bytes)?,
            })
        }
        KmsRequest::GetPublicKey(r) => {
            let key = steps
                .key_without_context(&r.key_id, Action::GetPublicKey, &r.grant_tokens)
                .await?;
            Ok(KmsResponse::GetPublicKey {
                key_arn: key.arn_text().to_owned(),
                info: ops::get_public_key(key.key())?,
            })
        }
        KmsRequest::Sign(r) => {
            let key = steps
                .key_without_context(&r.key_id, Action::Sign, &r.grant_tokens)
                .await?;
            let (algorithm, message_type) = (r.algorithm, r.message_type);
            let (k, message) = (Arc::clone(&key), r.message);
            let signature = blocking(services, move || {
                ops::sign(k.key(), message.expose(), message_type, algorithm)
            })
            .await?;
            dry_run_or(
                r.dry_run,
                KmsResponse::Sign {
                    key_arn: key.arn_text().to_owned(),
                    signature,
                    algorithm,
                },
            )
        }
        KmsRequest::Verify(r) => {
            let key = steps
                .key_without_context(&r.key_id, Action::Verify, &r.grant_tokens)
                .await?;
            let (algorithm, message_type) = (r.algorithm, r.message_type);
            let k = Arc::clone(&key);
            let (message, signature) = (r.message, r.signature);
            blocking(services, move || {
                ops::verify(
                    k.key(),
                    message.expose(),
                    message_type,
                    &signature,
                    algorithm,
                )
            })
            .await?;
            dry_run_or(
                r.dry_run,
                KmsResponse::Verify {
                    key_arn: key.arn_text().to_owned(),
                    algorithm,
                },
            )
        }
        KmsRequest::GenerateMac(r) => {
            let key = steps
                .key_without_context(&r.key_id, Action::GenerateMac, &r.grant_tokens)
                .await?;
            let mac = ops::generate_mac(key.key(), r.message.expose(), r.algorithm)?;
            dry_run_or(
                r.dry_run,
                KmsResponse::GenerateMac {
                    key_arn: key.arn_text().to_owned(),
                    mac,
                    algorithm: r.algorithm,
                },
            )
        }
        KmsRequest::VerifyMac(r) => {
            let key = steps
                .key_without_context(&r.key_id, Action::VerifyMac, &r.grant_tokens)
                .await?;
            ops::verify_mac(key.key(), r.message.expose(), &r.mac, r.algorithm)?;
            dry_run_or(
                r.dry_run,
                KmsResponse::VerifyMac {
                    key_arn: key.arn_text().to_owned(),
                    algorithm: r.algorithm,
                },
            )
        }
        KmsRequest::DeriveSharedSecret(r) => {
            let key = steps
                .key_without_context(&r.key_id, Action::DeriveSharedSecret, &r.grant_tokens)
                .await?;
            let k = Arc::clone(&key);
            let (algorithm, public_key) = (r.algorithm, r.public_key);
            let shared_secret = blocking(services, move || {
                ops::derive_shared_secret(k.key(), algorithm, &public_key)
            })
            .await?;
            dry_run_or(
                r.dry_run,
                KmsResponse::DeriveSharedSecret {
                    key_arn: key.arn_text().to_owned(),
                    shared_secret,
                    algorithm,
                    origin: key.key().metadata.origin,
                },
            )
        }
        KmsRequest::DescribeKey(r) => {
            let key = steps
                .key_without_context(&r.key_id, Action::DescribeKey, &r.grant_tokens)
                .await?;
            key.key().metadata.check(Operation::DescribeKey)?;
            let account_id = directory.account_id(key.namespace());
            Ok(KmsResponse::DescribeKey { key, account_id })
        }
        KmsRequest::ListKeys(page) => {
            steps.authorize_account(Action::ListKeys).await?;
            let entries: Vec<_> = directory
                .list_keys(&principal.namespace)
                .into_iter()
                .filter(|entry| !entry.served_by_plugin)
                .collect();
            let (entries, next_marker) = paginate(entries, |e| e.key_id.clone(), &page, 100, 1000)?;
            Ok(KmsResponse::ListKeys {
                keys: entries.into_iter().map(|e| (e.key_id, e.key_arn)).collect(),
                next_marker,
            })
        }
        KmsRequest::ListAliases(r) => {
            let target = match &r.key_id {
                Some(key_id) => Some(steps.resolve(key_id)?.key().key_id().to_string()),
                None => None,
            };
            steps.authorize_account(Action::ListAliases).await?;
            let served: Vec<String> = directory
                .list_keys(&principal.namespace)
                .into_iter()
                .filter(|e| e.served_by_plugin)
                .map(|e| e.key_id)
                .collect();
            let aliases: Vec<_> = directory
                .list_aliases(&principal.namespace)
                .into_iter()
                .filter(|a| match &a.target_key_id {
                    Some(t) => !served.contains(t) && target.as_ref().is_none_or(|want| want == t),
                    None => target.is_none(),
                })
                .collect();
            let (aliases, next_marker) =
                paginate(aliases, |a| a.alias_name.clone(), &r.page, 50, 100)?;
            Ok(KmsResponse::ListAliases {
                aliases,
                next_marker,
            })
        }
        KmsRequest::ListGrants(r) => {
            let key = steps
                .key_without_context(&r.key_id, Action::ListGrants, &[])
                .await?;
            key.key().metadata.check(Operation::ManageGrants)?;
            let grants: Vec<_> = directory
                .list_grants(&key)
                .into_iter()
                .filter(|g| r.grant_id.as_ref().is_none_or(|id| *id == g.grant_id))
                .filter(|g| {
                    r.grantee_principal
                        .as_ref()
                        .is_none_or(|p| *p == g.grantee_principal)
                })
                .collect();
            let (grants, next_marker) = paginate(grants, |g| g.grant_id.clone(), &r.page, 50, 100)?;
            Ok(KmsResponse::ListGrants {
                grants,
                next_marker,
            })
        }
        KmsRequest::GetKeyRotationStatus(key_id) => {
            let key = steps
                .key_without_context(&key_id, Action::GetKeyRotationStatus, &[])
                .await?;
            let metadata = &key.key().metadata;
            metadata.check(Operation::GetKeyRotationStatus)?;
            rotatable(&key)?;
            Ok(KmsResponse::GetKeyRotationStatus {
                key_id: metadata.key_id.to_string(),
                enabled: metadata.rotation.is_some(),
                period_days: metadata.rotation.map(|r| r.period_days),
                next_rotation: metadata.rotation.map(|r| r.next_rotation),
            })
        }
        KmsRequest::ListKeyRotations(r) => {
            let key = steps
                .key_without_context(&r.key_id, Action::ListKeyRotations, &[])
                .await?;
            let metadata = &key.key().metadata;
            metadata.check(Operation::ListKeyRotations)?;
            rotatable(&key)?;
            let current = metadata.current_version();
            let key_id = metadata.key_id.to_string();
            let rotations: Vec<_> = metadata
                .versions
                .iter()
                .filter(|v| r.include_all_material || v.rotation_type.is_some())
                .map(|v| {
                    (
                        v.version,
                        RotationEntry {
                            key_id: key_id.clone(),
                            rotation_date: v.created,
                            rotation_type: v.rotation_type,
                            current: Some(v.version) == current,
                        },
                    )
                })
                .collect();
            let (rotations, next_marker) =
                paginate(rotations, |(v, _)| format!("{v:010}"), &r.page, 100, 1000)?;
            Ok(KmsResponse::ListKeyRotations {
                rotations: rotations.into_iter().map(|(_, e)| e).collect(),
                next_marker,
            })
        }
        KmsRequest::ListResourceTags(r) => {
            let key = steps
                .key_without_context(&r.key_id, Action::ListResourceTags, &[])
                .await?;
            let tags = directory.list_tags(&key);
            let (tags, next_marker) = paginate(tags, |t| t.key.clone(), &r.page, 50, 50)?;
            Ok(KmsResponse::ListResourceTags { tags, next_marker })
        }
    }
}

/// Only symmetric keys rotate; asymmetric and HMAC keys answer
/// UnsupportedOperationException to rotation queries, as AWS.
fn rotatable(key: &ResolvedKey) -> Result<(), ApiError> {
    let spec = key.key().metadata.spec;
    if spec.is_symmetric() {
        Ok(())
    } else {
        Err(KmsError::UnsupportedOperation(format!(
            "{} is {spec}: only symmetric encryption keys rotate",
            key.key().key_id()
        ))
        .into())
    }
}

async fn generate_data_key(
    steps: &mut Steps<'_>,
    r: GenerateDataKeyRequest,
    with_plaintext: bool,
) -> Result<KmsResponse, ApiError> {
    let length = ops::data_key_length(r.key_spec, r.number_of_bytes)?;
    let action = if with_plaintext {
        Action::GenerateDataKey
    } else {
        Action::GenerateDataKeyWithoutPlaintext
    };
    let key = steps
        .key(&r.key_id, action, &r.encryption_context, &r.grant_tokens)
        .await?;
    let response = if with_plaintext {
        let data_key = ops::generate_data_key(key.key(), length, &r.encryption_context)?;
        KmsResponse::GenerateDataKey {
            key_arn: key.arn_text().to_owned(),
            ciphertext_blob: data_key.ciphertext_blob,
            plaintext: Some(data_key.plaintext),
        }
    } else {
        KmsResponse::GenerateDataKey {
            key_arn: key.arn_text().to_owned(),
            ciphertext_blob: ops::generate_data_key_without_plaintext(
                key.key(),
                length,
                &r.encryption_context,
            )?,
            plaintext: None,
        }
    };
    dry_run_or(r.dry_run, response)
}

async fn generate_data_key_pair(
    steps: &mut Steps<'_>,
    r: GenerateDataKeyPairRequest,
    with_plaintext: bool,
) -> Result<KmsResponse, ApiError> {
    let action = if with_plaintext {
        Action::GenerateDataKeyPair
    } else {
        Action::GenerateDataKeyPairWithoutPlaintext
    };
    let key = steps
        .key(&r.key_id, action, &r.encryption_context, &r.grant_tokens)
        .await?;
    let k = Arc::clone(&key);
    let (spec, context) = (r.key_pair_spec, r.encryption_context);
    let pair = blocking(steps.services, move || {
        ops::generate_data_key_pair(k.key(), spec, &context, with_plaintext)
    })
    .await?;
    dry_run_or(
        r.dry_run,
        KmsResponse::GenerateDataKeyPair {
            key_arn: key.arn_text().to_owned(),
            key_pair_spec: spec,
            public_key: pair.public_key,
            private_key_ciphertext_blob: pair.private_key_ciphertext_blob,
            private_key_plaintext: pair.private_key_plaintext,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagination_walks_every_item_once() {
        let items: Vec<String> = (0..25).map(|i| format!("k{i:02}")).collect();
        let mut page = Page {
            limit: Some(10),
            marker: None,
        };
        let mut seen = Vec::new();
        loop {
            let (chunk, next) =
                paginate(items.clone(), Clone::clone, &page, 100, 1000).expect("page");
            seen.extend(chunk);
            match next {
                Some(marker) => page.marker = Some(marker),
                None => break,
            }
        }
        assert_eq!(seen, items);
        let bad = Page {
            limit: None,
            marker: Some("%%%".to_owned()),
        };
        assert_eq!(
            paginate(items.clone(), Clone::clone, &bad, 100, 1000)
                .map(|_| ())
                .map_err(|e| e.aws_exception_name()),
            Err("InvalidMarkerException")
        );
        let capped = Page {
            limit: Some(1000),
            marker: None,
        };
        assert_eq!(
            paginate(items, Clone::clone, &capped, 50, 20)
                .expect("page")
                .0
                .len(),
            20,
            "service cap"
        );
    }
}
