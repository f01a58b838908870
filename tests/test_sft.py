"""Loss masking (tiny tokenizer and real-model-style templates where pad == eos) and a tiny SFT run."""
import json
import sys

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

import envs
from common import tokenize_conversation
from sft import build_tiny_model, build_tiny_tokenizer, masked_nll

ENV = envs.make("shop")


def expert_messages(task_id):
    messages = [{"role": "system", "content": ENV.system_prompt}, {"role": "user", "content": ENV.reset(task_id)}]
    for turn in ENV.expert(task_id):
        messages.append({"role": "assistant", "content": turn})
        observation, _, done = ENV.step(turn.split("Action: ")[1])
        if not done:
            messages.append({"role": "user", "content": "Observation: " + observation})
    return messages


CONVERSATIONS = [expert_messages(f"train-{i}") for i in range(12)]
TEXTS = [m["content"] for c in CONVERSATIONS for m in c] + ["system user assistant"]

LLAMA3_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
LLAMA2_TEMPLATE = (  # system folded into the first user turn, a space before the content, </s> after it
    "{% for message in messages %}{% if message['role'] == 'system' %}<s>[INST] <<SYS>>\n{{ message['content'] }}\n<</SYS>>\n\n"
    "{% elif message['role'] == 'user' %}{% if loop.index0 != 1 %}<s>[INST] {% endif %}{{ message['content'] }} [/INST]"
    "{% else %} {{ message['content'] }} </s>{% endif %}{% endfor %}")


