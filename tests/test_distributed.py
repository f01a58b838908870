"""torchrun: two processes (gloo on CPU) train the weights one process trains splitting each step in two, and
roll out the same greedy episodes."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from plumbing.ranks import Ranks, shard
from dpo import tokenize_pair
from tests.test_dpo import step_gradient, tiny_model_and_pairs

from pairs import make_pairs
from tests.conftest import ROOT


def run(*command, procs=1):
    launcher = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"] if procs > 1 else [])
    done = subprocess.run(launcher + list(command), cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[:2000] + " ... " + done.stderr[-1000:]  # a rank's own error comes first
    return done


def largest_difference(a, b):
    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return max((first[name] - second[name]).abs().max().item() for name in first)


def expert_file(tmp_path, n):
    """n expert trajectories of the shop's train tasks, written as explore.py --expert writes them."""
    import envs
    from envs.expert import make_expert_policy
    from explore import rollout
    env = envs.make("shop")
    records = rollout("shop", [(t, 0) for t in env.task_ids("train")[:n]], make_expert_policy(env))
    path = tmp_path / "expert.jsonl"
    path.write_text("".join(json.dumps({**r, "env": "shop", "split": "train", "success": True}) + "\n" for r in records))
    return path, records


def write_pairs(tmp_path, records):
    """tmp_path/pairs.jsonl: each expert trajectory against a failure that clicks item 9 at its third turn."""
    failures = []
    for record in records:
        failure = json.loads(json.dumps(record))
        failure["reward"] = 0.5
        failure["messages"][4]["content"] = "Thought: the first one.\nAction: click[item 9]"
        failures.append(failure)
    pairs, _ = make_pairs(failures, records, level="trajectory")
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))


def test_one_torchrun_launch_trains_what_one_process_trains(tmp_path, monkeypatch):
    """The default suite's torchrun check: one launch of two gloo ranks; the one-process run is in-process,
    on one thread as each rank is. 9 trajectories in steps of 4: the last step's second share is empty."""
    import sft as sft_stage
    expert, _ = expert_file(tmp_path, 9)
    sft = ["sft.py", "--model", "tiny", "--data", str(expert), "--epochs", "1", "--tiny-hidden", "32", "--tiny-layers", "1",
           "--tiny-vocab", "300", "--batch-size", "4", "--micro-batch-size", "2", "--dev-fraction", "0"]
    threads = torch.get_num_threads()
    monkeypatch.setattr(sys, "argv", sft + ["--out", str(tmp_path / "sft-1")])
    try:
        torch.set_num_threads(1)
        sft_stage.main()
    finally:
        torch.set_num_threads(threads)
    two = run(*sft, "--out", str(tmp_path / "sft-2"), procs=2)
    assert two.stdout.count('"stage": "sft"') == 1  # rank 0 alone reports and writes
    assert largest_difference(tmp_path / "sft-1", tmp_path / "sft-2") < 1e-6


@pytest.mark.slow  # six process starts: ~66 s on 2 cores
def test_two_processes_train_what_one_process_with_two_passes_trains(tmp_path):
    expert, records = expert_file(tmp_path, 25)
    # 25 trajectories in steps of 8: the last step has 1, so the second rank's share is empty there
    sft = ["sft.py", "--model", "tiny", "--data", str(expert), "--epochs", "1", "--tiny-hidden", "32", "--tiny-layers", "1",
           "--tiny-vocab", "300", "--batch-size", "8", "--micro-batch-size", "4", "--dev-fraction", "0"]
    run(*sft, "--out", str(tmp_path / "sft-1"))
    two = run(*sft, "--out", str(tmp_path / "sft-2"), procs=2)
    assert two.stdout.count('"stage": "sft"') == 1  # rank 0 alone reports and writes
    assert largest_difference(tmp_path / "sft-1", tmp_path / "sft-2") < 1e-6

    write_pairs(tmp_path, records[:13])  # 13 pairs in steps of 6: the last step has 1
    dpo = ["dpo.py", "--model", str(tmp_path / "sft-1"), "--pairs", str(tmp_path / "pairs.jsonl"), "--epochs", "1",
           "--batch-size", "6", "--micro-batch-size", "3", "--lr", "1e-3", "--beta", "0.5", "--sft-weight", "0.5"]
    one = run(*dpo, "--out", str(tmp_path / "dpo-1"))
    run(*dpo, "--out", str(tmp_path / "dpo-2"), procs=2)
    assert largest_difference(tmp_path / "dpo-1", tmp_path / "dpo-2") < 1e-6
    history = [json.loads((tmp_path / f"dpo-{n}" / "args.json").read_text())["history"] for n in (1, 2)]
    assert [step["loss"] for step in history[0]] == [step["loss"] for step in history[1]]  # metrics summed over ranks
    assert json.loads(one.stdout.strip().splitlines()[-1])["steps"] == 3


