"""Environments behind one small protocol.

An environment is a module of this folder (or any module on the Python path) with a function
`make(options) -> env`; `make("NAME:OPTIONS")` finds the module NAME and calls it (docs/environments.md
shows a new one in one file). Every environment it returns has:

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


def available():
    """The envs found in this folder: every module here with a `make(options)` function, by file name."""
    import importlib
    import pkgutil
    names = []
    for module in pkgutil.iter_modules(__path__):
        if importlib.import_module(f"envs.{module.name}").__dict__.get("make") is not None:
            names.append(module.name)
    return sorted(names)


def find(name):
    """The module that makes the env called `name` ("NAME" or "NAME:OPTIONS"): envs/NAME.py, else a module NAME
    on the Python path (a fork's own file, e.g. `my_envs.maze`), either with a `make(options)` function. An
    unknown name is a ValueError listing the valid ones; nothing is built, so a check costs no Java start."""
    import importlib
    import importlib.util
    base = name.partition(":")[0]
    if base and all(part.isidentifier() for part in base.split(".")):
        for candidate in (f"envs.{base}", base):
            try:
                found = importlib.util.find_spec(candidate)
            except ModuleNotFoundError:  # a dotted name whose package is missing
                found = None
            if found is not None and callable(getattr(importlib.import_module(candidate), "make", None)):
                return importlib.import_module(candidate)
    raise ValueError(f"unknown env {name!r}; valid envs: {', '.join(available())}, or a module on the Python path "
                     f"with make(options) (docs/environments.md)")


def make(name):
    """Build the environment called `name` ("NAME" or "NAME:OPTIONS", e.g. "scienceworld:find-animal,find-plant"
    for a subset of task types): its module's make(options), with the text after the colon ('' without one)."""
    return find(name).make(name.partition(":")[2])


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
