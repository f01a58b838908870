"""What every stage shares: one-line errors, JSONL in and out, atomic saves, model loading, and the
per-turn loss mask with the log-probs it selects. Nothing here is one stage's own work."""
import contextlib
import importlib.util
import inspect
import json
import math
import os
import random
import shutil
import sys

import torch
from transformers import DynamicCache


class InputError(Exception):
    """A problem the user must fix (bad input, a diverged run): printed as one line, exit status 2."""


def run_main(main):
    """Run a stage's main(): an InputError (or ValueError from an env) is one line on stderr, exit 2."""
    try:
        main()
        finish_distributed()
    except (InputError, ValueError) as e:
        if "--debug" in sys.argv:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def add_system_flags(parser):
    """The flags every stage shares: seed, device, dtype, debug."""
    group = parser.add_argument_group("system")
    group.add_argument("--seed", type=int, default=0, help="seeds python and torch; recorded in every output")
    group.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    group.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16 on GPU), float32, bfloat16")
    group.add_argument("--autocast", default="none", choices=("none", "bf16"),
                       help="bf16: matmuls in bf16 under torch.autocast, weights and optimizer state in fp32; faster "
                            "on GPUs and CPUs with AVX-512 BF16, ~20x slower on AVX2-only CPUs (bench.py tells)")
    group.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")


def autocast(device, kind):
    """The matmuls of a forward pass in bf16 (`--autocast bf16`), or as they are (`none`)."""
    if kind == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=str(device).split(":")[0], dtype=torch.bfloat16)


def set_seed(seed):
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


def write_jsonl(path, records):
    """Write atomically: a temp file renamed into place, so a crash never leaves a partial file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_json(path, obj):
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


# ---- several processes: `torchrun --nproc-per-node N sft.py ...` (and dpo.py) ----------------------------
def init_distributed(device):
    """(rank, world size, this rank's device): under torchrun, joins the process group (gloo on CPU, nccl
    on GPU, one GPU a rank); alone, (0, 1, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    import torch.distributed as dist
    if str(device).startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), world, device


def finish_distributed():
    """Under torchrun: wait for every rank, then leave the process group. A rank that exits while another
    still holds the group can make that one's gloo teardown abort (seen once: SIGABRT in a rank at exit)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard(items, rank, world):
    """This rank's contiguous share of one optimizer step's items: ranks split a step as one process
    splits it into --micro-batch-size passes, so N ranks give one process's gradient."""
    per_rank = -(-len(items) // world)
    return items[rank * per_rank:(rank + 1) * per_rank]


def gather_lists(items, world):
    """Every rank's list, concatenated in rank order, on every rank."""
    import torch.distributed as dist
    shares = [None] * world
    dist.all_gather_object(shares, items)
    return [item for share in shares for item in share]


def all_sum(value, world, device):
    """A number summed over the ranks (alone: the number)."""
    if world == 1:
        return value
    import torch.distributed as dist
    total = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.item()


def wrap_for_ranks(model, world, fsdp=False):
    """The module a step trains through. Alone: the model. Several ranks: DistributedDataParallel (a full
    copy on every rank, gradients averaged in backward), or with `fsdp` PyTorch's own fully_shard: every
    decoder layer, then the rest, sharded over the ranks, so weights, gradients and optimizer state take
    1/N of the memory each and a layer is gathered only while it computes. Build the optimizer after this."""
    if world == 1:
        return model
    if not fsdp:
        return torch.nn.parallel.DistributedDataParallel(model)
    from torch.distributed.fsdp import fully_shard
    layer_classes = set(getattr(model, "_no_split_modules", None) or ())  # HF names its decoder layer here
    for module in model.modules():
        if type(module).__name__ in layer_classes:
            fully_shard(module)
    fully_shard(model)
    return model


@contextlib.contextmanager
def gradient_sync(model, world, sync):
    """A step's passes before its last keep their gradients on their rank (`sync` False): the ranks
    average once per step, in the last pass's backward."""
    if world == 1 or sync:
        yield
    elif hasattr(model, "no_sync"):  # DistributedDataParallel
        with model.no_sync():
            yield
    else:  # fully_shard
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)


