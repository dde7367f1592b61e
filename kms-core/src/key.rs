//! A key's metadata and lifecycle: creation, enable/disable, deletion windows, import,
//! rotation schedules and material versions. Time is always an argument.

use std::collections::BTreeMap;
use std::sync::Arc;

use time::{Duration, OffsetDateTime};

use crate::error::{KmsError, KmsResult};
use crate::ids::KeyId;
use crate::material::KeyMaterial;
use crate::spec::{KeySpec, KeyUsage, Origin, RotationType};
use crate::state::{self, KeyState, Operation};

/// Shortest deletion window AWS allows, in days.
pub const MIN_PENDING_WINDOW_DAYS: u32 = 7;
/// Longest deletion window, in days.
pub const MAX_PENDING_WINDOW_DAYS: u32 = 30;
/// Deletion window when none is given.
pub const DEFAULT_PENDING_WINDOW_DAYS: u32 = 30;
/// Shortest automatic rotation period, in days.
pub const MIN_ROTATION_PERIOD_DAYS: u32 = 90;
/// Longest automatic rotation period, in days.
pub const MAX_ROTATION_PERIOD_DAYS: u32 = 2560;
/// Rotation period when none is given.
pub const DEFAULT_ROTATION_PERIOD_DAYS: u32 = 365;
/// On-demand rotations allowed per key over its life.
pub const MAX_ON_DEMAND_ROTATIONS: u32 = 25;

/// One version of a key's material, as ListKeyRotations reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaterialVersion {
    /// 1 for the original material, then 2, 3, ... Never reused.
    pub version: u32,
    /// When the material was created (or imported).
    pub created: OffsetDateTime,
    /// How it came to be: `None` for the original material.
    pub rotation_type: Option<RotationType>,
}

/// The automatic rotation schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationSchedule {
    /// Days between automatic rotations (90..=2560).
    pub period_days: u32,
    /// When the next automatic rotation is due.
    pub next_rotation: OffsetDateTime,
}

/// Validates an automatic rotation period.
///
/// # Errors
/// `ValidationException` outside 90..=2560 days.
pub fn validate_rotation_period(days: u32) -> KmsResult<()> {
    if (MIN_ROTATION_PERIOD_DAYS..=MAX_ROTATION_PERIOD_DAYS).contains(&days) {
        Ok(())
    } else {
        Err(KmsError::Validation(format!(
            "RotationPeriodInDays must be between {MIN_ROTATION_PERIOD_DAYS} and {MAX_ROTATION_PERIOD_DAYS}, got {days}"
        )))
    }
}

/// Validates a deletion window.
///
/// # Errors
/// `ValidationException` outside 7..=30 days.
pub fn validate_pending_window(days: u32) -> KmsResult<()> {
    if (MIN_PENDING_WINDOW_DAYS..=MAX_PENDING_WINDOW_DAYS).contains(&days) {
        Ok(())
    } else {
        Err(KmsError::Validation(format!(
            "PendingWindowInDays must be between {MIN_PENDING_WINDOW_DAYS} and {MAX_PENDING_WINDOW_DAYS}, got {days}"
        )))
    }
}

fn days(n: u32) -> Duration {
    Duration::days(i64::from(n))
}

/// `n` days after `from`, or KMSInternalException past the last date `time` can hold
/// (year 9999): a damaged stored date (a record restored or edited by hand) fails the
/// operation, never the process.
fn days_after(from: OffsetDateTime, n: u32) -> KmsResult<OffsetDateTime> {
    from.checked_add(days(n)).ok_or_else(|| {
        KmsError::Internal(format!(
            "{n} days after {from} is past the last representable date"
        ))
    })
}

