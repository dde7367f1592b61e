"""Every operation of issue 9 through boto3, on a key of every spec with every algorithm it
allows, with openssl checking what can be checked outside the server (signatures, RSA-OAEP
ciphertexts it made, ECDH shared secrets, data key pairs).

Input (stdin): {"keys": [{"name", "arn", "keyId", "spec", "usage"}, ...],
                "alias": "alias/...", "aliasTarget": "<name of the key it names>",
                "context": {...}, "marker": "<text unique to this run>"}
Output: {"results": {step: outcome}, "openssl": {check: {rc, out, err, stdout_b64}},
         "inputs": {name: b64 bytes}, "algorithms": {key name: [algorithms exercised]}}
"""

import hashlib

from kmsclient import Calls, Scratch, b64, emit, kms_client, openssl, read_input, unb64

HASHES = {"SHA_256": "sha256", "SHA_384": "sha384", "SHA_512": "sha512"}
PAIR_SPECS = [
    "RSA_2048",
    "RSA_3072",
    "RSA_4096",
    "ECC_NIST_P256",
    "ECC_NIST_P384",
    "ECC_NIST_P521",
    "ECC_SECG_P256K1",
]
CURVES = {"ECC_NIST_P256": "P-256", "ECC_NIST_P384": "P-384", "ECC_NIST_P521": "P-521"}


