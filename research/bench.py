"""Where the loop's time goes: one table, every figure measured side by side in the same run.

    python loop.py                                  # first: a finished run to measure with
    python research/bench.py --run runs/default              # a few minutes on 2 cores
    python research/bench.py --run runs/default --only rollout,loop
    python research/bench.py --run runs/default --only matmul,sft,dpo,rollout --out results/bench/bench.json

Sections (--only picks some):
  matmul   the machine's fp32 and bf16 matmul peak (GFLOP/s), the yardstick for the rest
  sft      SFT forward+backward tokens/s and GFLOP/s (6 x params x tokens) in fp32 and under bf16 autocast,
           and the padding waste of sft.py's length-bucketed batches against unsorted ones
  dpo      one DPO optimizer step: reference precomputed (dpo.py) against an online reference forward,
           chosen and rejected in two forwards (dpo.py) against one concatenated forward; padding waste
  rollout  episodes/s and generated tokens/s of greedy test_unseen rollouts at batch 1 and the default
           batch, against what the model's forward alone would allow
  loop     each stage of RUN: its seconds (its summary's) and the tokens it ran through the model, by
           role (system prompt, observations, the agent's turns), counted from the files it read or wrote
Timings are wall-clock seconds on the machine it runs on (torch threads: as torch sets them); figures are
medians of a few repeats where a repeat is cheap.
"""
import argparse
import json
import os
import random
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the stages live one folder up
import envs
from common import (InputError, autocast, load_model, micro_batches, pad_batch, read_jsonl, run_main,
                    sequence_logps, tokenize_conversation, write_json)
from dpo import Objective, accumulate_step, reference_logps, tokenize_pair
from explore import make_generate_policy, rollout
from explore import end_of_turn_token
from plumbing.ranks import Ranks
from sft import length_batches, masked_nll

SECTIONS = ("matmul", "sft", "dpo", "rollout", "loop")
DEVICE = "cpu"  # --device: where the model runs and the matmuls are timed


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
        synchronize()
        started = time.perf_counter()
        function()
        synchronize()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def synchronize():
    """Wait for queued GPU work, so a wall-clock time covers it."""
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(dtype, n=1024):
    if DEVICE.startswith("cuda"):
        n = 8192  # a GPU needs a large product to reach its peak
    a, b = torch.randn(n, n, dtype=dtype, device=DEVICE), torch.randn(n, n, dtype=dtype, device=DEVICE)
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
                with autocast(DEVICE, precision):
                    loss_sum, count = masked_nll(model, batch, DEVICE)
                (loss_sum / count).backward()
            model.zero_grad(set_to_none=True)
        seconds = timed(step, repeats=1)
        name = "fp32" if precision == "none" else "bf16 autocast"
        rows.append(("sft", f"train tokens/s, {name}", f"{tokens / seconds:,.0f} ({6 * n_params * tokens / seconds / 1e9:.0f} GFLOP/s)"))


def bench_dpo(model, tokenizer, pairs_path, rows, n_pairs=16):
    pairs = read_jsonl(pairs_path, ("prompt", "chosen", "rejected"))[:n_pairs]
    examples = [tokenize_pair(tokenizer, p) for p in pairs]
    objective = Objective(beta=1.0, sft_weight=1.0)  # the loop's default for the tiny model

    def split(indices):  # dpo.py's passes at --micro-batch-size 8
        return micro_batches(indices, 8)
    model.eval()
    reference = reference_logps(model, examples, DEVICE, False)
    indices = list(range(len(examples)))
    two = [[(e[0], e[1]) for e in examples[i:i + 8]] + [(e[2], e[3]) for e in examples[i:i + 8]] for i in range(0, len(examples), 8)]
    separate = [[(e[0], e[1]) for e in examples[i:i + 8]] for i in range(0, len(examples), 8)] + \
               [[(e[2], e[3]) for e in examples[i:i + 8]] for i in range(0, len(examples), 8)]
    rows.append(("dpo", "padding waste, chosen and rejected apart (dpo.py)", f"{padding_waste(separate):.1%}"))
    rows.append(("dpo", "padding waste, concatenated", f"{padding_waste(two):.1%}"))

    def precomputed():
        accumulate_step(model, examples, indices, reference, objective, Ranks(device=DEVICE), split)
        model.zero_grad(set_to_none=True)

    def online():
        with torch.no_grad():
            reference_logps(model, examples, DEVICE, False, batch_size=8)
        precomputed()

    def concatenated():  # one forward over chosen and rejected of each micro-batch
        for batch in two:
            logps, _ = sequence_logps(model, batch, DEVICE)
            logps.sum().backward()
        model.zero_grad(set_to_none=True)

    def two_forwards():
        for i in range(0, len(two)):
            half = len(two[i]) // 2
            chosen, _ = sequence_logps(model, two[i][:half], DEVICE)
            rejected, _ = sequence_logps(model, two[i][half:], DEVICE)
            (chosen.sum() + rejected.sum()).backward()
        model.zero_grad(set_to_none=True)

    base = timed(precomputed, 2)
    rows.append(("dpo", f"step of {len(examples)} pairs, reference precomputed (dpo.py)", f"{base:.2f} s"))
    rows.append(("dpo", f"step of {len(examples)} pairs, online reference forward", f"{timed(online, 2):.2f} s"))
    rows.append(("dpo", "forward+backward, chosen and rejected in two forwards", f"{timed(two_forwards, 2):.2f} s"))
    rows.append(("dpo", "forward+backward, one concatenated forward", f"{timed(concatenated, 2):.2f} s"))


