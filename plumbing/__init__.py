"""Plumbing the stages share but a reader of the algorithm can skip: how a step is spread over several
processes (`ranks.py`), and the model's side of a rollout: chat template in, reply out, with the
KV-cache decode that makes rollouts fast (`decode.py`). Nothing here
changes what is computed: the tests hold N ranks to one process's gradients and the cached decode to the
plain one's trajectories."""
