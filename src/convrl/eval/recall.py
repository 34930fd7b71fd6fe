"""Fact recall in self-play: the user tells the assistant a name, a preference and a plan, then asks for them.

Early in each self-play conversation the simulated user's turns are replaced by
three scripted statements, phrased the way people say such things (``my name
is ...``, ``I love ...``, ``I'm planning to ...``); near the end, after the
statements have left the verbatim context window, three scripted questions ask
for them back. The assistant sees the conversation through the context
manager (``convrl.data.context``), whose memory line carries what the user said
about themself, as ``convrl chat`` does. A probe counts as recalled when the
reply to it names the fact (any of its answer words)::

    script = recall_script(profile, turns=10)       # {after assistant turn t: ScriptedLine}
    recalled(reply, script[7].answers)              # True / False
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from convrl.data.usersim import UserProfile


@dataclass(frozen=True)
class Fact:
    kind: str            # name | preference | plan
    statement: str       # what the user says early on
    probe: str           # what the user asks later
    answers: tuple[str, ...]  # words a correct recall contains (lower case)


@dataclass(frozen=True)
class ScriptedLine:
    text: str
    kind: str            # "statement" or "probe"
    fact: Fact


# Per simulated user (data.usersim.USER_PROFILES ids); unknown profiles get the first name of their description.
FACTS: dict[str, tuple[Fact, ...]] = {
    "stressed_student": (
        Fact("name", "By the way, my name is Jamie.", "Sorry, do you remember my name?", ("jamie",)),
        Fact("preference", "I love green tea when I study.", "What drink did I say I love?", ("tea",)),
        Fact("plan", "I'm planning to study at the library on Saturday.",
             "Where did I say I would study on Saturday?", ("library",)),
    ),
    "excited_mover": (
        Fact("name", "Oh, my name is Priya, by the way.", "Do you still remember my name?", ("priya",)),
        Fact("preference", "I love cycling along the river.", "Which hobby did I tell you I love?", ("cycling", "cycle",
                                                                                                     "bike")),
        Fact("plan", "I'm planning to rent a flat in Alfama.", "Which neighbourhood was I planning to live in?",
             ("alfama",)),
    ),
    "frustrated_customer": (
        Fact("name", "My name is Mark, if that helps.", "What was my name again?", ("mark",)),
        Fact("preference", "I love strong black coffee in the morning.", "What do I love drinking in the morning?",
             ("coffee",)),
        Fact("plan", "I'm planning to back up everything to an external drive tonight.",
             "What did I say I was planning to do tonight?", ("back", "backup", "drive")),
    ),
    "lonely_retiree": (
        Fact("name", "My name is Margaret, dear.", "Can you remind me what my name is?", ("margaret",)),
        Fact("preference", "I love baking lemon cakes.", "What do I love baking?", ("lemon", "cake", "cakes")),
        Fact("plan", "I'm planning to join the choir at the community centre.",
             "Which group was I planning to join?", ("choir",)),
    ),
}


def facts_for(profile: UserProfile) -> tuple[Fact, ...]:
    if profile.user_id in FACTS:
        return FACTS[profile.user_id]
    name = re.split(r"[,\s]", profile.description.strip(), maxsplit=1)[0] or "Sam"
    return (Fact("name", f"By the way, my name is {name}.", "Do you remember my name?", (name.lower(),)),)


def recall_script(profile: UserProfile, turns: int) -> dict[int, ScriptedLine]:
    """User lines that replace the simulator's: statements after the first assistant turns, probes at the end.

    Keys are assistant turn indices the line follows. Needs ``turns >= 2 * facts + 2``
    (10 turns hold three facts); shorter conversations get as many facts as fit.
    """
    facts = facts_for(profile)[:max(0, (turns - 2) // 2)]
    script: dict[int, ScriptedLine] = {}
    for k, fact in enumerate(facts):
        script[k] = ScriptedLine(fact.statement, "statement", fact)
        script[turns - 1 - len(facts) + k] = ScriptedLine(fact.probe, "probe", fact)
    return script


def recalled(reply: str, answers: tuple[str, ...]) -> bool:
    words = set(re.findall(r"[a-z]+", reply.lower()))
    return any(a in words for a in answers)