/// Everything about a key except its material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMetadata {
    /// The key id.
    pub key_id: KeyId,
    /// Key spec (immutable).
    pub spec: KeySpec,
    /// Key usage (immutable).
    pub usage: KeyUsage,
    /// Origin (immutable).
    pub origin: Origin,
    /// Current state.
    pub state: KeyState,
    /// Creation time.
    pub created: OffsetDateTime,
    /// Free text.
    pub description: String,
    /// Material versions, oldest first. Empty while an EXTERNAL key awaits its import.
    pub versions: Vec<MaterialVersion>,
    /// Automatic rotation, when enabled.
    pub rotation: Option<RotationSchedule>,
    /// On-demand rotations done so far.
    pub on_demand_rotations: u32,
    /// When a scheduled deletion takes effect.
    pub deletion_date: Option<OffsetDateTime>,
    /// The state the key returns to when the deletion is cancelled and material exists.
    pub state_before_deletion: Option<KeyState>,
    /// The version new ciphertexts use, when it is not the newest: the versions after it
    /// are staged (a two-step rotation, see [`crate::rotation`]), usable to decrypt but not
    /// yet to encrypt. `None`: the newest version is current.
    pub current: Option<u32>,
}

impl KeyMetadata {
    /// A new key. Generated keys start Enabled with material version 1; EXTERNAL keys start
    /// PendingImport without material.
    ///
    /// # Errors
    /// `ValidationException` for a spec/usage pair AWS does not allow, or an EXTERNAL key
    /// that is not symmetric (only symmetric material import is offered).
    pub fn new(
        key_id: KeyId,
        spec: KeySpec,
        usage: KeyUsage,
        origin: Origin,
        now: OffsetDateTime,
    ) -> KmsResult<Self> {
        spec.validate_usage(usage)?;
        if origin == Origin::External && !spec.is_symmetric() {
            return Err(KmsError::Validation(format!(
                "Origin EXTERNAL is supported only for SYMMETRIC_DEFAULT keys here, not {spec}"
            )));
        }
        let (state, versions) = match origin {
            Origin::AwsKms => (
                KeyState::Enabled,
                vec![MaterialVersion {
                    version: 1,
                    created: now,
                    rotation_type: None,
                }],
            ),
            Origin::External => (KeyState::PendingImport, Vec::new()),
        };
        Ok(Self {
            key_id,
            spec,
            usage,
            origin,
            state,
            created: now,
            description: String::new(),
            versions,
            rotation: None,
            on_demand_rotations: 0,
            deletion_date: None,
            state_before_deletion: None,
            current: None,
        })
    }

    /// Checks that `operation` is allowed in the current state.
    ///
    /// # Errors
    /// `DisabledException` or `KMSInvalidStateException`.
    pub fn check(&self, operation: Operation) -> KmsResult<()> {
        state::check(&self.key_id, self.state, operation)
    }

    /// The material version used for encryption: the pinned [`KeyMetadata::current`] when
    /// it is a listed version, else the newest.
    #[must_use]
    pub fn current_version(&self) -> Option<u32> {
        match self.current {
            Some(pinned) if self.versions.iter().any(|v| v.version == pinned) => Some(pinned),
            _ => self.versions.last().map(|v| v.version),
        }
    }

