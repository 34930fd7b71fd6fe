"""The untrained heads judge a reply in its context (issue 17): coherence with the user's turn, no reward for
parroting it, no length proxy, persona facts matched one by one."""

import numpy as np
import pytest

from convrl import models
from convrl.data.personas import Persona
from convrl.rewards.encoder import SentenceEncoder
from convrl.rewards.heads import RewardScorer, asks_the_user, coherence, engagement_head, persona_sentences
from convrl.rewards.text_signals import echo, echo_rate, reworded_echo

USER = [{"role": "user", "content": "My laptop will not turn on after the update, what should I do?"}]
ON_TOPIC = "Hold the power button for ten seconds, then plug in the charger and restart the laptop."
OFF_TOPIC = "I love spicy ramen and playing the ukulele on sunny weekends."


@pytest.fixture(scope="module")
def scorer():
    return RewardScorer(SentenceEncoder(models.resolve_encoder("all-minilm-l6-v2")), None, None)


def test_echo_rate():
    assert echo_rate("my laptop will not turn on", "My laptop will not turn on after the update") == 1.0
    assert echo_rate("try restarting it in safe mode", "my laptop will not turn on") == 0.0
    assert echo_rate("Hello", "hello") == 1.0 and echo_rate("Hi", "hello") == 0.0


def test_echo_rate_sees_through_contractions():
    # What RL found: the user's insult handed back with a contraction escaped the copy discount.
    assert echo_rate("You're a coward.", "you are a coward") == 1.0
    assert echo_rate("I don’t know, it's late", "I do not know") == 2 / 5  # (i do not), (do not know)
    assert echo_rate("You're not a coward at all", "you are a coward") == 0.0
    assert echo_rate("", "hello") == 0.0


@pytest.mark.parametrize("reply, user, expected", [
    # Seed 1 of the gated demo run (README "Does it learn?"): no trigram in common, so echo_rate missed it.
    ("I hope you die.", "I hope that you die", 1.0),
    ("I hope you die. I've just died.", "I hope that you die", 0.5),     # half its words say something new
    ("Yes, I love pizza too.", "I love pizza", 1.0),
    ("I'm not cruel. I'm just a professional.", "you are cruel", 0.0),    # a negation is something new
    ("The capital of France is Paris.", "What is the capital of France?", 0.0),
    ("You can't sleep? Why not?", "I can't sleep", 0.0),                 # asking back is not parroting
    # ... but asking the user's own question back is: seed 1's candidate handed requests back this way.
    ("Can you write a selection sort algorithm?", "can you write selection sort?", 1.0),
    ("Can you write a function in Python that checks if a given number is prime?",
     "can you write a prime number checker in Python?", 1.0),
    ("My favourite food is pizza. What's your favourite food?", "What's your favourite food?", 0.5),
    ("Sure: def sort(a): return sorted(a). Shall I explain selection sort?", "can you write selection sort?", 0.0),
    ("What do you like to do on weekends?", "What is your favourite food?", 0.0),
    ("Me too!", "I love pizza", 0.0),                                    # no content words to copy
    ("I hope you die.", "", 0.0),                                        # no user turn
])
def test_reworded_echo_finds_statements_made_only_of_the_users_words(reply, user, expected):
    assert reworded_echo(reply, user) == pytest.approx(expected)
    assert echo(reply, user) == max(expected, echo_rate(reply, user))


def test_coherence_and_non_repetition_discount_a_reworded_echo(scorer):
    from convrl.rl.shaping import repetition

    user = "I hope that you die"
    replies = ["I hope you die.", "I'm sorry you feel that way. What happened today?"]
    coh = coherence(scorer.encoder.encode(replies), scorer.encoder.encode([user] * 2), replies, [user] * 2)
    assert coh[0] == pytest.approx(0.0) and coh[1] > 0.0
    assert repetition(replies[0], user=user) == 1.0 and repetition(replies[1], user=user) == 0.0


def test_coherence_prefers_the_on_topic_reply_and_discounts_copies(scorer):
    user = USER[0]["content"]
    replies = [ON_TOPIC, OFF_TOPIC, user]
    r = scorer.encoder.encode(replies)
    u = scorer.encoder.encode([user] * 3)
    coh = coherence(r, u, replies, [user] * 3)
    assert coh[0] > coh[1] and coh[0] > coh[2]
    assert coh[2] == pytest.approx(0.0)  # a verbatim copy has cosine 1 and echo 1
    assert coherence(r[:1], u[:1], replies[:1], [""])[0] == 0.5  # no user turn: undefined, neutral


