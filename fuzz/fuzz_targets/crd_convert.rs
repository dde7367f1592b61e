//! The CRD spec conversion into the core (kubekms_k8s::convert): a KmsKey and its
//! KmsKeyMaterial record into KeyMetadata, the status it implies, the wrap context, and
//! the lifecycle decisions the operator takes on that metadata at a given time.
//! Input: JSON `{"key": <KmsKey>, "material": <KmsKeyMaterial>, "now": <unix seconds>}`.
//! Invariants: never a panic (a damaged record is an error); the status names the same
//! key id, state and versions as the metadata.
#![no_main]

use kms_core::key::{MAX_PENDING_WINDOW_DAYS, MIN_ROTATION_PERIOD_DAYS};
use kms_core::{ArnScope, Operation};
use kubekms_k8s::convert::{desired_state, effective_usage, metadata, status, wrap_context};
use kubekms_k8s::{KmsKey, KmsKeyMaterial};
use libfuzzer_sys::fuzz_target;
use time::OffsetDateTime;

#[derive(serde::Deserialize)]
struct Objects {
    key: KmsKey,
    material: KmsKeyMaterial,
    #[serde(default)]
    now: i64,
}

fuzz_target!(|data: &[u8]| {
    let Ok(objects) = serde_json::from_slice::<Objects>(data) else {
        return;
    };
    let spec = &objects.key.spec;
    let record = &objects.material.spec;
    let _ = effective_usage(spec);
    let state = desired_state(spec, record);
    let _ = wrap_context(record, "team-a", "app", 1);
    let Ok(mut meta) = metadata(spec, record) else {
        return;
    };
    assert_eq!(meta.state, state);
    kubekms_fuzz::trace(format_args!("converted {}", meta.key_id));
    let st = status(&meta, &ArnScope::default(), "team-a", Some(1));
    assert_eq!(st.key_id.as_deref(), Some(record.key_id.as_str()));
    assert_eq!(st.versions.len(), meta.versions.len());
    // "Now" is the operator's clock: any time of this era (the time crate's range is
    // years -9999..=9999; a clock is never near its ends).
    let now = OffsetDateTime::from_unix_timestamp(objects.now.rem_euclid(4_102_444_800))
        .expect("1970..2100");
    for op in Operation::ALL {
        let _ = meta.check(*op);
    }
    let _ = meta.automatic_rotation_due(now);
    let _ = meta.deletion_due(now);
    let mut changed = meta.clone();
    let _ = changed.enable_rotation(now, spec.rotation.as_ref().map(|r| r.period_in_days));
    let mut changed = meta.clone();
    let _ = changed.enable_rotation(now, Some(MIN_ROTATION_PERIOD_DAYS));
    let mut changed = meta.clone();
    let _ = changed.schedule_deletion(now, Some(MAX_PENDING_WINDOW_DAYS));
    let _ = meta.record_rotation(now, kms_core::RotationType::OnDemand);
});
