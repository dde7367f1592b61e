"""Runs a list of KMS calls through boto3 and prints each outcome as JSON.

Input (stdin):
  {"clients": {"<name>": CLIENT, ...},            # "default" is added: all from the environment
   "steps": [{"name": ..., "client": "<name>", "op": "<boto3 method>", "args": {...},
              "until": {"error": "<code>" | null, "timeout": <seconds>}}, ...],
   "report_credentials": ["<client name>", ...]}
CLIENT is one of
  {"env": true}                                     the environment (web identity or static keys)
  {"endpoint": URL, "credentials": {AccessKeyId, SecretAccessKey, SessionToken}}
  {"endpoint": URL, "credentials_of": "<client>"}   another client's session, at another endpoint
  {"endpoint": URL, "sts_endpoint": URL, "token": "<web identity token>"}
                                                    AssumeRoleWithWebIdentity at sts_endpoint
Arguments: {"b64": ...} bytes, {"text": ...} UTF-8 bytes, {"ref": "<step>", "field": F} a field
of an earlier reply. "until" repeats the call until it fails with that error code (or
succeeds, for null, and its reply holds the text "contains" when given) or the timeout
passes.

Output: {"results": {"<step>": {"ok": reply} | {"error": code, "message", "status"}, ...},
         "credentials": {"<client>": {...}}}
"""

from kmsclient import (
    Calls,
    assume_role_with_web_identity,
    decode_args,
    emit,
    frozen_credentials,
    kms_client,
    read_input,
    session_from_env,
)


def main():
    spec = read_input()
    sessions = {}
    clients = {}
    credentials = {}

    def client(name):
        if name in clients:
            return clients[name]
        conf = spec.get("clients", {}).get(name, {"env": True})
        if conf.get("env"):
            sessions[name] = session_from_env()
            clients[name] = kms_client(session=sessions[name])
        elif "credentials" in conf:
            credentials[name] = conf["credentials"]
            clients[name] = kms_client(endpoint_url=conf["endpoint"], credentials=conf["credentials"])
        elif "credentials_of" in conf:
            other = conf["credentials_of"]
            client(other)
            creds = credentials.get(other) or frozen_credentials(sessions[other])
            credentials[name] = creds
            clients[name] = kms_client(endpoint_url=conf["endpoint"], credentials=creds)
        elif "token" in conf:
            creds = assume_role_with_web_identity(conf["sts_endpoint"], conf["token"])
            credentials[name] = creds
            clients[name] = kms_client(endpoint_url=conf["endpoint"], credentials=creds)
        else:
            raise ValueError(f"client {name}: {conf}")
        return clients[name]

    calls = Calls()
    for step in spec["steps"]:
        kms = client(step.get("client", "default"))
        method = getattr(kms, step["op"])
        args = decode_args(step.get("args", {}), calls.results)
        if "until" in step:
            until = step["until"]
            calls.until(step["name"], method, until.get("error"), until["timeout"], until.get("contains"), **args)
        else:
            calls.run(step["name"], method, **args)

    reported = {}
    for name in spec.get("report_credentials", []):
        client(name)
        reported[name] = credentials.get(name) or frozen_credentials(sessions[name])
    emit({"results": calls.output(), "credentials": reported})


if __name__ == "__main__":
    main()
