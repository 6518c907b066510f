"""Entry point for `python -m sft`."""

from sft.cli import main

if __name__ == "__main__":
    main()