def test_quality_and_engagement_follow_the_context_not_the_length(scorer):
    rambling = " ".join([OFF_TOPIC] * 3 + ["Also my cousin paints landscapes and bakes bread every single day."])
    replies = [ON_TOPIC, OFF_TOPIC, rambling, USER[0]["content"]]
    out = scorer.score([USER] * 4, replies, [None] * 4)
    q, e = out.heads["quality"], out.heads["engagement"]
    assert q[0] > q[1] and q[0] > q[2] and q[0] > q[3]
    assert e[0] > e[1] and e[0] > e[2]
    assert np.allclose(out.details["coherence"][:2], sorted(out.details["coherence"][:2], reverse=True))


def test_engagement_head_is_zero_for_degenerate_text():
    coh = np.array([0.9, 0.9], dtype=np.float32)
    e = engagement_head(["!!!! ????", "Do you like it?"], coh)
    assert e[0] == 0 and e[1] > 0.5


def test_engagement_pays_for_asking_the_user_not_for_telling_them_what_they_are():
    # RL in the demo learned to open 60% of replies with "You ..." and hand insults back while any "you" paid.
    assert asks_the_user("That sounds fun. What do you like most about it?")
    assert asks_the_user("How was your day?\nI hope well.")
    assert not asks_the_user("You're cruel, you're not. You're just a cruel soul.")
    assert not asks_the_user("You are great. Why not?")  # the question is not to the user
    assert not asks_the_user("")
    coh = np.full(2, 0.5, dtype=np.float32)
    told, asked = engagement_head(["You are a brave and loyal one.", "Are you a brave and loyal one?"], coh)
    assert asked - told == pytest.approx(0.2 + 0.15, abs=1e-6)  # "?" and the question to the user; same words


def test_personality_matches_one_fact_of_a_long_card(scorer):
    card = Persona(persona_id="p", name="P", description="A retired sailor who now runs a bakery",
                   style="warm and brief", facts=["I have three cats.", "I grew up in Lisbon.",
                                                  "My favourite food is grilled sardines."])
    assert persona_sentences(card) == ["A retired sailor who now runs a bakery", "warm and brief", "I have three cats.",
                                       "I grew up in Lisbon.", "My favourite food is grilled sardines."]
    assert persona_sentences(None) == []
    replies = ["Oh, my cats would love that, all three of them!", "The stock market closed lower on Tuesday."]
    out = scorer.score([USER] * 2, replies, [card, card])
    assert out.heads["personality"][0] > out.heads["personality"][1]
    # The best-sentence half lifts a reply that voices one fact above the card-average cosine alone.
    r = scorer.encoder.encode(replies[:1])
    card_cos = float(np.clip(r @ scorer.encoder.encode([card.card_text()]).T, 0, 1)[0, 0])
    assert out.heads["personality"][0] > card_cos
    assert scorer.score([USER], [replies[0]], [None]).heads["personality"][0] == 0.5


def test_reciting_the_persona_to_the_user_earns_no_personality(scorer):
    # Seed 1 of the demo (README "Does it learn?"): 81 of 96 held-out replies opened with "You ...", reciting the
    # system prompt to the user, and the personality head paid for the card's words wherever they stood.
    from convrl.data.personas import load_persona
    from convrl.rewards.text_signals import persona_addressed, persona_given_away

    alex, sam = load_persona("calm_expert"), load_persona("empathetic_coach")
    card = " ".join([sam.description, *sam.facts])
    assert persona_addressed("You're a wellbeing coach, and I'm here to help.", "Sam", card) == 0.5  # 5 of 10 words, "you are" spelled out
    assert persona_addressed("You're Sam.", "Sam", card) == 1.0
    assert persona_addressed("I'm a wellbeing coach, and you're doing great.", "Sam", card) == 0.0
    assert persona_addressed("You're not capable of feeling love.", "Sam", card) == 0.0   # no word of the card
    # The user's own words are theirs to be told back: "you love hiking too" answers "I love hiking".
    assert persona_addressed("You love hiking too?", "Sam", card, "I love hiking") == 0.0
    assert persona_addressed("You love hiking too?", "Sam", card, "hello") == 1.0
    assert persona_given_away(["You're Alex, a technical expert.", "You're Alex, a technical expert."],
                              [alex, None], ["hi", "hi"]) == [True, False]

    ctx = [[{"role": "user", "content": "My printer is not printing."}]] * 2
    replies = ["You're Alex, a composed technical expert who explains things clearly and stays calm under pressure.",
               "I'm Alex. Let's stay calm and check the cable first, then the print queue."]
    out = scorer.score(ctx, replies, [alex, alex])
    assert out.heads["personality"][0] == 0.0 and out.heads["personality"][1] > 0.0
    assert scorer.score_head("personality", ctx, replies, [alex, alex]).tolist() == out.heads["personality"].tolist()


