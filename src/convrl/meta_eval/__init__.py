"""Meta-evaluation: how well each reward head, the composite and each judge agree with human ratings.

``convrl meta-eval ../shared/data`` measures every rated set at once
(:mod:`.suite`); ``convrl meta-eval FILE.jsonl`` one file of rated replies
(format in :mod:`convrl.rewards.human_data`). Statistics in :mod:`.stats`,
scoring in :mod:`.scoring`, the commands in :mod:`.cli`.
"""

from convrl.meta_eval.cli import add_commands, cmd_meta_eval, cmd_meta_eval_data, main
from convrl.meta_eval.scoring import build_scorer, score_items
from convrl.meta_eval.stats import (bootstrap_weights, correlate, format_table, meta_evaluate, pairwise,
                                    weighted_midranks, weighted_pearson)

__all__ = ["add_commands", "bootstrap_weights", "build_scorer", "cmd_meta_eval", "cmd_meta_eval_data", "correlate",
           "format_table", "main", "meta_evaluate", "pairwise", "score_items", "weighted_midranks",
           "weighted_pearson"]
