"""Held-out judges: known-answer examples for every judge, and their independence from the reward heads."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from convrl.eval import fluency, judges
from convrl.eval.fluency import CharNgramLM, FluencyJudge
from convrl.eval.judges import (JudgePanel, RelevanceJudge, contradictions, emotion_judge, engagement_judge,
                                judge_user_emotion, personality_judge, relevance_judge, tone_scores)


@pytest.fixture(scope="module")
def cards(personas):
    return {p.persona_id: p for p in personas}


@pytest.fixture(scope="module")
def panel():
    return JudgePanel()


@pytest.mark.parametrize("text,emotion", [
    ("I lost my job today and I feel terrible.", "sad"),
    ("I got the job! I'm so happy!", "happy"),
    ("My laptop crashed again, this is ridiculous!", "angry"),
    ("I have exams next week and I'm panicking.", "fearful"),
    ("What time does the museum open?", "neutral"),
])
def test_user_emotion_known_answers(text, emotion):
    assert judge_user_emotion(text) == emotion


def test_emotion_judge_prefers_the_tone_the_persona_card_asks_for(cards):
    coach, guide, expert = cards["empathetic_coach"], cards["cheerful_guide"], cards["calm_expert"]
    empathetic = "I'm so sorry, that sounds really hard. I'm here for you."
    cheering = "Wow, awesome! That's fantastic, congrats!!"
    calming = "I understand, that is frustrating. Let's fix it together, step by step."
    sad, happy, angry = ("I lost my job and I feel terrible.", "I got the job! I'm so happy!",
                         "My laptop crashed again, this is ridiculous!")
    s, emo = emotion_judge([sad, sad], [empathetic, cheering], [coach, coach])
    assert emo == ["sad", "sad"] and s[0] > 0.7 and s[1] < 0.2
    s, _ = emotion_judge([happy, happy], [cheering, empathetic], [guide, guide])
    assert s[0] > 0.7 and s[0] > s[1]
    s, _ = emotion_judge([angry, angry], [calming, cheering], [expert, expert])
    assert s[0] > 0.7 and s[1] < 0.5


def test_tone_scores_are_zero_for_empty_text():
    assert set(tone_scores("").values()) == {0.0}


def test_lexical_relevance_on_topic_beats_shuffled():
    ctx = ["I want to go hiking in the mountains this weekend", "Can you recommend a good book about chess?",
           "My laptop keeps crashing when I open the browser"]
    resp = ["Hiking in the mountains sounds lovely, pick a trail you know.",
            "For chess books, try Logical Chess Move by Move.",
            "Try updating the browser and check the laptop drivers."]
    on = relevance_judge(ctx, resp)
    off = relevance_judge(ctx, resp[1:] + resp[:1])
    assert (on >= 0.5).all() and (off < 0.1).all()
    assert relevance_judge(["hello"], [""])[0] == 0.0


def test_relevance_judge_gives_nothing_for_a_question_asked_back():
    from convrl.eval.judge_scorers import asked_back

    user = "can you write selection sort?"
    handed = "Can you write a selection sort algorithm?"
    answer = "Sure: pick the smallest item, swap it to the front, repeat."
    assert asked_back(handed, user) == 1.0 and asked_back(answer, user) == 0.0
    assert asked_back("Selection sort swaps the minimum forward. Shall I explain selection sort?", user) == 0.0
    assert asked_back("You can't sleep? Why not?", "I can't sleep.") == 0.0   # reflecting a statement is fine
    rel = RelevanceJudge([[user, answer], ["do you like tea?", "I love green tea."]] * 4)
    s = rel.score([user, user], [handed, answer], [user, user])
    assert s[0] == 0.0 and s[1] > 0.3
    assert relevance_judge([user], [handed])[0] > 0.5  # what word overlap alone made of it


def test_topic_model_finds_relevance_without_shared_words():
    ai = ["What is AI?", "Artificial intelligence is a branch of computer science.",
          "AI means intelligent computer programs.", "Machine learning is part of artificial intelligence.",
          "Can a computer program think?", "Computer science studies intelligent machines and AI.",
          "Is AI dangerous?", "Artificial intelligence needs careful computer science.",
          "Do robots use AI?", "Robots run intelligent computer programs."]
    sport = ["Do you like football?", "I love soccer and watching the league.", "Who won the league?",
             "My team won the soccer match.", "Do you play football?", "Yes, soccer every weekend with my team.",
             "Football is the best sport.", "The league match was exciting for the team.",
             "Which team do you support?", "I support the team that won the soccer league."]
    convs = [ai[i:i + 2] for i in range(0, 10, 2)] + [sport[i:i + 2] for i in range(0, 10, 2)]
    rel = RelevanceJudge(convs * 2)
    s = rel.score(["What is AI?", "What is AI?"], ["Artificial intelligence is computer science.",
                                                    "I watch soccer with my team."])
    assert s[0] >= 0.5 > s[1]


def test_personality_contradiction_and_character_break_score_zero(cards):
    coach = cards["empathetic_coach"]
    s, notes = personality_judge(["I don't have a dog, sadly.", "As an AI language model, I cannot feel anything.",
                                  "My name is Bob and I like tea."], [coach] * 3)
    assert s.tolist() == [0.0, 0.0, 0.0]
    assert "rescue dog" in notes[0][0]
    assert "character break" in notes[1][0]
    assert "name 'bob'" in notes[2][0]


def test_personality_judge_gives_nothing_for_the_persona_recited_to_the_user(cards):
    coach = cards["empathetic_coach"]
    s, notes = personality_judge(["You're Sam, a warm coach.", "You're a wellbeing coach, and I'm here to help.",
                                  "I'm a wellbeing coach, and you're doing great."], [coach] * 3)
    assert s[0] == 0.0 and s[1] == 0.0 and s[2] > 0.0
    assert "given to the user ('you're sam')" in notes[0][0] and "you're a wellbeing coach" in notes[1][0]
    assert notes[2] == []


def test_personality_in_character_beats_generic_and_mismatched_traits(cards):
    coach, expert = cards["empathetic_coach"], cards["calm_expert"]
    s, notes = personality_judge(["My dog Biscuit and I love quiet morning hikes.",
                                  "I understand how you feel, that sounds hard.", "Sure, here is the information."],
                                 [coach] * 3)
    assert s[0] >= 0.9 and s[1] >= 0.5 and s[2] < 0.5
    assert notes == [[], [], []]
    s, _ = personality_judge(["Haha lol that's so funny dude", "Certainly. I would recommend restarting the router."],
                             [expert] * 2)
    assert s[0] < 0.3 < 0.5 <= s[1]


def test_contradiction_of_an_earlier_own_statement(cards):
    assert contradictions("I don't have a cat anymore.", None, earlier=["I have a cat called Tom."])
    assert not contradictions("My cat Tom is sleeping.", None, earlier=["I have a cat called Tom."])
    assert not contradictions("I prefer tea, always.", cards["calm_expert"])


def test_engagement_open_question_beats_closed_beats_none_and_generic_is_capped():
    s = engagement_judge(["I love hiking too! Which trail will you take this weekend?",
                          "I love hiking too. Will you go this weekend?",
                          "I love hiking too. The mountains are lovely this season.",
                          "ok and you?", "Thanks.", ""])
    assert s[0] > s[1] > s[2]
    assert s[3] <= 0.2 and s[4] <= 0.2 and s[5] == 0.0


def test_fluency_separates_text_from_salad_and_loops():
    fj = FluencyJudge()
    s = fj.score(["I'm sorry to hear that. Do you want to talk about it?", "asdkj qwpeo zxmnv lkjasd poiuqwe mnbvcx",
                  "I am I am I am I am I am I am I am I am I am I am I am I am I am", ""])
    assert s[0] > 0.8 and s[1] < 0.2 and s[2] < 0.3 and s[3] == 0.0


def test_char_lm_assigns_fewer_bits_to_english():
    lm = CharNgramLM().fit(["the cat sat on the mat", "the dog sat on the log"] * 20)
    assert lm.bits_per_char("the cat sat on the log") < lm.bits_per_char("xq zv kjw pqq")


def test_panel_columns_ranges_and_composite(panel, cards):
    ctx = [[{"role": "user", "content": "I lost my job and I feel terrible."}], "Can you recommend a chess book?"]
    df = panel.score(ctx, ["I'm so sorry. That sounds hard; how are you holding up?", ""],
                     [cards["empathetic_coach"], None])
    for col in judges.JUDGE_COLUMNS:
        assert df[col].between(0, 1).all(), col
    assert df.loc[1, "judge_composite"] == 0.0  # an empty reply
    w = judges.DEFAULT_WEIGHTS
    expect = sum(w[h] * df.loc[0, c] for h, c in judges.JUDGE_FOR_HEAD.items()) / sum(w.values())
    assert df.loc[0, "judge_composite"] == pytest.approx(expect)
    with pytest.raises(ValueError):
        panel.score(ctx, ["one reply"], [None, None])


def test_judges_never_use_the_reward_models():
    # Independence is the point: no judge may load the reward encoder, emotion head or base-LM scorer.
    for mod in (judges, fluency):
        imports = [ln.strip() for ln in inspect.getsource(mod).splitlines() if ln.strip().startswith(("import ", "from "))]
        assert not [ln for ln in imports if "convrl.rewards" in ln or "transformers" in ln or "torch" in ln], imports


def test_panel_is_fast(panel):
    import time

    replies = ["I'm so sorry to hear that. How are you feeling today?"] * 200
    t = time.perf_counter()
    panel.score(["I feel sad"] * 200, replies, [None] * 200)
    assert time.perf_counter() - t < 10
    assert np.isfinite(panel.score(["x"], ["y"], [None])["judge_composite"]).all()
