"""What every stage shares: the settings (the paper's and the tiny model's recipes), one-line errors, flags, JSONL in and out, atomic saves, model loading, and
the per-turn loss mask with the log-probs it selects (SFT trains on them, DPO compares them). Several
processes and the fast decode are in plumbing/."""
import argparse
import contextlib
import importlib.util
import json
import math
import os
import random
import shutil
import sys

import torch

from plumbing.launch import CPU_KERNELS, add_launch_flags, set_launch  # the kernels stage_record records; the loop's flags
from plumbing.ranks import finish as finish_ranks


# ---- the settings: each defined once, here -------------------------------------------------------
# The paper's ETO (Song et al. 2024, and the authors' scripts) for a 7B chat model: its pair rule
# (the explored side cut to the expert's turns + 5), Eq. 11 alone at beta 0.1, DPO lr 1e-6, 3 epochs of
# batch 32, every train task explored once, greedily. dpo.py's defaults and loop.py's for a loaded model.
PAPER = {"pair_level": "trajectory", "beta": 0.1, "sft_weight": 0.0, "dpo_lr": 1e-6, "dpo_epochs": 3,
         "dpo_batch_size": 32, "explore_limit": 0, "jobs": 1}
# The tiny model's recipes: the paper's algorithm above, with what a small model trained from scratch
# needs, chosen on the shop's dev split (docs/results.md): SFT's layers, epochs, batch, lr and warm-up (chosen
# so that no run under other correct arithmetic falls off a cliff: docs/performance.md), DPO's
# lr, epochs and batch, and how many train tasks are explored. "lecture", the default (its time on 2 cores is
# in the README), and "full" (4 layers, more SFT epochs, every train task; longer).
RECIPES = {
    "lecture": {**PAPER, "tiny_layers": 2, "sft_epochs": 6, "sft_batch_size": 4, "sft_lr": 3e-3,
                "sft_warmup_ratio": 0.03, "explore_limit": 500, "dpo_lr": 3e-5, "dpo_epochs": 1, "dpo_batch_size": 8,
                "rollout_batch_size": 200, "jobs": 2},
    "full": {**PAPER, "tiny_layers": 4, "sft_epochs": 10, "sft_batch_size": 16, "sft_lr": 3e-3,
             "sft_warmup_ratio": None, "dpo_lr": 3e-5, "dpo_epochs": 2, "rollout_batch_size": 200},
}
GRAD_CLIP = 1.0  # max gradient norm per optimizer step in SFT, DPO and online RL: the authors' (and HF Trainer's)
EVAL_SPLITS = ("dev", "test_seen", "test_unseen")  # evaluated: choose settings on dev, report the tests


# ---- the loss mask and the log-probs it selects: what SFT trains on and DPO compares -------------
def tokenize_conversation(tokenizer, messages, max_length=None, train_from=0):
    """(input_ids, loss_mask) of a conversation rendered with the tokenizer's chat template.

    The ids are the tokenization of the whole rendered text, so they match what the model sees at
    generation time. The mask is 1 on each assistant turn (index >= `train_from`: a pair's prompt may
    hold earlier turns) from the end of its generation prompt to its end-of-turn token, and 0 elsewhere.
    Each turn is located by rendering the conversation up to it, never by searching for its content:
    a search finds an empty or one-letter reply inside the markup before it. Masks are built from
    character positions, never from token ids: in many chat tokenizers pad == eos.
    """
    def render(upto, generation_prompt=False):
        return tokenizer.apply_chat_template(messages[:upto], tokenize=False,
                                             add_generation_prompt=generation_prompt)
    text = render(len(messages))
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant" or index < train_from:
            continue
        prompt = render(index, generation_prompt=True)  # the reply starts where its prompt ends ...
        through_reply = render(index + 1).rstrip()      # ... and ends at its end-of-turn token
        if not (text.startswith(prompt) and text.startswith(through_reply)) or len(prompt) > len(through_reply):
            raise InputError("the chat template does not render a conversation as its turns one after "
                             "another, so the loss mask cannot be built turn by turn")
        spans.append((len(prompt), len(through_reply)))
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids, loss_mask = encoding["input_ids"], []
    for token_start, token_end in encoding["offset_mapping"]:
        loss_mask.append(int(any(token_start < end and token_end > start for start, end in spans)))
    if max_length is not None:
        input_ids, loss_mask = input_ids[:max_length], loss_mask[:max_length]
    return input_ids, loss_mask


