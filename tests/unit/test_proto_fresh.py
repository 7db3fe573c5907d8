"""The checked-in generated code is exactly what `make proto` makes from protos/."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_protobuf_code_matches_the_proto_files(tmp_path: Path) -> None:
    protos = sorted((ROOT / "protos").rglob("*.proto"))
    assert protos, "no .proto files found"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'protos'}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            *[str(p) for p in protos],
        ],
        check=True,
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2.py*"))
    checked_in = sorted(p.relative_to(ROOT) for p in (ROOT / "desk" / "v1").glob("*_pb2.py*"))
    assert generated == checked_in, "generated files differ in name: run `make proto`"
    stale = [str(p) for p in generated if not filecmp.cmp(tmp_path / p, ROOT / p, shallow=False)]
    assert not stale, f"stale generated code, run `make proto`: {stale}"