    /// The staged versions: listed after the current one, not yet used to encrypt.
    pub fn staged_versions(&self) -> impl Iterator<Item = u32> + '_ {
        let current = self.current_version().unwrap_or(0);
        self.versions
            .iter()
            .map(|v| v.version)
            .filter(move |v| *v > current)
    }

    /// Makes staged `version` current (with every version before it).
    ///
    /// # Errors
    /// `KMSInternalException` for a version that is not listed or older than the current
    /// one: the current version never moves back, or ciphertexts written under the newer
    /// one would outlive the plugins' belief that it is in use.
    pub fn promote(&mut self, version: u32) -> KmsResult<()> {
        let current = self.current_version().unwrap_or(0);
        if version < current || !self.versions.iter().any(|v| v.version == version) {
            return Err(KmsError::Internal(format!(
                "cannot make version {version} of {} current (current {current}, newest {})",
                self.key_id,
                self.versions.last().map_or(0, |v| v.version)
            )));
        }
        self.current = Some(version);
        Ok(())
    }

    /// EnableKey.
    ///
    /// # Errors
    /// `KMSInvalidStateException` unless Enabled or Disabled.
    pub fn enable(&mut self) -> KmsResult<()> {
        self.check(Operation::EnableKey)?;
        self.state = KeyState::Enabled;
        Ok(())
    }

    /// DisableKey.
    ///
    /// # Errors
    /// `KMSInvalidStateException` unless Enabled or Disabled.
    pub fn disable(&mut self) -> KmsResult<()> {
        self.check(Operation::DisableKey)?;
        self.state = KeyState::Disabled;
        Ok(())
    }

    /// ScheduleKeyDeletion: PendingDeletion until `now + window` (default 30 days).
    ///
    /// # Errors
    /// `ValidationException` for a window outside 7..=30 days; `KMSInvalidStateException`
    /// when the key is already pending deletion or still being created.
    pub fn schedule_deletion(
        &mut self,
        now: OffsetDateTime,
        window_days: Option<u32>,
    ) -> KmsResult<OffsetDateTime> {
        let window = window_days.unwrap_or(DEFAULT_PENDING_WINDOW_DAYS);
        validate_pending_window(window)?;
        self.check(Operation::ScheduleKeyDeletion)?;
        let date = days_after(now, window)?;
        self.state_before_deletion = Some(self.state);
        self.state = KeyState::PendingDeletion;
        self.deletion_date = Some(date);
        Ok(date)
    }

    /// CancelKeyDeletion: back to Disabled (PendingImport when there is no material).
    ///
    /// # Errors
    /// `KMSInvalidStateException` unless pending deletion.
    pub fn cancel_deletion(&mut self) -> KmsResult<()> {
        self.check(Operation::CancelKeyDeletion)?;
        self.state = if self.versions.is_empty() {
            KeyState::PendingImport
        } else {
            KeyState::Disabled
        };
        self.deletion_date = None;
        self.state_before_deletion = None;
        Ok(())
    }

    /// Whether the deletion window has passed, so the material may be destroyed.
    #[must_use]
    pub fn deletion_due(&self, now: OffsetDateTime) -> bool {
        self.state == KeyState::PendingDeletion && self.deletion_date.is_some_and(|d| d <= now)
    }

    /// ImportKeyMaterial for an EXTERNAL key: the first import creates version 1 and enables
    /// the key; a later import must bring the same material (the caller checks that with
    /// [`KeyMaterial::same_as`]) and re-enables a key whose material had expired.
    ///
    /// # Errors
    /// `UnsupportedOperationException` for a key not of EXTERNAL origin;
    /// `KMSInvalidStateException` when pending deletion.
    pub fn import_material(&mut self, now: OffsetDateTime) -> KmsResult<()> {
        if self.origin != Origin::External {
            return Err(KmsError::UnsupportedOperation(format!(
                "{} does not have EXTERNAL origin; its material cannot be imported",
                self.key_id
            )));
        }
        self.check(Operation::ImportKeyMaterial)?;
        if self.versions.is_empty() {
            self.versions.push(MaterialVersion {
                version: 1,
                created: now,
                rotation_type: None,
            });
        }
        if self.state == KeyState::PendingImport {
            self.state = KeyState::Enabled;
        }
        Ok(())
    }

    fn check_rotatable(&self, operation: Operation) -> KmsResult<()> {
        self.check(operation)?;
        if !self.spec.is_symmetric() || self.origin != Origin::AwsKms {
            return Err(KmsError::UnsupportedOperation(format!(
                "{} is {} with origin {}: only symmetric keys with generated material rotate",
                self.key_id, self.spec, self.origin
            )));
        }
        Ok(())
    }

    /// EnableKeyRotation with a period (default 365 days). Turning it on schedules the next
    /// rotation `period` after now; changing the period of an enabled schedule counts from
    /// the last rotation (or creation), and a date already past means "due now".
    ///
    /// # Errors
    /// `ValidationException` for a period outside 90..=2560; `UnsupportedOperationException`
    /// for asymmetric, HMAC or imported keys; state errors as AWS.
    pub fn enable_rotation(
        &mut self,
        now: OffsetDateTime,
        period_days: Option<u32>,
    ) -> KmsResult<()> {
        let period = period_days.unwrap_or(DEFAULT_ROTATION_PERIOD_DAYS);
        validate_rotation_period(period)?;
        self.check_rotatable(Operation::EnableKeyRotation)?;
        let next_rotation = match self.rotation {
            Some(current) if current.period_days == period => current.next_rotation,
            Some(_) => days_after(self.last_rotation_or_creation(), period)?,
            None => days_after(now, period)?,
        };
        self.rotation = Some(RotationSchedule {
            period_days: period,
            next_rotation,
        });
        Ok(())
    }

    /// DisableKeyRotation.
    ///
    /// # Errors
    /// `UnsupportedOperationException` for keys that never rotate; state errors as AWS.
    pub fn disable_rotation(&mut self) -> KmsResult<()> {
        self.check_rotatable(Operation::DisableKeyRotation)?;
        self.rotation = None;
        Ok(())
    }

    fn last_rotation_or_creation(&self) -> OffsetDateTime {
        self.versions.last().map_or(self.created, |v| v.created)
    }

    /// Whether an automatic rotation is due. A disabled key does not rotate; when it is
    /// enabled again after its date, the rotation is due at once.
    #[must_use]
    pub fn automatic_rotation_due(&self, now: OffsetDateTime) -> bool {
        self.state == KeyState::Enabled && self.rotation.is_some_and(|r| r.next_rotation <= now)
    }

    /// Records a new material version. AUTOMATIC rotations restart the schedule from `now`,
    /// so after downtime a missed rotation happens once, not once per missed period.
    /// ON_DEMAND rotations leave the schedule alone and count against the limit of 25.
    ///
    /// # Errors
    /// `LimitExceededException` after 25 on-demand rotations; `UnsupportedOperationException`
    /// for keys that never rotate; state errors as AWS.
    pub fn record_rotation(
        &mut self,
        now: OffsetDateTime,
        rotation_type: RotationType,
    ) -> KmsResult<u32> {
        self.check_rotatable(Operation::RotateKeyOnDemand)?;
        match rotation_type {
            RotationType::OnDemand => {
                if self.on_demand_rotations >= MAX_ON_DEMAND_ROTATIONS {
                    return Err(KmsError::LimitExceeded(format!(
                        "{} has reached the limit of {MAX_ON_DEMAND_ROTATIONS} on-demand rotations",
                        self.key_id
                    )));
                }
                self.on_demand_rotations += 1;
            }
            RotationType::Automatic => {
                let schedule = self.rotation.as_mut().ok_or_else(|| {
                    KmsError::UnsupportedOperation(format!(
                        "automatic rotation is off for {}",
                        self.key_id
                    ))
                })?;
                schedule.next_rotation = days_after(now, schedule.period_days)?;
            }
        }
        let version = self.versions.last().map_or(1, |v| v.version + 1);
        self.versions.push(MaterialVersion {
            version,
            created: now,
            rotation_type: Some(rotation_type),
        });
        if self.current.is_some() {
            self.current = Some(version);
        }
        Ok(version)
    }

    /// As [`KeyMetadata::record_rotation`], but the new version is staged: the current
    /// version stays what it was until [`KeyMetadata::promote`] (the first step of a
    /// two-step rotation, see [`crate::rotation`]).
    ///
    /// # Errors
    /// As [`KeyMetadata::record_rotation`]; nothing changes on error.
    pub fn stage_rotation(
        &mut self,
        now: OffsetDateTime,
        rotation_type: RotationType,
    ) -> KmsResult<u32> {
        let current = self.current_version();
        let version = self.record_rotation(now, rotation_type)?;
        self.current = current;
        Ok(version)
    }
}

