"""scripts/setup.sh as a new user on a stock Debian/Ubuntu runs it: only the system PATH, nothing activated."""
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def bare_env() -> dict[str, str]:
    """What `env -i` leaves plus the system PATH: no pyenv, no conda, no VIRTUAL_ENV."""
    env = {"PATH": SYSTEM_PATH, "HOME": os.environ.get("HOME", "/root")}
    env.update({k: v for k, v in os.environ.items() if k.startswith("OPENBLAS_")})
    return env


@pytest.mark.skipif(not (REPO / ".venv" / "bin" / "python").exists(), reason="no .venv: set up with scripts/setup.sh")
def test_setup_again_with_only_the_system_path_reuses_venv_and_reports() -> None:
    result = subprocess.run(["bash", "scripts/setup.sh"], cwd=REPO, env=bare_env(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("setup: using .venv") for line in lines), result.stdout
    report = next(line for line in lines if line.startswith("setup: ok"))
    for field in ("python ", "torch ", "ffcv 1.0.2", "cuda ", "GPUs "):
        assert field in report, report
    assert lines[-1].startswith("setup: next: .venv/bin/python "), lines[-1]
    imported = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-c",
                               "import ffcv, ffcv_imagenet, fastargs; print(ffcv_imagenet.__file__)"],
                              cwd="/", env=bare_env(), capture_output=True, text=True, timeout=300)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip().startswith(str(REPO / "ffcv_imagenet")), imported.stdout
    launcher = subprocess.run([str(REPO / ".venv" / "bin" / "torchrun"), "--help"], env=bare_env(),
                              capture_output=True, text=True, timeout=300)
    assert launcher.returncode == 0 and "nproc" in launcher.stdout, launcher.stderr


def test_setup_refuses_a_venv_folder_it_would_have_to_replace(tmp_path: Path) -> None:
    """An active environment with a real .venv folder in the way: one line, exit 1, nothing removed."""
    copy = tmp_path / "repo"
    (copy / "scripts").mkdir(parents=True)
    (copy / "scripts" / "setup.sh").write_text((REPO / "scripts" / "setup.sh").read_text())
    (copy / ".venv").mkdir()
    (copy / ".venv" / "keep").write_text("mine")
    env = bare_env() | {"VIRTUAL_ENV": str(tmp_path / "other-env")}
    result = subprocess.run(["bash", "scripts/setup.sh"], cwd=copy, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("setup: error: .venv exists and is not a link")
    assert (copy / ".venv" / "keep").read_text() == "mine"
