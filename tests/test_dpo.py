"""DPO loss against hand-computed values, sequence log-probs, pair rules, a few DPO steps, loop resume."""
import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch

from dpo import dpo_loss, sequence_logps, tokenize_pair
from explore import best_and_worst, make_pairs
from sft import InputError, build_tiny_model, build_tiny_tokenizer
from tests.conftest import ROOT


def sigmoid_loss(x):  # -log sigmoid(x), computed the long way
    return -math.log(1 / (1 + math.exp(-x)))


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
@pytest.mark.parametrize("pc, pr, rc, rr", [(-1.0, -3.0, -2.0, -2.0), (-5.0, -1.0, -4.0, -2.0), (-10.0, -10.0, -3.0, -7.0)])
def test_dpo_loss_matches_hand_computation(beta, pc, pr, rc, rr):
    losses, chosen_rewards, rejected_rewards = dpo_loss(*(torch.tensor([v]) for v in (pc, pr, rc, rr)), beta)
    margin = (pc - rc) - (pr - rr)
    assert losses.item() == pytest.approx(sigmoid_loss(beta * margin), rel=1e-6)
    assert chosen_rewards.item() == pytest.approx(beta * (pc - rc))
    assert rejected_rewards.item() == pytest.approx(beta * (pr - rr))


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_loss_variants_match_hand_computation(beta):
    pc, pr, rc, rr = -1.0, -3.0, -2.0, -2.5  # h = (-1 + 2) - (-3 + 2.5) = 1.5
    args = [torch.tensor([v]) for v in (pc, pr, rc, rr)]
    h = 1.5
    ipo, _, _ = dpo_loss(*args, beta, loss_type="ipo")
    assert ipo.item() == pytest.approx((h - 1 / (2 * beta)) ** 2, rel=1e-6)
    hinge, _, _ = dpo_loss(*args, beta, loss_type="hinge")
    assert hinge.item() == pytest.approx(max(0.0, 1 - beta * h), abs=1e-6)
    conservative, _, _ = dpo_loss(*args, beta, label_smoothing=0.2)
    assert conservative.item() == pytest.approx(0.8 * sigmoid_loss(beta * h) + 0.2 * sigmoid_loss(-beta * h), rel=1e-6)
    with pytest.raises(InputError, match="unknown loss 'kto'; valid losses: sigmoid, ipo, hinge"):
        dpo_loss(*args, beta, loss_type="kto")


def test_dpo_loss_is_log2_when_policy_equals_reference_and_rewards_are_detached():
    policy_chosen = torch.tensor([-4.0, -7.5], requires_grad=True)
    policy_rejected = torch.tensor([-2.0, -9.0], requires_grad=True)
    losses, chosen_rewards, rejected_rewards = dpo_loss(policy_chosen, policy_rejected, policy_chosen.detach(),
                                                        policy_rejected.detach(), 0.1)
    assert torch.allclose(losses, torch.full((2,), math.log(2)))
    assert not chosen_rewards.requires_grad and not rejected_rewards.requires_grad
    losses.sum().backward()  # gradient pushes chosen up, rejected down: d/dx -log sig(b x) = -b/2 at 0
    assert torch.allclose(policy_chosen.grad, torch.full((2,), -0.05))
    assert torch.allclose(policy_rejected.grad, torch.full((2,), 0.05))


def record(task_id, reward, actions, observations=True):
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": f"task {task_id}"}]
    for i, action in enumerate(actions):
        messages.append({"role": "assistant", "content": f"Thought: t\nAction: {action}"})
        if observations and i < len(actions) - 1:
            messages.append({"role": "user", "content": f"Observation: after {action}"})
    return {"task_id": task_id, "reward": reward, "messages": messages}


def test_pair_rules_lose_win_tie_and_truncation():
    expert = [record("a", 1.0, ["e1", "e2"]), record("b", 0.5, ["e1", "e2", "e3"]), record("c", 1.0, ["e1"])]
    explored = [record("a", 0.0, [f"x{i}" for i in range(10)]),  # lose, cut to 2 + 1 assistant turns
                record("b", 1.0, ["x1", "x2"]),                   # win: chosen = explored
                record("c", 1.0, ["x1"])]                         # tie: no pair
    explored[0]["messages"].append({"role": "user", "content": "Observation: cut by the context limit"})
    pairs, counts = make_pairs(explored, expert, extra_turns=1)
    assert counts == {"win": 1, "tie": 1, "lose": 1} and len(pairs) == 2
    lose, win = pairs
    assert lose["prompt"] == expert[0]["messages"][:2]
    assert lose["chosen"] == expert[0]["messages"][2:] and (lose["chosen_reward"], lose["rejected_reward"]) == (1.0, 0.0)
    assert [m["content"][-2:] for m in lose["rejected"] if m["role"] == "assistant"] == ["x0", "x1", "x2"]
    assert win["chosen"] == explored[1]["messages"][2:] and (win["chosen_reward"], win["rejected_reward"]) == (1.0, 0.5)
    for pair in pairs:
        assert pair["chosen"][-1]["role"] == "assistant" and pair["rejected"][-1]["role"] == "assistant"


