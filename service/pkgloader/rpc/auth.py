"""Client authentication and authorization for the gRPC port.

Tokens come from PKGLOADER_AUTH_TOKENS_FILE (JSON: token → role, `reader` or `admin`) and arrive
as `authorization: Bearer <token>` metadata. Comparison is constant-time: the candidate's sha256
is compared with every configured token's sha256, with no early exit, so neither the match nor
the length of a token leaks through timing. Calls that change shared state need `admin`:
Retain, Evict with EVICT_SCOPE_ALL, ValidateCache with CACHE_VALIDATION_PRUNE; so does the
costliest, a `deep` ValidateCache (a rehash and a full parse of every cached package).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pkgloader_client import pb

from pkgloader.errors import AdminRequired, Unauthenticated

ROLES = ("reader", "admin")  # what PKGLOADER_AUTH_TOKENS_FILE may name
_PREFIX = "/pkgloader.v1.PackageLoaderService/"

#: Which requests change shared state, by method.
ADMIN_ONLY: dict[str, Callable[[Any], bool]] = {
    _PREFIX + "Retain": lambda request: True,
    _PREFIX + "Evict": lambda request: request.scope == pb.EVICT_SCOPE_ALL,
    # `deep` parses every package on top of the rehash: too costly to leave to any reader.
    _PREFIX + "ValidateCache": lambda request: (
        request.mode == pb.CACHE_VALIDATION_PRUNE or request.deep
    ),
}


class TokenAuth:
    def __init__(self, tokens: Mapping[str, str], exempt_services: Iterable[str] = ()) -> None:
        self._digests = [(hashlib.sha256(t.encode()).digest(), role) for t, role in tokens.items()]
        self._exempt = frozenset(exempt_services)

    def check(self, method: str, metadata: Mapping[str, Any], request: Any | None) -> str | None:
        """The caller's role, or raise. Exempt services (health, reflection) need no token."""
        service = method.split("/")[1] if method.count("/") >= 2 else method
        if service in self._exempt:
            return None
        header = metadata.get("authorization")
        if not isinstance(header, str) or not header.startswith("Bearer "):
            raise Unauthenticated("this server requires `authorization: Bearer <token>`")
        candidate = hashlib.sha256(header[len("Bearer ") :].strip().encode()).digest()
        role = None
        for digest, token_role in self._digests:
            if hmac.compare_digest(candidate, digest):
                role = token_role
        if role is None:
            raise Unauthenticated("the bearer token is not valid")
        rule = ADMIN_ONLY.get(method)
        if role != "admin" and request is not None and rule is not None and rule(request):
            raise AdminRequired(
                f"{method.rsplit('/', 1)[-1]} with these options changes the shared cache and "
                "needs an admin token",
                role=role,
            )
        return role
