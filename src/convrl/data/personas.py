"""Persona cards: YAML -> ``Persona`` objects -> the persona table and system prompts.

A card names traits with strengths, a communication style, an emotional range,
an emotion map (user emotion -> the response tone the persona should take) and
facts. Bundled cards live in ``src/convrl/personas``; any YAML path works too::

    from convrl.data.personas import load_personas
    personas = load_personas(["empathetic_coach", "my_cards/pirate.yaml"])
    personas[0].system_prompt("sad")
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pandas as pd
import yaml

DEFAULT_EMOTION_MAP = {"happy": "enthusiastic", "sad": "empathetic", "angry": "calming",
                       "neutral": "neutral"}
TONES = ("enthusiastic", "empathetic", "calming", "neutral")


class PersonaError(ValueError):
    pass


# The system prompt's last line (bench/reply_budget.py swaps it to test other length instructions).
CLOSING_LINE = "Stay in character, keep replies short, and keep the user engaged."


@dataclass
class Persona:
    persona_id: str
    name: str
    description: str = ""
    traits: dict[str, float] = field(default_factory=dict)
    style: str = ""
    emotional_range: list[str] = field(default_factory=list)
    emotion_map: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_EMOTION_MAP))
    facts: list[str] = field(default_factory=list)

    def tone_for(self, user_emotion: str) -> str:
        return self.emotion_map.get(user_emotion, self.emotion_map.get("neutral", "neutral"))

    def card_text(self) -> str:
        """What the personality head compares responses with."""
        traits = ", ".join(f"{k}" for k, v in sorted(self.traits.items(), key=lambda kv: -kv[1]) if v >= 0.5)
        return f"{self.description}. Traits: {traits}. Style: {self.style}. " + " ".join(self.facts)

    def system_prompt(self, user_emotion: str | None = None) -> str:
        traits = ", ".join(f"{k} {v:.1f}" for k, v in self.traits.items())
        lines = [f"You are {self.name}, {self.description}.",
                 f"Personality: {traits}.",
                 f"Style: {self.style}."]
        if self.facts:
            lines.append("About you: " + " ".join(self.facts))
        if user_emotion and user_emotion != "neutral":
            lines.append(f"The user seems {user_emotion}: be {self.tone_for(user_emotion)}.")
        lines.append(CLOSING_LINE)
        return "\n".join(lines)

    def to_row(self) -> dict:
        return {"persona_id": self.persona_id, "name": self.name, "description": self.description,
                "traits": json.dumps(self.traits), "style": self.style,
                "emotional_range": json.dumps(self.emotional_range),
                "emotion_map": json.dumps(self.emotion_map), "facts": json.dumps(self.facts)}

    @classmethod
    def from_row(cls, row: dict) -> Persona:
        return cls(persona_id=row["persona_id"], name=row["name"], description=row["description"],
                   traits=json.loads(row["traits"]), style=row["style"],
                   emotional_range=json.loads(row["emotional_range"]),
                   emotion_map=json.loads(row["emotion_map"]), facts=json.loads(row["facts"]))


def persona_from_dict(data: dict, origin: str) -> Persona:
    if not isinstance(data, dict):
        raise PersonaError(f"persona card {origin} must be a YAML mapping")
    missing = [k for k in ("persona_id", "name") if not data.get(k)]
    if missing:
        raise PersonaError(f"persona card {origin} lacks {', '.join(missing)}")
    known = set(Persona.__dataclass_fields__)
    unknown = set(data) - known
    if unknown:
        raise PersonaError(f"persona card {origin} has unknown fields {sorted(unknown)}; "
                           f"valid: {sorted(known)}")
    emap = {**DEFAULT_EMOTION_MAP, **(data.get("emotion_map") or {})}
    bad = {k: v for k, v in emap.items() if v not in TONES}
    if bad:
        raise PersonaError(f"persona card {origin}: emotion_map tones {bad} not in {TONES}")
    traits = {str(k): float(v) for k, v in (data.get("traits") or {}).items()}
    if any(not 0 <= v <= 1 for v in traits.values()):
        raise PersonaError(f"persona card {origin}: trait strengths must lie in [0, 1]")
    return Persona(persona_id=str(data["persona_id"]), name=str(data["name"]),
                   description=str(data.get("description", "")), traits=traits,
                   style=str(data.get("style", "")), emotional_range=list(data.get("emotional_range") or []),
                   emotion_map=emap, facts=[str(f) for f in data.get("facts") or []])


def bundled_persona_names() -> list[str]:
    root = resources.files("convrl") / "personas"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def load_persona(spec: str) -> Persona:
    path = Path(spec)
    if path.suffix in {".yaml", ".yml"}:
        if not path.exists():
            raise PersonaError(f"persona card file {spec} does not exist")
        return persona_from_dict(yaml.safe_load(path.read_text()), spec)
    res = resources.files("convrl") / "personas" / f"{spec}.yaml"
    if not res.is_file():
        raise PersonaError(f"unknown persona '{spec}'; bundled: {', '.join(bundled_persona_names())}, "
                           "or give a path to a YAML card")
    return persona_from_dict(yaml.safe_load(res.read_text()), spec)


def load_personas(specs: list[str]) -> list[Persona]:
    personas = [load_persona(s) for s in specs]
    ids = [p.persona_id for p in personas]
    if len(set(ids)) != len(ids):
        raise PersonaError(f"duplicate persona_id in {ids}")
    return personas


def personas_table(personas: list[Persona]) -> pd.DataFrame:
    return pd.DataFrame([p.to_row() for p in personas])


def personas_from_table(df: pd.DataFrame) -> list[Persona]:
    return [Persona.from_row(r) for r in df.to_dict("records")]


def prompt_personas(table: pd.DataFrame, card_specs: list[str], mode: str = "cards") -> list[Persona]:
    """The personas RL and evaluation prompts use: the configured cards unless ``mode='all'``.

    Sources such as PersonaChat bring hundreds of personas into the table; without
    this filter they would crowd out the cards a researcher configured.
    """
    personas = personas_from_table(table)
    if mode == "all":
        return personas
    wanted = {load_persona(s).persona_id for s in card_specs}
    chosen = [p for p in personas if p.persona_id in wanted]
    if not chosen:
        raise PersonaError(f"none of the configured persona cards {card_specs} is in the persona table")
    return chosen
