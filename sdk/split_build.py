"""Which of the two wheels built from this repository ships which module: the one list.

``quant-desk-sdk`` (``sdk/pyproject.toml``) is what a member installs to write, test and backtest a
strategy; ``quant-desk`` (the root ``pyproject.toml``) is the rest of the desk and depends on it. The
sources stay where they are: the SDK's build reads the repository root (``package-dir = {"" = ".."}``).
Whole packages go to one wheel (``SDK_PACKAGES`` to the SDK, the others to the desk); three packages are
split module by module (``SPLIT``: the SDK ships the modules named there, the desk the others), so both
wheels install into the same ``desk``/``desk.bus``/``desk.data`` folders and no file is in both.

Both pyprojects point setuptools' ``build_py`` here (``[tool.setuptools] cmdclass``): :class:`SdkBuildPy`
keeps only the SDK's modules, :class:`DeskBuildPy` drops them; both remove from their build folder
(``build/lib``, ``sdk/build/lib``: pip builds in place) what an earlier build left there and this one did
not build, since the wheel takes the whole folder. tests/integration/test_sdk_distribution.py builds both
wheels and checks that every file is in exactly one.
"""

from __future__ import annotations

import os

from setuptools.command.build_py import build_py

#: Packages the SDK ships whole (with their subpackages).
SDK_PACKAGES = ("strategy_sdk", "desk_client", "desk.core", "desk.v1", "desk.backtest")
#: Packages split between the wheels: the modules the SDK ships (``__init__`` included: the SDK owns the
#: package, the desk adds modules to it). desk.bus: the pure modules the SDK and desk_client import;
#: desk.data: the loaders and the cache reader (the Alpaca fetcher, ``fetch``, needs alpaca-py: the desk's).
SPLIT: dict[str, frozenset[str]] = {
    "desk": frozenset({"__init__"}),
    "desk.bus": frozenset({"__init__", "codec", "confine", "decimals", "errors", "request", "servers", "subjects"}),
    "desk.data": frozenset({"__init__", "cache", "loaders"}),
}


def in_sdk(package: str, module: str) -> bool:
    """Whether module ``module`` of package ``package`` (both dotted) is the SDK's."""
    if package in SPLIT:
        return module in SPLIT[package]
    return any(package == p or package.startswith(p + ".") for p in SDK_PACKAGES)


Module = tuple[str, str, str]


class _Pruned(build_py):
    """build_py that leaves in its build folder only what this build wrote there."""

    def run(self) -> None:
        super().run()
        if self.editable_mode or not os.path.isdir(self.build_lib):
            return
        keep = {os.path.abspath(p) for p in self.get_outputs(include_bytecode=True)}
        for folder, _dirs, files in os.walk(self.build_lib):
            for name in files:
                path = os.path.abspath(os.path.join(folder, name))
                if path not in keep:
                    os.remove(path)


class SdkBuildPy(_Pruned):
    """quant-desk-sdk: of the packages it lists, only the SDK's modules."""

    def find_package_modules(self, package: str, package_dir: str) -> list[Module]:
        found: list[Module] = super().find_package_modules(package, package_dir)
        return [m for m in found if in_sdk(m[0], m[1])]


class DeskBuildPy(_Pruned):
    """quant-desk: of the packages it lists, every module but the SDK's."""

    def find_package_modules(self, package: str, package_dir: str) -> list[Module]:
        found: list[Module] = super().find_package_modules(package, package_dir)
        return [m for m in found if not in_sdk(m[0], m[1])]
