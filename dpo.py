"""Stage 4 of ETO: DPO on failure/expert trajectory pairs (paper Eq. 11), written from scratch.

    python explore.py --env shop --split train --model runs/demo/sft --out runs/demo/iter1/explore.jsonl
    python pairs.py --explored runs/demo/iter1/explore.jsonl --expert runs/demo/expert.jsonl \
        --out runs/demo/iter1/pairs.jsonl
    python dpo.py --model runs/demo/sft --pairs runs/demo/iter1/pairs.jsonl --out runs/demo/iter1/model
    python dpo.py --model runs/demo/sft --pairs runs/demo/iter1/pairs.jsonl --out runs/demo/control \
        --dpo-weight 0 --sft-weight 1     # the control: same chosen data and steps, no preference signal
    torchrun --nproc-per-node 2 dpo.py --model runs/demo/sft --pairs runs/demo/iter1/pairs.jsonl \
        --out runs/demo/iter1/model       # each rank a share of every step: the 1-process gradient

A trajectory's log-prob is the SUM of log p over the agent's tokens of the whole multi-turn
continuation (observations masked out). The reference is the starting policy, frozen: its log-probs
are computed once before training, so no second model sits in memory. Dropout is off throughout (as in
the DPO reference code), so the first step's loss is exactly log 2. Output: a save_pretrained folder.
"""
import argparse
import math
import random
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from common import (GRAD_CLIP, PAPER, HelpFormatter, InputError, add_memory_flags, add_system_flags, autocast, check_batch_sizes,
                    check_pair, checkpoint_activations, cut_to_length, load_model, micro_batches, read_jsonl, run_main,
                    save_trained, sequence_logps, set_seed, stop_if_diverged, tokenize_conversation)
from plumbing.ranks import Ranks


# flags of the studies built on dpo.py's loop: typed here, they name the script that has them
MOVED_FLAGS = ((("--loss", "--label-smoothing", "--dpop-lambda"), "research/preference_losses.py"),
               (("--replay", "--replay-weight"), "research/replay.py"))
METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "logps/rejected",
           "nll/chosen")


def dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """ETO's loss, paper Eq. 11 (DPO, Rafailov et al. 2023, Eq. 7): per-example losses and the implicit
    rewards beta * (log pi - log ref) of each side (detached), all of shape (B,).

        L = -log sigmoid(beta [(log pi(e_w|u) - log ref(e_w|u)) - (log pi(e_l|u) - log ref(e_l|u))])

    Each log-prob is one trajectory's: the sum over the agent tokens of its whole continuation."""
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return losses, chosen_rewards, rejected_rewards


def tokenize_pair(tokenizer, pair):
    """(chosen ids, chosen mask, rejected ids, rejected mask): prompt + continuation, agent turns masked in."""
    # only the continuations are scored: assistant turns inside the prompt are context
    chosen = tokenize_conversation(tokenizer, pair["prompt"] + pair["chosen"], train_from=len(pair["prompt"]))
    rejected = tokenize_conversation(tokenizer, pair["prompt"] + pair["rejected"], train_from=len(pair["prompt"]))
    return chosen + rejected


@torch.no_grad()
def reference_logps(model, examples, device, average, batch_size=16, precision="none"):
    """The frozen reference's (chosen, rejected) log-probs, computed once before training, in the
    precision the policy trains in (so the two score a pair alike at step 0)."""
    chosen, rejected = [], []
    for i in tqdm(range(0, len(examples), batch_size), desc="reference log-probs", leave=False):
        batch = examples[i:i + batch_size]
        with autocast(device, precision):
            chosen.append(sequence_logps(model, [(e[0], e[1]) for e in batch], device, average)[0])
            rejected.append(sequence_logps(model, [(e[2], e[3]) for e in batch], device, average)[0])
    return torch.cat(chosen), torch.cat(rejected)


@dataclass
class Objective:
    """What one pair's loss is: dpo_weight x `preference_loss` (Eq. 11, `dpo_loss`, unless a study passes
    another with the same signature: research/preference_losses.py), plus sft_weight x NLL on the chosen side."""
    beta: float = PAPER["beta"]
    dpo_weight: float = 1.0
    sft_weight: float = 0.0
    average_logps: bool = False  # mean instead of sum of token log-probs (the paper sums)
    preference_loss: object = dpo_loss


