"""Server reflection that keeps the proto comments.

grpcio-reflection answers from the descriptor pool, re-serializing each file with CopyToProto;
the descriptors compiled into generated modules carry no source info, so tools like grpcurl
would describe our API without a word of its documentation. `make protos` also writes the
descriptor set with source info; for our own files this servicer sends those bytes instead.
Everything else (well-known types, health, reflection itself) comes from the pool as before.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection


def commented_files() -> dict[str, bytes]:
    """Our .proto files by name → serialized FileDescriptorProto with comments."""
    data = resources.files("pkgloader_client._generated").joinpath("descriptors.binpb")
    files = descriptor_pb2.FileDescriptorSet.FromString(data.read_bytes()).file
    return {f.name: f.SerializeToString() for f in files}


class CommentedReflection(reflection.ReflectionServicer):
    def __init__(self, service_names: list[str], files: dict[str, bytes]) -> None:
        super().__init__(service_names)
        self._files = files

    def _file_by_filename(self, request: Any, filename: str) -> Any:
        return self._with_comments(super()._file_by_filename(request, filename))

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        return self._with_comments(super()._file_containing_symbol(request, fully_qualified_name))

    def _with_comments(self, response: Any) -> Any:
        if response.HasField("file_descriptor_response"):
            protos = response.file_descriptor_response.file_descriptor_proto
            for i, raw in enumerate(protos):
                name = descriptor_pb2.FileDescriptorProto.FromString(raw).name
                if name in self._files:
                    protos[i] = self._files[name]
        return response
