"""The one base class of failures that users fix: the command line prints its message as one line, exit code 2.

Subclasses name what went wrong: :class:`misalign.io.DataError` (bad input, with file, line and field),
:class:`misalign.taxonomy.TaxonomyError`, :class:`misalign.models.ModelError` (set-up: URL, key, model),
:class:`misalign.templates.TemplateError`, :class:`RunError` (a run that cannot go on or must not count).
"""

from __future__ import annotations


class MisalignError(Exception):
    """A failure the user can act on; its message is complete on one line."""


class RunError(MisalignError, RuntimeError):
    """A run stopped (or finished without a usable result): the message says why and what to do."""


class ConfigError(MisalignError, ValueError):
    """Settings that cannot work together (for example a judge that is also a generator)."""
