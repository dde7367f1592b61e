//! KubeKMS domain core: key specs, the AWS KMS cryptographic operations, the ciphertext
//! blob, key states and lifecycle, grants and root-key wrapping.
//!
//! Pure by design: no Kubernetes, no network, no clock reads (every time is an argument)
//! and no global state. The only I/O is the file key store, which reads and creates the
//! root key file it is given.

mod names;

pub mod blob;
pub mod context;
pub mod error;
pub mod grants;
pub mod ids;
pub mod key;
pub mod keystore;
pub mod material;
pub mod ops;
pub mod primitives;
pub mod rotation;
pub mod secret;
pub mod spec;
pub mod state;

pub use context::EncryptionContext;
pub use error::{ErrorClass, KmsError, KmsResult};
pub use ids::{
    AliasName, Arn, ArnScope, KeyId, KeyIdentifier, KeyTarget, derive_account_id, is_account_id,
};
pub use key::{KeyMetadata, KmsKey, MaterialVersion};
pub use material::KeyMaterial;
pub use secret::SecretBytes;
pub use spec::{
    DataKeyPairSpec, DataKeySpec, EncryptionAlgorithm, KeyAgreementAlgorithm, KeySpec, KeyUsage,
    MacAlgorithm, MessageType, Origin, RotationType, SigningAlgorithm,
};
pub use state::{KeyState, Operation};
