"""``python -m mixplane.cli``: the ``mixplane`` command."""

from mixplane.cli import main

if __name__ == "__main__":
    main()
