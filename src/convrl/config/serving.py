"""Config section for ``convrl serve`` (``serve.*``): models, traffic split, batching, limits, tracing.

``convrl serve --config demo serve.challenger_fraction=0.2`` serves
``models:/<registry.model_name>@champion`` and ``@challenger`` on 127.0.0.1; see
the README section "Serving".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from convrl.config.base import ConfigError
from convrl.config.eval import CHAT_NO_REPEAT_NGRAM

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeConfig:
    host: str = field(default="127.0.0.1", metadata={
        "help": "Address to bind. Anything but loopback needs an API key in $CONVRL_SERVE_API_KEY (or --api-key)."})
    port: int = field(default=8000, metadata={"help": "TCP port of the OpenAI-compatible API and the arena page."})
    champion: str = field(default="", metadata={
        "help": "What serves the champion variant: empty = models:/<registry.model_name>@champion; also a base "
                "model name (smollm2-135m-instruct), a checkpoint dir or any models:/ URI."})
    challenger: str = field(default="", metadata={
        "help": "The challenger variant: empty = models:/<registry.model_name>@challenger when that alias "
                "exists; 'none' = champion only."})
    challenger_fraction: float = field(default=0.1, metadata={
        "help": "Share of sessions routed to the challenger (by a hash of the session id, so a session keeps "
                "its variant across requests and restarts)."})
    experiment: str = field(default="convrl-serving", metadata={
        "help": "MLflow experiment that receives one trace per served turn (what `convrl monitor` reads)."})
    persona: str = field(default="empathetic_coach", metadata={
        "help": "Persona card for sessions that do not name one (bundled name or YAML path)."})
    max_batch_size: int = field(default=8, metadata={
        "help": "Most requests decoded together per variant (slots of the continuous batch; more wait in the "
                "queue and join as rows finish)."})
    max_wait_ms: float = field(default=15.0, metadata={
        "help": "Static batching only (models with sliding-window layers): how long the batcher waits for more "
                "requests after the first one arrives. Continuous batching never waits: requests join the "
                "running batch at the next decode step."})
    threads: int = field(default=0, metadata={
        "help": "torch intra-op threads for generation (0 = torch's default, one per core); 1 on a box shared "
                "with other work, where oversubscribed threads slow every step down."})
    seed: int = field(default=0, metadata={
        "help": "Seed of the sampler's random numbers (0 = from the clock); replies of a batch differ either way."})
    max_new_tokens: int = field(default=64, metadata={"help": "Reply length when a request sets no max_tokens."})
    max_tokens_limit: int = field(default=512, metadata={"help": "Largest max_tokens a request may ask for."})
    temperature: float = field(default=0.7, metadata={
        "help": "Sampling temperature when a request sets none (0 = greedy)."})
    no_repeat_ngram_size: int = field(default=CHAT_NO_REPEAT_NGRAM, metadata={
        "help": "Replies never repeat an n-gram of this many tokens of their conversation, as convrl chat and "
                "evaluation decode (0 = off)."})
    context_turns: int = field(default=10, metadata={
        "help": "Turns per session kept verbatim in the prompt; older ones go to the context manager's memory."})
    token_budget: int = field(default=1024, metadata={"help": "Prompt token budget per turn (context manager)."})
    max_sessions: int = field(default=10000, metadata={
        "help": "Sessions kept in memory (least recently used ones are dropped first)."})
    max_body_bytes: int = field(default=262144, metadata={"help": "Largest request body accepted (413 beyond)."})
    max_messages: int = field(default=256, metadata={"help": "Most messages one request may carry."})
    trace_retry_max_s: float = field(default=30.0, metadata={
        "help": "Longest back-off between retries while the MLflow store is unavailable (records stay buffered "
                "in memory and in the journal meanwhile)."})
    journal: str = field(default="", metadata={
        "help": "Write-ahead journal of trace records not yet in MLflow (replayed at start); empty = "
                "$CONVRL_HOME/serving/journal.jsonl."})

    def validate(self) -> None:
        if not 0.0 <= self.challenger_fraction <= 1.0:
            raise ConfigError(f"serve.challenger_fraction must lie in [0, 1], got {self.challenger_fraction}")
        if self.max_batch_size < 1 or self.max_new_tokens < 1 or self.max_tokens_limit < self.max_new_tokens:
            raise ConfigError("serve.max_batch_size and serve.max_new_tokens must be >= 1 and "
                              "serve.max_tokens_limit >= serve.max_new_tokens")
        if self.no_repeat_ngram_size < 0:
            raise ConfigError(f"serve.no_repeat_ngram_size must be >= 0 (0 = off), got {self.no_repeat_ngram_size}")
        if self.max_wait_ms < 0 or self.temperature < 0 or self.max_body_bytes < 1024 or self.threads < 0:
            raise ConfigError("serve.max_wait_ms, serve.temperature and serve.threads must be >= 0 and "
                              "serve.max_body_bytes >= 1024")
        if not 0 < self.port < 65536:
            raise ConfigError(f"serve.port must be a TCP port (1-65535), got {self.port}")
