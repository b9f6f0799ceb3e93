"""benchmarks/gpu_check.py --smoke: the GPU host's one command, run end to end on the CPU with tiny sizes:
the phase order, the report after every phase, the budget stop, the output files, the no-CUDA stop."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, cpu_env, explain, run

CHECK = REPO / "benchmarks" / "gpu_check.py"
# issue 26's order: the headline (fp32 in place of fp16 on a CPU, at the first size) before the tests
PHASES = ["preflight", "data", "ours_fp32_32", "theirs_fp32_32", "tests", "ours_fp32_48_64", "theirs_fp32_48_64",
          "ours_bf16_32", "theirs_bf16_32"]
# smoke sizes: fp32 at every size (fp16 needs a GPU), bf16 at the smallest
MEASURED = [(32, "fp32", "rrc"), (48, "fp32", "rrc"), (64, "fp32", "fixres"), (32, "bf16", "rrc")]
OUTPUT_FILES = {"gpu_check.json", "gpu_check.md", "gpu_check.log"}
MAX_OUTPUT_FILES = 8
SMOKE_IMAGES = 300  # above the 250 images per task of the generator: its spawn pool runs
POLL_S = 0.2


def watch_reports(command: list[str], report: Path,
                  timeout: float = 1200) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """Run ``command``, reading ``report`` as it is rewritten: (the finished process, each distinct report)."""
    folder = report.parent.parent
    with open(folder / "stdout.txt", "w+") as stdout, open(folder / "stderr.txt", "w+") as stderr:
        process = subprocess.Popen(command, cwd=REPO, env=cpu_env(), stdout=stdout, stderr=stderr, text=True)
        seen: list[dict] = []
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            if report.is_file():
                current = json.loads(report.read_text())  # written to a temp name and renamed: always whole
                if not seen or current["phases"] != seen[-1]["phases"]:
                    seen.append(current)
            time.sleep(POLL_S)
        if process.poll() is None:
            process.kill()
        code = process.wait()
        if report.is_file() and (not seen or json.loads(report.read_text())["phases"] != seen[-1]["phases"]):
            seen.append(json.loads(report.read_text()))  # the last one, written just before the end
        stdout.seek(0), stderr.seek(0)
        return subprocess.CompletedProcess(command, code, stdout.read(), stderr.read()), seen


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str, list[dict], Path]:
    """(OUT, the final report, stdout, every report seen while it ran, the data folder)."""
    folder = tmp_path_factory.mktemp("gpu_check")
    out = folder / "out"
    command = [sys.executable, str(CHECK), "--smoke", "--out", str(out), "--data", str(folder / "data")]
    result, seen = watch_reports(command, out / "gpu_check.json")
    assert result.returncode == 0, explain(result)
    return out, json.loads((out / "gpu_check.json").read_text()), result.stdout, seen, folder / "data"


@pytest.mark.slow
def test_phases_run_in_order_and_the_gpu_tests_skipped_saying_why(smoke: tuple) -> None:
    out, report, _, _, _ = smoke
    assert [phase["name"] for phase in report["phases"]] == PHASES and report["skipped"] == {}
    assert all(phase["ok"] and phase["seconds"] > 0 for phase in report["phases"]), report["phases"]
    facts = report["preflight"]
    assert not facts["cuda"] and facts["cores"] >= 1 and facts["numba_threading_layer"] in ("tbb", "omp", "workqueue")
    assert facts["cupy"].startswith(("ok", "fails"))
    tests = next(phase for phase in report["phases"] if phase["name"] == "tests")
    assert "skipped" in tests["last_line"] and "passed" not in tests["last_line"]  # no GPU: every gpu test skips
    log = (out / "gpu_check.log").read_text()
    # both GPU test files ran, each skipping with its reason
    assert "test_gpu.py" in log and "needs CUDA: no GPU visible here" in log
    assert "test_gpu_path.py" in log and "needs a CUDA GPU" in log
    # one log, the phases in order
    assert [log.index(f"===== {name} ") for name in PHASES] == sorted(log.index(f"===== {name} ") for name in PHASES)


@pytest.mark.slow
def test_data_is_generated_in_the_spawn_pool_and_read_through(smoke: tuple) -> None:
    _, report, _, _, _ = smoke
    data = report["data"]
    assert data["images"] == SMOKE_IMAGES and not data["reused"] and data["generator_processes"] == 2
    assert data["read_bytes"] == Path(data["beton"]).stat().st_size > 0
    images = list((Path(data["beton"]).parent / "images").glob("*/*.JPEG"))
    assert len(images) == SMOKE_IMAGES


@pytest.mark.slow
def test_report_is_rewritten_after_every_phase_headline_first(smoke: tuple) -> None:
    _, report, _, seen, _ = smoke
    assert [[phase["name"] for phase in snapshot["phases"]] for snapshot in seen] == \
           [PHASES[:count] for count in range(1, len(PHASES) + 1)]
    # before the tests ran, the report already held the headline row: ours and theirs at the first size
    headline = seen[PHASES.index("theirs_fp32_32")]
    assert [(row["res"], row["precision"]) for row in headline["rows"]] == [(32, "fp32")]
    assert "theirs" in headline["rows"][0] and (headline["rows"][0] == report["rows"][0])


@pytest.mark.slow
def test_rows_put_ours_theirs_and_the_bare_step_side_by_side(smoke: tuple) -> None:
    _, report, _, _, _ = smoke
    rows = report["rows"]
    assert [(row["res"], row["precision"], row["ours"]["crop_mode"]) for row in rows] == MEASURED
    shapes = {(row["precision"], row["res"]): row["batch_shape"]
              for name, result in report["results"].items() if name.startswith("theirs")
              for row in result["rows"]}
    for row in rows:
        ours, their = row["ours"], row["theirs"]
        assert their["crop_mode"] == "rrc" and shapes[(row["precision"], row["res"])] == [8, 3, row["res"], row["res"]]
        assert row["their_normalize"] == "torch on the device after the loader"  # a CPU: FFCV's path needs CuPy
        for figures in (ours, their):
            assert min(figures["loader"], figures["model"], figures["end_to_end"]) > 0
            assert figures["ratio"] == pytest.approx(figures["end_to_end"] / min(figures["loader"], figures["model"]))
            assert figures["bottleneck"] == ("loader" if figures["loader"] <= figures["model"] else "model")
        assert row["loader_ours_vs_theirs"] == pytest.approx(ours["loader"] / their["loader"])
        assert row["ours_vs_theirs"] == pytest.approx(ours["end_to_end"] / their["end_to_end"])
        assert row["our_step_vs_bare"] == pytest.approx(ours["model"] / row["bare_step"])


def table_rows(table: str, heading: str) -> list[list[str]]:
    """The cells of the markdown table under ``## heading`` (its header and rule left out)."""
    section = table.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


