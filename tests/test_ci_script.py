"""`.ci/run`: refuses a nearly full disk up front, fails when pytest collected nothing, passes make's status on.

The script runs as CI runs it, from a copy of the repository layout, with `df` and `make` replaced by
stand-ins on PATH (so no install or test run happens here).
"""

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _run(tmp_path: Path, free_kib: int, make_rc: int) -> tuple[subprocess.CompletedProcess, bool]:
    repo, bin_dir = tmp_path / "repo", tmp_path / "bin"
    (repo / ".ci").mkdir(parents=True)
    bin_dir.mkdir()
    shutil.copy(ROOT / ".ci" / "run", repo / ".ci" / "run")
    marker = tmp_path / "make-called"
    _tool(bin_dir, "df", "echo 'Filesystem 1024-blocks Used Available Capacity Mounted on'\n"
                         f"echo '/dev/vda 264000000 1000 {free_kib} 99% /'\n")
    _tool(bin_dir, "make", f"touch {marker}\nexit {make_rc}\n")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    proc = subprocess.run(["bash", str(repo / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60)
    return proc, marker.exists()


def test_a_nearly_full_disk_fails_before_installing(tmp_path):
    proc, made = _run(tmp_path, free_kib=287 * 1024, make_rc=0)
    assert proc.returncode == 1 and not made
    assert "only 287 MiB free" in proc.stderr and "need about 5 GiB" in proc.stderr


@pytest.mark.parametrize("make_rc, expected", [(0, 0), (2, 2), (5, 1)])
def test_make_status_is_the_ci_status_except_no_tests(tmp_path, make_rc, expected):
    proc, made = _run(tmp_path, free_kib=50 * 1024 * 1024, make_rc=make_rc)
    assert made and proc.returncode == expected
    assert ("collected no tests" in proc.stderr) == (make_rc == 5)
