"""`python cli.py …` behaves exactly as `vlmcls …` (for running from a checkout without installing)."""

from vlmcls.cli import main

if __name__ == "__main__":
    main()
