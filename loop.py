"""The whole ETO loop as the shell commands a user would type, resumable, with an honest control.

    python loop.py                                   # offline default: shop env, tiny model, CPU
    python loop.py --run runs/seed1 --seed 1 --iterations 3
    python loop.py --run runs/smol --model path/to/chat-model --sft-lr 1e-5 --sft-epochs 3 --dpo-lr 1e-6
    python loop.py --run runs/report --methods sft,bon,rft,eto,self-play --seeds 0,1,2   # results.md, .png
    python loop.py --run runs/paper --iterations 2 --later-beta 0.5 --later-dpo-lr 5e-7 --pair-level trajectory

Expert data -> SFT -> evaluation; then for each iteration i: explore the train tasks with the current
policy -> failure/expert pairs -> DPO with reference = the current policy -> evaluation on test_seen
and test_unseen. Beside it runs the control "sft-continued": the same chosen trajectories, the same
number of steps, NLL only (`dpo.py --dpo-weight 0 --sft-weight 1`), so a gain that more training on
expert data alone would give is not credited to the failures.

Every command is printed before it runs. A stage whose outputs exist is skipped: every stage writes
its outputs by rename, so a killed stage leaves nothing that looks complete. Skipping looks at the
files, not the flags: for new settings, use a new --run folder (or copy in the stages to reuse). Results go to
RUN/results.jsonl (one line per model and split) and the table is printed at the end.

Baselines (--methods): `bon` samples N trajectories per test task from the SFT model and scores the
best by env reward (the paper's Best-of-N, an oracle pick); `rft` samples the train tasks, keeps the
distinct successes and fine-tunes the SFT model on expert + successes (rejection-sampling fine-tuning);
`self-play` (paper 4.5) uses no expert data after its start model: RFT on its own samples' successes,
then ETO with each task's best sample against its worst. With --seeds, each seed runs in RUN/seedS and
RUN/results.md holds mean +- std over the seeds. Every run writes RUN/results.png: avg reward per
training round per method (if matplotlib is installed: requirements-plot.txt).
"""
import argparse
import json
import os
import statistics
import shlex
import subprocess
import sys
import time

from explore import PAIR_LEVELS
from sft import run_main, write_json, write_jsonl

SPLITS = ("test_seen", "test_unseen")
METHODS = ("sft", "eto", "bon", "rft", "self-play")


def run_stage(command, outputs, summary_file):
    """Run `command` unless every path in `outputs` exists; return the stage's summary dict."""
    shown = " ".join(shlex.quote(part) for part in command)
    if all(os.path.exists(path) for path in outputs):
        print(f"[done] {shown}", flush=True)
    else:
        print(f"$ {shown}", flush=True)
        finished = subprocess.run([sys.executable, *command])
        if finished.returncode != 0:
            print(f"error: stage failed with exit status {finished.returncode}: {shown}", file=sys.stderr)
            sys.exit(finished.returncode)
    with open(summary_file) as f:
        return json.load(f)["summary"]


