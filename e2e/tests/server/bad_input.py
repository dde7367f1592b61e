"""Bad requests, each of one class, sent raw (urllib3 over TLS with AWS_CA_BUNDLE) and
signed with botocore's own SigV4 signer where a signature is wanted, to the endpoint in
AWS_ENDPOINT_URL_KMS.

Input (stdin): {"key_arn": ..., "key_id": ..., "foreign_arn": ..., "region": ...,
                "expired": {AccessKeyId, SecretAccessKey, SessionToken},
                "wrong_audience_token": ..., "sts_token": ...}
Credentials for signed requests come from the environment (the web identity session).
Output: {"results": {case: {"status", "type", "message", "requestId", "body", "exception"}},
         "credentials": {...the session used...}}
"""

import datetime
import json
import os
import socket
import ssl
import urllib.parse
import uuid
import xml.etree.ElementTree as ET

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import urllib3

from kmsclient import emit, frozen_credentials, kms_client, read_input, session_from_env

ENDPOINT = os.environ["AWS_ENDPOINT_URL_KMS"].rstrip("/")
HTTP = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=os.environ["AWS_CA_BUNDLE"], retries=False)
JSON = "application/x-amz-json-1.1"


def send(method, body, headers, path="/"):
    try:
        reply = HTTP.request(method, ENDPOINT + path, body=body, headers=headers, timeout=30.0)
    except urllib3.exceptions.HTTPError as error:
        return {"exception": repr(error)}
    text = reply.data.decode(errors="replace")
    out = {
        "status": reply.status,
        "requestId": reply.headers.get("x-amzn-RequestId"),
        "contentType": reply.headers.get("Content-Type"),
        "body": text[:2000],
    }
    try:
        parsed = json.loads(text)
        out["type"] = parsed.get("__type")
        out["message"] = parsed.get("message") or parsed.get("Message")
    except ValueError:
        try:
            root = ET.fromstring(text)
            ns = {"sts": "https://sts.amazonaws.com/doc/2011-06-15/"}
            code = root.find(".//sts:Error/sts:Code", ns)
            message = root.find(".//sts:Error/sts:Message", ns)
            out["type"] = code.text if code is not None else None
            out["message"] = message.text if message is not None else None
        except ET.ParseError:
            pass
    return out


def send_head_first(body, headers):
    """Sends the headers and the first KiB of `body`, then reads the answer: a server that
    refuses an oversize body by its Content-Length answers before reading the rest. (A
    client that writes the whole body may see the connection closed under it instead,
    whichever comes first.)"""
    url = urllib.parse.urlsplit(ENDPOINT)
    context = ssl.create_default_context(cafile=os.environ["AWS_CA_BUNDLE"])
    with socket.create_connection((url.hostname, url.port), timeout=30) as raw:
        with context.wrap_socket(raw, server_hostname=url.hostname) as tls:
            head = f"POST / HTTP/1.1\r\nHost: {url.netloc}\r\n"
            for name, value in headers.items():
                if name.lower() not in ("host", "content-length"):
                    head += f"{name}: {value}\r\n"
            head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            tls.sendall(head.encode() + body[:1024])
            reply = b""
            while True:
                try:
                    chunk = tls.recv(65536)
                except (ssl.SSLError, OSError) as error:
                    if not reply:
                        return {"exception": repr(error)}
                    break
                if not chunk:
                    break
                reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    lines = head.decode(errors="replace").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    fields = {k.lower(): v for k, v in fields.items()}
    out = {"status": int(lines[0].split()[1]), "requestId": fields.get("x-amzn-requestid"), "body": payload.decode(errors="replace")[:2000]}
    try:
        parsed = json.loads(payload)
        out["type"] = parsed.get("__type")
        out["message"] = parsed.get("message")
    except ValueError:
        pass
    return out


def signed_headers(creds, target, body, region, service="kms", extra=None, when=None):
    headers = {"Content-Type": JSON}
    if target is not None:
        headers["X-Amz-Target"] = target
    headers.update(extra or {})
    request = botocore.awsrequest.AWSRequest(method="POST", url=ENDPOINT + "/", data=body, headers=headers)
    credentials = botocore.credentials.Credentials(
        creds["AccessKeyId"], creds["SecretAccessKey"], creds.get("SessionToken")
    )
    signer = botocore.auth.SigV4Auth(credentials, service, region)
    if when is None:
        signer.add_auth(request)
    else:
        original = botocore.auth.get_current_datetime
        botocore.auth.get_current_datetime = lambda: when
        try:
            signer.add_auth(request)
        finally:
            botocore.auth.get_current_datetime = original
    return dict(request.prepare().headers)


