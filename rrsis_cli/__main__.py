"""``python -m rrsis_cli`` (also the torchrun entry point)."""

from rrsis_cli.cli import main

if __name__ == "__main__":
    main()
