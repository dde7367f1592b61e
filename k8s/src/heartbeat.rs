//! The plugin heartbeat: a `coordination.k8s.io/v1` Lease that every
//! `kubekms-plugin serve --follow NS/NAME` keeps renewed in the KmsKey's namespace. It says
//! which KmsKey kube-apiserver encrypts with through that plugin (the key is then
//! protected), which key_id the plugin serves, and under which key_id kube-apiserver last
//! had a DEK seed encrypted (its Encrypt call). The operator reads these Leases to protect
//! the key and to know when a rotation is live everywhere before it re-encrypts Secrets.
//!
//! Nothing secret is in a Lease: key ids are identifiers.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use time::OffsetDateTime;

use crate::convert::{format_time, parse_time};

/// Label naming the KmsKey (same namespace) a plugin serves.
pub const LABEL_SERVED_KEY: &str = "kubekms.io/plugin-for";
/// Annotation: the key_id the plugin answers Status with.
pub const ANNOTATION_SERVED_KEY_ID: &str = "kubekms.io/served-key-id";
/// Annotation: the key_id of kube-apiserver's latest Encrypt call (a DEK seed).
pub const ANNOTATION_SEEDED_KEY_ID: &str = "kubekms.io/seeded-key-id";
/// Annotation: the material versions the plugin holds of the key it serves,
/// `<key id>:<version>,<version>,...` (staged versions included).
pub const ANNOTATION_HELD_VERSIONS: &str = "kubekms.io/held-versions";
/// Annotation: when that Encrypt call happened (RFC 3339).
pub const ANNOTATION_SEEDED_AT: &str = "kubekms.io/seeded-at";
/// Prefix of the Lease names.
pub const LEASE_PREFIX: &str = "kubekms-plugin-";
/// How long a heartbeat counts as live without renewal.
pub const LEASE_DURATION_SECONDS: i32 = 60;
/// The field manager of the plugin's Lease writes.
pub const FIELD_MANAGER: &str = "kubekms-plugin";

/// One plugin's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The plugin instance (a node or pod name).
    pub plugin: String,
    /// The KmsKey it serves.
    pub key_name: String,
    /// The key_id it serves.
    pub served_key_id: Option<String>,
    /// The key_id of kube-apiserver's latest DEK seed, and when.
    pub seeded: Option<(String, OffsetDateTime)>,
    /// The key (id) the plugin serves and the material versions of it that it holds
    /// (staged ones included): what the operator promotes a staged version on.
    pub held: Option<(String, Vec<u32>)>,
    /// The last renewal, by the plugin's wall clock: for people only, never compared
    /// with another clock (see [`Heartbeat::is_live`]).
    pub renewed: Option<OffsetDateTime>,
    /// Seconds the Lease stays live without renewal.
    pub duration_seconds: i32,
}

/// A plugin instance name made fit for a Lease name: lower case, `[a-z0-9-.]`, at most 63.
#[must_use]
pub fn instance_name(raw: &str) -> String {
    let cleaned: String = raw
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cleaned = cleaned.trim_matches(['-', '.']);
    let mut name: String = cleaned.chars().take(63 - LEASE_PREFIX.len()).collect();
    while name.ends_with(['-', '.']) {
        name.pop();
    }
    if name.is_empty() {
        "plugin".to_owned()
    } else {
        name
    }
}

impl Heartbeat {
    /// The Lease's name.
    #[must_use]
    pub fn lease_name(&self) -> String {
        format!("{LEASE_PREFIX}{}", self.plugin)
    }

    /// Whether the heartbeat is live, given how long ago the reader last saw its Lease
    /// change, measured on the reader's own monotonic clock. `renewed` is the plugin's wall
    /// clock and is never compared with the reader's: with either clock off, a live plugin
    /// would look dead (or a dead one live). A Lease first seen counts as just changed.
    #[must_use]
    pub fn is_live(&self, since_change: std::time::Duration) -> bool {
        since_change.as_secs_f64() <= f64::from(self.duration_seconds.max(0))
    }

