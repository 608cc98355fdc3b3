"""Other load generators run side by side with shadowreplay's worker in scripts/bench_loadgen.py.

Each peer runs in its own Python environment (vLLM's CPU build, or a private venv created on first
use), is driven through its own command line, and is read back from its own per-request output
into a `ToolRun`, the one shape the benchmark compares.
"""