def as_many_passes(passes, world, fsdp, device):
    """Under fully_shard every forward gathers weights from all ranks, so every rank must run as many passes
    as the busiest: this rank's passes, then None for each pass it runs at weight 0 to keep up."""
    if world == 1 or not fsdp:
        return passes
    import torch.distributed as dist
    most = torch.tensor([len(passes)], device=device)
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    return passes + [None] * (int(most.item()) - len(passes))


def full_state_dict(model):
    """The whole model's weights on CPU, gathered from the ranks' shards: every rank must call this."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


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


def end_of_turn_token(tokenizer):
    """The special token the chat template puts after an assistant turn (<|im_end|>, <|eot_id|>, </s>...)."""
    probe = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "MARK"}],
                                          tokenize=False)
    after = probe[probe.rindex("MARK") + 4:].lstrip()
    for token in sorted(tokenizer.all_special_tokens, key=len, reverse=True):
        if token and after.startswith(token):
            return token
    return tokenizer.eos_token


# ---- decoding: the model's side of a rollout (explore.py) ----------------------------------------------
def make_generate_policy(model, tokenizer, temperature=0.0, top_p=1.0, max_new_tokens=64, seed=0, reuse_cache=True):
    """A policy: (conversations, task ids) -> one (reply, finished) per conversation, from one batched
    decode; None for a conversation that no longer fits the model's context.

    The KV cache is kept from call to call (`reuse_cache`): the rollout passes the same episodes again,
    in order, each one turn longer, so a conversation whose tokens start with exactly the tokens already
    cached for a row of the last call feeds only its new tokens (the reply's end, the observation, the
    next generation prompt). Anything else (a new batch, a reply that re-tokenizes differently) starts
    the cache afresh, so the model always sees the re-encoded conversation's tokens. Rows left-pad each
    chunk they add; padding stays in the cache as masked holes, and positions count real tokens only.
    """
    stop_ids = sorted({tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer)), tokenizer.eos_token_id})
    context = getattr(model.config, "max_position_embeddings", None) or 10 ** 9
    calls = 0  # calls so far: each call's sampling seed derives from (seed, call)
    # the cache's argument was renamed (past_key_values -> cache); an unknown name would be ignored silently
    cache_argument = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    kept = {"rows": [], "cache": None, "mask": None}  # per row its cached token ids; the cache; its 0/1 mask

    def choose(logits):
        """The next token of each row: argmax, or a sample drawn as `generate` draws it: temperature, the
        50 likeliest tokens (its default top-k), then top-p (tested token for token)."""
        if temperature <= 0:
            return logits.argmax(-1)
        logits = logits / temperature
        kth_best = logits.topk(min(50, logits.shape[-1]), -1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
        if top_p < 1:  # drop the least likely tokens whose total probability is at most 1 - top_p
            ascending, order = logits.sort(-1)
            drop = ascending.softmax(-1).cumsum(-1) <= 1 - top_p
            drop[:, -1] = False
            logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
        return torch.multinomial(logits.softmax(-1), 1).squeeze(1)

    def reuse(conversation_ids):
        """Indices of the last call's rows that the conversations continue, in order; None: start afresh."""
        rows, keep, j = kept["rows"], [], 0
        for ids in conversation_ids:
            while j < len(rows) and not (len(rows[j]) < len(ids) and ids[:len(rows[j])] == rows[j]):
                j += 1
            if j == len(rows):
                return None
            keep.append(j)
            j += 1
        return keep

    @torch.no_grad()
    def policy(conversations, task_ids=None):
        nonlocal calls
        all_ids = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
        all_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in all_ids]
        fits = [len(ids) + max_new_tokens <= context for ids in all_ids]
        conversation_ids = [ids for ids, ok in zip(all_ids, fits) if ok]
        if not conversation_ids:
            return [None] * len(conversations)
        device, batch = model.device, len(conversation_ids)
        keep = reuse(conversation_ids) if reuse_cache and kept["cache"] is not None else None
        if keep is None:
            rows, cache, mask = [[] for _ in conversation_ids], DynamicCache(), torch.zeros(batch, 0, dtype=torch.long, device=device)
        else:
            index = torch.tensor(keep, device=device)
            rows, cache, mask = [list(kept["rows"][j]) for j in keep], kept["cache"], kept["mask"][index]
            cache.batch_select_indices(index)
        new = [ids[len(row):] for ids, row in zip(conversation_ids, rows)]
        policy.stats["reused" if keep is not None else "fresh"] += batch
        policy.stats["prompt_tokens"] += sum(len(n) for n in new)
        width = max(len(n) for n in new)  # left-pad the new tokens: every row's last token sits at the end
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(n)) + n for n in new])
        new_mask = torch.tensor([[0] * (width - len(n)) + [1] * len(n) for n in new])
        positions = torch.tensor([[max(len(row) + t - width + len(n), 0) for t in range(width)] for row, n in zip(rows, new)])
        for row, n in zip(rows, new):
            row += n
        torch.manual_seed(seed * 100003 + calls)  # a sampled run replays exactly from its seed
        calls += 1
        model.eval()
        replies, running = [[] for _ in rows], torch.ones(batch, dtype=torch.bool)
        for step in range(max_new_tokens):
            mask = torch.cat([mask, new_mask.to(device)], 1)
            logits = model(input_ids=input_ids.to(device), attention_mask=mask, position_ids=positions.to(device),
                           use_cache=True, **{cache_argument: cache}).logits[:, -1].float()
            if cache.get_seq_length() != mask.shape[1]:
                raise RuntimeError(f"the model did not fill the KV cache it was given ({cache_argument}=)")
            next_ids = choose(logits).cpu()
            for i in running.nonzero().flatten().tolist():
                replies[i].append(next_ids[i].item())
            running &= ~torch.isin(next_ids, torch.tensor(stop_ids))
            if not running.any() or step == max_new_tokens - 1:
                break
            # feed each running row its token (a row that just stopped feeds its end-of-turn token too)
            fed = {i for i in range(batch) if len(replies[i]) == step + 1}
            input_ids = torch.tensor([[replies[i][-1] if i in fed else tokenizer.pad_token_id] for i in range(batch)])
            new_mask = torch.tensor([[int(i in fed)] for i in range(batch)])
            positions = torch.tensor([[len(rows[i])] for i in range(batch)])
            for i in fed:
                rows[i].append(replies[i][-1])
        kept.update(rows=rows, cache=cache, mask=mask)
        answers = iter(replies)
        out = []
        for ok in fits:
            if not ok:
                out.append(None)
                continue
            row = next(answers)
            reply = tokenizer.decode(row, skip_special_tokens=True).split("\nObservation:")[0].strip()
            out.append((reply, any(t in stop_ids for t in row)))  # it stopped at end of turn, not at the limit
        return out

    policy.stats = {"fresh": 0, "reused": 0, "prompt_tokens": 0}  # rows started afresh or continued; tokens fed
    return policy


# ---- the loss mask and the log-probs it selects -------------------------------------------------------
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


def micro_batches(items, size, token_budget=None, length=len):
    """Split one optimizer step's items into forward passes of at most `size` items and, with a budget,
    at most `token_budget` padded tokens (longest length x count): long sequences go fewer to a pass, so
    a large model's activations fit in memory. The step's gradient is the same however it is split."""
    passes, current = [], []
    for item in items:
        longest = max([length(item)] + [length(other) for other in current])
        if current and (len(current) == size or (token_budget and longest * (len(current) + 1) > token_budget)):
            passes.append(current)
            current = []
        current.append(item)
    return passes + [current] if current else passes


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
