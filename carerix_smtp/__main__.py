"""``python -m carerix_smtp``."""

from carerix_smtp.cli.app import main

if __name__ == "__main__":
    main()
