"""``python -m minidcn``: the same command line as the ``minidcn`` script (see minidcn.cli)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
