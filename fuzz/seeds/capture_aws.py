"""Writes seed inputs for the AWS API fuzz targets from what botocore really sends.

Run with the AWS CLI/boto3 venv of hack/tools/python.sh, from the repository root:
  "$(hack/tools/python.sh --print-dir)/python" fuzz/seeds/capture_aws.py
Each request is taken from botocore's `before-send` hook (signed, nothing is sent) and
written as:
  corpus/aws_json/<op>:    "<Operation>\\n<JSON body>"
  corpus/sigv4/<op>:       the request as HTTP/1.1 text (method, path, headers, body),
                           signed with the fuzz credential (fuzz/src/lib.rs)
  corpus/sts_request/<n>:  the form body of an STS AssumeRoleWithWebIdentity
"""

import base64
import os
import pathlib

import boto3

ROOT = pathlib.Path(__file__).resolve().parent.parent / "corpus"
# The credential the sigv4 target knows (fuzz/src/lib.rs: FUZZ_ACCESS_KEY_ID).
ACCESS_KEY_ID = "AKIDKUBEKMSFUZZ0001"
SECRET = "fuzz-secret-access-key-not-secret"
KEY = "1234abcd-12ab-34cd-56ef-1234567890ab"


class Captured(Exception):
    pass


def write(target, name, data):
    folder = ROOT / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def http_text(request):
    url = request.url.split("://", 1)[1]
    path = "/" + url.split("/", 1)[1] if "/" in url else "/"
    lines = [f"{request.method} {path} HTTP/1.1"]
    for name, value in request.headers.items():
        if isinstance(value, bytes):
            value = value.decode()
        lines.append(f"{name}: {value}")
    body = request.body or b""
    if isinstance(body, str):
        body = body.encode()
    host = url.split("/", 1)[0]
    lines.insert(1, f"Host: {host}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def main():
    session = boto3.session.Session(
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )
    kms = session.client("kms", endpoint_url="http://127.0.0.1:8443")
    sts = session.client("sts", endpoint_url="http://127.0.0.1:8443")
    captured = {}

    def capture(request, **_):
        captured["request"] = request
        raise Captured()

    kms.meta.events.register("before-send.kms.*", capture)
    sts.meta.events.register("before-send.sts.*", capture)
    blob = base64.b64decode(
        "AQHhLTfZnPdJ5bFNbf0vm/8AAAABZGF0YWRhdGFkYXRhZGF0YWRhdGFkYXRhZGF0YWRhdGF"
        "ub25jZW5vbmNlbm9uY2VjaXBoZXJ0ZXh0dGFndGFndGFndGFndGFn"
    )
    calls = [
        ("Encrypt", lambda: kms.encrypt(KeyId="alias/app", Plaintext=b"hello",
                                         EncryptionContext={"app": "demo", "tier": "db"})),
        ("Decrypt", lambda: kms.decrypt(CiphertextBlob=blob, EncryptionContext={"app": "demo"})),
        ("ReEncrypt", lambda: kms.re_encrypt(CiphertextBlob=blob, DestinationKeyId=KEY)),
        ("GenerateDataKey", lambda: kms.generate_data_key(KeyId=KEY, KeySpec="AES_256")),
        ("GenerateDataKeyWithoutPlaintext",
         lambda: kms.generate_data_key_without_plaintext(KeyId=KEY, NumberOfBytes=64)),
        ("GenerateDataKeyPair",
         lambda: kms.generate_data_key_pair(KeyId=KEY, KeyPairSpec="ECC_NIST_P256")),
        ("Sign", lambda: kms.sign(KeyId=KEY, Message=b"message", MessageType="RAW",
                                   SigningAlgorithm="ECDSA_SHA_256")),
        ("Verify", lambda: kms.verify(KeyId=KEY, Message=b"m" * 32, MessageType="DIGEST",
                                       Signature=b"sig", SigningAlgorithm="RSASSA_PSS_SHA_256")),
        ("GenerateMac", lambda: kms.generate_mac(KeyId=KEY, Message=b"mac me",
                                                  MacAlgorithm="HMAC_SHA_256")),
        ("VerifyMac", lambda: kms.verify_mac(KeyId=KEY, Message=b"mac me", Mac=b"x" * 32,
                                              MacAlgorithm="HMAC_SHA_256")),
        ("GenerateRandom", lambda: kms.generate_random(NumberOfBytes=32)),
        ("GetPublicKey", lambda: kms.get_public_key(KeyId="alias/signing")),
        ("DescribeKey", lambda: kms.describe_key(KeyId=f"arn:aws:kms:us-east-1:111122223333:key/{KEY}")),
        ("ListKeys", lambda: kms.list_keys(Limit=10, Marker="next")),
        ("ListAliases", lambda: kms.list_aliases(KeyId=KEY)),
        ("CreateKey", lambda: kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC",
                                              Description="d", Tags=[{"TagKey": "a", "TagValue": "b"}])),
        ("CreateAlias", lambda: kms.create_alias(AliasName="alias/new", TargetKeyId=KEY)),
        ("EnableKeyRotation", lambda: kms.enable_key_rotation(KeyId=KEY, RotationPeriodInDays=180)),
        ("ScheduleKeyDeletion", lambda: kms.schedule_key_deletion(KeyId=KEY, PendingWindowInDays=7)),
        ("CreateGrant", lambda: kms.create_grant(
            KeyId=KEY, GranteePrincipal="system:serviceaccount:team-a:app",
            Operations=["Encrypt", "Decrypt"],
            Constraints={"EncryptionContextSubset": {"app": "demo"}})),
        ("ListGrants", lambda: kms.list_grants(KeyId=KEY)),
        ("TagResource", lambda: kms.tag_resource(KeyId=KEY, Tags=[{"TagKey": "k", "TagValue": "v"}])),
    ]
    for op, call in calls:
        try:
            call()
        except Captured:
            pass
        request = captured.pop("request")
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        write("aws_json", op, op.encode() + b"\n" + body)
        write("sigv4", op, http_text(request))

    for i, (role, token) in enumerate([
        ("arn:aws:iam::111122223333:role/kubekms/app",
         "eyJhbGciOiJSUzI1NiIsImtpZCI6ImZ1enoifQ."
         "eyJhdWQiOlsic3RzLmFtYXpvbmF3cy5jb20iXSwiZXhwIjo0MTAyNDQ0ODAwLCJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6dGVhbS1hOmFwcCJ9."
         "c2lnbmF0dXJl"),
        ("arn:aws:iam::111122223333:role/other", "not-a-jwt"),
    ]):
        try:
            sts.assume_role_with_web_identity(RoleArn=role, RoleSessionName=f"session-{i}",
                                              WebIdentityToken=token, DurationSeconds=900)
        except Captured:
            pass
        request = captured.pop("request")
        body = request.body if isinstance(request.body, bytes) else request.body.encode()
        write("sts_request", f"assume-role-{i}", body)
        if i == 0:
            write("sigv4", "AssumeRoleWithWebIdentity", http_text(request))


if __name__ == "__main__":
    main()
