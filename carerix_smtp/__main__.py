"""``python -m carerix_smtp``."""

from carerix_smtp.cli.entry import main

if __name__ == "__main__":
    main()
