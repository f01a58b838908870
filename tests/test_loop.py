"""The loop and the experiments on it: tables, one-line refusals, resume after a kill, baselines, the plot."""
import argparse
import json
import os
import signal
import subprocess
import sys

import pytest

from loop import add_loop_flags, fill_model_defaults
from tests.conftest import ROOT


def test_mean_std_table_over_seeds():
    from report import mean_std_table
    rows = [{"stage": "sft", "split": split, "avg_reward": r, "success_rate": s, "seed": seed}
            for seed, r, s in [(0, 50.0, 10.0), (1, 60.0, 30.0)] for split in ("test_seen", "test_unseen")]
    table = mean_std_table(rows)
    assert table.startswith("mean +- std (population std) over seeds 0, 1")
    assert "| sft | 55.0 +- 5.0 | 20.0 +- 10.0 | 55.0 +- 5.0 | 20.0 +- 10.0 |" in table


def test_experiments_reject_an_unknown_method_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "experiments.py", "--run", str(tmp_path / "r"), "--methods", "sft,dpo"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown method 'dpo'; valid methods: sft, eto, bon, rft, self-play" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "r").exists()


def test_loop_refuses_zero_processes_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "loop.py", "--run", str(tmp_path / "r"), "--procs", "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--procs must be at least 1, got 0" in done.stderr and "Traceback" not in done.stderr


def test_self_play_without_demos_needs_a_chat_model(tmp_path):
    done = subprocess.run([sys.executable, "experiments.py", "--run", str(tmp_path / "r"), "--methods", "sft,self-play",
                           "--self-play-demos", "0"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "the tiny model needs demos" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "r").exists()


LOOP = [sys.executable, "loop.py", "--train-limit", "8", "--eval-limit", "2", "--sft-epochs", "1", "--iterations", "1",
        "--dpo-epochs", "1", "--max-steps", "2"]


def read_rows(run):
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "model"} for row in rows]  # the model path names the run


@pytest.mark.slow
def test_loop_runs_and_resume_skips_finished_stages(tmp_path):
    command = LOOP + ["--run", str(tmp_path / "run")]
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "$ explore.py" in first.stdout and "[done]" not in first.stdout
    rows = read_rows(tmp_path / "run")
    assert {(r["stage"], r["split"]) for r in rows} == {(s, split) for s in ("sft", "eto-1", "sft-continued-1")
                                                        for split in ("test_seen", "test_unseen")}
    assert all(r["n"] == 2 for r in rows)
    assert (tmp_path / "run" / "report.html").exists() and (tmp_path / "run" / "eval" / "expert.test_unseen.jsonl").exists()
    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    reran = [line for line in second.stdout.splitlines() if line.startswith("$ ")]
    assert second.returncode == 0 and reran == [f"$ report.py --run {tmp_path / 'run'}"]  # the page is always rewritten
    assert second.stdout.count("[done]") >= 10
    assert read_rows(tmp_path / "run") == rows

    # killed mid-stage (the DPO stage, with its child process), then rerun: it resumes to the same results
    killed_run = tmp_path / "killed"
    loop = subprocess.Popen(LOOP + ["--run", str(killed_run)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    for line in loop.stdout:
        if line.startswith("$ dpo.py"):
            break
    os.killpg(loop.pid, signal.SIGKILL)
    loop.wait()
    assert not (killed_run / "iter1" / "model").exists() and not (killed_run / "results.jsonl").exists()
    resumed = subprocess.run(LOOP + ["--run", str(killed_run)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "[done] explore.py" in resumed.stdout and "$ dpo.py" in resumed.stdout
    assert read_rows(killed_run) == rows


@pytest.mark.slow
def test_experiments_baselines_best_of_n_and_rft_write_their_rows(tmp_path):
    command = [sys.executable, "experiments.py"] + ["--run", str(tmp_path / "run"), "--methods", "sft,bon,rft", "--train-limit", "8",
                          "--eval-limit", "2", "--sft-epochs", "1", "--max-steps", "2", "--bon-n", "2",
                          "--rft-samples", "2", "--rft-epochs", "1", "--seeds", "0"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = read_rows(tmp_path / "run")
    assert {(r["stage"], r["split"]) for r in rows} == {(s, split) for s in ("sft", "best-of-2", "rft")
                                                        for split in ("test_seen", "test_unseen")}
    assert (tmp_path / "run" / "results.md").read_text().startswith("mean +- std (population std) over seeds 0")
    rft_data = json.loads((tmp_path / "run" / "seed0" / "rft" / "model" / "args.json").read_text())["args"]["data"]
    assert rft_data[0].endswith("expert.jsonl")


@pytest.mark.slow
def test_experiments_later_iterations_and_self_play(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "experiments.py"] + ["--run", str(run), "--methods", "sft,eto,self-play", "--train-limit", "8", "--eval-limit", "2",
                          "--sft-epochs", "1", "--max-steps", "2", "--iterations", "2", "--dpo-epochs", "1",
                          "--later-beta", "0.5", "--later-dpo-lr", "5e-7", "--no-control", "--self-play-demos", "4",
                          "--self-play-epochs", "1", "--self-play-tasks", "3", "--self-play-samples", "2"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    settings = [json.loads((run / f"iter{i}" / "model" / "args.json").read_text())["args"] for i in (1, 2)]
    assert [(a["beta"], a["lr"]) for a in settings] == [(1.0, 1e-4), (0.5, 5e-7)]
    # the start model learns from 4 demos; with 2 steps per episode nothing succeeds, which is said, not hidden
    sampled = (run / "self-play" / "rft-explore.jsonl").read_text().splitlines()
    assert sorted({json.loads(line)["task_id"] for line in sampled}) == ["train-4", "train-5", "train-6"]
    assert "self-play: the start model succeeded on no train task" in done.stdout
    assert {r["stage"] for r in read_rows(run)} == {"sft", "eto-1", "eto-2", "self-play-start"}


@pytest.mark.parametrize("flags, expected", [
    ([], {"pair_level": "divergence", "dpo_lr": 1e-4, "beta": 1.0, "dpo_epochs": 2, "sft_weight": 1.0, "sft_lr": None}),
    (["--model", "path/to/chat-model"],
     {"pair_level": "trajectory", "dpo_lr": 1e-6, "beta": 0.1, "dpo_epochs": 3, "sft_weight": 0.0, "sft_lr": None}),
    (["--model", "path/to/chat-model", "--beta", "0.5", "--sft-lr", "2e-5"],
     {"pair_level": "trajectory", "dpo_lr": 1e-6, "beta": 0.5, "dpo_epochs": 3, "sft_weight": 0.0, "sft_lr": 2e-5}),
])
def test_loop_defaults_fit_the_model_and_a_given_flag_wins(flags, expected):
    parser = argparse.ArgumentParser()
    add_loop_flags(parser)
    args = parser.parse_args(flags)
    fill_model_defaults(args)
    assert {name: getattr(args, name) for name in expected} == expected  # sft_lr None: sft.py picks by model
