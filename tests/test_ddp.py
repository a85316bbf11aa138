"""Multi-GPU training (torchrun, issue 3 item 6), checked on the CPU with the gloo backend.

The main check: 2 processes of `torchrun -m mura_aug train` at batch 4 (2 images each) against 1 process at
batch 4 with --batch-gpu 2 (two passes of 2). Every random draw is keyed by (seed, iteration, phase, chunk
number in the whole batch), the data order comes from one sampler every rank runs in full, and one process
sums each pass's gradient as a whole, so both runs compute the same chunks and add them in the same order:
a + b on one process, a + b by the 2-rank all_reduce (float addition of two numbers is commutative). So the
comparison is exact, not allclose: a tolerance would hide a wrong gradient scale, which Adam all but cancels.
Both runs use one CPU thread (torchrun sets OMP_NUM_THREADS=1; the in-process run sets torch's), because
oneDNN's reductions may depend on the thread count.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mura_aug.errors import UserError
from mura_aug.gan import rng
from mura_aug.gan import snapshot as snap
from mura_aug.gan.distributed import distributed_device, per_rank_batch, torchrun_environment
from mura_aug.gan.loop import without_timings
from mura_aug.workspace import Workspace

from gan_training import train_tiny  # noqa: E402  (tests/ is on sys.path)

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "ddp_worker.py"
TICK_KIMG = 0.008  # 2 iterations of 4 images
RUN = "XR_SHOULDER-both-tiny-16"
TRAIN_OPTIONS = ["--label", "both", "--cfg", "tiny", "--resolution", "16", "--kimg-per-tick", str(TICK_KIMG),
                 "--snap", "1", "--batch", "4", "--batch-gpu", "2", "--device", "cpu", "--no-progress"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(workspace: Workspace, report_dir: Path, options, processes: int = 2, timeout: float = 180):
    """Run tests/ddp_worker.py (= python -m mura_aug train) under torchrun; (completed process, reports)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(processes),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(WORKER), str(report_dir),
               str(workspace.root), *options]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    reports = {}
    for rank in range(processes):
        path = report_dir / f"rank{rank}.json"
        reports[rank] = json.loads(path.read_text()) if path.exists() else None
    return done, reports


@pytest.fixture(scope="module")
def workspaces(prepared_workspace, tmp_path_factory):
    """Two copies of a workspace holding both classes (stage 01's output on the demo tree)."""
    base = tmp_path_factory.mktemp("ddp")
    source = prepared_workspace.root
    copies = []
    for name in ("one_process", "two_processes"):
        shutil.copytree(source, base / name, ignore=shutil.ignore_patterns("experiments"))
        copies.append(Workspace(base / name).ensure())
    return copies


@pytest.fixture(scope="module")
def two_runs(workspaces, tmp_path_factory):
    """The same training: 1 process straight to 2 ticks; 2 torchrun processes to 1 tick, then resumed by 2
    processes to 2 ticks (so every rank reads the state)."""
    one_ws, two_ws = workspaces
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = train_tiny(one_ws, "both", kimg=2 * TICK_KIMG, batch_gpu=2)
    finally:
        torch.set_num_threads(threads)
    reports_root = tmp_path_factory.mktemp("reports")
    first, first_reports = torchrun(two_ws, reports_root / "first", ["--kimg", str(TICK_KIMG), *TRAIN_OPTIONS])
    assert first.returncode == 0, first.stderr[-3000:]
    second, second_reports = torchrun(two_ws, reports_root / "second",
                                      ["--kimg", str(2 * TICK_KIMG), "--resume", "latest", *TRAIN_OPTIONS])
    assert second.returncode == 0, second.stderr[-3000:]
    return one, two_ws.experiments / RUN, [first_reports, second_reports], second


