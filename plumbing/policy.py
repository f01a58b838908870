"""The model's side of a rollout (explore.py's policy): a reply per conversation, decoded token by token
with the sampling rule `generate` uses, through the KV cache (plumbing/decode.py) or, to check it, whole."""
import torch

from plumbing.decode import KVCacheDecoder


def next_tokens(logits, temperature=0.0, top_p=1.0):
    """The next token of each row: argmax, or a sample drawn as transformers' `generate` draws it:
    temperature, the 50 likeliest tokens (its default top-k), then top-p (tested token for token)."""
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


def end_of_turn_token(tokenizer):
    """The special token the chat template puts after an assistant turn (<|im_end|>, <|eot_id|>, </s>...)."""
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "MARK"}],
                                          tokenize=False)
    after = rendered[rendered.rindex("MARK") + 4:].lstrip()
    for token in sorted(tokenizer.all_special_tokens, key=len, reverse=True):
        if token and after.startswith(token):
            return token
    return tokenizer.eos_token


def stop_ids(tokenizer):
    """The token ids a reply stops at: the chat template's end-of-turn token, and eos."""
    return sorted({tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer)), tokenizer.eos_token_id})


class ChatPolicy:
    """policy(conversations, task_ids) -> one (reply, finished) per conversation, or None for one that no
    longer fits the model's context: each conversation rendered with the chat template, its new tokens
    from `decode(prompts)` (plain_decode or KVCacheDecoder), decoded back to text. `finished`: the reply
    stopped at its end of turn, not at max_new_tokens."""

    def __init__(self, model, tokenizer, decode, max_new_tokens, stops, seed=0):
        self.model, self.tokenizer, self.decode = model, tokenizer, decode
        self.max_new_tokens, self.stops = max_new_tokens, stops
        self.context = getattr(model.config, "max_position_embeddings", None) or 10 ** 9
        self.seed, self.calls = seed, 0  # each call's sampling seed derives from (seed, call)
        self.stats = getattr(decode, "stats", {})  # the cache's rows started afresh or continued, tokens fed

    def __call__(self, conversations, task_ids=None):
        tokenizer = self.tokenizer
        texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
        all_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
        fits = [len(ids) + self.max_new_tokens <= self.context for ids in all_ids]
        prompts = [ids for ids, ok in zip(all_ids, fits) if ok]
        if not prompts:
            return [None] * len(conversations)
        torch.manual_seed(self.seed * 100003 + self.calls)  # a sampled run replays exactly from its seed
        self.calls += 1
        self.model.eval()
        replies, out = iter(self.decode(prompts)), []
        for ok in fits:
            if not ok:
                out.append(None)
                continue
            tokens = next(replies)
            reply = tokenizer.decode(tokens, skip_special_tokens=True).split("\nObservation:")[0].strip()
            out.append((reply, any(t in self.stops for t in tokens)))
        return out


@torch.no_grad()
def plain_decode(model, prompts, pick, max_new_tokens, stop_ids, pad_id):
    """New token ids for each prompt (a list of token ids), up to and with its end-of-turn token: every
    step feeds every conversation whole and appends the token `pick` chooses from its last logits."""
    replies, running = [[] for _ in prompts], [True] * len(prompts)
    for _ in range(max_new_tokens):
        rows = [prompt + reply for prompt, reply in zip(prompts, replies)]
        width = max(len(row) for row in rows)  # left-pad, so every row's newest token is the last column
        input_ids = torch.tensor([[pad_id] * (width - len(row)) + row for row in rows], device=model.device)
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], device=model.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # positions count real tokens, not the padding
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits[:, -1].float()
        for i, token in enumerate(pick(logits).tolist()):
            if running[i]:
                replies[i].append(token)
                running[i] = token not in stop_ids
        if not any(running):
            break
    return replies


def make_generate_policy(model, tokenizer, temperature=0.0, top_p=1.0, max_new_tokens=64, seed=0, decode="cached",
                         reuse_cache=True):
    """A policy: (conversations, task ids) -> one (reply, finished) per conversation, from one batched
    decode; None for a conversation that no longer fits the model's context. Greedy at temperature 0,
    else sampled as transformers' `generate` samples. `decode`: "plain" is plain_decode; "cached" (the
    default) gives the same tokens 2-3x faster with a KV cache kept across tokens and turns."""
    stops, pad = stop_ids(tokenizer), tokenizer.pad_token_id
    pick = lambda logits: next_tokens(logits, temperature, top_p)  # noqa: E731
    if decode == "plain":
        decoder = lambda prompts: plain_decode(model, prompts, pick, max_new_tokens, stops, pad)  # noqa: E731
    else:
        decoder = KVCacheDecoder(model, pad, stops, pick, max_new_tokens, reuse_cache)
    return ChatPolicy(model, tokenizer, decoder, max_new_tokens, stops, seed)
