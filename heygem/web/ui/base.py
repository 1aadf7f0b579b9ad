"""The handlers' common state: settings, the job service, the log tail, and which jobs a caller
may see."""

from __future__ import annotations

from collections.abc import Callable

from heygem.jobs.api import JobService
from heygem.jobs.records import Job
from heygem.jobs.tenancy import Principal
from heygem.settings import Settings


class HandlerBase:
    """Plain methods over the settings and the job service; one mixin per tab builds on it."""

    def __init__(
        self, settings: Settings, service: JobService, log_lines: Callable[[int], list[str]]
    ) -> None:
        self.settings = settings
        self.service = service
        self.log_lines = log_lines

    # The one place the page asks which jobs `who` may see.
    def visible_jobs(self, who: Principal, limit: int, offset: int) -> list[Job]:
        return self.service.list_jobs(limit=limit, offset=offset, principal=who)

    def visible_count(self, who: Principal) -> int:
        return self.service.count_jobs(principal=who)
