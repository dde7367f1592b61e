"""What the kubekms-server e2e scripts share: clients configured the way a pod's SDK is
(the environment: web identity or static credentials, AWS_ENDPOINT_URL_KMS/_STS,
AWS_CA_BUNDLE), JSON in on stdin and out on stdout, and a recorder of calls with their
outcome (the reply, or the AWS error code, message and HTTP status).

The scripts gather facts; the Rust tests judge them. A script fails (non-zero exit, a
traceback) only when something other than an AWS error happens.
"""

import base64
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

import boto3
import botocore.config
from botocore.exceptions import ClientError

# One attempt per call: the tests assert what the server answered, not what a retry did.
NO_RETRIES = botocore.config.Config(retries={"total_max_attempts": 1, "mode": "standard"})


def b64(data):
    return base64.b64encode(data).decode()


def unb64(text):
    return base64.b64decode(text)


def read_input():
    return json.load(sys.stdin)


def emit(value):
    json.dump(value, sys.stdout, default=_jsonable)
    sys.stdout.write("\n")
    sys.stdout.flush()


def _jsonable(value):
    if isinstance(value, (bytes, bytearray)):
        return {"b64": b64(bytes(value))}
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    raise TypeError(f"not JSON: {type(value)}")


def decode_args(value, results):
    """Arguments from JSON: {"b64": ...} is bytes, {"text": ...} UTF-8 bytes, and
    {"ref": "step", "field": "CiphertextBlob"} a field of an earlier step's reply."""
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            return unb64(value["b64"])
        if set(value) == {"text"}:
            return value["text"].encode()
        if "ref" in value:
            reply = results[value["ref"]].get("raw")
            if reply is None:
                raise KeyError(f"step {value['ref']} has no reply to take {value['field']} from")
            return reply[value["field"]]
        return {k: decode_args(v, results) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_args(v, results) for v in value]
    return value


def session_from_env():
    """The SDK's default chain: web identity (AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN,
    STS at AWS_ENDPOINT_URL_STS) or static keys from the environment."""
    return boto3.session.Session()


def kms_client(session=None, endpoint_url=None, credentials=None):
    """A KMS client. Without arguments everything comes from the environment."""
    kwargs = {"config": NO_RETRIES}
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    if credentials:
        kwargs["aws_access_key_id"] = credentials["AccessKeyId"]
        kwargs["aws_secret_access_key"] = credentials["SecretAccessKey"]
        if credentials.get("SessionToken"):
            kwargs["aws_session_token"] = credentials["SessionToken"]
        return boto3.session.Session().client("kms", **kwargs)
    return (session or session_from_env()).client("kms", **kwargs)


def frozen_credentials(session):
    """The credentials the session's provider holds now (after a first call)."""
    creds = session.get_credentials().get_frozen_credentials()
    return {
        "AccessKeyId": creds.access_key,
        "SecretAccessKey": creds.secret_key,
        "SessionToken": creds.token,
    }


def assume_role_with_web_identity(sts_endpoint, token, session_name="e2e"):
    """STS AssumeRoleWithWebIdentity at `sts_endpoint`, unsigned, as the SDKs call it."""
    sts = boto3.session.Session().client(
        "sts",
        endpoint_url=sts_endpoint,
        config=botocore.config.Config(
            signature_version=botocore.UNSIGNED, retries={"total_max_attempts": 1}
        ),
    )
    reply = sts.assume_role_with_web_identity(
        RoleArn=os.environ.get("AWS_ROLE_ARN", "arn:aws:iam::000000000000:role/kubekms-e2e"),
        RoleSessionName=session_name,
        WebIdentityToken=token,
    )
    return reply["Credentials"]


class Calls:
    """Runs calls and records each outcome under a name."""

    def __init__(self):
        self.results = {}

    def run(self, name, call, **kwargs):
        if name in self.results:
            raise KeyError(f"step name used twice: {name}")
        started = time.monotonic()
        try:
            reply = call(**kwargs)
        except ClientError as error:
            meta = error.response.get("ResponseMetadata", {})
            err = error.response.get("Error", {})
            self.results[name] = {
                "error": err.get("Code"),
                "message": err.get("Message"),
                "status": meta.get("HTTPStatusCode"),
                "requestId": meta.get("RequestId"),
                "seconds": time.monotonic() - started,
            }
            return None
        meta = reply.pop("ResponseMetadata", {})
        self.results[name] = {
            "ok": reply,
            "raw": reply,
            "status": meta.get("HTTPStatusCode"),
            "requestId": meta.get("RequestId"),
            "seconds": time.monotonic() - started,
        }
        return reply

    def until(self, name, call, want_error, timeout, contains=None, **kwargs):
        """Repeats `call` until it fails with `want_error` (or succeeds, when want_error is
        None, with `contains` in its JSON reply when given) or `timeout` seconds pass;
        records the last outcome and the attempts."""
        deadline = time.monotonic() + timeout
        attempts = 0
        while True:
            attempts += 1
            scratch = Calls()
            scratch.run(name, call, **kwargs)
            outcome = scratch.results[name]
            done = outcome.get("error") == want_error
            if done and contains is not None:
                done = contains in json.dumps(outcome.get("ok"), default=_jsonable)
            if done or time.monotonic() > deadline:
                outcome["attempts"] = attempts
                self.results[name] = outcome
                return outcome
            time.sleep(0.2)

    def output(self):
        return {name: {k: v for k, v in r.items() if k != "raw"} for name, r in self.results.items()}


def openssl(*args, data=None):
    """Runs openssl; returns its exit code and output (stdout and stderr)."""
    proc = subprocess.run(
        ["openssl", *args], input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    return {
        "rc": proc.returncode,
        "out": proc.stdout.decode(errors="replace"),
        "err": proc.stderr.decode(errors="replace"),
        "stdout_b64": b64(proc.stdout),
    }


class Scratch:
    """A private temporary folder for files openssl reads and writes."""

    def __init__(self):
        self._dir = tempfile.TemporaryDirectory(prefix="kubekms-e2e-py-")
        self.n = 0

    def file(self, data=None, suffix=""):
        self.n += 1
        path = os.path.join(self._dir.name, f"f{self.n}{suffix}")
        if data is not None:
            with open(path, "wb") as f:
                f.write(data)
        return path

    def read(self, path):
        with open(path, "rb") as f:
            return f.read()

    def close(self):
        self._dir.cleanup()
