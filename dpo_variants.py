"""Preference losses beyond the paper, for `dpo.py --loss` (the paper's loss, Eq. 11, is `dpo.dpo_loss`).

Each takes what `dpo_loss` takes, the four per-sequence log-prob tensors (policy chosen, policy rejected,
reference chosen, reference rejected, each of shape (B,)) and beta, and returns the same three tensors:
the per-example losses and the implicit rewards beta * (log pi - log ref) of each side, detached.
Throughout, h = (log pi(e_w|u) - log ref(e_w|u)) - (log pi(e_l|u) - log ref(e_l|u)).
"""
import torch
import torch.nn.functional as F


def log_ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps):
    """(log pi - log ref) of the chosen side, and of the rejected side."""
    return policy_chosen_logps - reference_chosen_logps, policy_rejected_logps - reference_rejected_logps


def conservative_dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                          reference_rejected_logps, beta, label_smoothing=0.1):
    """Conservative DPO (Mitchell 2023): each label is wrong with probability e (`label_smoothing`),
    L = (1 - e)(-log sigmoid(beta h)) + e(-log sigmoid(-beta h)); e = 0 is DPO."""
    chosen, rejected = log_ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                                  reference_rejected_logps)
    h = chosen - rejected
    losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    return losses, beta * chosen.detach(), beta * rejected.detach()


def ipo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """IPO (Azar et al. 2023, Eq. 17): L = (h - 1 / (2 beta))^2. Unlike DPO's, this loss has a minimum:
    it stops pushing once the margin reaches 1 / (2 beta)."""
    chosen, rejected = log_ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                                  reference_rejected_logps)
    losses = (chosen - rejected - 1 / (2 * beta)) ** 2
    return losses, beta * chosen.detach(), beta * rejected.detach()


def hinge_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """SLiC's hinge (Zhao et al. 2023): L = max(0, 1 - beta h)."""
    chosen, rejected = log_ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                                  reference_rejected_logps)
    losses = torch.relu(1 - beta * (chosen - rejected))
    return losses, beta * chosen.detach(), beta * rejected.detach()


def dpop_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta,
              dpop_lambda=5.0):
    """DPO-Positive (Pal et al. 2024, Eq. 3): L = -log sigmoid(beta (h - lambda max(0, log ref(e_w|u) - log pi(e_w|u)))).
    The penalty is 0 while the chosen side stays at or above the reference's likelihood; below it, the
    loss pulls the chosen side back up (DPO alone can lower both sides when they differ in a few tokens)."""
    chosen, rejected = log_ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                                  reference_rejected_logps)
    losses = -F.logsigmoid(beta * (chosen - rejected - dpop_lambda * torch.relu(-chosen)))
    return losses, beta * chosen.detach(), beta * rejected.detach()


VARIANTS = {"ipo": ipo_loss, "hinge": hinge_loss, "dpop": dpop_loss}  # --loss NAME; conservative: --label-smoothing
