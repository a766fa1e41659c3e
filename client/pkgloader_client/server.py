"""The server side of the contract, for the pkgloader service (and any other implementation).

    from pkgloader_client import server

    class Servicer(server.PackageLoaderServiceServicer): ...
    server.add_PackageLoaderServiceServicer_to_server(Servicer(), grpc_server)

The generated servicer base class and its registration function, with the service's name and
messages. They live in the client distribution because the generated modules do (one published
copy of the contract), but they are not the client's API: `pkgloader_client.__all__` leaves them
out, so a client user never sees server symbols, and the server depends on this module only.
"""

from pkgloader_client._config import SERVICE_NAME
from pkgloader_client._generated.pkgloader.v1 import package_loader_pb2 as pb
from pkgloader_client._generated.pkgloader.v1.package_loader_pb2_grpc import (
    PackageLoaderServiceServicer,
    add_PackageLoaderServiceServicer_to_server,
)

__all__ = [
    "SERVICE_NAME",
    "PackageLoaderServiceServicer",
    "add_PackageLoaderServiceServicer_to_server",
    "pb",
]
