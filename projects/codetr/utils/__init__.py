"""Small utilities of the codetr plugin that are not model code.

``compat`` is imported by ``projects/codetr/__init__.py`` for its side effect
(see its docstring); keep this package free of mmdet/mmcv imports so that it
can be imported while those are still being installed.
"""
