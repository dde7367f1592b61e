//! A fake API server behind a `tower_test` mock service (the controller-rs pattern): it
//! keeps one namespace's KmsKeys, KmsKeyMaterial records and KmsGrants in memory, answers
//! the requests the reconcilers make, and logs each as "METHOD resource[/name[/sub]]" (Events
//! as "EVENT Reason") so tests assert the exact sequence of requests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::{Client, ResourceExt};
use kubekms_k8s::{KmsAlias, KmsGrant, KmsKey, KmsKeyMaterial};
use serde_json::{Value, json};

pub const NAMESPACE: &str = "team-a";

#[derive(Default)]
pub struct State {
    pub keys: BTreeMap<String, Value>,
    pub records: BTreeMap<String, Value>,
    pub grants: BTreeMap<String, Value>,
    pub aliases: BTreeMap<String, Value>,
    pub log: Vec<String>,
    /// Notes of the Events, to check that no material leaks into them.
    pub event_notes: Vec<String>,
    resource_version: u64,
}

impl State {
    fn next_version(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
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
            while let Some((request, respond)) = handle.next_request().await {
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

    pub fn put_key(&self, key: &KmsKey) {
        let mut value = serde_json::to_value(key).expect("key");
        let mut state = self.lock();
        let rv = state.next_version();
        value["metadata"]["resourceVersion"] = json!(rv);
        state.keys.insert(key.name_any(), value);
    }

    pub fn put_record(&self, record: &KmsKeyMaterial) {
        let value = serde_json::to_value(record).expect("record");
        self.lock().records.insert(record.name_any(), value);
    }

    pub fn put_grant(&self, grant: &KmsGrant) {
        let value = serde_json::to_value(grant).expect("grant");
        self.lock().grants.insert(grant.name_any(), value);
    }

    pub fn put_alias(&self, alias: &KmsAlias) {
        let value = serde_json::to_value(alias).expect("alias");
        self.lock().aliases.insert(alias.name_any(), value);
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
        let prefix = format!("/apis/kubekms.io/v1alpha1/namespaces/{NAMESPACE}/");
        let rest = path
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("unexpected path {path}"));
        let parts: Vec<&str> = rest.split('/').collect();
        state.log.push(format!("{method} {rest}"));
        let resource = parts[0];
        let name = parts.get(1).copied();
        let sub = parts.get(2).copied();
        let rv = state.next_version();
        let store = match resource {
            "kmskeys" => &mut state.keys,
            "kmskeymaterials" => &mut state.records,
            "kmsgrants" => &mut state.grants,
            "kmsaliases" => &mut state.aliases,
            other => panic!("unexpected resource {other}"),
        };
        match (method.as_str(), name, sub) {
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
                    return (
                        StatusCode::CONFLICT,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists", "code": 409, "message": "exists"}),
                    );
                }
                object["metadata"]["resourceVersion"] = json!(rv);
                object["metadata"]["uid"] = json!(format!("uid-{name}"));
                store.insert(name, object.clone());
                (StatusCode::CREATED, object)
            }
            ("PUT", Some(name), None) => {
                let mut object = body;
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
                patch(object, &body);
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
            other => panic!("unexpected request {other:?} {path}"),
        }
    }
}

fn not_found(name: &str) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("{name} not found")}),
    )
}

/// Applies the patches the reconcilers send: the finalizer helper's JSON patches (add or
/// remove a finalizer) and JSON merge patches of the spec.
fn patch(object: &mut Value, body: &Value) {
    if let Some(operations) = body.as_array() {
        for operation in operations {
            let path = operation["path"].as_str().unwrap_or_default();
            match operation["op"].as_str().unwrap_or_default() {
                "test" => {}
                "add" if path == "/metadata/finalizers" => {
                    object["metadata"]["finalizers"] = operation["value"].clone();
                }
                "add" if path == "/metadata/finalizers/-" => {
                    let finalizers = object["metadata"]["finalizers"]
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
                    let finalizers = object["metadata"]["finalizers"]
                        .as_array_mut()
                        .expect("finalizers");
                    finalizers.remove(index);
                }
                other => panic!("unexpected JSON patch operation {other} {path}"),
            }
        }
    } else {
        merge(object, body);
    }
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
