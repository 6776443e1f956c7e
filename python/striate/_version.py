"""The version of striate, in one place (``striate.__version__``; files record it). Nothing else."""

__version__ = "0.2.0.dev0"