/// A key with its usable material versions. The material is shared (`Arc`): a key whose
/// metadata changes (a state change, a new description) is rebuilt around the same parsed
/// material with [`KmsKey::with_metadata`], so nothing is unwrapped or parsed again, and
/// cloning a key is cheap.
#[derive(Debug, Clone)]
pub struct KmsKey {
    /// Metadata and lifecycle.
    pub metadata: KeyMetadata,
    materials: BTreeMap<u32, Arc<KeyMaterial>>,
}

impl KmsKey {
    /// Pairs metadata with material. Every version in `materials` must be listed in the
    /// metadata, and the current version must be present (a key without material is
    /// valid only while PendingImport).
    ///
    /// # Errors
    /// `KMSInternalException` when material and metadata disagree.
    pub fn new(metadata: KeyMetadata, materials: BTreeMap<u32, KeyMaterial>) -> KmsResult<Self> {
        Self::from_shared(
            metadata,
            materials
                .into_iter()
                .map(|(version, material)| (version, Arc::new(material)))
                .collect(),
        )
    }

    /// As [`KmsKey::new`], with material that other keys may share.
    ///
    /// # Errors
    /// `KMSInternalException` when material and metadata disagree.
    pub fn from_shared(
        metadata: KeyMetadata,
        materials: BTreeMap<u32, Arc<KeyMaterial>>,
    ) -> KmsResult<Self> {
        let listed = |v: &u32| metadata.versions.iter().any(|m| m.version == *v);
        if let Some(bad) = materials.keys().find(|v| !listed(v)) {
            return Err(KmsError::Internal(format!(
                "material version {bad} of {} is not listed in its metadata",
                metadata.key_id
            )));
        }
        if let Some((version, material)) = materials.iter().find(|(_, m)| m.spec() != metadata.spec)
        {
            return Err(KmsError::Internal(format!(
                "material version {version} of {} is {}, the key is {}",
                metadata.key_id,
                material.spec(),
                metadata.spec
            )));
        }
        if let Some(current) = metadata.current_version()
            && !materials.contains_key(&current)
        {
            return Err(KmsError::Internal(format!(
                "current material version {current} of {} is missing",
                metadata.key_id
            )));
        }
        Ok(Self {
            metadata,
            materials,
        })
    }

