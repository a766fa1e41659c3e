"""Server reflection that keeps the proto comments, and answers for methods too.

grpcio-reflection answers from the descriptor pool, re-serializing each file with CopyToProto;
the descriptors compiled into generated modules carry no source info, so tools like grpcurl
would describe our API without a word of its documentation. `make protos` also writes the
descriptor set with source info; for our own files this servicer sends those bytes instead.
Everything else (well-known types, health, reflection itself) comes from the pool as before.

Methods and enum values: `grpcurl describe pkgloader.v1.PackageLoaderService.Load` (or
`pkgloader.v1.HashValidation.HASH_VALIDATION_FAIL`) asks for the file containing that name,
which protobuf's upb descriptor pool does not find (`FindFileContainingSymbol` knows services,
messages, fields and enums, not methods, and enum values only in protobuf's own scoping), so
grpcio-reflection answered NOT_FOUND. Such a request is asked as its service's (its enum's), the
file that holds both, and answered with the client's request echoed as it came.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterable, AsyncIterator
from importlib import resources
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection


def commented_files() -> dict[str, bytes]:
    """Our .proto files by name → serialized FileDescriptorProto with comments."""
    data = resources.files("pkgloader_client._generated").joinpath("descriptors.binpb")
    files = descriptor_pb2.FileDescriptorSet.FromString(data.read_bytes()).file
    return {f.name: f.SerializeToString() for f in files}


class CommentedReflection(reflection.aio.ReflectionServicer):  # type: ignore[misc, name-defined]
    """grpcio-reflection's asyncio servicer (`reflection.aio`, which its module exports for
    asyncio servers), with our files' descriptors swapped for the commented ones.

    Only public seams: the constructor, and the RPC method `ServerReflectionInfo` itself, whose
    answers are rewritten on the way out. (A descriptor pool built from the commented files, the
    constructor's `pool`, does not help: protobuf's upb backend drops `source_code_info` in
    `CopyToProto`, which is how grpcio-reflection serializes; tests/test_reflection.py fails if a
    protobuf or grpcio-reflection upgrade changes either side.)
    """

    def __init__(self, service_names: list[str], files: dict[str, bytes]) -> None:
        super().__init__(service_names)
        self._files = files

    async def ServerReflectionInfo(
        self, request_iterator: AsyncIterable[Any], context: Any
    ) -> AsyncIterator[Any]:
        # One response per request, in order: the client's own request, for each response.
        asked: collections.deque[Any] = collections.deque()

        async def requests() -> AsyncIterator[Any]:
            async for request in request_iterator:
                asked.append(request)
                yield _by_service(request)

        async for response in super().ServerReflectionInfo(requests(), context):
            if asked:
                response.original_request.CopyFrom(asked.popleft())
            yield self._with_comments(response)

    def _with_comments(self, response: Any) -> Any:
        if response.HasField("file_descriptor_response"):
            protos = response.file_descriptor_response.file_descriptor_proto
            for i, raw in enumerate(protos):
                name = descriptor_pb2.FileDescriptorProto.FromString(raw).name
                if name in self._files:
                    protos[i] = self._files[name]
        return response


def _by_service(request: Any) -> Any:
    """`request`, or, when it asks for the file containing a method (an enum value), the same
    for its service (its enum)."""
    if request.WhichOneof("message_request") != "file_containing_symbol":
        return request
    symbol = request.file_containing_symbol
    holder = _holder(descriptor_pool.Default(), symbol)
    if holder is None:
        return request  # asked as it came (an unknown name stays NOT_FOUND)
    asked = type(request)()
    asked.CopyFrom(request)
    asked.file_containing_symbol = holder
    return asked


def _holder(pool: descriptor_pool.DescriptorPool, symbol: str) -> str | None:
    """The service of a method named `symbol`, or the enum of such a value; None otherwise."""
    try:
        return str(pool.FindMethodByName(symbol).containing_service.full_name)
    except KeyError:
        pass
    parent, _, value = symbol.rpartition(".")
    try:
        enum = pool.FindEnumTypeByName(parent)
    except KeyError:
        return None
    return str(enum.full_name) if value in enum.values_by_name else None
