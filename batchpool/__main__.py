"""`python -m batchpool` is the `batchpool` command."""

from batchpool.cli import main

main()
