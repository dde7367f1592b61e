//! The Kubernetes layer without a cluster: the directory over a keyring snapshot built from
//! objects, and the authorizer against a fake API server behind a `tower_test` mock
//! service (the controller-rs pattern) that answers SubjectAccessReviews from a rule
//! table, counts them, can fail or stop answering.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use k8s_openapi::api::coordination::v1::Lease;
use kms_core::keystore::{FileKeyStore, RootKeyStore};
use kms_core::{ArnScope, EncryptionContext, KeyId, KeyIdentifier, derive_account_id};
use kube::Client;
use kube::client::Body;
use kubekms_k8s::account::{ANNOTATION_ACCOUNT_ID, Accounts};
use kubekms_k8s::names::{KeySpecName, KeyUsageName, OriginName};
use kubekms_k8s::test_util::add_version;
use kubekms_k8s::{KmsAlias, KmsGrant, KmsKey, KmsKeyMaterial, KmsKeyMaterialSpec, KmsKeySpec};
use kubekms_keyring::{KeySetBuilder, KeyringMetrics, Objects};
use kubekms_server::kubernetes::{
    AuthorizerConfig, KeyringDirectory, KubeAuthorizer, KubernetesMetrics, View,
};
use kubekms_server::{
    Action, Allowed, AuthorizationRequest, Authorizer, CredentialKind, Denied, KeyDirectory,
    Principal, ResolvedKey, Resource,
};
use serde_json::{Value, json};
use tokio::sync::watch;

fn objects(store: &dyn RootKeyStore, namespace: &str, name: &str) -> (KmsKey, KmsKeyMaterial) {
    let mut record = KmsKeyMaterial::new(
        name,
        KmsKeyMaterialSpec {
            key_id: KeyId::generate().expect("id").to_string(),
            key_spec: KeySpecName::SymmetricDefault,
            key_usage: KeyUsageName::EncryptDecrypt,
            origin: OriginName::AwsKms,
            created_at: "2026-01-01T00:00:00Z".to_owned(),
            root_key_id: store.root_key_id(),
            versions: Vec::new(),
            current_version: None,
            on_demand_rotations: 0,
            last_on_demand_token: None,
            next_rotation_time: None,
            rotation_period_in_days: None,
            deletion_date: None,
        },
    );
    record.metadata.namespace = Some(namespace.to_owned());
    record.metadata.uid = Some(format!("uid-record-{namespace}-{name}"));
    record.metadata.resource_version = Some("1".to_owned());
    add_version(store, &mut record);
    let spec: KmsKeySpec =
        serde_json::from_value(json!({"keySpec": "SYMMETRIC_DEFAULT", "tags": {"app": "demo"}}))
            .expect("spec");
    let mut key = KmsKey::new(name, spec);
    key.metadata.namespace = Some(namespace.to_owned());
    key.metadata.uid = Some(format!("uid-key-{namespace}-{name}"));
    key.metadata.resource_version = Some("1".to_owned());
    (key, record)
}

fn grant(namespace: &str, name: &str, key: &str, grantee: Value, spec: Value) -> KmsGrant {
    let mut spec = spec;
    spec["keyRef"] = json!({"name": key});
    spec["grantee"] = grantee;
    let mut grant: KmsGrant = serde_json::from_value(json!({
        "apiVersion": "kubekms.io/v1alpha1", "kind": "KmsGrant",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-grant-{name}")},
        "spec": spec,
    }))
    .expect("grant");
    grant.metadata.resource_version = Some("1".to_owned());
    grant
}

fn alias(namespace: &str, name: &str, alias_name: &str, target: &str) -> KmsAlias {
    serde_json::from_value(json!({
        "apiVersion": "kubekms.io/v1alpha1", "kind": "KmsAlias",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-alias-{name}"),
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"aliasName": alias_name, "targetKeyRef": {"name": target}},
    }))
    .expect("alias")
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: Arc<FileKeyStore>,
    directory: Arc<KeyringDirectory>,
    key_ids: BTreeMap<String, KeyId>,
}

