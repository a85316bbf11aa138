"""bench/gpu_check.py, the one-command GPU check (issue 17), without a GPU: its --cpu-smoke run goes through
every part at tiny sizes on the CPU, a failing part ends it with one clear line and exit status 1, and on a
machine without CUDA the GPU run says so instead of starting."""
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, str(SCRIPT.parent))
    import gpu_check

    return gpu_check


def test_cpu_smoke_runs_every_part_and_writes_the_results_file(gpu_check, tmp_path, capsys):
    assert gpu_check.main(["--cpu-smoke", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("gpu_check: OK")
    for part in ("(a)", "(b)", "(c)", "(d)", "(f)"):
        assert f"] {part} " in out, part  # each part printed its progress
    text = (tmp_path / "gpu_cpu_smoke.md").read_text()
    for heading in ("## (a) GPU tests", "## (b) Training `tiny` at 16 px", "## (c) Generation",
                    "## (d) Stage 06 classifier", "## Our CPU figures", "## (f) Where the time goes"):
        assert heading in text, heading
    assert "skipped" in text  # (a): the GPU tests skip cleanly without CUDA
    for precision in ("fp32 (amp off)", "fp16 (amp fp16)", "bf16 (amp bf16)"):  # every precision trained
        row = next(line for line in text.splitlines() if line.startswith(f"| {precision} |"))
        assert "| yes |" in row, row  # finite losses
    assert "21.6-24.2 s/kimg" in text  # NVIDIA's V100 figure, from bench_networks (one owner)
    assert "bench/results/train_cpu.md" in text


def test_a_failing_part_ends_with_one_clear_line_and_status_1(gpu_check, tmp_path, capsys, monkeypatch):
    def out_of_order(*args, **kwargs):
        raise RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR")

    monkeypatch.setattr(torch.nn.functional, "conv2d", out_of_order)
    assert gpu_check.main(["--cpu-smoke", "--out", str(tmp_path), "--parts", "d"]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == "gpu_check: FAILED (d) RuntimeError: cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"
    assert "FAILED: (d) RuntimeError" in (tmp_path / "gpu_cpu_smoke.md").read_text()  # what ran is written


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_without_cuda_the_gpu_run_says_so_and_what_to_do(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    assert done.stdout.strip().splitlines()[-1].startswith("gpu_check: FAILED (setup): PyTorch sees no CUDA GPU")
    assert "--cpu-smoke" in done.stdout and not list(tmp_path.iterdir())


def test_steady_state_leaves_out_the_warm_up_tick_and_a_tick_the_clock_cut(gpu_check):
    lines = [{"kimg": 0.064, "sec_per_tick": 55.0},  # warm-up: cuDNN's search, kernel loading
             {"kimg": 0.128, "sec_per_tick": 0.5}, {"kimg": 0.192, "sec_per_tick": 1.5},  # one with R1 in it
             {"kimg": 0.200, "sec_per_tick": 9.0, "partial": True}]  # cut by max_minutes
    timed = gpu_check.timed_ticks(lines)
    assert timed["timed_ticks"] == 2 and timed["warmup_s"] == 55.0
    assert timed["s_per_kimg"] == pytest.approx(2.0 / 0.128)  # a mean over kimg, not a median of ticks
    assert gpu_check.timed_ticks(lines[:1] + lines[3:])["s_per_kimg"] is None  # nothing after the warm-up


def test_gpu_tests_stopped_by_the_budget_still_say_what_passed(gpu_check, tmp_path, monkeypatch):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_gpu.py").write_text(
        "import time\nimport pytest\n\n"
        "@pytest.mark.gpu\ndef test_quick():\n    assert True\n\n"
        "@pytest.mark.gpu\ndef test_broken():\n    assert False\n\n"
        "@pytest.mark.gpu\ndef test_endless():\n    time.sleep(120)\n")
    monkeypatch.setattr(gpu_check, "REPO_ROOT", tmp_path)
    started = time.perf_counter()
    result = gpu_check.part_a(gpu_check.CPU_SMOKE_SIZES, 10)
    assert time.perf_counter() - started < 60  # stopped at its limit, not after the endless test
    assert result["outcomes"] == {"test_quick": "PASSED", "test_broken": "FAILED"}
    assert "did not finish within 10 s" in result["error"]
    assert "1 passed, 1 failed" in result["summary"] and "test_endless was running" in result["summary"]
