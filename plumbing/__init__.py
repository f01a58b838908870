"""Plumbing the stages share but a reader of the algorithm can skip: how a step is spread over several
processes (`ranks.py`), the KV-cache decode that makes rollouts fast (`decode.py`), and how loop.py
launches a stage, pins its kernels and threads and skips a finished one (`launch.py`). Nothing here
changes what is computed: the tests hold N ranks to one process's gradients and the cached decode to the
plain one's trajectories. Nothing here imports from the stages above it."""
