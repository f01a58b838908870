"""ETO's pair rules (lose/win/tie, cuts), the divergence and step levels, self-play pairs, the CLI."""
import json
import subprocess
import sys

import pytest

from common import InputError
from envs import parse_action
from dpo import tokenize_pair
from pairs import best_and_worst, make_pairs, on_policy_references
from sft import build_tiny_tokenizer
from tests.conftest import ROOT

TEXTS = ["system user assistant Thought: Action: click[buy now] search[red shoes] Observation: page one two"]


def record(task_id, reward, actions, observations=True):
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": f"task {task_id}"}]
    for i, action in enumerate(actions):
        messages.append({"role": "assistant", "content": f"Thought: t\nAction: {action}"})
        if observations and i < len(actions) - 1:
            messages.append({"role": "user", "content": f"Observation: after {action}"})
    return {"task_id": task_id, "reward": reward, "messages": messages}


def test_pair_rules_lose_win_tie_and_truncation():
    expert = [record("a", 1.0, ["e1", "e2"]), record("b", 0.5, ["e1", "e2", "e3", "e4", "e5"]), record("c", 1.0, ["e1"])]
    explored = [record("a", 0.0, [f"x{i}" for i in range(10)]),  # lose, cut to 2 + 1 assistant turns
                record("b", 1.0, ["x1", "x2"]),                   # win: chosen = explored, the expert kept whole
                record("c", 1.0, ["x1"])]                         # tie: no pair
    explored[0]["messages"].append({"role": "user", "content": "Observation: cut by the context limit"})
    pairs, counts = make_pairs(explored, expert, extra_turns=1)
    assert counts == {"win": 1, "tie": 1, "lose": 1} and len(pairs) == 2
    lose, win = pairs
    # the authors cut only the explored side: the expert's 5 turns stay although the winner took 2
    assert win["rejected"] == expert[1]["messages"][2:]
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
    with pytest.raises(InputError, match="unknown pair level 'turn'; valid levels: trajectory, divergence"):
        make_pairs([explored], expert, level="turn")


def test_step_pairs_start_after_the_teacher_forced_turns():
    expert = [record("a", 1.0, ["e1", "e2", "e3"]), record("b", 1.0, ["e1", "e2"])]
    forced_then_failed = {**record("a", 0.0, ["e1", "e2", "x3", "x4"]), "forced_turns": 2}
    forced_then_tied = {**record("b", 1.0, ["e1", "y2"]), "forced_turns": 1}
    pairs, counts = make_pairs([forced_then_failed, forced_then_tied], expert, extra_turns=0)
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


def test_on_policy_pairs_take_the_tasks_own_success_as_the_chosen_side():
    expert = [record("a", 1.0, ["search[x]", "click[item 3]", "click[buy now]"]),
              record("b", 1.0, ["search[y]", "click[item 2]", "click[buy now]"])]
    samples = [record("a", 0.0, ["search[x]", "click[item 1]", "click[buy now]"]),
               record("a", 1.0, ["search[x]", "click[item 2]", "click[buy now]"]),  # a's own success
               record("a", 1.0, ["search[x]", "click[item 4]", "click[buy now]"]),  # a later one: ties with it
               record("b", 0.5, ["search[y]", "click[item 1]", "click[buy now]"])]  # b: no success, the expert stays
    references = on_policy_references(samples, expert)
    assert references == [samples[1], expert[1]]
    pairs, counts = make_pairs(samples, references, level="divergence")
    assert counts == {"win": 0, "tie": 2, "lose": 2}  # a's successes tie with the first of them
    assert [(p["task_id"], parse_action(p["chosen"][0]["content"]), parse_action(p["rejected"][0]["content"]))
            for p in pairs] == [("a", "click[item 2]", "click[item 1]"), ("b", "click[item 2]", "click[item 1]")]


def test_only_the_continuation_is_scored_when_the_prompt_holds_agent_turns():
    tokenizer = build_tiny_tokenizer(TEXTS, 300)
    pair = make_pairs([record("a", 0.0, ["search[red]", "click[one]"])],
                      [record("a", 1.0, ["search[red]", "click[buy now]"])], level="divergence")[0][0]
    chosen_ids, chosen_mask, rejected_ids, rejected_mask = tokenize_pair(tokenizer, pair)
    assert tokenizer.decode([i for i, m in zip(chosen_ids, chosen_mask) if m]).strip() == \
        "Thought: t\nAction: click[buy now]<|im_end|>"
    assert "search" not in tokenizer.decode([i for i, m in zip(rejected_ids, rejected_mask) if m])


def test_pairs_cli_needs_an_expert_or_within_and_writes_its_summary(tmp_path):
    explored, expert, out = tmp_path / "explored.jsonl", tmp_path / "expert.jsonl", tmp_path / "pairs.jsonl"
    explored.write_text(json.dumps(record("a", 0.0, ["x1", "x2"])) + "\n")
    expert.write_text(json.dumps(record("a", 1.0, ["e1"])) + "\n")
    run = lambda *flags: subprocess.run([sys.executable, "pairs.py", "--explored", str(explored), "--out", str(out),
                                         *flags], cwd=ROOT, capture_output=True, text=True, timeout=60)
    for flags in ([], ["--within", "--expert", str(expert)]):
        done = run(*flags)
        assert done.returncode == 2 and "give either --expert (ETO's pairs) or --within" in done.stderr
        assert "Traceback" not in done.stderr and not out.exists()
    done = run("--within", "--on-policy")
    assert done.returncode == 2 and "--on-policy replaces the expert where a sample matches it: it needs --expert" \
        in done.stderr and not out.exists()
    done = run("--expert", str(expert))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    assert (summary["pairs"], summary["lose"], summary["win"], summary["tie"]) == (1, 1, 0, 0)
    assert json.loads((tmp_path / "pairs.jsonl.args.json").read_text())["summary"] == summary
    [pair] = [json.loads(line) for line in out.read_text().splitlines()]
    assert pair["rejected"] == record("a", 0.0, ["x1", "x2"])["messages"][2:]  # 1 expert turn + 5: both kept
