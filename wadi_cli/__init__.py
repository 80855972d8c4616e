"""The ``wadi`` command line: one module per command, dispatched by :mod:`wadi_cli.cli`."""
