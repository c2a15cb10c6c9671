"""``python -m steerlens.cli``: the ``steerlens`` command."""

from steerlens.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
