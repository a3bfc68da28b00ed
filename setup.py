"""Packages, beyond what pyproject.toml can say: the repository's ``pipelines/`` folder is built
into the package ``cat_pipelines`` (one source for a clone and a ``pip install``), which a
``[tool.setuptools.packages.find]`` table cannot express (it only finds folders by their name).
Everything else is in pyproject.toml."""

from setuptools import find_namespace_packages, setup

setup(
    packages=[
        *find_namespace_packages(".", include=["cat_framework*"]),
        *find_namespace_packages("plugins", include=["cat_plugins*"]),
        "cat_pipelines",
        "cat_pipelines.accelerate",
        "cat_pipelines.slurm",
    ],
    package_dir={"cat_plugins": "plugins/cat_plugins", "cat_pipelines": "pipelines"},
)
