"""`python -m heygem` runs the command-line interface."""

from heygem.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