def generate_policy(model, tokenizer, max_new_tokens=64):
    """The rollout policy before the hand-written decode: transformers' `generate`, the whole conversation
    re-encoded every turn (kept here to measure against)."""
    from transformers import GenerationConfig
    stop_ids = sorted({tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer)), tokenizer.eos_token_id})
    config = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id,
                              do_sample=False)

    @torch.no_grad()
    def policy(conversations, task_ids=None):
        texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
        tokenizer.padding_side = "left"
        batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(model.device)
        output = model.generate(**batch, generation_config=config)[:, batch["input_ids"].shape[1]:].tolist()
        return [(tokenizer.decode(row, skip_special_tokens=True).split("\nObservation:")[0].strip(),
                 any(t in stop_ids for t in row)) for row in output]
    return policy


def bench_rollout(model, tokenizer, rows, n_episodes=64, default_batch=32):
    # (ScienceWorld's episodes are longer, but its JVM's steps, ~1 s each, hide the decode: 16 episodes of 10
    # turns took 135-195 s with each of three decodes, so the shop alone is measured)
    for env_name, max_steps, max_chars in [("shop", None, None)]:
        env = envs.make(env_name)
        episodes = [(task_id, 0) for task_id in env.task_ids("test_unseen")[:n_episodes]]
        where = f"{env_name} test_unseen, {len(episodes)} episodes"
        records_by_variant = {}
        for name, make_policy, batch_size in (
                ("generate(), batch 1", lambda: generate_policy(model, tokenizer), 1),
                (f"generate(), batch {default_batch}", lambda: generate_policy(model, tokenizer), default_batch),
                (f"own decode, re-encoding every turn, batch {default_batch}",
                 lambda: make_generate_policy(model, tokenizer, reuse_cache=False), default_batch),
                ("own decode, KV cache kept across turns, batch 1 (explore.py)", lambda: make_generate_policy(model, tokenizer), 1),
                (f"own decode, KV cache kept across turns, batch {default_batch} (explore.py)",
                 lambda: make_generate_policy(model, tokenizer), default_batch)):
            policy = make_policy()
            started = time.perf_counter()
            records = rollout(env_name, episodes, policy, batch_size=batch_size, max_steps=max_steps,
                              max_observation_chars=max_chars)
            seconds = time.perf_counter() - started
            records_by_variant[name] = [r["messages"] for r in records]
            replies = [m["content"] for r in records for m in r["messages"] if m["role"] == "assistant"]
            generated = sum(len(tokenizer(reply)["input_ids"]) + 1 for reply in replies)  # + end of turn
            fed = f", {policy.stats['prompt_tokens']:,} prompt tokens fed" if hasattr(policy, "stats") else ""
            rows.append(("rollout", f"{where}: {name}",
                         f"{seconds:.1f} s, {len(episodes) / seconds:.1f} episodes/s, {generated / seconds:,.0f} generated tokens/s{fed}"))
        same = len({json.dumps(messages) for messages in records_by_variant.values()}) == 1
        rows.append(("rollout", f"{where}: the five variants' trajectories identical", "yes" if same else "NO"))
        shop_records = records
    # what the forward alone allows: one batch of full shop conversations, scored in one pass
    conversations = [tokenizer(tokenizer.apply_chat_template(r["messages"], tokenize=False), add_special_tokens=False)["input_ids"]
                     for r in shop_records[:default_batch]]
    ids = pad_batch(conversations, tokenizer.pad_token_id).to(DEVICE)
    with torch.no_grad():
        seconds = timed(lambda: model(input_ids=ids), repeats=3)
    tokens = sum(len(c) for c in conversations)
    rows.append(("rollout", f"one forward over {len(conversations)} whole episodes", f"{tokens / seconds:,.0f} tokens/s"))


ROLES = {"system": "system", "user": "observations", "assistant": "agent"}


def role_tokens(tokenizer, messages):
    """Tokens of a rendered conversation by role: each message's share is what rendering it adds."""
    counts, before = dict.fromkeys(ROLES.values(), 0), 0
    for index, message in enumerate(messages):
        upto = len(tokenizer(tokenizer.apply_chat_template(messages[:index + 1], tokenize=False),
                             add_special_tokens=False)["input_ids"])
        counts[ROLES[message["role"]]] += upto - before
        before = upto
    return counts


