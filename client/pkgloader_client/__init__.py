"""Client side of the pkgloader service: the generated stubs under clear names."""

from pkgloader_client._generated.pkgloader.v1 import package_loader_pb2 as pb
from pkgloader_client._generated.pkgloader.v1 import package_loader_pb2_grpc as pb_grpc
from pkgloader_client._generated.pkgloader.v1.package_loader_pb2_grpc import (
    PackageLoaderServiceServicer,
    PackageLoaderServiceStub,
    add_PackageLoaderServiceServicer_to_server,
)

#: The fully qualified service name, as used by reflection and health checking.
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PackageLoaderService"].full_name

__all__ = [
    "SERVICE_NAME",
    "PackageLoaderServiceServicer",
    "PackageLoaderServiceStub",
    "add_PackageLoaderServiceServicer_to_server",
    "pb",
    "pb_grpc",
]
