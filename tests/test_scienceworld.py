"""ScienceWorld behind the env protocol. Needs `pip install scienceworld` and Java (CI installs both)."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("scienceworld")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import envs  # noqa: E402
from envs.scienceworld import MAX_STEPS, canonical, split_task_ids, thought_for  # noqa: E402
from envs.expert import make_expert_policy  # noqa: E402
from explore import rollout  # noqa: E402


@pytest.fixture(scope="module")
def env():
    environment = envs.make("scienceworld:find-animal")
    yield environment
    environment.close()


def test_split_sizes_and_task_types():
    by_split = split_task_ids()
    assert {split: len(ids) for split, ids in by_split.items()} == \
        {"train": 1248, "test_seen": 171, "test_unseen": 211, "dev": 64}
    assert len(MAX_STEPS) == 24 and not any("inclined-plane" in t or "mendelian" in t for t in MAX_STEPS)
    for split, ids in by_split.items():
        assert len(set(ids)) == len(ids)
    assert not set(by_split["train"]) & set(by_split["dev"])  # dev: training variations train does not use


def test_load_reset_and_a_few_steps(env):
    task_id = env.task_ids("test_unseen")[0]
    assert task_id.startswith("find-animal-") and env.max_steps >= 15
    first = env.reset(task_id)
    assert first.startswith("Task Description:\nYour task is to find a(n) animal") and "This room is called" in first
    observation, reward, done = env.step("fly to the moon")
    assert observation.startswith("Invalid action: No known action") and 0.0 <= reward < 1.0 and not done
    turns = env.expert(task_id)
    assert all(t.startswith("Thought: ") and "\nAction: " in t for t in turns)
    env.reset(task_id)
    rewards = [env.step(turn.split("Action: ")[1])[1] for turn in turns[:3]]
    assert rewards == sorted(rewards) and all(0.0 <= r <= 1.0 for r in rewards)  # a running maximum


def test_templated_thoughts():
    assert thought_for("go to kitchen") == "I need to go to the kitchen."
    assert thought_for("move dove to red box") == "I move the dove to the red box."
    assert thought_for("wait1") == "I wait for the process to go on."


def test_unknown_task_type_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown scienceworld task type 'find-dragon'; valid types: boil"):
        envs.make("scienceworld:find-dragon")


@pytest.mark.slow
@pytest.mark.parametrize("split", envs.SPLITS)
def test_the_gold_paths_of_one_task_of_each_type_replay_as_the_gold_table_says(split):
    """The committed table holds for a sample: each type's first task of the split, replayed now, reaches the
    table's reward in the table's number of steps (before the table is built: full reward)."""
    from envs.scienceworld import gold_table
    expert_env = envs.make("scienceworld")
    first_of_type = {}
    for task_id in split_task_ids()[split]:  # every task, kept in train or not
        first_of_type.setdefault(task_id.rpartition("-")[0], task_id)
    records = rollout("scienceworld", [(t, 0) for t in first_of_type.values()], make_expert_policy(expert_env),
                      batch_size=4)
    table = gold_table()
    replayed = {r["task_id"]: (round(r["reward"], 2), r["steps"] if table else None) for r in records}
    assert replayed == {t: table[t] if table else (1.0, None) for t in first_of_type.values()}


def test_object_lists_are_sorted_so_a_task_replays_identically(env):
    assert canonical("Room:\n\tb cup\n\ta cup\nYou also see:\n\tz door\n\ty door") == \
        "Room:\n\ta cup\n\tb cup\nYou also see:\n\ty door\n\tz door"
    task_id = env.task_ids("train")[10]
    assert env.reset(task_id) == env.reset(task_id)


def test_the_gold_table_resumes_and_leaves_failing_gold_paths_out_of_train_only(tmp_path, monkeypatch):
    import envs.scienceworld as sw

    class FakeEnv:  # no JVM: replays are looked up, and each task may be replayed once only
        played = []
        def replay_gold(self, task_id):
            self.played.append(task_id)
            return {"boil-20": (0.78, 160), "boil-21": (1.0, 150), "find-animal-3": (1.0, 6)}[task_id]

    monkeypatch.setattr(sw, "split_task_ids", lambda: {"train": ["boil-21", "boil-20"],
                                                       "test_seen": ["find-animal-3", "boil-20"]})
    table = tmp_path / "gold.tsv"
    sw.replay_gold(["test_seen"], out=str(table), env=FakeEnv())
    assert table.read_text().splitlines() == ["task_id\treward\tsteps", "boil-20\t0.78\t160", "find-animal-3\t1.00\t6"]
    sw.replay_gold(["test_seen", "train"], out=str(table), env=FakeEnv())  # resumes: only boil-21 is new
    assert FakeEnv.played == ["find-animal-3", "boil-20", "boil-21"]
    assert table.read_text().splitlines() == ["task_id\treward\tsteps", "boil-20\t0.78\t160", "boil-21\t1.00\t150",
                                              "find-animal-3\t1.00\t6"]
    monkeypatch.setattr(sw, "GOLD_TABLE", str(table))
    sw.gold_table.cache_clear()
    monkeypatch.setattr(sw, "split_task_ids", lambda: {"train": ["boil-20", "boil-21", "boil-22"],
                                                       "test_seen": ["boil-20", "find-animal-3"]})
    env = sw.ScienceWorldEnv.__new__(sw.ScienceWorldEnv)  # no JVM: only the split lists are asked for
    env.task_types = tuple(sw.MAX_STEPS)
    try:
        assert env.task_ids("train") == ["boil-21", "boil-22"]  # a task missing from the table is kept
        assert env.task_ids("test_seen") == ["boil-20", "find-animal-3"]  # test tasks stay: the ceiling is < 100
    finally:
        sw.gold_table.cache_clear()
    with pytest.raises(ValueError, match="unknown split 'tests'"):
        sw.replay_gold(["tests"], out=str(table), env=FakeEnv())


def test_gold_replay_shards_split_the_tasks_and_merge_back(tmp_path, monkeypatch):
    import envs.scienceworld as sw

    class FakeEnv:  # no JVM
        def replay_gold(self, task_id):
            return (1.0, int(task_id.rsplit("-", 1)[1]))

    monkeypatch.setattr(sw, "split_task_ids", lambda: {"train": [f"boil-{v}" for v in range(5)]})
    base = tmp_path / "base.tsv"
    sw.write_table({"boil-1": (0.5, 9)}, str(base))  # done before: neither shard replays it
    shards = []
    for index in range(2):
        out = tmp_path / f"g{index}.tsv"
        out.write_text(base.read_text())
        rows = sw.replay_gold(["train"], out=str(out), env=FakeEnv(), shard=(index, 2))
        shards.append(out)
        assert set(rows) == {"boil-1"} | {f"boil-{v}" for v in range(index, 5, 2)}
    subprocess.run([sys.executable, "-m", "envs.scienceworld", "--out", str(base), "--merge", *map(str, shards)],
                   check=True, capture_output=True, cwd=ROOT)
    assert sw.read_table(str(base)) == {"boil-0": (1.0, 0), "boil-1": (0.5, 9), "boil-2": (1.0, 2),
                                        "boil-3": (1.0, 3), "boil-4": (1.0, 4)}
    bad_table = tmp_path / "bad.tsv"
    bad_table.write_text("task_id\treward\tsteps\nboil-9 1.0 3\n")  # spaces, not tabs
    done = subprocess.run([sys.executable, "-m", "envs.scienceworld", "--out", str(base), "--merge", str(bad_table)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode != 0 and done.stderr.strip() == f"{bad_table}:2: expected task_id, reward, steps separated by tabs"
    assert "boil-9" not in base.read_text()
    for bad in ["2/2", "x"]:
        with pytest.raises(ValueError, match="--shard"):
            sw.parse_shard(bad)
