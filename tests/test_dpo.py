"""DPO: the loss against hand-computed values, sequence log-probs, and dpo.py's own training loop."""
import json
import math
import sys

import pytest
import torch

import dpo
from common import InputError, micro_batches, sequence_logps
from dpo import Objective, accumulate_step, dpo_loss, tokenize_pair
from research import replay
from research.preference_losses import chosen_loss, conservative_dpo_loss, dpop_loss, hinge_loss, ipo_loss
from plumbing.ranks import Ranks
from pairs import make_pairs
from sft import build_tiny_model, build_tiny_tokenizer
from tests.test_pairs import record


def sigmoid_loss(x):  # -log sigmoid(x), computed the long way
    return -math.log(1 / (1 + math.exp(-x)))


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
@pytest.mark.parametrize("pc, pr, rc, rr", [(-1.0, -3.0, -2.0, -2.0), (-5.0, -1.0, -4.0, -2.0), (-10.0, -10.0, -3.0, -7.0)])
def test_dpo_loss_matches_hand_computation(beta, pc, pr, rc, rr):
    losses, chosen_rewards, rejected_rewards = dpo_loss(*(torch.tensor([v]) for v in (pc, pr, rc, rr)), beta)
    margin = (pc - rc) - (pr - rr)
    assert losses.item() == pytest.approx(sigmoid_loss(beta * margin), rel=1e-6)
    assert chosen_rewards.item() == pytest.approx(beta * (pc - rc))
    assert rejected_rewards.item() == pytest.approx(beta * (pr - rr))


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_loss_variants_match_hand_computation(beta):
    pc, pr, rc, rr = -1.0, -3.0, -2.0, -2.5  # h = (-1 + 2) - (-3 + 2.5) = 1.5
    args = [torch.tensor([v]) for v in (pc, pr, rc, rr)]
    h = 1.5
    ipo, _, _ = ipo_loss(*args, beta)
    assert ipo.item() == pytest.approx((h - 1 / (2 * beta)) ** 2, rel=1e-6)
    hinge, _, _ = hinge_loss(*args, beta)
    assert hinge.item() == pytest.approx(max(0.0, 1 - beta * h), abs=1e-6)
    with pytest.raises(InputError, match="unknown loss 'kto'; valid losses: sigmoid, ipo, hinge, dpop"):
        chosen_loss("kto")


def test_dpop_matches_hand_computation():
    # chosen fell below the reference: log-ratio -1 + 0.5 = -0.5; rejected -3 + 1 = -2; h = 1.5
    # lambda 2, beta 0.5: -log s(0.5 (1.5 - 2 * 0.5)) = -log s(0.25) = log(1 + e^-0.25) = 0.57593942
    args = [torch.tensor([v]) for v in (-1.0, -3.0, -0.5, -1.0)]
    dpop, chosen_rewards, _ = dpop_loss(*args, 0.5, dpop_lambda=2.0)
    assert dpop.item() == pytest.approx(0.57593942, abs=1e-6) and chosen_rewards.item() == pytest.approx(-0.25)
    # chosen at or above the reference: no penalty, DPO's loss exactly
    args = [torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.5)]
    assert dpop_loss(*args, 0.5, dpop_lambda=2.0)[0].item() == pytest.approx(sigmoid_loss(0.5 * 1.5), rel=1e-6)
    # the penalty's gradient pushes the chosen side up harder than DPO's alone
    grads = []
    for loss_type in ("sigmoid", "dpop"):
        chosen = torch.tensor([-1.0], requires_grad=True)
        chosen_loss(loss_type, dpop_lambda=2.0)(
            chosen, torch.tensor([-3.0]), torch.tensor([-0.5]), torch.tensor([-1.0]), 0.5)[0].sum().backward()
        grads.append(chosen.grad.item())
    assert grads[1] < grads[0] < 0