const TEAM_A: &str = "team-a";
const TEAM_B: &str = "team-b";
const APP: &str = "system:serviceaccount:team-a:app";

/// team-a: keys app-key (alias/app, two grants) and broken (wrapped under another root
/// key); team-b: key b-key, served-key (a plugin heartbeat names it); team-c and team-d
/// claim one account id.
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = Arc::new(FileKeyStore::init(&tmp.path().join("root.key")).expect("root"));
    let other_root = FileKeyStore::init(&tmp.path().join("other.key")).expect("other root");
    let mut keys = Vec::new();
    let mut records = Vec::new();
    let mut key_ids = BTreeMap::new();
    for (namespace, name, store) in [
        (TEAM_A, "app-key", root.as_ref() as &dyn RootKeyStore),
        (TEAM_A, "broken", &other_root),
        (TEAM_B, "b-key", root.as_ref()),
        (TEAM_B, "served-key", root.as_ref()),
        ("team-c", "c-key", root.as_ref()),
    ] {
        let (key, record) = objects(store, namespace, name);
        key_ids.insert(
            name.to_owned(),
            KeyId::parse(&record.spec.key_id).expect("id"),
        );
        keys.push(Arc::new(key));
        records.push(Arc::new(record));
    }
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "kubekms-plugin-node1", "namespace": TEAM_B,
                     "labels": {"kubekms.io/plugin-for": "served-key"}},
    }))
    .expect("lease");
    let objects = Objects {
        keys,
        records,
        aliases: vec![Arc::new(alias(TEAM_A, "app", "alias/app", "app-key"))],
        grants: vec![
            Arc::new(grant(
                TEAM_A,
                "app-encrypt",
                "app-key",
                json!({"serviceAccount": {"name": "app"}}),
                json!({"operations": ["Encrypt", "Decrypt"],
                       "constraints": {"encryptionContextSubset": {"app": "demo"}}}),
            )),
            Arc::new(grant(
                TEAM_A,
                "ops-group",
                "app-key",
                json!({"group": "ops"}),
                json!({"operations": ["DescribeKey"]}),
            )),
            // Not valid for a symmetric key: never in force.
            Arc::new(grant(
                TEAM_A,
                "invalid",
                "app-key",
                json!({"user": "mallory"}),
                json!({"operations": ["Sign"]}),
            )),
        ],
        leases: vec![Arc::new(lease)],
        ready: true,
    };
    let set = KeySetBuilder::new(root.clone(), Arc::new(KeyringMetrics::new())).build(&objects);
    let claimed = BTreeMap::from([(ANNOTATION_ACCOUNT_ID.to_owned(), "000000000777".to_owned())]);
    let accounts = Accounts::from_pairs([
        (TEAM_A, None),
        (TEAM_B, None),
        ("team-c", Some(&claimed)),
        ("team-d", Some(&claimed)),
    ]);
    let scope = ArnScope::default();
    let view = View::build(&scope, set, Arc::new(accounts), root.as_ref());
    let (_tx, rx) = watch::channel(Arc::new(view));
    std::mem::forget(_tx);
    Fixture {
        _tmp: tmp,
        root,
        directory: Arc::new(KeyringDirectory::new(scope, rx)),
        key_ids,
    }
}

fn resolve(f: &Fixture, namespace: &str, text: &str) -> Result<Arc<ResolvedKey>, &'static str> {
    let identifier = KeyIdentifier::parse(text).map_err(|e| e.aws_exception_name())?;
    f.directory
        .resolve(namespace, &identifier)
        .map_err(|e| e.aws_exception_name())
}

