"""Integrations with model libraries: loading SmolLM2 and other transformers models
(:mod:`seqkv.integrations.models`) and transformers cache helpers
(:mod:`seqkv.integrations.transformers`). torch and transformers are imported on first use
(extra ``seqkv[torch]``)."""

__all__: list[str] = []
