"""DPO settings on dev, from a finished loop run's SFT model and pairs: the search that chose the recipe.

    python loop.py --run runs/dev0 --eval-splits dev                    # SFT, exploration, pairs, ETO on dev
    python research/sweep.py --run runs/dev0 --settings lr=1e-5,beta=0.1 lr=3e-5,beta=0.1 lr=1e-4,beta=1
    python research/sweep.py --run runs/dev0 --settings lr=3e-5,beta=0.1,epochs=2 --pairs iter1/pairs.jsonl

Each setting (dpo.py flags as NAME=VALUE, comma-separated) trains dpo.py from RUN/sft on RUN/iter1's pairs
into RUN/sweep/SETTING/ (with --control, also the NLL-only control at the same flags), then runs it
greedily on `dev`. Rows go to RUN/sweep.jsonl and a table to stdout: dev reward and success, how often the
first result opened is item 1 or item 2, and the invalid-action rate. Settings already run are not redone.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the stages live one folder up
from common import InputError, read_jsonl, run_main, write_jsonl
from plumbing.launch import run_stage
from research.report import behaviour


def parse_setting(text):
    """'lr=1e-5,beta=0.1' -> ['--lr', '1e-5', '--beta', '0.1']."""
    flags = []
    for part in text.split(","):
        name, _, value = part.partition("=")
        if not name or not value:
            raise InputError(f"--settings: {text!r} is not NAME=VALUE[,NAME=VALUE...]")
        flags += [f"--{name.replace('_', '-')}", value]
    return flags


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a loop run folder with sft/, expert.jsonl and iter1/")
    parser.add_argument("--settings", nargs="+", required=True, help="dpo.py flags per setting: lr=1e-5,beta=0.1")
    parser.add_argument("--pairs", default="iter1/pairs.jsonl", help="the pairs, inside --run")
    parser.add_argument("--control", action="store_true", help="also the NLL-only control of each setting")
    parser.add_argument("--seed", type=int, default=0, help="dpo.py and explore.py --seed")
    args = parser.parse_args()
    sft, pairs = os.path.join(args.run, "sft"), os.path.join(args.run, args.pairs)
    for path in (sft, pairs):
        if not os.path.exists(path):
            raise InputError(f"{path} not found; run loop.py --run {args.run} --eval-splits dev first")
    experts = {r["task_id"]: r for r in read_jsonl(os.path.join(args.run, "eval", "expert.dev.jsonl"))}
    rows = []
    for setting in args.settings:
        flags = parse_setting(setting)
        kinds = [("eto", [])] + ([("control", ["--dpo-weight", "0", "--sft-weight", "1"])] if args.control else [])
        for kind, extra in kinds:
            name = f"{setting}{'' if kind == 'eto' else ',control'}"
            folder = os.path.join(args.run, "sweep", name)
            run_stage("dpo.py", os.path.join(folder, "model"), "--model", sft, "--pairs", pairs, *flags, *extra,
                      "--seed", str(args.seed))
            dev = os.path.join(folder, "dev.jsonl")
            summary = run_stage("explore.py", dev, "--env", "shop", "--split", "dev", "--model",
                                os.path.join(folder, "model"), "--seed", str(args.seed), "--batch-size", "200")
            shown = behaviour(read_jsonl(dev), experts)
            rows.append({"setting": name, "pairs": args.pairs, "avg_reward": summary["avg_reward"],
                         "success_rate": summary["success_rate"], "invalid_action_rate": summary["invalid_action_rate"],
                         "opened": dict(shown["opened"].most_common(3)), "seed": args.seed})
    write_jsonl(os.path.join(args.run, "sweep.jsonl"), rows)
    print(f"{'setting':<40}{'dev reward':>12}{'success':>9}{'invalid':>9}  first result opened")
    for row in rows:
        print(f"{row['setting']:<40}{row['avg_reward']:>12.1f}{row['success_rate']:>9.1f}"
              f"{100 * row['invalid_action_rate']:>8.1f}%  {row['opened']}")


if __name__ == "__main__":
    run_main(main)
