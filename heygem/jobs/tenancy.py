"""Who is asking: the Principal every JobService call carries, and what it may see and do.

A principal is a tenant (a department sharing the service) and a role. Users see, cancel and
delete only their own tenant's jobs and batches; another tenant's id is answered like an id that
never existed. Admins see everything. The web layer's identity code maps API keys, UI users and the
legacy HEYGEM_API_TOKEN to principals; without any authentication the whole service is LOCAL.

Idempotency keys are scoped per tenant, and some prefixes are reserved for heygem's own adapters
(the HeyGem-compatible API keys its tasks "heygem-compat:<code>"): a client of the main API may
not use them, or it could pre-empt a task another client will submit later.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from heygem.errors import ForbiddenPathError, InputError
from heygem.settings import TENANT_NAME, Settings

Role = Literal["user", "admin"]
ROLES: tuple[Role, ...] = ("user", "admin")
DEFAULT_TENANT = "default"  # jobs written before tenancy existed, and the single-user service
# Idempotency-key prefixes only heygem's own adapters may use (submit(..., internal=True)).
RESERVED_KEY_PREFIXES = ("heygem-compat:",)


class Owned(Protocol):
    """Anything that belongs to a tenant: a Job, a Batch."""

    @property
    def tenant(self) -> str: ...


@dataclass(frozen=True)
class Principal:
    tenant: str
    role: Role = "user"

    def __post_init__(self) -> None:
        if not isinstance(self.tenant, str) or not TENANT_NAME.match(self.tenant):
            raise ValueError(
                f"invalid tenant name {str(self.tenant)[:40]!r}: use 1-64 letters, digits, '.', '_'"
                " or '-', starting with a letter or digit"
            )
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}; got {self.role!r}")

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def can_see(self, owned: Owned) -> bool:
        """True when this principal may read (and so cancel or delete) `owned`."""
        return self.is_admin or owned.tenant == self.tenant

    @property
    def scope(self) -> str | None:
        """The tenant a store query is limited to; None for admins (every tenant)."""
        return None if self.is_admin else self.tenant


# The single-user service (no authentication configured): one tenant, allowed everything.
LOCAL = Principal(DEFAULT_TENANT, "admin")


def check_key(key: str | None, *, max_chars: int, internal: bool) -> str | None:
    """A submitted idempotency key, or None for none; reserved prefixes only when internal."""
    if key is None or key == "":
        return None
    if not isinstance(key, str) or len(key) > max_chars:
        raise InputError(f"idempotency key must be a string of at most {max_chars} characters")
    if not internal and key.lower().startswith(RESERVED_KEY_PREFIXES):
        reserved = next(p for p in RESERVED_KEY_PREFIXES if key.lower().startswith(p))
        raise InputError(f"idempotency keys starting with {reserved!r} are reserved for heygem")
    return key


def check_tenant_prefix(prefix: str, principal: Principal, settings: Settings) -> None:
    """Refuse an output_prefix outside the tenant's list in Settings.tenant_output_prefixes.

    No list configured: no per-tenant rule. A list configured: an admin keeps the default rules,
    a listed tenant may use its prefixes (and anything below them), any other tenant none.
    `prefix` is already checked by storage (a resolved local folder, or an s3/obs URL).
    """
    mapping = settings.tenant_prefix_map()
    if not mapping or principal.is_admin:
        return
    allowed = mapping.get(principal.tenant, ())
    if not any(_under_prefix(prefix, entry) for entry in allowed):
        raise ForbiddenPathError(
            f"output_prefix is not one of tenant {principal.tenant}'s output locations"
            + (f" ({', '.join(allowed)})" if allowed else "")
        )


def _under_prefix(candidate: str, entry: str) -> bool:
    if entry.startswith("/"):
        if "://" in candidate:
            return False
        root = os.path.realpath(entry)
        return Path(os.path.realpath(candidate)).is_relative_to(root)
    return _object_under(candidate, entry)


def _object_under(candidate: str, entry: str) -> bool:
    """s3/obs match on scheme, bucket and whole key segments; dot segments never match."""
    want = urllib.parse.urlsplit(entry)
    got = urllib.parse.urlsplit(candidate)
    if (want.scheme.lower(), want.netloc) != (got.scheme.lower(), got.netloc):
        return False
    key = got.path.lstrip("/")
    if any(part in (".", "..") for part in key.split("/")):
        return False
    allowed = want.path.lstrip("/")
    if not allowed:
        return True
    if allowed.endswith("/"):
        return (key if key.endswith("/") else key + "/").startswith(allowed)
    return key == allowed or key.startswith(allowed + "/")


__all__ = [
    "DEFAULT_TENANT",
    "LOCAL",
    "RESERVED_KEY_PREFIXES",
    "Principal",
    "Role",
    "check_key",
    "check_tenant_prefix",
]
