"""Prometheus metrics for /metrics, read from the job store at scrape time.

Job counts, the queue depth and the oldest queued job's age come from the store, so in a fleet
they are the whole fleet's (any instance answers the same); heygem_ready and
heygem_instance_workers are this instance's own.

Each app gets its own CollectorRegistry (tests build several apps in one process). Counts come from
the store, so jobs run through the UI, the API or another process sharing the database all show up.
Durations and frame rates are observed at scrape time for jobs that finished since the last scrape
(and after this process started), so a restart does not count old jobs twice.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from heygem.jobs.api import JobService
from heygem.jobs.records import Job
from heygem.jobs.tenancy import LOCAL  # metrics describe the whole service: read as its admin

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
DURATION_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600)
RECENT_SCAN = 200  # newest jobs examined per scrape for newly finished ones
SEEN_MEMORY = 2000  # finished job ids remembered so none is observed twice


class _StoreCollector(Collector):
    """Gauges computed from the store on every scrape."""

    def __init__(self, service: JobService) -> None:
        self.service = service

    def collect(self) -> Iterable[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("heygem_jobs", "Jobs in the store by status", labels=["status"])
        for status, count in status_counts(self.service).items():
            jobs.add_metric([status], count)
        yield jobs
        depth = GaugeMetricFamily("heygem_queue_depth", "Jobs waiting for a worker")
        depth.add_metric([], self.service.queue_depth())
        yield depth
        age = GaugeMetricFamily(
            "heygem_oldest_queued_age_seconds", "How long the longest-waiting queued job has waited"
        )
        age.add_metric([], self.service.oldest_queued_age())
        yield age
        busy, workers = self.service.busy_workers()
        own = GaugeMetricFamily(
            "heygem_instance_workers", "This instance's workers, by state", labels=["state"]
        )
        own.add_metric(["busy"], busy)
        own.add_metric(["idle"], workers - busy)
        yield own
        ready, _ = self.service.readiness()
        ready_gauge = GaugeMetricFamily("heygem_ready", "1 when the engine is loaded and warmed up")
        ready_gauge.add_metric([], 1.0 if ready else 0.0)
        yield ready_gauge
        yield from _gpu_memory()


def status_counts(service: JobService) -> dict[str, int]:
    """Jobs per status, every status present: one GROUP BY in the store."""
    counts = dict.fromkeys(JOB_STATUSES, 0)
    counts.update({str(k): int(v) for k, v in service.count_by_status().items()})
    return counts


def _gpu_memory() -> Iterable[GaugeMetricFamily]:
    # torch is heavy: only look at it when the engine already imported it.
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return
    family = GaugeMetricFamily(
        "heygem_gpu_memory_bytes", "CUDA memory held by this process", labels=["device", "kind"]
    )
    for index in range(torch.cuda.device_count()):
        device = f"cuda:{index}"
        family.add_metric([device, "allocated"], torch.cuda.memory_allocated(index))
        family.add_metric([device, "reserved"], torch.cuda.memory_reserved(index))
    yield family


class Metrics:
    """The registry behind /metrics for one app."""

    def __init__(self, service: JobService) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        self.started_at = time.time()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self.duration = Histogram(
            "heygem_job_duration_seconds",
            "Wall time of finished job runs",
            labelnames=["status"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.fps = Gauge(
            "heygem_frames_per_second",
            "Frames the engine wrote per second of its run, for the last finished job",
            registry=self.registry,
        )
        self.registry.register(_StoreCollector(service))

    def render(self) -> bytes:
        self.observe_finished()
        return generate_latest(self.registry)

    def observe_finished(self) -> None:
        """Fold jobs that finished since the last scrape into the histogram and the fps gauge."""
        with self._lock:
            fresh = [
                job
                for job in self.service.list_jobs(limit=RECENT_SCAN, offset=0, principal=LOCAL)
                if self._is_new_finish(job)
            ]
            for job in sorted(fresh, key=lambda j: j.finished_at or 0.0):
                self._observe(job)

    def _is_new_finish(self, job: Job) -> bool:
        return (
            job.terminal
            and job.id not in self._seen
            and job.finished_at is not None
            and job.finished_at >= self.started_at
        )

    def _observe(self, job: Job) -> None:
        self._seen[job.id] = None
        while len(self._seen) > SEEN_MEMORY:
            self._seen.popitem(last=False)
        seconds = job.seconds
        if seconds is None:
            return
        self.duration.labels(status=str(job.status)).observe(seconds)
        # Recorded by the worker from the engine's own report: no ffprobe of the output per scrape.
        if job.frames and job.run_seconds:
            self.fps.set(job.frames / job.run_seconds)
