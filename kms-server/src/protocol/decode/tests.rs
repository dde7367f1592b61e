use base64::Engine as _;

use super::*;
use crate::protocol::operation::ApiOperation as Op;

fn ok(op: Op, body: &str) -> KmsRequest {
    decode(op, body.as_bytes()).unwrap_or_else(|e| panic!("{op} {body}: {e}"))
}

fn err(op: Op, body: &str) -> (String, String) {
    let e = decode(op, body.as_bytes()).map(|_| ()).expect_err(body);
    (e.aws_exception_name().to_owned(), e.to_string())
}

#[test]
fn every_operation_decodes_its_members() {
    let r = ok(
        Op::Encrypt,
        r#"{"KeyId":"alias/a","Plaintext":"aGVsbG8=","EncryptionContext":{"k":"v"},"GrantTokens":["tok"],"EncryptionAlgorithm":"RSAES_OAEP_SHA_256","DryRun":true}"#,
    );
    let KmsRequest::Encrypt(e) = r else {
        panic!("encrypt")
    };
    assert_eq!(e.plaintext.expose(), b"hello");
    assert_eq!(e.encryption_context.as_map()["k"], "v");
    assert_eq!(e.grant_tokens, ["tok"]);
    assert_eq!(e.algorithm, kms_core::EncryptionAlgorithm::RsaesOaepSha256);
    assert!(e.dry_run);

    let KmsRequest::Decrypt(d) = ok(Op::Decrypt, r#"{"CiphertextBlob":"AAEC"}"#) else {
        panic!()
    };
    assert_eq!(d.ciphertext_blob.as_deref(), Some(&[0u8, 1, 2][..]));
    assert_eq!(d.key_id, None);
    assert_eq!(d.algorithm, kms_core::EncryptionAlgorithm::SymmetricDefault);
    let KmsRequest::Decrypt(d) = ok(
        Op::Decrypt,
        r#"{"KeyId":"k","DryRun":true,"DryRunModifiers":["IGNORE_CIPHERTEXT"]}"#,
    ) else {
        panic!()
    };
    assert!(d.ignore_ciphertext && d.ciphertext_blob.is_none());

    let KmsRequest::ReEncrypt(r) = ok(
        Op::ReEncrypt,
        r#"{"CiphertextBlob":"AA==","DestinationKeyId":"d","SourceKeyId":"s","SourceEncryptionContext":{"a":"1"},"DestinationEncryptionContext":{"b":"2"}}"#,
    ) else {
        panic!()
    };
    assert_eq!(
        (r.source_key_id.as_deref(), r.destination_key_id.as_str()),
        (Some("s"), "d")
    );
    assert_eq!(r.destination_encryption_context.as_map()["b"], "2");

    let KmsRequest::GenerateDataKey(g) =
        ok(Op::GenerateDataKey, r#"{"KeyId":"k","KeySpec":"AES_128"}"#)
    else {
        panic!()
    };
    assert_eq!(g.key_spec, Some(kms_core::DataKeySpec::Aes128));
    let KmsRequest::GenerateDataKeyWithoutPlaintext(g) = ok(
        Op::GenerateDataKeyWithoutPlaintext,
        r#"{"KeyId":"k","NumberOfBytes":64}"#,
    ) else {
        panic!()
    };
    assert_eq!(g.number_of_bytes, Some(64));
    let KmsRequest::GenerateDataKeyPair(p) = ok(
        Op::GenerateDataKeyPair,
        r#"{"KeyId":"k","KeyPairSpec":"RSA_3072"}"#,
    ) else {
        panic!()
    };
    assert_eq!(p.key_pair_spec, kms_core::DataKeyPairSpec::Rsa3072);
    assert!(matches!(
        ok(
            Op::GenerateDataKeyPairWithoutPlaintext,
            r#"{"KeyId":"k","KeyPairSpec":"ECC_NIST_P256"}"#
        ),
        KmsRequest::GenerateDataKeyPairWithoutPlaintext(_)
    ));
    let KmsRequest::GenerateRandom(g) = ok(Op::GenerateRandom, r#"{"NumberOfBytes":1024}"#) else {
        panic!()
    };
    assert_eq!(g.number_of_bytes, 1024);
    assert!(matches!(
        ok(Op::GetPublicKey, r#"{"KeyId":"k"}"#),
        KmsRequest::GetPublicKey(_)
    ));
    let KmsRequest::Sign(s) = ok(
        Op::Sign,
        r#"{"KeyId":"k","Message":"bWVzc2FnZQ==","SigningAlgorithm":"ECDSA_SHA_256"}"#,
    ) else {
        panic!()
    };
    assert_eq!(s.message_type, kms_core::MessageType::Raw);
    let KmsRequest::Verify(v) = ok(
        Op::Verify,
        r#"{"KeyId":"k","Message":"bQ==","MessageType":"DIGEST","Signature":"c2ln","SigningAlgorithm":"RSASSA_PSS_SHA_256"}"#,
    ) else {
        panic!()
    };
    assert_eq!(v.signature, b"sig");
    assert!(matches!(
        ok(
            Op::GenerateMac,
            r#"{"KeyId":"k","Message":"bQ==","MacAlgorithm":"HMAC_SHA_384"}"#
        ),
        KmsRequest::GenerateMac(_)
    ));
    let KmsRequest::VerifyMac(m) = ok(
        Op::VerifyMac,
        r#"{"KeyId":"k","Message":"bQ==","Mac":"bWFj","MacAlgorithm":"HMAC_SHA_224"}"#,
    ) else {
        panic!()
    };
    assert_eq!(m.mac, b"mac");
    assert!(matches!(
        ok(
            Op::DeriveSharedSecret,
            r#"{"KeyId":"k","KeyAgreementAlgorithm":"ECDH","PublicKey":"cGs="}"#
        ),
        KmsRequest::DeriveSharedSecret(_)
    ));
    assert!(matches!(
        ok(Op::DescribeKey, r#"{"KeyId":"k","GrantTokens":[]}"#),
        KmsRequest::DescribeKey(_)
    ));
    let KmsRequest::ListKeys(page) = ok(
        Op::ListKeys,
        r#"{"Limit":10,"Marker":"m","ResourceOwners":["SELF"]}"#,
    ) else {
        panic!()
    };
    assert_eq!(
        page,
        Page {
            limit: Some(10),
            marker: Some("m".to_owned())
        }
    );
    assert!(
        matches!(ok(Op::ListKeys, ""), KmsRequest::ListKeys(_)),
        "empty body is {{}}"
    );
    let KmsRequest::ListAliases(a) = ok(Op::ListAliases, r#"{"KeyId":"k"}"#) else {
        panic!()
    };
    assert_eq!(a.key_id.as_deref(), Some("k"));
    let KmsRequest::ListGrants(g) = ok(
        Op::ListGrants,
        r#"{"KeyId":"k","GrantId":"g","GranteePrincipal":"p"}"#,
    ) else {
        panic!()
    };
    assert_eq!(
        (g.grant_id.as_deref(), g.grantee_principal.as_deref()),
        (Some("g"), Some("p"))
    );
    assert!(matches!(
        ok(Op::GetKeyRotationStatus, r#"{"KeyId":"k"}"#),
        KmsRequest::GetKeyRotationStatus(_)
    ));
    let KmsRequest::ListKeyRotations(r) = ok(
        Op::ListKeyRotations,
        r#"{"KeyId":"k","IncludeKeyMaterial":"ALL_KEY_MATERIAL"}"#,
    ) else {
        panic!()
    };
    assert!(r.include_all_material);
    assert!(matches!(
        ok(Op::ListResourceTags, r#"{"KeyId":"k","Limit":5}"#),
        KmsRequest::ListResourceTags(_)
    ));
    let ignored = ok(
        Op::Encrypt,
        r#"{"KeyId":"k","Plaintext":"eA==","SomeFutureMember":{"x":[1,2]}}"#,
    );
    assert!(
        matches!(ignored, KmsRequest::Encrypt(_)),
        "unknown members are ignored"
    );
    for op in ApiOperation::ALL {
        let _ = decode(*op, b"{}");
    }
}

#[test]
fn malformed_bodies_are_serialization_exceptions() {
    for body in [
        "{",
        "[]",
        "null",
        "\"x\"",
        "{\"KeyId\":",
        "not json",
        "{\"KeyId\":\"k\"}x",
    ] {
        assert_eq!(err(Op::Encrypt, body).0, "SerializationException", "{body}");
    }
    for body in [
        r#"{"KeyId":5,"Plaintext":"eA=="}"#,
        r#"{"KeyId":"k","Plaintext":["eA=="]}"#,
        r#"{"KeyId":"k","Plaintext":"eA==","EncryptionContext":{"a":1}}"#,
        r#"{"KeyId":"k","Plaintext":"eA==","DryRun":"yes"}"#,
        r#"{"KeyId":"k","Plaintext":"eA==","GrantTokens":"t"}"#,
        r#"{"KeyId":"k","Plaintext":"!!notbase64!!"}"#,
    ] {
        let (name, message) = err(Op::Encrypt, body);
        assert_eq!(name, "SerializationException", "{body}");
        assert!(!message.contains("eA=="), "no input echoed: {message}");
    }
    assert_eq!(
        err(Op::GenerateDataKey, r#"{"KeyId":"k","NumberOfBytes":1.5}"#).0,
        "SerializationException"
    );
}

#[test]
fn model_limits_in_aws_words() {
    let (name, message) = err(Op::Encrypt, r#"{}"#);
    assert_eq!(name, "ValidationException");
    assert_eq!(
        message,
        "2 validation errors detected: Value null at 'keyId' failed to satisfy constraint: Member must not be null; Value null at 'plaintext' failed to satisfy constraint: Member must not be null"
    );
    let big = base64::engine::general_purpose::STANDARD.encode(vec![b's'; 4097]);
    let (name, message) = err(
        Op::Encrypt,
        &format!(r#"{{"KeyId":"k","Plaintext":"{big}"}}"#),
    );
    assert_eq!(name, "ValidationException");
    assert_eq!(
        message,
        "1 validation error detected: Value at 'plaintext' failed to satisfy constraint: Member must have length less than or equal to 4096"
    );
    let cases: Vec<(Op, String, &str)> = vec![
        (
            Op::Encrypt,
            r#"{"KeyId":"","Plaintext":"eA=="}"#.into(),
            "'keyId' failed to satisfy constraint: Member must have length greater than or equal to 1",
        ),
        (
            Op::Encrypt,
            format!(r#"{{"KeyId":"{}","Plaintext":"eA=="}}"#, "k".repeat(2049)),
            "less than or equal to 2048",
        ),
        (
            Op::Encrypt,
            r#"{"KeyId":"k","Plaintext":""}"#.into(),
            "'plaintext' failed to satisfy constraint: Member must have length greater than or equal to 1",
        ),
        (
            Op::Encrypt,
            r#"{"KeyId":"k","Plaintext":"eA==","EncryptionAlgorithm":"AES"}"#.into(),
            "Value 'AES' at 'encryptionAlgorithm' failed to satisfy constraint: Member must satisfy enum value set: [SYMMETRIC_DEFAULT, RSAES_OAEP_SHA_1, RSAES_OAEP_SHA_256, SM2PKE]",
        ),
        (
            Op::Encrypt,
            format!(
                r#"{{"KeyId":"k","Plaintext":"eA==","GrantTokens":[{}]}}"#,
                ["\"t\""; 11].join(",")
            ),
            "'grantTokens' failed to satisfy constraint: Member must have length less than or equal to 10",
        ),
        (
            Op::Decrypt,
            r#"{}"#.into(),
            "Value null at 'ciphertextBlob'",
        ),
        (
            Op::Decrypt,
            format!(
                r#"{{"CiphertextBlob":"{}"}}"#,
                base64::engine::general_purpose::STANDARD.encode(vec![0u8; 6145])
            ),
            "less than or equal to 6144",
        ),
        (
            Op::GenerateDataKey,
            r#"{"KeyId":"k","NumberOfBytes":0}"#.into(),
            "Value '0' at 'numberOfBytes' failed to satisfy constraint: Member must have value greater than or equal to 1",
        ),
        (
            Op::GenerateDataKey,
            r#"{"KeyId":"k","NumberOfBytes":1025}"#.into(),
            "less than or equal to 1024",
        ),
        (
            Op::GenerateRandom,
            r#"{}"#.into(),
            "Value null at 'numberOfBytes'",
        ),
        (
            Op::GenerateDataKeyPair,
            r#"{"KeyId":"k"}"#.into(),
            "Value null at 'keyPairSpec'",
        ),
        (
            Op::Sign,
            r#"{"KeyId":"k","Message":"bQ=="}"#.into(),
            "Value null at 'signingAlgorithm'",
        ),
        (
            Op::Verify,
            r#"{"KeyId":"k","Message":"bQ==","SigningAlgorithm":"ECDSA_SHA_256"}"#.into(),
            "Value null at 'signature'",
        ),
        (
            Op::VerifyMac,
            r#"{"KeyId":"k","Message":"bQ==","MacAlgorithm":"HMAC_SHA_256"}"#.into(),
            "Value null at 'mac'",
        ),
        (
            Op::DeriveSharedSecret,
            r#"{"KeyId":"k","KeyAgreementAlgorithm":"DH","PublicKey":"cGs="}"#.into(),
            "'keyAgreementAlgorithm'",
        ),
        (
            Op::ListKeys,
            r#"{"Limit":0}"#.into(),
            "Value '0' at 'limit'",
        ),
        (
            Op::ListKeys,
            r#"{"Limit":1001}"#.into(),
            "less than or equal to 1000",
        ),
        (Op::ListKeys, r#"{"Marker":""}"#.into(), "'marker'"),
        (
            Op::ListKeys,
            r#"{"Marker":"\u0100"}"#.into(),
            "regular expression pattern",
        ),
        (
            Op::ListKeys,
            r#"{"ResourceOwners":["ME"]}"#.into(),
            "'resourceOwners.1.member'",
        ),
        (Op::ListGrants, r#"{}"#.into(), "Value null at 'keyId'"),
        (
            Op::ListKeyRotations,
            r#"{"KeyId":"k","IncludeKeyMaterial":"SOME"}"#.into(),
            "'includeKeyMaterial'",
        ),
        (
            Op::Decrypt,
            r#"{"CiphertextBlob":"AA==","DryRunModifiers":["IGNORE_NOTHING"]}"#.into(),
            "'dryRunModifiers.1.member'",
        ),
    ];
    for (op, body, fragment) in cases {
        let (name, message) = err(op, &body);
        assert_eq!(name, "ValidationException", "{op} {body}: {message}");
        assert!(
            message.contains(fragment),
            "{op}: {message} lacks {fragment}"
        );
    }
    let empty_context_key = err(
        Op::Encrypt,
        r#"{"KeyId":"k","Plaintext":"eA==","EncryptionContext":{"":"v"}}"#,
    );
    assert_eq!(empty_context_key.0, "ValidationException");
    assert_eq!(
        err(
            Op::Encrypt,
            r#"{"KeyId":"k","Plaintext":"eA==","GrantTokens":["not a token!"]}"#
        )
        .0,
        "InvalidGrantTokenException"
    );
}

#[test]
fn model_values_kubekms_does_not_implement_are_unsupported() {
    for (op, body) in [
        (
            Op::Encrypt,
            r#"{"KeyId":"k","Plaintext":"eA==","EncryptionAlgorithm":"SM2PKE"}"#,
        ),
        (
            Op::GenerateDataKeyPair,
            r#"{"KeyId":"k","KeyPairSpec":"ML_KEM_768"}"#,
        ),
        (
            Op::Sign,
            r#"{"KeyId":"k","Message":"bQ==","SigningAlgorithm":"ED25519_SHA_512"}"#,
        ),
        (
            Op::Sign,
            r#"{"KeyId":"k","Message":"bQ==","MessageType":"EXTERNAL_MU","SigningAlgorithm":"ECDSA_SHA_256"}"#,
        ),
        (
            Op::Decrypt,
            r#"{"CiphertextBlob":"AA==","Recipient":{"KeyEncryptionAlgorithm":"RSAES_OAEP_SHA_256"}}"#,
        ),
        (
            Op::ListGrants,
            r#"{"KeyId":"k","GranteeServicePrincipal":"a.b.c"}"#,
        ),
    ] {
        assert_eq!(err(op, body).0, "UnsupportedOperationException", "{body}");
    }
    assert_eq!(
        err(
            Op::GenerateRandom,
            r#"{"NumberOfBytes":8,"CustomKeyStoreId":"cks-1"}"#
        )
        .0,
        "CustomKeyStoreNotFoundException"
    );
}

/// Blobs and key ids are read in place from the body: a 4 KiB plaintext is not copied
/// before it is decoded. A member written with JSON escapes (as some encoders write `/`)
/// still decodes, from a copy.
#[test]
fn string_members_are_borrowed_from_the_body_unless_escaped() {
    let body = br#"{"KeyId":"alias/a","Plaintext":"aGVsbG8="}"#;
    let wire: EncryptWire<'_> = parse(Op::Encrypt, body).expect("parse");
    assert!(matches!(wire.key_id, Some(Cow::Borrowed("alias/a"))));
    assert!(matches!(wire.plaintext, Some(Cow::Borrowed("aGVsbG8="))));
    let escaped = br#"{"KeyId":"alias\/a","Plaintext":"aGVs\u0062G8=","GrantTokens":null}"#;
    let wire: EncryptWire<'_> = parse(Op::Encrypt, escaped).expect("parse");
    assert!(matches!(wire.key_id, Some(Cow::Owned(ref k)) if k == "alias/a"));
    let KmsRequest::Encrypt(r) = decode(Op::Encrypt, escaped).expect("decode") else {
        panic!("encrypt")
    };
    assert_eq!(r.plaintext.expose(), b"hello");
    let (name, _) = err(Op::Encrypt, r#"{"KeyId":7,"Plaintext":"aGVsbG8="}"#);
    assert_eq!(name, "SerializationException");
    let (name, message) = err(Op::Encrypt, r#"{"KeyId":null,"Plaintext":"aGVsbG8="}"#);
    assert_eq!(name, "ValidationException");
    assert!(message.contains("'keyId' failed to satisfy constraint: Member must not be null"));
}
