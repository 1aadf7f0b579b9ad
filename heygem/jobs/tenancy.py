"""Placeholder for the tenancy branch (i12-tenancy): who a caller is, as the job layer sees it.

The lead keeps the tenancy branch's version of this file at merge; only these names are relied on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Role = Literal["user", "admin"]
ROLES: tuple[Role, ...] = ("user", "admin")
DEFAULT_TENANT = "default"
TENANT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Principal:
    """A tenant and a role; admins see every tenant's jobs."""

    tenant: str
    role: Role = "user"

    def __post_init__(self) -> None:
        if not TENANT_PATTERN.fullmatch(self.tenant):
            raise ValueError(
                f"tenant {self.tenant[:80]!r} must be 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        if self.role not in ROLES:
            raise ValueError(f"role must be user or admin, got {self.role!r}")

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


LOCAL = Principal(DEFAULT_TENANT, "admin")  # the single-user service without credentials

__all__ = ["Role", "DEFAULT_TENANT", "Principal", "LOCAL"]
