"""The grader: `python -m pytest exercises`. Every expected value is worked out here by hand, with the
arithmetic written next to it; nothing calls the repo's own implementation (adapters.py decides whose
code runs)."""
import math

import pytest
import torch

from exercises import adapters

LN = math.log


# ---- 1. sequence_logps ---------------------------------------------------------------------------------
def logits_and_ids():
    """Vocabulary of 3. Softmax of [0, ln 2, 0] is [1/4, 1/2, 1/4], of [ln 3, 0, 0] is [3/5, 1/5, 1/5],
    of [0, 0, ln 4] is [1/6, 1/6, 4/6], of [ln 5, 0, 0] is [5/7, 1/7, 1/7]."""
    rows = [[0.0, LN(2), 0.0], [LN(3), 0.0, 0.0], [0.0, 0.0, LN(4)], [LN(5), 0.0, 0.0]]
    logits = torch.tensor([rows, rows], requires_grad=True)  # (2, 4, 3): both sequences get the same logits
    input_ids = torch.tensor([[0, 1, 0, 2], [2, 2, 1, 0]])
    loss_mask = torch.tensor([[0, 1, 0, 1], [0, 0, 1, 1]])
    return logits, input_ids, loss_mask


def test_1_sequence_logps_sums_the_agent_tokens_each_predicted_one_position_earlier():
    logits, input_ids, loss_mask = logits_and_ids()
    logps = adapters.sequence_logps(logits, input_ids, loss_mask)
    # row 0: token 1 (id 1) from position 0: 1/2; token 3 (id 2) from position 2: 4/6  ->  log(1/2 * 2/3) = log(1/3)
    # row 1: token 2 (id 1) from position 1: 1/5; token 3 (id 0) from position 2: 1/6  ->  log(1/30)
    assert logps.shape == (2,)
    assert logps.tolist() == pytest.approx([LN(1 / 3), LN(1 / 30)], abs=1e-5)


def test_1_sequence_logps_is_a_sum_not_a_mean_and_keeps_the_gradient():
    logits, input_ids, loss_mask = logits_and_ids()
    logps = adapters.sequence_logps(logits, input_ids, loss_mask)
    assert logps[0].item() != pytest.approx(LN(1 / 3) / 2, abs=1e-3)  # the mean over the 2 tokens
    assert logps.requires_grad
    logps.sum().backward()
    assert logits.grad[:, 3].abs().sum() == 0  # the last position predicts nothing in the sequence


def test_1_the_first_token_has_no_prediction_so_its_mask_does_not_count():
    logits, input_ids, loss_mask = logits_and_ids()
    loss_mask[:, 0] = 1
    assert adapters.sequence_logps(logits, input_ids, loss_mask).tolist() == pytest.approx([LN(1 / 3), LN(1 / 30)], abs=1e-5)


# ---- 2. dpo_loss -----------------------------------------------------------------------------------------
def four(*values, grad=False):
    return [torch.tensor([v], requires_grad=grad) for v in values]


def test_2_dpo_loss_by_hand():
    # chosen ratio -1 - (-1.5) = 0.5, rejected ratio -2 - (-1.5) = -0.5, h = 1, beta = 0.5:
    # loss = -log sigmoid(0.5) = log(1 + e^-0.5) = 0.474077; rewards 0.5 * 0.5 = 0.25 and -0.25
    losses, chosen_rewards, rejected_rewards = adapters.dpo_loss(*four(-1.0, -2.0, -1.5, -1.5), 0.5)
    assert losses.item() == pytest.approx(LN(1 + math.exp(-0.5)), abs=1e-6)
    assert chosen_rewards.item() == pytest.approx(0.25) and rejected_rewards.item() == pytest.approx(-0.25)


def test_2_dpo_loss_is_log_2_where_the_policy_is_the_reference():
    losses, chosen_rewards, rejected_rewards = adapters.dpo_loss(*four(-3.0, -7.0, -3.0, -7.0), 0.1)
    assert losses.item() == pytest.approx(LN(2), abs=1e-6)
    assert chosen_rewards.item() == 0 and rejected_rewards.item() == 0


