"""Keeping a shared queue healthy: lease renewal during a run, and each instance's periodic task.

With a PostgreSQL store several instances claim from one queue and nobody owns a run but its
lease. Two timers keep that honest:

- RunHeartbeat, one per running job: renews the lease while a long stage runs without progress
  to report, and tells the run to stop as soon as the store answers that it was cancelled (on any
  instance) or is no longer this run's.
- FleetTask, one per instance: records this instance's heartbeat row (GET /api/v1/fleet), puts
  back in the queue the runs whose lease expired (a killed instance), and forgets instances silent
  for long.

Both tick at a third of the lease, so a live run renews its lease at least twice before it could
expire, and an expired one is taken back within a third of a lease after it ran out. On SQLite
(one host) the same code runs: heartbeat() only reads the cancel flag and requeue_expired() does
nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from heygem.jobs.records import Instance
from heygem.jobs.store import JobStore, RunState
from heygem.settings import Settings

log = logging.getLogger(__name__)

TICKS_PER_LEASE = 3  # heartbeats and re-queue sweeps per lease
MAX_TICK_S = 5.0  # tick at least this often, so a cancel from another instance lands within seconds
FORGET_AFTER_LEASES = 10  # an instance silent this many leases leaves the fleet list


def tick_seconds(settings: Settings) -> float:
    """How often leases are renewed and expired ones taken back (derived from lease_s)."""
    return min(settings.lease_s / TICKS_PER_LEASE, MAX_TICK_S)


class RunHeartbeat(threading.Thread):
    """Renews one run's lease on a timer until stopped; on_stop(state) once the store says the
    run must end (RunState.CANCEL or RunState.GONE)."""

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        token: str,
        interval_s: float,
        on_stop: Callable[[RunState], None],
    ) -> None:
        super().__init__(name=f"heygem-heartbeat-{job_id[:8]}", daemon=True)
        self._store = store
        self._job_id = job_id
        self._token = token
        self._interval_s = interval_s
        self._on_stop = on_stop
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self._interval_s):
            try:
                state = self._store.heartbeat(self._job_id, self._token)
            except Exception:  # noqa: BLE001 - a database blip: the next tick tries again
                log.warning("job %s: lease renewal failed; trying again", self._job_id, exc_info=True)
                continue
            if state != RunState.ACTIVE:
                self._on_stop(state)
                return

    def stop(self) -> None:
        self._done.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(self._interval_s)


class FleetTask(threading.Thread):
    """This instance's heartbeat row, expired leases back to the queue, stale rows forgotten."""

    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        stopping: threading.Event,
        describe: Callable[[], Instance],
    ) -> None:
        super().__init__(name="heygem-fleet", daemon=True)
        self._store = store
        self._settings = settings
        self._stopping = stopping
        self._describe = describe
        self._poked = threading.Event()

    def poke(self) -> None:
        """A worker took or ended a run, or the service is stopping: act now, not at the tick."""
        self._poked.set()

    def run(self) -> None:
        next_sweep = 0.0
        while not self._stopping.is_set():
            sweep = time.monotonic() >= next_sweep
            if sweep:
                next_sweep = time.monotonic() + tick_seconds(self._settings)
            self.tick(sweep=sweep)
            self._poked.wait(max(0.0, next_sweep - time.monotonic()))
            self._poked.clear()

    def tick(self, *, sweep: bool = True) -> None:
        """Write this instance's row; with sweep, also take back expired leases and forget
        instances silent for long."""
        try:
            self._store.record_instance(self._describe())
            if sweep:
                self._requeue_expired()
                self._store.forget_instances(silent_for_s=FORGET_AFTER_LEASES * self._settings.lease_s)
        except Exception:  # noqa: BLE001 - the database may be briefly away; next tick retries
            log.warning(
                "fleet heartbeat failed; trying again in %.1f s", tick_seconds(self._settings), exc_info=True
            )

    def _requeue_expired(self) -> None:
        requeued, failed = self._store.requeue_expired(self._settings.max_attempts)
        for job in requeued:
            log.warning(
                "job %s: its instance stopped renewing the lease (attempt %d); back in the queue",
                job.id,
                job.attempts,
            )
        for job in failed:
            log.error("job %s: %s", job.id, job.error)

    def leave(self) -> None:
        """A clean stop: this instance leaves the fleet list at once."""
        try:
            self._store.forget_instances(instance_id=self._describe().id)
        except Exception:  # noqa: BLE001 - the row then ages out
            log.warning("could not remove this instance from the fleet list", exc_info=True)