    /// The Lease to apply (server-side) in `namespace`, renewed at `now`.
    #[must_use]
    pub fn to_lease(&self, namespace: &str, now: OffsetDateTime) -> Lease {
        let mut annotations = BTreeMap::new();
        if let Some(id) = &self.served_key_id {
            annotations.insert(ANNOTATION_SERVED_KEY_ID.to_owned(), id.clone());
        }
        if let Some((id, versions)) = &self.held {
            annotations.insert(
                ANNOTATION_HELD_VERSIONS.to_owned(),
                format_held(id, versions),
            );
        }
        if let Some((id, at)) = &self.seeded {
            annotations.insert(ANNOTATION_SEEDED_KEY_ID.to_owned(), id.clone());
            annotations.insert(ANNOTATION_SEEDED_AT.to_owned(), format_time(*at));
        }
        Lease {
            metadata: ObjectMeta {
                name: Some(self.lease_name()),
                namespace: Some(namespace.to_owned()),
                labels: Some(BTreeMap::from([(
                    LABEL_SERVED_KEY.to_owned(),
                    self.key_name.clone(),
                )])),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.plugin.clone()),
                lease_duration_seconds: Some(self.duration_seconds),
                renew_time: Some(MicroTime(to_jiff(now))),
                ..LeaseSpec::default()
            }),
        }
    }

    /// Reads a plugin Lease; `None` for a Lease that is not one.
    #[must_use]
    pub fn from_lease(lease: &Lease) -> Option<Self> {
        let name = lease.metadata.name.as_deref()?;
        let plugin = name.strip_prefix(LEASE_PREFIX)?;
        let key_name = lease.metadata.labels.as_ref()?.get(LABEL_SERVED_KEY)?;
        let annotations = lease.metadata.annotations.clone().unwrap_or_default();
        let seeded = annotations
            .get(ANNOTATION_SEEDED_KEY_ID)
            .zip(annotations.get(ANNOTATION_SEEDED_AT))
            .and_then(|(id, at)| Some((id.clone(), parse_time("seeded-at", at).ok()?)));
        let spec = lease.spec.clone().unwrap_or_default();
        Some(Self {
            plugin: plugin.to_owned(),
            key_name: key_name.clone(),
            served_key_id: annotations.get(ANNOTATION_SERVED_KEY_ID).cloned(),
            seeded,
            held: annotations
                .get(ANNOTATION_HELD_VERSIONS)
                .and_then(|text| parse_held(text)),
            renewed: spec.renew_time.and_then(|t| from_jiff(t.0)),
            duration_seconds: spec
                .lease_duration_seconds
                .unwrap_or(LEASE_DURATION_SECONDS),
        })
    }
}

/// `<key id>:<v>,<v>,...`.
fn format_held(key_id: &str, versions: &[u32]) -> String {
    let list: Vec<String> = versions.iter().map(u32::to_string).collect();
    format!("{key_id}:{}", list.join(","))
}

/// [`format_held`]'s text; `None` when it does not parse (a Lease written by hand).
fn parse_held(text: &str) -> Option<(String, Vec<u32>)> {
    let (key_id, list) = text.split_once(':')?;
    let versions = if list.is_empty() {
        Vec::new()
    } else {
        list.split(',')
            .map(|v| v.trim().parse().ok())
            .collect::<Option<Vec<u32>>>()?
    };
    Some((key_id.to_owned(), versions))
}

fn to_jiff(t: OffsetDateTime) -> k8s_openapi::jiff::Timestamp {
    let nanos = t.unix_timestamp_nanos();
    k8s_openapi::jiff::Timestamp::from_nanosecond(nanos).unwrap_or_default()
}

fn from_jiff(t: k8s_openapi::jiff::Timestamp) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(t.as_nanosecond()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + seconds)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    #[test]
    fn a_heartbeat_round_trips_through_its_lease() {
        let beat = Heartbeat {
            plugin: instance_name("Node_A.example"),
            key_name: "apiserver-key".to_owned(),
            served_key_id: Some("k/v2".to_owned()),
            seeded: Some(("k/v2".to_owned(), at(5))),
            held: Some(("k".to_owned(), vec![1, 2, 3])),
            renewed: Some(at(10)),
            duration_seconds: LEASE_DURATION_SECONDS,
        };
        assert_eq!(beat.plugin, "node-a.example");
        let lease = beat.to_lease("kube-system", at(10));
        assert_eq!(
            lease.metadata.name.as_deref(),
            Some("kubekms-plugin-node-a.example")
        );
        assert_eq!(
            lease
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_HELD_VERSIONS))
                .map(String::as_str),
            Some("k:1,2,3")
        );
        assert_eq!(Heartbeat::from_lease(&lease), Some(beat.clone()));
        // A Lease of a plugin from before held versions were reported, or a damaged one.
        let mut older = lease.clone();
        for text in [None, Some("k:1,x"), Some("no-colon")] {
            let annotations = older.metadata.annotations.get_or_insert_default();
            match text {
                Some(t) => annotations.insert(ANNOTATION_HELD_VERSIONS.to_owned(), t.to_owned()),
                None => annotations.remove(ANNOTATION_HELD_VERSIONS),
            };
            assert_eq!(
                Heartbeat::from_lease(&older).map(|b| b.held),
                Some(None),
                "{text:?}"
            );
        }
        let seconds = std::time::Duration::from_secs;
        assert!(beat.is_live(seconds(60)));
        assert!(!beat.is_live(seconds(61)));
    }

    #[test]
    fn other_leases_are_not_heartbeats() {
        let mut lease = Lease::default();
        lease.metadata.name = Some("kubekms-operator".to_owned());
        assert_eq!(Heartbeat::from_lease(&lease), None);
        lease.metadata.name = Some("kubekms-plugin-a".to_owned());
        assert_eq!(Heartbeat::from_lease(&lease), None, "no key label");
    }

    #[test]
    fn instance_names_fit_a_lease_name() {
        assert_eq!(instance_name("---"), "plugin");
        assert_eq!(
            instance_name(&"x".repeat(100)).len(),
            63 - LEASE_PREFIX.len()
        );
        assert_eq!(instance_name("cp-1:2379"), "cp-1-2379");
    }
}
