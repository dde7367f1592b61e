//! KMS v2 Encrypt and Decrypt as the plugin handles them: the protobuf request decoded by
//! prost (tonic's codec) and passed to the plugin's service, over the real state folder
//! of fixtures/. Input: one byte choosing the call, then the protobuf bytes.
//! Invariants: never a panic; an Encrypt answer has what kube-apiserver demands
//! (ciphertext 1..=1024 bytes, Status's key_id, FQDN annotations) and decrypts back; a
//! Decrypt that succeeds returns what was encrypted (the seeds hold real ciphertexts).
#![no_main]

use kms_plugin::pb::{DecryptRequest, EncryptRequest};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let Some((&call, bytes)) = data.split_first() else {
        return;
    };
    let plugin = &kubekms_fuzz::plugin_fixture().plugin;
    if call % 2 == 0 {
        let Ok(request) = EncryptRequest::decode(bytes) else {
            return;
        };
        let Ok(response) = plugin.encrypt(&request.plaintext) else {
            assert!(request.plaintext.is_empty() || request.plaintext.len() > 942);
            return;
        };
        assert!(!response.ciphertext.is_empty() && response.ciphertext.len() <= 1024);
        assert_eq!(response.key_id, plugin.status().key_id);
        assert!(response.annotations.keys().all(|k| k.contains('.')));
        let back = plugin
            .decrypt(&DecryptRequest {
                ciphertext: response.ciphertext,
                uid: request.uid,
                key_id: response.key_id,
                annotations: response.annotations,
            })
            .expect("what Encrypt returned decrypts");
        assert_eq!(back.expose(), request.plaintext.as_slice());
    } else {
        let Ok(request) = DecryptRequest::decode(bytes) else {
            return;
        };
        if let Ok(plaintext) = plugin.decrypt(&request) {
            kubekms_fuzz::trace(format_args!("decrypted {} bytes", plaintext.len()));
            assert!(!plaintext.is_empty());
        }
    }
});
