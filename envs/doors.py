"""A one-step toy env whose right action is written in the prompt: open the door the instruction names.

    python explore.py --env doors --split train --expert --out runs/doors/expert.jsonl

The first observation is "Instruction: open the red door. Doors: blue, red." and the one action is
`open[COLOUR]`; the reward is 1 for the named door, 0 for the other, and the episode ends there. Nothing
but reading the instruction solves it, so a policy that ignores it (trained on random doors) scores
about 0.5, and a learning algorithm has something to learn that a test can check in seconds
(tests/test_online_rl.py). Task ids are "SPLIT-N"; every split is drawn from the same colours.
"""
import random

from envs import INVALID, check_split

COLOURS = ("red", "blue")
SPLIT_SIZES = {"train": 200, "dev": 50, "test_seen": 50, "test_unseen": 50}
SYSTEM_PROMPT = "Open the door the instruction names. Reply 'Thought: ...' then 'Action: open[COLOUR]'."


def task(task_id):
    """(the named colour, the doors in the order listed) of a task, drawn from its id."""
    rng = random.Random(task_id)
    doors = list(COLOURS)
    rng.shuffle(doors)
    return rng.choice(COLOURS), doors


class DoorsEnv:
    name = "doors"
    system_prompt = SYSTEM_PROMPT
    max_steps = 1

    def task_ids(self, split):
        check_split(split)  # an unknown split is one line naming the valid ones, as in every env
        return [f"{split}-{i}" for i in range(SPLIT_SIZES[split])]

    def reset(self, task_id):
        self.target, doors = task(task_id)
        return f"Instruction: open the {self.target} door. Doors: {', '.join(doors)}."

    def step(self, action):
        if action not in [f"open[{colour}]" for colour in COLOURS]:
            return f"{INVALID}: {action!r}; the actions are " + ", ".join(f"open[{c}]" for c in COLOURS), 0.0, False
        return "The door opens.", float(action == f"open[{self.target}]"), True

    def expert(self, task_id):
        target, _ = task(task_id)
        return [f"Thought: I open the door it names.\nAction: open[{target}]"]


def make(options):
    """`--env doors`: no options."""
    if options:
        raise ValueError(f"the doors env has no options, got {options!r}")
    return DoorsEnv()
