"""``python -m tova.server ARGS`` = ``tova serve ARGS``."""
from .cli import main

raise SystemExit(main())