def pad_batch(sequences, pad_value):
    width = max(len(s) for s in sequences)
    return torch.tensor([list(s) + [pad_value] * (width - len(s)) for s in sequences])


def token_logps(model, input_ids, attention_mask):
    """log p(token_t | tokens_<t) for t = 1..T-1, shape (B, T-1)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    return torch.gather(logits.log_softmax(-1), 2, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def sequence_logps(model, sequences, device, average=False):
    """Per sequence of (ids, mask): the sum (or mean) of log p over its masked tokens, and their count; (B,) each."""
    ids = pad_batch([ids for ids, _ in sequences], 0).to(device)
    mask = pad_batch([mask for _, mask in sequences], 0).to(device)[:, 1:].float()
    attention = pad_batch([[1] * len(ids) for ids, _ in sequences], 0).to(device)
    logps = (token_logps(model, ids, attention) * mask).sum(-1)
    counts = mask.sum(-1)
    return (logps / counts if average else logps), counts


# ---- errors, flags, seeds -----------------------------------------------------------------------
class InputError(Exception):
    """A problem the user must fix (bad input, a diverged run): printed as one line, exit status 2."""


def run_main(main):
    """Run a stage's main(): an InputError (or ValueError from an env) is one line on stderr, exit 2."""
    try:
        main()
        finish_ranks()
    except (InputError, ValueError) as e:
        if "--debug" in sys.argv:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help shows the module docstring as written and every flag's default (not for a required flag or
    an on/off switch, where it says nothing)."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        if action.required or action.nargs == 0 or action.default is argparse.SUPPRESS or "%(default)" in help_text:
            return help_text
        return help_text + " (default: %(default)s)"


def add_system_flags(parser):
    """The flags every stage shares: seed, device, dtype, debug."""
    group = parser.add_argument_group("system")
    group.add_argument("--seed", type=int, default=0, help="seeds python and torch; recorded in every output")
    group.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                       help="where the model runs: cpu, cuda, cuda:1, ...")
    group.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16 on GPU), float32, bfloat16")
    group.add_argument("--autocast", default="none", choices=("none", "bf16"),
                       help="bf16: matmuls in bf16 under torch.autocast, weights and optimizer state in fp32; faster "
                            "on GPUs and CPUs with AVX-512 BF16, many times slower on AVX2-only CPUs (research/bench.py "
                            "--only matmul,sft measures a machine)")
    group.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")


def add_memory_flags(parser, unit, micro_batch_size, token_budget_default):
    """The flags that decide how a training step is computed, not what it computes (sft.py, dpo.py)."""
    group = parser.add_argument_group("memory and processes (the gradient is the same however a step is split)")
    group.add_argument("--micro-batch-size", type=int, default=micro_batch_size, help=f"{unit} per forward pass, at most")
    group.add_argument("--token-budget", type=int, default=None, help="padded tokens per forward pass, at most (0: no "
                       f"limit); None: {token_budget_default}")
    group.add_argument("--gradient-checkpointing", action="store_true",
                       help="recompute activations in backward: less memory for a large model, ~1/3 more time")
    group.add_argument("--fsdp", action="store_true", help="under torchrun: shard weights, gradients and optimizer "
                       "state over the ranks (fully_shard) instead of a copy each (DDP)")


def autocast(device, kind):
    """The matmuls of a forward pass in bf16 (`--autocast bf16`), or as they are (`none`)."""
    if kind == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=str(device).split(":")[0], dtype=torch.bfloat16)


def set_seed(seed):
    """The one place python's and torch's generators are seeded."""
    random.seed(seed)
    torch.manual_seed(seed)


