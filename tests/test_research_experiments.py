"""research/experiments.py: what a set of samples is worth to Best-of-N and to RFT, its refusals, and
(slow) the baselines and self-play end to end."""
import json
import subprocess
import sys

import pytest

from research.experiments import best_of_n, distinct_successes, joined_rows
from tests.conftest import ROOT
from tests.test_loop import read_rows


def test_best_of_n_takes_each_tasks_best_sample():
    records = [{"task_id": "a", "reward": r} for r in (0.2, 1.0, 0.5)] + [{"task_id": "b", "reward": r} for r in (0.0, 0.4)]
    assert best_of_n(records) == {"tasks": 2, "avg_reward": 70.0, "success_rate": 50.0}


def test_distinct_successes_keep_one_per_task_and_action_sequence():
    def rec(task_id, reward, actions):
        return {"task_id": task_id, "reward": reward,
                "messages": [{"role": "assistant", "content": f"Thought: {i}\nAction: {a}"} for i, a in enumerate(actions)]}
    records = [rec("a", 1.0, ["x", "y"]), rec("a", 1.0, ["x", "y"]), rec("a", 1.0, ["x", "z"]), rec("a", 0.5, ["w"]),
               rec("b", 1.0, ["x", "y"])]
    kept = distinct_successes(records)
    assert [(r["task_id"], r["messages"][-1]["content"][-1]) for r in kept] == [("a", "y"), ("a", "z"), ("b", "y")]


def test_a_loop_runs_rows_stay_beside_the_methods_run_on_it():
    def row(stage, split, reward, seed=0):
        return {"stage": stage, "split": split, "avg_reward": reward, "seed": seed}
    loop = [row("sft", "dev", 80.0), row("eto-1", "dev", 81.0), row("sft-continued-1", "dev", 82.0)]
    experiments = [row("sft", "dev", 80.5), row("rft", "dev", 85.0), row("sft", "dev", 70.0, seed=1)]
    assert joined_rows(loop, experiments) == [row("sft", "dev", 80.5), row("eto-1", "dev", 81.0),
                                              row("sft-continued-1", "dev", 82.0), row("rft", "dev", 85.0),
                                              row("sft", "dev", 70.0, seed=1)]
    assert joined_rows([], experiments) == experiments


def test_experiments_reject_an_unknown_method_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "research/experiments.py", "--run", str(tmp_path / "r"), "--methods", "sft,dpo"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown method 'dpo'; valid methods: sft, eto, bon, rft, failure-sft, self-play" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "r").exists()


def test_self_play_without_demos_needs_a_chat_model(tmp_path):
    done = subprocess.run([sys.executable, "research/experiments.py", "--run", str(tmp_path / "r"), "--methods", "sft,self-play",
                           "--self-play-demos", "0"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "the tiny model needs demos" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_experiments_baselines_best_of_n_rft_and_failure_sft_write_their_rows(tmp_path):
    command = [sys.executable, "research/experiments.py"] + ["--run", str(tmp_path / "run"), "--methods", "sft,bon,rft,failure-sft", "--train-limit", "8",
                          "--eval-limit", "2", "--sft-epochs", "1", "--max-steps", "2", "--bon-n", "2",
                          "--rft-samples", "2", "--rft-epochs", "1", "--seeds", "0"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = read_rows(tmp_path / "run")
    assert {(r["stage"], r["split"]) for r in rows} == {(s, split) for s in ("sft", "best-of-2", "rft", "failure-sft")
                                                        for split in ("test_seen", "test_unseen")}
    assert (tmp_path / "run" / "results.md").read_text().startswith("mean +- std (population std) over seeds 0")
    rft_data = json.loads((tmp_path / "run" / "seed0" / "rft" / "model" / "args.json").read_text())["args"]["data"]
    assert rft_data[0].endswith("expert.jsonl")
    # failure-sft: RFT's own samples paired with the expert at the first differing action, then NLL only
    seed_run = tmp_path / "run" / "seed0"
    pairs_args = json.loads((seed_run / "failure-sft" / "pairs.jsonl.args.json").read_text())["args"]
    assert (pairs_args["explored"], pairs_args["level"]) == ([str(seed_run / "rft" / "explore.jsonl")], "divergence")
    trained = json.loads((seed_run / "failure-sft" / "model" / "args.json").read_text())["args"]
    assert (trained["model"], trained["dpo_weight"], trained["sft_weight"]) == (str(seed_run / "sft"), 0.0, 1.0)


@pytest.mark.slow
def test_experiments_later_iterations_and_self_play(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "research/experiments.py"] + ["--run", str(run), "--methods", "sft,eto,self-play", "--train-limit", "8", "--eval-limit", "2",
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
