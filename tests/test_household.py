"""The household env (TextWorld Commonsense) behind the env protocol. Needs textworld-express and Java
(CI installs both)."""
import pytest

pytest.importorskip("textworld_express")

import envs  # noqa: E402
from envs.household import MAX_STEPS, thought_for  # noqa: E402
from envs.expert import make_expert_policy  # noqa: E402
from explore import rollout  # noqa: E402


@pytest.fixture(scope="module")
def env():
    return envs.make("household")


def test_splits_are_disjoint_and_test_unseen_holds_unseen_objects(env):
    ids = {split: env.task_ids(split) for split in envs.SPLITS}
    assert {split: len(found) for split, found in ids.items()} == {"train": 720, "test_seen": 140, "test_unseen": 140, "dev": 140}
    assert len({t for found in ids.values() for t in found}) == 1140  # no task in two splits
    objects = {}
    for split in ("train", "test_unseen"):
        objects[split] = {turn.split("Action: take ")[1] for t in ids[split][:40] for turn in env.expert(t) if "Action: take " in turn}
    assert objects["train"] and objects["test_unseen"] and not objects["train"] & objects["test_unseen"]


def test_a_task_replays_identically_and_a_bad_action_costs_a_step(env):
    task_id = env.task_ids("test_seen")[0]
    first = env.reset(task_id)
    assert first.startswith("Your task is to pick up objects") and first == env.reset(task_id)
    observation, reward, done = env.step("fly to the moon")
    assert observation.startswith("Invalid action: Unknown action") and reward == 0.0 and not done
    with pytest.raises(KeyError, match="unknown household task id 'kitchen-3'"):
        env.reset("kitchen-3")


def test_the_expert_succeeds_on_a_sample_of_every_split(env):
    assert thought_for("put red apple in fridge") == "The red apple belongs in the fridge."
    episodes = [(t, 0) for split in envs.SPLITS for t in env.task_ids(split)[::20]]
    records = rollout("household", episodes, make_expert_policy(env), batch_size=8)
    assert len(records) == 57 and all(r["reward"] == 1.0 and r["stop"] == "done" for r in records)
    assert all(r["invalid_actions"] == 0 and r["steps"] == len(env.expert(r["task_id"])) for r in records)


def test_household_valid_lists_each_observations_valid_actions_and_the_expert_picks_from_them():
    records = rollout("household:valid", [(t, 0) for t in envs.make("household").task_ids("dev")[:12]],
                      make_expert_policy(envs.make("household:valid")), batch_size=4)
    for record in records:
        assert record["reward"] == 1.0 and record["invalid_actions"] == 0
        turns = record["messages"][1:]  # observation, reply, observation, reply, ...
        for observation, reply in zip(turns[0::2], turns[1::2]):
            listed = observation["content"].split("\nValid actions: ")[1].split(", ")
            assert listed == sorted(listed) and reply["content"].split("Action: ")[1] in listed
    with pytest.raises(ValueError, match="unknown household option 'rooms=2'; valid: valid"):
        envs.make("household:rooms=2")


def test_an_agent_that_never_acts_validly_stops_at_the_step_limit(env):
    task_id = env.task_ids("test_seen")[0]
    policy = lambda conversations, task_ids: [("Thought: up\nAction: fly to the moon", True)] * len(conversations)  # noqa: E731
    [record] = rollout("household", [(task_id, 0)], policy, max_invalid=0)
    assert record["stop"] == "max_steps" and record["steps"] == MAX_STEPS and record["invalid_actions"] == MAX_STEPS
    assert record["reward"] == 0.0

