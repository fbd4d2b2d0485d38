"""Generates the Python gRPC stubs of proto/mcp.proto into locust/.gen/.

The stubs are not committed: they are regenerated from the one proto file
whenever it is newer than them (run.sh calls this; the locustfile does too),
so the load test always speaks the current API.

    python gen_stubs.py [--force]
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_DIR = HERE.parent / "proto"
PROTO = PROTO_DIR / "mcp.proto"
OUT = HERE / ".gen"


def generate(force: bool = False) -> Path:
    """Returns the directory holding mcp_pb2.py and mcp_pb2_grpc.py."""
    stub = OUT / "mcp_pb2_grpc.py"
    if not force and stub.exists() and stub.stat().st_mtime >= PROTO.stat().st_mtime:
        return OUT
    import grpc_tools
    from grpc_tools import protoc

    OUT.mkdir(exist_ok=True)
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{well_known}",
            f"--python_out={OUT}",
            f"--grpc_python_out={OUT}",
            str(PROTO),
        ]
    )
    if code != 0:
        raise RuntimeError(f"grpc_tools.protoc failed on {PROTO} (exit {code})")
    return OUT


if __name__ == "__main__":
    print(generate(force="--force" in sys.argv))
