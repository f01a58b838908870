"""The shop env: determinism, expert, reward formula, action handling, splits."""
import re

import pytest

import envs
from envs.shop import CATEGORIES, MAX_RESULTS, Product, Task, catalog, purchase_reward, search, stable_hash, tasks

ENV = envs.make("shop")


def play(env, task_id, actions):
    observations = [env.reset(task_id)]
    reward, done = 0.0, False
    for action in actions:
        observation, reward, done = env.step(action)
        observations.append(observation)
    return observations, reward, done


def expert_actions(env, task_id):
    return [turn.split("Action: ")[1] for turn in env.expert(task_id)]


def test_unknown_env_and_split_list_the_valid_ones():
    assert {"shop", "doors"} <= set(envs.available())  # found in envs/, not listed by hand
    with pytest.raises(ValueError, match="valid envs: " + ", ".join(envs.available())):
        envs.make("webshop")
    with pytest.raises(ValueError, match="train, test_seen, test_unseen, dev"):
        ENV.task_ids("valid")


@pytest.mark.parametrize("split", envs.SPLITS)
def test_expert_gets_full_reward_on_every_task(split):
    for task_id in ENV.task_ids(split):
        turns = ENV.expert(task_id)
        assert all(t.startswith("Thought: ") and "\nAction: " in t for t in turns)
        _, reward, done = play(ENV, task_id, expert_actions(ENV, task_id))
        assert done and reward == 1.0, task_id


def test_deterministic_across_instances():
    other = envs.make("shop")
    for task_id in ["train-0", "test_seen-5", "test_unseen-9"]:
        actions = expert_actions(ENV, task_id)[:2] + ["click[next >]", "click[nonsense]"]
        assert play(ENV, task_id, actions) == play(other, task_id, actions)


def test_split_sizes_and_disjoint_tasks():
    by_split = tasks()
    assert {s: len(t) for s, t in by_split.items()} == {"train": 1000, "test_seen": 200, "test_unseen": 200,
                                                             "dev": 200}
    key = lambda t: (t.category, tuple(sorted(t.attributes)), t.options, t.cap)
    train_keys = {key(t) for t in by_split["train"]}
    other_keys = [key(t) for split in ("test_seen", "test_unseen", "dev") for t in by_split[split]]
    assert len(set(other_keys)) == len(other_keys) and not train_keys & set(other_keys)
    # unseen: the (category, attribute pair) never occurs in train, but every word does
    train_pairs = {(t.category, frozenset(t.attributes)) for t in by_split["train"]}
    train_words = {w for t in by_split["train"] for w in t.instruction.split()}
    for task in by_split["test_unseen"]:
        assert (task.category, frozenset(task.attributes)) not in train_pairs
        assert set(" ".join(task.attributes).split()) <= train_words
    for task in by_split["test_seen"] + by_split["dev"]:
        assert (task.category, frozenset(task.attributes)) in train_pairs


def test_reward_formula_partial_credit():
    task = Task("t", "backpack", ("waterproof", "leather"), (("color", "grey"),), 50.0, "", "", "")
    right = Product("P1", "backpack", ("anti theft", "leather", "waterproof"), 40.0, "")
    assert purchase_reward(task, right, {"color": "grey"}) == 1.0
    # no option chosen: 2 attributes + price of 4 -> 3/4
    assert purchase_reward(task, right, {}) == pytest.approx(3 / 4)
    # one attribute missing, over the cap, wrong color: 1/4
    wrong = Product("P2", "backpack", ("anti theft", "leather", "usb charging"), 60.0, "")
    assert purchase_reward(task, wrong, {"color": "red"}) == pytest.approx(1 / 4)
    # another category: everything else right, times r_type 0.1
    other = Product("P3", "running shoes", ("waterproof", "leather", "wide fit"), 30.0, "")
    assert purchase_reward(task, other, {"color": "grey"}) == pytest.approx(0.1)
    two_options = Task("t", "t-shirt", ("cotton",), (("size", "small"), ("color", "red")), 20.0, "", "", "")
    shirt = Product("P4", "t-shirt", ("cotton", "organic", "v neck"), 10.0, "")
    assert purchase_reward(two_options, shirt, {"size": "large", "color": "red"}) == pytest.approx(3 / 4)


def test_buy_without_options_in_the_env():
    task_id = "train-0"
    actions = expert_actions(ENV, task_id)
    _, reward, done = play(ENV, task_id, actions[:2] + ["click[buy now]"])
    task = ENV.tasks[task_id]
    assert done and reward == pytest.approx((len(task.attributes) + 1) / (len(task.attributes) + len(task.options) + 1))


