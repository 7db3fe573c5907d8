"""docs/architecture.md says what the code does: the environment tables (generated: `make docs`), the
layout list (every package and module it enumerates exists, every package is in it) and the id
patterns (the ones desk.bus.subjects validates with)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from desk.bus import subjects
from tools import envtable

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
#: The source trees whose packages the layout list must name.
SOURCE_ROOTS = ("desk", "services", "strategy_sdk", "desk_client")
#: Where an entry's description starts (a continuation line is indented at least this far).
ENTRY_WIDTH = 27


def doc() -> str:
    return DOC.read_text(encoding="utf-8")


# --- (a) the environment tables ---------------------------------------------------------------------


def test_env_tables_are_the_generated_ones() -> None:
    assert envtable.current(doc()) == envtable.render(), "docs/architecture.md's env tables are stale: make docs"


def test_every_setting_is_described() -> None:
    missing = [
        f"{cls.__name__}.{name}"
        for _title, cls in envtable.settings_classes()
        for name, info in cls.model_fields.items()
        if not (info.description or "").strip()
    ]
    assert not missing, f"settings without Field(description=...): {missing}"


def _settings_classes_in_source() -> set[str]:
    """``module.Class`` of every class in the source that derives from a settings class."""
    found: set[str] = set()
    for root in SOURCE_ROOTS:
        for path in sorted((ROOT / root).rglob("*.py")):
            if "v1" in path.relative_to(ROOT).parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef) and any(
                    (isinstance(b, ast.Name) and b.id in ("BaseSettings", "BusSettings", "Settings"))
                    or (isinstance(b, ast.Attribute) and b.attr in ("BaseSettings", "BusSettings"))
                    for b in node.bases
                ):
                    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
                    found.add(f"{module}.{node.name}")
    return found


def test_every_settings_class_is_in_the_tables() -> None:
    covered = {f"{cls.__module__}.{cls.__qualname__}" for _title, cls in envtable.settings_classes()}
    assert _settings_classes_in_source() <= covered


def test_secrets_are_never_printed() -> None:
    for line in envtable.render().splitlines():
        if re.search(r"`[A-Z_]*(PASSWORD|SECRET|_KEY|TOKEN)[A-Z_]*`", line.split("|")[1] if "|" in line else ""):
            assert line.split("|")[2].strip() in ("unset", "(secret)"), line


def test_check_mode_reports_a_stale_doc(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stale = tmp_path / "architecture.md"
    stale.write_text(doc().replace("| `NATS_URL` |", "| `NATS_URLS` |"), encoding="utf-8")
    assert envtable.main(["--check", "--doc", str(stale)]) == 1
    assert "NATS_URLS" in capsys.readouterr().out
    assert envtable.main(["--doc", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == doc()
    assert envtable.main(["--check", "--doc", str(stale)]) == 0


# --- (b) the layout list ------------------------------------------------------------------------------


def layout_entries() -> list[str]:
    """The paths the ``### Layout`` block names, each from the repository root (``<name>`` and ``*``
    kept as written): an indented entry is under the entry above it that is one level up."""
    text = doc()
    block = text.split("### Layout\n```\n", 1)[1].split("```", 1)[0]
    entries: list[str] = []
    parents: list[str] = []
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        if not line.strip() or indent >= ENTRY_WIDTH:
            continue  # a description's continuation
        assert indent % 2 == 0, f"layout: odd indentation: {line!r}"
        depth = indent // 2
        token = line.split()[0]
        assert depth <= len(parents), f"layout: {token} is indented under nothing"
        parents = parents[:depth]
        path = "".join(parents) + token
        entries.append(path)
        if token.endswith("/"):
            parents.append(token)
    return entries


def _glob(entry: str) -> list[Path]:
    pattern = re.sub(r"<[^>]+>", "*", entry.removesuffix("(i)")).rstrip("/")
    return [p for p in ROOT.glob(pattern) if "__pycache__" not in p.parts]


def test_the_layout_names_only_what_exists() -> None:
    missing = [e for e in layout_entries() if not _glob(e)]
    assert not missing, f"docs/architecture.md's layout names what does not exist: {missing}"


def _named() -> set[Path]:
    """Every path the layout names, and their parent folders (of a pattern such as
    ``desk/v1/*_pb2.py``, the folders before its first wildcard)."""
    named: set[Path] = set()
    for entry in layout_entries():
        parts = entry.rstrip("/").split("/")
        wild = next((i for i, part in enumerate(parts) if "*" in part or "<" in part), len(parts))
        path = ROOT.joinpath(*parts[:wild])
        named.add(path)
        named.update(p for p in path.parents if p.is_relative_to(ROOT))
    return named


def test_the_layout_names_every_package() -> None:
    packages = {
        init.parent
        for root in SOURCE_ROOTS
        for init in (ROOT / root).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    missing = sorted(str(p.relative_to(ROOT)) + "/" for p in packages - _named())
    assert not missing, f"packages docs/architecture.md's layout does not name: {missing}"


def test_a_folder_whose_modules_the_layout_lists_has_them_all() -> None:
    """Where the layout lists a folder's modules one by one (desk/bus/, desk/core/, desk/*.py...),
    it lists every one of them."""
    listed: dict[Path, set[Path]] = {}
    for entry in layout_entries():
        if entry.endswith((".py", ".py(i)")):
            for path in _glob(entry):
                listed.setdefault(path.parent, set()).add(path)
    assert listed, "the layout lists no modules"
    missing = sorted(
        str(module.relative_to(ROOT))
        for folder, modules in listed.items()
        for module in folder.glob("*.py")
        if module.name != "__init__.py" and module not in modules
    )
    assert not missing, f"modules docs/architecture.md's layout leaves out: {missing}"


# --- (c) the id patterns ------------------------------------------------------------------------------


def _bare(pattern: re.Pattern[str]) -> str:
    return pattern.pattern.removeprefix("^").removesuffix("$")


@pytest.mark.parametrize(
    ("sentence", "pattern"),
    [
        (r"Symbols[^`]*`([^`]+)`", subjects.SYMBOL_RE),
        (r"client order ids `([^`]+)`", subjects.CLIENT_ORDER_ID_RE),
        (r"`strategy_id` = the strategy's folder name, `([^`]+)`", subjects.STRATEGY_ID_RE),
    ],
)
def test_the_doc_states_the_patterns_the_code_checks(sentence: str, pattern: re.Pattern[str]) -> None:
    stated = re.findall(sentence, doc())
    assert stated, f"docs/architecture.md no longer states {sentence!r}"
    assert set(stated) == {_bare(pattern)}


def test_the_doc_states_no_symbol_pattern_with_a_dot() -> None:
    assert "[A-Z][A-Z0-9.]" not in doc()


# --- (d) every variable the prose names is one the code reads -------------------------------------------

#: Prefixes of the services' settings: a backticked name with one of them names a setting.
SETTING_PREFIXES = ("NATS_", "LOG_", "MD_", "ROUTER_", "SIM_", "GATEWAY_", "ALPACA_", "LEDGER_", "ORCH_", "DASHBOARD_")
#: compose.yaml's own variables (it passes them on to the services under their settings' names).
COMPOSE_VARIABLES = {"FEED", "BROKER"}


def _read_outside_settings() -> set[str]:
    """The variables the SDK, desk_client and the CLI read themselves (not through a settings class)."""
    found: set[str] = set()
    for root in SOURCE_ROOTS:
        for path in (ROOT / root).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            found.update(re.findall(r'(?:environ|env)(?:\.get\(|\[)\s*"([A-Z][A-Z0-9_]+)"', text))
            found.update(re.findall(r'envvar="([A-Z][A-Z0-9_]+)"', text))
    return found


def test_the_variables_the_doc_names_exist() -> None:
    text = envtable.splice(doc(), "")  # the prose only: the generated tables are checked above
    known = (
        {
            name
            for _title, cls in envtable.settings_classes()
            for field, info in cls.model_fields.items()
            for name in envtable.env_names(cls, field, info)
        }
        | _read_outside_settings()
        | COMPOSE_VARIABLES
    )
    wrong = []
    for name, wildcard, value in re.findall(r"`([A-Z][A-Z0-9_]*?)(_\*)?(=[^`]*)?`", text):
        if wildcard:
            if not any(k.startswith(name + "_") for k in known):
                wrong.append(name + "_*")
        elif (value or name.startswith(SETTING_PREFIXES)) and name not in known:
            wrong.append(name)
    assert not wrong, f"docs/architecture.md names variables nothing reads: {sorted(set(wrong))}"
