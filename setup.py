"""Only the package list lives here: the src/ packages plus the root conf/ tree shipped as loldu_lightning.conf
(pyproject's `packages.find` cannot add a package that lives outside its search folder)."""

from setuptools import find_packages, setup

setup(packages=find_packages("src") + ["loldu_lightning.conf"])
