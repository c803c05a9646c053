"""`python -m ares_lit fit --config configs/aepo.yaml`."""

from ares_lit.cli import main

if __name__ == "__main__":
    main()
