"""Emotion and dialogue-act labels of the public data sets, mapped to convrl's seven emotions.

convrl's emotion labels are ``neutral, happy, sad, angry, fearful, surprised,
disgusted`` (Ekman's six plus neutral, as in DailyDialog). Finer labels are
kept in the turn table's ``emotion_fine`` column, so nothing is lost by the
mapping:

* DailyDialog: its own seven labels, renamed.
* GoEmotions: the authors' Ekman grouping (``ekman_mapping.json`` in
  google-research/goemotions), then renamed.
* EmpatheticDialogues' 32 situation emotions: grouped by convrl (ED ships no
  grouping): positive-valence feelings -> happy; loss, regret, shame and
  longing (nostalgic, sentimental) -> sad; annoyance and jealousy -> angry;
  anxiety -> fearful.

    from convrl.data.sources.labels import map_emotion
    map_emotion("furious")   # 'angry'
"""

from __future__ import annotations

from convrl.data.schema import ACTS, EMOTIONS

__all__ = ["ACTS", "ALL_EMOTIONS", "EMOTIONS", "THUMBS", "map_emotion", "normalise_act"]

# Thumbs feedback spellings -> 1 (up) / 0 (down), shared by the chat-record and table readers.
THUMBS = {"up": 1.0, "down": 0.0, "1": 1.0, "0": 0.0, "true": 1.0, "false": 0.0, "+1": 1.0, "-1": 0.0}

_EKMAN = {"neutral": "neutral", "joy": "happy", "happiness": "happy", "sadness": "sad", "anger": "angry",
          "fear": "fearful", "surprise": "surprised", "disgust": "disgusted", "no emotion": "neutral",
          "none": "neutral"}

# GoEmotions' 27 emotions -> Ekman (the authors' grouping) -> convrl.
GOEMOTIONS = {
    **{e: "angry" for e in ("anger", "annoyance", "disapproval")},
    "disgust": "disgusted",
    **{e: "fearful" for e in ("fear", "nervousness")},
    **{e: "happy" for e in ("joy", "amusement", "approval", "excitement", "gratitude", "love", "optimism",
                            "relief", "pride", "admiration", "desire", "caring")},
    **{e: "sad" for e in ("sadness", "disappointment", "embarrassment", "grief", "remorse")},
    **{e: "surprised" for e in ("surprise", "realization", "confusion", "curiosity")},
    "neutral": "neutral",
}

# EmpatheticDialogues' 32 emotions -> convrl (convrl's grouping, see the module docstring).
EMPATHETIC = {
    **{e: "happy" for e in ("joyful", "excited", "proud", "grateful", "content", "impressed", "hopeful",
                            "confident", "caring", "trusting", "faithful", "anticipating", "prepared")},
    **{e: "sad" for e in ("sad", "lonely", "disappointed", "devastated", "nostalgic", "sentimental",
                          "embarrassed", "ashamed", "guilty")},
    **{e: "angry" for e in ("angry", "furious", "annoyed", "jealous")},
    **{e: "fearful" for e in ("afraid", "terrified", "anxious", "apprehensive")},
    "surprised": "surprised",
    "disgusted": "disgusted",
}

# DailyDialog's original release: label ids per turn.
DAILYDIALOG_EMOTION_IDS = {0: "neutral", 1: "angry", 2: "disgusted", 3: "fearful", 4: "happy", 5: "sad",
                           6: "surprised"}
DAILYDIALOG_ACT_IDS = {1: "inform", 2: "question", 3: "directive", 4: "commissive"}

ALL_EMOTIONS = {**GOEMOTIONS, **EMPATHETIC, **_EKMAN, **{e: e for e in EMOTIONS}}


def map_emotion(label) -> str | None:
    """convrl's label for any known emotion name (case-insensitive); None when unknown or empty."""
    if label is None or not isinstance(label, str) or not label.strip():
        return None
    return ALL_EMOTIONS.get(label.strip().lower())


def normalise_act(label) -> str | None:
    if label is None or not isinstance(label, str) or not label.strip():
        return None
    a = label.strip().lower()
    return a if a in ACTS else None
