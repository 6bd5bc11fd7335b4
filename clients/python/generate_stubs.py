"""Generates the Python stubs of the o2o.v1 contract into clients/python/gen/.

The stubs are not checked in: they are generated from proto/ every time the tests run, so they
can never be stale. Import them with gen/ on sys.path:

    from o2o.v1 import o2o_payments_pb2 as pb, o2o_payments_pb2_grpc as pb_grpc

Run: python3 clients/python/generate_stubs.py
"""

import pathlib
import shutil
import sys

from grpc_tools import protoc

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"
PROTO = "o2o/v1/o2o_payments.proto"
GEN = HERE / "gen"


def generate() -> pathlib.Path:
    """Writes o2o/v1/o2o_payments_pb2{,_grpc}.py (and .pyi) under gen/; returns gen/."""
    shutil.rmtree(GEN, ignore_errors=True)
    GEN.mkdir()
    # grpc_tools ships the well-known types (google/protobuf/*.proto) next to its module.
    well_known = pathlib.Path(protoc.__file__).parent / "_proto"
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={GEN}",
            f"--pyi_out={GEN}",
            f"--grpc_python_out={GEN}",
            str(PROTO_ROOT / PROTO),
        ]
    )
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc}")
    return GEN


if __name__ == "__main__":
    print(f"stubs written to {generate()}")
    sys.exit(0)
