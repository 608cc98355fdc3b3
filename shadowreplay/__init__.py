"""shadowreplay: replay captured LLM traffic against candidate models and measure them."""

__version__ = "0.1.0"


def installed_version() -> str | None:
    """The installed distribution's version (what a summary or page records), or None when shadowreplay
    runs from a checkout that was never installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shadowreplay")
    except PackageNotFoundError:
        return None
