"""``python -m tova ...``: the tova command-line program."""
from ._cli import main

if __name__ == "__main__":  # (importing the module runs nothing)
    raise SystemExit(main())
