//! The ciphertext blob parser and symmetric Decrypt (kms-core blob.rs, ops.rs) with a
//! real key of three material versions. Input: one byte choosing the encryption context,
//! then the blob. Invariants: never a panic; a blob that parses has the fields it claims;
//! whatever decrypts was made by this key (the seeds) and round-trips.
#![no_main]

use kms_core::{EncryptionAlgorithm, EncryptionContext, blob, ops};
use libfuzzer_sys::fuzz_target;

fn context(choice: u8) -> EncryptionContext {
    match choice % 3 {
        0 => EncryptionContext::new(),
        1 => EncryptionContext::from_pairs([("kubekms:purpose", "kube-apiserver-kms-v2")])
            .expect("context"),
        _ => EncryptionContext::from_pairs([("app", "demo"), ("tier", "db")]).expect("context"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, blob_bytes)) = data.split_first() else {
        return;
    };
    let key = &kubekms_fuzz::plugin_fixture().key;
    if let Ok(parsed) = blob::parse(blob_bytes) {
        assert_eq!(parsed.header.len(), blob::HEADER_LEN);
        assert_eq!(
            blob::peek(blob_bytes).ok(),
            Some((parsed.key_id, parsed.material_version))
        );
        assert_eq!(
            blob::HEADER_LEN + parsed.ciphertext.len() + parsed.tag.len(),
            blob_bytes.len()
        );
    }
    let ctx = context(choice);
    let result = ops::decrypt(key, blob_bytes, &ctx, EncryptionAlgorithm::SymmetricDefault);
    let lookup = |id: &kms_core::KeyId| (*id == key.key_id()).then_some(&**key);
    let by_blob = ops::decrypt_symmetric(lookup, None, blob_bytes, &ctx);
    assert_eq!(
        result.as_ref().map(|(p, v)| (p.expose().to_vec(), *v)).ok(),
        by_blob
            .as_ref()
            .map(|(p, v)| (p.expose().to_vec(), *v))
            .ok(),
        "Decrypt with and without the key named must agree"
    );
    if let Ok((plaintext, version)) = result {
        kubekms_fuzz::trace(format_args!("decrypted version {version}"));
        assert!(key.material(version).is_some());
        let again = ops::encrypt(
            key,
            plaintext.expose(),
            &ctx,
            EncryptionAlgorithm::SymmetricDefault,
        )
        .expect("what decrypted encrypts again");
        let (back, _) = ops::decrypt(key, &again, &ctx, EncryptionAlgorithm::SymmetricDefault)
            .expect("round trip");
        assert_eq!(back.expose(), plaintext.expose());
    }
});
