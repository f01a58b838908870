"""Stage 1 of ETO: supervised fine-tuning on expert trajectories (loss on the agent's turns only).

    python explore.py --env shop --split train --expert --out runs/demo/expert.jsonl
    python sft.py --model tiny --data runs/demo/expert.jsonl --out runs/demo/sft
    python sft.py --model path/to/chat-model --data runs/demo/expert.jsonl --out runs/demo/sft \
        --lr 1e-5 --epochs 3 --batch-size 64 --patience 0      # the paper's settings for a 7B model
    python sft.py --model runs/demo/sft --data runs/demo/expert.jsonl runs/demo/rft/successes.jsonl \
        --out runs/demo/rft/model --epochs 2 --lr 1e-3         # RFT: expert + the agent's own successes
    torchrun --nproc-per-node 2 sft.py --model tiny --data runs/demo/expert.jsonl --out runs/demo/sft
                                       # each rank a share of every step (DDP): the 1-process gradient
    torchrun --nproc-per-node 8 sft.py --model path/to/chat-model --data runs/demo/expert.jsonl --out runs/demo/sft \
        --fsdp                         # each rank 1/8 of the weights, gradients, optimizer state (fully_shard)

`--model tiny` builds the offline default: a byte-level BPE tokenizer trained on the data with a ChatML
chat template, and a Llama-style model from a config (4 layers; the lecture recipe's `--tiny-layers 2` has
1.08M parameters, the `params` of its summary). Any other value is loaded with
`from_pretrained` (a local folder; nothing is downloaded unless you allow it). Both take the same
chat-template path. The output is a `save_pretrained` folder (safetensors) with `args.json`.
The per-turn loss mask (`tokenize_conversation`), JSONL and model loading are in common.py.
"""
import argparse
import json
import math
import random
import sys
import time

import torch
from tqdm import tqdm

from common import (GRAD_CLIP, HelpFormatter, InputError, add_memory_flags, add_system_flags, autocast, check_batch_sizes,
                    check_trajectory, checkpoint_activations, cut_to_length, load_model, micro_batches, read_jsonl,
                    run_main, save_trained, sequence_logps, set_seed, stop_if_diverged, tokenize_conversation)
from plumbing.ranks import Ranks

# defaults that fit the model: a model built from scratch needs a high lr and many epochs, a pretrained
# one is wrecked by them (measured: SmolLM2-135M at lr 3e-3 gave 0 reward; the paper: 1e-5, 3 epochs)
FROM_SCRATCH = {"lr": 3e-3, "epochs": 10, "token_budget": 0}
PRETRAINED = {"lr": 1e-5, "epochs": 3, "token_budget": 4096}  # 135M at 16 x ~600 tokens: 21 GB
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


# ---- the tiny model: built offline, from a config ---------------------------------------------------
def build_tiny_tokenizer(texts, vocab_size=1024):
    """Byte-level BPE trained on `texts`, with a ChatML template; pad is its own token (not eos)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    specials = ["<|pad|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<|pad|>", eos_token="<|im_end|>",
                                   chat_template=TINY_CHAT_TEMPLATE)


def build_tiny_model(tokenizer, hidden=192, layers=4, heads=4, context=1024):
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=context, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model



# ---- SFT: NLL on the agent's tokens ----------------------------------------------------------------
def masked_nll(model, batch, device):
    """(sum of -log p over the assistant tokens, number of those tokens) for a list of (ids, mask)."""
    logps, counts = sequence_logps(model, batch, device)
    return -logps.sum(), counts.sum()


def length_batches(examples, batch_size, rng):
    """Shuffle, then sort within windows of 50 batches by length: little padding, still random."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    window = batch_size * 50
    batches = []
    for i in range(0, len(order), window):
        chunk = sorted(order[i:i + window], key=lambda j: len(examples[j][0]))
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def lr_lambda(warmup_steps, total_steps, min_ratio=0.1):
    """Linear warmup, then cosine decay to min_ratio of the peak learning rate."""
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def loss_curve(step_losses, points=10):
    """The epoch's training loss as `points` means over consecutive stretches of its steps (this process's
    share of each step under torchrun): the curve a spike or a stall shows in, printed each epoch."""
    size = max(1, math.ceil(len(step_losses) / points))
    return [round(sum(part) / len(part), 4) for part in (step_losses[i:i + size] for i in range(0, len(step_losses), size))]


