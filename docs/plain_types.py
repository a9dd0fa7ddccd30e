"""A griffe extension for the API reference: numpydoc types as written.

griffe reads the type of a numpydoc entry as a Python expression whenever it
parses as one, and renders that expression instead of the text: ``ndarray
(n,)`` comes out as ``ndarray(n)``, ``{'bce', 'cross_entropy'}`` as ``(bce,
cross_entropy)``. fastnn's docstrings give shapes and choices in the types,
so the numpydoc parser is given a function that keeps every type as written.
The parser is a private module of griffe (in one place or the other,
depending on the release): if a release moves it elsewhere, the reference
still builds, with griffe's rendering of the types.
"""

import importlib

import griffe

numpy_parser = None
for location in ("griffe._internal.docstrings.numpy", "_griffe.docstrings.numpy"):
    try:
        numpy_parser = importlib.import_module(location)
        break
    except ImportError:
        continue


def as_written(annotation, docstring, log_level=None):
    return annotation


class PlainTypes(griffe.Extension):
    def __init__(self):
        super().__init__()
        if numpy_parser is not None and hasattr(numpy_parser, "parse_docstring_annotation"):
            numpy_parser.parse_docstring_annotation = as_written