@pytest.mark.slow  # four process starts: ~45 s on 2 cores
def test_two_fully_sharded_processes_train_what_one_process_trains(tmp_path):
    """--fsdp: each rank holds half of every weight (fully_shard), yet the step is one process's step;
    the saved folder is the whole model. Reduce-scatter sums in another order than one process: 1e-5."""
    expert, records = expert_file(tmp_path, 25)
    # steps of 10 and a last of 5, shared 5/5 and 3/2: in micro-batches of 2 the ranks run 2 and 1 passes there,
    # and the rank with fewer must run one more (at weight 0) to keep up
    sft = ["sft.py", "--model", "tiny", "--data", str(expert), "--epochs", "1", "--tiny-hidden", "32", "--tiny-layers", "2",
           "--tiny-vocab", "300", "--batch-size", "10", "--micro-batch-size", "2", "--dev-fraction", "0"]
    run(*sft, "--out", str(tmp_path / "sft-1"))
    run(*sft, "--out", str(tmp_path / "sft-2"), "--fsdp", procs=2)
    assert largest_difference(tmp_path / "sft-1", tmp_path / "sft-2") < 1e-5
    write_pairs(tmp_path, records[:13])
    dpo = ["dpo.py", "--model", str(tmp_path / "sft-1"), "--pairs", str(tmp_path / "pairs.jsonl"), "--epochs", "1",
           "--batch-size", "10", "--micro-batch-size", "1", "--lr", "1e-3", "--beta", "0.5", "--sft-weight", "0.5"]
    run(*dpo, "--out", str(tmp_path / "dpo-1"))  # 13 pairs: a last step of 3, shared 2/1
    run(*dpo, "--out", str(tmp_path / "dpo-2"), "--fsdp", procs=2)
    assert largest_difference(tmp_path / "dpo-1", tmp_path / "dpo-2") < 1e-5
    history = [json.loads((tmp_path / f"dpo-{n}" / "args.json").read_text())["history"] for n in (1, 2)]
    assert [step["loss"] for step in history[0]] == pytest.approx([step["loss"] for step in history[1]], abs=1e-4)


@pytest.mark.slow
def test_two_processes_explore_what_one_process_explores(tmp_path):
    expert, _ = expert_file(tmp_path, 24)
    run("sft.py", "--model", "tiny", "--data", str(expert), "--epochs", "2", "--tiny-hidden", "32", "--tiny-layers", "1",
        "--tiny-vocab", "300", "--batch-size", "8", "--micro-batch-size", "8", "--dev-fraction", "0", "--out",
        str(tmp_path / "sft"))
    # greedy rollouts split over two ranks: the same records, in the same order, written once
    explore = ["explore.py", "--split", "test_unseen", "--model", str(tmp_path / "sft"), "--limit", "5",
               "--max-steps", "3", "--max-new-tokens", "24", "--batch-size", "2"]
    run(*explore, "--out", str(tmp_path / "eval-1.jsonl"))
    run(*explore, "--out", str(tmp_path / "eval-2.jsonl"), procs=2)
    assert (tmp_path / "eval-1.jsonl").read_text() == (tmp_path / "eval-2.jsonl").read_text()


def test_shards_cover_a_step_once_and_the_ranks_gradients_average_to_one_process(tmp_path):
    assert [shard(list(range(7)), rank, 3) for rank in range(3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [shard([0], rank, 2) for rank in range(2)] == [[0], []]  # an empty share: the rank joins at weight 0
    model, tokenizer, pairs = tiny_model_and_pairs(tmp_path, n_tasks=5)
    examples = [tokenize_pair(tokenizer, p) for p in pairs]
    whole, _ = step_gradient(model, examples, 8, sft_weight=0.5)
    # what DistributedDataParallel computes from two ranks: the mean of their gradients (one process here,
    # so each rank's share is run in turn; the metrics' all-reduce needs a group: a group of one)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    try:
        ranks = [step_gradient(model, examples, 8, sft_weight=0.5, ranks=Ranks(rank, 2))[0] for rank in (0, 1)]
    finally:
        torch.distributed.destroy_process_group()
    assert torch.allclose((ranks[0] + ranks[1]) / 2, whole, atol=1e-6)
