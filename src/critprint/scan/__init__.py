"""Scan many models at once: register or identify each, on a process pool or a Ray cluster.

>>> from critprint.scan import collect_items
>>> [item.name for item in collect_items(["zoo:dncnn", "zoo:nafnet"])]
['dncnn', 'nafnet']
"""

from critprint.scan.executors import EXECUTORS, Executor, LocalExecutor, RayExecutor, ScanError, make_executor
from critprint.scan.results import ResultsFile, ScanMode, ScanResult
from critprint.scan.runner import ScanCounts, ScanSummary, run_scan
from critprint.scan.sources import ITEM_OPTIONS, MODEL_SUFFIXES, ScanItem, collect_items, read_manifest
from critprint.scan.worker import ScanJob, run_item

__all__ = [
    "EXECUTORS",
    "ITEM_OPTIONS",
    "MODEL_SUFFIXES",
    "Executor",
    "LocalExecutor",
    "RayExecutor",
    "ResultsFile",
    "ScanCounts",
    "ScanError",
    "ScanItem",
    "ScanJob",
    "ScanMode",
    "ScanResult",
    "ScanSummary",
    "collect_items",
    "make_executor",
    "read_manifest",
    "run_item",
    "run_scan",
]
