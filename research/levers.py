"""The search for ETO's effect: levers, each on dev beside its own control, over seeds.

    python research/levers.py --run runs/levers --seeds 0,1                     # every lever
    python research/levers.py --run runs/levers --seeds 0,1 --levers eto,dpop   # some of them
    python research/levers.py --run runs/wide --sft-args "--tiny-hidden 384 --tiny-layers 6 --lr 1e-3"   # a wider model
    python research/levers.py --run runs/levers --seeds 0,1 --levers eto --iterations 3   # iterations 2-3 go on from 1's

Per seed, in RUN/seedS, the loop's own stages and paths: expert data, SFT, greedy exploration of the
train tasks (iter1/explore.jsonl), so a finished `loop.py --seed S` run folder copied to RUN/seedS is
reused, not retrained (a stage already done is never redone, so new --sft-args need a new --run). Then
per lever: its pairs, its DPO model from the SFT model, and the control for those pairs -- NLL on the
same chosen turns, same lr, epochs and batches, no preference term (shared by the levers that use the
same pairs). With --iterations N, rounds 2..N go on from each lever's own model (it explores, makes the
pairs and is the reference, as in loop.py) and from its control's own model. Every model runs greedily
on `dev` (the test splits only report, never choose). Rows go to RUN/levers.jsonl and the table to
RUN/levers.md: dev reward and success per seed, their mean, ETO minus its control per seed, which result
the models open first (item 1 / item 2 counts), how many bought with every option as the instruction
asked, the invalid-action rate, and what the lever's pairs teach about the first result (pairs that first
differ at a result click, and how many choose or reject item 1). Run again on a finished run, it redoes
no stage and rewrites the table. On a GPU host, `--explore-device cpu` runs the rollouts on its CPU cores
beside the training (`gpu_levers.sh` runs several seeds that way).
"""
import argparse
import json
import os
import shlex
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the stages live one folder up
from common import RECIPES, VARIANTS, InputError, read_jsonl, run_main, write_json, write_jsonl
from loop import limit_flags, run_stage
from research.report import behaviour, item_pair_counts

# lever -> (exploration, pair level, DPO flags over divergence pairs + NLL's settings[, flags its control gets too])
LEVERS = {
    "eto": ("greedy", "divergence", []),                                     # divergence pairs + NLL
    "eto-no-nll": ("greedy", "divergence", ["--sft-weight", "0"]),           # the preference term alone
    "dpop": ("greedy", "divergence", ["--loss", "dpop", "--dpop-lambda", "5"]),
    "trajectory": ("greedy", "trajectory", []),                              # the paper's pairs, + NLL
    "trajectory-dpop": ("greedy", "trajectory", ["--loss", "dpop", "--dpop-lambda", "5"]),
    "sampled4": ("sampled4", "divergence", []),                              # 4 samples per task at T = 1
    "sampled4-within": ("sampled4", "within", []),                           # best vs worst sample of a task
    "sampled4-onpolicy": ("sampled4", "onpolicy", []),  # each failed sample vs the task's own success, else the expert
    # every step also trains NLL on a batch of whole expert trajectories, ETO and its control alike: the
    # chosen turns of failures alone are a biased sample (an item pair's chosen click is never item 1)
    "eto-replay": ("greedy", "divergence", [], ["--replay", "{expert}"]),
}
EXPLORATIONS = {"greedy": [], "sampled4": ["--samples", "4", "--temperature", "1"]}


def study_trainer(flags):
    """The script a lever's DPO flags need: dpo.py's loop with another loss or with expert replay, else dpo.py."""
    if "--loss" in flags:
        return "research/preference_losses.py"
    return "research/replay.py" if "--replay" in flags else "dpo.py"


def dev_row(args, seed_run, name, model, seed, kind, lever):
    out = os.path.join(seed_run, "dev", f"{name}.jsonl")
    run_stage("explore.py", out, "--env", args.env, "--split", "dev", "--model", model, "--seed", str(seed),
              *limit_flags(args.dev_limit), *args.explore_flags)
    seen = behaviour(read_jsonl(out), {})
    return {"lever": lever, "model": kind, "seed": seed, "avg_reward": round(seen["avg_reward"], 2),
            "success_rate": round(seen["success"], 2), "item_1": seen["opened"]["item 1"],
            "item_2": seen["opened"]["item 2"], "options_right": seen["options_right"], "invalid_rate": round(seen["invalid"], 2), "n": seen["n"]}