def test_invalid_actions_are_observations_not_exceptions():
    ENV.reset("train-1")
    for action in ["", "buy it", "click[buy now]", "click[item 9]", "search[]", "click[next >]"]:
        observation, reward, done = ENV.step(action)
        if action == "click[next >]":
            assert observation.startswith(envs.INVALID)  # no results page yet
        assert observation.startswith(envs.INVALID) and reward == 0 and not done, action
    ENV.step("search[cotton t-shirt]")
    observation, _, _ = ENV.step("search[again]")
    assert observation.startswith(envs.INVALID) and "back to search" in observation


def test_search_ranks_matching_titles_first():
    results = search("waterproof leather backpack")
    top = catalog()[results[0]]
    assert top.category == "backpack" and {"waterproof", "leather"} <= set(top.attributes)
    assert len(results) == len(set(results)) <= 25


def test_search_ranks_as_scoring_and_sorting_every_product_would():
    def every_product_scored(query):  # the plain rule: score all, sort all (search scores only what can rank)
        words = set(re.findall(r"[a-z0-9\-]+", query.lower()))
        scored = [(len(words & set(p.title.split())) + stable_hash(query, p.id) % 1000 / 1000, p.id)
                  for p in catalog().values() if words & set(p.title.split())]
        return [pid for _, pid in sorted(scored, reverse=True)[:MAX_RESULTS]]
    queries = [task.query for split in tasks().values() for task in split][:300]
    queries += ["", "???", "waterproof", "Leather  BACKPACK under 30", "x-large red t-shirt"]
    for query in queries:
        assert search(query) == every_product_scored(query), query
    assert search("waterproof", products=catalog()) == every_product_scored("waterproof")


def test_navigation_pages():
    ENV.reset("train-2")
    page1, _, _ = ENV.step("search[lightweight]")
    page2, _, _ = ENV.step("click[next >]")
    assert page1.startswith("Page 1 of") and page2.startswith("Page 2 of") and page1 != page2
    back, _, _ = ENV.step("click[< prev]")
    assert back == page1
    assert ENV.step("click[back to search]")[0].endswith("[search]")


def test_every_product_page_offers_its_categorys_option_values():
    # the docstring's promise, checked through the env: open a product of each category, click every value
    for category, (_, _, options, _) in CATEGORIES.items():
        task_id = next(t.id for t in tasks()["train"] if t.category == category)
        ENV.reset(task_id)
        ENV.step(f"search[{category}]")
        page, _, _ = ENV.step("click[item 1]")
        for values in options.values():
            for value in values:
                assert f"[{value}]" in page
                observation, _, done = ENV.step(f"click[{value}]")
                assert not observation.startswith(envs.INVALID) and not done


def test_the_attribute_cue_separates_results_by_a_word_alone():
    """shop:cue=attribute: the same splits' sizes and the expert at 1.0; above the right result every result is
    of the category, carries the searched pair and is within the cap, and lacks the third attribute the
    instruction names, which the right result's title carries."""
    from envs.shop import CATEGORIES, RESULTS_PER_PAGE, SPLIT_SIZES, catalog, search
    env, products = envs.make("shop:cue=attribute"), catalog()
    item_1_wrong = 0
    for split, size in SPLIT_SIZES.items():
        ids = env.task_ids(split)
        assert len(ids) == size
        for task_id in ids:
            task = env.tasks[task_id]
            pair, third = task.attributes[:2], task.attributes[2]
            assert task.query == " ".join(pair) + " " + task.category and third in CATEGORIES[task.category][1]
            assert f"{' '.join(task.attributes)} {task.category}" in task.instruction
            first_page = search(task.query)[:RESULTS_PER_PAGE]
            rank = first_page.index(task.target)
            assert third in products[task.target].title
            for pid in first_page:  # the price separates none of them
                assert products[pid].price <= task.cap and set(pair) <= set(products[pid].attributes)
            for pid in first_page[:rank]:
                assert products[pid].category == task.category and third not in products[pid].attributes
            item_1_wrong += rank > 0
    assert 0 < item_1_wrong < sum(SPLIT_SIZES.values())
    for task_id in env.task_ids("dev")[:50] + env.task_ids("test_unseen")[:50]:
        env.reset(task_id)
        for turn in env.expert(task_id):
            observation, reward, done = env.step(turn.split("Action: ")[1])
        assert done and reward == 1.0
    train_pairs = {(t.category, frozenset(t.attributes[:2])) for t in (env.tasks[i] for i in env.task_ids("train"))}
    assert not any((env.tasks[i].category, frozenset(env.tasks[i].attributes[:2])) in train_pairs
                   for i in env.task_ids("test_unseen"))  # the searched pair is held out, as in the price shop
    with pytest.raises(ValueError, match=re.escape("cue=price|attribute")):
        envs.make("shop:cue=colour")
