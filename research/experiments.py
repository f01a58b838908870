"""Experiments built on the ETO loop: baselines beside it, several seeds, a mean +- std table.

    python research/experiments.py --run runs/report --methods sft,bon,rft,eto,self-play --seeds 0,1,2
    python research/experiments.py --run runs/seeds --seeds 0,1,2           # ETO and its control over 3 seeds

Takes every flag of loop.py (the same stages, through its `run_stage`, so finished stages are reused)
and these methods beside ETO:
- `bon`: Best-of-N (the paper's baseline): N samples per test task from the SFT model at temperature 1,
  scored by the best one's env reward (an oracle pick, no training).
- `rft`: rejection-sampling fine-tuning: sample the train tasks, keep the distinct successes, fine-tune
  the SFT model on expert + successes.
- `failure-sft`: SFT continued, NLL only, on the expert turns where the SFT model's sampled failures
  left the expert's path (RFT's samples, paired with the expert at the first differing action): the
  ETO step's settings (lr, epochs, batch), no preference term. It asks whether failures help by
  choosing which expert turns to train on rather than through the preference term.
- `self-play` (paper 4.5): no expert data after its start model: RFT on its own samples' successes,
  then ETO with each task's best sample against its worst (`pairs.py --within`), beside its control
  (NLL on the same best samples, the same steps; `--no-control` leaves it out).
With --seeds, each seed runs in RUN/seedS. RUN/results.jsonl holds every row, RUN/results.md the mean +-
std over seeds; research/report.py writes RUN/results.png (avg reward per training round per method) and
RUN/report.html.
"""
import argparse
import copy
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the stages live one folder up
from common import InputError, add_loop_flags, fill_model_defaults, read_jsonl, run_main, write_json, write_jsonl
from envs import parse_action
from loop import dpo_flags, eto_loop, evaluate, explored_tasks, limit_flags, rollout_flags, run_command, run_stage
from research.report import mean_std_table

METHODS = ("sft", "eto", "bon", "rft", "failure-sft", "self-play")


# ---- what a set of samples is worth ---------------------------------------------------------------
def best_of_n(records):
    """Best-of-N (paper's baseline): per task, the best reward among its samples; averaged over tasks."""
    best = {}
    for record in records:
        best[record["task_id"]] = max(best.get(record["task_id"], 0.0), record["reward"])
    return {"tasks": len(best), "avg_reward": round(100 * sum(best.values()) / max(len(best), 1), 2),
            "success_rate": round(100 * sum(r >= 1.0 for r in best.values()) / max(len(best), 1), 2)}


def distinct_successes(records):
    """Successful trajectories (reward 1), one per task and distinct action sequence: RFT's data."""
    seen, kept = set(), []
    for record in records:
        actions = tuple(parse_action(m["content"]) for m in record["messages"] if m["role"] == "assistant")
        if record["reward"] >= 1.0 and (record["task_id"], actions) not in seen:
            seen.add((record["task_id"], actions))
            kept.append(record)
    return kept

def write_successes(explored, out):
    """RFT's extra data from a sampled exploration file (recomputed from it, so a rerun writes the same)."""
    successes = distinct_successes(read_jsonl(explored, ("task_id", "messages", "reward")))
    write_jsonl(out, successes)
    return len(successes)


# ---- the baselines ---------------------------------------------------------------------------------
def best_of_n_rows(args, run, sft, seed):
    """Best-of-N on both test splits: N samples per task at temperature 1, the best by env reward."""
    name = f"best-of-{args.bon_n}"
    rows = evaluate(args, run, name, sft, seed, "--temperature", "1.0", "--samples", str(args.bon_n))
    for row in rows:
        best = best_of_n(read_jsonl(os.path.join(run, "eval", f"{name}.{row['split']}.jsonl"), ("task_id", "reward")))
        row.update(avg_reward=best["avg_reward"], success_rate=best["success_rate"], n=best["tasks"])
    return rows


def train_samples(args, run, sft, seed):
    """The SFT model's --rft-samples samples at temperature 1 of each train task ETO explores (RFT's and
    failure-sft's data)."""
    explored = os.path.join(run, "rft", "explore.jsonl")
    run_stage("explore.py", explored, "--env", args.env, "--split", "train", "--model", sft, "--temperature", "1.0",
              "--samples", str(args.rft_samples), *limit_flags(explored_tasks(args)), *rollout_flags(args, seed))
    return explored


