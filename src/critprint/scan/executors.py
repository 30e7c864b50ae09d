"""Executors of a scan: a process pool on this machine, or Ray tasks on a cluster.

An executor takes the scan's job and its items and yields one
:class:`ScanResult` per item, in the order they finish.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Literal, Protocol

from critprint.errors import CritprintError, InvalidInputError
from critprint.scan.results import ScanResult, worker_label
from critprint.scan.sources import ScanItem
from critprint.scan.worker import ScanJob, run_item, set_threads

__all__ = ["ExecutorName", "EXECUTORS", "Executor", "LocalExecutor", "RayExecutor", "ScanError", "make_executor"]

logger = logging.getLogger(__name__)

ExecutorName = Literal["local", "ray"]
EXECUTORS: tuple[ExecutorName, ...] = ("local", "ray")


class ScanError(CritprintError, RuntimeError):
    """A scan cannot go on: its executor cannot start or lost its workers."""


class Executor(Protocol):
    """Runs a scan's items and yields their results as they finish."""

    def run(self, job: ScanJob, items: list[ScanItem]) -> Iterator[ScanResult]:
        """Yield one result per item, in the order they finish."""
        ...


def _lost(job: ScanJob, item: ScanItem, message: str, error_type: str) -> ScanResult:
    return ScanResult(name=item.name, path=item.path, mode=job.mode, status="error", seconds=0.0,
                      worker=worker_label(), error=message, error_type=error_type)


class LocalExecutor:
    """A pool of worker processes on this machine.

    Workers start with ``spawn``, so each imports torch afresh and none
    inherits the parent's threads. Each gets ``job.threads`` torch threads.

    Args:
        workers: Number of worker processes.
    """

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise InvalidInputError(f"invalid number of workers {workers}: expected 1 or more")
        self.workers = workers

    def run(self, job: ScanJob, items: list[ScanItem]) -> Iterator[ScanResult]:
        if not items:
            return
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=min(self.workers, len(items)), mp_context=context,
                                   initializer=set_threads, initargs=(job.threads,))
        pending: dict[Future[ScanResult], ScanItem] = {}
        try:
            pending = {pool.submit(run_item, job, item): item for item in items}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    item = pending.pop(future)
                    try:
                        yield future.result()
                    except BrokenProcessPool:
                        # A worker died (killed, out of memory, a crash in native
                        # code): which model it ran is unknown, so none is
                        # reported and a resumed scan runs them again.
                        raise ScanError(
                            "a scan worker process died (out of memory or killed?); the results so far are kept: "
                            "rerun with --resume"
                        ) from None
        finally:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """Ray tasks, one model per task, each reserving its CPU share.

    Args:
        address: A running cluster to join (``ray://HOST:10001`` or
            ``HOST:6379``, as ``ray.init`` takes it); None starts a local Ray
            instance for the scan and stops it afterwards.
        cpus_per_model: CPUs each task reserves; also its torch threads.
        num_cpus: CPUs of a local instance; ignored when joining a cluster.
        object_store_memory: Bytes of a local instance's object store; results
            are small, so the default is 128 MiB.
        max_retries: Times Ray reruns a task whose worker process died.
        quiet_logs: Show only Ray's errors on standard error, not its
            start-up messages.
    """

    def __init__(
        self,
        address: str | None = None,
        cpus_per_model: float = 1.0,
        num_cpus: int | None = None,
        object_store_memory: int = 128 * 2**20,
        max_retries: int = 1,
        quiet_logs: bool = True,
    ) -> None:
        if cpus_per_model <= 0:
            raise InvalidInputError(f"invalid --cpus-per-model {cpus_per_model}: expected a positive number")
        self.address = address
        self.cpus_per_model = cpus_per_model
        self.num_cpus = num_cpus
        self.object_store_memory = object_store_memory
        self.max_retries = max_retries
        self.quiet_logs = quiet_logs

    def _start(self, threads: int) -> bool:
        """Connect to Ray; return whether this call started it (and must stop it)."""
        try:
            import ray
        except ImportError:
            raise ScanError("--executor ray needs Ray; run `pip install 'critprint[ray]'`") from None
        if ray.is_initialized():
            return False
        settings: dict[str, Any] = {
            "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(threads)}},
            "log_to_driver": not self.quiet_logs,
            "logging_level": logging.ERROR if self.quiet_logs else logging.INFO,
        }
        if self.quiet_logs:
            logging.getLogger("ray").setLevel(logging.ERROR)
        try:
            if self.address is not None:
                ray.init(address=self.address, **settings)
            else:
                ray.init(num_cpus=self.num_cpus, object_store_memory=self.object_store_memory,
                         include_dashboard=False, **settings)
        except (ConnectionError, RuntimeError, ValueError) as error:
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
            raise ScanError(f"cannot start or join {where}: {str(error).splitlines()[0]}; check --ray-address") from None
        return True

    def run(self, job: ScanJob, items: list[ScanItem]) -> Iterator[ScanResult]:
        if not items:
            return
        started = self._start(job.threads)
        import ray

        try:
            task = ray.remote(num_cpus=self.cpus_per_model, max_retries=self.max_retries)(run_item)
            pending: dict[Any, ScanItem] = {task.remote(job, item): item for item in items}
            try:
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    for reference in ready:
                        item = pending.pop(reference)
                        try:
                            yield ray.get(reference)
                        except ray.exceptions.RayError as error:
                            # The task's worker died after its retries: this model only.
                            message = str(error).strip().splitlines()
                            yield _lost(job, item, f"Ray task failed: {message[0] if message else error}",
                                        type(error).__name__)
            finally:
                for reference in pending:
                    ray.cancel(reference, force=True)
        finally:
            if started:
                ray.shutdown()


def make_executor(
    name: str,
    workers: int = 1,
    ray_address: str | None = None,
    cpus_per_model: float = 1.0,
    object_store_memory: int = 128 * 2**20,
    quiet_logs: bool = True,
) -> Executor:
    """Return the executor called ``name``: ``local`` or ``ray``.

    Args:
        workers: Processes of the local pool, or CPUs of a local Ray instance
            (``workers * cpus_per_model``).
        ray_address: A Ray cluster to join; only for ``ray``.

    Raises:
        InvalidInputError: If the name is not ``local`` or ``ray``.
    """
    if name == "local":
        return LocalExecutor(workers)
    if name == "ray":
        cpus = max(1, round(workers * cpus_per_model))
        return RayExecutor(ray_address, cpus_per_model, num_cpus=cpus, object_store_memory=object_store_memory,
                           quiet_logs=quiet_logs)
    raise InvalidInputError(f"unknown executor {name!r}; valid executors are {', '.join(EXECUTORS)}")


def default_workers() -> int:
    """Return the CPU cores this process may use, the default number of workers."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
