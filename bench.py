"""Where the loop's time goes: one table, every figure measured side by side in the same run.

    python loop.py                                  # first: a finished run to measure with
    python bench.py --run runs/default              # a few minutes on 2 cores
    python bench.py --run runs/default --only rollout,loop

Sections (--only picks some):
  matmul   the machine's fp32 and bf16 matmul peak (GFLOP/s), the yardstick for the rest
  sft      SFT forward+backward tokens/s and GFLOP/s (6 x params x tokens) in fp32 and under bf16 autocast,
           and the padding waste of sft.py's length-bucketed batches against unsorted ones
  dpo      one DPO optimizer step: reference precomputed (dpo.py) against an online reference forward,
           chosen and rejected in two forwards (dpo.py) against one concatenated forward; padding waste
  rollout  episodes/s and generated tokens/s of greedy test_unseen rollouts at batch 1 and the default
           batch, against what the model's forward alone would allow
  loop     the stage times of RUN, read from each stage's summary (`seconds`)
Timings are wall-clock seconds on this machine (torch threads: as torch sets them); figures are
medians of a few repeats where a repeat is cheap.
"""
import argparse
import json
import os
import random
import statistics
import time

import torch

import envs
from common import InputError, autocast, run_main, load_model, pad_batch, read_jsonl, sequence_logps, tokenize_conversation
from dpo import accumulate_step, build_parser as dpo_parser, reference_logps, tokenize_pair
from explore import make_generate_policy, rollout
from sft import length_batches, masked_nll

SECTIONS = ("matmul", "sft", "dpo", "rollout", "loop")


class Rows(list):
    """The table's rows, each printed as it is measured (a slow section shows its figures early)."""
    def append(self, row):
        super().append(row)
        print("| " + " | ".join(row) + " |", flush=True)


def timed(function, repeats=3):
    """Median wall seconds of `function()` over `repeats` calls, after one warm-up call."""
    function()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def matmul_peak(dtype, n=1024):
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n ** 3 / timed(lambda: a @ b, repeats=10) / 1e9


def padding_waste(batches):
    """Padded positions / all positions of a list of batches of (ids, mask)."""
    real = sum(len(ids) for batch in batches for ids, _ in batch)
    padded = sum(len(batch) * max(len(ids) for ids, _ in batch) for batch in batches)
    return 1 - real / padded


def bench_sft(model, tokenizer, expert, rows, batch_size=16, n_batches=2):
    examples = [tokenize_conversation(tokenizer, t["messages"]) for t in expert[:batch_size * 50]]
    rng = random.Random(0)
    batches = [[examples[i] for i in b] for b in length_batches(examples, batch_size, rng)]
    unsorted = [examples[i:i + batch_size] for i in range(0, len(examples), batch_size)]
    rows.append(("sft", "padding waste, length-bucketed batches (sft.py)", f"{padding_waste(batches):.1%}"))
    rows.append(("sft", "padding waste, batches in file order", f"{padding_waste(unsorted):.1%}"))
    n_params = sum(p.numel() for p in model.parameters())
    work = batches[:n_batches]
    tokens = sum(len(ids) for batch in work for ids, _ in batch)
    model.train()
    for precision in ("none", "bf16"):
        def step():
            for batch in work:
                with autocast("cpu", precision):
                    loss_sum, count = masked_nll(model, batch, "cpu")
                (loss_sum / count).backward()
            model.zero_grad(set_to_none=True)
        seconds = timed(step, repeats=1)
        name = "fp32" if precision == "none" else "bf16 autocast"
        rows.append(("sft", f"train tokens/s, {name}", f"{tokens / seconds:,.0f} ({6 * n_params * tokens / seconds / 1e9:.0f} GFLOP/s)"))


