"""Online RL: the advantages and the clipped surrogate by hand, masking, a learning run on the doors env
(whose right action is written in the prompt), determinism, resume, and the stage's refusals."""
import argparse
import copy
import functools
import json
import random
import subprocess
import sys

import pytest
import torch

import envs
from common import sequence_logps, tokenize_conversation
from research.online_rl import (clipped_surrogate, group_advantages, masked_mean, rl_iteration, step_advantages,
                       tokenize_episode)
from sft import build_tiny_model, build_tiny_tokenizer
from tests.conftest import ROOT


def test_group_advantages_by_hand():
    # groups of 3: (1, 0, 0.5) has mean 0.5; (1, 1, 1) is all equal: 0, never NaN
    assert group_advantages([1.0, 0.0, 0.5, 1.0, 1.0, 1.0], 3) == [0.5, -0.5, 0.0, 0.0, 0.0, 0.0]
    # divided by the group's (population) std: (1, 0) has mean 0.5, std 0.5
    assert group_advantages([1.0, 0.0, 0.0, 0.0], 2, normalize_std=True) == [1.0, -1.0, 0.0, 0.0]


def test_step_advantages_group_turns_by_the_state_they_answered():
    # one group of two episodes sharing their first state "s": returns 0.9 * 1 and 0.9 * 0 at turn 0
    # (gamma 0.9, two turns each); turn 1 states differ ("a", "b"): each alone, 0
    episodes = [(["s", "a"], 1.0), (["s", "b"], 0.0)]
    got = step_advantages(episodes, 2, gamma=0.9)
    assert got == [[pytest.approx(0.45), 0.0], [pytest.approx(-0.45), 0.0]]


