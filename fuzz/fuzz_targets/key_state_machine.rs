//! A stateful target: sequences of lifecycle operations on one key (kms-core key.rs
//! `KeyMetadata`, state.rs `check`), each compared with an oracle written here from the
//! documented state table (docs/reliability.md, "The key state oracle"), not from the
//! code: the state and error after each step, the material versions, the deletion date,
//! the rotation schedule, and whether a rotation or a deletion is due.
#![no_main]

use arbitrary::Arbitrary;
use kms_core::key::KeyMetadata;
use kms_core::state::{self, KeyState, Operation};
use kms_core::{KeyId, KeySpec, KeyUsage, Origin, RotationType};
use libfuzzer_sys::fuzz_target;
use time::{Duration, OffsetDateTime};

#[derive(Arbitrary, Debug)]
enum Step {
    Enable,
    Disable,
    ScheduleDeletion(Option<u8>),
    CancelDeletion,
    ImportMaterial,
    EnableRotation(Option<u16>),
    DisableRotation,
    RotateOnDemand,
    RotateAutomatically,
    AdvanceHours(u16),
    /// `KeyMetadata::check` of operation n in the key's state.
    Check(u8),
    /// `state::check` of any state and operation, Creating and Unavailable included.
    CheckAny(u8, u8),
}

#[derive(Arbitrary, Debug)]
struct Scenario {
    spec: u8,
    usage: u8,
    external: bool,
    start_seconds: u32,
    steps: Vec<Step>,
}

/// The documented table: what `operation` gives in `state` ("ok", or AWS's exception).
/// Columns: Creating, Enabled, Disabled, PendingDeletion, PendingImport, Unavailable.
fn table(state: KeyState, operation: Operation) -> &'static str {
    use Operation as O;
    const OK: &str = "ok";
    const DIS: &str = "DisabledException";
    const INV: &str = "KMSInvalidStateException";
    let row: [&str; 6] = match operation {
        O::Encrypt
        | O::Decrypt
        | O::ReEncryptFrom
        | O::ReEncryptTo
        | O::GenerateDataKey
        | O::GenerateDataKeyWithoutPlaintext
        | O::GenerateDataKeyPair
        | O::GenerateDataKeyPairWithoutPlaintext
        | O::Sign
        | O::Verify
        | O::GenerateMac
        | O::VerifyMac
        | O::DeriveSharedSecret
        | O::GetPublicKey => [INV, OK, DIS, INV, INV, INV],
        O::DescribeKey => [OK, OK, OK, OK, OK, OK],
        O::ManageGrants
        | O::UpdateKeyAttributes
        | O::ListKeyRotations
        | O::GetKeyRotationStatus => [INV, OK, OK, OK, OK, OK],
        O::EnableKey | O::DisableKey => [INV, OK, OK, INV, INV, INV],
        O::ScheduleKeyDeletion => [INV, OK, OK, INV, OK, OK],
        O::CancelKeyDeletion => [INV, INV, INV, OK, INV, INV],
        O::EnableKeyRotation | O::DisableKeyRotation | O::RotateKeyOnDemand => {
            [INV, OK, DIS, INV, INV, INV]
        }
        O::ImportKeyMaterial | O::GetParametersForImport => [INV, OK, OK, INV, OK, INV],
        O::CreateAlias | O::CreateGrant => [INV, OK, OK, INV, OK, OK],
    };
    let column = match state {
        KeyState::Creating => 0,
        KeyState::Enabled => 1,
        KeyState::Disabled => 2,
        KeyState::PendingDeletion => 3,
        KeyState::PendingImport => 4,
        KeyState::Unavailable => 5,
    };
    row[column]
}

/// The oracle's key.
#[derive(Debug)]
struct Model {
    state: KeyState,
    created: OffsetDateTime,
    versions: Vec<OffsetDateTime>,
    on_demand: u32,
    rotation: Option<(u32, OffsetDateTime)>,
    deletion: Option<OffsetDateTime>,
    rotatable: bool,
    external: bool,
}

fn name<T>(result: &Result<T, kms_core::KmsError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) => e.aws_exception_name(),
    }
}

fn days(n: u32) -> Duration {
    Duration::days(i64::from(n))
}

