"""Command line: ``xraytriage <command>``. Each module here adds its own subcommands."""
