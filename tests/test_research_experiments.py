"""research/experiments.py: what a set of samples is worth to Best-of-N and to RFT."""
from research.experiments import best_of_n, distinct_successes


def test_best_of_n_takes_each_tasks_best_sample():
    records = [{"task_id": "a", "reward": r} for r in (0.2, 1.0, 0.5)] + [{"task_id": "b", "reward": r} for r in (0.0, 0.4)]
    assert best_of_n(records) == {"tasks": 2, "avg_reward": 70.0, "success_rate": 50.0}


def test_distinct_successes_keep_one_per_task_and_action_sequence():
    def rec(task_id, reward, actions):
        return {"task_id": task_id, "reward": reward,
                "messages": [{"role": "assistant", "content": f"Thought: {i}\nAction: {a}"} for i, a in enumerate(actions)]}
    records = [rec("a", 1.0, ["x", "y"]), rec("a", 1.0, ["x", "y"]), rec("a", 1.0, ["x", "z"]), rec("a", 0.5, ["w"]),
               rec("b", 1.0, ["x", "y"])]
    kept = distinct_successes(records)
    assert [(r["task_id"], r["messages"][-1]["content"][-1]) for r in kept] == [("a", "y"), ("a", "z"), ("b", "y")]
