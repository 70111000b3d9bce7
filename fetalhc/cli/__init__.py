"""The `fetalhc` command line (click). Thin: parse options, call the library.

Lives inside the package (``fetalhc.cli``) rather than as a top-level ``cli`` package,
which would collide with other installed distributions. Nothing in fetalhc imports it.
"""
