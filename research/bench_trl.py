"""dpo.py against TRL's DPOTrainer on the same single-turn pairs and tiny model.

    pip install trl datasets "torch==2.13.0"       # only for this benchmark; never a dependency of eto
    python research/bench_trl.py                           # ~1 minute on 2 cores
    python research/bench_trl.py --pairs 512 --epochs 1

1. The first step's loss: the same policy, the same reference (another random init, so the loss is not
   just log 2), the same first batch of pairs. Ours is dpo.py's `accumulate_step` with its reference
   log-probs; TRL's is `DPOTrainer.compute_loss` on its own first batch. They must agree to 1e-5.
   Both score a reply as the sum of log p over its tokens up to and including the end-of-turn token. TRL's
   conversational format would also count the newline the chat template writes after it, so the pairs go
   to TRL as text: the rendered prompt, and the reply + end-of-turn token.
2. Seconds for one epoch over the same pairs, batch 32 in micro-batches of 8, the reference precomputed
   in both (dpo.py always does; TRL with `precompute_ref_log_probs`): dpo.py as a process from its
   summary (tokenizing, reference pass, training; not the save), TRL from building the trainer
   (it tokenizes) through `train()`.
The last line printed is a JSON summary.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the stages live one folder up
from common import micro_batches, write_jsonl
from dpo import Objective, accumulate_step, reference_logps
from dpo import tokenize_pair
from plumbing.ranks import Ranks
from envs.shop import ShopEnv
from sft import build_tiny_model, build_tiny_tokenizer


def single_turn_pairs(n):
    """The shop's first turn: chosen = the expert's search for this task, rejected = the next task's."""
    env = ShopEnv()
    task_ids = env.task_ids("train")[:n + 1]
    prompts = [[{"role": "system", "content": env.system_prompt}, {"role": "user", "content": env.reset(t)}]
               for t in task_ids]
    firsts = [env.expert(t)[0] for t in task_ids]
    return [{"prompt": prompts[i], "chosen": [{"role": "assistant", "content": firsts[i]}],
             "rejected": [{"role": "assistant", "content": firsts[i + 1]}]} for i in range(n)]


def as_text(tokenizer, pair):
    """TRL's text format for a pair: the prompt with its generation prompt, each reply with its end-of-turn token."""
    end = tokenizer.eos_token  # the tiny model's end of turn, <|im_end|>
    prompt = tokenizer.apply_chat_template(pair["prompt"], tokenize=False, add_generation_prompt=True)
    return {"prompt": prompt, "chosen": pair["chosen"][0]["content"] + end, "rejected": pair["rejected"][0]["content"] + end}


def trl_trainer(model, ref_model, tokenizer, pairs, args, out, precompute):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer
    config = DPOConfig(output_dir=out, beta=args.beta, learning_rate=args.lr, num_train_epochs=args.epochs,
                       per_device_train_batch_size=8, gradient_accumulation_steps=4, warmup_steps=0.1,
                       lr_scheduler_type="constant_with_warmup", max_grad_norm=1.0, weight_decay=0.0,
                       loss_type=["sigmoid"], precompute_ref_log_probs=precompute, max_length=None,
                       report_to=[], logging_steps=1, save_strategy="no", use_cpu=True, bf16=False,
                       dataloader_num_workers=0, seed=args.seed, disable_tqdm=True)
    data = Dataset.from_list([as_text(tokenizer, p) for p in pairs])
    return DPOTrainer(model=model, ref_model=ref_model, args=config, train_dataset=data, processing_class=tokenizer)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=256, help="single-turn pairs for the epoch timing")
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        import trl
    except ImportError:
        raise SystemExit("bench_trl.py needs TRL (only for this benchmark): pip install trl datasets") from None
    torch.manual_seed(args.seed)
    pairs = single_turn_pairs(args.pairs)
    tokenizer = build_tiny_tokenizer([json.dumps(p) for p in pairs])
    torch.manual_seed(1)
    reference = build_tiny_model(tokenizer).eval()
    torch.manual_seed(args.seed)
    policy = build_tiny_model(tokenizer).eval()

    # 1. the first step's loss on the same 8 pairs
    first = pairs[:8]
    examples = [tokenize_pair(tokenizer, p) for p in first]
    ours = accumulate_step(policy, examples, list(range(len(first))), reference_logps(reference, examples, "cpu", False),
                           Objective(beta=args.beta), Ranks(), lambda indices: micro_batches(indices, 8))["loss"]
    policy.zero_grad(set_to_none=True)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = trl_trainer(policy, reference, tokenizer, first, args, os.path.join(tmp, "trl"), precompute=False)
        batch = next(iter(torch.utils.data.DataLoader(trainer.train_dataset, batch_size=8,
                                                      collate_fn=trainer.data_collator)))
        with torch.no_grad():
            theirs = trainer.compute_loss(policy, batch).item()
    print(f"first-step loss: dpo.py {ours:.7f}, TRL {theirs:.7f}, |difference| {abs(ours - theirs):.1e}")

    # 2. one epoch each, from the same starting model (the reference is the starting model in both)
    with tempfile.TemporaryDirectory() as tmp:
        policy.save_pretrained(os.path.join(tmp, "start"))
        tokenizer.save_pretrained(os.path.join(tmp, "start"))
        write_jsonl(os.path.join(tmp, "pairs.jsonl"), pairs)
        done = subprocess.run([sys.executable, os.path.join(ROOT, "dpo.py"), "--model", os.path.join(tmp, "start"), "--pairs",
                               os.path.join(tmp, "pairs.jsonl"), "--out", os.path.join(tmp, "ours"), "--beta", str(args.beta),
                               "--lr", str(args.lr), "--epochs", str(args.epochs), "--batch-size", "32",
                               "--micro-batch-size", "8", "--seed", str(args.seed)],
                              capture_output=True, text=True, cwd=os.path.dirname(os.path.abspath(__file__)))
        if done.returncode:
            raise SystemExit(f"dpo.py failed: {done.stderr.strip().splitlines()[-1]}")
        ours_summary = json.loads(done.stdout.strip().splitlines()[-1])
        started = time.time()
        trainer = trl_trainer(policy, None, tokenizer, pairs, args, os.path.join(tmp, "trl"), precompute=True)
        trainer.train()
        trl_seconds = time.time() - started
        trl_last = [h["loss"] for h in trainer.state.log_history if "loss" in h][-1]
    print(f"one epoch, {len(pairs)} pairs: dpo.py {ours_summary['seconds']:.1f} s, TRL {trl_seconds:.1f} s")
    print(json.dumps({"bench": "trl", "trl": trl.__version__, "first_step_loss": {"dpo.py": round(ours, 7), "trl": round(theirs, 7)},
                      "difference": abs(ours - theirs), "epoch_seconds": {"dpo.py": ours_summary["seconds"],
                                                                         "trl": round(trl_seconds, 1)},
                      "last_step_loss": {"dpo.py": ours_summary["loss"], "trl": trl_last}}))


if __name__ == "__main__":
    main()