def rft_rows(args, run, expert, sft, seed):
    """RFT: the SFT model's sampled successes on the train tasks, fine-tuned on with the expert data."""
    folder = os.path.join(run, "rft")
    explored, successes = train_samples(args, run, sft, seed), os.path.join(folder, "successes.jsonl")
    data = [expert] + ([successes] if write_successes(explored, successes) else [])
    model = os.path.join(folder, "model")
    run_stage("sft.py", model, "--model", sft, "--data", *data, "--epochs", str(args.rft_epochs),
              "--lr", str(args.rft_lr), "--seed", str(seed), "--autocast", args.autocast)
    return evaluate(args, run, "rft", model, seed)


def failure_sft_rows(args, run, expert, sft, seed):
    """Failure-guided SFT: NLL on the expert side of the sampled failures' divergence pairs, from the SFT model."""
    folder = os.path.join(run, "failure-sft")
    pairs = os.path.join(folder, "pairs.jsonl")
    summary = run_stage("pairs.py", pairs, "--explored", train_samples(args, run, sft, seed), "--expert", expert,
                        "--level", "divergence")
    if summary is not None and summary["pairs"] == 0:
        print("failure-sft: no sampled failure on any train task; nothing to train on", flush=True)
        return []
    model = os.path.join(folder, "model")
    run_stage("dpo.py", model, "--model", sft, "--pairs", pairs, "--dpo-weight", "0", "--sft-weight", "1",
              *dpo_flags(args, 1, seed))
    return evaluate(args, run, "failure-sft", model, seed)


def self_play_rows(args, run, seed):
    """Self-play (paper 4.5): the start model's own samples at T = 1, RFT on its successes, then ETO
    pairing each task's best sample with its worst. The paper starts from the untuned chat model (which
    reads one expert example in its prompt); a from-scratch model cannot act at all, so it first learns
    the format from --self-play-demos expert trajectories, and sees no expert data after them."""
    folder = os.path.join(run, "self-play")
    start, demos = args.model, []
    if args.self_play_demos:
        demos, start = [os.path.join(folder, "demos.jsonl")], os.path.join(folder, "start")
        run_stage("explore.py", demos[0], "--env", args.env, "--split", "train", "--expert",
                  "--limit", str(args.self_play_demos))
        lr = ["--lr", str(args.sft_lr)] if args.sft_lr is not None else []  # else sft.py's, by model
        run_stage("sft.py", start, "--model", args.model, "--data", demos[0], "--epochs", str(args.self_play_epochs),
                  *lr, "--seed", str(seed), "--autocast", args.autocast)
    rows = evaluate(args, run, "self-play-start", start, seed)
    # train tasks after the demos' (a demo's task is solved by heart), at most --self-play-tasks of them
    sampling = ["--env", args.env, "--split", "train", "--temperature", "1.0", "--samples", str(args.self_play_samples),
                "--skip", str(args.self_play_demos), "--limit", str(args.self_play_tasks), *rollout_flags(args, seed)]
    sampled, successes = os.path.join(folder, "rft-explore.jsonl"), os.path.join(folder, "successes.jsonl")
    run_stage("explore.py", sampled, "--model", start, *sampling)
    if not write_successes(sampled, successes):
        print("self-play: the start model succeeded on no train task; nothing to fine-tune on", flush=True)
        return rows
    rft = os.path.join(folder, "rft")  # as the rft baseline: the start's data + the successes
    run_stage("sft.py", rft, "--model", start, "--data", *demos, successes, "--epochs", str(args.rft_epochs),
              "--lr", str(args.rft_lr), "--seed", str(seed), "--autocast", args.autocast)
    rows += evaluate(args, run, "self-play-rft", rft, seed)
    sampled, pairs = os.path.join(folder, "eto-explore.jsonl"), os.path.join(folder, "pairs.jsonl")
    run_stage("explore.py", sampled, "--model", rft, *sampling)
    summary = run_stage("pairs.py", pairs, "--explored", sampled, "--within", "--level", args.self_play_pair_level)
    if summary["pairs"]:
        eto = os.path.join(folder, "eto")
        run_stage("dpo.py", eto, "--model", rft, "--pairs", pairs, "--sft-weight", str(args.sft_weight),
                  *dpo_flags(args, 1, seed))
        rows += evaluate(args, run, "self-play-rft-eto", eto, seed)
        if not args.no_control:  # its control: NLL on the same best samples, the same steps, no preference term
            control = os.path.join(folder, "control")
            run_stage("dpo.py", control, "--model", rft, "--pairs", pairs, "--dpo-weight", "0", "--sft-weight", "1",
                      *dpo_flags(args, 1, seed))
            rows += evaluate(args, run, "self-play-rft-control", control, seed)
    return rows