def real_style_tokenizer(template, specials, eos):
    """A BPE tokenizer in a real chat model's style: its own specials, and pad == eos."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=800, special_tokens=specials, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=eos, pad_token=eos, chat_template=template)


def tiny_pad_is_eos():
    tokenizer = build_tiny_tokenizer(TEXTS, 800)
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


TOKENIZERS = {
    "tiny": lambda: build_tiny_tokenizer(TEXTS, 800),
    "chatml pad==eos": tiny_pad_is_eos,
    "llama3 pad==eos": lambda: real_style_tokenizer(
        LLAMA3_TEMPLATE, ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "<|eot_id|>"),
    "llama2 pad==eos": lambda: real_style_tokenizer(LLAMA2_TEMPLATE, ["<s>", "</s>"], "</s>"),
}


def masked_runs(ids, mask):
    """The masked tokens grouped into unbroken runs."""
    runs, current = [], []
    for token_id, bit in zip(ids, mask):
        if bit:
            current.append(token_id)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


@pytest.mark.parametrize("name", TOKENIZERS)
def test_mask_covers_exactly_the_assistant_turns(name):
    tokenizer = TOKENIZERS[name]()
    eot = {"tiny": "<|im_end|>", "chatml pad==eos": "<|im_end|>", "llama3 pad==eos": "<|eot_id|>",
           "llama2 pad==eos": "</s>"}[name]
    for messages in CONVERSATIONS[:4]:
        ids, mask = tokenize_conversation(tokenizer, messages)
        full_text = tokenizer.apply_chat_template(messages, tokenize=False)
        assert ids == tokenizer(full_text, add_special_tokens=False)["input_ids"]
        assert len(mask) == len(ids)
        runs = masked_runs(ids, mask)  # each run: one assistant turn plus its end-of-turn token
        assistant = [m["content"] for m in messages if m["role"] == "assistant"]
        decoded = [tokenizer.decode(run) for run in runs]
        # exactly the assistant contents, each followed by its end-of-turn token (only whitespace between)
        assert [d[:-len(eot)].strip() for d in decoded] == assistant
        assert all(d.endswith(eot) for d in decoded)  # the model learns to stop: eot is trained on


def test_truncation_keeps_the_start_and_can_leave_nothing():
    tokenizer = TOKENIZERS["tiny"]()
    ids, mask = tokenize_conversation(tokenizer, CONVERSATIONS[0])
    first_assistant = mask.index(1)
    short_ids, short_mask = tokenize_conversation(tokenizer, CONVERSATIONS[0], max_length=first_assistant)
    assert short_ids == ids[:first_assistant] and sum(short_mask) == 0


def test_sft_loss_falls_on_a_tiny_model():
    torch.manual_seed(0)
    tokenizer = TOKENIZERS["tiny"]()
    model = build_tiny_model(tokenizer, hidden=64, layers=2)
    examples = [tokenize_conversation(tokenizer, m) for m in CONVERSATIONS]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss_sum, count = masked_nll(model, examples, "cpu")
        loss = loss_sum / count
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_masked_nll_matches_a_manual_token_sum():
    torch.manual_seed(0)
    tokenizer = TOKENIZERS["tiny"]()
    model = build_tiny_model(tokenizer, hidden=32, layers=1).eval()
    ids, mask = tokenize_conversation(tokenizer, CONVERSATIONS[0])
    with torch.no_grad():
        loss_sum, count = masked_nll(model, [(ids, mask), (ids[:50], mask[:50])], "cpu")
        manual, manual_count = 0.0, 0
        for seq, seq_mask in [(ids, mask), (ids[:50], mask[:50])]:
            logits = model(torch.tensor([seq])).logits[0]
            for t in range(1, len(seq)):
                if seq_mask[t]:
                    manual -= torch.log_softmax(logits[t - 1], -1)[seq[t]].item()
                    manual_count += 1
    assert count.item() == manual_count
    assert loss_sum.item() == pytest.approx(manual, rel=1e-5)


def test_a_nan_loss_stops_training_and_keeps_the_last_good_weights(tmp_path, monkeypatch):
    import sft
    from safetensors.torch import load_file
    data, out = tmp_path / "expert.jsonl", tmp_path / "sft"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in CONVERSATIONS))
    calls, real_nll = [], sft.masked_nll

    def nll_that_turns_nan(model, batch, device):  # finite for two steps, then nan
        calls.append(1)
        loss_sum, count = real_nll(model, batch, device)
        return (loss_sum * float("nan"), count) if len(calls) > 2 else (loss_sum, count)

    monkeypatch.setattr(sft, "masked_nll", nll_that_turns_nan)
    monkeypatch.setattr(sys, "argv", ["sft.py", "--data", str(data), "--out", str(out), "--epochs", "3",
                                      "--tiny-hidden", "32", "--tiny-layers", "1", "--batch-size", "4",
                                      "--micro-batch-size", "4", "--dev-fraction", "0"])
    with pytest.raises(sft.InputError, match=r"loss became nan at epoch 1 step 3; stopped, .* not written; "
                                             r"the weights before that step are in .*sft.last-good"):
        sft.main()
    assert not out.exists()
    weights = load_file(str(tmp_path / "sft.last-good" / "model.safetensors"))
    assert weights and all(torch.isfinite(w).all() for w in weights.values())
    assert json.loads((tmp_path / "sft.last-good" / "args.json").read_text())["diverged_at"] == "epoch 1 step 3"


@pytest.mark.parametrize("name", TOKENIZERS)
@pytest.mark.parametrize("reply", ["", "i", "st", "assistant", "user", "Observation: a copy", "Thought: t\nAction: click[x]"])
def test_any_reply_masks_exactly_its_own_tokens_and_end_of_turn(name, reply):
    # replies a search would find in the wrong place: empty, one letter, a piece of the markup, a role
    # name, a copy of the turn before. Rendered last, a reply's tokens are the end of the rendering.
    tokenizer = TOKENIZERS[name]()
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": "Observation: a copy st i"},
                {"role": "assistant", "content": "Thought: t\nAction: click[x]"},
                {"role": "user", "content": reply or "Observation: a copy"}, {"role": "assistant", "content": reply}]
    ids, mask = tokenize_conversation(tokenizer, messages, train_from=4)
    without = tokenizer(tokenizer.apply_chat_template(messages[:4], tokenize=False, add_generation_prompt=True),
                        add_special_tokens=False)["input_ids"]
    assert mask[:len(without)] == [0] * len(without)  # nothing before the reply's generation prompt ends
    masked = [i for i, bit in zip(ids, mask) if bit]
    eot = tokenizer.convert_tokens_to_ids({"tiny": "<|im_end|>", "chatml pad==eos": "<|im_end|>",
                                           "llama3 pad==eos": "<|eot_id|>", "llama2 pad==eos": "</s>"}[name])
    assert masked[-1] == eot and tokenizer.decode(masked[:-1]).strip() == reply
    first = mask.index(1)
    assert all(mask[first:first + sum(mask)])  # one unbroken run


def test_a_template_that_rewrites_earlier_turns_is_refused_in_one_line():
    from common import InputError
    tokenizer = TOKENIZERS["tiny"]()  # a template that shows only the last assistant turn
    tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}<|im_start|>"
                               "{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
                               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(InputError, match="does not render a conversation as its turns one after another"):
        tokenize_conversation(tokenizer, CONVERSATIONS[0])


def test_gradient_checkpointing_keeps_the_sft_gradient():
    from common import checkpoint_activations
    torch.manual_seed(0)
    tokenizer = TOKENIZERS["tiny"]()
    model = build_tiny_model(tokenizer, hidden=32, layers=2).train()
    examples = [tokenize_conversation(tokenizer, m) for m in CONVERSATIONS]
    grads = []
    for recompute in (False, True):
        if recompute:
            checkpoint_activations(model)
        model.zero_grad(set_to_none=True)
        masked_nll(model, examples, "cpu")[0].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert model.is_activation_checkpointing and torch.allclose(grads[0], grads[1], atol=1e-6)


def test_trajectories_below_min_reward_are_left_out_and_counted(tmp_path, monkeypatch):
    """A gold path that failed on this load (ScienceWorld's boil-20 reaches 0.78 or 1.0) is not trained on."""
    import sft
    data, out = tmp_path / "expert.jsonl", tmp_path / "sft"
    rewards = [1.0, 0.78, 1.0, None]  # a record without a reward is kept
    data.write_text("".join(json.dumps({"messages": m, **({} if r is None else {"reward": r})}) + "\n"
                            for m, r in zip(CONVERSATIONS, rewards)))
    base = ["sft.py", "--data", str(data), "--epochs", "1", "--tiny-hidden", "32", "--tiny-layers", "1", "--dev-fraction", "0"]
    monkeypatch.setattr(sys, "argv", base + ["--out", str(out)])
    sft.main()
    summary = json.loads((out / "args.json").read_text())["summary"]
    assert summary["examples"] == 3 and summary["below_min_reward"] == 1
    monkeypatch.setattr(sys, "argv", base + ["--out", str(tmp_path / "none"), "--min-reward", "2"])
    with pytest.raises(sft.InputError, match="no trajectory has a reward of at least --min-reward 2.0"):
        sft.main()


def test_the_loss_curve_is_the_mean_of_each_stretch_of_steps():
    from sft import loss_curve
    assert loss_curve([4.0, 2.0, 1.0, 1.0, 0.5], points=2) == [2.3333, 0.75]  # (4 + 2 + 1) / 3, (1 + 0.5) / 2
    assert loss_curve([0.3, 0.1], points=10) == [0.3, 0.1]  # fewer steps than points: a point a step
    assert loss_curve([]) == []
