"""The simulated user shared by RL rollouts and self-play evaluation.

A frozen model role-plays a user described by a ``UserProfile``; ``user_view`` swaps
roles so the simulator sees its own lines as "assistant" turns, and ``clean_user``
strips the speaker labels small simulators add::

    from convrl.data.usersim import USER_PROFILES, user_system_prompt, user_view
    msgs = [{"role": "system", "content": user_system_prompt(USER_PROFILES[0])}] + user_view(history, 6)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class UserProfile:
    user_id: str
    description: str
    goal: str
    opener: str
    pivot: str


USER_PROFILES = (
    UserProfile("stressed_student", "Jamie, a university student who feels anxious about exams next week",
                "get practical advice to calm down and plan revision",
                "I have three exams next week and I can't stop panicking.",
                "Can I ask something different? What is a good hobby to relax on weekends?"),
    UserProfile("excited_mover", "Priya, who just got a new job abroad and is thrilled",
                "share the news and get ideas for settling into a new city",
                "Guess what, I got the job in Lisbon! I'm moving there next month!",
                "By the way, do you have any favourite food you would recommend trying?"),
    UserProfile("frustrated_customer", "Mark, whose laptop keeps crashing and who is annoyed",
                "get the laptop working again without losing files",
                "My laptop crashed again and I lost an hour of work. This is ridiculous.",
                "Anyway, forget the laptop. Do you know any good books about chess?"),
    UserProfile("lonely_retiree", "Margaret, a retired teacher who feels lonely since moving towns",
                "have a friendly chat and find ways to meet people",
                "I moved to a new town last month and I don't know anyone here. It's been lonely.",
                "Let me change the subject. Do you like music? I used to play the piano."),
)


def user_system_prompt(profile: UserProfile) -> str:
    return (f"You are role-playing a human user chatting with an assistant. You are {profile.description}. "
            f"Your goal: {profile.goal}. Reply as the user in one or two short sentences. "
            "Never act as the assistant and never say you are an AI.")


GREETING = "Hi! What would you like to talk about today?"


def user_view(history: list[dict], k: int) -> list[dict]:
    """The simulator's side of the last ``k`` messages: roles swapped, so its own lines are "assistant".

    When the window starts with the simulator's own line, a greeting from the
    assistant goes first, because chat templates expect a user turn first and the
    simulator should still see what it said.
    """
    w = history[-k:] if k > 0 else list(history)
    swapped = [{"role": "assistant" if m["role"] == "user" else "user", "content": m["content"]} for m in w]
    if swapped and swapped[0]["role"] == "assistant":
        swapped = [{"role": "user", "content": GREETING}] + swapped
    return swapped


def clean_user(text: str, fallback: str) -> str:
    """A simulated user's line, without speaker labels; ``fallback`` when nothing is left."""
    # Small simulators sometimes answer as the assistant or prefix a speaker label.
    t = text.strip()
    for prefix in ("User:", "user:", "Me:", "Human:"):
        if t.startswith(prefix):
            t = t[len(prefix):].strip()
    return t[:400] if t else fallback
