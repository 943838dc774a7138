"""``python -m tova ...``: the tova command-line program."""
from ._cli import main

raise SystemExit(main())