#[test]
fn resolution_in_the_callers_account_and_by_arn_in_another() {
    let f = fixture();
    let a = derive_account_id(TEAM_A);
    let b = derive_account_id(TEAM_B);
    let app = f.key_ids["app-key"];
    for form in [
        app.to_string(),
        format!("arn:aws:kms:local:{a}:key/{app}"),
        "alias/app".to_owned(),
        format!("arn:aws:kms:local:{a}:alias/app"),
    ] {
        let key = resolve(&f, TEAM_A, &form).expect(&form);
        assert_eq!(key.key().key_id(), app, "{form}");
        assert_eq!(key.namespace(), TEAM_A);
        assert_eq!(key.name(), "app-key");
        assert_eq!(key.arn_text(), format!("arn:aws:kms:local:{a}:key/{app}"));
    }
    // A bare id or alias of another namespace is not found; its ARN resolves there
    // (authorization then decides).
    let b_key = f.key_ids["b-key"];
    assert_eq!(
        resolve(&f, TEAM_A, &b_key.to_string()).err(),
        Some("NotFoundException")
    );
    assert_eq!(
        resolve(&f, TEAM_B, "alias/app").err(),
        Some("NotFoundException")
    );
    let cross = resolve(&f, TEAM_A, &format!("arn:aws:kms:local:{b}:key/{b_key}")).expect("cross");
    assert_eq!(cross.namespace(), TEAM_B);
    let aliased =
        resolve(&f, TEAM_B, &format!("arn:aws:kms:local:{a}:alias/app")).expect("alias arn");
    assert_eq!(aliased.key().key_id(), app);
    // The key id with another account's ARN, another region, an unknown account.
    for wrong in [
        format!("arn:aws:kms:local:{b}:key/{app}"),
        format!("arn:aws:kms:us-east-1:{a}:key/{app}"),
        format!("arn:aws:kms:local:123456789012:key/{app}"),
    ] {
        assert_eq!(
            resolve(&f, TEAM_A, &wrong).err(),
            Some("NotFoundException"),
            "{wrong}"
        );
    }
    // Two namespaces claim one account id: neither resolves by ARN, bare ids still do.
    let c_key = f.key_ids["c-key"];
    assert_eq!(
        resolve(
            &f,
            "team-c",
            &format!("arn:aws:kms:local:000000000777:key/{c_key}")
        )
        .err(),
        Some("NotFoundException")
    );
    assert!(resolve(&f, "team-c", &c_key.to_string()).is_ok());
    assert_eq!(f.directory.account_id("team-c"), "000000000777");
}

#[test]
fn broken_and_served_keys() {
    let f = fixture();
    let broken = f.key_ids["broken"];
    assert_eq!(
        resolve(&f, TEAM_A, &broken.to_string()).err(),
        Some("KeyUnavailableException"),
        "wrapped under another root key"
    );
    let served = resolve(&f, TEAM_B, &f.key_ids["served-key"].to_string()).expect("served");
    assert!(served.served_by_plugin(), "the heartbeat Lease names it");
    let listed = f.directory.list_keys(TEAM_B);
    assert_eq!(listed.len(), 2);
    assert_eq!(listed.iter().filter(|k| k.served_by_plugin).count(), 1);
    let listed = f.directory.list_keys(TEAM_A);
    assert_eq!(listed.len(), 2, "a broken key is listed too");
}