def format_table(rows):
    stages = list(dict.fromkeys(row["stage"] for row in rows))
    by_key = {(row["stage"], row["split"]): row for row in rows}
    lines = [f"{'model':<18}" + "".join(f"{split + ' reward':>20}{'success':>10}" for split in SPLITS)]
    for stage in stages:
        cells = ""
        for split in SPLITS:
            row = by_key.get((stage, split))
            cells += f"{row['avg_reward']:>20.1f}{row['success_rate']:>10.1f}" if row else f"{'-':>20}{'-':>10}"
        lines.append(f"{stage:<18}{cells}")
    return "\n".join(lines)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # the run
    parser.add_argument("--run", default="runs/default", help="folder for every artifact of this run")
    parser.add_argument("--env", default="shop")
    parser.add_argument("--model", default="tiny", help="'tiny' or a HF chat-model folder")
    parser.add_argument("--methods", default="sft,eto", help=f"comma list of: {', '.join(METHODS)} (sft always runs)")
    parser.add_argument("--iterations", type=int, default=1, help="explore -> pairs -> DPO rounds (paper: 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", default=None, help="comma list of seeds, each in RUN/seedS; writes RUN/results.md")
    parser.add_argument("--no-control", action="store_true", help="skip the sft-continued control")
    parser.add_argument("--train-limit", type=int, default=None, help="train tasks used (default: all)")
    parser.add_argument("--eval-limit", type=int, default=None, help="test tasks per split (default: all)")
    parser.add_argument("--max-steps", type=int, default=None, help="actions per episode (default: the env's)")
    # SFT
    parser.add_argument("--sft-epochs", type=int, default=10)
    parser.add_argument("--sft-lr", type=float, default=3e-3)
    # exploration (the authors' script explores greedily, once per task)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--pair-level", default="divergence", choices=PAIR_LEVELS,
                        help="divergence; trajectory as in the paper; step or mixture (paper App. B): see explore.py")
    # DPO
    # (defaults chosen on the shop env's dev split for the tiny model; the paper's for a 7B model:
    #  --dpo-lr 1e-6 --beta 0.1 --dpo-epochs 3 --sft-weight 0 --pair-level trajectory)
    parser.add_argument("--dpo-lr", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--dpo-epochs", type=int, default=2)
    parser.add_argument("--sft-weight", type=float, default=1.0, help="NLL on chosen added to ETO's DPO loss")
    parser.add_argument("--dpo-batch-size", type=int, default=32)
    parser.add_argument("--later-dpo-lr", type=float, default=None, help="lr from iteration 2 on (default: --dpo-lr; "
                                                                          "the authors' script: 5e-7)")
    parser.add_argument("--later-beta", type=float, default=None, help="beta from iteration 2 on (default: --beta; "
                                                                        "the authors' script: 0.5)")
    # baselines
    parser.add_argument("--bon-n", type=int, default=4, help="Best-of-N: samples per test task (temperature 1)")
    parser.add_argument("--rft-samples", type=int, default=4, help="RFT: samples per train task (temperature 1)")
    parser.add_argument("--rft-epochs", type=int, default=2, help="RFT: epochs on expert + successes")
    parser.add_argument("--rft-lr", type=float, default=1e-3)
    parser.add_argument("--self-play-demos", type=int, default=200,
                        help="self-play: expert trajectories that teach a from-scratch model the format (0: start "
                             "from --model as it is, for a chat model)")
    parser.add_argument("--self-play-epochs", type=int, default=40, help="self-play: epochs on the demos")
    parser.add_argument("--self-play-tasks", type=int, default=400, help="self-play: train tasks sampled")
    parser.add_argument("--self-play-samples", type=int, default=4, help="self-play: samples per train task (T = 1)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args()
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.method_list if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}; valid methods: {', '.join(METHODS)}")
    if min(args.self_play_tasks, args.self_play_samples - 1, args.self_play_epochs, args.self_play_demos + 1) < 1:
        raise ValueError("--self-play-tasks and --self-play-epochs must be at least 1, --self-play-samples at least 2, "
                         "--self-play-demos at least 0")
    if "self-play" in args.method_list and args.self_play_demos == 0 and args.model == "tiny":
        raise ValueError("--self-play-demos 0 starts self-play from --model as it is; the tiny model needs demos")
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    except ValueError:
        raise ValueError(f"--seeds must be a comma list of integers, got {args.seeds!r}") from None
    return args


def run_seed(args, run, seed_value):
    """Every stage of one seed in `run`; returns its result rows."""
    os.makedirs(run, exist_ok=True)
    seed = ["--seed", str(seed_value)]
    train_limit = ["--limit", str(args.train_limit)] if args.train_limit else []
    eval_limit = ["--limit", str(args.eval_limit)] if args.eval_limit else []
    rollout_flags = seed + (["--max-steps", str(args.max_steps)] if args.max_steps else [])
    rows = []

    def evaluate(stage, model_dir, extra=(), best_of=None):
        for split in SPLITS:
            out = os.path.join(run, "eval", f"{stage}.{split}.jsonl")
            summary = run_stage(["explore.py", "--env", args.env, "--split", split, "--model", model_dir,
                                 "--out", out, *eval_limit, *rollout_flags, *extra], [out, out + ".args.json"],
                                out + ".args.json")
            if best_of:
                summary = summary["best_of_n"]
            rows.append({"stage": stage, "split": split, "avg_reward": summary["avg_reward"],
                         "success_rate": summary["success_rate"], "n": summary.get("n", summary.get("tasks")),
                         "model": model_dir, "seed": seed_value})

    # 1. expert trajectories and SFT
    expert = os.path.join(run, "expert.jsonl")
    run_stage(["explore.py", "--env", args.env, "--split", "train", "--expert", "--out", expert, *train_limit],
              [expert, expert + ".args.json"], expert + ".args.json")
    sft_dir = os.path.join(run, "sft")
    run_stage(["sft.py", "--model", args.model, "--data", expert, "--out", sft_dir, "--epochs", str(args.sft_epochs),
               "--lr", str(args.sft_lr), *seed], [sft_dir], os.path.join(sft_dir, "args.json"))
    evaluate("sft", sft_dir)

    # baselines: Best-of-N at test time, RFT on the agent's own successes
    if "bon" in args.method_list:
        evaluate(f"best-of-{args.bon_n}", sft_dir, ["--temperature", "1.0", "--samples", str(args.bon_n)], best_of=True)
    if "rft" in args.method_list:
        folder = os.path.join(run, "rft")
        explored, successes = os.path.join(folder, "explore.jsonl"), os.path.join(folder, "successes.jsonl")
        summary = run_stage(["explore.py", "--env", args.env, "--split", "train", "--model", sft_dir, "--out", explored,
                             "--temperature", "1.0", "--samples", str(args.rft_samples), "--successes-out", successes,
                             *train_limit, *rollout_flags], [explored, successes, explored + ".args.json"],
                            explored + ".args.json")
        rft_dir = os.path.join(folder, "model")
        data = [expert] + ([successes] if summary["successes"] else [])
        run_stage(["sft.py", "--model", sft_dir, "--data", *data, "--out", rft_dir, "--epochs", str(args.rft_epochs),
                   "--lr", str(args.rft_lr), *seed], [rft_dir], os.path.join(rft_dir, "args.json"))
        evaluate("rft", rft_dir)

    # 2. ETO iterations, each with its control trained on the same chosen trajectories
    policy, control = sft_dir, sft_dir

    def dpo_flags(iteration):  # the authors' script lowers lr and raises beta from iteration 2
        later = iteration > 1
        lr = args.later_dpo_lr if later and args.later_dpo_lr is not None else args.dpo_lr
        beta = args.later_beta if later and args.later_beta is not None else args.beta
        return ["--lr", str(lr), "--beta", str(beta), "--epochs", str(args.dpo_epochs),
                "--batch-size", str(args.dpo_batch_size), *seed]

    for iteration in range(1, args.iterations + 1 if "eto" in args.method_list else 1):
        folder = os.path.join(run, f"iter{iteration}")
        explored, pairs = os.path.join(folder, "explore.jsonl"), os.path.join(folder, "pairs.jsonl")
        sampling = ["--temperature", str(args.temperature), "--samples", str(args.samples),
                    "--pair-level", args.pair_level]
        summary = run_stage(["explore.py", "--env", args.env, "--split", "train", "--model", policy, "--out", explored,
                             "--pairs-with", expert, "--pairs-out", pairs, *sampling, *train_limit, *rollout_flags],
                            [explored, pairs, explored + ".args.json"], explored + ".args.json")
        print(f"iteration {iteration}: {summary['pairs']} pairs (win {summary['win']}, tie {summary['tie']}, "
              f"lose {summary['lose']})", flush=True)
        if summary["pairs"] == 0:
            print("no pairs: the policy matches the expert on every train task; stopping", flush=True)
            break
        model_dir = os.path.join(folder, "model")
        run_stage(["dpo.py", "--model", policy, "--pairs", pairs, "--out", model_dir, "--sft-weight",
                   str(args.sft_weight), *dpo_flags(iteration)], [model_dir], os.path.join(model_dir, "args.json"))
        evaluate(f"eto-{iteration}", model_dir)
        policy = model_dir
        if not args.no_control:
            control_dir = os.path.join(folder, "control")
            run_stage(["dpo.py", "--model", control, "--pairs", pairs, "--out", control_dir, "--dpo-weight", "0",
                       "--sft-weight", "1", *dpo_flags(iteration)], [control_dir], os.path.join(control_dir, "args.json"))
            evaluate(f"sft-continued-{iteration}", control_dir)
            control = control_dir

    # 3. self-play (paper 4.5): no expert data after the start; the agent's own samples at T = 1, RFT on its
    # successes, then ETO pairing each task's best sample with its worst. The paper starts from the untuned
    # chat model (which reads one expert example in its prompt); a from-scratch model cannot act at all, so
    # it first learns the format from --self-play-demos expert trajectories.
    if "self-play" in args.method_list:
        folder = os.path.join(run, "self-play")
        start_dir, demos = args.model, None
        if args.self_play_demos:
            demos, start_dir = os.path.join(folder, "demos.jsonl"), os.path.join(folder, "start")
            run_stage(["explore.py", "--env", args.env, "--split", "train", "--expert", "--out", demos,
                       "--limit", str(args.self_play_demos)], [demos, demos + ".args.json"], demos + ".args.json")
            run_stage(["sft.py", "--model", args.model, "--data", demos, "--out", start_dir, "--epochs",
                       str(args.self_play_epochs), "--lr", str(args.sft_lr), *seed], [start_dir],
                      os.path.join(start_dir, "args.json"))
        evaluate("self-play-start", start_dir)
        # train tasks after the demos' (a demo's task is solved by heart), at most --self-play-tasks of them
        tasks = ["--skip", str(args.self_play_demos), "--limit", str(args.self_play_tasks)]
        sampling = ["--temperature", "1.0", "--samples", str(args.self_play_samples), *tasks, *rollout_flags]
        sampled, successes = os.path.join(folder, "rft-explore.jsonl"), os.path.join(folder, "successes.jsonl")
        summary = run_stage(["explore.py", "--env", args.env, "--split", "train", "--model", start_dir, "--out", sampled,
                             "--successes-out", successes, *sampling], [sampled, successes, sampled + ".args.json"],
                            sampled + ".args.json")
        if not summary["successes"]:
            print("self-play: the start model succeeded on no train task; nothing to fine-tune on", flush=True)
            return rows
        rft_dir = os.path.join(folder, "rft")  # as the rft baseline: the start's data + the successes
        run_stage(["sft.py", "--model", start_dir, "--data", *([demos] if demos else []), successes, "--out", rft_dir,
                   "--epochs", str(args.rft_epochs), "--lr", str(args.rft_lr), *seed], [rft_dir],
                  os.path.join(rft_dir, "args.json"))
        evaluate("self-play-rft", rft_dir)
        sampled, pairs = os.path.join(folder, "eto-explore.jsonl"), os.path.join(folder, "pairs.jsonl")
        level = args.pair_level if args.pair_level in ("trajectory", "divergence") else "trajectory"  # no expert to force
        summary = run_stage(["explore.py", "--env", args.env, "--split", "train", "--model", rft_dir, "--out", sampled,
                             "--pairs-within", "--pairs-out", pairs, "--pair-level", level, *sampling],
                            [sampled, pairs, sampled + ".args.json"], sampled + ".args.json")
        if summary["pairs"]:
            eto_dir = os.path.join(folder, "eto")
            run_stage(["dpo.py", "--model", rft_dir, "--pairs", pairs, "--out", eto_dir, "--sft-weight",
                       str(args.sft_weight), *dpo_flags(1)], [eto_dir], os.path.join(eto_dir, "args.json"))
            evaluate("self-play-rft-eto", eto_dir)
    return rows


def mean_std_table(rows):
    """A markdown table: mean +- std over seeds of avg reward and success, per stage and split."""
    stages = list(dict.fromkeys(row["stage"] for row in rows))
    seeds = sorted({row["seed"] for row in rows})
    lines = [f"mean +- std (population std) over seeds {', '.join(map(str, seeds))}", "",
             "| model | " + " | ".join(f"{split} reward | {split} success" for split in SPLITS) + " |",
             "|---|" + "---|---|" * len(SPLITS)]
    for stage in stages:
        cells = []
        for split in SPLITS:
            for field in ("avg_reward", "success_rate"):
                values = [row[field] for row in rows if row["stage"] == stage and row["split"] == split]
                cells.append(f"{statistics.mean(values):.1f} +- {statistics.pstdev(values):.1f}" if values else "-")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_point(stage):
    """(series, training round) of a result row for the plot; the SFT model starts the ETO, control and RFT lines."""
    if stage == "sft":
        return [("ETO", 0), ("SFT continued (control)", 0), ("RFT", 0)]
    if stage.startswith("eto-"):
        return [("ETO", int(stage.split("-")[1]))]
    if stage.startswith("sft-continued-"):
        return [("SFT continued (control)", int(stage.split("-")[2]))]
    if stage.startswith("best-of-"):
        return [(f"Best-of-{stage.split('-')[2]} (oracle pick, no training)", 0)]
    rounds = {"rft": ("RFT", 1), "self-play-start": ("self-play", 0), "self-play-rft": ("self-play", 1),
              "self-play-rft-eto": ("self-play", 2)}
    return [rounds[stage]] if stage in rounds else []


def plot_results(rows, path):
    """A PNG of avg reward (mean +- std over seeds) per training round per method, one panel per test split.
    matplotlib is optional (requirements-plot.txt): without it, say so and go on."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plot: matplotlib is not installed (pip install -r requirements-plot.txt)", flush=True)
        return None
    points = {}  # (split, series) -> {round: [reward per seed]}
    for row in rows:
        for series, round_ in plot_point(row["stage"]):
            points.setdefault((row["split"], series), {}).setdefault(round_, []).append(row["avg_reward"])
    figure, axes = plt.subplots(1, len(SPLITS), figsize=(10, 4), sharey=True)
    for axis, split in zip(axes, SPLITS):
        for (point_split, series), by_round in points.items():
            if point_split != split or (len(by_round) == 1 and series in ("ETO", "SFT continued (control)", "RFT")):
                continue  # the SFT point alone is not a line of its own
            rounds = sorted(by_round)
            axis.errorbar(rounds, [statistics.mean(by_round[r]) for r in rounds],
                          yerr=[statistics.pstdev(by_round[r]) for r in rounds], marker="o", capsize=3, label=series)
        axis.set_title(split)
        axis.set_xlabel("training rounds after the start model")
        axis.xaxis.get_major_locator().set_params(integer=True)
    axes[0].set_ylabel("avg reward (x100), mean +- std over seeds")
    axes[-1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path + ".tmp.png", dpi=80)
    plt.close(figure)
    os.replace(path + ".tmp.png", path)
    return path


def main():
    args = parse_args()
    started = time.time()
    os.makedirs(args.run, exist_ok=True)
    write_json(os.path.join(args.run, "loop_args.json"), vars(args))
    if args.seed_list is None:
        rows = run_seed(args, args.run, args.seed)
    else:
        rows = [row for s in args.seed_list for row in run_seed(args, os.path.join(args.run, f"seed{s}"), s)]
    results = os.path.join(args.run, "results.jsonl")
    write_jsonl(results, rows)
    if args.seed_list is None:
        print(format_table(rows))
    else:
        table = mean_std_table(rows)
        with open(os.path.join(args.run, "results.md.tmp"), "w") as f:  # temp name, then rename
            f.write(table)
        os.replace(os.path.join(args.run, "results.md.tmp"), os.path.join(args.run, "results.md"))
        print(table)
    plot = plot_results(rows, os.path.join(args.run, "results.png"))
    print(json.dumps({"stage": "loop", "run": args.run, "results": results, "plot": plot,
                      "seconds": round(time.time() - started, 1)}))


if __name__ == "__main__":
    run_main(main)