def test_divergence_pairs_keep_the_first_turn_whose_action_differs():
    expert = [record("a", 1.0, ["search[x]", "click[item 2]", "click[buy now]"])]
    explored = record("a", 0.5, ["search[x]", "click[item 1]", "click[buy now]"])
    explored["messages"][2]["content"] = "Thought: another thought, the same action\nAction: search[x]"
    pairs, counts = make_pairs([explored], expert, level="divergence")
    assert counts == {"win": 0, "tie": 0, "lose": 1}
    [pair] = pairs
    assert pair["prompt"] == explored["messages"][:4]  # the agent's own turns so far, ending on the observation
    assert pair["chosen"] == [expert[0]["messages"][4]] and pair["rejected"] == [explored["messages"][4]]
    with pytest.raises(InputError, match="unknown pair level 'turn'; valid levels: trajectory, divergence, step, mixture"):
        make_pairs([explored], expert, level="turn")


def test_step_pairs_start_after_the_teacher_forced_turns():
    expert = [record("a", 1.0, ["e1", "e2", "e3"]), record("b", 1.0, ["e1", "e2"])]
    forced_then_failed = {**record("a", 0.0, ["e1", "e2", "x3", "x4"]), "forced_turns": 2}
    forced_then_tied = {**record("b", 1.0, ["e1", "y2"]), "forced_turns": 1}
    pairs, counts = make_pairs([forced_then_failed, forced_then_tied], expert, extra_turns=0, level="step")
    assert counts == {"win": 0, "tie": 1, "lose": 1}
    [pair] = pairs
    assert pair["prompt"] == expert[0]["messages"][:6]  # system, task, e1, obs, e2, obs: the forced turns are prompt
    assert pair["chosen"] == expert[0]["messages"][6:]  # e3
    assert [m["content"][-2:] for m in pair["rejected"]] == ["x3"]  # cut to the chosen side's 1 turn + 0


def test_self_play_pairs_the_best_sample_of_a_task_with_its_worst():
    samples = [record("a", 0.3, ["m1"]), record("a", 1.0, ["b1"]), record("a", 0.0, ["w1"]),
               record("b", 0.5, ["s1"]), record("b", 0.5, ["s2"])]
    pairs, counts = make_pairs(*best_and_worst(samples))
    assert counts == {"win": 0, "tie": 1, "lose": 1}  # task b: its samples score the same
    [pair] = pairs
    assert pair["chosen"][0]["content"].endswith("b1") and pair["rejected"][0]["content"].endswith("w1")
    assert (pair["chosen_reward"], pair["rejected_reward"]) == (1.0, 0.0)


def test_only_the_continuation_is_scored_when_the_prompt_holds_agent_turns():
    tokenizer = build_tiny_tokenizer(TEXTS, 300)
    pair = make_pairs([record("a", 0.0, ["search[red]", "click[one]"])],
                      [record("a", 1.0, ["search[red]", "click[buy now]"])], level="divergence")[0][0]
    chosen_ids, chosen_mask, rejected_ids, rejected_mask = tokenize_pair(tokenizer, pair)
    assert tokenizer.decode([i for i, m in zip(chosen_ids, chosen_mask) if m]).strip() == \
        "Thought: t\nAction: click[buy now]<|im_end|>"
    assert "search" not in tokenizer.decode([i for i, m in zip(rejected_ids, rejected_mask) if m])


TEXTS = ["system user assistant Thought: Action: click[buy now] search[red shoes] Observation: page one two"]