#[test]
fn listings_from_the_snapshot() {
    let f = fixture();
    let a = derive_account_id(TEAM_A);
    let aliases = f.directory.list_aliases(TEAM_A);
    assert_eq!(aliases.len(), 1);
    assert_eq!(aliases[0].alias_name, "alias/app");
    assert_eq!(
        aliases[0].alias_arn,
        format!("arn:aws:kms:local:{a}:alias/app")
    );
    assert_eq!(
        aliases[0].target_key_id,
        Some(f.key_ids["app-key"].to_string())
    );
    let key = resolve(&f, TEAM_A, "alias/app").expect("key");
    let grants = f.directory.list_grants(&key);
    assert_eq!(
        grants.len(),
        2,
        "the invalid grant is not in force: {grants:?}"
    );
    let (id, _) = kubekms_k8s::grant::grant_id_and_token(f.root.as_ref(), "uid-grant-app-encrypt")
        .expect("id");
    let app_grant = grants.iter().find(|g| g.grant_id == id).expect("app grant");
    assert_eq!(app_grant.grantee_principal, APP);
    assert_eq!(app_grant.issuing_account, a);
    let tags = f.directory.list_tags(&key);
    assert_eq!(tags.len(), 1);
    assert_eq!(
        (tags[0].key.as_str(), tags[0].value.as_str()),
        ("app", "demo")
    );
}

// ---------------------------------------------------------------- the fake API server

type Rule = Box<dyn Fn(&Value) -> bool + Send + Sync>;

#[derive(Clone)]
struct FakeApi {
    reviews: Arc<AtomicUsize>,
    last: Arc<Mutex<Option<Value>>>,
    rule: Arc<Mutex<Rule>>,
    failing: Arc<AtomicBool>,
    hung: Arc<AtomicBool>,
}

impl FakeApi {
    fn start() -> (Client, Self) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let fake = Self {
            reviews: Arc::new(AtomicUsize::new(0)),
            last: Arc::new(Mutex::new(None)),
            rule: Arc::new(Mutex::new(Box::new(|_| false))),
            failing: Arc::new(AtomicBool::new(false)),
            hung: Arc::new(AtomicBool::new(false)),
        };
        let server = fake.clone();
        tokio::spawn(async move {
            let mut unanswered = Vec::new();
            while let Some((request, respond)) = handle.next_request().await {
                assert_eq!(
                    request.uri().path(),
                    "/apis/authorization.k8s.io/v1/subjectaccessreviews"
                );
                server.reviews.fetch_add(1, Ordering::SeqCst);
                if server.hung.load(Ordering::SeqCst) {
                    unanswered.push(respond);
                    continue;
                }
                let bytes = http_body_util::BodyExt::collect(request.into_body())
                    .await
                    .expect("body")
                    .to_bytes();
                let mut review: Value = serde_json::from_slice(&bytes).expect("json");
                *server.last.lock().expect("last") = Some(review.clone());
                let (status, body) = if server.failing.load(Ordering::SeqCst) {
                    (
                        500,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "message": "etcd is down", "reason": "InternalError", "code": 500}),
                    )
                } else {
                    let allowed = (server.rule.lock().expect("rule"))(&review["spec"]);
                    review["status"] = json!({"allowed": allowed,
                        "reason": if allowed { "RBAC: allowed by RoleBinding" } else { "" }});
                    (201, review)
                };
                respond.send_response(
                    Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&body).expect("json")))
                        .expect("response"),
                );
            }
        });
        (Client::new(service, "default"), fake)
    }

    fn reviews(&self) -> usize {
        self.reviews.load(Ordering::SeqCst)
    }

    fn set_rule(&self, rule: impl Fn(&Value) -> bool + Send + Sync + 'static) {
        *self.rule.lock().expect("rule") = Box::new(rule);
    }
}

fn principal(username: &str, groups: &[&str]) -> Principal {
    Principal {
        username: username.to_owned(),
        uid: Some("uid-1".to_owned()),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        namespace: TEAM_A.to_owned(),
        access_key_id: "ASIATEST".to_owned(),
        credential: CredentialKind::Static,
    }
}

fn authorizer(f: &Fixture, client: Client, config: AuthorizerConfig) -> KubeAuthorizer {
    KubeAuthorizer::new(
        client,
        f.directory.clone(),
        config,
        Arc::new(KubernetesMetrics::new()),
    )
}

fn config(ttl_seconds: u64, capacity: usize) -> AuthorizerConfig {
    AuthorizerConfig {
        cache_ttl: Duration::from_secs(ttl_seconds),
        cache_capacity: capacity,
        review_timeout: Duration::from_secs(2),
    }
}

