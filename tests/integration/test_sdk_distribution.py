"""quant-desk-sdk (sdk/pyproject.toml) is its own distribution: ``pip install ./sdk`` in a clean venv
backtests a strategy without the rest of the desk; the two wheels split the repository's modules with
no file in both and none in neither.

The venv is a fresh ``python -m venv`` in a temporary folder; pip takes the SDK's dependencies (and
setuptools for the isolated build) from the configured index or its cache. Everything in the venv runs
with its cwd outside the repository and no PYTHONPATH, so only what the wheel installed can be imported.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import desk

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
#: The source trees the two wheels ship between them.
TREES = ("desk", "services", "strategy_sdk", "desk_client")
#: Bounds for the subprocesses: creating a venv, installing with dependencies (from pip's cache, else
#: the index), building a wheel without isolation, running a backtest.
VENV_S, INSTALL_S, WHEEL_S, RUN_S = 120, 600, 180, 120


def _env() -> dict[str, str]:
    """The environment without anything that would put the repository on sys.path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(args: list[str | Path], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def sdk_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(the venv's python, a work folder outside the repository) after ``pip install ROOT/sdk``."""
    work = tmp_path_factory.mktemp("sdk-laptop")
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", venv], work, VENV_S)
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "install", "--quiet", ROOT / "sdk"], work, INSTALL_S)
    yield python, work


def test_the_sdk_venv_has_none_of_the_rest_of_the_desk(sdk_venv: tuple[Path, Path]) -> None:
    python, work = sdk_venv
    probe = (
        "import importlib, json, strategy_sdk, desk\n"
        "out = {'sdk': strategy_sdk.__file__, 'desk': desk.__file__}\n"
        "for name in ('services', 'desk.cli', 'desk.bus.pull', 'desk.data.fetch', 'typer', 'structlog'):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "        out[name] = 'imported'\n"
        "    except ModuleNotFoundError as exc:\n"
        "        out[name] = exc.name\n"
        "print(json.dumps(out))\n"
    )
    out = json.loads(_run([python, "-c", probe], work, RUN_S).stdout)
    venv = str(python.parent.parent)
    assert out.pop("sdk").startswith(venv) and out.pop("desk").startswith(venv), "imported from outside the venv"
    assert out == {
        "services": "services",
        "desk.cli": "desk.cli",
        "desk.bus.pull": "desk.bus.pull",
        "desk.data.fetch": "desk.data.fetch",
        "typer": "typer",
        "structlog": "structlog",
    }


def test_the_sdk_alone_backtests_an_example_strategy_on_the_shipped_sample(sdk_venv: tuple[Path, Path]) -> None:
    python, work = sdk_venv
    strategy = shutil.copytree(
        ROOT / "strategies" / "ma_crossover", work / "ma_crossover", ignore=shutil.ignore_patterns("__pycache__")
    )
    where = "from importlib import resources; print(resources.files('desk.data') / 'samples' / 'GSPC.csv')"
    sample = _run([python, "-c", where], work, RUN_S).stdout.strip()
    assert sample.startswith(str(python.parent.parent)), sample  # the wheel's copy, not the repository's
    report = work / "report.html"
    done = _run(
        [
            python,
            "-m",
            "strategy_sdk",
            "backtest",
            strategy,
            "--data",
            sample,
            "--symbols",
            "GSPC",
            "--json",
            "--html",
            report,
        ],
        work,
        RUN_S,
    )
    result = json.loads(done.stdout)
    assert result["strategy"] == "ma_crossover" and result["symbols"] == ["GSPC"]
    assert result["bars"] == 1258 and result["hook_errors"] == 0
    assert result["orders"] > 0 and result["fills"] > 0 and result["round_trips"] > 0
    assert isinstance(result["sharpe"], float) and isinstance(result["total_return"], float)
    assert result["benchmark"], "no buy-and-hold benchmark"
    assert "uPlot" in report.read_text(encoding="utf-8")  # the report's inlined static files are in the wheel
    table = _run(
        [python, "-m", "strategy_sdk", "backtest", strategy, "--data", sample, "--symbols", "GSPC"], work, RUN_S
    ).stdout
    assert "Sharpe" in table and "Max drawdown" in table


def test_the_sdk_version_is_the_desks(sdk_venv: tuple[Path, Path]) -> None:
    python, work = sdk_venv
    shown = _run([python, "-m", "pip", "show", "quant-desk-sdk"], work, RUN_S).stdout
    version = re.search(r"^Version: (\S+)$", shown, re.MULTILINE)
    assert version and version.group(1) == desk.__version__
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["version"] == desk.__version__
    assert f"quant-desk-sdk=={desk.__version__}" in project["dependencies"]  # the desk takes this very SDK


def _wheel_files(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return {n for n in z.namelist() if ".dist-info/" not in n}


def test_every_module_is_in_exactly_one_wheel(tmp_path: Path) -> None:
    """``pip wheel`` of ./sdk and of the root (no dependencies, no build isolation: the test venv's
    setuptools): disjoint, and together every module of the source trees."""
    out = tmp_path / "wheels"
    for project in (ROOT / "sdk", ROOT):
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "--wheel-dir",
                out,
                project,
            ],
            tmp_path,
            WHEEL_S,
        )
    (sdk_wheel,) = out.glob("quant_desk_sdk-*.whl")
    (desk_wheel,) = out.glob("quant_desk-*.whl")
    assert sdk_wheel.name == f"quant_desk_sdk-{desk.__version__}-py3-none-any.whl"
    sdk_files, desk_files = _wheel_files(sdk_wheel), _wheel_files(desk_wheel)
    assert not sdk_files & desk_files, f"in both wheels: {sorted(sdk_files & desk_files)}"
    modules = {
        str(p.relative_to(ROOT))
        for tree in TREES
        for p in (ROOT / tree).rglob("*.py*")
        if p.suffix in (".py", ".pyi") and "__pycache__" not in p.parts
    }
    assert not modules - (sdk_files | desk_files), f"in neither wheel: {sorted(modules - (sdk_files | desk_files))}"
    tops = {name.split("/")[0] for name in sdk_files}
    assert tops == {"desk", "strategy_sdk", "desk_client"}, tops
    assert {
        "desk/__init__.py",
        "desk/bus/__init__.py",
        "desk/bus/subjects.py",
        "desk/core/matching.py",
        "desk/data/loaders.py",
        "desk/data/samples/GSPC.csv",
        "desk/backtest/templates/report.html.j2",
        "strategy_sdk/testing.py",
        "desk_client/__init__.py",
    } <= sdk_files
    assert {
        "desk/bus/pull.py",
        "desk/data/fetch.py",
        "desk/cli/main.py",
        "desk/specs.py",
        "services/marketdata/data/sample_bars.csv",
    } <= desk_files
    assert not any(name.startswith(("strategy_sdk/", "desk_client/", "desk/core/", "desk/v1/")) for name in desk_files)