@pytest.mark.slow
def test_markdown_table_matches_the_json(smoke: tuple) -> None:
    out, report, stdout, _, _ = smoke
    table = (out / "gpu_check.md").read_text()
    assert table in stdout
    headline_rows = table_rows(table, "Headline")
    side_rows = table_rows(table, "Side by side")
    assert len(side_rows) == 3 * len(report["rows"]) and len(headline_rows) == len(report["rows"])
    for index, row in enumerate(report["rows"]):
        cells = headline_rows[index]
        assert cells[:3] == [str(row["res"]), row["precision"], row["ours"]["crop_mode"]]
        assert float(cells[3]) == pytest.approx(row["ours"]["loader"], abs=0.5)
        assert float(cells[4]) == pytest.approx(row["theirs"]["loader"], abs=0.5)
        for cell, value in zip(cells[5:], (row["loader_ours_vs_theirs"], row["ours"]["ratio"],
                                           row["theirs"]["ratio"], row["our_step_vs_bare"], row["ours_vs_theirs"])):
            assert float(cell) == pytest.approx(value, abs=5e-4)
        ours, theirs, bare = side_rows[3 * index: 3 * index + 3]
        assert ours[:4] == [str(row["res"]), row["precision"], "ours", row["ours"]["crop_mode"]]
        assert float(ours[6]) == pytest.approx(row["ours"]["end_to_end"], abs=0.5)
        assert float(ours[7]) == pytest.approx(row["ours"]["ratio"], abs=5e-4) and ours[8] == row["ours"]["bottleneck"]
        assert theirs[2] == "ffcv-imagenet style" and theirs[9] == row["their_normalize"]
        assert float(theirs[6]) == pytest.approx(row["theirs"]["end_to_end"], abs=0.5)
        assert bare[2] == "bare step" and float(bare[5]) == pytest.approx(row["bare_step"], abs=0.5)
    assert "not as a target" in table and f"{report['old_end_to_end_figure']}x" in table


@pytest.mark.slow
def test_at_most_eight_output_files(smoke: tuple) -> None:
    out, _, _, _, _ = smoke
    files = {path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()}
    assert files == OUTPUT_FILES and len(files) <= MAX_OUTPUT_FILES


@pytest.mark.slow
def test_spent_budget_writes_a_partial_report_and_exits_0(smoke: tuple, tmp_path: Path) -> None:
    _, _, _, _, data = smoke
    out = tmp_path / "out"
    result = run([sys.executable, str(CHECK), "--smoke", "--budget-s", "0", "--out", str(out), "--data", str(data)])
    assert result.returncode == 0, explain(result)
    report = json.loads((out / "gpu_check.json").read_text())
    assert [phase["name"] for phase in report["phases"]] == ["preflight"]  # preflight always runs
    assert list(report["skipped"]) == PHASES[1:]
    lines = [line for line in result.stdout.splitlines() if "budget" in line]
    assert len(lines) == 1 and all(name in lines[0] for name in PHASES[1:]), explain(result)
    skipped_rows = [cells for cells in table_rows((out / "gpu_check.md").read_text(), "Phases")
                    if cells[1] == "skipped"]
    assert [cells[0] for cells in skipped_rows] == PHASES[1:]


@pytest.mark.slow
def test_no_cuda_without_smoke_stops_after_preflight_with_one_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run([sys.executable, str(CHECK), "--out", str(out), "--data", str(tmp_path / "data")])
    assert result.returncode == 2, explain(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA device visible"), explain(result)
    report = json.loads((out / "gpu_check.json").read_text())
    assert [phase["name"] for phase in report["phases"]] == ["preflight"] and not (tmp_path / "data").exists()