@torch.no_grad()
def mean_nll(model, examples, device, batch_size=32, precision="none"):
    model.eval()
    total, count = 0.0, 0.0
    for i in range(0, len(examples), batch_size):
        with autocast(device, precision):
            loss_sum, n = masked_nll(model, examples[i:i + batch_size], device)
        total, count = total + loss_sum.item(), count + n.item()
    model.train()
    return total / max(count, 1)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    # data and model
    parser.add_argument("--model", default="tiny", help="'tiny' (built offline) or a HF causal-LM folder/id or .gguf file")
    parser.add_argument("--data", required=True, nargs="+", help="trajectory JSONL file(s), a 'messages' field per line")
    parser.add_argument("--out", required=True, help="output folder (save_pretrained format)")
    parser.add_argument("--max-length", type=int, default=1024, help="tokens per example; longer ones are cut")
    parser.add_argument("--dev-fraction", type=float, default=0.05, help="held-out share for the dev loss")
    parser.add_argument("--min-reward", type=float, default=1.0, help="train only on trajectories with at least this "
                        "reward (those without one are kept): successes only, as the authors' expert data; 0 keeps all")
    # optimisation (lr and epochs default by model; the paper's batch for 7B was 64)
    parser.add_argument("--epochs", type=int, default=None, help="most epochs to train (0: save the untrained model); "
                                                                 "None: 10 for --model tiny, 3 (the paper's) for a loaded model")
    parser.add_argument("--lr", type=float, default=None, help="None: 3e-3 for --model tiny (from scratch), 1e-5 (the "
                                                               "paper's) for a loaded model: the tiny lr wrecks a pretrained one")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per optimizer step")
    parser.add_argument("--warmup-ratio", type=float, default=0.03, help="share of the steps with a linear warmup, "
                                                                         "then cosine decay to a tenth of --lr")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="AdamW's decoupled weight decay")
    parser.add_argument("--patience", type=int, default=2, help="stop after this many epochs without a dev-loss gain, "
                                                                "keeping the best epoch (0: never)")
    # memory and processes: how a step is computed, not what it computes
    add_memory_flags(parser, "sequences", micro_batch_size=16, token_budget_default="0 for tiny, 4096 for a loaded model")
    tiny = parser.add_argument_group("the tiny model's shape (--model tiny)")
    tiny.add_argument("--tiny-hidden", type=int, default=192, help="hidden size (the MLP is 8/3 of it)")
    tiny.add_argument("--tiny-layers", type=int, default=4, help="decoder layers")
    tiny.add_argument("--tiny-vocab", type=int, default=2048, help="BPE vocabulary, trained on --data")
    add_system_flags(parser)
    return parser