    /// Generates a new key with material version 1.
    ///
    /// # Errors
    /// As [`KeyMetadata::new`] and [`KeyMaterial::generate`].
    pub fn generate(
        key_id: KeyId,
        spec: KeySpec,
        usage: KeyUsage,
        now: OffsetDateTime,
    ) -> KmsResult<Self> {
        let metadata = KeyMetadata::new(key_id, spec, usage, Origin::AwsKms, now)?;
        let material = KeyMaterial::generate(spec)?;
        Self::new(metadata, BTreeMap::from([(1, material)]))
    }

    /// The same material under other metadata (a new state, description, version list
    /// of the same key), checked as [`KmsKey::new`] checks.
    ///
    /// # Errors
    /// `KMSInternalException` when the material does not fit the metadata.
    pub fn with_metadata(&self, metadata: KeyMetadata) -> KmsResult<Self> {
        Self::from_shared(metadata, self.materials.clone())
    }

    /// Every retained version's material, shared.
    #[must_use]
    pub fn shared_materials(&self) -> &BTreeMap<u32, Arc<KeyMaterial>> {
        &self.materials
    }

    /// The key id.
    #[must_use]
    pub fn key_id(&self) -> KeyId {
        self.metadata.key_id
    }

    /// The material used for new ciphertexts, signatures and MACs.
    ///
    /// # Errors
    /// `KMSInvalidStateException` when the key has no material.
    pub fn current_material(&self) -> KmsResult<(u32, &KeyMaterial)> {
        self.metadata
            .current_version()
            .and_then(|v| self.materials.get(&v).map(|m| (v, m.as_ref())))
            .ok_or_else(|| {
                KmsError::InvalidState(format!("{} has no key material", self.metadata.key_id))
            })
    }

    /// The material of one version.
    #[must_use]
    pub fn material(&self, version: u32) -> Option<&KeyMaterial> {
        self.materials.get(&version).map(AsRef::as_ref)
    }

