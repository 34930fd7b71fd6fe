"""How a reply says things: the style part of the personality head.

The personality head's cosines with the persona card see what a reply is about (a coach's hiking, an expert's
chess), not how it says it: on the demo's evidence runs RL traded the empathetic coach's warmth away (replies
with a warmth word fell from 34% to 9-28% in five seeds of six) while the head's score of those replies rose or
fell at random (README "Does it learn?"). This term reads the card's traits instead: each trait has a few example
sentences written in that manner, and a reply scores, per strong trait of its persona (strength >= 0.5), its best
cosine with that trait's examples, averaged with the traits' strengths as weights::

    style = TraitStyle(encoder)
    style.score(encoder.encode(["Take your time, there's no rush."]), [calm_expert])   # patience, formality...

It is a sentence-embedding similarity, not the held-out personality judge's marker-word count
(``convrl.eval.judge_scorers``): another model, so RL is not trained on its exam. Traits without examples
here, and cards without traits (PersonaChat's facts-only profiles), get no style term (NaN).
"""

from __future__ import annotations

import numpy as np

from convrl.data.personas import Persona

STRONG_TRAIT = 0.5

TRAIT_EXAMPLES: dict[str, list[str]] = {
    "empathy": ["That sounds really hard, and it makes sense that you feel this way.",
                "I can hear how much this is weighing on you.",
                "It's completely understandable to feel upset after something like that."],
    "warmth": ["I'm really glad you reached out, and I'm here for you.",
               "You're always welcome to talk to me, I care about how you're doing.",
               "It's lovely to hear from you, thank you for sharing this with me."],
    "patience": ["Take your time, there's no rush at all.",
                 "We can go through this slowly, one small step at a time.",
                 "Whenever you're ready, we can pick this up together."],
    "humor": ["Ha, that's hilarious, you made me laugh out loud!",
              "Well, at least the cat found it funny, right?",
              "I'd tell you a joke about it, but it might fall flat."],
    "enthusiasm": ["Wow, that's amazing, I love it!",
                   "This is so exciting, I can't wait to hear more!",
                   "That's fantastic news, what a great idea!"],
    "curiosity": ["Oh, I'd love to know more, what got you into that?",
                  "That makes me wonder how it all started for you.",
                  "Interesting! What was the most surprising part?"],
    "formality": ["Certainly. I would recommend the following steps.",
                  "Thank you for your patience; please find the details below.",
                  "I would be happy to assist you with this matter."],
}


class TraitStyle:
    """Scores replies' embeddings against the example sentences of their personas' strong traits."""

    def __init__(self, encoder):
        self._examples = {t: encoder.encode(v) for t, v in TRAIT_EXAMPLES.items()}

    @staticmethod
    def strong_traits(persona: Persona | None) -> dict[str, float]:
        """The card's traits this term can read, at strength >= 0.5, with their strengths."""
        if persona is None:
            return {}
        return {t: float(s) for t, s in (persona.traits or {}).items() if s >= STRONG_TRAIT and t in TRAIT_EXAMPLES}

    def score(self, r_emb: np.ndarray, personas: list[Persona | None]) -> np.ndarray:
        """Per reply, in [0, 1]: the strength-weighted mean of its best cosine with each strong trait's examples;
        NaN where the persona has no strong trait with examples."""
        out = np.full(len(personas), np.nan, dtype=np.float32)
        best = {t: np.clip((r_emb @ e.T).max(1), 0, 1) for t, e in self._examples.items()}
        for i, p in enumerate(personas):
            traits = self.strong_traits(p)
            if traits:
                out[i] = sum(s * best[t][i] for t, s in traits.items()) / sum(traits.values())
        return out
