"""``python -m vidcache`` (what torchrun launches)."""

from .cli import main

main()
