"""Writes a seed input of the plugin_http2 fuzz target: the bytes gRPC C-core (Python
grpcio) sends on a Unix socket, default options, with its percent-encoded :authority.

Run with the venv of hack/tools/grpcio.sh, from the repository root:
  "$(hack/tools/grpcio.sh --print-dir)/python" fuzz/seeds/capture_grpcio.py
A bare socket server answers the HTTP/2 handshake (an empty SETTINGS and its ACK), then
records what the client writes while three calls (Status, Encrypt, Status again, which
reuses C-core's HPACK table) wait for replies that never come.
"""

import os
import pathlib
import socket
import tempfile
import threading
import time

import grpc

OUT = pathlib.Path(__file__).resolve().parent.parent / "corpus" / "plugin_http2"


def serve(listener, received, done):
    conn, _ = listener.accept()
    conn.sendall(bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))  # SETTINGS, empty
    conn.settimeout(0.2)
    acked = False
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            chunk = conn.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            break
        received.extend(chunk)
        if not acked and len(received) > 24:
            conn.sendall(bytes([0, 0, 0, 4, 1, 0, 0, 0, 0]))  # SETTINGS ACK
            acked = True
    conn.close()
    done.set()


def main():
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "kms.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    received = bytearray()
    done = threading.Event()
    threading.Thread(target=serve, args=(listener, received, done), daemon=True).start()
    with grpc.insecure_channel("unix://" + path) as channel:
        status = channel.unary_unary("/v2.KeyManagementService/Status")
        encrypt = channel.unary_unary("/v2.KeyManagementService/Encrypt")
        calls = [status.future(b"", timeout=2)]
        time.sleep(0.3)
        # EncryptRequest{plaintext: 32 bytes, uid: "grpcio-seed"}
        calls.append(encrypt.future(b"\x0a\x20" + bytes(range(32)) + b"\x12\x0bgrpcio-seed", timeout=2))
        time.sleep(0.3)
        calls.append(status.future(b"", timeout=2))
        done.wait(5)
    OUT.mkdir(parents=True, exist_ok=True)
    # The target's format: a 0 (fed whole), then the stream after the preface.
    assert received[:24] == b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "not HTTP/2"
    (OUT / "grpcio-c-core").write_bytes(b"\x00" + bytes(received[24:]))
    print(len(received), "bytes")


if __name__ == "__main__":
    main()
