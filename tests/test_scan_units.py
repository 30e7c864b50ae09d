"""The parts of a scan: sources and manifests, the results file, the worker, the runner."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from critprint.errors import InvalidInputError
from critprint.registry import Registry
from critprint.scan import ResultsFile, ScanItem, ScanJob, ScanResult, collect_items, run_item, run_scan
from critprint.scan.executors import LocalExecutor, make_executor
from critprint.scan.sources import default_name

FAST = {"size": 24, "iterations": 20}


def result(name: str, status: str = "ok", mode: str = "identify") -> ScanResult:
    return ScanResult(name=name, path=f"/models/{name}.pth", mode=mode, status=status, seconds=1.0,  # type: ignore[arg-type]
                      worker="host:1")


class InlineExecutor:
    """Runs items in this process, one after the other; stops after ``limit`` items."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.seen: list[str] = []

    def run(self, job: ScanJob, items: list[ScanItem]) -> Iterator[ScanResult]:
        for item in items:
            if self.limit is not None and len(self.seen) == self.limit:
                raise KeyboardInterrupt
            self.seen.append(item.name)
            yield run_item(job, item)


# Sources and manifests.


@pytest.mark.parametrize(("path", "expected"), [
    ("a/b/model.safetensors", "model"),
    ("zoo:dncnn", "dncnn"),
    ("my model (v2).pth", "my-model-v2-"),
    ("__init.pt", "init"),
    ("....pth", "model"),
])
def test_default_name(path: str, expected: str) -> None:
    assert default_name(path) == expected


def test_folder_lists_model_files_recursively_sorted(tmp_path: Path) -> None:
    for name in ("b.pth", "a.safetensors", "sub/c.onnx", "notes.txt", "sub/d.PT"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    items = collect_items([str(tmp_path)])
    assert [(item.name, Path(item.path).relative_to(tmp_path).as_posix()) for item in items] == [
        ("a", "a.safetensors"), ("b", "b.pth"), ("c", "sub/c.onnx"), ("d", "sub/d.PT"),
    ]


def test_relative_sources_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "a.pth").write_bytes(b"x")
    (tmp_path / "b.pth").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    items = collect_items(["models", "b.pth"])
    assert [item.path for item in items] == [str(tmp_path / "models" / "a.pth"), str(tmp_path / "b.pth")]


def test_manifest_paths_names_tasks_options(tmp_path: Path) -> None:
    manifest = tmp_path / "list.jsonl"
    manifest.write_text(
        '{"path": "m/one.pth", "name": "first", "task": "denoise"}\n'
        "\n"
        '{"path": "/abs/two.onnx", "options": {"protocol": "paper", "size": 32, "torchscript": false}}\n'
        '{"path": "zoo:span-x4"}\n'
    )
    items = collect_items([str(manifest)])
    assert items == [
        ScanItem("first", str(tmp_path / "m/one.pth"), "denoise", {}),
        ScanItem("two", "/abs/two.onnx", None, {"protocol": "paper", "size": 32, "torchscript": False}),
        ScanItem("span-x4", "zoo:span-x4", None, {}),
    ]


@pytest.mark.parametrize(("line", "message"), [
    ("not json", r"line 1 is not JSON .*write one JSON object per line"),
    ('["a.pth"]', r'line 1: expected an object with a "path" string'),
    ('{"name": "x"}', r'line 1: expected an object with a "path" string'),
    ('{"path": "a.pth", "owner": "x"}', r"unknown key 'owner'; valid keys are path, name, task, options"),
    ('{"path": "a.pth", "task": "colourise"}', r"unknown task 'colourise'; valid tasks are denoise, sr"),
    ('{"path": "a.pth", "name": "bad name"}', r"line 1: invalid fingerprint name 'bad name'"),
    ('{"path": "a.pth", "options": {"speed": 2}}', r"unknown option 'speed'; valid options are arch, arch_kwargs"),
    ('{"path": "a.pth", "options": {"size": "64"}}', r"option 'size' expects int, got '64'"),
    ('{"path": "a.pth", "options": {"size": true}}', r"option 'size' expects int, got True"),
    ('{"path": "a.pth", "options": {"protocol": "fast"}}', r"unknown protocol 'fast'; valid protocols are paper, quick"),
    ('{"path": "a.pth", "options": [1]}', r"options must be a JSON object, got list"),
])
def test_manifest_errors_name_line_and_fix(tmp_path: Path, line: str, message: str) -> None:
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text(line + "\n")
    with pytest.raises(InvalidInputError, match=message):
        collect_items([str(manifest)])


