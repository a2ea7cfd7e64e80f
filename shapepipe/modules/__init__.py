"""Built-in runners (``<name>_runner.py``) and their science packages (``<name>/``).

Every ``*_runner.py`` file of this package is discovered by the module registry; adding a
runner needs no registration anywhere else.
"""
