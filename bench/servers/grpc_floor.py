"""The gRPC floor: a grpc.aio server (on uvloop, as Switchyard's workers run) that parses each ModelInferRequest
and answers a fixed ModelInferResponse of the right size, with no model. Nothing can serve these requests
faster over gRPC in Python on this machine.

    python -m bench.servers.grpc_floor PORT
"""

from __future__ import annotations

import struct
import sys
from typing import Any

import grpc
import uvloop
from tritonclient.grpc import service_pb2 as pb

ANSWER = pb.ModelInferResponse(model_name="digits", model_version="floor")
ANSWER.outputs.add(name="probabilities", datatype="FP32", shape=[1, 10])
ANSWER.raw_output_contents.append(struct.pack("<10f", *[0.1] * 10))
RAW = ANSWER.SerializeToString()


async def infer(raw: bytes, context: Any) -> bytes:
    pb.ModelInferRequest.FromString(raw)
    return RAW


async def main(port: int) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