def start_seed(args, seed_run, seed):
    """The seed's expert data and SFT model (the loop's paths), and SFT's dev row."""
    expert = os.path.join(seed_run, "expert.jsonl")
    run_stage("explore.py", expert, "--env", args.env, "--split", "train", "--expert", *limit_flags(args.train_limit))
    sft = os.path.join(seed_run, "sft")
    epochs = ["--epochs", str(args.sft_epochs)] if args.sft_epochs else []
    run_stage("sft.py", sft, "--model", "tiny", "--data", expert, "--seed", str(seed), *epochs, *args.sft_flags)
    return dev_row(args, seed_run, "sft", sft, seed, "sft", "-")


def lever_names(lever, iteration):
    """(ETO model, control) folder names under RUN/seedS/levers. In iteration 1 a control is shared by the
    levers with the same pairs; later, each lever's pairs come from its own model, so each has its own."""
    exploration, level, _, *shared = LEVERS[lever]
    if iteration == 1:
        return lever, f"control-{exploration}-{level}" + (f"-{lever}" if shared else "")
    return f"{lever}-iter{iteration}", f"control-{lever}-iter{iteration}"


def lever_rows(args, seed_run, seed, lever, iteration=1):
    """One lever on one seed at one iteration: its ETO model's dev row and its control's. Iteration 1 starts
    from SFT; iteration i from the lever's model of iteration i-1, which explores, makes the pairs and is
    the reference (as in loop.py), while the control goes on from its own model of iteration i-1."""
    expert, sft = os.path.join(seed_run, "expert.jsonl"), os.path.join(seed_run, "sft")
    exploration, level, flags, *shared = LEVERS[lever]
    shared = [flag.replace("{expert}", expert) for flag in (shared[0] if shared else [])]
    name, control_name = lever_names(lever, iteration)
    folder = os.path.join(seed_run, f"iter{iteration}")
    if iteration == 1:  # SFT explores once for every lever that explores the same way
        policy, control_from = sft, sft
        explored = os.path.join(folder, "explore.jsonl" if exploration == "greedy" else f"explore-{exploration}.jsonl")
        pairs = os.path.join(folder, f"pairs-{exploration}-{level}.jsonl")
    else:
        policy, control_from = (os.path.join(seed_run, "levers", n) for n in lever_names(lever, iteration - 1))
        explored, pairs = os.path.join(folder, f"explore-{lever}.jsonl"), os.path.join(folder, f"pairs-{lever}.jsonl")
    run_stage("explore.py", explored, "--env", args.env, "--split", "train", "--model", policy, "--seed", str(seed),
              *EXPLORATIONS[exploration], *limit_flags(args.train_limit), *args.explore_flags)
    if level == "within":  # self-play's pairs: no expert
        source = ["--within", "--level", "divergence"]
    elif level == "onpolicy":  # the task's own success stands in for the expert where there is one
        source = ["--expert", expert, "--on-policy", "--level", "divergence"]
    else:
        source = ["--expert", expert, "--level", level]
    summary = run_stage("pairs.py", pairs, "--explored", explored, *source)
    # every lever departs from divergence pairs + NLL (VARIANTS in common.py), at the full recipe's DPO epochs
    variant = VARIANTS["divergence-nll"]
    base = ["--lr", str(variant["lr"]), "--beta", str(variant["beta"]), "--epochs", str(RECIPES["full"]["dpo_epochs"]),
            "--sft-weight", str(variant["sft_weight"]), "--seed", str(seed)]
    model = os.path.join(seed_run, "levers", name)
    trainer = study_trainer(flags + shared)
    run_stage(trainer, model, "--model", policy, "--pairs", pairs, *base, *flags, *shared)
    # the control: the same chosen turns, the same steps, NLL only
    control = os.path.join(seed_run, "levers", control_name)
    run_stage(study_trainer(shared), control, "--model", control_from, "--pairs", pairs, *base, *shared, "--dpo-weight", "0",
              "--sft-weight", "1")
    return [{**dev_row(args, seed_run, name, model, seed, "eto", lever), "pairs": summary["pairs"],
             "iteration": iteration, **item_pair_counts(read_jsonl(pairs, ("prompt", "chosen", "rejected")))},
            {**dev_row(args, seed_run, control_name, control, seed, "control", lever), "iteration": iteration}]


def options_right(rows):
    if any("options_right" not in r for r in rows):  # rows without this column
        return "-"
    return f"{sum(r['options_right'] for r in rows)} of {sum(r['n'] for r in rows)}"


def item_pairs(rows):
    """Over seeds: the ETO rows' item pairs, and in how many item 1 was chosen / rejected."""
    if any("item_pairs" not in r for r in rows):  # not an ETO row, or written before this column
        return ""
    return (f"{sum(r['item_pairs'] for r in rows)} ({sum(r['item_1_chosen'] for r in rows)} / "
            f"{sum(r['item_1_rejected'] for r in rows)})")


