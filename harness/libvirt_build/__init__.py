"""Build libvirt from source for the bed, put historical bugs back (mutants), and bisect.

Nothing in here: its modules import one another, and helpers kept here made an import loop (cache.py
has the folders, harness/cli.py the commands).
"""
