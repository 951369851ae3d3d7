"""`python -m app`: the desktop application, or the command line when given a sub-command."""

import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["gui"]))