async fn ask(
    authorizer: &KubeAuthorizer,
    who: &Principal,
    action: Action,
    key: &ResolvedKey,
    context: &EncryptionContext,
    tokens: &[String],
) -> Result<Allowed, Denied> {
    authorizer
        .authorize(&AuthorizationRequest {
            principal: who,
            action,
            resource: Resource::Key(key),
            encryption_context: context,
            grant_tokens: tokens,
        })
        .await
}

#[tokio::test(start_paused = true)]
async fn rbac_answers_are_cached_until_they_expire() {
    let f = fixture();
    let (client, fake) = FakeApi::start();
    fake.set_rule(|spec| spec["resourceAttributes"]["verb"] == "encrypt");
    let authorizer = authorizer(&f, client, config(5, 100));
    let key = resolve(&f, TEAM_A, "alias/app").expect("key");
    let who = principal(APP, &["system:serviceaccounts"]);
    let none = EncryptionContext::new();
    assert_eq!(
        ask(&authorizer, &who, Action::Encrypt, &key, &none, &[]).await,
        Ok(Allowed::Rbac)
    );
    let review = fake.last.lock().expect("last").clone().expect("a review");
    assert_eq!(
        review["spec"],
        json!({"user": APP, "uid": "uid-1", "groups": ["system:serviceaccounts"],
               "resourceAttributes": {"group": "kubekms.io", "resource": "kmskeys",
                 "namespace": TEAM_A, "name": "app-key", "verb": "encrypt"}})
    );
    // Hit: the rule changes, the cached answer stands for 5 s.
    fake.set_rule(|_| false);
    tokio::time::advance(Duration::from_secs(4)).await;
    assert_eq!(
        ask(&authorizer, &who, Action::Encrypt, &key, &none, &[]).await,
        Ok(Allowed::Rbac)
    );
    assert_eq!(fake.reviews(), 1);
    // Expired: asked again, and the revocation takes effect.
    tokio::time::advance(Duration::from_secs(2)).await;
    let denied = ask(&authorizer, &who, Action::Encrypt, &key, &none, &[]).await;
    assert!(
        matches!(denied, Err(Denied::Forbidden { .. })),
        "{denied:?}"
    );
    assert_eq!(fake.reviews(), 2);
}

