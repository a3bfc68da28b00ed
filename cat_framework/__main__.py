"""``python -m cat_framework`` is the ``cat-framework`` command."""

from cat_framework.cli import main

if __name__ == "__main__":
    main()
