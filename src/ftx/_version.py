# The one place the version is written; pyproject.toml reads it from here. A plain constant,
# not importlib.metadata, which would cost ~50 ms at every start of the command line.
__version__ = "0.3.0"
