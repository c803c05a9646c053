"""Command-line tools around the training stages (`python -m ares_lit.tools.<name>`)."""
