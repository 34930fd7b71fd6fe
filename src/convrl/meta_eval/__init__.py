"""Meta-evaluation: how well each reward head, the composite and each judge agree with human ratings.

``convrl meta-eval ../shared/data`` measures every rated set at once
(:mod:`.suite`); ``convrl meta-eval FILE.jsonl`` one file of rated replies
(format in :mod:`convrl.rewards.human_data`). Statistics in :mod:`.stats`,
scoring in :mod:`.scoring`, the commands in :mod:`.cli` (an entry point: import it from there).
"""

from convrl.meta_eval.scoring import build_scorer, score_items
from convrl.meta_eval.stats import (bootstrap_weights, correlate, format_table, meta_evaluate, pairwise,
                                    weighted_midranks, weighted_pearson)

__all__ = ["bootstrap_weights", "build_scorer", "correlate", "format_table", "meta_evaluate", "pairwise",
           "score_items", "weighted_midranks", "weighted_pearson"]
