"""``python -m tova.server ARGS`` = ``tova serve ARGS``."""
from .cli import main

if __name__ == "__main__":  # (importing the module runs nothing)
    raise SystemExit(main())
