"""Your code: one function an exercise, in the order ETO runs. Replace each `raise NotImplementedError`
with your implementation, then run `python -m pytest exercises` from the repo root (exercises/README.md).
Each docstring is the contract the tests hold you to; the hints say where the usual mistakes are."""
import torch  # noqa: F401  (the functions below work on torch tensors)
import torch.nn.functional as F  # noqa: F401  (you may want F.logsigmoid)


# ---- 1. SFT and DPO: a sequence's log-prob over the agent's tokens --------------------------------------
def sequence_logps(logits, input_ids, loss_mask):
    """The summed log-prob of each sequence's agent tokens.

    logits: (B, T, V), a causal LM's output for input_ids; logits[:, t] predicts input_ids[:, t + 1].
    input_ids: (B, T) token ids. loss_mask: (B, T), 1 on the agent's tokens, 0 elsewhere (the prompt, the
    observations and the padding are 0, so they never count).
    Returns (B,): for each row, the sum over t = 1 .. T-1 with loss_mask[t] == 1 of
    log p(input_ids[t] | input_ids[<t]) = log_softmax(logits[t - 1])[input_ids[t]]. Position 0 has no
    prediction, so loss_mask[0] is ignored whatever it holds.

    Hint: the prediction for token t sits at position t - 1. Sum, do not average: ETO scores whole
    trajectories (paper Eq. 11), so a longer trajectory's log-prob is a larger sum. Keep the gradient.
    """
    raise NotImplementedError


# ---- 2. DPO's loss (paper Eq. 11) -------------------------------------------------------------------
def dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """Per-pair DPO losses and implicit rewards, each of shape (B,).

    With h = (log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected)):
        loss = -log sigmoid(beta * h)
        chosen_reward = beta * (log pi(chosen) - log ref(chosen)), and the same for rejected.
    Returns (losses, chosen_rewards, rejected_rewards).

    Hint: the rewards are for logging only: detach them, so no gradient flows through them. When the
    policy equals the reference, every loss is log 2.
    """
    raise NotImplementedError


# ---- 3. a variant: IPO ------------------------------------------------------------------------------
def ipo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """Per-pair IPO losses, shape (B,) (Azar et al. 2023, Eq. 17): (h - 1 / (2 beta))^2, with h as in
    dpo_loss. Unlike DPO's, this loss has a minimum: it stops pushing once the margin h reaches 1 / (2 beta).
    """
    raise NotImplementedError


# ---- 4. ETO's pair rule -----------------------------------------------------------------------------
def pair_with_expert(explored, expert):
    """ETO's rule for one task. `explored` and `expert` are trajectories (dicts with a "reward").

    explored reward < expert reward: (expert, explored, "lose")  -- the expert is chosen
    explored reward > expert reward: (explored, expert, "win")   -- the agent beat the expert
    equal rewards: None                                          -- a tie teaches nothing: no pair

    Returns (chosen, rejected, outcome) or None.
    """
    raise NotImplementedError


# ---- 5. the explored side's cut -----------------------------------------------------------------------
def cut_after_assistant_turns(messages, n_turns):
    """The messages up to and including the n-th assistant message (role "assistant"); all messages up to
    the last assistant one if there are fewer; [] if there is none, or if n_turns is 0.

    The count is of messages whose role is "assistant", from the start of `messages`, in order; the system
    and user messages around them are kept and never counted. In pairs.py, `messages` is the explored
    continuation (after the prompt) and n_turns the expert's assistant turns + 5.

    ETO cuts a failed trajectory to the expert's number of agent turns + 5, so a long failure cannot
    dominate the summed log-prob. Hint: the cut side must end on the agent's turn, never on an observation.
    """
    raise NotImplementedError


# ---- 6. where two trajectories part ---------------------------------------------------------------------
def first_differing_action(chosen, rejected, parse_action):
    """The index of the first assistant message whose *action* differs between two message lists of the
    same start (`parse_action(content)` gives a reply's action), or None if none differs.

    The index is the message's position in the lists, counted from 0 over every message (system, user and
    assistant alike), so chosen[i] and rejected[i] are the two differing turns. Messages are compared at the
    same index while both lists have one there; when one list is longer, its extra messages are not compared
    (a list that starts with the whole of the other gives None).

    Hint: thoughts may differ where the actions agree; only the action counts.
    """
    raise NotImplementedError


# ---- 7. online RL: the group baseline ---------------------------------------------------------------
def group_advantages(rewards, group_size, normalize_std=False):
    """Each episode's advantage: its reward minus the mean reward of its group, a list of floats.

    rewards: a list of floats; episodes [k * group_size, (k + 1) * group_size) are one task's group.
    With normalize_std, divide by the group's standard deviation: the population std (the square root of
    the mean squared deviation, dividing by n), as research/online_rl.py does, so that a group of two
    rewards (1, 0) gives exactly (1, -1). GRPO's paper does not say which; TRL's GRPOTrainer divides by the
    sample std (n - 1, torch.std's default), which scales every advantage of a group of n by
    sqrt((n - 1) / n). Both are sound; these tests hold the population std.
    A group whose rewards are all equal gives every episode exactly 0 (there is nothing to prefer), never
    NaN and never a division by a rounding error: three rewards of 0.1 are all equal.

    Hint: the baseline is per group, not over the whole batch. 0.1 + 0.1 + 0.1 is not 0.3 in binary.
    """
    raise NotImplementedError


# ---- 8. online RL: PPO's clipped surrogate -------------------------------------------------------------
def clipped_surrogate(logps, old_logps, advantages, mask, clip):
    """PPO's clipped objective as a loss to minimize, a scalar tensor (Schulman et al. 2017, Eq. 7).

    All inputs are (B, T): the current and the sampling policy's log-probs of each token, each token's
    advantage, and a mask, 1 on the agent's tokens. Per token, with ratio = exp(logps - old_logps):
        -min(ratio * A, clamp(ratio, 1 - clip, 1 + clip) * A)
    then the mean over the tokens where mask is 1 (observations and prompts do not count): the sum over
    the masked tokens of the whole batch divided by their number, not a mean of per-row means.
    The min makes the clip one-sided: with A > 0 a ratio above 1 + clip is clipped and one below 1 - clip
    is not; with A < 0 a ratio below 1 - clip is clipped and one above 1 + clip is not.

    Hint: a masked mean divides by the number of agent tokens, not by B * T.
    """
    raise NotImplementedError
