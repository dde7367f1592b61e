//! A fake API server behind a `tower_test` mock service (the controller-rs pattern): it
//! keeps one namespace's KmsKeys, KmsKeyMaterial records, KmsGrants, KmsAliases and Leases
//! in memory, answers the requests the reconcilers and the leader elector make, and logs
//! each as "METHOD resource[/name[/sub]]" (Events as "EVENT Reason"; a refused write gets
//! its status code appended) so tests assert the exact sequence of requests.
//!
//! Like kube-apiserver it enforces optimistic concurrency: a PUT must carry the stored
//! resourceVersion (409 Conflict when stale, 422 when missing) and a JSON patch whose
//! `test` operation fails is refused (422). A test can slip a concurrent write in just
//! before the next PUT of an object ([`FakeApi::before_next_put`]) and can make the server
//! stop answering altogether ([`FakeApi::stall`]).

// Each test binary uses a part of the fake.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::coordination::v1::Lease;

use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::{Client, ResourceExt};
use kubekms_k8s::{KmsAlias, KmsGrant, KmsKey, KmsKeyMaterial};
use serde_json::{Value, json};

pub const NAMESPACE: &str = "team-a";

/// A KmsKeyMaterial record `name` in [`NAMESPACE`] that names the root key `root_key_id`
/// and holds no version yet (enough for the checks of `--init-root-key`).
pub fn record_under(name: &str, root_key_id: &str) -> KmsKeyMaterial {
    serde_json::from_value(json!({
        "apiVersion": "kubekms.io/v1alpha1", "kind": "KmsKeyMaterial",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "keyId": "0d41a7c2-5b1e-4c3a-9f10-2b3c4d5e6f70", "keySpec": "SYMMETRIC_DEFAULT",
            "keyUsage": "ENCRYPT_DECRYPT", "origin": "AWS_KMS",
            "createdAt": "2026-12-01T00:00:00Z", "rootKeyId": root_key_id, "versions": [],
        },
    }))
    .expect("record")
}

type ConcurrentWrite = Box<dyn FnOnce(&mut Value) + Send>;

#[derive(Default)]
pub struct State {
    pub keys: BTreeMap<String, Value>,
    pub records: BTreeMap<String, Value>,
    pub grants: BTreeMap<String, Value>,
    pub aliases: BTreeMap<String, Value>,
    pub leases: BTreeMap<String, Value>,
    pub log: Vec<String>,
    /// Requests are held without an answer (a hung API server).
    pub stalled: bool,
    /// From the next PUT on, requests are held without an answer.
    pub stall_at_put: bool,
    /// A concurrent write to apply to `resource/name` just before its next PUT.
    before_put: Option<(String, ConcurrentWrite)>,
    /// Notes of the Events, to check that no material leaks into them.
    pub event_notes: Vec<String>,
    resource_version: u64,
}

