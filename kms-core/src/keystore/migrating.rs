//! Moving a cluster from one root key store to another (a root key file to a PKCS#11
//! token): [`MigratingKeyStore`] holds the new store (primary) and the old ones
//! (previous). It wraps only under the primary and unwraps each piece of material with the
//! store that wrapped it, so every component keeps working while the operator rewraps the
//! records one by one ([`rewrap`]), and after, when the previous store is gone.

use std::sync::Arc;

use subtle::ConstantTimeEq as _;

use super::{DerivedKeyPurpose, FINGERPRINT_LEN, RootKeyStore, WRAP_FORMAT_V1, WrapContext};
use crate::error::{KmsError, KmsResult};
use crate::secret::SecretBytes;

/// The root key id that wrapped material carries in its header (hex of the fingerprint),
/// `None` when the bytes are too short to have one. Format 1 carries the legacy id.
#[must_use]
pub fn wrapped_root_key_id(wrapped: &[u8]) -> Option<String> {
    let fingerprint = wrapped.get(1..=FINGERPRINT_LEN)?;
    Some(fingerprint.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `wrapped` is material wrapped by `store` in the format it writes today: the
/// header names `store`'s root key id, and the format is not 1 (which names the legacy
/// id). Material that passes needs no rewrap to move to `store`.
#[must_use]
pub fn wrapped_by(store: &dyn RootKeyStore, wrapped: &[u8]) -> bool {
    wrapped
        .first()
        .is_some_and(|format| *format != WRAP_FORMAT_V1)
        && wrapped_root_key_id(wrapped).is_some_and(|id| id == store.root_key_id())
}

/// A primary root key store and the stores it replaces.
pub struct MigratingKeyStore {
    primary: Arc<dyn RootKeyStore>,
    previous: Vec<Arc<dyn RootKeyStore>>,
}

impl std::fmt::Debug for MigratingKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigratingKeyStore")
            .field("primary", &self.primary.root_key_id())
            .field(
                "previous",
                &self
                    .previous
                    .iter()
                    .map(|s| s.root_key_id())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl MigratingKeyStore {
    /// `primary` wraps; `previous` only unwrap what they wrapped.
    ///
    /// # Errors
    /// `ValidationException` when a previous store holds the primary's root key (the same
    /// store twice: nothing to migrate, and a sign of a configuration mistake).
    pub fn new(
        primary: Arc<dyn RootKeyStore>,
        previous: Vec<Arc<dyn RootKeyStore>>,
    ) -> KmsResult<Self> {
        let id = primary.root_key_id();
        if previous.iter().any(|p| p.holds(&id)) {
            return Err(KmsError::Validation(format!(
                "the previous root key is the primary root key {id}: give the old root key as previous"
            )));
        }
        Ok(Self { primary, previous })
    }

    /// The store that wraps.
    #[must_use]
    pub fn primary(&self) -> &Arc<dyn RootKeyStore> {
        &self.primary
    }

    /// The root key ids of the previous stores.
    #[must_use]
    pub fn previous_root_key_ids(&self) -> Vec<String> {
        self.previous.iter().map(|p| p.root_key_id()).collect()
    }

    /// The store whose root key id `wrapped` names, if this one holds it.
    fn store_of(&self, wrapped: &[u8]) -> Option<&Arc<dyn RootKeyStore>> {
        let id = wrapped_root_key_id(wrapped)?;
        std::iter::once(&self.primary)
            .chain(self.previous.iter())
            .find(|store| store.holds(&id))
    }
}

impl RootKeyStore for MigratingKeyStore {
    fn root_key_id(&self) -> String {
        self.primary.root_key_id()
    }

    fn holds(&self, root_key_id: &str) -> bool {
        self.primary.holds(root_key_id) || self.previous.iter().any(|p| p.holds(root_key_id))
    }

    fn wrap(&self, context: &WrapContext, material: &SecretBytes) -> KmsResult<Vec<u8>> {
        self.primary.wrap(context, material)
    }

    fn unwrap(&self, context: &WrapContext, wrapped: &[u8]) -> KmsResult<SecretBytes> {
        // Unknown header: the primary's own error says what is wrong with it.
        self.store_of(wrapped)
            .unwrap_or(&self.primary)
            .unwrap(context, wrapped)
    }

    /// The primary's: grant ids and tokens and STS session keys are those of the new root
    /// key from the moment it is primary (docs/hsm.md, "Migrating").
    fn derive_key(&self, purpose: DerivedKeyPurpose) -> KmsResult<SecretBytes> {
        self.primary.derive_key(purpose)
    }
}

/// Moves one piece of wrapped material to `to`: unwraps it with `from` (which may be a
/// [`MigratingKeyStore`]), wraps it under `to`, and returns the new bytes only after they
/// unwrap under `to` to the same plaintext (constant-time comparison). Material already
/// wrapped by `to` comes back unchanged.
///
/// # Errors
/// The stores' errors; `KMSInternalException` when the rewrapped material does not read
/// back the same (nothing must be written then).
pub fn rewrap(
    from: &dyn RootKeyStore,
    to: &dyn RootKeyStore,
    context: &WrapContext,
    wrapped: &[u8],
) -> KmsResult<Vec<u8>> {
    if wrapped_by(to, wrapped) {
        return Ok(wrapped.to_vec());
    }
    let material = from.unwrap(context, wrapped)?;
    let rewrapped = to.wrap(context, &material)?;
    let check = to.unwrap(context, &rewrapped)?;
    if !bool::from(check.expose().ct_eq(material.expose())) {
        return Err(KmsError::Internal(format!(
            "material of {} version {} rewrapped under root key {} does not unwrap to the same bytes",
            context.key_id,
            context.version,
            to.root_key_id()
        )));
    }
    Ok(rewrapped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::KeyId;
    use crate::keystore::KeyOwner;
    use crate::keystore::test_util::old_and_new_file_stores;
    use crate::spec::{KeySpec, KeyUsage, Origin};

    fn context(version: u32) -> WrapContext {
        WrapContext {
            key_id: KeyId::single_from_random([7; 16]),
            version,
            spec: KeySpec::SymmetricDefault,
            usage: KeyUsage::EncryptDecrypt,
            origin: Origin::AwsKms,
            owner: Some(KeyOwner::new("ns", "k")),
        }
    }

    #[test]
    fn wraps_under_the_primary_and_unwraps_under_either() {
        let (_dir, old, new) = old_and_new_file_stores();
        let both = MigratingKeyStore::new(new.clone(), vec![old.clone()]).expect("both");
        let material = SecretBytes::from_slice(&[5; 32]);
        let under_old = old.wrap(&context(1), &material).expect("wrap");
        let under_both = both.wrap(&context(2), &material).expect("wrap");
        assert_eq!(both.root_key_id(), new.root_key_id());
        assert!(both.holds(&old.root_key_id()) && both.holds(&new.root_key_id()));
        assert!(wrapped_by(&*new, &under_both), "wraps under the primary");
        assert!(!wrapped_by(&*new, &under_old));
        for (version, wrapped) in [(1, &under_old), (2, &under_both)] {
            let back = both.unwrap(&context(version), wrapped).expect("unwrap");
            assert_eq!(back.expose(), material.expose());
        }
        // Another context still fails authentication through the migrating store.
        assert!(matches!(
            both.unwrap(&context(2), &under_old),
            Err(KmsError::Internal(_))
        ));
        // The new store alone does not read the old material.
        assert!(matches!(
            new.unwrap(&context(1), &under_old),
            Err(KmsError::KeyUnavailable(_))
        ));
        assert!(MigratingKeyStore::new(new.clone(), vec![new]).is_err());
    }

    #[test]
    fn rewrap_moves_material_to_the_new_store_and_verifies_it() {
        let (_dir, old, new) = old_and_new_file_stores();
        let both = MigratingKeyStore::new(new.clone(), vec![old.clone()]).expect("both");
        let material = SecretBytes::from_slice(&[9; 48]);
        let under_old = old.wrap(&context(3), &material).expect("wrap");
        let moved = rewrap(&both, &*new, &context(3), &under_old).expect("rewrap");
        assert!(wrapped_by(&*new, &moved));
        assert_eq!(
            new.unwrap(&context(3), &moved).expect("unwrap").expose(),
            material.expose()
        );
        // Already moved: the same bytes back, no new wrap.
        assert_eq!(
            rewrap(&both, &*new, &context(3), &moved).expect("again"),
            moved
        );
        // Tampered material is refused, never rewrapped.
        let mut bad = under_old.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(rewrap(&both, &*new, &context(3), &bad).is_err());
    }

    /// A store whose unwrap returns other bytes than were wrapped: rewrap must refuse.
    struct Lying(Arc<dyn RootKeyStore>);
    impl RootKeyStore for Lying {
        fn root_key_id(&self) -> String {
            self.0.root_key_id()
        }
        fn wrap(&self, c: &WrapContext, m: &SecretBytes) -> KmsResult<Vec<u8>> {
            self.0.wrap(c, m)
        }
        fn unwrap(&self, c: &WrapContext, w: &[u8]) -> KmsResult<SecretBytes> {
            let mut out = self.0.unwrap(c, w)?;
            out.expose_mut()[0] ^= 1;
            Ok(out)
        }
        fn derive_key(&self, p: DerivedKeyPurpose) -> KmsResult<SecretBytes> {
            self.0.derive_key(p)
        }
    }

    #[test]
    fn rewrap_refuses_material_that_does_not_read_back_the_same() {
        let (_dir, old, new) = old_and_new_file_stores();
        let material = SecretBytes::from_slice(&[1; 32]);
        let under_old = old.wrap(&context(1), &material).expect("wrap");
        let lying = Lying(new);
        assert!(matches!(
            rewrap(&*old, &lying, &context(1), &under_old),
            Err(KmsError::Internal(_))
        ));
    }
}