def run_seed(args, run, seed):
    """ETO and its control (unless --methods leaves eto out), then the baselines, for one seed."""
    loop_args = copy.copy(args)
    if "eto" not in args.method_list:
        loop_args.iterations = 0  # expert data, SFT and its evaluation only
    rows, paths = eto_loop(loop_args, run, seed)
    if "bon" in args.method_list:
        rows += best_of_n_rows(args, run, paths["sft"], seed)
    if "rft" in args.method_list:
        rows += rft_rows(args, run, paths["expert"], paths["sft"], seed)
    if "failure-sft" in args.method_list:
        rows += failure_sft_rows(args, run, paths["expert"], paths["sft"], seed)
    if "self-play" in args.method_list:
        rows += self_play_rows(args, run, seed)
    return rows


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_loop_flags(parser)
    group = parser.add_argument_group("experiments")
    group.add_argument("--methods", default="sft,eto", help=f"comma list of: {', '.join(METHODS)} (sft always runs)")
    group.add_argument("--seeds", default=None, help="comma list of seeds, each in RUN/seedS; writes RUN/results.md")
    group.add_argument("--bon-n", type=int, default=4, help="Best-of-N: samples per test task (temperature 1)")
    group.add_argument("--rft-samples", type=int, default=4, help="RFT and failure-sft: samples per train task "
                                                                     "(temperature 1)")
    group.add_argument("--rft-epochs", type=int, default=2, help="RFT: epochs on expert + successes")
    group.add_argument("--rft-lr", type=float, default=None, help="tiny: 1e-3; a loaded model: 1e-5 (the paper's SFT lr)")
    group.add_argument("--self-play-demos", type=int, default=200,
                       help="self-play: expert trajectories that teach a from-scratch model the format (0: start "
                            "from --model as it is, for a chat model)")
    group.add_argument("--self-play-epochs", type=int, default=40, help="self-play: epochs on the demos")
    group.add_argument("--self-play-tasks", type=int, default=400, help="self-play: train tasks sampled")
    group.add_argument("--self-play-samples", type=int, default=4, help="self-play: samples per train task (T = 1)")
    group.add_argument("--self-play-pair-level", default="divergence", choices=("trajectory", "divergence"),
                       help="self-play's pairs (step levels need an expert to replay)")
    args = parser.parse_args()
    fill_model_defaults(args)
    if args.rft_lr is None:
        args.rft_lr = 1e-3 if args.model == "tiny" else 1e-5
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.method_list if m not in METHODS]
    if unknown:
        raise InputError(f"unknown method {unknown[0]!r}; valid methods: {', '.join(METHODS)}")
    for flag, value, least in (("--self-play-tasks", args.self_play_tasks, 1), ("--self-play-epochs", args.self_play_epochs, 1),
                               ("--self-play-samples", args.self_play_samples, 2), ("--self-play-demos", args.self_play_demos, 0),
                               ("--bon-n", args.bon_n, 1), ("--rft-samples", args.rft_samples, 1)):
        if value < least:
            raise InputError(f"{flag} must be at least {least}, got {value}")
    if "self-play" in args.method_list and args.self_play_demos == 0 and args.model == "tiny":
        raise InputError("--self-play-demos 0 starts self-play from --model as it is; the tiny model needs demos")
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    except ValueError:
        raise InputError(f"--seeds must be a comma list of integers, got {args.seeds!r}") from None
    return args


def joined_rows(earlier, rows):
    """The rows of RUN/results.jsonl after this run: each earlier row in its place, replaced by this run's
    row of the same model, split and seed; then this run's other rows."""
    fresh = {(row["stage"], row["split"], row["seed"]): row for row in rows}
    kept = [fresh.pop((row["stage"], row["split"], row["seed"]), row) for row in earlier]
    return kept + list(fresh.values())


def main():
    args = parse_args()
    started = time.time()
    os.makedirs(args.run, exist_ok=True)
    write_json(os.path.join(args.run, "experiments_args.json"), vars(args))
    if args.seed_list is None:
        rows = run_seed(args, args.run, args.seed)
    else:
        rows = [row for seed in args.seed_list for row in run_seed(args, os.path.join(args.run, f"seed{seed}"), seed)]
    results = os.path.join(args.run, "results.jsonl")
    if os.path.exists(results):  # a loop run's rows (ETO, its control) stay beside the methods run here
        rows = joined_rows(read_jsonl(results, ("stage", "split", "seed")), rows)
    write_jsonl(results, rows)
    table = mean_std_table(rows)
    with open(os.path.join(args.run, "results.md.tmp"), "w") as f:  # temp name, then rename
        f.write(table)
    os.replace(os.path.join(args.run, "results.md.tmp"), os.path.join(args.run, "results.md"))
    print(table)
    run_command("research/report.py", "--run", args.run)  # RUN/results.png and RUN/report.html
    print(json.dumps({"stage": "experiments", "run": args.run, "results": results,
                      "seconds": round(time.time() - started, 1)}))


if __name__ == "__main__":
    run_main(main)
