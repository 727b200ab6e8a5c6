"""Packages the project's code so Beam workers get it through --setup_file=./setup.py.

Dependencies are pinned in requirements.lock (installed by scripts/setup.sh); workers that need
them install from the same lock (--requirements_file=requirements.lock).
"""
import setuptools

setuptools.setup(
    name="compressor-fleet",
    version="0.1.0",
    description="Beam pipelines that watch a fleet of refrigeration compressors and find failures",
    python_requires=">=3.11,<3.12",
    packages=setuptools.find_packages(include=["pipelines*", "transforms*", "schemas*", "models*", "simulation*", "core*"]),
    package_data={"schemas": ["tfdv/*.pbtxt"], "core": ["config/*.yaml"],
                  "pipelines.reporting": ["templates/*.html", "templates/*.css"]},
    include_package_data=True,
)
