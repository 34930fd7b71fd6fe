"""The personality head's style term (rewards.personality_style): it reads how a reply says things, which the
card cosines miss (README "Does it learn?": RL traded the coach's warmth away unseen by the head)."""

from __future__ import annotations

import numpy as np
import pytest

from convrl import models
from convrl.data.personas import Persona
from convrl.rewards.bundle import RewardBundle
from convrl.rewards.encoder import SentenceEncoder
from convrl.rewards.heads import RewardScorer
from convrl.rewards.persona_style import TRAIT_EXAMPLES, TraitStyle


@pytest.fixture(scope="module")
def minilm():
    return SentenceEncoder(models.resolve_encoder("all-minilm-l6-v2"))


def _by_id(personas, pid):
    return next(p for p in personas if p.persona_id == pid)


CTX = [{"role": "user", "content": "I've had a really rough week and I can't sleep."}]
# The same advice, said warmly (as the coach's card asks) and flatly (as RL's coach candidates drifted to).
WARM = "I'm so sorry, that sounds exhausting. Take your time, I'm here for you. What has kept you up?"
FLAT = "Sleep problems are common. Avoid screens before bed and keep a regular schedule."


def test_the_style_term_prefers_the_cards_manner(minilm, personas):
    coach = _by_id(personas, "empathetic_coach")
    style = TraitStyle(minilm).score(minilm.encode([WARM, FLAT]), [coach, coach])
    assert style[0] > style[1] + 0.15
    # Weighted by the card's strengths: an expert's formality is read, the coach's low formality is not.
    assert set(TraitStyle.strong_traits(coach)) == {"empathy", "warmth", "patience"}
    assert "formality" in TraitStyle.strong_traits(_by_id(personas, "calm_expert"))


def test_the_personality_head_sees_style_only_where_the_card_has_traits(minilm, personas):
    coach = _by_id(personas, "empathetic_coach")
    facts_only = Persona("pc", "", facts=["I have two dogs.", "I like to sleep in."])
    with_style, without = RewardScorer(minilm, None, None, personality_style=True), RewardScorer(minilm, None, None)
    ctx, replies, cards = [CTX] * 4, [WARM, FLAT, WARM, FLAT], [coach, coach, facts_only, facts_only]
    a = with_style.score(ctx, replies, cards).heads["personality"]
    b = without.score(ctx, replies, cards).heads["personality"]
    # The warm reply gains on the flat one when the head reads style; facts-only cards score as before.
    assert (a[0] - a[1]) > (b[0] - b[1]) + 0.03
    np.testing.assert_allclose(a[2:], b[2:], atol=1e-6)
    # No card, no trait the term reads: NaN from the term, the neutral 0.5 from the head.
    assert np.isnan(TraitStyle(minilm).score(minilm.encode([WARM, WARM]), [None, facts_only])).all()
    assert with_style.score([CTX], [WARM], [None]).heads["personality"][0] == pytest.approx(0.5)


def test_every_trait_of_the_bundled_personas_has_examples(personas):
    for p in personas:
        strong = {t for t, s in p.traits.items() if s >= 0.5}
        assert strong <= set(TRAIT_EXAMPLES), f"{p.persona_id}: no style examples for {strong - set(TRAIT_EXAMPLES)}"


def test_the_bundle_keeps_the_style_setting(tmp_path):
    RewardBundle(encoder="tiny-bert", weights={"quality": 1.0}, personality_style=True).save(tmp_path)
    assert RewardBundle.load(tmp_path).personality_style is True
    # A bundle written before the setting existed is scored as it was trained: without the style term.
    (tmp_path / "reward_bundle.json").write_text('{"encoder": "tiny-bert", "weights": {"quality": 1.0}}')
    assert RewardBundle.load(tmp_path).personality_style is False