def test_duplicate_names_rejected(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "model.pth").write_bytes(b"x")
    with pytest.raises(InvalidInputError, match="both named 'model' .*distinct names in a .jsonl manifest"):
        collect_items([str(tmp_path)])


def test_missing_source_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="scan source .*missing.pth' does not exist"):
        collect_items([str(tmp_path / "missing.pth")])


def test_no_model_found(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(InvalidInputError, match="no model found in .*model files end in .pth"):
        collect_items([str(tmp_path)])


# The results file.


def test_results_written_whole_and_read_back(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with ResultsFile(out, "identify", resume=False) as results:
        results.append(result("a"))
        results.append(result("b", "error"))
    lines = out.read_text().splitlines()
    assert [json.loads(line)["name"] for line in lines] == ["a", "b"]
    with ResultsFile(out, "identify", resume=True) as results:
        assert {name: item.status for name, item in results.results.items()} == {"a": "ok", "b": "error"}
        assert results.torn_bytes == 0


def test_torn_last_line_cut_on_resume(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with ResultsFile(out, "identify", resume=False) as results:
        results.append(result("a"))
    whole = out.read_bytes()
    out.write_bytes(whole + b'{"name": "b", "sta')
    with ResultsFile(out, "identify", resume=True) as results:
        assert list(results.results) == ["a"]
        assert results.torn_bytes == len(b'{"name": "b", "sta')
        results.append(result("b"))
    assert [json.loads(line)["name"] for line in out.read_text().splitlines()] == ["a", "b"]


def test_existing_results_need_resume(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps(result("a").to_dict()) + "\n")
    with pytest.raises(InvalidInputError, match="already exists; pass --resume .* or choose another --out"):
        ResultsFile(out, "identify", resume=False)


def test_malformed_line_before_the_last_rejected(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text("garbage\n" + json.dumps(result("a").to_dict()) + "\n")
    with pytest.raises(InvalidInputError, match="line 1 is not a scan result .*remove that line"):
        ResultsFile(out, "identify", resume=True)


def test_other_mode_rejected_on_resume(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps(result("a", mode="register").to_dict()) + "\n")
    with pytest.raises(InvalidInputError, match="contains register results, not identify; rerun with --register"):
        ResultsFile(out, "identify", resume=True)


def test_second_writer_rejected(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with ResultsFile(out, "identify", resume=False):
        with pytest.raises(InvalidInputError, match="another scan is writing .*out.jsonl"):
            ResultsFile(out, "identify", resume=True)


# The worker.


def test_broken_model_gives_an_error_result(tmp_path: Path) -> None:
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"\x00" * 100)
    outcome = run_item(ScanJob("register", registry=str(tmp_path / "registry")), ScanItem("broken", str(broken)))
    assert outcome.status == "error"
    assert outcome.error_type == "ModelLoadError"
    assert "broken.pth" in (outcome.error or "")
    assert "\n" not in (outcome.error or "")


def test_register_is_idempotent_for_the_same_model(tmp_path: Path, model_dir: Path) -> None:
    job = ScanJob("register", registry=str(tmp_path / "registry"), **FAST)
    item = ScanItem("alpha", str(model_dir / "denoiser_a.safetensors"), "denoise")
    first = run_item(job, item)
    again = run_item(job, item)
    assert (first.status, first.already_registered) == ("ok", False)
    assert (again.status, again.already_registered) == ("ok", True)
    assert again.registered == first.registered
    other = run_item(job, ScanItem("alpha", str(model_dir / "denoiser_b.safetensors"), "denoise"))
    assert (other.status, other.error_type) == ("error", "DuplicateNameError")


def test_identify_lists_matches_and_derived_sources(tmp_path: Path, model_dir: Path) -> None:
    registry = str(tmp_path / "registry")
    run_item(ScanJob("register", registry=registry, **FAST),
             ScanItem("alpha", str(model_dir / "denoiser_a.safetensors"), "denoise"))
    same = run_item(ScanJob("identify", registry=registry), ScanItem("copy", str(model_dir / "denoiser_a.pth"), "denoise"))
    other = run_item(ScanJob("identify", registry=registry),
                     ScanItem("other", str(model_dir / "denoiser_b.safetensors"), "denoise"))
    assert same.derived_from == ["alpha"]
    assert same.matches is not None and same.matches[0]["distance"] == 0.0
    # Two random tiny denoisers are not reliably distinguished at 24 px and 20
    # steps. The test checks that the line reports the verdicts it got.
    assert other.matches is not None and other.matches[0]["distance"] > 0.0
    assert other.derived_from == [match["source"] for match in other.matches if match["verdict"] == "derived"]


# The runner.


def test_resume_runs_only_the_rest(tmp_path: Path, model_dir: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for index in range(4):
        shutil.copy(model_dir / "denoiser_a.safetensors", models / f"m{index}.safetensors")
    items = collect_items([str(models)])
    job = ScanJob("register", registry=str(tmp_path / "registry"), **FAST)
    out = tmp_path / "out.jsonl"
    interrupted = InlineExecutor(limit=2)
    with pytest.raises(KeyboardInterrupt):
        run_scan(items, job, interrupted, out)
    rest = InlineExecutor()
    summary = run_scan(items, job, rest, out, resume=True)
    assert interrupted.seen == ["m0", "m1"]
    assert rest.seen == ["m2", "m3"]
    assert (summary.total, summary.resumed, summary.ran, summary.failed_total) == (4, 2, 2, 0)
    names = [json.loads(line)["name"] for line in out.read_text().splitlines()]
    assert sorted(names) == ["m0", "m1", "m2", "m3"]
    assert [entry.name for entry in Registry(tmp_path / "registry").entries()] == names


def test_local_pool_runs_every_item_once(tmp_path: Path, model_dir: Path) -> None:
    items = [ScanItem(f"m{index}", str(model_dir / "denoiser_a.safetensors"), "denoise") for index in range(3)]
    items.append(ScanItem("broken", str(tmp_path / "missing.pth")))
    out = tmp_path / "out.jsonl"
    summary = run_scan(items, ScanJob("register", registry=str(tmp_path / "registry"), **FAST),
                       LocalExecutor(2), out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((line["name"], line["status"]) for line in lines) == [
        ("broken", "error"), ("m0", "ok"), ("m1", "ok"), ("m2", "ok"),
    ]
    assert len({line["worker"] for line in lines}) <= 2
    assert (summary.ran, summary.failed, summary.failed_total) == (4, 1, 1)


@pytest.mark.parametrize(("name", "workers", "message"), [
    ("slurm", 1, "unknown executor 'slurm'; valid executors are local, ray"),
    ("local", 0, "invalid number of workers 0: expected 1 or more"),
])
def test_make_executor_rejects_bad_values(name: str, workers: int, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        make_executor(name, workers)


def test_worker_registry_reads_each_file_once(
    tmp_path: Path, model_dir: Path, count_reads: Callable[[Registry], list[str]]
) -> None:
    from critprint import api
    from critprint.scan.worker import CachingRegistry

    location = str(tmp_path / "registry")
    run_item(ScanJob("register", registry=location, **FAST),
             ScanItem("alpha", str(model_dir / "denoiser_a.safetensors"), "denoise"))
    cached = CachingRegistry(location)
    reads = count_reads(cached)
    api.identify(str(model_dir / "denoiser_a.pth"), cached, task="denoise")
    api.identify(str(model_dir / "denoiser_b.safetensors"), cached, task="denoise")
    assert len(reads) == 1

    # Registered again under the same name: a new file hash, so the new file is read.
    Registry(location).remove("alpha")
    run_item(ScanJob("register", registry=location, **FAST),
             ScanItem("alpha", str(model_dir / "denoiser_b.safetensors"), "denoise"))
    (again,) = api.identify(str(model_dir / "denoiser_b.safetensors"), cached, task="denoise")
    assert len(reads) == 2
    assert again.distance == 0.0


def test_ray_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from critprint.scan import ScanError
    from critprint.scan.executors import RayExecutor

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ScanError, match=r"--executor ray needs Ray; run `pip install 'critprint\[ray\]'`"):
        list(RayExecutor().run(ScanJob("identify"), [ScanItem("a", "a.pth")]))