#[tokio::test(start_paused = true)]
async fn denials_are_cached_too() {
    let f = fixture();
    let (client, fake) = FakeApi::start();
    let authorizer = authorizer(&f, client, config(5, 100));
    let key = resolve(&f, TEAM_A, "alias/app").expect("key");
    let who = principal(APP, &[]);
    let none = EncryptionContext::new();
    for _ in 0..3 {
        let denied = ask(&authorizer, &who, Action::Sign, &key, &none, &[]).await;
        assert!(
            matches!(denied, Err(Denied::Forbidden { .. })),
            "{denied:?}"
        );
    }
    assert_eq!(fake.reviews(), 1);
    // A granted binding shows after the cache time, not before.
    fake.set_rule(|_| true);
    assert!(
        ask(&authorizer, &who, Action::Sign, &key, &none, &[])
            .await
            .is_err()
    );
    tokio::time::advance(Duration::from_secs(6)).await;
    assert_eq!(
        ask(&authorizer, &who, Action::Sign, &key, &none, &[]).await,
        Ok(Allowed::Rbac)
    );
    assert_eq!(fake.reviews(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_cache_is_bounded() {
    let f = fixture();
    let (client, fake) = FakeApi::start();
    fake.set_rule(|_| true);
    let authorizer = authorizer(&f, client, config(60, 2));
    let key = resolve(&f, TEAM_A, "alias/app").expect("key");
    let none = EncryptionContext::new();
    for user in ["u1", "u2", "u3", "u4"] {
        ask(
            &authorizer,
            &principal(user, &[]),
            Action::Encrypt,
            &key,
            &none,
            &[],
        )
        .await
        .expect("allowed");
        assert!(authorizer.cached() <= 2, "{} entries", authorizer.cached());
    }
    assert_eq!(fake.reviews(), 4);
    // u1 was evicted: asked again; u4 is still cached.
    ask(
        &authorizer,
        &principal("u4", &[]),
        Action::Encrypt,
        &key,
        &none,
        &[],
    )
    .await
    .expect("allowed");
    assert_eq!(fake.reviews(), 4);
    ask(
        &authorizer,
        &principal("u1", &[]),
        Action::Encrypt,
        &key,
        &none,
        &[],
    )
    .await
    .expect("allowed");
    assert_eq!(fake.reviews(), 5);
}

#[tokio::test(start_paused = true)]
async fn failures_are_unavailable_and_not_cached() {
    let f = fixture();
    let (client, fake) = FakeApi::start();
    fake.set_rule(|_| true);
    let authorizer = authorizer(&f, client, config(5, 100));
    let key = resolve(&f, TEAM_A, "alias/app").expect("key");
    let who = principal(APP, &[]);
    let none = EncryptionContext::new();
    fake.failing.store(true, Ordering::SeqCst);
    let failed = ask(&authorizer, &who, Action::Encrypt, &key, &none, &[]).await;
    assert!(
        matches!(failed, Err(Denied::Unavailable { .. })),
        "{failed:?}"
    );
    fake.failing.store(false, Ordering::SeqCst);
    assert_eq!(
        ask(&authorizer, &who, Action::Encrypt, &key, &none, &[]).await,
        Ok(Allowed::Rbac),
        "a failure is not cached"
    );
    // A hung API server: the review's timeout answers.
    fake.hung.store(true, Ordering::SeqCst);
    let hung = ask(&authorizer, &who, Action::Decrypt, &key, &none, &[]).await;
    match hung {
        Err(Denied::Unavailable { reason }) => {
            assert!(reason.contains("did not answer"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn grants_allow_their_grantee_within_their_constraints() {
    let f = fixture();
    let (client, fake) = FakeApi::start();
    let authorizer = authorizer(&f, client, config(5, 100));
    let key = resolve(&f, TEAM_A, "alias/app").expect("key");
    let (grant_id, token) =
        kubekms_k8s::grant::grant_id_and_token(f.root.as_ref(), "uid-grant-app-encrypt")
            .expect("id");
    let app = principal(APP, &["system:serviceaccounts"]);
    let demo = EncryptionContext::from_pairs([("app", "demo"), ("extra", "x")]).expect("ctx");
    let other = EncryptionContext::from_pairs([("app", "prod")]).expect("ctx");
    let none = EncryptionContext::new();
    assert_eq!(
        ask(&authorizer, &app, Action::Encrypt, &key, &demo, &[]).await,
        Ok(Allowed::Grant {
            grant_id: grant_id.clone()
        })
    );
    assert_eq!(
        ask(
            &authorizer,
            &app,
            Action::Decrypt,
            &key,
            &demo,
            std::slice::from_ref(&token)
        )
        .await,
        Ok(Allowed::Grant {
            grant_id: grant_id.clone()
        }),
        "the token selects the grant"
    );
    assert_eq!(fake.reviews(), 0, "no review for a grant");
    // Outside the constraints, or an operation the grant lacks: RBAC decides (denies).
    for (action, context) in [
        (Action::Encrypt, &other),
        (Action::Encrypt, &none),
        (Action::GenerateDataKey, &demo),
    ] {
        let denied = ask(&authorizer, &app, action, &key, context, &[]).await;
        assert!(
            matches!(denied, Err(Denied::Forbidden { .. })),
            "{action}: {denied:?}"
        );
    }
    assert_eq!(
        fake.reviews(),
        2,
        "encrypt and generatedatakey asked once each"
    );
    // The token does not let anyone else use the grant.
    let mallory = principal("mallory", &[]);
    let denied = ask(
        &authorizer,
        &mallory,
        Action::Encrypt,
        &key,
        &demo,
        &[token],
    )
    .await;
    assert!(
        matches!(denied, Err(Denied::Forbidden { .. })),
        "{denied:?}"
    );
    // A group grantee; an operation not valid for the key is never in force.
    assert!(matches!(
        ask(
            &authorizer,
            &principal("bob", &["ops"]),
            Action::DescribeKey,
            &key,
            &none,
            &[]
        )
        .await,
        Ok(Allowed::Grant { .. })
    ));
    assert!(
        ask(
            &authorizer,
            &principal("mallory", &[]),
            Action::Sign,
            &key,
            &none,
            &[]
        )
        .await
        .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn account_level_actions_ask_without_a_name() {
    let f = fixture();
    let (client, fake) = FakeApi::start();
    fake.set_rule(|spec| spec["resourceAttributes"].get("name").is_none());
    let authorizer = authorizer(&f, client, config(5, 100));
    let who = principal(APP, &[]);
    let allowed = authorizer
        .authorize(&AuthorizationRequest {
            principal: &who,
            action: Action::ListKeys,
            resource: Resource::Account { namespace: TEAM_A },
            encryption_context: &EncryptionContext::new(),
            grant_tokens: &[],
        })
        .await;
    assert_eq!(allowed, Ok(Allowed::Rbac));
    let review = fake.last.lock().expect("last").clone().expect("review");
    assert_eq!(review["spec"]["resourceAttributes"]["verb"], "listkeys");
    assert_eq!(review["spec"]["resourceAttributes"]["namespace"], TEAM_A);
}

/// Two-step rotation: kubekms-server, like the plugins, decrypts under a staged version
/// (a ciphertext another replica made after the promotion) and encrypts only under the
/// current one until the record promotes it.
#[test]
fn a_staged_version_decrypts_and_encrypt_stays_on_the_current_one() {
    use kms_core::{EncryptionAlgorithm, ops};
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = Arc::new(FileKeyStore::init(&tmp.path().join("root.key")).expect("root"));
    let (key, mut record) = objects(root.as_ref(), TEAM_A, "app-key");
    add_version(root.as_ref(), &mut record);
    record.spec.current_version = Some(1);
    let key_of = |record: &KmsKeyMaterial| {
        let store: Arc<dyn RootKeyStore> = root.clone();
        let set = KeySetBuilder::new(store, Arc::new(KeyringMetrics::new())).build(&Objects {
            keys: vec![Arc::new(key.clone())],
            records: vec![Arc::new(record.clone())],
            ready: true,
            ..Objects::default()
        });
        set.get(TEAM_A, "app-key")
            .and_then(|e| e.key.as_ref().ok().cloned())
            .expect("usable key")
    };
    let staged = key_of(&record);
    let context = EncryptionContext::default();
    let algorithm = EncryptionAlgorithm::SymmetricDefault;
    let under_v1 = ops::encrypt(&staged, b"while staged", &context, algorithm).expect("encrypt");
    assert_eq!(kms_core::blob::peek(&under_v1).expect("blob").1, 1);

    let mut promoted_record = record.clone();
    promoted_record.spec.current_version = Some(2);
    let promoted = key_of(&promoted_record);
    let under_v2 = ops::encrypt(&promoted, b"after promotion", &context, algorithm).expect("v2");
    assert_eq!(kms_core::blob::peek(&under_v2).expect("blob").1, 2);
    let (plaintext, version) =
        ops::decrypt(&staged, &under_v2, &context, algorithm).expect("a staged version decrypts");
    assert_eq!((plaintext.expose(), version), (&b"after promotion"[..], 2));
}