impl Model {
    /// The expected outcome of a step, applied to the model when it succeeds.
    fn apply(&mut self, step: &Step, now: OffsetDateTime) -> &'static str {
        let allowed = |m: &Self, op| table(m.state, op);
        match step {
            Step::Enable | Step::Disable => {
                let r = allowed(self, Operation::EnableKey);
                if r == "ok" {
                    self.state = if matches!(step, Step::Enable) {
                        KeyState::Enabled
                    } else {
                        KeyState::Disabled
                    };
                }
                r
            }
            Step::ScheduleDeletion(window) => {
                let window = window.map_or(30, u32::from);
                if !(7..=30).contains(&window) {
                    return "ValidationException";
                }
                let r = allowed(self, Operation::ScheduleKeyDeletion);
                if r == "ok" {
                    self.state = KeyState::PendingDeletion;
                    self.deletion = Some(now + days(window));
                }
                r
            }
            Step::CancelDeletion => {
                let r = allowed(self, Operation::CancelKeyDeletion);
                if r == "ok" {
                    self.state = if self.versions.is_empty() {
                        KeyState::PendingImport
                    } else {
                        KeyState::Disabled
                    };
                    self.deletion = None;
                }
                r
            }
            Step::ImportMaterial => {
                if !self.external {
                    return "UnsupportedOperationException";
                }
                let r = allowed(self, Operation::ImportKeyMaterial);
                if r == "ok" {
                    if self.versions.is_empty() {
                        self.versions.push(now);
                    }
                    if self.state == KeyState::PendingImport {
                        self.state = KeyState::Enabled;
                    }
                }
                r
            }
            Step::EnableRotation(period) => {
                let period = period.map_or(365, u32::from);
                if !(90..=2560).contains(&period) {
                    return "ValidationException";
                }
                let r = allowed(self, Operation::EnableKeyRotation);
                if r != "ok" {
                    return r;
                }
                if !self.rotatable {
                    return "UnsupportedOperationException";
                }
                let last = self.versions.last().copied().unwrap_or(self.created);
                let next = match self.rotation {
                    Some((p, next)) if p == period => next,
                    Some(_) => last + days(period),
                    None => now + days(period),
                };
                self.rotation = Some((period, next));
                "ok"
            }
            Step::DisableRotation => {
                let r = allowed(self, Operation::DisableKeyRotation);
                if r != "ok" {
                    return r;
                }
                if !self.rotatable {
                    return "UnsupportedOperationException";
                }
                self.rotation = None;
                "ok"
            }
            Step::RotateOnDemand | Step::RotateAutomatically => {
                let r = allowed(self, Operation::RotateKeyOnDemand);
                if r != "ok" {
                    return r;
                }
                if !self.rotatable {
                    return "UnsupportedOperationException";
                }
                if matches!(step, Step::RotateOnDemand) {
                    if self.on_demand >= 25 {
                        return "LimitExceededException";
                    }
                    self.on_demand += 1;
                } else {
                    let Some((period, _)) = self.rotation else {
                        return "UnsupportedOperationException";
                    };
                    self.rotation = Some((period, now + days(period)));
                }
                self.versions.push(now);
                "ok"
            }
            Step::AdvanceHours(_) | Step::Check(_) | Step::CheckAny(..) => "ok",
        }
    }
}

fn run(key: &mut KeyMetadata, step: &Step, now: OffsetDateTime) -> &'static str {
    match step {
        Step::Enable => name(&key.enable()),
        Step::Disable => name(&key.disable()),
        Step::ScheduleDeletion(w) => name(&key.schedule_deletion(now, w.map(u32::from))),
        Step::CancelDeletion => name(&key.cancel_deletion()),
        Step::ImportMaterial => name(&key.import_material(now)),
        Step::EnableRotation(p) => name(&key.enable_rotation(now, p.map(u32::from))),
        Step::DisableRotation => name(&key.disable_rotation()),
        Step::RotateOnDemand => name(&key.record_rotation(now, RotationType::OnDemand)),
        Step::RotateAutomatically => name(&key.record_rotation(now, RotationType::Automatic)),
        Step::AdvanceHours(_) | Step::Check(_) | Step::CheckAny(..) => "ok",
    }
}

fuzz_target!(|scenario: Scenario| {
    let spec = KeySpec::ALL[usize::from(scenario.spec) % KeySpec::ALL.len()];
    let usage = KeyUsage::ALL[usize::from(scenario.usage) % KeyUsage::ALL.len()];
    let origin = if scenario.external {
        Origin::External
    } else {
        Origin::AwsKms
    };
    let mut now = time::macros::datetime!(2026-01-01 0:00 UTC)
        + Duration::seconds(i64::from(scenario.start_seconds));
    let id = KeyId::single_from_random([9; 16]);
    let Ok(mut key) = KeyMetadata::new(id, spec, usage, origin, now) else {
        return;
    };
    let mut model = Model {
        state: if scenario.external {
            KeyState::PendingImport
        } else {
            KeyState::Enabled
        },
        created: now,
        versions: if scenario.external { vec![] } else { vec![now] },
        on_demand: 0,
        rotation: None,
        deletion: None,
        rotatable: spec == KeySpec::SymmetricDefault && !scenario.external,
        external: scenario.external,
    };
    for step in scenario.steps.iter().take(64) {
        match step {
            Step::AdvanceHours(h) => now += Duration::hours(i64::from(*h)),
            Step::Check(op) => {
                let op = Operation::ALL[usize::from(*op) % Operation::ALL.len()];
                assert_eq!(
                    name(&key.check(op)),
                    table(model.state, op),
                    "{op} in {}",
                    model.state
                );
            }
            Step::CheckAny(s, op) => {
                let st = KeyState::ALL[usize::from(*s) % KeyState::ALL.len()];
                let op = Operation::ALL[usize::from(*op) % Operation::ALL.len()];
                assert_eq!(
                    name(&state::check(&id, st, op)),
                    table(st, op),
                    "{op} in {st}"
                );
            }
            _ => {
                let expected = model.apply(step, now);
                let got = run(&mut key, step, now);
                assert_eq!(got, expected, "{step:?} in {model:?}");
            }
        }
        assert_eq!(key.state, model.state, "after {step:?}");
        assert_eq!(key.deletion_date, model.deletion, "after {step:?}");
        assert_eq!(
            key.rotation.map(|r| (r.period_days, r.next_rotation)),
            model.rotation,
            "after {step:?}"
        );
        assert_eq!(key.on_demand_rotations, model.on_demand);
        let versions: Vec<(u32, OffsetDateTime)> = key
            .versions
            .iter()
            .map(|v| (v.version, v.created))
            .collect();
        let expected: Vec<(u32, OffsetDateTime)> =
            (1..).zip(model.versions.iter().copied()).collect();
        assert_eq!(versions, expected, "versions after {step:?}");
        assert_eq!(
            key.automatic_rotation_due(now),
            model.state == KeyState::Enabled && model.rotation.is_some_and(|(_, n)| n <= now)
        );
        assert_eq!(
            key.deletion_due(now),
            model.state == KeyState::PendingDeletion && model.deletion.is_some_and(|d| d <= now)
        );
    }
});
