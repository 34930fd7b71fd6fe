from convrl.data.context import ConversationContextManager, extract_preferences, keywords


def _long_chat(n=30):
    turns = [("user", "Hi, my name is Ana and I love hiking in the mountains."),
             ("assistant", "Nice to meet you Ana! Hiking is great.")]
    for i in range(n):
        turns.append(("user", f"Let me tell you about my garden, turn {i}: tomatoes, basil and roses grow well."))
        turns.append(("assistant", f"Gardens are wonderful. What grows best for you this season, number {i}?"))
    return turns


def test_long_conversation_fits_budget_and_keeps_what_matters():
    ctx = ConversationContextManager(max_context_length=10, token_budget=300)
    for role, text in _long_chat():
        ctx.add(role, text)
    msgs = ctx.messages("You are Sam, a coach.")
    assert ctx.total_tokens("You are Sam, a coach.") <= 300
    assert msgs[0]["role"] == "system" and "name: Ana" in msgs[0]["content"]
    assert "likes hiking in the mountains" in msgs[0]["content"]
    assert "garden" in msgs[0]["content"] or "tomatoes" in msgs[0]["content"]  # compressed topics
    assert len(msgs) - 1 <= 10 and msgs[1]["role"] == "user"
    assert msgs[-1]["content"] == _long_chat()[-1][1]


def test_short_conversation_is_kept_verbatim():
    ctx = ConversationContextManager(max_context_length=10, token_budget=1000)
    for role, text in _long_chat(2):
        ctx.add(role, text)
    msgs = ctx.messages("sys")
    assert [m["content"] for m in msgs[1:]] == [t for _, t in _long_chat(2)]


def test_overlong_single_turn_is_truncated_not_dropped():
    ctx = ConversationContextManager(max_context_length=4, token_budget=60)
    ctx.add("user", "word " * 500 + "END")
    msgs = ctx.messages("sys")
    assert msgs[-1]["content"].endswith("END")
    assert ctx.total_tokens("sys") <= 80


def test_preferences_and_topics():
    prefs = extract_preferences("I'm a nurse. I hate mornings, but I really enjoy spicy food. I live in Lyon.")
    assert "is a nurse" in prefs and "dislikes mornings" in prefs and "likes spicy food" in prefs
    assert "lives in Lyon" in prefs
    assert "the" not in keywords("The weather and the sea")
    ctx = ConversationContextManager()
    ctx.add("user", "Do you like jazz music? Jazz is my favourite music.")
    assert ctx.current_topic in {"jazz", "music"}


def test_plans_are_remembered_like_names_and_likes():
    prefs = extract_preferences("I'm planning to study at the library on Saturday. My plan is to call my sister.")
    assert "plans to study at the library on Saturday" in prefs and "plans to call my sister" in prefs
    ctx = ConversationContextManager(max_context_length=2)
    ctx.add("user", "My name is Jamie and I'm going to run a marathon in May.")
    for i in range(4):
        ctx.add("assistant", f"Reply {i}")
        ctx.add("user", f"More talk {i}")
    system = ctx.messages("sys")[0]["content"]
    assert "name: Jamie" in system and "plans to run a marathon in May" in system