def row_label(row):
    """A lever's name, with its iteration after the first (rows written before --iterations have none)."""
    iteration = row.get("iteration", 1)
    return row["lever"] if iteration == 1 else f"{row['lever']} (iter {iteration})"


def levers_table(rows):
    """Markdown: per lever (and iteration), ETO and its control on dev, mean over seeds and each seed, and
    ETO - control."""
    seeds = sorted({row["seed"] for row in rows})
    lines = [f"dev, {rows[0]['n']} tasks, seeds {', '.join(map(str, seeds))}; reward per seed in brackets", "",
             "| lever | model | dev reward | success | ETO − control per seed | item 1 / item 2 opened "
             "| options as asked | invalid % | item pairs (item 1 chosen / rejected) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label in dict.fromkeys(row_label(row) for row in rows):
        for kind in ("sft", "eto", "control"):
            found = sorted((r for r in rows if row_label(r) == label and r["model"] == kind), key=lambda r: r["seed"])
            if not found:
                continue
            gaps = ""
            if kind == "eto":
                control = {r["seed"]: r["avg_reward"] for r in rows
                           if row_label(r) == label and r["model"] == "control"}
                gaps = ", ".join(f"{r['avg_reward'] - control[r['seed']]:+.1f}" for r in found if r["seed"] in control)
            lines.append(f"| {label} | {kind} | {statistics.mean(r['avg_reward'] for r in found):.1f} "
                         f"[{', '.join(format(r['avg_reward'], '.1f') for r in found)}] | "
                         f"{statistics.mean(r['success_rate'] for r in found):.1f} | {gaps} | "
                         f"{sum(r['item_1'] for r in found)} / {sum(r['item_2'] for r in found)} | "
                         f"{options_right(found)} | "
                         f"{statistics.mean(r['invalid_rate'] for r in found):.1f} | {item_pairs(found)} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/levers")
    parser.add_argument("--env", default="shop")
    parser.add_argument("--seeds", default="0,1", help="comma list; each seed trains its own SFT model")
    parser.add_argument("--levers", default=",".join(LEVERS), help=f"comma list of: {', '.join(LEVERS)}")
    parser.add_argument("--iterations", type=int, default=1, help="explore -> pairs -> DPO rounds per lever, each "
                        "from the lever's model before (the paper: 2)")
    parser.add_argument("--train-limit", type=int, default=None, help="train tasks (default: all)")
    parser.add_argument("--dev-limit", type=int, default=None, help="dev tasks (default: all)")
    parser.add_argument("--sft-epochs", type=int, default=None, help="default: sft.py's for the tiny model")
    parser.add_argument("--sft-args", default="", help="more sft.py flags, e.g. '--tiny-hidden 384 --tiny-layers 6'")
    parser.add_argument("--explore-device", default=None, help="device for the rollouts (default: explore.py's, cuda "
                        "when there is one); a tiny model's decode is launch-bound on a GPU, so a many-core host can "
                        "run rollouts on cpu beside training on the GPU")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args()
    try:
        args.sft_flags = shlex.split(args.sft_args)
    except ValueError as error:
        raise InputError(f"--sft-args {args.sft_args!r}: {error}") from None
    args.explore_flags = ["--device", args.explore_device] if args.explore_device else []
    args.lever_list = [lever.strip() for lever in args.levers.split(",") if lever.strip()]
    unknown = [lever for lever in args.lever_list if lever not in LEVERS]
    if unknown:
        raise InputError(f"unknown lever {unknown[0]!r}; valid levers: {', '.join(LEVERS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise InputError(f"--seeds must be a comma list of integers, got {args.seeds!r}") from None
    if args.iterations < 1:
        raise InputError(f"--iterations must be at least 1, got {args.iterations}")
    started = time.time()
    os.makedirs(args.run, exist_ok=True)
    write_json(os.path.join(args.run, "levers_args.json"), vars(args))
    rows = [start_seed(args, os.path.join(args.run, f"seed{seed}"), seed) for seed in seeds]
    for iteration in range(1, args.iterations + 1):
        for lever in args.lever_list:  # lever by lever over the seeds, so each lever's comparison lands whole
            for seed in seeds:
                rows += lever_rows(args, os.path.join(args.run, f"seed{seed}"), seed, lever, iteration)
            write_jsonl(os.path.join(args.run, "levers.jsonl"), rows)
    table = levers_table(rows)
    with open(os.path.join(args.run, "levers.md.tmp"), "w") as f:
        f.write(table)
    os.replace(os.path.join(args.run, "levers.md.tmp"), os.path.join(args.run, "levers.md"))
    print(table)
    print(json.dumps({"stage": "levers", "run": args.run, "seconds": round(time.time() - started, 1)}))


if __name__ == "__main__":
    run_main(main)
