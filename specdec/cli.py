"""What every command-line entry point shares: help with defaults, one-line errors, quiet extra ranks."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The script's docstring as written, and every flag's default."""


def parser(description: str | None) -> argparse.ArgumentParser:
    """An ArgumentParser whose usage errors only rank 0 prints under torchrun (the other ranks exit quietly)."""
    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    if int(os.environ.get("RANK", "0")) > 0:
        p.error = lambda message: sys.exit(2)  # type: ignore[method-assign]
    return p


def run(main: Callable[[], object]) -> None:
    """Run a script's main: Ctrl-C ends it with one line, and so does a missing file or a bad value (with the
    traceback when SPECDEC_TRACEBACK=1)."""
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except (FileNotFoundError, ValueError) as e:
        if os.environ.get("SPECDEC_TRACEBACK") == "1":
            raise
        print(f"error: {e}  (SPECDEC_TRACEBACK=1 shows where)", file=sys.stderr)
        sys.exit(2)
