"""The evaluation reply cache: a model's replies come back only when nothing that decides them changed."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch

from convrl.eval import evaluate as evaluate_mod
from convrl.eval.reply_cache import ReplyCache, model_fingerprint
from convrl.eval.selfplay import SelfPlaySettings, run_selfplay


@pytest.fixture
def model_copy(tmp_path, tiny_policy_dir):
    return str(shutil.copytree(tiny_policy_dir, tmp_path / "model"))


def _perturb(model_dir: str) -> None:
    from safetensors.torch import load_file, save_file

    path = f"{model_dir}/model.safetensors"
    weights = load_file(path)
    name = next(iter(weights))
    weights[name] = weights[name] + 1e-3
    save_file(weights, path, metadata={"format": "pt"})


def test_fingerprint_follows_the_weights_not_the_path(tmp_path, model_copy, tiny_policy_dir):
    assert model_fingerprint(model_copy) == model_fingerprint(tiny_policy_dir)
    moved = shutil.move(model_copy, tmp_path / "elsewhere")
    assert model_fingerprint(moved) == model_fingerprint(tiny_policy_dir)
    _perturb(str(moved))
    assert model_fingerprint(moved) != model_fingerprint(tiny_policy_dir)
    with pytest.raises(FileNotFoundError, match="no model files"):
        model_fingerprint(tmp_path / "empty-dir-does-not-exist")


def test_lookup_misses_on_any_change_and_survives_a_corrupt_entry(tmp_path, model_copy, one_thread, caplog):
    cache = ReplyCache(tmp_path / "cache")
    settings = {"conversations": [[{"role": "user", "content": "hi"}]], "max_new_tokens": 8}
    assert cache.lookup("replies", model_copy, settings) is None
    cache.store("replies", model_copy, settings, ["hello"])
    assert cache.lookup("replies", model_copy, settings) == ["hello"]
    assert cache.hits == [f"replies:{model_copy}"]
    assert cache.lookup("replies", model_copy, {**settings, "max_new_tokens": 9}) is None
    assert cache.lookup("selfplay", model_copy, settings) is None
    torch.set_num_threads(2)  # float reductions, hence greedy choices, depend on the thread count
    assert cache.lookup("replies", model_copy, settings) is None
    torch.set_num_threads(1)
    for entry in (tmp_path / "cache" / "replies").glob("*.json"):
        entry.write_text("{truncated")
    assert cache.lookup("replies", model_copy, settings) is None
    assert "unreadable" in caplog.text
    _perturb(model_copy)
    assert cache.lookup("replies", model_copy, settings) is None
    assert ReplyCache(None).lookup("replies", "no-such-dir", settings) is None  # off: not even a fingerprint


def test_evaluate_models_decodes_a_model_once_then_reuses_its_replies(tmp_path, model_copy, tiny_encoder,
                                                                      personas, monkeypatch, one_thread):
    from convrl.rewards.heads import RewardScorer

    scorer = RewardScorer(tiny_encoder, None, None)
    prompts = [{"prompt": [{"role": "system", "content": personas[i % 3].system_prompt("neutral")},
                           {"role": "user", "content": text}], "persona_id": personas[i % 3].persona_id}
               for i, text in enumerate(["I lost my keys again.", "We won!", "Why is the sky blue?"])]
    by_id = {p.persona_id: p for p in personas}
    loaded = []
    real = evaluate_mod.Generator
    monkeypatch.setattr(evaluate_mod, "Generator", lambda d, **kw: (loaded.append(d), real(d, **kw))[1])

    def run(cache):
        return evaluate_mod.evaluate_models({"candidate": model_copy}, prompts, scorer, by_id, 6, 2, 0,
                                            no_repeat_ngram_size=4, cache=cache)

    plain = run(None)
    cache = ReplyCache(tmp_path / "cache")
    first = run(cache)
    second = run(cache)
    assert loaded == [model_copy, model_copy]  # no-cache run, then the first cached run; the second decodes nothing
    assert cache.hits == [f"replies:{model_copy}"]
    pd.testing.assert_frame_equal(second, first)
    pd.testing.assert_frame_equal(first, plain)  # a cached reply is exactly what decoding gives
    assert set(first["cut_off"]) <= {0.0, 1.0}   # whether each reply ended comes back from the cache too
    later = ReplyCache(tmp_path / "cache")  # another run (process) reading the same folder
    pd.testing.assert_frame_equal(run(later), first)
    assert len(loaded) == 2 and later.hits == [f"replies:{model_copy}"]
    # A change in decoding settings decodes again.
    evaluate_mod.evaluate_models({"candidate": model_copy}, prompts, scorer, by_id, 7, 2, 0,
                                 no_repeat_ngram_size=4, cache=cache)
    assert len(loaded) == 3
    # So does another precision (eval.precision), and the model then decodes in that dtype.
    gens = []
    monkeypatch.setattr(evaluate_mod, "Generator", lambda d, **kw: (gens.append(real(d, **kw)), gens[-1])[1])
    bf16 = evaluate_mod.evaluate_models({"candidate": model_copy}, prompts, scorer, by_id, 6, 2, 0,
                                        no_repeat_ngram_size=4, cache=cache, precision="bf16")
    assert len(gens) == 1 and gens[0].model.dtype == torch.bfloat16 and len(bf16) == len(first)


def test_run_selfplay_reuses_transcripts_only_for_the_same_user_and_settings(tmp_path, model_copy, tiny_policy_dir,
                                                                             personas, monkeypatch, one_thread):
    import convrl.rl.generation as generation

    loaded = []
    real = generation.Generator
    monkeypatch.setattr(generation, "Generator", lambda d, **kw: (loaded.append(d), real(d, **kw))[1])
    st = SelfPlaySettings(conversations=1, turns=3, max_new_tokens=4, context_turns=4, no_repeat_ngram_size=4)
    cache = ReplyCache(tmp_path / "cache")
    first = run_selfplay({"candidate": model_copy}, tiny_policy_dir, personas[:1], st, cache=cache)
    assert loaded == [tiny_policy_dir, model_copy]
    again = run_selfplay({"candidate": model_copy}, tiny_policy_dir, personas[:1], st, cache=cache)
    assert len(loaded) == 2 and cache.hits == [f"selfplay:{model_copy}"]
    pd.testing.assert_frame_equal(again, first)
    # Another simulated user (other weights) or other settings: decoded again.
    run_selfplay({"candidate": model_copy}, tiny_policy_dir, personas[:1],
                 SelfPlaySettings(**{**st.__dict__, "turns": 2}), cache=cache)
    assert len(loaded) == 4


def test_cache_key_covers_every_decoding_module_the_decoders_import():
    """A ``convrl.rl`` module imported by one in the key (as ``rl.generation`` imports ``rl.decoding``) is in the key
    too: otherwise changing it would serve replies decoded by the old code."""
    import ast
    import importlib
    import inspect

    from convrl.eval.reply_cache import DECODING_MODULES

    missing = set()
    for name in DECODING_MODULES:
        tree = ast.parse(inspect.getsource(importlib.import_module(name)))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("convrl.rl."):
                missing |= {node.module} - set(DECODING_MODULES)
    assert not missing, f"add to DECODING_MODULES: {sorted(missing)}"