# ---- files: read with a line number for every problem, write by rename -----------------------------
def read_jsonl(path, required=("messages",), check=None):
    """Records of a JSONL file, each a dict holding the `required` fields and passing `check(record,
    where)`. A missing file, bad JSON or a missing field is an InputError naming the file and line."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    records = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise InputError(f"{path}:{line_no}: expected a JSON object")
            for field in required:
                if field not in record:
                    raise InputError(f"{path}:{line_no}: missing field {field!r}")
            if check is not None:
                check(record, f"{path}:{line_no}")
            records.append(record)
    if not records:
        raise InputError(f"{path}: the file holds no records")
    return records


def check_messages(messages, where, after=None):
    """A list of {role, content}: a system message only first, then user and assistant in turn.

    `after` is the role of the message before this list (a pair's continuation follows its prompt)."""
    if not isinstance(messages, list) or not messages:
        raise InputError(f"{where} must be a non-empty list of messages")
    previous = after
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) \
                or message.get("role") not in ("system", "user", "assistant"):
            raise InputError(f"{where}: message {i} needs a role (system/user/assistant) and a string content")
        role = message["role"]
        system_late = role == "system" and previous is not None
        repeated = role != "system" and role == previous
        reply_first = role == "assistant" and previous in (None, "system")
        if system_late or repeated or reply_first:
            raise InputError(f"{where}: message {i} ({role}) is out of order; expected [system], user, "
                             f"assistant, user, ... in turn")
        previous = role


def check_trajectory(record, where):
    """A trajectory record's messages are in order (read_jsonl's `check` for trajectory files)."""
    check_messages(record["messages"], f"{where}: messages")


def check_pair(pair, where):
    """A pair record as dpo.py reads it: a prompt, then chosen and rejected continuations of it."""
    check_messages(pair["prompt"], f"{where}: prompt")
    for side in ("chosen", "rejected"):  # a continuation follows its prompt and ends on the agent's turn
        check_messages(pair[side], f"{where}: {side}", after=pair["prompt"][-1]["role"])
        if pair[side][-1]["role"] != "assistant":
            raise InputError(f"{where}: {side} must end with an assistant turn")


def write_jsonl(path, records):
    """Write atomically: a temp file renamed into place, so a crash never leaves a partial file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def stage_record(args, **fields):
    """What a stage writes beside its output: its flags, its command line (loop.py compares it on a rerun),
    the CPU kernel settings and the threads it ran under, then `fields` (the summary, a history)."""
    return {"args": vars(args), "command": sys.argv[1:],
            "cpu_kernels": {name: os.environ.get(name) for name in CPU_KERNELS}, "threads": torch.get_num_threads(),
            **fields}


def write_json(path, obj):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def save_model_atomically(model, tokenizer, out, args_record, state_dict=None):
    """save_pretrained into a temp folder, then swap it in: an earlier good folder survives a crash.
    `state_dict`: the weights to write instead of the model's own (gathered from sharded ranks)."""
    tmp, old = f"{out.rstrip('/')}.tmp{os.getpid()}", f"{out.rstrip('/')}.old{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    write_json(os.path.join(tmp, "args.json"), args_record)
    if os.path.exists(out):
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def save_trained(ranks, model, tokenizer, out, args, history, summary):
    """The end of sft.py and dpo.py: rank 0 writes the model folder (its args.json holds the flags, the
    history and the summary) and prints the summary line. Every rank calls it: under --fsdp each sends
    its shards."""
    state = ranks.state_dict(model)
    if ranks.main:
        save_model_atomically(model, tokenizer, out, stage_record(args, history=history, summary=summary),
                              state_dict=state)
        print(json.dumps(summary))


def stop_if_diverged(loss, model, tokenizer, out, args_record, where, save=True):
    """A nan/inf loss stops training. Its step has not been applied yet, so the weights are still the
    last good ones: they go to OUT.last-good (if `save`: rank 0), and OUT itself is not written."""
    if math.isfinite(loss):
        return
    rescue = f"{out.rstrip('/')}.last-good"
    if not save:
        kept = f"rank 0 keeps the weights before that step in {rescue}"
    elif all(torch.isfinite(p).all() for p in model.parameters()):
        save_model_atomically(model, tokenizer, rescue, {**args_record, "diverged_at": where})
        kept = f"the weights before that step are in {rescue}"
    else:
        kept = "the weights are no longer finite, so none were kept"
    raise InputError(f"loss became {loss} at {where}; stopped, {out} not written; {kept}; try a lower --lr")