@pytest.mark.parametrize("beta, expected", [(1.0, 0.50141327), (0.1, 0.65095705)])
def test_conservative_dpo_matches_golden_values(beta, expected):
    # e = 0.2, h = 1.5: 0.8 (-log s(bh)) + 0.2 (-log s(-bh)) = -log s(bh) + 0.2 bh, as -log s(-x) = -log s(x) + x;
    # beta 1: log(1 + e^-1.5) + 0.3 = 0.20141328 + 0.3; beta 0.1: log(1 + e^-0.15) + 0.03 = 0.62095705 + 0.03
    args = [torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.5)]
    conservative, _, _ = conservative_dpo_loss(*args, beta, label_smoothing=0.2)
    assert conservative.item() == pytest.approx(expected, abs=1e-6)
    smoothed, _, _ = chosen_loss("sigmoid", label_smoothing=0.2)(*args, beta)  # what the study trains with
    assert smoothed.item() == pytest.approx(expected, abs=1e-6)
    for loss_type in ("ipo", "hinge"):  # label smoothing is the sigmoid loss's: refused, never ignored
        with pytest.raises(InputError, match=f"--loss {loss_type} has none"):
            chosen_loss(loss_type, label_smoothing=0.2)


def test_dpo_loss_is_log2_when_policy_equals_reference_and_rewards_are_detached():
    policy_chosen = torch.tensor([-4.0, -7.5], requires_grad=True)
    policy_rejected = torch.tensor([-2.0, -9.0], requires_grad=True)
    losses, chosen_rewards, rejected_rewards = dpo_loss(policy_chosen, policy_rejected, policy_chosen.detach(),
                                                        policy_rejected.detach(), 0.1)
    assert torch.allclose(losses, torch.full((2,), math.log(2)))
    assert not chosen_rewards.requires_grad and not rejected_rewards.requires_grad
    losses.sum().backward()  # gradient pushes chosen up, rejected down: d/dx -log sig(b x) = -b/2 at 0
    assert torch.allclose(policy_chosen.grad, torch.full((2,), -0.05))
    assert torch.allclose(policy_rejected.grad, torch.full((2,), 0.05))


TEXTS = ["system user assistant Thought: Action: click[buy now] search[red shoes] Observation: page one two"]


def test_sequence_logps_equal_a_manual_token_sum():
    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer(TEXTS, 300)
    model = build_tiny_model(tokenizer, hidden=32, layers=1).eval()
    pair = make_pairs([record("a", 0.0, ["search[red]", "click[one]", "click[two]"])],
                      [record("a", 1.0, ["search[red shoes]", "click[buy now]"])])[0][0]
    chosen_ids, chosen_mask, rejected_ids, rejected_mask = tokenize_pair(tokenizer, pair)
    with torch.no_grad():
        logps, counts = sequence_logps(model, [(chosen_ids, chosen_mask), (rejected_ids, rejected_mask)], "cpu")
        for k, (ids, mask) in enumerate([(chosen_ids, chosen_mask), (rejected_ids, rejected_mask)]):
            log_probs = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)
            manual = sum(log_probs[t - 1, ids[t]].item() for t in range(1, len(ids)) if mask[t])
            assert logps[k].item() == pytest.approx(manual, rel=1e-5)
            assert counts[k].item() == sum(mask[1:])
    # observations inside the continuation are not scored
    text = tokenizer.decode([i for i, m in zip(rejected_ids, rejected_mask) if m])
    assert "Observation" not in text and text.count("Action:") == 3


def tiny_model_and_pairs(tmp_path, dropout=0.0, n_tasks=8):
    """A saved tiny model (its own folder, as dpo.py loads it) and a pairs file of n_tasks lose pairs."""
    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer(TEXTS, 300)
    model = build_tiny_model(tokenizer, hidden=32, layers=1)
    model.config.attention_dropout = dropout
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    tasks = [f"t{i}" for i in range(n_tasks)]
    pairs, _ = make_pairs([record(t, 0.0, ["click[one]", "click[two]"]) for t in tasks],
                          [record(t, 1.0, ["search[red shoes]", "click[buy now]"]) for t in tasks])
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return model, tokenizer, pairs


def run_dpo(tmp_path, monkeypatch, *flags, main=dpo.main):
    monkeypatch.setattr(sys, "argv", ["dpo.py", "--model", str(tmp_path / "model"), "--pairs", str(tmp_path / "pairs.jsonl"),
                                      "--out", str(tmp_path / "out"), "--device", "cpu", *flags])
    main()
    return json.loads((tmp_path / "out" / "args.json").read_text())["history"]


