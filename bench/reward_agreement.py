"""Agreement of the reward heads and judges with people on every rated set in ../shared/data (issue 17).

Trains (or loads) what the research preset trains -- the cross-encoder heads, the dialogue-level judge,
the ToxiChat safety judge -- then runs the meta-eval suite with the untrained heads beside the learned
ones, and prints the README table. Research data only (see ../shared/data/README.md)::

    .venv/bin/python bench/reward_agreement.py --out /tmp/agree                      # train + measure
    .venv/bin/python bench/reward_agreement.py --cross /tmp/agree/cross --dialogue /tmp/agree/dialogue
    .venv/bin/python bench/reward_agreement.py --no-learned --out /tmp/agree0        # untrained heads only
    .venv/bin/python bench/reward_agreement.py --learned relevance,personality,engagement,quality --calibrate

``--learned`` trains the frozen-encoder heads of ``rewards.learned_heads`` (seconds to minutes) instead of the
cross-encoder; ``--calibrate`` fits composite weights on training-side ratings (``rewards.calibrate``) and adds the
``composite_calibrated`` column. Everything trains on training sides only (DailyDialog train, PersonaChat valid,
ConvAI2 / user-satisfaction dialogues outside ``held_out(id, 0.3, 13)``, ToxiChat train).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--out", default="/tmp/reward_agreement")
    p.add_argument("--cross", default="", help="a trained cross-encoder folder (else train one)")
    p.add_argument("--dialogue", default="", help="a trained dialogue judge folder (else train one)")
    p.add_argument("--no-learned", action="store_true", help="untrained heads only (no cross-encoder)")
    p.add_argument("--no-dialogue", action="store_true", help="no dialogue-level judge")
    p.add_argument("--learned", default="", help="comma-separated frozen-encoder heads to train (rewards.learned_heads)")
    p.add_argument("--learned-max-pairs", type=int, default=6000)
    p.add_argument("--calibrate", action="store_true", help="fit composite weights on training-side ratings")
    p.add_argument("--cross-steps", type=int, default=150)
    p.add_argument("--cross-examples", type=int, default=6000)
    p.add_argument("--dialogues-per-source", type=int, default=150)
    p.add_argument("--reaction", choices=("tfidf", "encoder"), default="tfidf",
                   help="the dialogue judge's reaction model (rewards.reaction_model)")
    p.add_argument("--reaction-epochs", type=float, default=2.0, help="rewards.reaction_epochs (research: 2)")
    p.add_argument("--no-fluency", action="store_true")
    p.add_argument("--max-dialogues", type=int, default=300, help="held-out dialogues per dialogue set")
    p.add_argument("--max-dialogue-items", type=int, default=0, help="and at most this many rated turns (0 = all)")
    p.add_argument("--turns-per-dialogue", type=int, default=0, help="rated turns per dialogue (0 = every one)")
    p.add_argument("--max-pairs", type=int, default=200)
    p.add_argument("--n-bootstrap", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=13)
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(a.threads)
    from convrl import models
    from convrl.eval.judges import JudgePanel
    from convrl.meta_eval.suite import SuiteJudges, SuiteLimits, run_suite, summary_markdown
    from convrl.rewards.dialogue import DialogueJudge, rated_dialogues, train_dialogue_judge
    from convrl.rewards.encoder import load_encoder
    from convrl.rewards.heads import FluencyScorer, RewardScorer
    from convrl.rewards.judgement import train_human_judgement
    from convrl.rewards.safety import pairwise_accuracy, train_safety_judge

    data, out = Path(a.data), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0, timings = time.time(), {}
    enc_dir = models.resolve_encoder("all-minilm-l6-v2")
    encoder = load_encoder(enc_dir, precision="auto")
    rc = SimpleNamespace(cross_heads=["quality", "personality", "engagement", "relevance"],
                         cross_max_examples=a.cross_examples, cross_steps=a.cross_steps, cross_max_length=96,
                         engagement_data=[str(data / "convai2_human_eval"), str(data / "user_satisfaction")],
                         relevance_data=str(data / "dailydialog/convlab3_unified/data.zip"),
                         personality_data=str(data / "personachat"), quality_data=str(data / "toxichat"),
                         dialogue_data=[], safety_data="", calibrate=False,
                         learned_heads=[h for h in a.learned.split(",") if h], learned_max_pairs=a.learned_max_pairs,
                         learned_epochs=8)
    learned = {}
    if rc.learned_heads:
        from convrl.rewards.training import train_configured_heads

        learned, m = train_configured_heads(rc, encoder, None, seed=a.seed)
        for h, head in learned.items():
            head.save(out / "learned" / h)
        timings["learned_train_s"] = time.time() - t0
        print(json.dumps(m), flush=True)
    elif not a.no_learned:
        if a.cross:
            from convrl.rewards.cross_encoder import CrossEncoderHeads

            learned = CrossEncoderHeads.load(a.cross).as_heads()
        else:
            _, m, learned = train_human_judgement(rc, encoder, enc_dir, out, seed=a.seed)
            timings["cross_train_s"] = time.time() - t0
            print(json.dumps(m), flush=True)
    t1 = time.time()
    dialogue = None
    if a.dialogue:
        dialogue = DialogueJudge.load(a.dialogue)
    elif not a.no_dialogue:
        from convrl.rewards.reaction_encoder import reaction_fitter

        fit, folds = reaction_fitter(a.reaction, enc_dir, a.reaction_epochs, a.seed)  # as the reward stage fits it
        dialogue, m = train_dialogue_judge(encoder, rated_dialogues(
            [str(data / "convai2_human_eval"), str(data / "user_satisfaction")], a.dialogues_per_source), seed=a.seed,
            reaction_fit=fit, reaction_folds=folds)
        dialogue.save(out / "dialogue")
        print(json.dumps(m), flush=True)
    timings["dialogue_train_s"] = time.time() - t1
    t1 = time.time()
    safety, sm = train_safety_judge(data / "toxichat")
    sm.update({f"hh_rlhf_{k}": v for k, v in pairwise_accuracy(safety.score, data / "hh_rlhf").items()})
    safety.metrics = sm
    safety.save(out / "safety")
    timings["safety_train_s"] = time.time() - t1
    print(json.dumps(sm), flush=True)
    fluency = None if a.no_fluency else FluencyScorer(models.resolve_policy("smollm2-135m-instruct"))
    scorer = RewardScorer(encoder, None, fluency, learned=learned)
    calibrated = {}
    if a.calibrate:
        from convrl.rewards.judgement import calibrate, calibration_items

        calibrated, cm = calibrate(scorer, calibration_items(rc, seed=a.seed))
        print(json.dumps(cm), flush=True)
    t1 = time.time()
    result = run_suite(data, scorer, SuiteJudges(panel=JudgePanel(), safety=safety, dialogue=dialogue,
                                                    calibrated_weights=calibrated),
                       SuiteLimits(per_dialogue=a.turns_per_dialogue, max_dialogues=a.max_dialogues,
                                   max_dialogue_items=a.max_dialogue_items, max_pairs=a.max_pairs, seed=a.seed),
                       a.n_bootstrap)
    timings["suite_s"] = time.time() - t1
    result.update({"timings": timings, "args": vars(a), "safety_metrics": sm, "calibrated_weights": calibrated})
    (out / "result.json").write_text(json.dumps(result, indent=2))
    table = summary_markdown(result)
    (out / "table.md").write_text(table + "\n")
    print(table)
    print(json.dumps(timings))


if __name__ == "__main__":
    main()
