//! Bytes that must never be printed and are wiped when dropped.

use zeroize::{Zeroize, ZeroizeOnDrop};

/// Secret bytes: plaintext, data keys, private keys, shared secrets, serialized material.
///
/// Zeroized on drop; `Debug` prints only the length. There is deliberately no `Display`,
/// no `Serialize` and no `Clone` that could copy the secret somewhere that is not wiped:
/// `duplicate` exists for the rare place that needs a second owner, and both copies are wiped.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SecretBytes(Vec<u8>);

/// Equality in constant time for equal lengths (the length is not secret), so comparing a
/// secret with a guess never tells how many leading bytes matched.
impl PartialEq for SecretBytes {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq as _;
        bool::from(self.0.as_slice().ct_eq(other.0.as_slice()))
    }
}

impl Eq for SecretBytes {}

impl SecretBytes {
    /// Takes ownership of bytes that are secret from now on.
    #[must_use]
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// Copies a slice into a new secret buffer.
    #[must_use]
    pub fn from_slice(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }

    /// `len` zero bytes to be filled in place (for example by a RNG).
    #[must_use]
    pub fn zeroed(len: usize) -> Self {
        Self(vec![0; len])
    }

    /// The secret bytes; keep the borrow short.
    #[must_use]
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Mutable access for in-place filling.
    pub fn expose_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }

    /// Number of bytes (not secret).
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no bytes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A second owner of the same secret; both are zeroized on drop.
    #[must_use]
    pub fn duplicate(&self) -> Self {
        Self(self.0.clone())
    }

    /// Shortens the buffer, wiping what is cut off.
    pub fn truncate(&mut self, len: usize) {
        if len < self.0.len() {
            self.0[len..].zeroize();
            self.0.truncate(len);
        }
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_no_secret_byte() {
        let secret = SecretBytes::from_slice(b"hunter2-very-secret");
        let printed = format!("{secret:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("19 bytes"), "{printed}");
    }

    #[test]
    fn truncate_keeps_prefix() {
        let mut secret = SecretBytes::from_slice(&[1, 2, 3, 4]);
        secret.truncate(2);
        assert_eq!(secret.expose(), &[1, 2]);
        secret.truncate(10);
        assert_eq!(secret.len(), 2);
    }
}