def main():
    spec = read_input()
    kms = kms_client()
    calls = Calls()
    run = calls.run
    checks = {}
    inputs = {}
    exercised = {}
    tmp = Scratch()
    marker = spec["marker"]
    context = spec["context"]
    keys = {k["name"]: k for k in spec["keys"]}

    def value(step, field):
        reply = calls.results[step].get("raw")
        return None if reply is None else reply.get(field)

    def public_pem(name):
        der = value(f"{name}.get_public_key", "PublicKey")
        if der is None:
            return None
        pem = tmp.file(suffix=".pem")
        checks[f"{name}.public_pem"] = openssl(
            "pkey", "-pubin", "-inform", "DER", "-in", tmp.file(der), "-out", pem
        )
        return pem

    # ------------------------------------------------------------ symmetric
    sym = keys["sym"]["arn"]
    sym2 = keys["sym2"]["arn"]
    plaintext = f"{marker}-encrypt-plaintext".encode()
    inputs["plaintext"] = b64(plaintext)
    run("sym.encrypt", kms.encrypt, KeyId=sym, Plaintext=plaintext, EncryptionContext=context)
    blob = value("sym.encrypt", "CiphertextBlob")
    run("sym.decrypt.without_key_id", kms.decrypt, CiphertextBlob=blob, EncryptionContext=context)
    run("sym.decrypt.by_arn", kms.decrypt, KeyId=sym, CiphertextBlob=blob, EncryptionContext=context)
    run(
        "sym.decrypt.by_key_id",
        kms.decrypt,
        KeyId=keys["sym"]["keyId"],
        CiphertextBlob=blob,
        EncryptionContext=context,
    )
    run("sym.decrypt.by_alias", kms.decrypt, KeyId=spec["alias"], CiphertextBlob=blob, EncryptionContext=context)
    run(
        "sym.decrypt.wrong_context",
        kms.decrypt,
        CiphertextBlob=blob,
        EncryptionContext={**context, "purpose": "another"},
    )
    run("sym.decrypt.no_context", kms.decrypt, CiphertextBlob=blob)
    run("sym.decrypt.other_key", kms.decrypt, KeyId=sym2, CiphertextBlob=blob, EncryptionContext=context)
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    run("sym.decrypt.tampered", kms.decrypt, CiphertextBlob=bytes(tampered), EncryptionContext=context)
    run("sym.encrypt.by_alias", kms.encrypt, KeyId=spec["alias"], Plaintext=plaintext)
    run("sym.encrypt.by_key_id", kms.encrypt, KeyId=keys["sym"]["keyId"], Plaintext=plaintext)
    run("sym.encrypt.explicit_algorithm", kms.encrypt, KeyId=sym, Plaintext=plaintext, EncryptionAlgorithm="SYMMETRIC_DEFAULT")
    run("sym.encrypt.rsa_algorithm", kms.encrypt, KeyId=sym, Plaintext=plaintext, EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    run("sym.encrypt.max_plaintext", kms.encrypt, KeyId=sym, Plaintext=b"m" * 4096)
    run("sym.encrypt.over_max_plaintext", kms.encrypt, KeyId=sym, Plaintext=b"m" * 4097)

    # ReEncrypt: symmetric → symmetric with a new context, → RSA, and back.
    new_context = {"purpose": "re-encrypted", "run": marker}
    run(
        "reencrypt.sym_to_sym",
        kms.re_encrypt,
        CiphertextBlob=blob,
        SourceEncryptionContext=context,
        DestinationKeyId=sym2,
        DestinationEncryptionContext=new_context,
    )
    run(
        "reencrypt.sym_to_sym.decrypt",
        kms.decrypt,
        CiphertextBlob=value("reencrypt.sym_to_sym", "CiphertextBlob"),
        EncryptionContext=new_context,
    )
    rsa_enc = keys["rsa_2048_enc"]["arn"]
    run(
        "reencrypt.sym_to_rsa",
        kms.re_encrypt,
        CiphertextBlob=blob,
        SourceEncryptionContext=context,
        DestinationKeyId=rsa_enc,
        DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_256",
    )
    rsa_blob = value("reencrypt.sym_to_rsa", "CiphertextBlob")
    run(
        "reencrypt.sym_to_rsa.decrypt",
        kms.decrypt,
        KeyId=rsa_enc,
        CiphertextBlob=rsa_blob,
        EncryptionAlgorithm="RSAES_OAEP_SHA_256",
    )
    run(
        "reencrypt.rsa_to_sym",
        kms.re_encrypt,
        CiphertextBlob=rsa_blob,
        SourceKeyId=rsa_enc,
        SourceEncryptionAlgorithm="RSAES_OAEP_SHA_256",
        DestinationKeyId=sym,
        DestinationEncryptionContext=new_context,
    )
    run(
        "reencrypt.rsa_to_sym.decrypt",
        kms.decrypt,
        CiphertextBlob=value("reencrypt.rsa_to_sym", "CiphertextBlob"),
        EncryptionContext=new_context,
    )
    run("reencrypt.wrong_source_context", kms.re_encrypt, CiphertextBlob=blob, DestinationKeyId=sym2)

    # Data keys.
    for name, args in [
        ("aes_256", {"KeySpec": "AES_256"}),
        ("aes_128", {"KeySpec": "AES_128"}),
        ("bytes_64", {"NumberOfBytes": 64}),
        ("bytes_1", {"NumberOfBytes": 1}),
        ("bytes_1024", {"NumberOfBytes": 1024}),
    ]:
        run(f"gdk.{name}", kms.generate_data_key, KeyId=sym, EncryptionContext=context, **args)
        run(
            f"gdk.{name}.decrypt",
            kms.decrypt,
            CiphertextBlob=value(f"gdk.{name}", "CiphertextBlob"),
            EncryptionContext=context,
        )
    run("gdk.both_specs", kms.generate_data_key, KeyId=sym, KeySpec="AES_256", NumberOfBytes=32)
    run("gdk.neither_spec", kms.generate_data_key, KeyId=sym)
    run("gdk.bytes_1025", kms.generate_data_key, KeyId=sym, NumberOfBytes=1025)
    run("gdk.on_rsa_key", kms.generate_data_key, KeyId=rsa_enc, KeySpec="AES_256")
    for name, args in [("aes_256", {"KeySpec": "AES_256"}), ("bytes_48", {"NumberOfBytes": 48})]:
        run(f"gdkwp.{name}", kms.generate_data_key_without_plaintext, KeyId=sym, EncryptionContext=context, **args)
        run(
            f"gdkwp.{name}.decrypt",
            kms.decrypt,
            CiphertextBlob=value(f"gdkwp.{name}", "CiphertextBlob"),
            EncryptionContext=context,
        )

    # Data key pairs: the private key decrypts from its blob, and its public half is the
    # PublicKey returned.
    for pair in PAIR_SPECS:
        for variant, call in [
            ("gdkp", kms.generate_data_key_pair),
            ("gdkpwp", kms.generate_data_key_pair_without_plaintext),
        ]:
            step = f"{variant}.{pair}"
            run(step, call, KeyId=sym, KeyPairSpec=pair, EncryptionContext=context)
            if calls.results[step].get("raw") is None:
                continue
            run(
                f"{step}.decrypt",
                kms.decrypt,
                CiphertextBlob=value(step, "PrivateKeyCiphertextBlob"),
                EncryptionContext=context,
            )
            private_der = value(f"{step}.decrypt", "Plaintext")
            if private_der is not None:
                checks[f"{step}.public_of_private"] = openssl(
                    "pkey", "-inform", "DER", "-in", tmp.file(private_der), "-pubout", "-outform", "DER"
                )

    # Random bytes.
    for n in [1, 32, 1024]:
        run(f"random.{n}", kms.generate_random, NumberOfBytes=n)
    run("random.1025", kms.generate_random, NumberOfBytes=1025)
    run("random.custom_key_store", kms.generate_random, NumberOfBytes=8, CustomKeyStoreId="cks-1234567890abcdef0")

    # Metadata operations.
    run("describe.by_arn", kms.describe_key, KeyId=sym)
    run("describe.by_key_id", kms.describe_key, KeyId=keys["sym"]["keyId"])
    run("describe.by_alias", kms.describe_key, KeyId=spec["alias"])
    run("describe.by_alias_arn", kms.describe_key, KeyId=spec["aliasArn"])
    pages = 0
    marker_ = None
    while pages < 100:
        args = {"Limit": 2}
        if marker_:
            args["Marker"] = marker_
        reply = run(f"list_keys.page{pages}", kms.list_keys, **args)
        pages += 1
        if not reply or not reply.get("Truncated"):
            break
        marker_ = reply["NextMarker"]
    run("list_keys.bad_marker", kms.list_keys, Marker="not-a-marker-this-server-issued")
    run("list_aliases", kms.list_aliases)
    run("list_aliases.for_key", kms.list_aliases, KeyId=sym)
    run("list_grants", kms.list_grants, KeyId=sym)
    run("rotation_status", kms.get_key_rotation_status, KeyId=sym)
    run("list_key_rotations", kms.list_key_rotations, KeyId=sym)
    run("rotation_status.rsa", kms.get_key_rotation_status, KeyId=rsa_enc)
    run("list_resource_tags", kms.list_resource_tags, KeyId=sym)

    # ------------------------------------------------------------ every key
    for key in spec["keys"]:
        name, arn, usage = key["name"], key["arn"], key["usage"]
        run(f"{name}.describe", kms.describe_key, KeyId=arn)
        if key["spec"] != "SYMMETRIC_DEFAULT" and not key["spec"].startswith("HMAC"):
            run(f"{name}.get_public_key", kms.get_public_key, KeyId=arn)
        metadata = value(f"{name}.describe", "KeyMetadata") or {}

        if usage == "ENCRYPT_DECRYPT" and key["spec"].startswith("RSA"):
            pem = public_pem(name)
            algorithms = metadata.get("EncryptionAlgorithms", [])
            exercised[name] = algorithms
            for alg in algorithms:
                md = "sha1" if alg.endswith("SHA_1") else "sha256"
                secret = f"{marker}-{name}-{alg}".encode()
                inputs[f"{name}.{alg}"] = b64(secret)
                run(f"{name}.{alg}.encrypt", kms.encrypt, KeyId=arn, Plaintext=secret, EncryptionAlgorithm=alg)
                run(
                    f"{name}.{alg}.decrypt",
                    kms.decrypt,
                    KeyId=arn,
                    CiphertextBlob=value(f"{name}.{alg}.encrypt", "CiphertextBlob"),
                    EncryptionAlgorithm=alg,
                )
                # A ciphertext made by openssl with the public key decrypts through the API.
                out = tmp.file()
                checks[f"{name}.{alg}.openssl_encrypt"] = openssl(
                    "pkeyutl", "-encrypt", "-pubin", "-inkey", pem, "-in", tmp.file(secret), "-out", out,
                    "-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", f"rsa_oaep_md:{md}",
                    "-pkeyopt", f"rsa_mgf1_md:{md}",
                )
                run(
                    f"{name}.{alg}.decrypt_openssl",
                    kms.decrypt,
                    KeyId=arn,
                    CiphertextBlob=tmp.read(out),
                    EncryptionAlgorithm=alg,
                )
            run(f"{name}.decrypt.without_key_id", kms.decrypt, CiphertextBlob=value(f"{name}.RSAES_OAEP_SHA_1.encrypt", "CiphertextBlob") or b"x" * 256, EncryptionAlgorithm="RSAES_OAEP_SHA_1")
            run(f"{name}.encrypt.no_algorithm", kms.encrypt, KeyId=arn, Plaintext=b"x")
            run(f"{name}.sign", kms.sign, KeyId=arn, Message=b"x", SigningAlgorithm="RSASSA_PSS_SHA_256")

        if usage == "SIGN_VERIFY":
            pem = public_pem(name)
            algorithms = metadata.get("SigningAlgorithms", [])
            exercised[name] = algorithms
            for alg in algorithms:
                digest_name = HASHES[alg[-7:]]
                message = f"{marker}-{name}-{alg}-message".encode()
                inputs[f"{name}.{alg}"] = b64(message)
                digest = hashlib.new(digest_name, message).digest()
                rsa_opts = []
                if alg.startswith("RSASSA_PSS"):
                    rsa_opts = ["rsa_padding_mode:pss", "rsa_pss_saltlen:digest"]
                # RAW: the server hashes.
                step = f"{name}.{alg}.raw"
                run(f"{step}.sign", kms.sign, KeyId=arn, Message=message, MessageType="RAW", SigningAlgorithm=alg)
                signature = value(f"{step}.sign", "Signature")
                if signature is None:
                    continue
                run(f"{step}.verify", kms.verify, KeyId=arn, Message=message, MessageType="RAW", Signature=signature, SigningAlgorithm=alg)
                sig_file = tmp.file(signature)
                msg_file = tmp.file(message)
                dgst = ["dgst", f"-{digest_name}", "-verify", pem, "-signature", sig_file]
                for opt in rsa_opts:
                    dgst += ["-sigopt", opt]
                checks[f"{step}.openssl"] = openssl(*dgst, msg_file)
                # The same signature over another message: openssl must refuse it too.
                checks[f"{step}.openssl_other_message"] = openssl(*dgst, tmp.file(message + b"!"))
                bad = bytearray(signature)
                bad[len(bad) // 2] ^= 0x10
                run(f"{step}.verify_tampered", kms.verify, KeyId=arn, Message=message, MessageType="RAW", Signature=bytes(bad), SigningAlgorithm=alg)
                # DIGEST: the caller hashes.
                step = f"{name}.{alg}.digest"
                run(f"{step}.sign", kms.sign, KeyId=arn, Message=digest, MessageType="DIGEST", SigningAlgorithm=alg)
                signature = value(f"{step}.sign", "Signature")
                if signature is None:
                    continue
                run(f"{step}.verify", kms.verify, KeyId=arn, Message=digest, MessageType="DIGEST", Signature=signature, SigningAlgorithm=alg)
                run(f"{step}.verify_as_raw", kms.verify, KeyId=arn, Message=message, MessageType="RAW", Signature=signature, SigningAlgorithm=alg)
                pkeyutl = ["pkeyutl", "-verify", "-pubin", "-inkey", pem, "-in", tmp.file(digest), "-sigfile", tmp.file(signature), "-pkeyopt", f"digest:{digest_name}"]
                for opt in rsa_opts:
                    pkeyutl += ["-pkeyopt", opt]
                checks[f"{step}.openssl"] = openssl(*pkeyutl)
                run(f"{step}.sign_wrong_length", kms.sign, KeyId=arn, Message=digest[:-1], MessageType="DIGEST", SigningAlgorithm=alg)
            run(f"{name}.encrypt", kms.encrypt, KeyId=arn, Plaintext=b"x")
            wrong = "ECDSA_SHA_256" if key["spec"].startswith("RSA") else "RSASSA_PSS_SHA_256"
            run(f"{name}.sign.wrong_algorithm", kms.sign, KeyId=arn, Message=b"x", SigningAlgorithm=wrong)

        if usage == "KEY_AGREEMENT":
            pem = public_pem(name)
            exercised[name] = metadata.get("KeyAgreementAlgorithms", [])
            ours = tmp.file(suffix=".pem")
            checks[f"{name}.genpkey"] = openssl("genpkey", "-algorithm", "EC", "-pkeyopt", f"ec_paramgen_curve:{CURVES[key['spec']]}", "-out", ours)
            our_public = openssl("pkey", "-in", ours, "-pubout", "-outform", "DER")
            our_der = unb64(our_public["stdout_b64"])
            run(f"{name}.derive", kms.derive_shared_secret, KeyId=arn, KeyAgreementAlgorithm="ECDH", PublicKey=our_der)
            checks[f"{name}.openssl_derive"] = openssl("pkeyutl", "-derive", "-inkey", ours, "-peerkey", pem)
            other_curve = "P-384" if key["spec"] != "ECC_NIST_P384" else "P-256"
            wrong = tmp.file(suffix=".pem")
            openssl("genpkey", "-algorithm", "EC", "-pkeyopt", f"ec_paramgen_curve:{other_curve}", "-out", wrong)
            wrong_der = unb64(openssl("pkey", "-in", wrong, "-pubout", "-outform", "DER")["stdout_b64"])
            run(f"{name}.derive.other_curve", kms.derive_shared_secret, KeyId=arn, KeyAgreementAlgorithm="ECDH", PublicKey=wrong_der)
            run(f"{name}.sign", kms.sign, KeyId=arn, Message=b"x", SigningAlgorithm="ECDSA_SHA_256")

        if usage == "GENERATE_VERIFY_MAC":
            algorithms = metadata.get("MacAlgorithms", [])
            exercised[name] = algorithms
            for alg in algorithms:
                message = f"{marker}-{name}-{alg}-mac-message".encode()
                inputs[f"{name}.{alg}"] = b64(message)
                run(f"{name}.{alg}.generate", kms.generate_mac, KeyId=arn, Message=message, MacAlgorithm=alg)
                mac = value(f"{name}.{alg}.generate", "Mac")
                if mac is None:
                    continue
                run(f"{name}.{alg}.verify", kms.verify_mac, KeyId=arn, Message=message, MacAlgorithm=alg, Mac=mac)
                bad = bytearray(mac)
                bad[0] ^= 1
                run(f"{name}.{alg}.verify_tampered", kms.verify_mac, KeyId=arn, Message=message, MacAlgorithm=alg, Mac=bytes(bad))
                run(f"{name}.{alg}.verify_other_message", kms.verify_mac, KeyId=arn, Message=message + b"!", MacAlgorithm=alg, Mac=mac)
            other = "HMAC_SHA_512" if key["spec"] != "HMAC_512" else "HMAC_SHA_256"
            run(f"{name}.generate.wrong_algorithm", kms.generate_mac, KeyId=arn, Message=b"x", MacAlgorithm=other)
            run(f"{name}.encrypt", kms.encrypt, KeyId=arn, Plaintext=b"x")
            run(f"{name}.rotation_status", kms.get_key_rotation_status, KeyId=arn)

    # ------------------------------------------------------------ DryRun
    ecc = keys["ecc_nist_p256_sign"]["arn"]
    hmac = keys["hmac_256"]["arn"]
    agree = keys["ecc_nist_p256_agree"]["arn"]
    p256_signature = value("ecc_nist_p256_sign.ECDSA_SHA_256.raw.sign", "Signature") or b"x"
    p256_message = f"{marker}-ecc_nist_p256_sign-ECDSA_SHA_256-message".encode()
    hmac_mac = value("hmac_256.HMAC_SHA_256.generate", "Mac") or b"x"
    hmac_message = f"{marker}-hmac_256-HMAC_SHA_256-mac-message".encode()
    dry = [
        ("encrypt", kms.encrypt, {"KeyId": sym, "Plaintext": plaintext, "EncryptionContext": context}),
        ("decrypt", kms.decrypt, {"CiphertextBlob": blob, "EncryptionContext": context}),
        ("reencrypt", kms.re_encrypt, {"CiphertextBlob": blob, "SourceEncryptionContext": context, "DestinationKeyId": sym2}),
        ("generate_data_key", kms.generate_data_key, {"KeyId": sym, "KeySpec": "AES_256"}),
        ("generate_data_key_without_plaintext", kms.generate_data_key_without_plaintext, {"KeyId": sym, "KeySpec": "AES_256"}),
        ("generate_data_key_pair", kms.generate_data_key_pair, {"KeyId": sym, "KeyPairSpec": "ECC_NIST_P256"}),
        ("generate_data_key_pair_without_plaintext", kms.generate_data_key_pair_without_plaintext, {"KeyId": sym, "KeyPairSpec": "ECC_NIST_P256"}),
        ("sign", kms.sign, {"KeyId": ecc, "Message": p256_message, "SigningAlgorithm": "ECDSA_SHA_256"}),
        ("verify", kms.verify, {"KeyId": ecc, "Message": p256_message, "Signature": p256_signature, "SigningAlgorithm": "ECDSA_SHA_256"}),
        ("generate_mac", kms.generate_mac, {"KeyId": hmac, "Message": hmac_message, "MacAlgorithm": "HMAC_SHA_256"}),
        ("verify_mac", kms.verify_mac, {"KeyId": hmac, "Message": hmac_message, "Mac": hmac_mac, "MacAlgorithm": "HMAC_SHA_256"}),
    ]
    for name, call, args in dry:
        run(f"dry_run.{name}", call, DryRun=True, **args)
    # The peer: the key's own public key, a valid point of its curve.
    peer = value("ecc_nist_p256_agree.get_public_key", "PublicKey") or b"x"
    run("dry_run.derive_shared_secret", kms.derive_shared_secret, KeyId=agree, KeyAgreementAlgorithm="ECDH", PublicKey=peer, DryRun=True)
    # DryRun still runs the checks: a wrong key usage is that error, not DryRunOperation.
    run("dry_run.encrypt_with_hmac_key", kms.encrypt, KeyId=hmac, Plaintext=b"x", DryRun=True)
    run("dry_run.decrypt_wrong_context", kms.decrypt, CiphertextBlob=blob, EncryptionContext={"no": "match"}, DryRun=True)

    tmp.close()
    emit({"results": calls.output(), "openssl": checks, "inputs": inputs, "algorithms": exercised})


if __name__ == "__main__":
    main()
