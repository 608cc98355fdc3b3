"""The embedded default: what `shadowreplay demo` and the tests run on where no cluster, GPU or
model hub is given (docs/DESIGN.md, "The embedded default").

- `checkout`: where a checkout of shadowreplay keeps its own environments and files: vLLM's CPU
  build in `.venv-vllm`, the tiny model in `.cache/tiny-llama`, the tiny target in `configs/`.
- `tiny_model`: the builder of the tiny Llama-architecture model and its tokenizer.
- `data/`: the bundled five-minute slice of the Azure conversation trace (with its NOTICE).

Nothing under replay/, loadgen/ or analysis/ imports this package: the library works from a wheel,
and only the demo and the tests reach for a checkout.
"""
