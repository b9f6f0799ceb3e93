"""benchmarks/gpu_check.py --smoke: the GPU host's one command, run end to end on the CPU with tiny sizes."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from helpers import REPO, explain, run

CHECK = REPO / "benchmarks" / "gpu_check.py"
PHASES = ["data", "tests", "ours_fp32", "ours_bf16", "theirs"]
# smoke sizes: fp32 at every size (fp16 needs a GPU), bf16 at the smallest
MEASURED = [(32, "fp32", "rrc"), (48, "fp32", "rrc"), (64, "fp32", "fixres"), (32, "bf16", "rrc")]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("gpu_check")
    result = run([sys.executable, str(CHECK), "--smoke", "--out", str(out / "out"), "--data", str(out / "data")])
    assert result.returncode == 0, explain(result)
    return out / "out", json.loads((out / "out" / "gpu_check.json").read_text()), result.stdout


@pytest.mark.slow
def test_every_phase_ran_and_the_gpu_tests_skipped_saying_why(smoke: tuple) -> None:
    out, report, _ = smoke
    assert [phase["name"] for phase in report["phases"]] == PHASES
    assert all(phase["ok"] and phase["seconds"] > 0 for phase in report["phases"]), report["phases"]
    tests = next(phase for phase in report["phases"] if phase["name"] == "tests")
    assert "skipped" in tests["last_line"] and "passed" not in tests["last_line"]  # no GPU: every gpu test skips
    assert "needs CUDA: no GPU visible here" in (out / tests["log"]).read_text()
    assert report["smoke"] and not report["setup"]["cuda"] and report["data"]["images"] == 96
    for name in ("ours_fp32", "ours_bf16", "theirs"):
        assert (out / f"{name}.json").is_file() and (out / "logs" / f"{name}.txt").is_file()


@pytest.mark.slow
def test_rows_put_ours_theirs_and_the_bare_step_side_by_side(smoke: tuple) -> None:
    out, report, _ = smoke
    rows = report["rows"]
    assert [(row["res"], row["precision"], row["ours"]["crop_mode"]) for row in rows] == MEASURED
    theirs = json.loads((out / "theirs.json").read_text())
    shapes = {(row["precision"], row["res"]): row["batch_shape"] for row in theirs["rows"]}
    for row in rows:
        ours, their = row["ours"], row["theirs"]
        assert their["crop_mode"] == "rrc" and shapes[(row["precision"], row["res"])] == [8, 3, row["res"], row["res"]]
        for figures in (ours, their):
            assert min(figures["loader"], figures["model"], figures["end_to_end"]) > 0
            assert figures["ratio"] == pytest.approx(figures["end_to_end"] / min(figures["loader"], figures["model"]))
            assert figures["bottleneck"] == ("loader" if figures["loader"] <= figures["model"] else "model")
        assert row["ours_vs_theirs"] == pytest.approx(ours["end_to_end"] / their["end_to_end"])
        assert row["our_step_vs_bare"] == pytest.approx(ours["model"] / row["bare_step"])


def table_rows(table: str, heading: str) -> list[list[str]]:
    """The cells of the markdown table under ``## heading`` (its header and rule left out)."""
    section = table.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


@pytest.mark.slow
def test_markdown_table_matches_the_json(smoke: tuple) -> None:
    out, report, stdout = smoke
    table = (out / "gpu_check.md").read_text()
    assert table in stdout
    side_rows = table_rows(table, "Side by side")
    summary_rows = table_rows(table, "What our step adds, and the targets")
    assert len(side_rows) == 3 * len(report["rows"]) and len(summary_rows) == len(report["rows"])
    for index, row in enumerate(report["rows"]):
        ours, theirs, bare = side_rows[3 * index: 3 * index + 3]
        assert ours[:4] == [str(row["res"]), row["precision"], "ours", row["ours"]["crop_mode"]]
        assert float(ours[6]) == pytest.approx(row["ours"]["end_to_end"], abs=0.5)
        assert float(ours[7]) == pytest.approx(row["ours"]["ratio"], abs=5e-4) and ours[8] == row["ours"]["bottleneck"]
        assert theirs[2] == "ffcv-imagenet style"
        assert float(theirs[6]) == pytest.approx(row["theirs"]["end_to_end"], abs=0.5)
        assert bare[2] == "bare step" and float(bare[5]) == pytest.approx(row["bare_step"], abs=0.5)
        cells = summary_rows[index]
        assert cells[:2] == [str(row["res"]), row["precision"]]
        assert float(cells[2]) == pytest.approx(row["ours_vs_theirs"], abs=5e-4)
        assert float(cells[3]) == pytest.approx(row["ours"]["ratio"], abs=5e-4)
        assert float(cells[4]) == pytest.approx(row["our_step_vs_bare"], abs=5e-4)