def test_clipped_surrogate_by_hand_with_a_clipped_an_unclipped_and_a_masked_token():
    # token 0: ratio 1.5, A = +1, clip 0.2 -> min(1.5, 1.2) = 1.2 (clipped); token 1: ratio 0.9, A = +1 ->
    # 0.9 (inside the range); token 2: masked (ratio 3, A = 5 would dominate)
    old = torch.zeros(1, 3)
    logps = torch.log(torch.tensor([[1.5, 0.9, 3.0]])).requires_grad_()
    advantages = torch.tensor([[1.0, 1.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, clip_fraction = clipped_surrogate(logps, old, advantages, mask, clip=0.2)
    assert loss.item() == pytest.approx(-(1.2 + 0.9) / 2)
    assert clip_fraction == pytest.approx(0.5)
    loss.backward()
    # d/dlogp of -rho A / 2 = -rho A / 2 for the unclipped token; 0 where clipped, 0 where masked
    assert logps.grad[0].tolist() == pytest.approx([0.0, -0.45, 0.0])
    # a negative advantage is clipped at 1 - e from below: ratio 0.5, A = -1 -> max(-0.5, -0.8) = ... min(-0.5, -0.8)
    loss, _ = clipped_surrogate(torch.log(torch.tensor([[0.5]])), torch.zeros(1, 1), torch.tensor([[-1.0]]),
                                torch.ones(1, 1), clip=0.2)
    assert loss.item() == pytest.approx(0.8)


def test_masked_mean_counts_only_the_agent_tokens():
    assert masked_mean(torch.tensor([[1.0, 2.0, 100.0]]), torch.tensor([[1.0, 1.0, 0.0]])).item() == 1.5


def test_the_turn_of_each_token_follows_the_agent_turns():
    tokenizer = build_tiny_tokenizer(["system user assistant Thought: a Action: b Observation: c"], 300)
    record = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                           {"role": "assistant", "content": "Thought: a\nAction: b"},
                           {"role": "user", "content": "Observation: c"},
                           {"role": "assistant", "content": "Thought: a\nAction: b"}]}
    ids, mask, turns = tokenize_episode(tokenizer, record, 1024)
    assert (ids, mask) == tokenize_conversation(tokenizer, record["messages"], 1024)
    assert sorted(set(turns)) == [-1, 0, 1] and [t >= 0 for t in turns] == [bool(m) for m in mask]
    assert sum(t == 0 for t in turns) == sum(t == 1 for t in turns)  # the same reply twice


def settings(**changes):
    values = dict(env="doors", group_size=8, normalize_std=False, step_credit=False, step_weight=1.0, gamma=0.95,
                  temperature=1.0, max_new_tokens=24, rollout_batch_size=256, max_length=256, minibatch_size=32,
                  ppo_epochs=2, clip=0.2, kl_coef=0.0, seed=0, device="cpu")
    return argparse.Namespace(**{**values, **changes})


@pytest.fixture
def one_thread():
    """The learning tests' models are small: one thread is faster than two that wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=1)
def door_policy(seed=0, sft_steps=150, right=0.7):
    """A tiny model taught the reply's format on doors that are the named one `right` of the time (the
    others drawn at random): sampled at temperature 1 it reads the instruction only part of the time."""
    env = envs.make("doors")
    tasks = env.task_ids("train")
    rng = random.Random(seed)
    conversations = []
    for task_id in tasks:
        named = env.reset(task_id).split("open the ")[1].split(" ")[0]
        door = named if rng.random() < right else rng.choice(["red", "blue"])
        conversations.append([{"role": "system", "content": env.system_prompt},
                              {"role": "user", "content": env.reset(task_id)},
                              {"role": "assistant", "content": f"Thought: I open the door it names.\nAction: open[{door}]"}])
    tokenizer = build_tiny_tokenizer([m["content"] for c in conversations for m in c] + ["system user assistant"], 300)
    torch.manual_seed(seed)
    model = build_tiny_model(tokenizer, hidden=64, layers=1, heads=4, context=128)
    examples = [tokenize_conversation(tokenizer, c) for c in conversations]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(sft_steps):
        batch = [examples[(step * 16 + k) % len(examples)] for k in range(16)]
        logps, counts = sequence_logps(model, batch, "cpu")
        (-logps.sum() / counts.sum()).backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval(), tokenizer, tasks


def sampled_reward(model, tokenizer, tasks, seed=123):
    """The mean reward of two episodes a task at temperature 1: what the RL objective raises."""
    from explore import make_generate_policy, rollout
    policy = make_generate_policy(model, tokenizer, temperature=1.0, max_new_tokens=24, seed=seed)
    records = rollout("doors", [(t, s) for t in tasks for s in range(2)], policy, batch_size=256)
    return sum(r["reward"] for r in records) / len(records)


def train(iterations, seed=0):
    """(start's sampled reward, the end's, the log, the model) of `iterations` of online RL from door_policy."""
    start_model, tokenizer, tasks = door_policy()
    model, reference = copy.deepcopy(start_model), copy.deepcopy(start_model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    log = [rl_iteration(model, reference, optimizer, tokenizer, tasks[16 * (i % 12):16 * (i % 12) + 16], i,
                        settings(seed=seed)) for i in range(1, iterations + 1)]
    return sampled_reward(start_model, tokenizer, tasks[:100]), sampled_reward(model, tokenizer, tasks[:100]), log, model


def test_online_rl_learns_to_read_the_door_from_the_prompt(one_thread):
    start, end, log, _ = train(iterations=10)
    assert start <= 0.8  # the start reads the instruction only part of the time
    assert end >= 0.9, (start, end, [line["reward"] for line in log])
    assert log[-1]["kl_start"] > 0  # it moved away from the start


def test_the_same_seed_gives_the_same_run(one_thread):
    _, _, first_log, first = train(iterations=2)
    _, _, second_log, second = train(iterations=2)
    assert [{k: v for k, v in line.items() if k != "seconds"} for line in first_log] == \
           [{k: v for k, v in line.items() if k != "seconds"} for line in second_log]
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    _, _, other_log, _ = train(iterations=1, seed=1)  # another seed samples other episodes
    assert other_log[0]["reward"] != first_log[0]["reward"] or other_log[0]["loss"] != first_log[0]["loss"]


def test_online_rl_refuses_bad_counts_and_a_missing_run_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "research/online_rl.py", "--run", str(tmp_path / "none")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{tmp_path / 'none'}/sft not found: run `python loop.py --run {tmp_path / 'none'}` first" in done.stderr
    (tmp_path / "r" / "sft").mkdir(parents=True)
    (tmp_path / "r" / "sft" / "args.json").write_text(json.dumps({}))
    done = subprocess.run([sys.executable, "research/online_rl.py", "--run", str(tmp_path / "r"), "--group-size", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--group-size must be at least 1, got 0" in done.stderr


@pytest.mark.slow  # three runs of research/online_rl.py, each with its evaluation: ~45 s on 2 cores
def test_a_killed_run_resumes_to_the_weights_of_one_never_killed(tmp_path, one_thread):
    """research/online_rl.py from a run's SFT model (door_policy's, on the doors env): 2 iterations, then 3 from there,
    give the log and weights of 3 in one go; the table prints beside the run's own rows."""
    model, tokenizer, _ = door_policy()
    run = tmp_path / "run"
    model.save_pretrained(run / "sft")
    tokenizer.save_pretrained(run / "sft")
    (run / "sft" / "args.json").write_text(json.dumps({"args": {}}))
    (run / "results.jsonl").write_text(json.dumps({"stage": "sft", "split": "dev", "avg_reward": 70.0,
                                                   "success_rate": 70.0}) + "\n")
    flags = ["--run", str(run), "--env", "doors", "--tasks", "8", "--group-size", "4", "--max-new-tokens", "24",
             "--eval-splits", "dev", "--lr", "2e-3"]

    def online_rl(out, iterations):
        done = subprocess.run([sys.executable, "research/online_rl.py", *flags, "--out", str(tmp_path / out), "--iterations",
                               str(iterations)], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    online_rl("killed", 2)
    resumed = online_rl("killed", 3)
    assert "resuming after iteration 2 of 3" in resumed.stderr
    whole = online_rl("whole", 3)
    assert "online-rl " in whole.stdout and "sft " in whole.stdout  # the table: the run's rows, then this one
    logs = [[{k: v for k, v in json.loads(line).items() if k != "seconds"}
             for line in (tmp_path / out / "log.jsonl").read_text().splitlines()] for out in ("killed", "whole")]
    assert logs[0] == logs[1] and len(logs[0]) == 3
    assert all(line["trained_episodes"] > 0 for line in logs[0])  # every iteration updated the weights
    from safetensors.torch import load_file
    first, second = (load_file(tmp_path / out / "model" / "model.safetensors") for out in ("killed", "whole"))
    assert all(torch.equal(first[name], second[name]) for name in first)
    start = load_file(run / "sft" / "model.safetensors")
    assert not all(torch.equal(first[name], start[name]) for name in first)
    assert sorted(p.name for p in (tmp_path / "killed").glob("optimizer-*.pt")) == ["optimizer-3.pt"]
