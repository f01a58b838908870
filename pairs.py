"""Step 3 of ETO: failure/expert pairs from explored trajectories, in TRL's prompt/chosen/rejected form.

    python pairs.py --explored runs/demo/iter1/explore.jsonl --expert runs/demo/expert.jsonl \
        --out runs/demo/iter1/pairs.jsonl                         # the paper's trajectory-level pairs
    python pairs.py --explored runs/demo/iter1/explore.jsonl --expert runs/demo/expert.jsonl \
        --out runs/demo/iter1/pairs.jsonl --level divergence      # only the first turn whose action differs
    python pairs.py --explored runs/demo/samples.jsonl --within --out runs/demo/pairs.jsonl   # self-play
    python pairs.py --explored runs/demo/samples.jsonl --expert runs/demo/expert.jsonl --on-policy \
        --out runs/demo/pairs.jsonl --level divergence   # a task's own success is the chosen side, if it has one

The rule (`pair_with_expert`, the authors' `construct_preference.py`): an explored trajectory that
scored below the expert's is rejected and the expert's chosen (lose); one that scored above is chosen
(win, possible only where the expert is below 1.0); equal scores give no pair (tie). Step-level pairs
(paper App. B) need no rule of their own: `explore.py --teacher-force` records the expert turns it
replayed (`forced_turns`), and those turns become part of the prompt. `--within` (self-play, paper
4.5) needs no expert: each task's best sample is paired with its worst by the same rule. `--on-policy`
(Tajwar et al. 2024): where one of a task's samples reaches the expert's reward, that sample
stands in for the expert, so the chosen side is the policy's own; other tasks keep the expert.
The last line printed is a JSON summary: pairs, win, tie, lose; OUT.args.json records it.
"""
import argparse
import json
import time

from common import (HelpFormatter, InputError, check_trajectory, read_jsonl, run_main, stage_record, write_json,
                    write_jsonl)
from envs import parse_action

LEVELS = ("trajectory", "divergence")


def pair_with_expert(explored, expert):
    """ETO's rule for one task: (chosen, rejected, outcome), or None for a tie."""
    if explored["reward"] < expert["reward"]:
        return expert, explored, "lose"
    if explored["reward"] > expert["reward"]:
        return explored, expert, "win"
    return None


def cut_after_assistant_turns(messages, n_turns):
    """The messages up to and including the n-th assistant turn (or the last one, if fewer)."""
    assistant_at = [i for i, message in enumerate(messages) if message["role"] == "assistant"][:n_turns]
    return messages[:assistant_at[-1] + 1] if assistant_at else []


def first_differing_action(chosen, rejected):
    """Index of the first assistant message whose action differs (thoughts alone may differ before it)."""
    for i, (a, b) in enumerate(zip(chosen, rejected)):
        if a["role"] == "assistant" and parse_action(a["content"]) != parse_action(b["content"]):
            return i
    return None


def make_pairs(explored, expert, extra_turns=5, level="trajectory"):
    """Pairs of each explored trajectory with the expert trajectory of its task.

    level "trajectory" (the paper): the continuations after the prompt, the explored side cut to the
    expert's assistant turns + extra_turns (the authors cut only the explored side, on a win too), so
    a long failure cannot dominate the summed log-prob. level "divergence": each side keeps only the
    first turn whose action differs, after the explored trajectory's turns so far (the same actions,
    so the same page), so the correct turns a failure takes after its mistake are not pushed down.
    The prompt ends before the first reply the agent chose: after a record's `forced_turns`.
    Returns (pairs, {"win": .., "tie": .., "lose": ..}).
    """
    if level not in LEVELS:
        raise InputError(f"unknown pair level {level!r}; valid levels: {', '.join(LEVELS)}")
    expert_by_task = {record["task_id"]: record for record in expert}
    pairs, counts = [], {"win": 0, "tie": 0, "lose": 0}
    for record in explored:
        reference = expert_by_task.get(record["task_id"])
        if reference is None:
            raise InputError(f"no expert trajectory for task {record['task_id']!r}")
        assistant_at = [i for i, m in enumerate(record["messages"]) if m["role"] == "assistant"]
        forced = record.get("forced_turns", 0)
        if len(assistant_at) <= forced:
            continue  # the episode ended (context limit) before the agent acted
        start = assistant_at[forced]
        if record["messages"][:start] != reference["messages"][:start]:
            raise InputError(f"task {record['task_id']!r}: explored and expert prompts differ (another env or split?)")
        labelled = pair_with_expert(record, reference)
        if labelled is None:
            counts["tie"] += 1
            continue
        chosen, rejected, outcome = labelled
        counts[outcome] += 1
        if level == "divergence":
            differ = first_differing_action(chosen["messages"], rejected["messages"])
            if differ is not None:  # the agent's own history up to there is the prompt
                pairs.append(pair_record(record, record["messages"][:differ], [chosen["messages"][differ]],
                                         [rejected["messages"][differ]], chosen, rejected))
            continue
        expert_turns = reference["messages"][start:]
        n_expert = sum(m["role"] == "assistant" for m in expert_turns)
        explored_turns = cut_after_assistant_turns(record["messages"][start:], n_expert + extra_turns)
        # both sides end on an assistant turn (an episode cut by the context limit ends on an observation)
        expert_turns = cut_after_assistant_turns(expert_turns, n_expert)
        if not explored_turns or not expert_turns:
            continue
        chosen_turns, rejected_turns = (expert_turns, explored_turns) if outcome == "lose" else (explored_turns, expert_turns)
        pairs.append(pair_record(record, record["messages"][:start], chosen_turns, rejected_turns, chosen, rejected))
    return pairs, counts


