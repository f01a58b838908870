"""Environments behind one small protocol.

Every environment returned by `make(name)` has:

    env.name                      the name it was made with
    env.max_steps                 actions allowed per episode (invalid ones count too); may change at reset
    env.system_prompt             the instructions the agent gets as its system message
    env.task_ids(split)           task ids of a split: "train", "test_seen", "test_unseen" or "dev"
                                  (dev: for choosing settings, drawn like test_seen)
    env.reset(task_id) -> str     start a task; returns the first observation
    env.step(action) -> (observation, reward, done)   reward: the episode's reward so far, in [0, 1]
    env.expert(task_id) -> list   the expert's ReAct turns "Thought: ...\\nAction: ..."
    env.max_observation_chars     optional: the default cut for long observations (explore.py flag)
    env.max_invalid               optional: end an episode after this many invalid actions in a row

Environments are deterministic for a task id. An action the env cannot parse or apply never raises:
it returns an observation starting with INVALID (so the agent reads why) and still costs a step.
"""

import re

SPLITS = ("train", "test_seen", "test_unseen", "dev")
INVALID = "Invalid action"


def parse_action(reply):
    """The text after the last 'Action:' of a reply (up to the end of its line), or None if there is none."""
    found = re.findall(r"Action:[ \t]*(.*)", reply)
    return found[-1].strip() if found and found[-1].strip() else None


def _shop(options):
    """Options, comma-separated: `scan` (the expert's thought names why each result above its choice is
    passed over), `instruction` (every page repeats the instruction, as WebShop's pages do), `train=N` (N
    train tasks instead of 1000; the extra ones are drawn after the other splits, which stay the same)."""
    from envs.shop import SPLIT_SIZES, ShopEnv
    settings = {"thoughts": "short", "instruction_on_every_page": False, "train_size": SPLIT_SIZES["train"]}
    for option in filter(None, options.split(",")):
        key, _, value = option.partition("=")
        if option == "scan":
            settings["thoughts"] = "scan"
        elif option == "instruction":
            settings["instruction_on_every_page"] = True
        elif key == "train" and value.isdigit() and int(value) >= SPLIT_SIZES["train"]:
            settings["train_size"] = int(value)
        else:
            raise ValueError(f"unknown shop option {option!r}; valid: scan, instruction, train=N (N >= 1000)")
    return ShopEnv(**settings)


def _scienceworld(options):
    from envs.scienceworld import ScienceWorldEnv
    return ScienceWorldEnv(task_types=options.split(",") if options else None)


def _household(options):
    """Option `valid`: every observation ends with the env's list of valid actions."""
    from envs.household import HouseholdEnv
    if options not in ("", "valid"):
        raise ValueError(f"unknown household option {options!r}; valid: valid")
    return HouseholdEnv(list_valid_actions=options == "valid")


def _doors(options):
    from envs.doors import DoorsEnv
    if options:
        raise ValueError(f"the doors env has no options, got {options!r}")
    return DoorsEnv()


ENVS = {"shop": _shop, "scienceworld": _scienceworld, "household": _household, "doors": _doors}


def make(name):
    """Build the environment called `name` ("NAME" or "NAME:OPTIONS", e.g. "scienceworld:find-animal,find-plant"
    for a subset of task types); an unknown name is a ValueError listing the valid ones."""
    base, _, options = name.partition(":")
    if base not in ENVS:
        raise ValueError(f"unknown env {name!r}; valid envs: {', '.join(sorted(ENVS))}")
    return ENVS[base](options)


def check_split(split):
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return split


def templated_thought(action, templates, otherwise):
    """An expert thought written from its action: the first (regex, template) whose regex matches the
    whole action, filled with its groups; else `otherwise`. (No model wrote these thoughts.)"""
    for pattern, template in templates:
        match = re.fullmatch(pattern, action)
        if match:
            return template.format(*match.groups())
    return otherwise
