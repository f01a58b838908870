"""research/arithmetic.py's reading of an episode, and the spreads research/pages.py reports, by hand."""
import itertools

import pytest

from research.arithmetic import first_click_follows_price
from research.pages import relabelled_share, spreads


def episode(cap, prices, clicked):
    page = "Observation: Page 1 of 5. [back to search] [next >]\n" + "\n".join(
        f"[item {i}] some title ${p:.2f}" for i, p in enumerate(prices, 1))
    turns = [{"role": "system", "content": "s"},
             {"role": "user", "content": f"Instruction: i need a red shirt, and price lower than {cap:.2f} dollars\n[search]"},
             {"role": "assistant", "content": "Thought: t\nAction: search[red shirt]"},
             {"role": "user", "content": page}]
    if clicked:
        turns.append({"role": "assistant", "content": f"Thought: item {clicked} costs $1.\nAction: click[item {clicked}]"})
    return {"messages": turns}


def test_the_first_click_follows_the_price_only_where_item_1_is_over_the_cap():
    assert first_click_follows_price(episode(50, [61.93, 42.10, 30.00], 2)) is True    # within the cap
    assert first_click_follows_price(episode(50, [61.93, 52.00, 30.00], 2)) is False   # item 2 over it too
    assert first_click_follows_price(episode(50, [61.93, 42.10], 1)) is False          # the habit
    assert first_click_follows_price(episode(50, [61.93, 42.10], None)) is False       # never opened a result
    assert first_click_follows_price(episode(50, [49.99, 42.10], 2)) is None           # item 1 is within the cap
    assert first_click_follows_price(episode(50, [50.00, 42.10], 1)) is None           # at the cap is within it


def test_the_spreads_over_seeds_and_over_arithmetic():
    rows = [{"perturbation": p, "seed": s, "dev_reward": r}
            for p, s, r in [("a", 0, 80.0), ("a", 1, 84.0), ("b", 0, 70.0), ("b", 1, 76.0)]]
    over_seeds, over_arithmetic = spreads(rows)
    # within a: 80, 84 -> population std 2; within b: 70, 76 -> 3; mean 2.5
    # within seed 0: 80, 70 -> 5; within seed 1: 84, 76 -> 4; mean 4.5
    assert over_seeds == pytest.approx(2.5) and over_arithmetic == pytest.approx(4.5)


def test_the_relabelling_share_matches_every_deal_counted():
    """The sampled share against all 4! deals of four values to a 2 x 2 grid, counted one by one."""
    rows = [{"perturbation": p, "seed": s, "dev_reward": r}
            for p, s, r in [("a", 0, 80.0), ("a", 1, 84.0), ("b", 0, 70.0), ("b", 1, 76.0)]]
    values = [r["dev_reward"] for r in rows]
    for gap in (2.0, 0.0, -3.0):
        hits = 0
        for deal in itertools.permutations(values):
            (a0, a1, b0, b1) = deal  # in the rows' order: (a, 0), (a, 1), (b, 0), (b, 1)
            over_seeds = (abs(a0 - a1) + abs(b0 - b1)) / 4     # a pair's population std: half its gap
            over_arithmetic = (abs(a0 - b0) + abs(a1 - b1)) / 4
            hits += over_arithmetic - over_seeds >= gap - 1e-9
        assert relabelled_share(rows, gap) == pytest.approx(hits / 24, abs=0.02)
