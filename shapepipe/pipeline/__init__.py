"""The pipeline framework: configuration, input binding, runs and job execution.

Nothing in this package knows about astronomy; runners live in :mod:`shapepipe.modules`.
"""