def test_claiming_what_it_is_unasked_earns_less_personality(scorer):
    # Seed 13 of the demo on a later machine (README "Does it learn?"): identity claims in the card's words ("I'm a
    # wellbeing coach, and I'm happy to help with your wellbeing journey. I'm a small-town dog shelter, ...") raised
    # the personality head while the held-out personality judge fell.
    from convrl.data.personas import load_persona
    from convrl.rewards.text_signals import asks_about_assistant, self_description

    assert self_description("I'm a wellbeing coach.", "I feel sad today") == 1.0
    assert self_description("I'm a wellbeing coach, and you're doing great.", "I feel sad") == pytest.approx(5 / 9)
    assert self_description("I am not a dog. Take a walk.", "I feel sad") == pytest.approx(5 / 8)
    assert self_description("I'm Alex. Let's check the cable.", "My printer is broken") == 0.0   # a name, no claim
    assert self_description("Oh, my cats would love that, all three of them!", "I bake bread") == 0.0  # a fact voiced
    assert self_description("", "hi") == 0.0
    # Asked about itself, describing itself is the answer; a request in the second person is not such a question.
    for asked in ("What do you do?", "Who are you?", "Tell me about yourself.", "do you like dogs?"):
        assert asks_about_assistant(asked) and self_description("I'm a wellbeing coach.", asked) == 0.0
    for not_asked in ("Can you help me with my essay?", "I feel sad.", "What is the capital of France?", ""):
        assert not asks_about_assistant(not_asked)

    sam = load_persona("empathetic_coach")
    ctx = [[{"role": "user", "content": "I failed my driving test again."}]] * 2
    claimed = "I'm a wellbeing coach, and I'm a warm and patient listener."
    out = scorer.score(ctx, [claimed, claimed], [sam, None])
    plain = scorer.encoder.encode([claimed])
    card = float(np.clip(plain @ scorer.encoder.encode([sam.card_text()]).T, 0, 1)[0, 0])
    assert out.heads["personality"][0] < 0.25 * card   # nearly all of it claims
    assert out.heads["personality"][1] == 0.5           # no card: nothing to claim against
    asked = [[{"role": "user", "content": "What do you do for a living?"}]]
    assert scorer.score(asked, [claimed], [sam]).heads["personality"][0] > card * 0.5
    assert scorer.score_head("personality", ctx[:1], [claimed], [sam]).tolist() == out.heads["personality"][:1].tolist()


def test_a_learned_personality_head_is_gated_too(scorer):
    # The gate is applied after the head: a learned head (trained on persona dialogues) pays for the card's
    # words wherever they stand, as the untrained one did.
    from convrl.data.personas import load_persona

    class Constant:  # a learned head that likes every reply
        def score(self, inputs):
            return np.full(len(inputs["responses"]), 0.9, dtype=np.float32)

    alex = load_persona("calm_expert")
    learned = RewardScorer(scorer.encoder, None, None, learned={"personality": Constant()})
    ctx = [[{"role": "user", "content": "My printer is not printing."}]] * 2
    replies = ["You're Alex, a composed technical expert who explains things clearly and stays calm under pressure.",
               "I'm Alex. Let's stay calm and check the cable first, then the print queue."]
    out = learned.score(ctx, replies, [alex, alex])
    assert out.heads["personality"].tolist() == pytest.approx([0.0, 0.9])
    assert out.details["personality_untrained"][0] == 0.0  # the untrained baseline meta-eval reports is gated too
    assert learned.score_head("personality", ctx, replies, [alex, alex]).tolist() == pytest.approx([0.0, 0.9])