    /// Retained material versions.
    pub fn material_versions(&self) -> impl Iterator<Item = u32> + '_ {
        self.materials.keys().copied()
    }

    /// Rotates now: new material, recorded as the current version.
    ///
    /// # Errors
    /// As [`KeyMetadata::record_rotation`].
    pub fn rotate(&mut self, now: OffsetDateTime, rotation_type: RotationType) -> KmsResult<u32> {
        let material = KeyMaterial::generate(self.metadata.spec)?;
        let mut metadata = self.metadata.clone();
        let version = metadata.record_rotation(now, rotation_type)?;
        self.metadata = metadata;
        self.materials.insert(version, Arc::new(material));
        Ok(version)
    }

    /// Adds one version's material (for example after unwrapping it).
    ///
    /// # Errors
    /// `KMSInternalException` when the version is not listed or the spec differs.
    pub fn insert_material(&mut self, version: u32, material: KeyMaterial) -> KmsResult<()> {
        if !self.metadata.versions.iter().any(|v| v.version == version)
            || material.spec() != self.metadata.spec
        {
            return Err(KmsError::Internal(format!(
                "material version {version} does not belong to {}",
                self.metadata.key_id
            )));
        }
        self.materials.insert(version, Arc::new(material));
        Ok(())
    }

    /// ImportKeyMaterial: the first import sets version 1; a re-import must be identical.
    ///
    /// # Errors
    /// `IncorrectKeyMaterialException` for different material on re-import; otherwise as
    /// [`KeyMetadata::import_material`].
    pub fn import_material(&mut self, now: OffsetDateTime, material: KeyMaterial) -> KmsResult<()> {
        if material.spec() != self.metadata.spec {
            return Err(KmsError::IncorrectKeyMaterial(format!(
                "the imported material is {}, the key is {}",
                material.spec(),
                self.metadata.spec
            )));
        }
        if let Some(existing) = self.materials.get(&1)
            && !existing.same_as(&material)
        {
            return Err(KmsError::IncorrectKeyMaterial(format!(
                "{} already has different key material; re-import must bring the same bytes",
                self.metadata.key_id
            )));
        }
        self.metadata.import_material(now)?;
        self.materials.insert(1, Arc::new(material));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);

    // Found by the crd_convert fuzz target's review (docs/reliability.md): a record whose
    // last version was created at the end of year 9999, and a changed rotation period,
    // made `last + period` overflow and panic (an operator or server crash on one damaged
    // KmsKeyMaterial).
    #[test]
    fn dates_past_the_calendar_end_are_errors_not_panics() {
        let far = datetime!(9999-12-31 23:59:59 UTC);
        let mut key = symmetric();
        key.enable_rotation(T0, Some(365)).expect("rotation on");
        key.versions[0].created = far;
        let before = key.clone();
        let err = key
            .enable_rotation(T0, Some(90))
            .expect_err("a next date past year 9999");
        assert_eq!(err.aws_exception_name(), "KMSInternalException");
        assert_eq!(key, before, "nothing changed");
        assert!(key.schedule_deletion(far, Some(7)).is_err());
        assert!(key.record_rotation(far, RotationType::Automatic).is_err());
        assert_eq!(key.state, KeyState::Enabled);
    }

    fn symmetric() -> KeyMetadata {
        KeyMetadata::new(
            KeyId::single_from_random([3; 16]),
            KeySpec::SymmetricDefault,
            KeyUsage::EncryptDecrypt,
            Origin::AwsKms,
            T0,
        )
        .expect("metadata")
    }

    #[test]
    fn deletion_window_and_cancel() {
        let mut key = symmetric();
        assert_eq!(
            key.schedule_deletion(T0, Some(6))
                .map_err(|e| e.aws_exception_name()),
            Err("ValidationException")
        );
        assert_eq!(
            key.schedule_deletion(T0, Some(31))
                .map_err(|e| e.aws_exception_name()),
            Err("ValidationException")
        );
        let date = key.schedule_deletion(T0, None).expect("schedule");
        assert_eq!(date, T0 + Duration::days(30));
        assert_eq!(key.state, KeyState::PendingDeletion);
        assert!(!key.deletion_due(T0 + Duration::days(29)));
        assert!(key.deletion_due(T0 + Duration::days(30)));
        assert_eq!(
            key.schedule_deletion(T0, None)
                .map_err(|e| e.aws_exception_name()),
            Err("KMSInvalidStateException")
        );
        key.cancel_deletion().expect("cancel");
        assert_eq!(key.state, KeyState::Disabled);
        assert_eq!(key.deletion_date, None);
        assert_eq!(
            key.cancel_deletion().map_err(|e| e.aws_exception_name()),
            Err("KMSInvalidStateException")
        );
    }

    #[test]
    fn a_year_of_rotations_and_a_missed_one() {
        let mut key = symmetric();
        key.enable_rotation(T0, Some(90)).expect("enable");
        let mut now = T0;
        let mut rotations = 0;
        for _ in 0..365 {
            now += Duration::days(1);
            if key.automatic_rotation_due(now) {
                key.record_rotation(now, RotationType::Automatic)
                    .expect("rotate");
                rotations += 1;
            }
        }
        assert_eq!(rotations, 4, "days 90, 180, 270, 360");
        assert_eq!(key.current_version(), Some(5));
        // Downtime of three periods: one rotation, then the schedule restarts from then.
        now += Duration::days(300);
        assert!(key.automatic_rotation_due(now));
        key.record_rotation(now, RotationType::Automatic)
            .expect("rotate");
        assert!(!key.automatic_rotation_due(now + Duration::days(89)));
        assert!(key.automatic_rotation_due(now + Duration::days(90)));
    }

    #[test]
    fn rotation_limits_and_unsupported_keys() {
        let mut key = symmetric();
        assert_eq!(
            key.enable_rotation(T0, Some(89))
                .map_err(|e| e.aws_exception_name()),
            Err("ValidationException")
        );
        assert_eq!(
            key.enable_rotation(T0, Some(2561))
                .map_err(|e| e.aws_exception_name()),
            Err("ValidationException")
        );
        for _ in 0..MAX_ON_DEMAND_ROTATIONS {
            key.record_rotation(T0, RotationType::OnDemand)
                .expect("on demand");
        }
        assert_eq!(
            key.record_rotation(T0, RotationType::OnDemand)
                .map_err(|e| e.aws_exception_name()),
            Err("LimitExceededException")
        );
        assert_eq!(key.versions.len(), 26);
        let mut rsa = KeyMetadata::new(
            KeyId::single_from_random([4; 16]),
            KeySpec::Rsa2048,
            KeyUsage::SignVerify,
            Origin::AwsKms,
            T0,
        )
        .expect("rsa");
        assert_eq!(
            rsa.enable_rotation(T0, None)
                .map_err(|e| e.aws_exception_name()),
            Err("UnsupportedOperationException")
        );
        rsa.disable().expect("disable");
        assert_eq!(
            rsa.enable_rotation(T0, None)
                .map_err(|e| e.aws_exception_name()),
            Err("DisabledException")
        );
    }

    #[test]
    fn period_change_counts_from_last_rotation() {
        let mut key = symmetric();
        key.enable_rotation(T0, Some(365)).expect("enable");
        key.enable_rotation(T0 + Duration::days(100), Some(90))
            .expect("change");
        assert!(
            key.automatic_rotation_due(T0 + Duration::days(100)),
            "date already past: due now"
        );
    }

    #[test]
    fn external_keys_wait_for_import() {
        let mut key = KeyMetadata::new(
            KeyId::single_from_random([5; 16]),
            KeySpec::SymmetricDefault,
            KeyUsage::EncryptDecrypt,
            Origin::External,
            T0,
        )
        .expect("external");
        assert_eq!(key.state, KeyState::PendingImport);
        assert_eq!(
            key.enable().map_err(|e| e.aws_exception_name()),
            Err("KMSInvalidStateException")
        );
        key.import_material(T0).expect("import");
        assert_eq!(key.state, KeyState::Enabled);
        assert_eq!(key.current_version(), Some(1));
        assert_eq!(
            symmetric()
                .import_material(T0)
                .map_err(|e| e.aws_exception_name()),
            Err("UnsupportedOperationException")
        );
    }

    #[test]
    fn new_metadata_shares_the_material_and_is_checked() {
        let mut key = KmsKey::generate(
            KeyId::single_from_random([6; 16]),
            KeySpec::SymmetricDefault,
            KeyUsage::EncryptDecrypt,
            T0,
        )
        .expect("key");
        key.rotate(T0, RotationType::OnDemand).expect("rotate");
        let mut metadata = key.metadata.clone();
        metadata.state = KeyState::Disabled;
        let disabled = key.with_metadata(metadata).expect("same versions");
        assert_eq!(disabled.metadata.state, KeyState::Disabled);
        for version in [1, 2] {
            assert!(Arc::ptr_eq(
                &key.shared_materials()[&version],
                &disabled.shared_materials()[&version]
            ));
        }
        let mut shorter = key.metadata.clone();
        shorter.versions.pop();
        assert!(
            key.with_metadata(shorter).is_err(),
            "version 2 is not listed in the new metadata"
        );
    }
}