def test_sequence_logps_equal_a_manual_token_sum():
    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer(TEXTS, 300)
    model = build_tiny_model(tokenizer, hidden=32, layers=1).eval()
    pair = make_pairs([record("a", 0.0, ["search[red]", "click[one]", "click[two]"])],
                      [record("a", 1.0, ["search[red shoes]", "click[buy now]"])])[0][0]
    chosen_ids, chosen_mask, rejected_ids, rejected_mask = tokenize_pair(tokenizer, pair)
    with torch.no_grad():
        logps, counts = sequence_logps(model, [(chosen_ids, chosen_mask), (rejected_ids, rejected_mask)], "cpu")
        for k, (ids, mask) in enumerate([(chosen_ids, chosen_mask), (rejected_ids, rejected_mask)]):
            log_probs = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)
            manual = sum(log_probs[t - 1, ids[t]].item() for t in range(1, len(ids)) if mask[t])
            assert logps[k].item() == pytest.approx(manual, rel=1e-5)
            assert counts[k].item() == sum(mask[1:])
    # observations inside the continuation are not scored
    text = tokenizer.decode([i for i, m in zip(rejected_ids, rejected_mask) if m])
    assert "Observation" not in text and text.count("Action:") == 3


def test_a_few_dpo_steps_widen_the_margin():
    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer(TEXTS, 300)
    model = build_tiny_model(tokenizer, hidden=32, layers=1)
    pairs, _ = make_pairs([record(t, 0.0, ["click[one]", "click[two]"]) for t in "abcd"],
                          [record(t, 1.0, ["search[red shoes]", "click[buy now]"]) for t in "abcd"])
    examples = [tokenize_pair(tokenizer, p) for p in pairs]
    sequences = [(e[0], e[1]) for e in examples] + [(e[2], e[3]) for e in examples]
    with torch.no_grad():
        reference, _ = sequence_logps(model, sequences, "cpu")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    margins = []
    for _ in range(10):
        logps, _ = sequence_logps(model, sequences, "cpu")
        losses, chosen_rewards, rejected_rewards = dpo_loss(logps[:4], logps[4:], reference[:4], reference[4:], 0.1)
        margins.append((chosen_rewards - rejected_rewards).mean().item())
        optimizer.zero_grad()
        losses.mean().backward()
        optimizer.step()
    assert margins[0] == pytest.approx(0.0, abs=1e-5) and margins[-1] > 0.5


def test_mean_std_table_over_seeds():
    from loop import mean_std_table
    rows = [{"stage": "sft", "split": split, "avg_reward": r, "success_rate": s, "seed": seed}
            for seed, r, s in [(0, 50.0, 10.0), (1, 60.0, 30.0)] for split in ("test_seen", "test_unseen")]
    table = mean_std_table(rows)
    assert table.startswith("mean +- std (population std) over seeds 0, 1")
    assert "| sft | 55.0 +- 5.0 | 20.0 +- 10.0 | 55.0 +- 5.0 | 20.0 +- 10.0 |" in table


def test_loop_rejects_an_unknown_method_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "loop.py", "--run", str(tmp_path / "r"), "--methods", "sft,dpo"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown method 'dpo'; valid methods: sft, eto, bon, rft, self-play" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "r").exists()


def test_loop_self_play_without_demos_needs_a_chat_model(tmp_path):
    done = subprocess.run([sys.executable, "loop.py", "--run", str(tmp_path / "r"), "--methods", "sft,self-play",
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
    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and "$ " not in second.stdout and second.stdout.count("[done]") >= 8
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
def test_loop_baselines_best_of_n_and_rft_write_their_rows(tmp_path):
    command = LOOP[:2] + ["--run", str(tmp_path / "run"), "--methods", "sft,bon,rft", "--train-limit", "8",
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
def test_loop_later_iterations_and_self_play(tmp_path):
    run = tmp_path / "run"
    command = LOOP[:2] + ["--run", str(run), "--methods", "sft,eto,self-play", "--train-limit", "8", "--eval-limit", "2",
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


def test_plot_has_a_line_per_method_and_a_panel_per_split(tmp_path):
    pytest.importorskip("matplotlib")
    from loop import plot_point, plot_results
    assert plot_point("eto-2") == [("ETO", 2)] and plot_point("sft-continued-1") == [("SFT continued (control)", 1)]
    assert plot_point("self-play-rft-eto") == [("self-play", 2)] and plot_point("best-of-4")[0][1] == 0
    rows = [{"stage": stage, "split": split, "avg_reward": reward, "seed": seed}
            for stage, reward in [("sft", 60.0), ("eto-1", 65.0), ("rft", 62.0)] for seed in (0, 1)
            for split in ("test_seen", "test_unseen")]
    path = plot_results(rows, str(tmp_path / "results.png"))
    assert path and (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp*"))
