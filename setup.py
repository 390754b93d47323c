"""Build script. The pure-Python package always installs; compiled extensions are added when possible."""
from setuptools import setup

setup()
