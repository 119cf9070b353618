"""`accelerate launch -m gand.train CONFIG [a.b=c ...]` (or `python -m gand.train ...`)."""

import sys

from gand.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