def bench_dpo(model, tokenizer, pairs_path, rows, n_pairs=16):
    pairs = read_jsonl(pairs_path, ("prompt", "chosen", "rejected"))[:n_pairs]
    examples = [tokenize_pair(tokenizer, p) for p in pairs]
    args = dpo_parser().parse_args(["--model", "m", "--pairs", "p", "--out", "o", "--beta", "1", "--sft-weight", "1",
                                    "--micro-batch-size", "8", "--device", "cpu"])
    model.eval()
    reference = reference_logps(model, examples, "cpu", False)
    indices = list(range(len(examples)))
    two = [[(e[0], e[1]) for e in examples[i:i + 8]] + [(e[2], e[3]) for e in examples[i:i + 8]] for i in range(0, len(examples), 8)]
    separate = [[(e[0], e[1]) for e in examples[i:i + 8]] for i in range(0, len(examples), 8)] + \
               [[(e[2], e[3]) for e in examples[i:i + 8]] for i in range(0, len(examples), 8)]
    rows.append(("dpo", "padding waste, chosen and rejected apart (dpo.py)", f"{padding_waste(separate):.1%}"))
    rows.append(("dpo", "padding waste, concatenated", f"{padding_waste(two):.1%}"))

    def precomputed():
        accumulate_step(model, examples, indices, reference, args)
        model.zero_grad(set_to_none=True)

    def online():
        with torch.no_grad():
            reference_logps(model, examples, "cpu", False, batch_size=8)
        precomputed()

    def concatenated():  # one forward over chosen and rejected of each micro-batch
        for batch in two:
            logps, _ = sequence_logps(model, batch, "cpu")
            logps.sum().backward()
        model.zero_grad(set_to_none=True)

    def two_forwards():
        for i in range(0, len(two)):
            half = len(two[i]) // 2
            chosen, _ = sequence_logps(model, two[i][:half], "cpu")
            rejected, _ = sequence_logps(model, two[i][half:], "cpu")
            (chosen.sum() + rejected.sum()).backward()
        model.zero_grad(set_to_none=True)

    base = timed(precomputed, 2)
    rows.append(("dpo", f"step of {len(examples)} pairs, reference precomputed (dpo.py)", f"{base:.2f} s"))
    rows.append(("dpo", f"step of {len(examples)} pairs, online reference forward", f"{timed(online, 2):.2f} s"))
    rows.append(("dpo", "forward+backward, chosen and rejected in two forwards", f"{timed(two_forwards, 2):.2f} s"))
    rows.append(("dpo", "forward+backward, one concatenated forward", f"{timed(concatenated, 2):.2f} s"))


def bench_rollout(model, tokenizer, rows, n_episodes=32, default_batch=32):
    env = envs.make("shop")
    episodes = [(task_id, 0) for task_id in env.task_ids("test_unseen")[:n_episodes]]
    policy = make_generate_policy(model, tokenizer)
    generated = {}
    for batch_size in (1, default_batch):
        started = time.perf_counter()
        records = rollout("shop", episodes, policy, batch_size=batch_size)
        seconds = time.perf_counter() - started
        replies = [m["content"] for r in records for m in r["messages"] if m["role"] == "assistant"]
        generated[batch_size] = sum(len(tokenizer(reply)["input_ids"]) + 1 for reply in replies)  # + end of turn
        rows.append(("rollout", f"{n_episodes} episodes at batch {batch_size}",
                     f"{seconds:.1f} s, {n_episodes / seconds:.1f} episodes/s, {generated[batch_size] / seconds:,.0f} generated tokens/s"))
    # what the forward alone allows: one batch of full conversations, scored in one pass
    conversations = [tokenizer(tokenizer.apply_chat_template(r["messages"], tokenize=False), add_special_tokens=False)["input_ids"]
                     for r in records[:default_batch]]
    ids = pad_batch(conversations, tokenizer.pad_token_id)
    with torch.no_grad():
        seconds = timed(lambda: model(input_ids=ids), repeats=3)
    tokens = sum(len(c) for c in conversations)
    rows.append(("rollout", f"one forward over {len(conversations)} whole episodes", f"{tokens / seconds:,.0f} tokens/s"))


def bench_loop(run, rows):
    for root, _, files in sorted(os.walk(run)):
        for name in sorted(files):
            if name == "args.json" or name.endswith(".args.json"):
                with open(os.path.join(root, name)) as f:
                    summary = json.load(f).get("summary", {})
                if "seconds" in summary:
                    path = os.path.relpath(os.path.join(root, name), run).replace("/args.json", "").replace(".args.json", "")
                    rows.append(("loop", f"{summary['stage']}: {path}", f"{summary['seconds']:.0f} s"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/default", help="a finished loop.py run: its sft model, expert data, pairs")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of: {', '.join(SECTIONS)}")
    args = parser.parse_args()
    sections = args.only.split(",")
    needed = [os.path.join(args.run, p) for p in ("sft", "expert.jsonl", "iter1/pairs.jsonl")]
    missing = [p for p in needed if not os.path.exists(p)]
    if missing:
        raise InputError(f"{missing[0]} is missing: run `python loop.py --run {args.run}` first")
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, model {args.run}/sft\n")
    print("| section | measure | value |\n|---|---|---|", flush=True)
    rows = Rows()
    if "matmul" in sections:
        rows.append(("matmul", "fp32 matmul peak (1024^3)", f"{matmul_peak(torch.float32):.0f} GFLOP/s"))
        rows.append(("matmul", "bf16 matmul peak (1024^3)", f"{matmul_peak(torch.bfloat16):.0f} GFLOP/s"))
    model, tokenizer = load_model(os.path.join(args.run, "sft"))
    if "sft" in sections:
        bench_sft(model, tokenizer, read_jsonl(os.path.join(args.run, "expert.jsonl")), rows)
    if "dpo" in sections:
        bench_dpo(model, tokenizer, os.path.join(args.run, "iter1", "pairs.jsonl"), rows)
    if "rollout" in sections:
        model.eval()
        bench_rollout(model, tokenizer, rows)
    if "loop" in sections:
        bench_loop(args.run, rows)


if __name__ == "__main__":
    run_main(main)
