"""``python -m workflows.cli``: the ``ionscreen`` command."""

from workflows.cli import main

main()
