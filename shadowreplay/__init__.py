"""shadowreplay: replay captured LLM traffic against candidate models and measure them."""

__version__ = "0.1.0"