def test_two_processes_train_exactly_like_one(two_runs):
    one, two, _, _ = two_runs
    one_stats, two_stats = snap.read_stats(one), snap.read_stats(two)
    assert [line["kimg"] for line in two_stats] == pytest.approx([TICK_KIMG, 2 * TICK_KIMG])
    assert [line["tick"] for line in two_stats] == [1, 2]
    assert without_timings(two_stats) == without_timings(one_stats)  # losses, ADA p, r_t: equal, not close
    assert any("pl_penalty" in line for line in two_stats) and any("loss_r1" in line for line in two_stats)
    one_state = snap.load_state(snap.list_snapshots(one)[-1].state_path)
    two_state = snap.load_state(snap.list_snapshots(two)[-1].state_path)
    for key in ("G_ema", "G", "D"):
        for name, tensor in one_state[key].items():
            assert torch.equal(tensor, two_state[key][name]), f"{key}.{name} differs between 1 and 2 processes"
    assert one_state["ada"] == two_state["ada"] and one_state["augment_p"] == two_state["augment_p"]
    assert torch.equal(one_state["loss"]["pl_mean"], two_state["loss"]["pl_mean"])
    assert one_state["progress"]["cur_nimg"] == two_state["progress"]["cur_nimg"] == 16
    options = json.loads((two / "training_options.json").read_text())
    assert options["world_size"] == 2 and options["batch_per_rank"] == 2 and options["batch_size"] == 4
    assert [entry["world_size"] for entry in options["history"]] == [2, 2]


def test_only_rank_0_writes_and_prints(two_runs):
    _, two, all_reports, second = two_runs
    for reports in all_reports:
        assert reports[0]["status"] == 0 and reports[1]["status"] == 0
        assert reports[1]["writes"] == [], "rank 1 wrote into the workspace"
        assert reports[1]["stdout"] == ""
        rank0_paths = {Path(path).name for _, path in reports[0]["writes"]}
        assert "stats.jsonl" in rank0_paths  # the audit does see rank 0's writes
    assert "2 processes (GPUs): 2 images each" in second.stdout
    assert second.stdout.count("tick 2 ") == 1  # one stats line printed, by rank 0
    assert not list(two.glob(".*.tmp")) and not (two / snap.LOCK_NAME).exists()