def test_2_the_rewards_are_detached_and_the_loss_is_not():
    policy_chosen, policy_rejected, reference_chosen, reference_rejected = four(-1.0, -2.0, -1.5, -1.5, grad=True)
    losses, chosen_rewards, rejected_rewards = adapters.dpo_loss(policy_chosen, policy_rejected, reference_chosen.detach(),
                                                                 reference_rejected.detach(), 0.5)
    assert losses.requires_grad and not chosen_rewards.requires_grad and not rejected_rewards.requires_grad
    losses.sum().backward()
    # d/dh of -log sigmoid(beta h) = -beta (1 - sigmoid(beta h)) = -0.5 * (1 - sigmoid(0.5)) = -0.188765
    assert policy_chosen.grad.item() == pytest.approx(-0.5 * (1 - 1 / (1 + math.exp(-0.5))), abs=1e-6)
    assert policy_rejected.grad.item() == pytest.approx(0.5 * (1 - 1 / (1 + math.exp(-0.5))), abs=1e-6)


# ---- 3. ipo_loss -----------------------------------------------------------------------------------------
def test_3_ipo_loss_by_hand():
    # h = 1 as in test 2: beta 0.5 -> (1 - 1/(2*0.5))^2 = 0; beta 0.25 -> (1 - 2)^2 = 1; beta 1 -> (1 - 0.5)^2 = 0.25
    assert adapters.ipo_loss(*four(-1.0, -2.0, -1.5, -1.5), 0.5).item() == pytest.approx(0.0, abs=1e-6)
    assert adapters.ipo_loss(*four(-1.0, -2.0, -1.5, -1.5), 0.25).item() == pytest.approx(1.0, abs=1e-6)
    assert adapters.ipo_loss(*four(-1.0, -2.0, -1.5, -1.5), 1.0).item() == pytest.approx(0.25, abs=1e-6)


# ---- 4. pair_with_expert ---------------------------------------------------------------------------------
def test_4_the_pair_rule_lose_win_tie():
    expert, worse, better, same = {"reward": 0.8}, {"reward": 0.2}, {"reward": 1.0}, {"reward": 0.8}
    chosen, rejected, outcome = adapters.pair_with_expert(worse, expert)
    assert chosen is expert and rejected is worse and outcome == "lose"
    chosen, rejected, outcome = adapters.pair_with_expert(better, expert)
    assert chosen is better and rejected is expert and outcome == "win"
    assert adapters.pair_with_expert(same, expert) is None  # a tie is dropped, never kept as a pair


# ---- 5. cut_after_assistant_turns ------------------------------------------------------------------------
MESSAGES = [{"role": "system", "content": "s"}, {"role": "user", "content": "task"},
            {"role": "assistant", "content": "a1"}, {"role": "user", "content": "o1"},
            {"role": "assistant", "content": "a2"}, {"role": "user", "content": "o2"},
            {"role": "assistant", "content": "a3"}, {"role": "user", "content": "o3"}]


def test_5_the_cut_keeps_n_agent_turns_and_ends_on_one():
    assert adapters.cut_after_assistant_turns(MESSAGES, 2) == MESSAGES[:5]   # through a2
    assert adapters.cut_after_assistant_turns(MESSAGES, 10) == MESSAGES[:7]  # fewer turns: through a3, not o3
    assert adapters.cut_after_assistant_turns(MESSAGES, 0) == []
    assert adapters.cut_after_assistant_turns(MESSAGES[:2], 3) == []         # no agent turn at all


# ---- 6. first_differing_action ---------------------------------------------------------------------------
def reply(thought, action):
    return {"role": "assistant", "content": f"Thought: {thought}\nAction: {action}"}


