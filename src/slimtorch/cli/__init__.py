"""The ``slimtorch`` command line: one module per verb, errors as one clear line with exit code 2."""
