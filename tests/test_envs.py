"""A fork adds an env by adding a file: a module with make(options), found without editing envs/."""
import json
import os
import subprocess
import sys

import pytest

import envs
from tests.conftest import ROOT

MAZE = '''"""A toy env in a fork's own file: walk to the room the instruction names."""
from envs import INVALID, check_split

ROOMS = ("hall", "kitchen", "attic")


class MazeEnv:
    name = "maze"
    system_prompt = "Go to the room the instruction names. Reply 'Thought: ...' then 'Action: go[ROOM]'."
    max_steps = 2

    def task_ids(self, split):
        check_split(split)
        return [f"{split}-{i}" for i in range(6)]

    def reset(self, task_id):
        self.target = ROOMS[int(task_id.split("-")[1]) % len(ROOMS)]
        return f"Instruction: go to the {self.target}. Rooms: {', '.join(ROOMS)}."

    def step(self, action):
        if action not in [f"go[{room}]" for room in ROOMS]:
            return f"{INVALID}: {action!r}", 0.0, False
        return "You are there.", float(action == f"go[{self.target}]"), True

    def expert(self, task_id):
        self.reset(task_id)
        return [f"Thought: I go where it says.\\nAction: go[{self.target}]"]


def make(options):
    if options:
        raise ValueError(f"the maze env has no options, got {options!r}")
    return MazeEnv()
'''


@pytest.fixture
def fork(tmp_path, monkeypatch):
    """A fork's package `my_envs` with maze.py, on the Python path of this process and of the scripts."""
    package = tmp_path / "my_envs"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "maze.py").write_text(MAZE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}


def test_an_env_in_a_new_file_runs_with_explore(fork, tmp_path):
    env = envs.make("my_envs.maze")
    assert env.reset("train-1") == "Instruction: go to the kitchen. Rooms: hall, kitchen, attic."
    with pytest.raises(ValueError, match="the maze env has no options, got 'x'"):
        envs.make("my_envs.maze:x")
    out = tmp_path / "expert.jsonl"
    done = subprocess.run([sys.executable, "explore.py", "--env", "my_envs.maze", "--split", "train", "--expert",
                           "--out", str(out)], cwd=ROOT, env=fork, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["reward"] for r in records] == [1.0] * 6  # the expert walks to the named room on every task
    assert records[2]["messages"][-1]["content"].endswith("Action: go[attic]")


def test_an_unknown_env_stops_the_loop_before_it_writes(tmp_path):
    done = subprocess.run([sys.executable, "loop.py", "--env", "shopp", "--run", str(tmp_path / "r")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("error: unknown env 'shopp'; valid envs: ")
    assert not (tmp_path / "r").exists()
    for name in ("", "json", "no.such.module"):  # an empty name, a module without make, a missing package
        with pytest.raises(ValueError, match="unknown env"):
            envs.find(name or ":scan")


def test_every_env_refuses_an_unknown_split_in_one_line():
    for name in envs.available():
        if name in ("scienceworld", "household"):  # built only with their packages (tests/test_scienceworld.py)
            continue
        with pytest.raises(ValueError, match="unknown split 'val'; valid splits: train, test_seen, test_unseen, dev"):
            envs.make(name).task_ids("val")
