"""MLflow pyfunc wrappers for convrl's models: a policy checkpoint dir and the emotion head.

Logged by the stages through ``StageRun.log_pyfunc``; MLflow calls ``load_context``/``predict``
when someone loads ``models:/convrl-policy@champion`` with ``mlflow.pyfunc.load_model``.
"""

from __future__ import annotations

import warnings


def _pyfunc_base():
    # MLflow warns about predict() without type hints, for its own classes at import and for ours
    # at class creation; ours take DataFrames on purpose.
    quiet = (".*Add type hints to the `predict` method", ".*Any type hint is inferred as AnyType")
    for msg in quiet:
        warnings.filterwarnings("ignore", message=msg, category=UserWarning)
    import mlflow.pyfunc

    for msg in quiet:
        warnings.filterwarnings("ignore", message=msg, category=UserWarning)
    return mlflow.pyfunc.PythonModel


class HFDirModel(_pyfunc_base()):
    """Pyfunc around a Hugging Face checkpoint dir (the ``hf_dir`` artifact).

    ``predict`` takes a DataFrame with a ``messages`` column (lists of chat
    messages) and returns the assistant replies; ``convrl chat`` and
    ``convrl.rl.generation`` load the dir directly for speed.
    """

    def load_context(self, context):
        self.hf_dir = context.artifacts["hf_dir"]
        self._gen = None

    def predict(self, context, model_input, params=None):
        from convrl.config.eval import CHAT_NO_REPEAT_NGRAM
        from convrl.rl.generation import Generator

        if self._gen is None:
            self._gen = Generator(self.hf_dir)
        msgs = list(model_input["messages"])
        params = params or {}
        # Decodes as convrl chat and evaluation do, unless the caller says otherwise.
        return self._gen.generate(msgs, max_new_tokens=int(params.get("max_new_tokens", 64)),
                                  no_repeat_ngram_size=int(params.get("no_repeat_ngram_size", CHAT_NO_REPEAT_NGRAM)))


class EmotionHeadModel(_pyfunc_base()):
    """Pyfunc around the trained emotion head: text in, label probabilities out."""

    def load_context(self, context):
        from convrl.rewards.emotion import EmotionClassifier

        self.clf = EmotionClassifier.load(context.artifacts["head_dir"])

    def predict(self, context, model_input, params=None):
        import pandas as pd

        texts = list(model_input["text"]) if hasattr(model_input, "columns") else list(model_input)
        probs = self.clf.predict_proba(texts)
        return pd.DataFrame(probs, columns=self.clf.labels)