class StepMetrics:
    """The step's metrics, named as TRL names them: each pass adds its share, `total` sums over processes."""

    def __init__(self, step_size):
        self.step_size, self.sums = step_size, dict.fromkeys(METRICS, 0.0)

    def add(self, loss, nll, chosen_rewards, rejected_rewards, chosen_logps, rejected_logps):
        self.sums["loss"] += loss.item()
        share = len(nll) / self.step_size  # this pass's part of the step's means
        for name, value in (("nll/chosen", nll),
                            ("rewards/chosen", chosen_rewards), ("rewards/rejected", rejected_rewards),
                            ("rewards/accuracies", (chosen_rewards > rejected_rewards).float()),
                            ("logps/chosen", chosen_logps), ("logps/rejected", rejected_logps)):
            self.sums[name] += value.mean().item() * share

    def total(self, ranks):
        metrics = {name: ranks.sum(value) for name, value in self.sums.items()}  # alone: as they are
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
        return metrics


def accumulate_step(model, examples, step_indices, reference, objective, ranks, split, precision="none"):
    """Forward and backward over one optimizer step's pairs; the gradient is that of the mean loss over the
    step's pairs, however `ranks.passes` splits them into forward passes (and, under torchrun, over
    processes). Returns the step's metrics."""
    ref_chosen, ref_rejected = reference
    device, metrics = ranks.device, StepMetrics(len(step_indices))
    for micro in ranks.passes(model, step_indices, split):
        batch = [examples[i] for i in micro]
        with autocast(device, precision):
            chosen_logps, counts = sequence_logps(model, [(e[0], e[1]) for e in batch], device, objective.average_logps)
            with torch.set_grad_enabled(objective.dpo_weight != 0):  # the NLL-only control just watches this side
                rejected_logps, _ = sequence_logps(model, [(e[2], e[3]) for e in batch], device, objective.average_logps)
        losses, chosen_rewards, rejected_rewards = objective.preference_loss(  # dpo_loss: Eq. 11
            chosen_logps, rejected_logps, ref_chosen[micro], ref_rejected[micro], objective.beta)
        nll = -(chosen_logps if objective.average_logps else chosen_logps / counts)  # per agent token of chosen
        loss = (objective.dpo_weight * losses + objective.sft_weight * nll).sum() / len(step_indices)
        ranks.backward(loss)  # alone: loss.backward()
        if ranks.counting:  # not a pass run only to keep in step with the other processes
            metrics.add(loss, nll, chosen_rewards, rejected_rewards, chosen_logps, rejected_logps)
    return metrics.total(ranks)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    # the paper's settings for a 7B model: beta 0.1, lr 1e-6, batch 32, 3 epochs
    parser.add_argument("--model", required=True, help="the starting policy, also the frozen reference")
    parser.add_argument("--pairs", required=True, help="pairs JSONL: prompt, chosen, rejected (from pairs.py)")
    parser.add_argument("--out", required=True, help="output folder (save_pretrained format)")
    parser.add_argument("--beta", type=float, default=PAPER["beta"], help="the KL weight of Eq. 11 (authors' script: 0.5 from "
                                                                "iteration 2)")
    parser.add_argument("--lr", type=float, default=PAPER["dpo_lr"], help="peak learning rate (AdamW)")
    parser.add_argument("--epochs", type=int, default=PAPER["dpo_epochs"], help="passes over the pairs")
    parser.add_argument("--batch-size", type=int, default=PAPER["dpo_batch_size"], help="pairs per optimizer step")
    parser.add_argument("--warmup-ratio", type=float, default=0.1, help="share of the steps with a linear warmup, "
                                                                        "then constant, as the authors' script")
    parser.add_argument("--max-length", type=int, default=1024, help="tokens per sequence; longer ones are cut")
    beyond = parser.add_argument_group("beyond the paper (the paper: --dpo-weight 1, --sft-weight 0, summed "
                                       "log-probs; other losses: research/preference_losses.py)")
    beyond.add_argument("--sft-weight", type=float, default=0.0, help="NLL per agent token of the chosen side, added "
                        "to the loss; with --dpo-weight 0 it is the control (no preference signal)")
    beyond.add_argument("--dpo-weight", type=float, default=1.0, help="scale of the preference term")
    beyond.add_argument("--average-logps", action="store_true", help="mean instead of sum of token log-probs")
    add_memory_flags(parser, "pairs (both sides)", micro_batch_size=8, token_budget_default="0 under 50M parameters, else 4096")
    add_system_flags(parser)
    return parser


