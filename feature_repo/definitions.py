"""Feast objects of the workbench for the feast CLI: everything comes from propensity.feast_repo.definitions.

The data folder is PROPENSITY_DATA (default "data"); a relative path is taken from the project
root, since the feast CLI runs this file from inside feature_repo/."""
import os
from pathlib import Path

from propensity.feast_repo import definitions

_data = Path(os.environ.get("PROPENSITY_DATA", "data")).expanduser()
# the feast CLI collects the objects bound at module level: bind each under its Feast name
globals().update({o.name: o for o in definitions(_data if _data.is_absolute() else Path(__file__).resolve().parent.parent / _data)})
