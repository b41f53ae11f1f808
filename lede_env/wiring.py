"""The one wiring from names to a ready decoder: model, exit heads, execution path, prompts.

``build_decoder("smollm2-135m", heads="default", path="auto")`` loads the model offline, resolves its exit
heads, builds the `SelfSpeculativeDecoder` and returns them together (`DecoderSetup`); ``setup.encode(spec)``
turns a prompt set into token ids with the model's tokenizer. The CLI, trace recording, the engine benchmarks
and the live backend all build their decoder here.

Floor: models and engine (imports torch and transformers; nothing above the engine).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True, eq=False)
class DecoderSetup:
    """A loaded model with its tokenizer, exit heads and decoder (`build_decoder`)."""

    name: str
    model: Any
    tokenizer: Any
    heads: Any
    decoder: Any
    chat_template: bool = True

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def heads_label(self) -> str:
        from lede_env.engine.profile import heads_label

        return heads_label(self.heads)

    def prompts(self, spec: str, limit: int | None = None) -> list:
        """The `Prompt` objects of a prompt set (``"mixed:test"``, a .jsonl path), the first ``limit`` only."""
        from lede_env.prompts import load_prompts

        found = load_prompts(spec)
        return found[:limit] if limit is not None else found

    def encode(self, texts: Sequence[str] | str, limit: int | None = None) -> list[list[int]]:
        """Token ids of prompts (a prompt-set spec, or a list of texts), with the chat template if set."""
        from lede_env.prompts import encode_prompt

        if isinstance(texts, str):
            texts = [p.text for p in self.prompts(texts, limit)]
        return [encode_prompt(self.tokenizer, t, self.chat_template) for t in texts]


def build_decoder(model: str = "smollm2-135m", heads: str | None = "default", path: str = "auto",
                  dtype: str = "float32", probe_layers: Sequence[int] | None = (), max_context: int | None = None,
                  eos: bool = True, chat_template: bool = True, sampling=None, threads: int | None = None,
                  loaded: tuple | None = None, device: str = "cpu") -> DecoderSetup:
    """Load ``model`` (a name or a local Llama directory), resolve ``heads`` ("default", "identity" or a path) and
    build the decoder on execution path ``path``. ``probe_layers=None``: the default probes of the model's depth
    (`lede_env.engine.limits.default_probe_layers`). ``eos=False``: generations never stop at EOS (profiling).
    ``threads``: torch's thread count, set before the layer stack is built. ``loaded``: an already loaded
    ``(model, tokenizer)`` to use instead of loading ``model``. ``device``: "cpu" or "cuda[:N]" (the model and its
    exit heads go there; "auto" then resolves to the eager path, in the model's dtype)."""
    import torch

    from lede_env.defaults import resolve_exit_heads
    from lede_env.engine.decoder import SelfSpeculativeDecoder
    from lede_env.engine.limits import default_probe_layers
    from lede_env.models import load_model

    if threads:
        torch.set_num_threads(int(threads))
    mdl, tok = loaded if loaded is not None else load_model(model, dtype=dtype, device=device)
    exit_heads = resolve_exit_heads(heads, model, mdl)
    if probe_layers is None:
        probe_layers = default_probe_layers(mdl.config.num_hidden_layers)
    dec = SelfSpeculativeDecoder(mdl, exit_heads=exit_heads, eos_token_id=tok.eos_token_id if eos else [],
                                 probe_layers=probe_layers, max_context=max_context, sampling=sampling, path=path)
    return DecoderSetup(name=model, model=mdl, tokenizer=tok, heads=exit_heads, decoder=dec,
                        chat_template=chat_template)
