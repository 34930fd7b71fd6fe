"""bench/reply_budget.py: the cut-off rule, and an end-to-end run on the tiny preset."""

from __future__ import annotations

from tests.benches import load_bench, run_bench


def test_a_reply_ends_inside_a_budget_only_with_room_for_its_end_token():
    share = load_bench("reply_budget").cut_off_share
    # 63 tokens + the end-of-turn token fit in 64; 64 tokens do not.
    assert share([63], 64) == 0.0 and share([64], 64) == 1.0
    assert share([10, 70, 100, 30], 64) == 0.5
    assert share([], 64) == 0.0


def test_reply_budget_bench_prints_a_row_per_closing_line_with_shares_falling_with_the_budget():
    out = run_bench("reply_budget", "--config", "tiny", "--prompts", "4", "--budgets", "2", "6",
                    "--instruction", "Reply in one sentence.")
    table = [line for line in out.stdout.splitlines() if line.startswith("|")]
    assert "cut at 2" in table[0] and "cut at 6" in table[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert [r[0] for r in rows] == ["Stay in character, keep replies short, and keep the user engaged.",
                                    "Reply in one sentence."]
    for r in rows:
        at2, at6 = float(r[2]), float(r[3])
        assert 0.0 <= at6 <= at2 <= 1.0
