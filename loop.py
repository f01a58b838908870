"""The whole ETO loop as the shell commands a user would type, resumable, with an honest control.

    python loop.py                                   # the paper's ETO on the shop env, tiny model, CPU
    python loop.py --run runs/seed1 --seed 1 --iterations 2 --variants divergence-nll
    python loop.py --run runs/smol --model path/to/chat-model      # the paper's lr, beta, epochs
    python loop.py --run runs/gpus --model path/to/chat-model --procs 4     # torchrun: a GPU a process

Expert data -> SFT -> evaluation; then each iteration: explore the train tasks with the current policy ->
the paper's failure/expert pairs -> DPO (Eq. 11) with reference = the current policy -> evaluation. Beside
it the control "sft-continued": NLL on the same pairs' chosen side, same steps and lr (`dpo.py
--dpo-weight 0 --sft-weight 1`), so what more training on expert turns gives is not credited to failures.

Every command is printed before it runs, on the pinned AVX2 kernels (plumbing.launch.CPU_KERNELS). A stage whose
output exists and records the same command is skipped (plumbing/launch.py), so a killed run resumes; one
made by another command stops the loop with one line naming the flag (--redo-changed redoes it and
every stage after it). The table is printed at the end, RUN/results.jsonl holds its rows, and research/report.py
writes RUN/report.html. Baselines and seeds are experiments built on this loop: research/. The flags and
the settings they default to (RECIPES, the tiny model's, chosen on dev; PAPER, for a loaded chat model;
VARIANTS) are in common.py, shared with those experiments, and `--help` shows them.
"""
import argparse
import json
import os
import time
from dataclasses import dataclass

import envs
from common import (VARIANTS, HelpFormatter, InputError, add_loop_flags, fill_model_defaults, format_table, run_main,
                    write_json, write_jsonl)
from plumbing.launch import Launch, kernel_settings, launch_words, run_command, run_stage, run_stages


def evaluate(args, run, name, model_dir, seed, *flags):
    """Rollouts of a model on each --eval-splits split, side by side (--jobs); one result row per split.
    Greedy ones take the recipe's --rollout-batch-size; sampled ones (flags) explore.py's, since a sample
    depends on the batch it was drawn in."""
    outs = [os.path.join(run, "eval", f"{name}.{split}.jsonl") for split in args.eval_splits]
    summaries = run_stages([("explore.py", out, ["--env", args.env, "--split", split, "--model", model_dir,
                                                 *limit_flags(args.eval_limit), *rollout_flags(args, seed),
                                                 *(flags or batch_flags(args))])
                            for split, out in zip(args.eval_splits, outs)])
    return [{"stage": name, "split": split, "avg_reward": summary["avg_reward"], "success_rate": summary["success_rate"],
             "n": summary["n"], "model": model_dir, "seed": seed}
            for split, summary in zip(args.eval_splits, summaries) if summary is not None]  # None: --dry-run


def limit_flags(limit):
    return ["--limit", str(limit)] if limit else []


def explored_tasks(args):
    """How many train tasks each iteration explores: the first --explore-limit of the --train-limit (0: all)."""
    limits = [limit for limit in (args.train_limit, args.explore_limit) if limit]
    return min(limits) if limits else None


def rollout_flags(args, seed):
    return ["--seed", str(seed)] + (["--max-steps", str(args.max_steps)] if args.max_steps else [])


def batch_flags(args):
    """explore.py --batch-size for the loop's greedy rollouts (None: explore.py's default)."""
    return ["--batch-size", str(args.rollout_batch_size)] if args.rollout_batch_size else []


def dpo_flags(args, iteration, seed, lr=None, beta=None):
    """DPO's settings for an iteration (lr and beta: --dpo-lr and --beta unless given); the authors' script
    lowers lr and raises beta from iteration 2."""
    lr = args.dpo_lr if lr is None else lr
    beta = args.beta if beta is None else beta
    if iteration > 1 and args.later_dpo_lr is not None:
        lr = args.later_dpo_lr
    if iteration > 1 and args.later_beta is not None:
        beta = args.later_beta
    return ["--lr", str(lr), "--beta", str(beta), "--epochs", str(args.dpo_epochs),
            "--batch-size", str(args.dpo_batch_size), "--seed", str(seed), "--autocast", args.autocast]


