"""The ``lightpipe`` command line."""
