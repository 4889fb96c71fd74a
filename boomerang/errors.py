"""The one base of the errors a command reports to its user in one line (``boomerang.cli.fail``)."""


class BoomerangError(ValueError):
    """Something the user gave is wrong (a model, a layer map, data, a flag). Every library and stage error
    derives from it, so a command catches this one class, and a stage lets a library error through as it is."""
