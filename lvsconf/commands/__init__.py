"""Subcommands of the lvsconf CLI, one module each (see lvsconf.cli)."""
