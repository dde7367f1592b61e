"""A KMS v2 client in gRPC C-core (Python grpcio), for kms-plugin/tests/grpcio.rs.

Reads one JSON object on stdin:
  {"socket": "/abs/path/kms.sock", "authority": null or a string, "calls":
   [{"method": "Status", "request": "<hex of the protobuf request>"}, ...]}
opens the channel "unix://<socket>" (with grpc.default_authority only when "authority" is
a string: null keeps C-core's default, the percent-encoded socket path), makes each call
with bytes in and out (the test encodes and decodes the messages with prost), and writes
one JSON list on stdout: {"response": "<hex>"} or {"code": "INTERNAL", "details": "..."}
per call.
"""

import json
import sys

import grpc


def main() -> None:
    job = json.load(sys.stdin)
    options = []
    if job["authority"] is not None:
        options.append(("grpc.default_authority", job["authority"]))
    results = []
    with grpc.insecure_channel("unix://" + job["socket"], options=options) as channel:
        for call in job["calls"]:
            # No serializers: the request is bytes, and so is the response.
            rpc = channel.unary_unary("/v2.KeyManagementService/" + call["method"])
            try:
                response = rpc(bytes.fromhex(call["request"]), timeout=20)
                results.append({"response": response.hex()})
            except grpc.RpcError as e:
                results.append({"code": e.code().name, "details": e.details()})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
