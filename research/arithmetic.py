"""How far the lecture recipe's SFT moves when only the arithmetic changes: the same seed, data and command
under other correct floating-point kernels (the order of a sum's terms, FMA or not), beside the spread over
seeds. A recipe people teach from gives nearly the same model under each; one on a cliff does not.

    python research/arithmetic.py                                     # the lecture recipe, 4 settings x 3 seeds
    python research/arithmetic.py --name lr1e-3 --set sft_lr=1e-3     # a candidate recipe, chosen on dev
    python research/arithmetic.py --seeds 0 --perturbations pinned --eval-limit 50   # a quick look

Each (perturbation, seed) runs `sft.py` with the recipe's SFT flags and evaluates the model greedily on
dev, both under the perturbation's environment variables; a row per run goes to results/arithmetic/NAME.jsonl
(the weights' sha1, SFT's train/dev loss, loss curve and largest gradient norm, dev reward and success, and
how often the first result opened follows the price). research/pages.py makes docs/performance.md's table
from those files. Runs go --jobs at a time (each on the threads its perturbation names); MKL's COMPATIBLE
branch takes about 2.5 times the pinned kernels' time, so 3 x 3 take about 70 minutes on 2 cores. A
finished run is reused; --pinned-from takes the pinned row from the loop's own runs.
"""
import argparse
import hashlib
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import HelpFormatter, read_jsonl, run_main  # noqa: E402
from plumbing.launch import CPU_KERNELS, flag_values  # noqa: E402
from research.pages import cpu_kind  # noqa: E402
from common import RECIPES  # noqa: E402

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PINNED = dict(CPU_KERNELS)
# Each a correct arithmetic that sums in another order or rounds at other places; the threads are part of it
# (MKL splits a product over its threads). On an AVX2-only AMD EPYC, each gives SFT weights of their own hash.
PERTURBATIONS = {
    "pinned": {**PINNED, "OMP_NUM_THREADS": "2"},                                  # what loop.py runs
    "aten-default": {**PINNED, "ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1"},  # ATen without vectors
    "mkl-compatible": {**PINNED, "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "1"},   # MKL's SSE2-level code path
    "mkl-compatible-2-threads": {**PINNED, "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "2"},  # split over 2 threads
    "micro-batch-1": {**PINNED, "OMP_NUM_THREADS": "1"},  # the pinned kernels; each step summed one sequence at a time
}
# sft.py flags a perturbation adds: the same gradient in exact arithmetic, summed in another order and padding
SFT_FLAGS = {"micro-batch-1": ["--micro-batch-size", "1"]}
SETTABLE = ("tiny_layers", "sft_epochs", "sft_batch_size", "sft_lr", "sft_warmup_ratio")


def sft_flags(recipe, seed):
    flags = ["--model", "tiny", "--seed", str(seed), "--autocast", "none", "--tiny-layers", str(recipe["tiny_layers"]),
             "--epochs", str(recipe["sft_epochs"]), "--lr", str(recipe["sft_lr"]), "--batch-size", str(recipe["sft_batch_size"])]
    if recipe.get("sft_warmup_ratio") is not None:
        flags += ["--warmup-ratio", str(recipe["sft_warmup_ratio"])]
    return flags


def first_click_follows_price(record):
    """For an episode whose first results page shows `item 1` over the instruction's cap: True when the first
    result opened is within the cap, False when it is not (or none is opened); None for other episodes."""
    messages = record["messages"]
    cap = re.search(r"lower than ([0-9.]+) dollars", messages[1]["content"])
    prices = None
    for message in messages[2:]:
        if message["role"] == "user" and "[item 1]" in message["content"] and prices is None:
            prices = {int(n): float(p) for n, p in re.findall(r"\[item (\d+)\][^\n]*\$([0-9.]+)", message["content"])}
        click = re.search(r"Action: click\[item (\d+)\]", message["content"]) if message["role"] == "assistant" else None
        if click and prices is not None:
            if prices.get(1, 0.0) <= float(cap.group(1)):
                return None
            return prices.get(int(click.group(1)), float("inf")) <= float(cap.group(1))
    if prices is not None and cap and prices.get(1, 0.0) > float(cap.group(1)):
        return False
    return None


def run_one(name, perturbation, seed, recipe, args):
    """Start SFT then the dev evaluation of one (perturbation, seed) as one shell process; returns it."""
    folder = os.path.join(args.work, name, f"{perturbation}-seed{seed}")
    env = {**os.environ, **PERTURBATIONS[perturbation]}
    limit = ["--limit", str(args.eval_limit)] if args.eval_limit else []
    sft = [sys.executable, os.path.join(HERE, "sft.py"), "--data", args.expert, *sft_flags(recipe, seed),
           *SFT_FLAGS.get(perturbation, []), "--out", os.path.join(folder, "sft")]
    dev = [sys.executable, os.path.join(HERE, "explore.py"), "--env", "shop", "--split", "dev", "--model",
           os.path.join(folder, "sft"), "--seed", str(seed), "--batch-size", "200", *limit, "--out",
           os.path.join(folder, "dev.jsonl")]
    os.makedirs(folder, exist_ok=True)
    steps = []
    if not os.path.exists(os.path.join(folder, "sft", "args.json")):
        steps.append(sft)
    if not os.path.exists(os.path.join(folder, "dev.jsonl.args.json")) or steps:
        steps.append(dev)
    script = " && ".join(" ".join(f"'{word}'" for word in step) for step in steps) or "true"
    log = open(os.path.join(folder, "log.txt"), "a")
    return subprocess.Popen(["bash", "-c", script], env=env, stdout=log, stderr=subprocess.STDOUT), folder


def row_of(name, perturbation, seed, folder, dev_file=None):
    dev_file = dev_file or os.path.join(folder, "dev.jsonl")
    with open(os.path.join(folder, "sft", "args.json")) as f:
        sft = json.load(f)
    with open(dev_file + ".args.json") as f:
        dev = json.load(f)["summary"]
    with open(os.path.join(folder, "sft", "model.safetensors"), "rb") as f:
        sha1 = hashlib.sha1(f.read()).hexdigest()
    follows = [first_click_follows_price(r) for r in read_jsonl(dev_file)]
    follows = [f for f in follows if f is not None]
    return {"recipe": name, "perturbation": perturbation, "seed": seed, "kernels": PERTURBATIONS[perturbation],
            "sft_command": sft.get("command"), "weights_sha1": sha1, "train_loss": sft["summary"]["train_loss"],
            "dev_loss": sft["summary"]["dev_loss"], "max_grad_norm": sft["summary"].get("max_grad_norm"),
            "sft_epochs_run": sft["summary"]["epochs"], "sft_seconds": sft["summary"]["seconds"],
            "loss_curve": [h.get("loss_curve") for h in sft.get("history", [])],
            "dev_reward": dev["avg_reward"], "dev_success": dev["success_rate"], "dev_n": dev["n"],
            "item_1_over_cap": len(follows), "first_click_follows_price": sum(follows)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--name", default="lecture", help="the recipe's name: results/arithmetic/NAME.jsonl")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"a setting changed from the lecture recipe ({', '.join(SETTABLE)})")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds of each perturbation")
    parser.add_argument("--perturbations", nargs="+", default=["pinned", "aten-default", "mkl-compatible", "micro-batch-1"],
                        choices=tuple(PERTURBATIONS), help="arithmetic settings, each its own environment variables "
                        "(PERTURBATIONS; mkl-compatible-2-threads differs from mkl-compatible only in MKL's split; "
                        "micro-batch-1 sums each step's gradient one sequence at a time)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--pinned-from", nargs="+", default=[], metavar="RUN",
                        help="loop.py runs (with dev evaluated) whose SFT is the pinned row of their seed: the same "
                             "command on the same kernels, not trained twice")
    parser.add_argument("--eval-limit", type=int, default=None, help="dev tasks evaluated (None: all 200)")
    parser.add_argument("--work", default="runs/arithmetic", help="folder for the models and rollouts")
    parser.add_argument("--results", default="results/arithmetic", help="folder for NAME.jsonl")
    args = parser.parse_args()
    recipe = dict(RECIPES["lecture"])
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in SETTABLE or not value:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(SETTABLE)}")
        recipe[key] = float(value) if key in ("sft_lr", "sft_warmup_ratio") else int(value)
    args.expert = os.path.join(args.work, "expert.jsonl")
    if not os.path.exists(args.expert):  # the env's scripted expert: the same file under any arithmetic
        os.makedirs(args.work, exist_ok=True)
        subprocess.run([sys.executable, os.path.join(HERE, "explore.py"), "--env", "shop", "--split", "train",
                        "--expert", "--out", args.expert], check=True, stdout=subprocess.DEVNULL)
    rows, from_runs = [], {}
    for run in args.pinned_from:
        with open(os.path.join(run, "loop_args.json")) as f:
            from_runs[json.load(f)["seed"]] = run
    for seed, run in sorted(from_runs.items()):
        if seed in args.seeds and "pinned" in args.perturbations:
            rows.append(row_of(args.name, "pinned", seed, run, os.path.join(run, "eval", "sft.dev.jsonl")))
            got, wanted = flag_values(rows[-1]["sft_command"]), flag_values(sft_flags(recipe, seed))
            differ = [flag for flag in wanted if flag != "--warmup-ratio" and got.get(flag) != wanted[flag]]
            if differ or got.get("--warmup-ratio", "0.03") != wanted.get("--warmup-ratio", "0.03"):
                raise ValueError(f"{run}: its SFT was not trained with this recipe ({(differ or ['--warmup-ratio'])[0]} "
                                 f"{got.get((differ or ['--warmup-ratio'])[0])!r})")
    todo = [(p, s) for s in args.seeds for p in args.perturbations if not (p == "pinned" and s in from_runs)]
    for start in range(0, len(todo), args.jobs):
        started = [(p, s, *run_one(args.name, p, s, recipe, args)) for p, s in todo[start:start + args.jobs]]
        for perturbation, seed, process, folder in started:
            if process.wait() != 0:
                raise ValueError(f"{perturbation} seed {seed} failed; its log: {folder}/log.txt")
            rows.append(row_of(args.name, perturbation, seed, folder))
            print(json.dumps({k: rows[-1][k] for k in ("perturbation", "seed", "weights_sha1", "train_loss",
                                                      "dev_reward", "dev_success", "first_click_follows_price")}), flush=True)
    os.makedirs(args.results, exist_ok=True)
    out = os.path.join(args.results, f"{args.name}.jsonl")
    settings = {"recipe": recipe, "cpu": cpu_kind(), "eval_limit": args.eval_limit}
    with open(out + ".part", "w") as f:
        f.write(json.dumps({"settings": settings}) + "\n")
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(out + ".part", out)
    print(json.dumps({"stage": "arithmetic", "out": out, "runs": len(rows)}))


if __name__ == "__main__":
    run_main(main)