def eto_loop(args, run, seed):
    """Every ETO stage of one seed in `run`; returns (result rows, {"expert": path, "sft": path})."""
    if not Launch.dry_run:
        os.makedirs(run, exist_ok=True)
    # 1. expert trajectories and SFT
    expert = os.path.join(run, "expert.jsonl")
    run_stage("explore.py", expert, "--env", args.env, "--split", "train", "--expert", *limit_flags(args.train_limit))
    sft = os.path.join(run, "sft")
    sft_flags = ["--seed", str(seed), "--autocast", args.autocast]
    for flag, value in (("--tiny-layers", args.tiny_layers), ("--epochs", args.sft_epochs), ("--lr", args.sft_lr),
                        ("--batch-size", args.sft_batch_size), ("--warmup-ratio", args.sft_warmup_ratio)):
        if value is not None:  # None: sft.py's default for the model
            sft_flags += [flag, str(value)]
    run_stage("sft.py", sft, "--model", args.model, "--data", expert, *sft_flags)
    # the expert on the same tasks: the ceiling, and the path failures are compared to
    run_stages([("explore.py", os.path.join(run, "eval", f"expert.{split}.jsonl"),
                 ["--env", args.env, "--split", split, "--expert", *limit_flags(args.eval_limit)])
                for split in args.eval_splits])
    rows = evaluate(args, run, "sft", sft, seed)

    # 2-5. each iteration: explore the train tasks with the current policy, pair failures with the expert,
    # DPO from the current policy (also the reference), evaluate. The control trains on the same pairs'
    # chosen side; each --variants entry is a chain of its own, trained from the same policy in iteration 1
    chains = [Chain("eto", sft, args.pair_level, args.sft_weight, args.dpo_lr, args.beta)]
    chains += [Chain(f"eto-{name}", sft, **VARIANTS[name]) for name in args.variants]
    control = sft
    for iteration in range(1, args.iterations + 1):
        folder = os.path.join(run, f"iter{iteration}")
        explored_by_policy = {}
        for chain in chains:
            if chain.policy not in explored_by_policy:  # chains at the same policy share one exploration
                suffix = "" if not explored_by_policy else f"-{chain.name}"
                explored_by_policy[chain.policy] = explore(args, folder, suffix, chain.policy, expert, seed)
            chain.explored = explored_by_policy[chain.policy]
        eto = chains[0]
        eto.pairs = chain_pairs(eto, folder, "", expert, iteration)
        if eto.pairs is None:
            print("no pairs: the policy matches the expert on every train task; stopping", flush=True)
            break
        for chain in chains[1:]:
            chain.pairs = chain_pairs(chain, folder, f"-{chain.name}", expert, iteration)
        # DPO from each chain's policy, and beside it (--jobs) the control: NLL on ETO's chosen side
        trainings, outs = [], {}
        for chain in chains:
            if chain.pairs is None:
                continue
            outs[chain.name] = os.path.join(folder, "model" if chain is eto else chain.name)
            trainings.append(("dpo.py", outs[chain.name], [
                "--model", chain.policy, "--pairs", chain.pairs, *(["--sft-weight", str(chain.sft_weight)]
                                                                   if chain.sft_weight else []),
                *dpo_flags(args, iteration, seed, chain.lr, chain.beta)]))
        control_out = os.path.join(folder, "control")
        if not args.no_control:
            trainings.append(("dpo.py", control_out, ["--model", control, "--pairs", eto.pairs, "--dpo-weight", "0",
                                                      "--sft-weight", "1", *dpo_flags(args, iteration, seed)]))
        run_stages(trainings)
        for chain in chains:
            if chain.name in outs:
                rows += evaluate(args, run, f"{chain.name}-{iteration}", outs[chain.name], seed)
                chain.policy = outs[chain.name]
        if not args.no_control:
            rows += evaluate(args, run, f"sft-continued-{iteration}", control_out, seed)
            control = control_out
    return rows, {"expert": expert, "sft": sft}


@dataclass
class Chain:
    """One line of models through the iterations: ETO, or a --variants entry, with its pair rule and DPO settings."""
    name: str
    policy: str
    pair_level: str
    sft_weight: float
    lr: float
    beta: float
    explored: list = None  # this iteration's exploration files, from `policy`
    pairs: str = None      # this iteration's pairs file


def explore(args, folder, suffix, policy, expert, seed):
    """Explore the train tasks with `policy` (step: after t-1 teacher-forced expert turns); the files written."""
    flags = ["--env", args.env, "--split", "train", "--model", policy, "--temperature", str(args.temperature),
             "--samples", str(args.samples), *limit_flags(explored_tasks(args)), *rollout_flags(args, seed),
             *batch_flags(args)]
    explored = []
    if args.pair_level != "step":
        explored.append(os.path.join(folder, f"explore{suffix}.jsonl"))
        run_stage("explore.py", explored[-1], *flags)
    if args.pair_level in ("step", "mixture"):  # the agent acts after the expert's first t-1 turns
        explored.append(os.path.join(folder, f"explore-step{suffix}.jsonl"))
        run_stage("explore.py", explored[-1], *flags, "--teacher-force", expert)
    return explored


def chain_pairs(chain, folder, suffix, expert, iteration):
    """The chain's failure/expert pairs of this iteration; the file, or None when there are none."""
    pairs = os.path.join(folder, f"pairs{suffix}.jsonl")
    level = "divergence" if chain.pair_level == "divergence" else "trajectory"
    summary = run_stage("pairs.py", pairs, "--explored", *chain.explored, "--expert", expert, "--level", level)
    if summary is None:  # --dry-run
        summary = {"pairs": "?", "win": "?", "tie": "?", "lose": "?"}
    print(f"iteration {iteration}, {chain.name}: {summary['pairs']} pairs (win {summary['win']}, tie {summary['tie']}, "
          f"lose {summary['lose']})", flush=True)
    return None if summary["pairs"] == 0 else pairs


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_loop_flags(parser)
    return parser


def main():
    args = build_parser().parse_args()
    fill_model_defaults(args)
    if args.iterations < 0:
        raise InputError(f"--iterations must be at least 0, got {args.iterations}")
    envs.find(args.env)  # a typo stops here, before any stage writes into the run folder
    pin_line = kernel_settings()[0]
    if pin_line:  # the stages run on AVX2 kernels: a user who runs them by hand types this line first
        print(f"$ {pin_line}", flush=True)
    if args.dry_run:
        eto_loop(args, args.run, args.seed)
        print(f"$ {launch_words('research/report.py', '--run', args.run)[1]}")
        return
    started = time.time()
    rows, _ = eto_loop(args, args.run, args.seed)
    write_json(os.path.join(args.run, "loop_args.json"), vars(args))  # once every stage matches these flags
    results = os.path.join(args.run, "results.jsonl")
    write_jsonl(results, rows)
    print(format_table(rows))
    run_command("research/report.py", "--run", args.run)
    print(json.dumps({"stage": "loop", "run": args.run, "results": results, "seconds": round(time.time() - started, 1)}))


if __name__ == "__main__":
    run_main(main)
