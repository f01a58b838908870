"""The fast decode behind explore.py's `--decode cached` (`KVCacheDecoder`): the same tokens as explore.py's
`plain_decode` (tests/test_explore.py holds the trajectories equal), 2-3x faster on a rollout.

`plain_decode` feeds every conversation whole for every new token. Here each token is fed once: the
attention keys and values of what was already fed stay in a KV cache, within a reply and from one turn
to the next. A rollout asks for the same episodes again, in order, each one turn longer, so a
conversation whose tokens start with exactly the tokens cached for a row of the last call feeds only its
new tokens (the reply's end, the observation, the next generation prompt). Anything else (a new batch,
a reply that re-tokenizes differently) starts the cache afresh, so the model always sees the re-encoded
conversation's tokens. Rows left-pad each chunk they add; padding stays in the cache as masked holes,
and positions count real tokens only. The cache's keys and values live in buffers with room to spare
(`GrowingCache`), so a new token is written in place instead of copying the whole cache each step.
"""
import inspect

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer


class GrowingLayer(DynamicLayer):
    """One layer's keys and values, [batch, heads, length, head_dim], as views of buffers with spare room.

    transformers' DynamicLayer concatenates every step: each new token copies the whole cache, which cost
    about as much as attention in a profile of the tiny model's rollouts. Here a token is written into
    the buffer and the buffer doubles when full, so a step copies only what it adds. The values the
    model reads are the same (tests/test_explore.py holds the trajectories equal)."""

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.key_buffer = self.value_buffer = None
        length, added = self.get_seq_length(), key_states.shape[-2]
        if self.key_buffer is None or length + added > self.key_buffer.shape[-2]:
            batch, heads, _, head_dim = key_states.shape
            room = max(2 * (length + added), 256)
            self.key_buffer = key_states.new_empty(batch, heads, room, head_dim)
            self.value_buffer = value_states.new_empty(batch, heads, room, head_dim)
            if length:
                self.key_buffer[:, :, :length] = self.keys
                self.value_buffer[:, :, :length] = self.values
        self.key_buffer[:, :, length:length + added] = key_states
        self.value_buffer[:, :, length:length + added] = value_states
        self.keys = self.key_buffer[:, :, :length + added]
        self.values = self.value_buffer[:, :, :length + added]
        return self.keys, self.values

    def batch_select_indices(self, indices):
        """Keep only these rows: a copy of what is cached; the next update gives it room again."""
        if self.get_seq_length() > 0:
            self.keys, self.values = self.keys[indices], self.values[indices]
            self.key_buffer = self.value_buffer = None


class GrowingCache(DynamicCache):
    """A DynamicCache whose layers are GrowingLayers (one is added per model layer on first use)."""

    def __init__(self):
        Cache.__init__(self, layer_class_to_replicate=GrowingLayer)


class KVCacheDecoder:
    """decoder(prompts) -> one list of new token ids per prompt (token-id lists), as plain_decode returns."""

    def __init__(self, model, pad_id, stop_ids, pick, max_new_tokens, reuse_cache=True):
        self.model, self.pad_id, self.stop_ids, self.pick = model, pad_id, stop_ids, pick
        self.max_new_tokens, self.reuse_cache = max_new_tokens, reuse_cache
        # the cache's argument was renamed (past_key_values -> cache); an unknown name would be ignored silently
        self.cache_argument = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.rows, self.cache, self.mask = [], None, None  # per row its cached token ids; the cache; its 0/1 mask
        self.stats = {"fresh": 0, "reused": 0, "prompt_tokens": 0}  # rows started afresh or continued; tokens fed

    def continued_rows(self, prompts):
        """Indices of the last call's rows that the prompts continue, in order; None: start afresh."""
        keep, j = [], 0
        for ids in prompts:
            while j < len(self.rows) and not (len(self.rows[j]) < len(ids) and ids[:len(self.rows[j])] == self.rows[j]):
                j += 1
            if j == len(self.rows):
                return None
            keep.append(j)
            j += 1
        return keep

    @torch.no_grad()
    def __call__(self, prompts):
        model, device, batch = self.model, self.model.device, len(prompts)
        keep = self.continued_rows(prompts) if self.reuse_cache and self.cache is not None else None
        if keep is None:
            rows, cache, mask = [[] for _ in prompts], GrowingCache(), torch.zeros(batch, 0, dtype=torch.long, device=device)
        else:
            index = torch.tensor(keep, device=device)
            rows, cache, mask = [list(self.rows[j]) for j in keep], self.cache, self.mask[index]
            cache.batch_select_indices(index)
        new = [ids[len(row):] for ids, row in zip(prompts, rows)]
        self.stats["reused" if keep is not None else "fresh"] += batch
        self.stats["prompt_tokens"] += sum(len(n) for n in new)
        width = max(len(n) for n in new)  # left-pad the new tokens: every row's last token sits at the end
        input_ids = torch.tensor([[self.pad_id] * (width - len(n)) + n for n in new])
        new_mask = torch.tensor([[0] * (width - len(n)) + [1] * len(n) for n in new])
        positions = torch.tensor([[max(len(row) + t - width + len(n), 0) for t in range(width)] for row, n in zip(rows, new)])
        for row, n in zip(rows, new):
            row += n
        replies, running = [[] for _ in rows], torch.ones(batch, dtype=torch.bool)
        for step in range(self.max_new_tokens):
            mask = torch.cat([mask, new_mask.to(device)], 1)
            logits = model(input_ids=input_ids.to(device), attention_mask=mask, position_ids=positions.to(device),
                           use_cache=True, **{self.cache_argument: cache}).logits[:, -1].float()
            if cache.get_seq_length() != mask.shape[1]:
                raise RuntimeError(f"the model did not fill the KV cache it was given ({self.cache_argument}=)")
            next_ids = self.pick(logits).cpu()
            for i in running.nonzero().flatten().tolist():
                replies[i].append(next_ids[i].item())
            running &= ~torch.isin(next_ids, torch.tensor(self.stop_ids))
            if not running.any() or step == self.max_new_tokens - 1:
                break
            # feed each running row its token (a row that just stopped feeds its end-of-turn token too)
            fed = {i for i in range(batch) if len(replies[i]) == step + 1}
            input_ids = torch.tensor([[replies[i][-1] if i in fed else self.pad_id] for i in range(batch)])
            new_mask = torch.tensor([[int(i in fed)] for i in range(batch)])
            positions = torch.tensor([[len(rows[i])] for i in range(batch)])
            for i in fed:
                rows[i].append(replies[i][-1])
        self.rows, self.cache, self.mask = rows, cache, mask
        return replies
