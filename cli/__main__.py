"""``python -m cli``: the copyscan command line without the installed script."""

from cli.main import main

main()
