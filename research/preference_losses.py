"""Preference losses beyond the paper, trained by dpo.py's own loop (the paper's loss, Eq. 11, is `dpo.dpo_loss`).

    python research/preference_losses.py --loss ipo --model runs/demo/sft --pairs runs/demo/iter1/pairs.jsonl \
        --out runs/demo/iter1/ipo                        # every dpo.py flag, and the three below
    python research/preference_losses.py --loss sigmoid --label-smoothing 0.1 ...   # conservative DPO
    python research/preference_losses.py --loss dpop --dpop-lambda 5 ...            # DPO-Positive

Each takes what `dpo_loss` takes, the four per-sequence log-prob tensors (policy chosen, policy rejected,
reference chosen, reference rejected, each of shape (B,)) and beta, and returns the same three tensors:
the per-example losses and the implicit rewards beta * (log pi - log ref) of each side, detached.
Throughout, h = (log pi(e_w|u) - log ref(e_w|u)) - (log pi(e_l|u) - log ref(e_l|u)).
"""
import functools
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the stages live one folder up
import dpo  # noqa: E402
from common import InputError, run_main  # noqa: E402


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


LOSSES = {"sigmoid": dpo.dpo_loss, "ipo": ipo_loss, "hinge": hinge_loss, "dpop": dpop_loss}  # --loss NAME


def chosen_loss(loss, label_smoothing=0.0, dpop_lambda=5.0):
    """The function `--loss`, `--label-smoothing` and `--dpop-lambda` name; one line for a combination that has none."""
    if loss not in LOSSES:
        raise InputError(f"unknown loss {loss!r}; valid losses: {', '.join(LOSSES)}")
    if label_smoothing and loss != "sigmoid":
        raise InputError(f"--label-smoothing is conservative DPO's (sigmoid); --loss {loss} has none")
    if label_smoothing:
        return functools.partial(conservative_dpo_loss, label_smoothing=label_smoothing)
    if loss == "dpop":
        return functools.partial(dpop_loss, dpop_lambda=dpop_lambda)
    return LOSSES[loss]


def build_parser():
    parser = dpo.build_parser()
    parser.description = __doc__
    group = parser.add_argument_group("the preference loss (this study; dpo.py trains Eq. 11)")
    group.add_argument("--loss", default="sigmoid", choices=tuple(LOSSES), help="sigmoid (DPO, the paper's), ipo, "
                                                                                 "hinge (SLiC) or dpop (DPO-Positive)")
    group.add_argument("--label-smoothing", type=float, default=0.0, help="conservative DPO's e (sigmoid only)")
    group.add_argument("--dpop-lambda", type=float, default=5.0, help="dpop: weight of the chosen side's drop below "
                                                                      "the reference")
    return parser


def main():
    parser = build_parser()
    args = parser.parse_args()  # dpo.main parses them again, and records them in args.json with dpo.py's
    dpo.main(chosen_loss(args.loss, args.label_smoothing, args.dpop_lambda), parser)


if __name__ == "__main__":
    run_main(main)
