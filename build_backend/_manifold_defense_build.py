"""setuptools' PEP 517 backend, with one notice silenced: the one it prints for every editable install of a
package whose folders are mapped (``package-dir`` in pyproject.toml puts attacks/, generators/ and eval/ into the
``manifold_defense`` namespace). That notice ("Editable installation … folders in your working directory with the
same name as your package") is about a layout the project chose on purpose, not something the user did, so README's
``pip install -e .`` shows nothing. Everything else is setuptools' own (pyproject.toml: ``backend-path``)."""

import warnings

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (every other hook, unchanged)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Editable installation\.")
        return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
