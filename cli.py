"""`python cli.py ...` is `minirl ...` (a shim for a checkout without installing)."""

from minirl.cli import main

if __name__ == "__main__":
    main()