def format_table(rows):
    """The table loop.py prints: a line per model, reward and success per evaluation split."""
    stages = list(dict.fromkeys(row["stage"] for row in rows))
    splits = [split for split in ("dev", "test_seen", "test_unseen") if any(row["split"] == split for row in rows)]
    by_key = {(row["stage"], row["split"]): row for row in rows}
    width = max([18] + [len(stage) + 2 for stage in stages])
    lines = [f"{'model':<{width}}" + "".join(f"{split + ' reward':>20}{'success':>10}" for split in splits)]
    for stage in stages:
        cells = ""
        for split in splits:
            row = by_key.get((stage, split))
            cells += f"{row['avg_reward']:>20.1f}{row['success_rate']:>10.1f}" if row else f"{'-':>20}{'-':>10}"
        lines.append(f"{stage:<{width}}{cells}")
    return "\n".join(lines)


# ---- models -----------------------------------------------------------------------------------------
def load_model(path, device="cpu", dtype="auto"):
    """A causal LM and its tokenizer from a local folder (or a hub id if you are online), or from one
    .gguf file (dequantized as it loads: needs `pip install -r requirements-chat.txt`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if dtype == "auto":  # fp32 on CPU: bf16 matmuls are slow there; bf16 on GPU, as 7B runs need
        dtype = "bfloat16" if str(device).startswith("cuda") else "float32"
    if path.endswith(".gguf"):
        return load_gguf(path, device, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        # safetensors only (no pickle), and never trust_remote_code: a model folder cannot run code here
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), use_safetensors=True)
    except OSError as e:
        raise InputError(f"cannot load model {path!r}: {str(e).splitlines()[0]}") from None
    return checked_chat_model(path, model, tokenizer, device)


def load_gguf(path, device, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if not os.path.isfile(path):
        raise InputError(f"cannot load model {path!r}: no such file")
    for package in ("gguf", "accelerate"):
        if importlib.util.find_spec(package) is None:
            raise InputError(f"loading a .gguf file needs the {package!r} package: pip install -r requirements-chat.txt")
    folder, name = os.path.split(os.path.abspath(path))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=getattr(torch, dtype))
    # the weights arrive dense; the quantizer left on the model only stops save_pretrained
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    return checked_chat_model(path, model, tokenizer, device)


def checkpoint_activations(model, dropout=True):
    """Gradient checkpointing: keep only each layer's input and recompute the rest in backward (about a
    third more compute, far less memory for a large model). transformers checkpoints in train mode only,
    so a caller that trains with dropout off (DPO) gets train mode with every dropout set to 0."""
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False  # a cache is built for generation, never needed in training
    if not dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
            for name in ("attention_dropout", "dropout", "hidden_dropout"):
                if isinstance(getattr(module, name, None), float):
                    setattr(module, name, 0.0)
    model.train()


def checked_chat_model(path, model, tokenizer, device):
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise InputError(f"model {path!r} has no chat template; use a chat model or --model tiny")
    return model.to(device), tokenizer


# ---- batches: a step split into forward passes, examples cut to length ------------------------------
def micro_batches(items, size, token_budget=None, length=len):
    """Split one optimizer step's items into forward passes of at most `size` items and, with a budget,
    at most `token_budget` padded tokens (longest length x count): long sequences go fewer to a pass, so
    a large model's activations fit in memory. The step's gradient is the same however it is split."""
    passes, current = [], []
    for item in items:
        full = len(current) == size
        if token_budget and not full:  # the padded tokens of this pass if `item` joined it
            full = max(length(other) for other in current + [item]) * (len(current) + 1) > token_budget
        if current and full:
            passes.append(current)
            current = []
        current.append(item)
    return passes + [current] if current else passes


def check_batch_sizes(batch_size, micro_batch_size):
    """--batch-size and --micro-batch-size (sft.py, dpo.py): one line for values that cannot split a step."""
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    if micro_batch_size < 1:
        raise InputError(f"--micro-batch-size must be at least 1, got {micro_batch_size}")
    if batch_size > micro_batch_size and batch_size % micro_batch_size:  # a smaller batch is one pass
        raise InputError("--batch-size must be a multiple of --micro-batch-size, or at most it")


def cut_to_length(examples, max_length):
    """Tokenized examples, each a tuple (ids, mask[, ids, mask]), cut to max_length tokens: the start is
    kept (the task and first turns). One whose mask is left with no trainable token teaches nothing and
    is skipped, counted, never trained on silently. Returns (kept, skipped, truncated)."""
    kept, skipped, truncated = [], 0, 0
    for example in examples:
        truncated += any(len(ids) > max_length for ids in example[0::2])
        example = tuple(part[:max_length] for part in example)
        if any(sum(mask) == 0 for mask in example[1::2]):
            skipped += 1
            continue
        kept.append(example)
    return kept, skipped, truncated


# ---- loop.py's flags, shared with the research scripts built on it, and the settings they default to ----
def recipe_values(name):
    """'lecture 6, full 10': a setting's value in each tiny recipe, as --help shows it (None: the stage's default)."""
    return ", ".join(f"{recipe} {values[name] if values[name] is not None else 'the stage default'}"
                     for recipe, values in RECIPES.items())


PAIR_LEVELS = ("trajectory", "divergence", "step", "mixture")  # --pair-level; the paper's: trajectory
# --variants: departures from the paper, each trained beside ETO from the same policy, rows "eto-NAME-i".
# divergence-nll: pairs cut to the first turn whose action differs, plus NLL on the chosen side, lr 1e-4, beta 1.
VARIANTS = {"divergence-nll": {"pair_level": "divergence", "sft_weight": 1.0, "lr": 1e-4, "beta": 1.0}}


def add_loop_flags(parser):
    """The loop's flags, shared with the research scripts built on it."""
    parser.add_argument("--run", default="runs/default", help="folder for every artifact of this run")
    parser.add_argument("--env", default="shop", help="an env of envs/ (explore.py --help lists them), NAME:OPTIONS, "
                                                       "or a module of yours with make(options)")
    parser.add_argument("--model", default="tiny", help="'tiny' (built offline) or a HF chat-model folder or .gguf file")
    parser.add_argument("--recipe", default="lecture", choices=tuple(RECIPES),
                        help="the tiny model's settings below, where a flag leaves them unset (RECIPES, common.py): "
                             "lecture, or full (a 4-layer model on every train task; longer)")
    parser.add_argument("--iterations", type=int, default=1, help="explore -> pairs -> DPO rounds (the paper: 2; one, "
                        "from dev and time: a second helped the control more than ETO, and adds ~2 minutes)")
    parser.add_argument("--seed", type=int, default=0, help="passed to every stage")
    parser.add_argument("--no-control", action="store_true", help="skip the sft-continued control")
    parser.add_argument("--train-limit", type=int, default=None, help="train tasks used (None: all)")
    parser.add_argument("--eval-limit", type=int, default=None, help="tasks per evaluation split (None: all)")
    parser.add_argument("--eval-splits", default="test_seen,test_unseen", type=lambda text: text.split(","),
                        help="comma list of the splits every model is evaluated on: dev to choose settings, "
                             "test_seen and test_unseen to report them")
    parser.add_argument("--max-steps", type=int, default=None, help="actions per episode (None: the env's)")
    parser.add_argument("--autocast", default="none", choices=("none", "bf16"),
                        help="training matmuls in bf16 (sft.py/dpo.py --autocast); see docs/performance.md")
    parser.add_argument("--variants", default="", type=lambda text: [name for name in text.split(",") if name],
                        help="comma list of departures from the paper to train and evaluate beside ETO, each from "
                             "the same policy: " + ", ".join(VARIANTS) + " (VARIANTS in common.py)")
    add_launch_flags(parser)  # --procs, --jobs, --redo-changed, --native-kernels, --dry-run, --debug
    sft = parser.add_argument_group("SFT (None: the recipe's for tiny; sft.py's default for a loaded model)")
    sft.add_argument("--tiny-layers", type=int, default=None, help="sft.py --tiny-layers, the tiny model's decoder "
                     f"layers: {recipe_values('tiny_layers')}; a loaded model has its own")
    sft.add_argument("--sft-epochs", type=int, default=None, help=f"sft.py --epochs; tiny: {recipe_values('sft_epochs')}")
    sft.add_argument("--sft-lr", type=float, default=None, help=f"sft.py --lr; tiny: {recipe_values('sft_lr')}")
    sft.add_argument("--sft-batch-size", type=int, default=None, help=f"sft.py --batch-size; tiny: {recipe_values('sft_batch_size')}")
    sft.add_argument("--sft-warmup-ratio", type=float, default=None, help="sft.py --warmup-ratio; tiny: "
                     f"{recipe_values('sft_warmup_ratio')} (chosen on dev with the lr)")
    explore = parser.add_argument_group("exploration and pairs (the authors' script explores greedily, once per task)")
    explore.add_argument("--temperature", type=float, default=0.0, help="explore.py --temperature (0: greedy)")
    explore.add_argument("--samples", type=int, default=1, help="explored trajectories per train task")
    explore.add_argument("--explore-limit", type=int, default=None,
                         help=f"train tasks explored per iteration (0: all); None: {recipe_values('explore_limit')}")
    explore.add_argument("--rollout-batch-size", type=int, default=None,
                         help="explore.py --batch-size for exploring and evaluating; tiny: "
                              f"{recipe_values('rollout_batch_size')} (greedy episodes come "
                              "out the same at any batch size, a big batch sooner); None: explore.py's default")
    explore.add_argument("--pair-level", default=None, choices=PAIR_LEVELS,
                         help="None: trajectory, the paper's rule (the explored side cut to the expert's turns + 5); "
                              "divergence: the first turn whose action differs; step: the agent acts after t-1 "
                              "teacher-forced expert turns (paper App. B); mixture: trajectory and step")
    dpo = parser.add_argument_group(
        "DPO, Eq. 11 (None: for tiny, the recipe's, chosen on dev; for a loaded model, the paper's)")
    dpo.add_argument("--dpo-lr", type=float, default=None, help=f"tiny: {recipe_values('dpo_lr')} (chosen on dev); "
                                                                 f"loaded: {PAPER['dpo_lr']}, the paper's")
    dpo.add_argument("--beta", type=float, default=None, help=f"{PAPER['beta']}, the paper's, for either")
    dpo.add_argument("--dpo-epochs", type=int, default=None, help=f"tiny: {recipe_values('dpo_epochs')} (chosen "
                                                                  f"on dev, for time); loaded: {PAPER['dpo_epochs']}, the paper's")
    dpo.add_argument("--sft-weight", type=float, default=None, help="NLL on chosen added to ETO's loss (beyond the "
                                                                    f"paper); None: {PAPER['sft_weight']}, the paper's")
    dpo.add_argument("--dpo-batch-size", type=int, default=None, help="dpo.py --batch-size; tiny: "
                     f"{recipe_values('dpo_batch_size')}; loaded: {PAPER['dpo_batch_size']}, the paper's")
    dpo.add_argument("--later-dpo-lr", type=float, default=None,
                     help="lr from iteration 2 on (None: --dpo-lr; the authors' script: 5e-7)")
    dpo.add_argument("--later-beta", type=float, default=None,
                     help="beta from iteration 2 on (None: --beta; the authors' script: 0.5)")


def fill_model_defaults(args):
    """Flags left unset take the values that fit the model, and are recorded as set (RUN/loop_args.json);
    --procs is checked and set for every stage launched."""
    if args.procs > 1 and args.jobs is None:
        args.jobs = 1  # each stage already has the machine
    defaults = RECIPES[args.recipe] if args.model == "tiny" else PAPER
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    unknown = [split for split in args.eval_splits if split not in EVAL_SPLITS]
    if unknown or not args.eval_splits:
        raise ValueError(f"--eval-splits: unknown split {unknown[0] if unknown else ''!r}; valid: {', '.join(EVAL_SPLITS)}")
    for flag in ("train_limit", "eval_limit", "explore_limit"):  # 0: all tasks
        if getattr(args, flag) is not None and getattr(args, flag) < 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 0, got {getattr(args, flag)}")
    set_launch(args)  # checks --procs and --jobs
    unknown = [name for name in args.variants if name not in VARIANTS]
    if unknown:
        raise ValueError(f"--variants: unknown variant {unknown[0]!r}; valid: {', '.join(VARIANTS)}")
    if args.rollout_batch_size is not None and args.rollout_batch_size < 1:
        raise ValueError(f"--rollout-batch-size must be at least 1, got {args.rollout_batch_size}")