def test_6_the_first_differing_action_ignores_thoughts():
    start = [{"role": "system", "content": "s"}, {"role": "user", "content": "task"}]
    chosen = start + [reply("look", "search[shoes]"), {"role": "user", "content": "page"}, reply("first", "click[item 2]")]
    rejected = start + [reply("other words", "search[shoes]"), {"role": "user", "content": "page"},
                        reply("first", "click[item 1]")]
    assert adapters.first_differing_action(chosen, rejected) == 4
    assert adapters.first_differing_action(chosen, chosen) is None


def test_6_unequal_lengths_are_compared_where_both_have_a_message():
    start = [{"role": "system", "content": "s"}, {"role": "user", "content": "task"}]
    longer = start + [reply("a", "search[shoes]"), {"role": "user", "content": "page"}, reply("b", "click[item 2]"),
                      {"role": "user", "content": "item"}, reply("c", "click[buy now]")]
    assert adapters.first_differing_action(longer, longer[:5]) is None  # one starts with the whole of the other
    assert adapters.first_differing_action(longer[:5], longer) is None
    shorter = longer[:4] + [reply("b", "click[item 1]")]
    assert adapters.first_differing_action(longer, shorter) == 4  # an index into the lists, system message included


# ---- 7. group_advantages ---------------------------------------------------------------------------------
def test_7_each_episode_is_scored_against_its_own_group():
    # group 1: (1, 0, 0, 1) has mean 1/2 -> (1/2, -1/2, -1/2, 1/2); group 2: (0.2, 0.6, 0.4, 0.8) has mean 0.5
    # -> (-0.3, 0.1, -0.1, 0.3). A batch-wide mean (0.5 too, here) would hide a wrong grouping, so: group 3
    # (1, 1, 1, 0.6) has mean 0.9 -> (0.1, 0.1, 0.1, -0.3)
    rewards = [1.0, 0.0, 0.0, 1.0, 0.2, 0.6, 0.4, 0.8, 1.0, 1.0, 1.0, 0.6]
    expected = [0.5, -0.5, -0.5, 0.5, -0.3, 0.1, -0.1, 0.3, 0.1, 0.1, 0.1, -0.3]
    assert adapters.group_advantages(rewards, 4) == pytest.approx(expected, abs=1e-9)


def test_7_an_all_equal_group_has_no_advantage_and_no_nan():
    assert adapters.group_advantages([1.0, 1.0, 0.0, 0.0], 2) == [0.0, 0.0, 0.0, 0.0]
    assert adapters.group_advantages([1.0, 1.0, 0.0, 0.0], 2, normalize_std=True) == [0.0, 0.0, 0.0, 0.0]


def test_7_equal_rewards_that_are_not_exact_in_binary_still_give_zero():
    # 0.1 + 0.1 + 0.1 = 0.30000000000000004 in binary, so a mean taken as sum / n is 0.10000000000000002 and each
    # deviation -1.4e-17, and so is the std: dividing one by the other gives -1, not 0
    assert adapters.group_advantages([0.1, 0.1, 0.1], 3) == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)
    assert adapters.group_advantages([0.1, 0.1, 0.1], 3, normalize_std=True) == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)
    assert adapters.group_advantages([0.1, 0.1, 0.1, 0.7, 0.3, 0.3], 3, normalize_std=True)[:3] == \
        pytest.approx([0.0, 0.0, 0.0], abs=1e-12)


def test_7_the_std_is_the_population_std():
    # (1, 0, 0, 0): mean 1/4, squared deviations 9/16 + 3 * 1/16 = 3/4; population std sqrt(3/4 / 4) = sqrt(3)/4
    # -> (3/4) / (sqrt(3)/4) = sqrt(3) and -(1/4) / (sqrt(3)/4) = -1/sqrt(3). The sample std, sqrt(3/4 / 3) = 1/2,
    # would give 3/2 and -1/2
    assert adapters.group_advantages([1.0, 0.0, 0.0, 0.0], 4, normalize_std=True) == pytest.approx(
        [math.sqrt(3), -1 / math.sqrt(3), -1 / math.sqrt(3), -1 / math.sqrt(3)])