def main():
    args = build_parser().parse_args()
    check_batch_sizes(args.batch_size, args.micro_batch_size)
    defaults = FROM_SCRATCH if args.model == "tiny" else PRETRAINED
    for name, value in defaults.items():  # filled in before anything runs, so args.json shows what was used
        if getattr(args, name) is None:
            setattr(args, name, value)

    started = time.time()
    ranks = Ranks.start(args.device, args.fsdp)  # under torchrun: a share of every step per rank
    args.device = ranks.device
    set_seed(args.seed)
    # every file is checked before any model is built
    trajectories = [t for path in args.data for t in read_jsonl(path, check=check_trajectory)]
    below = sum(t.get("reward", 1.0) < args.min_reward for t in trajectories)  # e.g. a ScienceWorld gold path
    trajectories = [t for t in trajectories if t.get("reward", 1.0) >= args.min_reward]  # that failed this time
    if not trajectories:
        raise InputError(f"{', '.join(args.data)}: no trajectory has a reward of at least --min-reward {args.min_reward}")
    if args.model == "tiny":
        texts = [m["content"] for t in trajectories for m in t["messages"]] + ["system user assistant"]
        tokenizer = build_tiny_tokenizer(texts, args.tiny_vocab)
        model = build_tiny_model(tokenizer, args.tiny_hidden, args.tiny_layers).to(args.device)
    else:
        model, tokenizer = load_model(args.model, args.device, args.dtype)
    n_params = sum(p.numel() for p in model.parameters())

    examples, skipped, truncated = cut_to_length(
        [tokenize_conversation(tokenizer, t["messages"]) for t in tqdm(trajectories, desc="tokenize", leave=False)],
        args.max_length)
    if not examples:
        raise InputError(f"{' '.join(args.data)}: no example keeps a trainable token at --max-length {args.max_length}")
    rng = random.Random(args.seed)
    rng.shuffle(examples)
    n_dev = int(len(examples) * args.dev_fraction) if len(examples) >= 20 else 0
    dev_examples, train_examples = examples[:n_dev], examples[n_dev:]

    steps_per_epoch = math.ceil(len(train_examples) / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    model.train()
    if args.gradient_checkpointing:
        checkpoint_activations(model)
    trained = ranks.wrap(model)  # alone: the model itself
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(max(1, int(args.warmup_ratio * total_steps)), total_steps))
    if ranks.main:
        print(f"sft: {n_params / 1e6:.2f}M params, {len(train_examples)} train / {len(dev_examples)} dev examples, "
              f"{skipped} skipped, {truncated} truncated, {total_steps} steps max, {ranks.world} process(es)",
              file=sys.stderr)

    def split(step_examples):  # a step's forward passes, within --micro-batch-size and --token-budget
        return micro_batches(step_examples, args.micro_batch_size, args.token_budget, length=lambda e: len(e[0]))

    best_dev, best_state, bad_epochs, history = float("inf"), None, 0, []
    for epoch in range(1, args.epochs + 1):
        epoch_loss, epoch_tokens, step_losses, grad_norms = 0.0, 0.0, [], []
        bar = tqdm(length_batches(train_examples, args.batch_size, rng), desc=f"sft epoch {epoch}", leave=False,
                   disable=not ranks.main)
        for batch_indices in bar:
            batch = [train_examples[i] for i in batch_indices]
            n_tokens = sum(sum(mask[1:]) for _, mask in batch)  # the loss is a mean over the step's agent tokens
            step_loss = 0.0
            for micro in ranks.passes(trained, batch, split):
                with autocast(args.device, args.autocast):
                    loss_sum, count = masked_nll(trained, micro, args.device)
                ranks.backward(loss_sum / n_tokens)  # alone: (loss_sum / n_tokens).backward()
                if ranks.counting:  # not a pass run only to keep in step with the other processes
                    epoch_loss, epoch_tokens = epoch_loss + loss_sum.item(), epoch_tokens + count.item()
                    step_loss += loss_sum.item() / n_tokens
            stop_if_diverged(ranks.sum(epoch_loss), model, tokenizer, args.out, {"args": vars(args), "history": history},
                             f"epoch {epoch} step {scheduler.last_epoch + 1}", save=ranks.main and not args.fsdp)
            # the norm before clipping: a spike here, not only the epoch's mean loss, is where a run goes wrong
            grad_norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)))
            step_losses.append(step_loss)
            bar.set_postfix(loss=f"{sum(step_losses[-20:]) / len(step_losses[-20:]):.3f}")  # the last 20 steps
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        dev_loss = round(mean_nll(model, dev_examples, args.device, precision=args.autocast), 4) if dev_examples else None
        train_loss = ranks.sum(epoch_loss) / ranks.sum(epoch_tokens)
        history.append({"epoch": epoch, "train_loss": round(train_loss, 4), "dev_loss": dev_loss,
                        "loss_curve": loss_curve(step_losses), "max_grad_norm": round(max(grad_norms, default=0.0), 3),
                        "clipped_steps": sum(norm > GRAD_CLIP for norm in grad_norms)})
        if ranks.main:
            print(json.dumps(history[-1]), file=sys.stderr)
        if not dev_examples:
            continue
        if dev_loss < best_dev - 1e-4:
            best_dev, bad_epochs = dev_loss, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
            if args.patience and bad_epochs >= args.patience:
                break  # the dev loss stopped falling: keep the best epoch's weights
    if best_state is not None:
        model.load_state_dict(best_state)

    summary = {"stage": "sft", "out": args.out, "params": n_params, "examples": len(train_examples),
               "dev_examples": len(dev_examples), "skipped": skipped, "truncated": truncated, "below_min_reward": below,
               "epochs": len(history), "train_loss": history[-1]["train_loss"] if history else None,
               "dev_loss": round(best_dev, 4) if dev_examples and history else None,
               "max_grad_norm": max((h["max_grad_norm"] for h in history), default=None), "seconds": round(time.time() - started, 1)}
    save_trained(ranks, model, tokenizer, args.out, args, history, summary)

if __name__ == "__main__":
    run_main(main)
