"""``convrl serve``: the champion (and challenger) behind an OpenAI-compatible API, traced in MLflow.

    convrl serve --config demo                       models:/convrl-policy@champion (+ @challenger) on 127.0.0.1:8000
    convrl serve serve.champion=smollm2-135m-instruct serve.challenger=none
    convrl serve --host 0.0.0.0 --api-key "$KEY"     beyond loopback only with an API key
    convrl serve-manifest --canary-percent 10        KServe InferenceService for the registered versions

Modules: ``server`` (the process: variants, batcher, sessions, trace writer),
``app`` (FastAPI routes), ``arena`` (blind side-by-side page), ``batching``
(continuous batching: the request queue and worker), ``slots`` (its KV cache
with a slot per request and shared persona prefixes), ``static_batch`` (one
``generate`` per batch, for sliding-window models), ``sessions`` (routing,
persona, context manager), ``writer`` (buffered, retried, journaled MLflow
writes through ``convrl.tracking.traces``), ``variants`` (registry aliases ->
versions -> checkpoints), ``kserve`` (cluster manifests).
"""