def test_an_error_on_rank_0_stops_every_rank(workspaces, tmp_path):
    """Rank 0 finds the run locked by a live process; rank 1 must not wait for it forever."""
    _, two_ws = workspaces
    workspace = Workspace(tmp_path / "ws")
    shutil.copytree(two_ws.root, workspace.root, ignore=shutil.ignore_patterns("experiments"))
    run_dir = workspace.experiments / RUN
    run_dir.mkdir(parents=True)
    (run_dir / snap.LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                      "started": "now"}))
    started = time.time()
    done, reports = torchrun(workspace, tmp_path / "reports", ["--kimg", str(TICK_KIMG), *TRAIN_OPTIONS],
                             timeout=120)
    assert done.returncode != 0 and time.time() - started < 120
    assert reports[0]["status"] == 2 and reports[1]["status"] == 2
    assert "Another training process is writing" in done.stderr
    assert "Another process of this multi-GPU run stopped" in done.stderr
    assert not snap.list_snapshots(run_dir)


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_stopping_torchrun_ends_every_rank_with_a_final_state(workspaces, tmp_path, how):
    """Ctrl-C in the terminal (SIGINT to the whole process group) or `kill` of torchrun (torchrun passes
    SIGTERM on to its workers): the ranks finish the same iteration and rank 0 writes the final state."""
    import signal

    _, two_ws = workspaces
    workspace = Workspace(tmp_path / "ws")
    shutil.copytree(two_ws.root, workspace.root, ignore=shutil.ignore_patterns("experiments"))
    report_dir = tmp_path / "reports"
    report_dir.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(WORKER), str(report_dir),
               str(workspace.root), "--kimg", "1000", *TRAIN_OPTIONS, "--snap", "100000"]
    process = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    stats = workspace.experiments / RUN / "stats.jsonl"
    deadline = time.time() + 120
    while not (stats.exists() and len(stats.read_text().splitlines()) >= 2) and time.time() < deadline:
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()[0][-3000:]
    if how == "ctrl-c":
        os.killpg(process.pid, signal.SIGINT)
    else:
        os.kill(process.pid, signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    reports = {rank: json.loads((report_dir / f"rank{rank}.json").read_text()) for rank in (0, 1)}
    assert reports[0]["status"] == 130 and reports[1]["status"] == 130, output[-3000:]  # an interrupt, saved
    assert reports[1]["writes"] == []
    assert "the final state is saved" in output
    last = snap.read_stats(workspace.experiments / RUN)[-1]
    assert last["stop_reason"] == "interrupted"
    newest = snap.list_snapshots(workspace.experiments / RUN)[-1]
    assert newest.kimg == pytest.approx(last["kimg"])
    state = snap.load_state(newest.state_path)
    assert state["progress"]["cur_nimg"] == round(last["kimg"] * 1000)


def test_batch_split_over_ranks_is_checked():
    assert per_rank_batch(32, 4) == (8, 8)
    assert per_rank_batch(32, 4, batch_gpu=4) == (8, 4)
    assert per_rank_batch(8, 1, batch_gpu=16) == (8, 8)
    with pytest.raises(UserError, match="cannot be split evenly over 4") as info:
        per_rank_batch(6, 4)
    assert "4, 8, 12, 16" in info.value.fix
    with pytest.raises(UserError, match="Each of the 2 processes gets 6 images") as info:
        per_rank_batch(12, 2, batch_gpu=4)
    assert "1, 2, 3, 6" in info.value.fix


def test_torchrun_environment_and_device():
    assert torchrun_environment({}) is None
    assert torchrun_environment({"WORLD_SIZE": "1", "RANK": "0"}) is None
    assert torchrun_environment({"WORLD_SIZE": "4", "RANK": "5", "LOCAL_RANK": "1"}) == \
        {"rank": 5, "world_size": 4, "local_rank": 1}
    with pytest.raises(UserError, match="torchrun"):
        torchrun_environment({"WORLD_SIZE": "2"})
    assert distributed_device(None, 1, 2) == ("cuda:1", "nccl")
    assert distributed_device(None, 0, 0) == ("cpu", "gloo")
    assert distributed_device("cpu", 3, 8) == ("cpu", "gloo")
    with pytest.raises(UserError, match="--nproc_per_node 2"):
        distributed_device("cuda", 2, 2)
    with pytest.raises(UserError, match="cuda:LOCAL_RANK"):
        distributed_device("cuda:1", 0, 2)


def test_latents_do_not_depend_on_the_rank_that_draws_them():
    labels = np.array([0, 1, 1, 1])
    z, c = rng.draw_latents(7, 3, 4, 8, 5, 2, labels)
    again_z, again_c = rng.draw_latents(7, 3, 4, 8, 5, 2, labels)
    assert torch.equal(z, again_z) and torch.equal(c, again_c) and z.shape == (4, 8, 5)
    assert torch.equal(c.sum(dim=2), torch.ones(4, 8))  # one-hot
    other_z, _ = rng.draw_latents(7, 4, 4, 8, 5, 2, labels)
    assert not torch.equal(z, other_z)  # another iteration, other latents
    seeds = {rng.derived_seed(0, it, 1, phase, chunk) for it in range(3) for phase in range(4) for chunk in range(4)}
    assert len(seeds) == 48 and max(seeds) < 2 ** 63


def test_one_process_agreement_passes_errors_on_unchanged():
    from mura_aug.gan.distributed import Distributed

    dist = Distributed(torch.device("cpu"))  # no process group: one process
    assert (dist.rank, dist.world_size, dist.is_writer, dist.enabled) == (0, 1, True, False)
    with dist.agreement():
        done = True
    assert done
    with pytest.raises(UserError, match="run folder is locked"):
        with dist.agreement():
            raise UserError("The run folder is locked.")
