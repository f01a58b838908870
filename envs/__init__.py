"""Environments behind one small protocol.

Every environment returned by `make(name)` has:

    env.name                      the name it was made with
    env.max_steps                 actions allowed per episode (invalid ones count too)
    env.system_prompt             the instructions the agent gets as its system message
    env.task_ids(split)           task ids of a split: "train", "test_seen", "test_unseen" or "dev"
                                  (dev: for choosing settings, drawn like test_seen)
    env.reset(task_id) -> str     start a task; returns the first observation
    env.step(action) -> (observation, reward, done)
    env.expert(task_id) -> list   the expert's ReAct turns "Thought: ...\\nAction: ..."

Environments are deterministic for a task id. An action the env cannot parse or apply never raises:
it returns an observation starting with INVALID (so the agent reads why) and still costs a step.
"""

SPLITS = ("train", "test_seen", "test_unseen", "dev")
INVALID = "Invalid action"


def _shop():
    from envs.shop import ShopEnv
    return ShopEnv()


ENVS = {"shop": _shop}


def make(name):
    """Build the environment called `name`; an unknown name is a ValueError listing the valid ones."""
    if name not in ENVS:
        raise ValueError(f"unknown env {name!r}; valid envs: {', '.join(sorted(ENVS))}")
    return ENVS[name]()


def check_split(split):
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return split