def pair_record(record, prompt, chosen_turns, rejected_turns, chosen, rejected):
    return {"task_id": record["task_id"], "prompt": prompt, "chosen": chosen_turns, "rejected": rejected_turns,
            "chosen_reward": chosen["reward"], "rejected_reward": rejected["reward"]}


def best_and_worst(records):
    """Self-play's pairs need no expert: per task, (the worst sample, the best sample) by reward, as two
    lists for make_pairs(worst, best); a task whose samples all score the same gives a tie."""
    by_task = {}
    for record in records:
        by_task.setdefault(record["task_id"], []).append(record)
    worst = [min(samples, key=lambda r: r["reward"]) for samples in by_task.values()]
    best = [max(samples, key=lambda r: r["reward"]) for samples in by_task.values()]
    return worst, best


def on_policy_references(explored, expert):
    """Per task, its first sample that reaches the expert's reward (the policy's own success), else the
    expert trajectory: the references make_pairs pairs the samples with."""
    successes = {}
    expert_by_task = {record["task_id"]: record for record in expert}
    for record in explored:
        if record["reward"] >= expert_by_task[record["task_id"]]["reward"]:
            successes.setdefault(record["task_id"], record)
    return [successes.get(record["task_id"], record) for record in expert]


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--explored", required=True, nargs="+", help="trajectory JSONL file(s) from explore.py")
    parser.add_argument("--expert", help="expert trajectory JSONL of the same tasks (explore.py --expert)")
    parser.add_argument("--out", required=True, help="pairs JSONL: prompt, chosen, rejected, their rewards")
    parser.add_argument("--extra-turns", type=int, default=5, help="explored side: the expert's turns + this many")
    beyond = parser.add_argument_group("beyond the paper")
    beyond.add_argument("--level", default="trajectory", choices=LEVELS,
                        help="trajectory: whole continuations (the paper's); divergence: the first turn whose action "
                             "differs, after the explored trajectory's turns so far")
    beyond.add_argument("--within", action="store_true", help="self-play (paper 4.5): each task's best sample against "
                                                              "its worst, no expert")
    beyond.add_argument("--on-policy", action="store_true",
                        help="with --expert: a task's own sample that reaches the expert's reward is the chosen side")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return parser


def main():
    parser = build_parser()
    args = parser.parse_args()
    if args.within == bool(args.expert):
        raise InputError("give either --expert (ETO's pairs) or --within (self-play's), not both or neither")
    if args.on_policy and not args.expert:
        raise InputError("--on-policy replaces the expert where a sample matches it: it needs --expert")
    if args.extra_turns < 0:
        raise InputError(f"--extra-turns must be at least 0, got {args.extra_turns}")

    started = time.time()
    fields = ("task_id", "messages", "reward")
    explored = [r for path in args.explored for r in read_jsonl(path, fields, check_trajectory)]
    if args.within:
        explored, reference = best_and_worst(explored)
    else:
        reference = read_jsonl(args.expert, fields, check_trajectory)
        missing = sorted({r["task_id"] for r in explored} - {r["task_id"] for r in reference})
        if missing:
            raise InputError(f"{args.expert}: no expert trajectory for {len(missing)} tasks, e.g. {missing[0]!r}")
        if args.on_policy:
            reference = on_policy_references(explored, reference)
    pairs, counts = make_pairs(explored, reference, args.extra_turns, args.level)
    write_jsonl(args.out, pairs)  # then the .args.json: written last, it marks the stage complete
    summary = {"stage": "pairs", "out": args.out, "pairs": len(pairs), **counts,
               "seconds": round(time.time() - started, 1)}
    write_json(args.out + ".args.json", stage_record(args, summary=summary))
    print(json.dumps(summary))


if __name__ == "__main__":
    run_main(main)
