"""The exercises' grader is itself graded: against the stubs every exercise test fails (so the grader
can fail), against the repo's own implementations every one passes (so the grader is right), and against
a plausible wrong answer to each branch of each formula some test of that exercise fails."""
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

STUBS = 8  # the exercises in exercises/student.py, each a stub raising NotImplementedError until solved


def grade(implementation):
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "exercises"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "ETO_EXERCISES": implementation})
    counts = dict((word, int(n)) for n, word in re.findall(r"(\d+) (passed|failed|error)", done.stdout))
    return counts, done.stdout[-3000:]


def test_the_grader_passes_the_reference_implementations():
    counts, output = grade("reference")
    assert counts.get("passed", 0) >= 10 and "failed" not in counts and "error" not in counts, output


def test_the_grader_fails_every_test_on_the_stubs():
    source = open(os.path.join(ROOT, "exercises", "student.py"), encoding="utf-8").read()
    if source.count("raise NotImplementedError") < STUBS:
        pytest.skip("exercises/student.py holds your solutions, not the stubs")
    counts, output = grade("student")
    assert counts.get("failed", 0) >= 10 and "passed" not in counts, output


# ---- the tests catch a plausible wrong answer to each branch of each formula ---------------------------------
def _logps_shifted_wrong(logits, input_ids, loss_mask):  # the prediction for token t read at position t
    logps = logits.log_softmax(-1).gather(2, input_ids.unsqueeze(-1)).squeeze(-1)
    return (logps * loss_mask).sum(-1)


def _logps_mean(logits, input_ids, loss_mask):  # a mean over the agent tokens instead of a sum
    logps = logits[:, :-1].log_softmax(-1).gather(2, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (logps * loss_mask[:, 1:]).sum(-1) / loss_mask[:, 1:].sum(-1)


def _logps_detached(logits, input_ids, loss_mask):  # the right values without their gradient
    logps = logits[:, :-1].detach().log_softmax(-1).gather(2, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (logps * loss_mask[:, 1:]).sum(-1)


def _dpo(beta_inside, detach):
    import torch.nn.functional as F

    def loss(pc, pr, rc, rr, beta):
        h = (pc - rc) - (pr - rr)
        losses = -F.logsigmoid(h * beta if beta_inside else h) * (1 if beta_inside else beta)
        chosen, rejected = beta * (pc - rc), beta * (pr - rr)
        return losses, chosen.detach() if detach else chosen, rejected.detach() if detach else rejected
    return loss


def _ipo_sign(pc, pr, rc, rr, beta):  # the margin's target on the wrong side
    return ((pc - rc) - (pr - rr) + 1 / (2 * beta)) ** 2


def _pair_tie_kept(explored, expert):
    return (expert, explored, "lose") if explored["reward"] <= expert["reward"] else (explored, expert, "win")


def _pair_win_not_swapped(explored, expert):
    return None if explored["reward"] == expert["reward"] else (expert, explored, "lose")


def _cut_on_observation(messages, n_turns):  # keeps the observation after the n-th turn
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"][:n_turns]
    return messages[:turns[-1] + 2] if turns else []


def _differing_thoughts(chosen, rejected, parse_action):  # compares whole replies, thoughts and all
    return next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a["role"] == "assistant" and a != b), None)


def _differing_turn_number(chosen, rejected, parse_action):  # the assistant turn's number, not the message's index
    turns = [(a, b) for a, b in zip(chosen, rejected) if a["role"] == "assistant"]
    return next((k for k, (a, b) in enumerate(turns) if parse_action(a["content"]) != parse_action(b["content"])), None)


def _advantages(batch_mean=False, sample_std=False, exact_zero=False):
    import statistics

    def advantages(rewards, group_size, normalize_std=False):
        out = []
        for start in range(0, len(rewards), group_size):
            group = rewards[start:start + group_size]
            mean = sum(rewards) / len(rewards) if batch_mean else sum(group) / len(group)
            spread = (statistics.stdev if sample_std else statistics.pstdev)(group)
            if exact_zero:  # a spread tested against 0 after a mean taken as sum / n
                spread = (sum((r - mean) ** 2 for r in group) / len(group)) ** 0.5
            out += [0.0 if spread == 0 else (r - mean) / spread if normalize_std else r - mean for r in group]
        return out
    return advantages


def _surrogate(two_sided=False, row_means=False):
    def loss(logps, old_logps, advantages, mask, clip):
        ratio = (logps - old_logps).exp()
        clipped = ratio.clamp(1 - clip, 1 + clip) * advantages
        per_token = -clipped if two_sided else -(ratio * advantages).minimum(clipped)
        if row_means:
            return ((per_token * mask).sum(-1) / mask.sum(-1)).mean()
        return (per_token * mask).sum() / mask.sum()
    return loss


MUTANTS = {
    "1": {"sequence_logps": [_logps_shifted_wrong, _logps_mean, _logps_detached]},
    "2": {"dpo_loss": [_dpo(beta_inside=False, detach=True), _dpo(beta_inside=True, detach=False)]},
    "3": {"ipo_loss": [_ipo_sign]},
    "4": {"pair_with_expert": [_pair_tie_kept, _pair_win_not_swapped]},
    "5": {"cut_after_assistant_turns": [_cut_on_observation]},
    "6": {"first_differing_action": [_differing_thoughts, _differing_turn_number]},
    "7": {"group_advantages": [_advantages(batch_mean=True), _advantages(sample_std=True), _advantages(exact_zero=True)]},
    "8": {"clipped_surrogate": [_surrogate(two_sided=True), _surrogate(row_means=True)]},
}


@pytest.mark.parametrize("exercise, name, mutant", [(e, n, m) for e, funcs in MUTANTS.items()
                                                     for n, ms in funcs.items() for m in ms],
                         ids=lambda value: getattr(value, "__qualname__", str(value)))
def test_each_exercise_fails_a_plausible_wrong_answer(exercise, name, mutant, monkeypatch):
    """The exercise's tests, run against a wrong implementation plugged in where the student's goes: at least
    one of them must fail."""
    from exercises import adapters, test_exercises
    if name == "first_differing_action":  # the student's signature takes parse_action
        from envs import parse_action
        monkeypatch.setattr(adapters, name, lambda chosen, rejected: mutant(chosen, rejected, parse_action))
    else:
        monkeypatch.setattr(adapters, name, mutant)
    tests = [getattr(test_exercises, t) for t in dir(test_exercises) if t.startswith(f"test_{exercise}_")]
    assert tests
    failed = 0
    for test in tests:
        try:
            test()
        except Exception:  # an AssertionError, or the wrong answer breaking on the test's input
            failed += 1
    assert failed, f"no test of exercise {exercise} fails {mutant.__qualname__}"
