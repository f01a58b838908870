"""Where learning from failures helps: the shop with the price as the deciding cue (`--env shop`) beside the
same shop with a requested attribute as the cue (`--env shop:cue=attribute`). Pre-registered in
results/cue-study/PREREGISTRATION.md (hypothesis, settings, seeds, decision rule).

    bash research/cue_study.sh                                 # every run, then the files below
    python research/cue_study.py --check-dev runs/cue/seed0    # the dev check, before any test split
    python research/cue_study.py --collect results/cue-study --price runs/default runs/seed1 runs/seed2 \
        --attribute runs/cue/seed0 runs/cue/seed1 runs/cue/seed2 --mechanism   # and what the pairs moved
                                               # (--mechanism RUN ...: only these runs)

Per model and split, beside reward and success, the behaviour the cue is about, from the episodes: how often
the first result opened is the one the expert opens (the right one), and how often it is `item 1` on the
tasks where `item 1` is not the right one. --collect writes results/cue-study/CUE.jsonl (one row per seed,
model and split) and research/pages.py makes docs/results.md's tables and the README's verdict from them.

--mechanism adds results/cue-study/mechanism.jsonl: on iteration 1's pairs (the better side chosen), the
implicit reward beta * (log pi - log ref) of each turn after the two sides part (ref: the SFT model), under
ETO's model and under the control's, at the same beta. At the turn where they part (on the shop, the
result clicked), the chosen and rejected turns' rewards, against the mean of the rejected side's later
turns: whether what training moved sits on the decision the cue decides.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the stages live one folder up
from common import EVAL_SPLITS, InputError, read_jsonl, run_main, token_logps, tokenize_conversation, write_jsonl  # noqa: E402
from pairs import first_differing_action  # noqa: E402
from research.report import action_kind, actions  # noqa: E402

# the models of a loop run and the baselines research/experiments.py and research/online_rl.py add beside it
MODELS = {"sft": "SFT", "eto-1": "ETO", "sft-continued-1": "control", "rft": "RFT", "online-rl": "online RL"}


def first_item(record):
    """The first result an episode opens (`item 3`), or None."""
    return next((a[6:-1].strip().lower() for a in actions(record) if action_kind(a) == "item"), None)


def first_clicks(records, experts):
    """(% of episodes whose first result opened is the expert's, % opening `item 1` first among the episodes
    whose task's right result is not `item 1`, how many such episodes)."""
    right, item_1_wrong, item_1_taken = 0, 0, 0
    for record in records:
        expert = first_item(experts[record["task_id"]])
        opened = first_item(record)
        right += opened == expert
        if expert != "item 1":
            item_1_wrong += 1
            item_1_taken += opened == "item 1"
    return (round(100 * right / max(len(records), 1), 1), round(100 * item_1_taken / max(item_1_wrong, 1), 1),
            item_1_wrong)


def model_rows(run, cue):
    """One row per model and split of a loop run (with its baselines), read from RUN/eval and RUN/rl."""
    with open(os.path.join(run, "loop_args.json")) as f:
        seed = json.load(f)["seed"]
    rows = []
    for split in EVAL_SPLITS:
        experts_file = os.path.join(run, "eval", f"expert.{split}.jsonl")
        if not os.path.exists(experts_file):
            continue
        experts = {r["task_id"]: r for r in read_jsonl(experts_file)}
        for stage, name in MODELS.items():
            path = (os.path.join(run, "rl", f"eval.{split}.jsonl") if stage == "online-rl"
                    else os.path.join(run, "eval", f"{stage}.{split}.jsonl"))
            if not os.path.exists(path):
                continue
            records = read_jsonl(path)
            right, item_1, wrong = first_clicks(records, experts)
            rows.append({"cue": cue, "seed": seed, "model": name, "split": split, "n": len(records),
                         "avg_reward": round(100 * sum(r["reward"] for r in records) / len(records), 2),
                         "success_rate": round(100 * sum(r["reward"] >= 1.0 for r in records) / len(records), 2),
                         "right_first": right, "item_1_when_wrong": item_1, "item_1_wrong_tasks": wrong,
                         "file": os.path.relpath(path)})
    return rows


def turn_masks(tokenizer, prompt, continuation):
    """(token ids, {message index in continuation: that assistant turn's loss mask}): dpo.py's masks, split
    by turn as research/report.py's turn_rewards splits them, so the turns sum to the side's log-prob."""
    messages = prompt + continuation
    turns = [i for i in range(len(prompt), len(messages)) if messages[i]["role"] == "assistant"]
    ids, _ = tokenize_conversation(tokenizer, messages, train_from=turns[0])
    masks = [tokenize_conversation(tokenizer, messages, train_from=i)[1] for i in turns] + [[0] * len(ids)]
    return ids, {i - len(prompt): [a - b for a, b in zip(masks[k], masks[k + 1])] for k, i in enumerate(turns)}


def turn_logps(model, ids, masks):
    """{turn: the sum of log p over that turn's tokens}, from one forward pass."""
    import torch
    logps = token_logps(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0]
    return {turn: float((logps * torch.tensor(mask[1:], dtype=logps.dtype)).sum()) for turn, mask in masks.items()}


def mechanism_rows(run, cue):
    """Per model (ETO, control): the mean implicit reward at the turn where each pair parts, chosen and
    rejected, the mean of the rejected side's later turns, and the share of the rejected side's total (in
    absolute value) that sits on the parting turn."""
    import statistics

    import torch
    from common import load_model
    from envs import parse_action
    with open(os.path.join(run, "loop_args.json")) as f:
        seed = json.load(f)["seed"]
    with open(os.path.join(run, "iter1", "model", "args.json")) as f:
        beta = json.load(f)["args"]["beta"]
    pairs = read_jsonl(os.path.join(run, "iter1", "pairs.jsonl"), ("prompt", "chosen", "rejected"))
    models = {name: load_model(os.path.join(run, folder))[0].eval()
              for name, folder in (("reference", "sft"), ("ETO", "iter1/model"), ("control", "iter1/control"))}
    tokenizer = load_model(os.path.join(run, "sft"))[1]
    found = {name: {"chosen": [], "rejected": [], "later": [], "share": []} for name in ("ETO", "control")}
    item_clicks, used = 0, 0
    with torch.no_grad():
        for pair in pairs:
            parting = first_differing_action(pair["chosen"], pair["rejected"])
            if parting is None:
                continue
            used += 1
            item_clicks += action_kind(parse_action(pair["rejected"][parting]["content"])) == "item"
            sides = {side: turn_masks(tokenizer, pair["prompt"], pair[side]) for side in ("chosen", "rejected")}
            logps = {(name, side): turn_logps(model, *sides[side]) for name, model in models.items() for side in sides}
            for name in found:
                reward = {side: {turn: beta * (logps[(name, side)][turn] - logps[("reference", side)][turn])
                                 for turn in sides[side][1]} for side in sides}
                after = [r for turn, r in reward["rejected"].items() if turn > parting]
                found[name]["chosen"].append(reward["chosen"][parting])
                found[name]["rejected"].append(reward["rejected"][parting])
                found[name]["later"] += after
                total = abs(reward["rejected"][parting]) + sum(abs(r) for r in after)
                found[name]["share"].append(abs(reward["rejected"][parting]) / total if total else 0.0)
    return [{"cue": cue, "seed": seed, "model": name, "beta": beta, "pairs": used, "parting_at_an_item_click": item_clicks,
             "chosen_at_parting": round(statistics.mean(got["chosen"]), 4),
             "rejected_at_parting": round(statistics.mean(got["rejected"]), 4),
             "rejected_later_turn": round(statistics.mean(got["later"]), 4) if got["later"] else None,
             "share_of_rejected_at_parting": round(statistics.mean(got["share"]), 4)} for name, got in found.items()]


def check_dev(run):
    """The pre-registered check on dev, before any test split: SFT leaves room to learn. Exit 1 when it does not."""
    experts = {r["task_id"]: r for r in read_jsonl(os.path.join(run, "eval", "expert.dev.jsonl"))}
    records = read_jsonl(os.path.join(run, "eval", "sft.dev.jsonl"))
    right, item_1, wrong = first_clicks(records, experts)
    reward = 100 * sum(r["reward"] for r in records) / len(records)
    success = 100 * sum(r["reward"] >= 1.0 for r in records) / len(records)
    checks = {"reward below the expert's 100": reward < 100, "success below 90%": success < 90,
              "right result first on some tasks, not all": 0 < right < 100}
    print(json.dumps({"stage": "cue-dev-check", "run": run, "sft_dev_reward": round(reward, 2),
                      "sft_dev_success": round(success, 2), "right_first": right, "item_1_when_wrong": item_1,
                      "item_1_wrong_tasks": wrong, "expert_dev_reward": round(100 * sum(
                          r["reward"] for r in experts.values()) / len(experts), 2),
                      "passes": all(checks.values()), "checks": checks}))
    return all(checks.values())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check-dev", metavar="RUN", help="a loop run on the attribute cue with dev evaluated")
    parser.add_argument("--collect", metavar="FOLDER", help="write FOLDER/price.jsonl and FOLDER/attribute.jsonl")
    parser.add_argument("--price", nargs="*", default=[], metavar="RUN", help="loop runs on --env shop")
    parser.add_argument("--attribute", nargs="*", default=[], metavar="RUN", help="loop runs on --env shop:cue=attribute")
    parser.add_argument("--mechanism", nargs="*", default=None, metavar="RUN",
                        help="also write FOLDER/mechanism.jsonl: the implicit rewards of iteration 1's pairs under ETO "
                             "and the control, for these runs (none named: every --price and --attribute run)")
    args = parser.parse_args()
    if args.check_dev:
        sys.exit(0 if check_dev(args.check_dev) else 1)
    if not args.collect:
        raise InputError("give --check-dev RUN or --collect FOLDER")
    for cue, runs in (("price", args.price), ("attribute", args.attribute)):
        rows = [row for run in runs for row in model_rows(run, cue)]
        if rows:
            write_jsonl(os.path.join(args.collect, f"{cue}.jsonl"), rows)
            print(json.dumps({"stage": "cue-collect", "cue": cue, "runs": len(runs), "rows": len(rows)}))
    if args.mechanism is not None:
        cues = {run: cue for cue, runs in (("price", args.price), ("attribute", args.attribute)) for run in runs}
        unknown = [run for run in args.mechanism if run not in cues]
        if unknown:
            raise InputError(f"--mechanism {unknown[0]}: name it under --price or --attribute too")
        rows = [row for run in (args.mechanism or list(cues)) for row in mechanism_rows(run, cues[run])]
        write_jsonl(os.path.join(args.collect, "mechanism.jsonl"), rows)
        print(json.dumps({"stage": "cue-mechanism", "rows": len(rows)}))


if __name__ == "__main__":
    run_main(main)