impl State {
    fn next_version(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    fn store(&mut self, resource: &str) -> &mut BTreeMap<String, Value> {
        match resource {
            "kmskeys" => &mut self.keys,
            "kmskeymaterials" => &mut self.records,
            "kmsgrants" => &mut self.grants,
            "kmsaliases" => &mut self.aliases,
            "leases" => &mut self.leases,
            other => panic!("unexpected resource {other}"),
        }
    }

    /// Stores `object` under `resource/name` with a new resourceVersion.
    fn put(&mut self, resource: &str, name: &str, mut object: Value) {
        let rv = self.next_version();
        object["metadata"]["resourceVersion"] = json!(rv);
        self.store(resource).insert(name.to_owned(), object);
    }
}

#[derive(Clone)]
pub struct FakeApi {
    pub state: Arc<Mutex<State>>,
}

impl FakeApi {
    /// A client talking to a new fake API server.
    pub fn start() -> (Client, Self) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let fake = Self {
            state: Arc::new(Mutex::new(State::default())),
        };
        let server = fake.clone();
        tokio::spawn(async move {
            let mut unanswered = Vec::new();
            while let Some((request, respond)) = handle.next_request().await {
                {
                    let mut state = server.lock();
                    if state.stall_at_put && request.method() == http::Method::PUT {
                        state.stalled = true;
                    }
                }
                if server.lock().stalled {
                    // Never answered, never dropped: the caller waits forever.
                    unanswered.push(respond);
                    continue;
                }
                let (status, body) = server.handle(request).await;
                let response = Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&body).expect("json")))
                    .expect("response");
                respond.send_response(response);
            }
        });
        (Client::new(service, NAMESPACE), fake)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fake API state")
    }

    fn put(&self, resource: &str, name: &str, object: &impl serde::Serialize) {
        let value = serde_json::to_value(object).expect("object");
        self.lock().put(resource, name, value);
    }

    pub fn put_key(&self, key: &KmsKey) {
        self.put("kmskeys", &key.name_any(), key);
    }

    pub fn put_record(&self, record: &KmsKeyMaterial) {
        self.put("kmskeymaterials", &record.name_any(), record);
    }

    pub fn put_grant(&self, grant: &KmsGrant) {
        self.put("kmsgrants", &grant.name_any(), grant);
    }

    pub fn put_alias(&self, alias: &KmsAlias) {
        self.put("kmsaliases", &alias.name_any(), alias);
    }

    pub fn put_lease(&self, lease: &Lease) {
        self.put("leases", &lease.name_any(), lease);
    }

    pub fn lease(&self, name: &str) -> Option<Lease> {
        self.lock()
            .leases
            .get(name)
            .map(|v| serde_json::from_value(v.clone()).expect("stored lease"))
    }

    /// From now on, no request is answered.
    pub fn stall(&self) {
        self.lock().stalled = true;
    }

    /// From the next PUT on (that PUT included), no request is answered.
    pub fn stall_from_next_put(&self) {
        self.lock().stall_at_put = true;
    }

    /// Just before the next PUT of `resource/name` is handled, `write` changes the stored
    /// object (and its resourceVersion), as another writer would: that PUT then conflicts.
    pub fn before_next_put(
        &self,
        resource: &str,
        name: &str,
        write: impl FnOnce(&mut Value) + Send + 'static,
    ) {
        self.lock().before_put = Some((format!("{resource}/{name}"), Box::new(write)));
    }

    pub fn alias(&self, name: &str) -> Option<KmsAlias> {
        self.lock()
            .aliases
            .get(name)
            .map(|v| serde_json::from_value(v.clone()).expect("stored alias"))
    }

    pub fn grant(&self, name: &str) -> Option<KmsGrant> {
        self.lock()
            .grants
            .get(name)
            .map(|v| serde_json::from_value(v.clone()).expect("stored grant"))
    }

    pub fn key(&self, name: &str) -> Option<KmsKey> {
        self.lock()
            .keys
            .get(name)
            .map(|v| serde_json::from_value(v.clone()).expect("stored key"))
    }

    pub fn record(&self, name: &str) -> Option<KmsKeyMaterial> {
        self.lock()
            .records
            .get(name)
            .map(|v| serde_json::from_value(v.clone()).expect("stored record"))
    }

    pub fn grant_names(&self) -> Vec<String> {
        self.lock().grants.keys().cloned().collect()
    }

    /// The requests since the last call.
    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().log)
    }

    pub fn event_notes(&self) -> Vec<String> {
        self.lock().event_notes.clone()
    }

    async fn handle(&self, request: Request<Body>) -> (StatusCode, Value) {
        let method = request.method().as_str().to_owned();
        let path = request.uri().path().to_owned();
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .expect("request body");
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("request body is JSON")
        };
        let mut state = self.lock();
        if path.starts_with("/apis/events.k8s.io/") {
            let reason = body["reason"].as_str().unwrap_or_default().to_owned();
            state.log.push(format!("EVENT {reason}"));
            state
                .event_notes
                .push(body["note"].as_str().unwrap_or_default().to_owned());
            return (StatusCode::CREATED, body);
        }
        if path == "/api/v1/secrets" && method == "GET" {
            state.log.push("GET secrets".to_owned());
            return (
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "SecretList", "metadata": {}, "items": []}),
            );
        }
        let rest = [
            format!("/apis/kubekms.io/v1alpha1/namespaces/{NAMESPACE}/"),
            format!("/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/"),
        ]
        .iter()
        .find_map(|prefix| path.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("unexpected path {path}"))
        .to_owned();
        let parts: Vec<&str> = rest.split('/').collect();
        let resource = parts[0];
        let name = parts.get(1).copied();
        let sub = parts.get(2).copied();
        let (status, response) = Self::answer(&mut state, &method, resource, name, sub, body);
        // A GET of a missing object is an ordinary answer; other refusals show their code.
        let line = if status.is_success() || (status == StatusCode::NOT_FOUND && method == "GET") {
            format!("{method} {rest}")
        } else {
            format!("{method} {rest} {}", status.as_u16())
        };
        state.log.push(line);
        (status, response)
    }

    fn answer(
        state: &mut State,
        method: &str,
        resource: &str,
        name: Option<&str>,
        sub: Option<&str>,
        body: Value,
    ) -> (StatusCode, Value) {
        if method == "PUT"
            && let Some(name) = name
        {
            let target = format!("{resource}/{name}");
            if state.before_put.as_ref().is_some_and(|(t, _)| *t == target)
                && let Some((_, write)) = state.before_put.take()
                && let Some(mut object) = state.store(resource).get(name).cloned()
            {
                write(&mut object);
                state.put(resource, name, object);
            }
        }
        let rv = state.next_version();
        let store = state.store(resource);
        match (method, name, sub) {
            ("GET", None, _) => {
                let items: Vec<Value> = store.values().cloned().collect();
                (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": rv}, "items": items}),
                )
            }
            ("GET", Some(name), None) => match store.get(name) {
                Some(object) => (StatusCode::OK, object.clone()),
                None => not_found(name),
            },
            ("POST", None, _) => {
                let mut object = body;
                let name = object["metadata"]["name"]
                    .as_str()
                    .expect("created object has a name")
                    .to_owned();
                if store.contains_key(&name) {
                    return failure(StatusCode::CONFLICT, "AlreadyExists", "exists");
                }
                object["metadata"]["resourceVersion"] = json!(rv);
                object["metadata"]["uid"] = json!(format!("uid-{name}"));
                store.insert(name, object.clone());
                (StatusCode::CREATED, object)
            }
            ("PUT", Some(name), None) => {
                let Some(stored) = store.get(name) else {
                    return not_found(name);
                };
                let mut object = body;
                match object["metadata"]["resourceVersion"].as_str() {
                    None => {
                        return failure(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "Invalid",
                            "metadata.resourceVersion: must be specified for an update",
                        );
                    }
                    Some(sent) if Some(sent) != stored["metadata"]["resourceVersion"].as_str() => {
                        return failure(
                            StatusCode::CONFLICT,
                            "Conflict",
                            "the object has been modified; please apply your changes to the latest version and try again",
                        );
                    }
                    Some(_) => {}
                }
                object["metadata"]["resourceVersion"] = json!(rv);
                store.insert(name.to_owned(), object.clone());
                (StatusCode::OK, object)
            }
            ("PATCH", Some(name), Some("status")) => {
                let Some(object) = store.get_mut(name) else {
                    return not_found(name);
                };
                object["status"] = body["status"].clone();
                object["metadata"]["resourceVersion"] = json!(rv);
                (StatusCode::OK, object.clone())
            }
            ("PATCH", Some(name), None) => {
                let Some(object) = store.get_mut(name) else {
                    return not_found(name);
                };
                if let Err(failed) = patch(object, &body) {
                    return failure(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", &failed);
                }
                object["metadata"]["resourceVersion"] = json!(rv);
                let result = object.clone();
                let gone = result["metadata"]["deletionTimestamp"].is_string()
                    && result["metadata"]["finalizers"]
                        .as_array()
                        .is_none_or(Vec::is_empty);
                if gone {
                    store.remove(name);
                }
                (StatusCode::OK, result)
            }
            ("DELETE", Some(name), None) => {
                let Some(object) = store.get_mut(name) else {
                    return not_found(name);
                };
                let held = object["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| !f.is_empty());
                if held {
                    object["metadata"]["deletionTimestamp"] = json!("2030-01-01T00:00:00Z");
                    (StatusCode::OK, object.clone())
                } else {
                    let object = store.remove(name).expect("present");
                    (StatusCode::OK, object)
                }
            }
            other => panic!("unexpected request {method} {other:?}"),
        }
    }
}

fn failure(code: StatusCode, reason: &str, message: &str) -> (StatusCode, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code.as_u16(), "message": message}),
    )
}

