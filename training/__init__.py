"""The ``wadi`` command line: one module per command, dispatched by :mod:`training.cli`."""
