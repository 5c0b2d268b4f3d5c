"""The two install paths resolve, against the package registry, the way a new user would install them.

- GPU: ``pip install --dry-run --ignore-installed ".[gpu]"`` (the README's cluster install) and what
  ``scripts/_venv.sh`` installs on a GPU machine (``-r requirements/gpu.lock ".[gpu,test,bench]"``) both resolve, and the
  result carries verl 0.9.1's own pins from its ``[vllm]`` and ``[fsdp]`` extras (read from verl's installed
  metadata, so a drift of ours or of the lock is caught here).
- A pin changed back to a conflicting release (``transformers==5.10.4``) makes the same resolution fail: the check
  can fail.
- CPU: the lock resolves with the project, and this environment (built by ``scripts/_venv.sh``) is exactly the lock.

What this cannot see: that the GPU wheels (CUDA torch, vLLM, flash-attn built against torch) install and import on a
GPU machine. These tests need the package registry; an unreachable registry fails them (pip's own error), it never
skips them.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

GPU_LOCK = REPO_ROOT / "requirements" / "gpu.lock"
CPU_LOCK = REPO_ROOT / "requirements" / "cpu.lock"
# What the GPU path must end with: verl 0.9.1's [vllm]/[fsdp] pins (DESIGN of the install, README "GPU cluster").
GPU_PINS = {"torch": "2.11.0", "vllm": "0.24.0", "transformers": "5.9.0", "trl": "0.27.0", "verl": "0.9.1"}
# verl's [fsdp] extra also names flash-attn, an sdist that imports torch to build: _venv.sh installs it afterwards.
BUILT_AFTER_TORCH = {"flash-attn"}
GPU_EXTRAS = ("vllm", "fsdp", "cupy-cu130", "flash-attn-cu130torch211")  # [fsdp] includes the last two
LINUX_311 = {**default_environment(), "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
             "python_version": "3.11", "python_full_version": "3.11.7", "implementation_name": "cpython",
             "platform_python_implementation": "CPython", "os_name": "posix"}


def dry_run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    """``pip install --dry-run --ignore-installed --report`` in the repository; returns the run and {name: version}."""
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--report", str(report), *args]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    versions = {}
    if proc.returncode == 0:
        for item in json.loads(report.read_text())["install"]:
            meta = item["metadata"]
            versions[canonicalize_name(meta["name"])] = meta["version"]
    return proc, versions


def lock_pins(path: Path, env: dict) -> dict[str, str]:
    """``name==version`` lines of a uv lock whose markers hold in ``env``."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            (spec,) = req.specifier
            assert spec.operator == "==", f"{path.name}: {line!r} is not an exact pin"
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def verl_extra_requirements(*extras: str) -> list[Requirement]:
    """verl 0.9.1's own requirements for ``extras``, from its installed metadata (the CPU env has verl)."""
    out = []
    for line in importlib.metadata.requires("verl") or []:
        req = Requirement(line)
        if req.marker is not None and any(req.marker.evaluate({**LINUX_311, "extra": e}) for e in extras) \
                and not req.marker.evaluate({**LINUX_311, "extra": ""}):
            out.append(req)
    return out


def unmet(requirements: list[Requirement], versions: dict[str, str]) -> list[str]:
    """Requirements (self-references to verl's extras expanded elsewhere) that ``versions`` does not satisfy."""
    bad = []
    for req in requirements:
        name = canonicalize_name(req.name)
        if name == "verl" or name in BUILT_AFTER_TORCH:
            continue
        if name not in versions or not req.specifier.contains(versions[name], prereleases=True):
            bad.append(f"{req} (got {versions.get(name)})")
    return bad


def assert_resolved(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (f"the install does not resolve (exit {proc.returncode}); a registry error here "
                                  f"means the check could not run, never that it passed:\n{proc.stderr[-4000:]}")


@pytest.mark.parametrize("args", [
    pytest.param([".[gpu]"], id="readme-pip-install-gpu"),
    pytest.param(["-r", str(GPU_LOCK), ".[gpu,test,bench]"], id="venv-sh-gpu-lock"),
])
def test_gpu_install_resolves_to_verls_pins(tmp_path, args):
    proc, versions = dry_run(tmp_path, *args)
    assert_resolved(proc)
    assert {k: versions.get(k) for k in GPU_PINS} == GPU_PINS
    assert unmet(verl_extra_requirements(*GPU_EXTRAS), versions) == []


def test_a_pin_changed_back_fails_the_resolution(tmp_path):
    """The pin this project once had (transformers 5.10.4) against verl's [vllm] extra (5.9.0): must not resolve."""
    constraint = tmp_path / "constraint.txt"
    constraint.write_text("transformers==5.10.4\n")
    proc, _ = dry_run(tmp_path, "-c", str(constraint), ".[gpu]")
    assert proc.returncode != 0
    said = proc.stdout + proc.stderr
    assert "ResolutionImpossible" in said and "transformers==5.9.0" in said, said[-3000:]


def test_gpu_lock_carries_verls_pins_and_flash_attn_pin_matches_venv_script():
    pins = lock_pins(GPU_LOCK, LINUX_311)
    assert {k: pins.get(k) for k in GPU_PINS} == GPU_PINS
    assert unmet(verl_extra_requirements(*GPU_EXTRAS), pins) == []
    flash = [r for r in verl_extra_requirements("fsdp", "flash-attn-cu130torch211")
             if canonicalize_name(r.name) == "flash-attn"]
    script = (REPO_ROOT / "scripts" / "_venv.sh").read_text()
    (pinned,) = re.findall(r'E3_FLASH_ATTN="flash-attn==([^"]+)"', script)
    assert flash and all(r.specifier.contains(pinned) for r in flash)


def test_cpu_lock_resolves_with_the_project(tmp_path):
    proc, versions = dry_run(tmp_path, "-r", str(CPU_LOCK), ".[cpu,test,bench]")
    assert_resolved(proc)
    pins = lock_pins(CPU_LOCK, LINUX_311)
    assert {k: v for k, v in versions.items() if k in pins} == pins
    assert versions["torch"].split("+")[0] == "2.13.0" and versions["transformers"] == "5.9.0"


@pytest.mark.skipif(not (sys.platform == "linux" and sys.version_info[:2] == (3, 11))
                    or os.environ.get("E3_GPU") == "1",
                    reason="requirements/cpu.lock is the CPU environment of Linux x86_64 / CPython 3.11")
def test_this_environment_is_the_cpu_lock():
    """scripts/_venv.sh installed exactly the lock (CPU machines): every pinned package at its pinned version."""
    pins = lock_pins(CPU_LOCK, LINUX_311)
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    assert {k: installed.get(k) for k in pins} == pins
