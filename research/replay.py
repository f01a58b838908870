"""Expert replay beside DPO (beyond the paper): each step of dpo.py's loop also trains the NLL on a batch of
the expert's whole trajectories, cycled in a fixed shuffle, so the expert's whole distribution is kept, not
only the pairs' chosen turns. dpo.py's own loop and loss, plus this term.

    python research/replay.py --replay runs/demo/expert.jsonl --model runs/demo/sft \
        --pairs runs/demo/iter1/pairs.jsonl --out runs/demo/iter1/replay     # every dpo.py flag, and the two below
"""
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the stages live one folder up
import dpo  # noqa: E402
from common import (InputError, autocast, micro_batches, read_jsonl, run_main, sequence_logps,  # noqa: E402
                    tokenize_conversation)


def replay_step(model, replayed, indices, replay_weight, split, device, precision="none"):
    """Backward of replay_weight x the mean NLL per agent token over one step's expert trajectories (whole
    trajectories, every agent turn, as sft.py trains them), pass by pass; returns that NLL."""
    tokens = sum(sum(replayed[i][1][1:]) for i in indices)  # the targets sequence_logps counts
    total = 0.0
    for micro in split(indices):
        with autocast(device, precision):
            logps, _ = sequence_logps(model, [replayed[i] for i in micro], device)
        loss = -logps.sum() / tokens
        (replay_weight * loss).backward()  # replay runs in one process
        total += loss.item()
    return total


def replay_term(records, path):
    """dpo.main's extra_term: the expert trajectories tokenized once the model is loaded, then each step
    the next --batch-size of them."""
    def start(args, model, tokenizer, ranks):
        if ranks.world > 1:
            raise InputError("--replay runs in one process (not under torchrun)")
        replayed = [tokenize_conversation(tokenizer, r["messages"], args.max_length) for r in records]
        replayed = [(ids, mask) for ids, mask in replayed if sum(mask[1:])]  # whole expert trajectories, as sft.py
        if not replayed:
            raise InputError(f"{path}: no trajectory keeps an agent token to replay at --max-length {args.max_length}")
        order = list(range(len(replayed)))
        random.Random(args.seed + 1).shuffle(order)  # replayed in this order, cycled

        def split(indices):
            return micro_batches(indices, args.micro_batch_size, args.token_budget, length=lambda i: len(replayed[i][0]))

        def step(model, step_number):
            batch = [order[(step_number * args.batch_size + k) % len(replayed)] for k in range(args.batch_size)]
            return {"nll/replay": replay_step(model, replayed, batch, args.replay_weight, split, args.device,
                                              args.autocast)}
        return step
    return start


def build_parser():
    parser = dpo.build_parser()
    parser.description = __doc__
    group = parser.add_argument_group("expert replay (this study)")
    group.add_argument("--replay", required=True, help="expert trajectories JSONL: each step also trains the NLL on "
                                                       "a batch of them (cycled)")
    group.add_argument("--replay-weight", type=float, default=1.0, help="scale of the replay NLL (per token)")
    return parser


def main():
    parser = build_parser()
    args = parser.parse_args()
    records = read_jsonl(args.replay, ("messages",))  # checked before any model loads
    dpo.main(parser=parser, extra_term=replay_term(records, args.replay))


if __name__ == "__main__":
    run_main(main)