@pytest.mark.parametrize("flags", [["--autocast", "none"], ["--autocast", "bf16"], ["--gradient-checkpointing"]])
def test_dpo_py_starts_at_log2_even_with_dropout_and_widens_the_margin(tmp_path, monkeypatch, flags):
    tiny_model_and_pairs(tmp_path, dropout=0.5)
    reference_calls, real_reference = [], dpo.reference_logps
    def counted_reference(*args, **kwargs):
        reference_calls.append(1)
        return real_reference(*args, **kwargs)
    monkeypatch.setattr(dpo, "reference_logps", counted_reference)
    history = run_dpo(tmp_path, monkeypatch, "--beta", "0.1", "--lr", "3e-3", "--epochs", "6", "--batch-size", "4",
                      "--micro-batch-size", "2", *flags)
    assert len(reference_calls) == 1 and len(history) == 12  # the reference is scored once, before the first step
    # the reference is the starting policy, scored with dropout off and in the same precision as every
    # training pass: h = 0 at step 1
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-4) and history[0]["rewards/margins"] == 0
    assert history[-1]["rewards/margins"] > 0.5 and history[-1]["loss"] < history[0]["loss"]


def gradients(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def step_gradient(model, examples, micro_batch_size, ranks=Ranks(), token_budget=None, **objective):
    """The gradient accumulate_step leaves for one optimizer step over all examples (as `ranks.rank` of
    `ranks.world`)."""
    with torch.no_grad():
        reference = tuple(r - 0.3 for r in dpo.reference_logps(model, examples, "cpu", False))  # h != 0
    model.zero_grad(set_to_none=True)
    metrics = accumulate_step(model, examples, list(range(len(examples))), reference, Objective(**{"beta": 0.5, **objective}),
                              ranks, lambda indices: micro_batches(indices, micro_batch_size, token_budget, length=lambda i: 2 * max(
                                  len(examples[i][0]), len(examples[i][2]))))
    return gradients(model), metrics


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    model, tokenizer, pairs = tiny_model_and_pairs(tmp_path)
    examples = [tokenize_pair(tokenizer, p) for p in pairs]
    examples[1] = tuple(part[:-3] for part in examples[1])  # unequal lengths: padding differs per micro-batch
    whole, whole_metrics = step_gradient(model, examples, 8, sft_weight=0.5)
    split, split_metrics = step_gradient(model, examples, 2, sft_weight=0.5)
    assert torch.allclose(whole, split, atol=1e-6) and whole.abs().sum() > 0
    assert split_metrics["loss"] == pytest.approx(whole_metrics["loss"], rel=1e-5)


def test_micro_batches_keep_to_the_size_and_the_token_budget():
    from common import micro_batches
    lengths = [3, 5, 2, 8, 1, 1]
    assert micro_batches(lengths, 4, length=int) == [[3, 5, 2, 8], [1, 1]]
    # budget 10: [3, 5] pads to 2 x 5 = 10; with 2 it would be 3 x 5 = 15; [2, 8] 16; [8, 1] 16; [1, 1] 2
    assert micro_batches(lengths, 4, 10, length=int) == [[3, 5], [2], [8], [1, 1]]
    assert micro_batches([20, 1], 4, 10, length=int) == [[20], [1]]  # longer than the budget: alone, never dropped


def test_a_token_budget_splits_the_step_but_not_its_gradient(tmp_path):
    model, tokenizer, pairs = tiny_model_and_pairs(tmp_path)
    examples = [tokenize_pair(tokenizer, p) for p in pairs]
    whole, _ = step_gradient(model, examples, 8, sft_weight=0.5)
    budget = 2 * max(len(e[0]) for e in examples) + 1  # one pair a pass
    split, _ = step_gradient(model, examples, 8, sft_weight=0.5, token_budget=budget)
    assert torch.allclose(whole, split, atol=1e-6)


def test_gradient_checkpointing_keeps_the_gradient_and_dropout_off(tmp_path):
    from common import checkpoint_activations
    model, tokenizer, pairs = tiny_model_and_pairs(tmp_path, dropout=0.5)
    examples = [tokenize_pair(tokenizer, p) for p in pairs]
    model.eval()
    plain, _ = step_gradient(model, examples, 4, sft_weight=0.5)
    checkpoint_activations(model, dropout=False)
    assert model.training and model.is_activation_checkpointing
    recomputed, _ = step_gradient(model, examples, 4, sft_weight=0.5)
    assert torch.allclose(plain, recomputed, atol=1e-6)  # dropout 0.5 left on would change it


def test_the_control_gives_the_rejected_side_no_gradient(tmp_path):
    model, tokenizer, pairs = tiny_model_and_pairs(tmp_path)
    examples = [tokenize_pair(tokenizer, p) for p in pairs]
    other_rejected = [(c_ids, c_mask, c_ids[:-2], c_mask[:-2]) for c_ids, c_mask, _, _ in examples]
    control = dict(dpo_weight=0.0, sft_weight=1.0)
    with_rejected, _ = step_gradient(model, examples, 4, **control)
    with_other_rejected, _ = step_gradient(model, other_rejected, 4, **control)
    assert torch.equal(with_rejected, with_other_rejected)  # whatever the rejected side holds
    # and it is the gradient of the mean per-token NLL of the chosen side, computed directly
    model.zero_grad(set_to_none=True)
    logps, counts = sequence_logps(model, [(e[0], e[1]) for e in examples], "cpu")
    (-(logps / counts).mean()).backward()
    assert torch.allclose(with_rejected, gradients(model), atol=1e-7)
    dpo_gradient, _ = step_gradient(model, examples, 4)
    assert not torch.allclose(dpo_gradient, with_rejected)  # DPO itself does move on the rejected side


def test_a_zero_micro_batch_is_one_line_not_a_division_by_zero(tmp_path, monkeypatch):
    tiny_model_and_pairs(tmp_path)
    with pytest.raises(InputError, match="--micro-batch-size must be at least 1, got 0"):
        run_dpo(tmp_path, monkeypatch, "--micro-batch-size", "0")
    with pytest.raises(InputError, match="--batch-size must be at least 1, got 0"):
        run_dpo(tmp_path, monkeypatch, "--batch-size", "0")
    assert not (tmp_path / "out").exists()


def test_replay_is_the_mean_nll_per_agent_token_however_it_is_split(tmp_path, monkeypatch):
    """research/replay.py: the step's extra term is replay_weight x (-sum log p / number) over the agent tokens of
    whole expert trajectories, computed here from the logits by hand; micro-batches do not change it."""
    model, tokenizer, _ = tiny_model_and_pairs(tmp_path)
    trajectories = [record(f"t{i}", 1.0, ["search[red shoes]", "click[buy now]"][:1 + i % 2]) for i in range(5)]
    replayed = [dpo.tokenize_conversation(tokenizer, r["messages"]) for r in trajectories]
    results = []
    for micro in (5, 2):
        model.zero_grad(set_to_none=True)
        nll = replay.replay_step(model, replayed, list(range(5)), 0.5, lambda indices: micro_batches(indices, micro), "cpu")
        results.append((nll, gradients(model)))
    total, tokens = 0.0, 0
    with torch.no_grad():
        for ids, mask in replayed:
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1], -1)
            for t in range(1, len(ids)):
                if mask[t]:
                    total, tokens = total - logp[t - 1, ids[t]].item(), tokens + 1
    assert results[0][0] == pytest.approx(total / tokens, rel=1e-5) and results[1][0] == pytest.approx(total / tokens, rel=1e-5)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6) and results[0][1].abs().sum() > 0
    (tmp_path / "expert.jsonl").write_text("".join(json.dumps(r) + "\n" for r in trajectories))
    history = run_dpo(tmp_path, monkeypatch, "--replay", str(tmp_path / "expert.jsonl"), "--epochs", "1",
                      "--batch-size", "4", "--micro-batch-size", "2", "--lr", "1e-3", main=replay.main)
    assert all(step["nll/replay"] > 0 for step in history)


def test_a_replay_file_without_agent_tokens_is_one_clear_error(tmp_path, monkeypatch):
    tiny_model_and_pairs(tmp_path)
    empty = {"messages": [{"role": "system", "content": "shop"}, {"role": "user", "content": "Instruction: socks"}]}
    (tmp_path / "expert.jsonl").write_text(json.dumps(empty) + "\n")
    with pytest.raises(InputError, match="no trajectory keeps an agent token to replay"):
        run_dpo(tmp_path, monkeypatch, "--replay", str(tmp_path / "expert.jsonl"), main=replay.main)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, study", [("--loss", "research/preference_losses.py"), ("--label-smoothing", "research/preference_losses.py"),
                                         ("--replay", "research/replay.py")])
def test_a_studys_flag_given_to_dpo_py_names_the_script_that_has_it(tmp_path, monkeypatch, flag, study):
    with pytest.raises(InputError, match=f"{flag}: a study beyond the paper; run {study}"):
        run_dpo(tmp_path, monkeypatch, flag, "x")