def add_counts(total, counts, times=1.0):
    for role, n in counts.items():
        total[role] = total.get(role, 0) + n * times


def stage_work(tokenizer, saved):
    """Tokens a stage ran through the model, by role, from the files its args.json names (None: no model)."""
    args, summary, total = saved["args"], saved["summary"], {}
    if summary["stage"] == "sft":
        kept = [t for path in args["data"] for t in read_jsonl(path) if t.get("reward", 1.0) >= args["min_reward"]]
        share = summary["examples"] / max(1, summary["examples"] + summary["dev_examples"])  # the dev share is not trained
        for trajectory in kept:
            add_counts(total, role_tokens(tokenizer, trajectory["messages"]), summary["epochs"] * share)
        return total, f"{summary['epochs']} epochs"
    if summary["stage"] == "dpo":
        for pair in read_jsonl(args["pairs"], ("prompt", "chosen", "rejected")):
            # both sides, every epoch and once more for the reference
            for side in ("chosen", "rejected"):
                add_counts(total, role_tokens(tokenizer, pair["prompt"] + pair[side]), args["epochs"] + 1)
        return total, f"{summary['pairs']} pairs x 2 sides x ({args['epochs']} epochs + the reference)"
    if summary["stage"] == "explore" and args.get("model"):
        for record in read_jsonl(args["out"]):  # with the KV cache each token is fed once; the agent's are decoded
            add_counts(total, role_tokens(tokenizer, record["messages"]))
        return total, f"{summary['n']} episodes"
    return None, ""


def bench_loop(run, tokenizer, rows):
    """Each stage of RUN: its seconds (from its summary) and the tokens it ran through the model, by role."""
    for root, _, files in sorted(os.walk(run)):
        for name in sorted(files):
            if name != "args.json" and not name.endswith(".args.json"):
                continue
            with open(os.path.join(root, name)) as f:
                saved = json.load(f)
            summary = saved.get("summary", {})
            if "seconds" not in summary or "args" not in saved:
                continue
            path = os.path.relpath(os.path.join(root, name), run).replace("/args.json", "").replace(".args.json", "")
            work, what = stage_work(tokenizer, saved)
            value = f"{summary['seconds']:.0f} s"
            if work:
                tokens = sum(work.values())
                shares = ", ".join(f"{role} {n / tokens:.0%}" for role, n in work.items())
                value += f"; {tokens / 1e6:.2f}M tokens ({shares}); {tokens / max(summary['seconds'], 1e-9):,.0f} tokens/s"
            rows.append(("loop", f"{summary['stage']}: {path}" + (f" ({what})" if what else ""), value))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/default", help="a finished loop.py run: its sft model, expert data, pairs")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of: {', '.join(SECTIONS)}")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where the model runs (fp32 weights either way)")
    parser.add_argument("--out", default=None, help="also write the table as JSON here (research/pages.py makes "
                                                    "docs/performance.md's table from it)")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    sections = args.only.split(",")
    needed = [os.path.join(args.run, p) for p in ("sft", "expert.jsonl", "iter1/pairs.jsonl")]
    missing = [p for p in needed if not os.path.exists(p)]
    if missing:
        raise InputError(f"{missing[0]} is missing: run `python loop.py --run {args.run}` first")
    torch.manual_seed(0)
    where = torch.cuda.get_device_name() if DEVICE.startswith("cuda") else \
        f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}"
    print(f"torch {torch.__version__}, {where}, model {args.run}/sft\n")
    print("| section | measure | value |\n|---|---|---|", flush=True)
    rows = Rows()
    if "matmul" in sections:
        size = "8192^3" if DEVICE.startswith("cuda") else "1024^3"
        rows.append(("matmul", f"fp32 matmul peak ({size})", f"{matmul_peak(torch.float32):.0f} GFLOP/s"))
        rows.append(("matmul", f"bf16 matmul peak ({size})", f"{matmul_peak(torch.bfloat16):.0f} GFLOP/s"))
    model, tokenizer = load_model(os.path.join(args.run, "sft"), DEVICE, dtype="float32")
    if "sft" in sections:
        bench_sft(model, tokenizer, read_jsonl(os.path.join(args.run, "expert.jsonl")), rows)
    if "dpo" in sections:
        bench_dpo(model, tokenizer, os.path.join(args.run, "iter1", "pairs.jsonl"), rows)
    if "rollout" in sections:
        model.eval()
        bench_rollout(model, tokenizer, rows)
    if "loop" in sections:
        bench_loop(args.run, tokenizer, rows)
    if args.out:
        write_json(args.out, {"torch": torch.__version__, "where": where, "command": sys.argv[1:], "rows": rows})


if __name__ == "__main__":
    run_main(main)