fn not_found(name: &str) -> (StatusCode, Value) {
    failure(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{name} not found"),
    )
}

/// Applies the patches the reconcilers send: the finalizer helper's JSON patches (`test`,
/// then add or remove a finalizer; all or nothing) and JSON merge patches of the spec.
fn patch(object: &mut Value, body: &Value) -> Result<(), String> {
    let Some(operations) = body.as_array() else {
        merge(object, body);
        return Ok(());
    };
    let mut patched = object.clone();
    for operation in operations {
        let path = operation["path"].as_str().unwrap_or_default();
        match operation["op"].as_str().unwrap_or_default() {
            "test" => {
                // As kube-apiserver's json-patch: a missing path tests equal to null.
                let found = patched.pointer(path).cloned().unwrap_or(Value::Null);
                if found != operation["value"] {
                    return Err(format!(
                        "the json patch test at {path} failed: {found} is not {}",
                        operation["value"]
                    ));
                }
            }
            "add" if path == "/metadata/finalizers" => {
                patched["metadata"]["finalizers"] = operation["value"].clone();
            }
            "add" if path == "/metadata/finalizers/-" => {
                let finalizers = patched["metadata"]["finalizers"]
                    .as_array_mut()
                    .expect("finalizers");
                finalizers.push(operation["value"].clone());
            }
            "remove" => {
                let index: usize = path
                    .rsplit('/')
                    .next()
                    .and_then(|i| i.parse().ok())
                    .expect("finalizer index");
                let finalizers = patched["metadata"]["finalizers"]
                    .as_array_mut()
                    .expect("finalizers");
                if index >= finalizers.len() {
                    return Err(format!("no finalizer at {path}"));
                }
                finalizers.remove(index);
            }
            other => panic!("unexpected JSON patch operation {other} {path}"),
        }
    }
    *object = patched;
    Ok(())
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}