def main():
    spec = read_input()
    region = spec["region"]
    session = session_from_env()
    kms = kms_client(session=session)
    # A first call, so the SDK has made its session at STS.
    kms.describe_key(KeyId=spec["key_arn"])
    creds = frozen_credentials(session)
    encrypt = json.dumps({"KeyId": spec["key_arn"], "Plaintext": "aGVsbG8="}).encode()
    results = {}

    def kms_case(name, body=encrypt, target="TrentService.Encrypt", c=None, scope_region=None, **kwargs):
        headers = signed_headers(c or creds, target, body, scope_region or region, **kwargs)
        results[name] = send("POST", body, headers)

    kms_case("valid_before")
    kms_case("unknown_target", target="TrentService.NoSuchOperation")
    kms_case("management_operation", target="TrentService.CreateKey", body=b"{}")
    kms_case("missing_target", target=None)
    kms_case("malformed_json", body=b'{"KeyId": "x", "Plaintext": ')
    kms_case("not_an_object", body=b"[1, 2, 3]")
    kms_case("wrong_types", body=json.dumps({"KeyId": 5, "Plaintext": "aGVsbG8="}).encode())
    kms_case("blob_not_base64", body=json.dumps({"KeyId": spec["key_arn"], "Plaintext": "***"}).encode())
    kms_case("missing_member", body=json.dumps({"KeyId": spec["key_arn"]}).encode())
    big = json.dumps({"KeyId": spec["key_arn"], "Plaintext": "A" * (300 * 1024)}).encode()
    results["oversize_body"] = send_head_first(big, signed_headers(creds, "TrentService.Encrypt", big, region))
    kms_case("random_too_many", target="TrentService.GenerateRandom", body=b'{"NumberOfBytes": 100000}')
    kms_case("random_zero", target="TrentService.GenerateRandom", body=b'{"NumberOfBytes": 0}')
    kms_case("empty_key_id", body=json.dumps({"KeyId": "", "Plaintext": "aGVsbG8="}).encode())

    # Authentication.
    results["missing_authorization"] = send(
        "POST", encrypt, {"Content-Type": JSON, "X-Amz-Target": "TrentService.Encrypt"}
    )
    headers = signed_headers(creds, "TrentService.Encrypt", encrypt, region)
    signature = headers["Authorization"].rsplit("Signature=", 1)[1]
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    headers["Authorization"] = headers["Authorization"].replace(signature, flipped)
    results["bad_signature"] = send("POST", encrypt, headers)
    headers = signed_headers(creds, "TrentService.Encrypt", encrypt, region)
    results["body_changed_after_signing"] = send("POST", encrypt.replace(b"aGVsbG8=", b"aGVsbG9="), headers)
    headers = signed_headers(creds, "TrentService.Encrypt", encrypt, region)
    headers["X-Amz-Target"] = "TrentService.Decrypt"
    results["target_changed_after_signing"] = send("POST", encrypt, headers)
    headers = signed_headers(creds, "TrentService.Encrypt", encrypt, region)
    headers["Authorization"] = "AWS4-HMAC-SHA256 Credential=garbage"
    results["malformed_authorization"] = send("POST", encrypt, headers)
    kms_case("wrong_secret", c={**creds, "SecretAccessKey": creds["SecretAccessKey"][::-1]})
    kms_case("unknown_access_key", c={"AccessKeyId": "AKIA" + uuid.uuid4().hex[:16].upper(), "SecretAccessKey": "x" * 40})
    kms_case("other_region", scope_region="us-east-1")
    kms_case("other_service", service="s3")
    twenty_minutes_ago = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(minutes=20)
    kms_case("signed_20_minutes_ago", when=twenty_minutes_ago)
    kms_case("unsigned_payload", extra={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    forged = "kks1." + "A" * 200
    kms_case("forged_session_token", c={**creds, "SessionToken": forged})
    token = creds["SessionToken"]
    middle = len(token) // 2
    tampered = token[:middle] + ("B" if token[middle] != "B" else "C") + token[middle + 1 :]
    kms_case("tampered_session_token", c={**creds, "SessionToken": tampered})
    kms_case("session_token_of_another_key", c={**creds, "AccessKeyId": "ASIA" + uuid.uuid4().hex[:16].upper()})
    kms_case("no_session_token", c={**creds, "SessionToken": None})
    kms_case("expired_session_token", c=spec["expired"])

    # Resolution.
    def encrypt_with(key):
        return json.dumps({"KeyId": key, "Plaintext": "aGVsbG8="}).encode()

    kms_case("nonexistent_key_id", body=encrypt_with(str(uuid.uuid4())))
    kms_case("nonexistent_alias", body=encrypt_with("alias/does-not-exist-" + uuid.uuid4().hex[:8]))
    kms_case("foreign_account_arn", body=encrypt_with(spec["foreign_arn"]))
    kms_case("malformed_arn", body=encrypt_with("arn:aws:kms:nowhere"))
    kms_case("invalid_ciphertext", target="TrentService.Decrypt", body=json.dumps({"CiphertextBlob": "AQEBAQEB"}).encode())

    # Not KMS at all.
    results["get_root"] = send("GET", None, {})
    results["post_elsewhere"] = send("POST", encrypt, signed_headers(creds, "TrentService.Encrypt", encrypt, region), path="/other")

    # STS.
    def sts(name, **params):
        body = urllib.parse.urlencode(params).encode()
        results[name] = send("POST", body, {"Content-Type": "application/x-www-form-urlencoded"})

    role = "arn:aws:iam::000000000000:role/kubekms-e2e"
    sts("sts_garbage_token", Action="AssumeRoleWithWebIdentity", Version="2011-06-15", RoleArn=role, RoleSessionName="bad", WebIdentityToken="not.a.token")
    sts("sts_wrong_audience", Action="AssumeRoleWithWebIdentity", Version="2011-06-15", RoleArn=role, RoleSessionName="bad", WebIdentityToken=spec["wrong_audience_token"])
    sts("sts_unknown_action", Action="GetCallerIdentity", Version="2011-06-15")
    sts("sts_missing_action", Version="2011-06-15")
    sts("sts_session_policy", Action="AssumeRoleWithWebIdentity", Version="2011-06-15", RoleArn=role, RoleSessionName="bad", WebIdentityToken=spec["sts_token"], Policy="{}")
    sts("sts_duration_too_short", Action="AssumeRoleWithWebIdentity", Version="2011-06-15", RoleArn=role, RoleSessionName="bad", WebIdentityToken=spec["sts_token"], DurationSeconds="10")

    kms_case("valid_after")
    emit({"results": results, "credentials": creds})


if __name__ == "__main__":
    main()
