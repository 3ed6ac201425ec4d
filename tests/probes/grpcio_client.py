"""A Python grpcio client of auraed over its Unix socket, without stubs.

Usage: grpcio_client.py SOCKET CA_CRT CLIENT_CRT CLIENT_KEY override|no-override

Calls Runtime/List and grpc.health.v1.Health/Check (both with empty
requests) and prints OK, or FAILED with the gRPC status. With `override`
it sets grpc.ssl_target_name_override=localhost: grpcio otherwise sends a
server name derived from the socket path, which rustls 0.23 refuses.
"""

import sys

import grpc


def read(path):
    with open(path, "rb") as f:
        return f.read()


def main():
    socket, ca, crt, key, mode = sys.argv[1:6]
    creds = grpc.ssl_channel_credentials(
        root_certificates=read(ca),
        private_key=read(key),
        certificate_chain=read(crt),
    )
    options = []
    if mode == "override":
        options.append(("grpc.ssl_target_name_override", "localhost"))
    identity = lambda b: b  # noqa: E731 -- raw bytes in and out, no stubs
    with grpc.secure_channel("unix:" + socket, creds, options=options) as channel:
        try:
            channel.unary_unary(
                "/aurae.runtime.v0.Runtime/List",
                request_serializer=identity,
                response_deserializer=identity,
            )(b"", timeout=10)
            health = channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=identity,
                response_deserializer=identity,
            )(b"", timeout=10)
        except grpc.RpcError as e:
            print(f"FAILED {e.code().name}: {e.details()}")
            return 1
    # HealthCheckResponse{status: SERVING (1)}.
    if health != b"\x08\x01":
        print(f"FAILED health answered {health!r}, not SERVING")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