def main(preference_loss=dpo_loss, parser=None, extra_term=None):
    """Train on the pairs. A study passes its parser (dpo.py's with its own flags added) and one of: another
    loss (the same four tensors and beta in, the same three tensors out: research/preference_losses.py), or
    an extra term, extra_term(args, model, tokenizer, ranks) -> step(model, step_number) -> {metric: value},
    called once the model is loaded, its step after each step's backward (research/replay.py)."""
    parser = parser or build_parser()
    args, unknown = parser.parse_known_args()
    if unknown:  # a study's flag names its script; anything else is argparse's usual error
        moved = [(flag, study) for flag in unknown for flags, study in MOVED_FLAGS if flag.split("=")[0] in flags]
        if moved:
            raise InputError(f"{moved[0][0].split('=')[0]}: a study beyond the paper; run {moved[0][1]} (dpo.py's "
                             f"loop, every dpo.py flag and its own)")
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    check_batch_sizes(args.batch_size, args.micro_batch_size)
    objective = Objective(args.beta, args.dpo_weight, args.sft_weight, args.average_logps, preference_loss)

    started = time.time()
    ranks = Ranks.start(args.device, args.fsdp)  # under torchrun: a share of every step per rank
    args.device = ranks.device
    set_seed(args.seed)
    pairs = read_jsonl(args.pairs, ("prompt", "chosen", "rejected"), check_pair)  # before loading any model
    model, tokenizer = load_model(args.model, args.device, args.dtype)
    model.eval()  # dropout off, for the reference pass and every training pass alike
    if args.token_budget is None:  # recorded in args.json as used
        args.token_budget = 0 if sum(p.numel() for p in model.parameters()) < 50e6 else 4096

    examples, skipped, truncated = cut_to_length(  # a pair skipped if either side keeps no trainable token
        [tokenize_pair(tokenizer, pair) for pair in tqdm(pairs, desc="tokenize", leave=False)], args.max_length)
    if not examples:
        raise InputError(f"{args.pairs}: no pair keeps a trainable token on both sides at --max-length {args.max_length}")
    extra_step = extra_term(args, model, tokenizer, ranks) if extra_term else None
    reference = reference_logps(model, examples, args.device, args.average_logps, precision=args.autocast)
    if args.gradient_checkpointing:
        checkpoint_activations(model, dropout=False)  # train mode (which checkpointing needs), dropout still off

    def split_pairs(indices):  # both sides' activations live until backward: a pair costs twice its longer side
        return micro_batches(indices, args.micro_batch_size, args.token_budget,
                             length=lambda i: 2 * max(len(examples[i][0]), len(examples[i][2])))

    rng = random.Random(args.seed)
    total_steps = math.ceil(len(examples) / args.batch_size) * args.epochs
    warmup = max(1, int(args.warmup_ratio * total_steps))
    trained = ranks.wrap(model)  # alone: the model itself
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    if ranks.main:
        print(f"dpo: {len(examples)} pairs ({skipped} skipped, {truncated} truncated), {total_steps} steps, beta {args.beta}, "
              f"lr {args.lr}, {ranks.world} process(es)", file=sys.stderr)

    history, progress = [], tqdm(total=total_steps, desc="dpo", leave=False, disable=not ranks.main)
    for epoch in range(1, args.epochs + 1):
        order = list(range(len(examples)))
        rng.shuffle(order)
        for start in range(0, len(order), args.batch_size):
            metrics = accumulate_step(trained, examples, order[start:start + args.batch_size], reference, objective,
                                      ranks, split_pairs, args.autocast)
            if extra_step:  # a study's term, its gradient added to this step's
                metrics.update(extra_step(trained, len(history)))
            stop_if_diverged(metrics["loss"], model, tokenizer, args.out, {"args": vars(args), "history": history},
                             f"epoch {epoch} step {len(history) + 1}", save=ranks.main and not args.fsdp)
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            history.append({"epoch": epoch, **{k: round(v, 4) for k, v in metrics.items()}})
            progress.update(1)
            progress.set_postfix(loss=f"{metrics['loss']:.3f}", margin=f"{metrics['rewards/margins']:.2f}")
    progress.close()

    last = history[-max(1, len(history) // 10):]  # the last tenth of steps, averaged
    summary = {"stage": "dpo", "out": args.out, "pairs": len(examples), "skipped": skipped, "truncated": truncated,
               "steps": len(history), **{k: round(sum(h[k] for h in last) / len(last), 4) for k in history[-1] if k != "epoch"},
               "seconds": round(time.time() - started, 1)}
    save_trained(ranks, model, tokenizer, args.out, args, history, summary)

if __name__ == "__main__":
    run_main(main)