def test_7_the_std_is_the_groups_own():
    # (1, 0): mean 1/2, population std 1/2 -> (1, -1); (0.9, 0.3): mean 0.6, std 0.3 -> (1, -1).
    # (1, 0, 0): mean 1/3, std sqrt(2)/3 -> (2/3) / (sqrt(2)/3) = sqrt(2), and -(1/3) / (sqrt(2)/3) = -1/sqrt(2)
    assert adapters.group_advantages([1.0, 0.0, 0.9, 0.3], 2, normalize_std=True) == pytest.approx([1, -1, 1, -1])
    assert adapters.group_advantages([1.0, 0.0, 0.0], 3, normalize_std=True) == pytest.approx(
        [math.sqrt(2), -1 / math.sqrt(2), -1 / math.sqrt(2)])


# ---- 8. clipped_surrogate --------------------------------------------------------------------------------
def test_8_the_clipped_surrogate_by_hand():
    # ratios e^(logps - old): token 0: 1.5 with A = 2 -> min(3.0, 1.2 * 2 = 2.4) = 2.4 (clipped);
    # token 1: 0.9 with A = 2 -> min(1.8, 1.8) = 1.8; token 2: 0.5 with A = -1 -> min(-0.5, 0.8 * -1 = -0.8) = -0.8
    # (clipped); token 3 is masked. Loss = -(2.4 + 1.8 - 0.8) / 3 = -3.4 / 3
    logps = torch.log(torch.tensor([[1.5, 0.9, 0.5, 7.0]]))
    loss = adapters.clipped_surrogate(logps, torch.zeros(1, 4), torch.tensor([[2.0, 2.0, -1.0, 9.0]]),
                                      torch.tensor([[1.0, 1.0, 1.0, 0.0]]), 0.2)
    assert loss.item() == pytest.approx(-3.4 / 3, abs=1e-6)


def test_8_each_side_of_the_clip_for_each_sign_of_the_advantage():
    # clip 0.2. A = 1: ratio 1.5 -> min(1.5, 1.2) = 1.2 (clipped); ratio 0.5 -> min(0.5, 0.8) = 0.5 (not clipped).
    # A = -1: ratio 0.5 -> min(-0.5, -0.8) = -0.8 (clipped); ratio 1.5 -> min(-1.5, -1.2) = -1.5 (not clipped).
    ratios, advantages = [1.5, 0.5, 0.5, 1.5], [1.0, 1.0, -1.0, -1.0]
    expected = [-1.2, -0.5, 0.8, 1.5]  # each token's loss, alone
    for ratio, advantage, loss in zip(ratios, advantages, expected):
        got = adapters.clipped_surrogate(torch.log(torch.tensor([[ratio]])), torch.zeros(1, 1),
                                         torch.tensor([[advantage]]), torch.ones(1, 1), 0.2)
        assert got.item() == pytest.approx(loss, abs=1e-6), (ratio, advantage)


def test_8_the_mean_is_over_the_agent_tokens_of_the_whole_batch():
    # row 0 has 1 agent token (ratio 1, A = 3 -> 3), row 1 has 3 (ratio 1, A = 1 -> 1 each): (3 + 3) / 4 = 1.5;
    # a mean of the rows' means would give (3 + 1) / 2 = 2
    logps = torch.zeros(2, 3, requires_grad=True)
    loss = adapters.clipped_surrogate(logps, torch.zeros(2, 3), torch.tensor([[3.0, 0.0, 0.0], [1.0, 1.0, 1.0]]),
                                      torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]), 0.2)
    assert loss.item() == pytest.approx(-1.5)
    loss.backward()  # d loss / d logp = -ratio * A / 4 where unclipped, 0 where masked
    assert logps.grad.flatten().tolist() == pytest.approx([-0.75, 0.0, 0.0, -0.25, -0.25, -0.25])
